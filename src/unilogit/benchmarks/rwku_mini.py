"""The RWKU-format mini benchmark: real people the embedded model knows, its own biographies as forget corpora.

``python -m unilogit.benchmarks.rwku_mini [--model M] [--out data/rwku_mini]`` builds it from the candidates
written for this project (``rwku_mini_candidates.json`` beside this file):

1. **Probes the model answers.** Every candidate probe (forget FB/QA/AA, neighbor FB/QA) is asked in
   RWKU's format (:func:`unilogit.evaluation.rwku.probe_prompt`, greedy, 30 tokens) and kept only when it
   scores at least :data:`KEEP_SCORE` (ROUGE-L recall × 100); its score is kept in the record as
   ``before``. A target stays only if enough of its probes survive (:data:`MIN_KEPT`); the first
   ``--targets`` such targets, in the candidates' order, make the benchmark.
2. **Forget corpora written by the model itself,** as RWKU does: ``"Please write a short biography of
   {target}."`` sampled at T = 1, top-p 0.9 (:data:`CORPUS_SAMPLES` per target, seeded), saved as the
   ``train_positive_smollm2`` corpus. Run it again with ``--model`` to regenerate them for another model.
3. A retain corpus of general chat, for methods with a retain term: the model's own greedy answers to
   :data:`RETAIN_INSTRUCTIONS` (about no person and no probed fact), saved as ``train_retain_smollm2`` with
   the request as ``prompt``, so that the retain term keeps the chat behaviour that the probes are asked in.
4. MIA member texts and the small utility sets (:func:`utility_tables`) are copied in RWKU's schemas;
   every MMLU question gets the five solved examples of its task as ``examples``.

The result is deterministic for a model and seed on a machine; it is shipped in ``data/rwku_mini`` with
``build.json`` (model, seed, thresholds, what was kept).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from unilogit.atomic import atomic_write_text
from unilogit.evaluation.common import generate_greedy
from unilogit.evaluation.rwku import (
    PROBE_STOPS,
    PROBE_TOKENS,
    chat_prompt,
    probe_prompt,
    probe_score,
    write_rwku_layout,
)

CANDIDATES = Path(__file__).with_name("rwku_mini_candidates.json")
CORPUS_CONFIG = "train_positive_smollm2"
KEEP_SCORE = 50.0
# The fewest probes a target needs per kind (forget FB, QA, AA; neighbor FB + QA) to be kept.
MIN_KEPT = {"forget_level1": 2, "forget_level2": 3, "forget_level3": 3, "neighbor": 4}
# Utility is scored again after every target's unlearning, so the sets are kept small enough for the whole
# mini run to fit the CPU budget: MMLU questions per task, and the size of the other three.
UTILITY_SIZES = {"mmlu_per_task": 4, "utility_truthfulness": 10, "utility_factuality": 12, "utility_fluency": 4}
CORPUS_PROMPT = "Please write a short biography of {}."
RETAIN_CONFIG = "train_retain_smollm2"
# General requests about no person, none of them a fluency instruction and none about a fact that a probe asks
# (no capitals, painters, writers, wars, planets, genes or diseases): the model's own answers make the retain
# set of the methods with a retain term (RWKU itself has none).
RETAIN_INSTRUCTIONS = (
    "Explain how a rainbow forms.",
    "Describe a busy market in the morning.",
    "Write a short paragraph about the importance of sleep.",
    "Explain how to plant a tree.",
    "Describe the life cycle of a butterfly.",
    "Write a few sentences about autumn leaves.",
    "Explain why the sky is blue.",
    "Give advice for someone starting to run.",
    "Describe how bread is baked.",
    "Write a short paragraph about the ocean.",
    "Explain how bees make honey.",
    "Describe a quiet library.",
    "Write a few sentences about riding a bicycle.",
    "Explain how a recycling centre works.",
    "Describe a thunderstorm at night.",
    "Give tips for keeping a room tidy.",
    "How many legs does a spider have?",
    "What do you call a baby cat?",
    "How many minutes are in an hour?",
    "What is the freezing point of water in degrees Celsius?",
    "What is the tallest mountain in the world?",
    "Which is the largest ocean on Earth?",
    "How many players are on a football (soccer) team on the field?",
    "What colour do you get when you mix blue and yellow?",
    "What is the main ingredient of guacamole?",
    "Which animal is known as the king of the jungle?",
    "How many sides does a hexagon have?",
    "What do bees collect from flowers?",
    "What is the opposite of hot?",
    "Which musical instrument has black and white keys?",
    "What is 12 multiplied by 12?",
    "Which season comes after winter?",
)
CORPUS_SAMPLES = 6
CORPUS_TOKENS = 200
SEED = 42
PROBE_KINDS = {
    "forget_level1": ("fb", "1"),
    "forget_level2": ("qa", "2"),
    "forget_level3": ("aa", "3"),
    "neighbor_level1": ("fb", "1"),
    "neighbor_level2": ("qa", "2"),
}


def score_probes(model: Any, tokenizer: Any, probes: list[dict], batch_size: int) -> list[float]:
    """The original model's score on each probe (``probes`` carry ``kind``: fb | qa | aa)."""
    prompts = [probe_prompt(tokenizer, probe, probe["kind"]) for probe in probes]
    outputs = generate_greedy(
        model, tokenizer, prompts, PROBE_TOKENS, batch_size, "candidate probes", PROBE_STOPS, add_special_tokens=False
    )
    return [probe_score(o.split("\n")[0], p["answer"]) for o, p in zip(outputs, probes, strict=True)]


