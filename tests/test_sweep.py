"""``unilogit sweep`` and ``unilogit report SWEEP_DIR``: the sweep file's checks, grid expansion, the commands
of a point and its seeds, the cache key of a run, resuming a killed sweep on the tiny model, the table's means
and intervals over seeds, Pareto fronts with error bars, and the report of a hand-made sweep."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy import stats

from conftest import ROOT
from unilogit import cli
from unilogit.benchmarks.registry import BENCHMARKS, MUSE
from unilogit.errors import ConfigError
from unilogit.fingerprint import evaluator_code
from unilogit.sweep.config import Point, expand_grid, load_sweep
from unilogit.sweep.pareto import dominated, pareto_front, write_report
from unilogit.sweep.runner import (
    child_env,
    point_commands,
    point_folder,
    reference_commands,
    run_key,
    run_sweep,
    sweep_tasks,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rwku"
MUSE_NPO = str(ROOT / "examples" / "muse" / "npo_rt.yaml")
MUSE_UNILOGIT = str(ROOT / "examples" / "muse" / "unilogit_rt.yaml")
RWKU_GA = str(ROOT / "examples" / "rwku" / "ga.yaml")


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _muse_sweep(**changes) -> dict:
    sweep = {
        "benchmark": "muse",
        "output": "saves/sweeps/t",
        "data": "data/muse_mini",
        "overrides": ["bf16=false"],
        "eval_args": ["--max-examples", "4"],
        "methods": {
            "unilogit_rt": {"config": MUSE_UNILOGIT, "grid": {"learning_rate": [5.0e-4, 1.0e-3, 2.0e-3]}},
            "npo_rt": {"config": MUSE_NPO, "grid": {"learning_rate": [5.0e-4, 1.0e-3], "npo_beta": [0.1, 0.5]}},
        },
        "quick": {"points_per_method": 1, "eval_args": ["--max-examples", "2"], "overrides": ["num_train_epochs=1"]},
    }
    sweep.update(changes)
    return sweep


# --------------------------------------------------------------------------------------------- parsing


def test_a_valid_sweep_file_resolves(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path / "s.yaml", _muse_sweep()))
    assert (sweep.benchmark, sweep.output, sweep.data) == ("muse", Path("saves/sweeps/t"), "data/muse_mini")
    assert list(sweep.methods) == ["unilogit_rt", "npo_rt"] and len(sweep.points) == 3 + 4
    assert sweep.methods["npo_rt"].grid == {"learning_rate": [5e-4, 1e-3], "npo_beta": [0.1, 0.5]}
    assert sweep.train_overrides(sweep.points[0]) == ["bf16=false", "learning_rate=0.0005"]
    assert sweep.seeds == [42]  # a sweep file without seeds runs each point once, with the configs' seed
    assert sweep.train_overrides(sweep.points[0], seed=43) == ["bf16=false", "learning_rate=0.0005", "seed=43"]
    quick = load_sweep(tmp_path / "s.yaml", quick=True)
    assert quick.output == Path("saves/sweeps/t-quick")  # a smoke run never resumes into the real sweep
    ids = ["unilogit_rt/learning_rate=0.0005", "npo_rt/learning_rate=0.0005,npo_beta=0.1"]
    assert [p.id for p in quick.points] == ids
    assert quick.eval_args == ["--max-examples", "4", "--max-examples", "2"]  # the last one wins
    assert quick.train_overrides(quick.points[0]) == ["bf16=false", "learning_rate=0.0005", "num_train_epochs=1"]
    assert json.loads(json.dumps(sweep.to_json()))["points"][0] == "unilogit_rt/learning_rate=0.0005"
    seeded = load_sweep(_write(tmp_path / "s.yaml", _muse_sweep(seeds=[42, 43, 44])))
    assert seeded.seeds == [42, 43, 44] and seeded.to_json()["seeds"] == [42, 43, 44]
    quick_seeds = _muse_sweep(seeds=[42, 43, 44], quick={"points_per_method": 1, "seeds": [7]})
    assert load_sweep(_write(tmp_path / "s.yaml", quick_seeds), quick=True).seeds == [7]


def test_an_exponent_without_a_dot_is_a_number(tmp_path: Path) -> None:
    text = f"benchmark: muse\noutput: o\nmethods:\n  a:\n    config: {MUSE_NPO}\n    grid: {{learning_rate: [5e-4]}}\n"
    (tmp_path / "s.yaml").write_text(text)
    assert load_sweep(tmp_path / "s.yaml").points[0].id == "a/learning_rate=0.0005"


def _method(**changes) -> dict:
    return {"a": {"config": MUSE_NPO, "grid": {"learning_rate": [1e-3]}, **changes}}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"methds": {}}, "unknown key 'methds'; did you mean 'methods'?"),
        ({"methods": _method(gird={})}, "methods.a: unknown key 'gird'; did you mean 'grid'?"),
        (
            {"methods": _method(grid={"learnig_rate": [1e-3]})},
            "unknown config key 'learnig_rate'; did you mean 'learning_rate'?",
        ),
        ({"methods": _method(grid={"learning_rate": []})}, "methods.a.grid.learning_rate: the list of values is empty"),
        ({"methods": _method(grid={"learning_rate": 1e-3})}, "use a list of values"),
        ({"methods": _method(config="examples/muse/nope.yaml")}, "config file examples/muse/nope.yaml does not exist"),
        ({"methods": _method(grid={"output_dir": ["x"]})}, "output_dir is set by the sweep for every point"),
        ({"overrides": ["bf16"]}, "'bf16' is not key=value"),
        ({"overrides": ["bf61=false"]}, "overrides: unknown config key 'bf61'; did you mean 'bf16'?"),
        ({"benchmark": "tofu"}, "benchmark: 'tofu' is not valid; allowed values: muse | rwku"),
        ({"model": "m"}, "model is for rwku sweeps"),
        ({"target_model": "m"}, "give both target_model and retrain_model"),
        ({"reference_overrides": "num_train_epochs=20"}, "reference_overrides: must be a list of key=value"),
        ({"reference_overrides": ["num_train_epochs 20"]}, "'num_train_epochs 20' is not key=value; write e.g. num_"),
        ({"reference_overrides": ["num_train_epochs= 20"]}, "'num_train_epochs= 20' holds a space; write key=value"),
        ({"overrides": "bf16=false"}, "overrides: must be a list of key=value, e.g. [bf16=false]"),
        (
            {"target_model": "t", "retrain_model": "r", "reference_overrides": ["num_train_epochs=20"]},
            "reference_overrides trains the target and retrain models; leave it out with target_model",
        ),
        ({"methods": {"target": _method()["a"]}}, "'target' names the sweep's reference models"),
        ({"methods": _method(overrides=["npo_bta=1"])}, "methods.a.overrides: unknown config key 'npo_bta'"),
        ({"methods": _method(overrides=["learning_rate=1"])}, "methods.a: learning_rate is in its overrides and in"),
        ({"methods": _method(overrides=["soft_target_kl_model={retrian}"])}, "{retrian} in 'soft_target_kl_model="),
        ({"methods": _method(overrides=["output_dir=x"])}, "output_dir is set by the sweep for every point"),
        ({"methods": _method(grid={"seed": [1, 2]})}, "seed is set for every run from the sweep's seeds: list"),
        ({"overrides": ["seed=1"]}, "overrides: seed is set for every run from the sweep's seeds: list"),
        ({"seeds": 42}, "seeds: must be a list of whole numbers >= 0, e.g. [42, 43, 44]"),
        ({"seeds": []}, "seeds: must be a list of whole numbers"),
        ({"seeds": [42, True]}, "seeds: must be a list of whole numbers"),
        ({"seeds": [42, 43, 42]}, "seeds: [42, 43, 42] names a seed twice"),
        ({"sedes": [42]}, "unknown key 'sedes'; did you mean 'seeds'?"),
        (
            {"methods": _method(overrides=["npo_beta=1"]), "overrides": ["npo_beta=2"]},
            "npo_beta is in overrides and in the overrides of a; keep one",
        ),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path: Path, changes: dict, expected: str) -> None:
    sweep = {"benchmark": "muse", "output": "o", "methods": _method(), **changes}
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path / "s.yaml", sweep))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("benchmark: muse\noutput: o\n  methods: {}\nquick: {}\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line 3, column 10: mapping values") as err:
        load_sweep(path)
    assert "\n" not in str(err.value)
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("stage: unlearn\nlearning_rate: [1\n")
    with pytest.raises(ConfigError, match=r"methods.a.config: .*bad.yaml: YAML syntax error at line 3"):
        load_sweep(_write(path, {"benchmark": "muse", "output": "o", "methods": _method(config=str(bad_config))}))
    with pytest.raises(ConfigError, match="--quick needs a quick: section"):
        load_sweep(_write(path, {"benchmark": "muse", "output": "o", "methods": _method()}), quick=True)


def test_cli_sweep_with_a_bad_file_is_exit_2_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _write(tmp_path / "bad.yaml", {"benchmark": "muse", "output": "o", "metods": {}})
    assert cli.main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"unilogit: error: {bad}: unknown key 'metods'; did you mean 'methods'?"]
    assert cli.main(["sweep", str(tmp_path / "missing.yaml"), "--jobs", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- grid and commands


def test_grid_expansion_is_the_cartesian_product_in_file_order() -> None:
    grid = {"learning_rate": [1e-3, 5e-4], "npo_beta": [0.1, 0.5, 1], "unlearn_method": ["npo"]}
    combos = expand_grid(grid)
    assert len(combos) == 6 and combos[0] == {"learning_rate": 1e-3, "npo_beta": 0.1, "unlearn_method": "npo"}
    assert [(c["learning_rate"], c["npo_beta"]) for c in combos] == [
        (1e-3, 0.1), (1e-3, 0.5), (1e-3, 1), (5e-4, 0.1), (5e-4, 0.5), (5e-4, 1)
    ]  # fmt: skip
    assert expand_grid({}) == [{}]
    point = Point("npo_rt", "c.yaml", combos[1])
    assert point.id == "npo_rt/learning_rate=0.001,npo_beta=0.5,unlearn_method=npo"
    assert point.overrides == ["learning_rate=0.001", "npo_beta=0.5", "unlearn_method=npo"]
    assert Point("m", "c.yaml", {"k": "a/b c", "flag": True, "lr": 1e-5}).id == "m/k=a_b_c,flag=true,lr=1e-05"
    assert Point("m", "c.yaml", {}).id == "m/default"


def test_the_commands_of_a_point(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path / "s.yaml", _muse_sweep()))
    point = sweep.points[3]  # npo_rt, learning_rate=0.0005, npo_beta=0.1
    models = {"target": "T", "retrain": "R"}
    folder = "saves/sweeps/t/npo_rt/learning_rate=0.0005,npo_beta=0.1/seed43-k"
    train, evaluate = point_commands(sweep, point, models, 43, Path(folder))
    assert train[1:] == ["-m", "unilogit.cli", "train", MUSE_NPO, "model_name_or_path=T",
                         f"output_dir={folder}/model", "bf16=false", "learning_rate=0.0005",
                         "npo_beta=0.1", "seed=43"]  # fmt: skip
    assert evaluate[3:] == ["eval", "muse", "--model", f"{folder}/model", "--retrain", "R", "--output",
                            f"{folder}/eval", "--name", "npo_rt", "--data", "data/muse_mini",
                            "--max-examples", "4"]  # fmt: skip
    target = reference_commands(sweep, "target", models, Path("ref"))[0]
    assert target[3:9] == ["eval", "muse", "--model", "T", "--retrain", "R"] and target[9:11] == ["--output", "ref"]

    # A method's own overrides come after the shared ones, with the sweep's models named by {name}.
    sweep = load_sweep(_write(tmp_path / "s.yaml", _muse_sweep(methods={"unilogit_rt": {
        "config": MUSE_UNILOGIT, "grid": {"learning_rate": [1e-3]},
        "overrides": ["soft_target_kl_model={retrain}"]}})))  # fmt: skip
    [point] = sweep.points
    assert point_commands(sweep, point, models, 42, Path("f"))[0][7:] == [
        "bf16=false",
        "soft_target_kl_model=R",
        "learning_rate=0.001",
        "seed=42",
    ]
    assert sweep.to_json()["methods"]["unilogit_rt"]["overrides"] == ["soft_target_kl_model={retrain}"]
    shipped = load_sweep(ROOT / "examples" / "sweeps" / "muse_mini.yaml")
    assert {name for name, m in shipped.methods.items() if m.overrides} == {
        "undial", "unilogit_rt", "unilogit_rt_initial", "unilogit_rt_fkl",
    }  # fmt: skip

    rwku = {"benchmark": "rwku", "output": "o", "model": "M", "eval_args": ["--targets", "1-2", "--batch"],
            "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [3e-4]}}}}  # fmt: skip
    with pytest.raises(ConfigError, match="reference_overrides are for muse sweeps; rwku sweeps take model"):
        load_sweep(_write(tmp_path / "r.yaml", {**rwku, "reference_overrides": ["num_train_epochs=20"]}))
    sweep = load_sweep(_write(tmp_path / "r.yaml", rwku))
    [run] = point_commands(sweep, sweep.points[0], {"model": "M"}, 42, Path("o/ga/learning_rate=0.0003/seed42-k"))
    assert run[3:] == ["rwku", "run", RWKU_GA, "--output", "o/ga/learning_rate=0.0003/seed42-k/run", "--name", "ga",
                       "--model", "M", "--data", "data/rwku_mini", "--targets", "1-2", "--batch",
                       "learning_rate=0.0003", "seed=42"]  # fmt: skip
    [before] = reference_commands(sweep, "before", {"model": "M"}, Path("o/references/before-k"))
    assert before[3:] == ["eval", "rwku", "--model", "M", "--name", "before", "--output", "o/references/before-k",
                          "--data", "data/rwku_mini", "--targets", "1-2"]  # fmt: skip


def test_every_point_runs_once_per_seed(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path / "r.yaml", {
        "benchmark": "rwku", "output": str(tmp_path / "out"), "model": "M", "seeds": [42, 43, 44],
        "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [3e-4, 5e-4]}}},
    }))  # fmt: skip
    tasks = sweep_tasks(sweep, {"model": "M"})
    assert [task.name for task in tasks] == ["references/before", *(f"ga/learning_rate={lr}/seed{seed}"
                                             for seed in (42, 43, 44) for lr in ("0.0003", "0.0005"))]  # fmt: skip
    runs = tasks[1:]
    assert len({task.folder for task in runs}) == 6  # a folder per run
    for task in runs:
        seed = task.record["seed"]
        assert task.folder.parent == point_folder(sweep, task.point) and task.folder.name.startswith(f"seed{seed}-")
        assert task.commands[0][-1] == f"seed={seed}" and task.record["key"] in task.folder.name
    assert tasks[0].folder.name.startswith("before-")


def test_child_env_shares_the_cpu_cores_or_gives_each_point_a_device() -> None:
    assert child_env(2, base={}, cores=2) == {"OMP_NUM_THREADS": "1"}
    assert child_env(3, base={"A": "b"}, cores=16) == {"A": "b", "OMP_NUM_THREADS": "5"}
    assert child_env(8, base={}, cores=2)["OMP_NUM_THREADS"] == "1"
    assert child_env(2, device="3", base={}) == {"CUDA_VISIBLE_DEVICES": "3"}


# ------------------------------------------------------------------------------------- resume, for real


def _wait_for(condition, process: subprocess.Popen, seconds: float) -> bool:
    """Poll ``condition`` until it holds (True), ``process`` ends or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _logs(out: Path) -> str:
    """The tail of every log under the sweep folder, for the message of a failed assertion."""
    return "\n".join(f"== {log}\n{log.read_text()[-1500:]}" for log in sorted(out.rglob("log.txt")))


