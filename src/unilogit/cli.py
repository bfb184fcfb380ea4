"""The ``unilogit`` command: a superset of ``llamafactory-cli``.

``unilogit train x.yaml [key=value ...]`` runs the unlearn workflow when ``stage: unlearn`` and hands
every other stage to llamafactory. Like llamafactory, it relaunches itself under torchrun when
``FORCE_TORCHRUN`` is set or more than one accelerator is visible; with ``deepspeed:`` and no GPU, DeepSpeed
runs on its CPU accelerator over gloo. Commands it doesn't own (chat, export, api, webchat, env) go to
llamafactory's launcher unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unilogit.stage.args import ConfigError, TrainingDiverged, TrainingInterrupted

USAGE = """usage: unilogit <command> [args]

commands:
  train CONFIG.yaml [key=value ...]   train; `stage: unlearn` runs unlearning, other stages go to llamafactory
  report OUTPUT_DIR [--overwrite]     forget/retain NLL of an unlearn run vs its initial model, as a table
  sweep SWEEP.yaml [--jobs N] [--quick] hyperparameter sweep, resumable, N points at once; writes sweep.csv/.md
  report SWEEP_DIR                    Pareto plots, KL figure and best point per method of a sweep (has sweep.json)
  eval muse --model M [--retrain R]   MUSE metrics (VerbMem, KnowMem, PrivLeak, KL to retrain); --help for more
  muse prepare [--data FOLDER] [key=value ...]
                                      train (or reuse from the cache) the MUSE target and retrain models
  muse datasets FOLDER                register a local MUSE folder's raw/forget and raw/retain1 for unlearning
  muse table RESULTS.json ...         merge `eval muse` results into one table
  eval rwku --model M [--targets 1-8] RWKU metrics per target (forget/neighbor probes, MIA, utility); --help
  rwku run CONFIG.yaml --output DIR   RWKU's target-wise loop: unlearn each target from the original model, evaluate
  rwku table RESULTS.json ...         merge `eval rwku` / `rwku run` results into one table
  webui                               LLaMA Board with the Unlearning stage (GRADIO_SERVER_PORT sets the port)
  version                             print the unilogit and llamafactory versions
  help                                show this message
  chat | export | api | webchat | env | eval CONFIG.yaml
                                      llamafactory's commands, unchanged

