"""`sentinel-keeper run` as systemd runs it: a subprocess with a real NOTIFY_SOCKET (a unix
datagram socket this test binds), WATCHDOG_USEC, and stderr on a pipe named by
JOURNAL_STREAM, against the Ollama double on 127.0.0.1.

Every wait is bounded; intervals are short so the whole file runs in seconds.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sentinel_keeper.daemon.engine import TrackedClient
from sentinel_keeper.daemon.progress import Progress
from sentinel_keeper.errors import OllamaUnreachable
from sentinel_keeper.observe.ollama import OllamaClient
from tests.support.daemon import DaemonProcess, Message, NotifySocket, wait_until
from tests.support.ollama_double import FakeModel, OllamaDouble

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024**2
PINNED = "llama3.2:1b"
SECOND = "qwen2.5:0.5b"


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble(
        [FakeModel(PINNED, size=1300 * MiB), FakeModel(SECOND, size=400 * MiB)],
        load_seconds=0.1,
    ).start()
    try:
        yield server
    finally:
        server.stop()


def write_policy(path: Path, url: str, *models: str, **top: str) -> Path:
    lines = [f"{key}: {value}" for key, value in top.items()]
    lines += ["ollama:", f"  url: {url}", "  request_timeout: 2s", "models:"]
    lines += [f"  - name: {name}" for name in models]
    path.write_text("\n".join(lines) + "\n")
    return path


PRIORITY_LINE = re.compile(r"^<[0-7]>[a-z_]+( [a-z_]+=\S.*)?$")


def assert_journal_lines(daemon: DaemonProcess) -> None:
    lines = daemon.lines()
    assert lines
    bad = [line for line in lines if not PRIORITY_LINE.match(line)]
    assert not bad, bad


# --- in-process: the progress record the watchdog relies on -----------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_limits() -> None:
    clock = FakeMonotonic()
    progress = Progress(clock, between_calls=10.0)
    clock.now += 29
    assert progress.stuck(idle_limit=30) is None
    clock.now += 2
    idle = progress.stuck(idle_limit=30)
    assert idle is not None
    assert idle.what == "no pass started"  # the scheduler stopped running passes

    progress.begin_pass()
    assert progress.running
    clock.now += 10.0 - 1
    assert progress.stuck(idle_limit=30) is None
    progress.begin_call("GET /api/ps", None, 1.6)
    clock.now += 1.5
    assert progress.stuck(idle_limit=30) is None
    clock.now += 0.2
    stuck = progress.stuck(idle_limit=30)
    assert stuck is not None
    assert stuck.describe() == "GET /api/ps running for 2 s, past its 1.6s limit"
    progress.end_call()
    assert progress.stuck(idle_limit=30) is None  # between calls again, a fresh budget

    progress.begin_call("load", "llama3.2:1b", 604.4)
    clock.now += 3
    assert progress.loading() == ("llama3.2:1b", 3.0)
    clock.now += 602
    stuck = progress.stuck(idle_limit=30)
    assert stuck is not None
    assert stuck.what == "load of llama3.2:1b"
    progress.end_call()
    progress.begin_call("pull", "big:70b", None)  # a download has no overall limit
    clock.now += 36000
    assert progress.stuck(idle_limit=30) is None
    progress.end_pass()
    assert not progress.running
    assert progress.loading() is None
    assert progress.stuck(idle_limit=30) is None


def test_tracked_client_limits_follow_the_client_timeouts() -> None:
    progress = Progress()
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = OllamaClient(f"http://127.0.0.1:{port}", timeout=0.2, load_timeout=3.0)
    try:
        tracked = TrackedClient(client, progress, call_grace=1.0)
        assert tracked._short_limit == pytest.approx(1.6)  # connect + write + read + 1 s
        assert tracked._long_limit == pytest.approx(4.4)  # load_timeout + 2 x 0.2 + 1 s
        progress.begin_pass()
        with pytest.raises(OllamaUnreachable):
            tracked.ps()
        assert progress.stuck(idle_limit=30) is None  # the call ended, even by an error
        progress.end_pass()
    finally:
        client.close()


# --- the daemon as systemd runs it ---------------------------------------------------------


@pytest.mark.slow
def test_ready_only_once_pinned_models_are_resident_then_quiet(
    tmp_path: Path,
    notify: NotifySocket,
    double: OllamaDouble,
    spawn: Callable[..., DaemonProcess],
) -> None:
    """READY=1 waits for the load (EXTEND_TIMEOUT_USEC meanwhile, STATUS says what loads),
    carries a readable STATUS, and nothing is logged at info or above while nothing changes.
    SIGTERM then gives STOPPING=1 and exit 0."""
    double.load_seconds = 1.6
    resident_at_ready: list[bool] = []

    def on_message(message: Message) -> None:
        if message.fields.get("READY") == "1":
            resident_at_ready.append(double.instance(PINNED) is not None)

    notify.on_message = on_message
    policy = write_policy(tmp_path / "policy.yaml", double.url, PINNED, interval="500ms")
    daemon = spawn(policy)

    ready = notify.wait_for("READY", "1")
    assert resident_at_ready == [True]
    assert ready.at - daemon.started >= 1.6
    assert re.fullmatch(
        r"1/1 pinned resident; GPU memory unknown \(.*\); ollama 0\.33\.0", ready.fields["STATUS"]
    )
    before_ready = [m for m in notify.messages if m.at <= ready.at]
    assert any("EXTEND_TIMEOUT_USEC" in m.fields for m in before_ready)
    assert any(s.startswith(f"loading {PINNED} (") for s in notify.statuses())
    daemon.wait_line(r"^<6>ready why=\"pinned resident\"")
    loaded = daemon.wait_line(rf"^<6>model_loaded model={re.escape(PINNED)} ")
    seconds = float(re.search(r" seconds=([0-9.]+)", loaded).group(1))  # type: ignore[union-attr]
    assert seconds >= 1.6

    # A steady state: four passes, no line at info or above.
    quiet_from = time.monotonic()
    time.sleep(2.0)
    assert [line for line in daemon.lines(quiet_from) if re.match(r"<[0-6]>", line)] == []
    assert_journal_lines(daemon)

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert notify.with_field("STOPPING", "1")


@pytest.mark.slow
def test_ready_anyway_after_startup_timeout_while_ollama_is_down(
    tmp_path: Path, notify: NotifySocket, spawn: Callable[..., DaemonProcess]
) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", url, PINNED, startup_timeout="1500ms")
    daemon = spawn(policy)
    ready = notify.wait_for("READY", "1")
    assert ready.at - daemon.started >= 1.5
    assert re.fullmatch(
        rf"waiting for ollama at {re.escape(url)}: GET /api/version: connection refused \(\d+ s\)",
        ready.fields["STATUS"],
    )
    daemon.wait_line(r"^<4>ollama_unreachable error=")
    daemon.wait_line(r"^<4>ready why=\"startup_timeout 1.5s passed\"")
    assert len([line for line in daemon.lines() if "ollama_unreachable" in line]) == 1
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0


@pytest.mark.slow
def test_rewarm_within_a_second_of_ollama_answering_again(
    tmp_path: Path,
    notify: NotifySocket,
    double: OllamaDouble,
    spawn: Callable[..., DaemonProcess],
) -> None:
    """Ollama goes away for 2.5 s, then comes back with nothing loaded (an upgrade). The
    pinned model must be back about a second (the probe period) plus its load time after the
    port answers again, although the interval is a minute."""
    policy = write_policy(tmp_path / "policy.yaml", double.url, PINNED, interval="1s")
    daemon = spawn(policy)
    notify.wait_for("READY", "1")

    double.stop()  # the port refuses connections from now on
    down = time.monotonic()
    # A minute's interval from now on; the reload's pass sees the outage and probing starts.
    write_policy(policy, double.url, PINNED, interval="1m")
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"^<6>policy_reloaded .*interval=1m")
    daemon.wait_line(r"^<4>ollama_unreachable ")
    time.sleep(max(0.0, down + 2.5 - time.monotonic()))
    assert any(s.startswith(f"waiting for ollama at {double.url}") for s in notify.statuses())

    double.restart()  # models cleared, the same port answers again
    answered = time.monotonic()
    wait_until("the pinned model loaded again", lambda: double.instance(PINNED), timeout=10)
    took = time.monotonic() - answered
    assert took < 2.0, took  # 1 s probe period + 0.1 s load + slack for a busy machine
    back = daemon.wait_line(r"^<6>ollama_back outage_seconds=", since=answered - 0.1)
    assert float(back.split("outage_seconds=")[1].split()[0]) >= 2.0
    daemon.wait_line(rf"^<6>model_loaded model={re.escape(PINNED)} ", since=answered)
    wait_until(
        "STATUS back to normal",
        lambda: notify.statuses()[-1].startswith("1/1 pinned resident"),
    )
    assert len([x for x in daemon.lines() if x.startswith("<4>ollama_unreachable ")]) == 1


@pytest.mark.slow
def test_sighup_with_a_broken_policy_keeps_the_old_one(
    tmp_path: Path,
    notify: NotifySocket,
    double: OllamaDouble,
    spawn: Callable[..., DaemonProcess],
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", double.url, PINNED, interval="1s")
    daemon = spawn(policy)
    notify.wait_for("READY", "1")
    good = policy.read_text()

    policy.write_text(good + "  - name: 42\n    tier: sometimes\nbogus: 1\n")
    hup = time.monotonic()
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_line(r"^<3>policy_rejected ")
    assert "errors=3" in rejected
    # the errors follow the rejection line: wait for them rather than race them
    errors = wait_until(
        "three policy_error lines",
        lambda: (
            [line for line in daemon.lines(hup) if line.startswith("<3>policy_error ")][:3]
            if len([x for x in daemon.lines(hup) if x.startswith("<3>policy_error ")]) >= 3
            else None
        ),
    )
    time.sleep(0.2)
    assert len([x for x in daemon.lines(hup) if x.startswith("<3>policy_error ")]) == 3
    for line in errors:  # compiler style: PATH:LINE:COL
        assert re.search(rf'error="{re.escape(str(policy))}:\d+:\d+: ', line), line
    reloading = notify.wait_for("RELOADING", "1")
    assert int(reloading.fields["MONOTONIC_USEC"]) > 0
    after = wait_until(
        "READY after RELOADING",
        lambda: [m for m in notify.with_field("READY", "1") if m.at >= reloading.at],
    )
    assert (
        after[0]
        .fields["STATUS"]
        .startswith(
            "policy rejected (3 errors, see the journal), running the previous one; 1/1 pinned"
        )
    )

    # Still running on the old policy: it re-warms the pinned model after an eviction.
    double.remove_model(PINNED)
    double.add_model(FakeModel(PINNED, size=1300 * MiB))
    wait_until("the pinned model loaded again", lambda: double.instance(PINNED))
    assert daemon.proc.poll() is None
    assert "policy rejected" in notify.statuses()[-1]

    # A good policy arrives: applied, and STATUS no longer says rejected.
    write_policy(tmp_path / "policy.yaml", double.url, PINNED, SECOND, interval="1s")
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"^<6>policy_reloaded .*pinned=2 ")
    wait_until("the second pinned model", lambda: double.instance(SECOND))
    wait_until(
        "STATUS without the rejection",
        lambda: notify.statuses()[-1].startswith("2/2 pinned resident"),
    )
    assert "rejected" not in notify.statuses()[-1]


@pytest.mark.slow
def test_sigterm_in_the_middle_of_a_load_stops_at_once(
    tmp_path: Path,
    notify: NotifySocket,
    double: OllamaDouble,
    spawn: Callable[..., DaemonProcess],
) -> None:
    double.load_seconds = 30.0
    policy = write_policy(tmp_path / "policy.yaml", double.url, PINNED, interval="1s")
    daemon = spawn(policy)
    wait_until("the load request", lambda: double.requests_to("/api/generate"))
    time.sleep(0.3)
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=5) == 0
    stopped = time.monotonic() - sent
    assert stopped < 3.0, stopped
    stopping = notify.wait_for("STOPPING", "1")
    assert stopping.at - sent < 3.0
    assert "abandoning a load" in stopping.fields.get("STATUS", "")
    assert not notify.with_field("READY", "1")
    # The connection closed with the process, and Ollama gave up the load.
    wait_until("the double to see the load aborted", lambda: double.aborted_loads == 1)
    assert any(
        line.startswith("<6>stopping signal=SIGTERM pass_running=true") for line in daemon.lines()
    )


class _TrickleHandler(BaseHTTPRequestHandler):
    """An Ollama that answers /api/ps one byte at a time: the read timeout never fires, so
    the call is stuck past its own limit, the case the watchdog exists for."""

    protocol_version = "HTTP/1.1"
    trickle_seconds = 4.5

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._json(b'{"version":"0.33.0"}')
        elif self.path == "/api/tags":
            self._json(b'{"models":[]}')
        elif self.path == "/api/ps" and not getattr(self.server, "trickled", False):
            self.server.trickled = True  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deadline = time.monotonic() + self.trickle_seconds
            while time.monotonic() < deadline:
                self.wfile.write(b"1\r\n \r\n")
                self.wfile.flush()
                time.sleep(0.1)
            body = b'{"models":[]}'
            self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        else:
            self._json(b'{"models":[]}')


@pytest.mark.slow
def test_watchdog_pings_stop_while_a_pass_is_stuck_past_its_timeout(
    tmp_path: Path, notify: NotifySocket, spawn: Callable[..., DaemonProcess]
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        # request_timeout 200ms: a GET may take 3 x 0.2 + 1 = 1.6 s before it counts as stuck.
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            f"interval: 1s\nready: started\nollama:\n  url: {url}\n  request_timeout: 200ms\n"
            "models:\n  - name: llama3.2:1b\n"
        )
        daemon = spawn(policy, WATCHDOG_USEC="1000000")  # ping every 0.5 s
        stuck_line = daemon.wait_line(r'^<3>pass_stuck what="GET /api/ps"')
        assert 'watchdog="pings stopped"' in stuck_line
        pings = notify.with_field("WATCHDOG", "1")
        assert len(pings) >= 2  # while the pass was within its limit
        gaps = [b.at - a.at for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 0.75  # at about half of WATCHDOG_USEC
        wait_until(
            "a STATUS saying what is stuck",
            lambda: any(s.startswith("stuck: GET /api/ps running for") for s in notify.statuses()),
        )
        last_ping = pings[-1].at
        daemon.wait_line(r"^<6>pass_unstuck ", timeout=10)
        resumed = wait_until(
            "pings once the pass is unstuck",
            lambda: [m for m in notify.with_field("WATCHDOG", "1") if m.at > last_ping],
        )
        # No ping for well over WATCHDOG_USEC: systemd would have restarted the service.
        assert resumed[0].at - last_ping > 2.0
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_invalid_policy_at_start_exits_78_with_every_error(
    tmp_path: Path, notify: NotifySocket, spawn: Callable[..., DaemonProcess]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("interval: soon\nmodels:\n  - name: 42\n")
    daemon = spawn(policy)
    assert daemon.wait() == 78
    daemon.kill()  # joins the reader
    lines = daemon.lines()
    assert lines[0].startswith("<3>policy_invalid ")
    assert "errors=2" in lines[0]
    assert all(re.search(rf'error="{re.escape(str(policy))}:\d+:\d+: ', x) for x in lines[1:])
    assert len(lines) == 3
    assert notify.messages == []


@pytest.mark.slow
def test_sigterm_stops_the_daemon_while_systemd_does_not_read_its_notifications(
    tmp_path: Path, double: OllamaDouble
) -> None:
    """A NOTIFY_SOCKET whose receiver does not read (PID 1 busy) fills up; a blocking send
    then held the main loop, and SIGTERM never took effect (still running 70 s later). Sends
    are bounded now: the daemon keeps working, stops at once, and the READY=1 it could not
    send goes out once the receiver reads again."""
    path = tmp_path / "jammed.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.connect(str(path))
    filler.setblocking(False)
    for _ in range(100_000):  # fill the receiver's queue, as a PID 1 that does not read
        try:
            filler.send(b"X=1")
        except BlockingIOError:
            break
    else:
        raise AssertionError("the receiver's queue never filled")
    policy = write_policy(tmp_path / "policy.yaml", double.url, PINNED, interval="1s")
    daemon = DaemonProcess(policy, tmp_path, path, env={"WATCHDOG_USEC": "2000000"})
    try:
        # the daemon works while its notifications are dropped
        daemon.wait_line(r"^<6>ready why=\"pinned resident\"")
        receiver.setblocking(False)
        got: list[str] = []

        def drained() -> bool:
            while True:
                try:
                    got.append(receiver.recv(4096).decode())
                except BlockingIOError:
                    return any(m.startswith("READY=1") for m in got)

        wait_until("READY=1 once the receiver reads again", drained)
        for _ in range(100_000):  # jam it again, then stop the daemon
            try:
                filler.send(b"X=1")
            except BlockingIOError:
                break
        sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert time.monotonic() - sent < 5.0
    finally:
        daemon.kill()
        filler.close()
        receiver.close()
