#!/usr/bin/env python3
"""Check that diffusers loads the diffusers folders `loco edit` exports and reproduces loco's edited images.

  python tools/check_edit_export.py [--loco build/loco] [--out tests/fixtures/refs/edit_export_check.json]

For each case below it runs `loco edit <method> ... --export-folder DIR` on a tiny fixture model, then, with
diffusers only:
  1. loads DIR with the pipeline class of model_index.json (float32, offline) -> the load itself is the first check;
  2. compares the exported edited tensors with tools/fixtures/refs_edits.py's float64 reference (rel. L2);
  3. generates loco's "after" prompt with the same seed/steps/size and compares the image with loco's after-0.png
     (max |pixel difference|, in 1/255), and the unedited base's image with loco's before-0.png.
The results are written as JSON (committed, so the check's outcome is on record without torch). Exit code 1 if any
check fails: the folder must load, weights within 1e-6, images within 2/255.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from fixtures import common  # noqa: E402  (offline env before torch/diffusers)

PROMPT = "a house in the style of van gogh"
CASES = [
    dict(name="sd1-locoedit", model="sd1-tiny", method="locoedit", args=["--concept", "van gogh", "--start", "6"],
         dtype="keep", ref=("locoedit", "w64.", "unet")),
    dict(name="sd1-quickfix", model="sd1-tiny", method="quickfix", args=["--concept", "van gogh"], dtype="keep",
         ref=("quickfix", "w64.text_encoder.", "text_encoder")),
    dict(name="sd2-locoedit-f32", model="sd2-tiny", method="locoedit",
         args=["--concept", "van gogh", "--start", "5"], dtype="f32", ref=("locoedit", "w64.", "unet")),
    dict(name="sdxl-locoedit-f32", model="sdxl-tiny", method="locoedit",
         args=["--concept", "van gogh", "--start", "9", "--layers", "3"], dtype="f32", ref=("locoedit", "w64.", "unet")),
]
STEPS, SEED = 4, 0


def run_case(loco: Path, c: dict, tmp: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    import diffusers

    out = tmp / c["name"]
    folder = out / "model"
    cmd = [str(loco), "edit", c["method"], "--model", str(common.MODELS / c["model"]), "--out", str(out),
           "--export-folder", str(folder), "--export-dtype", c["dtype"], "--eval-prompt", PROMPT, "--seed", str(SEED),
           "--steps", str(STEPS), "--width", "64", "--height", "64", "--quiet", *c["args"]]
    subprocess.run(cmd, check=True)
    result = json.loads((out / "result.json").read_text())
    rec = {"case": c["name"], "command": " ".join(cmd[1:]).replace(str(tmp), "$TMP").replace(str(REPO) + "/", ""),
           "export_dtype": c["dtype"]}

    index = json.loads((folder / "model_index.json").read_text())
    cls = getattr(diffusers, index["_class_name"])
    kw = {"torch_dtype": torch.float32, "local_files_only": True}
    if index["_class_name"] == "StableDiffusionXLPipeline":
        kw["add_watermarker"] = False
    else:
        kw.update(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(str(folder), **kw)
    pipe.set_progress_bar_config(disable=True)
    rec["diffusers_loaded"] = type(pipe).__name__

    # exported edited tensors vs the Python reference of the same edit
    method, prefix, comp = c["ref"]
    ref = load_file(str(common.REFS / c["model"] / f"edit_{method}.safetensors"))
    st = load_file(str(next((folder / comp).glob("*.safetensors"))))
    worst = 0.0
    for t in result["changed_tensors"]:
        if t["component"] != comp:
            continue
        want = ref[prefix + t["name"]]
        got = st[t["name"]].double()
        worst = max(worst, float((got - want).norm() / want.norm()))
    rec["edited_tensors"] = len(result["changed_tensors"])
    rec["weights_rel_err_vs_reference"] = worst

    def image(p):
        r = pipe(prompt=PROMPT, num_inference_steps=STEPS, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")
        return np.asarray(r.images[0]).astype(np.int32)

    after = image(pipe)
    loco_after = np.asarray(Image.open(out / "after-0.png").convert("RGB")).astype(np.int32)
    rec["after_max_pixel_diff"] = int(np.abs(after - loco_after).max())
    base = diffusers.DiffusionPipeline.from_pretrained(str(common.MODELS / c["model"]), **kw,
                                                       **({"variant": "fp16"} if c["model"] == "sd2-tiny" else {}))
    base.set_progress_bar_config(disable=True)
    before = np.asarray(base(prompt=PROMPT, num_inference_steps=STEPS, height=64, width=64,
                             generator=torch.Generator("cpu").manual_seed(SEED)).images[0]).astype(np.int32)
    loco_before = np.asarray(Image.open(out / "before-0.png").convert("RGB")).astype(np.int32)
    rec["before_max_pixel_diff"] = int(np.abs(before - loco_before).max())
    rec["edit_changed_image_max_pixel"] = int(np.abs(after - before).max())
    rec["ok"] = worst <= 1e-6 and rec["after_max_pixel_diff"] <= 2 and rec["before_max_pixel_diff"] <= 2
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loco", default=str(REPO / "build" / "loco"))
    ap.add_argument("--out", default=str(common.REFS / "edit_export_check.json"))
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    common.deterministic()
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        recs = [run_case(Path(args.loco), c, Path(tmp)) for c in CASES]
    doc = {"what": "diffusers loads loco's exported diffusers folders and reproduces loco's edited images "
                   "(tools/check_edit_export.py)",
           "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "transformers": transformers.__version__},
           "tolerances": {"weights_rel_err_vs_reference": 1e-6, "max_pixel_diff": 2},
           "cases": recs, "all_ok": all(r["ok"] for r in recs)}
    common.write_json(Path(args.out), doc)
    print(json.dumps(doc, indent=2))
    sys.exit(0 if doc["all_ok"] else 1)


if __name__ == "__main__":
    main()
