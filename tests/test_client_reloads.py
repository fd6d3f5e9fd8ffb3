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

from sentinel_keeper.act.reconcile import Reconciler
from sentinel_keeper.decide.client_reloads import Hold, Judgement, Tally, judge
from sentinel_keeper.decide.plan import ActionKind, FindingKind, plan
from sentinel_keeper.metrics.counts import Counts, count_pass
from sentinel_keeper.observe.observation import LoadedModel, Observation
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.report.events import History, advance, pass_events
from tests.support.ollama_double import FakeModel, GiB, ManualClock, OllamaDouble
from tests.support.planning import NOW, gpus, installed, loaded, observation, policy

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


def theirs(
    at: float, *, used: float | None = None, ctx: int = 4096, keep: float = 300
) -> Observation:
    """The clients' instance, their last request ended at ``used`` (default: ``at``), with
    a keep_alive of ``keep`` seconds."""
    end = at if used is None else used
    return look(loaded(A, ctx=ctx, expires_in=end + keep), at=at)


def gone(at: float = 0.0) -> Observation:
    return look(at=at)


def walk(*looks: Observation, rules: Policy = POLICY) -> list[Judgement]:
    """Judge each look in turn. The previous pass's last look is that look itself while the
    model is on hold, else the keeper's own load (a reload or a load with the policy's
    options)."""
    memory: Mapping[str, Tally] = {}
    before: Observation | None = ours(-15)  # the keeper had it as the policy says
    out = []
    for now in looks:
        judged = judge(memory, rules, before, now)
        out.append(judged)
        memory = judged.memory
        at = (now.at - NOW).total_seconds()
        before = now if held(judged) else ours(at)
    return out


def held(j: Judgement) -> bool:
    return A in j.holds and not j.holds[A].trying


def kind(j: Judgement) -> str | None:
    return j.holds[A].kind if held(j) else None


def test_a_client_using_the_model_is_left_to_it_until_idle() -> None:
    # the first time: reloaded back as soon as it has been idle for `quiet` (5 s)
    steps = walk(theirs(0), theirs(3, used=0), theirs(6, used=0))
    assert [kind(j) for j in steps] == ["busy", "busy", None]
    hold = steps[0].holds[A]
    assert (hold.client_ctx, hold.policy_ctx, hold.reloads, hold.until) == (4096, 8192, 1, None)
    assert hold.wait == 5


def test_each_return_of_the_same_num_ctx_doubles_the_wait_up_to_the_cool_down() -> None:
    # another request to its instance is a return: 10 s
    steps = walk(theirs(0), theirs(4), theirs(12, used=4), theirs(15, used=4))
    assert [kind(j) for j in steps] == ["busy", "busy", "busy", None]
    assert [j.holds[A].wait for j in steps[:3]] == [5, 10, 10]
    # a reload with it again, after the keeper reloaded it back, is a return too
    # (and it came back after 8 s: at least twice that)
    steps = walk(theirs(0), theirs(6, used=0), theirs(8), theirs(25, used=8))
    assert [kind(j) for j in steps] == ["busy", None, "busy", None]
    assert steps[2].holds[A].wait == 16 and steps[2].holds[A].reloads == 2
    # a client that keeps coming back: 5, 10, 20, ... and at most the cool-down
    many = walk(*(theirs(t) for t in range(0, 40, 2)))
    waits = [j.holds[A].wait for j in many if kind(j) == "busy"]
    assert waits[:5] == [5, 10, 20, 40, 80] and max(waits) == 1800
    # a return of another num_ctx starts from the first wait
    steps = walk(theirs(0), theirs(6, used=0), theirs(20, ctx=2048))
    assert kind(steps[-1]) == "busy" and steps[-1].holds[A].wait == 5
    # returns older than `within` are forgotten: 5 s again
    later = walk(theirs(0), theirs(4), theirs(15, used=4), theirs(700))
    assert [kind(j) for j in later] == ["busy", "busy", None, "busy"]
    assert later[-1].holds[A].wait == 5


def test_the_wait_is_at_least_twice_the_longest_time_the_client_took_to_come_back() -> None:
    # the client came back 20 s after its first request, once the keeper had reloaded it
    # back (cold for it): now it is waited for 40 s, not 10, so its next request finds it
    steps = walk(theirs(0), theirs(6, used=0), theirs(20), theirs(45, used=20), theirs(61, used=20))
    assert [kind(j) for j in steps] == ["busy", None, "busy", "busy", None]
    assert steps[2].holds[A].wait == 40
    # the longest of its gaps counts, while both ends are within `within` (10 minutes)
    steps = walk(theirs(0), theirs(6, used=0), theirs(30), theirs(40), theirs(50))
    assert [j.holds[A].wait for j in steps if kind(j) == "busy"] == [5, 60, 60, 60]
    # and never more than the cool-down (30 minutes)
    slow = walk(theirs(0), theirs(6, used=0), theirs(590), theirs(1100, used=590))
    assert slow[2].holds[A].wait == 1180 and kind(slow[3]) == "busy"
    short = policy({"name": A, "options": {"num_ctx": 8192}}, reload_backoff={"cool_down": 900})
    capped = walk(theirs(0), theirs(6, used=0), theirs(590), rules=short)
    assert capped[2].holds[A].wait == 900
    # a one-off client is reloaded back after the first wait, as before
    once = walk(theirs(0), theirs(6, used=0))
    assert [kind(j) for j in once] == ["busy", None]


