"""`sentinel-keeper run`: the long-running daemon under systemd.

Threads and who owns what:

- The main thread owns signals, sd_notify and logging of pass results. It sleeps in
  ``select()`` on a self-pipe that signal handlers (through ``signal.set_wakeup_fd``) and the
  worker write to, and wakes at least every half second to ping the watchdog, extend the
  start timeout, keep STATUS current and notice a stuck pass.
- Passes run on daemon threads started by APScheduler (one at a time, missed runs coalesced,
  a small jitter). A load can block in HTTP for minutes; the main thread never waits for it,
  and at SIGTERM the process exits without joining it: the kernel closes the socket, which
  makes Ollama abandon the load.
- A :class:`Progress` record, updated by the pass through a wrapper around the Ollama client,
  tells the main thread whether the pass is still within its own time limits. When it is not
  (a call stuck past its timeout), the watchdog pings stop and systemd restarts the service.

Only the CLI chooses exit codes: :func:`run_daemon` returns 0 after a clean stop, raises
PolicyError for an invalid policy at start, and re-raises a pass's unexpected exception after
several passes in a row crashed.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from sentinel_keeper import __version__
from sentinel_keeper.errors import PolicyError, SentinelError
from sentinel_keeper.events import History, LogEvent, advance, pass_events
from sentinel_keeper.gpu import GpuProbe
from sentinel_keeper.logs import LEVEL_NUMBERS
from sentinel_keeper.notify import Notifier
from sentinel_keeper.observation import Endpoint, InstalledModel, LoadedModel, ModelDetails
from sentinel_keeper.ollama import OllamaClient
from sentinel_keeper.plan import FindingKind
from sentinel_keeper.policy import SETTLE_SECONDS, Policy, file_risks, load_policy
from sentinel_keeper.reconcile import LoadOutcome, OllamaApi, PassReport, Reconciler
from sentinel_keeper.report import status_line
from sentinel_keeper.runtime import make_client
from sentinel_keeper.state import StateStore
from sentinel_keeper.units import format_duration
from sentinel_keeper.watch import gone_pinned

JOB_ID = "reconcile"
TICK_SECONDS = 0.5  # the main loop wakes at least this often
# While Ollama is unreachable, probe it after these delays (doubling), at most PROBE_MAX apart,
# so the pinned models are back about a second after Ollama answers again.
PROBE_FIRST_SECONDS = 0.25
PROBE_MAX_SECONDS = 1.0
JITTER_FRACTION = 0.05  # of the interval, at most JITTER_MAX_SECONDS
JITTER_MAX_SECONDS = 1.0
# The start may take as long as pinned models need to load; systemd is told in steps.
EXTEND_EVERY_SECONDS = 5.0
EXTEND_BY_SECONDS = 30.0
# A call may take its own timeouts plus this before the pass counts as stuck.
CALL_GRACE_SECONDS = 1.0
# Between calls a pass plans, reads NVML and writes its state file: this long at most.
BETWEEN_CALLS_SECONDS = 10.0
# Without a pass for interval + this, the scheduler is taken to have stalled.
IDLE_GRACE_SECONDS = 30.0
CRASHES_BEFORE_EXIT = 3
# Between passes, /api/ps this often (see watch.py): a restart of Ollama, an eviction or a
# client's unload of a pinned model is seen within seconds, not at the next interval.
WATCH_SECONDS = 2.0
WATCH_JOB_ID = "watch"

log = structlog.get_logger("sentinel_keeper.daemon")


# --- progress: is the pass within its own limits? ------------------------------------------


@dataclass(frozen=True)
class Stuck:
    """What has run past its limit."""

    what: str
    seconds: float
    limit: float

    def describe(self) -> str:
        return (
            f"{self.what} running for {self.seconds:.0f} s, "
            f"past its {format_duration(self.limit)} limit"
        )


@dataclass(frozen=True)
class _Step:
    what: str
    model: str | None
    started: float
    limit: float | None  # None: no limit known (a pull streams for as long as it downloads)


class Progress:
    """The pass's progress, written by the worker, read by the main thread."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._step: _Step | None = None
        self._running = False
        self._last_end = monotonic()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    def begin_pass(self) -> None:
        with self._lock:
            self._running = True
            self._step = _Step("pass", None, self._monotonic(), BETWEEN_CALLS_SECONDS)

    def end_pass(self) -> None:
        with self._lock:
            self._running = False
            self._step = None
            self._last_end = self._monotonic()

    def begin_call(self, what: str, model: str | None, limit: float | None) -> None:
        with self._lock:
            self._step = _Step(what, model, self._monotonic(), limit)

    def end_call(self) -> None:
        with self._lock:
            if self._running:
                self._step = _Step("pass", None, self._monotonic(), BETWEEN_CALLS_SECONDS)

    def stuck(self, idle_limit: float) -> Stuck | None:
        """What is past its limit now, if anything; idle too long counts (the scheduler
        stopped running passes)."""
        now = self._monotonic()
        with self._lock:
            if not self._running:
                idle = now - self._last_end
                return Stuck("no pass started", idle, idle_limit) if idle > idle_limit else None
            step = self._step
        if step is None or step.limit is None:
            return None
        seconds = now - step.started
        if seconds <= step.limit:
            return None
        what = step.what if step.model is None else f"{step.what} of {step.model}"
        return Stuck(what, seconds, step.limit)

    def loading(self) -> tuple[str, float] | None:
        """The model being loaded and for how long, if a load is under way."""
        with self._lock:
            step = self._step
        if step is None or step.model is None or step.what not in ("load", "pull"):
            return None
        return step.model, self._monotonic() - step.started


