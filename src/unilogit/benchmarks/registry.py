"""The benchmarks as data: one :class:`Benchmark` descriptor each, in :data:`BENCHMARKS`.

A descriptor holds everything that differs between benchmarks outside their evaluator and their commands:
the default data, the results files, the reference models a sweep evaluates, the metric columns, the
Pareto plots, and the commands a sweep or the web UI runs. The
sweeps (``unilogit sweep``, ``unilogit report``), the web UI's Evaluate action and the CLI's dispatch read
it, so that a new benchmark is one more entry here (docs/ARCHITECTURE.md, "How to add a benchmark").

The CLI reads this module before every command, so it imports nothing heavy: the evaluator (for its
``TABLE_COLUMNS``) and the command module are imported when they are used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unilogit.config import key_values
from unilogit.errors import ConfigError


@dataclass(frozen=True)
class Plot:
    """A Pareto plot: ``x`` is a retain metric (higher is better), ``y`` a forget metric (lower is better)."""

    name: str
    x: str
    y: str
    xlabel: str
    ylabel: str


@dataclass(frozen=True)
class SweepRun:
    """What a benchmark's sweep commands need of one point, or of one reference model's evaluation."""

    name: str  # the row name: the point's method, or the reference's name
    folder: Path  # the point's (or reference's) folder in the sweep
    output: Path  # where the results file goes: the reference's folder, or the point's ``point_output``
    data: str
    eval_args: tuple[str, ...]
    models: Mapping[str, str]  # the sweep's models, by the names its placeholders use
    config: str = ""  # a point's unlearning config
    overrides: tuple[str, ...] = ()  # a point's key=value training arguments


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its data, results, references, columns, plots and commands."""

    name: str  # `benchmark:` of a sweep file, `unilogit eval NAME`, `unilogit NAME SUBCOMMAND`
    title: str  # the web UI's dropdown and the heading of its evaluation's progress
    module: str  # the commands: a module with evaluate(argv) (`eval NAME`) and main(argv) (`NAME ...`)
    evaluator: str  # the evaluator module, whose TABLE_COLUMNS are the metric columns
    usage: str  # the benchmark's lines of `unilogit help`
    default_data: str  # --data when none is given: the mini benchmark
    results_json: str
    results_md: str
    eval_folder: str  # where `unilogit eval NAME --model M` writes without --output: M/eval_folder
    takes_retrain: bool  # whether `eval NAME` takes --retrain (the web UI passes it on)
    references: Mapping[str, str]  # a sweep's reference rows (evaluated models), with their Pareto-plot marker
    model_keys: tuple[str, ...]  # the sweep-file keys that name its models, or how to prepare them (target_model, ...)
    models: tuple[str, ...]  # the sweep's models as its commands and {placeholders} name them
    reserved_keys: tuple[str, ...]  # config keys the sweep sets per point, refused in grids and overrides
    point_output: str  # the subfolder of a point that holds its results_json
    plots: tuple[Plot, ...]
    read_models: Callable[[Mapping[str, Any]], dict[str, str | None]]  # the sweep file's model_keys, checked
    # (read models, overrides, data): the models a sweep on ``data`` runs with, prepared on that data if need be
    resolve_models: Callable[[Mapping[str, str | None], list[str], str], dict[str, str]]
    # The training arguments that point the unlearning configs at a sweep's data (none where the configs name it)
    data_overrides: Callable[[str], list[str]]
    point_commands: Callable[[SweepRun], list[list[str]]]  # `unilogit` argv of a point, in order
    reference_commands: Callable[[SweepRun], list[list[str]]]  # `unilogit` argv evaluating a reference
    kl_figure: bool = False  # the report draws the KL-to-retrain figure (the points log soft_target_kl)
    validation_selection: bool = False  # a sweep may say `selection: validation` (sweep.pareto.choose_points)

    @property
    def columns(self) -> tuple[tuple[str, str, str], ...]:
        """``(title, key, format)`` of the metric columns: those of the evaluator's own results table."""
        return importlib.import_module(self.evaluator).TABLE_COLUMNS

    @property
    def eval_results_md(self) -> str:
        """The Markdown table ``unilogit eval NAME --model M`` writes without ``--output``, relative to M."""
        return f"{self.eval_folder}/{self.results_md}"

    def evaluate(self, argv: list[str]) -> None:
        """Run ``unilogit eval NAME ARGV``."""
        importlib.import_module(self.module).evaluate(argv)

    def main(self, argv: list[str]) -> None:
        """Run ``unilogit NAME ARGV`` (the benchmark's subcommands)."""
        importlib.import_module(self.module).main(argv)

    def eval_argv(self, model: str, data: str, retrain: str | None, max_examples: str, overwrite: bool) -> list[str]:
        """The ``unilogit`` arguments that evaluate ``model`` (the web UI's Evaluate); the command checks them."""
        argv = ["eval", self.name, "--model", model, "--data", data or self.default_data]
        if retrain and self.takes_retrain:
            argv += ["--retrain", retrain]
        if max_examples.strip():
            argv += ["--max-examples", max_examples.strip()]
        if overwrite:
            argv.append("--overwrite")
        return argv


