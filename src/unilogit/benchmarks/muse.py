"""The MUSE benchmark commands: ``unilogit muse prepare``, ``muse datasets`` and ``unilogit eval muse``.

``prepare`` trains (or reuses from the cache) the target model (forget, retain1, retain2) and the retrained
gold model (retain1, retain2) with llamafactory's ``pt`` stage, on the embedded mini corpus or on a local
MUSE-format folder's ``raw/`` splits (``--data``). ``datasets`` registers such a folder's forget and
retain1 texts as llamafactory datasets, for unlearning. ``eval muse`` scores any model on a MUSE-schema
dataset (the embedded mini benchmark, a local export, or the hub) and writes a JSON file and a Markdown
table.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from unilogit.atomic import atomic_write_text
from unilogit.benchmarks.commands import CommandParser, add_model_args, merge_tables, positive_int
from unilogit.benchmarks.registry import MUSE
from unilogit.errors import ConfigError
from unilogit.fingerprint import evaluator_code, fingerprint
from unilogit.paths import data_dir, project_root, saves_dir, shipped

PREPARE_CONFIGS = {"target": "examples/muse/target.yaml", "retrain": "examples/muse/retrain.yaml"}
# The default data and the results files are the descriptor's, which the sweeps and the web UI read too.
DEFAULT_DATA, RESULTS_JSON, RESULTS_MD = MUSE.default_data, MUSE.results_json, MUSE.results_md
# The names under which a local folder's raw/forget.json, raw/retain1.json and (if present) raw/retain2.json are
# registered. MUSE's roles: unlearning trains on forget and retain1; retain2 is seen by the target and the
# retrained model only, and KnowMem_r asks about it.
LOCAL_FORGET, LOCAL_RETAIN, LOCAL_RETAIN2 = "muse_local_forget", "muse_local_retain", "muse_local_retain2"


def register_local(folder: str | Path) -> Path:
    """Register ``folder``'s ``raw/forget.json`` and ``raw/retain1.json`` (MUSE's unlearning splits, records
    with a ``text`` field) as the llamafactory datasets :data:`LOCAL_FORGET` and :data:`LOCAL_RETAIN`, and its
    ``raw/retain2.json``, when there is one, as :data:`LOCAL_RETAIN2`.

    Writes a ``dataset_info.json`` that names the files by absolute path (llamafactory joins ``dataset_dir``
    and ``file_name``, and an absolute ``file_name`` wins) in a folder under ``saves/muse/datasets/`` keyed
    by the folder's path, and returns that folder, the ``dataset_dir`` to train with.
    """
    from unilogit.atomic import atomic_write_text
    from unilogit.evaluation.muse import load_muse_split

    source = Path(folder).resolve()
    if not source.is_dir():
        raise ConfigError(
            f"--data: {folder} is not a folder; give a local MUSE-format folder (`unilogit muse export` writes one)"
        )
    splits = {LOCAL_FORGET: "forget", LOCAL_RETAIN: "retain1"}
    if (source / "raw" / "retain2.json").is_file():
        splits[LOCAL_RETAIN2] = "retain2"
    for split in splits.values():
        load_muse_split(source, "raw", split)  # a missing file or a record without "text" fails in one line here
    info = {
        name: {"file_name": str(source / "raw" / f"{split}.json"), "columns": {"prompt": "text"}}
        for name, split in splits.items()
    }
    out = saves_dir() / "muse" / "datasets" / f"{source.name}-{hashlib.sha256(bytes(source)).hexdigest()[:12]}"
    text = json.dumps(info, indent=1) + "\n"
    target = out / "dataset_info.json"
    # A sweep registers its folder once per point: rewrite only when the registration changed.
    if not target.is_file() or target.read_text() != text:
        atomic_write_text(target, text)
    return out


def datasets(argv: list[str]) -> Path:
    """``unilogit muse datasets FOLDER``: register a local MUSE folder's forget and retain1 texts for unlearning;
    prints ``dataset_dir=``, ``forget=`` and ``retain=`` lines for the drivers to read."""
    parser = CommandParser(prog="unilogit muse datasets", description=datasets.__doc__)
    parser.add_argument("folder", help="a local MUSE-format folder (raw/forget.json and raw/retain1.json)")
    args = parser.parse_args(argv)
    out = register_local(args.folder)
    print(f"dataset_dir={out}\nforget={LOCAL_FORGET}\nretain={LOCAL_RETAIN}")
    return out


def prepare(argv: list[str]) -> dict[str, Path]:
    """``unilogit muse prepare [--data FOLDER] [key=value ...]``: the target and retrain models, trained once and
    cached; on the embedded mini corpus, or on a local MUSE folder's raw/ splits (the target on forget, retain1
    and retain2, the retrained model on retain1 and retain2; retain2 where the folder has one)."""
    from unilogit.benchmarks.prepare import prepare_model

    parser = CommandParser(prog="unilogit muse prepare", description=prepare.__doc__)
    parser.add_argument("--data", help="a local MUSE-format folder to train on (default: the embedded mini corpus)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both configs, e.g. bf16=false")
    args = parser.parse_intermixed_args(argv)
    # The shipped configs name dataset_dir: data, relative to the project, not to the caller's folder.
    data = {name: [f"dataset_dir={data_dir()}"] for name in PREPARE_CONFIGS}
    if args.data:
        # The cache key hashes the registered files' bytes, so other data in the same folder trains anew.
        dataset_dir = register_local(args.data)
        registered = json.loads((dataset_dir / "dataset_info.json").read_text())
        retain = ",".join(name for name in (LOCAL_RETAIN, LOCAL_RETAIN2) if name in registered)
        data["target"] = [f"dataset_dir={dataset_dir}", f"dataset={LOCAL_FORGET},{retain}"]
        data["retrain"] = [f"dataset_dir={dataset_dir}", f"dataset={retain}"]
    paths = {
        name: prepare_model(name, project_root() / config, [*data[name], *args.overrides])
        for name, config in PREPARE_CONFIGS.items()
    }
    for name, path in paths.items():
        print(f"{name}={path}")
    return paths


def retrain_auc_file(args: Any, tokenizer: Any) -> Path:
    """Where ``eval muse`` keeps the retrained model's PrivLeak AUC, which every evaluation against it needs
    and which depends on none of the evaluated model: ``<cache>/muse-auc-retrain/<key>.json``, keyed by the
    retrain model's bytes (a hub id by its name), the data, the cap, the batch size, the dtype, the tokenizer's
    vocabulary and the evaluator's code."""
    from unilogit.models import cache_dir, eval_dtype

    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    options = {"max_examples": args.max_examples, "batch_size": args.batch_size, "dtype": eval_dtype(args.dtype)}
    retrain = fingerprint(args.retrain, shallow=True)
    key = fingerprint(
        retrain, shipped(args.data), {**options, "vocab": vocab}, *evaluator_code(MUSE.evaluator, MUSE.module)
    )
    return cache_dir() / "muse-auc-retrain" / f"{key}.json"


