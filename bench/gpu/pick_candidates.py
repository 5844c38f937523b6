#!/usr/bin/env python3
"""Reads op_bench's rows (name ms rate unit, bench/gpu-check.sh's ops_loco.txt) and prints the
opt-in settings that beat the defaults on SD-XL's batch-8 shapes, as one line of VAR=value words
(empty when none wins), with the comparisons that chose them on stderr.

Why: a lent GPU's 15 minutes hold one full check; gpu-check times each candidate alone at SD-XL
batch 8, which tells which one helps but not what they give together. This line is the
combination the op rows predict, so that the same run times it end to end (phase 7, tag "best").

  python3 bench/gpu/pick_candidates.py ops_loco.txt
"""
import sys

# Weights: calls per SD-XL b8 UNet call, from run 6's profile (profile_sdxl_b8.txt: its counts
# over two calls, halved). The self-attention (4096 and 1024 tokens) and the LOCO_CUDA_FLASH
# value of each op_bench row suffix:
SELF_ROWS = {"sdxl_self_d64_4096_b16": 10, "sdxl_self_d64_1024_b16": 60}
FLASH = {"": None, "@fa_cudnn": "cudnn", "@fa_ilp3q": "ilp3q", "@fa_wgmma": "wgmma", "@fa_wgmma128": "wgmma128",
         "@fa_wgmma3": "wgmma3", "@fa_wgmma_ws": "wgmma_ws", "@fa_wgmma_ws3": "wgmma_ws3",
         "@fa_wgmma_ws128": "wgmma_ws128",
         # the producer publishing by cp.async.mbarrier.arrive (session 12)
         "@fa_wgmma_ws3_arrive": "wgmma_ws3 LOCO_CUDA_FLASH_LOAD=arrive",
         "@fa_wgmma_ws128_arrive": "wgmma_ws128 LOCO_CUDA_FLASH_LOAD=arrive",
         # ... loading K/V by TMA (session 12; head dim 64, all of SD-XL's attention)
         "@fa_wgmma_ws3_tma": "wgmma_ws3 LOCO_CUDA_FLASH_LOAD=tma",
         "@fa_wgmma_ws128_tma": "wgmma_ws128 LOCO_CUDA_FLASH_LOAD=tma"}
# the text cross-attention at 1024 and 4096 tokens (attention_short.cu by default; @short_off:
# the flash kernel)
CROSS_ROWS = {"sdxl_cross_d64_77_b16": 60, "sdxl_cross_d64_4096_77_b16": 10}
# gemm_wgmma.cu's forms against cuBLASLt (+ the GEGLU pass); the 1280 x 1280 GEMMs are 60 plain
# (attn2's to_q) and 120 accumulating (both to_outs), timed here by the plain row
GEGLU_ROWS = {"sdxl_ffgeglu_1280_b16": 60, "sdxl_ffgeglu_640_b16": 10}
# (the 640 level's 10 blocks: q, k, v stacked, N = 1920, and to_q + both to_outs, N = 640: shapes
# only the TMA forms take, whose last column tile is partly empty; the other ways leave them to
# cuBLASLt; a table without these rows, from before they were added, leaves them out)
LINEAR_ROWS = {"sdxl_proj_1280_b16": 180, "sdxl_qkv_1280_b16": 60, "sdxl_proj_640_b16": 30,
               "sdxl_qkv_640_b16": 10}
TMA_ONLY = {"sdxl_proj_640_b16", "sdxl_qkv_640_b16"}
# ... of which those after a LayerNorm (norm3's feed-forward, norm2's to_q, norm1's q, k, v):
# LOCO_CUDA_LN_FOLD=1 folds it into the TMA forms' GEMMs; op_bench times the pair on one backend
# ("@ln_fold_tma" against "@ln_unfused_tma", "_mc" in clusters)
LN_CALLS = {"sdxl_ffgeglu_1280_b16": 60, "sdxl_ffgeglu_640_b16": 10, "sdxl_proj_1280_b16": 60,
            "sdxl_qkv_1280_b16": 60, "sdxl_proj_640_b16": 10, "sdxl_qkv_640_b16": 10}
