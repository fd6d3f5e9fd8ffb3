"""The package's import graph, read from its source: every import counts, those made only for
type checking (``if TYPE_CHECKING:``) and inside functions included, since each is a place
where one module leans on another.

``python -m tests.support.layers`` prints the graph of the package's parts (a subpackage, or a
top-level module) and every cycle, among the parts and among the modules; it exits 1 when
there is one. tests/test_layers.py asserts that there is none.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "sentinel_keeper"

Graph = Mapping[str, frozenset[str]]


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules that the module ``name`` at ``path`` imports."""
    known = set(known)
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets.add(module)
            # ``from package import module`` imports that module
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    found: set[str] = set()
    for target in targets:
        # ``import a.b.c`` leans on a.b.c; a name that is no module stands for its module
        module = target
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module and module not in (name, PACKAGE):
            found.add(module)
    return found


def module_graph() -> dict[str, frozenset[str]]:
    """Each module and the package's modules it imports."""
    found = modules()
    return {name: frozenset(_imported(name, path, found)) for name, path in found.items()}


def part_of(module: str) -> str:
    """The part of the package a module belongs to: its subpackage, or itself at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def part_graph(graph: Graph | None = None) -> dict[str, frozenset[str]]:
    """The graph of the package's parts: a part leans on another where one of its modules
    imports one of the other's."""
    graph = module_graph() if graph is None else graph
    parts: dict[str, set[str]] = {}
    for module, imports in graph.items():
        part = part_of(module)
        parts.setdefault(part, set()).update(part_of(i) for i in imports if part_of(i) != part)
    return {part: frozenset(deps) for part, deps in sorted(parts.items())}


def cycles(graph: Graph) -> list[list[str]]:
    """The graph's strongly connected components of more than one node (Tarjan), sorted:
    each is a set of nodes that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def reached(graph: Graph, start: str) -> set[str]:
    """Every module ``start`` imports, directly or not."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for other in graph.get(todo.pop(), ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def main() -> int:
    graph = module_graph()
    parts = part_graph(graph)
    print(f"{PACKAGE}: {len(graph)} modules in {len(parts)} parts")
    for part, deps in parts.items():
        print(f"  {part} -> {', '.join(sorted(deps)) or '(nothing)'}")
    part_cycles = cycles(parts)
    module_cycles = cycles(graph)
    print(f"cycles among parts: {len(part_cycles)}")
    for cycle in part_cycles:
        print(f"  {' <-> '.join(cycle)}")
    print(f"cycles among modules: {len(module_cycles)}")
    for cycle in module_cycles:
        print(f"  {' <-> '.join(cycle)}")
    return 1 if part_cycles or module_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
