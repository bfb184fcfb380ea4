#!/usr/bin/env bash
# RWKU: unlearn each target from the original model with examples/rwku/undial.yaml (examples/paper/rwku/undial.yaml
# for the hub and local folders; its hyperparameters are at the top of that file; key=value arguments here override
# them), evaluate, and print the table of the original model and this run, averaged over the targets.
# Environment: see rwku_common.sh.
#   TARGETS=1-8 bash scripts/custom/run_undial_rwku.sh [key=value ...]
source "$(dirname "${BASH_SOURCE[0]}")/rwku_common.sh"
rwku_run undial "$@"
