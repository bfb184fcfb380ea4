"""Unlearning objectives as pure functions of tensors.

Conventions shared by every function (see docs/METHODS.md):

* ``logits`` z is ``[B, T, V]`` straight from the model, unshifted; ``labels`` y is ``[B, T]`` with
  ``-100`` for ignored positions. Every loss shifts internally: ``z[:, :-1]`` predicts ``y[:, 1:]``.
* Only supervised positions (shifted ``y != -100``) are gathered, so padding and prompt tokens never
  enter a loss, and ``-100`` is never used as an index.
* Softmax, log-softmax and KL are computed in fp32 whatever the input dtype.
* "Token mean" averages over all supervised tokens of the batch; "sequence mean" over the rows that
  have at least one supervised token. A batch with nothing supervised gives 0 (still differentiable).

Each public loss returns a 0-dim tensor that is differentiable with respect to ``logits``. The
``*_from_*`` helpers take precomputed statistics, so the trainer can run the reference model under
``no_grad`` and keep only what a loss needs (for NPO, one NLL per sequence).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

Divergence = Literal["reverse", "forward"]


def supervised_positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift by one and return ``(z, y)`` at supervised positions: z is ``[N, V]`` fp32, y is ``[N]``."""
    mask = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1][mask].float(), labels[:, 1:][mask]


def _token_mean(values: torch.Tensor) -> torch.Tensor:
    return values.sum() / max(values.numel(), 1)


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL and supervised-token count.

    NLL_seq(b) = Σ_t −log p_θ(y_{b,t} | y_{b,<t}) over the supervised tokens of row b.
    Returns ``(nll [B] fp32, count [B] long)``.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    z, y = logits[:, :-1][mask].float(), labels[:, 1:][mask]
    token_nll = F.cross_entropy(z, y, reduction="none")
    rows = mask.nonzero()[:, 0]
    nll = torch.zeros(labels.size(0), dtype=torch.float32, device=logits.device).index_add(0, rows, token_nll)
    return nll, mask.sum(dim=1)


def nll_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood: L = (1/N) Σ_{supervised t} −log softmax(z_t)[y_t]."""
    z, y = supervised_positions(logits, labels)
    return _token_mean(F.cross_entropy(z, y, reduction="none"))


def ga_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: L = −nll_loss(z, y). Unbounded below; pair it with a retain term."""
    return -nll_loss(logits, labels)


def _sequence_mean(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    keep = counts > 0
    return values[keep].sum() / max(int(keep.sum()), 1)


def npo_loss_from_nll(nll: torch.Tensor, ref_nll: torch.Tensor, counts: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO from per-sequence NLLs: L = −(2/β) · mean_b log σ(β · (NLL_θ(b) − NLL_ref(b)))."""
    return -(2.0 / beta) * _sequence_mean(F.logsigmoid(beta * (nll - ref_nll.detach())), counts)


def npo_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024).

    L = −(2/β) · mean_b log σ( β · (NLL_seq,θ(b) − NLL_seq,ref(b)) ), with NLL_seq the summed
    token NLL of row b and the mean over rows that have supervised tokens. At θ = θ_ref it equals
    (2/β)·ln 2.
    """
    nll, counts = sequence_nll(logits, labels)
    with torch.no_grad():
        ref_nll, _ = sequence_nll(ref_logits, labels)
    return npo_loss_from_nll(nll, ref_nll, counts, beta)


def simnpo_loss_from_nll(nll: torch.Tensor, counts: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO from per-sequence NLLs: L = −(2/β) · mean_b log σ(β · NLL_seq(b)/|y_b| − δ)."""
    per_token = nll / counts.clamp(min=1)
    return -(2.0 / beta) * _sequence_mean(F.logsigmoid(beta * per_token - delta), counts)


def simnpo_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024), reference-free, length-normalised NPO.

    L = −(2/β) · mean_b log σ( β · NLL_seq,θ(b) / |y_b| − δ ).
    """
    nll, counts = sequence_nll(logits, labels)
    return simnpo_loss_from_nll(nll, counts, beta, delta)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """UnDIAL: self-distillation toward the reference with the label logit lowered (Dong et al. 2024).

    Teacher z̃ = z_ref − γ·onehot(y) at each supervised position (by shift-invariance the same as
    adding γ to every other logit). L = token mean of −Σ_v softmax(z̃)_v · log_softmax(z)_v.
    """
    z, y = supervised_positions(logits, labels)
    with torch.no_grad():
        teacher, _ = supervised_positions(ref_logits, labels)
        teacher[torch.arange(y.numel(), device=y.device), y] -= gamma
        teacher_probs = F.softmax(teacher, dim=-1)
    return _token_mean(-(teacher_probs * F.log_softmax(z, dim=-1)).sum(-1))


def unilogit_target_log_probs(target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p̃ for Unilogit's uniform-logit target, on ``[N, V]`` logits h and labels k.

    h̃_i = h_i for i ≠ k and h̃_k = logsumexp_{i≠k}(h_i) − log(V−1), so softmax(h̃)_k = 1/V exactly
    and the ratios among the other tokens are kept. The logsumexp over i ≠ k is taken directly (h_k
    set to −inf), never as LSE + log(1 − p_k), which cancels when p_k → 1.
    """
    vocab = target.size(-1)
    rows = torch.arange(y.numel(), device=y.device)
    h = target.float().clone()
    h[rows, y] = float("-inf")
    h[rows, y] = torch.logsumexp(h, dim=-1) - math.log(vocab - 1)
    return F.log_softmax(h, dim=-1)


def unilogit_forget_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target_logits: torch.Tensor | None = None,
    divergence: Divergence = "reverse",
) -> torch.Tensor:
    """Unilogit forget term: distil toward the model's own distribution with the label at 1/|V|.

    The target p̃ = softmax(h̃) is built from h = the detached current logits (default) or
    ``target_logits`` (θ_o's, the paper's ablation); see :func:`unilogit_target_log_probs`.

    * ``divergence="reverse"`` (the paper's choice): token mean of KL(p_θ ‖ p̃)
      = Σ_v p_θ(v)(log p_θ(v) − log p̃(v)). With the default target this equals the Bernoulli
      divergence p_k·log(V·p_k) + (1−p_k)·log((1−p_k)/(1−1/V)): zero at p_k = 1/V, positive
      otherwise, and bounded below, unlike GA.
    * ``divergence="forward"``: token mean of KL(p̃ ‖ p_θ).
    """
    if divergence not in ("reverse", "forward"):
        raise ValueError(f"divergence must be 'reverse' or 'forward', got {divergence!r}")
    z, y = supervised_positions(logits, labels)
    with torch.no_grad():
        source = z if target_logits is None else supervised_positions(target_logits, labels)[0]
        target_log_probs = unilogit_target_log_probs(source, y)
    log_probs = F.log_softmax(z, dim=-1)
    if divergence == "reverse":
        return _token_mean((log_probs.exp() * (log_probs - target_log_probs)).sum(-1))
    return _token_mean((target_log_probs.exp() * (target_log_probs - log_probs)).sum(-1))


def kl_retain_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward KL to the initial model on the retain set.

    L = token mean of KL(p_ref ‖ p_θ) = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v)).
    """
    z, _ = supervised_positions(logits, labels)
    with torch.no_grad():
        ref_log_probs = F.log_softmax(supervised_positions(ref_logits, labels)[0], dim=-1)
    return _token_mean((ref_log_probs.exp() * (ref_log_probs - F.log_softmax(z, dim=-1))).sum(-1))
