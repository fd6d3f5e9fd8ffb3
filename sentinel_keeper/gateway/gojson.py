"""A request body read as Ollama reads it. Pure: no I/O, no aiohttp.

Ollama's handlers bind a body with gin's ``ShouldBindJSON``, which is Go's
``json.NewDecoder(body).Decode(&req)`` into the request struct (api.GenerateRequest,
api.ChatRequest, api.EmbedRequest; the OpenAI-compatible middlewares' own structs). So:

- the body's first JSON value is read, and whatever follows it is never looked at
  (``{...} x`` is the object); an empty or all-whitespace body is "missing request body";
- the bytes are UTF-8 with no byte order mark: a BOM or UTF-16 is a syntax error; inside a
  string, each byte that is not part of valid UTF-8 becomes U+FFFD, and so does a ``\\u``
  escape of a lone surrogate; control characters in a string are an error;
- a key matches a struct field by its exact name, else case-insensitively (Go's fold: ASCII
  letters, and the Kelvin sign and long s, which fold to ``k`` and ``s``); each key sets its
  field in turn, so the last one wins (``{"keep_alive": -1, "Keep_Alive": 0}`` is 0);
- ``null`` leaves a string field as it was and empties a pointer, map or slice;
- ``options`` is a ``map[string]any``: its keys are exact, a second ``options`` object is
  merged into the first (Go reuses the map), numbers are float64 (one too large for it is an
  error), and Ollama's ``Options.FromMap`` then truncates a float to an integer option
  (``num_ctx: 512.5`` is 512) and skips a null;
- ``keep_alive`` is api.Duration: a number is seconds (negative: forever), a string is
  ``time.ParseDuration`` (negative: forever), anything else an error.

:func:`read_request` gives what the handler will act on; :func:`encode` writes a value back
as JSON that Go decodes to the same thing (numbers as they came, strings with their
replacements made, never ``NaN`` or ``Infinity``).
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sentinel_keeper.ollama_env.goparse import INT64_MAX, parse_go_duration

NS_PER_S = 1_000_000_000
FOREVER_NS = INT64_MAX  # what Ollama makes of any negative keep_alive
# objects and arrays nested deeper are refused (Go allows 10,000; the gateway's own reading
# recurses, and no request of Ollama's nests anywhere near this)
MAX_DEPTH = 200
_WHITESPACE = " \t\n\r"


class BodyError(ValueError):
    """A body Ollama would refuse (its 400), or one the gateway cannot be sure it reads as
    Ollama does; the message says which and why."""


class Number(str):
    """A JSON number as it was written, kept to write it back unchanged."""

    __slots__ = ()


@dataclass(frozen=True)
class Pairs:
    """A JSON object as it was written: every member, in order, duplicates included."""

    items: tuple[tuple[str, Any], ...]


def _go_replace(error: UnicodeError) -> tuple[str, int]:
    # Go's decoder turns each byte of an invalid UTF-8 sequence into its own U+FFFD (it
    # decodes rune by rune, and a failed decode consumes one byte); Python's "replace"
    # writes one U+FFFD for a whole ill-formed subsequence.
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "\ufffd" * (error.end - error.start), error.end


codecs.register_error("sentinel_keeper_go_replace", _go_replace)


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


_DECODER = json.JSONDecoder(
    object_pairs_hook=lambda pairs: Pairs(tuple(pairs)),
    parse_int=Number,
    parse_float=Number,
    parse_constant=_reject_constant,
    strict=True,
)


def _first(raw: bytes) -> tuple[Any, bool]:
    """The first JSON value of ``raw`` as Go's json.Decoder reads it (objects as
    :class:`Pairs`, numbers as :class:`Number`, strings with Go's replacements made; BodyError
    when Go would fail, or when the gateway cannot follow it: nesting deeper than Python's
    parser goes), and whether any JSON reader would read ``raw`` the same way:
    valid UTF-8, no escaped surrogate, nothing but whitespace after the value."""
    text = raw.decode("utf-8", "sentinel_keeper_go_replace")
    start = 0
    while start < len(text) and text[start] in _WHITESPACE:
        start += 1
    if start == len(text):
        raise BodyError("missing request body")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except RecursionError:
        raise BodyError("the JSON body is nested too deeply for the gateway to read") from None
    except ValueError as exc:
        raise BodyError(f"invalid JSON body: {_reason(exc)}") from None
    if _depth(value) > MAX_DEPTH:
        raise BodyError(f"the JSON body is nested deeper than the gateway reads ({MAX_DEPTH})")
    plain = (
        not text[end:].strip(_WHITESPACE)
        and "\ufffd" not in text
        and _ESCAPED_SURROGATE.search(text) is None
    )
    try:
        return _fixed(value), plain
    except RecursionError:
        raise BodyError("the JSON body is nested too deeply for the gateway to read") from None


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (counted without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Pairs):
            children: Iterable[Any] = (v for _, v in item.items)
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _reason(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at byte {exc.pos}" if exc.pos else exc.msg
    return str(exc)


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _fix_string(s: str) -> str:
    """Lone surrogates (from ``\\ud800``-style escapes) become U+FFFD, as in Go."""
    return _SURROGATE.sub("\ufffd", s)


def _fixed(value: Any) -> Any:
    if isinstance(value, Number):
        return value
    if isinstance(value, str):
        return _fix_string(value)
    if isinstance(value, Pairs):
        return Pairs(tuple((_fix_string(k), _fixed(v)) for k, v in value.items))
    if isinstance(value, list):
        return [_fixed(v) for v in value]
    return value


# -- Go's struct field matching ----------------------------------------------------------------

_FOLD = {**{c: c + 32 for c in range(ord("A"), ord("Z") + 1)}, 0x212A: ord("k"), 0x17F: ord("s")}


def fold(key: str) -> str:
    """``key`` folded as Go's encoding/json folds a key to match an ASCII field name."""
    return key.translate(_FOLD)


