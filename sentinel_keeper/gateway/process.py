"""`sentinel-keeper gateway`: the gateway's own process (sentinel-keeper-gateway.service), the
data path between clients and Ollama. It shares nothing with the keeper but files
(:mod:`.exchange`), so the keeper's restarts, crashes, upgrades and broken policies never
touch a request.

Fail-open, in steps:

- The rules that need only the policy (a pinned model's keep_alive and options) come from
  the policy this process read itself. A policy that turns invalid keeps the last good one
  (a reload is refused, as the keeper refuses it); at a start with an invalid policy the last
  good copy kept in the state directory rules (``gateway_degraded why=policy_last_good``);
  with none at all, every request is forwarded as it came to ``gateway.upstream``'s default
  on the socket systemd passed (``why=policy_none``).
- The rules that need the keeper's look at Ollama (foreign models, a cold request's cause)
  forward unchanged while the keeper's view is missing, older than ``gateway.view_max_age``
  or unreadable (``why=view_missing``, ``view_stale``, ``view_unreadable``), and return when
  a good one arrives (``gateway_restored``). Each is said once, at warning, and exported.

Signals (the handlers only set flags; the loop acts):

- SIGTERM, SIGINT: stop accepting (systemd's socket, or the kernel's backlog of it, keeps
  the connections that arrive for the next process), let the requests in flight finish for
  ``gateway.drain``, cut what is left and say how many (``gateway_drained cut=N``), exit 0.
- SIGHUP: read the policy again (a refused one changes nothing).
- SIGUSR2 (``systemctl reload sentinel-keeper-gateway``; install.sh's upgrade): start the code
  on disk as a new process, hand it the listening socket, and once it says it serves
  (``MAINPID=`` and ``READY=1`` to systemd, a byte on a pipe to this one) drain and exit. A
  new process that does not come up within :data:`UPGRADE_SECONDS` is killed and this one
  goes on serving.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from sentinel_keeper import __version__
from sentinel_keeper.errors import SentinelError
from sentinel_keeper.gateway.exchange import (
    FiguresFile,
    View,
    ViewState,
    decode_view,
    encode_figures,
    figures_path,
    judge,
    policy_copy_path,
    replace_file,
    view_path,
)
from sentinel_keeper.gateway.runner import Gateway
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import SETTLE_SECONDS, load_policy
from sentinel_keeper.policy.schema import DEFAULT_UPSTREAM
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.report.logs import LEVEL_NUMBERS
from sentinel_keeper.systemd.listenfds import address_of, listens_at, take_listen_fds
from sentinel_keeper.systemd.notify import Notifier
from sentinel_keeper.systemd.signals import SignalFlags
from sentinel_keeper.values.figures import Degraded
from sentinel_keeper.values.listen import ListenAddress

log = structlog.get_logger("sentinel_keeper.gateway")

TICK_SECONDS = 1.0  # the loop looks at the view, the figures and the watchdog this often
FIGURES_EVERY = 2.0  # seconds between two writes of the figures file
UPGRADE_SECONDS = 120.0  # a new process has this long to say it serves (slow, emulated hosts)
EXTEND_SECONDS = 30.0  # while draining at a stop, systemd's stop timeout is pushed this far
# the upgrade protocol: the listening sockets' fds and the pipe the new process writes to
HANDED_FDS = "SENTINEL_GATEWAY_FDS"
READY_FD = "SENTINEL_GATEWAY_READY_FD"


@dataclass(frozen=True)
class Rules:
    """The policy the gateway runs with and where it came from."""

    whole: Policy
    part: Policy | None  # the fronted instance's part; None: the policy turns the gateway off
    source: str  # "file", "last_good" (the copy in the state directory), "none"


def gateway_part(policy: Policy) -> Policy | None:
    name = policy.gateway_instance
    return next((p for p in policy.split() if p.instance == name), None)


def pass_through(passed: ListenAddress | None) -> Policy:
    """The rules with no valid policy ever seen: forward everything as it came, from the
    socket systemd passed (the socket unit holds Ollama's usual address under takeover) to
    ``gateway.upstream``'s default, where takeover moved Ollama. Without a passed socket
    the gateway is off: it never takes an address on its own guess."""
    if passed is None:
        return Policy.model_validate({"gateway": {"listen": None}})
    return Policy.model_validate(
        {
            "ollama": {"url": DEFAULT_UPSTREAM},
            "gateway": {
                "listen": str(passed),
                "allow_remote": True,  # systemd's socket: the administrator chose it
                "pin_keep_alive": False,
                "align_options": False,
            },
        }
    )


def take_handed_sockets(
    environ: MutableMapping[str, str],
) -> tuple[list[socket.socket], int | None]:
    """The listening sockets and the ready pipe a previous gateway process handed over
    (:data:`HANDED_FDS`, :data:`READY_FD`), removed from the environment."""
    fds, ready = environ.pop(HANDED_FDS, None), environ.pop(READY_FD, None)
    sockets = []
    for raw in (fds or "").split(","):
        if raw.strip().isdigit():
            with contextlib.suppress(OSError):
                fd = int(raw)
                os.set_inheritable(fd, False)
                sockets.append(socket.socket(fileno=fd))
    ready_fd = int(ready) if ready is not None and ready.strip().isdigit() else None
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.set_inheritable(ready_fd, False)
    return sockets, ready_fd


class GatewayProcess:
    def __init__(
        self,
        policy_path: str,
        *,
        state_dir: str,
        notifier: Notifier,
        sockets: Sequence[socket.socket] = (),
        handed_over: bool = False,
        ready_fd: int | None = None,
        argv: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy_path = policy_path
        self.state_dir = state_dir
        self.notifier = notifier
        self._sockets = list(sockets)  # handed in: systemd's, or the previous process's
        self._handed_over = handed_over
        self._ready_fd = ready_fd
        # the new process at an upgrade: the code on disk, with this one's arguments
        self._argv = (
            list(argv)
            if argv is not None
            else [sys.executable, "-m", "sentinel_keeper", *sys.argv[1:]]
        )
        self._clock = clock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._flags = SignalFlags(self._wake_w.fileno(), upgrade=True)
        self.rules: Rules | None = None
        self.gateway: Gateway | None = None
        self._retired: list[Gateway] = []  # gateways a reload replaced, finishing requests
        self._socket: socket.socket | None = None  # the handed-in socket the gateway uses
        self._view_key: tuple[int, int, int] | None = None  # (inode, size, mtime) read last
        self._view: View | None = None
        self._view_error: str | None = None
        self._state = ViewState(None, Degraded.NO_VIEW)
        self._said: str | None = None  # the degraded reason last logged
        self._figures_at = float("-inf")
        self._last_ping = float("-inf")
        self._child: subprocess.Popen[bytes] | None = None
        self._child_pipe: int | None = None
        self._child_deadline = 0.0
        self._upgraded_to: int | None = None

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        with self._flags:
            self._start()
            try:
                while self._flags.stop is None and self._upgraded_to is None:
                    self._wait(self._tick_seconds())
                    if self._flags.take_hup():
                        self._reload()
                    if self._flags.take_usr2():
                        self._begin_upgrade()
                    self._watch_upgrade()
                    self._tick()
            finally:
                self._stop()
        return 0

    def _tick_seconds(self) -> float:
        period = self.notifier.watchdog_interval
        return TICK_SECONDS if period is None else min(TICK_SECONDS, period / 4)

    def _wait(self, timeout: float) -> None:
        watched: list[int | socket.socket] = [self._wake_r]
        if self._child_pipe is not None:
            watched.append(self._child_pipe)
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(watched, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    while self._wake_r.recv(4096):
                        pass

    def _start(self) -> None:
        rules = self._first_rules()
        self.rules = rules
        self._event(
            LogEvent(
                "gateway_starting",
                "info",
                {
                    "version": __version__,
                    "pid": os.getpid(),
                    "policy": self.policy_path,
                    "rules": rules.source,
                    "sockets": len(self._sockets),
                    "handed_over": self._handed_over,
                },
            )
        )
        self._apply(rules)
        self._read_view(force=True)
        self._tick()
        if self._handed_over:
            # systemd follows this process from now on (NotifyAccess=all), the previous one
            # drains and exits
            self.notifier.main_pid_ready(os.getpid(), self._status())
        else:
            self.notifier.ready(self._status())
        if self._ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._ready_fd, b"1")
            with contextlib.suppress(OSError):
                os.close(self._ready_fd)
            self._ready_fd = None

    def _first_rules(self) -> Rules:
        try:
            policy = load_policy(self.policy_path, settle=SETTLE_SECONDS)
        except (SentinelError, OSError) as exc:
            self._policy_errors(exc, "the last good copy, or pass-through")
        else:
            self._keep_copy()
            return Rules(policy, gateway_part(policy), "file")
        copy = policy_copy_path(self.state_dir)
        with contextlib.suppress(SentinelError, OSError):
            policy = load_policy(str(copy))
            return Rules(policy, gateway_part(policy), "last_good")
        passed = address_of(self._sockets[0]) if self._sockets else None
        policy = pass_through(passed)
        return Rules(policy, gateway_part(policy), "none")

    def _policy_errors(self, exc: BaseException, keeping: str) -> None:
        diagnostics = getattr(exc, "diagnostics", None) or [exc]
        self._event(
            LogEvent(
                "policy_rejected",
                "error",
                {"path": self.policy_path, "errors": len(diagnostics), "keeping": keeping},
            )
        )
        for diagnostic in diagnostics:
            self._event(LogEvent("policy_error", "error", {"error": str(diagnostic)}))

    def _keep_copy(self) -> None:
        """The policy file as last found valid, for a start with a broken one."""
        try:
            text = Path(self.policy_path).read_text(encoding="utf-8")
            copy = policy_copy_path(self.state_dir)
            if not copy.exists() or copy.read_text(encoding="utf-8") != text:
                replace_file(copy, text)
        except OSError as exc:
            self._event(
                LogEvent(
                    "policy_copy_failed",
                    "warning",
                    {"path": str(policy_copy_path(self.state_dir)), "error": exc.strerror},
                )
            )

    def _reload(self) -> None:
        try:
            policy = load_policy(self.policy_path, settle=SETTLE_SECONDS, empty_ok=False)
        except (SentinelError, OSError) as exc:
            self._policy_errors(exc, "the policy in force")
            return
        self._keep_copy()
        rules = Rules(policy, gateway_part(policy), "file")
        changed = self.rules is None or rules.whole != self.rules.whole
        self._event(
            LogEvent("policy_reloaded", "info", {"path": self.policy_path, "changed": changed})
        )
        self.rules = rules
        self._apply(rules)
        self._view_key = None  # the instance may have changed: judge the view again
        self._read_view(force=True)

    def _apply(self, rules: Rules) -> None:
        """Listen where the rules say, with the view as it stands."""
        part = rules.part
        wanted = part.gateway.address if part is not None else None
        self._sort_sockets(wanted)
        if part is None:
            self._retire("the policy turns the gateway off")
            why = (
                "no valid policy, ever, and no socket passed: nothing to serve until a valid "
                "policy and a reload (SIGHUP)"
                if rules.source == "none"
                else "the policy has no gateway.listen nor gateway.takeover: nothing to serve"
            )
            self._event(
                LogEvent("gateway_off", "warning", {"policy": self.policy_path, "why": why})
            )
            return
        if self.gateway is not None and self.gateway.instance != part.instance:
            self._retire("it fronts another instance now")
        if self.gateway is None:
            self.gateway = Gateway(
                part,
                self._event,
                inherited=self._socket,
                inherited_from="handed_over" if self._handed_over else "passed",
            )
        self.gateway.update(part, self._state.observation)

    def _retire(self, why: str) -> None:
        """Stop the gateway accepting; its requests in flight finish in the background (the
        loop must go on pinging the watchdog meanwhile)."""
        gateway, self.gateway = self.gateway, None
        if gateway is not None:
            gateway.begin_stop(why)
            self._retired.append(gateway)

    def _sort_sockets(self, wanted: ListenAddress | None) -> None:
        """Keep the handed-in socket that listens at the gateway's address; log and close
        the others (and the kept one once the policy moves off its address)."""
        keep: socket.socket | None = None
        for sock in [*self._sockets, *([self._socket] if self._socket is not None else [])]:
            if keep is None and wanted is not None and listens_at(sock, wanted):
                keep = sock
                continue
            if sock is self._socket and self.gateway is not None:
                self.gateway.forget_socket()
            self._event(
                LogEvent(
                    "listen_socket_unused",
                    "warning",
                    {
                        "address": str(address_of(sock)),
                        "gateway": str(wanted) if wanted is not None else "off",
                        "why": "handed in (sentinel-keeper-gateway.socket, or an upgrade) and "
                        "the gateway does not listen there; closed",
                    },
                )
            )
            sock.close()
        self._sockets = []
        self._socket = keep

    # -- what the loop does each tick ---------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        self._read_view()
        gateway, rules = self.gateway, self.rules
        if gateway is not None and rules is not None and rules.part is not None:
            # also retries a failed bind
            gateway.update(
                rules.part,
                self._state.observation,
                health=self._view.health if self._state.degraded is None and self._view else None,
                degraded=self.degraded(),
            )
            gateway.reap()
        for old in list(self._retired):
            old.reap()
            if not old.draining_servers:
                self._retired.remove(old)
        self._say_degraded()
        if now - self._figures_at >= FIGURES_EVERY:
            self._write_figures()
            self._figures_at = now
        period = self.notifier.watchdog_interval
        if period is not None and now - self._last_ping >= period:
            self.notifier.watchdog()
            self._last_ping = now
        self.notifier.status(self._status())

    def _read_view(self, *, force: bool = False) -> None:
        """Read the keeper's view when the file changed; judge its age at every call."""
        rules = self.rules
        path = view_path(self.state_dir)
        try:
            info = path.stat()
            key = (info.st_ino, info.st_size, info.st_mtime_ns)
        except FileNotFoundError:
            key = None
            self._view, self._view_error = None, None
        except OSError as exc:
            key = None
            self._view, self._view_error = None, f"{path}: {exc.strerror}"
        if key is not None and (force or key != self._view_key):
            try:
                self._view, self._view_error = decode_view(path.read_text(encoding="utf-8")), None
            except (OSError, ValueError) as exc:
                self._view, self._view_error = None, f"{path}: {exc}"
        self._view_key = key
        if rules is None or rules.part is None:
            self._state = ViewState(None, Degraded.NO_VIEW)
            return
        self._state = judge(
            self._view,
            self._view_error,
            exists=key is not None,
            instance=rules.part.instance,
            now=self._clock(),
            max_age=rules.part.gateway.view_max_age,
        )

    def degraded(self) -> str | None:
        """Why the gateway runs without some of its rules now (None: it does not)."""
        rules = self.rules
        if rules is not None and rules.source == "none":
            return Degraded.NO_POLICY
        if rules is not None and rules.source == "last_good":
            return Degraded.POLICY_COPY
        return self._state.degraded

    def _say_degraded(self) -> None:
        why = self.degraded()
        if why == self._said:
            return
        if why is None:
            self._event(
                LogEvent("gateway_restored", "info", {"why": "a fresh view from the keeper"})
            )
        else:
            detail = {
                Degraded.NO_POLICY: "no valid policy, ever: every request is forwarded as it came",
                Degraded.POLICY_COPY: f"{self.policy_path} is invalid: running the last good "
                f"copy ({policy_copy_path(self.state_dir)})",
            }.get(why, self._state.detail)
            self._event(
                LogEvent(
                    "gateway_degraded",
                    "warning",
                    {
                        "why": why,
                        "detail": detail,
                        "meanwhile": "foreign-model rules and cold causes off; pins and "
                        "num_ctx from the policy still kept"
                        if why not in (Degraded.NO_POLICY,)
                        else "requests forwarded unchanged",
                    },
                )
            )
        self._said = why

    def _write_figures(self) -> None:
        gateway = self.gateway
        if gateway is None:
            return
        data = FiguresFile(
            written=self._clock(),
            pid=os.getpid(),
            figures=gateway.figures(),
            degraded=self.degraded(),
        )
        with contextlib.suppress(OSError):  # the figures are for the metrics: never fatal
            replace_file(figures_path(self.state_dir), encode_figures(data), mode=0o600)

    def _status(self) -> str:
        gateway = self.gateway
        if gateway is None or gateway.port is None:
            return "not listening"
        figures = gateway.figures()
        served = sum(figures.requests.values())
        why = self.degraded()
        return (
            f"serving ({served} requests)"
            + (f"; degraded: {why}" if why is not None else "")
            + (f"; draining {gateway.draining}" if gateway.draining else "")
        )

    # -- the upgrade -----------------------------------------------------------------------

    def _begin_upgrade(self) -> None:
        gateway = self.gateway
        if self._child is not None:
            self._event(LogEvent("gateway_upgrade_busy", "warning", {"pid": self._child.pid}))
            return
        listening = gateway.listening if gateway is not None else None
        handed = [listening] if listening is not None else []
        read_end, write_end = os.pipe()
        env = dict(os.environ)
        env[HANDED_FDS] = ",".join(str(s.fileno()) for s in handed)
        env[READY_FD] = str(write_end)
        env.pop("WATCHDOG_PID", None)  # the new process pings for itself once it is MAINPID
        argv = self._argv
        try:
            child = subprocess.Popen(
                argv,
                env=env,
                pass_fds=[write_end, *(s.fileno() for s in handed)],
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            os.close(read_end)
            os.close(write_end)
            self._event(LogEvent("gateway_upgrade_failed", "error", {"error": str(exc)}))
            return
        os.close(write_end)
        self._child, self._child_pipe = child, read_end
        self._child_deadline = time.monotonic() + UPGRADE_SECONDS
        self._event(
            LogEvent(
                "gateway_upgrading",
                "info",
                {"pid": child.pid, "sockets": len(handed), "argv": " ".join(argv)},
            )
        )

    def _watch_upgrade(self) -> None:
        child, pipe = self._child, self._child_pipe
        if child is None or pipe is None:
            return
        ready, _, _ = select.select([pipe], [], [], 0)
        if ready:
            try:
                got = os.read(pipe, 1)
            except OSError:
                got = b""
            if got == b"1":
                self._end_upgrade()
                self._upgraded_to = child.pid
                self._event(
                    LogEvent(
                        "gateway_upgraded",
                        "info",
                        {"pid": child.pid, "then": "this process drains and exits"},
                    )
                )
                return
            why = f"it exited with {child.wait(timeout=5)} before serving"
        elif time.monotonic() > self._child_deadline:
            why = f"it did not serve within {UPGRADE_SECONDS:g} s"
        else:
            return
        with contextlib.suppress(OSError):
            child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
        self._end_upgrade()
        self._event(
            LogEvent(
                "gateway_upgrade_failed",
                "error",
                {"pid": child.pid, "why": why, "then": "this process goes on serving"},
            )
        )

    def _end_upgrade(self) -> None:
        if self._child_pipe is not None:
            os.close(self._child_pipe)
        self._child = None
        self._child_pipe = None

    # -- the end ---------------------------------------------------------------------------

    def _stop(self) -> None:
        signum = self._flags.stop
        upgraded = self._upgraded_to is not None
        gateway = self.gateway
        serving = gateway is not None and gateway.port is not None
        if not upgraded:
            # after an upgrade the new process is systemd's main one: this one says nothing
            self.notifier.stopping("draining")
        name = signal.Signals(signum).name if signum is not None else "upgrade"
        self._event(LogEvent("gateway_stopping", "info", {"signal": name, "serving": serving}))
        if gateway is not None:
            gateway.begin_stop("stopping")
        for each in [*([gateway] if gateway is not None else []), *self._retired]:
            while not each.wait_drained(1.0):
                if not upgraded:
                    self.notifier.extend_timeout(EXTEND_SECONDS)
            each.reap()
        if gateway is not None:
            self._write_figures()
        if self._socket is not None:
            self._socket.close()
        for sock in self._sockets:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _event(self, event: LogEvent) -> None:
        log.log(LEVEL_NUMBERS[event.level], event.event, **dict(event.fields))


def run_gateway(
    policy_path: str,
    *,
    state_dir: str,
    env: MutableMapping[str, str] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or an upgrade hands over); 0 after a clean stop."""
    environ = os.environ if env is None else env
    handed, ready_fd = take_handed_sockets(environ)
    if handed or ready_fd is not None:
        sockets, handed_over = handed, True
    else:
        sockets, problems = take_listen_fds(environ)
        for problem in problems:
            log.warning("listen_socket_unused", why=problem)
        handed_over = False
    process = GatewayProcess(
        policy_path,
        state_dir=state_dir,
        notifier=Notifier(environ),
        sockets=sockets,
        handed_over=handed_over,
        ready_fd=ready_fd,
    )
    return process.run()
