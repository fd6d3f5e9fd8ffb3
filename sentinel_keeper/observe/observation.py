"""What one reconcile pass sees: frozen data that crosses from the I/O edges to the planner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

# The API a model is loaded through: /api/generate, or /api/embed for embedding-only models.
Endpoint = Literal["generate", "embed"]

# Ollama's CLI prints "Forever" for an expiry more than this far ahead; a keep_alive of -1
# shows as about now + 292 years in /api/ps.
FOREVER_THRESHOLD = timedelta(days=20 * 365)
GIB = 1024**3


@dataclass(frozen=True)
class LoadedModel:
    """One entry of GET /api/ps."""

    name: str  # normalised name:tag
    size: int  # bytes in use, GPU and CPU together
    size_vram: int  # bytes on the GPU
    digest: str = ""
    expires_at: datetime | None = None  # timezone-aware; None when Ollama did not say
    context_length: int | None = None  # the num_ctx of this instance (Ollama >= 0.10)

    @property
    def spilled(self) -> bool:
        """Partly or wholly in CPU memory."""
        return self.size_vram < self.size

    def is_forever(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at - now > FOREVER_THRESHOLD

    def remaining(self, now: datetime) -> timedelta | None:
        return None if self.expires_at is None else self.expires_at - now


@dataclass(frozen=True)
class InstalledModel:
    """One entry of GET /api/tags."""

    name: str  # normalised name:tag
    size: int  # bytes on disk
    digest: str = ""
    capabilities: tuple[str, ...] | None = None  # None: this server does not list them


@dataclass(frozen=True)
class ModelDetails:
    """What POST /api/show tells about a model: enough to pick the load endpoint and to
    estimate the memory its KV cache takes."""

    name: str
    capabilities: tuple[str, ...] | None = None  # None: server older than 0.6.4
    architecture: str | None = None
    context_length: int | None = None  # trained context length
    block_count: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None

    @property
    def embedding_only(self) -> bool:
        caps = self.capabilities
        return caps is not None and "embedding" in caps and "completion" not in caps


@dataclass(frozen=True)
class GpuInfo:
    """Memory of one GPU as NVML reports it, in bytes, and its UUID (``GPU-...``, or
    ``MIG-...``; None when the driver cannot tell it)."""

    index: int
    name: str
    total: int
    used: int
    free: int
    uuid: str | None = None


@dataclass(frozen=True)
class GpuSnapshot:
    """The selected GPUs, or 'unknown' (error set) when NVML cannot tell. Unknown is never
    read as zero free memory, nor as plenty."""

    gpus: tuple[GpuInfo, ...] = ()
    error: str | None = None

    @property
    def known(self) -> bool:
        return self.error is None and bool(self.gpus)

    @property
    def free(self) -> int | None:
        return sum(g.free for g in self.gpus) if self.known else None

    @property
    def total(self) -> int | None:
        return sum(g.total for g in self.gpus) if self.known else None

    def summary(self) -> str:
        """ "GPU0 1.2 of 3.0 GiB free", one clause per GPU, or why memory is unknown."""
        if not self.known:
            return f"GPU memory unknown ({self.error or 'no GPU'})"
        return ", ".join(
            f"GPU{g.index} {g.free / GIB:.1f} of {g.total / GIB:.1f} GiB free" for g in self.gpus
        )

    def as_json(self, *, totals: bool = True) -> dict[str, Any]:
        """The JSON shape of a snapshot (``python -m sentinel_keeper.gpu``, and without the
        totals the "gpu" of ``status --json``)."""
        head: dict[str, Any] = {"known": self.known, "error": self.error}
        if totals:
            head |= {"free": self.free, "total": self.total}
        return head | {
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "total": g.total,
                    "used": g.used,
                    "free": g.free,
                }
                for g in self.gpus
            ]
        }


@dataclass(frozen=True)
class Footprint:
    """The memory a model took the last time it was seen loaded (remembered across restarts)."""

    size: int
    size_vram: int
    context_length: int | None = None


@dataclass(frozen=True)
class Observation:
    """Everything the planner may know about the world at one instant."""

    at: datetime
    ollama_version: str
    loaded: tuple[LoadedModel, ...]
    installed: tuple[InstalledModel, ...]
    gpu: GpuSnapshot
    details: Mapping[str, ModelDetails] = field(default_factory=dict)
    footprints: Mapping[str, Footprint] = field(default_factory=dict)

    def loaded_by_name(self) -> dict[str, LoadedModel]:
        return {m.name: m for m in self.loaded}

    def installed_by_name(self) -> dict[str, InstalledModel]:
        return {m.name: m for m in self.installed}
