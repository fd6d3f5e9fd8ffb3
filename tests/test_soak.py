"""Soak: a simulated day of passes against an Ollama double that churns, with memory, file
descriptors, threads and the state file measured.

1. A day of 10 s intervals (8,640 passes) run back to back in a process of their own: the
   real Reconciler (httpx client, NVML through the fake library, the state directory) and the
   daemon's event history, against the double on 127.0.0.1 with a clock moved 10 s per pass.
   The double churns: clients load foreign models, shorten the pinned model's keep_alive,
   load it with another num_ctx, the extra expires and is removed and re-added, and Ollama
   restarts (every model unloaded). RSS, open fds and threads are read from /proc after a
   warm-up and at the end; the state file must stay the same size.
2. The daemon itself (`sentinel-keeper run`, scheduler, a thread per pass, sd_notify) at a
   50 ms interval for 12 s (about 200 passes), read from /proc/PID from outside.

Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.fake_nvml import FakeGpu, FakeNvml, library_dir, nvml_env
from tests.support.ollama_double import FakeModel, OllamaDouble

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PASSES = 8640  # a day of 10 s intervals
WARM_UP = 500
MiB = 1024**2

DAY = r"""
import gc, json, os, sys, threading, time, urllib.request
from datetime import UTC, datetime
sys.path.insert(0, sys.argv[1])
from tests.support.ollama_double import FakeModel, ManualClock, OllamaDouble
from sentinel_keeper.report.events import History, advance, pass_events
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.act.reconcile import Reconciler
from sentinel_keeper.act.state import StateStore

passes, warm_up, state_dir = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MiB = 1024**2
PINNED, EXTRA = "llama3.2:1b", "qwen2.5:0.5b"
FOREIGN = [f"foreign{i}:7b" for i in range(5)]
clock = ManualClock(1_800_000_000.0)
models = [FakeModel(PINNED, size=800 * MiB), FakeModel(EXTRA, size=300 * MiB)]
models += [FakeModel(name, size=500 * MiB) for name in FOREIGN]
double = OllamaDouble(models, clock=clock, vram_total=24 * 1024**3).start()
policy = parse_policy(
    f"ollama: {{url: '{double.url}', request_timeout: 2s, load_timeout: 5s}}\n"
    f"models:\n  - {{name: {PINNED}, options: {{num_ctx: 2048}}}}\n"
    f"  - {{name: {EXTRA}, tier: extra}}\n",
    "soak.yaml",
)
client = OllamaClient(double.url, timeout=2, load_timeout=5)
gpu = GpuProbe(None)
state = StateStore(state_dir)
reconciler = Reconciler(
    policy, client, gpu=gpu, state=state, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
)

