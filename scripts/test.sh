#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine,
# then run the whole suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
