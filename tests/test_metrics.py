"""The evaluation metrics (text overlap, membership inference, KL, utility) and the table and results writers.

Beside the values by hand, each metric that moved to a maintained library or to a shared implementation is
compared with the formula it replaced, written out here, on random inputs: the values stay the same.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from unilogit.evaluation.divergence import mean_token_kl
from unilogit.evaluation.mia import auc, min_k_score, privleak
from unilogit.evaluation.muse import privleak_auc
from unilogit.evaluation.results import format_metrics_table, markdown_table, write_metrics
from unilogit.evaluation.text_overlap import rouge_l_f1, rouge_l_recall, token_f1
from unilogit.evaluation.utility import ngram_entropy, truthfulqa_mc1
from unilogit.sweep.runner import sweep_table

# ------------------------------------------------------------------------- the formulas that were replaced


def rank_auc(pos: list[float], neg: list[float]) -> float:
    """The hand-written AUC PrivLeak used before scikit-learn: Mann–Whitney U from average ranks."""
    both = torch.tensor(pos + neg, dtype=torch.float64)
    _, inverse, counts = torch.unique(both, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    ranks = (torch.cumsum(counts, 0) - counts + 1 + (counts - 1) / 2.0)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def counter_ngram_entropy(text: str) -> float:
    """The n-gram entropy fluency used before nltk: n-grams counted with a Counter."""
    words = re.findall(r"\w+|[^\w\s]", text)
    parts = []
    for n, weight in ((2, 2 / 3), (3, 4 / 3)):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(weight * entropy)
    return sum(parts) / len(parts)


def direct_mean_token_kl(model, reference, tokenizer, texts: list[str]) -> float:
    """The KL to the retrained model computed inline before it shared the training's KL, one text at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            log_q = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            log_p = F.log_softmax(reference(input_ids=ids).logits[0, :-1].float(), dim=-1)
            total += float((log_p.exp() * (log_p - log_q)).sum())
            count += ids.shape[1] - 1
    return total / count


# ------------------------------------------------------------------------------------------ text overlap


