"""Step time of every unlearning method on the embedded 135M model, relative to plain SFT, in one run.

Every configuration trains the same model on the same forget batches (per-device batch 4, full
fine-tuning, fp32 unless --bf16) for ``--warmup`` + ``--steps`` optimizer steps; the warm-up steps are
not timed. Each method uses its default retain term on the example retain set, so its step also
processes a retain batch (and a reference forward where the terms need one); SFT trains on the
forget batch alone. Prints seconds per step and the ratio to SFT measured in this same process.

    .venv/bin/python benchmarks/step_time.py [--steps 3] [--warmup 1] [--lora] [--bf16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from unilogit._compat import install_torchaudio_stub

install_torchaudio_stub()

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward and update of the whole window)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def _config(output_dir: str, steps: int, lora: bool, bf16: bool, **extra) -> dict:
    from unilogit.models import resolve_model

    config = {
        "model_name_or_path": resolve_model("smollm2-135m-instruct"),
        "template": "smollm2",
        "do_train": True,
        "dataset": "example_forget",
        "dataset_dir": str(ROOT / "data"),
        "cutoff_len": 256,
        "output_dir": output_dir,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-5,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "bf16": bf16,
        "finetuning_type": "lora" if lora else "full",
        **extra,
    }
    if lora:
        config.update(lora_rank=8, lora_alpha=16, lora_target="all")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--lora", action="store_true", help="LoRA r=8 instead of full fine-tuning")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    opts = parser.parse_args()

    from llamafactory.train.tuner import run_exp

    from unilogit.cli import run_unlearn_from_config
    from unilogit.stage.methods import METHODS

    total = opts.warmup + opts.steps
    rows: list[tuple[str, float]] = []
    runs = [("sft", {"stage": "sft"})] + [
        (name, {"stage": "unlearn", "unlearn_method": name, "retain_dataset": "example_retain"}) for name in METHODS
    ]
    for name, extra in runs:
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as out:
            config = _config(out, total, opts.lora, opts.bf16, **extra)
            if name == "sft":
                run_exp(config, callbacks=[timer])
            else:
                run_unlearn_from_config(config, callbacks=[timer])
        rows.append((name, statistics.median(timer.times[opts.warmup :])))

    sft = rows[0][1]
    mode = f"{'LoRA r=8' if opts.lora else 'full'}, {'bf16' if opts.bf16 else 'fp32'}"
    print(f"\nstep time on SmolLM2-135M-Instruct ({mode}, batch 4, median of {opts.steps} steps)")
    print("| run | retain term | s/step | vs SFT |\n|---|---|---:|---:|")
    for name, seconds in rows:
        retain = "—" if name == "sft" else METHODS[name].default_retain_loss
        print(f"| {name} | {retain} | {seconds:.2f} | {seconds / sft:.2f}× |")


if __name__ == "__main__":
    main()
