"""The policy's schema: which models to keep warm, how, and when.

Frozen pydantic models (which also give the JSON Schema that `sentinel-keeper schema` prints)
and the value types they use. Pure: reading a file and YAML live in :mod:`.loading`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    WithJsonSchema,
)

from sentinel_keeper.ollama_env import KEEP_ALIVE, KNOWN_VARIABLES
from sentinel_keeper.policy.windows import Window, parse_window, time_zone_problem
from sentinel_keeper.values.listen import DEFAULT_METRICS_LISTEN, ListenAddress, parse_listen
from sentinel_keeper.values.names import normalize_model_name
from sentinel_keeper.values.quantities import parse_duration, parse_size
from sentinel_keeper.values.text import show
from sentinel_keeper.values.unitname import MAX_UNIT_NAME, UNIT_NAME_PATTERN, unit_name_problem
from sentinel_keeper.values.urls import DEFAULT_OLLAMA_URL, normalize_ollama_url

DEFAULT_POLICY_PATH = "/etc/sentinel/policy.yaml"
# gateway.takeover: where Ollama moves to, beside its usual 11434
DEFAULT_UPSTREAM = "127.0.0.1:11433"
PINNED_KEEP_ALIVE = -1.0
EXTRA_KEEP_ALIVE = 3600.0

# --- value types -------------------------------------------------------------------------

_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^[+-]?((\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h))+$|^[+-]?\d+$"},
        {"type": "integer"},
    ],
}
_SIZE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^(\d+\.?\d*|\.\d+)\s*([KMGT]i?B|kB|B)?$"},
        {"type": "integer", "minimum": 0},
    ],
}


def _duration(value: object) -> float:
    return parse_duration(value)


def _keep_alive(value: object) -> float:
    return parse_duration(value, allow_forever=True, allow_zero=True)


def _model_keep_alive(value: object) -> float:
    return parse_duration(value, allow_forever=True)


# Ollama reads load options as Go ints from JSON; a larger number is refused there at every
# load, so it is refused here. No option or priority needs more than 32 bits.
MAX_INTEGER = 2**31 - 1


def _integer(minimum: int, description: str) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be {description}, got {show(value)}")
        if value > MAX_INTEGER:
            raise ValueError(f"must be at most {MAX_INTEGER}, got {show(value)}")
        return value

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {show(value)}")
    return value


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}")


def model_name(value: object) -> str:
    if not isinstance(value, str) or not _MODEL_NAME.fullmatch(value.strip()):
        raise ValueError(
            'must be an Ollama model name such as "llama3.2:1b" (a letter or digit first, then '
            f"letters, digits and . _ : / @ + - only), got {show(value)}"
        )
    return normalize_model_name(value)


def _unit_name(value: object) -> str:
    problem = unit_name_problem(value)
    if problem is not None:
        raise ValueError(f"{problem}, got {show(value)}")
    return str(value)


def _environment(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of OLLAMA_* variables to values, got {show(value)}")
    result: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, int | float | str):
            text = str(item)
        else:
            text = ""  # reported by _check_environment with its own position
        result[str(key)] = text
    return result


def _window(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be a string such as "mon-fri 08:00-19:00", got {show(value)}')
    return parse_window(value).text


def _time_zone(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'must be an IANA time zone such as "Europe/Berlin", got {show(value)}')
    zone_problem = time_zone_problem(value.strip())
    if zone_problem is not None:
        raise ValueError(f"{zone_problem}, got {show(value)}")
    return value.strip()


def _warm_before(value: object) -> float:
    return parse_duration(value, allow_zero=True)


def _listen(value: object) -> str:
    return str(parse_listen(value))


# node_exporter's textfile collector reads only *.prom files.
_TEXTFILE = re.compile(r"/[^\x00-\x1f\x7f]*[^/\x00-\x1f\x7f]\.prom")


def _textfile(value: object) -> str:
    if not isinstance(value, str) or not _TEXTFILE.fullmatch(value) or "/../" in value + "/":
        raise ValueError(
            "must be an absolute path ending in .prom in node_exporter's textfile directory, "
            f'such as "/var/lib/prometheus/node-exporter/sentinel-keeper.prom", got {show(value)}'
        )
    return value


Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]
KeepAlive = Annotated[
    float,
    BeforeValidator(_keep_alive),
    WithJsonSchema({**_DURATION_SCHEMA, "description": "-1 (or any negative) = forever"}),
]
ModelKeepAlive = Annotated[
    float,
    BeforeValidator(_model_keep_alive),
    WithJsonSchema({**_DURATION_SCHEMA, "description": "-1 (or any negative) = forever"}),
]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
PositiveInt = Annotated[
    int,
    BeforeValidator(_integer(1, "a positive integer")),
    WithJsonSchema({"type": "integer", "minimum": 1}),
]
NonNegativeInt = Annotated[
    int,
    BeforeValidator(_integer(0, "an integer >= 0")),
    WithJsonSchema({"type": "integer", "minimum": 0}),
]
GpuLayers = Annotated[
    int,
    BeforeValidator(_integer(-1, "an integer >= -1 (-1 = let Ollama decide)")),
    WithJsonSchema({"type": "integer", "minimum": -1}),
]
AnyInt = Annotated[
    int,
    BeforeValidator(_integer(-(2**31), "an integer")),
    WithJsonSchema({"type": "integer"}),
]
Bool = Annotated[bool, BeforeValidator(_boolean), WithJsonSchema({"type": "boolean"})]


# NVML's spelling of a GPU's UUID ("GPU-5a0c8b6e-...") or of a MIG device's ("MIG-...")
_GPU_UUID = re.compile(r"(GPU|MIG)-[A-Za-z0-9][A-Za-z0-9/-]{0,95}")


def _gpu(value: object) -> int | str:
    if isinstance(value, str) and _GPU_UUID.fullmatch(value.strip()):
        return value.strip()
    if isinstance(value, str | bool) or not isinstance(value, int):
        raise ValueError(
            'must be an NVML GPU index such as 0 or a UUID such as "GPU-5a0c8b6e-..." '
            f"(`nvidia-smi -L` lists both), got {show(value)}"
        )
    return _integer(0, "an integer >= 0")(value)


def _gpus(value: object) -> str | list[int | str]:
    """ "all", or a non-empty list of NVML indices or UUIDs: one rule, one message."""
    if value == "all":
        return "all"
    if not isinstance(value, list) or not value:
        raise ValueError(
            f'must be "all" or a list of GPU indices or UUIDs such as [0, 1], got {show(value)}'
        )
    return [_gpu(item) for item in value]


Gpus = Annotated[
    Literal["all"] | list[int | str],
    BeforeValidator(_gpus),
    WithJsonSchema(
        {
            "anyOf": [
                {"const": "all"},
                {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"type": "integer", "minimum": 0},
                            {"type": "string", "pattern": _GPU_UUID.pattern},
                        ]
                    },
                    "minItems": 1,
                },
            ]
        }
    ),
]
# An instance's name: a log field, a metrics label and a directory name
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
DEFAULT_INSTANCE = "default"


def instance_name(value: object) -> str:
    if not isinstance(value, str) or not _INSTANCE_NAME.fullmatch(value):
        raise ValueError(
            'must be a name such as "gpu0" (a letter or digit first, then letters, digits, '
            f"_ and - only, at most 63), got {show(value)}"
        )
    return value


InstanceName = Annotated[
    str,
    BeforeValidator(instance_name),
    WithJsonSchema({"type": "string", "pattern": _INSTANCE_NAME.pattern}),
]
ModelName = Annotated[
    str,
    BeforeValidator(model_name),
    WithJsonSchema({"type": "string", "pattern": _MODEL_NAME.pattern}),
]
UnitName = Annotated[
    str,
    BeforeValidator(_unit_name),
    WithJsonSchema({"type": "string", "pattern": UNIT_NAME_PATTERN, "maxLength": MAX_UNIT_NAME}),
]
OllamaUrl = Annotated[
    str, BeforeValidator(normalize_ollama_url), WithJsonSchema({"type": "string"})
]
WindowText = Annotated[
    str,
    BeforeValidator(_window),
    WithJsonSchema({"type": "string", "description": "[DAYS] HH:MM-HH:MM"}),
]
TimeZone = Annotated[str, BeforeValidator(_time_zone), WithJsonSchema({"type": "string"})]
WarmBefore = Annotated[float, BeforeValidator(_warm_before), WithJsonSchema(_DURATION_SCHEMA)]
Listen = Annotated[
    str,
    BeforeValidator(_listen),
    WithJsonSchema({"type": "string", "description": "host:port, an IP address or localhost"}),
]
TextfilePath = Annotated[
    str,
    BeforeValidator(_textfile),
    WithJsonSchema({"type": "string", "pattern": _TEXTFILE.pattern}),
]
Environment = Annotated[
    dict[str, str],
    BeforeValidator(_environment),
    WithJsonSchema(
        {
            "type": "object",
            # the variables Ollama reads, from the one registry that validates them
            "propertyNames": {"enum": sorted(set(KNOWN_VARIABLES) - {KEEP_ALIVE})},
            "additionalProperties": {"type": ["string", "integer", "number", "boolean"]},
        }
    ),
]

# --- the schema --------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)


class OllamaSection(_Section):
    """How to reach Ollama, and what the OLLAMA_KEEP_ALIVE drop-in says."""

    url: OllamaUrl = Field(DEFAULT_OLLAMA_URL, description="Ollama's address (OLLAMA_HOST rules)")
    unit: UnitName = Field(
        "ollama.service", description="systemd unit whose environment is managed"
    )
    keep_alive: KeepAlive = Field(
        PINNED_KEEP_ALIVE, description="OLLAMA_KEEP_ALIVE for the drop-in"
    )
    environment: Environment = Field(
        default_factory=dict, description="extra OLLAMA_* variables for the same drop-in"
    )
    restart: Literal["if-changed", "never"] = Field(
        "if-changed", description="restart ollama after the drop-in changes?"
    )
    load_timeout: Duration = Field(600.0, description="one model load may take this long")
    request_timeout: Duration = Field(
        5.0, description="timeout for the small observation requests (/api/ps, /api/tags...)"
    )
    align_context: Bool = Field(
        False,
        description="write the pinned models' num_ctx as OLLAMA_CONTEXT_LENGTH (when they agree)",
    )


class InstanceSection(OllamaSection):
    """One Ollama server (one `ollama serve`, its own unit, port and GPUs): the keys of the
    ollama section, a name, and the GPUs it uses."""

    name: InstanceName = Field(description="the instance's name in logs, metrics and models")
    gpus: Gpus = Field(
        "all",
        description='its GPUs: NVML indices or UUIDs (`nvidia-smi -L`), or "all"',
    )


class VramSection(_Section):
    """GPU memory rules for extra models."""

    gpus: Gpus = Field("all", description='"all" or a list of NVML GPU indices or UUIDs')
    headroom: Size = Field(512 * 1024**2, description="free memory to keep after loading an extra")
    budget: Size | None = Field(
        None, description="without NVML: memory the models may use in total"
    )

    @property
    def gpu_selection(self) -> tuple[int | str, ...] | None:
        """The GPUs to read (NVML indices or UUIDs); None: all of them."""
        return None if self.gpus == "all" else tuple(self.gpus)


class LoadOptions(_Section):
    """Ollama's load-time options. Any difference from the loaded instance reloads the model,
    so these must be the ones the clients send."""

    num_ctx: PositiveInt | None = None
    num_batch: PositiveInt | None = None
    num_gpu: GpuLayers | None = None
    main_gpu: NonNegativeInt | None = None
    use_mmap: Bool | None = None
    num_thread: NonNegativeInt | None = None

    def as_request(self) -> dict[str, int | bool]:
        """The options as Ollama's request `options` object: only those set."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ModelPolicy(_Section):
    """One model to keep warm."""

    name: ModelName
    instance: InstanceName | None = Field(
        None, description="the instance that keeps it (default: the only one)"
    )
    tier: Literal["pinned", "extra"] = Field(
        "pinned", description="pinned: always resident; extra: only when it fits"
    )
    options: LoadOptions = Field(default_factory=LoadOptions)
    keep_alive: ModelKeepAlive | None = Field(
        None, description="sent with the load request (default: -1 pinned, 1h extras)"
    )
    priority: AnyInt = Field(0, description="extras load highest first and are shed lowest first")
    pull: Bool = Field(False, description="pull the model when it is not installed")
    windows: list[WindowText] | None = Field(
        None,
        description='when it must be warm, e.g. ["mon-fri 08:00-19:00"]; default: always',
    )
    outside: Literal["ignore", "unload"] = Field(
        "ignore",
        description="outside its windows: ignore (left alone) or unload (once idle)",
    )
    warm_before: WarmBefore = Field(
        0.0, description="start loading this long before a window opens"
    )

    def parsed_windows(self) -> tuple[Window, ...]:
        return tuple(parse_window(w) for w in self.windows or ())

    @property
    def pinned(self) -> bool:
        return self.tier == "pinned"

    @property
    def effective_keep_alive(self) -> float:
        if self.keep_alive is not None:
            return self.keep_alive
        return PINNED_KEEP_ALIVE if self.pinned else EXTRA_KEEP_ALIVE


