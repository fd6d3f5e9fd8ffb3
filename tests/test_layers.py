"""The layer rules: the folders are the architecture (each part imports only the parts below
it in :data:`LAYERS`, and the top level holds no module but a few), pure modules load no I/O
library, each I/O library has one home, the decisions reach no I/O module, the gateway and the
metrics share value types only, and no import cycle (``python -m tests.support.layers`` prints
the graph)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.layers import cycles, module_graph, part_graph, reached

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sentinel_keeper"
PURE = (
    "sentinel_keeper.decide.plan",
    "sentinel_keeper.decide.capacity",
    "sentinel_keeper.values.figures",
    "sentinel_keeper.report.events",
    "sentinel_keeper.observe.observation",
    "sentinel_keeper.observe.ollama_wire",
    "sentinel_keeper.values.text",
    "sentinel_keeper.values.timings",
    "sentinel_keeper.daemon.lifecycle",
    "sentinel_keeper.policy.schema",
    "sentinel_keeper.decide.causes",
    "sentinel_keeper.values.listen",
    "sentinel_keeper.report.render",
    "sentinel_keeper.metrics.counts",
    "sentinel_keeper.metrics.families",
    "sentinel_keeper.metrics.readback",
    "sentinel_keeper.gateway.rules",
    "sentinel_keeper.gateway.measure",
    "sentinel_keeper.gateway.ready",
    "sentinel_keeper.decide.readiness",
    "sentinel_keeper.report.logevent",
    "sentinel_keeper.metrics.status",
)
# The one module allowed to import each I/O library.
HOMES = {
    "httpx": "sentinel_keeper/observe/ollama.py",
    "pynvml": "sentinel_keeper/observe/gpu.py",
    "prometheus_client": "sentinel_keeper/metrics/exposition.py",
    "aiohttp": "sentinel_keeper/gateway/server.py",
}


def loaded_after_import(modules: tuple[str, ...]) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout))


def test_pure_modules_load_no_io_library() -> None:
    loaded = loaded_after_import(PURE)
    assert "sentinel_keeper" in loaded  # the probe itself worked
    assert set(HOMES) & loaded == set()


def test_the_daemon_loads_prometheus_client_only_when_metrics_are_on() -> None:
    """With metrics off, the daemon's code (all but the exporter) costs no memory for them."""
    loaded = loaded_after_import(("sentinel_keeper.cli.main", "sentinel_keeper.daemon.service"))
    assert "prometheus_client" not in loaded


def test_the_keeper_never_loads_aiohttp() -> None:
    """The gateway runs in its own process: the keeper's code (and the metrics it publishes,
    the gateway's figures included) costs no memory for an HTTP server stack."""
    loaded = loaded_after_import(
        (
            "sentinel_keeper.cli.main",
            "sentinel_keeper.daemon.service",
            "sentinel_keeper.metrics.exporter",
            "sentinel_keeper.metrics.families",
            "sentinel_keeper.gateway.exchange",
        )
    )
    assert "aiohttp" not in loaded
    assert "aiohttp" in loaded_after_import(("sentinel_keeper.gateway.process",))


