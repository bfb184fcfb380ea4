"""Runs with different training seeds as one row: the mean of every metric and its 95% confidence interval.

A published table gives, per method, the mean of each metric over its runs (one per training seed) as
``<metric>``, the half-width of the interval as ``<metric>_ci95`` (Student's t: ``t(0.975, n-1) * sd /
sqrt(n)``, ``sd`` with ddof=1), the number of runs as ``n_seeds``, their seeds as ``seeds`` and the runs
themselves, unchanged, under ``runs``. A row of one run (a reference model, evaluated once) has a null
interval. ``unilogit muse|rwku table`` and the sweeps build their rows with :func:`aggregate_seeds`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from unilogit.config import CONFIG_NAME, PREPARED_MARKER

CI_SUFFIX = "_ci95"
N_SEEDS, SEEDS, RUNS = "n_seeds", "seeds", "runs"
# Numbers in a results record that say how the run was made, not what it measured: never averaged.
SETTINGS = frozenset({"seed", "max_examples"})
SEEDS_LEGEND = (
    "Each cell: the mean over the runs (one per training seed, in the seeds column) ± the half-width of its 95% "
    "confidence interval (Student's t). A row without a seed is a reference model, evaluated once, and a row "
    "of one run has no interval."
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ci95(values: Sequence[float]) -> float | None:
    """The half-width of the 95% confidence interval of the mean of ``values`` (Student's t, sample standard
    deviation); None for fewer than two values, where there is no spread to estimate."""
    if len(values) < 2:
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def record_seed(record: Mapping[str, Any]) -> int | None:
    """The training seed of one run's results: its ``seed``, else the last ``seed=N`` of the ``overrides`` it
    records (``unilogit rwku run`` records its key=value overrides, where the drivers and sweeps pass the seed);
    None for a model that was not trained here (a reference)."""
    if record.get("seed") is not None:
        return int(record["seed"])
    for item in reversed(record.get("overrides") or []):
        key, _, value = str(item).partition("=")
        if key.strip() == "seed" and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def run_seed(folder: str | Path) -> int | None:
    """The seed a model folder was trained with: from the resolved config the unlearning stage saved in it
    (``unlearn_config.yaml``), or from the marker of a prepared target or retrain model
    (``unilogit_prepared.json``); None for a folder with neither (a model not trained here, or a hub id)."""
    config, marker = Path(folder) / CONFIG_NAME, Path(folder) / PREPARED_MARKER
    if config.is_file():
        seed = (yaml.safe_load(config.read_text()) or {}).get("seed")
    elif marker.is_file():
        seed = json.loads(marker.read_text()).get("seed")  # markers written before it recorded the seed have none
    else:
        seed = None
    return None if seed is None else int(seed)


def seed_runs(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-seed records of a results row: its ``runs`` when it was aggregated already, else the row itself."""
    return [dict(run) for run in row[RUNS]] if RUNS in row else [dict(row)]


def _metric(key: str, values: list[Any]) -> bool:
    """A metric is a number in some run, and a number or missing (None) in every run, and not a setting."""
    numbers = [_is_number(v) for v in values]
    return key not in SETTINGS and any(numbers) and all(n or v is None for n, v in zip(numbers, values, strict=True))


def aggregate_seeds(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row from the results of the same model or method over several training seeds (see the module).

    Each numeric metric becomes its mean and ``<metric>_ci95``; a metric that some run lacks (None or NaN) is
    null, for its mean would not be over the same runs. Other fields (the name, the data, item counts such as
    ``n``) are kept when every run agrees and left to ``runs`` when they differ (the model's folder).
    """
    if not records:
        raise ValueError("aggregate_seeds needs at least one record")
    keys = dict.fromkeys(key for record in records for key in record if key not in ("seed", N_SEEDS, SEEDS, RUNS))
    row: dict[str, Any] = {}
    for key in keys:
        values = [record.get(key) for record in records]
        if _metric(key, values):
            finite = [float(v) for v in values if v is not None and math.isfinite(v)]
            whole = len(finite) == len(values)
            row[key] = statistics.fmean(finite) if whole else None
            row[key + CI_SUFFIX] = ci95(finite) if whole else None
        elif all(value == values[0] for value in values):
            row[key] = values[0]
    row[N_SEEDS] = len(records)
    row[SEEDS] = [record_seed(record) for record in records]
    row[RUNS] = [dict(record) for record in records]
    return row
