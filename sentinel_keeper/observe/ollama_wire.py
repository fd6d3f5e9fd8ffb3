"""Ollama's wire format, without the wire: its JSON answers checked for shape and turned into
typed data, and the times and keep_alive values it reads and writes. Pure functions of what
came in; the HTTP is the client's (:mod:`sentinel_keeper.observe.ollama`).

Everything Ollama sends back is untrusted data: checked for shape (a wrong one is an
:class:`~sentinel_keeper.errors.OllamaProtocolError` that says where), never used as a path or
a command, and any text kept from it is made safe for one line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from sentinel_keeper.errors import LoadFailed, OllamaProtocolError
from sentinel_keeper.observe.observation import Endpoint, InstalledModel, LoadedModel, ModelDetails
from sentinel_keeper.values.names import normalize_model_name
from sentinel_keeper.values.text import one_line, show

MAX_ERROR_TEXT = 500  # characters of an error text from Ollama kept in a message
# Go's time.Time marshals as RFC 3339 with up to 9 fractional digits; Python keeps 6.
_FRACTION_PAST_MICROSECONDS = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class LoadResult:
    """What a load took: wall seconds, Ollama's own load_duration when it said (current
    servers do not, for a request without a prompt), and the endpoint that worked."""

    seconds: float
    load_duration: float | None
    endpoint: Endpoint


@dataclass(frozen=True)
class TimedAnswer:
    """One timed request that made Ollama answer (``sentinel-keeper bench``): seconds to the
    first streamed line (the first token; the whole answer for /api/embed), seconds to the
    end, and the counters Ollama's final line gave (durations in seconds, None when absent)."""

    ttfb: float
    seconds: float
    eval_count: int
    load_duration: float | None
    eval_duration: float | None
    prompt_eval_duration: float | None
    endpoint: Endpoint

    @property
    def tokens_per_second(self) -> float | None:
        """eval_count / eval_duration, as Ollama's own --verbose reports it."""
        if not self.eval_duration or self.eval_count <= 0:
            return None
        return self.eval_count / self.eval_duration


