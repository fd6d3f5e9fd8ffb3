"""What the gateway changes in a request on its way to Ollama, and why: a pure function of the
request's path and JSON body, the policy in force for the instance the gateway fronts, and
the keeper's last look at that Ollama. No I/O: the server (:mod:`.server`) reads the
request, asks :func:`decide`, and forwards what comes back.

The rules, each of which the policy can turn off (``gateway:``):

- ``pin_keep_alive``: a pinned model keeps its pin. A client's keep_alive that would shorten
  it (a number of seconds, a Go duration) is replaced by the policy's; so is a missing one
  when Ollama's own default (the drop-in's OLLAMA_KEEP_ALIVE) is not the pin. keep_alive 0
  (unload) only with ``allow_unload``: a request that only unloads (what ``ollama stop``
  sends: no prompt, no messages) is refused with an error the client shows; one that also
  generates gets the pin, and its answer.
- ``align_options``: a request for a pinned model whose load-time options would reload it
  gets the pinned model's where that cannot change the answer: a smaller num_ctx (or none,
  when Ollama's default is smaller) is raised to the pinned one, num_batch, num_thread and
  use_mmap take the pinned model's values. A request that truly needs more context is
  passed as it is, and said (``reload_num_ctx``): it will reload the model.
- ``foreign``: a model not in the policy, not loaded, that would not fit beside the pinned
  models in GPU memory (free, or held by models Ollama would evict first), or that would
  be one model too many (OLLAMA_MAX_LOADED_MODELS, all of them pinned): ``evict`` forwards
  it (Ollama then evicts what it must), ``queue`` waits for room, ``cpu`` loads it with
  ``num_gpu: 0`` (where memory is the only trouble), ``reject`` answers 503.

``body`` is what Ollama's handler decodes from the request (:mod:`.gojson`: Go's field
matching, the last key winning, options merged): a mapping of the fields set, by their JSON
names. Numbers are read as Ollama reads them: a keep_alive number is truncated to whole
nanoseconds (``1e-10`` is 0, an unload), an integer option is truncated (``num_ctx`` 512.5 is
512), a null option is skipped. A model is found in the policy as Ollama compares names
(:func:`names.model_key`: case-insensitive, default registry, namespace and tag). A body
with no model is forwarded as it came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sentinel_keeper.decide import context
from sentinel_keeper.decide.capacity import (
    expected_footprint,
    fits_beside_loaded,
    max_loaded_models,
)
from sentinel_keeper.decide.readiness import InstanceHealth
from sentinel_keeper.gateway.gojson import go_int
from sentinel_keeper.observe.observation import Observation
from sentinel_keeper.ollama_env.goparse import parse_go_duration
from sentinel_keeper.policy import ModelPolicy, Policy
from sentinel_keeper.policy.schema import GatewaySection
from sentinel_keeper.policy.windows import in_force, zone_of
from sentinel_keeper.values.names import model_key, normalize_model_name
from sentinel_keeper.values.quantities import format_duration, format_size

# The endpoints whose JSON body names a model and carries keep_alive and options.
NATIVE = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
# The OpenAI-compatible ones: a model, but neither keep_alive nor options.
OPENAI = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
MODEL_PATHS = NATIVE | OPENAI
# Load-time options that cannot change an answer, taken from the pinned model.
ALIGNED = ("num_batch", "num_thread", "use_mmap")


class Verdict(StrEnum):
    FORWARD = "forward"
    QUEUE = "queue"  # wait for memory, then decide again
    REJECT = "reject"  # answer 503 with ``error``


@dataclass(frozen=True)
class Change:
    """One field the gateway changed: the value the client sent (None: none) and the value
    forwarded (None: removed)."""

    field: str  # "keep_alive", "options.num_ctx"...
    before: object
    after: object
    why: str


@dataclass(frozen=True)
class Decision:
    model: str | None  # the model the request is for, as Ollama names it; None: no model
    body: Mapping[str, Any] | None = None  # the body to forward; None: the request's own bytes
    changes: tuple[Change, ...] = ()
    verdict: Verdict = Verdict.FORWARD
    error: str | None = None  # QUEUE and REJECT: why
    # the request will reload a pinned model with this num_ctx (larger than the pinned one)
    reload_num_ctx: int | None = None
    pinned: bool = False
    status: int = 503  # REJECT: the HTTP status of the gateway's answer


@dataclass(frozen=True)
class GatewayView:
    """What the gateway knows of the instance it fronts: the policy (its part) and the
    keeper's last look at that Ollama (None before the first)."""

    policy: Policy
    observation: Observation | None
    # what the keeper's /ready decides from, from a fresh view (None: none fresh)
    health: InstanceHealth | None = None
    degraded: str | None = None  # why some rules are off (a figures.Degraded reason)


