"""The planner: a pure function of (policy, observation, now) to actions, each with a reason.

No I/O, no clock, no logging: everything it knows comes in as arguments, so every case is a
table-driven test. The executor (:class:`sentinel_keeper.act.reconcile.Reconciler`) carries the
actions out. What Ollama itself does with memory and model counts is
:mod:`sentinel_keeper.decide.capacity`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sentinel_keeper.decide.capacity import (
    OLLAMA_FIT_SHARE,
    default_num_ctx,
    environment_int,
    expected_context_length,
    expected_footprint,
    fits_beside_loaded,
    max_loaded_models,
)
from sentinel_keeper.decide.client_reloads import Hold
from sentinel_keeper.observe.observation import Endpoint, LoadedModel, Observation
from sentinel_keeper.policy import ModelPolicy, Policy
from sentinel_keeper.values.quantities import format_duration, format_size


class ActionKind(StrEnum):
    LOAD = "load"  # not resident: load it
    RELOAD = "reload"  # resident with another num_ctx: load with the policy's options
    REASSERT = "reassert"  # a client shortened its keep_alive: same options, policy keep_alive
    REFRESH = "refresh"  # finite keep_alive running out: renew the timer
    UNLOAD = "unload"  # shed an extra to give back memory
    PULL = "pull"  # not installed and the policy says pull: true
    RETIRE = "retire"  # outside its windows with outside: unload: unload it (once idle)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    model: str
    tier: str
    reason: str
    options: Mapping[str, int | bool] = field(default_factory=dict)
    keep_alive: float = -1.0
    endpoint: Endpoint = "generate"

    @property
    def is_load(self) -> bool:
        return self.kind in (
            ActionKind.LOAD,
            ActionKind.RELOAD,
            ActionKind.REASSERT,
            ActionKind.REFRESH,
        )


class FindingKind(StrEnum):
    NOT_INSTALLED = "model_not_installed"
    SPILLED = "model_spilled"
    EXTRA_SKIPPED = "extra_skipped"
    NO_MEMORY_INFO = "no_memory_info"
    RELOAD_HELD = "client_reload_backoff"
    CLIENT_BUSY = "model_left_to_client"


@dataclass(frozen=True)
class Finding:
    """Something the user should know that no action fixes. `key` identifies it across passes
    so that a daemon can report it once per occurrence."""

    kind: FindingKind
    model: str | None
    message: str
    warning: bool = True
    data: Mapping[str, int | float | str | None] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind.value, self.model)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    findings: tuple[Finding, ...] = ()


def endpoint_for(model: ModelPolicy, observation: Observation) -> Endpoint:
    """Embedding-only models cannot load through /api/generate: use /api/embed."""
    details = observation.details.get(model.name)
    if details is not None and details.capabilities is not None:
        return "embed" if details.embedding_only else "generate"
    installed = observation.installed_by_name().get(model.name)
    if installed is not None and installed.capabilities is not None:
        caps = installed.capabilities
        if "embedding" in caps and "completion" not in caps:
            return "embed"
    return "generate"


def _keep_alive_short(loaded: LoadedModel, wanted: float, interval: float, now: datetime) -> bool:
    """Does the instance's timer fall short of what the policy asks for?"""
    if wanted < 0:
        return loaded.expires_at is not None and not loaded.is_forever(now)
    remaining = loaded.remaining(now)
    if remaining is None:
        return False
    threshold = min(wanted, max(wanted / 2, 2 * interval))
    return remaining.total_seconds() < threshold


def _load(kind: ActionKind, model: ModelPolicy, reason: str, observation: Observation) -> Action:
    return Action(
        kind=kind,
        model=model.name,
        tier=model.tier,
        reason=reason,
        options=model.options.as_request(),
        keep_alive=model.effective_keep_alive,
        endpoint=endpoint_for(model, observation),
    )


def _describe_expiry(loaded: LoadedModel, now: datetime) -> str:
    remaining = loaded.remaining(now)
    if remaining is None:
        return "no expiry known"
    seconds = remaining.total_seconds()
    return "already expired" if seconds <= 0 else f"expires in {format_duration(seconds)}"


def _resident_actions(
    model: ModelPolicy, loaded: LoadedModel, policy: Policy, observation: Observation, now: datetime
) -> list[Action]:
    """Actions for a policy model that /api/ps shows: reload, reassert or refresh."""
    wanted_ctx = expected_context_length(model, observation.details.get(model.name))
    if (
        wanted_ctx is not None
        and loaded.context_length is not None
        and loaded.context_length != wanted_ctx
    ):
        return [
            _load(
                ActionKind.RELOAD,
                model,
                f"loaded with num_ctx {loaded.context_length}, policy says {wanted_ctx}: "
                "a client is loading it with another num_ctx",
                observation,
            )
        ]
    wanted = model.effective_keep_alive
    if _keep_alive_short(loaded, wanted, policy.interval, now):
        if wanted < 0:
            reason = f"keep_alive shortened by a client: {_describe_expiry(loaded, now)}"
            return [_load(ActionKind.REASSERT, model, reason, observation)]
        reason = (
            f"keep_alive {format_duration(wanted)} running out: {_describe_expiry(loaded, now)}"
        )
        return [_load(ActionKind.REFRESH, model, reason, observation)]
    return []


