"""The Ollama HTTP client: the only module of sentinel-keeper that talks HTTP (httpx).

Every failure becomes one of the errors in :mod:`sentinel_keeper.errors`, with a message that
names the server and the endpoint. Everything Ollama sends back is untrusted data: checked for
shape, never used as a path or a command.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import httpx

from sentinel_keeper import __version__
from sentinel_keeper.errors import (
    LoadFailed,
    ModelNotFound,
    OllamaAPIError,
    OllamaBusy,
    OllamaProtocolError,
    OllamaTimeout,
    OllamaUnreachable,
    UnsupportedByModel,
)
from sentinel_keeper.names import normalize_model_name
from sentinel_keeper.observation import Endpoint, InstalledModel, LoadedModel, ModelDetails
from sentinel_keeper.text import one_line, show

DEFAULT_PORT = 11434
_MAX_ERROR_TEXT = 500
# The most of an answer the client holds: /api/tags with thousands of models is well below.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024  # one line of a streamed answer (progress, a token)
# Describe the body as it came off the wire; the buffered copy is decoded and whole.
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
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


def normalize_base_url(base_url: str) -> str:
    """``http://host:port`` without a trailing slash. A bare ``host`` or ``host:port`` gets
    ``http://`` and, without a port, Ollama's 11434 (as OLLAMA_HOST reads it); a URL with a
    scheme keeps its own default port."""
    url = base_url.strip().rstrip("/")
    if not url:
        raise ValueError("the Ollama URL is empty")
    if "://" in url:
        return url
    host = url
    if host.startswith("["):
        has_port = "]:" in host
    elif host.count(":") > 1:  # a bare IPv6 address
        host, has_port = f"[{host}]", False
    else:
        has_port = ":" in host
    return f"http://{host}" if has_port else f"http://{host}:{DEFAULT_PORT}"


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


def _clean(text: str) -> str:
    """Untrusted text made safe to show in one log line, and bounded."""
    return one_line(text, _MAX_ERROR_TEXT)


class _Shape:
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


def _connection_reason(exc: httpx.TransportError) -> str:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        cause = cause.__cause__ or cause.__context__
    text = _clean(str(exc))
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__


class OllamaClient:
    """A synchronous client for the parts of Ollama's API that a keeper needs."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, load_timeout: float = 600.0) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeout = timeout
        self.load_timeout = load_timeout
        self._short = httpx.Timeout(timeout)
        # A disconnect aborts Ollama's load, so loads wait long; connecting stays short.
        self._long = httpx.Timeout(timeout, read=load_timeout)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self._short,
            follow_redirects=False,
            trust_env=False,  # no proxies from the environment for a local daemon
            headers={"User-Agent": f"sentinel-keeper/{__version__}"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------

    def version(self) -> str:
        """GET /api/version."""
        shape = _Shape("/api/version")
        body = shape.an_object(self._call("GET", "/api/version"), "the answer")
        return shape.a_string(body.get("version"), "version")

    def ps(self) -> tuple[LoadedModel, ...]:
        """GET /api/ps: the models loaded now."""
        shape = _Shape("/api/ps")
        body = shape.an_object(self._call("GET", "/api/ps"), "the answer")
        rows = body.get("models")
        if rows is None:
            return ()
        out = []
        for i, raw in enumerate(shape.a_list(rows, "models")):
            at = f"models[{i}]"
            row = shape.an_object(raw, at)
            name = row.get("name") or row.get("model")
            expires = row.get("expires_at")
            context = row.get("context_length")
            out.append(
                LoadedModel(
                    name=normalize_model_name(shape.a_string(name, f"{at}.name")),
                    size=shape.an_int(row.get("size"), f"{at}.size"),
                    size_vram=shape.an_int(row.get("size_vram"), f"{at}.size_vram"),
                    digest=shape.a_string(row.get("digest", ""), f"{at}.digest"),
                    expires_at=None
                    if expires is None
                    else shape.a_time(expires, f"{at}.expires_at"),
                    context_length=(
                        None
                        if context is None
                        else shape.an_int(context, f"{at}.context_length") or None
                    ),
                )
            )
        return tuple(out)

    def tags(self) -> tuple[InstalledModel, ...]:
        """GET /api/tags: the models installed."""
        shape = _Shape("/api/tags")
        body = shape.an_object(self._call("GET", "/api/tags"), "the answer")
        rows = body.get("models")
        if rows is None:
            return ()
        out = []
        for i, raw in enumerate(shape.a_list(rows, "models")):
            at = f"models[{i}]"
            row = shape.an_object(raw, at)
            name = row.get("name") or row.get("model")
            caps = row.get("capabilities")
            out.append(
                InstalledModel(
                    name=normalize_model_name(shape.a_string(name, f"{at}.name")),
                    size=shape.an_int(row.get("size"), f"{at}.size"),
                    digest=shape.a_string(row.get("digest", ""), f"{at}.digest"),
                    capabilities=None
                    if caps is None
                    else shape.strings(caps, f"{at}.capabilities"),
                )
            )
        return tuple(out)

    def show(self, model: str) -> ModelDetails:
        """POST /api/show: capabilities and the architecture numbers of ``model``."""
        shape = _Shape("/api/show")
        body = shape.an_object(
            self._call("POST", "/api/show", {"model": model}, model=model), "answer"
        )
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

    def load(
        self,
        model: str,
        *,
        options: Mapping[str, int | bool],
        keep_alive: float,
        endpoint: Endpoint = "generate",
    ) -> LoadResult:
        """Load ``model`` without generating anything, for ``keep_alive`` seconds (negative:
        forever). Blocks until Ollama has loaded it (up to ``load_timeout``).

        ``generate`` falls back to ``embed`` when the model cannot generate (an embedding
        model); the result says which endpoint worked.
        """
        if keep_alive >= 0 and keep_alive * 1e9 < 1:
            # Ollama reads keep_alive 0 on an empty request as "unload".
            raise ValueError("load() needs a keep_alive above zero; use unload() to unload")
        body: dict[str, Any] = {"model": model, "keep_alive": keep_alive_json(keep_alive)}
        if options:
            body["options"] = dict(options)
        started = time.monotonic()
        if endpoint == "generate":
            try:
                answer = self._call(
                    "POST", "/api/generate", {**body, "stream": False}, model=model, loading=True
                )
            except UnsupportedByModel:
                endpoint = "embed"
            else:
                return self._load_result("/api/generate", answer, started, "generate", model)
        answer = self._call("POST", "/api/embed", body, model=model, loading=True)
        return self._load_result("/api/embed", answer, started, "embed", model)

    def unload(self, model: str, *, endpoint: Endpoint = "generate") -> None:
        """Unload ``model`` now (keep_alive 0).

        ``generate`` works for every model, embedding-only ones included: Ollama handles an
        empty keep_alive-0 request before it checks capabilities, and does not load a model
        that is not loaded. ``embed`` (keep_alive 0 on /api/embed) loads the model first when
        it is not loaded, then unloads it; prefer ``generate``.
        """
        if endpoint == "generate":
            try:
                self._call(
                    "POST",
                    "/api/generate",
                    {"model": model, "keep_alive": 0, "stream": False},
                    model=model,
                    loading=True,
                )
                return
            except UnsupportedByModel:
                pass  # very old servers checked capabilities first
        self._call(
            "POST", "/api/embed", {"model": model, "keep_alive": 0}, model=model, loading=True
        )

    def generate_timed(
        self,
        model: str,
        prompt: str,
        *,
        options: Mapping[str, int | bool],
        keep_alive: float,
        num_predict: int,
    ) -> TimedAnswer:
        """POST /api/generate with a prompt, streaming, timed: generates up to
        ``num_predict`` tokens. Waits as long as a load may take (``load_timeout``)."""
        path = "/api/generate"
        shape = _Shape(path)
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "stream": True,
            "keep_alive": keep_alive_json(keep_alive),
            "options": {**dict(options), "num_predict": num_predict},
        }
        started = time.monotonic()
        first: float | None = None
        final: Mapping[str, Any] | None = None
        try:
            with self._http.stream("POST", path, json=body, timeout=self._long) as response:
                if response.status_code != 200:
                    self._raise_for_status(_buffered(response, path), path, model, loading=True)
                for i, line in enumerate(_lines(response, path)):
                    if not line.strip():
                        continue
                    item = shape.an_object(_json_or_fail(line, path), f"line {i + 1}")
                    if first is None:
                        first = time.monotonic()
                    if item.get("error") is not None:
                        raise OllamaAPIError(500, _clean(str(item["error"])), model=model)
                    if item.get("done") is True:
                        final = item
                        break
        except httpx.TransportError as exc:
            self._raise_transport(exc, "POST", path, self.load_timeout)
        ended = time.monotonic()
        if final is None or first is None:
            raise OllamaProtocolError(f"{path}: the answer for {model} ended before its last line")
        return self._timed(
            shape, final, started=started, first=first, ended=ended, endpoint="generate"
        )

    def embed_timed(
        self,
        model: str,
        text: str,
        *,
        options: Mapping[str, int | bool],
        keep_alive: float,
    ) -> TimedAnswer:
        """POST /api/embed with one input, timed (the answer comes in one piece)."""
        path = "/api/embed"
        shape = _Shape(path)
        body: dict[str, Any] = {
            "model": model,
            "input": text,
            "keep_alive": keep_alive_json(keep_alive),
        }
        if options:
            body["options"] = dict(options)
        started = time.monotonic()
        answer = shape.an_object(
            self._call("POST", path, body, model=model, loading=True), "the answer"
        )
        ended = time.monotonic()
        if answer.get("error") is not None:
            raise OllamaAPIError(500, _clean(str(answer["error"])), model=model)
        return self._timed(
            shape, answer, started=started, first=ended, ended=ended, endpoint="embed"
        )

    def pull(self, model: str) -> None:
        """POST /api/pull: download ``model``. Streams progress so that a long download never
        looks like a stall; each progress line must come within ``load_timeout``."""
        path = "/api/pull"
        shape = _Shape(path)
        success = False
        try:
            with self._http.stream(
                "POST", path, json={"model": model, "stream": True}, timeout=self._long
            ) as response:
                if response.status_code != 200:
                    self._raise_for_status(_buffered(response, path), path, model, loading=False)
                for i, line in enumerate(_lines(response, path)):
                    if not line.strip():
                        continue
                    item = shape.an_object(_json_or_fail(line, path), f"line {i + 1}")
                    if item.get("error") is not None:
                        raise OllamaAPIError(500, _clean(str(item["error"])), model=model)
                    if item.get("status") == "success":
                        success = True
        except httpx.TransportError as exc:
            self._raise_transport(exc, "POST", path, self.load_timeout)
        if not success:
            raise OllamaProtocolError(f"{path}: the download of {model} ended without success")

    # -- plumbing ------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        loading: bool = False,
    ) -> Any:
        timeout = self._long if loading else self._short
        try:
            with self._http.stream(method, path, json=body, timeout=timeout) as streamed:
                response = _buffered(streamed, path)
        except httpx.TransportError as exc:
            self._raise_transport(exc, method, path, timeout.read)
        if response.status_code != 200:
            self._raise_for_status(response, path, model, loading=loading)
        return _json_or_fail(response.content, path)

    def _load_result(
        self, path: str, answer: Any, started: float, endpoint: Endpoint, model: str
    ) -> LoadResult:
        seconds = time.monotonic() - started
        shape = _Shape(path)
        body = shape.an_object(answer, "the answer")
        if body.get("error") is not None:
            raise LoadFailed(200, _clean(str(body["error"])), model=model)
        if endpoint == "generate" and "done" in body and body["done"] is not True:
            shape.fail("done", "is not true: the load did not finish")
        if endpoint == "embed" and body.get("embeddings") is not None:
            shape.a_list(body["embeddings"], "embeddings")
        raw = body.get("load_duration")
        load_duration = None if raw is None else shape.an_int(raw, "load_duration") / 1e9
        return LoadResult(seconds=seconds, load_duration=load_duration, endpoint=endpoint)

    @staticmethod
    def _timed(
        shape: _Shape,
        final: Mapping[str, Any],
        *,
        started: float,
        first: float,
        ended: float,
        endpoint: Endpoint,
    ) -> TimedAnswer:
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

    def _raise_transport(
        self, exc: httpx.TransportError, method: str, path: str, limit: float | None
    ) -> NoReturn:
        where = f"{method} {path}"
        if isinstance(exc, httpx.ConnectTimeout):
            raise OllamaUnreachable(self.base_url, f"{where}: connecting timed out") from exc
        if isinstance(exc, httpx.TimeoutException):
            within = "in time" if limit is None else f"within {limit:g} s"
            raise OllamaTimeout(self.base_url, f"{where}: no answer {within}") from exc
        if isinstance(exc, httpx.RemoteProtocolError):
            raise OllamaUnreachable(
                self.base_url, f"{where}: connection closed without an answer"
            ) from exc
        raise OllamaUnreachable(self.base_url, f"{where}: {_connection_reason(exc)}") from exc

    def _raise_for_status(
        self, response: httpx.Response, path: str, model: str | None, *, loading: bool
    ) -> NoReturn:
        status = response.status_code
        text, from_json = _error_text(response)
        if status == 404:
            if model is not None and from_json:
                raise ModelNotFound(status, text, model=model)
            raise OllamaAPIError(
                status, f"{path} not found on this server (too old an Ollama?): {text}", model=model
            )
        if status == 400 and "does not support" in text:
            raise UnsupportedByModel(status, text, model=model)
        if status == 503:
            raise OllamaBusy(status, text, model=model)
        if status == 500 and loading:
            raise LoadFailed(status, text, model=model)
        raise OllamaAPIError(status, text, model=model)


