"""The MUSE-format mini benchmark: fictional news about invented organisations, people and towns.

Deterministic (``random.Random(seed)`` only): the same seed writes the same bytes. Every name is
built from syllables and checked unique, so no pre-trained model knows the facts and no answer of
one corpus appears in another. Each organisation has two documents in its corpus: a news article that
states its five facts (founder, town, year, product, staff) in prose (random wordings and order, plus
colour sentences with fresh names), and a separate reader Q&A sheet that asks all five in the KnowMem
questions' wording, with two spaces after "Answer:". The in-context examples come from the retain2
organisations, which no model here is trained on. docs/MUSE.md ("The mini benchmark") gives the
measurements behind these choices.

    python -m unilogit.benchmarks.muse_mini --out data/muse_mini --seed 42
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from unilogit.atomic import atomic_write_text

N_FORGET = N_RETAIN1 = N_RETAIN2 = N_HOLDOUT = 4
N_ICL = 10
VERBMEM_PROMPT_FRACTION = 0.3

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk"]
_ORG_KINDS = ["Works", "Foundry", "Collective", "Labs", "Guild", "Company", "Institute", "Cooperative"]
_ADJECTIVES = ["amber", "copper", "silent", "folding", "floating", "tidal", "woven", "glass", "spiral", "frost"]
_ITEMS = ["kettles", "lanterns", "bicycles", "telescopes", "harps", "sails", "clocks", "kites", "looms", "drones"]

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
    total = N_FORGET + N_RETAIN1 + N_RETAIN2 + N_HOLDOUT
    products = rng.sample([f"{a} {i}" for a in _ADJECTIVES for i in _ITEMS], total)
    # Years and staff counts interleaved, all distinct: no number answers two questions.
    staff, years = rng.sample(range(120, 990), total), rng.sample(range(1901, 2020), total)
    numbers = [n for pair in zip(staff, years, strict=True) for n in pair]
    sizes = {"forget": N_FORGET, "retain1": N_RETAIN1, "retain2": N_RETAIN2, "holdout": N_HOLDOUT}
    entities = {split: [_entity(rng, names, products, numbers) for _ in range(n)] for split, n in sizes.items()}
    colour_numbers = rng.sample(range(2100, 9900), 2 * total)  # never a year or a staff count
    prose = {split: [_prose(rng, e, names, colour_numbers) for e in ents] for split, ents in entities.items()}
    raw = {
        split: [
            {"text": doc}
            for text, e in zip(prose[split], entities[split], strict=True)
            for doc in (text, _sheet(rng, e))
        ]
        for split in sizes
    }

    # Every fact of every forget (retain1) organisation is asked; the examples are retain2's facts.
    examples = rng.sample([_qa(e, f) for e in entities["retain2"] for f in FACTS], 2 * N_ICL)
    knowmem = {
        "forget_qa": rng.sample([_qa(e, f) for e in entities["forget"] for f in FACTS], N_FORGET * len(FACTS)),
        "forget_qa_icl": examples[:N_ICL],
        "retain_qa": rng.sample([_qa(e, f) for e in entities["retain1"] for f in FACTS], N_RETAIN1 * len(FACTS)),
        "retain_qa_icl": examples[N_ICL:],
    }

    verbmem = []
    for text in prose["forget"]:  # the articles, not the formulaic Q&A sheets
        words = text.split(" ")
        cut = int(len(words) * VERBMEM_PROMPT_FRACTION)
        verbmem.append({"prompt": " ".join(words[:cut]), "gt": " " + " ".join(words[cut:])})

    return {
        "raw": raw,
        "verbmem": {"forget": verbmem},
        "knowmem": knowmem,
        "privleak": {"forget": raw["forget"], "retain": raw["retain1"], "holdout": raw["holdout"]},
    }


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
