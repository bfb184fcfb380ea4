"""The RWKU-format mini benchmark: real people the embedded model knows, its own biographies as forget corpora.

``python -m unilogit.benchmarks.rwku_mini [--model M] [--out data/rwku_mini]`` builds it from the candidates
written for this project (``rwku_mini_candidates.json`` beside this file):

1. **Probes the model answers.** Every candidate probe (forget FB/QA/AA, neighbor FB/QA) is asked in
   RWKU's format (:func:`unilogit.evaluation.rwku.probe_prompt`) and answered and scored as the evaluator
   does by default (``--stop``: :func:`unilogit.evaluation.rwku.probe_outputs`, greedy, up to 30 tokens), and
   kept only when it scores at least :data:`KEEP_SCORE` (ROUGE-L recall × 100); its score is kept in the
   record as ``before``. A target qualifies when enough of its probes survive (:data:`MIN_KEPT`: at least 20
   neighbor probes).
2. **Forget corpora written by the model itself,** as RWKU does: ``"Please write a short biography of
   {target}."`` sampled at T = 1, top-p 0.9 (:data:`CORPUS_SAMPLES` per qualifying target, seeded by its
   number among the candidates), saved as the ``train_positive_smollm2`` corpus. Run it again with ``--model``
   to regenerate them for another model.
3. A retain corpus of general chat, for methods with a retain term: the model's own greedy answers to
   :data:`RETAIN_INSTRUCTIONS` (about no person and no evaluated fact), saved as ``train_retain_smollm2`` with
   the request as ``prompt``, so that the retain term keeps the chat behaviour that the probes are asked in.
4. MIA member texts and the small utility sets (:func:`utility_tables`) are copied in RWKU's schemas;
   every MMLU question gets the five solved examples of its task as ``examples``.
5. **No leakage** (:func:`find_leaks`): a neighbor probe that a forget corpus holds is dropped, and so is a
   retain chat that holds any evaluated string; the first ``--targets`` qualifying targets that still have
   enough probes, in the candidates' order, make the benchmark. Any other leak stops the build.

The result is deterministic for a model, seed, batch size and thread count on a machine; it is shipped in
``data/rwku_mini`` with ``build.json`` (those settings, thresholds, what was kept and dropped).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unilogit.atomic import atomic_write_text
from unilogit.errors import ConfigError
from unilogit.evaluation.common import generate_greedy
from unilogit.evaluation.rwku import (
    DEFAULT_STOP,
    RWKU_CONFIGS,
    STOP_RULES,
    TRIVIAQA_PRIMER,
    TRUTHFULQA_PRIMER,
    chat_prompt,
    load_rwku_config,
    probe_outputs,
    probe_prompt,
    probe_score,
    write_rwku_layout,
)

CANDIDATES = Path(__file__).with_name("rwku_mini_candidates.json")
CORPUS_CONFIG = "train_positive_smollm2"
KEEP_SCORE = 50.0
# The fewest probes a target needs per kind (forget FB, QA, AA; neighbor FB + QA) to be kept. With 20 neighbor
# probes, one probe moves a target's neighbor All by at most 5 points.
MIN_KEPT = {"forget_level1": 2, "forget_level2": 3, "forget_level3": 3, "neighbor": 20}
# Utility is scored again after every target's unlearning, so the sets are kept small enough for the whole
# mini run to fit the CPU budget: MMLU questions per task, and the size of the other three.
UTILITY_SIZES = {"mmlu_per_task": 4, "utility_truthfulness": 10, "utility_factuality": 12, "utility_fluency": 4}
CORPUS_PROMPT = "Please write a short biography of {}."
RETAIN_CONFIG = "train_retain_smollm2"
# General requests about no person and no evaluated fact: none asks or answers a probe, an MMLU, TruthfulQA or
# TriviaQA question (nor one of their solved examples: no geography, arithmetic, biology or trivia quiz), none is
# a fluency instruction or on the topic of an MIA text. The model's own answers make the retain set of the
# methods with a retain term (RWKU itself has none); an answer that still holds an evaluated string is dropped.
RETAIN_INSTRUCTIONS = (
    "Explain how a kite flies.",
    "Describe a busy market in the morning.",
    "Write a short paragraph about the importance of sleep.",
    "Explain how to plant a tree.",
    "Describe the life cycle of a butterfly.",
    "Write a few sentences about autumn leaves.",
    "Explain why the sky is blue.",
    "Give advice for someone starting to run.",
    "Describe how bread is baked.",
    "Write a short paragraph about a walk in the park.",
    "Explain how a bicycle pump works.",
    "Describe a quiet library.",
    "Write a few sentences about riding a bicycle.",
    "Explain how a recycling centre works.",
    "Describe a snowy morning in a small town.",
    "Give tips for keeping a room tidy.",
    "How many days are in a week?",
    "What do you call a baby dog?",
    "How many wheels does a tricycle have?",
    "What is the opposite of up?",
    "Which season comes after summer?",
    "What colour is grass?",
    "How many months are in a year?",
    "What is the opposite of big?",
    "What do you use to cut paper?",
    "Which meal do people eat in the morning?",
    "What do you wear on your feet?",
    "What sound does a cow make?",
    "What do you call a group of sheep?",
    "Which fruit is yellow and curved?",
    "What do you use to open a locked door?",
    "What is the opposite of early?",
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


def score_probes(
    model: Any, tokenizer: Any, probes: list[dict], batch_size: int, stop: str = DEFAULT_STOP
) -> list[float]:
    """The original model's score on each probe (``probes`` carry ``kind``: fb | qa | aa), under the evaluator's
    ``stop`` rule."""
    prompts = [probe_prompt(tokenizer, probe, probe["kind"]) for probe in probes]
    outputs = probe_outputs(model, tokenizer, prompts, batch_size, "candidate probes", stop)
    return [probe_score(o, p["answer"], stop) for o, p in zip(outputs, probes, strict=True)]


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


def _counts(probes: list[dict]) -> dict[str, int]:
    counts = {config: sum(p["config"] == config for p in probes) for config in PROBE_KINDS}
    counts["neighbor"] = counts["neighbor_level1"] + counts["neighbor_level2"]
    return counts


def _enough(probes: list[dict]) -> bool:
    counts = _counts(probes)
    return all(counts[key] >= low for key, low in MIN_KEPT.items())


def _tables(entries: list[dict], kept: dict[str, list[dict]], corpora: dict[str, list[str]]) -> dict[str, list[dict]]:
    """The per-target configs of ``entries`` (candidate targets): their probes ``kept`` and forget corpora."""
    tables: dict[str, list[dict]] = {name: [] for name in ("forget_target", *PROBE_KINDS, "mia_forget", "mia_retain")}
    tables[CORPUS_CONFIG] = []
    for entry in entries:
        target = entry["target"]
        tables["forget_target"].append({"target": target, "intro": entry["intro"]})
        for probe in kept[target]:
            record = {k: probe[k] for k in ("subject", "query", "answer", "level", "before", "type") if k in probe}
            tables[probe["config"]].append(record)
        tables["mia_forget"] += [{"subject": target, "text": text} for text in entry["forget_mia"]]
        tables["mia_retain"] += [{"subject": target, "text": text} for text in entry["retain_mia"]]
        tables[CORPUS_CONFIG] += [{"subject": target, "text": text} for text in corpora[target]]
    return tables


def leaks_to_drop(tables: Mapping[str, list[dict]]) -> tuple[set[tuple[str, str, str]], set[int]]:
    """What the builder drops for :func:`leaks`: the neighbor probes that a forget corpus holds, as ``(config,
    subject, query)``, and the indices of the retain chats that hold any evaluated string."""
    found = leaks(tables)
    chats = {leak.found_in[1] for leak in found if leak.found_in and leak.found_in[0] == RETAIN_CONFIG}
    probes = {
        (leak.item[0], *(tables[leak.item[0]][leak.item[1]][k] for k in ("subject", "query")))
        for leak in found
        if leak.item[0].startswith("neighbor") and leak.found_in and leak.found_in[0] != RETAIN_CONFIG
    }
    return probes, chats


def build(
    model_name: str, out_dir: Path, targets: int, batch_size: int, seed: int = SEED, stop: str = DEFAULT_STOP
) -> dict[str, Any]:
    """Build the mini benchmark into ``out_dir`` (see the module docstring); returns ``build.json``'s content.

    No evaluated string is left where :func:`leaks` finds it: a neighbor probe that a forget corpus holds is
    dropped before the targets are chosen (unlearning that corpus would unlearn it), and so is a retain chat
    that holds any evaluated string. Any other leak is the candidates' fault and stops the build.
    """
    from unilogit.models import load_for_eval

    candidates = json.loads(CANDIDATES.read_text(encoding="utf-8"))
    model, tokenizer = load_for_eval(model_name)
    probes = [
        {"subject": entry["target"], "config": config, "kind": kind, "level": level, **record}
        for entry in candidates["targets"]
        for config, (kind, level) in PROBE_KINDS.items()
        for record in entry[config]
    ]
    for probe, score in zip(probes, score_probes(model, tokenizer, probes, batch_size, stop), strict=True):
        probe["before"] = round(score, 2)
    # The CPU threads change the last bits of a sum, and so a sampled biography: they are part of the recipe.
    report: dict[str, Any] = {"model": model_name, "seed": seed, "stop": stop, "keep_score": KEEP_SCORE,
                              "threads": torch.get_num_threads(), "batch_size": batch_size, "targets": {}}  # fmt: skip
    # Targets with enough answered probes, each with its corpus: biographies are seeded by the candidate's number,
    # so a target's corpus does not depend on which others qualify.
    answered: dict[str, list[dict]] = {}
    corpora: dict[str, list[str]] = {}
    for number, entry in enumerate(candidates["targets"]):
        target = entry["target"]
        answered[target] = [p for p in probes if p["subject"] == target and p["before"] >= KEEP_SCORE]
        if _enough(answered[target]):
            corpora[target] = write_biographies(model, tokenizer, target, CORPUS_SAMPLES, seed + number)
    entries = [entry for entry in candidates["targets"] if entry["target"] in corpora]
    tables = {**_tables(entries, answered, corpora), **utility_tables(candidates)}
    tables[RETAIN_CONFIG] = retain_chats(model, tokenizer, batch_size)
    chats = tables[RETAIN_CONFIG]
    dropped, leaky_chats = leaks_to_drop(tables)
    kept = {
        target: [p for p in mine if (p["config"], p["subject"], p["query"]) not in dropped]
        for target, mine in answered.items()
    }
    chosen = [entry for entry in entries if _enough(kept[entry["target"]])][:targets]
    for entry in candidates["targets"]:
        target = entry["target"]
        report["targets"][target] = {
            "kept": _counts(kept[target]),
            "candidates": sum(p["subject"] == target for p in probes),
            "neighbors_in_a_forget_corpus": len(answered[target]) - len(kept[target]),
            "used": entry in chosen,
        }
    tables = {**_tables(chosen, kept, corpora), **utility_tables(candidates)}
    tables[RETAIN_CONFIG] = [chat for i, chat in enumerate(chats) if i not in leaky_chats]
    report["retain_chats_dropped"] = [chats[i]["prompt"] for i in sorted(leaky_chats)]
    left = leaks(tables)
    if left:
        raise ConfigError(
            f"{CANDIDATES.name}: {left[0].line}"
            + (f" (and {len(left) - 1} more)" if len(left) > 1 else "")
            + "; reword or replace that candidate so that no evaluated string is trained on"
        )
    write_rwku_layout(tables, out_dir)
    atomic_write_text(out_dir / "build.json", json.dumps(report, indent=1) + "\n")
    return report


# ------------------------------------------------------------------------------------------ leakage

# Words that say nothing about which fact a question asks (left out of its content words).
_FILLER = frozenset(
    "a an the of in on at to for from by with and or as is are was were be been has have had do does did which what "
    "who whom whose where when why how many much this that these those it its he his she her they their there known "
    "called famous most first please following question answer".split()
)
# An answer this long (after its articles go) is specific enough to be a leak wherever it stands.
LONG_ANSWER_WORDS, LONG_ANSWER_CHARS = 2, 8
# A sentence that holds this share of a question's content words (at least PARAPHRASE_MIN_WORDS of them), each
# compared by its first STEM_CHARS letters ("freeze" ~ "freezing"), asks that question in other words.
PARAPHRASE_SHARE, PARAPHRASE_MIN_WORDS, STEM_CHARS = 0.75, 3, 5
# MIA sentences at least this long are checked one by one.
MIA_SENTENCE_WORDS = 6


def _words(text: str) -> list[str]:
    """Lowercased runs of letters and digits: case, whitespace and punctuation do not count."""
    return re.findall(r"[^\W_]+", text.lower())


def _phrase(text: str) -> str:
    """``text`` normalised (:func:`_words`), padded with spaces so that it matches whole words only."""
    return " " + " ".join(_words(text)) + " "


def _sentences(text: str) -> list[str]:
    return [part for part in re.split(r"[.!?\n]+", text) if part.strip()]


def _content(text: str) -> frozenset[str]:
    """The stems (first :data:`STEM_CHARS` letters) of the words of ``text`` that name something (no filler)."""
    return frozenset(word[:STEM_CHARS] for word in _words(text) if word not in _FILLER)


@dataclass(frozen=True)
class _Needle:
    """One evaluated string: its record (config and index), what it is (question, answer or MIA text), whether
    it belongs to a forget set, and the content words (:func:`_content`) of the question it asks or answers."""

    config: str
    index: int
    what: str
    text: str
    forget: bool = False
    question: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Haystack:
    """A text trained on (a ``train_*`` record; ``forget_corpus`` when it is about a target), or solved examples
    shown in the prompts of one utility set (``shown_with``: its config, and the one record whose prompt alone
    holds them, or None for all), normalised once: the whole text and each sentence's phrase and content words.
    ``record`` is ``(config, index)`` for a training record, else None."""

    where: str
    record: tuple[str, int] | None
    text: str
    sentences: tuple[tuple[str, frozenset[str]], ...]
    forget_corpus: bool = False
    shown_with: tuple[str, int | None] | None = None


def _needles(tables: Mapping[str, list[dict]]) -> Iterator[_Needle]:
    """Every evaluated question, answer and MIA text of ``tables`` (config -> records)."""
    for config in ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2"):
        forget = config.startswith("forget")
        for i, r in enumerate(tables.get(config, [])):
            # A blank is asked as the statement it completes.
            question = r["query"].replace("___", r["answer"])
            yield _Needle(config, i, "question", question, forget, _content(question))
            # The answer's own sentence need not name the target (its corpus says "he").
            yield _Needle(config, i, "answer", r["answer"], forget, _content(r["query"]) - _content(r["subject"]))
    for config in ("mia_forget", "mia_retain"):
        for i, r in enumerate(tables.get(config, [])):
            pieces = [r["text"], *(s for s in _sentences(r["text"]) if len(_words(s)) >= MIA_SENTENCE_WORDS)]
            yield from (_Needle(config, i, "text", piece, config == "mia_forget") for piece in dict.fromkeys(pieces))
    utility = {
        "utility_general": lambda r: (r["question"], [r["choices"][int(r["answer"])]]),
        "utility_truthfulness": lambda r: (r["question"], [c for c, label in zip(r["mc1_targets"]["choices"],
                                                                                 r["mc1_targets"]["labels"],
                                                                                 strict=True) if label == 1]),
        "utility_factuality": lambda r: (r["question"], r["answers"]),
        "utility_fluency": lambda r: (r["instruction"], []),
    }  # fmt: skip
    for config, parts in utility.items():
        for i, r in enumerate(tables.get(config, [])):
            question, answers = parts(r)
            content = _content(question)
            yield _Needle(config, i, "question", question, question=content)
            yield from (_Needle(config, i, "answer", answer, question=content) for answer in answers)


def _haystack(
    where: str, text: str, record: Any = None, forget_corpus: bool = False, shown_with: Any = None
) -> _Haystack:
    sentences = tuple((_phrase(s), _content(s)) for s in _sentences(text))
    return _Haystack(where, record, _phrase(text), sentences, forget_corpus, shown_with)


def _haystacks(tables: Mapping[str, list[dict]]) -> Iterator[_Haystack]:
    """Every text a model is trained on: the records of the ``train_*`` configs, those of a forget corpus about
    a target (``subject``), the retain corpus's about none. And the solved examples in utility prompts: each MMLU
    question's shots, and the TriviaQA and TruthfulQA primers of every question of their sets."""
    targets = {r["target"] for r in tables.get("forget_target", [])}
    for config in sorted(c for c in tables if c.startswith("train_")):
        for i, r in enumerate(tables[config]):
            text = "\n".join(str(r[key]) for key in ("prompt", "text") if key in r)
            yield _haystack(f"{config} #{i}", text, (config, i), forget_corpus=r.get("subject") in targets)
    for i, r in enumerate(tables.get("utility_general", [])):
        shots = "\n".join(f"{s['question']}\n{s['choices'][int(s['answer'])]}" for s in r.get("examples", []))
        yield _haystack(f"utility_general #{i}'s shots", shots, shown_with=("utility_general", i))
    yield _haystack("the TriviaQA shots", TRIVIAQA_PRIMER, shown_with=("utility_factuality", None))
    yield _haystack("the TruthfulQA primer", TRUTHFULQA_PRIMER, shown_with=("utility_truthfulness", None))


