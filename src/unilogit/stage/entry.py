"""The unlearn stage from a resolved config dict: every check that needs no model, then the run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unilogit.config import check_adapters, check_deepspeed, check_field_types, check_keys, show
from unilogit.errors import ConfigError, first_line
from unilogit.stage.args import check_reference_model, split_unlearning_args, unlearning_keys


def parse_unlearn_config(config: dict[str, Any]) -> tuple[Any, ...]:
    """Everything ``unilogit train`` checks in a resolved unlearn config before it loads a tokenizer, data
    or a model: keys, our arguments, the types of llamafactory's, DeepSpeed, the adapter folders,
    llamafactory's own checks, the forget set and the output folder.

    Returns ``(unlearning_args, model_args, data_args, training_args, finetuning_args, generating_args)``;
    raises ``ConfigError`` (one line) for anything wrong. Reads files (the output folder) but writes none.
    """
    from llamafactory.hparams import get_train_args
    from llamafactory.hparams.parser import _TRAIN_ARGS

    from unilogit.stage.callbacks import RESULT_NAMES

    check_keys(config, unlearning_keys())
    unlearning_args, rest = split_unlearning_args(dict(config))
    # `stage` is ours to dispatch on ("unlearn" is not among llamafactory's stages).
    rest = check_field_types(rest, _TRAIN_ARGS, skip=("stage",))
    check_deepspeed(rest)
    check_adapters(rest)
    special_tokens = rest.get("new_special_tokens_config")
    if special_tokens and not Path(special_tokens).is_file():  # llamafactory fails on its own logger there
        raise ConfigError(
            f"new_special_tokens_config: {show(special_tokens)} does not exist; give a YAML file of special tokens"
        )
    try:
        model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(rest)
    except ValueError as err:
        raise ConfigError(first_line(err)) from err
    except ImportError as err:  # a package an option needs (check_version(..., mandatory=True))
        named = re.search(r"'([^']+)' distribution", str(err))
        package = named.group(1) if named else first_line(err)
        raise ConfigError(
            f"a package this config needs is not installed: {package}; install it, or turn off the option that needs it"
        ) from err
    except OSError as err:  # a file named by a key (fsdp_config, ...) that is not there
        raise ConfigError(f"{first_line(err)}; check the file paths in the config") from err
    except (TypeError, AssertionError, KeyError, AttributeError) as err:
        raise ConfigError(f"llamafactory refused the config: {type(err).__name__}: {first_line(err)}") from err
    check_reference_model(unlearning_args, model_args, training_args, finetuning_args)
    if not data_args.dataset:
        raise ConfigError("dataset: the unlearn stage needs a forget set; set dataset: <name in dataset_info.json>")
    if not (training_args.do_train or training_args.do_eval):
        raise ConfigError("do_train: nothing to do; set do_train: true (or do_eval: true with an eval set)")
    output_dir = Path(training_args.output_dir)
    # llamafactory refuses a folder holding weights and resumes one holding checkpoints; one holding only
    # logs or metrics of an earlier run would be silently mixed with this one's.
    held = [name for name in RESULT_NAMES if (output_dir / name).exists()]
    fresh = training_args.resume_from_checkpoint is None and not training_args.overwrite_output_dir
    if training_args.do_train and held and fresh:
        raise ConfigError(
            f"output_dir: {output_dir} already holds results ({held[0]}); set overwrite_output_dir: true "
            "or choose another output_dir"
        )
    return unlearning_args, model_args, data_args, training_args, finetuning_args, generating_args


def run_unlearn_from_config(config: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """Parse a resolved config dict (:func:`parse_unlearn_config`) and run the unlearn stage (used by
    ``train`` and the tests).

    ``callbacks`` are extra ``TrainerCallback``s, added after the logging and reporting ones.
    """
    import torch.distributed as dist
    from llamafactory.train.callbacks import PissaConvertCallback, ReporterCallback

    from unilogit.stage.callbacks import RunRecordCallback, UnlearningLogCallback
    from unilogit.stage.workflow import run_unlearn

    unlearning_args, model_args, data_args, training_args, finetuning_args, generating_args = parse_unlearn_config(
        config
    )
    callbacks = [
        RunRecordCallback(config),
        UnlearningLogCallback(),
        ReporterCallback(model_args, data_args, finetuning_args, generating_args),
        # As llamafactory's run_exp adds it for its stages: also saves the adapter converted to plain LoRA.
        *([PissaConvertCallback()] if finetuning_args.pissa_convert else []),
        *(callbacks or []),
    ]
    try:
        run_unlearn(model_args, data_args, training_args, finetuning_args, unlearning_args, callbacks)
        if dist.is_initialized():
            # The ranks end together: rank 0 still writes the tokenizer and model card when the others are
            # done, and a rank that tears its connections down meanwhile has been seen to abort (gloo).
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
