"""The CLI end to end: a real subprocess against the Ollama double over HTTP on 127.0.0.1,
with NVML answered by the stand-in libnvidia-ml.so.1 through the real pynvml."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel_keeper.metrics.counts import Counts, ModelCounts
from sentinel_keeper.metrics.endpoint import MetricsServer
from sentinel_keeper.metrics.exposition import registry, wsgi_app
from sentinel_keeper.metrics.families import MetricsView, families
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.values.listen import ListenAddress
from tests.support.daemon import free_port
from tests.support.fake_nvml import FakeGpu, FakeNvml, library_dir, nvml_env
from tests.support.ollama_double import FakeModel, OllamaDouble
from tests.support.ollama_fixtures import CLI_MODELS

pytestmark = pytest.mark.slow

GiB = 1024**3
MiB = 1024**2
ROOT = Path(__file__).resolve().parent.parent

MODELS = [
    *CLI_MODELS,
    FakeModel(
        "qwen2.5:1.5b",
        size=1000 * MiB,
        block_count=28,
        head_count_kv=2,
        embedding_length=1536,
        head_count=12,
    ),
    FakeModel("mixtral:8x7b", size=2 * GiB),
]


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    server = OllamaDouble(MODELS, vram_total=16 * GiB, load_seconds=0.05).start()
    try:
        yield server
    finally:
        server.stop()


class Cli:
    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        self.policy = tmp / "policy.yaml"
        self.state = tmp / "state"
        self.nvml_config = tmp / "nvml.conf"
        self.nvml = True  # False: a host without libnvidia-ml.so.1 (CPU-only, not NVIDIA)
        FakeNvml(
            gpus=(FakeGpu(name="NVIDIA GeForce GTX 1050", total=16 * GiB, used=0, free=16 * GiB),)
        ).write(self.nvml_config)

    def write_policy(self, body: str) -> None:
        self.policy.write_text(f"ollama: {{url: '{self.url}'}}\n{body}")

    def set_free(self, free: int) -> None:
        gpu = FakeGpu(
            name="NVIDIA GeForce GTX 1050", total=16 * GiB, used=16 * GiB - free, free=free
        )
        FakeNvml(gpus=(gpu,)).write(self.nvml_config)

    def __call__(self, *args: str, policy: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "sentinel_keeper"]
        if policy:
            argv += ["--policy", str(self.policy), "--state-dir", str(self.state)]
        if self.nvml:
            env = nvml_env(library_dir(), self.nvml_config)
        else:
            empty = self.tmp / "no-nvml"
            empty.mkdir(exist_ok=True)
            env = nvml_env(empty)
        env.pop("SENTINEL_POLICY", None)
        return subprocess.run(
            [*argv, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=self.tmp,
            check=False,
        )


@pytest.fixture
def cli(tmp_path: Path, double: OllamaDouble) -> Cli:
    return Cli(tmp_path, double.url)


def client_request(url: str, path: str, body: dict[str, Any]) -> Any:
    """A client of Ollama other than the keeper (a chat app, an agent)."""
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read().decode().splitlines()[-1])


def load_requests(double: OllamaDouble) -> list[tuple[str, Any]]:
    return [(r.path, r.body) for r in double.requests if r.path in ("/api/generate", "/api/embed")]


PINNED = """\
models:
  - name: llama3.2:1b
    options: {num_ctx: 2048}
  - name: nomic-embed-text
