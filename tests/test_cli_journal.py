"""CLI errors and warnings under journald carry their syslog priority.

Under ExecStartPre= and ExecReload= (apply-override) systemd connects stderr to journald and
sets JOURNAL_STREAM to that stream's "DEVICE:INODE"; a line without a "<N>" prefix is filed
at info, so `journalctl -p warning` would hide why a reload failed. Here stderr is a real
file and JOURNAL_STREAM names it, as systemd names its socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, policy: str, *args: str, journal: bool) -> tuple[int, list[str]]:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy)
    policy_path.chmod(0o644)
    stderr_path = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_", "JOURNAL_"))}
    env["SENTINEL_SYSTEMD_UNIT_PATH"] = str(tmp_path / "units")
    with stderr_path.open("wb") as stderr:
        if journal:
            st = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        done = subprocess.run(
            [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy_path), *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=REPO,
            timeout=60,
            check=False,
        )
    return done.returncode, stderr_path.read_text().splitlines()


BROKEN = "ollama:\n  keep_alive: -1\nmodels:\n  - name: llama3.2:1b\n    options: {num_ctx: big}\n"


@pytest.mark.slow
def test_policy_errors_are_priority_err_under_journald(tmp_path: Path) -> None:
    code, lines = _run(tmp_path, BROKEN, "apply-override", "--dry-run", journal=True)
    assert code == 78
    assert lines, "no error printed"
    assert all(line.startswith("<3>") for line in lines), lines
    assert any("policy.yaml:5:" in line and "num_ctx" in line for line in lines), lines


@pytest.mark.slow
def test_conflict_warning_is_priority_warning_under_journald(tmp_path: Path) -> None:
    later = tmp_path / "units" / "ollama.service.d" / "zzz-admin.conf"
    later.parent.mkdir(parents=True)
    later.write_text('[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=5m"\n')
    code, lines = _run(
        tmp_path,
        "ollama:\n  keep_alive: 24h\n",
        "apply-override",
        "--dry-run",
        "--dropin-dir",
        str(tmp_path / "dropin"),
        journal=True,
    )
    assert code == 0
    warnings = [line for line in lines if "OLLAMA_KEEP_ALIVE" in line]
    assert warnings, lines
    assert all(line.startswith("<4>warning: ") for line in warnings), warnings


@pytest.mark.slow
def test_no_prefix_on_a_terminal_or_a_plain_file(tmp_path: Path) -> None:
    code, lines = _run(tmp_path, BROKEN, "check", journal=False)
    assert code == 78
    assert lines
    assert not any(line.startswith("<") for line in lines), lines
