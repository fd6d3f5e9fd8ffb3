"""sentinel_keeper.observe.gpu: through the real pynvml against a fake libnvidia-ml.so.1 (in
subprocesses, since the loader reads LD_LIBRARY_PATH at process start), plus unit tests of
the pure helpers with pynvml's functions replaced in-process."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from sentinel_keeper.observe.gpu import (
    GpuProbe,
    describe_error,
    main,
    out_of_range,
    uuid_not_found,
)
from sentinel_keeper.observe.observation import GpuInfo, GpuSnapshot
from sentinel_keeper.report.render import status_json
from tests.support.fake_nvml import (
    GIB,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INSUFFICIENT_SIZE,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NVML_ERROR_UNKNOWN,
    FakeGpu,
    FakeNvml,
    FakeNvmlUnavailable,
    default_uuid,
    library_dir,
    nvml_env,
)
from tests.support.planning import observation, policy

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 20.0  # bound on every wait for a subprocess

H100 = FakeGpu(
    name="NVIDIA H100 80GB HBM3", total=80 * GIB, reserved=GIB, used=9 * GIB, free=70 * GIB
)
L4 = FakeGpu(name="NVIDIA L4", total=24 * GIB, reserved=0, used=4 * GIB, free=20 * GIB)
# UUIDs as NVML spells them (nvidia-smi -L)
UUID_A = "GPU-5a0c8b6e-1d2f-4c3b-9a8e-7f6d5c4b3a21"
UUID_B = "GPU-d8d7e984-7a52-6ad0-676c-222f4be482b9"
UUID_MIG = "MIG-8c4c5a27-e508-5556-b2ea-7e549465741e"

# Runs in the subprocess: one GpuProbe, driven by lines on stdin, one JSON line per command.
DRIVER = """
import json, sys
from sentinel_keeper.observe.gpu import GpuProbe
probe = GpuProbe(json.loads(sys.argv[1]))
for line in sys.stdin:
    if line.strip() == "snap":
        print(json.dumps(probe.snapshot().as_json()), flush=True)
    elif line.strip() == "close":
        probe.close()
        print("{}", flush=True)
"""


@pytest.fixture(scope="session")
def lib_dir() -> Path:
    try:
        return library_dir()
    except FakeNvmlUnavailable as exc:
        # CI installs gcc (.ci/run): there, a missing compiler is a failure, never a skip
        if os.environ.get("CI") or os.environ.get("SENTINEL_FAKE_NVML") == "require":
            pytest.fail(f"the fake NVML library cannot be built: {exc} (apt-get install gcc)")
        pytest.skip(str(exc))


@dataclass
class Nvml:
    """The fake library's config and call log for one test, and the environment using them."""

    config: Path
    log: Path
    env: dict[str, str]

    def set(self, behaviour: FakeNvml) -> None:
        behaviour.write(self.config)

    def calls(self, prefix: str = "") -> list[str]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line for line in lines if line.startswith(prefix)]


def _python_env(env: dict[str, str]) -> dict[str, str]:
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def nvml(tmp_path: Path, lib_dir: Path) -> Nvml:
    config, log = tmp_path / "nvml.conf", tmp_path / "nvml.log"
    FakeNvml().write(config)
    return Nvml(config, log, _python_env(nvml_env(lib_dir, config, log)))


