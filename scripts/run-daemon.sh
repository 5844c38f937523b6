#!/usr/bin/env bash
# `make run`: the main job on the bundled demo model. Starts locod when it is built; until the
# daemon exists, generates demo.png with the CLI on the same model.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
if [ -x "$BUILD/locod" ]; then
  exec "$BUILD/locod" --config config/locod.example.json "$@"
fi
exec "$BUILD/loco" generate --model tests/fixtures/models/sd1-tiny --prompt "a photo of an astronaut riding a horse" \
  --seed 0 --steps 20 --output demo.png
