"""Residency under faults: how often a request to a pinned model meets a cold model, and what
that costs in time to the first token, for four ways of keeping models warm.

One seeded workload (clients with idle gaps longer than Ollama's 5 minutes, their own
keep_alive values, a client with another num_ctx, a foreign client loading a big model,
keep_alive 0, Ollama restarts) runs against the Ollama double at accelerated time, once per
strategy, each in a fresh double:

- ``none``: Ollama's default, keep_alive 5m;
- ``keep-alive-forever``: OLLAMA_KEEP_ALIVE=-1 and nothing else;
- ``cron``: OLLAMA_KEEP_ALIVE unset, and every 5 minutes a POST /api/generate with a prompt
  and keep_alive -1 to each pinned model (the usual crontab of curl lines; it sends the
  policy's num_ctx, which is generous: a curl without it would reload the models);
- ``sentinel-keeper``: the real daemon (``python -m sentinel_keeper run``) as a subprocess
  with a policy naming the pinned models, OLLAMA_KEEP_ALIVE=-1 as its drop-in writes it;
- ``gateway``: the same daemon with its gateway on (``gateway.listen``: a free loopback
  port), and the clients sending their requests to the gateway instead of Ollama (the
  daemon's own loads still go to Ollama directly). One run per ``foreign:`` setting
  (``--gateway-foreign``, default evict, queue, cpu and reject), each on the same workload.
  The double has no NVML, so the policy sets ``vram.budget`` to the double's 24 GiB: the
  memory the foreign rule reckons with. The gateway's ``queue_timeout`` is real seconds
  while the double runs scaled: the policy gets 30 s of simulated time divided by the time
  scale (250 ms at 120). A client meeting the gateway's 502 (Ollama unreachable, during a
  restart) retries as a direct client does on a refused connection.

Time. The double runs ``--time-scale`` times faster than real time: its clock, keep_alive
expiries, load times and the first-token time are all scaled. Every figure is in simulated
time. The time to first byte (TTFB) of a request is the double's own measure of how long
the request waited for the model to be ready (queueing, evictions, the load itself), scaled
back to simulated time, plus the fixed 500 ms that a warm model takes to its first token:
the harness's own HTTP round trip is left out because, multiplied by the time scale, it
would drown the figures (about 0.3 ms real, 40 ms simulated, at the default scale).

The daemon sleeps in real time, so its policy ``interval`` is set to 15 s of simulated time
(15 s is the default): 125 ms real at the default scale; and its own clock (Timings:
probes while Ollama does not answer, the look at /api/ps between passes, jitter, the back-off
after a failed load) runs faster by the time scale, through tests.support.scaled_daemon
(``--stock-daemon`` leaves it in real seconds). A second phase measures the
re-warm after a restart in real time (``--rewarm-time-scale 1``) with the stock daemon at
the production interval of 15 s.

    python -m benchmarks.residency --seed 1 --hours 4 --time-scale 120 --out docs

writes docs/residency.md and docs/residency.png (matplotlib: ``pip install '.[bench]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import random
import shlex
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _harness
from benchmarks._harness import (
    FIRST_TOKEN_SECONDS,
    FOREIGN,
    FOREIGN_NUM_CTX,
    PINNED,
    DaemonProcess,
    NotifySocket,
    PinnedModel,
    make_double,
    percentile,
    write_policy,
)
from tests.support.daemon import free_port
from tests.support.ollama_double import CompletionRecord, LoadRecord, OllamaDouble, UnloadRecord

STRATEGIES = ("none", "keep-alive-forever", "cron", "sentinel-keeper", "gateway")
FOREIGN_SETTINGS = ("evict", "queue", "cpu", "reject")
LABELS = {
    "none": "none (5m default)",
    "keep-alive-forever": "OLLAMA_KEEP_ALIVE=-1",
    "cron": "cron warm-up every 5m",
    "sentinel-keeper": "sentinel-keeper",
    **{
        f"gateway:{foreign}": f"sentinel-keeper + gateway (foreign: {foreign})"
        for foreign in FOREIGN_SETTINGS
    },
}
QUEUE_TIMEOUT = 30.0  # simulated seconds: the policy default of gateway.queue_timeout
CRON_PERIOD = 300.0  # simulated seconds
DAEMON_INTERVAL = 15.0  # simulated seconds: the policy default
PRODUCTION_INTERVAL = 15.0  # real seconds, for the real-time re-warm phase
CLIENT_RETRY_REAL_SECONDS = 60.0  # a client gives up after this long of refused connections
KEEP_WARM_PROMPT = "keep warm"

# The targets the issue sets (printed and reported, not asserted).
TARGET_COLD_SHARE = 0.005
TARGET_COLD_RATIO_TO_CRON = 10.0
TARGET_P99_OVER_WARM_P50 = 1.5
TARGET_REWARM_OVERHEAD = 1.0


# --- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    at: float  # simulated seconds from the start
    stream: str
    model: str
    kind: str  # "pinned" (the policy's options), "other-ctx", "foreign"
    num_ctx: int
    keep_alive: str | int | None  # as the client sends it; None: not sent
    prompt: str  # unique: how the double's record is matched to the request


@dataclass(frozen=True)
class Restart:
    at: float
    down: float  # simulated seconds the port refuses connections


@dataclass(frozen=True)
class Workload:
    seed: int
    hours: float
    streams: tuple[tuple[Request, ...], ...]  # each stream is one sequential client
    restarts: tuple[Restart, ...]

    @property
    def end(self) -> float:
        return self.hours * 3600

    def requests(self) -> list[Request]:
        return [r for stream in self.streams for r in stream]

    def count(self, kind: str) -> int:
        return sum(1 for r in self.requests() if r.kind == kind)


def _bounded(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _user_stream(rng: random.Random, pinned: PinnedModel, end: float) -> tuple[Request, ...]:
    """One user of a pinned model: sessions of 15 to 80 requests about 12 s apart, separated
    by 6 to 40 idle minutes. A session's client sends no keep_alive (70%), "5m" (20%, as some
    front ends do) or "30s" (10%)."""
    name = pinned.model.name
    stream = f"user:{name}"
    out: list[Request] = []
    t = rng.uniform(0, 600)
    while t < end:
        keep_alive = rng.choices([None, "5m", "30s"], weights=[70, 20, 10])[0]
        for _ in range(rng.randint(15, 80)):
            if t >= end:
                break
            prompt = f"{stream}#{len(out)}"
            out.append(Request(t, stream, name, "pinned", pinned.num_ctx, keep_alive, prompt))
            t += _bounded(rng.expovariate(1 / 12), 1.0, 200.0)
        t += rng.uniform(6 * 60, 40 * 60)
    return tuple(out)


def _sessions(
    rng: random.Random,
    end: float,
    *,
    first: tuple[float, float],
    mean_gap: float,
    size: tuple[int, int],
    spacing: tuple[float, float],
    make: Callable[[float, int], Request],
) -> tuple[Request, ...]:
    out: list[Request] = []
    t = rng.uniform(*first)
    while t < end:
        for _ in range(rng.randint(*size)):
            if t >= end:
                break
            out.append(make(t, len(out)))
            t += rng.uniform(*spacing)
        t += max(rng.expovariate(1 / mean_gap), 600.0)
    return tuple(out)


def make_workload(seed: int, hours: float) -> Workload:
    """The seeded workload: a pure function of (seed, hours)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible workload, not a secret)
    end = hours * 3600
    streams = [_user_stream(rng, p, end) for p in PINNED]
    small = PINNED[0]
    streams.append(
        _sessions(
            rng,
            end,
            first=(300, 3600),
            mean_gap=3600,
            size=(2, 6),
            spacing=(10, 60),
            make=lambda t, i: Request(
                t,
                "other-ctx",
                small.model.name,
                "other-ctx",
                small.num_ctx * 2,
                None,
                f"other-ctx#{i}",
            ),
        )
    )
    streams.append(
        _sessions(
            rng,
            end,
            first=(600, 2700),
            mean_gap=2700,
            size=(1, 4),
            spacing=(30, 120),
            make=lambda t, i: Request(
                t, "foreign", FOREIGN.name, "foreign", FOREIGN_NUM_CTX, None, f"foreign#{i}"
            ),
        )
    )
    targets = [rng.choice(PINNED) for _ in range(int(hours * 4) + 4)]
    streams.append(
        _sessions(
            rng,
            end,
            first=(600, 3600),
            mean_gap=3600,
            size=(1, 1),
            spacing=(0, 0),
            make=lambda t, i: Request(
                t,
                "unload",
                targets[i % len(targets)].model.name,
                "pinned",
                targets[i % len(targets)].num_ctx,
                0,
                f"unload#{i}",
            ),
        )
    )
    count = max(1, round(hours / 2))
    times = sorted(rng.uniform(0.1 * end, 0.9 * end) for _ in range(count))
    restarts = tuple(Restart(t, rng.uniform(5, 30)) for t in times)
    return Workload(seed, hours, tuple(streams), restarts)