def test_a_request_running_past_its_keep_alive_is_use_not_idleness() -> None:
    # expires_at in the past while listed: a request is running (Ollama unloads an idle one)
    steps = walk(theirs(0, keep=30), theirs(100, used=0, keep=30), theirs(300, used=0, keep=30))
    assert [kind(j) for j in steps] == ["busy", "busy", "busy"]


def test_three_client_reloads_within_the_window_back_off() -> None:
    steps = walk(
        theirs(0), theirs(10, used=0),  # a client, then idle: reloaded back
        theirs(20), theirs(70, used=20),  # again (back after 20 s: a 40 s wait)
        theirs(150),  # a third time within 10 minutes
        theirs(420, used=150),  # idle, but on hold: not reloaded back
    )  # fmt: skip
    assert [kind(j) for j in steps] == ["busy", None, "busy", None, "backoff", "backoff"]
    hold = steps[4].holds[A]
    assert hold.reloads == 3 and hold.until == NOW + timedelta(seconds=150 + 1800)


def test_a_client_keeping_it_busy_for_the_window_backs_off() -> None:
    steps = walk(*(theirs(t) for t in range(0, 661, 30)))
    kinds = [kind(j) for j in steps]
    assert kinds[:20] == ["busy"] * 20  # 0 .. 570 s
    assert set(kinds[20:]) == {"backoff"}  # from 600 s: said once, as a warning


def test_reloads_further_apart_than_the_window_never_back_off() -> None:
    looks = []
    for start in (0, 700, 1400, 2100):
        looks += [theirs(start), theirs(start + 130, used=start)]
    steps = walk(*looks)
    assert [kind(j) for j in steps] == ["busy", None] * 4


def test_the_hold_ends_when_the_clients_stop() -> None:
    # the model seen with the policy's context again (someone loaded it so)
    steps = walk(theirs(0), ours(60))
    assert [held(j) for j in steps] == [True, False]
    assert steps[-1].memory[A].used_at is None
    later = judge(steps[-1].memory, POLICY, ours(60), ours(700))
    assert later.memory == {}  # the reload left the window: forgotten
    # its timer ran out: Ollama unloaded it, the clients are gone (what the wait learnt is
    # kept for the window)
    steps = walk(theirs(0, keep=3), gone(4))
    assert [held(j) for j in steps] == [True, False]
    assert steps[-1].memory[A] == Tally(returns=((NOW, 4096),))


def test_one_missing_look_is_no_proof_two_are() -> None:
    """A client reloading it hides it from /api/ps until the reload is done."""
    steps = walk(theirs(0), gone(2), theirs(4))
    assert [held(j) for j in steps] == [True, True, True]
    steps = walk(theirs(0), gone(2), gone(4))
    assert [held(j) for j in steps] == [True, True, False]


def test_a_restart_of_ollama_forgets_the_hold_at_once() -> None:
    """A restart empties Ollama: nothing of the clients' instance is left to protect."""
    extra = loaded("e:1b", ctx=2048, expires_in=3600)
    busy = look(loaded(A, ctx=4096, expires_in=300), extra)
    first = judge({}, POLICY, ours(-15), busy)
    assert kind(first) == "busy"
    # the reconciler saw Ollama go away: forgotten, whatever else /api/ps shows
    after = judge(first.memory, POLICY, busy, gone(2), restarted=True)
    assert after.holds == {}
    # a quick restart between two looks: every other model the previous look listed, with
    # time left on its timer, is gone too
    after = judge(first.memory, POLICY, busy, gone(2))
    assert after.holds == {}
    # a client's reload under way hides only its model: still left to it
    only = judge(first.memory, POLICY, busy, look(extra, at=2))
    assert kind(only) == "busy"


def test_after_the_cool_down_one_try_and_a_quick_relapse_holds_again_at_once() -> None:
    def t(at: float, used: float | None = None) -> Observation:
        return theirs(at, used=used, keep=7200)  # a client's keep_alive of 2h

    start = [t(0), t(10, used=0), t(20), t(70, used=20), t(150)]
    cool = 150 + 1800
    steps = walk(*start, t(cool, used=150), t(cool + 30))
    assert kind(steps[4]) == "backoff"
    trying = steps[5].holds[A]
    assert trying.trying  # idle after the cool-down: reloaded, reported as the same condition
    assert kind(steps[6]) == "backoff"  # a client at once again: on hold again
    assert steps[6].holds[A].until == NOW + timedelta(seconds=cool + 30 + 1800)


