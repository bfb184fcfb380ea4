"""``unilogit report SWEEP_DIR``: Pareto fronts, the KL figure and a summary of a sweep.

It reads ``SWEEP_DIR/sweep.csv`` and ``sweep.json`` (written by ``unilogit sweep``) and writes into
``SWEEP_DIR/report/``:

- Pareto plots (PNG and SVG, matplotlib's Agg renderer), those of the benchmark's descriptor: retain metric on
  x, forget metric on y, one colour per method with its Pareto front as a line, and the reference models as
  black markers. MUSE: ``pareto-knowmem`` (KnowMem_r, KnowMem_f) and ``pareto-verbmem`` (KnowMem_r,
  VerbMem_f); RWKU: ``pareto-forget-neighbor`` (Neighbor All, Forget All).
- For a descriptor with ``kl_figure`` (MUSE): ``kl-to-retrain-<sweep folder name>`` (e.g.
  ``kl-to-retrain-muse-mini``), two panels: the KL between each point's soft targets and the retrained model
  on the forget set per epoch (``soft_target_kl`` in its ``trainer_log.jsonl``, logged by UnDIAL and Unilogit
  runs with ``soft_target_kl_model``; the paper's Fig. 5), and each method's lowest KL to the retrained model
  beside the target's. A panel without data is left out (and said so on stderr).
- ``summary.md``: the best point per method under the descriptor's stated rule, the dominated points and the
  table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_write_bytes, atomic_write_text
from unilogit.benchmarks.registry import BENCHMARKS, Benchmark, Plot
from unilogit.errors import ConfigError
from unilogit.sweep.runner import SWEEP_CSV, SWEEP_JSON, sweep_table

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


def read_sweep(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``sweep.json`` and the rows of ``sweep.csv``, metric columns as floats (None where empty)."""
    for name in (SWEEP_JSON, SWEEP_CSV):
        if not (sweep_dir / name).is_file():
            raise ConfigError(f"{sweep_dir / name} is missing; run `unilogit sweep SWEEP.yaml` first")
    meta = json.loads((sweep_dir / SWEEP_JSON).read_text())
    metrics = {key for _, key, _ in BENCHMARKS[meta["benchmark"]].columns}
    rows = []
    with (sweep_dir / SWEEP_CSV).open(newline="") as handle:
        for record in csv.DictReader(handle):
            rows.append({k: (float(v) if v else None) if k in metrics else v for k, v in record.items()})
    return meta, rows


def _points(rows: list[dict[str, Any]], plot: Plot) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    kept = [row for row in rows if row.get(plot.x) is not None and row.get(plot.y) is not None]
    return kept, [(row[plot.x], row[plot.y]) for row in kept]


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
        _, xy = _points([row for row in points if row["method"] == method], plot)
        if not xy:
            continue
        colour = f"C{i % 10}"
        ax.scatter(*zip(*xy, strict=True), color=colour, alpha=0.8, label=method)
        front = sorted(xy[j] for j in pareto_front(xy))
        ax.plot(*zip(*front, strict=True), color=colour, linewidth=1.5)
    for name, row in refs.items():
        if row.get(plot.x) is not None and row.get(plot.y) is not None:
            ax.scatter([row[plot.x]], [row[plot.y]], marker=markers[name], color="black", s=110, zorder=3, label=name)
            ax.annotate(name, (row[plot.x], row[plot.y]), xytext=(7, 7), textcoords="offset points")
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.set_title("Points and Pareto front per method (best: bottom right)")
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


