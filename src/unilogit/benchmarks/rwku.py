"""The RWKU benchmark commands: ``unilogit eval rwku``, ``unilogit rwku run`` and ``unilogit rwku table``.

``eval rwku`` scores one model on each chosen target (the original model's row is the "before" of every
table). ``rwku run`` is the paper's target-wise loop: for each target it starts again from the original
model, unlearns that target's forget corpus with a YAML config, and evaluates; ``--batch`` unlearns all
chosen targets at once instead (RWKU's batch-target setting). Both average the metrics over targets.
``rwku key`` prints the cache key of an ``eval rwku`` (the drivers keep the original model's evaluation by it).

A run folder holds ``<n>_<target>/`` per target (its corpus, ``data/``, the model, ``model/``, and its
metrics) and ``rwku_results.json`` / ``.md`` with every target and the average; nothing in it is ever
overwritten.
"""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unilogit.benchmarks.commands import CommandParser, add_model_args, merge_tables, positive_int
from unilogit.benchmarks.registry import RWKU
from unilogit.config import load_config
from unilogit.errors import ConfigError
from unilogit.fingerprint import evaluator_code, fingerprint
from unilogit.launch import needs_torchrun, train
from unilogit.paths import shipped

# The default data and the results files are the descriptor's, which the sweeps and the web UI read too.
DEFAULT_DATA, RESULTS_JSON, RESULTS_MD = RWKU.default_data, RWKU.results_json, RWKU.results_md
# The forget corpus of each target: the text the model itself wrote about it. RWKU's own (Llama-3-8B-Instruct's)
# on the hub and in folders laid out like it; the embedded model's where a folder holds that one.
DEFAULT_CORPUS = "train_positive_llama3"
MINI_CORPUS = "train_positive_smollm2"
# General text the model wrote itself, about no target: the retain set of methods with a retain term.
MINI_RETAIN = "train_retain_smollm2"


def _slug(number: int, target: str) -> str:
    return f"{number}_" + re.sub(r"[^A-Za-z0-9.-]+", "_", target).strip("_")


def _add_data_args(parser: CommandParser) -> None:
    from unilogit.evaluation.rwku import DEFAULT_STOP, STOP_RULES

    parser.add_argument("--data", default=DEFAULT_DATA, help="local RWKU folder, or rwku (jinzhuoran/RWKU on the hub)")
    parser.add_argument("--targets", help="1-based target numbers, e.g. 1-8, 3 or 1-3,7 (default: all)")
    parser.add_argument("--max-examples", type=positive_int, help="cap every evaluation set (quick runs)")
    add_model_args(parser, batch_size=16)
    parser.add_argument("--fluency-tokens", type=positive_int, default=256, help="fluency response length (RWKU: 256)")
    parser.add_argument("--no-utility", action="store_true", help="skip MMLU, TruthfulQA, TriviaQA and fluency")
    parser.add_argument(
        "--stop",
        default=DEFAULT_STOP,
        choices=STOP_RULES,
        help="how probe answers end and are scored: rwku (default, as RWKU's code: up to 30 tokens or the end of "
        "turn, the whole answer, the rouge package) or newline (the first line, rouge_score)",
    )


def _chosen_targets(data: str, spec: str | None) -> list[tuple[int, str]]:
    from unilogit.evaluation.rwku import parse_target_range, rwku_targets

    names = rwku_targets(data)
    if not names:
        raise ConfigError(f"{data} has no targets in forget_target")
    return [(n, names[n - 1]) for n in parse_target_range(spec, len(names))]


def _refuse_existing(path: Path, hint: str) -> None:
    if path.exists():
        raise ConfigError(f"{path} exists; {hint} (results are never overwritten)")