# --- clients --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientResult:
    request: Request
    ok: bool
    attempts: int
    tokens: int = 0
    error: str | None = None
    status: int | None = None  # the last HTTP status (None: no answer)
    seconds: float = 0.0  # real seconds of the last attempt
    gateway_502: int = 0  # attempts the gateway answered 502 (Ollama unreachable)


def generate(
    host: str,
    port: int,
    body: dict[str, Any],
    *,
    timeout: float = 120.0,
) -> tuple[int, dict[str, Any]]:
    """POST /api/generate, streaming; returns (status, the final line or error body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/api/generate",
            json.dumps(body),
            {"Content-Type": "application/json", "Connection": "close"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, {"error": raw.decode("utf-8", "replace")}
        final: dict[str, Any] = {}
        for line in response:
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("done"):
                final = item
                break
        if not final:
            raise http.client.IncompleteRead(b"")
        return 200, final
    finally:
        conn.close()


def run_client(host: str, port: int, request: Request) -> ClientResult:
    body: dict[str, Any] = {
        "model": request.model,
        "prompt": request.prompt,
        "options": {"num_ctx": request.num_ctx},
    }
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    deadline = time.monotonic() + CLIENT_RETRY_REAL_SECONDS
    attempts = bad_gateway = 0
    while True:
        attempts += 1
        began = time.monotonic()
        try:
            status, answer = generate(host, port, body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # Ollama restarting: the connection is refused or cut. A client tries again.
            if time.monotonic() > deadline:
                return ClientResult(
                    request, False, attempts, error=type(exc).__name__, gateway_502=bad_gateway
                )
            time.sleep(0.01)
            continue
        took = time.monotonic() - began
        if status == 502 and time.monotonic() <= deadline:
            # the gateway's word for a refused connection: Ollama restarting
            bad_gateway += 1
            time.sleep(0.01)
            continue
        if status != 200:
            return ClientResult(
                request,
                False,
                attempts,
                error=f"HTTP {status}: {answer}",
                status=status,
                seconds=took,
                gateway_502=bad_gateway,
            )
        return ClientResult(
            request,
            True,
            attempts,
            tokens=int(answer.get("eval_count", 0)),
            status=200,
            seconds=took,
            gateway_502=bad_gateway,
        )


# --- strategies -----------------------------------------------------------------------------


class Strategy:
    """How models are kept warm: the double's OLLAMA_KEEP_ALIVE, and what runs beside it."""

    name = "none"
    keep_alive: str | None = None

    def setup(self, double: OllamaDouble, workdir: Path, scale: float) -> None:
        """Before the workload starts (t = 0)."""

    def start(self, double: OllamaDouble, t0: float, scale: float, end: float) -> None:
        """At t = 0; ``t0`` is time.monotonic() then."""

    def stop(self) -> None:
        """At the end of the workload."""

    def requests_sent(self, double: OllamaDouble) -> int:
        """Load or warm-up requests this strategy sent during the workload."""
        return 0

    def cpu_seconds(self) -> float | None:
        return None

    def client_address(self, double: OllamaDouble) -> tuple[str, int]:
        """Where the workload's clients send their requests."""
        return double.host, double.port


class KeepAliveForever(Strategy):
    name = "keep-alive-forever"
    keep_alive = "-1"


