"""Every metric the keeper exports (:data:`CATALOG`: name, type, help, labels) and its
samples at one instant, from each Ollama instance's policy, counts and last pass, and the
daemon's own figures. Pure: the exposition format is :mod:`.exposition`'s business.

Every series about an instance carries its name in the ``instance`` label, first ("default"
for a policy without ``instances:``); the daemon's own (policy reloads, build, start time)
carry none.

Names follow Prometheus' conventions: the ``sentinel_keeper_`` prefix, base units (seconds,
bytes), ``_total`` on counters (added by the exposition), ``_info`` for labels worth 1.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as default_field
from typing import Literal

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.decide.capacity import expected_footprint
from sentinel_keeper.decide.causes import LoadCause
from sentinel_keeper.decide.plan import FindingKind
from sentinel_keeper.metrics.counts import FAILURE_KINDS, Counts
from sentinel_keeper.observe.observation import Observation
from sentinel_keeper.policy import Policy
from sentinel_keeper.values.figures import NO_MODEL, Cause, Degraded, GatewayFigures, Histogram

Kind = Literal["gauge", "counter", "histogram"]
Labels = tuple[str, ...]
PREFIX = "sentinel_keeper_"
_Put = Callable[["Spec", Labels, float], None]
_Observe = Callable[["Spec", Labels, Histogram], None]


@dataclass(frozen=True)
class Spec:
    name: str  # without the _total of a counter
    kind: Kind
    help: str
    labels: Labels = ()

    @property
    def series_names(self) -> tuple[str, ...]:
        """The names its samples carry in the text format."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.name,)


# The Ollama instance a series is about (the policy's instances[].name; "default" without
# instances:), first in every list that has it. Prometheus renames it exported_instance when
# it scrapes with honor_labels: false (its default): its own instance is the scrape target.
INSTANCE = "instance"
MODEL: Labels = (INSTANCE, "model", "tier")
# with its UUID ("" when NVML cannot say): the index can change across reboots
GPU: Labels = (INSTANCE, "gpu", "name", "uuid")


def _spec(name: str, kind: Kind, text: str, labels: Labels = ()) -> Spec:
    return Spec(PREFIX + name, kind, text, labels)


