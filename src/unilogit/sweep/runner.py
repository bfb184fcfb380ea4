"""``unilogit sweep SWEEP.yaml [--jobs N] [--quick]``: every point of a sweep, resumable and in parallel.

The sweep folder holds::

    sweep.json                       the resolved sweep, rewritten at every start
    references/<name>/               the reference models' evaluations (muse: target, retrain; rwku: before)
    <method>/<point>/point.json      method, config, hyperparameters, overrides and the exact commands
    <method>/<point>/log.txt         the stdout and stderr of the point's commands
    <method>/<point>/metrics.json    written last, once the point has finished
    sweep.csv, sweep.md              one row per finished point, the references first

A point (or reference) that has finished is skipped by the next run; a folder that has not was interrupted
or failed, and is deleted and run again from scratch. Every point runs as subprocesses of ``unilogit``, the
commands its benchmark's descriptor gives (MUSE: ``train`` then ``eval muse``; RWKU: ``rwku run``), so a
crash never takes the sweep down.
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
from unilogit.errors import ConfigError
from unilogit.evaluation.results import format_cell, markdown_table
from unilogit.sweep.config import Point, Sweep, format_value, load_sweep

SWEEP_JSON, SWEEP_CSV, SWEEP_MD = "sweep.json", "sweep.csv", "sweep.md"
POINT_JSON, METRICS_JSON, LOG = "point.json", "metrics.json", "log.txt"
CLI = [sys.executable, "-m", "unilogit.cli"]


def point_folder(sweep: Sweep, point: Point) -> Path:
    """Where ``point`` runs: ``<output>/<method>/<point>/``."""
    return sweep.output / point.method / point.name


def reference_folder(sweep: Sweep, name: str) -> Path:
    """Where the reference model ``name`` is evaluated: ``<output>/references/<name>/``."""
    return sweep.output / "references" / name


def point_commands(sweep: Sweep, point: Point, models: dict[str, str]) -> list[list[str]]:
    """The commands that run ``point``, in order. ``models``: the sweep's models (muse's target and retrain,
    rwku's model)."""
    folder = point_folder(sweep, point)
    benchmark = sweep.descriptor
    run = SweepRun(point.method, folder, folder / benchmark.point_output, sweep.data, tuple(sweep.eval_args), models,
                   point.config, tuple(sweep.train_overrides(point, models)))  # fmt: skip
    return [[*CLI, *argv] for argv in benchmark.point_commands(run)]


def reference_commands(sweep: Sweep, name: str, models: dict[str, str]) -> list[list[str]]:
    """The command that evaluates the reference model ``name`` (muse: target or retrain; rwku: before)."""
    folder = reference_folder(sweep, name)
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
    """A point or a reference evaluation: commands run in their own folder, finished once ``done`` exists."""

    name: str
    folder: Path
    commands: list[list[str]]
    done: Path
    record: dict[str, Any]
    metrics: Callable[[], dict[str, Any]] | None = None  # a point's metrics.json, read from its results


def _point_task(sweep: Sweep, point: Point, models: dict[str, str]) -> Task:
    folder = point_folder(sweep, point)
    commands = point_commands(sweep, point, models)
    results = folder / sweep.descriptor.point_output / sweep.descriptor.results_json

    def metrics() -> dict[str, Any]:
        row = json.loads(results.read_text())[point.method]
        row.pop("per_target", None)
        return {"method": point.method, "point": point.id, "hyperparameters": point.params, **row}

    record = {
        "id": point.id, "method": point.method, "config": point.config, "hyperparameters": point.params,
        "overrides": sweep.train_overrides(point, models), "eval_args": sweep.eval_args, "data": sweep.data,
        "models": models, "commands": commands,
    }  # fmt: skip
    return Task(point.id, folder, commands, folder / METRICS_JSON, record, metrics)


def _reference_task(sweep: Sweep, name: str, models: dict[str, str]) -> Task:
    folder = reference_folder(sweep, name)
    commands = reference_commands(sweep, name, models)
    record = {"id": f"references/{name}", "reference": name, "models": models, "commands": commands}
    return Task(f"references/{name}", folder, commands, folder / sweep.descriptor.results_json, record)


