"""gateway/gojson.py against a reference written here apart from it: a byte-by-byte JSON
reader with the rules of Go's encoding/json as Ollama's handlers use it (json.Decoder.Decode
into a struct), simple enough to check by eye. For generated bodies (key case, duplicate
keys, whitespace, trailing data, bad UTF-8, number forms, nested options) both must agree on
the model, keep_alive and options Ollama acts on, or both refuse; and a rewritten body must
decode, by the reference, to the rewritten values."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sentinel_keeper.gateway import gojson
from sentinel_keeper.values.names import model_key

FIELDS = ("model", "prompt", "keep_alive", "options")
FOREVER = (1 << 63) - 1


class Refused(Exception):
    pass


# --- the reference --------------------------------------------------------------------------

NUMBER = re.compile(rb"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def rune_length(b: bytes, i: int) -> int:
    """Go's utf8.DecodeRune: the length of a valid rune at ``b[i]``, 0 when invalid."""
    x = b[i]
    if x < 0x80:
        return 1
    if 0xC2 <= x <= 0xDF:
        need, lo, hi = 2, 0x80, 0xBF
    elif x == 0xE0:
        need, lo, hi = 3, 0xA0, 0xBF
    elif 0xE1 <= x <= 0xEC or 0xEE <= x <= 0xEF:
        need, lo, hi = 3, 0x80, 0xBF
    elif x == 0xED:
        need, lo, hi = 3, 0x80, 0x9F
    elif x == 0xF0:
        need, lo, hi = 4, 0x90, 0xBF
    elif 0xF1 <= x <= 0xF3:
        need, lo, hi = 4, 0x80, 0xBF
    elif x == 0xF4:
        need, lo, hi = 4, 0x80, 0x8F
    else:
        return 0
    if i + need > len(b) or not lo <= b[i + 1] <= hi:
        return 0
    if any(not 0x80 <= b[j] <= 0xBF for j in range(i + 2, i + need)):
        return 0
    return need


class Obj:
    """A JSON object: its members in order, duplicates kept."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


class Reader:
    def __init__(self, data: bytes) -> None:
        self.b = data
        self.i = 0

    def peek(self) -> int:
        if self.i >= len(self.b):
            raise Refused("unexpected end")
        return self.b[self.i]

    def space(self) -> None:
        while self.i < len(self.b) and self.b[self.i] in b" \t\r\n":
            self.i += 1

    def value(self) -> Any:
        self.space()
        c = self.peek()
        if c == ord("{"):
            return self.obj()
        if c == ord("["):
            return self.arr()
        if c == ord('"'):
            return self.string()
        for word, result in ((b"true", True), (b"false", False), (b"null", None)):
            if self.b.startswith(word, self.i):
                self.i += len(word)
                return result
        m = NUMBER.match(self.b, self.i)
        if m is None:
            raise Refused("not a value")
        self.i = m.end()
        return ("number", m.group().decode())

    def obj(self) -> Obj:
        self.i += 1
        pairs: list[tuple[str, Any]] = []
        self.space()
        if self.peek() == ord("}"):
            self.i += 1
            return Obj(pairs)
        while True:
            self.space()
            if self.peek() != ord('"'):
                raise Refused("key")
            key = self.string()
            self.space()
            if self.peek() != ord(":"):
                raise Refused("colon")
            self.i += 1
            pairs.append((key, self.value()))
            self.space()
            c = self.peek()
            self.i += 1
            if c == ord("}"):
                return Obj(pairs)
            if c != ord(","):
                raise Refused("comma")

    def arr(self) -> list[Any]:
        self.i += 1
        items: list[Any] = []
        self.space()
        if self.peek() == ord("]"):
            self.i += 1
            return items
        while True:
            items.append(self.value())
            self.space()
            c = self.peek()
            self.i += 1
            if c == ord("]"):
                return items
            if c != ord(","):
                raise Refused("comma")

    def hex4(self) -> int:
        digits = self.b[self.i : self.i + 4]
        if len(digits) < 4 or not re.fullmatch(rb"[0-9a-fA-F]{4}", digits):
            raise Refused("bad \\u")
        self.i += 4
        return int(digits, 16)

    def string(self) -> str:
        self.i += 1
        out: list[str] = []
        simple = {ord(k): v for k, v in zip('"\\/bfnrt', '"\\/\b\f\n\r\t', strict=True)}
        while True:
            c = self.peek()
            if c == ord('"'):
                self.i += 1
                return "".join(out)
            if c < 0x20:
                raise Refused("control character")
            if c == ord("\\"):
                self.i += 1
                e = self.peek()
                self.i += 1
                if e in simple:
                    out.append(simple[e])
                elif e == ord("u"):
                    u = self.hex4()
                    if 0xD800 <= u < 0xDC00 and self.b.startswith(b"\\u", self.i):
                        save = self.i
                        self.i += 2
                        low = self.hex4()
                        if 0xDC00 <= low <= 0xDFFF:
                            out.append(chr(0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00)))
                            continue
                        self.i = save  # not a pair: the high half alone, then this escape
                    out.append("\ufffd" if 0xD800 <= u <= 0xDFFF else chr(u))
                else:
                    raise Refused("bad escape")
                continue
            n = rune_length(self.b, self.i)
            if n == 0:
                out.append("\ufffd")
                self.i += 1
            else:
                out.append(self.b[self.i : self.i + n].decode())
                self.i += n


def same_key(key: str, name: str) -> bool:
    """Go's EqualFold of a key with an ASCII field name, rune by rune."""
    if len(key) != len(name):
        return False
    for k, n in zip(key, name, strict=True):
        if k == n or (k.isascii() and k.lower() == n):
            continue
        if (k == "\u212a" and n == "k") or (k == "\u017f" and n == "s"):
            continue
        return False
    return True


