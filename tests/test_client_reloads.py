"""Never fight a client: the back-off rule as tables (pure), the planner leaving a held
model alone with one finding that says what to set, and a simulated hour against the Ollama
double with a client that always sends another num_ctx."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sentinel_keeper.client_reloads import Hold, Judgement, Tally, judge
from sentinel_keeper.events import History, advance, pass_events
from sentinel_keeper.metrics.counts import Counts, count_pass
from sentinel_keeper.observation import LoadedModel, Observation
from sentinel_keeper.ollama import OllamaClient
from sentinel_keeper.plan import ActionKind, FindingKind, plan
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.reconcile import Reconciler
from tests.support.ollama_double import FakeModel, GiB, ManualClock, OllamaDouble
from tests.support.planning import NOW, gpus, loaded, observation, policy

A = "a:1b"
POLICY = policy({"name": A, "options": {"num_ctx": 8192}})
MINUTE = 60.0


def look(*models: LoadedModel, at: float = 0.0) -> Observation:
    return replace(
        observation(loaded_models=models, gpu=gpus((20 * GiB, 24 * GiB))),
        at=NOW + timedelta(seconds=at),
    )


def ours(at: float = 0.0) -> Observation:
    return look(loaded(A, ctx=8192), at=at)


def theirs(at: float = 0.0, ctx: int = 4096, expires_in: float | None = 300) -> Observation:
    return look(loaded(A, ctx=ctx, expires_in=expires_in), at=at)


def gone(at: float = 0.0) -> Observation:
    return look(at=at)


def walk(*looks: Observation, start: Observation | None = None) -> list[Judgement]:
    """Judge each look in turn; the previous pass's last look is the keeper's own load when
    the look before was not on hold (the keeper reloaded it), else that look itself."""
    memory: Mapping[str, Tally] = {}
    before = start
    out = []
    for now in looks:
        judged = judge(memory, POLICY, before, now)
        out.append(judged)
        memory = judged.memory
        held = A in judged.holds and not judged.holds[A].trying
        before = (
            now if held or A not in now.loaded_by_name() else ours((now.at - NOW).total_seconds())
        )
    return out


def held(j: Judgement) -> bool:
    return A in j.holds and not j.holds[A].trying


def test_three_client_reloads_within_the_window_put_the_model_on_hold() -> None:
    steps = walk(theirs(0), theirs(60), theirs(120), theirs(180))
    assert [held(j) for j in steps] == [False, False, True, True]
    hold = steps[2].holds[A]
    assert (hold.client_ctx, hold.policy_ctx, hold.reloads) == (4096, 8192, 3)
    assert hold.until == NOW + timedelta(seconds=120 + 1800)


def test_reloads_further_apart_than_the_window_never_hold() -> None:
    steps = walk(theirs(0), theirs(400), theirs(800), theirs(1200))
    assert not any(held(j) for j in steps)


def test_the_hold_ends_when_the_clients_stop() -> None:
    # the model seen with the policy's context again (someone loaded it so)
    steps = walk(theirs(0), theirs(60), theirs(120), ours(180))
    assert [held(j) for j in steps] == [False, False, True, False]
    assert steps[-1].memory[A].hold_until is None
    later = judge(steps[-1].memory, POLICY, ours(180), ours(800))
    assert later.memory == {}  # the reloads left the window: forgotten
    # its timer ran out: Ollama unloaded it, the clients are gone
    steps = walk(theirs(0), theirs(60), theirs(120, expires_in=30), gone(200))
    assert not held(steps[-1]) and steps[-1].memory == {}


def test_one_missing_look_is_no_proof_two_are() -> None:
    """A client reloading it hides it from /api/ps until the reload is done."""
    steps = walk(theirs(0), theirs(60), theirs(120), gone(135), theirs(150))
    assert [held(j) for j in steps] == [False, False, True, True, True]
    steps = walk(theirs(0), theirs(60), theirs(120), gone(135), gone(150))
    assert [held(j) for j in steps] == [False, False, True, True, False]


def test_after_the_cool_down_one_try_and_a_quick_relapse_holds_again_at_once() -> None:
    cool = 120 + 1800
    steps = walk(theirs(0), theirs(60), theirs(120), theirs(cool), theirs(cool + 30))
    assert [held(j) for j in steps] == [False, False, True, False, True]
    trying = steps[3].holds[A]
    assert trying.trying  # reported as the same condition, while the keeper tries once
    assert steps[4].holds[A].until == NOW + timedelta(seconds=cool + 30 + 1800)


def test_after_the_cool_down_clients_that_stopped_are_forgotten() -> None:
    cool = 120 + 1800
    steps = walk(theirs(0), theirs(60), theirs(120), theirs(cool), ours(cool + 15))
    assert A in steps[4].holds and steps[4].holds[A].trying  # until the window passes
    later = judge(steps[4].memory, POLICY, ours(cool + 15), ours(cool + 700))
    assert later.holds == {} and later.memory == {}


def test_no_num_ctx_in_the_policy_or_after_zero_means_no_hold() -> None:
    free = policy({"name": A})
    assert judge({}, free, None, theirs(0)).memory == {}
    never = policy({"name": A, "options": {"num_ctx": 8192}}, reload_backoff={"after": 0})
    memory: dict[str, Tally] = {}
    for at in (0, 60, 120, 180):
        judged = judge(memory, never, ours(at - 1), theirs(at))
        memory = dict(judged.memory)
        assert judged.holds == {}


def test_the_planner_leaves_a_held_model_alone_and_says_what_to_set() -> None:
    hold = Hold(A, 4096, 8192, 3, NOW + timedelta(minutes=30))
    now = theirs(0)
    assert [a.kind for a in plan(POLICY, now, NOW).actions] == [ActionKind.RELOAD]
    held_plan = plan(POLICY, now, NOW, holds={A: hold})
    assert held_plan.actions == ()
    (finding,) = held_plan.findings
    assert finding.kind is FindingKind.RELOAD_HELD and finding.warning
    assert "clients reloaded a:1b with num_ctx 4096 3 times within 10m" in finding.message
    assert "set options.num_ctx: 4096 for a:1b in the policy" in finding.message
    # 4096 is what a client sending no num_ctx gets on a GPU of 24 GiB? No: 32768. The
    # advice about OLLAMA_CONTEXT_LENGTH comes only when the clients' value is the automatic one
    assert "OLLAMA_CONTEXT_LENGTH" not in finding.message
    auto = Hold(A, 32768, 8192, 3, NOW + timedelta(minutes=30))
    (finding,) = plan(POLICY, look(loaded(A, ctx=32768)), NOW, holds={A: auto}).findings
    assert "OLLAMA_CONTEXT_LENGTH: 8192 in ollama.environment" in finding.message
    # missing while held (a client's reload under way): not loaded this pass
    assert plan(POLICY, gone(), NOW, holds={A: hold}).actions == ()
    # trying after the cool-down: reloaded, and the same finding stays (no new warning)
    trying = plan(POLICY, now, NOW, holds={A: replace(hold, trying=True)})
    assert [a.kind for a in trying.actions] == [ActionKind.RELOAD]
    assert [f.key for f in trying.findings] == [f.key for f in held_plan.findings]


# --- a simulated hour against the double ---------------------------------------------------


def _client(url: str, num_ctx: int) -> None:
    body = {"model": A, "options": {"num_ctx": num_ctx}, "stream": False}
    request = urllib.request.Request(
        url + "/api/generate", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


@pytest.mark.parametrize(("after", "most"), [(3, 6), (0, 130)], ids=["back-off", "no-back-off"])
def test_a_client_that_always_sends_another_num_ctx_is_not_fought_for_an_hour(
    after: int, most: int
) -> None:
    clock = ManualClock(1_800_000_000.0)
    with OllamaDouble([FakeModel(A, size=1 * GiB)], clock=clock, vram_total=24 * GiB) as double:
        text = (
            f"ollama: {{url: '{double.url}'}}\nreload_backoff: {{after: {after}}}\n"
            f"models:\n  - name: {A}\n    options: {{num_ctx: 8192}}\n"
        )
        policy_ = parse_policy(text, "p.yaml")
        client = OllamaClient(double.url, timeout=2, load_timeout=5)
        reconciler = Reconciler(
            policy_, client, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
        )
        history, warnings, keeper_loads, counts = History(), [], 0, Counts()
        for step in range(240):  # an hour of 15 s passes; the client asks every 30 s
            double.advance(15)
            if step % 2 == 1:
                _client(double.url, 4096)
            report = reconciler.run_pass()
            keeper_loads += sum(
                1 for o in report.outcomes if o.attempted and o.action.is_load and o.ok
            )
            warnings += [
                e for e in pass_events(history, report) if e.event == "client_reload_backoff"
            ]
            counts = count_pass(counts, history, report, policy_, mono=step * 15.0)
            history = advance(history, report)
        client.close()
        client_reloads = sum(1 for r in double.load_log if r.model == A) - keeper_loads
    print(f"after={after}: {keeper_loads} keeper loads, {client_reloads} client reloads in an hour")
    assert keeper_loads <= most
    entry = counts.models[A]
    assert sum(entry.client_reloads.values()) == client_reloads  # every one seen and counted
    assert entry.backoffs == (1 if after else 0)
    if after:
        assert len(warnings) == 1, warnings
        fields = warnings[0].fields
        assert (fields["num_ctx"], fields["policy_num_ctx"]) == (4096, 8192)
        assert warnings[0].level == "warning"
    else:
        assert keeper_loads > 100  # the ping-pong the back-off prevents
