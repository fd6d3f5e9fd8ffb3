"""What an attacker can do with the keeper: through Ollama's answers, through the policy's
environment, through its log lines; and what the keeper exposes.

- Text from Ollama (versions, model names, digests, error texts) is untrusted: it must never
  forge a log line or a field, never reach a terminal as control characters, never name a
  file. A daemon fed hostile answers by a fake Ollama writes nothing but its state file and
  one journal line per event.
- ``ollama.environment`` ends up in a systemd drop-in written as root: any value is either
  refused or comes back out of systemd's parsing as exactly that one assignment.
- The keeper listens on one socket only, the read-only metrics endpoint at the policy's
  metrics.listen (GET and HEAD; anything else is 405), and its only outgoing TCP connections
  go to the policy's Ollama. The endpoint answers while a pass waits for a long load.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from sentinel_keeper import ollama_env
from sentinel_keeper.override.render import render_dropin
from sentinel_keeper.override.unitfile import _service_settings
from sentinel_keeper.report.logs import configure_logging, format_value, journal_renderer
from sentinel_keeper.values.names import normalize_model_name
from tests.support.daemon import DaemonProcess, NotifySocket, free_port, wait_until
from tests.support.ollama_double import FakeModel, OllamaDouble

ROOT = Path(__file__).resolve().parents[1]
PINNED = "llama3.2:1b"
MiB = 1024**2

HOSTILE = [
    'x\n<0>forged_event key=value"',
    "x\rforged=1",
    "x\u2028forged=2",
    "x\u2029y\x85z",
    "\x1b[2J\x1b]0;owned\x07",
    "nul\x00byte",
    "a=b c=d",
    '" injected="1',
    "\u202egnp.exe",
    "tab\there",
    "x" * 3000,
]
LINE_BREAKING = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029\u202e]")


# --- log lines ---------------------------------------------------------------------------------

_TOKEN = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)(?: |$)')


def parse_logfmt(line: str) -> tuple[str, dict[str, str]]:
    """The event name and fields of one ``event key=value ...`` line, strictly."""
    event, _, rest = line.partition(" ")
    fields: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _TOKEN.match(rest, position)
        assert match is not None, f"not logfmt at {position}: {rest[position:][:40]!r}"
        key, raw = match.group(1), match.group(2)
        assert key not in fields, f"field {key} twice"
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
        position = match.end()
    return event, fields


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_stays_inside_its_field(value: str) -> None:
    line = journal_renderer(None, "warning", {"event": "ollama_found", "version": value, "n": 1})
    assert not LINE_BREAKING.search(line), line
    assert line.startswith("<4>ollama_found ")
    event, fields = parse_logfmt(line[3:])
    assert event == "ollama_found"
    assert fields == {"version": value, "n": "1"}  # the exact value, and no other field
    assert not LINE_BREAKING.search(format_value(value))
    shown = format_value(value)
    assert (json.loads(shown) if shown.startswith('"') else shown) == value


def test_every_format_keeps_an_event_on_one_line() -> None:
    for log_format in ("journal", "console", "json"):
        out = io.StringIO()
        configure_logging(log_format, "info", stream=out, env={})
        log = structlog.get_logger("test")
        for value in HOSTILE:
            log.warning("ollama_found", version=value, model=value)
        lines = out.getvalue().splitlines()
        assert len(lines) == len(HOSTILE), (log_format, lines[:3])
        for line in lines:
            assert not LINE_BREAKING.search(line), (log_format, line[:120])
        if log_format == "json":
            assert [json.loads(x)["version"] for x in lines] == HOSTILE
    configure_logging("console", "info", stream=io.StringIO(), env={})


@pytest.mark.parametrize("value", HOSTILE)
def test_names_from_ollama_cannot_carry_control_characters(value: str) -> None:
    name = normalize_model_name(value)
    assert not LINE_BREAKING.search(name)
    assert not name.startswith("/") or value.startswith("/")


# --- the environment drop-in -------------------------------------------------------------------

TEXT_VARIABLES = ["OLLAMA_EDITOR", "OLLAMA_MODELS", "OLLAMA_ORIGINS", "OLLAMA_LLM_LIBRARY"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(TEXT_VARIABLES), st.text(max_size=60))
def test_an_environment_value_is_refused_or_round_trips_through_systemd(
    name: str, value: str
) -> None:
    problem = ollama_env.environment_problem(name, value)
    if problem is not None:
        assert problem and "\n" not in problem
        return
    text = render_dropin("/etc/sentinel/policy.yaml", "ollama.service", -1.0, {name: value})
    settings_found = list(_service_settings(text))
    assert [s.key for s in settings_found] == ["Environment", "Environment"]
    assignments = [ollama_env.parse_environment_value(s.value) for s in settings_found]
    assert assignments == [[("OLLAMA_KEEP_ALIVE", "-1")], [(name, value)]]
    directives = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert len(directives) == 3  # [Service] and the two assignments, nothing else


# --- the daemon against a hostile Ollama -------------------------------------------------------

EVIL_NAME = "evil\n<0>forged_event key=1\u2028\x1b[2J../../../../pwned"
EVIL_DIGEST = "../../../../tmp/pwned-digest"


def _hostile_answers(double: OllamaDouble) -> None:
    """/api/ps and /api/tags list a foreign model with a hostile name and digest next to the
    pinned one; /api/version is hostile too."""
    double.version = "0.33.0\n<2>forged_version x=1\x1b]0;owned\x07"
    far = "2318-01-01T00:00:00Z"
    ps = {
        "models": [
            {
                "name": PINNED,
                "model": PINNED,
                "size": 900 * MiB,
                "size_vram": 900 * MiB,
                "digest": "a" * 64,
                "expires_at": far,
                "context_length": 4096,
            },
            {
                "name": EVIL_NAME,
                "model": EVIL_NAME,
                "size": 1,
                "size_vram": 1,
                "digest": EVIL_DIGEST,
                "expires_at": far,
                "context_length": 1,
            },
        ]
    }
    tags = {
        "models": [
            {"name": PINNED, "model": PINNED, "size": 800 * MiB, "digest": "a" * 64},
            {"name": EVIL_NAME, "model": EVIL_NAME, "size": 1, "digest": EVIL_DIGEST},
        ]
    }
    double.raw_paths = {"/api/ps": json.dumps(ps).encode(), "/api/tags": json.dumps(tags).encode()}


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble([FakeModel(PINNED, size=800 * MiB)]).start()
    try:
        yield server
    finally:
        server.stop()


def _listening_and_peers(pid: int) -> tuple[list[str], list[str]]:
    """Sockets of ``pid`` in LISTEN state (tcp, tcp6, unix) and the remote ends of its TCP
    connections, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening, peers = [], []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for row in list(f)[1:]:
                cols = row.split()
                if cols[9] in inodes:
                    if cols[3] == "0A":
                        listening.append(f"{table} {cols[1]}")
                    else:
                        peers.append(cols[2])
    with open(f"/proc/{pid}/net/unix") as f:
        for row in list(f)[1:]:
            cols = row.split()
            if cols[6] in inodes and int(cols[3], 16) & 0x10000:  # __SO_ACCEPTCON
                listening.append(f"unix {cols[7] if len(cols) > 7 else '@'}")
    return listening, peers


