"""Several Ollama instances in the figures: every series about an instance says which in its
``instance`` label, the same model kept by two instances gives two series, the daemon's own
figures come once; `status` reads them back per instance, and a page from a daemon from
before instances as the instance "default"."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.decide.causes import LoadCause
from sentinel_keeper.metrics import families as f
from sentinel_keeper.metrics.counts import FAILURE_KINDS, Counts, ModelCounts
from sentinel_keeper.metrics.exposition import parse, registry, render
from sentinel_keeper.metrics.families import CATALOG, InstanceView, MetricsView, families
from sentinel_keeper.metrics.readback import read_figures
from sentinel_keeper.metrics.status import DaemonView, daemon_json, daemon_lines
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import parse_policy
from tests.support.planning import NOW, GiB, gpus, loaded, observation

SHARED, SMALL = "llama3.2:3b", "qwen2.5:0.5b"
TWO = f"""\
instances:
  - {{name: gpu0, url: "http://127.0.0.1:11434", gpus: [0]}}
  - {{name: gpu1, url: "http://127.0.0.1:11435", unit: ollama-gpu1.service, gpus: [1]}}
models:
  - {{name: {SHARED}, instance: gpu0}}
  - {{name: {SMALL}, instance: gpu1, tier: extra}}
  - {{name: {SHARED}, instance: gpu1}}
