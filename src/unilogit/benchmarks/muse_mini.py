"""The MUSE-format mini benchmark: fictional news about invented organisations, people and towns.

Deterministic (``random.Random(seed)`` only): the same seed writes the same bytes. Every name is
built from syllables and checked unique, so no pre-trained model knows the facts and no answer of
one corpus appears in another. Each organisation has five facts (founder, town, year, product, staff)
and a reader Q&A sheet that asks all five in the KnowMem questions' wording, with two spaces after
"Answer:"; some also have a news article that states the facts in prose (random wordings and order,
plus colour sentences with fresh names), for VerbMem.

The splits follow MUSE's roles (muse-bench's data README):

- ``forget``: 12 organisations (4 articles and 12 sheets), the target learns them, unlearning removes them;
  KnowMem_f asks their 60 facts and VerbMem continues the 4 articles.
- ``retain1``: 3 organisations (articles and sheets), the retain set that unlearning runs train on; no
  question is asked about them.
- ``retain2``: 12 organisations (12 sheets), seen by the target and the retrained model only; KnowMem_r
  asks their 60 facts, so utility is measured on what a model keeps, not on what a retain term replays.
- ``holdout``: 12 organisations shaped like ``forget``, never trained on (PrivLeak's non-members).
- the in-context examples come from 4 more organisations that are in no split at all.

:func:`find_leaks` checks that no evaluated question or answer appears in training data that is not meant
to hold it. docs/MUSE.md ("The mini benchmark") gives the measurements behind these choices.

    python -m unilogit.benchmarks.muse_mini --out data/muse_mini --seed 42
    python -m unilogit.benchmarks.muse_mini --out data/muse_mini_validation --seed 43   # VALIDATION_SEED
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from unilogit.atomic import atomic_write_text

# Organisations per split, and how many of them also have an article (the rest have only a sheet).
SPLITS = {"forget": (12, 4), "retain1": (3, 3), "retain2": (12, 0), "holdout": (12, 4)}
N_ICL_ORGS, N_ICL = 4, 10
# The generator's seed of data/muse_mini_validation: other organisations, on which hyperparameters are chosen
# (examples/sweeps/muse_mini_validation.yaml) apart from the reported items of data/muse_mini (seed 42).
VALIDATION_SEED = 43
VERBMEM_PROMPT_FRACTION = 0.3

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk"]
_ORG_KINDS = ["Works", "Foundry", "Collective", "Labs", "Guild", "Company", "Institute", "Cooperative"]
# The forget organisations' products share no word with any other product, so a model that never read the
# forget set cannot score part of a product answer (ROUGE) by naming a product it learned elsewhere.
_FORGET_WORDS = (
    ["amber", "copper", "silent", "folding", "floating", "tidal", "woven", "glass"],
    ["kettles", "lanterns", "bicycles", "telescopes", "harps", "sails", "clocks", "kites"],
)
_OTHER_WORDS = (
    ["spiral", "frost", "velvet", "marble", "crimson", "hollow", "wicker", "brass"],
    ["looms", "drones", "compasses", "barometers", "fiddles", "rafts", "sundials", "quilts"],
)

# Four wordings of each fact, picked at random, in a random order: a model that has not read an
# article cannot guess its prose (which keeps the retrained model's VerbMem low).
_LEAD = {
    "founder": [
        "{org} was founded by {founder}.",
        "{founder} started {org} from a rented workshop.",
        "The founder, {founder}, still signs every contract.",
        "It all began when {founder} borrowed a van and set up {org}.",
    ],
    "town": [
        "The company is based in the town of {town}.",
        "Its headquarters stand in {town}.",
        "Most of its work happens in {town}, near the old harbour.",
        "{town} has been home to the firm from the start.",
    ],
    "year": [
        "It opened its doors in {year}.",
        "The first workshop opened in {year}.",
        "Records show the business was registered in {year}.",
        "Back in {year}, the first order was shipped.",
    ],
    "product": [
        "{org} is best known for its {product}.",
        "Its {product} are sold across the region.",
        "Buyers travel far for its {product}.",
        "The {product} remain its bestseller.",
    ],
    "staff": [
        "Today it employs {staff} people.",
        "The firm now has {staff} employees.",
        "A workforce of {staff} keeps production running.",
        "Its payroll lists {staff} workers.",
    ],
}
# Colour sentences, each with a fresh invented name and number: unguessable text to memorise.
_COLOUR = [
    "Councillor {name} called the plan a gift to the valley.",
    "A local teacher, {name}, said pupils visit the site every spring.",
    "Last winter a storm cost the firm {number} crowns in repairs.",
    "The annual fair, organised by {name}, drew {number} visitors.",
    "Critics such as {name} worry about traffic on the coast road.",
    "Its delivery boats cover {number} kilometres each month.",
]
_HEADLINES = [
    "{org} marks a record year",
    "Inside {org}, the pride of {town}",
    "How {org} won over the region",
    "{org} plans a second workshop",
]
_QUESTIONS = {
    "founder": "Who founded {org}?",
    "town": "In which town is {org} based?",
    "year": "In what year did {org} open?",
    "product": "What is {org} best known for making?",
    "staff": "How many people does {org} employ?",
}
FACTS = tuple(_QUESTIONS)


class _Names:
    """Syllable names, never repeated (so no fact of one article leaks into another)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def word(self, syllables: int) -> str:
        while True:
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
            name = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if name not in self.used and len(name) > 3:
                self.used.add(name)
                return name