"""


def test_once_loads_pinned_models_forever_without_generating(
    cli: Cli, double: OllamaDouble
) -> None:
    cli.write_policy(PINNED)
    result = cli("once")
    assert result.returncode == 0, result.stdout + result.stderr
    requests = load_requests(double)
    assert [(path, body["model"]) for path, body in requests] == [
        ("/api/generate", "llama3.2:1b"),
        ("/api/embed", "nomic-embed-text:latest"),
    ]
    for _, body in requests:
        assert body["keep_alive"] == -1  # a JSON number: the string "-1" is a 400 in Ollama
        assert "prompt" not in body and "input" not in body
    assert requests[0][1]["options"] == {"num_ctx": 2048}
    assert double.tokens_generated == 0
    llama = double.instance("llama3.2:1b")
    embed = double.instance("nomic-embed-text:latest")
    assert llama is not None and llama.forever and llama.num_ctx == 2048
    assert embed is not None and embed.forever
    assert "load      llama3.2:1b" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("2/2 pinned resident")
    # The second run finds everything in place: nothing to do, nothing sent.
    double.clear_requests()
    again = cli("once")
    assert again.returncode == 0
    assert "nothing to do" in again.stdout
    assert load_requests(double) == []


def test_once_repins_a_shortened_keep_alive_without_reloading(
    cli: Cli, double: OllamaDouble
) -> None:
    cli.write_policy(PINNED)
    assert cli("once").returncode == 0
    loads_before = double.load_count
    client_request(
        double.url,
        "/api/generate",
        {
            "model": "llama3.2:1b",
            "prompt": "hi",
            "keep_alive": "5m",
            "options": {"num_ctx": 2048},
            "stream": False,
        },
    )
    shortened = double.instance("llama3.2:1b")
    assert shortened is not None and not shortened.forever
    result = cli("once")
    assert result.returncode == 0
    assert "reassert  llama3.2:1b" in result.stdout
    # 5m from the client's request, less the time `once` took to start on a busy machine
    assert re.search(
        r"keep_alive shortened by a client: expires in (5m|4m[1-5]?\ds)\b", result.stdout
    )
    repinned = double.instance("llama3.2:1b")
    assert repinned is not None and repinned.forever
    assert double.load_count == loads_before  # the timer moved; the model was not reloaded


def test_once_reloads_a_model_a_client_loaded_with_another_num_ctx(
    cli: Cli, double: OllamaDouble
) -> None:
    cli.write_policy(PINNED)
    client_request(
        double.url, "/api/generate", {"model": "llama3.2:1b", "options": {"num_ctx": 8192}}
    )
    assert double.instance("llama3.2:1b").num_ctx == 8192  # type: ignore[union-attr]
    result = cli("once")
    assert result.returncode == 0, result.stdout
    assert "reload    llama3.2:1b" in result.stdout
    assert "loaded with num_ctx 8192, policy says 2048" in result.stdout
    instance = double.instance("llama3.2:1b")
    assert instance is not None and instance.num_ctx == 2048 and instance.forever


def test_once_loads_extras_only_while_they_fit(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy(
        """\
models:
  - {name: llama3.2:1b, options: {num_ctx: 2048}}
  - {name: qwen2.5:1.5b, tier: extra, priority: 5}
  - {name: qwen2.5:0.5b, tier: extra, priority: 9}
