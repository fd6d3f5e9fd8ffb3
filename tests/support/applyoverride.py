"""`sentinel-keeper apply-override` run as a real process against a recording stand-in
systemctl first on PATH and a fake unit tree: what the CLI tests and the kill-point tests share.

SENTINEL_SYSTEMD_RUNNING=1 makes the CLI believe systemd is running (this machine's systemd is
never called); SENTINEL_SYSTEMD_UNIT_PATH points the conflict check at the fake tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sentinel_keeper.override.render import DROPIN_NAME

ROOT = Path(__file__).resolve().parents[2]
UNIT = "ollama.service"


@dataclass
class ApplySetup:
    tmp: Path
    policy: Path
    dropin_dir: Path
    log: Path  # the stand-in systemctl's arguments, one call a line
    env: dict[str, str]

    @property
    def dropin(self) -> Path:
        return self.dropin_dir / DROPIN_NAME

    def argv(self, *extra: str, command: str = "apply-override") -> list[str]:
        """The CLI's arguments; apply-override writes into the fake tree's drop-in directory."""
        dropin = ["--dropin-dir", str(self.dropin_dir)] if command == "apply-override" else []
        return ["--policy", str(self.policy), command, *dropin, *extra]

    def run(
        self, *extra: str, command: str = "apply-override", **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sentinel_keeper", *self.argv(*extra, command=command)],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        """What systemctl was asked so far."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def take_calls(self) -> list[str]:
        """What systemctl was asked since the last take; the log starts over."""
        calls = self.calls()
        self.log.unlink(missing_ok=True)
        return calls


S = TypeVar("S", bound=ApplySetup)


def apply_setup(kind: type[S], tmp_path: Path, stand_in: str, **env: str) -> S:
    """A stand-in systemctl (the shell script ``stand_in``) first on PATH, an empty unit tree,
    and an environment free of the caller's SENTINEL_ and SYSTEMCTL_ variables plus ``env``;
    ``kind`` is ApplySetup or a test file's own subclass of it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(stand_in)
    systemctl.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "SYSTEMCTL_"))}
    clean.update(
        PATH=f"{bin_dir}{os.pathsep}{clean.get('PATH', '/usr/bin:/bin')}",
        SYSTEMCTL_LOG=str(tmp_path / "systemctl.log"),
        SENTINEL_SYSTEMD_RUNNING="1",
        SENTINEL_SYSTEMD_UNIT_PATH=str(units),
        **env,
    )
    return kind(
        tmp_path,
        tmp_path / "policy.yaml",
        units / f"{UNIT}.d",  # a directory systemd reads (the fake unit path's)
        tmp_path / "systemctl.log",
        clean,
    )