def _loopback(peer: str, port: int) -> bool:
    address, _, hex_port = peer.partition(":")
    ipv4_loopback = address == "0100007F"
    ipv6_loopback = address in (
        "00000000000000000000000001000000",
        "0000000000000000FFFF00000100007F",
    )
    return (ipv4_loopback or ipv6_loopback) and int(hex_port, 16) == port


@pytest.mark.slow
def test_a_hostile_ollama_forges_no_log_line_and_names_no_file(
    tmp_path: Path, double: OllamaDouble
) -> None:
    _hostile_answers(double)
    policy = tmp_path / "policy.yaml"
    port = free_port()
    policy.write_text(
        f"interval: 500ms\nollama:\n  url: {double.url}\n  request_timeout: 2s\n"
        f"metrics:\n  listen: 127.0.0.1:{port}\n"
        f"models:\n  - name: {PINNED}\n"
    )
    state = tmp_path / "state"
    notify = NotifySocket(tmp_path / "notify.sock")  # made before the "before" listing
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY"))}
    before = set(tmp_path.rglob("*"))
    daemon = DaemonProcess(policy, tmp_path, notify)  # STATE_DIRECTORY: tmp_path / "state"
    try:
        notify.wait_for("READY", "1")
        time.sleep(1.5)  # a few passes
        listening, peers = _listening_and_peers(daemon.pid)
        page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        cli = [
            subprocess.run(
                [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy), *args],
                capture_output=True,
                cwd=ROOT,
                env=env,
                timeout=60,
                check=False,
            )
            for args in (["status"], ["status", "--json"], ["--state-dir", str(state), "once"])
        ]
        assert daemon.alive()
    finally:
        daemon.stop()
        notify.close()

    lines = daemon.lines()
    assert lines
    for line in lines:
        assert re.match(r"^<[0-7]>[a-z_]+( [a-z_]+=\S.*)?$", line), line
        assert not LINE_BREAKING.search(line), line
        parse_logfmt(line[3:])
    assert not any("forged" in line.split(" ", 1)[0] for line in lines)
    found = next(line for line in lines if line.startswith("<6>ollama_found "))
    version = parse_logfmt(found[3:])[1]["version"]
    assert version.startswith("0.33.0\\u000a<2>forged_version"), version  # kept, escaped

    for done in cli:
        assert done.returncode in (0, 1, 3), done.stderr  # 3: status as a health check
        for stream in (done.stdout, done.stderr):
            text = stream.decode("utf-8", "replace")
            assert "\x1b" not in text and "\x07" not in text and "\u2028" not in text
            assert not any(x.startswith(("<0>", "<2>")) for x in text.splitlines())
    assert json.loads(cli[1].stdout)["ollama"]  # status --json stays JSON

    after = set(tmp_path.rglob("*"))
    created = sorted(str(p.relative_to(tmp_path)) for p in after - before)
    assert created == ["state", "state/state.json"], created
    assert not list(Path("/tmp").glob("pwned*"))
    assert json.loads((state / "state.json").read_text())["footprints"].keys() == {PINNED}

    assert listening == [f"tcp 0100007F:{port:04X}"], listening  # the metrics endpoint only
    assert peers and all(_loopback(p, double.port) for p in peers), peers
    # Ollama's hostile names reach the page only as label values, escaped: no forged series
    names = {s.name for family in text_string_to_metric_families(page) for s in family.samples}
    assert not [n for n in names if "forged" in n], names
    assert not [line for line in page.splitlines() if line.startswith(("<", "forged"))]