def test_no_num_ctx_in_the_policy_or_after_zero_means_no_hold() -> None:
    free = policy({"name": A})
    assert judge({}, free, None, theirs(0)).memory == {}
    never = policy({"name": A, "options": {"num_ctx": 8192}}, reload_backoff={"after": 0})
    memory: Mapping[str, Tally] = {}
    for at in (0, 60, 120, 180):
        judged = judge(memory, never, ours(at - 1), theirs(at))
        memory = judged.memory
        assert judged.holds == {}


def test_the_planner_leaves_a_held_model_alone_and_says_what_to_set() -> None:
    hold = Hold(A, 4096, 8192, 3, NOW + timedelta(minutes=30))
    now = theirs(0)
    assert [a.kind for a in plan(POLICY, now, NOW).actions] == [ActionKind.RELOAD]
    held_plan = plan(POLICY, now, NOW, holds={A: hold})
    assert held_plan.actions == ()
    (finding,) = held_plan.findings
    assert finding.kind is FindingKind.RELOAD_HELD and finding.warning
    assert "clients reloaded a:1b with num_ctx 4096 3 times" in finding.message
    assert "set options.num_ctx: 4096 for a:1b in the policy" in finding.message
    # on 24 GiB a client sending no num_ctx gets 32768: the align_context advice is for that
    assert "align_context" not in finding.message
    auto = Hold(A, 32768, 8192, 3, NOW + timedelta(minutes=30))
    (finding,) = plan(POLICY, look(loaded(A, ctx=32768)), NOW, holds={A: auto}).findings
    assert "ollama.align_context: true makes that 8192" in finding.message
    # in use by a client: said at info, not a warning
    busy = Hold(A, 4096, 8192, 1, None, kind="busy")
    (finding,) = plan(POLICY, now, NOW, holds={A: busy}).findings
    assert finding.kind is FindingKind.CLIENT_BUSY and not finding.warning
    assert "a client uses a:1b with num_ctx 4096: left to it until it has been idle" in (
        finding.message
    )
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


# client: "always" sends another num_ctx every 30 s; "one-off" sends it once, at 10:15,
# while a pinned client (the policy's num_ctx) asks every minute; "returning" sends it 5
# times 30 to 45 s apart from 10:15, the pinned client asking every minute before and after
# (what the residency benchmark's other-num_ctx client does). most: the keeper's loads at
# most; pinned_cold: the pinned client's requests that met the model at the other num_ctx;
# other_cold: the other client's requests that met it at the policy's (None: not counted).
RETURNING = (41, 43, 46, 48, 51)
HOUR_TABLE = [
    ("always", 3, 2, None, None),
    ("always", 0, 130, None, None),
    ("one-off", 3, 2, 0, 1),
    # its first request is cold whatever the keeper does; its second is cold because the
    # keeper reloaded it back after 5 s; from then on it is waited for twice its gap. The
    # pinned client's request 15 s after its last one meets the model at 4096 (as it would
    # with no keeper); the next, a minute later, finds it reloaded back.
    ("returning", 3, 3, 1, 2),
]