vram: {headroom: 256MiB}
"""
    )
    # Room for the 0.5b model (about 0.5 GiB with its cache) but not for both.
    cli.set_free(1 * GiB)
    result = cli("once")
    assert result.returncode == 0, result.stdout + result.stderr
    # One `once` realises the whole policy: the pinned model first, then (in the pass after
    # it, the planner leaves extras alone while a pinned model loads) the extra that fits;
    # the extra that does not says why.
    lines = result.stdout.splitlines()
    loads = [line.split()[1] for line in lines if line.startswith("load ")]
    assert loads == ["llama3.2:1b", "qwen2.5:0.5b"], result.stdout
    assert "qwen2.5:1.5b not loaded: needs" in result.stdout
    assert "1/1 pinned resident, 1/2 extras" in lines[-1]
    extra = double.instance("qwen2.5:0.5b")
    assert extra is not None and not extra.forever  # finite keep_alive: evicted before pinned
    assert extra.keep_alive_ns == 3600 * 10**9
    assert double.instance("qwen2.5:1.5b") is None
    # Remembered footprint of the loaded extra, for the next estimate.
    state = json.loads((cli.state / "state.json").read_text())
    assert state["footprints"]["qwen2.5:0.5b"]["size"] == extra.size
    # Free memory falls below the headroom: the extra is shed.
    cli.set_free(100 * MiB)
    result = cli("once")
    assert "unload    qwen2.5:0.5b" in result.stdout
    assert double.instance("qwen2.5:0.5b") is None
    assert double.instance("llama3.2:1b") is not None


def test_once_leaves_foreign_models_alone(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy(PINNED)
    client_request(double.url, "/api/generate", {"model": "mixtral:8x7b", "keep_alive": "30s"})
    before = double.instance("mixtral:8x7b")
    assert cli("once").returncode == 0
    after = double.instance("mixtral:8x7b")
    assert before is not None and after is not None
    assert (after.expires_at, after.keep_alive_ns) == (before.expires_at, before.keep_alive_ns)
    assert all(body.get("model") != "mixtral:8x7b" for _, body in load_requests(double)[1:])


def test_once_reports_a_missing_model_and_exits_1(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy("models:\n  - name: llama3.2:1b\n  - name: not-pulled:7b\n")
    result = cli("once")
    assert result.returncode == 1
    assert (
        "not-pulled:7b is not installed in Ollama (run `ollama pull not-pulled:7b`" in result.stdout
    )
    assert "1/2 pinned resident" in result.stdout
    assert "missing: not-pulled:7b" in result.stdout


def test_once_with_ollama_down_exits_69(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy(PINNED)
    double.stop()
    result = cli("once")
    assert result.returncode == 69
    assert f"ollama at {double.url} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_shows_models_gpu_and_version(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy(PINNED + "  - {name: qwen2.5:0.5b, tier: extra}\n")
    assert cli("once").returncode == 0
    client_request(double.url, "/api/generate", {"model": "mixtral:8x7b", "keep_alive": "30s"})
    result = cli("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"ollama 0.33.0 at {double.url}"
    assert lines[1] == "GPU0 16.0 of 16.0 GiB free"
    llama = next(line for line in lines if line.startswith("llama3.2:1b"))
    assert "pinned" in llama and "resident" in llama and "forever" in llama and "2048" in llama
    extra = next(line for line in lines if line.startswith("qwen2.5:0.5b"))
    assert "not loaded" in extra
    assert "also loaded, not in the policy (left alone): mixtral:8x7b" in lines
    data = json.loads(cli("status", "--json").stdout)
    assert data["ollama"] == {"url": double.url, "version": "0.33.0"}
    assert data["gpu"]["gpus"][0]["name"] == "NVIDIA GeForce GTX 1050"
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["llama3.2:1b"]["resident"] and by_name["llama3.2:1b"]["forever"]
    assert by_name["llama3.2:1b"]["context_length"] == 2048
    assert not by_name["qwen2.5:0.5b"]["resident"]
    assert data["foreign_models"] == ["mixtral:8x7b"]


def test_check_reports_every_error_with_line_and_column(cli: Cli) -> None:
    cli.policy.write_text(
        "interval: soon\nmodels:\n  - name: a\n    options: {num_ctx: big}\n  - name: a\n"
    )
    result = cli("check")
    assert result.returncode == 78
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'{cli.policy}:1:11: interval: must be a duration such as "15s", "5m", "1h30m" or whole '
        'seconds, got "soon"',
        f'{cli.policy}:4:24: models[0].options.num_ctx: must be a positive integer, got "big"',
        f"{cli.policy}:5:11: models[1].name: duplicate of models[0] (a:latest)",
        f"{cli.policy}: 3 errors",
    ]


def test_check_accepts_the_shipped_example_and_the_policy_variable(cli: Cli) -> None:
    example = ROOT / "etc" / "sentinel" / "policy.yaml"
    env = dict(os.environ, SENTINEL_POLICY=str(example))
    result = subprocess.run(
        [sys.executable, "-m", "sentinel_keeper", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{example}: ok (1 pinned, 1 extra")


def test_missing_policy_is_a_config_error(cli: Cli) -> None:
    result = cli("--policy", str(cli.tmp / "nope.yaml"), "once", policy=False)
    assert result.returncode == 78
    assert "nope.yaml: no such file" in result.stderr
    assert ":1:1:" not in result.stderr  # a file that is not there has no line 1


def test_schema_and_help(cli: Cli) -> None:
    schema = json.loads(cli("schema", policy=False).stdout)
    assert schema["title"] == "sentinel-keeper policy"
    helptext = cli("--help", policy=False).stdout
    for code in ("69", "70", "78"):
        assert f"\n  {code}" in helptext
    assert cli("bogus", policy=False).returncode == 2


def test_status_exits_3_for_a_pinned_model_not_resident_and_4_not_installed(
    cli: Cli, double: OllamaDouble
) -> None:
    cli.write_policy(PINNED)
    result = cli("status")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "pinned, not resident: llama3.2:1b, nomic-embed-text:latest" in result.stderr
    assert json.loads(cli("status", "--json").stdout)["pinned_not_resident"] == [
        "llama3.2:1b",
        "nomic-embed-text:latest",
    ]
    assert cli("status", "--json").returncode == 3
    assert cli("once").returncode == 0
    assert cli("status").returncode == 0
    cli.write_policy(PINNED + "  - name: not-pulled:7b\n")
    result = cli("status")
    assert result.returncode == 4  # not installed outranks not resident
    assert "pinned not-pulled:7b is not installed (run `ollama pull not-pulled:7b`)" in (
        result.stderr
    )
    data = json.loads(cli("status", "--json").stdout)
    assert data["pinned_not_installed"] == ["not-pulled:7b"]
    # An extra that is not loaded is no reason to fail a health check.
    cli.write_policy(PINNED + "  - {name: not-pulled:7b, tier: extra}\n")
    assert cli("status").returncode == 0


def test_status_marks_drift_from_the_policy(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy(PINNED)
    assert cli("once").returncode == 0
    client_request(
        double.url,
        "/api/generate",
        {"model": "llama3.2:1b", "keep_alive": "5m", "options": {"num_ctx": 8192}},
    )
    result = cli("status")
    assert result.returncode == 0  # resident: drift is shown, not failed on
    llama = next(line for line in result.stdout.splitlines() if line.startswith("llama3.2:1b"))
    assert "drift: num_ctx 8192, policy says 2048; not forever, policy says forever" in llama
    embed = next(line for line in result.stdout.splitlines() if line.startswith("nomic"))
    assert "drift" not in embed
    data = json.loads(cli("status", "--json").stdout)
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["llama3.2:1b"]["drift"] == [
        "num_ctx 8192, policy says 2048",
        "not forever, policy says forever",
    ]
    assert by_name["llama3.2:1b"]["policy_num_ctx"] == 2048
    assert by_name["nomic-embed-text:latest"]["drift"] == []
    # A num_ctx above the trained context shows capped in /api/ps: that is no drift.
    cli.write_policy("models:\n  - {name: qwen2.5:0.5b, options: {num_ctx: 262144}}\n")
    assert cli("once").returncode == 0
    result = cli("status")
    assert result.returncode == 0
    qwen = next(line for line in result.stdout.splitlines() if line.startswith("qwen2.5:0.5b"))
    assert "131072" in qwen and "drift" not in qwen, qwen


def test_status_json_with_ollama_down_says_so_and_exits_69(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy(PINNED)
    double.stop()
    result = cli("status", "--json")
    assert result.returncode == 69
    data = json.loads(result.stdout)
    assert data["reachable"] is False
    assert f"ollama at {double.url} is unreachable" in data["error"]
    assert data["ollama"] == {"url": double.url, "version": None}
    assert [m["name"] for m in data["models"]] == ["llama3.2:1b", "nomic-embed-text:latest"]
    assert "systemctl status ollama" in data["hint"]


@pytest.mark.parametrize("command", [["status"], ["once"], ["check", "--online"], ["bench"]])
def test_unreachable_ollama_names_the_policy_key_and_the_unit(
    cli: Cli, double: OllamaDouble, command: list[str]
) -> None:
    cli.write_policy(PINNED)
    double.stop()
    result = cli(*command)
    assert result.returncode == 69, result.stderr
    assert f"ollama at {double.url} is unreachable" in result.stderr
    assert f"ollama.url is {double.url} (set in {cli.policy})" in result.stderr
    assert "try `systemctl status ollama.service`" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_warns_about_an_empty_model_list(cli: Cli) -> None:
    cli.write_policy("models: []\n")
    result = cli("check")
    assert result.returncode == 0
    assert "models: is empty: there is nothing to keep warm" in result.stderr
    cli.write_policy(PINNED)
    assert "empty" not in cli("check").stderr


def test_check_online_reports_missing_models_and_num_ctx_above_the_trained_context(
    cli: Cli, double: OllamaDouble
) -> None:
    cli.write_policy(
        PINNED
        + "  - {name: not-pulled:7b, tier: extra}\n"
        + "  - {name: qwen2.5:0.5b, tier: extra, options: {num_ctx: 262144}}\n"
        + "  - {name: pulled-later:1b, pull: true}\n"
    )
    offline = cli("check")
    assert offline.returncode == 0, offline.stderr  # offline: no request to Ollama
    assert double.requests == []
    result = cli("check", "--online")
    assert result.returncode == 4, result.stdout + result.stderr
    # the warnings about num_ctx and clients that send none come first (tests/test_context.py)
    errors = [x for x in result.stderr.splitlines() if not x.startswith("warning: ")]
    assert errors == [
        f"{cli.policy}: models[2] not-pulled:7b: not installed in Ollama "
        "(run `ollama pull not-pulled:7b`, or set pull: true)",
        f"{cli.policy}: models[3] qwen2.5:0.5b: options.num_ctx 262144 is above the 131072 "
        "tokens it was trained with (Ollama caps it at 131072; set num_ctx to at most that)",
        f"{cli.policy}: 2 problems with ollama at {double.url}",
    ]
    assert "pulled-later:1b is not installed; pull: true pulls it" in result.stdout
    cli.write_policy(PINNED)
    ok = cli("check", "--online")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{cli.policy}: ok (2 pinned, 0 extras; ollama 0.33.0 at")


def test_without_nvml_each_command_says_so_once(cli: Cli, double: OllamaDouble) -> None:
    cli.nvml = False
    cli.write_policy(PINNED + "  - {name: qwen2.5:0.5b, tier: extra}\n")
    result = cli("once")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert output.count("GPU memory unknown") == 1, output
    assert output.count("need vram.budget") == 1, output
    assert "GPU memory is unknown" not in output  # the planner's finding is not repeated
    status = cli("status")
    output = status.stdout + status.stderr
    assert output.count("GPU memory unknown") == 1, output
    assert output.count("need vram.budget") == 1, output
    # With a budget, or without extras, there is nothing to say about vram.budget.
    cli.write_policy(PINNED + "  - {name: qwen2.5:0.5b, tier: extra}\nvram: {budget: 8GiB}\n")
    assert "need vram.budget" not in cli("once").stdout
    cli.write_policy(PINNED)
    assert "need vram.budget" not in cli("status").stdout


def test_policy_and_state_dir_after_the_command(cli: Cli, double: OllamaDouble) -> None:
    cli.write_policy(PINNED)
    result = cli("once", "--policy", str(cli.policy), "--state-dir", str(cli.state), policy=False)
    assert result.returncode == 0, result.stderr
    assert (cli.state / "state.json").exists()
    # after the command wins over before it, as for any option given twice
    result = cli(
        "--policy", str(cli.tmp / "nope.yaml"), "check", "--policy", str(cli.policy), policy=False
    )
    assert result.returncode == 0, result.stderr
    # before the command still works, and is not reset by the command's own parser
    assert cli("--policy", str(cli.policy), "status", policy=False).returncode == 0


def test_each_command_help_lists_only_its_own_exit_codes(cli: Cli) -> None:
    def codes(*argv: str) -> set[str]:
        text = cli(*argv, "--help", policy=False).stdout
        tail = text.split("exit codes:\n", 1)[1]
        return {
            line.split()[0]
            for line in tail.splitlines()
            if line.startswith("  ") and line.split()[0].isdigit()
        }

    assert codes("status") == {"0", "2", "3", "4", "69", "70", "78"}
    assert codes("check") == {"0", "2", "4", "69", "70", "78"}
    assert codes("once") == {"0", "1", "2", "69", "70", "78"}
    assert codes("schema") == {"0", "2", "70"}
    assert codes("apply-override") == {"0", "2", "69", "70", "73", "78"}
    assert codes("bench") == {"0", "1", "2", "69", "70", "78"}
    assert codes("run") == {"0", "2", "70", "78"}
    assert codes() == {"0", "1", "2", "3", "4", "69", "70", "73", "78"}
    assert "--policy PATH" in cli("status", "--help", policy=False).stdout
    assert "--policy" not in cli("schema", "--help", policy=False).stdout


# --- status: the daemon's lifetime figures, from its metrics endpoint ----------------------


def _figures_server(view_counts: Counts, source: Path, url: str) -> MetricsServer:
    """A daemon's metrics endpoint for the policy file ``source`` with Ollama at ``url``."""
    policy = parse_policy(
        f"ollama: {{url: '{url}'}}\nmodels:\n  - name: llama3.2:1b\n", str(source)
    )
    view = MetricsView.single(
        policy, view_counts, None, version="0.1.0", python="3.11.7", started_unix=time.time() - 3700
    )
    made = registry(lambda: families(view, mono=time.monotonic()), process=False)
    return MetricsServer(ListenAddress("127.0.0.1", free_port()), wsgi_app(made))


