"""notify.py: the sd_notify messages, the watchdog settings systemd passes, and sending
through a real unix datagram socket as systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel_keeper.systemd.notify import (
    MAX_STATUS_CHARS,
    Notifier,
    clean_status,
    monotonic_usec,
    watchdog_period,
)


class Sent:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, text: str) -> None:
        self.messages.append(text)


def notifier(env: dict[str, str] | None = None, *, pid: int = 4242) -> tuple[Notifier, Sent]:
    sent = Sent()
    return Notifier(env or {}, pid=pid, send=sent, monotonic_usec=lambda: 123_456_789), sent


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # meant for another
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": " 1000000 "}, 0.5),
    ],
)
def test_watchdog_period(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_period(env, 4242) == expected


def test_messages() -> None:
    n, sent = notifier({"WATCHDOG_USEC": "2000000"})
    n.ready("3/3 pinned resident")
    n.reloading()
    n.stopping("stopping")
    n.watchdog()
    n.extend_timeout(30)
    assert sent.messages == [
        "READY=1\nSTATUS=3/3 pinned resident",
        "RELOADING=1\nMONOTONIC_USEC=123456789",
        "STOPPING=1\nSTATUS=stopping",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=30000000",
    ]


def test_status_is_sent_only_when_it_changes() -> None:
    n, sent = notifier()
    assert n.status("a")
    assert not n.status("a")
    assert n.status("b")
    n.ready("c")
    assert not n.status("c")  # READY carried it
    assert sent.messages == ["STATUS=a", "STATUS=b", "READY=1\nSTATUS=c"]
    assert n.status_text == "c"


def test_no_watchdog_pings_unless_systemd_asked() -> None:
    n, sent = notifier({})
    n.watchdog()
    assert sent.messages == []
    assert n.watchdog_interval is None


def test_status_is_one_printable_ascii_line() -> None:
    assert clean_status("a\nREADY=1\tb") == "a READY=1 b"  # no injected second field
    assert clean_status("GPU0 1.2 GiB → free µ") == "GPU0 1.2 GiB ? free ?"
    long = clean_status("x" * 5000)
    assert len(long) == MAX_STATUS_CHARS == 1024
    assert long.endswith("...")


def test_monotonic_usec_is_clock_monotonic() -> None:
    import time

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    assert before <= value <= before + 5_000_000


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled
    n.ready("x")  # no error, nothing to send to
    n.status("y")


def test_real_socket(tmp_path: Path) -> None:
    """Through sdnotify to a unix datagram socket, the way systemd listens (a subprocess, as
    sdnotify reads NOTIFY_SOCKET from the process environment)."""
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(10)
    code = (
        "from sentinel_keeper.systemd.notify import Notifier\n"
        "n = Notifier()\n"
        "n.ready('1/1 pinned resident')\n"
        "n.watchdog()\n"
        "n.stopping()\n"
    )
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(path),
        "WATCHDOG_USEC": "1000000",
    }
    env.pop("WATCHDOG_PID", None)
    try:
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=20)
        got = [listener.recv(4096).decode() for _ in range(3)]
    finally:
        listener.close()
    assert got == ["READY=1\nSTATUS=1/1 pinned resident", "WATCHDOG=1", "STOPPING=1"]


# --- a receiver that does not read ----------------------------------------------------------


def jam(path: Path) -> int:
    """Fill the queue of the datagram socket bound at ``path`` from another socket, as a
    PID 1 that does not read for a while leaves it; returns how many datagrams it took."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.connect(str(path))
        filler.setblocking(False)
        for count in range(100_000):
            try:
                filler.send(b"X=1")
            except BlockingIOError:
                return count
    raise AssertionError("the receiver's queue never filled")


def received(listener: socket.socket) -> list[str]:
    listener.setblocking(False)
    got = []
    while True:
        try:
            got.append(listener.recv(4096).decode())
        except BlockingIOError:
            return [m for m in got if m != "X=1"]


def test_a_receiver_that_does_not_read_never_blocks_a_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the send timeout, the first message to a full queue blocked the loop for good."""
    import time

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}, pid=os.getpid())
        assert jam(path) > 0
        began = time.monotonic()
        n.ready("1/1 pinned resident")  # a state change: kept for later
        n.watchdog()  # not a state change: dropped
        assert not n.status("waiting")
        n.stopping("stopping")
        assert time.monotonic() - began < 2.0  # four sends, each bounded
        assert n.dropped == 4
        received(listener)  # PID 1 reads again
        assert n.status("1/1 pinned resident; later")
        assert received(listener) == [
            "READY=1\nSTATUS=1/1 pinned resident",
            "STOPPING=1\nSTATUS=stopping",
            "STATUS=1/1 pinned resident; later",
        ]


def test_unsent_state_changes_are_bounded() -> None:
    def refuse(_text: str) -> None:
        raise TimeoutError("timed out")

    n = Notifier({}, send=refuse)
    for _ in range(10):
        n.ready("x")
    assert n.dropped == 10
    assert len(n._unsent) == 4
