# Shared steps of the MUSE drivers (sourced by run_*_muse.sh; not run directly).
#
# Environment variables (all optional):
#   MUSE_DATA      mini (default: the embedded data/muse_mini) | news | books (the hub's MUSE-News/-Books)
#                  | a local MUSE-format folder (raw/, verbmem/, knowmem/, privleak/ as `unilogit muse export` writes)
#   RECIPE         mini (examples/muse) | news | books (examples/paper/muse_<recipe>); default: mini for mini,
#                  news/books for news/books, and for a folder news when TARGET_MODEL is given, else mini
#   TARGET_MODEL   use these target and retrain models (default for news/books: muse-bench's released ones); for
#   RETRAIN_MODEL  mini and a folder without them, both are trained from its raw/ splits once and cached
#                  (`unilogit muse prepare [--data FOLDER]`)
#   REFERENCE_SEED the training seed of the prepared target and retrain models (`muse prepare seed=N`; default:
#                  their YAMLs' 42); not with TARGET_MODEL/RETRAIN_MODEL, which are trained already
#   REFERENCE_OVERRIDES  key=value words for the prepared target and retrain models (`muse prepare`), e.g.
#                  "num_train_epochs=20" (docs/MUSE.md, "The mini benchmark"; default: none); not with TARGET_MODEL
#   TOKENIZER      the tokenizer folder or hub id for models that ship none, for evaluation and unlearning
#                  (default for news/books: meta-llama/Llama-2-7b-hf, as MUSE)
#   NGPUS          >1: run unlearning under torchrun with NGPUS processes (llamafactory's FORCE_TORCHRUN); the
#                  per-device batch and accumulation are set so the recipe's effective batch stays the same
#   DEEPSPEED      unset: the recipe's (ZeRO-3 for news/books, none for mini) | 0 (none) | z3 (or 1) | z3_offload
#                  | z2: DeepSpeed with examples/deepspeed/ds_<value>_config.json (GPUs, or the CPU over gloo;
#                  z3_offload also keeps parameters and optimizer state on the CPU)
#   REF_OFFLOAD    1: full fine-tuning without DeepSpeed keeps the frozen reference model on the CPU between uses
#   BF16           true | false: bf16 mixed precision for unlearning and preparation (default: true for
#                  news/books when a GPU is visible, else false; CPUs with avx512_bf16 can run it too)
#   MAX_EXAMPLES   cap every evaluation split (quick runs)
#   OVERLAP_EVALS  1 | 0 (default): evaluate the target and retrain models beside the unlearning, their logs in a
#                  temporary folder (on 2 CPU cores three processes thrashed: the main job took 21 min, not ~14)
#   RUN_DIR        the unlearning output folder (default saves/muse/<method>-<data>-<time>; never reused)
#   RUN_NAME       the row name of the run in the table (default: the method)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MUSE_DATA="${MUSE_DATA:-mini}"
TRAIN_ARGS=()

case "$MUSE_DATA" in
  mini)  EVAL_DATA=data/muse_mini; DATA_TAG=mini; RECIPE="${RECIPE:-mini}"
         TRAIN_ARGS+=(dataset=muse_mini_forget retain_dataset=muse_mini_retain) ;;
  news|books)
         EVAL_DATA="$MUSE_DATA"; DATA_TAG="$MUSE_DATA"; RECIPE="${RECIPE:-$MUSE_DATA}"
         TRAIN_ARGS+=(dataset="muse_${MUSE_DATA}_forget" retain_dataset="muse_${MUSE_DATA}_retain")
         TARGET_MODEL="${TARGET_MODEL:-muse-bench/MUSE-${MUSE_DATA}_target}"
         RETRAIN_MODEL="${RETRAIN_MODEL:-muse-bench/MUSE-${MUSE_DATA}_retrain}"
         TOKENIZER="${TOKENIZER:-meta-llama/Llama-2-7b-hf}" ;;
  *)     [[ -d "$MUSE_DATA" ]] || die muse "MUSE_DATA=$MUSE_DATA; use mini, news, books or a local MUSE-format folder"
         EVAL_DATA="$(cd "$MUSE_DATA" && pwd)"; DATA_TAG="$(basename "$EVAL_DATA")"
         RECIPE="${RECIPE:-$([[ -n "${TARGET_MODEL:-}" ]] && echo news || echo mini)}"
         # The folder's raw/forget.json and raw/retain1.json, registered as llamafactory datasets (checked here).
         registered="$("$CLI" muse datasets "$EVAL_DATA")"
         TRAIN_ARGS+=(dataset_dir="$(sed -n 's/^dataset_dir=//p' <<<"$registered")"
                      dataset="$(sed -n 's/^forget=//p' <<<"$registered")"
                      retain_dataset="$(sed -n 's/^retain=//p' <<<"$registered")") ;;
