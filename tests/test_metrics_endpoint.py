"""The metrics as Prometheus sees them: the catalog's names, the samples of a view, the text
format both ways (prometheus-client's own parser), the read-only endpoint on real loopback
HTTP, and `status`'s read-back."""

from __future__ import annotations

import http.client
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.errors import MetricsError
from sentinel_keeper.metrics import families as f
from sentinel_keeper.metrics.counts import Counts, ModelCounts
from sentinel_keeper.metrics.endpoint import MAX_CONNECTIONS, SOCKET_TIMEOUT, MetricsServer, scrape
from sentinel_keeper.metrics.exposition import parse, registry, render, wsgi_app
from sentinel_keeper.metrics.families import CATALOG, MetricsView, families, series_names
from sentinel_keeper.metrics.readback import Sample, read_figures
from sentinel_keeper.values.listen import ListenAddress, parse_listen
from tests.support.daemon import free_port
from tests.support.planning import NOW, GiB, gpus, loaded, observation, policy

A, X, FOREIGN = "a:1b", "x:1b", "other:7b"
POLICY = policy({"name": A, "options": {"num_ctx": 8192}}, {"name": X, "tier": "extra"})
GPU = gpus((6 * GiB, 8 * GiB))
SEEN = observation(loaded_models=(loaded(A, 2 * GiB, ctx=8192), loaded(FOREIGN, 3 * GiB)), gpu=GPU)
REPORT = PassReport(NOW, 0.2, (A,), (X,), SEEN, final=SEEN)
COUNTS = Counts(
    passes=7,
    models={
        A: ModelCounts(
            tier="pinned",
            loads={"not_loaded": 1, "evicted": 2},
            failures={"timeout": 1},
            evictions=2,
            client_reloads={4096: 3},
            resident_seconds=100.0,
            resident_since=50.0,
            resident_since_unix=NOW.timestamp(),
        ),
        X: ModelCounts(tier="extra"),
    },
    restarts=1,
    ollama_version="0.33.0",
)
VIEW = MetricsView.single(
    POLICY, COUNTS, REPORT, version="0.1.0", python="3.11.7", started_unix=1_700_000_000.0
)
DEFAULT = ("instance", "default")  # every series about an instance says which, first


def view(report: PassReport | None = REPORT, counts: Counts = COUNTS) -> MetricsView:
    """VIEW with another last pass or other counts."""
    (only,) = VIEW.instances
    return replace(VIEW, instances=(replace(only, report=report, counts=counts),))


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in parse(text)}


def page(view: MetricsView = VIEW, mono: float = 60.0) -> str:
    return render(registry(lambda: families(view, mono=mono), process=False)).decode()


# --- the catalog --------------------------------------------------------------------------


def test_every_name_follows_prometheus_conventions() -> None:
    names = [spec.name for spec in CATALOG]
    assert len(names) == len(set(names))
    for spec in CATALOG:
        assert re.fullmatch(r"sentinel_keeper_[a-z][a-z0-9_]*", spec.name), spec.name
        assert not spec.name.endswith("_total"), "the exposition adds _total to counters"
        if spec.kind == "counter":
            assert spec.series_names == (f"{spec.name}_total",)
        if "seconds" in spec.name or "bytes" in spec.name:
            assert spec.name.endswith(("_seconds", "_bytes")) or spec.kind == "counter"
        assert spec.help and not spec.help.endswith(".")
    assert "sentinel_keeper_model_load_duration_seconds_bucket" in series_names()


