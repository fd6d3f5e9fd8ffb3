"""Safe YAML loading that remembers where every key and value came from.

PyYAML's safe loader builds plain data but forgets positions and silently lets a duplicate key
win. Here the document is composed into nodes (safe tags only), then built by hand so that
every path gets its line and column, duplicate keys are errors, and alias expansion ("YAML
bombs") and nesting are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from sentinel_keeper.errors import Diagnostic
from sentinel_keeper.units import show

Path = tuple[str | int, ...]

MAX_FILE_BYTES = 1024 * 1024  # a policy is a few KiB; refuse to parse megabytes
MAX_VALUES = 100_000  # values built, aliases expanded
MAX_DEPTH = 64


@dataclass
class Positions:
    """1-based (line, column) of each path's value and, for mapping entries, of its key."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, prefer_key: bool = False) -> tuple[int, int]:
        """The position of ``path``, or of its nearest ancestor that has one."""
        probe = path
        while True:
            table = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            for positions in table:
                if probe in positions:
                    return positions[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]


class _Limits(Exception):
    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


def _pos(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, positions: Positions) -> None:
        self.loader = loader
        self.positions = positions
        self.count = 0
        self.problems: list[tuple[Path, tuple[int, int], str]] = []

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _Limits(
                f"the document expands to more than {MAX_VALUES} values "
                "(aliases or sheer size); refusing it",
                node.start_mark,
            )
        if depth > MAX_DEPTH:
            raise _Limits(f"nested deeper than {MAX_DEPTH} levels; refusing it", node.start_mark)
        self.positions.values.setdefault(path, _pos(node.start_mark))
        if isinstance(node, yaml.MappingNode):
            own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            self.loader.flatten_mapping(node)  # resolves "<<" merge keys, merged entries first
            merged = len(node.value) - own
            result: dict[Any, Any] = {}
            from_merge: set[Any] = set()
            for index, (key_node, value_node) in enumerate(node.value):
                key = (
                    self.loader.construct_object(key_node)
                    if isinstance(key_node, yaml.ScalarNode)
                    else None
                )
                if not isinstance(key, str | int | float | bool):
                    self.problems.append(
                        (path, _pos(key_node.start_mark), "a key must be a plain scalar")
                    )
                    continue
                child: Path = path + (key if isinstance(key, str | int) else str(key),)
                if index < merged:
                    if key in result:
                        continue  # the first merged mapping that has the key wins
                    from_merge.add(key)
                elif key in from_merge:
                    from_merge.discard(key)  # an explicit key overrides a merged one
                    del result[key]
                if key in result:
                    first = self.positions.keys.get(child, (0, 0))
                    self.problems.append(
                        (
                            child,
                            _pos(key_node.start_mark),
                            f"duplicate key (first set on line {first[0]})",
                        )
                    )
                    continue
                self.positions.keys[child] = _pos(key_node.start_mark)
                result[key] = self.build(value_node, child, depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, path + (index,), depth + 1)
                for index, item in enumerate(node.value)
            ]
        return self.loader.construct_object(node, deep=True)


@dataclass(frozen=True)
class YamlDocument:
    data: Any
    positions: Positions
    problems: tuple[Diagnostic, ...]  # duplicate keys and the like: the data is still usable


def format_path(path: Path) -> str:
    """("models", 1, "options", "num_ctx") -> "models[1].options.num_ctx"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("_", "").replace("-", "").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{show_key(part)}]"
    return out


def show_key(key: str) -> str:
    return show(key)


def load_yaml(text: str, source: str) -> YamlDocument:
    """Parse ``text``; YAML errors and limits raise a list of Diagnostic via ValueError's args."""
    loader = yaml.SafeLoader(text)
    positions = Positions()
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            line, column = _pos(exc.problem_mark or exc.context_mark)
            message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            raise YamlSyntaxError(
                (Diagnostic(source, line, column, "", f"YAML syntax error: {message}"),)
            ) from None
        except yaml.YAMLError as exc:
            raise YamlSyntaxError((Diagnostic(source, 1, 1, "", f"YAML error: {exc}"),)) from None
        if node is None:
            return YamlDocument(None, positions, ())
        builder = _Builder(loader, positions)
        try:
            data = builder.build(node, (), 0)
        except _Limits as exc:
            line, column = _pos(exc.mark)
            raise YamlSyntaxError((Diagnostic(source, line, column, "", exc.message),)) from None
        except yaml.constructor.ConstructorError as exc:
            line, column = _pos(exc.problem_mark)
            raise YamlSyntaxError(
                (Diagnostic(source, line, column, "", f"YAML error: {exc.problem}"),)
            ) from None
        except RecursionError:
            raise YamlSyntaxError(
                (Diagnostic(source, 1, 1, "", "nested too deeply; refusing it"),)
            ) from None
        problems = tuple(
            Diagnostic(source, line, column, format_path(path), message)
            for path, (line, column), message in builder.problems
        )
        return YamlDocument(data, positions, problems)
    finally:
        loader.dispose()


class YamlSyntaxError(Exception):
    """The text is not a YAML document we accept; carries diagnostics."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...]) -> None:
        super().__init__("\n".join(str(d) for d in diagnostics))
        self.diagnostics = diagnostics