esac
case "$RECIPE" in
  mini) RECIPE_DIR=examples/muse; default_bf16 mini ;;
  news|books) RECIPE_DIR="examples/paper/muse_$RECIPE"; default_bf16 paper ;;
  *) die muse "RECIPE=$RECIPE; use mini, news or books" ;;
esac
# Whether the reference models' evaluations run beside the unlearning: off unless asked (docs/MUSE.md).
OVERLAP_EVALS="${OVERLAP_EVALS:-0}"
[[ "$OVERLAP_EVALS" == [01] ]] ||
  die muse "OVERLAP_EVALS=$OVERLAP_EVALS; use 1 (evaluate the references beside the unlearning) or 0"
if [[ -n "${TARGET_MODEL:-}" && -z "${RETRAIN_MODEL:-}" || -z "${TARGET_MODEL:-}" && -n "${RETRAIN_MODEL:-}" ]]; then
  die muse "give both TARGET_MODEL and RETRAIN_MODEL, or neither (then both are prepared from the data)"
fi
if [[ -n "${REFERENCE_SEED:-}" ]]; then
  [[ "$REFERENCE_SEED" =~ ^[0-9]+$ ]] || die muse "REFERENCE_SEED=$REFERENCE_SEED; use a non-negative integer seed"
  [[ -z "${TARGET_MODEL:-}" ]] ||
    die muse "REFERENCE_SEED trains the target and retrain models; leave it unset with given or released ones (TARGET_MODEL, news, books)"
fi
read -ra REFERENCE_OVERRIDES_LIST <<<"${REFERENCE_OVERRIDES:-}"
for item in "${REFERENCE_OVERRIDES_LIST[@]}"; do
  [[ "$item" == ?*=* ]] || die muse "REFERENCE_OVERRIDES: $item is not key=value; write e.g. REFERENCE_OVERRIDES=\"num_train_epochs=20\""
  [[ "$item" != seed=* ]] || die muse "REFERENCE_OVERRIDES: set the reference models' seed with REFERENCE_SEED, not seed="
done
[[ -z "${REFERENCE_OVERRIDES_LIST[*]}" || -z "${TARGET_MODEL:-}" ]] ||
  die muse "REFERENCE_OVERRIDES trains the target and retrain models; leave it unset with given or released ones (TARGET_MODEL, news, books)"
EVAL_ARGS=(--data "$EVAL_DATA")
[[ -n "${MAX_EXAMPLES:-}" ]] && EVAL_ARGS+=(--max-examples "$MAX_EXAMPLES")
[[ -n "${TOKENIZER:-}" ]] && EVAL_ARGS+=(--tokenizer "$TOKENIZER")
TRAIN_ARGS+=(bf16="$BF16")
[[ -n "${TOKENIZER:-}" ]] && TRAIN_ARGS+=(tokenizer_name_or_path="$TOKENIZER")
add_scale_switches muse

# Sets TARGET and RETRAIN: the given models, or the cached ones trained on the data's raw/ splits (when missing).
muse_prepare() {
  if [[ -n "${TARGET_MODEL:-}" ]]; then
    TARGET="$TARGET_MODEL"; RETRAIN="$RETRAIN_MODEL"; return
  fi
  local out data=()
  [[ "$MUSE_DATA" != mini ]] && data=(--data "$EVAL_DATA")
  out="$("$CLI" muse prepare "${data[@]}" bf16="$BF16" "${REFERENCE_OVERRIDES_LIST[@]}" \
    ${REFERENCE_SEED:+seed="$REFERENCE_SEED"})"
  TARGET="$(sed -n 's/^target=//p' <<<"$out")"
  RETRAIN="$(sed -n 's/^retrain=//p' <<<"$out")"
}

