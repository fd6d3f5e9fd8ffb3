"""The gateway takes requests as Ollama's Go server does, over real sockets on 127.0.0.1:
which request targets it relays (and where), how it reads a model request's body (Go's
encoding/json: key case, duplicates, trailing data, bad UTF-8, number forms), Expect:
100-continue, malformed requests, header limits, and what it adds to an answer (nothing)."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.support.daemon import wait_until
from tests.support.gateway import PINNED, Running, running_gateway
from tests.support.ollama_double import FakeModel, GiB, ManualClock, MiB, OllamaDouble

IO_SECONDS = 5.0


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble(
        [FakeModel(PINNED, size=800 * MiB)], vram_total=8 * GiB, clock=ManualClock()
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gw(double: OllamaDouble, tmp_path: Path) -> Iterator[Running]:
    with running_gateway(double, tmp_path) as running:
        yield running


class Trap:
    """A loopback listener that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ntrap")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send ``data`` on a new connection and read the answer: until the gateway closes the
    connection (bounded), or, without ``until_close``, the first chunk."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_SECONDS) as sock:
        sock.sendall(data)
        answer = b""
        deadline = time.monotonic() + IO_SECONDS
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return answer
            answer += chunk
            if not until_close:
                return answer
        raise AssertionError(f"the connection stayed open: {answer[:300]!r}")


