"""What the benchmarks share: the Ollama double's model set and timings, the daemon as a
subprocess with a real NOTIFY_SOCKET, and /proc readings of its memory and CPU.

The benchmarks run from the root of a checkout (``python -m benchmarks.NAME``): the Ollama
double and the daemon's harness come from the tests' support package (tests/support), the
same that the tests use; sentinel-keeper from the checkout (or the installed package).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sentinel_keeper.policy.schema import ReloadBackoffSection
from tests.support import ollama_double
from tests.support.daemon import DaemonProcess, NotifySocket
from tests.support.ollama_double import FakeModel, GiB, MiB

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["DaemonProcess", "NotifySocket"]  # the benchmarks' daemon is the tests' one

# The double's timings, after the measurements quoted in the README (a warm first token in
# about 500 ms, cold loads of 1.2 to 15 s growing with the model's size). A load takes
# LOAD_SECONDS + LOAD_SECONDS_PER_GIB * the bytes Ollama predicts for it (weights, KV cache,
# compute graph): 1.3 s for llama3.2:1b at num_ctx 2048, 15.7 s for gemma3:27b at 4096.
LOAD_SECONDS = 0.2
LOAD_SECONDS_PER_GIB = 0.8
FIRST_TOKEN_SECONDS = 0.5
TOKEN_SECONDS = 0.03
VRAM = 24 * GiB


@dataclass(frozen=True)
class PinnedModel:
    model: FakeModel
    num_ctx: int


PINNED = (
    PinnedModel(
        FakeModel(
            "llama3.2:1b",
            size=1300 * MiB,
            block_count=16,
            head_count_kv=8,
            embedding_length=2048,
            head_count=32,
            parameter_size="1.2B",
        ),
        2048,
    ),
    PinnedModel(
        FakeModel(
            "qwen2.5-coder:7b",
            size=4700 * MiB,
            family="qwen2",
            block_count=28,
            head_count_kv=4,
            embedding_length=3584,
            head_count=28,
            context_length=32768,
            parameter_size="7.6B",
        ),
        8192,
    ),
    PinnedModel(
        FakeModel(
            "qwen2.5:14b",
            size=9 * GiB,
            family="qwen2",
            block_count=48,
            head_count_kv=8,
            embedding_length=5120,
            head_count=40,
            context_length=32768,
            parameter_size="14.8B",
        ),
        8192,
    ),
)
# A model no policy names, which someone else's client loads now and then.
FOREIGN = FakeModel(
    "gemma3:27b",
    size=16 * GiB,
    family="gemma3",
    block_count=62,
    head_count_kv=16,
    embedding_length=5376,
    head_count=32,
    parameter_size="27.4B",
)
FOREIGN_NUM_CTX = 4096


def make_double(
    *, keep_alive: str | None, time_scale: float, vram: int = VRAM
) -> ollama_double.OllamaDouble:
    """A double with the pinned models and the foreign one installed, the benchmark's timings
    and ``OLLAMA_KEEP_ALIVE`` = ``keep_alive`` (None: Ollama's 5m default)."""
    return ollama_double.OllamaDouble(
        [p.model for p in PINNED] + [FOREIGN],
        vram_total=vram,
        keep_alive=keep_alive,
        load_seconds=LOAD_SECONDS,
        load_seconds_per_gib=LOAD_SECONDS_PER_GIB,
        first_token_seconds=FIRST_TOKEN_SECONDS,
        token_seconds=TOKEN_SECONDS,
        time_scale=time_scale,
    )


def quiet_double_errors() -> None:
    """The double's HTTP server prints a traceback for every connection a restart cuts; a
    benchmark expects those (the clients retry), so they are not printed."""

    def handle_error(self: object, request: object, client_address: object) -> None:
        return

    ollama_double._Server.handle_error = handle_error  # type: ignore[method-assign]


def format_seconds(seconds: float) -> str:
    """A duration for a policy file: whole milliseconds ("125ms")."""
    return f"{max(round(seconds * 1000), 1)}ms"


def write_policy(
    path: Path,
    url: str,
    *,
    interval: float,
    models: Sequence[PinnedModel] = PINNED,
    ready: str = "pinned",
    metrics: str | None = None,
    time_scale: float = 1.0,
    backoff_after: int | None = None,
    gateway: Sequence[str] = (),
    vram_budget: int | None = None,
) -> Path:
    """``metrics``: the listen address of the metrics endpoint, None to turn it off.
    ``gateway``: the lines of a ``gateway:`` section (``listen: 127.0.0.1:PORT``...), none:
    no gateway. ``vram_budget``: the ``vram.budget`` in bytes (the GPU memory the gateway's
    foreign rule reckons with where there is no NVML, as here).
    ``time_scale``: the daemon runs against a double that many times faster than real time,
    so the policy's durations about Ollama's clock (the reload back-off's) are divided by it,
    as the interval is by the caller. ``backoff_after``: the reload back-off's ``after``."""
    backoff = ReloadBackoffSection()
    lines = [
        f"metrics: {{listen: {metrics or 'null'}}}",
        "reload_backoff:",
        f"  after: {backoff.after if backoff_after is None else backoff_after}",
        f"  within: {format_seconds(backoff.within / time_scale)}",
        f"  cool_down: {format_seconds(backoff.cool_down / time_scale)}",
        f"  quiet: {format_seconds(backoff.quiet / time_scale)}",
        "ollama:",
        f"  url: {url}",
        "  keep_alive: -1",
        "  request_timeout: 5s",
        "  load_timeout: 2m",
        f"interval: {format_seconds(interval)}",
        f"ready: {ready}",
        "startup_timeout: 2m",
        "models:",
    ]
    for pinned in models:
        lines.append(f"  - name: {pinned.model.name}")
        lines.append(f"    options: {{num_ctx: {pinned.num_ctx}}}")
    if vram_budget is not None:
        lines += ["vram:", f"  budget: {vram_budget}"]
    if gateway:
        lines.append("gateway:")
        lines += [f"  {line}" for line in gateway]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def temp_workdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)


def machine_note() -> str:
    """CPU count and load, for the record: timings on a busy machine are noisy."""
    try:
        load = os.getloadavg()
    except OSError:
        return f"{os.cpu_count()} CPUs"
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def code_version() -> str:
    """The checkout's commit, "+changes" when the work tree differs from it: the daemon
    measured is the code in this checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "sentinel_keeper"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit}{' +changes in sentinel_keeper/' if dirty else ''}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (the value below which ``fraction`` of the values fall)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]
