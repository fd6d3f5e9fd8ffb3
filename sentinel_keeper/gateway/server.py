"""The gateway's HTTP server: aiohttp's server and client on their own asyncio loop, in one
daemon thread. The only module that imports aiohttp.

Every method and path is relayed to the fronted Ollama as it came: the request body streamed
(uploads to /api/blobs and /api/create included), the answer's status and headers kept (less
the hop-by-hop ones), its body passed on chunk by chunk as it arrives (NDJSON lines, the /v1
endpoints' server-sent events). Only the JSON body of a generate, chat or embed request
(:data:`rules.MODEL_PATHS`, at most ``gateway.max_body``) is read whole, handed to
:func:`rules.decide`, and forwarded as it says.

What is bounded, and what is not:

- A client has :data:`HEADER_TIMEOUT` seconds from connecting (or from the end of its previous
  answer, on a kept-alive connection) to send a request's headers: aiohttp's keep-alive
  timer closes the connection otherwise (slowloris). An idle connection costs a socket and a
  few kB, no thread: a thousand of them do not stop a request being served.
- A JSON body must arrive whole within :data:`BODY_TIMEOUT` seconds (else 408); a streamed
  upload must not stall for :data:`BODY_TIMEOUT` seconds between two chunks (else the request
  ends). Its total length is not bounded: a model upload takes as long as it takes.
- Connecting to Ollama: :data:`CONNECT_TIMEOUT`, then 502. Waiting for Ollama's answer is
  not bounded by the gateway: a load takes minutes, and the client's own timeout bounds it.
  A client that goes away cancels its request to Ollama (which aborts a load, as it would
  had the client talked to Ollama directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
from aiohttp import web

from sentinel_keeper.errors import GatewayError
from sentinel_keeper.gateway import rules
from sentinel_keeper.gateway.measure import (
    FinalChunk,
    RequestRecord,
    cause_of,
    cold_of,
    requested_num_ctx,
)
from sentinel_keeper.listen import ListenAddress
from sentinel_keeper.portholder import taken_by

HEADER_TIMEOUT = 60.0
BODY_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
QUEUE_POLL_SECONDS = 0.5  # a queued request asks the rules again this often
STOP_SECONDS = 1.0  # a stop waits this long for requests in flight, then cuts them
START_SECONDS = 10.0
UPSTREAM_CONNECTIONS = 512  # to Ollama at once, at most (Ollama queues the rest itself)
BACKLOG = 1024
# RFC 9110 7.6.1, and Expect (aiohttp answers 100-continue to the client itself)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# what aiohttp's client would add on its own: the client's (or none) go to Ollama instead
NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
KNOWN_ENDPOINTS = rules.MODEL_PATHS | {
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/v1/models",
}
CLIENT_GONE = 499  # the status of a request whose client left before its answer ended


class Hooks(Protocol):
    """What the server asks of its owner, from the server's thread (none may block)."""

    def current(self) -> rules.GatewayView: ...

    def record(self, record: RequestRecord) -> None: ...

    def refused(self, event: str, model: str | None, fields: dict[str, object]) -> None: ...


def endpoint_of(path: str) -> str:
    if path in KNOWN_ENDPOINTS:
        return path
    if path.startswith("/api/blobs/"):
        return "/api/blobs"
    return "other"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _BodyTooLarge(Exception):
    pass


class _ClientStalled(Exception):
    pass


class _Probe:
    """One request's measurements, filled in as it goes."""

    def __init__(self, started: float, view: rules.GatewayView) -> None:
        self.started = started
        self.view = view
        self.decision: rules.Decision | None = None
        self.raw = b""  # a model request's body, as it came
        self.forwarded: object = None  # the JSON body forwarded, when one was read
        self.status = CLIENT_GONE
        self.ttfb: float | None = None
        self.final = FinalChunk()
        self.scanned = False


