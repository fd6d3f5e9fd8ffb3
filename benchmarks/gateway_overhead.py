"""What the gateway costs a request: ``sentinel-keeper gateway`` in its own process (as
sentinel-keeper-gateway.service runs it), and nginx as a plain reverse proxy beside it, in
one run against the Ollama double, with the same requests also sent to the double directly.

The double runs in its own process (its own interpreter, so that its threads do not share
a GIL with the client's), with a first token in ``--first-token-ms`` and the next ones every
``--token-ms`` (small: a proxy's own cost is then visible), one small model pinned by the
policy and already warm, and OLLAMA_NUM_PARALLEL high enough for every stream at once.

Beside it, each in its own process:

- the keeper, ``python -m sentinel_keeper run``, metrics on: it keeps the model warm and
  publishes its view for the gateway, as on a real host; it serves no request, and its CPU
  is reported apart;
- the gateway, ``python -m sentinel_keeper gateway`` with ``gateway.listen`` on a free
  loopback port, on asyncio's own event loop, as it ships;
- nginx (``--nginx``; Debian's package), a master and one worker (one event loop, like the
  gateway), from a configuration written to a temporary directory: ``proxy_pass`` to an
  ``upstream`` with ``keepalive 64``, HTTP/1.1 to the upstream with the Connection header
  cleared, ``proxy_buffering off``. Without nginx the run says so and leaves its column out;
- with ``--uvloop-gateway``, a second gateway process whose server runs on uvloop's event
  loop (the same code; uvloop from the ``bench`` extra): what uvloop would change, in the
  same run.

The client (http.client on one kept-alive connection per path for the timings,
httpx.AsyncClient for the concurrent streams) sends the same requests every way,
interleaved (every order of the paths in turn; the throughput levels as A B C then C B A),
so that drift of the machine cancels out. Requests carry the pinned model's options, so the
gateway forwards their bodies as they came.

Phases:

- ``latency``: small non-streamed /api/generate requests; latency p50/p99 each path, and
  the added latency (a proxy minus direct) at p50 and p99;
- ``stream``: streamed requests: time to the first chunk, mean delay between chunks;
- ``throughput``: 1, 16 and 128 concurrent streams (``--concurrency``) for ``--seconds``
  each path: answers per second and chunks per second;
- ``soak``: ``--soak`` requests through the gateway (after a warm-up of 1,000) with the
  gateway process's RSS sampled every 1,000: memory growth; its CPU seconds for them;
- ``profile`` (``--profile SECONDS``): a separate gateway process whose server thread runs
  under cProfile, under 16 concurrent streams for that long; the top of the profile.

Every answer is compared: a proxy's bodies are byte-identical to Ollama's once the fields
that differ between two answers anyway (``created_at`` and the ``*_duration`` timings) are
taken out.

    python -m benchmarks.gateway_overhead --uvloop-gateway --profile 8 --out docs

writes docs/gateway.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import http.client
import importlib
import importlib.util
import itertools
import json
import os
import platform
import pstats
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import _harness
from benchmarks._harness import DaemonProcess, NotifySocket, PinnedModel, percentile, write_policy
from sentinel_keeper.gateway import server as gateway_server
from tests.support.daemon import CLOCK_TICKS, free_port
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
PROFILE_STREAMS = 16  # concurrent streams under the profiler
PROFILE_ROWS = 15

# The paths a request takes, in the tables' order.
DIRECT, NGINX, GATEWAY, UVLOOP = "direct", "nginx", "gateway", "gateway-uvloop"
LABELS = {
    DIRECT: "direct",
    NGINX: "through nginx",
    GATEWAY: "through the gateway",
    UVLOOP: "through the gateway on uvloop",
}
PROCESSES = {
    NGINX: "nginx (master and worker)",
    GATEWAY: "gateway",
    UVLOOP: "gateway on uvloop",
}

# The targets the issue sets (printed and reported, not asserted).
TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0
TARGET_P50_VS_NGINX = 2.0  # the gateway's added p50 at most this many times nginx's
TARGET_STREAMS = 16  # at this many concurrent streams...
TARGET_POINTS = 5.0  # ...the gateway's throughput at most this many points below nginx's


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


def stop_process(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


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
        stop_process(self.proc)


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


# --- /proc readings of any process ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


# --- nginx, a plain reverse proxy -------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 100000;
    upstream ollama {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def find_nginx(given: str | None) -> str | None:
    """``--nginx`` as given ("" for none), else nginx on PATH or Debian's /usr/sbin/nginx."""
    if given is not None:
        return given or None
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    text = (done.stderr or done.stdout).strip()
    return text.split("/", 1)[1] if "/" in text else text