def parse_timestamp(text: str) -> datetime:
    """A timezone-aware datetime from Go's RFC 3339 output (``Z``, ``z`` or an offset;
    nanoseconds are cut to microseconds). Raises ValueError when ``text`` is not such a time,
    a time without a zone included.

    ``datetime.fromisoformat`` does the parsing. Go writes up to 9 fractional digits and a
    datetime holds 6: the fraction is cut to 6 digits first, so that the result does not
    depend on what a Python version does with the rest (3.11.7 drops them too)."""
    stripped = text.strip()
    if stripped[-1:] == "z":  # RFC 3339 allows a lower-case Z; fromisoformat does not
        stripped = stripped[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(_FRACTION_PAST_MICROSECONDS.sub(r"\1", stripped))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {show(text)}") from None
    if moment.tzinfo is None:
        raise ValueError(f"not an RFC 3339 time (no time zone): {show(text)}")
    return moment


def keep_alive_json(keep_alive: float) -> int | float:
    """The keep_alive value to send: a JSON number of seconds (an int when whole), never a
    string (Ollama refuses the string "-1"). Negative means forever."""
    if isinstance(keep_alive, bool) or not math.isfinite(keep_alive):
        raise ValueError(f"keep_alive must be a finite number of seconds, not {keep_alive!r}")
    if float(keep_alive).is_integer():
        return int(keep_alive)
    return float(keep_alive)


def error_text(value: object) -> str:
    """An error text (Ollama's, or a connection's) made safe for one line, and bounded."""
    return one_line(str(value), MAX_ERROR_TEXT)


def parse_json(content: bytes | str, path: str) -> Any:
    """The JSON of an answer from ``path``; OllamaProtocolError when it is not JSON."""
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        sample = (
            content[:80] if isinstance(content, str) else content[:80].decode("utf-8", "replace")
        )
        raise OllamaProtocolError(
            f"{path}: the answer is not JSON ({exc.__class__.__name__}): {show(sample, 100)}"
        ) from None


class Shape:
    """Checks of untrusted JSON that say where a value was wrong."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, problem: str) -> NoReturn:
        raise OllamaProtocolError(f"{self.where}: {path} {problem}")

    def an_object(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"is not a JSON object (got {_kind(value)})")
        return value

    def a_list(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(path, f"is not a list (got {_kind(value)})")
        return value

    def a_string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"is not a string (got {_kind(value)})")
        return value

    def an_int(self, value: Any, path: str, *, minimum: int | None = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"is not an integer (got {_kind(value)})")
        if isinstance(value, float) and not value.is_integer():
            self.fail(path, f"is not an integer (got {value!r})")
        number = int(value)
        if minimum is not None and number < minimum:
            self.fail(path, f"is negative ({number})")
        return number

    def an_int_or_max(self, value: Any, path: str) -> int:
        """An integer, or a per-layer list of integers (their largest)."""
        if isinstance(value, list):
            items = [self.an_int(v, f"{path}[{i}]") for i, v in enumerate(value)]
            if not items:
                self.fail(path, "is an empty list")
            return max(items)
        return self.an_int(value, path)

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        items = self.a_list(value, path)
        return tuple(self.a_string(v, f"{path}[{i}]") for i, v in enumerate(items))

    def a_time(self, value: Any, path: str) -> datetime | None:
        text = self.a_string(value, path)
        try:
            moment = parse_timestamp(text)
        except ValueError as exc:
            self.fail(path, str(exc))
        return None if moment.year <= 1 else moment  # Go's zero time: not known


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


# -- the answers -----------------------------------------------------------------------------


def parse_version(answer: Any) -> str:
    """GET /api/version: the version string."""
    shape = Shape("/api/version")
    body = shape.an_object(answer, "the answer")
    return shape.a_string(body.get("version"), "version")


def _model_rows(shape: Shape, answer: Any) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """The rows of a {"models": [...]} answer: where each is, the row, its normalised name."""
    body = shape.an_object(answer, "the answer")
    rows = body.get("models")
    if rows is None:
        return
    for i, raw in enumerate(shape.a_list(rows, "models")):
        at = f"models[{i}]"
        row = shape.an_object(raw, at)
        name = shape.a_string(row.get("name") or row.get("model"), f"{at}.name")
        yield at, row, normalize_model_name(name)


def parse_ps(answer: Any) -> tuple[LoadedModel, ...]:
    """GET /api/ps: the models loaded."""
    shape = Shape("/api/ps")
    out = []
    for at, row, name in _model_rows(shape, answer):
        expires = row.get("expires_at")
        context = row.get("context_length")
        out.append(
            LoadedModel(
                name=name,
                size=shape.an_int(row.get("size"), f"{at}.size"),
                size_vram=shape.an_int(row.get("size_vram"), f"{at}.size_vram"),
                digest=shape.a_string(row.get("digest", ""), f"{at}.digest"),
                expires_at=None if expires is None else shape.a_time(expires, f"{at}.expires_at"),
                context_length=(
                    None
                    if context is None
                    else shape.an_int(context, f"{at}.context_length") or None
                ),
            )
        )
    return tuple(out)


def parse_tags(answer: Any) -> tuple[InstalledModel, ...]:
    """GET /api/tags: the models installed."""
    shape = Shape("/api/tags")
    out = []
    for at, row, name in _model_rows(shape, answer):
        caps = row.get("capabilities")
        out.append(
            InstalledModel(
                name=name,
                size=shape.an_int(row.get("size"), f"{at}.size"),
                digest=shape.a_string(row.get("digest", ""), f"{at}.digest"),
                capabilities=None if caps is None else shape.strings(caps, f"{at}.capabilities"),
            )
        )
    return tuple(out)


def parse_show(model: str, answer: Any) -> ModelDetails:
    """POST /api/show: capabilities and the architecture numbers of ``model``."""
    shape = Shape("/api/show")
    body = shape.an_object(answer, "answer")
    caps = body.get("capabilities")
    info_raw = body.get("model_info")
    info = {} if info_raw is None else shape.an_object(info_raw, "model_info")
    details_raw = body.get("details")
    details = {} if details_raw is None else shape.an_object(details_raw, "details")
    arch: str | None = None
    if info.get("general.architecture") is not None:
        arch = shape.a_string(info["general.architecture"], "model_info.general.architecture")
    elif details.get("family"):
        arch = shape.a_string(details["family"], "details.family")

    def number(key: str) -> int | None:
        if arch is None:
            return None
        full = f"{arch}.{key}"
        value = info.get(full)
        return None if value is None else shape.an_int_or_max(value, f"model_info[{full!r}]")

    return ModelDetails(
        name=normalize_model_name(model),
        capabilities=None if caps is None else shape.strings(caps, "capabilities"),
        architecture=arch,
        context_length=number("context_length"),
        block_count=number("block_count"),
        embedding_length=number("embedding_length"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv"),
        key_length=number("attention.key_length"),
        value_length=number("attention.value_length"),
    )


def parse_load(
    path: str, answer: Any, *, seconds: float, endpoint: Endpoint, model: str
) -> LoadResult:
    """The answer to a load request (an empty /api/generate or /api/embed) that took
    ``seconds``; LoadFailed when Ollama answered with an error."""
    shape = Shape(path)
    body = shape.an_object(answer, "the answer")
    if body.get("error") is not None:
        raise LoadFailed(200, error_text(body["error"]), model=model)
    if endpoint == "generate" and "done" in body and body["done"] is not True:
        shape.fail("done", "is not true: the load did not finish")
    if endpoint == "embed" and body.get("embeddings") is not None:
        shape.a_list(body["embeddings"], "embeddings")
    raw = body.get("load_duration")
    load_duration = None if raw is None else shape.an_int(raw, "load_duration") / 1e9
    return LoadResult(seconds=seconds, load_duration=load_duration, endpoint=endpoint)


def parse_timed(
    path: str,
    final: Mapping[str, Any],
    *,
    started: float,
    first: float,
    ended: float,
    endpoint: Endpoint,
) -> TimedAnswer:
    """A timed answer from its last line (``final``) and the moments the request started,
    its first line came and it ended."""
    shape = Shape(path)

    def seconds(key: str) -> float | None:
        raw = final.get(key)
        return None if raw is None else shape.an_int(raw, key) / 1e9

    count = final.get("eval_count")
    return TimedAnswer(
        ttfb=first - started,
        seconds=ended - started,
        eval_count=0 if count is None else shape.an_int(count, "eval_count"),
        load_duration=seconds("load_duration"),
        eval_duration=seconds("eval_duration"),
        prompt_eval_duration=seconds("prompt_eval_duration"),
        endpoint=endpoint,
    )