def run_main(env: dict[str, str], *gpus: int | str) -> tuple[int, dict[str, Any]]:
    """`python -m sentinel_keeper.gpu INDEX|UUID...`: its exit status and printed snapshot."""
    done = subprocess.run(
        [sys.executable, "-m", "sentinel_keeper.gpu", *map(str, gpus)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.stderr == ""
    out: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, out


class ProbeProcess:
    """A subprocess holding one GpuProbe across several snapshots."""

    def __init__(self, env: dict[str, str], selection: Sequence[int | str] | None = None) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                DRIVER,
                json.dumps(None if selection is None else list(selection)),
            ],
            env=env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # EOF

    def _ask(self, command: str) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        try:
            line = self._lines.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"no answer to {command!r} within {WAIT_S}s")
        assert line, f"probe process exited with {self._proc.wait(WAIT_S)}"
        out: dict[str, Any] = json.loads(line)
        return out

    def snap(self) -> dict[str, Any]:
        return self._ask("snap")

    def close_probe(self) -> None:
        self._ask("close")

    def stop(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(WAIT_S)


StartProbe = Callable[..., ProbeProcess]


@pytest.fixture
def probe_process() -> Iterator[StartProbe]:
    started: list[ProbeProcess] = []

    def start(env: dict[str, str], selection: Sequence[int | str] | None = None) -> ProbeProcess:
        proc = ProbeProcess(env, selection)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def gpu_dict(index: int, gpu: FakeGpu, uuid: str | None = "") -> dict[str, Any]:
    """What the probe reports for the fake GPU at ``index``: v1 memory info counts reserved
    as used; the UUID is the one configured, or the fake's default ("": whichever applies)."""
    if uuid == "":
        uuid = gpu.uuid or default_uuid(index)
    used = gpu.reserved + gpu.used
    return {
        "index": index,
        "uuid": uuid,
        "name": gpu.name,
        "total": gpu.total,
        "used": used,
        "free": gpu.free,
    }


# --- through pynvml and the fake library ---------------------------------------------------


def test_one_gpu(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100]))
    rc, snap = run_main(nvml.env)
    assert rc == 0
    assert snap == {
        "known": True,
        "error": None,
        "free": 70 * GIB,
        "total": 80 * GIB,
        "gpus": [gpu_dict(0, H100)],
    }
    # pynvml 13 asks the unversioned nvmlDeviceGetMemoryInfo (nvmlMemory_t v1)
    assert nvml.calls("nvmlDeviceGetMemoryInfo") == ["nvmlDeviceGetMemoryInfo 0 -> 0"]
    assert nvml.calls("nvmlShutdown") == ["nvmlShutdown -> 0"]  # main closes the probe


def test_two_gpus(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, L4]))
    rc, snap = run_main(nvml.env)
    assert rc == 0
    assert snap["gpus"] == [gpu_dict(0, H100), gpu_dict(1, L4)]
    assert (snap["free"], snap["total"]) == (90 * GIB, 104 * GIB)


def test_indices_select_gpus_in_the_order_given(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, L4, H100]))
    rc, snap = run_main(nvml.env, 2, 1, 2)
    assert rc == 0
    assert snap["gpus"] == [gpu_dict(2, H100), gpu_dict(1, L4)]
    assert nvml.calls("nvmlDeviceGetHandleByIndex_v2 0") == []  # GPU 0 never touched


def test_lost_gpu_outside_the_selection_does_not_matter(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, replace(L4, memory_rc=NVML_ERROR_GPU_IS_LOST)]))
    assert run_main(nvml.env, 0)[1]["known"] is True
    rc, snap = run_main(nvml.env)
    assert (rc, snap["error"], snap["gpus"]) == (1, "GPU 1: GPU is lost", [])


def test_index_out_of_range(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, L4]))
    rc, snap = run_main(nvml.env, 0, 2)
    assert rc == 1
    assert snap == {
        "known": False,
        "error": "GPU index 2 out of range: NVML sees 2 GPUs (indices 0-1)",
        "free": None,
        "total": None,
        "gpus": [],
    }


