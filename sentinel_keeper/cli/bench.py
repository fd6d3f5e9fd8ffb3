"""`sentinel-keeper bench`: how fast the first token comes from each model, cold and warm,
measured against the live Ollama, each model put back in its policy state afterwards.

For each model: the cold time to first token (unload it, then ask for one token), Ollama's
own load_duration for that load, the warm time to first byte over ``runs`` requests of up to
``tokens`` tokens, and the tokens per second Ollama reports (eval_count / eval_duration).
Embedding-only models are timed through /api/embed (no tokens per second).

Unloading a model that someone else is using would make their next request cold, so a model
that /api/ps shows loaded is left alone (refused, unless ``force``) when it does not look
like sentinel-keeper's own: it is not in the policy, or it is loaded with another num_ctx
than the policy's, or a pinned model's timer is not forever (a client sent its own
keep_alive). /api/ps cannot tell whether a request is running right now; Ollama lets one
finish before it unloads the model.

Afterwards a pinned model, and an extra that was loaded before, is loaded again with the
policy's options and keep_alive; an extra or another model that was not loaded before is
unloaded; another model that was loaded before (``force``) is loaded again with the context
length and the time left that /api/ps showed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from sentinel_keeper.act.reconcile import OllamaApi
from sentinel_keeper.decide.capacity import expected_context_length
from sentinel_keeper.errors import ModelNotFound, OllamaError, OllamaUnreachable
from sentinel_keeper.observe.observation import Endpoint, LoadedModel, ModelDetails
from sentinel_keeper.observe.ollama_wire import TimedAnswer
from sentinel_keeper.policy import ModelPolicy, Policy
from sentinel_keeper.values.names import normalize_model_name
from sentinel_keeper.values.quantities import format_duration

BENCH_PROMPT = "Why is the sky blue? Answer in one short paragraph."
EMBED_TEXT = "The quick brown fox jumps over the lazy dog."
# A model the policy does not name is benched with this keep_alive (then restored).
OTHER_KEEP_ALIVE = 300.0
UNLOAD_WAIT_SECONDS = 30.0  # how long an unloaded model may take to leave /api/ps
UNLOAD_POLL_SECONDS = 0.05

Status = Literal["ok", "refused", "failed"]


class BenchApi(OllamaApi, Protocol):
    """What bench needs from Ollama besides a pass's calls (implemented by
    sentinel_keeper.observe.ollama.OllamaClient): timed requests that generate."""

    def generate_timed(
        self,
        model: str,
        prompt: str,
        *,
        options: Mapping[str, int | bool],
        keep_alive: float,
        num_predict: int,
    ) -> TimedAnswer: ...
    def embed_timed(
        self,
        model: str,
        text: str,
        *,
        options: Mapping[str, int | bool],
        keep_alive: float,
    ) -> TimedAnswer: ...


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class ModelBench:
    """One model's figures, or why there are none."""

    name: str
    tier: str  # "pinned", "extra", or "-" when the policy does not name it
    status: Status
    message: str | None = None
    endpoint: Endpoint | None = None
    cold: TimedAnswer | None = None
    warm: tuple[TimedAnswer, ...] = ()
    restored: str | None = None

    @property
    def cold_ttft(self) -> float | None:
        return None if self.cold is None else self.cold.ttfb

    @property
    def load_duration(self) -> float | None:
        return None if self.cold is None else self.cold.load_duration

    @property
    def warm_ttfb(self) -> tuple[float, ...]:
        return tuple(a.ttfb for a in self.warm)

    @property
    def warm_p50(self) -> float | None:
        return percentile(self.warm_ttfb, 0.5)

    @property
    def warm_p95(self) -> float | None:
        return percentile(self.warm_ttfb, 0.95)

    @property
    def tokens_per_second(self) -> float | None:
        """The median over the warm runs."""
        rates = [r for r in (a.tokens_per_second for a in self.warm) if r is not None]
        return percentile(rates, 0.5)

    @property
    def spread(self) -> float | None:
        """Cold time to first token over the warm median: what a cold hit costs."""
        cold, warm = self.cold_ttft, self.warm_p50
        if cold is None or not warm:
            return None
        return cold / warm


@dataclass(frozen=True)
class BenchReport:
    url: str
    version: str
    runs: int
    tokens: int
    models: tuple[ModelBench, ...]

    @property
    def ok(self) -> bool:
        return all(m.status == "ok" for m in self.models)


