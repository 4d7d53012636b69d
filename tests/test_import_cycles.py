"""No import cycle in ``workbench/``, counting the imports inside functions too.

Every ``import`` / ``from ... import`` of a workbench module, at module level or in a function, is an
edge of a graph over the package's modules (relative imports resolved, as ``tests/test_layers.py``
does). The graph must be acyclic: a cycle means two modules each need the other, so neither can be
read, tested or moved on its own. A failure prints every cycle found.
"""

from __future__ import annotations

from tests.test_layers import PACKAGE, imports, module_name

KNOWN_CYCLES_OUTSIDE_DATA: tuple[frozenset[str], ...] = ()   # cycles outside workbench/data, reported, not yet fixed


def import_graph(package=PACKAGE) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over every ``.py`` file under ``package`` (self-imports left out)."""
    files = sorted(package.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph = {}
    for path in files:
        own = module_name(path)
        targets = set()
        for _, target in imports(path):
            while target and target not in modules:        # 'pkg.module.Name' -> 'pkg.module'
                target = target.rpartition(".")[0]
            if target and target != own and target.split(".")[0] == package.name:
                targets.add(target)
        graph[own] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def a_cycle_path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One concrete loop through ``component``: ``a -> b -> c -> a``."""
    members, start = set(component), component[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(n for n in graph[path[-1]] if n in members)
        back = [n for n in nxt if n in seen]
        if back:
            loop = path[path.index(back[0]):] + [back[0]]
            return " -> ".join(loop)
        step = nxt[0]
        path.append(step)
        seen.add(step)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    found = [c for c in cycles(graph) if frozenset(c) not in KNOWN_CYCLES_OUTSIDE_DATA]
    assert not found, "import cycles:\n" + "\n".join(a_cycle_path(graph, c) for c in found)


def test_the_cycle_check_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    root = tmp_path / "workbench"
    monkeypatch.setattr("tests.test_layers.PACKAGE", root)           # module names relative to the probe
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "data" / "a.py").write_text("from .b import thing\n")
    (root / "data" / "b.py").write_text("def thing():\n    from . import a\n")
    graph = import_graph(root)
    assert graph["workbench.data.a"] == {"workbench.data.b"}
    assert cycles(graph) == [["workbench.data.a", "workbench.data.b"]]
    assert a_cycle_path(graph, cycles(graph)[0]) == "workbench.data.a -> workbench.data.b -> workbench.data.a"
