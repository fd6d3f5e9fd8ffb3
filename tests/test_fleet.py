"""A fleet behind a real HAProxy (benchmarks/fleet.py): two Ollama doubles, two keepers
(``sentinel-keeper run`` subprocesses) and HAProxy from Debian's package, all on loopback;
a steady stream of requests for a pinned model; one double restarted. With HAProxy checking
the keeper's /ready no client pays a cold load and none fails; with the naive check on
Ollama's ``GET /`` the same run shows cold hits.

HAProxy missing: skipped, unless SENTINEL_E2E=require (CI sets it), where it fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import fleet

SHIPPED = fleet.SHIPPED.read_text(encoding="utf-8")


def haproxy() -> str:
    path = fleet.find_haproxy()
    if path is None:
        reason = "haproxy is not installed (Debian: apt-get install haproxy)"
        if os.environ.get("SENTINEL_E2E", "auto").strip().lower() == "require":
            pytest.fail(f"SENTINEL_E2E=require, but {reason}")
        pytest.skip(reason)
    return path


HOSTS = (fleet.Host("host1", 21434, 29464), fleet.Host("host2", 21435, 29465))


def test_the_benchmark_keeps_every_line_of_the_shipped_file_but_bind_and_server() -> None:
    stats = Path("/run/stats.sock")
    got = fleet.haproxy_config(SHIPPED, check="ready", frontend=20000, hosts=HOSTS, stats=stats)
    kept = [line for line in SHIPPED.splitlines() if line.split()[:1] not in (["bind"], ["server"])]
    assert [line for line in got.splitlines() if line in kept] == kept
    assert "    bind 127.0.0.1:20000" in got.splitlines()
    assert "    server host1 127.0.0.1:21434 check port 29464" in got.splitlines()
    assert "option httpchk GET /ready" in got
    naive = fleet.haproxy_config(SHIPPED, check="naive", frontend=20000, hosts=HOSTS, stats=stats)
    assert "    server host2 127.0.0.1:21435 check" in naive.splitlines()
    assert "option httpchk GET /\n" in naive
    assert [line for line in naive.splitlines() if "/ready" in line.split("#")[0]] == []
    assert [line for line in naive.splitlines() if " port " in line.split("#")[0]] == []


def test_the_shipped_configuration_is_valid_for_haproxy(tmp_path: Path) -> None:
    binary = haproxy()
    for text in (
        SHIPPED,
        fleet.haproxy_config(
            SHIPPED, check="ready", frontend=20000, hosts=HOSTS, stats=tmp_path / "s.sock"
        ),
    ):
        config = tmp_path / "haproxy.cfg"
        config.write_text(text)
        checked = subprocess.run(
            [binary, "-c", "-f", str(config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "WARNING" not in checked.stdout + checked.stderr, checked.stdout + checked.stderr


def test_the_report_replaces_only_its_section() -> None:
    doc = f"# Fleet\n\nprose\n\n{fleet.START}\nold figures\n{fleet.END}\n\nmore prose\n"
    new = fleet.replace_section(doc, f"{fleet.START}\nnew\n{fleet.END}")
    assert new == f"# Fleet\n\nprose\n\n{fleet.START}\nnew\n{fleet.END}\n\nmore prose\n"
    with pytest.raises(ValueError, match="section"):
        fleet.replace_section("no markers", "x")


@pytest.mark.slow
def test_behind_haproxy_ready_spares_the_clients_the_cold_loads_that_the_naive_check_costs(
    tmp_path: Path,
) -> None:
    binary = haproxy()
    settings = fleet.Settings(clients=4, load_seconds=8.0, down_seconds=1.0, warm=2.0, after=40.0)
    ready, naive = fleet.measure(settings, tmp_path, binary)
    for run in (ready, naive):
        assert len(run.answers) > 50, run.check  # a steady stream, before and after
        assert sum(1 for a in run.answers if a.at > run.restart_at + 5) > 10, run.check
        # the restart was felt: HAProxy took the restarted host out, and it came back
        assert run.out_of_rotation("host1") is not None, (run.check, run.changes)
    assert ready.check == "ready"
    assert ready.failed == 0, [a for a in ready.answers if not a.ok]
    assert ready.cold == [], ready.cold
    assert naive.check == "naive"
    assert naive.failed == 0, [a for a in naive.answers if not a.ok]
    assert naive.cold, "the naive check should have sent clients to the cold host"
    assert all(a.at > naive.restart_at for a in naive.cold)
