"""``unilogit report RUN_DIR``: forget and retain NLL of the initial and the unlearned model, as a table.

It reads the configuration the unlearn stage saved in ``RUN_DIR/unlearn_config.yaml``, tokenizes the
forget and retain sets exactly as training did (llamafactory's template and loader), evaluates the
initial model and the unlearned one, prints a table and writes ``RUN_DIR/report.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from unilogit.atomic import atomic_write_text
from unilogit.config import CONFIG_NAME
from unilogit.errors import ConfigError
from unilogit.evaluation.results import markdown_table

REPORT_NAME = "report.json"


def _tokenized_sets(config: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """{"forget": dataset, "retain": dataset} tokenized as in training."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args

    from unilogit.stage.args import split_unlearning_args
    from unilogit.stage.data import load_split
    from unilogit.stage.workflow import load_tokenizer_module

    keys = ("model_name_or_path", "template", "dataset_dir", "cutoff_len", "trust_remote_code")
    args = {k: config[k] for k in keys if k in config}
    args.update(stage="sft", dataset=config["dataset"], output_dir=output_dir, do_train=True, report_to="none")
    model_args, data_args, training_args, _, _ = get_train_args(args)
    unlearning_args = split_unlearning_args(dict(config))[0]
    tokenizer_module = load_tokenizer_module(model_args, unlearning_args.tokenizer_name_or_path)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    split_args = (template, model_args, data_args, training_args, tokenizer_module)
    sets = {"forget": load_split(data_args.dataset, "dataset", *split_args)["train_dataset"]}
    retain_names = unlearning_args.retain_datasets
    if retain_names:
        sets["retain"] = load_split(retain_names, "retain_dataset", *split_args)["train_dataset"]
    return sets


def _last_terms(run_dir: Path) -> dict[str, float]:
    log = run_dir / "trainer_log.jsonl"
    if not log.is_file():
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [row for row in rows if "loss" in row]
    return {k: v for k, v in steps[-1].items() if k in ("loss", "forget_loss", "retain_loss")} if steps else {}


def evaluate_run(run_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate ``run_dir`` against its initial model; print the table and write ``report.json``."""
    from unilogit.evaluation.likelihood import dataset_nll
    from unilogit.models import load_model

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise ConfigError(f"{config_path} is missing; report works on an output_dir written by `stage: unlearn`")
    if (run_dir / REPORT_NAME).exists() and not overwrite:
        raise ConfigError(f"{run_dir / REPORT_NAME} exists; pass --overwrite to replace it")
    config = yaml.safe_load(config_path.read_text())

    with tempfile.TemporaryDirectory() as scratch:
        sets = _tokenized_sets(config, scratch)
    base = load_model(config["model_name_or_path"])
    rows: dict[str, dict[str, float]] = {}
    for name, dataset in sets.items():
        rows[name] = {"initial": dataset_nll(base, dataset, desc=f"{name} NLL, initial model")}
    del base
    unlearned = load_model(str(run_dir))  # full output, or LoRA adapter merged onto its base
    for name, dataset in sets.items():
        rows[name]["unlearned"] = dataset_nll(unlearned, dataset, desc=f"{name} NLL, unlearned model")

    report = {
        "run_dir": str(run_dir),
        "unlearn_method": config.get("unlearn_method", "unilogit"),
        "nll": rows,
        "last_step": _last_terms(run_dir),
    }
    atomic_write_text(run_dir / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    """A Markdown table: answer NLL on each set before and after unlearning, and the last logged terms."""
    meaning = {"forget": "higher = forgotten", "retain": "lower = kept"}
    rows = [
        [
            f"{name} NLL ({meaning[name]})",
            f"{v['initial']:.4f}",
            f"{v['unlearned']:.4f}",
            f"{v['unlearned'] - v['initial']:+.4f}",
        ]
        for name, v in report["nll"].items()
    ]
    rows += [[f"{key} (last step)", "", f"{value:.4f}", ""] for key, value in report["last_step"].items()]
    table = markdown_table(["metric", "initial", "unlearned", "change"], rows, right={1, 2, 3})
    return f"unlearning report: {report['unlearn_method']} ({report['run_dir']})\n\n{table.rstrip()}"
