"""Wires the real edges (Ollama over HTTP, NVML, the state directory) into a Reconciler.
The CLI's one-shot commands and the daemon build their pass the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sentinel_keeper.act.reconcile import Reconciler
from sentinel_keeper.act.state import StateStore
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy import Policy


def make_client(policy: Policy) -> OllamaClient:
    return OllamaClient(
        policy.ollama.url,
        timeout=policy.ollama.request_timeout,
        load_timeout=policy.ollama.load_timeout,
    )


@contextmanager
def open_reconciler(policy: Policy, state_dir: str | None) -> Iterator[Reconciler]:
    """A Reconciler on real I/O; the HTTP client and NVML are closed on exit."""
    client = make_client(policy)
    gpu = GpuProbe(policy.vram.gpu_selection)
    try:
        yield Reconciler(
            policy,
            client,
            gpu=gpu,
            state=StateStore(state_dir) if state_dir else None,
        )
    finally:
        client.close()
        gpu.close()
