"""The gateway in this process, in front of the Ollama double: a policy file, the
:class:`Gateway` the daemon would drive, its log events, and the keeper's view fed by hand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sentinel_keeper.gateway.runner import Gateway
from sentinel_keeper.observe.observation import (
    GpuInfo,
    GpuSnapshot,
    InstalledModel,
    LoadedModel,
    Observation,
)
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import load_policy
from sentinel_keeper.report.logevent import LogEvent
from tests.support.daemon import free_port
from tests.support.ollama_double import OllamaDouble

PINNED = "llama3.2:1b"
FOREIGN = "big:13b"


def observe(double: OllamaDouble, *, free: int) -> Observation:
    """What a pass would have seen of ``double`` with ``free`` bytes of GPU memory free."""
    loaded = tuple(
        LoadedModel(i.name, i.size, i.size_vram, context_length=i.num_ctx) for i in double.loaded()
    )
    installed = tuple(InstalledModel(m.name, m.size) for m in double.installed())
    total = double.vram_total
    gpu = GpuSnapshot(gpus=(GpuInfo(0, "GPU zero", total, total - free, free),))
    return Observation(
        at=datetime.now(UTC),
        ollama_version=double.version,
        loaded=loaded,
        installed=installed,
        gpu=gpu,
    )


@dataclass
class Running:
    gateway: Gateway
    policy: Policy
    events: list[LogEvent]
    double: OllamaDouble

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def feed(self, *, free: int) -> None:
        self.gateway.update(self.policy, observe(self.double, free=free))

    def named(self, event: str) -> list[LogEvent]:
        return [e for e in self.events if e.event == event]


def write_policy(
    path: Path, ollama_url: str, *, port: int | None = None, gateway: str = "", models: str = ""
) -> Path:
    port = port or free_port()
    models = models or f"  - name: {PINNED}\n    options:\n      num_ctx: 8192\n"
    path.write_text(
        f"ollama:\n  url: {ollama_url}\n"
        f"models:\n{models}"
        f"gateway:\n  listen: 127.0.0.1:{port}\n{gateway}"
    )
    return path


@contextmanager
def running_gateway(
    double: OllamaDouble,
    tmp: Path,
    *,
    gateway: str = "",
    header_timeout: float = 60.0,
    upstream: str | None = None,
) -> Iterator[Running]:
    policy = load_policy(
        str(write_policy(tmp / "policy.yaml", upstream or double.url, gateway=gateway))
    )
    events: list[LogEvent] = []
    made = Gateway(policy, events.append, header_timeout=header_timeout)
    made.update(policy, None)
    assert made.port is not None, events
    try:
        yield Running(made, policy, events, double)
    finally:
        made.stop()
