"""The gateway's overhead benchmark (benchmarks/gateway_overhead.py) stays runnable: a run
of a handful of requests as a process, its table, its profile and its targets; and the
targets' arithmetic on figures made up here.

The run has its nginx column when nginx is installed (Debian: ``nginx``); without it the
benchmark says so and runs without the column, and so does this test, unless CI is set or
SENTINEL_E2E=require, where a missing nginx fails it (.ci/run installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gateway_overhead
from benchmarks.gateway_overhead import (
    DIRECT,
    GATEWAY,
    NGINX,
    Latency,
    Results,
    Throughput,
)

ROOT = Path(__file__).resolve().parent.parent


def test_answers_are_compared_without_their_timings() -> None:
    one = b'{"model":"m","created_at":"a","response":"x","done":true,"total_duration":1}\n'
    two = b'{"model":"m","created_at":"b","response":"x","done":true,"total_duration":2}\n'
    other = b'{"model":"m","created_at":"b","response":"y","done":true,"total_duration":2}\n'
    assert gateway_overhead.normalized(one) == gateway_overhead.normalized(two)
    assert gateway_overhead.normalized(one) != gateway_overhead.normalized(other)


def made_up(gateway_ms: float, nginx_ms: float, gateway_rate: int, nginx_rate: int) -> Results:
    """Results whose added p50s and 16-stream answers (of 100 direct) are these."""
    direct = [0.002] * 10
    samples = {
        DIRECT: direct,
        NGINX: [d + nginx_ms / 1000 for d in direct],
        GATEWAY: [d + gateway_ms / 1000 for d in direct],
    }
    rates = {DIRECT: 100, NGINX: nginx_rate, GATEWAY: gateway_rate}
    return Results(
        paths=[DIRECT, NGINX, GATEWAY],
        latency=Latency(samples),
        throughput=[Throughput(16, p, 1.0, n, 17 * n, 0) for p, n in rates.items()],
    )


def verdicts(r: Results) -> dict[str, str]:
    return {text: verdict for text, verdict, _ in gateway_overhead.goals(r)}


def test_the_targets_against_nginx() -> None:
    p50 = "the gateway's added p50 at most 2x nginx's"
    streams = "at 16 concurrent streams, the gateway's throughput at most 5 points below nginx's"
    met = verdicts(made_up(gateway_ms=0.3, nginx_ms=0.16, gateway_rate=86, nginx_rate=90))
    assert (met[p50], met[streams]) == ("met", "met")
    missed = verdicts(made_up(gateway_ms=0.4, nginx_ms=0.16, gateway_rate=84, nginx_rate=90))
    assert (missed[p50], missed[streams]) == ("MISSED", "MISSED")
    alone = Results(paths=[DIRECT, GATEWAY], latency=Latency({DIRECT: [0.002], GATEWAY: [0.003]}))
    assert verdicts(alone)[p50] == "not measured"
    assert verdicts(alone)[streams] == "not measured"


def nginx_expected() -> bool:
    if gateway_overhead.find_nginx(None) is not None:
        return True
    required = os.environ.get("SENTINEL_E2E", "auto").strip().lower() == "require"
    if required or os.environ.get("CI"):
        pytest.fail("nginx is not installed (.ci/run installs Debian's nginx)")
    return False


@pytest.mark.slow
def test_gateway_overhead_benchmark_runs(tmp_path: Path) -> None:
    nginx = nginx_expected()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gateway_overhead",
            "--requests",
            "10",
            "--streams",
            "5",
            "--concurrency",
            "1,16",
            "--seconds",
            "0.3",
            "--soak",
            "100",
            "--profile",
            "0.5",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "gateway.md").read_text()
    assert "python -m benchmarks.gateway_overhead --requests 10 --streams 5" in text
    assert "| non-streamed request, p50 latency ms (10 each path) |" in text
    assert "| 16 concurrent streams: answers/s (chunks/s) |" in text
    assert "`python -m sentinel_keeper gateway`" in text
    assert "## Profile" in text
    assert "`sentinel_keeper/gateway/server.py:" in text  # the server's code, by its path
    assert str(ROOT) not in text
    assert "differing once `created_at` and the `*_duration` fields are out: 0." in text
    assert "- byte-identical bodies: **met**" in text
    if nginx:
        assert "| what | direct | through nginx | through the gateway |" in text
        assert text.count("**met**") + text.count("**MISSED**") == 6
    else:
        assert "no nginx column (left out: nginx is not installed" in text
        assert "nginx: left out" in result.stdout
        assert text.count("**met**") + text.count("**MISSED**") == 4
