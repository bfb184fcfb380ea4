"""The paper-scale recipes (examples/paper/) and the drivers' plumbing around them, with no training.

Every recipe passes `unilogit train`'s own checks; the MUSE ones cut 2,048-token blocks with an effective batch
of 32; the drivers keep each recipe's effective batch on any process count, register a local MUSE folder's
datasets for llamafactory, refuse bad input in one line, and docs/REPRODUCE.md names only files that exist.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PAPER = ROOT / "examples" / "paper"
MUSE_METHODS = ("ga_rt", "npo_rt", "simnpo_rt", "undial", "unilogit_rt")
RWKU_METHODS = ("ga", "npo", "simnpo", "undial", "unilogit")
RECIPES = [PAPER / f"muse_{corpus}" / f"{m}.yaml" for corpus in ("news", "books") for m in MUSE_METHODS] + [
    PAPER / "rwku" / f"{m}.yaml" for m in RWKU_METHODS
]


def _recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_driver_method_has_a_paper_recipe() -> None:
    from unilogit.sweep.config import load_sweep

    recipes = [p for p in PAPER.rglob("*.yaml") if p.parent.name != "sweeps"]
    assert sorted(recipes) == sorted(RECIPES)
    for sweep in (PAPER / "sweeps").glob("*.yaml"):  # the Pareto figures' sweeps, over these recipes
        configs = {method.config for method in load_sweep(sweep).methods.values()}
        assert configs and all(config.startswith("examples/paper/") for config in configs)
    for method in RWKU_METHODS:
        assert (ROOT / "scripts" / "custom" / f"run_{method}_rwku.sh").is_file()
    assert "simnpo" in (ROOT / "scripts" / "custom" / "run_all_rwku.sh").read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_recipe_passes_the_config_checks(path: Path, tiny_model_dir: str, tmp_path: Path) -> None:
    from unilogit.config import load_config
    from unilogit.launch import resolve_config
    from unilogit.stage.entry import parse_unlearn_config

    text = path.read_text()
    assert text.startswith("# ") and "Sources" in text, "each recipe says where its numbers come from"
    # The run as a driver starts it on this machine: a local model, no DeepSpeed in-process, fp32 on the CPU.
    argv = [str(path), f"model_name_or_path={tiny_model_dir}", f"tokenizer_name_or_path={tiny_model_dir}",
            f"output_dir={tmp_path / 'out'}", "deepspeed=null", "bf16=false",
            f"dataset_dir={ROOT / 'data'}"]  # fmt: skip
    if path.parent.name == "rwku":
        argv.append("dataset=example_forget_text")  # `rwku run` writes the real one per target
    unlearning_args, _, data_args, training_args, finetuning_args, _ = parse_unlearn_config(
        resolve_config(load_config(argv))
    )
    recipe = _recipe(path)
    assert unlearning_args.unlearn_method == recipe["unlearn_method"]
    assert finetuning_args.finetuning_type == "full"
    assert training_args.learning_rate == recipe["learning_rate"]
    assert (ROOT / recipe["deepspeed"]).is_file() and recipe["deepspeed"].endswith("ds_z3_config.json")
    assert recipe["bf16"] is True
    if path.parent.name.startswith("muse"):
        assert data_args.packing and recipe["cutoff_len"] == 2048, "MUSE's 2,048-token blocks"
        assert recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"] == 32
        assert recipe["num_train_epochs"] == 10
    else:
        assert recipe["cutoff_len"] == 512 and recipe["num_train_epochs"] == 3
        assert "retain_loss" not in recipe and "retain_dataset" not in recipe, "RWKU has no retain set"


def test_unilogit_muse_news_uses_the_papers_numbers() -> None:
    recipe = _recipe(PAPER / "muse_news" / "unilogit_rt.yaml")
    assert (recipe["learning_rate"], recipe["retain_weight"], recipe["retain_loss"]) == (5e-6, 1.0, "kl")
    assert (recipe["unilogit_target"], recipe["unilogit_divergence"]) == ("current", "reverse")
    assert _recipe(PAPER / "muse_news" / "npo_rt.yaml")["learning_rate"] == 1e-5  # MUSE's baselines


def _bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("NGPUS", "DEEPSPEED", "RECIPE", "BF16", "RUN_DIR")}
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={**full_env, **env}, cwd=ROOT, timeout=120
    )


@pytest.mark.parametrize("ngpus", [1, 2, 4, 8])
def test_drivers_keep_the_effective_batch_on_any_process_count(ngpus: int) -> None:
    mini = [ROOT / "examples" / "muse" / "npo_rt.yaml", ROOT / "examples" / "rwku" / "npo.yaml"]  # batch 4
    recipes = [*RECIPES, *(mini if ngpus <= 4 else [])]
    script = "source scripts/custom/common.sh; " + "; ".join(f"effective_batch_args t {p}" for p in recipes)
    done = _bash(script, {"NGPUS": str(ngpus)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if ngpus == 1:
        assert lines == [], "one process runs the recipe as written"
        return
    for path, line in zip(recipes, lines, strict=True):
        args = dict(item.split("=") for item in line.split())
        recipe = _recipe(path)
        per, accum = int(args["per_device_train_batch_size"]), int(args["gradient_accumulation_steps"])
        assert per * accum * ngpus == recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"]
        assert per <= recipe["per_device_train_batch_size"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MUSE_DATA": "/nowhere/at/all"}, "muse: error: MUSE_DATA=/nowhere/at/all; use mini, news, books or a local"),
        ({"RECIPE": "huge"}, "muse: error: RECIPE=huge; use mini, news or books"),
        ({"NGPUS": "3"}, "muse: error: NGPUS=3 does not divide examples/muse/npo_rt.yaml's effective batch 4"),
        ({"DEEPSPEED": "z9"}, "muse: error: DEEPSPEED=z9; use 0, z3"),
        ({"OVERLAP_EVALS": "yes"}, "muse: error: OVERLAP_EVALS=yes; use 1 (evaluate the references beside"),
        ({"MUSE_DATA": "data/muse_mini", "TARGET_MODEL": "a/b"}, "muse: error: give both TARGET_MODEL and"),
        ({"REFERENCE_SEED": "4x"}, "muse: error: REFERENCE_SEED=4x; use a non-negative integer seed"),
        ({"REFERENCE_SEED": "43", "TARGET_MODEL": "a/b", "RETRAIN_MODEL": "a/c"}, "muse: error: REFERENCE_SEED trains"),
        ({"REFERENCE_OVERRIDES": "epochs20"}, "muse: error: REFERENCE_OVERRIDES: epochs20 is not key=value"),
        ({"REFERENCE_OVERRIDES": "seed=3"}, "muse: error: REFERENCE_OVERRIDES: set the reference models' seed with"),
        (
            {"REFERENCE_OVERRIDES": "num_train_epochs=20", "TARGET_MODEL": "a/b", "RETRAIN_MODEL": "a/c"},
            "muse: error: REFERENCE_OVERRIDES trains",
        ),
        ({"RUN_DIR": "data"}, "muse: error: data exists; choose another RUN_DIR"),
    ],
)
def test_muse_driver_bad_input_is_one_line_and_exit_2(env: dict[str, str], message: str) -> None:
    done = _bash("bash scripts/custom/run_npo_rt_muse.sh", env)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(message), done.stderr


@pytest.mark.parametrize(
    ("env", "arguments"),
    [
        ({}, "muse prepare bf16=false"),
        ({"REFERENCE_SEED": "43"}, "muse prepare bf16=false seed=43"),
        (
            {"REFERENCE_OVERRIDES": " num_train_epochs=20  learning_rate=1e-3 ", "REFERENCE_SEED": "44"},
            "muse prepare bf16=false num_train_epochs=20 learning_rate=1e-3 seed=44",
        ),
    ],
)
def test_the_drivers_prepare_the_reference_models_as_asked(env: dict[str, str], arguments: str) -> None:
    # The CLI replaced by a function that answers with its arguments: what `muse prepare` would be given.
    script = (
        'source scripts/custom/muse_common.sh; echo_args() { echo "target=$*"; }; CLI=echo_args; muse_prepare; '
        'echo "$TARGET"'
    )
    done = _bash(script, {"BF16": "false", **env})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == arguments


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PER_SEED_REFERENCES": "yes"}, "muse: error: PER_SEED_REFERENCES=yes; use 1 (a target and retrain model"),
        ({"PER_SEED_REFERENCES": "1", "REFERENCE_SEED": "7"}, "muse: error: PER_SEED_REFERENCES=1 trains the models"),
        ({"JOBS": "two"}, "muse: error: JOBS=two; use a whole number of drivers at once"),
        ({"JOBS": "0"}, "muse: error: JOBS=0; use a whole number of drivers at once"),
    ],
)
def test_run_all_muse_bad_input_is_one_line_and_exit_2(env: dict[str, str], message: str) -> None:
    done = _bash("bash scripts/custom/run_all_muse.sh", env)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(message), done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RWKU_DATA": "/nowhere/at/all"}, "rwku: error: RWKU_DATA=/nowhere/at/all; use mini, hub or a local"),
        ({"RECIPE": "news"}, "rwku: error: RECIPE=news; use mini or paper"),
    ],
)
def test_rwku_driver_bad_input_is_one_line_and_exit_2(env: dict[str, str], message: str) -> None:
    done = _bash("bash scripts/custom/run_simnpo_rwku.sh", env)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(message), done.stderr


def _muse_folder(root: Path, forget: list[str], retain: list[str]) -> Path:
    for split, texts in (("forget", forget), ("retain1", retain)):
        (root / "raw").mkdir(parents=True, exist_ok=True)
        (root / "raw" / f"{split}.json").write_text(json.dumps([{"text": t} for t in texts]))
    return root


def test_local_muse_folder_is_registered_for_llamafactory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from llamafactory.data.parser import get_dataset_list

    from unilogit import cli
    from unilogit.benchmarks.muse import LOCAL_FORGET, LOCAL_RETAIN
    from unilogit.benchmarks.prepare import cache_key

    folder = _muse_folder(tmp_path / "MUSE-mine", ["Orla Venn built a mill."], ["Piet Skarro sold glass."])
    assert cli.main(["muse", "datasets", str(folder)]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert (printed["forget"], printed["retain"]) == (LOCAL_FORGET, LOCAL_RETAIN)
    dataset_dir = Path(printed["dataset_dir"])
    assert dataset_dir.is_relative_to(ROOT / "saves" / "muse" / "datasets")
    # llamafactory's own reader finds the folder's files through the generated dataset_info.json.
    forget, retain = get_dataset_list([LOCAL_FORGET, LOCAL_RETAIN], str(dataset_dir))
    assert Path(dataset_dir, forget.dataset_name) == folder / "raw" / "forget.json"
    assert Path(dataset_dir, retain.dataset_name) == folder / "raw" / "retain1.json"
    assert (forget.prompt, forget.response) == ("text", None)  # raw text: every token supervised

    # The prepared models' cache key follows the folder's bytes.
    config = {"dataset": f"{LOCAL_FORGET},{LOCAL_RETAIN}", "dataset_dir": str(dataset_dir)}
    key = cache_key(config)
    _muse_folder(folder, ["Orla Venn built a mill!"], ["Piet Skarro sold glass."])
    assert cache_key(config) != key


def test_local_muse_folder_registers_retain2_for_the_reference_models_only(tmp_path: Path) -> None:
    """MUSE's retain2 is seen by the target and the retrained model, never by unlearning; the registration is
    rewritten only when it changes."""
    from unilogit.benchmarks.muse import LOCAL_RETAIN, LOCAL_RETAIN2, register_local

    folder = _muse_folder(tmp_path / "MUSE-mine", ["Orla Venn built a mill."], ["Piet Skarro sold glass."])
    info_file = register_local(folder) / "dataset_info.json"
    assert LOCAL_RETAIN2 not in json.loads(info_file.read_text())
    written = info_file.stat().st_ino
    register_local(folder)  # unchanged: a sweep registers once per point, and the file is left as it is
    assert info_file.stat().st_ino == written
    (folder / "raw" / "retain2.json").write_text(json.dumps([{"text": "Ada Kell mends nets."}]))
    info = json.loads((register_local(folder) / "dataset_info.json").read_text())
    assert info[LOCAL_RETAIN2]["file_name"] == str(folder.resolve() / "raw" / "retain2.json")
    assert info[LOCAL_RETAIN]["file_name"] == str(folder.resolve() / "raw" / "retain1.json")


def test_local_muse_folder_without_raw_splits_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from unilogit import cli

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "forget.json").write_text(json.dumps([{"text": "a"}]))
    assert cli.main(["muse", "datasets", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "retain1.json" in err[0]


def test_reproduce_md_names_only_files_that_exist() -> None:
    text = (ROOT / "docs" / "REPRODUCE.md").read_text()
    # The recipes, sweeps and scripts it names (not outputs such as docs/results/, nor other repositories' paths).
    named = set(re.findall(r"(?<![\w/-])(?:examples|scripts)/[\w./-]+\.(?:yaml|sh|json)\b", text))
    assert any(p.startswith("examples/paper/") for p in named) and any(p.startswith("scripts/custom/") for p in named)
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, missing
    for number in ("58.4", "63.9", "99.8", "55.2", "79.6"):
        assert number in text
    assert "docs/REPRODUCE.md" in (ROOT / "README.md").read_text()
