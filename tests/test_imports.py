"""The house's shape, read from the source with `ast`: no import circle between modules, and
imports between packages only go down the layers

    bench -> flows -> experiments -> teacher, student -> pipeline

Every import counts, also those inside functions and under TYPE_CHECKING: a lazy import still
ties two modules together, and a circle drawn lazily is a circle a reader must untangle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# A package may import the packages of lower layers only (and itself).
LAYER = {"pipeline": 0, "teacher": 1, "student": 1, "experiments": 2, "flows": 3, "bench": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from package import module` counts as the
    module; a `from module import name` as the module)."""
    modules = {module_name(p): p for package in LAYER for p in (REPO_ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in modules else node.module for t in targets]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert circles(import_graph()) == []


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer's package, or of another package on the same layer."""

    def layer(module: str) -> tuple[int, str]:
        package = module.split(".")[0]
        return LAYER[package], package

    return sorted(
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in targets
        if layer(target)[0] > layer(source)[0]
        or (layer(target)[0] == layer(source)[0] and layer(target)[1] != layer(source)[1])
    )


def test_imports_only_go_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_the_checker_sees_a_circle_and_an_upward_import():
    graph = {"pipeline.a": {"pipeline.b"}, "pipeline.b": {"pipeline.a"}, "pipeline.c": set()}
    assert circles(graph) == [["pipeline.a", "pipeline.b"]]
    sideways = {"teacher.a": {"student.b", "pipeline.c"}, "experiments.s": {"flows.t"}}
    assert upward_imports(sideways) == [
        "experiments.s imports flows.t",
        "teacher.a imports student.b",
    ]
