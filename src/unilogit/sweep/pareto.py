"""``unilogit report SWEEP_DIR``: Pareto fronts, the KL figure and a summary of a sweep.

It reads ``SWEEP_DIR/sweep.csv`` and ``sweep.json`` (written by ``unilogit sweep``) and writes into
``SWEEP_DIR/report/``:

- Pareto plots (PNG and SVG, matplotlib's Agg renderer), those of the benchmark's descriptor: retain metric on
  x, forget metric on y, each point at its mean over its seeds with error bars of its 95% confidence interval
  on both axes, one colour per method with its Pareto front (of the means) as a line, and the reference models
  as black markers. MUSE: ``pareto-knowmem`` (KnowMem_r, KnowMem_f) and ``pareto-verbmem`` (KnowMem_r,
  VerbMem_f); RWKU: ``pareto-forget-neighbor`` (Neighbor All, Forget All).
- For a descriptor with ``kl_figure`` (MUSE): ``kl-to-retrain-<sweep folder name>`` (e.g.
  ``kl-to-retrain-muse-mini``), two panels: the KL between each point's soft targets and the retrained model
  on the forget set per epoch, averaged over its seeds (``soft_target_kl`` in each run's ``trainer_log.jsonl``,
  logged by UnDIAL and Unilogit runs with ``soft_target_kl_model``; the paper's Fig. 5), and every point's KL
  to the retrained model with its interval beside the target's. A panel without data is left out (and said so
  on stderr).
- ``summary.md``: each method's Pareto front, the dominated points and the table.

No point is singled out as the winner on test items: a point chosen by the numbers it reports would look
better than it is, so the report lists the fronts instead. Only a sweep on validation data (``selection:
validation``, MUSE) gets each method's chosen point (:func:`choose_points`), whose hyperparameters are then
run on the test items.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_write_bytes, atomic_write_text
from unilogit.benchmarks.registry import BENCHMARKS, Benchmark, Plot
from unilogit.errors import ConfigError
from unilogit.evaluation.seeds import CI_SUFFIX, N_SEEDS, RUNS
from unilogit.sweep.runner import SWEEP_CSV, SWEEP_JSON, markdown_header, sweep_table

REPORT_DIR = "report"


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` is at least as good as ``b`` on both axes (higher x, lower y) and strictly better on one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; higher x (retain) and lower y (forget) win.

    Of identical points only the first (the lowest index) is on the front; its later copies are neither
    on the front nor in :func:`dominated`.
    """
    return [i for i, p in enumerate(points) if not any(_dominates(q, p) for q in points) and p not in points[:i]]


