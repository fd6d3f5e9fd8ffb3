"""The gateway in front of the Ollama double, over real HTTP on 127.0.0.1: the official
clients through it, what it relays untouched, what its rules change, and how it copes with
clients and an Ollama that misbehave."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from sentinel_keeper.metrics.families import MetricsView, families
from tests.support.daemon import free_port, wait_until
from tests.support.gateway import FOREIGN, PINNED, Running, running_gateway
from tests.support.ollama_double import FakeModel, GiB, ManualClock, MiB, OllamaDouble

TIMING = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    models = [FakeModel(PINNED, size=800 * MiB), FakeModel(FOREIGN, size=4 * GiB)]
    # a clock that stands still: answers that carry the time are the same twice
    server = OllamaDouble(models, vram_total=8 * GiB, clock=ManualClock()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gw(double: OllamaDouble, tmp_path: Path) -> Iterator[Running]:
    with running_gateway(double, tmp_path) as running:
        yield running


def untimed(body: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in body.items() if k not in TIMING}


# --- the official clients -------------------------------------------------------------------


def test_the_ollama_client_generates_chats_and_embeds_through_it(gw: Running) -> None:
    client = ollama.Client(host=gw.url, timeout=10)
    assert client.generate(model=PINNED, prompt="hi").response == "Hello, world"
    parts = list(client.generate(model=PINNED, prompt="hi", stream=True))
    assert "".join(p.response or "" for p in parts) == "Hello, world" and parts[-1].done
    chat = client.chat(model=PINNED, messages=[{"role": "user", "content": "hi"}])
    assert chat.message.content == "Hello, world"
    assert len(client.embed(model=PINNED, input=["a", "b"]).embeddings) == 2
    assert [m.model for m in client.ps().models] == [PINNED]


def test_an_openai_client_chats_and_embeds_through_it(gw: Running) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", timeout=10, max_retries=0)
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "hi"}
    ]
    answer = client.chat.completions.create(model=PINNED, messages=messages)
    assert answer.choices[0].message.content == "Hello, world"
    streamed = client.chat.completions.create(model=PINNED, messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "Hello, world"
    assert len(client.embeddings.create(model=PINNED, input="a").data) == 1
    # the /v1 endpoints carry no load_duration: neither cold nor warm
    assert gw.gateway.figures().cold == {}


# --- relayed as it came ---------------------------------------------------------------------


def test_an_unchanged_request_gets_the_same_answer_as_from_ollama(
    gw: Running, double: OllamaDouble
) -> None:
    request = {"model": PINNED, "prompt": "hi", "stream": False, "keep_alive": -1}
    request["options"] = {"num_ctx": 8192}
    direct = httpx.post(double.url + "/api/generate", json=request, timeout=10)
    relayed = httpx.post(gw.url + "/api/generate", json=request, timeout=10)
    assert relayed.status_code == direct.status_code == 200
    assert untimed(relayed.json()) == untimed(direct.json())
    assert relayed.headers["content-type"] == direct.headers["content-type"]
    # the request reached Ollama byte for byte (no change to make)
    assert double.requests_to("/api/generate")[-1].body == request
    for path in ("/api/tags", "/api/ps", "/api/version", "/"):
        a, b = httpx.get(double.url + path), httpx.get(gw.url + path)
        assert (b.status_code, b.content) == (a.status_code, a.content)
    show = {"model": PINNED}
    a, b = (
        httpx.post(double.url + "/api/show", json=show),
        httpx.post(gw.url + "/api/show", json=show),
    )
    assert (b.status_code, b.content) == (a.status_code, a.content)
    missing = httpx.get(gw.url + "/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert gw.named("gateway_changed") == []


def test_a_body_ollama_would_refuse_is_a_400_in_its_shape_and_not_forwarded(
    gw: Running, double: OllamaDouble
) -> None:
    for body in (b"{not json", b"[1, 2]", b"", b" \n"):
        direct = httpx.post(double.url + "/api/generate", content=body)
        before = len(double.requests_to("/api/generate"))
        relayed = httpx.post(gw.url + "/api/generate", content=body)
        assert relayed.status_code == direct.status_code == 400
        assert set(relayed.json()) == {"error"} and relayed.json()["error"]
        assert len(double.requests_to("/api/generate")) == before  # never reached Ollama
    empty = httpx.post(gw.url + "/api/generate", content=b"")
    assert empty.json() == {"error": "missing request body"}  # Ollama's own words


def test_answers_stream_through_chunk_by_chunk(double: OllamaDouble, gw: Running) -> None:
    double.token_seconds = 0.4  # three tokens: about a second between the first and the end
    double.reply_tokens = ("a", "b", "c", "d")
    seen: list[float] = []
    with httpx.stream(
        "POST", gw.url + "/api/generate", json={"model": PINNED, "prompt": "x"}, timeout=10
    ) as answer:
        for line in answer.iter_lines():
            if line:
                seen.append(time.monotonic())
    assert len(seen) == 5
    assert seen[-1] - seen[0] > 0.8  # the first line came long before the stream ended
    events: list[float] = []
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={"model": PINNED, "messages": [{"role": "user", "content": "x"}], "stream": True},
        timeout=10,
    ) as answer:
        assert answer.headers["content-type"] == "text/event-stream"
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(time.monotonic())
    assert len(events) == 6  # four tokens, the end, [DONE]
    assert events[-1] - events[0] > 0.8


def test_uploads_stream_to_ollama_before_the_client_has_sent_them_whole(
    tmp_path: Path, double: OllamaDouble
) -> None:
    """An upstream that answers once it has a first part of the body: the gateway must pass
    the part on while the client holds the rest back."""
    listener = socket.create_server(("127.0.0.1", 0))
    got_first = threading.Event()

    def upstream() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while b"FIRST" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            got_first.set()
            while not data.endswith((b"LAST", b"LAST\r\n0\r\n\r\n")):
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def body() -> Iterator[bytes]:
        yield b"FIRST" + b"x" * 100_000
        assert got_first.wait(5), "the gateway held the first part back"
        yield b"LAST"

    try:
        with running_gateway(double, tmp_path, upstream=url) as gw:
            answer = httpx.post(
                gw.url + "/api/blobs/sha256:" + "0" * 64, content=body(), timeout=10
            )
            assert answer.status_code == 201
    finally:
        listener.close()
        thread.join(timeout=5)


def test_a_blob_larger_than_max_body_is_uploaded(gw: Running, double: OllamaDouble) -> None:
    blob = b"\x01" * (20 * MiB)  # over the 16 MiB max_body of JSON requests
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert httpx.head(gw.url + "/api/blobs/" + digest).status_code == 404
    created = httpx.post(gw.url + "/api/blobs/" + digest, content=blob, timeout=30)
    assert (created.status_code, created.content) == (201, b"")
    assert httpx.head(gw.url + "/api/blobs/" + digest).status_code == 200
    assert double.blobs == {digest: len(blob)}
    wrong = httpx.post(gw.url + "/api/blobs/sha256:" + "0" * 64, content=b"abc")
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]


# --- what the rules change ------------------------------------------------------------------


def test_a_pinned_model_keeps_its_pin_and_the_change_is_logged_once(
    gw: Running, double: OllamaDouble
) -> None:
    request = {"model": PINNED, "prompt": "hi", "keep_alive": "5m", "stream": False}
    request["options"] = {"num_ctx": 8192}
    for _ in range(3):
        assert httpx.post(gw.url + "/api/generate", json=request, timeout=10).status_code == 200
    loaded = double.instance(PINNED)
    assert loaded is not None and loaded.forever
    assert double.requests_to("/api/generate")[-1].body["keep_alive"] == -1
    (changed,) = wait_until("the change logged", lambda: gw.named("gateway_changed"))
    assert changed.fields["model"] == PINNED
    assert changed.fields["field"] == "keep_alive"
    assert (changed.fields["before"], changed.fields["after"]) == ("5m", -1)
    assert changed.fields["client"] == "127.0.0.1"
    assert str(changed.fields["user_agent"]).startswith("python-httpx/")
    assert changed.fields["instance"] == "default"
    # another client program: said again
    other = httpx.post(
        gw.url + "/api/generate", json=request, headers={"User-Agent": "other/1"}, timeout=10
    )
    assert other.status_code == 200
    wait_until("the second client's change logged", lambda: len(gw.named("gateway_changed")) == 2)
    wait_until(
        "four changes counted",
        lambda: gw.gateway.figures().changes == {(PINNED, "keep_alive"): 4},
    )
    assert len(gw.named("gateway_changed")) == 2


def test_a_smaller_num_ctx_is_raised_and_a_larger_one_passed(
    gw: Running, double: OllamaDouble
) -> None:
    def generate(num_ctx: int) -> None:
        request = {
            "model": PINNED,
            "prompt": "hi",
            "stream": False,
            "options": {"num_ctx": num_ctx},
        }
        assert httpx.post(gw.url + "/api/generate", json=request, timeout=10).status_code == 200

    generate(8192)
    assert double.load_count == 1
    generate(2048)
    assert double.requests_to("/api/generate")[-1].body["options"]["num_ctx"] == 8192
    assert double.load_count == 1  # not reloaded
    generate(16384)
    assert double.requests_to("/api/generate")[-1].body["options"]["num_ctx"] == 16384
    assert double.load_count == 2  # that one truly needs the larger context
    wait_until(
        "the change counted",
        lambda: gw.gateway.figures().changes == {(PINNED, "options.num_ctx"): 1},
    )
    wait_until(
        "the reload counted",
        lambda: gw.gateway.figures().reloads == {(PINNED, "16384"): 1},
    )
    generate(16384)
    wait_until("again", lambda: gw.gateway.figures().reloads == {(PINNED, "16384"): 2})
    (said,) = gw.named("gateway_client_reload")  # once per client, model and num_ctx
    assert said.fields["num_ctx"] == 16384 and said.fields["model"] == PINNED


@pytest.mark.parametrize("foreign", ["reject", "queue", "cpu"])
def test_a_foreign_model_that_does_not_fit(
    double: OllamaDouble, tmp_path: Path, foreign: str
) -> None:
    rules = f"  foreign: {foreign}\n  queue_timeout: 10s\n"
    with running_gateway(double, tmp_path, gateway=rules) as gw:
        gw.feed(free=1 * GiB)
        request = {"model": FOREIGN, "prompt": "hi", "stream": False}
        if foreign == "reject":
            answer = httpx.post(gw.url + "/api/generate", json=request, timeout=10)
            assert answer.status_code == 503
            assert "does not fit beside the pinned models" in answer.json()["error"]
            assert double.requests_to("/api/generate") == []
            assert len(gw.named("gateway_rejected")) == 1
        elif foreign == "cpu":
            answer = httpx.post(gw.url + "/api/generate", json=request, timeout=10)
            assert answer.status_code == 200
            assert double.requests_to("/api/generate")[-1].body["options"] == {"num_gpu": 0}
        else:
            done: list[httpx.Response] = []
            waiting = threading.Thread(
                target=lambda: done.append(
                    httpx.post(gw.url + "/api/generate", json=request, timeout=15)
                )
            )
            waiting.start()
            time.sleep(1.2)
            assert done == [] and double.requests_to("/api/generate") == []
            gw.feed(free=8 * GiB)  # memory freed: the next look lets it through
            waiting.join(timeout=10)
            assert [r.status_code for r in done] == [200]
            assert len(double.requests_to("/api/generate")) == 1


def test_a_queued_request_gives_up_after_queue_timeout(
    double: OllamaDouble, tmp_path: Path
) -> None:
    with running_gateway(double, tmp_path, gateway="  foreign: queue\n  queue_timeout: 1s\n") as gw:
        gw.feed(free=1 * GiB)
        started = time.monotonic()
        answer = httpx.post(gw.url + "/api/generate", json={"model": FOREIGN}, timeout=10)
        assert answer.status_code == 503
        assert "gateway.queue_timeout" in answer.json()["error"]
        assert 0.9 < time.monotonic() - started < 3


# --- bad clients, bad upstream --------------------------------------------------------------


def test_a_client_that_leaves_aborts_its_load(double: OllamaDouble, gw: Running) -> None:
    double.load_seconds = 3.0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/api/generate", json={"model": PINNED, "prompt": "x"}, timeout=0.5)
    wait_until("the load aborted", lambda: double.aborted_loads == 1, timeout=5)
    assert double.loaded() == []


def test_ollama_down_is_a_502_with_a_clear_error(double: OllamaDouble, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with running_gateway(double, tmp_path, upstream=down) as gw:
        for path in ("/api/tags", "/api/generate"):
            answer = httpx.post(gw.url + path, json={"model": PINNED}, timeout=10)
            assert answer.status_code == 502
            error = answer.json()["error"]
            assert error.startswith(f"sentinel-keeper gateway: ollama at {down} is unreachable:")
        again = httpx.post(gw.url + "/api/generate", json={"model": PINNED}, timeout=10)
        assert again.status_code == 502
        # once per model a minute: the model-less request and the model's, not the repeat
        assert len(gw.named("gateway_upstream_unreachable")) == 2


def test_a_body_over_max_body_is_a_413(double: OllamaDouble, tmp_path: Path) -> None:
    with running_gateway(double, tmp_path, gateway="  max_body: 1KiB\n") as gw:
        big = {"model": PINNED, "prompt": "x" * 2048}
        answer = httpx.post(gw.url + "/api/generate", json=big, timeout=10)
        assert answer.status_code == 413
        assert "gateway.max_body" in answer.json()["error"]
        small = httpx.post(gw.url + "/api/generate", json={"model": PINNED, "stream": False})
        assert small.status_code == 200


def test_a_slow_client_is_cut_off_and_others_are_served(
    double: OllamaDouble, tmp_path: Path
) -> None:
    with running_gateway(double, tmp_path, header_timeout=1.0) as gw:
        slow = socket.create_connection(("127.0.0.1", gw.gateway.port or 0), timeout=10)
        slow.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 6:
            assert httpx.get(gw.url + "/api/version", timeout=2).status_code == 200
            try:
                slow.sendall(b"X-Drip: 1\r\n")
                slow.settimeout(0.3)
                if slow.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        slow.close()
        assert closed, "a client that never finishes its headers kept its connection"
        assert time.monotonic() - started < 4


@pytest.mark.slow
def test_a_thousand_idle_connections_do_not_stop_a_request(
    double: OllamaDouble, gw: Running
) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    idle = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", gw.gateway.port or 0), timeout=5))
        started = time.monotonic()
        answer = httpx.post(
            gw.url + "/api/generate", json={"model": PINNED, "prompt": "x", "stream": False}
        )
        assert answer.status_code == 200
        assert time.monotonic() - started < 2
    finally:
        for conn in idle:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- what it measures -----------------------------------------------------------------------


def test_cold_and_warm_requests_are_told_apart_with_their_cause(
    double: OllamaDouble, gw: Running
) -> None:
    double.load_seconds = 0.7
    gw.feed(free=7 * GiB)  # the keeper's last look: nothing loaded
    request = {"model": PINNED, "prompt": "x", "options": {"num_ctx": 8192}}
    for _ in range(2):
        with httpx.stream("POST", gw.url + "/api/generate", json=request, timeout=10) as r:
            r.read()
    # a request is counted once its answer is over, as the client reads the end
    wait_until("both counted", lambda: sum(gw.gateway.figures().requests.values()) == 2)
    figures = gw.gateway.figures()
    assert figures.cold == {(PINNED, "not_loaded"): 1}
    assert figures.requests[(PINNED, "/api/generate", "200")] == 2
    assert figures.recent[PINNED].requests == 2 and figures.recent[PINNED].share == 0.5
    assert figures.ttfb[PINNED].count == 2
    view = MetricsView((), {}, version="t", python="3", started_unix=0.0, gateway=figures)
    samples = {f.spec.name: f for f in families(view, mono=0.0)}
    share = samples["sentinel_keeper_gateway_cold_share"].samples
    assert share == ((("default", PINNED), 0.5),)
    cold = dict(samples["sentinel_keeper_gateway_cold_requests"].samples)
    assert cold == {
        ("default", PINNED, "not_loaded"): 1,
        ("default", PINNED, "other_num_ctx"): 0,
        ("default", PINNED, "unknown"): 0,
    }
    assert dict(samples["sentinel_keeper_gateway_up"].samples) == {("default",): 1}
    off = MetricsView((), {}, version="t", python="3", started_unix=0.0)
    assert all(
        not f.samples and not f.histograms
        for f in families(off, mono=0.0)
        if "gateway" in f.spec.name
    )


def test_a_taken_port_is_logged_once_and_retried(double: OllamaDouble, tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    from sentinel_keeper.gateway.runner import Gateway
    from sentinel_keeper.policy.loading import load_policy
    from tests.support.gateway import write_policy

    policy = load_policy(str(write_policy(tmp_path / "p.yaml", double.url, port=port)))
    events: list[object] = []
    made = Gateway(policy, events.append)
    try:
        made.update(policy, None)
        made.update(policy, None)
        assert made.port is None
        assert [e.event for e in events] == ["gateway_unavailable"]  # type: ignore[attr-defined]
        error = str(events[0].fields["error"])  # type: ignore[attr-defined]
        # the setting to change, and what holds the port (this test's own process)
        assert f"127.0.0.1:{port} (gateway.listen)" in error, error
        assert f"held by pid {os.getpid()} " in error, error
        taken.close()
        made.update(policy, None)
        assert made.port == port
        assert httpx.get(f"http://127.0.0.1:{port}/api/version").status_code == 200
    finally:
        taken.close()
        made.stop()
    assert json.dumps([e.event for e in events]) == json.dumps(  # type: ignore[attr-defined]
        ["gateway_unavailable", "gateway_listening", "gateway_stopped", "gateway_drained"]
    )
