"""``unilogit sweep SWEEP.yaml [--jobs N] [--quick]``: every point of a sweep once per seed, resumable and in
parallel.

The sweep folder holds::

    sweep.json                              the resolved sweep, rewritten at every start
    references/<name>-<key>/                the reference models' evaluations (muse: target, retrain; rwku: before)
    <method>/<point>/seed<N>-<key>/         one run of the point: training seed N, cache key <key>
        point.json                          method, config, hyperparameters, seed, overrides and the exact commands
        log.txt                             the stdout and stderr of the run's commands
        metrics.json                        written last, once the run has finished
    sweep.csv, sweep.md                     the references first, then one row per point: the mean over its
                                            finished seeds and the 95% confidence interval (evaluation/seeds.py)

A run's key (:func:`run_key`) is what its numbers depend on: its resolved config (seed included), the bytes
of its training data, of the evaluation data and of the sweep's models, the evaluator's code and flags. A
finished run whose key is unchanged is reused; when any of these changes the run gets a new folder and runs
again, and the old folder is left as it was (results are never overwritten). A folder of the current key
without ``metrics.json`` was interrupted or failed, and is deleted and run again from scratch. Every run is
subprocesses of ``unilogit``, the commands its benchmark's descriptor gives (MUSE: ``train`` then ``eval
muse``; RWKU: ``rwku run``), so a crash never takes the sweep down.
"""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_write_text
from unilogit.benchmarks.registry import BENCHMARKS, SweepRun
from unilogit.config import format_value, load_config
from unilogit.evaluation.results import format_mean_cell, format_seeds, markdown_table
from unilogit.evaluation.seeds import CI_SUFFIX, N_SEEDS, RUNS, SEEDS, aggregate_seeds
from unilogit.fingerprint import evaluator_code, fingerprint
from unilogit.paths import shipped
from unilogit.sweep.config import Point, Sweep, load_sweep

SWEEP_JSON, SWEEP_CSV, SWEEP_MD = "sweep.json", "sweep.csv", "sweep.md"
POINT_JSON, METRICS_JSON, LOG = "point.json", "metrics.json", "log.txt"
CLI = [sys.executable, "-m", "unilogit.cli"]


def point_folder(sweep: Sweep, point: Point) -> Path:
    """The folder of ``point``'s runs: ``<output>/<method>/<point>/``."""
    return sweep.output / point.method / point.name


def run_folder(sweep: Sweep, point: Point, seed: int, key: str) -> Path:
    """Where ``point`` runs with ``seed`` under the cache key ``key``: ``<output>/<method>/<point>/seed<N>-<key>/``."""
    return point_folder(sweep, point) / f"seed{seed}-{key}"


def reference_folder(sweep: Sweep, name: str, key: str) -> Path:
    """Where the reference model ``name`` is evaluated under ``key``: ``<output>/references/<name>-<key>/``."""
    return sweep.output / "references" / f"{name}-{key}"


# ----------------------------------------------------------------------------------------------- cache keys


def training_data(config: dict[str, Any]) -> list[Any]:
    """What a config trains on, for a cache key: each of its ``dataset`` and ``retain_dataset`` names with its
    ``dataset_info.json`` entry and the file (or folder) that names, or the bare name of a set not listed there
    (a hub dataset)."""
    folder = Path(shipped(str(config.get("dataset_dir") or "data")))
    info_file = folder / "dataset_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    items: list[Any] = []
    for key in ("dataset", "retain_dataset"):
        names = config.get(key) or []
        for name in (n.strip() for n in (names.split(",") if isinstance(names, str) else names)):
            entry = info.get(name)
            items += [name, entry, folder / entry["file_name"]] if entry and entry.get("file_name") else [name]
    return items


def shared_key(sweep: Sweep, models: dict[str, str]) -> str:
    """What every run and reference of ``sweep`` depends on: the bytes of its models (a local folder by its
    top-level files, a hub id or alias by its name), of its evaluation data, of the evaluator's code
    (:func:`~unilogit.fingerprint.evaluator_code`), and the evaluator's flags."""
    benchmark = sweep.descriptor
    model_key = fingerprint(*(models[name] for name in benchmark.models), shallow=True)
    return fingerprint(
        model_key,
        shipped(sweep.data),
        {"eval_args": sweep.eval_args},
        *evaluator_code(benchmark.evaluator, benchmark.module),
    )