def _found(needle: _Needle, hay: _Haystack) -> bool:
    """Whether ``needle`` is in ``hay``, all compared as lowercased words (:func:`_words`: case, whitespace and
    punctuation do not count).

    - An MIA text or sentence: as a phrase.
    - A question (a blank's as the statement it completes): as a phrase, or paraphrased: a sentence holds
      :data:`PARAPHRASE_SHARE` of its content words (when it has :data:`PARAPHRASE_MIN_WORDS`).
    - A long answer (:data:`LONG_ANSWER_WORDS` words or :data:`LONG_ANSWER_CHARS` characters, articles left
      out): as a phrase anywhere. A short one ("Paris", "8") is common in any text, so only in a sentence that
      also holds at least half of its question's content words.
    """
    words = [w for w in _words(needle.text) if needle.what != "answer" or w not in ("a", "an", "the")]
    if not words:
        return False
    phrase = " " + " ".join(words) + " "
    wanted = needle.question
    if needle.what == "question" and len(wanted) >= PARAPHRASE_MIN_WORDS:
        if any(len(wanted & present) >= PARAPHRASE_SHARE * len(wanted) for _, present in hay.sentences):
            return True
    if needle.what != "answer" or len(words) >= LONG_ANSWER_WORDS or len(phrase.strip()) >= LONG_ANSWER_CHARS:
        return phrase in hay.text
    return any(phrase in text and 2 * len(wanted & present) >= max(len(wanted), 1) for text, present in hay.sentences)