Set UNILOGIT_DEBUG=1 to see full tracebacks for configuration errors.
"""

DELEGATED = ("chat", "export", "api", "webchat", "env", "eval")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unilogit`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "help"
    try:
        if command in ("help", "-h", "--help"):
            print(USAGE)
        elif command in ("version", "--version"):
            print(_version())
        elif command == "train":
            train(argv)
        elif command == "sweep":
            from unilogit.sweep.runner import main as sweep_main

            _install_stub()
            return sweep_main(argv)
        elif command == "report" and argv and (Path(argv[0]) / "sweep.json").is_file():
            from unilogit.sweep.report import main as sweep_report

            sweep_report(argv)
        elif command == "report":
            _report(argv)
        elif command == "eval" and argv[:1] == ["muse"]:
            from unilogit.benchmarks.muse import evaluate

            _install_stub()
            evaluate(argv[1:])
        elif command == "muse":
            from unilogit.benchmarks.muse import main as muse_main

            _install_stub()
            muse_main(argv)
        elif command == "eval" and argv[:1] == ["rwku"]:
            from unilogit.benchmarks.rwku import evaluate as evaluate_rwku

            _install_stub()
            evaluate_rwku(argv[1:])
        elif command == "rwku":
            from unilogit.benchmarks.rwku import main as rwku_main

            _install_stub()
            rwku_main(argv)
        elif command == "webui":
            from unilogit.webui import run_web_ui

            run_web_ui()
        elif command in DELEGATED:
            _delegate(command, argv)
        else:
            raise ConfigError(f"unknown command {command!r}; run `unilogit help` for the list")
    except (ConfigError, TrainingDiverged) as err:
        if os.environ.get("UNILOGIT_DEBUG") == "1":
            raise
        print(f"unilogit: error: {err}", file=sys.stderr)
        # 2: the input was refused before anything ran; 1: the run started and failed.
        return 2 if isinstance(err, ConfigError) else 1
    except TrainingInterrupted as err:
        print(f"unilogit: stopped: {err}", file=sys.stderr)
        return 128 + err.signum  # the shell's code for death by that signal, after a clean save
    return 0


def _install_stub() -> None:
    from unilogit._compat import install_torchaudio_stub

    install_torchaudio_stub()


def _report(argv: list[str]) -> None:
    overwrite = "--overwrite" in argv
    paths = [a for a in argv if a != "--overwrite"]
    if len(paths) != 1:
        raise ConfigError("report needs one run folder: unilogit report OUTPUT_DIR [--overwrite]")
    _install_stub()
    from unilogit.evaluation.report import evaluate_run

    evaluate_run(paths[0], overwrite=overwrite)


def _version() -> str:
    from importlib.metadata import version

    return f"unilogit {version('unilogit')} (llamafactory {version('llamafactory')})"


def _delegate(command: str, argv: list[str]) -> None:
    _install_stub()
    from llamafactory import launcher

    sys.argv = ["llamafactory-cli", command, *argv]
    launcher.launch()


OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=", re.ASCII)


def load_config(argv: list[str]) -> dict[str, Any]:
    """Read ``CONFIG.yaml [key=value ...]`` into a dict, as llamafactory's ``read_args`` does."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    from unilogit.stage.args import show

    if not argv or not argv[0].endswith((".yaml", ".yml", ".json")):
        raise ConfigError("train needs a config file: unilogit train CONFIG.yaml [key=value ...]")
    path = Path(argv[0])
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path")
    try:
        config = OmegaConf.load(path)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or _first_line(err)
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}; fix the file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except OSError as err:  # OmegaConf's "Invalid loaded object type" for a file that is one scalar
        if "Invalid loaded object type" not in str(err):
            raise ConfigError(f"{path} cannot be read: {_first_line(err)}") from None
        config = None
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{path}: {_first_line(err)}; fix the file") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path}: the config must be a mapping of key: value")
    for item in argv[1:]:
        if not OVERRIDE.match(item):
            raise ConfigError(f"bad override {show(item)}: write key=value (key a name, e.g. learning_rate=1e-5)")
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(config, OmegaConf.from_dotlist(argv[1:])))
    except (OmegaConfBaseException, YAMLError, ValueError, LookupError, TypeError) as err:
        raise ConfigError(f"bad override {show(argv[1:])}: {_first_line(err)}; write key=value") from None
    return merged


def _check_keys(config: dict[str, Any]) -> None:
    """One-line error for an unknown key, with the nearest valid one."""
    from dataclasses import fields

    from llamafactory.hparams.parser import _TRAIN_ARGS

    from unilogit.stage.args import UNLEARNING_KEYS, nearest_key, show

    if os.environ.get("ALLOW_EXTRA_ARGS", "0").lower() in ("1", "true", "y"):
        return
    valid = [f.name for cls in _TRAIN_ARGS for f in fields(cls) if f.init] + list(UNLEARNING_KEYS)
    for key in config:
        if key not in valid:
            hint = nearest_key(key, valid)
            fix = f"did you mean {hint!r}?" if hint else "remove it (see `unilogit train --help` for the keys)"
            raise ConfigError(f"unknown config key {show(key)}; {fix}")


def _check_deepspeed(config: dict[str, Any]) -> None:
    """DeepSpeed needs its package; with no GPU visible it runs on its CPU accelerator over gloo, and the
    settings that need a GPU are refused here, before anything loads."""
    import importlib.util

    from llamafactory.extras.misc import get_device_count

    if not config.get("deepspeed"):
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "deepspeed: the deepspeed package is not installed; run bash scripts/setup_env.sh (or pip install "
            "deepspeed), or remove deepspeed: to train without it"
        )
    if get_device_count() > 0:
        return
    backend = config.get("ddp_backend")
    if backend not in (None, "gloo"):
        raise ConfigError(
            f"ddp_backend: {backend} needs a GPU and none is visible; DeepSpeed on the CPU runs over gloo, "
            "so remove ddp_backend (or set it to gloo)"
        )
    if config.get("fp16") and not _cpu_has_fp16():
        raise ConfigError("fp16: this CPU has no fp16 kernels for DeepSpeed to train with; use bf16: true or neither")
    if config.get("quantization_bit") is not None:
        raise ConfigError(
            "quantization_bit: quantized training needs a GPU and none is visible; remove quantization_bit"
        )


