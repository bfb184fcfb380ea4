"""``unilogit sweep`` and ``unilogit report SWEEP_DIR``: the sweep file's checks, grid expansion, the commands
of a point, resuming a killed sweep on the tiny model, Pareto fronts, and the report of a hand-made sweep."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from unilogit import cli
from unilogit.errors import ConfigError
from unilogit.sweep.config import Point, expand_grid, load_sweep
from unilogit.sweep.pareto import best_points, dominated, pareto_front, write_report
from unilogit.sweep.runner import child_env, point_commands, point_folder, reference_commands, run_sweep

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
    quick = load_sweep(tmp_path / "s.yaml", quick=True)
    assert quick.output == Path("saves/sweeps/t-quick")  # a smoke run never resumes into the real sweep
    ids = ["unilogit_rt/learning_rate=0.0005", "npo_rt/learning_rate=0.0005,npo_beta=0.1"]
    assert [p.id for p in quick.points] == ids
    assert quick.eval_args == ["--max-examples", "4", "--max-examples", "2"]  # the last one wins
    assert quick.train_overrides(quick.points[0]) == ["bf16=false", "learning_rate=0.0005", "num_train_epochs=1"]
    assert json.loads(json.dumps(sweep.to_json()))["points"][0] == "unilogit_rt/learning_rate=0.0005"


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
        ({"methods": {"target": _method()["a"]}}, "'target' names the sweep's reference models"),
        ({"methods": _method(overrides=["npo_bta=1"])}, "methods.a.overrides: unknown config key 'npo_bta'"),
        ({"methods": _method(overrides=["learning_rate=1"])}, "methods.a: learning_rate is in its overrides and in"),
        ({"methods": _method(overrides=["soft_target_kl_model={retrian}"])}, "{retrian} in 'soft_target_kl_model="),
        ({"methods": _method(overrides=["output_dir=x"])}, "output_dir is set by the sweep for every point"),
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
    train, evaluate = point_commands(sweep, point, models)
    folder = "saves/sweeps/t/npo_rt/learning_rate=0.0005,npo_beta=0.1"
    assert train[1:] == ["-m", "unilogit.cli", "train", MUSE_NPO, "model_name_or_path=T",
                         f"output_dir={folder}/model", "bf16=false", "learning_rate=0.0005",
                         "npo_beta=0.1"]  # fmt: skip
    assert evaluate[3:] == ["eval", "muse", "--model", f"{folder}/model", "--retrain", "R", "--output",
                            f"{folder}/eval", "--name", "npo_rt", "--data", "data/muse_mini",
                            "--max-examples", "4"]  # fmt: skip
    assert reference_commands(sweep, "target", models)[0][3:9] == ["eval", "muse", "--model", "T", "--retrain", "R"]

    # A method's own overrides come after the shared ones, with the sweep's models named by {name}.
    sweep = load_sweep(_write(tmp_path / "s.yaml", _muse_sweep(methods={"unilogit_rt": {
        "config": MUSE_UNILOGIT, "grid": {"learning_rate": [1e-3]},
        "overrides": ["soft_target_kl_model={retrain}"]}})))  # fmt: skip
    [point] = sweep.points
    assert point_commands(sweep, point, models)[0][7:] == [
        "bf16=false",
        "soft_target_kl_model=R",
        "learning_rate=0.001",
    ]
    assert sweep.to_json()["methods"]["unilogit_rt"]["overrides"] == ["soft_target_kl_model={retrain}"]
    shipped = load_sweep(ROOT / "examples" / "sweeps" / "muse_mini.yaml")
    assert {name for name, m in shipped.methods.items() if m.overrides} == {"undial", "unilogit_rt"}

    rwku = {"benchmark": "rwku", "output": "o", "model": "M", "eval_args": ["--targets", "1-2", "--batch"],
            "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [3e-4]}}}}  # fmt: skip
    sweep = load_sweep(_write(tmp_path / "r.yaml", rwku))
    [run] = point_commands(sweep, sweep.points[0], {"model": "M"})
    assert run[3:] == ["rwku", "run", RWKU_GA, "--output", "o/ga/learning_rate=0.0003/run", "--name", "ga",
                       "--model", "M", "--data", "data/rwku_mini", "--targets", "1-2", "--batch",
                       "learning_rate=0.0003"]  # fmt: skip
    [before] = reference_commands(sweep, "before", {"model": "M"})
    assert before[3:] == ["eval", "rwku", "--model", "M", "--name", "before", "--output", "o/references/before",
                          "--data", "data/rwku_mini", "--targets", "1-2"]  # fmt: skip


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
    folders = [out / "ga" / f"learning_rate={lr}" for lr in ("0.0003", "0.0005", "0.0007")]
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
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["method"] == "ga" and "per_target" not in metrics and metrics["forget_all"] is not None
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["point"], r["learning_rate"]) for r in rows] == [
        ("before", "", ""), ("ga", "ga/learning_rate=0.0003", "0.0003"), ("ga", "ga/learning_rate=0.0005", "0.0005"),
        ("ga", "ga/learning_rate=0.0007", "0.0007"),
    ]  # fmt: skip
    assert rows[0]["forget_all"] and rows[0]["mmlu"] == ""
    assert "| ga | ga/learning_rate=0.0005 | 0.0005 |" in (out / "sweep.md").read_text()
    assert json.loads((out / "sweep.json").read_text())["points"] == [f"ga/{f.name}" for f in folders]


def test_a_finished_point_with_other_settings_is_refused(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path / "s.yaml", {
        "benchmark": "rwku", "output": str(tmp_path / "out"), "model": "M",
        "methods": {"ga": {"config": RWKU_GA, "grid": {"learning_rate": [3e-4]}}},
    }))  # fmt: skip
    folder = point_folder(sweep, sweep.points[0])
    folder.mkdir(parents=True)
    (folder / "point.json").write_text(json.dumps({"commands": [["python", "rwku", "run", "other.yaml"]]}))
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="ga/learning_rate=0.0003 finished with other settings") as err:
        run_sweep(sweep)
    assert "\n" not in str(err.value) and not (sweep.output / "references").exists()  # nothing ran


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


def _handmade_muse_sweep(folder: Path) -> Path:
    folder.mkdir()
    meta = {"benchmark": "muse", "sweep_file": "s.yaml", "data": "data/muse_mini", "methods": {"a": {}, "b": {}}}
    (folder / "sweep.json").write_text(json.dumps(meta))
    header = ["method", "point", "learning_rate", "npo_beta", "verbmem_f", "knowmem_f", "knowmem_r", "privleak",
              "kl_to_retrain"]  # fmt: skip
    rows = [
        ["target", "", "", "", 60, 50, 40, -90, 0.5],
        ["retrain", "", "", "", 20, 10, 41, 0, 0.0],
        ["a", "a/learning_rate=0.001", "0.001", "", 40, 30, 39, -50, 0.3],
        ["a", "a/learning_rate=0.002", "0.002", "", 30, 20, 38.5, -40, 0.2],
        ["a", "a/learning_rate=0.004", "0.004", "", 10, 5, 30, -10, 0.1],
        ["b", "b/learning_rate=0.001,npo_beta=0.1", "0.001", "0.1", 35, 10, 37, -30, 0.25],
        ["b", "b/learning_rate=0.002,npo_beta=0.1", "0.002", "0.1", 20, 2, 20, -20, 0.15],
        ["b", "b/learning_rate=0.004,npo_beta=0.1", "0.004", "0.1", 50, 8, 10, "", ""],
    ]
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
    assert "**Rule:** per method, the lowest KnowMem_f among the points whose KnowMem_r is at least 95% of the " \
           "target's (KnowMem_r ≥ 38.00)" in summary  # fmt: skip
    assert "| a | a/learning_rate=0.002 | 30.0 | 20.0 | 38.5 |" in summary  # (30, 5) has too little KnowMem_r
    assert "| b | none meets the rule |" in summary
    dominated_part = summary.split("## Dominated points")[1].split("## All points")[0]
    assert "- b/learning_rate=0.004,npo_beta=0.1" in dominated_part  # (10, 8) < (30, 5) on KnowMem
    assert "| target |  |  |  | 60.0 |" in summary.split("## All points")[1]

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
    assert "Soft targets vs the retrained model, per epoch" in svg and "Lowest KL to retrain per method" in svg
    assert "soft_target_kl" not in capsys.readouterr().err  # nothing to say: the points have the logs


def test_rwku_rule_needs_neighbors_and_mmlu() -> None:
    before = {"method": "before", "point": "", "neighbor_all": 40.0, "forget_all": 50.0, "mmlu": 50.0}
    points = [
        {"method": "ga", "point": "ga/1", "neighbor_all": 35.0, "forget_all": 20.0, "mmlu": 46.0},
        {"method": "ga", "point": "ga/2", "neighbor_all": 36.0, "forget_all": 10.0, "mmlu": 40.0},  # MMLU -20%
        {"method": "npo", "point": "npo/1", "neighbor_all": 30.0, "forget_all": 5.0, "mmlu": 50.0},  # neighbors
    ]
    rule, best = best_points("rwku", points, {"before": before})
    assert "at least 85%" in rule and "(Neighbor All ≥ 34.00)" in rule and "MMLU ≥ 45.00" in rule
    assert best == {"ga": points[0], "npo": None}
    rule, best = best_points("rwku", points, {"before": {**before, "mmlu": None}})
    assert "MMLU was not evaluated" in rule and best["ga"] is points[1]
