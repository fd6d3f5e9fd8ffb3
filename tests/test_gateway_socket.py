"""gateway.takeover in the real daemon, with the listening socket systemd would pass
(sentinel-keeper-gateway.socket) held by the test: the keeper talks to Ollama (the double)
at its private address, clients reach it through the gateway at the public one, and a
request sent while no daemon runs is answered once one starts; sd_listen_fds' rules."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sentinel_keeper.systemd.listenfds import listens_at, take_listen_fds
from sentinel_keeper.values.listen import ListenAddress
from tests.support.daemon import WAIT, DaemonProcess, NotifySocket, free_port, wait_until
from tests.support.ollama_double import FakeModel, GiB, MiB, OllamaDouble

PINNED = "llama3.2:1b"


def test_fds_meant_for_another_process_are_left_and_the_variables_removed() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert take_listen_fds(env) == ([], [])
    assert env == {}
    env = {"LISTEN_PID": "me", "LISTEN_FDS": "1"}
    sockets, problems = take_listen_fds(env)
    assert sockets == [] and "not numbers" in problems[0]
    assert take_listen_fds({}) == ([], [])


def test_a_passed_socket_is_matched_by_its_address() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert listens_at(sock, ListenAddress("127.0.0.1", port))
        assert listens_at(sock, ListenAddress("localhost", port))
        assert not listens_at(sock, ListenAddress("127.0.0.1", port + 1))
        assert not listens_at(sock, ListenAddress("0.0.0.0", port))


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble([FakeModel(PINNED, size=800 * MiB)], vram_total=24 * GiB)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """The socket systemd's socket unit holds: listening before any daemon runs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock
    finally:
        sock.close()


def generates(metrics: str) -> float:
    """The generate requests the gateway counted."""
    page = httpx.get(metrics, timeout=WAIT).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("sentinel_keeper_gateway_requests_total{")
        and 'endpoint="/api/generate"' in line
    )


class Pending:
    """A request sent now, from a thread, answered whenever the gateway accepts it."""

    def __init__(self, url: str) -> None:
        self.answer: httpx.Response | BaseException | None = None
        self._thread = threading.Thread(target=self._send, args=(url,), daemon=True)
        self._thread.start()

    def _send(self, url: str) -> None:
        try:
            self.answer = httpx.get(url, timeout=WAIT)
        except Exception as exc:  # reported by result()
            self.answer = exc

    def result(self) -> httpx.Response:
        self._thread.join(timeout=WAIT + 5)
        assert isinstance(self.answer, httpx.Response), self.answer
        return self.answer


@pytest.mark.slow
def test_takeover_with_a_passed_socket_queues_clients_across_restarts(
    tmp_path: Path, double: OllamaDouble, held: socket.socket
) -> None:
    public, metrics_port = held.getsockname()[1], free_port()
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    private = double.url.rsplit(":", 1)[1]
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"interval: 1s\nollama:\n  url: 127.0.0.1:{public}\n"
        f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n"
        f"gateway:\n  takeover: true\n  upstream: 127.0.0.1:{private}\n"
        f"models:\n  - name: {PINNED}\n    keep_alive: 1h\n"
    )
    gateway = f"http://127.0.0.1:{public}"
    # sent while nothing accepts: the kernel queues the connection in the held backlog
    early = Pending(f"{gateway}/api/tags")
    notify = NotifySocket(tmp_path / "notify.sock")
    gateway_notify = NotifySocket(tmp_path / "gateway-notify.sock")
    daemon = DaemonProcess(policy, tmp_path, notify)
    served = DaemonProcess(policy, tmp_path, gateway_notify, listen_socket=held, command="gateway")
    try:
        # the keeper's own client talks to Ollama at its private address
        daemon.wait_event(rf"^<6>starting .*ollama=http://127\.0\.0\.1:{private}\b")
        served.wait_event(
            rf"^<6>gateway_listening listen=127\.0\.0\.1:{public} "
            rf"ollama=http://127\.0\.0\.1:{private} socket=passed"
        )
        gateway_notify.wait_for("READY", "1")
        assert early.result().json()["models"][0]["name"] == PINNED
        notify.wait_for("READY", "1")  # the pinned model loaded, by the keeper
        assert [i.name for i in double.loaded()] == [PINNED]
        loads = len(double.requests_to("/api/generate"))
        assert loads >= 1
        request = {"model": PINNED, "prompt": "x", "stream": False}
        answer = httpx.post(f"{gateway}/api/generate", json=request, timeout=WAIT)
        assert answer.status_code == 200, answer.text
        assert len(double.requests_to("/api/generate")) == loads + 1
        # the keeper's loads did not go through the gateway: only the client's request did
        # (the gateway's figures reach the keeper's metrics through its figures file)
        wait_until("the gateway's count", lambda: generates(metrics) == 1.0)
        assert daemon.events(min_level=4)["listen_socket_unused"] == 0
        assert served.events(min_level=4)["listen_socket_unused"] == 0
        assert served.stop() == 0

        # stop and start with the same held socket: a request in the gap is answered
        gap = Pending(f"{gateway}/api/version")
        assert gap.answer is None
        again = DaemonProcess(
            policy, tmp_path, gateway_notify, listen_socket=held, command="gateway"
        )
        try:
            assert gap.result().status_code == 200
            again.wait_event(r"^<6>gateway_listening .*socket=passed")
        finally:
            again.stop()
    finally:
        served.stop()
        daemon.stop()
        notify.close()
        gateway_notify.close()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["gateway", "run"])
def test_a_passed_socket_nothing_uses_is_logged_and_closed(
    tmp_path: Path, double: OllamaDouble, held: socket.socket, command: str
) -> None:
    """The gateway's process with a policy that turns the gateway off, and the keeper,
    which serves no socket at all (the socket unit names the gateway's service)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"interval: 1s\nollama:\n  url: {double.url}\nmetrics:\n  listen: null\n")
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(policy, tmp_path, notify, listen_socket=held, command=command)
    try:
        line = daemon.wait_line(r"^<4>listen_socket_unused ")
        assert f"address=127.0.0.1:{held.getsockname()[1]}" in line
        assert ("gateway=off" in line) == (command == "gateway")
        notify.wait_for("READY", "1")
        pid = daemon.pid
        fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert not any(f.startswith("socket:") and _inode(held) in f for f in fds)
        assert daemon.events(min_level=4)["listen_socket_unused"] == 1
    finally:
        daemon.stop()
        notify.close()


def _inode(sock: socket.socket) -> str:
    return str(os.fstat(sock.fileno()).st_ino)
