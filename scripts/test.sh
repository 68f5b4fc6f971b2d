#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine,
# then run the whole suite (extra arguments go to pytest).
#   scripts/test.sh --fast   the tier that builds no test host (-m "not hosts"): about a minute
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then args+=(-m "not hosts"); else args+=("$arg"); fi
done
exec .venv/bin/python -m pytest ${args[@]+"${args[@]}"}
