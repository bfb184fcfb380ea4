"""The reference model of full fine-tuning: frozen, without gradients or optimizer state, in the compute
dtype, optionally offloaded to the CPU; and no reference at all where no term needs one."""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, TrainerCallback

from conftest import base_config
from unilogit.stage.entry import run_unlearn_from_config


def _live_llamas() -> list[LlamaForCausalLM]:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        return [obj for obj in gc.get_objects() if isinstance(obj, LlamaForCausalLM)]


class InspectReference(TrainerCallback):
    """Finds the live Llama that is not the policy and records its state at the start and after a step."""

    def __init__(self) -> None:
        self.reference: LlamaForCausalLM | None = None
        self.policy_dtype: torch.dtype | None = None
        self.in_optimizer = False
        self.grads_after_step: list[torch.Tensor | None] = []
        self.optimizer_state_after_step = False

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        others = [m for m in _live_llamas() if m is not model]
        assert len(others) <= 1, f"{len(others)} extra models alive"
        self.reference = others[0] if others else None
        self.policy_dtype = next(model.parameters()).dtype
        if self.reference is not None:
            ids = {id(p) for p in self.reference.parameters()}
            self.in_optimizer = any(id(p) in ids for group in optimizer.param_groups for p in group["params"])

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.reference is not None:
            params = list(self.reference.parameters())
            self.grads_after_step = [p.grad for p in params]
            self.optimizer_state_after_step = any(p in optimizer.state for p in params)


def _first_loss(output_dir: Path) -> float:
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return next(row["loss"] for row in rows if "loss" in row)


def test_full_reference_is_frozen_in_compute_dtype(memorized_model_dir: str, tmp_path: Path) -> None:
    probe = InspectReference()
    config = base_config(memorized_model_dir, tmp_path, unlearn_method="npo", max_steps=1, bf16=True)
    run_unlearn_from_config(config, callbacks=[probe])
    ref = probe.reference
    assert ref is not None
    assert not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    # bf16 is the compute dtype; llamafactory keeps the trained copy's weights in fp32 under full tuning.
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert probe.policy_dtype == torch.float32
    assert not probe.in_optimizer
    assert probe.grads_after_step and all(g is None for g in probe.grads_after_step)
    assert not probe.optimizer_state_after_step


def test_ref_offload_gives_the_same_step(memorized_model_dir: str, tmp_path: Path) -> None:
    losses = {}
    for offload in (False, True):
        probe = InspectReference()
        out = tmp_path / str(offload)
        config = base_config(memorized_model_dir, out, unlearn_method="undial", max_steps=2, ref_offload=offload)
        run_unlearn_from_config(config, callbacks=[probe])
        assert probe.reference is not None and not probe.in_optimizer
        assert {p.device.type for p in probe.reference.parameters()} == {"cpu"}
        losses[offload] = _first_loss(out)
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)


@pytest.mark.parametrize("method", ["unilogit", "npo"])
def test_a_reference_is_loaded_only_where_a_term_needs_it(method: str, tiny_model_dir: str, tmp_path: Path) -> None:
    """With ``retain_loss: nll`` Unilogit needs no reference (GA and SimNPO: see test_unlearn_e2e); NPO does."""
    probe = InspectReference()
    config = base_config(tiny_model_dir, tmp_path, unlearn_method=method, retain_loss="nll", max_steps=1)
    run_unlearn_from_config(config, callbacks=[probe])
    assert (probe.reference is not None) == (method == "npo")
