"""What the benchmark commands share: the repository root, and argparse that fails with one line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unilogit.stage.args import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


class CommandParser(argparse.ArgumentParser):
    """argparse that fails with our one-line ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> None:
        raise ConfigError(f"{self.prog}: {message}; see `{self.prog} --help`")


def add_model_args(parser: CommandParser, batch_size: int) -> None:
    """The options every evaluator shares: ``--tokenizer``, ``--dtype`` and ``--batch-size``."""
    from unilogit.models import DTYPES

    parser.add_argument(
        "--tokenizer",
        help="tokenizer folder or hub id, for a model that ships none (muse-bench's: meta-llama/Llama-2-7b-hf, "
        "the default for muse-bench/ ids); default: the model's own, or a LoRA folder's base model's",
    )
    parser.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="weights' dtype; auto: bfloat16 on a GPU, float32 on the CPU"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help=f"examples per forward pass (default {batch_size}); on a GPU that runs out of memory a batch is "
        "halved and run again",
    )


def data_path(data: str) -> str:
    """``data`` as given, or under the repository when it names one of the repository's folders."""
    return str(ROOT / data) if not Path(data).exists() and (ROOT / data).exists() else data


def merge_tables(
    argv: list[str],
    prog: str,
    produced_by: str,
    format_table: Callable[[dict[str, Any]], str],
    write: Callable[..., None],
) -> dict[str, Any]:
    """``PROG RESULTS.json ... [--save OUT.json] [--note TEXT] [--rename OLD=NEW]``: merge results files
    (name -> metrics) into one table, print it, and with ``--save`` write it with its ``.md`` twin."""
    parser = CommandParser(prog=prog, description=merge_tables.__doc__)
    parser.add_argument("results", nargs="+", help=f"results files written by {produced_by}")
    parser.add_argument("--save", help="also write the merged JSON here (and its .md twin); refused if it exists")
    parser.add_argument("--note", default="", help="text written above the table in the .md twin")
    parser.add_argument("--rename", action="append", default=[], help="OLD=NEW row name (repeatable)")
    args = parser.parse_args(argv)
    renames = dict(item.split("=", 1) for item in args.rename if "=" in item)
    merged: dict[str, Any] = {}
    for path in args.results:
        if not Path(path).is_file():
            raise ConfigError(f"{path} does not exist; run {produced_by} first")
        for name, row in json.loads(Path(path).read_text()).items():
            merged[renames.get(name, name)] = row
    if args.save:
        save = Path(args.save)
        if save.exists():
            raise ConfigError(f"{save} exists; remove it or choose another --save path")
        write(merged, save, save.with_suffix(".md"), note=args.note)
    print(format_table(merged))
    return merged
