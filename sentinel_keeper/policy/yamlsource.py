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
from sentinel_keeper.values.text import show

Path = tuple[str | int, ...]

MAX_FILE_BYTES = 1024 * 1024  # a policy is a few KiB; refuse to parse megabytes
# A policy has tens of values, a large one a few thousand. Both limits stop a document early:
# composing a node costs about 20 microseconds and a kilobyte in PyYAML, so 20,000 nodes
# keep the worst case around half a second and a few tens of MiB.
MAX_NODES = 20_000  # nodes composed from the text
MAX_VALUES = 20_000  # values built, aliases and merge keys expanded
MAX_DEPTH = 64

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
_STR_TAG = "tag:yaml.org,2002:str"


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


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, with its (recursive) composer bounded in depth and node count, so
    that neither deep nesting nor sheer size can exhaust the stack, the time or the memory
    before the builder below gets to count values."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def _mark(self) -> yaml.Mark:
        mark: yaml.Mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        return mark

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Limits(
                f"the document has more than {MAX_NODES} values; refusing it",
                self._mark(),
            )
        if self._depth >= MAX_DEPTH:
            raise _Limits(f"nested deeper than {MAX_DEPTH} levels; refusing it", self._mark())
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        return node


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
            self._plain(node, _MAP_TAG)
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            self._plain(node, _SEQ_TAG)
            return [
                self.build(item, path + (index,), depth + 1)
                for index, item in enumerate(node.value)
            ]
        return self._scalar(node)

    @staticmethod
    def _plain(node: yaml.Node, tag: str) -> None:
        """Collections are built here, not by PyYAML, so their tags must be checked here:
        !!python/object, !!set, !!omap or a custom tag is refused, never ignored."""
        if node.tag != tag:
            raise _Limits(
                f"unsupported tag {node.tag!r}; only plain YAML is accepted", node.start_mark
            )

    def _scalar(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            raise
        except Exception as exc:  # PyYAML's constructors trust the resolver's regexes
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            # e.g. an integer of 5,000 digits; "!!timestamp 2001-12-14{" (AttributeError)
            why = str(exc).split(":")[0] if isinstance(exc, ValueError | OverflowError) else ""
            raise _Limits(
                f"cannot read this value as {tag}" + (f" ({why})" if why else ""),
                node.start_mark,
            ) from None

    def _merged(self, node: yaml.Node, path: Path, depth: int) -> list[dict[Any, Any]]:
        """The mappings a "<<" key merges in, built (and counted) like any other value."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if isinstance(node, yaml.SequenceNode):
            self._plain(node, _SEQ_TAG)
        out = []
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise _Limits(
                    "a merge key (<<) needs a mapping or a list of mappings", source.start_mark
                )
            built = self.build(source, path, depth + 1)
            out.append(built)
        return out

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[Any, Any]:
        # Merge keys first, whatever their place: the first mapping that has a key wins
        # among merged ones, and an explicit key overrides every merged one (YAML 1.1).
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for merged in self._merged(value_node, path, depth):
                    for key, value in merged.items():
                        result.setdefault(key, value)
        from_merge = set(result)
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _VALUE_TAG:
                key_node.tag = _STR_TAG  # "=" as a key is the string "="
            key = self._scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str | int | float | bool):
                self.problems.append(
                    (path, _pos(key_node.start_mark), "a key must be a plain scalar")
                )
                continue
            child: Path = path + (key if isinstance(key, str | int) else str(key),)
            if key in from_merge:
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


def _reader_position(text: str, exc: yaml.reader.ReaderError) -> tuple[int, int]:
    before = text[: max(exc.position, 0)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def _tab_indented(text: str, line: int) -> bool:
    """Does line ``line`` (1-based) start with a tab among its indentation?"""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return False
    row = lines[line - 1]
    return "\t" in row[: len(row) - len(row.lstrip(" \t"))]


def load_yaml(text: str, source: str) -> YamlDocument:
    """Parse ``text``; YAML errors and limits raise YamlSyntaxError with diagnostics."""

    def fail(line: int, column: int, message: str) -> YamlSyntaxError:
        return YamlSyntaxError((Diagnostic(source, line, column, "", message),))

    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line, column = _reader_position(text, exc)
        raise fail(
            line, column, f"YAML error: character #x{exc.character:04x} is not allowed"
        ) from None
    positions = Positions()
    try:
        try:
            node = loader.get_single_node()
        except _Limits as exc:
            raise fail(*_pos(exc.mark), exc.message) from None
        except yaml.reader.ReaderError as exc:
            line, column = _reader_position(text, exc)
            raise fail(
                line, column, f"YAML error: character #x{exc.character:04x} is not allowed"
            ) from None
        except yaml.MarkedYAMLError as exc:
            line, column = _pos(exc.problem_mark or exc.context_mark)
            message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            if _tab_indented(text, line):
                message = "a tab indents this line: YAML indents with spaces only"
            raise fail(line, column, f"YAML syntax error: {message}") from None
        except yaml.YAMLError as exc:
            raise fail(1, 1, f"YAML error: {' '.join(str(exc).split())}") from None
        if node is None:
            return YamlDocument(None, positions, ())
        builder = _Builder(loader, positions)
        try:
            data = builder.build(node, (), 0)
        except _Limits as exc:
            raise fail(*_pos(exc.mark), exc.message) from None
        except yaml.constructor.ConstructorError as exc:
            line, column = _pos(exc.problem_mark)
            raise fail(line, column, f"YAML error: {exc.problem}") from None
        except RecursionError:
            raise fail(1, 1, "nested too deeply; refusing it") from None
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
