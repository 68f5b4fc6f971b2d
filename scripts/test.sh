#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, check types (mypy) and
# style (ruff), then run the whole suite (extra arguments go to pytest).
#   scripts/test.sh --fast   the tier that builds no test host (-m "not hosts")
# The tests that build no host are spread over $FC_TEST_WORKERS pytest-xdist workers (default 4); those
# that build hosts run one after another on one worker (their xdist group), as they always did.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
.venv/bin/ruff check --quiet .
.venv/bin/mypy
args=(-n "${FC_TEST_WORKERS:-4}" --dist loadgroup)
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then args+=(-m "not hosts"); else args+=("$arg"); fi
done
exec .venv/bin/python -m pytest "${args[@]}"
