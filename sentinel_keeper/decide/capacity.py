"""What Ollama will do with memory and model counts: how many models it keeps loaded, how much
GPU memory a model takes once loaded, the context it loads it with, and when it loads a model
beside others rather than evicting one. Pure: the planner, the gateway, the metrics and bench
read these facts here, so that they never disagree about them.
"""

from __future__ import annotations

from sentinel_keeper.decide import context
from sentinel_keeper.observe.observation import ModelDetails, Observation
from sentinel_keeper.policy import ModelPolicy, Policy

# Ollama lets a new model join loaded ones only if its predicted size is at most this share
# of the free VRAM; otherwise it evicts (see shared ollama-facts, server/sched.go).
OLLAMA_FIT_SHARE = 0.8
OLLAMA_MODELS_PER_GPU = 3
# Ollama's automatic num_batch grows with the context, and the compute graph with it.
BATCH_SURCHARGE = ((32768, 2 * 1024**3), (4096, 768 * 1024**2))
# Without a remembered size or architecture details, assume this share of the file size
# for the KV cache and compute graph.
UNKNOWN_ARCH_OVERHEAD = 0.25
GRAPH_OVERHEAD = 0.10
KV_BYTES_PER_VALUE = 2  # f16 cache, Ollama's default OLLAMA_KV_CACHE_TYPE


def environment_int(policy: Policy, name: str) -> int | None:
    """A variable of Ollama's environment as the drop-in sets it (align_context included)."""
    value = context.environment(policy).get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def max_loaded_models(policy: Policy, observation: Observation) -> int:
    """How many models Ollama keeps loaded before it evicts one, whoever loaded it:
    OLLAMA_MAX_LOADED_MODELS from the policy, else Ollama's default (server/sched.go,
    ``defaultModelsPerGPU * max(len(gpus), 1)``): 3 per GPU, and 3 with no GPU. When NVML
    cannot see the GPUs, 3 is the most a keeper can count on: never "no limit"."""
    configured = environment_int(policy, "OLLAMA_MAX_LOADED_MODELS")
    if configured and configured > 0:
        return configured
    gpus = len(observation.gpu.gpus) if observation.gpu.known else 0
    return OLLAMA_MODELS_PER_GPU * max(gpus, 1)


def expected_footprint(model: ModelPolicy, policy: Policy, observation: Observation) -> int | None:
    """Bytes the model will take once loaded: what /api/ps showed the last time it was loaded
    with this context length, else an estimate from its file size and KV cache."""
    remembered = observation.footprints.get(model.name)
    wanted_ctx = model.options.num_ctx
    if remembered is not None and (wanted_ctx is None or remembered.context_length == wanted_ctx):
        return remembered.size
    installed = observation.installed_by_name().get(model.name)
    if installed is None:
        return None
    disk = installed.size
    details = observation.details.get(model.name)
    parallel = environment_int(policy, "OLLAMA_NUM_PARALLEL") or 1
    if details is not None and details.embedding_only:
        parallel = 1  # Ollama runs embedding models with one slot
    ctx = (
        wanted_ctx
        or environment_int(policy, "OLLAMA_CONTEXT_LENGTH")
        or default_num_ctx(observation)
    )
    if details is not None and details.context_length:
        ctx = min(ctx, details.context_length)
    surcharge = next((extra for above, extra in BATCH_SURCHARGE if ctx * parallel > above), 0)
    if details is None or not (details.block_count and details.head_count_kv):
        return int(disk * (1 + UNKNOWN_ARCH_OVERHEAD))
    head_dim_k = details.key_length or (
        details.embedding_length // details.head_count
        if details.embedding_length and details.head_count
        else None
    )
    head_dim_v = details.value_length or head_dim_k
    if head_dim_k is None or head_dim_v is None:
        return int(disk * (1 + UNKNOWN_ARCH_OVERHEAD))
    kv = (
        details.block_count
        * ctx
        * parallel
        * details.head_count_kv
        * (head_dim_k + head_dim_v)
        * KV_BYTES_PER_VALUE
    )
    return int(disk * (1 + GRAPH_OVERHEAD)) + kv + surcharge


def default_num_ctx(observation: Observation) -> int:
    """Ollama's automatic num_ctx: by total VRAM when NVML knows it, else the smallest."""
    return context.automatic_num_ctx(observation.gpu.total)


def expected_context_length(model: ModelPolicy, details: ModelDetails | None) -> int | None:
    """The context_length /api/ps shows for the policy's num_ctx (None: the policy sets none):
    Ollama caps num_ctx at the model's trained context length (from /api/show's ``details``),
    so a larger num_ctx shows (and matches) as that."""
    wanted = model.options.num_ctx
    if wanted is None:
        return None
    trained = details.context_length if details is not None else None
    return trained if trained and trained < wanted else wanted


def fits_beside_loaded(need: int, free: int) -> bool:
    """Whether Ollama loads a model needing ``need`` bytes beside the loaded ones with ``free``
    bytes of GPU memory free, rather than evicting one first."""
    return need <= OLLAMA_FIT_SHARE * free