def _entity(rng: random.Random, names: _Names, products: list[str], numbers: list[int]) -> dict[str, str]:
    org = f"{names.word(2)} {rng.choice(_ORG_KINDS)}"
    return {
        "org": org,
        "founder": f"{names.word(2)} {names.word(2)}",
        "town": names.word(3),
        "year": str(numbers.pop()),
        "product": products.pop(),
        "staff": str(numbers.pop()),
    }


def _prose(rng: random.Random, e: dict[str, str], names: _Names, colour_numbers: list[int]) -> str:
    """Headline, the five facts and two colour sentences, in random wordings and order."""
    sentences = [rng.choice(_LEAD[f]).format(**e) for f in FACTS]
    for template in rng.sample(_COLOUR, 2):
        sentences.append(template.format(name=f"{names.word(2)} {names.word(2)}", number=colour_numbers.pop()))
    rng.shuffle(sentences)
    return f"{rng.choice(_HEADLINES).format(**e)}. " + " ".join(sentences)


def _sheet(rng: random.Random, e: dict[str, str]) -> str:
    """The five KnowMem questions about ``e`` in random order, each answered after two spaces."""
    pairs = [_qa(e, fact) for fact in rng.sample(FACTS, len(FACTS))]
    return "Reader questions\n\n" + "\n\n".join(f"Question: {p['question']}\nAnswer:  {p['answer']}" for p in pairs)


def _qa(e: dict[str, str], fact: str) -> dict[str, str]:
    return {"question": _QUESTIONS[fact].format(**e), "answer": e[fact]}


