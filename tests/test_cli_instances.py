"""The one-shot commands with several Ollama instances in one policy: real processes against
two Ollama doubles on two loopback ports, NVML answered by the stand-in library with two GPUs.
Each instance runs on its own; one being down does not stop the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel_keeper.override.render import DROPIN_NAME
from tests.support.fake_nvml import FakeGpu, FakeNvml, library_dir, nvml_env
from tests.support.ollama_double import OllamaDouble
from tests.support.ollama_fixtures import CLI_MODELS

pytestmark = pytest.mark.slow

GiB = 1024**3

MODELS = list(CLI_MODELS)

STAND_IN_SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >> "$SYSTEMCTL_LOG"
exit 0
"""


@pytest.fixture
def doubles() -> Iterator[tuple[OllamaDouble, OllamaDouble]]:
    first = OllamaDouble(MODELS, vram_total=16 * GiB, load_seconds=0.05).start()
    second = OllamaDouble(MODELS, vram_total=16 * GiB, load_seconds=0.05).start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


class Cli:
    """``sentinel-keeper`` as a process with a two-instance policy: gpu0 (ollama.service on
    the first double, GPU 0) and gpu1 (ollama-gpu1.service on the second, GPU 1)."""

    def __init__(self, tmp: Path, first: OllamaDouble, second: OllamaDouble) -> None:
        self.tmp = tmp
        self.first, self.second = first, second
        self.policy = tmp / "policy.yaml"
        self.state = tmp / "state"
        self.units = tmp / "units"
        self.units.mkdir()
        nvml_config = tmp / "nvml.conf"
        gpu = FakeGpu(name="NVIDIA GeForce GTX 1050", total=16 * GiB, used=0, free=16 * GiB)
        FakeNvml(gpus=(gpu, gpu)).write(nvml_config)
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        systemctl = bin_dir / "systemctl"
        systemctl.write_text(STAND_IN_SYSTEMCTL)
        systemctl.chmod(0o755)
        self.systemctl_log = tmp / "systemctl.log"
        env = {
            k: v
            for k, v in nvml_env(library_dir(), nvml_config).items()
            if not k.startswith(("SENTINEL_", "SYSTEMCTL_"))
        }
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            SYSTEMCTL_LOG=str(self.systemctl_log),
            SENTINEL_SYSTEMD_RUNNING="1",
            SENTINEL_SYSTEMD_UNIT_PATH=str(self.units),
        )
        self.env = env

    def write_policy(self, models: str, extra: str = "") -> None:
        self.policy.write_text(
            "instances:\n"
            f"  - {{name: gpu0, url: '{self.first.url}', gpus: [0], keep_alive: 24h}}\n"
            f"  - {{name: gpu1, url: '{self.second.url}', unit: ollama-gpu1.service, gpus: [1],"
            " environment: {OLLAMA_NUM_PARALLEL: 2}}\n"
            f"models:\n{models}{extra}"
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "sentinel_keeper", "--policy", str(self.policy)]
        return subprocess.run(
            [*argv, "--state-dir", str(self.state), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            cwd=self.tmp,
            check=False,
        )


@pytest.fixture
def cli(tmp_path: Path, doubles: tuple[OllamaDouble, OllamaDouble]) -> Cli:
    return Cli(tmp_path, *doubles)


# llama on the first instance; nomic (pinned) and qwen (extra) on the second
MODELS_YAML = """\
  - {name: llama3.2:1b, instance: gpu0, options: {num_ctx: 2048}}
  - {name: nomic-embed-text, instance: gpu1}
  - {name: qwen2.5:0.5b, instance: gpu1, tier: extra}
"""


def loaded(double: OllamaDouble) -> list[str]:
    return [
        r.body["model"]
        for r in double.requests
        if r.path in ("/api/generate", "/api/embed") and isinstance(r.body, dict)
    ]


def blocks(stdout: str) -> list[list[str]]:
    """The output's blocks, one per instance (separated by an empty line)."""
    return [block.splitlines() for block in stdout.strip().split("\n\n")]


def test_once_warms_each_instance_on_its_own_ollama(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    result = cli("once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert loaded(cli.first) == ["llama3.2:1b"]
    assert loaded(cli.second) == ["nomic-embed-text:latest", "qwen2.5:0.5b"]
    first, second = blocks(result.stdout)
    assert (
        first[0] == f"instance gpu0: ollama 0.33.0 at {cli.first.url}; GPU0 16.0 of 16.0 GiB free"
    )
    assert second[0] == (
        f"instance gpu1: ollama 0.33.0 at {cli.second.url}; GPU1 16.0 of 16.0 GiB free"
    )
    assert first[-1].startswith("1/1 pinned resident")
    assert second[-1].startswith("1/1 pinned resident, 1/1 extras")
    # each instance remembers its own footprints, in its own directory
    for name, model in (("gpu0", "llama3.2:1b"), ("gpu1", "qwen2.5:0.5b")):
        state = json.loads((cli.state / "instances" / name / "state.json").read_text())
        assert model in state["footprints"]
    assert not (cli.state / "state.json").exists()


def test_once_with_one_instance_down_warms_the_other_and_exits_69(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    cli.second.stop()
    result = cli("once")
    assert result.returncode == 69, result.stdout + result.stderr
    assert loaded(cli.first) == ["llama3.2:1b"]
    first, second = blocks(result.stdout)
    assert first[-1].startswith("1/1 pinned resident")
    assert second == [f"instance gpu1: ollama at {cli.second.url} is unreachable"]
    assert f"ollama at {cli.second.url} is unreachable" in result.stderr
    assert (
        f"hint: instances[1].url is {cli.second.url} (set in {cli.policy}); is Ollama running "
        "and listening there? try `systemctl status ollama-gpu1.service`"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    # the instance that answers alone: 0; a pinned model it cannot load: 1
    assert cli("once", "--instance", "gpu0").returncode == 0
    cli.write_policy(MODELS_YAML + "  - {name: not-pulled:7b, instance: gpu0}\n")
    assert cli("once", "--instance", "gpu0").returncode == 1


def test_an_unknown_instance_is_a_usage_error_naming_the_known_ones(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    for command in ("once", "status", "bench", "apply-override"):
        result = cli(command, "--instance", "gpu9")
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == (
            f"sentinel-keeper: --instance gpu9: {cli.policy} has no such instance "
            "(instances: gpu0, gpu1)\n"
        )
    assert loaded(cli.first) == loaded(cli.second) == []


def test_status_per_instance_and_the_worst_exit_code(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    assert cli("once", "--instance", "gpu0").returncode == 0
    result = cli("status")
    assert result.returncode == 3, result.stdout + result.stderr  # nomic is not resident
    first, second = blocks(result.stdout)
    assert first[:2] == [
        f"instance gpu0: ollama 0.33.0 at {cli.first.url}",
        "GPU0 16.0 of 16.0 GiB free",
    ]
    assert second[:2] == [
        f"instance gpu1: ollama 0.33.0 at {cli.second.url}",
        "GPU1 16.0 of 16.0 GiB free",
    ]
    assert any(line.startswith("llama3.2:1b") and "resident" in line for line in first)
    assert not any(line.startswith("nomic") for line in first)
    assert any(
        line.startswith("nomic-embed-text:latest") and "not loaded" in line for line in second
    )
    assert "sentinel-keeper: instance gpu1: pinned, not resident: nomic-embed-text:latest" in (
        result.stderr
    )
    assert cli("status", "--instance", "gpu0").returncode == 0

    data = json.loads(cli("status", "--json").stdout)
    assert set(data) == {"instances", "daemon"}
    gpu0, gpu1 = data["instances"]
    assert (gpu0["instance"], gpu1["instance"]) == ("gpu0", "gpu1")
    assert gpu0["ollama"] == {"url": cli.first.url, "version": "0.33.0"}
    assert [m["name"] for m in gpu0["models"]] == ["llama3.2:1b"]
    assert [m["name"] for m in gpu1["models"]] == ["nomic-embed-text:latest", "qwen2.5:0.5b"]
    assert gpu0["pinned_not_resident"] == []
    assert gpu1["pinned_not_resident"] == ["nomic-embed-text:latest"]
    assert gpu0["windows"] == gpu1["windows"] == {}
    # --instance selects; the shape stays that of a policy with several instances
    only = json.loads(cli("status", "--json", "--instance", "gpu1").stdout)
    assert [entry["instance"] for entry in only["instances"]] == ["gpu1"]

    # not installed (4) is worse than not resident (3); unreachable (69) worst of all
    cli.write_policy(MODELS_YAML + "  - {name: not-pulled:7b, instance: gpu0}\n")
    assert cli("status").returncode == 4
    cli.second.stop()
    down = cli("status")
    assert down.returncode == 69
    first, second = blocks(down.stdout)
    assert first[0] == f"instance gpu0: ollama 0.33.0 at {cli.first.url}"
    assert second == [f"instance gpu1: ollama at {cli.second.url} is unreachable"]
    assert "hint: instances[1].url is" in down.stderr
    as_json = cli("status", "--json")
    assert as_json.returncode == 69
    gpu0, gpu1 = json.loads(as_json.stdout)["instances"]
    assert gpu0["reachable"] is True and gpu1["reachable"] is False
    assert "try `systemctl status ollama-gpu1.service`" in gpu1["hint"]
    assert [m["name"] for m in gpu1["models"]] == [
        "nomic-embed-text:latest",
        "qwen2.5:0.5b",
    ]


def test_check_online_names_the_instance_and_the_place_in_the_whole_policy(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    offline = cli("check")
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout == (
        f"{cli.policy}: ok (2 pinned, 1 extra; 2 instances: gpu0 ollama at {cli.first.url}, "
        f"gpu1 ollama at {cli.second.url})\n"
    )
    online = cli("check", "--online")
    assert online.returncode == 0, online.stderr
    assert online.stdout == (
        f"{cli.policy}: ok (2 pinned, 1 extra; 2 instances: gpu0 ollama 0.33.0 at "
        f"{cli.first.url}, gpu1 ollama 0.33.0 at {cli.second.url})\n"
    )
    cli.write_policy(
        "  - {name: llama3.2:1b, instance: gpu0}\n"
        "  - {name: nomic-embed-text, instance: gpu1}\n"
        "  - {name: not-pulled:7b, instance: gpu1}\n"
    )
    result = cli("check", "--online")
    assert result.returncode == 4, result.stdout + result.stderr
    errors = [x for x in result.stderr.splitlines() if not x.startswith("warning: ")]
    assert errors == [
        f"{cli.policy}: models[2] not-pulled:7b (instance gpu1): not installed in Ollama "
        "(run `ollama pull not-pulled:7b`, or set pull: true)",
        f"{cli.policy}: 1 problem with instance gpu1 (ollama at {cli.second.url})",
    ]
    cli.first.stop()
    down = cli("check", "--online")
    assert down.returncode == 69
    assert (
        f"hint: instances[0].url is {cli.first.url} (set in {cli.policy}); is Ollama running "
        "and listening there? try `systemctl status ollama.service`"
    ) in down.stderr
    # the instance that answers is still checked
    assert "models[2] not-pulled:7b (instance gpu1): not installed" in down.stderr


def test_apply_override_writes_each_units_own_dropin(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    result = cli("apply-override", "--unit-dir", str(cli.units))
    assert result.returncode == 0, result.stdout + result.stderr
    gpu0 = cli.units / "ollama.service.d" / DROPIN_NAME
    gpu1 = cli.units / "ollama-gpu1.service.d" / DROPIN_NAME
    assert gpu0.read_text().endswith('[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=24h"\n')
    assert gpu1.read_text().endswith(
        '[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=-1"\nEnvironment="OLLAMA_NUM_PARALLEL=2"\n'
    )
    assert "# (instances[1].keep_alive and instances[1].environment)." in gpu1.read_text()
    first, second = blocks(result.stdout)
    assert first[:2] == ["instance gpu0: ollama.service", f"wrote {gpu0}"]
    assert second[:2] == ["instance gpu1: ollama-gpu1.service", f"wrote {gpu1}"]
    calls = cli.systemctl_log.read_text().splitlines()
    assert "try-restart --no-block ollama.service" in calls
    assert "try-restart --no-block ollama-gpu1.service" in calls
    # a second run changes nothing; --remove removes each instance's own file
    again = cli("apply-override", "--unit-dir", str(cli.units))
    assert blocks(again.stdout) == [
        ["instance gpu0: ollama.service", f"{gpu0}: unchanged"],
        ["instance gpu1: ollama-gpu1.service", f"{gpu1}: unchanged"],
    ]
    removed = cli("apply-override", "--unit-dir", str(cli.units), "--remove", "--instance", "gpu1")
    assert removed.returncode == 0, removed.stderr
    assert gpu0.exists() and not gpu1.exists()


def test_apply_override_dropin_dir_takes_one_instance(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    dropins = cli.units / "ollama-gpu1.service.d"  # where systemd reads gpu1's drop-ins
    refused = cli("apply-override", "--dropin-dir", str(dropins))
    assert refused.returncode == 2
    assert refused.stderr == (
        "sentinel-keeper: --dropin-dir holds the drop-in of one unit, and 2 instances are "
        "selected (gpu0: ollama.service, gpu1: ollama-gpu1.service): choose one with "
        "--instance NAME\n"
    )
    assert not dropins.exists()
    one = cli("apply-override", "--dropin-dir", str(dropins), "--instance", "gpu1")
    assert one.returncode == 0, one.stderr
    assert "OLLAMA_NUM_PARALLEL=2" in (dropins / DROPIN_NAME).read_text()
    assert "try-restart --no-block ollama-gpu1.service" in cli.systemctl_log.read_text()


def test_apply_override_failing_on_one_instance_still_writes_the_other(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML)
    (cli.units / "ollama.service.d").write_text("a file where a directory should be")
    result = cli("apply-override", "--unit-dir", str(cli.units))
    assert result.returncode == 73, result.stdout + result.stderr
    assert (cli.units / "ollama-gpu1.service.d" / DROPIN_NAME).exists()
    assert "ollama.service.d" in result.stderr


def test_bench_per_instance(cli: Cli) -> None:
    cli.write_policy(MODELS_YAML + "  - {name: llama3.2:1b, instance: gpu1, tier: extra}\n")
    result = cli("bench", "--runs", "1", "--tokens", "1", "--json", "--model", "llama3.2:1b")
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    # a name two instances keep is benched on each; the others are left out
    assert [(e["instance"], [m["name"] for m in e["models"]]) for e in data["instances"]] == [
        ("gpu0", ["llama3.2:1b"]),
        ("gpu1", ["llama3.2:1b"]),
    ]
    assert data["instances"][1]["ollama"]["url"] == cli.second.url
    table = cli("bench", "--runs", "1", "--tokens", "1", "--instance", "gpu1")
    assert table.returncode == 0, table.stderr
    (block,) = blocks(table.stdout)
    assert block[0].startswith(f"instance gpu1: ollama 0.33.0 at {cli.second.url}; cold:")
    assert [line.split()[0] for line in block[2:]] == [
        "nomic-embed-text:latest",
        "qwen2.5:0.5b",
        "llama3.2:1b",
    ]
    cli.first.stop()
    down = cli("bench", "--runs", "1", "--tokens", "1", "--model", "llama3.2:1b")
    assert down.returncode == 69
    assert "hint: instances[0].url is" in down.stderr
    assert f"instance gpu1: ollama 0.33.0 at {cli.second.url}" in down.stdout


def test_a_policy_without_instances_is_the_instance_default(cli: Cli) -> None:
    """Today's output, in today's shape: status --json names the instance, nothing more."""
    cli.policy.write_text(f"ollama: {{url: '{cli.first.url}'}}\nmodels: [{{name: llama3.2:1b}}]\n")
    assert cli("once", "--instance", "default").returncode == 0
    assert (cli.state / "state.json").exists()  # the state directory itself, as before
    data = json.loads(cli("status", "--json").stdout)
    assert data["instance"] == "default"
    assert data["ollama"] == {"url": cli.first.url, "version": "0.33.0"}
    assert {"daemon", "windows", "models"} <= set(data)
    cli.first.stop()
    result = cli("status")
    assert result.returncode == 69
    assert result.stdout == ""
    assert f"hint: ollama.url is {cli.first.url} (set in {cli.policy})" in result.stderr
