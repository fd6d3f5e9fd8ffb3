"""The counts behind the metrics: what each pass adds, as tables (pure; no daemon, no HTTP)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from sentinel_keeper.act.reconcile import Failure, Outcome, PassReport
from sentinel_keeper.decide.causes import Gone, LoadCause, gone_how, load_cause, restart_seen
from sentinel_keeper.decide.plan import Action, ActionKind, Plan
from sentinel_keeper.metrics.counts import (
    LOAD_SECONDS_BUCKETS,
    Counts,
    ReloadResult,
    add_reload,
    count_pass,
)
from sentinel_keeper.observe.observation import LoadedModel, Observation
from sentinel_keeper.report.events import History, advance
from sentinel_keeper.values.figures import Histogram
from tests.support.planning import NOW, loaded, observation, policy

A, B, X = "a:1b", "b:1b", "x:1b"
POLICY = policy({"name": A, "options": {"num_ctx": 8192}}, {"name": X, "tier": "extra"})


def look(*models: LoadedModel, version: str = "0.33.0", at: float = 0.0) -> Observation:
    return replace(
        observation(loaded_models=models), ollama_version=version, at=NOW + timedelta(seconds=at)
    )


def ok(kind: ActionKind, model: str = A, *, load_duration: float | None = 2.0) -> Outcome:
    return Outcome(
        Action(kind, model, "pinned" if model == A else "extra", "why"),
        ok=True,
        seconds=3.0,
        load_duration=load_duration,
    )


def failed(failure: Failure, *, gone: bool = False) -> Outcome:
    return Outcome(
        Action(ActionKind.LOAD, A, "pinned", "why"),
        ok=False,
        seconds=1.0,
        error="boom",
        failure=failure,
        ollama_gone=gone,
    )


def seen(
    first: Observation | None,
    outcomes: tuple[Outcome, ...] = (),
    final: Observation | None = None,
    *,
    seconds: float = 0.5,
) -> PassReport:
    """A pass that first saw ``first`` (None: Ollama did not answer), did ``outcomes`` and
    then saw ``final`` (default: the same as first)."""
    started = first.at if first is not None else NOW
    if first is None:
        return PassReport(started, seconds, (A,), (X,), None, error="refused")
    return PassReport(
        started,
        seconds,
        (A,),
        (X,),
        first,
        plan=Plan(tuple(o.action for o in outcomes)),
        outcomes=outcomes,
        final=final or first,
    )


def run(*reports: PassReport, start: Counts | None = None, step: float = 15.0) -> Counts:
    """Count the passes in turn, ``step`` monotonic seconds apart."""
    counts, history = start or Counts(), History()
    for i, report in enumerate(reports):
        counts = count_pass(counts, history, report, POLICY, mono=100.0 + i * step)
        history = advance(history, report)
    return counts


RESIDENT = loaded(A, ctx=8192)


def loads(counts: Counts, model: str = A) -> dict[str, int]:
    return dict(counts.models[model].loads)


# --- why a model left, why it is loaded again --------------------------------------------

GONE_CASES = [
    ("expired", look(loaded(A, expires_in=-5)), look(), Gone.EXPIRED, LoadCause.KEEP_ALIVE_SHORTENED),  # noqa: E501
    ("upgraded", look(RESIDENT), look(version="0.34.0"), Gone.REPLACED, LoadCause.AFTER_RESTART),
    ("made room", look(RESIDENT), look(loaded(B)), Gone.MADE_ROOM, LoadCause.EVICTED),
    ("all gone", look(RESIDENT, loaded(B)), look(), Gone.ALL_GONE, LoadCause.AFTER_RESTART),
    ("only model", look(RESIDENT), look(), Gone.ONLY_MODEL, LoadCause.UNLOADED),
    ("alone", look(RESIDENT, loaded(B)), look(loaded(B)), Gone.ALONE, LoadCause.UNLOADED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("before", "now", "how", "cause"),
    [case[1:] for case in GONE_CASES],
    ids=[case[0] for case in GONE_CASES],
)
def test_how_a_model_left_and_the_reason_of_its_next_load(
    before: Observation, now: Observation, how: Gone, cause: LoadCause
) -> None:
    assert gone_how(before, now, A) is how
    assert load_cause(how, across_outage=False) is cause
    assert load_cause(how, across_outage=True) is LoadCause.AFTER_RESTART


@pytest.mark.parametrize(
    ("before", "now", "across_outage", "restart"),
    [
        (look(RESIDENT), look(RESIDENT, version="0.34.0"), False, True),  # new version
        (look(RESIDENT), look(), True, True),  # an outage, and nothing survived it
        (look(), look(), True, True),  # an outage with nothing loaded: likely a restart
        (look(RESIDENT), look(RESIDENT), True, False),  # Ollama hung, then answered again
        (look(RESIDENT, loaded(B)), look(), False, True),  # several gone at once
        (look(RESIDENT, loaded(B)), look(loaded(X)), False, False),  # evicted for X
        (look(RESIDENT), look(), False, False),  # the only model: cannot tell
    ],
)
def test_a_restart_is_counted_only_on_evidence(
    before: Observation, now: Observation, across_outage: bool, restart: bool
) -> None:
    assert restart_seen(before, now, across_outage=across_outage) is restart


# --- loads by reason ----------------------------------------------------------------------


def test_the_first_load_is_not_loaded_and_its_load_time_is_observed() -> None:
    counts = run(seen(look(), (ok(ActionKind.LOAD),), look(RESIDENT)))
    assert loads(counts) == {"not_loaded": 1}
    assert counts.models[A].load_seconds.count == 1
    assert counts.models[A].load_seconds.total == 2.0  # Ollama's load_duration


def test_without_ollamas_load_duration_the_request_time_is_the_load_time() -> None:
    counts = run(seen(look(), (ok(ActionKind.LOAD, load_duration=None),), look(RESIDENT)))
    assert counts.models[A].load_seconds.total == 3.0


@pytest.mark.parametrize(
    ("before", "after", "reason", "evictions"),
    [
        (look(RESIDENT), look(loaded(B)), "evicted", 1),
        (look(RESIDENT), look(), "unloaded", 0),
        (look(RESIDENT, loaded(B)), look(loaded(B)), "unloaded", 0),
        (look(loaded(A, ctx=8192, expires_in=-1)), look(), "keep_alive_shortened", 0),
        (look(RESIDENT, loaded(B)), look(), "after_restart", 0),
        (look(RESIDENT), look(version="0.34.0"), "after_restart", 0),
    ],
    ids=["evicted-for-another", "unloaded", "unloaded-alone", "expired", "all-gone", "upgraded"],
)
def test_a_reload_after_a_model_left_counts_why_it_left(
    before: Observation, after: Observation, reason: str, evictions: int
) -> None:
    counts = run(
        seen(look(), (ok(ActionKind.LOAD),), before),
        seen(after, (ok(ActionKind.LOAD),), look(RESIDENT, *after.loaded)),
    )
    assert loads(counts) == {"not_loaded": 1, reason: 1}
    assert counts.models[A].evictions == evictions


def test_across_an_outage_the_reload_is_after_restart_and_the_outage_is_counted() -> None:
    counts = run(
        seen(look(RESIDENT)),
        seen(None, seconds=0.01),
        seen(None, seconds=0.01),
        seen(look(), (ok(ActionKind.LOAD),), look(RESIDENT)),
        step=10.0,
    )
    assert loads(counts) == {"after_restart": 1}
    assert counts.outages == 1
    assert counts.restarts == 1
    # down from the first failed pass (mono 110 - 0.01) to the start of the pass that
    # answered again (mono 130 - 0.5)
    assert counts.outage_seconds == pytest.approx(130 - 0.5 - (110 - 0.01))
    assert counts.outage_since is None
    assert counts.models[A].evictions == 0


def test_an_outage_going_on_is_counted_up_to_now() -> None:
    counts = run(seen(look(RESIDENT)), seen(None, seconds=0.0), step=10.0)
    assert counts.outage_since == 110.0
    assert counts.outage_seconds_at(125.0) == 15.0
    assert counts.models[A].resident_since is None  # nothing is known while it is down


def test_a_cause_is_kept_through_failed_loads_until_the_model_is_back() -> None:
    counts = run(
        seen(look(RESIDENT)),
        seen(look(loaded(B)), (failed(Failure.OLLAMA_ERROR),)),
        seen(look(loaded(B)), (failed(Failure.OLLAMA_ERROR),)),
        seen(look(loaded(B)), (ok(ActionKind.LOAD),), look(RESIDENT, loaded(B))),
        seen(look(RESIDENT, loaded(B))),
    )
    assert loads(counts) == {"evicted": 1}
    assert counts.models[A].evictions == 1
    assert dict(counts.models[A].failures) == {"ollama_error": 2}
    assert counts.models[A].gone is None


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (failed(Failure.OLLAMA_ERROR), "ollama_error"),
        (failed(Failure.UNREACHABLE, gone=False), "timeout"),
        (failed(Failure.UNREACHABLE, gone=True), "unreachable"),
        (failed(Failure.DOES_NOT_FIT), "does_not_fit"),
    ],
)
def test_failed_loads_are_counted_by_kind(outcome: Outcome, kind: str) -> None:
    counts = run(seen(look(), (outcome,)))
    assert dict(counts.models[A].failures) == {kind: 1}
    assert loads(counts) == {}


def test_a_reassertion_counts_as_a_keep_alive_load_without_a_load_time() -> None:
    short = loaded(A, ctx=8192, expires_in=120)
    counts = run(seen(look(short), (ok(ActionKind.REASSERT),), look(RESIDENT)))
    assert loads(counts) == {"keep_alive_shortened": 1}
    assert counts.models[A].load_seconds.count == 0


def test_refreshes_and_sheds_load_nothing() -> None:
    counts = run(
        seen(
            look(RESIDENT, loaded(X)),
            (ok(ActionKind.REFRESH, X), ok(ActionKind.UNLOAD, X)),
            look(RESIDENT),
        ),
        seen(look(RESIDENT)),
    )
    assert loads(counts, X) == {}
    assert counts.models[X].evictions == 0  # the keeper's own shed is no eviction


# --- other clients ------------------------------------------------------------------------


def test_a_clients_reload_with_another_num_ctx_is_counted_once_per_reload() -> None:
    other = loaded(A, ctx=4096)
    counts = run(
        seen(look(RESIDENT)),
        seen(look(other), (ok(ActionKind.RELOAD),), look(RESIDENT)),  # the keeper's reload
        seen(look(other)),  # a client again; the keeper backs off, say (issue of its own)
        seen(look(other)),  # still the same reload: not counted twice
        seen(look(loaded(A, ctx=2048))),  # yet another client context
    )
    assert dict(counts.models[A].client_reloads) == {4096: 2, 2048: 1}
    assert loads(counts) == {"other_num_ctx": 1}


def test_no_client_reload_is_counted_when_the_policy_sets_no_num_ctx() -> None:
    counts = run(seen(look(loaded(X, ctx=4096))), seen(look(loaded(X, ctx=2048))))
    assert dict(counts.models[X].client_reloads) == {}


# --- residency ----------------------------------------------------------------------------


def test_resident_seconds_add_up_over_stretches_and_keep_running_between_passes() -> None:
    counts = run(
        seen(look(), (ok(ActionKind.LOAD),), look(RESIDENT)),  # mono 100: resident from here
        seen(look(RESIDENT)),  # 115
        seen(look(), (ok(ActionKind.LOAD),), look(RESIDENT)),  # 130: gone since 129.5
        seen(look(RESIDENT)),  # 145
    )
    entry = counts.models[A]
    assert entry.resident_seconds == pytest.approx(29.5)  # 100 .. 129.5
    assert entry.resident_since == 130.0
    assert entry.resident_seconds_at(150.0) == pytest.approx(29.5 + 20)
    assert entry.resident_since_unix == NOW.timestamp()


def test_counters_survive_a_policy_without_the_model() -> None:
    counts = run(seen(look(), (ok(ActionKind.LOAD),), look(RESIDENT)))
    smaller = policy({"name": X, "tier": "extra"})
    after = count_pass(counts, History(), seen(look(RESIDENT)), smaller, mono=200.0)
    assert loads(after) == {"not_loaded": 1}  # kept
    assert after.models[A].resident_since is None  # no longer watched
    assert after.models[A].resident_seconds == pytest.approx(99.5)


def test_passes_policy_reloads_and_the_version_are_counted() -> None:
    counts = run(seen(look(RESIDENT)), seen(look(RESIDENT, version="0.34.0")))
    reloads = add_reload(add_reload({}, ReloadResult.APPLIED), ReloadResult.REJECTED)
    reloads = add_reload(reloads, ReloadResult.APPLIED)
    assert counts.passes == 2
    assert counts.pass_seconds.count == 2
    assert counts.ollama_version == "0.34.0"
    assert reloads == {"applied": 2, "rejected": 1}
    assert counts.last_pass_unix == NOW.timestamp() + 0.5


def test_the_daemons_reloads_are_counted_apart_from_any_instance() -> None:
    reloads = add_reload(add_reload({}, ReloadResult.UNCHANGED), ReloadResult.UNCHANGED)
    assert add_reload(reloads, ReloadResult.REJECTED) == {"unchanged": 2, "rejected": 1}
    assert reloads == {"unchanged": 2}  # a new value, the old one unchanged


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    h = Histogram(LOAD_SECONDS_BUCKETS)
    for value in (0.1, 0.25, 0.26, 700.0):
        h = h.observe(value)
    cumulative = dict(h.cumulative())
    assert cumulative[0.25] == 2
    assert cumulative[0.5] == 3
    assert cumulative[600.0] == 3
    assert cumulative[float("inf")] == 4 == h.count
    assert h.total == pytest.approx(700.61)
    assert Histogram((1.0,)).cumulative() == ((1.0, 0), (float("inf"), 0))
