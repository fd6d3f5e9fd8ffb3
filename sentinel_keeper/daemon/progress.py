"""Is the pass within its own limits? Written by the pass (through the tracked client), read
by the main loop, which stops the watchdog pings when a pass is stuck past them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sentinel_keeper.values.quantities import format_duration
from sentinel_keeper.values.timings import Timings


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
    """The pass's progress, written by the pass worker, read by the main thread."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        between_calls: float = Timings().between_calls,
    ) -> None:
        self._monotonic = monotonic
        self._between_calls = between_calls
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
            self._step = _Step("pass", None, self._monotonic(), self._between_calls)

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
                self._step = _Step("pass", None, self._monotonic(), self._between_calls)

    def stuck(self, idle_limit: float) -> Stuck | None:
        """What is past its limit now, if anything; idle too long counts (no pass started)."""
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
