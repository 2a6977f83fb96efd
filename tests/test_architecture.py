"""The import graph of the project follows the design's one direction and has no cycles.

Every module under ``agebias/`` and ``generators/`` is parsed with :mod:`ast`; every ``import`` counts, at module
level and inside functions (lazy imports are still dependencies). ``from P import name`` is an edge to the submodule
``P.name`` when there is one, to the module that ``P/__init__.py`` re-exports ``name`` from when it does so, and to
``P`` otherwise. Edges from a package's ``__init__`` to modules inside that package (its re-exports) are not
counted: they would make every submodule that imports a sibling look as if it imported itself.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("agebias", "generators")
LOWER_LAYERS = ("agebias.models", "agebias.data")
UPPER_LAYERS = ("agebias.finetune", "agebias.evaluate", "agebias.pipeline", "agebias.search", "agebias.mitigation",
                "agebias.cli", "generators")
# cycles among these must be gone now; the rest of the package is being untangled (see test_no_import_cycles)
CYCLE_FREE_NOW = ("agebias.models", "agebias.mitigation", "agebias.registry", "agebias.finetune.hooks",
                  "generators.registry")


# --------------------------------------------------------------------------------------------------- the graph

def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the given top-level packages (``__init__`` -> package)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _base_of(node: ast.ImportFrom, name: str, modules: dict[str, Path]) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved against ``name``)."""
    if not node.level:
        return node.module or ""
    anchor = name.split(".") if _is_package(name, modules) else name.split(".")[:-1]
    anchor = anchor[:len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _owning_module(dotted: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``dotted`` is or lies inside (``None`` for third-party names)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _reexports(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """For each package: name -> project module its ``__init__`` imports that name from (module level only)."""
    out: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        if not _is_package(name, modules):
            continue
        table: dict[str, str] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom):
                base = _base_of(node, name, modules)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    target = sub if sub in modules else _owning_module(base, modules)
                    if target is not None:
                        table[alias.asname or alias.name] = target
        out[name] = table
    return out


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = TOP_PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its code (module level and function level)."""
    modules = find_modules(root, packages)
    reexports = _reexports(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(t for alias in node.names if (t := _owning_module(alias.name, modules)))
            elif isinstance(node, ast.ImportFrom):
                base = _base_of(node, name, modules)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        targets.add(sub)
                    elif alias.name in reexports.get(base, {}):
                        targets.add(reexports[base][alias.name])
                    elif (owner := _owning_module(base, modules)) is not None:
                        targets.add(owner)
        if _is_package(name, modules):  # an __init__'s re-exports are not edges from the package to itself
            targets = {t for t in targets if not t.startswith(name + ".")}
        targets.discard(name)
        graph[name] = targets
    return graph


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str, within: set[str]) -> list[str] | None:
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while previous[path[-1]] is not None:
                path.append(previous[path[-1]])  # type: ignore[arg-type]
            return path[::-1]
        for nxt in sorted(graph.get(node, ())):
            if nxt in within and nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles as chains ``[a, b, ..., a]``: for every edge inside a strongly connected component, the
    shortest cycle through it (so every edge that takes part in a cycle shows up in at least one chain)."""
    cycles: dict[tuple[str, ...], list[str]] = {}
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        for src in sorted(component):
            for dst in sorted(graph[src] & component):
                back = _shortest_path(graph, dst, src, component)
                if back is None:
                    continue
                cycle = [src] + back
                ring = cycle[:-1]
                turn = ring.index(min(ring))
                key = tuple(ring[turn:] + ring[:turn])
                cycles.setdefault(key, list(key) + [key[0]])
    return sorted(cycles.values())


def chain(cycle: list[str]) -> str:
    return " -> ".join(cycle)


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# --------------------------------------------------------------------------------------------------- the rules

@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_builder_on_a_made_up_package(tmp_path):
    """The checker itself: lazy imports count, ``from P import sub`` is the submodule, re-exports resolve to their
    source, an ``__init__``'s own re-exports are no edge, and a cycle is reported as a chain."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import A\nfrom pkg import b\n",
        "a.py": "A = 1\ndef later():\n    from pkg.sub import c\n",
        "b.py": "from pkg import A\nimport os\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import b\nfrom ..a import A\n",
        "sub/d.py": "from . import c\nimport pkg.sub\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    g = import_graph(tmp_path, ("pkg",))
    assert g["pkg"] == set()
    assert g["pkg.a"] == {"pkg.sub.c"}  # function-level import
    assert g["pkg.b"] == {"pkg.a"}  # re-exported name resolved to where it is defined
    assert g["pkg.sub.c"] == {"pkg.b", "pkg.a"}  # relative imports
    assert g["pkg.sub.d"] == {"pkg.sub.c", "pkg.sub"}
    # a -> sub.c -> a, and a -> sub.c -> b -> a (b reads A through the package's re-export)
    assert find_cycles(g) == [["pkg.a", "pkg.sub.c", "pkg.a"], ["pkg.a", "pkg.sub.c", "pkg.b", "pkg.a"]]
    assert chain(find_cycles(g)[0]) == "pkg.a -> pkg.sub.c -> pkg.a"


def test_models_mitigation_and_registries_have_no_import_cycles(graph):
    cycles = [c for c in find_cycles(graph) if any(_in(m, CYCLE_FREE_NOW) for m in c)]
    assert not cycles, "import cycles:\n" + "\n".join(map(chain, cycles))


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(map(chain, cycles))


def test_models_and_data_import_nothing_above_them(graph):
    bad = sorted(f"{src} -> {dst}" for src, targets in graph.items() if _in(src, LOWER_LAYERS)
                 for dst in targets if _in(dst, UPPER_LAYERS))
    assert not bad, "lower layers importing upper ones:\n" + "\n".join(bad)


def test_only_the_cli_imports_the_cli(graph):
    front_end = ("agebias.cli", "agebias.__main__")  # ``python -m agebias`` starts the CLI
    bad = sorted(f"{src} -> {dst}" for src, targets in graph.items() if not _in(src, front_end)
                 for dst in targets if _in(dst, ("agebias.cli",)))
    assert not bad, "library modules importing the CLI:\n" + "\n".join(bad)


def test_every_module_is_seen(graph):
    assert {"agebias.models.embedder", "agebias.registry", "generators.registry", "agebias.cli"} <= set(graph)
    assert "agebias.models.registry" in graph["agebias.models.checkpoints"]
