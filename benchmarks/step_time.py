"""Step time and peak memory of every unlearning method against SFT on the same tokens, and the loss kernels alone.

Part 1, training steps. Every configuration trains the embedded SmolLM2-135M-Instruct (fp32, per-device
batch 4) for ``--warmup`` untimed and ``--steps`` timed optimizer steps, with full fine-tuning and with
LoRA (r=8, all linear layers). The forget and retain sets are cut to their first 4 examples, so every
step sees the same 4 forget and 4 retain examples. Each method uses its default retain term (NLL, or
KL for Unilogit) and runs the reference forward its terms need; the floor is llamafactory's own SFT on
the same 8 examples in one batch. Each configuration runs in a fresh process, so that its peak memory
is its own. Reported per configuration: the median step time, tokens per second (non-padding tokens
of the step over its time), the peak resident memory of the process during the timed steps (VmHWM,
reset at the start of every step through /proc/self/clear_refs: weights, optimizer state, activations,
logits and the Python/torch runtime), and the step time relative to SFT of the same mode.

Part 2, loss kernels. Each loss of ``unilogit.losses`` (chunked) and ``unilogit.losses_reference``
(straightforward) computes value and gradient on the same fp32 logits [B, T, V] (prompt positions
masked) at V = 49,152 (SmolLM2) and V = 128,256 (Llama 3), each implementation in a fresh process:
median time of forward + backward, the peak resident memory above the process's resident memory just
before (the inputs are already allocated, the gradient of the logits counts), and the largest relative
difference of the lean loss from the straightforward formulas evaluated exactly (in float64):
|Δ value| / |value| or max |Δ grad| / max |grad|, whichever is larger. Times and peak come from two
processes: the times with glibc's default allocator, the peak with its mmap threshold fixed at 128 KiB
(``MALLOC_MMAP_THRESHOLD_``), so that a freed tensor's memory goes back to the system and the resident
memory follows the live tensors. With the default, sliding threshold, freed chunk-sized temporaries stay
in the heap and the lean losses' peak moved by ±50 MiB from run to run; the straightforward losses'
tensors are above any threshold, so their peak is the same either way. A fixed threshold costs the lean
losses time (every chunk's temporaries are mapped afresh), hence the two processes.

    .venv/bin/python benchmarks/step_time.py [--steps 3] [--warmup 1] [--clock wall|cpu] [--output PATH]
    .venv/bin/python benchmarks/step_time.py --kernels-only --overwrite [--clock wall|cpu] [--output PATH]

``--kernels-only`` measures only part 2 and replaces only the ``loss_kernels`` section of an existing
JSON and the loss-kernel section of its Markdown twin (which then names the command and date that
measured it); the training-step results stay as they are.

``--clock cpu`` times by the process's CPU time (all threads) instead of the wall clock: on a machine
shared with other work the wall clock measures the neighbours' load, which changes between
configurations. It writes the JSON (default ``docs/results/benchmark.json``) and a Markdown twin
beside it after every measurement, and refuses to replace an earlier result without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("sft", "ga", "npo", "simnpo", "undial", "unilogit")
MODES = ("full", "lora")
KERNELS = ("nll", "npo", "simnpo", "undial", "unilogit", "kl_retain")
VOCABS = (49_152, 128_256)
KERNEL_SHAPE = (2, 256)  # batch, sequence
KERNEL_PROMPT = 64  # masked positions at the start of every row
KERNEL_REPEATS = 3
KERNEL_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # see the module docstring
KERNELS_HEADING = "## Loss kernels"


# --------------------------------------------------------------------------------------------------
# Resident memory from /proc (Linux)
# --------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; this benchmark measures memory on Linux only")
    return int(match.group(1)) / 1024


def reset_peak() -> None:
    """Reset the process's peak resident memory (VmHWM) to its current resident memory."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak`, in MiB."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """Current resident memory, in MiB."""
    return _status_mb("VmRSS")


# --------------------------------------------------------------------------------------------------
# Part 1: one training configuration (run in its own process)
# --------------------------------------------------------------------------------------------------


