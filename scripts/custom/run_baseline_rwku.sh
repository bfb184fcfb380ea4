#!/usr/bin/env bash
# RWKU baseline: evaluate the original model on every chosen target and print the table (cached for the
# other drivers). Environment: see rwku_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/rwku_common.sh"
"$CLI" rwku table "$(rwku_before)"
