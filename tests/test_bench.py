"""`sentinel-keeper bench` against the Ollama double over real HTTP on 127.0.0.1: cold and
warm timings, Ollama's own counters, the models put back in their policy state, and the
models other clients use left alone unless --force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sentinel_keeper.cli import main as cli
from sentinel_keeper.cli.bench import (
    BenchReport,
    ModelBench,
    bench_json,
    bench_table,
    in_use,
    percentile,
    run_bench,
)
from sentinel_keeper.observe.observation import LoadedModel, ModelDetails
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.observe.ollama_wire import TimedAnswer
from sentinel_keeper.policy import Policy
from tests.support.ollama_double import FakeModel, GiB, InstanceInfo, MiB, OllamaDouble
from tests.support.ollama_fixtures import NOMIC

ROOT = Path(__file__).resolve().parent.parent
LOAD_SECONDS = 0.2
FIRST_TOKEN_SECONDS = 0.02

SMALL = FakeModel(
    "llama3.2:1b",
    size=1300 * MiB,
    block_count=16,
    head_count_kv=8,
    embedding_length=2048,
    head_count=32,
)
EXTRA = FakeModel("qwen2.5:0.5b", size=400 * MiB, block_count=24, head_count_kv=2)
EMBED = NOMIC
OTHER = FakeModel("mistral:7b", size=4 * GiB)

POLICY = {
    "models": [
        {"name": "llama3.2:1b", "options": {"num_ctx": 2048}},
        {"name": "nomic-embed-text"},
        {"name": "qwen2.5:0.5b", "tier": "extra", "keep_alive": "1h"},
    ]
}


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble(
        [SMALL, EXTRA, EMBED, OTHER],
        vram_total=24 * GiB,
        load_seconds=LOAD_SECONDS,
        first_token_seconds=FIRST_TOKEN_SECONDS,
        token_seconds=0.002,
    ).start()
    try:
        yield server
    finally:
        server.stop()


def make_policy(url: str, body: dict[str, Any] = POLICY) -> Policy:
    return Policy.model_validate({"ollama": {"url": url}, **body})


def client_request(double: OllamaDouble, model: str, **body: Any) -> None:
    """Another client of Ollama (a chat app): one request with a prompt."""
    response = httpx.post(
        double.url + "/api/generate",
        json={"model": model, "prompt": "hi", "stream": False, **body},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def unload_requests(double: OllamaDouble) -> list[str]:
    return [
        r.body["model"]
        for r in double.requests
        if r.path == "/api/generate"
        and isinstance(r.body, dict)
        and r.body.get("keep_alive") == 0
        and not r.body.get("prompt")
    ]


def instance(double: OllamaDouble, name: str) -> InstanceInfo:
    found = double.instance(name)
    assert found is not None, f"{name} is not loaded"
    return found


def bench(double: OllamaDouble, *names: str, **kw: Any) -> BenchReport:
    with OllamaClient(double.url) as client:
        return run_bench(make_policy(double.url), client, list(names) or None, **kw)


def by_name(report: BenchReport) -> dict[str, ModelBench]:
    return {m.name: m for m in report.models}


# --- against the double ---------------------------------------------------------------------


def test_bench_times_cold_and_warm_and_restores_the_policy_state(double: OllamaDouble) -> None:
    client_request(double, "llama3.2:1b", keep_alive=-1, options={"num_ctx": 2048})
    report = bench(double, runs=3, tokens=8)
    assert report.ok
    assert report.version == double.version
    models = by_name(report)
    assert list(models) == ["llama3.2:1b", "nomic-embed-text:latest", "qwen2.5:0.5b"]

    small = models["llama3.2:1b"]
    assert small.endpoint == "generate"
    assert small.cold is not None
    assert small.cold.eval_count == 1  # the cold request asks for one token
    assert small.cold_ttft is not None and small.cold_ttft >= LOAD_SECONDS
    assert small.load_duration is not None and small.load_duration >= LOAD_SECONDS
    assert len(small.warm) == 3
    assert all(a.load_duration == 0 for a in small.warm)  # warm: no load
    assert small.warm_p50 is not None and small.warm_p50 < small.cold_ttft
    assert small.warm_p50 >= FIRST_TOKEN_SECONDS
    assert small.tokens_per_second is not None and small.tokens_per_second > 0
    assert small.spread is not None and small.spread > 1
    assert small.restored == "resident (policy)"

    embed = models["nomic-embed-text:latest"]
    assert embed.endpoint == "embed"
    assert embed.cold_ttft is not None and embed.cold_ttft >= LOAD_SECONDS
    assert embed.tokens_per_second is None
    assert embed.restored == "resident (policy)"

    extra = models["qwen2.5:0.5b"]
    assert extra.restored == "unloaded (as before)"

    # the policy state: pinned models forever with the policy's num_ctx, the extra gone
    assert instance(double, "llama3.2:1b").forever
    assert instance(double, "llama3.2:1b").num_ctx == 2048
    assert instance(double, "nomic-embed-text").forever
    assert double.instance("qwen2.5:0.5b") is None
    # the pinned model that was loaded was unloaded first, so its cold figure is a real load
    assert "llama3.2:1b" in unload_requests(double)


def test_bench_refuses_a_model_a_client_set_its_own_keep_alive_on(double: OllamaDouble) -> None:
    client_request(double, "llama3.2:1b", keep_alive="5m", options={"num_ctx": 2048})
    before = instance(double, "llama3.2:1b")
    report = bench(double, "llama3.2:1b", runs=1)
    assert not report.ok
    result = report.models[0]
    assert result.status == "refused"
    assert result.message is not None and "keep_alive" in result.message
    assert "--force" in result.message
    assert unload_requests(double) == []
    after = instance(double, "llama3.2:1b")
    assert after.keep_alive_ns == before.keep_alive_ns  # untouched

    forced = bench(double, "llama3.2:1b", runs=1, force=True)
    assert forced.ok
    assert unload_requests(double) == ["llama3.2:1b"]
    assert instance(double, "llama3.2:1b").forever  # back in the policy state


def test_bench_refuses_a_model_loaded_with_another_num_ctx(double: OllamaDouble) -> None:
    client_request(double, "llama3.2:1b", options={"num_ctx": 4096})
    result = bench(double, "llama3.2:1b", runs=1).models[0]
    assert result.status == "refused"
    assert result.message is not None and "num_ctx 4096" in result.message
    assert instance(double, "llama3.2:1b").num_ctx == 4096


def test_bench_of_a_model_outside_the_policy(double: OllamaDouble) -> None:
    # not loaded: benched, then unloaded again
    report = bench(double, "mistral:7b", runs=2)
    result = report.models[0]
    assert report.ok, result.message
    assert result.tier == "-"
    assert result.restored == "unloaded (as before)"
    assert double.instance("mistral:7b") is None

    # loaded by someone else: refused; forced: loaded again as /api/ps showed it
    client_request(double, "mistral:7b", keep_alive="10m", options={"num_ctx": 8192})
    refused = bench(double, "mistral:7b", runs=1).models[0]
    assert refused.status == "refused"
    assert refused.message is not None and "does not name it" in refused.message
    forced = bench(double, "mistral:7b", runs=1, force=True).models[0]
    assert forced.status == "ok"
    assert forced.restored == "loaded again (as before)"
    again = instance(double, "mistral:7b")
    assert again.num_ctx == 8192
    assert not again.forever
    assert 9 * 60 < again.keep_alive_ns / 1e9 <= 10 * 60


def test_bench_reports_a_model_that_is_not_installed(double: OllamaDouble) -> None:
    report = bench(double, "llama3.2:1b", "phi3:mini", runs=1)
    results = by_name(report)
    assert results["llama3.2:1b"].status == "ok"
    assert results["phi3:mini"].status == "failed"
    assert results["phi3:mini"].message == "not installed in Ollama"
    assert not report.ok


def test_bench_generates_tokens_only_for_its_own_requests(double: OllamaDouble) -> None:
    report = bench(double, "llama3.2:1b", runs=4, tokens=2)
    small = report.models[0]
    assert small.cold is not None
    generated = small.cold.eval_count + sum(a.eval_count for a in small.warm)
    assert generated == double.tokens_generated == 1 + 4 * 2


# --- the command line -------------------------------------------------------------------------


def write_policy(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"ollama: {{url: '{url}'}}\n"
        "models:\n"
        "  - name: llama3.2:1b\n"
        "    options: {num_ctx: 2048}\n"
        "  - name: nomic-embed-text\n"
    )
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SENTINEL_POLICY"}
    return subprocess.run(
        [sys.executable, "-m", "sentinel_keeper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.slow
def test_cli_bench_json_as_a_process(double: OllamaDouble, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, double.url)
    result = run_cli("--policy", str(policy), "bench", "--runs", "2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["ollama"] == {"url": double.url, "version": double.version}
    assert [m["name"] for m in data["models"]] == ["llama3.2:1b", "nomic-embed-text:latest"]
    small = data["models"][0]
    assert small["status"] == "ok"
    assert small["cold_ttft_ms"] >= LOAD_SECONDS * 1000
    assert len(small["warm_ttfb_ms"]) == 2
    assert small["warm_p50_ms"] < small["cold_ttft_ms"]
    assert small["restored"] == "resident (policy)"
    assert data["models"][1]["tokens_per_second"] is None

    client_request(double, "llama3.2:1b", keep_alive="30s", options={"num_ctx": 2048})
    refused = run_cli("--policy", str(policy), "bench", "--model", "llama3.2:1b", "--runs", "1")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "REFUSED" in refused.stdout


def test_cli_bench_table_exit_codes(
    double: OllamaDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write_policy(tmp_path, double.url)
    assert cli.main(["--policy", str(policy), "bench", "--runs", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ollama {double.version} at {double.url}")
    assert out[1].split()[:3] == ["MODEL", "COLD", "TTFT"]
    assert out[2].startswith("llama3.2:1b") and out[2].endswith("resident (policy)")
    assert " ms " in out[2]

    # a bad --runs is a usage error; an unreachable Ollama is 69; a bad policy is 78
    with pytest.raises(SystemExit) as usage:
        cli.main(["--policy", str(policy), "bench", "--runs", "0"])
    assert usage.value.code == 2
    double.stop()
    assert cli.main(["--policy", str(policy), "bench"]) == 69
    assert "unreachable" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: llama3.2:1b, tier: sometimes}]\n")
    assert cli.main(["--policy", str(bad), "bench"]) == 78
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"ollama: {{url: '{double.url}'}}\n")
    assert cli.main(["--policy", str(empty), "bench"]) == 2


# --- pure parts -------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FOREVER = NOW + timedelta(days=292 * 365)


def loaded(expires: datetime | None = FOREVER, ctx: int | None = 2048) -> LoadedModel:
    return LoadedModel(
        name="llama3.2:1b",
        size=GiB,
        size_vram=GiB,
        expires_at=expires,
        context_length=ctx,
    )


@pytest.mark.parametrize(
    ("models", "instance", "trained", "expected"),
    [
        (POLICY, loaded(), None, None),  # as sentinel-keeper loads it
        (POLICY, loaded(expires=None), None, None),  # an old Ollama without expires_at
        (POLICY, loaded(ctx=None), None, None),  # an old Ollama without context_length
        (POLICY, loaded(expires=NOW + timedelta(minutes=4)), None, "expires in 4m"),
        (POLICY, loaded(ctx=4096), None, "num_ctx 4096, the policy says 2048"),
        # a policy num_ctx above the trained context shows as the trained one
        ({"models": [{"name": "llama3.2:1b", "options": {"num_ctx": 8192}}]}, loaded(), 2048, None),
        ({"models": []}, loaded(), None, "does not name it"),
        # an extra's timer is finite by design: not a sign of another client
        (
            {"models": [{"name": "llama3.2:1b", "tier": "extra"}]},
            loaded(expires=NOW + timedelta(minutes=30)),
            None,
            None,
        ),
    ],
)
def test_in_use_rule(
    models: dict[str, Any], instance: LoadedModel, trained: int | None, expected: str | None
) -> None:
    policy = Policy.model_validate(models)
    details = ModelDetails(name="llama3.2:1b", context_length=trained)
    reason = in_use(policy.model("llama3.2:1b"), instance, details, NOW)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def answer(ttfb: float, *, tokens: int = 8, eval_duration: float | None = 0.1) -> TimedAnswer:
    return TimedAnswer(
        ttfb=ttfb,
        seconds=ttfb + 0.1,
        eval_count=tokens,
        load_duration=0.0,
        eval_duration=eval_duration,
        prompt_eval_duration=0.01,
        endpoint="generate",
    )


def test_figures_and_renderings() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0
    cold = TimedAnswer(14.835, 15.0, 1, 14.2, 0.01, 0.3, "generate")
    ok = ModelBench(
        "qwen2.5:14b",
        "pinned",
        "ok",
        endpoint="generate",
        cold=cold,
        warm=(answer(0.507), answer(0.52), answer(0.49, eval_duration=0.2)),
        restored="resident (policy)",
    )
    assert ok.warm_p50 == 0.507
    assert ok.warm_p95 == 0.52
    assert ok.tokens_per_second == 80.0  # the median of 80, 80 and 40
    assert ok.spread is not None and round(ok.spread, 1) == 29.3
    refused = ModelBench("mistral:7b", "-", "refused", "not unloaded: because")
    report = BenchReport("http://127.0.0.1:11434", "0.33.0", 3, 32, (ok, refused))
    assert not report.ok
    lines = bench_table(report)
    assert lines[0] == (
        "ollama 0.33.0 at http://127.0.0.1:11434; cold: unloaded, then 1 token; "
        "warm: 3 runs of up to 32 tokens"
    )
    assert lines[2].split() == [
        "qwen2.5:14b",
        "14,835",
        "ms",
        "14,200",
        "ms",
        "507",
        "ms",
        "520",
        "ms",
        "29.3x",
        "80.0",
        "resident",
        "(policy)",
    ]
    assert lines[3] == f"{'mistral:7b':<28} REFUSED: not unloaded: because"
    data = bench_json(report)
    assert data["ok"] is False
    first = data["models"][0]
    assert first["cold_ttft_ms"] == 14835.0
    assert first["warm_ttfb_ms"] == [507.0, 520.0, 490.0]
    assert first["tier"] == "pinned"
    assert data["models"][1]["tier"] is None
    assert data["models"][1]["cold_ttft_ms"] is None