def field_of(key: str, fields: Iterable[str]) -> str | None:
    """The struct field (by its JSON name) a body key sets: exact name first, else Go's
    case-insensitive match; None when it sets none of ``fields``."""
    names = tuple(fields)
    if key in names:
        return key
    folded = fold(key)
    return next((name for name in names if fold(name) == folded), None)


# -- values as Go decodes them ---------------------------------------------------------------


def go_float(number: Number) -> float:
    value = float(number)
    if math.isinf(value):
        raise BodyError(f"json: cannot unmarshal number {number} into Go value of type float64")
    return value


def go_any(value: Any) -> Any:
    """A JSON value decoded into Go's ``any``: numbers float64, objects dicts (last key
    wins), arrays lists."""
    if isinstance(value, Number):
        return go_float(value)
    if isinstance(value, Pairs):
        return {k: go_any(v) for k, v in value.items}
    if isinstance(value, list):
        return [go_any(v) for v in value]
    return value


def keep_alive_ns(value: Any) -> int:
    """Nanoseconds of a keep_alive as api.Duration reads it (FOREVER_NS: forever)."""
    if isinstance(value, Number):
        seconds = go_float(value)
        if seconds < 0:
            return FOREVER_NS
        ns = seconds * NS_PER_S
        if ns >= 2.0**63:
            # Go's float-to-int conversion is undefined past int64: the gateway cannot know
            # what Ollama makes of it
            raise BodyError(f"keep_alive {value} is more seconds than Ollama can hold")
        return int(ns)
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except ValueError as exc:
            raise BodyError(f"time: {exc}") from None
        return FOREVER_NS if ns < 0 else ns
    kind = {bool: "bool", list: "[]interface {}", Pairs: "map[string]interface {}"}
    raise BodyError(f"Unsupported type: '{kind.get(type(value), type(value).__name__)}'")


def go_int(value: object) -> int | None:
    """An integer option as Options.FromMap sets it from a decoded value (a float truncated
    toward zero); None when FromMap refuses it (Ollama's error) or it is null (skipped)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not -(2.0**63) <= value < 2.0**63:
        return None
    return int(value)


# -- a request -------------------------------------------------------------------------------

# The fields of Ollama's request structs the gateway reads, by the endpoints that have them.
STRING_FIELDS = ("model", "prompt")


@dataclass(frozen=True)
class Request:
    """What Ollama's handler will act on in a body (None: not set), and the body itself."""

    body: Any  # the first JSON value, as :func:`_first` reads it
    model: str | None = None
    prompt: str | None = None
    keep_alive: Any = None  # the JSON value that sets it (a Number or a string)
    keep_alive_ns: int | None = None
    options: dict[str, Any] | None = None
    messages: int | None = None  # how many messages (None: not set or null)
    fields: frozenset[str] = field(default_factory=frozenset)  # the fields set
    # whether any JSON reader reads the body's fields as Go does: strict UTF-8, nothing after
    # the value, each field the gateway reads set by one key of its exact name (else the
    # gateway forwards the body as it read it, never as it came)
    plain: bool = True

    def as_mapping(self) -> dict[str, Any]:
        """The fields the body sets, by their JSON names, with the values Ollama reads."""
        out: dict[str, Any] = {}
        if self.model is not None:
            out["model"] = self.model
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.keep_alive is not None:
            out["keep_alive"] = self.keep_alive
        if self.options is not None:
            out["options"] = self.options
        if self.messages is not None:
            out["messages"] = self.messages
        return out


