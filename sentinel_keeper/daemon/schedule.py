"""When passes are due, through APScheduler's public API: the interval (with its jitter), the
watch between passes, and a one-off probe while Ollama does not answer. Every job only asks
the pass worker for work, so the scheduler's own thread pool never runs a pass; and a cron
trigger for each edge of the models' time windows, so that a pass runs as a window opens (or
``warm_before`` ahead) and closes, not up to an interval later."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.windows import DAYS, cron_edges, zone_of
from sentinel_keeper.values.timings import Timings

PASS_JOB, WATCH_JOB, PROBE_JOB = "pass", "watch", "probe"
EDGE_JOB = "edge-"  # + a number: one job per window edge


def new_scheduler() -> BackgroundScheduler:
    """The daemon's one scheduler (one thread, and one more that runs the jobs, which only ask
    a pass worker for work): the instances' schedules share it."""
    return BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(1)},  # the jobs only ask the worker
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone=UTC,
        daemon=True,
    )


class Schedule:
    """One instance's jobs, owned by the daemon's main thread: started once, changed only
    while running, shut down once. Its job ids start with ``prefix``, so that several
    instances' schedules can share one ``scheduler``; without one it has its own."""

    def __init__(
        self,
        timings: Timings,
        *,
        request_pass: Callable[[], None],
        request_watch: Callable[[], None],
        scheduler: BackgroundScheduler | None = None,
        prefix: str = "",
    ) -> None:
        self._timings = timings
        self._request_pass = request_pass
        self._request_watch = request_watch
        self._own = scheduler is None
        self._scheduler = scheduler if scheduler is not None else new_scheduler()
        self._prefix = prefix

    def _id(self, job: str) -> str:
        return self._prefix + job

    def _interval(self, interval: float) -> IntervalTrigger:
        return IntervalTrigger(
            seconds=interval, jitter=self._timings.jitter(interval), timezone=UTC
        )

    def start(self, interval: float, policy: Policy | None = None) -> None:
        self._scheduler.add_job(self._request_pass, self._interval(interval), id=self._id(PASS_JOB))
        if policy is not None:
            self.set_windows(policy)
        self._scheduler.add_job(
            self._request_watch,
            IntervalTrigger(seconds=self._timings.watch, timezone=UTC),
            id=self._id(WATCH_JOB),
        )
        if self._own:
            self._scheduler.start()

    def change_interval(self, interval: float) -> None:
        self._scheduler.reschedule_job(self._id(PASS_JOB), trigger=self._interval(interval))

    def probe_in(self, seconds: float) -> None:
        """One extra pass ``seconds`` from now (replacing a probe not run yet)."""
        when = datetime.now(UTC) + timedelta(seconds=seconds)
        self._scheduler.add_job(
            self._request_pass,
            DateTrigger(run_date=when, timezone=UTC),
            id=self._id(PROBE_JOB),
            replace_existing=True,
        )

    def set_windows(self, policy: Policy) -> None:
        """A pass at every edge of the policy's windows (replacing the previous policy's)."""
        self._remove(self._id(EDGE_JOB))
        zone = zone_of(policy.timezone)
        number = 0
        for model in policy.models:
            for window in model.parsed_windows():
                for edge in cron_edges(window, model.warm_before):
                    trigger = CronTrigger(
                        day_of_week=",".join(DAYS[d] for d in sorted(edge.days)),
                        hour=edge.hour,
                        minute=edge.minute,
                        second=edge.second,
                        timezone=zone,
                    )
                    self._scheduler.add_job(
                        self._request_pass, trigger, id=self._id(f"{EDGE_JOB}{number}")
                    )
                    number += 1

    def _remove(self, prefix: str) -> None:
        for job in self._scheduler.get_jobs():
            if job.id.startswith(prefix):
                job.remove()

    def shutdown(self) -> None:
        """Its jobs gone; its own scheduler (not a shared one) stopped."""
        if self._own:
            self._scheduler.shutdown(wait=False)
        else:
            self._remove(self._prefix)
