"""Go's parsers as Ollama uses them on its environment (time.ParseDuration, strconv's ParseInt,
ParseUint and ParseBool), re-implemented from the Go documentation. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
UINT64_MAX = (1 << 64) - 1
NS_PER_S = 1_000_000_000


_GO_DURATION_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "ns": 1,
        "us": 1_000,
        "\u00b5s": 1_000,  # micro sign
        "\u03bcs": 1_000,  # Greek small letter mu
        "ms": 1_000_000,
        "s": NS_PER_S,
        "m": 60 * NS_PER_S,
        "h": 3600 * NS_PER_S,
    }
)


def _is_ascii_digit(c: str) -> bool:
    return "0" <= c <= "9"


def parse_go_duration(text: str) -> int:
    """Nanoseconds of ``text`` as Go's ``time.ParseDuration`` reads it; ValueError otherwise.

    Grammar: ``[-+]`` then one or more ``<decimal><unit>`` (``1h30m``, ``1.5s``, ``-1m``);
    the lone ``0`` needs no unit. Units: ns, us (µs, μs), ms, s, m, h; no days. Overflow of a
    signed 64-bit nanosecond count is an error, as in Go.
    """
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0
    while s:
        if not (s[0] == "." or _is_ascii_digit(s[0])):
            raise ValueError(f"invalid duration {text!r}")
        i = 0
        whole = 0
        while i < len(s) and _is_ascii_digit(s[i]):
            whole = whole * 10 + int(s[i])
            if whole > 1 << 63:
                raise ValueError(f"invalid duration {text!r} (overflow)")
            i += 1
        has_whole = i > 0
        s = s[i:]
        frac, scale, has_frac = 0, 1.0, False
        if s.startswith("."):
            s = s[1:]
            i = 0
            overflowed = False
            while i < len(s) and _is_ascii_digit(s[i]):
                if not overflowed:
                    if frac > (INT64_MAX) // 10:
                        overflowed = True  # Go drops the digits it cannot hold
                    else:
                        frac = frac * 10 + int(s[i])
                        scale *= 10
                i += 1
            has_frac = i > 0
            s = s[i:]
        if not has_whole and not has_frac:
            raise ValueError(f"invalid duration {text!r}")
        i = 0
        while i < len(s) and not (s[i] == "." or _is_ascii_digit(s[i])):
            i += 1
        if i == 0:
            raise ValueError(f"missing unit in duration {text!r}")
        unit = _GO_DURATION_UNITS.get(s[:i])
        if unit is None:
            raise ValueError(f"unknown unit {s[:i]!r} in duration {text!r}")
        s = s[i:]
        if whole > (1 << 63) // unit:
            raise ValueError(f"invalid duration {text!r} (overflow)")
        value = whole * unit
        if frac > 0:
            value += int(float(frac) * (float(unit) / scale))
            if value > 1 << 63:
                raise ValueError(f"invalid duration {text!r} (overflow)")
        total += value
        if total > 1 << 63:
            raise ValueError(f"invalid duration {text!r} (overflow)")
    if neg:
        return -total
    if total > INT64_MAX:
        raise ValueError(f"invalid duration {text!r} (overflow)")
    return total


_GO_INT = re.compile(r"[+-]?[0-9]+\Z")
_GO_UINT = re.compile(r"[0-9]+\Z")


def parse_go_int64(text: str) -> int:
    """``strconv.ParseInt(text, 10, 64)``: optional sign, ASCII digits, in int64 range."""
    if not _GO_INT.match(text):
        raise ValueError(f"invalid integer {text!r}")
    n = int(text)
    if not INT64_MIN <= n <= INT64_MAX:
        raise ValueError(f"integer {text!r} out of range")
    return n


def parse_go_uint64(text: str) -> int:
    """``strconv.ParseUint(text, 10, 64)``: ASCII digits only (no sign), at most 2**64-1."""
    if not _GO_UINT.match(text):
        raise ValueError(f"invalid unsigned integer {text!r}")
    n = int(text)
    if n > UINT64_MAX:
        raise ValueError(f"unsigned integer {text!r} out of range")
    return n


GO_BOOLS: Mapping[str, bool] = MappingProxyType(
    {
        **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
        **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
    }
)


def parse_go_bool(text: str) -> bool:
    """``strconv.ParseBool``: exactly 1 t T TRUE true True / 0 f F FALSE false False."""
    try:
        return GO_BOOLS[text]
    except KeyError:
        raise ValueError(f"invalid boolean {text!r}") from None


def ollama_duration_ns(text: str) -> int | None:
    """Nanoseconds Ollama reads from a duration variable, or None if it would use its default.

    Ollama tries ``time.ParseDuration``, then whole seconds via ``ParseInt``. Whole seconds
    are multiplied by ``time.Second`` without an overflow check in Go, so a count that does
    not fit is treated here as unparsable (in Ollama it would wrap around).
    """
    try:
        return parse_go_duration(text)
    except ValueError:
        pass
    try:
        seconds = parse_go_int64(text)
    except ValueError:
        return None
    ns = seconds * NS_PER_S
    if not INT64_MIN <= ns <= INT64_MAX:
        return None
    return ns