def test_a_killed_sweep_resumes_without_redoing_finished_points(tiny_model_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    sweep_file = _write(tmp_path / "rwku.yaml", {
        "benchmark": "rwku", "output": str(out), "data": str(FIXTURES), "model": tiny_model_dir,
        "overrides": ["template=chatml", "num_train_epochs=1", "max_steps=1"],
        "eval_args": ["--targets", "2", "--no-utility", "--fluency-tokens", "4"],
        "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [3e-4, 5e-4, 7e-4]}}},
    })  # fmt: skip
    # The run folders, seed42-<key> under each point, as the runner's own key function names them.
    folders = [task.folder for task in sweep_tasks(load_sweep(sweep_file), {"model": tiny_model_dir})[1:]]
    assert [f.parent.name for f in folders] == [f"learning_rate={lr}" for lr in ("0.0003", "0.0005", "0.0007")]
    command = [sys.executable, "-m", "unilogit.cli", "sweep", str(sweep_file)]
    log = tmp_path / "first.log"
    with log.open("w") as handle:
        first = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finished = _wait_for(lambda: any((f / "metrics.json").is_file() for f in folders), first, 300)
        assert finished, log.read_text()[-3000:] + _logs(out)
        # The next point starts at once; wait for it, so that the kill interrupts a point for sure.
        _wait_for(lambda: any((f / "log.txt").is_file() and not (f / "metrics.json").is_file() for f in folders),
                  first, 10)  # fmt: skip
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    done = {f: ((f / "metrics.json").stat().st_mtime_ns, (f / "log.txt").stat().st_mtime_ns)
            for f in folders if (f / "metrics.json").is_file()}  # fmt: skip
    interrupted = [f for f in folders if f.is_dir() and f not in done]
    # A kill between two points leaves nothing half done; either way the finished points must survive.
    assert done, log.read_text()[-3000:] + _logs(out)
    for folder in interrupted:
        (folder / "stale").write_text("from the killed run")

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:] + _logs(out)
    assert f"{3 - len(done)} of 4 runs to do" in again.stderr  # the reference finished before the first point
    assert all((f / "metrics.json").is_file() for f in folders)
    for folder, mtimes in done.items():  # not redone: the same files
        assert ((folder / "metrics.json").stat().st_mtime_ns, (folder / "log.txt").stat().st_mtime_ns) == mtimes
    for folder in interrupted:  # deleted and redone from scratch
        assert not (folder / "stale").exists() and (folder / "run" / "rwku_results.json").is_file()
    point = json.loads((folders[0] / "point.json").read_text())
    assert point["hyperparameters"] == {"learning_rate": 3e-4} and point["commands"][0][3:5] == ["rwku", "run"]
    assert point["seed"] == 42 and point["commands"][0][-1] == "seed=42"
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["method"] == "ga" and "per_target" not in metrics and metrics["forget_all"] is not None
    assert metrics["seed"] == 42
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["point"], r["learning_rate"]) for r in rows] == [
        ("before", "", ""), ("ga", "ga/learning_rate=0.0003", "0.0003"), ("ga", "ga/learning_rate=0.0005", "0.0005"),
        ("ga", "ga/learning_rate=0.0007", "0.0007"),
    ]  # fmt: skip
    assert rows[0]["forget_all"] and rows[0]["mmlu"] == "" and rows[0]["forget_all_ci95"] == ""
    assert [(r["n_seeds"], r["seeds"]) for r in rows] == [("1", "–"), *[("1", "42")] * 3]
    assert rows[1]["runs"] == folders[0].relative_to(out).as_posix() and rows[1]["forget_all_ci95"] == ""
    assert "| ga | ga/learning_rate=0.0005 | 0.0005 |" in (out / "sweep.md").read_text()
    assert json.loads((out / "sweep.json").read_text())["points"] == [f"ga/{f.parent.name}" for f in folders]


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    return folder