def test_the_gateway_imports_nothing_of_the_daemon() -> None:
    """The data path shares no code path with the keeper's process: what it needs arrives
    as files (gateway/exchange.py)."""
    importers = []
    for path in sorted((PACKAGE / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(
                n.startswith(("sentinel_keeper.daemon", "sentinel_keeper.cli.main")) for n in names
            ):
                importers.append(path.relative_to(ROOT).as_posix())
    assert importers == []
    loaded = loaded_after_import(("sentinel_keeper.gateway.process",))
    assert "apscheduler" not in loaded  # nor the keeper's scheduler, transitively


def test_pure_modules_load_no_yaml() -> None:
    assert "yaml" not in loaded_after_import(PURE)


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_each_io_library_is_imported_by_one_module() -> None:
    importers: dict[str, list[str]] = {library: [] for library in HOMES}
    for path in sorted(PACKAGE.rglob("*.py")):
        for library in HOMES.keys() & imported_roots(path):
            importers[library].append(path.relative_to(ROOT).as_posix())
    assert importers == {library: [home] for library, home in HOMES.items()}


# The modules that decide: what to load, what Ollama will do, why a model came and went (all
# of decide/, and the policy's time windows).
DECIDE = (
    *sorted(m for m in module_graph() if m.startswith("sentinel_keeper.decide.")),
    "sentinel_keeper.policy.windows",
)
# The modules that talk to something outside the process (or run those that do).
IO = (
    "sentinel_keeper.observe.ollama",
    "sentinel_keeper.observe.gpu",
    "sentinel_keeper.systemd.systemctl",
    "sentinel_keeper.systemd.notify",
    "sentinel_keeper.act.atomicfile",
    "sentinel_keeper.report.logs",
    "sentinel_keeper.act.state",
    "sentinel_keeper.observe.portholder",
    "sentinel_keeper.systemd.listenfds",
    "sentinel_keeper.act.reconcile",
    "sentinel_keeper.cli.main",
    "sentinel_keeper.cli.bench",
    "sentinel_keeper.policy.loading",
    "sentinel_keeper.policy.yamlsource",
    "sentinel_keeper.policy.risks",
)
IO_PACKAGES = ("sentinel_keeper.daemon", "sentinel_keeper.override")


def test_there_is_no_import_cycle() -> None:
    """Type-only imports and imports inside functions count too."""
    graph = module_graph()
    assert "sentinel_keeper.decide.plan" in graph  # the graph was read
    assert cycles(graph) == []
    assert cycles(part_graph(graph)) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
        ["a", "b", "c"]
    ]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_the_decisions_reach_no_io_module() -> None:
    graph = module_graph()
    found = {}
    for module in DECIDE:
        assert module in graph
        io = {
            m
            for m in reached(graph, module)
            if m in IO or m.startswith(tuple(f"{p}." for p in IO_PACKAGES)) or m in IO_PACKAGES
        }
        if io:
            found[module] = sorted(io)
    assert found == {}


def _importers(graph: dict[str, frozenset[str]], source: str, target: str) -> list[str]:
    """The modules of the package ``source`` that import one of the package ``target``."""
    return sorted(
        module
        for module, imports in graph.items()
        if module.startswith(f"{source}.")
        and any(i == target or i.startswith(f"{target}.") for i in imports)
    )


def test_the_gateway_and_the_metrics_share_value_types_only() -> None:
    """The gateway's figures cross to the keeper as files, in types of figures.py: neither
    package imports the other."""
    graph = module_graph()
    assert _importers(graph, "sentinel_keeper.gateway", "sentinel_keeper.metrics") == []
    assert _importers(graph, "sentinel_keeper.metrics", "sentinel_keeper.gateway") == []
    assert _importers(graph, "sentinel_keeper.gateway", "sentinel_keeper.daemon") == []


# The parts of the package from the bottom up: each imports only parts before it. values/ and
# errors are what every layer shares; observe -> decide -> act is the reconcile pass; report
# says what it did; metrics, override and the gateway are built on those; daemon and cli run it.
LAYERS = (
    "ollama_env",
    "values",
    "errors",
    "systemd",
    "policy",
    "observe",
    "decide",
    "act",
    "report",
    "metrics",
    "override",
    "gateway",
    "daemon",
    "cli",
)
# Top-level modules: the package, `python -m sentinel_keeper`, the one exception hierarchy
# that every layer raises, and the kept command name `python -m sentinel_keeper.gpu`.
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "gpu.py"}


def test_the_top_level_holds_folders_only() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL
    folders = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders == set(LAYERS) - {"errors"}


def upward(graph: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    """The parts that import a part at their own level or above it (or one not in LAYERS)."""

    def level(part: str) -> int:
        return LAYERS.index(part) if part in LAYERS else len(LAYERS)

    found = {
        part: sorted(i for i in imports if level(i) >= level(part))
        for part, imports in graph.items()
    }
    return {part: imports for part, imports in found.items() if imports and part in LAYERS}


def test_each_part_imports_only_the_parts_below_it() -> None:
    graph = part_graph(module_graph())
    assert graph["daemon"] >= {"observe", "decide", "act"}  # the graph was read
    assert upward(graph) == {}


def test_the_layer_rule_finds_an_upward_import() -> None:
    """The check above on planted graphs: values importing decide, and a part nobody placed."""
    assert upward({"values": frozenset({"decide"}), "decide": frozenset({"values"})}) == {
        "values": ["decide"]
    }
    assert upward({"act": frozenset({"newpart"})}) == {"act": ["newpart"]}


def test_the_gateway_leans_on_no_keeper_part() -> None:
    """The data path imports neither the daemon, the metrics, the CLI nor the drop-in code."""
    graph = part_graph(module_graph())
    assert graph["gateway"] & {"daemon", "metrics", "cli", "override", "act"} == set()
    assert graph["metrics"] & {"gateway"} == set()


def test_values_import_nothing_of_the_package() -> None:
    """values/ are pure rules anyone may use: they lean on each other and Go's parsers only."""
    graph = part_graph(module_graph())
    assert graph["values"] <= {"ollama_env"}
    assert graph["ollama_env"] == frozenset()
