"""Text-overlap metrics: ROUGE-L (``rouge_score``, as MUSE; ``rouge``, as RWKU) and SQuAD's token F1."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (``rouge_score``, no stemmer): with LCS the longest common token subsequence,
    P = LCS/|prediction|, R = LCS/|reference|, F1 = 2PR/(P+R) (0 when either is empty).

    ``rouge_score`` lowercases and splits on every non-alphanumeric character before matching.
    """
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall: LCS(prediction, reference) / |reference| tokens (``rouge_score``, no stemmer)."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].recall)


@lru_cache(maxsize=1)
def _rwku_rouge() -> Any:
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"], stats=["r"])


def rouge_l_recall_rwku(prediction: str, reference: str) -> float:
    """ROUGE-L recall as RWKU scores its probes: the ``rouge`` package (``Rouge().get_scores``, ``rouge-l``,
    ``r``), which splits both texts into sentences at every ``.`` and into words at spaces, keeps case and
    punctuation ("Byron," does not match "Byron"; "Apple." matches "Apple"), and takes the summary-level union
    LCS over the reference's words.

    A prediction with no word left (empty, or only dots) scores 0: RWKU's code turns an empty answer into
    ``NOANSWER``, which matches nothing, and the package raises on one of only dots.
    """
    if not any(part.split() for part in prediction.split(".")):
        return 0.0
    return float(_rwku_rouge().get_scores(prediction, reference)[0]["rouge-l"]["r"])


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> list[str]:
    """SQuAD/TriviaQA normalization: lowercase, drop punctuation and articles, split on whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Max over the answers of the token F1 = 2PR/(P+R) between normalized tokens (1 if both are empty).

    Written out rather than taken from a library: it is SQuAD's official ten lines, and the maintained
    implementations (``evaluate``'s squad metric) would add a dependency tree for them.
    """
    best = 0.0
    pred = normalize_answer(prediction)
    for answer in answers:
        ref = normalize_answer(answer)
        if not pred or not ref:
            best = max(best, float(pred == ref))
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
