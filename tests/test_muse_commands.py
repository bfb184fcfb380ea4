"""The MUSE commands: `unilogit eval muse` and `muse table` on a tiny model, and the preparation cache key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unilogit import cli
from unilogit.benchmarks.prepare import cache_key

FIXTURES = Path(__file__).parent / "fixtures" / "muse"


def test_eval_muse_writes_results_and_refuses_to_overwrite(
    tiny_model_dir: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["eval", "muse", "--model", tiny_model_dir, "--retrain", tiny_model_dir, "--data", str(FIXTURES)]
    argv += ["--output", str(tmp_path / "eval"), "--name", "tiny", "--max-examples", "2"]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "eval" / "muse_results.json").read_text())
    row = results["tiny"]
    assert row["n"]["verbmem"] == 2 and row["privleak"] == pytest.approx(0.0)  # its own retrain
    assert row["kl_to_retrain"] == pytest.approx(0.0, abs=1e-6)
    assert "| tiny |" in (tmp_path / "eval" / "muse_results.md").read_text()
    before = (tmp_path / "eval" / "muse_results.json").read_bytes()
    capsys.readouterr()

    assert cli.main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "eval" / "muse_results.json").read_bytes() == before

    assert cli.main(["muse", "table", str(tmp_path / "eval" / "muse_results.json")]) == 0
    assert "| tiny |" in capsys.readouterr().out


def test_retrain_auc_is_computed_once_per_retrain_model(
    tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNILOGIT_CACHE", str(tmp_path / "cache"))
    retrain = tmp_path / "retrain"
    shutil.copytree(tiny_model_dir, retrain)

    def evaluate(output: str) -> dict:
        argv = ["eval", "muse", "--model", tiny_model_dir, "--retrain", str(retrain), "--data", str(FIXTURES)]
        assert cli.main([*argv, "--output", str(tmp_path / output), "--name", "m", "--max-examples", "2"]) == 0
        return json.loads((tmp_path / output / "muse_results.json").read_text())["m"]

    first = evaluate("first")
    (kept,) = (tmp_path / "cache" / "muse-auc-retrain").iterdir()
    assert json.loads(kept.read_text())["auc_retrain"] == first["auc_retrain"]

    # The next evaluation against the same retrain model reads the kept AUC instead of scoring it again.
    kept.write_text(json.dumps({"auc_retrain": 0.25}))
    again = evaluate("again")
    assert again["auc_retrain"] == 0.25 and again["auc_retrain_from"] == "retrain model"
    assert again["privleak"] == pytest.approx((again["auc"] - 0.25) / 0.25 * 100)

    # Other retrain bytes are another key: scored afresh.
    (retrain / "notes.txt").write_text("retrained again")
    assert evaluate("changed")["auc_retrain"] == first["auc_retrain"]
    assert len(list((tmp_path / "cache" / "muse-auc-retrain").iterdir())) == 2


def test_eval_muse_bad_data_folder_is_one_line(tiny_model_dir: str, tmp_path: Path, capsys) -> None:
    argv = ["eval", "muse", "--model", tiny_model_dir, "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unilogit: error:")


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--max-examples", "-1"], ["--dtype", "fp8"]])
def test_eval_muse_bad_option_is_one_line(option: list[str], tmp_path: Path, capsys) -> None:
    argv = ["eval", "muse", "--model", str(tmp_path), "--data", str(FIXTURES), "--output", str(tmp_path), *option]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unilogit: error: unilogit eval muse:") and option[0] in err[0]


def _dataset_dir(tmp_path: Path, text: str) -> Path:
    (tmp_path / "corpus.json").write_text(json.dumps([{"text": text}]))
    info = {"corpus": {"file_name": "corpus.json", "columns": {"prompt": "text"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return tmp_path


def test_cache_key_follows_config_and_data_bytes(tmp_path: Path) -> None:
    data = _dataset_dir(tmp_path, "Quenby founded Halloway.")
    config = {"dataset": "corpus", "dataset_dir": str(data), "learning_rate": 1e-4, "output_dir": "a"}
    key = cache_key(config)
    assert cache_key({**config, "output_dir": "b"}) == key  # where it is written does not matter
    assert cache_key({**config, "learning_rate": 2e-4}) != key
    _dataset_dir(tmp_path, "Quenby founded Halloway!")
    assert cache_key(config) != key