def in_use(
    model: ModelPolicy | None,
    loaded: LoadedModel,
    details: ModelDetails | None,
    now: datetime,
) -> str | None:
    """Why a loaded model looks like another client's (bench does not unload it without
    ``force``), or None when it is in the state sentinel-keeper keeps it in."""
    if model is None:
        return "it is loaded and the policy does not name it: another client loaded it"
    wanted = expected_context_length(model, details)
    if wanted is not None and loaded.context_length not in (None, wanted):
        return (
            f"it is loaded with num_ctx {loaded.context_length}, the policy says {wanted}: "
            "a client loaded it"
        )
    forever_wanted = model.effective_keep_alive < 0
    if forever_wanted and loaded.expires_at is not None and not loaded.is_forever(now):
        remaining = loaded.remaining(now)
        left = (
            f"expires in {format_duration(max(remaining.total_seconds(), 0))}"
            if remaining is not None
            else "not forever"
        )
        return f"its keep_alive was set by a client ({left}): a client is using it"
    return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Bencher:
    def __init__(
        self,
        client: BenchApi,
        *,
        runs: int,
        tokens: int,
        force: bool,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
    ) -> None:
        self.client = client
        self.runs = runs
        self.tokens = tokens
        self.force = force
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic

    def ask(
        self,
        name: str,
        endpoint: Endpoint,
        options: Mapping[str, int | bool],
        keep_alive: float,
        num_predict: int,
    ) -> TimedAnswer:
        if endpoint == "embed":
            return self.client.embed_timed(name, EMBED_TEXT, options=options, keep_alive=keep_alive)
        return self.client.generate_timed(
            name, BENCH_PROMPT, options=options, keep_alive=keep_alive, num_predict=num_predict
        )

    def loaded(self, name: str) -> LoadedModel | None:
        return next((m for m in self.client.ps() if m.name == name), None)

    def unload(self, name: str) -> None:
        """Unload and wait until /api/ps no longer shows it (Ollama lets running requests
        finish first)."""
        self.client.unload(name)
        deadline = self.monotonic() + UNLOAD_WAIT_SECONDS
        while self.loaded(name) is not None:
            if self.monotonic() > deadline:
                raise OllamaError(
                    f"{name} is still loaded {UNLOAD_WAIT_SECONDS:g} s after the unload request"
                )
            self.sleep(UNLOAD_POLL_SECONDS)

    def restore(
        self,
        name: str,
        policy_model: ModelPolicy | None,
        before: LoadedModel | None,
        endpoint: Endpoint,
    ) -> str:
        if policy_model is not None and (policy_model.pinned or before is not None):
            self.client.load(
                name,
                options=policy_model.options.as_request(),
                keep_alive=policy_model.effective_keep_alive,
                endpoint=endpoint,
            )
            return "resident (policy)"
        if before is None:
            self.client.unload(name)
            return "unloaded (as before)"
        now = self.clock()
        remaining = before.remaining(now)
        keep_alive = (
            -1.0
            if remaining is None or before.is_forever(now)
            else max(remaining.total_seconds(), 1.0)
        )
        options: dict[str, int | bool] = {}
        if before.context_length:
            options["num_ctx"] = before.context_length
        self.client.load(name, options=options, keep_alive=keep_alive, endpoint=endpoint)
        return "loaded again (as before)"

    def bench(self, name: str, policy_model: ModelPolicy | None) -> ModelBench:
        tier = policy_model.tier if policy_model is not None else "-"
        try:
            details = self.client.show(name)
        except ModelNotFound:
            return ModelBench(name, tier, "failed", "not installed in Ollama")
        endpoint: Endpoint = "embed" if details.embedding_only else "generate"
        before = self.loaded(name)
        if before is not None:
            reason = in_use(policy_model, before, details, self.clock())
            if reason is not None and not self.force:
                return ModelBench(
                    name,
                    tier,
                    "refused",
                    f"not unloaded: {reason} (--force unloads it anyway)",
                    endpoint,
                )
        options = policy_model.options.as_request() if policy_model is not None else {}
        keep_alive = (
            policy_model.effective_keep_alive if policy_model is not None else OTHER_KEEP_ALIVE
        )
        cold: TimedAnswer | None = None
        warm: list[TimedAnswer] = []
        error: str | None = None
        try:
            if before is not None:
                self.unload(name)
            cold = self.ask(name, endpoint, options, keep_alive, 1)
            for _ in range(self.runs):
                warm.append(self.ask(name, endpoint, options, keep_alive, self.tokens))
        except OllamaUnreachable:
            raise
        except OllamaError as exc:
            error = str(exc)
        try:
            restored = self.restore(name, policy_model, before, endpoint)
        except OllamaUnreachable:
            raise
        except OllamaError as exc:
            restored = "NOT restored"
            error = f"{error + '; ' if error else ''}restoring it failed: {exc}"
        return ModelBench(
            name,
            tier,
            "failed" if error is not None else "ok",
            error,
            endpoint,
            cold,
            tuple(warm),
            restored,
        )


