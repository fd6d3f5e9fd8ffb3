"""When passes are due, through APScheduler's public API: the interval (with its jitter), the
watch between passes, and a one-off probe while Ollama does not answer. Every job only asks
the pass worker for work, so the scheduler's own thread pool never runs a pass; the time
windows of a policy will add cron triggers here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sentinel_keeper.timings import Timings

PASS_JOB, WATCH_JOB, PROBE_JOB = "pass", "watch", "probe"


class Schedule:
    """Owned by the daemon's main thread: started once, changed only while running, shut
    down once."""

    def __init__(
        self,
        timings: Timings,
        *,
        request_pass: Callable[[], None],
        request_watch: Callable[[], None],
    ) -> None:
        self._timings = timings
        self._request_pass = request_pass
        self._request_watch = request_watch
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},  # the jobs only ask the worker
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
            daemon=True,
        )

    def _interval(self, interval: float) -> IntervalTrigger:
        return IntervalTrigger(
            seconds=interval, jitter=self._timings.jitter(interval), timezone=UTC
        )

    def start(self, interval: float) -> None:
        self._scheduler.add_job(self._request_pass, self._interval(interval), id=PASS_JOB)
        self._scheduler.add_job(
            self._request_watch,
            IntervalTrigger(seconds=self._timings.watch, timezone=UTC),
            id=WATCH_JOB,
        )
        self._scheduler.start()

    def change_interval(self, interval: float) -> None:
        self._scheduler.reschedule_job(PASS_JOB, trigger=self._interval(interval))

    def probe_in(self, seconds: float) -> None:
        """One extra pass ``seconds`` from now (replacing a probe not run yet)."""
        when = datetime.now(UTC) + timedelta(seconds=seconds)
        self._scheduler.add_job(
            self._request_pass,
            DateTrigger(run_date=when, timezone=UTC),
            id=PROBE_JOB,
            replace_existing=True,
        )

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=False)