def _evaluate(model_path: str, data: str, groups: list[list[str]], args: Any) -> dict[str, dict]:
    """Metrics of one saved model on each group of targets, by target. Utility does not depend on the target,
    so it is scored once per distinct set of utility data (once for the mini benchmark's shared sets)."""
    from unilogit.evaluation.rwku import evaluate_rwku, load_rwku, utility_key, utility_metrics
    from unilogit.models import load_for_eval

    model, tokenizer = load_for_eval(model_path, args.dtype, args.tokenizer)
    scored: dict[str, dict] = {}
    per_target: dict[str, dict] = {}
    for targets in groups:
        print(f"[rwku] evaluating {model_path} on {', '.join(targets)}", file=sys.stderr)
        sets = load_rwku(data, targets, limit=args.max_examples)
        metrics = evaluate_rwku(model, tokenizer, sets, args.batch_size, utility=False, stop=args.stop)
        if not args.no_utility:
            key = utility_key(sets)
            if key not in scored:
                scored[key] = utility_metrics(model, tokenizer, sets, args.batch_size, args.fluency_tokens)
            metrics.update(scored[key])
        per_target.update(dict.fromkeys(targets, metrics))
    return per_target


def _summary(name: str, per_target: dict[str, dict], extra: dict[str, Any]) -> dict[str, Any]:
    from unilogit.evaluation.rwku import average_over_targets

    return {name: {**average_over_targets(per_target), **extra, "per_target": per_target}}


def _write(results: dict[str, Any], out: Path, note: str) -> None:
    from unilogit.evaluation.rwku import format_rwku_table, write_rwku_results

    write_rwku_results(results, out / RESULTS_JSON, out / RESULTS_MD, note=note)
    print(format_rwku_table(results))


