"""The paper-scale path's evaluation and tokenizer options, rehearsed on CPU with tiny models saved as muse-bench's
are (weights and config, no tokenizer files): ``--tokenizer`` / ``tokenizer_name_or_path``, ``--dtype auto``,
the GPU placement plan, the out-of-memory batch back-off, PrivLeak's reference AUC, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, base_config, run_cli
from unilogit import cli
from unilogit.errors import ConfigError
from unilogit.evaluation.common import Batches
from unilogit.models import (
    has_tokenizer,
    load_for_eval,
    load_tokenizer,
    model_bytes,
    plan_placement,
    resolve_dtype,
    tokenizer_source,
)

MUSE = ROOT / "tests" / "fixtures" / "muse"
RWKU = ROOT / "tests" / "fixtures" / "rwku"


@pytest.fixture(scope="module")
def split_model(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """``(model, retrain, tokenizer)``: two copies of the tiny Llama without tokenizer files, and its tokenizer
    alone in a third folder."""
    root = tmp_path_factory.mktemp("paper")
    folders = {name: root / name for name in ("target", "retrain", "tokenizer")}
    weights = ("config.json", "generation_config.json", "model.safetensors")
    for path in Path(tiny_model_dir).iterdir():
        for name in ("target", "retrain") if path.name in weights else ("tokenizer",):
            folders[name].mkdir(exist_ok=True)
            shutil.copy(path, folders[name] / path.name)
    assert not has_tokenizer(folders["target"]) and has_tokenizer(folders["tokenizer"])
    return str(folders["target"]), str(folders["retrain"]), str(folders["tokenizer"])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unilogit: error:"), err[-2000:]
    return lines[0]


def test_eval_muse_of_a_tokenizerless_model_with_tokenizer(split_model: tuple[str, str, str], tmp_path: Path) -> None:
    model, retrain, tokenizer = split_model
    out = tmp_path / "eval"
    argv = ["eval", "muse", "--model", model, "--tokenizer", tokenizer, "--data", str(MUSE), "--retrain", retrain]
    result = run_cli(*argv, "--max-examples", "2", "--output", str(out), "--name", "target")
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((out / "muse_results.json").read_text())["target"]
    assert row["tokenizer"] == tokenizer and row["dtype"] == "float32"  # --dtype auto on the CPU
    assert row["n"]["verbmem"] == 2 and 0 <= row["verbmem_f"] <= 100
    # The retrained model (the same weights, also without a tokenizer) was scored with the model's tokenizer.
    assert row["auc_retrain_from"] == "retrain model" and row["auc_retrain"] == row["auc"]
    assert row["privleak"] == pytest.approx(0.0) and row["kl_to_retrain"] == pytest.approx(0.0, abs=1e-6)


def test_eval_of_a_tokenizerless_model_without_tokenizer_is_one_line(
    split_model: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, retrain, _ = split_model
    base = ["--model", model, "--output", str(tmp_path / "out")]
    assert cli.main(["eval", "muse", *base, "--data", str(MUSE), "--retrain", retrain]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"model {model} has no tokenizer files" in line and "--tokenizer" in line and "Llama-2-7b-hf" in line
    assert cli.main(["eval", "rwku", *base, "--data", str(RWKU)]) == 2
    assert "has no tokenizer files" in _one_line(capsys.readouterr().err)


def test_privleak_on_local_data_without_retrain_is_na_with_one_line(
    split_model: tuple[str, str, str], tmp_path: Path
) -> None:
    """The issue's command: a tokenizer-less checkpoint, its tokenizer, local data and no retrained model. Every
    metric but PrivLeak is scored; PrivLeak is n/a (no corpus constant fits local data) and one line says why."""
    model, _, tokenizer = split_model
    out = tmp_path / "out"
    result = run_cli("eval", "muse", "--model", model, "--tokenizer", tokenizer, "--data", str(MUSE), "--output",
                     str(out), "--name", "local", "--max-examples", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if "PrivLeak is n/a" in line]
    assert len(notes) == 1 and "pass --retrain RETRAIN_MODEL" in notes[0]
    row = json.loads((out / "muse_results.json").read_text())["local"]
    assert row["privleak"] is None and row["auc_retrain"] is None and 0 <= row["auc"] <= 1
    assert row["verbmem_f"] is not None and row["kl_to_retrain"] is None
    assert "| local |" in result.stdout


def test_unreachable_hub_ids_are_one_line(split_model: tuple[str, str, str], tmp_path: Path) -> None:
    model, retrain, tokenizer = split_model
    offline = {"HF_HUB_OFFLINE": "1"}
    common = ["eval", "muse", "--data", str(MUSE), "--retrain", retrain, "--output", str(tmp_path)]
    for flags, named in (
        (["--model", model, "--tokenizer", "meta-llama/Llama-2-7b-hf"], "tokenizer meta-llama/Llama-2-7b-hf"),
        (["--model", "muse-bench/MUSE-news_target", "--tokenizer", tokenizer], "model muse-bench/MUSE-news_target"),
    ):
        result = run_cli(*common, *flags, env=offline)
        assert result.returncode == 2, result.stderr[-3000:]
        line = _one_line(result.stderr)
        assert f"{named} is not on this machine and the hub cannot be reached" in line and "download it" in line


def test_training_a_tokenizerless_model_with_tokenizer_name_or_path(
    split_model: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Full fine-tuning with a KL retain term, so the frozen reference model is loaded with the named tokenizer."""
    model, _, tokenizer = split_model
    out = tmp_path / "out"
    config = base_config(model, out, unlearn_method="npo", retain_loss="kl", max_steps=2)
    path = tmp_path / "npo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "has no tokenizer files" in line and "tokenizer_name_or_path=" in line

    assert cli.main(["train", str(path), f"tokenizer_name_or_path={tokenizer}"]) == 0
    assert has_tokenizer(out)  # the output folder carries the tokenizer, so it evaluates on its own
    trained, loaded = load_for_eval(str(out))
    assert loaded.get_vocab() == load_tokenizer(model, tokenizer).get_vocab()
    assert trained.get_output_embeddings().weight.size(0) == len(loaded)


