"""daemon/lifecycle.py: the daemon's decisions under systemd, as tables. No process, no
socket, no clock: each case is what the loop knows and what it must do."""

from __future__ import annotations

import pytest

from sentinel_keeper.act.reconcile import Outcome, PassReport
from sentinel_keeper.daemon import lifecycle
from sentinel_keeper.daemon.lifecycle import Duties, Ready, StatusView
from sentinel_keeper.daemon.progress import Stuck
from sentinel_keeper.decide.plan import Action, ActionKind, Finding, FindingKind, Plan
from sentinel_keeper.errors import Diagnostic, OllamaUnreachable, PolicyError
from sentinel_keeper.policy import Policy
from sentinel_keeper.values.timings import Timings
from tests.support.planning import NOW, GiB, gpus, installed, loaded, observation, policy

URL = "http://127.0.0.1:11434"
GPU = gpus((6 * GiB, 8 * GiB))
T = Timings()
PINNED = ("a:1b", "b:1b")


def reached(*resident: str, not_installed: tuple[str, ...] = ()) -> PassReport:
    obs = observation(
        loaded_models=tuple(loaded(n) for n in resident),
        installed_models=tuple(installed(n) for n in PINNED if n not in not_installed),
        gpu=GPU,
    )
    findings = tuple(
        Finding(FindingKind.NOT_INSTALLED, n, f"{n} is not installed", data={"tier": "pinned"})
        for n in not_installed
    )
    return PassReport(NOW, 0.5, PINNED, (), obs, plan=Plan((), findings), final=obs)


def unreachable() -> PassReport:
    exc = OllamaUnreachable(URL, "GET /api/version: connection refused")
    return PassReport(NOW, 0.01, PINNED, (), None, error=str(exc), error_reason=exc.reason)


PINNED_POLICY = policy({"name": "a:1b"}, {"name": "b:1b"}, startup_timeout="10m")
STARTED_POLICY = policy({"name": "a:1b"}, ready="started", startup_timeout="10m")


# --- READY=1 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("the_policy", "report", "elapsed", "expected"),
    [
        # before the first pass: only the start timeout makes it ready
        (PINNED_POLICY, None, 1.0, None),
        (PINNED_POLICY, None, 600.0, Ready("startup_timeout 10m passed", "warning")),
        # ready: pinned (the default) waits for every pinned model...
        (PINNED_POLICY, reached("a:1b"), 5.0, None),
        (PINNED_POLICY, reached("a:1b", "b:1b"), 5.0, Ready("pinned resident")),
        # ...or for those that no pass can load (not installed, no pull) to be all that is left
        (
            PINNED_POLICY,
            reached("a:1b", not_installed=("b:1b",)),
            5.0,
            Ready("pinned models not installed", "warning"),
        ),
        (PINNED_POLICY, reached(not_installed=("b:1b",)), 5.0, None),  # a:1b still loading
        # an unreachable Ollama: only the start timeout
        (PINNED_POLICY, unreachable(), 5.0, None),
        (PINNED_POLICY, unreachable(), 600.0, Ready("startup_timeout 10m passed", "warning")),
        # ready: started: after the first pass, whatever it found
        (STARTED_POLICY, None, 5.0, None),
        (STARTED_POLICY, unreachable(), 5.0, Ready("started")),
        (STARTED_POLICY, reached(), 5.0, Ready("started")),
    ],
)
def test_readiness(
    the_policy: Policy, report: PassReport | None, elapsed: float, expected: Ready | None
) -> None:
    assert lifecycle.readiness(the_policy, report, elapsed=elapsed) == expected


def test_the_ready_event_names_what_is_missing() -> None:
    ready = Ready("pinned models not installed", "warning")
    event = lifecycle.ready_event(
        ready, elapsed=2.34567, reports=[("default", reached("a:1b", not_installed=("b:1b",)))]
    )
    assert (event.event, event.level) == ("ready", "warning")
    assert dict(event.fields) == {
        "why": "pinned models not installed",
        "after": 2.346,
        "missing": ["b:1b"],
    }
    quiet = lifecycle.ready_event(
        Ready("pinned resident"), elapsed=1, reports=[("default", reached(*PINNED))]
    )
    assert "missing" not in quiet.fields


# --- STATUS= --------------------------------------------------------------------------------