def post(path, body):
    request = urllib.request.Request(
        double.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()

def figures():
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    state_file = os.path.join(state_dir, "state.json")
    return {
        "rss_kib": int(status["VmRSS"].split()[0]),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "state_bytes": os.path.getsize(state_file) if os.path.exists(state_file) else 0,
    }

history = History()
counts = {"loads": 0, "reloads": 0, "reasserts": 0, "restarts": 0, "events": 0, "failed": 0}
began = time.monotonic()
for n in range(1, passes + 1):
    double.advance(10)
    if n % 37 == 0:  # a client loads a foreign model for 5 minutes
        post("/api/generate", {"model": FOREIGN[n % 5], "keep_alive": "5m"})
    if n % 53 == 0:  # a client shortens the pinned model's keep_alive
        post("/api/generate", {"model": PINNED, "keep_alive": "1m", "options": {"num_ctx": 2048}})
    if n % 101 == 0:  # a client loads the pinned model with another num_ctx
        post("/api/generate", {"model": PINNED, "options": {"num_ctx": 4096}})
    if n % 211 == 0:  # the extra is removed, then comes back 5 passes later
        double.remove_model(EXTRA)
    if n % 211 == 5:
        double.add_model(FakeModel(EXTRA, size=300 * MiB))
    if n % 997 == 0:  # Ollama restarts: every model unloaded
        double.restart()
        counts["restarts"] += 1
    report = reconciler.run_pass()
    events = pass_events(history, report)
    history = advance(history, report)
    counts["events"] += len(events)
    for outcome in report.outcomes:
        kind = outcome.action.kind.value
        if not outcome.ok and not outcome.skipped:
            counts["failed"] += 1
        elif kind in ("load", "reload", "reassert"):
            counts[kind + "s"] += 1
    double.clear_requests()  # the double's own log is not the keeper's memory
    if n == warm_up:
        gc.collect()
        before = figures()
gc.collect()
after = figures()
print(json.dumps({
    "before": before, "after": after, "counts": counts,
    "seconds": time.monotonic() - began, "resident": double.instance(PINNED) is not None,
}))
double.stop()
"""


def test_a_simulated_day_of_passes_leaks_nothing(tmp_path: Path) -> None:
    config = tmp_path / "nvml.conf"
    FakeNvml(gpus=[FakeGpu(total=24 * 1024**3, used=2 * 1024**3, free=22 * 1024**3)]).write(config)
    env = nvml_env(library_dir(), config)
    done = subprocess.run(
        [sys.executable, "-c", DAY, str(TESTS), str(PASSES), str(WARM_UP), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    before, after, counts = result["before"], result["after"], result["counts"]
    growth_kib = after["rss_kib"] - before["rss_kib"]
    print(
        f"\n{PASSES} passes (a day of 10 s intervals) in {result['seconds']:.1f} s: {counts}\n"
        f"after {WARM_UP} passes: RSS {before['rss_kib'] / 1024:.1f} MiB, fds {before['fds']}, "
        f"threads {before['threads']}, state file {before['state_bytes']} B\n"
        f"after {PASSES} passes: RSS {after['rss_kib'] / 1024:.1f} MiB, fds {after['fds']}, "
        f"threads {after['threads']}, state file {after['state_bytes']} B\n"
        f"RSS growth {growth_kib} KiB"
    )
    # The churn happened: every kind of repair ran many times over the day.
    assert counts["loads"] >= 50 and counts["reloads"] >= 50 and counts["reasserts"] >= 50
    assert counts["restarts"] == PASSES // 997
    assert counts["failed"] == 0
    assert result["resident"]
    assert after["fds"] == before["fds"]
    assert after["threads"] == before["threads"]
    assert after["state_bytes"] == before["state_bytes"] > 0
    assert growth_kib < 2048, f"RSS grew {growth_kib} KiB over {PASSES - WARM_UP} passes"


def _proc(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return {
        "rss_kib": int(status["VmRSS"].split()[0]),
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def test_the_daemon_at_a_50_ms_interval_leaks_nothing(tmp_path: Path) -> None:
    double = OllamaDouble(
        [FakeModel("llama3.2:1b", size=800 * MiB), FakeModel("foreign:7b", size=500 * MiB)]
    ).start()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"interval: 50ms\nollama:\n  url: {double.url}\n  request_timeout: 2s\n"
        "models:\n  - name: llama3.2:1b\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY"))}
    env["STATE_DIRECTORY"] = str(tmp_path / "state")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy), "run"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3.0)  # warm: imports done, first passes run
        ps_before = len(double.requests_to("/api/ps"))
        before = _proc(proc.pid)
        deadline = time.monotonic() + 12.0
        pinned = double.lookup("llama3.2:1b")
        assert pinned is not None
        evictions = 0
        while time.monotonic() < deadline:  # churn: the pinned model evicted, again and again
            time.sleep(0.75)
            double.expire(pinned)
            evictions += 1
        after = _proc(proc.pid)
        passes = len(double.requests_to("/api/ps")) - ps_before
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        double.stop()
    growth = after["rss_kib"] - before["rss_kib"]
    print(
        f"\ndaemon, about {passes} passes and {evictions} evictions in 12 s: "
        f"RSS {before['rss_kib'] / 1024:.1f} -> {after['rss_kib'] / 1024:.1f} MiB "
        f"({growth:+d} KiB), fds {before['fds']} -> {after['fds']}, "
        f"threads {before['threads']} -> {after['threads']}"
    )
    assert code == 0
    assert passes >= 100
    assert double.load_count >= evictions  # every eviction was repaired
    assert after["fds"] == before["fds"]
    assert after["threads"] <= before["threads"] + 1  # a pass's thread may be running
    assert growth < 1024