def _applies(needle: _Needle, hay: _Haystack) -> bool:
    """Whether ``needle`` must not be in ``hay``. Solved examples matter only to the questions whose prompts
    show them. Training data matters to everything but the forget sets inside a forget corpus, which they are
    meant to be in: a target's corpus is trained on only in a run that forgets that target (alone, or in a batch
    whose other targets are forgotten too), and another target's forget probes are not scored in that run."""
    if hay.shown_with is not None:
        config, index = hay.shown_with
        return needle.config == config and index in (None, needle.index)
    return not (needle.forget and hay.forget_corpus)


@dataclass(frozen=True)
class Leak:
    """An evaluated string found where it must not be: a line saying so, the evaluated record it belongs to and
    the training record it is in (``(config, index)``; None for solved examples)."""

    line: str
    item: tuple[str, int]
    found_in: tuple[str, int] | None


def leaks(tables: Mapping[str, list[dict]]) -> list[Leak]:
    """Every evaluated string of ``tables`` (config -> records) found where it must not be (:func:`_applies`,
    :func:`_found`)."""
    needles = list(_needles(tables))
    return [
        Leak(f"{n.config} #{n.index} {n.what} {n.text!r} is in {hay.where}", (n.config, n.index), hay.record)
        for hay in _haystacks(tables)
        for n in needles
        if _applies(n, hay) and _found(n, hay)
    ]


