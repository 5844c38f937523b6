#!/usr/bin/env bash
# `make run`: locod on the bundled demo model (tests/fixtures/models/sd1-tiny), listening on
# 127.0.0.1:8080 with no keys (loopback only), data in build/locod-data. Extra arguments go to
# locod, e.g. scripts/run-daemon.sh --listen 127.0.0.1:9000.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
if [ -x "$BUILD/locod" ]; then
  exec "$BUILD/locod" --config config/locod.example.json "$@"
fi
echo "run-daemon.sh: $BUILD/locod is not built; run make first" >&2
exit 1
