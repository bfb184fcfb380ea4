#!/usr/bin/env bash
# The GPU check of issue 15, for a machine with an NVIDIA GPU (CI never runs it; it refuses with one line
# and exit code 2 where no GPU is visible). On one GPU (the first visible one):
#   1. bf16 training steps of the embedded SmolLM2-135M-Instruct under DeepSpeed ZeRO-3
#      (examples/deepspeed/ds_z3_config.json), through torchrun with one process: llamafactory's SFT and
#      each unlearning method on the same examples as benchmarks/step_time.py (its configs, reused);
#      median step time, tokens per second and peak GPU memory (torch.cuda.max_memory_allocated), and
#      each method's step time and memory relative to SFT;
#   2. `unilogit eval muse --data data/muse_mini` of the same model on the GPU (--dtype auto: bf16),
#      with its throughput in examples per second (the whole command: load, scoring and generation).
# Prints the table and writes it to docs/results/gpu-check.md (OUT=... to change), naming the card.
# Usage: bash scripts/gpu_check.sh        env: STEPS=5 (timed) WARMUP=2 RUNS="sft ga npo simnpo undial unilogit"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
gpu="${CUDA_VISIBLE_DEVICES:-0}"
gpu="${gpu%%,*}"  # one GPU: the first visible one
card="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i "$gpu" 2>/dev/null || true)"
if [[ -z "$card" ]]; then
  echo "gpu_check.sh: error: no GPU is visible (nvidia-smi lists none); run it on a machine with an NVIDIA GPU" >&2
  exit 2
fi
bash scripts/setup_env.sh
PY=.venv/bin/python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: error: nvidia-smi sees $card but torch $("$PY" -c 'import torch; print(torch.__version__)')" \
    "cannot use it; recreate .venv on this machine (rm -rf .venv; bash scripts/setup_env.sh)" >&2
  exit 2
fi
export CUDA_VISIBLE_DEVICES="$gpu" TOKENIZERS_PARALLELISM=false
STEPS="${STEPS:-5}" WARMUP="${WARMUP:-2}" RUNS="${RUNS:-sft ga npo simnpo undial unilogit}"
OUT="${OUT:-docs/results/gpu-check.md}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/probe.py" <<'EOF'
"""One run of the GPU check in this process (a torchrun worker), or the report of all of them."""
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT / "benchmarks"))


def step(run: str, steps: int, warmup: int, out: str, result: str) -> None:
    import torch
    from step_time import _config  # the CPU benchmark's configs: same model, examples and batch
    from transformers import TrainerCallback

    from unilogit._compat import install_torchaudio_stub

    install_torchaudio_stub()
    from llamafactory.train.tuner import run_exp

    from unilogit.launch import deepspeed_session, resolve_config
    from unilogit.stage.entry import run_unlearn_from_config

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.times, self.peaks, self.tokens = [], [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)
            self.peaks.append(torch.cuda.max_memory_allocated() / 2**20)
            self.tokens = state.num_input_tokens_seen / state.global_step

    config = _config(out, "full", run, warmup + steps)
    del config["use_cpu"]
    config.update(bf16=True, deepspeed=str(ROOT / "examples/deepspeed/ds_z3_config.json"))
    config = resolve_config(config)
    probe = Probe()
    with deepspeed_session(config):  # what `unilogit train` does around a DeepSpeed run
        if run == "sft":
            run_exp(config, callbacks=[probe])
        else:
            run_unlearn_from_config(config, callbacks=[probe])
    seconds = statistics.median(probe.times[warmup:])
    row = {"run": run, "step_s": seconds, "tokens_per_s": probe.tokens / seconds, "peak_mib": max(probe.peaks[warmup:])}
    Path(result).write_text(json.dumps(row))


def report(card: str, results: str, eval_s: float, examples: int, out: str) -> None:
    import torch

    rows = sorted((json.loads(p.read_text()) for p in Path(results).glob("*.json")), key=lambda r: r["run"] != "sft")
    sft = next((r for r in rows if r["run"] == "sft"), None)
    name, memory, driver = (part.strip() for part in card.split(","))
    lines = [
        "# GPU check", "",
        f"`bash scripts/gpu_check.sh` on **{name}** ({memory}, driver {driver}), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}.", "",
        "Training: the embedded SmolLM2-135M-Instruct, full fine-tuning in bf16 under DeepSpeed ZeRO-3 "
        "(`examples/deepspeed/ds_z3_config.json`) on one GPU, through torchrun with one process; the examples "
        "and batch of `benchmarks/step_time.py` (4 forget + 4 retain examples, cutoff 256; SFT sees the same 8 "
        "in one batch). Median of the timed steps after the warm-up ones; peak memory is "
        "`torch.cuda.max_memory_allocated` during a step.", "",
        "| run | step (s) | tokens/s | peak GPU memory (MiB) | step vs SFT | memory vs SFT |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        vs = (f"{r['step_s'] / sft['step_s']:.2f}×", f"{r['peak_mib'] / sft['peak_mib']:.2f}×") if sft else ("", "")
        numbers = f"{r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_mib']:.0f}"
        lines.append(f"| {r['run']} | {numbers} | {vs[0]} | {vs[1]} |")
    lines += [
        "", f"Evaluation: `unilogit eval muse --model smollm2-135m-instruct --data data/muse_mini` on the GPU "
        f"(bf16, batch size 8): {examples} examples in {eval_s:.1f} s, {examples / eval_s:.1f} examples/s "
        "(the whole command, model load included).",
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)


if __name__ == "__main__":
    if sys.argv[1] == "step":
        step(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
    else:
        report(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
EOF

mkdir -p "$work/results"
for run in $RUNS; do
  echo "[gpu_check] $run: $WARMUP + $STEPS steps under ZeRO-3, bf16" >&2
  "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port "$(shuf -i 20000-60000 -n 1)" \
    "$work/probe.py" step "$run" "$STEPS" "$WARMUP" "$work/out-$run" "$work/results/$run.json" \
    > "$work/$run.log" 2>&1 || { tail -n 30 "$work/$run.log" >&2; echo "gpu_check.sh: error: $run failed" >&2; exit 1; }
done

echo "[gpu_check] evaluation on the GPU: unilogit eval muse --data data/muse_mini" >&2
examples="$("$PY" -c "import json; print(sum(len(json.load(open(f'data/muse_mini/{s}.json'))) for s in (
  'verbmem/forget', 'knowmem/forget_qa', 'knowmem/retain_qa', 'privleak/forget', 'privleak/retain',
  'privleak/holdout')))")"  # the evaluated splits (not the in-context examples)
start="$EPOCHREALTIME"
.venv/bin/unilogit eval muse --model smollm2-135m-instruct --data data/muse_mini --dtype auto \
  --output "$work/eval" > "$work/eval.log" 2>&1 || { tail -n 30 "$work/eval.log" >&2; exit 1; }
eval_s="$("$PY" -c "print($EPOCHREALTIME - $start)")"
"$PY" "$work/probe.py" report "$card" "$work/results" "$eval_s" "$examples" "$OUT"
echo "[gpu_check] wrote $OUT" >&2
