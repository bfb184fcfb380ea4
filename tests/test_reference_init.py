"""Under LoRA the reference is the policy with its adapter disabled. That is the initial model only when the
adapter starts as a no-op on it, so the set-ups that break this are refused when a term needs the reference
(``stage.args.check_reference_model``): PiSSA, and an adapter that llamafactory trains further. Here the
refusals, what they guard against (measured on llamafactory's own model loading), and that what stays allowed
works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import ROOT, base_config, run_cli
from unilogit.errors import ConfigError
from unilogit.stage.entry import parse_unlearn_config, run_unlearn_from_config


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LoRA adapter of the tiny model with random (non-zero) weights: a model it changes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(out)
    return str(out)


def _lora(tiny_model_dir: str, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    return base_config(tiny_model_dir, tmp_path / "out", finetuning_type="lora", **changes)


# (case id, changes to a LoRA config, the start of the refusal or None for accepted); "ADAPTER" is the adapter.
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("npo with pissa", {"unlearn_method": "npo", "pissa_init": True}, "pissa_init: unlearn_method: npo needs the"),
    (
        "ga with kl and pissa",
        {"unlearn_method": "ga", "retain_loss": "kl", "pissa_init": True},
        "pissa_init: retain_loss: kl",
    ),
    ("unilogit with pissa", {"pissa_init": True}, "pissa_init: retain_loss: kl needs"),  # its default retain loss
    ("npo with pissa_convert", {"unlearn_method": "npo", "pissa_convert": True}, "pissa_convert: unlearn_method: npo"),
    ("ga with nll and pissa", {"unlearn_method": "ga", "pissa_init": True, "pissa_convert": True}, None),
    ("simnpo with nll and pissa", {"unlearn_method": "simnpo", "retain_loss": "nll", "pissa_init": True}, None),
    ("npo with pissa and a reference model", {"unlearn_method": "npo", "pissa_init": True, "ref_model": "TINY"}, None),
    (
        "undial with an adapter",
        {"unlearn_method": "undial", "adapter_name_or_path": "ADAPTER"},
        "adapter_name_or_path:",
    ),
    (
        "undial with an adapter merged",
        {"unlearn_method": "undial", "adapter_name_or_path": "ADAPTER", "create_new_adapter": True},
        None,
    ),
    ("ga with nll and an adapter", {"unlearn_method": "ga", "adapter_name_or_path": "ADAPTER"}, None),
]


@pytest.mark.parametrize(("changes", "refusal"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_reference_that_would_not_be_the_initial_model_is_refused(
    changes: dict[str, Any], refusal: str | None, tiny_model_dir: str, adapter_dir: str, tmp_path: Path
) -> None:
    names = {"ADAPTER": adapter_dir, "TINY": tiny_model_dir}
    config = _lora(tiny_model_dir, tmp_path, **{k: names.get(v, v) for k, v in changes.items()})
    if refusal is None:
        parse_unlearn_config(config)
        return
    with pytest.raises(ConfigError) as refused:
        parse_unlearn_config(config)
    message = str(refused.value)
    assert message.startswith(refusal) and "\n" not in message, message
    if "pissa" in refusal:
        assert "would not be the initial model; drop pissa_init and pissa_convert, or use a method" in message
    else:
        assert f"{adapter_dir} would be trained further" in message and "set create_new_adapter: true" in message


def test_an_adapter_that_cannot_be_merged_is_refused_without_create_new_adapter_as_the_fix(
    tiny_model_dir: str, adapter_dir: str, tmp_path: Path
) -> None:
    """Under ZeRO-3 llamafactory resumes the last adapter even with create_new_adapter, so that is no fix there.
    (Parsing a ZeRO-3 config needs a process group; the check reads the training arguments' DeepSpeed config.)"""
    import copy

    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    from unilogit.stage.args import check_reference_model

    config = _lora(
        tiny_model_dir, tmp_path, unlearn_method="npo", adapter_name_or_path=adapter_dir, create_new_adapter=True
    )
    unlearning_args, model_args, _, training_args, finetuning_args, _ = parse_unlearn_config(config)  # mergeable
    zero3 = copy.copy(training_args)
    zero3.hf_deepspeed_config = HfTrainerDeepSpeedConfig(str(ROOT / "examples/deepspeed/ds_z3_config.json"))
    try:
        with pytest.raises(ConfigError, match="adapter_name_or_path: unlearn_method: npo") as refused:
            check_reference_model(unlearning_args, model_args, zero3, finetuning_args)
    finally:
        unset_hf_deepspeed_config()  # its constructor made it transformers' global DeepSpeed config
    assert "create_new_adapter" not in str(refused.value) and "merge it first (unilogit export)" in str(refused.value)


def _logits(model: torch.nn.Module, disabled: bool) -> torch.Tensor:
    ids = torch.arange(5, 40).unsqueeze(0)
    with torch.no_grad():
        if disabled:
            with model.disable_adapter():
                return model(input_ids=ids).logits
        return model(input_ids=ids).logits


def _load(config: dict[str, Any]) -> torch.nn.Module:
    """The policy as llamafactory's ``load_model`` builds it for training, from a config's parsed arguments."""
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    model_args, _, _, finetuning_args, _ = get_train_args({**config, "stage": "sft"})
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    return load_model(tokenizer, model_args, finetuning_args, is_trainable=True).eval()


def test_what_the_refusals_guard_against(tiny_model_dir: str, adapter_dir: str, tmp_path: Path) -> None:
    """Measured on llamafactory's models: plain LoRA and a merged adapter give an adapter-disabled model equal to
    the initial one; PiSSA and a resumed adapter do not, by far more than rounding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = {k: v for k, v in _lora(tiny_model_dir, tmp_path).items() if k != "retain_dataset"}
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    initial = _logits(base, disabled=False)
    with_adapter = _logits(PeftModel.from_pretrained(base, adapter_dir).merge_and_unload(), disabled=False)
    assert (with_adapter - initial).abs().max() > 1e-2  # the adapter changes the model

    def gap(model: torch.nn.Module, start: torch.Tensor) -> float:
        # The policy at step 0 is the initial model; the question is whether the disabled one is too.
        assert torch.allclose(_logits(model, disabled=False), start, atol=1e-4)
        return float((_logits(model, disabled=True) - start).abs().max())

    assert gap(_load(plain), initial) < 1e-5
    assert gap(_load({**plain, "pissa_init": True}), initial) > 1e-2
    assert gap(_load({**plain, "adapter_name_or_path": adapter_dir}), with_adapter) > 1e-2
    assert gap(_load({**plain, "adapter_name_or_path": adapter_dir, "create_new_adapter": True}), with_adapter) < 1e-4


def test_pissa_without_a_reference_trains_and_saves_the_converted_adapter(tiny_model_dir: str, tmp_path: Path) -> None:
    """GA with the NLL retain term needs no reference, so PiSSA stays allowed; pissa_convert (which LLaMA Board
    sets with it) writes the adapter converted to plain LoRA, as llamafactory's own stages do."""
    config = _lora(tiny_model_dir, tmp_path, unlearn_method="ga", pissa_init=True, pissa_convert=True)
    run_unlearn_from_config(config)
    out = tmp_path / "out"
    assert (out / "adapter_config.json").is_file() and (out / "pissa_converted" / "adapter_config.json").is_file()
    converted = yaml.safe_load((out / "pissa_converted" / "adapter_config.json").read_text())
    assert converted["r"] == 2 * yaml.safe_load((out / "adapter_config.json").read_text())["r"]  # PiSSA -> LoRA


def test_the_cli_refuses_pissa_with_npo_in_one_line(tiny_model_dir: str, tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_lora(tiny_model_dir, tmp_path, overwrite_output_dir=False)))
    result = run_cli("train", str(path), "unlearn_method=npo", "pissa_init=true", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("unilogit: error: pissa_init: unlearn_method: npo needs the reference model"), line
    assert not (tmp_path / "out").exists()
