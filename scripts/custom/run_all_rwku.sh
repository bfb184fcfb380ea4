#!/usr/bin/env bash
# Every RWKU driver at its defaults, then one table of all of them, saved as docs/results/rwku-<data>.json and
# .md (refused if they exist). Environment: see rwku_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/rwku_common.sh"
STAMP="$(date +%Y%m%d-%H%M%S)"
SAVE="docs/results/rwku-$DATA_TAG.json"
[[ -e "$SAVE" ]] && die rwku "$SAVE exists; move it away first"
results=()
for method in ga npo simnpo undial unilogit; do
  RUN_DIR="saves/rwku/$method-$DATA_TAG-$STAMP" bash "scripts/custom/run_${method}_rwku.sh" >&2
  results+=("saves/rwku/$method-$DATA_TAG-$STAMP/rwku_results.json")
done
mkdir -p docs/results
"$CLI" rwku table "$(rwku_before)" "${results[@]}" \
  --save "$SAVE" --note "Produced by \`RWKU_DATA=$RWKU_DATA RECIPE=$RECIPE bash scripts/custom/run_all_rwku.sh\` (seed 42, defaults)."
