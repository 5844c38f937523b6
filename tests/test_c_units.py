"""Runs the C unit-test binaries (tests/unit/test_*.c), one pytest item per C test case.

A C test that calls SKIP() exits with 77 and is reported as skipped (GPU tests on machines
without a GPU), never as passed.

The GPU test files (test_cuda_*.c) are also built against the CUDA backend compiled for the
CPU kernel emulator (tests/emu/cuda_emu.h, build/tests/emu/): those items, named emu/..., run
the CUDA backend's host code and kernels on the CPU on every machine where nvcc exists. They
pass on emulated threads, not on a GPU; the GPU runs are the items without the emu/ prefix.
The emulated UNet calls also run with the opt-in Hopper kernels switched on (items named
emu[LOCO_CUDA_FLASH=wgmma]/..., as bench/gpu-check.sh reruns them on a GPU)."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / os.environ.get("LOCO_BUILD", "build")


def _cases():
    out = []
    for src in sorted((ROOT / "tests" / "unit").glob("test_*.c")):
        binary = BUILD / "tests" / src.stem
        if not binary.exists():
            out.append(pytest.param(str(binary), "<missing>", id=f"{src.stem}::<not built>"))
            continue
        names = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True).stdout.split()
        out += [pytest.param(str(binary), n, id=f"{src.stem}::{n}") for n in names]
    cuda_built = "cuda=1" in (BUILD / ".flavour").read_text() if (BUILD / ".flavour").exists() else False
    sanitized = "sanitize=-" in (BUILD / ".flavour").read_text() if (BUILD / ".flavour").exists() else False
    for src in sorted((ROOT / "tests" / "unit").glob("test_cuda_*.c")):
        binary = BUILD / "tests" / "emu" / src.stem
        if not binary.exists():
            if cuda_built and not sanitized:
                out.append(pytest.param(str(binary), "<missing>", id=f"emu/{src.stem}::<not built>"))
            continue
        names = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True).stdout.split()
        out += [pytest.param(str(binary), n, id=f"emu/{src.stem}::{n}") for n in names]
        if src.stem == "test_cuda_pipeline":
            for env, prefixes in OPT_IN:
                out += [pytest.param(str(binary), n, env, id=f"emu[{env}]/{src.stem}::{n}")
                        for n in names if n.startswith(prefixes)]
        if src.stem == "test_cuda_optin":
            out += [pytest.param(str(binary), n, REVERSE, id=f"emu[{REVERSE}]/{src.stem}::{n}")
                    for n in names if n.startswith(REVERSED)]
    return out


# the opt-in kernels' reruns of emulated model calls: wgmma attention and convolution on the UNet
# calls; the mma.sync kernel's ilp3q variant and wgmma attention with 128-key tiles, three
# warpgroups or a producer warp (warp-specialised, three warpgroups) on SD-XL's (head dim 64, SD-XL's own; their op tests cover 40 and 80); the row-tap convolutions (f32's default, forced here on every conv they
# apply to, f16 included) on the VAE decodes (the op tests cover their f16 forms). Each emulated
# UNet call takes 14-19 s on 2 cores, so the reruns are chosen, not all.
OPT_IN = (("LOCO_CUDA_FLASH=wgmma", ("cuda_unet_call_",)),
          ("LOCO_CUDA_FLASH=ilp3q", ("cuda_unet_call_sdxl",)),
          ("LOCO_CUDA_FLASH=wgmma3", ("cuda_unet_call_sdxl",)),
          ("LOCO_CUDA_FLASH=wgmma128", ("cuda_unet_call_sdxl",)),
          ("LOCO_CUDA_FLASH=wgmma_ws3", ("cuda_unet_call_sdxl",)),
          ("LOCO_CUDA_CONV=wgmma", ("cuda_unet_call_",)),
          ("LOCO_CUDA_CONV=rows", ("cuda_vae_decode_",)))


# The warp-specialised kernels' op tests again under the emulator's reverse schedule (the highest
# warp first, TMA copies and cp.async arrivals landing as issued: a producer runs ahead of every
# consumer, and a consumer can read what other consumers have not yet written).
REVERSE = "LOCO_EMU_SCHEDULE=reverse"
REVERSED = ("cuda_attention_wgmma_ws", "cuda_linear_geglu_wgmma", "cuda_linear_wgmma", "cuda_conv2d_tma",
            "cuda_ln_linear")


def _with_env(params):
    """Every case as (binary, name, env): env is "" or one VAR=value for the run."""
    return [p if len(p.values) == 3 else pytest.param(*p.values, "", id=p.id) for p in params]


@pytest.mark.parametrize("binary,name,env", _with_env(_cases()))
def test_c(binary, name, env):
    assert name != "<missing>", f"{binary} was not built: run make"
    run_env = dict(os.environ)
    if env:
        var, value = env.split("=", 1)
        run_env[var] = value
    r = subprocess.run([binary, name], capture_output=True, text=True, cwd=ROOT, timeout=600, env=run_env)
    if r.returncode == 77:
        pytest.skip(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "skipped")
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
