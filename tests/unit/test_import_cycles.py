"""No import cycles anywhere in the ``broker`` package (STYLE.md: one room per concept).

The graph is built from the source with :mod:`ast`, so it sees every import: top-level,
inside functions (lazy imports) and under ``if TYPE_CHECKING``. A cycle fails the test and is
printed module by module.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "broker"
# Cycles tolerated for now: none (the dev PKI / PKI store cycle went with broker/pki/).
KNOWN: frozenset[frozenset[str]] = frozenset()


def _modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The broker modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.add(child if child in modules else module)
    return {m for m in found if m in modules and m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(package)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (``a -> b -> ... -> a``) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_within(graph, component) for component in components]


def _path_within(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first inside the component, back to the start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {sorted(component)}")  # pragma: no cover


class TestImportCycles:
    def test_broker_has_no_import_cycle(self) -> None:
        """No module of broker imports itself through others (lazy and type-only imports count)."""
        graph = import_graph()
        assert "broker.node.service" in graph
        found = [c for c in cycles(graph) if frozenset(c) not in KNOWN]
        assert found == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)

    def test_the_graph_sees_lazy_and_type_only_imports(self, tmp_path: Path) -> None:
        """A cycle closed only by a function-level or TYPE_CHECKING import is found and printed."""
        package = tmp_path / "broker"
        package.mkdir()
        (package / "__init__.py").write_text("", encoding="utf-8")
        (package / "a.py").write_text("def f():\n    from broker import b\n", encoding="utf-8")
        (package / "b.py").write_text(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from broker.c import C\n",
            encoding="utf-8",
        )
        (package / "c.py").write_text("from . import a\n", encoding="utf-8")
        assert cycles(import_graph(package)) == [["broker.a", "broker.b", "broker.c", "broker.a"]]

    def test_the_corrections_and_service_cycle_is_gone(self) -> None:
        """The node's corrections module no longer imports the service (it once did, for a type)."""
        graph = import_graph()
        assert "broker.node.service" not in graph["broker.node.corrections"]
        assert "broker.node.corrections" in graph["broker.node.service"]
