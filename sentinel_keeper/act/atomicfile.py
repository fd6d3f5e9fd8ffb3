"""Files replaced or removed so that they are always whole: the old file or the new one,
never a half-written one, and the change survives a crash (the file and its directory are
fsynced). Used for Ollama's drop-in and for the state file.

A test passes a step hook to stop at each point in turn (:data:`WRITE_STEPS`,
:data:`REMOVE_STEPS`): the kill-point tests show that no interruption leaves a partial file.
Failures are :class:`~sentinel_keeper.errors.AtomicFileError`, which keeps the OSError; the
caller says what the file was for.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sentinel_keeper.errors import AtomicFileError

#: The points of :func:`atomic_write` at which a test hook is called, in order:
#: before the temporary file is created, halfway through writing it, before its fsync, before
#: the rename over the target, and after the rename before the directory's fsync.
WRITE_STEPS = ("open", "write", "fsync", "rename", "fsync-dir")
#: The points of :func:`atomic_remove`: before the unlink, after it before the dir's fsync.
REMOVE_STEPS = ("unlink", "fsync-dir")

StepHook = Callable[[str], None]


def step(hook: StepHook | None, name: str) -> None:
    if hook is not None:
        hook(name)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_tmp(path: Path) -> None:
    """Temporary files an interrupted run left (``.NAME.<random>.tmp``)."""
    prefix = _tmp_prefix(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                entry.unlink()


def atomic_write(
    path: Path, content: str, *, mode: int = 0o644, step_hook: StepHook | None = None
) -> None:
    """Replace ``path`` with ``content`` so that it is always the old or the new file.

    A temporary file in the same directory (``.NAME.<random>.tmp``: no ``*.conf`` reader
    takes it), written, fsynced, given ``mode``, renamed over ``path``, then the directory
    fsynced so the rename survives a crash; a directory it had to create is fsynced into
    its parent. If a hook (or anything) interrupts it, the temporary file is removed.
    """
    data = content.encode("utf-8")
    directory = path.parent
    try:
        created = not directory.exists()
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        if created:
            fsync_dir(directory.parent)
        _remove_stale_tmp(path)
        step(step_hook, "open")
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=directory)
    except OSError as exc:
        raise AtomicFileError(f"cannot write {path}", exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            step(step_hook, "write")
            f.write(data[half:])
            f.flush()
            os.fchmod(f.fileno(), mode)
            step(step_hook, "fsync")
            os.fsync(f.fileno())
        step(step_hook, "rename")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise AtomicFileError(f"cannot write {path}", exc) from exc
        raise
    try:
        step(step_hook, "fsync-dir")
        fsync_dir(directory)
    except OSError as exc:
        raise AtomicFileError(f"wrote {path}, but could not fsync {directory}", exc) from exc


def atomic_remove(path: Path, *, step_hook: StepHook | None = None) -> bool:
    """Delete ``path`` and fsync its directory. False if there was nothing to delete."""
    try:
        step(step_hook, "unlink")
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise AtomicFileError(f"cannot remove {path}", exc) from exc
    try:
        step(step_hook, "fsync-dir")
        fsync_dir(path.parent)
    except OSError as exc:
        raise AtomicFileError(f"removed {path}, but could not fsync its directory", exc) from exc
    return True
