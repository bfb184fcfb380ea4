"""MUSE evaluator (Shi et al. 2024): VerbMem_f, KnowMem_f, KnowMem_r, PrivLeak, and KL to the retrained model.

Data comes either from the hub (``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``; aliases ``news``,
``books``) through real ``datasets.load_dataset(hub_id, config, split=...)`` calls, or from a local folder in
the same schema: ``<root>/<config>/<split>.json``, each a JSON list of records.

==========  ===========================================  ========================
config      splits (canonical names, used locally)       fields
==========  ===========================================  ========================
raw         forget, retain1, retain2, holdout            text
verbmem     forget                                       prompt, gt
knowmem     forget_qa, forget_qa_icl, retain_qa,         question, answer
            retain_qa_icl
privleak    forget, retain, holdout                      text
==========  ===========================================  ========================

The metric definitions follow docs/BENCHMARKS.md and MUSE's reference code (``muse_bench``:
``metrics/verbmem.py``, ``metrics/knowmem.py``, ``metrics/privleak.py``, ``eval.py``, ``constants.py``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unilogit.atomic import atomic_folder, atomic_write_text
from unilogit.errors import ConfigError
from unilogit.evaluation.common import (
    check_records,
    decode,
    generate_greedy,
    mean_or_none,
    read_json_records,
    token_log_probs,
)
from unilogit.evaluation.divergence import mean_token_kl
from unilogit.evaluation.mia import auc, min_k_score, privleak
from unilogit.evaluation.results import format_metrics_table, markdown_table, write_metrics
from unilogit.evaluation.text_overlap import rouge_l_f1

# --------------------------------------------------------------------------------------------- data

HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}

MUSE_SPLITS: dict[str, tuple[str, ...]] = {
    "raw": ("forget", "retain1", "retain2", "holdout"),
    "verbmem": ("forget",),
    "knowmem": ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"),
    "privleak": ("forget", "retain", "holdout"),
}
MUSE_FIELDS: dict[str, tuple[str, ...]] = {
    "raw": ("text",),
    "verbmem": ("prompt", "gt"),
    "knowmem": ("question", "answer"),
    "privleak": ("text",),
}

# Canonical split name -> the split name on the hub, per corpus (only names that differ are listed).


def _hub_id(source: str) -> str | None:
    """The hub id for a hub id or alias (case-insensitive), else None."""
    key = source.strip()
    if key.lower() in HUB_IDS:
        return HUB_IDS[key.lower()]
    for hub_id in HUB_IDS.values():
        if key.lower() == hub_id.lower():
            return hub_id
    return None


def _check_config_split(config: str, split: str) -> None:
    if config not in MUSE_SPLITS:
        raise ConfigError(f"unknown MUSE config {config!r}: use one of {', '.join(MUSE_SPLITS)}")
    if split not in MUSE_SPLITS[config]:
        raise ConfigError(
            f"unknown split {split!r} of MUSE config {config!r}: use one of {', '.join(MUSE_SPLITS[config])}"
        )


def _resolve_source(source: str | Path) -> tuple[str | None, Path | None]:
    """``(hub_id, None)`` for a hub source, ``(None, folder)`` for an existing local folder."""
    hub_id = _hub_id(str(source))
    if hub_id is not None:
        return hub_id, None
    folder = Path(source)
    if folder.is_dir():
        return None, folder
    raise ConfigError(
        f"MUSE source {str(source)!r} is neither a hub dataset ({', '.join(HUB_IDS.values())}, or the aliases "
        f"{', '.join(HUB_IDS)}) nor an existing folder: give one of those, or a folder laid out as "
        "<folder>/<config>/<split>.json (`unilogit muse export` writes one)"
    )


def load_muse_split(source: str | Path, config: str, split: str, limit: int | None = None) -> list[dict]:
    """Records of one MUSE ``config``/``split`` (canonical split names), the first ``limit`` if given.

    ``source`` is a hub id or alias (a real ``datasets.load_dataset(hub_id, config, split=split)`` call) or a
    local folder holding ``<source>/<config>/<split>.json``. Every record is checked for the config's fields.
    """
    _check_config_split(config, split)
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0 or None, got {limit}")
    hub_id, folder = _resolve_source(source)
    if hub_id is not None:
        import datasets

        # Both datasets' current ``main`` use the canonical split names (MUSE-Books renamed ``retain2`` to
        # ``retain`` in commit 1a93943 and ``retain2_qa(_icl)`` to ``retain_qa(_icl)`` in 3196c69).
        dataset = datasets.load_dataset(hub_id, config, split=split)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        records = [dict(row) for row in dataset]
        where = f"{hub_id} {config}/{split}"
    else:
        path = folder / config / f"{split}.json"
        fields = ", ".join(MUSE_FIELDS[config])
        missing = (
            f"missing MUSE file {path}: write it as a JSON list of {{{fields}}} records, or use `unilogit muse export`"
        )
        records = read_json_records(path, missing)
        where = str(path)
    check_records(records, where, MUSE_FIELDS[config], f"MUSE {config}")
    records = records if limit is None else records[:limit]
    return records


@dataclass
class MuseData:
    """The MUSE evaluation sets. ``limit`` in :func:`load_muse` caps every list except the ICL examples."""

    verbmem: list[dict] = field(default_factory=list)
    knowmem_forget: list[dict] = field(default_factory=list)
    knowmem_forget_icl: list[dict] = field(default_factory=list)
    knowmem_retain: list[dict] = field(default_factory=list)
    knowmem_retain_icl: list[dict] = field(default_factory=list)
    privleak_forget: list[dict] = field(default_factory=list)
    privleak_retain: list[dict] = field(default_factory=list)
    privleak_holdout: list[dict] = field(default_factory=list)
    source: str = ""

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in _MUSE_DATA_SPLITS}


_MUSE_DATA_SPLITS: dict[str, tuple[str, str]] = {
    "verbmem": ("verbmem", "forget"),
    "knowmem_forget": ("knowmem", "forget_qa"),
    "knowmem_forget_icl": ("knowmem", "forget_qa_icl"),
    "knowmem_retain": ("knowmem", "retain_qa"),
    "knowmem_retain_icl": ("knowmem", "retain_qa_icl"),
    "privleak_forget": ("privleak", "forget"),
    "privleak_retain": ("privleak", "retain"),
    "privleak_holdout": ("privleak", "holdout"),
}


def load_muse(source: str | Path, limit: int | None = None) -> MuseData:
    """Every evaluation split (verbmem, knowmem + ICL, privleak) from a hub id/alias or a local folder.

    ``limit`` keeps the first N examples of each evaluated split; the in-context examples are always
    kept whole, since cutting them would change the KnowMem prompt.
    """
    lists = {
        name: load_muse_split(source, config, split, limit=None if name.endswith("_icl") else limit)
        for name, (config, split) in _MUSE_DATA_SPLITS.items()
    }
    return MuseData(**lists, source=str(source))


def _refuse_nonempty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export folder {out} exists and is not empty: choose a new folder or empty it first")


def write_muse_layout(tables: Mapping[tuple[str, str], list[dict]], out_dir: str | Path) -> Path:
    """Write ``{(config, split): records}`` as ``<out_dir>/<config>/<split>.json`` all at once.

    The files are written into a temporary sibling folder that is then renamed to ``out_dir``
    (:func:`~unilogit.atomic.atomic_folder`, with the last file as its marker), so ``out_dir`` either holds the
    complete layout or is left as it was. Refuses a non-empty ``out_dir``.
    """
    out = Path(out_dir)
    _refuse_nonempty(out)
    for config, split in tables:
        _check_config_split(config, split)
    if not tables:
        raise ValueError("write_muse_layout: no tables to write")
    last_config, last_split = list(tables)[-1]
    with atomic_folder(out, f"{last_config}/{last_split}.json") as tmp:
        for (config, split), records in tables.items():
            atomic_write_text(tmp / config / f"{split}.json", json.dumps(records, ensure_ascii=False, indent=1))
    return out


def export_muse(hub_id_or_alias: str, out_dir: str | Path) -> Path:
    """Download every config/split of a MUSE hub dataset once and write the local layout atomically.

    Reads raw, verbmem, knowmem and privleak (all splits of :data:`MUSE_SPLITS`) with
    :func:`load_muse_split`, then :func:`write_muse_layout` writes ``<out_dir>/<config>/<split>.json``
    under the canonical split names. Refuses a non-empty ``out_dir`` before downloading. Returns ``out_dir``.
    """
    hub_id = _hub_id(hub_id_or_alias)
    if hub_id is None:
        raise ConfigError(
            f"unknown MUSE hub dataset {hub_id_or_alias!r}: use one of {', '.join(HUB_IDS.values())} "
            f"or the aliases {', '.join(HUB_IDS)}"
        )
    out = Path(out_dir)
    _refuse_nonempty(out)
    tables = {
        (config, split): load_muse_split(hub_id, config, split)
        for config, splits in MUSE_SPLITS.items()
        for split in splits
    }
    return write_muse_layout(tables, out)


# ----------------------------------------------------------------------------------------- protocol

MIN_K = 0.4
# PrivLeak's reference per hub corpus: the AUC of MUSE's retrained Llama-2-7B, from MUSE's constants.py
# (swj0419/muse_bench, commit fcd6651): AUC_RETRAIN["news"|"books"]["forget_holdout_Min-40%"] = 0.4772 | 0.5393.
MUSE_AUC_RETRAIN = {"muse-bench/MUSE-News": 0.4772, "muse-bench/MUSE-Books": 0.5393}
VERBMEM_TOKENS = 128
KNOWMEM_TOKENS = 32


def privleak_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MUSE's ``forget_holdout_Min-40%`` AUC from per-text Min-K scores (:func:`min_k_score`).

    AUC = P(MinK(forget) > MinK(holdout)) + ½·ties = :func:`auc` ``(forget_scores, holdout_scores)``,
    scikit-learn's ``roc_auc_score``.

    This is MUSE's own convention (``metrics/privleak.py``): ``y = [0]*len(forget) + [1]*len(holdout)``
    and ``roc_curve(y, -MinK)``, i.e. holdout is the positive class scored by −MinK, which is the same
    number. A model that memorized the forget set gives its forget texts low Min-K scores, so AUC ≈ 0 and
    PrivLeak ≈ −100; a retrained model gives AUC ≈ 0.5; over-unlearning pushes AUC toward 1 (PrivLeak > 0).
    """
    return auc(forget_scores, holdout_scores)