RESIDENT = _spec("model_resident", "gauge", "1 while the policy model is in Ollama's memory", MODEL)
RESIDENT_SECONDS = _spec(
    "model_resident_seconds", "counter", "Seconds the policy model has been resident", MODEL
)
RESIDENT_SINCE = _spec(
    "model_resident_since_timestamp_seconds",
    "gauge",
    "When the policy model's current stretch of residency began (Unix time)",
    MODEL,
)
LOADS = _spec(
    "model_loads",
    "counter",
    "Loads (re-warms) of the policy model by the keeper, by reason",
    (*MODEL, "reason"),
)
LOAD_DURATION = _spec(
    "model_load_duration_seconds",
    "histogram",
    "Load time of the keeper's loads: Ollama's load_duration when it reports one, else the "
    "load request's wall time",
    MODEL,
)
EVICTIONS = _spec(
    "model_evictions",
    "counter",
    "Times the policy model was seen gone from Ollama's memory as another model was loaded",
    MODEL,
)
LOAD_FAILURES = _spec(
    "model_load_failures",
    "counter",
    "Failed loads of the policy model, by kind (ollama_error, timeout, unreachable, does_not_fit)",
    (*MODEL, "kind"),
)
EXPECTED_FOOTPRINT = _spec(
    "model_expected_footprint_bytes",
    "gauge",
    "Memory the planner expects the policy model to take once loaded",
    MODEL,
)
FOOTPRINT = _spec(
    "model_footprint_bytes",
    "gauge",
    "Memory the policy model took when last seen loaded (GPU and CPU)",
    MODEL,
)
VRAM = _spec("model_vram_bytes", "gauge", "GPU memory of the resident policy model", MODEL)
CONTEXT = _spec(
    "model_context_length", "gauge", "Context length (num_ctx) of the resident model", MODEL
)
SPILLED = _spec(
    "model_spilled", "gauge", "1 while the resident policy model is partly in CPU memory", MODEL
)
CLIENT_RELOADS = _spec(
    "client_reloads",
    "counter",
    "Times another client was seen to reload a policy model with another num_ctx",
    (INSTANCE, "model", "num_ctx"),
)
BACKOFFS = _spec(
    "model_reload_backoffs",
    "counter",
    "Times the keeper stopped reloading the policy model back after clients kept reloading it "
    "with another num_ctx",
    MODEL,
)
HELD = _spec(
    "model_reload_held",
    "gauge",
    "1 while the keeper leaves the policy model as its clients load it (in use by a client "
    "with another num_ctx, or the reload back-off)",
    MODEL,
)
FOREIGN = _spec(
    "foreign_model_loaded",
    "gauge",
    "1 for each loaded model that is not in the policy",
    (INSTANCE, "model"),
)
FOREIGN_SIZE = _spec(
    "foreign_model_size_bytes",
    "gauge",
    "Memory taken by each loaded model that is not in the policy",
    (INSTANCE, "model"),
)
OLLAMA_UP = _spec("ollama_up", "gauge", "1 when the last pass could observe Ollama", (INSTANCE,))
OLLAMA_INFO = _spec(
    "ollama_info", "gauge", "Ollama's version, as last observed", (INSTANCE, "version")
)
POLICY_INFO = _spec(
    "policy_info",
    "gauge",
    "Which policy file and Ollama the instance's figures are about, as a fingerprint (not "
    "the path nor the address): what `status` checks before it shows them as its own",
    (INSTANCE, "fingerprint"),
)
STALLED = _spec(
    "ollama_loads_stalled",
    "gauge",
    "1 while a load of the keeper's has not returned within load_timeout and /api/ps answers",
    (INSTANCE,),
)
OUTAGES = _spec(
    "ollama_outages", "counter", "Stretches of passes in which Ollama did not answer", (INSTANCE,)
)
OUTAGE_SECONDS = _spec(
    "ollama_outage_seconds", "counter", "Seconds during which Ollama did not answer", (INSTANCE,)
)
RESTARTS = _spec(
    "ollama_restarts",
    "counter",
    "Restarts of Ollama observed: a new version, or every model gone across an outage or at once",
    (INSTANCE,),
)
GPU_TOTAL = _spec(
    "gpu_memory_total_bytes", "gauge", "Memory of the instance's GPU, as NVML reports it", GPU
)
GPU_USED = _spec("gpu_memory_used_bytes", "gauge", "GPU memory in use (NVML)", GPU)
GPU_FREE = _spec("gpu_memory_free_bytes", "gauge", "GPU memory free (NVML)", GPU)
NVML = _spec(
    "nvml_available",
    "gauge",
    "1 when NVML reported the instance's GPU memory at the last pass",
    (INSTANCE,),
)
PASSES = _spec("passes", "counter", "Reconcile passes run", (INSTANCE,))
PASS_DURATION = _spec(
    "pass_duration_seconds", "histogram", "Duration of the reconcile passes", (INSTANCE,)
)
LAST_PASS = _spec(
    "last_pass_timestamp_seconds",
    "gauge",
    "When the last reconcile pass ended (Unix time)",
    (INSTANCE,),
)
RELOADS = _spec(
    "policy_reloads",
    "counter",
    "Policy reloads (SIGHUP), by result: applied, unchanged, rejected",
    ("result",),
)
GATEWAY_UP = _spec("gateway_up", "gauge", "1 while the gateway listens", (INSTANCE,))
GATEWAY_DEGRADED = _spec(
    "gateway_degraded",
    "gauge",
    "1 while the gateway runs without some of its rules, by why: view_missing, view_stale, "
    "view_unreadable, view_other_instance (the keeper's look at Ollama: foreign-model rules "
    "off), policy_last_good, policy_none",
    (INSTANCE, "why"),
)
GATEWAY_REQUESTS = _spec(
    "gateway_requests",
    "counter",
    "Requests through the gateway, by model (empty: none named), endpoint and status code",
    (INSTANCE, "model", "endpoint", "code"),
)
GATEWAY_COLD = _spec(
    "gateway_cold_requests",
    "counter",
    "Requests through the gateway that waited for a load (Ollama's load_duration), by cause: "
    "not_loaded, other_num_ctx, unknown",
    (INSTANCE, "model", "cause"),
)
GATEWAY_TTFB = _spec(
    "gateway_ttfb_seconds",
    "histogram",
    "Time from a request's arrival at the gateway to the first byte of Ollama's answer",
    (INSTANCE, "model"),
)
GATEWAY_CHANGES = _spec(
    "gateway_changes",
    "counter",
    "Fields of requests the gateway changed (keep_alive, options.num_ctx...), by model",
    (INSTANCE, "model", "field"),
)
ENDPOINT_REQUESTS = _spec(
    "endpoint_requests",
    "counter",
    "Requests to the keeper's endpoint, by path (/metrics, /ready, /live, /, other) and status "
    "code",
    ("path", "code"),
)
GATEWAY_RELOADS = _spec(
    "gateway_client_reloads",
    "counter",
    "Requests through the gateway passed as they came although they reload a pinned model: "
    "they need a larger num_ctx than the policy's",
    (INSTANCE, "model", "num_ctx"),
)
GATEWAY_COLD_SHARE = _spec(
    "gateway_cold_share",
    "gauge",
    "Share of the model's requests through the gateway in the last hour that waited for a load",
    (INSTANCE, "model"),
)
GATEWAY_RECENT = _spec(
    "gateway_recent_requests",
    "gauge",
    "The model's requests through the gateway in the last hour",
    (INSTANCE, "model"),
)
GATEWAY_RECENT_COLD = _spec(
    "gateway_recent_cold_requests",
    "gauge",
    "The model's requests through the gateway in the last hour that waited for a load",
    (INSTANCE, "model"),
)
BUILD = _spec("build_info", "gauge", "The keeper's version and Python's", ("version", "python"))
START = _spec("start_time_seconds", "gauge", "When the daemon started (Unix time)")