def _too_large(path: str, what: str, limit: int) -> OllamaProtocolError:
    return OllamaProtocolError(f"{path}: {what} is larger than {limit // 1024 // 1024} MiB")


def _buffered(response: httpx.Response, path: str) -> httpx.Response:
    """``response`` read whole, but at most MAX_ANSWER_BYTES (decoded): an answer from a
    hostile or broken server cannot make the keeper hold gigabytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise _too_large(path, "the answer", MAX_ANSWER_BYTES)
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > MAX_ANSWER_BYTES:
            raise _too_large(path, "the answer", MAX_ANSWER_BYTES)
        chunks.append(chunk)
    return httpx.Response(
        response.status_code,
        headers=[(k, v) for k, v in response.headers.multi_items() if k not in _BODY_HEADERS],
        content=b"".join(chunks),
        request=response.request,
    )


def _lines(response: httpx.Response, path: str) -> Iterator[str]:
    """The lines of a streamed answer (NDJSON), each at most MAX_LINE_BYTES."""
    pending = b""
    for chunk in response.iter_bytes():
        pending += chunk
        *done, pending = pending.split(b"\n")
        for line in done:
            yield line.decode("utf-8", "replace")
        if len(pending) > MAX_LINE_BYTES:
            raise _too_large(path, "a line of the answer", MAX_LINE_BYTES)
    if pending:
        yield pending.decode("utf-8", "replace")


def _error_text(response: httpx.Response) -> tuple[str, bool]:
    """Ollama's error text ({"error": "..."}), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return _clean(body["error"]), True
    text = _clean(response.text) if response.content else ""
    return (text or response.reason_phrase or f"HTTP {response.status_code}"), False


def _json_or_fail(content: bytes | str, path: str) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        sample = (
            content[:80] if isinstance(content, str) else content[:80].decode("utf-8", "replace")
        )
        raise OllamaProtocolError(
            f"{path}: the answer is not JSON ({exc.__class__.__name__}): {_clean(sample)!r}"
        ) from None
