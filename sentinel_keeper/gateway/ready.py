"""The gateway's own ``/ready``, for a balancer that fronts gateways and wants one port per
host: ``GET /sentinel-keeper/ready`` (and ``/sentinel-keeper/live``) on the gateway's address.
Ollama's router has no ``/sentinel-keeper/`` path (its API is ``/``, ``/api/...`` and
``/v1/...``), so the two never collide; the gateway answers them itself and relays nothing.

It answers as the keeper's ``/ready`` does (:func:`sentinel_keeper.decide.readiness.decide_ready`),
from what the keeper published with its view (``gateway-view.json``). Without a fresh view
(the keeper stopped, crashed or stuck: the gateway runs degraded), it does not guess and it
does not take the host out of rotation for the keeper's sake: it asks Ollama's ``/api/ps``
itself (at most once a second) and judges the pinned models in force from that; a pinned model
not installed then counts as missing (only the keeper's passes know it cannot be loaded). The
answer says which it used (``source``: ``keeper`` or ``gateway``). Pure: the server does the
asking.
"""

from __future__ import annotations

from datetime import datetime

from sentinel_keeper.decide.readiness import Answer, Health, InstanceHealth, decide_ready
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.windows import in_force, zone_of

PREFIX = "/sentinel-keeper/"
READY = PREFIX + "ready"
LIVE = PREFIX + "live"
OWN_PATHS = frozenset({READY, LIVE})
LOOK_EVERY = 1.0  # seconds: the gateway's own look at /api/ps is reused this long


def own_health(
    part: Policy,
    listed: frozenset[str] | None,
    *,
    error: str | None,
    looked_at: float,
    now: datetime,
) -> InstanceHealth:
    """The fronted instance as the gateway's own look at ``/api/ps`` found it (``listed``:
    the models it lists; None: Ollama did not answer, ``error`` says why), with the policy's
    models in force at ``now`` (time windows honoured)."""
    active, _ = in_force(part.models, zone_of(part.timezone), now)
    return InstanceHealth(
        part.instance,
        answered=listed is not None,
        pinned=tuple(m.name for m in active if m.pinned),
        extras=tuple(m.name for m in active if not m.pinned),
        resident=listed or frozenset(),
        looked_at=looked_at,
        error=error,
    )


def ready_answer(
    part: Policy,
    health: InstanceHealth,
    *,
    source: str,
    degraded: str | None,
    now: float,
    instance: str | None,
    model: str | None,
) -> Answer:
    """``/sentinel-keeper/ready`` from ``health`` (the keeper's, or the gateway's own look)."""
    answer = decide_ready(Health(part.ready, (health,)), now=now, instance=instance, model=model)
    body = {**answer.body, "source": source}
    if degraded is not None:
        body["degraded"] = degraded
    return Answer(answer.status, body)


def live_answer(*, degraded: str | None) -> Answer:
    """``/sentinel-keeper/live``: the gateway answers, so it is live; degraded or not is
    said, not failed (its data path works either way)."""
    body: dict[str, object] = {"live": True, "why": "the gateway serves"}
    if degraded is not None:
        body["degraded"] = degraded
    return Answer(200, body)
