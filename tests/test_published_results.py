"""The published result files keep their promised form: every method row is a mean over at least 3 seeds with
a 95% interval per metric, and the MUSE mini target still knows what the retrained model does not."""

from __future__ import annotations

import json
import math

import pytest

from conftest import ROOT
from unilogit.evaluation import muse, rwku

RESULTS = ROOT / "docs" / "results"
REFERENCES = {"target", "retrain", "before"}


@pytest.mark.parametrize(("name", "evaluator"), [("muse-mini.json", muse), ("rwku-mini.json", rwku)])
def test_every_method_row_has_seeds_and_intervals(name: str, evaluator) -> None:
    table = json.loads((RESULTS / name).read_text())
    methods = {row: values for row, values in table.items() if row not in REFERENCES}
    assert methods
    for row, values in methods.items():
        assert values["n_seeds"] >= 3 and len(values["runs"]) == values["n_seeds"], row
        for _, key, _ in evaluator.TABLE_COLUMNS:
            assert isinstance(values[key], float) and math.isfinite(values[f"{key}_ci95"]), (row, key)


def test_the_muse_mini_target_retrain_gaps_stay_at_least_20_points() -> None:
    table = json.loads((RESULTS / "muse-mini.json").read_text())
    for key in ("verbmem_f", "knowmem_f"):
        assert table["target"][key] - table["retrain"][key] >= 20, key
