"""What the keeper publishes besides the journal, from the main thread: its metrics (the
endpoint, the textfile, what /ready and /live answer) and, with a gateway, its look at the
fronted instance for the gateway's own process (:mod:`sentinel_keeper.gateway.exchange`),
whose figures it reads back for the metrics."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from sentinel_keeper import __version__
from sentinel_keeper.daemon import health
from sentinel_keeper.daemon.instance import InstanceLoop
from sentinel_keeper.decide.readiness import Health, InstanceHealth
from sentinel_keeper.gateway.exchange import (
    View,
    encode_view,
    figures_path,
    live_figures,
    replace_file,
    view_path,
)
from sentinel_keeper.metrics.counts import ReloadResult, add_reload
from sentinel_keeper.metrics.families import InstanceView, MetricsView
from sentinel_keeper.policy import Policy
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.values.figures import GatewayFigures

if TYPE_CHECKING:
    from sentinel_keeper.metrics.exporter import Exporter

VIEW_EVERY = 5.0  # seconds: the gateway's view is written at least this often

Loops = Mapping[str, InstanceLoop]


def instance_health(loop: InstanceLoop, now: float) -> InstanceHealth:
    """/ready's input for one instance, from the main thread's record of it."""
    return health.instance_health(
        loop.name,
        loop.last,
        report_at=loop.last_at,
        seen=loop.seen,
        down_since=loop.outage_since,
        loading=loop.progress.loading(),
        now=now,
    )


class Publisher:
    """The metrics and the gateway's view. Nothing is imported for the metrics until the
    policy turns them on; a failed write of the view is logged once per distinct error and
    tried again at the next chance."""

    def __init__(self, state_dir: str | None, event: Callable[[LogEvent], None]) -> None:
        self._state_dir = state_dir
        self._event = event
        self._exporter: Exporter | None = None
        # counted always, so that turning the metrics on by a reload shows the whole life
        self._reloads: dict[str, int] = {}  # policy reloads by result
        self._started_unix = time.time()
        self._fronted: str | None = None  # the instance the gateway fronts, as last told
        self._view_written = float("-inf")  # monotonic
        self._view_error: str | None = None

    def count_reload(self, result: ReloadResult) -> None:
        self._reloads = add_reload(self._reloads, result)

    # -- the gateway's view -------------------------------------------------------------

    def view_due(self, now: float) -> bool:
        """The gateway tells a live keeper by the file's age: due every few seconds."""
        return now - self._view_written >= VIEW_EVERY

    def view(self, policy: Policy, loops: Loops) -> None:
        """Write the keeper's look at the instance the gateway fronts (nothing without a
        gateway or a state directory)."""
        name = policy.gateway_instance
        loop = loops.get(name) if name is not None else None
        if loop is None or self._state_dir is None:
            return
        mono, unix = time.monotonic(), time.time()
        view = View(
            instance=loop.name,
            written=unix,
            observation=loop.view,
            # /ready's input, its monotonic times made Unix ones for another process
            health=health.shifted(instance_health(loop, mono), unix - mono),
        )
        path = view_path(self._state_dir)
        try:
            replace_file(path, encode_view(view), mode=0o600)
        except OSError as exc:
            error = f"{path}: {exc.strerror or exc}"
            if error != self._view_error:
                self._event(LogEvent("gateway_view_failed", "error", {"error": error}))
            self._view_error = error
            return
        self._view_error = None
        self._view_written = time.monotonic()

    def _gateway_figures(self) -> GatewayFigures | None:
        """The gateway process's figures as it last wrote them (None: none for the instance
        it fronts)."""
        if self._fronted is None or self._state_dir is None:
            return None
        try:
            text = figures_path(self._state_dir).read_text(encoding="utf-8")
        except OSError:
            text = None
        found = live_figures(text, instance=self._fronted, now=time.time())
        return found.figures if found is not None else None

    # -- the metrics --------------------------------------------------------------------

    def metrics(self, policy: Policy, loops: Loops, *, textfile: bool = False) -> None:
        """Publish the figures: the endpoint (started, moved, stopped or retried as the
        policy says) and, after a pass, the textfile."""
        self._fronted = policy.gateway_instance
        section = policy.metrics
        if self._exporter is None and not section.enabled:
            return  # prometheus_client is not even imported
        view = MetricsView(
            instances=tuple(
                InstanceView(loop.name, loop.policy, loop.counts, loop.last)
                for loop in loops.values()
            ),
            reloads=self._reloads,
            version=__version__,
            python=platform.python_version(),
            started_unix=self._started_unix,
            gateway=self._gateway_figures(),
        )
        if self._exporter is None:
            from sentinel_keeper.metrics.exporter import Exporter  # noqa: PLC0415 (lazy)

            self._exporter = Exporter(view)
        self._exporter.publish(view)
        self._exporter.live_gateway(self._gateway_figures if self._fronted is not None else None)
        events = self._exporter.apply(section)
        if textfile:
            events += self._exporter.write_textfile(section.textfile)
        for event in events:
            self._event(event)

    def health(self, policy: Policy, loops: Loops, now: float) -> None:
        """What the endpoint's /ready and /live answer until the next tick."""
        if self._exporter is None:
            return
        self._exporter.publish_health(
            Health(
                policy.ready,
                tuple(instance_health(loop, now) for loop in loops.values()),
                several=policy.instances is not None,
            ),
            health.liveness(now, [(loop.name, loop.stuck) for loop in loops.values()]),
        )

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.close()
