# Shared steps of the RWKU drivers (sourced by run_*_rwku.sh; not run directly).
#
# Environment variables (all optional):
#   RWKU_DATA      mini (default: the embedded data/rwku_mini) | hub (jinzhuoran/RWKU) | a local RWKU folder
#   TARGETS        1-based target range, e.g. 1-8, 3 or 1-3,7 (default: every target; RWKU's paper: 1-100)
#   MODEL          the original model (default: the embedded smollm2-135m-instruct; RWKU: Llama-3-8B-Instruct)
#   BATCH          1: the batch-target setting, all TARGETS unlearned at once (default 0: one at a time)
#   CORPUS         the forget corpus config (default: train_positive_smollm2 for mini, train_positive_llama3 on the hub)
#   NGPUS          >1: run unlearning under torchrun with NGPUS processes (llamafactory's FORCE_TORCHRUN)
#   DEEPSPEED      0 (default) | z3 (or 1) | z3_offload | z2: DeepSpeed with examples/deepspeed/ds_<value>_config.json
#   REF_OFFLOAD    1: full fine-tuning without DeepSpeed keeps the frozen reference model on the CPU between uses
#   BF16           false (default) | true: bf16 mixed precision (GPUs, or CPUs with avx512_bf16)
#   MAX_EXAMPLES   cap every evaluation set (quick runs)
#   RUN_DIR        the run folder (default saves/rwku/<method>-<data>-<time>; never reused)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RWKU_DATA="${RWKU_DATA:-mini}"
MODEL="${MODEL:-smollm2-135m-instruct}"
case "$RWKU_DATA" in
  mini) EVAL_DATA=data/rwku_mini ;;
  hub)  EVAL_DATA=rwku ;;
  *)    [[ -d "$RWKU_DATA" ]] || { echo "rwku: error: RWKU_DATA=$RWKU_DATA; use mini, hub or a local RWKU folder" >&2; exit 2; }
        EVAL_DATA="$RWKU_DATA" ;;
esac
DATA_ARGS=(--data "$EVAL_DATA")
[[ -n "${TARGETS:-}" ]] && DATA_ARGS+=(--targets "$TARGETS")
[[ -n "${MAX_EXAMPLES:-}" ]] && DATA_ARGS+=(--max-examples "$MAX_EXAMPLES")
RUN_ARGS=(--model "$MODEL")
[[ "${BATCH:-0}" == 1 ]] && RUN_ARGS+=(--batch)
[[ -n "${CORPUS:-}" ]] && RUN_ARGS+=(--corpus "$CORPUS")
TRAIN_ARGS=(bf16="$BF16")
add_scale_switches rwku

# Cached "before" evaluations are keyed by the evaluator's code, the local data's bytes, the model and the
# target range, so a changed evaluator or regenerated data is evaluated afresh instead of read from a stale cache.
EVAL_KEY="$( { cat src/unilogit/evaluation/rwku.py src/unilogit/evaluation/common.py
  [[ -d "$EVAL_DATA" ]] && find "$EVAL_DATA" -type f | sort | xargs cat
  echo "$MODEL ${TARGETS:-all} ${MAX_EXAMPLES:-}"; } | sha256sum | cut -c1-12)"

# Evaluates the original model on the chosen targets unless cached; prints its results file.
rwku_before() {
  local dir="saves/rwku/evals/before-$RWKU_DATA-$EVAL_KEY"
  if [[ ! -f "$dir/rwku_results.json" ]]; then
    "$CLI" eval rwku --model "$MODEL" --name before --output "$dir" "${DATA_ARGS[@]}" >&2
  fi
  echo "$dir/rwku_results.json"
}

# Runs RWKU's target-wise loop with examples/rwku/$1.yaml (extra key=value arguments override it) and prints
# the table of the original model and this run.
rwku_run() {
  local method="$1"; shift
  local before; before="$(rwku_before)"
  RUN_DIR="${RUN_DIR:-saves/rwku/$method-$RWKU_DATA-$(date +%Y%m%d-%H%M%S)}"
  if [[ -e "$RUN_DIR" ]]; then
    echo "rwku: error: $RUN_DIR exists; choose another RUN_DIR (results are never overwritten)" >&2; exit 2
  fi
  "$CLI" rwku run "examples/rwku/$method.yaml" --output "$RUN_DIR" --name "$method" "${RUN_ARGS[@]}" \
    "${DATA_ARGS[@]}" "${TRAIN_ARGS[@]}" "$@" >&2
  "$CLI" rwku table "$before" "$RUN_DIR/rwku_results.json"
}