def head_of(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


# --- request targets: only paths, only to Ollama ----------------------------------------------


def test_only_paths_are_relayed_and_only_to_ollama(gw: Running, double: OllamaDouble) -> None:
    trap = Trap()
    try:
        targets = [
            ("CONNECT", f"@127.0.0.1:{trap.port}", "405"),
            ("CONNECT", f"127.0.0.1:{trap.port}", "405"),
            ("GET", f"@127.0.0.1:{trap.port}/api/version", "400"),
            ("GET", f"http://127.0.0.1:{trap.port}/api/version", "400"),
            ("GET", f"127.0.0.1:{trap.port}", "400"),
            ("POST", f"@127.0.0.1:{trap.port}/api/generate", "400"),
        ]
        for method, where, status in targets:
            request = f"{method} {where} HTTP/1.1\r\nHost: 127.0.0.1:{trap.port}\r\n\r\n"
            line, headers, body = head_of(exchange(gw.gateway.port or 0, request.encode()))
            assert line.startswith(f"HTTP/1.1 {status} "), (where, line)
            if headers["content-type"].startswith("application/json"):  # else aiohttp's own
                assert set(json.loads(body)) == {"error"}
        assert trap.accepted == 0  # nothing reached the other port
        assert double.requests == []  # nor Ollama: refused, not relayed
        assert gw.named("gateway_upstream_unreachable") == []
    finally:
        trap.close()


@pytest.mark.parametrize("path", ["//api/generate", "/api/./generate", "/x/../api/generate"])
def test_a_path_go_would_redirect_is_redirected_not_relayed(
    gw: Running, double: OllamaDouble, path: str
) -> None:
    body = json.dumps({"model": PINNED, "prompt": "hi", "keep_alive": 0}).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    line, headers, _ = head_of(exchange(gw.gateway.port or 0, request + body))
    assert line.startswith("HTTP/1.1 301 ")  # as Go's ServeMux answers: no handler runs
    assert headers["location"] == "/api/generate"
    assert double.requests == []


def test_an_escaped_path_is_read_as_go_routes_it(gw: Running, double: OllamaDouble) -> None:
    body = {"model": PINNED, "prompt": "hi", "keep_alive": "5m", "stream": False}
    httpx.post(gw.url + "/api/%67enerate", json=body, timeout=10)
    (seen,) = double.requests_to("/api/%67enerate")  # relayed as it came
    assert seen.body["keep_alive"] == -1  # and the rules applied: Go routes it to generate


# --- the body, as Go reads it -------------------------------------------------------------------

GO_SPELLINGS: list[tuple[str, bytes]] = [
    ("key case", b'{"model":"llama3.2:1b","prompt":"hi","Keep_Alive":0}'),
    ("upper key", b'{"model":"llama3.2:1b","prompt":"hi","KEEP_ALIVE":"5m"}'),
    ("last key wins", b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":-1,"keep_ALIVE":"1s"}'),
    ("kelvin sign", '{"model":"llama3.2:1b","prompt":"hi","\u212aeep_alive":"5m"}'.encode()),
    ("Model", b'{"Model":"llama3.2:1b","prompt":"hi","keep_alive":"5m"}'),
    ("model name case", b'{"model":"LLAMA3.2:1B","prompt":"hi","keep_alive":"5m"}'),
    ("trailing bytes", b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":"5m"} x'),
    ("a second value", b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":"5m"}{"a":1}'),
    ("bad UTF-8", b'{"model":"llama3.2:1b","prompt":"h\xffi","keep_alive":"5m"}'),
    ("lone surrogate", b'{"model":"llama3.2:1b","prompt":"\\ud800","keep_alive":"5m"}'),
    ("tiny number", b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":1e-10}'),
]


@pytest.mark.parametrize(("case", "raw"), GO_SPELLINGS, ids=[c for c, _ in GO_SPELLINGS])
def test_a_pin_holds_against_every_spelling_go_reads(
    gw: Running, double: OllamaDouble, case: str, raw: bytes
) -> None:
    answer = httpx.post(gw.url + "/api/generate", content=raw, timeout=10)
    assert answer.status_code == 200, (case, answer.text)
    (seen,) = double.requests_to("/api/generate")
    forwarded = seen.body
    assert isinstance(forwarded, dict), (case, forwarded)  # valid JSON
    assert forwarded["keep_alive"] == -1, case
    spellings = [k for k in forwarded if k.lower() in ("keep_alive", "\u212aeep_alive")]
    assert spellings == ["keep_alive"], case  # one, by its exact name: no second reading
    loaded = double.instance(PINNED)
    assert loaded is not None and loaded.forever, case


@pytest.mark.parametrize(
    "options",
    [
        b'"options":{"num_ctx":512}',
        b'"Options":{"num_ctx":512}',
        b'"options":{"num_ctx":1024.0}',
        b'"options":{"num_ctx":512.5}',
        b'"options":{"num_ctx":8192},"OPTIONS":{"num_ctx":2048}',  # merged, the last wins
        b'"options":{"num_ctx":null}',  # skipped by Ollama: its default
    ],
)
def test_num_ctx_is_kept_for_every_spelling_go_reads(
    gw: Running, double: OllamaDouble, options: bytes
) -> None:
    gw.feed(free=6 * GiB)  # an 8 GiB GPU: Ollama's default num_ctx is 4096
    raw = b'{"model":"llama3.2:1b","prompt":"hi","stream":false,' + options + b"}"
    assert httpx.post(gw.url + "/api/generate", content=raw, timeout=10).status_code == 200
    (seen,) = double.requests_to("/api/generate")
    assert [k for k in seen.body if k.lower() == "options"] == ["options"]
    assert seen.body["options"]["num_ctx"] == 8192


@pytest.mark.parametrize(
    "raw",
    [
        b'\xef\xbb\xbf{"model":"llama3.2:1b","keep_alive":"5m"}',  # a BOM
        '{"model":"llama3.2:1b","keep_alive":"5m"}'.encode("utf-16"),
        '{"model":"llama3.2:1b","keep_alive":"5m"}'.encode("utf-16-le"),
        b'{"model":"llama3.2:1b","prompt":"hi","options":{"num_ctx":512,"top_k":1e309}}',
        b'{"model":"llama3.2:1b","keep_alive":NaN}',
        b'{"model":"llama3.2:1b","keep_alive":"300"}',  # Go: missing unit
        b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":1e10}',  # past int64 nanoseconds
    ],
)
def test_a_body_ollama_refuses_is_refused_not_forwarded(
    gw: Running, double: OllamaDouble, raw: bytes
) -> None:
    answer = httpx.post(gw.url + "/api/generate", content=raw, timeout=10)
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"}
    assert double.requests_to("/api/generate") == []


def test_a_rewritten_body_is_json_with_numbers_as_they_came(
    gw: Running, double: OllamaDouble
) -> None:
    raw = (
        b'{"model":"llama3.2:1b","prompt":"hi","stream":false,"keep_alive":"5m",'
        b'"context":[1,2],"seed":12345678901234567890,'
        b'"options":{"num_ctx":512,"temperature":1e308,"top_p":0.1}}'
    )
    assert httpx.post(gw.url + "/api/generate", content=raw, timeout=10).status_code == 200

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    (seen,) = double.requests_to("/api/generate")
    assert isinstance(seen.body, dict)
    assert seen.body["seed"] == 12345678901234567890  # not through a float
    assert seen.body["options"] == {"num_ctx": 8192, "temperature": 1e308, "top_p": 0.1}
    again = json.dumps(seen.body)
    json.loads(again, parse_constant=refuse)


# --- refusing to unload a pinned model (what `ollama stop` sends) ----------------------------


def test_ollama_stop_on_a_pinned_model_is_an_error_that_says_why(
    gw: Running, double: OllamaDouble
) -> None:
    client = ollama.Client(host=gw.url, timeout=10)
    client.generate(model=PINNED)  # loaded
    for name, value in ((PINNED, 0), ("LLAMA3.2:1B", "0s"), (PINNED, 0), (PINNED, "0")):
        with pytest.raises(ollama.ResponseError) as refused:
            client.generate(model=name, keep_alive=value)
        assert refused.value.status_code == 403
        error = refused.value.error
        assert "pinned" in error and "gateway.allow_unload" in error
        assert "not found" not in error  # `ollama stop` would say it cannot find the model
    assert double.instance(PINNED) is not None
    assert [r.body.get("keep_alive") for r in double.requests_to("/api/generate")] == [None]
    # each value refused is said, once a minute at most for one client
    said = wait_until("the refusals logged", lambda: len(gw.named("gateway_rejected")) >= 3)
    time.sleep(0.2)
    said = gw.named("gateway_rejected")
    assert len(said) == 3  # 0 (twice: said once), "0s", "0"
    assert {"0s", "0"} <= {str(e.fields["value"]) for e in said}
    assert all(e.fields["client"] == "127.0.0.1" for e in said)


def test_a_generation_with_keep_alive_0_gets_its_answer_and_the_pin(
    gw: Running, double: OllamaDouble
) -> None:
    client = ollama.Client(host=gw.url, timeout=10)
    assert client.generate(model=PINNED, prompt="hi", keep_alive=0).response
    loaded = double.instance(PINNED)
    assert loaded is not None and loaded.forever


# --- HTTP as Go's server speaks it ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/generate", "/api/blobs/sha256:" + "0" * 64])
def test_expect_100_continue_is_answered_before_the_body(gw: Running, path: str) -> None:
    body = json.dumps({"model": PINNED, "prompt": "hi", "stream": False}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.gateway.port or 0), timeout=IO_SECONDS) as s:
        s.sendall(head.encode())
        s.settimeout(0.2)
        interim = s.recv(1024)  # a timeout here fails the test: no 100 within 0.2 s
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.settimeout(IO_SECONDS)
        s.sendall(body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 ") and b" 100 " not in answer.split(b"\r\n")[0]


def test_another_expect_is_417_as_in_go(gw: Running) -> None:
    request = b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: nope\r\n\r\n"
    line, _, _ = head_of(exchange(gw.gateway.port or 0, request, until_close=False))
    assert line.startswith("HTTP/1.1 417 ")


MALFORMED = [
    b"GET /a\xffb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
]


def test_malformed_requests_are_400_with_one_short_line_and_no_traceback(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for raw in MALFORMED * 2:
        line, headers, _ = head_of(exchange(gw.gateway.port or 0, raw))
        assert line.startswith("HTTP/1.1 400 "), line
        assert "server" not in headers
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING] == []
    said = gw.named("gateway_bad_request")
    assert len(said) == 1  # a minute apart at most, per client address
    assert said[0].level == "info" and "\n" not in str(said[0].fields["error"])


def test_header_limits_are_at_least_gos(gw: Running, double: OllamaDouble) -> None:
    # answered by the gateway itself (Go's redirect of //api/version), so that only its own
    # limits count, not the double's
    port = gw.gateway.port or 0
    big = b"X-Big: " + b"b" * 900_000 + b"\r\n"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    for headers, path in ((big, b"//api/version"), (many, b"//api/version")):
        request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        assert head_of(exchange(port, request, until_close=False))[0].startswith("HTTP/1.1 301")
    long_target = b"//api/version?q=" + b"a" * 100_000
    request = b"GET " + long_target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert head_of(exchange(port, request, until_close=False))[0].startswith("HTTP/1.1 301")
    # past Go's 1 MiB, in one header or in many: refused, the connection closed
    one = b"GET / HTTP/1.1\r\nX: " + b"a" * (2 << 20) + b"\r\n\r\n"
    lots = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%07d: v\r\n" % i for i in range(150_000))
    for huge, status in ((one, b"HTTP/1.1 4"), (lots, b"HTTP/1.1 431 ")):
        answer = flood(port, huge)
        assert answer.startswith(status), answer[:100]
    assert len(gw.named("gateway_bad_request")) == 1  # a minute apart at most per client


def flood(port: int, data: bytes) -> bytes:
    """Send ``data`` while reading the answer, which may come (and the connection close)
    before it has all been sent."""
    got: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=IO_SECONDS) as sock:

        def read() -> None:
            try:
                got.append(sock.recv(200))
            except OSError:
                got.append(b"")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            for i in range(0, len(data), 65536):
                sock.sendall(data[i : i + 65536])
        except OSError:
            pass  # closed while the rest was on its way
        reader.join(IO_SECONDS)
    return got[0] if got else b""


def test_nothing_is_added_and_there_is_no_http_0_9(gw: Running) -> None:
    for path in ("/api/version", "/api/nothing"):
        direct = httpx.get(gw.double.url + path).headers.get("server")
        assert httpx.get(gw.url + path).headers.get("server") == direct  # Ollama's, if any
    refused = httpx.post(gw.url + "/api/generate", content=b"{")
    assert refused.status_code == 400 and "server" not in refused.headers
    line, headers, _ = head_of(exchange(gw.gateway.port or 0, b"GET /api/version\r\n\r\n"))
    assert line.startswith("HTTP/1.1 400 ")
    assert "server" not in headers


def test_a_target_that_cannot_be_sent_as_it_came_is_refused(
    gw: Running, double: OllamaDouble
) -> None:
    body = json.dumps({"model": PINNED, "prompt": "hi", "keep_alive": 0}).encode()
    for where in ("/api/generate#x", "/api/generate%zz", "/api/gen%2"):
        request = (
            f"POST {where} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        line, _, _ = head_of(exchange(gw.gateway.port or 0, request + body))
        assert line.startswith("HTTP/1.1 400 "), (where, line)
    assert double.requests == []


def test_each_value_a_client_sends_is_logged_not_only_the_first(gw: Running) -> None:
    for value in ("5m", "5m", "10m", 30):
        body = {"model": PINNED, "prompt": "hi", "keep_alive": value, "stream": False}
        assert httpx.post(gw.url + "/api/generate", json=body, timeout=10).status_code == 200
    wait_until("three lines", lambda: len(gw.named("gateway_changed")) >= 3)
    time.sleep(0.2)
    assert [e.fields["before"] for e in gw.named("gateway_changed")] == ["5m", "10m", 30]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":0,"KEEP_ALIVE":-1}',
        b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":-1} {"keep_alive":0}',
        b'{"model":"llama3.2:1b","prompt":"h\xffi","keep_alive":-1}',
        b'{"model":"llama3.2:1b","prompt":"hi","keep_alive":-1,"Keep_alive":null}',
    ],
)
def test_a_body_another_reader_could_read_otherwise_goes_as_go_reads_it(
    gw: Running, double: OllamaDouble, raw: bytes
) -> None:
    """Nothing to change by Go's reading, but a reader with exact keys or a strict parser
    (an emulator, a proxy behind) might read an unload: sent as Go read it."""
    assert httpx.post(gw.url + "/api/generate", content=raw, timeout=10).status_code == 200
    (seen,) = double.requests_to("/api/generate")
    assert isinstance(seen.body, dict)
    spellings = [k for k in seen.body if k.lower() == "keep_alive"]
    assert spellings in (["keep_alive"], [])  # [] when Go reads none (null): the pin holds
    assert seen.body.get("keep_alive", -1) == -1  # absent: Ollama's default, the drop-in's


def test_a_compressed_body_is_read_and_relayed_as_it_came(
    gw: Running, double: OllamaDouble
) -> None:
    """Ollama's server does not undo a Content-Encoding: a gzip body to /api/generate is not
    JSON to it, so not to the gateway either; an upload goes on compressed."""
    body = gzip.compress(json.dumps({"model": PINNED, "keep_alive": 0}).encode())
    headers = {"Content-Encoding": "gzip"}
    refused = httpx.post(gw.url + "/api/generate", content=body, headers=headers, timeout=10)
    assert refused.status_code == 400 and double.requests_to("/api/generate") == []
    relayed = httpx.post(gw.url + "/api/show", content=body, headers=headers, timeout=10)
    (seen,) = double.requests_to("/api/show")
    assert relayed.status_code == 400 and not isinstance(seen.body, dict)  # not decompressed
