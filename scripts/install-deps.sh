#!/usr/bin/env bash
# One install script for a fresh Debian 12 machine, used by the README, .ci/run and docker/.
# It installs the Debian packages the build needs and a Python venv (.venv) for the test clients.
# Usage: scripts/install-deps.sh [--no-venv]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

packages=(
  build-essential pkg-config
  libopenblas-pthread-dev        # CPU backend GEMMs
  libjansson-dev                 # JSON everywhere
  libmicrohttpd-dev              # HTTP server
  libuv1-dev                     # event loop in the daemon
  libsqlite3-dev                 # durable job store
  libspng-dev zlib1g-dev         # PNG output
  libutf8proc-dev                # Unicode NFC/categories for the CLIP tokenizer
  libssl-dev                     # SHA-256 for artifacts and API keys
  python3-venv curl
)

need=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ "${1:-}" != "--no-venv" ]; then
  if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
  fi
  "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/tests/requirements.txt"
fi
