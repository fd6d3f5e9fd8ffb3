"""What `status` reads back from the running daemon's metrics endpoint: since when each
model of each Ollama instance is resident, and how many times the daemon loaded it and why,
over its lifetime. Pure: from the samples of a scraped page
(:func:`sentinel_keeper.metrics.exposition.parse`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sentinel_keeper.metrics import families as f
from sentinel_keeper.policy.schema import DEFAULT_INSTANCE


@dataclass(frozen=True)
class Sample:
    """One line of a page in the text format."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Lifetime:
    """One model's figures over the daemon's life."""

    resident_since: float | None = None  # Unix time; None: not resident
    loads: Mapping[str, int] = field(default_factory=dict)  # reason -> loads
    evictions: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)  # kind -> failed loads
    client_reloads: Mapping[str, int] = field(default_factory=dict)  # num_ctx -> times

    @property
    def load_count(self) -> int:
        return sum(self.loads.values())


@dataclass(frozen=True)
class GatewayHour:
    """One model's requests through the gateway in the last hour."""

    requests: int
    cold: int

    @property
    def share(self) -> float:
        return self.cold / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class DaemonFigures:
    version: str
    started: float  # Unix time
    passes: Mapping[str, int]  # instance -> passes
    instances: Mapping[str, Mapping[str, Lifetime]]  # instance -> model -> lifetime
    # instance -> model -> its last hour through the gateway; empty: no gateway
    gateway: Mapping[str, Mapping[str, GatewayHour]] = field(default_factory=dict)
    # instance -> the fingerprint of its policy file and Ollama (families.policy_fingerprint);
    # empty: a daemon too old to say whose figures they are
    policies: Mapping[str, str] = field(default_factory=dict)

    def gateway_of(self, instance: str) -> Mapping[str, GatewayHour]:
        return self.gateway.get(instance, {})

    @property
    def total_passes(self) -> int:
        return sum(self.passes.values())

    def models_of(self, instance: str) -> Mapping[str, Lifetime]:
        """The models of ``instance`` the daemon reported; none when it reported none."""
        return self.instances.get(instance, {})

    def passes_of(self, instance: str) -> int:
        return self.passes.get(instance, 0)


def _instance(sample: Sample) -> str:
    """The instance a sample is about: a page of a daemon from before instances has no
    label, and is about the only one, "default"."""
    return sample.labels.get(f.INSTANCE) or DEFAULT_INSTANCE


def read_figures(samples: Iterable[Sample]) -> DaemonFigures:
    """The figures of a sentinel-keeper page. ValueError when the page is not one (another
    program listens there)."""
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    build = by_name.get(f.BUILD.name)
    start = by_name.get(f.START.name)
    if not build or not start:
        raise ValueError("the page has no sentinel_keeper_build_info: not sentinel-keeper's")

    def key(sample: Sample) -> tuple[str, str]:
        return _instance(sample), sample.labels.get("model", "")

    def per_model(spec: f.Spec, label: str) -> dict[tuple[str, str], dict[str, int]]:
        out: dict[tuple[str, str], dict[str, int]] = {}
        for sample in by_name.get(spec.series_names[0], ()):
            model = out.setdefault(key(sample), {})
            if sample.value:  # the page lists every reason and kind, most at zero
                model[sample.labels.get(label, "")] = int(sample.value)
        return out

    since = {key(s): s.value for s in by_name.get(f.RESIDENT_SINCE.name, ())}
    evictions = {key(s): int(s.value) for s in by_name.get(f.EVICTIONS.series_names[0], ())}
    loads = per_model(f.LOADS, "reason")
    failures = per_model(f.LOAD_FAILURES, "kind")
    reloads = per_model(f.CLIENT_RELOADS, "num_ctx")
    keys = set(since) | set(evictions) | set(loads) | set(failures) | set(reloads)
    instances: dict[str, dict[str, Lifetime]] = {}
    for instance, name in sorted(keys):
        instances.setdefault(instance, {})[name] = Lifetime(
            resident_since=since.get((instance, name)),
            loads=loads.get((instance, name), {}),
            evictions=evictions.get((instance, name), 0),
            failures=failures.get((instance, name), {}),
            client_reloads=reloads.get((instance, name), {}),
        )
    passes: dict[str, int] = {}
    for sample in by_name.get(f.PASSES.series_names[0], ()):
        passes[_instance(sample)] = passes.get(_instance(sample), 0) + int(sample.value)
    recent = {key(s): int(s.value) for s in by_name.get(f.GATEWAY_RECENT.name, ())}
    recent_cold = {key(s): int(s.value) for s in by_name.get(f.GATEWAY_RECENT_COLD.name, ())}
    gateway: dict[str, dict[str, GatewayHour]] = {}
    for (instance, name), number in sorted(recent.items()):
        hour = GatewayHour(number, recent_cold.get((instance, name), 0))
        gateway.setdefault(instance, {})[name] = hour
    policies = {
        _instance(s): s.labels.get("fingerprint", "") for s in by_name.get(f.POLICY_INFO.name, ())
    }
    return DaemonFigures(
        version=build[0].labels.get("version", "?"),
        started=start[0].value,
        passes=passes,
        instances=instances,
        gateway=gateway,
        policies=policies,
    )
