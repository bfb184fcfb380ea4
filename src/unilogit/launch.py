"""``unilogit train``: read and check the config, relaunch under torchrun when llamafactory would, resolve the
model and the device, and run the stage (``unlearn`` here, any other in llamafactory) inside what DeepSpeed needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unilogit._compat import install_torchaudio_stub
from unilogit.config import check_adapters, check_deepspeed, check_keys, load_config
from unilogit.stage.args import unlearning_keys
from unilogit.stage.entry import run_unlearn_from_config


@contextmanager
def deepspeed_session(config: dict[str, Any]) -> Iterator[None]:
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


def relaunch_under_torchrun(argv: list[str]) -> None:
    """Re-exec ``python -m unilogit.cli train`` under torchrun, with llamafactory's variables (NNODES, ...)."""
    from llamafactory.extras.misc import find_available_port, get_device_count

    nproc = os.getenv("NPROC_PER_NODE", str(max(get_device_count(), 1)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", os.getenv("NNODES", "1"),
        "--node_rank", os.getenv("NODE_RANK", "0"),
        "--nproc_per_node", nproc,
        "--master_addr", os.getenv("MASTER_ADDR", "127.0.0.1"),
        "--master_port", os.getenv("MASTER_PORT", str(find_available_port())),
        "-m", "unilogit.cli", "train", *argv,
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
    """``unilogit train CONFIG.yaml [key=value ...]``, or its help with ``-h``/``--help``."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(train_help())
        return
    install_torchaudio_stub()
    config = load_config(argv)
    check_keys(config, unlearning_keys())
    # Before torchrun, so that a refusal is one line and not one per worker.
    check_deepspeed(config)
    check_adapters(config)
    if needs_torchrun():
        relaunch_under_torchrun(argv)

    config = resolve_config(config)
    with deepspeed_session(config):
        if config.get("stage", "sft") != "unlearn":
            from llamafactory.train.tuner import run_exp

            run_exp(config)
        else:
            run_unlearn_from_config(config)


def train_help() -> str:
    """``unilogit train --help``: the unlearning keys with their help and default, then where llamafactory's own
    keys are listed (its ``--help`` runs to some 1,500 lines)."""
    import textwrap

    from unilogit.stage.args import unlearning_key_help

    rows = unlearning_key_help()
    width = max(len(key) for key, _ in rows) + 4
    table = "\n".join(
        textwrap.fill(text, 110, initial_indent=f"  {key:<{width - 2}}", subsequent_indent=" " * width)
        for key, text in rows
    )
    text = (
        "usage: unilogit train CONFIG.yaml [key=value ...]\n\n"
        "Trains as llamafactory-cli train does: a YAML config, with key=value overrides. With stage: unlearn it\n"
        "runs unlearning; any other stage goes to llamafactory.\n\n"
        f"Unlearning keys (stage: unlearn):\n{table}\n\n"
        "llamafactory's own keys (model, data, training, ...): llamafactory-cli train --help\n"
    )
    return text.replace("`", "")
