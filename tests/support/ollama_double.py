"""A stand-in Ollama server for tests: real HTTP on 127.0.0.1, standard library only.

It follows what Ollama's own source does (server/routes.go, server/sched.go, api/types.go,
envconfig/config.go, llm/llama_server.go at v0.33), including the unpleasant parts: string
keep_alive "-1" is a 400, a request with different load-time options reloads the model and
takes the server default keep_alive, eviction picks the shortest keep_alive duration first
(forever last, but it goes), the 80% rule, embedding-only models refuse /api/generate.

What /api/ps lists while a model loads or reloads (server/sched.go at v0.33, the same since
v0.30.0 made llama-server the only runner for GGML models): PsHandler (server/routes.go) lists
``Scheduler.loadedModels()``, a snapshot of ``s.loaded``. ``Scheduler.load`` puts the new
runner into ``s.loaded`` only after ``llama.Load`` returned, and ``llamaServerRunner.Load``
(llm/llama_server.go) calls ``WaitUntilRunning``: the model is listed only once llama-server
is ready (``loading: true`` then lasts no longer than one status poll). A reload goes through
``processPending``: ``needsReload`` -> the old runner's sessionDuration set to 0 -> once its
requests finish, ``processCompleted`` unloads it and deletes it from ``s.loaded``, then waits
for GPU memory to recover (waitForVRAMRecovery, typically 0.5-1.5 s) -> the load above. So a
model a client reloads with other options is missing from /api/ps from the moment its old
runner is idle until the new one is ready; other models stay listed; the new instance shows
the request's keep_alive (or the default) as ``expires_at`` = now + duration until its first
request ends. Before v0.30 (the CGO runners) ``Load`` returned after placing the layers and
the runner was listed while its weights loaded. The double follows v0.33: an instance enters
``_loaded`` when its load is done, an old one leaves it when it is unloaded.

Importable by tests (``OllamaDouble``), and runnable under a bare ``python3`` as a fake
``ollama serve``::

    python3 tests/support/ollama_double.py --host 127.0.0.1 --port 11434 --models models.json \
        --vram 8589934592 --time-scale 1

Environment variables OLLAMA_KEEP_ALIVE, OLLAMA_NUM_PARALLEL, OLLAMA_MAX_LOADED_MODELS,
OLLAMA_CONTEXT_LENGTH, OLLAMA_MAX_QUEUE and OLLAMA_HOST are honoured the way Ollama reads
them when the matching option is not given.

Time: expiry uses ``clock`` (seconds since the epoch, injectable; ``advance()`` moves it on).
Delays (load time, first token) are real sleeps of ``seconds / time_scale``; with the default
clock, ``time_scale`` also makes the double's clock run that many times faster than real time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, NamedTuple

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

NS_PER_SECOND = 1_000_000_000
FOREVER_NS = 2**63 - 1  # Go's time.Duration(math.MaxInt64), about 292 years
DEFAULT_KEEP_ALIVE_NS = 5 * 60 * NS_PER_SECOND
OLLAMA_VERSION = "0.33.0"

# server/sched.go: ErrMaxQueue (two spaces, as Ollama writes it).
QUEUE_FULL_TEXT = "server busy, please try again.  maximum pending requests exceeded"
# llm/llama_server.go words a crashed load like this; llm/status.go finds "out of memory".
OOM_TEXT = "llama-server process has terminated: cudaMalloc failed: out of memory"
PULL_NOT_FOUND_TEXT = "pull model manifest: file does not exist"

# api/types.go Runner: the options fixed when a model is loaded.
_RUNNER_INT_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "num_thread", "draft_num_predict")
_INT_OPTIONS = (*_RUNNER_INT_OPTIONS, "num_keep", "seed", "num_predict", "top_k", "repeat_last_n")
_FLOAT_OPTIONS = (
    "top_p",
    "min_p",
    "typical_p",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
)
# server/sched.go load(): architectures forced to num_parallel 1.
_NO_PARALLEL_FAMILIES = frozenset(
    {
        "mllama",
        "qwen3vl",
        "qwen3vlmoe",
        "qwen35",
        "qwen35moe",
        "qwen3next",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "nemotron_h_omni",
    }
)
# llm/status.go outOfMemorySubstrings (lower case)
_OOM_NEEDLES = (
    "out of memory",
    "out of device memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
)
_DEFAULT_EMBEDDING_NUM_BATCH = 2048  # llm/llama_server.go
_DEFAULT_MODELS_PER_GPU = 3  # server/sched.go defaultModelsPerGPU

# How long the double waits, at most, for anything (a queued load, a busy model, a hang).
WAIT_LIMIT_SECONDS = 60.0


# --------------------------------------------------------------------------------------------
# keep_alive and Go durations


class DurationError(ValueError):
    """A keep_alive or duration Ollama would refuse; the message is Go's."""


_GO_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
}


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def parse_go_duration(text: str) -> int:
    """Nanoseconds for a Go duration string ("5m", "1h30m", "-1m", "0", ".5s").

    Follows the grammar of Go's time.ParseDuration and its error messages: a number without a
    unit other than "0" is refused ("time: missing unit in duration \\"-1\\"").
    """
    quoted = _go_quote(text)
    s = text
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise DurationError(f"time: invalid duration {quoted}")
    total = 0
    i = 0
    while i < len(s):
        if not (s[i] == "." or _is_digit(s[i])):
            raise DurationError(f"time: invalid duration {quoted}")
        start = i
        while i < len(s) and _is_digit(s[i]):
            i += 1
        whole = s[start:i]
        fraction = ""
        if i < len(s) and s[i] == ".":
            i += 1
            start = i
            while i < len(s) and _is_digit(s[i]):
                i += 1
            fraction = s[start:i]
        if not whole and not fraction:
            raise DurationError(f"time: invalid duration {quoted}")
        start = i
        while i < len(s) and not (s[i] == "." or _is_digit(s[i])):
            i += 1
        unit_text = s[start:i]
        if not unit_text:
            raise DurationError(f"time: missing unit in duration {quoted}")
        unit = _GO_UNITS_NS.get(unit_text)
        if unit is None:
            raise DurationError(f"time: unknown unit {_go_quote(unit_text)} in duration {quoted}")
        value = int(whole or "0")
        if value > 2**63 // unit:
            raise DurationError(f"time: invalid duration {quoted}")
        value *= unit
        if fraction:
            value += int(fraction) * unit // 10 ** len(fraction)
        total += value
        if total > 2**63:
            raise DurationError(f"time: invalid duration {quoted}")
    if negative:
        return -total
    if total > FOREVER_NS:
        raise DurationError(f"time: invalid duration {quoted}")
    return total


def _go_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def parse_keep_alive(value: object) -> int | None:
    """Nanoseconds for a request's keep_alive the way api.Duration.UnmarshalJSON reads it.

    None (absent or JSON null) stays None. A JSON number is seconds, negative means forever.
    A string is a Go duration, negative means forever. Anything else is refused.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError(f"Unsupported type: '{_go_type_name(value)}'")
    if isinstance(value, str):
        ns = parse_go_duration(value)
        return FOREVER_NS if ns < 0 else ns
    if value < 0:
        return FOREVER_NS
    ns_float = float(value) * NS_PER_SECOND
    if not math.isfinite(ns_float) or ns_float >= FOREVER_NS:
        return FOREVER_NS
    return int(ns_float)  # Go's float-to-int conversion truncates


def server_keep_alive(text: str | None) -> int:
    """OLLAMA_KEEP_ALIVE as envconfig.KeepAlive reads it: a Go duration or integer seconds;
    anything unparsable silently means 5m; negative means forever."""
    ns = DEFAULT_KEEP_ALIVE_NS
    text = (text or "").strip().strip("\"'")  # envconfig.Var trims spaces and quotes
    if text:
        try:
            ns = parse_go_duration(text)
        except DurationError:
            if re.fullmatch(r"[+-]?[0-9]+", text):
                ns = int(text) * NS_PER_SECOND
    return FOREVER_NS if ns < 0 else min(ns, FOREVER_NS)


def format_go_time(epoch_seconds: float, tz: tzinfo) -> str:
    """RFC 3339 with nanoseconds, trailing zeros trimmed, as Go's time.Time marshals."""
    whole = math.floor(epoch_seconds)
    nanos = round((epoch_seconds - whole) * NS_PER_SECOND)
    if nanos >= NS_PER_SECOND:
        whole += 1
        nanos -= NS_PER_SECOND
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=whole)
    local = moment.astimezone(tz)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    offset = local.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        return text + "Z"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# --------------------------------------------------------------------------------------------
