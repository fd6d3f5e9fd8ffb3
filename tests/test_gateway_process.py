"""`sentinel-keeper gateway`, the gateway's own process, in front of the Ollama double: what
it does without the keeper (fail-open), with a broken policy, at a stop (the drain) and at an
upgrade (the listening socket handed to the new code), and beside a keeper killed mid-stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sentinel_keeper.decide.readiness import InstanceHealth
from sentinel_keeper.gateway.exchange import (
    View,
    decode_figures,
    decode_view,
    encode_view,
    figures_path,
    judge,
    view_path,
)
from sentinel_keeper.gateway.process import HANDED_FDS, gateway_part, take_handed_sockets
from sentinel_keeper.gateway.runner import Gateway
from sentinel_keeper.gateway.server import GatewayServer
from sentinel_keeper.policy.loading import load_policy
from sentinel_keeper.values.figures import Degraded
from tests.support.daemon import WAIT, DaemonProcess, NotifySocket, free_port, wait_until
from tests.support.gateway import observe
from tests.support.ollama_double import FakeModel, GiB, MiB, OllamaDouble

PINNED = "llama3.2:1b"
FOREIGN = "big:13b"
STREAM_TOKENS = 30  # with token_seconds 0.1: a stream of about 3 s

pytestmark = pytest.mark.slow


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble(
        [FakeModel(PINNED, size=800 * MiB), FakeModel(FOREIGN, size=10 * GiB)],
        vram_total=24 * GiB,
    )
    server.load_seconds = 0.2
    server.num_parallel = 8
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_policy(path: Path, double: OllamaDouble, port: int, extra: str = "") -> Path:
    path.write_text(
        f"interval: 1s\nollama:\n  url: {double.url}\nmetrics:\n  listen: null\n"
        f"gateway:\n  listen: 127.0.0.1:{port}\n  foreign: reject\n  view_max_age: 2s\n{extra}"
        f"models:\n  - name: {PINNED}\n"
    )
    return path


def publish(state: Path, double: OllamaDouble, *, free: int, written: float | None = None) -> None:
    """What the keeper would write after a pass: its look at the double."""
    view = View("default", time.time() if written is None else written, observe(double, free=free))
    path = view_path(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(encode_view(view))
    tmp.replace(path)


def foreign(url: str) -> int:
    body = {"model": FOREIGN, "prompt": "x", "stream": False}
    return httpx.post(f"{url}/api/generate", json=body, timeout=WAIT).status_code


def last_keep_alive(double: OllamaDouble) -> object:
    """The keep_alive of the last generate request that reached the double."""
    body = double.requests_to("/api/generate")[-1].body
    return body.get("keep_alive", "none") if isinstance(body, dict) else "not json"


@contextlib.contextmanager
def gateway_process(
    policy: Path, tmp: Path, *, listen_socket: socket.socket | None = None
) -> Iterator[tuple[DaemonProcess, NotifySocket]]:
    notify = NotifySocket(tmp / f"notify-{time.monotonic_ns()}.sock")
    served = DaemonProcess(policy, tmp, notify, command="gateway", listen_socket=listen_socket)
    try:
        yield served, notify
    finally:
        served.stop(timeout=20)
        notify.close()


# -- the view, judged (pure) -----------------------------------------------------------------


def test_a_view_is_judged_by_instance_and_age() -> None:
    view = View("default", 1000.0, None)
    assert judge(view, None, exists=True, instance="default", now=1010, max_age=30).degraded is None
    assert judge(view, None, exists=True, instance="default", now=1031, max_age=30).degraded == (
        Degraded.STALE
    )
    # a clock stepped back: a view from the future would never go stale
    assert judge(view, None, exists=True, instance="default", now=900, max_age=30).degraded == (
        Degraded.STALE
    )
    assert judge(view, None, exists=True, instance="gpu1", now=1010, max_age=30).degraded == (
        Degraded.OTHER_INSTANCE
    )
    assert judge(None, None, exists=False, instance="default", now=0, max_age=30).degraded == (
        Degraded.NO_VIEW
    )
    assert judge(None, "x: bad", exists=True, instance="default", now=0, max_age=30).degraded == (
        Degraded.UNREADABLE
    )


def test_a_view_survives_its_codec(double: OllamaDouble) -> None:
    httpx.post(f"{double.url}/api/generate", json={"model": PINNED}, timeout=WAIT)
    view = View("default", 12.5, observe(double, free=3 * GiB))
    assert decode_view(encode_view(view)) == view
    health = InstanceHealth(
        "default",
        answered=True,
        pinned=(PINNED,),
        resident=frozenset({PINNED}),
        not_installed=frozenset({"gone:1b"}),
        looked_at=10.5,
        loading="x:1b",
        loading_since=9.0,
        stalled="slow",
    )
    full = View("default", 12.5, None, health)
    assert decode_view(encode_view(full)) == full
    with pytest.raises(ValueError, match="format"):
        decode_view(json.dumps({"format": 99}))
    with pytest.raises(ValueError):
        decode_view("[]")


# -- fail-open ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "why"), [(None, "view_missing"), ("{not json", "view_unreadable")]
)
def test_without_a_good_view_foreign_requests_are_forwarded_and_it_says_so_once(
    tmp_path: Path, double: OllamaDouble, content: str | None, why: str
) -> None:
    port = free_port()
    policy = write_policy(tmp_path / "policy.yaml", double, port)
    state = tmp_path / "state"
    if content is not None:
        state.mkdir()
        view_path(state).write_text(content)
    with gateway_process(policy, tmp_path) as (served, notify):
        notify.wait_for("READY", "1")
        # no keeper's look: Ollama's own behaviour (it evicts what it must) instead of a refusal
        assert foreign(f"http://127.0.0.1:{port}") == 200
        served.wait_event(rf"^<4>gateway_degraded why={why} ")
        time.sleep(2.5)  # a few ticks: said once
        assert served.events(min_level=4)["gateway_degraded"] == 1
        data = wait_until(
            "the figures file",
            lambda: (
                figures_path(state).exists() and decode_figures(figures_path(state).read_text())
            ),
        )
        assert data.degraded == why
        assert data.figures.requests[(FOREIGN, "/api/generate", "200")] == 1


def test_a_fresh_view_turns_the_foreign_rule_on_and_a_stale_one_off(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", double, port)
    state = tmp_path / "state"
    # a keeper writing its view every half second: the 10 GiB model does not fit
    keeper = Publishing(state, double, free=2 * GiB)
    try:
        with gateway_process(policy, tmp_path) as (served, notify):
            notify.wait_for("READY", "1")
            assert foreign(url) == 503
            # the keeper stops writing: after gateway.view_max_age (2 s) the rule is off
            keeper.stop()
            began = time.monotonic()
            served.wait_event(r"^<4>gateway_degraded why=view_stale ", timeout=15)
            assert time.monotonic() - began >= 1.5  # not before the view's age says so
            assert foreign(url) == 200
            # Ollama loaded it; a client unloads it again
            unload = {"model": FOREIGN, "keep_alive": 0}
            httpx.post(f"{double.url}/api/generate", json=unload, timeout=WAIT)
            wait_until("unloaded", lambda: FOREIGN not in {i.name for i in double.loaded()})
            # a keeper back: the rule is back
            since = time.monotonic()
            keeper = Publishing(state, double, free=2 * GiB)
            served.wait_event(r"^<6>gateway_restored ", since=since)
            assert foreign(url) == 503
    finally:
        keeper.stop()


class Publishing:
    """A keeper's view written every half second, from a thread, until stopped."""

    def __init__(self, state: Path, double: OllamaDouble, *, free: int) -> None:
        self._stop = threading.Event()
        publish(state, double, free=free)

        def run() -> None:
            while not self._stop.wait(0.5):
                publish(state, double, free=free)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_an_invalid_policy_at_start_runs_the_last_good_copy(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", double, port)
    with gateway_process(policy, tmp_path) as (served, notify):
        notify.wait_for("READY", "1")
    good = policy.read_text()
    policy.write_text(good + "models: [\n")  # a syntax error
    request = {"model": PINNED, "prompt": "x", "stream": False, "keep_alive": "5m"}
    with gateway_process(policy, tmp_path) as (served, notify):
        notify.wait_for("READY", "1")
        served.wait_event(r"^<6>gateway_starting .*rules=last_good")
        served.wait_event(r"^<3>policy_error ")
        served.wait_event(r"^<4>gateway_degraded why=policy_last_good ")
        assert httpx.post(f"{url}/api/generate", json=request, timeout=WAIT).status_code == 200
        assert last_keep_alive(double) == -1  # the pin holds, from the copy
        # still broken at a reload: nothing changes for clients
        served.signal(signal.SIGHUP)
        served.wait_event(r"^<3>policy_rejected .*keeping=\"?the policy in force")
        assert httpx.post(f"{url}/api/generate", json=request, timeout=WAIT).status_code == 200
        assert last_keep_alive(double) == -1
        # fixed: the file rules again
        policy.write_text(good)
        served.signal(signal.SIGHUP)
        served.wait_event(r"^<6>policy_reloaded ")
        served.wait_event(r"^<4>gateway_degraded why=view_missing ")
        assert served.alive()


def test_with_no_valid_policy_ever_it_forwards_unchanged_on_the_passed_socket(
    tmp_path: Path,
) -> None:
    try:
        upstream = OllamaDouble([FakeModel(PINNED, size=800 * MiB)], port=11433).start()
    except OSError:
        pytest.skip("127.0.0.1:11433 (gateway.upstream's default) is taken on this host")
    policy = tmp_path / "policy.yaml"
    policy.write_text("models: [\n")
    held = socket.create_server(("127.0.0.1", 0))
    try:
        port = held.getsockname()[1]
        with gateway_process(policy, tmp_path, listen_socket=held) as (served, notify):
            notify.wait_for("READY", "1")
            served.wait_event(r"^<4>gateway_degraded why=policy_none ")
            request = {"model": PINNED, "prompt": "x", "stream": False, "keep_alive": "5m"}
            answer = httpx.post(f"http://127.0.0.1:{port}/api/generate", json=request, timeout=WAIT)
            assert answer.status_code == 200
            assert last_keep_alive(upstream) == "5m"  # as it came
        # without a socket of systemd's it takes no address on a guess
        with gateway_process(policy, tmp_path) as (served, notify):
            notify.wait_for("READY", "1")
            served.wait_event(r"^<4>gateway_off .*no socket passed")
    finally:
        held.close()
        upstream.stop()


# -- the drain -----------------------------------------------------------------------------------


class Stream:
    """A streamed generation through the gateway, read in a thread."""

    def __init__(self, url: str, **body: object) -> None:
        self.chunks: list[dict[str, object]] = []
        self.error: BaseException | None = None
        self.first = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, body), daemon=True)
        self._thread.start()

    def _read(self, url: str, body: dict[str, object]) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{url}/api/generate",
                json={"model": PINNED, "prompt": "x", **body},
                timeout=30,
            ) as answer:
                for line in answer.iter_lines():
                    if line.strip():
                        self.chunks.append(json.loads(line))
                        self.first.set()
        except BaseException as exc:  # reported by done()
            self.error = exc
        finally:
            self.first.set()

    def done(self, timeout: float = 30) -> bool:
        """Whether the stream ended with its ``done: true`` chunk."""
        self._thread.join(timeout)
        return self.error is None and bool(self.chunks) and self.chunks[-1].get("done") is True


