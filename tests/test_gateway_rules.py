"""gateway/rules.py: what the gateway changes in a request, as tables. No server, no clock:
each case is a request, the policy and the keeper's last look, and what must be forwarded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_keeper.errors import PolicyError
from sentinel_keeper.gateway.rules import (
    MODEL_PATHS,
    Change,
    Decision,
    GatewayView,
    Verdict,
    decide,
    requested_num_ctx,
)
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.policy.schema import GatewaySection
from tests.support.planning import (
    NOW,
    GiB,
    gpus,
    installed,
    loaded,
    observation,
    policy,
)

PINNED = "llama3.1:8b"
EXTRA = "qwen2.5:0.5b"
FOREIGN = "big:70b"
SMALL = "tiny:1b"
POLICY = policy(
    {"name": PINNED, "options": {"num_ctx": 8192, "num_batch": 512}},
    {"name": EXTRA, "tier": "extra"},
    {"name": "night:7b", "windows": ["02:00-03:00"]},
    timezone="UTC",
)
# a 24 GiB GPU with the pinned model resident and 10 GiB free
SEEN = observation(
    loaded_models=(loaded(PINNED, 6 * GiB, ctx=8192),),
    installed_models=(
        installed(PINNED, 5 * GiB),
        installed(EXTRA, 1 * GiB),
        installed(FOREIGN, 40 * GiB),
        installed(SMALL, 1 * GiB),
    ),
    gpu=gpus((10 * GiB, 24 * GiB)),
)
VIEW = GatewayView(POLICY, SEEN)
RULES = GatewaySection()


def run(
    body: object,
    *,
    path: str = "/api/generate",
    view: GatewayView = VIEW,
    **rules: Any,
) -> Decision:
    return decide(path, body, view, RULES.model_copy(update=rules), NOW)


def fields(decision: Decision) -> dict[str, tuple[object, object]]:
    return {c.field: (c.before, c.after) for c in decision.changes}


# --- what is left alone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/tags", None),
        ("/api/show", {"model": PINNED}),  # not a request that loads
        ("/api/generate", None),  # not JSON: Ollama's own 400
        ("/api/generate", ["a list"]),
        ("/api/generate", {"prompt": "no model"}),
        ("/api/generate", {"model": ""}),
        ("/api/generate", {"model": 7}),
    ],
)
def test_requests_the_rules_cannot_read_go_as_they_came(path: str, body: object) -> None:
    decision = run(body, path=path)
    assert decision == Decision(None)


@pytest.mark.parametrize(
    "body",
    [
        {"model": PINNED, "prompt": "hi"},  # no keep_alive: the drop-in's -1 applies
        {"model": PINNED, "keep_alive": -1},
        {"model": PINNED, "keep_alive": "-1m"},  # Go: negative is forever
        {"model": PINNED, "keep_alive": -5.5},
        {"model": PINNED, "options": {"num_ctx": 8192, "temperature": 0.1}},
        {"model": PINNED, "options": {"num_batch": 512}},
        {"model": "llama3.1:8b", "keep_alive": "-1h", "options": {"seed": 3}},
    ],
)
def test_a_request_that_keeps_the_pin_is_forwarded_unchanged(body: dict[str, Any]) -> None:
    decision = run(body)
    assert decision.changes == () and decision.body is None
    assert decision.model == PINNED and decision.pinned
    assert decision.verdict is Verdict.FORWARD


def test_a_models_name_is_read_as_ollama_writes_it() -> None:
    bare = policy({"name": "llama3.2"})
    decision = run({"model": "llama3.2", "keep_alive": "5m"}, view=GatewayView(bare, SEEN))
    assert decision.model == "llama3.2:latest"
    assert fields(decision)["keep_alive"] == ("5m", -1)


# --- keep_alive -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "replaced"),
    [
        ("5m", True),
        (300, True),
        (0.5, True),
        ("24h", True),  # finite is shorter than forever
        ("0", True),  # unload, refused
        (0, True),
        ("300", False),  # Ollama refuses a bare number in a string: its own 400
        ("1d", False),  # not a Go duration: Ollama's 400
        (True, False),
        ({"x": 1}, False),
        (10**400, False),  # past float64: Go's JSON decoding refuses it
        (-1, False),
    ],
)
def test_a_shorter_keep_alive_is_replaced_by_the_pin(sent: object, replaced: bool) -> None:
    decision = run({"model": PINNED, "prompt": "hi", "keep_alive": sent})
    if replaced:
        assert fields(decision) == {"keep_alive": (sent, -1)}
        assert decision.body == {"model": PINNED, "prompt": "hi", "keep_alive": -1}
    else:
        assert decision.changes == () and decision.body is None


def test_unload_is_honoured_only_when_the_policy_allows_it() -> None:
    body = {"model": PINNED, "keep_alive": 0}
    refused = run(body)  # what `ollama stop` sends: refused, with an error it prints
    assert refused.verdict is Verdict.REJECT and refused.status == 403
    assert refused.error is not None and "gateway.allow_unload" in refused.error
    assert "not found" not in refused.error  # `ollama stop` would say the model is missing
    chat = run({"model": PINNED, "messages": 0, "keep_alive": "0s"}, path="/api/chat")
    assert chat.verdict is Verdict.REJECT
    assert run(body, allow_unload=True).changes == ()
    assert run(body, allow_unload=True).verdict is Verdict.FORWARD
    # with a prompt it also generates: the answer, and the pin kept
    kept = run({**body, "prompt": "hi"})
    assert kept.verdict is Verdict.FORWARD and "allow_unload" in kept.changes[0].why
    # the same model in another case or spelling is the same model to Ollama
    assert run({"model": "LLAMA3.1:8B", "keep_alive": 0}).verdict is Verdict.REJECT
    tiny = run({"model": PINNED, "prompt": "x", "keep_alive": 1e-10})  # 0 ns to Ollama
    assert fields(tiny) == {"keep_alive": (1e-10, -1)}


def test_a_missing_keep_alive_gets_the_pin_when_ollamas_default_is_shorter() -> None:
    finite = POLICY.model_copy(
        update={"ollama": POLICY.ollama.model_copy(update={"keep_alive": 300.0})}
    )
    decision = run({"model": PINNED}, view=GatewayView(finite, SEEN))
    assert fields(decision) == {"keep_alive": (None, -1)}
    assert "OLLAMA_KEEP_ALIVE" in decision.changes[0].why


def test_a_pinned_models_own_finite_keep_alive_is_the_pin() -> None:
    day = policy({"name": PINNED, "keep_alive": "24h"})
    view = GatewayView(day, SEEN)
    assert fields(run({"model": PINNED, "keep_alive": "1h"}, view=view)) == {
        "keep_alive": ("1h", 86400)
    }
    assert run({"model": PINNED, "keep_alive": "48h"}, view=view).changes == ()
    assert run({"model": PINNED, "keep_alive": -1}, view=view).changes == ()


def test_the_keep_alive_rule_can_be_turned_off() -> None:
    assert run({"model": PINNED, "keep_alive": "5m"}, pin_keep_alive=False).changes == ()


# --- options --------------------------------------------------------------------------------


def test_a_smaller_num_ctx_is_raised_and_aligned_options_follow_the_pin() -> None:
    options = {"num_ctx": 2048, "num_batch": 1024, "num_thread": 8, "temperature": 0.2}
    body = {"model": PINNED, "options": options}
    decision = run(body)
    assert fields(decision) == {
        "options.num_ctx": (2048, 8192),
        "options.num_batch": (1024, 512),
        "options.num_thread": (8, None),  # the policy sets none: Ollama's default, as loaded
    }
    assert decision.body == {
        "model": PINNED,
        "options": {"num_ctx": 8192, "num_batch": 512, "temperature": 0.2},
    }
    assert decision.reload_num_ctx is None
    assert options["num_ctx"] == 2048  # the request itself is not touched


def test_a_larger_num_ctx_is_passed_and_said_to_reload() -> None:
    decision = run({"model": PINNED, "options": {"num_ctx": 32768}})
    assert decision.changes == () and decision.body is None
    assert decision.reload_num_ctx == 32768


@pytest.mark.parametrize(
    ("context_length", "total", "expected"),
    [
        # no num_ctx sent: Ollama's default decides, 4096 on a 16 GiB GPU: raised
        (None, 16, {"options.num_ctx": (None, 8192)}),
        # OLLAMA_CONTEXT_LENGTH in the drop-in equal to the pin: nothing to do
        ("8192", 24, {}),
        # 32768 on a 24 GiB GPU: larger than the pin, passed, and it will reload
        (None, 24, {}),
    ],
)
def test_a_request_without_num_ctx_gets_ollamas_default(
    context_length: str | None, total: int, expected: dict[str, tuple[object, object]]
) -> None:
    env = {"OLLAMA_CONTEXT_LENGTH": context_length} if context_length else {}
    pol = policy(
        {"name": PINNED, "options": {"num_ctx": 8192}},
        ollama={"environment": env},
    )
    seen = observation(loaded_models=(loaded(PINNED, ctx=8192),), gpu=gpus((4 * GiB, total * GiB)))
    decision = run({"model": PINNED, "prompt": "x"}, view=GatewayView(pol, seen))
    assert fields(decision) == expected
    if total == 24 and not context_length:
        assert decision.reload_num_ctx == 32768


def test_a_pin_without_num_ctx_drops_a_smaller_one_for_ollamas_default() -> None:
    automatic = policy({"name": PINNED})
    seen = observation(loaded_models=(loaded(PINNED),), gpu=gpus((4 * GiB, 24 * GiB)))
    decision = run(
        {"model": PINNED, "options": {"num_ctx": 2048}}, view=GatewayView(automatic, seen)
    )
    assert fields(decision) == {"options.num_ctx": (2048, None)}
    assert decision.body == {"model": PINNED, "options": {}}


def test_the_options_rule_can_be_turned_off() -> None:
    decision = run({"model": PINNED, "options": {"num_ctx": 2048}}, align_options=False)
    assert decision.changes == ()


def test_options_that_are_not_a_mapping_are_ollamas_to_refuse() -> None:
    assert run({"model": PINNED, "options": "fast"}).changes == ()
    assert run({"model": PINNED, "options": {"num_ctx": "big"}}).changes == ()


def test_extras_openai_requests_and_models_outside_their_windows_are_left_alone() -> None:
    extra = run({"model": EXTRA, "keep_alive": "5m", "options": {"num_ctx": 512}})
    assert extra.changes == () and not extra.pinned and extra.model == EXTRA
    openai = run({"model": PINNED, "messages": []}, path="/v1/chat/completions")
    assert openai.changes == () and openai.pinned
    night = run({"model": "night:7b", "keep_alive": 0})  # its window is 02:00-03:00, now 12:00
    assert night.changes == () and night.verdict is Verdict.FORWARD


# --- foreign models -------------------------------------------------------------------------


@pytest.mark.parametrize("foreign", ["evict", "queue", "cpu", "reject"])
def test_a_foreign_model_that_fits_or_is_loaded_is_forwarded(foreign: str) -> None:
    assert run({"model": SMALL}, foreign=foreign) == Decision(SMALL)
    big_loaded = observation(
        loaded_models=(loaded(FOREIGN, 40 * GiB),),
        installed_models=(installed(FOREIGN, 40 * GiB),),
        gpu=gpus((0, 80 * GiB)),
    )
    view = GatewayView(POLICY, big_loaded)
    assert run({"model": FOREIGN}, foreign=foreign, view=view) == Decision(FOREIGN)


def test_a_foreign_model_that_does_not_fit_is_handled_as_the_policy_says() -> None:
    body = {"model": FOREIGN, "prompt": "hi", "options": {"seed": 1}}
    assert run(body, foreign="evict") == Decision(FOREIGN)
    rejected = run(body, foreign="reject")
    assert rejected.verdict is Verdict.REJECT
    assert rejected.error is not None
    assert "does not fit beside the pinned models" in rejected.error
    assert "gateway.foreign: evict" in rejected.error
    queued = run(body, foreign="queue")
    assert queued.verdict is Verdict.QUEUE and queued.error is not None
    cpu = run(body, foreign="cpu")
    assert cpu.verdict is Verdict.FORWARD
    assert cpu.body == {"model": FOREIGN, "prompt": "hi", "options": {"seed": 1, "num_gpu": 0}}
    assert cpu.changes == (Change("options.num_gpu", None, 0, cpu.changes[0].why),)
    # the OpenAI endpoints carry no options: cpu cannot apply there
    v1 = run({"model": FOREIGN, "messages": []}, path="/v1/chat/completions", foreign="cpu")
    assert v1.verdict is Verdict.REJECT and v1.error is not None and "OpenAI" in v1.error


def test_room_counts_the_headroom_and_the_pinned_models_still_to_load() -> None:
    # 10 GiB free, headroom 512 MiB: a 7 GiB model fits (7 <= 0.8 * 9.5)...
    seven = observation(
        loaded_models=(loaded(PINNED, 6 * GiB, ctx=8192),),
        installed_models=(installed(PINNED, 5 * GiB), installed("seven:7b", 7 * GiB)),
        gpu=gpus((10 * GiB, 24 * GiB)),
    )
    assert run({"model": "seven:7b"}, view=GatewayView(POLICY, seven), foreign="reject") == (
        Decision("seven:7b")
    )
    # ...but not while the pinned model (about 6 GiB) is not loaded yet and needs the room
    missing = observation(installed_models=seven.installed, gpu=gpus((10 * GiB, 24 * GiB)))
    decision = run({"model": "seven:7b"}, view=GatewayView(POLICY, missing), foreign="reject")
    assert decision.verdict is Verdict.REJECT


def test_models_ollama_would_evict_first_make_room() -> None:
    # 2 GiB free, but an extra (1h keep_alive: evicted before any pinned model) holds 6 GiB
    crowded = observation(
        loaded_models=(loaded(PINNED, 6 * GiB, ctx=8192), loaded(EXTRA, 6 * GiB)),
        installed_models=(installed(PINNED, 5 * GiB), installed("four:4b", 4 * GiB)),
        gpu=gpus((2 * GiB, 24 * GiB)),
    )
    view = GatewayView(POLICY, crowded)
    assert run({"model": "four:4b"}, view=view, foreign="reject") == Decision("four:4b")
    # the same 2 GiB free with the pinned model alone in the rest: no room
    alone = observation(
        loaded_models=(loaded(PINNED, 12 * GiB, ctx=8192),),
        installed_models=crowded.installed,
        gpu=gpus((2 * GiB, 24 * GiB)),
    )
    refused = run({"model": "four:4b"}, view=GatewayView(POLICY, alone), foreign="reject")
    assert refused.verdict is Verdict.REJECT


@pytest.mark.parametrize("foreign", ["queue", "cpu", "reject"])
def test_one_model_too_many_would_evict_a_pinned_one_whatever_its_size(foreign: str) -> None:
    three = policy(*({"name": f"p{n}:1b"} for n in range(3)))
    full = observation(
        loaded_models=tuple(loaded(f"p{n}:1b", 1 * GiB) for n in range(3)),
        installed_models=(installed(SMALL, 100 * 1024**2),),
        gpu=gpus((20 * GiB, 24 * GiB)),  # one GPU: Ollama holds 3 models at most
    )
    decision = run({"model": SMALL}, view=GatewayView(three, full), foreign=foreign)
    assert decision.verdict is (Verdict.QUEUE if foreign == "queue" else Verdict.REJECT)
    assert decision.error is not None and "OLLAMA_MAX_LOADED_MODELS" in decision.error
    if foreign == "cpu":  # on the CPU it counts all the same
        assert "on the CPU it would count against that limit too" in decision.error
    # a limit the policy raises, or a loaded model that is not pinned (evicted first): room
    roomy = three.model_copy(
        update={
            "ollama": three.ollama.model_copy(
                update={"environment": {"OLLAMA_MAX_LOADED_MODELS": "4"}}
            )
        }
    )
    assert run({"model": SMALL}, view=GatewayView(roomy, full), foreign=foreign) == (
        Decision(SMALL)
    )
    two = policy({"name": "p0:1b"}, {"name": "p1:1b"})
    assert run({"model": SMALL}, view=GatewayView(two, full), foreign=foreign) == (Decision(SMALL))


def test_without_memory_figures_a_foreign_model_is_forwarded() -> None:
    blind = observation(installed_models=SEEN.installed)
    assert run({"model": FOREIGN}, view=GatewayView(POLICY, blind), foreign="reject") == (
        Decision(FOREIGN)
    )
    budget = POLICY.model_copy(update={"vram": POLICY.vram.model_copy(update={"budget": 8 * GiB})})
    refused = run({"model": FOREIGN}, view=GatewayView(budget, blind), foreign="reject")
    assert refused.verdict is Verdict.REJECT
    # before the keeper's first look, nothing is known: forwarded
    assert run({"model": FOREIGN}, view=GatewayView(POLICY, None), foreign="reject") == (
        Decision(FOREIGN)
    )


def test_a_model_ollama_does_not_have_is_ollamas_to_refuse() -> None:
    assert run({"model": "nowhere:1b"}, foreign="reject") == Decision("nowhere:1b")


# --- the policy's gateway section ---------------------------------------------------------------


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return [str(d) for d in caught.value.diagnostics]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "gateway: {listen: '0.0.0.0:11435'}\n",
            "p.yaml:1:19: gateway.listen: 0.0.0.0:11435 is reachable from other hosts: set "
            "gateway.allow_remote: true",
        ),
        (
            "gateway: {listen: '127.0.0.1:11435', foreign: drop}\n",
            'p.yaml:1:47: gateway.foreign: must be one of "evict", "queue", "cpu" or "reject"',
        ),
        (
            "gateway: {listen: '127.0.0.1:11435', instance: gpu1}\n",
            'p.yaml:1:48: gateway.instance: no instance named "gpu1": without instances:',
        ),
        (
            "instances: [{name: a}, {name: b, url: '127.0.0.1:2', unit: b.service}]\n"
            "gateway: {listen: '127.0.0.1:11435'}\n",
            "p.yaml:2:1: gateway: which instance does it front? add instance: with one of a, b",
        ),
        (
            "instances: [{name: a}]\ngateway: {listen: '127.0.0.1:11435', instance: c}\n",
            'p.yaml:2:48: gateway.instance: no instance named "c" (instances: a)',
        ),
        (
            "gateway: {listen: '127.0.0.1:11434'}\n",
            "p.yaml:1:19: gateway.listen: 127.0.0.1:11434 is where ollama listens (ollama.url)",
        ),
        (
            "metrics: {listen: '127.0.0.1:9000'}\ngateway: {listen: '127.0.0.1:9000'}\n",
            "p.yaml:2:19: gateway.listen: 127.0.0.1:9000 is the metrics endpoint's address",
        ),
    ],
)
def test_bad_gateway_sections_are_reported_where_they_are(text: str, expected: str) -> None:
    found = errors(text)
    assert any(line.startswith(expected) for line in found), found


def test_the_gateway_fronts_the_only_or_the_named_instance() -> None:
    off: Policy = parse_policy("models: []\n", "p.yaml")
    assert off.gateway_instance is None
    on = parse_policy("gateway: {listen: '127.0.0.1:11435'}\n", "p.yaml")
    assert on.gateway_instance == "default"
    assert on.gateway.address is not None and on.gateway.address.port == 11435
    two = parse_policy(
        "instances: [{name: a}, {name: b, url: '127.0.0.1:2', unit: b.service}]\n"
        "gateway: {listen: '127.0.0.1:11435', instance: b, foreign: queue}\n",
        "p.yaml",
    )
    assert two.gateway_instance == "b"
    assert two.gateway.foreign == "queue" and two.gateway.queue_timeout == 30


# --- any JSON at all ----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
BODY = st.fixed_dictionaries(
    {"model": st.sampled_from([PINNED, EXTRA, FOREIGN, SMALL, "x", ""]) | JSON},
    optional={
        "keep_alive": JSON | st.sampled_from(["5m", "-1", "0", "1h30m", -1, 0, 300]),
        "options": st.dictionaries(
            st.sampled_from(["num_ctx", "num_batch", "num_thread", "use_mmap", "num_gpu", "seed"]),
            JSON | st.integers(-1, 70000),
            max_size=4,
        )
        | JSON,
        "prompt": JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    body=BODY | JSON,
    path=st.sampled_from(sorted(MODEL_PATHS) + ["/api/tags"]),
    foreign=st.sampled_from(["evict", "queue", "cpu", "reject"]),
)
def test_any_json_gets_a_decision_that_changes_only_what_it_says(
    body: object, path: str, foreign: str
) -> None:
    decision = run(body, path=path, foreign=foreign)
    if decision.body is None:
        assert decision.changes == ()
        return
    assert isinstance(body, dict)
    json.dumps(decision.body, allow_nan=True)  # it can be sent
    changed = {c.field.split(".")[0] for c in decision.changes}
    assert changed <= {"keep_alive", "options"}
    assert {k: v for k, v in decision.body.items() if k not in changed} == {
        k: v for k, v in body.items() if k not in changed
    }


@pytest.mark.parametrize(
    ("sent", "before"),
    [(1024.0, 1024.0), (512.5, 512.5), (8191.9, 8191.9), (True, None), ("2048", None)],
)
def test_num_ctx_is_read_as_ollamas_options_read_it(sent: object, before: object) -> None:
    """Options.FromMap truncates a float to the integer option; a bool or a string is its
    own error (no load), left alone."""
    decision = run({"model": PINNED, "options": {"num_ctx": sent}})
    if before is None:
        assert decision.changes == ()
    else:
        assert fields(decision) == {"options.num_ctx": (before, 8192)}
    assert run({"model": PINNED, "options": {"num_ctx": 8192.0}}).changes == ()
    assert run({"model": PINNED, "options": {"num_batch": 512.0}}).changes == ()


@pytest.mark.parametrize(
    ("options", "num_ctx"),
    [
        ({"num_ctx": 4096}, 4096),
        ({"num_ctx": 512.5}, 512),  # Options.FromMap truncates
        ({"num_ctx": True}, None),  # Ollama refuses it: no load
        ({"num_ctx": "2048"}, None),
        ({"num_ctx": None}, 32768),  # a null is skipped: Ollama's default
        ({}, 32768),  # the default for clients on a 24 GiB GPU
        (None, 32768),
    ],
)
def test_one_reader_of_the_num_ctx_a_request_loads_with(options: object, num_ctx: object) -> None:
    """The rules and the gateway's cold-request causes read num_ctx alike."""
    assert requested_num_ctx(options, POLICY, SEEN) == num_ctx