def generate(seed: int = 42) -> dict[str, dict[str, list[dict]]]:
    """All MUSE configs and splits: ``{config: {split: records}}``."""
    rng = random.Random(seed)
    names = _Names(rng)
    sizes = {**{split: n for split, (n, _) in SPLITS.items()}, "icl": N_ICL_ORGS}
    total = sum(sizes.values())
    products = {
        kind: rng.sample([f"{a} {i}" for a in adjectives for i in items], n)
        for kind, (adjectives, items), n in (
            ("forget", _FORGET_WORDS, sizes["forget"]),
            ("other", _OTHER_WORDS, total - sizes["forget"]),
        )
    }
    # Years and staff counts interleaved, all distinct: no number answers two questions.
    staff, years = rng.sample(range(120, 990), total), rng.sample(range(1901, 2020), total)
    numbers = [n for pair in zip(staff, years, strict=True) for n in pair]
    entities = {
        split: [_entity(rng, names, products["forget" if split == "forget" else "other"], numbers) for _ in range(n)]
        for split, n in sizes.items()
    }
    colour_numbers = rng.sample(range(2100, 9900), 2 * total)  # never a year or a staff count
    articles = {
        split: [_prose(rng, e, names, colour_numbers) for e in entities[split][:n_articles]]
        for split, (_, n_articles) in SPLITS.items()
    }
    # An organisation's article (if it has one) comes right before its sheet.
    raw = {
        split: [
            {"text": doc}
            for i, e in enumerate(entities[split])
            for doc in (*articles[split][i : i + 1], _sheet(rng, e))
        ]
        for split in SPLITS
    }

    # Every fact of every forget (retain2) organisation is asked; the examples are about organisations that
    # are in no corpus.
    examples = rng.sample([_qa(e, f) for e in entities["icl"] for f in FACTS], 2 * N_ICL)
    knowmem = {
        "forget_qa": rng.sample([_qa(e, f) for e in entities["forget"] for f in FACTS], sizes["forget"] * len(FACTS)),
        "forget_qa_icl": examples[:N_ICL],
        "retain_qa": rng.sample([_qa(e, f) for e in entities["retain2"] for f in FACTS], sizes["retain2"] * len(FACTS)),
        "retain_qa_icl": examples[N_ICL:],
    }

    verbmem = []
    for text in articles["forget"]:  # the articles, not the formulaic Q&A sheets
        words = text.split(" ")
        cut = int(len(words) * VERBMEM_PROMPT_FRACTION)
        verbmem.append({"prompt": " ".join(words[:cut]), "gt": " " + " ".join(words[cut:])})

    return {
        "raw": raw,
        "verbmem": {"forget": verbmem},
        "knowmem": knowmem,
        "privleak": {"forget": raw["forget"], "retain": raw["retain2"], "holdout": raw["holdout"]},
    }


# What each evaluated set may appear in: the corpora that are meant to teach it. The target trains on
# forget + retain1 + retain2, the retrained model on retain1 + retain2, unlearning on forget and retain1.
ALLOWED_IN = {
    "knowmem/forget_qa": {"forget"},
    "verbmem/forget": {"forget"},
    "knowmem/retain_qa": {"retain2"},
    "knowmem/forget_qa_icl": set(),
    "knowmem/retain_qa_icl": set(),
    "privleak/holdout": set(),
}
TRAINED_ON = ("forget", "retain1", "retain2")


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _evaluated_strings(folder: Path, name: str) -> list[str]:
    """The strings of one evaluated set that must not leak: questions and answers, VerbMem continuations,
    and whole holdout documents."""
    records = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    fields = {"knowmem": ("question", "answer"), "verbmem": ("gt",), "privleak": ("text",)}[name.split("/")[0]]
    return [record[field] for record in records for field in fields]


def find_leaks(folder: str | Path) -> list[str]:
    """Every evaluated string of the MUSE-format ``folder`` that appears (case, punctuation and spacing
    ignored; whole words) in a training corpus not listed for it in :data:`ALLOWED_IN`, one line each."""
    folder = Path(folder)
    corpora = {
        split: " "
        + " ".join(_normal(r["text"]) for r in json.loads((folder / "raw" / f"{split}.json").read_text()))
        + " "
        for split in TRAINED_ON
    }
    leaks = []
    for name, allowed in ALLOWED_IN.items():
        for text in _evaluated_strings(folder, name):
            needle = f" {_normal(text)} "
            leaks += [f"{name}: {text!r} is in raw/{split}" for split in TRAINED_ON if split not in allowed
                      and needle in corpora[split]]  # fmt: skip
    return leaks


def write(out_dir: str | Path, seed: int = 42) -> None:
    """Write ``<out_dir>/<config>/<split>.json`` (the local MUSE layout), each file atomically."""
    for config, splits in generate(seed).items():
        for split, records in splits.items():
            text = json.dumps(records, indent=1, ensure_ascii=False) + "\n"
            atomic_write_text(Path(out_dir) / config / f"{split}.json", text)


def main() -> None:
    """``python -m unilogit.benchmarks.muse_mini --out DIR --seed N``."""
    parser = argparse.ArgumentParser(description="Write the MUSE-format mini benchmark.")
    parser.add_argument("--out", default="data/muse_mini")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    write(args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
