"""What the gateway's process holds in memory, for its unit's MemoryMax= and TasksMax=: the
gateway (``python -m sentinel_keeper gateway``) in front of the Ollama double, its RSS and
thread count sampled every 20 ms from /proc while

- ``idle``: it listens and nothing comes;
- ``bodies``: ``--concurrency`` clients at once each send a generate request whose JSON body
  is as large as ``gateway.max_body`` allows (one long prompt: what the gateway reads whole,
  decodes and forwards), ``--rounds`` times over; the double answers each after a
  ``--hold`` of seconds, so that every body is held at the same time;
- ``connections``: ``--idle-connections`` idle client connections held open.

    python -m benchmarks.gateway_memory

prints a table; the unit's comment cites it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks._harness import DaemonProcess, NotifySocket
from tests.support.daemon import free_port
from tests.support.ollama_double import FakeModel, GiB, MiB, OllamaDouble

MODEL = "llama3.2:1b"
SAMPLE_SECONDS = 0.02


@dataclass
class Sampler:
    """The peak RSS and thread count of one process, sampled from /proc in a thread."""

    pid: int
    peak_rss: int = 0
    peak_threads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def read(self) -> tuple[int, int]:
        rss = threads = 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        return rss, threads

    def __enter__(self) -> Sampler:
        self.peak_rss, self.peak_threads = self.read()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            rss, threads = self.read()
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_threads = max(self.peak_threads, threads)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


async def send_bodies(url: str, size: int, concurrency: int, rounds: int) -> list[int]:
    prompt = "x" * (size - 200)  # the rest of the body: model, keys, quotes
    body = f'{{"model":"{MODEL}","prompt":"{prompt}","stream":false}}'.encode()
    codes: list[int] = []
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(rounds):
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{url}/api/generate",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    for _ in range(concurrency)
                )
            )
            codes += [a.status_code for a in answers]
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-body", default="16MiB", help="gateway.max_body (default 16MiB)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hold", type=float, default=1.0, help="seconds the double holds each")
    parser.add_argument("--idle-connections", type=int, default=1000)
    args = parser.parse_args(argv)
    size = int(args.max_body.removesuffix("MiB")) * MiB

    double = OllamaDouble([FakeModel(MODEL, size=800 * MiB)], vram_total=24 * GiB)
    double.num_parallel = args.concurrency
    double.first_token_seconds = args.hold
    double.start()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-memory-"))
    port = free_port()
    policy = workdir / "policy.yaml"
    policy.write_text(
        f"ollama:\n  url: {double.url}\nmetrics:\n  listen: null\n"
        f"gateway:\n  listen: 127.0.0.1:{port}\n  max_body: {args.max_body}\n"
        f"models:\n  - name: {MODEL}\n"
    )
    notify = NotifySocket(workdir / "notify.sock")
    gateway = DaemonProcess(policy, workdir, notify, command="gateway", log_format="json")
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, str, str]] = []
    try:
        notify.wait_for("READY", "1", timeout=60)
        httpx.post(f"{url}/api/generate", json={"model": MODEL}, timeout=60)  # warm
        time.sleep(1.0)
        with Sampler(gateway.pid) as idle:
            time.sleep(2.0)
        rows.append(("idle", mib(idle.peak_rss), str(idle.peak_threads)))
        with Sampler(gateway.pid) as bodies:
            codes = asyncio.run(send_bodies(url, size, args.concurrency, args.rounds))
        bad = [c for c in codes if c != 200]
        rows.append(
            (
                f"{args.concurrency} bodies of {args.max_body} at once, x{args.rounds}"
                + (f" ({len(bad)} not 200: {sorted(set(bad))})" if bad else ""),
                mib(bodies.peak_rss),
                str(bodies.peak_threads),
            )
        )
        held: list[socket.socket] = []
        with Sampler(gateway.pid) as connections:
            for _ in range(args.idle_connections):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(1.0)
            ok = httpx.get(f"{url}/api/version", timeout=10).status_code
        for sock in held:
            sock.close()
        rows.append(
            (
                f"{args.idle_connections} idle connections (a request meanwhile: {ok})",
                mib(connections.peak_rss),
                str(connections.peak_threads),
            )
        )
    finally:
        gateway.stop()
        notify.close()
        double.stop()
    print(f"the gateway's process (pid {gateway.pid}), {os.cpu_count()} CPUs")
    print("| what | peak RSS | peak threads |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
