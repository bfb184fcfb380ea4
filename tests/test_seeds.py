"""Runs over several training seeds as one row: the mean and 95% interval of each metric (against scipy and a
hand computation), a single run's null interval, the tables' ``mean ± ci95`` cells, ``unilogit muse table``
grouping the runs of a method by name, with the seed read from each unlearned folder, and the drivers' SEEDS."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from scipy import stats

from conftest import ROOT
from unilogit import cli
from unilogit.benchmarks.muse import table as muse_table
from unilogit.config import CONFIG_NAME, PREPARED_MARKER
from unilogit.errors import ConfigError
from unilogit.evaluation.muse import TABLE_COLUMNS
from unilogit.evaluation.results import format_metrics_table
from unilogit.evaluation.seeds import aggregate_seeds, ci95, record_seed, run_seed

FIXTURES = Path(__file__).parent / "fixtures" / "muse"
COUNTS = {"verbmem": 4, "knowmem_forget": 20}


def _run(seed: int | None, knowmem_f: float, verbmem_f: float | None = 50.0, **extra) -> dict:
    return {"name": "npo_rt", "model": f"saves/npo-{seed}", "seed": seed, "data": "data/muse_mini",
            "max_examples": 4, "knowmem_f": knowmem_f, "verbmem_f": verbmem_f, "n": COUNTS, **extra}  # fmt: skip


def test_the_interval_is_students_t_over_the_sample_deviation() -> None:
    values = [1.0, 2.0, 4.0]
    # By hand: mean 7/3, sample variance ((4/3)² + (1/3)² + (5/3)²) / 2 = 7/3, t(0.975, 2) = 4.302652...
    assert ci95(values) == pytest.approx(4.302652729749464 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-12)
    sample = [12.5, 10.0, 17.5, 15.0]
    expected = stats.t.ppf(0.975, 3) * stats.tstd(sample) / math.sqrt(4)  # tstd: ddof=1
    assert ci95(sample) == pytest.approx(expected, rel=1e-12)
    assert ci95(sample) == pytest.approx(stats.sem(sample) * stats.t.ppf(0.975, 3), rel=1e-12)
    assert ci95([5.0, 5.0]) == 0.0
    assert ci95([3.0]) is None and ci95([]) is None


def test_aggregate_seeds_means_and_intervals() -> None:
    runs = [_run(42, 12.5), _run(43, 10.0), _run(44, 17.5, verbmem_f=None)]
    row = aggregate_seeds(runs)
    assert row["knowmem_f"] == pytest.approx(40.0 / 3)
    assert row["knowmem_f_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * stats.tstd([12.5, 10.0, 17.5]) / math.sqrt(3))
    # A run without the metric: no mean over fewer runs than the others have.
    assert row["verbmem_f"] is None and row["verbmem_f_ci95"] is None
    assert (row["n_seeds"], row["seeds"]) == (3, [42, 43, 44])
    assert row["runs"] == runs and row["runs"][0] is not runs[0]  # the records unchanged, copied
    # Agreed fields are kept (item counts too), differing ones are left to the runs, settings are not averaged.
    assert (row["name"], row["data"], row["n"], row["max_examples"]) == ("npo_rt", "data/muse_mini", COUNTS, 4)
    assert "model" not in row and "seed" not in row and "max_examples_ci95" not in row
    assert list(row)[:4] == ["name", "data", "max_examples", "knowmem_f"] and list(row)[4] == "knowmem_f_ci95"

    other_counts = aggregate_seeds([_run(42, 1.0), {**_run(43, 2.0), "n": {"verbmem": 3}}])
    assert "n" not in other_counts and other_counts["knowmem_f_ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * 0.5)
    flags = aggregate_seeds([_run(42, 1.0, batch=True), _run(43, 1.0, batch=True)])
    assert flags["batch"] is True and "batch_ci95" not in flags  # a bool is a setting, not a number to average
    nan = aggregate_seeds([_run(42, 1.0), _run(43, float("nan"))])
    assert nan["knowmem_f"] is None
    with pytest.raises(ValueError):
        aggregate_seeds([])


def test_one_run_has_a_null_interval_and_the_table_says_so() -> None:
    target = {"name": "target", "model": "prepared/target", "verbmem_f": 73.87, "knowmem_f": 29.0, "n": COUNTS}
    row = aggregate_seeds([target])
    assert row["verbmem_f"] == 73.87 and row["verbmem_f_ci95"] is None
    assert (row["n_seeds"], row["seeds"], row["model"], row["n"]) == (1, [None], "prepared/target", COUNTS)
    method = aggregate_seeds([_run(42, 12.5), _run(43, 10.0), _run(44, 17.5)])
    table = format_metrics_table({"target": row, "npo_rt": method}, TABLE_COLUMNS)
    lines = table.splitlines()
    assert lines[0] == "| model | VerbMem_f | KnowMem_f | KnowMem_r | PrivLeak | KL to retrain | seeds |"
    assert lines[2] == "| target | 73.9 | 29.0 | n/a | n/a | n/a | – |"  # a reference: evaluated once, no interval
    half = stats.t.ppf(0.975, 2) * stats.tstd([12.5, 10.0, 17.5]) / math.sqrt(3)
    assert lines[3] == f"| npo_rt | 50.0 ± 0.0 | 13.3 ± {half:.1f} | n/a | n/a | n/a | 42, 43, 44 |"
    assert "95% confidence interval" in table and "evaluated once" in table
    # A table of single evaluations, not aggregated, keeps its plain cells and no seeds column.
    assert format_metrics_table({"target": target}, TABLE_COLUMNS).splitlines()[2].endswith("| n/a |")


def test_the_seed_of_a_run() -> None:
    assert record_seed({"seed": 43}) == 43
    # `rwku run` records its key=value overrides; the last seed=N wins, as in the config it trained with.
    assert record_seed({"overrides": ["bf16=false", "seed=7", "seed=44"]}) == 44
    assert record_seed({"overrides": ["bf16=false"]}) is None and record_seed({"model": "m"}) is None


def _unlearned_copy(model: str, folder: Path, seed: int) -> Path:
    """The tiny model as an unlearning output folder: its weights and the config the stage saves, with ``seed``."""
    shutil.copytree(model, folder)
    (folder / CONFIG_NAME).write_text(yaml.safe_dump({"stage": "unlearn", "seed": seed}))
    return folder


def test_run_seed_reads_a_prepared_models_marker(tmp_path: Path) -> None:
    """A prepared target or retrain model records its training seed, so its evaluations carry it."""
    marker = tmp_path / PREPARED_MARKER
    marker.write_text(json.dumps({"config": "target.yaml", "overrides": ["seed=43"], "seed": 43}))
    assert run_seed(tmp_path) == 43
    marker.write_text(json.dumps({"config": "target.yaml", "overrides": []}))  # written before markers had seeds
    assert run_seed(tmp_path) is None


def test_reference_models_of_several_seeds_make_one_row(tiny_model_dir: str, tmp_path: Path, capsys) -> None:
    """Prepared target models of two seeds (run_all_muse.sh with PER_SEED_REFERENCES=1): their evaluations carry
    the seed from the prepared marker, so the table averages them into one row instead of refusing a duplicate."""
    results = []
    for seed in (42, 43):
        model = tmp_path / f"target-{seed}"
        shutil.copytree(tiny_model_dir, model)
        (model / PREPARED_MARKER).write_text(json.dumps({"config": "target.yaml", "overrides": [], "seed": seed}))
        assert cli.main(["eval", "muse", "--model", str(model), "--name", "target", "--output", str(model / "eval"),
                         "--data", str(FIXTURES), "--max-examples", "2"]) == 0  # fmt: skip
        results.append(str(model / "eval" / "muse_results.json"))
    capsys.readouterr()
    target = muse_table(results)["target"]
    assert (target["n_seeds"], target["seeds"], target["knowmem_f_ci95"]) == (2, [42, 43], 0.0)


def test_muse_table_groups_the_seeds_of_a_method(tiny_model_dir: str, tmp_path: Path, capsys) -> None:
    common = ["--retrain", tiny_model_dir, "--data", str(FIXTURES), "--max-examples", "2"]
    assert cli.main(["eval", "muse", "--model", tiny_model_dir, "--name", "target", "--output",
                     str(tmp_path / "target"), *common]) == 0  # fmt: skip
    results = [str(tmp_path / "target" / "muse_results.json")]
    for seed in (42, 43, 44):
        model = _unlearned_copy(tiny_model_dir, tmp_path / f"run-{seed}", seed)
        assert run_seed(model) == seed
        assert cli.main(["eval", "muse", "--model", str(model), "--name", "ga", "--output", str(model / "eval"),
                         *common]) == 0  # fmt: skip
        results.append(str(model / "eval" / "muse_results.json"))
        assert json.loads(Path(results[-1]).read_text())["ga"]["seed"] == seed
    assert json.loads(Path(results[0]).read_text())["target"]["seed"] is None  # not unlearned here
    capsys.readouterr()

    save = tmp_path / "table.json"
    assert cli.main(["muse", "table", *results, "--save", str(save)]) == 0
    out = capsys.readouterr().out
    table = json.loads(save.read_text())
    assert list(table) == ["target", "ga"]
    ga, target = table["ga"], table["target"]
    assert (ga["n_seeds"], ga["seeds"], target["n_seeds"], target["seeds"]) == (3, [42, 43, 44], 1, [None])
    # The same weights under three seeds: one value, so a zero interval; the reference has none.
    assert ga["knowmem_f_ci95"] == 0.0 and ga["knowmem_f"] == pytest.approx(ga["runs"][0]["knowmem_f"])
    assert target["knowmem_f_ci95"] is None and [run["seed"] for run in ga["runs"]] == [42, 43, 44]
    assert "| ga |" in out and "± 0.0" in out and "| 42, 43, 44 |" in out
    assert save.with_suffix(".md").read_text().count("95% confidence interval") == 1

    # A saved table counts as the runs it was made of: a fourth seed joins them ...
    fourth = json.loads(Path(results[1]).read_text())
    fourth["ga"] = {**fourth["ga"], "seed": 45, "knowmem_f": fourth["ga"]["knowmem_f"] + 10.0}
    (tmp_path / "seed45.json").write_text(json.dumps(fourth))
    assert cli.main(["muse", "table", str(save), str(tmp_path / "seed45.json")]) == 0
    assert "| 42, 43, 44, 45 |" in capsys.readouterr().out
    again = muse_table([str(save), str(tmp_path / "seed45.json")])
    assert again["ga"]["seeds"] == [42, 43, 44, 45] and again["ga"]["knowmem_f_ci95"] > 0
    # ... while the same seed twice is refused, naming both files.
    with pytest.raises(ConfigError, match=r"'ga' with seed 43 is also in .*run-43.*; give each run's results once"):
        muse_table([*results, results[2]])
    with pytest.raises(ConfigError, match="'target' with no recorded seed is also in"):
        muse_table([results[0], results[0]])


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [
        (None, "42 43 44"),
        ("7", "7"),
        ("1 2 3 4", "1 2 3 4"),
        ("42 x", 'muse: error: SEEDS="42 x": x is not a whole number'),
        ("42 43 42", "names 42 twice"),
        ("-1", "-1 is not a whole number"),
    ],
)
def test_the_drivers_read_their_seeds(seeds: str | None, expected: str) -> None:
    """``read_seeds`` of scripts/custom/common.sh, which run_all_muse.sh and run_all_rwku.sh call (the function
    alone, with common.sh's ``die``: the file itself sets the project up when sourced)."""
    common = ROOT / "scripts" / "custom" / "common.sh"
    script = (
        f'source <(sed -n "/^die()/p; /^read_seeds()/,/^}}/p" {common})\nread_seeds muse\necho "${{SEEDS_LIST[*]}}"'
    )
    env = {key: value for key, value in os.environ.items() if key != "SEEDS"} | ({"SEEDS": seeds} if seeds else {})
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True)
    if expected[0].isdigit():
        assert (done.returncode, done.stdout.strip()) == (0, expected), done.stderr
    else:
        assert done.returncode == 2 and expected in done.stderr and len(done.stderr.splitlines()) == 1