# --- MUSE ---------------------------------------------------------------------------------------------------


def _muse_read_models(data: Mapping[str, Any]) -> dict[str, str | None]:
    """Both of target_model and retrain_model, or neither (then :func:`_muse_models` prepares them, with the
    ``reference_overrides`` list of key=value, kept as one space-separated string)."""
    if ("target_model" in data) != ("retrain_model" in data):
        raise ConfigError("give both target_model and retrain_model, or neither (then they are prepared)")
    models = {key: None if data.get(key) is None else str(data[key]) for key in ("target_model", "retrain_model")}
    given = data.get("reference_overrides")
    if given is None:
        return {**models, "reference_overrides": None}
    if models["target_model"]:
        raise ConfigError("reference_overrides trains the target and retrain models; leave it out with target_model")
    items = key_values("reference_overrides", given, example="num_train_epochs=20")
    spaced = [item for item in items if " " in item]
    if spaced:  # the items travel as one space-separated string
        raise ConfigError(f"reference_overrides: {spaced[0]!r} holds a space; write key=value with none")
    return {**models, "reference_overrides": " ".join(items)}


def _is_embedded_muse(data: str) -> bool:
    from unilogit.paths import shipped

    return Path(shipped(data)).resolve() == Path(shipped(MUSE.default_data)).resolve()


def _muse_models(given: Mapping[str, str | None], overrides: list[str], data: str) -> dict[str, str]:
    """The sweep file's target and retrain models, or those ``unilogit muse prepare`` trains on ``data``'s raw/
    splits with the sweep's shared ``overrides`` (or finds cached)."""
    if given["target_model"] and given["retrain_model"]:
        return {"target": str(given["target_model"]), "retrain": str(given["retrain_model"])}
    from unilogit.benchmarks.muse import prepare
    from unilogit.stage.args import unlearning_keys

    # The pt stage that trains target and retrain has no unlearning keys.
    shared = [item for item in overrides if item.split("=", 1)[0].strip() not in unlearning_keys()]
    own = (given.get("reference_overrides") or "").split()
    local = [] if _is_embedded_muse(data) else ["--data", data]
    return {name: str(path) for name, path in prepare([*local, *shared, *own]).items()}


def _muse_data_overrides(data: str) -> list[str]:
    """A local MUSE folder's raw/forget and raw/retain1, registered, as the unlearning data (the method configs
    name the embedded mini corpus's)."""
    if _is_embedded_muse(data):
        return []
    from unilogit.benchmarks.muse import LOCAL_FORGET, LOCAL_RETAIN, register_local

    return [f"dataset_dir={register_local(data)}", f"dataset={LOCAL_FORGET}", f"retain_dataset={LOCAL_RETAIN}"]


def _muse_point(run: SweepRun) -> list[list[str]]:
    """Train from the target into ``model/``, then evaluate that against the retrained model."""
    model = run.folder / "model"
    train = ["train", run.config, f"model_name_or_path={run.models['target']}", f"output_dir={model}", *run.overrides]
    evaluate = ["eval", "muse", "--model", str(model), "--retrain", run.models["retrain"], "--output",
                str(run.output), "--name", run.name, "--data", run.data, *run.eval_args]  # fmt: skip
    return [train, evaluate]


def _muse_reference(run: SweepRun) -> list[list[str]]:
    return [["eval", "muse", "--model", run.models[run.name], "--retrain", run.models["retrain"], "--output",
             str(run.output), "--name", run.name, "--data", run.data, *run.eval_args]]  # fmt: skip


_RETAIN_MUSE = "KnowMem_r, retain knowledge (higher is better →)"

