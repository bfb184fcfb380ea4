#!/usr/bin/env bash
# Every RWKU driver at its defaults, once per training seed of SEEDS (default "42 43 44"), on the targets of
# TARGETS (default: every target of the data), then one table of all of them, saved as
# docs/results/rwku-<data>.json and .md (refused if they exist). A method's row is the mean over its seeds with
# the half-width of its 95% confidence interval (<metric>_ci95, n_seeds, each run under runs); the original
# model's row ("before") is evaluated once and has none. Environment: SEEDS, and see rwku_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/rwku_common.sh"
read_seeds rwku
STAMP="$(date +%Y%m%d-%H%M%S)"
SAVE="docs/results/rwku-$DATA_TAG.json"
[[ -e "$SAVE" ]] && die rwku "$SAVE exists; move it away first"
results=()
for seed in "${SEEDS_LIST[@]}"; do
  for method in ga npo simnpo undial unilogit; do
    run="saves/rwku/$method-$DATA_TAG-$STAMP-seed$seed"
    RUN_DIR="$run" bash "scripts/custom/run_${method}_rwku.sh" seed="$seed" >&2
    results+=("$run/rwku_results.json")
  done
done
mkdir -p docs/results
"$CLI" rwku table "$(rwku_before)" "${results[@]}" \
  --save "$SAVE" --note "Produced by \`RWKU_DATA=$RWKU_DATA RECIPE=$RECIPE ${TARGETS:+TARGETS=$TARGETS }SEEDS=\"${SEEDS_LIST[*]}\" bash scripts/custom/run_all_rwku.sh\` (defaults, each method once per seed)."
