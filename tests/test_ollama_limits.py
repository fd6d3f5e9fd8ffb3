"""The client holds at most MAX_ANSWER_BYTES of an answer and MAX_LINE_BYTES of a streamed
line: an Ollama that sends gigabytes (or one endless line) gets a protocol error, not the
keeper's memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sentinel_keeper.errors import OllamaProtocolError
from sentinel_keeper.observe.ollama import MAX_ANSWER_BYTES, MAX_LINE_BYTES, OllamaClient
from tests.support.ollama_double import OllamaDouble


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    with OllamaDouble() as server:
        yield server


def test_an_answer_over_the_limit_with_its_length_declared(double: OllamaDouble) -> None:
    double.raw_paths["/api/ps"] = b'{"models": [], "x": "' + b"a" * MAX_ANSWER_BYTES + b'"}'
    with OllamaClient(double.url) as client, pytest.raises(OllamaProtocolError) as caught:
        client.ps()
    assert "/api/ps: the answer is larger than 16 MiB" in str(caught.value)


def test_an_answer_just_under_the_limit_is_read(double: OllamaDouble) -> None:
    padding = b"a" * (MAX_ANSWER_BYTES - 100)
    double.raw_paths["/api/ps"] = b'{"models": [], "x": "' + padding + b'"}'
    with OllamaClient(double.url) as client:
        assert client.ps() == ()


class _Endless(BaseHTTPRequestHandler):
    """Answers 200 with no Content-Length and then bytes until the client hangs up."""

    protocol_version = "HTTP/1.0"

    def _flood(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        chunk = b"[" * 65536 if self.path == "/api/ps" else b"x" * 65536
        try:
            for _ in range(4 * MAX_ANSWER_BYTES // len(chunk)):  # bounded: 64 MiB at most
                self.wfile.write(chunk)
        except OSError:
            return

    do_GET = _flood
    do_POST = _flood

    def log_message(self, format: str, *args: object) -> None:
        return


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return  # the client hanging up mid-answer is the point


@pytest.fixture
def endless() -> Iterator[str]:
    server = _Quiet(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endless_answer_without_a_length(endless: str) -> None:
    with OllamaClient(endless) as client, pytest.raises(OllamaProtocolError) as caught:
        client.ps()
    assert "the answer is larger than 16 MiB" in str(caught.value)


def test_an_endless_line_in_a_stream(endless: str) -> None:
    with OllamaClient(endless) as client, pytest.raises(OllamaProtocolError) as caught:
        client.pull("llama3.2:1b")
    assert f"a line of the answer is larger than {MAX_LINE_BYTES // 1024 // 1024} MiB" in str(
        caught.value
    )
