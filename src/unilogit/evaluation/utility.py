"""Utility metrics: TruthfulQA's MC1 and the n-gram entropy of generated text (RWKU's fluency)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def truthfulqa_mc1(true_score: float, false_scores: Sequence[float]) -> float:
    """MC1: 1 when the correct answer's log-likelihood beats every wrong one's, else 0."""
    return float(true_score > max(false_scores))


_WORDS = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """RWKU's fluency: mean over n of w_n · H_n, H_n = −Σ f log₂ f over the n-gram frequencies of ``text``.

    The n-grams and their frequencies are nltk's (``ngrams``, ``FreqDist``), as in RWKU's ``eval_fluency.py``.
    Words are ``\\w+`` runs and single punctuation marks. RWKU splits with nltk's ``word_tokenize``, whose
    sentence splitter needs the punkt model that nltk downloads at run time; the two agree on plain words
    and sentence punctuation and differ inside tokens such as "don't", "well-known", "3.14" and "Mr.".
    A text with fewer than n words contributes H_n = 0.
    """
    from nltk import FreqDist, ngrams

    words = _WORDS.findall(text)
    parts = []
    for n, weight in zip(ns, weights, strict=True):
        counts = FreqDist(ngrams(words, n))
        total = counts.N()
        # values() in first-seen order, as RWKU reads them (iterating a FreqDist goes by frequency instead).
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(weight * entropy)
    return sum(parts) / len(parts)
