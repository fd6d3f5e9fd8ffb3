"""The CLI end to end: a real subprocess against the Ollama double over HTTP on 127.0.0.1,
with NVML answered by the stand-in libnvidia-ml.so.1 through the real pynvml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_nvml import FakeGpu, FakeNvml, library_dir, nvml_env
from tests.support.ollama_double import FakeModel, OllamaDouble
from tests.support.ollama_fixtures import NOMIC

pytestmark = pytest.mark.slow

GiB = 1024**3
MiB = 1024**2
ROOT = Path(__file__).resolve().parent.parent

MODELS = [
    FakeModel("llama3.2:1b", size=1300 * MiB),
    NOMIC,
    FakeModel(
        "qwen2.5:0.5b",
        size=400 * MiB,
        block_count=24,
        head_count_kv=2,
        embedding_length=896,
        head_count=14,
    ),
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
        env = nvml_env(library_dir(), self.nvml_config)
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
    assert "keep_alive shortened by a client: expires in 5m" in result.stdout
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
    assert lines[-1] == "also loaded, not in the policy (left alone): mixtral:8x7b"
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
    assert result.stdout.startswith(f"{example}: ok (1 pinned, 1 extras")


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