def run_key(sweep: Sweep, point: Point, seed: int, models: dict[str, str], shared: str | None = None) -> str:
    """The cache key of ``point``'s run with ``seed``: its resolved config (the method's YAML with every
    override, the seed included, read as ``unilogit train`` reads it; less the keys the sweep sets per folder),
    the bytes of the data it trains on (:func:`training_data`) and :func:`shared_key` (given as ``shared``
    when already computed: it reads the models' bytes)."""
    config = load_config([point.config, *sweep.train_overrides(point, models, seed)])
    for key in sweep.descriptor.reserved_keys:  # the output folder, and the model and data the sweep passes
        config.pop(key, None)
    return fingerprint(shared or shared_key(sweep, models), config, *training_data(config))


def reference_key(sweep: Sweep, name: str, models: dict[str, str], shared: str | None = None) -> str:
    """The cache key of the reference model ``name``'s evaluation: :func:`shared_key` and its name."""
    return fingerprint(shared or shared_key(sweep, models), name)


# ------------------------------------------------------------------------------------------------- commands


def point_commands(sweep: Sweep, point: Point, models: dict[str, str], seed: int, folder: Path) -> list[list[str]]:
    """The commands that run ``point`` with ``seed`` in ``folder``, in order. ``models``: the sweep's models
    (muse's target and retrain, rwku's model)."""
    benchmark = sweep.descriptor
    run = SweepRun(point.method, folder, folder / benchmark.point_output, sweep.data, tuple(sweep.eval_args), models,
                   point.config, tuple(sweep.train_overrides(point, models, seed)))  # fmt: skip
    return [[*CLI, *argv] for argv in benchmark.point_commands(run)]


def reference_commands(sweep: Sweep, name: str, models: dict[str, str], folder: Path) -> list[list[str]]:
    """The command that evaluates the reference model ``name`` (muse: target or retrain; rwku: before) into
    ``folder``."""
    run = SweepRun(name, folder, folder, sweep.data, tuple(sweep.eval_args), models)
    return [[*CLI, *argv] for argv in sweep.descriptor.reference_commands(run)]


