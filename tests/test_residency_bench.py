"""The residency benchmark (benchmarks/residency.py) stays runnable: its seeded workload, the
records of the Ollama double it is built on, and a short run of the whole harness (every
strategy, the real daemon included) as a process."""

from __future__ import annotations

import importlib.util
import itertools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks import residency
from tests.support.ollama_double import FakeModel, GiB, OllamaDouble

ROOT = Path(__file__).resolve().parent.parent


# --- the workload ---------------------------------------------------------------------------


def test_workload_is_a_function_of_the_seed() -> None:
    first = residency.make_workload(7, 2.0)
    assert first == residency.make_workload(7, 2.0)
    assert first != residency.make_workload(8, 2.0)
    prompts = [r.prompt for r in first.requests()]
    assert len(prompts) == len(set(prompts))  # each request is matched by its prompt


def test_workload_has_idle_gaps_and_every_fault() -> None:
    workload = residency.make_workload(1, 4.0)
    kinds = {r.kind for r in workload.requests()}
    assert kinds == {"pinned", "other-ctx", "foreign"}
    assert workload.restarts
    keep_alives = {r.keep_alive for r in workload.requests()}
    assert {None, "5m", "30s", 0} <= keep_alives
    for stream in workload.streams:
        assert all(r.at < workload.end for r in stream)
        assert [r.at for r in stream] == sorted(r.at for r in stream)
    for stream in workload.streams[:3]:  # one user per pinned model
        gaps = [b.at - a.at for a, b in itertools.pairwise(stream)]
        long_gaps = [g for g in gaps if g > 300]
        assert len(long_gaps) >= 2  # idle longer than Ollama's 5 minutes, more than once
        assert all(g <= 200 or g >= 360 for g in gaps)


def test_is_load_request() -> None:
    assert residency.is_load_request("POST", "/api/generate", {"model": "m", "keep_alive": -1})
    assert residency.is_load_request("POST", "/api/embed", {"model": "m"})
    assert not residency.is_load_request("POST", "/api/generate", {"model": "m", "prompt": "x"})
    assert not residency.is_load_request("POST", "/api/generate", {"model": "m", "keep_alive": 0})
    assert not residency.is_load_request("GET", "/api/ps", None)


# --- the double's records the benchmark reads -----------------------------------------------


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    small = FakeModel("small:1b", size=GiB // 2, block_count=1, head_count_kv=1, head_count=1)
    big = FakeModel("big:9b", size=7 * GiB, block_count=1, head_count_kv=1, head_count=1)
    server = OllamaDouble(
        [small, big], vram_total=8 * GiB, load_seconds=0.05, first_token_seconds=0.01
    ).start()
    try:
        yield server
    finally:
        server.stop()


def generate(double: OllamaDouble, model: str, **body: Any) -> None:
    response = httpx.post(
        double.url + "/api/generate",
        json={"model": model, "stream": False, **body},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_double_records_warm_and_cold_requests_and_unload_reasons(double: OllamaDouble) -> None:
    generate(double, "small:1b", prompt="one", options={"num_ctx": 2048})
    generate(double, "small:1b", prompt="two", options={"num_ctx": 2048})
    generate(double, "small:1b", prompt="three", options={"num_ctx": 4096})  # reload
    generate(double, "small:1b", prompt="four", options={"num_ctx": 4096}, keep_alive=0)
    generate(double, "small:1b", keep_alive=-1, options={"num_ctx": 4096})  # load, no prompt
    generate(double, "big:9b", prompt="five")  # evicts small:1b (no room beside it)
    records = {r.prompt: r for r in double.completions}
    assert list(records) == ["one", "two", "three", "four", "five"]
    assert [records[p].warm for p in records] == [False, True, False, True, False]
    assert records["one"].wait_seconds >= 0.05  # waited for the load
    assert records["two"].wait_seconds < records["one"].wait_seconds
    assert records["two"].ttft_seconds >= 0.01
    assert all(r.tokens == 3 for r in records.values())
    assert [(u.model, u.reason) for u in double.unload_log] == [
        ("small:1b", "reload"),
        ("small:1b", "keep_alive 0"),
        ("small:1b", "evicted"),
    ]
    assert [(r.model, r.seconds >= 0.05) for r in double.load_log] == [
        ("small:1b", True),
        ("small:1b", True),
        ("small:1b", True),
        ("big:9b", True),
    ]
    before = double.now()
    double.restart()
    assert double.restart_log and double.restart_log[-1] >= before
    assert double.unload_log[-1][::2] == ("big:9b", "restart")


# --- the whole harness, briefly -------------------------------------------------------------


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_residency_harness_runs_end_to_end(tmp_path: Path) -> None:
    plot = importlib.util.find_spec("matplotlib") is not None
    argv = [
        sys.executable,
        "-m",
        "benchmarks.residency",
        "--seed",
        "3",
        "--hours",
        "0.3",
        "--time-scale",
        "300",
        "--rewarm-restarts",
        "1",
        "--rewarm-time-scale",
        "20",
        "--rewarm-interval",
        "1",
        "--gateway-foreign",
        "evict,reject",
        "--out",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    if not plot:
        argv.append("--no-plot")
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=240, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "smoke.md").read_text()
    assert "python -m benchmarks.residency --seed 3 --hours 0.3" in text
    rows = table_rows(text, "| strategy | pinned requests")
    assert list(rows) == [
        "none (5m default)",
        "OLLAMA_KEEP_ALIVE=-1",
        "cron warm-up every 5m",
        "sentinel-keeper",
        "sentinel-keeper + gateway (foreign: evict)",
        "sentinel-keeper + gateway (foreign: reject)",
    ]
    # the same workload for every strategy
    assert len({cells[0] for cells in rows.values()}) == 1
    keep_warm = {name: int(cells[7]) for name, cells in rows.items()}
    sent = {name: int(cells[8]) for name, cells in rows.items()}
    assert keep_warm["none (5m default)"] == sent["none (5m default)"] == 0
    assert keep_warm["cron warm-up every 5m"] > 0 and sent["cron warm-up every 5m"] > 0
    for keeper in ("sentinel-keeper", "sentinel-keeper + gateway (foreign: evict)"):
        assert keep_warm[keeper] == 0  # loads without generating
        assert sent[keeper] > 0
    foreign = table_rows(text, "| strategy | answered | cold | TTFB mean ms")
    assert list(foreign) == list(rows)
    assert "## Targets" in text
    cold = {name: int(cells[1].split()[0]) for name, cells in rows.items()}
    assert cold["none (5m default)"] > 0  # the workload does make models cold
    assert re.search(r"^\| 1 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", text, re.MULTILINE)
    # five for the keeper, two for each gateway run
    assert text.count("**met**") + text.count("**MISSED**") == 5 + 2 * 2
    assert "cold-hit share <= 0.5%, causes left: restarts only (gateway, foreign: reject)" in text
    if plot:
        assert (tmp_path / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_plan_pass_benchmark_runs() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.plan_pass",
            "--models",
            "10",
            "--gpus",
            "2",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plan() over 10 policy models and 2 GPUs")
    assert [line.split()[0] for line in lines[1:]] == ["settled", "disturbed"]
    assert all(re.search(r"median [\d.]+ ms per pass", line) for line in lines[1:])
