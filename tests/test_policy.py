"""The policy: defaults, normalisation, and every error reported at once with its position."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sentinel_keeper.errors import PolicyError
from sentinel_keeper.ollama_env import KNOWN_VARIABLES
from sentinel_keeper.policy import json_schema
from sentinel_keeper.policy.loading import load_policy, parse_policy
from sentinel_keeper.values.quantities import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from sentinel_keeper.values.urls import normalize_ollama_url

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "sentinel" / "policy.yaml"


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return [str(d) for d in caught.value.diagnostics]


def test_the_shipped_example_is_valid_and_says_what_the_issue_promises() -> None:
    policy = load_policy(str(EXAMPLE))
    assert policy.source == str(EXAMPLE)
    assert policy.ollama.url == "http://127.0.0.1:11434"
    assert policy.ollama.unit == "ollama.service"
    assert policy.ollama.keep_alive == -1
    assert policy.ollama.restart == "if-changed"
    assert policy.ollama.load_timeout == 600
    assert policy.interval == 15
    assert policy.ready == "pinned"
    assert policy.startup_timeout == 600
    assert policy.vram.gpus == "all"
    assert policy.vram.headroom == 512 * 1024**2
    assert policy.vram.budget is None
    (pinned,) = policy.pinned
    assert pinned.name == "llama3.2:1b"
    assert pinned.options.as_request() == {"num_ctx": 2048}
    assert pinned.effective_keep_alive == -1
    (extra,) = policy.extras
    assert (extra.name, extra.priority, extra.effective_keep_alive) == ("qwen2.5:0.5b", 10, 3600)


def documented_keys(text: str) -> set[str]:
    """The keys that begin a line as ``key:`` (after indentation, a ``#``, or a list dash)."""
    return set(re.findall(r"^[ \t]*(?:#[ \t]*)?(?:-[ \t]+)?([A-Za-z_][A-Za-z0-9_]*):", text, re.M))


def test_every_key_of_the_schema_is_explained_in_the_example() -> None:
    text = EXAMPLE.read_text()
    schema = json_schema()
    keys: set[str] = set(schema["properties"])
    for definition in schema["$defs"].values():
        keys |= set(definition.get("properties", {}))
    missing = sorted(keys - documented_keys(text))
    assert missing == []


def test_a_key_named_only_in_prose_is_not_documented() -> None:
    prose = "# The interval says how often a pass runs; see num_ctx: below.\n"
    assert documented_keys(prose) == set()
    assert documented_keys("  # interval: 15s\n- name: x\n  #  - num_ctx: 2\n") == {
        "interval",
        "name",
        "num_ctx",
    }


def test_an_empty_policy_means_defaults_and_no_models() -> None:
    policy = parse_policy("", "p.yaml")
    assert policy.models == []
    assert policy.interval == 15


def test_names_are_normalised_and_keep_alive_defaults_by_tier() -> None:
    policy = parse_policy(
        "models:\n  - name: llama3.2\n  - {name: 'hf.co/org/repo:Q4_K_M', tier: extra}\n"
        "  - name: registry.ollama.ai/library/qwen2.5:7b\n  - name: 'localhost:5000/team/m'\n",
        "p.yaml",
    )
    assert [m.name for m in policy.models] == [
        "llama3.2:latest",
        "hf.co/org/repo:Q4_K_M",
        "qwen2.5:7b",
        "localhost:5000/team/m:latest",
    ]
    assert [m.effective_keep_alive for m in policy.models] == [-1, 3600, -1, -1]


def test_durations_sizes_and_keep_alive_forms() -> None:
    policy = parse_policy(
        "interval: 1m30s\nstartup_timeout: 45\nollama: {keep_alive: 24h, load_timeout: 500ms}\n"
        "vram: {headroom: 1.5GB, budget: 3GiB, gpus: [0, 2]}\n"
        "models: [{name: a, keep_alive: -5m}, {name: b, tier: extra, keep_alive: 300}]\n",
        "p.yaml",
    )
    assert policy.interval == 90
    assert policy.startup_timeout == 45
    assert policy.ollama.keep_alive == 86400
    assert policy.ollama.load_timeout == 0.5
    assert policy.vram.headroom == 1_500_000_000
    assert policy.vram.budget == 3 * 1024**3
    assert policy.vram.gpu_selection == (0, 2)
    assert [m.effective_keep_alive for m in policy.models] == [-1, 300]


def test_every_error_at_once_in_compiler_form() -> None:
    text = """\
ollama:
  url: ftp://example
  bogus: 1
  keep_alive: 1d
interval: 0
vram:
  headroom: lots
models:
  - name: llama3.2
    options: {num_ctx: big, temperature: 0.7}
  - name: llama3.2:latest
    tier: maybe
  - {tier: extra}
"""
    assert errors(text) == [
        "p.yaml:2:8: ollama.url: must be an http:// or https:// URL or a host[:port], "
        'got "ftp://example"',
        "p.yaml:3:3: ollama.bogus: unknown key (known keys: url, unit, keep_alive, environment, "
        "restart, load_timeout, request_timeout, align_context)",
        'p.yaml:4:15: ollama.keep_alive: must be a duration such as "15s", "5m", "1h30m" or '
        'whole seconds (-1 = forever), got "1d"; there is no "d": write "24h"',
        "p.yaml:5:11: interval: must be longer than zero, got 0",
        'p.yaml:7:13: vram.headroom: must be a size such as "512MiB", "3GiB", "1.5GB" or whole '
        'bytes, got "lots"',
        'p.yaml:10:24: models[0].options.num_ctx: must be a positive integer, got "big"',
        "p.yaml:10:29: models[0].options.temperature: not a load-time option (sampling options "
        "never reload a model and do not belong here; load-time options: num_ctx, num_batch, "
        "num_gpu, main_gpu, use_mmap, num_thread)",
        "p.yaml:11:11: models[1].name: duplicate of models[0] (llama3.2:latest)",
        'p.yaml:12:11: models[1].tier: must be one of "pinned" or "extra", got "maybe"',
        "p.yaml:13:5: models[2].name: is required",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [{name: a, options: {num_ctx: 0}}]", "must be a positive integer, got 0"),
        ("models: [{name: a, options: {num_ctx: 2.5}}]", "must be a positive integer, got 2.5"),
        ("models: [{name: a, options: {num_ctx: true}}]", "must be a positive integer, got True"),
        ("models: [{name: a, options: {use_mmap: 'no'}}]", 'must be true or false, got "no"'),
        ("models: [{name: a, options: {num_gpu: -2}}]", "must be an integer >= -1"),
        ("models: [{name: a, options: {main_gpu: -1}}]", "must be an integer >= 0"),
        ("models: [{name: 'a b'}]", "must be an Ollama model name"),
        ("models: [{name: 7}]", "must be an Ollama model name"),
        ("models: [{name: a, keep_alive: '-1'}]", None),
        ("models: [{name: a, keep_alive: 0}]", "must be longer than zero"),
        ("models: [{name: a, priority: high}]", 'must be an integer, got "high"'),
        ("models: [{name: a, pull: 1}]", "must be true or false, got 1"),
        ("models: {name: a}", "must be a list"),
        ("models: [a]", "a model is a mapping, not a bare name: write `- name: a`"),
        ("models: [[a]]", "must be a mapping of keys to values, got ['a']"),
        ("ollama: [1]", "must be a mapping of keys to values"),
        ("ollama: {unit: 'ollama.service\\nExecStartPre=/bin/sh'}", "must be a systemd service"),
        ("ollama: {unit: ../../etc/passwd.service}", "must be a systemd service"),
        ("ollama: {unit: -x.service}", "must be a systemd service"),
        ("ollama: {unit: .x.service}", "must be a systemd service"),
        ("ollama: {unit: a@b@c.service}", "must be a systemd service"),
        ("ollama: {unit: ollama@gpu1.service}", None),
        ("ollama: {restart: always}", 'must be one of "if-changed" or "never"'),
        # messages that say the fix
        (
            "models: [llama3.2:1b]",
            "a model is a mapping, not a bare name: write `- name: llama3.2:1b`",
        ),
        (
            "models: [{name: a, num_ctx: 4096}]",
            "num_ctx is a load-time option: it goes under options (options: {num_ctx: 4096})",
        ),
        ("intervall: 5s", "unknown key; did you mean interval?"),
        ("ollama: {urll: x}", "unknown key; did you mean url?"),
        ("models: [{name: a, keep_alive: 1d}]", 'there is no "d": write "24h"'),
        ("ollama: {keep_alive: 2d}", 'write "48h"'),
        ("ollama: {keep_alive: '1w'}", "must be a duration"),
        ("ollama: {keep_alive: 0}", None),
        ("ready: maybe", 'must be one of "pinned" or "started"'),
        ("vram: {gpus: some}", "gpus"),
        ("vram: {gpus: [-1]}", "must be an integer >= 0"),
        ("vram: {headroom: -1GiB}", "must not be negative"),
        ("vram: {budget: 3 GB}", None),
        ("interval: 100y", "must be a duration"),
        ("interval: 99999999999", "292 years"),
        ("[1, 2]", "the policy must be a mapping of keys"),
        ("just text", "the policy must be a mapping of keys"),
    ],
)
def test_bad_values_have_clear_messages(text: str, expected: str | None) -> None:
    if expected is None:
        parse_policy(text, "p.yaml")
        return
    messages = errors(text)
    assert any(expected in m for m in messages), messages
    assert all(m.startswith("p.yaml:1:") for m in messages), messages