DURATIONS = {
    "5m": 300 * 10**9,
    "0": 0,
    "0s": 0,
    "1h30m": 5400 * 10**9,
    "1.5s": 1_500_000_000,
    "24h": 86400 * 10**9,
}
DURATIONS_FOREVER = {"-1m"}  # negative: forever; "-1", "300", "1d" are ParseDuration errors


def ref_number(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise Refused("float64 range")
    return value


def ref_plain(value: Any) -> Any:
    """A decoded value into Go's ``any``."""
    if isinstance(value, tuple):
        return ref_number(value[1])
    if isinstance(value, Obj):
        return {k: ref_plain(v) for k, v in value.pairs}
    if isinstance(value, list):
        return [ref_plain(v) for v in value]
    return value


def reference(raw: bytes) -> tuple[str | None, int | None, dict[str, Any] | None]:
    """(model, keep_alive nanoseconds, options) as Ollama's GenerateHandler gets them."""
    reader = Reader(raw)
    reader.space()
    if reader.i == len(raw):
        raise Refused("missing request body")
    body = reader.value()  # whatever follows is never read
    if body is None:
        return None, None, None
    if not isinstance(body, Obj):
        raise Refused("not an object")
    model: str | None = None
    keep: int | None = None
    options: dict[str, Any] | None = None
    for key, value in body.pairs:
        if same_key(key, "model") or same_key(key, "prompt"):
            if value is not None and not isinstance(value, str):
                raise Refused("string field")
            if same_key(key, "model") and value is not None:
                model = value
        elif same_key(key, "keep_alive"):
            if value is None:
                keep = None
            elif isinstance(value, tuple):
                seconds = ref_number(value[1])
                if seconds < 0:
                    keep = FOREVER
                elif seconds * 1e9 >= 2.0**63:
                    raise Refused("undefined in Go")
                else:
                    keep = int(seconds * 1e9)
            elif isinstance(value, str) and value in DURATIONS:
                keep = DURATIONS[value]
            elif isinstance(value, str) and value in DURATIONS_FOREVER:
                keep = FOREVER
            else:
                raise Refused("keep_alive")
        elif same_key(key, "options"):
            if value is None:
                options = None
            elif isinstance(value, Obj):
                options = {} if options is None else options
                for k, v in value.pairs:
                    options[k] = ref_plain(v)
            else:
                raise Refused("options")
    return model, keep, options


def gateway(raw: bytes) -> tuple[str | None, int | None, dict[str, Any] | None]:
    try:
        read = gojson.read_request(raw, FIELDS)
    except gojson.BodyError as exc:
        raise Refused(str(exc)) from None
    return read.model, read.keep_alive_ns, read.options


def outcome(read: Any, raw: bytes) -> Any:
    try:
        return read(raw)
    except Refused:
        return "refused"


# --- generated bodies -----------------------------------------------------------------------

ws = st.text(alphabet=" \t\r\n", max_size=2).map(str.encode)


def spelled(name: str) -> st.SearchStrategy[bytes]:
    """A key Go may or may not match to ``name``: cases, Go's two non-ASCII folds, a
    dotless i (which does not fold), an escaped character."""

    def respell(flags: list[int]) -> bytes:
        out = []
        for c, f in zip(name, flags, strict=False):
            if f == 1:
                out.append(c.upper())
            elif f == 2 and c in "ks":
                out.append("\u212a" if c == "k" else "\u017f")
            elif f == 3 and c == "i":
                out.append("\u0131")
            elif f == 4:
                out.append(f"\\u{ord(c):04x}")
            else:
                out.append(c)
        return ('"' + "".join(out) + '"').encode()

    return st.lists(st.integers(0, 4), min_size=len(name), max_size=len(name)).map(respell)


good_numbers = st.sampled_from(
    [b"0", b"-0", b"512", b"512.5", b"1024.0", b"1e3", b"5E-1", b"-1", b"1e-10", b"-0.0"]
    + [b"300", b"0.000000001", b"2048"]
)
bad_numbers = st.sampled_from([b"1e309", b"-1e400", b"1e10", b"12345678901234567890"])
names = st.sampled_from(
    [b'"llama3.2:1b"', b'"LLAMA3.2:1B"', b'"x\xffy"', b'"\\ud800"', b'"\xe2\x82"', b'"a\\u00e9"']
)
good_durations = st.sampled_from([b'"5m"', b'"0"', b'"0s"', b'"-1m"', b'"1h30m"', b'"1.5s"'])
bad_durations = st.sampled_from([b'"-1"', b'"300"', b'"1d"', b"true", b"{}", b"[]"])
literals = st.sampled_from([b"null", b"true", b"false"])
scalars = st.one_of(good_numbers, bad_numbers, names, good_durations, literals)


def obj(members: st.SearchStrategy[bytes], least: int = 0) -> st.SearchStrategy[bytes]:
    return st.lists(members, min_size=least, max_size=4).map(lambda ms: b"{" + b",".join(ms) + b"}")


def member(key: st.SearchStrategy[bytes], value: st.SearchStrategy[bytes]) -> Any:
    return st.tuples(ws, key, ws, value, ws).map(lambda t: t[0] + t[1] + t[2] + b":" + t[3] + t[4])


option_keys = st.sampled_from([b'"num_ctx"', b'"NUM_CTX"', b'"temperature"', b'"stop"'])
option_values = st.one_of(
    good_numbers, good_numbers, names, literals, bad_numbers, st.just(b'["a","b"]')
) | st.just(b'{"x":1,"x":[2,{"y":null}]}')
options = st.one_of(
    obj(member(option_keys, option_values), 1),
    obj(member(option_keys, option_values), 1),
    st.sampled_from([b"null", b"[1]", b'"x"', b"1"]),
)
top = st.one_of(
    member(spelled("model"), st.one_of(names, names, st.sampled_from([b"null", b"1"]))),
    member(spelled("keep_alive"), st.one_of(good_numbers, good_durations, bad_durations)),
    member(spelled("keep_alive"), st.one_of(good_numbers, good_durations, literals, bad_numbers)),
    member(spelled("options"), options),
    member(spelled("prompt"), st.one_of(names, st.just(b"null"))),
    member(st.just(b'"other"'), st.one_of(scalars, obj(member(option_keys, scalars)))),
)
trailing = st.sampled_from([b"", b" ", b" x", b"{}", b"\xff\xfe", b"]", b',"a":1}'])
leading = st.sampled_from([b"", b"", b" \n", b"\xef\xbb\xbf"])
bodies = st.tuples(leading, obj(top, 1), trailing).map(b"".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
@example(b'{"model":"a","Keep_Alive":0,"keep_alive":-1}')
@example(b'{"options":{"num_ctx":512},"Options":{"top_k":1}} x')
@example('{"\u212aeep_alive":"5m"}'.encode())
@example(b'{"keep_al\xc4\xb1ve":0}')
@example(b'{"options":{"num_ctx":512},"options":null,"OPTIONS":{"stop":["x"]}}')
def test_the_gateway_reads_a_body_as_go_does(raw: bytes) -> None:
    assert outcome(gateway, raw) == outcome(reference, raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.sampled_from([-1, 3600, "24h"]), st.sampled_from([8192, 2048.0]))
def test_a_rewritten_body_decodes_to_the_rewritten_values(
    raw: bytes, keep: object, num_ctx: float
) -> None:
    try:
        read = gojson.read_request(raw, FIELDS)
    except gojson.BodyError:
        return
    if not isinstance(read.body, gojson.Pairs):
        return
    new_options = {**(read.options or {}), "num_ctx": num_ctx}
    changed: dict[str, Any] = {"keep_alive": keep, "options": new_options}
    if read.model is not None:
        changed["model"] = read.model
    forwarded = gojson.rewrite(read.body, changed, FIELDS)
    model, keep_ns, options = reference(forwarded)
    assert model == read.model
    assert keep_ns == {-1: FOREVER, 3600: 3600 * 10**9, "24h": 86400 * 10**9}[keep]
    assert options == new_options
    forwarded.decode("ascii")  # plain JSON: every other character escaped
    assert b"Infinity" not in forwarded and b"NaN" not in forwarded


def test_names_compare_as_ollama_compares_them() -> None:
    same = ["llama3.2:1b", "LLAMA3.2:1B", " llama3.2:1b ", "registry.ollama.ai/library/llama3.2:1b"]
    assert len({model_key(n) for n in same}) == 1
    assert model_key("llama3.2") == model_key("Llama3.2:LATEST")
    assert model_key("llama3.2:1b") != model_key("llama3.2:3b")
    assert model_key("me/llama3.2:1b") != model_key("llama3.2:1b")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
@example(b'{"model":"a","keep_alive":0,"KEEP_ALIVE":-1}')
@example(b'{"model":"a","keep_alive":-1} {"keep_alive":0}')
def test_a_body_forwarded_as_it_came_reads_the_same_to_a_strict_reader(raw: bytes) -> None:
    """What the gateway forwards as it came (``plain``) a reader with exact keys and a strict
    parser (Python's json, last key winning) reads as Go does."""
    try:
        read = gojson.read_request(raw, FIELDS)
    except gojson.BodyError:
        return
    if not read.plain or not isinstance(read.body, gojson.Pairs):
        return
    strict = json.loads(raw.decode("utf-8"))
    assert strict.get("model") == read.model
    sent = strict.get("keep_alive")
    if isinstance(sent, int | float) and not isinstance(sent, bool):
        assert isinstance(read.keep_alive, gojson.Number) and float(read.keep_alive) == sent
    else:
        assert sent == read.keep_alive
    assert strict.get("options") == read.options
