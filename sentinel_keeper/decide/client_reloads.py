"""Not fighting a client: when a client loads a policy model with another num_ctx, the keeper
does not reload it back while that client is using it, and stops reloading it back for a
cool-down when clients keep doing it (each reload is a full load, and a reload with other
options while requests are in flight can hang Ollama's scheduler). Pure: a function of what
the keeper remembers, the policy, and the previous and current looks at /api/ps.

The rule, per policy model that sets a num_ctx:

- a client reload is the model listed with another context length than the policy's where the
  previous look had it at another one (or not at all); a keeper's first look (`once`, a new
  daemon) has nothing to compare with, and reloads it;
- busy: while the clients use that instance the keeper leaves it to them. Ollama moves an
  instance's expires_at at the end of each request (and leaves it in the past while a request
  outlives its keep_alive), so the instance counts as in use until its expires_at has stayed
  put for the wait; then it is reloaded with the policy's options;
- the wait learns: the first time a num_ctx is seen it is ``quiet`` (a few seconds: a client
  that is gone costs nothing, and the pinned clients get their model back before they ask);
  each return of the same num_ctx within ``within`` (a reload with it again, or another
  request to its instance) doubles it, and it is at least twice the longest time the clients
  took to come back with that num_ctx (a client whose requests come 30 s apart is waited for
  a minute, so that reloading it back does not make its next request cold), up to
  ``cool_down``: a client that returns is the evidence for leaving the model to it longer;
- back-off: ``after`` client reloads within ``within``, or clients keeping the model busy for
  ``within``, put it on hold until ``cool_down`` has passed, reported once as a warning that
  names the clients' num_ctx and what to set;
- a hold ends at once when the clients stop: the model seen with the policy's context again,
  its timer run out, or missing from two looks in a row (a model a client is reloading is
  missing from /api/ps until the reload is done, so one look is no proof); client reloads
  older than ``within`` are forgotten;
- after a cool-down the keeper reloads the model once; a client reload within ``within`` of
  that puts it on hold again at once;
- a restart of Ollama (the reconciler saw it go away, or every model the previous look listed
  with time left is gone) empties it: nothing of the clients' instance is left to protect, so
  a hold on a model that is missing is forgotten at once (the returns seen within ``within``
  are kept: they are what the wait learnt).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal

from sentinel_keeper.decide.capacity import expected_context_length
from sentinel_keeper.observe.observation import Observation
from sentinel_keeper.policy import Policy

HoldKind = Literal["busy", "backoff"]


@dataclass(frozen=True)
class Tally:
    """What the keeper remembers of one model's client reloads."""

    reloads: tuple[datetime, ...] = ()  # client reloads seen, within the window
    # each return of a client's num_ctx (a reload with it, or a look that saw its instance
    # used again), within the window: (when, num_ctx); how long the wait has grown
    returns: tuple[tuple[datetime, int], ...] = ()
    client_ctx: int | None = None  # the context length the clients use, as last seen
    hold_until: datetime | None = None  # the back-off's cool-down
    relapse_until: datetime | None = None  # a client reload before this holds again at once
    missing: int = 0  # looks in a row that did not list the model while it was on hold
    expiry: datetime | None = None  # the clients' instance's expires_at, as last seen
    used_at: datetime | None = None  # when the clients last used it, as far as looks tell
    since: datetime | None = None  # when the clients' instance was first seen


@dataclass(frozen=True)
class Hold:
    """A model the keeper leaves to its clients for now."""

    model: str
    client_ctx: int
    policy_ctx: int
    reloads: int
    until: datetime | None  # the cool-down's end; None: while the clients use it
    kind: HoldKind = "backoff"
    # after a cool-down: the keeper reloads it once, and a client reload before ``until``
    # puts it back on hold (reported as the same condition, not a new one)
    trying: bool = False
    wait: float = 0.0  # busy: seconds the instance must stay unused before it is reloaded


@dataclass(frozen=True)
class Judgement:
    memory: Mapping[str, Tally]
    holds: Mapping[str, Hold]


