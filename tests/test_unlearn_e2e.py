"""Every method end to end on a tiny Llama, full and LoRA: it trains, saves, reloads, and forgets."""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, TrainerCallback

from conftest import base_config, forget_set_nll
from unilogit.stage.entry import run_unlearn_from_config
from unilogit.stage.methods import METHODS

LEARNING_RATE = {"full": 2e-3, "lora": 2e-2}


class CountModels(TrainerCallback):
    """Counts live Llama models once training starts: the policy, plus the reference if one was built."""

    def __init__(self) -> None:
        self.count: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        gc.collect()
        with warnings.catch_warnings():  # isinstance on some deprecated torch module attributes warns
            warnings.simplefilter("ignore")
            self.count = sum(isinstance(obj, LlamaForCausalLM) for obj in gc.get_objects())


def _reload(output_dir: Path, base_dir: str, finetuning_type: str) -> torch.nn.Module:
    if finetuning_type == "lora":
        from peft import PeftModel

        assert (output_dir / "adapter_model.safetensors").is_file()
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), output_dir)
    assert (output_dir / "model.safetensors").is_file()
    return AutoModelForCausalLM.from_pretrained(output_dir)


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_saves_reloads_and_forgets(
    method: str, finetuning_type: str, memorized_model_dir: str, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(memorized_model_dir)
    before = forget_set_nll(AutoModelForCausalLM.from_pretrained(memorized_model_dir), tokenizer)
    counter = CountModels()
    config = base_config(
        memorized_model_dir,
        tmp_path,
        unlearn_method=method,
        finetuning_type=finetuning_type,
        learning_rate=LEARNING_RATE[finetuning_type],
        max_steps=6,
        lora_rank=8,
        lora_alpha=16,
        lora_target="all",
    )
    if finetuning_type == "full":
        config = {k: v for k, v in config.items() if not k.startswith("lora_")}
    run_unlearn_from_config(config, callbacks=[counter])

    log = _training_rows(tmp_path)
    assert [row["current_steps"] for row in log] == list(range(1, 7))
    assert all("forget_loss" in row and "retain_loss" in row for row in log)
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in log)
    if method == "npo":
        assert all("npo_log_ratio" in row for row in log)

    after = forget_set_nll(_reload(tmp_path, memorized_model_dir, finetuning_type), tokenizer)
    assert after > before + 0.1, f"{method}/{finetuning_type}: forget NLL {before:.3f} -> {after:.3f}"

    # unilogit and npo use a reference; retain_loss defaults to kl for unilogit, so it always does.
    needs_reference = METHODS[method].needs_forget_reference(_args(method)) or method == "unilogit"
    expected = 2 if finetuning_type == "full" and needs_reference else 1
    assert counter.count == expected, f"{counter.count} Llama models alive during {method}/{finetuning_type}"


def _training_rows(output_dir: Path) -> list[dict]:
    """trainer_log.jsonl rows of training steps (llamafactory adds a final summary row without a loss)."""
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]


def _args(method: str):
    from unilogit.stage.args import UnlearningArguments

    return UnlearningArguments(unlearn_method=method, retain_dataset="example_retain")


def test_raw_text_forget_set_trains(tiny_model_dir: str, tmp_path: Path) -> None:
    run_unlearn_from_config(base_config(tiny_model_dir, tmp_path, unlearn_method="ga", dataset="example_forget_text"))
    log = _training_rows(tmp_path)
    assert len(log) == 3 and all(row["forget_loss"] < 0 for row in log)


def test_terms_reach_tensorboard(tiny_model_dir: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_unlearn_from_config(base_config(tiny_model_dir, tmp_path, unlearn_method="npo", report_to="tensorboard"))
    (event_file,) = tmp_path.glob("runs/*/events.out.tfevents.*")
    events = EventAccumulator(str(event_file)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/forget_loss", "train/retain_loss", "train/npo_log_ratio"} <= tags, tags
    assert len(events.Scalars("train/forget_loss")) == 3