def test_status_shows_the_running_daemons_figures(cli: Cli, double: OllamaDouble) -> None:
    counts = Counts(
        passes=240,
        models={
            "llama3.2:1b": ModelCounts(
                tier="pinned",
                loads={"not_loaded": 1, "evicted": 2},
                evictions=2,
                failures={"timeout": 1},
                client_reloads={4096: 3},
                resident_since=time.monotonic() - 600,
                resident_since_unix=time.time() - 600,
            )
        },
    )
    server = _figures_server(counts, cli.policy, cli.url)
    try:
        cli.write_policy(f"metrics: {{listen: '127.0.0.1:{server.port}'}}\n" + PINNED)
        assert cli("once").returncode == 0
        result = cli("status")
        data = json.loads(cli("status", "--json").stdout)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    head = next(line for line in lines if line.startswith("daemon figures since it started"))
    assert "(1h1m ago), 240 passes" in head, head
    assert head.endswith(f"(from http://127.0.0.1:{server.port}/metrics):")
    llama = lines[lines.index(head) + 1]
    assert llama.startswith("  llama3.2:1b ")
    assert re.search(r"resident since \S+ \S+ \(10m(\ds)? ago\)", llama), llama
    assert "loaded 3x: 2 evicted, 1 not_loaded" in llama
    assert "evicted 2x" in llama and "failed loads: 1 timeout" in llama
    assert "reloaded by clients with num_ctx 4096 3x" in llama
    daemon = data["daemon"]
    assert daemon["available"] and daemon["passes"] == 240
    assert daemon["models"]["llama3.2:1b"]["loads"] == {"evicted": 2, "not_loaded": 1}
    assert daemon["models"]["llama3.2:1b"]["client_reloads"] == {"4096": 3}
    assert daemon["models"]["llama3.2:1b"]["resident_since"].endswith("+00:00")


