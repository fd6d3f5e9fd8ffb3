"""The daemon's metrics end to end: the real daemon against the Ollama double and the fake
NVML library, scraped over loopback HTTP with httpx and read with prometheus-client's own
parser, while a reader checks that the textfile is never seen half-written."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import ROOT, DaemonProcess, NotifySocket, free_port, wait_until
from tests.support.fake_nvml import NVML_ERROR_GPU_IS_LOST, FakeGpu, FakeNvml, library_dir, nvml_env
from tests.support.ollama_double import FakeModel, GiB, MiB, OllamaDouble

PINNED = "llama3.2:1b"
FOREIGN = "big:70b"  # not in the policy; with it loaded, the pinned model does not fit
Key = tuple[str, tuple[tuple[str, str], ...]]
DEFAULT = ("instance", "default")  # a policy without instances: is the instance "default"


def scrape(url: str) -> dict[Key, float]:
    answer = httpx.get(url, timeout=5.0)
    answer.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def until(what: str, url: str, check: Callable[[dict[Key, float]], bool]) -> dict[Key, float]:
    """Scrape until ``check`` holds; the figures that made it hold."""

    def attempt() -> dict[Key, float] | None:
        figures = scrape(url)
        return figures if check(figures) else None

    found: dict[Key, float] = wait_until(what, attempt)
    return found


def loads(figures: dict[Key, float], reason: str) -> float:
    key = (
        "sentinel_keeper_model_loads_total",
        (DEFAULT, ("model", PINNED), ("reason", reason), ("tier", "pinned")),
    )
    return figures.get(key, 0.0)


def one(figures: dict[Key, float], name: str) -> float:
    """The instance's one sample of ``name``."""
    return figures.get((name, (DEFAULT,)), float("nan"))