def soft_target_curves(sweep_dir: Path, points: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per point id, its ``(epoch, soft_target_kl)`` pairs in log order, from
    ``<point>/model/trainer_log.jsonl``; points without a log or without the key are left out."""
    curves = {}
    for row in points:
        log = sweep_dir / row["point"] / "model" / TRAINER_LOG
        if not log.is_file():
            continue
        pairs = []
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a killed run
                continue
            value = entry.get(SOFT_TARGET_KL) if isinstance(entry, dict) else None
            if isinstance(value, int | float) and math.isfinite(value):
                pairs.append((float(entry.get("epoch") or 0.0), float(value)))
        if pairs:
            curves[row["point"]] = pairs
    return curves


def _soft_target_panel(ax: Any, curves: dict, points: list[dict], best: dict, methods: list[str]) -> None:
    """One line per point, coloured by method; each method's best point (``best_points``) bold and labelled."""
    best_ids = {row["point"] for row in best.values() if row and row["point"] in curves}
    labelled = {row["method"] for row in points if row["point"] in best_ids}
    for row in points:
        if row["point"] not in curves:
            continue
        method = row["method"]
        epochs, values = zip(*curves[row["point"]], strict=True)
        chosen = row["point"] in best_ids
        label = f"{method} (best: {row['point'].split('/', 1)[-1]})" if chosen else None
        if label is None and method not in labelled:
            label = f"{method} (no best point)"
            labelled.add(method)
        ax.plot(epochs, values, color=f"C{methods.index(method) % 10}", marker="o" if chosen else None,
                linewidth=2.2 if chosen else 1.0, alpha=1.0 if chosen else 0.45, label=label)  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0: before unlearning)")
    ax.set_ylabel("KL(p_retrain ‖ soft target) on the forget set (lower is better)")
    ax.set_title("Soft targets vs the retrained model, per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _kl_plot(benchmark: Benchmark, sweep_dir: Path, points: list[dict], refs: dict[str, dict], methods: list[str],
             out: Path) -> list[Path]:  # fmt: skip
    curves = soft_target_curves(sweep_dir, points)
    if not curves:
        print(f"[report] no point of {sweep_dir} logged {SOFT_TARGET_KL} (UnDIAL or Unilogit with "
              "soft_target_kl_model); the soft-target KL panel is left out", file=sys.stderr)  # fmt: skip
    bars: list[tuple[str, float, str]] = []
    if (refs.get("target") or {}).get("kl_to_retrain") is not None:
        bars.append(("target", refs["target"]["kl_to_retrain"], "0.35"))
    for i, method in enumerate(methods):
        values = [r["kl_to_retrain"] for r in points if r["method"] == method and r.get("kl_to_retrain") is not None]
        if values:
            bars.append((method, min(values), f"C{i % 10}"))
    if not bars and not curves:
        return []
    fig = _figure()
    if curves and bars:
        fig.set_size_inches(13.0, 5.0)
    axes = iter(fig.subplots(1, int(bool(curves)) + int(bool(bars)), squeeze=False)[0])
    if curves:
        _soft_target_panel(next(axes), curves, points, benchmark.select(points, refs)[1], methods)
    if bars:
        ax = next(axes)
        names, values, colours = zip(*bars, strict=True)
        ax.bar_label(ax.bar(names, values, color=colours), fmt="%.4f")
        ax.tick_params(axis="x", labelrotation=0)
        ax.set_ylabel("KL to the retrained model (lower is better)")
        ax.set_title("Lowest KL to retrain per method; target = the starting model")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / f"kl-to-retrain-{sweep_dir.resolve().name}")


def best_points(benchmark: str, points: list[dict], refs: dict[str, dict]) -> tuple[str, dict[str, dict | None]]:
    """The benchmark's selection rule (its descriptor's ``select``), in words with its thresholds, and each
    method's best point under it (None: none meets it)."""
    return BENCHMARKS[benchmark].select(points, refs)


def _summary(sweep_dir: Path, meta: dict, rows: list[dict], points: list[dict], refs: dict[str, dict]) -> str:
    benchmark = meta["benchmark"]
    metrics = [key for _, key, _ in BENCHMARKS[benchmark].columns]
    rule, best = best_points(benchmark, points, refs)
    lines = [f"# Sweep report: {sweep_dir}", "", f"Sweep file `{meta.get('sweep_file')}`, {benchmark}, data "
             f"`{meta.get('data')}`, {len(points)} finished points.", "", f"**Rule:** per method, the {rule}.", "",
             "## Best point per method", ""]  # fmt: skip
    chosen = [best[m] or {"method": m, "point": "none meets the rule"} for m in best]
    lines += [sweep_table(chosen, ["method", "point", *metrics], benchmark), "## Dominated points", ""]
    lines += ["A point is dominated when another point of the sweep (any method) is at least as good on both axes of "
              "a plot (higher retain, lower forget) and better on one.", ""]  # fmt: skip
    for plot in BENCHMARKS[benchmark].plots:
        kept, xy = _points(points, plot)
        lines.append(f"On {plot.x} (retain) and {plot.y} (forget), as in `{plot.name}`:")
        lines += [f"- {kept[i]['point']}" for i in dominated(xy)] or ["- none"]
        lines.append("")
    header = list(rows[0]) if rows else ["method", "point", *metrics]
    lines += ["## All points", "", sweep_table(rows, header, benchmark)]
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
    atomic_write_text(out / "summary.md", _summary(sweep_dir, meta, rows, points, refs))
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
