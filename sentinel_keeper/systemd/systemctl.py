"""Everything sentinel-keeper knows about systemd, and the only module that runs systemctl.

systemctl is looked up on ``PATH`` (so a test can put a recording stand-in first), run with
a list of arguments (never through a shell) and a bounded timeout. A failure becomes a
:class:`~sentinel_keeper.errors.SystemdError` naming the command and its stderr.

Conflict detection (in :mod:`sentinel_keeper.override.unitfile`) reads unit files and drop-ins
straight from the unit search path below rather than asking ``systemctl cat``: that works
without a running systemd (at install time, in containers, in tests), sees files that are on
disk but not yet loaded (before a daemon-reload), and gives the file *and line* of each
setting, which ``systemctl cat`` does not.

Two environment variables exist for tests and unusual layouts only:

- ``SENTINEL_SYSTEMD_RUNNING``: ``1`` or ``0`` overrides :func:`systemd_running`.
- ``SENTINEL_SYSTEMD_UNIT_PATH``: colon-separated directories replacing
  :data:`SYSTEM_UNIT_PATH` in :func:`unit_search_path`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sentinel_keeper.errors import SystemdError
from sentinel_keeper.values.unitname import unit_name_problem

RUNNING_ENV = "SENTINEL_SYSTEMD_RUNNING"
UNIT_PATH_ENV = "SENTINEL_SYSTEMD_UNIT_PATH"

#: What sd_booted(3) checks: this directory exists only while systemd is PID 1.
SYSTEMD_RUN_DIR = Path("/run/systemd/system")

#: systemd's system unit search path, highest priority first (systemd.unit(5)). A file in an
#: earlier directory masks a file of the same name in a later one, drop-ins included.
SYSTEM_UNIT_PATH: tuple[Path, ...] = tuple(
    Path(p)
    for p in (
        "/etc/systemd/system.control",
        "/run/systemd/system.control",
        "/run/systemd/transient",
        "/run/systemd/generator.early",
        "/etc/systemd/system",
        "/etc/systemd/system.attached",
        "/run/systemd/system",
        "/run/systemd/system.attached",
        "/run/systemd/generator",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/run/systemd/generator.late",
    )
)

#: The socket unit that holds the gateway's address with ``gateway.takeover`` (systemd/).
GATEWAY_SOCKET = "sentinel-keeper-gateway.socket"
#: The gateway's own service (systemd/), which that socket unit passes the address to.
GATEWAY_SERVICE = "sentinel-keeper-gateway.service"
GATEWAY_UNITS = (GATEWAY_SERVICE, GATEWAY_SOCKET)

#: How long one systemctl call may take. daemon-reload on a large system takes seconds.
SYSTEMCTL_TIMEOUT_S = 90.0


def systemd_running() -> bool:
    """True when systemd is the init system, as sd_booted(3) decides it.

    ``SENTINEL_SYSTEMD_RUNNING=1`` or ``=0`` overrides the check (tests only).
    """
    forced = os.environ.get(RUNNING_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return SYSTEMD_RUN_DIR.is_dir()


def unit_search_path() -> tuple[Path, ...]:
    """The directories units and drop-ins are read from, highest priority first."""
    override = os.environ.get(UNIT_PATH_ENV)
    if override:
        return tuple(Path(p) for p in override.split(":") if p)
    return SYSTEM_UNIT_PATH


def _systemctl(*args: str) -> tuple[str, ...]:
    """Run ``systemctl ARGS``; return the argv as run. SystemdError if it fails."""
    shown = " ".join(("systemctl", *args))
    exe = shutil.which("systemctl")
    if exe is None:
        raise SystemdError(f"`{shown}` impossible: systemctl is not on PATH")
    try:
        done = subprocess.run(
            [exe, *args],
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SystemdError(f"`{shown}` did not finish within {SYSTEMCTL_TIMEOUT_S:g}s") from None
    except OSError as exc:
        raise SystemdError(f"`{shown}` could not run: {exc}") from exc
    if done.returncode != 0:
        stderr = done.stderr.strip() or "(no error output)"
        raise SystemdError(f"`{shown}` failed with exit status {done.returncode}: {stderr}")
    return ("systemctl", *args)


def daemon_reload() -> tuple[str, ...]:
    """``systemctl daemon-reload``: make systemd read changed unit files and drop-ins."""
    return _systemctl("daemon-reload")


def try_restart_no_block(unit: str) -> tuple[str, ...]:
    """``systemctl try-restart --no-block UNIT``: restart ``unit`` if it runs; do not wait.

    ``--no-block`` because this is called from sentinel-keeper's own ExecStartPre=/
    ExecReload=, where waiting for a restart job of the unit it is ordered after could
    deadlock; the daemon re-warms the models once Ollama is back.
    """
    problem = unit_name_problem(unit)
    if problem is not None:
        raise SystemdError(f"{problem}, got {unit!r}")
    return _systemctl("try-restart", "--no-block", unit)


def _asks(*args: str) -> bool | None:
    """Whether ``systemctl ARGS`` (a question: is-active, is-enabled) answers yes; None
    when systemctl cannot say (not on PATH, did not finish)."""
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *args],
            capture_output=True,
            timeout=SYSTEMCTL_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    return done.returncode == 0


def gateway_socket_active() -> bool | None:
    """``systemctl is-active --quiet sentinel-keeper-gateway.socket``: whether the gateway's
    socket unit listens; None when systemctl cannot say."""
    return _asks("is-active", "--quiet", GATEWAY_SOCKET)


class Systemctl:
    """The real systemd, as :mod:`sentinel_keeper.override.apply` and
    :mod:`sentinel_keeper.override.takeover` use it (tests pass a fake)."""

    def installed(self, unit: str) -> bool:
        """Whether a unit file of that name is on the unit search path."""
        return any((directory / unit).exists() for directory in unit_search_path())

    def active(self, unit: str) -> bool:
        return _asks("is-active", "--quiet", unit) is True

    def enabled(self, unit: str) -> bool:
        return _asks("is-enabled", "--quiet", unit) is True

    def run(self, *args: str) -> tuple[str, ...]:
        """``systemctl VERB [--options] UNIT`` for one of the gateway's own units (nothing
        else: the names are this package's, never the policy's); SystemdError if it fails."""
        verb, *rest = args
        units = [a for a in rest if not a.startswith("-")]
        if units != [args[-1]] or units[0] not in GATEWAY_UNITS:
            raise SystemdError(f"`systemctl {' '.join(args)}`: not one of {GATEWAY_UNITS}")
        return _systemctl(verb, *rest)

    def running(self) -> bool:
        return systemd_running()

    def daemon_reload(self) -> tuple[str, ...]:
        return daemon_reload()

    def try_restart_no_block(self, unit: str) -> tuple[str, ...]:
        return try_restart_no_block(unit)
