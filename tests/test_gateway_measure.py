"""What the gateway reads from an answer as it passes, and the figures it keeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sentinel_keeper.gateway.measure import (
    TAIL_LIMIT,
    FinalChunk,
    RequestRecord,
    Tally,
    cause_of,
    cold_of,
)
from sentinel_keeper.observe.observation import GpuSnapshot, LoadedModel, Observation
from sentinel_keeper.values.figures import Cause


def lines(*objects: dict[str, object]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def test_the_final_line_is_found_however_the_stream_is_cut() -> None:
    stream = lines({"done": False, "response": "a" * 5000}, {"done": True, "load_duration": 2e9})
    for size in (1, 7, 100, 4096, len(stream)):
        scanner = FinalChunk()
        for i in range(0, len(stream), size):
            scanner.feed(stream[i : i + size])
        assert scanner.final() == {"done": True, "load_duration": 2e9}, size
    unterminated = FinalChunk()
    unterminated.feed(b'{"done": false}\n{"done": true, "load_duration": 1}')
    assert unterminated.final() == {"done": True, "load_duration": 1}


def test_the_scanner_keeps_no_more_than_a_line_s_tail() -> None:
    scanner = FinalChunk()
    for _ in range(50):
        scanner.feed(b"x" * (TAIL_LIMIT // 10))  # one endless line: nothing to read
    assert scanner.final() is None
    assert len(scanner._partial) <= TAIL_LIMIT
    scanner.feed(b"\n" + lines({"done": True, "load_duration": 0}))
    assert scanner.final() == {"done": True, "load_duration": 0}


def test_cold_means_load_duration_over_half_a_second() -> None:
    assert cold_of({"load_duration": 2_000_000_000}) is True
    assert cold_of({"load_duration": 12_000_000}) is False  # a warm model's few ms
    assert cold_of({"done": True}) is None
    assert cold_of(None) is None


def test_the_cause_comes_from_the_keeper_s_last_look() -> None:
    loaded = LoadedModel("a:latest", 1, 1, context_length=8192)
    seen = Observation(datetime.now(UTC), "0.33.0", (loaded,), (), GpuSnapshot())
    assert cause_of("b:latest", 8192, seen) == Cause.NOT_LOADED
    assert cause_of("a:latest", 4096, seen) == Cause.OTHER_NUM_CTX
    assert cause_of("a:latest", 8192, seen) == Cause.UNKNOWN
    assert cause_of("a:latest", 8192, None) == Cause.UNKNOWN


def record(model: str, cold: bool) -> RequestRecord:
    return RequestRecord(model, "/api/generate", "127.0.0.1", "t", 200, 0.1, 0.2, cold, None)


def test_the_cold_share_covers_the_last_hour() -> None:
    tally = Tally("default")
    tally.add(record("a", True), mono=0.0)
    tally.add(record("a", False), mono=1800.0)
    assert tally.figures(1800.0).recent["a"].share == 0.5
    later = tally.figures(3700.0)
    assert (later.recent["a"].requests, later.recent["a"].cold) == (1, 0)
    assert later.cold == {("a", Cause.UNKNOWN): 1}  # the counters keep everything
    assert later.requests == {("a", "/api/generate", "200"): 2}
