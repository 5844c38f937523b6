"""`loco edit locoedit|quickfix|neurons` as a user runs it on the tiny fixtures: a result JSON that matches the
Python reference's edited weights (tools/fixtures/refs_edits.py), a delta file holding only the changed tensors, a
diffusers folder, before/after images; and invalid requests failing with one line that names the problem."""
import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / os.environ.get("LOCO_BUILD", "build")
LOCO = BUILD / "loco"
FIX = ROOT / "tests" / "fixtures"
SD1 = FIX / "models" / "sd1-tiny"
GEN = ["--steps", "3", "--width", "64", "--height", "64", "--quiet"]


def run(*args, timeout=300):
    return subprocess.run([str(LOCO), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def fail(*args):
    """A run expected to fail: --quiet, so stderr holds only the error line."""
    return run(*args, "--quiet")


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "F16": np.float16}
    out = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + b : 8 + n + e], dtype=dtypes[h["dtype"]]).reshape(h["shape"])
    return out, meta


def one_line_error(r, *needles):
    assert r.returncode in (1, 2), f"expected failure, got rc {r.returncode}: {r.stdout[:200]}"
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {r.stderr!r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def test_locoedit_result_delta_folder_images(tmp_path):
    out = tmp_path / "le"
    r = run("edit", "locoedit", "--model", SD1, "--concept", "van gogh", "--start", "6", "--out", out,
            "--export-folder", out / "model", *GEN)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["method"] == "locoedit" and res["family"] == "sd1"
    assert res["report"]["cross_layers"] == [6, 7]
    assert len(res["changed_tensors"]) == 4 and res["variant_bytes"] == 4 * 40 * 32 * 4
    for m in res["report"]["matrices"]:
        assert m["solver"] == "push_through" and m["fit_after"] < m["fit_before"]
    ref, _ = read_safetensors(FIX / "refs" / "sd1-tiny" / "edit_locoedit.safetensors")
    delta, meta = read_safetensors(out / "delta.safetensors")
    assert meta["loco_format"] == "loco-delta-1" and json.loads(meta["edits"])[0]["method"] == "locoedit"
    assert set(delta) == {"unet." + t["name"] for t in res["changed_tensors"]}
    for name, t in delta.items():
        assert rel(t, ref["w64." + name[len("unet."):]]) < 1e-6
    # the folder is a diffusers model: model_index, configs, weights, tokenizer
    folder = out / "model"
    idx = json.loads((folder / "model_index.json").read_text())
    assert idx["_class_name"] == "StableDiffusionPipeline"
    for f in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
              "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
              "scheduler/scheduler_config.json"):
        assert (folder / f).is_file(), f
    # before/after images: same prompt and seed, the edit changes the picture
    assert len(res["images"]) == 2
    for im in res["images"]:
        a = np.asarray(Image.open(im["before"]).convert("RGB"))
        b = np.asarray(Image.open(im["after"]).convert("RGB"))
        assert a.shape == (64, 64, 3) and np.abs(a.astype(int) - b).max() > 0
    # the exported folder generates what the variant generated
    r2 = run("generate", "--model", folder, "--prompt", res["images"][0]["prompt"], "--seed", "0", "--steps", "3",
             "--width", "64", "--height", "64", "--output", tmp_path / "again.png", "--quiet")
    assert r2.returncode == 0, r2.stderr
    again = np.asarray(Image.open(tmp_path / "again.png").convert("RGB"))
    assert np.array_equal(again, np.asarray(Image.open(res["images"][0]["after"]).convert("RGB")))


def test_quickfix_and_neurons(tmp_path):
    r = run("edit", "quickfix", "--model", SD1, "--concept", "van gogh", "--value-bias", "subtract", "--out",
            tmp_path / "qf", "--no-images", "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "qf" / "result.json").read_text())
    assert [t["name"] for t in res["changed_tensors"]] == ["text_model.encoder.layers.0.self_attn.out_proj.weight"]
    assert res["report"]["options"]["value_bias"] == "subtract" and "images" not in res
    ref, _ = read_safetensors(FIX / "refs" / "sd1-tiny" / "edit_quickfix.safetensors")
    delta, _ = read_safetensors(tmp_path / "qf" / "delta.safetensors")
    name = "text_model.encoder.layers.0.self_attn.out_proj.weight"
    assert rel(delta["text_encoder." + name], ref["w64.text_encoder.subtract." + name]) < 1e-6

    r = run("edit", "neurons", "--model", SD1, "--prompt", "a house in the style of van gogh", "--prompt",
            "a river in the style of van gogh", "--normal", "a house", "--normal", "a river", "--layer", "6",
            "--neurons", "5", "--out", tmp_path / "nr", *GEN)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "nr" / "result.json").read_text())
    assert res["ablations"] == 2 and res["changed_tensors"] == [] and len(res["images"]) == 2
    assert all(len(m["channels"]) == 5 for m in res["report"]["matrices"])
    delta, _ = read_safetensors(tmp_path / "nr" / "delta.safetensors")
    assert set(delta) == {"ablation.6.k.channels", "ablation.6.k.values", "ablation.6.v.channels",
                          "ablation.6.v.values"}
    # an inference-time ablation has no diffusers weight form
    r = run("edit", "neurons", "--model", SD1, "--prompt", "a house in the style of van gogh", "--prompt",
            "a river in the style of van gogh", "--normal", "a house", "--normal", "a river", "--layer", "6",
            "--neurons", "5", "--out", tmp_path / "nr2", "--export-folder", tmp_path / "nr2" / "m", "--no-images",
            "--quiet")
    one_line_error(r, "neuron ablations", "delta")


