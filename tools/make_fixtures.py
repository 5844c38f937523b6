#!/usr/bin/env python3
"""Regenerate tests/fixtures (tiny models + reference outputs) and config/tokenizers with torch + diffusers.

  tools/make_fixtures.sh                      # the usual entry (creates .venv-tools, then runs this)
  python tools/make_fixtures.py [--stages a,b] [--bpe PATH]

Stages, in order: vocab models ldm noise tokenizer text unet vae schedulers pipelines clip methods edits manifest.
Running all stages wipes tests/fixtures/{models,refs} first so no stale file survives. Deterministic: the same
versions (tools/requirements.txt) give byte-identical files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures import common  # noqa: E402  (sets HF_HUB_OFFLINE etc. before torch/diffusers import)

STAGES = ["vocab", "models", "ldm", "noise", "tokenizer", "text", "unet", "vae", "schedulers", "pipelines",
          "clip", "methods", "edits", "manifest"]
WHEEL = "open_clip_torch-3.3.0-py3-none-any.whl"


def find_bpe(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    dl = common.REPO / ".venv-tools" / "downloads"
    whl = dl / WHEEL
    if not whl.exists():
        dl.mkdir(parents=True, exist_ok=True)
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               "open_clip_torch==3.3.0", "-d", str(dl)])
    return whl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of: " + " ".join(STAGES))
    ap.add_argument("--bpe", default=None, help="open_clip wheel or bpe_simple_vocab_16e6.txt.gz")
    args = ap.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in stages:
        if s not in STAGES:
            ap.error(f"unknown stage {s!r}")

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    from fixtures import (ldm_export, manifest, refs_edits, refs_methods, refs_noise, refs_pipelines, refs_schedulers,
                          refs_text, refs_tokenizer, refs_unet_vae, tiny_clip, tiny_models, vocab)

    common.deterministic()
    # refs/edit_export_check.json is written by tools/check_edit_export.py (it needs a built
    # loco binary, so it is no stage here): a full regeneration keeps the last record instead of
    # deleting it; rerun that script afterwards to refresh it against the new fixtures.
    export_check = common.REFS / "edit_export_check.json"
    kept_export_check = export_check.read_bytes() if export_check.exists() else None
    if set(stages) == set(STAGES):
        for d in (common.MODELS, common.REFS):
            if d.exists():
                shutil.rmtree(d)
    if kept_export_check is not None and not export_check.exists():
        export_check.parent.mkdir(parents=True, exist_ok=True)
        export_check.write_bytes(kept_export_check)
    log = {}

    def stage(name, fn):
        if name not in stages:
            return
        t0 = time.time()
        common.deterministic()
        out = fn()
        print(f"[{name}] {time.time() - t0:.1f}s" + (f"  {out}" if isinstance(out, str) else ""), flush=True)
        log[name] = out

    gz = None
    if {"vocab", "models"} & set(stages):
        gz = vocab.read_bpe_gz(find_bpe(args.bpe))

    def do_vocab():
        vocab.write_real(gz)
        info = vocab.check_real_tokenizers()
        return f"config/tokenizers/clip ok, class {info['class']}"

    def do_models():
        import torch

        tv, tm = vocab.tiny_vocab(gz)
        for n in common.MODEL_NAMES:
            pipe = tiny_models.build(n, tv, tm)
            tiny_models.save(n, pipe, tv, tm)
            tiny_models.check_saved(n, pipe.to(torch.float32))
        return "sd1-tiny (fp32), sd2-tiny (fp16 variant), sdxl-tiny (bf16)"

    def do_ldm():
        notes = []
        for n in common.MODEL_NAMES:
            ldm_export.export(n)
            notes += ldm_export.verify(n)
        return "; ".join(notes)

    def do_tokenizer():
        r = refs_tokenizer.make()
        if r["mismatches"]:
            raise SystemExit(f"reference_encode disagrees with transformers on {len(r['mismatches'])} prompts")
        return f"{r['n']} prompts, reference_encode == transformers on all"

    stage("vocab", do_vocab)
    stage("models", do_models)
    stage("ldm", do_ldm)
    stage("noise", refs_noise.make)
    stage("tokenizer", do_tokenizer)
    stage("text", lambda: [refs_text.make(n) for n in common.MODEL_NAMES] and "ok")
    stage("unet", lambda: [refs_unet_vae.make_unet(n) for n in common.MODEL_NAMES] and "ok")
    stage("vae", lambda: [refs_unet_vae.make_vae(n) for n in common.MODEL_NAMES] and "ok")
    stage("schedulers", lambda: f"{len(refs_schedulers.make())} trajectories")
    stage("pipelines", lambda: f"{len(refs_pipelines.make())} pipelines")
    stage("clip", tiny_clip.make)
    stage("methods", refs_methods.make)
    stage("edits", lambda: ", ".join(x for n in common.MODEL_NAMES for x in refs_edits.make(n)))
    stage("manifest", manifest.write)
    print("done")


if __name__ == "__main__":
    main()