class GatewayServer:
    """Listens on ``address`` (or serves on ``sock``, a socket already listening there)
    and relays to the URL of the view's policy; :meth:`start` raises GatewayError when it
    cannot listen."""

    def __init__(
        self,
        address: ListenAddress,
        hooks: Hooks,
        *,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        sock: socket.socket | None = None,
    ) -> None:
        self.address = address
        self._sock = sock  # a listening socket to serve on instead of binding (systemd's)
        self._hooks = hooks
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def port(self) -> int | None:
        return self._port

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sentinel-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_SECONDS):
            raise GatewayError(f"cannot listen on {self.address}: the server did not start")
        if self._error is not None:
            self._thread.join(timeout=STOP_SECONDS)
            raise GatewayError(f"cannot listen on {self.address} (gateway.listen): {self._error}")

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=STOP_SECONDS + 2.0)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._open())
            except OSError as exc:
                self._error = (exc.strerror or str(exc)) + taken_by(self.address.port, exc)
                return
            finally:
                self._ready.set()
            stopping = self._stopping
            if stopping is not None:
                loop.run_until_complete(stopping.wait())
            loop.run_until_complete(self._close())
        finally:
            loop.close()

    async def _open(self) -> None:
        self._stopping = asyncio.Event()
        server = web.Server(
            self._handle,
            handler_cancellation=True,  # a client that leaves cancels its request to Ollama
            keepalive_timeout=self._header_timeout,
            access_log=None,
        )
        runner = web.ServerRunner(server, shutdown_timeout=STOP_SECONDS, handle_signals=False)
        await runner.setup()
        host = "127.0.0.1" if self.address.host == "localhost" else self.address.host
        site: web.BaseSite
        if self._sock is not None:
            site = web.SockSite(runner, self._sock)  # closed with the server
        else:
            site = web.TCPSite(runner, host, self.address.port, backlog=BACKLOG, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            if self._sock is not None:
                self._sock.close()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1]) if runner.addresses else self.address.port
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
            auto_decompress=False,
            skip_auto_headers=NOT_ADDED,
        )

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- one request ---------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        probe = _Probe(loop.time(), self._hooks.current())
        try:
            if request.method == "POST" and request.path in rules.MODEL_PATHS:
                refused = await self._read_and_decide(request, probe)
                if refused is not None:
                    return self._answer(probe, refused)
                decision = probe.decision
                body: bytes | AsyncIterator[bytes] | None = (
                    probe.raw
                    if decision is None or decision.body is None
                    else json.dumps(decision.body, separators=(",", ":")).encode()
                )
            elif request.body_exists:
                body = self._stream(request)
            else:
                body = None
            return await self._relay(request, body, probe)
        finally:
            self._finish(request, probe, loop.time())

    async def _read_and_decide(
        self, request: web.BaseRequest, probe: _Probe
    ) -> web.Response | None:
        """Read a model request's JSON body and ask the rules (again, while they say queue);
        an answer of the gateway's own when the request goes no further."""
        gateway = probe.view.policy.gateway
        try:
            probe.raw = await self._read_whole(request, gateway.max_body)
        except _BodyTooLarge:
            return _error(
                413, f"request body larger than {gateway.max_body} bytes (gateway.max_body)"
            )
        except TimeoutError:
            return _error(408, f"the request body did not arrive within {self._body_timeout:g} s")
        try:
            parsed: object = json.loads(probe.raw)
        except ValueError:
            parsed = None  # forwarded as it came: Ollama's own 400 says what is wrong
        loop = asyncio.get_running_loop()
        view = probe.view
        decision = rules.decide(request.path, parsed, view, gateway, datetime.now(UTC))
        deadline = loop.time() + gateway.queue_timeout
        while decision.verdict is rules.Verdict.QUEUE and loop.time() < deadline:
            await asyncio.sleep(min(QUEUE_POLL_SECONDS, max(deadline - loop.time(), 0.0)))
            view = self._hooks.current()
            decision = rules.decide(
                request.path, parsed, view, view.policy.gateway, datetime.now(UTC)
            )
        probe.view, probe.decision = view, decision
        probe.forwarded = parsed if decision.body is None else decision.body
        if decision.verdict is rules.Verdict.FORWARD:
            return None
        message = decision.error or "refused by the gateway's rules"
        if decision.verdict is rules.Verdict.QUEUE:
            message += f"; waited {gateway.queue_timeout:g} s for memory (gateway.queue_timeout)"
        self._hooks.refused("gateway_rejected", decision.model, {"error": message})
        return _error(503, message)

    def _answer(self, probe: _Probe, response: web.Response) -> web.Response:
        probe.status = response.status
        probe.ttfb = 0.0
        return response

    async def _read_whole(self, request: web.BaseRequest, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise _BodyTooLarge
        data = bytearray()
        async with asyncio.timeout(self._body_timeout):
            while chunk := await request.content.readany():
                data += chunk
                if len(data) > limit:
                    raise _BodyTooLarge
        return bytes(data)

    async def _stream(self, request: web.BaseRequest) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._body_timeout):
                    chunk = await request.content.readany()
            except TimeoutError:
                raise _ClientStalled from None
            if not chunk:
                return
            yield chunk

    async def _relay(
        self,
        request: web.BaseRequest,
        body: bytes | AsyncIterator[bytes] | None,
        probe: _Probe,
    ) -> web.StreamResponse:
        session = self._session
        if session is None:
            raise RuntimeError("the gateway's client session is not open")
        base = probe.view.policy.ollama.url.rstrip("/")
        changed = probe.decision is not None and probe.decision.body is not None
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP
            and k.lower() != "host"  # Ollama answers 403 to a Host it does not serve
            and not (changed and k.lower() == "content-length")
        ]
        try:
            upstream = await session.request(
                request.method,
                base + request.raw_path,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except _ClientStalled:
            message = f"the request body stalled for {self._body_timeout:g} s"
            return self._answer(probe, _error(408, message))
        except (aiohttp.ClientError, OSError) as exc:
            model = probe.decision.model if probe.decision is not None else None
            reason = _reason(exc)
            self._hooks.refused(
                "gateway_upstream_unreachable", model, {"ollama": base, "error": reason}
            )
            message = f"sentinel-keeper gateway: ollama at {base} is unreachable: {reason}"
            return self._answer(probe, _error(502, message))
        try:
            return await self._pass_on(request, upstream, probe)
        finally:
            upstream.close()  # a request cut short (the client left) ends Ollama's too

    async def _pass_on(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, probe: _Probe
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        probe.status = upstream.status
        kind = upstream.headers.get("Content-Type", "")
        probe.scanned = "ndjson" in kind or kind.startswith("application/json")
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                if probe.ttfb is None:
                    probe.ttfb = loop.time() - probe.started
                if probe.scanned:
                    probe.final.feed(chunk)
                await response.write(chunk)
        except (aiohttp.ClientError, OSError):
            # Ollama went away mid-answer: cut the client's connection too, so that it
            # does not take a cut-off stream for a whole one
            probe.status = 502
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response

    def _finish(self, request: web.BaseRequest, probe: _Probe, ended: float) -> None:
        decision, view = probe.decision, probe.view
        model = decision.model if decision is not None else None
        cold = cold_of(probe.final.final()) if probe.scanned and probe.status == 200 else None
        cause = None
        if cold:
            num_ctx = requested_num_ctx(probe.forwarded, view.policy, view.observation)
            cause = cause_of(model, num_ctx, view.observation)
        record = RequestRecord(
            model=model,
            endpoint=endpoint_of(request.path),
            client=request.remote or "",
            user_agent=request.headers.get("User-Agent", ""),
            status=probe.status,
            ttfb=probe.ttfb,
            total=ended - probe.started,
            cold=cold,
            cause=cause,
            changes=decision.changes if decision is not None else (),
            reload_num_ctx=decision.reload_num_ctx if decision is not None else None,
        )
        with contextlib.suppress(Exception):  # the figures must never cost a request
            self._hooks.record(record)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error)
    return str(exc) or type(exc).__name__