LOAD = Action(ActionKind.LOAD, "b:1b", "pinned", "pinned and not loaded")


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        (StatusView(URL, None), f"starting: first pass against ollama at {URL}"),
        (
            StatusView(URL, unreachable(), outage_seconds=12.4),
            f"waiting for ollama at {URL}: GET /api/version: connection refused (12 s)",
        ),
        (
            StatusView(URL, reached(*PINNED)),
            "2/2 pinned resident; GPU0 6.0 of 8.0 GiB free; ollama 0.33.0",
        ),
        (
            StatusView(URL, reached("a:1b", not_installed=("b:1b",))),
            "1/2 pinned resident; GPU0 6.0 of 8.0 GiB free; ollama 0.33.0; missing: b:1b; "
            "not installed: b:1b",
        ),
        (
            StatusView(URL, reached("a:1b"), loading=("b:1b", 3.2)),
            "loading b:1b (3 s); 1/2 pinned resident; GPU0 6.0 of 8.0 GiB free; "
            "ollama 0.33.0; missing: b:1b",
        ),
        (  # under a second: not worth a word
            StatusView(URL, reached("a:1b"), loading=("b:1b", 0.4)),
            "1/2 pinned resident; GPU0 6.0 of 8.0 GiB free; ollama 0.33.0; missing: b:1b",
        ),
        (
            StatusView(
                URL,
                reached("a:1b"),
                loading=("b:1b", 700.0),
                stuck=Stuck("load of b:1b", 700.0, 604.4),
            ),
            "stuck: load of b:1b running for 700 s, past its 10m4s limit; watchdog pings stopped",
        ),
        (
            StatusView(URL, reached(*PINNED), rejected="policy rejected (2 errors, ...)"),
            "policy rejected (2 errors, ...); 2/2 pinned resident; GPU0 6.0 of 8.0 GiB free; "
            "ollama 0.33.0",
        ),
    ],
)
def test_status_text(view: StatusView, expected: str) -> None:
    assert lifecycle.status_text(view) == expected


def test_status_of_an_ollama_that_answers_nonsense_keeps_the_whole_reason() -> None:
    report = PassReport(
        NOW, 0.01, PINNED, (), None, error="/api/ps: bad JSON", error_reason="/api/ps: bad JSON"
    )
    text = lifecycle.status_text(StatusView(URL, report, outage_seconds=3))
    assert text == f"waiting for ollama at {URL}: /api/ps: bad JSON (3 s)"


# --- several instances -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ready", "several", "expected"),
    [
        ([("default", None)], False, None),
        ([("default", Ready("pinned resident"))], False, Ready("pinned resident")),
        # one instance not ready holds READY back, whatever the others say
        ([("a", Ready("pinned resident")), ("b", None)], True, None),
        ([("a", None), ("b", Ready("pinned resident"))], True, None),
        (
            [("a", Ready("pinned resident")), ("b", Ready("pinned resident"))],
            True,
            Ready("a: pinned resident; b: pinned resident"),
        ),
        # the worst level wins: a timeout on one instance is worth a warning
        (
            [
                ("a", Ready("pinned resident")),
                ("b", Ready("startup_timeout 10m passed", "warning")),
            ],
            True,
            Ready("a: pinned resident; b: startup_timeout 10m passed", "warning"),
        ),
        # instances: with one entry still names it
        ([("gpu0", Ready("started"))], True, Ready("gpu0: started")),
        ([], True, None),
    ],
)
def test_ready_once_every_instance_is(
    ready: list[tuple[str, Ready | None]], several: bool, expected: Ready | None
) -> None:
    assert lifecycle.all_ready(ready, several=several) == expected


def test_the_ready_event_names_the_instance_of_what_is_missing() -> None:
    event = lifecycle.ready_event(
        Ready("a: pinned resident; b: startup_timeout 10m passed", "warning"),
        elapsed=600,
        reports=[("a", reached(*PINNED)), ("b", reached("a:1b")), ("c", None)],
    )
    assert event.fields["missing"] == ["b:1b@b"]


def test_status_sums_up_each_instance() -> None:
    views = [
        ("a", StatusView(URL, reached(*PINNED))),
        ("b", StatusView("http://127.0.0.1:11435", unreachable(), outage_seconds=4)),
    ]
    assert lifecycle.status_text_all(views, several=True, rejected=None) == (
        "a: 2/2 pinned resident; GPU0 6.0 of 8.0 GiB free; ollama 0.33.0; "
        "b: waiting for ollama at http://127.0.0.1:11435: GET /api/version: connection "
        "refused (4 s)"
    )
    rejected = lifecycle.status_text_all(views[:1], several=True, rejected="policy rejected")
    assert rejected.startswith("policy rejected; a: 2/2 pinned resident")
    # every instance is there however long each one's text: each is cut short
    many = [(f"gpu{n}", StatusView(URL, unreachable(), outage_seconds=4)) for n in range(4)]
    text = lifecycle.status_text_all(many, several=True, rejected=None)
    assert [part.split(":")[0] for part in text.split("; gpu")] == ["gpu0", "1", "2", "3"]
    assert len(text) <= 4 * (lifecycle.STATUS_CHARS_PER_INSTANCE + len("gpu0: ; "))
    # one instance without instances: reads as before
    single = lifecycle.status_text_all(views[:1], several=False, rejected="policy rejected")
    assert single == lifecycle.status_text(
        StatusView(URL, reached(*PINNED), rejected="policy rejected")
    )