class Nginx:
    """``nginx`` in the foreground (``daemon off``), a master and one worker, every path of
    its own in ``root``; listens on a free loopback port and proxies to ``upstream``."""

    def __init__(self, binary: str, upstream: int, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.port = free_port()
        conf = root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=root, upstream=upstream, port=self.port))
        self.version = nginx_version(binary)
        self.proc = subprocess.Popen(
            [binary, "-p", f"{root}/", "-c", str(conf), "-e", str(root / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port, 30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.errors()}") from None
        self.pids = [self.proc.pid, *children_of(self.proc.pid)]

    def errors(self) -> str:
        try:
            return (self.root / "error.log").read_text()[-2000:]
        except OSError:
            return "(no error.log)"

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)  # nginx's graceful stop


# --- the gateway, as it ships or wrapped by this benchmark -----------------------------------


def wrapped_gateway(loop: str, profile: str, argv: list[str]) -> int:
    """``sentinel-keeper`` with the gateway's server on uvloop's event loop (``loop`` is
    "uvloop"; the gateway's ``asyncio.new_event_loop()`` then makes one), its server thread
    under cProfile (``profile``: the file for the stats, "-" for none). Only this benchmark
    runs it; the package has no such hook."""
    from sentinel_keeper.cli import main as cli  # noqa: PLC0415 - the CLI only in the wrapped process

    if loop == "uvloop":
        asyncio.set_event_loop_policy(importlib.import_module("uvloop").EventLoopPolicy())
    if profile != "-":
        serve = gateway_server.GatewayServer._run

        def profiled(self: gateway_server.GatewayServer) -> None:
            # this thread's calls (the server's loop), in its CPU time: not the waits
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            try:
                serve(self)
            finally:
                profiler.disable()
                profiler.dump_stats(profile)

        gateway_server.GatewayServer._run = profiled  # type: ignore[method-assign]
    return cli.main(argv)


def wrapper(loop: str, profile: Path | None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.gateway_overhead",
        "--wrapped-gateway",
        loop,
        "-" if profile is None else str(profile),
    ]


def have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


class Gateway:
    """``sentinel-keeper gateway`` on a free loopback port (``program``: a wrapper)."""

    def __init__(
        self, name: str, workdir: Path, double: str, program: Sequence[str] | None = None
    ) -> None:
        self.port = free_port()
        policy = write_policy(
            workdir / f"policy-{name}.yaml",
            double,
            interval=15.0,
            models=[MODEL],
            gateway=[f"listen: 127.0.0.1:{self.port}"],
        )
        self.notify = NotifySocket(workdir / f"notify-{name}.sock")
        self.daemon = DaemonProcess(
            policy, workdir, self.notify, log_format="json", command="gateway", program=program
        )
        try:
            self.notify.wait_for("READY", "1", timeout=60)
            wait_port(self.port, 30)
        except (AssertionError, TimeoutError):
            self.stop()
            raise RuntimeError(f"the gateway did not start: {self.daemon.lines()[-5:]}") from None

    def cpu_seconds(self) -> float:
        return self.daemon.cpu_seconds()

    def rss_bytes(self) -> int:
        return self.daemon.rss_bytes()

    def alive(self) -> bool:
        return self.daemon.alive()

    def said(self, level: str) -> list[str]:
        return [line for line in self.daemon.lines() if f'"level": "{level}"' in line]

    def stop(self) -> None:
        self.daemon.stop(timeout=30)
        self.notify.close()


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
    """One kept-alive connection (TCP_NODELAY), reopened if the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def _connect(self) -> None:
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _request(self, data: bytes) -> http.client.HTTPResponse:
        if self.conn.sock is None:
            self._connect()
        self.conn.request("POST", "/api/generate", data, {"Content-Type": "application/json"})
        return self.conn.getresponse()

    def post(self, data: bytes) -> tuple[float, bytes]:
        """Seconds to the whole answer, and the answer."""
        began = time.perf_counter()
        response = self._request(data)
        raw = response.read()
        took = time.perf_counter() - began
        if response.status != 200:
            raise RuntimeError(f"port {self.port}: HTTP {response.status}: {raw[:200]!r}")
        return took, raw

    def stream(self, data: bytes) -> tuple[float, list[float], bytes]:
        """Seconds to the first chunk, the gaps between chunks, and the answer."""
        began = time.perf_counter()
        response = self._request(data)
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
    ports: dict[str, int]  # path name -> port, direct first
    mismatches: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def names(self) -> list[str]:
        return list(self.ports)

    def orders(self) -> list[tuple[str, ...]]:
        """Every order of the paths, taken in turn by the timed phases."""
        return list(itertools.permutations(self.ports))

    def check(self, what: str, answers: dict[str, bytes]) -> None:
        """Each proxied answer against the direct one."""
        direct = answers[DIRECT]
        for name, raw in answers.items():
            if name == DIRECT:
                continue
            self.compared += 1
            if normalized(raw) != normalized(direct):
                self.mismatches.append(f"{what}: direct {direct[:120]!r} {name} {raw[:120]!r}")


# --- phases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    samples: dict[str, list[float]]

    def at(self, path: str, fraction: float) -> float:
        return percentile(self.samples[path], fraction)

    def added(self, path: str, fraction: float) -> float:
        return self.at(path, fraction) - self.at(DIRECT, fraction)


def latency(paths: Paths, count: int) -> Latency:
    conns = {name: Connection(port) for name, port in paths.ports.items()}
    samples: dict[str, list[float]] = {name: [] for name in conns}
    orders = paths.orders()
    try:
        for i in range(count):
            data = body(f"latency {i}", stream=False)
            answers = {}
            for name in orders[i % len(orders)]:
                took, answers[name] = conns[name].post(data)
                samples[name].append(took)
            paths.check(f"latency {i}", answers)
    finally:
        for conn in conns.values():
            conn.close()
    return Latency(samples)


@dataclass(frozen=True)
class Streams:
    first: dict[str, list[float]]
    gaps: dict[str, list[float]]

    def first_at(self, path: str, fraction: float) -> float:
        return percentile(self.first[path], fraction)

    def mean_gap(self, path: str) -> float:
        return statistics.fmean(self.gaps[path])


def streams(paths: Paths, count: int) -> Streams:
    conns = {name: Connection(port) for name, port in paths.ports.items()}
    out = Streams({name: [] for name in conns}, {name: [] for name in conns})
    orders = paths.orders()
    try:
        for i in range(count):
            data = body(f"stream {i}", stream=True)
            answers = {}
            for name in orders[i % len(orders)]:
                first, gaps, answers[name] = conns[name].stream(data)
                out.first[name].append(first)
                out.gaps[name].extend(gaps)
            paths.check(f"stream {i}", answers)
    finally:
        for conn in conns.values():
            conn.close()
    return out


@dataclass
class Throughput:
    concurrency: int
    path: str
    seconds: float = 0.0
    answers: int = 0
    chunks: int = 0
    errors: int = 0

    @property
    def per_second(self) -> float:
        return self.answers / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


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


def throughput(
    paths: Paths, levels: Sequence[int], seconds: float, rounds: int
) -> list[Throughput]:
    """Each level for ``seconds`` each path, in ``rounds`` slices: the paths in order, then
    in reverse, and so on."""
    out: list[Throughput] = []
    for concurrency in levels:
        totals = {name: Throughput(concurrency, name) for name in paths.names}
        for r in range(rounds):
            order = paths.names if r % 2 == 0 else paths.names[::-1]
            for name in order:
                began = time.monotonic()
                answers, chunks, errors = asyncio.run(
                    _streams_for(paths.ports[name], concurrency, seconds / rounds)
                )
                t = totals[name]
                t.seconds += time.monotonic() - began
                t.answers += answers
                t.chunks += chunks
                t.errors += errors
        out.extend(totals.values())
    return out


@dataclass(frozen=True)
class Soak:
    requests: int
    rss: list[tuple[int, int]]  # (requests after the warm-up, RSS bytes)
    cpu: float  # the gateway's CPU seconds for the requests after the warm-up
    seconds: float

    @property
    def growth(self) -> int:
        return self.rss[-1][1] - self.rss[0][1]


def soak(gateway: Gateway, count: int, concurrency: int = 8) -> Soak:
    """``count`` non-streamed requests through the gateway after WARM_UP of them, RSS read
    every SAMPLE_EVERY."""

    async def run() -> Soak:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            url = f"http://127.0.0.1:{gateway.port}/api/generate"

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
            rss = [(0, gateway.rss_bytes())]
            cpu0, began, done = gateway.cpu_seconds(), time.monotonic(), 0
            while done < count:
                n = min(SAMPLE_EVERY, count - done)
                await batch(WARM_UP + done, n)
                done += n
                rss.append((done, gateway.rss_bytes()))
            return Soak(count, rss, gateway.cpu_seconds() - cpu0, time.monotonic() - began)

    return asyncio.run(run())


# --- the profile ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRow:
    own: float  # seconds in the function itself
    cumulative: float
    calls: int
    where: str


@dataclass(frozen=True)
class Profile:
    seconds: float  # of load
    answers: int
    loop: str
    total: float  # own seconds of every profiled function
    rows: list[ProfileRow]
    areas: list[tuple[str, float]]  # own seconds by package
    steps: list[ProfileRow]  # sentinel_keeper's functions, by cumulative time
    server: dict[str, float]  # the server module's functions by name: cumulative seconds


STDLIB = sysconfig.get_paths()["stdlib"]


def short_path(path: str) -> str:
    """A profiled function's file without this machine's prefixes."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    root = str(_harness.ROOT) + os.sep
    if path.startswith(root):
        return path[len(root) :]
    if path.startswith(STDLIB + os.sep):
        return path[len(STDLIB) + 1 :]
    return path if path.startswith(("~", "<")) else os.path.basename(path)


def area_of(where: str) -> str:
    if where.startswith(("~", "<")):
        return "built-ins"
    top = where.split("/", 1)[0].removesuffix(".py")
    return top if "/" in where or top in {"json", "socket", "selectors"} else f"{top} (stdlib)"


def read_profile(path: Path, seconds: float, answers: int, loop: str) -> Profile:
    stats = pstats.Stats(str(path))
    table: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    table = stats.stats  # type: ignore[attr-defined]
    rows = []
    areas: dict[str, float] = {}
    for (file, line, name), (_, calls, own, cumulative, _) in table.items():
        where = f"{short_path(file)}:{line}({name})" if line else f"~({name})"
        rows.append(ProfileRow(own, cumulative, calls, where))
        area = area_of(short_path(file) if line else "~")
        areas[area] = areas.get(area, 0.0) + own
    rows.sort(key=lambda r: r.own, reverse=True)
    total = sum(r.own for r in rows)
    ranked = sorted(areas.items(), key=lambda kv: kv[1], reverse=True)
    steps = sorted(
        (r for r in rows if r.where.startswith("sentinel_keeper/") and "(_run)" not in r.where),
        key=lambda r: r.cumulative,
        reverse=True,
    )
    server = {
        r.where.rsplit("(", 1)[-1].rstrip(")"): r.cumulative
        for r in steps
        if r.where.startswith("sentinel_keeper/gateway/server.py:")
    }
    return Profile(seconds, answers, loop, total, rows[:PROFILE_ROWS], ranked, steps[:8], server)


def profile(args: argparse.Namespace, workdir: Path, double: str) -> Profile:
    """A gateway process of its own with its server thread under cProfile, under
    PROFILE_STREAMS concurrent streams for ``--profile`` seconds."""
    out = workdir / "gateway.prof"
    gateway = Gateway("profiled", workdir, double, program=wrapper("asyncio", out))
    try:
        warm(gateway.port)
        answers, _, _ = asyncio.run(_streams_for(gateway.port, PROFILE_STREAMS, args.profile))
    finally:
        gateway.stop()
    return read_profile(out, args.profile, answers, "asyncio")


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """A process's memory and CPU around the timed phases."""

    rss_before: int
    rss_after: int
    cpu: float  # seconds over the latency, stream and throughput phases


@dataclass
class Results:
    machine: str = ""  # CPUs and load average at the start
    load_end: tuple[float, float, float] | None = None
    paths: list[str] = field(default_factory=list)
    nginx: str | None = None  # its version, when it ran
    nginx_missing: str | None = None  # why it did not
    uvloop_missing: str | None = None  # why --uvloop-gateway has no column
    latency: Latency | None = None
    streams: Streams | None = None
    throughput: list[Throughput] = field(default_factory=list)
    soak: Soak | None = None
    profile: Profile | None = None
    compared: int = 0
    mismatches: list[str] = field(default_factory=list)
    usage: dict[str, Usage] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)  # the gateways' warnings and errors


