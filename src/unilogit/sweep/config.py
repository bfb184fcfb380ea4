"""The sweep file: a benchmark, shared settings and per-method grids, read and checked before anything runs.

A sweep file is YAML with these keys (``benchmark``, ``output`` and ``methods`` are required)::

    benchmark: muse | rwku          # a name in unilogit.benchmarks.registry.BENCHMARKS
    output: DIR                     # the sweep folder, relative to the current folder
    data: DIR                       # --data of the evaluator (default: the benchmark's mini data)
    overrides: [key=value, ...]     # for every training run
    eval_args: [flag, ...]          # extra evaluator flags
    seeds: [42, 43, 44]             # the training seeds: every point runs once per seed (default [42])
    target_model: M                 # muse only, with retrain_model: use these instead of `unilogit muse prepare`
    retrain_model: M
    reference_overrides: [k=v, ...] # muse only, without them: for `unilogit muse prepare`, e.g. [num_train_epochs=20]
    model: M                        # rwku only: the original model (default smollm2-135m-instruct)
    methods:
      NAME: {config: CONFIG.yaml, grid: {key: [v1, v2, ...], ...}, overrides: [key=value, ...]}
    quick: {points_per_method: N, seeds: [...], eval_args: [...], overrides: [...]}   # what --quick changes

Each method's grid is the cartesian product of its keys' values, in file order (the last key varies
fastest). A point is one combination; its id is ``<method>/<key>=<value>,...`` made safe for a file name.
A method's ``overrides`` are for its runs only, after the shared ones; their values may name the sweep's
models as ``{target}`` and ``{retrain}`` (muse) or ``{model}`` (rwku), replaced by their paths when the
commands are built (e.g. ``soft_target_kl_model={retrain}``). The seed of a run is the sweep's to set
(``seed=N`` after the grid's values), so ``seed`` is refused in grids and overrides.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unilogit.benchmarks.registry import BENCHMARKS, Benchmark
from unilogit.config import format_value, key_values, load_config, nearest_key, string_list
from unilogit.errors import ConfigError, first_line
from unilogit.stage.args import unlearning_keys

# The top-level keys every sweep file may have; each benchmark adds the keys that name its models.
COMMON_KEYS = ("benchmark", "output", "data", "selection", "overrides", "eval_args", "seeds", "methods", "quick")
METHOD_KEYS = ("config", "grid", "overrides")
# A method's overrides may name the sweep's models (the benchmark's ``models``) as {name}.
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
QUICK_KEYS = ("points_per_method", "seeds", "eval_args", "overrides")
# A sweep file without seeds: runs each point once, with the seed every shipped config sets.
DEFAULT_SEEDS = (42,)
QUICK_SUFFIX = "-quick"
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
# PyYAML reads 5e-4 (an exponent without a dot) as a string; OmegaConf and every user read it as a number.
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass
class Point:
    """One run of a sweep: a method with one combination of its grid."""

    method: str
    config: str
    params: dict[str, Any]

    @property
    def name(self) -> str:
        """The point's folder name under its method: ``key=value,...``, or ``default`` for an empty grid."""
        text = ",".join(f"{key}={format_value(value)}" for key, value in self.params.items()) or "default"
        return _SAFE.sub("_", text)

    @property
    def id(self) -> str:
        """``<method>/<name>``, also the point's folder relative to the sweep folder."""
        return f"{self.method}/{self.name}"

    @property
    def overrides(self) -> list[str]:
        """The grid values as ``key=value`` arguments."""
        return [f"{key}={format_value(value)}" for key, value in self.params.items()]


def model_keys() -> tuple[str, ...]:
    """The sweep-file keys that name a benchmark's models, of every benchmark, in registry order."""
    return tuple(dict.fromkeys(key for benchmark in BENCHMARKS.values() for key in benchmark.model_keys))


def top_keys() -> tuple[str, ...]:
    """The top-level keys a sweep file may have."""
    return (*COMMON_KEYS, *model_keys())


