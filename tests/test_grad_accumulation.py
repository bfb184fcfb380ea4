"""Two micro-batches of 2 with 2 accumulation steps must give the same update as one batch of 4.

SGD without clipping makes the update proportional to the gradient, so a wrong averaging (a mean of
micro-batch means, or a missing 1/accumulation factor) shows up in the weights; Adam would hide it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_config
from unilogit.stage.entry import run_unlearn_from_config


def _train(model_dir: str, output_dir: Path, method: str, batch: int, accumulation: int, **extra) -> dict:
    config = base_config(
        model_dir,
        output_dir,
        unlearn_method=method,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        **extra,
    )
    run_unlearn_from_config(config)
    return load_file(output_dir / "model.safetensors")


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("ga", {"retain_loss": "nll"}),  # token means on both sides
        ("npo", {"retain_loss": "kl"}),  # a sequence mean on the forget side, with a reference
        ("unilogit", {"retain_loss": "kl", "retain_weight": 0.5}),
    ],
)
def test_two_by_two_equals_one_batch_of_four(
    method: str, extra: dict, memorized_model_dir: str, tmp_path: Path
) -> None:
    start = load_file(Path(memorized_model_dir) / "model.safetensors")
    big = _train(memorized_model_dir, tmp_path / "4x1", method, 4, 1, **extra)
    small = _train(memorized_model_dir, tmp_path / "2x2", method, 2, 2, **extra)
    moved = max(float((big[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-4, "the step changed nothing; the test would prove nothing"
    for key in start:
        torch.testing.assert_close(small[key], big[key], rtol=1e-4, atol=1e-6, msg=f"{method}: {key} differs")