def _probe_class() -> type:
    from transformers import TrainerCallback

    class StepProbe(TrainerCallback):
        """Wall time and peak resident memory of each optimizer step."""

        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.peaks: list[float] = []
            self.starts: list[float] = []
            self.tokens_per_step = 0.0
            self._t0 = (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            reset_peak()
            self.starts.append(rss_mb())
            self._t0 = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.wall.append(time.perf_counter() - self._t0[0])
            self.cpu.append(time.process_time() - self._t0[1])
            self.peaks.append(peak_mb())
            self.tokens_per_step = state.num_input_tokens_seen / state.global_step

    return StepProbe


def _config(output_dir: str, mode: str, run: str, steps: int) -> dict[str, Any]:
    from unilogit.models import resolve_model

    config: dict[str, Any] = {
        "model_name_or_path": resolve_model("smollm2-135m-instruct"),
        "template": "smollm2",
        "do_train": True,
        "dataset_dir": str(ROOT / "data"),
        "max_samples": 4,
        "cutoff_len": 256,
        "output_dir": output_dir,
        "learning_rate": 1e-5,
        "max_steps": steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
        "use_cpu": True,
        "include_num_input_tokens_seen": "non_padding",
        "finetuning_type": mode,
    }
    if mode == "lora":
        config.update(lora_rank=8, lora_alpha=16, lora_target="all")
    if run == "sft":  # the same 4 + 4 examples in one batch
        config.update(stage="sft", dataset="example_forget,example_retain", per_device_train_batch_size=8)
    else:
        config.update(
            stage="unlearn",
            unlearn_method=run,
            dataset="example_forget",
            retain_dataset="example_retain",
            per_device_train_batch_size=4,
        )
    return config


def measure_step(mode: str, run: str, steps: int, warmup: int) -> dict[str, float]:
    """Train one configuration; return its median step time, tokens per step and peak memory."""
    from unilogit._compat import install_torchaudio_stub

    install_torchaudio_stub()
    from llamafactory.train.tuner import run_exp

    from unilogit.stage.entry import run_unlearn_from_config

    probe = _probe_class()()
    with tempfile.TemporaryDirectory() as out:
        config = _config(out, mode, run, warmup + steps)
        if run == "sft":
            run_exp(config, callbacks=[probe])
        else:
            run_unlearn_from_config(config, callbacks=[probe])
    return {
        "wall_s": statistics.median(probe.wall[warmup:]),
        "cpu_s": statistics.median(probe.cpu[warmup:]),
        "tokens_per_step": probe.tokens_per_step,
        "peak_mb": max(probe.peaks[warmup:]),
        "start_mb": statistics.median(probe.starts[warmup:]),
    }


# --------------------------------------------------------------------------------------------------
# Part 2: one loss kernel (run in its own process)
# --------------------------------------------------------------------------------------------------


def _kernel_inputs(vocab: int) -> tuple:
    import torch

    g = torch.Generator().manual_seed(0)
    bsz, seq = KERNEL_SHAPE
    logits = torch.randn(bsz, seq, vocab, generator=g) * 2
    ref = logits + torch.randn(bsz, seq, vocab, generator=g) * 0.5
    labels = torch.randint(0, vocab, (bsz, seq), generator=g)
    labels[:, :KERNEL_PROMPT] = -100
    return logits, ref, labels


def _kernel_call(module: Any, name: str, z: Any, ref: Any, labels: Any) -> Any:
    calls = {
        "nll": lambda: module.nll_loss(z, labels),
        "npo": lambda: module.npo_loss(z, ref, labels, beta=0.1),
        "simnpo": lambda: module.simnpo_loss(z, labels, beta=4.5),
        "undial": lambda: module.undial_loss(z, ref, labels, gamma=10.0),
        "unilogit": lambda: module.unilogit_forget_loss(z, labels),
        "kl_retain": lambda: module.kl_retain_loss(z, ref, labels),
    }
    return calls[name]()


def _value_and_grad(module: Any, name: str, logits: Any, ref: Any, labels: Any) -> tuple:
    import torch

    z = logits.detach().requires_grad_(True)
    value = _kernel_call(module, name, z, ref, labels)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach(), grad


def measure_kernel(name: str, vocab: int, impl: str, part: str) -> dict[str, float]:
    """One implementation's times (``part="time"``; the naive run also compares against the lean one) or its
    peak memory (``part="memory"``, in a process started with :data:`KERNEL_MEMORY_ENV`)."""
    from unilogit import losses, losses_reference

    module = losses if impl == "lean" else losses_reference
    logits, ref, labels = _kernel_inputs(vocab)
    _value_and_grad(module, name, logits, ref, labels)  # warm-up: lazy initialisation, thread pools
    if part == "memory":
        base = rss_mb()
        reset_peak()
        for _ in range(KERNEL_REPEATS):
            _value_and_grad(module, name, logits, ref, labels)
        return {"peak_mb": peak_mb() - base}
    wall, cpu = [], []
    for _ in range(KERNEL_REPEATS):
        start = (time.perf_counter(), time.process_time())
        _value_and_grad(module, name, logits, ref, labels)
        wall.append(time.perf_counter() - start[0])
        cpu.append(time.process_time() - start[1])
    result = {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}
    if impl == "naive":  # after the measurements: the exact values, the straightforward formulas in float64
        value, grad = _value_and_grad(module, name, logits.double(), ref.double(), labels)
        lean_value, lean_grad = _value_and_grad(losses, name, logits, ref, labels)
        value_diff = abs(float(lean_value - value)) / max(abs(float(value)), 1e-30)
        grad_diff = float((lean_grad - grad).abs().max()) / max(float(grad.abs().max()), 1e-30)
        result["max_rel_diff"] = max(value_diff, grad_diff)
    return result


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _child(args: list[str], timeout: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run this script in a fresh process for one measurement; its last stdout line is the JSON result."""
    result = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return match.group(1).strip() if match else "an unknown CPU"


def _summarize(raw: dict[str, Any], clock: str) -> dict[str, Any]:
    """The results in the issue's shape, from what has been measured so far."""
    key = f"{clock}_s"
    results: dict[str, Any] = {mode: {} for mode in MODES}
    for mode in MODES:
        sft = raw["steps"][mode].get("sft")
        for run, row in raw["steps"][mode].items():
            results[mode][run] = {
                "step_s": row[key],
                "tokens_per_s": row["tokens_per_step"] / row[key],
                "peak_mb": row["peak_mb"],
                "ratio_to_sft": row[key] / sft[key] if sft else None,
            }
    results["loss_kernels"] = {
        name: {
            "lean_peak_mb": pair["lean"]["peak_mb"],
            "naive_peak_mb": pair["naive"]["peak_mb"],
            "lean_s": pair["lean"][key],
            "naive_s": pair["naive"][key],
            "max_rel_diff": pair["naive"]["max_rel_diff"],
        }
        for name, pair in raw["kernels"].items()
        if "lean" in pair and "naive" in pair
    }
    return results


def _ratio(value: float | None, unit: str = "×") -> str:
    return "—" if value is None else f"{value:.2f}{unit}"


def _clock(opts: argparse.Namespace) -> str:
    if opts.clock == "cpu":
        return "CPU seconds of the process (all threads), because other work shared the cores"
    return "wall-clock seconds"


def _provenance(raw: dict[str, Any]) -> str:
    return f"{raw['date']} on {raw['machine']} ({raw['cpus']} CPU cores shared with other work), torch {raw['torch']}"


def _markdown(results: dict[str, Any], raw: dict[str, Any], command: str, opts: argparse.Namespace) -> str:
    lines = [
        "# Benchmark: unlearning step cost and loss kernels",
        "",
        f"Command: `{command}`",
        "",
        f"Measured {_provenance(raw)}, fp32. Times are {_clock(opts)}; tokens/s are tokens per such second. "
        "Ratios are within this one run.",
        "",
        f"## Training step: SmolLM2-135M-Instruct, forget batch 4 + retain batch 4, median of {opts.steps} steps "
        f"after {opts.warmup} warm-up",
        "",
        "`peak MB` is the peak resident memory of the training process during a step (weights, optimizer state, "
        "activations, logits and the Python/torch runtime); `step Δ` is that peak minus the resident memory at "
        "the start of the step; `wall s` is the median wall-clock step time, for reference. SFT trains on the "
        "same 8 examples in one batch. A row marked — was not measured in this run.",
    ]
    for mode in MODES:
        sft = results[mode].get("sft")
        lines += [
            "",
            f"### {'Full fine-tuning' if mode == 'full' else 'LoRA r=8'}",
            "",
            "| run | retain term | s/step | tokens/s | vs SFT | peak MB | vs SFT | step Δ MB | wall s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for run in RUNS:
            retain = "—" if run == "sft" else ("kl" if run == "unilogit" else "nll")
            row, extra = results[mode].get(run), raw["steps"][mode].get(run)
            if row is None:
                lines.append(f"| {run} | {retain} | — | — | — | — | — | — | — |")
                continue
            memory = row["peak_mb"] / sft["peak_mb"] if sft else None
            lines.append(
                f"| {run} | {retain} | {row['step_s']:.2f} | {row['tokens_per_s']:.1f} | {_ratio(row['ratio_to_sft'])} "
                f"| {row['peak_mb']:.0f} | {_ratio(memory)} | {extra['peak_mb'] - extra['start_mb']:.0f} "
                f"| {extra['wall_s']:.2f} |"
            )
    return "\n".join(lines) + "\n\n" + _kernels_markdown(results, raw, command, opts, own_command=False)


def _kernels_markdown(
    results: dict[str, Any], raw: dict[str, Any], command: str, opts: argparse.Namespace, own_command: bool
) -> str:
    """The loss-kernel section; ``own_command`` names the command and date when it was measured on its own."""
    bsz, seq = KERNEL_SHAPE
    lines = [
        f"{KERNELS_HEADING}: fp32 logits [{bsz}, {seq}, V], the first {KERNEL_PROMPT} positions of each row masked, "
        f"value + gradient, median of {KERNEL_REPEATS}",
        "",
    ]
    if own_command:
        lines += [
            f"Measured separately from the training steps above: `{command}`, {_provenance(raw)}. "
            f"Times are {_clock(opts)}.",
            "",
        ]
    lines += [
        "Peak MB: resident memory above the process's just before the call (the gradient of the logits counts), "
        "measured in a process of its own with glibc's mmap threshold fixed "
        f"(`{' '.join(f'{k}={v}' for k, v in KERNEL_MEMORY_ENV.items())}`), so that freed tensors leave the resident "
        "memory; the times come from a process with the default allocator, under which a lean loss's peak varies "
        "by ±50 MiB from run to run. "
        "max_rel_diff: the lean loss on fp32 logits against the straightforward formulas in float64, "
        "|Δ value| / |value| or max |Δ grad| / max |grad|, the larger.",
        "",
        "| loss @ V | lean s | naive s | lean peak MB | naive peak MB | lean / naive peak | max_rel_diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in results["loss_kernels"].items():
        lines.append(
            f"| {key} | {row['lean_s']:.3f} | {row['naive_s']:.3f} | {row['lean_peak_mb']:.0f} "
            f"| {row['naive_peak_mb']:.0f} | {row['lean_peak_mb'] / row['naive_peak_mb']:.2f} "
            f"| {row['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every measurement in its own process; rewrite the JSON and Markdown results after each one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time steps and kernels by wall clock, or by the process's CPU time (for a machine shared with "
        "other work, where wall time measures the neighbours)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs/results/benchmark.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    parser.add_argument(
        "--kernels-only",
        action="store_true",
        help="measure only the loss kernels and replace only their section of an existing JSON and Markdown",
    )
    parser.add_argument("--step", nargs=2, metavar=("MODE", "RUN"), help=argparse.SUPPRESS)
    parser.add_argument("--kernel", nargs=4, metavar=("LOSS", "VOCAB", "IMPL", "PART"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.step:
        print(json.dumps(measure_step(*opts.step, opts.steps, opts.warmup)))
        return
    if opts.kernel:
        name, vocab, impl, part = opts.kernel
        print(json.dumps(measure_kernel(name, int(vocab), impl, part)))
        return

    markdown_path = opts.output.with_suffix(".md")
    for path in (opts.output, markdown_path):
        if path.exists() and not opts.overwrite:
            sys.exit(f"step_time.py: error: {path} exists; pass --overwrite to replace it")
        if opts.kernels_only and not path.exists():
            sys.exit(f"step_time.py: error: --kernels-only updates an existing result, and {path} does not exist")
    if opts.kernels_only:
        earlier = json.loads(opts.output.read_text())
        steps_markdown = markdown_path.read_text().split(f"\n{KERNELS_HEADING}", 1)[0]
    import torch
    from tqdm import tqdm

    from unilogit.atomic import atomic_write_text

    raw: dict[str, Any] = {
        "steps": {mode: {} for mode in MODES},
        "kernels": {},
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _cpu_name(),
        "cpus": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
    }
    # The kernels first (minutes), then LoRA, then full fine-tuning; the files are rewritten after every
    # measurement, so an interrupted run still leaves what it measured.
    jobs: list[tuple[str, ...]] = [
        ("kernel", name, str(vocab), impl) for vocab in VOCABS for name in KERNELS for impl in ("lean", "naive")
    ]
    if not opts.kernels_only:
        jobs += [("step", mode, run) for mode in reversed(MODES) for run in RUNS]
    step_args = ["--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    threads = [f"{name}={os.environ[name]}" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if name in os.environ]
    command = " ".join([*threads, ".venv/bin/python", "benchmarks/step_time.py", *sys.argv[1:]])
    for job in tqdm(jobs, desc="benchmark", unit="run"):
        if job[0] == "step":
            raw["steps"][job[1]][job[2]] = _child(["--step", job[1], job[2], *step_args], timeout=3600)
        else:
            times = _child(["--kernel", *job[1:], "time"], 1800)
            memory = _child(["--kernel", *job[1:], "memory"], 1800, KERNEL_MEMORY_ENV)
            raw["kernels"].setdefault(f"{job[1]}@{job[2]}", {})[job[3]] = {**times, **memory}
        results = _summarize(raw, opts.clock)
        if opts.kernels_only:
            results = {**earlier, "loss_kernels": results["loss_kernels"]}
            markdown = steps_markdown + "\n" + _kernels_markdown(results, raw, command, opts, own_command=True)
        else:
            markdown = _markdown(results, raw, command, opts)
        atomic_write_text(opts.output, json.dumps(results, indent=2) + "\n")
        atomic_write_text(markdown_path, markdown)
    print(markdown_path.read_text())


if __name__ == "__main__":
    main()