class TextfileReader:
    """Reads the textfile as fast as it can, parsing every read: a torn file would fail."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.torn: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            names = {
                s.name for f in text_string_to_metric_families(text) for s in f.samples
            }  # raises on a half-written line
            if not {"sentinel_keeper_build_info", "sentinel_keeper_start_time_seconds"} <= names:
                self.torn.append(text[-200:])
            self.reads += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    models = [FakeModel(PINNED, size=800 * MiB), FakeModel(FOREIGN, size=20 * GiB)]
    server = OllamaDouble(models, load_seconds=0.2, vram_total=24 * GiB)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_the_figures_follow_what_happens_to_ollama_and_the_gpu(
    tmp_path: Path, notify: NotifySocket, double: OllamaDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    textfile = tmp_path / "textfile" / "sentinel-keeper.prom"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"interval: 1s\nollama:\n  url: {double.url}\n  request_timeout: 500ms\n"
        f"metrics:\n  listen: 127.0.0.1:{port}\n  textfile: {textfile}\n"
        f"models:\n  - name: {PINNED}\n"
    )
    config = tmp_path / "nvml.conf"
    healthy = FakeNvml(gpus=[FakeGpu(total=24 * GiB, used=2 * GiB, free=22 * GiB)])
    healthy.write(config)
    env = nvml_env(library_dir(), config, base={})
    daemon = spawn(policy, LD_LIBRARY_PATH=env["LD_LIBRARY_PATH"], FAKE_NVML_CONFIG=str(config))
    notify.wait_for("READY", "1")
    daemon.wait_event(r"^<6>metrics_listening listen=127\.0\.0\.1:")
    reader = TextfileReader(textfile)
    try:
        start = until("the first load counted", url, lambda f: loads(f, "not_loaded") == 1)
        resident = (
            "sentinel_keeper_model_resident",
            (DEFAULT, ("model", PINNED), ("tier", "pinned")),
        )
        assert start[resident] == 1
        assert one(start, "sentinel_keeper_ollama_up") == 1
        assert one(start, "sentinel_keeper_nvml_available") == 1
        (gpu,) = [k for k in start if k[0] == "sentinel_keeper_gpu_memory_total_bytes"]
        assert dict(gpu[1])["instance"] == "default"
        assert (dict(gpu[1])["gpu"], dict(gpu[1])["name"]) == ("0", "NVIDIA H100 80GB HBM3")
        assert start[gpu] == 24 * GiB
        first_seconds = start[("sentinel_keeper_model_resident_seconds_total", resident[1])]

        # a client unloads the model: seen gone alone, loaded again
        httpx.post(
            f"{double.url}/api/generate", json={"model": PINNED, "keep_alive": 0}, timeout=10
        )
        unloaded = until("the unload counted", url, lambda f: loads(f, "unloaded") == 1)
        assert unloaded[("sentinel_keeper_model_evictions_total", resident[1])] == 0
        wait_until("resident again", lambda: scrape(url)[resident] == 1)

        # another client's large model makes Ollama evict it: an eviction
        httpx.post(
            f"{double.url}/api/generate", json={"model": FOREIGN, "keep_alive": "1m"}, timeout=30
        )
        evicted = until("the eviction counted", url, lambda f: loads(f, "evicted") == 1)
        assert evicted[("sentinel_keeper_model_evictions_total", resident[1])] == 1
        wait_until("resident again", lambda: scrape(url)[resident] == 1)

        # a client shortens keep_alive: reasserted
        httpx.post(
            f"{double.url}/api/generate", json={"model": PINNED, "keep_alive": "30s"}, timeout=10
        )
        wait_until(
            "the reassertion counted", lambda: loads(scrape(url), "keep_alive_shortened") == 1
        )

        # Ollama restarts: down, counted as an outage, then the model is loaded after restart
        restarting = threading.Thread(target=double.restart, kwargs={"down_seconds": 3.0})
        restarting.start()
        down = until("ollama_up 0", url, lambda f: one(f, "sentinel_keeper_ollama_up") == 0)
        assert resident not in down  # unknown while Ollama does not answer, not "0"
        restarting.join(timeout=10)
        back = until("loaded after the restart", url, lambda f: loads(f, "after_restart") == 1)
        assert one(back, "sentinel_keeper_ollama_up") == 1
        assert one(back, "sentinel_keeper_ollama_outages_total") == 1
        assert one(back, "sentinel_keeper_ollama_restarts_total") == 1
        assert one(back, "sentinel_keeper_ollama_outage_seconds_total") >= 2.0
        assert back[("sentinel_keeper_model_evictions_total", resident[1])] == 1  # not one more
        assert back[("sentinel_keeper_model_resident_seconds_total", resident[1])] > first_seconds

        # NVML goes away: said, and no stale GPU figures
        lost = FakeNvml(gpus=[replace(healthy.gpus[0], memory_rc=NVML_ERROR_GPU_IS_LOST)])
        lost.write(config)
        blind = until(
            "nvml_available 0", url, lambda f: one(f, "sentinel_keeper_nvml_available") == 0
        )
        assert not [k for k in blind if k[0].startswith("sentinel_keeper_gpu_memory_")]
        assert blind[resident] == 1  # the pinned model needs no NVML
        assert one(blind, "sentinel_keeper_passes_total") > one(
            start, "sentinel_keeper_passes_total"
        )
    finally:
        reader.stop()
    assert daemon.alive()
    # `status` reads the same figures back from the running daemon
    shown = subprocess.run(
        [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    figures = json.loads(shown.stdout)["daemon"]
    assert figures["available"], figures
    assert figures["instances"]["default"] == figures["models"]
    assert figures["models"][PINNED]["loads"] == {
        "not_loaded": 1,
        "unloaded": 1,
        "evicted": 1,
        "keep_alive_shortened": 1,
        "after_restart": 1,
    }
    assert figures["models"][PINNED]["evictions"] == 1
    assert figures["models"][PINNED]["resident_since"] is not None
    assert reader.reads > 20
    assert reader.torn == []
    # the textfile holds the same figures, without the endpoint's process_* ones
    written = textfile.read_text()
    assert "sentinel_keeper_model_loads_total" in written
    assert "process_resident_memory_bytes" not in written
    assert (textfile.stat().st_mode & 0o777) == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["sentinel-keeper.prom"]
