"""Applying sentinel-keeper's own drop-in for Ollama's unit (OLLAMA_KEEP_ALIVE and
ollama.environment): compare, write or remove atomically, tell systemd.

Ollama's installer rewrites ``ollama.service`` on every upgrade; drop-ins survive. This module
renders sentinel-keeper's drop-in from the policy (:mod:`.render`), compares it with the file
on disk, writes it atomically (:mod:`sentinel_keeper.act.atomicfile`), removes it, and finds other
files that set the same variables (:mod:`.unitfile`). It never touches
another drop-in (``override.conf`` from ``systemctl edit``...) or the unit itself. It returns a
:class:`OverrideReport`; only the CLI prints. Errors are :class:`OverrideError`.

Why the file is called ``zz-sentinel-keeper.conf``: systemd reads every ``*.conf`` in the
unit's ``.d`` directories (of all the unit search path; a same-named file in a
higher-priority directory masks the lower one) and applies them sorted by file name, the
unit file itself first. For ``Environment=`` the last assignment of a variable wins, so the
drop-in that sorts last wins. ``zz-`` sorts after the usual names (``override.conf``,
``10-foo.conf``, ``environment.conf``...). A name can always be beaten (``zzz.conf``), so the
conflict check below says for every differing assignment which value wins and why.
Whatever their order, ``EnvironmentFile=`` values override every ``Environment=`` and
``UnsetEnvironment=`` removes variables last; both are reported as winning.

The temporary file is ``.zz-sentinel-keeper.conf.<random>.tmp``: it does not end in
``.conf``, so systemd never reads a half-written one, and leftovers of an interrupted run
are removed by the next one.

A run killed after the rename but before systemctl finished would leave the new file on
disk and systemd (and Ollama) on the old one; the next run would find the file unchanged and
do nothing. So before it changes the file, a run that means to call systemctl writes the
marker ``.zz-sentinel-keeper.conf.pending`` next to it, and removes it only once
``daemon-reload`` (and ``try-restart``) succeeded: a run that finds the marker makes those
calls even when the file is already right. A failed systemctl call leaves it too, so the
next run tries again.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

from sentinel_keeper.act.atomicfile import StepHook, atomic_remove, atomic_write
from sentinel_keeper.act.atomicfile import step as call_step
from sentinel_keeper.errors import AtomicFileError, OverrideError, SystemdError
from sentinel_keeper.override.render import (
    DROPIN_MODE,
    DROPIN_NAME,
    check_unit,
    default_dropin_dir,
    desired_environment,
    render_dropin,
)
from sentinel_keeper.override.unitfile import MAX_READ, Conflict, find_conflicts
from sentinel_keeper.systemd.systemctl import Systemctl, unit_search_path

RESTART_POLICIES = ("if-changed", "never")
#: The points :func:`apply_override` adds around the atomic file's own (WRITE_STEPS): before
#: the pending marker is written, before ``daemon-reload``, before ``try-restart``, and before
#: the marker is removed.
APPLY_STEPS = ("mark", "reload", "restart", "done")

Status = Literal["changed", "unchanged", "removed", "absent"]


def _permission_hint(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return " (writing systemd drop-ins needs root: run it from the unit or with sudo)"
    return ""


def _override_error(exc: AtomicFileError) -> OverrideError:
    return OverrideError(f"{exc}{_permission_hint(exc.cause)}")


class SystemdControl(Protocol):
    """What :func:`apply_override` needs of systemd;
    :class:`~sentinel_keeper.systemd.systemctl.Systemctl` is the real one. Each call returns the
    argv it ran."""

    def running(self) -> bool: ...

    def daemon_reload(self) -> tuple[str, ...]: ...

    def try_restart_no_block(self, unit: str) -> tuple[str, ...]: ...


class NoReload(StrEnum):
    """Why no daemon-reload was made although the file changed."""

    DRY_RUN = "dry run: nothing was written"
    ASKED = "--no-reload"  # the caller said so
    NO_SYSTEMD = "systemd is not running here: no reload was possible"
    NOT_READ = "systemd does not read drop-ins for this unit from that directory"


@dataclass(frozen=True)
class OverrideReport:
    """What ``apply-override`` did, or would do with ``dry_run``."""

    status: Status
    dry_run: bool
    path: Path
    unit: str
    diff: str  # unified diff from the file on disk to the new one ('' when unchanged)
    conflicts: tuple[Conflict, ...]
    notes: tuple[str, ...]  # other warnings: masked files, unreadable files...
    systemctl_calls: tuple[tuple[str, ...], ...]  # argv of each systemctl call made
    no_reload: NoReload | None  # why no daemon-reload was made although the file changed
    restart: Literal["requested", "next-restart", "none"]
    systemd_error: str | None  # systemctl failed after the file was written or removed
    resumed: bool = False  # the file was already right: an interrupted run's systemctl calls

    @property
    def changed(self) -> bool:
        return self.status in ("changed", "removed")

    @property
    def no_reload_reason(self) -> str | None:
        return None if self.no_reload is None else self.no_reload.value


def read_text(path: Path) -> str | None:
    """The file's text, or None if there is none. OverrideError if it cannot be read."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_READ + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OverrideError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_READ:
        raise OverrideError(f"{path} is larger than {MAX_READ} bytes: not sentinel-keeper's")
    return data.decode("utf-8", errors="replace")


