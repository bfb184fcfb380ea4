# Shared by muse_common.sh and rwku_common.sh (sourced; not run directly): the set-up every driver does,
# and the scaling switches every driver takes (BF16, DEEPSPEED, REF_OFFLOAD, NGPUS; see those files).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
CLI=.venv/bin/unilogit
export TOKENIZERS_PARALLELISM=false
BF16="${BF16:-false}"

# Appends the DeepSpeed and reference-offload switches to TRAIN_ARGS and sets up torchrun for NGPUS > 1;
# $1 names the benchmark in error messages.
add_scale_switches() {
  case "${DEEPSPEED:-0}" in
    0) ;;
    1|z3) TRAIN_ARGS+=(deepspeed=examples/deepspeed/ds_z3_config.json) ;;
    z2|z3_offload) TRAIN_ARGS+=(deepspeed="examples/deepspeed/ds_${DEEPSPEED}_config.json") ;;
    *) echo "$1: error: DEEPSPEED=$DEEPSPEED; use 0, z3 (or 1), z3_offload or z2" >&2; exit 2 ;;
  esac
  if [[ "${REF_OFFLOAD:-0}" == 1 ]]; then TRAIN_ARGS+=(ref_offload=true); fi
  if [[ "${NGPUS:-1}" -gt 1 ]]; then export FORCE_TORCHRUN=1 NPROC_PER_NODE="$NGPUS"; fi
}
