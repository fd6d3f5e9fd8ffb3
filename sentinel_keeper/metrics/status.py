"""What `status` shows of the running daemon's own figures, read back from its metrics
endpoint (:mod:`.readback`): since when each model is resident, its loads and why, and the
gateway's last hour. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sentinel_keeper.metrics.readback import DaemonFigures, GatewayHour, Lifetime
from sentinel_keeper.policy import Policy
from sentinel_keeper.values.quantities import format_duration


@dataclass(frozen=True)
class DaemonView:
    """What `status` learnt from the running daemon's metrics endpoint: its figures, or why
    there are none (``source``: the URL read, None when the policy turns the endpoint off)."""

    source: str | None
    figures: DaemonFigures | None = None
    error: str | None = None


def _when(unix: float, now: datetime) -> str:
    at = datetime.fromtimestamp(unix, tz=now.tzinfo)
    ago = format_duration(max(round((now - at).total_seconds()), 0))
    return f"{at:%Y-%m-%d %H:%M:%S} ({ago} ago)"


def _counted(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(counter.items(), key=lambda kv: -kv[1]))


def daemon_lines(policy: Policy, view: DaemonView, now: datetime) -> list[str]:
    """The daemon's lifetime figures of ``policy``'s instance (one part of
    :meth:`Policy.split`) for `status`: since when each model is resident, how often the
    daemon loaded it and why; or why they are unknown."""
    figures = view.figures
    if figures is None:
        return [f"daemon figures: not available: {view.error}"]
    # a policy with instances: says which one; without, there is only the one
    which = f" of instance {policy.instance}" if policy.instance_key != "ollama" else ""
    lines = [
        f"daemon figures{which} since it started {_when(figures.started, now)}, "
        f"{figures.passes_of(policy.instance)} passes (from {view.source}):"
    ]
    seen = figures.models_of(policy.instance)
    for model in policy.models:
        life = seen.get(model.name)
        if life is None:
            lines.append(f"  {model.name:<28} not seen by the daemon yet")
            continue
        resident = (
            f"resident since {_when(life.resident_since, now)}"
            if life.resident_since is not None
            else "not resident"
        )
        parts = [
            resident,
            f"loaded {life.load_count}x" + (f": {_counted(life.loads)}" if life.loads else ""),
        ]
        if life.evictions:
            parts.append(f"evicted {life.evictions}x")
        if life.failures:
            parts.append(f"failed loads: {_counted(life.failures)}")
        if life.client_reloads:
            ctx = ", ".join(f"num_ctx {c} {n}x" for c, n in sorted(life.client_reloads.items()))
            parts.append(f"reloaded by clients with {ctx}")
        lines.append(f"  {model.name:<28} {'; '.join(parts)}")
    hours = figures.gateway_of(policy.instance)
    if hours:
        lines.append("  through the gateway, last hour:")
        for name, hour in sorted(hours.items()):
            lines.append(
                f"    {name:<26} {hour.requests} request{'s' if hour.requests != 1 else ''}, "
                f"{hour.cold} cold ({hour.share:.0%})"
            )
    return lines


def _gateway_json(hours: Mapping[str, GatewayHour]) -> dict[str, Any]:
    return {
        name: {"requests": hour.requests, "cold": hour.cold, "cold_share": hour.share}
        for name, hour in hours.items()
    }


def _lifetimes_json(models: Mapping[str, Lifetime]) -> dict[str, Any]:
    return {
        name: {
            "resident_since": (
                datetime.fromtimestamp(life.resident_since, tz=UTC).isoformat()
                if life.resident_since is not None
                else None
            ),
            "loads": dict(life.loads),
            "evictions": life.evictions,
            "load_failures": dict(life.failures),
            "client_reloads": dict(life.client_reloads),
        }
        for name, life in models.items()
    }


def daemon_json(view: DaemonView) -> dict[str, Any]:
    """``instances``: every instance's models; ``models``: those of the only instance (the
    one a daemon without instances: reports), empty when there are several (the same model
    can be kept by two); ``passes``: of every instance together."""
    figures = view.figures
    if figures is None:
        return {"source": view.source, "available": False, "error": view.error}
    instances = {name: _lifetimes_json(models) for name, models in figures.instances.items()}
    only = next(iter(instances.values())) if len(instances) == 1 else {}
    gateway = {name: _gateway_json(hours) for name, hours in figures.gateway.items()}
    return {
        "source": view.source,
        "available": True,
        "error": None,
        "version": figures.version,
        "started": datetime.fromtimestamp(figures.started, tz=UTC).isoformat(),
        "passes": figures.total_passes,
        "models": only,
        "instances": instances,
        # the last hour through the gateway, per model of the instance it fronts (one
        # gateway per daemon); gateway_instances: the same by instance
        "gateway": next(iter(gateway.values())) if len(gateway) == 1 else {},
        "gateway_instances": gateway,
    }
