"""Imports inside edgekit run one way: the module graph, function-local imports included, has no cycle.

A function-local import is for a heavy optional dependency (TensorFlow, OpenCV) or a fast CLI start;
it still is an edge here, so it cannot hide a cycle. An edge goes to the module an import names:
`from edgekit.data import load_dataset` depends on the `edgekit.data` façade (and through it on what
the façade re-exports), `from edgekit.data import scan` on the submodule `edgekit.data.scan`. The
implicit import of a parent package is not an edge (a façade and its own members would otherwise
always form a loop), so a member that imports its own package's façade shows up as the cycle it is.
`importlib.import_module` with a computed name (the CLI's command modules, the recipe stage registry)
is invisible to this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgekit

PACKAGE_ROOT = Path(edgekit.__file__).parent


def module_names() -> dict[str, Path]:
    """`edgekit.x.y` -> its file, for every module under edgekit/ (resources/ holds no edgekit modules)."""
    modules = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        if "resources" in parts:  # the runner file is deployed standalone and imports nothing of edgekit
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The edgekit modules one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    if node.level:  # relative: the current package, then one level up per extra dot
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] != "edgekit":
        return []
    out = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        out.append(submodule if submodule in modules else base)
    return [name for name in out if name in modules]


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):  # every import, at module level or inside a function
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, name, path.name == "__init__.py", modules):
                    if target != name:
                        graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_edgekit_import_graph_has_no_cycle():
    graph = import_graph()
    assert "edgekit.data" in graph["edgekit.train"]  # the graph is really built
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_function_local_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a cycle closed only by a function-local relative import is found."""
    package = tmp_path / "edgekit"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from edgekit.sub.b import thing\n")
    (package / "sub" / "a.py").write_text("import numpy\n")
    (package / "sub" / "b.py").write_text("thing = 1\ndef later():\n    from . import a\n")
    monkeypatch.setitem(globals(), "PACKAGE_ROOT", package)
    assert find_cycle(import_graph()) is None
    (package / "sub" / "a.py").write_text("def f():\n    from .. import sub\n")
    cycle = find_cycle(import_graph())
    assert cycle is not None and set(cycle) == {"edgekit.sub", "edgekit.sub.a", "edgekit.sub.b"}
