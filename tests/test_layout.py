"""The package layout holds: no import cycles (lazy and TYPE_CHECKING imports counted), each layer imports only
the layers below it, `launch` -> `ae_dist` one way, production code imports nothing of the tests, benchmarks
import nothing of the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ae_dist", "launch")

# What each layer of ae_dist may import (besides itself), as its package docstring says.
LAYERS = {
    "ae_dist.errors": set(),
    "ae_dist.config": {"ae_dist.errors"},
    "ae_dist.dist": {"ae_dist.errors", "ae_dist.config"},
    "ae_dist.run": {"ae_dist.errors", "ae_dist.config", "ae_dist.dist"},
    "ae_dist.monitor": {"ae_dist.errors", "ae_dist.config", "ae_dist.dist", "ae_dist.run"},
    "ae_dist.data": {"ae_dist.errors", "ae_dist.config"},
    "ae_dist.models": {"ae_dist.errors", "ae_dist.config"},
    "ae_dist.recipe": {"ae_dist.errors", "ae_dist.config"},
    "ae_dist.infer": {"ae_dist.errors", "ae_dist.config", "ae_dist.dist", "ae_dist.run", "ae_dist.monitor", "ae_dist.data",
                      "ae_dist.models"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The project modules ``path`` imports anywhere in it: top level, in functions, under TYPE_CHECKING.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; importing a module also
    runs its packages' ``__init__``, an edge counted unless the importer lies inside that package.
    """
    me = module_name(path, root)
    here = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            parent = target
            while parent:
                if parent != me and not me.startswith(parent + "."):
                    found.add(parent)
                parent = parent.rpartition(".")[0]
    found.discard(me)
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    paths = [path for package in packages for path in sorted((root / package).rglob("*.py"))]
    known = {module_name(path, root) for path in paths}
    return {module_name(path, root): imports_of(path, known, root) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected set of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is the import depth: a few dozen
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        for target in sorted(targets):
            if module.startswith("ae_dist") and target.startswith("launch"):
                bad.append(f"{module} imports {target}: launch imports ae_dist, never the other way")
            theirs = layer_of(target)
            if mine and theirs and theirs != mine and theirs not in LAYERS[mine]:
                bad.append(f"{module} imports {target}: {mine} may import only {sorted(LAYERS[mine]) or 'nothing'}")
            if mine and target.startswith("ae_dist") and theirs is None and target != "ae_dist":
                bad.append(f"{module} imports {target}: a lower layer imports the loop or an entry point")
    return bad


@pytest.mark.fast
def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.fast
def test_each_layer_imports_only_the_layers_below_it() -> None:
    assert layer_violations(import_graph()) == []


@pytest.mark.fast
def test_a_cycle_added_on_purpose_is_found(tmp_path: Path) -> None:
    """The check itself: two modules importing each other lazily, one under TYPE_CHECKING, make one cycle."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (package / "c.py").write_text("from pkg.sub.b import f\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (package / "sub" / "b.py").write_text("import json\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == []


@pytest.mark.fast
def test_a_layer_violation_is_found() -> None:
    graph = {"ae_dist.config.schema": {"ae_dist.run.folder"}, "ae_dist.run.folder": set(),
             "ae_dist.dist.job": {"launch.cli"}, "launch.cli": set()}
    assert layer_violations(graph) == [
        "ae_dist.config.schema imports ae_dist.run.folder: ae_dist.config may import only ['ae_dist.errors']",
        "ae_dist.dist.job imports launch.cli: launch imports ae_dist, never the other way"]


@pytest.mark.fast
@pytest.mark.parametrize("folder", ["ae_dist", "launch", "benchmarks"])
def test_nothing_outside_the_tests_imports_the_tests(folder: str) -> None:
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in names if name == "tests" or name.startswith("tests.")], path
        assert "tests.helpers" not in path.read_text(encoding="utf-8"), f"{path} names the tests' modules"


@pytest.mark.fast
def test_every_package_says_what_it_owns_and_may_import() -> None:
    for init in sorted((ROOT / "ae_dist").rglob("__init__.py")):
        if init.parent.name == "configs":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "Owns" in doc or init.parent.name == "ae_dist", init
        assert "import" in doc or init.parent.name == "ae_dist", init


@pytest.mark.fast
def test_the_wheel_lists_every_package() -> None:
    """pyproject lists its packages by name: a subpackage missing there is missing from every installed copy."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {module_name(init) for package in PACKAGES for init in (ROOT / package).rglob("__init__.py")}
    assert found - listed == set()