def pending_path(path: Path) -> Path:
    """The marker saying that ``path`` changed and systemd has not been told yet."""
    return path.with_name(f".{path.name}.pending")


_PENDING_TEXT = (
    "# sentinel-keeper apply-override changed the drop-in next to this file and has not yet\n"
    "# run systemctl daemon-reload (and try-restart). The next apply-override does, then\n"
    "# removes this file. systemd reads only *.conf files here.\n"
)


def _clear_pending(marker: Path) -> None:
    with contextlib.suppress(OSError):
        marker.unlink()


def unified_diff(path: Path, old: str | None, new: str | None) -> str:
    """A unified diff between two versions of ``path`` (None: no file)."""
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile=str(path) if old is not None else "/dev/null",
            tofile=str(path) if new is not None else "/dev/null",
        )
    )


def dropin_dirs(unit: str, search_path: Sequence[Path] | None = None) -> tuple[Path, ...]:
    """The directories systemd reads drop-ins of ``unit`` from (systemd.unit(5)): in each
    directory of the unit search path, ``<unit>.d``, ``<template>@.<type>.d`` for an
    instance of a template, and ``<type>.d`` for every unit of its type."""
    paths = unit_search_path() if search_path is None else tuple(search_path)
    name, _, kind = unit.rpartition(".")
    names = [f"{unit}.d", f"{kind}.d"]
    if "@" in name:
        names.append(f"{name.split('@', 1)[0]}@.{kind}.d")
    return tuple(root / n for root in paths for n in names)


def read_by_systemd(directory: Path, unit: str, search_path: Sequence[Path] | None = None) -> bool:
    """Is ``directory`` one that systemd reads drop-ins of ``unit`` from?"""

    def real(path: Path) -> Path:
        try:
            return path.resolve()
        except (OSError, RuntimeError):
            return path.absolute()

    here = real(directory)
    return any(real(d) == here for d in dropin_dirs(unit, search_path))


