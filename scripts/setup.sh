#!/usr/bin/env bash
# Install what flambe-cluster needs on a Debian/Ubuntu machine: OpenSSH (client
# and server), rsync, iproute2 and python3 with venv (apt, when run as root),
# then flambe-cluster itself into the virtual environment .venv of this checkout
# (made with $PYTHON, default python3).
#   scripts/setup.sh         the package
#   scripts/setup.sh --dev   the package with its test dependencies and the example provider,
#                            plus Chromium (the report-site test loads its page headless)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v ssh >/dev/null || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v rsync >/dev/null || missing+=(rsync)
command -v ip >/dev/null || missing+=(iproute2)
command -v ps >/dev/null || missing+=(procps)
[ -x /usr/bin/python3 ] || missing+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
"${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# nft: the fault tests drop packets inside a test host's own network namespace
[ "${1:-}" = "--dev" ] && ! command -v nft >/dev/null && [ "$(id -u)" -eq 0 ] && missing+=(nftables)
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    missing+=(chromium)
  else
    echo "chromium is missing: the report-site test will be skipped (install it as root: apt-get install chromium)" >&2
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# The install is editable: code changes need none. It runs again only when what it reads changed (the stamp).
stamp=$(cat pyproject.toml examples/inventory-provider/pyproject.toml | sha256sum | cut -d' ' -f1)-"${1:-plain}"
if [ "$(cat .venv/.flambe-setup 2>/dev/null)" != "$stamp" ]; then
  if [ "${1:-}" = "--dev" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' -e ./examples/inventory-provider
  else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
  fi
  echo "$stamp" > .venv/.flambe-setup
fi
