"""contrib/: the Grafana dashboard and the Prometheus alerting rules query only what the
keeper exports.

Every metric name in a panel's query, a template variable or a rule (its expression and its
annotations) is one of :func:`series_names`, and every label a query filters on, groups by,
matches on or names in a legend is one that metric carries (its labels in the catalog, ``le``
on a histogram's buckets, or the ``job`` and ``instance`` Prometheus adds when it scrapes).
The keeper's own ``instance`` label (the Ollama instance) is read as Prometheus stores it
with its default ``honor_labels: false``: ``exported_instance``; ``instance`` is the scrape
target.
``promtool check rules`` and ``promtool test rules`` (the rule file's unit tests) run when
promtool is installed (Debian: ``prometheus``); without it they are skipped, unless
SENTINEL_E2E=require (CI sets it), where a missing promtool fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel_keeper.metrics.families import CATALOG, series_names

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "sentinel-keeper.json"
RULES = ROOT / "contrib" / "prometheus" / "sentinel-keeper-rules.yml"
RULE_TESTS = ROOT / "contrib" / "prometheus" / "sentinel-keeper-rules.test.yml"

# prometheus_client's process collector, on the same endpoint; only these two are queried.
PROCESS = frozenset({"process_resident_memory_bytes", "process_cpu_seconds_total"})
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
# the keeper's instance label, renamed by Prometheus as it clashes with its own (honor_labels:
# false, the default)
EXPORTED = "exported_instance"
ALERTS = {
    "SentinelKeeperPinnedModelNotResident",
    "SentinelKeeperOllamaDown",
    "SentinelKeeperOllamaNotLoading",
    "SentinelKeeperRewarmStorm",
    "SentinelKeeperStalled",
    "SentinelKeeperMetricsAbsent",
}

NAME = re.compile(r"\b(?:sentinel_keeper_[a-z0-9_]+|process_[a-z_]+)\b")
SELECTOR = re.compile(r"\b(sentinel_keeper_[a-z0-9_]+|process_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
LABEL_VALUES = re.compile(
    r"label_values\(\s*([a-z0-9_]+)\s*(?:\{[^}]*\})?\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)"
)


def labels_of(name: str) -> frozenset[str] | None:
    """The labels of the series ``name`` as Prometheus stores them: the keeper's instance
    as exported_instance, the target labels; None: not exported."""
    if name in PROCESS:
        return TARGET_LABELS
    for spec in CATALOG:
        if name in spec.series_names:
            extra = {"le"} if spec.kind == "histogram" and name.endswith("_bucket") else set()
            stored = {EXPORTED if label == "instance" else label for label in spec.labels}
            return frozenset(stored) | extra | TARGET_LABELS
    return None


def about_an_instance(expr: str) -> bool:
    """Whether a metric of ``expr`` is about an Ollama instance."""
    return any(EXPORTED in (labels_of(name) or ()) for name in NAME.findall(expr))


def problems(expr: str, legend: str = "") -> list[str]:
    """What in ``expr`` (and the legend format of its panel target) the keeper does not
    export: unknown metric names, labels a selector filters on that its metric lacks, and
    grouping or legend labels that no metric of the expression carries."""
    found: list[str] = []
    names = set(NAME.findall(expr))
    exported = series_names() | PROCESS
    found += [f"{name}: not exported" for name in sorted(names - exported)]
    for name, matchers in SELECTOR.findall(expr):
        known = labels_of(name)
        if known is None:
            continue
        found += [
            f"{name} has no label {label!r}"
            for label in MATCHER.findall(matchers)
            if label not in known
        ]
    anywhere = set(TARGET_LABELS)
    for name in names:
        anywhere |= labels_of(name) or set()
    grouped = [label.strip() for group in GROUPING.findall(expr) for label in group.split(",")]
    found += [
        f"no metric of {expr!r} has the label {label!r}"
        for label in [*grouped, *LEGEND.findall(legend)]
        if label and label not in anywhere
    ]
    return found


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def load_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return data


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target


def rules(data: dict[str, Any]) -> Iterable[dict[str, Any]]:
    return [rule for group in data["groups"] for rule in group["rules"]]


# --- the checker itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "legend", "needle"),
    [
        ("sentinel_keeper_model_residen", "", "not exported"),
        ("sentinel_keeper_model_loads", "", "not exported"),  # a counter is read as _total
        ("process_virtual_memory_bytes", "", "not exported"),
        ('sentinel_keeper_ollama_up{model="x"}', "", "no label 'model'"),
        ("sum by (reason) (sentinel_keeper_model_evictions_total)", "", "'reason'"),
        ("sum by (le) (rate(sentinel_keeper_model_resident[5m]))", "", "'le'"),
        ("sentinel_keeper_gpu_memory_used_bytes", "{{model}}", "'model'"),
        ('sentinel_keeper_build_info{exported_instance="gpu0"}', "", "no label"),
        ("sum by (exported_instance) (sentinel_keeper_policy_reloads_total)", "", "exported_"),
    ],
)
def test_the_checker_finds_what_is_not_exported(expr: str, legend: str, needle: str) -> None:
    found = problems(expr, legend)
    assert any(needle in p for p in found), found


def test_the_checker_accepts_what_is_exported() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (job, model, le) (rate("
        'sentinel_keeper_model_load_duration_seconds_bucket{model=~"$model", tier="pinned"}[5m])))'
    )
    assert problems(expr, "{{model}}") == []
    by_ollama = (
        'max by (instance, exported_instance) (sentinel_keeper_ollama_up{exported_instance="a"})'
    )
    assert problems(by_ollama, "{{exported_instance}} {{instance}}") == []
    assert about_an_instance(by_ollama)
    assert not about_an_instance("sentinel_keeper_build_info")


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_is_importable() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ollama = variables["ollama"]
    assert ollama["query"]["query"] == (
        "label_values(sentinel_keeper_ollama_up, exported_instance)"
    )
    model = variables["model"]
    assert model["type"] == "query"
    assert model["query"]["query"] == (
        'label_values(sentinel_keeper_model_resident{exported_instance=~"$ollama"}, model)'
    )
    for variable in (ollama, model):
        assert variable["includeAll"] and variable["allValue"] == ".*"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["title"], panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_dashboard_covers_the_keepers_story() -> None:
    exprs = " ".join(target["expr"] for _, target in targets(load_dashboard()))
    for name in (
        "sentinel_keeper_model_resident",
        "sentinel_keeper_model_loads_total",
        "sentinel_keeper_model_load_duration_seconds_bucket",
        "sentinel_keeper_gpu_memory_used_bytes",
        "sentinel_keeper_gpu_memory_free_bytes",
        "sentinel_keeper_gpu_memory_total_bytes",
        "sentinel_keeper_ollama_up",
        "sentinel_keeper_ollama_outages_total",
        "sentinel_keeper_ollama_restarts_total",
        "sentinel_keeper_foreign_model_size_bytes",
        "sentinel_keeper_client_reloads_total",
        "sentinel_keeper_pass_duration_seconds_bucket",
    ):
        assert re.search(rf"\b{name}\b", exprs), name


def test_dashboard_shows_each_ollama_instance_apart() -> None:
    """Every query of a metric about an Ollama instance filters on the instance variable,
    and one that aggregates keeps the instance apart or sums a breakdown over instances."""
    checked: list[str] = []
    keeper_only: list[str] = []
    for title, target in targets(load_dashboard()):
        expr = target["expr"]
        if not about_an_instance(expr):
            keeper_only.append(title)
            continue
        checked.append(title)
        assert 'exported_instance=~"$ollama"' in expr, title
        grouped = [label.strip() for group in GROUPING.findall(expr) for label in group.split(",")]
        breakdown = {"reason", "kind", "num_ctx"} & set(grouped)
        assert not grouped or EXPORTED in grouped or breakdown, (title, expr)
    # Only the keeper's own process is about no Ollama instance: every other query was checked.
    assert keeper_only == ["Keeper memory (RSS)"]
    assert checked


def test_dashboard_queries_only_what_the_keeper_exports() -> None:
    dashboard = load_dashboard()
    found = [
        f"{title}: {p}"
        for title, target in targets(dashboard)
        for p in problems(target["expr"], target.get("legendFormat", ""))
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        for name, label in LABEL_VALUES.findall(variable["query"]["query"]):
            known = labels_of(name)
            if known is None or label not in known:
                found.append(f"variable {variable['name']}: {name} has no label {label!r}")
    assert found == []


# --- the alerting rules ---------------------------------------------------------------------


def test_rules_have_the_expected_alerts() -> None:
    data = load_rules()
    assert [group["name"] for group in data["groups"]] == ["sentinel-keeper"]
    alerts = {rule["alert"]: rule for rule in rules(data)}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert rule["expr"].strip(), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    pinned = alerts["SentinelKeeperPinnedModelNotResident"]
    assert pinned["expr"] == 'sentinel_keeper_model_resident{tier="pinned"} == 0'
    assert pinned["for"] == "5m"


def test_rules_query_only_what_the_keeper_exports() -> None:
    found: list[str] = []
    for rule in rules(load_rules()):
        found += [f"{rule['alert']}: {p}" for p in problems(rule["expr"])]
        prose = " ".join(rule["annotations"].values())
        found += [
            f"{rule['alert']} annotations: {p}" for p in problems(" ".join(NAME.findall(prose)))
        ]
    assert found == []


def test_alerts_about_an_ollama_instance_name_it() -> None:
    """With several Ollama instances an alert must say which: grouped by, and named in the
    summary."""
    for rule in rules(load_rules()):
        if not about_an_instance(rule["expr"]) or rule["expr"].startswith("absent("):
            continue  # absent() has no labels: there is no series of any instance
        for group in GROUPING.findall(rule["expr"]):
            assert EXPORTED in [label.strip() for label in group.split(",")], rule["alert"]
        assert "{{ $labels.exported_instance }}" in rule["annotations"]["summary"], rule["alert"]
        assert "{{ $labels.instance }}" in rule["annotations"]["summary"], rule["alert"]


def promtool() -> str:
    """promtool's path; skip without it, unless SENTINEL_E2E=require."""
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("SENTINEL_E2E", "auto").strip().lower() == "require":
            pytest.fail(f"SENTINEL_E2E=require, but {reason}")
        pytest.skip(reason)
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_checks_the_rules() -> None:
    done = run_promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_unit_tests_that_fire_it_and_keep_it_quiet() -> None:
    data: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert data["rule_files"] == [RULES.name]
    fired = {
        case["alertname"]
        for test in data["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in data["tests"]
        for case in test["alert_rule_test"]
        if not case["exp_alerts"]
    }
    assert fired == ALERTS
    assert quiet == ALERTS


def test_the_dashboards_picture_queries_every_panel() -> None:
    """benchmarks/dashboard.py draws each panel from its own queries, Grafana's variables
    replaced by what Prometheus understands."""
    from benchmarks import dashboard

    panels = dashboard.load_panels(DASHBOARD)
    assert [p.title for p in panels] == [p["title"] for p in load_dashboard()["panels"]]
    for panel in panels:
        for target in panel.targets:
            expr = dashboard.substitute(target.expr)
            assert "$" not in expr, expr
            assert problems(expr, target.legend) == []
    assert dashboard.legend("num_ctx {{num_ctx}}", {"num_ctx": "4096"}) == "num_ctx 4096"
