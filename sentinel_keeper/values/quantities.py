"""Durations and sizes as the policy writes them. Pure functions; errors are ValueError with a
message fit for the user (the policy loader adds file, line and field)."""

from __future__ import annotations

import math
import re

from sentinel_keeper.ollama_env import parse_go_duration
from sentinel_keeper.values.text import show

FOREVER = -1.0

_SIZE = re.compile(r"(-?\d+\.?\d*|-?\.\d+)\s*([KMGT]i?B|kB|B)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
# Durations beyond Go's time.Duration range (about 292 years) are not representable in Ollama.
MAX_DURATION_SECONDS = 9_223_372_036.0
MAX_SIZE_BYTES = 2**60


def _parse_go_duration(text: str) -> float | None:
    """Seconds for a Go duration string ("1h30m", "-5m", "0"), or None when it is not one."""
    try:
        return parse_go_duration(text) / 1e9
    except ValueError:
        return None


def parse_duration(
    value: object, *, allow_forever: bool = False, allow_zero: bool = False
) -> float:
    """Seconds from "15s", "5m", "1h30m" or integer seconds.

    With ``allow_forever`` any negative value means forever and becomes -1.
    """
    expected = 'a duration such as "15s", "5m", "1h30m" or whole seconds'
    if allow_forever:
        expected += " (-1 = forever)"
    seconds: float | None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int):
        seconds = (
            float(value)
            if abs(value) <= MAX_DURATION_SECONDS
            else (math.inf if value > 0 else -math.inf)
        )
    elif isinstance(value, float):
        seconds = value if math.isfinite(value) else None
    elif isinstance(value, str):
        text = value.strip()
        integral = re.fullmatch(r"[+-]?\d+", text)
        if integral and len(text.lstrip("+-0")) > 19:  # past any duration, and int() limits
            seconds = math.inf
        else:
            seconds = float(int(text)) if integral else _parse_go_duration(text)
    else:
        seconds = None
    if seconds is None:
        days = re.fullmatch(r"\s*(\d+)\s*d\s*", value) if isinstance(value, str) else None
        if days is not None and len(days.group(1)) <= 6:  # Go durations stop at hours
            hint = f'; there is no "d": write "{int(days.group(1)) * 24}h"'
            raise ValueError(f"must be {expected}, got {show(value)}{hint}")
        raise ValueError(f"must be {expected}, got {show(value)}")
    if abs(seconds) > MAX_DURATION_SECONDS:
        raise ValueError(f"must be at most about 292 years (Go's limit), got {show(value)}")
    if seconds < 0:
        if allow_forever:
            return FOREVER
        raise ValueError(f"must be a positive duration, got {show(value)}")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"must be longer than zero, got {show(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from "512MiB", "3GiB", "1.5GB" or an integer number of bytes."""
    expected = 'a size such as "512MiB", "3GiB", "1.5GB" or whole bytes'
    size: float | None = None
    if isinstance(value, bool):
        size = None
    elif isinstance(value, int):
        size = (
            float(value) if abs(value) <= MAX_SIZE_BYTES else (math.inf if value > 0 else -math.inf)
        )
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is not None:
            size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size is None:
        raise ValueError(f"must be {expected}, got {show(value)}")
    if size < 0:
        raise ValueError(f"must not be negative, got {show(value)}")
    if size > MAX_SIZE_BYTES:
        raise ValueError(f"is implausibly large, got {show(value)}")
    return int(size)


def format_duration(seconds: float) -> str:
    """Short human form: "forever", "45s", "5m", "1h30m", "2d3h"."""
    if seconds < 0:
        return "forever"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds != int(seconds) else f"{int(seconds)}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{u}" for n, u in parts if n]
    return "".join(shown[:2])


def format_size(size: int | None) -> str:
    """Binary units with one decimal: "1.2 GiB"; "unknown" for None."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