@pytest.mark.parametrize(
    ("client", "after", "most", "pinned_cold", "other_cold"),
    HOUR_TABLE,
    ids=["back-off", "no-back-off", "one-off", "returning"],
)
def test_a_client_that_always_sends_another_num_ctx_is_not_fought_for_an_hour(
    client: str, after: int, most: int, pinned_cold: int | None, other_cold: int | None
) -> None:
    clock = ManualClock(1_800_000_000.0)
    with OllamaDouble([FakeModel(A, size=1 * GiB)], clock=clock, vram_total=24 * GiB) as double:
        text = (
            f"ollama: {{url: '{double.url}'}}\nreload_backoff: {{after: {after}}}\n"
            f"models:\n  - name: {A}\n    options: {{num_ctx: 8192}}\n"
        )
        policy_ = parse_policy(text, "p.yaml")
        client_ = OllamaClient(double.url, timeout=2, load_timeout=5)
        reconciler = Reconciler(
            policy_, client_, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
        )
        history, warnings, keeper_loads, counts = History(), [], 0, Counts()
        cold, other = 0, 0
        others = {"one-off": (41,), "returning": RETURNING}.get(client, ())
        for step in range(240):  # an hour of 15 s passes
            double.advance(15)
            if client == "always" and step % 2 == 1:
                _client(double.url, 4096)
            if step in others:
                loads = double.load_count
                _client(double.url, 4096)
                other += double.load_count - loads
            if others and step % 4 == 0 and step > 0 and not others[0] <= step <= others[-1]:
                loads = double.load_count
                _client(double.url, 8192)
                cold += double.load_count - loads
            report = reconciler.run_pass()
            keeper_loads += sum(
                1 for o in report.outcomes if o.attempted and o.action.is_load and o.ok
            )
            warnings += [
                e for e in pass_events(history, report) if e.event == "client_reload_backoff"
            ]
            counts = count_pass(counts, history, report, policy_, mono=step * 15.0)
            history = advance(history, report)
        client_.close()
        client_reloads = sum(1 for r in double.load_log if r.model == A) - keeper_loads
    print(
        f"{client} after={after}: {keeper_loads} keeper loads, {client_reloads} client "
        f"reloads, {cold} cold pinned requests, {other} cold other-num_ctx requests in an hour"
    )
    assert keeper_loads <= most
    entry = counts.models[A]
    if others:
        # reloaded back once idle, never put on hold
        assert cold == pinned_cold and other == other_cold
        assert client_reloads == other_cold and entry.backoffs == 0 and warnings == []
        return
    assert sum(entry.client_reloads.values()) == client_reloads  # every one seen and counted
    assert entry.backoffs == (1 if after else 0)
    if after:
        assert len(warnings) == 1, warnings
        fields = warnings[0].fields
        assert (fields["num_ctx"], fields["policy_num_ctx"]) == (4096, 8192)
        assert warnings[0].level == "warning"
    else:
        assert keeper_loads > 100  # the ping-pong the back-off prevents


def test_a_first_look_has_nothing_to_compare_with() -> None:
    """`once` and a daemon's first pass reload a model found at another num_ctx."""
    first = judge({}, POLICY, None, theirs(0))
    assert first.holds == {} and first.memory == {}
    assert [a.kind for a in plan(POLICY, theirs(0), NOW, holds=first.holds).actions] == [
        ActionKind.RELOAD
    ]


@pytest.mark.parametrize("seen_down", [True, False], ids=["outage-seen", "quick-restart"])
def test_after_an_ollama_restart_the_pinned_model_comes_back_first(seen_down: bool) -> None:
    """A client had the pinned model at its own num_ctx (left to it), an extra was loaded;
    Ollama restarts. The first pass after it loads the pinned model, before the extra: the
    restart left nothing of the client's load to protect."""
    clock = ManualClock(1_800_000_000.0)
    models = [FakeModel(A, size=1 * GiB), FakeModel("e:1b", size=1 * GiB)]
    with OllamaDouble(models, clock=clock, vram_total=24 * GiB) as double:
        text = (
            f"ollama: {{url: '{double.url}'}}\nvram: {{budget: 20GiB}}\n"
            f"models:\n  - name: {A}\n    options: {{num_ctx: 8192}}\n"
            "  - {name: 'e:1b', tier: extra}\n"
        )
        client = OllamaClient(double.url, timeout=2, load_timeout=5)
        reconciler = Reconciler(
            parse_policy(text, "p.yaml"),
            client,
            clock=lambda: datetime.fromtimestamp(double.now(), UTC),
        )
        reconciler.settle()
        assert sorted(i.name for i in double.loaded()) == [A, "e:1b"]
        double.advance(15)
        _client(double.url, 4096)
        held = reconciler.run_pass()
        assert [f.kind for f in held.plan.findings] == [FindingKind.CLIENT_BUSY]
        double.advance(1)
        if seen_down:
            double.stop()
            assert not reconciler.run_pass().reachable
            double.restart()
        else:
            double.restart()
        double.advance(3)
        after = reconciler.run_pass()
        client.close()
    assert [(o.action.kind, o.action.model) for o in after.outcomes] == [(ActionKind.LOAD, A)]
    assert after.plan.findings == ()
    assert double.instance(A).num_ctx == 8192  # type: ignore[union-attr]


def test_extras_wait_while_a_pinned_model_left_to_a_client_is_missing() -> None:
    """Missing while on hold: a client's reload under way; it comes back before any extra."""
    both = policy(
        {"name": A, "options": {"num_ctx": 8192}},
        {"name": "e:1b", "tier": "extra"},
        vram={"budget": "20GiB"},
    )
    now = replace(
        observation(installed_models=(installed(A), installed("e:1b")), gpu=gpus()), at=NOW
    )
    busy = Hold(A, 4096, 8192, 1, None, kind="busy")
    assert plan(both, now, NOW, holds={A: busy}).actions == ()
    # not on hold: the pinned model is loaded, and the extra waits for the next pass
    assert [(a.kind, a.model) for a in plan(both, now, NOW).actions] == [(ActionKind.LOAD, A)]