class Cron(Strategy):
    """Every 5 simulated minutes, one request per pinned model, one after the other, as a
    shell loop of curl lines would; a refused connection is not retried."""

    name = "cron"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0

    def _round(self, double: OllamaDouble) -> None:
        for pinned in PINNED:
            body = {
                "model": pinned.model.name,
                "prompt": KEEP_WARM_PROMPT,
                "keep_alive": -1,
                "options": {"num_ctx": pinned.num_ctx},
                "stream": False,
            }
            self.sent += 1
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                generate(double.host, double.port, body)

    def setup(self, double: OllamaDouble, workdir: Path, scale: float) -> None:
        self._round(double)
        self.sent = 0

    def start(self, double: OllamaDouble, t0: float, scale: float, end: float) -> None:
        def loop() -> None:
            k = 1
            while k * CRON_PERIOD < end:
                if self._stop.wait(max(0.0, t0 + k * CRON_PERIOD / scale - time.monotonic())):
                    return
                self._round(double)
                k += 1

        self._thread = threading.Thread(target=loop, name="cron", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def requests_sent(self, double: OllamaDouble) -> int:
        return self.sent


def is_load_request(method: str, path: str, body: object) -> bool:
    """A request that loads (or re-times) a model without generating: no prompt, no
    messages, no input, and a keep_alive other than 0."""
    if method != "POST" or path not in ("/api/generate", "/api/chat", "/api/embed"):
        return False
    if not isinstance(body, dict):
        return False
    if body.get("prompt") or body.get("messages") or body.get("input"):
        return False
    return body.get("keep_alive") not in (0, "0", "0s")


class Keeper(Strategy):
    """The real daemon as a subprocess, its interval set to 15 simulated seconds."""

    name = "sentinel-keeper"
    keep_alive = "-1"  # what `sentinel-keeper apply-override` writes for ollama.service

    def __init__(
        self, interval: float = DAEMON_INTERVAL, *, scaled: bool = True, stock: bool = False
    ) -> None:
        self.interval = interval
        self.scaled = scaled  # the interval is in simulated seconds
        self.stock = stock  # leave the daemon's own clock constants in real seconds
        self.daemon: DaemonProcess | None = None
        self.notify: NotifySocket | None = None
        self.ready_after: float | None = None
        self._cpu_at_start = 0.0
        self._cpu: float | None = None

    def setup(self, double: OllamaDouble, workdir: Path, scale: float) -> None:
        real_interval = self.interval / scale if self.scaled else self.interval
        policy = write_policy(
            workdir / "policy.yaml",
            double.url,
            interval=real_interval,
            time_scale=scale if self.scaled else 1.0,
            **self.policy_extras(scale),
        )
        self.notify = NotifySocket(workdir / "notify.sock")
        constants_scale = scale if self.scaled and not self.stock else 1.0
        self.daemon = DaemonProcess(
            policy, workdir, self.notify, time_scale=constants_scale, log_format="json"
        )
        ready = self.notify.wait_for("READY", "1", timeout=120).at
        self.ready_after = ready - self.daemon.started

    def start(self, double: OllamaDouble, t0: float, scale: float, end: float) -> None:
        double.clear_requests()
        if self.daemon is not None:
            self._cpu_at_start = self.daemon.cpu_seconds()

    def stop(self) -> None:
        if self.daemon is not None:
            if self.daemon.proc.poll() is None:
                self._cpu = self.daemon.cpu_seconds() - self._cpu_at_start
            self.daemon.stop()
        if self.notify is not None:
            self.notify.close()

    def requests_sent(self, double: OllamaDouble) -> int:
        return sum(1 for r in double.requests if is_load_request(r.method, r.path, r.body))

    def cpu_seconds(self) -> float | None:
        return self._cpu

    def outages_seen(self) -> int:
        if self.daemon is None:
            return 0
        return sum(1 for line in self.daemon.lines() if '"ollama_unreachable"' in line)

    def policy_extras(self, scale: float) -> dict[str, Any]:
        """More of the policy (write_policy's keyword arguments)."""
        return {}


class GatewayKeeper(Keeper):
    """The daemon with the gateway's own process beside it, the clients sending their
    requests to the gateway."""

    def __init__(self, foreign: str, *, stock: bool = False) -> None:
        super().__init__(stock=stock)
        self.foreign = foreign
        self.name = f"gateway:{foreign}"
        self.port = free_port()
        self.gateway: DaemonProcess | None = None

    def policy_extras(self, scale: float) -> dict[str, Any]:
        return {
            "gateway": [
                f"listen: 127.0.0.1:{self.port}",
                f"foreign: {self.foreign}",
                f"queue_timeout: {_harness.format_seconds(QUEUE_TIMEOUT / scale)}",
                "drain: 2s",
            ],
            "vram_budget": _harness.VRAM,
        }

    def setup(self, double: OllamaDouble, workdir: Path, scale: float) -> None:
        super().setup(double, workdir, scale)
        self.gateway = DaemonProcess(
            workdir / "policy.yaml",
            workdir,
            workdir / "gateway-notify.sock",
            log_format="json",
            command="gateway",
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway does not listen on port {self.port}")
            time.sleep(0.05)

    def client_address(self, double: OllamaDouble) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        super().stop()


def make_strategy(name: str, *, stock_daemon: bool = False) -> Strategy:
    if name.startswith("gateway:"):
        return GatewayKeeper(name.split(":", 1)[1], stock=stock_daemon)
    if name == "none":
        return Strategy()
    if name == "keep-alive-forever":
        return KeepAliveForever()
    if name == "cron":
        return Cron()
    if name == "sentinel-keeper":
        return Keeper(stock=stock_daemon)
    raise ValueError(f"unknown strategy {name!r}")


# --- one run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    strategy: str
    scale: float
    start: float  # the double's clock at t = 0
    clients: list[ClientResult]
    completions: list[CompletionRecord]
    load_log: list[LoadRecord]
    unload_log: list[UnloadRecord]
    restarts: list[float]  # the double's clock when it answered again
    tokens_generated: int
    requests_sent: int
    loads: int
    cpu_seconds: float | None
    wall_seconds: float
    end: float = 0.0  # the double's clock at the end of the workload
    ready_after: float | None = None
    outages_seen: int | None = None


def run_strategy(workload: Workload, strategy: Strategy, scale: float, workdir: Path) -> RunResult:
    double = make_double(keep_alive=strategy.keep_alive, time_scale=scale).start()
    results: list[ClientResult] = []
    lock = threading.Lock()
    began = time.monotonic()
    try:
        strategy.setup(double, workdir, scale)
        t0 = time.monotonic() + 0.05
        time.sleep(max(0.0, t0 - time.monotonic()))
        start_clock = double.now()
        tokens_before = double.tokens_generated
        loads_before = double.load_count
        load_log_before = len(double.load_log)
        unload_log_before = len(double.unload_log)
        completions_before = len(double.completions)
        strategy.start(double, t0, scale, workload.end)
        address = strategy.client_address(double)

        def stream_loop(stream: Sequence[Request]) -> None:
            for request in stream:
                delay = t0 + request.at / scale - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                result = run_client(*address, request)
                with lock:
                    results.append(result)

        def restart_loop() -> None:
            for restart in workload.restarts:
                delay = t0 + restart.at / scale - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                double.restart(down_seconds=restart.down / scale)

        threads = [
            threading.Thread(target=stream_loop, args=(s,), name="client", daemon=True)
            for s in workload.streams
        ]
        threads.append(threading.Thread(target=restart_loop, name="restarts", daemon=True))
        for t in threads:
            t.start()
        finish = t0 + workload.end / scale
        for t in threads:
            t.join(timeout=max(1.0, finish - time.monotonic()) + CLIENT_RETRY_REAL_SECONDS + 30)
        end_clock = double.now()
        strategy.stop()
        return RunResult(
            strategy=strategy.name,
            scale=scale,
            start=start_clock,
            end=end_clock,
            clients=results,
            completions=list(double.completions[completions_before:]),
            load_log=list(double.load_log[load_log_before:]),
            unload_log=list(double.unload_log[unload_log_before:]),
            restarts=list(double.restart_log),
            tokens_generated=double.tokens_generated - tokens_before,
            requests_sent=strategy.requests_sent(double),
            loads=double.load_count - loads_before,
            cpu_seconds=strategy.cpu_seconds(),
            wall_seconds=time.monotonic() - began,
            ready_after=strategy.ready_after if isinstance(strategy, Keeper) else None,
            outages_seen=strategy.outages_seen() if isinstance(strategy, Keeper) else None,
        )
    finally:
        strategy.stop()
        double.stop()


# --- figures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewarm:
    seconds: float | None  # None: not every pinned model was loaded again before the next
    loads: float  # the summed load time of those loads


@dataclass
class Figures:
    strategy: str
    pinned: int
    failed: int
    cold: int
    ttfb: list[float]  # simulated seconds, pinned requests
    warm_ttfb: list[float]
    other_ctx: int
    other_ctx_cold: int
    foreign: int
    foreign_cold: int
    rewarms: list[Rewarm]
    keep_warm_tokens: int
    unattributed_tokens: int
    requests_sent: int
    loads: int
    cpu_seconds: float | None
    wall_seconds: float
    outages_seen: int | None = None
    causes: dict[str, int] = field(default_factory=dict)
    ttfb_not_evicted: list[float] = field(default_factory=list)  # without "evicted" cold hits
    foreign_ttfb: list[float] = field(default_factory=list)  # answered ones, simulated s
    foreign_refused: int = 0  # answered 503 by the gateway (reject, or queue timed out)
    foreign_refused_wait: list[float] = field(default_factory=list)  # simulated s to the 503
    other_failed: int = 0  # other-num_ctx and foreign requests with no answer at all
    bad_gateway: int = 0  # attempts the gateway answered 502 (the client tried again)

    @property
    def cold_share(self) -> float:
        return self.cold / self.pinned if self.pinned else float("nan")

    def p(self, fraction: float) -> float:
        return percentile(self.ttfb, fraction)

    @property
    def warm_p50(self) -> float:
        return percentile(self.warm_ttfb, 0.5)


def rewarms(result: RunResult, names: Sequence[str]) -> list[Rewarm]:
    """For each restart: how long from Ollama answering again until every pinned model had
    been loaded again (before the next restart or the end)."""
    out = []
    times = sorted(t for t in result.restarts if t >= result.start)
    for i, answered in enumerate(times):
        until = times[i + 1] if i + 1 < len(times) else result.end
        firsts: dict[str, LoadRecord] = {}
        for record in result.load_log:
            if answered <= record.at < until and record.model in names:
                firsts.setdefault(record.model, record)
        if len(firsts) < len(names):
            out.append(Rewarm(None, sum(r.seconds for r in firsts.values())))
            continue
        last = max(r.at for r in firsts.values())
        out.append(Rewarm(last - answered, sum(r.seconds for r in firsts.values())))
    return out


CAUSES = (
    "not loaded yet",
    "restart",
    "evicted",
    "keep_alive 0",
    "other num_ctx",
    "keep_alive ran out",
)
_UNLOAD_CAUSES = {
    "restart": "restart",
    "evicted": "evicted",
    "keep_alive 0": "keep_alive 0",
    "reload": "other num_ctx",
    "expired": "keep_alive ran out",
    "removed": "evicted",
}


def cold_causes(result: RunResult) -> dict[str, str]:
    """Why each cold pinned-model request found its model cold, from the double's own log
    of loads and unloads: the last thing that happened to the model before the request
    arrived. A load means the model was there with other load-time options (another
    num_ctx); an unload says why it went (evicted for another model, keep_alive 0, its
    keep_alive ran out, a restart); nothing at all: not loaded since the start."""
    prompts = {c.request.prompt for c in result.clients if c.request.kind == "pinned"}
    events: dict[str, list[tuple[float, str]]] = {}
    for load in result.load_log:
        events.setdefault(load.model, []).append((load.at, "other num_ctx"))
    for unload in result.unload_log:
        cause = _UNLOAD_CAUSES.get(unload.reason, unload.reason)
        events.setdefault(unload.model, []).append((unload.at, cause))
    for items in events.values():
        items.sort()
    causes: dict[str, str] = {}
    for record in result.completions:
        if record.warm or record.prompt not in prompts:
            continue
        before = [cause for at, cause in events.get(record.model, []) if at <= record.arrived_at]
        causes[record.prompt] = before[-1] if before else "not loaded yet"
    return causes


def figures(result: RunResult) -> Figures:
    by_prompt = {c.prompt: c for c in result.completions}
    pinned_ttfb: list[float] = []
    warm: list[float] = []
    cold = other = other_cold = foreign = foreign_cold = failed = 0
    client_tokens = other_failed = foreign_refused = 0
    foreign_ttfb: list[float] = []
    foreign_refused_wait: list[float] = []
    for client in result.clients:
        request = client.request
        record = by_prompt.get(request.prompt)
        if record is None:
            if request.kind == "pinned":
                failed += 1
            elif request.kind == "foreign" and client.status == 503:
                foreign_refused += 1
                foreign_refused_wait.append(client.seconds * result.scale)
            else:
                other_failed += 1
            continue
        client_tokens += record.tokens
        is_cold = not record.warm
        if request.kind == "pinned":
            ttfb = record.wait_seconds + FIRST_TOKEN_SECONDS
            pinned_ttfb.append(ttfb)
            if is_cold:
                cold += 1
            else:
                warm.append(ttfb)
        elif request.kind == "other-ctx":
            other += 1
            other_cold += is_cold
        else:
            foreign += 1
            foreign_cold += is_cold
            foreign_ttfb.append(record.wait_seconds + FIRST_TOKEN_SECONDS)
    client_prompts = {c.request.prompt for c in result.clients}
    by_prompt_request = {c.request.prompt: c.request.kind for c in result.clients}
    keep_warm = sum(c.tokens for c in result.completions if c.prompt not in client_prompts)
    causes = cold_causes(result)
    counts = dict.fromkeys(CAUSES, 0)
    for cause in causes.values():
        counts[cause] = counts.get(cause, 0) + 1
    not_evicted = [
        record.wait_seconds + FIRST_TOKEN_SECONDS
        for record in result.completions
        if record.prompt in client_prompts
        and by_prompt_request.get(record.prompt) == "pinned"
        and causes.get(record.prompt) != "evicted"
    ]
    return Figures(
        strategy=result.strategy,
        pinned=len(pinned_ttfb),
        failed=failed,
        cold=cold,
        ttfb=pinned_ttfb,
        warm_ttfb=warm,
        other_ctx=other,
        other_ctx_cold=other_cold,
        foreign=foreign,
        foreign_cold=foreign_cold,
        rewarms=rewarms(result, [p.model.name for p in PINNED]),
        keep_warm_tokens=keep_warm,
        unattributed_tokens=result.tokens_generated - client_tokens - keep_warm,
        requests_sent=result.requests_sent,
        loads=result.loads,
        cpu_seconds=result.cpu_seconds,
        wall_seconds=result.wall_seconds,
        outages_seen=result.outages_seen,
        causes=counts,
        ttfb_not_evicted=not_evicted,
        foreign_ttfb=foreign_ttfb,
        foreign_refused=foreign_refused,
        foreign_refused_wait=foreign_refused_wait,
        other_failed=other_failed,
        bad_gateway=sum(c.gateway_502 for c in result.clients),
    )


# --- the real-time re-warm phase ------------------------------------------------------------


@dataclass(frozen=True)
class RewarmSample:
    down: float  # real seconds the port refused connections
    seconds: float  # from Ollama answering to every pinned model resident
    loads: float  # the load time of those loads
    noticed: bool  # the daemon logged the outage (it probes quickly only then)

    @property
    def overhead(self) -> float:
        return self.seconds - self.loads


def measure_rewarm(
    seed: int, restarts: int, scale: float, interval: float, workdir: Path
) -> list[RewarmSample]:
    """Restart the double under the running daemon ``restarts`` times, at random moments of
    its pass schedule, and time the pinned models' return. In double seconds (real seconds
    at scale 1)."""
    rng = random.Random(seed + 1)  # noqa: S311 (reproducible moments)
    names = {p.model.name for p in PINNED}
    keeper = Keeper(interval, scaled=False)
    double = make_double(keep_alive="-1", time_scale=scale).start()
    samples: list[RewarmSample] = []
    try:
        keeper.setup(double, workdir, scale)
        for _ in range(restarts):
            time.sleep(rng.uniform(1.0, 1.0 + interval))  # a random phase of the passes
            down = rng.uniform(1.0, 5.0) / scale
            seen_before = keeper.outages_seen()
            logged = len(double.load_log)
            double.restart(down_seconds=down)
            answered = time.monotonic()
            deadline = answered + 300
            while not names <= {i.name for i in double.loaded()}:
                if time.monotonic() > deadline:
                    raise TimeoutError("the pinned models did not come back within 300 s")
                time.sleep(0.002)
            resident = time.monotonic()
            loads = sum(r.seconds for r in double.load_log[logged:] if r.model in names)
            samples.append(
                RewarmSample(
                    down=down * scale,
                    seconds=(resident - answered) * scale,
                    loads=loads,
                    noticed=keeper.outages_seen() > seen_before,
                )
            )
    finally:
        keeper.stop()
        double.stop()
    return samples


# --- output ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def rewarm_text(items: Sequence[Rewarm]) -> str:
    if not items:
        return "-"
    done = sorted(r.seconds for r in items if r.seconds is not None)
    never = len(items) - len(done)
    parts = [", ".join(f"{s:.0f}" for s in done)] if done else []
    if never:
        parts.append(f"{never} never")
    return "; ".join(parts)


@dataclass(frozen=True)
class Target:
    text: str
    met: bool | None  # None: not measured
    measured: str


def gateway_targets(by_name: dict[str, Figures]) -> list[Target]:
    """The gateway's: pinned cold hits <= 0.5% with every client going through it (only
    restarts left as a cause), and the other clients not colder than with no keeper."""
    out: list[Target] = []
    none = by_name.get("none")
    for name, f in by_name.items():
        if not name.startswith("gateway:"):
            continue
        foreign = name.split(":", 1)[1]
        left = {c: n for c, n in f.causes.items() if n and c != "restart"}
        out.append(
            Target(
                f"cold-hit share <= 0.5%, causes left: restarts only (gateway, foreign: {foreign})",
                f.cold_share <= TARGET_COLD_SHARE and not left,
                f"{f.cold_share:.2%} ({f.cold} of {f.pinned}; restart "
                f"{f.causes.get('restart', 0)}"
                + "".join(f", {c} {n}" for c, n in left.items())
                + ")",
            )
        )
        if none is None:
            continue
        worse = []
        if f.other_ctx_cold > none.other_ctx_cold:
            worse.append("other num_ctx")
        if f.foreign_cold > none.foreign_cold:
            worse.append("foreign")
        refused = f" ({f.foreign_refused} foreign requests refused)" if f.foreign_refused else ""
        out.append(
            Target(
                f"other clients not colder than with no keeper (gateway, foreign: {foreign})",
                not worse,
                f"other num_ctx cold {f.other_ctx_cold} of {f.other_ctx} (none: "
                f"{none.other_ctx_cold} of {none.other_ctx}), foreign cold {f.foreign_cold} of "
                f"{f.foreign} answered{refused} (none: {none.foreign_cold} of {none.foreign})"
                + (f"; colder: {', '.join(worse)}" if worse else ""),
            )
        )
    return out


def targets(by_name: dict[str, Figures], samples: Sequence[RewarmSample]) -> list[Target]:
    out: list[Target] = []
    keeper = by_name.get("sentinel-keeper")
    cron = by_name.get("cron")
    if keeper is None:
        return gateway_targets(by_name)
    share = keeper.cold_share
    evicted = keeper.causes.get("evicted", 0)
    others = keeper.pinned - evicted
    out.append(
        Target(
            "cold-hit share <= 0.5% (sentinel-keeper)",
            share <= TARGET_COLD_SHARE,
            f"{share:.2%} ({keeper.cold} of {keeper.pinned}; {evicted} of them evicted to make "
            f"room for another model; without those, {(keeper.cold - evicted) / others:.2%})",
        )
    )
    if cron is not None:
        ratio = cron.cold_share / share if share > 0 else float("inf")
        out.append(
            Target(
                "cold-hit share at least 10x below the cron warm-up",
                (cron.cold_share > 0 and share == 0) or ratio >= TARGET_COLD_RATIO_TO_CRON,
                f"cron {cron.cold_share:.2%}, {ratio:.1f}x",
            )
        )
    p99, warm = keeper.p(0.99), keeper.warm_p50
    p99_not_evicted = percentile(keeper.ttfb_not_evicted, 0.99)
    out.append(
        Target(
            "TTFB p99 <= 1.5x warm p50 (sentinel-keeper)",
            p99 <= TARGET_P99_OVER_WARM_P50 * warm,
            f"p99 {ms(p99)} ms, warm p50 {ms(warm)} ms: {p99 / warm:.2f}x; without the "
            f"requests that met an evicted model, p99 {ms(p99_not_evicted)} ms",
        )
    )
    out.append(
        Target(
            "zero keep-warm tokens (sentinel-keeper)",
            keeper.keep_warm_tokens == 0,
            f"{keeper.keep_warm_tokens} tokens",
        )
    )
    if samples:
        worst = max(s.overhead for s in samples)
        out.append(
            Target(
                "re-warm within the load time + 1 s of Ollama answering (real time)",
                worst <= TARGET_REWARM_OVERHEAD,
                "beyond the load time: "
                + ", ".join(f"{s.overhead:.1f} s" for s in samples)
                + f" (worst {worst:.1f} s)",
            )
        )
    else:
        out.append(
            Target(
                "re-warm within the load time + 1 s of Ollama answering (real time)",
                None,
                "not measured (--rewarm-restarts 0)",
            )
        )
    return out + gateway_targets(by_name)


def markdown(
    *,
    command: str,
    workload: Workload,
    scale: float,
    results: Sequence[Figures],
    samples: Sequence[RewarmSample],
    rewarm_scale: float,
    rewarm_interval: float,
    goals: Sequence[Target],
    machine: str,
    plot_name: str | None,
    stock_daemon: bool = False,
) -> str:
    lines = [
        "# Residency under faults",
        "",
        "Produced by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Seed {workload.seed}; {workload.hours:g} simulated hours at time scale {scale:g} "
        f"(each strategy runs {workload.hours * 3600 / scale:.0f} s of real time); "
        f"machine: {machine}.",
        "",
        "The workload (the same for every strategy): "
        f"{workload.count('pinned')} requests to the {len(PINNED)} pinned models "
        f"({', '.join(f'{p.model.name} num_ctx {p.num_ctx}' for p in PINNED)}) "
        "in sessions separated by 6 to 40 idle minutes, 30% of the sessions sending their own "
        'keep_alive ("5m" or "30s"), '
        f"{sum(1 for r in workload.requests() if r.keep_alive == 0)} of them with keep_alive 0; "
        f"{workload.count('other-ctx')} requests to {PINNED[0].model.name} with num_ctx "
        f"{PINNED[0].num_ctx * 2}; {workload.count('foreign')} requests to {FOREIGN.name} "
        f"(not in the policy, num_ctx {FOREIGN_NUM_CTX}), which does not fit beside the "
        f"pinned models in {_harness.VRAM // 1024**3} GiB; "
        f"{len(workload.restarts)} Ollama restarts "
        f"(down {', '.join(f'{r.down:.0f}' for r in workload.restarts)} s). "
        f"Cold loads take {_harness.LOAD_SECONDS:g} s + {_harness.LOAD_SECONDS_PER_GIB:g} s "
        "per GiB Ollama predicts for the model; a warm model answers its first token in "
        f"{FIRST_TOKEN_SECONDS * 1000:.0f} ms.",
        "",
        "| strategy | pinned requests | cold hits | TTFB p50 ms | p95 ms | p99 ms | max ms "
        "| re-warm after restarts, s | keep-warm tokens | requests sent to keep warm |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for f in results:
        lines.append(
            f"| {LABELS[f.strategy]} | {f.pinned} | {f.cold} ({f.cold_share:.1%}) "
            f"| {ms(f.p(0.5))} | {ms(f.p(0.95))} | {ms(f.p(0.99))} | {ms(max(f.ttfb))} "
            f"| {rewarm_text(f.rewarms)} | {f.keep_warm_tokens} | {f.requests_sent} |"
        )
    lines += [
        "",
        "All times are simulated (real time x the time scale). TTFB is the time Ollama (the "
        "double) kept the request waiting for its model (queueing, evictions, the load) plus "
        f"the {FIRST_TOKEN_SECONDS * 1000:.0f} ms a warm model takes to its first token; the "
        "harness's own HTTP round trip is not included. A cold hit is a request whose model "
        "was not loaded with the request's num_ctx when it arrived. Re-warm: from Ollama "
        "answering again after a restart until every pinned model had been loaded again, "
        "whoever loaded it ('never': not before the next restart or the end). Requests sent "
        "to keep warm: the cron's prompts; sentinel-keeper's requests without a prompt "
        "(loads, and keep_alive re-assertions after a client shortened a timer, which Ollama "
        "serves without loading anything).",
        "",
        "Other clients, for each strategy (not in the figures above):",
        "",
        "| strategy | other-num_ctx requests cold | foreign-model requests cold "
        "| failed pinned requests | model loads in Ollama | daemon CPU s | real s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in results:
        cpu = "-" if f.cpu_seconds is None else f"{f.cpu_seconds:.1f}"
        lines.append(
            f"| {LABELS[f.strategy]} | {f.other_ctx_cold} of {f.other_ctx} "
            f"| {f.foreign_cold} of {f.foreign} | {f.failed} | {f.loads} | {cpu} "
            f"| {f.wall_seconds:.0f} |"
        )
    lines += [
        "",
        f"The foreign-model requests' cost ({workload.count('foreign')} requests to "
        f"{FOREIGN.name}, which does not fit beside the pinned models). Answered: Ollama "
        "(the double) generated the answer; TTFB as above. Refused: the gateway answered 503 "
        "(`foreign: reject` at once, `foreign: queue` after its queue_timeout); the wait is "
        "the client's real time to that answer x the time scale. Evicted pinned: the pinned "
        "requests that met a model evicted to make room for another (the foreign one, or "
        "the other-num_ctx reload of llama3.2:1b). 502s: the gateway's answers while "
        "Ollama restarted, which the client retried:",
        "",
        "| strategy | answered | cold | TTFB mean ms | TTFB max ms | refused (503) "
        "| mean wait to the 503 ms | no answer | evicted pinned | 502s retried |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in results:
        mean = ms(statistics.fmean(f.foreign_ttfb)) if f.foreign_ttfb else "-"
        top = ms(max(f.foreign_ttfb)) if f.foreign_ttfb else "-"
        wait = ms(statistics.fmean(f.foreign_refused_wait)) if f.foreign_refused_wait else "-"
        lines.append(
            f"| {LABELS[f.strategy]} | {f.foreign} of {workload.count('foreign')} "
            f"| {f.foreign_cold} | {mean} | {top} | {f.foreign_refused} | {wait} "
            f"| {f.other_failed} | {f.causes.get('evicted', 0)} | {f.bad_gateway} |"
        )
    lines += [
        "",
        "Cold hits on pinned models by cause: the last thing that happened to the model "
        "before the request arrived, from the double's log (evicted: to make room for "
        "another model; other num_ctx: loaded with other options; not loaded yet: since "
        "the start):",
        "",
        "| strategy | " + " | ".join(CAUSES) + " |",
        "| --- |" + " ---: |" * len(CAUSES),
    ]
    for f in results:
        lines.append(
            f"| {LABELS[f.strategy]} | "
            + " | ".join(str(f.causes.get(c, 0)) for c in CAUSES)
            + " |"
        )
    keeper = next(
        (
            f
            for f in results
            if f.strategy == "sentinel-keeper" or f.strategy.startswith("gateway:")
        ),
        None,
    )
    lines += [""]
    if keeper is not None:
        lines += [
            "sentinel-keeper ran with "
            f"`interval: {_harness.format_seconds(DAEMON_INTERVAL / scale)}`"
            f" (real), that is {DAEMON_INTERVAL:g} s simulated, the default, "
            + (
                "and its other clock constants left in real seconds (`--stock-daemon`): in "
                "simulated time its probes while Ollama does not answer, its look at /api/ps "
                f"between passes and its back-off after a failed load are {scale:g} times "
                "slower than in production. "
                if stock_daemon
                else "and with the daemon's own clock constants divided by the time scale "
                "(`Timings().scaled(k)`: its probes while Ollama does not answer, its "
                "look at /api/ps between passes, the jitter of its passes, its back-off after "
                "a failed load), so that in simulated time it keeps the pace it keeps in real "
                "time. "
            )
            + f"It logged {keeper.outages_seen} outages of Ollama.",
            "",
        ]
    if any(f.strategy.startswith("gateway:") for f in results):
        lines += [
            "sentinel-keeper + gateway: the same daemon with `gateway.listen` on a free "
            "loopback port; the workload's clients send their requests to the gateway, the "
            "daemon's own loads go to Ollama directly. One run of the whole workload per "
            "`gateway.foreign` setting. There is no NVML here, so the policy sets "
            f"`vram.budget: {_harness.VRAM}` (the double's {_harness.VRAM // 1024**3} GiB), "
            "the memory the foreign rule reckons with. `gateway.queue_timeout` is real "
            f"seconds: the policy gets {QUEUE_TIMEOUT:g} s simulated (the default) divided by "
            f"the time scale, `{_harness.format_seconds(QUEUE_TIMEOUT / scale)}`; the "
            "gateway's poll of a queued request (every 0.5 s real) is not scaled, so a "
            "queued request is looked at again only at its deadline.",
            "",
        ]
    if samples:
        lines += [
            "## Re-warm after a restart, real time",
            "",
            f"sentinel-keeper with `interval: {rewarm_interval:g}s` against the double at "
            f"time scale {rewarm_scale:g}, Ollama restarted {len(samples)} times at random "
            "moments of the daemon's pass schedule. Seconds from Ollama answering again to "
            "every pinned model resident; the load time is the sum of the loads Ollama did "
            "(one at a time).",
            "",
            "| restart | down s | re-warm s | load time s | beyond the load time s "
            "| daemon saw the outage |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for i, s in enumerate(samples, 1):
            lines.append(
                f"| {i} | {s.down:.1f} | {s.seconds:.2f} | {s.loads:.2f} | {s.overhead:.2f} "
                f"| {'yes' if s.noticed else 'no'} |"
            )
        lines.append("")
    lines += ["## Targets", ""]
    for goal in goals:
        verdict = "not measured" if goal.met is None else "met" if goal.met else "MISSED"
        lines.append(f"- {goal.text}: **{verdict}**, {goal.measured}")
    lines.append("")
    if plot_name is not None:
        lines += [f"![TTFB distribution per strategy]({plot_name})", ""]
    return "\n".join(lines)


SHORT_LABELS = {
    "none": "none\n(5m default)",
    "keep-alive-forever": "OLLAMA_\nKEEP_ALIVE=-1",
    "cron": "cron\nevery 5m",
    "sentinel-keeper": "sentinel-\nkeeper",
    **{f"gateway:{f}": f"+ gateway\n{f}" for f in FOREIGN_SETTINGS},
}
COLORS = {
    "none": "tab:blue",
    "keep-alive-forever": "tab:orange",
    "cron": "tab:green",
    "sentinel-keeper": "tab:red",
    "gateway:evict": "tab:purple",
    "gateway:queue": "tab:brown",
    "gateway:cpu": "tab:pink",
    "gateway:reject": "tab:olive",
}


def plot(results: Sequence[Figures], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 (a bench-only dependency, imported only here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [1.5, 1.6]}
    )
    labels = [SHORT_LABELS[f.strategy] for f in results]
    shares = [100 * f.cold_share for f in results]
    evicted = [100 * f.causes.get("evicted", 0) / f.pinned if f.pinned else 0.0 for f in results]
    colors = [COLORS[f.strategy] for f in results]
    left.bar(labels, [s - e for s, e in zip(shares, evicted, strict=True)], color=colors)
    bars = left.bar(
        labels,
        evicted,
        bottom=[s - e for s, e in zip(shares, evicted, strict=True)],
        color=colors,
        alpha=0.45,
        hatch="//",
        label="evicted for another model",
    )
    left.legend(fontsize=8, loc="upper right")
    for bar, f in zip(bars, results, strict=True):
        left.annotate(
            f"{f.cold_share:.1%}\n({f.cold} of {f.pinned})",
            (bar.get_x() + bar.get_width() / 2, 100 * f.cold_share),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    left.axhline(100 * TARGET_COLD_SHARE, color="grey", linewidth=0.8, linestyle=":")
    left.set_ylabel("pinned-model requests that met a cold model, %")
    left.set_title("cold hits")
    left.set_ylim(0, max(shares + [1.0]) * 1.25)
    left.tick_params(axis="x", labelsize=7)
    for f in results:
        xs = sorted(f.ttfb)
        n = len(xs)
        if not n:
            continue
        tail = [1 - (i / n) for i in range(n)]
        right.step(
            xs,
            tail,
            where="post",
            color=COLORS[f.strategy],
            label=f"{LABELS[f.strategy]}: p99 {ms(f.p(0.99))} ms",
        )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("TTFB, simulated seconds (log)")
    right.set_ylabel("share of requests with at least this TTFB (log)")
    right.set_title("TTFB distribution of pinned-model requests")
    right.axvline(FIRST_TOKEN_SECONDS, color="grey", linewidth=0.8, linestyle=":")
    right.axhline(0.01, color="grey", linewidth=0.8, linestyle="--")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hours", type=float, default=4.0, help="simulated hours (default 4)")
    p.add_argument(
        "--time-scale", type=float, default=120.0, help="simulated seconds per real second"
    )
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated, from {', '.join(STRATEGIES)}",
    )
    p.add_argument(
        "--gateway-foreign",
        default=",".join(FOREIGN_SETTINGS),
        help="the gateway strategy's runs: one per gateway.foreign setting, comma-separated",
    )
    p.add_argument(
        "--rewarm-restarts",
        type=int,
        default=5,
        help="restarts in the real-time re-warm phase (0: skip it)",
    )
    p.add_argument("--rewarm-time-scale", type=float, default=1.0)
    p.add_argument(
        "--rewarm-interval",
        type=float,
        default=PRODUCTION_INTERVAL,
        help="the daemon's interval in the re-warm phase, real seconds (default 15)",
    )
    p.add_argument("--out", type=Path, default=Path("docs"), help="directory for the results")
    p.add_argument("--name", default="residency", help="file names: NAME.md, NAME.png")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    p.add_argument("--raw", type=Path, help="also write every record of every run as JSON")
    p.add_argument(
        "--stock-daemon",
        action="store_true",
        help="leave the daemon's probe, watch, jitter and back-off times in real seconds",
    )
    return p.parse_args(argv)


def reproducible_args(argv: Sequence[str]) -> list[str]:
    """The command line as the results record it: without --raw, which only adds a file."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--raw":
            skip = True
        elif not arg.startswith("--raw="):
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    foreigns = [s.strip() for s in args.gateway_foreign.split(",") if s.strip()]
    unknown += [f"gateway foreign {f}" for f in foreigns if f not in FOREIGN_SETTINGS]
    if unknown:
        print(f"unknown strategies: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if "gateway" in names:
        at = names.index("gateway")
        names[at : at + 1] = [f"gateway:{f}" for f in foreigns]
    _harness.quiet_double_errors()
    sys.setswitchinterval(0.0005)  # threads get the GIL sooner: less noise in the timings
    command = "python -m benchmarks.residency " + " ".join(
        shlex.quote(a) for a in reproducible_args(sys.argv[1:] if argv is None else argv)
    )
    machine = f"{_harness.machine_note()}; sentinel-keeper at commit {_harness.code_version()}"
    workload = make_workload(args.seed, args.hours)
    print(
        f"workload: seed {args.seed}, {args.hours:g} h, {len(workload.requests())} requests, "
        f"{len(workload.restarts)} restarts; time scale {args.time_scale:g}",
        flush=True,
    )
    results: list[Figures] = []
    raw: dict[str, Any] = {}
    for name in names:
        with _harness.temp_workdir(f"residency-{name}-") as tmp:
            strategy = make_strategy(name, stock_daemon=args.stock_daemon)
            run = run_strategy(workload, strategy, args.time_scale, Path(tmp))
        raw[name] = dataclasses.asdict(run)
        fig = figures(run)
        results.append(fig)
        print(
            f"{name:<20} cold {fig.cold}/{fig.pinned} ({fig.cold_share:.2%}: "
            + ", ".join(f"{k} {v}" for k, v in fig.causes.items() if v)
            + "), "
            f"TTFB p50 {ms(fig.p(0.5))} p99 {ms(fig.p(0.99))} max {ms(max(fig.ttfb))} ms, "
            f"re-warm {rewarm_text(fig.rewarms)}, keep-warm tokens {fig.keep_warm_tokens}, "
            f"load requests {fig.requests_sent} ({run.wall_seconds:.0f} s); foreign answered "
            f"{fig.foreign} (cold {fig.foreign_cold}), refused {fig.foreign_refused}; "
            f"other num_ctx cold {fig.other_ctx_cold}/{fig.other_ctx}; 502s {fig.bad_gateway}",
            flush=True,
        )
    samples: list[RewarmSample] = []
    if args.rewarm_restarts > 0 and "sentinel-keeper" in names:
        with _harness.temp_workdir("residency-rewarm-") as tmp:
            samples = measure_rewarm(
                args.seed,
                args.rewarm_restarts,
                args.rewarm_time_scale,
                args.rewarm_interval,
                Path(tmp),
            )
        for s in samples:
            print(
                f"re-warm {s.seconds:.2f} s (loads {s.loads:.2f} s, beyond {s.overhead:.2f} s, "
                f"outage {'seen' if s.noticed else 'unseen'})",
                flush=True,
            )
    goals = targets({f.strategy: f for f in results}, samples)
    print("targets:")
    for goal in goals:
        verdict = "not measured" if goal.met is None else "met" if goal.met else "MISSED"
        print(f"  {goal.text}: {verdict} ({goal.measured})")
    args.out.mkdir(parents=True, exist_ok=True)
    plot_name: str | None = None
    if not args.no_plot:
        plot_name = f"{args.name}.png"
        plot(
            results,
            args.out / plot_name,
            f"pinned-model TTFB, seed {args.seed}, {args.hours:g} simulated hours",
        )
    text = markdown(
        command=command,
        workload=workload,
        scale=args.time_scale,
        results=results,
        samples=samples,
        rewarm_scale=args.rewarm_time_scale,
        rewarm_interval=args.rewarm_interval,
        goals=goals,
        machine=machine,
        plot_name=plot_name,
        stock_daemon=args.stock_daemon,
    )
    (args.out / f"{args.name}.md").write_text(text, encoding="utf-8")
    if args.raw is not None:
        args.raw.write_text(json.dumps(raw, default=list), encoding="utf-8")
    print(f"wrote {args.out / (args.name + '.md')}" + (f" and {plot_name}" if plot_name else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
