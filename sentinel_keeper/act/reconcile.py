"""One reconcile pass: observe (Ollama /api/ps, NVML) -> plan (pure) -> act (idempotent HTTP).

The daemon and the one-shot CLI run the same pass through :class:`Reconciler`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from sentinel_keeper.decide.client_reloads import Tally, judge
from sentinel_keeper.decide.plan import Action, ActionKind, Plan, plan
from sentinel_keeper.errors import (
    OllamaError,
    OllamaTimeout,
    OllamaUnreachable,
    SentinelError,
    StateError,
)
from sentinel_keeper.observe.observation import (
    Endpoint,
    Footprint,
    GpuSnapshot,
    InstalledModel,
    LoadedModel,
    ModelDetails,
    Observation,
)
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.windows import in_force, zone_of
from sentinel_keeper.values.quantities import format_duration
from sentinel_keeper.values.text import escape_unprintable
from sentinel_keeper.values.timings import Timings

MAX_VERSION_CHARS = 100
# `once` runs passes until one has nothing left to do (the pinned models load first, the
# extras that fit in the pass after): at most this many.
MAX_SETTLE_PASSES = 5


class OllamaApi(Protocol):
    """What a pass needs from Ollama (implemented by observe.ollama.OllamaClient)."""

    def version(self) -> str: ...
    def ps(self) -> tuple[LoadedModel, ...]: ...
    def tags(self) -> tuple[InstalledModel, ...]: ...
    def show(self, model: str) -> ModelDetails: ...
    def load(
        self,
        model: str,
        *,
        options: Mapping[str, int | bool],
        keep_alive: float,
        endpoint: Endpoint = "generate",
    ) -> LoadOutcome: ...
    def unload(self, model: str, *, endpoint: Endpoint = "generate") -> None: ...
    def pull(self, model: str) -> None: ...


class LoadOutcome(Protocol):
    @property
    def seconds(self) -> float: ...
    @property
    def load_duration(self) -> float | None: ...
    @property
    def endpoint(self) -> Endpoint: ...


class GpuApi(Protocol):
    def snapshot(self) -> GpuSnapshot: ...


class StateApi(Protocol):
    """Implemented by sentinel_keeper.act.state.StateStore."""

    def footprints(self) -> Mapping[str, Footprint]: ...
    def update(self, footprints: Mapping[str, Footprint], keep: set[str]) -> bool: ...


class Failure(StrEnum):
    """Why an attempted action failed: what the pass and the daemon decide on (the error
    text is for people)."""

    UNREACHABLE = "unreachable"  # no answer: refused, reset, closed, or timed out
    OLLAMA_ERROR = "ollama_error"  # Ollama answered with an error (OOM, not found, bad shape)
    DOES_NOT_FIT = "does_not_fit"  # loaded, but Ollama unloaded an earlier pinned model


@dataclass(frozen=True)
class Outcome:
    """What happened to one planned action."""

    action: Action
    ok: bool
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False  # not attempted (backing off, pass stopped, Ollama gone)
    load_duration: float | None = None
    endpoint: Endpoint | None = None
    failure: Failure | None = None  # set when attempted and not ok
    # Ollama went away during the call (refused, reset, closed): says nothing about the model
    ollama_gone: bool = False

    @property
    def attempted(self) -> bool:
        return not self.skipped


@dataclass(frozen=True)
class Stall:
    """A load the keeper sent did not return within ollama.load_timeout while /api/ps kept
    answering: Ollama's scheduler is not loading (it can hang so when a reload with other
    options meets requests in flight). Loads queued behind it would only wait as well, so
    none is sent until ``retry_at``, and then one."""

    model: str
    since: datetime
    count: int  # loads that timed out in a row
    retry_at: datetime

    def describe(self, now: datetime) -> str:
        waited = format_duration(max((now - self.since).total_seconds(), 0.0))
        return (
            f"ollama is not loading: a load of {self.model} did not return within "
            f"load_timeout while /api/ps answered ({self.count}x, for {waited})"
        )


@dataclass(frozen=True)
class PassReport:
    """Everything one pass saw and did."""

    started: datetime
    seconds: float
    pinned: tuple[str, ...]
    extras: tuple[str, ...]
    observation: Observation | None  # None: Ollama could not be observed
    error: str | None = None  # why Ollama could not be observed, in full
    # the same in short, without the server's address ("GET /api/ps: connection refused")
    error_reason: str | None = None
    plan: Plan = field(default_factory=Plan)
    outcomes: tuple[Outcome, ...] = ()
    final: Observation | None = None  # after acting; the same as observation if nothing ran
    state_error: str | None = None
    stall: Stall | None = None  # Ollama is not finishing the keeper's loads
    # models that came into force with this pass: one of their time windows opened (or is
    # about to, warm_before ahead) since the reconciler's last look at Ollama
    opened: tuple[str, ...] = ()

    @property
    def unconfirmed(self) -> frozenset[str]:
        """Models whose load the keeper sent has not returned: not resident even where
        /api/ps lists them (Ollama before 0.30 lists a model while it loads)."""
        return frozenset({self.stall.model}) if self.stall is not None else frozenset()

    @property
    def reachable(self) -> bool:
        return self.observation is not None

    @property
    def latest(self) -> Observation | None:
        return self.final or self.observation

    def resident(self, names: tuple[str, ...]) -> tuple[str, ...]:
        latest = self.latest
        if latest is None:
            return ()
        loaded = latest.loaded_by_name()
        return tuple(n for n in names if n in loaded and n not in self.unconfirmed)

    @property
    def pinned_missing(self) -> tuple[str, ...]:
        present = set(self.resident(self.pinned))
        return tuple(n for n in self.pinned if n not in present)

    @property
    def all_pinned_resident(self) -> bool:
        return self.reachable and not self.pinned_missing


def _timed_out_load(outcome: Outcome) -> bool:
    """A load that got no answer within its timeout from an Ollama that did not go away."""
    return (
        outcome.action.is_load
        and outcome.attempted
        and outcome.failure is Failure.UNREACHABLE
        and not outcome.ollama_gone
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """Runs passes for one policy. Holds only caches: /api/show details by digest, and the
    load back-off of models that failed."""

    def __init__(
        self,
        policy: Policy,
        client: OllamaApi,
        *,
        gpu: GpuApi | None = None,
        state: StateApi | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        timings: Timings | None = None,
    ) -> None:
        self.policy = policy
        self.timings = timings if timings is not None else Timings()
        self.client = client
        self.gpu = gpu
        self.state = state
        self.clock = clock
        self.monotonic = monotonic
        self._details: dict[tuple[str, str], ModelDetails] = {}
        self._failures: dict[str, tuple[int, datetime]] = {}  # model -> (count, retry after)
        # pairs of pinned models seen resident at the same time: they fit together
        self._seen_together: set[frozenset[str]] = set()
        # clients' reloads with other options (client_reloads.py), and the last look they
        # are judged against
        self._client_reloads: Mapping[str, Tally] = {}
        self._last_look: Observation | None = None
        self._went_away = False  # a pass found Ollama unreachable since the last look
        self._stall: Stall | None = None
        self._zone = zone_of(policy.timezone)  # the models' windows are in this time zone
        self._in_force: frozenset[str] | None = None  # at the last pass that saw Ollama

    # -- observe ---------------------------------------------------------------------------

    def observe(self) -> Observation:
        """Read the world. Raises OllamaError when Ollama cannot be observed."""
        at = self.clock()
        # Shown in logs, STATUS= and on terminals: no control characters, a sane length.
        version = escape_unprintable(self.client.version())[:MAX_VERSION_CHARS]
        loaded = self.client.ps()
        installed = self.client.tags()
        gpu = self.gpu.snapshot() if self.gpu is not None else GpuSnapshot(error="GPU probe off")
        return Observation(
            at=at,
            ollama_version=version,
            loaded=loaded,
            installed=installed,
            gpu=gpu,
            details=self._model_details(installed),
            footprints=self._footprints(),
        )

    def _model_details(self, installed: tuple[InstalledModel, ...]) -> dict[str, ModelDetails]:
        wanted = {m.name for m in self.policy.models}
        details: dict[str, ModelDetails] = {}
        for model in installed:
            if model.name not in wanted:
                continue
            key = (model.name, model.digest)
            if key not in self._details:
                try:
                    self._details[key] = self.client.show(model.name)
                except OllamaUnreachable:
                    raise
                except OllamaError:
                    continue  # details only refine estimates; the pass goes on without
            details[model.name] = self._details[key]
        return details

    def _footprints(self) -> dict[str, Footprint]:
        if self.state is None:
            return {}
        try:
            return dict(self.state.footprints())
        except StateError:
            return {}

    # -- the pass --------------------------------------------------------------------------

    def run_pass(self, *, stop: threading.Event | None = None) -> PassReport:
        """Observe, plan, act, observe again. Never raises for Ollama or NVML trouble: the
        report says what went wrong."""
        started = self.clock()
        begun = self.monotonic()
        active, outside = in_force(self.policy.models, self._zone, started)
        in_force_now = self.policy.model_copy(update={"models": active})
        pinned = tuple(m.name for m in in_force_now.pinned)
        extras = tuple(m.name for m in in_force_now.extras)
        try:
            observation = self.observe()
        except OllamaError as exc:
            reason = exc.reason if isinstance(exc, OllamaUnreachable) else str(exc)
            self._stall = None  # whatever comes back (a restart) is asked afresh
            self._went_away = True  # and what clients had loaded is gone with it
            return PassReport(
                started,
                self.monotonic() - begun,
                pinned,
                extras,
                None,
                error=str(exc),
                error_reason=reason,
            )
        self._note_together(observation)
        opened = tuple(
            m.name
            for m in active
            if m.windows and self._in_force is not None and m.name not in self._in_force
        )
        self._in_force = frozenset(m.name for m in active)
        stall = self._stall
        if (
            stall is not None
            and observation.at >= stall.retry_at
            and stall.model in observation.loaded_by_name()
        ):
            self._stall = None  # its load finished after all: Ollama is loading again
        judged = judge(
            self._client_reloads,
            in_force_now,
            self._last_look,
            observation,
            restarted=self._went_away,
        )
        self._client_reloads = judged.memory
        self._went_away = False
        retire = [m for m in outside if m.outside == "unload"]
        the_plan = plan(
            in_force_now, observation, observation.at, holds=judged.holds, retire=retire
        )
        outcomes = self._act(the_plan.actions, stop)
        final: Observation | None = observation
        timed_out = next((o for o in outcomes if _timed_out_load(o)), None)
        if timed_out is not None or any(o.ok and not o.skipped for o in outcomes):
            final = self._reobserve(observation)
            outcomes = self._blame_evictions(in_force_now, observation, final, outcomes)
            self._note_together(final)
        for outcome in outcomes:
            if outcome.action.is_load and not outcome.skipped and not outcome.ollama_gone:
                # A restart of Ollama in the middle of a load is no reason to wait before
                # loading the model again; an error, or a load past load_timeout, is.
                self._note_result(outcome.action.model, outcome.ok)
        self._note_stall(timed_out, final, outcomes)
        state_error = self._remember(final)
        self._last_look = final or observation
        return PassReport(
            started,
            self.monotonic() - begun,
            pinned,
            extras,
            observation,
            plan=the_plan,
            outcomes=outcomes,
            final=final,
            state_error=state_error,
            stall=self._stall,
            opened=opened,
        )

    def _note_stall(
        self, timed_out: Outcome | None, final: Observation | None, outcomes: tuple[Outcome, ...]
    ) -> None:
        """A load that timed out while /api/ps still answers starts (or extends) a stall; a
        load that returned ends it."""
        if any(o.ok and o.attempted and o.action.is_load for o in outcomes):
            self._stall = None
        if timed_out is None or final is None:
            return
        now = self.clock()
        before = self._stall
        count = before.count + 1 if before is not None else 1
        self._stall = Stall(
            model=timed_out.action.model,
            since=before.since if before is not None else now,
            count=count,
            retry_at=now + timedelta(seconds=self.timings.backoff(count)),
        )

    def settle(self, max_passes: int = MAX_SETTLE_PASSES) -> tuple[PassReport, ...]:
        """Passes until one attempts nothing, Ollama cannot be observed, or ``max_passes``
        ran: what `once` runs, so that one call realises the whole policy (the pinned models
        load first, the extras that fit are planned in the pass after them)."""
        reports: list[PassReport] = []
        for _ in range(max_passes):
            report = self.run_pass()
            reports.append(report)
            if not report.reachable or not any(o.attempted for o in report.outcomes):
                break
        return tuple(reports)

    def _reobserve(self, before: Observation) -> Observation | None:
        try:
            loaded = self.client.ps()
        except OllamaError:
            return None
        gpu = self.gpu.snapshot() if self.gpu is not None else before.gpu
        return replace(before, at=self.clock(), loaded=loaded, gpu=gpu)

    def _remember(self, observation: Observation | None) -> str | None:
        if self.state is None or observation is None:
            return None
        names = {m.name for m in self.policy.models}
        seen = {
            m.name: Footprint(m.size, m.size_vram, m.context_length)
            for m in observation.loaded
            if m.name in names and m.size > 0
        }
        try:
            self.state.update(seen, names)
        except StateError as exc:
            return str(exc)
        return None

    # -- act -------------------------------------------------------------------------------

    def _act(
        self, actions: tuple[Action, ...], stop: threading.Event | None
    ) -> tuple[Outcome, ...]:
        outcomes: list[Outcome] = []
        failed_pulls: set[str] = set()
        gone: str | None = None
        for action in actions:
            if stop is not None and stop.is_set():
                outcomes.append(Outcome(action, ok=False, skipped=True, error="pass stopped"))
                continue
            if gone is not None:
                outcomes.append(Outcome(action, ok=False, skipped=True, error=gone))
                continue
            if action.model in failed_pulls:
                outcomes.append(Outcome(action, ok=False, skipped=True, error="pull failed"))
                continue
            waiting = self._backing_off(action) or self._stalled(action)
            if waiting is not None:
                outcomes.append(Outcome(action, ok=False, skipped=True, error=waiting))
                continue
            outcome = self._execute(action)
            outcomes.append(outcome)
            if not outcome.ok and action.kind is ActionKind.PULL:
                failed_pulls.add(action.model)
            if _timed_out_load(outcome):
                gone = (
                    f"a load of {action.model} did not return within load_timeout: not "
                    "queueing more loads behind it"
                )
            elif outcome.failure is Failure.UNREACHABLE:
                gone = "ollama went away during the pass"
        return tuple(outcomes)

    def _note_together(self, observation: Observation | None) -> None:
        """Remember which pinned models were resident at the same time: they fit together."""
        if observation is None:
            return
        pinned = {m.name for m in self.policy.pinned}
        resident = sorted(n for n in observation.loaded_by_name() if n in pinned)
        self._seen_together.update(
            frozenset((a, b)) for i, a in enumerate(resident) for b in resident[i + 1 :]
        )

    def _blame_evictions(
        self,
        policy: Policy,
        before: Observation,
        after: Observation | None,
        outcomes: tuple[Outcome, ...],
    ) -> tuple[Outcome, ...]:
        """A pinned model whose load made Ollama unload a pinned model listed before it in
        the policy failed: the two do not fit in memory together. Counted as a failed load
        (so it backs off), the earlier model is loaded again next pass and stays; without
        this, the two would evict each other at every pass, a full load each time."""
        if after is None:
            return outcomes
        # the pinned models in force now: one unloaded outside its windows is no victim
        order = {m.name: i for i, m in enumerate(policy.pinned)}
        loaded = {o.action.model for o in outcomes if o.ok and not o.skipped and o.action.is_load}
        present = after.loaded_by_name()
        gone = [
            name
            for name in order
            if name not in present and (name in loaded or name in before.loaded_by_name())
        ]
        if not gone:
            return outcomes
        blamed = []
        for outcome in outcomes:
            name = outcome.action.model
            # Two pinned models once resident at the same time fit together: when one goes
            # during the other's load, something else took the room (another client's model,
            # busy at that moment). A re-assertion of keep_alive loads nothing at all.
            victims = [
                g
                for g in gone
                if name in order
                and order[g] < order[name]
                and frozenset((g, name)) not in self._seen_together
            ]
            loads_memory = outcome.action.kind in (ActionKind.LOAD, ActionKind.RELOAD)
            if outcome.ok and not outcome.skipped and loads_memory and victims:
                blamed.append(
                    replace(
                        outcome,
                        ok=False,
                        failure=Failure.DOES_NOT_FIT,
                        error=(
                            f"loaded, but Ollama unloaded {', '.join(victims)} to make room: these "
                            "pinned models do not fit in memory together (the one listed first "
                            "is kept)"
                        ),
                    )
                )
            else:
                blamed.append(outcome)
        return tuple(blamed)

    def _execute(self, action: Action) -> Outcome:
        begun = self.monotonic()
        try:
            if action.is_load:
                result = self.client.load(
                    action.model,
                    options=action.options,
                    keep_alive=action.keep_alive,
                    endpoint=action.endpoint,
                )
                return Outcome(
                    action,
                    ok=True,
                    seconds=result.seconds,
                    load_duration=result.load_duration,
                    endpoint=result.endpoint,
                )
            if action.kind in (ActionKind.UNLOAD, ActionKind.RETIRE):
                self.client.unload(action.model, endpoint=action.endpoint)
            elif action.kind is ActionKind.PULL:
                self.client.pull(action.model)
            return Outcome(action, ok=True, seconds=self.monotonic() - begun)
        except OllamaUnreachable as exc:
            return Outcome(
                action,
                ok=False,
                seconds=self.monotonic() - begun,
                error=f"unreachable: {exc}",
                failure=Failure.UNREACHABLE,
                ollama_gone=not isinstance(exc, OllamaTimeout),
            )
        except SentinelError as exc:
            return Outcome(
                action,
                ok=False,
                seconds=self.monotonic() - begun,
                error=str(exc),
                failure=Failure.OLLAMA_ERROR,
            )

    def _stalled(self, action: Action) -> str | None:
        """While Ollama is not finishing loads, none is sent until the retry time."""
        stall = self._stall
        if not action.is_load or stall is None:
            return None
        now = self.clock()
        if now >= stall.retry_at:
            return None
        wait = (stall.retry_at - now).total_seconds()
        return f"{stall.describe(now)}; next try in {wait:.0f}s"

    def _backing_off(self, action: Action) -> str | None:
        if not action.is_load:
            return None
        entry = self._failures.get(action.model)
        if entry is None:
            return None
        count, retry_at = entry
        now = self.clock()
        if now >= retry_at:
            return None
        wait = (retry_at - now).total_seconds()
        return f"backing off after {count} failed load(s); next try in {wait:.0f}s"

    def _note_result(self, model: str, ok: bool) -> None:
        if ok:
            self._failures.pop(model, None)
            return
        count = self._failures.get(model, (0, self.clock()))[0] + 1
        delay = self.timings.backoff(count)
        self._failures[model] = (count, self.clock() + timedelta(seconds=delay))
