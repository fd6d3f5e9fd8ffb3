"""The daemon's own clock: every delay and limit it keeps besides the policy's ``interval``.

One frozen :class:`Timings` is built at start and passed down (the daemon's loop, its pass
worker, the reconciler's load back-off); nothing reads a module constant at run time. A test
or a benchmark that runs against the Ollama double at accelerated time passes
``Timings().scaled(k)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Timings:
    """Seconds, all of them. The defaults are the shipped behaviour."""

    # The main loop wakes at least this often (sd_notify STATUS, WATCHDOG=1, stuck checks);
    # a quarter of the watchdog period when systemd asks for pings more often than that.
    tick: float = 0.5
    # While Ollama is unreachable (or went away during a pass), probe it after these delays
    # (doubling), at most probe_max apart, so the pinned models are back about a second
    # after Ollama answers again.
    probe_first: float = 0.25
    probe_max: float = 1.0
    # Each pass starts up to this share of the interval late (at most jitter_max), so that
    # several keepers on one host do not hit Ollama in step.
    jitter_fraction: float = 0.05
    jitter_max: float = 1.0
    # Between passes, /api/ps this often (watch.py): a restart of Ollama or an eviction of a
    # pinned model is repaired in seconds, not at the next interval.
    watch: float = 2.0
    # A pinned model missing from /api/ps counts as gone once it stayed missing this long:
    # Ollama lists a model again only when its reload is done (a client's other options).
    watch_settle: float = 3.5
    # A model whose load failed is retried after backoff_base, doubling per failure up to
    # backoff_max, so that an out-of-memory model does not hammer Ollama every interval.
    backoff_base: float = 15.0
    backoff_max: float = 900.0
    # The start may take as long as the pinned models need to load: systemd is told in
    # steps (EXTEND_TIMEOUT_USEC) of extend_by, every extend_every.
    extend_every: float = 5.0
    extend_by: float = 30.0
    # A call may take its own HTTP timeouts plus call_grace before the pass counts as stuck;
    # between calls a pass plans, reads NVML and writes its state file: between_calls at most.
    call_grace: float = 1.0
    between_calls: float = 10.0
    # Without a pass for interval + jitter + max(idle_grace, interval), the loop has stalled.
    idle_grace: float = 30.0

    # What scaled() divides: the daemon's own behaviour in time. The tick, the start
    # extension and the stuck limits stay: they bound real HTTP calls and systemd's clock,
    # which an accelerated run does not speed up.
    _SCALED = (
        "probe_first",
        "probe_max",
        "jitter_max",
        "watch",
        "watch_settle",
        "backoff_base",
        "backoff_max",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"Timings.{f.name} must be positive, got {value!r}")

    def scaled(self, factor: float) -> Timings:
        """These timings with the daemon's own delays divided by ``factor`` (a simulation
        that runs ``factor`` times faster than real time)."""
        if not factor > 0:
            raise ValueError(f"the time scale must be positive, got {factor!r}")
        return replace(self, **{name: getattr(self, name) / factor for name in self._SCALED})

    def jitter(self, interval: float) -> float:
        """How late a pass may start, at most."""
        return min(interval * self.jitter_fraction, self.jitter_max)

    def idle_limit(self, interval: float) -> float:
        """No pass for this long means the loop stopped running them."""
        return interval + self.jitter(interval) + max(self.idle_grace, interval)

    def backoff(self, failures: int) -> float:
        """The wait before the next load of a model that failed ``failures`` times in a row."""
        return min(self.backoff_base * 2.0 ** max(failures - 1, 0), self.backoff_max)

    def next_probe(self, delay: float) -> float:
        """The probe delay after one of ``delay`` (doubling, capped)."""
        return min(delay * 2, self.probe_max)