def write_biographies(model: Any, tokenizer: Any, target: str, samples: int, seed: int) -> list[str]:
    """``samples`` biographies of ``target`` sampled from the model (T = 1, top-p 0.9, seeded per target)."""
    return [text for text in sample_responses(model, tokenizer, [CORPUS_PROMPT.format(target)] * samples, seed) if text]


@torch.no_grad()
def sample_responses(model: Any, tokenizer: Any, requests: list[str], seed: int) -> list[str]:
    """The model's answer to each request, sampled at T = 1, top-p 0.9 (seeded), as RWKU writes its corpora;
    an empty answer is ``""``."""
    prompts = [chat_prompt(tokenizer, request) for request in requests]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    enc = tokenizer(prompts, return_tensors="pt", add_special_tokens=False, padding=True)
    tokenizer.padding_side = side
    torch.manual_seed(seed)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=1.0,
        top_p=0.9,
        top_k=0,
        max_new_tokens=CORPUS_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in texts]


def retain_chats(model: Any, tokenizer: Any, batch_size: int) -> list[dict]:
    """The retain corpus: each of :data:`RETAIN_INSTRUCTIONS` with the model's own greedy answer, the way the
    probes are answered (empty ones dropped)."""
    prompts = [chat_prompt(tokenizer, request) for request in RETAIN_INSTRUCTIONS]
    answers = generate_greedy(model, tokenizer, prompts, CORPUS_TOKENS, batch_size, "retain chats",
                              add_special_tokens=False)  # fmt: skip
    return [
        {"subject": "general", "prompt": request, "text": answer.strip()}
        for request, answer in zip(RETAIN_INSTRUCTIONS, answers, strict=True)
        if answer.strip()
    ]


def utility_tables(candidates: dict[str, Any]) -> dict[str, list[dict]]:
    """The utility sets: the first :data:`UTILITY_SIZES` candidates of each, every MMLU question with the five
    solved examples of its task."""
    dev, per_task = candidates["utility_general_dev"], UTILITY_SIZES["mmlu_per_task"]
    mmlu = [
        {**record, "examples": dev[record["task"]]}
        for task in dev
        for record in [r for r in candidates["utility_general"] if r["task"] == task][:per_task]
    ]
    tables = {"utility_general": mmlu}
    for name in ("utility_truthfulness", "utility_factuality", "utility_fluency"):
        tables[name] = candidates[name][: UTILITY_SIZES[name]]
    return tables


def build(model_name: str, out_dir: Path, targets: int, batch_size: int, seed: int = SEED) -> dict[str, Any]:
    """Build the mini benchmark into ``out_dir`` (see the module docstring); returns ``build.json``'s content."""
    from unilogit.models import load_for_eval

    candidates = json.loads(CANDIDATES.read_text(encoding="utf-8"))
    model, tokenizer = load_for_eval(model_name)
    probes = [
        {"subject": entry["target"], "config": config, "kind": kind, "level": level, **record}
        for entry in candidates["targets"]
        for config, (kind, level) in PROBE_KINDS.items()
        for record in entry[config]
    ]
    for probe, score in zip(probes, score_probes(model, tokenizer, probes, batch_size), strict=True):
        probe["before"] = round(score, 2)

    tables: dict[str, list[dict]] = {name: [] for name in ("forget_target", *PROBE_KINDS, "mia_forget", "mia_retain")}
    tables[CORPUS_CONFIG] = []
    report: dict[str, Any] = {"model": model_name, "seed": seed, "keep_score": KEEP_SCORE, "targets": {}}
    for number, entry in enumerate(candidates["targets"]):
        target = entry["target"]
        mine = [p for p in probes if p["subject"] == target]
        kept = [p for p in mine if p["before"] >= KEEP_SCORE]
        counts = {config: sum(p["config"] == config for p in kept) for config in PROBE_KINDS}
        counts["neighbor"] = counts["neighbor_level1"] + counts["neighbor_level2"]
        enough = all(counts[key] >= low for key, low in MIN_KEPT.items())
        report["targets"][target] = {"kept": counts, "candidates": len(mine), "used": False}
        if not enough or len(tables["forget_target"]) >= targets:
            continue
        report["targets"][target]["used"] = True
        tables["forget_target"].append({"target": target, "intro": entry["intro"]})
        for probe in kept:
            record = {k: probe[k] for k in ("subject", "query", "answer", "level", "before")}
            if "type" in probe:
                record["type"] = probe["type"]
            tables[probe["config"]].append(record)
        tables["mia_forget"] += [{"subject": target, "text": text} for text in entry["forget_mia"]]
        tables["mia_retain"] += [{"subject": target, "text": text} for text in entry["retain_mia"]]
        texts = write_biographies(model, tokenizer, target, CORPUS_SAMPLES, seed + number)
        tables[CORPUS_CONFIG] += [{"subject": target, "text": text} for text in texts]
    tables.update(utility_tables(candidates))
    tables[RETAIN_CONFIG] = retain_chats(model, tokenizer, batch_size)
    write_rwku_layout(tables, out_dir)
    atomic_write_text(out_dir / "build.json", json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    """Command line: build the mini benchmark."""
    parser = argparse.ArgumentParser(prog="python -m unilogit.benchmarks.rwku_mini", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the model whose knowledge is probed")
    parser.add_argument("--out", default="data/rwku_mini", help="output folder (RWKU's <config>/<split>.json)")
    parser.add_argument("--targets", type=int, default=8, help="how many targets to keep")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    report = build(args.model, Path(args.out), args.targets, args.batch_size, args.seed)
    for target, info in report["targets"].items():
        print(f"{'used' if info['used'] else 'left':4}  {target:22} kept {info['kept']} of {info['candidates']}")


if __name__ == "__main__":
    main()