def test_no_gpus_is_unknown(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[]))
    rc, snap = run_main(nvml.env)
    assert (rc, snap["known"], snap["error"], snap["free"]) == (1, False, "NVML sees no GPUs", None)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (FakeNvml(init_rc=NVML_ERROR_DRIVER_NOT_LOADED), "NVML init: NVIDIA driver not loaded"),
        (FakeNvml(count_rc=NVML_ERROR_UNKNOWN), "NVML device count: Unknown Error (code 999)"),
        (FakeNvml(gpus=[replace(L4, name_rc=NVML_ERROR_GPU_IS_LOST)]), "GPU 0: GPU is lost"),
        (FakeNvml(gpus=[replace(L4, handle_rc=4)]), "GPU 0: Insufficient Permissions"),
        (FakeNvml(gpus=[replace(L4, memory_rc=3)]), "GPU 0: Not Supported"),
    ],
)
def test_nvml_failures_are_unknown_with_a_reason(
    nvml: Nvml, behaviour: FakeNvml, reason: str
) -> None:
    nvml.set(behaviour)
    rc, snap = run_main(nvml.env)
    assert (rc, snap["known"], snap["error"], snap["free"], snap["gpus"]) == (
        1,
        False,
        reason,
        None,
        [],
    )


def test_library_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _python_env(nvml_env(empty))
    probe = [sys.executable, "-c", "import ctypes; ctypes.CDLL('libnvidia-ml.so.1')"]
    found = subprocess.run(probe, env=env, capture_output=True, timeout=WAIT_S, check=False)
    if found.returncode == 0:
        pytest.skip("this system has a real libnvidia-ml.so.1")
    rc, snap = run_main(env)
    assert rc == 1
    assert snap["error"] == "NVML library libnvidia-ml.so.1 not found"
    assert (snap["known"], snap["free"], snap["total"]) == (False, None, None)


def test_nvml_stays_initialised_between_snapshots(nvml: Nvml, probe_process: StartProbe) -> None:
    nvml.set(FakeNvml(gpus=[H100]))
    proc = probe_process(nvml.env)
    for _ in range(3):
        assert proc.snap()["gpus"] == [gpu_dict(0, H100)]
    assert len(nvml.calls("nvmlInit")) == 1
    assert nvml.calls("nvmlShutdown") == []

    proc.close_probe()
    proc.close_probe()  # a second close does nothing
    assert nvml.calls("nvmlShutdown") == ["nvmlShutdown -> 0"]

    assert proc.snap()["known"] is True  # closed, then used again: initialises again
    assert len(nvml.calls("nvmlInit")) == 2


def test_memory_changes_are_seen(nvml: Nvml, probe_process: StartProbe) -> None:
    nvml.set(FakeNvml(gpus=[H100]))
    proc = probe_process(nvml.env)
    assert proc.snap()["free"] == 70 * GIB
    nvml.set(FakeNvml(gpus=[replace(H100, used=49 * GIB, free=30 * GIB)]))
    assert proc.snap()["free"] == 30 * GIB


def test_gpu_lost_then_back(nvml: Nvml, probe_process: StartProbe) -> None:
    nvml.set(FakeNvml(gpus=[H100, L4]))
    proc = probe_process(nvml.env)
    assert proc.snap()["known"] is True

    nvml.set(FakeNvml(gpus=[H100, replace(L4, memory_rc=NVML_ERROR_GPU_IS_LOST)]))
    lost = proc.snap()
    assert (lost["known"], lost["error"], lost["free"]) == (False, "GPU 1: GPU is lost", None)
    assert nvml.calls("nvmlShutdown") == ["nvmlShutdown -> 0"]

    # The fake, like NVML, keeps a lost GPU lost until NVML is initialised again, so this
    # passes only because the probe shut down and initialises again.
    nvml.set(FakeNvml(gpus=[H100, L4]))
    back = proc.snap()
    assert back["gpus"] == [gpu_dict(0, H100), gpu_dict(1, L4)]
    assert len(nvml.calls("nvmlInit")) == 2


