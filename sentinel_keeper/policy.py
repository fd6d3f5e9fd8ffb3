"""The policy: which models to keep warm, how, and when.

The schema is a set of frozen pydantic models (which also give the JSON Schema that
`sentinel-keeper schema` prints). Loading goes through :mod:`sentinel_keeper.yamlsource` so
that every problem is reported at once, compiler style, with file, line, column and field.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
)

from sentinel_keeper.errors import Diagnostic, PolicyError
from sentinel_keeper.names import normalize_model_name
from sentinel_keeper.ollama_env import name_problem, value_problem
from sentinel_keeper.unitname import UNIT_NAME_PATTERN, unit_name_problem
from sentinel_keeper.units import parse_duration, parse_size, show
from sentinel_keeper.yamlsource import (
    MAX_FILE_BYTES,
    Path,
    Positions,
    YamlSyntaxError,
    format_path,
    load_yaml,
)

DEFAULT_POLICY_PATH = "/etc/sentinel/policy.yaml"
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
OLLAMA_DEFAULT_PORT = 11434
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


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {show(value)}")
    return value


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}")


def _model_name(value: object) -> str:
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


def normalize_ollama_url(value: object) -> str:
    """OLLAMA_HOST rules: a bare host (or host:port) gets http:// and port 11434; a URL with a
    scheme and no port keeps the scheme's own port (80 or 443)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'must be a URL such as "http://127.0.0.1:11434", got {show(value)}')
    text = value.strip()
    if any(ord(c) < 0x21 or c in "\"'<>\\`" for c in text):
        raise ValueError(
            f"must be a URL without spaces, quotes or control characters, got {show(value)}"
        )
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else f"http://{text}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port, got {show(value)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL or a host[:port], got {show(value)}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"must not carry a query, fragment or credentials, got {show(value)}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is None and not has_scheme:
        port = OLLAMA_DEFAULT_PORT
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


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
ModelName = Annotated[
    str,
    BeforeValidator(_model_name),
    WithJsonSchema({"type": "string", "pattern": _MODEL_NAME.pattern}),
]
UnitName = Annotated[
    str,
    BeforeValidator(_unit_name),
    WithJsonSchema({"type": "string", "pattern": UNIT_NAME_PATTERN}),
]
OllamaUrl = Annotated[
    str, BeforeValidator(normalize_ollama_url), WithJsonSchema({"type": "string"})
]
Environment = Annotated[
    dict[str, str],
    BeforeValidator(_environment),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": "^OLLAMA_[A-Z0-9_]+$"},
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


class VramSection(_Section):
    """GPU memory rules for extra models."""

    gpus: Literal["all"] | list[NonNegativeInt] = Field(
        "all", description='"all" or a list of NVML GPU indices'
    )
    headroom: Size = Field(512 * 1024**2, description="free memory to keep after loading an extra")
    budget: Size | None = Field(
        None, description="without NVML: memory the models may use in total"
    )

    @property
    def gpu_indices(self) -> tuple[int, ...] | None:
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
    tier: Literal["pinned", "extra"] = Field(
        "pinned", description="pinned: always resident; extra: only when it fits"
    )
    options: LoadOptions = Field(default_factory=LoadOptions)
    keep_alive: ModelKeepAlive | None = Field(
        None, description="sent with the load request (default: -1 pinned, 1h extras)"
    )
    priority: AnyInt = Field(0, description="extras load highest first and are shed lowest first")
    pull: Bool = Field(False, description="pull the model when it is not installed")

    @property
    def pinned(self) -> bool:
        return self.tier == "pinned"

    @property
    def effective_keep_alive(self) -> float:
        if self.keep_alive is not None:
            return self.keep_alive
        return PINNED_KEEP_ALIVE if self.pinned else EXTRA_KEEP_ALIVE


class Policy(_Section):
    """The whole policy file."""

    ollama: OllamaSection = Field(default_factory=OllamaSection)
    interval: Duration = Field(15.0, description="how often a reconcile pass runs")
    ready: Literal["pinned", "started"] = Field(
        "pinned", description="when the daemon tells systemd it is ready"
    )
    startup_timeout: Duration = Field(
        600.0, description="stop waiting for pinned models before READY after this"
    )
    vram: VramSection = Field(default_factory=VramSection)
    models: list[ModelPolicy] = Field(default_factory=list)

    _source: str = PrivateAttr(default="<policy>")

    @property
    def source(self) -> str:
        """The file this policy was read from."""
        return self._source

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


def json_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sentinel-keeper policy"
    return schema


# --- loading -----------------------------------------------------------------------------


def _model_at(path: Path) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``path`` (for 'known keys' hints)."""
    current: type[BaseModel] = Policy
    for part in path:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return None
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        for c in candidates:
            for inner in getattr(c, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nested.append(inner)
        if not nested:
            return None
        current = nested[0]
    return current


def _describe(error: Mapping[str, Any], path: Path) -> tuple[str, bool]:
    """A user's message for one pydantic error, and whether it points at the key."""
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        known = ", ".join(model.model_fields) if model else ""
        if model is LoadOptions:
            return (
                f"not a load-time option (sampling options never reload a model and do not "
                f"belong here; load-time options: {known})"
            ), True
        return (f"unknown key (known keys: {known})" if known else "unknown key"), True
    if kind == "missing":
        return "is required", True
    if kind == "value_error":
        ctx = error.get("ctx") or {}
        return str(ctx.get("error", error["msg"])), False
    if kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"must be one of {expected}, got {show(value)}", False
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of keys to values, got {show(value)}", False
    if kind == "list_type":
        return f"must be a list, got {show(value)}", False
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {show(value)}", False


def _check_models(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        return
    seen: dict[str, int] = {}
    for index, entry in enumerate(models):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        try:
            name = _model_name(entry["name"])
        except ValueError:
            continue  # reported by the schema
        if name in seen:
            problems.append(
                ((("models", index, "name")), f"duplicate of models[{seen[name]}] ({name})", False)
            )
        else:
            seen[name] = index


def _check_environment(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    section = data.get("ollama") if isinstance(data, dict) else None
    environment = section.get("environment") if isinstance(section, dict) else None
    if not isinstance(environment, dict):
        return
    for key, value in environment.items():
        path: Path = ("ollama", "environment", str(key))
        if not isinstance(key, str):
            problems.append((path, f"variable names must be strings, got {show(key)}", True))
            continue
        if key == "OLLAMA_KEEP_ALIVE":
            problems.append((path, "set it with ollama.keep_alive, not here", True))
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            problems.append((path, f"must be a string or a number, got {show(value)}", False))
            continue
        problem = name_problem(key)
        if problem is not None:
            problems.append((path, problem, True))
            continue
        problem = value_problem(key, text)
        if problem is not None:
            problems.append((path, problem, False))


def parse_policy(text: str, source: str) -> Policy:
    """Validate policy text; raise PolicyError listing every problem found."""
    try:
        document = load_yaml(text, source)
    except YamlSyntaxError as exc:
        raise PolicyError(source, exc.diagnostics) from None
    diagnostics = list(document.problems)
    data = document.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(
            source,
            [
                Diagnostic(
                    source, 1, 1, "", f"the policy must be a mapping of keys, got {show(data)}"
                )
            ],
        )
    problems: list[tuple[Path, str, bool]] = []
    _check_models(data, problems)
    _check_environment(data, problems)
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            path = tuple(error["loc"])
            message, at_key = _describe(error, path)
            problems.append((path, message, at_key))
    diagnostics.extend(_locate(source, document.positions, problems))
    if diagnostics or policy is None:
        unique = sorted(set(diagnostics), key=lambda d: (d.line, d.column, d.field))
        raise PolicyError(source, unique)
    policy._source = source
    return policy


def _locate(
    source: str, positions: Positions, problems: list[tuple[Path, str, bool]]
) -> list[Diagnostic]:
    out = []
    for path, message, at_key in problems:
        line, column = positions.locate(path, prefer_key=at_key)
        out.append(Diagnostic(source, line, column, format_path(path), message))
    return out


# A file modified this recently may be in the middle of an in-place rewrite (an editor that
# truncates and writes): reading waits until it has been still this long, within a bound.
SETTLE_SECONDS = 0.25
SETTLE_LIMIT_SECONDS = 3.0


def _identity(info: os.stat_result) -> tuple[int, int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _read_settled(path: str, settle: float, fail: Callable[[str], PolicyError]) -> bytes:
    """The file's bytes, read once it has not changed for ``settle`` seconds and found the
    same before and after the read, so that a file being rewritten in place is not taken
    half-written. PolicyError if it keeps changing for SETTLE_LIMIT_SECONDS."""
    deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
    while True:
        before = os.stat(path)
        age = time.time() - max(before.st_mtime, before.st_ctime)
        if 0 <= age < settle:
            if time.monotonic() + settle - age > deadline:
                raise fail("keeps changing (being written?); not read")
            time.sleep(settle - age)
            continue
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        after = os.stat(path)
        if _identity(before) == _identity(after) and len(raw) in (
            after.st_size,
            MAX_FILE_BYTES + 1,
        ):
            return raw
        if time.monotonic() > deadline:
            raise fail("keeps changing (being written?); not read")
        time.sleep(min(settle, 0.05) or 0.01)


def load_policy(path: str, *, settle: float = 0.0, empty_ok: bool = True) -> Policy:
    """Read and validate the policy file at ``path``.

    ``settle`` (the daemon: :data:`SETTLE_SECONDS`): wait until the file has been still that
    long and read it again if it changed during the read, so that an in-place rewrite is not
    read half-way. ``empty_ok=False`` (the daemon's reload) refuses an empty file, which is
    what an in-place rewrite looks like between its truncation and its write.
    """

    def fail(message: str) -> PolicyError:
        return PolicyError(path, [Diagnostic(path, 1, 1, "", message)])

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise fail("no such file (set --policy or SENTINEL_POLICY to use another)") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise fail("is a directory, not a policy file")
    if info.st_size > MAX_FILE_BYTES:
        raise fail(f"is {info.st_size} bytes; a policy larger than {MAX_FILE_BYTES} is refused")
    try:
        if settle > 0 and stat.S_ISREG(info.st_mode):
            raw = _read_settled(path, settle, fail)
        else:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise fail("no such file (removed while being read)") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise fail(f"is larger than {MAX_FILE_BYTES} bytes; refused")
    if not raw and not empty_ok:
        raise fail("is empty (being rewritten?); write `models: []` to keep no model")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyError(
            path, [Diagnostic(path, line, 1, "", "is not UTF-8 text (binary file?)")]
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise PolicyError(path, [Diagnostic(path, line, 1, "", "contains a NUL byte")])
    return parse_policy(text, path)


# --- who can change the policy -------------------------------------------------------------


@dataclass(frozen=True)
class FileRisk:
    """Someone besides root can change the policy, and so Ollama's environment (through the
    drop-in apply-override writes as root) and which models are loaded or pulled."""

    message: str
    anyone: bool  # every local user can, not only a group or one user


def _private_group(info: os.stat_result) -> bool:
    """Is the file's group the owner's own group with nobody else in it (the user private
    groups of Debian and others, where a umask of 002 makes files group-writable)?"""
    try:
        owner = pwd.getpwuid(info.st_uid)
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return False
    return owner.pw_gid == info.st_gid and not [m for m in group.gr_mem if m != owner.pw_name]


def _writers(info: os.stat_result, what: str, directory: bool) -> list[FileRisk]:
    mode = info.st_mode
    risks = []
    if directory and mode & stat.S_ISVTX:
        return []  # sticky (/tmp): others cannot replace a file they do not own
    verb = "replace the policy in it" if directory else "change it"
    if mode & stat.S_IWOTH:
        risks.append(FileRisk(f"{what} is world-writable: any local user can {verb}", True))
    elif mode & stat.S_IWGRP and info.st_gid != 0 and not _private_group(info):
        risks.append(
            FileRisk(f"{what} is group-writable (gid {info.st_gid}): that group can {verb}", False)
        )
    if info.st_uid not in (0, os.geteuid()):
        risks.append(FileRisk(f"{what} is owned by uid {info.st_uid}, who can {verb}", False))
    return risks


def file_risks(path: str) -> tuple[FileRisk, ...]:
    """Who besides root (and the caller) can change the policy at ``path``: the file itself
    (through a symlink, the file it points to), and the directories holding the link and the
    file. Empty when only root can; unreadable places are skipped (loading reports them)."""
    risks: list[FileRisk] = []
    real = os.path.realpath(path)
    try:
        risks += _writers(
            os.stat(real),
            "the policy file"
            if real == os.path.abspath(path)
            else f"the policy file ({path} -> {real})",
            False,
        )
    except OSError:
        return ()
    directories = dict.fromkeys(os.path.dirname(p) or "." for p in (os.path.abspath(path), real))
    for directory in directories:
        try:
            risks += _writers(os.stat(directory), f"its directory {directory}", True)
        except OSError:
            continue
    return tuple(risks)
