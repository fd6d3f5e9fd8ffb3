"""gateway.takeover: the policy (defaults, what is refused, at which line), the parts
split() gives (the keeper's url is Ollama's private one, the gateway's listen the public
one), the drop-in's OLLAMA_HOST, and apply-override writing it."""

from __future__ import annotations

import pytest

from sentinel_keeper.decide import context
from sentinel_keeper.errors import PolicyError
from sentinel_keeper.policy import Policy, json_schema
from sentinel_keeper.policy.loading import parse_policy


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return [str(d) for d in caught.value.diagnostics]


def test_takeover_is_off_by_default_and_in_the_json_schema() -> None:
    policy = parse_policy("models: []\n", "p.yaml")
    assert policy.gateway.takeover is False
    assert policy.gateway_instance is None
    [part] = policy.split()
    assert part is policy and part.takeover is None
    assert "OLLAMA_HOST" not in context.environment(part)
    gateway = json_schema()["$defs"]["GatewaySection"]["properties"]
    assert gateway["takeover"]["type"] == "boolean"
    assert gateway["upstream"]["default"] == "127.0.0.1:11433"


def test_takeover_moves_ollama_to_upstream_and_the_gateway_to_its_address() -> None:
    policy = parse_policy("gateway: {takeover: true}\n", "p.yaml")
    assert policy.gateway_instance == "default"
    [part] = policy.split()
    assert part.ollama.url == "http://127.0.0.1:11433"  # the keeper's own client: Ollama
    assert part.gateway.listen == "127.0.0.1:11434"  # clients: where Ollama was
    assert part.client_url == "http://127.0.0.1:11434"
    assert str(part.takeover) == "127.0.0.1:11433"
    assert context.environment(part)["OLLAMA_HOST"] == "127.0.0.1:11433"
    assert part.split() == (part,)  # a part is its own only part, taken over once
    given = parse_policy(
        "ollama: {url: 'localhost:11500'}\n"
        "gateway: {takeover: true, listen: 'localhost:11500', upstream: '[::1]:11501'}\n",
        "p.yaml",
    )
    [part] = given.split()
    assert (part.ollama.url, part.gateway.listen) == ("http://[::1]:11501", "localhost:11500")
    assert context.environment(part)["OLLAMA_HOST"] == "[::1]:11501"


def test_only_the_fronted_instance_moves() -> None:
    policy = parse_policy(
        "instances:\n"
        "  - {name: a, environment: {OLLAMA_HOST: '127.0.0.1:11434'}}\n"
        "  - {name: b, url: '127.0.0.1:11500', unit: b.service}\n"
        "gateway: {takeover: true, instance: b, upstream: '127.0.0.1:11501'}\n",
        "p.yaml",
    )
    a, b = policy.split()
    assert (a.ollama.url, a.takeover, a.client_url) == (
        "http://127.0.0.1:11434",
        None,
        "http://127.0.0.1:11434",
    )
    assert context.environment(a) == {"OLLAMA_HOST": "127.0.0.1:11434"}  # its own, kept
    assert (b.ollama.url, b.gateway.listen) == ("http://127.0.0.1:11501", "127.0.0.1:11500")
    assert context.environment(b) == {"OLLAMA_HOST": "127.0.0.1:11501"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "gateway:\n  takeover: true\n  listen: 127.0.0.1:11435\n",
            "p.yaml:3:11: gateway.listen: with takeover the gateway listens at 127.0.0.1:11434",
        ),
        (
            "gateway:\n  takeover: true\n  upstream: 10.0.0.1:11433\n",
            "p.yaml:3:13: gateway.upstream: must be a loopback address",
        ),
        (
            "gateway:\n  takeover: true\n  upstream: 127.0.0.1:11434\n",
            "p.yaml:3:13: gateway.upstream: 127.0.0.1:11434 is the gateway's address",
        ),
        (
            "metrics: {listen: '127.0.0.1:11433'}\ngateway:\n  takeover: true\n",
            "p.yaml:3:13: gateway.takeover: 127.0.0.1:11433 is the metrics endpoint's address",
        ),
        (
            "instances:\n  - {name: a}\n  - {name: b, url: '127.0.0.1:11433', unit: b.service}\n"
            "gateway:\n  takeover: true\n  instance: a\n",
            "p.yaml:5:13: gateway.takeover: 127.0.0.1:11433 is instances[1].url",
        ),
        (
            "ollama:\n  environment:\n    OLLAMA_HOST: 127.0.0.1:9\ngateway: {takeover: true}\n",
            "p.yaml:3:5: ollama.environment.OLLAMA_HOST: gateway.takeover writes OLLAMA_HOST",
        ),
        (
            "ollama: {url: 'https://127.0.0.1:11434'}\ngateway:\n  takeover: true\n",
            "p.yaml:3:13: gateway.takeover: takeover needs ollama.url to be a plain http://",
        ),
        (
            "ollama: {url: 'http://ollama.lan:11434'}\ngateway:\n  takeover: true\n",
            "p.yaml:3:13: gateway.takeover: takeover needs ollama.url to be a plain http://",
        ),
        (
            "ollama: {url: '0.0.0.0:11434'}\ngateway:\n  takeover: true\n",
            "p.yaml:3:13: gateway.takeover: 0.0.0.0:11434 is reachable from other hosts",
        ),
        (
            "gateway:\n  takeover: 'yes'\n",
            "p.yaml:2:13: gateway.takeover: must be true or false",
        ),
    ],
)
def test_what_takeover_refuses_is_reported_where_it_is(text: str, expected: str) -> None:
    found = errors(text)
    assert any(line.startswith(expected) for line in found), found


def test_takeover_of_a_remote_address_is_allowed_when_the_policy_says_so() -> None:
    policy: Policy = parse_policy(
        "ollama: {url: '0.0.0.0:11434'}\ngateway: {takeover: true, allow_remote: true}\n",
        "p.yaml",
    )
    [part] = policy.split()
    assert part.gateway.listen == "0.0.0.0:11434"
    assert part.ollama.url == "http://127.0.0.1:11433"


def test_without_takeover_the_gateway_still_needs_its_own_address() -> None:
    found = errors("gateway: {listen: '127.0.0.1:11434'}\n")
    assert any("is where ollama listens" in line for line in found), found
    assert parse_policy("gateway: {listen: '127.0.0.1:11434', takeover: true}\n", "p.yaml")