def evaluate(argv: list[str]) -> dict[str, Any]:
    """``unilogit eval muse --model M [--retrain R] [--data D] ...``: MUSE metrics of one model. On a GPU the
    model goes to the GPU, or with device_map over several when one is too small."""
    from unilogit.evaluation.muse import (
        evaluate_muse,
        format_muse_table,
        load_muse,
        write_results,
    )
    from unilogit.evaluation.seeds import run_seed
    from unilogit.models import eval_dtype, load_for_eval, load_model

    parser = CommandParser(prog="unilogit eval muse", description=evaluate.__doc__)
    parser.add_argument("--model", required=True, help="alias, hub id, or a training output folder (full or LoRA)")
    parser.add_argument(
        "--retrain",
        help="the retrained model: PrivLeak's reference AUC and the KL to retrain (without it, local --data "
        "gets PrivLeak n/a; news and books use MUSE's published AUC)",
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="local MUSE folder, or news | books (the hub)")
    parser.add_argument("--max-examples", type=positive_int, help="cap every split at this many examples (quick runs)")
    parser.add_argument("--output", help=f"folder for {RESULTS_JSON} and {RESULTS_MD} (default: beside the model)")
    parser.add_argument("--name", help="the row name in the table (default: the model folder's name)")
    add_model_args(parser, batch_size=8)
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    args = parser.parse_args(argv)

    output = Path(args.output) if args.output else Path(args.model) / MUSE.eval_folder
    if not args.output and not Path(args.model).is_dir():
        raise ConfigError("--output: the model is not a local folder, so say where the results go")
    if (output / RESULTS_JSON).exists() and not args.overwrite:
        raise ConfigError(f"{output / RESULTS_JSON} exists; pass --overwrite or choose another --output")
    data = load_muse(shipped(args.data), limit=args.max_examples)
    model, tokenizer = load_for_eval(args.model, args.dtype, args.tokenizer)
    retrain = auc_file = retrain_auc = None
    if args.retrain:
        # Both models are scored with the model's tokenizer, so the retrained one needs none of its own.
        same = Path(args.retrain).resolve() == Path(args.model).resolve()
        retrain = model if same else load_model(args.retrain, args.dtype)
        auc_file = None if same else retrain_auc_file(args, tokenizer)
        if auc_file is not None and auc_file.is_file():
            retrain_auc = json.loads(auc_file.read_text())["auc_retrain"]
    metrics = evaluate_muse(
        model, tokenizer, data, retrain_model=retrain, retrain_auc=retrain_auc, batch_size=args.batch_size
    )
    if auc_file is not None and retrain_auc is None and metrics["auc_retrain"] is not None:
        atomic_write_text(auc_file, json.dumps({"retrain": args.retrain, "auc_retrain": metrics["auc_retrain"]}))
    name = args.name or Path(args.model).name
    record = {
        "name": name,
        "model": str(args.model),
        "seed": run_seed(args.model),  # the training seed of a folder trained here; None for a hub model
        "retrain": args.retrain,
        "data": str(args.data),
        "max_examples": args.max_examples,
        "tokenizer": args.tokenizer,
        "dtype": eval_dtype(args.dtype),
        **metrics,
    }
    write_results({name: record}, output / RESULTS_JSON, output / RESULTS_MD)
    print(format_muse_table({name: record}))
    return record


