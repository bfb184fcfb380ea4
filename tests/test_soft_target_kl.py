"""soft_target_kl_model: the KL between the forget term's soft target and a retrained model, logged per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from conftest import base_config
from unilogit import losses
from unilogit.errors import ConfigError
from unilogit.losses import undial_target_log_probs
from unilogit.stage.args import UnlearningArguments
from unilogit.stage.entry import run_unlearn_from_config
from unilogit.stage.methods import METHODS


class GrabForgetSet(TrainerCallback):
    """Keeps the tokenized forget set the trainer trains on."""

    def __init__(self) -> None:
        self.forget = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.forget = train_dataloader.dataset.forget


@pytest.fixture
def retrain_dir(tiny_model_dir: str, tmp_path: Path) -> str:
    """The tiny model with every weight perturbed: a stand-in for a retrained model, same vocabulary."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    out = tmp_path / "retrain"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def _hand_kl(start_dir: str, retrain_dir: str, forget, method: str, gamma: float) -> float:
    """Token mean of Σ_v p_r (log p_r − log p̃) over the forget set, one example at a time."""
    start = AutoModelForCausalLM.from_pretrained(start_dir).eval()
    retrain = AutoModelForCausalLM.from_pretrained(retrain_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for example in forget:
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor([example["labels"]])
            _, _, y = losses.supervised_index(labels)
            rows = losses.supervised_rows(start(input_ids=ids).logits, labels)
            if method == "undial":
                target = undial_target_log_probs(rows, y, gamma)
            else:
                target = losses.unilogit_target_log_probs(rows, y)
            log_r = F.log_softmax(losses.supervised_rows(retrain(input_ids=ids).logits, labels), dim=-1)
            total += float((log_r.exp() * (log_r - target)).sum())
            count += y.numel()
    return total / count


@pytest.mark.parametrize(("method", "finetuning_type"), [("undial", "full"), ("unilogit", "lora")])
def test_soft_target_kl_is_logged_per_epoch_and_matches_a_hand_computation(
    method: str, finetuning_type: str, tiny_model_dir: str, retrain_dir: str, tmp_path: Path
) -> None:
    grab = GrabForgetSet()
    config = base_config(
        tiny_model_dir,
        tmp_path / "run",
        unlearn_method=method,
        finetuning_type=finetuning_type,
        soft_target_kl_model=retrain_dir,
        max_steps=None,
        num_train_epochs=2,
        learning_rate=1e-2,
        **({"lora_rank": 4, "lora_alpha": 8, "lora_target": "all"} if finetuning_type == "lora" else {}),
    )
    run_unlearn_from_config(config, callbacks=[grab])

    rows = [json.loads(line) for line in (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()]
    kl_rows = [row for row in rows if "soft_target_kl" in row]
    assert [round(row.get("epoch", 0.0), 6) for row in kl_rows] == [0.0, 1.0, 2.0]
    assert all("soft_target_kl" not in row for row in rows if "loss" in row)  # lines of their own
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert [entry["soft_target_kl"] for entry in state["log_history"] if "soft_target_kl" in entry] == [
        row["soft_target_kl"] for row in kl_rows
    ]

    expected = _hand_kl(tiny_model_dir, retrain_dir, grab.forget, method, UnlearningArguments().undial_gamma)
    assert kl_rows[0]["soft_target_kl"] == pytest.approx(expected, rel=1e-4)
    if method == "unilogit":  # its target follows the model, so the KL moves as it trains
        assert kl_rows[-1]["soft_target_kl"] != kl_rows[0]["soft_target_kl"]
    else:  # UnDIAL's teacher is the frozen starting model's
        assert kl_rows[-1]["soft_target_kl"] == pytest.approx(kl_rows[0]["soft_target_kl"], rel=1e-4)


def test_undial_target_is_the_teacher_of_undial_loss() -> None:
    torch.manual_seed(0)
    ref, logits = torch.randn(6, 11), torch.randn(6, 11)
    labels = torch.randint(0, 11, (1, 7))
    padded = torch.cat([ref[None], torch.zeros(1, 1, 11)], dim=1)
    student = torch.cat([logits[None], torch.zeros(1, 1, 11)], dim=1)
    _, _, y = losses.supervised_index(labels)
    teacher = undial_target_log_probs(ref, y, 3.0).exp()
    cross_entropy = -(teacher * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    assert losses.undial_loss(student, padded, labels, 3.0) == pytest.approx(float(cross_entropy), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_per_row_forward_kl_is_the_retain_kl_and_the_formula(dtype: torch.dtype) -> None:
    """soft_target_kl sums ``losses.forward_kl_rows``, the retain term's forward KL per row: it matches the formula
    in float64, with normalised log-probabilities as logits too, and its mean is ``kl_retain_loss``."""
    torch.manual_seed(0)
    logits, ref = (3 * torch.randn(2, 5, 37)).to(dtype), (3 * torch.randn(2, 5, 37)).to(dtype)
    labels = torch.tensor([[-100, 4, 9, -100, 2], [-100, -100, 1, 5, 7]])
    rows, ref_rows = losses.supervised_rows(logits, labels), losses.supervised_rows(ref, labels)
    log_p, log_r = F.log_softmax(rows.double(), -1), F.log_softmax(ref_rows.double(), -1)
    expected = (log_r.exp() * (log_r - log_p)).sum(-1)
    assert torch.allclose(losses.forward_kl_rows(rows, ref_rows).double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(losses.forward_kl_rows(log_p.float(), ref_rows).double(), expected, rtol=1e-5, atol=1e-6)
    retain = losses.kl_retain_loss(logits, ref, labels)
    assert float(losses.forward_kl_rows(rows, ref_rows).mean()) == pytest.approx(float(retain), rel=1e-6)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].soft_target is None))
def test_soft_target_kl_model_is_refused_for_methods_without_soft_targets(method: str) -> None:
    with pytest.raises(ConfigError) as err:
        UnlearningArguments(unlearn_method=method, soft_target_kl_model="saves/retrain")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"soft_target_kl_model: {method} has no soft targets")


def test_soft_target_kl_model_must_name_a_model() -> None:
    with pytest.raises(ConfigError, match=r"^soft_target_kl_model: ' ' is not valid"):
        UnlearningArguments(unlearn_method="undial", soft_target_kl_model=" ")