class TrackedClient:
    """The Ollama client, reporting the start and end of every call to :class:`Progress`
    with the time the call may take (its own httpx timeouts plus a grace)."""

    def __init__(self, inner: OllamaClient, progress: Progress) -> None:
        self.inner = inner
        self._progress = progress
        short = inner.timeout
        self._short_limit = 3 * short + CALL_GRACE_SECONDS  # connect + write + read
        self._long_limit = inner.load_timeout + 2 * short + CALL_GRACE_SECONDS

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


# --- running jobs on daemon threads ---------------------------------------------------------


class DaemonThreadExecutor(BaseExecutor):  # type: ignore[misc]
    """APScheduler executor that runs each job on a fresh daemon thread. The default thread
    pool's threads are joined at interpreter exit, so a load stuck in HTTP would hold up the
    process after SIGTERM; a daemon thread is simply abandoned."""

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        def work() -> None:
            try:
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
            except BaseException as exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, events)

        threading.Thread(target=work, name="sentinel-pass", daemon=True).start()


# --- the daemon -----------------------------------------------------------------------------


def _jitter(interval: float) -> float:
    return min(interval * JITTER_FRACTION, JITTER_MAX_SECONDS)


def _trigger(interval: float) -> IntervalTrigger:
    return IntervalTrigger(seconds=interval, jitter=_jitter(interval), timezone=UTC)


def unreachable_reason(error: str | None, url: str) -> str:
    """The part of an OllamaUnreachable message after "ollama at URL is unreachable: "."""
    text = error or "no answer"
    prefix = f"ollama at {url} is unreachable: "
    return text[len(prefix) :] if text.startswith(prefix) else text


@dataclass
class _Engine:
    """What a pass runs with: one policy's reconciler and the edges it owns."""

    policy: Policy
    client: OllamaClient
    gpu: GpuProbe
    reconciler: Reconciler

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        with contextlib.suppress(Exception):
            self.gpu.close()


