"""The context a client sending no num_ctx gets, and ollama.align_context: tables of the pure
rules, the positioned error, and `check`, `apply-override` and `status` saying and doing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sentinel_keeper.decide import context
from sentinel_keeper.errors import PolicyError
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import parse_policy
from tests.support.fake_nvml import FakeGpu, FakeNvml, library_dir, nvml_env
from tests.support.ollama_double import FakeModel, OllamaDouble
from tests.support.planning import GiB, policy

ROOT = Path(__file__).resolve().parents[1]


def pinned(*ctx: int | None, align: bool = False, env: dict[str, str] | None = None) -> Policy:
    models = [
        {"name": f"m{i}:1b", **({"options": {"num_ctx": c}} if c is not None else {})}
        for i, c in enumerate(ctx)
    ]
    return policy(*models, ollama={"align_context": align, "environment": env or {}})


@pytest.mark.parametrize(
    ("vram", "ctx"),
    [(None, 4096), (8 * GiB, 4096), (23 * GiB - 1, 4096), (23 * GiB, 32768), (47 * GiB, 262144)],
)
def test_ollamas_automatic_context_by_gpu_memory(vram: int | None, ctx: int) -> None:
    assert context.automatic_num_ctx(vram) == ctx


def test_alignment_writes_the_one_num_ctx_the_pinned_models_agree_on() -> None:
    assert context.alignment(pinned(8192, None, 8192, align=True)) == context.Alignment(8192)
    assert context.environment(pinned(8192, align=True)) == {"OLLAMA_CONTEXT_LENGTH": "8192"}
    assert context.environment(pinned(8192)) == {}  # off: nothing written
    split = context.alignment(pinned(2048, 8192, align=True))
    assert split.value is None and split.problem is not None
    assert "2048 for m0:1b; 8192 for m1:1b" in split.problem
    assert context.environment(pinned(2048, 8192, align=True)) == {}
    none = context.alignment(pinned(None, align=True))
    assert none.problem is not None and "no pinned model sets options.num_ctx" in none.problem


def test_the_drop_in_keeps_the_policys_other_variables() -> None:
    aligned = pinned(8192, align=True, env={"OLLAMA_NUM_PARALLEL": "2"})
    assert context.environment(aligned) == {
        "OLLAMA_NUM_PARALLEL": "2",
        "OLLAMA_CONTEXT_LENGTH": "8192",
    }


@pytest.mark.parametrize(
    ("the_policy", "vram", "trained", "listed"),
    [
        (pinned(4096), 16 * GiB, None, []),  # what clients get anyway
        (pinned(2048), 16 * GiB, None, ["m0:1b"]),
        (pinned(8192), 24 * GiB, None, ["m0:1b"]),  # 32768 on 24 GiB
        (pinned(8192), 24 * GiB, {"m0:1b": 8192}, []),  # both capped at the trained 8192
        (pinned(None), 16 * GiB, None, []),  # automatic on both sides
        (pinned(2048, align=True), 16 * GiB, None, []),  # the drop-in makes 2048 the default
        (pinned(2048, 8192, align=True), 16 * GiB, None, ["m0:1b", "m1:1b"]),
        (pinned(8192, env={"OLLAMA_CONTEXT_LENGTH": "8192"}), 16 * GiB, None, []),
        (pinned(2048), None, None, ["m0:1b"]),  # GPU unknown: not an automatic value
        (pinned(32768), None, None, []),  # GPU unknown: may be the automatic value
    ],
)
def test_which_pinned_models_clients_sending_no_num_ctx_would_reload(
    the_policy: Policy, vram: int | None, trained: dict[str, int] | None, listed: list[str]
) -> None:
    found = context.mismatches(the_policy, vram, trained)
    assert [m.model for m in found] == listed


def test_advice_names_the_value_clients_get_and_what_to_set() -> None:
    (mismatch,) = context.mismatches(pinned(2048), 16 * GiB)
    assert context.advice(mismatch) == (
        "m0:1b: options.num_ctx 2048 differs from what a client that sends no num_ctx gets, "
        "4096 (Ollama's automatic value for 16 GiB of GPU memory): each such request (every "
        "/v1 one) reloads it. Set ollama.align_context: true (OLLAMA_CONTEXT_LENGTH=2048 in "
        "the drop-in), or the num_ctx your clients get"
    )


def test_advice_names_the_instance_whose_settings_to_change() -> None:
    text = (
        "instances:\n  - {name: a}\n"
        "  - {name: b, url: '127.0.0.1:2', unit: b.service,"
        " environment: {OLLAMA_CONTEXT_LENGTH: 8192}}\n"
        "models:\n  - {name: m:1b, instance: b, options: {num_ctx: 2048}}\n"
    )
    _, second = parse_policy(text, "p.yaml").split()
    (mismatch,) = context.mismatches(second, 16 * GiB)
    advice = context.advice(mismatch)
    assert "8192 (OLLAMA_CONTEXT_LENGTH from instances[1].environment)" in advice
    assert "Set instances[1].align_context: true" in advice


def test_align_context_and_an_explicit_variable_conflict() -> None:
    text = (
        "ollama:\n  align_context: true\n  environment:\n    OLLAMA_CONTEXT_LENGTH: 8192\n"
        "models:\n  - name: a:1b\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    (problem,) = [str(d) for d in caught.value.diagnostics]
    assert problem.startswith("p.yaml:2:3: ollama.align_context: align_context writes")


# --- the commands ---------------------------------------------------------------------------


def _run(tmp: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    policy_path = tmp / "policy.yaml"
    policy_path.write_text(text)
    config = tmp / "nvml.conf"
    FakeNvml(gpus=(FakeGpu(name="GTX", total=16 * GiB, used=0, free=16 * GiB),)).write(config)
    return subprocess.run(
        [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=nvml_env(library_dir(), config),
        check=False,
    )


@pytest.mark.slow
def test_check_says_which_pinned_model_clients_would_reload(tmp_path: Path) -> None:
    models = "models:\n  - name: a:1b\n    options: {num_ctx: 2048}\n"
    done = _run(tmp_path, models, "check")
    assert done.returncode == 0, done.stderr
    assert (
        "warning: " + str(tmp_path / "policy.yaml") + ": a:1b: options.num_ctx 2048 differs from "
        "what a client that sends no num_ctx gets, 4096 (Ollama's automatic value for 16 GiB"
    ) in done.stderr
    aligned = _run(tmp_path, "ollama: {align_context: true}\n" + models, "check")
    assert aligned.returncode == 0 and "warning" not in aligned.stderr, aligned.stderr
    split = _run(
        tmp_path,
        "ollama: {align_context: true}\n"
        + models
        + "  - name: b:1b\n    options: {num_ctx: 8192}\n",
        "check",
    )
    assert split.returncode == 0
    assert "ollama.align_context: the pinned models want different num_ctx" in split.stderr


@pytest.mark.slow
def test_apply_override_writes_the_aligned_context(tmp_path: Path) -> None:
    text = "ollama: {align_context: true}\nmodels:\n  - name: a:1b\n    options: {num_ctx: 8192}\n"
    done = _run(
        tmp_path, text, "apply-override", "--dropin-dir", str(tmp_path / "d"), "--no-reload"
    )
    assert done.returncode == 0, done.stderr
    dropin = (tmp_path / "d" / "zz-sentinel-keeper.conf").read_text()
    assert 'Environment="OLLAMA_CONTEXT_LENGTH=8192"' in dropin
    assert 'Environment="OLLAMA_KEEP_ALIVE=-1"' in dropin


@pytest.mark.slow
def test_status_notes_a_pinned_model_that_clients_would_reload(tmp_path: Path) -> None:
    with OllamaDouble([FakeModel("a:1b", size=1 * GiB)], vram_total=16 * GiB) as double:
        text = (
            f"ollama: {{url: '{double.url}'}}\nmetrics: {{listen: null}}\n"
            "models:\n  - name: a:1b\n    options: {num_ctx: 2048}\n"
        )
        assert _run(tmp_path, text, "once").returncode == 0
        done = _run(tmp_path, text, "status")
    assert done.returncode == 0, done.stderr
    note = next(line for line in done.stdout.splitlines() if line.startswith("note "))
    assert "a:1b: options.num_ctx 2048 differs from what a client that sends no num_ctx" in note
