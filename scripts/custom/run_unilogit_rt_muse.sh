#!/usr/bin/env bash
# The main job: build a target model that knows the forget set, unlearn it with Unilogit (LoRA, the
# adapter-disabled model as the zero-copy reference, KL retain term), and print a metrics table.
#
# Until the MUSE benchmark lands this runs on the example forget/retain sets in data/ with the
# embedded SmolLM2-135M-Instruct; it needs no GPU and no network (about 5 minutes on 2 CPU cores).
#   bash scripts/custom/run_unilogit_rt_muse.sh                      # a new run under saves/main/
#   RUN_DIR=saves/mine bash scripts/custom/run_unilogit_rt_muse.sh   # pick the folder (must not exist)
# Extra key=value arguments go to the unlearning step, e.g. learning_rate=5e-4 bf16=true.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh

RUN_DIR="${RUN_DIR:-saves/main/$(date +%Y%m%d-%H%M%S)}"
if [[ -e "$RUN_DIR" ]]; then
  echo "run_unilogit_rt_muse.sh: error: $RUN_DIR exists; choose another RUN_DIR (results are never overwritten)" >&2
  exit 2
fi
CLI=.venv/bin/unilogit
export TOKENIZERS_PARALLELISM=false

echo "[main] 1/3 target model: SmolLM2-135M-Instruct fine-tuned on forget + retain -> $RUN_DIR/target" >&2
"$CLI" train examples/target/smollm2_sft_full.yaml output_dir="$RUN_DIR/target"

echo "[main] 2/3 unlearning with Unilogit (LoRA) -> $RUN_DIR/unilogit" >&2
"$CLI" train examples/unlearn/unilogit_lora.yaml model_name_or_path="$RUN_DIR/target" \
  output_dir="$RUN_DIR/unilogit" "$@"

echo "[main] 3/3 evaluating the target and the unlearned model" >&2
"$CLI" report "$RUN_DIR/unilogit"