def test_driver_not_loaded_then_loaded(nvml: Nvml, probe_process: StartProbe) -> None:
    nvml.set(FakeNvml(gpus=[H100], init_rc=NVML_ERROR_DRIVER_NOT_LOADED))
    proc = probe_process(nvml.env, [0])
    assert proc.snap()["error"] == "NVML init: NVIDIA driver not loaded"
    assert proc.snap()["error"] == "NVML init: NVIDIA driver not loaded"
    assert nvml.calls("nvmlShutdown") == []  # never initialised, nothing to shut down

    nvml.set(FakeNvml(gpus=[H100]))
    assert proc.snap()["gpus"] == [gpu_dict(0, H100)]
    assert nvml.calls("nvmlInit") == [
        "nvmlInitWithFlags 0 -> 9",
        "nvmlInitWithFlags 0 -> 9",
        "nvmlInitWithFlags 0 -> 0",
    ]


# --- selecting GPUs by UUID ----------------------------------------------------------------


def test_select_by_uuid(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[replace(H100, uuid=UUID_A), replace(L4, uuid=UUID_B)]))
    rc, snap = run_main(nvml.env, UUID_B)
    assert rc == 0
    assert snap == {
        "known": True,
        "error": None,
        "free": 20 * GIB,
        "total": 24 * GIB,
        "gpus": [gpu_dict(1, L4, UUID_B)],
    }
    assert nvml.calls("nvmlDeviceGetHandleBy") == [f"nvmlDeviceGetHandleByUUID {UUID_B} -> 0"]
    assert nvml.calls("nvmlDeviceGetIndex") == ["nvmlDeviceGetIndex 1 -> 0"]
    assert nvml.calls("nvmlDeviceGetMemoryInfo") == ["nvmlDeviceGetMemoryInfo 1 -> 0"]


def test_select_a_mig_device_by_uuid(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, replace(L4, uuid=UUID_MIG)]))
    rc, snap = run_main(nvml.env, UUID_MIG)
    assert (rc, snap["gpus"]) == (0, [gpu_dict(1, L4, UUID_MIG)])


def test_select_by_index_and_uuid_in_the_order_given(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, L4, replace(H100, uuid=UUID_A)]))
    rc, snap = run_main(nvml.env, UUID_A, 0)
    assert rc == 0
    assert snap["gpus"] == [gpu_dict(2, H100, UUID_A), gpu_dict(0, H100)]
    assert (snap["free"], snap["total"]) == (140 * GIB, 160 * GIB)
    assert nvml.calls("nvmlDeviceGetHandleByIndex") == ["nvmlDeviceGetHandleByIndex_v2 0 -> 0"]


def test_a_gpu_named_by_index_and_uuid_counts_once(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, L4]))
    rc, snap = run_main(nvml.env, 1, default_uuid(0), default_uuid(1), 0)
    assert rc == 0
    assert snap["gpus"] == [gpu_dict(1, L4), gpu_dict(0, H100)]  # where each was first named
    assert (snap["free"], snap["total"]) == (90 * GIB, 104 * GIB)  # not 180 and 208
    assert len(nvml.calls("nvmlDeviceGetMemoryInfo")) == 2


def test_unknown_uuid_is_unknown_with_a_reason(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, L4]))
    rc, snap = run_main(nvml.env, 0, UUID_A)
    assert rc == 1
    assert snap == {
        "known": False,
        "error": f"GPU {UUID_A} not found: NVML sees 2 GPUs (indices 0-1)",
        "free": None,
        "total": None,
        "gpus": [],
    }
    assert nvml.calls("nvmlDeviceGetHandleByUUID") == [
        f"nvmlDeviceGetHandleByUUID {UUID_A} -> {NVML_ERROR_NOT_FOUND}"
    ]


def test_unknown_uuid_with_no_gpus(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[]))
    rc, snap = run_main(nvml.env, UUID_A)
    assert (rc, snap["error"]) == (1, f"GPU {UUID_A} not found: NVML sees no GPUs")


