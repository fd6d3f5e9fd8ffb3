"""A stand-in libnvidia-ml.so.1 for tests, built from fake_nvml.c with gcc.

pynvml loads the library with ``CDLL("libnvidia-ml.so.1")``, and the dynamic loader reads
LD_LIBRARY_PATH only when a process starts, so tests run the code under test in a subprocess
whose environment comes from :func:`nvml_env`. The library re-reads its behaviour file (see
:class:`FakeNvml`) on every call, so a test may rewrite it while that process runs.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"

# nvmlReturn_t values (nvml.h; the same numbers as pynvml.NVML_ERROR_*)
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

GIB = 1024**3


def default_uuid(index: int) -> str:
    """The UUID the fake gives GPU ``index`` when its config names none."""
    return f"GPU-00000000-0000-4000-8000-{index:012d}"


class FakeNvmlUnavailable(RuntimeError):
    """The fake library cannot be built here (no C compiler)."""


def build_library(out_dir: Path) -> Path:
    """Compile fake_nvml.c into ``out_dir/libnvidia-ml.so.1``; return ``out_dir``."""
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise FakeNvmlUnavailable("no C compiler (gcc or cc) on PATH")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / LIBRARY_NAME
    cmd = [cc, "-shared", "-fPIC", "-fvisibility=hidden", "-O1", "-Wall", "-Wextra", "-Werror"]
    cmd += ["-o", str(target), str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the fake NVML library failed:\n{done.stderr}")
    return out_dir


@functools.cache
def library_dir() -> Path:
    """The directory holding the fake libnvidia-ml.so.1, built once per process."""
    tmp = Path(tempfile.mkdtemp(prefix="fake-nvml-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return build_library(tmp)


def nvml_env(
    lib_dir: Path | str,
    config: Path | None = None,
    log: Path | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An environment whose processes load libnvidia-ml.so.1 from ``lib_dir`` (an empty
    directory: none, unless the system has a real one) and read the fake's behaviour from
    ``config``."""
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = str(lib_dir)
    for name, value in (("FAKE_NVML_CONFIG", config), ("FAKE_NVML_LOG", log)):
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


@dataclass(frozen=True)
class FakeGpu:
    """One GPU of the fake. ``used`` is what nvmlMemory_v2_t calls used; the v1 call reports
    ``reserved + used`` as used, as the real library does. ``uuid`` None: the fake's default
    for the GPU's index (:func:`default_uuid`). ``*_rc`` inject failures."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str | None = None
    total: int = 80 * GIB
    used: int = 10 * GIB
    free: int = 70 * GIB
    reserved: int = 0
    handle_rc: int = NVML_SUCCESS
    name_rc: int = NVML_SUCCESS
    memory_rc: int = NVML_SUCCESS
    uuid_rc: int = NVML_SUCCESS


@dataclass(frozen=True)
class FakeNvml:
    """The whole behaviour of the fake library, written as its config file."""

    gpus: Sequence[FakeGpu] = field(default_factory=lambda: (FakeGpu(),))
    init_rc: int = NVML_SUCCESS
    shutdown_rc: int = NVML_SUCCESS
    count_rc: int = NVML_SUCCESS
    driver_version: str = "999.99.99"

    def render(self) -> str:
        lines = [
            f"init_rc = {self.init_rc}",
            f"shutdown_rc = {self.shutdown_rc}",
            f"count = {len(self.gpus)}",
            f"count_rc = {self.count_rc}",
            f"driver_version = {self.driver_version}",
        ]
        for i, gpu in enumerate(self.gpus):
            lines += [
                f"gpu{i}.name = {gpu.name}",
                f"gpu{i}.total = {gpu.total}",
                f"gpu{i}.reserved = {gpu.reserved}",
                f"gpu{i}.used = {gpu.used}",
                f"gpu{i}.free = {gpu.free}",
                f"gpu{i}.handle_rc = {gpu.handle_rc}",
                f"gpu{i}.name_rc = {gpu.name_rc}",
                f"gpu{i}.memory_rc = {gpu.memory_rc}",
                f"gpu{i}.uuid_rc = {gpu.uuid_rc}",
            ]
            if gpu.uuid is not None:
                lines.append(f"gpu{i}.uuid = {gpu.uuid}")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically, so a reader never sees half a file."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        tmp.replace(path)
