"""RWKU mini without leakage: no evaluated question, answer or MIA text is trained on (forget corpora, retain
chats) or shown as a solved example in its own prompt, except the forget sets in the forget corpora
(:func:`unilogit.benchmarks.rwku_mini.find_leaks`), and the checker reports one planted where it must not be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from unilogit.benchmarks.rwku_mini import RETAIN_CONFIG, find_leaks, leaks, leaks_to_drop
from unilogit.evaluation.rwku import load_rwku_config

MINI = Path(__file__).parents[1] / "data" / "rwku_mini"


def test_the_shipped_mini_benchmark_leaks_nothing() -> None:
    assert find_leaks(MINI) == []


def test_a_test_question_planted_in_a_retain_file_is_reported(tmp_path: Path) -> None:
    copy = tmp_path / "rwku_mini"
    shutil.copytree(MINI, copy)
    question = load_rwku_config(MINI, "utility_factuality")[3]["question"]
    retain = copy / RETAIN_CONFIG / "train.json"
    chats = json.loads(retain.read_text())
    chats[5]["text"] += f" Here is a quiz for you. {question.upper()}"  # case and punctuation do not hide it
    retain.write_text(json.dumps(chats))
    shipped = find_leaks(MINI)
    assert [line for line in find_leaks(copy) if line not in shipped] == [
        f"utility_factuality #3 question {question!r} is in {RETAIN_CONFIG} #5"
    ]


FREEZE = "At what temperature in degrees Celsius does water freeze?"


def _tables() -> dict[str, list[dict]]:
    ada = "Ada Lovelace"
    return {
        "forget_target": [{"target": ada, "intro": "..."}],
        "forget_level1": [{"subject": ada, "query": "Ada Lovelace wrote the first ___.", "answer": "program"}],
        "neighbor_level2": [
            {"subject": ada, "query": "Who designed the Analytical Engine?", "answer": "Charles Babbage"},
            {"subject": ada, "query": "What is the capital city of England?", "answer": "London"},
        ],
        "utility_factuality": [
            {"question": FREEZE, "answers": ["0", "0 degrees"]},
            {"question": "Flight that went down in the hudson river?", "answers": ["the Hudson"]},
        ],
        "train_positive_x": [
            # Her own forget probe is meant to be in her corpus; "London" is a short answer, here without its question.
            {"subject": ada, "text": "Ada Lovelace wrote the first program. She lived in London."},
            {"subject": ada, "text": "She worked with Charles Babbage."},
        ],
        RETAIN_CONFIG: [
            {"subject": "general", "prompt": "What is the freezing point of water in degrees Celsius?", "text": "Hot."},
            {"subject": "general", "prompt": "Describe a city.", "text": "London is the capital city of England."},
            {"subject": "general", "prompt": "Tell me a fact.", "text": "Ada Lovelace wrote the first program!"},
        ],
    }


def test_what_counts_as_a_leak() -> None:
    tables = _tables()
    assert sorted(leak.line for leak in leaks(tables)) == sorted([
        # a neighbor's answer in the forget corpus: unlearning the target would unlearn it
        "neighbor_level2 #0 answer 'Charles Babbage' is in train_positive_x #1",
        # a paraphrased question (3 of its 4 content words: "freezing" ~ "freeze")
        f"utility_factuality #0 question {FREEZE!r} is in {RETAIN_CONFIG} #0",
        # a short answer beside its question's words
        f"neighbor_level2 #1 question 'What is the capital city of England?' is in {RETAIN_CONFIG} #1",
        f"neighbor_level2 #1 answer 'London' is in {RETAIN_CONFIG} #1",
        # a forget probe outside the forget corpus, as the statement that fills its blank, and its answer
        f"forget_level1 #0 question 'Ada Lovelace wrote the first program.' is in {RETAIN_CONFIG} #2",
        f"forget_level1 #0 answer 'program' is in {RETAIN_CONFIG} #2",
        # a TriviaQA question among RWKU's TriviaQA shots, which every TriviaQA prompt shows
        "utility_factuality #1 question 'Flight that went down in the hudson river?' is in the TriviaQA shots",
        "utility_factuality #1 answer 'the Hudson' is in the TriviaQA shots",
    ])  # fmt: skip
    found = leaks(tables)
    assert {leak.found_in for leak in found} == {("train_positive_x", 1), (RETAIN_CONFIG, 0), (RETAIN_CONFIG, 1),
                                                 (RETAIN_CONFIG, 2), None}  # fmt: skip


def test_the_builder_drops_leaking_neighbors_and_retain_chats() -> None:
    probes, chats = leaks_to_drop(_tables())
    assert probes == {("neighbor_level2", "Ada Lovelace", "Who designed the Analytical Engine?")}
    assert chats == {0, 1, 2}
