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
- What the main thread publishes besides the journal (the metrics, /ready and /live, and with
  the policy's ``gateway:`` its look at the fronted instance for the gateway's own process,
  after every pass and look and every few seconds besides) is :mod:`publish`'s. The keeper
  serves no client traffic itself.
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
import queue
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import structlog

from sentinel_keeper import __version__
from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.daemon import lifecycle
from sentinel_keeper.daemon.instance import InstanceLoop, Posted, WatchAsked
from sentinel_keeper.daemon.progress import Stuck
from sentinel_keeper.daemon.publish import Publisher
from sentinel_keeper.daemon.runtime import make_client
from sentinel_keeper.daemon.schedule import new_scheduler
from sentinel_keeper.errors import SentinelError
from sentinel_keeper.metrics.counts import ReloadResult
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import SETTLE_SECONDS, load_policy
from sentinel_keeper.policy.risks import file_risks
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.report.logs import LEVEL_NUMBERS
from sentinel_keeper.systemd.listenfds import address_of, take_listen_fds
from sentinel_keeper.systemd.notify import Notifier
from sentinel_keeper.systemd.signals import SignalFlags
from sentinel_keeper.values.timings import Timings

log = structlog.get_logger("sentinel_keeper.daemon")


class Daemon:
    """The main thread: a loop that sleeps until a signal, a pass's result or the next tick,
    and acts on each through the pure decisions of :mod:`lifecycle`."""

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
        self.publish = Publisher(state_dir, self._event)
        # sockets systemd passed: the gateway's socket unit once named this service
        self._passed = list(listen_sockets)
        # the main thread's
        self._started = time.monotonic()
        self._ready_sent = False
        self._rejected: str | None = None
        self._last_ping = float("-inf")
        self._last_extend = float("-inf")
        self._crash: BaseException | None = None

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
                    for loop, item in self._posted():
                        self._on_posted(loop, item)
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
        for event in close_passed_sockets(self._passed):
            self._event(event)
        self._passed = []
        self.publish.view(self.policy, self.loops)
        self.publish.metrics(self.policy, self.loops)
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
        self.publish.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- what the pass workers posted ---------------------------------------------------------

    def _posted(self) -> Iterator[tuple[InstanceLoop, Posted]]:
        while True:
            try:
                instance, item = self._results.get_nowait()
            except queue.Empty:
                return
            loop = self.loops.get(instance)
            if loop is not None:  # else an instance a reload removed: its last words are moot
                yield loop, item

    def _on_posted(self, loop: InstanceLoop, item: Posted) -> None:
        fronted = loop.name == self.policy.gateway_instance
        if isinstance(item, PassReport):
            for event in loop.took_report(item, time.monotonic()):
                self._event(event, loop)
            if fronted:
                self.publish.view(self.policy, self.loops)
            self.publish.metrics(self.policy, self.loops, textfile=True)
        elif isinstance(item, WatchAsked):
            for event in item.events:
                self._event(event, loop)
            if item.why is not None:
                log.debug("pass_requested", why=item.why, instance=loop.name)
            if loop.took_look(item) and fronted:
                self.publish.view(self.policy, self.loops)
        else:
            log.error(
                "pass_crashed",
                error=f"{type(item.error).__name__}: {item.error}",
                in_a_row=loop.crashes + 1,
                instance=loop.name,
                exc_info=item.error,
            )
            if loop.took_crash():
                self._crash = item.error

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
        self.publish.count_reload(
            ReloadResult.REJECTED
            if decision.policy is None
            else ReloadResult.UNCHANGED
            if decision.policy == self.policy
            else ReloadResult.APPLIED
        )
        if decision.policy is not None:
            self.policy = decision.policy
            self._apply_parts(decision.policy.split())
            self._file_risks()
            self.publish.view(self.policy, self.loops)
        self.publish.metrics(self.policy, self.loops)
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

    # -- periodic duties -----------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        period = self.notifier.watchdog_interval
        stuck: Stuck | None = None
        for loop in self.loops.values():
            for event in loop.check_stuck(watchdog=period is not None):
                self._event(event, loop)
            stuck = stuck or loop.stuck
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
        if self.publish.view_due(now):
            self.publish.view(self.policy, self.loops)
        if not self._ready_sent:
            self._readiness(now, extend=due.extend)
        self.notifier.status(self._status_text())
        self.publish.health(self.policy, self.loops, now)

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
        return lifecycle.status_text_all(
            [(loop.name, loop.status_view(now)) for loop in self.loops.values()],
            several=self.policy.instances is not None,
            rejected=self._rejected,
        )

    def _event(self, event: LogEvent, loop: InstanceLoop | None = None) -> None:
        fields = dict(event.fields)
        if loop is not None:
            fields["instance"] = loop.name
        log.log(LEVEL_NUMBERS[event.level], event.event, **fields)


def close_passed_sockets(sockets: Sequence[socket.socket]) -> list[LogEvent]:
    """The keeper serves no socket: one systemd passed (a socket unit still naming this
    service, from before the gateway had its own) is closed, and said once."""
    events = []
    for sock in sockets:
        events.append(
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
    return events


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
