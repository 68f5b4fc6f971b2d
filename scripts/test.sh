#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, check types (mypy) and
# style (ruff), then run the whole suite (extra arguments go to pytest: a file, -k, ...).
#   scripts/test.sh --fast   only the tier that builds no test host (-m "not hosts")
# Two passes: the tests that build no host, spread over $FC_TEST_WORKERS pytest-xdist workers (default 4);
# then those that build hosts, one after another (they share this machine's cores with their hosts, sshd
# and Ray, and their faults and timings are measured on a machine not also running another cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
.venv/bin/ruff check --quiet .
.venv/bin/mypy
fast=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then fast=1; else args+=("$arg"); fi
done
pass() {  # pytest's exit 5 (nothing selected, e.g. a hosts-only file in the first pass) is not a failure
  local code=0
  .venv/bin/python -m pytest "$@" || code=$?
  [ "$code" -eq 5 ] && code=0
  return "$code"
}
status=0
pass -n "${FC_TEST_WORKERS:-4}" -m "not hosts" ${args[@]+"${args[@]}"} || status=$?
if [ "$fast" -eq 0 ]; then
  pass -m hosts ${args[@]+"${args[@]}"} || { code=$?; [ "$status" -ne 0 ] || status=$code; }
fi
exit "$status"
