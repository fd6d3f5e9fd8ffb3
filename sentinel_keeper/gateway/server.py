"""The gateway's HTTP server: aiohttp's server and client on their own asyncio loop, in one
daemon thread. The only module that imports aiohttp.

Every method and path is relayed to the fronted Ollama as it came: the request body streamed
(uploads to /api/blobs and /api/create included), the answer's status and headers kept (less
the hop-by-hop ones), its body passed on chunk by chunk as it arrives (NDJSON lines, the /v1
endpoints' server-sent events). Only the JSON body of a generate, chat or embed request
(:data:`rules.MODEL_PATHS`, at most ``gateway.max_body``) is read whole, as Ollama's handler
will read it (:mod:`.gojson`), handed to :func:`rules.decide`, and forwarded as it says: the
bytes as they came when nothing changes, else the body as read, in JSON, with the changes.

Requests are taken as Ollama's Go server takes them, not more loosely:

- Only origin-form targets (``/path``) are relayed, to the policy's Ollama URL with the
  target appended as it came; CONNECT is 405, any other form 400, and the connection closes.
  A path Go's ServeMux would redirect (``//api/generate``, ``/x/../api/generate``) gets the
  same 301 from the gateway, and the path the rules go by is the one Go routes on
  (:mod:`.target`: ``/api/%67enerate`` is /api/generate).
- A body of a model request that Ollama would refuse, or that the gateway cannot be sure it
  reads as Ollama does, is answered 400 ``{"error": ...}`` and never forwarded.
- ``Expect: 100-continue`` is answered ``100 Continue`` when the body is first read, as Go
  does; another Expect is 417. Headers may take :data:`MAX_HEADER_BYTES` (Go's 1 MiB); a
  request without an HTTP version (HTTP/0.9) is 400 in HTTP/1.1. No ``Server`` header.
- A malformed request is 400 and one short ``gateway_bad_request`` line at info, a minute
  apart at most per client address; never a traceback.

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
import logging
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import hdrs, web, web_protocol
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from yarl import URL

from sentinel_keeper.decide.readiness import Answer, InstanceHealth
from sentinel_keeper.errors import GatewayError, OllamaError, SentinelError
from sentinel_keeper.gateway import gojson, ready, rules, target
from sentinel_keeper.gateway.measure import (
    FinalChunk,
    RequestRecord,
    cause_of,
    cold_of,
)
from sentinel_keeper.observe.ollama_wire import parse_json, parse_ps
from sentinel_keeper.observe.portholder import taken_by
from sentinel_keeper.report.logevent import Level
from sentinel_keeper.values.listen import ListenAddress

HEADER_TIMEOUT = 60.0
BODY_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
# JSON bodies held at once, from their first byte read until the last one sent to Ollama
# (each up to max_body, with its decoded and rewritten forms): the rest wait to be read
BODIES_AT_ONCE = 8
SEND_SLICE = 1024**2  # a held body goes to Ollama in slices of this many bytes
LOOK_TIMEOUT = 2.0  # the gateway's own look at /api/ps, for /sentinel-keeper/ready
QUEUE_POLL_SECONDS = 0.5  # a queued request asks the rules again this often
DRAIN_SECONDS = 1.0  # by default a stop waits this long for requests in flight, then cuts
CUT_SECONDS = 1.0  # what is left after the drain is cancelled within this
DRAIN_POLL = 0.05
# While draining, every answer says Connection: close, so a kept-alive client moves to the next
# process; idle connections are closed once no request has come for this long (or the drain
# ends). Closing an idle connection always races a client that sends on it at that instant
# (HTTP/1.1 has no way around it: Go's and nginx's shutdowns share it); the quiet narrows it.
DRAIN_QUIET = 1.0
START_SECONDS = 10.0
UPSTREAM_CONNECTIONS = 512  # to Ollama at once, at most (Ollama queues the rest itself)
BACKLOG = 1024
# Go's http.Server: DefaultMaxHeaderBytes (1 MiB) for the request line and headers, and the
# 4096 bytes of slack its reader allows; aiohttp's limits are per line and per count, so each
# is set to what Go would let through in total
MAX_HEADER_BYTES = (1 << 20) + 4096
MAX_HEADERS = MAX_HEADER_BYTES // 4  # "a:\r\n": the shortest header line
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HEAD_TOO_LARGE = (  # as Go's server answers it
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"431 Request Header Fields Too Large"
)
# the fields of Ollama's request structs the gateway reads, by endpoint
READ_FIELDS = {
    "/api/generate": ("model", "prompt", "keep_alive", "options"),
    "/api/chat": ("model", "messages", "keep_alive", "options"),
    "/api/embed": ("model", "keep_alive", "options"),
    "/api/embeddings": ("model", "keep_alive", "options"),
}
REWRITTEN = ("keep_alive", "options")  # the fields the rules may change
# RFC 9110 7.6.1, and Expect (the gateway answers 100-continue itself, as Go does)
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


def bind_listening(address: ListenAddress) -> socket.socket:
    """A listening TCP socket at ``address`` (localhost: 127.0.0.1), for a server to serve
    on and an upgrade to hand over. Raises OSError."""
    host = "127.0.0.1" if address.host == "localhost" else address.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, address.port), family=family, backlog=BACKLOG)


class Hooks(Protocol):
    """What the server asks of its owner, from the server's thread (none may block)."""

    def current(self) -> rules.GatewayView: ...

    def record(self, record: RequestRecord) -> None: ...

    def refused(
        self, event: str, model: str | None, fields: dict[str, object], level: Level = "warning"
    ) -> None: ...


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