def _request_keep_alive(value: object) -> float | None:
    """Seconds of a request's keep_alive as Ollama reads it (api.Duration: a number is
    float64 seconds, negative forever, else truncated to whole nanoseconds; a string a Go
    duration), -1 for forever, or None when Ollama would refuse it or it is absent (then the
    gateway leaves it alone)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # past float64: Go's JSON decoding refuses it
            return None
        if not math.isfinite(seconds):
            return None
        if seconds < 0:
            return -1.0
        return int(seconds * 1e9) / 1e9  # 1e-10 is 0 to Ollama: an unload
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except ValueError:
            return None
        return -1.0 if ns < 0 else ns / 1e9
    return None


def _unloads_only(path: str, body: Mapping[str, Any]) -> bool:
    """Whether a request with keep_alive 0 only unloads (Ollama's handlers: /api/generate
    with an empty prompt, /api/chat with no messages): nothing else comes of it."""
    if path == "/api/generate":
        return not body.get("prompt")
    if path == "/api/chat":
        return not body.get("messages")
    return False


def _shorter(sent: float, wanted: float) -> bool:
    """Whether a keep_alive of ``sent`` seconds keeps the model for less than ``wanted``."""
    if wanted < 0:
        return sent >= 0
    return 0 <= sent < wanted


def _keep_alive(
    body: Mapping[str, Any], model: ModelPolicy, view: GatewayView, rules: GatewaySection
) -> Change | None:
    """The change to the request's keep_alive that keeps the pin (None: none needed)."""
    wanted = model.effective_keep_alive
    after: object = -1 if wanted < 0 else int(wanted) if wanted.is_integer() else wanted
    if "keep_alive" not in body:
        default = view.policy.ollama.keep_alive  # what the drop-in makes Ollama use
        if not _shorter(default, wanted):
            return None
        return Change(
            "keep_alive",
            None,
            after,
            f"none sent: Ollama would keep it {format_duration(default)} (OLLAMA_KEEP_ALIVE)",
        )
    sent = _request_keep_alive(body["keep_alive"])
    if sent is None:
        return None  # not one Ollama reads: its own 400 says so
    if sent == 0:
        if rules.allow_unload:
            return None
        why = "keep_alive 0 would unload a pinned model (gateway.allow_unload: true honours it)"
        return Change("keep_alive", body["keep_alive"], after, why)
    if not _shorter(sent, wanted):
        return None
    return Change(
        "keep_alive",
        body["keep_alive"],
        after,
        f"{format_duration(sent)} would shorten the pin ({format_duration(wanted)})",
    )


def requested_num_ctx(
    options: object, policy: Policy, observation: Observation | None
) -> int | None:
    """The num_ctx a request with these ``options`` (its decoded ``options`` field) loads its
    model with: its own as Options.FromMap sets it (a float truncated; a null skipped), else
    Ollama's default for clients (None: unknown, or a value Ollama refuses)."""
    sent = options.get("num_ctx") if isinstance(options, Mapping) else None
    if sent is not None:
        return go_int(sent)  # None: not a number, Ollama's own error
    total = observation.gpu.total if observation is not None else None
    return context.client_default(policy, total).value


