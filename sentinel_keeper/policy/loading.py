"""Reading the policy file: settled reads, YAML with positions (:mod:`.yamlsource`), and
every problem reported at once, compiler style, with file, line, column and field."""

from __future__ import annotations

import difflib
import ipaddress
import os
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from sentinel_keeper.errors import Diagnostic, PolicyError
from sentinel_keeper.ollama_env import name_problem, value_problem
from sentinel_keeper.policy.schema import (
    DEFAULT_INSTANCE,
    DEFAULT_UPSTREAM,
    LoadOptions,
    ModelPolicy,
    Policy,
    instance_name,
    model_name,
    takeover_address,
)
from sentinel_keeper.policy.yamlsource import (
    MAX_FILE_BYTES,
    Path,
    Positions,
    YamlSyntaxError,
    format_path,
    load_yaml,
)
from sentinel_keeper.values.listen import DEFAULT_METRICS_LISTEN, ListenAddress, parse_listen
from sentinel_keeper.values.text import show
from sentinel_keeper.values.unitname import unit_name_problem
from sentinel_keeper.values.urls import DEFAULT_OLLAMA_URL, normalize_ollama_url


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
        key = str(path[-1]) if path else ""
        known = ", ".join(model.model_fields) if model else ""
        if model is LoadOptions:
            return (
                f"not a load-time option (sampling options never reload a model and do not "
                f"belong here; load-time options: {known})"
            ), True
        if model is ModelPolicy and key in LoadOptions.model_fields:
            return (
                f"{key} is a load-time option: it goes under options "
                f"(options: {{{key}: {show(value)}}})"
            ), True
        close = difflib.get_close_matches(key, list(model.model_fields) if model else [], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return (f"unknown key{hint} (known keys: {known})" if known else "unknown key"), True
    if kind == "missing":
        return "is required", True
    if kind == "value_error":
        ctx = error.get("ctx") or {}
        return str(ctx.get("error", error["msg"])), False
    if kind == "literal_error":
        # pydantic quotes the choices with ' and show() the value with ": one kind of quote,
        # so that a log line that quotes the message needs no backslashes
        expected = str((error.get("ctx") or {}).get("expected", "")).replace("'", '"')
        return f"must be one of {expected}, got {show(value)}", False
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if _model_at(path) is ModelPolicy and isinstance(value, str):
            # the value goes into the hint only when it can be a model name (no control
            # characters on the user's terminal); show() quotes it safely either way
            try:
                model_name(value)
                name = value.strip()
            except ValueError:
                name = "MODEL"
            return (
                f"a model is a mapping, not a bare name: write `- name: {name}` "
                f"(or `- {{name: {name}}}`), got {show(value)}"
            ), False
        return f"must be a mapping of keys to values, got {show(value)}", False
    if kind == "list_type":
        return f"must be a list, got {show(value)}", False
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {show(value)}", False


def _instance_names(data: Any) -> list[str] | None:
    """The instances' names as written (None: the policy has no instances: list)."""
    instances = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(instances, list):
        return None
    names = [i.get("name") for i in instances if isinstance(i, dict)]
    return [n for n in names if isinstance(n, str) and _valid_instance_name(n)]


def _valid_instance_name(name: str) -> bool:
    try:
        instance_name(name)
    except ValueError:
        return False
    return True


def _check_models(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        return
    names = _instance_names(data)
    only = names[0] if names is not None and len(names) == 1 else None
    seen: dict[tuple[str | None, str], int] = {}
    for index, entry in enumerate(models):
        if not isinstance(entry, dict):
            continue
        instance = entry.get("instance")
        _check_model_instance(index, entry, names, problems)
        if not isinstance(entry.get("name"), str):
            continue
        try:
            name = model_name(entry["name"])
        except ValueError:
            continue  # reported by the schema
        key = (instance if isinstance(instance, str) else only, name)
        if key in seen:
            on = f" on instance {key[0]}" if names is not None and key[0] is not None else ""
            problems.append(
                (
                    (("models", index, "name")),
                    f"duplicate of models[{seen[key]}] ({name}{on})",
                    False,
                )
            )
        else:
            seen[key] = index


def _check_model_instance(
    index: int,
    entry: dict[Any, Any],
    names: list[str] | None,
    problems: list[tuple[Path, str, bool]],
) -> None:
    """A model names an instance the policy has; it must when the policy has several."""
    instance = entry.get("instance")
    path: Path = ("models", index, "instance")
    if names is None:
        if isinstance(instance, str) and instance != DEFAULT_INSTANCE:
            problems.append(
                (
                    path,
                    f"no instance named {show(instance)}: without instances:, the only "
                    f"instance is {DEFAULT_INSTANCE} (the ollama section)",
                    False,
                )
            )
        return
    listed = ", ".join(names)
    if instance is None and len(names) > 1 and "instance" not in entry:
        problems.append(
            (
                ("models", index),
                f"which instance keeps it? the policy has several: add instance: with one of "
                f"{listed}",
                False,
            )
        )
    elif isinstance(instance, str) and names and instance not in names:
        close = difflib.get_close_matches(instance, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(
            (path, f"no instance named {show(instance)}{hint} (instances: {listed})", False)
        )


def _check_instances(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    """instances: replaces the ollama section and vram.gpus; each instance is its own Ollama:
    its own name, address and unit."""
    if not isinstance(data, dict) or "instances" not in data or data["instances"] is None:
        return
    instances = data["instances"]
    if "ollama" in data:
        problems.append(
            (
                ("ollama",),
                "instances: replaces the ollama section: move its keys (url, unit, "
                "keep_alive, ...) into each instance",
                True,
            )
        )
    vram = data.get("vram")
    if isinstance(vram, dict) and "gpus" in vram:
        problems.append(
            (
                ("vram", "gpus"),
                "with instances:, each instance names its own gpus (instances[N].gpus)",
                True,
            )
        )
    if not isinstance(instances, list):
        return  # reported by the schema
    if not instances:
        problems.append(
            (
                ("instances",),
                "must list at least one instance (or leave instances: out and use the "
                "ollama section)",
                False,
            )
        )
    seen: dict[str, dict[str, int]] = {"name": {}, "url": {}, "unit": {}}
    for index, entry in enumerate(instances):
        if not isinstance(entry, dict):
            continue
        values: dict[str, str | None] = {
            "name": entry.get("name") if isinstance(entry.get("name"), str) else None,
            "url": _same_url(entry.get("url", DEFAULT_OLLAMA_URL)),
            "unit": _same_unit(entry.get("unit", "ollama.service")),
        }
        for key, value in values.items():
            if value is None:
                continue
            first = seen[key].setdefault(value, index)
            if first != index:
                default = "" if key in entry else " (the default)"
                problems.append(
                    (
                        ("instances", index, key) if key in entry else ("instances", index),
                        f"instances[{first}] has this {key} too ({value}{default}): each "
                        f"instance is its own ollama serve, with its own {key}",
                        False,
                    )
                )


def _fronted(data: Any, section: dict[Any, Any]) -> tuple[Path, dict[Any, Any]] | None:
    """The Ollama section the gateway fronts (its path and keys), if the file says which."""
    sections = _ollama_sections(data)
    if not isinstance(data, dict) or not isinstance(data.get("instances"), list):
        return (("ollama",), data.get("ollama") if isinstance(data.get("ollama"), dict) else {})
    named = section.get("instance")
    if named is None:
        return sections[0] if len(sections) == 1 else None
    return next(((k, s) for k, s in sections if s.get("name") == named), None)


def _taken_over(data: Any, section: dict[Any, Any]) -> ListenAddress | None:
    """With gateway.takeover: the address the gateway takes over (the fronted instance's
    url), when it can be one."""
    if section.get("takeover") is not True:
        return None
    fronted = _fronted(data, section)
    url = _same_url(fronted[1].get("url", DEFAULT_OLLAMA_URL)) if fronted else None
    return takeover_address(url) if url is not None else None


def _gateway_listen(data: Any, section: dict[Any, Any]) -> tuple[ListenAddress, Path] | None:
    """Where the gateway listens and the key that says it: gateway.listen, or with
    takeover the address it takes over."""
    try:
        return parse_listen(section.get("listen")), ("gateway", "listen")
    except ValueError:
        pass  # absent, null (off), or reported by the schema
    if "listen" in section and section["listen"] is not None:
        return None
    taken = _taken_over(data, section)
    return None if taken is None else (taken, ("gateway", "takeover"))


def _check_takeover(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    """gateway.takeover: the gateway takes the fronted instance's address (a local http://
    one), Ollama moves to gateway.upstream (a loopback address of its own), and the drop-in
    sets that as OLLAMA_HOST (the policy cannot as well)."""
    section = data.get("gateway") if isinstance(data, dict) else None
    if not isinstance(section, dict) or section.get("takeover") is not True:
        return
    fronted = _fronted(data, section)
    if fronted is None:
        return  # which instance: reported by _check_gateway
    key, ollama = fronted
    url = _same_url(ollama.get("url", DEFAULT_OLLAMA_URL))
    public = _taken_over(data, section)
    if url is not None and public is None:
        problems.append(
            (
                ("gateway", "takeover"),
                f"takeover needs {format_path((*key, 'url'))} to be a plain http:// address of "
                f"this host (an IP address or localhost, a port, no path), got {url}: the "
                "gateway takes that address over",
                False,
            )
        )
    if public is not None:
        try:
            given = parse_listen(section.get("listen"))
        except ValueError:
            given = None
        if given is not None and not _same_place(given, public):
            problems.append(
                (
                    ("gateway", "listen"),
                    f"with takeover the gateway listens at {public}, Ollama's address now "
                    f"({format_path((*key, 'url'))}): leave listen out, or give that address",
                    False,
                )
            )
    environment = ollama.get("environment")
    if isinstance(environment, dict) and "OLLAMA_HOST" in environment:
        problems.append(
            (
                (*key, "environment", "OLLAMA_HOST"),
                "gateway.takeover writes OLLAMA_HOST (gateway.upstream) into this instance's "
                "drop-in, and this sets it too: keep one of the two",
                True,
            )
        )
    _check_upstream(data, section, public, problems)


def _check_upstream(
    data: dict[Any, Any],
    section: dict[Any, Any],
    public: ListenAddress | None,
    problems: list[tuple[Path, str, bool]],
) -> None:
    try:
        upstream = parse_listen(section.get("upstream", DEFAULT_UPSTREAM))
    except ValueError:
        return  # reported by the schema
    where: Path = ("gateway", "upstream") if "upstream" in section else ("gateway", "takeover")
    if not upstream.loopback:
        problems.append(
            (
                where,
                f"must be a loopback address such as {DEFAULT_UPSTREAM} (Ollama moves there, "
                f"reachable from this host only, behind the gateway), got {upstream}",
                False,
            )
        )
    taken: list[tuple[ListenAddress, str]] = []
    if public is not None:
        taken.append((public, "the gateway's address (the one it takes over)"))
    for key, ollama in _ollama_sections(data) or [(("ollama",), {})]:
        url = _same_url(ollama.get("url", DEFAULT_OLLAMA_URL))
        address = takeover_address(url) if url is not None else None
        if address is not None:
            taken.append((address, f"{format_path((*key, 'url'))}"))
    metrics = data.get("metrics")
    try:
        listen = (
            metrics.get("listen", DEFAULT_METRICS_LISTEN)
            if isinstance(metrics, dict)
            else (DEFAULT_METRICS_LISTEN)
        )
        if listen is not None:
            taken.append((parse_listen(listen), "the metrics endpoint's address (metrics.listen)"))
    except ValueError:
        pass  # reported by the schema
    for address, what in taken:
        if _same_place(upstream, address):
            problems.append(
                (
                    where,
                    f"{upstream} is {what}: Ollama needs a private address of its own",
                    False,
                )
            )
            return


def _same_place(a: ListenAddress, b: ListenAddress) -> bool:
    """Whether two listen addresses collide: the same port on the same host (a wildcard
    takes every address of its family)."""
    if a.port != b.port:
        return False
    return a.connect_host == b.connect_host or _wildcard(a) or _wildcard(b)


def _wildcard(address: ListenAddress) -> bool:
    return address.host != "localhost" and ipaddress.ip_address(address.host).is_unspecified


def _check_gateway_address(
    data: dict[Any, Any], section: dict[Any, Any], problems: list[tuple[Path, str, bool]]
) -> None:
    found = _gateway_listen(data, section)
    if found is None:
        return  # reported by the schema
    address, where = found
    metrics = data.get("metrics")
    listen = (
        metrics.get("listen", DEFAULT_METRICS_LISTEN)
        if isinstance(metrics, dict)
        else (DEFAULT_METRICS_LISTEN)
    )
    try:
        if listen is not None and parse_listen(listen).url == address.url:
            problems.append(
                (where, f"{address} is the metrics endpoint's address (metrics.listen)", False)
            )
    except ValueError:
        pass
    if section.get("takeover") is True:
        return  # it listens where that Ollama listened: Ollama moves to gateway.upstream
    for key, ollama in _ollama_sections(data) or [(("ollama",), {})]:
        fronted = section.get("instance")
        if fronted is not None and ollama.get("name", DEFAULT_INSTANCE) != fronted:
            continue
        url = _same_url(ollama.get("url", DEFAULT_OLLAMA_URL))
        parts = urlsplit(url) if url is not None else None
        if parts is None or parts.port is None or parts.hostname is None:
            continue
        if parts.port == address.port and parts.hostname in (address.connect_host, address.host):
            problems.append(
                (
                    where,
                    f"{address} is where ollama listens ({format_path((*key, 'url'))}): the "
                    "gateway needs an address of its own, and clients then use that one",
                    False,
                )
            )


def _same_url(value: object) -> str | None:
    try:
        return normalize_ollama_url(value)
    except ValueError:
        return None  # reported by the schema


def _same_unit(value: object) -> str | None:
    return str(value) if unit_name_problem(value) is None else None


def _ollama_sections(data: Any) -> list[tuple[Path, dict[Any, Any]]]:
    """Where the policy configures an Ollama: the ollama section and each instance."""
    if not isinstance(data, dict):
        return []
    found: list[tuple[Path, dict[Any, Any]]] = []
    if isinstance(data.get("ollama"), dict):
        found.append((("ollama",), data["ollama"]))
    instances = data.get("instances")
    if isinstance(instances, list):
        found += [(("instances", i), e) for i, e in enumerate(instances) if isinstance(e, dict)]
    return found


def _check_environment(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    for where, section in _ollama_sections(data):
        _check_one_environment(where, section, problems)


def _check_one_environment(
    where: Path, section: dict[Any, Any], problems: list[tuple[Path, str, bool]]
) -> None:
    environment = section.get("environment")
    if not isinstance(environment, dict):
        return
    for key, value in environment.items():
        path: Path = (*where, "environment", str(key))
        if not isinstance(key, str):
            problems.append((path, f"variable names must be strings, got {show(key)}", True))
            continue
        if key == "OLLAMA_KEEP_ALIVE":
            problems.append(
                (path, f"set it with {format_path((*where, 'keep_alive'))}, not here", True)
            )
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


def _check_align_context(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    """align_context writes OLLAMA_CONTEXT_LENGTH: the policy cannot set it as well."""
    for where, section in _ollama_sections(data):
        if section.get("align_context") is not True:
            continue
        environment = section.get("environment")
        if isinstance(environment, dict) and "OLLAMA_CONTEXT_LENGTH" in environment:
            problems.append(
                (
                    (*where, "align_context"),
                    "align_context writes OLLAMA_CONTEXT_LENGTH from the pinned models' "
                    f"num_ctx, and {format_path((*where, 'environment'))} sets it too: keep "
                    "one of the two",
                    True,
                )
            )


def _check_metrics(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    """The metrics endpoint and the gateway listen on loopback unless the policy says
    allow_remote: true."""
    for name, what in (
        ("metrics", "anyone who can reach it reads the figures"),
        ("gateway", "anyone who can reach it uses Ollama through it"),
    ):
        section = data.get(name) if isinstance(data, dict) else None
        if not isinstance(section, dict) or section.get("allow_remote") is True:
            continue
        found = (
            _gateway_listen(data, section) if name == "gateway" else _given_listen(section, name)
        )
        if found is None:
            continue  # absent, null (off), or reported by the schema
        address, where = found
        if not address.loopback:
            problems.append(
                (
                    where,
                    f"{address} is reachable from other hosts: set {name}.allow_remote: true "
                    f"to mean it ({what}), or listen on 127.0.0.1",
                    False,
                )
            )


def _given_listen(section: dict[Any, Any], name: str) -> tuple[ListenAddress, Path] | None:
    try:
        return parse_listen(section.get("listen")), (name, "listen")
    except ValueError:
        return None  # absent, null (off), or reported by the schema


def _check_gateway(data: Any, problems: list[tuple[Path, str, bool]]) -> None:
    """The gateway fronts one instance: the policy's only one, or the one it names; it
    cannot listen where that Ollama or the metrics endpoint listens."""
    section = data.get("gateway") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        return
    if section.get("listen") is None and section.get("takeover") is not True:
        return
    _check_gateway_address(data, section, problems)
    names = _instance_names(data)
    instance = section.get("instance")
    if names is None:
        if isinstance(instance, str) and instance != DEFAULT_INSTANCE:
            problems.append(
                (
                    ("gateway", "instance"),
                    f"no instance named {show(instance)}: without instances:, the only "
                    f"instance is {DEFAULT_INSTANCE}",
                    False,
                )
            )
        return
    if instance is None and len(names) > 1:
        problems.append(
            (
                ("gateway",),
                f"which instance does it front? add instance: with one of {', '.join(names)}",
                True,
            )
        )
    elif isinstance(instance, str) and names and instance not in names:
        problems.append(
            (
                ("gateway", "instance"),
                f"no instance named {show(instance)} (instances: {', '.join(names)})",
                False,
            )
        )


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
    _check_instances(data, problems)
    _check_models(data, problems)
    _check_environment(data, problems)
    _check_metrics(data, problems)
    _check_gateway(data, problems)
    _check_takeover(data, problems)
    _check_align_context(data, problems)
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

    def fail(message: str) -> PolicyError:  # about the file as a whole: no line, no column
        return PolicyError(path, [Diagnostic(path, 0, 0, "", message)])

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
