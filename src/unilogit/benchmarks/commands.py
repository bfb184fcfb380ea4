"""What the benchmark commands share: argparse that fails with one line, the model options, merged tables."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unilogit.errors import ConfigError


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


class CommandParser(argparse.ArgumentParser):
    """argparse that fails with our one-line ConfigError instead of printing usage and exiting, and whose
    ``--help`` shows a docstring given as ``description`` as plain text (see :func:`plain_help`)."""

    def __init__(self, prog: str, description: str | None = None, **kwargs: Any) -> None:
        super().__init__(prog=prog, description=plain_help(description) if description else None, **kwargs)

    def format_help(self) -> str:
        """argparse's help, less the backticks that argument help texts borrow from the docs."""
        return super().format_help().replace("`", "")

    def error(self, message: str) -> None:
        raise ConfigError(f"{self.prog}: {message}; see `{self.prog} --help`")


def plain_help(docstring: str) -> str:
    """A command's docstring as its ``--help`` text: the leading ````synopsis````: (argparse prints the usage
    line itself) and the reST markup go, and the text starts with a capital."""
    text = re.sub(r"^\s*``[^`]*``\s*[:;]\s*", "", docstring)
    text = re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", text).replace("`", "")
    return text[:1].upper() + text[1:]


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


def merge_tables(
    argv: list[str],
    prog: str,
    produced_by: str,
    format_table: Callable[[dict[str, Any]], str],
    write: Callable[..., None],
) -> dict[str, Any]:
    """``unilogit muse|rwku table RESULTS.json ... [--save OUT.json] [--note TEXT] [--rename OLD=NEW]``: merge
    results files (name -> metrics) into one table, print it, and with ``--save`` write it with its ``.md`` twin.
    Rows of the same name are runs of one method with different training seeds: they become one row with each
    metric's mean and 95% confidence interval (a saved table's rows count as the runs they were made of)."""
    from unilogit.evaluation.seeds import aggregate_seeds, record_seed, seed_runs

    parser = CommandParser(prog=prog, description=merge_tables.__doc__)
    parser.add_argument("results", nargs="+", help=f"results files written by {produced_by}, or saved tables")
    parser.add_argument("--save", help="also write the merged JSON here (and its .md twin); refused if it exists")
    parser.add_argument("--note", default="", help="text written above the table in the .md twin")
    parser.add_argument("--rename", action="append", default=[], help="OLD=NEW row name (repeatable)")
    args = parser.parse_args(argv)
    renames = dict(item.split("=", 1) for item in args.rename if "=" in item)
    runs: dict[str, list[dict[str, Any]]] = {}
    source: dict[tuple[str, int | None], str] = {}  # (row name, seed) -> the file it came from
    for path in args.results:
        if not Path(path).is_file():
            raise ConfigError(f"{path} does not exist; run {produced_by} first")
        for name, row in json.loads(Path(path).read_text()).items():
            name = renames.get(name, name)
            for run in seed_runs(row):
                seed = record_seed(run)
                if (name, seed) in source:
                    which = "no recorded seed" if seed is None else f"seed {seed}"
                    raise ConfigError(f"{path}: {name!r} with {which} is also in {source[name, seed]}; give each "
                                      "run's results once, or --rename one of them")  # fmt: skip
                source[name, seed] = path
                runs.setdefault(name, []).append(run)
    merged = {name: aggregate_seeds(records) for name, records in runs.items()}
    if args.save:
        save = Path(args.save)
        if save.exists():
            raise ConfigError(f"{save} exists; remove it or choose another --save path")
        write(merged, save, save.with_suffix(".md"), note=args.note)
    print(format_table(merged))
    return merged
