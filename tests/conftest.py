"""Fixtures shared by the test modules; what they build is in tests/support/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, NotifySocket


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """systemd's side of sd_notify: NOTIFY_SOCKET, every message recorded."""
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def spawn(tmp_path: Path, notify: NotifySocket) -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``sentinel-keeper run`` with a policy (and more arguments, environment); every
    daemon started is killed at the end of the test."""
    started: list[DaemonProcess] = []

    def start(policy: Path, *args: str, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(policy, tmp_path, notify, *args, env=env)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.kill()
