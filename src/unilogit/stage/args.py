"""The unlearning arguments: their own dataclass, read from the same YAML as llamafactory's."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import reprlib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

RETAIN_LOSSES = ("none", "nll", "kl")
UNILOGIT_TARGETS = ("current", "initial")
DIVERGENCES = ("reverse", "forward")


class ConfigError(ValueError):
    """A bad configuration value; its message is one line naming the key and the fix."""


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or inf; its message is one line naming the step, the term and what was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class UnlearningArguments:
    """Keys of the ``unlearn`` stage. Everything else in the YAML goes to llamafactory."""

    unlearn_method: str = field(
        default="unilogit", metadata={"help": "Forget objective: ga | npo | simnpo | undial | unilogit."}
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
    retain_weight: float = field(default=1.0, metadata={"help": "λ, the weight of the retain term (>= 0)."})
    npo_beta: float = field(default=0.1, metadata={"help": "NPO's inverse temperature β (> 0)."})
    simnpo_beta: float = field(default=4.5, metadata={"help": "SimNPO's inverse temperature β (> 0)."})
    simnpo_delta: float = field(default=0.0, metadata={"help": "SimNPO's reward margin δ (>= 0)."})
    undial_gamma: float = field(
        default=10.0,
        metadata={"help": "UnDIAL's γ: how far the label logit is lowered in the teacher (>= 0)."},
    )
    unilogit_target: str = field(
        default="current",
        metadata={"help": "Unilogit's target source: current (the model itself, the paper) | initial (θ_o)."},
    )
    unilogit_divergence: str = field(
        default="reverse", metadata={"help": "Unilogit's forget divergence: reverse (the paper) | forward."}
    )
    ref_offload: bool = field(
        default=False,
        metadata={
            "help": "Full/freeze tuning: keep the frozen reference model on the CPU and move it to the "
            "accelerator only for its forward passes (saves a model's worth of accelerator memory, costs "
            "two transfers a step). Not with DeepSpeed or FSDP: use the ZeRO-3 offload config instead."
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

    def __post_init__(self) -> None:
        from unilogit.stage.methods import METHODS

        _choice("unlearn_method", self.unlearn_method, tuple(METHODS))
        _choice("unilogit_target", self.unilogit_target, UNILOGIT_TARGETS)
        _choice("unilogit_divergence", self.unilogit_divergence, DIVERGENCES)
        if self.retain_dataset is not None and not isinstance(self.retain_dataset, str):
            raise ConfigError(
                f"retain_dataset: {show(self.retain_dataset)} is not valid; use dataset names from "
                "dataset_info.json, comma-separated (retain_dataset: a,b)"
            )
        if self.retain_dataset is not None and not self.retain_datasets:  # blank, or only commas
            self.retain_dataset = None
        if self.retain_loss is None:
            self.retain_loss = METHODS[self.unlearn_method].default_retain_loss if self.retain_dataset else "none"
        _choice("retain_loss", self.retain_loss, RETAIN_LOSSES)
        if self.retain_loss != "none" and self.retain_dataset is None:
            raise ConfigError(
                f"retain_loss: {self.retain_loss} needs a retain set; set retain_dataset: <name in "
                "dataset_info.json>, or retain_loss: none"
            )
        _bounded("retain_weight", self.retain_weight, low=0.0, strict=False)
        _bounded("npo_beta", self.npo_beta, low=0.0, strict=True)
        _bounded("simnpo_beta", self.simnpo_beta, low=0.0, strict=True)
        _bounded("simnpo_delta", self.simnpo_delta, low=0.0, strict=False)
        _bounded("undial_gamma", self.undial_gamma, low=0.0, strict=False)
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

    @property
    def method(self):  # noqa: ANN201 - the registry type lives in methods.py
        """The registry entry of ``unlearn_method``."""
        from unilogit.stage.methods import METHODS

        return METHODS[self.unlearn_method]

    @property
    def retain_datasets(self) -> list[str]:
        """``retain_dataset`` split on commas."""
        return [name.strip() for name in (self.retain_dataset or "").split(",") if name.strip()]


UNLEARNING_KEYS = tuple(f.name for f in fields(UnlearningArguments))


_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def show(value: Any) -> str:
    """A config value as error messages quote it: its repr, shortened, always on one line."""
    return _REPR.repr(value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not (isinstance(value, str) and value in allowed):
        raise ConfigError(f"{key}: {show(value)} is not valid; allowed values: {' | '.join(allowed)}")


def _bounded(key: str, value: Any, low: float, strict: bool) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{key}: {show(value)} is not a number; use e.g. {key}=0.5")
    try:
        ok = math.isfinite(value) and (value > low if strict else value >= low)
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"{key}: {show(value)} is out of range; use a finite number {bound}")


def split_unlearning_args(args: dict[str, Any]) -> tuple[UnlearningArguments, dict[str, Any]]:
    """Pop our keys from a config dict; return our dataclass and the rest for llamafactory."""
    ours = {key: args.pop(key) for key in UNLEARNING_KEYS if key in args}
    for key in ("retain_weight", "npo_beta", "simnpo_beta", "simnpo_delta", "undial_gamma"):
        if isinstance(ours.get(key), str):
            try:
                ours[key] = float(ours[key])
            except ValueError:
                raise ConfigError(f"{key}: {show(ours[key])} is not a number; use e.g. {key}=0.5") from None
    unlearning_args = UnlearningArguments(**ours)
    if unlearning_args.ref_offload and (args.get("deepspeed") or args.get("fsdp")):
        raise ConfigError(
            "ref_offload: DeepSpeed and FSDP shard the reference model with the policy; remove ref_offload and "
            "use examples/deepspeed/ds_z3_offload_config.json to offload both to the CPU"
        )
    return unlearning_args, args


def nearest_key(key: Any, valid: list[str]) -> str | None:
    """The valid key closest to a misspelled one, or None (always None for a key that is not a string)."""
    if not isinstance(key, str):
        return None
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return match[0] if match else None


# --------------------------------------------------------------------------------------------------
# Types of llamafactory's keys
# --------------------------------------------------------------------------------------------------

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class _Refused(Exception):
    """A value that does not fit a type; the message says what would."""


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(m) for m in typing.get_args(hint) if m is not type(None)))
    if origin is Literal:
        return "one of " + " | ".join(str(c) for c in typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + " | ".join(str(m.value) for m in hint)
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple) or hint in (list, tuple):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as a ``hint``, converting the spellings HfArgumentParser accepts on a command line
    ("1e-5" for a float, "true" for a bool); raises ``_Refused`` when it does not fit."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        for member in sorted(members, key=lambda m: not _fits_exactly(value, m)):  # an exact fit first
            if member is not type(None):
                try:
                    return _coerce(value, member)
                except _Refused:
                    pass
        raise _Refused(_describe(hint))
    if hint is type(None):
        if value is None:
            return None
        raise _Refused("null")
    if origin is Literal:
        for choice in typing.get_args(hint):
            if type(value) is type(choice) and value == choice:
                return value
        raise _Refused(_describe(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint) or any(type(value) is type(m.value) and value == m.value for m in hint):
            return value
        raise _Refused(_describe(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise _Refused(_describe(hint))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _Refused(_describe(hint))
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _Refused(_describe(hint))
    if hint is str or hint is Path:
        if isinstance(value, str):
            return value
        raise _Refused(_describe(hint))
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _Refused(_describe(hint))
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(v, item) for v in value]
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            return value
        raise _Refused(_describe(hint))
    return value  # a class of its own (GenerationConfig, ...): llamafactory judges it


def _fits_exactly(value: Any, hint: Any) -> bool:
    if isinstance(hint, type) and not issubclass(hint, enum.Enum):
        return type(value) is hint or (hint is float and type(value) is int)
    return False


def check_field_types(config: Mapping[str, Any], classes: Iterable[type], skip: Iterable[str] = ()) -> dict[str, Any]:
    """``config`` with each value of a field of ``classes`` checked against the field's annotation.

    llamafactory hands a config dict to its dataclasses as it is (``HfArgumentParser.parse_dict``
    converts nothing), so ``learning_rate: abc`` would pass and ``logging_steps: x`` fail with a
    ``TypeError`` deep inside transformers. Numbers and booleans written as strings ("1e-5", "true")
    are converted, as on a command line; ``None`` is accepted where the field allows it or defaults
    to it. Keys in ``skip`` and keys of no field pass unchanged. Raises ``ConfigError`` naming the key,
    the value and what it should be.
    """
    out = dict(config)
    skip = set(skip)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in out or f.name in skip or not f.init:
                continue
            value = out[f.name]
            if value is None and f.default is None:
                continue
            try:
                out[f.name] = _coerce(value, hints[f.name])
            except _Refused as want:
                raise ConfigError(f"{f.name}: {show(value)} is not valid; use {want}") from None
    return out