class ReloadBackoffSection(_Section):
    """When clients keep reloading a model with another num_ctx, stop reloading it back for a
    while instead of playing ping-pong with them."""

    after: NonNegativeInt = Field(
        3, description="client reloads within `within` that put a model on hold (0: never)"
    )
    within: Duration = Field(600.0, description="the window the client reloads are counted in")
    cool_down: Duration = Field(
        1800.0, description="how long the keeper leaves the model to its clients"
    )
    quiet: Duration = Field(
        5.0,
        description="the first time a client loads a model with another num_ctx, its "
        "instance untouched this long is idle: reloaded with the policy's options; each "
        "return of that num_ctx within `within` doubles the wait, which is also at least "
        "twice the longest time the client took to come back, up to `cool_down`",
    )


class MetricsSection(_Section):
    """Prometheus figures: an HTTP endpoint, and a file for node_exporter's textfile
    collector."""

    listen: Listen | None = Field(
        DEFAULT_METRICS_LISTEN,
        description="address of the read-only endpoint (/metrics, /ready, /live); null turns "
        "it off",
    )
    textfile: TextfilePath | None = Field(
        None, description="also write the figures to this .prom file after every pass"
    )
    allow_remote: Bool = Field(False, description="allow a listen address other than loopback")

    @property
    def address(self) -> ListenAddress | None:
        return None if self.listen is None else parse_listen(self.listen)

    @property
    def enabled(self) -> bool:
        return self.listen is not None or self.textfile is not None


