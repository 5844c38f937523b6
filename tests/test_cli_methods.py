"""`loco trace` and `loco localize` as a user runs them: the JSON results and images agree with the Python
reference (tests/fixtures/refs/methods/, tools/fixtures/refs_methods.py), and invalid requests (unknown site,
subject not in the prompt, window past the last layer, empty prompt sets) are one clear line on stderr."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from test_cli import FIX, SD1, one_line_error, png_pixels, run

CLIP = FIX / "models" / "clip-tiny"
REFS = FIX / "refs" / "methods"


def read_safetensors(path):
    """(tensors, metadata) of a reference file, numpy only (the method references also hold F64 and I64)."""
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    md = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "F64": np.float64, "U8": np.uint8, "I64": np.int64, "F16": np.float16}
    out = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=dtypes[h["dtype"]]).reshape(h["shape"])
    return out, md


def meta(ref):
    """Metadata values: JSON where the generator JSON-encoded them, plain strings otherwise."""
    out = {}
    for k, v in read_safetensors(ref)[1].items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def common(m):
    return ["--model", SD1, "--clip", CLIP, "--steps", m["steps"], "--guidance", m["guidance"], "--width", m["width"],
            "--height", m["height"], "--device", "cpu", "--quiet"]


def test_localize_matches_reference(tmp_path):
    """The reference's first prompt and seed (the C tests cover the whole set)."""
    ref = REFS / "locogen_sd1.safetensors"
    t, m = read_safetensors(ref)[0], meta(ref)
    seed = m["seeds"][0]
    r = run("localize", *common(m), "--kind", m["kind"], "--window", m["window"], "--out", tmp_path, "--images",
            "--prompt", m["prompts"][0], "--altered", m["altered"][0], "--seed", seed, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "locogen.json").read_text())
    assert res["window"] == m["window"] and len(res["windows"]) == len(m["windows"])
    want = t["cosine_original"][0, 0, 1:]  # [window]: one prompt and seed, so the mean is the value
    got = np.array([w["mean_cosine_original"] for w in res["windows"]])
    assert np.abs(got - want).max() <= 1e-4
    best = int(np.argmin(want))
    assert res["best_window"]["start"] == best
    assert res["best_window"]["layers"] == m["cross_layers"][best:best + m["window"]]
    per_set = 1 + len(m["windows"])
    assert png_pixels(tmp_path / "grid.png").shape == (64, per_set * 64 + (per_set - 1) * 4, 3)
    # one window's image as a file, against the reference pixels
    img = png_pixels(tmp_path / f"img_p0_s{seed}_w0.png").astype(int)
    assert np.abs(img - t["images"][0, 0, 1].astype(int)).max() <= 2
    assert np.abs(png_pixels(tmp_path / f"img_p0_s{seed}_unedited.png").astype(int)
                  - t["images"][0, 0, 0].astype(int)).max() <= 2


def test_trace_unet_components_match_reference(tmp_path):
    ref = REFS / "trace_sd1.safetensors"
    t, m = read_safetensors(ref)[0], meta(ref)
    picks = [0, 17, len(m["components"]) - 1]
    args = ["trace", *common(m), "--prompt", m["prompt"], "--subject", m["subject"], "--attribute", m["attribute"],
            "--seed", m["seed"], "--noise-seed", m["noise_seed"], "--noise-scale", m["scale"], "--scope", "unet",
            "--out", tmp_path]
    for i in picks:
        args += ["--component", m["components"][i]]
    r = run(*args, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "trace.json").read_text())
    assert res["subject_positions"] == list(t["subject_positions"])
    assert abs(res["clean"]["cosine"] - float(t["clean_cosine"][0])) <= 1e-4
    assert abs(res["corrupted"]["cosine"] - float(t["corrupted_cosine"][0])) <= 1e-4
    for e, i in zip(res["unet"], picks):
        assert e["site"] == m["components"][i]
        assert abs(e["cosine"] - float(t["unet_cosine"][i])) <= 1e-4
    assert np.abs(png_pixels(tmp_path / "clean.png").astype(int) - t["clean_image"].astype(int)).max() <= 2
    assert "text_encoder" not in res


def test_trace_text_writes_heatmaps(tmp_path):
    ref = REFS / "trace_sd1.safetensors"
    t, m = read_safetensors(ref)[0], meta(ref)
    r = run("trace", *common(m), "--prompt", m["prompt"], "--subject", m["subject"], "--attribute", m["attribute"],
            "--seed", m["seed"], "--noise-seed", m["noise_seed"], "--scope", "text", "--positions", "2,5",
            "--out", tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "trace.json").read_text())["text_encoder"]
    assert res["positions"] == [2, 5] and res["layers"] == 3
    for mi, mod in enumerate(("self_attn", "mlp")):
        got = np.array(res[mod])
        want = t["text_cosine"][:, mi, [2, 5]]
        assert np.abs(got - want).max() <= 1e-4
        assert png_pixels(tmp_path / f"heatmap_{mod}.png").shape == (3 * 16, 2 * 16, 3)


@pytest.mark.parametrize("args,needles", [
    (["trace", "--prompt", "a house by van gogh", "--subject", "monet"], ["subject tokens are not in the prompt"]),
    (["trace", "--prompt", "a house by van gogh", "--subject", "van gogh", "--component", "down_blocks.9.resnets.0"],
     ["unknown UNet site 'down_blocks.9.resnets.0'"]),
    (["localize", "--prompt", "a house", "--altered", "a painting", "--start", "10"], ["past the last"]),
    (["localize", "--prompt", "a house", "--altered", "a painting", "--window", "12"], ["does not fit"]),
    # a repeated window or seed would be scored twice and its copies ranked by float noise
    (["localize", "--prompt", "a house", "--altered", "a painting", "--start", "2", "--start", "2"],
     ["window start 2 is given twice"]),
    (["localize", "--prompt", "a house", "--altered", "a painting", "--seed", "5", "--seed", "5"],
     ["seed 5 is given twice"]),
])
def test_invalid_requests(tmp_path, args, needles):
    r = run(*args, "--model", SD1, "--clip", CLIP, "--steps", "1", "--width", "64", "--height", "64", "--quiet",
            "--device", "cpu", "--out", tmp_path)
    one_line_error(r, *needles)


def test_usage_errors(tmp_path):
    one_line_error(run("localize", "--model", SD1, "--clip", CLIP), "at least one --prompt")
    one_line_error(run("localize", "--model", SD1, "--clip", CLIP, "--prompt", "a", "--altered", "b", "--altered", "c"),
                   "one --altered per --prompt")
    one_line_error(run("trace", "--model", SD1, "--prompt", "a", "--subject", "a"), "--clip is required")
    one_line_error(run("trace", "--model", SD1, "--clip", CLIP, "--prompt", "a", "--subject", "a", "--scope", "vae"),
                   "--scope must be")