def slow(double: OllamaDouble) -> None:
    double.reply_tokens = tuple(f"t{i} " for i in range(STREAM_TOKENS))
    double.token_seconds = 0.1


def test_a_stop_drains_a_stream_and_refuses_nothing_it_accepted(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", double, port)
    slow(double)
    with gateway_process(policy, tmp_path) as (served, notify):
        notify.wait_for("READY", "1")
        stream = Stream(url)
        assert stream.first.wait(WAIT)
        stopped = time.monotonic()
        served.signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        # it accepts no more (its own socket is closed; systemd's would queue them)
        wait_until("the port closed", lambda: _refused(port), timeout=5)
        assert stream.done(), stream.error
        assert served.wait(timeout=WAIT) == 0
        assert time.monotonic() - stopped > 1.0  # it waited for the stream
        served.wait_event(r"^<6>gateway_drained .*cut=0 ")


def test_what_outlives_gateway_drain_is_cut_and_counted(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", double, port, extra="  drain: 1s\n")
    slow(double)
    double.token_seconds = 0.5  # 15 s
    with gateway_process(policy, tmp_path) as (served, notify):
        notify.wait_for("READY", "1")
        stream = Stream(url)
        assert stream.first.wait(WAIT)
        stopped = time.monotonic()
        served.signal(signal.SIGTERM)
        assert served.wait(timeout=WAIT) == 0
        assert time.monotonic() - stopped < 5  # 1 s of drain, then the cut
        assert not stream.done()
        served.wait_event(r"^<4>gateway_drained .*cut=1 drain=1s")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# -- the upgrade ---------------------------------------------------------------------------------


def test_an_upgrade_hands_the_socket_over_refusing_and_cutting_nothing(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", double, port)
    slow(double)
    new_pid = 0
    with gateway_process(policy, tmp_path) as (served, notify):
        try:
            notify.wait_for("READY", "1")
            stream = Stream(url)
            assert stream.first.wait(WAIT)
            answers: list[int | str] = []
            stop = threading.Event()

            def client() -> None:
                with httpx.Client(timeout=WAIT) as http:
                    while not stop.is_set():
                        try:
                            answers.append(http.get(f"{url}/api/version").status_code)
                        except httpx.HTTPError as exc:
                            answers.append(repr(exc))
                        time.sleep(0.02)

            asker = threading.Thread(target=client, daemon=True)
            asker.start()
            served.signal(signal.SIGUSR2)
            handed = notify.wait_for("MAINPID", timeout=30)
            new_pid = int(handed.fields["MAINPID"])
            assert handed.fields.get("READY") == "1" and new_pid != served.pid
            served.wait_event(r"^<6>gateway_listening .*socket=handed_over")
            assert stream.done(), stream.error  # the old process finished it
            assert served.wait(timeout=WAIT) == 0  # then left
            time.sleep(0.5)
            stop.set()
            asker.join(timeout=WAIT)
            failed = [a for a in answers if a != 200]
            assert not failed and len(answers) > 20, (failed[:3], len(answers))
            # the new process serves, and it is the one systemd now follows
            assert httpx.get(f"{url}/api/version", timeout=WAIT).status_code == 200
            assert os.path.exists(f"/proc/{new_pid}")
            # a notification after the hand-over comes from the new process only
            assert not notify.with_field("STOPPING")
        finally:
            if new_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(new_pid, signal.SIGTERM)
                wait_until("the new process gone", lambda: not _running(new_pid), timeout=WAIT)


def test_the_next_process_taking_its_copy_of_the_socket_leaves_the_old_one_accepting(
    tmp_path: Path, double: OllamaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_NONBLOCK belongs to the open socket, which both processes hold at an upgrade: the
    new one must not make it blocking while the old one still accepts on it (its event loop
    would block in accept(), holding a client's connection unread), here in the instant
    between the new process's taking its copy and its serving."""
    held = socket.socket()  # as systemd's socket unit holds it; the old process serves on it
    held.bind(("127.0.0.1", 0))
    held.listen(64)
    port = held.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    policy_path = write_policy(tmp_path / "policy.yaml", double, port)
    answers: list[int | str] = []

    def ask() -> None:
        try:
            answers.append(httpx.get(f"{url}/api/version", timeout=WAIT).status_code)
        except httpx.HTTPError as exc:
            answers.append(repr(exc))

    serve = GatewayServer.start

    def start(self: GatewayServer) -> None:  # the new process, its copy taken, not serving
        ask()
        serve(self)

    monkeypatch.setattr(GatewayServer, "start", start)
    with held, gateway_process(policy_path, tmp_path, listen_socket=held) as (_, notify):
        notify.wait_for("READY", "1")
        ask()  # the old process serves
        # the new process's side, in this one: the socket as an upgrade hands it over
        handed, _ = take_handed_sockets({HANDED_FDS: str(os.dup(held.fileno()))})
        part = gateway_part(load_policy(str(policy_path)))
        assert part is not None
        gateway = Gateway(part, lambda _: None, inherited=handed[0], inherited_from="handed_over")
        try:
            gateway.update(part, None)
            assert gateway.port == port
            ask()  # either process answers
        finally:
            gateway.stop()
            handed[0].close()
    assert answers == [200, 200, 200]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# -- beside the keeper ---------------------------------------------------------------------------


def test_the_keeper_killed_mid_stream_costs_clients_nothing(
    tmp_path: Path, double: OllamaDouble
) -> None:
    """The independent check's scenario: both processes, SIGKILL to the keeper during a
    slow stream; the pin still holds while it is dead, and a broken policy with SIGHUP to
    the gateway changes nothing for clients."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", double, port)
    notify = NotifySocket(tmp_path / "keeper.sock")
    keeper = DaemonProcess(policy, tmp_path, notify)
    try:
        with gateway_process(policy, tmp_path) as (served, gateway_notify):
            notify.wait_for("READY", "1")
            gateway_notify.wait_for("READY", "1")
            wait_until(
                "the keeper's view",
                lambda: (
                    view_path(tmp_path / "state").exists()
                    and decode_view(view_path(tmp_path / "state").read_text()).observation
                ),
            )
            slow(double)
            stream = Stream(url)
            assert stream.first.wait(WAIT)
            keeper.proc.kill()
            keeper.wait()
            request = {"model": PINNED, "prompt": "x", "stream": False, "keep_alive": "5m"}
            answer = httpx.post(f"{url}/api/generate", json=request, timeout=WAIT)
            assert answer.status_code == 200
            assert last_keep_alive(double) == -1
            assert stream.done(), stream.error
            policy.write_text(policy.read_text() + "gateway: [\n")
            served.signal(signal.SIGHUP)
            served.wait_event(r"^<3>policy_rejected ")
            answer = httpx.post(f"{url}/api/generate", json=request, timeout=WAIT)
            assert answer.status_code == 200
            assert last_keep_alive(double) == -1
            # the keeper's view ages out: the foreign rule says so, the pin does not care
            served.wait_event(r"^<4>gateway_degraded why=view_stale ", timeout=10)
            assert served.alive()
    finally:
        keeper.kill()
        notify.close()


def test_the_keeper_publishes_its_look_after_passes_and_watch_looks(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port = free_port()
    policy = tmp_path / "policy.yaml"
    # passes a minute apart: between them the watch looks at /api/ps every 2 s
    policy.write_text(
        f"interval: 60s\nollama:\n  url: {double.url}\nmetrics:\n  listen: null\n"
        f"gateway:\n  listen: 127.0.0.1:{port}\nmodels:\n  - name: {PINNED}\n"
    )
    notify = NotifySocket(tmp_path / "keeper.sock")
    keeper = DaemonProcess(policy, tmp_path, notify)
    path = view_path(tmp_path / "state")
    try:
        notify.wait_for("READY", "1")

        def seen() -> View | None:
            view = decode_view(path.read_text()) if path.exists() else None
            return view if view is not None and view.observation is not None else None

        first = wait_until("a view", seen)
        assert first.instance == "default"
        assert first.observation is not None
        assert [m.name for m in first.observation.loaded] == [PINNED]
        # a model loaded by a client between passes shows at the next watch look
        httpx.post(f"{double.url}/api/generate", json={"model": FOREIGN}, timeout=WAIT)

        def with_foreign() -> View | None:
            view = seen()
            names = (
                {m.name for m in view.observation.loaded} if view and view.observation else set()
            )
            return view if FOREIGN in names else None

        later = wait_until("the watch's look in the view", with_foreign, timeout=8)
        assert later.written > first.written
        assert later.observation is not None and first.observation is not None
        assert later.observation.at > first.observation.at
        assert len(double.requests_to("/api/ps")) >= 2
    finally:
        keeper.stop()
        notify.close()


# -- /sentinel-keeper/ready on the gateway's address -------------------------------------------


def test_the_gateway_s_ready_answers_from_the_keeper_then_from_its_own_look(
    tmp_path: Path, double: OllamaDouble
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    policy = write_policy(tmp_path / "policy.yaml", double, port)
    notify = NotifySocket(tmp_path / "keeper.sock")
    keeper = DaemonProcess(policy, tmp_path, notify)
    try:
        with gateway_process(policy, tmp_path) as (served, gateway_notify):
            notify.wait_for("READY", "1")
            gateway_notify.wait_for("READY", "1")

            def ready(query: str = "") -> httpx.Response:
                return httpx.get(f"{url}/sentinel-keeper/ready{query}", timeout=WAIT)

            first = wait_until(
                "the keeper's /ready through the gateway",
                # the keeper's view is written every few seconds: its first may predate the load
                lambda: (
                    (r := ready()).json().get("source") == "keeper" and r.status_code == 200 and r
                ),
            )
            assert first.status_code == 200 and first.json()["ready"] is True
            assert first.json()["instance"] == "default" and "degraded" not in first.json()
            head = httpx.head(f"{url}/sentinel-keeper/ready", timeout=WAIT)
            assert head.status_code == 200 and head.content == b""
            assert ready("?model=other:7b").status_code == 404
            assert ready("?colour=red").status_code == 400
            posted = httpx.post(f"{url}/sentinel-keeper/ready", timeout=WAIT)
            assert posted.status_code == 405 and posted.headers["Allow"] == "GET, HEAD"
            assert httpx.get(f"{url}/sentinel-keeper/live", timeout=WAIT).json()["live"] is True
            before = len(double.requests)
            # the keeper gone: the gateway asks Ollama itself, and the host stays in rotation
            keeper.proc.kill()
            keeper.wait()
            served.wait_event(r"^<4>gateway_degraded why=view_stale ", timeout=10)
            own = ready()
            assert own.status_code == 200, own.json()
            assert own.json()["source"] == "gateway" and own.json()["degraded"] == "view_stale"
            # a client unloads the pinned model: 503 from the gateway's own look
            httpx.post(f"{double.url}/api/generate", json={"model": PINNED, "keep_alive": 0})
            wait_until("unloaded", lambda: not double.loaded())
            time.sleep(1.1)  # the gateway's look is reused for a second
            missing = ready()
            assert missing.status_code == 503
            assert missing.json()["missing"] == [PINNED]
            live = httpx.get(f"{url}/sentinel-keeper/live", timeout=WAIT).json()
            assert live == {"live": True, "why": "the gateway serves", "degraded": "view_stale"}
            # balancer checks are not client traffic, and reach Ollama only as /api/ps looks
            paths = {r.path for r in double.requests[before:]}
            assert paths <= {"/api/ps", "/api/generate"}
            data = decode_figures(figures_path(tmp_path / "state").read_text())
            assert not any(e == "other" for _, e, _ in data.figures.requests)
    finally:
        keeper.kill()
        notify.close()
