"""The gateway's process beside the real keeper: requests through it, its figures in the
keeper's metrics and in `status`; the keeper's passes keep their pace while the gateway is
saturated."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import ROOT, DaemonProcess, NotifySocket, free_port, wait_until
from tests.support.ollama_double import FakeModel, GiB, MiB, OllamaDouble

PINNED = "llama3.2:1b"


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble([FakeModel(PINNED, size=800 * MiB)], vram_total=24 * GiB)
    server.load_seconds = 0.8
    server.start()
    try:
        yield server
    finally:
        server.stop()


def passes(metrics: str) -> float:
    page = httpx.get(metrics, timeout=5).text
    line = next(x for x in page.splitlines() if x.startswith("sentinel_keeper_passes_total"))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
def test_requests_through_the_daemon_s_gateway_show_in_status(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port, metrics_port = free_port(), free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"interval: 1s\nollama:\n  url: {double.url}\n"
        f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n"
        f"gateway:\n  listen: 127.0.0.1:{port}\n"
        f"models:\n  - name: {PINNED}\n    keep_alive: 1h\n"
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(policy, tmp_path, notify)
    served = DaemonProcess(policy, tmp_path, tmp_path / "no-notify.sock", command="gateway")
    gateway = f"http://127.0.0.1:{port}"
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        served.wait_event(rf"^<6>gateway_listening listen=127\.0\.0\.1:{port} ollama=")
        notify.wait_for("READY", "1")
        # the keeper loaded it, and its clients find it warm
        request = {"model": PINNED, "prompt": "x", "stream": False, "keep_alive": "5m"}
        for _ in range(3):
            assert (
                httpx.post(gateway + "/api/generate", json=request, timeout=10).status_code == 200
            )
        served.wait_event(r"^<6>gateway_changed .*field=keep_alive before=5m after=3600")
        # 64 streams at once through the gateway, a pass a second all the while
        double.token_seconds = 0.25
        double.num_parallel = 64
        before = passes(metrics)
        codes: list[int] = []

        def stream() -> None:
            with httpx.stream(
                "POST", gateway + "/api/generate", json={"model": PINNED, "prompt": "x"}, timeout=30
            ) as answer:
                answer.read()
                codes.append(answer.status_code)

        threads = [threading.Thread(target=stream) for _ in range(64)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(2.5)
        during = passes(metrics)
        for t in threads:
            t.join(timeout=30)
        assert codes == [200] * 64
        assert during - before >= 2, "the passes stalled while the gateway was busy"
        assert time.monotonic() - started < 20

        def shown() -> dict[str, object] | None:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sentinel_keeper",
                    "--policy",
                    str(policy),
                    "status",
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
                check=False,
            )
            figures: dict[str, object] = json.loads(done.stdout)["daemon"]
            return figures if figures.get("gateway") else None

        figures = wait_until("the gateway's figures in status", shown)
        hour = figures["gateway"][PINNED]
        assert hour["requests"] == 67 and hour["cold"] == 0
        text = subprocess.run(
            [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy), "status"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        ).stdout
        assert "through the gateway, last hour:" in text
        assert f"{PINNED}" in text and "67 requests, 0 cold (0%)" in text
        page = httpx.get(metrics, timeout=5).text
        assert 'sentinel_keeper_gateway_up{instance="default"} 1.0' in page
        assert 'sentinel_keeper_gateway_degraded{instance="default",why="view_stale"} 0.0' in page
        assert daemon.alive() and served.alive()
    finally:
        code = daemon.stop()
        gateway_code = served.stop()
        notify.close()
    assert code == gateway_code == 0
    assert "gateway_stopped" in "\n".join(served.lines())
    assert "gateway_" not in "\n".join(daemon.lines())  # the keeper serves nothing
