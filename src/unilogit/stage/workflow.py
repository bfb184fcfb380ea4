"""The ``unlearn`` stage workflow, in the shape of llamafactory's ``train/<stage>/workflow.py``."""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unilogit.errors import ConfigError, TrainingInterrupted, first_line

if TYPE_CHECKING:
    import torch
    from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments, TrainerCallback

    from unilogit.stage.args import UnlearningArguments


def run_unlearn(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: Seq2SeqTrainingArguments,
    finetuning_args: FinetuningArguments,
    unlearning_args: UnlearningArguments,
    callbacks: list[TrainerCallback] | None = None,
) -> None:
    """Load tokenizer, forget/retain data and model; build the trainer; unlearn; save."""
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.extras.ploting import plot_loss
    from llamafactory.model import load_model
    from llamafactory.train.trainer_utils import create_modelcard_and_push
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from unilogit.models import loading
    from unilogit.stage.callbacks import StopOnSignal
    from unilogit.stage.data import PairedCollator, PairedDataset, count_supervised, load_split
    from unilogit.stage.trainer import UnlearningTrainer

    tokenizer_module = load_tokenizer_module(model_args, unlearning_args.tokenizer_name_or_path)
    tokenizer = tokenizer_module["tokenizer"]
    known = set(tokenizer.get_vocab())
    try:
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
    except ValueError as err:  # an unknown template name, or one the tokenizer cannot carry
        raise ConfigError(
            f"template: {data_args.template!r}: {first_line(err)} Use the template of the model's chat "
            "format (llamafactory's TEMPLATES, e.g. chatml, llama3, qwen)"
        ) from None
    added = sorted(set(tokenizer.get_vocab()) - known)
    if added and not model_args.resize_vocab:
        # The template's special tokens are new to this tokenizer: it is another model family's format, and
        # the new token ids lie past the model's embedding (an IndexError in the first forward pass).
        raise ConfigError(
            f"template: {data_args.template!r} does not match the model: it adds {', '.join(added)}, which the "
            "tokenizer lacks. Use the template of the model's chat format, or set resize_vocab: true to train "
            "new embeddings for them"
        )
    split_args = (template, model_args, data_args, training_args, tokenizer_module)
    forget = load_split(data_args.dataset, "dataset", *split_args)
    retain = (
        load_split(unlearning_args.retain_datasets, "retain_dataset", *split_args)
        if (unlearning_args.retain_dataset)
        else {}
    )
    if training_args.do_train and count_supervised(forget["train_dataset"]) == 0:
        raise ConfigError(
            "dataset: the forget set has no supervised tokens after templating and truncation; "
            f"raise cutoff_len (now {data_args.cutoff_len}) or check the dataset's response column"
        )
    with loading("model", model_args.model_name_or_path):
        model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)

    # An adapter-disabled model that would not be the initial one was refused before (args.check_reference_model).
    needs_reference = unlearning_args.needs_reference
    if unlearning_args.ref_offload and (finetuning_args.finetuning_type == "lora" or not needs_reference):
        from llamafactory.extras import logging

        logging.get_logger(__name__).warning_rank0(
            "ref_offload has no effect: this run keeps no reference copy (LoRA disables the adapter instead, "
            "or no term needs the reference)"
        )
    # Under LoRA there is no reference copy: the trainer disables the adapter instead.
    # Methods whose terms need no reference (GA, SimNPO, Unilogit with retain_loss nll) load none.
    ref_model = create_reference_model(tokenizer, model_args, finetuning_args) if needs_reference else None
    if ref_model is not None and not training_args.deepspeed and model_args.quantization_bit is None:
        # llamafactory loads the checkpoint's own dtype (often fp32); the frozen reference only runs
        # forward passes, so it is kept in the compute dtype (DeepSpeed casts it itself).
        ref_model.to(model_args.compute_dtype)
    soft_target_model = (
        load_soft_target_model(unlearning_args.soft_target_kl_model, model, model_args, training_args)
        if unlearning_args.soft_target_kl_model and training_args.do_train
        else None
    )

    collator = SFTDataCollatorWith4DAttentionMask(
        template=template,
        model=model,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX,
        block_diag_attn=model_args.block_diag_attn,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        compute_dtype=model_args.compute_dtype,
        **tokenizer_module,
    )
    retain_train = retain.get("train_dataset")
    eval_forget = forget.get("eval_dataset")
    trainer = UnlearningTrainer(
        unlearning_args=unlearning_args,
        model=model,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=PairedCollator(collator),
        callbacks=callbacks,
        ref_model=ref_model,
        soft_target_model=soft_target_model,
        train_dataset=PairedDataset(forget["train_dataset"], retain_train, training_args.seed)
        if "train_dataset" in forget
        else None,
        eval_dataset=PairedDataset(eval_forget, retain_train, training_args.seed) if eval_forget is not None else None,
        **tokenizer_module,
    )

    if training_args.do_train:
        stop = StopOnSignal()
        trainer.add_callback(stop)
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        if stop.signum is not None:
            # Not the end of the run: no final model or metrics that a later step would contradict.
            checkpoint = Path(training_args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
            raise TrainingInterrupted(
                f"{signal.Signals(stop.signum).name} at step {trainer.state.global_step}: saved {checkpoint}; "
                f"resume with resume_from_checkpoint={checkpoint}",
                stop.signum,
            )
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero() and finetuning_args.plot_loss:
            plot_loss(training_args.output_dir, keys=["loss", "forget_loss", "retain_loss", "eval_loss"])

    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    create_modelcard_and_push(trainer, model_args, data_args, training_args, finetuning_args)


def load_tokenizer_module(model_args: ModelArguments, tokenizer_name_or_path: str | None) -> dict[str, Any]:
    """llamafactory's tokenizer module (tokenizer and processor) for the model, from ``tokenizer_name_or_path``
    when set, else from where :func:`unilogit.models.tokenizer_source` finds the model's own (a model folder
    with no tokenizer files fails in one line)."""
    from llamafactory.model import load_tokenizer

    from unilogit.models import loading, tokenizer_source

    source = tokenizer_source(model_args.model_name_or_path, tokenizer_name_or_path, key="tokenizer_name_or_path")
    if source == model_args.model_name_or_path:
        with loading("tokenizer", source):
            return load_tokenizer(model_args)
    # llamafactory loads the tokenizer from model_name_or_path: point a copy of the arguments at the tokenizer.
    tokenizer_args = copy.copy(model_args)
    tokenizer_args.model_name_or_path = source
    tokenizer_args.model_revision = "main"  # the model's revision names a commit of another repository
    with loading("tokenizer", source):
        module = load_tokenizer(tokenizer_args)
    model_args.resize_vocab = tokenizer_args.resize_vocab  # add_tokens may have turned it on, for the model
    return module


def create_reference_model(
    tokenizer: Any, model_args: ModelArguments, finetuning_args: FinetuningArguments
) -> torch.nn.Module | None:
    """llamafactory's ``create_ref_model`` with the tokenizer already loaded: the frozen initial model for full
    or freeze tuning, None under LoRA (the trainer disables the adapter instead: no copy). llamafactory's own
    would load a tokenizer from the model folder, which may have none (``tokenizer_name_or_path``)."""
    from llamafactory.hparams import FinetuningArguments
    from llamafactory.hparams import ModelArguments as Arguments
    from llamafactory.model import load_model
    from llamafactory.train.trainer_utils import create_ref_model

    from unilogit.models import loading

    if finetuning_args.ref_model is not None or finetuning_args.finetuning_type == "lora":
        return create_ref_model(model_args, finetuning_args)
    with loading("model", model_args.model_name_or_path):
        return load_model(tokenizer, Arguments.copyfrom(model_args), FinetuningArguments(), is_trainable=False)


def load_soft_target_model(name: str, model: torch.nn.Module, model_args: ModelArguments,
                           training_args: Seq2SeqTrainingArguments) -> torch.nn.Module:  # fmt: skip
    """The retrained model of ``soft_target_kl_model``, loaded once: frozen, in eval mode, in the compute dtype,
    on the training device. A LoRA output folder is merged onto its base, as the evaluators load it; no tokenizer
    is loaded (the retrained model's may be missing, as muse-bench's are)."""
    import torch

    from unilogit.models import load_model

    dtypes = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    try:
        retrain = load_model(name, dtypes.get(model_args.compute_dtype, "float32"), place=False)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"soft_target_kl_model: {name!r} could not be loaded ({first_line(err)}); use the retrained model's "
            "folder, hub id or alias"
        ) from None
    ours, theirs = model.get_output_embeddings().weight.size(0), retrain.get_output_embeddings().weight.size(0)
    if ours != theirs:
        raise ConfigError(
            f"soft_target_kl_model: {name!r} has a vocabulary of {theirs} tokens and the model {ours}; use the "
            "model retrained from the same base"
        )
    return retrain.requires_grad_(False).eval().to(training_args.device)