class _Request(web.BaseRequest):
    """A request as the gateway's server makes it: one sent with no HTTP version (HTTP/0.9)
    is answered in HTTP/1.1, and no answer gains aiohttp's ``Server`` header."""

    http09 = False
    continued = False  # 100 Continue sent (or not to be)

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if response.headers.get(hdrs.SERVER) == SERVER_SOFTWARE:
            del response.headers[hdrs.SERVER]
        await super()._prepare_hook(response)


class _Connection(web.RequestHandler):
    """aiohttp's connection, with Go's bound on a request's head as a whole: aiohttp bounds
    each line and the number of headers, not their total, so the bytes that arrive while no
    body is being read (a request's line and headers, being parsed) are counted, and past
    :data:`MAX_HEADER_BYTES` the connection gets Go's 431 and is closed."""

    _head = 0
    _payload: Any = None  # the body of the last request parsed (None: none yet)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        counting = self._payload is None or self._payload.is_eof()
        super().data_received(data)
        if self._request_count != count:  # a request's head was parsed whole
            self._head = 0
            self._payload = self._messages[-1][1] if self._messages else None
            return
        if not counting:
            return
        self._head += len(data)
        if self._head > MAX_HEADER_BYTES + len(data) and self.transport is not None:
            log: Any = self.logger
            if isinstance(log, _ServerLog):
                peer = self.peername
                client = peer[0] if isinstance(peer, tuple) else peer
                log.malformed(client, 431, f"request head past {MAX_HEADER_BYTES} bytes")
            self.transport.write(HEAD_TOO_LARGE)
            self.force_close()


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, less its tracebacks for requests it could not parse (bad
    request lines, targets, headers, limits): those go to ``malformed`` as one line."""

    def __init__(self, malformed: Any) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._malformed = malformed

    def malformed(self, client: object, status: int, reason: str) -> None:
        self._malformed(str(client or ""), status, reason)

    def _parse_error(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        exc = kwargs.get("exc_info")
        if not isinstance(exc, HttpProcessingError):
            return False
        reason = str(exc.message or type(exc).__name__).splitlines()[0][:200]
        self.malformed(args[1] if len(args) > 1 else "", exc.code or 400, reason)
        return True

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._parse_error((msg, *args), kwargs):
            super().exception(msg, *args, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._parse_error((msg, *args), kwargs):
            super().debug(msg, *args, **kwargs)


class _ClientStalled(Exception):
    pass


class _Probe:
    """One request's measurements, filled in as it goes."""

    def __init__(self, started: float, view: rules.GatewayView) -> None:
        self.started = started
        self.view = view
        self.decision: rules.Decision | None = None
        self.raw = b""  # a model request's body, as it came
        self.read: gojson.Request | None = None  # that body, as Ollama reads it
        self.forwarded: object = None  # the JSON body forwarded, when one was read
        self.path = ""  # the path Ollama routes the request by
        self.url: URL | None = None  # where it goes: Ollama's URL and the target as it came
        self.status = CLIENT_GONE
        self.ttfb: float | None = None
        self.final = FinalChunk()
        self.scanned = False
        self.own = False  # answered by the gateway itself (/sentinel-keeper/...): not counted
        self.slot: asyncio.Semaphore | None = None  # one of the BODIES_AT_ONCE, while held


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
        drain: float = DRAIN_SECONDS,
    ) -> None:
        self.address = address
        self._sock = sock  # a listening socket to serve on instead of binding (closed with it)
        self.drain = drain  # at a stop: seconds requests in flight may take to finish
        self.in_flight = 0  # requests being answered (the loop's thread writes it)
        self.cut: int | None = None  # after a stop: requests still running when it cut them
        self._draining = False
        self._last_activity = 0.0  # the loop's time of the last request's start or end
        # connections that have brought a request: one that has not yet is a client that
        # connected to send one (the drain waits for it); one that has is merely kept alive
        self._answered: weakref.WeakSet[object] = weakref.WeakSet()
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
        self._bodies: asyncio.Semaphore | None = None  # the loop's: BODIES_AT_ONCE
        # the last own look at /api/ps: (loop time, Unix time, models listed, error)
        self._look: tuple[float, float, frozenset[str] | None, str | None] | None = None

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
            self._thread.join(timeout=CUT_SECONDS)
            raise GatewayError(f"cannot listen on {self.address} (gateway.listen): {self._error}")

    def stop(self) -> None:
        """Stop accepting at once, let the requests in flight finish for :attr:`drain`
        seconds, then cut what is left (counted in :attr:`cut`). Blocks until done."""
        self.begin_stop()
        self.wait_stopped(self.drain + CUT_SECONDS + 5.0)

    def _fresh(self, server: web.Server) -> bool:
        """Whether a connection is open that has not brought its first request yet."""
        return any(handler not in self._answered for handler in server.connections)

    def begin_stop(self) -> None:
        """The start of :meth:`stop`, without waiting."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)

    def wait_stopped(self, timeout: float) -> bool:
        """Whether the server's thread ended within ``timeout`` seconds."""
        if self._thread is None:
            return True
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

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
        self._bodies = asyncio.Semaphore(BODIES_AT_ONCE)
        server = _Server(
            self._handle,
            request_factory=self._make_request,
            handler_cancellation=True,  # a client that leaves cancels its request to Ollama
            keepalive_timeout=self._header_timeout,
            access_log=None,
            logger=cast(logging.Logger, _ServerLog(self._malformed)),
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADERS,
            # a body goes on as it came, compressed or not: Ollama's server does not undo a
            # Content-Encoding (only /v1/responses reads zstd itself), so neither do the rules
            auto_decompress=False,
        )
        runner = web.ServerRunner(server, shutdown_timeout=CUT_SECONDS, handle_signals=False)
        await runner.setup()
        host = "127.0.0.1" if self.address.host == "localhost" else self.address.host
        site: web.BaseSite
        if self._sock is not None:
            # asyncio calls listen() again on a socket it is given: with aiohttp's default
            # (128) that would shrink the queue systemd's socket unit (Backlog=1024) or the
            # previous process made, for every process sharing it
            site = web.SockSite(runner, self._sock, backlog=BACKLOG)  # closed with the server
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
        runner = self._runner
        if runner is not None:
            # the drain: no new connection (the listening socket closes; systemd's copy, or
            # the next process's, queues them), idle kept-alive ones closed, the requests in
            # flight given until the deadline; then aiohttp cancels what is left
            self._draining = True
            for site in list(runner.sites):
                await site.stop()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.drain
            server = runner.server
            while loop.time() < deadline and (
                self.in_flight
                or loop.time() - self._last_activity < DRAIN_QUIET
                # accepted just before the stop (asyncio accepts a burst at a time), its
                # request not read yet: closing it now would answer nothing at all
                or (server is not None and self._fresh(server))
            ):
                await asyncio.sleep(min(DRAIN_POLL, max(deadline - loop.time(), 0.0)))
            self.cut = self.in_flight
            await runner.cleanup()  # idle connections closed, what is left cancelled
        if self._session is not None:
            await self._session.close()

    # -- one request ---------------------------------------------------------------------

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: aiohttp.StreamReader,
        protocol: web.RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        http09 = message.version < (1, 0)
        if http09 or message is web_protocol.ERROR:
            # Go answers a request it cannot parse in HTTP/1.1, and never in HTTP/0.9
            message = message._replace(version=HttpVersion11, should_close=True)
        made = _Request(message, payload, protocol, writer, task, asyncio.get_running_loop())
        made.http09 = http09
        return made

    def _malformed(self, client: str, status: int, reason: str) -> None:
        """A request aiohttp could not parse (answered by aiohttp): one line here."""
        with contextlib.suppress(Exception):  # a log line must never cost the server
            self._hooks.refused(
                "gateway_bad_request",
                None,
                {"client": client, "status": status, "error": reason},
                "info",
            )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        probe = _Probe(loop.time(), self._hooks.current())
        self._answered.add(request.protocol)
        self.in_flight += 1
        self._last_activity = loop.time()
        try:
            refused = self._refused_outright(request, probe)
            if refused is not None:
                return self._closing(refused)
            if probe.path in ready.OWN_PATHS:
                return self._closing(await self._own(request, probe))
            if request.method == "POST" and probe.path in rules.MODEL_PATHS:
                refused = await self._read_and_decide(request, probe)
                if refused is not None:
                    return self._closing(self._answer(probe, refused))
                data = self._forwarded_body(probe)
                length = len(data)
                probe.raw, probe.read = b"", None  # the body lives on only in what is sent
                body: bytes | AsyncIterator[bytes] | None = self._sending(probe, data)
                del data
            elif request.body_exists:
                body, length = self._stream(request), None
            else:
                body, length = None, None
            return self._closing(await self._relay(request, body, probe, length=length))
        finally:
            self._free(probe)
            self.in_flight -= 1
            self._last_activity = loop.time()
            self._finish(request, probe, loop.time())

    def _refused_outright(self, request: web.BaseRequest, probe: _Probe) -> web.Response | None:
        """The gateway's own answer to a request it does not relay as such: no HTTP version,
        a target that is not a path, a path Go redirects, an Expect Go refuses."""
        where = target.route(request.method, request.raw_path)
        if isinstance(request, _Request) and request.http09:
            where = target.Refused(400, "malformed HTTP request: no HTTP version")
        if isinstance(where, target.Redirect):
            response = web.Response(status=301, headers={hdrs.LOCATION: where.location})
            if request.method == "GET":  # as Go's http.Redirect writes it
                response.content_type = "text/html"
                response.text = f'<a href="{where.location}">Moved Permanently</a>.\n\n'
            if request.body_exists:
                response.force_close()  # its body is not read: Go does not reuse the connection
            return self._answer(probe, response)
        if isinstance(where, target.Routed):
            probe.path = where.path
            probe.url = _upstream(probe.view.policy.ollama.url, where.target)
            expect = request.headers.get(hdrs.EXPECT)
            if probe.url is None:
                shown = repr(where.target[:80])
                where = target.Refused(400, f"request target {shown} cannot be relayed as it came")
            elif expect is None or _continues(expect):
                return None
            else:
                where = target.Refused(417, f"Expect: {expect[:80]} is not understood")
        response = _error(where.status, where.error)
        response.force_close()
        self._hooks.refused(
            "gateway_bad_request",
            None,
            {"client": request.remote or "", "status": where.status, "error": where.error},
            "info",
        )
        return self._answer(probe, response)

    async def _sending(self, probe: _Probe, data: bytes) -> AsyncIterator[bytes]:
        """A held body on its way to Ollama; its slot is free once the last byte is out."""
        try:
            for start in range(0, len(data), SEND_SLICE):
                yield data[start : start + SEND_SLICE]
        finally:
            self._free(probe)

    def _free(self, probe: _Probe) -> None:
        slot, probe.slot = probe.slot, None
        if slot is not None:
            slot.release()

    def _forwarded_body(self, probe: _Probe) -> bytes:
        """The bytes as they came when the rules change nothing and any JSON reader reads
        them as Go does; else the body as read, with the rules' values of the fields they
        may change."""
        decision, read = probe.decision, probe.read
        if read is None or not isinstance(read.body, gojson.Pairs):
            return probe.raw
        unchanged = decision is None or decision.body is None
        if unchanged and read.plain:
            return probe.raw
        values = (
            decision.body
            if decision is not None and decision.body is not None
            else _for_rules(read) or {}
        )
        fields = READ_FIELDS.get(probe.path, ("model",))
        # every field the gateway read and the rules may see is written once, by its exact
        # name, with the value read (or the rules' value): one reading left, Go's
        changed = {k: values[k] for k in REWRITTEN if k in values}
        for name, value in (("model", read.model), ("prompt", read.prompt)):
            if value is not None and name in fields:
                changed.setdefault(name, value)
        # a field set to null, or only by null, is one Ollama takes as not set: left out
        unset = [k for k in (*REWRITTEN, "model", "prompt") if k in fields and k not in changed]
        return gojson.rewrite(read.body, changed, fields, unset)

    async def _read_and_decide(
        self, request: web.BaseRequest, probe: _Probe
    ) -> web.Response | None:
        """Read a model request's JSON body as Ollama will and ask the rules (again, while
        they say queue); an answer of the gateway's own when the request goes no further."""
        gateway = probe.view.policy.gateway
        bodies = self._bodies
        if bodies is None:
            raise RuntimeError("the gateway's server is not open")
        try:
            # the memory bound (the unit's MemoryMax= counts on it): at most BODIES_AT_ONCE
            # bodies of up to max_body held at once, from here until sent (_sending); the
            # others wait here, unread
            await bodies.acquire()
            probe.slot = bodies
            probe.raw = await self._read_whole(request, gateway.max_body)
            probe.read = gojson.read_request(probe.raw, READ_FIELDS.get(probe.path, ("model",)))
        except _BodyTooLarge:
            return _error(
                413, f"request body larger than {gateway.max_body} bytes (gateway.max_body)"
            )
        except TimeoutError:
            return _error(408, f"the request body did not arrive within {self._body_timeout:g} s")
        except gojson.BodyError as exc:
            # what Ollama would refuse too, or what the gateway cannot be sure it reads as
            # Ollama does: never forwarded
            self._hooks.refused(
                "gateway_bad_request",
                None,
                {"client": request.remote or "", "status": 400, "error": str(exc)},
                "info",
            )
            return _error(400, str(exc))
        parsed = _for_rules(probe.read)
        loop = asyncio.get_running_loop()
        view = probe.view
        decision = rules.decide(probe.path, parsed, view, gateway, datetime.now(UTC))
        deadline = loop.time() + gateway.queue_timeout
        while decision.verdict is rules.Verdict.QUEUE and loop.time() < deadline:
            await asyncio.sleep(min(QUEUE_POLL_SECONDS, max(deadline - loop.time(), 0.0)))
            view = self._hooks.current()
            decision = rules.decide(
                probe.path, parsed, view, view.policy.gateway, datetime.now(UTC)
            )
        probe.view, probe.decision = view, decision
        probe.forwarded = parsed if decision.body is None else decision.body
        if decision.verdict is rules.Verdict.FORWARD:
            return None
        message = decision.error or "refused by the gateway's rules"
        if decision.verdict is rules.Verdict.QUEUE:
            message += f"; waited {gateway.queue_timeout:g} s for memory (gateway.queue_timeout)"
        fields: dict[str, object] = {"error": message}
        if decision.status != 503:  # a refused unload: said for each client and value
            fields["client"] = request.remote or ""
            fields["user_agent"] = request.headers.get("User-Agent", "")
            fields["value"] = parsed.get("keep_alive") if isinstance(parsed, dict) else None
        self._hooks.refused("gateway_rejected", decision.model, fields)
        return _error(decision.status, message)

    async def _continue(self, request: web.BaseRequest) -> None:
        """Go's server: ``100 Continue`` when the handler first reads a body the client
        said it waits to send (HTTP/1.1, ``Expect: 100-continue``, a body not said empty)."""
        if not isinstance(request, _Request) or request.continued:
            return
        request.continued = True
        expect = request.headers.get(hdrs.EXPECT)
        if (
            expect is not None
            and _continues(expect)
            and request.version >= HttpVersion11
            and request.body_exists
            and request.content_length != 0
        ):
            await request.writer.write(CONTINUE)
            cast(Any, request.writer).output_size = 0  # the answer proper has not started

    def _closing(self, response: web.StreamResponse) -> web.StreamResponse:
        """While draining, an answer not sent yet closes its connection after it."""
        if self._draining and not response.prepared:
            response.force_close()
        return response

    def _answer(self, probe: _Probe, response: web.Response) -> web.Response:
        probe.status = response.status
        probe.ttfb = 0.0
        return response

    async def _read_whole(self, request: web.BaseRequest, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise _BodyTooLarge
        data = bytearray()
        await self._continue(request)
        async with asyncio.timeout(self._body_timeout):
            while chunk := await request.content.readany():
                data += chunk
                if len(data) > limit:
                    raise _BodyTooLarge
        return bytes(data)

    async def _stream(self, request: web.BaseRequest) -> AsyncIterator[bytes]:
        await self._continue(request)
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
        *,
        length: int | None = None,
    ) -> web.StreamResponse:
        """Relay to Ollama; ``length``: the Content-Length of a body the gateway read whole
        (the client's own goes with a streamed one)."""
        session = self._session
        if session is None:
            raise RuntimeError("the gateway's client session is not open")
        base = probe.view.policy.ollama.url.rstrip("/")
        url = probe.url
        if url is None:
            raise RuntimeError("a request relayed without its upstream URL")
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP
            and k.lower() != "host"  # Ollama answers 403 to a Host it does not serve
            and not (length is not None and k.lower() == "content-length")
        ]
        if length is not None:
            headers.append((hdrs.CONTENT_LENGTH, str(length)))
        try:
            upstream = await session.request(
                request.method,
                url,
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
        self._closing(response)
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

    async def _own(self, request: web.BaseRequest, probe: _Probe) -> web.Response:
        """``/sentinel-keeper/ready`` and ``/live``: the gateway's own answers (:mod:`.ready`)."""
        probe.own = True
        view = probe.view
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            response = _error(405, f"{request.method} is not allowed here: GET or HEAD")
            response.headers[hdrs.ALLOW] = "GET, HEAD"
            return self._answer(probe, response)
        unknown = sorted(set(request.query) - {"instance", "model"})
        if probe.path == ready.LIVE:
            answer = ready.live_answer(degraded=view.degraded)
        elif unknown:
            answer = Answer(400, {"error": f"unknown parameter {unknown[0]!r}: instance, model"})
        else:
            health, source = view.health, "keeper"
            if health is None:
                health, source = await self._own_look(view), "gateway"
            answer = ready.ready_answer(
                view.policy,
                health,
                source=source,
                degraded=view.degraded,
                now=time.time(),
                instance=request.query.get("instance"),
                model=request.query.get("model"),
            )
        return self._answer(probe, web.json_response(dict(answer.body), status=answer.status))

    async def _own_look(self, view: rules.GatewayView) -> InstanceHealth:
        """The fronted instance from the gateway's own look at /api/ps (one a second at most,
        shared by every /ready asked meanwhile)."""
        loop = asyncio.get_running_loop()
        cached = self._look
        if cached is None or loop.time() - cached[0] >= ready.LOOK_EVERY:
            listed: frozenset[str] | None = None
            error: str | None = None
            session = self._session
            base = view.policy.ollama.url.rstrip("/")
            try:
                if session is None:
                    raise RuntimeError("the gateway's client session is not open")
                async with session.get(
                    base + "/api/ps", timeout=aiohttp.ClientTimeout(total=LOOK_TIMEOUT)
                ) as answer:
                    data = await answer.read()
                    if answer.status != 200:
                        raise OllamaError(f"GET /api/ps: {answer.status}")
                listed = frozenset(m.name for m in parse_ps(parse_json(data, "/api/ps")))
            except (aiohttp.ClientError, OSError, TimeoutError, SentinelError, RuntimeError) as exc:
                error = _reason(exc) if isinstance(exc, aiohttp.ClientError | OSError) else str(exc)
            cached = (loop.time(), time.time(), listed, error)
            self._look = cached
        _, at, listed, error = cached
        return ready.own_health(
            view.policy, listed, error=error, looked_at=at, now=datetime.now(UTC)
        )

    def _finish(self, request: web.BaseRequest, probe: _Probe, ended: float) -> None:
        if probe.own:
            return  # a balancer's checks are not client traffic
        decision, view = probe.decision, probe.view
        model = decision.model if decision is not None else None
        cold = cold_of(probe.final.final()) if probe.scanned and probe.status == 200 else None
        cause = None
        if cold:
            body = probe.forwarded
            options = body.get("options") if isinstance(body, Mapping) else None
            num_ctx = rules.requested_num_ctx(options, view.policy, view.observation)
            cause = cause_of(model, num_ctx, view.observation)
        record = RequestRecord(
            model=model,
            endpoint=endpoint_of(probe.path or request.path),
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


def _upstream(base: str, raw_target: str) -> URL | None:
    """Ollama's URL with the request's target appended as it came, never parsed again, so
    that what Ollama routes is what the gateway routed; None when it would not go as it
    came (a ``#``, which a URL takes for a fragment)."""
    base = base.rstrip("/")
    url = URL(base + raw_target, encoded=True)
    if url.raw_path_qs != URL(base, encoded=True).raw_path.rstrip("/") + raw_target:
        return None
    return url


def _continues(expect: str) -> bool:
    return any(t.strip().lower() == "100-continue" for t in expect.split(","))


def _for_rules(read: gojson.Request) -> dict[str, Any] | None:
    """What Ollama's handler decodes, for :func:`rules.decide`: the fields set, numbers as
    Go reads them (an integer literal kept an int for the logs)."""
    if read.body is None:
        return None
    out = read.as_mapping()
    if isinstance(read.keep_alive, gojson.Number):
        literal = str(read.keep_alive)
        try:
            out["keep_alive"] = int(literal)
        except ValueError:
            out["keep_alive"] = gojson.go_float(read.keep_alive)
    return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error)
    return str(exc) or type(exc).__name__
