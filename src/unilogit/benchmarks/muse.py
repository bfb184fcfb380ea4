"""The MUSE benchmark commands: ``unilogit muse prepare`` and ``unilogit eval muse``.

``prepare`` trains (or reuses from the cache) the target model (forget + retain1) and the retrained
gold model (retain1 only) with llamafactory's ``pt`` stage. ``eval muse`` scores any model on a
MUSE-schema dataset (the embedded mini benchmark, a local export, or the hub) and writes a JSON file
and a Markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from unilogit.benchmarks.commands import ROOT, CommandParser, data_path, merge_tables, positive_int
from unilogit.stage.args import ConfigError

DEFAULT_DATA = "data/muse_mini"
PREPARE_CONFIGS = {"target": "examples/muse/target.yaml", "retrain": "examples/muse/retrain.yaml"}
RESULTS_JSON, RESULTS_MD = "muse_results.json", "muse_results.md"


def prepare(argv: list[str]) -> dict[str, Path]:
    """``unilogit muse prepare [key=value ...]``: the target and retrain models, trained once and cached."""
    from unilogit.benchmarks.prepare import prepare_model

    parser = CommandParser(prog="unilogit muse prepare", description=prepare.__doc__)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both configs, e.g. bf16=false")
    args = parser.parse_args(argv)
    # The shipped configs name dataset_dir: data, relative to the repository, not to the caller's folder.
    overrides = [f"dataset_dir={ROOT / 'data'}", *args.overrides]
    paths = {name: prepare_model(name, ROOT / config, overrides) for name, config in PREPARE_CONFIGS.items()}
    for name, path in paths.items():
        print(f"{name}={path}")
    return paths


def evaluate(argv: list[str]) -> dict[str, Any]:
    """``unilogit eval muse --model M [--retrain R] [--data D] ...``: MUSE metrics of one model."""
    from unilogit.evaluation.muse import evaluate_muse, format_muse_table, load_muse, write_results
    from unilogit.models import load_for_eval

    parser = CommandParser(prog="unilogit eval muse", description=evaluate.__doc__)
    parser.add_argument("--model", required=True, help="alias, hub id, or a training output folder (full or LoRA)")
    parser.add_argument("--retrain", help="the retrained model: PrivLeak's reference AUC and the KL to retrain")
    parser.add_argument("--data", default=DEFAULT_DATA, help="local MUSE folder, or news | books (the hub)")
    parser.add_argument("--max-examples", type=positive_int, help="cap every split at this many examples (quick runs)")
    parser.add_argument("--output", help=f"folder for {RESULTS_JSON} and {RESULTS_MD} (default: beside the model)")
    parser.add_argument("--name", help="the row name in the table (default: the model folder's name)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    args = parser.parse_args(argv)

    output = Path(args.output) if args.output else Path(args.model) / "muse_eval"
    if not args.output and not Path(args.model).is_dir():
        raise ConfigError("--output: the model is not a local folder, so say where the results go")
    if (output / RESULTS_JSON).exists() and not args.overwrite:
        raise ConfigError(f"{output / RESULTS_JSON} exists; pass --overwrite or choose another --output")
    data = load_muse(data_path(args.data), limit=args.max_examples)
    model, tokenizer = load_for_eval(args.model, args.dtype)
    retrain = None
    if args.retrain:
        same = Path(args.retrain).resolve() == Path(args.model).resolve()
        retrain = model if same else load_for_eval(args.retrain, args.dtype)[0]
    metrics = evaluate_muse(model, tokenizer, data, retrain_model=retrain, batch_size=args.batch_size)
    name = args.name or Path(args.model).name
    record = {
        "name": name,
        "model": str(args.model),
        "retrain": args.retrain,
        "data": str(args.data),
        "max_examples": args.max_examples,
        **metrics,
    }
    write_results({name: record}, output / RESULTS_JSON, output / RESULTS_MD)
    print(format_muse_table({name: record}))
    return record


def table(argv: list[str]) -> dict[str, Any]:
    """``unilogit muse table RESULTS.json ... [--save OUT.json]``: merge results into one table."""
    from unilogit.evaluation.muse import format_muse_table, write_results

    return merge_tables(argv, "unilogit muse table", "`unilogit eval muse`", format_muse_table, write_results)


def main(argv: list[str]) -> None:
    """``unilogit muse prepare|table``."""
    commands = {"prepare": prepare, "table": table}
    if not argv or argv[0] not in commands:
        raise ConfigError("usage: unilogit muse prepare [key=value ...] | unilogit muse table RESULTS.json ...")
    commands[argv[0]](argv[1:])
    sys.stdout.flush()
