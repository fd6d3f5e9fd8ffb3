"""logs.py: the journald line format (<N> priority prefix, key=value, one line), the choice of
format from JOURNAL_STREAM, JSON and console output, levels, and library logging."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from sentinel_keeper.report.logs import (
    configure_logging,
    format_value,
    journal_renderer,
    logfmt,
    resolve_format,
    under_journal,
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        (2.34567, "2.346"),
        (0.0, "0"),
        (-0.0001, "0"),
        (float("inf"), "inf"),
        ("llama3.2:1b", "llama3.2:1b"),
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("two words", '"two words"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        (("a:1b", "b:2b"), "a:1b,b:2b"),
        (["x y"], '"x y"'),
        ("µ", '"µ"'),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_logfmt_keeps_field_order() -> None:
    line = logfmt("model_loaded", {"model": "a:1b", "seconds": 2.5, "reason": "pinned"})
    assert line == "model_loaded model=a:1b seconds=2.5 reason=pinned"


@pytest.mark.parametrize(
    ("level", "prefix"),
    [("debug", "<7>"), ("info", "<6>"), ("warning", "<4>"), ("error", "<3>"), ("critical", "<2>")],
)
def test_journal_renderer_prefixes(level: str, prefix: str) -> None:
    line = journal_renderer(None, level, {"event": "x", "level": level, "timestamp": "t", "k": 1})
    assert line == f"{prefix}x k=1"


def _journal_stream_of(handle: TextIO) -> str:
    st = os.fstat(handle.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_under_journal_compares_the_stream_itself(tmp_path: Path) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        env = {"JOURNAL_STREAM": _journal_stream_of(a)}
        assert under_journal(env, a)
        assert not under_journal(env, b)  # inherited variable, stderr redirected elsewhere
        assert not under_journal({}, a)
        assert not under_journal({"JOURNAL_STREAM": "garbage"}, a)
        assert not under_journal(env, io.StringIO())
        assert resolve_format("auto", env, a) == "journal"
        assert resolve_format("auto", env, b) == "console"
        assert resolve_format("json", env, a) == "json"


def _configured(tmp_path: Path, fmt: str, level: str = "info") -> tuple[Path, str]:
    path = tmp_path / "log"
    handle = open(path, "w")  # noqa: SIM115 - kept open by structlog's logger until reset
    env = {"JOURNAL_STREAM": _journal_stream_of(handle)}
    chosen = configure_logging(fmt, level, stream=handle, env=env)
    return path, chosen


def test_journal_output_end_to_end(tmp_path: Path) -> None:
    path, chosen = _configured(tmp_path, "auto")
    assert chosen == "journal"
    log = structlog.get_logger()
    log.info("model_loaded", model="a:1b", seconds=1.25)
    log.warning("model_missing", model="a:1b", why="evicted by Ollama")
    log.debug("pass", pinned="1/1")  # below the level
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("pass_crashed")
    logging.getLogger("httpx").info("HTTP Request: GET /api/ps")  # quietened
    logging.getLogger("apscheduler.scheduler").warning("skipped: max instances")  # quietened
    logging.getLogger("somelib").warning("library trouble")
    lines = path.read_text().splitlines()
    assert lines[0] == "<6>model_loaded model=a:1b seconds=1.25"
    assert lines[1] == '<4>model_missing model=a:1b why="evicted by Ollama"'
    assert lines[2].startswith("<3>pass_crashed exception=")
    assert "RuntimeError: boom\\nsecond line" in lines[2]  # one line, newlines escaped
    assert lines[3] == '<4>library logger=somelib message="library trouble"'
    assert len(lines) == 4


def test_debug_level(tmp_path: Path) -> None:
    path, _ = _configured(tmp_path, "journal", "debug")
    structlog.get_logger().debug("pass", pinned="1/1")
    assert path.read_text() == "<7>pass pinned=1/1\n"


def test_json_output(tmp_path: Path) -> None:
    path, chosen = _configured(tmp_path, "json")
    assert chosen == "json"
    structlog.get_logger().warning("ollama_unreachable", error="connection refused")
    record = json.loads(path.read_text())
    assert record["event"] == "ollama_unreachable"
    assert record["level"] == "warning"
    assert record["error"] == "connection refused"
    assert "timestamp" in record


def test_console_output_has_a_timestamp_and_no_prefix(tmp_path: Path) -> None:
    path, chosen = _configured(tmp_path, "console")
    assert chosen == "console"
    structlog.get_logger().info("model_loaded", model="a:1b")
    line = path.read_text()
    assert not line.startswith("<")
    assert "model_loaded" in line
    assert "model=a:1b" in line
    assert line[:4].isdigit()  # the year


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("console", "loud", stream=io.StringIO(), env={})
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "info", stream=io.StringIO(), env={})
