"""Several Ollama instances in one policy: the schema, its errors with their positions, and
the split into one single-instance policy per instance that everything else runs on."""

from __future__ import annotations

import pytest

from sentinel_keeper.errors import PolicyError
from sentinel_keeper.policy.loading import parse_policy

TWO = """\
interval: 5s
vram: {headroom: 1GiB}
instances:
  - name: gpu0
    url: http://127.0.0.1:11434
    gpus: [0]
    keep_alive: 24h
  - name: gpu1
    url: 127.0.0.1:11435
    unit: ollama-gpu1.service
    gpus: ["GPU-5a0c8b6e-1d2f-4c3b-9a8e-7f6d5c4b3a21"]
    environment: {OLLAMA_FLASH_ATTENTION: true}
    load_timeout: 2m
models:
  - {name: llama3.2:3b, instance: gpu0}
  - {name: qwen2.5:0.5b, instance: gpu1, tier: extra}
  - {name: llama3.2:3b, instance: gpu1}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return [str(d) for d in caught.value.diagnostics]


def test_a_policy_without_instances_is_its_own_default_instance() -> None:
    policy = parse_policy("models: [{name: a}]\n", "p.yaml")
    (part,) = policy.split()
    assert part is policy
    assert (part.instance, part.instance_key, policy.instance_names) == (
        "default",
        "ollama",
        ("default",),
    )
    named = parse_policy("models: [{name: a, instance: default}]\n", "p.yaml")
    assert named.split()[0].models[0].name == "a:latest"


def test_each_instance_is_a_single_instance_policy_of_its_own() -> None:
    policy = parse_policy(TWO, "p.yaml")
    assert policy.instance_names == ("gpu0", "gpu1")
    first, second = policy.split()
    assert (first.instance, first.instance_key) == ("gpu0", "instances[0]")
    assert (second.instance, second.instance_key) == ("gpu1", "instances[1]")
    assert first.ollama.url == "http://127.0.0.1:11434"
    assert first.ollama.keep_alive == 86400
    assert first.ollama.unit == "ollama.service"
    assert second.ollama.url == "http://127.0.0.1:11435"
    assert second.ollama.unit == "ollama-gpu1.service"
    assert second.ollama.load_timeout == 120
    assert second.ollama.environment == {"OLLAMA_FLASH_ATTENTION": "true"}
    assert first.vram.gpu_selection == (0,)
    assert second.vram.gpu_selection == ("GPU-5a0c8b6e-1d2f-4c3b-9a8e-7f6d5c4b3a21",)
    # the global settings go with every part
    assert first.vram.headroom == second.vram.headroom == 1024**3
    assert first.interval == second.interval == 5
    assert [m.name for m in first.models] == ["llama3.2:3b"]
    assert [(m.name, m.tier) for m in second.models] == [
        ("qwen2.5:0.5b", "extra"),
        ("llama3.2:3b", "pinned"),
    ]
    assert first.instances is None and second.instances is None
    assert first.source == second.source == "p.yaml"
    # the same text gives equal parts (a reload that changes nothing changes no part)
    assert parse_policy(TWO, "p.yaml").split() == (first, second)


def test_the_only_instance_needs_no_naming() -> None:
    policy = parse_policy(
        "instances: [{name: big, url: 'http://127.0.0.1:9999'}]\nmodels: [{name: a}]\n",
        "p.yaml",
    )
    (part,) = policy.split()
    assert part.instance == "big"
    assert [m.name for m in part.models] == ["a:latest"]
    assert part.ollama.url == "http://127.0.0.1:9999"
    assert part.vram.gpu_selection is None


def test_a_changed_instance_changes_only_its_part() -> None:
    before = parse_policy(TWO, "p.yaml").split()
    after = parse_policy(TWO.replace("load_timeout: 2m", "load_timeout: 3m"), "p.yaml").split()
    assert before[0] == after[0]
    assert before[1] != after[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "ollama: {url: 'http://127.0.0.1:1'}\ninstances: [{name: a}]\n",
            "p.yaml:1:1: ollama: instances: replaces the ollama section",
        ),
        ("instances: []\n", "p.yaml:1:12: instances: must list at least one instance"),
        (
            "instances: [{name: a, gpus: [0]}]\nvram: {gpus: [1]}\n",
            "p.yaml:2:8: vram.gpus: with instances:, each instance names its own gpus",
        ),
        (
            "instances: [{name: a}, {name: b, url: 'http://127.0.0.1:2', unit: b.service}]\n"
            "models: [{name: m}]\n",
            "p.yaml:2:10: models[0]: which instance keeps it? the policy has several: add "
            "instance: with one of a, b",
        ),
        (
            "instances: [{name: gpu0}]\nmodels: [{name: m, instance: gpu1}]\n",
            'p.yaml:2:30: models[0].instance: no instance named "gpu1"; did you mean gpu0? '
            "(instances: gpu0)",
        ),
        (
            "models: [{name: m, instance: gpu1}]\n",
            'p.yaml:1:30: models[0].instance: no instance named "gpu1": without instances:, '
            "the only instance is default",
        ),
        (
            "instances: [{name: a}, {name: a, url: 'http://127.0.0.1:2', unit: b.service}]\n",
            "p.yaml:1:31: instances[1].name: instances[0] has this name too (a)",
        ),
        (
            "instances: [{name: a, url: '127.0.0.1'}, {name: b, unit: b.service}]\n",
            "p.yaml:1:42: instances[1]: instances[0] has this url too "
            "(http://127.0.0.1:11434 (the default))",
        ),
        (
            "instances: [{name: a}, {name: b, url: '127.0.0.1:2', unit: ollama.service}]\n",
            "p.yaml:1:60: instances[1].unit: instances[0] has this unit too (ollama.service)",
        ),
        (
            "instances: [{name: 'a b'}]\n",
            'p.yaml:1:20: instances[0].name: must be a name such as "gpu0"',
        ),
        ("instances: [{url: '127.0.0.1'}]\n", "p.yaml:1:13: instances[0].name: is required"),
        (
            "instances: [{name: a, gpus: [0, 'GPU', true]}]\n",
            "p.yaml:1:29: instances[0].gpus: must be an NVML GPU index such as 0 or a UUID",
        ),
        (
            "instances: [{name: a, gpu: [0]}]\n",
            "p.yaml:1:23: instances[0].gpu: unknown key; did you mean gpus?",
        ),
        (
            "instances: [{name: a, environment: {OLLAMA_KEEP_ALIVE: 5m}}]\n",
            "p.yaml:1:37: instances[0].environment.OLLAMA_KEEP_ALIVE: set it with "
            "instances[0].keep_alive, not here",
        ),
        (
            "instances: [{name: a, environment: {OLLAMA_NUM_PARALLEL: x}}]\n",
            "p.yaml:1:58: instances[0].environment.OLLAMA_NUM_PARALLEL:",
        ),
        (
            "instances: [{name: a, align_context: true, environment: "
            "{OLLAMA_CONTEXT_LENGTH: 8192}}]\n",
            "p.yaml:1:23: instances[0].align_context: align_context writes "
            "OLLAMA_CONTEXT_LENGTH from the pinned models' num_ctx, and "
            "instances[0].environment sets it too",
        ),
        (
            "instances: [{name: a}, {name: b, url: '127.0.0.1:2', unit: b.service}]\n"
            "models: [{name: m, instance: a}, {name: m, instance: a}]\n",
            "p.yaml:2:41: models[1].name: duplicate of models[0] (m:latest on instance a)",
        ),
    ],
)
def test_bad_instances_are_reported_where_they_are(text: str, expected: str) -> None:
    found = errors(text)
    assert any(line.startswith(expected) for line in found), found


def test_the_same_model_may_be_kept_by_two_instances() -> None:
    policy = parse_policy(TWO, "p.yaml")
    assert [p.model("llama3.2:3b") is not None for p in policy.split()] == [True, True]


def test_gpu_uuids_are_accepted_in_vram_gpus_too() -> None:
    policy = parse_policy("vram: {gpus: [1, 'MIG-5a0c8b6e-1d2f/1/0']}\n", "p.yaml")
    assert policy.vram.gpu_selection == (1, "MIG-5a0c8b6e-1d2f/1/0")
