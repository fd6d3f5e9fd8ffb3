"""One planning pass (sentinel_keeper.decide.plan.plan) over a synthetic observation of 100 policy
models and 8 GPUs, timed with timeit.

    python -m benchmarks.plan_pass --seed 1

Two worlds, each with 60 pinned models and 40 extras, all installed with architecture
details, a third of the extras loaded, and 8 GPUs of 24 GiB with random use:

- ``settled``: every pinned model loaded, one in five with a keep_alive a client shortened,
  so the pass goes on to place the extras that are missing (fit checks for each);
- ``disturbed``: a tenth of the pinned models not loaded and a tenth loaded with another
  num_ctx, so the extras wait for the pinned models.

Prints the time per pass (best and median of the repeats) and what the pass planned.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import timeit
from collections.abc import Sequence

from benchmarks import _harness
from sentinel_keeper.decide.plan import plan
from sentinel_keeper.observe.observation import LoadedModel, ModelDetails, Observation
from sentinel_keeper.policy import Policy
from tests.support.planning import NOW, GiB, gpus, installed, loaded, policy


def world(
    seed: int, models: int = 100, gpu_count: int = 8, *, disturbed: bool
) -> tuple[Policy, Observation]:
    rng = random.Random(seed)  # noqa: S311 (a reproducible world, not a secret)
    entries = []
    for i in range(models):
        entry: dict[str, object] = {
            "name": f"model{i:03d}:{rng.choice(['1b', '3b', '7b', '14b'])}",
            "options": {"num_ctx": rng.choice([2048, 4096, 8192])},
        }
        if i >= models * 6 // 10:
            entry["tier"] = "extra"
            entry["priority"] = rng.randint(0, 20)
        entries.append(entry)
    the_policy = policy(
        *entries,
        vram={"headroom": "512MiB"},
        ollama={"environment": {"OLLAMA_MAX_LOADED_MODELS": 128}},
    )
    loaded_models: list[LoadedModel] = []
    details: dict[str, ModelDetails] = {}
    for model in the_policy.models:
        size = rng.randint(1, 9) * GiB
        details[model.name] = ModelDetails(
            name=model.name,
            capabilities=("completion",),
            architecture="llama",
            context_length=32768,
            block_count=32,
            embedding_length=4096,
            head_count=32,
            head_count_kv=8,
        )
        roll = rng.random()
        ctx = model.options.num_ctx
        if model.pinned:
            if roll < 0.8:
                loaded_models.append(loaded(model.name, size, ctx=ctx))
            elif roll < 0.9 or not disturbed:
                loaded_models.append(loaded(model.name, size, expires_in=240, ctx=ctx))
            elif roll < 0.95:
                loaded_models.append(loaded(model.name, size, ctx=(ctx or 2048) * 2))
        elif roll < 0.33:
            loaded_models.append(loaded(model.name, size, expires_in=1800, ctx=ctx))
    installs = tuple(installed(m.name, rng.randint(1, 9) * GiB) for m in the_policy.models)
    free_total = tuple((rng.randint(0, 20) * GiB, 24 * GiB) for _ in range(gpu_count))
    observation = Observation(
        at=NOW,
        ollama_version="0.33.0",
        loaded=tuple(loaded_models),
        installed=installs,
        gpu=gpus(*free_total),
        details=details,
    )
    return the_policy, observation


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--repeat", type=int, default=7, help="timeit repeats (default 7)")
    args = p.parse_args(argv)
    print(
        f"plan() over {args.models} policy models and {args.gpus} GPUs "
        f"(Python {sys.version.split()[0]}; {_harness.machine_note()}):"
    )
    for name in ("settled", "disturbed"):
        the_policy, observation = world(
            args.seed, args.models, args.gpus, disturbed=name == "disturbed"
        )
        result = plan(the_policy, observation, NOW)
        kinds: dict[str, int] = {}
        for action in result.actions:
            kinds[action.kind.value] = kinds.get(action.kind.value, 0) + 1
        timer = timeit.Timer(functools.partial(plan, the_policy, observation, NOW))
        number, _ = timer.autorange()
        runs = [t / number for t in timer.repeat(repeat=args.repeat, number=number)]
        planned = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "nothing"
        best, median = min(runs) * 1e3, statistics.median(runs) * 1e3
        print(
            f"  {name:<9} {len(observation.loaded)} loaded; planned {planned}; "
            f"{len(result.findings)} findings: best {best:.2f} ms, median {median:.2f} ms per "
            f"pass ({args.repeat} repeats of {number})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
