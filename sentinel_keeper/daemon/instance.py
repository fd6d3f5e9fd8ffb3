"""One Ollama instance's passes, independent of the other instances': its policy part
(:meth:`Policy.split`), its engine (client, GPU probe, reconciler, state), its pass worker
thread, its jobs on the daemon's scheduler and its progress record; and what the main
thread remembers of its passes. An instance that does not answer, or a load that takes
minutes on one, holds up no pass of another instance: each has its own thread and its own
HTTP client.

The worker side (:meth:`_pass`, :meth:`_watch`) runs on the instance's pass worker thread
and hands what it found to the main thread through ``post``; every other attribute is the
main thread's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from apscheduler.schedulers.background import BackgroundScheduler

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.act.state import instance_state_dir
from sentinel_keeper.daemon import lifecycle
from sentinel_keeper.daemon.engine import Engines, Seen
from sentinel_keeper.daemon.lifecycle import Ready
from sentinel_keeper.daemon.progress import Progress, Stuck
from sentinel_keeper.daemon.schedule import Schedule
from sentinel_keeper.daemon.worker import PassWorker
from sentinel_keeper.metrics.counts import Counts, count_pass
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.observe.observation import Observation
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import Policy
from sentinel_keeper.report.events import History, advance, pass_events
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.values.timings import Timings

CRASHES_BEFORE_EXIT = 3  # passes in a row that raised: a bug, and the daemon exits


@dataclass(frozen=True)
class Crash:
    """A pass raised: a bug. The main loop logs it and counts crashes in a row."""

    error: BaseException


@dataclass(frozen=True)
class WatchAsked:
    """What a look between passes found: why a pass is due (None: none), what to log, and
    the /api/ps it saw with when (None: it asked none), for the gateway's view."""

    why: str | None
    events: tuple[LogEvent, ...] = ()
    seen: Seen | None = None  # what the look found (None: no look taken)


Posted = PassReport | Crash | WatchAsked


class InstanceLoop:
    """The passes of one instance. Started once, given new parts of the policy while it runs,
    stopped once."""

    def __init__(
        self,
        part: Policy,
        *,
        timings: Timings,
        state_dir: str | None,
        make_ollama: Callable[[Policy], OllamaClient],
        make_gpu: Callable[[Policy], GpuProbe],
        post: Callable[[str, Posted], None],
        scheduler: BackgroundScheduler,
    ) -> None:
        self.name = part.instance
        self.policy = part  # the part in force, as the main thread knows it
        self.timings = timings
        self._stop = threading.Event()  # read by a pass between its actions
        self._post = post
        self.progress = Progress(between_calls=timings.between_calls)
        self.engines = Engines(
            part,
            progress=self.progress,
            timings=timings,
            state_dir=instance_state_dir(state_dir, self.name) if state_dir else None,
            make_ollama=make_ollama,
            make_gpu=make_gpu,
        )
        self.worker = PassWorker(
            self._pass,
            self._watch,
            lambda exc: self._post(self.name, Crash(exc)),
            name=f"sentinel-pass-{self.name}",
        )
        self.schedule = Schedule(
            timings,
            request_pass=self.worker.request_pass,
            request_watch=self.worker.request_watch,
            scheduler=scheduler,
            prefix=f"{self.name}/",
        )
        # the main thread's record of this instance's passes
        self.history = History()
        self.last: PassReport | None = None
        # the last look at Ollama: the last pass's, with /api/ps as seen since (the gateway's)
        self.view: Observation | None = None
        self.last_at: float | None = None  # monotonic: when the main thread got it
        self.seen: Seen | None = None  # the latest look between passes since the last pass
        self.counts = Counts()
        self.ready: Ready | None = None  # READY=1 is due as far as this instance goes
        self.outage_since: float | None = None  # monotonic
        self.stuck: Stuck | None = None
        self.probe_delay = timings.probe_first
        self.crashes = 0

    # -- the pass worker's side ------------------------------------------------------------

    def _pass(self) -> None:
        if not self._stop.is_set():
            self._post(self.name, self.engines.run_pass(self._stop))

    def _watch(self) -> None:
        if self._stop.is_set():
            return
        seen, found = self.engines.watch()
        if seen.events or seen.due is not None or found is not None:
            self._post(self.name, WatchAsked(seen.due, seen.events, found))
        if seen.due is not None:
            self.worker.request_pass()

    # -- the main thread's -----------------------------------------------------------------

    def start(self) -> None:
        self.schedule.start(self.policy.interval, self.policy)
        self.worker.start()
        self.worker.request_pass()  # the first pass now, not one interval after the start

    def replace(self, part: Policy) -> None:
        """Run passes with ``part`` from the next one on; a pass follows at once."""
        before, self.policy = self.policy, part
        self.engines.replace(part)
        if part.interval != before.interval:
            self.schedule.change_interval(part.interval)
        self.schedule.set_windows(part)
        self.worker.request_pass()

    def stop(self) -> None:
        """Take no more work; a pass under way stops before its next action. A pass stuck in
        a call keeps its client (the process exit, or the garbage collector, closes its
        socket); an idle one is closed now."""
        self._stop.set()
        self.worker.stop()
        self.schedule.shutdown()
        if self.worker.idle:
            self.engines.close()

    # -- what the main thread makes of what the worker posted ------------------------------

    def took_report(self, report: PassReport, now: float) -> list[LogEvent]:
        """Remember a pass (received at ``now``, monotonic): the counts, the history, the
        view, the outage, and the probe it asks for while Ollama does not answer. Returns
        what to log of it, judged against the passes before it."""
        events = pass_events(self.history, report)
        self.counts = count_pass(self.counts, self.history, report, self.policy, mono=now)
        self.history = advance(self.history, report)
        self.last = report
        self.view = report.latest
        self.last_at = now
        self.crashes = 0
        if report.reachable:
            self.outage_since = None
        elif self.outage_since is None:
            self.outage_since = now - report.seconds
        probe = lifecycle.probe(
            report, self.probe_delay, interval=self.policy.interval, timings=self.timings
        )
        self.probe_delay = probe.next_delay
        if probe.after is not None:
            self.schedule.probe_in(probe.after)
        return events

    def took_look(self, look: WatchAsked) -> bool:
        """Remember a look between passes; True when it changed the view the gateway gets
        (the last pass's, with /api/ps as this look saw it)."""
        seen = look.seen
        if seen is None:
            return False
        self.seen = seen  # /ready answers from the newest look
        if seen.listed is None or seen.when is None or self.view is None:
            return False
        self.view = replace(self.view, at=seen.when, loaded=seen.loaded)
        return True

    def took_crash(self) -> bool:
        """Count a pass that raised; True when too many did in a row."""
        self.crashes += 1
        return self.crashes >= CRASHES_BEFORE_EXIT

    def check_stuck(self, *, watchdog: bool) -> list[LogEvent]:
        """Whether a pass is past its time limits now (kept in :attr:`stuck`), and what to log
        when that changed."""
        now_stuck = self.progress.stuck(self.timings.idle_limit(self.policy.interval))
        events = lifecycle.stuck_events(self.stuck, now_stuck, watchdog=watchdog)
        self.stuck = now_stuck
        return events

    def status_view(self, now: float) -> lifecycle.StatusView:
        """What STATUS= says of this instance at ``now`` (monotonic)."""
        return lifecycle.StatusView(
            url=self.policy.ollama.url,
            report=self.last,
            outage_seconds=None if self.outage_since is None else now - self.outage_since,
            stuck=self.stuck,
            loading=self.progress.loading(),
        )
