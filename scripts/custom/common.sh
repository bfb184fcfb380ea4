# Shared by muse_common.sh and rwku_common.sh (sourced; not run directly): the set-up every driver does,
# and the scaling switches every driver takes (BF16, DEEPSPEED, REF_OFFLOAD, NGPUS; see those files).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
CLI=.venv/bin/unilogit
export TOKENIZERS_PARALLELISM=false
NGPUS="${NGPUS:-1}"

# $1 names the benchmark in error messages; prints one line and exits 2.
die() { echo "$1: error: $2" >&2; exit 2; }

# Sets BF16 when unset: true for a paper recipe ($1 = paper) on a machine with a visible GPU, else false.
default_bf16() {
  if [[ -n "${BF16:-}" ]]; then return; fi
  if [[ "$1" == paper ]] && nvidia-smi -L >/dev/null 2>&1; then BF16=true; else BF16=false; fi
}

# Appends the DeepSpeed and reference-offload switches to TRAIN_ARGS and sets up torchrun for NGPUS > 1.
# DEEPSPEED unset keeps the recipe's choice (the paper recipes name ZeRO-3; the mini ones none); $1 names the
# benchmark in error messages.
add_scale_switches() {
  case "${DEEPSPEED:-}" in
    "") ;;
    0) TRAIN_ARGS+=(deepspeed=null) ;;
    1|z3) TRAIN_ARGS+=(deepspeed=examples/deepspeed/ds_z3_config.json) ;;
    z2|z3_offload) TRAIN_ARGS+=(deepspeed="examples/deepspeed/ds_${DEEPSPEED}_config.json") ;;
    *) die "$1" "DEEPSPEED=$DEEPSPEED; use 0, z3 (or 1), z3_offload or z2" ;;
  esac
  if [[ "${REF_OFFLOAD:-0}" == 1 ]]; then TRAIN_ARGS+=(ref_offload=true); fi
  [[ "$NGPUS" =~ ^[1-9][0-9]*$ ]] || die "$1" "NGPUS=$NGPUS; use a whole number of processes, e.g. 1, 2 or 4"
  if (( NGPUS > 1 )); then export FORCE_TORCHRUN=1 NPROC_PER_NODE="$NGPUS"; fi
}

# For NGPUS > 1, prints the per-device batch and accumulation (as key=value arguments) that keep recipe $2's
# effective batch, its per_device_train_batch_size x gradient_accumulation_steps on one process, over NGPUS
# processes: the accumulation shrinks first, then the per-device batch. $1 names the benchmark in errors.
effective_batch_args() {
  (( NGPUS > 1 )) || return 0
  local per accum total share p
  per="$(sed -n 's/^per_device_train_batch_size: *\([0-9]*\).*/\1/p' "$2")"
  accum="$(sed -n 's/^gradient_accumulation_steps: *\([0-9]*\).*/\1/p' "$2")"
  total=$(( ${per:-1} * ${accum:-1} ))
  (( total % NGPUS == 0 )) || die "$1" "NGPUS=$NGPUS does not divide $2's effective batch $total; use a divisor of $total"
  share=$(( total / NGPUS ))
  for (( p = ${per:-1}; share % p != 0; p-- )); do :; done
  echo "per_device_train_batch_size=$p gradient_accumulation_steps=$(( share / p ))"
}

# Reads SEEDS (the run_all drivers' training seeds; default "42 43 44") into the array SEEDS_LIST: whole numbers,
# each once. $1 names the benchmark in error messages.
read_seeds() {
  read -ra SEEDS_LIST <<<"${SEEDS:-42 43 44}"
  (( ${#SEEDS_LIST[@]} > 0 )) || die "$1" "SEEDS is empty; give the training seeds, e.g. SEEDS=\"42 43 44\""
  local seed seen=" "
  for seed in "${SEEDS_LIST[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || die "$1" "SEEDS=\"${SEEDS:-}\": $seed is not a whole number; e.g. SEEDS=\"42 43 44\""
    [[ "$seen" != *" $seed "* ]] || die "$1" "SEEDS=\"${SEEDS:-}\" names $seed twice; list each seed once"
    seen+="$seed "
  done
}
