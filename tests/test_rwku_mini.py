"""The shipped RWKU mini benchmark: RWKU's schema, enough real targets, and only probes the model knew."""

from __future__ import annotations

import json
from pathlib import Path

from unilogit.benchmarks.rwku_mini import CORPUS_CONFIG, KEEP_SCORE, MIN_KEPT, RETAIN_CONFIG, RETAIN_INSTRUCTIONS
from unilogit.evaluation.rwku import DEFAULT_STOP, RWKU_CONFIGS, load_rwku, load_rwku_config, rwku_targets

MINI = Path(__file__).parents[1] / "data" / "rwku_mini"


def test_every_config_loads_and_there_are_at_least_8_targets() -> None:
    for config in (*RWKU_CONFIGS, CORPUS_CONFIG):
        assert load_rwku_config(MINI, config), config
    targets = rwku_targets(MINI)
    assert len(targets) >= 8 and len(set(targets)) == len(targets)
    build = json.loads((MINI / "build.json").read_text())
    assert sorted(t for t, info in build["targets"].items() if info["used"]) == sorted(targets)
    # Kept by the score the evaluator gives by default; the retain chats answer the builder's requests.
    assert build["stop"] == DEFAULT_STOP
    chats = load_rwku_config(MINI, RETAIN_CONFIG)
    assert len(chats) >= 24 and {chat["prompt"] for chat in chats} <= set(RETAIN_INSTRUCTIONS)


def test_each_target_has_probes_the_model_answered_and_its_own_corpus() -> None:
    corpus = load_rwku_config(MINI, CORPUS_CONFIG)
    for target in rwku_targets(MINI):
        data = load_rwku(MINI, [target])
        assert len(data.forget["fb"]) >= MIN_KEPT["forget_level1"]
        assert len(data.forget["qa"]) >= MIN_KEPT["forget_level2"]
        assert len(data.forget["aa"]) >= MIN_KEPT["forget_level3"]
        assert len(data.neighbor["fb"]) + len(data.neighbor["qa"]) >= MIN_KEPT["neighbor"]
        probes = [r for records in (*data.forget.values(), *data.neighbor.values()) for r in records]
        assert all(r["before"] >= KEEP_SCORE for r in probes), target
        # Neighbor probes are about other subjects: they never name the target.
        assert not any(target in r["query"] for records in data.neighbor.values() for r in records), target
        assert data.mia_forget and data.mia_retain
        texts = [r["text"] for r in corpus if r["subject"] == target]
        assert texts and all(len(text.split()) >= 20 for text in texts), target


def test_utility_sets_are_in_the_real_schemas() -> None:
    for record in load_rwku_config(MINI, "utility_general"):
        assert len(record["choices"]) == 4 and 0 <= record["answer"] < 4 and len(record["examples"]) == 5
    for record in load_rwku_config(MINI, "utility_truthfulness"):
        labels = record["mc1_targets"]["labels"]
        assert labels[0] == 1 and sum(labels) == 1 and len(labels) == len(record["mc1_targets"]["choices"])
    assert all(record["answers"] for record in load_rwku_config(MINI, "utility_factuality"))
    assert all(record["instruction"] for record in load_rwku_config(MINI, "utility_fluency"))
