#!/usr/bin/env bash
# Every MUSE driver at its defaults, once per training seed of SEEDS (default "42 43 44"), then one table of all
# of them, saved as docs/results/muse-<data>.json and .md (refused if they exist). A method's row is the mean over
# its seeds with the half-width of its 95% confidence interval (<metric>_ci95, n_seeds, each run under runs); the
# target and retrain rows are evaluated once and have none. Environment: SEEDS, and see muse_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/muse_common.sh"
read_seeds muse
STAMP="$(date +%Y%m%d-%H%M%S)"
SAVE="docs/results/muse-$DATA_TAG.json"
[[ -e "$SAVE" ]] && die muse "$SAVE exists; move it away first"
results=()
for seed in "${SEEDS_LIST[@]}"; do
  for method in ga_rt npo_rt simnpo_rt undial unilogit_rt; do
    run="saves/muse/$method-$DATA_TAG-$STAMP-seed$seed"
    RUN_DIR="$run" bash "scripts/custom/run_${method}_muse.sh" seed="$seed" >&2
    results+=("$run/muse_eval/muse_results.json")
  done
done
muse_prepare
mkdir -p docs/results
"$CLI" muse table "$(muse_eval_cached "$TARGET" target)" "$(muse_eval_cached "$RETRAIN" retrain)" "${results[@]}" \
  --save "$SAVE" --note "Produced by \`MUSE_DATA=$MUSE_DATA RECIPE=$RECIPE SEEDS=\"${SEEDS_LIST[*]}\" bash scripts/custom/run_all_muse.sh\` (defaults, each method once per seed)."
