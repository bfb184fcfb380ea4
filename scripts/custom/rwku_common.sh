# Shared steps of the RWKU drivers (sourced by run_*_rwku.sh; not run directly).
#
# Environment variables (all optional):
#   RWKU_DATA      mini (default: the embedded data/rwku_mini) | hub (jinzhuoran/RWKU) | a local RWKU folder
#   RECIPE         mini (examples/rwku) | paper (examples/paper/rwku: RWKU's settings); default: mini for mini,
#                  paper for the hub and a local folder
#   TARGETS        1-based target range, e.g. 1-8, 3 or 1-3,7 (default: every target; RWKU's paper: 1-100)
#   MODEL          the original model (default: the embedded smollm2-135m-instruct for mini, RWKU's
#                  meta-llama/Meta-Llama-3-8B-Instruct for paper; e.g. meta-llama/Llama-3.1-8B-Instruct)
#   TOKENIZER      the tokenizer folder or hub id for a model that ships none, for evaluation and unlearning
#   BATCH          1: the batch-target setting, all TARGETS unlearned at once (default 0: one at a time)
#   CORPUS         the forget corpus config (default: train_positive_smollm2 in a folder that holds it, else
#                  train_positive_llama3, RWKU's)
#   RETAIN_CORPUS  a train_* config of general text to use as the retain set (the paper recipe has none by
#                  default, as RWKU; the mini recipe uses train_retain_smollm2)
#   RETAIN_LOSS    the retain term with RETAIN_CORPUS: none | nll | kl (default: the recipe's, else kl for
#                  unilogit and nll for the others)
#   NGPUS          >1: run unlearning under torchrun with NGPUS processes (llamafactory's FORCE_TORCHRUN); the
#                  per-device batch and accumulation are set so the recipe's effective batch stays the same
#   DEEPSPEED      unset: the recipe's (ZeRO-3 for paper, none for mini) | 0 (none) | z3 (or 1) | z3_offload | z2:
#                  DeepSpeed with examples/deepspeed/ds_<value>_config.json (GPUs, or the CPU over gloo)
#   REF_OFFLOAD    1: full fine-tuning without DeepSpeed keeps the frozen reference model on the CPU between uses
#   BF16           true | false: bf16 mixed precision (default: true for paper when a GPU is visible, else false)
#   MAX_EXAMPLES   cap every evaluation set (quick runs)
#   STOP           rwku (default: probes end and are scored as RWKU's code does) | newline (the first line only)
#   RUN_DIR        the run folder (default saves/rwku/<method>-<data>-<time>; never reused)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RWKU_DATA="${RWKU_DATA:-mini}"
case "$RWKU_DATA" in
  mini) EVAL_DATA=data/rwku_mini; DATA_TAG=mini; RECIPE="${RECIPE:-mini}" ;;
  hub)  EVAL_DATA=rwku; DATA_TAG=hub; RECIPE="${RECIPE:-paper}" ;;
  *)    [[ -d "$RWKU_DATA" ]] || die rwku "RWKU_DATA=$RWKU_DATA; use mini, hub or a local RWKU folder"
        EVAL_DATA="$(cd "$RWKU_DATA" && pwd)"; DATA_TAG="$(basename "$EVAL_DATA")"; RECIPE="${RECIPE:-paper}" ;;
esac
case "$RECIPE" in
  mini)  RECIPE_DIR=examples/rwku; MODEL="${MODEL:-smollm2-135m-instruct}"; default_bf16 mini ;;
  paper) RECIPE_DIR=examples/paper/rwku; MODEL="${MODEL:-meta-llama/Meta-Llama-3-8B-Instruct}"; default_bf16 paper ;;
  *)     die rwku "RECIPE=$RECIPE; use mini or paper" ;;
esac
DATA_ARGS=(--data "$EVAL_DATA")
[[ -n "${TARGETS:-}" ]] && DATA_ARGS+=(--targets "$TARGETS")
[[ -n "${MAX_EXAMPLES:-}" ]] && DATA_ARGS+=(--max-examples "$MAX_EXAMPLES")
[[ -n "${TOKENIZER:-}" ]] && DATA_ARGS+=(--tokenizer "$TOKENIZER")
[[ -n "${STOP:-}" ]] && DATA_ARGS+=(--stop "$STOP")
RUN_ARGS=(--model "$MODEL")
[[ "${BATCH:-0}" == 1 ]] && RUN_ARGS+=(--batch)
[[ -n "${CORPUS:-}" ]] && RUN_ARGS+=(--corpus "$CORPUS")
[[ -n "${RETAIN_CORPUS:-}" ]] && RUN_ARGS+=(--retain-corpus "$RETAIN_CORPUS")
TRAIN_ARGS=(bf16="$BF16")
[[ -n "${RETAIN_LOSS:-}" ]] && TRAIN_ARGS+=(retain_loss="$RETAIN_LOSS")
add_scale_switches rwku  # `rwku run` passes --tokenizer (in DATA_ARGS) on to training itself

# Evaluates the original model on the chosen targets unless cached; prints its results file. The cache is keyed by
# `unilogit rwku key`: the evaluator's code (models.py included), the data's and the model's bytes (a local
# folder's; an alias or hub id by its name), the tokenizer, and every option (batch size, stop rule, dtype,
# targets), so a change to any of them is evaluated afresh instead of read from a stale cache.
rwku_before() {
  local key; key="$("$CLI" rwku key --model "$MODEL" "${DATA_ARGS[@]}")" || exit $?
  local dir="saves/rwku/evals/before-$DATA_TAG-$key"
  if [[ ! -f "$dir/rwku_results.json" ]]; then
    "$CLI" eval rwku --model "$MODEL" --name before --output "$dir" "${DATA_ARGS[@]}" >&2
  fi
  echo "$dir/rwku_results.json"
}

# Runs RWKU's target-wise loop with $RECIPE_DIR/$1.yaml (extra key=value arguments override it) and prints the
# table of the original model and this run.
rwku_run() {
  local method="$1"; shift
  RUN_DIR="${RUN_DIR:-saves/rwku/$method-$DATA_TAG-$(date +%Y%m%d-%H%M%S)}"
  [[ -e "$RUN_DIR" ]] && die rwku "$RUN_DIR exists; choose another RUN_DIR (results are never overwritten)"
  local batch; batch="$(effective_batch_args rwku "$RECIPE_DIR/$method.yaml")"
  local -a batch_args; read -ra batch_args <<<"$batch"
  local before; before="$(rwku_before)"
  "$CLI" rwku run "$RECIPE_DIR/$method.yaml" --output "$RUN_DIR" --name "$method" "${RUN_ARGS[@]}" \
    "${DATA_ARGS[@]}" "${TRAIN_ARGS[@]}" "${batch_args[@]}" "$@" >&2
  "$CLI" rwku table "$before" "$RUN_DIR/rwku_results.json"
}
