"""A command piped into another keeps its exit code when the reader closes the pipe early
(`sentinel-keeper status | true`, `status | head -1`): a health check piped into another
command must not read healthy. A real subprocess, a real pipe, the Ollama double on
127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ollama_double import FakeModel, OllamaDouble

MiB = 1024**2
EXIT_NOT_INSTALLED = 4


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    with OllamaDouble([FakeModel("llama3.2:1b", size=1300 * MiB)]) as server:
        yield server


def _policy(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "policy.yaml"
    # one pinned model installed, and enough not installed for a long table
    names = "\n".join(f"  - name: missing{i}:1b" for i in range(200))
    path.write_text(f"ollama: {{url: '{url}'}}\nmodels:\n  - name: llama3.2:1b\n{names}\n")
    return path


def _status(tmp_path: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "SENTINEL_POLICY"}
    argv = [sys.executable, "-m", "sentinel_keeper", "--policy", str(_policy(tmp_path, url))]
    return subprocess.Popen(
        [*argv, "--state-dir", str(tmp_path / "state"), "status", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_a_reader_that_closes_the_pipe_at_once_keeps_the_exit_code(
    tmp_path: Path, double: OllamaDouble, json_out: bool
) -> None:
    """`status | true`: the reader is gone before status writes a byte."""
    child = _status(tmp_path, double.url, *(["--json"] if json_out else []))
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == EXIT_NOT_INSTALLED, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_reader_that_takes_one_line_keeps_the_exit_code(
    tmp_path: Path, double: OllamaDouble
) -> None:
    """`status | head -1` on a table longer than the pipe's buffer."""
    child = _status(tmp_path, double.url)
    assert child.stdout is not None and child.stderr is not None
    first = child.stdout.readline()
    child.stdout.close()
    err = child.stderr.read().decode()
    assert first.startswith(b"ollama ")
    assert child.wait(timeout=60) == EXIT_NOT_INSTALLED, err
    assert "Traceback" not in err and "BrokenPipe" not in err
