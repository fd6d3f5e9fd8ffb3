"""The gateway's own /ready when the keeper's view is not fresh: the policy's models in force
against its own look at /api/ps (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from sentinel_keeper.gateway.ready import live_answer, own_health, ready_answer
from sentinel_keeper.policy.loading import parse_policy

POLICY = """\
timezone: UTC
models:
  - name: llama3.2:1b
  - name: night:7b
    windows: ["22:00-06:00"]
  - name: qwen2.5:0.5b
    tier: extra
"""
NOON = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)


def answer(
    listed: frozenset[str] | None, now: datetime, **query: str | None
) -> tuple[int, dict[str, object]]:
    part = parse_policy(POLICY, "p.yaml").split()[0]
    health = own_health(
        part, listed, error=None if listed is not None else "refused", looked_at=100.0, now=now
    )
    got = ready_answer(
        part,
        health,
        source="gateway",
        degraded="view_stale",
        now=101.0,
        instance=query.get("instance"),
        model=query.get("model"),
    )
    return got.status, dict(got.body)


def test_pinned_in_force_resident_is_ready_and_a_closed_window_does_not_count() -> None:
    status, body = answer(frozenset({"llama3.2:1b:latest", "llama3.2:1b"}), NOON)
    assert status == 200 and body["source"] == "gateway" and body["degraded"] == "view_stale"
    status, body = answer(frozenset({"llama3.2:1b"}), MIDNIGHT)  # the window is open now
    assert status == 503 and body["missing"] == ["night:7b"]


def test_ollama_not_answering_is_not_ready() -> None:
    status, body = answer(None, NOON)
    assert status == 503 and "ollama not answering: refused" in str(body["why"])


def test_one_model_and_the_instance_as_the_keeper_asks_them() -> None:
    assert answer(frozenset({"llama3.2:1b"}), NOON, model="qwen2.5:0.5b")[0] == 503
    assert answer(frozenset({"llama3.2:1b", "qwen2.5:0.5b"}), NOON, model="qwen2.5:0.5b")[0] == 200
    assert answer(frozenset({"llama3.2:1b"}), NOON, instance="gpu1")[0] == 404
    assert answer(frozenset({"llama3.2:1b"}), NOON, model="other:1b")[0] == 404


def test_live_says_degraded_without_failing() -> None:
    assert live_answer(degraded=None).status == 200
    assert live_answer(degraded="view_stale").body["degraded"] == "view_stale"
