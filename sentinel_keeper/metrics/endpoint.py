"""The keeper's endpoint: a small read-only HTTP server (the standard library's WSGI server)
on the policy's ``metrics.listen``, serving prometheus-client's WSGI app at /metrics and, for
load balancers, /ready and /live (:mod:`sentinel_keeper.decide.readiness`, answered from the last
look: no call to Ollama per request); and the scrape `status` makes of it. The only
listening socket the daemon opens besides the gateway's.

Read-only: GET and HEAD, nothing else (405). It runs in its own threads, so it answers while
a pass waits minutes for a load. A few connections at a time, each with a socket timeout, so
a client that connects and sends nothing cannot use up the service's threads (TasksMax).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from sentinel_keeper.decide.readiness import Answer
from sentinel_keeper.errors import MetricsError
from sentinel_keeper.observe.portholder import taken_by
from sentinel_keeper.values.listen import ListenAddress

MAX_CONNECTIONS = 4  # served at once; others wait in the listen backlog
SOCKET_TIMEOUT = 5.0  # a request must arrive, and its answer be taken, within this
MAX_PAGE_BYTES = 4 * 1024**2  # what `status` reads of a page at most
INDEX = (
    b"sentinel-keeper: Prometheus metrics at /metrics; readiness at /ready"
    b" (?instance=NAME, ?model=NAME); liveness at /live\n"
)
PATHS = ("/metrics", "/ready", "/live", "/")  # what the request counter names; others: "other"
QUERY_KEYS = {"/ready": ("instance", "model"), "/live": ()}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Probes:
    """What /ready and /live answer (from the daemon's last look, at the time of the
    request), and where each request is counted (its path, or "other", and status code)."""

    ready: Callable[[str | None, str | None], Answer]  # (instance, model)
    live: Callable[[], Answer]
    count: Callable[[str, int], None]


def _probe(path: str, query: str, probes: Probes) -> tuple[str, list[tuple[str, str]], bytes]:
    try:
        params = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        params = {}
    unknown = sorted(set(params) - set(QUERY_KEYS[path]))
    repeated = sorted(k for k, v in params.items() if len(v) > 1)
    if unknown or repeated:
        what = f"unknown parameter {unknown[0]!r}" if unknown else f"{repeated[0]!r} twice"
        answer = Answer(
            400, {"why": f"{what}; {path} takes {', '.join(QUERY_KEYS[path]) or 'none'}"}
        )
    elif path == "/ready":
        answer = probes.ready(
            params["instance"][0] if "instance" in params else None,
            params["model"][0] if "model" in params else None,
        )
    else:
        answer = probes.live()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
    body = (json.dumps(answer.body, separators=(", ", ": ")) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    return f"{answer.status} {reason.get(answer.status, '')}".rstrip(), headers, body


def read_only(metrics: WsgiApp, probes: Probes | None = None) -> WsgiApp:
    """``metrics`` at /metrics for GET and HEAD; /ready and /live from ``probes`` (404
    without); a short index at /; 404 elsewhere; 405 for any other method. Every answer says
    its Content-Length (a HEAD's too); every request is counted in ``probes``."""

    def answer(
        status: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        return status, [("Content-Type", "text/plain; charset=utf-8"), *headers], body

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        if method not in ("GET", "HEAD"):
            status, headers, body = answer(
                "405 Method Not Allowed",
                [("Allow", "GET, HEAD")],
                f"{method} is not allowed: the metrics endpoint is read-only\n".encode(),
            )
        elif path == "/metrics":
            started: list[tuple[str, list[tuple[str, str]]]] = []

            def keep(status: str, headers: list[tuple[str, str]]) -> None:
                started.append((status, headers))

            body = b"".join(metrics({**environ, "REQUEST_METHOD": "GET"}, keep))
            status, headers = started[0]
        elif path in QUERY_KEYS and probes is not None:
            status, headers, body = _probe(path, environ.get("QUERY_STRING", ""), probes)
        elif path == "/":
            status, headers, body = answer("200 OK", [], INDEX)
        else:
            status, headers, body = answer(
                "404 Not Found", [], b"not found: the metrics are at /metrics\n"
            )
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        if probes is not None:
            probes.count(path if path in PATHS else "other", int(status.split(" ", 1)[0]))
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]

    return app


class _Quiet(WSGIRequestHandler):
    timeout = SOCKET_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not journal events."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: ListenAddress) -> None:
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        host = "127.0.0.1" if address.host == "localhost" else address.host
        super().__init__((host, address.port), _Quiet)

    def process_request(self, request: Any, client_address: Any) -> None:
        # every slot held: wait (later connections queue in the listen backlog) until a
        # handler is done, which its socket timeout bounds for a client that sends nothing
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that hangs up or resets the connection is its own business: nothing on
        stderr (the journal); anything else is a bug, reported as socketserver does."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """Serves ``metrics`` (the WSGI app of :func:`.exposition.wsgi_app`) and ``probes`` on
    ``address``, read-only, until :meth:`stop`."""

    def __init__(
        self, address: ListenAddress, metrics: WsgiApp, probes: Probes | None = None
    ) -> None:
        self.address = address
        try:
            self._server = _Server(address)
        except OSError as exc:
            raise MetricsError(
                f"cannot listen on {address} (metrics.listen): {exc.strerror or exc}"
                + taken_by(address.port, exc)
            ) from None
        self._server.set_app(read_only(metrics, probes))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="sentinel-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the kernel's pick for port 0)."""
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)


def scrape(address: ListenAddress, *, timeout: float = 2.0) -> str:
    """The page at ``address``'s /metrics. MetricsError when nothing answers there."""
    url = address.url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (http only)
            page: bytes = answer.read(MAX_PAGE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise MetricsError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        with contextlib.suppress(AttributeError):
            reason = reason.strerror or reason
        raise MetricsError(f"{url}: {reason}") from None
    if len(page) > MAX_PAGE_BYTES:
        raise MetricsError(f"{url}: the page is larger than {MAX_PAGE_BYTES} bytes")
    return page.decode("utf-8", errors="replace")
