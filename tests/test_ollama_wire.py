"""Ollama's answers turned into typed data, without HTTP: the checks say where a value was
wrong, and nothing from the answer reaches a message raw."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sentinel_keeper.errors import LoadFailed, OllamaProtocolError
from sentinel_keeper.observe.ollama_wire import (
    error_text,
    parse_json,
    parse_load,
    parse_ps,
    parse_show,
    parse_tags,
    parse_version,
)


def test_parse_ps() -> None:
    answer = {
        "models": [
            {
                "name": "llama3.2:1b",
                "size": 10,
                "size_vram": 8,
                "digest": "abc",
                "expires_at": "2318-11-30T12:00:00.123456789Z",
                "context_length": 2048,
            },
            {"model": "nomic-embed-text", "size": 1, "size_vram": 1},
        ]
    }
    first, second = parse_ps(answer)
    assert (first.name, first.size, first.size_vram, first.context_length) == (
        "llama3.2:1b",
        10,
        8,
        2048,
    )
    assert first.expires_at == datetime(2318, 11, 30, 12, 0, 0, 123456, UTC)
    assert (second.name, second.expires_at, second.context_length) == (
        "nomic-embed-text:latest",
        None,
        None,
    )
    assert parse_ps({}) == ()


@pytest.mark.parametrize(
    ("answer", "where"),
    [
        ([], "/api/ps: the answer is not a JSON object (got a list)"),
        ({"models": {}}, "/api/ps: models is not a list (got an object)"),
        ({"models": [{"name": "a", "size": -1, "size_vram": 0}]}, "models[0].size is negative"),
        ({"models": [{"name": "a", "size": 1.5, "size_vram": 0}]}, "models[0].size is not an"),
        (
            {"models": [{"name": "a", "size": 1, "size_vram": 1, "expires_at": "soon"}]},
            'models[0].expires_at not an RFC 3339 time: "soon"',
        ),
    ],
)
def test_parse_ps_says_where_the_answer_is_wrong(answer: object, where: str) -> None:
    with pytest.raises(OllamaProtocolError) as info:
        parse_ps(answer)
    assert where in str(info.value)


def test_parse_tags_and_version() -> None:
    (model,) = parse_tags(
        {"models": [{"name": "bge-m3", "size": 5, "capabilities": ["embedding"]}]}
    )
    assert (model.name, model.size, model.capabilities) == ("bge-m3:latest", 5, ("embedding",))
    assert parse_version({"version": "0.33.0"}) == "0.33.0"
    with pytest.raises(OllamaProtocolError, match="version is not a string"):
        parse_version({"version": 33})


def test_parse_show_reads_the_architecture_numbers() -> None:
    answer = {
        "capabilities": ["completion"],
        "model_info": {
            "general.architecture": "llama",
            "llama.context_length": 131072,
            "llama.block_count": 16,
            "llama.attention.head_count_kv": [8, 8, 4],  # per layer: the largest
        },
    }
    details = parse_show("llama3.2:1b", answer)
    assert details.architecture == "llama"
    assert (details.context_length, details.block_count, details.head_count_kv) == (
        131072,
        16,
        8,
    )
    assert details.embedding_length is None


def test_parse_load() -> None:
    result = parse_load(
        "/api/generate",
        {"done": True, "load_duration": 1_500_000_000},
        seconds=2.0,
        endpoint="generate",
        model="m",
    )
    assert (result.seconds, result.load_duration, result.endpoint) == (2.0, 1.5, "generate")
    with pytest.raises(LoadFailed, match="out of memory"):
        parse_load(
            "/api/generate",
            {"error": "out of memory\n"},
            seconds=1.0,
            endpoint="generate",
            model="m",
        )
    with pytest.raises(OllamaProtocolError, match="the load did not finish"):
        parse_load("/api/generate", {"done": False}, seconds=1.0, endpoint="generate", model="m")


def test_parse_json_quotes_what_is_not_json_on_one_line() -> None:
    with pytest.raises(OllamaProtocolError) as info:
        parse_json(b"<html>\n\x1b[2J\xff", "/api/ps")
    message = str(info.value)
    assert message.startswith("/api/ps: the answer is not JSON")
    assert "\n" not in message and "\x1b" not in message


def test_error_text_is_one_bounded_line() -> None:
    assert error_text('model "x" not found\n') == 'model "x" not found'
    assert len(error_text("e" * 5000)) == 500
