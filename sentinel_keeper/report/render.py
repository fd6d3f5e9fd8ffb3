"""Pure text and JSON renderings of what a pass saw and did, shared by the CLI and the daemon."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sentinel_keeper.act.reconcile import Outcome, PassReport
from sentinel_keeper.decide.capacity import expected_context_length
from sentinel_keeper.decide.plan import FindingKind
from sentinel_keeper.observe.observation import LoadedModel, Observation
from sentinel_keeper.policy import ModelPolicy, Policy
from sentinel_keeper.policy.windows import WindowState, window_state, zone_of
from sentinel_keeper.values.quantities import format_duration, format_size


def status_line(report: PassReport, *, gpu: bool = True) -> str:
    """One short line a person understands, for systemd's STATUS= and the CLI. ``gpu``: False
    leaves out the GPU clause (the CLI has said once already that GPU memory is unknown)."""
    latest = report.latest
    if latest is None:
        return f"ollama unreachable: {report.error}"
    pinned = f"{len(report.resident(report.pinned))}/{len(report.pinned)} pinned resident"
    parts = [pinned]
    if report.extras:
        parts[0] += f", {len(report.resident(report.extras))}/{len(report.extras)} extras"
    if gpu:
        parts.append(latest.gpu.summary())
    parts.append(f"ollama {latest.ollama_version}")
    line = "; ".join(parts)
    if report.stall is not None:
        line = f"{report.stall.describe(report.started)}; {line}"
    missing = report.pinned_missing
    if missing:
        line += f"; missing: {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")
    return line


def extras_without_reason(report: PassReport) -> tuple[str, ...]:
    """The extras ``report`` leaves not resident without saying why: no finding, no action
    of the pass names them (the planner leaves extras for the next pass while a pinned model
    loads or an extra is shed)."""
    latest = report.latest
    if latest is None:
        return ()
    findings = report.plan.findings
    if any(f.kind is FindingKind.NO_MEMORY_INFO for f in findings):
        return ()
    named = {f.model for f in findings} | {o.action.model for o in report.outcomes}
    loaded = latest.loaded_by_name()
    return tuple(n for n in report.extras if n not in loaded and n not in named)


def outcome_line(outcome: Outcome) -> str:
    """ "load      llama3.2:1b  ok 1.2s  pinned and not loaded" """
    action = outcome.action
    if outcome.skipped:
        result = "skipped"
    elif outcome.ok:
        result = f"ok {outcome.seconds:.1f}s"
    else:
        result = "FAILED"
    line = f"{action.kind.value:<9} {action.model:<28} {result:<10} {action.reason}"
    if outcome.error:
        line += f" ({outcome.error})"
    return line


@dataclass(frozen=True)
class ModelStatus:
    name: str
    tier: str
    resident: bool
    forever: bool
    expires_at: datetime | None
    context_length: int | None
    size: int | None
    size_vram: int | None
    installed: bool
    pinned: bool = False
    policy_num_ctx: int | None = None  # options.num_ctx of the policy, None when it sets none
    drift: tuple[str, ...] = ()  # how a resident pinned model differs from the policy

    def expiry_text(self, now: datetime) -> str:
        if not self.resident:
            return "-"
        if self.forever:
            return "forever"
        if self.expires_at is None:
            return "unknown"
        seconds = (self.expires_at - now).total_seconds()
        return f"in {format_duration(max(seconds, 0))}"


def _drift(
    model: ModelPolicy, instance: LoadedModel | None, observation: Observation
) -> tuple[str, ...]:
    """How a resident pinned model differs from its policy: another num_ctx than the
    policy's, or an expiry where the policy says forever."""
    if instance is None or not model.pinned:
        return ()
    drift = []
    # what /api/ps shows for the policy's num_ctx: Ollama caps it at the trained context
    want = expected_context_length(model, observation.details.get(model.name))
    shown = instance.context_length
    if want is not None and shown is not None and shown != want:
        drift.append(f"num_ctx {shown}, policy says {model.options.num_ctx}")
    if model.effective_keep_alive < 0 and not instance.is_forever(observation.at):
        drift.append("not forever, policy says forever")
    return tuple(drift)


def model_statuses(policy: Policy, observation: Observation) -> list[ModelStatus]:
    loaded = observation.loaded_by_name()
    installed = observation.installed_by_name()
    rows = []
    for model in policy.models:
        instance = loaded.get(model.name)
        rows.append(
            ModelStatus(
                name=model.name,
                tier=model.tier,
                resident=instance is not None,
                forever=instance is not None and instance.is_forever(observation.at),
                expires_at=instance.expires_at if instance else None,
                context_length=instance.context_length if instance else None,
                size=instance.size if instance else None,
                size_vram=instance.size_vram if instance else None,
                installed=instance is not None or model.name in installed,
                pinned=model.pinned,
                policy_num_ctx=model.options.num_ctx,
                drift=_drift(model, instance, observation),
            )
        )
    return rows