class Daemon:
    def __init__(
        self,
        policy_path: str,
        policy: Policy,
        *,
        state_dir: str | None,
        notifier: Notifier | None = None,
        make_ollama: Callable[[Policy], OllamaClient] = make_client,
        make_gpu: Callable[[Policy], GpuProbe] | None = None,
    ) -> None:
        self.policy_path = policy_path
        self.policy = policy  # the policy in force, as the main thread knows it
        self.notifier = notifier if notifier is not None else Notifier()
        self._make_ollama = make_ollama
        self._make_gpu = make_gpu or (lambda p: GpuProbe(p.vram.gpu_indices))
        self._state = StateStore(state_dir) if state_dir else None
        self.progress = Progress()
        self._stop = threading.Event()
        self._rerun = threading.Event()
        self._pass_lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._pending: Policy | None = None
        self._engine = self._build_engine(policy, None)
        self._results: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._probe_delay = PROBE_FIRST_SECONDS
        self._scheduler: BackgroundScheduler | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # signal flags, set by handlers only
        self._stop_signal: int | None = None
        self._hup = False
        # main-thread state
        self._started = time.monotonic()
        self._history = History()
        self._last: PassReport | None = None
        self._ready_sent = False
        self._outage_since: float | None = None
        self._rejected: str | None = None
        self._stuck: Stuck | None = None
        self._last_ping = float("-inf")
        self._last_extend = float("-inf")
        self._rerun_asked: float | None = None
        self._crashes = 0
        self._crash: BaseException | None = None

    # -- engines (worker side) -------------------------------------------------------------

    def _build_engine(self, policy: Policy, old: _Engine | None) -> _Engine:
        same_ollama = old is not None and (
            old.policy.ollama.url,
            old.policy.ollama.request_timeout,
            old.policy.ollama.load_timeout,
        ) == (policy.ollama.url, policy.ollama.request_timeout, policy.ollama.load_timeout)
        client = old.client if old is not None and same_ollama else self._make_ollama(policy)
        same_gpu = old is not None and old.policy.vram.gpu_indices == policy.vram.gpu_indices
        gpu = old.gpu if old is not None and same_gpu else self._make_gpu(policy)
        if old is not None:
            if client is not old.client:
                with contextlib.suppress(Exception):
                    old.client.close()
            if gpu is not old.gpu:
                with contextlib.suppress(Exception):
                    old.gpu.close()
        tracked: OllamaApi = TrackedClient(client, self.progress)
        reconciler = Reconciler(policy, tracked, gpu=gpu, state=self._state)
        return _Engine(policy, client, gpu, reconciler)

    def _engine_for_pass(self) -> _Engine:
        with self._engine_lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self._engine = self._build_engine(pending, self._engine)
            return self._engine

    def _job(self) -> None:
        """One scheduled run: a pass, and more at once while a re-run was asked for."""
        if not self._pass_lock.acquire(blocking=False):
            self._rerun.set()
            return
        try:
            while not self._stop.is_set():
                self._rerun.clear()
                engine = self._engine_for_pass()
                self.progress.begin_pass()
                try:
                    report = engine.reconciler.run_pass(stop=self._stop)
                except Exception as exc:
                    self._post("crash", exc)
                    report = None
                finally:
                    self.progress.end_pass()
                if report is not None:
                    self._post("report", report)
                    self._after_pass(report, engine.policy)
                if not self._rerun.is_set():
                    break
        finally:
            self._pass_lock.release()

    def _watch(self) -> None:
        """Between passes, a look at /api/ps (watch.py); a pinned model gone, or an Ollama
        that stopped answering, asks the main loop for a pass now."""
        last = self._last
        if (
            self._stop.is_set()
            or self.progress.running
            or self._rerun.is_set()
            or last is None
            or not last.reachable  # an outage: the probing after a failed pass handles it
            or self.policy.interval <= WATCH_SECONDS
        ):
            return
        with self._engine_lock:
            client = self._engine.client
        try:
            loaded = client.ps()
        except SentinelError as exc:
            self._post("watch", f"ollama: {exc}")
            return
        gone = gone_pinned(last, loaded)
        if gone:
            self._post("watch", f"pinned model gone: {', '.join(gone)}")

    def _after_pass(self, report: PassReport, policy: Policy) -> None:
        """While Ollama is unreachable, probe again soon (capped back-off). So too when it went
        away during the pass (a restart in the middle of a load): the next interval may be
        minutes away."""
        if report.reachable and not any(o.ollama_gone for o in report.outcomes):
            self._probe_delay = PROBE_FIRST_SECONDS
            return
        delay = min(self._probe_delay, PROBE_MAX_SECONDS, policy.interval)
        self._probe_delay = min(self._probe_delay * 2, PROBE_MAX_SECONDS)
        self._run_at(datetime.now(UTC) + timedelta(seconds=delay))

    def _run_at(self, when: datetime) -> None:
        scheduler = self._scheduler
        if scheduler is None or self._stop.is_set():
            return
        with contextlib.suppress(Exception):  # the scheduler may be shutting down
            scheduler.modify_job(JOB_ID, next_run_time=when)

    def _post(self, kind: str, item: object) -> None:
        self._results.put((kind, item))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"r")

    # -- signals (handlers only set flags) ------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._hup = True

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        previous_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        handlers = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: self._on_hup,
        }
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.set_wakeup_fd(previous_fd)

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> int:
        with self._signals():
            self._start()
            try:
                while self._stop_signal is None and self._crash is None:
                    self._wait(self._tick_seconds())
                    if self._stop_signal is not None:
                        break
                    if self._hup:
                        self._hup = False
                        self._reload()
                    self._drain()
                    self._tick()
            finally:
                self._shutdown()
        if self._crash is not None:
            raise self._crash
        return 0

    def _tick_seconds(self) -> float:
        period = self.notifier.watchdog_interval
        return TICK_SECONDS if period is None else min(TICK_SECONDS, period / 4)

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([self._wake_r], [], [], timeout)
            if readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    while self._wake_r.recv(4096):
                        pass

    def _start(self) -> None:
        policy = self.policy
        self._event(
            LogEvent(
                "starting",
                "info",
                {
                    "version": __version__,
                    "policy": self.policy_path,
                    "pinned": len(policy.pinned),
                    "extras": len(policy.extras),
                    "interval": format_duration(policy.interval),
                    "ready": policy.ready,
                    "ollama": policy.ollama.url,
                    "watchdog": (
                        format_duration(self.notifier.watchdog_interval * 2)
                        if self.notifier.watchdog_interval
                        else "off"
                    ),
                },
            )
        )
        self._file_risks()
        self.notifier.status(f"starting: first pass against ollama at {policy.ollama.url}")
        scheduler = BackgroundScheduler(
            executors={"default": DaemonThreadExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
            daemon=True,
        )
        scheduler.add_job(
            self._job,
            trigger=_trigger(policy.interval),
            id=JOB_ID,
            name="reconcile pass",
            next_run_time=datetime.now(UTC),
        )
        scheduler.add_job(
            self._watch,
            trigger=IntervalTrigger(seconds=WATCH_SECONDS, timezone=UTC),
            id=WATCH_JOB_ID,
            name="watch between passes",
        )
        self._scheduler = scheduler
        scheduler.start()

    def _shutdown(self) -> None:
        signum = self._stop_signal
        name = signal.Signals(signum).name if signum is not None else "crash"
        running = self.progress.running
        self.notifier.stopping("stopping" + (" (abandoning a load)" if running else ""))
        self._stop.set()
        self._event(LogEvent("stopping", "info", {"signal": name, "pass_running": running}))
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            with contextlib.suppress(Exception):
                scheduler.shutdown(wait=False)
        if not running:
            # A pass stuck in a call keeps its client; the process exit closes the socket.
            self._engine.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- results from the worker ------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                kind, item = self._results.get_nowait()
            except queue.Empty:
                return
            if kind == "report":
                self._crashes = 0
                self._on_report(item)
            elif kind == "watch":
                log.debug("pass_requested", why=item)
                self._request_pass()
            else:
                self._on_crash(item)

    def _on_crash(self, exc: BaseException) -> None:
        self._crashes += 1
        log.error(
            "pass_crashed",
            error=f"{type(exc).__name__}: {exc}",
            in_a_row=self._crashes,
            exc_info=exc,
        )
        if self._crashes >= CRASHES_BEFORE_EXIT:
            self._crash = exc

    def _on_report(self, report: PassReport) -> None:
        for event in pass_events(self._history, report):
            self._event(event)
        self._history = advance(self._history, report)
        self._last = report
        if report.reachable:
            self._outage_since = None
        elif self._outage_since is None:
            self._outage_since = time.monotonic() - report.seconds
        if not self._ready_sent:
            self._maybe_ready(report)

    def _hopeless(self, report: PassReport) -> set[str]:
        """Pinned models no pass can make resident: not installed and not to be pulled."""
        return {
            f.model
            for f in report.plan.findings
            if f.kind is FindingKind.NOT_INSTALLED and f.model in report.pinned
        }

    def _maybe_ready(self, report: PassReport) -> None:
        if self.policy.ready == "started":
            self._send_ready("started")
            return
        if not report.reachable:
            return
        missing = set(report.pinned_missing)
        if not missing:
            self._send_ready("pinned resident")
        elif missing <= self._hopeless(report):
            self._send_ready("pinned models not installed", level="warning")

    def _send_ready(self, why: str, *, level: str = "info") -> None:
        self._ready_sent = True
        self.notifier.ready(self._status_text())
        fields: dict[str, object] = {
            "why": why,
            "after": round(time.monotonic() - self._started, 3),
        }
        if self._last is not None and self._last.reachable and self._last.pinned_missing:
            fields["missing"] = list(self._last.pinned_missing)
        self._event(LogEvent("ready", "warning" if level == "warning" else "info", fields))

    # -- reload --------------------------------------------------------------------------------

    def _reload(self) -> None:
        announce = self._ready_sent  # no RELOADING during the start: systemd is not ready yet
        if announce:
            self.notifier.reloading(f"reloading {self.policy_path}")
        try:
            policy = load_policy(self.policy_path, settle=SETTLE_SECONDS, empty_ok=False)
        except (SentinelError, OSError) as exc:
            self._reject(exc)
        else:
            self._accept(policy)
        if announce:
            self.notifier.ready(self._status_text())

    def _reject(self, exc: BaseException) -> None:
        diagnostics = [str(d) for d in exc.diagnostics] if isinstance(exc, PolicyError) else []
        lines = diagnostics or [str(exc)]
        count = len(lines)
        self._rejected = (
            f"policy rejected ({count} error{'s' if count != 1 else ''}, see the journal), "
            "running the previous one"
        )
        self._event(
            LogEvent(
                "policy_rejected",
                "error",
                {"path": self.policy_path, "errors": count, "keeping": "the previous policy"},
            )
        )
        for line in lines:
            self._event(LogEvent("policy_error", "error", {"error": line}))

    def _accept(self, policy: Policy) -> None:
        old = self.policy
        self.policy = policy
        self._rejected = None
        with self._engine_lock:
            self._pending = policy
        if policy.interval != old.interval and self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.reschedule_job(JOB_ID, trigger=_trigger(policy.interval))
        self._event(
            LogEvent(
                "policy_reloaded",
                "info",
                {
                    "path": self.policy_path,
                    "pinned": len(policy.pinned),
                    "extras": len(policy.extras),
                    "interval": format_duration(policy.interval),
                    "changed": policy != old,
                },
            )
        )
        self._file_risks()
        self._request_pass()

    def _file_risks(self) -> None:
        """Warn when others than root can change the policy: it decides what Ollama loads and,
        through apply-override, Ollama's environment."""
        for risk in file_risks(self.policy_path):
            self._event(
                LogEvent(
                    "policy_writable", "warning", {"path": self.policy_path, "risk": risk.message}
                )
            )

    def _request_pass(self) -> None:
        self._rerun.set()
        self._rerun_asked = time.monotonic()
        if not self.progress.running:
            self._run_at(datetime.now(UTC))

    # -- periodic duties -----------------------------------------------------------------------

    def _idle_limit(self) -> float:
        interval = self.policy.interval
        return interval + _jitter(interval) + max(IDLE_GRACE_SECONDS, interval)

    def _tick(self) -> None:
        now = time.monotonic()
        stuck = self.progress.stuck(self._idle_limit())
        if stuck is not None and self._stuck is None:
            self._event(
                LogEvent(
                    "pass_stuck",
                    "error",
                    {
                        "what": stuck.what,
                        "seconds": round(stuck.seconds, 1),
                        "limit": stuck.limit,
                        "watchdog": "pings stopped" if self.notifier.watchdog_interval else "off",
                    },
                )
            )
        elif stuck is None and self._stuck is not None:
            self._event(LogEvent("pass_unstuck", "info", {"what": self._stuck.what}))
        self._stuck = stuck
        period = self.notifier.watchdog_interval
        if stuck is None and period is not None and now - self._last_ping >= period * 0.9:
            self.notifier.watchdog()
            self._last_ping = now
        if not self._ready_sent:
            if now - self._started >= self.policy.startup_timeout:
                self._send_ready(
                    f"startup_timeout {format_duration(self.policy.startup_timeout)} passed",
                    level="warning",
                )
            elif stuck is None and now - self._last_extend >= EXTEND_EVERY_SECONDS:
                self.notifier.extend_timeout(EXTEND_BY_SECONDS)
                self._last_extend = now
        if (
            self._rerun.is_set()
            and not self.progress.running
            and self._rerun_asked is not None
            and now - self._rerun_asked > TICK_SECONDS
        ):
            # The scheduler skipped the run asked for (a pass was just finishing): ask again.
            self._rerun_asked = now
            self._run_at(datetime.now(UTC))
        self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        now = time.monotonic()
        url = self.policy.ollama.url
        report = self._last
        if self._stuck is not None:
            text = f"stuck: {self._stuck.describe()}; watchdog pings stopped"
        elif self._outage_since is not None and report is not None:
            waited = now - self._outage_since
            reason = unreachable_reason(report.error, url)
            text = f"waiting for ollama at {url}: {reason} ({waited:.0f} s)"
        elif report is None:
            text = f"starting: first pass against ollama at {url}"
        else:
            text = status_line(report)
            hopeless = sorted(self._hopeless(report)) if report.reachable else []
            if hopeless:
                text += f"; not installed: {', '.join(hopeless)}"
        loading = self.progress.loading()
        if loading is not None and loading[1] >= 1.0 and self._stuck is None:
            text = f"loading {loading[0]} ({loading[1]:.0f} s); {text}"
        if self._rejected is not None:
            text = f"{self._rejected}; {text}"
        return text

    def _event(self, event: LogEvent) -> None:
        log.log(LEVEL_NUMBERS[event.level], event.event, **dict(event.fields))


def run_daemon(
    policy_path: str,
    *,
    state_dir: str | None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop. Raises PolicyError (invalid policy at
    start) and, after repeated pass crashes, the crash's exception."""
    policy = load_policy(policy_path, settle=SETTLE_SECONDS)
    notifier = Notifier(os.environ if env is None else env)
    daemon = Daemon(policy_path, policy, state_dir=state_dir, notifier=notifier)
    return daemon.run()
