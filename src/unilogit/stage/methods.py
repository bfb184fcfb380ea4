"""The method registry: name → forget term, default retain term, hyperparameters.

A forget term maps the current logits, the labels, what it needs of the reference model (``None``
when it needs no reference) and the arguments to ``(loss, extra scalars to log)``. What it needs is
``reference_statistic``: ``"rows"``, the reference logits at the supervised positions ``[N, V]``
(distillation terms), or ``"sequence_nll"``, one reference NLL per sequence ``[B]`` (NPO); the
trainer computes it under ``no_grad`` and drops the reference logits at once. ``reduction`` says how
the term averages ("token" or "sequence"), which the trainer needs to weight micro-batches under
gradient accumulation so that 2 micro-batches × 2 steps equal one batch of 4. ``soft_target``, for
the distillation methods (UnDIAL, Unilogit), builds the forget term's target distribution; the trainer
compares it with a retrained model's (``soft_target_kl_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from unilogit import losses

if TYPE_CHECKING:
    from unilogit.stage.args import UnlearningArguments

ForgetTerm = Callable[
    [torch.Tensor, torch.Tensor, "torch.Tensor | None", "UnlearningArguments"],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]


ReferenceStatistic = Literal["rows", "sequence_nll"]

# (rows, labels, args) -> log p̃ [N, V] in fp32: the forget term's soft target at the supervised positions,
# built from ``rows`` [N, V], the logits its target comes from (the reference's when the method needs a
# forget reference, the model's own otherwise).
SoftTarget = Callable[[torch.Tensor, torch.Tensor, "UnlearningArguments"], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """One unlearning method."""

    name: str
    forget_term: ForgetTerm
    reduction: Literal["token", "sequence"]
    default_retain_loss: Literal["nll", "kl"]
    hyperparameters: tuple[str, ...]
    needs_forget_reference: Callable[[UnlearningArguments], bool]
    summary: str
    reference_statistic: ReferenceStatistic = "rows"
    soft_target: SoftTarget | None = None  # None: the forget term distils toward no distribution


def _ga(logits, labels, reference, args):
    return losses.ga_loss(logits, labels), {}


def _npo(logits, labels, ref_nll, args):
    nll, counts = losses.sequence_nll(logits, labels)
    with torch.no_grad():
        keep = counts > 0
        # log π_θ(y|x) − log π_ref(y|x): falls below 0 as the model forgets; a collapse shows here first.
        log_ratio = (ref_nll - nll)[keep].mean() if keep.any() else nll.new_zeros(())
    return losses.npo_loss_from_nll(nll, ref_nll, counts, args.npo_beta), {"npo_log_ratio": log_ratio}


def _simnpo(logits, labels, reference, args):
    return losses.simnpo_loss(logits, labels, args.simnpo_beta, args.simnpo_delta), {}


def _undial(logits, labels, ref_rows, args):
    return losses.undial_loss(logits, ref_rows, labels, args.undial_gamma), {}


def _unilogit(logits, labels, ref_rows, args):
    return losses.unilogit_forget_loss(logits, labels, ref_rows, args.unilogit_divergence), {}


def _undial_target(rows, y, args):
    return losses.undial_target_log_probs(rows, y, args.undial_gamma)


def _unilogit_target(rows, y, args):
    return losses.unilogit_target_log_probs(rows, y)


def _never(args: UnlearningArguments) -> bool:
    return False


def _always(args: UnlearningArguments) -> bool:
    return True


def _unilogit_needs_reference(args: UnlearningArguments) -> bool:
    return args.unilogit_target == "initial"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ga", _ga, "token", "nll", (), _never, "gradient ascent on the forget NLL"),
        Method(
            "npo",
            _npo,
            "sequence",
            "nll",
            ("npo_beta",),
            _always,
            "negative preference optimisation",
            reference_statistic="sequence_nll",
        ),
        Method(
            "simnpo",
            _simnpo,
            "sequence",
            "nll",
            ("simnpo_beta", "simnpo_delta"),
            _never,
            "reference-free, length-normalised NPO",
        ),
        Method(
            "undial",
            _undial,
            "token",
            "nll",
            ("undial_gamma",),
            _always,
            "self-distillation with adjusted logits",
            soft_target=_undial_target,
        ),
        Method(
            "unilogit",
            _unilogit,
            "token",
            "kl",
            ("unilogit_target", "unilogit_divergence"),
            _unilogit_needs_reference,
            "self-distillation toward the model's own distribution with the label at 1/|V|",
            soft_target=_unilogit_target,
        ),
    )
}