def apply_override(
    *,
    policy_path: str | os.PathLike[str],
    unit: str,
    keep_alive: float | None,
    environment: Mapping[str, str],
    restart: str,
    dropin_dir: Path | None = None,
    reload: bool = True,
    dry_run: bool = False,
    remove: bool = False,
    search_path: Sequence[Path] | None = None,
    systemctl: SystemdControl | None = None,
    step: StepHook | None = None,
    key: str = "ollama",
) -> OverrideReport:
    """Write (or with ``remove``, delete) sentinel-keeper's drop-in and tell systemd.

    Same content as on disk: nothing is written and systemctl is not called, unless an
    earlier run left its pending marker (it was interrupted, or systemctl failed, after the
    file changed): then only the systemctl calls are made (``resumed``). Otherwise,
    unless ``reload`` is False or systemd is not running: ``systemctl daemon-reload``, then
    with ``restart="if-changed"`` ``systemctl try-restart --no-block UNIT``. A systemctl
    failure after the file changed is reported in ``systemd_error``, not raised. ``key``:
    where the instance's settings are in the policy, for messages ("ollama", "instances[1]").
    """
    check_unit(unit, key=key)
    if restart not in RESTART_POLICIES:
        raise OverrideError(f"{key}.restart must be one of {', '.join(RESTART_POLICIES)}")
    directory = dropin_dir if dropin_dir is not None else default_dropin_dir(unit, key=key)
    path = directory / DROPIN_NAME
    old = read_text(path)
    if remove:
        new: str | None = None
        conflicts: tuple[Conflict, ...] = ()
        notes: tuple[str, ...] = ()
    else:
        new = render_dropin(policy_path, unit, keep_alive, environment, key=key)
        wanted = desired_environment(keep_alive, environment, key=key)
        conflicts, notes = find_conflicts(unit, path, wanted, search_path)
    diff = unified_diff(path, old, new)
    marker = pending_path(path)
    resumed = old == new and marker.exists()
    if resumed:
        notes = (
            *notes,
            f"an earlier run changed {path} but was interrupted before systemd was told "
            "(or systemctl failed); making its systemctl calls now",
        )

    def report(
        status: Status,
        calls: tuple[tuple[str, ...], ...] = (),
        reason: NoReload | None = None,
        restarted: Literal["requested", "next-restart", "none"] = "none",
        error: str | None = None,
    ) -> OverrideReport:
        return OverrideReport(
            status,
            dry_run,
            path,
            unit,
            diff,
            conflicts,
            notes,
            calls,
            reason,
            restarted,
            error,
            resumed,
        )

    if old == new and not resumed:
        return report("absent" if remove else "unchanged")
    status: Status = "removed" if remove else "changed"
    if dry_run:
        return report(status, reason=NoReload.DRY_RUN)
    control: SystemdControl = systemctl if systemctl is not None else Systemctl()
    # a trial into a scratch directory must not restart Ollama (and unload every model)
    # for a file systemd never reads
    read = dropin_dir is None or read_by_systemd(directory, unit, search_path)
    running = reload and read and control.running()
    if not resumed:
        try:
            if running:
                call_step(step, "mark")
                atomic_write(marker, _PENDING_TEXT, mode=DROPIN_MODE)
            if new is None:
                atomic_remove(path, step_hook=step)
            else:
                atomic_write(path, new, mode=DROPIN_MODE, step_hook=step)
        except AtomicFileError as exc:
            raise _override_error(exc) from exc

    if not reload:
        return report(status, reason=NoReload.ASKED, restarted="next-restart")
    if not read:
        return report(status, reason=NoReload.NOT_READ)
    if not running:
        _clear_pending(marker)  # systemd reads every file afresh when it starts
        return report(status, reason=NoReload.NO_SYSTEMD, restarted="next-restart")
    calls: list[tuple[str, ...]] = []
    try:
        call_step(step, "reload")
        calls.append(control.daemon_reload())
        restarted: Literal["requested", "next-restart"] = "next-restart"
        if restart == "if-changed":
            call_step(step, "restart")
            calls.append(control.try_restart_no_block(unit))
            restarted = "requested"
        call_step(step, "done")
        _clear_pending(marker)
        return report(status, tuple(calls), restarted=restarted)
    except SystemdError as exc:
        return report(status, tuple(calls), restarted="none", error=str(exc))
