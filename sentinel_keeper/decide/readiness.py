"""``GET /ready`` and ``GET /live`` for a load balancer: the decisions, pure.

A balancer in front of several Ollama hosts routes on an HTTP check. Ollama's own ``GET /``
answers "Ollama is running" with nothing loaded, so right after a restart the balancer sends
clients to a host where every model is cold. The keeper knows better: its last look at Ollama
(the last pass, or the /api/ps look between passes) says which pinned models are resident.

:func:`decide_ready` turns a frozen :class:`Health` (one :class:`InstanceHealth` per Ollama
instance, built by the daemon's main thread at every tick) into an answer; :func:`decide_live`
does the same for the watchdog's rule. No clock and no I/O here: ``now`` (monotonic seconds)
is passed in, so that the same functions serve the keeper's endpoint and any other process
that holds the same input.

The rule of ``/ready`` is READY=1's (:func:`sentinel_keeper.daemon.lifecycle.readiness`),
held continuously instead of once: with ``ready: pinned`` (the default) every pinned model in
force is resident, or the ones missing are not installed (no pass can load them); with
``ready: started`` it is enough that Ollama answers. Two differences, both because a balancer
asks "is this host warm now?" and systemd asks "may the units after me start?": Ollama must
answer at the last look (READY=1 with ``ready: started`` does not wait for that), and
``startup_timeout`` never makes a host ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sentinel_keeper.values.names import normalize_model_name

ReadyRule = Literal["pinned", "started"]


@dataclass(frozen=True)
class InstanceHealth:
    """One Ollama instance as the keeper last saw it. Times are monotonic seconds."""

    name: str
    answered: bool  # Ollama answered at the last look
    pinned: tuple[str, ...] = ()  # pinned models in force (time windows applied)
    extras: tuple[str, ...] = ()  # extras in force
    resident: frozenset[str] = frozenset()  # models listed by /api/ps and not under a load
    not_installed: frozenset[str] = frozenset()  # pinned models no pass can load
    looked_at: float | None = None  # when that look was taken; None: no look yet
    error: str | None = None  # why Ollama did not answer
    down_since: float | None = None  # since when it has not answered
    loading: str | None = None  # the model a pass loads now
    loading_since: float | None = None
    stalled: str | None = None  # Ollama does not finish the keeper's loads (why)


@dataclass(frozen=True)
class Health:
    """What ``/ready`` decides from: the policy's ``ready:`` rule and every instance."""

    rule: ReadyRule
    instances: tuple[InstanceHealth, ...]
    several: bool = False  # the policy has ``instances:`` (names are shown)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: 200 ready (or live), 503 not, 404 for a question about an instance
    or a model the policy does not have."""

    status: int
    body: Mapping[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200


def _seconds(now: float, since: float | None) -> str:
    return "" if since is None else f" ({max(now - since, 0.0):.0f} s)"


def _instance(
    inst: InstanceHealth, rule: ReadyRule, model: str | None, now: float
) -> tuple[bool, list[str], str]:
    """Ready or not, the models missing, and why."""
    if inst.looked_at is None:
        why = "no look at ollama yet"
        if inst.loading is not None:  # the first pass loads it
            why += f"; loading {inst.loading}" + _seconds(now, inst.loading_since)
        return False, [], why
    if not inst.answered:
        return (
            False,
            [],
            f"ollama not answering: {inst.error or 'no answer'}" + _seconds(now, inst.down_since),
        )
    if rule == "started" and model is None:
        return True, [], "ollama answers (ready: started)"
    wanted = inst.pinned if model is None else (model,)
    missing = [m for m in wanted if m not in inst.resident]
    excused = [] if model is not None else [m for m in missing if m in inst.not_installed]
    blocking = [m for m in missing if m not in excused]
    if not blocking:
        if model is not None:
            why = f"{model} resident"
        elif excused:
            why = f"pinned resident, not installed: {', '.join(excused)}"
        else:
            why = "pinned resident" if inst.pinned else "no pinned model in force"
        return True, [], why
    if inst.loading is not None and inst.loading in blocking:
        why = f"loading {inst.loading}" + _seconds(now, inst.loading_since)
        others = [m for m in blocking if m != inst.loading]
        if others:
            why += f"; not resident: {', '.join(others)}"
    elif inst.stalled is not None:
        why = inst.stalled
    else:
        why = f"not resident: {', '.join(blocking)}"
    return False, blocking, why


def decide_ready(
    health: Health, *, now: float, instance: str | None = None, model: str | None = None
) -> Answer:
    """``GET /ready[?instance=NAME][&model=NAME]`` at ``now``: every instance (or the one
    named) ready by the rule; with ``model``, that model resident on each of them that keeps
    it in force (pinned or extra; no excuse for a model not installed). 404 for an instance
    the policy does not have, or a model no instance asked about keeps in force."""
    chosen = health.instances
    if instance is not None:
        chosen = tuple(i for i in health.instances if i.name == instance)
        if not chosen:
            names = ", ".join(i.name for i in health.instances)
            return Answer(
                404, {"ready": False, "why": f"no instance {instance!r}; the policy has {names}"}
            )
    name = normalize_model_name(model) if model is not None else None
    if name is not None:
        chosen = tuple(i for i in chosen if name in i.pinned or name in i.extras)
        if not chosen:
            return Answer(404, {"ready": False, "why": f"{name} is not a model in force here"})
    parts = [(inst, *_instance(inst, health.rule, name, now)) for inst in chosen]
    ready = bool(parts) and all(ok for _, ok, _, _ in parts)
    show = health.several or len(parts) != 1
    body: dict[str, object] = {"ready": ready}
    if not show:
        inst, _, missing, why = parts[0]
        body.update(instance=inst.name, missing=missing, why=why)
    else:
        body["missing"] = [f"{m}@{inst.name}" for inst, _, missing, _ in parts for m in missing]
        body["why"] = "; ".join(f"{inst.name}: {why}" for inst, ok, _, why in parts if not ok)
        body["why"] = body["why"] or "every instance ready"
        body["instances"] = [
            {"instance": inst.name, "ready": ok, "missing": missing, "why": why}
            for inst, ok, missing, why in parts
        ]
    if name is not None:
        body["model"] = name
    ages = [now - i.looked_at for i in chosen if i.looked_at is not None]
    if ages:
        body["age"] = round(max(*ages, 0.0), 3)  # seconds since the oldest look used
    return Answer(200 if ready else 503, body)


# --- /live ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Liveness:
    """What ``/live`` decides from: the main loop's last tick and what is stuck."""

    ticked_at: float  # monotonic: the main loop's last tick
    tick_limit: float  # no tick for longer than this: the main loop is stuck
    stuck: tuple[tuple[str, str], ...] = ()  # (instance, what is past its limit)


def decide_live(live: Liveness, *, now: float) -> Answer:
    """``GET /live``: 200 while the main loop ticks and no pass is past its limits (the rule
    by which the daemon stops the watchdog pings), else 503."""
    quiet = now - live.ticked_at
    problems = [f"{name}: {what}" for name, what in live.stuck]
    if quiet > live.tick_limit:
        problems.insert(0, f"main loop has not run for {quiet:.0f} s (limit {live.tick_limit:g} s)")
    if problems:
        return Answer(503, {"live": False, "why": "; ".join(problems)})
    return Answer(200, {"live": True, "why": "passes within their limits"})