def _check_unchanged(task: Task) -> None:
    """Refuse to reuse a finished task whose commands (but for the interpreter) differ from the sweep's now."""
    record = task.folder / POINT_JSON
    if not record.is_file():
        return
    before = [command[1:] for command in json.loads(record.read_text()).get("commands", [])]
    if before != [command[1:] for command in task.commands]:
        raise ConfigError(f"{task.name} finished with other settings than the sweep file gives now (see {record}); "
                          "set another output: or delete that folder")  # fmt: skip


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
    """Run every unfinished point of ``sweep`` (``jobs`` at once), write the table; 1 if a point failed, else 0."""
    from tqdm import tqdm

    devices = visible_devices()
    jobs = jobs or max(1, len(devices))
    # The shared overrides only: --quick's are left out, so that a smoke run reuses prepared models.
    models = sweep.descriptor.resolve_models(sweep.models, sweep.overrides)
    tasks = [_reference_task(sweep, name, models) for name in sweep.descriptor.references]
    tasks += [_point_task(sweep, point, models) for point in sweep.points]
    finished = [task for task in tasks if task.done.is_file()]
    for task in finished:
        _check_unchanged(task)
    atomic_write_text(sweep.output / SWEEP_JSON, json.dumps({**sweep.to_json(), "models": models}, indent=1) + "\n")
    todo = [task for task in tasks if not task.done.is_file()]
    for task in todo:
        shutil.rmtree(task.folder, ignore_errors=True)

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
    csv_path, md_path = write_table(sweep)
    print(md_path.read_text())
    print(f"[sweep] table: {csv_path} and {md_path}", file=sys.stderr)
    if failed:
        print(f"[sweep] {len(failed)} failed ({', '.join(t.name for t in failed)}); run the same command again to "
              "redo them", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


def _flat(row: dict[str, Any], method: str, point: str, benchmark: str) -> dict[str, Any]:
    flat = {"method": method, "point": point}
    flat.update({key: format_value(value) for key, value in (row.get("hyperparameters") or {}).items()})
    flat.update({key: row.get(key) for _, key, _ in BENCHMARKS[benchmark].columns})
    return flat


def table_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """The references' rows, then one per finished point: method, point id, hyperparameters, metrics."""
    rows = []
    for name in sweep.descriptor.references:
        results = reference_folder(sweep, name) / sweep.descriptor.results_json
        if results.is_file():
            rows.append(_flat(json.loads(results.read_text())[name], name, "", sweep.benchmark))
    for point in sweep.points:
        metrics = point_folder(sweep, point) / METRICS_JSON
        if metrics.is_file():
            rows.append(_flat(json.loads(metrics.read_text()), point.method, point.id, sweep.benchmark))
    return rows


def table_header(sweep: Sweep) -> list[str]:
    """method, point, the union of the grids' keys (in file order), then the metric keys."""
    hyper = list(dict.fromkeys(key for method in sweep.methods.values() for key in method.grid))
    return ["method", "point", *hyper, *(key for _, key, _ in sweep.descriptor.columns)]


def sweep_table(rows: list[dict[str, Any]], header: list[str], benchmark: str) -> str:
    """``rows`` as a Markdown table: metric columns under their titles and formats, the others as text."""
    formats = {key: (title, fmt) for title, key, fmt in BENCHMARKS[benchmark].columns}

    def cell(key: str, value: Any) -> str:
        if key in formats:
            return format_cell(value, formats[key][1])
        return "" if value is None else str(value)

    titles = [formats.get(key, (key,))[0] for key in header]
    return markdown_table(titles, ([cell(key, row.get(key)) for key in header] for row in rows))


def write_table(sweep: Sweep) -> tuple[Path, Path]:
    """Write ``sweep.csv`` and ``sweep.md`` (atomically) from every finished point; returns their paths."""
    rows, header = table_rows(sweep), table_header(sweep)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    csv_path, md_path = sweep.output / SWEEP_CSV, sweep.output / SWEEP_MD
    atomic_write_text(csv_path, buffer.getvalue())
    done = sum(1 for row in rows if row["point"])
    note = (
        f"Sweep `{sweep.path}` ({sweep.benchmark}, data {sweep.data}): {done} of {len(sweep.points)} points finished."
    )
    atomic_write_text(md_path, f"{note}\n\n" + sweep_table(rows, header, sweep.benchmark))
    return csv_path, md_path


def main(argv: list[str]) -> int:
    """``unilogit sweep SWEEP.yaml [--jobs N] [--quick]``: train and evaluate every point of a sweep, N at once,
    skipping the finished ones, and write sweep.csv and sweep.md. Returns the exit code: 1 if a point failed."""
    from unilogit.benchmarks.commands import CommandParser, positive_int

    parser = CommandParser(prog="unilogit sweep", description=main.__doc__)
    parser.add_argument("sweep_file", help="the sweep YAML (see examples/sweeps/)")
    parser.add_argument("--jobs", type=positive_int, help="points at once (default: the CUDA device count, or 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the quick: section, into <output>-quick")
    args = parser.parse_args(argv)
    return run_sweep(load_sweep(args.sweep_file, quick=args.quick), args.jobs)