def table(argv: list[str]) -> dict[str, Any]:
    """``unilogit muse table RESULTS.json ... [--save OUT.json]``: merge results into one table."""
    from unilogit.evaluation.muse import format_muse_table, write_results

    return merge_tables(argv, "unilogit muse table", "`unilogit eval muse`", format_muse_table, write_results)


def export(argv: list[str]) -> Path:
    """``unilogit muse export news|books FOLDER``: download every split of a MUSE hub dataset once into a local
    MUSE-format folder (on a machine with network), for ``--data`` and ``muse datasets`` where there is none."""
    from unilogit.evaluation.muse import HUB_IDS, export_muse

    parser = CommandParser(prog="unilogit muse export", description=export.__doc__)
    parser.add_argument("corpus", choices=sorted(HUB_IDS), help="the MUSE hub dataset")
    parser.add_argument("folder", help="a new or empty folder for <config>/<split>.json")
    args = parser.parse_args(argv)
    out = export_muse(args.corpus, args.folder)
    print(out)
    return out


def main(argv: list[str]) -> None:
    """``unilogit muse prepare|datasets|export|table``."""
    commands = {"prepare": prepare, "datasets": datasets, "export": export, "table": table}
    if not argv or argv[0] not in commands:
        raise ConfigError(
            "usage: unilogit muse prepare [--data FOLDER] [key=value ...] | unilogit muse datasets FOLDER | "
            "unilogit muse export news|books FOLDER | unilogit muse table RESULTS.json ..."
        )
    commands[argv[0]](argv[1:])
    sys.stdout.flush()
