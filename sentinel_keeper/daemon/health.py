"""What /ready and /live answer from: the main thread's record of each instance, frozen into
:class:`~sentinel_keeper.decide.readiness.Health` and
:class:`~sentinel_keeper.decide.readiness.Liveness` at every tick of the main loop (and
published to the endpoint in one swap). Pure: the loop passes in what it knows and the time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.daemon.engine import Seen
from sentinel_keeper.daemon.lifecycle import hopeless
from sentinel_keeper.daemon.progress import Stuck
from sentinel_keeper.decide.readiness import InstanceHealth, Liveness

# /live says 503 when the main loop, which wakes at least every half second, has not run for
# this long (a hang the watchdog, where systemd runs one, also ends)
TICK_LIMIT = 10.0


def instance_health(
    name: str,
    report: PassReport | None,
    *,
    report_at: float | None,
    seen: Seen | None,
    down_since: float | None,
    loading: tuple[str, float] | None,
    now: float,
) -> InstanceHealth:
    """One instance from its last pass (``report``, received at ``report_at``), the look
    between passes after it (``seen``, newer when there is one), the model a pass loads now
    (not resident while it loads) and since when Ollama has not answered."""
    loading_model = loading[0] if loading is not None else None
    loading_since = now - loading[1] if loading is not None else None
    if report is None or report_at is None:
        return InstanceHealth(
            name, answered=False, loading=loading_model, loading_since=loading_since
        )
    if seen is not None and seen.at >= report_at:
        answered, at, error = seen.listed is not None, seen.at, seen.error
        listed = seen.listed or frozenset()
    else:
        latest = report.latest
        answered, at, error = report.reachable, report_at, report.error_reason
        listed = frozenset(latest.loaded_by_name()) if latest is not None else frozenset()
    resident = listed - report.unconfirmed - {loading_model or ""}
    return InstanceHealth(
        name,
        answered=answered,
        pinned=report.pinned,
        extras=report.extras,
        resident=resident,
        not_installed=frozenset(hopeless(report)),
        looked_at=at,
        error=error,
        down_since=down_since if not answered else None,
        loading=loading_model,
        loading_since=loading_since,
        stalled=report.stall.describe(report.started) if report.stall is not None else None,
    )


def shifted(inst: InstanceHealth, by: float) -> InstanceHealth:
    """``inst`` with its times moved by ``by`` seconds: monotonic to Unix time, the clock
    of the files the keeper and the gateway's process share."""

    def move(t: float | None) -> float | None:
        return None if t is None else t + by

    return replace(
        inst,
        looked_at=move(inst.looked_at),
        down_since=move(inst.down_since),
        loading_since=move(inst.loading_since),
    )


def liveness(now: float, stuck: Sequence[tuple[str, Stuck | None]]) -> Liveness:
    """The main loop ticks at ``now``; what is stuck, per instance, as the watchdog sees it."""
    return Liveness(
        now, TICK_LIMIT, tuple((name, s.describe()) for name, s in stuck if s is not None)
    )