def test_rwku_run_passes_the_tokenizer_to_training(split_model: tuple[str, str, str], tmp_path: Path) -> None:
    model, _, tokenizer = split_model
    config = ROOT / "examples" / "rwku" / "ga.yaml"
    argv = ["rwku", "run", str(config), "--model", model, "--tokenizer", tokenizer, "--data", str(RWKU)]
    argv += ["--targets", "1", "--no-utility", "--max-examples", "1", "--output", str(tmp_path / "run")]
    assert cli.main([*argv, "template=chatml", "max_steps=1"]) == 0
    row = json.loads((tmp_path / "run" / "rwku_results.json").read_text())["ga"]
    assert row["tokenizer"] == tokenizer and row["dtype"] == "float32"  # --dtype auto on the CPU
    assert has_tokenizer(tmp_path / "run" / "1_Ada_Lovelace" / "model")
    assert row["forget_all"] is not None


def test_tokenizer_source(tiny_model_dir: str, split_model: tuple[str, str, str], tmp_path: Path) -> None:
    model, _, tokenizer = split_model
    assert tokenizer_source(tiny_model_dir) == tiny_model_dir
    assert tokenizer_source(model, tokenizer) == tokenizer  # a named one wins
    assert tokenizer_source(tiny_model_dir, tokenizer) == tokenizer
    # A LoRA output folder: its own tokenizer when it has one, else its base model's.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_model_dir}))
    assert tokenizer_source(str(adapter)) == tiny_model_dir
    (adapter / "tokenizer.json").write_text((Path(tokenizer) / "tokenizer.json").read_text())
    assert tokenizer_source(str(adapter)) == str(adapter)
    # muse-bench's hub models ship none: MUSE loads Llama-2's.
    assert tokenizer_source("muse-bench/MUSE-news_target") == "meta-llama/Llama-2-7b-hf"
    assert tokenizer_source("org/model") == "org/model"
    with pytest.raises(ConfigError, match=r"^--tokenizer: .*nowhere does not exist"):
        tokenizer_source(model, str(tmp_path / "nowhere"))


def test_dtype_auto_and_the_placement_plan(tiny_model_dir: str) -> None:
    assert resolve_dtype("auto", on_gpu=False) == "float32"
    assert resolve_dtype("auto", on_gpu=True) == "bfloat16"
    assert resolve_dtype("auto", on_gpu=True, bf16=False) == "float16"
    assert resolve_dtype("float16", on_gpu=False) == "float16"
    with pytest.raises(ConfigError, match="fp8"):
        resolve_dtype("fp8", on_gpu=False)
    model, _ = load_for_eval(tiny_model_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.device.type == "cpu"

    assert plan_placement(device_count=0, free_bytes=0, model_bytes=1) == "cpu"
    assert plan_placement(device_count=1, free_bytes=100, model_bytes=80) == "cuda"  # 80% of free memory fits
    assert plan_placement(device_count=1, free_bytes=100, model_bytes=81) == "auto"
    assert plan_placement(device_count=4, free_bytes=100, model_bytes=50) == "cuda"  # one GPU is enough
    assert plan_placement(device_count=2, free_bytes=100, model_bytes=150) == "auto"  # device_map over both
    params = sum(p.numel() for p in model.parameters())
    assert model_bytes(tiny_model_dir, torch.float32) == 4 * params
    assert model_bytes(tiny_model_dir, torch.bfloat16) == 2 * params


def test_batches_halve_on_out_of_memory_and_keep_the_order() -> None:
    sizes: list[int] = []

    def square(chunk: list[int]) -> list[int]:
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [x * x for x in chunk]

    items = list(range(11))
    with Batches(8, len(items), "test") as batches:
        assert batches.map(square, items) == [x * x for x in items]
        assert batches.size == 2  # kept for the batches after the one that failed
    assert sizes == [8, 4, 2, 2, 2, 2, 2, 1]
    with Batches(8, len(items), "test") as batches:  # no error: fixed batches, as on the CPU
        assert batches.map(lambda chunk: [len(chunk)] * len(chunk), items) == [8] * 8 + [3] * 3

    def never(chunk: list[int]) -> list[int]:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with Batches(2, 3, "VerbMem") as batches, pytest.raises(ConfigError, match=r"^VerbMem: out of GPU memory"):
        batches.map(never, [1, 2, 3])
