"""How a model's scheduler config is read, where diffusers reads it in a way the fixtures' own
configs never show: StableDiffusionPipeline (SD 1.x/2.x, not SD-XL) rewrites an old config's
steps_offset to 1 and its clip_sample to false when it loads, and a named dpmpp_2m is DPM++ 2M
whatever DPMSolver form the model's config holds. Each case runs a copy of a fixture model with
an edited scheduler config and compares it with the unedited model, whose outputs the
diffusers-parity tests check (test_pipeline, test_cli). The edited cases were compared with
diffusers 0.42.1 itself (StableDiffusionPipeline / StableDiffusionXLPipeline.from_pretrained on
the edited folders) when this was written."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / os.environ.get("LOCO_BUILD", "build")
LOCO = BUILD / "loco"
MODELS = ROOT / "tests" / "fixtures" / "models"


def edited_model(tmp_path, name, scheduler_class=None, **changes):
    """A folder that links every file of the fixture model but the scheduler config (and
    model_index.json when the class changes), which it rewrites with `changes`."""
    src, dst = MODELS / name, tmp_path / name
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).symlink_to(f)
    cfg_path = dst / "scheduler" / "scheduler_config.json"
    cfg = json.loads((src / "scheduler" / "scheduler_config.json").read_text())
    cfg.update(changes)
    if scheduler_class:
        cfg["_class_name"] = scheduler_class
        idx = json.loads((src / "model_index.json").read_text())
        idx["scheduler"] = ["diffusers", scheduler_class]
        (dst / "model_index.json").unlink()
        (dst / "model_index.json").write_text(json.dumps(idx))
    cfg_path.unlink()
    cfg_path.write_text(json.dumps(cfg))
    return dst


def final_latents(model, tmp_path, tag, *args):
    out = tmp_path / f"{tag}.safetensors"
    r = subprocess.run([str(LOCO), "generate", "--model", str(model), "--prompt", "a photo of a red cube", "--seed",
                        "36", "--steps", "5", "--output", str(tmp_path / f"{tag}.png"), "--latents-out", str(out),
                        "--quiet", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


@pytest.mark.parametrize("name", ["sd1-tiny", "sd2-tiny"])
@pytest.mark.parametrize("scheduler", [None, "euler", "ddim"])
def test_sd_pipeline_sets_an_old_steps_offset_to_one(tmp_path, name, scheduler):
    args = ["--scheduler", scheduler] if scheduler else []
    old = edited_model(tmp_path, name, steps_offset=0)
    assert final_latents(old, tmp_path, "old", *args) == final_latents(MODELS / name, tmp_path, "ref", *args)


@pytest.mark.parametrize("scheduler_class", ["DDIMScheduler", "DDPMScheduler"])
def test_sd_pipeline_turns_clip_sample_off(tmp_path, scheduler_class):
    # clip_sample true in the file, and absent (the DDIM/DDPM class default is true): both off
    kind = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm"}[scheduler_class]
    ref = final_latents(MODELS / "sd1-tiny", tmp_path, "ref", "--scheduler", kind)
    on = edited_model(tmp_path / "on", "sd1-tiny", scheduler_class, clip_sample=True)
    assert final_latents(on, tmp_path, "on") == ref
    absent = edited_model(tmp_path / "absent", "sd1-tiny", scheduler_class)
    cfg_path = absent / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["clip_sample"]
    cfg_path.write_text(json.dumps(cfg))
    assert final_latents(absent, tmp_path, "absent") == ref


def test_sdxl_pipeline_keeps_the_config_as_written(tmp_path):
    # StableDiffusionXLPipeline has no such rewrite: steps_offset 0 shifts the leading timesteps
    old = edited_model(tmp_path, "sdxl-tiny", steps_offset=0)
    assert final_latents(old, tmp_path, "old") != final_latents(MODELS / "sdxl-tiny", tmp_path, "ref")


def test_named_dpmpp_2m_is_dpmpp_2m_whatever_the_model_config_holds(tmp_path):
    sde = edited_model(tmp_path, "sd1-tiny", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++",
                       solver_order=3)
    ref = final_latents(MODELS / "sd1-tiny", tmp_path, "ref", "--scheduler", "dpmpp_2m")
    assert final_latents(sde, tmp_path, "named", "--scheduler", "dpmpp_2m") == ref
    # with no scheduler named the model's own (SDE, third order) form runs, as diffusers runs it
    assert final_latents(sde, tmp_path, "default") != ref
