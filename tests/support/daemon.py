"""The daemon as systemd runs it, for tests and benchmarks: ``sentinel-keeper run`` as a
subprocess, NOTIFY_SOCKET bound here (:class:`NotifySocket`), its log on a pipe (journald's
format through JOURNAL_STREAM, or JSON lines), every line and message recorded with the
time.monotonic() of its arrival; and the one wait helper."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0  # the longest any single wait may take
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
EVENT = re.compile(r"^<(\d)>([a-z_]+)")


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something true, and return that; AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# --- systemd's side: the notification socket ------------------------------------------------


@dataclass(frozen=True)
class Message:
    at: float  # time.monotonic() at receipt
    fields: dict[str, str]


class NotifySocket:
    """A unix datagram socket, as systemd binds for NOTIFY_SOCKET, recording every message."""

    def __init__(self, path: Path, on_message: Callable[[Message], None] | None = None) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self.on_message = on_message
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("latin-1")  # sd_notify's encoding, as sdnotify sends it
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            message = Message(time.monotonic(), fields)
            if self.on_message is not None:
                self.on_message(message)
            with self._lock:
                self._messages.append(message)

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def with_field(self, key: str, value: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages
            if key in m.fields and (value is None or m.fields[key] == value)
        ]

    def wait_for(self, key: str, value: str | None = None, timeout: float = WAIT) -> Message:
        found: list[Message] = wait_until(
            f"{key}={value or '*'}", lambda: self.with_field(key, value), timeout
        )
        return found[0]

    def statuses(self) -> list[str]:
        return [m.fields["STATUS"] for m in self.messages if "STATUS" in m.fields]

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(timeout=2)


# --- the daemon as a subprocess -------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def daemon_command(time_scale: float = 1.0) -> list[str]:
    """The program that runs ``sentinel-keeper``: with a ``time_scale`` other than 1 the
    daemon's own clock (its Timings) runs that much faster, for simulations against the
    double at accelerated time (tests/support/scaled_daemon.py)."""
    if time_scale == 1.0:
        return [sys.executable, "-m", "sentinel_keeper"]
    return [sys.executable, "-m", "tests.support.scaled_daemon", repr(time_scale)]


# What systemd does for a socket unit's service: the listening socket as fd 3, LISTEN_FDS and
# LISTEN_PID (this process's pid, which exec keeps) in the environment, then the program.
SOCKET_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class DaemonProcess:
    """``sentinel-keeper --policy P run ARGS`` (or another ``command``: ``gateway``) with
    NOTIFY_SOCKET bound here (``notify``: a :class:`NotifySocket`, or the path of any
    socket), a STATE_DIRECTORY in ``workdir``, no
    watchdog unless ``env`` (more environment) sets one. ``log_format="journal"``: stderr is
    a pipe that JOURNAL_STREAM names, so the daemon writes journald's ``<N>event key=value``
    lines; ``"json"``: JSON lines (the benchmarks). ``program``: what to run in place of
    ``python -m sentinel_keeper`` (a benchmark's wrapper around the same CLI)."""

    def __init__(
        self,
        policy: Path,
        workdir: Path,
        notify: NotifySocket | Path,
        *args: str,
        time_scale: float = 1.0,
        log_format: Literal["journal", "json"] = "journal",
        env: Mapping[str, str] | None = None,
        listen_socket: socket.socket | None = None,
        command: str = "run",
        program: Sequence[str] | None = None,
    ) -> None:
        read_fd, write_fd = os.pipe()
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY"))}
        environ.pop("JOURNAL_STREAM", None)
        environ.update(
            NOTIFY_SOCKET=str(notify.path if isinstance(notify, NotifySocket) else notify),
            STATE_DIRECTORY=str(workdir / "state"),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p),
        )
        if log_format == "journal":
            st = os.fstat(write_fd)
            environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        else:
            args = (*args, "--log-format", "json")
        environ.update(env or {})
        self.started = time.monotonic()
        runs = daemon_command(time_scale) if program is None else list(program)
        argv = [*runs, "--policy", str(policy), command, *args]
        passed: tuple[int, ...] = ()
        if listen_socket is not None:  # socket activation, as sentinel-keeper-gateway.socket
            passed = (listen_socket.fileno(),)
            argv = [sys.executable, "-c", SOCKET_ACTIVATE, str(passed[0]), *argv]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            pass_fds=passed,
        )
        os.close(write_fd)
        self._lock = threading.Lock()
        self._lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                with self._lock:
                    self._lines.append((time.monotonic(), line.rstrip("\n")))

    # -- what it logged --------------------------------------------------------------------

    def timed(self, since: float = 0.0) -> list[tuple[float, str]]:
        with self._lock:
            return [(at, line) for at, line in self._lines if at >= since]

    def lines(self, since: float = 0.0) -> list[str]:
        return [line for _, line in self.timed(since)]

    def events(self, since: float = 0.0, *, min_level: int = 6) -> Counter[str]:
        """How many journal lines of each event at priority ``min_level`` (6 = info) or more
        urgent."""
        counts: Counter[str] = Counter()
        for line in self.lines(since):
            match = EVENT.match(line)
            assert match is not None, f"not a journal line: {line!r}"
            if int(match.group(1)) <= min_level:
                counts[match.group(2)] += 1
        return counts

    def wait_event(self, pattern: str, since: float = 0.0, timeout: float = WAIT) -> float:
        """The arrival time of the first line matching ``pattern`` at or after ``since``."""
        regex = re.compile(pattern)
        found: list[float] = wait_until(
            f"a log line matching {pattern!r}",
            lambda: [at for at, line in self.timed(since) if regex.search(line)],
            timeout,
        )
        return found[0]

    def wait_line(self, pattern: str, timeout: float = WAIT, since: float = 0.0) -> str:
        """The first line matching ``pattern`` at or after ``since``."""
        regex = re.compile(pattern)
        found: list[str] = wait_until(
            f"a log line matching {pattern!r}",
            lambda: [line for line in self.lines(since) if regex.search(line)],
            timeout,
        )
        return found[0]

    # -- the process -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout=timeout)

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/PID/status")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, and the exit code (killed after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=2)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._reader.join(timeout=2)
