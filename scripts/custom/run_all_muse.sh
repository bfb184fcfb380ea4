#!/usr/bin/env bash
# Every MUSE driver at its defaults, then one table of all of them, saved as
# docs/results/muse-<data>.json and .md (refused if they exist). Environment: see muse_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/muse_common.sh"
STAMP="$(date +%Y%m%d-%H%M%S)"
SAVE="docs/results/muse-$DATA_TAG.json"
[[ -e "$SAVE" ]] && die muse "$SAVE exists; move it away first"
results=()
for method in ga_rt npo_rt simnpo_rt undial unilogit_rt; do
  RUN_DIR="saves/muse/$method-$DATA_TAG-$STAMP" bash "scripts/custom/run_${method}_muse.sh" >&2
  results+=("saves/muse/$method-$DATA_TAG-$STAMP/muse_eval/muse_results.json")
done
muse_prepare
mkdir -p docs/results
"$CLI" muse table "$(muse_eval_cached "$TARGET" target)" "$(muse_eval_cached "$RETRAIN" retrain)" "${results[@]}" \
  --save "$SAVE" --note "Produced by \`MUSE_DATA=$MUSE_DATA RECIPE=$RECIPE bash scripts/custom/run_all_muse.sh\` (seed 42, defaults)."
