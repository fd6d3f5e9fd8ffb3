"""The reconcile pass in-process: the real Ollama client over HTTP against the double."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from sentinel_keeper.act.reconcile import MAX_SETTLE_PASSES, Outcome, PassReport, Reconciler
from sentinel_keeper.act.state import StateStore
from sentinel_keeper.decide.plan import Action, ActionKind, Finding, FindingKind, Plan
from sentinel_keeper.observe.observation import GpuInfo, GpuSnapshot, LoadedModel
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import Policy
from sentinel_keeper.report.render import extras_without_reason, status_line
from sentinel_keeper.values.timings import Timings
from tests.support.ollama_double import FakeModel, OllamaDouble
from tests.support.planning import installed, loaded, observation

BACKOFF_BASE_SECONDS = Timings().backoff_base
GiB = 1024**3
MiB = 1024**2


class FixedGpu:
    """Stands in for GpuProbe: returns the snapshot it is given (NVML itself is exercised
    through the fake libnvidia-ml in test_gpu.py and test_cli.py)."""

    def __init__(self, free: int, total: int = 16 * GiB) -> None:
        self.free = free
        self.total = total

    def snapshot(self) -> GpuSnapshot:
        return GpuSnapshot((GpuInfo(0, "GPU", self.total, self.total - self.free, self.free),))


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    models = [
        FakeModel("llama3.2:1b", size=1300 * MiB),
        FakeModel("qwen2.5:0.5b", size=400 * MiB),
        FakeModel("big:70b", size=40 * GiB),
    ]
    server = OllamaDouble(models, vram_total=16 * GiB).start()
    try:
        yield server
    finally:
        server.stop()


def make(double: OllamaDouble, models: list[dict[str, object]], **kw: object) -> Reconciler:
    policy = Policy.model_validate({"ollama": {"url": double.url}, "models": models})
    client = OllamaClient(double.url, timeout=2, load_timeout=10)
    return Reconciler(policy, client, **kw)  # type: ignore[arg-type]


def test_a_pass_reports_what_it_saw_did_and_left(double: OllamaDouble, tmp_path: Path) -> None:
    state = StateStore(str(tmp_path))
    reconciler = make(
        double,
        [{"name": "llama3.2:1b"}, {"name": "qwen2.5:0.5b", "tier": "extra"}],
        gpu=FixedGpu(8 * GiB),
        state=state,
    )
    report = reconciler.run_pass()
    assert report.reachable
    assert [o.action.kind for o in report.outcomes] == [ActionKind.LOAD]
    assert report.outcomes[0].ok
    assert report.all_pinned_resident
    assert status_line(report) == (
        "1/1 pinned resident, 0/1 extras; GPU0 8.0 of 16.0 GiB free; ollama 0.33.0"
    )
    assert set(state.footprints()) == {"llama3.2:1b"}
    second = reconciler.run_pass()  # the extra's turn, now that the pinned model is in
    assert [(o.action.kind, o.action.model) for o in second.outcomes] == [
        (ActionKind.LOAD, "qwen2.5:0.5b")
    ]
    third = reconciler.run_pass()
    assert third.outcomes == ()
    assert third.final == third.observation


def test_unreachable_ollama_is_a_report_not_an_exception(double: OllamaDouble) -> None:
    reconciler = make(double, [{"name": "llama3.2:1b"}])
    double.stop()
    report = reconciler.run_pass()
    assert not report.reachable
    assert report.error is not None and "unreachable" in report.error
    assert report.pinned_missing == ("llama3.2:1b",)
    assert status_line(report).startswith("ollama unreachable: ")


def test_a_failing_load_backs_off_and_does_not_stop_the_others(double: OllamaDouble) -> None:
    double.load_failures["llama3.2:1b"] = "llama runner process has terminated: out of memory"
    clock = Clock()
    reconciler = make(double, [{"name": "llama3.2:1b"}, {"name": "qwen2.5:0.5b"}], clock=clock)
    first = reconciler.run_pass()
    assert [(o.action.model, o.ok) for o in first.outcomes] == [
        ("llama3.2:1b", False),
        ("qwen2.5:0.5b", True),
    ]
    assert "out of memory" in (first.outcomes[0].error or "")
    loads = double.load_count
    retry = reconciler.run_pass()  # at once: backing off, nothing sent
    assert retry.outcomes[0].skipped
    assert "backing off after 1 failed load" in (retry.outcomes[0].error or "")
    assert double.load_count == loads
    clock.now += timedelta(seconds=BACKOFF_BASE_SECONDS + 1)
    reconciler.run_pass()  # tried again, fails again: the wait doubles
    clock.now += timedelta(seconds=BACKOFF_BASE_SECONDS + 1)
    assert reconciler.run_pass().outcomes[0].skipped
    del double.load_failures["llama3.2:1b"]
    clock.now += timedelta(seconds=BACKOFF_BASE_SECONDS * 2)
    recovered = reconciler.run_pass()
    assert recovered.outcomes[0].ok and recovered.all_pinned_resident


def test_a_set_stop_event_skips_the_remaining_actions(double: OllamaDouble) -> None:
    reconciler = make(double, [{"name": "llama3.2:1b"}, {"name": "qwen2.5:0.5b"}])
    stop = threading.Event()
    stop.set()
    report = reconciler.run_pass(stop=stop)
    assert all(o.skipped and o.error == "pass stopped" for o in report.outcomes)
    assert double.loaded() == []


def test_pull_failure_skips_the_load(double: OllamaDouble) -> None:
    double.pull_error = "pull model manifest: file does not exist"
    reconciler = make(double, [{"name": "missing:1b", "pull": True}])
    report = reconciler.run_pass()
    assert [(o.action.kind, o.ok, o.skipped) for o in report.outcomes] == [
        (ActionKind.PULL, False, False),
        (ActionKind.LOAD, False, True),
    ]
    assert report.outcomes[1].error == "pull failed"


def test_unwritable_state_is_reported_and_the_pass_goes_on(
    double: OllamaDouble, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    reconciler = make(double, [{"name": "llama3.2:1b"}], state=StateStore(str(blocker / "state")))
    report = reconciler.run_pass()
    assert report.all_pinned_resident
    assert report.state_error is not None and "cannot write" in report.state_error


def test_corrupt_state_counts_as_empty(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    store = StateStore(str(tmp_path))
    with pytest.raises(Exception, match="corrupt"):
        store.footprints()
    assert store.footprints() == {}


# --- settle: what `once` runs ---------------------------------------------------------------


def test_settle_places_pinned_then_extras_and_stops_when_nothing_is_left(
    double: OllamaDouble,
) -> None:
    reconciler = make(
        double,
        [
            {"name": "llama3.2:1b"},
            {"name": "qwen2.5:0.5b", "tier": "extra"},
            {"name": "big:70b", "tier": "extra"},
        ],
        gpu=FixedGpu(8 * GiB),
    )
    reports = reconciler.settle()
    assert [[(o.action.kind, o.action.model) for o in r.outcomes] for r in reports] == [
        [(ActionKind.LOAD, "llama3.2:1b")],
        [(ActionKind.LOAD, "qwen2.5:0.5b")],
        [],  # nothing left to do: the last pass
    ]
    last = reports[-1]
    assert last.resident(last.extras) == ("qwen2.5:0.5b",)
    # the extra that does not fit says why; none is left without a reason
    assert [f.model for f in last.plan.findings] == ["big:70b"]
    assert extras_without_reason(last) == ()


def test_settle_stops_at_an_unreachable_ollama(double: OllamaDouble) -> None:
    reconciler = make(double, [{"name": "llama3.2:1b"}])
    double.stop()
    reports = reconciler.settle()
    assert len(reports) == 1 and not reports[0].reachable


class VanishingLoads(OllamaClient):
    """An Ollama whose loads succeed and never show in /api/ps (another client evicting
    them at once): every pass has something to do."""

    def ps(self) -> tuple[LoadedModel, ...]:
        return ()


def test_settle_is_bounded_when_the_world_never_settles(double: OllamaDouble) -> None:
    policy = Policy.model_validate(
        {"ollama": {"url": double.url}, "models": [{"name": "llama3.2:1b"}]}
    )
    client = VanishingLoads(double.url, timeout=2, load_timeout=10)
    try:
        reports = Reconciler(policy, client).settle()
    finally:
        client.close()
    assert len(reports) == MAX_SETTLE_PASSES
    assert all(r.outcomes and r.outcomes[0].ok for r in reports)


def test_extras_left_for_a_later_pass_are_named() -> None:
    """A pass in which a pinned model loads plans no extra: `once` says which it left."""
    obs = observation(
        loaded_models=(loaded("a:1b"),),
        installed_models=(installed("a:1b"), installed("x:1b"), installed("y:1b")),
    )
    load = Action(ActionKind.LOAD, "a:1b", "pinned", "pinned and not loaded")
    report = PassReport(
        obs.at,
        1.0,
        ("a:1b",),
        ("x:1b", "y:1b"),
        obs,
        plan=Plan((load,), (Finding(FindingKind.EXTRA_SKIPPED, "y:1b", "y:1b not loaded: ..."),)),
        outcomes=(Outcome(load, ok=True),),
        final=obs,
    )
    assert extras_without_reason(report) == ("x:1b",)
    no_memory = replace(
        report,
        plan=Plan((load,), (Finding(FindingKind.NO_MEMORY_INFO, None, "GPU memory is unknown"),)),
    )
    assert extras_without_reason(no_memory) == ()  # that finding speaks for every extra


def test_an_extra_never_evicts_a_model_another_client_loaded() -> None:
    """Budget mode (no NVML): Ollama allows 3 loaded models without GPUs it can count for
    us (3 per GPU, 3 with none), so a fourth model would make it evict the foreign one."""
    models = [
        FakeModel("tinyllama:latest", size=640 * MiB),
        FakeModel("llama3.2:1b", size=1300 * MiB),
        FakeModel("nomic-embed-text:latest", size=270 * MiB, capabilities=("embedding",)),
        FakeModel("qwen2.5:0.5b", size=400 * MiB),
    ]
    with OllamaDouble(models, vram_total=16 * GiB) as server:
        r = httpx.post(f"{server.url}/api/generate", json={"model": "tinyllama:latest"}, timeout=10)
        assert r.status_code == 200
        policy = Policy.model_validate(
            {
                "ollama": {"url": server.url},
                "vram": {"budget": "12GiB"},
                "models": [
                    {"name": "llama3.2:1b"},
                    {"name": "nomic-embed-text:latest"},
                    {"name": "qwen2.5:0.5b", "tier": "extra"},
                ],
            }
        )
        reconciler = Reconciler(policy, OllamaClient(server.url, timeout=2, load_timeout=10))
        reports = reconciler.settle()
        assert server.evictions == []
        assert sorted(i.name for i in server.loaded()) == [
            "llama3.2:1b",
            "nomic-embed-text:latest",
            "tinyllama:latest",
        ]
        skipped = [f for f in reports[-1].plan.findings if f.kind is FindingKind.EXTRA_SKIPPED]
        assert [f.model for f in skipped] == ["qwen2.5:0.5b"]
        assert "3 models are loaded and Ollama allows 3" in skipped[0].message
