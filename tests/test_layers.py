"""The layer rules: pure modules load no I/O library, and each I/O library has one home."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sentinel_keeper"
PURE = (
    "sentinel_keeper.plan",
    "sentinel_keeper.events",
    "sentinel_keeper.observation",
    "sentinel_keeper.ollama_wire",
    "sentinel_keeper.text",
    "sentinel_keeper.timings",
    "sentinel_keeper.daemon.lifecycle",
    "sentinel_keeper.policy.schema",
    "sentinel_keeper.causes",
    "sentinel_keeper.listen",
    "sentinel_keeper.report",
    "sentinel_keeper.metrics.counts",
    "sentinel_keeper.metrics.families",
    "sentinel_keeper.metrics.readback",
    "sentinel_keeper.gateway.rules",
    "sentinel_keeper.gateway.measure",
    "sentinel_keeper.gateway.ready",
    "sentinel_keeper.readiness",
)
# The one module allowed to import each I/O library.
HOMES = {
    "httpx": "sentinel_keeper/ollama.py",
    "pynvml": "sentinel_keeper/gpu.py",
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
    loaded = loaded_after_import(("sentinel_keeper.cli", "sentinel_keeper.daemon.service"))
    assert "prometheus_client" not in loaded


def test_the_keeper_never_loads_aiohttp() -> None:
    """The gateway runs in its own process: the keeper's code (and the metrics it publishes,
    the gateway's figures included) costs no memory for an HTTP server stack."""
    loaded = loaded_after_import(
        (
            "sentinel_keeper.cli",
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
            if any(n.startswith(("sentinel_keeper.daemon", "sentinel_keeper.cli")) for n in names):
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
