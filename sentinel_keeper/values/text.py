"""Untrusted text made safe for one line of output. Pure functions.

Model names, versions and error texts come from Ollama's answers, values from the policy file:
any of them may hold a newline, an escape sequence or a bidi override. One rule for all of
them: a character that could end, rewrite or disguise a line is written as a ``\\uXXXX``
escape (:func:`escape_unprintable`); where a message folds text onto one line, whitespace
becomes a space (:func:`one_line`); long text is cut to a bound with "..." (:func:`shorten`).
"""

from __future__ import annotations

import json
import math
import unicodedata

ELLIPSIS = "..."

# Control characters, line and paragraph separators, format characters (bidi overrides...),
# surrogates, private use and unassigned code points: what could break or disguise a line.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def escape_unprintable(text: str) -> str:
    """``text`` with every character that could end, rewrite or disguise a line of output
    written as a ``\\uXXXX`` escape (JSON style; ``\\UXXXXXXXX`` past the BMP)."""
    if text.isprintable() and text.isascii():
        return text
    out = []
    for char in text:
        if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES:
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in "..." when it was cut."""
    if len(text) <= limit:
        return text
    if limit < len(ELLIPSIS):
        return text[: max(limit, 0)]
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS


def one_line(text: str, limit: int | None = None) -> str:
    """Untrusted text for one line of a message: every whitespace character (newline, tab,
    line separator...) becomes a space, the ends are stripped, the rest that could break or
    disguise the line is escaped, and the result is cut to ``limit`` characters."""
    if not text.isprintable():
        text = "".join(" " if char.isspace() else char for char in text)
    flat = escape_unprintable(text.strip())
    return flat if limit is None else shorten(flat, limit)


def json_string(text: str) -> str:
    """``text`` as a JSON string literal that stays on one line: JSON escapes C0 controls and
    quotes; DEL, C1 controls (U+0085), line and paragraph separators and bidi overrides,
    which JSON leaves raw, are escaped too."""
    return escape_unprintable(json.dumps(text, ensure_ascii=False))


def show(value: object, limit: int = 60) -> str:
    """Quote a user-supplied value for an error message: escaped, bounded in length."""
    if isinstance(value, str):
        text = json_string(value)
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        # repr() of a few thousand digits is slow, and refused past 4,300 digits
        digits = int(value.bit_length() * math.log10(2)) + 1
        text = f"{'a negative' if value < 0 else 'an'} integer of about {digits} digits"
    else:
        text = repr(value)  # repr escapes what is not printable in the strings it shows
    return shorten(text, limit)
