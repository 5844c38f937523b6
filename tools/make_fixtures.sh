#!/usr/bin/env bash
# Regenerate tests/fixtures/ and config/tokenizers/ with torch + diffusers + transformers (pinned in
# tools/requirements.txt). Creates the venv .venv-tools/ in the repo root if missing. Needs PyPI, nothing else:
# every model is built locally (HF_HUB_OFFLINE=1). Extra arguments go to tools/make_fixtures.py
# (e.g. --stages pipelines,manifest).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tools
PY=${PYTHON3:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.requirements.sha256"
WANT=$(sha256sum tools/requirements.txt | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r tools/requirements.txt
    echo "$WANT" > "$STAMP"
fi
# the real CLIP BPE merges ship inside open_clip's wheel (open_clip/bpe_simple_vocab_16e6.txt.gz)
mkdir -p "$VENV/downloads"
if [ ! -f "$VENV/downloads/open_clip_torch-3.3.0-py3-none-any.whl" ]; then
    "$VENV/bin/python" -m pip download --quiet --no-deps open_clip_torch==3.3.0 -d "$VENV/downloads"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec "$VENV/bin/python" tools/make_fixtures.py --bpe "$VENV/downloads/open_clip_torch-3.3.0-py3-none-any.whl" "$@"