def test_status_does_not_show_another_daemons_figures_as_its_own(
    cli: Cli, double: OllamaDouble
) -> None:
    """Another sentinel-keeper (another policy, or the same file's name with another Ollama)
    holds metrics.listen: its figures are not this policy's daemon's."""
    counts = Counts(passes=240, models={"llama3.2:1b": ModelCounts(tier="pinned", evictions=7)})
    other = cli.tmp / "other" / "policy.yaml"
    other.parent.mkdir()
    for source, url in ((other, cli.url), (cli.policy, "http://127.0.0.1:1")):
        server = _figures_server(counts, source, url)
        try:
            cli.write_policy(f"metrics: {{listen: '127.0.0.1:{server.port}'}}\n" + PINNED)
            assert cli("once").returncode == 0
            result = cli("status")
            data = json.loads(cli("status", "--json").stdout)
        finally:
            server.stop()
        assert result.returncode == 0, result.stderr
        assert "240 passes" not in result.stdout and "evicted 7x" not in result.stdout
        (line,) = [x for x in result.stdout.splitlines() if x.startswith("daemon figures")]
        assert line.startswith(
            f"daemon figures: not available: http://127.0.0.1:{server.port}/metrics "
            "(metrics.listen): it is another sentinel-keeper's, one that runs another policy "
            f"file or another Ollama than this policy ({os.path.realpath(cli.policy)}, "
            f"instance default, Ollama {cli.url}): its figures are not shown"
        ), line
        assert data["daemon"]["available"] is False
        assert "another sentinel-keeper's" in data["daemon"]["error"]