@dataclass
class SweepMethod:
    """A method of the sweep: its unlearning config and its grid (not :class:`unilogit.stage.methods.Method`,
    the registry entry of an unlearning method)."""

    name: str
    config: str
    grid: dict[str, list[Any]]
    keys: frozenset[str] = frozenset()  # the keys of its config file
    overrides: list[str] = field(default_factory=list)  # key=value for its runs only, {model} placeholders kept


@dataclass
class Sweep:
    """A resolved sweep file (``--quick`` already applied)."""

    path: Path
    benchmark: str
    output: Path
    data: str
    overrides: list[str]
    eval_args: list[str]
    methods: dict[str, SweepMethod]
    quick: bool = False
    quick_overrides: list[str] = field(default_factory=list)
    points_per_method: int | None = None
    models: dict[str, str | None] = field(default_factory=dict)  # the benchmark's model_keys as the file gives them
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))  # every point runs once per seed
    # On validation data: the report names each method's chosen point (SELECTION_RULE). Never on test data.
    validation: bool = False

    @property
    def descriptor(self) -> Benchmark:
        """The benchmark's descriptor."""
        return BENCHMARKS[self.benchmark]

    @property
    def points(self) -> list[Point]:
        """Every point, method by method in file order, each method's grid in :func:`expand_grid` order."""
        points = []
        for method in self.methods.values():
            combos = expand_grid(method.grid)[: self.points_per_method]
            points.extend(Point(method.name, method.config, params) for params in combos)
        return points

    def train_overrides(self, point: Point, models: dict[str, str] | None = None, seed: int | None = None) -> list[str]:
        """The training run's ``key=value`` arguments: the data's (a local MUSE folder's), shared overrides, the
        method's, the grid, ``seed=N`` (with ``seed``), then --quick's (which win). With ``models`` (the sweep's
        model paths by name), ``{name}`` in the method's are replaced."""
        own = self.methods[point.method].overrides if point.method in self.methods else []
        if models is not None:
            own = [_PLACEHOLDER.sub(lambda m: models[m.group(1)], item) for item in own]
        seeded = [] if seed is None else [f"seed={seed}"]
        # Overrides that name the training data (evaluation-only folders) replace the data folder's own.
        named = any(item.split("=", 1)[0].strip() == "dataset" for item in self.overrides)
        data = [] if named else self.descriptor.data_overrides(self.data)
        return [*data, *self.overrides, *own, *point.overrides, *seeded, *self.quick_overrides]

    def to_json(self) -> dict[str, Any]:
        """The resolved sweep, as written to ``sweep.json``."""
        return {
            "sweep_file": str(self.path),
            "benchmark": self.benchmark,
            "output": str(self.output),
            "data": self.data,
            "overrides": self.overrides,
            "eval_args": self.eval_args,
            "seeds": self.seeds,
            "quick": self.quick,
            "selection": "validation" if self.validation else None,
            "quick_overrides": self.quick_overrides,
            # Every benchmark's model keys, unset ones as null, so that sweep.json has one shape.
            **{key: self.models.get(key) for key in model_keys()},
            "methods": {
                m.name: {"config": m.config, "grid": m.grid, **({"overrides": m.overrides} if m.overrides else {})}
                for m in self.methods.values()
            },
            "points": [point.id for point in self.points],
        }


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid``'s value lists, keys in order, the last key varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


@functools.cache
def _framework_keys() -> frozenset[str]:
    """Argument names of llamafactory's dataclasses and transformers' training arguments (imported once)."""
    from dataclasses import fields

    from unilogit._compat import install_torchaudio_stub

    install_torchaudio_stub()
    from llamafactory.hparams import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    classes = (ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments, Seq2SeqTrainingArguments)
    return frozenset(f.name for cls in classes for f in fields(cls))


def _check_config_key(where: str, key: str, config_keys: frozenset[str], benchmark: Benchmark) -> None:
    if key in benchmark.reserved_keys:
        raise ConfigError(f"{where}: {key} is set by the sweep for every point; remove it")
    if key == "seed":
        raise ConfigError(f"{where}: seed is set for every run from the sweep's seeds: list; remove it and list the "
                          "seeds there, e.g. seeds: [42, 43, 44]")  # fmt: skip
    # The framework's names cost an 8 s import; most grids name keys that are already in the method's YAML.
    if key in config_keys or key in unlearning_keys() or key in _framework_keys():
        return
    hint = nearest_key(key, sorted(config_keys | set(unlearning_keys()) | _framework_keys()))
    raise ConfigError(f"{where}: unknown config key {key!r}; " + (f"did you mean {hint!r}?" if hint else "remove it"))