MUSE = Benchmark(
    name="muse",
    title="MUSE",
    module="unilogit.benchmarks.muse",
    evaluator="unilogit.evaluation.muse",
    usage="""\
  eval muse --model M [--retrain R]   MUSE metrics (VerbMem, KnowMem, PrivLeak, KL to retrain); --help for more
  muse prepare [--data FOLDER] [key=value ...]
                                      train (or reuse from the cache) the MUSE target and retrain models
  muse datasets FOLDER                register a local MUSE folder's raw/forget and raw/retain1 for unlearning
  muse export news|books FOLDER       download a MUSE hub dataset once into a local folder (needs network)
  muse table RESULTS.json ...         merge eval muse results into one table
""",
    default_data="data/muse_mini",
    results_json="muse_results.json",
    results_md="muse_results.md",
    eval_folder="muse_eval",
    takes_retrain=True,
    references={"target": "x", "retrain": "*"},
    model_keys=("target_model", "retrain_model", "reference_overrides"),
    models=("target", "retrain"),
    reserved_keys=("model_name_or_path", "output_dir"),
    point_output="eval",
    plots=(
        Plot("pareto-knowmem", "knowmem_r", "knowmem_f", _RETAIN_MUSE, "KnowMem_f, forget (lower is better ↓)"),
        Plot("pareto-verbmem", "knowmem_r", "verbmem_f", _RETAIN_MUSE, "VerbMem_f, forget (lower is better ↓)"),
    ),
    read_models=_muse_read_models,
    resolve_models=_muse_models,
    data_overrides=_muse_data_overrides,
    point_commands=_muse_point,
    reference_commands=_muse_reference,
    kl_figure=True,
    validation_selection=True,
)

# --- RWKU ---------------------------------------------------------------------------------------------------

RWKU_DEFAULT_MODEL = "smollm2-135m-instruct"


def _rwku_read_models(data: Mapping[str, Any]) -> dict[str, str | None]:
    return {"model": str(data.get("model") or RWKU_DEFAULT_MODEL)}


def _rwku_models(given: Mapping[str, str | None], overrides: list[str], data: str) -> dict[str, str]:
    """The original model, which every target starts from (``rwku run`` trains each point itself)."""
    return {"model": str(given["model"])}


def _rwku_evaluator_args(eval_args: tuple[str, ...]) -> list[str]:
    """``eval_args`` without ``rwku run``'s own flags (--batch, --corpus X), which ``eval rwku`` refuses."""
    kept, skip = [], False
    for arg in eval_args:
        if skip:
            skip = False
        elif arg == "--corpus":
            skip = True
        elif arg != "--batch" and not arg.startswith("--corpus="):
            kept.append(arg)
    return kept


def _rwku_point(run: SweepRun) -> list[list[str]]:
    # `rwku run` reads key=value overrides as positional arguments after its options.
    return [["rwku", "run", run.config, "--output", str(run.output), "--name", run.name, "--model",
             run.models["model"], "--data", run.data, *run.eval_args, *run.overrides]]  # fmt: skip


def _rwku_reference(run: SweepRun) -> list[list[str]]:
    return [["eval", "rwku", "--model", run.models["model"], "--name", run.name, "--output", str(run.output),
             "--data", run.data, *_rwku_evaluator_args(run.eval_args)]]  # fmt: skip


RWKU = Benchmark(
    name="rwku",
    title="RWKU",
    module="unilogit.benchmarks.rwku",
    evaluator="unilogit.evaluation.rwku",
    usage="""\
  eval rwku --model M [--targets 1-8] RWKU metrics per target (forget/neighbor probes, MIA, utility); --help
  rwku run CONFIG.yaml --output DIR   RWKU's target-wise loop: unlearn each target from the original model, evaluate
  rwku export FOLDER                  download RWKU's evaluation sets and corpora once into a local folder
  rwku table RESULTS.json ...         merge eval rwku / rwku run results into one table
  rwku key --model M [eval flags]     the content key of an evaluation, for caches (the drivers' "before" cache)
""",
    default_data="data/rwku_mini",
    results_json="rwku_results.json",
    results_md="rwku_results.md",
    eval_folder="rwku_eval",
    takes_retrain=False,  # RWKU is zero-shot: there is no retrained model to compare with
    references={"before": "o"},
    model_keys=("model",),
    models=("model",),
    # `rwku run` sets the data of each target itself.
    reserved_keys=("model_name_or_path", "output_dir", "dataset", "dataset_dir"),
    point_output="run",
    plots=(
        Plot(
            "pareto-forget-neighbor",
            "neighbor_all",
            "forget_all",
            "Neighbor All, neighbor knowledge (higher is better →)",
            "Forget All, forget probes (lower is better ↓)",
        ),
    ),
    read_models=_rwku_read_models,
    resolve_models=_rwku_models,
    data_overrides=lambda data: [],  # `rwku run` trains on --data's targets itself
    point_commands=_rwku_point,
    reference_commands=_rwku_reference,
)

# Every benchmark, by name, in the order the CLI's help, the sweeps' errors and the web UI list them.
BENCHMARKS: dict[str, Benchmark] = {benchmark.name: benchmark for benchmark in (MUSE, RWKU)}
