"""The gateway's memory benchmark runs (briefly) and prints its table, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_memory_benchmark_prints_its_figures() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gateway_memory",
            "--max-body",
            "1MiB",
            "--concurrency",
            "12",
            "--rounds",
            "1",
            "--hold",
            "0.2",
            "--idle-connections",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| what | peak RSS | peak threads |"
    assert rows[3].startswith("| 12 bodies of 1MiB at once, x1 |")
    assert "not 200" not in rows[3]  # the bodies over BODIES_AT_ONCE waited, none refused
    assert rows[4].startswith("| 50 idle connections (a request meanwhile: 200) |")