def _held(hold: Hold, policy: Policy, observation: Observation) -> Finding:
    """Why a model is left as its clients load it, and what to set so that it need not be."""
    name, ctx, wanted = hold.model, hold.client_ctx, hold.policy_ctx
    if hold.kind == "busy":
        quiet = format_duration(hold.wait or policy.reload_backoff.quiet)
        return Finding(
            FindingKind.CLIENT_BUSY,
            name,
            f"a client uses {name} with num_ctx {ctx}: left to it until it has been idle for "
            f"{quiet}, then loaded with the policy's {wanted}",
            warning=False,
            data={"num_ctx": ctx, "policy_num_ctx": wanted, "on_hold": 1},
        )
    automatic = environment_int(policy, "OLLAMA_CONTEXT_LENGTH") or default_num_ctx(observation)
    advice = (
        f"set options.num_ctx: {ctx} for {name} in the policy, or make the clients send {wanted}"
    )
    if ctx == automatic:
        advice += (
            f"; clients that send no num_ctx (every /v1 request) get {ctx}: "
            f"ollama.align_context: true makes that {wanted}"
        )
    window = format_duration(policy.reload_backoff.within)
    until = hold.until
    when = f"{until:%H:%M:%S %Z}" if until is not None else "they stop"
    what = (
        f"reloaded it with the policy's {wanted} after a cool-down; it goes back on hold if a "
        f"client reloads it again before {when}"
        if hold.trying
        else f"not reloading it with the policy's {wanted} until {when}, so as not to fight them"
    )
    return Finding(
        FindingKind.RELOAD_HELD,
        name,
        f"clients reloaded {name} with num_ctx {ctx} {hold.reloads} times, or kept using it so, "
        f"within {window}; {what}: {advice}",
        data={
            "num_ctx": ctx,
            "policy_num_ctx": wanted,
            "reloads": hold.reloads,
            "until": until.isoformat() if until is not None else None,
            "on_hold": 0 if hold.trying else 1,
        },
    )


def _not_installed(model: ModelPolicy) -> Finding:
    return Finding(
        FindingKind.NOT_INSTALLED,
        model.name,
        f"{model.name} is not installed in Ollama (run `ollama pull {model.name}`, "
        "or set pull: true in the policy)",
        data={"tier": model.tier},
    )


def plan(
    policy: Policy,
    observation: Observation,
    now: datetime,
    *,
    holds: Mapping[str, Hold] | None = None,
    retire: Sequence[ModelPolicy] = (),
) -> Plan:
    """What to do now so that the policy holds. Pure. ``policy``: the models in force now
    (inside their windows); ``holds``: models left to their clients for now
    (:mod:`sentinel_keeper.decide.client_reloads`): neither loaded, reloaded nor reasserted;
    ``retire``: models outside their windows that the policy unloads there."""
    loaded = observation.loaded_by_name()
    installed = observation.installed_by_name()
    actions: list[Action] = []
    findings: list[Finding] = [_held(h, policy, observation) for h in (holds or {}).values()]
    held = {name for name, hold in (holds or {}).items() if not hold.trying}
    for model in retire:
        if model.name in loaded:
            actions.append(
                Action(
                    ActionKind.RETIRE,
                    model.name,
                    model.tier,
                    f"outside its windows ({', '.join(model.windows or ())}); outside: unload "
                    "(Ollama unloads it once its requests are done)",
                    endpoint="generate",
                )
            )
    pinned_pending = False
    pinned_spilled = False

    for model in policy.pinned:
        instance = loaded.get(model.name)
        if model.name in held:
            pinned_spilled |= instance is not None and instance.spilled
            # missing while left to a client (its reload under way): it comes back before
            # any extra is loaded
            pinned_pending |= instance is None
            continue
        if instance is None:
            if model.name not in installed:
                if not model.pull:
                    findings.append(_not_installed(model))
                    continue
                actions.append(
                    Action(ActionKind.PULL, model.name, model.tier, "not installed; pull: true")
                )
            actions.append(_load(ActionKind.LOAD, model, "pinned and not loaded", observation))
            pinned_pending = True
            continue
        resident = _resident_actions(model, instance, policy, observation, now)
        actions.extend(resident)
        pinned_pending |= any(a.kind is ActionKind.RELOAD for a in resident)
        if instance.spilled:
            pinned_spilled = True
            findings.append(
                Finding(
                    FindingKind.SPILLED,
                    model.name,
                    f"{model.name} is partly in CPU memory: {format_size(instance.size_vram)} "
                    f"of {format_size(instance.size)} on the GPU; it will answer slowly "
                    "(free GPU memory or lower its num_ctx)",
                    data={"size": instance.size, "size_vram": instance.size_vram},
                )
            )

    extra_actions, extra_findings = _plan_extras(
        policy,
        observation,
        now,
        defer_loads=pinned_pending,
        pinned_spilled=pinned_spilled,
        held=held,
    )
    return Plan(
        tuple(extra_actions[0] + actions + extra_actions[1]), tuple(findings + extra_findings)
    )