def child_env(jobs: int, device: str | None = None, base: dict[str, str] | None = None,
              cores: int | None = None) -> dict[str, str]:  # fmt: skip
    """The environment of one running point: its own accelerator, or on CPU its share of the cores."""
    env = dict(os.environ if base is None else base)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    else:
        cores = cores or len(os.sched_getaffinity(0))
        env["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    return env


def visible_devices() -> list[str]:
    """The CUDA devices this process sees, named as ``CUDA_VISIBLE_DEVICES`` names them (empty on CPU)."""
    import torch

    count = torch.cuda.device_count()
    # A child's CUDA_VISIBLE_DEVICES is read against the machine's numbering, so keep the parent's names.
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return given[:count] if len(given) >= count else [str(i) for i in range(count)]


@dataclass
class Task:
    """A run of a point, or a reference evaluation: commands run in their own folder, finished once ``done``
    exists."""

    name: str  # for messages: <point id>/seed<N>, or references/<name>
    row: str  # its row in the table: the point's method, or the reference's name
    folder: Path
    commands: list[list[str]]
    done: Path
    record: dict[str, Any]
    metrics: Callable[[], dict[str, Any]] | None = None  # a run's metrics.json, read from its results
    point: Point | None = None  # None for a reference


def _point_task(sweep: Sweep, point: Point, seed: int, models: dict[str, str], shared: str) -> Task:
    key = run_key(sweep, point, seed, models, shared)
    folder = run_folder(sweep, point, seed, key)
    commands = point_commands(sweep, point, models, seed, folder)
    results = folder / sweep.descriptor.point_output / sweep.descriptor.results_json

    def metrics() -> dict[str, Any]:
        row = json.loads(results.read_text())[point.method]
        row.pop("per_target", None)
        return {"method": point.method, "point": point.id, "hyperparameters": point.params, **row, "seed": seed}

    record = {
        "id": point.id, "method": point.method, "config": point.config, "hyperparameters": point.params,
        "seed": seed, "key": key, "overrides": sweep.train_overrides(point, models, seed),
        "eval_args": sweep.eval_args, "data": sweep.data, "models": models, "commands": commands,
    }  # fmt: skip
    return Task(f"{point.id}/seed{seed}", point.method, folder, commands, folder / METRICS_JSON, record, metrics, point)


def _reference_task(sweep: Sweep, name: str, models: dict[str, str], shared: str) -> Task:
    key = reference_key(sweep, name, models, shared)
    folder = reference_folder(sweep, name, key)
    commands = reference_commands(sweep, name, models, folder)
    record = {"id": f"references/{name}", "reference": name, "key": key, "models": models, "commands": commands}
    return Task(f"references/{name}", name, folder, commands, folder / sweep.descriptor.results_json, record)


def sweep_tasks(sweep: Sweep, models: dict[str, str]) -> list[Task]:
    """The references, then every point once per seed, seed by seed (so that an early look at the table has
    every point once)."""
    shared = shared_key(sweep, models)
    tasks = [_reference_task(sweep, name, models, shared) for name in sweep.descriptor.references]
    return tasks + [_point_task(sweep, point, seed, models, shared) for seed in sweep.seeds for point in sweep.points]


def _run_task(task: Task, env: dict[str, str]) -> str | None:
    """Run ``task``'s commands in order with their output in its log; None once it finished, else why not."""
    task.folder.mkdir(parents=True)
    atomic_write_text(task.folder / POINT_JSON, json.dumps(task.record, indent=1) + "\n")
    with (task.folder / LOG).open("w") as log:
        for command in task.commands:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            if done.returncode != 0:
                return f"exit code {done.returncode}"
    if task.metrics is not None:
        try:
            metrics = task.metrics()
        except (OSError, KeyError, ValueError) as err:
            return f"no results: {err}"
        atomic_write_text(task.done, json.dumps(metrics, indent=1) + "\n")
    return None


def _slots(devices: list[str], jobs: int) -> queue.Queue:
    """One slot per job: a device, round-robin over the visible ones, or None on CPU."""
    slots: queue.Queue = queue.Queue()
    for i in range(jobs):
        slots.put(devices[i % len(devices)] if devices else None)
    return slots


def run_sweep(sweep: Sweep, jobs: int | None = None) -> int:
    """Run every unfinished run of ``sweep`` (``jobs`` at once), write the table; 1 if a run failed, else 0."""
    from tqdm import tqdm

    devices = visible_devices()
    jobs = jobs or max(1, len(devices))
    # The shared overrides only: --quick's are left out, so that a smoke run reuses prepared models.
    models = sweep.descriptor.resolve_models(sweep.models, sweep.overrides, sweep.data)
    tasks = sweep_tasks(sweep, models)
    finished = [task for task in tasks if task.done.is_file()]
    atomic_write_text(sweep.output / SWEEP_JSON, json.dumps({**sweep.to_json(), "models": models}, indent=1) + "\n")
    todo = [task for task in tasks if not task.done.is_file()]
    for task in todo:  # an interrupted or failed run of the same key: not a result
        shutil.rmtree(task.folder, ignore_errors=True)
    current = {task.folder for task in tasks}
    kept = [f for p in sweep.points for f in point_folder(sweep, p).glob("seed*-*") if f not in current]
    if kept:
        print(f"[sweep] {len(kept)} run folders of other settings (data, models, config or evaluator code) are kept "
              "as they are and left out of the table", file=sys.stderr)  # fmt: skip

    slots = _slots(devices, jobs)
    failed: list[Task] = []

    def work(task: Task) -> str | None:
        slot = slots.get()
        try:
            return _run_task(task, child_env(jobs, slot))
        finally:
            slots.put(slot)

    print(f"[sweep] {len(todo)} of {len(tasks)} runs to do, {jobs} at a time, in {sweep.output}", file=sys.stderr)
    with (
        ThreadPoolExecutor(max_workers=jobs) as pool,
        tqdm(total=len(tasks), initial=len(finished), desc="sweep", unit="run", file=sys.stderr) as bar,
    ):
        futures = {pool.submit(work, task): task for task in todo}
        try:
            for future in as_completed(futures):
                task, error = futures[future], future.result()
                if error:
                    failed.append(task)
                    tqdm.write(f"[sweep] {task.name} failed ({error}); see {task.folder / LOG}", file=sys.stderr)
                bar.update()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    csv_path, md_path = write_table(sweep, tasks)
    print(md_path.read_text())
    print(f"[sweep] table: {csv_path} and {md_path}", file=sys.stderr)
    if failed:
        print(f"[sweep] {len(failed)} failed ({', '.join(t.name for t in failed)}); run the same command again to "
              "redo them", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------- table


def _flat(row: dict[str, Any], method: str, point: str, benchmark: str, runs: list[str]) -> dict[str, Any]:
    """A table row from an aggregated one: method, point, hyperparameters, each metric's mean and interval, the
    seeds and the run folders (relative to the sweep folder)."""
    flat = {"method": method, "point": point}
    flat.update({key: format_value(value) for key, value in (row.get("hyperparameters") or {}).items()})
    for _, key, _ in BENCHMARKS[benchmark].columns:
        flat.update({key: row.get(key), key + CI_SUFFIX: row.get(key + CI_SUFFIX)})
    flat.update({N_SEEDS: row[N_SEEDS], SEEDS: format_seeds(row[SEEDS]), RUNS: " ".join(runs)})
    return flat


def table_rows(sweep: Sweep, tasks: list[Task]) -> list[dict[str, Any]]:
    """The references' rows, then one per point with a finished run: the mean over its finished seeds."""
    rows = []
    for task in tasks:
        if task.point is None and task.done.is_file():
            record = json.loads(task.done.read_text())[task.row]
            rows.append(_flat(aggregate_seeds([record]), task.row, "", sweep.benchmark, []))
    for point in sweep.points:
        runs = [task for task in tasks if task.point == point and task.done.is_file()]
        if runs:
            row = aggregate_seeds([json.loads(task.done.read_text()) for task in runs])
            folders = [task.folder.relative_to(sweep.output).as_posix() for task in runs]
            rows.append(_flat(row, point.method, point.id, sweep.benchmark, folders))
    return rows


def table_header(sweep: Sweep) -> list[str]:
    """method, point, the union of the grids' keys (in file order), each metric key and its interval, then the
    number of seeds, the seeds and the run folders."""
    hyper = list(dict.fromkeys(key for method in sweep.methods.values() for key in method.grid))
    metrics = [name for _, key, _ in sweep.descriptor.columns for name in (key, key + CI_SUFFIX)]
    return ["method", "point", *hyper, *metrics, N_SEEDS, SEEDS, RUNS]


def markdown_header(header: list[str]) -> list[str]:
    """The columns of a sweep's Markdown table: those of the CSV less the intervals (shown beside their means),
    the number of seeds (the seeds show it) and the run folders."""
    return [key for key in header if not key.endswith(CI_SUFFIX) and key not in (N_SEEDS, RUNS)]


def sweep_table(rows: list[dict[str, Any]], header: list[str], benchmark: str) -> str:
    """``rows`` as a Markdown table: metric columns under their titles, as ``mean ± ci95`` where a row has an
    interval, the others as text."""
    formats = {key: (title, fmt) for title, key, fmt in BENCHMARKS[benchmark].columns}

    def cell(row: dict[str, Any], key: str) -> str:
        if key in formats:
            return format_mean_cell(row, key, formats[key][1])
        return "" if row.get(key) is None else str(row[key])

    titles = [formats.get(key, (key,))[0] for key in header]
    return markdown_table(titles, ([cell(row, key) for key in header] for row in rows))


def write_table(sweep: Sweep, tasks: list[Task]) -> tuple[Path, Path]:
    """Write ``sweep.csv`` and ``sweep.md`` (atomically) from the finished ``tasks``; returns their paths."""
    rows, header = table_rows(sweep, tasks), table_header(sweep)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    csv_path, md_path = sweep.output / SWEEP_CSV, sweep.output / SWEEP_MD
    atomic_write_text(csv_path, buffer.getvalue())
    done = sum(1 for row in rows if row["point"])
    runs = sum(1 for task in tasks if task.point is not None and task.done.is_file())
    total = len(sweep.points) * len(sweep.seeds)
    note = (
        f"Sweep `{sweep.path}` ({sweep.benchmark}, data {sweep.data}, seeds {format_seeds(sweep.seeds)}): {done} of "
        f"{len(sweep.points)} points have a finished run, {runs} of {total} runs in all. "
        "Each cell: the mean over the point's finished seeds ± the half-width of its 95% confidence interval "
        "(Student's t); the references are evaluated once."
    )
    atomic_write_text(md_path, f"{note}\n\n" + sweep_table(rows, markdown_header(header), sweep.benchmark))
    return csv_path, md_path


def main(argv: list[str]) -> int:
    """``unilogit sweep SWEEP.yaml [--jobs N] [--quick]``: train and evaluate every point of a sweep once per seed,
    N runs at once, reusing the finished ones whose settings are unchanged, and write sweep.csv and sweep.md (the
    mean and 95% interval over the seeds). Returns the exit code: 1 if a run failed."""
    from unilogit.benchmarks.commands import CommandParser, positive_int

    parser = CommandParser(prog="unilogit sweep", description=main.__doc__)
    parser.add_argument("sweep_file", help="the sweep YAML (see examples/sweeps/)")
    parser.add_argument("--jobs", type=positive_int, help="runs at once (default: the CUDA device count, or 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the quick: section, into <output>-quick")
    args = parser.parse_args(argv)
    return run_sweep(load_sweep(args.sweep_file, quick=args.quick), args.jobs)
