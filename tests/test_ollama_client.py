"""The Ollama client against the double over real HTTP: every method, every error mapping."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_keeper.errors import (
    LoadFailed,
    ModelNotFound,
    OllamaAPIError,
    OllamaBusy,
    OllamaError,
    OllamaProtocolError,
    OllamaTimeout,
    OllamaUnreachable,
    UnsupportedByModel,
)
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.observe.ollama_wire import LoadResult, keep_alive_json, parse_timestamp
from tests.support.daemon import wait_until
from tests.support.ollama_double import (
    FOREVER_NS,
    NS_PER_SECOND,
    OOM_TEXT,
    FakeModel,
    OllamaDouble,
    format_go_time,
)
from tests.support.ollama_fixtures import EMBED, LLAMA, PLUS_TWO, make_double


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    with make_double() as d:
        yield d


@pytest.fixture
def client(double: OllamaDouble) -> Iterator[OllamaClient]:
    with OllamaClient(double.url, timeout=2.0, load_timeout=5.0) as c:
        yield c


def bodies(double: OllamaDouble, path: str) -> list[object]:
    return [r.body for r in double.requests_to(path)]


# -- observation ---------------------------------------------------------------------------------


def test_version(client: OllamaClient) -> None:
    assert client.version() == "0.33.0"


def test_ps_empty_then_loaded(double: OllamaDouble, client: OllamaClient) -> None:
    assert client.ps() == ()
    client.load("llama3.2:1b", options={}, keep_alive=-1)
    client.load("nomic-embed-text", options={}, keep_alive=600, endpoint="embed")
    forever, embed = client.ps()
    now = datetime.fromtimestamp(double.now(), UTC)
    assert forever.name == "llama3.2:1b"
    assert forever.is_forever(now)
    assert forever.expires_at is not None
    assert forever.expires_at.utcoffset() == timedelta(hours=2)
    assert forever.context_length == 4096
    assert forever.size == forever.size_vram > LLAMA.size
    assert forever.digest == LLAMA.digest
    assert embed.name == "nomic-embed-text:latest"
    assert embed.remaining(now) == timedelta(seconds=600)
    assert embed.context_length == 2048


def test_ps_shows_spill(client: OllamaClient) -> None:
    with make_double([FakeModel("big:70b", size=12 * 2**30)], vram_total=8 * 2**30) as d:
        c = OllamaClient(d.url)
        c.load("big:70b", options={}, keep_alive=-1)
        [big] = c.ps()
        assert big.spilled
        assert big.size_vram == 8 * 2**30
        c.close()


def test_tags(client: OllamaClient) -> None:
    installed = {m.name: m for m in client.tags()}
    assert set(installed) == {"llama3.2:1b", "nomic-embed-text:latest"}
    assert installed["llama3.2:1b"].size == LLAMA.size
    assert installed["llama3.2:1b"].capabilities == ("completion", "tools")
    assert installed["nomic-embed-text:latest"].capabilities == ("embedding",)
    assert installed["llama3.2:1b"].digest == LLAMA.digest


def test_tags_from_an_older_server_without_capabilities(
    double: OllamaDouble, client: OllamaClient
) -> None:
    double.raw_paths["/api/tags"] = b'{"models":[{"name":"llama3.2","size":5,"digest":"ab"}]}'
    [m] = client.tags()
    assert (m.name, m.size, m.capabilities) == ("llama3.2:latest", 5, None)


def test_show(client: OllamaClient) -> None:
    d = client.show("llama3.2:1b")
    assert d.name == "llama3.2:1b"
    assert d.capabilities == ("completion", "tools")
    assert d.architecture == "llama"
    assert (d.context_length, d.block_count, d.embedding_length) == (131072, 16, 2048)
    assert (d.head_count, d.head_count_kv) == (32, 8)
    assert d.key_length is None
    assert not d.embedding_only
    e = client.show("nomic-embed-text")
    assert e.name == "nomic-embed-text:latest"
    assert e.embedding_only
    assert e.architecture == "nomic-bert"


def test_show_per_layer_head_counts(double: OllamaDouble, client: OllamaClient) -> None:
    double.add_model(
        FakeModel("gemma:x", size=1000, family="gemma3", head_count_kv=(4, 8, 2), key_length=256)
    )
    d = client.show("gemma:x")
    assert d.head_count_kv == 8  # the largest layer, a conservative estimate
    assert d.key_length == 256


def test_show_missing_model(client: OllamaClient) -> None:
    with pytest.raises(ModelNotFound) as info:
        client.show("nope")
    assert info.value.status == 404
    assert "model 'nope:latest' not found" in str(info.value)


# -- load / unload -------------------------------------------------------------------------------


def test_load_sends_keep_alive_as_a_number_and_no_prompt(
    double: OllamaDouble, client: OllamaClient
) -> None:
    started = time.monotonic()
    result = client.load("llama3.2:1b", options={"num_ctx": 8192}, keep_alive=-1)
    took = time.monotonic() - started
    assert isinstance(result, LoadResult)
    assert result.endpoint == "generate"
    assert 0 < result.seconds <= took  # the client's own clock around the request
    assert result.load_duration is None  # Ollama does not say for a load-only request
    [body] = bodies(double, "/api/generate")
    assert body == {
        "model": "llama3.2:1b",
        "keep_alive": -1,
        "options": {"num_ctx": 8192},
        "stream": False,
    }
    assert double.tokens_generated == 0
    inst = double.instance("llama3.2:1b")
    assert inst is not None
    assert inst.forever
    assert inst.num_ctx == 8192


@pytest.mark.parametrize(("seconds", "sent"), [(3600.0, 3600), (-1.0, -1), (90.5, 90.5)])
def test_keep_alive_goes_out_as_json_number(
    double: OllamaDouble, client: OllamaClient, seconds: float, sent: float
) -> None:
    client.load("llama3.2:1b", options={}, keep_alive=seconds)
    [raw] = [r for r in double.requests_to("/api/generate")]
    assert isinstance(raw.body, dict)
    assert raw.body["keep_alive"] == sent
    assert type(raw.body["keep_alive"]) is type(sent)
    inst = double.instance("llama3.2:1b")
    assert inst is not None
    assert inst.keep_alive_ns == (FOREVER_NS if seconds < 0 else int(seconds * NS_PER_SECOND))


def test_keep_alive_json() -> None:
    assert keep_alive_json(-1) == -1
    assert isinstance(keep_alive_json(3600.0), int)
    with pytest.raises(ValueError, match="finite"):
        keep_alive_json(float("inf"))


def test_load_refuses_keep_alive_zero(client: OllamaClient) -> None:
    with pytest.raises(ValueError, match="unload"):
        client.load("llama3.2:1b", options={}, keep_alive=0)


def test_load_falls_back_to_embed_for_embedding_models(
    double: OllamaDouble, client: OllamaClient
) -> None:
    result = client.load("nomic-embed-text", options={}, keep_alive=-1)
    assert result.endpoint == "embed"
    assert [r.path for r in double.requests] == ["/api/generate", "/api/embed"]
    assert bodies(double, "/api/embed") == [{"model": "nomic-embed-text", "keep_alive": -1}]
    inst = double.instance("nomic-embed-text")
    assert inst is not None
    assert inst.forever


def test_load_embed_directly(double: OllamaDouble, client: OllamaClient) -> None:
    result = client.load(
        "nomic-embed-text", options={"num_ctx": 2048}, keep_alive=300, endpoint="embed"
    )
    assert result.endpoint == "embed"
    assert [r.path for r in double.requests] == ["/api/embed"]


def test_unload(double: OllamaDouble, client: OllamaClient) -> None:
    client.load("llama3.2:1b", options={}, keep_alive=-1)
    client.load("nomic-embed-text", options={}, keep_alive=-1, endpoint="embed")
    client.unload("llama3.2:1b")
    client.unload("nomic-embed-text")  # generate unloads embedding models too
    assert double.loaded() == []
    assert bodies(double, "/api/generate")[-1] == {
        "model": "nomic-embed-text",
        "keep_alive": 0,
        "stream": False,
    }
    client.load("nomic-embed-text", options={}, keep_alive=-1, endpoint="embed")
    client.unload("nomic-embed-text", endpoint="embed")
    assert double.loaded() == []
    assert bodies(double, "/api/embed")[-1] == {"model": "nomic-embed-text", "keep_alive": 0}


def test_load_reloads_with_other_options(double: OllamaDouble, client: OllamaClient) -> None:
    client.load("llama3.2:1b", options={"num_ctx": 8192}, keep_alive=-1)
    client.load("llama3.2:1b", options={"num_ctx": 8192, "use_mmap": False}, keep_alive=-1)
    assert double.load_count == 2
    [_, body2] = bodies(double, "/api/generate")
    assert isinstance(body2, dict)
    assert body2["options"] == {"num_ctx": 8192, "use_mmap": False}


def test_pull(double: OllamaDouble, client: OllamaClient) -> None:
    client.pull("llama3.2:1b")  # already there: success
    with pytest.raises(OllamaAPIError, match="file does not exist"):
        client.pull("nothing:here")
    double.error_paths["/api/pull"] = (500, "disk full")
    with pytest.raises(OllamaAPIError, match="disk full"):
        client.pull("llama3.2:1b")


def test_pull_installs_a_pullable_model() -> None:
    extra = FakeModel("qwen2.5:0.5b", size=400_000_000)
    with make_double(pullable=[extra]) as d, OllamaClient(d.url) as c:
        c.pull("qwen2.5:0.5b")
        assert "qwen2.5:0.5b" in {m.name for m in c.tags()}


def test_pull_without_success_is_a_protocol_error(
    double: OllamaDouble, client: OllamaClient
) -> None:
    double.raw_paths["/api/pull"] = b'{"status":"pulling manifest"}\n'
    with pytest.raises(OllamaProtocolError, match="without success"):
        client.pull("llama3.2:1b")


# -- errors --------------------------------------------------------------------------------------


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dead_port_is_unreachable() -> None:
    url = f"http://127.0.0.1:{_dead_port()}"
    with OllamaClient(url, timeout=1.0) as c, pytest.raises(OllamaUnreachable) as info:
        c.ps()
    assert not isinstance(info.value, OllamaTimeout)
    assert info.value.url == url
    assert "connection refused" in str(info.value)
    assert "GET /api/ps" in str(info.value)


def test_hanging_server_times_out(double: OllamaDouble) -> None:
    double.hang_paths.add("*")
    with OllamaClient(double.url, timeout=0.2) as c, pytest.raises(OllamaTimeout) as info:
        c.version()
    assert double.url in str(info.value)
    assert "no answer within 0.2 s" in str(info.value)


def test_load_timeout_is_separate_and_a_timeout_aborts_the_load() -> None:
    with make_double(load_seconds=2.0) as d:
        with (
            OllamaClient(d.url, timeout=2.0, load_timeout=0.2) as c,
            pytest.raises(OllamaTimeout, match="POST /api/generate"),
        ):
            c.load("llama3.2:1b", options={}, keep_alive=-1)
        # why load_timeout must be long: the disconnect aborted Ollama's load
        wait_until("the load aborted", lambda: d.aborted_loads == 1, timeout=2.0)
        assert d.loaded() == []


def test_slow_load_within_load_timeout() -> None:
    with make_double(load_seconds=0.3) as d, OllamaClient(d.url, timeout=0.1, load_timeout=5) as c:
        result = c.load("llama3.2:1b", options={}, keep_alive=60)
        assert result.seconds >= 0.3


@pytest.mark.parametrize(
    ("status", "text", "error"),
    [
        (503, "server busy, please try again.  maximum pending requests exceeded", OllamaBusy),
        (500, OOM_TEXT, LoadFailed),
        (404, "model 'llama3.2:1b' not found", ModelNotFound),
        (400, '"llama3.2:1b" does not support chat', UnsupportedByModel),
        (400, "something else", OllamaAPIError),
        (499, "request canceled", OllamaAPIError),
    ],
)
def test_status_mapping_on_load(
    double: OllamaDouble,
    client: OllamaClient,
    status: int,
    text: str,
    error: type[OllamaAPIError],
) -> None:
    double.error_paths["/api/generate"] = (status, text)
    double.error_paths["/api/embed"] = (status, text)
    with pytest.raises(error) as info:
        client.load("llama3.2:1b", options={}, keep_alive=-1)
    assert type(info.value) is error
    assert info.value.status == status
    assert info.value.message == text
    assert info.value.model == "llama3.2:1b"


def test_load_failure_from_the_scheduler(double: OllamaDouble, client: OllamaClient) -> None:
    double.load_failures["llama3.2:1b"] = OOM_TEXT
    with pytest.raises(LoadFailed) as info:
        client.load("llama3.2:1b", options={}, keep_alive=-1)
    assert "out of memory" in str(info.value)
    assert str(info.value).startswith("llama3.2:1b: ollama said 500:")


def test_missing_model_on_load(client: OllamaClient) -> None:
    with pytest.raises(ModelNotFound, match="model 'nope' not found"):
        client.load("nope", options={}, keep_alive=-1)
    with pytest.raises(ModelNotFound, match="try pulling it first"):
        client.load("nope", options={}, keep_alive=-1, endpoint="embed")


def test_500_outside_a_load_is_an_api_error(double: OllamaDouble, client: OllamaClient) -> None:
    double.error_paths["/api/ps"] = (500, "boom")
    with pytest.raises(OllamaAPIError) as info:
        client.ps()
    assert type(info.value) is OllamaAPIError


def test_missing_endpoint_is_not_a_missing_model(
    double: OllamaDouble, client: OllamaClient
) -> None:
    double.missing_paths.add("/api/embed")
    with pytest.raises(OllamaAPIError) as info:
        client.load("nomic-embed-text", options={}, keep_alive=-1, endpoint="embed")
    assert type(info.value) is OllamaAPIError
    assert "/api/embed not found on this server" in str(info.value)


def test_bad_keep_alive_answer_is_an_api_error(double: OllamaDouble, client: OllamaClient) -> None:
    double.error_paths["/api/generate"] = (400, 'time: missing unit in duration "-1"')
    with pytest.raises(OllamaAPIError, match="missing unit"):
        client.load("llama3.2:1b", options={}, keep_alive=-1)


@pytest.mark.parametrize(
    "case",
    [
        ("/api/ps", b"not json", "ps", "/api/ps: the answer is not JSON"),
        ("/api/ps", b"[]", "ps", "/api/ps: the answer is not a JSON object"),
        ("/api/ps", b'{"models": {}}', "ps", "/api/ps: models is not a list"),
        (
            "/api/ps",
            b'{"models":[{"name":"a","size":1,"size_vram":1},'
            b'{"name":"b","size":1,"size_vram":1},'
            b'{"name":"c","size":1,"size_vram":"1"}]}',
            "ps",
            "/api/ps: models[2].size_vram is not an integer",
        ),
        (
            "/api/ps",
            b'{"models":[{"name":"a","size":-1,"size_vram":0}]}',
            "ps",
            "/api/ps: models[0].size is negative",
        ),
        (
            "/api/ps",
            b'{"models":[{"name":"a","size":1,"size_vram":1,"expires_at":"tomorrow"}]}',
            "ps",
            "/api/ps: models[0].expires_at not an RFC 3339 time",
        ),
        (
            "/api/ps",
            b'{"models":[{"size":1,"size_vram":1}]}',
            "ps",
            "models[0].name is not a string",
        ),
        (
            "/api/tags",
            b'{"models":[{"name":"a","size":1,"capabilities":"x"}]}',
            "tags",
            "capabilities",
        ),
        ("/api/version", b'{"version": 33}', "version", "/api/version: version is not a string"),
        ("/api/show", b'{"model_info": []}', "show", "/api/show: model_info is not a JSON object"),
        (
            "/api/show",
            b'{"model_info": {"general.architecture": "llama", "llama.block_count": "x"}}',
            "show",
            "model_info['llama.block_count'] is not an integer",
        ),
        ("/api/generate", b"<html>", "load", "/api/generate: the answer is not JSON"),
        ("/api/generate", b'{"done": false}', "load", "/api/generate: done is not true"),
    ],
)
def test_protocol_errors(
    double: OllamaDouble, client: OllamaClient, case: tuple[str, bytes, str, str]
) -> None:
    path, body, call, message = case
    double.raw_paths[path] = body
    with pytest.raises(OllamaProtocolError) as info:
        if call == "show":
            client.show("llama3.2:1b")
        elif call == "load":
            client.load("llama3.2:1b", options={}, keep_alive=-1)
        else:
            getattr(client, call)()
    assert message in str(info.value)


def test_hostile_error_text_is_kept_as_one_line_of_data(
    double: OllamaDouble, client: OllamaClient
) -> None:
    double.error_paths["/api/generate"] = (500, "../../etc/passwd\n\x1b[31mred" + "x" * 2000)
    with pytest.raises(LoadFailed) as info:
        client.load("llama3.2:1b", options={}, keep_alive=-1)
    text = str(info.value)
    assert "\n" not in text
    assert "\x1b" not in text
    assert len(text) < 700


def test_error_text_cannot_break_or_disguise_a_line(
    double: OllamaDouble, client: OllamaClient
) -> None:
    # Line and paragraph separators, NEL and bidi overrides are not ASCII controls: they are
    # escaped like the rest, and whitespace becomes a space.
    double.error_paths["/api/generate"] = (500, "a\u2028b\u2029c\x85d\u202ee\tf\x7f")
    with pytest.raises(LoadFailed) as info:
        client.load("llama3.2:1b", options={}, keep_alive=-1)
    assert info.value.message == "a b c d\\u202ee f\\u007f"


def test_every_failure_is_an_ollama_error(double: OllamaDouble) -> None:
    double.raw_paths["*"] = b"{"
    with OllamaClient(double.url) as c:
        for call in (c.version, c.ps, c.tags):
            with pytest.raises(OllamaError):
                call()


# -- restarts ------------------------------------------------------------------------------------


def test_client_survives_a_restart(double: OllamaDouble, client: OllamaClient) -> None:
    client.load("llama3.2:1b", options={}, keep_alive=-1)
    assert len(client.ps()) == 1  # the pooled connection is now open
    double.restart()
    assert client.ps() == ()  # everything unloaded, the same client still works


def test_unreachable_while_restarting(double: OllamaDouble, client: OllamaClient) -> None:
    double.stop()
    with pytest.raises(OllamaUnreachable):
        client.version()
    t = threading.Thread(target=double.restart, daemon=True)
    t.start()
    t.join(5)
    assert client.version() == "0.33.0"


# -- helpers -------------------------------------------------------------------------------------


def test_parse_timestamp() -> None:
    t = parse_timestamp("2026-08-21T18:48:22.123456789-07:00")
    assert t == datetime(2026, 8, 21, 18, 48, 22, 123456, timezone(timedelta(hours=-7)))
    assert parse_timestamp("2318-11-30T12:00:00Z").year == 2318
    assert parse_timestamp("2026-01-01T00:00:00.5+05:30").microsecond == 500000
    assert parse_timestamp("0001-01-01T00:00:00Z").year == 1
    for bad in ("", "2026-01-01", "2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "x" * 100):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Go's time.Time.MarshalJSON: RFC 3339 with up to 9 fractional digits (cut to 6)
        (
            "2026-08-21T18:48:22.999999999Z",
            datetime(2026, 8, 21, 18, 48, 22, 999999, UTC),
        ),
        ("2026-08-21T18:48:22.1234567+02:00", datetime(2026, 8, 21, 16, 48, 22, 123456, UTC)),
        ("2026-08-21T18:48:22z", datetime(2026, 8, 21, 18, 48, 22, tzinfo=UTC)),
        ("2026-08-21t18:48:22.5z", datetime(2026, 8, 21, 18, 48, 22, 500000, UTC)),
        ("2026-08-21 18:48:22-00:00", datetime(2026, 8, 21, 18, 48, 22, tzinfo=UTC)),
        ("2026-08-21T18:48:22-09:30", datetime(2026, 8, 22, 4, 18, 22, tzinfo=UTC)),
        ("2026-08-21T18:48:22+14:00", datetime(2026, 8, 21, 4, 48, 22, tzinfo=UTC)),
        # keep_alive -1: about now + 292 years, as /api/ps shows a pinned model
        (
            " 2318-11-30T12:00:00.123456789+01:00\n",
            datetime(2318, 11, 30, 11, 0, 0, 123456, UTC),
        ),
    ],
)
def test_parse_timestamp_reads_what_go_writes(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() is not None


@pytest.mark.parametrize(
    "bad",
    [
        "2026-08-21T18:48:22.123456789",  # no zone: a naive time is refused
        "2026-08-21T18:48:22",
        "2026-08-21T25:00:00Z",
        "2026-08-21T18:48:22+24:00",
        "2026-08-21T18:48:22Zjunk",
        "2026-08-21T18:48:22.12x4Z",
        "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",  # digits, but not ASCII ones
        "z",
        "Z",
        "null",
    ],
)
def test_parse_timestamp_refuses_what_is_not_rfc3339(bad: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_timestamp(bad)


def test_parse_timestamp_error_stays_on_one_line() -> None:
    with pytest.raises(ValueError) as info:
        parse_timestamp("2026\n<2>forged\u2028" + "x" * 200)
    message = str(info.value)
    assert "\n" not in message and "\u2028" not in message
    assert len(message) < 120


def test_go_zero_time_means_unknown(double: OllamaDouble, client: OllamaClient) -> None:
    double.raw_paths["/api/ps"] = (
        b'{"models":[{"name":"a","size":1,"size_vram":1,"expires_at":"0001-01-01T00:00:00Z",'
        b'"context_length":0}]}'
    )
    [m] = client.ps()
    assert m.expires_at is None
    assert m.context_length is None
    assert m.name == "a:latest"


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.floats(min_value=0, max_value=11_000_000_000, allow_nan=False),
    minutes=st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_go_times_round_trip(seconds: float, minutes: int) -> None:
    tz = timezone(timedelta(minutes=minutes))
    text = format_go_time(seconds, tz)
    parsed = parse_timestamp(text)
    assert parsed.utcoffset() == timedelta(minutes=minutes)
    assert abs(parsed.timestamp() - seconds) < 2e-6 * max(1.0, seconds / 1e9)


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("http://127.0.0.1:11434/", "http://127.0.0.1:11434"),
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("localhost:8080", "http://localhost:8080"),
        ("http://gpu-box", "http://gpu-box"),
        ("[::1]", "http://[::1]:11434"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("::1", "http://[::1]:11434"),
    ],
)
def test_the_client_reads_its_address_as_the_policy_does(given_url: str, expected: str) -> None:
    with OllamaClient(given_url) as client:
        assert client.base_url == expected


def test_the_plus_two_fixture_really_has_an_offset() -> None:
    assert PLUS_TWO.utcoffset(None) == timedelta(hours=2)
    assert EMBED.name == "nomic-embed-text:latest"
