"""The unlearning arguments: their own dataclass, read from the same YAML as llamafactory's."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any

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

    def __post_init__(self) -> None:
        from unilogit.stage.methods import METHODS

        _choice("unlearn_method", self.unlearn_method, tuple(METHODS))
        _choice("unilogit_target", self.unilogit_target, UNILOGIT_TARGETS)
        _choice("unilogit_divergence", self.unilogit_divergence, DIVERGENCES)
        if self.retain_dataset is not None and not self.retain_dataset.strip():
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


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not valid; allowed values: {' | '.join(allowed)}")


def _bounded(key: str, value: Any, low: float, strict: bool) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(f"{key}: {value!r} is out of range; use a finite number {bound}")


def split_unlearning_args(args: dict[str, Any]) -> tuple[UnlearningArguments, dict[str, Any]]:
    """Pop our keys from a config dict; return our dataclass and the rest for llamafactory."""
    ours = {key: args.pop(key) for key in UNLEARNING_KEYS if key in args}
    for key in ("retain_weight", "npo_beta", "simnpo_beta", "simnpo_delta", "undial_gamma"):
        if isinstance(ours.get(key), str):
            try:
                ours[key] = float(ours[key])
            except ValueError:
                raise ConfigError(f"{key}: {ours[key]!r} is not a number; use e.g. {key}=0.5") from None
    unlearning_args = UnlearningArguments(**ours)
    if unlearning_args.ref_offload and (args.get("deepspeed") or args.get("fsdp")):
        raise ConfigError(
            "ref_offload: DeepSpeed and FSDP shard the reference model with the policy; remove ref_offload and "
            "use examples/deepspeed/ds_z3_offload_config.json to offload both to the CPU"
        )
    return unlearning_args, args


def nearest_key(key: str, valid: list[str]) -> str | None:
    """The valid key closest to a misspelled one, or None."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return match[0] if match else None