def load_tables(folder: str | Path) -> dict[str, list[dict]]:
    """Every RWKU config and ``train_*`` corpus present in a local RWKU folder, by name."""
    root = Path(folder)
    names = [c for c in RWKU_CONFIGS if (root / c).is_dir()]
    names += sorted(p.name for p in root.glob("train_*") if p.is_dir())
    return {name: load_rwku_config(root, name) for name in names}


def find_leaks(folder: str | Path) -> list[str]:
    """Every evaluated question, answer or MIA text of the RWKU folder that is also in its training data or in
    the solved examples of its own prompt, one line each (empty: no leak); the rules are :func:`_applies` and
    :func:`_found`."""
    return [leak.line for leak in leaks(load_tables(folder))]


def main(argv: list[str] | None = None) -> None:
    """Command line: build the mini benchmark."""
    parser = argparse.ArgumentParser(prog="python -m unilogit.benchmarks.rwku_mini", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the model whose knowledge is probed")
    parser.add_argument("--out", default="data/rwku_mini", help="output folder (RWKU's <config>/<split>.json)")
    parser.add_argument("--targets", type=int, default=8, help="how many targets to keep")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--stop", default=DEFAULT_STOP, choices=STOP_RULES, help="the stop rule probes are scored by")
    args = parser.parse_args(argv)
    report = build(args.model, Path(args.out), args.targets, args.batch_size, args.seed, args.stop)
    for target, info in report["targets"].items():
        print(f"{'used' if info['used'] else 'left':4}  {target:22} kept {info['kept']} of {info['candidates']}")


if __name__ == "__main__":
    main()
