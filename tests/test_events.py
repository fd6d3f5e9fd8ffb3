"""events.py: which log lines a pass produces, given what earlier passes saw. Pure, so every
case is a table of PassReports built by hand."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from sentinel_keeper.act.reconcile import Outcome, PassReport
from sentinel_keeper.decide.causes import missing_why
from sentinel_keeper.decide.plan import Action, ActionKind, Finding, FindingKind, Plan
from sentinel_keeper.observe.observation import LoadedModel, Observation
from sentinel_keeper.report.events import (
    History,
    advance,
    current_findings,
    pass_events,
)
from sentinel_keeper.report.logevent import LogEvent
from tests.support.planning import NOW, GiB, gpus, loaded, observation

GPU = gpus((8 * GiB, 16 * GiB))
ERROR = "ollama at http://127.0.0.1:11434 is unreachable: GET /api/version: connection refused"


def report(
    obs: Observation | None = None,
    *,
    at: float = 0.0,
    actions: tuple[Action, ...] = (),
    findings: tuple[Finding, ...] = (),
    outcomes: tuple[Outcome, ...] = (),
    final: Observation | None = None,
    pinned: tuple[str, ...] = ("a:1b",),
    extras: tuple[str, ...] = ("x:1b",),
    state_error: str | None = None,
    unreachable: bool = False,
) -> PassReport:
    started = NOW + timedelta(seconds=at)
    if unreachable:
        return PassReport(started, 0.01, pinned, extras, None, error=ERROR)
    if obs is None:
        obs = observation(gpu=GPU)
    return PassReport(
        started,
        0.5,
        pinned,
        extras,
        obs,
        plan=Plan(actions, findings),
        outcomes=outcomes,
        final=final if final is not None else obs,
        state_error=state_error,
    )


def after(*reports: PassReport) -> History:
    history = History()
    for r in reports:
        history = advance(history, r)
    return history


def names(events: list[LogEvent], at_least: str = "debug") -> list[str]:
    order = ["debug", "info", "warning", "error"]
    return [e.event for e in events if order.index(e.level) >= order.index(at_least)]


def by_name(events: list[LogEvent], name: str) -> LogEvent:
    matches = [e for e in events if e.event == name]
    assert len(matches) == 1, events
    return matches[0]


def load(model: str = "a:1b", kind: ActionKind = ActionKind.LOAD, tier: str = "pinned") -> Action:
    return Action(kind, model, tier, "pinned and not loaded", options={"num_ctx": 8192})


RESIDENT = observation(loaded_models=(loaded("a:1b"),), gpu=GPU)
STEADY = report(RESIDENT)


# --- quiet steady state ------------------------------------------------------------------


def test_a_steady_pass_logs_nothing_at_info() -> None:
    history = after(STEADY)
    events = pass_events(history, replace(STEADY, started=NOW + timedelta(seconds=15)))
    assert names(events, at_least="info") == []
    assert names(events) == ["pass"]  # the summary, at debug


def test_a_pass_that_only_refreshes_keep_alive_stays_quiet() -> None:
    refresh = Action(ActionKind.REFRESH, "x:1b", "extra", "keep_alive 1h running out")
    current = report(
        RESIDENT, actions=(refresh,), outcomes=(Outcome(refresh, ok=True, seconds=0.1),)
    )
    events = pass_events(after(STEADY), current)
    assert names(events, at_least="info") == []
    assert by_name(events, "keep_alive_refreshed").level == "debug"


# --- the first pass ------------------------------------------------------------------------


def test_first_pass_names_ollama_and_loads() -> None:
    action = load()
    current = report(
        observation(gpu=GPU),
        actions=(action,),
        outcomes=(Outcome(action, ok=True, seconds=2.5, load_duration=2.1),),
        final=RESIDENT,
    )
    events = pass_events(History(), current)
    assert names(events) == ["ollama_found", "model_loaded", "pass"]
    loaded_event = by_name(events, "model_loaded")
    assert loaded_event.level == "info"
    assert dict(loaded_event.fields) == {
        "model": "a:1b",
        "tier": "pinned",
        "seconds": 2.5,
        "load_duration": 2.1,
        "reason": "pinned and not loaded",
    }
    summary = by_name(events, "pass")
    assert summary.level == "info"
    assert summary.fields["pinned"] == "1/1"
    assert summary.fields["extras"] == "0/1"
    assert summary.fields["actions"] == 1


def test_load_duration_is_left_out_when_ollama_did_not_say() -> None:
    action = load()
    current = report(actions=(action,), outcomes=(Outcome(action, ok=True, seconds=1.0),))
    assert "load_duration" not in by_name(pass_events(History(), current), "model_loaded").fields


# --- outages -------------------------------------------------------------------------------


def test_unreachable_is_logged_once_per_outage_and_back_says_how_long() -> None:
    down1 = report(at=10, unreachable=True)
    down2 = report(at=11, unreachable=True)
    up = report(RESIDENT, at=22.5)
    first = pass_events(after(STEADY), down1)
    assert names(first) == ["ollama_unreachable"]
    assert first[0].level == "warning"
    assert first[0].fields["error"] == ERROR
    assert names(pass_events(after(STEADY, down1), down2), at_least="info") == []
    back = pass_events(after(STEADY, down1, down2), up)
    event = by_name(back, "ollama_back")
    assert event.level == "info"
    assert event.fields["outage_seconds"] == 12.5  # from the first failed pass
    assert event.fields["version"] == "0.33.0"


def test_unreachable_at_start_is_reported() -> None:
    events = pass_events(History(), report(unreachable=True))
    assert names(events) == ["ollama_unreachable"]


def test_an_outage_keeps_findings_and_does_not_report_models_missing() -> None:
    spilled = Finding(FindingKind.SPILLED, "a:1b", "a:1b is partly in CPU memory")
    before = report(RESIDENT, findings=(spilled,))
    down = report(at=5, unreachable=True)
    # Ollama restarted: the model is gone, and the same finding holds again afterwards.
    back = report(observation(gpu=GPU), at=9, findings=(spilled,))
    history = after(before, down)
    assert history.findings == (spilled,)
    events = pass_events(history, back)
    assert "model_missing" not in names(events)
    assert "model_spilled" not in names(events)
    assert "finding_cleared" not in names(events)


def test_ollama_version_change_is_logged() -> None:
    upgraded = report(replace(RESIDENT, ollama_version="0.34.0"))
    event = by_name(pass_events(after(STEADY), upgraded), "ollama_version_changed")
    assert event.fields == {"before": "0.33.0", "now": "0.34.0"}


# --- models that went away -----------------------------------------------------------------


def test_a_pinned_model_gone_between_passes_is_a_warning() -> None:
    gone = report(observation(gpu=GPU))
    event = by_name(pass_events(after(STEADY), gone), "model_missing")
    assert event.level == "warning"
    assert event.fields == {
        "model": "a:1b",
        "tier": "pinned",
        "why": "it was the only model loaded: a client unloaded it (keep_alive 0) or is "
        "reloading it with other options, or Ollama restarted",
    }


def _obs(*models: LoadedModel, version: str = "0.33.0") -> Observation:
    return replace(observation(loaded_models=models, gpu=GPU), ollama_version=version)


A, B, X = loaded("a:1b"), loaded("b:7b"), loaded("x:1b")


@pytest.mark.parametrize(
    ("before", "now", "why"),
    [
        (
            _obs(loaded("a:1b", expires_in=-1), B),
            _obs(B),
            "its keep_alive ran out",
        ),
        (
            _obs(A, B),
            _obs(version="0.34.0"),
            "Ollama was upgraded or replaced (0.33.0 -> 0.34.0), which unloads every model",
        ),
        (
            _obs(A, B),
            _obs(B, loaded("big:70b")),
            "big:70b loaded since: Ollama evicts a model to make room (shortest keep_alive "
            "first), or a client unloaded it",
        ),
        (
            _obs(A, B, X),
            _obs(),
            "all 3 models gone at once: Ollama restarted, or unloaded every model (it does "
            "after an out-of-memory)",
        ),
        (
            _obs(A),
            _obs(),
            "it was the only model loaded: a client unloaded it (keep_alive 0) or is "
            "reloading it with other options, or Ollama restarted",
        ),
        (
            _obs(A, B),
            _obs(B),
            "gone while the other models stayed: a client unloaded it (keep_alive 0) or is "
            "reloading it with other options, or Ollama evicted it",
        ),
    ],
    ids=["expired", "upgraded", "replaced", "all-gone", "only-model", "others-stayed"],
)
def test_why_a_model_is_missing_says_what_the_looks_tell(
    before: Observation, now: Observation, why: str
) -> None:
    assert missing_why(before, now, "a:1b") == why
    pinned = ("a:1b", "b:7b")
    events = pass_events(after(report(before, pinned=pinned)), report(now, pinned=pinned))
    (event,) = [e for e in events if e.event == "model_missing" and e.fields["model"] == "a:1b"]
    assert event.fields["why"] == why


def test_an_extra_whose_keep_alive_ran_out_is_info() -> None:
    with_extra = observation(loaded_models=(loaded("a:1b"), loaded("x:1b", expires_in=-1)), gpu=GPU)
    events = pass_events(after(report(with_extra)), report(RESIDENT))
    event = by_name(events, "model_missing")
    assert event.level == "info"
    assert event.fields["why"] == "its keep_alive ran out"


def test_models_outside_the_policy_are_not_reported_missing() -> None:
    foreign = observation(loaded_models=(loaded("a:1b"), loaded("other:7b")), gpu=GPU)
    assert "model_missing" not in names(pass_events(after(report(foreign)), STEADY))


def test_missing_compares_with_what_the_previous_pass_left() -> None:
    """The previous pass shed x:1b itself: its final observation no longer has it."""
    both = observation(loaded_models=(loaded("a:1b"), loaded("x:1b")), gpu=GPU)
    shed = Action(ActionKind.UNLOAD, "x:1b", "extra", "GPU free 100 MiB is below the headroom")
    previous = report(both, actions=(shed,), outcomes=(Outcome(shed, ok=True),), final=RESIDENT)
    assert "model_missing" not in names(pass_events(after(previous), STEADY))


# --- actions ------------------------------------------------------------------------------


def test_reload_says_what_num_ctx_it_was_loaded_with() -> None:
    wrong_ctx = observation(loaded_models=(loaded("a:1b", ctx=2048),), gpu=GPU)
    action = load(kind=ActionKind.RELOAD)
    current = report(wrong_ctx, actions=(action,), outcomes=(Outcome(action, ok=True),))
    event = by_name(pass_events(after(report(wrong_ctx)), current), "model_reloaded")
    assert event.level == "warning"
    assert event.fields["loaded_num_ctx"] == 2048
    assert event.fields["num_ctx"] == 8192


def test_reassert_says_what_keep_alive_was_shortened_to() -> None:
    short = observation(loaded_models=(loaded("a:1b", expires_in=299),), gpu=GPU)
    action = Action(ActionKind.REASSERT, "a:1b", "pinned", "keep_alive shortened", keep_alive=-1)
    current = report(short, actions=(action,), outcomes=(Outcome(action, ok=True),))
    event = by_name(pass_events(after(STEADY), current), "keep_alive_reasserted")
    assert event.level == "info"
    assert event.fields["shortened_to"] == "4m59s"
    assert event.fields["keep_alive"] == "forever"


def test_reassert_of_an_expired_timer() -> None:
    short = observation(loaded_models=(loaded("a:1b", expires_in=-3),), gpu=GPU)
    action = Action(ActionKind.REASSERT, "a:1b", "pinned", "keep_alive shortened")
    current = report(short, actions=(action,), outcomes=(Outcome(action, ok=True),))
    event = by_name(pass_events(after(STEADY), current), "keep_alive_reasserted")
    assert event.fields["shortened_to"] == "0s (expired)"


def test_shed_and_pull_events() -> None:
    shed = Action(ActionKind.UNLOAD, "x:1b", "extra", "GPU free 100 MiB is below the headroom")
    pull = Action(ActionKind.PULL, "a:1b", "pinned", "not installed; pull: true")
    current = report(
        RESIDENT,
        actions=(shed, pull),
        outcomes=(Outcome(shed, ok=True), Outcome(pull, ok=True, seconds=30.0)),
    )
    events = pass_events(after(STEADY), current)
    assert by_name(events, "extra_shed").fields["reason"] == shed.reason
    assert by_name(events, "model_pulled").fields["seconds"] == 30.0


@pytest.mark.parametrize(
    ("action", "event", "level"),
    [
        (load(), "model_load_failed", "error"),
        (load("x:1b", tier="extra"), "model_load_failed", "warning"),
        (Action(ActionKind.UNLOAD, "x:1b", "extra", "shed"), "extra_shed_failed", "warning"),
        (Action(ActionKind.PULL, "a:1b", "pinned", "pull"), "model_pull_failed", "error"),
    ],
)
def test_failures(action: Action, event: str, level: str) -> None:
    outcome = Outcome(action, ok=False, seconds=1.5, error="ollama said 500: out of memory")
    events = pass_events(after(STEADY), report(actions=(action,), outcomes=(outcome,)))
    found = by_name(events, event)
    assert found.level == level
    assert found.fields["error"] == "ollama said 500: out of memory"
    assert by_name(events, "pass").fields["failed"] == 1


def test_skipped_actions_are_debug_only() -> None:
    action = load()
    skipped = Outcome(action, ok=False, skipped=True, error="backing off")
    events = pass_events(
        after(report(observation(gpu=GPU))),
        report(observation(gpu=GPU), actions=(action,), outcomes=(skipped,)),
    )
    assert names(events, at_least="info") == []
    assert by_name(events, "action_skipped").fields["why"] == "backing off"


# --- findings: once when they appear, once when they clear ---------------------------------


SKIPPED_X = Finding(
    FindingKind.EXTRA_SKIPPED,
    "x:1b",
    "x:1b not loaded: needs 5.0 GiB + headroom 512 MiB, GPU free is 4.0 GiB",
    warning=False,
    data={"needed": 5 * GiB, "headroom": 512 * 1024**2, "free": 4 * GiB},
)


def test_a_finding_is_logged_when_it_appears_with_its_numbers() -> None:
    events = pass_events(after(STEADY), report(RESIDENT, findings=(SKIPPED_X,)))
    event = by_name(events, "extra_skipped")
    assert event.level == "info"
    assert event.fields["model"] == "x:1b"
    assert event.fields["needed"] == 5 * GiB
    assert event.fields["free"] == 4 * GiB
    assert event.fields["message"] == SKIPPED_X.message


def test_a_finding_that_stays_is_not_logged_again_even_if_its_numbers_move() -> None:
    moved = replace(SKIPPED_X, data={**SKIPPED_X.data, "free": 3 * GiB})
    history = after(report(RESIDENT, findings=(SKIPPED_X,)))
    assert names(pass_events(history, report(RESIDENT, findings=(moved,))), "info") == []


def test_a_cleared_finding_is_logged_once_at_info() -> None:
    history = after(report(RESIDENT, findings=(SKIPPED_X,)))
    events = pass_events(history, STEADY)
    event = by_name(events, "finding_cleared")
    assert event.level == "info"
    assert event.fields == {"kind": "extra_skipped", "model": "x:1b"}
    assert names(pass_events(advance(history, STEADY), STEADY), "info") == []


def test_warning_findings_are_warnings() -> None:
    missing = Finding(FindingKind.NOT_INSTALLED, "a:1b", "a:1b is not installed")
    nomem = Finding(FindingKind.NO_MEMORY_INFO, None, "GPU memory is unknown")
    events = pass_events(after(STEADY), report(RESIDENT, findings=(missing, nomem)))
    assert by_name(events, "model_not_installed").level == "warning"
    no_info = by_name(events, "no_memory_info")
    assert no_info.level == "warning"
    assert "model" not in no_info.fields


def test_extras_findings_survive_a_pass_that_did_not_evaluate_extras() -> None:
    """While a pinned model loads, the planner skips extras: their findings vanish from that
    plan, which must not read as 'cleared' (and then 'appeared' again next pass)."""
    history = after(report(RESIDENT, findings=(SKIPPED_X,)))
    action = load()
    busy = report(observation(gpu=GPU), actions=(action,), outcomes=(Outcome(action, ok=True),))
    assert "finding_cleared" not in names(pass_events(history, busy))
    assert current_findings(history, busy) == (SKIPPED_X,)
    history = advance(history, busy)
    assert "extra_skipped" not in names(
        pass_events(history, report(RESIDENT, findings=(SKIPPED_X,)))
    )


def test_pinned_findings_clear_even_in_a_busy_pass() -> None:
    spilled = Finding(FindingKind.SPILLED, "a:1b", "a:1b is partly in CPU memory")
    history = after(report(RESIDENT, findings=(spilled,)))
    action = load()
    busy = report(observation(gpu=GPU), actions=(action,), outcomes=(Outcome(action, ok=True),))
    assert by_name(pass_events(history, busy), "finding_cleared").fields["kind"] == "model_spilled"


# --- NVML and the state file ----------------------------------------------------------------


def test_nvml_unavailable_is_logged_once_and_its_return_too() -> None:
    no_gpu = report(observation(loaded_models=(loaded("a:1b"),)))  # planning's UNKNOWN_GPU
    first = pass_events(History(), no_gpu)
    assert by_name(first, "nvml_unavailable").fields["reason"] == (
        "NVML library libnvidia-ml.so.1 not found"
    )
    assert "nvml_unavailable" not in names(pass_events(after(no_gpu), no_gpu))
    # the reason is said once, not again on every pass line
    for events in (first, pass_events(after(no_gpu), no_gpu)):
        assert by_name(events, "pass").fields["gpu"] == "unknown"
    back = pass_events(after(no_gpu), STEADY)
    assert by_name(back, "nvml_available").fields["gpu"] == "GPU0 8.0 of 16.0 GiB free"


def test_state_errors_are_logged_when_they_change_and_when_they_clear() -> None:
    broken = report(RESIDENT, state_error="cannot write /var/lib/x/state.json: Read-only")
    assert by_name(pass_events(after(STEADY), broken), "state_unwritable").level == "warning"
    assert names(pass_events(after(broken), broken), "info") == []
    assert "state_writable" in names(pass_events(after(broken), STEADY))