def muse_auc_retrain(source: str | Path) -> float | None:
    """MUSE's published AUC_retrain for a hub corpus (:data:`MUSE_AUC_RETRAIN`); None for local data, where
    only a retrained model can give it."""
    hub_id = _hub_id(str(source))
    return None if hub_id is None else MUSE_AUC_RETRAIN[hub_id]


NEEDS_RETRAIN = (
    "[muse] PrivLeak is n/a: on local data it needs the retrained model's AUC; pass --retrain RETRAIN_MODEL "
    "(MUSE's published constants hold only for --data news or books)"
)


def knowmem_prompt(icl: Sequence[Mapping[str, str]], question: str) -> str:
    """``"Question: {q}\\nAnswer: {a}\\n\\n"`` for each in-context example, then ``"Question: {q}\\nAnswer: "``."""
    shots = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in icl)
    return f"{shots}Question: {question}\nAnswer: "


KNOWMEM_STOPS = ("\n\n", "Question")


def cut_answer(text: str) -> str:
    """``text`` up to (not including) its first ``"\\n\\n"`` or ``"Question"``, whichever comes first.

    MUSE's reference cuts at ``"\\n\\n"``, ``"\\nQuestion"`` and ``"Question:"``; cutting at every
    ``"Question"`` is a superset that only differs on a bare "Question" word in an answer.
    """
    cut = len(text)
    for marker in KNOWMEM_STOPS:
        index = text.find(marker)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


