"""The MUSE-format mini benchmark: deterministic, shipped as generated, in MUSE's schema, and leak-free."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import DATA_DIR
from unilogit.benchmarks import muse_mini
from unilogit.evaluation.muse import load_muse

SHIPPED = DATA_DIR / "muse_mini"
VALIDATION = DATA_DIR / "muse_mini_validation"


@pytest.mark.parametrize(("folder", "seed"), [(SHIPPED, 42), (VALIDATION, muse_mini.VALIDATION_SEED)])
def test_generator_is_deterministic_and_shipped_data_is_its_output(folder: Path, seed: int, tmp_path: Path) -> None:
    assert muse_mini.generate(seed) == muse_mini.generate(seed)
    assert muse_mini.generate(seed) != muse_mini.generate(7)
    muse_mini.write(tmp_path, seed=seed)
    shipped = sorted(p.relative_to(folder) for p in folder.rglob("*.json"))
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    for rel in shipped:
        assert (tmp_path / rel).read_bytes() == (folder / rel).read_bytes(), f"{rel} differs from the generator"


def test_the_validation_instance_asks_nothing_the_test_instance_does() -> None:
    """Hyperparameters chosen on it are chosen apart from the reported items: no question in common, and no
    organisation of one is in the other's corpora."""

    def questions(root: Path) -> set[str]:
        return {q["question"] for p in (root / "knowmem").glob("*.json") for q in json.loads(p.read_text())}

    assert not questions(SHIPPED) & questions(VALIDATION)
    corpus = " ".join(r["text"] for p in (SHIPPED / "raw").glob("*.json") for r in json.loads(p.read_text()))
    organisations = {re.sub(r"^Who founded (.*)\?$", r"\1", q) for q in questions(VALIDATION) if q.startswith("Who")}
    assert organisations and not [org for org in organisations if org in corpus]


def test_every_split_loads_in_muse_schema() -> None:
    data = load_muse(str(SHIPPED))
    n_forget, n_forget_articles = muse_mini.SPLITS["forget"]
    assert len(data.verbmem) == n_forget_articles
    assert len(data.knowmem_forget) == n_forget * len(muse_mini.FACTS) >= 60
    assert len(data.knowmem_retain) == muse_mini.SPLITS["retain2"][0] * len(muse_mini.FACTS) >= 60
    assert len(data.knowmem_forget_icl) == len(data.knowmem_retain_icl) == muse_mini.N_ICL
    # PrivLeak's members and non-members have the same shape: one sheet per organisation, 4 articles.
    assert len(data.privleak_forget) == len(data.privleak_holdout) == n_forget + n_forget_articles


def _docs(split: str) -> list[str]:
    return [r["text"] for r in json.loads((SHIPPED / "raw" / f"{split}.json").read_text())]


def _states(text: str, answer: str) -> bool:
    return re.search(rf"\b{re.escape(answer.lower())}\b", text.lower()) is not None


def test_answers_are_stated_in_their_corpus_only() -> None:
    corpora = {split: " ".join(_docs(split)) for split in muse_mini.SPLITS}
    knowmem = {p.stem: json.loads(p.read_text()) for p in (SHIPPED / "knowmem").glob("*.json")}
    for side, home in (("forget_qa", "forget"), ("retain_qa", "retain2")):
        for qa in knowmem[side]:
            assert [s for s, text in corpora.items() if _states(text, qa["answer"])] == [home], qa
    # The in-context examples are about organisations in no corpus at all.
    examples = knowmem["forget_qa_icl"] + knowmem["retain_qa_icl"]
    assert len({q["question"] for q in examples}) == len(examples)
    for qa in examples:
        assert not any(_states(text, qa["answer"]) for text in corpora.values()), qa


def test_verbmem_continues_each_forget_article() -> None:
    articles = [d for d in _docs("forget") if not d.startswith("Reader questions")]
    verbmem = json.loads((SHIPPED / "verbmem" / "forget.json").read_text())
    assert len(verbmem) == len(articles) == muse_mini.SPLITS["forget"][1]
    for record, article in zip(verbmem, articles, strict=True):
        assert record["prompt"] + record["gt"] == article and "Question:" not in article


def test_each_sheet_asks_its_organisation_s_knowmem_questions_in_their_wording() -> None:
    for split, side in (("forget", "forget"), ("retain2", "retain")):
        sheets = [d for d in _docs(split) if d.startswith("Reader questions\n\n")]
        assert len(sheets) == muse_mini.SPLITS[split][0]
        for qa in json.loads((SHIPPED / "knowmem" / f"{side}_qa.json").read_text()):
            pair = f"Question: {qa['question']}\nAnswer:  {qa['answer']}"  # two spaces: see muse_mini's docstring
            assert sum(pair in sheet for sheet in sheets) == 1, pair


def test_no_evaluated_string_leaks_into_training_data() -> None:
    assert muse_mini.find_leaks(SHIPPED) == muse_mini.find_leaks(VALIDATION) == []


def test_leak_check_reports_a_question_planted_in_the_retain_set(tmp_path: Path) -> None:
    """The unlearning runs train on retain1: a KnowMem_r question or answer there would inflate utility."""
    shutil.copytree(SHIPPED, tmp_path / "mini")
    retain1 = tmp_path / "mini" / "raw" / "retain1.json"
    qa = json.loads((SHIPPED / "knowmem" / "retain_qa.json").read_text())[7]
    records = json.loads(retain1.read_text())
    records[1]["text"] += f"\n\nQuestion: {qa['question']}\nAnswer:  {qa['answer']}"
    retain1.write_text(json.dumps(records))
    leaks = muse_mini.find_leaks(tmp_path / "mini")
    assert f"knowmem/retain_qa: {qa['question']!r} is in raw/retain1" in leaks
    assert f"knowmem/retain_qa: {qa['answer']!r} is in raw/retain1" in leaks
    # A forget answer in the retain set breaks the retrained model's ignorance of the forget set.
    forget_qa = json.loads((SHIPPED / "knowmem" / "forget_qa.json").read_text())[0]
    records[0]["text"] += f" {forget_qa['answer']} said so."
    retain1.write_text(json.dumps(records))
    assert f"knowmem/forget_qa: {forget_qa['answer']!r} is in raw/retain1" in muse_mini.find_leaks(tmp_path / "mini")