def evaluate(argv: list[str]) -> dict[str, Any]:
    """``unilogit eval rwku --model M [--data D] [--targets 1-8] ...``: RWKU metrics of one model per target."""
    from unilogit.models import eval_dtype

    parser = CommandParser(prog="unilogit eval rwku", description=evaluate.__doc__)
    parser.add_argument("--model", required=True, help="alias, hub id, or a training output folder (full or LoRA)")
    parser.add_argument("--output", help=f"folder for {RESULTS_JSON} and {RESULTS_MD} (default: beside the model)")
    parser.add_argument("--name", help="the row name (default: the model folder's name)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    _add_data_args(parser)
    args = parser.parse_args(argv)
    if not args.output and not Path(args.model).is_dir():
        raise ConfigError("--output: the model is not a local folder, so say where the results go")
    out = Path(args.output) if args.output else Path(args.model) / RWKU.eval_folder
    if not args.overwrite:
        _refuse_existing(out / RESULTS_JSON, "pass --overwrite or choose another --output")
    data = shipped(args.data)
    chosen = _chosen_targets(data, args.targets)
    per_target = _evaluate(args.model, data, [[target] for _, target in chosen], args)
    name = args.name or Path(args.model).name
    extra = {"model": args.model, "data": args.data, "targets": args.targets, "tokenizer": args.tokenizer,
             "dtype": eval_dtype(args.dtype), "stop": args.stop}  # fmt: skip
    results = _summary(name, per_target, extra)
    _write(results, out, f"`unilogit eval rwku --model {args.model} --data {args.data}`")
    return results


def _train(
    config: str, model: str, corpus: list[dict], retain: list[dict] | None, folder: Path, overrides: list[str]
) -> Path:
    """Unlearn ``corpus`` from ``model`` with ``config``, in this process (in a fresh one under torchrun or
    DeepSpeed). ``retain`` records, when given, become its retain set: chats where they carry a ``prompt``,
    else raw text."""
    from unilogit.atomic import atomic_write_text

    data_dir = folder / "data"
    sets = {"rwku_forget": ("forget.json", corpus), "rwku_retain": ("retain.json", retain)}
    info = {}
    for name, (file_name, records) in sets.items():
        if records is not None:
            atomic_write_text(data_dir / file_name, json.dumps(records, ensure_ascii=False, indent=1) + "\n")
            chat = all("prompt" in r for r in records)
            info[name] = {"file_name": file_name, "columns": {"prompt": "prompt", "response": "text"} if chat
                          else {"prompt": "text"}}  # fmt: skip
    atomic_write_text(data_dir / "dataset_info.json", json.dumps(info, indent=1) + "\n")
    output = folder / "model"
    argv = [
        config, f"model_name_or_path={model}", f"dataset_dir={data_dir}", "dataset=rwku_forget",
        f"output_dir={output}", *overrides, *(["retain_dataset=rwku_retain"] if retain is not None else []),
    ]  # fmt: skip

    if not needs_torchrun() and "deepspeed" not in load_config(argv):
        # One process for every target: a fresh interpreter would import torch, transformers and llamafactory
        # again (~12 s of CPU per target). Errors surface as their own one-line messages.
        train(argv)
        gc.collect()
        return output
    done = subprocess.run([sys.executable, "-m", "unilogit.cli", "train", *argv], check=False)
    if done.returncode != 0:
        raise ConfigError(f"unlearning failed for {folder.name} (exit code {done.returncode}); see the log above")
    return output


def _default_corpus(data: str) -> str:
    return MINI_CORPUS if Path(data, MINI_CORPUS).is_dir() else DEFAULT_CORPUS


def _retain_texts(args: Any, data: str) -> list[dict] | None:
    """The retain records (``text``, and ``prompt`` for chats) when the config's (overridden) ``retain_loss``
    needs them: nll or kl, or left unset (the method's default) while ``--retain-corpus`` names a set; else None,
    as RWKU runs (it has no retain set)."""
    from unilogit.evaluation.rwku import load_rwku_config

    retain_loss = load_config([args.config, *args.overrides]).get("retain_loss")
    if retain_loss == "none" or (retain_loss is None and not args.retain_corpus):
        return None
    name = args.retain_corpus or (MINI_RETAIN if Path(data, MINI_RETAIN).is_dir() else None)
    if name is None:
        raise ConfigError(
            f"retain_loss={retain_loss} needs a retain set and {args.data} has none (RWKU has none): pass "
            "--retain-corpus or retain_loss=none"
        )
    return [{k: r[k] for k in ("prompt", "text") if k in r} for r in load_rwku_config(data, name)]


def run(argv: list[str]) -> dict[str, Any]:
    """``unilogit rwku run CONFIG.yaml --model M [--targets 1-8] [--batch] [key=value ...]``: the target-wise loop."""
    from unilogit.atomic import atomic_write_text
    from unilogit.evaluation.rwku import load_rwku_config
    from unilogit.models import eval_dtype

    parser = CommandParser(prog="unilogit rwku run", description=run.__doc__)
    parser.add_argument("config", help="an unlearn YAML (its dataset and output_dir are set per target)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the original model every target starts from")
    parser.add_argument("--output", required=True, help="the run folder (must not exist)")
    parser.add_argument("--name", help="the row name (default: the config's file name)")
    parser.add_argument("--corpus", help=f"the forget corpus config (default: {MINI_CORPUS} in a folder that "
                        f"holds it, else {DEFAULT_CORPUS}, RWKU's)")  # fmt: skip
    parser.add_argument(
        "--retain-corpus",
        help="a train_* config of general text (no target in it): the retain set, for a config whose retain_loss "
        f"is not none (default: {MINI_RETAIN} in a folder that holds it; RWKU has none)",
    )
    parser.add_argument("--batch", action="store_true", help="unlearn all chosen targets at once (batch-target)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    _add_data_args(parser)
    args = parser.parse_intermixed_args(argv)
    if not Path(args.config).is_file():
        raise ConfigError(f"config {args.config} does not exist")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ConfigError(f"{bad[0]!r} is not key=value; put options before the config's overrides")
    out = Path(args.output)
    _refuse_existing(out, "choose another --output")
    data = shipped(args.data)
    retain = _retain_texts(args, data)  # first: a config that needs a retain set fails before any download
    chosen = _chosen_targets(data, args.targets)
    corpus_name = args.corpus or _default_corpus(data)
    corpus = load_rwku_config(data, corpus_name)
    groups = [chosen] if args.batch else [[pair] for pair in chosen]
    per_target: dict[str, dict] = {}
    for group in groups:
        names = [target for _, target in group]
        texts = [{"text": r["text"]} for r in corpus if r["subject"] in names]
        if not texts:
            raise ConfigError(f"{corpus_name} has no text about {', '.join(names)}; pick another --corpus")
        folder = out / (_slug(*group[0]) if len(group) == 1 else f"batch_{group[0][0]}-{group[-1][0]}")
        print(f"[rwku] {folder.name}: unlearning {len(texts)} texts from {args.model}", file=sys.stderr)
        # The trained folder then carries the named tokenizer, which its evaluation loads.
        tokenizer = [f"tokenizer_name_or_path={args.tokenizer}"] if args.tokenizer else []
        model = _train(args.config, args.model, texts, retain, folder, [*tokenizer, *args.overrides])
        mine = _evaluate(str(model), data, [[name] for name in names], args)
        atomic_write_text(folder / "metrics.json", json.dumps(mine, indent=1) + "\n")
        per_target.update(mine)
    name = args.name or Path(args.config).stem
    extra = {"config": args.config, "model": args.model, "data": args.data, "targets": args.targets,
             "batch": args.batch, "overrides": args.overrides, "tokenizer": args.tokenizer,
             "dtype": eval_dtype(args.dtype), "stop": args.stop}  # fmt: skip
    results = _summary(name, per_target, extra)
    _write(results, out, f"`unilogit rwku run {args.config} --data {args.data}` ({'batch' if args.batch else 'single'}"
           "-target)")  # fmt: skip
    return results


def eval_key(args: Any, code: Sequence[Path] | None = None) -> str:
    """The cache key of an ``eval rwku`` with the parsed ``args``: the bytes of the evaluator's ``code`` (default:
    :func:`~unilogit.fingerprint.evaluator_code` of RWKU: the evaluator, what it imports, models.py and this
    module), of the data (a local folder; the hub's name), of the model and the tokenizer (a local folder's
    top-level files, else the alias or hub id), and every option that changes a number: the batch size, the stop
    rule, the dtype this machine loads in, the targets, the caps, the fluency length, utility."""
    from unilogit.models import eval_dtype

    options = {"batch_size": args.batch_size, "stop": args.stop, "dtype": eval_dtype(args.dtype),
               "targets": args.targets, "max_examples": args.max_examples, "fluency_tokens": args.fluency_tokens,
               "utility": not args.no_utility}  # fmt: skip
    files = evaluator_code(RWKU.evaluator, RWKU.module) if code is None else code
    models = [fingerprint(name, shallow=True) for name in (args.model, args.tokenizer)]
    return fingerprint(*files, shipped(args.data), *models, options)


def key_parser() -> CommandParser:
    """The options of ``unilogit rwku key``: the model and ``eval rwku``'s data and model options."""
    parser = CommandParser(prog="unilogit rwku key", description=key.__doc__)
    parser.add_argument("--model", required=True, help="alias, hub id, or a model folder")
    _add_data_args(parser)
    return parser


def key(argv: list[str]) -> str:
    """``unilogit rwku key --model M [eval rwku's options]``: print the cache key of that evaluation
    (:func:`eval_key`), which changes whenever its result could."""
    digest = eval_key(key_parser().parse_args(argv))
    print(digest)
    return digest


def table(argv: list[str]) -> dict[str, Any]:
    """``unilogit rwku table RESULTS.json ... [--save OUT.json]``: merge RWKU results into one table."""
    from unilogit.evaluation.rwku import format_rwku_table, write_rwku_results

    produced_by = "`unilogit eval rwku` or `unilogit rwku run`"
    return merge_tables(argv, "unilogit rwku table", produced_by, format_rwku_table, write_rwku_results)


def export(argv: list[str]) -> Path:
    """``unilogit rwku export FOLDER``: download RWKU's evaluation sets and forget corpora once into a local
    folder (on a machine with network), for ``--data`` where there is none."""
    from unilogit.evaluation.rwku import export_rwku

    parser = CommandParser(prog="unilogit rwku export", description=export.__doc__)
    parser.add_argument("folder", help="a new or empty folder for <config>/<split>.json")
    args = parser.parse_args(argv)
    out = export_rwku(args.folder)
    print(out)
    return out


def main(argv: list[str]) -> None:
    """``unilogit rwku run|export|table|key``."""
    commands = {"run": run, "export": export, "table": table, "key": key}
    if not argv or argv[0] not in commands:
        raise ConfigError(
            "usage: unilogit rwku run CONFIG.yaml --output DIR ... | unilogit rwku export FOLDER | "
            "unilogit rwku table RESULTS.json ... | unilogit rwku key --model M ..."
        )
    commands[argv[0]](argv[1:])
    sys.stdout.flush()
