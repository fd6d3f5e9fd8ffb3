"""`apply-override` killed with SIGKILL at every step of changing the drop-in and telling
systemd, then run again: the file is never partial, and the next run repairs what was left.

The killed run is the real command line in a subprocess, with a test-only step hook put in
place by a few lines of Python before ``cli.main`` runs (the product has no such switch). Its
steps, in order: ``mark`` (before the pending marker), the drop-in's own ``open``, ``write``
(half the bytes written), ``fsync``, ``rename``, ``fsync-dir`` (renamed, directory not yet
synced), ``reload`` (before ``systemctl daemon-reload``), the stand-in systemctl killing its
caller *during* ``daemon-reload`` or ``try-restart``, ``restart`` (between the two) and
``done`` (both made, marker not yet removed). systemctl is a recording stand-in first on PATH;
SENTINEL_SYSTEMD_RUNNING=1 makes the command believe systemd runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel_keeper.act.atomicfile import WRITE_STEPS
from sentinel_keeper.override.apply import APPLY_STEPS, pending_path
from sentinel_keeper.override.render import DROPIN_NAME, render_dropin
from sentinel_keeper.policy.loading import load_policy
from tests.support.applyoverride import ROOT, UNIT, ApplySetup, apply_setup

pytestmark = pytest.mark.slow  # two or three CLI processes per case

STAND_IN = """#!/bin/sh
printf '%s\\n' "$*" >> "$SYSTEMCTL_LOG"
if [ "$1" = "$SYSTEMCTL_KILL_CALLER_ON" ]; then
    kill -KILL "$PPID"
    sleep 5
fi
if [ -n "$SYSTEMCTL_FAIL" ]; then
    echo "Failed to $1: $SYSTEMCTL_FAIL" >&2
    exit 1
fi
exit 0
"""

HOOKED = """
import os, signal, sys
from sentinel_keeper.cli import main as cli
from sentinel_keeper.override import apply as dropin

target = sys.argv[1]

def die_at(step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)

