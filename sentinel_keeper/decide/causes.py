"""Why a policy model left Ollama's memory, and so why the keeper loads it again: one rule,
from two looks at /api/ps, for the journal (``model_missing``), the metrics (loads by reason,
evictions, restarts observed) and `status`. Pure.

Ollama says nothing about an unload, so most causes look alike: a client's keep_alive 0, a
client's reload with other options (Ollama lists the model again only when that reload is
done), an eviction, a restart. Only some leave a trace: an expiry time in the past, a new
version, every model gone at once, another model loaded in its place, an outage between the
two looks.
"""

from __future__ import annotations

from enum import StrEnum

from sentinel_keeper.observe.observation import Observation


class Gone(StrEnum):
    """What two looks at /api/ps tell about a model listed in the first, not in the second."""

    EXPIRED = "expired"  # its expiry time had passed: its keep_alive ran out
    REPLACED = "replaced"  # Ollama's version changed: upgraded or replaced (unloads all)
    MADE_ROOM = "made_room"  # other models were loaded since: evicted for them, or unloaded
    ALL_GONE = "all_gone"  # several models gone at once: a restart, or Ollama unloaded all
    ONLY_MODEL = "only_model"  # the only one loaded: unloaded, reloading, or a restart
    ALONE = "alone"  # gone while the others stayed: unloaded, reloading, or evicted


class LoadCause(StrEnum):
    """Why the keeper loads a policy model: the ``reason`` label of the loads counter."""

    NOT_LOADED = "not_loaded"  # not seen resident since it went away for a reason unknown,
    # or ever since the keeper started (a boot, a model new in the policy)
    EVICTED = "evicted"  # went away as another model was loaded: Ollama made room for it
    UNLOADED = "unloaded"  # went away alone: a client unloaded it (keep_alive 0) or is
    # reloading it with other options (Ollama lists a reloading model only when it is done)
    KEEP_ALIVE_SHORTENED = "keep_alive_shortened"  # a client's keep_alive: reasserted, or ran out
    OTHER_NUM_CTX = "other_num_ctx"  # a client reloaded it with another num_ctx
    AFTER_RESTART = "after_restart"  # Ollama restarted, was upgraded, or unloaded everything
    WINDOW_OPENED = "window_opened"  # one of its time windows opened (or is about to)


def gone_how(before: Observation, now: Observation, name: str) -> Gone:
    """How ``name``, listed in ``before``, left: as much as the two looks tell."""
    instance = before.loaded_by_name()[name]
    remaining = instance.remaining(now.at)
    if remaining is not None and remaining.total_seconds() <= 0:
        return Gone.EXPIRED
    if before.ollama_version != now.ollama_version:
        return Gone.REPLACED
    listed = now.loaded_by_name()
    if any(m.name not in before.loaded_by_name() for m in now.loaded):
        return Gone.MADE_ROOM
    others = [m.name for m in before.loaded if m.name != name]
    if others and not any(other in listed for other in others):
        return Gone.ALL_GONE
    return Gone.ALONE if others else Gone.ONLY_MODEL


_CAUSES = {
    Gone.EXPIRED: LoadCause.KEEP_ALIVE_SHORTENED,
    Gone.REPLACED: LoadCause.AFTER_RESTART,
    Gone.MADE_ROOM: LoadCause.EVICTED,
    Gone.ALL_GONE: LoadCause.AFTER_RESTART,
    Gone.ONLY_MODEL: LoadCause.UNLOADED,
    Gone.ALONE: LoadCause.UNLOADED,
}


def load_cause(gone: Gone, *, across_outage: bool) -> LoadCause:
    """The reason label of the load that brings back a model that left as ``gone``; an
    Ollama that did not answer between the two looks was restarted (or replaced)."""
    return LoadCause.AFTER_RESTART if across_outage else _CAUSES[gone]


def restart_seen(before: Observation, now: Observation, *, across_outage: bool) -> bool:
    """Do the two looks show that Ollama restarted in between? A new version does; so does
    an outage after which none of the models loaded before is listed (vacuously so when none
    was), and several models gone at once with nothing new loaded."""
    listed = now.loaded_by_name()
    survivors = [m.name for m in before.loaded if m.name in listed]
    if before.ollama_version != now.ollama_version:
        return True
    if across_outage:
        return not survivors
    newcomers = [m for m in now.loaded if m.name not in before.loaded_by_name()]
    return len(before.loaded) >= 2 and not survivors and not newcomers


def missing_why(before: Observation, now: Observation, name: str) -> str:
    """Why ``name``, listed in ``before``, is not in ``now``, for people."""
    how = gone_how(before, now, name)
    if how is Gone.EXPIRED:
        return "its keep_alive ran out"
    if how is Gone.REPLACED:
        return (
            f"Ollama was upgraded or replaced ({before.ollama_version} -> "
            f"{now.ollama_version}), which unloads every model"
        )
    if how is Gone.MADE_ROOM:
        newcomers = sorted(m.name for m in now.loaded if m.name not in before.loaded_by_name())
        return (
            f"{', '.join(newcomers)} loaded since: Ollama evicts a model to make room "
            "(shortest keep_alive first), or a client unloaded it"
        )
    if how is Gone.ALL_GONE:
        return (
            f"all {len(before.loaded)} models gone at once: Ollama restarted, or unloaded every "
            "model (it does after an out-of-memory)"
        )
    if how is Gone.ONLY_MODEL:
        return (
            "it was the only model loaded: a client unloaded it (keep_alive 0) or is "
            "reloading it with other options, or Ollama restarted"
        )
    return (
        "gone while the other models stayed: a client unloaded it (keep_alive 0) or is "
        "reloading it with other options, or Ollama evicted it"
    )
