"""What the daemon has counted since it started: a frozen value advanced by each pass
report (and each policy reload), a pure function of what it was, the previous passes and
the new report. Counters start at zero when the process starts and survive policy reloads
(a model dropped from the policy keeps its totals)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from sentinel_keeper.act.reconcile import Failure, Outcome, PassReport
from sentinel_keeper.decide.capacity import expected_context_length
from sentinel_keeper.decide.causes import LoadCause, gone_how, load_cause, restart_seen
from sentinel_keeper.decide.plan import ActionKind, FindingKind
from sentinel_keeper.observe.observation import Observation
from sentinel_keeper.policy import Policy
from sentinel_keeper.report.events import History
from sentinel_keeper.values.figures import Histogram

# Ollama's own load time: from a small model off a warm page cache to a large one off disk.
LOAD_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A pass: an /api/ps when nothing is to do, up to ollama.load_timeout per load.
PASS_SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class ReloadResult(StrEnum):
    """The ``result`` label of the policy reloads counter."""

    APPLIED = "applied"  # a changed policy is in force
    UNCHANGED = "unchanged"  # read and valid, the same as the one in force
    REJECTED = "rejected"  # invalid or unreadable: the previous one stays


def _add(counter: Mapping[str, int], key: str, amount: int = 1) -> dict[str, int]:
    return {**counter, key: counter.get(key, 0) + amount}


@dataclass(frozen=True)
class ModelCounts:
    tier: str
    loads: Mapping[str, int] = field(default_factory=dict)  # LoadCause value -> loads
    failures: Mapping[str, int] = field(default_factory=dict)  # failure kind -> loads
    evictions: int = 0
    load_seconds: Histogram = field(default_factory=lambda: Histogram(LOAD_SECONDS_BUCKETS))
    client_reloads: Mapping[int, int] = field(default_factory=dict)  # client num_ctx -> times
    backoffs: int = 0  # times the keeper stopped reloading it back (client_reloads.py)
    resident_seconds: float = 0.0  # closed stretches of residency
    resident_since: float | None = None  # monotonic start of the stretch going on
    resident_since_unix: float | None = None  # the same, wall clock, for people
    gone: LoadCause | None = None  # why it is not resident now: the cause of its next load

    def resident_seconds_at(self, mono: float) -> float:
        since = self.resident_since
        return self.resident_seconds + (max(mono - since, 0.0) if since is not None else 0.0)


@dataclass(frozen=True)
class Counts:
    passes: int = 0
    pass_seconds: Histogram = field(default_factory=lambda: Histogram(PASS_SECONDS_BUCKETS))
    last_pass_unix: float | None = None
    models: Mapping[str, ModelCounts] = field(default_factory=dict)
    outages: int = 0
    outage_seconds: float = 0.0  # closed outages
    outage_since: float | None = None  # monotonic start of the outage going on
    restarts: int = 0
    ollama_version: str | None = None  # as last observed

    def outage_seconds_at(self, mono: float) -> float:
        since = self.outage_since
        return self.outage_seconds + (max(mono - since, 0.0) if since is not None else 0.0)


# The ``kind`` labels of failed loads: Failure's values, and a load's own timeout.
FAILURE_KINDS = ("ollama_error", "timeout", "unreachable", "does_not_fit")


def failure_kind(outcome: Outcome) -> str:
    """The ``kind`` label of a failed load: a timeout is told apart from Ollama going away."""
    if outcome.failure is Failure.UNREACHABLE and not outcome.ollama_gone:
        return "timeout"
    return (outcome.failure or Failure.OLLAMA_ERROR).value


def load_seconds(outcome: Outcome) -> float:
    """A load's time: Ollama's own load_duration when it said, else the load request's wall
    time (current servers say nothing for a load without a prompt, which is all the request
    does)."""
    return outcome.load_duration if outcome.load_duration is not None else outcome.seconds


def add_reload(reloads: Mapping[str, int], result: ReloadResult) -> dict[str, int]:
    """The daemon's policy reloads by result, ``result`` counted."""
    return _add(reloads, result.value)


