"""`sentinel-keeper run`: the long-running daemon under systemd.

Threads and who owns what:

- The main thread owns signals, sd_notify, the schedules and the logging of pass results. It
  sleeps in ``select()`` on a self-pipe that signal handlers (through
  ``signal.set_wakeup_fd``) and the pass workers write to, and wakes at least every tick to
  ping the watchdog, extend the start timeout, keep STATUS current and notice a stuck pass.
  What it does is decided by the pure functions of :mod:`lifecycle`.
- Each Ollama instance of the policy has its own :class:`InstanceLoop` (:mod:`instance`):
  one pass worker thread (:mod:`worker`) that runs that instance's passes, one at a time, and
  the watch between them (:mod:`engine`), with its own client, GPU probe and schedule. Its
  APScheduler triggers (:mod:`schedule`: the interval with its jitter, the watch period, a
  probe while Ollama does not answer, the window edges) only ask its worker for work; so do a
  reload and the watch. Instances never wait for each other.
- With the policy's ``gateway:``, the keeper publishes its look at the fronted instance for
  the gateway's own process (``sentinel-keeper gateway``, :mod:`gateway.exchange`): after
  every pass and every look between passes, and every few seconds besides, so the gateway
  can tell a live keeper from a dead one. It reads the gateway's figures back for its
  metrics. The keeper serves no client traffic itself.
- A :class:`Progress` record per instance, updated through the tracked client, tells the main
  thread whether a pass is within its own time limits. When one is not (a call stuck past its
  timeout), the watchdog pings stop and systemd restarts the service.

Only the CLI chooses exit codes: :func:`run_daemon` returns 0 after a clean stop, raises
PolicyError for an invalid policy at start, and re-raises a pass's unexpected exception after
several passes in a row crashed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from sentinel_keeper import __version__
from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.daemon import health, lifecycle
from sentinel_keeper.daemon.instance import InstanceLoop, Posted, WatchAsked
from sentinel_keeper.daemon.progress import Stuck
from sentinel_keeper.daemon.runtime import make_client
from sentinel_keeper.daemon.schedule import new_scheduler
from sentinel_keeper.decide.readiness import Health, InstanceHealth
from sentinel_keeper.errors import SentinelError
from sentinel_keeper.gateway.exchange import (
    View,
    encode_view,
    figures_path,
    live_figures,
    replace_file,
    view_path,
)
from sentinel_keeper.metrics.counts import ReloadResult, add_reload, count_pass
from sentinel_keeper.metrics.families import InstanceView, MetricsView
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import SETTLE_SECONDS, load_policy
from sentinel_keeper.policy.risks import file_risks
from sentinel_keeper.report.events import advance, pass_events
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.report.logs import LEVEL_NUMBERS
from sentinel_keeper.systemd.listenfds import address_of, take_listen_fds
from sentinel_keeper.systemd.notify import Notifier
from sentinel_keeper.systemd.signals import SignalFlags
from sentinel_keeper.values.figures import GatewayFigures
from sentinel_keeper.values.timings import Timings

if TYPE_CHECKING:
    from sentinel_keeper.metrics.exporter import Exporter

CRASHES_BEFORE_EXIT = 3
VIEW_EVERY = 5.0  # seconds: the gateway's view is written at least this often

log = structlog.get_logger("sentinel_keeper.daemon")


class Daemon:
    def __init__(
        self,
        policy_path: str,
        policy: Policy,
        *,
        state_dir: str | None,
        notifier: Notifier | None = None,
        make_ollama: Callable[[Policy], OllamaClient] = make_client,
        make_gpu: Callable[[Policy], GpuProbe] | None = None,
        timings: Timings | None = None,
        listen_sockets: Sequence[socket.socket] = (),
    ) -> None:
        self.policy_path = policy_path
        self.policy = policy  # the policy in force, as the main thread knows it
        self.notifier = notifier if notifier is not None else Notifier()
        self.timings = timings if timings is not None else Timings()
        self._state_dir = state_dir
        self._make_ollama = make_ollama
        self._make_gpu = make_gpu or (lambda p: GpuProbe(p.vram.gpu_selection))
        self._results: queue.SimpleQueue[tuple[str, Posted]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._signals = SignalFlags(self._wake_w.fileno())
        self._scheduler = new_scheduler()  # the instances' schedules share it
        # one loop of passes per Ollama instance, in the policy's order
        self.loops: dict[str, InstanceLoop] = {
            part.instance: self._loop(part) for part in policy.split()
        }
        # the main thread's
        self._started = time.monotonic()
        self._ready_sent = False
        self._rejected: str | None = None
        self._last_ping = float("-inf")
        self._last_extend = float("-inf")
        self._crash: BaseException | None = None
        # what the metrics count (always, so that turning them on by a reload shows the
        # daemon's whole life) and publish (only when the policy turns them on)
        self._reloads: dict[str, int] = {}  # policy reloads by result
        self._started_unix = time.time()
        self._exporter: Exporter | None = None
        # sockets systemd passed: the gateway's socket unit once named this service
        self._passed = list(listen_sockets)
        self._view_written = float("-inf")  # monotonic
        self._view_error: str | None = None

    def _loop(self, part: Policy) -> InstanceLoop:
        return InstanceLoop(
            part,
            timings=self.timings,
            state_dir=self._state_dir,
            make_ollama=self._make_ollama,
            make_gpu=self._make_gpu,
            post=self._post,
            scheduler=self._scheduler,
        )

    def _post(self, instance: str, item: Posted) -> None:
        """From a pass worker: a result for the main thread, which it wakes."""
        self._results.put((instance, item))
        with contextlib.suppress(OSError):  # full (the loop wakes anyway) or closed (stopping)
            self._wake_w.send(b"r")

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> int:
        flags = self._signals
        with flags:
            self._start()
            try:
                while flags.stop is None and self._crash is None:
                    self._wait(
                        lifecycle.tick_seconds(self.timings, self.notifier.watchdog_interval)
                    )
                    if flags.stop is not None:
                        break
                    if flags.take_hup():
                        self._reload()
                    self._drain()
                    self._tick()
            finally:
                self._shutdown()
        if self._crash is not None:
            raise self._crash
        return 0

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([self._wake_r], [], [], timeout)
            if readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    while self._wake_r.recv(4096):
                        pass

    def _start(self) -> None:
        watchdog = self.notifier.watchdog_interval
        self._event(lifecycle.starting_event(self.policy, self.policy_path, __version__, watchdog))
        if self.policy.instances is not None:
            for loop in self.loops.values():
                self._event(lifecycle.instance_event("instance_started", loop.policy))
        self._file_risks()
        self._close_passed_sockets()
        self._publish_view()
        self._metrics()
        self.notifier.status(self._status_text())
        for loop in self.loops.values():
            loop.start()
        self._scheduler.start()

    def _shutdown(self) -> None:
        signum = self._signals.stop
        name = signal.Signals(signum).name if signum is not None else "crash"
        running = any(loop.progress.running for loop in self.loops.values())
        self.notifier.stopping("stopping" + (" (abandoning a load)" if running else ""))
        for loop in self.loops.values():
            loop.stop()
        self._scheduler.shutdown(wait=False)
        self._event(LogEvent("stopping", "info", {"signal": name, "pass_running": running}))
        if self._exporter is not None:
            self._exporter.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- results from the pass workers --------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                instance, item = self._results.get_nowait()
            except queue.Empty:
                return
            loop = self.loops.get(instance)
            if loop is None:
                continue  # an instance a reload removed: its last words are moot
            if isinstance(item, PassReport):
                loop.crashes = 0
                self._on_report(loop, item)
            elif isinstance(item, WatchAsked):
                if item.seen is not None:
                    loop.seen = item.seen  # /ready answers from the newest look
                for event in item.events:
                    self._event(event, loop)
                if item.why is not None:
                    log.debug("pass_requested", why=item.why, instance=loop.name)
                seen = item.seen
                if (
                    seen is not None
                    and seen.listed is not None
                    and seen.when is not None
                    and loop.view is not None
                ):
                    loop.view = replace(loop.view, at=seen.when, loaded=seen.loaded)
                    if loop.name == self.policy.gateway_instance:
                        self._publish_view()
            else:
                self._on_crash(loop, item.error)

    def _on_crash(self, loop: InstanceLoop, exc: BaseException) -> None:
        loop.crashes += 1
        log.error(
            "pass_crashed",
            error=f"{type(exc).__name__}: {exc}",
            in_a_row=loop.crashes,
            instance=loop.name,
            exc_info=exc,
        )
        if loop.crashes >= CRASHES_BEFORE_EXIT:
            self._crash = exc

    def _on_report(self, loop: InstanceLoop, report: PassReport) -> None:
        for event in pass_events(loop.history, report):
            self._event(event, loop)
        loop.counts = count_pass(
            loop.counts, loop.history, report, loop.policy, mono=time.monotonic()
        )
        loop.history = advance(loop.history, report)
        loop.last = report
        loop.view = report.latest
        loop.last_at = time.monotonic()
        if loop.name == self.policy.gateway_instance:
            self._publish_view()
        self._metrics(textfile=True)
        if report.reachable:
            loop.outage_since = None
        elif loop.outage_since is None:
            loop.outage_since = time.monotonic() - report.seconds
        probe = lifecycle.probe(
            report, loop.probe_delay, interval=loop.policy.interval, timings=self.timings
        )
        loop.probe_delay = probe.next_delay
        if probe.after is not None:
            loop.schedule.probe_in(probe.after)

    # -- reload --------------------------------------------------------------------------------

    def _reload(self) -> None:
        announce = self._ready_sent  # no RELOADING during the start: systemd is not ready yet
        if announce:
            self.notifier.reloading(f"reloading {self.policy_path}")
        policy: Policy | None = None
        error: BaseException | None = None
        try:
            policy = load_policy(self.policy_path, settle=SETTLE_SECONDS, empty_ok=False)
        except (SentinelError, OSError) as exc:
            error = exc
        decision = lifecycle.reload_decision(self.policy_path, self.policy, policy, error)
        for event in decision.events:
            self._event(event)
        self._rejected = decision.rejected
        result = (
            ReloadResult.REJECTED
            if decision.policy is None
            else ReloadResult.UNCHANGED
            if decision.policy == self.policy
            else ReloadResult.APPLIED
        )
        self._reloads = add_reload(self._reloads, result)
        if decision.policy is not None:
            self.policy = decision.policy
            self._apply_parts(decision.policy.split())
            self._file_risks()
            self._publish_view()
        self._metrics()
        if announce:
            self.notifier.ready(self._status_text())

    def _apply_parts(self, parts: tuple[Policy, ...]) -> None:
        """Each instance's loop takes its new part; an instance the policy no longer has
        stops, a new one starts (READY, if not sent yet, then waits for it too)."""
        wanted = {part.instance: part for part in parts}
        for name in [n for n in self.loops if n not in wanted]:
            gone = self.loops.pop(name)
            gone.stop()
            self._event(lifecycle.instance_event("instance_removed", gone.policy))
        loops: dict[str, InstanceLoop] = {}
        for name, part in wanted.items():
            loop = self.loops.get(name)
            if loop is None:
                loop = self._loop(part)
                self._event(lifecycle.instance_event("instance_added", part))
                loop.start()
            else:
                loop.replace(part)
            loops[name] = loop
        self.loops = loops

    def _file_risks(self) -> None:
        risks = [risk.message for risk in file_risks(self.policy_path)]
        for event in lifecycle.risk_events(self.policy_path, risks):
            self._event(event)

    # -- the gateway's view -----------------------------------------------------------------

    def _close_passed_sockets(self) -> None:
        """The keeper serves no socket: one systemd passed (a socket unit still naming this
        service, from before the gateway had its own) is logged and closed, once."""
        for sock in self._passed:
            self._event(
                LogEvent(
                    "listen_socket_unused",
                    "warning",
                    {
                        "address": str(address_of(sock)),
                        "why": "systemd passed it to the keeper; the gateway serves in its own "
                        "process (sentinel-keeper-gateway.service); closed",
                    },
                )
            )
            sock.close()
        self._passed = []

    def _publish_view(self) -> None:
        """Write the keeper's look at the instance the gateway fronts for the gateway's
        process (nothing without a gateway or a state directory). A failed write is logged
        once per distinct error and tried again at the next chance."""
        name = self.policy.gateway_instance
        loop = self.loops.get(name) if name is not None else None
        if loop is None or self._state_dir is None:
            return
        mono, unix = time.monotonic(), time.time()
        view = View(
            instance=loop.name,
            written=unix,
            observation=loop.view,
            # /ready's input, its monotonic times made Unix ones for another process
            health=health.shifted(self._instance_health(loop, mono), unix - mono),
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
        name = self.policy.gateway_instance
        if name is None or self._state_dir is None:
            return None
        try:
            text = figures_path(self._state_dir).read_text(encoding="utf-8")
        except OSError:
            text = None
        found = live_figures(text, instance=name, now=time.time())
        return found.figures if found is not None else None

    # -- metrics -------------------------------------------------------------------------------

    def _metrics(self, *, textfile: bool = False) -> None:
        """Publish the figures: the endpoint (started, moved, stopped or retried as the
        policy says) and, after a pass, the textfile."""
        section = self.policy.metrics
        if self._exporter is None and not section.enabled:
            return  # prometheus_client is not even imported
        view = MetricsView(
            instances=tuple(
                InstanceView(loop.name, loop.policy, loop.counts, loop.last)
                for loop in self.loops.values()
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
        self._exporter.live_gateway(
            self._gateway_figures if self.policy.gateway_instance is not None else None
        )
        events = self._exporter.apply(section)
        if textfile:
            events += self._exporter.write_textfile(section.textfile)
        for event in events:
            self._event(event)

    # -- periodic duties -----------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        period = self.notifier.watchdog_interval
        stuck: Stuck | None = None
        for loop in self.loops.values():
            now_stuck = loop.progress.stuck(self.timings.idle_limit(loop.policy.interval))
            for event in lifecycle.stuck_events(loop.stuck, now_stuck, watchdog=period is not None):
                self._event(event, loop)
            loop.stuck = now_stuck
            stuck = stuck or now_stuck
        due = lifecycle.duties(
            now,
            last_ping=self._last_ping,
            last_extend=self._last_extend,
            watchdog_period=period,
            stuck=stuck,  # one instance's stuck pass stops the pings: systemd restarts us
            ready_sent=self._ready_sent,
            timings=self.timings,
        )
        if due.ping:
            self.notifier.watchdog()
            self._last_ping = now
        if now - self._view_written >= VIEW_EVERY:
            self._publish_view()  # the gateway tells a live keeper by the file's age
        if not self._ready_sent:
            self._readiness(now, extend=due.extend)
        self.notifier.status(self._status_text())
        self._publish_health(now)

    def _publish_health(self, now: float) -> None:
        """What the endpoint's /ready and /live answer until the next tick."""
        if self._exporter is None:
            return
        instances = tuple(self._instance_health(loop, now) for loop in self.loops.values())
        self._exporter.publish_health(
            Health(self.policy.ready, instances, several=self.policy.instances is not None),
            health.liveness(now, [(loop.name, loop.stuck) for loop in self.loops.values()]),
        )

    @staticmethod
    def _instance_health(loop: InstanceLoop, now: float) -> InstanceHealth:
        return health.instance_health(
            loop.name,
            loop.last,
            report_at=loop.last_at,
            seen=loop.seen,
            down_since=loop.outage_since,
            loading=loop.progress.loading(),
            now=now,
        )

    def _readiness(self, now: float, *, extend: bool) -> None:
        """READY=1 once every instance is ready (its pinned models resident, or hopeless, or
        startup_timeout passed); until then the start timeout is extended."""
        elapsed = now - self._started
        for loop in self.loops.values():
            if loop.ready is None:
                loop.ready = lifecycle.readiness(loop.policy, loop.last, elapsed=elapsed)
        ready = lifecycle.all_ready(
            [(loop.name, loop.ready) for loop in self.loops.values()],
            several=self.policy.instances is not None,
        )
        if ready is not None:
            self._ready_sent = True
            self.notifier.ready(self._status_text())
            self._event(
                lifecycle.ready_event(
                    ready,
                    elapsed=elapsed,
                    reports=[(loop.name, loop.last) for loop in self.loops.values()],
                )
            )
        elif extend:
            self.notifier.extend_timeout(self.timings.extend_by)
            self._last_extend = now

    def _status_text(self) -> str:
        now = time.monotonic()
        views = [
            (
                loop.name,
                lifecycle.StatusView(
                    url=loop.policy.ollama.url,
                    report=loop.last,
                    outage_seconds=None if loop.outage_since is None else now - loop.outage_since,
                    stuck=loop.stuck,
                    loading=loop.progress.loading(),
                ),
            )
            for loop in self.loops.values()
        ]
        return lifecycle.status_text_all(
            views, several=self.policy.instances is not None, rejected=self._rejected
        )

    def _event(self, event: LogEvent, loop: InstanceLoop | None = None) -> None:
        fields = dict(event.fields)
        if loop is not None:
            fields["instance"] = loop.name
        log.log(LEVEL_NUMBERS[event.level], event.event, **fields)


def run_daemon(
    policy_path: str,
    *,
    state_dir: str | None,
    env: Mapping[str, str] | None = None,
    timings: Timings | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop. Raises PolicyError (invalid policy at
    start) and, after repeated pass crashes, the crash's exception."""
    sockets, problems = take_listen_fds()  # first: LISTEN_* must not reach a child
    for problem in problems:
        log.warning("listen_socket_unused", why=problem)
    try:
        policy = load_policy(policy_path, settle=SETTLE_SECONDS)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    notifier = Notifier(os.environ if env is None else env)
    daemon = Daemon(
        policy_path,
        policy,
        state_dir=state_dir,
        notifier=notifier,
        timings=timings,
        listen_sockets=sockets,
    )
    return daemon.run()