class Measured:
    """What the run reads the memory and CPU of."""

    def __init__(self, cpu: Callable[[], float], rss: Callable[[], int]) -> None:
        self.cpu, self.rss = cpu, rss
        self.rss0, self.cpu0 = rss(), cpu()

    def usage(self) -> Usage:
        return Usage(self.rss0, self.rss(), self.cpu() - self.cpu0)


def warm(port: int) -> None:
    conn = Connection(port)
    try:
        for i in range(20):
            conn.post(body(f"warm {i}", stream=False))
    finally:
        conn.close()


def run(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(machine=_harness.machine_note())
    if args.uvloop_gateway and not have_uvloop():
        results.uvloop_missing = "uvloop is not installed (pip install -e '.[bench]')"
        print(f"--uvloop-gateway: left out: {results.uvloop_missing}", flush=True)
    nginx_binary = find_nginx(args.nginx)
    if nginx_binary is None:
        results.nginx_missing = (
            "left out: --nginx ''"
            if args.nginx == ""
            else "left out: nginx is not installed (Debian: apt-get install nginx)"
        )
        print(f"nginx: {results.nginx_missing}", flush=True)
    double = DoubleProcess(args.first_token_ms / 1000, args.token_ms / 1000, args.parallel)
    notify = NotifySocket(workdir / "notify.sock")
    metrics_port = free_port()
    keeper_policy = write_policy(
        workdir / "policy.yaml",
        double.url,
        interval=15.0,
        models=[MODEL],
        metrics=f"127.0.0.1:{metrics_port}",
        gateway=[f"listen: 127.0.0.1:{free_port()}"],  # the keeper publishes its view
    )
    keeper = DaemonProcess(keeper_policy, workdir, notify, log_format="json")
    proxies: dict[str, Gateway | Nginx] = {}
    try:
        notify.wait_for("READY", "1", timeout=120)  # the model is loaded: warm
        if nginx_binary is not None:
            proxies[NGINX] = Nginx(nginx_binary, double.port, workdir / "nginx")
            results.nginx = proxies[NGINX].version  # type: ignore[union-attr]
        proxies[GATEWAY] = Gateway(GATEWAY, workdir, double.url)
        if args.uvloop_gateway and results.uvloop_missing is None:
            proxies[UVLOOP] = Gateway(UVLOOP, workdir, double.url, wrapper("uvloop", None))
        paths = Paths({DIRECT: double.port, **{n: p.port for n, p in proxies.items()}})
        results.paths = paths.names
        for port in paths.ports.values():
            warm(port)
        measured = {n: Measured(p.cpu_seconds, p.rss_bytes) for n, p in proxies.items()}
        measured["keeper"] = Measured(keeper.cpu_seconds, keeper.rss_bytes)
        if args.requests:
            results.latency = latency(paths, args.requests)
            print(f"latency: {args.requests} each path", flush=True)
        if args.streams:
            results.streams = streams(paths, args.streams)
            print(f"streams: {args.streams} each path", flush=True)
        if args.seconds > 0:
            results.throughput = throughput(paths, args.concurrency, args.seconds, args.rounds)
            print("throughput: done", flush=True)
        results.usage = {n: m.usage() for n, m in measured.items()}
        gateway = proxies[GATEWAY]
        if args.soak and isinstance(gateway, Gateway):
            results.soak = soak(gateway, args.soak)
            print(f"soak: {args.soak} requests", flush=True)
        results.compared, results.mismatches = paths.compared, paths.mismatches
        for name, proxy in proxies.items():
            if not proxy.alive():
                raise RuntimeError(f"{name} exited during the run")
            if isinstance(proxy, Gateway):
                for level in ("error", "warning"):
                    if said := proxy.said(level):
                        print(f"{name}: {len(said)} at {level}, the first: {said[0]}", flush=True)
                        results.said.append(f"{name}: {len(said)} at {level}")
        if not keeper.alive():
            raise RuntimeError("the keeper exited during the run")
        if args.profile > 0:
            try:
                results.profile = profile(args, workdir, double.url)
                print(f"profile: {args.profile:g} s", flush=True)
            except (OSError, RuntimeError, TimeoutError) as exc:  # the figures stand without it
                print(f"profile: failed: {exc}", flush=True)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        keeper.stop()
        notify.close()
        double.stop()
    with contextlib.suppress(OSError):
        results.load_end = os.getloadavg()
    return results


# --- output ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def change(t: Throughput, direct: Throughput) -> float:
    """Throughput against direct's at the same level, in percentage points."""
    return 100 * (t.per_second / direct.per_second - 1) if direct.per_second else float("nan")


def end_load(r: Results) -> str:
    if r.load_end is None:
        return ""
    return ", {:.2f} {:.2f} {:.2f} at its end".format(*r.load_end)


def busy(r: Results) -> str:
    """A warning when other work shared the machine: a load average above its CPUs."""
    cpus = os.cpu_count() or 1
    loads = [float(x) for x in r.machine.split("load average ", 1)[-1].split()[:1] if x]
    loads += [r.load_end[0]] if r.load_end is not None else []
    if not any(load > cpus for load in loads):
        return ""
    return (
        f" The load average was above the machine's {cpus} CPUs: other work shared it during "
        "the run, so the figures are noisy (the interleaving cancels drift, not noise)."
    )


def uvloop_note(r: Results, by: dict[tuple[int, str], Throughput]) -> list[str]:
    """The two gateway columns side by side: what uvloop would change."""
    lat, st = r.latency, r.streams
    if r.uvloop_missing is not None:
        return ["", f"No uvloop column: {r.uvloop_missing}."]
    if UVLOOP not in r.paths:
        return []
    parts = []
    if lat is not None:
        parts.append(
            f"added p50 {ms(lat.added(UVLOOP, 0.5))} against {ms(lat.added(GATEWAY, 0.5))} ms, "
            f"p99 {ms(lat.added(UVLOOP, 0.99))} against {ms(lat.added(GATEWAY, 0.99))} ms"
        )
    if st is not None:
        first = [st.first_at(p, 0.5) - st.first_at(DIRECT, 0.5) for p in (UVLOOP, GATEWAY)]
        parts.append(f"first chunk p50 {ms(first[0])} against {ms(first[1])} ms more")
    for c in sorted({t.concurrency for t in r.throughput}):
        if all((c, p) in by for p in (DIRECT, GATEWAY, UVLOOP)):
            u, g = (change(by[c, p], by[c, DIRECT]) for p in (UVLOOP, GATEWAY))
            parts.append(f"{c} stream{'s' if c > 1 else ''} {u:+.0f}% against {g:+.0f}%")
    if GATEWAY in r.usage and UVLOOP in r.usage:
        parts.append(
            f"CPU {r.usage[UVLOOP].cpu:.1f} against {r.usage[GATEWAY].cpu:.1f} s over the "
            "same requests"
        )
    return [
        "",
        "What uvloop would change (the same gateway on uvloop's loop, against the gateway as "
        "it ships, on asyncio's, in this run): " + "; ".join(parts) + ".",
    ]


def profile_reading(prof: Profile) -> list[str]:
    """The profile in one sentence: what a relay costs the gateway's loop, and the part a
    path that forwards without reading the body would skip."""
    areas = dict(prof.areas)
    steps = prof.server
    read = steps.get("_read_and_decide", 0.0) + steps.get("_finish", 0.0)
    relay = steps.get("_relay")
    if not prof.total or relay is None:
        return []
    share = 100 / prof.total
    aiohttp, own = (share * areas.get(name, 0.0) for name in ("aiohttp", "sentinel_keeper"))
    return [
        "",
        f"Read together: aiohttp's Python code takes {aiohttp:.0f}% of the loop's CPU and the "
        f"gateway's own code {own:.0f}%; relaying (the request to Ollama, then every chunk "
        f"read from Ollama and written to the client) is {share * relay:.0f}% cumulatively; "
        f"reading the body, asking the rules and recording the request {share * read:.0f}%. "
        "A path that forwards without reading the body would save at most the latter; nginx "
        "does the relay itself in C.",
    ]


def report(args: argparse.Namespace, r: Results, command: str) -> str:
    proxied = [p for p in r.paths if p != DIRECT]
    nginx_note = (
        f"nginx {r.nginx} (a master and one worker, upstream keepalive 64, `proxy_buffering off`)"
        if r.nginx is not None
        else f"no nginx column ({r.nginx_missing})"
    )
    lines = [
        "# The gateway's overhead",
        "",
        "Produced by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Machine: {r.machine} at the start of the run{end_load(r)} (nproc "
        f"{os.cpu_count()}), Python {platform.python_version()}; sentinel-keeper at commit "
        f"{_harness.code_version()}. The Ollama double in its own process: first token "
        f"{args.first_token_ms:g} ms, then a token every {args.token_ms:g} ms ({TOKENS} chunks "
        f"and a final line per streamed answer), OLLAMA_NUM_PARALLEL {args.parallel}, the model "
        "warm. The gateway in its own process (`python -m sentinel_keeper gateway`, its "
        "server on asyncio's own event loop, as it ships), the keeper beside it (`run`, "
        "metrics on), which publishes its view for the gateway and serves no request; the "
        "gateways logged "
        + ("; ".join(r.said) if r.said else "no warning (the view stayed fresh: every rule on)")
        + f"; {nginx_note}. Every request is sent each way, the paths in every order in "
        "turn; the client, the proxies, the keeper and the double share the machine's CPUs."
        + busy(r),
        "",
        "| what | " + " | ".join(LABELS[p] for p in r.paths) + " |",
        "| --- |" + " ---: |" * len(r.paths),
    ]

    def row(label: str, cells: Sequence[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lat, st = r.latency, r.streams
    if lat is not None:
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            row(
                f"non-streamed request, {label} latency ms ({args.requests} each path)",
                [ms(lat.at(p, q)) for p in r.paths],
            )
    if st is not None:
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            row(
                f"streamed: time to first chunk, {label} ms",
                [ms(st.first_at(p, q)) for p in r.paths],
            )
        row(
            f"streamed: mean delay between chunks ms ({args.streams} answers each path)",
            [ms(st.mean_gap(p)) for p in r.paths],
        )
    by = {(t.concurrency, t.path): t for t in r.throughput}
    for c in args.concurrency:
        if all((c, p) in by for p in r.paths):
            row(
                f"{c} concurrent stream{'s' if c > 1 else ''}: answers/s (chunks/s)",
                [f"{by[c, p].per_second:.0f} ({by[c, p].chunks_per_second:.0f})" for p in r.paths],
            )
    if proxied:
        lines += [
            "",
            "Against direct (added milliseconds; throughput lost or gained, in percent):",
            "",
            "| what | " + " | ".join(LABELS[p] for p in proxied) + " |",
            "| --- |" + " ---: |" * len(proxied),
        ]
        if lat is not None:
            for label, q in (("p50", 0.5), ("p99", 0.99)):
                row(f"added {label} latency ms", [ms(lat.added(p, q)) for p in proxied])
        if st is not None:
            for label, q in (("p50", 0.5), ("p99", 0.99)):
                row(
                    f"added time to first chunk, {label} ms",
                    [ms(st.first_at(p, q) - st.first_at(DIRECT, q)) for p in proxied],
                )
            row(
                "added delay between chunks, mean ms",
                [ms(st.mean_gap(p) - st.mean_gap(DIRECT)) for p in proxied],
            )
        for c in args.concurrency:
            if all((c, p) in by for p in r.paths):
                row(
                    f"{c} concurrent stream{'s' if c > 1 else ''}: answers/s",
                    [f"{change(by[c, p], by[c, DIRECT]):+.0f}%" for p in proxied],
                )
        lines += uvloop_note(r, by)
    errors = sum(t.errors for t in r.throughput)
    lines += [
        "",
        f"Throughput: each level for {args.seconds:g} s each path, in {args.rounds} slices "
        "(the paths in order, then in reverse), with httpx.AsyncClient, one connection per "
        f"stream; {errors} failed requests. The client, the double and the proxies share the "
        "machine's CPUs, so the figures are what is left of them for each: where the double "
        "has CPU to spare (a few concurrent streams) a proxy's own CPU is what throughput "
        "loses; with many streams the double's thread per connection is the limit either way.",
        "",
        "The processes (CPU seconds over the latency, stream and throughput phases, which "
        "send every path the same requests):",
        "",
        "| what | " + " | ".join(PROCESSES.get(n, n) for n in r.usage) + " |",
        "| --- |" + " ---: |" * len(r.usage),
    ]
    row("RSS before the load, MiB", [mib(u.rss_before) for u in r.usage.values()])
    row("RSS after those phases, MiB", [mib(u.rss_after) for u in r.usage.values()])
    row("CPU seconds over those phases", [f"{u.cpu:.1f}" for u in r.usage.values()])
    if UVLOOP in r.usage:
        lines += [
            "",
            "The gateway on uvloop runs through this benchmark's wrapper around the "
            "same CLI, which imports more (httpx, the double): its RSS is not the gateway's.",
        ]
    soaked = r.soak
    if soaked is not None:
        lines += [
            "",
            "The gateway process over the soak:",
            "",
            "| what | figure |",
            "| --- | ---: |",
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
        f"Answers compared with the direct one: {r.compared}; differing once `created_at` and "
        f"the `*_duration` fields are out: {len(r.mismatches)}.",
    ]
    prof = r.profile
    if prof is not None:
        lines += [
            "",
            "## Profile",
            "",
            f"A gateway process of its own, its server thread (the event loop, {prof.loop}) "
            f"under cProfile, {PROFILE_STREAMS} concurrent streams for {prof.seconds:g} s "
            f"({prof.answers} answers, slowed by the profiler): {prof.total:.2f} s in profiled "
            "functions, the profiler's own cost partly included."
            + " Own time by where the code lives (built-ins: C functions called from Python):",
            "",
            "| where | own s | share |",
            "| --- | ---: | ---: |",
        ]
        for area, own in prof.areas[:8]:
            lines.append(f"| {area} | {own:.2f} | {100 * own / prof.total:.0f}% |")
        lines += [
            "",
            f"The top {len(prof.rows)} functions by own time:",
            "",
            "| own s | share | cumulative s | calls | function |",
            "| ---: | ---: | ---: | ---: | --- |",
        ]
        for p in prof.rows:
            lines.append(
                f"| {p.own:.3f} | {100 * p.own / prof.total:.1f}% | {p.cumulative:.3f} "
                f"| {p.calls} | `{p.where}` |"
            )
        lines += [
            "",
            "The gateway's own steps by cumulative time (what they call included; a "
            "coroutine's calls count each time it resumes):",
            "",
            "| cumulative s | share | calls | function |",
            "| ---: | ---: | ---: | --- |",
        ]
        for p in prof.steps:
            lines.append(
                f"| {p.cumulative:.3f} | {100 * p.cumulative / prof.total:.1f}% | {p.calls} "
                f"| `{p.where}` |"
            )
        lines += profile_reading(prof)
    lines += ["", "## Targets", "", "Printed, not asserted:", ""]
    lines += [f"- {text}: **{verdict}**, {measured}" for text, verdict, measured in goals(r)]
    lines.append("")
    return "\n".join(lines)


def goals(r: Results) -> list[tuple[str, str, str]]:
    out = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else "met" if ok else "MISSED"

    lat = r.latency
    p50 = lat.added(GATEWAY, 0.5) * 1000 if lat else None
    p99 = lat.added(GATEWAY, 0.99) * 1000 if lat else None
    out.append(
        (
            f"the gateway's added p50 latency <= {TARGET_P50_MS:g} ms",
            verdict(None if p50 is None else p50 <= TARGET_P50_MS),
            "-" if p50 is None else f"{p50:.2f} ms",
        )
    )
    out.append(
        (
            f"the gateway's added p99 latency <= {TARGET_P99_MS:g} ms",
            verdict(None if p99 is None else p99 <= TARGET_P99_MS),
            "-" if p99 is None else f"{p99:.2f} ms",
        )
    )
    nginx = NGINX in r.paths
    n50 = lat.added(NGINX, 0.5) * 1000 if lat and nginx else None
    if p50 is None or n50 is None:
        out.append(
            (
                f"the gateway's added p50 at most {TARGET_P50_VS_NGINX:g}x nginx's",
                verdict(None),
                "-" if nginx else "no nginx in this run",
            )
        )
    else:
        times = f"{p50 / n50:.1f}x" if n50 > 0 else "nginx added nothing"
        out.append(
            (
                f"the gateway's added p50 at most {TARGET_P50_VS_NGINX:g}x nginx's",
                verdict(p50 <= TARGET_P50_VS_NGINX * max(n50, 0.0)),
                f"gateway {p50:.2f} ms, nginx {n50:.2f} ms ({times})",
            )
        )
    by = {(t.concurrency, t.path): t for t in r.throughput}
    level = (TARGET_STREAMS, DIRECT), (TARGET_STREAMS, GATEWAY), (TARGET_STREAMS, NGINX)
    text = (
        f"at {TARGET_STREAMS} concurrent streams, the gateway's throughput at most "
        f"{TARGET_POINTS:g} points below nginx's"
    )
    if all(k in by for k in level):
        g = change(by[TARGET_STREAMS, GATEWAY], by[TARGET_STREAMS, DIRECT])
        n = change(by[TARGET_STREAMS, NGINX], by[TARGET_STREAMS, DIRECT])
        out.append(
            (
                text,
                verdict(g >= n - TARGET_POINTS),
                f"against direct: gateway {g:+.0f}%, nginx {n:+.0f}% "
                f"({abs(n - g):.0f} point{'' if round(abs(n - g)) == 1 else 's'} "
                f"{'below' if g <= n else 'above'} nginx's)",
            )
        )
    else:
        why = "no nginx in this run" if not nginx else f"{TARGET_STREAMS} streams not run"
        out.append((text, verdict(None), why))
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
            f"no memory growth over {s.requests if s is not None else 10_000:,} requests",
            verdict(None if growing is None else not growing),
            "-" if s is None else f"{mib(s.growth)} MiB over {s.requests:,} requests",
        )
    )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=2000, help="non-streamed requests per path")
    p.add_argument("--streams", type=int, default=400, help="streamed requests per path")
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 128],
        help="concurrent streams, comma-separated (default 1,16,128)",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="per throughput level and path")
    p.add_argument(
        "--rounds", type=int, default=2, help="slices of each level, alternating the order"
    )
    p.add_argument("--soak", type=int, default=10_000, help="requests after the warm-up")
    p.add_argument("--first-token-ms", type=float, default=2.0)
    p.add_argument("--token-ms", type=float, default=1.0)
    p.add_argument("--parallel", type=int, default=128, help="the double's NUM_PARALLEL")
    p.add_argument(
        "--nginx",
        metavar="PATH",
        help="the nginx binary (default: nginx on PATH, or /usr/sbin/nginx); '' for none",
    )
    p.add_argument(
        "--uvloop-gateway",
        action="store_true",
        help="also a gateway whose server runs on uvloop's event loop (the bench extra)",
    )
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"profile a gateway under {PROFILE_STREAMS} streams this long (0: not)",
    )
    p.add_argument("--out", type=Path, help="directory for gateway.md")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["--serve-double"]:
        port, first, token, parallel = given[1:5]
        return serve_double(int(port), float(first), float(token), int(parallel))
    if given[:1] == ["--wrapped-gateway"]:
        return wrapped_gateway(given[1], given[2], given[3:])
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