def _free_memory(policy: Policy, observation: Observation) -> tuple[int | None, str]:
    """Free memory for extras, and where the figure comes from."""
    if observation.gpu.known:
        return observation.gpu.free, "GPU"
    budget = policy.vram.budget
    if budget is not None:
        used = sum(m.size for m in observation.loaded)
        return budget - used, "vram.budget"
    return None, ""


def _plan_extras(
    policy: Policy,
    observation: Observation,
    now: datetime,
    *,
    defer_loads: bool,
    pinned_spilled: bool,
    held: set[str],
) -> tuple[tuple[list[Action], list[Action]], list[Finding]]:
    """Extras: (actions to run before the pinned ones, actions after), findings. Held
    extras are counted in memory as they are, and otherwise left alone."""
    extras = tuple(m for m in policy.extras if m.name not in held)
    if not extras:
        return ([], []), []
    loaded = observation.loaded_by_name()
    installed = observation.installed_by_name()
    headroom = policy.vram.headroom
    before: list[Action] = []
    after: list[Action] = []
    findings: list[Finding] = []

    for model in extras:
        instance = loaded.get(model.name)
        if instance is not None:
            after.extend(_resident_actions(model, instance, policy, observation, now))

    free, source = _free_memory(policy, observation)
    absent = [m for m in extras if m.name not in loaded]
    if free is None:
        if absent:
            reason = observation.gpu.error or "no GPU found"
            findings.append(
                Finding(
                    FindingKind.NO_MEMORY_INFO,
                    None,
                    f"GPU memory is unknown ({reason}) and vram.budget is not set: "
                    "extras are not loaded",
                    data={"extras_waiting": len(absent)},
                )
            )
        return (before, after), findings

    # Shed: extras loaded while free memory is below the headroom, lowest priority first.
    resident_extras = sorted(
        (m for m in extras if m.name in loaded), key=lambda m: (m.priority, m.name)
    )
    shed = False
    for model in resident_extras:
        if free >= headroom:
            break
        instance = loaded[model.name]
        freed = instance.size_vram if source == "GPU" else instance.size
        before.append(
            Action(
                ActionKind.UNLOAD,
                model.name,
                model.tier,
                f"{source} free {format_size(free)} is below the headroom {format_size(headroom)}; "
                f"priority {model.priority} is the lowest loaded",
                # /api/generate with keep_alive 0 unloads any model, embedding-only ones
                # included; /api/embed would load the model first.
                endpoint="generate",
            )
        )
        after[:] = [a for a in after if a.model != model.name]
        free += freed
        shed = True
    if shed or defer_loads:
        return (before, after), findings

    limit = max_loaded_models(policy, observation)
    count = len(observation.loaded)
    for model in sorted(absent, key=lambda m: (-m.priority, m.name)):
        if model.name not in installed:
            if model.pull:
                before.append(
                    Action(ActionKind.PULL, model.name, model.tier, "not installed; pull: true")
                )
            else:
                findings.append(_not_installed(model))
            continue

        def skip(why: str, model: ModelPolicy = model, **data: int | float | str | None) -> None:
            findings.append(
                Finding(
                    FindingKind.EXTRA_SKIPPED,
                    model.name,
                    f"{model.name} not loaded: {why}",
                    warning=False,
                    data=data,
                )
            )

        if pinned_spilled:
            skip("a pinned model is already partly in CPU memory")
            continue
        if count + 1 > limit:
            skip(f"{count} models are loaded and Ollama allows {limit}", loaded=count, limit=limit)
            continue
        footprint = expected_footprint(model, policy, observation)
        if footprint is None:
            skip("its size is unknown")
            continue
        fits_headroom = footprint + headroom <= free
        fits_ollama = not observation.loaded or fits_beside_loaded(footprint, free)
        if not (fits_headroom and fits_ollama):
            rule = (
                f"needs {format_size(footprint)} + headroom {format_size(headroom)}"
                if not fits_headroom
                else f"needs {format_size(footprint)}, more than Ollama's "
                f"{OLLAMA_FIT_SHARE:.0%} of free memory (it would evict another model)"
            )
            skip(
                f"{rule}, {source} free is {format_size(free)}",
                needed=footprint,
                headroom=headroom,
                free=free,
            )
            continue
        after.append(
            _load(
                ActionKind.LOAD,
                model,
                f"extra, fits: needs {format_size(footprint)}, {source} free {format_size(free)}",
                observation,
            )
        )
        free -= footprint
        count += 1
    return (before, after), findings
