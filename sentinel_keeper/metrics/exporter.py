"""What the daemon publishes after each pass: the figures behind the endpoint (served from
their own threads, read from an immutable view swapped in whole), what /ready and /live
answer (the same: a frozen health swapped in at every tick of the main loop) and the textfile
(written atomically by the main thread). Imported only when the policy turns metrics on."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sentinel_keeper.act.atomicfile import atomic_write
from sentinel_keeper.decide.readiness import Answer, Health, Liveness, decide_live, decide_ready
from sentinel_keeper.errors import AtomicFileError, MetricsError
from sentinel_keeper.metrics.endpoint import MetricsServer, Probes
from sentinel_keeper.metrics.exposition import registry, render, wsgi_app
from sentinel_keeper.metrics.families import Family, MetricsView, families
from sentinel_keeper.policy.schema import MetricsSection
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.values.figures import GatewayFigures
from sentinel_keeper.values.listen import ListenAddress

TEXTFILE_MODE = 0o644  # node_exporter runs as another user


class Exporter:
    def __init__(self, view: MetricsView, *, monotonic: Callable[[], float] = time.monotonic):
        self._view = view
        self._monotonic = monotonic
        self._served = registry(self.families, process=True)
        self._written = registry(self.families, process=False)
        self._server: MetricsServer | None = None
        self._listen_error: str | None = None
        self._textfile_error: str | None = None
        self._gateway: Callable[[], GatewayFigures | None] | None = None
        self._health: tuple[Health, Liveness] | None = None  # None: not published yet
        self._requests: Counter[tuple[str, int]] = Counter()
        self._requests_lock = threading.Lock()

    def families(self) -> tuple[Family, ...]:
        view = self._view
        if self._gateway is not None:
            view = replace(view, gateway=self._gateway())  # its figures as of the scrape
        with self._requests_lock:
            view = replace(view, requests=dict(self._requests))
        return families(view, mono=self._monotonic())

    def publish_health(self, health: Health, live: Liveness) -> None:
        """What /ready and /live answer from now on (one reference swap)."""
        self._health = (health, live)

    def ready(self, instance: str | None, model: str | None) -> Answer:
        published = self._health
        if published is None:
            return Answer(503, {"ready": False, "why": "starting: no look at ollama yet"})
        return decide_ready(published[0], now=self._monotonic(), instance=instance, model=model)

    def live(self) -> Answer:
        published = self._health
        if published is None:
            return Answer(200, {"live": True, "why": "starting"})
        return decide_live(published[1], now=self._monotonic())

    def count(self, path: str, code: int) -> None:
        with self._requests_lock:
            self._requests[(path, code)] += 1

    def live_gateway(self, figures: Callable[[], GatewayFigures | None] | None) -> None:
        """Where the gateway's figures come from at each scrape (None: the view's own)."""
        self._gateway = figures

    def publish(self, view: MetricsView) -> None:
        """The figures from now on (one reference swap: a scrape sees the old or the new)."""
        self._view = view

    @property
    def listening(self) -> ListenAddress | None:
        return self._server.address if self._server is not None else None

    @property
    def port(self) -> int | None:
        return self._server.port if self._server is not None else None

    def apply(self, section: MetricsSection) -> list[LogEvent]:
        """Listen where ``section`` says (or stop); retried at every call while it fails.
        The events: the endpoint coming up, going away, failing (once per distinct error)."""
        wanted = section.address
        events: list[LogEvent] = []
        if self._server is not None and self._server.address != wanted:
            self._server.stop()
            events.append(
                LogEvent("metrics_stopped", "info", {"listen": str(self._server.address)})
            )
            self._server = None
        if wanted is None or self._server is not None:
            self._listen_error = None
            return events
        try:
            self._server = MetricsServer(
                wanted, wsgi_app(self._served), Probes(self.ready, self.live, self.count)
            )
        except MetricsError as exc:
            if str(exc) != self._listen_error:
                events.append(
                    LogEvent(
                        "metrics_unavailable",
                        "error",
                        {"listen": str(wanted), "error": str(exc), "retry": "at every pass"},
                    )
                )
            self._listen_error = str(exc)
            return events
        self._listen_error = None
        fields: dict[str, object] = {"listen": str(wanted), "url": wanted.url}
        if not wanted.loopback:
            events.append(
                LogEvent(
                    "metrics_remote",
                    "warning",
                    {
                        "listen": str(wanted),
                        "risk": "other hosts can read the figures (model names, memory, "
                        "Ollama's version) and /ready; allow_remote: true says that is meant",
                    },
                )
            )
        events.append(LogEvent("metrics_listening", "info", fields))
        return events

    def write_textfile(self, path: str | None) -> list[LogEvent]:
        """Write the figures to ``path`` (whole or not at all); the events: a failure once
        per distinct error, and its clearing."""
        if path is None:
            self._textfile_error = None
            return []
        try:
            atomic_write(Path(path), render(self._written).decode(), mode=TEXTFILE_MODE)
        except AtomicFileError as exc:
            error = str(exc)
            events = []
            if error != self._textfile_error:
                events.append(
                    LogEvent(
                        "metrics_textfile_unwritable", "warning", {"path": path, "error": error}
                    )
                )
            self._textfile_error = error
            return events
        if self._textfile_error is not None:
            self._textfile_error = None
            return [LogEvent("metrics_textfile_written", "info", {"path": path})]
        return []

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
