"""Shared fixtures: a tiny random Llama with a tokenizer built here, and the repository's data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from unilogit._compat import install_torchaudio_stub

install_torchaudio_stub()
# llamafactory's logger binds the sys.stderr of the moment it is first imported; import it now, outside
# any test's capsys, so later tests never log into a stream a finished test has closed.
import llamafactory.hparams  # noqa: E402, F401

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs a worker per core (-n auto): one intra-op thread each, here and in the processes it starts.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    texts = []
    for path in (DATA_DIR / "examples").glob("*.json"):
        for record in json.loads(path.read_text()):
            texts.extend(str(v) for v in record.values())
    return texts


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, hidden-64 Llama with a byte-level BPE tokenizer trained on the example data."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tk_decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<pad>", bos_token=None, unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return str(out)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``unilogit`` console script in a subprocess, as a user would."""
    # The caller's torchrun state never leaks in; ``env`` may still ask for torchrun (FORCE_TORCHRUN=1).
    full_env = {k: v for k, v in os.environ.items() if k not in ("FORCE_TORCHRUN", "LOCAL_RANK")}
    full_env.update({"TOKENIZERS_PARALLELISM": "false", **(env or {})})
    return subprocess.run(
        [str(Path(sys.executable).with_name("unilogit")), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def memorized_model_dir(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Llama fine-tuned on forget + retain sets with ``stage: sft`` through ``unilogit train``.

    This is the "target model" of an unlearning experiment: unlearning must raise its forget-set NLL.
    """
    out = tmp_path_factory.mktemp("memorized")
    config = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": tiny_model_dir,
        "finetuning_type": "full",
        "dataset": "example_forget,example_retain",
        "dataset_dir": str(DATA_DIR),
        "template": "chatml",
        "cutoff_len": 128,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 40,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "use_cpu": True,
    }
    path = out.parent / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("train", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return str(out)


def forget_set_nll(model, tokenizer) -> float:
    """Token-mean NLL of the example forget set's answers, computed here independently of the trainer."""
    import torch

    records = json.loads((DATA_DIR / "examples" / "forget_qa.json").read_text())
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for record in records:
            prompt = [{"role": "user", "content": record["instruction"]}]
            full = [*prompt, {"role": "assistant", "content": record["output"]}]
            prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            full_ids = tokenizer.apply_chat_template(full, tokenize=True)
            prompt_ids = prompt_ids if isinstance(prompt_ids, list) else prompt_ids["input_ids"]
            full_ids = full_ids if isinstance(full_ids, list) else full_ids["input_ids"]
            ids = torch.tensor([full_ids])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            start = len(prompt_ids) - 1  # first answer token is predicted at this position
            picked = log_probs[start:].gather(-1, targets[start:, None])
            total -= float(picked.sum())
            count += picked.numel()
    return total / count


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    for key in ("FORCE_TORCHRUN", "LOCAL_RANK", "ALLOW_EXTRA_ARGS"):
        monkeypatch.delenv(key, raising=False)


def base_config(model_dir: str, output_dir: Path, **overrides) -> dict:
    """A minimal unlearn config on the tiny model and the example data."""
    config = {
        "stage": "unlearn",
        "model_name_or_path": model_dir,
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "example_forget",
        "retain_dataset": "example_retain",
        "dataset_dir": str(DATA_DIR),
        "template": "chatml",
        "cutoff_len": 128,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "num_train_epochs": 1,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "preprocessing_num_workers": None,
        "dataloader_num_workers": 0,
        "use_cpu": True,
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hypothesis_settings(max_examples: int) -> Any:
    """The hypothesis suites' settings (tests/test_losses.py, tests/test_properties.py): reproducible
    examples, no example database, and no timing deadline or speed health check on a shared machine."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: intra-op threads only add contention on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
