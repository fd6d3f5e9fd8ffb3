"""Value types the gateway and the keeper's metrics share: a :class:`Histogram`, and the
:class:`GatewayFigures` the gateway counts and the keeper publishes, with their labels. Pure,
and importing nothing of the package, so that neither the gateway nor the metrics imports the
other's code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

NO_MODEL = ""  # the model label of requests that name none (/api/tags, /api/ps...)


@dataclass(frozen=True)
class Histogram:
    """Observations in fixed buckets: ``counts[i]`` holds those <= ``bounds[i]`` and above
    the bound before; the last holds those above every bound."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...] = ()
    total: float = 0.0

    def observe(self, value: float) -> Histogram:
        counts = list(self.counts or (0,) * (len(self.bounds) + 1))
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), -1)
        counts[index] += 1
        return replace(self, counts=tuple(counts), total=self.total + value)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> tuple[tuple[float, int], ...]:
        """(upper bound, observations <= it), ending with (inf, all)."""
        counts = self.counts or (0,) * (len(self.bounds) + 1)
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            out.append((bound, running))
        return tuple(out)


class Cause:
    NOT_LOADED = "not_loaded"
    OTHER_NUM_CTX = "other_num_ctx"
    UNKNOWN = "unknown"
    ALL = (NOT_LOADED, OTHER_NUM_CTX, UNKNOWN)


class Degraded:
    """Why the gateway runs without some of its rules (``gateway_degraded why=...``)."""

    NO_VIEW = "view_missing"  # the keeper never wrote one (or it was removed)
    STALE = "view_stale"  # older than gateway.view_max_age: the keeper is gone or stuck
    UNREADABLE = "view_unreadable"
    OTHER_INSTANCE = "view_other_instance"  # the keeper fronts another instance
    POLICY_COPY = "policy_last_good"  # the policy file is invalid: the last good copy rules
    NO_POLICY = "policy_none"  # no valid policy ever: everything forwarded as it came
    ALL = (NO_VIEW, STALE, UNREADABLE, OTHER_INSTANCE, POLICY_COPY, NO_POLICY)


@dataclass(frozen=True)
class Recent:
    """One model's requests of the last hour."""

    requests: int = 0
    cold: int = 0

    @property
    def share(self) -> float:
        return self.cold / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class GatewayFigures:
    """What the gateway counted since the daemon started it, at one instant."""

    instance: str
    up: bool
    requests: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # model, path, code
    cold: Mapping[tuple[str, str], int] = field(default_factory=dict)  # model, cause
    ttfb: Mapping[str, Histogram] = field(default_factory=dict)  # model
    changes: Mapping[tuple[str, str], int] = field(default_factory=dict)  # model, field
    recent: Mapping[str, Recent] = field(default_factory=dict)  # model: the last hour
    # requests that reload a pinned model with a larger num_ctx: model, num_ctx
    reloads: Mapping[tuple[str, str], int] = field(default_factory=dict)
    degraded: str | None = None  # why some rules are off (a Degraded reason); None: none
