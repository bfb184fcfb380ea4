"""Unlearning objectives as pure functions of tensors.

Conventions shared by every function (see docs/METHODS.md):

* ``logits`` z is ``[B, T, V]`` straight from the model, unshifted; ``labels`` y is ``[B, T]`` with
  ``-100`` for ignored positions. Every loss shifts internally: ``z[:, :-1]`` predicts ``y[:, 1:]``.
* Only supervised positions (shifted ``y != -100``) are read, so padding and prompt tokens never
  enter a loss, and ``-100`` is never used as an index.
* Softmax, log-softmax and KL are computed in fp32 whatever the input dtype.
* "Token mean" averages over all supervised tokens of the batch; "sequence mean" over the rows that
  have at least one supervised token. A batch with nothing supervised gives 0 (still differentiable).

Memory: every loss reads the supervised rows of the logits in chunks of about ``CHUNK_ELEMENTS``
values, upcasts only the chunk to fp32, and writes its gradient out by hand (a custom autograd
function), so no fp32 copy of ``[N, V]`` is kept for the backward pass: it saves the logits it was
given and one fp32 value per position, and recomputes a chunk's softmax when the gradient is asked
for. The backward pass allocates the gradient of the logits (the model needs it) and one chunk.
:mod:`unilogit.losses_reference` holds the straightforward formulas these match.

Each public loss returns a 0-dim tensor that is differentiable with respect to ``logits``.
``ref_logits`` and ``target_logits`` may also be given as the ``[N, V]`` rows at the supervised
positions (:func:`supervised_rows`), which is all a distillation term needs of the reference model.
The ``*_from_*`` helpers take precomputed statistics, so the trainer can run the reference model under
``no_grad`` and keep only what a loss needs (for NPO, one NLL per sequence).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

Divergence = Literal["reverse", "forward"]

# fp32 values per chunk of rows (16 MiB): bounds each temporary whatever the batch and vocabulary.
CHUNK_ELEMENTS = 1 << 22

Index = tuple[torch.Tensor, ...]


def supervised_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(b, t, y)`` of the supervised positions: ``logits[b, t]`` predicts ``y = labels[b, t + 1]``."""
    mask = labels[:, 1:] != IGNORE_INDEX
    b, t = mask.nonzero(as_tuple=True)
    return b, t, labels[:, 1:][mask]


