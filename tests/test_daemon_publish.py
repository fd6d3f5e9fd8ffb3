"""What the daemon's main thread keeps of an instance's passes (InstanceLoop's took_report,
took_look, took_crash) and what it publishes for the gateway's process (daemon/publish.py),
on a real InstanceLoop that is never started and real files."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from sentinel_keeper.daemon.engine import Seen
from sentinel_keeper.daemon.instance import CRASHES_BEFORE_EXIT, InstanceLoop, WatchAsked
from sentinel_keeper.daemon.publish import VIEW_EVERY, Publisher
from sentinel_keeper.daemon.runtime import make_client
from sentinel_keeper.daemon.schedule import new_scheduler
from sentinel_keeper.gateway.exchange import decode_view, view_path
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.values.timings import Timings
from tests.support.planning import NOW, loaded, observation, policy
from tests.test_events import report

A = "a:1b"
FRONTED = policy({"name": A}, gateway={"listen": "127.0.0.1:18091"})  # a gateway fronts it


@pytest.fixture
def loop() -> Iterator[InstanceLoop]:
    part = policy({"name": A}).split()[0]
    made = InstanceLoop(
        part,
        timings=Timings(),
        state_dir=None,
        make_ollama=make_client,
        make_gpu=lambda p: GpuProbe(p.vram.gpu_selection),
        post=lambda instance, item: None,
        scheduler=new_scheduler(),
    )
    yield made
    made.engines.close()


# -- took_report, took_look, took_crash ------------------------------------------------------


def test_a_pass_is_remembered_and_its_events_judged_against_the_passes_before(
    loop: InstanceLoop,
) -> None:
    loop.crashes = 2
    first = report(observation(loaded_models=(loaded(A),)), pinned=(A,), extras=())
    events = loop.took_report(first, 100.0)
    assert (loop.last, loop.view, loop.last_at, loop.crashes) == (first, first.latest, 100.0, 0)
    assert loop.outage_since is None
    assert [e.event for e in events][-1] == "pass"
    # the same pass again: the history has it, so nothing new is said above debug
    again = loop.took_report(replace(first, started=first.started + timedelta(seconds=15)), 115.0)
    assert [e.event for e in again if e.level != "debug"] == []
    assert loop.counts.passes == 2


def test_an_outage_starts_with_the_first_unreachable_pass_and_asks_for_probes(
    loop: InstanceLoop,
) -> None:
    down = report(unreachable=True, pinned=(A,), extras=())
    loop.took_report(down, 100.0)
    assert loop.outage_since == pytest.approx(100.0 - down.seconds)
    first_delay = loop.probe_delay
    assert first_delay > loop.timings.probe_first  # the back-off grew
    assert loop.schedule._scheduler.get_job(f"{loop.name}/probe") is not None
    loop.took_report(down, 110.0)
    assert loop.outage_since == pytest.approx(100.0 - down.seconds)  # not moved
    assert loop.probe_delay >= first_delay
    loop.took_report(report(observation(loaded_models=(loaded(A),)), pinned=(A,)), 120.0)
    assert loop.outage_since is None
    assert loop.probe_delay == loop.timings.probe_first


def test_a_look_between_passes_moves_the_view_only_when_it_listed_something(
    loop: InstanceLoop,
) -> None:
    assert loop.took_look(WatchAsked("why")) is False  # no look taken
    unanswered = Seen(at=1.0, listed=None, error="connection refused")
    assert loop.took_look(WatchAsked(None, seen=unanswered)) is False
    assert loop.seen == unanswered  # /ready still answers from it
    listed = Seen(
        at=2.0,
        listed=frozenset({A}),
        loaded=(loaded(A, ctx=8192),),
        when=NOW + timedelta(seconds=7),
    )
    assert loop.took_look(WatchAsked(None, seen=listed)) is False  # no pass yet: no view
    loop.took_report(report(observation(), pinned=(A,)), 3.0)
    assert loop.took_look(WatchAsked(None, seen=listed)) is True
    assert loop.view is not None
    assert (loop.view.at, loop.view.loaded) == (listed.when, listed.loaded)
    assert loop.seen == listed


def test_only_crashes_in_a_row_end_the_daemon(loop: InstanceLoop) -> None:
    for _ in range(CRASHES_BEFORE_EXIT - 1):
        assert loop.took_crash() is False
    loop.took_report(report(pinned=(A,)), 1.0)  # a good pass in between starts over
    assert [loop.took_crash() for _ in range(CRASHES_BEFORE_EXIT)] == [False, False, True]


# -- the gateway's view --------------------------------------------------------------------


def test_the_view_carries_the_last_look_and_ready_input_in_unix_time(
    loop: InstanceLoop, tmp_path: Path
) -> None:
    said: list[LogEvent] = []
    publish = Publisher(str(tmp_path), said.append)
    assert publish.view_due(time.monotonic())
    down = report(unreachable=True, pinned=(A,), extras=())
    mono = time.monotonic()
    loop.took_report(down, mono - 5.0)
    publish.view(FRONTED, {loop.name: loop})
    view = decode_view(view_path(tmp_path).read_text())
    assert view.instance == loop.name
    assert view.observation is None  # Ollama has not answered yet
    assert view.health is not None and view.health.down_since is not None
    # since when Ollama is down, as a Unix time the gateway's process can compare
    assert view.health.down_since == pytest.approx(time.time() - 5.0 - down.seconds, abs=1.0)
    assert (view_path(tmp_path).stat().st_mode & 0o777) == 0o600
    assert not publish.view_due(time.monotonic())
    assert publish.view_due(time.monotonic() + VIEW_EVERY)
    assert said == []


def test_no_view_without_a_gateway_or_a_state_directory(loop: InstanceLoop, tmp_path: Path) -> None:
    Publisher(str(tmp_path), print).view(policy({"name": A}), {loop.name: loop})
    Publisher(None, print).view(FRONTED, {loop.name: loop})
    assert list(tmp_path.iterdir()) == []


def test_a_view_that_cannot_be_written_is_said_once_per_error_and_tried_again(
    loop: InstanceLoop, tmp_path: Path
) -> None:
    said: list[LogEvent] = []
    state = tmp_path / "state"
    state.write_text("a file where the directory should be\n")
    publish = Publisher(str(state), said.append)
    for _ in range(3):
        publish.view(FRONTED, {loop.name: loop})
    assert [(e.event, e.level) for e in said] == [("gateway_view_failed", "error")]
    assert str(state) in str(said[0].fields["error"])
    assert publish.view_due(time.monotonic())  # nothing written: due at every chance
    state.unlink()
    state.mkdir()
    publish.view(FRONTED, {loop.name: loop})
    assert decode_view(view_path(state).read_text()).instance == loop.name
    # after a success, the same failure again is said again
    shutil.rmtree(state)
    state.write_text("a file again\n")
    publish.view(FRONTED, {loop.name: loop})
    assert [e.event for e in said] == ["gateway_view_failed"] * 2
