"""The benchmark descriptors: no ``== "muse"`` branch is left outside them, and a benchmark registered here, in
the test, reaches the sweeps, their report, the web UI's Evaluate list and the CLI's dispatch."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from unilogit import cli
from unilogit.benchmarks.registry import BENCHMARKS, RWKU, Plot, SweepRun
from unilogit.errors import ConfigError

SRC = ROOT / "src" / "unilogit"
REGISTRY = SRC / "benchmarks" / "registry.py"
NAMES = {"muse", "rwku"}
RWKU_GA = str(ROOT / "examples" / "rwku" / "ga.yaml")


def _names_in(node: ast.AST) -> set[str]:
    """The benchmark names that stand as string constants anywhere inside ``node``."""
    return {n.value.lower() for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)} & NAMES


def test_no_benchmark_branch_outside_the_registry() -> None:
    """No comparison with a benchmark's name (``== "muse"``, ``argv[:1] == ["rwku"]``, ``in ("muse", ...)``) and
    no mapping keyed by one (``{"muse": ...}``) outside ``benchmarks/registry.py``: they belong in a descriptor."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Compare):
                names = _names_in(node)
            elif isinstance(node, ast.Dict):
                names = set().union(*(_names_in(key) for key in node.keys if key is not None))
            else:
                continue
            if names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not found, "benchmark branches outside the registry:\n" + "\n".join(found)


def test_the_check_sees_a_branch() -> None:
    """The walk above finds the shapes it looks for (a broken walk would pass it)."""
    tree = ast.parse('if benchmark == "muse": pass\nif argv[:1] == ["RWKU"]: pass\nX = {"muse": 1}')
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare | ast.Dict)]
    assert [_names_in(node) for node in compares] == [{"muse"}, {"rwku"}, {"muse"}]


# --- a toy third benchmark, registered in this test ------------------------------------------------------------

TABLE_COLUMNS = (("Forget", "forget", ".1f"), ("Retain", "retain", ".1f"))  # the toy evaluator's columns
CALLS: list[tuple[str, list[str]]] = []


def evaluate(argv: list[str]) -> None:
    """The toy's ``unilogit eval toy``: records its arguments."""
    CALLS.append(("evaluate", argv))


def main(argv: list[str]) -> None:
    """The toy's ``unilogit toy ...``: records its arguments."""
    CALLS.append(("main", argv))


def _toy_point(run: SweepRun) -> list[list[str]]:
    return [["toy", "run", run.config, "--output", str(run.output), "--model", run.models["base"], *run.overrides]]


def _toy_reference(run: SweepRun) -> list[list[str]]:
    return [["eval", "toy", "--model", run.models["base"], "--output", str(run.output), "--name", run.name]]


TOY = dataclasses.replace(
    RWKU,
    name="toy",
    title="Toy",
    module=__name__,
    evaluator=__name__,
    usage="  eval toy --model M                  the toy benchmark\n",
    default_data="data/toy_mini",
    results_json="toy_results.json",
    results_md="toy_results.md",
    eval_folder="toy_eval",
    references={"base": "s"},
    model_keys=("base_model",),
    models=("base",),
    point_output="out",
    plots=(Plot("pareto-toy", "retain", "forget", "Retain", "Forget"),),
    read_models=lambda data: {"base_model": str(data.get("base_model") or "tiny")},
    resolve_models=lambda given, overrides, data: {"base": str(given["base_model"])},
    data_overrides=lambda data: [],
    point_commands=_toy_point,
    reference_commands=_toy_reference,
)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BENCHMARKS, "toy", TOY)
    CALLS.clear()


def test_a_registered_benchmark_reaches_the_sweeps(toy: None, tmp_path: Path) -> None:
    from unilogit.sweep.config import load_sweep
    from unilogit.sweep.runner import point_commands, reference_commands, sweep_tasks, table_header

    path = tmp_path / "toy.yaml"
    sweep = {"benchmark": "toy", "output": "o", "base_model": "B",
             "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [1e-3]}}}}  # fmt: skip
    path.write_text(yaml.safe_dump(sweep))
    loaded = load_sweep(path)
    assert loaded.descriptor is TOY and (loaded.data, loaded.models) == ("data/toy_mini", {"base_model": "B"})
    assert loaded.to_json()["base_model"] == "B" and loaded.to_json()["target_model"] is None
    [run] = point_commands(loaded, loaded.points[0], {"base": "B"}, 42, Path("o/ga/learning_rate=0.001/seed42-k"))
    assert run[3:] == ["toy", "run", RWKU_GA, "--output", "o/ga/learning_rate=0.001/seed42-k/out", "--model", "B",
                       "learning_rate=0.001", "seed=42"]  # fmt: skip
    [ref] = reference_commands(loaded, "base", {"base": "B"}, Path("o/references/base-k"))
    assert ref[3:] == ["eval", "toy", "--model", "B", "--output", "o/references/base-k", "--name", "base"]
    assert table_header(loaded) == ["method", "point", "learning_rate", "forget", "forget_ci95", "retain",
                                    "retain_ci95", "n_seeds", "seeds", "runs"]  # fmt: skip
    # The runs' keys read the toy's evaluator code (this module) like any other benchmark's.
    tasks = sweep_tasks(loaded, {"base": "B"})
    assert [task.name for task in tasks] == ["references/base", "ga/learning_rate=0.001/seed42"]

    # The other benchmarks' model keys are refused, and the toy is among the valid names.
    path.write_text(yaml.safe_dump({**sweep, "model": "M"}))
    with pytest.raises(ConfigError, match="model is for rwku sweeps; toy sweeps take base_model"):
        load_sweep(path)
    path.write_text(yaml.safe_dump({**sweep, "benchmark": "tofu"}))
    with pytest.raises(ConfigError, match=re.escape("allowed values: muse | rwku | toy")):
        load_sweep(path)


def test_a_registered_benchmark_reaches_the_web_ui_and_the_cli(toy: None) -> None:
    from unilogit.webui.evaluate import benchmarks

    assert list(benchmarks()) == ["MUSE", "RWKU", "Toy"]
    assert benchmarks()["Toy"].eval_argv("run", "", "r", "", overwrite=False) == [
        "eval", "toy", "--model", "run", "--data", "data/toy_mini",
    ]  # fmt: skip
    assert TOY.eval_results_md == "toy_eval/toy_results.md"
    assert cli.main(["eval", "toy", "--model", "m"]) == 0 and cli.main(["toy", "export", "f"]) == 0
    assert CALLS == [("evaluate", ["--model", "m"]), ("main", ["export", "f"])]
