"""Every name a benchmark script imports from edgekit still exists, so a rename breaks a test, not a benchmark.

The scripts in benchmarks/ are run by hand, rarely, and never by the suite; when the library renamed
`artifacts.read_manifest` to `manifests.read` and `bench.run.Variant` to `BenchModel`, three of them went
on importing the old names. This test resolves each script's edgekit imports from syntax trees alone (it
runs no script and imports no module, so TensorFlow never loads and it stays fast): each `from edgekit.x
import name` must name a module that defines, assigns or imports `name` at top level, or a submodule
of that name; `alias.attr` on an edgekit module the script imported must resolve the same way.
Function-local imports count too.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
ANY = "*"  # a module with a `__getattr__` or a star import: every name is taken as present


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _bound(body: list[ast.stmt], names: set[str]) -> None:
    """Names a block binds at module level, descending into if/try/with but not into functions or classes."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(ANY if alias.name == "*" else alias.asname or alias.name.split(".")[0])
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if isinstance(block, list) and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                     ast.ClassDef)):
                _bound(block, names)


@cache
def top_level_names(module: str) -> frozenset[str]:
    names: set[str] = set()
    _bound(ast.parse(module_file(module).read_text()).body, names)
    if "__getattr__" in names:
        names.add(ANY)
    return frozenset(names)


def has(module: str, name: str) -> bool:
    """`from module import name` would work: a top-level name, or a submodule."""
    names = top_level_names(module)
    return ANY in names or name in names or module_file(f"{module}.{name}") is not None


def stale_imports(path: Path) -> list[str]:
    """`file:line what` for every edgekit name `path` imports, or reads off an imported module, that is gone."""
    tree = ast.parse(path.read_text(), filename=str(path))
    problems, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "edgekit":
                    continue
                if module_file(alias.name) is None:
                    problems.append(f"{path.name}:{node.lineno} import {alias.name}")
                elif alias.asname:
                    modules[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "edgekit":
            if module_file(node.module) is None:
                problems.append(f"{path.name}:{node.lineno} from {node.module} (no such module)")
                continue
            for alias in node.names:
                if not has(node.module, alias.name):
                    problems.append(f"{path.name}:{node.lineno} from {node.module} import {alias.name}")
                elif module_file(f"{node.module}.{alias.name}") is not None:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            if not has(modules[node.value.id], node.attr):
                problems.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return problems


def test_benchmarks_exist():
    assert len(SCRIPTS) > 10, f"no benchmark scripts found under {ROOT / 'benchmarks'}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_edgekit_imports_resolve(path):
    assert stale_imports(path) == []


def test_stale_names_are_reported(tmp_path):
    """The check itself: the old names this test was written for are reported, current ones are not."""
    script = tmp_path / "old.py"
    script.write_text("from edgekit.artifacts import read_manifest\n"
                      "from edgekit.bench.run import Variant, BenchModel, bench_inputs\n"
                      "from edgekit import manifests\n"
                      "from edgekit.bench import run as bench_run\n"
                      "import edgekit.nothing_here\n"
                      "manifests.read(bench_run.collect_variants)\n"
                      "manifests.read_manifest\n"
                      "from edgekit.data import DataSpec, load_dataset\n")
    assert stale_imports(script) == ["old.py:1 from edgekit.artifacts import read_manifest",
                                     "old.py:2 from edgekit.bench.run import Variant",
                                     "old.py:5 import edgekit.nothing_here",
                                     "old.py:7 manifests.read_manifest"]