def judge(
    memory: Mapping[str, Tally],
    policy: Policy,
    before: Observation | None,
    now: Observation,
    *,
    restarted: bool = False,
) -> Judgement:
    """The memory after ``now`` (``before``: the previous pass's last look), and the models
    on hold. ``restarted``: Ollama went away since ``before`` (a pass could not reach it)."""
    rule = policy.reload_backoff
    within = timedelta(seconds=rule.within)
    at = now.at
    listed = now.loaded_by_name()
    listed_before = before.loaded_by_name() if before is not None else {}
    emptied = restarted or _emptied(memory, before, now)
    out: dict[str, Tally] = {}
    holds: dict[str, Hold] = {}
    for model in policy.models:
        name = model.name
        wanted = expected_context_length(model, now.details.get(name))
        if wanted is None or rule.after <= 0:
            continue
        tally = memory.get(name, Tally())
        returns = tuple(r for r in tally.returns if at - r[0] < within)
        tally = replace(tally, returns=returns)
        instance, earlier = listed.get(name), listed_before.get(name)
        busy = False
        quiet = timedelta(seconds=_wait(tally, rule.quiet, rule.cool_down))
        if instance is None and emptied:
            # Ollama restarted (or evicted everything): no instance of the clients is left
            # to protect, and a pinned model goes back first
            tally = Tally(
                reloads=tuple(r for r in tally.reloads if at - r < within), returns=returns
            )
        elif instance is None:
            if _held(tally, at, quiet):
                remaining = earlier.remaining(at) if earlier is not None else None
                ran_out = remaining is not None and remaining.total_seconds() <= 0
                tally = replace(tally, missing=tally.missing + 1)
                if ran_out or tally.missing >= 2:
                    # the clients stopped, or it stays gone: load it again (what the wait
                    # learnt is kept for the window)
                    tally = Tally(returns=tally.returns)
                busy = _held(tally, at, quiet) and tally.hold_until is None
        elif instance.context_length == wanted or instance.context_length is None:
            # as the policy says (the keeper's reload, or a client that uses the policy's
            # context): nothing to hold; the reloads seen are forgotten as the window passes,
            # and a client reload soon after a cool-down still puts it back on hold at once
            reloads = tuple(r for r in tally.reloads if at - r < within)
            relapse = tally.relapse_until
            trying = relapse is not None and at < relapse
            tally = Tally(
                reloads=reloads,
                returns=tally.returns,
                client_ctx=tally.client_ctx if reloads or trying else None,
                relapse_until=relapse if trying else None,
            )
        elif before is None and name not in memory:
            pass  # a first look (a new keeper, `once`): no sign of a client using it yet
        else:
            ctx = instance.context_length
            tally = replace(tally, missing=0, client_ctx=ctx)
            if earlier is None or earlier.context_length != ctx:
                reloads = (*(r for r in tally.reloads if at - r < within), at)
                tally = replace(
                    tally,
                    reloads=reloads,
                    returns=(*tally.returns, (at, ctx)),
                    since=at,
                    used_at=at,
                    expiry=instance.expires_at,
                )
                soon = tally.relapse_until is not None and at < tally.relapse_until
                if tally.hold_until is None and (len(reloads) >= rule.after or soon):
                    tally = _cool_down(tally, at, rule.cool_down)
            else:
                remaining = instance.remaining(at)
                running = remaining is not None and remaining.total_seconds() <= 0
                if instance.expires_at != tally.expiry or running:
                    # a request ended since the last look, or one is running past its
                    # keep_alive (Ollama leaves expires_at in the past until it ends): the
                    # client came back to it
                    returned = instance.expires_at != tally.expiry
                    tally = replace(
                        tally,
                        expiry=instance.expires_at,
                        used_at=at,
                        returns=(*tally.returns, (at, ctx)) if returned else tally.returns,
                    )
            quiet = timedelta(seconds=_wait(tally, rule.quiet, rule.cool_down))
            busy = tally.used_at is not None and quiet.total_seconds() > 0
            busy = busy and at - (tally.used_at or at) < quiet
            if (
                busy
                and tally.hold_until is None
                and tally.since is not None
                and at - tally.since >= within
            ):
                tally = _cool_down(tally, at, rule.cool_down)  # kept busy that long: say so
            if tally.hold_until is not None and at >= tally.hold_until:
                # the cool-down is over: reload once (when idle); a client that reloads it
                # again soon puts it back on hold at once
                tally = replace(
                    tally, hold_until=None, relapse_until=at + within, reloads=(), since=None
                )
        if tally != Tally():
            out[name] = tally
        hold = _hold(name, tally, wanted, at, busy, wait=quiet.total_seconds())
        if hold is not None:
            holds[name] = hold
    return Judgement(out, holds)


# a client that came back after a while is waited for this many times as long before its
# instance counts as idle: the next gap of a client seldom matches the last one exactly
GAP_MARGIN = 2.0


def _wait(tally: Tally, first: float, most: float) -> float:
    """How long the clients' instance must stay unused before the keeper reloads it: the
    first time ``first``, doubled by each return of the same num_ctx, and at least twice the
    longest time the clients took to come back with it; at most ``most``."""
    ctx = tally.client_ctx
    times = [when for when, c in tally.returns if c == ctx] if ctx is not None else []
    wait = first * 2.0 ** max(len(times) - 1, 0)
    gaps = ((b - a).total_seconds() for a, b in pairwise(times))
    wait = max(wait, GAP_MARGIN * max(gaps, default=0.0))
    return min(wait, max(most, first))


def _emptied(memory: Mapping[str, Tally], before: Observation | None, now: Observation) -> bool:
    """Did Ollama lose every model the previous look listed, models that had time left and
    that no client was reloading (a restart, or an evict-all after an out-of-memory)? A model
    on hold that is missing may be a client's reload under way (Ollama lists it again only
    once loaded): it alone proves nothing."""
    if before is None or now.loaded:
        return False
    for model in before.loaded:
        remaining = model.remaining(now.at)
        tally = memory.get(model.name)
        clients = tally is not None and (tally.used_at is not None or tally.hold_until is not None)
        if not clients and (remaining is None or remaining > timedelta(0)):
            return True
    return False


def _cool_down(tally: Tally, at: datetime, seconds: float) -> Tally:
    return replace(tally, hold_until=at + timedelta(seconds=seconds), relapse_until=None)


def _held(tally: Tally, at: datetime, quiet: timedelta) -> bool:
    busy = tally.used_at is not None and at - tally.used_at < quiet
    return tally.hold_until is not None or busy


def _hold(
    name: str, tally: Tally, wanted: int, at: datetime, busy: bool, *, wait: float
) -> Hold | None:
    ctx = tally.client_ctx
    if ctx is None:
        return None
    reloads = len(tally.reloads)
    if tally.hold_until is not None:
        return Hold(name, ctx, wanted, reloads, tally.hold_until)
    if tally.relapse_until is not None and at < tally.relapse_until:
        return Hold(name, ctx, wanted, reloads, tally.relapse_until, trying=not busy)
    if busy:
        return Hold(name, ctx, wanted, reloads, None, kind="busy", wait=wait)
    return None
