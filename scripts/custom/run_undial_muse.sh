#!/usr/bin/env bash
# MUSE: unlearn the target with examples/muse/undial.yaml, or examples/paper/muse_<news|books>/undial.yaml for
# the paper recipes (its hyperparameters are at the top of that file; key=value arguments here override them),
# evaluate, and print the table of target, retrain and this run. Missing target/retrain models are prepared
# first. Environment: see muse_common.sh.
#   bash scripts/custom/run_undial_muse.sh [key=value ...]
source "$(dirname "${BASH_SOURCE[0]}")/muse_common.sh"
muse_run undial "$@"
