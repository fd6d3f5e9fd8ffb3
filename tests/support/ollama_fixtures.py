"""Models and helpers shared by the tests of the Ollama double and of the Ollama client.

Fixtures themselves live in each test module; this module only builds things.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta, timezone
from typing import Any

import httpx

from tests.support.ollama_double import FakeModel, GiB, ManualClock, MiB, OllamaDouble

# A fixed offset so that every expires_at crosses the wire with "+02:00", not "Z".
PLUS_TWO = timezone(timedelta(hours=2))

LLAMA = FakeModel(
    "llama3.2:1b",
    size=1_300_000_000,
    family="llama",
    capabilities=("completion", "tools"),
    block_count=16,
    head_count_kv=8,
    embedding_length=2048,
    head_count=32,
    context_length=131072,
    parameter_size="1.2B",
)
# An embedding-only model with round figures (the CLI and bench tests), and as /api/tags
# shows the real one.
NOMIC = FakeModel(
    "nomic-embed-text:latest",
    size=270 * MiB,
    family="nomic-bert",
    capabilities=("embedding",),
    block_count=12,
    head_count_kv=12,
    embedding_length=768,
    head_count=12,
    context_length=2048,
)
EMBED = replace(NOMIC, size=274_302_450, parameter_size="137M", quantization_level="F16")
# The CLI tests' three models: round sizes, the small qwen's real KV cache shape.
CLI_MODELS = (
    FakeModel("llama3.2:1b", size=1300 * MiB),
    NOMIC,
    FakeModel(
        "qwen2.5:0.5b",
        size=400 * MiB,
        block_count=24,
        head_count_kv=2,
        embedding_length=896,
        head_count=14,
    ),
)


def tiny(name: str, size: int, **kw: Any) -> FakeModel:
    """A model whose KV cache is negligible (1 MiB at num_ctx 4096): sizes are easy to
    reason about in memory tests."""
    base: dict[str, Any] = {
        "block_count": 1,
        "head_count_kv": 1,
        "embedding_length": 64,
        "head_count": 1,
        "context_length": 8192,
    }
    base.update(kw)
    return FakeModel(name, size=size, **base)


def make_double(models: Iterable[FakeModel] = (LLAMA, EMBED), **kw: Any) -> OllamaDouble:
    kw.setdefault("vram_total", 8 * GiB)
    kw.setdefault("clock", ManualClock(1_800_000_000.0))
    kw.setdefault("tz", PLUS_TWO)
    return OllamaDouble(models, **kw)


# One plain HTTP client for raw requests (building one per call costs an SSL context).
_HTTP = httpx.Client(trust_env=False)


def post(double: OllamaDouble, path: str, body: Any, timeout: float = 5.0) -> httpx.Response:
    """A raw POST, JSON body (or raw bytes), no client library logic in the way."""
    if isinstance(body, bytes):
        return _HTTP.post(
            double.url + path,
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )
    return _HTTP.post(double.url + path, json=body, timeout=timeout)


def get(double: OllamaDouble, path: str, timeout: float = 5.0) -> httpx.Response:
    return _HTTP.get(double.url + path, timeout=timeout)


def ps_names(double: OllamaDouble) -> list[str]:
    return [m["name"] for m in get(double, "/api/ps").json()["models"]]
