#!/usr/bin/env bash
# MUSE: unlearn the target with examples/muse/unilogit_rt.yaml, or examples/paper/muse_<news|books>/unilogit_rt.yaml for
# the paper recipes (its hyperparameters are at the top of that file; key=value arguments here override them),
# evaluate, and print the table of target, retrain and this run. Missing target/retrain models are prepared
# first. Environment: see muse_common.sh.
#   bash scripts/custom/run_unilogit_rt_muse.sh [key=value ...]
source "$(dirname "${BASH_SOURCE[0]}")/muse_common.sh"
muse_run unilogit_rt "$@"