# ----------------------------------------------------------------------------------------- evaluate


def _truncate_to_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The first ``max_tokens`` tokens of ``text`` (special tokens included, as MUSE), decoded."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    return decode(tokenizer, [ids])[0]


def _knowmem(model, tokenizer, qa: list[dict], icl: list[dict], batch_size: int, desc: str) -> float | None:
    if not qa:
        return None
    prompts = [knowmem_prompt(icl, record["question"]) for record in qa]
    answers = generate_greedy(
        model,
        tokenizer,
        prompts,
        KNOWMEM_TOKENS,
        batch_size=batch_size,
        desc=desc,
        stop_strings=KNOWMEM_STOPS,
        share_prefix=True,  # every prompt starts with the same in-context examples
    )
    return mean_or_none([rouge_l_f1(cut_answer(a), r["answer"]) * 100 for a, r in zip(answers, qa, strict=True)])


def _privleak_auc(model, tokenizer, data: MuseData, batch_size: int) -> float:
    scores = {}
    for name in ("privleak_forget", "privleak_holdout"):
        texts = [record["text"] for record in getattr(data, name)]
        log_probs = token_log_probs(model, tokenizer, texts, batch_size=batch_size, desc=name)
        scores[name] = [min_k_score(lp, MIN_K) for lp in log_probs]
    return privleak_auc(scores["privleak_forget"], scores["privleak_holdout"])


