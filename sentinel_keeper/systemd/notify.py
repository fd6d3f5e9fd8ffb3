"""The sd_notify protocol: what the daemon tells systemd (READY, STATUS, WATCHDOG, RELOADING,
STOPPING, EXTEND_TIMEOUT_USEC).

Sending goes through the sdnotify package's socket, with a send timeout: a receiver that does
not read (PID 1 busy, a test harness) fills the socket's queue, and a blocking send would
then hold the main loop, and SIGTERM with it, forever. A message that cannot be sent within
:data:`SEND_TIMEOUT_SECONDS` is dropped (a missed WATCHDOG=1 or STATUS= is harmless); a state
change (READY=1, RELOADING=1, STOPPING=1) that could not be sent is kept and sent, in order,
before the next message. A keeper whose notification socket went away keeps keeping. Without
NOTIFY_SOCKET nothing is sent at all. The parsing of systemd's variables (WATCHDOG_USEC,
WATCHDOG_PID) and the formatting of the messages are pure functions, tested on their own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping

import sdnotify

from sentinel_keeper.values.text import shorten

# STATUS is shown by `systemctl status` on one line: single-line, and bounded (the daemon
# keeps each Ollama instance's part short, see lifecycle.status_text_all).
MAX_STATUS_CHARS = 1024
# The longest one send may block the loop: a few per tick at most, so a receiver that never
# reads slows the loop to about a tick per second and never stops it.
SEND_TIMEOUT_SECONDS = 0.1
MAX_UNSENT = 4  # state changes kept for a later send while the receiver does not read


def watchdog_period(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled
    advises), or None when systemd asks for none or asks another process (WATCHDOG_PID)."""
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def clean_status(text: str) -> str:
    """One line of printable ASCII, bounded: the protocol is newline separated, and sdnotify
    encodes as Latin-1, which would turn other characters into mojibake or drop the message."""
    flat = " ".join(text.split())
    return shorten("".join(c if 32 <= ord(c) < 127 else "?" for c in flat), MAX_STATUS_CHARS)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC= wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def message(*fields: tuple[str, str]) -> str:
    """An sd_notify datagram: KEY=VALUE lines."""
    return "\n".join(f"{key}={value}" for key, value in fields)


def bounded_sender(timeout: float = SEND_TIMEOUT_SECONDS) -> Callable[[str], None] | None:
    """A send function for NOTIFY_SOCKET (read from os.environ, as sdnotify does) that blocks
    at most ``timeout`` seconds and raises OSError when the message did not go out; None
    when there is no socket to send to."""
    try:
        notifier = sdnotify.SystemdNotifier(debug=True)
    except (OSError, TypeError, ValueError):
        return None  # no NOTIFY_SOCKET, or nothing listening there: nothing to tell
    notifier.socket.settimeout(timeout)

    def send(text: str) -> None:
        notifier.notify(text)

    return send


class Notifier:
    """Sends sd_notify messages; a no-op without NOTIFY_SOCKET. Never blocks longer than a
    send timeout. Thread-safe: the daemon sends from its main thread, but nothing breaks if a
    worker sends too."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        send: Callable[[str], None] | None = None,
        monotonic_usec: Callable[[], int] = monotonic_usec,
    ) -> None:
        environ = os.environ if env is None else env
        self.enabled = bool(environ.get("NOTIFY_SOCKET")) or send is not None
        self.watchdog_interval = watchdog_period(environ, os.getpid() if pid is None else pid)
        self._monotonic_usec = monotonic_usec
        self._lock = threading.Lock()
        self._status: str | None = None
        self._unsent: list[str] = []  # state changes not sent yet, oldest first
        self.dropped = 0  # messages given up on: the receiver did not read in time
        self._send: Callable[[str], None] | None = send
        if self._send is None and self.enabled:
            # The socket comes from os.environ (as sdnotify reads it); an explicit env
            # (tests) is only honoured for the watchdog settings.
            self._send = bounded_sender()

    def _emit(self, text: str, *, state_change: bool = False) -> bool:
        """Send ``text``; False when it did not go out in time. State changes that did not
        are kept (the last few, in order) and sent before the next message."""
        if self._send is None:
            return False
        with self._lock:
            try:
                while self._unsent:
                    self._send(self._unsent[0])
                    del self._unsent[0]
                self._send(text)
            except OSError:
                self.dropped += 1
                if state_change:
                    self._unsent = [*self._unsent, text][-MAX_UNSENT:]
                return False
            return True

    @property
    def status_text(self) -> str | None:
        """The last STATUS= sent."""
        return self._status

    def status(self, text: str) -> bool:
        """STATUS=, only when it differs from the last one sent. Returns whether it was sent."""
        line = clean_status(text)
        if line == self._status:
            return False
        if self._emit(message(("STATUS", line))):
            self._status = line  # else tried again at the next call
            return True
        return False

    def ready(self, status: str | None = None) -> None:
        fields = [("READY", "1")]
        if status is not None:
            self._status = clean_status(status)
            fields.append(("STATUS", self._status))
        self._emit(message(*fields), state_change=True)

    def main_pid_ready(self, pid: int, status: str | None = None) -> None:
        """MAINPID= with READY=1: this process, started by the main one (an upgrade that
        re-executes the code), is the service's main process from now on. systemd takes it
        from a process other than the main one only with NotifyAccess=all."""
        fields = [("MAINPID", str(pid)), ("READY", "1")]
        if status is not None:
            self._status = clean_status(status)
            fields.append(("STATUS", self._status))
        self._emit(message(*fields), state_change=True)

    def reloading(self, status: str | None = None) -> None:
        """RELOADING=1 with MONOTONIC_USEC, which Type=notify-reload (systemd >= 253) needs to
        match the reload to its request; older systemd ignores the extra field."""
        fields = [("RELOADING", "1"), ("MONOTONIC_USEC", str(self._monotonic_usec()))]
        if status is not None:
            self._status = clean_status(status)
            fields.append(("STATUS", self._status))
        self._emit(message(*fields), state_change=True)

    def stopping(self, status: str | None = None) -> None:
        fields = [("STOPPING", "1")]
        if status is not None:
            self._status = clean_status(status)
            fields.append(("STATUS", self._status))
        self._emit(message(*fields), state_change=True)

    def watchdog(self) -> None:
        """WATCHDOG=1, only when systemd asked this process for pings."""
        if self.watchdog_interval is not None:
            self._emit(message(("WATCHDOG", "1")))

    def extend_timeout(self, seconds: float) -> None:
        """EXTEND_TIMEOUT_USEC=: the current start (or stop) may take this much longer, from
        now. Must be repeated before it runs out."""
        self._emit(message(("EXTEND_TIMEOUT_USEC", str(max(int(seconds * 1_000_000), 1)))))
