"""Log output for the daemon, through structlog: one event per line.

Formats:

- ``journal``: ``<N>event key=value ...`` where ``<N>`` is the sd-daemon syslog priority
  prefix that journald turns into the entry's priority (so ``journalctl -p warning`` works);
  no timestamp, journald adds its own.
- ``console``: structlog's readable console output with a timestamp (colours on a terminal).
- ``json``: one JSON object per line with timestamp and level, for log shippers.
- ``auto``: ``journal`` when stderr is the stream JOURNAL_STREAM names, else ``console``.

Standard-library logging (APScheduler, httpx) is routed into the same output, quietened so
that a steady state logs nothing.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import IO, Any, Literal, TextIO, get_args

import structlog

from sentinel_keeper.values.text import json_string

LogFormat = Literal["auto", "journal", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)

LEVEL_NUMBERS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# sd-daemon(3) priority prefixes: <7> debug ... <2> critical.
SYSLOG_PRIORITIES = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}
# Libraries whose own logging is noise in a steady state: httpx logs every request at info,
# APScheduler every run (and a warning for each interval skipped during a long load, which the
# daemon does on purpose).
QUIET_LOGGERS = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "apscheduler": logging.ERROR,
}

_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/,+@%[]()")


def under_journal(env: Mapping[str, str], stream: IO[Any]) -> bool:
    """Is ``stream`` connected to journald? JOURNAL_STREAM holds "DEVICE:INODE" of the stream
    systemd connected; it is inherited by children whose stderr may point elsewhere, so the
    stream itself is compared (as sd_journal_stream_fd's documentation advises)."""
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        wanted = (int(device), int(inode))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == wanted


def resolve_format(requested: str, env: Mapping[str, str], stream: IO[Any]) -> str:
    """The concrete format for ``requested`` (auto picks journal or console)."""
    if requested != "auto":
        return requested
    return "journal" if under_journal(env, stream) else "console"


def format_value(value: object) -> str:
    """A value for key=value output: bare when unambiguous, else a JSON string; always on one
    line."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        value = ",".join(str(v) for v in items)
    text = str(value)
    if text and all(c in _BARE for c in text):
        return text
    # A value from Ollama can neither end the line nor disguise it.
    return json_string(text)


def console_safe(
    _logger: object, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor for the console renderer, which writes strings as they are:
    a string that could break or disguise the line is written as format_value() quotes it."""
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isprintable():
            event_dict[key] = format_value(value)
    return event_dict


def logfmt(event: str, fields: Mapping[str, object]) -> str:
    """``event key=value ...``: the event name, then the fields in their order."""
    parts = [format_value(event)]
    parts.extend(f"{key}={format_value(value)}" for key, value in fields.items())
    return " ".join(parts)


def journal_renderer(
    _logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> str:
    """structlog renderer: ``<N>event key=value ...``."""
    level = str(event_dict.pop("level", method_name))
    priority = SYSLOG_PRIORITIES.get(level, 6)
    event_dict.pop("timestamp", None)
    event = str(event_dict.pop("event", ""))
    return f"<{priority}>{logfmt(event, event_dict)}"


class _ToStructlog(logging.Handler):
    """Sends standard-library records (from libraries) through structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger()
            level = record.levelname.lower()
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            logger.log(LEVEL_NUMBERS.get(level, logging.INFO), "library", **fields)
        except Exception:
            self.handleError(record)


def configure_logging(
    log_format: str = "auto",
    level: str = "info",
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Set up structlog (and the standard-library bridge). Returns the concrete format."""
    out = sys.stderr if stream is None else stream
    environ = os.environ if env is None else env
    chosen = resolve_format(log_format, environ, out)
    if chosen not in ("journal", "console", "json"):
        raise ValueError(f"unknown log format {log_format!r}")
    if level not in LEVEL_NUMBERS:
        raise ValueError(f"unknown log level {level!r}")
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if chosen == "journal":
        processors += [structlog.processors.format_exc_info, journal_renderer]
    elif chosen == "json":
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        colors = bool(getattr(out, "isatty", lambda: False)()) and "NO_COLOR" not in environ
        processors += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            console_safe,
            structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVEL_NUMBERS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(max(LEVEL_NUMBERS[level], logging.INFO))
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, LEVEL_NUMBERS[level]))
    return chosen


def daemon_logger() -> Any:
    """The daemon's structlog logger (configure_logging first)."""
    return structlog.get_logger("sentinel_keeper.daemon")
