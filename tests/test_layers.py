"""The package's layers, read from the source with ``ast``: no import goes upward, none reaches ``unilogit.cli``,
and no two packages (or top-level modules) import each other, directly or around a loop.

Layers, top down: 1 the ``unilogit`` command; 2 the commands, benchmarks, sweeps and web UI; 3 the stage and
the evaluation; 4 the leaves (losses, config, errors, paths, ...). Imports under ``if TYPE_CHECKING:`` are
annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src"
# The first part of a module's name after ``unilogit`` decides its layer; a new module must be given one here.
LAYERS = {
    "cli": 1,
    "launch": 2,
    "benchmarks": 2,
    "sweep": 2,
    "webui": 2,
    "stage": 3,
    "evaluation": 3,
    "": 4,  # the package's own __init__
    "_compat": 4,
    "config": 4,
    "errors": 4,
    "atomic": 4,
    "fingerprint": 4,
    "losses": 4,
    "losses_reference": 4,
    "models": 4,
    "paths": 4,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "unilogit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    assert part in LAYERS, f"{module}: give unilogit.{part} a layer in LAYERS (tests/test_layers.py)"
    return LAYERS[part]


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING"):
            inside.update(child for stmt in node.body for child in ast.walk(stmt))
    return inside


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(module of ours, line)`` for each import of ``unilogit`` in ``path``, at the top or inside functions,
    resolved to the module (``from unilogit import cli`` names ``unilogit.cli``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name.startswith("unilogit"):
                found.append((name, node.lineno))
    return found


GRAPH = {module: {name for name, _ in _imports(path)} - {module, "unilogit"} for module, path in MODULES.items()}


def test_the_layer_table_sees_the_package() -> None:
    """The walk finds the modules and their imports (a broken walk would pass every test below)."""
    assert {"unilogit.cli", "unilogit.errors", "unilogit.stage.args", "unilogit.evaluation.run_report"} <= set(MODULES)
    assert "unilogit.errors" in GRAPH["unilogit.stage.workflow"]
    assert "unilogit.launch" in GRAPH["unilogit.cli"]


def test_nothing_under_src_imports_the_cli() -> None:
    """``unilogit.cli`` is dispatch only: the config, the launcher and the stage's entry live below it."""
    importers = [
        f"{path.relative_to(ROOT)}:{line}"
        for module, path in MODULES.items()
        for name, line in _imports(path)
        if name == "unilogit.cli" and module != "unilogit.cli"
    ]
    assert not importers, f"these import unilogit.cli: {importers}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_goes_upward(module: str) -> None:
    upward = [
        f"{name} (layer {_layer(name)}) at line {line}"
        for name, line in _imports(MODULES[module])
        if _layer(name) < _layer(module)
    ]
    assert not upward, f"{module} (layer {_layer(module)}) imports from above: {upward}"


def test_no_import_cycles_between_packages() -> None:
    """No package or top-level module reaches itself through another's imports (the issue found
    ``stage.callbacks`` <-> ``evaluation.run_report``, and a loop through ``cli``). Sibling modules of one package
    are not checked against each other."""

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module, names in GRAPH.items():
        graph.setdefault(package(module), set()).update(package(name) for name in names)
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles[:5]}"


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import loop of ``graph`` (module -> the modules it imports), as ``a -> b -> a``."""
    cycles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for name in graph.get(node, set()) - {node}:
                if name == start:
                    cycles.append(" -> ".join((*path, start)))
                elif name not in seen:
                    seen.add(name)
                    stack.append((name, (*path, name)))
    return sorted(set(cycles))


def test_no_import_cycles_inside_the_stage() -> None:
    """The stage's modules import each other one way only, at the top or inside functions: the arguments import the
    method registry, never the other way round (the issue found ``stage.args`` <-> ``stage.methods``)."""
    stage = {module: names for module, names in GRAPH.items() if module.startswith("unilogit.stage.")}
    assert "unilogit.stage.methods" in GRAPH["unilogit.stage.args"]
    assert "unilogit.stage.args" not in GRAPH["unilogit.stage.methods"]
    assert not _cycles(stage), f"import cycles in the stage: {_cycles(stage)[:5]}"