def test_only_the_metrics_endpoint_and_the_gateway_have_server_code() -> None:
    """Two modules bind and listen: the metrics endpoint, and the gateway (off unless the
    policy sets gateway.listen). Status, logs and the drop-in are files and command output."""
    forbidden = re.compile(
        r"\.bind\(|\.listen\(|HTTPServer|WSGIServer|socketserver|serve_forever"
        r"|asyncio\.start_server|make_server|start_http_server|start_wsgi_server"
        r"|TCPSite|UnixSite|SockSite|web\.Server\(|run_app|create_server"
    )
    offenders = []
    sources = sorted((ROOT / "sentinel_keeper").rglob("*.py"))
    assert len(sources) > 20  # every module, subpackages too
    for source in sources:
        for number, line in enumerate(source.read_text().splitlines(), start=1):
            if forbidden.search(line):
                offenders.append(f"{source.relative_to(ROOT).as_posix()}:{number}")
    assert offenders
    # and apply-override's probe whether an address is free for the takeover: a bind that
    # never listens, closed at once
    probe = "sentinel_keeper/override/takeover.py"
    assert {o.split(":")[0] for o in offenders} == {
        "sentinel_keeper/metrics/endpoint.py",
        "sentinel_keeper/gateway/server.py",
        probe,
    }
    assert ".listen(" not in (ROOT / probe).read_text()


@pytest.mark.slow
def test_the_endpoint_is_read_only_and_answers_while_a_pass_waits_for_a_long_load(
    tmp_path: Path,
) -> None:
    slow = OllamaDouble([FakeModel(PINNED, size=800 * MiB)], load_seconds=20.0).start()
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"ollama:\n  url: {slow.url}\n  load_timeout: 60s\n"
        f"metrics:\n  listen: 127.0.0.1:{port}\n"
        f"models:\n  - name: {PINNED}\n"
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(policy, tmp_path, notify)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until("the load under way", lambda: slow.requests_to("/api/generate"))
        took = []
        for _ in range(5):
            begun = time.monotonic()
            answer = httpx.get(url, timeout=5)
            took.append(time.monotonic() - begun)
            assert answer.status_code == 200
            assert "sentinel_keeper_build_info" in answer.text
            time.sleep(0.2)
        assert max(took) < 2.0, took
        assert slow.instance(PINNED) is None  # still loading: the scrapes did not wait for it
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            refused = httpx.request(method, url, content=b"x", timeout=5)
            assert refused.status_code == 405, method
            assert refused.headers["allow"] == "GET, HEAD"
        listening, _ = _listening_and_peers(daemon.pid)
        assert listening == [f"tcp 0100007F:{port:04X}"], listening
    finally:
        daemon.stop()
        notify.close()
        slow.stop()
