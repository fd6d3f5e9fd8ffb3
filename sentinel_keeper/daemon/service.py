"""`sentinel-keeper run`: the long-running daemon under systemd.

Threads and who owns what:

- The main thread owns signals, sd_notify, the scheduler and the logging of pass results. It
  sleeps in ``select()`` on a self-pipe that signal handlers (through
  ``signal.set_wakeup_fd``) and the pass worker write to, and wakes at least every tick to
  ping the watchdog, extend the start timeout, keep STATUS current and notice a stuck pass.
  What it does is decided by the pure functions of :mod:`lifecycle`.
- One pass worker thread (:mod:`worker`) runs the passes, one at a time, and the watch between
  them (:mod:`engine`). APScheduler's triggers (:mod:`schedule`: the interval with its jitter,
  the watch period, a probe while Ollama does not answer) only ask the worker for work; so do
  a reload and the watch.
- A :class:`Progress` record, updated through the tracked client, tells the main thread
  whether the pass is within its own time limits. When it is not (a call stuck past its
  timeout), the watchdog pings stop and systemd restarts the service.

Only the CLI chooses exit codes: :func:`run_daemon` returns 0 after a clean stop, raises
PolicyError for an invalid policy at start, and re-raises a pass's unexpected exception after
several passes in a row crashed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from sentinel_keeper import __version__
from sentinel_keeper.daemon import lifecycle
from sentinel_keeper.daemon.engine import Engines
from sentinel_keeper.daemon.progress import Progress, Stuck
from sentinel_keeper.daemon.schedule import Schedule
from sentinel_keeper.daemon.signals import SignalFlags
from sentinel_keeper.daemon.worker import PassWorker
from sentinel_keeper.errors import SentinelError
from sentinel_keeper.events import History, LogEvent, advance, pass_events
from sentinel_keeper.gpu import GpuProbe
from sentinel_keeper.logs import LEVEL_NUMBERS
from sentinel_keeper.metrics.counts import Counts, ReloadResult, count_pass, count_reload
from sentinel_keeper.metrics.families import MetricsView
from sentinel_keeper.notify import Notifier
from sentinel_keeper.ollama import OllamaClient
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import SETTLE_SECONDS, load_policy
from sentinel_keeper.policy.risks import file_risks
from sentinel_keeper.reconcile import PassReport
from sentinel_keeper.runtime import make_client
from sentinel_keeper.timings import Timings

if TYPE_CHECKING:
    from sentinel_keeper.metrics.exporter import Exporter

CRASHES_BEFORE_EXIT = 3

log = structlog.get_logger("sentinel_keeper.daemon")


@dataclass(frozen=True)
class _Crash:
    error: BaseException


@dataclass(frozen=True)
class _WatchAsked:
    """What a look between passes found: why a pass is due (None: none) and what to log."""

    why: str | None
    events: tuple[LogEvent, ...] = ()


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
        timings: Timings | None = None,
    ) -> None:
        self.policy_path = policy_path
        self.policy = policy  # the policy in force, as the main thread knows it
        self.notifier = notifier if notifier is not None else Notifier()
        self.timings = timings if timings is not None else Timings()
        self.progress = Progress(between_calls=self.timings.between_calls)
        self.engines = Engines(
            policy,
            progress=self.progress,
            timings=self.timings,
            state_dir=state_dir,
            make_ollama=make_ollama,
            make_gpu=make_gpu or (lambda p: GpuProbe(p.vram.gpu_selection)),
        )
        self.worker = PassWorker(self._pass, self._watch, lambda exc: self._post(_Crash(exc)))
        self.schedule = Schedule(
            self.timings,
            request_pass=self.worker.request_pass,
            request_watch=self.worker.request_watch,
        )
        self._stop = threading.Event()  # read by a pass between its actions
        self._results: queue.SimpleQueue[PassReport | _Crash | _WatchAsked] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._signals = SignalFlags(self._wake_w.fileno())
        # the main thread's
        self._started = time.monotonic()
        self._history = History()
        self._last: PassReport | None = None
        self._ready_sent = False
        self._outage_since: float | None = None
        self._rejected: str | None = None
        self._stuck: Stuck | None = None
        self._last_ping = float("-inf")
        self._last_extend = float("-inf")
        self._probe_delay = self.timings.probe_first
        self._crashes = 0
        self._crash: BaseException | None = None
        # what the metrics count (always, so that turning them on by a reload shows the
        # daemon's whole life) and publish (only when the policy turns them on)
        self._counts = Counts()
        self._started_unix = time.time()
        self._exporter: Exporter | None = None

    # -- the pass worker's side --------------------------------------------------------------

    def _pass(self) -> None:
        if not self._stop.is_set():
            self._post(self.engines.run_pass(self._stop))

    def _watch(self) -> None:
        if self._stop.is_set():
            return
        seen = self.engines.watch()
        if seen.events or seen.due is not None:
            self._post(_WatchAsked(seen.due, seen.events))
        if seen.due is not None:
            self.worker.request_pass()

    def _post(self, item: PassReport | _Crash | _WatchAsked) -> None:
        self._results.put(item)
        with contextlib.suppress(OSError):  # full (the loop wakes anyway) or closed (stopping)
            self._wake_w.send(b"r")

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> int:
        flags = self._signals
        with flags:
            self._start()
            try:
                while flags.stop is None and self._crash is None:
                    self._wait(
                        lifecycle.tick_seconds(self.timings, self.notifier.watchdog_interval)
                    )
                    if flags.stop is not None:
                        break
                    if flags.take_hup():
                        self._reload()
                    self._drain()
                    self._tick()
            finally:
                self._shutdown()
        if self._crash is not None:
            raise self._crash
        return 0

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([self._wake_r], [], [], timeout)
            if readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    while self._wake_r.recv(4096):
                        pass

    def _start(self) -> None:
        watchdog = self.notifier.watchdog_interval
        self._event(lifecycle.starting_event(self.policy, self.policy_path, __version__, watchdog))
        self._file_risks()
        self._metrics()
        self.notifier.status(self._status_text())
        self.schedule.start(self.policy.interval, self.policy)
        self.worker.start()
        self.worker.request_pass()  # the first pass now, not one interval after the start

    def _shutdown(self) -> None:
        signum = self._signals.stop
        name = signal.Signals(signum).name if signum is not None else "crash"
        running = self.progress.running
        self.notifier.stopping("stopping" + (" (abandoning a load)" if running else ""))
        self._stop.set()
        self.worker.stop()
        self._event(LogEvent("stopping", "info", {"signal": name, "pass_running": running}))
        self.schedule.shutdown()
        if self.worker.idle:
            # A pass stuck in a call keeps its client; the process exit closes the socket.
            self.engines.close()
        if self._exporter is not None:
            self._exporter.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- results from the worker ------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, PassReport):
                self._crashes = 0
                self._on_report(item)
            elif isinstance(item, _WatchAsked):
                for event in item.events:
                    self._event(event)
                if item.why is not None:
                    log.debug("pass_requested", why=item.why)
            else:
                self._on_crash(item.error)

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
        self._counts = count_pass(
            self._counts, self._history, report, self.policy, mono=time.monotonic()
        )
        self._history = advance(self._history, report)
        self._last = report
        self._metrics(textfile=True)
        if report.reachable:
            self._outage_since = None
        elif self._outage_since is None:
            self._outage_since = time.monotonic() - report.seconds
        probe = lifecycle.probe(
            report, self._probe_delay, interval=self.policy.interval, timings=self.timings
        )
        self._probe_delay = probe.next_delay
        if probe.after is not None:
            self.schedule.probe_in(probe.after)

    # -- reload --------------------------------------------------------------------------------

    def _reload(self) -> None:
        announce = self._ready_sent  # no RELOADING during the start: systemd is not ready yet
        if announce:
            self.notifier.reloading(f"reloading {self.policy_path}")
        policy: Policy | None = None
        error: BaseException | None = None
        try:
            policy = load_policy(self.policy_path, settle=SETTLE_SECONDS, empty_ok=False)
        except (SentinelError, OSError) as exc:
            error = exc
        decision = lifecycle.reload_decision(self.policy_path, self.policy, policy, error)
        for event in decision.events:
            self._event(event)
        self._rejected = decision.rejected
        result = (
            ReloadResult.REJECTED
            if decision.policy is None
            else ReloadResult.UNCHANGED
            if decision.policy == self.policy
            else ReloadResult.APPLIED
        )
        self._counts = count_reload(self._counts, result)
        if decision.policy is not None:
            self.policy = decision.policy
            self.engines.replace(decision.policy)
            if decision.interval_changed:
                self.schedule.change_interval(decision.policy.interval)
            self.schedule.set_windows(decision.policy)
            self._file_risks()
            self.worker.request_pass()
        self._metrics()
        if announce:
            self.notifier.ready(self._status_text())

    def _file_risks(self) -> None:
        risks = [risk.message for risk in file_risks(self.policy_path)]
        for event in lifecycle.risk_events(self.policy_path, risks):
            self._event(event)

    # -- metrics -------------------------------------------------------------------------------

    def _metrics(self, *, textfile: bool = False) -> None:
        """Publish the figures: the endpoint (started, moved, stopped or retried as the
        policy says) and, after a pass, the textfile."""
        section = self.policy.metrics
        if self._exporter is None and not section.enabled:
            return  # prometheus_client is not even imported
        view = MetricsView(
            policy=self.policy,
            counts=self._counts,
            report=self._last,
            version=__version__,
            python=platform.python_version(),
            started_unix=self._started_unix,
        )
        if self._exporter is None:
            from sentinel_keeper.metrics.exporter import Exporter  # noqa: PLC0415 (lazy)

            self._exporter = Exporter(view)
        self._exporter.publish(view)
        events = self._exporter.apply(section)
        if textfile:
            events += self._exporter.write_textfile(section.textfile)
        for event in events:
            self._event(event)

    # -- periodic duties -----------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        period = self.notifier.watchdog_interval
        stuck = self.progress.stuck(self.timings.idle_limit(self.policy.interval))
        for event in lifecycle.stuck_events(self._stuck, stuck, watchdog=period is not None):
            self._event(event)
        self._stuck = stuck
        due = lifecycle.duties(
            now,
            last_ping=self._last_ping,
            last_extend=self._last_extend,
            watchdog_period=period,
            stuck=stuck,
            ready_sent=self._ready_sent,
            timings=self.timings,
        )
        if due.ping:
            self.notifier.watchdog()
            self._last_ping = now
        if not self._ready_sent:
            ready = lifecycle.readiness(self.policy, self._last, elapsed=now - self._started)
            if ready is not None:
                self._ready_sent = True
                self.notifier.ready(self._status_text())
                self._event(
                    lifecycle.ready_event(ready, elapsed=now - self._started, report=self._last)
                )
            elif due.extend:
                self.notifier.extend_timeout(self.timings.extend_by)
                self._last_extend = now
        self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        outage = self._outage_since
        view = lifecycle.StatusView(
            url=self.policy.ollama.url,
            report=self._last,
            outage_seconds=None if outage is None else time.monotonic() - outage,
            stuck=self._stuck,
            loading=self.progress.loading(),
            rejected=self._rejected,
        )
        return lifecycle.status_text(view)

    def _event(self, event: LogEvent) -> None:
        log.log(LEVEL_NUMBERS[event.level], event.event, **dict(event.fields))


def run_daemon(
    policy_path: str,
    *,
    state_dir: str | None,
    env: Mapping[str, str] | None = None,
    timings: Timings | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop. Raises PolicyError (invalid policy at
    start) and, after repeated pass crashes, the crash's exception."""
    policy = load_policy(policy_path, settle=SETTLE_SECONDS)
    notifier = Notifier(os.environ if env is None else env)
    daemon = Daemon(policy_path, policy, state_dir=state_dir, notifier=notifier, timings=timings)
    return daemon.run()