def test_status_says_why_the_daemons_figures_are_missing(cli: Cli, double: OllamaDouble) -> None:
    port = free_port()
    cli.write_policy(f"metrics: {{listen: '127.0.0.1:{port}'}}\n" + PINNED)
    result = cli("status")
    assert result.returncode == 3  # the figures change no exit code
    assert (
        f"daemon figures: not available: http://127.0.0.1:{port}/metrics: Connection refused "
        "(is the daemon running? `systemctl status sentinel-keeper`)"
    ) in result.stdout.splitlines()
    data = json.loads(cli("status", "--json").stdout)["daemon"]
    assert data["available"] is False and "refused" in data["error"]
    cli.write_policy("metrics: {listen: null}\n" + PINNED)
    assert (
        "daemon figures: not available: the policy turns the metrics endpoint off "
        "(metrics.listen)" in cli("status").stdout
    )
    with socket.socket() as other:  # another program's HTTP server on the port
        other.bind(("127.0.0.1", port))
        other.listen()
        cli.write_policy(f"metrics: {{listen: '127.0.0.1:{port}'}}\n" + PINNED)
        answering = threading.Thread(target=_answer_once, args=(other,), daemon=True)
        answering.start()
        text = cli("status").stdout
        answering.join(timeout=10)
    assert "not sentinel-keeper's" in text, text


def _answer_once(server: socket.socket) -> None:
    connection, _ = server.accept()
    with connection:
        connection.recv(65536)
        body = b"# TYPE otelcol_up gauge\notelcol_up 1\n"
        connection.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
