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
function): when the logits need a gradient, the forward pass turns each chunk in place into its
∂ℓ/∂z (for NLL, exp(z − logsumexp z) − onehot(y)) and stores it in a zero-filled buffer shaped like
the logits, in their dtype. That buffer and the positions' indices are all a loss keeps, not
even the logits; the backward pass scales each row of the buffer by the gradient of its value (for
NPO and SimNPO the per-sequence weight, known once the forward pass is done), in place, and returns
it. So value and gradient together need the gradient of the logits (the model needs it anyway) and a
few chunks. :mod:`unilogit.losses_reference` holds the straightforward formulas these match.

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

# fp32 values per chunk of rows (4 MiB, 8 rows of Llama 3's vocabulary): bounds each temporary whatever
# the batch and vocabulary, small beside the gradient of the logits, the one full-size tensor a loss makes.
CHUNK_ELEMENTS = 1 << 20

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
    with each row shifted by its maximum (see :func:`_gather`), scratch space the kernel may overwrite."""

    @abstractmethod
    def __call__(self, z: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None, grad: bool) -> torch.Tensor:
        """ℓ per row ``[C]``; with ``grad``, also overwrite ``z`` in place with ∂ℓ/∂z."""


def _rows_of(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def _at_label(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.gather(1, y[:, None]).squeeze(1)


def _softmax_(x: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """softmax(x), in place, from its precomputed logsumexp."""
    return x.sub_(lse[:, None]).exp_()


class _NLL(_Kernel):
    # ℓ = logsumexp(z) − z_y; ∂ℓ/∂z = softmax(z) − onehot(y).
    def __call__(self, z, y, aux, grad):
        lse = torch.logsumexp(z, dim=-1)
        value = lse - _at_label(z, y)
        if grad:
            _softmax_(z, lse)[_rows_of(y.numel(), y.device), y] -= 1.0
        return value


class _SoftCE(_Kernel):
    # UnDIAL: teacher q = softmax(z_ref − γ·onehot(y)); ℓ = −Σ q·log_softmax(z); ∂ℓ/∂z = softmax(z) − q.
    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def __call__(self, z, y, aux, grad):
        aux[_rows_of(y.numel(), y.device), y] -= self.gamma  # the teacher's logits
        lse_z, lse_t = torch.logsumexp(z, dim=-1), torch.logsumexp(aux, dim=-1)
        teacher = _softmax_(aux, lse_t)
        value = -(teacher * (z - lse_z[:, None])).sum(-1)
        if grad:
            _softmax_(z, lse_z).sub_(teacher)
        return value


class _ForwardKL(_Kernel):
    # KL(p_ref ‖ p_θ) = Σ p_ref (log p_ref − log p_θ); ∂/∂z = p_θ − p_ref.
    def __call__(self, z, y, aux, grad):
        lse_z, lse_r = torch.logsumexp(z, dim=-1), torch.logsumexp(aux, dim=-1)
        ref_log_probs = aux.sub_(lse_r[:, None])
        ref_probs = ref_log_probs.exp()
        value = (ref_probs * (ref_log_probs - (z - lse_z[:, None]))).sum(-1)
        if grad:
            _softmax_(z, lse_z).sub_(ref_probs)
        return value


class _UnilogitOwnTarget(_Kernel):
    """Reverse Unilogit with the target built from z itself: the Bernoulli closed form.

    With p_k the label's probability, p̃ keeps the other tokens' ratios, so log p_j − log p̃_j is the
    same d = log(1 − p_k) − log(1 − 1/V) for every j ≠ k, and ℓ = p_k·(log p_k + log V) + (1 − p_k)·d.
    ∂ℓ/∂z_j = p_j·(d − ℓ) for j ≠ k and p_k·(log p_k + log V − ℓ). This is exact, needs one logsumexp
    over the other tokens and no [C, V] target, and avoids the cancellation of log p − log p̃ when the
    two are close. log(1 − p_k) is log1p(−p_k) when p_k ≤ 1/2 and the logsumexp over i ≠ k minus the
    full one otherwise, each free of cancellation where it is used.
    """

    def __call__(self, z, y, aux, grad):
        vocab = z.size(-1)
        rows = _rows_of(y.numel(), y.device)
        label = z[rows, y]
        z[rows, y] = float("-inf")
        lse_others = torch.logsumexp(z, dim=-1)
        z[rows, y] = label
        lse = torch.logaddexp(lse_others, label)
        log_p = label - lse
        p = log_p.exp()
        log_rest = torch.where(p <= 0.5, torch.log1p(-p), lse_others - lse)
        d = log_rest - math.log1p(-1.0 / vocab)
        # (1 − p_k)·d is 0 when 1 − p_k underflows to 0 (d is then −inf).
        rest_term = torch.where(log_rest > float("-inf"), log_rest.exp() * d, torch.zeros_like(d))
        value = p * (log_p + math.log(vocab)) + rest_term
        if grad:
            g = _softmax_(z, lse)
            g *= torch.nan_to_num(d - value, neginf=0.0)[:, None]  # p_j·(d − ℓ); p_j is 0 wherever d is −inf
            g[rows, y] = p * (log_p + math.log(vocab) - value)
        return value


class _Unilogit(_Kernel):
    # The target log p̃ is built from aux (θ_o's logits) and is a constant.
    # reverse: ℓ = Σ p (log p − log p̃), ∂ℓ/∂z_j = p_j (log p_j − log p̃_j − ℓ).
    # forward: ℓ = Σ p̃ (log p̃ − log p), ∂ℓ/∂z = p − p̃.
    def __init__(self, divergence: Divergence) -> None:
        self.divergence = divergence

    def __call__(self, z, y, aux, grad):
        target = unilogit_target_log_probs(z if aux is None else aux, y)
        log_probs = z.sub_(torch.logsumexp(z, dim=-1)[:, None])
        if self.divergence == "reverse":
            diff = log_probs - target
            probs = log_probs.exp_()
            value = (probs * diff).sum(-1)
            if grad:
                probs.mul_(diff.sub_(value[:, None]))
            return value
        target_probs = target.exp()
        value = (target_probs * (target - log_probs)).sum(-1)
        if grad:
            log_probs.exp_().sub_(target_probs)
        return value


def _chunks(n: int, vocab: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _rows(index: Index, chunk: slice) -> Index:
    return tuple(i[chunk] for i in index)


def _gather(source: torch.Tensor, index: Index, chunk: slice) -> torch.Tensor:
    """fp32 rows of a chunk, each shifted by its maximum.

    Every kernel is shift-invariant per row; shifted, a logsumexp lies in [0, log V], so ``z − lse``
    keeps fp32's relative precision even for logits of 1e4 (as ``F.log_softmax`` does internally).
    """
    rows = source[_rows(index, chunk)].float()
    return rows.sub_(rows.amax(dim=-1, keepdim=True))


class _RowLoss(torch.autograd.Function):
    """Per-position values ``[N]`` of a kernel at the indexed rows of ``logits``, chunk by chunk.

    ``aux`` is ``(source, index)`` of a constant second source or None, never differentiated. With
    ``grad``, the forward pass also writes each chunk's ∂ℓ/∂z into a zero-filled buffer shaped like
    ``logits`` (and of its dtype), and that buffer is all it keeps: the backward pass scales each row by
    the incoming gradient of its value, in place, and hands the buffer over as the gradient of the
    logits. Nothing is recomputed and nothing else of ``[N, V]`` is allocated; a second backward
    through the same graph (``retain_graph``) is refused, as the buffer is gone.
    """

    @staticmethod
    def forward(ctx: Any, logits, kernel, index, y, aux, grad):  # noqa: ANN001, ANN205 - autograd signature
        ctx.buffer = torch.zeros_like(logits) if grad else None
        ctx.index = index
        values = []
        for chunk in _chunks(y.numel(), logits.size(-1)):
            z = _gather(logits, index, chunk)
            values.append(kernel(z, y[chunk], None if aux is None else _gather(*aux, chunk), grad))
            if grad:
                ctx.buffer[_rows(index, chunk)] = z.to(ctx.buffer.dtype)
        return torch.cat(values) if values else torch.zeros(0, device=logits.device)

    @staticmethod
    def backward(ctx: Any, grad_values):  # noqa: ANN001, ANN205 - autograd signature
        grad, ctx.buffer = ctx.buffer, None
        if grad is None:
            raise RuntimeError("unilogit.losses: this gradient was already handed over; a loss cannot backward twice")
        scale = grad_values.new_zeros(grad.shape[:-1])
        scale[ctx.index] = grad_values
        return grad.mul_(scale.unsqueeze(-1)), None, None, None, None, None


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
    grad = torch.is_grad_enabled() and logits.requires_grad
    return _RowLoss.apply(logits, kernel, (b, t), y, aux, grad), b


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


def undial_target_log_probs(ref_logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """log q of UnDIAL's teacher on ``[N, V]`` reference logits and labels: q = softmax(z_ref − γ·onehot(y)).

    :func:`undial_loss` is the cross-entropy toward this q, computed in chunks without building it.
    """
    z = ref_logits.to(torch.promote_types(ref_logits.dtype, torch.float32), copy=True)
    z[_rows_of(y.numel(), y.device), y] -= gamma
    return F.log_softmax(z, dim=-1)


def unilogit_target_log_probs(target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p̃ for Unilogit's uniform-logit target, on ``[N, V]`` logits h and labels k.

    h̃_i = h_i for i ≠ k and h̃_k = logsumexp_{i≠k}(h_i) − log(V−1), so softmax(h̃)_k = 1/V exactly
    and the ratios among the other tokens are kept. In closed form, log p̃_k = −log V and
    log p̃_i = log(1 − 1/V) + h_i − logsumexp_{j≠k} h_j: the logsumexp over j ≠ k is taken directly
    (h_k set to −inf), never as LSE + log(1 − p_k), which cancels when p_k → 1, and h̃_k itself is never
    formed, since at the magnitude of a large logit gap fp32 would round it.
    """
    vocab = target.size(-1)
    rows = _rows_of(y.numel(), y.device)
    h = target.to(torch.promote_types(target.dtype, torch.float32), copy=True)
    h[rows, y] = float("-inf")
    log_p = F.log_softmax(h, dim=-1).add_(math.log1p(-1.0 / vocab))
    log_p[rows, y] = -math.log(vocab)
    return log_p


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


def forward_kl_rows(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """The forward KL of :func:`kl_retain_loss` per row of ``[N, V]`` rows (each row its own position):
    ``[N]`` fp32 values KL(softmax(ref_logits[n]) ‖ softmax(logits[n])). Log-probabilities are logits too."""
    rows = (_rows_of(logits.size(0), logits.device),)
    grad = torch.is_grad_enabled() and logits.requires_grad
    # The kernel reads no labels; ``y`` only gives the row count that sets the chunks.
    return _RowLoss.apply(logits, _ForwardKL(), rows, rows[0], (ref_logits, rows), grad)
