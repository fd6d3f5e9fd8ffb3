"""What the keeper and the gateway's own process hand each other, as files in the state
directory (``$STATE_DIRECTORY``, /var/lib/sentinel-keeper; both units share it and its
dynamic user): no shared memory, no socket, so that either can die, restart or be upgraded
alone.

- ``gateway-view.json``, written by the keeper (``sentinel-keeper run``) after every pass,
  every look at /api/ps between passes, and every few seconds besides: the keeper's last
  look at the Ollama instance the gateway fronts (its loaded and installed models, learned
  footprints, GPU figures), and when it was written. The gateway reads it when it changes;
  one older than ``gateway.view_max_age`` (the keeper gone or stuck) or unreadable is no
  view at all (:func:`view_state`), and the rules that need one forward unchanged.
- ``gateway/figures.json``, written by the gateway every couple of seconds: what it counted
  (requests, cold requests, changes...) and whether it runs degraded. The keeper's metrics
  endpoint exports it, and ``status`` shows it through that endpoint.
- ``gateway/policy.yaml``: the last policy the gateway found valid, which it starts from
  when the policy file is broken.

Both files are replaced atomically (a reader sees the old or the new one), without fsync:
they describe the present, and one lost in a crash is only old. The codecs are pure; a
shape they do not know raises :class:`ValueError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sentinel_keeper.decide.readiness import InstanceHealth
from sentinel_keeper.observe.observation import (
    Footprint,
    GpuInfo,
    GpuSnapshot,
    InstalledModel,
    LoadedModel,
    ModelDetails,
    Observation,
)
from sentinel_keeper.values.figures import Degraded, GatewayFigures, Histogram, Recent

VIEW_FILE = "gateway-view.json"
GATEWAY_DIR = "gateway"
FIGURES_FILE = "figures.json"
POLICY_COPY = "policy.yaml"
FORMAT = 1
FIGURES_MAX_AGE = 10.0  # seconds: older figures mean the gateway is not running


def view_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / VIEW_FILE


def figures_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / GATEWAY_DIR / FIGURES_FILE


def policy_copy_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / GATEWAY_DIR / POLICY_COPY


def replace_file(path: Path, content: str, *, mode: int = 0o600) -> None:
    """Write ``content`` to a temporary file beside ``path`` and rename it over ``path``
    (no fsync: see the module's docstring). Raises OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the view -------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """One ``gateway-view.json``: the instance, when it was written (Unix seconds), the
    keeper's last look (None: Ollama has not answered yet), and what the keeper's own /ready
    decides from for that instance (its times in Unix seconds), so that the gateway's /ready
    answers as the keeper's does."""

    instance: str
    written: float
    observation: Observation | None
    health: InstanceHealth | None = None


def encode_view(view: View) -> str:
    obs = view.observation
    return json.dumps(
        {
            "format": FORMAT,
            "instance": view.instance,
            "written": view.written,
            "observation": None if obs is None else _observation(obs),
            "health": None if view.health is None else _health(view.health),
        },
        separators=(",", ":"),
    )


def _health(h: InstanceHealth) -> dict[str, Any]:
    return {
        "name": h.name,
        "answered": h.answered,
        "pinned": list(h.pinned),
        "extras": list(h.extras),
        "resident": sorted(h.resident),
        "not_installed": sorted(h.not_installed),
        "looked_at": h.looked_at,
        "error": h.error,
        "down_since": h.down_since,
        "loading": h.loading,
        "loading_since": h.loading_since,
        "stalled": h.stalled,
    }


def _decode_health(data: Mapping[str, Any]) -> InstanceHealth:
    def opt_str(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else _str(value, f"health.{key}")

    def opt_num(key: str) -> float | None:
        value = data.get(key)
        return None if value is None else _number(value, f"health.{key}")

    def strs(key: str) -> tuple[str, ...]:
        return tuple(_str(v, f"health.{key}") for v in _list(data.get(key, []), f"health.{key}"))

    return InstanceHealth(
        name=_str(data.get("name"), "health.name"),
        answered=bool(data.get("answered")),
        pinned=strs("pinned"),
        extras=strs("extras"),
        resident=frozenset(strs("resident")),
        not_installed=frozenset(strs("not_installed")),
        looked_at=opt_num("looked_at"),
        error=opt_str("error"),
        down_since=opt_num("down_since"),
        loading=opt_str("loading"),
        loading_since=opt_num("loading_since"),
        stalled=opt_str("stalled"),
    )


def _observation(obs: Observation) -> dict[str, Any]:
    return {
        "at": obs.at.isoformat(),
        "ollama_version": obs.ollama_version,
        "loaded": [
            {
                "name": m.name,
                "size": m.size,
                "size_vram": m.size_vram,
                "digest": m.digest,
                "expires_at": None if m.expires_at is None else m.expires_at.isoformat(),
                "context_length": m.context_length,
            }
            for m in obs.loaded
        ],
        "installed": [
            {
                "name": m.name,
                "size": m.size,
                "digest": m.digest,
                "capabilities": None if m.capabilities is None else list(m.capabilities),
            }
            for m in obs.installed
        ],
        "gpu": obs.gpu.as_json(totals=False),
        "details": {
            name: {
                "capabilities": None if d.capabilities is None else list(d.capabilities),
                "architecture": d.architecture,
                "context_length": d.context_length,
                "block_count": d.block_count,
                "embedding_length": d.embedding_length,
                "head_count": d.head_count,
                "head_count_kv": d.head_count_kv,
                "key_length": d.key_length,
                "value_length": d.value_length,
            }
            for name, d in obs.details.items()
        },
        "footprints": {
            name: {"size": f.size, "size_vram": f.size_vram, "context_length": f.context_length}
            for name, f in obs.footprints.items()
        },
    }


def decode_view(text: str) -> View:
    """The view in ``text``; ValueError for anything else."""
    data = _object(json.loads(text), "view")
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, not {FORMAT}")
    raw = data.get("observation")
    health = data.get("health")
    return View(
        instance=_str(data.get("instance"), "instance"),
        written=_number(data.get("written"), "written"),
        observation=None if raw is None else _decode_observation(_object(raw, "observation")),
        health=None if health is None else _decode_health(_object(health, "health")),
    )


def _decode_observation(data: Mapping[str, Any]) -> Observation:
    gpu = _object(data.get("gpu"), "gpu")
    return Observation(
        at=_time(data.get("at"), "at"),
        ollama_version=_str(data.get("ollama_version"), "ollama_version"),
        loaded=tuple(
            LoadedModel(
                name=_str(m.get("name"), "loaded.name"),
                size=_int(m.get("size"), "loaded.size"),
                size_vram=_int(m.get("size_vram"), "loaded.size_vram"),
                digest=_str(m.get("digest", ""), "loaded.digest"),
                expires_at=None
                if m.get("expires_at") is None
                else _time(m.get("expires_at"), "loaded.expires_at"),
                context_length=_opt_int(m.get("context_length"), "loaded.context_length"),
            )
            for m in _objects(data.get("loaded"), "loaded")
        ),
        installed=tuple(
            InstalledModel(
                name=_str(m.get("name"), "installed.name"),
                size=_int(m.get("size"), "installed.size"),
                digest=_str(m.get("digest", ""), "installed.digest"),
                capabilities=_opt_strs(m.get("capabilities"), "installed.capabilities"),
            )
            for m in _objects(data.get("installed"), "installed")
        ),
        gpu=GpuSnapshot(
            gpus=tuple(
                GpuInfo(
                    index=_int(g.get("index"), "gpu.index"),
                    name=_str(g.get("name"), "gpu.name"),
                    total=_int(g.get("total"), "gpu.total"),
                    used=_int(g.get("used"), "gpu.used"),
                    free=_int(g.get("free"), "gpu.free"),
                    uuid=None if g.get("uuid") is None else _str(g.get("uuid"), "gpu.uuid"),
                )
                for g in _objects(gpu.get("gpus"), "gpu.gpus")
            ),
            error=None if gpu.get("error") is None else _str(gpu.get("error"), "gpu.error"),
        ),
        details={
            _str(name, "details"): ModelDetails(
                name=name,
                capabilities=_opt_strs(d.get("capabilities"), "details.capabilities"),
                architecture=None
                if d.get("architecture") is None
                else _str(d.get("architecture"), "details.architecture"),
                **{
                    key: _opt_int(d.get(key), f"details.{key}")
                    for key in (
                        "context_length",
                        "block_count",
                        "embedding_length",
                        "head_count",
                        "head_count_kv",
                        "key_length",
                        "value_length",
                    )
                },
            )
            for name, d in _object(data.get("details", {}), "details").items()
            if isinstance(d, dict)
        },
        footprints={
            _str(name, "footprints"): Footprint(
                size=_int(f.get("size"), "footprints.size"),
                size_vram=_int(f.get("size_vram"), "footprints.size_vram"),
                context_length=_opt_int(f.get("context_length"), "footprints.context_length"),
            )
            for name, f in _object(data.get("footprints", {}), "footprints").items()
            if isinstance(f, dict)
        },
    )


@dataclass(frozen=True)
class ViewState:
    """What the gateway may use of the view file now: the observation (None: none it can
    trust) and, when none, why (a :class:`Degraded` reason) with a detail for the log."""

    observation: Observation | None
    degraded: str | None = None
    detail: str = ""


def judge(
    view: View | None,
    error: str | None,
    *,
    exists: bool,
    instance: str,
    now: float,
    max_age: float,
) -> ViewState:
    """What the gateway may use of the keeper's view at ``now`` (Unix seconds). Pure."""
    if error is not None:
        return ViewState(None, Degraded.UNREADABLE, error)
    if view is None:
        detail = "the keeper has not written one" if not exists else "empty"
        return ViewState(None, Degraded.NO_VIEW, detail)
    if view.instance != instance:
        return ViewState(
            None,
            Degraded.OTHER_INSTANCE,
            f"it is of instance {view.instance!r}, the gateway fronts {instance!r}",
        )
    age = now - view.written
    if abs(age) > max_age:
        return ViewState(
            None,
            Degraded.STALE,
            f"written {age:.0f} s ago, more than gateway.view_max_age ({max_age:g} s): is "
            "sentinel-keeper running?",
        )
    return ViewState(view.observation)


# -- the figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FiguresFile:
    """One ``gateway/figures.json``: when it was written (Unix seconds), the gateway's pid,
    its figures, and why it runs degraded (None: it does not)."""

    written: float
    pid: int
    figures: GatewayFigures
    degraded: str | None = None


def encode_figures(data: FiguresFile) -> str:
    f = data.figures
    return json.dumps(
        {
            "format": FORMAT,
            "written": data.written,
            "pid": data.pid,
            "degraded": data.degraded,
            "instance": f.instance,
            "up": f.up,
            "requests": [[*key, n] for key, n in f.requests.items()],
            "cold": [[*key, n] for key, n in f.cold.items()],
            "ttfb": {
                model: {"bounds": list(h.bounds), "counts": list(h.counts), "total": h.total}
                for model, h in f.ttfb.items()
            },
            "changes": [[*key, n] for key, n in f.changes.items()],
            "recent": {model: [r.requests, r.cold] for model, r in f.recent.items()},
            "reloads": [[*key, n] for key, n in f.reloads.items()],
        },
        separators=(",", ":"),
    )


def decode_figures(text: str) -> FiguresFile:
    data = _object(json.loads(text), "figures")
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, not {FORMAT}")

    def keyed(name: str, width: int) -> dict[tuple[str, ...], int]:
        out: dict[tuple[str, ...], int] = {}
        for row in _list(data.get(name), name):
            if not isinstance(row, list) or len(row) != width + 1:
                raise ValueError(f"{name}: {row!r}")
            out[tuple(_str(k, name) for k in row[:width])] = _int(row[width], name)
        return out

    ttfb = {
        _str(model, "ttfb"): Histogram(
            tuple(_number(b, "ttfb.bounds") for b in _list(h.get("bounds"), "ttfb.bounds")),
            tuple(_int(c, "ttfb.counts") for c in _list(h.get("counts"), "ttfb.counts")),
            _number(h.get("total"), "ttfb.total"),
        )
        for model, h in _object(data.get("ttfb"), "ttfb").items()
        if isinstance(h, dict)
    }
    recent = {}
    for model, pair in _object(data.get("recent"), "recent").items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"recent: {pair!r}")
        recent[_str(model, "recent")] = Recent(_int(pair[0], "recent"), _int(pair[1], "recent"))
    figures = GatewayFigures(
        instance=_str(data.get("instance"), "instance"),
        up=bool(data.get("up")),
        requests=keyed("requests", 3),  # type: ignore[arg-type]
        cold=keyed("cold", 2),  # type: ignore[arg-type]
        ttfb=ttfb,
        changes=keyed("changes", 2),  # type: ignore[arg-type]
        recent=recent,
        reloads=keyed("reloads", 2),  # type: ignore[arg-type]
    )
    degraded = data.get("degraded")
    return FiguresFile(
        written=_number(data.get("written"), "written"),
        pid=_int(data.get("pid"), "pid"),
        figures=figures,
        degraded=None if degraded is None else _str(degraded, "degraded"),
    )


def live_figures(text: str | None, *, instance: str, now: float) -> FiguresFile | None:
    """The figures file as the keeper exports it (None: no gateway ever wrote one for this
    instance, or it cannot be read); one older than :data:`FIGURES_MAX_AGE` says the gateway
    is down (its counts stay: counters do not vanish)."""
    if text is None:
        return None
    try:
        data = decode_figures(text)
    except ValueError:
        return None
    if data.figures.instance != instance:
        return None
    figures = replace(data.figures, degraded=data.degraded)
    if now - data.written > FIGURES_MAX_AGE:
        figures = replace(figures, up=False, degraded=None)
    return replace(data, figures=figures)


# -- shapes ---------------------------------------------------------------------------------


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: not an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: not a list")
    return value


def _objects(value: object, what: str) -> list[dict[str, Any]]:
    return [_object(v, what) for v in _list(value, what)]


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: not a string")
    return value


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: not an integer")
    return value


def _opt_int(value: object, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: not a number")
    return float(value)


def _opt_strs(value: object, what: str) -> tuple[str, ...] | None:
    return None if value is None else tuple(_str(v, what) for v in _list(value, what))


def _time(value: object, what: str) -> datetime:
    moment = datetime.fromisoformat(_str(value, what))
    if moment.tzinfo is None:
        raise ValueError(f"{what}: no time zone")
    return moment
