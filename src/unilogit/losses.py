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
    ``aux [C, V]`` of a second, constant source (reference or target logits). Both are fresh copies
    with each row shifted by its maximum (see :func:`_gather`)."""

    @abstractmethod
    def forward(self, z: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        """Per-row statistics ``[C, K]``: column 0 is ℓ, the others are what :meth:`grad` reuses."""

    @abstractmethod
    def grad(self, z: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None, stats: torch.Tensor) -> torch.Tensor:
        """∂ℓ/∂z ``[C, V]``, given the chunk's statistics from :meth:`forward`."""


def _rows_of(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def _at_label(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.gather(1, y[:, None]).squeeze(1)


def _softmax_from(x: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """softmax(x) from its precomputed logsumexp: one pass fewer than ``F.softmax``."""
    return torch.exp(x - lse[:, None])


class _NLL(_Kernel):
    # ℓ = logsumexp(z) − z_y; ∂ℓ/∂z = softmax(z) − onehot(y). Stats: ℓ, logsumexp(z).
    def forward(self, z, y, aux):
        lse = torch.logsumexp(z, dim=-1)
        return torch.stack([lse - _at_label(z, y), lse], dim=1)

    def grad(self, z, y, aux, stats):
        g = _softmax_from(z, stats[:, 1])
        g[_rows_of(y.numel(), y.device), y] -= 1.0
        return g


class _SoftCE(_Kernel):
    # UnDIAL: teacher q = softmax(z_ref − γ·onehot(y)); ℓ = −Σ q·log_softmax(z); ∂ℓ/∂z = softmax(z) − q.
    # Stats: ℓ, logsumexp(z), logsumexp(teacher).
    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def _teacher(self, aux: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aux[_rows_of(y.numel(), y.device), y] -= self.gamma  # aux is a fresh copy of the chunk
        return aux

    def forward(self, z, y, aux):
        teacher = self._teacher(aux, y)
        lse_z, lse_t = torch.logsumexp(z, dim=-1), torch.logsumexp(teacher, dim=-1)
        value = -(_softmax_from(teacher, lse_t) * (z - lse_z[:, None])).sum(-1)
        return torch.stack([value, lse_z, lse_t], dim=1)

    def grad(self, z, y, aux, stats):
        return _softmax_from(z, stats[:, 1]) - _softmax_from(self._teacher(aux, y), stats[:, 2])


class _ForwardKL(_Kernel):
    # KL(p_ref ‖ p_θ) = Σ p_ref (log p_ref − log p_θ); ∂/∂z = p_θ − p_ref. Stats: ℓ, logsumexp(z), logsumexp(ref).
    def forward(self, z, y, aux):
        lse_z, lse_r = torch.logsumexp(z, dim=-1), torch.logsumexp(aux, dim=-1)
        ref_log_probs = aux - lse_r[:, None]
        value = (ref_log_probs.exp() * (ref_log_probs - (z - lse_z[:, None]))).sum(-1)
        return torch.stack([value, lse_z, lse_r], dim=1)

    def grad(self, z, y, aux, stats):
        return _softmax_from(z, stats[:, 1]) - _softmax_from(aux, stats[:, 2])


class _UnilogitOwnTarget(_Kernel):
    """Reverse Unilogit with the target built from z itself: the Bernoulli closed form.

    With p_k the label's probability, p̃ keeps the other tokens' ratios, so log p_j − log p̃_j is the
    same d = log(1 − p_k) − log(1 − 1/V) for every j ≠ k, and ℓ = p_k·(log p_k + log V) + (1 − p_k)·d.
    ∂ℓ/∂z_j = p_j·(d − ℓ) for j ≠ k and p_k·(log p_k + log V − ℓ). This is exact, needs one logsumexp
    over the other tokens and no [C, V] target, and avoids the cancellation of log p − log p̃ when the
    two are close. log(1 − p_k) is log1p(−p_k) when p_k ≤ 1/2 and the logsumexp over i ≠ k minus the
    full one otherwise, each free of cancellation where it is used. Stats: ℓ, logsumexp(z), d, log p_k.
    """

    def forward(self, z, y, aux):
        vocab = z.size(-1)
        rows = _rows_of(y.numel(), y.device)
        others = z.clone()
        others[rows, y] = float("-inf")
        lse_others = torch.logsumexp(others, dim=-1)
        label = z[rows, y]
        lse = torch.logaddexp(lse_others, label)
        log_p = label - lse
        p = log_p.exp()
        log_rest = torch.where(p <= 0.5, torch.log1p(-p), lse_others - lse)
        d = log_rest - math.log1p(-1.0 / vocab)
        # (1 − p_k)·d is 0 when 1 − p_k underflows to 0 (d is then −inf).
        rest_term = torch.where(log_rest > float("-inf"), log_rest.exp() * d, torch.zeros_like(d))
        value = p * (log_p + math.log(vocab)) + rest_term
        return torch.stack([value, lse, d, log_p], dim=1)

    def grad(self, z, y, aux, stats):
        value, lse, d, log_p = stats.unbind(1)
        rows = _rows_of(y.numel(), y.device)
        g = _softmax_from(z, lse)
        g *= torch.nan_to_num(d - value, neginf=0.0)[:, None]  # p_j·(d − ℓ); p_j is 0 wherever d is −inf
        g[rows, y] = log_p.exp() * (log_p + math.log(z.size(-1)) - value)
        return g


class _Unilogit(_Kernel):
    # The target log p̃ is built from aux (θ_o's logits) and is a constant.
    # reverse: ℓ = Σ p (log p − log p̃), ∂ℓ/∂z_j = p_j (log p_j − log p̃_j − ℓ).
    # forward: ℓ = Σ p̃ (log p̃ − log p), ∂ℓ/∂z = p − p̃. Stats: ℓ, logsumexp(z).
    def __init__(self, divergence: Divergence) -> None:
        self.divergence = divergence

    def forward(self, z, y, aux):
        target = unilogit_target_log_probs(z if aux is None else aux, y)
        lse = torch.logsumexp(z, dim=-1)
        log_probs = z - lse[:, None]
        if self.divergence == "reverse":
            value = (log_probs.exp() * (log_probs - target)).sum(-1)
        else:
            value = (target.exp() * (target - log_probs)).sum(-1)
        return torch.stack([value, lse], dim=1)

    def grad(self, z, y, aux, stats):
        target = unilogit_target_log_probs(z if aux is None else aux, y)
        log_probs = z - stats[:, 1:2]
        if self.divergence == "reverse":
            return log_probs.exp() * (log_probs - target - stats[:, :1])
        return log_probs.exp() - target.exp()


def _chunks(n: int, vocab: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _gather(source: torch.Tensor, index: Index, chunk: slice) -> torch.Tensor:
    """fp32 rows of a chunk, each shifted by its maximum.

    Every kernel is shift-invariant per row; shifted, a logsumexp lies in [0, log V], so ``z − lse``
    keeps fp32's relative precision even for logits of 1e4 (as ``F.log_softmax`` does internally).
    """
    rows = source[tuple(i[chunk] for i in index)].float()
    return rows.sub_(rows.amax(dim=-1, keepdim=True))


class _RowLoss(torch.autograd.Function):
    """Per-position values ``[N]`` of a kernel at the indexed rows of ``logits``, chunk by chunk.

    Saves ``logits`` (no copy) and a few fp32 statistics per position; ``aux`` is ``(source, index)``
    of a constant second source or None, read again chunk by chunk in the backward pass and never
    differentiated.
    """

    @staticmethod
    def forward(ctx: Any, logits, kernel, index, y, aux):  # noqa: ANN001, ANN205 - autograd signature
        stats = [
            kernel.forward(_gather(logits, index, chunk), y[chunk], None if aux is None else _gather(*aux, chunk))
            for chunk in _chunks(y.numel(), logits.size(-1))
        ]
        stats = torch.cat(stats) if stats else torch.zeros(0, 1, device=logits.device)
        ctx.save_for_backward(logits, stats)
        ctx.kernel, ctx.index, ctx.y, ctx.aux = kernel, index, y, aux
        return stats[:, 0].clone()

    @staticmethod
    def backward(ctx: Any, grad_values):  # noqa: ANN001, ANN205 - autograd signature
        logits, stats = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for chunk in _chunks(ctx.y.numel(), logits.size(-1)):
            other = None if ctx.aux is None else _gather(*ctx.aux, chunk)
            g = ctx.kernel.grad(_gather(logits, ctx.index, chunk), ctx.y[chunk], other, stats[chunk])
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
    # Summed in float64: an fp32 running sum of hundreds of tokens drifts by ~1e-6 relative, which
    # SimNPO's and NPO's exponential tails magnify.
    nll = torch.zeros(labels.size(0), dtype=torch.float64, device=logits.device).index_add(0, rows, token_nll.double())
    return nll.float(), (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


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
    """NPO from per-sequence NLLs: L = −(2/β) · mean_b log σ(β · (NLL_θ(b) − NLL_ref(b))).

    The ``[B]``-sized arithmetic runs in float64 (it costs nothing) and the result is fp32.
    """
    margin = nll.double() - ref_nll.detach().double()
    return (-(2.0 / beta) * _sequence_mean(F.logsigmoid(beta * margin), counts)).float()


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
    """SimNPO from per-sequence NLLs: L = −(2/β) · mean_b log σ(β · NLL_seq(b)/|y_b| − δ), in float64 as NPO's."""
    per_token = nll.double() / counts.clamp(min=1)
    return (-(2.0 / beta) * _sequence_mean(F.logsigmoid(beta * per_token - delta), counts)).float()


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
    h = target.to(torch.promote_types(target.dtype, torch.float32), copy=True)
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
    own = target_logits is None and divergence == "reverse"
    kernel = _UnilogitOwnTarget() if own else _Unilogit(divergence)
    return token_mean(_per_position(kernel, logits, labels, target_logits)[0])


def kl_retain_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward KL to the initial model on the retain set.

    L = token mean of KL(p_ref ‖ p_θ) = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v)).
    """
    return token_mean(_per_position(_ForwardKL(), logits, labels, ref_logits)[0])