def test_malformed_uuid_is_unknown_with_a_reason(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100]))
    rc, snap = run_main(nvml.env, "5a0c8b6e")
    assert (rc, snap["known"], snap["free"], snap["gpus"]) == (1, False, None, [])
    assert snap["error"] == "GPU 5a0c8b6e is not a UUID NVML accepts: NVML sees GPU 0"
    assert nvml.calls("nvmlDeviceGetHandleByUUID") == [
        f"nvmlDeviceGetHandleByUUID 5a0c8b6e -> {NVML_ERROR_INVALID_ARGUMENT}"
    ]


def test_a_uuid_is_looked_up_at_every_snapshot(nvml: Nvml, probe_process: StartProbe) -> None:
    nvml.set(FakeNvml(gpus=[H100]))
    proc = probe_process(nvml.env, [UUID_B])
    assert proc.snap()["error"] == f"GPU {UUID_B} not found: NVML sees GPU 0"
    assert nvml.calls("nvmlShutdown") == []  # a selection NVML lacks is no NVML failure

    nvml.set(FakeNvml(gpus=[H100, replace(L4, uuid=UUID_B)]))  # the GPU comes
    assert proc.snap()["gpus"] == [gpu_dict(1, L4, UUID_B)]
    nvml.set(FakeNvml(gpus=[replace(L4, uuid=UUID_B)]))  # and moves to index 0
    assert proc.snap()["gpus"] == [gpu_dict(0, L4, UUID_B)]
    assert len(nvml.calls("nvmlInit")) == 1


def test_gpu_selected_by_uuid_lost_then_back(nvml: Nvml, probe_process: StartProbe) -> None:
    gpus = [H100, replace(L4, uuid=UUID_B)]
    nvml.set(FakeNvml(gpus=gpus))
    proc = probe_process(nvml.env, [UUID_B])
    assert proc.snap()["gpus"] == [gpu_dict(1, L4, UUID_B)]

    nvml.set(FakeNvml(gpus=[H100, replace(gpus[1], memory_rc=NVML_ERROR_GPU_IS_LOST)]))
    assert proc.snap()["error"] == "GPU 1: GPU is lost"
    assert nvml.calls("nvmlShutdown") == ["nvmlShutdown -> 0"]

    # The fake keeps GPU 1 lost for the UUID lookup too until NVML is initialised again.
    nvml.set(FakeNvml(gpus=gpus))
    assert proc.snap()["gpus"] == [gpu_dict(1, L4, UUID_B)]
    assert len(nvml.calls("nvmlInit")) == 2


@pytest.mark.parametrize(
    ("rc", "reason"),
    [
        (NVML_ERROR_GPU_IS_LOST, f"GPU {UUID_B}: GPU is lost"),
        (4, f"GPU {UUID_B}: Insufficient Permissions"),
    ],
)
def test_uuid_lookup_failures_are_unknown(nvml: Nvml, rc: int, reason: str) -> None:
    nvml.set(FakeNvml(gpus=[H100, replace(L4, uuid=UUID_B, handle_rc=rc)]))
    code, snap = run_main(nvml.env, 0, UUID_B)
    assert (code, snap["known"], snap["error"], snap["free"]) == (1, False, reason, None)
    assert nvml.calls("nvmlShutdown") == ["nvmlShutdown -> 0"]


@pytest.mark.parametrize("rc", [NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND])
def test_a_uuid_the_driver_cannot_tell_is_none(nvml: Nvml, rc: int) -> None:
    nvml.set(FakeNvml(gpus=[replace(H100, uuid_rc=rc), L4]))
    code, snap = run_main(nvml.env)
    assert code == 0
    assert snap["gpus"] == [gpu_dict(0, H100, None), gpu_dict(1, L4)]
    assert nvml.calls("nvmlDeviceGetUUID") == [
        f"nvmlDeviceGetUUID 0 -> {rc}",
        "nvmlDeviceGetUUID 1 -> 0",
    ]


