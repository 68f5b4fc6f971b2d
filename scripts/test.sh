#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, check types (mypy) and
# style (ruff), then run the whole suite (extra arguments go to pytest: a file, -k, -x, ...).
#   scripts/test.sh --fast   only the tier that builds no test host (-m "not hosts")
# Two passes: the tests that build no host, spread over $FC_TEST_WORKERS pytest-xdist workers (default 4);
# then those that build hosts, one after another (they share this machine's cores with their hosts, sshd
# and Ray, and their faults and timings are measured on a machine not also running another cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
args=()
for arg in "$@"; do
  case "$arg" in
    --fast) fast=1 ;;
    -m|-m*|--pdb|--trace)
      echo "scripts/test.sh picks the tiers itself and runs the first under xdist: call" \
           ".venv/bin/python -m pytest $arg ... directly" >&2
      exit 2 ;;
    *) args+=("$arg") ;;
  esac
done
./scripts/setup.sh --dev
.venv/bin/ruff check --quiet .
.venv/bin/mypy
# pytest's exit 5 is "nothing selected": fine for one pass (a hosts-only file in the first), not for both.
first=0
.venv/bin/python -m pytest -n "${FC_TEST_WORKERS:-4}" -m "not hosts" ${args[@]+"${args[@]}"} || first=$?
[ "$first" -eq 2 ] && exit 2  # interrupted, or a usage error: the second pass would say the same
[ "$fast" -eq 1 ] && exit "$first"
second=0
.venv/bin/python -m pytest -m hosts ${args[@]+"${args[@]}"} || second=$?
for code in "$first" "$second"; do
  [ "$code" -ne 0 ] && [ "$code" -ne 5 ] && exit "$code"
done
[ "$first" -eq 5 ] && [ "$second" -eq 5 ] && exit 5
exit 0
