"""The Ollama HTTP client: the only module of sentinel-keeper that talks HTTP (httpx).

Every failure becomes one of the errors in :mod:`sentinel_keeper.errors`, with a message that
names the server and the endpoint. Everything Ollama sends back is untrusted data: read up to a
bound here, then checked for shape and turned into typed data by
:mod:`sentinel_keeper.observe.ollama_wire`.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
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
from sentinel_keeper.observe.observation import Endpoint, InstalledModel, LoadedModel, ModelDetails
from sentinel_keeper.observe.ollama_wire import (
    LoadResult,
    Shape,
    TimedAnswer,
    error_text,
    keep_alive_json,
    parse_json,
    parse_load,
    parse_ps,
    parse_show,
    parse_tags,
    parse_timed,
    parse_version,
)
from sentinel_keeper.values.urls import normalize_ollama_url

# The most of an answer the client holds: /api/tags with thousands of models is well below.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024  # one line of a streamed answer (progress, a token)
# Describe the body as it came off the wire; the buffered copy is decoded and whole.
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


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
    text = error_text(exc)
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__


class OllamaClient:
    """A synchronous client for the parts of Ollama's API that a keeper needs."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, load_timeout: float = 600.0) -> None:
        self.base_url = normalize_ollama_url(base_url)  # ValueError for a bad address
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
        return parse_version(self._call("GET", "/api/version"))

    def ps(self) -> tuple[LoadedModel, ...]:
        """GET /api/ps: the models loaded now."""
        return parse_ps(self._call("GET", "/api/ps"))

    def tags(self) -> tuple[InstalledModel, ...]:
        """GET /api/tags: the models installed."""
        return parse_tags(self._call("GET", "/api/tags"))

    def show(self, model: str) -> ModelDetails:
        """POST /api/show: capabilities and the architecture numbers of ``model``."""
        return parse_show(model, self._call("POST", "/api/show", {"model": model}, model=model))

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
        with closing(self._stream(path, body, model=model, loading=True)) as items:
            for item in items:
                if first is None:
                    first = time.monotonic()
                if item.get("done") is True:
                    final = item
                    break
        ended = time.monotonic()
        if final is None or first is None:
            raise OllamaProtocolError(f"{path}: the answer for {model} ended before its last line")
        return parse_timed(
            path, final, started=started, first=first, ended=ended, endpoint="generate"
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
        shape = Shape(path)
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
            raise OllamaAPIError(500, error_text(answer["error"]), model=model)
        return parse_timed(
            path, answer, started=started, first=ended, ended=ended, endpoint="embed"
        )

    def pull(self, model: str) -> None:
        """POST /api/pull: download ``model``. Streams progress so that a long download never
        looks like a stall; each progress line must come within ``load_timeout``."""
        path = "/api/pull"
        success = False
        with closing(self._stream(path, {"model": model, "stream": True}, model=model)) as items:
            for item in items:
                if item.get("status") == "success":
                    success = True
        if not success:
            raise OllamaProtocolError(f"{path}: the download of {model} ended without success")

    # -- plumbing ------------------------------------------------------------------------

    def _stream(
        self, path: str, body: Mapping[str, Any], *, model: str, loading: bool = False
    ) -> Generator[Mapping[str, Any], None, None]:
        """POST ``body`` and yield the JSON objects of the streamed answer (NDJSON), one a
        line, each checked; a line with an "error" raises. Each line must come within
        ``load_timeout``. Close the iterator when done with it."""
        shape = Shape(path)
        try:
            with self._http.stream("POST", path, json=body, timeout=self._long) as response:
                if response.status_code != 200:
                    self._raise_for_status(_buffered(response, path), path, model, loading=loading)
                for i, line in enumerate(_lines(response, path)):
                    if not line.strip():
                        continue
                    item = shape.an_object(parse_json(line, path), f"line {i + 1}")
                    if item.get("error") is not None:
                        raise OllamaAPIError(500, error_text(item["error"]), model=model)
                    yield item
        except httpx.TransportError as exc:
            self._raise_transport(exc, "POST", path, self.load_timeout)

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
        return parse_json(response.content, path)

    def _load_result(
        self, path: str, answer: Any, started: float, endpoint: Endpoint, model: str
    ) -> LoadResult:
        seconds = time.monotonic() - started
        return parse_load(path, answer, seconds=seconds, endpoint=endpoint, model=model)

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
        text, from_json = _status_error(response)
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


def _status_error(response: httpx.Response) -> tuple[str, bool]:
    """The text of an answer that is not 200 (Ollama's {"error": "..."}, else the start of
    the body), and whether it was Ollama's JSON error."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return error_text(body["error"]), True
    text = error_text(response.text) if response.content else ""
    return (text or response.reason_phrase or f"HTTP {response.status_code}"), False