# The key of a cached evaluation of model $1, by content (unilogit.fingerprint): the bytes of model $1 and of the
# retrain model (PrivLeak and the KL are relative to it; a model folder by its top-level files, so the evaluations
# cached inside it do not count; a hub id by its name), the data's bytes, the tokenizer, the evaluation's options,
# and the evaluator's source files as the sweeps find them (fingerprint.evaluator_code). None of them changes
# without a fresh evaluation.
eval_key() {
  .venv/bin/python - "$1" "$RETRAIN" "$EVAL_DATA" "${TOKENIZER:-}" "${EVAL_ARGS[@]}" <<'PY'
import sys

from unilogit.benchmarks.registry import MUSE
from unilogit.fingerprint import evaluator_code, fingerprint

model, retrain, data, tokenizer, *options = sys.argv[1:]
models = fingerprint(model, retrain, shallow=True)
code = evaluator_code(MUSE.evaluator, MUSE.module)
print(fingerprint(models, data, {"tokenizer": tokenizer, "options": options}, *code))
PY
}

# Where the evaluation of model $1 is kept: beside a local model, else under saves/muse/evals.
eval_dir() {
  local tag; tag="$DATA_TAG${MAX_EXAMPLES:+-n$MAX_EXAMPLES}-$(eval_key "$1")"
  if [[ -d "$1" ]]; then echo "$1/muse_eval-$tag"; else echo "saves/muse/evals/${1//\//__}-$tag"; fi
}

# Evaluates model $1 as row $2 unless its results already exist; prints the results file.
muse_eval_cached() {
  local dir; dir="$(eval_dir "$1")"
  if [[ ! -f "$dir/muse_results.json" ]]; then
    "$CLI" eval muse --model "$1" --retrain "$RETRAIN" --name "$2" --output "$dir" "${EVAL_ARGS[@]}" >&2
  fi
  echo "$dir/muse_results.json"
}

# Waits for the background evaluation $2 of row $1; on failure shows the end of its log (in folder $3) and stops.
wait_eval() {
  wait "$2" && return
  tail -n 5 "$3/$1.log" >&2
  die muse "evaluating the $1 model failed (its log: $3/$1.log)"
}

# Unlearns the target with $RECIPE_DIR/$1.yaml (extra key=value arguments override it), evaluates, and prints
# the table of target, retrain and this run.
muse_run() {
  local method="$1"; shift
  RUN_DIR="${RUN_DIR:-saves/muse/$method-$DATA_TAG-$(date +%Y%m%d-%H%M%S)}"
  [[ -e "$RUN_DIR" ]] && die muse "$RUN_DIR exists; choose another RUN_DIR (results are never overwritten)"
  local batch; batch="$(effective_batch_args muse "$RECIPE_DIR/$method.yaml")"
  local -a batch_args; read -ra batch_args <<<"$batch"
  muse_prepare
  local target_json retrain_json logs=""
  if [[ "$OVERLAP_EVALS" == 1 ]]; then
    # Greedy generation, most of an evaluation, leaves one of a small CPU's cores idle: the target's and the
    # retrained model's evaluations (which need neither the run nor each other) run beside the unlearning.
    logs="$(mktemp -d)"
    echo "[muse] evaluating the target and the retrained model beside the unlearning (logs: $logs)" >&2
    muse_eval_cached "$TARGET" target >"$logs/target.out" 2>"$logs/target.log" &
    local target_pid=$!
    muse_eval_cached "$RETRAIN" retrain >"$logs/retrain.out" 2>"$logs/retrain.log" &
    local retrain_pid=$!
    trap 'kill $target_pid $retrain_pid 2>/dev/null || true' EXIT  # a failed unlearning leaves none running
  else
    target_json="$(muse_eval_cached "$TARGET" target)"
    retrain_json="$(muse_eval_cached "$RETRAIN" retrain)"
  fi
  # Its log goes to stderr, as every step's but the table's: stdout is the table alone.
  "$CLI" train "$RECIPE_DIR/$method.yaml" model_name_or_path="$TARGET" output_dir="$RUN_DIR" "${batch_args[@]}" \
    "${TRAIN_ARGS[@]}" "$@" >&2
  if [[ -n "$logs" ]]; then
    wait_eval target "$target_pid" "$logs"
    wait_eval retrain "$retrain_pid" "$logs"
    trap - EXIT
    target_json="$(cat "$logs/target.out")"
    retrain_json="$(cat "$logs/retrain.out")"
    rm -rf "$logs"
  fi
  "$CLI" eval muse --model "$RUN_DIR" --retrain "$RETRAIN" --name "${RUN_NAME:-$method}" --output "$RUN_DIR/muse_eval" \
    "${EVAL_ARGS[@]}" >&2
  "$CLI" muse table "$target_json" "$retrain_json" "$RUN_DIR/muse_eval/muse_results.json"
}
