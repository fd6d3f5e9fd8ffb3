"""watch.gone_pinned: which disappearances between passes bring the next pass forward."""

from __future__ import annotations

from datetime import timedelta

from sentinel_keeper.reconcile import PassReport
from sentinel_keeper.watch import gone_pinned
from tests.support.planning import NOW, loaded, observation

PINNED = ("a:1b", "b:7b")
EXTRAS = ("x:1b",)


def report(*resident: str, final: tuple[str, ...] | None = None) -> PassReport:
    obs = observation(loaded_models=tuple(loaded(n) for n in resident))
    after = None if final is None else observation(loaded_models=tuple(loaded(n) for n in final))
    return PassReport(NOW, 0.1, PINNED, EXTRAS, obs, final=after)


def test_nothing_gone_nothing_asked() -> None:
    last = report("a:1b", "b:7b", "x:1b")
    assert gone_pinned(last, (loaded("a:1b"), loaded("b:7b"), loaded("x:1b"))) == ()


def test_a_restart_empties_everything() -> None:
    assert gone_pinned(report("a:1b", "b:7b"), ()) == ("a:1b", "b:7b")


def test_one_evicted_pinned_model() -> None:
    assert gone_pinned(report("a:1b", "b:7b"), (loaded("a:1b"), loaded("big:70b"))) == ("b:7b",)


def test_extras_and_foreign_models_do_not_count() -> None:
    last = report("a:1b", "x:1b", "foreign:3b")
    assert gone_pinned(last, (loaded("a:1b"),)) == ()


def test_a_pinned_model_the_last_pass_could_not_load_does_not_count() -> None:
    # b:7b was missing after the last pass (its load failed, backing off): no pass every
    # couple of seconds for it.
    assert gone_pinned(report("a:1b"), (loaded("a:1b"),)) == ()


def test_the_state_after_acting_is_what_counts() -> None:
    # Missing when observed, loaded by the pass: gone now means gone again.
    last = report("a:1b", final=("a:1b", "b:7b"))
    assert gone_pinned(last, (loaded("a:1b"),)) == ("b:7b",)


def test_a_reload_with_other_options_is_left_to_the_pass() -> None:
    last = report("a:1b", "b:7b")
    now = (loaded("a:1b", ctx=8192), loaded("b:7b", expires_in=300))
    assert gone_pinned(last, now) == ()


def test_no_reachable_last_pass_means_no_watch() -> None:
    assert gone_pinned(None, ()) == ()
    down = PassReport(NOW + timedelta(seconds=1), 0.01, PINNED, EXTRAS, None, error="refused")
    assert gone_pinned(down, ()) == ()
