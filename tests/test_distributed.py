"""Two CPU processes under torchrun (gloo), through the ``unilogit`` CLI, train as one does.

The global batch is the same (4 = 1 × 4 = 2 × 2 = 2 × 1 × 2 accumulation steps), so the logged loss and,
with plain SGD, the updated weights must agree: this checks the cross-rank item counts of the accumulation
weighting, the gradient averaging across ranks, and the sharding of paired batches. Under DeepSpeed ZeRO-3
(on its CPU accelerator, over gloo) it also checks the sharded policy and reference, the reference forward
that every rank runs on every step, and the weights gathered at save time. Tolerances: LOSS_RTOL and the
WEIGHT_* pair below.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from conftest import DATA_DIR, base_config, run_cli

Z3 = "examples/deepspeed/ds_z3_config.json"
# fp32 throughout; the runs differ only in the order of their reductions (ranks, shards, accumulation).
LOSS_RTOL = 1e-5
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5


def _train(model_dir: str, out: Path, processes: int, steps: int = 1, **overrides) -> list[float]:
    """Train through the console script; the loss logged at each step."""
    settings = {
        "unlearn_method": "npo",  # a sequence mean with a reference on the forget side
        "retain_loss": "nll",  # a token mean, and a first-step loss that depends on the data (NPO: 2/β·ln 2)
        "per_device_train_batch_size": 4 // processes,
        "max_steps": steps,
        "optim": "sgd",
        "learning_rate": 1.0,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "ddp_timeout": 120,
    }
    config = base_config(model_dir, out, **{**settings, **overrides})
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    env = {"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a rank that aborts prints its Python stack
    if processes > 1:
        env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(processes))
    result = run_cli("train", str(path), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    if processes > 1:
        assert f"launching {processes} processes" in result.stderr
    if config.get("deepspeed") == Z3:  # weights partitioned as they load, so ZeRO-3 really ran
        assert "Detected DeepSpeed ZeRO-3: activating zero.init()" in result.stderr
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == steps
    return losses


def _assert_same_losses(ours: list[float], reference: list[float]) -> None:
    for step, (a, b) in enumerate(zip(ours, reference, strict=True), start=1):
        assert abs(a - b) <= LOSS_RTOL * abs(b), f"step {step}: {a} vs {b} (all: {ours} vs {reference})"


def _assert_same_weights(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=f"{key} differs")


def test_two_processes_take_the_same_first_step_as_one(memorized_model_dir: str, tmp_path: Path) -> None:
    start = load_file(Path(memorized_model_dir) / "model.safetensors")
    one_loss = _train(memorized_model_dir, tmp_path / "one", 1)
    two_loss = _train(memorized_model_dir, tmp_path / "two", 2)
    _assert_same_losses(two_loss, one_loss)
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max(float((one[k] - start[k]).abs().max()) for k in start) > 1e-4, "the step changed nothing"
    _assert_same_weights(two, one)


def test_zero3_on_two_cpu_processes_trains_as_one_process(memorized_model_dir: str, tmp_path: Path) -> None:
    """Full fine-tuning, NPO (its frozen reference sharded by ZeRO-3 too), 3 steps, with accumulation on the
    ZeRO-3 side; the saved model (16-bit weights gathered at save) loads and holds the same weights."""
    from transformers import AutoModelForCausalLM

    plain = _train(memorized_model_dir, tmp_path / "plain", 1, steps=3)
    zero3 = _train(
        memorized_model_dir, tmp_path / "zero3", 2, steps=3, deepspeed=Z3,
        per_device_train_batch_size=1, gradient_accumulation_steps=2,
    )  # fmt: skip
    assert len(set(plain)) == 3, f"the steps changed nothing: {plain}"
    _assert_same_losses(zero3, plain)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3", dtype=torch.float32)
    _assert_same_weights(loaded.state_dict(), load_file(tmp_path / "plain" / "model.safetensors"))


def test_zero3_with_lora_trains_as_one_process(memorized_model_dir: str, tmp_path: Path) -> None:
    """LoRA: the reference is the adapter-disabled model, under ZeRO-3 a sharded one."""
    lora = {"finetuning_type": "lora", "lora_target": "all"}
    plain = _train(memorized_model_dir, tmp_path / "plain", 1, steps=3, **lora)
    zero3 = _train(memorized_model_dir, tmp_path / "zero3", 2, steps=3, deepspeed=Z3, **lora)
    assert len(set(plain)) == 3, f"the steps changed nothing: {plain}"
    _assert_same_losses(zero3, plain)
    _assert_same_weights(
        load_file(tmp_path / "zero3" / "adapter_model.safetensors"),
        load_file(tmp_path / "plain" / "adapter_model.safetensors"),
    )


def test_llamafactory_stages_run_under_zero3_in_one_cpu_process(tiny_model_dir: str, tmp_path: Path) -> None:
    """``stage: sft`` goes to llamafactory inside the same DeepSpeed set-up: one process, not launched by
    torchrun, gets a process group of one; the gathered weights load."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    config = {
        "stage": "sft", "do_train": True, "model_name_or_path": tiny_model_dir, "finetuning_type": "full",
        "dataset": "example_retain", "dataset_dir": str(DATA_DIR), "template": "chatml", "cutoff_len": 128,
        "output_dir": str(out), "per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_steps": 2,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "deepspeed": Z3,
    }  # fmt: skip
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("train", str(path), env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Detected DeepSpeed ZeRO-3: activating zero.init()" in result.stderr
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert len([row for row in rows if "loss" in row]) == 2
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in start.items()}
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 0, "the steps changed nothing"
