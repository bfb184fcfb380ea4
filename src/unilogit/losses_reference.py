"""Straightforward implementations of the losses in :mod:`unilogit.losses`, for tests and benchmarks.

Each function here writes its formula over whole ``[N, V]`` tensors: it gathers the supervised
positions into an fp32 copy and lets autograd keep whatever the formula needs (log-softmax, softmax,
the target distribution), several fp32 copies of the logits in all. :mod:`unilogit.losses` computes
the same values chunk by chunk and keeps nothing but the gradient; ``tests/test_losses_lean.py`` and
``benchmarks/step_time.py --kernels-only`` compare the two. Nothing in training imports this module,
and the method registry does not read it: a new method needs a formula here only when its loss in
:mod:`unilogit.losses` is computed chunk by chunk and should be tested against its plain form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unilogit.losses import (
    IGNORE_INDEX,
    Divergence,
    check_divergence,
    npo_loss_from_nll,
    simnpo_loss_from_nll,
    supervised_rows,
    token_mean,
    unilogit_target_log_probs,
)


def supervised_positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift by one and return ``(z, y)`` at supervised positions: z is ``[N, V]``, y is ``[N]``.

    z is fp32 for fp32 and 16-bit logits, as in training, and float64 for float64 logits: the tests and
    the benchmark evaluate these formulas in float64 to get the exact values the lean losses must match.
    """
    z = supervised_rows(logits, labels)
    return z.to(torch.promote_types(z.dtype, torch.float32)), labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL ``[B]`` fp32 and supervised-token count ``[B]``."""
    mask = labels[:, 1:] != IGNORE_INDEX
    z, y = supervised_positions(logits, labels)
    token_nll = F.cross_entropy(z, y, reduction="none")
    rows = mask.nonzero()[:, 0]
    nll = torch.zeros(labels.size(0), dtype=z.dtype, device=logits.device).index_add(0, rows, token_nll)
    return nll, mask.sum(dim=1)


def nll_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL."""
    z, y = supervised_positions(logits, labels)
    return token_mean(F.cross_entropy(z, y, reduction="none"))


def ga_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−NLL."""
    return -nll_loss(logits, labels)


def npo_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β) · mean_b log σ(β · (NLL_seq,θ(b) − NLL_seq,ref(b)))."""
    nll, counts = sequence_nll(logits, labels)
    with torch.no_grad():
        ref_nll, _ = sequence_nll(ref_logits, labels)
    return npo_loss_from_nll(nll, ref_nll, counts, beta)


def simnpo_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """−(2/β) · mean_b log σ(β · NLL_seq,θ(b)/|y_b| − δ)."""
    nll, counts = sequence_nll(logits, labels)
    return simnpo_loss_from_nll(nll, counts, beta, delta)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Token mean of −Σ_v softmax(z_ref − γ·onehot(y))_v · log_softmax(z)_v."""
    z, y = supervised_positions(logits, labels)
    with torch.no_grad():
        teacher, _ = supervised_positions(ref_logits, labels)
        teacher[torch.arange(y.numel(), device=y.device), y] -= gamma
        teacher_probs = F.softmax(teacher, dim=-1)
    return token_mean(-(teacher_probs * F.log_softmax(z, dim=-1)).sum(-1))


def unilogit_forget_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target_logits: torch.Tensor | None = None,
    divergence: Divergence = "reverse",
) -> torch.Tensor:
    """Token mean of KL(p_θ ‖ p̃) (reverse) or KL(p̃ ‖ p_θ) (forward), p̃ the uniform-logit target."""
    check_divergence(divergence)
    z, y = supervised_positions(logits, labels)
    with torch.no_grad():
        source = z if target_logits is None else supervised_positions(target_logits, labels)[0]
        target_log_probs = unilogit_target_log_probs(source, y)
    log_probs = F.log_softmax(z, dim=-1)
    if divergence == "reverse":
        return token_mean((log_probs.exp() * (log_probs - target_log_probs)).sum(-1))
    return token_mean((target_log_probs.exp() * (target_log_probs - log_probs)).sum(-1))


def kl_retain_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token mean of KL(p_ref ‖ p_θ)."""
    z, _ = supervised_positions(logits, labels)
    with torch.no_grad():
        ref_log_probs = F.log_softmax(supervised_positions(ref_logits, labels)[0], dim=-1)
    return token_mean((ref_log_probs.exp() * (ref_log_probs - F.log_softmax(z, dim=-1))).sum(-1))
