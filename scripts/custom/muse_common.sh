# Shared steps of the MUSE drivers (sourced by run_*_muse.sh; not run directly).
#
# Environment variables (all optional):
#   MUSE_DATA      mini (default: the embedded data/muse_mini) | news | books (the hub's MUSE-News/-Books)
#   TARGET_MODEL   use this target instead of preparing one (default for news/books: muse-bench's released
#   RETRAIN_MODEL  target and retrain models); for mini both are trained once and cached (`unilogit muse prepare`)
#   NGPUS          >1: run unlearning under torchrun with NGPUS processes (llamafactory's FORCE_TORCHRUN)
#   DEEPSPEED      0 (default) | z3 (or 1) | z3_offload | z2: DeepSpeed with examples/deepspeed/ds_<value>_config.json
#                  (GPU machines; z3_offload also keeps parameters and optimizer state on the CPU)
#   REF_OFFLOAD    1: full fine-tuning without DeepSpeed keeps the frozen reference model on the CPU between uses
#   BF16           false (default) | true: bf16 mixed precision (GPUs, or CPUs with avx512_bf16) for unlearning and preparation
#   MAX_EXAMPLES   cap every evaluation split (quick runs)
#   RUN_DIR        the unlearning output folder (default saves/muse/<method>-<data>-<time>; never reused)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MUSE_DATA="${MUSE_DATA:-mini}"

case "$MUSE_DATA" in
  mini)  EVAL_DATA=data/muse_mini; FORGET=muse_mini_forget; RETAIN=muse_mini_retain ;;
  news)  EVAL_DATA=news; FORGET=muse_news_forget; RETAIN=muse_news_retain
         TARGET_MODEL="${TARGET_MODEL:-muse-bench/MUSE-news_target}"
         RETRAIN_MODEL="${RETRAIN_MODEL:-muse-bench/MUSE-news_retrain}" ;;
  books) EVAL_DATA=books; FORGET=muse_books_forget; RETAIN=muse_books_retain
         TARGET_MODEL="${TARGET_MODEL:-muse-bench/MUSE-books_target}"
         RETRAIN_MODEL="${RETRAIN_MODEL:-muse-bench/MUSE-books_retrain}" ;;
  *) echo "muse: error: MUSE_DATA=$MUSE_DATA; use mini, news or books" >&2; exit 2 ;;
esac
EVAL_ARGS=(--data "$EVAL_DATA")
[[ -n "${MAX_EXAMPLES:-}" ]] && EVAL_ARGS+=(--max-examples "$MAX_EXAMPLES")
TRAIN_ARGS=(dataset="$FORGET" retain_dataset="$RETAIN" bf16="$BF16")
add_scale_switches muse

# Sets TARGET and RETRAIN: the given models, or the cached mini-benchmark ones (trained when missing).
muse_prepare() {
  if [[ -n "${TARGET_MODEL:-}" && -n "${RETRAIN_MODEL:-}" ]]; then
    TARGET="$TARGET_MODEL"; RETRAIN="$RETRAIN_MODEL"; return
  fi
  local out
  out="$("$CLI" muse prepare bf16="$BF16")"
  TARGET="$(sed -n 's/^target=//p' <<<"$out")"
  RETRAIN="$(sed -n 's/^retrain=//p' <<<"$out")"
}

# Cached evaluations are keyed by the evaluator's code and the local data's bytes as well as the data
# name, so a changed evaluator or regenerated data is evaluated afresh instead of read from a stale cache.
EVAL_KEY="$(cat src/unilogit/evaluation/muse.py src/unilogit/evaluation/common.py $([[ -d "$EVAL_DATA" ]] && find "$EVAL_DATA" -type f | sort) \
  | sha256sum | cut -c1-12)"

# Where the evaluation of model $1 (named $2) is kept: beside a local model, else under saves/muse/evals.
eval_dir() {
  local tag="$MUSE_DATA${MAX_EXAMPLES:+-n$MAX_EXAMPLES}-$EVAL_KEY"
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

# Unlearns the target with examples/muse/$1.yaml (extra key=value arguments override it), evaluates,
# and prints the table of target, retrain and this run.
muse_run() {
  local method="$1"; shift
  muse_prepare
  local target_json retrain_json
  target_json="$(muse_eval_cached "$TARGET" target)"
  retrain_json="$(muse_eval_cached "$RETRAIN" retrain)"
  RUN_DIR="${RUN_DIR:-saves/muse/$method-$MUSE_DATA-$(date +%Y%m%d-%H%M%S)}"
  if [[ -e "$RUN_DIR" ]]; then
    echo "muse: error: $RUN_DIR exists; choose another RUN_DIR (results are never overwritten)" >&2; exit 2
  fi
  "$CLI" train "examples/muse/$method.yaml" model_name_or_path="$TARGET" output_dir="$RUN_DIR" "${TRAIN_ARGS[@]}" "$@"
  "$CLI" eval muse --model "$RUN_DIR" --retrain "$RETRAIN" --name "$method" --output "$RUN_DIR/muse_eval" \
    "${EVAL_ARGS[@]}" >&2
  "$CLI" muse table "$target_json" "$retrain_json" "$RUN_DIR/muse_eval/muse_results.json"
}
