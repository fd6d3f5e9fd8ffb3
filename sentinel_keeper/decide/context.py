"""The context length a client gets when it sends no num_ctx, and lining the pinned models up
with it. Pure.

Ollama reloads a model for a request whose num_ctx differs from the loaded instance's, and a
request that sends none (every OpenAI-compatible /v1 request, many clients) asks for Ollama's
default: OLLAMA_CONTEXT_LENGTH, else an automatic value by total GPU memory. A model pinned
with another num_ctx than that default is reloaded by each such request (and, without the
reload back-off, reloaded back by the keeper). ``ollama.align_context: true`` writes the
pinned models' num_ctx into the drop-in as OLLAMA_CONTEXT_LENGTH when they all agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sentinel_keeper.policy import Policy

CONTEXT_LENGTH = "OLLAMA_CONTEXT_LENGTH"
HOST = "OLLAMA_HOST"
# Without num_ctx or OLLAMA_CONTEXT_LENGTH, Ollama picks the default context by total VRAM
# (server/sched.go): at least this much memory, this context; below the last, 4096.
OLLAMA_NUM_CTX_BY_VRAM = ((47 * 1024**3, 262144), (23 * 1024**3, 32768))
OLLAMA_DEFAULT_NUM_CTX = 4096
AUTOMATIC_TEXT = "4096 below 23 GiB of GPU memory, 32768 below 47 GiB, else 262144"


def automatic_num_ctx(total_vram: int | None) -> int:
    """Ollama's automatic num_ctx for this much GPU memory (unknown: the smallest)."""
    if total_vram is not None:
        for least, ctx in OLLAMA_NUM_CTX_BY_VRAM:
            if total_vram >= least:
                return ctx
    return OLLAMA_DEFAULT_NUM_CTX


@dataclass(frozen=True)
class Alignment:
    """What ``ollama.align_context`` makes of the policy: the OLLAMA_CONTEXT_LENGTH to write,
    or why there is none."""

    value: int | None = None
    problem: str | None = None  # set when align_context is on and nothing can be written


def alignment(policy: Policy) -> Alignment:
    if not policy.ollama.align_context:
        return Alignment()
    wanted: dict[int, list[str]] = {}
    for model in policy.pinned:
        if model.options.num_ctx is not None:
            wanted.setdefault(model.options.num_ctx, []).append(model.name)
    if not wanted:
        return Alignment(
            problem="align_context: no pinned model sets options.num_ctx, so there is nothing "
            "to align Ollama's default to; OLLAMA_CONTEXT_LENGTH is not written"
        )
    if len(wanted) > 1:
        each = "; ".join(f"{ctx} for {', '.join(names)}" for ctx, names in sorted(wanted.items()))
        return Alignment(
            problem=f"align_context: the pinned models want different num_ctx ({each}), and "
            "one OLLAMA_CONTEXT_LENGTH cannot suit them all, so it is not written; give them "
            "the same options.num_ctx, or let clients send the one each needs"
        )
    return Alignment(value=next(iter(wanted)))


def environment(policy: Policy) -> dict[str, str]:
    """The OLLAMA_* variables the drop-in sets besides OLLAMA_KEEP_ALIVE: the policy's
    ``ollama.environment``, plus OLLAMA_CONTEXT_LENGTH when ``align_context`` can set it, plus
    OLLAMA_HOST (``gateway.upstream``) on the instance the gateway takes over."""
    out = dict(policy.ollama.environment)
    aligned = alignment(policy).value
    if aligned is not None and CONTEXT_LENGTH not in out:
        out[CONTEXT_LENGTH] = str(aligned)
    upstream = policy.takeover
    if upstream is not None:
        out[HOST] = str(upstream)  # the file cannot set it as well (policy.loading)
    return out


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ClientDefault:
    """What a client sending no num_ctx gets: ``value`` (None: it depends on GPU memory,
    which is unknown here) and where it comes from, for people."""

    value: int | None
    source: str


def client_default(policy: Policy, total_vram: int | None) -> ClientDefault:
    env = _int(environment(policy).get(CONTEXT_LENGTH))
    if env:
        how = "align_context" if CONTEXT_LENGTH not in policy.ollama.environment else "environment"
        return ClientDefault(env, f"OLLAMA_CONTEXT_LENGTH from {policy.instance_key}.{how}")
    if total_vram is None:
        return ClientDefault(None, f"Ollama's automatic value: {AUTOMATIC_TEXT}")
    gib = total_vram / 1024**3
    return ClientDefault(
        automatic_num_ctx(total_vram), f"Ollama's automatic value for {gib:.0f} GiB of GPU memory"
    )


@dataclass(frozen=True)
class Mismatch:
    model: str
    num_ctx: int  # the policy's
    default: ClientDefault
    key: str = "ollama"  # where the instance's settings are: "ollama" or "instances[1]"


def mismatches(
    policy: Policy, total_vram: int | None, trained: Mapping[str, int] | None = None
) -> tuple[Mismatch, ...]:
    """Pinned models whose num_ctx differs from what a client sending none gets (both capped
    at the model's trained context where ``trained`` says it). With the default unknown, a
    model is listed unless its num_ctx is one of the automatic values."""
    default = client_default(policy, total_vram)
    key = policy.instance_key
    automatic = {OLLAMA_DEFAULT_NUM_CTX, *(ctx for _, ctx in OLLAMA_NUM_CTX_BY_VRAM)}
    out = []
    for model in policy.pinned:
        wanted = model.options.num_ctx
        if wanted is None:
            continue  # automatic on both sides: they match
        cap = (trained or {}).get(model.name)
        if default.value is None:
            if wanted not in automatic:
                out.append(Mismatch(model.name, wanted, default, key))
            continue
        if min(wanted, cap or wanted) != min(default.value, cap or default.value):
            out.append(Mismatch(model.name, wanted, default, key))
    return tuple(out)


def advice(mismatch: Mismatch) -> str:
    """One line for `check` and `status`."""
    default = mismatch.default
    gets = f"{default.value} ({default.source})" if default.value else default.source
    return (
        f"{mismatch.model}: options.num_ctx {mismatch.num_ctx} differs from what a client "
        f"that sends no num_ctx gets, {gets}: each such request (every /v1 one) reloads it. "
        f"Set {mismatch.key}.align_context: true (OLLAMA_CONTEXT_LENGTH={mismatch.num_ctx} in the "
        "drop-in), or the num_ctx your clients get"
    )
