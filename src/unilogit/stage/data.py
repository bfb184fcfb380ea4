"""Forget and retain data: tokenized by llamafactory, paired example by example, collated side by side.

``dataset:`` is the forget set (so llamafactory's checks and the web UI's dataset box work) and
``retain_dataset:`` is ours. Each is read from ``dataset_info.json`` with llamafactory's own loader:
alpaca or sharegpt records are templated like ``sft`` (prompt masked), and raw-text datasets (alpaca
formatting with only a ``prompt`` column mapped, e.g. ``{"columns": {"prompt": "text"}}``) are
tokenized like ``pt``, every token supervised. With ``packing: true`` raw text is cut into blocks of
``cutoff_len`` tokens the way MUSE cuts its corpora: documents joined (each ending in EOS) and split into
consecutive blocks, the last, shorter block kept.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from unilogit.errors import ConfigError, first_line

if TYPE_CHECKING:
    from llamafactory.data import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

FORGET, RETAIN = "forget", "retain"


def _data_stage(names: list[str], dataset_dir: str, key: str) -> str:
    """``"pt"`` for raw-text datasets, ``"sft"`` for prompt/response ones; mixing the two is an error. Local
    JSON files are checked first (:func:`_check_json_file`)."""
    from llamafactory.data.parser import get_dataset_list

    try:
        attrs = get_dataset_list(names, dataset_dir)
    except ValueError as err:
        raise ConfigError(
            f"{key}: {err} Add the dataset to {dataset_dir}/dataset_info.json or fix dataset_dir"
        ) from None
    kinds = {"pt" if a.formatting == "alpaca" and a.response is None else "sft" for a in attrs}
    if len(kinds) > 1:
        raise ConfigError(f"{key}: mixes raw-text and prompt/response datasets; list only one kind per key")
    for attr in attrs:
        path = Path(dataset_dir) / attr.dataset_name
        if attr.load_from == "file" and path.is_file() and path.suffix == ".json":
            supervised = attr.prompt if attr.response is None else attr.response
            _check_json_file(path, key, supervised if attr.formatting == "alpaca" else None)
    return kinds.pop()


def _check_json_file(path: Path, key: str, text_column: str | None) -> None:
    """One-line errors for what ``datasets`` would report as a deep traceback (a file that is not UTF-8 or not
    JSON), and for records whose supervised text is blank, which would train on nothing but EOS."""
    try:
        records = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        where = f"{err.reason} at byte {err.start}"
        raise ConfigError(f"{key}: {path} is not UTF-8 text ({where}); save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{key}: {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); fix the file"
        ) from None
    if text_column is None or not isinstance(records, list):
        return
    # A record without the column at all is llamafactory's missing-column error, reported with its fix.
    texts = [r[text_column] for r in records if isinstance(r, dict) and text_column in r]
    blank = sum(1 for text in texts if not str(text or "").strip())
    if blank:
        raise ConfigError(
            f"{key}: {blank} of {len(records)} records in {path} have a blank {text_column!r}; remove or fill them"
        )


def load_split(
    names: list[str],
    key: str,
    template: Template,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: Seq2SeqTrainingArguments,
    tokenizer_module: dict[str, Any],
) -> dict[str, Any]:
    """Tokenize the datasets ``names`` with llamafactory; returns its dataset module (train/eval)."""
    from llamafactory.data import get_dataset

    stage = _data_stage(names, data_args.dataset_dir, key)
    # copy.copy, not dataclasses.replace: replace() re-runs __post_init__, which would shrink
    # cutoff_len a second time under packing.
    args = copy.copy(data_args)
    args.dataset = names
    if key == "retain_dataset":
        args.eval_dataset, args.val_size = None, 0.0
    # llamafactory packs raw text itself but drops the tail of every 1,000-record map batch, so a forget set of
    # a few documents packs to nothing; tokenize whole documents here and cut the blocks below instead.
    # DataArguments.__post_init__ took one token off cutoff_len under packing; the block is the configured size.
    block_size = data_args.cutoff_len + 1 if stage == "pt" and data_args.packing else None
    if block_size is not None:
        args.packing, args.cutoff_len = False, sys.maxsize
    try:
        module = get_dataset(template, model_args, args, training_args, stage=stage, **tokenizer_module)
    except KeyError as err:
        # llamafactory indexes each record by the mapped column names; a missing one is a KeyError.
        raise ConfigError(
            f'{key}: {",".join(names)} has no column {err}; rename it in the file or map it under "columns" '
            f"in {data_args.dataset_dir}/dataset_info.json"
        ) from None
    except ValueError as err:  # a missing file, or a file with no records
        raise ConfigError(
            f"{key}: {','.join(names)}: {first_line(err)} Fix file_name in "
            f"{data_args.dataset_dir}/dataset_info.json or give the file records"
        ) from None
    if block_size is not None:
        module = {
            split: ds.map(_blocks, batched=True, batch_size=None, fn_kwargs={"size": block_size})
            for split, ds in module.items()
        }
    if stage == "pt":
        module = {split: ds.map(_copy_labels, batched=True) for split, ds in module.items()}
    return module


def _blocks(batch: dict[str, list], size: int) -> dict[str, list]:
    """Every column joined end to end and cut into consecutive ``size``-token blocks (the last may be shorter)."""
    joined = {column: [t for row in rows for t in row] for column, rows in batch.items()}
    length = len(next(iter(joined.values())))
    return {column: [tokens[i : i + size] for i in range(0, length, size)] for column, tokens in joined.items()}


def _copy_labels(batch: dict[str, list]) -> dict[str, list]:
    return {"labels": [list(ids) for ids in batch["input_ids"]]}


def count_supervised(dataset: Any) -> int:
    """Number of supervised (label != -100) tokens after templating and truncation."""
    return sum(sum(1 for t in labels[1:] if t != -100) for labels in dataset["labels"])


class PairedDataset(Dataset):
    """Pairs forget example i with a retain example that changes every epoch, deterministically.

    The retain index of forget example i in epoch e is ``perm[(i + e·len(forget)) mod len(retain)]``,
    with ``perm`` a permutation fixed by the seed, so every retain example is used before any repeats.
    """

    def __init__(self, forget: Any, retain: Any | None, seed: int) -> None:
        self.forget, self.retain, self.epoch = forget, retain, 0
        if retain is not None:
            generator = torch.Generator().manual_seed(seed)
            self.perm = torch.randperm(len(retain), generator=generator).tolist()

    def set_epoch(self, epoch: int) -> None:
        """Move the retain pairing to ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {FORGET: self.forget[index]}
        if self.retain is not None:
            offset = (index + self.epoch * len(self.forget)) % len(self.retain)
            item[RETAIN] = self.retain[self.perm[offset]]
        return item


class PairedCollator:
    """Collates each side with llamafactory's collator: ``{"forget": batch, "retain": batch}``."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        return {side: self.collator([f[side] for f in features]) for side in features[0]}