def test_other_uuid_read_failures_are_unknown(nvml: Nvml) -> None:
    nvml.set(FakeNvml(gpus=[H100, replace(L4, uuid_rc=NVML_ERROR_GPU_IS_LOST)]))
    code, snap = run_main(nvml.env)
    assert (code, snap["known"], snap["error"], snap["gpus"]) == (
        1,
        False,
        "GPU 1: GPU is lost",
        [],
    )


def test_library_missing_with_a_uuid(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _python_env(nvml_env(empty))
    probe = [sys.executable, "-c", "import ctypes; ctypes.CDLL('libnvidia-ml.so.1')"]
    found = subprocess.run(probe, env=env, capture_output=True, timeout=WAIT_S, check=False)
    if found.returncode == 0:
        pytest.skip("this system has a real libnvidia-ml.so.1")
    rc, snap = run_main(env, UUID_A, 0)
    assert (rc, snap["known"], snap["free"], snap["gpus"]) == (1, False, None, [])
    assert snap["error"] == "NVML library libnvidia-ml.so.1 not found"


# The fake's UUID calls, straight through ctypes: their return codes are NVML's.
FAKE_UUID_CALLS = """
import ctypes, json
lib = ctypes.CDLL("libnvidia-ml.so.1")
h, index, buf = ctypes.c_void_p(), ctypes.c_uint(99), ctypes.create_string_buffer(96)
out = {"before init": lib.nvmlDeviceGetHandleByUUID(b"GPU-x", ctypes.byref(h))}
assert lib.nvmlInit_v2() == 0
uuid1 = json.loads(__import__("sys").argv[1]).encode()
out["null uuid"] = lib.nvmlDeviceGetHandleByUUID(None, ctypes.byref(h))
out["null device"] = lib.nvmlDeviceGetHandleByUUID(uuid1, None)
out["unknown"] = lib.nvmlDeviceGetHandleByUUID(b"GPU-00000000-0000-4000-8000-000000000009",
                                                ctypes.byref(h))
out["found"] = lib.nvmlDeviceGetHandleByUUID(uuid1, ctypes.byref(h))
out["index"] = [lib.nvmlDeviceGetIndex(h, ctypes.byref(index)), index.value]
out["index null"] = lib.nvmlDeviceGetIndex(h, None)
out["uuid short"] = lib.nvmlDeviceGetUUID(h, buf, len(uuid1))  # no room for the NUL
out["uuid"] = [lib.nvmlDeviceGetUUID(h, buf, len(uuid1) + 1), buf.value.decode()]
out["uuid null"] = lib.nvmlDeviceGetUUID(h, None, 96)
assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h)) == 0
out["default uuid"] = [lib.nvmlDeviceGetUUID(h, buf, 96), buf.value.decode()]
uuid0 = buf.value
out["lost by name"] = lib.nvmlDeviceGetName(h, buf, 96)  # GPU 0's name_rc: lost
out["lost by uuid"] = lib.nvmlDeviceGetHandleByUUID(uuid0, ctypes.byref(h))
out["lost index"] = lib.nvmlDeviceGetIndex(h, ctypes.byref(index))
out["lost uuid"] = lib.nvmlDeviceGetUUID(h, buf, 96)
print(json.dumps(out))
"""


def test_fake_uuid_calls_answer_as_nvml_does(nvml: Nvml) -> None:
    nvml.set(
        FakeNvml(gpus=[replace(H100, name_rc=NVML_ERROR_GPU_IS_LOST), replace(L4, uuid=UUID_B)])
    )
    done = subprocess.run(
        [sys.executable, "-c", FAKE_UUID_CALLS, json.dumps(UUID_B)],
        env=nvml.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    assert json.loads(done.stdout) == {
        "before init": NVML_ERROR_UNINITIALIZED,
        "null uuid": NVML_ERROR_INVALID_ARGUMENT,
        "null device": NVML_ERROR_INVALID_ARGUMENT,
        "unknown": NVML_ERROR_NOT_FOUND,
        "found": 0,
        "index": [0, 1],
        "index null": NVML_ERROR_INVALID_ARGUMENT,
        "uuid short": NVML_ERROR_INSUFFICIENT_SIZE,
        "uuid": [0, UUID_B],
        "uuid null": NVML_ERROR_INVALID_ARGUMENT,
        "default uuid": [0, "GPU-00000000-0000-4000-8000-000000000000"],
        "lost by name": NVML_ERROR_GPU_IS_LOST,
        "lost by uuid": NVML_ERROR_GPU_IS_LOST,  # once lost, every call on the GPU says so
        "lost index": NVML_ERROR_GPU_IS_LOST,
        "lost uuid": NVML_ERROR_GPU_IS_LOST,
    }


# --- pure helpers, and the probe over a pynvml replaced in-process ----------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), "NVML library"),
        (pynvml.NVMLError_DriverNotLoaded(), "NVML init: NVIDIA driver not loaded"),
        (pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST), "NVML init: GPU is lost"),
        (pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN), "NVML init: Unknown Error (code 999)"),
        (RuntimeError("two\nlines"), "NVML init: RuntimeError: two lines"),
        (OSError(), "NVML init: OSError"),
    ],
)
def test_describe_error(exc: BaseException, reason: str) -> None:
    assert describe_error(exc, "NVML init").startswith(reason)


