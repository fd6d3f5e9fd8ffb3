"""Between passes: should a look at /api/ps bring the next pass forward?

A pass runs every ``interval`` (15 s by default). Between passes the daemon asks Ollama for
/api/ps every couple of seconds (cheap: no model is touched) and runs a pass at once when a
pinned model that the last pass left resident is gone: Ollama was restarted (an upgrade, a
crash, ``systemctl restart ollama``), evicted it for another model, or a client unloaded it
with ``keep_alive: 0``. A quick restart between two passes would otherwise go unnoticed until
the next one, and the first request after it would pay the cold load.

Only disappearance counts. A pinned model that a client reloaded with other options is left
to the next pass: reloading it at once would fight that client every few seconds.
"""

from __future__ import annotations

from collections.abc import Iterable

from sentinel_keeper.observation import LoadedModel
from sentinel_keeper.reconcile import PassReport


def gone_pinned(last: PassReport | None, loaded: Iterable[LoadedModel]) -> tuple[str, ...]:
    """The pinned models the last pass left resident that ``loaded`` (/api/ps now) lacks.

    Empty when there was no reachable last pass: then the probing after an outage, not this
    watch, brings Ollama's models back."""
    if last is None or not last.reachable:
        return ()
    now = {model.name for model in loaded}
    return tuple(name for name in last.resident(last.pinned) if name not in now)