def test_a_tab_in_the_indentation_says_to_use_spaces() -> None:
    (message,) = errors("models:\n  - name: a\n\tkeep_alive: 5m\n")
    assert (
        message
        == "p.yaml:3:1: YAML syntax error: a tab indents this line: YAML indents with spaces only"
    )


def test_yaml_syntax_errors_use_the_same_form() -> None:
    (message,) = errors("models:\n  - name: a\n    bad: [\n")
    assert message.startswith("p.yaml:4:1: YAML syntax error: ")
    (message,) = errors("interval: 5s\n\tmodels: []\n")
    assert message.startswith("p.yaml:2:1: YAML syntax error: ")


def test_duplicate_keys_are_errors_not_silently_the_last() -> None:
    assert errors("interval: 5s\ninterval: 10s\n") == [
        "p.yaml:2:1: interval: duplicate key (first set on line 1)"
    ]


def test_anchors_and_merge_keys_work_and_bombs_are_refused() -> None:
    policy = parse_policy(
        "models:\n  - &base {name: a, tier: extra, priority: 3}\n  - {<<: *base, name: b}\n",
        "p.yaml",
    )
    assert [(m.name, m.tier, m.priority) for m in policy.models] == [
        ("a:latest", "extra", 3),
        ("b:latest", "extra", 3),
    ]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    (message,) = errors(bomb)
    assert "expands to more than" in message


