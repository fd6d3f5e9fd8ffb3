"""The planner, case by case: a pure function of (policy, observation, now)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_keeper.decide.capacity import (
    default_num_ctx,
    expected_context_length,
    expected_footprint,
)
from sentinel_keeper.decide.plan import ActionKind, FindingKind, Plan, plan
from sentinel_keeper.observe.observation import Footprint, ModelDetails
from tests.support.planning import (
    NOW,
    UNKNOWN_GPU,
    GiB,
    MiB,
    gpus,
    installed,
    loaded,
    observation,
    policy,
)

PINNED: dict[str, object] = {"name": "llama3.2:1b", "options": {"num_ctx": 2048}}


def kinds(result: Plan) -> list[tuple[str, str]]:
    return [(a.kind.value, a.model) for a in result.actions]


def finding_kinds(result: Plan) -> list[tuple[str, str | None]]:
    return [(f.kind.value, f.model) for f in result.findings]


# --- pinned models ------------------------------------------------------------------------


def test_absent_pinned_model_is_loaded_with_its_options_and_forever() -> None:
    result = plan(policy(PINNED), observation(installed_models=(installed("llama3.2:1b"),)), NOW)
    (action,) = result.actions
    assert action.kind is ActionKind.LOAD
    assert action.model == "llama3.2:1b"
    assert dict(action.options) == {"num_ctx": 2048}
    assert action.keep_alive == -1
    assert action.endpoint == "generate"
    assert "not loaded" in action.reason


def test_resident_forever_pinned_model_needs_nothing() -> None:
    obs = observation(loaded_models=(loaded("llama3.2:1b", ctx=2048),))
    assert plan(policy(PINNED), obs, NOW) == Plan()


def test_shortened_keep_alive_is_reasserted_with_the_same_options() -> None:
    obs = observation(loaded_models=(loaded("llama3.2:1b", ctx=2048, expires_in=300),))
    (action,) = plan(policy(PINNED), obs, NOW).actions
    assert action.kind is ActionKind.REASSERT
    assert dict(action.options) == {"num_ctx": 2048}
    assert action.keep_alive == -1
    assert "expires in 5m" in action.reason


def test_expired_but_still_listed_model_is_reasserted() -> None:
    obs = observation(loaded_models=(loaded("llama3.2:1b", ctx=2048, expires_in=-3),))
    (action,) = plan(policy(PINNED), obs, NOW).actions
    assert action.kind is ActionKind.REASSERT
    assert "already expired" in action.reason


def test_other_context_length_is_reloaded_and_names_the_loaded_one() -> None:
    obs = observation(loaded_models=(loaded("llama3.2:1b", ctx=4096, expires_in=300),))
    (action,) = plan(policy(PINNED), obs, NOW).actions
    assert action.kind is ActionKind.RELOAD
    assert dict(action.options) == {"num_ctx": 2048}
    assert action.keep_alive == -1
    assert "num_ctx 4096" in action.reason
    assert "another num_ctx" in action.reason


@pytest.mark.parametrize(
    ("policy_ctx", "loaded_ctx"),
    [(None, 8192), (2048, None), (None, None)],
    ids=["policy-automatic", "old-ollama-no-context-length", "both-unknown"],
)
def test_context_length_is_compared_only_when_both_sides_know_it(
    policy_ctx: int | None, loaded_ctx: int | None
) -> None:
    entry = {"name": "llama3.2:1b", "options": {"num_ctx": policy_ctx} if policy_ctx else {}}
    obs = observation(loaded_models=(loaded("llama3.2:1b", ctx=loaded_ctx),))
    assert plan(policy(entry), obs, NOW).actions == ()


def test_num_ctx_above_the_trained_context_matches_the_capped_instance() -> None:
    # Ollama caps num_ctx at the trained context length: /api/ps then shows the cap, and a
    # request with the policy's larger num_ctx would not reload. No reload loop either here.
    details = {"llama3.2:1b": ModelDetails(name="llama3.2:1b", context_length=1024)}
    capped = observation(loaded_models=(loaded("llama3.2:1b", ctx=1024),), details=details)
    assert plan(policy(PINNED), capped, NOW).actions == ()
    other = observation(loaded_models=(loaded("llama3.2:1b", ctx=512),), details=details)
    (action,) = plan(policy(PINNED), other, NOW).actions
    assert action.kind is ActionKind.RELOAD
    assert "policy says 1024" in action.reason


@pytest.mark.parametrize(
    ("num_ctx", "trained", "expected"),
    [
        (None, 8192, None),  # the policy sets no num_ctx: nothing to compare
        (2048, None, 2048),  # /api/show did not answer: the policy's own
        (2048, 0, 2048),  # no trained length known
        (2048, 8192, 2048),
        (8192, 8192, 8192),
        (32768, 8192, 8192),  # capped at the trained length, as /api/ps shows it
    ],
)
def test_expected_context_length(
    num_ctx: int | None, trained: int | None, expected: int | None
) -> None:
    entry = {"name": "m:1b", "options": {"num_ctx": num_ctx} if num_ctx else {}}
    details = None if trained is None else ModelDetails(name="m:1b", context_length=trained)
    model = policy(entry).model("m:1b")
    assert model is not None
    assert expected_context_length(model, details) == expected


def test_model_without_expiry_information_is_left_alone() -> None:
    model = loaded("llama3.2:1b", ctx=2048)
    obs = observation(loaded_models=(model.__class__(**{**model.__dict__, "expires_at": None}),))
    assert plan(policy(PINNED), obs, NOW).actions == ()


def test_not_installed_pinned_model_is_reported_not_pulled() -> None:
    result = plan(policy(PINNED), observation(installed_models=()), NOW)
    assert result.actions == ()
    assert finding_kinds(result) == [("model_not_installed", "llama3.2:1b")]
    assert "ollama pull llama3.2:1b" in result.findings[0].message


def test_pull_true_pulls_then_loads() -> None:
    result = plan(policy({**PINNED, "pull": True}), observation(installed_models=()), NOW)
    assert kinds(result) == [("pull", "llama3.2:1b"), ("load", "llama3.2:1b")]


def test_spilled_pinned_model_is_a_warning_not_an_action() -> None:
    obs = observation(loaded_models=(loaded("llama3.2:1b", 4 * GiB, vram=3 * GiB, ctx=2048),))
    result = plan(policy(PINNED), obs, NOW)
    assert result.actions == ()
    assert finding_kinds(result) == [("model_spilled", "llama3.2:1b")]
    assert result.findings[0].warning
    assert "3.0 GiB of 4.0 GiB" in result.findings[0].message


def test_finite_pinned_keep_alive_is_refreshed_only_when_running_out() -> None:
    entry = {**PINNED, "keep_alive": "24h"}
    fresh = observation(loaded_models=(loaded("llama3.2:1b", ctx=2048, expires_in=23 * 3600),))
    assert plan(policy(entry), fresh, NOW).actions == ()
    old = observation(loaded_models=(loaded("llama3.2:1b", ctx=2048, expires_in=3600),))
    (action,) = plan(policy(entry), old, NOW).actions
    assert action.kind is ActionKind.REFRESH
    assert action.keep_alive == 86400


def test_longer_timer_than_asked_is_not_shortened() -> None:
    entry = {**PINNED, "keep_alive": "1h"}
    obs = observation(loaded_models=(loaded("llama3.2:1b", ctx=2048),))  # forever
    assert plan(policy(entry), obs, NOW).actions == ()


@pytest.mark.parametrize(
    ("details_caps", "tags_caps", "endpoint"),
    [
        (("embedding",), None, "embed"),
        (None, ("embedding",), "embed"),
        (("completion", "embedding"), None, "generate"),
        (("completion", "tools"), None, "generate"),
        (None, None, "generate"),
    ],
)
def test_endpoint_follows_capabilities(
    details_caps: tuple[str, ...] | None, tags_caps: tuple[str, ...] | None, endpoint: str
) -> None:
    name = "nomic-embed-text:latest"
    details = {name: ModelDetails(name=name, capabilities=details_caps)} if details_caps else {}
    obs = observation(installed_models=(installed(name, caps=tags_caps),), details=details)
    (action,) = plan(policy({"name": "nomic-embed-text"}), obs, NOW).actions
    assert action.endpoint == endpoint


def test_foreign_models_are_never_touched() -> None:
    foreign = loaded("mixtral:8x7b", 20 * GiB, expires_in=10)
    obs = observation(
        loaded_models=(foreign, loaded("llama3.2:1b", ctx=2048)),
        gpu=gpus((100 * MiB, 24 * GiB)),
    )
    result = plan(policy(PINNED, {"name": "qwen2.5:0.5b", "tier": "extra"}), obs, NOW)
    assert all(a.model != "mixtral:8x7b" for a in result.actions)
    assert all(f.model != "mixtral:8x7b" for f in result.findings)


# --- extras -------------------------------------------------------------------------------

EXTRA: dict[str, object] = {"name": "qwen2.5:0.5b", "tier": "extra", "priority": 10}


def extra_obs(free: int, *, fp: int = 1 * GiB, others: tuple = (), total: int = 24 * GiB):  # type: ignore[no-untyped-def, type-arg]
    return observation(
        loaded_models=(loaded("llama3.2:1b", ctx=2048), *others),
        installed_models=(installed("llama3.2:1b"), installed("qwen2.5:0.5b", 400 * MiB)),
        gpu=gpus((free, total)),
        footprints={"qwen2.5:0.5b": Footprint(fp, fp)},
    )


def test_extra_loads_when_it_fits_with_headroom_and_a_finite_keep_alive() -> None:
    (action,) = plan(policy(PINNED, EXTRA), extra_obs(10 * GiB), NOW).actions
    assert action.kind is ActionKind.LOAD
    assert action.model == "qwen2.5:0.5b"
    assert action.keep_alive == 3600
    assert "fits" in action.reason


def test_extra_is_skipped_without_room_for_the_headroom_and_says_the_numbers() -> None:
    result = plan(policy(PINNED, EXTRA), extra_obs(1 * GiB + 100 * MiB), NOW)
    assert result.actions == ()
    (finding,) = result.findings
    assert finding.kind is FindingKind.EXTRA_SKIPPED
    assert not finding.warning
    assert finding.data == {"needed": 1 * GiB, "headroom": 512 * MiB, "free": 1 * GiB + 100 * MiB}
    assert "1.0 GiB" in finding.message and "512.0 MiB" in finding.message


def test_extra_that_ollama_would_make_room_for_by_evicting_is_skipped() -> None:
    # 7 GiB + 512 MiB headroom fits in 8 GiB free, but 7 GiB is more than 80% of 8 GiB:
    # Ollama would evict a loaded model (perhaps the pinned one) to place it.
    result = plan(policy(PINNED, EXTRA), extra_obs(8 * GiB, fp=7 * GiB), NOW)
    assert result.actions == ()
    assert "80%" in result.findings[0].message


def test_extra_alone_on_the_gpu_is_not_held_to_the_80_percent_rule() -> None:
    obs = observation(
        installed_models=(installed("qwen2.5:0.5b"),),
        gpu=gpus((8 * GiB, 8 * GiB)),
        footprints={"qwen2.5:0.5b": Footprint(7 * GiB, 7 * GiB)},
    )
    assert kinds(plan(policy(EXTRA), obs, NOW)) == [("load", "qwen2.5:0.5b")]


def test_extras_load_highest_priority_first_while_they_fit() -> None:
    extras = [
        {"name": "low:1b", "tier": "extra", "priority": 1},
        {"name": "high:1b", "tier": "extra", "priority": 50},
        {"name": "mid:1b", "tier": "extra", "priority": 10},
    ]
    obs = observation(
        loaded_models=(loaded("llama3.2:1b", ctx=2048),),
        installed_models=tuple(
            installed(n) for n in ("llama3.2:1b", "low:1b", "high:1b", "mid:1b")
        ),
        gpu=gpus((5 * GiB, 24 * GiB)),
        footprints={n: Footprint(2 * GiB, 2 * GiB) for n in ("low:1b", "high:1b", "mid:1b")},
    )
    result = plan(policy(PINNED, *extras), obs, NOW)
    # 5 GiB free: high takes 2 (3 left); mid takes 2 (2 <= 80% of 3, 1 GiB left >= the
    # 512 MiB headroom); low would leave no headroom: skipped.
    assert kinds(result) == [("load", "high:1b"), ("load", "mid:1b")]
    assert finding_kinds(result) == [("extra_skipped", "low:1b")]


def test_budget_is_used_when_nvml_is_unknown() -> None:
    obs = observation(
        loaded_models=(loaded("llama3.2:1b", 2 * GiB, ctx=2048),),
        installed_models=(installed("llama3.2:1b"), installed("qwen2.5:0.5b")),
        gpu=UNKNOWN_GPU,
        footprints={"qwen2.5:0.5b": Footprint(1 * GiB, 1 * GiB)},
    )
    fits = policy(PINNED, EXTRA, vram={"budget": "4GiB"})
    assert kinds(plan(fits, obs, NOW)) == [("load", "qwen2.5:0.5b")]
    tight = policy(PINNED, EXTRA, vram={"budget": "3GiB"})
    result = plan(tight, obs, NOW)
    assert result.actions == ()
    assert "vram.budget free is 1.0 GiB" in result.findings[0].message


def test_no_extras_without_nvml_or_budget_and_it_says_why() -> None:
    obs = observation(
        loaded_models=(loaded("llama3.2:1b", ctx=2048),),
        installed_models=(installed("llama3.2:1b"), installed("qwen2.5:0.5b")),
    )
    result = plan(policy(PINNED, EXTRA), obs, NOW)
    assert result.actions == ()
    (finding,) = result.findings
    assert finding.kind is FindingKind.NO_MEMORY_INFO
    assert "libnvidia-ml.so.1 not found" in finding.message


def test_extras_wait_while_a_pinned_model_is_being_loaded() -> None:
    obs = observation(
        installed_models=(installed("llama3.2:1b"), installed("qwen2.5:0.5b")),
        gpu=gpus((20 * GiB, 24 * GiB)),
    )
    assert kinds(plan(policy(PINNED, EXTRA), obs, NOW)) == [("load", "llama3.2:1b")]


def test_extras_wait_while_a_pinned_model_is_being_reloaded() -> None:
    obs = observation(
        loaded_models=(loaded("llama3.2:1b", ctx=8192),),
        installed_models=(installed("llama3.2:1b"), installed("qwen2.5:0.5b")),
        gpu=gpus((20 * GiB, 24 * GiB)),
    )
    assert kinds(plan(policy(PINNED, EXTRA), obs, NOW)) == [("reload", "llama3.2:1b")]


def test_no_extras_while_a_pinned_model_is_spilled() -> None:
    obs = observation(
        loaded_models=(loaded("llama3.2:1b", 4 * GiB, vram=3 * GiB, ctx=2048),),
        installed_models=(installed("llama3.2:1b"), installed("qwen2.5:0.5b")),
        gpu=gpus((20 * GiB, 24 * GiB)),
    )
    result = plan(policy(PINNED, EXTRA), obs, NOW)
    assert result.actions == ()
    assert finding_kinds(result) == [
        ("model_spilled", "llama3.2:1b"),
        ("extra_skipped", "qwen2.5:0.5b"),
    ]


def test_extras_are_shed_lowest_priority_first_until_headroom_is_back() -> None:
    extras = [
        {"name": "low:1b", "tier": "extra", "priority": 1},
        {"name": "mid:1b", "tier": "extra", "priority": 5},
        {"name": "high:1b", "tier": "extra", "priority": 9},
    ]
    obs = observation(
        loaded_models=(
            loaded("llama3.2:1b", expires_in=None, ctx=2048),
            loaded("low:1b", 300 * MiB, expires_in=3000),
            loaded("mid:1b", 300 * MiB, expires_in=3000),
            loaded("high:1b", 300 * MiB, expires_in=3000),
        ),
        gpu=gpus((100 * MiB, 24 * GiB)),
    )
    result = plan(policy(PINNED, *extras), obs, NOW)
    # 100 MiB free, headroom 512 MiB: shedding low gives 400, mid gives 700: enough.
    assert kinds(result) == [("unload", "low:1b"), ("unload", "mid:1b")]
    assert "below the headroom" in result.actions[0].reason


def test_shedding_comes_before_pinned_work_and_blocks_new_extras() -> None:
    obs = observation(
        loaded_models=(loaded("low:1b", 300 * MiB, expires_in=3000),),
        installed_models=(installed("llama3.2:1b"), installed("low:1b"), installed("new:1b")),
        gpu=gpus((100 * MiB, 24 * GiB)),
    )
    entries: list[dict[str, object]] = [
        PINNED,
        {"name": "low:1b", "tier": "extra"},
        {"name": "new:1b", "tier": "extra", "priority": 99},
    ]
    assert kinds(plan(policy(*entries), obs, NOW)) == [
        ("unload", "low:1b"),
        ("load", "llama3.2:1b"),
    ]


def test_a_shed_extra_is_not_also_refreshed() -> None:
    obs = observation(
        loaded_models=(loaded("low:1b", 300 * MiB, expires_in=60),),
        gpu=gpus((100 * MiB, 24 * GiB)),
    )
    assert kinds(plan(policy({"name": "low:1b", "tier": "extra"}), obs, NOW)) == [
        ("unload", "low:1b")
    ]


@pytest.mark.parametrize(
    ("environment", "gpu_count", "loaded_count", "loads"),
    [
        ({"OLLAMA_MAX_LOADED_MODELS": "2"}, 1, 2, False),
        ({"OLLAMA_MAX_LOADED_MODELS": "3"}, 1, 2, True),
        ({}, 1, 3, False),  # Ollama's default: 3 per GPU
        ({}, 2, 3, True),
    ],
)
def test_loaded_model_limit(
    environment: dict[str, str], gpu_count: int, loaded_count: int, loads: bool
) -> None:
    others = tuple(loaded(f"other{i}:1b", 100 * MiB) for i in range(loaded_count))
    obs = observation(
        loaded_models=others,
        installed_models=(installed("qwen2.5:0.5b", 100 * MiB),),
        gpu=gpus(*[(40 * GiB, 80 * GiB)] * gpu_count),
        footprints={"qwen2.5:0.5b": Footprint(100 * MiB, 100 * MiB)},
    )
    result = plan(policy(EXTRA, ollama={"environment": environment}), obs, NOW)
    assert bool(result.actions) is loads
    if not loads:
        assert "Ollama allows" in result.findings[0].message


@pytest.mark.parametrize(("loaded_count", "loads"), [(2, True), (3, False)])
def test_without_nvml_ollama_is_taken_to_allow_three_models(loaded_count: int, loads: bool) -> None:
    """No GPU seen (vram.budget): Ollama's default is 3 per GPU and 3 with none, so 3 is the
    limit a keeper can count on, foreign models counted: a fourth would evict one of them."""
    others = tuple(loaded(f"other{i}:1b", 100 * MiB) for i in range(loaded_count))
    obs = observation(
        loaded_models=others,
        installed_models=(installed("qwen2.5:0.5b", 100 * MiB),),
        footprints={"qwen2.5:0.5b": Footprint(100 * MiB, 100 * MiB)},
    )
    result = plan(policy(EXTRA, vram={"budget": "8GiB"}), obs, NOW)
    assert bool(result.actions) is loads
    if not loads:
        assert "3 models are loaded and Ollama allows 3" in result.findings[0].message


def test_loaded_extra_is_refreshed_before_its_keep_alive_runs_out() -> None:
    soon = extra_obs(10 * GiB, others=(loaded("qwen2.5:0.5b", expires_in=600),))
    (action,) = plan(policy(PINNED, EXTRA), soon, NOW).actions
    assert action.kind is ActionKind.REFRESH
    assert action.keep_alive == 3600
    later = extra_obs(10 * GiB, others=(loaded("qwen2.5:0.5b", expires_in=3000),))
    assert plan(policy(PINNED, EXTRA), later, NOW).actions == ()


def test_extra_a_client_pinned_forever_is_left_alone() -> None:
    obs = extra_obs(10 * GiB, others=(loaded("qwen2.5:0.5b"),))
    assert plan(policy(PINNED, EXTRA), obs, NOW).actions == ()


def test_extra_not_installed_is_reported_or_pulled() -> None:
    obs = observation(
        loaded_models=(loaded("llama3.2:1b", ctx=2048),), gpu=gpus((20 * GiB, 24 * GiB))
    )
    result = plan(policy(PINNED, EXTRA), obs, NOW)
    assert finding_kinds(result) == [("model_not_installed", "qwen2.5:0.5b")]
    pulled = plan(policy(PINNED, {**EXTRA, "pull": True}), obs, NOW)
    assert kinds(pulled) == [("pull", "qwen2.5:0.5b")]


# --- footprints -----------------------------------------------------------------------------

LLAMA_DETAILS = ModelDetails(
    name="qwen2.5:0.5b",
    capabilities=("completion",),
    context_length=32768,
    block_count=24,
    embedding_length=896,
    head_count=14,
    head_count_kv=2,
)


def test_footprint_remembered_from_the_last_load_wins() -> None:
    obs = extra_obs(10 * GiB, fp=777 * MiB)
    assert expected_footprint(policy(EXTRA).extras[0], policy(EXTRA), obs) == 777 * MiB


def test_footprint_estimate_from_file_size_and_kv_cache() -> None:
    entry = {**EXTRA, "options": {"num_ctx": 8192}}
    pol = policy(entry, ollama={"environment": {"OLLAMA_NUM_PARALLEL": "2"}})
    obs = observation(
        installed_models=(installed("qwen2.5:0.5b", 400 * MiB),),
        details={"qwen2.5:0.5b": LLAMA_DETAILS},
        footprints={"qwen2.5:0.5b": Footprint(1 * GiB, 1 * GiB, context_length=2048)},
    )
    head_dim = 896 // 14
    kv = 24 * 8192 * 2 * 2 * (head_dim * 2) * 2  # layers x ctx x parallel x kv heads x (K+V) x f16
    batch = 768 * MiB  # 8192 x 2 slots: Ollama's automatic num_batch grows to 1024
    assert expected_footprint(pol.extras[0], pol, obs) == int(400 * MiB * 1.1) + kv + batch


@pytest.mark.parametrize(
    ("total", "ctx"), [(None, 4096), (8 * GiB, 4096), (24 * GiB, 32768), (80 * GiB, 262144)]
)
def test_automatic_num_ctx_follows_total_vram_as_in_ollama(total: int | None, ctx: int) -> None:
    gpu = UNKNOWN_GPU if total is None else gpus((total, total))
    assert default_num_ctx(observation(gpu=gpu)) == ctx


def test_footprint_estimate_is_capped_by_the_trained_context() -> None:
    details = ModelDetails(**{**LLAMA_DETAILS.__dict__, "context_length": 1024})
    entry = {**EXTRA, "options": {"num_ctx": 8192}}
    obs = observation(
        installed_models=(installed("qwen2.5:0.5b", 0),), details={"qwen2.5:0.5b": details}
    )
    kv = 24 * 1024 * 1 * 2 * (64 * 2) * 2
    assert expected_footprint(policy(entry).extras[0], policy(entry), obs) == kv


def test_footprint_without_architecture_details_is_a_margin_over_the_file() -> None:
    obs = observation(installed_models=(installed("qwen2.5:0.5b", 400 * MiB),))
    assert expected_footprint(policy(EXTRA).extras[0], policy(EXTRA), obs) == 500 * MiB


def test_footprint_unknown_for_a_model_that_is_not_installed() -> None:
    assert expected_footprint(policy(EXTRA).extras[0], policy(EXTRA), observation()) is None


# --- purity and invariants ------------------------------------------------------------------


def test_time_is_an_input_not_the_clock() -> None:
    obs = observation(loaded_models=(loaded("llama3.2:1b", ctx=2048, expires_in=3600),))
    entry = {**PINNED, "keep_alive": "2h"}
    assert plan(policy(entry), obs, NOW).actions == ()
    later = plan(policy(entry), obs, NOW + timedelta(minutes=45))
    assert kinds(later) == [("refresh", "llama3.2:1b")]


names = st.sampled_from(["a:1", "b:1", "c:1", "d:1", "e:1", "f:1"])


@settings(max_examples=300, deadline=None)
@given(
    pinned=st.lists(names, max_size=3, unique=True),
    extras=st.lists(st.tuples(names, st.integers(-5, 5)), max_size=4, unique_by=lambda t: t[0]),
    resident=st.lists(
        st.tuples(names, st.integers(1, 8), st.sampled_from([None, 30.0, 4000.0])),
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    free_gib=st.integers(0, 16),
    known_gpu=st.booleans(),
)
def test_invariants_over_random_worlds(
    pinned: list[str],
    extras: list[tuple[str, int]],
    resident: list[tuple[str, int, float | None]],
    free_gib: int,
    known_gpu: bool,
) -> None:
    extra_names = [n for n, _ in extras if n not in pinned]
    entries = [{"name": n} for n in pinned] + [
        {"name": n, "tier": "extra", "priority": p} for n, p in extras if n in extra_names
    ]
    pol = policy(*entries)
    obs = observation(
        loaded_models=tuple(loaded(n, s * GiB, expires_in=e) for n, s, e in resident),
        installed_models=tuple(installed(n, 1 * GiB) for n in ["a:1", "b:1", "c:1", "d:1", "e:1"]),
        gpu=gpus((free_gib * GiB, 16 * GiB)) if known_gpu else UNKNOWN_GPU,
    )
    result = plan(pol, obs, NOW)
    assert result == plan(pol, obs, NOW)  # deterministic
    policy_names = {m.name for m in pol.models}
    for action in result.actions:
        assert action.model in policy_names  # foreign models are never touched
    loads = [a for a in result.actions if a.kind is ActionKind.LOAD]
    resident_names = {n for n, _, _ in resident}
    pinned_pending = any(a.tier == "pinned" for a in loads)
    extra_loads = [a for a in loads if a.tier == "extra"]
    if pinned_pending:
        assert not extra_loads
    if extra_loads:
        assert known_gpu
        free = free_gib * GiB
        footprints = [expected_footprint(m, pol, obs) for m in pol.extras]
        by_name = dict(zip([m.name for m in pol.extras], footprints, strict=True))
        used = sum(by_name[a.model] or 0 for a in extra_loads)
        assert used + pol.vram.headroom <= free
    for action in result.actions:
        if action.kind in (ActionKind.REASSERT, ActionKind.REFRESH, ActionKind.UNLOAD):
            assert action.model in resident_names
        if action.kind is ActionKind.UNLOAD:
            assert action.tier == "extra"
    assert not [a for a in result.actions if a.model == "f:1" and a.kind is ActionKind.LOAD]
