"""What the gateway costs a request: the real daemon with its gateway on, against the Ollama
double, side by side in one run with the same requests sent to the double directly.

The double runs in its own process (its own interpreter, so that its threads do not share
a GIL with the client's), with a first token in ``--first-token-ms`` and the next ones every
``--token-ms`` (small: the gateway's own cost is then visible), one small model pinned by the
daemon's policy and already warm, and OLLAMA_NUM_PARALLEL high enough for every stream at
once. The daemon is ``python -m sentinel_keeper run`` with ``gateway.listen`` on a free
loopback port and its metrics endpoint on. The client (http.client on one kept-alive
connection per path for the timings, httpx.AsyncClient for the concurrent streams) sends the
same requests both ways, interleaved, so that drift of the machine cancels out. Requests
carry the pinned model's options, so the gateway forwards their bodies as they came.

Phases:

- ``latency``: small non-streamed /api/generate requests; latency p50/p99 each way, and the
  added latency (gateway minus direct) at p50 and p99;
- ``stream``: streamed requests: time to the first chunk, mean delay between chunks;
- ``throughput``: 1, 16 and 128 concurrent streams (``--concurrency``) for ``--seconds``
  each way: answers per second and chunks per second;
- ``soak``: ``--soak`` requests through the gateway (after a warm-up of 1,000) with the
  daemon's RSS sampled every 1,000: memory growth; the daemon's CPU seconds for them.

Every answer is compared: the gateway's bodies are byte-identical to Ollama's once the
fields that differ between two answers anyway (``created_at`` and the ``*_duration``
timings) are taken out.

    python -m benchmarks.gateway_overhead --out docs

writes docs/gateway.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import _harness
from benchmarks._harness import DaemonProcess, NotifySocket, PinnedModel, percentile, write_policy
from tests.support.daemon import free_port
from tests.support.ollama_double import FakeModel, GiB, MiB, OllamaDouble

MODEL = PinnedModel(
    FakeModel(
        "tiny:1b",
        size=200 * MiB,
        block_count=4,
        head_count_kv=1,
        embedding_length=64,
        head_count=1,
        parameter_size="0.2B",
    ),
    2048,
)
TIMING_FIELDS = frozenset(
    {"created_at", "total_duration", "load_duration", "prompt_eval_duration", "eval_duration"}
)
TOKENS = 16  # chunks of a streamed answer, before the final line
WARM_UP = 1000  # soak requests before the first RSS reading
SAMPLE_EVERY = 1000

# The targets the issue sets (printed and reported, not asserted).
TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0


# --- the double, in its own process ---------------------------------------------------------


def serve_double(port: int, first_token: float, token: float, parallel: int) -> int:
    double = OllamaDouble(
        [MODEL.model],
        vram_total=24 * GiB,
        port=port,
        keep_alive="-1",
        num_parallel=parallel,
        load_seconds=0.05,
        first_token_seconds=first_token,
        token_seconds=token,
        reply_tokens=tuple(f"t{i} " for i in range(TOKENS)),
    )
    _harness.quiet_double_errors()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    double.start()
    while not done.wait(1.0):
        pass
    double.stop()
    return 0


class DoubleProcess:
    def __init__(self, first_token: float, token: float, parallel: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.gateway_overhead",
                "--serve-double",
                str(self.port),
                repr(first_token),
                repr(token),
                str(parallel),
            ],
            cwd=_harness.ROOT,
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, 30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout} s") from None
            time.sleep(0.05)


# --- requests -------------------------------------------------------------------------------


def body(prompt: str, *, stream: bool) -> bytes:
    """A request with the pinned model's options; a non-streamed one is small: one token
    (num_predict is not a load-time option: it does not reload the model)."""
    options: dict[str, int] = {"num_ctx": MODEL.num_ctx}
    if not stream:
        options["num_predict"] = 1
    return json.dumps(
        {"model": MODEL.model.name, "prompt": prompt, "stream": stream, "options": options}
    ).encode()


def normalized(raw: bytes) -> bytes:
    """An answer (JSON or NDJSON) with the fields that differ between any two answers out."""
    lines = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if isinstance(item, dict):
            item = {k: v for k, v in item.items() if k not in TIMING_FIELDS}
        lines.append(json.dumps(item, separators=(",", ":")))
    return "\n".join(lines).encode()


class Connection:
    """One kept-alive connection, reopened if the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, data: bytes) -> tuple[float, bytes]:
        """Seconds to the whole answer, and the answer."""
        began = time.perf_counter()
        self.conn.request("POST", "/api/generate", data, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        raw = response.read()
        took = time.perf_counter() - began
        if response.status != 200:
            raise RuntimeError(f"port {self.port}: HTTP {response.status}: {raw[:200]!r}")
        return took, raw

    def stream(self, data: bytes) -> tuple[float, list[float], bytes]:
        """Seconds to the first chunk, the gaps between chunks, and the answer."""
        began = time.perf_counter()
        self.conn.request("POST", "/api/generate", data, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"port {self.port}: HTTP {response.status}")
        times: list[float] = []
        raw = bytearray()
        while line := response.readline():
            times.append(time.perf_counter())
            raw += line
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return times[0] - began, gaps, bytes(raw)

    def close(self) -> None:
        self.conn.close()


@dataclass
class Paths:
    direct: int
    gateway: int
    mismatches: list[str] = field(default_factory=list)
    compared: int = 0

    def check(self, what: str, direct: bytes, gateway: bytes) -> None:
        self.compared += 1
        if normalized(direct) != normalized(gateway):
            self.mismatches.append(f"{what}: direct {direct[:120]!r} gateway {gateway[:120]!r}")


# --- phases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    direct: list[float]
    gateway: list[float]

    def added(self, fraction: float) -> float:
        return percentile(self.gateway, fraction) - percentile(self.direct, fraction)


def latency(paths: Paths, count: int) -> Latency:
    direct, gateway = Connection(paths.direct), Connection(paths.gateway)
    d: list[float] = []
    g: list[float] = []
    try:
        for i in range(count):
            data = body(f"latency {i}", stream=False)
            first, second = (direct, gateway) if i % 2 == 0 else (gateway, direct)
            t1, a1 = first.post(data)
            t2, a2 = second.post(data)
            (td, ad), (tg, ag) = ((t1, a1), (t2, a2)) if first is direct else ((t2, a2), (t1, a1))
            d.append(td)
            g.append(tg)
            paths.check(f"latency {i}", ad, ag)
    finally:
        direct.close()
        gateway.close()
    return Latency(d, g)


@dataclass(frozen=True)
class Streams:
    first_direct: list[float]
    first_gateway: list[float]
    gaps_direct: list[float]
    gaps_gateway: list[float]


def streams(paths: Paths, count: int) -> Streams:
    direct, gateway = Connection(paths.direct), Connection(paths.gateway)
    out = Streams([], [], [], [])
    try:
        for i in range(count):
            data = body(f"stream {i}", stream=True)
            order = (direct, gateway) if i % 2 == 0 else (gateway, direct)
            answers = {}
            for conn in order:
                first, gaps, raw = conn.stream(data)
                answers[conn is gateway] = raw
                if conn is gateway:
                    out.first_gateway.append(first)
                    out.gaps_gateway.extend(gaps)
                else:
                    out.first_direct.append(first)
                    out.gaps_direct.extend(gaps)
            paths.check(f"stream {i}", answers[False], answers[True])
    finally:
        direct.close()
        gateway.close()
    return out


@dataclass(frozen=True)
class Throughput:
    concurrency: int
    path: str
    seconds: float
    answers: int
    chunks: int
    errors: int

    @property
    def per_second(self) -> float:
        return self.answers / self.seconds

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds


async def _streams_for(port: int, concurrency: int, seconds: float) -> tuple[int, int, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    answers = chunks = errors = 0
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        deadline = time.monotonic() + seconds

        async def worker(w: int) -> None:
            nonlocal answers, chunks, errors
            n = 0
            while time.monotonic() < deadline:
                data = body(f"throughput {w} {n}", stream=True)
                n += 1
                try:
                    async with client.stream(
                        "POST", f"http://127.0.0.1:{port}/api/generate", content=data
                    ) as response:
                        if response.status_code != 200:
                            errors += 1
                            continue
                        async for _ in response.aiter_lines():
                            chunks += 1
                    answers += 1
                except httpx.HTTPError as exc:
                    errors += 1
                    if errors <= 3:
                        print(f"port {port}: {type(exc).__name__}: {exc}", flush=True)

        await asyncio.wait_for(
            asyncio.gather(*(worker(w) for w in range(concurrency))), seconds + 60
        )
    return answers, chunks, errors


def throughput(paths: Paths, levels: Sequence[int], seconds: float) -> list[Throughput]:
    out = []
    for concurrency in levels:
        for name, port in (("direct", paths.direct), ("gateway", paths.gateway)):
            began = time.monotonic()
            answers, chunks, errors = asyncio.run(_streams_for(port, concurrency, seconds))
            took = time.monotonic() - began
            out.append(Throughput(concurrency, name, took, answers, chunks, errors))
    return out


@dataclass(frozen=True)
class Soak:
    requests: int
    rss: list[tuple[int, int]]  # (requests after the warm-up, RSS bytes)
    cpu: float  # the daemon's CPU seconds for the requests after the warm-up
    seconds: float

    @property
    def growth(self) -> int:
        return self.rss[-1][1] - self.rss[0][1]


def soak(paths: Paths, daemon: DaemonProcess, count: int, concurrency: int = 8) -> Soak:
    """``count`` non-streamed requests through the gateway after WARM_UP of them, RSS read
    every SAMPLE_EVERY."""

    async def run() -> Soak:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            url = f"http://127.0.0.1:{paths.gateway}/api/generate"

            async def batch(start: int, n: int) -> None:
                async def one(i: int) -> None:
                    response = await client.post(url, content=body(f"soak {i}", stream=False))
                    if response.status_code != 200:
                        raise RuntimeError(f"soak: HTTP {response.status_code}")

                queue = list(range(start, start + n))

                async def worker() -> None:
                    while queue:
                        await one(queue.pop())

                await asyncio.gather(*(worker() for _ in range(concurrency)))

            await batch(0, WARM_UP)
            rss = [(0, daemon.rss_bytes())]
            cpu0, began, done = daemon.cpu_seconds(), time.monotonic(), 0
            while done < count:
                n = min(SAMPLE_EVERY, count - done)
                await batch(WARM_UP + done, n)
                done += n
                rss.append((done, daemon.rss_bytes()))
            return Soak(count, rss, daemon.cpu_seconds() - cpu0, time.monotonic() - began)

    return asyncio.run(run())


# --- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    latency: Latency | None = None
    streams: Streams | None = None
    throughput: list[Throughput] = field(default_factory=list)
    soak: Soak | None = None
    compared: int = 0
    mismatches: list[str] = field(default_factory=list)
    cpu_under_load: float = 0.0  # the daemon's CPU seconds over latency+stream+throughput
    rss_before: int = 0
    rss_after: int = 0
    gateway_requests: int = 0


def warm(port: int) -> None:
    conn = Connection(port)
    try:
        for i in range(20):
            conn.post(body(f"warm {i}", stream=False))
    finally:
        conn.close()


def run(args: argparse.Namespace, workdir: Path) -> Results:
    double = DoubleProcess(args.first_token_ms / 1000, args.token_ms / 1000, args.parallel)
    notify = NotifySocket(workdir / "notify.sock")
    gateway_port, metrics_port = free_port(), free_port()
    policy = write_policy(
        workdir / "policy.yaml",
        double.url,
        interval=15.0,
        models=[MODEL],
        metrics=f"127.0.0.1:{metrics_port}",
        gateway=[f"listen: 127.0.0.1:{gateway_port}"],
    )
    daemon = DaemonProcess(policy, workdir, notify, log_format="json")
    results = Results()
    try:
        notify.wait_for("READY", "1", timeout=120)  # the model is loaded: warm
        wait_port(gateway_port, 30)
        paths = Paths(direct=double.port, gateway=gateway_port)
        warm(paths.direct)
        warm(paths.gateway)
        results.rss_before = daemon.rss_bytes()
        cpu0 = daemon.cpu_seconds()
        if args.requests:
            results.latency = latency(paths, args.requests)
            print(f"latency: {args.requests} pairs", flush=True)
        if args.streams:
            results.streams = streams(paths, args.streams)
            print(f"streams: {args.streams} pairs", flush=True)
        if args.seconds > 0:
            results.throughput = throughput(paths, args.concurrency, args.seconds)
            print("throughput: done", flush=True)
        results.cpu_under_load = daemon.cpu_seconds() - cpu0
        results.rss_after = daemon.rss_bytes()
        if args.soak:
            results.soak = soak(paths, daemon, args.soak)
            print(f"soak: {args.soak} requests", flush=True)
        results.compared, results.mismatches = paths.compared, paths.mismatches
        if not daemon.alive():
            raise RuntimeError("the daemon exited during the run")
        errors = [line for line in daemon.lines() if '"level": "error"' in line]
        if errors:
            print(f"the daemon logged {len(errors)} errors, the first: {errors[0]}", flush=True)
    finally:
        daemon.stop()
        notify.close()
        double.stop()
    return results


# --- output ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def report(args: argparse.Namespace, r: Results, command: str) -> str:
    lines = [
        "# The gateway's overhead",
        "",
        "Produced by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Machine: {_harness.machine_note()} (nproc {os.cpu_count()}), Python "
        f"{platform.python_version()}; sentinel-keeper at commit {_harness.code_version()}. "
        f"The Ollama double in its own process: first token {args.first_token_ms:g} ms, "
        f"then a token every {args.token_ms:g} ms ({TOKENS} chunks and a final line per "
        f"streamed answer), OLLAMA_NUM_PARALLEL {args.parallel}, the model warm. The daemon "
        "(`python -m sentinel_keeper run`, metrics on) with `gateway.listen` on loopback. "
        "Gateway and direct requests are interleaved, the same requests both ways; the "
        "client, the daemon and the double share the machine's CPUs.",
        "",
        "| what | direct | through the gateway | added |",
        "| --- | ---: | ---: | ---: |",
    ]
    lat = r.latency
    if lat is not None:
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            lines.append(
                f"| non-streamed request, {label} latency ms ({len(lat.direct)} each way) "
                f"| {ms(percentile(lat.direct, q))} | {ms(percentile(lat.gateway, q))} "
                f"| {ms(lat.added(q))} |"
            )
    st = r.streams
    if st is not None:
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            dv, gv = percentile(st.first_direct, q), percentile(st.first_gateway, q)
            lines.append(
                f"| streamed: time to first chunk, {label} ms | {ms(dv)} | {ms(gv)} "
                f"| {ms(gv - dv)} |"
            )
        dm, gm = statistics.fmean(st.gaps_direct), statistics.fmean(st.gaps_gateway)
        lines.append(
            f"| streamed: mean delay between chunks ms ({len(st.first_direct)} answers each "
            f"way) | {ms(dm)} | {ms(gm)} | {ms(gm - dm)} |"
        )
    by = {(t.concurrency, t.path): t for t in r.throughput}
    for c in args.concurrency:
        d, g = by.get((c, "direct")), by.get((c, "gateway"))
        if d is None or g is None:
            continue
        lines.append(
            f"| {c} concurrent stream{'s' if c > 1 else ''}: answers/s (chunks/s) "
            f"| {d.per_second:.0f} ({d.chunks_per_second:.0f}) "
            f"| {g.per_second:.0f} ({g.chunks_per_second:.0f}) "
            f"| {100 * (g.per_second / d.per_second - 1):+.0f}% |"
        )
    errors = sum(t.errors for t in r.throughput)
    lines += [
        "",
        f"Throughput: each level for {args.seconds:g} s each way (httpx.AsyncClient, one "
        f"connection per stream); {errors} failed requests. The client, the double and the "
        "daemon share the machine's CPUs, so the figures are what is left of them for each: "
        "the gateway is one asyncio event loop, and where the double has CPU to spare (a few "
        "concurrent streams) that loop's share is what throughput loses; with many streams "
        "the double's thread per connection is the limit either way.",
        "",
        "The daemon (gateway and keeper in one process):",
        "",
        "| what | figure |",
        "| --- | ---: |",
        f"| RSS before the load, MiB | {mib(r.rss_before)} |",
        f"| RSS after the latency, stream and throughput phases, MiB | {mib(r.rss_after)} |",
        f"| CPU seconds over those phases | {r.cpu_under_load:.1f} |",
    ]
    soaked = r.soak
    if soaked is not None:
        lines += [
            f"| soak: RSS after {WARM_UP:,} warm-up requests, MiB | {mib(soaked.rss[0][1])} |",
            f"| soak: RSS after {soaked.requests:,} more, MiB | {mib(soaked.rss[-1][1])} |",
            f"| soak: growth over {soaked.requests:,} requests, MiB | {mib(soaked.growth)} |",
            f"| soak: CPU ms per request (8 at a time, {soaked.requests / soaked.seconds:.0f}"
            f"/s) | {1000 * soaked.cpu / soaked.requests:.2f} |",
            "",
            "RSS every 1,000 soak requests, MiB: "
            + ", ".join(mib(rss) for _, rss in soaked.rss)
            + ".",
        ]
    lines += [
        "",
        f"Answers compared: {r.compared}; differing once `created_at` and the `*_duration` "
        f"fields are out: {len(r.mismatches)}.",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {text}: **{verdict}**, {measured}" for text, verdict, measured in goals(r)]
    lines.append("")
    return "\n".join(lines)


def goals(r: Results) -> list[tuple[str, str, str]]:
    out = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else "met" if ok else "MISSED"

    lat = r.latency
    p50 = lat.added(0.5) * 1000 if lat else None
    p99 = lat.added(0.99) * 1000 if lat else None
    out.append(
        (
            f"added p50 latency <= {TARGET_P50_MS:g} ms",
            verdict(None if p50 is None else p50 <= TARGET_P50_MS),
            "-" if p50 is None else f"{p50:.2f} ms",
        )
    )
    out.append(
        (
            f"added p99 latency <= {TARGET_P99_MS:g} ms",
            verdict(None if p99 is None else p99 <= TARGET_P99_MS),
            "-" if p99 is None else f"{p99:.2f} ms",
        )
    )
    out.append(
        (
            "byte-identical bodies",
            verdict(None if not r.compared else not r.mismatches),
            f"{len(r.mismatches)} of {r.compared} differ"
            + (f"; the first: {r.mismatches[0]}" if r.mismatches else ""),
        )
    )
    s = r.soak
    # growth: more than 2 MiB over the soak, and still rising over its second half
    growing = None
    if s is not None:
        half = s.rss[len(s.rss) // 2][1]
        growing = s.growth > 2 * 2**20 and s.rss[-1][1] > half
    out.append(
        (
            "no memory growth over 10,000 requests",
            verdict(None if growing is None else not growing),
            "-" if s is None else f"{mib(s.growth)} MiB over {s.requests:,} requests",
        )
    )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=2000, help="non-streamed pairs")
    p.add_argument("--streams", type=int, default=400, help="streamed pairs")
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 128],
        help="concurrent streams, comma-separated (default 1,16,128)",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="per throughput level and path")
    p.add_argument("--soak", type=int, default=10_000, help="requests after the warm-up")
    p.add_argument("--first-token-ms", type=float, default=2.0)
    p.add_argument("--token-ms", type=float, default=1.0)
    p.add_argument("--parallel", type=int, default=128, help="the double's NUM_PARALLEL")
    p.add_argument("--out", type=Path, help="directory for gateway.md")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["--serve-double"]:
        port, first, token, parallel = given[1:5]
        return serve_double(int(port), float(first), float(token), int(parallel))
    args = parse_args(given)
    shown = list(given)
    if "--out" in shown:  # where the table goes is not part of how it was measured
        at = shown.index("--out")
        del shown[at : at + 2]
    command = "python -m benchmarks.gateway_overhead " + " ".join(shlex.quote(a) for a in shown)
    sys.setswitchinterval(0.0005)
    with _harness.temp_workdir("gateway-overhead-") as tmp:
        results = run(args, Path(tmp))
    text = report(args, results, command.strip())
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gateway.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
