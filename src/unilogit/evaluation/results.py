"""Results files and Markdown tables: the one table writer and the one results writer of the package.

A results file maps a row name (a model, a method) to its metrics; it is written as JSON and as a
Markdown table beside it, each atomically (:mod:`unilogit.atomic`). A row aggregated over training seeds
(:mod:`unilogit.evaluation.seeds`) shows each metric as ``mean ± ci95`` and its seeds in a last column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_write_text
from unilogit.evaluation.seeds import CI_SUFFIX, N_SEEDS, SEEDS, SEEDS_LEGEND

Columns = Sequence[tuple[str, str, str]]  # (title, metric key, format)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Collection[int] = ()) -> str:
    """A Markdown table of ``header`` and the cells of ``rows``; the columns at indices ``right`` align right."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "".join("---:|" if i in right else "---|" for i in range(len(header))),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_cell(value: Any, fmt: str) -> str:
    """A metric value in ``fmt`` (e.g. ``"{:.1f}"``), ``n/a`` for None or NaN (a metric that was not computed)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def format_mean_cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    """``row[key]`` in ``fmt``, followed by ``± <key>_ci95`` when the row has that interval (not null)."""
    interval = row.get(key + CI_SUFFIX)
    cell = format_cell(row.get(key), fmt)
    return cell if interval is None else f"{cell} ± {format_cell(interval, fmt)}"


def format_seeds(seeds: Any) -> str:
    """The seeds column of an aggregated row: its seeds, ``–`` for a run without one (a reference model)."""
    return ", ".join("–" if seed is None else str(seed) for seed in seeds or [])


def format_metrics_table(results: Mapping[str, Mapping[str, Any]], columns: Columns) -> str:
    """One row per name in ``results`` (column ``model``), one column per ``(title, key, format)``.

    When the rows were aggregated over seeds, each cell is ``mean ± ci95``, a ``seeds`` column ends each row
    and the legend (what the interval is, and that a reference row has none) follows the table.
    """
    seeded = any(N_SEEDS in row for row in results.values())
    rows = []
    for name, row in results.items():
        cells = [name, *(format_mean_cell(row, key, fmt) for _, key, fmt in columns)]
        rows.append([*cells, format_seeds(row.get(SEEDS))] if seeded else cells)
    header = ["model", *(title for title, _, _ in columns)]
    table = markdown_table([*header, "seeds"] if seeded else header, rows)
    return f"{table}\n{SEEDS_LEGEND}\n" if seeded else table


def write_metrics(
    results: Mapping[str, Any],
    json_path: str | Path,
    md_path: str | Path,
    columns: Columns,
    note: str = "",
    after: str = "",
) -> None:
    """Write ``results`` (name -> metrics) as JSON and as :func:`format_metrics_table`, each atomically.

    ``note`` (e.g. the command that produced the results) goes above the Markdown table, ``after`` below it.
    """
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    table = format_metrics_table(results, columns)
    table = f"{table.rstrip()}\n\n{after}" if after else table
    atomic_write_text(md_path, (f"{note}\n\n" if note else "") + table)
