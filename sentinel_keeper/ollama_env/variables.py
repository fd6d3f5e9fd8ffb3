"""The Ollama environment variables sentinel-keeper may set, validated as Ollama parses them.

Pure: no I/O. Everything here was checked against Ollama's own parser, envconfig/config.go in
github.com/ollama/ollama at v0.33.0-rc2 (commit fb30760996871fa9460115c753afd2c60d4ab0f7):

- ``Var()`` trims surrounding whitespace and then any ``"`` and ``'`` from every value.
- Durations (OLLAMA_KEEP_ALIVE, OLLAMA_LOAD_TIMEOUT): Go ``time.ParseDuration``, else
  ``strconv.ParseInt`` as whole seconds; anything else *silently* becomes the 5m default.
  Negative keep-alive means forever; zero or negative load timeout means no limit.
- Booleans: ``strconv.ParseBool``; an unparsable value is silently read as *true*.
- Unsigned integers: ``strconv.ParseUint(s, 10, 64)``; unparsable -> default with a log line.
- OLLAMA_DEBUG: a boolean, or an integer log level; anything else silently means INFO.
- OLLAMA_HOST: ``[scheme://]host[:port][/path]``; a bad port silently becomes the default.
- OLLAMA_ORIGINS: comma separated, handed to gin-contrib/cors, which refuses (panics at
  start) an origin that is neither ``*`` nor ``scheme://...``.
- OLLAMA_KV_CACHE_TYPE: lower-cased; Ollama knows f16, q8_0 and q4_0.

How a value is written into a unit (and read back) is :mod:`.unitsyntax`; Go's parsers are
:mod:`.goparse`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sentinel_keeper.ollama_env.goparse import (
    GO_BOOLS,
    INT64_MAX,
    NS_PER_S,
    ollama_duration_ns,
    parse_go_int64,
    parse_go_uint64,
)
from sentinel_keeper.ollama_env.unitsyntax import ENV_NAME, MAX_VALUE_LENGTH, unsafe_text_problem

OLLAMA_SOURCE = (
    "github.com/ollama/ollama envconfig/config.go, v0.33.0-rc2 "
    "(commit fb30760996871fa9460115c753afd2c60d4ab0f7)"
)

KEEP_ALIVE = "OLLAMA_KEEP_ALIVE"

# --- OLLAMA_KEEP_ALIVE from the policy's keep_alive seconds ---------------------------------


def keep_alive_problem(seconds: float) -> str | None:
    """None if ``seconds`` (negative = forever) can be written as OLLAMA_KEEP_ALIVE."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "must be a number of seconds (-1 for forever)"
    if not math.isfinite(seconds):
        return "must be a finite number of seconds (-1 for forever)"
    if seconds >= 0 and round(seconds * NS_PER_S) > INT64_MAX:
        return "is longer than Ollama can hold (about 292 years); use -1 for forever"
    return None


def format_keep_alive(seconds: float) -> str:
    """OLLAMA_KEEP_ALIVE text for ``seconds``: ``-1`` for any negative, else a Go duration.

    ``86400`` -> ``24h``, ``5400`` -> ``1h30m``, ``90`` -> ``1m30s``, ``0.25`` -> ``0.25s``,
    ``0`` -> ``0``. Raises ValueError where :func:`keep_alive_problem` reports one.
    """
    problem = keep_alive_problem(seconds)
    if problem is not None:
        raise ValueError(f"keep_alive {seconds!r} {problem}")
    if seconds < 0:
        return "-1"
    ns = round(seconds * NS_PER_S)
    if ns == 0:
        return "0"
    hours, rest = divmod(ns, 3600 * NS_PER_S)
    minutes, rest = divmod(rest, 60 * NS_PER_S)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        whole, frac = divmod(rest, NS_PER_S)
        if frac:
            parts.append(f"{whole}.{frac:09d}".rstrip("0") + "s")
        else:
            parts.append(f"{whole}s")
    text = "".join(parts)
    if ollama_duration_ns(text) != ns:  # pragma: no cover - guarded by tests
        raise AssertionError(f"keep_alive rendering {text!r} does not parse back to {ns}ns")
    return text


# --- the known variables and their validators ------------------------------------------------


Validator = Callable[[str], str | None]


def _check_duration(value: str) -> str | None:
    if ollama_duration_ns(value) is None:
        return (
            f"Ollama cannot parse {value!r} as a duration (it would silently use 5m); "
            "use Go syntax such as 30s, 10m, 1h30m, or whole seconds (days are not supported)"
        )
    return None


def _check_bool(value: str) -> str | None:
    if value not in GO_BOOLS:
        return (
            f"Ollama cannot parse {value!r} as a boolean (it would silently read it as true); "
            "use true/false or 1/0"
        )
    return None


