"""One-line-safe text: the one rule for untrusted text in messages, logs and names."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_keeper.values.text import escape_unprintable, json_string, one_line, shorten, show

# What could end, rewrite or disguise a line: controls, separators, format characters.
BREAKING = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def breaks_the_line(text: str) -> bool:
    return any(unicodedata.category(c) in BREAKING for c in text)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("llama3.2:1b", "llama3.2:1b"),
        ("café → µ", "café → µ"),  # printable text is kept as it is
        ("a\nb", "a\\u000ab"),
        ("\x1b[2J", "\\u001b[2J"),
        ("x\u2028y\x85z", "x\\u2028y\\u0085z"),
        ("\u202egnp.exe", "\\u202egnp.exe"),
        ("\U000e0041", "\\U000e0041"),  # a tag character, past the BMP
    ],
)
def test_escape_unprintable(raw: str, escaped: str) -> None:
    assert escape_unprintable(raw) == escaped


def test_one_line_turns_whitespace_into_spaces_and_escapes_the_rest() -> None:
    assert one_line("  a\nb\tc\r\nd\u2028e\u2029f\x85g  ") == "a b c  d e f g"
    assert one_line("../../etc/passwd\n\x1b[31mred") == "../../etc/passwd \\u001b[31mred"
    assert one_line("busy.  try again") == "busy.  try again"  # inner spaces are Ollama's own
    assert one_line("\u202eevil") == "\\u202eevil"


def test_one_line_is_bounded() -> None:
    text = one_line("x" * 2000, 500)
    assert len(text) == 500
    assert text.endswith("...")
    assert one_line("short", 500) == "short"


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, "abc"),
        ("abcd", 3, "..."),
        ("abcdef", 5, "ab..."),
        ("abcdef", 2, "ab"),
        ("abcdef", 0, ""),
    ],
)
def test_shorten(text: str, limit: int, expected: str) -> None:
    assert shorten(text, limit) == expected
    assert len(shorten(text, limit)) <= limit


def test_json_string_escapes_what_json_leaves_raw() -> None:
    assert json_string('say "hi"\n') == '"say \\"hi\\"\\n"'
    assert json_string("a\u2028b\u202ec") == '"a\\u2028b\\u202ec"'
    assert json_string("µ") == '"µ"'


def test_show_quotes_and_bounds_a_value() -> None:
    assert show("llama3.2") == '"llama3.2"'
    assert show("x\u2028y") == '"x\\u2028y"'
    assert show(12) == "12"
    assert show(["a\nb"]) == "['a\\nb']"
    assert show(10**400) == "an integer of about 401 digits"
    long = show("y" * 100)
    assert len(long) == 60
    assert long.endswith("...")


@settings(max_examples=300, deadline=None)
@given(text=st.text(), limit=st.one_of(st.none(), st.integers(min_value=3, max_value=50)))
def test_one_line_never_breaks_a_line(text: str, limit: int | None) -> None:
    line = one_line(text, limit)
    assert not breaks_the_line(line)
    assert "\n" not in line and "\r" not in line
    assert line == line.strip()
    if limit is not None:
        assert len(line) <= limit


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_escaped_text_never_breaks_a_line(text: str) -> None:
    assert not breaks_the_line(escape_unprintable(text))
    assert not breaks_the_line(json_string(text))
