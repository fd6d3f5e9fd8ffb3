"""What the gateway measures of each request, and the figures it keeps of them. Pure but for
:class:`Tally`, the one lock-guarded accumulator the server's thread adds to and the
daemon's main thread reads a frozen :class:`GatewayFigures` from.

Cold or warm: Ollama's final chunk of a streamed /api/generate or /api/chat (and the one
object of a non-streamed answer, and /api/embed's) carries ``load_duration`` in nanoseconds:
the time from the request's arrival in the handler until a runner was ready for it. A warm
model answers within milliseconds (Ollama at v0.33 reports a few ms; the test double 0); a
load takes from about a second (a small model off the page cache) to minutes. Above
:data:`COLD_SECONDS` the request counts as cold. Ollama's load_duration also holds the time
the request waited for a busy runner (OLLAMA_NUM_PARALLEL requests already in it), so a
saturated warm model can read as cold; the cause then says ``unknown``. The OpenAI-compatible
/v1 endpoints report no load_duration: their requests are neither cold nor warm (None).

The cause of a cold request comes from the keeper's last look at Ollama before it:
``not_loaded`` (the model was not in /api/ps), ``other_num_ctx`` (it was, with another
context length than the request loads it with: a reload), else ``unknown``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sentinel_keeper.gateway.rules import Change
from sentinel_keeper.observe.observation import Observation
from sentinel_keeper.values.figures import NO_MODEL, Cause, GatewayFigures, Histogram, Recent

COLD_SECONDS = 0.5  # a load_duration above this: the request waited for a load
TAIL_LIMIT = 1024**2  # at most this much of the stream's last line is kept, to read it
WINDOW_SECONDS = 3600.0  # the "last hour" of the cold share
BUCKET_SECONDS = 60.0  # the last hour kept in minutes
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True)
class RequestRecord:
    """One request through the gateway, once its answer is over."""

    model: str | None
    endpoint: str  # the path, for the known endpoints; "other" for the rest
    client: str  # the client's address
    user_agent: str
    status: int
    ttfb: float | None  # seconds to the first byte of the answer's body; None: no body
    total: float  # seconds until the answer ended
    cold: bool | None  # None: not known (no final chunk, or an endpoint without one)
    cause: str | None  # for a cold request: one of Cause.ALL
    changes: tuple[Change, ...] = ()
    # passed as it came although it reloads a pinned model: it needs a larger num_ctx
    reload_num_ctx: int | None = None


class FinalChunk:
    """Feeds on the answer's bytes as they pass and keeps the last complete line (and the
    unfinished one, up to :data:`TAIL_LIMIT`): whatever the answer's length, memory stays
    bounded. :meth:`final` is the last line, parsed, when it is a JSON object."""

    def __init__(self) -> None:
        self._last = b""
        self._partial = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> None:
        head, newline, tail = data.rpartition(b"\n")
        if newline:
            line: bytes | None
            if b"\n" in head:
                line = head.rsplit(b"\n", 1)[1]
            elif self._overflow:
                line = None  # the line ending here was too long to keep
            else:
                line = bytes(self._partial) + head
            if line is None or len(line) > TAIL_LIMIT:
                self._last = b""
            elif line.strip():
                self._last = line
            self._partial = bytearray()
            self._overflow = False
        if self._overflow or len(self._partial) + len(tail) > TAIL_LIMIT:
            self._overflow = True
            self._partial = bytearray()
        else:
            self._partial += tail

    def final(self) -> Mapping[str, Any] | None:
        if self._overflow:
            return None
        text = bytes(self._partial) if self._partial.strip() else self._last
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None


def cold_of(final: Mapping[str, Any] | None) -> bool | None:
    """Whether the answer whose last object is ``final`` waited for a load; None: unknown."""
    if final is None:
        return None
    nanos = final.get("load_duration")
    if isinstance(nanos, bool) or not isinstance(nanos, int | float):
        return None
    return nanos / 1e9 > COLD_SECONDS


def cause_of(model: str | None, num_ctx: int | None, observation: Observation | None) -> str:
    """Why a request for ``model`` loading it with ``num_ctx`` was cold, from the keeper's
    last look at Ollama before it."""
    if model is None or observation is None:
        return Cause.UNKNOWN
    loaded = observation.loaded_by_name().get(model)
    if loaded is None:
        return Cause.NOT_LOADED
    if num_ctx is not None and loaded.context_length not in (None, num_ctx):
        return Cause.OTHER_NUM_CTX
    return Cause.UNKNOWN


class Tally:
    """The gateway's running counts; thread-safe. ``add`` from the server's thread, ``figures``
    from any."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.up = False
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._cold: dict[tuple[str, str], int] = {}
        self._ttfb: dict[str, Histogram] = {}
        self._changes: dict[tuple[str, str], int] = {}
        self._reloads: dict[tuple[str, str], int] = {}
        # model -> minutes of the last hour: [minute, requests, cold]
        self._minutes: dict[str, deque[list[int]]] = {}

    def add(self, record: RequestRecord, mono: float) -> None:
        model = record.model or NO_MODEL
        with self._lock:
            key = (model, record.endpoint, str(record.status))
            self._requests[key] = self._requests.get(key, 0) + 1
            if record.ttfb is not None:
                histogram = self._ttfb.get(model) or Histogram(TTFB_BUCKETS)
                self._ttfb[model] = histogram.observe(record.ttfb)
            for change in record.changes:
                ckey = (model, change.field)
                self._changes[ckey] = self._changes.get(ckey, 0) + 1
            if record.reload_num_ctx is not None:
                rkey = (model, str(record.reload_num_ctx))
                self._reloads[rkey] = self._reloads.get(rkey, 0) + 1
            if record.model is None:
                return
            if record.cold:
                cause = (model, record.cause or Cause.UNKNOWN)
                self._cold[cause] = self._cold.get(cause, 0) + 1
            minute = int(mono // BUCKET_SECONDS)
            minutes = self._minutes.setdefault(model, deque())
            if not minutes or minutes[-1][0] != minute:
                minutes.append([minute, 0, 0])
            minutes[-1][1] += 1
            minutes[-1][2] += 1 if record.cold else 0

    def figures(self, mono: float) -> GatewayFigures:
        oldest = int((mono - WINDOW_SECONDS) // BUCKET_SECONDS)
        with self._lock:
            recent: dict[str, Recent] = {}
            for model, minutes in self._minutes.items():
                while minutes and minutes[0][0] <= oldest:
                    minutes.popleft()
                recent[model] = Recent(sum(m[1] for m in minutes), sum(m[2] for m in minutes))
            return GatewayFigures(
                instance=self.instance,
                up=self.up,
                requests=dict(self._requests),
                cold=dict(self._cold),
                ttfb=dict(self._ttfb),
                changes=dict(self._changes),
                recent=recent,
                reloads=dict(self._reloads),
            )