CATALOG: tuple[Spec, ...] = (
    RESIDENT, RESIDENT_SECONDS, RESIDENT_SINCE, LOADS, LOAD_DURATION, EVICTIONS, LOAD_FAILURES,
    EXPECTED_FOOTPRINT, FOOTPRINT, VRAM, CONTEXT, SPILLED, CLIENT_RELOADS, BACKOFFS, HELD,
    FOREIGN, FOREIGN_SIZE,
    OLLAMA_UP, OLLAMA_INFO, POLICY_INFO, STALLED, OUTAGES, OUTAGE_SECONDS, RESTARTS,
    GPU_TOTAL, GPU_USED, GPU_FREE, NVML,
    PASSES, PASS_DURATION, LAST_PASS, RELOADS, BUILD, START, ENDPOINT_REQUESTS,
    GATEWAY_UP, GATEWAY_DEGRADED, GATEWAY_REQUESTS, GATEWAY_COLD, GATEWAY_TTFB, GATEWAY_CHANGES,
    GATEWAY_RELOADS,
    GATEWAY_COLD_SHARE, GATEWAY_RECENT, GATEWAY_RECENT_COLD,
)  # fmt: skip


def policy_path(source: str) -> str:
    """A policy file as the daemon and `status` both name it: its real path."""
    return os.path.realpath(source) if source and not source.startswith("<") else source


def policy_fingerprint(part: Policy) -> str:
    """One instance of a policy (a part of :meth:`Policy.split`): its file's real path, the
    instance's name and its Ollama URL, hashed, so that the endpoint tells `status` whose
    figures it serves without publishing the path or Ollama's address."""
    text = "\n".join((policy_path(part.source), part.instance, part.ollama.url))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(frozen=True)
class Family:
    """One metric's samples: (label values, value) for gauges and counters, (label values,
    histogram) for histograms."""

    spec: Spec
    samples: tuple[tuple[Labels, float], ...] = ()
    histograms: tuple[tuple[Labels, Histogram], ...] = ()


@dataclass(frozen=True)
class InstanceView:
    """One Ollama instance's part of the figures: its single-instance policy
    (:meth:`Policy.split`), what the daemon counted of it, its last pass."""

    name: str  # the instance's name: the part's ``instance``
    policy: Policy
    counts: Counts
    report: PassReport | None  # its last pass; None before the first ends


