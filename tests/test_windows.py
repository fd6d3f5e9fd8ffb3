"""Time windows: parsing, "inside" and the next edge as tables (DST changes in both
directions, windows across midnight, overlapping windows), the cron edges, a simulated week
against the double with a clock the test moves, and the policy's errors at line:col."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sentinel_keeper.act.reconcile import Reconciler
from sentinel_keeper.decide.plan import ActionKind
from sentinel_keeper.errors import PolicyError
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import ModelPolicy
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.policy.windows import (
    CronEdge,
    Window,
    cron_edges,
    in_force,
    inside,
    next_edge,
    parse_window,
)
from tests.support.ollama_double import FakeModel, GiB, ManualClock, OllamaDouble

BERLIN = ZoneInfo("Europe/Berlin")


def local(text: str, zone: ZoneInfo = BERLIN, fold: int = 0) -> datetime:
    """A wall-clock time in ``zone`` ("2026-11-30 08:00"), as a UTC instant."""
    naive = datetime.strptime(text, "%Y-%m-%d %H:%M")
    return naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)


def w(*texts: str) -> tuple[Window, ...]:
    return tuple(parse_window(t) for t in texts)


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("mon-fri 08:00-19:00", {0, 1, 2, 3, 4}, 480, 1140),
        ("sat 10:00-14:00", {5}, 600, 840),
        ("22:00-02:00", set(range(7)), 1320, 120),
        ("daily 00:00-24:00", set(range(7)), 0, 1440),
        ("fri-mon 9:30-17:00", {4, 5, 6, 0}, 570, 1020),
        ("Mon,Wed,Fri 08:00 - 12:00", {0, 2, 4}, 480, 720),
    ],
)
def test_windows_parse(text: str, days: set[int], start: int, end: int) -> None:
    window = parse_window(text)
    assert (set(window.days), window.start, window.end) == (days, start, end)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("monday 08:00-19:00", "not a day"),
        ("mon-fri 8-19", "must be"),
        ("mon 25:00-26:00", "not a time of day"),
        ("mon 08:60-09:00", "not a time of day"),
        ("mon 24:00-02:00", "not a time of day"),
        ("mon 08:00-08:00", "same time"),
        ("", "must be"),
    ],
)
def test_bad_windows_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_window(text)


WORKDAYS = w("mon-fri 08:00-19:00")
# 2026-11-30 is a Monday
INSIDE_CASES = [
    ("workday morning", WORKDAYS, "2026-11-30 08:00", True),
    ("just before", WORKDAYS, "2026-11-30 07:59", False),
    ("the end is open", WORKDAYS, "2026-11-30 19:00", False),
    ("saturday", WORKDAYS, "2026-12-05 10:00", False),
    ("across midnight, late", w("fri 22:00-02:00"), "2026-12-04 23:30", True),
    ("across midnight, next day", w("fri 22:00-02:00"), "2026-12-05 01:59", True),
    ("across midnight, over", w("fri 22:00-02:00"), "2026-12-05 02:00", False),
    ("across midnight, wrong day", w("fri 22:00-02:00"), "2026-12-04 01:00", False),
    ("overlapping", w("mon 08:00-12:00", "mon 11:00-14:00"), "2026-11-30 13:00", True),
    # spring forward (2026-03-29, 02:00 -> 03:00 in Berlin): 02:30 does not exist
    ("dst gap: a start in the gap is the jump", w("sun 02:30-04:00"), "2026-03-29 03:00", True),
    ("dst gap: before the jump", w("sun 02:30-04:00"), "2026-03-29 01:59", False),
    ("dst gap: window across the jump", w("sun 01:00-05:00"), "2026-03-29 03:30", True),
    # fall back (2026-10-25, 03:00 -> 02:00): 02:30 happens twice, the first one counts
    ("dst twice: first 02:30", w("sun 02:30-02:45"), "2026-10-25 02:35", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("windows", "at", "expected"),
    [c[1:] for c in INSIDE_CASES],
    ids=[c[0] for c in INSIDE_CASES],
)
def test_inside(windows: tuple[Window, ...], at: str, expected: bool) -> None:
    assert inside(windows, BERLIN, local(at)) is expected


def test_the_hour_that_happens_twice() -> None:
    windows = w("sun 02:30-02:45")
    first = local("2026-10-25 02:35", fold=0)
    second = local("2026-10-25 02:35", fold=1)
    assert second - first == timedelta(hours=1)
    assert inside(windows, BERLIN, first) and not inside(windows, BERLIN, second)
    # a window across the repeated hour lasts an hour longer in real time
    long = w("sun 01:00-04:00")
    assert inside(long, BERLIN, second)
    assert next_edge(long, BERLIN, local("2026-10-25 01:30")) == local("2026-10-25 04:00")


def test_warm_before_opens_early() -> None:
    ahead = timedelta(minutes=2)
    assert inside(WORKDAYS, BERLIN, local("2026-11-30 07:58"), ahead=ahead)
    assert not inside(WORKDAYS, BERLIN, local("2026-11-30 07:57"), ahead=ahead)
    assert next_edge(WORKDAYS, BERLIN, local("2026-11-30 07:00"), ahead=ahead) == local(
        "2026-11-30 07:58"
    )


@pytest.mark.parametrize(
    ("windows", "at", "edge"),
    [
        (WORKDAYS, "2026-11-30 07:00", "2026-11-30 08:00"),
        (WORKDAYS, "2026-11-30 12:00", "2026-11-30 19:00"),
        (WORKDAYS, "2026-12-04 20:00", "2026-12-07 08:00"),  # Friday evening: Monday
        (w("mon 08:00-12:00", "mon 11:00-14:00"), "2026-11-30 09:00", "2026-11-30 14:00"),
        (w("fri 22:00-02:00"), "2026-12-04 23:00", "2026-12-05 02:00"),
        (w("daily 00:00-24:00", "mon 10:00-11:00"), "2026-11-30 09:00", None),  # always
    ],
)
def test_next_edge(windows: tuple[Window, ...], at: str, edge: str | None) -> None:
    expected = local(edge) if edge is not None else None
    assert next_edge(windows, BERLIN, local(at)) == expected


def test_cron_edges_shift_the_opening_by_warm_before_across_midnight() -> None:
    opens, closes = cron_edges(parse_window("mon-fri 08:00-19:00"), 120)
    assert opens == CronEdge(frozenset({0, 1, 2, 3, 4}), 7, 58, 0)
    assert closes == CronEdge(frozenset({0, 1, 2, 3, 4}), 19, 0, 0)
    opens, closes = cron_edges(parse_window("mon 00:01-02:00"), 120)
    assert opens == CronEdge(frozenset({6}), 23, 59, 0)  # Sunday 23:59
    opens, closes = cron_edges(parse_window("fri 22:00-02:00"), 0)
    assert closes == CronEdge(frozenset({5}), 2, 0, 0)  # Saturday 02:00
    _, closes = cron_edges(parse_window("sun 10:00-24:00"), 0)
    assert closes == CronEdge(frozenset({0}), 0, 0, 0)  # Monday 00:00


def test_models_without_windows_are_always_in_force() -> None:
    policy = parse_policy(
        "timezone: Europe/Berlin\nmodels:\n  - name: a:1b\n"
        "  - name: b:1b\n    windows: ['mon-fri 08:00-19:00']\n",
        "p.yaml",
    )

    def names(models: list[ModelPolicy]) -> list[str]:
        return [m.name for m in models]

    active, outside = in_force(policy.models, BERLIN, local("2026-12-05 10:00"))
    assert (names(active), names(outside)) == (["a:1b"], ["b:1b"])
    active, outside = in_force(policy.models, BERLIN, local("2026-11-30 10:00"))
    assert (names(active), names(outside)) == (["a:1b", "b:1b"], [])


def test_bad_windows_and_time_zones_are_named_with_their_position() -> None:
    text = (
        "timezone: Mars/Olympus\nmodels:\n  - name: a:1b\n"
        "    windows: ['mon-fri 08:00-19:00', 'someday 10:00-11:00']\n"
        "    outside: delete\n    warm_before: soon\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    found = [str(d) for d in caught.value.diagnostics]
    assert found[0].startswith("p.yaml:1:11: timezone: is not a time zone this host knows")
    assert found[1].startswith("p.yaml:4:38: models[0].windows[1]: 'someday' is not a day")
    assert found[2].startswith("p.yaml:5:14: models[0].outside: must be one of")
    assert found[3].startswith("p.yaml:6:18: models[0].warm_before: must be a duration")


def test_a_simulated_week_of_windows_against_the_double() -> None:
    """A pinned model warm on weekdays 08:00-19:00 (warm_before 2m, outside: unload) and one
    always pinned: over a simulated week, with a pass every 15 minutes and at each edge."""
    start = local("2026-11-30 00:00")  # a Monday
    clock = ManualClock(start.timestamp())
    models = [FakeModel("work:7b", size=4 * GiB), FakeModel("always:1b", size=1 * GiB)]
    with OllamaDouble(models, clock=clock, vram_total=24 * GiB) as double:
        policy = parse_policy(
            f"ollama: {{url: '{double.url}'}}\ntimezone: Europe/Berlin\nmodels:\n"
            "  - name: always:1b\n  - name: work:7b\n"
            "    windows: ['mon-fri 08:00-19:00']\n    outside: unload\n    warm_before: 2m\n",
            "p.yaml",
        )
        client = OllamaClient(double.url, timeout=2, load_timeout=5)
        reconciler = Reconciler(
            policy, client, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
        )
        loads: list[str] = []
        unloads: list[str] = []
        resident_at: dict[datetime, bool] = {}
        now = start
        while now < start + timedelta(days=7):
            edge = next_edge(
                policy.models[1].parsed_windows(), BERLIN, now, ahead=timedelta(minutes=2)
            )
            step = min(timedelta(minutes=15), (edge - now) if edge else timedelta(minutes=15))
            now += step
            double.advance(step.total_seconds())
            report = reconciler.run_pass()
            for o in report.outcomes:
                if o.attempted and o.ok and o.action.model == "work:7b":
                    stamp = now.astimezone(BERLIN).strftime("%a %H:%M")
                    (loads if o.action.is_load else unloads).append(stamp)
            resident_at[now] = double.instance("work:7b") is not None
            assert double.instance("always:1b") is not None
        client.close()
    days = ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert loads == [f"{d} 07:58" for d in days]  # loaded at the warm-up edge, on time
    assert unloads == [f"{d} 19:00" for d in days]  # and unloaded as the window closed
    saturday = [r for t, r in resident_at.items() if t.astimezone(BERLIN).weekday() == 5]
    assert saturday and not any(saturday)


def test_a_window_that_opens_is_the_reason_of_the_load() -> None:
    from sentinel_keeper.metrics.counts import Counts, count_pass
    from sentinel_keeper.report.events import History, advance, pass_events

    start = local("2026-11-30 07:30")
    clock = ManualClock(start.timestamp())
    with OllamaDouble([FakeModel("work:7b", size=4 * GiB)], clock=clock) as double:
        policy = parse_policy(
            f"ollama: {{url: '{double.url}'}}\ntimezone: Europe/Berlin\nmodels:\n"
            "  - name: work:7b\n    windows: ['mon-fri 08:00-19:00']\n",
            "p.yaml",
        )
        client = OllamaClient(double.url, timeout=2, load_timeout=5)
        reconciler = Reconciler(
            policy, client, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
        )
        counts, history = Counts(), History()
        for minutes in (0, 30):
            double.advance(minutes * 60)
            report = reconciler.run_pass()
            events = pass_events(history, report)
            counts = count_pass(counts, history, report, policy, mono=minutes * 60.0)
            history = advance(history, report)
        client.close()
    assert report.pinned == ("work:7b",) and report.opened == ("work:7b",)
    assert [o.action.kind for o in report.outcomes] == [ActionKind.LOAD]
    assert dict(counts.models["work:7b"].loads) == {"window_opened": 1}
    (loaded,) = [e for e in events if e.event == "model_loaded"]
    assert loaded.fields["reason"] == "its time window opened; pinned and not loaded"


def test_the_daemon_schedules_a_pass_at_each_edge_in_the_policys_zone() -> None:
    from sentinel_keeper.daemon.schedule import EDGE_JOB, Schedule
    from sentinel_keeper.values.timings import Timings

    asked: list[str] = []
    schedule = Schedule(
        Timings(), request_pass=lambda: asked.append("pass"), request_watch=lambda: None
    )
    policy = parse_policy(
        "timezone: Europe/Berlin\nmodels:\n  - name: a:1b\n"
        "    windows: ['mon-fri 08:00-19:00', 'sat 22:00-02:00']\n    warm_before: 2m\n",
        "p.yaml",
    )
    schedule.start(60.0, policy)
    try:
        jobs = [j for j in schedule._scheduler.get_jobs() if j.id.startswith(EDGE_JOB)]
        fires = sorted(j.trigger.get_next_fire_time(None, local("2026-11-30 00:00")) for j in jobs)
        assert [f.astimezone(BERLIN).strftime("%a %H:%M") for f in fires] == [
            "Mon 07:58",
            "Mon 19:00",
            "Sat 21:58",
            "Sun 02:00",
        ]
        schedule.set_windows(parse_policy("models:\n  - name: a:1b\n", "p.yaml"))
        assert not [j for j in schedule._scheduler.get_jobs() if j.id.startswith(EDGE_JOB)]
    finally:
        schedule.shutdown()


@pytest.mark.slow
def test_status_shows_each_models_next_window_edge(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    opens = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    window = f"{opens:%H}:00-{opens + timedelta(hours=1):%H}:00"
    with OllamaDouble([FakeModel("work:7b", size=1 * GiB)]) as double:
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            f"ollama: {{url: '{double.url}'}}\ntimezone: UTC\nmetrics: {{listen: null}}\n"
            f"models:\n  - name: work:7b\n    windows: ['{window}']\n    outside: unload\n"
        )
        run = [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy), "status"]
        text = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
        data = subprocess.run(
            [*run, "--json"], capture_output=True, text=True, timeout=60, check=False
        )
    assert text.returncode == 0, text.stderr  # outside its window: not expected resident
    line = next(x for x in text.stdout.splitlines() if x.startswith("window "))
    assert f"work:7b: outside its windows until {opens:%a %Y-%m-%d %H:%M} UTC" in line
    assert "(unloaded there)" in line
    assert json.loads(data.stdout)["pinned_not_resident"] == []
    shown = json.loads(data.stdout)["windows"]["work:7b"]
    assert shown["open"] is False
    assert shown["next_edge"] == opens.isoformat()