def test_environment_values_are_checked_where_they_are_written() -> None:
    messages = errors(
        "ollama:\n  environment:\n    LD_PRELOAD: /tmp/x.so\n    OLLAMA_KEEP_ALIVE: 5m\n"
        "    OLLAMA_NUM_PARALLEL: 2\n"
    )
    assert messages[0].startswith("p.yaml:3:5: ollama.environment.LD_PRELOAD: ")
    assert messages[1] == (
        "p.yaml:4:5: ollama.environment.OLLAMA_KEEP_ALIVE: set it with ollama.keep_alive, not here"
    )
    assert len(messages) == 2
    (bad_value,) = errors("ollama:\n  environment:\n    OLLAMA_NUM_PARALLEL: lots\n")
    assert bad_value.startswith("p.yaml:3:26: ollama.environment.OLLAMA_NUM_PARALLEL: ")


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("localhost:8080", "http://localhost:8080"),
        ("http://127.0.0.1", "http://127.0.0.1"),
        ("https://ollama.example/", "https://ollama.example"),
        ("http://[::1]:11434", "http://[::1]:11434"),
        ("::1", "http://[::1]:11434"),  # a bare IPv6 address, as Go's OLLAMA_HOST reads it
        ("[::1]", "http://[::1]:11434"),
        ("::zz", None),
        ("http://gpu-box:11434/ollama/", "http://gpu-box:11434/ollama"),
    ],
)
def test_ollama_url_follows_ollama_host_rules(given: str, url: str | None) -> None:
    if url is None:
        with pytest.raises(ValueError):
            normalize_ollama_url(given)
    else:
        assert normalize_ollama_url(given) == url


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "http://",
        "ftp://x",
        "http://u:p@x",
        "http://x?y=1",
        "http://x:99999",
        'x"y',
        "http://0\u00a00:11434",  # a no-break space in the host, which the fuzz once found
        "http://a\u3000b",
    ],
)
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_ollama_url(bad)


def test_file_problems_are_reported_against_the_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(str(tmp_path / "missing.yaml"))
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(str(tmp_path))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"interval: 5s\n\xff\xfe\x00garbage")
    with pytest.raises(PolicyError, match=r"binary.yaml:2:1: is not UTF-8"):
        load_policy(str(binary))
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (2 * 1024 * 1024))
    with pytest.raises(PolicyError, match="refused"):
        load_policy(str(huge))
    if os.geteuid() != 0:
        locked = tmp_path / "locked.yaml"
        locked.write_text("interval: 5s\n")
        locked.chmod(0)
        with pytest.raises(PolicyError, match="cannot read"):
            load_policy(str(locked))


def test_schema_is_json_schema_with_every_section() -> None:
    schema = json.loads(json.dumps(json_schema()))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == {
        "ollama",
        "instances",
        "gateway",
        "interval",
        "timezone",
        "ready",
        "startup_timeout",
        "vram",
        "reload_backoff",
        "metrics",
        "models",
    }
    assert schema["additionalProperties"] is False


