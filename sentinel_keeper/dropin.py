"""sentinel-keeper's own drop-in for Ollama's unit: OLLAMA_KEEP_ALIVE and ollama.environment.

Ollama's installer rewrites ``ollama.service`` on every upgrade; drop-ins survive. This module
renders sentinel-keeper's drop-in from the policy, compares it with the file on disk, writes it
atomically, removes it, and finds other files that set the same variables. It never touches
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
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol

from sentinel_keeper import ollama_env
from sentinel_keeper.errors import OverrideError, SystemdError
from sentinel_keeper.systemd import Systemctl, unit_search_path
from sentinel_keeper.text import show
from sentinel_keeper.unitname import unit_name_problem

DROPIN_NAME = "zz-sentinel-keeper.conf"
ETC_UNIT_DIR = Path("/etc/systemd/system")
DROPIN_MODE = 0o644
RESTART_POLICIES = ("if-changed", "never")

#: The points of :func:`atomic_write` at which a test hook is called, in order:
#: before the temporary file is created, halfway through writing it, before its fsync, before
#: the rename over the target, and after the rename before the directory's fsync.
WRITE_STEPS = ("open", "write", "fsync", "rename", "fsync-dir")
#: The points of :func:`atomic_remove`: before the unlink, after it before the dir's fsync.
REMOVE_STEPS = ("unlink", "fsync-dir")
#: The points :func:`apply_override` adds around those: before the pending marker is written,
#: before ``daemon-reload``, before ``try-restart``, and before the marker is removed.
APPLY_STEPS = ("mark", "reload", "restart", "done")

StepHook = Callable[[str], None]
Status = Literal["changed", "unchanged", "removed", "absent"]

_MAX_READ = 1 << 20


class SystemdControl(Protocol):
    """What :func:`apply_override` needs of systemd; :class:`~sentinel_keeper.systemd.Systemctl`
    is the real one. Each call returns the argv it ran."""

    def running(self) -> bool: ...

    def daemon_reload(self) -> tuple[str, ...]: ...

    def try_restart_no_block(self, unit: str) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Conflict:
    """Another file that sets (or unsets) one of our variables to something else."""

    path: Path
    line: int
    variable: str
    value: str | None  # None: the variable is unset (UnsetEnvironment=) or reset
    ours: str
    wins: bool  # True: this value, not sentinel-keeper's, is what Ollama will see
    why: str

    def __str__(self) -> str:
        what = (
            f"unsets {self.variable}"
            if self.value is None
            else (f"sets {self.variable}={self.value!r}")
        )
        verdict = (
            f"it overrides sentinel-keeper's {self.ours!r}"
            if self.wins
            else f"sentinel-keeper's {self.ours!r} overrides it"
        )
        return f"{self.path}:{self.line}: {what}; {verdict} ({self.why})"


class NoReload(StrEnum):
    """Why no daemon-reload was made although the file changed."""

    DRY_RUN = "dry run: nothing was written"
    ASKED = "--no-reload"  # the caller said so
    NO_SYSTEMD = "systemd is not running here: no reload was possible"


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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def default_dropin_dir(unit: str) -> Path:
    """``/etc/systemd/system/<unit>.d``, where an administrator's drop-ins belong."""
    _check_unit(unit)
    return ETC_UNIT_DIR / f"{unit}.d"


def _check_unit(unit: str) -> None:
    problem = unit_name_problem(unit)
    if problem is not None:
        raise OverrideError(f"ollama.unit: {problem}, got {show(unit)}")


def desired_environment(keep_alive: float | None, environment: Mapping[str, str]) -> dict[str, str]:
    """The variables the drop-in sets, OLLAMA_KEEP_ALIVE first; OverrideError if any is bad."""
    wanted: dict[str, str] = {}
    problems: list[str] = []
    if keep_alive is not None:
        problem = ollama_env.keep_alive_problem(keep_alive)
        if problem is not None:
            problems.append(f"ollama.keep_alive: {problem}")
        else:
            wanted[ollama_env.KEEP_ALIVE] = ollama_env.format_keep_alive(keep_alive)
    for name in sorted(environment):
        problem = ollama_env.environment_problem(name, environment[name])
        if problem is not None:
            problems.append(f"ollama.environment.{name}: {problem}")
        else:
            wanted[name] = environment[name]
    if problems:
        raise OverrideError("the policy cannot be written as a drop-in: " + "; ".join(problems))
    return wanted