def dominated(points: list[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the points that another point dominates (see :func:`pareto_front`)."""
    return [i for i, p in enumerate(points) if any(_dominates(q, p) for q in points)]


def _cell(key: str, value: str, numbers: set[str]) -> Any:
    if key in numbers:
        return float(value) if value else None
    if key == N_SEEDS:
        return int(value) if value else None
    return value.split() if key == RUNS else value


def read_sweep(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``sweep.json`` and the rows of ``sweep.csv``: metrics and their intervals as floats (None where empty),
    ``n_seeds`` as a whole number and ``runs`` as a list of run folders."""
    for name in (SWEEP_JSON, SWEEP_CSV):
        if not (sweep_dir / name).is_file():
            raise ConfigError(f"{sweep_dir / name} is missing; run `unilogit sweep SWEEP.yaml` first")
    meta = json.loads((sweep_dir / SWEEP_JSON).read_text())
    numbers = {name for _, key, _ in BENCHMARKS[meta["benchmark"]].columns for name in (key, key + CI_SUFFIX)}
    with (sweep_dir / SWEEP_CSV).open(newline="") as handle:
        rows = [{k: _cell(k, v, numbers) for k, v in record.items()} for record in csv.DictReader(handle)]
    return meta, rows


def _points(rows: list[dict[str, Any]], plot: Plot) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    kept = [row for row in rows if row.get(plot.x) is not None and row.get(plot.y) is not None]
    return kept, [(row[plot.x], row[plot.y]) for row in kept]


def method_fronts(points: list[dict[str, Any]], plot: Plot) -> dict[str, list[dict[str, Any]]]:
    """Per method (in order of first appearance), its points on its own Pareto front of ``plot``'s means."""
    fronts = {}
    for method in dict.fromkeys(row["method"] for row in points):
        kept, xy = _points([row for row in points if row["method"] == method], plot)
        fronts[method] = [kept[i] for i in pareto_front(xy)]
    return fronts


def _intervals(rows: list[dict[str, Any]], key: str) -> list[float]:
    """The 95% interval of ``key`` of each row, 0 where there is none (one seed, or an older sweep)."""
    return [row.get(key + CI_SUFFIX) or 0.0 for row in rows]


def _save(fig: Any, stem: Path) -> list[Path]:
    paths = []
    for fmt in ("png", "svg"):
        path = stem.parent / f"{stem.name}.{fmt}"
        image = io.BytesIO()
        # No date in the SVG, so that the same sweep gives the same file.
        fig.savefig(image, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
        atomic_write_bytes(path, image.getvalue())
        paths.append(path)
    return paths


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "matplotlib is missing; install it: .venv/bin/pip install matplotlib (see requirements.txt)"
        ) from None
    return Figure(figsize=(7.0, 5.0), layout="constrained")


def _pareto_panel(ax: Any, plot: Plot, points: list[dict], refs: dict[str, dict], methods: list[str],
                  markers: dict[str, str]) -> None:  # fmt: skip
    for i, method in enumerate(methods):
        kept, xy = _points([row for row in points if row["method"] == method], plot)
        if not xy:
            continue
        colour = f"C{i % 10}"
        xs, ys = zip(*xy, strict=True)
        xerr, yerr = _intervals(kept, plot.x), _intervals(kept, plot.y)
        if any(xerr) or any(yerr):
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.45, capsize=2, linewidth=1)
        ax.scatter(xs, ys, color=colour, alpha=0.8, label=method)
        front = sorted(xy[j] for j in pareto_front(xy))
        ax.plot(*zip(*front, strict=True), color=colour, linewidth=1.5)
    for name, row in refs.items():
        if row.get(plot.x) is not None and row.get(plot.y) is not None:
            ax.scatter([row[plot.x]], [row[plot.y]], marker=markers[name], color="black", s=110, zorder=3, label=name)
            ax.annotate(name, (row[plot.x], row[plot.y]), xytext=(7, 7), textcoords="offset points")
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.set_title("Mean ± 95% CI over seeds, and each method's Pareto front")
    ax.margins(0.08)  # room for the reference labels at the edges
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _pareto_plots(benchmark: Benchmark, points: list[dict], refs: dict[str, dict], methods: list[str], out: Path,
                  name: str) -> list[Path]:  # fmt: skip
    """One figure per Pareto plot, and ``pareto-<name>`` with all of the benchmark's plots side by side."""
    paths, plots, markers = [], benchmark.plots, dict(benchmark.references)
    for plot in plots:
        fig = _figure()
        _pareto_panel(fig.add_subplot(), plot, points, refs, methods, markers)
        paths += _save(fig, out / plot.name)
    fig = _figure()
    fig.set_size_inches(7.0 * len(plots), 5.0)
    for ax, plot in zip(fig.subplots(1, len(plots), squeeze=False)[0], plots, strict=True):
        _pareto_panel(ax, plot, points, refs, methods, markers)
    return paths + _save(fig, out / f"pareto-{name}")


TRAINER_LOG = "trainer_log.jsonl"
SOFT_TARGET_KL = "soft_target_kl"


def _log_pairs(log: Path) -> list[tuple[float, float]]:
    """The ``(epoch, soft_target_kl)`` pairs of one run's trainer log, in log order."""
    pairs = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a killed run
            continue
        value = entry.get(SOFT_TARGET_KL) if isinstance(entry, dict) else None
        if isinstance(value, int | float) and math.isfinite(value):
            pairs.append((float(entry.get("epoch") or 0.0), float(value)))
    return pairs


def soft_target_curves(sweep_dir: Path, points: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per point id, its ``(epoch, soft_target_kl)`` pairs by epoch, each the mean over the point's runs that
    logged that epoch (``<run>/model/trainer_log.jsonl``; a sweep from before seeds: ``<point>/model/``); points
    without a log or without the key are left out."""
    curves = {}
    for row in points:
        by_epoch: dict[float, list[float]] = {}
        for folder in row.get(RUNS) or [row["point"]]:
            log = sweep_dir / folder / "model" / TRAINER_LOG
            for epoch, value in _log_pairs(log) if log.is_file() else []:
                by_epoch.setdefault(epoch, []).append(value)
        if by_epoch:
            curves[row["point"]] = [(epoch, statistics.fmean(values)) for epoch, values in sorted(by_epoch.items())]
    return curves


def _soft_target_panel(ax: Any, curves: dict, points: list[dict], front: set[str], methods: list[str]) -> None:
    """One line per point, coloured by method; the points on their method's Pareto front (``front``) bold."""
    labelled: set[str] = set()
    for row in points:
        if row["point"] not in curves:
            continue
        method = row["method"]
        epochs, values = zip(*curves[row["point"]], strict=True)
        on_front = row["point"] in front
        label = None if method in labelled else method
        labelled.add(method)
        ax.plot(epochs, values, color=f"C{methods.index(method) % 10}", marker="o" if on_front else None,
                linewidth=2.2 if on_front else 1.0, alpha=1.0 if on_front else 0.45, label=label)  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0: before unlearning)")
    ax.set_ylabel("KL(p_retrain ‖ soft target) on the forget set (lower is better)")
    ax.set_title(
        "Soft targets vs the retrained model, per epoch\n(mean over seeds; bold: on the method's Pareto front)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _kl_points_panel(ax: Any, rows: dict[str, list[dict]], refs: dict[str, dict], methods: list[str]) -> None:
    """Every point's KL to the retrained model (mean ± 95% CI), one column per method; the target dashed."""
    names = list(rows)
    for column, method in enumerate(names):
        kept = rows[method]
        offsets = [column + 0.12 * (k - (len(kept) - 1) / 2) for k in range(len(kept))]
        ax.errorbar(offsets, [row["kl_to_retrain"] for row in kept], yerr=_intervals(kept, "kl_to_retrain"), fmt="o",
                    color=f"C{methods.index(method) % 10}", capsize=3)  # fmt: skip
    target = (refs.get("target") or {}).get("kl_to_retrain")
    if target is not None:
        ax.axhline(target, color="0.35", linestyle="--", label="target (the starting model)")
        ax.legend(fontsize="small")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, max(len(names) - 0.4, 0.6))
    ax.set_ylabel("KL to the retrained model (lower is better)")
    ax.set_title("KL to retrain of every point (mean ± 95% CI over seeds)")
    ax.grid(axis="y", alpha=0.3)


def _kl_plot(benchmark: Benchmark, sweep_dir: Path, points: list[dict], refs: dict[str, dict], methods: list[str],
             out: Path) -> list[Path]:  # fmt: skip
    curves = soft_target_curves(sweep_dir, points)
    if not curves:
        print(f"[report] no point of {sweep_dir} logged {SOFT_TARGET_KL} (UnDIAL or Unilogit with "
              "soft_target_kl_model); the soft-target KL panel is left out", file=sys.stderr)  # fmt: skip
    by_method = {m: [r for r in points if r["method"] == m and r.get("kl_to_retrain") is not None] for m in methods}
    by_method = {method: kept for method, kept in by_method.items() if kept}
    has_target = (refs.get("target") or {}).get("kl_to_retrain") is not None
    if not curves and not by_method and not has_target:
        return []
    fig = _figure()
    panels = int(bool(curves)) + int(bool(by_method) or has_target)
    if panels == 2:
        fig.set_size_inches(13.0, 5.0)
    axes = iter(fig.subplots(1, panels, squeeze=False)[0])
    if curves:
        front = {row["point"] for rows in method_fronts(points, benchmark.plots[0]).values() for row in rows}
        _soft_target_panel(next(axes), curves, points, front, methods)
    if by_method or has_target:
        _kl_points_panel(next(axes), by_method, refs, methods)
    return _save(fig, out / f"kl-to-retrain-{sweep_dir.resolve().name}")


RETAIN_FLOOR = 0.9
SELECTION_RULE = (
    f"Among a method's points that keep KnowMem_r at {RETAIN_FLOOR:.0%} or more of the target's, the one that "
    "closes the largest share of the target–retrain gaps of VerbMem_f and KnowMem_f (the mean of the two shares); "
    "when none keeps that much, the one with the highest KnowMem_r."
)


def choose_points(points: list[dict[str, Any]], target: dict[str, Any], retrain: dict[str, Any]) -> dict[str, Any]:
    """Per method (in order of first appearance), its point chosen by :data:`SELECTION_RULE` on MUSE rows."""
    from unilogit.evaluation.muse import FORGET_GAPS, gap_closed

    def closed(row: dict[str, Any]) -> float:
        return sum(gap_closed(row, target, retrain, key) for _, key in FORGET_GAPS)

    chosen = {}
    for method in dict.fromkeys(row["method"] for row in points):
        rows = [row for row in points if row["method"] == method]
        kept = [row for row in rows if row["knowmem_r"] >= RETAIN_FLOOR * target["knowmem_r"]]
        chosen[method] = max(kept, key=closed) if kept else max(rows, key=lambda row: row["knowmem_r"])
    return chosen


def _selection(points: list[dict], refs: dict[str, dict], metrics: list[str], benchmark: str) -> list[str]:
    chosen = list(choose_points(points, refs["target"], refs["retrain"]).values())
    return ["## Chosen point per method (validation data)", "", f"{SELECTION_RULE} These hyperparameters are then "
            "run on the test items; the numbers below are the validation data's, not results.", "",
            sweep_table(chosen, ["method", "point", *metrics, "seeds"], benchmark), ""]  # fmt: skip


def _summary(sweep_dir: Path, meta: dict, rows: list[dict], points: list[dict]) -> str:
    benchmark = BENCHMARKS[meta["benchmark"]]
    metrics = [key for _, key, _ in benchmark.columns]
    seeds = ", ".join(str(seed) for seed in meta.get("seeds") or [])
    lines = [f"# Sweep report: {sweep_dir}", "", f"Sweep file `{meta.get('sweep_file')}`, {benchmark.name}, data "
             f"`{meta.get('data')}`, seeds {seeds or 'n/a'}, {len(points)} points with a finished run. Each cell: "
             "the mean over the point's finished seeds ± the half-width of its 95% confidence interval (Student's "
             "t); the reference models are evaluated once.", ""]  # fmt: skip
    if meta.get("selection") == "validation":
        refs = {row["method"]: row for row in rows if not row["point"]}
        lines += _selection(points, refs, metrics, benchmark.name)
    else:
        lines += [
            "No point is singled out: the points are scored on the benchmark's test items and the sweep "
            "keeps no validation split apart from them, so a point chosen by these numbers would look better "
            "than it is. Each method's Pareto front is listed instead, and the fronts are of the means.",
            "",
        ]
    lines += ["## Pareto front per method", ""]
    for plot in benchmark.plots:
        front = [row for rows in method_fronts(points, plot).values() for row in rows]
        where = f"On {plot.x} (retain, higher is better) and {plot.y} (forget, lower is better), as in `{plot.name}`"
        lines += [f"{where}: the points no other point of the same method dominates (see below).", ""]
        lines += [sweep_table(front, ["method", "point", *metrics, "seeds"], benchmark.name)]
    lines += ["## Dominated points", ""]
    lines += ["A point is dominated when another point of the sweep (any method) is at least as good on both axes of "
              "a plot (higher retain, lower forget) and better on one, comparing means.", ""]  # fmt: skip
    for plot in benchmark.plots:
        kept, xy = _points(points, plot)
        lines.append(f"On {plot.x} (retain) and {plot.y} (forget), as in `{plot.name}`:")
        lines += [f"- {kept[i]['point']}" for i in dominated(xy)] or ["- none"]
        lines.append("")
    header = markdown_header(list(rows[0])) if rows else ["method", "point", *metrics]
    lines += ["## All points", "", sweep_table(rows, header, benchmark.name)]
    return "\n".join(lines)


def write_report(sweep_dir: str | Path) -> list[Path]:
    """Write the plots and ``summary.md`` of the sweep in ``sweep_dir`` into ``sweep_dir/report/``; their paths."""
    sweep_dir = Path(sweep_dir)
    meta, rows = read_sweep(sweep_dir)
    benchmark = BENCHMARKS[meta["benchmark"]]
    refs = {row["method"]: row for row in rows if not row["point"] and row["method"] in benchmark.references}
    points = [row for row in rows if row["point"]]
    methods = list(dict.fromkeys([*meta.get("methods", {}), *(row["method"] for row in points)]))
    out = sweep_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = _pareto_plots(benchmark, points, refs, methods, out, sweep_dir.resolve().name)
    if benchmark.kl_figure:
        paths += _kl_plot(benchmark, sweep_dir, points, refs, methods, out)
    atomic_write_text(out / "summary.md", _summary(sweep_dir, meta, rows, points))
    paths.append(out / "summary.md")
    return paths


def publish(sweep_dir: Path, paths: list[Path], folder: Path, overwrite: bool = False) -> list[Path]:
    """Copy the sweep's table and its combined figures into ``folder`` under the sweep's name, atomically:
    ``sweep-<name>.csv``, ``sweep-<name>.md`` (the summary), ``pareto-<name>.*`` and ``kl-to-retrain-<name>.*``.
    Published files are results: one already in ``folder`` is replaced only with ``overwrite``."""
    name = sweep_dir.resolve().name
    sources = {f"sweep-{name}.csv": sweep_dir / SWEEP_CSV, f"sweep-{name}.md": sweep_dir / REPORT_DIR / "summary.md"}
    sources.update({p.name: p for p in paths if p.stem in (f"pareto-{name}", f"kl-to-retrain-{name}")})
    existing = [target for target in sources if (folder / target).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{folder / existing[0]} exists (and {len(existing) - 1} more of this sweep's files); "
                          "pass --overwrite to replace them or choose another --publish folder")  # fmt: skip
    for target, source in sources.items():
        atomic_write_bytes(folder / target, source.read_bytes())
    return [folder / target for target in sources]


def main(argv: list[str]) -> list[Path]:
    """``unilogit report SWEEP_DIR [--publish DIR]``: write the report and print the paths of its files."""
    from unilogit.benchmarks.commands import CommandParser

    parser = CommandParser(prog="unilogit report", description=main.__doc__)
    parser.add_argument("sweep_dir", help="the folder `unilogit sweep` wrote")
    parser.add_argument("--publish", metavar="DIR", help="also copy the table, summary and combined figures "
                        "into DIR as sweep-<name>.csv/.md, pareto-<name>.* and kl-to-retrain-<name>.*")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="let --publish replace this sweep's files in DIR")
    args = parser.parse_args(argv)
    paths = write_report(args.sweep_dir)
    if args.publish:
        paths += publish(Path(args.sweep_dir), paths, Path(args.publish), args.overwrite)
    for path in paths:
        print(path)
    return paths
