"""The unlearning arguments: their own dataclass, read from the same YAML as llamafactory's.

The keys of the stage are the fields of :class:`UnlearningArguments`; the keys of the methods are
declared in the method registry (:mod:`unilogit.stage.methods`) and checked here from their
declarations, so a registered method's keys are accepted, converted and bounded like the built-in ones.
The arguments import the registry, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from unilogit.config import check_choice, check_number, show
from unilogit.errors import ConfigError
from unilogit.stage.methods import METHODS, Method, all_hyperparameters, reserve_keys

if TYPE_CHECKING:
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

RETAIN_LOSSES = ("none", "nll", "kl")


@dataclass
class UnlearningArguments:
    """Keys of the ``unlearn`` stage. Everything else in the YAML goes to llamafactory."""

    unlearn_method: str = field(
        default="unilogit", metadata={"help": "The forget objective, a registered method (default unilogit)."}
    )
    retain_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Retain dataset name(s) from dataset_info.json, comma-separated. Paired with the forget set."
        },
    )
    retain_loss: str | None = field(
        default=None,
        metadata={
            "help": "Retain regularizer: none | nll | kl. Default: kl for unilogit, nll for the others "
            "when retain_dataset is set, none otherwise."
        },
    )
    retain_weight: float = field(
        default=1.0, metadata={"help": "λ, the weight of the retain term (>= 0, default 1.0)."}
    )
    ref_offload: bool = field(
        default=False,
        metadata={
            "help": "Full/freeze tuning: keep the frozen reference model on the CPU and move it to the "
            "accelerator only for its forward passes (saves a model's worth of accelerator memory, costs "
            "two transfers a step). Not with DeepSpeed or FSDP: use the ZeRO-3 offload config instead. Default false."
        },
    )
    soft_target_kl_model: str | None = field(
        default=None,
        metadata={
            "help": "UnDIAL and Unilogit: the retrained model (folder, hub id or alias). Before training and "
            "after every epoch, log soft_target_kl, the token mean over the forget set of KL(p_retrain ‖ p̃), "
            "p̃ the forget term's soft target (Unilogit paper, Fig. 5). Loads a second model; default none."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The tokenizer's folder, hub id or alias, for a model that ships none (muse-bench's Llama-2 "
            "targets: meta-llama/Llama-2-7b-hf). Default: the model's own. The output folder carries it."
        },
    )

    # The methods' keys given (npo_beta, ...); after __post_init__, every registered method's key with its
    # value, read as an attribute (args.npo_beta).
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("unlearn_method", self.unlearn_method, tuple(METHODS))
        declared = {hp.name: hp for hp in all_hyperparameters()}
        for key in self.hyperparameters:
            if key not in declared:
                raise ConfigError(f"{show(key)} is no method's key; remove it (keys: {', '.join(declared)})")
        self.hyperparameters = {
            name: hp.check(self.hyperparameters.get(name, hp.default)) for name, hp in declared.items()
        }
        if self.retain_dataset is not None and not isinstance(self.retain_dataset, str):
            raise ConfigError(
                f"retain_dataset: {show(self.retain_dataset)} is not valid; use dataset names from "
                "dataset_info.json, comma-separated (retain_dataset: a,b)"
            )
        if self.retain_dataset is not None and not self.retain_datasets:  # blank, or only commas
            self.retain_dataset = None
        if self.retain_loss is None:
            self.retain_loss = METHODS[self.unlearn_method].default_retain_loss if self.retain_dataset else "none"
        check_choice("retain_loss", self.retain_loss, RETAIN_LOSSES)
        if self.retain_loss != "none" and self.retain_dataset is None:
            raise ConfigError(
                f"retain_loss: {self.retain_loss} needs a retain set; set retain_dataset: <name in "
                "dataset_info.json>, or retain_loss: none"
            )
        check_number("retain_weight", self.retain_weight, low=0.0)
        if not isinstance(self.ref_offload, bool):
            raise ConfigError(f"ref_offload: {self.ref_offload!r} is not valid; use true or false")
        if self.tokenizer_name_or_path is not None and (
            not isinstance(self.tokenizer_name_or_path, str) or not self.tokenizer_name_or_path.strip()
        ):
            raise ConfigError(
                f"tokenizer_name_or_path: {show(self.tokenizer_name_or_path)} is not valid; use a tokenizer folder or "
                "hub id (e.g. meta-llama/Llama-2-7b-hf), or leave it unset"
            )
        if self.soft_target_kl_model is not None:
            if not isinstance(self.soft_target_kl_model, str) or not self.soft_target_kl_model.strip():
                raise ConfigError(
                    f"soft_target_kl_model: {show(self.soft_target_kl_model)} is not valid; use the retrained "
                    "model's folder, hub id or alias, or leave it unset"
                )
            if METHODS[self.unlearn_method].soft_target is None:
                with_targets = " and ".join(name for name, m in METHODS.items() if m.soft_target is not None)
                raise ConfigError(
                    f"soft_target_kl_model: {self.unlearn_method} has no soft targets (only {with_targets} "
                    "distil toward one); remove soft_target_kl_model"
                )

    def __getattr__(self, name: str) -> Any:
        # Called only when no field has the name: a method's key. Read through __dict__, which copy and
        # pickle call this before they fill.
        values = self.__dict__.get("hyperparameters", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def method(self) -> Method:
        """The registry entry of ``unlearn_method``."""
        return METHODS[self.unlearn_method]

    @property
    def needs_forget_reference(self) -> bool:
        """Whether the forget term reads the initial model θ_o (the method's declaration decides)."""
        return self.method.needs_forget_reference(self)

    @property
    def needs_retain_reference(self) -> bool:
        """Whether the retain term reads the initial model θ_o: the KL retain term does."""
        return self.retain_loss == "kl"

    @property
    def needs_reference(self) -> bool:
        """Whether any term reads the initial model θ_o, so that the run needs a reference model."""
        return self.needs_forget_reference or self.needs_retain_reference

    @property
    def retain_datasets(self) -> list[str]:
        """``retain_dataset`` split on commas."""
        return [name.strip() for name in (self.retain_dataset or "").split(",") if name.strip()]


STAGE_KEYS = tuple(f.name for f in fields(UnlearningArguments) if f.name != "hyperparameters")
reserve_keys(STAGE_KEYS)  # no method's hyperparameter may shadow one of the stage's keys


def unlearning_keys() -> tuple[str, ...]:
    """Every key of the unlearn stage: the stage's own, then each registered method's, in registry order."""
    return STAGE_KEYS + tuple(hp.name for hp in all_hyperparameters())


def unlearning_key_help() -> list[tuple[str, str]]:
    """``(key, help)`` for every key of :func:`unlearning_keys`, in that order, each help one line that gives
    the default, for ``unilogit train --help``."""
    methods = " | ".join(METHODS)
    rows = [
        (f.name, f.metadata["help"] + (f" One of: {methods}." if f.name == "unlearn_method" else ""))
        for f in fields(UnlearningArguments)
        if f.name in STAGE_KEYS
    ]
    for method in METHODS.values():
        rows += [(hp.name, f"{method.name}: {hp.help}; {hp.values()}") for hp in method.hyperparameters]
    return rows


def split_unlearning_args(args: dict[str, Any]) -> tuple[UnlearningArguments, dict[str, Any]]:
    """Pop our keys from a config dict; return our dataclass and the rest for llamafactory."""
    ours = {key: args.pop(key) for key in STAGE_KEYS if key in args}
    hyperparameters = {hp.name: args.pop(hp.name) for hp in all_hyperparameters() if hp.name in args}
    if isinstance(ours.get("retain_weight"), str):  # YAML reads 1e-3 as a string
        try:
            ours["retain_weight"] = float(ours["retain_weight"])
        except ValueError:
            raise ConfigError(
                f"retain_weight: {show(ours['retain_weight'])} is not a number; use e.g. retain_weight=0.5"
            ) from None
    unlearning_args = UnlearningArguments(**ours, hyperparameters=hyperparameters)
    if unlearning_args.ref_offload and (args.get("deepspeed") or args.get("fsdp")):
        raise ConfigError(
            "ref_offload: DeepSpeed and FSDP shard the reference model with the policy; remove ref_offload and "
            "use examples/deepspeed/ds_z3_offload_config.json to offload both to the CPU"
        )
    return unlearning_args, args


def check_reference_model(
    args: UnlearningArguments,
    model_args: ModelArguments,
    training_args: Seq2SeqTrainingArguments,
    finetuning_args: FinetuningArguments,
) -> None:
    """Refuse a LoRA set-up whose adapter-disabled model is not the model training starts from, when a term
    reads the reference (:attr:`UnlearningArguments.needs_reference`).

    Under LoRA the reference is the policy with its adapter disabled (llamafactory's ``create_ref_model`` loads
    none), which is the initial model only when the adapter starts as a no-op on top of it. Two set-ups break
    that. PiSSA (``pissa_init``, and ``pissa_convert``, which goes with it) moves the weights' principal
    components out of the base into the adapter, so the disabled model is the residual. An
    ``adapter_name_or_path`` whose last adapter is trained further (llamafactory resumes it unless
    ``create_new_adapter`` is set and the adapters can be merged, which they cannot under ZeRO-3, quantization,
    unsloth or KTransformers) leaves the disabled model without it. With ``ref_model`` llamafactory loads a
    separate reference, and nothing here applies. Raises ``ConfigError`` (one line).
    """
    if not args.needs_reference or finetuning_args.finetuning_type != "lora" or finetuning_args.ref_model is not None:
        return
    reader = f"unlearn_method: {args.unlearn_method}" if args.needs_forget_reference else "retain_loss: kl"
    for key in ("pissa_init", "pissa_convert"):
        if getattr(finetuning_args, key):
            raise ConfigError(
                f"{key}: {reader} needs the reference model, under LoRA the model with its adapter disabled, and PiSSA "
                "moves the weights' principal components into the adapter, so the adapter-disabled reference would "
                "not be the initial model; drop pissa_init and pissa_convert, or use a method and retain loss "
                "without a reference (ga or simnpo with retain_loss: nll or none)"
            )
    adapters = model_args.adapter_name_or_path
    if not adapters:
        return
    deepspeed = getattr(training_args, "hf_deepspeed_config", None)  # set by the training arguments under DeepSpeed
    mergeable = not (
        (deepspeed is not None and deepspeed.is_zero3())
        or model_args.quantization_bit is not None
        or model_args.use_unsloth
        or model_args.use_kt
    )
    if not (finetuning_args.create_new_adapter and mergeable):
        how = "set create_new_adapter: true to merge it and train a new adapter, or " if mergeable else ""
        raise ConfigError(
            f"adapter_name_or_path: {reader} needs the reference model, under LoRA the model with its adapter "
            f"disabled, and {adapters[-1]} would be trained further, so the reference would lack it and not be the "
            f"initial model; {how}merge it first (unilogit export) and unlearn the merged model"
        )