def test_rouge_l_by_hand() -> None:
    # reference "the cat sat on the mat" (6 tokens), prediction "the cat is on the mat" (6 tokens):
    # LCS = the cat on the mat = 5, so P = R = 5/6 and F1 = 5/6.
    assert rouge_l_f1("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # prediction "cat on mat" (3 tokens): LCS = 3, P = 3/3 = 1, R = 3/6 = 1/2, F1 = 2·1·½/(1+½) = 2/3.
    assert rouge_l_f1("cat on mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l_recall("cat on mat", "the cat sat on the mat") == pytest.approx(1 / 2)
    # recall is not symmetric: LCS 3 over a 3-token reference.
    assert rouge_l_recall("the cat sat on the mat", "cat on mat") == pytest.approx(1.0)
    # rouge_score lowercases and drops punctuation; an empty prediction scores 0.
    assert rouge_l_f1("The CAT!", "the cat") == pytest.approx(1.0)
    assert rouge_l_f1("", "the cat") == 0.0


def test_token_f1_normalizes_and_takes_the_best_alias() -> None:
    # "the" is dropped: prediction {william, shakespeare, wrote}, reference {william, shakespeare}: P 2/3, R 1.
    assert token_f1("William Shakespeare wrote", ["William Shakespeare"]) == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert token_f1("The Shakespeare.", ["William Shakespeare", "Shakespeare"]) == pytest.approx(1.0)
    assert token_f1("Paris", ["Rome"]) == 0.0
    assert token_f1("", [""]) == 1.0 and token_f1("", ["Rome"]) == 0.0


# ---------------------------------------------------------------------------------- membership inference


def test_min_k_score_by_hand() -> None:
    log_probs = [-1.0, -5.0, -2.0, -4.0, -3.0]
    # n = 5, k = 0.4: ⌊2.0⌋ = 2 lowest are −5, −4 → score = −mean = 4.5.
    assert min_k_score(log_probs, 0.4) == pytest.approx(4.5)
    assert min_k_score(torch.tensor(log_probs), 0.4) == pytest.approx(4.5)
    # n = 3, k = 0.4: ⌊1.2⌋ = 1 → only the lowest (−5).
    assert min_k_score([-1.0, -5.0, -2.0], 0.4) == pytest.approx(5.0)
    # n = 2, k = 0.4: ⌊0.8⌋ = 0, raised to 1 (MUSE would give NaN).
    assert min_k_score([-1.0, -2.0], 0.4) == pytest.approx(2.0)
    # k = 1: the negated mean of everything.
    assert min_k_score(log_probs, 1.0) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        min_k_score([], 0.4)


def test_auc_mann_whitney_with_ties() -> None:
    # pairs (pos, neg): (3,2)=1 (3,0)=1 (2,2)=½ (2,0)=1 (1,2)=0 (1,0)=1 → 4.5 / 6 = 0.75.
    assert auc([3.0, 2.0, 1.0], [2.0, 0.0]) == pytest.approx(0.75)
    assert auc([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)
    assert auc([5.0, 6.0], [1.0, 2.0]) == 1.0
    assert auc([1.0, 2.0], [5.0, 6.0]) == 0.0
    # (1: 0,0.1) (2: 0,0.1) (3: 2.5,0,0.1) beat → 7 of 9 pairs, to float64 rounding (no float32 on the way).
    assert auc([1.0, 2.0, 3.0], [2.5, 0.0, 0.1]) == pytest.approx(7 / 9, abs=1e-15)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        pos = torch.randint(0, 4, (int(torch.randint(1, 8, (1,), generator=generator)),), generator=generator)
        neg = torch.randint(0, 4, (int(torch.randint(1, 8, (1,), generator=generator)),), generator=generator)
        brute = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
        assert auc(pos.tolist(), neg.tolist()) == pytest.approx(float(brute), abs=1e-12)
    with pytest.raises(ValueError):
        auc([], [1.0])


def test_auc_is_scikit_learns_and_equals_the_rank_formula_on_random_scores_with_ties() -> None:
    rng = random.Random(0)
    for case in range(200):
        n_pos, n_neg = rng.randint(1, 30), rng.randint(1, 30)
        if case % 2:  # few distinct values: many ties within and across the classes
            pos = [rng.randint(0, 4) / 2 for _ in range(n_pos)]
            neg = [rng.randint(0, 4) / 2 for _ in range(n_neg)]
        else:
            pos = [rng.gauss(0.0, 1.0) for _ in range(n_pos)]
            neg = [rng.gauss(0.5, 1.0) for _ in range(n_neg)]
        value = auc(pos, neg)
        assert value == float(roc_auc_score([1] * n_pos + [0] * n_neg, pos + neg))
        assert privleak_auc(pos, neg) == value
        assert value == pytest.approx(rank_auc(pos, neg), abs=1e-12)  # the same number up to float rounding


def test_auc_refuses_empty_and_non_finite_scores() -> None:
    for pos, neg in (([], [1.0]), ([1.0], []), ([float("nan")], [1.0]), ([1.0], [float("inf")])):
        with pytest.raises(ValueError, match="auc"):
            auc(pos, neg)


def test_privleak_arithmetic() -> None:
    assert privleak(0.0, 0.4772) == pytest.approx(-100.0)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.6, 0.4) == pytest.approx(50.0)
    assert privleak(0.2, 0.4) == pytest.approx(-50.0)
    with pytest.raises(ValueError):
        privleak(0.5, 0.0)


# -------------------------------------------------------------------------------------------------- KL


def test_mean_token_kl_equals_the_direct_formula(tiny_model_dir: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    other = type(model)(model.config).eval()
    texts = ["a", "the cat sat on the mat", "Ada Lovelace wrote the first program, for the Analytical Engine.", "x y"]
    for reference in (other, model):
        expected = direct_mean_token_kl(model, reference, tokenizer, texts)
        for batch_size in (1, 3):
            got = mean_token_kl(model, reference, tokenizer, texts, batch_size=batch_size)
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert mean_token_kl(model, other, tokenizer, texts) > 1e-4


# ---------------------------------------------------------------------------------------------- utility


def test_ngram_entropy_by_hand() -> None:
    # "a b a b": bigrams ab, ba, ab -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3); trigrams aba, bab -> H3 = 1.
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("same same same same same") == pytest.approx(0.0)  # one bigram, one trigram
    assert ngram_entropy("one") == 0.0
    # A repetitive text is less fluent than a varied one of the same length.
    assert ngram_entropy("the cat sat on the mat and the dog ran") > ngram_entropy("go go go go go go go go go go")


def test_ngram_entropy_equals_the_counter_formula_on_random_texts() -> None:
    rng = random.Random(0)
    vocabulary = ["the", "cat", "sat", "on", "mat", "Ada", "wrote", "a", "program", ",", ".", "!", "don't", "3.14"]
    for length in range(0, 60):
        text = " ".join(rng.choice(vocabulary) for _ in range(length))
        assert ngram_entropy(text) == counter_ngram_entropy(text)  # to the last bit


def test_truthfulqa_mc1() -> None:
    assert truthfulqa_mc1(-1.0, [-2.0, -3.0]) == 1.0
    assert truthfulqa_mc1(-2.0, [-1.0, -3.0]) == 0.0
    assert truthfulqa_mc1(-2.0, [-2.0]) == 0.0  # a tie is not a win


# ------------------------------------------------------------------------------------- tables and results


def test_metrics_table_and_results_files(tmp_path: Path) -> None:
    columns = (("VerbMem_f", "verbmem_f", "{:.1f}"), ("KL", "kl", "{:.4f}"))
    results = {"target": {"verbmem_f": 73.94, "kl": None}, "unlearned": {"verbmem_f": float("nan"), "kl": 0.01234}}
    table = format_metrics_table(results, columns)
    assert table == (
        "| model | VerbMem_f | KL |\n|---|---|---|\n| target | 73.9 | n/a |\n| unlearned | n/a | 0.0123 |\n"
    )
    write_metrics(results, tmp_path / "r.json", tmp_path / "r.md", columns, note="made by a test")
    assert (tmp_path / "r.md").read_text() == "made by a test\n\n" + table
    assert json.loads((tmp_path / "r.json").read_text())["target"] == results["target"]
    assert (tmp_path / "r.json").read_text().endswith("}\n")


def test_one_table_writer_for_reports_and_sweeps() -> None:
    assert markdown_table(["metric", "initial"], [["forget NLL", "1.2345"]], right={1}) == (
        "| metric | initial |\n|---|---:|\n| forget NLL | 1.2345 |\n"
    )
    rows = [{"method": "target", "point": "", "npo_beta": None, "verbmem_f": 73.94, "privleak": None}]
    assert sweep_table(rows, ["method", "point", "npo_beta", "verbmem_f", "privleak"], "muse") == (
        "| method | point | npo_beta | VerbMem_f | PrivLeak |\n|---|---|---|---|---|\n| target |  |  | 73.9 | n/a |\n"
    )