def _cpu_has_fp16() -> bool:
    """DeepSpeed's own test on its CPU accelerator (``is_fp16_supported``): oneDNN's fp16 kernels."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


@contextmanager
def _deepspeed_session(config: dict[str, Any]) -> Iterator[None]:
    """What a run with ``deepspeed:`` needs around it; nothing without it.

    DeepSpeed compiles its ops on first use (setup_env.sh installs it with none built); they go to the
    virtual environment's ``torch_extensions`` folder, not the per-user cache, where two environments would
    rebuild each other's, or race. With no GPU: DeepSpeed's process group over gloo, started before the model
    loads and ended (with the environment it set) when the run ends or fails. ZeRO-3's ``zero.Init``
    partitions the weights as they load and must see the world size then; left to itself, accelerate would
    start the group later, and with nccl. One process not launched by torchrun gets the environment of a
    torchrun worker of one.
    """
    from datetime import timedelta

    from llamafactory.extras.misc import find_available_port, get_device_count

    if not config.get("deepspeed"):
        yield
        return
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    if get_device_count() > 0:
        yield
        return
    import deepspeed
    import torch.distributed as dist

    worker = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    added = {} if "LOCAL_RANK" in os.environ else {k: v for k, v in worker.items() if k not in os.environ}
    if added and "MASTER_PORT" not in os.environ:
        added["MASTER_PORT"] = str(find_available_port())
    os.environ.update(added)
    try:
        deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=int(config.get("ddp_timeout", 1800))))
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for key in added:
            del os.environ[key]


def needs_torchrun() -> bool:
    """Whether ``train`` must relaunch itself under torchrun (FORCE_TORCHRUN, or several accelerators)."""
    from llamafactory.extras.misc import get_device_count, is_env_enabled, use_kt, use_ray

    if "LOCAL_RANK" in os.environ:  # already a torchrun worker
        return False
    return is_env_enabled("FORCE_TORCHRUN") or (get_device_count() > 1 and not use_ray() and not use_kt())


def _relaunch_under_torchrun(argv: list[str]) -> None:
    """Re-exec this CLI under torchrun with llamafactory's environment variables (NNODES, ...)."""
    from llamafactory.extras.misc import find_available_port, get_device_count

    nproc = os.getenv("NPROC_PER_NODE", str(max(get_device_count(), 1)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", os.getenv("NNODES", "1"),
        "--node_rank", os.getenv("NODE_RANK", "0"),
        "--nproc_per_node", nproc,
        "--master_addr", os.getenv("MASTER_ADDR", "127.0.0.1"),
        "--master_port", os.getenv("MASTER_PORT", str(find_available_port())),
        __file__, "train", *argv,
    ]  # fmt: skip
    print(f"[unilogit] launching {nproc} processes per node with torchrun", file=sys.stderr)
    sys.exit(subprocess.run(cmd, env=os.environ.copy()).returncode)


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with a model alias resolved to its folder (a missing local path is refused) and
    ``use_cpu`` (and, under DeepSpeed, ``ddp_backend: gloo``) set on a machine without an accelerator, as
    ``unilogit train`` runs it."""
    from llamafactory.extras.misc import get_device_count

    from unilogit.models import resolve_model

    config = dict(config)
    if isinstance(config.get("model_name_or_path"), str):  # anything else is refused by the type check
        config["model_name_or_path"] = resolve_model(config["model_name_or_path"])
    if get_device_count() == 0:
        if "use_cpu" not in config:
            # transformers refuses bf16 without an accelerator unless use_cpu is set; a laptop should just run.
            config["use_cpu"] = True
        if config.get("deepspeed") and "ddp_backend" not in config:
            config["ddp_backend"] = "gloo"  # DeepSpeed's CPU accelerator talks over gloo (nccl needs GPUs)
    return config


def train(argv: list[str]) -> None:
    """``unilogit train CONFIG.yaml [key=value ...]``."""
    _install_stub()
    if argv and argv[0] in ("-h", "--help"):
        from llamafactory.hparams import get_train_args

        get_train_args(["--help"])
        return
    config = load_config(argv)
    _check_keys(config)
    _check_deepspeed(config)  # before torchrun, so that a refusal is one line and not one per worker
    if needs_torchrun():
        _relaunch_under_torchrun(argv)

    config = resolve_config(config)
    with _deepspeed_session(config):
        if config.get("stage", "sft") != "unlearn":
            from llamafactory.train.tuner import run_exp

            run_exp(config)
        else:
            run_unlearn_from_config(config)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def parse_unlearn_config(config: dict[str, Any]) -> tuple[Any, ...]:
    """Everything ``unilogit train`` checks in a resolved unlearn config before it loads a tokenizer, data
    or a model: keys, our arguments, the types of llamafactory's, DeepSpeed, llamafactory's own checks,
    the forget set and the output folder.

    Returns ``(unlearning_args, model_args, data_args, training_args, finetuning_args, generating_args)``;
    raises ``ConfigError`` (one line) for anything wrong. Reads files (the output folder) but writes none.
    """
    from llamafactory.hparams import get_train_args
    from llamafactory.hparams.parser import _TRAIN_ARGS

    from unilogit.stage.args import check_field_types, show, split_unlearning_args
    from unilogit.stage.callbacks import RESULT_NAMES

    _check_keys(config)
    unlearning_args, rest = split_unlearning_args(dict(config))
    # `stage` is ours to dispatch on ("unlearn" is not among llamafactory's stages).
    rest = check_field_types(rest, _TRAIN_ARGS, skip=("stage",))
    _check_deepspeed(rest)
    special_tokens = rest.get("new_special_tokens_config")
    if special_tokens and not Path(special_tokens).is_file():  # llamafactory fails on its own logger there
        raise ConfigError(
            f"new_special_tokens_config: {show(special_tokens)} does not exist; give a YAML file of special tokens"
        )
    try:
        model_args, data_args, training_args, finetuning_args, generating_args = get_train_args(rest)
    except ValueError as err:
        raise ConfigError(_first_line(err)) from err
    except ImportError as err:  # a package an option needs (check_version(..., mandatory=True))
        named = re.search(r"'([^']+)' distribution", str(err))
        package = named.group(1) if named else _first_line(err)
        raise ConfigError(
            f"a package this config needs is not installed: {package}; install it, or turn off the option that needs it"
        ) from err
    except OSError as err:  # a file named by a key (fsdp_config, ...) that is not there
        raise ConfigError(f"{_first_line(err)}; check the file paths in the config") from err
    except (TypeError, AssertionError, KeyError, AttributeError) as err:
        raise ConfigError(f"llamafactory refused the config: {type(err).__name__}: {_first_line(err)}") from err
    if not data_args.dataset:
        raise ConfigError("dataset: the unlearn stage needs a forget set; set dataset: <name in dataset_info.json>")
    if not (training_args.do_train or training_args.do_eval):
        raise ConfigError("do_train: nothing to do; set do_train: true (or do_eval: true with an eval set)")
    output_dir = Path(training_args.output_dir)
    # llamafactory refuses a folder holding weights and resumes one holding checkpoints; one holding only
    # logs or metrics of an earlier run would be silently mixed with this one's.
    held = [name for name in RESULT_NAMES if (output_dir / name).exists()]
    fresh = training_args.resume_from_checkpoint is None and not training_args.overwrite_output_dir
    if training_args.do_train and held and fresh:
        raise ConfigError(
            f"output_dir: {output_dir} already holds results ({held[0]}); set overwrite_output_dir: true "
            "or choose another output_dir"
        )
    return unlearning_args, model_args, data_args, training_args, finetuning_args, generating_args


def run_unlearn_from_config(config: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """Parse a resolved config dict (:func:`parse_unlearn_config`) and run the unlearn stage (used by
    ``train`` and the tests).

    ``callbacks`` are extra ``TrainerCallback``s, added after the logging and reporting ones.
    """
    import torch.distributed as dist
    from llamafactory.train.callbacks import ReporterCallback

    from unilogit.stage.callbacks import RunRecordCallback, UnlearningLogCallback
    from unilogit.stage.workflow import run_unlearn

    unlearning_args, model_args, data_args, training_args, finetuning_args, generating_args = parse_unlearn_config(
        config
    )
    callbacks = [
        RunRecordCallback(config),
        UnlearningLogCallback(),
        ReporterCallback(model_args, data_args, finetuning_args, generating_args),
        *(callbacks or []),
    ]
    try:
        run_unlearn(model_args, data_args, training_args, finetuning_args, unlearning_args, callbacks)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # the torchrun worker entry
    sys.exit(main())