# conv_tma.cu (LOCO_CUDA_CONV=tma) against the default routes: the ResNet convs at the 128x128
# level (320 channels out: 10 a call, those with 640 or 960 in counted as 320's) and the 64x64
# one (640 out: 10), and the upsampler's plain 640-channel conv at 128x128 (1)
CONV_ROWS = {"sdxl_resconv_320_128_b16": 10, "sdxl_resconv_640_64_b16": 10, "sdxl_conv3x3_640_128_b16": 1}
# ... and cuDNN's convolutions (LOCO_CUDA_CONV=cudnn, session 17) on the same rows; for the f32
# VAE decoder alone (LOCO_CUDA_CONV_F32=cudnn) its conv rows, weighted by the decoder's 3x3 convs
# of each shape (mid block and the first up block at 128x128: 10; 256 channels at 512x512 and
# 128 at 1024x1024: 5 each; the last upsampler's conv and conv_out: 1)
VAE_ROWS = {"sdxl_vae_conv_512_128": 10, "sdxl_vae_conv_256_512": 5, "sdxl_vae_conv_128_1024": 5,
            "sdxl_vae_conv_256_1024": 1, "sdxl_vae_conv_out_128_3": 1}


def read_rows(path):
    rows = {}
    for line in open(path):
        parts = line.split()
        if len(parts) != 4:
            continue
        try:
            ms = float(parts[1])
        except ValueError:
            continue
        if ms > 0:
            rows[parts[0]] = ms
    return rows


def weighted(rows, names, suffix):
    """Sum of calls x ms over names with the suffix; None when a row is missing."""
    total = 0.0
    for name, calls in names.items():
        ms = rows.get(name + suffix)
        if ms is None:
            return None
        total += calls * ms
    return total


def pick(rows, log):
    env = []
    times = {s: weighted(rows, SELF_ROWS, s) for s in FLASH}
    times = {s: t for s, t in times.items() if t is not None}
    if "" in times:
        best = min(times, key=times.get)
        for s, t in sorted(times.items(), key=lambda kv: kv[1]):
            log(f"self-attention {s or 'default'}: {t:.2f} ms a UNet call")
        if best and times[best] < times[""]:
            env += f"LOCO_CUDA_FLASH={FLASH[best]}".split()
    for var, value, names, suffix in (("LOCO_CUDA_FLASH_SHORT", "0", CROSS_ROWS, "@short_off"),):
        base, cand = weighted(rows, names, ""), weighted(rows, names, suffix)
        if base is None or cand is None:
            log(f"{var}={value}: rows missing")
            continue
        log(f"{var}={value}: {cand:.2f} against {base:.2f} ms a UNet call")
        if cand < base:
            env.append(f"{var}={value}")
    conv = pick_conv(rows, log)
    env += conv
    if "LOCO_CUDA_CONV=cudnn" not in conv:
        env += pick_vae_cudnn(rows, log)
    env += pick_gemm_wgmma(rows, log)
    return env


def pick_vae_cudnn(rows, log):
    """cuDNN for the f32 VAE decoder's convs, if it beats the default routes on their rows."""
    base, cand = weighted(rows, VAE_ROWS, ""), weighted(rows, VAE_ROWS, "@conv_cudnn")
    if base is None or cand is None:
        log("LOCO_CUDA_CONV_F32=cudnn: rows missing")
        return []
    log(f"LOCO_CUDA_CONV_F32=cudnn: {cand:.2f} against {base:.2f} ms of the decoder's timed convs (batch 1)")
    return ["LOCO_CUDA_CONV_F32=cudnn"] if cand < base else []


def pick_conv(rows, log):
    """conv_tma.cu alone or in clusters of two (LOCO_CUDA_CONV_TMA_CLUSTER=2), or cuDNN
    (LOCO_CUDA_CONV=cudnn), whichever is the faster on the conv rows together, if it beats the
    default routes."""
    base = weighted(rows, CONV_ROWS, "")
    best = None  # (ms a UNet call, env)
    for suffix, env in (("@conv_tma", ["LOCO_CUDA_CONV=tma"]),
                        ("@conv_tma_mc", ["LOCO_CUDA_CONV=tma", "LOCO_CUDA_CONV_TMA_CLUSTER=2"]),
                        ("@conv_cudnn", ["LOCO_CUDA_CONV=cudnn"])):
        cand = weighted(rows, CONV_ROWS, suffix)
        if base is None or cand is None:
            log(f"{' '.join(env)}: rows missing")
            continue
        log(f"{' '.join(env)}: {cand:.2f} against {base:.2f} ms a UNet call")
        if cand < base and (best is None or cand < best[0]):
            best = (cand, env)
    return best[1] if best else []