def read_request(raw: bytes, fields: Iterable[str]) -> Request:
    """Read ``raw`` as Ollama's handler binds it into a struct with ``fields`` (of
    "model", "prompt", "keep_alive", "options", "messages"). BodyError when Ollama would
    answer 400 for those fields, or the gateway cannot be sure."""
    names = tuple(fields)
    body, plain = _first(raw)
    if body is None:
        return Request(body, plain=plain)  # null into a struct: nothing set
    if not isinstance(body, Pairs):
        raise BodyError(f"json: cannot unmarshal {_kind(body)} into Go value of type struct")
    values: dict[str, Any] = {}
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    keep_ns: int | None = None
    messages: int | None = None
    seen: set[str] = set()
    for key, value in body.items:
        name = field_of(key, names)
        if name is None:
            continue
        if name != key or name in seen:
            plain = False  # another reader would read another value, or none
        seen.add(name)
        if name in STRING_FIELDS:
            if value is None:
                continue  # null leaves a string as it was
            if not isinstance(value, str) or isinstance(value, Number):
                raise BodyError(
                    f"json: cannot unmarshal {_kind(value)} into Go struct field .{name} "
                    "of type string"
                )
            values[name] = value
        elif name == "keep_alive":
            if value is None:
                keep_alive, keep_ns = None, None
            else:
                keep_ns, keep_alive = keep_alive_ns(value), value
        elif name == "options":
            if value is None:
                options = None
            elif isinstance(value, Pairs):
                options = options if options is not None else {}
                for k, v in value.items:
                    options[k] = go_any(v)  # merged into the map already there, as Go does
            else:
                raise BodyError(
                    f"json: cannot unmarshal {_kind(value)} into Go struct field .options "
                    "of type map[string]interface {}"
                )
        elif name == "messages":
            if value is None:
                messages = None
            elif isinstance(value, list):
                messages = len(value)
            else:
                raise BodyError(
                    f"json: cannot unmarshal {_kind(value)} into Go struct field .messages "
                    "of type []api.Message"
                )
    set_fields = frozenset(
        n
        for n, v in (
            ("model", values.get("model")),
            ("prompt", values.get("prompt")),
            ("keep_alive", keep_alive),
            ("options", options),
            ("messages", messages),
        )
        if v is not None
    )
    return Request(
        body,
        model=values.get("model"),
        prompt=values.get("prompt"),
        keep_alive=keep_alive,
        keep_alive_ns=keep_ns,
        options=options,
        messages=messages,
        fields=set_fields,
        plain=plain,
    )


def _kind(value: Any) -> str:
    if isinstance(value, Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Pairs):
        return "object"
    return "null"


# -- writing back ----------------------------------------------------------------------------


def rewrite(
    body: Pairs, changed: dict[str, Any], fields: Iterable[str], unset: Iterable[str] = ()
) -> bytes:
    """``body`` with the struct fields in ``changed`` (by JSON name) set to its values and
    those in ``unset`` left out: every member that sets one of them (in any case) is dropped,
    and each new value written once, by its exact name; every other member is kept as it
    came, in order."""
    names = tuple(fields)
    gone = set(changed) | set(unset)
    kept = tuple((k, v) for k, v in body.items if field_of(k, names) not in gone)
    return encode(Pairs(kept + tuple(changed.items())))


def encode(value: Any) -> bytes:
    """``value`` (as :func:`_first` reads it, or plain Python values) as compact JSON
    that Go decodes to the same thing."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode()


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, Number):
        out.append(str.__str__(value))
    elif isinstance(value, str) or value is None or isinstance(value, bool):
        out.append(json.dumps(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        out.append(repr(value))
    elif isinstance(value, Pairs | dict):
        items = value.items if isinstance(value, Pairs) else tuple(value.items())
        out.append("{")
        for i, (k, v) in enumerate(items):
            if i:
                out.append(",")
            out.append(json.dumps(k))
            out.append(":")
            _encode(v, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _encode(v, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")