def _check_uint(value: str) -> str | None:
    try:
        parse_go_uint64(value)
    except ValueError:
        return (
            f"Ollama cannot parse {value!r} as a non-negative whole number "
            "(it would silently use its default)"
        )
    return None


def _check_debug(value: str) -> str | None:
    if value in GO_BOOLS:
        return None
    try:
        parse_go_int64(value)
    except ValueError:
        return (
            f"Ollama cannot parse {value!r} as a boolean or a log level number "
            "(it would silently use INFO); use 0, 1 or 2"
        )
    return None


_HOSTNAME = re.compile(r"[A-Za-z0-9._-]+\Z")
_URL_PATH = re.compile(r"[A-Za-z0-9._~!$&()*+,;=:@/-]*\Z")


def _host_problem(host: str) -> str | None:
    if host.startswith("["):
        return None if re.fullmatch(r"\[[0-9A-Fa-f:.]+(%[A-Za-z0-9]+)?\]", host) else "bad"
    return None if _HOSTNAME.match(host) else "bad"


def _check_host(value: str) -> str | None:
    s = value
    scheme, sep, rest = s.partition("://")
    if sep:
        if scheme not in ("http", "https"):
            return f"OLLAMA_HOST scheme {scheme!r} is not http or https"
        s = rest
    hostport, _, path = s.partition("/")
    if not _URL_PATH.match(path):
        return f"OLLAMA_HOST path {path!r} contains characters that do not belong in a URL"
    # Go's net.SplitHostPort: "[v6]:port", "host:port"; otherwise the whole is a host.
    host, port = hostport, None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            return f"OLLAMA_HOST {value!r} has an unclosed '['"
        host, after = hostport[: close + 1], hostport[close + 1 :]
        if after:
            if not after.startswith(":"):
                return f"OLLAMA_HOST {value!r} has text after ']' that is not a port"
            port = after[1:]
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    elif hostport.count(":") > 1:
        host = f"[{hostport}]"  # a bare IPv6 address: Go parses it with the default port
    if port is not None and (not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535):
        return (
            f"Ollama cannot parse the port in OLLAMA_HOST {value!r} "
            "(it would silently use its default port)"
        )
    if host and _host_problem(host):
        return f"OLLAMA_HOST {value!r} does not name a host or IP address"
    return None


def _check_origins(value: str) -> str | None:
    for origin in value.split(","):
        if origin == "*":
            continue
        if not origin or " " in origin:
            return (
                f"OLLAMA_ORIGINS {value!r} has an empty or spaced entry; "
                "separate origins with commas only"
            )
        scheme, sep, rest = origin.partition("://")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) or not rest:
            return (
                f"origin {origin!r} is neither '*' nor 'scheme://host' "
                "(Ollama's CORS layer would refuse to start)"
            )
        if origin.count("*") > 1:
            return f"origin {origin!r} has more than one '*'"
    return None


def _check_path(value: str) -> str | None:
    if value and not value.startswith("/"):
        return (
            f"{value!r} must be an absolute path (systemd starts Ollama in /, and ~ is not "
            "expanded)"
        )
    return None


_KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


def _check_kv_cache_type(value: str) -> str | None:
    if value.lower() not in _KV_CACHE_TYPES:
        return f"Ollama knows the K/V cache types {', '.join(_KV_CACHE_TYPES)}, not {value!r}"
    return None