def test_out_of_range() -> None:
    assert out_of_range(1, 0) == "GPU index 1 out of range: NVML sees no GPUs"
    assert out_of_range(1, 1) == "GPU index 1 out of range: NVML sees GPU 0"
    assert out_of_range(4, 3) == "GPU index 4 out of range: NVML sees 3 GPUs (indices 0-2)"


def test_snapshot_json() -> None:
    gpu = GpuInfo(index=1, name="X", total=10, used=4, free=6, uuid=UUID_A)
    no_uuid = GpuInfo(index=0, name="Y", total=3, used=1, free=2)  # the default: None
    shown = GpuSnapshot(gpus=(gpu, no_uuid)).as_json()
    assert shown == {
        "known": True,
        "error": None,
        "free": 8,
        "total": 13,
        "gpus": [
            {"index": 1, "uuid": UUID_A, "name": "X", "total": 10, "used": 4, "free": 6},
            {"index": 0, "uuid": None, "name": "Y", "total": 3, "used": 1, "free": 2},
        ],
    }
    assert list(shown) == ["known", "error", "free", "total", "gpus"]  # the printed order
    assert list(shown["gpus"][0]) == ["index", "uuid", "name", "total", "used", "free"]
    unknown = GpuSnapshot(error="no").as_json()
    assert (unknown["known"], unknown["free"], unknown["total"]) == (False, None, None)


def test_snapshot_json_without_totals_is_the_status_json_shape() -> None:
    gpu = GpuInfo(index=1, name="X", total=10, used=4, free=6, uuid=UUID_MIG)
    shown = GpuSnapshot(gpus=(gpu,)).as_json(totals=False)
    assert shown == {
        "known": True,
        "error": None,
        "gpus": [{"index": 1, "uuid": UUID_MIG, "name": "X", "total": 10, "used": 4, "free": 6}],
    }
    assert list(shown) == ["known", "error", "gpus"]
    status = status_json(policy(), observation(gpu=GpuSnapshot(gpus=(gpu,))))
    assert json.dumps(status["gpu"]) == json.dumps(shown)


@pytest.mark.parametrize(
    "selection",
    [
        [-1],
        [True],
        [False],
        [1.0],
        [None],
        [b"GPU-1"],
        [""],
        ["  "],
        ["\t"],
        [UUID_A + " "],
        ["GPU-1\nGPU-2"],  # would break the one-line reason
        ["GPU-\x1b[2J"],
        ["GPU-é"],
        ["0"],  # an index written as a string: NVML could only say "not found"
        [0, "1"],
    ],
)
def test_bad_selections_are_refused(selection: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"^GPUs must be NVML indices \(integers >= 0\) or UUIDs"):
        GpuProbe(selection)


