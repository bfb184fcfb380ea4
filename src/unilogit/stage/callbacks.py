"""Callbacks of the unlearn stage."""

from __future__ import annotations

import json
import signal
import threading
from collections import deque
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from llamafactory.extras import logging
from llamafactory.train.callbacks import LogCallback
from transformers import TrainerCallback

from unilogit.atomic import atomic_write_text
from unilogit.config import CONFIG_NAME
from unilogit.stage.trainer import logged_terms

RUN_INFO_NAME = "run_info.json"
# Files of a finished or started run: a new run in the same folder needs overwrite_output_dir.
RESULT_NAMES = (CONFIG_NAME, RUN_INFO_NAME, "trainer_log.jsonl", "all_results.json", "train_results.json")
# Under llamafactory's logger, whose handler writes LLaMA Board's running_log.txt.
logger = logging.get_logger("llamafactory.train.unlearn")
PACKAGES = ("unilogit", "llamafactory", "transformers", "torch", "peft", "accelerate", "datasets")


class UnlearningLogCallback(LogCallback):
    """llamafactory's ``trainer_log.jsonl`` writer, with each unlearning term added to its lines.

    ``LogCallback.on_log`` builds its line from a fixed key list and hands it to a writer thread (one
    worker, so lines are written in order), so each log's terms are queued here, one entry per line
    handed over, and merged in when the writer runs. One step may log twice (its losses, then
    ``soft_target_kl`` at the end of an epoch); each line gets its own terms.
    """

    def __init__(self) -> None:
        super().__init__()
        self._terms: deque[dict[str, float]] = deque()

    def on_log(self, args, state, control, **kwargs):
        last = state.log_history[-1]
        terms = {k: last[k] for k in logged_terms() if k in last}
        if args.should_save and self.thread_pool is not None:  # the lines LogCallback.on_log hands to its writer
            self._terms.append(terms)
        # LLaMA Board shows LogCallback's line, whose keys are fixed; ours puts the terms beside the loss.
        webui_mode, self.webui_mode = self.webui_mode, False
        try:
            super().on_log(args, state, control, **kwargs)
        finally:
            self.webui_mode = webui_mode
        if webui_mode and args.should_save and all(key in last for key in ("loss", "learning_rate", "epoch")):
            shown = [f"'{k}': {v:.4f}" for k, v in {"loss": last["loss"], **terms}.items()]
            shown += [f"'learning_rate': {last['learning_rate']:2.4e}", f"'epoch': {last['epoch']:.2f}"]
            logger.info_rank0("{" + ", ".join(shown) + "}")

    def _write_log(self, output_dir: str, logs: dict[str, Any]) -> None:
        super()._write_log(output_dir, {**logs, **(self._terms.popleft() if self._terms else {})})


class RunRecordCallback(TrainerCallback):
    """Records how the run was made when training begins, after every input check has passed.

    ``CONFIG_NAME``: the resolved configuration (``unilogit report`` evaluates the run from it).
    ``RUN_INFO_NAME``: the seeds, the package versions and the git commit of the code, so that any
    number in the folder can be traced to how it was made.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        output_dir = Path(args.output_dir)
        atomic_write_text(output_dir / CONFIG_NAME, yaml.safe_dump(self.config, sort_keys=False))
        info = {
            "seed": args.seed,
            "data_seed": args.data_seed,
            "versions": {name: _version(name) for name in PACKAGES},
            "git_commit": git_commit(Path(__file__).parent),
        }
        atomic_write_text(output_dir / RUN_INFO_NAME, json.dumps(info, indent=2) + "\n")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_commit(start: Path) -> str | None:
    """The commit checked out in the git repository holding ``start``, read from ``.git``; None outside one.

    Read from the files, not by running git, which may not be installed where the run happens.
    """
    git = next((folder / ".git" for folder in (start, *start.parents) if (folder / ".git").is_dir()), None)
    if git is None:
        return None
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head  # a detached HEAD holds the commit itself
    ref = head.removeprefix("ref: ")
    if (git / ref).is_file():
        return (git / ref).read_text().strip()
    packed = git / "packed-refs"
    lines = packed.read_text().splitlines() if packed.is_file() else []
    return next((line.split()[0] for line in lines if line.endswith(f" {ref}")), None)


class StopOnSignal(TrainerCallback):
    """SIGINT or SIGTERM during training: finish the current step, save a resumable checkpoint, stop.

    The handler only records the signal; the trainer saves (weights, optimizer, scheduler, RNG state)
    at the end of the step it was in, so the checkpoint is a consistent one to resume from.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def on_train_begin(self, args, state, control, **kwargs):
        # Handlers can only be set from the main thread (a web UI runs training in a worker thread).
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._record) for sig in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
