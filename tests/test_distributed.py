"""Two CPU processes under torchrun (gloo), through the ``unilogit`` CLI, take the same first step as one.

The global batch is the same (4 = 1 × 4 = 2 × 2), so the logged loss and, with plain SGD, the updated
weights must agree: this checks the cross-rank item counts of the accumulation weighting, the gradient
averaging across ranks, and the sharding of paired batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from conftest import base_config, run_cli


def _train(model_dir: str, out: Path, processes: int) -> tuple[float, dict[str, torch.Tensor]]:
    config = base_config(
        model_dir,
        out,
        unlearn_method="npo",  # a sequence mean with a reference on the forget side
        retain_loss="nll",  # a token mean, and a first-step loss that depends on the data (NPO starts at 2/β·ln 2)
        per_device_train_batch_size=4 // processes,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        ddp_timeout=120,
    )
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(processes), "OMP_NUM_THREADS": "1"} if processes > 1 else {}
    result = run_cli("train", str(path), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    if processes > 1:
        assert f"launching {processes} processes" in result.stderr
    rows = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    (first,) = [row for row in rows if "loss" in row]
    return first["loss"], load_file(out / "model.safetensors")


def test_two_processes_take_the_same_first_step_as_one(memorized_model_dir: str, tmp_path: Path) -> None:
    start = load_file(Path(memorized_model_dir) / "model.safetensors")
    one_loss, one = _train(memorized_model_dir, tmp_path / "one", 1)
    two_loss, two = _train(memorized_model_dir, tmp_path / "two", 2)
    assert abs(two_loss - one_loss) <= 1e-5 * abs(one_loss), (one_loss, two_loss)
    assert max(float((one[k] - start[k]).abs().max()) for k in start) > 1e-4, "the step changed nothing"
    for key in start:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=f"{key} differs")
