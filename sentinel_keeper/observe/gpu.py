"""GPU memory through NVML. The only module of sentinel-keeper that imports pynvml.

:class:`GpuProbe` initialises NVML on its first snapshot and keeps it initialised, so later
snapshots cost a few cheap calls. Any failure becomes an *unknown* snapshot
(``GpuSnapshot(error=...)``) with a one-line reason, never zero free memory; after a failure
NVML is shut down and initialised again on the next snapshot, so a GPU or driver that comes
back is seen again.

A GPU is selected by its NVML index or by its UUID as NVML spells it (``GPU-...``, or
``MIG-...`` for a MIG device, as ``nvidia-smi -L`` shows). Indices are NVML's (the order
``nvidia-smi`` shows, by PCI bus id), which is not necessarily the order CUDA_VISIBLE_DEVICES
uses, and may change when GPUs are added or removed; a UUID stays with its GPU. A UUID is
looked up at every snapshot, so a GPU that is not there yet, or has gone, makes the snapshot
unknown rather than wrong.

``python -m sentinel_keeper.gpu [INDEX|UUID ...]`` prints one snapshot as JSON, for checks by
hand.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
from collections.abc import Sequence
from typing import Any

# Importing pynvml does not load libnvidia-ml.so.1; nvmlInit does, so a machine without the
# library still imports this module and gets unknown snapshots.
import pynvml

from sentinel_keeper.observe.observation import GpuInfo, GpuSnapshot

LIBRARY_NAME = "nvml.dll" if sys.platform.startswith("win") else "libnvidia-ml.so.1"


# The NVML return codes that mean "this driver cannot tell a GPU's UUID": the snapshot goes on
# without it.
_NO_UUID = frozenset((pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND))

# What nvmlDeviceGetHandleByUUID answers for a UUID it has no GPU for (NOT_FOUND), or cannot
# read as a UUID at all (INVALID_ARGUMENT).
_UUID_UNKNOWN = frozenset((pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_ERROR_INVALID_ARGUMENT))


class _Unknown(Exception):
    """A reason the snapshot is unknown that is not an NVML error."""


def nvml_error_code(exc: BaseException) -> int | None:
    """The nvmlReturn_t value an NVMLError carries, or None for any other exception."""
    value = getattr(exc, "value", None)
    return value if isinstance(exc, pynvml.NVMLError) and isinstance(value, int) else None


def describe_error(exc: BaseException, where: str) -> str:
    """One line saying why NVML could not tell; ``where`` names the step ("GPU 0", ...)."""
    code = nvml_error_code(exc)
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return f"NVML library {LIBRARY_NAME} not found"
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return f"{where}: NVIDIA driver not loaded"
    try:
        text = " ".join(str(exc).split())  # one line
    except Exception:  # NVMLError.__str__ may call into the library
        text = ""
    if code is not None:
        if not text or text == "Unknown Error":
            text = f"{text or 'NVML error'} (code {code})"
        return f"{where}: {text}"
    name = type(exc).__name__
    return f"{where}: {name}: {text}" if text else f"{where}: {name}"


def _sees(count: int) -> str:
    if count == 0:
        return "NVML sees no GPUs"
    return "NVML sees " + ("GPU 0" if count == 1 else f"{count} GPUs (indices 0-{count - 1})")


def out_of_range(index: int, count: int) -> str:
    """The reason for an index NVML does not have."""
    return f"GPU index {index} out of range: {_sees(count)}"


def uuid_not_found(uuid: str, count: int, *, malformed: bool = False) -> str:
    """The reason for a UUID NVML has no GPU for (``malformed``: one it cannot read)."""
    what = "is not a UUID NVML accepts" if malformed else "not found"
    return f"GPU {uuid} {what}: {_sees(count)}"


def _check_selection(selection: Sequence[int | str] | None) -> tuple[int | str, ...] | None:
    """The selection without repeats, in its order; ValueError when it names no GPU."""
    if selection is None:
        return None
    if isinstance(selection, str | bytes):  # a string is a sequence of one-letter strings
        raise ValueError(f"GPUs must be a list of NVML indices or UUIDs, not {selection!r}")
    bad = [s for s in selection if not _valid_selector(s)]
    if bad:
        raise ValueError(
            f"GPUs must be NVML indices (integers >= 0) or UUIDs (such as GPU-..., MIG-...), "
            f"not {bad!r}"
        )
    chosen = tuple(dict.fromkeys(selection))  # drop repeats, keep the order
    if not chosen:
        raise ValueError("GPU selection must not be empty (None selects all GPUs)")
    return chosen


def _valid_selector(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    if isinstance(value, str):
        # NVML's UUIDs are printable ASCII without blanks. An all-digit string is an index
        # written as a string, which NVML would only answer "not found" for.
        return (
            value.isascii()
            and value.isprintable()
            and value != ""
            and " " not in value
            and not value.isdigit()
        )
    return False


class GpuProbe:
    """Reads the memory of the selected GPUs through NVML. ``selection`` names them by NVML
    index (int) or UUID (str), in the order the snapshot lists them; None selects all. A GPU
    named twice (by its index and by its UUID) is counted once, where first named.

    Thread-safe. Call :meth:`close` when done; a closed probe initialises NVML again on its
    next snapshot.
    """

    def __init__(self, selection: Sequence[int | str] | None = None) -> None:
        self._selection = _check_selection(selection)
        self._initialised = False
        self._lock = threading.Lock()

    @property
    def selection(self) -> tuple[int | str, ...] | None:
        """The GPUs asked for, without repeats; None: all."""
        return self._selection

    @property
    def indices(self) -> tuple[int, ...] | None:
        """The selection when it names GPUs by index only (None: all). Which GPU a UUID is
        becomes known only at a snapshot, so for a selection with UUIDs this raises
        ValueError; use :attr:`selection`."""
        if self._selection is None:
            return None
        indices = tuple(s for s in self._selection if isinstance(s, int))
        if len(indices) != len(self._selection):
            raise ValueError("this GPU selection names GPUs by UUID; see GpuProbe.selection")
        return indices

    def snapshot(self) -> GpuSnapshot:
        """The selected GPUs now, or an unknown snapshot saying why not. Never raises."""
        with self._lock:
            where = "NVML init"
            try:
                if not self._initialised:
                    pynvml.nvmlInit()
                    self._initialised = True
                where = "NVML device count"
                count = int(pynvml.nvmlDeviceGetCount())
                self._check_range(count)
                # index -> the handle a UUID lookup gave (None: look it up by index)
                selected: dict[int, Any] = {}
                for chosen in self._selection or range(count):
                    if isinstance(chosen, int):
                        selected.setdefault(chosen, None)
                    else:
                        where = f"GPU {chosen}"
                        index, handle = self._resolve(chosen, count)
                        selected.setdefault(index, handle)
                gpus: list[GpuInfo] = []
                for index, handle in selected.items():
                    where = f"GPU {index}"
                    gpus.append(self._read(index, handle))
                return GpuSnapshot(gpus=tuple(gpus))
            except _Unknown as exc:
                return GpuSnapshot(error=str(exc))
            except Exception as exc:
                reason = describe_error(exc, where)  # before shutdown: it may ask the library
                self._shutdown()
                return GpuSnapshot(error=reason)

    def close(self) -> None:
        """Shut NVML down if this probe initialised it. Never raises."""
        with self._lock:
            self._shutdown()

    def __enter__(self) -> GpuProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_range(self, count: int) -> None:
        """Unknown when NVML has no GPU, or lacks an index the selection names (checked
        before any GPU is asked, as these need no NVML call)."""
        if self._selection is None:
            if count == 0:
                raise _Unknown(_sees(0))
            return
        for chosen in self._selection:
            if isinstance(chosen, int) and chosen >= count:
                raise _Unknown(out_of_range(chosen, count))

    @staticmethod
    def _resolve(uuid: str, count: int) -> tuple[int, Any]:
        """The index and handle of the GPU with this UUID; unknown when NVML has none."""
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError as exc:
            code = nvml_error_code(exc)
            if code in _UUID_UNKNOWN:
                malformed = code == pynvml.NVML_ERROR_INVALID_ARGUMENT
                raise _Unknown(uuid_not_found(uuid, count, malformed=malformed)) from exc
            raise
        return int(pynvml.nvmlDeviceGetIndex(handle)), handle

    @staticmethod
    def _read(index: int, handle: Any = None) -> GpuInfo:
        if handle is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):  # pynvml before 11.x returned bytes
            name = name.decode("utf-8", errors="replace")
        # With no version pynvml calls nvmlDeviceGetMemoryInfo (nvmlMemory_t v1: total, free,
        # used with reserved memory counted as used), which every driver has.
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return GpuInfo(
            index=index,
            name=str(name),
            total=int(memory.total),
            used=int(memory.used),
            free=int(memory.free),
            uuid=_read_uuid(handle),
        )

    def _shutdown(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        with contextlib.suppress(Exception):  # nothing useful to do when shutdown fails
            pynvml.nvmlShutdown()


def _read_uuid(handle: Any) -> str | None:
    """The GPU's UUID; None when this driver cannot tell it."""
    try:
        uuid = pynvml.nvmlDeviceGetUUID(handle)
    except pynvml.NVMLError as exc:
        if nvml_error_code(exc) in _NO_UUID:
            return None
        raise
    if isinstance(uuid, bytes):  # pynvml before 11.x returned bytes
        uuid = uuid.decode("utf-8", errors="replace")
    return str(uuid)


def _selector(arg: str) -> int | str:
    """A command-line GPU: a number is an NVML index (a negative one is refused as such),
    anything else a UUID."""
    return int(arg) if re.fullmatch(r"-?[0-9]+", arg) else arg


def main(argv: Sequence[str] | None = None) -> int:
    """Print one snapshot of the GPUs given by index or UUID (default: all) as JSON; exit
    status 0 when it is known, 1 when unknown, 2 on bad arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        probe = GpuProbe([_selector(a) for a in args] if args else None)
    except ValueError as exc:
        print(f"usage: python -m sentinel_keeper.gpu [INDEX|UUID ...]: {exc}", file=sys.stderr)
        return 2
    with probe:
        snapshot = probe.snapshot()
    print(json.dumps(snapshot.as_json(), indent=2))
    return 0 if snapshot.known else 1


if __name__ == "__main__":
    raise SystemExit(main())