def test_the_start_names_each_instance() -> None:
    two = Policy.model_validate(
        {
            "instances": [
                {"name": "a", "gpus": [0]},
                {
                    "name": "b",
                    "url": "127.0.0.1:11435",
                    "unit": "ollama-b.service",
                    "gpus": [1, "GPU-x"],
                },
            ],
            "models": [{"name": "m", "instance": "b"}],
        }
    )
    start = lifecycle.starting_event(two, "p.yaml", "1.0", None)
    assert start.fields["instances"] == "a,b" and "ollama" not in start.fields
    a, b = two.split()
    assert dict(lifecycle.instance_event("instance_started", b).fields) == {
        "instance": "b",
        "ollama": "http://127.0.0.1:11435",
        "unit": "ollama-b.service",
        "gpus": "1,GPU-x",
        "pinned": 1,
        "extras": 0,
    }
    assert lifecycle.instance_event("instance_removed", a).fields["gpus"] == "0"
    single = lifecycle.starting_event(PINNED_POLICY, "p.yaml", "1.0", None)
    assert single.fields["ollama"] == URL and "instances" not in single.fields


# --- WATCHDOG=1 and EXTEND_TIMEOUT_USEC= ------------------------------------------------------

STUCK = Stuck("GET /api/ps", 20.0, 16.0)


INF = float("-inf")


@pytest.mark.parametrize(
    ("now", "last", "period", "stuck_ready", "expected"),
    [
        # the first tick: both due
        (100.0, (INF, INF), 15.0, (None, False), Duties(True, True)),
        # a ping at 90% of the period, not before
        (113.4, (100.0, 100.0), 15.0, (None, True), Duties(False, False)),
        (113.5, (100.0, 100.0), 15.0, (None, True), Duties(True, False)),
        # no watchdog asked for: never a ping
        (500.0, (INF, 100.0), None, (None, True), Duties(False, False)),
        # the start goes on: extend every extend_every
        (104.9, (100.0, 100.0), 15.0, (None, False), Duties(False, False)),
        (105.0, (100.0, 100.0), 15.0, (None, False), Duties(False, True)),
        # ready: no more extending
        (200.0, (199.0, 100.0), 15.0, (None, True), Duties(False, False)),
        # stuck: neither, so that systemd restarts the service
        (200.0, (100.0, 100.0), 15.0, (STUCK, False), Duties(False, False)),
    ],
)
def test_duties(
    now: float,
    last: tuple[float, float],
    period: float | None,
    stuck_ready: tuple[Stuck | None, bool],
    expected: Duties,
) -> None:
    stuck, ready_sent = stuck_ready
    got = lifecycle.duties(
        now,
        last_ping=last[0],
        last_extend=last[1],
        watchdog_period=period,
        stuck=stuck,
        ready_sent=ready_sent,
        timings=T,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("period", "expected"), [(None, 0.5), (30.0, 0.5), (1.0, 0.25), (0.2, 0.05)]
)
def test_the_tick_is_a_quarter_of_the_watchdog_period_at_most(
    period: float | None, expected: float
) -> None:
    assert lifecycle.tick_seconds(T, period) == pytest.approx(expected)


def test_stuck_is_reported_once_when_it_starts_and_once_when_it_ends() -> None:
    assert lifecycle.stuck_events(None, None, watchdog=True) == []
    started = lifecycle.stuck_events(None, STUCK, watchdog=True)
    assert [(e.event, e.level, dict(e.fields)) for e in started] == [
        (
            "pass_stuck",
            "error",
            {"what": "GET /api/ps", "seconds": 20.0, "limit": 16.0, "watchdog": "pings stopped"},
        )
    ]
    assert lifecycle.stuck_events(STUCK, STUCK, watchdog=True) == []
    assert lifecycle.stuck_events(None, STUCK, watchdog=False)[0].fields["watchdog"] == "off"
    ended = lifecycle.stuck_events(STUCK, None, watchdog=True)
    assert [(e.event, e.level, dict(e.fields)) for e in ended] == [
        ("pass_unstuck", "info", {"what": "GET /api/ps"})
    ]


# --- probes while Ollama does not answer --------------------------------------------------------


def test_probes_back_off_to_a_second_and_stop_once_ollama_answers() -> None:
    delays = []
    delay = T.probe_first
    for _ in range(6):
        probe = lifecycle.probe(unreachable(), delay, interval=15.0, timings=T)
        assert probe.after is not None
        delays.append(probe.after)
        delay = probe.next_delay
    assert delays == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    back = lifecycle.probe(reached(*PINNED), delay, interval=15.0, timings=T)
    assert back == lifecycle.Probe(None, T.probe_first)  # and the next outage starts afresh