def test_invalid_requests(tmp_path):
    one_line_error(run("edit", "rome", "--model", SD1, "--out", tmp_path), "unknown method 'rome'")  # before options
    one_line_error(fail("edit", "locoedit", "--model", SD1, "--out", tmp_path), "--concept is required")
    one_line_error(fail("edit", "locoedit", "--model", SD1, "--concept", "van gogh", "--start", "10", "--out",
                       tmp_path, "--no-images"), "past the last layer")
    one_line_error(fail("edit", "locoedit", "--model", SD1, "--concept", "van gogh", "--templates", "none",
                       "--prompt", "a photo of a cat", "--out", tmp_path, "--no-images"),
                   "does not occur in the prompt 'a photo of a cat'")
    one_line_error(fail("edit", "neurons", "--model", SD1, "--prompt", "a house in the style of van gogh", "--out",
                       tmp_path, "--no-images"), "normal prompt set is empty")
    one_line_error(fail("edit", "neurons", "--model", SD1, "--prompt", "x van gogh", "--prompt", "y van gogh",
                       "--normal", "x", "--normal", "y", "--layer", "42", "--out", tmp_path, "--no-images"),
                   "layer 42 does not exist")
    one_line_error(fail("edit", "locoedit", "--model", SD1, "--concept", "van gogh", "--templates", "none",
                       "--prompt", "van gogh", "--prompt", "van gogh", "--lambda", "0", "--start", "6", "--out",
                       tmp_path, "--no-images"), "singular")
    one_line_error(fail("edit", "quickfix", "--model", SD1, "--concept", "van gogh", "--encoder", "2", "--out",
                       tmp_path, "--no-images"), "one text encoder")


@pytest.mark.parametrize("method,args,needle", [
    # options a method does not read are refused before the model loads, not ignored
    ("quickfix", ["--concept", "van gogh", "--layer", "1", "--layer", "2"], "give --layer once"),
    ("quickfix", ["--concept", "van gogh", "--lambda-k", "0.5"], "--lambda-k does not apply to quickfix"),
    ("quickfix", ["--concept", "van gogh", "--prompt", "a house by van gogh"], "--prompt does not apply to quickfix"),
    ("locoedit", ["--concept", "van gogh", "--no-augment"], "--no-augment does not apply to locoedit"),
    ("locoedit", ["--concept", "van gogh", "--layer", "3"], "--layer does not apply to locoedit"),
    ("neurons", ["--prompt", "a", "--prompt", "b", "--normal", "c", "--normal", "d", "--templates", "object"],
     "--templates does not apply to neurons"),
    ("neurons", ["--prompt", "a", "--prompt", "b", "--normal", "c", "--normal", "d", "--concept", "x"],
     "--concept does not apply to neurons"),
    ("locoedit", ["--concept", "van gogh", "--export-dtype", "f16"], "only with --export-folder"),
    ("locoedit", ["--concept", "van gogh", "--seed", "3"], "--seed shapes the before/after images"),
])
def test_options_of_another_method_are_refused(tmp_path, method, args, needle):
    r = fail("edit", method, "--model", tmp_path / "never-read", *args, "--out", tmp_path / "o", "--no-images")
    one_line_error(r, needle)
    assert not (tmp_path / "o").exists()  # refused before anything was made


def test_out_folder_is_created_with_its_parents(tmp_path):
    out = tmp_path / "runs" / "today" / "a"
    r = fail("edit", "quickfix", "--model", SD1, "--concept", "van gogh", "--out", out, "--no-images")
    assert r.returncode == 0, r.stderr
    assert (out / "result.json").exists()


def test_export_folder_never_copies_a_file_from_outside_the_model(tmp_path):
    """An export's files become artifacts any key may download: a symlink in a model folder that
    leads outside it (a 'notes.txt' linked to a secret) is not copied. The Hugging Face cache's
    own layout, where a snapshot's files are symlinks to <repo>/blobs, still exports whole."""
    import shutil
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    # a cache-like repo: blobs/ holds the files, snapshots/<rev>/ links to them
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / "0123abc"
    for f in SD1.rglob("*"):
        if f.is_file():
            blob = repo / "blobs" / f"{abs(hash(str(f))):x}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, blob)
            link = snap / f.relative_to(SD1)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (snap / "tokenizer" / "notes.txt").symlink_to(secret)
    out = tmp_path / "out"
    r = run("edit", "locoedit", "--model", snap, "--concept", "van gogh", "--start", "6", "--out", out,
            "--export-folder", out / "model", "--no-images", "--quiet")
    assert r.returncode == 0, r.stderr
    tok = out / "model" / "tokenizer"
    assert (tok / "vocab.json").read_bytes() == (SD1 / "tokenizer" / "vocab.json").read_bytes()
    assert (tok / "merges.txt").exists() and (tok / "tokenizer_config.json").exists()
    assert not (tok / "notes.txt").exists(), "a file from outside the model was exported"