def bench_targets(
    policy: Policy, names: Sequence[str] | None
) -> list[tuple[str, ModelPolicy | None]]:
    """The models to bench: ``names`` (normalised, in order, without repeats), else every
    policy model."""
    if not names:
        return [(m.name, m) for m in policy.models]
    seen: dict[str, ModelPolicy | None] = {}
    for raw in names:
        name = normalize_model_name(raw)
        seen.setdefault(name, policy.model(name))
    return list(seen.items())


def run_bench(
    policy: Policy,
    client: BenchApi,
    names: Sequence[str] | None = None,
    *,
    runs: int = 5,
    tokens: int = 32,
    force: bool = False,
    on_model: Callable[[str], None] | None = None,
    clock: Callable[[], datetime] = _utcnow,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> BenchReport:
    """Bench each model in turn. Raises OllamaUnreachable when Ollama cannot be reached (at
    the start or in the middle: a model is then left as the bench had it)."""
    if runs < 1 or tokens < 1:
        raise ValueError("runs and tokens must be at least 1")
    version = client.version()
    bencher = _Bencher(
        client,
        runs=runs,
        tokens=tokens,
        force=force,
        clock=clock,
        sleep=sleep,
        monotonic=monotonic,
    )
    results = []
    for name, policy_model in bench_targets(policy, names):
        if on_model is not None:
            on_model(name)
        results.append(bencher.bench(name, policy_model))
    return BenchReport(policy.ollama.url, version, runs, tokens, tuple(results))


# -- rendering ----------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def bench_table(report: BenchReport) -> list[str]:
    """The bench's table: one line per model, the cold and warm times side by side."""
    kind = "1 token" if report.tokens == 1 else f"up to {report.tokens} tokens"
    lines = [
        f"ollama {report.version} at {report.url}; cold: unloaded, then 1 token; "
        f"warm: {report.runs} run{'s' if report.runs != 1 else ''} of {kind}",
        f"{'MODEL':<28} {'COLD TTFT':>11} {'LOAD':>10} {'WARM p50':>9} {'WARM p95':>9} "
        f"{'COLD/WARM':>9} {'TOK/S':>7}  AFTER",
    ]
    for m in report.models:
        if m.status == "refused" or (m.status == "failed" and m.cold is None and not m.warm):
            lines.append(f"{m.name:<28} {m.status.upper()}: {m.message}")
            continue
        spread = "-" if m.spread is None else f"{m.spread:.1f}x"
        rate = "-" if m.tokens_per_second is None else f"{m.tokens_per_second:.1f}"
        lines.append(
            f"{m.name:<28} {_ms(m.cold_ttft):>11} {_ms(m.load_duration):>10} "
            f"{_ms(m.warm_p50):>9} {_ms(m.warm_p95):>9} {spread:>9} {rate:>7}  {m.restored or '-'}"
        )
        if m.status == "failed":
            lines.append(f"{'':<28} FAILED: {m.message}")
    return lines


def _json_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def bench_json(report: BenchReport) -> dict[str, Any]:
    return {
        "ollama": {"url": report.url, "version": report.version},
        "runs": report.runs,
        "tokens": report.tokens,
        "ok": report.ok,
        "models": [
            {
                "name": m.name,
                "tier": None if m.tier == "-" else m.tier,
                "status": m.status,
                "message": m.message,
                "endpoint": m.endpoint,
                "cold_ttft_ms": _json_ms(m.cold_ttft),
                "load_duration_ms": _json_ms(m.load_duration),
                "warm_ttfb_ms": [_json_ms(s) for s in m.warm_ttfb],
                "warm_p50_ms": _json_ms(m.warm_p50),
                "warm_p95_ms": _json_ms(m.warm_p95),
                "cold_over_warm": None if m.spread is None else round(m.spread, 2),
                "tokens_per_second": None
                if m.tokens_per_second is None
                else round(m.tokens_per_second, 1),
                "restored": m.restored,
            }
            for m in report.models
        ],
    }