def evaluate_muse(
    model: torch.nn.Module,
    tokenizer: Any,
    data: MuseData,
    retrain_model: torch.nn.Module | None = None,
    retrain_auc: float | None = None,
    batch_size: int = 8,
) -> dict:
    """VerbMem_f, KnowMem_f, KnowMem_r, PrivLeak and KL to the retrained model on ``data``.

    - ``verbmem_f``: greedy 128 new tokens from each verbmem ``prompt``; ROUGE-L F1 against the first
      128 tokens of ``gt`` (tokenized with special tokens, as MUSE), decoded; mean × 100.
    - ``knowmem_f`` / ``knowmem_r``: :func:`knowmem_prompt` with the split's ICL examples, greedy 32 new
      tokens, :func:`cut_answer`, ROUGE-L F1 against ``answer``; mean × 100.
    - ``auc``: :func:`privleak_auc` of per-text Min-40% scores on privleak forget vs holdout.
    - ``privleak``: :func:`privleak` against AUC_retrain, taken, in order, from ``retrain_auc`` (the
      retrain model's AUC computed before, or a given value), ``retrain_model`` (same computation), or
      MUSE's published constant for the hub corpus ``data`` came from (:func:`muse_auc_retrain`; right only
      for MUSE's own models). Local data with none gets None and a line on stderr naming ``--retrain``.
      ``auc_retrain_from`` says which: ``retrain model`` (computed now or before), ``given`` or
      ``MUSE constant for <hub id>``.
    - ``kl_to_retrain``: :func:`mean_token_kl` KL(p_retrain ‖ p_model) on the privleak forget texts
      (the forget-set documents); None without ``retrain_model``. Both models use ``tokenizer``.
    - PrivLeak is None when the retrain AUC is 0 (it divides by it): a few texts separated perfectly.
    - ``retrain_model`` may be ``model`` itself (scoring the retrained model): its AUC is reused and the KL is 0.

    Metrics of empty splits are None. ``n`` counts the examples used.
    """
    verbmem_prompts = [record["prompt"] for record in data.verbmem]
    verbmem_f = None
    if verbmem_prompts:
        outputs = generate_greedy(model, tokenizer, verbmem_prompts, VERBMEM_TOKENS, batch_size, desc="VerbMem")
        refs = [_truncate_to_tokens(tokenizer, record["gt"], VERBMEM_TOKENS) for record in data.verbmem]
        verbmem_f = mean_or_none([rouge_l_f1(o, r) * 100 for o, r in zip(outputs, refs, strict=True)])
    knowmem_f = _knowmem(model, tokenizer, data.knowmem_forget, data.knowmem_forget_icl, batch_size, "KnowMem_f")
    knowmem_r = _knowmem(model, tokenizer, data.knowmem_retain, data.knowmem_retain_icl, batch_size, "KnowMem_r")

    auc_model = auc_retrain = leak = auc_from = None
    if data.privleak_forget and data.privleak_holdout:
        constant = muse_auc_retrain(data.source)
        auc_model = _privleak_auc(model, tokenizer, data, batch_size)
        if retrain_model is model:  # the retrained model scored against itself
            auc_retrain, auc_from = auc_model, "retrain model"
        elif retrain_auc is not None:
            auc_retrain, auc_from = float(retrain_auc), "retrain model" if retrain_model is not None else "given"
        elif retrain_model is not None:
            auc_retrain, auc_from = _privleak_auc(retrain_model, tokenizer, data, batch_size), "retrain model"
        elif constant is not None:
            auc_retrain, auc_from = constant, f"MUSE constant for {_hub_id(data.source)}"
        if auc_retrain is None:  # local data, no retrained model: another corpus's constant would be wrong
            print(NEEDS_RETRAIN, file=sys.stderr)
        elif auc_retrain > 0:
            leak = privleak(auc_model, auc_retrain)
        else:  # a few texts that the retrain model happens to separate perfectly (quick runs): report n/a
            print(
                "[muse] PrivLeak is undefined: the retrain AUC is 0 on these texts; use more examples", file=sys.stderr
            )

    kl = None
    forget_texts = [record["text"] for record in data.privleak_forget]
    if retrain_model is model and forget_texts:
        kl = 0.0
    elif retrain_model is not None and forget_texts:
        kl = mean_token_kl(model, retrain_model, tokenizer, forget_texts, batch_size=batch_size, desc="KL")

    return {
        "verbmem_f": verbmem_f,
        "knowmem_f": knowmem_f,
        "knowmem_r": knowmem_r,
        "privleak": leak,
        "auc": auc_model,
        "auc_retrain": auc_retrain,
        "auc_retrain_from": auc_from,
        "kl_to_retrain": kl,
        "n": {
            "verbmem": len(data.verbmem),
            "knowmem_forget": len(data.knowmem_forget),
            "knowmem_retain": len(data.knowmem_retain),
            "icl_forget": len(data.knowmem_forget_icl),
            "icl_retain": len(data.knowmem_retain_icl),
            "privleak_forget": len(data.privleak_forget),
            "privleak_holdout": len(data.privleak_holdout),
        },
    }


