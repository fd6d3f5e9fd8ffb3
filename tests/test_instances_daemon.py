"""Several Ollama instances under one daemon: two doubles on two loopback ports, two fake
GPUs, the real daemon. Each instance keeps its own models; extras are admitted by their own
GPU's free memory only; one instance restarting or down holds up no other; READY waits for
every instance; a reload adds and removes instances."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, NotifySocket, wait_until
from tests.support.fake_nvml import FakeGpu, FakeNvml, default_uuid, library_dir, nvml_env
from tests.support.ollama_double import FakeModel, GiB, MiB, OllamaDouble

PINNED_A = "llama3.2:1b"
EXTRA_A = "qwen2.5:0.5b"
PINNED_B = "nomic-embed-text:latest"
EXTRA_B = "phi3:mini"
SLOW = "big:13b"  # loads for seconds on instance a


def _double(*models: FakeModel, load_seconds: float = 0.1) -> OllamaDouble:
    return OllamaDouble(list(models), load_seconds=load_seconds, vram_total=24 * GiB).start()


@pytest.fixture
def doubles() -> Iterator[tuple[OllamaDouble, OllamaDouble]]:
    a = _double(
        FakeModel(PINNED_A, size=800 * MiB),
        FakeModel(EXTRA_A, size=2 * GiB),
        FakeModel(SLOW, size=4 * GiB),
    )
    b = _double(FakeModel(PINNED_B, size=300 * MiB), FakeModel(EXTRA_B, size=2 * GiB))
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _nvml(tmp_path: Path) -> dict[str, str]:
    """GPU 0 with room to spare, GPU 1 nearly full: together they would fit any extra."""
    config = tmp_path / "nvml.conf"
    FakeNvml(
        gpus=[
            FakeGpu(name="GPU zero", total=24 * GiB, used=4 * GiB, free=20 * GiB),
            FakeGpu(name="GPU one", total=8 * GiB, used=7 * GiB, free=1 * GiB),
        ]
    ).write(config)
    env = nvml_env(library_dir(), config, base={})
    return {"LD_LIBRARY_PATH": env["LD_LIBRARY_PATH"], "FAKE_NVML_CONFIG": str(config)}


def _policy(
    a: OllamaDouble,
    b: OllamaDouble,
    *,
    models_a: str = f"  - {{name: {PINNED_A}, instance: a}}\n"
    f"  - {{name: {EXTRA_A}, instance: a, tier: extra}}\n",
    with_b: bool = True,
    extra: str = "",
) -> str:
    text = (
        "interval: 2s\nmetrics: {listen: null}\nstartup_timeout: 60s\n"
        "instances:\n"
        f"  - {{name: a, url: '{a.url}', unit: ollama.service, gpus: [0], "
        "request_timeout: 1s}\n"
    )
    if with_b:
        text += (
            f"  - {{name: b, url: '{b.url}', unit: ollama-b.service, "
            f"gpus: ['{default_uuid(1)}'], request_timeout: 1s}}\n"
        )
    text += "models:\n" + models_a
    if with_b:
        text += (
            f"  - {{name: {PINNED_B}, instance: b}}\n"
            f"  - {{name: {EXTRA_B}, instance: b, tier: extra}}\n"
        )
    return text + extra


def _resident(double: OllamaDouble, *names: str) -> bool:
    return all(double.instance(n) is not None for n in names)


@pytest.mark.slow
def test_each_instance_keeps_its_models_and_admits_extras_by_its_own_gpu(
    tmp_path: Path,
    notify: NotifySocket,
    doubles: tuple[OllamaDouble, OllamaDouble],
    spawn: Callable[..., DaemonProcess],
) -> None:
    a, b = doubles
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(a, b))
    daemon = spawn(policy, **_nvml(tmp_path))
    ready = notify.wait_for("READY", "1")
    assert _resident(a, PINNED_A) and _resident(b, PINNED_B)
    status = ready.fields["STATUS"]
    assert status.startswith("a: ") and "; b: " in status, status
    # a's extra fits in GPU 0's free memory; b's does not fit in GPU 1's (the two GPUs'
    # free memory together would hold it: each instance counts only its own)
    wait_until("a's extra", lambda: _resident(a, EXTRA_A))
    skipped = daemon.wait_line(r"^<\d>extra_skipped .*instance=b")
    assert EXTRA_B in skipped
    assert b.instance(EXTRA_B) is None and a.instance(EXTRA_B) is None
    assert not [r for r in b.requests_to("/api/generate") if r.body.get("model") == EXTRA_B]
    # each model went to its own Ollama only
    assert a.instance(PINNED_B) is None and b.instance(PINNED_A) is None
    # every line about an instance says which
    loaded = [x for x in daemon.lines() if x.startswith("<6>model_loaded ")]
    assert {x.split("instance=")[1].split()[0] for x in loaded} == {"a", "b"}, loaded
    # each instance remembers its own footprints
    state = tmp_path / "state" / "instances"
    wait_until("b's state file", (state / "b" / "state.json").exists)
    remembered_b = json.loads((state / "b" / "state.json").read_text())["footprints"]
    remembered_a = json.loads((state / "a" / "state.json").read_text())["footprints"]
    assert set(remembered_b) == {PINNED_B}
    assert set(remembered_a) >= {PINNED_A}


@pytest.mark.slow
def test_one_instance_restarting_is_rewarmed_while_the_other_is_still_loading(
    tmp_path: Path,
    notify: NotifySocket,
    doubles: tuple[OllamaDouble, OllamaDouble],
    spawn: Callable[..., DaemonProcess],
) -> None:
    a, b = doubles
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(a, b))
    daemon = spawn(policy, **_nvml(tmp_path))
    notify.wait_for("READY", "1")
    # a long load on a: b's passes must not wait for it
    a.load_seconds = 8.0
    policy.write_text(
        _policy(
            a,
            b,
            models_a=f"  - {{name: {PINNED_A}, instance: a}}\n  - {{name: {SLOW}, instance: a}}\n",
        )
    )
    since = time.monotonic()
    daemon.signal(1)  # SIGHUP
    wait_until("a's slow load to start", lambda: len(a.requests_to("/api/generate")) >= 2)
    loads_a = a.load_count
    b_loads = b.load_count
    b.restart(down_seconds=0.5)  # every model on b gone
    back = time.monotonic()
    wait_until("b's pinned model back", lambda: _resident(b, PINNED_B), timeout=6.0)
    seconds = time.monotonic() - back
    # a is still in the middle of its load
    assert a.instance(SLOW) is None, "a's slow load finished before b was rewarmed"
    assert a.load_count == loads_a
    assert b.load_count == b_loads + 1
    assert seconds < 6.0
    daemon.wait_line(r"^<6>model_loaded .*instance=b", timeout=5.0, since=back)
    lines = daemon.lines(since=since)
    assert any("model_missing" in x and "instance=b" in x for x in lines), lines
    assert not any("instance=a" in x and x.startswith("<4>") for x in lines), lines
    # and a's load finishes in its own time
    wait_until("a's slow model", lambda: _resident(a, SLOW), timeout=15.0)
    assert _resident(a, PINNED_A) and _resident(b, PINNED_B)


@pytest.mark.slow
def test_ready_waits_for_every_instance(
    tmp_path: Path,
    notify: NotifySocket,
    doubles: tuple[OllamaDouble, OllamaDouble],
    spawn: Callable[..., DaemonProcess],
) -> None:
    a, b = doubles
    b.stop()  # b's Ollama is not up yet
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(a, b))
    daemon = spawn(policy, **_nvml(tmp_path))
    wait_until("a's pinned model", lambda: _resident(a, PINNED_A))
    daemon.wait_line(r"^<4>ollama_unreachable .*instance=b")
    time.sleep(1.0)
    assert not notify.with_field("READY"), "READY before b's pinned model was resident"
    statuses = notify.statuses()
    assert any(s.startswith("a: ") and "b: waiting for ollama at" in s for s in statuses), statuses
    b.restart()  # up, on the same port
    notify.wait_for("READY", "1", timeout=10.0)
    assert _resident(b, PINNED_B)
    line = daemon.wait_line(r"^<6>ready ")
    assert "why=" in line and "a: pinned resident; b: pinned resident" in line, line


@pytest.mark.slow
def test_a_reload_adds_and_removes_instances(
    tmp_path: Path,
    notify: NotifySocket,
    doubles: tuple[OllamaDouble, OllamaDouble],
    spawn: Callable[..., DaemonProcess],
) -> None:
    a, b = doubles
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(a, b, with_b=False))
    daemon = spawn(policy, **_nvml(tmp_path))
    notify.wait_for("READY", "1")
    assert b.load_count == 0
    policy.write_text(_policy(a, b))
    daemon.signal(1)
    daemon.wait_line(r"^<6>instance_added instance=b ")
    daemon.wait_line(r"^<6>model_loaded .*instance=b")
    assert _resident(b, PINNED_B)
    loads_a = a.load_count
    policy.write_text(_policy(a, b, with_b=False))
    since = time.monotonic()
    daemon.signal(1)
    daemon.wait_line(r"^<6>instance_removed instance=b ")
    b.restart()  # nobody brings b's model back now
    time.sleep(3.0)
    assert b.instance(PINNED_B) is None
    assert a.load_count == loads_a  # a was never disturbed
    assert not [x for x in daemon.lines(since=since) if "instance=b" in x and "model_" in x]