def test_a_probe_never_waits_longer_than_the_interval() -> None:
    assert lifecycle.probe(unreachable(), 1.0, interval=0.2, timings=T).after == 0.2


def test_ollama_gone_in_the_middle_of_a_load_is_probed_like_an_outage() -> None:
    gone = Outcome(LOAD, ok=False, error="unreachable: ...", ollama_gone=True)
    report = PassReport(
        NOW, 1.0, PINNED, (), reached().observation, plan=Plan((LOAD,)), outcomes=(gone,)
    )
    assert lifecycle.probe(report, T.probe_first, interval=15.0, timings=T).after == 0.25


def test_scaled_timings_probe_faster() -> None:
    fast = T.scaled(100)
    assert lifecycle.probe(unreachable(), fast.probe_first, interval=15, timings=fast).after == (
        pytest.approx(0.0025)
    )


# --- SIGHUP --------------------------------------------------------------------------------------


def test_a_valid_policy_is_taken() -> None:
    old = policy({"name": "a:1b"}, interval="15s")
    new = policy({"name": "a:1b"}, {"name": "x:1b", "tier": "extra"}, interval="1m")
    decision = lifecycle.reload_decision("/etc/sentinel/policy.yaml", old, new, None)
    assert decision.policy is new
    assert decision.rejected is None
    assert [(e.event, e.level, dict(e.fields)) for e in decision.events] == [
        (
            "policy_reloaded",
            "info",
            {
                "path": "/etc/sentinel/policy.yaml",
                "pinned": 1,
                "extras": 1,
                "interval": "1m",
                "changed": True,
            },
        )
    ]
    same = lifecycle.reload_decision("p.yaml", old, old, None)
    assert same.events[0].fields["changed"] is False


def test_an_invalid_policy_is_refused_with_every_error() -> None:
    old = policy({"name": "a:1b"})
    error = PolicyError(
        "p.yaml",
        [
            Diagnostic("p.yaml", 3, 9, "models[0].tier", "must be one of 'pinned', 'extra'"),
            Diagnostic("p.yaml", 5, 1, "intervall", "unknown key"),
        ],
    )
    decision = lifecycle.reload_decision("p.yaml", old, None, error)
    assert decision.policy is None
    assert decision.rejected == (
        "policy rejected (2 errors, see the journal), running the previous one"
    )
    assert [(e.event, e.level) for e in decision.events] == [
        ("policy_rejected", "error"),
        ("policy_error", "error"),
        ("policy_error", "error"),
    ]
    assert decision.events[1].fields["error"] == (
        "p.yaml:3:9: models[0].tier: must be one of 'pinned', 'extra'"
    )


def test_an_unreadable_policy_is_refused_with_its_reason() -> None:
    decision = lifecycle.reload_decision(
        "p.yaml", policy(), None, PermissionError(13, "Permission denied")
    )
    assert decision.rejected is not None and "(1 error," in decision.rejected
    assert decision.events[1].fields["error"] == "[Errno 13] Permission denied"


def test_policy_risks_are_warnings() -> None:
    events = lifecycle.risk_events("p.yaml", ["the policy file is world-writable"])
    assert [(e.event, e.level, dict(e.fields)) for e in events] == [
        (
            "policy_writable",
            "warning",
            {"path": "p.yaml", "risk": "the policy file is world-writable"},
        )
    ]


# --- Timings ------------------------------------------------------------------------------------


def test_timings_scale_the_daemons_own_delays_only() -> None:
    fast = T.scaled(120)
    assert fast.probe_max == pytest.approx(1 / 120)
    assert fast.watch == pytest.approx(2 / 120)
    assert fast.backoff_base == pytest.approx(15 / 120)
    assert fast.jitter_max == pytest.approx(1 / 120)
    # bounds of real HTTP calls and of systemd's clock do not speed up
    assert (fast.tick, fast.call_grace, fast.extend_by) == (T.tick, T.call_grace, T.extend_by)
    with pytest.raises(ValueError, match="positive"):
        T.scaled(0)
    with pytest.raises(ValueError, match=r"Timings\.watch must be positive"):
        Timings(watch=0)


@pytest.mark.parametrize(
    ("failures", "expected"), [(1, 15), (2, 30), (3, 60), (6, 480), (7, 900), (40, 900)]
)
def test_load_back_off(failures: int, expected: float) -> None:
    assert T.backoff(failures) == expected


def test_jitter_and_idle_limit_follow_the_interval() -> None:
    assert T.jitter(15) == pytest.approx(0.75)
    assert T.jitter(3600) == 1.0
    assert T.idle_limit(15) == pytest.approx(15 + 0.75 + 30)
    assert T.idle_limit(300) == pytest.approx(300 + 1 + 300)
