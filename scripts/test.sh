#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine
# (system packages when run as root, the project with its dev extras, the
# example third-party provider), then run the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ssh >/dev/null || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v rsync >/dev/null || missing+=(rsync)
command -v ip >/dev/null || missing+=(iproute2)
command -v ps >/dev/null || missing+=(procps)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing system packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]' -e ./examples/inventory-provider
exec python3 -m pytest "$@"