def test_a_run_is_keyed_by_what_its_numbers_depend_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key follows the resolved config, the data's bytes, the models' bytes and the evaluator's code, and
    nothing else (not the folders or the command line)."""
    eval_data = shutil.copytree(FIXTURES.parent / "muse", tmp_path / "eval-data")
    train = tmp_path / "train"
    train.mkdir()
    (train / "forget.json").write_text(json.dumps([{"text": "The forget set."}]))
    info = {"f": {"file_name": "forget.json", "columns": {"prompt": "text"}}}
    (train / "dataset_info.json").write_text(json.dumps(info))
    config = tmp_path / "npo.yaml"
    config.write_text(Path(MUSE_NPO).read_text())
    models = {"target": str(_model(tmp_path / "target", b"target")), "retrain": str(_model(tmp_path / "retrain", b"r"))}
    spec = {"benchmark": "muse", "output": str(tmp_path / "out"), "data": str(eval_data),
            "target_model": models["target"], "retrain_model": models["retrain"],
            "overrides": [f"dataset_dir={train}", "dataset=f", "retain_dataset=f"],
            "methods": {"npo_rt": {"config": str(config), "grid": {"learning_rate": [1e-3]}}}}  # fmt: skip
    sweep = load_sweep(_write(tmp_path / "s.yaml", spec))
    [point] = sweep.points

    def key(seed: int = 42) -> str:
        return run_key(sweep, point, seed, models)

    first = key()
    assert key() == first and key(43) != first
    moved = load_sweep(_write(tmp_path / "s.yaml", {**spec, "output": str(tmp_path / "elsewhere")}))
    assert run_key(moved, point, 42, models) == first  # not the folders
    (tmp_path / "target" / "muse_eval-x").mkdir()  # results kept beside a model are not the model
    (tmp_path / "target" / "muse_eval-x" / "muse_results.json").write_text("{}")
    assert key() == first

    def changes_the_key(path: Path, text: bytes) -> None:
        before = path.read_bytes()
        path.write_bytes(text)
        assert key() != first, path
        path.write_bytes(before)
        assert key() == first  # by content: the old bytes give the old key back

    changes_the_key(config, config.read_bytes() + b"warmup_ratio: 0.1\n")  # the method's YAML
    changes_the_key(train / "forget.json", b'[{"text": "Another forget set."}]')  # its training data
    changes_the_key(train / "dataset_info.json", b'{"f": {"file_name": "forget.json"}}')
    changes_the_key(eval_data / "knowmem" / "forget_qa.json", b"[]")  # the evaluation data
    changes_the_key(tmp_path / "retrain" / "model.safetensors", b"other weights")  # the retrained model
    changes_the_key(tmp_path / "target" / "model.safetensors", b"other weights")  # the model it starts from
    flagged = load_sweep(_write(tmp_path / "flagged.yaml", {**spec, "eval_args": ["--max-examples", "2"]}))
    assert run_key(flagged, point, 42, models) != first  # the evaluator's flags

    # The evaluator's code: its module and what it imports of the evaluation and the leaves, by their bytes.
    names = {
        path.relative_to(ROOT / "src" / "unilogit").as_posix() for path in evaluator_code(MUSE.evaluator, MUSE.module)
    }
    assert {"evaluation/muse.py", "evaluation/common.py", "evaluation/mia.py", "evaluation/divergence.py",
            "evaluation/text_overlap.py", "losses.py", "models.py", "benchmarks/muse.py"} <= names  # fmt: skip
    assert not any(name.startswith(("stage/", "sweep/")) for name in names)
    evaluator = tmp_path / "code" / "toy_evaluator.py"
    evaluator.parent.mkdir()
    evaluator.write_text("from unilogit.evaluation.mia import auc\n")
    monkeypatch.syspath_prepend(str(evaluator.parent))
    monkeypatch.setitem(BENCHMARKS, "muse", dataclasses.replace(MUSE, evaluator="toy_evaluator"))
    toy = BENCHMARKS["muse"]
    assert {"toy_evaluator.py", "mia.py"} <= {path.name for path in evaluator_code(toy.evaluator, toy.module)}
    toy_first = key()
    evaluator.write_text(evaluator.read_text() + "# an edit\n")
    assert key() != toy_first


def _finish(task, metrics: dict) -> None:
    """Write what a finished run (or reference evaluation) leaves, without running it."""
    task.folder.mkdir(parents=True)
    if task.point is None:
        task.done.write_text(json.dumps({task.row: metrics}))
    else:
        row = {"method": task.row, "point": task.point.id, "hyperparameters": task.point.params, **metrics}
        task.done.write_text(json.dumps({**row, "seed": task.record["seed"]}))


def test_finished_runs_are_reused_and_changed_ones_get_new_folders(tmp_path: Path, capsys) -> None:
    data = shutil.copytree(FIXTURES, tmp_path / "data")
    sweep_file = _write(tmp_path / "r.yaml", {
        "benchmark": "rwku", "output": str(tmp_path / "out"), "model": "M", "data": str(data), "seeds": [42, 43, 44],
        "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [3e-4, 5e-4]}}},
    })  # fmt: skip
    sweep = load_sweep(sweep_file)
    tasks = sweep_tasks(sweep, {"model": "M"})
    forget = {42: 10.0, 43: 20.0, 44: 60.0}
    _finish(tasks[0], {"forget_all": 90.0, "neighbor_all": 80.0})
    for task in tasks[1:]:
        _finish(task, {"forget_all": forget[task.record["seed"]], "neighbor_all": 70.0, "mmlu": None})
    assert run_sweep(sweep) == 0  # nothing left to run: no subprocess starts
    assert "0 of 7 runs to do" in capsys.readouterr().err
    with (sweep.output / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["point"] for row in rows] == ["", "ga/learning_rate=0.0003", "ga/learning_rate=0.0005"]
    half = stats.t.ppf(0.975, 2) * stats.tstd([10.0, 20.0, 60.0]) / math.sqrt(3)
    assert float(rows[1]["forget_all"]) == pytest.approx(30.0)
    assert float(rows[1]["forget_all_ci95"]) == pytest.approx(half)  # over the 3 seeds
    assert float(rows[1]["neighbor_all_ci95"]) == 0.0 and rows[1]["mmlu"] == rows[1]["mmlu_ci95"] == ""
    assert (rows[1]["n_seeds"], rows[1]["seeds"]) == ("3", "42, 43, 44")
    assert (rows[0]["n_seeds"], rows[0]["seeds"], rows[0]["forget_all_ci95"]) == ("1", "–", "")  # the reference
    assert len(rows[1]["runs"].split()) == 3
    [line] = [x for x in (sweep.output / "sweep.md").read_text().splitlines() if "| ga/learning_rate=0.0003 |" in x]
    assert f"| 30.0 ± {half:.1f} |" in line and line.endswith("| 42, 43, 44 |")

    # Other data bytes: every run and the reference get a new folder; the finished ones stay as they were.
    before = {task.folder: task.done.read_bytes() for task in tasks}
    (data / "forget_target" / "train.json").write_text("[]")
    changed = sweep_tasks(sweep, {"model": "M"})
    assert not {task.folder for task in changed} & set(before)
    assert all(folder.is_dir() and (folder / "metrics.json").is_file() for folder in before if "seed" in folder.name)
    for task in changed:
        _finish(task, {"forget_all": 5.0, "neighbor_all": 50.0})
    assert run_sweep(sweep) == 0
    err = capsys.readouterr().err
    assert "0 of 7 runs to do" in err and "6 run folders of other settings" in err
    assert all(task.done.read_bytes() == done for task, done in zip(tasks, before.values(), strict=True))
    with (sweep.output / "sweep.csv").open() as handle:
        assert [row["forget_all"] for row in csv.DictReader(handle)] == ["5.0", "5.0", "5.0"]  # the new runs only


# --------------------------------------------------------------------------------------- Pareto fronts


def test_pareto_front_keeps_the_non_dominated_points() -> None:
    # x = retain (higher is better), y = forget (lower is better)
    points = [(50.0, 30.0), (40.0, 10.0), (45.0, 40.0), (40.0, 10.0), (30.0, 10.0), (60.0, 35.0), (50.0, 30.0)]
    assert pareto_front(points) == [0, 1, 5]  # 3 and 6 are later copies of 1 and 0
    assert dominated(points) == [2, 4]  # (45, 40) by (50, 30); (30, 10) by (40, 10)
    assert pareto_front([(1.0, 1.0)]) == [0] and dominated([(1.0, 1.0)]) == []
    assert pareto_front([]) == [] and dominated([]) == []
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0] and dominated([(1.0, 1.0), (1.0, 1.0)]) == []
    assert pareto_front([(1.0, 2.0), (2.0, 1.0)]) == [1] and dominated([(1.0, 2.0), (2.0, 1.0)]) == [0]


# --------------------------------------------------------------------------------------------- report


def _handmade_muse_sweep(folder: Path, intervals: bool = True) -> Path:
    """A finished MUSE sweep's sweep.json and sweep.csv: the references, then points of methods a and b with
    their 95% intervals (b's last point has one seed, so none); ``intervals=False``: a sweep from before seeds."""
    folder.mkdir()
    meta = {"benchmark": "muse", "sweep_file": "s.yaml", "data": "data/muse_mini", "methods": {"a": {}, "b": {}},
            "seeds": [42, 43, 44]}  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps(meta))
    metrics = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak", "kl_to_retrain"]
    header = ["method", "point", "learning_rate", "npo_beta", *metrics]
    b = "npo_beta=0.1"
    rows = [  # each metric, then its interval
        ["target", "", "", "", 60, "", 50, "", 40, "", -90, "", 0.5, "", 1, "–"],
        ["retrain", "", "", "", 20, "", 10, "", 41, "", 0, "", 0.0, "", 1, "–"],
        ["a", "a/learning_rate=0.001", "0.001", "", 40, 4, 30, 3, 39, 1, -50, 5, 0.3, 0.05, 3, "42, 43, 44"],
        ["a", "a/learning_rate=0.002", "0.002", "", 30, 3, 20, 2.5, 38.5, 1, -40, 5, 0.2, 0.05, 3, "42, 43, 44"],
        ["a", "a/learning_rate=0.004", "0.004", "", 10, 1, 5, 1, 30, 2, -10, 5, 0.1, 0.02, 3, "42, 43, 44"],
        ["b", f"b/learning_rate=0.001,{b}", "0.001", "0.1", 35, 2, 10, 2, 37, 1, -30, 3, 0.25, 0.01, 2, "42, 43"],
        ["b", f"b/learning_rate=0.002,{b}", "0.002", "0.1", 20, 2, 2, 1, 20, 3, -20, 3, 0.15, 0.01, 2, "42, 43"],
        ["b", f"b/learning_rate=0.004,{b}", "0.004", "0.1", 50, "", 8, "", 10, "", "", "", "", "", 1, "42"],
    ]
    if intervals:
        header = [*header[:4], *(name for key in metrics for name in (key, f"{key}_ci95")), "n_seeds", "seeds"]
    else:
        rows = [[*row[:4], *row[4:14:2]] for row in rows]
    with (folder / "sweep.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return folder


def test_report_of_a_muse_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep_dir = _handmade_muse_sweep(tmp_path / "sweep")
    paths = write_report(sweep_dir)
    names = sorted(p.name for p in paths)
    stems = ("pareto-knowmem", "pareto-verbmem", "pareto-sweep", "kl-to-retrain-sweep")  # -sweep: the folder's name
    assert names == sorted([*(f"{s}.{ext}" for s in stems for ext in ("png", "svg")), "summary.md"])
    for path in paths:
        assert path.parent == sweep_dir / "report" and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if path.suffix == ".svg":
            assert "<svg" in path.read_text()[:2000]
    summary = (sweep_dir / "report" / "summary.md").read_text()
    assert "best" not in summary.lower()  # scored on the test items, so no point is called the best
    assert "seeds 42, 43, 44" in summary and "95% confidence interval" in summary
    fronts = summary.split("## Pareto front per method")[1].split("## Dominated points")[0]
    knowmem = fronts.split("as in `pareto-knowmem`")[1].split("as in `pareto-verbmem`")[0]
    assert "| a | a/learning_rate=0.001 | 40.0 ± 4.0 | 30.0 ± 3.0 | 39.0 ± 1.0 | -50.0 ± 5.0 | 0.3000 ± 0.0500 |" \
           " 42, 43, 44 |" in knowmem  # fmt: skip
    assert "a/learning_rate=0.002" in knowmem and "a/learning_rate=0.004" in knowmem  # a's three trade-offs
    assert "b/learning_rate=0.001,npo_beta=0.1" in knowmem and "b/learning_rate=0.004" not in knowmem  # (10, 8)
    assert "b/learning_rate=0.004" not in fronts  # dominated by b's (20, 2) and (20, 20) on both plots
    dominated_part = summary.split("## Dominated points")[1].split("## All points")[0]
    assert "- b/learning_rate=0.004,npo_beta=0.1" in dominated_part  # (10, 8) < (30, 5) on KnowMem
    everything = summary.split("## All points")[1]
    assert "| target |  |  |  | 60.0 | 50.0 | 40.0 | -90.0 | 0.5000 | – |" in everything
    assert "| b | b/learning_rate=0.004,npo_beta=0.1 | 0.004 | 0.1 | 50.0 | 8.0 | 10.0 | n/a | n/a | 42 |" in everything
    for plot in ("pareto-knowmem", "pareto-verbmem", "pareto-sweep"):  # error bars: matplotlib's LineCollections
        assert 'id="LineCollection_' in (sweep_dir / "report" / f"{plot}.svg").read_text()

    err = capsys.readouterr().err  # no point logged soft_target_kl: said in one line, the bars drawn alone
    assert len([line for line in err.splitlines() if "soft_target_kl" in line]) == 1
    assert cli.main(["report", str(sweep_dir)]) == 0  # the folder holds sweep.json: the sweep report
    assert str(sweep_dir / "report" / "summary.md") in capsys.readouterr().out
    docs = tmp_path / "docs"
    assert cli.main(["report", str(sweep_dir), "--publish", str(docs)]) == 0
    published = {"sweep-sweep.csv", "sweep-sweep.md", *(f"{s}-sweep.{e}" for s in ("pareto", "kl-to-retrain")
                                                         for e in ("png", "svg"))}  # fmt: skip
    assert {p.name for p in docs.iterdir()} == published
    assert (docs / "sweep-sweep.csv").read_bytes() == (sweep_dir / "sweep.csv").read_bytes()
    assert (docs / "pareto-sweep.png").read_bytes() == (sweep_dir / "report" / "pareto-sweep.png").read_bytes()
    (docs / "sweep-sweep.md").write_text("an earlier sweep's summary")  # published results are not replaced ...
    assert cli.main(["report", str(sweep_dir), "--publish", str(docs)]) == 2
    assert "sweep-sweep.csv exists (and 5 more of this sweep's files); pass --overwrite" in capsys.readouterr().err
    assert (docs / "sweep-sweep.md").read_text() == "an earlier sweep's summary"
    assert cli.main(["report", str(sweep_dir), "--publish", str(docs), "--overwrite"]) == 0  # ... unless asked
    assert (docs / "sweep-sweep.md").read_text() == (sweep_dir / "report" / "summary.md").read_text()
    assert cli.main(["report", str(tmp_path)]) == 2  # no sweep.json: the report of one unlearning run
    assert "unlearn_config.yaml is missing" in capsys.readouterr().err


def _trainer_log(folder: Path, values: list[float]) -> None:
    """A point's trainer_log.jsonl as soft_target_kl_model writes it: step lines, one KL line per epoch."""
    folder.mkdir(parents=True)
    lines = [{"current_steps": 0, "total_steps": 8, "epoch": 0.0, "soft_target_kl": values[0]}]
    for epoch, value in enumerate(values[1:], start=1):
        lines += [
            {"current_steps": 4 * epoch - 1, "loss": 1.0, "forget_loss": 1.0, "epoch": epoch - 0.25},
            {"current_steps": 4 * epoch, "loss": 0.9, "forget_loss": 0.9, "epoch": float(epoch)},
            {"current_steps": 4 * epoch, "total_steps": 8, "epoch": float(epoch), "soft_target_kl": value},
        ]
    (folder / "trainer_log.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n{cut")


def test_report_draws_the_soft_target_kl_per_epoch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from unilogit.sweep.pareto import soft_target_curves

    sweep_dir = _handmade_muse_sweep(tmp_path / "muse-mini")
    _trainer_log(sweep_dir / "a" / "learning_rate=0.001" / "model", [0.8, 0.6, 0.5])
    _trainer_log(sweep_dir / "a" / "learning_rate=0.002" / "model", [0.8, 0.5, 0.3])
    _trainer_log(sweep_dir / "b" / "learning_rate=0.001,npo_beta=0.1" / "model", [0.9, 0.9, 0.9])
    (sweep_dir / "b" / "learning_rate=0.002,npo_beta=0.1" / "model").mkdir(parents=True)  # a run without the log

    rows = [
        {"method": "a", "point": "a/learning_rate=0.002"},
        {"method": "b", "point": "b/learning_rate=0.002,npo_beta=0.1"},
    ]
    assert soft_target_curves(sweep_dir, rows) == {"a/learning_rate=0.002": [(0.0, 0.8), (1.0, 0.5), (2.0, 0.3)]}
    paths = write_report(sweep_dir)
    figure = [p for p in paths if p.stem == "kl-to-retrain-muse-mini"]
    assert sorted(p.suffix for p in figure) == [".png", ".svg"]
    assert all(p.stat().st_size > 0 for p in figure)
    svg = next(p for p in figure if p.suffix == ".svg").read_text()
    assert "Soft targets vs the retrained model, per epoch" in svg and "KL to retrain of every point" in svg
    assert "soft_target_kl" not in capsys.readouterr().err  # nothing to say: the points have the logs

    # A point run with several seeds: its curve is the mean of its runs' logs, epoch by epoch.
    _trainer_log(sweep_dir / "a" / "learning_rate=0.001" / "seed42-k" / "model", [0.8, 0.6])
    _trainer_log(sweep_dir / "a" / "learning_rate=0.001" / "seed43-k" / "model", [0.6, 0.2])
    row = {"method": "a", "point": "a/learning_rate=0.001", "runs": ["a/learning_rate=0.001/seed42-k",
                                                                    "a/learning_rate=0.001/seed43-k"]}  # fmt: skip
    [(epoch0, kl0), (epoch1, kl1)] = soft_target_curves(sweep_dir, [row])["a/learning_rate=0.001"]
    assert (epoch0, epoch1) == (0.0, 1.0) and kl0 == pytest.approx(0.7) and kl1 == pytest.approx(0.4)


def test_pareto_points_carry_their_intervals_as_error_bars(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from unilogit.sweep.pareto import _pareto_panel, read_sweep

    _, rows = read_sweep(_handmade_muse_sweep(tmp_path / "sweep"))
    points = [row for row in rows if row["point"]]
    assert points[0]["knowmem_r_ci95"] == 1.0 and points[0]["n_seeds"] == 3 and points[-1]["knowmem_r_ci95"] is None
    ax = Figure().add_subplot()
    _pareto_panel(ax, MUSE.plots[0], points, {}, ["a", "b"], {})
    a_bars, b_bars = ax.containers  # one errorbar container per method
    x_bars, y_bars = a_bars.lines[2]
    # Method a's first point: KnowMem_r 39 ± 1 across, KnowMem_f 30 ± 3 up and down.
    assert x_bars.get_segments()[0].tolist() == [[38.0, 30.0], [40.0, 30.0]]
    assert y_bars.get_segments()[0].tolist() == [[39.0, 27.0], [39.0, 33.0]]
    # b's one-seed point has no interval: a bar of length 0.
    assert b_bars.lines[2][0].get_segments()[2].tolist() == [[10.0, 8.0], [10.0, 8.0]]

    old = tmp_path / "old"
    _handmade_muse_sweep(old, intervals=False)  # a sweep from before seeds: no bars at all
    write_report(old)
    assert "LineCollection" not in (old / "report" / "pareto-knowmem.svg").read_text()
    assert "| a | a/learning_rate=0.001 | 40.0 | 30.0 | 39.0 |" in (old / "report" / "summary.md").read_text()


def test_a_sweep_on_a_local_muse_folder_trains_on_that_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its models are prepared on the folder's raw/ splits, and every point unlearns its raw/forget and
    raw/retain1, not the embedded corpus that the method configs name."""
    from unilogit.benchmarks import muse, muse_mini

    folder = tmp_path / "validation"
    muse_mini.write(folder, seed=43)
    sweep = load_sweep(_write(tmp_path / "s.yaml", _muse_sweep(data=str(folder))))
    point = sweep.points[0]
    train = point_commands(sweep, point, {"target": "T", "retrain": "R"}, 42, tmp_path / "run")[0]
    dataset_dir = Path(next(arg for arg in train if arg.startswith("dataset_dir=")).split("=", 1)[1])
    assert f"dataset={muse.LOCAL_FORGET}" in train and f"retain_dataset={muse.LOCAL_RETAIN}" in train
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    assert info[muse.LOCAL_FORGET]["file_name"] == str(folder.resolve() / "raw" / "forget.json")
    config = run_key(sweep, point, 42, {"target": str(ROOT / "data"), "retrain": str(ROOT / "data")})
    (folder / "raw" / "retain1.json").write_text(json.dumps([{"text": "Other retain data."}]))
    assert run_key(sweep, point, 42, {"target": str(ROOT / "data"), "retrain": str(ROOT / "data")}) != config

    prepared: list[list[str]] = []
    monkeypatch.setattr(muse, "prepare", lambda argv: prepared.append(argv) or {"target": "T", "retrain": "R"})
    assert MUSE.resolve_models({"target_model": None, "retrain_model": None}, ["bf16=false"], str(folder)) == {
        "target": "T", "retrain": "R"}  # fmt: skip
    assert MUSE.resolve_models({"target_model": None, "retrain_model": None}, [], "data/muse_mini") == {
        "target": "T", "retrain": "R"}  # fmt: skip
    given = load_sweep(_write(tmp_path / "r.yaml", _muse_sweep(reference_overrides=["num_train_epochs=20", "seed=43"])))
    assert given.models["reference_overrides"] == "num_train_epochs=20 seed=43"
    assert MUSE.resolve_models(given.models, ["bf16=false", "npo_beta=1"], "data/muse_mini") == {
        "target": "T", "retrain": "R"}  # fmt: skip
    # The sweep's shared overrides (less the unlearning keys), then its reference_overrides.
    assert prepared == [["--data", str(folder), "bf16=false"], [], ["bf16=false", "num_train_epochs=20", "seed=43"]]
    embedded = load_sweep(_write(tmp_path / "e.yaml", _muse_sweep()))
    train = point_commands(embedded, point, {"target": "T", "retrain": "R"}, 42, tmp_path)[0]
    assert not any(arg.startswith("dataset") for arg in train)


def test_a_validation_sweep_names_each_methods_chosen_point(tmp_path: Path) -> None:
    """The rule: the most gap closed among points keeping 90% of the target's KnowMem_r, else the most KnowMem_r."""
    from unilogit.evaluation.muse import gap_closed
    from unilogit.sweep.pareto import choose_points

    target = {"verbmem_f": 60.0, "knowmem_f": 40.0, "knowmem_r": 30.0}
    retrain = {"verbmem_f": 20.0, "knowmem_f": 0.0, "knowmem_r": 20.0}
    assert gap_closed({"verbmem_f": 30.0}, target, retrain, "verbmem_f") == 0.75

    def row(method: str, point: str, verbmem: float, knowmem: float, retain: float) -> dict:
        return {"method": method, "point": point, "verbmem_f": verbmem, "knowmem_f": knowmem, "knowmem_r": retain}

    points = [
        row("a", "mild", 50.0, 30.0, 29.0),
        row("a", "strong", 30.0, 10.0, 27.0),  # 27 >= 0.9 * 30, and closes more: chosen
        row("a", "harsh", 20.0, 0.0, 26.0),  # closes everything but keeps too little
        row("b", "x", 20.0, 0.0, 10.0),
        row("b", "y", 40.0, 20.0, 15.0),  # none keeps 90%: the most KnowMem_r
    ]
    assert {m: r["point"] for m, r in choose_points(points, target, retrain).items()} == {"a": "strong", "b": "y"}

    sweep_dir = _handmade_muse_sweep(tmp_path / "test-sweep")
    write_report(sweep_dir)
    assert "Chosen point" not in (sweep_dir / "report" / "summary.md").read_text()  # test items: no choice
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    (sweep_dir / "sweep.json").write_text(json.dumps({**meta, "selection": "validation"}))
    write_report(sweep_dir)
    summary = (sweep_dir / "report" / "summary.md").read_text()
    chosen = summary.split("## Chosen point per method (validation data)")[1].split("## Pareto front")[0]
    assert "KnowMem_r at 90% or more of the target's" in chosen and "No point is singled out" not in summary
    # a: 0.004 keeps 30 < 36 of KnowMem_r; of the rest 0.002 closes 1.5 gaps, 0.001 one. b: only 0.001 keeps 36.
    assert [line.split(" | ")[1] for line in chosen.splitlines() if line.startswith("| ") and " | " in line][1:] == [
        "a/learning_rate=0.002", "b/learning_rate=0.001,npo_beta=0.1"]  # fmt: skip


@pytest.mark.parametrize("selection", ["best", "test"])
def test_selection_is_validation_or_nothing(tmp_path: Path, selection: str) -> None:
    with pytest.raises(ConfigError, match=f"selection: '{selection}'; use validation"):
        load_sweep(_write(tmp_path / "s.yaml", _muse_sweep(selection=selection)))
    rwku = {"benchmark": "rwku", "output": "o", "model": "M", "selection": "validation",
            "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [3e-4]}}}}  # fmt: skip
    with pytest.raises(ConfigError, match="selection: validation is for muse sweeps"):
        load_sweep(_write(tmp_path / "r.yaml", rwku))


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_loads(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.points and (sweep.validation or "validation" not in path.name)
    if "_20ep" in path.name:  # their reference models train 20 epochs, the others' 6
        assert sweep.models["reference_overrides"] == "num_train_epochs=20"
