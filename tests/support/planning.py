"""Builders for planner tests: policies and observations in a line each."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sentinel_keeper.observe.observation import (
    Footprint,
    GpuInfo,
    GpuSnapshot,
    InstalledModel,
    LoadedModel,
    ModelDetails,
    Observation,
)
from sentinel_keeper.policy import Policy

GiB = 1024**3
MiB = 1024**2
NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
FOREVER = NOW + timedelta(days=292 * 365)


def policy(*models: Mapping[str, object], **top: Any) -> Policy:
    return Policy.model_validate({"models": list(models), **top})


def loaded(
    name: str,
    size: int = 1 * GiB,
    *,
    vram: int | None = None,
    expires_in: float | None = None,
    ctx: int | None = None,
) -> LoadedModel:
    expires = FOREVER if expires_in is None else NOW + timedelta(seconds=expires_in)
    return LoadedModel(
        name=name,
        size=size,
        size_vram=size if vram is None else vram,
        expires_at=expires,
        context_length=ctx,
    )


def installed(
    name: str, size: int = 1 * GiB, caps: tuple[str, ...] | None = None
) -> InstalledModel:
    return InstalledModel(name=name, size=size, capabilities=caps)


def gpus(*free_total: tuple[int, int]) -> GpuSnapshot:
    return GpuSnapshot(
        tuple(
            GpuInfo(index=i, name=f"GPU {i}", total=total, used=total - free, free=free)
            for i, (free, total) in enumerate(free_total)
        )
    )


UNKNOWN_GPU = GpuSnapshot(error="NVML library libnvidia-ml.so.1 not found")


def observation(
    *,
    loaded_models: tuple[LoadedModel, ...] = (),
    installed_models: tuple[InstalledModel, ...] | None = None,
    gpu: GpuSnapshot = UNKNOWN_GPU,
    details: dict[str, ModelDetails] | None = None,
    footprints: dict[str, Footprint] | None = None,
) -> Observation:
    if installed_models is None:
        installed_models = tuple(installed(m.name, m.size) for m in loaded_models)
    return Observation(
        at=NOW,
        ollama_version="0.33.0",
        loaded=loaded_models,
        installed=installed_models,
        gpu=gpu,
        details=details or {},
        footprints=footprints or {},
    )