def test_the_schema_refuses_what_check_refuses() -> None:
    """Editors validate with the JSON Schema; it must refuse what `check` refuses."""
    ollama = json_schema()["$defs"]["OllamaSection"]["properties"]
    unit = ollama["unit"]
    for name in ("ollama.service", "ollama@gpu0.service", "x" * 247 + ".service"):
        assert re.search(unit["pattern"], name) and len(name) <= unit["maxLength"], name
        parse_policy(f"ollama: {{unit: '{name}'}}", "p.yaml")
    for name in ("-x.service", ".x.service", "a/b.service", "ollama", "x" * 248 + ".service"):
        assert not (re.search(unit["pattern"], name) and len(name) <= unit["maxLength"]), name
        assert errors(f"ollama: {{unit: '{name}'}}"), name
    names = set(ollama["environment"]["propertyNames"]["enum"])
    assert names == set(KNOWN_VARIABLES) - {"OLLAMA_KEEP_ALIVE"}
    for name in names:
        parse_policy(f"ollama: {{environment: {{{name}: ''}}}}", "p.yaml")
    assert errors("ollama: {environment: {PATH: /x}}")
    assert errors("ollama: {environment: {OLLAMA_KEEP_ALIVE: 5m}}")


# --- units --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15),
        ("5m", 300),
        ("1h30m", 5400),
        (45, 45),
        ("45", 45),
        ("500ms", 0.5),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1", -1, "-1m", -300, "-0.5s"])
def test_negative_keep_alive_means_forever(text: str | int) -> None:
    assert parse_duration(text, allow_forever=True) == -1


@pytest.mark.parametrize(
    "text", ["1d", "abc", "", "m", "5 m", "1h30", True, None, [1], float("nan")]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 * 1024**2), ("3GiB", 3 * 1024**3), ("1.5GB", 1_500_000_000), (1000, 1000)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_formatting_for_people() -> None:
    assert format_duration(-1) == "forever"
    assert format_duration(5400) == "1h30m"
    assert format_duration(86400 * 2 + 3600) == "2d1h"
    assert format_size(1288490189) == "1.2 GiB"
    assert format_size(None) == "unknown"


# --- metrics ------------------------------------------------------------------------------


def test_metrics_default_to_a_loopback_endpoint_and_no_textfile() -> None:
    metrics = parse_policy("", "p.yaml").metrics
    assert (metrics.listen, metrics.textfile, metrics.allow_remote) == (
        "127.0.0.1:9464",
        None,
        False,
    )
    assert metrics.address is not None and metrics.address.loopback
    assert metrics.enabled
    off = parse_policy("metrics:\n  listen: null\n", "p.yaml").metrics
    assert (off.address, off.enabled) == (None, False)
    assert parse_policy(
        "metrics: {listen: null, textfile: /var/lib/node-exporter/sk.prom}\n", "p.yaml"
    ).metrics.enabled


def test_an_endpoint_reachable_from_other_hosts_must_be_meant() -> None:
    assert errors("metrics:\n  listen: 0.0.0.0:9464\n") == [
        "p.yaml:2:11: metrics.listen: 0.0.0.0:9464 is reachable from other hosts: set "
        "metrics.allow_remote: true to mean it (anyone who can reach it reads the figures), "
        "or listen on 127.0.0.1"
    ]
    meant = parse_policy("metrics:\n  listen: '[::]:9464'\n  allow_remote: true\n", "p.yaml")
    assert meant.metrics.address is not None and not meant.metrics.address.loopback
    assert parse_policy("metrics: {listen: '[::1]:9100'}\n", "p.yaml").metrics.listen == (
        "[::1]:9100"
    )


def test_bad_metrics_settings_are_named_with_their_position() -> None:
    text = """\
metrics:
  listen: metrics.example:9464
  textfile: sentinel.prom
  allow_remote: yes please
  port: 9464
"""
    found = errors(text)
    assert found[0].startswith('p.yaml:2:11: metrics.listen: must be "host:port" with an IP')
    assert found[1].startswith("p.yaml:3:13: metrics.textfile: must be an absolute path ending")
    assert found[2] == 'p.yaml:4:17: metrics.allow_remote: must be true or false, got "yes please"'
    assert found[3] == (
        "p.yaml:5:3: metrics.port: unknown key (known keys: listen, textfile, allow_remote)"
    )
    assert len(found) == 4


@pytest.mark.parametrize(
    "path", ["/x/.prom", "/x/a.prom/", "/x/a.txt", "/x/../etc/a.prom", "/x/a\n.prom", "a.prom"]
)
def test_textfile_paths_are_absolute_prom_files(path: str) -> None:
    with pytest.raises(PolicyError, match=r"metrics\.textfile: must be an absolute path"):
        parse_policy(f"metrics:\n  textfile: {json.dumps(path)}\n", "p.yaml")


def test_a_bare_model_name_hint_never_echoes_control_characters() -> None:
    found = errors('models:\n  - "\\x1f"\n  - llama3\n')
    assert found[0] == (
        "p.yaml:2:5: models[0]: a model is a mapping, not a bare name: write `- name: MODEL` "
        '(or `- {name: MODEL}`), got "\\u001f"'
    )
    assert "write `- name: llama3`" in found[1]