TABLE_COLUMNS = (
    ("VerbMem_f", "verbmem_f", "{:.1f}"),
    ("KnowMem_f", "knowmem_f", "{:.1f}"),
    ("KnowMem_r", "knowmem_r", "{:.1f}"),
    ("PrivLeak", "privleak", "{:.1f}"),
    ("KL to retrain", "kl_to_retrain", "{:.4f}"),
)


# The forget metrics whose target–retrain gap an unlearning run should close.
FORGET_GAPS = (("VerbMem_f", "verbmem_f"), ("KnowMem_f", "knowmem_f"))
GAP_LEGEND = (
    "Gap closed = (target − model) / (target − retrain) on the means: 100% at the retrained model's score, 0% at "
    "the target's. KnowMem_r kept = the model's KnowMem_r / the target's."
)


def gap_closed(row: Mapping[str, Any], target: Mapping[str, Any], retrain: Mapping[str, Any], key: str) -> float:
    """The share of the target–retrain gap of forget metric ``key`` that ``row`` closes: (target − row) /
    (target − retrain); 1 at the retrained model's score, 0 at the target's."""
    return (target[key] - row[key]) / (target[key] - retrain[key])


def format_gap_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per row other than the target and retrain models: the share of each forget gap it closes
    (:func:`gap_closed`) and the share of the target's KnowMem_r it keeps; "" without both reference rows."""
    target, retrain = results.get("target"), results.get("retrain")
    if not target or not retrain:
        return ""
    rows = []
    for name, row in results.items():
        if name in ("target", "retrain"):
            continue
        cells = [name]  # one decimal, so that 49.5% does not read as the 50% of a bar
        for _, key in FORGET_GAPS:
            known = None not in (row[key], target[key], retrain[key]) and target[key] != retrain[key]
            cells.append(f"{gap_closed(row, target, retrain, key):.1%}" if known else "n/a")
        known = row["knowmem_r"] is not None and bool(target["knowmem_r"])
        cells.append(f"{row['knowmem_r'] / target['knowmem_r']:.1%}" if known else "n/a")
        rows.append(cells)
    header = ["model", *(f"{title} gap closed" for title, _ in FORGET_GAPS), "KnowMem_r kept"]
    return f"{markdown_table(header, rows).rstrip()}\n\n{GAP_LEGEND}\n" if rows else ""


def format_muse_table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per model name, columns VerbMem_f, KnowMem_f, KnowMem_r, PrivLeak, KL; then,
    with target and retrain rows, :func:`format_gap_table`."""
    gaps = format_gap_table(results)
    table = format_metrics_table(results, TABLE_COLUMNS)
    return f"{table.rstrip()}\n\n{gaps}" if gaps else table


def write_results(results: dict[str, dict], json_path: str | Path, md_path: str | Path, note: str = "") -> None:
    """Write ``results`` (model name -> :func:`evaluate_muse` dict) with the MUSE table (:func:`write_metrics`)
    and its gap table (:func:`format_gap_table`)."""
    write_metrics(results, json_path, md_path, TABLE_COLUMNS, note, after=format_gap_table(results))
