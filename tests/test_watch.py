"""watch.look: which disappearances between passes bring the next pass forward, and when."""

from __future__ import annotations

from datetime import timedelta

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.daemon.watch import Look, WatchMemory, look
from sentinel_keeper.observe.observation import LoadedModel
from tests.support.planning import NOW, loaded, observation

PINNED = ("a:1b", "b:7b")
EXTRAS = ("x:1b",)
SETTLE = 3.5


def report(*resident: str, final: tuple[str, ...] | None = None) -> PassReport:
    obs = observation(loaded_models=tuple(loaded(n, ctx=2048) for n in resident))
    after = None
    if final is not None:
        after = observation(loaded_models=tuple(loaded(n, ctx=2048) for n in final))
    return PassReport(NOW, 0.1, PINNED, EXTRAS, obs, final=after)


def looks(last: PassReport | None, *seen: tuple[float, tuple[LoadedModel, ...]]) -> list[Look]:
    """Successive looks at (seconds, /api/ps then), each remembering the one before."""
    memory = WatchMemory()
    out = []
    for at, ps in seen:
        result = look(last, ps, now=at, memory=memory, settle=SETTLE)
        memory = result.memory
        out.append(result)
    return out


def ps(*names: str, ctx: int = 2048) -> tuple[LoadedModel, ...]:
    return tuple(loaded(n, ctx=ctx) for n in names)


def test_nothing_gone_nothing_asked() -> None:
    (seen,) = looks(report("a:1b", "b:7b", "x:1b"), (0.0, ps("a:1b", "b:7b", "x:1b")))
    assert seen.due is None and seen.events == ()


def test_a_restart_empties_everything_and_counts_once_it_stays_empty() -> None:
    # Ollama lists a reloading model only when it is ready again: one empty look may be a
    # client's reload of the only model, so the pass waits for the look after SETTLE.
    first, early, settled = looks(report("a:1b", "b:7b"), (0.0, ()), (2.0, ()), (4.0, ()))
    assert first.due is None and early.due is None
    assert settled.due == "pinned model gone: a:1b, b:7b"


def test_another_model_in_its_place_counts_at_once() -> None:
    (seen,) = looks(report("a:1b", "b:7b"), (0.0, ps("a:1b", "big:70b")))
    assert seen.due == "pinned model gone: b:7b (big:70b loaded in its place)"


def test_eviction_seen_in_two_looks_counts_when_the_other_model_appears() -> None:
    # Ollama unloads the pinned model, then loads the other one, listed only when ready.
    first, second = looks(report("a:1b", "b:7b"), (0.0, ps("a:1b")), (2.0, ps("a:1b", "big:70b")))
    assert first.due is None
    assert second.due == "pinned model gone: b:7b (big:70b loaded in its place)"


def test_a_model_listed_before_did_not_take_its_place() -> None:
    # foreign:3b appeared after the pass (a client's), then a client reloads b:7b: b:7b's
    # absence is the reload's gap, not an eviction for foreign:3b.
    last = report("a:1b", "b:7b")
    first, second = looks(
        last, (0.0, ps("a:1b", "b:7b", "foreign:3b")), (2.0, ps("a:1b", "foreign:3b"))
    )
    assert first.due is None and second.due is None


def test_gone_while_the_others_stayed_waits_for_settle() -> None:
    last = report("a:1b", "b:7b")
    first, second, third = looks(last, (0.0, ps("a:1b")), (2.0, ps("a:1b")), (4.1, ps("a:1b")))
    assert (first.due, second.due) == (None, None)
    assert third.due == "pinned model gone: b:7b"


def test_back_within_settle_is_not_gone() -> None:
    # a client's reload: absent while Ollama loads it, then listed again with its options
    last = report("a:1b", "b:7b")
    first, second, third = looks(
        last,
        (0.0, ps("a:1b")),
        (2.0, (*ps("a:1b"), loaded("b:7b", ctx=4096))),
        (6.0, (*ps("a:1b"), loaded("b:7b", ctx=4096))),
    )
    assert first.due is None and second.due is None and third.due is None
    assert second.memory.absent_since == {}
    assert [e.event for e in second.events] == ["model_reloaded_by_client"]
    assert second.events[0].fields["model"] == "b:7b"
    assert second.events[0].fields["context_length"] == 4096
    assert second.events[0].fields["was"] == 2048
    assert third.events == ()  # said once


def test_a_reload_with_other_options_is_left_to_the_pass() -> None:
    last = report("a:1b", "b:7b")
    now = (loaded("a:1b", ctx=8192), loaded("b:7b", expires_in=300, ctx=2048))
    (seen,) = looks(last, (0.0, now))
    assert seen.due is None
    assert [e.fields["model"] for e in seen.events] == ["a:1b"]


def test_reloaded_again_with_yet_other_options_is_said_again() -> None:
    last = report("a:1b")
    _, again = looks(last, (0.0, ps("a:1b", ctx=4096)), (2.0, ps("a:1b", ctx=8192)))
    assert [e.fields["context_length"] for e in again.events] == [8192]


def test_extras_and_foreign_models_do_not_count() -> None:
    last = report("a:1b", "x:1b", "foreign:3b")
    assert looks(last, (0.0, ps("a:1b")), (10.0, ps("a:1b")))[-1].due is None


def test_a_pinned_model_the_last_pass_could_not_load_does_not_count() -> None:
    # b:7b was missing after the last pass (its load failed, backing off): no pass every
    # couple of seconds for it.
    assert looks(report("a:1b"), (0.0, ps("a:1b")), (10.0, ps("a:1b")))[-1].due is None


def test_the_state_after_acting_is_what_counts() -> None:
    # Missing when observed, loaded by the pass: gone now means gone again.
    last = report("a:1b", final=("a:1b", "b:7b"))
    assert looks(last, (0.0, ps("a:1b")), (4.0, ps("a:1b")))[-1].due == "pinned model gone: b:7b"


def test_no_reachable_last_pass_means_no_watch() -> None:
    assert looks(None, (0.0, ()), (10.0, ()))[-1].due is None
    down = PassReport(NOW + timedelta(seconds=1), 0.01, PINNED, EXTRAS, None, error="refused")
    assert looks(down, (0.0, ()), (10.0, ()))[-1].due is None