def test_the_page_holds_every_family_in_the_text_format() -> None:
    text = page()
    for spec in CATALOG:
        shown = spec.name if spec.kind != "counter" else f"{spec.name}_total"
        assert f"# TYPE {shown} {spec.kind}" in text, spec.name
    got = values(text)
    model = (DEFAULT, ("model", A), ("tier", "pinned"))
    assert got[("sentinel_keeper_model_resident", model)] == 1
    assert got[("sentinel_keeper_model_resident", (DEFAULT, ("model", X), ("tier", "extra")))] == 0
    assert (
        got[("sentinel_keeper_model_loads_total", (*model[:2], ("reason", "evicted"), model[2]))]
        == 2
    )
    assert got[("sentinel_keeper_model_resident_seconds_total", model)] == 110.0  # 100 + 60 - 50
    assert got[("sentinel_keeper_model_resident_since_timestamp_seconds", model)] == NOW.timestamp()
    assert got[("sentinel_keeper_model_footprint_bytes", model)] == 2 * GiB
    assert got[("sentinel_keeper_model_context_length", model)] == 8192
    assert got[("sentinel_keeper_model_spilled", model)] == 0
    reloads = (DEFAULT, ("model", A), ("num_ctx", "4096"))
    assert got[("sentinel_keeper_client_reloads_total", reloads)] == 3
    assert got[("sentinel_keeper_foreign_model_loaded", (DEFAULT, ("model", FOREIGN)))] == 1
    assert got[("sentinel_keeper_foreign_model_size_bytes", (DEFAULT, ("model", FOREIGN)))] == (
        3 * GiB
    )
    gpu = {"instance": "default", "gpu": "0", "name": "GPU 0", "uuid": ""}
    gpu_labels = tuple(sorted((k, v) for k, v in gpu.items() if k in f.GPU))
    assert got[("sentinel_keeper_gpu_memory_free_bytes", gpu_labels)] == 6 * GiB
    assert got[("sentinel_keeper_nvml_available", (DEFAULT,))] == 1
    assert got[("sentinel_keeper_ollama_up", (DEFAULT,))] == 1
    assert got[("sentinel_keeper_ollama_info", (DEFAULT, ("version", "0.33.0")))] == 1
    assert got[("sentinel_keeper_ollama_restarts_total", (DEFAULT,))] == 1
    assert got[("sentinel_keeper_passes_total", (DEFAULT,))] == 7
    # the daemon's own figures are about no instance
    assert got[("sentinel_keeper_start_time_seconds", ())] == 1_700_000_000.0
    build = (("python", "3.11.7"), ("version", "0.1.0"))
    assert got[("sentinel_keeper_build_info", build)] == 1
    assert ("sentinel_keeper_model_expected_footprint_bytes", model) in got
    # every reason and failure kind from zero, so that increase() sees the first of each
    reasons = {
        dict(k[1])["reason"]: v
        for k, v in got.items()
        if k[0] == "sentinel_keeper_model_loads_total" and dict(k[1])["model"] == X
    }
    assert reasons == dict.fromkeys(
        ["after_restart", "evicted", "keep_alive_shortened", "not_loaded", "other_num_ctx",
         "unloaded", "window_opened"], 0.0
    )  # fmt: skip
    kinds = {
        dict(k[1])["kind"]: v
        for k, v in got.items()
        if k[0] == "sentinel_keeper_model_load_failures_total" and dict(k[1])["model"] == A
    }
    assert kinds == {"ollama_error": 0, "timeout": 1, "unreachable": 0, "does_not_fit": 0}
    # the histograms: every bucket, +Inf last
    buckets = [s for s in parse(text) if s.name == "sentinel_keeper_pass_duration_seconds_bucket"]
    assert buckets[-1].labels["le"] == "+Inf"


def test_without_nvml_or_ollama_the_gauges_say_so_and_keep_no_stale_values() -> None:
    blind = replace(SEEN, gpu=observation().gpu)
    text = page(view(report=PassReport(NOW, 0.2, (A,), (X,), blind, final=blind)))
    got = values(text)
    assert got[("sentinel_keeper_nvml_available", (DEFAULT,))] == 0
    assert not [k for k in got if k[0].startswith("sentinel_keeper_gpu_memory")]
    down = PassReport(NOW, 0.01, (A,), (X,), None, error="refused")
    got = values(page(view(report=down)))
    assert got[("sentinel_keeper_ollama_up", (DEFAULT,))] == 0
    assert not [k for k in got if k[0] == "sentinel_keeper_model_resident"]  # unknown, not 0
    assert (
        got[
            (
                "sentinel_keeper_model_loads_total",
                (DEFAULT, ("model", A), ("reason", "evicted"), ("tier", "pinned")),
            )
        ]
        == 2
    )


def test_before_the_first_pass_the_daemon_still_answers() -> None:
    got = values(page(view(report=None, counts=Counts())))
    assert got[("sentinel_keeper_ollama_up", (DEFAULT,))] == 0
    assert got[("sentinel_keeper_passes_total", (DEFAULT,))] == 0


def test_hostile_label_values_stay_in_their_label() -> None:
    evil = 'x"} 1\nsentinel_keeper_forged 1\n'
    text = page(view(counts=replace(COUNTS, ollama_version=evil)))
    assert "\nsentinel_keeper_forged 1" not in text
    (info,) = [s for s in parse(text) if s.name == "sentinel_keeper_ollama_info"]
    assert info.labels["version"] == evil


# --- the endpoint -------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    made = registry(lambda: families(VIEW, mono=60.0), process=True)
    running = MetricsServer(ListenAddress("127.0.0.1", 0), wsgi_app(made))
    try:
        yield running
    finally:
        running.stop()