@dataclass(frozen=True)
class MetricsView:
    """What the figures are made of at one instant: every instance's, and the daemon's."""

    instances: tuple[InstanceView, ...]
    reloads: Mapping[str, int]  # policy reloads by ReloadResult value (daemon-wide)
    version: str
    python: str
    started_unix: float
    gateway: GatewayFigures | None = None  # None: the gateway is off (no samples)
    # requests to the endpoint so far, by (path, status code)
    requests: Mapping[tuple[str, int], int] = default_field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [instance.name for instance in self.instances]
        if len(names) != len(set(names)):
            raise ValueError(f"instance names repeat: {names}")

    @classmethod
    def single(
        cls,
        policy: Policy,
        counts: Counts,
        report: PassReport | None,
        *,
        version: str,
        python: str,
        started_unix: float,
        reloads: Mapping[str, int] | None = None,
    ) -> MetricsView:
        """The view of a daemon that keeps one instance (the policy's own)."""
        return cls(
            (InstanceView(policy.instance, policy, counts, report),),
            reloads=reloads or {},
            version=version,
            python=python,
            started_unix=started_unix,
        )


def families(view: MetricsView, *, mono: float) -> tuple[Family, ...]:
    """Every family of :data:`CATALOG`, in its order, at monotonic time ``mono``."""
    out: dict[str, list[tuple[Labels, float]]] = {spec.name: [] for spec in CATALOG}
    histograms: dict[str, list[tuple[Labels, Histogram]]] = {
        spec.name: [] for spec in CATALOG if spec.kind == "histogram"
    }

    def put(spec: Spec, labels: Labels, value: float) -> None:
        out[spec.name].append((labels, float(value)))

    def observed(spec: Spec, labels: Labels, histogram: Histogram) -> None:
        histograms[spec.name].append((labels, histogram))

    for instance in view.instances:
        _instance(instance, mono, put, observed)
    for result, number in sorted(view.reloads.items()):
        put(RELOADS, (result,), number)
    put(BUILD, (view.version, view.python), 1)
    put(START, (), view.started_unix)
    for (path, code), number in sorted(view.requests.items()):
        put(ENDPOINT_REQUESTS, (path, str(code)), number)
    if view.gateway is not None:
        _gateway(view.gateway, put, observed)
    return tuple(
        Family(spec, tuple(out[spec.name]), tuple(histograms.get(spec.name, ())))
        for spec in CATALOG
    )


def _instance(view: InstanceView, mono: float, put: _Put, observed: _Observe) -> None:
    """The samples of one instance, each labelled with its name first."""
    name = view.name
    counts = view.counts
    report = view.report
    latest = report.latest if report is not None else None
    reachable = report is not None and report.reachable

    for model, entry in sorted(counts.models.items()):
        labels = (name, model, entry.tier)
        put(RESIDENT_SECONDS, labels, entry.resident_seconds_at(mono))
        if entry.resident_since_unix is not None:
            put(RESIDENT_SINCE, labels, entry.resident_since_unix)
        # every reason and kind from zero, so that increase() sees the first of each
        for reason in sorted({*entry.loads, *(cause.value for cause in LoadCause)}):
            put(LOADS, (*labels, reason), entry.loads.get(reason, 0))
        for kind in sorted({*entry.failures, *FAILURE_KINDS}):
            put(LOAD_FAILURES, (*labels, kind), entry.failures.get(kind, 0))
        put(EVICTIONS, labels, entry.evictions)
        observed(LOAD_DURATION, labels, entry.load_seconds)
        for ctx, number in sorted(entry.client_reloads.items()):
            put(CLIENT_RELOADS, (name, model, str(ctx)), number)
        put(BACKOFFS, labels, entry.backoffs)

    if report is not None and reachable:
        on_hold = {
            f.model
            for f in report.plan.findings
            if f.kind in (FindingKind.RELOAD_HELD, FindingKind.CLIENT_BUSY)
            and f.data.get("on_hold") == 1
        }
        for policy_model in view.policy.models:
            labels = (name, policy_model.name, policy_model.tier)
            put(HELD, labels, 1 if policy_model.name in on_hold else 0)
    if latest is not None:
        _model_gauges(view, latest, reachable, put)
        if reachable:
            for loaded in latest.loaded:
                if view.policy.model(loaded.name) is None:
                    put(FOREIGN, (name, loaded.name), 1)
                    put(FOREIGN_SIZE, (name, loaded.name), loaded.size)
        gpu = latest.gpu
        if gpu.known:
            for g in gpu.gpus:
                gpu_labels = (name, str(g.index), g.name, g.uuid or "")
                put(GPU_TOTAL, gpu_labels, g.total)
                put(GPU_USED, gpu_labels, g.used)
                put(GPU_FREE, gpu_labels, g.free)
        put(NVML, (name,), 1 if gpu.known else 0)
    put(OLLAMA_UP, (name,), 1 if reachable else 0)
    put(POLICY_INFO, (name, policy_fingerprint(view.policy)), 1)
    put(STALLED, (name,), 1 if report is not None and report.stall is not None else 0)
    if counts.ollama_version is not None:
        put(OLLAMA_INFO, (name, counts.ollama_version), 1)
    put(OUTAGES, (name,), counts.outages)
    put(OUTAGE_SECONDS, (name,), counts.outage_seconds_at(mono))
    put(RESTARTS, (name,), counts.restarts)
    put(PASSES, (name,), counts.passes)
    observed(PASS_DURATION, (name,), counts.pass_seconds)
    if counts.last_pass_unix is not None:
        put(LAST_PASS, (name,), counts.last_pass_unix)


