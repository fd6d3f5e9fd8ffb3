"""GPU memory through NVML. The only module of sentinel-keeper that imports pynvml.

:class:`GpuProbe` initialises NVML on its first snapshot and keeps it initialised, so later
snapshots cost a few cheap calls. Any failure becomes an *unknown* snapshot
(``GpuSnapshot(error=...)``) with a one-line reason, never zero free memory; after a failure
NVML is shut down and initialised again on the next snapshot, so a GPU or driver that comes
back is seen again.

Indices are NVML's (the order ``nvidia-smi`` shows, by PCI bus id), which is not necessarily
the order CUDA_VISIBLE_DEVICES uses.

``python -m sentinel_keeper.gpu [INDEX ...]`` prints one snapshot as JSON, for checks by hand.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Sequence

# Importing pynvml does not load libnvidia-ml.so.1; nvmlInit does, so a machine without the
# library still imports this module and gets unknown snapshots.
import pynvml

from sentinel_keeper.observation import GpuInfo, GpuSnapshot

LIBRARY_NAME = "nvml.dll" if sys.platform.startswith("win") else "libnvidia-ml.so.1"


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


def out_of_range(index: int, count: int) -> str:
    """The reason for an index NVML does not have."""
    if count == 0:
        return f"GPU index {index} out of range: NVML sees no GPUs"
    have = "GPU 0" if count == 1 else f"{count} GPUs (indices 0-{count - 1})"
    return f"GPU index {index} out of range: NVML sees {have}"


class GpuProbe:
    """Reads the memory of the selected GPUs (``indices``; None: all) through NVML.

    Thread-safe. Call :meth:`close` when done; a closed probe initialises NVML again on its
    next snapshot.
    """

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        if indices is not None:
            bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or i < 0]
            if bad:
                raise ValueError(f"GPU indices must be integers >= 0, not {bad!r}")
            indices = tuple(dict.fromkeys(indices))  # drop repeats, keep the order
            if not indices:
                raise ValueError("GPU indices must not be empty (None selects all GPUs)")
        self._indices: tuple[int, ...] | None = indices
        self._initialised = False
        self._lock = threading.Lock()

    @property
    def indices(self) -> tuple[int, ...] | None:
        return self._indices

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
                selected = self._select(count)
                gpus: list[GpuInfo] = []
                for index in selected:
                    where = f"GPU {index}"
                    gpus.append(self._read(index))
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

    def _select(self, count: int) -> tuple[int, ...]:
        if self._indices is None:
            if count == 0:
                raise _Unknown("NVML sees no GPUs")
            return tuple(range(count))
        for index in self._indices:
            if index >= count:
                raise _Unknown(out_of_range(index, count))
        return self._indices

    @staticmethod
    def _read(index: int) -> GpuInfo:
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
        )

    def _shutdown(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        with contextlib.suppress(Exception):  # nothing useful to do when shutdown fails
            pynvml.nvmlShutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Print one snapshot of the GPUs given by index (default: all) as JSON; exit status 0
    when it is known, 1 when unknown, 2 on bad arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        indices = [int(a) for a in args] if args else None
        probe = GpuProbe(indices)
    except ValueError as exc:
        print(f"usage: python -m sentinel_keeper.gpu [INDEX ...]: {exc}", file=sys.stderr)
        return 2
    with probe:
        snapshot = probe.snapshot()
    print(json.dumps(snapshot.as_json(), indent=2))
    return 0 if snapshot.known else 1


if __name__ == "__main__":
    raise SystemExit(main())