def form_times(rows, names, suffix, tma):
    """(cuBLASLt's, the form's) ms a UNet call over a form's rows, or None when a row the form
    takes is missing. Rows without a default time (an older table) are left out; shapes only the
    TMA forms take count at cuBLASLt's time for the other ways."""
    base = cand = 0.0
    for name, calls in names.items():
        b = rows.get(name)
        if b is None:
            continue
        c = rows.get(name + suffix)
        if c is None and name in TMA_ONLY and not tma:
            c = b
        if c is None:
            return None
        base, cand = base + calls * b, cand + calls * c
    return base, cand


def fold_gain(rows, names, tag):
    """ms a UNet call that folding the LayerNorm saves on a form's rows (the unfused pair's time
    less the folded call's, on the same backend), or None when a row is missing."""
    gain = 0.0
    for name in names:
        if name not in rows:  # (left out of the form's times too)
            continue
        calls = LN_CALLS.get(name, 0)
        fold, unfused = rows.get(f"{name}@ln_fold{tag}"), rows.get(f"{name}@ln_unfused{tag}")
        if calls and (fold is None or unfused is None):
            return None
        if calls:
            gain += calls * (unfused - fold)
    return gain


def pick_gemm_wgmma(rows, log):
    """gemm_wgmma.cu's two forms share one way of loading (LOCO_CUDA_GEMM_WGMMA_LOAD: cp.async,
    arrive or tma; tma also in clusters of two, LOCO_CUDA_GEMM_WGMMA_CLUSTER=2) and, by TMA, the
    LayerNorm fold (LOCO_CUDA_LN_FOLD=1, for the forms in use): for each way, with and without
    the fold, each form goes in where it beats cuBLASLt (the LayerNorm apart); the way whose
    forms give the smaller total wins."""
    best = None  # (ms a UNet call, env)
    for load, tag in (("cp.async", ""), ("arrive", "_arrive"), ("tma", "_tma"), ("tma clusters", "_mc")):
        for fold in ((False, True) if tag in ("_tma", "_mc") else (False,)):
            total, env = 0.0, []
            for var, names, suffix in (("LOCO_CUDA_GEGLU", GEGLU_ROWS, "@geglu_wgmma" + tag),
                                       ("LOCO_CUDA_LINEAR", LINEAR_ROWS, "@linear_wgmma" + tag)):
                what = f"{var}=wgmma ({load}{', LayerNorm folded' if fold else ''})"
                times = form_times(rows, names, suffix, tag in ("_tma", "_mc"))
                gain = fold_gain(rows, names, tag) if fold else 0.0
                if times is None or gain is None or not any(n in rows for n in names):
                    log(f"{what}: rows missing")
                    total += sum(calls * rows[n] for n, calls in names.items() if n in rows)  # cuBLASLt's
                    continue
                base, cand = times
                log(f"{what}: {cand - gain:.2f} against {base:.2f} ms a UNet call")
                total += min(base, cand - gain)
                if cand - gain < base:
                    env.append(f"{var}=wgmma")
            if env and load != "cp.async":
                env.append(f"LOCO_CUDA_GEMM_WGMMA_LOAD={load.split()[0]}")
            if env and load == "tma clusters":
                env.append("LOCO_CUDA_GEMM_WGMMA_CLUSTER=2")
            if env and fold:
                env.append("LOCO_CUDA_LN_FOLD=1")
            if env and (best is None or total < best[0]):
                best = (total, env)
    return best[1] if best else []


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pick_candidates.py ops_loco.txt")
    env = pick(read_rows(sys.argv[1]), lambda s: print(s, file=sys.stderr))
    print(" ".join(env))


if __name__ == "__main__":
    main()
