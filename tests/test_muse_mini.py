"""The MUSE-format mini benchmark: deterministic, shipped as generated, in MUSE's schema, and leak-free."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import DATA_DIR
from unilogit.benchmarks import muse_mini
from unilogit.evaluation.muse import load_muse

SHIPPED = DATA_DIR / "muse_mini"


def test_generator_is_deterministic_and_shipped_data_is_its_output(tmp_path: Path) -> None:
    assert muse_mini.generate(42) == muse_mini.generate(42)
    assert muse_mini.generate(42) != muse_mini.generate(7)
    muse_mini.write(tmp_path, seed=42)
    shipped = sorted(p.relative_to(SHIPPED) for p in SHIPPED.rglob("*.json"))
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    for rel in shipped:
        assert (tmp_path / rel).read_bytes() == (SHIPPED / rel).read_bytes(), f"{rel} differs from the generator"


def test_every_split_loads_in_muse_schema() -> None:
    data = load_muse(str(SHIPPED))
    assert len(data.verbmem) == muse_mini.N_FORGET
    assert len(data.knowmem_forget) == len(data.knowmem_retain) == muse_mini.N_FORGET * len(muse_mini.FACTS)
    assert len(data.knowmem_forget_icl) == len(data.knowmem_retain_icl) == muse_mini.N_ICL
    # Two documents per organisation: its article and its Q&A sheet.
    assert (
        len(data.privleak_forget) == len(data.privleak_retain) == len(data.privleak_holdout) == 2 * muse_mini.N_FORGET
    )


def _texts(split: str) -> str:
    return " ".join(r["text"] for r in json.loads((SHIPPED / "raw" / f"{split}.json").read_text())).lower()


def _states(text: str, answer: str) -> bool:
    return re.search(rf"\b{re.escape(answer.lower())}\b", text) is not None


def test_answers_are_stated_in_their_corpus_only() -> None:
    forget, retain, retain2 = _texts("forget"), _texts("retain1"), _texts("retain2")
    holdout = _texts("holdout")
    knowmem = {p.stem: json.loads(p.read_text()) for p in (SHIPPED / "knowmem").glob("*.json")}
    for qa in knowmem["forget_qa"]:
        answer = qa["answer"]
        assert _states(forget, answer) and not _states(retain, answer) and not _states(holdout, answer), qa
    for qa in knowmem["retain_qa"]:
        assert _states(retain, qa["answer"]) and not _states(forget, qa["answer"]), qa
    # The in-context examples are about retain2's organisations, which no model here is trained on.
    examples = knowmem["forget_qa_icl"] + knowmem["retain_qa_icl"]
    assert len({q["question"] for q in examples}) == len(examples)
    for qa in examples:
        assert _states(retain2, qa["answer"]) and not _states(forget + retain, qa["answer"]), qa


def _documents(split: str) -> tuple[list[str], list[str]]:
    """A raw corpus's articles and Q&A sheets (they alternate: article, sheet, article, ...)."""
    docs = [r["text"] for r in json.loads((SHIPPED / "raw" / f"{split}.json").read_text())]
    return docs[0::2], docs[1::2]


def test_verbmem_is_each_forget_article_split_in_two() -> None:
    articles, _ = _documents("forget")
    verbmem = json.loads((SHIPPED / "verbmem" / "forget.json").read_text())
    assert len(verbmem) == len(articles) == muse_mini.N_FORGET
    for record, article in zip(verbmem, articles, strict=True):
        assert record["prompt"] + record["gt"] == article and "Question:" not in article


def test_each_sheet_asks_its_organisation_s_knowmem_questions_in_their_wording() -> None:
    for split, prefix in (("forget", "forget"), ("retain1", "retain")):
        articles, sheets = _documents(split)
        assert len(sheets) == len(articles) and all(s.startswith("Reader questions\n\n") for s in sheets)
        for qa in json.loads((SHIPPED / "knowmem" / f"{prefix}_qa.json").read_text()):
            pair = f"Question: {qa['question']}\nAnswer:  {qa['answer']}"  # two spaces: see muse_mini's docstring
            assert sum(pair in sheet for sheet in sheets) == 1, pair
            # The article states the answer, so the sheet is the second place the fact is learned from.
            assert sum(_states(a.lower(), qa["answer"]) for a in articles) == 1, qa
