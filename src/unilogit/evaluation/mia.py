"""Membership-inference metrics: Min-K% and Min-K%++ scores of a text, ROC AUC (scikit-learn), and PrivLeak."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def min_k_score(token_log_probs: Sequence[float] | torch.Tensor, k: float = 0.4) -> float:
    """Min-K% score: −mean of the m = max(1, ⌊k·n⌋) lowest of the n token log-probs (k = 0.4 is MUSE's).

    The count is floored, as MUSE's ``int(len(all_prob) * ratio)``; MUSE has no lower bound (and gives
    NaN when ⌊k·n⌋ = 0), here at least one token is used. Higher means less likely (less "member").
    """
    values = torch.as_tensor(token_log_probs, dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("min_k_score needs at least one token log-prob")
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    m = max(1, int(n * k))
    return float(-torch.sort(values).values[:m].mean())


def min_k_plus_plus(log_probs: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, k: float = 0.2) -> float:
    """Min-K%++: the mean of the m = max(1, ⌊k·n⌋) lowest (log p(x_t) − μ_t) / σ_t (higher: more "member")."""
    scores = ((log_probs.double() - mu.double()) / sigma.double().clamp_min(1e-12)).flatten()
    m = max(1, int(scores.numel() * k))
    return float(torch.sort(scores).values[:m].mean())


def auc(scores_pos: Sequence[float], scores_neg: Sequence[float]) -> float:
    """ROC AUC with the positives labelled 1: P(s⁺ > s⁻) + ½·P(s⁺ = s⁻) over all (pos, neg) pairs.

    scikit-learn's ``roc_auc_score``, as MUSE computes it; the checks here only turn its errors on empty or
    non-finite input into messages that name this function.
    """
    pos = np.asarray(list(scores_pos), dtype=np.float64).ravel()
    neg = np.asarray(list(scores_neg), dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    if not np.isfinite(scores).all():
        raise ValueError("auc scores must be finite")
    from sklearn.metrics import roc_auc_score  # here: importing scikit-learn takes seconds

    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    return float(roc_auc_score(labels, scores))


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak = (AUC_unlearned − AUC_retrain) / AUC_retrain × 100."""
    if auc_retrain == 0:
        raise ValueError("PrivLeak is undefined when AUC_retrain is 0")
    return (auc_unlearned - auc_retrain) / auc_retrain * 100.0
