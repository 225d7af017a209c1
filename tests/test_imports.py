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


# edgekit.data bottom to top; each module may import only those before it (the façade sits above all)
DATA_LAYERS = ("types", "decode", "filecache", "hashing", "pixelcache", "scan", "exclude", "split", "pipeline",
               "datasets")


def test_data_package_imports_run_bottom_to_top():
    graph = import_graph()
    package = {name for name in graph if name.startswith("edgekit.data.")}
    assert package == {f"edgekit.data.{layer}" for layer in DATA_LAYERS}, "a new data module needs its place here"
    for index, layer in enumerate(DATA_LAYERS):
        name = f"edgekit.data.{layer}"
        allowed = {f"edgekit.data.{below}" for below in DATA_LAYERS[:index]}
        upward = {t for t in graph[name] if t.startswith(("edgekit.data", "edgekit.datacheck"))} - allowed
        assert not upward, f"{name} imports {sorted(upward)}: a data module imports only the layers below it"


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


# Third-party packages that take seconds to import or are optional extras: the only good reason for an
# edgekit module to import another edgekit module inside a function is that the other one loads these.
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "cv2", "optuna", "sklearn", "matplotlib",
         "cleanlab", "scipy", "pandas")


def _run_at_import(nodes) -> list:
    """The import statements that run when the module is imported (function bodies run later)."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            out += _run_at_import(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> tuple[set[str], set[str], set]:
    """(edgekit modules imported at import time, third-party roots imported at import time,
    function-local edgekit imports as (line, target))."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    at_import = _run_at_import(tree.body)
    deferred = {node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)} - set(at_import)
    top_edgekit, top_other = set(), set()
    for node in at_import:
        top_edgekit |= set(_targets(node, name, is_package, modules)) - {name}
        if isinstance(node, ast.Import):
            top_other |= {alias.name.split(".")[0] for alias in node.names}
        elif not node.level and node.module:
            top_other.add(node.module.split(".")[0])
    local = {(node.lineno, target) for node in deferred for target in _targets(node, name, is_package, modules)
             if target != name}
    return top_edgekit, top_other, local


def heavy_packages(found: dict) -> dict[str, set[str]]:
    """The HEAVY packages importing each edgekit module loads, directly or through other edgekit modules."""
    loads = {name: other & set(HEAVY) for name, (_, other, _) in found.items()}
    changed = True
    while changed:
        changed = False
        for name, (top, _, _) in found.items():
            grown = loads[name].union(*(loads[t] for t in top))
            changed, loads[name] = changed or grown != loads[name], grown
    return loads


def needless_local_imports() -> list[tuple[str, int, str]]:
    """(module, line, target) for each function-local import of an edgekit module, outside the CLI, that
    defers nothing heavy: the target loads no HEAVY package the module does not load already anyway."""
    modules = module_names()
    found = {name: _imports(path, name, modules) for name, path in modules.items()}
    loads = heavy_packages(found)
    out = []
    for name, (_, _, local) in sorted(found.items()):
        if name.startswith("edgekit.cli"):
            continue  # the CLI defers every command's imports so that `edgekit --help` starts fast
        out += [(name, line, target) for line, target in sorted(local) if loads[target] <= loads[name]]
    return out


def test_function_local_imports_defer_something_heavy():
    """A function-local import is for a heavy optional dependency (TensorFlow, OpenCV, Optuna...), not a
    way to hide a cycle or an ordering problem: anything else belongs at the top of the module."""
    needless = [f"{module}:{line} imports {target}" for module, line, target in needless_local_imports()]
    assert not needless, "move these imports to the top of their module:\n" + "\n".join(needless)


def test_local_import_rule_tells_heavy_from_light(tmp_path, monkeypatch):
    """The checker itself: deferring a module that loads TensorFlow is fine, deferring a light one is not."""
    package = tmp_path / "edgekit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "light.py").write_text("import json\n")
    (package / "heavy.py").write_text("from edgekit.light import json\n"
                                      "try:\n    import tensorflow\nexcept ImportError:\n    pass\n")
    (package / "user.py").write_text("def f():\n    from edgekit import heavy\n\n\ndef g():\n"
                                     "    from . import light\n")
    monkeypatch.setitem(globals(), "PACKAGE_ROOT", package)
    assert [(m, t) for m, _, t in needless_local_imports()] == [("edgekit.user", "edgekit.light")]


def private_names_used_across_modules() -> list[str]:
    """`from edgekit.x import _name` and `x._name` on an imported edgekit module (a private submodule such as
    the generated metadata schema is a module, not a name, and is not counted)."""
    modules = module_names()
    out = []
    for name, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = set()
        for node in ast.walk(tree):
            is_from = isinstance(node, ast.ImportFrom)
            targets = _targets(node, name, path.name == "__init__.py", modules) if is_from else []
            for alias in node.names if targets else ():
                is_module = any(target.endswith(f".{alias.name}") for target in targets)
                if is_module:
                    imported.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.append(f"{name}:{node.lineno} imports {alias.name}")
            if isinstance(node, ast.Import):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name in modules}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return out


def test_no_private_name_is_used_outside_its_module():
    """What another module needs is public; a leading underscore promises that only its own module uses it."""
    assert private_names_used_across_modules() == []