class GatewaySection(_Section):
    """An optional reverse proxy in front of one Ollama instance, on the request path: it
    keeps pinned models' pins and options, and protects them from foreign models."""

    listen: Listen | None = Field(
        None, description="address the gateway listens on, e.g. 127.0.0.1:11435; null: off"
    )
    allow_remote: Bool = Field(False, description="allow a listen address other than loopback")
    instance: InstanceName | None = Field(
        None, description="the Ollama instance it fronts (default: the only one)"
    )
    pin_keep_alive: Bool = Field(
        True, description="replace a client's keep_alive that would shorten a pinned model's"
    )
    allow_unload: Bool = Field(
        False, description="honour a client's keep_alive 0 (unload) for a pinned model"
    )
    align_options: Bool = Field(
        True,
        description="raise a smaller num_ctx to the pinned one; align num_batch, num_thread, "
        "use_mmap with the pinned model's",
    )
    foreign: Literal["evict", "queue", "cpu", "reject"] = Field(
        "evict",
        description="a model not in the policy that would not fit beside the pinned ones: "
        "evict (Ollama's own way), queue (wait for memory), cpu (load it on the CPU), "
        "reject (503)",
    )
    queue_timeout: Duration = Field(
        30.0, description="foreign: queue waits this long for memory, then answers 503"
    )
    max_body: Size = Field(
        16 * 1024**2,
        description="largest JSON body of a generate, chat or embed request (larger: 413)",
    )
    takeover: Bool = Field(
        False,
        description="take Ollama's address: the drop-in moves Ollama to upstream (OLLAMA_HOST) "
        "and the gateway listens at the instance's url, so clients change nothing",
    )
    upstream: Listen = Field(
        DEFAULT_UPSTREAM,
        description="with takeover: the private loopback address Ollama moves to",
    )
    drain: Duration = Field(
        300.0,
        description="at a stop, requests in flight may finish for this long (a long "
        "generation), then are cut; the gateway's unit has TimeoutStopSec=330s",
    )
    view_max_age: Duration = Field(
        30.0,
        description="the keeper's view of Ollama older than this (the keeper gone or stuck): "
        "the rules that need it forward requests unchanged until a fresh one arrives",
    )

    @property
    def address(self) -> ListenAddress | None:
        return None if self.listen is None else parse_listen(self.listen)