def _options(
    body: Mapping[str, Any], model: ModelPolicy, view: GatewayView
) -> tuple[dict[str, Any] | None, list[Change], int | None]:
    """The request's options aligned with the pinned model's: the new options (None:
    unchanged), what changed, and the num_ctx of a reload the request will still cause."""
    raw = body.get("options")
    if raw is not None and not isinstance(raw, dict):
        return None, [], None  # Ollama's own error
    options: dict[str, Any] = dict(raw or {})
    changes: list[Change] = []
    reload_ctx: int | None = None
    pinned = model.options
    total = view.observation.gpu.total if view.observation is not None else None
    target = pinned.num_ctx or context.client_default(view.policy, total).value
    sent = requested_num_ctx(options, view.policy, view.observation)
    if target is not None and sent is not None and sent != target:
        if sent < target:
            if pinned.num_ctx is not None:
                options["num_ctx"] = pinned.num_ctx
                after: object = pinned.num_ctx
            else:
                options.pop("num_ctx", None)  # Ollama's default, as the pinned model
                after = None
            changes.append(
                Change(
                    "options.num_ctx",
                    options_before(raw, "num_ctx"),
                    after,
                    f"{sent} is smaller than the pinned model's {target}: a larger context "
                    "gives the same answer, and the model is not reloaded",
                )
            )
        else:
            reload_ctx = sent
    for key in ALIGNED:
        want = getattr(pinned, key)
        if key not in options or options[key] == want or _same_int(options[key], want):
            continue
        if want is None:
            del options[key]
        else:
            options[key] = want
        changes.append(
            Change(
                f"options.{key}",
                options_before(raw, key),
                want,
                f"the pinned model is loaded with {key} "
                f"{'as Ollama defaults' if want is None else want}: another value reloads it",
            )
        )
    if not changes:
        return None, [], reload_ctx
    return options, changes, reload_ctx


def _same_int(sent: object, want: object) -> bool:
    """Whether Options.FromMap makes ``sent`` the integer ``want`` (512.0 is 512)."""
    return isinstance(want, int) and not isinstance(want, bool) and go_int(sent) == want


def options_before(raw: Mapping[str, Any] | None, key: str) -> object:
    return None if raw is None else raw.get(key)


def _foreign(
    name: str, path: str, body: Mapping[str, Any], view: GatewayView, rules: GatewaySection
) -> Decision:
    """A model not in the policy: forwarded, unless it is not loaded, would not fit beside
    the pinned models, and the policy says otherwise than ``evict``."""
    observation = view.observation
    key = model_key(name)  # Ollama finds a model whatever the case of its name
    if rules.foreign == "evict" or observation is None:
        return Decision(name)
    if any(model_key(n) == key for n in observation.loaded_by_name()):
        return Decision(name)
    installed = next(
        (m for n, m in observation.installed_by_name().items() if model_key(n) == key), None
    )
    if installed is None:
        return Decision(name)  # Ollama will answer "not found" itself
    why = _crowded(name, view.policy, observation)
    cpu_helps = False
    if why is None:
        room = _room(view.policy, observation)
        need = installed.size
        if room is None or fits_beside_loaded(need, room):
            return Decision(name)  # it fits, or memory is unknown
        why = (
            f"{name} is not loaded and does not fit beside the pinned models: it needs about "
            f"{format_size(need)}, {format_size(room)} of GPU memory is left for it; "
            "loading it would evict a pinned model"
        )
        cpu_helps = True
    if rules.foreign == "cpu" and path in NATIVE and cpu_helps:
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            return Decision(name)
        new = dict(options or {})
        before = new.get("num_gpu")
        new["num_gpu"] = 0
        change = Change("options.num_gpu", before, 0, f"{why}: loaded on the CPU instead")
        return Decision(name, {**body, "options": new}, (change,))
    if rules.foreign == "queue":
        return Decision(name, verdict=Verdict.QUEUE, error=why)
    if rules.foreign == "reject":
        hint = "set gateway.foreign: evict to let Ollama evict, or add it to the policy"
    elif not cpu_helps:
        hint = "on the CPU it would count against that limit too"
    else:
        hint = "the OpenAI-compatible endpoints cannot load it on the CPU (no options there)"
    return Decision(name, verdict=Verdict.REJECT, error=f"{why} ({hint})")