def test_empty_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        GpuProbe([])


def test_a_bare_string_is_refused() -> None:
    # not read as the one-letter "UUIDs" G, P, U, ...
    with pytest.raises(ValueError, match="must be a list"):
        GpuProbe(UUID_A)


def test_selection_drops_repeats() -> None:
    assert GpuProbe([3, 1, 3]).indices == (3, 1)
    assert GpuProbe([3, 1, 3]).selection == (3, 1)
    assert GpuProbe().indices is None
    assert GpuProbe().selection is None
    mixed = GpuProbe([UUID_B, 0, UUID_MIG, UUID_B, 0])
    assert mixed.selection == (UUID_B, 0, UUID_MIG)
    with pytest.raises(ValueError, match="by UUID"):
        _ = mixed.indices  # which index a UUID is shows only at a snapshot


def test_uuid_not_found() -> None:
    assert uuid_not_found(UUID_A, 0) == f"GPU {UUID_A} not found: NVML sees no GPUs"
    assert uuid_not_found(UUID_A, 1) == f"GPU {UUID_A} not found: NVML sees GPU 0"
    assert uuid_not_found("x", 3, malformed=True) == (
        "GPU x is not a UUID NVML accepts: NVML sees 3 GPUs (indices 0-2)"
    )


@pytest.mark.parametrize("args", [["-1"], [""], ["0", "GPU 0"], [UUID_A, "\t"]])
def test_main_refuses_bad_arguments(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m sentinel_keeper.gpu [INDEX|UUID ...]: GPUs must be")


class FakePynvml:
    """Replaces pynvml's calls in-process; records init and shutdown."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.fail: BaseException | None = None
        for name in ("nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetName"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", self.memory)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", self.uuid)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", self.by_uuid)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetIndex", lambda handle: handle)

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)  # must not escape

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Old \xffpynvml"

    def memory(self, handle: int) -> SimpleNamespace:
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(total=8, used=3, free=5)

    def uuid(self, handle: int) -> bytes:
        return f"GPU-old-{handle}".encode()

    def by_uuid(self, uuid: str) -> int:
        if not uuid.startswith("GPU-old-"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return int(uuid.removeprefix("GPU-old-"))


def test_any_exception_becomes_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePynvml(monkeypatch)
    probe = GpuProbe()
    # bytes decoded, as older pynvml returned them
    assert probe.snapshot().gpus == (GpuInfo(0, "Old \ufffdpynvml", 8, 3, 5, "GPU-old-0"),)
    fake.fail = ValueError("ctypes went wrong")
    assert probe.snapshot() == GpuSnapshot(error="GPU 0: ValueError: ctypes went wrong")
    fake.fail = None
    assert probe.snapshot().known
    assert fake.calls == ["init", "shutdown", "init"]
    probe.close()
    probe.close()
    assert fake.calls == ["init", "shutdown", "init", "shutdown"]


def test_close_before_any_snapshot_does_not_touch_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePynvml(monkeypatch)
    with GpuProbe([0]):
        pass
    assert fake.calls == []


def test_uuid_lookup_failure_becomes_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePynvml(monkeypatch)
    probe = GpuProbe(["GPU-old-0", 0])
    assert probe.snapshot().gpus == (GpuInfo(0, "Old \ufffdpynvml", 8, 3, 5, "GPU-old-0"),)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetIndex", lambda handle: 1 / 0)
    assert probe.snapshot() == GpuSnapshot(
        error="GPU GPU-old-0: ZeroDivisionError: division by zero"
    )
    assert fake.calls == ["init", "shutdown"]