"""
DAEMON_WIDE = {f.RELOADS.name, f.BUILD.name, f.START.name, f.ENDPOINT_REQUESTS.name}
Key = tuple[str, tuple[tuple[str, str], ...]]


def two_parts() -> tuple[Policy, Policy]:
    first, second = parse_policy(TWO, "p.yaml").split()
    return first, second


def counted(*models: tuple[str, str, int], passes: int) -> Counts:
    """Counts of (model, tier, evictions) after ``passes``."""
    return Counts(
        passes=passes,
        models={
            name: ModelCounts(
                tier=tier, loads={"evicted": evictions} if evictions else {}, evictions=evictions
            )
            for name, tier, evictions in models
        },
        ollama_version="0.33.0",
    )


def two_instance_view() -> MetricsView:
    gpu0, gpu1 = two_parts()
    # gpu0: its model resident, on its GPU; gpu1: only the extra resident, its GPU fuller
    seen0 = observation(loaded_models=(loaded(SHARED, 3 * GiB),), gpu=gpus((20 * GiB, 24 * GiB)))
    seen1 = observation(loaded_models=(loaded(SMALL, 1 * GiB),), gpu=gpus((5 * GiB, 48 * GiB)))
    return MetricsView(
        (
            InstanceView(
                "gpu0",
                gpu0,
                counted((SHARED, "pinned", 0), passes=10),
                PassReport(NOW, 0.1, (SHARED,), (), seen0, final=seen0),
            ),
            InstanceView(
                "gpu1",
                gpu1,
                counted((SHARED, "pinned", 3), (SMALL, "extra", 0), passes=12),
                PassReport(NOW, 0.3, (SHARED,), (SMALL,), seen1, final=seen1),
            ),
        ),
        reloads={"applied": 2},
        version="0.1.0",
        python="3.12.1",
        started_unix=1_700_000_000.0,
    )


def page(view: MetricsView) -> str:
    return render(registry(lambda: families(view, mono=60.0), process=False)).decode()


def values(text: str) -> dict[Key, float]:
    samples = parse(text)
    keys = [(s.name, tuple(sorted(s.labels.items()))) for s in samples]
    assert [k for k, n in Counter(keys).items() if n > 1] == []  # no sample twice
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def of(got: dict[Key, float], name: str, **labels: str) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def test_every_series_about_an_instance_names_it_first() -> None:
    for spec in CATALOG:
        if spec.name in DAEMON_WIDE:
            assert f.INSTANCE not in spec.labels, spec.name
        else:
            assert spec.labels[0] == f.INSTANCE, spec.name


def test_no_family_repeats_a_label_set() -> None:
    for family in families(two_instance_view(), mono=60.0):
        labels = [v for v, _ in family.samples] + [v for v, _ in family.histograms]
        assert len(labels) == len(set(labels)), family.spec.name
        assert all(len(v) == len(family.spec.labels) for v in labels), family.spec.name


def test_two_instances_keep_the_same_model_apart() -> None:
    got = values(page(two_instance_view()))
    resident = "sentinel_keeper_model_resident"
    assert of(got, resident, instance="gpu0", model=SHARED, tier="pinned") == 1
    assert of(got, resident, instance="gpu1", model=SHARED, tier="pinned") == 0
    assert of(got, resident, instance="gpu1", model=SMALL, tier="extra") == 1
    assert ("sentinel_keeper_model_resident", (("instance", "gpu0"), ("model", SMALL))) not in got
    evictions = "sentinel_keeper_model_evictions_total"
    assert of(got, evictions, instance="gpu0", model=SHARED, tier="pinned") == 0
    assert of(got, evictions, instance="gpu1", model=SHARED, tier="pinned") == 3
    # every reason and failure kind from zero, in each instance
    for instance, model in (("gpu0", SHARED), ("gpu1", SHARED), ("gpu1", SMALL)):
        reasons = {
            dict(k[1])["reason"]
            for k in got
            if k[0] == "sentinel_keeper_model_loads_total"
            and dict(k[1])["instance"] == instance
            and dict(k[1])["model"] == model
        }
        assert reasons == {cause.value for cause in LoadCause}, (instance, model)
        kinds = {
            dict(k[1])["kind"]
            for k in got
            if k[0] == "sentinel_keeper_model_load_failures_total"
            and dict(k[1])["instance"] == instance
            and dict(k[1])["model"] == model
        }
        assert kinds == set(FAILURE_KINDS), (instance, model)
    # what each Ollama is doing, and each one's passes
    for instance, passes in (("gpu0", 10), ("gpu1", 12)):
        assert of(got, "sentinel_keeper_ollama_up", instance=instance) == 1
        assert of(got, "sentinel_keeper_ollama_info", instance=instance, version="0.33.0") == 1
        assert of(got, "sentinel_keeper_passes_total", instance=instance) == passes
        assert of(got, "sentinel_keeper_pass_duration_seconds_count", instance=instance) == 0
        assert of(got, "sentinel_keeper_nvml_available", instance=instance) == 1


def test_each_instance_reports_its_own_gpus() -> None:
    got = values(page(two_instance_view()))
    free = {
        dict(labels)["instance"]: value
        for name, labels in got
        for value in [got[(name, labels)]]
        if name == "sentinel_keeper_gpu_memory_free_bytes"
    }
    assert free == {"gpu0": 20 * GiB, "gpu1": 5 * GiB}
    total = [k for k in got if k[0] == "sentinel_keeper_gpu_memory_total_bytes"]
    assert sorted(dict(k[1])["instance"] for k in total) == ["gpu0", "gpu1"]
    assert all(set(dict(k[1])) == set(f.GPU) for k in total)


def test_the_daemons_own_figures_come_once_without_an_instance() -> None:
    got = values(page(two_instance_view()))
    for name in (
        "sentinel_keeper_build_info",
        "sentinel_keeper_start_time_seconds",
        "sentinel_keeper_policy_reloads_total",
    ):
        (labels,) = [k[1] for k in got if k[0] == name]
        assert "instance" not in dict(labels), name
    assert of(got, "sentinel_keeper_policy_reloads_total", result="applied") == 2


def test_an_instance_named_twice_is_refused() -> None:
    (only,) = two_instance_view().instances[:1]
    with pytest.raises(ValueError, match="repeat"):
        MetricsView((only, only), {}, "0.1.0", "3.12.1", 0.0)


def test_a_single_instance_view_is_the_instance_default() -> None:
    policy = parse_policy(f"models: [{{name: {SHARED}}}]\n", "p.yaml")
    counts = Counts(passes=3)
    view = MetricsView.single(
        policy,
        counts,
        None,
        version="0.1.0",
        python="3.12.1",
        started_unix=5.0,
        reloads={"rejected": 1},
    )
    assert [(i.name, i.policy, i.counts) for i in view.instances] == [("default", policy, counts)]
    got = values(page(view))
    assert of(got, "sentinel_keeper_passes_total", instance="default") == 3
    assert of(got, "sentinel_keeper_policy_reloads_total", result="rejected") == 1


# --- status reads them back ---------------------------------------------------------------


def test_status_reads_back_each_instance() -> None:
    figures = read_figures(parse(page(two_instance_view())))
    assert sorted(figures.instances) == ["gpu0", "gpu1"]
    assert (figures.passes_of("gpu0"), figures.passes_of("gpu1"), figures.total_passes) == (
        10,
        12,
        22,
    )
    assert figures.models_of("gpu0")[SHARED].evictions == 0
    assert figures.models_of("gpu1")[SHARED].evictions == 3
    assert figures.models_of("gpu1")[SHARED].loads == {"evicted": 3}
    assert sorted(figures.models_of("gpu1")) == [SHARED, SMALL]
    assert figures.models_of("default") == {}


def test_a_page_from_before_instances_is_the_instance_default() -> None:
    policy = parse_policy(f"models: [{{name: {SHARED}}}]\n", "p.yaml")
    view = MetricsView.single(
        policy,
        counted((SHARED, "pinned", 2), passes=4),
        None,
        version="0.0.9",
        python="3.12.1",
        started_unix=5.0,
    )
    text = page(view)
    old = (
        text.replace('instance="default",', "")
        .replace(',instance="default"}', "}")
        .replace('{instance="default"}', "")
    )
    assert "instance=" not in old
    figures = read_figures(parse(old))
    assert list(figures.instances) == ["default"]
    assert figures.passes_of("default") == 4
    assert figures.models_of("default")[SHARED].evictions == 2
    assert read_figures(parse(text)) == figures


def test_status_lines_and_json_per_instance() -> None:
    now = NOW + timedelta(hours=1)
    shown = DaemonView(
        "http://127.0.0.1:9464/metrics", read_figures(parse(page(two_instance_view())))
    )
    gpu0, gpu1 = two_parts()
    first = daemon_lines(gpu0, shown, now)
    second = daemon_lines(gpu1, shown, now)
    assert first[0].startswith("daemon figures of instance gpu0 since it started ")
    assert "10 passes" in first[0]
    assert "12 passes" in second[0]
    assert first[1].split()[:2] == [SHARED, "not"]  # resident since is unknown in this view
    assert "evicted" not in first[1]
    assert second[1:] == [
        f"  {SMALL:<28} not resident; loaded 0x",
        f"  {SHARED:<28} not resident; loaded 3x: 3 evicted; evicted 3x",
    ]
    data = daemon_json(shown)
    assert data["passes"] == 22
    assert data["models"] == {}  # two instances: a model name alone says not which
    assert data["instances"]["gpu1"][SHARED]["evictions"] == 3
    assert data["instances"]["gpu0"][SHARED]["evictions"] == 0


def test_status_of_a_single_instance_reads_as_before() -> None:
    policy = parse_policy(f"models: [{{name: {SHARED}}}]\n", "p.yaml")
    view = MetricsView.single(
        policy,
        counted((SHARED, "pinned", 1), passes=4),
        None,
        version="0.1.0",
        python="3.12.1",
        started_unix=NOW.timestamp(),
    )
    shown = DaemonView("http://127.0.0.1:9464/metrics", read_figures(parse(page(view))))
    lines = daemon_lines(policy, shown, NOW + timedelta(hours=1))
    assert lines[0].startswith("daemon figures since it started ")
    assert lines[0].endswith(", 4 passes (from http://127.0.0.1:9464/metrics):")
    assert lines[1] == f"  {SHARED:<28} not resident; loaded 1x: 1 evicted; evicted 1x"
    data = daemon_json(shown)
    assert data["models"] == data["instances"]["default"]
    assert data["models"][SHARED]["loads"] == {"evicted": 1}