class Policy(_Section):
    """The whole policy file."""

    ollama: OllamaSection = Field(default_factory=OllamaSection)
    instances: list[InstanceSection] | None = Field(
        None,
        description="several Ollama servers (one per GPU, say), instead of the ollama section",
    )
    interval: Duration = Field(15.0, description="how often a reconcile pass runs")
    timezone: TimeZone | None = Field(
        None, description="the time zone of the models' windows (IANA); default: the host's"
    )
    ready: Literal["pinned", "started"] = Field(
        "pinned", description="when the daemon tells systemd it is ready"
    )
    startup_timeout: Duration = Field(
        600.0, description="stop waiting for pinned models before READY after this"
    )
    vram: VramSection = Field(default_factory=VramSection)
    reload_backoff: ReloadBackoffSection = Field(default_factory=ReloadBackoffSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    models: list[ModelPolicy] = Field(default_factory=list)

    _source: str = PrivateAttr(default="<policy>")
    _instance: str = PrivateAttr(default=DEFAULT_INSTANCE)
    _instance_key: str = PrivateAttr(default="ollama")
    _client_url: str | None = PrivateAttr(default=None)  # set on a part taken over by split()

    @property
    def source(self) -> str:
        """The file this policy was read from."""
        return self._source

    @property
    def instance(self) -> str:
        """The name of the instance this policy is about (see :meth:`split`)."""
        return self._instance

    @property
    def instance_key(self) -> str:
        """Where the instance's settings are in the file, for messages: "ollama" or
        "instances[1]"."""
        return self._instance_key

    @property
    def instance_names(self) -> tuple[str, ...]:
        if self.instances is None:
            return (self._instance,)
        return tuple(i.name for i in self.instances)

    @property
    def gateway_instance(self) -> str | None:
        """The instance the gateway fronts; None when the gateway is off."""
        if self.gateway.listen is None and not self.gateway.takeover:
            return None
        return self.gateway.instance or self.instance_names[0]

    @property
    def takeover(self) -> ListenAddress | None:
        """On a single-instance policy (a part) whose instance the gateway fronts with
        ``gateway.takeover``: the private address Ollama moves to (its OLLAMA_HOST); else
        None."""
        if self.instances is not None or not self.gateway.takeover:
            return None
        if self.gateway_instance != self.instance:
            return None
        return parse_listen(self.gateway.upstream)

    @property
    def client_url(self) -> str:
        """Where Ollama's clients connect: the instance's url as the file gives it, which
        on a part taken over (``gateway.takeover``) is the gateway's address; ``ollama.url``
        is then Ollama's private one."""
        return self._client_url or self.ollama.url

    def split(self) -> tuple[Policy, ...]:
        """One policy per Ollama instance, each a single-instance policy as without
        ``instances:``: its ollama section is the instance's, vram.gpus its GPUs, its models
        those that name it. Everything that runs against one Ollama takes one of these. A
        policy without ``instances:`` is its own only part, the instance ``default``.

        With ``gateway.takeover``, the part of the instance the gateway fronts talks to
        Ollama at ``gateway.upstream`` (its ``ollama.url``), and its gateway listens at the
        instance's url as the file gives it (:attr:`client_url`)."""
        if self.instances is None:
            return (self._taken_over(),)
        only = self.instances[0].name if len(self.instances) == 1 else None
        parts = []
        for index, section in enumerate(self.instances):
            part = self.model_copy(
                update={
                    "ollama": section,
                    "instances": None,
                    "vram": self.vram.model_copy(update={"gpus": section.gpus}),
                    "models": [m for m in self.models if (m.instance or only) == section.name],
                }
            )
            part._instance = section.name
            part._instance_key = f"instances[{index}]"
            parts.append(part._taken_over())
        return tuple(parts)

    def _taken_over(self) -> Policy:
        """This single-instance policy as :meth:`split` gives it with takeover."""
        upstream = self.takeover
        if upstream is None or self._client_url is not None:
            return self
        public = takeover_address(self.ollama.url)
        if public is None:  # refused when the file is read; a policy built in code
            raise ValueError(f"gateway.takeover: {self.ollama.url} is not a local http:// address")
        part = self.model_copy(
            update={
                "ollama": self.ollama.model_copy(update={"url": f"http://{upstream}"}),
                "gateway": self.gateway.model_copy(update={"listen": str(public)}),
            }
        )
        part._client_url = self.ollama.url
        return part

    @property
    def pinned(self) -> tuple[ModelPolicy, ...]:
        return tuple(m for m in self.models if m.pinned)

    @property
    def extras(self) -> tuple[ModelPolicy, ...]:
        return tuple(m for m in self.models if not m.pinned)

    def model(self, name: str) -> ModelPolicy | None:
        for entry in self.models:
            if entry.name == name:
                return entry
        return None


def takeover_address(url: str) -> ListenAddress | None:
    """The address the gateway takes over from an Ollama at ``url`` (a normalized
    ``ollama.url``): its host and port when it is plain http:// to an IP address or localhost,
    with no path; else None (the gateway cannot listen there)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.path or parts.hostname is None or parts.port is None:
        return None
    try:
        return parse_listen(
            f"[{parts.hostname}]:{parts.port}"
            if ":" in parts.hostname
            else f"{parts.hostname}:{parts.port}"
        )
    except ValueError:
        return None


def json_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sentinel-keeper policy"
    return schema