def status_table(policy: Policy, observation: Observation) -> list[str]:
    header = f"{'MODEL':<28} {'TIER':<7} {'STATE':<13} {'EXPIRES':<12} {'CONTEXT':>7}  VRAM"
    lines = [header]
    for row in model_statuses(policy, observation):
        if row.resident:
            state = "resident" if row.size_vram == row.size else "spilled"
        else:
            state = "not loaded" if row.installed else "not installed"
        vram = (
            f"{format_size(row.size_vram)} of {format_size(row.size)}"
            if row.resident and row.size_vram != row.size
            else format_size(row.size_vram)
            if row.resident
            else "-"
        )
        context = str(row.context_length) if row.context_length else "-"
        line = (
            f"{row.name:<28} {row.tier:<7} {state:<13} {row.expiry_text(observation.at):<12} "
            f"{context:>7}  {vram}"
        )
        if row.drift:
            line += f"  drift: {'; '.join(row.drift)}"
        lines.append(line)
    return lines


def pinned_health(policy: Policy, observation: Observation) -> tuple[list[str], list[str]]:
    """The pinned models that are not installed, and those installed but not resident."""
    rows = [row for row in model_statuses(policy, observation) if row.pinned]
    missing = [row.name for row in rows if not row.installed]
    absent = [row.name for row in rows if row.installed and not row.resident]
    return missing, absent


def status_json(
    policy: Policy, observation: Observation, *, in_force: Policy | None = None
) -> dict[str, Any]:
    """``in_force``: the policy's models inside their windows now, whose health counts."""
    missing, absent = pinned_health(in_force or policy, observation)
    return {
        "reachable": True,
        "ollama": {"url": policy.ollama.url, "version": observation.ollama_version},
        "gpu": observation.gpu.as_json(totals=False),
        "models": [
            {
                "name": row.name,
                "tier": row.tier,
                "installed": row.installed,
                "resident": row.resident,
                "forever": row.forever,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                "context_length": row.context_length,
                "size": row.size,
                "size_vram": row.size_vram,
                "policy_num_ctx": row.policy_num_ctx,
                "drift": list(row.drift),
            }
            for row in model_statuses(policy, observation)
        ],
        "foreign_models": [m.name for m in observation.loaded if policy.model(m.name) is None],
        "pinned_not_installed": missing,
        "pinned_not_resident": absent,
    }


def unreachable_json(policy: Policy, error: str, hint: str) -> dict[str, Any]:
    """``status --json`` when Ollama cannot be reached: the same keys, nothing observed."""
    return {
        "reachable": False,
        "error": error,
        "hint": hint,
        "ollama": {"url": policy.ollama.url, "version": None},
        "gpu": None,
        "models": [{"name": m.name, "tier": m.tier} for m in policy.models],
        "foreign_models": [],
        "pinned_not_installed": [],
        "pinned_not_resident": [],
    }


def _windows(policy: Policy, now: datetime) -> list[tuple[ModelPolicy, WindowState]]:
    zone = zone_of(policy.timezone)
    out = []
    for model in policy.models:
        state = window_state(model, zone, now)
        if state is not None:
            out.append((model, state))
    return out


def window_lines(policy: Policy, now: datetime) -> list[str]:
    """For `status`: each model with windows, in force now or not, and its next edge."""
    zone = zone_of(policy.timezone)
    lines = []

    def shown(at: datetime) -> str:
        at = at.astimezone(zone)
        return f"{at:%a %Y-%m-%d %H:%M:%S %Z}" if at.second else f"{at:%a %Y-%m-%d %H:%M %Z}"

    for model, state in _windows(policy, now):
        edge = state.next_edge
        when = shown(edge) if edge is not None else None
        if state.open:
            what = f"in force until {when}" if when else "in force at every hour"
        elif edge is not None and model.warm_before > 0:
            # the edge is the warm-up's start, warm_before ahead of the window's opening
            opens = shown(edge + timedelta(seconds=model.warm_before))
            what = (
                f"outside its windows until {opens}, loaded from {when} "
                f"(warm_before {format_duration(model.warm_before)})"
            )
        else:
            what = f"outside its windows until {when}" if when else "outside its windows"
        if not state.open and model.outside == "unload":
            what += " (unloaded there)"
        lines.append(f"{'window':<9} {model.name}: {what} ({'; '.join(model.windows or ())})")
    return lines


def windows_json(policy: Policy, now: datetime) -> dict[str, Any]:
    return {
        model.name: {
            "windows": list(model.windows or ()),
            "open": state.open,
            "next_edge": state.next_edge.isoformat() if state.next_edge is not None else None,
            "outside": model.outside,
        }
        for model, state in _windows(policy, now)
    }