# names


def display_name(name: str) -> str:
    """Ollama's DisplayShortest: drop the default host and the "library" namespace, always
    show the tag (``llama3.2`` -> ``llama3.2:latest``)."""
    name = name.strip()
    base, slash, last = name.rpartition("/")
    model, colon, tag = last.partition(":")
    if not colon or not tag:
        tag = "latest"
    parts = [*base.split("/"), model] if slash else [model]
    if len(parts) == 3 and parts[0].lower() == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0].lower() == "library":
        parts = parts[1:]
    return "/".join(parts) + ":" + tag


# --------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class FakeModel:
    """An installed model. ``size`` is the file size on disk (what Ollama uses for weights)."""

    name: str
    size: int
    family: str = "llama"  # also the architecture, the prefix of model_info keys
    capabilities: tuple[str, ...] = ("completion",)
    block_count: int = 16
    head_count_kv: int | tuple[int, ...] = 8
    embedding_length: int = 2048
    head_count: int | tuple[int, ...] = 32
    context_length: int = 131072  # trained context length
    key_length: int | None = None
    value_length: int | None = None
    parameter_size: str = "1.2B"
    quantization_level: str = "Q4_K_M"
    digest: str = ""  # default: derived from the name
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Modelfile PARAMETERs (num_ctx, stop...): applied under each request's options."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", display_name(self.name))
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(self.name.encode()).hexdigest())
        object.__setattr__(self, "capabilities", tuple(self.capabilities))

    @property
    def completion(self) -> bool:
        return "completion" in self.capabilities

    def kv_heads(self) -> int:
        """The smallest per-layer KV head count, as Ollama's HeadCountKVMin."""
        h = self.head_count_kv
        value = min(h) if isinstance(h, tuple) else h
        return max(value, 1)

    def max_heads(self) -> int:
        h = self.head_count
        return max(h) if isinstance(h, tuple) else h

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "size": self.size,
            "family": self.family,
            "capabilities": list(self.capabilities),
            "block_count": self.block_count,
            "head_count_kv": list(self.head_count_kv)
            if isinstance(self.head_count_kv, tuple)
            else self.head_count_kv,
            "embedding_length": self.embedding_length,
            "head_count": list(self.head_count)
            if isinstance(self.head_count, tuple)
            else self.head_count,
            "context_length": self.context_length,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
            "digest": self.digest,
            "parameters": dict(self.parameters),
        }
        if self.key_length is not None:
            data["key_length"] = self.key_length
        if self.value_length is not None:
            data["value_length"] = self.value_length
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FakeModel:
        kwargs = dict(data)
        for key in ("capabilities", "head_count_kv", "head_count"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


class ManualClock:
    """A clock that only moves when told to. Seconds since the epoch."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class ScaledClock:
    """Real time running ``scale`` times faster, from now on."""

    def __init__(self, scale: float) -> None:
        self._scale = scale
        self._origin_wall = time.time()
        self._origin_mono = time.monotonic()

    def __call__(self) -> float:
        return self._origin_wall + (time.monotonic() - self._origin_mono) * self._scale


@dataclass(frozen=True)
class RunnerOptions:
    """The load-time options of one request or one loaded instance."""

    num_ctx: int
    num_ctx_auto: bool
    num_batch: int
    num_batch_auto: bool
    num_gpu: int = -1
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int = 0
    draft_num_predict: int = 0


@dataclass
class _Instance:
    model: FakeModel
    options: RunnerOptions  # num_ctx here is the effective (capped) value
    num_parallel: int
    size: int
    size_vram: int
    session_ns: int
    expires_at: float | None = None  # None: never idle yet (Ollama shows now + duration)
    refcount: int = 0
    loaded_at: float = 0.0
    unload_reason: str | None = None  # why it goes, once an unload waits for its requests


@dataclass(frozen=True)
class InstanceInfo:
    """A snapshot of one loaded model, for test assertions."""

    name: str
    size: int
    size_vram: int
    num_ctx: int
    num_ctx_auto: bool
    num_batch: int
    num_parallel: int
    options: RunnerOptions
    keep_alive_ns: int
    expires_at: float | None
    in_use: int

    @property
    def forever(self) -> bool:
        return self.keep_alive_ns >= FOREVER_NS


class RecordedRequest(NamedTuple):
    method: str
    path: str
    body: Any  # parsed JSON, None without a body, the raw text when it was not JSON


class CompletionRecord(NamedTuple):
    """One answered /api/generate or /api/chat request that generated tokens (benchmarks).
    Durations are double seconds: real seconds times ``time_scale``."""

    model: str
    prompt: str  # the prompt (or the last message), cut to 80 characters
    arrived_at: float  # the double's clock when the request arrived
    warm: bool  # loaded, with the request's load-time options, when the request arrived
    wait_seconds: float  # arrival until the model was ready: queueing, evictions, the load
    ttft_seconds: float  # arrival until the first token was written
    tokens: int


class LoadRecord(NamedTuple):
    """One finished load (benchmarks): the model, the double's clock when it was ready, and
    the double seconds the load itself took."""

    model: str
    at: float
    seconds: float


class UnloadRecord(NamedTuple):
    """One model leaving memory (benchmarks): when (the double's clock) and why: "expired"
    (its keep_alive ran out), "keep_alive 0", "evicted" (room for another model), "reload"
    (a request with other load-time options), "restart", "removed"."""

    model: str
    at: float
    reason: str


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Aborted(Exception):
    """The client went away (or the server stopped) while its request waited."""


class _Use:
    """One request's use of a loaded instance, released exactly once: before the last bytes
    of the answer go out, so a client holding its answer sees the countdown running."""

    def __init__(self, double: OllamaDouble, inst: _Instance) -> None:
        self._double = double
        self._inst: _Instance | None = inst

    def release(self) -> None:
        inst, self._inst = self._inst, None
        if inst is not None:
            self._double.release(inst)


# --------------------------------------------------------------------------------------------
# the double


class OllamaDouble:
    """A fake Ollama server. See the module docstring; every knob is a plain attribute."""

    def __init__(
        self,
        models: Iterable[FakeModel] = (),
        *,
        vram_total: int = 8 * GiB,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_alive: str | int | float | None = None,
        num_parallel: int = 1,
        max_loaded_models: int = 0,
        context_length: int = 0,
        max_queue: int = 512,
        load_seconds: float = 0.0,
        load_seconds_per_gib: float = 0.0,
        first_token_seconds: float = 0.0,
        token_seconds: float = 0.0,
        reply_tokens: tuple[str, ...] = ("Hello", ",", " world"),
        clock: Callable[[], float] | None = None,
        time_scale: float = 1.0,
        tz: tzinfo | None = None,
        version: str = OLLAMA_VERSION,
        pullable: Iterable[FakeModel] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.vram_total = vram_total
        self.vram_used_elsewhere = 0  # bytes other processes hold on the GPU
        if keep_alive is None:
            self.default_keep_alive_ns = DEFAULT_KEEP_ALIVE_NS
        elif isinstance(keep_alive, str):
            self.default_keep_alive_ns = server_keep_alive(keep_alive)
        else:
            self.default_keep_alive_ns = server_keep_alive(str(int(keep_alive)))
        self.num_parallel = num_parallel
        self.max_loaded_models = max_loaded_models  # 0: 3 per GPU, as Ollama
        self.context_length = context_length  # OLLAMA_CONTEXT_LENGTH; 0: by VRAM tier
        self.max_queue = max_queue
        self.load_seconds = load_seconds
        self.load_seconds_per_gib = load_seconds_per_gib
        self.unload_seconds = 0.0
        self.first_token_seconds = first_token_seconds
        self.token_seconds = token_seconds
        self.reply_tokens = reply_tokens
        self.time_scale = time_scale
        self.tz: tzinfo = tz if tz is not None else datetime.now().astimezone().tzinfo or UTC
        self.version = version
        self._clock: Callable[[], float] = (
            clock
            if clock is not None
            else (ScaledClock(time_scale) if time_scale != 1 else time.time)
        )
        self._offset = 0.0

        # fault knobs
        self.hang_paths: set[str] = set()  # "*" hangs every path
        self.error_paths: dict[str, tuple[int, str]] = {}  # path -> (status, error text)
        self.raw_paths: dict[str, bytes] = {}  # path -> 200 body sent as-is (bad JSON, shapes)
        self.missing_paths: set[str] = set()  # gin's plain "404 page not found" (old servers)
        self.load_failures: dict[str, str] = {}  # model name -> 500 text on every load
        self.oom_unless_alone: set[str] = set()  # these fail with OOM while others are loaded
        self.pull_error: str | None = None
        self.hang_limit = WAIT_LIMIT_SECONDS

        self._models: dict[str, FakeModel] = {}
        for m in models:
            self._models[m.name.lower()] = m
        self._pullable: dict[str, FakeModel] = {m.name.lower(): m for m in pullable}
        self._loaded: dict[str, _Instance] = {}
        self._lock = threading.Condition(threading.RLock())
        self._load_lock = threading.Lock()
        self._waiting_loads = 0
        self._epoch = 0
        self._requests: list[RecordedRequest] = []
        self.tokens_generated = 0
        self.embeddings_computed = 0
        self.load_count = 0
        self.aborted_loads = 0
        self.blobs: dict[str, int] = {}  # "sha256:<hex>" -> size, as POST /api/blobs made them
        self.evictions: list[str] = []  # names, in eviction order (reloads included)
        self.completions: list[CompletionRecord] = []  # requests that generated tokens
        self.load_log: list[LoadRecord] = []  # every finished load, in order
        self.restart_log: list[float] = []  # the double's clock when it served again
        self.unload_log: list[UnloadRecord] = []  # every model leaving memory, in order

        self._server: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> OllamaDouble:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.double = self
        server.stop_event = self._stop_event
        self._server = server
        self.port = server.server_address[1]
        self._serve_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._serve_thread.start()
        self._reaper = threading.Thread(
            target=self._reap_loop, args=(self._stop_event,), daemon=True
        )
        self._reaper.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection. Idempotent."""
        self._stop_event.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in (self._serve_thread, self._reaper):
            if t is not None:
                t.join(timeout=2.0)
        self._serve_thread = self._reaper = None
        with self._lock:
            self._lock.notify_all()

    # The endpoints whose requests go through Scheduler.GetRunner (server/routes.go).
    SCHEDULED_PATHS = ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings")

    def hang_scheduler(self, hung: bool = True) -> None:
        """Ollama's scheduler hang (ollama issue 17408: a reload with other options meeting
        requests in flight): every request that needs a runner waits in the pending queue
        and gets no answer, while /api/ps, /api/tags and /api/version, which do not go
        through the scheduler, keep answering. ``False`` ends it (as a restart would)."""
        if hung:
            self.hang_paths |= set(self.SCHEDULED_PATHS)
        else:
            self.hang_paths -= set(self.SCHEDULED_PATHS)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Like an upgrade: every model unloaded, connections dropped, the port refuses
        connections for ``down_seconds`` (real time), then the same port serves again."""
        self.stop()
        with self._lock:
            self._epoch += 1
            for inst in self._loaded.values():
                self._note_unload_locked(inst, "restart")
            self._loaded.clear()
            self._lock.notify_all()
        if down_seconds > 0:
            time.sleep(down_seconds)
        self._stop_event = threading.Event()
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self.start()
                with self._lock:
                    self.restart_log.append(self.now())
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def __enter__(self) -> OllamaDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test helpers --------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the double's clock on; models whose keep_alive ran out are unloaded."""
        with self._lock:
            self._offset += seconds
            self._reap_locked()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def loaded(self) -> list[InstanceInfo]:
        with self._lock:
            self._reap_locked()
            return [self._info(i) for i in self._loaded.values()]

    def instance(self, name: str) -> InstanceInfo | None:
        with self._lock:
            self._reap_locked()
            inst = self._loaded.get(display_name(name).lower())
            return None if inst is None else self._info(inst)

    def add_model(self, model: FakeModel) -> None:
        with self._lock:
            self._models[model.name.lower()] = model

    def remove_model(self, name: str) -> None:
        """Like ``ollama rm``: uninstalled (a loaded instance is unloaded too)."""
        key = display_name(name).lower()
        with self._lock:
            self._models.pop(key, None)
            gone = self._loaded.pop(key, None)
            if gone is not None:
                self._note_unload_locked(gone, "removed")
            self._lock.notify_all()

    def installed(self) -> list[FakeModel]:
        with self._lock:
            return list(self._models.values())

    def default_num_ctx(self) -> int:
        """The num_ctx a request without one gets (OLLAMA_CONTEXT_LENGTH, else VRAM tier)."""
        if self.context_length > 0:
            return self.context_length
        if self.vram_total >= 47 * GiB:
            return 262144
        if self.vram_total >= 23 * GiB:
            return 32768
        return 4096

    def predict(self, name: str, options: Mapping[str, Any] | None = None) -> int:
        """The bytes Ollama predicts a load of ``name`` with ``options`` takes (file size +
        KV cache + batch surcharge), against the VRAM free right now."""
        with self._lock:
            model = self._models[display_name(name).lower()]
            opts = self._runner_options(model, dict(options or {}))
            return self._plan(model, opts)[0]

    # -- internals: state ----------------------------------------------------------------

    def _info(self, inst: _Instance) -> InstanceInfo:
        return InstanceInfo(
            name=inst.model.name,
            size=inst.size,
            size_vram=inst.size_vram,
            num_ctx=inst.options.num_ctx,
            num_ctx_auto=inst.options.num_ctx_auto,
            num_batch=inst.options.num_batch,
            num_parallel=inst.num_parallel,
            options=inst.options,
            keep_alive_ns=inst.session_ns,
            expires_at=inst.expires_at,
            in_use=inst.refcount,
        )

    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(method, path, body))

    def _reap_locked(self) -> None:
        now = self.now()
        for key, inst in list(self._loaded.items()):
            if inst.refcount <= 0 and inst.expires_at is not None and inst.expires_at <= now:
                del self._loaded[key]
                self._note_unload_locked(inst, inst.unload_reason or "expired")
                self._lock.notify_all()

    def _note_unload_locked(self, inst: _Instance, reason: str) -> None:
        self.unload_log.append(UnloadRecord(inst.model.name, self.now(), reason))

    def _reap_loop(self, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            with self._lock:
                self._reap_locked()

    def _sleep(self, seconds: float, alive: Callable[[], bool], stop: threading.Event) -> None:
        """Sleep ``seconds`` of double time, raising _Aborted if the client leaves."""
        deadline = time.monotonic() + seconds / self.time_scale
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if stop.wait(min(remaining, 0.01)) or not alive():
                raise _Aborted

    def _free_vram(self) -> int:
        used = sum(i.size_vram for i in self._loaded.values())
        return max(0, self.vram_total - self.vram_used_elsewhere - used)

    def _max_loaded(self) -> int:
        """OLLAMA_MAX_LOADED_MODELS, else Ollama's default. server/sched.go since v0.12.7:
        ``defaultModelsPerGPU * max(len(gpus), 1)``, 3 per GPU and 3 with none; before it, 3
        per GPU too (a CPU-only server counted one device: 3), except 1 per GPU where a GPU
        reports its free memory unreliably. The double has one GPU (or none, ``vram_total``
        0): 3 either way, and every loaded model counts, whoever loaded it."""
        return self.max_loaded_models if self.max_loaded_models > 0 else _DEFAULT_MODELS_PER_GPU

    def _parallel_for(self, model: FakeModel) -> int:
        if not model.completion or model.family in _NO_PARALLEL_FAMILIES:
            return 1
        return max(self.num_parallel, 1)

    def _runner_options(self, model: FakeModel, request_opts: dict[str, Any]) -> RunnerOptions:
        """api.Options from defaults, the model's PARAMETERs, then the request (modelOptions)."""
        merged: dict[str, Any] = {}
        for source in (model.parameters, request_opts):
            for key, value in source.items():
                if value is None:
                    continue
                if key in _INT_OPTIONS or key == "main_gpu":
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise _HTTPError(500, f'option "{key}" must be of type integer')
                    merged[key] = int(value)
                elif key == "use_mmap":
                    if not isinstance(value, bool):
                        raise _HTTPError(500, f'option "{key}" must be of type boolean')
                    merged[key] = value
                elif key in _FLOAT_OPTIONS:
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise _HTTPError(500, f'option "{key}" must be of type float32')
                elif key == "stop" and not isinstance(value, list):
                    raise _HTTPError(500, f'option "{key}" must be of type array')
        given = set(model.parameters) | set(request_opts)
        num_ctx_auto = "num_ctx" not in given and self.context_length == 0
        num_ctx = merged.get("num_ctx", self.default_num_ctx())
        num_ctx = max(num_ctx, 4)  # sched.go getRunner
        num_batch = merged.get("num_batch", 512)
        num_batch_auto = "num_batch" not in given
        if not model.completion and num_batch_auto:
            # embedding models: llama-server's embedding batch default, not "automatic"
            num_batch = min(_DEFAULT_EMBEDDING_NUM_BATCH, num_ctx)
            num_batch_auto = False
        return RunnerOptions(
            num_ctx=num_ctx,
            num_ctx_auto=num_ctx_auto,
            num_batch=num_batch,
            num_batch_auto=num_batch_auto,
            num_gpu=merged.get("num_gpu", -1),
            main_gpu=merged.get("main_gpu"),
            use_mmap=merged.get("use_mmap"),
            num_thread=merged.get("num_thread", 0),
            draft_num_predict=merged.get("draft_num_predict", 0),
        )

    @staticmethod
    def _effective_ctx(num_ctx: int, model: FakeModel) -> int:
        train = model.context_length
        return train if 0 < train < num_ctx else num_ctx

    def _needs_reload(self, inst: _Instance, req: RunnerOptions) -> bool:
        """sched.go needsReload: compare the Runner options, auto against auto matches."""
        have = inst.options
        new_ctx = self._effective_ctx(req.num_ctx, inst.model)
        if have.num_ctx_auto and req.num_ctx_auto:
            new_ctx = have.num_ctx
        new_batch = req.num_batch
        if have.num_batch_auto and req.num_batch_auto:
            new_batch = have.num_batch
        have_gpu, new_gpu = have.num_gpu, req.num_gpu
        if new_gpu < 0:
            have_gpu = new_gpu = -1
        return (have.num_ctx, have.num_batch, have_gpu, have.main_gpu, have.use_mmap) != (
            new_ctx,
            new_batch,
            new_gpu,
            req.main_gpu,
            req.use_mmap,
        ) or (have.num_thread, have.draft_num_predict) != (req.num_thread, req.draft_num_predict)

    def _plan(self, model: FakeModel, opts: RunnerOptions) -> tuple[int, RunnerOptions, int]:
        """(predicted bytes for load, options as loaded, num_parallel), as sched.go load()."""
        parallel = self._parallel_for(model)
        ctx = self._effective_ctx(opts.num_ctx, model)
        ctx_total = ctx * parallel
        head_dim = model.embedding_length // model.max_heads() if model.max_heads() > 0 else 0
        kv = 2 * model.block_count * model.kv_heads() * head_dim * ctx_total * 2
        predicted = model.size + kv
        batch = opts.num_batch
        if model.completion and opts.num_batch_auto:
            batch = _automatic_batch(ctx_total, predicted, self._free_vram())
        surcharge = _batch_surcharge(batch) if model.completion else 0
        return predicted + surcharge, replace(opts, num_ctx=ctx, num_batch=batch), parallel

    def _pick_victim_locked(self) -> _Instance | None:
        """findRunnerToUnload: sort by keep_alive duration (shortest first; forever last),
        then by model file path; the first idle one, else the first."""
        runners = sorted(self._loaded.values(), key=lambda i: (i.session_ns, _model_path(i.model)))
        for inst in runners:
            if inst.refcount == 0:
                return inst
        return runners[0] if runners else None

    def _unload_and_wait(
        self, inst: _Instance, stop: threading.Event, epoch: int, reason: str = "evicted"
    ) -> None:
        """Expire ``inst`` now if idle, else as soon as its requests finish; wait for it."""
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        with self._lock:
            inst.session_ns = 0
            inst.unload_reason = reason
            self.evictions.append(inst.model.name)
            key = inst.model.name.lower()
            while self._loaded.get(key) is inst:
                if inst.refcount <= 0:
                    del self._loaded[key]
                    self._note_unload_locked(inst, reason)
                    self._lock.notify_all()
                    break
                if stop.is_set() or epoch != self._epoch or time.monotonic() > deadline:
                    raise _Aborted
                self._lock.wait(0.02)
        if self.unload_seconds > 0:
            time.sleep(self.unload_seconds / self.time_scale)

    def acquire(
        self,
        model: FakeModel,
        request_opts: dict[str, Any],
        keep_alive_ns: int | None,
        alive: Callable[[], bool],
        stop: threading.Event,
    ) -> tuple[_Instance, float]:
        """getRunner + processPending + load: the instance to use (its use count taken) and
        the seconds until it was ready (0 when it was already loaded). Like Ollama's
        ``load_duration`` (checkpointLoaded - checkpointStart in server/routes.go), that
        includes the wait behind another request's load of the same model."""
        entered = time.monotonic()
        opts = self._runner_options(model, request_opts)
        key = model.name.lower()
        with self._lock:
            self._reap_locked()
            epoch = self._epoch
            inst = self._loaded.get(key)
            if inst is not None and not self._needs_reload(inst, opts):
                self._use_locked(inst, keep_alive_ns)
                return inst, 0.0
            if self._waiting_loads >= self.max_queue and self._load_lock.locked():
                raise _HTTPError(503, QUEUE_FULL_TEXT)
            self._waiting_loads += 1
        try:
            deadline = time.monotonic() + WAIT_LIMIT_SECONDS
            while not self._load_lock.acquire(timeout=0.01):
                if stop.is_set() or not alive() or time.monotonic() > deadline:
                    raise _Aborted
        finally:
            with self._lock:
                self._waiting_loads -= 1
        try:
            inst, _ = self._schedule(
                model, opts, keep_alive_ns=keep_alive_ns, alive=alive, stop=stop, epoch=epoch
            )
        finally:
            self._load_lock.release()
        return inst, time.monotonic() - entered

    def _use_locked(self, inst: _Instance, keep_alive_ns: int | None) -> None:
        """useLoadedRunner: take a use; an explicit keep_alive replaces the duration, an
        omitted one keeps it. The countdown restarts when the request ends."""
        inst.refcount += 1
        if keep_alive_ns is not None:
            inst.session_ns = keep_alive_ns
            if keep_alive_ns > 0:
                inst.unload_reason = None

    def release(self, inst: _Instance) -> None:
        """The request finished: start (or restart) the countdown; duration 0 unloads."""
        with self._lock:
            inst.refcount -= 1
            if inst.refcount > 0:
                return
            key = inst.model.name.lower()
            if inst.session_ns <= 0:
                if self._loaded.get(key) is inst:
                    del self._loaded[key]
                    self._note_unload_locked(inst, inst.unload_reason or "keep_alive 0")
                self._lock.notify_all()
                return
            inst.expires_at = self.now() + min(inst.session_ns, FOREVER_NS) / NS_PER_SECOND

    def _schedule(
        self,
        model: FakeModel,
        opts: RunnerOptions,
        *,
        keep_alive_ns: int | None,
        alive: Callable[[], bool],
        stop: threading.Event,
        epoch: int,
    ) -> tuple[_Instance, float]:
        """processPending for one request, holding the load lock: reuse, evict, or load."""
        key = model.name.lower()
        oom_retry_done = False
        for _ in range(64):  # each pass unloads one model or loads; bounded
            with self._lock:
                if epoch != self._epoch:
                    raise _Aborted
                self._reap_locked()
                inst = self._loaded.get(key)
                if inst is not None and not self._needs_reload(inst, opts):
                    self._use_locked(inst, keep_alive_ns)
                    return inst, 0.0
                victim = inst if inst is not None else self._victim_for_locked(model, opts)
                others = bool(self._loaded)
            if victim is not None:
                why = "reload" if victim is inst else "evicted"
                self._unload_and_wait(victim, stop, epoch, why)
                continue
            started = time.monotonic()
            with self._lock:
                predicted = self._plan(model, opts)[0]
            try:
                self._sleep(
                    self.load_seconds + self.load_seconds_per_gib * predicted / GiB, alive, stop
                )
            except _Aborted:
                with self._lock:
                    self.aborted_loads += 1
                raise
            failure = self.load_failures.get(key)
            if failure is None and others and key in self.oom_unless_alone:
                failure = OOM_TEXT
            if failure is not None:
                if oom_retry_done or not _is_oom(failure):
                    raise _HTTPError(500, failure)
                # sched.go load(): after an OOM, lower an automatic num_ctx and evict every
                # other model, then retry once.
                oom_retry_done = True
                if opts.num_ctx_auto:
                    lower = _next_lower_ctx(self._effective_ctx(opts.num_ctx, model))
                    if lower is not None:
                        opts = replace(opts, num_ctx=lower)
                with self._lock:
                    everyone_else = [i for k, i in self._loaded.items() if k != key]
                for other in everyone_else:
                    self._unload_and_wait(other, stop, epoch)
                continue
            with self._lock:
                if epoch != self._epoch:
                    raise _Aborted
                # listed in /api/ps from now on, not while it loaded (see the module docstring)
                inst = self._new_instance_locked(model, opts, keep_alive_ns)
                took = time.monotonic() - started
                self.load_log.append(LoadRecord(model.name, self.now(), took * self.time_scale))
            return inst, took
        raise _HTTPError(500, "double: scheduling did not converge")

    def _victim_for_locked(self, model: FakeModel, opts: RunnerOptions) -> _Instance | None:
        """Which model must go before ``model`` can load, if any (max loaded, 80% rule)."""
        if not self._loaded:
            return None  # a model alone always loads (spilling to CPU if it must)
        if len(self._loaded) >= self._max_loaded():
            return self._pick_victim_locked()
        if opts.num_gpu == 0 or self.vram_total <= 0 or self._partial(model, opts):
            return None
        predicted = self._plan(model, opts)[0]
        if predicted > self._free_vram() * 80 // 100:
            return self._pick_victim_locked()
        return None

    @staticmethod
    def _partial(model: FakeModel, opts: RunnerOptions) -> bool:
        """An explicit num_gpu below the layer count: partial offload, no 80% check."""
        return 0 < opts.num_gpu < model.block_count + 1

    def _new_instance_locked(
        self, model: FakeModel, opts: RunnerOptions, keep_alive_ns: int | None
    ) -> _Instance:
        predicted, load_opts, parallel = self._plan(model, opts)
        free = self._free_vram()
        if opts.num_gpu == 0 or self.vram_total <= 0:
            vram = 0
        elif self._partial(model, opts):
            vram = min(predicted * opts.num_gpu // (model.block_count + 1), free)
        else:
            vram = min(predicted, free)
        inst = _Instance(
            model=model,
            options=load_opts,
            num_parallel=parallel,
            size=predicted,
            size_vram=vram,
            session_ns=self.default_keep_alive_ns if keep_alive_ns is None else keep_alive_ns,
            loaded_at=self.now(),
            refcount=1,
        )
        self._loaded[model.name.lower()] = inst
        self.load_count += 1
        self._lock.notify_all()
        return inst

    def is_warm(self, model: FakeModel, request_opts: Mapping[str, Any]) -> bool:
        """Is ``model`` loaded now with load-time options that ``request_opts`` match (a
        request with them would need no load)?"""
        with self._lock:
            self._reap_locked()
            inst = self._loaded.get(model.name.lower())
            if inst is None:
                return False
            try:
                opts = self._runner_options(model, dict(request_opts))
            except _HTTPError:
                return False
            return not self._needs_reload(inst, opts)

    def note_completion(self, record: CompletionRecord) -> None:
        with self._lock:
            self.completions.append(record)

    def expire(self, model: FakeModel) -> None:
        """expireRunner: keep_alive 0 with no prompt."""
        with self._lock:
            inst = self._loaded.get(model.name.lower())
            if inst is None:
                return
            inst.expires_at = self.now()
            inst.session_ns = 0
            inst.unload_reason = "keep_alive 0"
            if inst.refcount <= 0:
                del self._loaded[model.name.lower()]
                self._note_unload_locked(inst, "keep_alive 0")
                self._lock.notify_all()

    def lookup(self, name: str) -> FakeModel | None:
        with self._lock:
            return self._models.get(display_name(name).lower())

    def ps_body(self) -> dict[str, Any]:
        with self._lock:
            self._reap_locked()
            now = self.now()
            rows: list[tuple[float, dict[str, Any]]] = []
            for inst in self._loaded.values():
                expires = inst.expires_at
                if expires is None:
                    expires = now + min(inst.session_ns, FOREVER_NS) / NS_PER_SECOND
                m = inst.model
                rows.append(
                    (
                        expires,
                        {
                            "name": m.name,
                            "model": m.name,
                            "size": inst.size,
                            "digest": m.digest,
                            "details": _details(m),
                            "expires_at": format_go_time(expires, self.tz),
                            "size_vram": inst.size_vram,
                            "context_length": inst.options.num_ctx,
                        },
                    )
                )
        rows.sort(key=lambda r: -math.floor(r[0]))  # by Unix seconds, latest first, stable
        return {"models": [r[1] for r in rows]}

    def tags_body(self) -> dict[str, Any]:
        with self._lock:
            models = list(self._models.values())
        stamp = format_go_time(self.now(), self.tz)
        return {
            "models": [
                {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": stamp,
                    "size": m.size,
                    "digest": m.digest,
                    "details": _details(m),
                    "capabilities": list(m.capabilities),
                }
                for m in models
            ]
        }

    def show_body(self, m: FakeModel) -> dict[str, Any]:
        arch = m.family
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.parameter_count": max(m.size * 2, 1),
            f"{arch}.context_length": m.context_length,
            f"{arch}.block_count": m.block_count,
            f"{arch}.embedding_length": m.embedding_length,
            f"{arch}.attention.head_count": list(m.head_count)
            if isinstance(m.head_count, tuple)
            else m.head_count,
            f"{arch}.attention.head_count_kv": list(m.head_count_kv)
            if isinstance(m.head_count_kv, tuple)
            else m.head_count_kv,
        }
        if m.key_length is not None:
            info[f"{arch}.attention.key_length"] = m.key_length
        if m.value_length is not None:
            info[f"{arch}.attention.value_length"] = m.value_length
        lines = []
        for key, value in m.parameters.items():
            for v in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {json.dumps(v)}")
        body: dict[str, Any] = {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {m.name}\n',
            "template": "{{ .Prompt }}",
            "details": _details(m),
            "model_info": info,
            "capabilities": list(m.capabilities),
            "modified_at": format_go_time(self.now(), self.tz),
        }
        if lines:
            body["parameters"] = "\n".join(lines)
        return body

    def pull(self, name: str) -> str | None:
        """None when the model is (now) installed, else the error text."""
        if self.pull_error is not None:
            return self.pull_error
        with self._lock:
            key = display_name(name).lower()
            if key in self._models:
                return None
            found = self._pullable.get(key)
            if found is None:
                return PULL_NOT_FOUND_TEXT
            self._models[key] = found
            return None

    def add_tokens(self, n: int) -> None:
        with self._lock:
            self.tokens_generated += n

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def fault_for(self, mapping: Mapping[str, Any], path: str) -> Any:
        if path in mapping:
            return mapping[path]
        return mapping.get("*")


def _model_path(m: FakeModel) -> str:
    """Ollama breaks keep_alive ties by model file path: the blob named by its digest."""
    return f"/usr/share/ollama/.ollama/models/blobs/sha256-{m.digest}"


def _details(m: FakeModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": m.family,
        "families": [m.family],
        "parameter_size": m.parameter_size,
        "quantization_level": m.quantization_level,
    }


def _is_oom(text: str) -> bool:
    low = text.lower()
    return any(n in low for n in _OOM_NEEDLES)


def _next_lower_ctx(num_ctx: int) -> int | None:
    if num_ctx > 32768:
        return 32768
    if num_ctx > 4096:
        return 4096
    return None


def _batch_surcharge(batch: int) -> int:
    if batch >= 2048:
        return 2 * GiB
    if batch >= 1024:
        return 768 * MiB
    return 0


def _automatic_batch(ctx_total: int, predicted: int, available: int) -> int:
    """sched.go automaticGenerationBatch (flash attention assumed on)."""
    batch = 2048 if ctx_total > 32768 else 1024 if ctx_total > 4096 else 512

    def fits(b: int) -> bool:
        if predicted == 0 or available == 0:
            return True
        threshold = available * 80 // 100
        if predicted > threshold:
            return False
        headroom = 60 if b >= 2048 else 75 if b >= 1024 else 100
        if predicted > available * headroom // 100:
            return False
        return _batch_surcharge(b) <= threshold - predicted

    while batch > 512 and not fits(batch):
        batch = 1024 if batch > 1024 else 512
    return batch


# --------------------------------------------------------------------------------------------
# HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Go's listener takes the system's somaxconn (4096 on current kernels): a burst of new
    # connections (a proxy opening one per stream) waits in the backlog, as with Ollama,
    # instead of overflowing socketserver's default of 5
    request_queue_size = socket.SOMAXCONN
    double: OllamaDouble
    stop_event: threading.Event


def _now_utc_text(double: OllamaDouble) -> str:
    return format_go_time(double.now(), UTC)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-double"
    sys_version = ""
    timeout = 30.0  # idle keep-alive connections are closed after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes: without this, Nagle plus delayed ACKs
        # stall every keep-alive answer by ~40 ms
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double.track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.double.track(self.connection, add=False)

    # -- plumbing ------------------------------------------------------------------------

    @property
    def double(self) -> OllamaDouble:
        return self.server.double

    @property
    def stop(self) -> threading.Event:
        return self.server.stop_event

    def _alive(self) -> bool:
        """False once the client closed its side of the connection."""
        if self.stop.is_set():
            return False
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
            return peeked != b""
        except (OSError, ValueError):
            return False

    def _send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        self._send_bytes(status, body, "application/json; charset=utf-8")

    def _send_error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _stream_line(self, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(length) if length > 0 else b""

    # -- dispatch ------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        raw = self._read_body() if self.command in ("POST", "DELETE", "PUT") else b""
        body: Any = None
        parsed: Any = None
        bad_json: str | None = None
        if raw:
            try:
                parsed = json.loads(raw)
                body = parsed
            except (ValueError, UnicodeDecodeError) as exc:
                body = raw.decode("utf-8", "replace")
                bad_json = _go_json_error(raw, exc)
        d = self.double
        d._record(self.command, path, body)
        if d.fault_for({p: True for p in d.hang_paths}, path):
            self.stop.wait(d.hang_limit)
            self.close_connection = True
            return
        fault = d.fault_for(d.error_paths, path)
        if fault is not None:
            self._send_error(fault[0], fault[1])
            return
        raw_fault = d.fault_for(d.raw_paths, path)
        if raw_fault is not None:
            self._send_bytes(200, raw_fault, "application/json; charset=utf-8")
            return
        routes: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = {
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
            ("GET", "/api/version"): self._version,
            ("HEAD", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("HEAD", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/generate"): self._generate,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/embed"): self._embed,
            ("POST", "/api/embeddings"): self._embeddings,
            ("POST", "/api/pull"): self._pull,
        }
        if path.startswith("/api/blobs/") and self.command in ("HEAD", "POST"):
            self._blob(path.removeprefix("/api/blobs/"), raw)
            return
        if path in self.OPENAI_ROUTES and self.command == "POST":
            try:
                self.OPENAI_ROUTES[path](self, parsed, bad_json)
            except _HTTPError as exc:
                self._send_json(exc.status, _openai_error(exc.message))
            except (_Aborted, BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return
        handler = routes.get((self.command, path))
        if handler is None or path in d.missing_paths:
            self._send_bytes(404, b"404 page not found", "text/plain")
            return
        req: dict[str, Any] = {}
        if self.command == "POST":
            if not raw:
                self._send_error(400, "missing request body")
                return
            if bad_json is not None:
                self._send_error(400, bad_json)
                return
            if not isinstance(parsed, dict):
                self._send_error(400, f"json: cannot unmarshal {_json_kind(parsed)} into Go value")
                return
            req = parsed
        try:
            handler(req)
        except _HTTPError as exc:
            self._send_error(exc.status, exc.message)
        except _Aborted:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- endpoints -----------------------------------------------------------------------

    def _blob(self, digest: str, raw: bytes) -> None:
        """server/routes.go HeadBlobHandler and CreateBlobHandler: HEAD 200 or 404 (no
        body), POST stores the body when its sha256 is the digest (201, no body)."""
        d = self.double
        if not re.fullmatch(r"sha256[:-][0-9a-f]{64}", digest):
            self._send_error(400, "invalid digest format")
            return
        digest = "sha256:" + digest[7:]
        if self.command == "HEAD":
            with d._lock:
                known = digest in d.blobs
            self._send_bytes(200 if known else 404, b"", "text/plain")
            return
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if got != digest:
            self._send_error(
                400, f"digest mismatch, expected {_go_quote(digest)}, got {_go_quote(got)}"
            )
            return
        with d._lock:
            d.blobs[digest] = len(raw)
        self._send_bytes(201, b"", "text/plain")

    def _openai_chat(self, parsed: Any, bad_json: str | None) -> None:
        """openai/openai.go ChatMiddleware: the request becomes an /api/chat one (no
        keep_alive, no num_ctx: the server's defaults), the answer a chat.completion, or
        chat.completion.chunk events (server-sent) ending with ``data: [DONE]``."""
        req = self._openai_request(parsed, bad_json)
        if not isinstance(req.get("messages"), list) or not req["messages"]:
            raise _HTTPError(400, "[] is too short - 'messages'")
        name = req["model"]
        d = self.double
        model = d.lookup(name)
        if model is None:
            raise _HTTPError(404, f"model {_go_quote(name)} not found, try pulling it first")
        options: dict[str, Any] = {}
        if isinstance(req.get("max_tokens"), int):
            options["num_predict"] = req["max_tokens"]
        inst, _ = d.acquire(model, options, None, self._alive, self.stop)
        use = _Use(d, inst)
        created = int(d.now())
        ident = f"chatcmpl-{created % 1000}"
        try:
            stream = req.get("stream") is True
            head = {
                "id": ident,
                "created": created,
                "model": name,
                "system_fingerprint": "fp_ollama",
            }
            if stream:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
            text = []
            tokens = list(d.reply_tokens)
            limit = options.get("num_predict")
            if isinstance(limit, int) and limit >= 0:
                tokens = tokens[:limit]
            for i, token in enumerate(tokens):
                d._sleep(
                    d.first_token_seconds if i == 0 else d.token_seconds, self._alive, self.stop
                )
                d.add_tokens(1)
                text.append(token)
                if stream:
                    delta = {"role": "assistant", "content": token}
                    self._sse(
                        {
                            **head,
                            "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                        }
                    )
            use.release()
            if stream:
                last = {"role": "assistant", "content": ""}
                self._sse(
                    {
                        **head,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": last, "finish_reason": "stop"}],
                    }
                )
                self._stream_raw(b"data: [DONE]\n\n")
                self._end_stream()
                return
            self._send_json(
                200,
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(text)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 1,
                        "completion_tokens": len(tokens),
                        "total_tokens": len(tokens) + 1,
                    },
                },
            )
        finally:
            use.release()

    def _openai_embeddings(self, parsed: Any, bad_json: str | None) -> None:
        """openai/openai.go EmbeddingsMiddleware: an /api/embed request, a list answer."""
        req = self._openai_request(parsed, bad_json)
        raw_input = req.get("input")
        inputs = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(inputs, list) or not inputs:
            raise _HTTPError(400, "invalid input")
        d = self.double
        model = d.lookup(req["model"])
        if model is None:
            raise _HTTPError(
                404, f"model {_go_quote(req['model'])} not found, try pulling it first"
            )
        inst, _ = d.acquire(model, {}, None, self._alive, self.stop)
        use = _Use(d, inst)
        try:
            with d._lock:
                d.embeddings_computed += len(inputs)
            use.release()
            data = [
                {"object": "embedding", "embedding": [0.125] * 8, "index": i}
                for i in range(len(inputs))
            ]
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": req["model"],
                    "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                },
            )
        finally:
            use.release()

    def _openai_request(self, parsed: Any, bad_json: str | None) -> dict[str, Any]:
        if bad_json is not None or not isinstance(parsed, dict):
            raise _HTTPError(400, bad_json or "invalid request")
        if not isinstance(parsed.get("model"), str) or not parsed["model"]:
            raise _HTTPError(400, "model is required")
        return parsed

    def _sse(self, obj: Any) -> None:
        self._stream_raw(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

    def _stream_raw(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    OPENAI_ROUTES: ClassVar[dict[str, Callable[[_Handler, Any, str | None], None]]] = {
        "/v1/chat/completions": _openai_chat,
        "/v1/embeddings": _openai_embeddings,
    }

    def _root(self, _req: dict[str, Any]) -> None:
        self._send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _version(self, _req: dict[str, Any]) -> None:
        self._send_json(200, {"version": self.double.version})

    def _tags(self, _req: dict[str, Any]) -> None:
        self._send_json(200, self.double.tags_body())

    def _ps(self, _req: dict[str, Any]) -> None:
        self._send_json(200, self.double.ps_body())

    def _show(self, req: dict[str, Any]) -> None:
        name = _str_field(req, "model", "ShowRequest") or _str_field(req, "name", "ShowRequest")
        if not name:
            raise _HTTPError(400, "model is required")
        shown = display_name(name)
        m = self.double.lookup(shown)
        if m is None:
            raise _HTTPError(404, f"model '{shown}' not found")
        self._send_json(200, self.double.show_body(m))

    def _pull(self, req: dict[str, Any]) -> None:
        name = _str_field(req, "model", "PullRequest") or _str_field(req, "name", "PullRequest")
        if not name:
            raise _HTTPError(400, "invalid model name")
        error = self.double.pull(name)
        if req.get("stream") is False:
            if error is not None:
                raise _HTTPError(500, error)
            self._send_json(200, {"status": "success"})
            return
        self._start_stream()
        self._stream_line({"status": "pulling manifest"})
        if error is not None:
            self._stream_line({"error": error})
        else:
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                self._stream_line({"status": status})
        self._end_stream()

    def _common(self, req: dict[str, Any], kind: str) -> tuple[str, FakeModel | None, int | None]:
        model_name = _str_field(req, "model", kind)
        try:
            keep_alive = parse_keep_alive(req.get("keep_alive"))
        except DurationError as exc:
            raise _HTTPError(400, str(exc)) from None
        options = req.get("options")
        if options is not None and not isinstance(options, dict):
            raise _HTTPError(
                400,
                f"json: cannot unmarshal {_json_kind(options)} into Go struct field "
                f"{kind}.options of type map[string]interface {{}}",
            )
        if not model_name:
            raise _HTTPError(400, "model is required")
        return model_name, self.double.lookup(model_name), keep_alive

    def _generate(self, req: dict[str, Any]) -> None:
        self._completion(req, chat=False)

    def _chat(self, req: dict[str, Any]) -> None:
        self._completion(req, chat=True)

    def _completion(self, req: dict[str, Any], *, chat: bool) -> None:
        kind = "ChatRequest" if chat else "GenerateRequest"
        name, model, keep_alive = self._common(req, kind)
        if chat:
            messages = req.get("messages")
            if messages is not None and not isinstance(messages, list):
                raise _HTTPError(
                    400,
                    f"json: cannot unmarshal {_json_kind(messages)} into Go struct field "
                    "ChatRequest.messages of type []api.Message",
                )
            empty = not messages
        else:
            prompt = _str_field(req, "prompt", kind)
            empty = prompt == ""
        if model is None:
            raise _HTTPError(404, f"model '{name}' not found")
        d = self.double
        if empty and keep_alive == 0:
            d.expire(model)
            self._send_json(200, self._final(name, chat, "unload", None))
            return
        if not model.completion:
            what = "chat" if chat else "generate"
            raise _HTTPError(400, f"{_go_quote(name)} does not support {what}")
        options = dict(req.get("options") or {})
        started = time.monotonic()
        arrival = _Arrival(d.now(), d.is_warm(model, options), started, started)
        inst, load_seconds = d.acquire(model, options, keep_alive, self._alive, self.stop)
        arrival = arrival._replace(ready=time.monotonic())
        use = _Use(d, inst)
        try:
            if empty:
                use.release()
                self._send_json(200, self._final(name, chat, "load", None))
                return
            self._generate_tokens(
                req,
                name,
                use,
                chat=chat,
                options=options,
                started=started,
                load_seconds=load_seconds,
                arrival=arrival,
            )
        finally:
            use.release()

    def _final(
        self, name: str, chat: bool, reason: str, extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": name, "created_at": _now_utc_text(self.double)}
        if chat:
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        body["done"] = True
        body["done_reason"] = reason
        if extra:
            body.update(extra)
        return body

    def _generate_tokens(
        self,
        req: dict[str, Any],
        name: str,
        use: _Use,
        *,
        chat: bool,
        options: dict[str, Any],
        started: float,
        load_seconds: float,
        arrival: _Arrival | None = None,
    ) -> None:
        d = self.double
        tokens = list(d.reply_tokens)
        limit = options.get("num_predict")
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit >= 0:
            tokens = tokens[: int(limit)]
        stream = req.get("stream") is not False
        if stream:
            self._start_stream()
        text = []
        first_token_at: float | None = None
        for i, token in enumerate(tokens):
            d._sleep(d.first_token_seconds if i == 0 else d.token_seconds, self._alive, self.stop)
            d.add_tokens(1)
            if i == 0:
                first_token_at = time.monotonic()
            text.append(token)
            if stream:
                piece: dict[str, Any] = {"model": name, "created_at": _now_utc_text(d)}
                if chat:
                    piece["message"] = {"role": "assistant", "content": token}
                else:
                    piece["response"] = token
                piece["done"] = False
                self._stream_line(piece)
        finished = time.monotonic()
        metrics = {
            "total_duration": int((finished - started) * NS_PER_SECOND),
            "load_duration": int(load_seconds * NS_PER_SECOND),
            "prompt_eval_count": 1,
            "eval_count": len(tokens),
        }
        if first_token_at is not None:
            # the first token's delay stands for the prompt's evaluation; decoding is the rest,
            # counting one token interval for the first token itself
            ready = arrival.ready if arrival is not None else started + load_seconds
            metrics["prompt_eval_duration"] = int(max(first_token_at - ready, 0) * NS_PER_SECOND)
            decoding = finished - first_token_at + d.token_seconds / d.time_scale
            metrics["eval_duration"] = int(decoding * NS_PER_SECOND)
        final = self._final(name, chat, "stop", metrics)
        if arrival is not None and tokens:
            d.note_completion(
                CompletionRecord(
                    model=name,
                    prompt=_prompt_text(req, chat)[:80],
                    arrived_at=arrival.at,
                    warm=arrival.warm,
                    wait_seconds=(arrival.ready - arrival.started) * d.time_scale,
                    ttft_seconds=((first_token_at or arrival.ready) - arrival.started)
                    * d.time_scale,
                    tokens=len(tokens),
                )
            )
        use.release()
        if stream:
            self._stream_line(final)
            self._end_stream()
        else:
            if chat:
                final["message"]["content"] = "".join(text)
            else:
                final["response"] = "".join(text)
            self._send_json(200, final)

    def _embed(self, req: dict[str, Any]) -> None:
        name, model, keep_alive = self._common(req, "EmbedRequest")
        raw_input = req.get("input")
        inputs: list[str] = []
        if isinstance(raw_input, str):
            if raw_input:
                inputs.append(raw_input)
        elif isinstance(raw_input, list):
            for item in raw_input:
                if not isinstance(item, str):
                    raise _HTTPError(400, "invalid input type")
                inputs.append(item)
        elif raw_input is not None:
            raise _HTTPError(400, "invalid input type")
        if model is None:
            raise _HTTPError(404, f"model {_go_quote(name)} not found, try pulling it first")
        d = self.double
        options = dict(req.get("options") or {})
        inst, load_seconds = d.acquire(model, options, keep_alive, self._alive, self.stop)
        use = _Use(d, inst)
        try:
            if not inputs:
                use.release()
                self._send_json(200, {"model": name, "embeddings": []})
                return
            dim = max(1, min(model.embedding_length, 64))
            vectors = [[round(1.0 / math.sqrt(dim), 6)] * dim for _ in inputs]
            with d._lock:
                d.embeddings_computed += len(inputs)
            use.release()
            self._send_json(
                200,
                {
                    "model": name,
                    "embeddings": vectors,
                    "load_duration": int(load_seconds * NS_PER_SECOND),
                    "prompt_eval_count": len(inputs),
                },
            )
        finally:
            use.release()

    def _embeddings(self, req: dict[str, Any]) -> None:
        name, model, keep_alive = self._common(req, "EmbeddingRequest")
        if model is None:
            raise _HTTPError(404, f"model {_go_quote(name)} not found, try pulling it first")
        d = self.double
        options = dict(req.get("options") or {})
        inst, _ = d.acquire(model, options, keep_alive, self._alive, self.stop)
        use = _Use(d, inst)
        try:
            use_prompt = _str_field(req, "prompt", "EmbeddingRequest")
            use.release()
            if not use_prompt:
                self._send_json(200, {"embedding": []})
                return
            with d._lock:
                d.embeddings_computed += 1
            self._send_json(200, {"embedding": [0.125] * 8})
        finally:
            use.release()


class _Arrival(NamedTuple):
    at: float  # the double's clock
    warm: bool
    started: float  # time.monotonic() at arrival
    ready: float  # time.monotonic() when the model was ready to answer


def _prompt_text(req: Mapping[str, Any], chat: bool) -> str:
    if not chat:
        prompt = req.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    messages = req.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        return content if isinstance(content, str) else ""
    return ""


def _openai_error(message: str) -> dict[str, Any]:
    """openai/openai.go NewError: the OpenAI shape of an error."""
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _str_field(req: Mapping[str, Any], key: str, kind: str) -> str:
    value = req.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _HTTPError(
            400,
            f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
            f"{kind}.{key} of type string",
        )
    return value


def _go_json_error(raw: bytes, exc: Exception) -> str:
    text = raw.decode("utf-8", "replace")
    pos = getattr(exc, "pos", None)
    if isinstance(pos, int) and pos < len(text) and not text[pos].isspace():
        return f"invalid character {text[pos]!r} looking for beginning of value"
    return "unexpected EOF"


# --------------------------------------------------------------------------------------------
# command line: a fake `ollama serve`


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def _host_port_from_env() -> tuple[str, int]:
    """OLLAMA_HOST: host, host:port, or scheme://host:port; default 127.0.0.1:11434."""
    raw = os.environ.get("OLLAMA_HOST", "").strip()
    if "://" in raw:
        raw = raw.split("://", 1)[1]
    raw = raw.rstrip("/")
    host, _, port = raw.rpartition(":") if ":" in raw else (raw, "", "")
    try:
        return host or "127.0.0.1", int(port) if port else 11434
    except ValueError:
        return host or "127.0.0.1", 11434


class ModelsFileError(ValueError):
    """A models file the double cannot use: the message names the file, the entry and the
    field."""


# The fields of a models file entry, with the JSON types each takes (see README, "Trying it
# without Ollama or a GPU").
_MODEL_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "size": (int, str),
    "family": (str,),
    "capabilities": (list,),
    "block_count": (int,),
    "head_count_kv": (int, list),
    "embedding_length": (int,),
    "head_count": (int, list),
    "context_length": (int,),
    "key_length": (int,),
    "value_length": (int,),
    "parameter_size": (str,),
    "quantization_level": (str,),
    "digest": (str,),
    "parameters": (dict,),
}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024 * GiB,
}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def _size_bytes(value: int | str, where: str) -> int:
    """A model's size: bytes, or a string with a unit (``"1.3GB"``, ``"770MiB"``)."""
    if isinstance(value, bool):
        raise ModelsFileError(f"{where}: size must be a number of bytes, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.fullmatch(value)
        unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise ModelsFileError(
                f'{where}: size must be bytes or a size such as "1.3GB" or "770MiB", got {value!r}'
            )
        number = int(float(match.group(1)) * unit)
    if number <= 0:
        raise ModelsFileError(f"{where}: size must be more than 0 bytes, got {value!r}")
    return number


def parse_models(data: Any, source: str = "<models>") -> list[FakeModel]:
    """The models of a models file's JSON: a list of entries, or ``{"models": [...]}``.
    ModelsFileError names the entry and the field of anything wrong."""
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ModelsFileError(
            f'{source}: expected a list of models, or {{"models": [...]}}, got {_json_kind(data)}'
        )
    models: list[FakeModel] = []
    for index, item in enumerate(items):
        where = f"{source}: models[{index}]"
        if not isinstance(item, dict):
            raise ModelsFileError(f"{where}: expected an object, got {_json_kind(item)}")
        unknown = sorted(set(item) - set(_MODEL_FIELDS))
        if unknown:
            raise ModelsFileError(
                f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_MODEL_FIELDS)})"
            )
        for key in ("name", "size"):
            if key not in item:
                what = (
                    'its name, such as "llama3.2:1b"'
                    if key == "name"
                    else (
                        'its file size: bytes, or a size such as "1.3GB" (what `ollama list` shows)'
                    )
                )
                raise ModelsFileError(f"{where}: {key!r} is required: {what}")
        for key, value in item.items():
            allowed = _MODEL_FIELDS[key]
            if isinstance(value, bool) or not isinstance(value, allowed):
                kinds = " or ".join(_json_kind(t()) for t in allowed)
                raise ModelsFileError(
                    f"{where}: {key!r} must be {kinds}, got {_json_kind(value)} {value!r}"
                )
        entry = dict(item, size=_size_bytes(item["size"], f"{where}"))
        try:
            models.append(FakeModel.from_json(entry))
        except (TypeError, ValueError) as exc:
            raise ModelsFileError(f"{where}: {exc}") from None
    names = [m.name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ModelsFileError(f"{source}: {repeated[0]} is listed twice")
    return models


def load_models_file(path: str) -> list[FakeModel]:
    """A models file (JSON). ModelsFileError says what is wrong, and where."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ModelsFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelsFileError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    return parse_models(data, path)


def main(argv: list[str] | None = None) -> int:
    env_host, env_port = _host_port_from_env()
    p = argparse.ArgumentParser(description="A fake Ollama server (standard library only).")
    p.add_argument("--host", default=env_host)
    p.add_argument("--port", type=int, default=env_port)
    p.add_argument("--models", help="JSON file: a list of models, or {models: [...]}")
    p.add_argument("--pullable", help="JSON file of models /api/pull may install")
    p.add_argument("--vram", type=int, default=8 * GiB, help="GPU memory in bytes")
    p.add_argument("--time-scale", type=float, default=1.0, help="double seconds per real second")
    p.add_argument("--keep-alive", default=os.environ.get("OLLAMA_KEEP_ALIVE"))
    p.add_argument("--num-parallel", type=int, default=_env_int("OLLAMA_NUM_PARALLEL", 1))
    p.add_argument("--max-loaded-models", type=int, default=_env_int("OLLAMA_MAX_LOADED_MODELS", 0))
    p.add_argument("--context-length", type=int, default=_env_int("OLLAMA_CONTEXT_LENGTH", 0))
    p.add_argument("--max-queue", type=int, default=_env_int("OLLAMA_MAX_QUEUE", 512))
    p.add_argument("--load-seconds", type=float, default=0.5)
    p.add_argument("--load-seconds-per-gib", type=float, default=0.5)
    p.add_argument("--first-token-seconds", type=float, default=0.05)
    p.add_argument("--token-seconds", type=float, default=0.01)
    p.add_argument(
        "--reply-tokens",
        type=int,
        default=0,
        help="tokens of each answer (0: three); with --token-seconds, how long a stream lasts",
    )
    p.add_argument("--version", default=OLLAMA_VERSION)
    args = p.parse_args(argv)
    try:
        models = load_models_file(args.models) if args.models else []
        pullable = load_models_file(args.pullable) if args.pullable else []
    except ModelsFileError as exc:
        print(f"ollama double: {exc}", file=sys.stderr)
        return 2

    double = OllamaDouble(
        models,
        pullable=pullable,
        vram_total=args.vram,
        host=args.host,
        port=args.port,
        keep_alive=args.keep_alive,
        num_parallel=args.num_parallel,
        max_loaded_models=args.max_loaded_models,
        context_length=args.context_length,
        max_queue=args.max_queue,
        load_seconds=args.load_seconds,
        load_seconds_per_gib=args.load_seconds_per_gib,
        first_token_seconds=args.first_token_seconds,
        token_seconds=args.token_seconds,
        time_scale=args.time_scale,
        version=args.version,
    )
    if args.reply_tokens > 0:
        double.reply_tokens = tuple(f" t{i}" for i in range(args.reply_tokens))
    done = threading.Event()

    def _on_signal(_signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        double.start()
    except OSError as exc:
        print(
            f"ollama double: cannot listen on {double.host}:{double.port}: "
            f"{exc.strerror or exc} (--port, or OLLAMA_HOST)",
            file=sys.stderr,
        )
        return 1
    names = ", ".join(m.name for m in models) or "none"
    print(
        f"Listening on {double.host}:{double.port} (version {double.version}); models: {names}",
        flush=True,
    )
    while not done.wait(1.0):
        pass
    double.stop()
    return 0


def iter_ndjson(body: bytes) -> Iterator[Any]:
    """Parse an NDJSON body (test helper)."""
    for line in body.splitlines():
        if line.strip():
            yield json.loads(line)


if __name__ == "__main__":
    sys.exit(main())