def _check_library(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        return f"{value!r} is not a library name such as cpu, cuda_v12 or rocm"
    return None


def _check_hosts(value: str) -> str | None:
    for host in value.split(","):
        if not re.fullmatch(r"[A-Za-z0-9._-]+(:[0-9]{1,5})?", host.strip()):
            return f"{host!r} in {value!r} is not a host name"
    return None


def _check_text(value: str) -> str | None:
    return None


@dataclass(frozen=True)
class OllamaVariable:
    """One environment variable that Ollama's envconfig reads."""

    name: str
    kind: str
    description: str
    check: Validator


def _v(name: str, kind: str, check: Validator, description: str) -> OllamaVariable:
    return OllamaVariable(name, kind, description, check)


KNOWN_VARIABLES: Mapping[str, OllamaVariable] = MappingProxyType(
    {
        v.name: v
        for v in (
            _v("OLLAMA_AUTH", "bool", _check_bool, "Authenticate between client and server"),
            _v("OLLAMA_CONTEXT_LENGTH", "uint", _check_uint, "Default context length"),
            _v("OLLAMA_DEBUG", "debug", _check_debug, "Debug logging (1) or a log level"),
            _v("OLLAMA_DEBUG_LOG_REQUESTS", "bool", _check_bool, "Log inference requests"),
            _v("OLLAMA_EDITOR", "text", _check_text, "Editor for the interactive prompt"),
            _v("OLLAMA_FLASH_ATTENTION", "bool", _check_bool, "Flash attention"),
            _v("OLLAMA_GO_TEMPLATE", "bool", _check_bool, "Modelfile TEMPLATE rendering"),
            _v("OLLAMA_GPU_OVERHEAD", "uint", _check_uint, "VRAM to reserve per GPU (bytes)"),
            _v("OLLAMA_HOST", "host", _check_host, "Address the server listens on"),
            _v("OLLAMA_IGPU_ENABLE", "bool", _check_bool, "Allow integrated GPUs"),
            _v(KEEP_ALIVE, "duration", _check_duration, "How long models stay loaded"),
            _v("OLLAMA_KV_CACHE_TYPE", "kv_cache_type", _check_kv_cache_type, "K/V cache type"),
            _v("OLLAMA_LLM_LIBRARY", "library", _check_library, "LLM library to use"),
            _v("OLLAMA_LOAD_TIMEOUT", "duration", _check_duration, "Stall limit for loads"),
            _v("OLLAMA_MAX_LOADED_MODELS", "uint", _check_uint, "Loaded models per GPU"),
            _v("OLLAMA_MAX_QUEUE", "uint", _check_uint, "Queued requests"),
            _v("OLLAMA_MAX_TRANSFER_STREAMS", "uint", _check_uint, "Parallel transfer streams"),
            _v("OLLAMA_MODELS", "path", _check_path, "Models directory"),
            _v("OLLAMA_NO_CLOUD", "bool", _check_bool, "Disable cloud features"),
            _v("OLLAMA_NOHISTORY", "bool", _check_bool, "No readline history"),
            _v("OLLAMA_NOPRUNE", "bool", _check_bool, "Do not prune blobs at start"),
            _v("OLLAMA_NUM_PARALLEL", "uint", _check_uint, "Parallel requests per model"),
            _v("OLLAMA_ORIGINS", "origins", _check_origins, "Allowed CORS origins"),
            _v("OLLAMA_REMOTES", "hosts", _check_hosts, "Allowed hosts for remote models"),
            _v("OLLAMA_SCHED_SPREAD", "bool", _check_bool, "Spread models across all GPUs"),
            _v("OLLAMA_VULKAN", "bool", _check_bool, "Vulkan support"),
        )
    }
)


def name_problem(name: str) -> str | None:
    """None if ``name`` is a variable Ollama reads and that ``ollama.environment`` may set."""
    if name == KEEP_ALIVE:
        return "set OLLAMA_KEEP_ALIVE with ollama.keep_alive, not in ollama.environment"
    if name in KNOWN_VARIABLES:
        return None
    shown = name if ENV_NAME.match(name) else repr(name)
    if not name.startswith("OLLAMA_"):
        return (
            f"{shown} is not an Ollama variable: only the OLLAMA_* variables Ollama reads may be "
            "set in its drop-in"
        )
    # compared without the common prefix, which would make any OLLAMA_X look close to
    # some variable (OLLAMA_FOO is not a misspelt OLLAMA_HOST)
    prefix = len("OLLAMA_")
    close = difflib.get_close_matches(
        name[prefix:], [known[prefix:] for known in KNOWN_VARIABLES], n=1, cutoff=0.75
    )
    hint = f"; did you mean OLLAMA_{close[0]}?" if close else ""
    return (
        f"{shown} is not a variable Ollama reads (known: {', '.join(sorted(KNOWN_VARIABLES))})"
        f"{hint}"
    )


def value_problem(name: str, value: str) -> str | None:
    """None if a known variable ``name`` may hold ``value`` (OLLAMA_KEEP_ALIVE included)."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_VALUE_LENGTH:
        return f"is longer than {MAX_VALUE_LENGTH} characters"
    problem = unsafe_text_problem(value)
    if problem is not None:
        return problem
    if value != value.strip():
        return "has leading or trailing whitespace, which Ollama strips"
    if value == "":
        return None  # Ollama reads an empty value as unset: its default
    variable = KNOWN_VARIABLES.get(name)
    if variable is None:
        return name_problem(name)
    return variable.check(value)


def environment_problem(name: str, value: str) -> str | None:
    """None if OLLAMA variable ``name`` may be set to ``value`` in the drop-in.

    Otherwise a short message for the user: the name is not one Ollama reads (or is
    OLLAMA_KEEP_ALIVE, which comes from ``ollama.keep_alive``), the value holds something that
    could break out of systemd's quoting, or Ollama would not parse it the way it is written.
    """
    return name_problem(name) or value_problem(name, value)