def supervised_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ``[N, V]`` logits at supervised positions, in their own dtype (a copy of N rows, not of B·T)."""
    b, t, _ = supervised_index(labels)
    return logits[b, t]


def token_mean(values: torch.Tensor) -> torch.Tensor:
    """Sum over ``values`` divided by their count (0 for none)."""
    return values.sum() / max(values.numel(), 1)


def check_divergence(divergence: str) -> None:
    """Raise ``ValueError`` unless ``divergence`` is ``"reverse"`` or ``"forward"``."""
    if divergence not in ("reverse", "forward"):
        raise ValueError(f"divergence must be 'reverse' or 'forward', got {divergence!r}")


# --------------------------------------------------------------------------------------------------
# Per-position kernels on fp32 chunks [C, V], with their gradients written out
# --------------------------------------------------------------------------------------------------


class _Kernel(ABC):
    """A per-position loss ℓ(z) of fp32 logits ``z [C, V]``, labels ``y [C]`` and optional rows
    ``aux [C, V]`` of a second, constant source (reference or target logits; a fresh fp32 copy)."""

    @abstractmethod
    def value(self, z: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        """ℓ ``[C]``."""

    @abstractmethod
    def grad(self, z: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        """∂ℓ/∂z ``[C, V]``; ``value`` is what :meth:`value` returned for the chunk."""


def _rows_of(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


class _NLL(_Kernel):
    # ℓ = logsumexp(z) − z_y; ∂ℓ/∂z = softmax(z) − onehot(y).
    def value(self, z, y, aux):
        return torch.logsumexp(z, dim=-1) - z.gather(1, y[:, None]).squeeze(1)

    def grad(self, z, y, aux, value):
        g = F.softmax(z, dim=-1)
        g[_rows_of(y.numel(), y.device), y] -= 1.0
        return g


class _SoftCE(_Kernel):
    # UnDIAL: teacher q = softmax(z_ref − γ·onehot(y)); ℓ = −Σ q·log_softmax(z); ∂ℓ/∂z = softmax(z) − q.
    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def _teacher(self, aux: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aux[_rows_of(y.numel(), y.device), y] -= self.gamma  # aux is a fresh copy of the chunk
        return F.softmax(aux, dim=-1)

    def value(self, z, y, aux):
        return -(self._teacher(aux, y) * F.log_softmax(z, dim=-1)).sum(-1)

    def grad(self, z, y, aux, value):
        return F.softmax(z, dim=-1) - self._teacher(aux, y)


class _ForwardKL(_Kernel):
    # KL(p_ref ‖ p_θ) = Σ p_ref (log p_ref − log p_θ); ∂/∂z = p_θ − p_ref.
    def value(self, z, y, aux):
        ref_log_probs = F.log_softmax(aux, dim=-1)
        return (ref_log_probs.exp() * (ref_log_probs - F.log_softmax(z, dim=-1))).sum(-1)

    def grad(self, z, y, aux, value):
        return F.softmax(z, dim=-1) - F.softmax(aux, dim=-1)


class _Unilogit(_Kernel):
    # The target log p̃ is a constant built from z itself (detached) or from aux.
    # reverse: ℓ = Σ p (log p − log p̃), ∂ℓ/∂z_j = p_j (log p_j − log p̃_j − ℓ).
    # forward: ℓ = Σ p̃ (log p̃ − log p), ∂ℓ/∂z = p − p̃.
    def __init__(self, divergence: Divergence) -> None:
        self.divergence = divergence

    def _target(self, z: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        return unilogit_target_log_probs(z if aux is None else aux, y)

    def value(self, z, y, aux):
        target = self._target(z, y, aux)
        log_probs = F.log_softmax(z, dim=-1)
        if self.divergence == "reverse":
            return (log_probs.exp() * (log_probs - target)).sum(-1)
        return (target.exp() * (target - log_probs)).sum(-1)

    def grad(self, z, y, aux, value):
        target = self._target(z, y, aux)
        log_probs = F.log_softmax(z, dim=-1)
        if self.divergence == "reverse":
            return log_probs.exp() * (log_probs - target - value[:, None])
        return log_probs.exp() - target.exp()


def _chunks(n: int, vocab: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _gather(source: torch.Tensor, index: Index, chunk: slice) -> torch.Tensor:
    return source[tuple(i[chunk] for i in index)].float()


class _RowLoss(torch.autograd.Function):
    """Per-position values ``[N]`` of a kernel at the indexed rows of ``logits``, chunk by chunk.

    Saves ``logits`` (no copy) and the values; ``aux`` is ``(source, index)`` of a constant second
    source or None, read again chunk by chunk in the backward pass and never differentiated.
    """

    @staticmethod
    def forward(ctx: Any, logits, kernel, index, y, aux):  # noqa: ANN001, ANN205 - autograd signature
        values = torch.empty(y.numel(), dtype=torch.float32, device=logits.device)
        for chunk in _chunks(y.numel(), logits.size(-1)):
            other = None if aux is None else _gather(*aux, chunk)
            values[chunk] = kernel.value(_gather(logits, index, chunk), y[chunk], other)
        ctx.save_for_backward(logits, values)
        ctx.kernel, ctx.index, ctx.y, ctx.aux = kernel, index, y, aux
        return values

    @staticmethod
    def backward(ctx: Any, grad_values):  # noqa: ANN001, ANN205 - autograd signature
        logits, values = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for chunk in _chunks(ctx.y.numel(), logits.size(-1)):
            other = None if ctx.aux is None else _gather(*ctx.aux, chunk)
            g = ctx.kernel.grad(_gather(logits, ctx.index, chunk), ctx.y[chunk], other, values[chunk])
            grad[tuple(i[chunk] for i in ctx.index)] = (g * grad_values[chunk, None]).to(grad.dtype)
        return grad, None, None, None, None


def _per_position(
    kernel: _Kernel, logits: torch.Tensor, labels: torch.Tensor, other: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [N], row b of each position)``; ``other`` is ``[B, T, V]`` or its ``[N, V]`` supervised rows."""
    b, t, y = supervised_index(labels)
    aux = None
    if other is not None:
        if other.dim() == 2 and other.size(0) != y.numel():
            raise ValueError(f"reference rows have {other.size(0)} rows, but the labels supervise {y.numel()}")
        aux = (other, (b, t) if other.dim() == 3 else (_rows_of(y.numel(), other.device),))
    return _RowLoss.apply(logits, kernel, (b, t), y, aux), b


# --------------------------------------------------------------------------------------------------
# Public losses
# --------------------------------------------------------------------------------------------------


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL and supervised-token count.

    NLL_seq(b) = Σ_t −log p_θ(y_{b,t} | y_{b,<t}) over the supervised tokens of row b.
    Returns ``(nll [B] fp32, count [B] long)``.
    """
    token_nll, rows = _per_position(_NLL(), logits, labels)
    nll = torch.zeros(labels.size(0), dtype=torch.float32, device=logits.device).index_add(0, rows, token_nll)
    return nll, (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def nll_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood: L = (1/N) Σ_{supervised t} −log softmax(z_t)[y_t]."""
    return token_mean(_per_position(_NLL(), logits, labels)[0])


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
    return token_mean(_per_position(_SoftCE(gamma), logits, labels, ref_logits)[0])


def unilogit_target_log_probs(target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p̃ for Unilogit's uniform-logit target, on ``[N, V]`` logits h and labels k.

    h̃_i = h_i for i ≠ k and h̃_k = logsumexp_{i≠k}(h_i) − log(V−1), so softmax(h̃)_k = 1/V exactly
    and the ratios among the other tokens are kept. The logsumexp over i ≠ k is taken directly (h_k
    set to −inf), never as LSE + log(1 − p_k), which cancels when p_k → 1.
    """
    vocab = target.size(-1)
    rows = _rows_of(y.numel(), y.device)
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
    check_divergence(divergence)
    return token_mean(_per_position(_Unilogit(divergence), logits, labels, target_logits)[0])


def kl_retain_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward KL to the initial model on the retain set.

    L = token mean of KL(p_ref ‖ p_θ) = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v)).
    """
    return token_mean(_per_position(_ForwardKL(), logits, labels, ref_logits)[0])
