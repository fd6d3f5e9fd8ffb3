"""The Ollama double behaves like Ollama's source says (server/sched.go, server/routes.go,
api/types.go, envconfig/config.go), unpleasant parts included."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.daemon import wait_until
from tests.support.ollama_double import (
    DEFAULT_KEEP_ALIVE_NS,
    FOREVER_NS,
    NS_PER_SECOND,
    OOM_TEXT,
    QUEUE_FULL_TEXT,
    DurationError,
    GiB,
    OllamaDouble,
    display_name,
    format_go_time,
    parse_go_duration,
    parse_keep_alive,
    server_keep_alive,
)
from tests.support.ollama_fixtures import (
    EMBED,
    LLAMA,
    PLUS_TWO,
    get,
    make_double,
    post,
    ps_names,
    tiny,
)

MINUTE = 60 * NS_PER_SECOND


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    with make_double() as d:
        yield d


def load(double: OllamaDouble, model: str, **body: object) -> httpx.Response:
    return post(double, "/api/generate", {"model": model, **body})


def expires_in(double: OllamaDouble, name: str) -> float:
    """Seconds from the double's now to the instance's expiry as /api/ps shows it."""
    for row in get(double, "/api/ps").json()["models"]:
        if row["name"] == name:
            return datetime.fromisoformat(row["expires_at"]).timestamp() - double.now()
    raise AssertionError(f"{name} not loaded")


# -- keep_alive parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("5m", 5 * MINUTE),
        ("1h30m", 90 * MINUTE),
        ("0", 0),
        ("-0", 0),
        ("1.5h", 90 * MINUTE),
        (".5s", NS_PER_SECOND // 2),
        ("-1m", -MINUTE),
        ("300ms", 300_000_000),
        ("2h45m30.5s", (2 * 3600 + 45 * 60 + 30) * NS_PER_SECOND + NS_PER_SECOND // 2),
    ],
)
def test_go_durations(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", 'time: missing unit in duration "-1"'),
        ("300", 'time: missing unit in duration "300"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("1w", 'time: unknown unit "w" in duration "1w"'),
        ("", 'time: invalid duration ""'),
        ("forever", 'time: invalid duration "forever"'),
        ("-", 'time: invalid duration "-"'),
        ("5m-1s", 'time: unknown unit "m-" in duration "5m-1s"'),
    ],
)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


def test_keep_alive_values_like_api_duration() -> None:
    assert parse_keep_alive(None) is None
    assert parse_keep_alive(-1) == FOREVER_NS
    assert parse_keep_alive(-0.5) == FOREVER_NS
    assert parse_keep_alive(3600) == 3600 * NS_PER_SECOND
    assert parse_keep_alive(0.5) == NS_PER_SECOND // 2
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive(1e-12) == 0  # truncated to zero: an unload
    assert parse_keep_alive("-1m") == FOREVER_NS
    assert parse_keep_alive("24h") == 24 * 60 * MINUTE
    for bad in (True, [1], {"s": 1}, "-1", "300"):
        with pytest.raises(DurationError):
            parse_keep_alive(bad)


def test_server_default_like_envconfig() -> None:
    assert server_keep_alive(None) == DEFAULT_KEEP_ALIVE_NS
    assert server_keep_alive("-1") == FOREVER_NS
    assert server_keep_alive("3600") == 3600 * NS_PER_SECOND
    assert server_keep_alive("24h") == 24 * 60 * MINUTE
    assert server_keep_alive("'-1'") == FOREVER_NS  # envconfig.Var trims quotes
    for silently_default in ("1d", "1w", "garbage", "1_000"):
        assert server_keep_alive(silently_default) == DEFAULT_KEEP_ALIVE_NS


def test_display_names() -> None:
    assert display_name("llama3.2") == "llama3.2:latest"
    assert display_name("library/llama3.2:1b") == "llama3.2:1b"
    assert display_name("registry.ollama.ai/library/qwen3") == "qwen3:latest"
    assert display_name("hf.co/org/repo:Q4_K_M") == "hf.co/org/repo:Q4_K_M"
    assert display_name("user/model") == "user/model:latest"


def test_go_time_format() -> None:
    assert format_go_time(0.0, PLUS_TWO) == "1970-01-01T02:00:00+02:00"
    assert format_go_time(1.5, PLUS_TWO) == "1970-01-01T02:00:01.5+02:00"
    forever = format_go_time(1_800_000_000 + FOREVER_NS / NS_PER_SECOND, PLUS_TWO)
    assert forever.startswith("2319-")


# -- keep_alive over HTTP ------------------------------------------------------------------------


def test_string_minus_one_is_a_400(double: OllamaDouble) -> None:
    for bad in ("-1", "300"):
        r = load(double, "llama3.2:1b", keep_alive=bad)
        assert r.status_code == 400
        assert "missing unit" in r.json()["error"]
    assert double.loaded() == []


def test_number_minus_one_is_forever(double: OllamaDouble) -> None:
    r = load(double, "llama3.2:1b", keep_alive=-1)
    assert r.status_code == 200
    [inst] = double.loaded()
    assert inst.forever
    row = get(double, "/api/ps").json()["models"][0]
    assert row["expires_at"].endswith("+02:00")
    assert datetime.fromisoformat(row["expires_at"]).year >= 2300
    double.advance(10 * 365 * 86400)
    assert ps_names(double) == ["llama3.2:1b"]


def test_go_duration_string_forever_and_plain(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive="-1m")
    assert double.loaded()[0].forever
    load(double, "llama3.2:1b", keep_alive="1h30m")
    assert double.loaded()[0].keep_alive_ns == 90 * MINUTE
    assert expires_in(double, "llama3.2:1b") == pytest.approx(5400, abs=1)


def test_fresh_load_without_keep_alive_takes_server_default() -> None:
    with make_double(keep_alive="10m") as d:
        load(d, "llama3.2:1b")
        assert d.loaded()[0].keep_alive_ns == 10 * MINUTE
        assert expires_in(d, "llama3.2:1b") == pytest.approx(600, abs=1)


def test_omitted_keep_alive_keeps_the_duration_but_restarts_the_countdown(
    double: OllamaDouble,
) -> None:
    load(double, "llama3.2:1b", keep_alive=-1)
    load(double, "llama3.2:1b")  # omitted: a pinned model stays pinned
    assert double.loaded()[0].forever

    load(double, "llama3.2:1b", keep_alive="1h")
    double.advance(1800)
    assert expires_in(double, "llama3.2:1b") == pytest.approx(1800, abs=1)
    load(double, "llama3.2:1b")  # sched.go useLoadedRunner: duration kept, timer restarted
    assert double.loaded()[0].keep_alive_ns == 60 * MINUTE
    assert expires_in(double, "llama3.2:1b") == pytest.approx(3600, abs=1)


def test_explicit_keep_alive_replaces_a_pin(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive=-1)
    load(double, "llama3.2:1b", keep_alive="5m")  # some other client's hard-coded 5m
    assert double.loaded()[0].keep_alive_ns == 5 * MINUTE
    double.advance(301)
    assert double.loaded() == []


def test_expiry_follows_the_clock(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive=60)
    double.advance(59)
    assert ps_names(double) == ["llama3.2:1b"]
    double.advance(2)
    assert ps_names(double) == []


# -- load / unload without generating ------------------------------------------------------------


@pytest.mark.parametrize("stream", [None, True, False])
def test_empty_generate_loads_with_one_object(double: OllamaDouble, stream: bool | None) -> None:
    body: dict[str, object] = {"model": "llama3.2:1b"}
    if stream is not None:
        body["stream"] = stream
    r = post(double, "/api/generate", body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    answer = r.json()
    assert answer["done"] is True
    assert answer["done_reason"] == "load"
    assert answer["response"] == ""
    assert double.tokens_generated == 0
    assert ps_names(double) == ["llama3.2:1b"]


def test_keep_alive_zero_unloads(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive=-1)
    r = load(double, "llama3.2:1b", keep_alive=0)
    assert r.json()["done_reason"] == "unload"
    assert double.loaded() == []
    # unloading a model that is not loaded is fine too
    assert load(double, "llama3.2:1b", keep_alive=0).status_code == 200


def test_chat_with_no_messages_loads_and_unloads(double: OllamaDouble) -> None:
    r = post(double, "/api/chat", {"model": "llama3.2:1b", "messages": []})
    assert r.json()["done_reason"] == "load"
    assert r.json()["message"] == {"role": "assistant", "content": ""}
    r = post(double, "/api/chat", {"model": "llama3.2:1b", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert double.loaded() == []
    assert double.tokens_generated == 0


def test_prompt_streams_tokens_and_counts_them(double: OllamaDouble) -> None:
    r = post(double, "/api/generate", {"model": "llama3.2:1b", "prompt": "hi"})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert r.headers["content-type"] == "application/x-ndjson"
    assert [x["done"] for x in lines] == [False, False, False, True]
    assert lines[-1]["done_reason"] == "stop"
    assert double.tokens_generated == 3
    r = post(
        double,
        "/api/chat",
        {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    assert r.json()["message"]["content"] == "Hello, world"
    assert double.tokens_generated == 6


def test_embedding_model_refuses_generate_and_chat(double: OllamaDouble) -> None:
    r = load(double, "nomic-embed-text")
    assert r.status_code == 400
    assert r.json() == {"error": '"nomic-embed-text" does not support generate'}
    r = post(double, "/api/chat", {"model": "nomic-embed-text:latest"})
    assert r.json() == {"error": '"nomic-embed-text:latest" does not support chat'}
    assert double.loaded() == []


def test_embed_without_input_loads_any_model(double: OllamaDouble) -> None:
    r = post(double, "/api/embed", {"model": "nomic-embed-text", "keep_alive": -1})
    assert r.json() == {"model": "nomic-embed-text", "embeddings": []}
    assert double.instance("nomic-embed-text").forever  # type: ignore[union-attr]
    r = post(double, "/api/embed", {"model": "llama3.2:1b", "input": ""})
    assert r.json()["embeddings"] == []
    assert sorted(ps_names(double)) == ["llama3.2:1b", "nomic-embed-text:latest"]
    assert double.embeddings_computed == 0
    r = post(double, "/api/embed", {"model": "nomic-embed-text", "input": ["a", "b"]})
    assert len(r.json()["embeddings"]) == 2


def test_generate_unload_works_for_embedding_models(double: OllamaDouble) -> None:
    post(double, "/api/embed", {"model": "nomic-embed-text"})
    r = load(double, "nomic-embed-text", keep_alive=0)  # handled before the capability check
    assert r.json()["done_reason"] == "unload"
    assert double.loaded() == []


def test_embed_with_keep_alive_zero_loads_then_unloads(double: OllamaDouble) -> None:
    r = post(double, "/api/embed", {"model": "nomic-embed-text", "keep_alive": 0})
    assert r.status_code == 200
    assert double.load_count == 1
    assert double.loaded() == []


# -- reloads -------------------------------------------------------------------------------------


def test_num_ctx_mismatch_reloads_with_the_default_keep_alive(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive=-1, options={"num_ctx": 8192})
    assert double.loaded()[0].num_ctx == 8192
    load(double, "llama3.2:1b", options={"num_ctx": 4096})
    [inst] = double.loaded()
    assert inst.num_ctx == 4096
    assert inst.keep_alive_ns == DEFAULT_KEEP_ALIVE_NS  # the pin is gone
    assert double.evictions == ["llama3.2:1b"]
    assert double.load_count == 2


def test_ps_lists_a_model_only_once_its_load_or_reload_is_done() -> None:
    """server/sched.go (v0.30 and later): the runner enters s.loaded, which /api/ps lists,
    only after llama.Load returned, and llamaServerRunner.Load waits until llama-server is
    ready. A reload unloads (and drops) the old runner first. So while a client reloads a
    model with other options it is missing from /api/ps; the other models stay listed."""
    with make_double(load_seconds=1.0) as d:
        post(d, "/api/embed", {"model": "nomic-embed-text", "keep_alive": -1})
        load(d, "llama3.2:1b", keep_alive=-1, options={"num_ctx": 2048})
        assert sorted(ps_names(d)) == ["llama3.2:1b", "nomic-embed-text:latest"]
        seen: list[list[str]] = []
        client = threading.Thread(
            target=load, args=(d, "llama3.2:1b"), kwargs={"options": {"num_ctx": 4096}}
        )
        client.start()
        wait_until("the reload under way", lambda: d.evictions == ["llama3.2:1b"], timeout=2.0)
        while client.is_alive():
            seen.append(ps_names(d))
            client.join(0.1)
        assert len(seen) >= 3
        assert all(names == ["nomic-embed-text:latest"] for names in seen[:-1])
        rows = {r["name"]: r for r in get(d, "/api/ps").json()["models"]}
        assert rows["llama3.2:1b"]["context_length"] == 4096
        assert expires_in(d, "llama3.2:1b") == pytest.approx(300, abs=1)

        # a fresh load too: not listed until it is done
        load(d, "llama3.2:1b", keep_alive=0)
        fresh = threading.Thread(target=load, args=(d, "llama3.2:1b"))
        fresh.start()
        wait_until("the load under way", d._load_lock.locked, timeout=2.0)
        assert ps_names(d) == ["nomic-embed-text:latest"]
        fresh.join(5)
        assert "llama3.2:1b" in ps_names(d)


def test_load_duration_counts_the_wait_behind_another_load() -> None:
    """server/routes.go: load_duration = checkpointLoaded - checkpointStart, the time until
    scheduleRunner returned, so a request queued behind a load of its model reports the
    wait too (a client sees a cold hit); a warm model reports none."""
    with make_double(load_seconds=1.0) as d:
        answers: list[httpx.Response] = []
        first = threading.Thread(target=lambda: answers.append(load(d, "llama3.2:1b")))
        first.start()
        wait_until("the load under way", d._load_lock.locked, timeout=2.0)
        queued = post(d, "/api/generate", {"model": "llama3.2:1b", "prompt": "hi", "stream": False})
        first.join(5)
        assert queued.json()["load_duration"] >= 0.5 * NS_PER_SECOND
        warm = post(d, "/api/generate", {"model": "llama3.2:1b", "prompt": "hi", "stream": False})
        assert warm.json()["load_duration"] == 0


def test_what_does_not_reload(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive=-1)  # automatic num_ctx (4096 on 8 GiB)
    load(double, "llama3.2:1b")  # automatic again
    load(double, "llama3.2:1b", options={"temperature": 0.1, "seed": 3, "num_predict": 5})
    load(double, "llama3.2:1b", options={"num_ctx": 4096})  # explicit, same value
    load(double, "llama3.2:1b", options={"num_gpu": -1})
    assert double.load_count == 1
    assert double.loaded()[0].forever


@pytest.mark.parametrize(
    "options",
    [
        {"num_batch": 256},
        {"num_gpu": 10},
        {"main_gpu": 0},
        {"use_mmap": False},
        {"num_thread": 4},
        {"draft_num_predict": 2},
    ],
)
def test_each_runner_option_reloads(double: OllamaDouble, options: dict[str, object]) -> None:
    load(double, "llama3.2:1b", keep_alive=-1)
    load(double, "llama3.2:1b", options=options, keep_alive="2m")
    assert double.load_count == 2
    assert double.loaded()[0].keep_alive_ns == 2 * MINUTE


def test_num_ctx_beyond_training_is_capped_before_comparing(double: OllamaDouble) -> None:
    post(double, "/api/embed", {"model": "nomic-embed-text", "options": {"num_ctx": 8192}})
    assert double.loaded()[0].num_ctx == 2048
    post(double, "/api/embed", {"model": "nomic-embed-text", "options": {"num_ctx": 2048}})
    assert double.load_count == 1


def test_bad_option_type_is_a_500(double: OllamaDouble) -> None:
    r = load(double, "llama3.2:1b", options={"num_ctx": "big"})
    assert r.status_code == 500
    assert r.json()["error"] == 'option "num_ctx" must be of type integer'


# -- memory and eviction -------------------------------------------------------------------------


def test_predicted_size_counts_kv_cache_times_parallel() -> None:
    with make_double(num_parallel=4, context_length=8192) as d:
        load(d, "llama3.2:1b")
        [row] = get(d, "/api/ps").json()["models"]
        # context_length is the per-request num_ctx; the KV cache holds num_ctx x parallel
        assert row["context_length"] == 8192
        kv = 2 * 16 * 8 * (2048 // 32) * 8192 * 4 * 2
        assert row["size"] == LLAMA.size + kv + 768 * 1024 * 1024  # num_batch 1024 surcharge
        assert d.loaded()[0].num_parallel == 4
        # embedding models always load with parallel 1
        post(d, "/api/embed", {"model": "nomic-embed-text"})
        assert d.instance("nomic-embed-text").num_parallel == 1  # type: ignore[union-attr]


def test_default_num_ctx_follows_vram_tiers() -> None:
    assert make_double(vram_total=8 * GiB).default_num_ctx() == 4096
    assert make_double(vram_total=24 * GiB).default_num_ctx() == 32768
    assert make_double(vram_total=48 * GiB).default_num_ctx() == 262144
    assert make_double(vram_total=8 * GiB, context_length=16384).default_num_ctx() == 16384


def test_model_alone_always_loads_spilling_to_cpu() -> None:
    with make_double([tiny("big:1", 12 * GiB)], vram_total=10 * GiB) as d:
        load(d, "big:1")
        [inst] = d.loaded()
        assert inst.size > 12 * GiB
        assert inst.size_vram == 10 * GiB
        [row] = get(d, "/api/ps").json()["models"]
        assert row["size_vram"] < row["size"]


def test_eighty_percent_rule() -> None:
    models = [tiny("a:1", 4 * GiB), tiny("b:1", 4 * GiB + 700 * 2**20), tiny("c:1", 5 * GiB)]
    with make_double(models, vram_total=10 * GiB) as d:
        load(d, "a:1", keep_alive=-1)
        free = 10 * GiB - d.instance("a:1").size_vram  # type: ignore[union-attr]
        assert d.predict("b:1") <= free * 0.8
        load(d, "b:1")
        assert sorted(ps_names(d)) == ["a:1", "b:1"]
        assert d.evictions == []
        # c fits in what is free once b is gone, but not in 80% of it: a is evicted
        load(d, "b:1", keep_alive=0)
        free = 10 * GiB - d.instance("a:1").size_vram  # type: ignore[union-attr]
        assert free * 0.8 < d.predict("c:1") <= free
        load(d, "c:1")
        assert d.evictions == ["a:1"]
        assert ps_names(d) == ["c:1"]


def test_eviction_shortest_keep_alive_first_forever_last() -> None:
    models = [tiny(f"m{i}:1", GiB) for i in range(5)]
    with make_double(models, vram_total=64 * GiB, max_loaded_models=2) as d:
        load(d, "m0:1", keep_alive=-1)  # loaded first, pinned
        load(d, "m1:1", keep_alive="10m")
        load(d, "m2:1", keep_alive="1h")  # max 2: the 10m one goes, not the oldest
        assert d.evictions == ["m1:1"]
        load(d, "m3:1", keep_alive="1m")  # 1h goes before forever
        assert d.evictions == ["m1:1", "m2:1"]
        load(d, "m4:1", keep_alive=-1)  # 1m goes
        assert sorted(ps_names(d)) == ["m0:1", "m4:1"]
        # two pinned models: a pin does not protect; ties go by model file (digest) order
        load(d, "m1:1", keep_alive=-1)
        by_path = sorted(["m0:1", "m4:1"], key=lambda n: d.lookup(n).digest)  # type: ignore[union-attr]
        assert d.evictions[-1] == by_path[0]
        assert sorted(ps_names(d)) == sorted(["m1:1", by_path[1]])


def test_default_max_loaded_models_is_three() -> None:
    models = [tiny(f"m{i}:1", GiB) for i in range(4)]
    with make_double(models, vram_total=64 * GiB) as d:
        for i in range(4):
            load(d, f"m{i}:1", keep_alive=f"{10 - i}m")
        assert d.evictions == ["m2:1"]  # 8m, the shortest of 10m, 9m, 8m
        assert len(d.loaded()) == 3


def test_default_max_loaded_models_is_three_without_a_gpu_too() -> None:
    """server/sched.go: ``defaultModelsPerGPU * max(len(gpus), 1)``, so a CPU-only server
    keeps 3 as well, and the fourth model evicts one whoever loaded it."""
    models = [tiny(f"m{i}:1", GiB) for i in range(4)]
    with make_double(models, vram_total=0) as d:
        for i in range(4):
            load(d, f"m{i}:1", keep_alive=-1)
        assert len(d.evictions) == 1
        assert len(d.loaded()) == 3
        assert all(i.size_vram == 0 for i in d.loaded())


def test_oom_evicts_every_other_model_and_retries_once() -> None:
    models = [tiny("a:1", GiB), tiny("b:1", GiB), tiny("c:1", GiB)]
    with make_double(models, vram_total=64 * GiB) as d:
        load(d, "a:1", keep_alive=-1)
        load(d, "b:1", keep_alive=-1)
        d.oom_unless_alone.add("c:1")
        r = load(d, "c:1")
        assert r.status_code == 200
        assert ps_names(d) == ["c:1"]
        assert sorted(d.evictions) == ["a:1", "b:1"]
        d.load_failures["a:1"] = OOM_TEXT
        r = load(d, "a:1")
        assert r.status_code == 500
        assert r.json() == {"error": OOM_TEXT}
        assert d.loaded() == []  # it took c down with it


# -- scheduling: one load at a time, queue, disconnects ------------------------------------------


def test_queue_full_is_a_503() -> None:
    with make_double(max_queue=0, load_seconds=0.3) as d:
        t = threading.Thread(target=load, args=(d, "llama3.2:1b"), daemon=True)
        t.start()
        wait_until("a load under way", d._load_lock.locked, timeout=5.0)
        r = post(d, "/api/embed", {"model": "nomic-embed-text"})
        assert r.status_code == 503
        assert r.json() == {"error": QUEUE_FULL_TEXT}
        t.join(5)


def test_disconnect_mid_load_aborts_the_load() -> None:
    with make_double(load_seconds=3.0) as d:
        with pytest.raises(httpx.ReadTimeout):
            post(d, "/api/generate", {"model": "llama3.2:1b"}, timeout=0.2)
        wait_until("the load aborted", lambda: d.aborted_loads == 1, timeout=2.0)
        assert d.loaded() == []
        assert not d._load_lock.locked()


# -- other endpoints -----------------------------------------------------------------------------


def test_ps_sorted_latest_expiry_first_and_names_normalised(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive="1m")
    post(double, "/api/embed", {"model": "nomic-embed-text", "keep_alive": -1})
    rows = get(double, "/api/ps").json()["models"]
    assert [r["name"] for r in rows] == ["nomic-embed-text:latest", "llama3.2:1b"]
    assert set(rows[0]) == {
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    }
    load(double, "llama3.2:1b", keep_alive=-1)
    load(double, "nomic-embed-text", keep_alive=0)
    assert ps_names(double) == ["llama3.2:1b"]


def test_missing_model_and_bad_requests(double: OllamaDouble) -> None:
    r = load(double, "nope")
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = post(double, "/api/show", {"model": "nope"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope:latest' not found"})
    r = post(double, "/api/embed", {"model": "nope"})
    assert r.status_code == 404
    r = post(double, "/api/generate", b"{not json")
    assert r.status_code == 400
    r = post(double, "/api/generate", b"")
    assert r.json() == {"error": "missing request body"}
    assert get(double, "/api/nothing").status_code == 404


def test_root_version_tags_show_pull(double: OllamaDouble) -> None:
    assert get(double, "/").text == "Ollama is running"
    assert get(double, "/api/version").json() == {"version": "0.33.0"}
    tags = get(double, "/api/tags").json()["models"]
    assert {t["name"]: t["capabilities"] for t in tags} == {
        "llama3.2:1b": ["completion", "tools"],
        "nomic-embed-text:latest": ["embedding"],
    }
    show = post(double, "/api/show", {"model": "llama3.2:1b"}).json()
    info = show["model_info"]
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 131072
    assert info["llama.block_count"] == 16
    assert info["llama.attention.head_count_kv"] == 8
    assert info["llama.attention.head_count"] == 32
    assert info["llama.embedding_length"] == 2048
    assert show["capabilities"] == ["completion", "tools"]
    r = post(double, "/api/pull", {"model": "llama3.2:1b", "stream": False})
    assert r.json() == {"status": "success"}
    r = post(double, "/api/pull", {"model": "other", "stream": False})
    assert r.status_code == 500
    double.pull_error = "registry unreachable"
    r = post(double, "/api/pull", {"model": "llama3.2:1b"})
    assert json.loads(r.text.splitlines()[-1]) == {"error": "registry unreachable"}


def test_model_parameters_show_and_apply() -> None:
    model = tiny("tuned:1", GiB, parameters={"num_ctx": 8192, "stop": ["<|eot|>", "<|end|>"]})
    with make_double([model]) as d:
        show = post(d, "/api/show", {"model": "tuned:1"}).json()
        assert show["parameters"].splitlines()[0].split() == ["num_ctx", "8192"]
        assert len(show["parameters"].splitlines()) == 3
        load(d, "tuned:1")
        assert d.loaded()[0].num_ctx == 8192
        assert not d.loaded()[0].num_ctx_auto


def test_remove_model(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b")
    double.remove_model("llama3.2:1b")
    assert double.loaded() == []
    assert load(double, "llama3.2:1b").status_code == 404


# -- restart and faults --------------------------------------------------------------------------


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:  # e.g. reset: accepted into the backlog just as the listener closed
        return False


def test_restart_unloads_everything_and_keeps_the_port(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive=-1)
    port = double.port
    with httpx.Client(base_url=double.url, timeout=2.0) as http:
        assert http.get("/api/ps").json()["models"]  # a pooled keep-alive connection
        t = threading.Thread(target=double.restart, kwargs={"down_seconds": 0.2}, daemon=True)
        t.start()
        wait_until("the port refusing", lambda: _refused(port), timeout=2.0)
        t.join(5)
        assert double.port == port
        assert http.get("/api/ps").json() == {"models": []}


def test_hang_is_bounded_by_stop(double: OllamaDouble) -> None:
    double.hang_paths.add("/api/ps")
    with pytest.raises(httpx.ReadTimeout):
        get(double, "/api/ps", timeout=0.2)
    double.hang_paths.clear()
    assert get(double, "/api/version").status_code == 200


def test_error_and_raw_faults(double: OllamaDouble) -> None:
    double.error_paths["/api/ps"] = (503, "busy")
    assert get(double, "/api/ps").status_code == 503
    double.error_paths.clear()
    double.raw_paths["*"] = b"not json"
    assert get(double, "/api/tags").text == "not json"
    double.raw_paths.clear()
    double.missing_paths.add("/api/embed")
    assert post(double, "/api/embed", {"model": "nomic-embed-text"}).text == "404 page not found"


def test_requests_are_logged(double: OllamaDouble) -> None:
    load(double, "llama3.2:1b", keep_alive=-1)
    [(method, path, body)] = double.requests_to("/api/generate")
    assert (method, path) == ("POST", "/api/generate")
    assert body == {"model": "llama3.2:1b", "keep_alive": -1}


# -- as a program --------------------------------------------------------------------------------


def test_runs_as_ollama_serve_under_bare_python(tmp_path: Path) -> None:
    python = shutil.which("python3") or "python3"
    models = tmp_path / "models.json"
    models.write_text(json.dumps([LLAMA.to_json(), EMBED.to_json()]))
    script = Path(__file__).parent / "support" / "ollama_double.py"
    env = {"PATH": os.environ.get("PATH", ""), "OLLAMA_KEEP_ALIVE": "-1"}
    cmd = [python, "-I", "-S", str(script), "--port", "0", "--models", str(models)]
    cmd += ["--vram", str(4 * GiB), "--load-seconds", "0", "--load-seconds-per-gib", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split()[2].rsplit(":", 1)[1])
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(base + "/api/generate", json={"model": "llama3.2:1b"}, timeout=5)
        assert r.json()["done_reason"] == "load"
        [row] = httpx.get(base + "/api/ps", timeout=5).json()["models"]
        assert datetime.fromisoformat(row["expires_at"]).year >= 2300  # OLLAMA_KEEP_ALIVE=-1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0