def _gateway(figures: GatewayFigures, put: _Put, observed: _Observe) -> None:
    """The gateway's samples; every cause of each model from zero."""
    name = figures.instance
    put(GATEWAY_UP, (name,), 1 if figures.up else 0)
    for why in Degraded.ALL:
        put(GATEWAY_DEGRADED, (name, why), 1 if figures.degraded == why else 0)
    for (model, endpoint, code), number in sorted(figures.requests.items()):
        put(GATEWAY_REQUESTS, (name, model, endpoint, code), number)
    models = sorted({m for m, _, _ in figures.requests if m != NO_MODEL} | set(figures.recent))
    for model in models:
        for cause in Cause.ALL:
            put(GATEWAY_COLD, (name, model, cause), figures.cold.get((model, cause), 0))
    for model, histogram in sorted(figures.ttfb.items()):
        observed(GATEWAY_TTFB, (name, model), histogram)
    for (model, field), number in sorted(figures.changes.items()):
        put(GATEWAY_CHANGES, (name, model, field), number)
    for (model, ctx), number in sorted(figures.reloads.items()):
        put(GATEWAY_RELOADS, (name, model, ctx), number)
    for model, recent in sorted(figures.recent.items()):
        put(GATEWAY_COLD_SHARE, (name, model), recent.share)
        put(GATEWAY_RECENT, (name, model), recent.requests)
        put(GATEWAY_RECENT_COLD, (name, model), recent.cold)


def _model_gauges(view: InstanceView, latest: Observation, reachable: bool, put: _Put) -> None:
    name, policy, report = view.name, view.policy, view.report
    unconfirmed = report.unconfirmed if report is not None else frozenset()
    listed = latest.loaded_by_name() if reachable else {}
    listed = {n: m for n, m in listed.items() if n not in unconfirmed}
    for model in policy.models:
        labels = (name, model.name, model.tier)
        shown = listed.get(model.name)
        put(RESIDENT, labels, 1 if shown is not None else 0)
        expected = expected_footprint(model, policy, latest)
        if expected is not None:
            put(EXPECTED_FOOTPRINT, labels, expected)
        remembered = latest.footprints.get(model.name)
        if shown is not None:
            put(FOOTPRINT, labels, shown.size)
            put(VRAM, labels, shown.size_vram)
            put(SPILLED, labels, 1 if shown.spilled else 0)
            if shown.context_length is not None:
                put(CONTEXT, labels, shown.context_length)
        elif remembered is not None:
            put(FOOTPRINT, labels, remembered.size)


def series_names(specs: Iterable[Spec] = CATALOG) -> frozenset[str]:
    """Every sample name the keeper can export (what a dashboard or a rule may query)."""
    return frozenset(name for spec in specs for name in spec.series_names)