def _crowded(name: str, policy: Policy, observation: Observation) -> str | None:
    """Why one more model would make Ollama evict a pinned one whatever its size: it holds
    as many models as it allows (OLLAMA_MAX_LOADED_MODELS; 3 per GPU, at least 3, by
    default), all of them pinned (it evicts the shortest keep_alive first)."""
    limit = max_loaded_models(policy, observation)
    pinned = {m.name for m in policy.pinned}
    loaded = observation.loaded
    if len(loaded) < limit or any(m.name not in pinned for m in loaded):
        return None
    return (
        f"{name} is not loaded and Ollama already holds {len(loaded)} models, as many as it "
        "allows (OLLAMA_MAX_LOADED_MODELS), all pinned: loading it would evict a pinned model"
    )


def _room(policy: Policy, observation: Observation) -> int | None:
    """GPU memory a foreign model may take without evicting a pinned one: free memory and
    what the models Ollama would evict first hold (every loaded model that is not pinned:
    it evicts the shortest keep_alive first), less the headroom and the footprints of the
    pinned models not resident yet (None: unknown)."""
    free = observation.gpu.free
    if free is None:
        if policy.vram.budget is None:
            return None
        free = policy.vram.budget - sum(m.size for m in observation.loaded)
    pinned = {m.name for m in policy.pinned}
    evictable = sum(m.size_vram for m in observation.loaded if m.name not in pinned)
    loaded = observation.loaded_by_name()
    missing = sum(
        expected_footprint(m, policy, observation) or 0
        for m in policy.pinned
        if m.name not in loaded
    )
    return max(free + evictable - missing - policy.vram.headroom, 0)


def decide(
    path: str,
    body: object,
    view: GatewayView,
    rules: GatewaySection,
    now: datetime,
) -> Decision:
    """What to forward for a request to ``path`` whose body Ollama decodes to ``body`` (the
    fields set, as :mod:`.gojson` reads them; None or anything else: no model), at ``now``."""
    if path not in MODEL_PATHS or not isinstance(body, dict):
        return Decision(None)
    raw = body.get("model")
    if not isinstance(raw, str) or not raw.strip():
        return Decision(None)
    key = model_key(raw)
    named = next((m for m in view.policy.models if model_key(m.name) == key), None)
    name = named.name if named is not None else normalize_model_name(raw)
    active, _ = in_force(view.policy.models, zone_of(view.policy.timezone), now)
    model = next((m for m in active if m.name == name), None)
    if model is None:
        if named is not None:
            return Decision(name)  # a policy model outside its windows: left to its clients
        return _foreign(name, path, body, view, rules)
    if not model.pinned or path not in NATIVE:
        return Decision(name, pinned=model.pinned)
    changes: list[Change] = []
    new = dict(body)
    if rules.pin_keep_alive:
        change = _keep_alive(body, model, view, rules)
        if change is not None and change.before is not None and _unloads_only(path, body):
            sent = _request_keep_alive(change.before)
            if sent == 0:
                return Decision(
                    name,
                    verdict=Verdict.REJECT,
                    error=(
                        f"sentinel-keeper gateway: {name} is pinned, not unloaded: keep_alive "
                        f"{change.before} (what `ollama stop` sends) would unload it, and the "
                        "policy keeps it loaded; set gateway.allow_unload: true to let "
                        "clients unload pinned models"
                    ),
                    pinned=True,
                    status=403,
                )
        if change is not None:
            new["keep_alive"] = change.after
            changes.append(change)
    reload_ctx = None
    if rules.align_options:
        options, option_changes, reload_ctx = _options(body, model, view)
        if options is not None:
            new["options"] = options
            changes += option_changes
    return Decision(
        name,
        new if changes else None,
        tuple(changes),
        reload_num_ctx=reload_ctx,
        pinned=True,
    )
