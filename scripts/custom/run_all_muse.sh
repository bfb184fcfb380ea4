#!/usr/bin/env bash
# Every MUSE driver at its defaults, once per training seed of SEEDS (default "42 43 44"), then one table of all
# of them, saved as docs/results/muse-<data>.json and .md (refused if they exist). A method's row is the mean over
# its seeds with the half-width of its 95% confidence interval (<metric>_ci95, n_seeds, each run under runs); the
# target and retrain rows are evaluated once and have none. Unilogit's two ablations run beside it (the paper's
# θ_o target, unilogit_target=initial, and forward KL, unilogit_divergence=forward). Environment: SEEDS, and see
# muse_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/muse_common.sh"
read_seeds muse
STAMP="$(date +%Y%m%d-%H%M%S)"
SAVE="docs/results/muse-$DATA_TAG.json"
[[ -e "$SAVE" ]] && die muse "$SAVE exists; move it away first"
results=()
# row name, driver, overrides
for row in "ga_rt ga_rt" "npo_rt npo_rt" "simnpo_rt simnpo_rt" "undial undial" "unilogit_rt unilogit_rt" \
           "unilogit_rt_initial unilogit_rt unilogit_target=initial" \
           "unilogit_rt_fkl unilogit_rt unilogit_divergence=forward"; do
  read -r name method overrides <<<"$row"
  for seed in "${SEEDS_LIST[@]}"; do
    run="saves/muse/$name-$DATA_TAG-$STAMP-seed$seed"
    # shellcheck disable=SC2086  # the overrides are separate key=value words
    RUN_NAME="$name" RUN_DIR="$run" bash "scripts/custom/run_${method}_muse.sh" seed="$seed" $overrides >&2
    results+=("$run/muse_eval/muse_results.json")
  done
done
muse_prepare
mkdir -p docs/results
"$CLI" muse table "$(muse_eval_cached "$TARGET" target)" "$(muse_eval_cached "$RETRAIN" retrain)" "${results[@]}" \
  --save "$SAVE" --note "Produced by \`MUSE_DATA=$MUSE_DATA RECIPE=$RECIPE SEEDS=\"${SEEDS_LIST[*]}\" bash scripts/custom/run_all_muse.sh\` (defaults, each method once per seed)."