def _unknown(where: str, key: Any, valid: tuple[str, ...]) -> ConfigError:
    hint = nearest_key(str(key), list(valid))
    fix = f"did you mean {hint!r}?" if hint else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"{where}: unknown key {key!r}; {fix}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping of key: value")
    return value


def _seeds(where: str, value: Any) -> list[int]:
    if value is None:
        return list(DEFAULT_SEEDS)
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)
    ):
        raise ConfigError(f"{where}: must be a list of whole numbers >= 0, e.g. [42, 43, 44]")
    if len(set(value)) < len(value):
        raise ConfigError(f"{where}: {value} names a seed twice; list each seed once")
    return list(value)


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _EXPONENT.match(value) else value


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}; fix the file") from None
    return _mapping(str(path), data)


def _method(path: Path, name: Any, spec: Any, benchmark: Benchmark) -> SweepMethod:
    where = f"{path}: methods.{name}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"{where}: a method name must be letters, digits, '_', '.' or '-' (it names a folder)")
    if name in ("references", *benchmark.references):
        raise ConfigError(f"{where}: {name!r} names the sweep's reference models; call the method otherwise")
    spec = _mapping(where, spec)
    for key in spec:
        if key not in METHOD_KEYS:
            raise _unknown(where, key, METHOD_KEYS)
    if not spec.get("config"):
        raise ConfigError(f"{where}: config is missing; set config: examples/{benchmark.name}/<method>.yaml")
    config = str(spec["config"])
    if not config.endswith((".yaml", ".yml", ".json")):
        raise ConfigError(f"{where}.config: {config} is not a YAML or JSON file")
    try:
        keys = frozenset(load_config([config]))
    except ConfigError as err:  # a missing file, or a YAML syntax error with its line
        raise ConfigError(f"{where}.config: {err}") from None
    grid: dict[str, list[Any]] = {}
    for key, values in _mapping(f"{where}.grid", spec.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ConfigError(f"{where}.grid.{key}: use a list of values, e.g. {key}: [{format_value(values)}]")
        if not values:
            raise ConfigError(f"{where}.grid.{key}: the list of values is empty; give at least one")
        if any(isinstance(v, dict | list) for v in values):
            raise ConfigError(f"{where}.grid.{key}: values must be numbers, strings or booleans")
        _check_config_key(f"{where}.grid", str(key), keys, benchmark)
        grid[str(key)] = [_number(v) for v in values]
    overrides = key_values(f"{where}.overrides", spec.get("overrides"))
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        _check_config_key(f"{where}.overrides", key, keys, benchmark)
        if key in grid:
            raise ConfigError(f"{where}: {key} is in its overrides and in its grid; keep one")
        for placeholder in _PLACEHOLDER.findall(item.split("=", 1)[1]):
            if placeholder not in benchmark.models:
                allowed = ", ".join(f"{{{p}}}" for p in benchmark.models)
                raise ConfigError(f"{where}.overrides: {{{placeholder}}} in {item!r} is not a model of a "
                                  f"{benchmark.name} sweep; use {allowed}")  # fmt: skip
    return SweepMethod(name, config, grid, keys, overrides)


def load_sweep(path: str | Path, quick: bool = False) -> Sweep:
    """Read and check the sweep file at ``path``; ``quick`` applies its ``quick:`` section.

    A quick sweep writes to ``<output>-quick``, so a smoke run never mixes with (or resumes) the real one.
    """
    path = Path(path)
    data = _read_yaml(path)
    for key in data:
        if key not in top_keys():
            raise _unknown(str(path), key, top_keys())
    for key in ("benchmark", "output", "methods"):
        if not data.get(key):
            raise ConfigError(f"{path}: {key} is missing; see examples/sweeps/ for a complete file")
    given = str(data["benchmark"])
    if given not in BENCHMARKS:
        raise ConfigError(f"{path}: benchmark: {given!r} is not valid; allowed values: {' | '.join(BENCHMARKS)}")
    benchmark = BENCHMARKS[given]
    _check_model_keys(path, data, benchmark)
    try:
        models = benchmark.read_models(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None

    methods: dict[str, SweepMethod] = {}
    for name, spec in _mapping(f"{path}: methods", data["methods"]).items():
        methods[name] = _method(path, name, spec, benchmark)
    overrides = key_values(f"{path}: overrides", data.get("overrides"))
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        for method in methods.values():
            _check_config_key(f"{path}: overrides", key, method.keys, benchmark)
            if key in method.grid:
                raise ConfigError(f"{path}: {key} is in overrides and in the grid of {method.name}; keep one")
            if any(own.split("=", 1)[0].strip() == key for own in method.overrides):
                raise ConfigError(f"{path}: {key} is in overrides and in the overrides of {method.name}; keep one")

    selection = data.get("selection")
    if selection not in (None, "validation"):
        raise ConfigError(f"{path}: selection: {selection!r}; use validation (on validation data only: the report "
                          "then names each method's chosen point) or leave it out")  # fmt: skip
    if selection and not benchmark.validation_selection:
        chooses = " and ".join(b.name for b in BENCHMARKS.values() if b.validation_selection)
        raise ConfigError(f"{path}: selection: validation is for {chooses} sweeps; leave it out")
    sweep = Sweep(
        path=path,
        benchmark=benchmark.name,
        output=Path(str(data["output"])),
        data=str(data.get("data") or benchmark.default_data),
        overrides=overrides,
        eval_args=string_list(f"{path}: eval_args", data.get("eval_args")),
        methods=methods,
        models=models,
        seeds=_seeds(f"{path}: seeds", data.get("seeds")),
        validation=selection == "validation",
    )
    _check_unique_folders(path, sweep.points)
    if quick:
        _apply_quick(path, sweep, data.get("quick"))
    return sweep


def _check_model_keys(path: Path, data: dict[str, Any], benchmark: Benchmark) -> None:
    """Refuse the model keys of another benchmark, naming the ones this benchmark takes."""
    for other in BENCHMARKS.values():
        foreign = [key for key in other.model_keys if key not in benchmark.model_keys]
        if any(key in data for key in foreign):
            verb = "is" if len(foreign) == 1 else "are"
            raise ConfigError(f"{path}: {' and '.join(foreign)} {verb} for {other.name} sweeps; {benchmark.name} "
                              f"sweeps take {' and '.join(benchmark.model_keys)}")  # fmt: skip


def _check_unique_folders(path: Path, points: list[Point]) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for point in points:
        if point.id in seen:
            raise ConfigError(f"{path}: {seen[point.id]} and {point.params} share the folder {point.id}; "
                              "make the grid values differ in letters or digits")  # fmt: skip
        seen[point.id] = point.params


def _apply_quick(path: Path, sweep: Sweep, quick: Any) -> None:
    if not quick:
        raise ConfigError(f"{path}: --quick needs a quick: section ({', '.join(QUICK_KEYS)})")
    quick = _mapping(f"{path}: quick", quick)
    for key in quick:
        if key not in QUICK_KEYS:
            raise _unknown(f"{path}: quick", key, QUICK_KEYS)
    count = quick.get("points_per_method")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"{path}: quick.points_per_method: {count!r} is not a whole number >= 1")
    sweep.quick_overrides = key_values(f"{path}: quick.overrides", quick.get("overrides"))
    for item in sweep.quick_overrides:
        key = item.split("=", 1)[0].strip()
        for method in sweep.methods.values():
            _check_config_key(f"{path}: quick.overrides", key, method.keys, sweep.descriptor)
    sweep.quick = True
    sweep.points_per_method = count
    if "seeds" in quick:
        sweep.seeds = _seeds(f"{path}: quick.seeds", quick["seeds"])
    sweep.eval_args = [*sweep.eval_args, *string_list(f"{path}: quick.eval_args", quick.get("eval_args"))]
    sweep.output = sweep.output.with_name(sweep.output.name + QUICK_SUFFIX)
