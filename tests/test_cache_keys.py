"""Caches keyed by what they depend on: the prepared target/retrain models (``benchmarks.prepare.cache_key``),
the MUSE drivers' cached evaluations (``eval_key`` in scripts/custom/muse_common.sh), and the folders built
aside and renamed into place (``atomic.atomic_folder``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from unilogit import fingerprint as fingerprint_module
from unilogit.atomic import atomic_folder
from unilogit.benchmarks import prepare
from unilogit.benchmarks.prepare import cache_key
from unilogit.config import PREPARED_MARKER
from unilogit.errors import ConfigError
from unilogit.fingerprint import fingerprint

# --------------------------------------------------------------------------------------------- atomic_folder


def test_atomic_folder_renames_a_complete_build_into_place(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_folder(target, "done") as tmp:
        assert tmp.parent == tmp_path and tmp != target and not target.exists()
        (tmp / "weights").write_text("w")
        (tmp / "done").write_text("")
    assert sorted(p.name for p in target.iterdir()) == ["done", "weights"]
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~_umask()  # as mkdir makes it, not mkdtemp's 0700
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary sibling left


def test_atomic_folder_leaves_nothing_after_an_error_or_without_its_marker(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(target, "done") as tmp:
        (tmp / "done").write_text("")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="wrote no done"), atomic_folder(target, "done") as tmp:
        (tmp / "weights").write_text("w")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_keeps_a_complete_target_and_replaces_an_unfinished_one(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "done").write_text("first")  # another process finished first: kept
    with atomic_folder(target, "done") as tmp:
        (tmp / "done").write_text("second")
    assert (target / "done").read_text() == "first"
    (target / "done").unlink()
    (target / "half").write_text("")  # an interrupted build without the marker: replaced
    with atomic_folder(target, "done") as tmp:
        (tmp / "done").write_text("third")
    assert sorted(p.name for p in target.iterdir()) == ["done"] and (target / "done").read_text() == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# --------------------------------------------------------------------------------------- prepare.cache_key


def _setup(tmp_path: Path) -> dict:
    """A config with a local base model folder and a local dataset."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.json").write_text(json.dumps([{"text": "Quenby founded Halloway."}]))
    info = {"corpus": {"file_name": "corpus.json", "columns": {"prompt": "text"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    model = tmp_path / "base"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "config.json").write_text("{}")
    return {"model_name_or_path": str(model), "dataset": "corpus", "dataset_dir": str(data), "learning_rate": 1e-4}


def test_prepare_key_follows_config_data_and_base_model_bytes(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    data, model = Path(config["dataset_dir"]), Path(config["model_name_or_path"])
    key = cache_key(config)
    assert cache_key({**config, "output_dir": "elsewhere", "overwrite_output_dir": True}) == key
    assert cache_key({**config, "learning_rate": 2e-4}) != key

    (data / "corpus.json").write_text(json.dumps([{"text": "Quenby founded Halloway!"}]))
    assert cache_key(config) != key
    (data / "corpus.json").write_text(json.dumps([{"text": "Quenby founded Halloway."}]))
    assert cache_key(config) == key  # by content: the same bytes give the same key
    info = json.loads((data / "dataset_info.json").read_text())
    info["corpus"]["columns"] = {"prompt": "text", "response": "text"}  # the same file, read otherwise
    (data / "dataset_info.json").write_text(json.dumps(info))
    assert cache_key(config) != key
    info["corpus"]["columns"] = {"prompt": "text"}
    (data / "dataset_info.json").write_text(json.dumps(info))
    assert cache_key(config) == key

    (model / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)  # other weights, same names and size
    changed = cache_key(config)
    assert changed != key
    (model / "muse_eval-mini-abc").mkdir()  # results cached inside the model folder are not the model
    (model / "muse_eval-mini-abc" / "muse_results.json").write_text("{}")
    assert cache_key(config) == changed
    hub = {**config, "model_name_or_path": "org/base"}
    assert cache_key(hub) != cache_key({**hub, "model_name_or_path": "org/other"})  # a hub id by its name


def test_prepare_trains_into_place_or_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prepare_model`` runs ``unilogit train`` into a temporary sibling (here a stand-in that writes one file, or
    fails) and renames it into place only on success; a second call reuses it without training."""
    config = {**_setup(tmp_path), "seed": 7}
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("UNILOGIT_CACHE", str(tmp_path / "cache"))
    runs: list[list[str]] = []

    def train(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        runs.append(cmd)
        output = Path(next(arg for arg in cmd if arg.startswith("output_dir=")).split("=", 1)[1])
        (output / "model.safetensors").write_text("trained")
        return subprocess.CompletedProcess(cmd, 1 if "learning_rate=9" in cmd else 0)

    monkeypatch.setattr(prepare.subprocess, "run", train)
    with pytest.raises(ConfigError, match="target: training with .* failed"):
        prepare.prepare_model("target", path, ["learning_rate=9"])
    assert not any((tmp_path / "cache" / "prepared").iterdir())  # nothing half-made left
    folder = prepare.prepare_model("target", path)
    assert folder.name == f"target-{cache_key(config)}" and (folder / "model.safetensors").read_text() == "trained"
    marker = json.loads((folder / PREPARED_MARKER).read_text())
    assert (marker["config"], marker["seed"]) == (str(path), config["seed"])  # eval muse reads the seed from it
    assert prepare.prepare_model("target", path) == folder and len(runs) == 2  # reused, not trained again
    (folder / PREPARED_MARKER).write_text(json.dumps({"config": str(path), "overrides": []}))  # an older marker
    assert prepare.prepare_model("target", path) == folder and len(runs) == 2
    assert json.loads((folder / PREPARED_MARKER).read_text())["seed"] == 7  # given its seed when reused
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


# ---------------------------------------------------------------------------- muse_common.sh eval_key


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A checkout to run the drivers' ``eval_key`` in: a copy of the package's source, the venv, a data folder and
    two local models (the one evaluated and the retrained one)."""
    shutil.copytree(ROOT / "src" / "unilogit", tmp_path / "src" / "unilogit", ignore=shutil.ignore_patterns("*.pyc"))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    for fill, relative in enumerate(("data/raw/forget.json", "target/model.safetensors", "retrain/model.safetensors")):
        (tmp_path / relative).parent.mkdir(parents=True)
        (tmp_path / relative).write_bytes(bytes([fill]) * 32)
    return tmp_path


def _eval_key(tree: Path, model: str = "target", **env: str) -> str:
    """``eval_key MODEL`` of scripts/custom/muse_common.sh, run by bash in ``tree`` (the function alone: the file
    itself sets the project up when sourced)."""
    script = (
        f'source <(sed -n "/^eval_key()/,/^}}/p" {ROOT}/scripts/custom/muse_common.sh)\n'
        'EVAL_ARGS=(--data "$EVAL_DATA" ${MAX_EXAMPLES:+--max-examples "$MAX_EXAMPLES"})\n'
        'eval_key "$1"'
    )
    # The tree's copy of the package first, so that its evaluator's source is the one keyed.
    variables = {"EVAL_DATA": "data", "RETRAIN": "retrain", "TOKENIZER": "", "PYTHONPATH": str(tree / "src"), **env}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script, "bash", model],
        cwd=tree, env={**os.environ, **variables}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and len(result.stdout.strip()) == 16, result.stderr
    return result.stdout.strip()


def _changed(path: Path) -> bytes:
    """Change ``path``'s bytes (source code by a comment, so that it still parses; anything else keeping its
    size); return the old ones."""
    old = path.read_bytes()
    path.write_bytes(old + b"# changed\n" if path.suffix == ".py" else bytes([old[0] ^ 1]) + old[1:])
    return old


def test_driver_eval_key_follows_the_bytes_of_models_data_and_evaluator(tree: Path) -> None:
    key = _eval_key(tree)
    (tree / "target" / "muse_eval-mini-x").mkdir()  # the cached evaluation itself lives inside the model
    (tree / "target" / "muse_eval-mini-x" / "muse_results.json").write_text("{}")
    os.utime(tree / "retrain" / "model.safetensors", (1, 1))  # a new time, the same bytes
    assert _eval_key(tree) == key

    for changed in (
        tree / "retrain" / "model.safetensors",
        tree / "target" / "model.safetensors",
        tree / "data" / "raw" / "forget.json",
        tree / "src" / "unilogit" / "evaluation" / "common.py",  # imported by the evaluator, not named by the driver
    ):
        old = _changed(changed)
        assert _eval_key(tree) != key, f"{changed.relative_to(tree)} changed, the key did not"
        changed.write_bytes(old)

    assert _eval_key(tree, model="retrain") != key  # the model evaluated
    assert _eval_key(tree, TOKENIZER="meta-llama/Llama-2-7b-hf") != key
    assert _eval_key(tree, MAX_EXAMPLES="5") != key
    hub = _eval_key(tree, model="muse-bench/MUSE-news_target", RETRAIN="muse-bench/MUSE-news_retrain")
    assert hub != _eval_key(tree, model="muse-bench/MUSE-books_target", RETRAIN="muse-bench/MUSE-news_retrain")


# ------------------------------------------------------------------------------------------ large-file memo


def test_large_file_digests_are_remembered_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNILOGIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint_module, "MEMO_MIN_BYTES", 4)
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"first weights")
    first = fingerprint(weights.parent, shallow=True)
    memo_file = tmp_path / "cache" / "file-digests.json"
    memo = json.loads(memo_file.read_text())
    assert list(memo) == [str(weights.resolve())]

    # While size, mtime and inode match, the remembered digest is used and the file is not read again.
    memo[str(weights.resolve())]["sha256"] = "0" * 64
    memo_file.write_text(json.dumps(memo))
    assert fingerprint(weights.parent, shallow=True) != first

    # New bytes (a new size or mtime) are read and replace the entry; the key is the content's again.
    weights.write_bytes(b"second weights!")
    second = fingerprint(weights.parent, shallow=True)
    assert second != first and json.loads(memo_file.read_text())[str(weights.resolve())]["sha256"] != "0" * 64
    weights.write_bytes(b"first weights")
    assert fingerprint(weights.parent, shallow=True) == first

    # Small files never enter the memo.
    (tmp_path / "data.json").write_text("[]")
    fingerprint(tmp_path / "data.json")
    assert str((tmp_path / "data.json").resolve()) not in json.loads(memo_file.read_text())
