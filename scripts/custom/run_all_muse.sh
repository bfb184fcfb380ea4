#!/usr/bin/env bash
# Every MUSE driver at its defaults, once per training seed of SEEDS (default "42 43 44"), then one table of all
# of them, saved as docs/results/muse-<data>.json and .md (refused if they exist). A method's row is the mean over
# its seeds with the half-width of its 95% confidence interval (<metric>_ci95, n_seeds, each run under runs). The
# target and retrain rows are one pair of models, evaluated once, unless PER_SEED_REFERENCES=1: then seed S's runs
# unlearn the target trained with seed S (REFERENCE_SEED=S, with its own retrained model for PrivLeak and the KL),
# and the target and retrain rows get means and intervals over those models too. Unilogit's two ablations run
# beside it (the paper's θ_o target, unilogit_target=initial, and forward KL, unilogit_divergence=forward).
# JOBS=N (default 1) runs N drivers at once, each with its share of the CPU cores (OMP_NUM_THREADS) and its log in
# <run>.log; the numbers do not depend on it. The reference models are prepared and evaluated first, one at a time.
# Environment: SEEDS, PER_SEED_REFERENCES, JOBS, and see muse_common.sh (REFERENCE_OVERRIDES: how the target and
# retrain models are trained).
source "$(dirname "${BASH_SOURCE[0]}")/muse_common.sh"
read_seeds muse
PER_SEED_REFERENCES="${PER_SEED_REFERENCES:-0}"
[[ "$PER_SEED_REFERENCES" == [01] ]] ||
  die muse "PER_SEED_REFERENCES=$PER_SEED_REFERENCES; use 1 (a target and retrain model per seed) or 0 (one pair)"
[[ "$PER_SEED_REFERENCES" == 0 || -z "${TARGET_MODEL:-}${REFERENCE_SEED:-}" ]] ||
  die muse "PER_SEED_REFERENCES=1 trains the models of each seed; leave TARGET_MODEL and REFERENCE_SEED unset"
JOBS="${JOBS:-1}"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die muse "JOBS=$JOBS; use a whole number of drivers at once, e.g. 1 or 2"
STAMP="$(date +%Y%m%d-%H%M%S)"
SAVE="docs/results/muse-$DATA_TAG.json"
[[ -e "$SAVE" ]] && die muse "$SAVE exists; move it away first"
# The reference models' seeds: each seed's own pair, or the one pair every run unlearns ("": the YAMLs' seed).
reference_seeds=("${REFERENCE_SEED:-}")
[[ "$PER_SEED_REFERENCES" == 1 ]] && reference_seeds=("${SEEDS_LIST[@]}")
# Before any driver, so that drivers running at once find them trained and evaluated instead of racing for them.
references=()
for REFERENCE_SEED in "${reference_seeds[@]}"; do
  muse_prepare
  references+=("$(muse_eval_cached "$TARGET" target)" "$(muse_eval_cached "$RETRAIN" retrain)")
done
threads=$(( $(nproc) / JOBS )); (( threads >= 1 )) || threads=1
results=() failed=0
# row name, driver, overrides
for row in "ga_rt ga_rt" "npo_rt npo_rt" "simnpo_rt simnpo_rt" "undial undial" "unilogit_rt unilogit_rt" \
           "unilogit_rt_initial unilogit_rt unilogit_target=initial" \
           "unilogit_rt_fkl unilogit_rt unilogit_divergence=forward"; do
  read -r name method overrides <<<"$row"
  for seed in "${SEEDS_LIST[@]}"; do
    run="saves/muse/$name-$DATA_TAG-$STAMP-seed$seed"
    [[ "$PER_SEED_REFERENCES" == 1 ]] && export REFERENCE_SEED="$seed"
    # shellcheck disable=SC2086  # the overrides are separate key=value words
    if (( JOBS == 1 )); then
      RUN_NAME="$name" RUN_DIR="$run" bash "scripts/custom/run_${method}_muse.sh" seed="$seed" $overrides >&2
    else
      while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || failed=1; done
      echo "[muse] $run: running (log: $run.log)" >&2
      OMP_NUM_THREADS="$threads" RUN_NAME="$name" RUN_DIR="$run" \
        bash "scripts/custom/run_${method}_muse.sh" seed="$seed" $overrides >"$run.log" 2>&1 &
    fi
    results+=("$run/muse_eval/muse_results.json")
  done
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || failed=1; done
(( failed == 0 )) || die muse "a driver failed; see the end of its saves/muse/*-$STAMP-seed*.log"
mkdir -p docs/results
"$CLI" muse table "${references[@]}" "${results[@]}" \
  --save "$SAVE" --note "Produced by \`MUSE_DATA=$MUSE_DATA RECIPE=$RECIPE SEEDS=\"${SEEDS_LIST[*]}\" PER_SEED_REFERENCES=$PER_SEED_REFERENCES${REFERENCE_OVERRIDES:+ REFERENCE_OVERRIDES=\"$REFERENCE_OVERRIDES\"} bash scripts/custom/run_all_muse.sh\` (defaults, each method once per seed)."
