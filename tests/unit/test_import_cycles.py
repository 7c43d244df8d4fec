"""No import cycle among the project's modules.

The graph is grimp's, the one import-linter checks the contracts in pyproject.toml on; it
counts imports inside functions and under ``TYPE_CHECKING`` too, so a cycle cannot hide in
a function body. Two checks: no cycle between modules, and, in every package, no cycle
between its children with each subpackage squashed to one node (two sibling subpackages
that import each other, through any of their modules, form a cycle even when no two
modules do).
"""

from __future__ import annotations

import grimp  # import-linter's graph (the dev extra)
import pytest

pytestmark = pytest.mark.timeout(60)
PACKAGES = ("nex_transforms", "pipelines", "flows")


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative),
    each sorted, in sorted order. ``edges`` maps every node to the nodes it imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return sorted(found)


def one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first node: ``[a, b, ..., a]``."""
    start = component[0]
    members = set(component)
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(edges[node] & members):
                if target == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def _squashed(graph, package: str) -> tuple[dict[str, set[str]], dict]:
    """The children of ``package`` as nodes, an edge where any module of one (itself or
    under it) imports any module of another; and one example import per edge."""
    children = sorted(graph.find_children(package))

    def owner(module: str) -> str | None:
        for child in children:
            if module == child or module.startswith(child + "."):
                return child
        return None

    edges: dict[str, set[str]] = {child: set() for child in children}
    examples: dict[tuple[str, str], tuple[str, str]] = {}
    for module in sorted(graph.modules):
        source = owner(module)
        if source is None:
            continue
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            target = owner(imported)
            if target is not None and target != source:
                edges[source].add(target)
                examples.setdefault((source, target), (module, imported))
    return edges, examples


def _describe(graph, cycle: list[str], examples: dict | None = None) -> str:
    steps = []
    for source, target in zip(cycle, cycle[1:]):
        importer, imported = (examples or {}).get((source, target), (source, target))
        lines = sorted({d["line_number"] for d in
                        graph.get_import_details(importer=importer, imported=imported)})
        where = f"{importer} line {', '.join(map(str, lines))}" if lines else importer
        steps.append(f"  {source} -> {target}  ({where} imports {imported})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_no_cycle_between_modules(graph):
    modules = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    cycles = [_describe(graph, one_cycle(c, edges)) for c in strongly_connected(edges)]
    assert not cycles, "import cycles between modules:\n" + "\n".join(cycles)


def test_no_cycle_between_sibling_packages(graph):
    packages = sorted(m for m in graph.modules if graph.find_children(m))
    cycles = []
    for package in packages:
        edges, examples = _squashed(graph, package)
        cycles += [f"in {package}: " + _describe(graph, one_cycle(c, edges), examples)
                   for c in strongly_connected(edges)]
    assert not cycles, "import cycles between sibling packages:\n" + "\n".join(cycles)


def test_the_project_packages_import_each_other_one_way(graph):
    """flows -> pipelines -> nex_transforms, never back (the top level squashed)."""
    edges = {p: set() for p in PACKAGES}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            source, target = module.split(".")[0], imported.split(".")[0]
            if source != target and target in edges:
                edges[source].add(target)
    assert strongly_connected(edges) == []


def test_the_checks_find_a_cycle_and_name_it():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert strongly_connected(edges) == [["a", "b", "c"]]
    assert one_cycle(["a", "b", "c"], edges) == ["a", "b", "c", "a"]
    assert one_cycle(["x", "y"], {"x": {"y"}, "y": {"x"}}) == ["x", "y", "x"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
