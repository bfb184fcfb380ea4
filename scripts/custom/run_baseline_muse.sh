#!/usr/bin/env bash
# MUSE baseline: prepare (or reuse) the target and retrain models, evaluate both, print the table.
# Environment: see muse_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/muse_common.sh"
muse_prepare
"$CLI" muse table "$(muse_eval_cached "$TARGET" target)" "$(muse_eval_cached "$RETRAIN" retrain)"
