"""The gateway as its process (:mod:`.process`) drives it: started with the policy, fed the
keeper's last look at the instance it fronts whenever the keeper publishes one, given the
new policy at a reload, drained and stopped at the end. Holds what the server's thread reads
per request (the view: one reference, swapped whole) and what it reports (the figures, the
log events). It imports aiohttp.

Logged once, not per request: each change the gateway makes, per client address, User-Agent,
model, field and value sent (``gateway_changed``), and a request passed as it came that
reloads a pinned model with a larger num_ctx, per client, model and num_ctx
(``gateway_client_reload``); an answer the gateway makes itself instead of Ollama
(``gateway_upstream_unreachable``, ``gateway_rejected``, ``gateway_bad_request``) once a
minute at most per model, client address and value refused.
A ``listen`` changed by a reload moves the server: the old one stops accepting and drains in
the background (:meth:`Gateway.reap` ends it), the new one listens. A listening socket
handed in (``inherited``: systemd's, from sentinel-keeper-gateway.socket, or the previous
process's at an upgrade) is served on instead of binding while ``listen`` is its address;
otherwise the gateway binds its own. Either way :attr:`Gateway.listening` is the socket, so
that an upgrade can hand it to the next process.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sentinel_keeper.decide.readiness import InstanceHealth
from sentinel_keeper.errors import GatewayError
from sentinel_keeper.gateway.measure import RequestRecord, Tally
from sentinel_keeper.gateway.rules import GatewayView
from sentinel_keeper.gateway.server import HEADER_TIMEOUT, GatewayServer, bind_listening
from sentinel_keeper.observe.observation import Observation
from sentinel_keeper.observe.portholder import taken_by
from sentinel_keeper.policy import Policy
from sentinel_keeper.report.logevent import Level, LogEvent
from sentinel_keeper.systemd.listenfds import listens_at
from sentinel_keeper.values.figures import GatewayFigures
from sentinel_keeper.values.listen import ListenAddress

CHANGES_REMEMBERED = 10_000  # (client, user agent, model, field) already logged
REFUSED_EVERY = 60.0  # seconds between two log lines of the same refusal of one model


class Gateway:
    def __init__(
        self,
        part: Policy,
        emit: Callable[[LogEvent], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        header_timeout: float = HEADER_TIMEOUT,
        inherited: socket.socket | None = None,
        inherited_from: str = "passed",
    ) -> None:
        self.instance = part.instance
        self._inherited = inherited  # a listening socket handed in; its owner's to close
        self._inherited_from = inherited_from  # passed (systemd) or handed_over (upgrade)
        self.listening: socket.socket | None = None  # what the server serves on
        self._draining: list[GatewayServer] = []  # servers a move left, finishing requests
        self._view = GatewayView(part, None)
        self._emit = emit
        self._monotonic = monotonic
        self._header_timeout = header_timeout
        self.tally = Tally(part.instance)
        self._server: GatewayServer | None = None
        self._bind_error: str | None = None
        self._lock = threading.Lock()  # the log-once memories, written from the server thread
        self._logged: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self._refused: dict[tuple[str, str, str, str], float] = {}

    # -- the daemon's side ---------------------------------------------------------------

    def update(
        self,
        part: Policy,
        observation: Observation | None,
        *,
        health: InstanceHealth | None = None,
        degraded: str | None = None,
    ) -> None:
        """The view from now on, and listening where the policy says (a failed bind is
        retried at every call, logged once per distinct error)."""
        self._view = GatewayView(part, observation, health, degraded)
        wanted = part.gateway.address
        server = self._server
        if server is not None:
            server.drain = part.gateway.drain
        if server is not None and server.address != wanted:
            self._close("listen changed", wait=False)
            server = None
        if server is None and wanted is not None:
            self._listen(wanted, part.gateway.drain)

    def stop(self, why: str = "stopping") -> None:
        """Stop accepting, drain, stop (blocks up to ``gateway.drain``)."""
        self._close(why, wait=True)
        for old in self._draining:
            old.wait_stopped(old.drain + 10.0)
        self.reap()

    def begin_stop(self, why: str = "stopping") -> None:
        """Stop accepting and start draining, without waiting (:meth:`wait_drained`)."""
        self._close(why, wait=False)

    def wait_drained(self, timeout: float) -> bool:
        """Whether every server that stopped accepting is done, within ``timeout`` s each."""
        return all(old.wait_stopped(timeout) for old in self._draining)

    @property
    def draining_servers(self) -> int:
        return len(self._draining)

    def reap(self) -> None:
        """Say how the drains that ended went (servers a move or a stop left)."""
        for old in [s for s in self._draining if s.wait_stopped(0.0)]:
            self._draining.remove(old)
            self._log(
                "gateway_drained",
                "info" if not old.cut else "warning",
                {"listen": str(old.address), "cut": old.cut or 0, "drain": f"{old.drain:g}s"},
            )

    @property
    def draining(self) -> int:
        """Requests in flight on servers that no longer accept."""
        return sum(s.in_flight for s in self._draining)

    def forget_socket(self) -> None:
        """The handed-in socket is closed (the policy no longer listens there): bind from
        now on. A server already on it keeps its own copy until it moves or stops."""
        self._inherited = None

    @property
    def port(self) -> int | None:
        return self._server.port if self._server is not None else None

    def figures(self) -> GatewayFigures:
        return self.tally.figures(self._monotonic())

    def _listen(self, address: ListenAddress, drain: float) -> None:
        inherited = self._inherited
        source = self._inherited_from
        try:
            if inherited is not None and listens_at(inherited, address):
                listening = inherited
            else:
                listening = bind_listening(address)
                source = "bound"
            # O_NONBLOCK belongs to the open socket, which every process holding it shares
            # (systemd; at an upgrade the previous process, still accepting): dup() of a
            # socket in blocking mode clears it for all of them, and the previous process's
            # event loop then blocks in accept() with a client's connection taken, unread
            listening.setblocking(False)
            server = GatewayServer(
                address,
                self,
                header_timeout=self._header_timeout,
                sock=listening.dup(),  # the server closes its copy when it stops accepting
                drain=drain,
            )
            try:
                server.start()
            finally:
                if listening is not inherited and server.port is None:
                    listening.close()
        except (GatewayError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = GatewayError(
                    f"cannot listen on {address} (gateway.listen): {exc.strerror or exc}"
                    + taken_by(address.port, exc)
                )
            if str(exc) != self._bind_error:
                self._log(
                    "gateway_unavailable",
                    "error",
                    {"listen": str(address), "error": str(exc), "retry": "every few seconds"},
                )
            self._bind_error = str(exc)
            return
        self._bind_error = None
        self._server = server
        self.listening = listening
        self.tally.up = True
        self._log(
            "gateway_listening",
            "info",
            {
                "listen": f"{address.connect_host}:{server.port}",
                "ollama": self._view.policy.ollama.url,
                # passed: systemd's (sentinel-keeper-gateway.socket); handed_over: the
                # previous process's (an upgrade); bound: its own
                "socket": source,
            },
        )

    def _close(self, why: str, *, wait: bool) -> None:
        server, self._server = self._server, None
        listening, self.listening = self.listening, None
        self.tally.up = False
        if server is None:
            return
        busy = server.in_flight
        server.begin_stop()
        if listening is not None and listening is not self._inherited:
            listening.close()  # the server's copy closes as it stops accepting
        self._log(
            "gateway_stopped",
            "info",
            {"listen": str(server.address), "why": why, "in_flight": busy},
        )
        self._draining.append(server)
        if wait:
            server.wait_stopped(server.drain + 10.0)
            self.reap()

    def _log(self, event: str, level: Level, fields: dict[str, object]) -> None:
        self._emit(LogEvent(event, level, {**fields, "instance": self.instance}))

    # -- the server's side (its thread) ----------------------------------------------------

    def current(self) -> GatewayView:
        return self._view

    def record(self, record: RequestRecord) -> None:
        self.tally.add(record, self._monotonic())
        who = {"client": record.client, "user_agent": record.user_agent, "model": record.model}
        for change in record.changes:
            if self._first(record, f"{change.field} {_shown(change.before)!r}"):
                self._log(
                    "gateway_changed",
                    "info",
                    {
                        **who,
                        "field": change.field,
                        "before": _shown(change.before),
                        "after": _shown(change.after),
                        "why": change.why,
                    },
                )
        ctx = record.reload_num_ctx
        if ctx is not None and self._first(record, f"reload {ctx}"):
            self._log(
                "gateway_client_reload",
                "info",
                {
                    **who,
                    "num_ctx": ctx,
                    "why": "a larger context than the pinned model's: passed as it is, and "
                    "Ollama reloads the model for it",
                },
            )

    def _first(self, record: RequestRecord, what: str) -> bool:
        """Whether this client (address and User-Agent) has not been logged doing ``what``
        to this model yet; remembers that it has now."""
        key = (record.client, record.user_agent, record.model or "", what)
        with self._lock:
            if key in self._logged:
                return False
            self._logged[key] = None
            if len(self._logged) > CHANGES_REMEMBERED:
                self._logged.popitem(last=False)
        return True

    def refused(
        self, event: str, model: str | None, fields: dict[str, object], level: Level = "warning"
    ) -> None:
        now = self._monotonic()
        key = (event, model or "", str(fields.get("client", "")), repr(fields.get("value")))
        with self._lock:
            last = self._refused.get(key)
            if last is not None and now - last < REFUSED_EVERY:
                return
            if len(self._refused) > CHANGES_REMEMBERED:
                self._refused.clear()
            self._refused[key] = now
        self._log(event, level, {"model": model, **fields})


def _shown(value: object) -> object:
    """A change's value in the log: "none" for a field not sent or removed."""
    return "none" if value is None else value
