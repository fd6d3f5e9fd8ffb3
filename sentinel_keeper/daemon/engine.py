"""What a pass runs with: the policy in force, its Ollama client, its GPU probe and its
reconciler; and the two things the pass worker does with them, a pass and the watch between
passes. A new policy takes effect at the next pass; a pass in flight keeps its own."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sentinel_keeper.act.reconcile import LoadOutcome, OllamaApi, PassReport, Reconciler
from sentinel_keeper.act.state import StateStore
from sentinel_keeper.daemon.progress import Progress
from sentinel_keeper.daemon.watch import Look, WatchMemory, look
from sentinel_keeper.errors import OllamaUnreachable, SentinelError
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.observe.observation import Endpoint, InstalledModel, LoadedModel, ModelDetails
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import Policy
from sentinel_keeper.values.timings import Timings


class TrackedClient:
    """The Ollama client, reporting the start and end of every call to :class:`Progress`
    with the time the call may take (its own httpx timeouts plus a grace)."""

    def __init__(self, inner: OllamaClient, progress: Progress, *, call_grace: float) -> None:
        self.inner = inner
        self._progress = progress
        short = inner.timeout
        self._short_limit = 3 * short + call_grace  # connect + write + read
        self._long_limit = inner.load_timeout + 2 * short + call_grace

    @contextlib.contextmanager
    def _call(self, what: str, model: str | None, limit: float | None) -> Iterator[None]:
        self._progress.begin_call(what, model, limit)
        try:
            yield
        finally:
            self._progress.end_call()

    def version(self) -> str:
        with self._call("GET /api/version", None, self._short_limit):
            return self.inner.version()

    def ps(self) -> tuple[LoadedModel, ...]:
        with self._call("GET /api/ps", None, self._short_limit):
            return self.inner.ps()

    def tags(self) -> tuple[InstalledModel, ...]:
        with self._call("GET /api/tags", None, self._short_limit):
            return self.inner.tags()

    def show(self, model: str) -> ModelDetails:
        with self._call("POST /api/show", model, self._short_limit):
            return self.inner.show(model)

    def load(
        self,
        model: str,
        *,
        options: Mapping[str, int | bool],
        keep_alive: float,
        endpoint: Endpoint = "generate",
    ) -> LoadOutcome:
        with self._call("load", model, self._long_limit):
            return self.inner.load(model, options=options, keep_alive=keep_alive, endpoint=endpoint)

    def unload(self, model: str, *, endpoint: Endpoint = "generate") -> None:
        with self._call("unload", model, self._long_limit):
            self.inner.unload(model, endpoint=endpoint)

    def pull(self, model: str) -> None:
        # A download streams progress for as long as it takes; the client bounds the gap
        # between progress lines, so the watchdog sets no limit of its own.
        with self._call("pull", model, None):
            self.inner.pull(model)


@dataclass(frozen=True)
class Seen:
    """What one look between passes found in /api/ps: the names listed, or why it did not
    answer; ``at`` is time.monotonic() when it answered (what /ready answers from)."""

    at: float
    listed: frozenset[str] | None  # None: no answer
    error: str | None = None
    loaded: tuple[LoadedModel, ...] = ()  # what it listed (the gateway's view)
    when: datetime | None = None  # the wall-clock time of the look


@dataclass(frozen=True)
class Engine:
    policy: Policy
    client: OllamaClient
    gpu: GpuProbe
    reconciler: Reconciler


def _close(thing: OllamaClient | GpuProbe) -> None:
    with contextlib.suppress(Exception):  # closing what may already be broken
        thing.close()


class Engines:
    """The engine of the policy in force. The main thread hands in a new policy; the pass
    worker builds the new engine at its next pass, reusing the client and the GPU probe when
    the policy's settings for them did not change (a reconciler's back-off and caches start
    afresh with a new policy)."""

    def __init__(
        self,
        policy: Policy,
        *,
        progress: Progress,
        timings: Timings,
        state_dir: str | None,
        make_ollama: Callable[[Policy], OllamaClient],
        make_gpu: Callable[[Policy], GpuProbe],
    ) -> None:
        self._progress = progress
        self._timings = timings
        self._state = StateStore(state_dir) if state_dir else None
        self._make_ollama = make_ollama
        self._make_gpu = make_gpu
        self._lock = threading.Lock()
        self._pending: Policy | None = None
        self._current = self._build(policy, None)
        self._last_pass: PassReport | None = None  # the pass worker's own
        self._watch_memory = WatchMemory()  # the pass worker's own, since the last pass

    @property
    def current(self) -> Engine:
        with self._lock:
            return self._current

    def replace(self, policy: Policy) -> None:
        """Run passes with ``policy`` from the next one on."""
        with self._lock:
            self._pending = policy

    def for_pass(self) -> Engine:
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._current = self._build(pending, self._current)
            return self._current

    def run_pass(self, stop: threading.Event) -> PassReport:
        """One pass with the policy in force, its progress tracked (the pass worker's)."""
        engine = self.for_pass()
        self._progress.begin_pass()
        try:
            report = engine.reconciler.run_pass(stop=stop)
        finally:
            self._progress.end_pass()
        self._last_pass = report
        self._watch_memory = WatchMemory()
        return report

    def watch(self) -> tuple[Look, Seen | None]:
        """Between passes, a look at /api/ps (watch.py): why a pass is due now, if one is (a
        pinned model gone, or an Ollama that stopped answering), and what to log; and what
        the look found (None: no look was taken). The pass worker's."""
        last = self._last_pass
        engine = self.current
        idle = Look(None, (), self._watch_memory)
        if (
            last is None
            or not last.reachable  # an outage: the probing after a failed pass handles it
            or engine.policy.interval <= self._timings.watch
        ):
            return idle, None
        try:
            loaded = engine.client.ps()
        except SentinelError as exc:
            reason = exc.reason if isinstance(exc, OllamaUnreachable) else str(exc)
            failed = Seen(time.monotonic(), None, reason)
            return Look(f"ollama: {exc}", (), self._watch_memory), failed
        listed = Seen(
            time.monotonic(),
            frozenset(model.name for model in loaded),
            loaded=loaded,
            when=datetime.now(UTC),
        )
        seen = look(
            last,
            loaded,
            now=time.monotonic(),
            memory=self._watch_memory,
            settle=self._timings.watch_settle,
        )
        self._watch_memory = seen.memory
        return seen, listed

    def close(self) -> None:
        engine = self.current
        _close(engine.client)
        _close(engine.gpu)

    def _build(self, policy: Policy, old: Engine | None) -> Engine:
        ollama = policy.ollama
        client = gpu = None
        if old is not None:
            before = old.policy.ollama
            if (before.url, before.request_timeout, before.load_timeout) == (
                ollama.url,
                ollama.request_timeout,
                ollama.load_timeout,
            ):
                client = old.client
            else:
                _close(old.client)
            if old.policy.vram.gpu_selection == policy.vram.gpu_selection:
                gpu = old.gpu
            else:
                _close(old.gpu)
        client = client or self._make_ollama(policy)
        gpu = gpu or self._make_gpu(policy)
        tracked: OllamaApi = TrackedClient(
            client, self._progress, call_grace=self._timings.call_grace
        )
        reconciler = Reconciler(policy, tracked, gpu=gpu, state=self._state, timings=self._timings)
        return Engine(policy, client, gpu, reconciler)
