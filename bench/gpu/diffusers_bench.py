"""The diffusers baseline of bench/gpu-check.sh: the same full-size architectures as loco's
pipeline_bench.c, built from the same config.json files (config/model-defaults/<family>/) with
random weights, run as users run diffusers: fp16 on CUDA, PyTorch SDPA attention (diffusers'
default AttnProcessor2_0), the family's default scheduler and guidance, SD-XL's VAE upcast to
fp32 for the decode (its config's force_upcast, diffusers' default), PIL output.

Timing follows pipeline_bench.c exactly: one 2-step warm-up generate at the same size and
batch, then one timed generate of T steps with a CUDA synchronize and a clock reading after each
UNet call (callback_on_step_end); a whole N-step image is estimated as
    total(T) + (calls(N) - calls(T)) * median call time
(nothing is extrapolated when T = N). Prints one RESULT line per batch:
    RESULT impl=diffusers family=sd1 size=512 batch=1 steps=50 timed_steps=50 calls=51 total_s=...
           s_per_image=... call_ms=... text_s=... decode_s=...
and, with --matmul, the card's measured fp16 matrix rate (torch.matmul 8192^3, median of 20):
    RESULT impl=torch matmul_tflops=...

Usage: diffusers_bench.py --family sd1|sd2|sdxl [--size PX] [--batch 1,8] [--steps 50]
                          [--timed-steps 50,10] [--device cuda] [--dtype fp16|fp32]
       diffusers_bench.py --matmul
The weights are random (torch's default init, on the device); timings do not depend on values."""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_tflops(n=8192, reps=20):
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.matmul(a, b)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2.0 * n ** 3 / statistics.median(times) / 1e12


def load_json(path):
    with open(path) as f:
        return json.load(f)


def build(family, device, dtype):
    """The pipeline of config/model-defaults/<family>, random weights made on `device`."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cdir = os.path.join(ROOT, "config", "model-defaults", family)
    tok_dir = os.path.join(ROOT, "config", "tokenizers", "clip")
    index = load_json(os.path.join(cdir, "model_index.json"))

    def tokenizer(pad_bang):
        # loco's bundled CLIP vocabulary; OpenCLIP's tokenizers pad with "!"
        kw = {"pad_token": "!"} if pad_bang else {}
        return CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
                             model_max_length=77, **kw)

    def text_encoder(component):
        cfg = CLIPTextConfig.from_json_file(os.path.join(cdir, component, "config.json"))
        cls = CLIPTextModelWithProjection if index[component][1] == "CLIPTextModelWithProjection" else CLIPTextModel
        return cls(cfg)

    with torch.device(device):  # parameters are created (and randomly initialised) on the device
        unet = UNet2DConditionModel.from_config(load_json(os.path.join(cdir, "unet", "config.json")))
        vae = AutoencoderKL.from_config(load_json(os.path.join(cdir, "vae", "config.json")))
        te = text_encoder("text_encoder")
        te2 = text_encoder("text_encoder_2") if family == "sdxl" else None
    sched_cls = getattr(diffusers, index["scheduler"][1])
    scheduler = sched_cls.from_config(load_json(os.path.join(cdir, "scheduler", "scheduler_config.json")))
    if family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tokenizer(False), tokenizer_2=tokenizer(True),
            unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            add_watermarker=False)
    else:
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=te, tokenizer=tokenizer(family == "sd2"), unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def calls_for(pipe, steps, device):
    pipe.scheduler.set_timesteps(steps, device=device)
    return len(pipe.scheduler.timesteps)


def run(pipe, size, batch, steps, device):
    """One generate; returns (t0, per-call times, t1)."""
    marks = []

    def on_step(p, i, t, kwargs):
        sync(device)
        marks.append(time.perf_counter())
        return kwargs

    gen = torch.Generator("cpu").manual_seed(42)
    sync(device)
    t0 = time.perf_counter()
    out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_images_per_prompt=batch, num_inference_steps=steps,
               height=size, width=size, generator=gen, callback_on_step_end=on_step)
    sync(device)
    t1 = time.perf_counter()
    assert len(out.images) == batch
    return t0, marks, t1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["sd1", "sd2", "sdxl"])
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--timed-steps", default="")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--matmul", action="store_true")
    a = ap.parse_args()
    if a.matmul:
        print(f"RESULT impl=torch matmul_tflops={matmul_tflops():.1f} device={torch.cuda.get_device_name()!r}",
              flush=True)
        return 0
    if not a.family:
        ap.error("--family or --matmul is required")
    import diffusers

    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    t = time.perf_counter()
    pipe = build(a.family, a.device, dtype)
    size = a.size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    print(f"diffusers_bench: diffusers {diffusers.__version__}, torch {torch.__version__} on "
          f"{torch.cuda.get_device_name() if a.device.startswith('cuda') else a.device}; {a.family} built in "
          f"{time.perf_counter() - t:.1f} s ({a.dtype}, attention {type(pipe.unet.attn_processors[next(iter(pipe.unet.attn_processors))]).__name__})",
          file=sys.stderr, flush=True)
    batches = [int(x) for x in a.batch.split(",") if x]
    timed = [int(x) for x in a.timed_steps.split(",") if x]
    calls_n = calls_for(pipe, a.steps, a.device)
    rc = 0
    with torch.inference_mode():
        for bi, batch in enumerate(batches):
            t_steps = timed[bi] if bi < len(timed) else (timed[-1] if timed else a.steps)
            if t_steps < 2 or t_steps > a.steps:
                t_steps = a.steps
            try:
                run(pipe, size, batch, 2, a.device)  # warm-up
                t0, marks, t1 = run(pipe, size, batch, t_steps, a.device)
            except Exception as e:  # out of memory and the like: report, go on with the next batch
                print(f"diffusers_bench: {a.family} batch {batch}: {type(e).__name__}: {e}", file=sys.stderr)
                print(f"RESULT impl=diffusers family={a.family} size={size} batch={batch} steps={a.steps} "
                      f"error={type(e).__name__}", flush=True)
                rc = 1
                if a.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            calls_t = calls_for(pipe, t_steps, a.device)
            d = sorted(marks[i] - marks[i - 1] for i in range(1, len(marks)))
            call_s = d[len(d) // 2] if d else 0.0
            total = (t1 - t0) + (calls_n - calls_t) * call_s
            print(f"RESULT impl=diffusers family={a.family} size={size} batch={batch} steps={a.steps} "
                  f"timed_steps={t_steps} calls={calls_n} total_s={total:.4f} s_per_image={total / batch:.4f} "
                  f"call_ms={call_s * 1e3:.3f} text_s={marks[0] - t0 - call_s:.4f} decode_s={t1 - marks[-1]:.4f}",
                  flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