dropin.apply_override.__kwdefaults__["step"] = die_at
sys.exit(cli.main(sys.argv[2:]))
"""

OLD_POLICY = "ollama:\n  keep_alive: 5m\n  restart: {restart}\n"
NEW_POLICY = (
    "ollama:\n  keep_alive: -1\n  restart: {restart}\n  environment:\n"
    "    OLLAMA_NUM_PARALLEL: 2\n    OLLAMA_MAX_LOADED_MODELS: 3\n"
)
RELOAD_AND_RESTART = ["daemon-reload", f"try-restart --no-block {UNIT}"]


class Setup(ApplySetup):
    def run_killed_at(self, step: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", HOOKED, step, *self.argv(*extra)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    def leftovers(self) -> list[str]:
        if not self.dropin_dir.exists():
            return []
        return sorted(p.name for p in self.dropin_dir.iterdir() if p.name != DROPIN_NAME)

    def content_for(self, policy: str) -> str:
        """The drop-in ``policy`` gives (rendered in-process from the loaded policy)."""
        self.policy.write_text(policy)
        loaded = load_policy(str(self.policy)).ollama
        return render_dropin(self.policy, loaded.unit, loaded.keep_alive, loaded.environment)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return apply_setup(Setup, tmp_path, STAND_IN, PYTHONDONTWRITEBYTECODE="1")


# Where a write can be killed, and whether the new file is in place by then.
WRITE_KILL_POINTS = [
    ("mark", False),
    *((step, step == "fsync-dir") for step in WRITE_STEPS),
    ("reload", True),
    ("systemctl:daemon-reload", True),
    ("restart", True),
    ("systemctl:try-restart", True),
    ("done", True),
]


def _kill(setup: Setup, point: str, *extra: str) -> None:
    if point.startswith("systemctl:"):
        done = setup.run(*extra, SYSTEMCTL_KILL_CALLER_ON=point.split(":", 1)[1])
    else:
        done = setup.run_killed_at(point, *extra)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)


def test_every_apply_step_is_a_kill_point_here() -> None:
    """The table above covers every step the product announces."""
    named = {point for point, _ in WRITE_KILL_POINTS}
    assert set(WRITE_STEPS) | set(APPLY_STEPS) <= named


@pytest.mark.parametrize(("point", "new_in_place"), WRITE_KILL_POINTS)
def test_write_killed_at_each_point_is_repaired_by_the_next_run(
    setup: Setup, point: str, new_in_place: bool
) -> None:
    old = setup.content_for(OLD_POLICY.format(restart="if-changed"))
    new = setup.content_for(NEW_POLICY.format(restart="if-changed"))
    setup.dropin_dir.mkdir()
    setup.dropin.write_text(old)  # what an earlier, complete run left
    setup.policy.write_text(NEW_POLICY.format(restart="if-changed"))

    _kill(setup, point)
    killed_calls = setup.take_calls()
    # Never a partial file: the old one or the new one, whole.
    assert setup.dropin.read_text() == (new if new_in_place else old)
    # Whatever else is there, systemd never reads it (only *.conf counts).
    leftovers = setup.leftovers()
    assert all(name.startswith(f".{DROPIN_NAME}.") for name in leftovers), leftovers
    assert not any(name.endswith(".conf") for name in leftovers), leftovers
    if new_in_place:
        # The one piece of state that lets the next run know systemd was not told.
        assert pending_path(setup.dropin).name in leftovers

    repair = setup.run()
    assert repair.returncode == 0, repair.stderr
    assert setup.dropin.read_text() == new
    assert setup.leftovers() == []  # temporary file and marker gone: the next run is quiet
    assert setup.take_calls() == RELOAD_AND_RESTART, (point, killed_calls, repair.stdout)
    if new_in_place:
        assert repair.stdout.startswith(f"{setup.dropin}: already written\n"), repair.stdout
        assert "was interrupted before systemd was told" in repair.stderr
    else:
        assert repair.stdout.startswith(f"wrote {setup.dropin}\n"), repair.stdout


@pytest.mark.parametrize("point", ["mark", "unlink", "fsync-dir", "reload", "done"])
def test_remove_killed_at_each_point_is_repaired_by_the_next_run(setup: Setup, point: str) -> None:
    setup.policy.write_text(NEW_POLICY.format(restart="if-changed"))
    assert setup.run().returncode == 0
    written = setup.dropin.read_text()
    setup.take_calls()

    _kill(setup, point, "--remove")
    gone = point not in ("mark", "unlink")
    assert setup.dropin.exists() != gone
    if not gone:
        assert setup.dropin.read_text() == written

    repair = setup.run("--remove")
    assert repair.returncode == 0, repair.stderr
    assert not setup.dropin.exists()
    assert setup.leftovers() == []
    assert setup.take_calls()[:1] == ["daemon-reload"]


def test_restart_never_repairs_with_a_reload_only(setup: Setup) -> None:
    setup.policy.write_text(NEW_POLICY.format(restart="never"))
    _kill(setup, "reload")
    repair = setup.run()
    assert repair.returncode == 0
    assert setup.take_calls() == ["daemon-reload"]
    assert setup.leftovers() == []


def test_a_failed_daemon_reload_is_retried_by_the_next_run(setup: Setup) -> None:
    """Not a kill: systemctl fails (exit 69). Before the marker existed the next run saw an
    unchanged file and never reloaded."""
    setup.policy.write_text(NEW_POLICY.format(restart="if-changed"))
    failed = setup.run(SYSTEMCTL_FAIL="Access denied")
    assert failed.returncode == 69
    assert setup.take_calls() == ["daemon-reload"]
    retry = setup.run()
    assert retry.returncode == 0, retry.stderr
    assert setup.take_calls() == RELOAD_AND_RESTART
    assert setup.leftovers() == []


def test_without_systemd_no_marker_is_left_behind(setup: Setup) -> None:
    """systemd reads every drop-in afresh when it starts: nothing is owed to it."""
    setup.policy.write_text(NEW_POLICY.format(restart="if-changed"))
    done = setup.run(SENTINEL_SYSTEMD_RUNNING="0")
    assert done.returncode == 0
    assert setup.leftovers() == []
    assert setup.run().stdout == f"{setup.dropin}: unchanged\n"
    assert setup.take_calls() == []