def quote_comment_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a JSON string: no raw control character, never ends in a backslash.

    It goes into a comment line, so a newline (or anything else) in the policy path can
    neither start a directive nor continue the comment onto the next line.
    """
    return json.dumps(os.path.abspath(os.fspath(path)), ensure_ascii=True)


def render_dropin(
    policy_path: str | os.PathLike[str],
    unit: str,
    keep_alive: float | None,
    environment: Mapping[str, str],
) -> str:
    """The drop-in's text. Deterministic: the same policy gives the same bytes."""
    _check_unit(unit)
    wanted = desired_environment(keep_alive, environment)
    lines = [
        f"# Generated by sentinel-keeper from the policy {quote_comment_path(policy_path)}",
        "# (ollama.keep_alive and ollama.environment). Do not edit: change the policy and run",
        "# `sentinel-keeper apply-override`; `sentinel-keeper apply-override --remove` deletes it.",
        f"# Named {DROPIN_NAME} to be applied after the other drop-ins of {unit}.",
        "[Service]",
        *(ollama_env.environment_line(name, value) for name, value in wanted.items()),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Atomic file operations
# ---------------------------------------------------------------------------------------------


def read_text(path: Path) -> str | None:
    """The file's text, or None if there is none. OverrideError if it cannot be read."""
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_READ + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OverrideError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_READ:
        raise OverrideError(f"{path} is larger than {_MAX_READ} bytes: not sentinel-keeper's")
    return data.decode("utf-8", errors="replace")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_tmp(path: Path) -> None:
    prefix = _tmp_prefix(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                entry.unlink()


def _step(hook: StepHook | None, name: str) -> None:
    if hook is not None:
        hook(name)


def _permission_hint(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return " (writing systemd drop-ins needs root: run it from the unit or with sudo)"
    return ""


def atomic_write(path: Path, content: str, *, step: StepHook | None = None) -> None:
    """Replace ``path`` with ``content`` so that it is always the old or the new file.

    Temporary file in the same directory, written, fsynced, chmod 0644, renamed over
    ``path``, then the directory fsynced so the rename survives a crash. ``step`` (tests) is
    called at each of :data:`WRITE_STEPS`; if it raises, the temporary file is removed.
    """
    data = content.encode("utf-8")
    directory = path.parent
    try:
        created = not directory.exists()
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        if created:
            _fsync_dir(directory.parent)
        _remove_stale_tmp(path)
        _step(step, "open")
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OverrideError(
            f"cannot write {path}: {exc.strerror or exc}{_permission_hint(exc)}"
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            _step(step, "write")
            f.write(data[half:])
            f.flush()
            os.fchmod(f.fileno(), DROPIN_MODE)
            _step(step, "fsync")
            os.fsync(f.fileno())
        _step(step, "rename")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OverrideError(
                f"cannot write {path}: {exc.strerror or exc}{_permission_hint(exc)}"
            ) from exc
        raise
    try:
        _step(step, "fsync-dir")
        _fsync_dir(directory)
    except OSError as exc:
        raise OverrideError(f"wrote {path}, but could not fsync {directory}: {exc}") from exc


def atomic_remove(path: Path, *, step: StepHook | None = None) -> bool:
    """Delete ``path`` and fsync its directory. False if there was nothing to delete."""
    try:
        _step(step, "unlink")
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OverrideError(
            f"cannot remove {path}: {exc.strerror or exc}{_permission_hint(exc)}"
        ) from exc
    try:
        _step(step, "fsync-dir")
        _fsync_dir(path.parent)
    except OSError as exc:
        raise OverrideError(f"removed {path}, but could not fsync its directory: {exc}") from exc
    return True


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


# ---------------------------------------------------------------------------------------------
# Conflict detection: reading unit files and drop-ins the way systemd does
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    line: int
    key: str
    value: str


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each logical line: continuations joined, comments out."""
    start = 0
    pending: str | None = None
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if stripped.startswith(("#", ";")):
            continue  # comments are skipped, even between continued lines
        if pending is None:
            if not stripped:
                continue
            start = number
            pending = ""
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1] + " "
            continue
        yield start, (pending + line).strip()
        pending = None
    if pending is not None and pending.strip():
        yield start, pending.strip()


def _service_settings(text: str) -> Iterator[_Setting]:
    """Environment=, EnvironmentFile= and UnsetEnvironment= of the [Service] section."""
    section = ""
    for number, line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if (
            sep
            and section == "Service"
            and key
            in (
                "Environment",
                "EnvironmentFile",
                "UnsetEnvironment",
            )
        ):
            yield _Setting(number, key, value.strip())


def _env_file_assignments(text: str) -> Iterator[tuple[int, str, str]]:
    """(line, name, value) of an EnvironmentFile= file (KEY=VALUE lines, shell-like)."""
    for number, logical in _logical_lines(text):
        line = logical[len("export ") :].lstrip() if logical.startswith("export ") else logical
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        yield number, name, value


def _ollama_reads(name: str, value: str) -> str | int:
    """What Ollama makes of ``value``: its trimming, and durations compared by meaning."""
    text = value.strip().strip("\"'")
    if name in ollama_env.KNOWN_VARIABLES and ollama_env.KNOWN_VARIABLES[name].kind == "duration":
        ns = ollama_env.ollama_duration_ns(text) if text else None
        if ns is None:
            return "default"
        return -1 if ns < 0 else ns
    return text


def _dropin_dir_names(unit: str) -> list[str]:
    """``ollama.service.d``, prefix dirs of dashed names (``foo-.service.d``), ``service.d``."""
    stem, _, suffix = unit.rpartition(".")
    names = [f"{unit}.d"]
    parts = stem.split("-")
    for i in range(len(parts) - 1, 0, -1):
        names.append(f"{'-'.join(parts[:i])}-.{suffix}.d")
    names.append(f"{suffix}.d")
    return names


def _is_masked(path: Path) -> bool:
    try:
        return path.resolve() == Path("/dev/null") or path.stat().st_size == 0
    except OSError:
        return False


def _effective_dropins(
    unit: str, ours: Path, search_path: Sequence[Path]
) -> tuple[list[Path], list[str]]:
    """Drop-ins systemd would apply, in order, with ours in place; and notes."""
    dirs: list[Path] = []
    for root in search_path:
        dirs.extend(root / name for name in _dropin_dir_names(unit))
    if ours.parent not in dirs:
        dirs.insert(0, ours.parent)
    chosen: dict[str, Path] = {}
    for directory in dirs:
        if directory == ours.parent:
            chosen.setdefault(ours.name, ours)
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".conf") and entry.name not in chosen:
                chosen[entry.name] = entry
    notes: list[str] = []
    winner = chosen.get(ours.name)
    if winner is not None and winner != ours:
        notes.append(
            f"{winner} has the same name as sentinel-keeper's drop-in in a higher-priority "
            f"directory, so systemd ignores {ours}"
        )
    return [chosen[name] for name in sorted(chosen)], notes


def _unit_file(unit: str, search_path: Sequence[Path]) -> Path | None:
    for root in search_path:
        candidate = root / unit
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def _read_quietly(path: Path, notes: list[str], what: str) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(_MAX_READ).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        notes.append(f"could not read {what} {path} to check for conflicts: {exc.strerror}")
        return None


def find_conflicts(
    unit: str,
    ours: Path,
    wanted: Mapping[str, str],
    search_path: Sequence[Path] | None = None,
) -> tuple[tuple[Conflict, ...], tuple[str, ...]]:
    """Other files that set any variable of ``wanted`` to a different value.

    Reads the unit file (first one on ``search_path``) and every drop-in systemd would apply
    (``*.conf`` in the unit's ``.d`` directories, masking by name as systemd does), plus the
    files their ``EnvironmentFile=`` lines name. ``ours`` itself is skipped, wherever it is.
    Returns the conflicts in systemd's order and notes about what could not be checked.
    """
    path_list = unit_search_path() if search_path is None else tuple(search_path)
    notes: list[str] = []
    conflicts: list[Conflict] = []
    dropins, dropin_notes = _effective_dropins(unit, ours, path_list)
    notes.extend(dropin_notes)
    unit_file = _unit_file(unit, path_list)
    files: list[tuple[Path, bool]] = []  # (file, applied after ours)
    if unit_file is not None:
        if _is_masked(unit_file):
            notes.append(f"{unit} is masked ({unit_file}): Ollama's service cannot start")
        else:
            files.append((unit_file, False))
    after = False
    for dropin in dropins:
        if dropin == ours:
            after = True
            continue
        files.append((dropin, after))

    def differs(name: str, value: str) -> bool:
        return _ollama_reads(name, value) != _ollama_reads(name, wanted[name])

    for path, is_after in files:
        text = _read_quietly(path, notes, "unit file" if path == unit_file else "drop-in")
        if text is None:
            continue
        order = (
            f"{path.name} sorts after {ours.name}"
            if is_after
            else (
                "the unit file is applied before drop-ins"
                if path == unit_file
                else f"{path.name} sorts before {ours.name}"
            )
        )
        for setting in _service_settings(text):
            if setting.key == "Environment":
                pairs = ollama_env.parse_environment_value(setting.value)
                if pairs is None:
                    notes.append(f"{path}:{setting.line}: systemd ignores this Environment= line")
                    continue
                if not pairs and is_after:
                    notes.append(
                        f"{path}:{setting.line}: an empty Environment= resets every earlier "
                        f"assignment, sentinel-keeper's included ({order})"
                    )
                for name, value in pairs:
                    if name in wanted and differs(name, value):
                        conflicts.append(
                            Conflict(path, setting.line, name, value, wanted[name], is_after, order)
                        )
            elif setting.key == "UnsetEnvironment":
                for word in ollama_env.split_words(setting.value) or []:
                    name, sep, value = word.partition("=")
                    if name in wanted and (not sep or value == wanted[name]):
                        conflicts.append(
                            Conflict(
                                path,
                                setting.line,
                                name,
                                None,
                                wanted[name],
                                True,
                                "UnsetEnvironment= applies after every assignment",
                            )
                        )
            else:
                for word in ollama_env.split_words(setting.value) or []:
                    optional = word.startswith("-")
                    env_path = Path(word[1:] if optional else word)
                    if not env_path.is_absolute():
                        continue
                    env_text = _read_quietly(
                        env_path, notes, f"EnvironmentFile= (named at {path}:{setting.line})"
                    )
                    if env_text is None:
                        continue
                    for line, name, value in _env_file_assignments(env_text):
                        if name in wanted and differs(name, value):
                            conflicts.append(
                                Conflict(
                                    env_path,
                                    line,
                                    name,
                                    value,
                                    wanted[name],
                                    True,
                                    f"EnvironmentFile= (named at {path}:{setting.line}) "
                                    "overrides every Environment=",
                                )
                            )
    return tuple(conflicts), tuple(notes)


# ---------------------------------------------------------------------------------------------
# apply-override
# ---------------------------------------------------------------------------------------------


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
) -> OverrideReport:
    """Write (or with ``remove``, delete) sentinel-keeper's drop-in and tell systemd.

    Same content as on disk: nothing is written and systemctl is not called, unless an
    earlier run left its pending marker (it was interrupted, or systemctl failed, after the
    file changed): then only the systemctl calls are made (``resumed``). Otherwise,
    unless ``reload`` is False or systemd is not running: ``systemctl daemon-reload``, then
    with ``restart="if-changed"`` ``systemctl try-restart --no-block UNIT``. A systemctl
    failure after the file changed is reported in ``systemd_error``, not raised.
    """
    _check_unit(unit)
    if restart not in RESTART_POLICIES:
        raise OverrideError(f"ollama.restart must be one of {', '.join(RESTART_POLICIES)}")
    directory = dropin_dir if dropin_dir is not None else default_dropin_dir(unit)
    path = directory / DROPIN_NAME
    old = read_text(path)
    if remove:
        new: str | None = None
        conflicts: tuple[Conflict, ...] = ()
        notes: tuple[str, ...] = ()
    else:
        new = render_dropin(policy_path, unit, keep_alive, environment)
        wanted = desired_environment(keep_alive, environment)
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
    running = reload and control.running()
    if not resumed:
        if running:
            _step(step, "mark")
            atomic_write(marker, _PENDING_TEXT)
        if new is None:
            atomic_remove(path, step=step)
        else:
            atomic_write(path, new, step=step)

    if not reload:
        return report(status, reason=NoReload.ASKED, restarted="next-restart")
    if not running:
        _clear_pending(marker)  # systemd reads every file afresh when it starts
        return report(status, reason=NoReload.NO_SYSTEMD, restarted="next-restart")
    calls: list[tuple[str, ...]] = []
    try:
        _step(step, "reload")
        calls.append(control.daemon_reload())
        restarted: Literal["requested", "next-restart"] = "next-restart"
        if restart == "if-changed":
            _step(step, "restart")
            calls.append(control.try_restart_no_block(unit))
            restarted = "requested"
        _step(step, "done")
        _clear_pending(marker)
        return report(status, tuple(calls), restarted=restarted)
    except SystemdError as exc:
        return report(status, tuple(calls), restarted="none", error=str(exc))
