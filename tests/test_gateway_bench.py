"""The gateway's overhead benchmark (benchmarks/gateway_overhead.py) stays runnable: a run
of a handful of requests as a process, its table and its targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gateway_overhead

ROOT = Path(__file__).resolve().parent.parent


def test_answers_are_compared_without_their_timings() -> None:
    one = b'{"model":"m","created_at":"a","response":"x","done":true,"total_duration":1}\n'
    two = b'{"model":"m","created_at":"b","response":"x","done":true,"total_duration":2}\n'
    other = b'{"model":"m","created_at":"b","response":"y","done":true,"total_duration":2}\n'
    assert gateway_overhead.normalized(one) == gateway_overhead.normalized(two)
    assert gateway_overhead.normalized(one) != gateway_overhead.normalized(other)


@pytest.mark.slow
def test_gateway_overhead_benchmark_runs(tmp_path: Path) -> None:
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
            "1,4",
            "--seconds",
            "0.3",
            "--soak",
            "100",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "gateway.md").read_text()
    assert "python -m benchmarks.gateway_overhead --requests 10 --streams 5" in text
    assert "| non-streamed request, p50 latency ms (10 each way) |" in text
    assert "| 4 concurrent streams: answers/s" in text
    assert "differing once `created_at` and the `*_duration` fields are out: 0." in text
    assert "- byte-identical bodies: **met**" in text
    assert text.count("**met**") + text.count("**MISSED**") == 4