def ask(port: int, method: str, path: str = "/metrics") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def test_get_serves_the_page_and_head_its_headers(server: MetricsServer) -> None:
    status, headers, body = ask(server.port, "GET")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    assert "process_resident_memory_bytes" in body.decode()  # the endpoint's own figures
    assert values(body.decode())[("sentinel_keeper_passes_total", (DEFAULT,))] == 7
    status, headers, body = ask(server.port, "HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 1000


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_every_other_method_is_refused(server: MetricsServer, method: str) -> None:
    status, headers, body = ask(server.port, method)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert b"read-only" in body


def test_other_paths_are_not_found_and_the_root_points_at_metrics(server: MetricsServer) -> None:
    assert ask(server.port, "GET", "/")[0] == 200
    assert b"/metrics" in ask(server.port, "GET", "/")[2]
    assert ask(server.port, "GET", "/admin")[0] == 404
    assert ask(server.port, "GET", "/metrics/../etc/passwd")[0] == 404


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        made = registry(lambda: (), process=False)
        with pytest.raises(MetricsError) as raised:
            MetricsServer(ListenAddress("127.0.0.1", port), wsgi_app(made))
        # the setting to change, and what holds the port (this test's own process)
        assert str(raised.value).startswith(
            f"cannot listen on 127.0.0.1:{port} (metrics.listen): "
        ), raised.value
        assert f"; held by pid {os.getpid()} (" in str(raised.value)


def test_scrape_reads_the_page_and_says_why_when_nothing_answers(server: MetricsServer) -> None:
    figures = read_figures(parse(scrape(ListenAddress("127.0.0.1", server.port))))
    assert (figures.passes_of("default"), figures.total_passes) == (7, 7)
    models = figures.models_of("default")
    assert models[A].loads == {"not_loaded": 1, "evicted": 2}
    assert models[A].resident_since == NOW.timestamp()
    assert models[A].client_reloads == {"4096": 3}
    assert models[X].resident_since is None
    assert figures.models_of("gpu1") == {}
    port = free_port()
    with pytest.raises(MetricsError, match=rf"127.0.0.1:{port}/metrics: .*refused"):
        scrape(ListenAddress("127.0.0.1", port), timeout=2.0)


def test_another_programs_page_is_not_taken_for_the_daemons() -> None:
    with pytest.raises(ValueError, match="not sentinel-keeper's"):
        read_figures([Sample("otelcol_process_uptime", {}, 5.0)])
    with pytest.raises(ValueError, match="not Prometheus text format"):
        parse("<html>hello</html>\n")


@pytest.mark.slow
def test_idle_connections_do_not_shut_out_a_scrape(server: MetricsServer) -> None:
    """More silent connections than the server serves at once: each is dropped after the
    socket timeout, so a scrape gets through within it."""
    idle = [
        socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS + 4)
    ]
    try:
        time.sleep(0.2)
        begun = time.monotonic()
        done: list[str] = []
        thread = threading.Thread(
            target=lambda: done.append(scrape(ListenAddress("127.0.0.1", server.port), timeout=30))
        )
        thread.start()
        thread.join(timeout=6 * SOCKET_TIMEOUT)
        took = time.monotonic() - begun
        assert done and "sentinel_keeper_build_info" in done[0]
        # the idle ones time out in two rounds of MAX_CONNECTIONS, then the scrape is served
        assert took < 4 * SOCKET_TIMEOUT, took
    finally:
        for connection in idle:
            connection.close()


# --- the listen address -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown", "loopback", "url"),
    [
        ("127.0.0.1:9464", "127.0.0.1:9464", True, "http://127.0.0.1:9464/metrics"),
        ("localhost:9464", "localhost:9464", True, "http://127.0.0.1:9464/metrics"),
        ("[::1]:9464", "[::1]:9464", True, "http://[::1]:9464/metrics"),
        ("0.0.0.0:9100", "0.0.0.0:9100", False, "http://127.0.0.1:9100/metrics"),
        ("[::]:9100", "[::]:9100", False, "http://[::1]:9100/metrics"),
        (" 192.168.1.5:80 ", "192.168.1.5:80", False, "http://192.168.1.5:80/metrics"),
    ],
)
def test_listen_addresses(text: str, shown: str, loopback: bool, url: str) -> None:
    address = parse_listen(text)
    assert (str(address), address.loopback, address.url) == (shown, loopback, url)


@pytest.mark.parametrize(
    "text",
    ["9464", "127.0.0.1", "host.example:9464", "::1:9464", "127.0.0.1:0", "127.0.0.1:65536",
     "[::1]9464", "127.0.0.1:94a", 9464, None, "1.2.3.4.5:80"],
)  # fmt: skip
def test_bad_listen_addresses_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match=r"must be|port"):
        parse_listen(text)


def test_the_catalog_module_knows_every_spec() -> None:
    assert {spec.name for spec in CATALOG} >= {f.RESIDENT.name, f.LOADS.name, f.BUILD.name}


def test_a_scraper_that_resets_the_connection_leaves_no_traceback(
    server: MetricsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        rude = socket.create_connection(("127.0.0.1", server.port))
        rude.sendall(b"GET /met")
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()  # a reset, in the middle of the request line
    time.sleep(0.3)
    assert "sentinel_keeper_build_info" in scrape(ListenAddress("127.0.0.1", server.port))
    assert "Traceback" not in capsys.readouterr().err
