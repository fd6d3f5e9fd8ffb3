"""systemd's side of the environment: how a value is written as an ``Environment=``
assignment (systemd.syntax(7), systemd.exec(5)), and how such assignments are read back (for
conflict detection in other drop-ins). Pure."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType

MAX_VALUE_LENGTH = 4096
# A variable name as the shell and systemd's Environment= accept it.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def unsafe_text_problem(value: str) -> str | None:
    """None if ``value`` has nothing that could break out of a quoted systemd assignment.

    Refused: line breaks (could start a new directive), other control characters, quotes and
    backslashes (could end the quoting or escape), ``%`` (a systemd specifier such as ``%h``
    is not expanded here; the value must be literal), text that is not valid UTF-8.
    """
    if "\n" in value or "\r" in value:
        return "contains a newline, which could add a systemd directive"
    for c in value:
        if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs"):
            if unicodedata.category(c) == "Cs":
                return "is not valid UTF-8"
            return (
                f"contains the control character U+{ord(c):04X}, "
                "which systemd would not keep as written"
            )
    if '"' in value or "'" in value:
        return "contains a quote, which could end systemd's quoting (and Ollama strips quotes)"
    if "\\" in value:
        return "contains a backslash, which systemd reads as an escape or a line continuation"
    if "%" in value:
        return "contains '%', which systemd reads as a specifier (such as %h); write it literally"
    return None


def quote_assignment(name: str, value: str) -> str:
    """The right-hand side of ``Environment=`` setting ``name`` to ``value``, quoted.

    Per systemd.syntax(7): the whole ``NAME=VALUE`` word in double quotes, ``\\`` and ``"``
    backslash-escaped, ``%`` doubled (specifiers are expanded even inside quotes). Values with
    line breaks or control characters are refused (ValueError): a C escape would be
    faithful, but such a value has no business in an Ollama setting.
    """
    if not ENV_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid environment variable name")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") for c in value):
        raise ValueError(f"value of {name} contains a line break or control character")
    word = f"{name}={value}"
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def environment_line(name: str, value: str) -> str:
    """``Environment="NAME=VALUE"`` as one line of a unit file (no newline at the end)."""
    return f"Environment={quote_assignment(name, value)}"


_SIMPLE_ESCAPES: Mapping[str, str] = MappingProxyType(
    {
        "a": "\a",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "v": "\v",
        "\\": "\\",
        '"': '"',
        "'": "'",
        "s": " ",
    }
)
_WHITESPACE = " \t\n\r"


def _unescape_one(s: str, i: int) -> tuple[str, int]:
    """Decode the C escape whose backslash is at ``s[i]``; return (text, next index)."""
    if i + 1 >= len(s):
        raise ValueError("backslash at the end")
    c = s[i + 1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 2
    width = {"x": 2, "u": 4, "U": 8}.get(c)
    if width is not None:
        digits = s[i + 2 : i + 2 + width]
        if len(digits) != width or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
            raise ValueError(f"bad \\{c} escape")
        code = int(digits, 16)
        if code == 0 or code > 0x10FFFF:
            raise ValueError(f"bad \\{c} escape")
        return chr(code), i + 2 + width
    digits = s[i + 1 : i + 4]
    if re.fullmatch(r"[0-7]{3}", digits):
        code = int(digits, 8)
        if code == 0 or code > 0xFF:
            raise ValueError("bad octal escape")
        return chr(code), i + 4
    raise ValueError(f"unknown escape \\{c}")


def split_words(rvalue: str) -> list[str] | None:
    """Words of a unit-file value as systemd unquotes and C-unescapes them, or None if invalid.

    Whitespace separates words; ``"..."`` and ``'...'`` quote parts of a word; backslash
    escapes (``\\n``, ``\\"``, ``\\xHH``...) apply inside and outside quotes.
    """
    words: list[str] = []
    i, n = 0, len(rvalue)
    while True:
        while i < n and rvalue[i] in _WHITESPACE:
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote: str | None = None
        while i < n:
            c = rvalue[i]
            if quote is None and c in _WHITESPACE:
                break
            if c == "\\":
                try:
                    text, i = _unescape_one(rvalue, i)
                except ValueError:
                    return None
                word.append(text)
                continue
            if quote is not None and c == quote:
                quote = None
            elif quote is None and c in "\"'":
                quote = c
            else:
                word.append(c)
            i += 1
        if quote is not None:
            return None
        words.append("".join(word))


def parse_environment_value(rvalue: str) -> list[tuple[str, str]] | None:
    """The (name, value) pairs one ``Environment=`` line sets, or None if systemd rejects it.

    ``%%`` becomes ``%``; other specifiers are left as written (they cannot be resolved
    without systemd). Words without ``=`` or with an invalid name are skipped, as systemd
    skips them. An empty list means an empty assignment, which resets earlier ones.
    """
    words = split_words(rvalue)
    if words is None:
        return None
    pairs: list[tuple[str, str]] = []
    for word in words:
        name, sep, value = word.partition("=")
        if sep and ENV_NAME.match(name):
            pairs.append((name, value.replace("%%", "%")))
    return pairs
