"""Between passes: should a look at /api/ps bring the next pass forward?

A pass runs every ``interval`` (15 s by default). Between passes the daemon asks Ollama for
/api/ps every couple of seconds (cheap: no model is touched) and runs a pass early when a
pinned model that the last pass left resident is gone: Ollama was restarted (an upgrade, a
crash, ``systemctl restart ollama``), evicted it for another model, or a client unloaded it
with ``keep_alive: 0``. A quick restart between two passes would otherwise go unnoticed until
the next one, and the first request after it would pay the cold load.

A model missing from one look is not yet gone. Ollama (server/sched.go, v0.30 and later)
lists a runner only once it is ready: while a client reloads a model with other load-time
options, the old runner leaves /api/ps first, then GPU memory is given time to recover and the
new runner loads, and only then is the model listed again. A pass run into that gap would load
the policy's options behind the client's load and fight the client every few seconds. So a
pinned model brings the pass forward only after it stayed absent for ``settle`` seconds, or at
once when another model took its place. A model that is listed, whatever its options, is not
gone: a client's reload is left to the next pass, and said once in the journal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.observe.observation import LoadedModel
from sentinel_keeper.report.logevent import LogEvent


@dataclass(frozen=True)
class WatchMemory:
    """What the watch remembers between its looks, since the last pass."""

    absent_since: Mapping[str, float] = field(default_factory=dict)  # model -> first look
    reloads_noted: Mapping[str, int | None] = field(default_factory=dict)  # model -> its ctx
    listed: frozenset[str] | None = None  # at the previous look; None: the pass's


@dataclass(frozen=True)
class Look:
    """One look's verdict: why a pass is due now (None: not due), what to log, and what to
    remember for the next look."""

    due: str | None
    events: tuple[LogEvent, ...]
    memory: WatchMemory


def look(
    last: PassReport | None,
    loaded: Iterable[LoadedModel],
    *,
    now: float,
    memory: WatchMemory,
    settle: float,
) -> Look:
    """Judge /api/ps now (``loaded``) against what the last pass left, at ``now`` (seconds on
    any monotonic clock). Pure.

    Nothing is due when there was no reachable last pass: then the probing after an outage,
    not this watch, brings Ollama's models back."""
    if last is None or not last.reachable or last.latest is None:
        return Look(None, (), memory)
    before = last.latest.loaded_by_name()
    listed = {model.name: model for model in loaded}
    # Loaded since the previous look: a model that was already listed then did not take the
    # place of one that is missing now (Ollama evicts first, then loads, then lists).
    previous = set(before) if memory.listed is None else memory.listed
    newcomers = sorted(name for name in listed if name not in previous and name not in before)
    absent: dict[str, float] = {}
    gone: list[str] = []
    events: list[LogEvent] = []
    noted = dict(memory.reloads_noted)
    for name in last.resident(last.pinned):
        instance = listed.get(name)
        if instance is not None:
            ctx, ctx_before = instance.context_length, before[name].context_length
            if ctx != ctx_before and noted.get(name, ctx_before) != ctx:
                noted[name] = ctx
                events.append(
                    LogEvent(
                        "model_reloaded_by_client",
                        "warning",
                        {
                            "model": name,
                            "tier": "pinned",
                            "context_length": ctx,
                            "was": ctx_before,
                            "why": "a client loaded it with other options; "
                            "the next pass puts the policy's back",
                        },
                    )
                )
            continue
        since = memory.absent_since.get(name, now)
        absent[name] = since
        if newcomers or now - since >= settle:
            gone.append(name)
    due = None
    if gone:
        due = f"pinned model gone: {', '.join(gone)}"
        if newcomers:
            due += f" ({', '.join(newcomers)} loaded in its place)"
    return Look(due, tuple(events), WatchMemory(absent, noted, frozenset(listed)))