def count_pass(
    counts: Counts, history: History, report: PassReport, policy: Policy, *, mono: float
) -> Counts:
    """``counts`` after ``report``; ``history`` is what the passes before it left (before
    :func:`sentinel_keeper.report.events.advance` takes this one in), ``mono`` the monotonic time
    the report arrived."""
    begun = mono - report.seconds
    counts = replace(
        counts,
        passes=counts.passes + 1,
        pass_seconds=counts.pass_seconds.observe(report.seconds),
        last_pass_unix=report.started.timestamp() + report.seconds,
    )
    models = {
        m.name: replace(counts.models.get(m.name) or ModelCounts(tier=m.tier), tier=m.tier)
        for m in policy.models
    }
    # models dropped from the policy keep their totals; their residency is no longer watched
    for name, old in counts.models.items():
        if name not in models:
            models[name] = _close(old, begun)
    observation, latest = report.observation, report.latest
    if observation is None or latest is None:
        if counts.outage_since is None:
            counts = replace(counts, outages=counts.outages + 1, outage_since=begun)
        # nothing is known while Ollama does not answer: no model counts as resident
        return replace(counts, models={n: _close(m, begun) for n, m in models.items()})

    if counts.outage_since is not None:
        counts = replace(
            counts,
            outage_seconds=counts.outage_seconds + max(begun - counts.outage_since, 0.0),
            outage_since=None,
        )
    across_outage = history.last is not None and not history.last.reachable
    before_pass = history.last_reachable
    before = before_pass.latest if before_pass is not None else None
    if before is not None and restart_seen(before, observation, across_outage=across_outage):
        counts = replace(counts, restarts=counts.restarts + 1)
    listed_before = before.loaded_by_name() if before is not None else {}
    listed = observation.loaded_by_name()
    reported = history.finding_keys
    backoffs = {
        f.model
        for f in report.plan.findings
        if f.kind is FindingKind.RELOAD_HELD and f.key not in reported
    }
    for model in policy.models:
        name = model.name
        entry = models[name]
        if name in listed_before and name not in listed and before is not None:
            cause = load_cause(gone_how(before, observation, name), across_outage=across_outage)
            entry = replace(
                entry,
                gone=cause,
                evictions=entry.evictions + (cause is LoadCause.EVICTED),
            )
        if name not in listed:
            entry = _close(entry, begun)
        instance = listed.get(name)
        wanted = expected_context_length(model, observation.details.get(name))
        if instance is not None and instance.context_length not in (None, wanted) and wanted:
            earlier = listed_before.get(name)
            if earlier is None or earlier.context_length != instance.context_length:
                ctx = instance.context_length or 0
                reloads = {**entry.client_reloads, ctx: entry.client_reloads.get(ctx, 0) + 1}
                entry = replace(entry, client_reloads=reloads)
        if name in report.opened:
            entry = replace(entry, gone=LoadCause.WINDOW_OPENED)
        for outcome in report.outcomes:
            if outcome.action.model == name and outcome.attempted:
                entry = _count_outcome(entry, outcome)
        if name in backoffs:
            entry = replace(entry, backoffs=entry.backoffs + 1)
        resident = name in report.resident((name,))
        models[name] = _open(entry, resident, mono, latest)
    return replace(counts, models=models, ollama_version=latest.ollama_version)


def _count_outcome(entry: ModelCounts, outcome: Outcome) -> ModelCounts:
    kind = outcome.action.kind
    if not outcome.ok:
        if kind in (ActionKind.PULL, ActionKind.UNLOAD, ActionKind.RETIRE):
            return entry
        return replace(entry, failures=_add(entry.failures, failure_kind(outcome)))
    if kind is ActionKind.LOAD:
        cause = entry.gone or LoadCause.NOT_LOADED
    elif kind is ActionKind.RELOAD:
        cause = LoadCause.OTHER_NUM_CTX
    elif kind is ActionKind.REASSERT:
        cause = LoadCause.KEEP_ALIVE_SHORTENED
    else:
        return entry  # a refresh renews a timer; a pull or an unload loads nothing
    seconds = entry.load_seconds
    if kind is not ActionKind.REASSERT:  # a reassertion loads nothing: no load time
        seconds = seconds.observe(load_seconds(outcome))
    return replace(entry, loads=_add(entry.loads, cause.value), load_seconds=seconds)


def _close(entry: ModelCounts, at: float) -> ModelCounts:
    if entry.resident_since is None:
        return entry
    return replace(
        entry,
        resident_seconds=entry.resident_seconds_at(at),
        resident_since=None,
        resident_since_unix=None,
    )


def _open(entry: ModelCounts, resident: bool, mono: float, latest: Observation) -> ModelCounts:
    if not resident:
        return entry
    if entry.resident_since is not None:
        return replace(entry, gone=None)
    return replace(entry, resident_since=mono, resident_since_unix=latest.at.timestamp(), gone=None)
