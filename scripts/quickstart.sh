#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine, no cloud account needed:
# install, bring up a local cluster (1 orchestrator + 2 factories, real sshd
# per host), run the example hyperparameter sweep as Ray tasks across both
# factories, print its results table, pull the results, tear everything down.
#   scripts/quickstart.sh [RESULTS_DIR]    (default: ./sweep-results)
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-./sweep-results}
config=examples/local-cluster.yaml
./scripts/setup.sh
fc() { .venv/bin/python -m flambe_cluster "$@"; }

fc up "$config"
trap 'fc down "$config"' EXIT
fc submit "$config" --ext scikit-learn examples/sweep
fc logs "$config" --follow
fc pull "$config" flambe-output/sweep "$results"
echo "results in $results: $(ls "$results" | wc -l) files"
