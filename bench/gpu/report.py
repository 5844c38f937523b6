"""Joins the RESULT lines of pipeline_bench.c (loco) and diffusers_bench.py (diffusers, and the
torch.matmul rate) from one GPU run into the table bench/gpu-check.sh ends with:

  model  px  batch | loco s/img  diffusers s/img  loco/diffusers | loco %mm  diffusers %mm | timed
  sd1   512      1 |     0.412        0.981            0.42      |   22.1%      9.3%        | 50/50

loco/diffusers < 1 means loco is faster (the goal is <= 0.5). "%mm" is the image's arithmetic
(perf-anchors.md section 1: UNet calls x 2 for guidance x FLOPs per sample-call, plus the VAE
decoder and the text encoders) divided by its time, as a fraction of the card's fp16 matrix rate
measured by torch.matmul in the same run. "timed" is T/N: T of the N steps were timed and the
rest extrapolated from the median UNet call (both sides alike).

Rows of loco under opt-in settings (RESULT impl=loco_<tag>, bench/gpu-check.sh's candidates.txt)
follow their configuration's row, with their ratio against the same diffusers time.

Usage: report.py RESULTS_FILE..."""
import sys

# GFLOPs from shared/reference/perf-anchors.md section 1 (analytic model of the diffusers
# modules; 2 FLOPs per multiply-accumulate): per UNet sample-call, VAE decode per image, text
# encoders per prompt pass (CLIP-L 19; OpenCLIP-H ~ 2 x 354M x 77; bigG ~ 2 x 695M x 77).
FLOPS = {
    ("sd1", 512): {"unet": 803.0, "vae": 2515.0, "text": 19.0},
    ("sd2", 768): {"unet": 2149.0, "vae": 5750.0, "text": 55.0},
    ("sdxl", 1024): {"unet": 6761.0, "vae": 10470.0, "text": 19.0 + 107.0},
}


def parse(paths):
    rows, mm = {}, None
    for path in paths:
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("RESULT "):
                continue
            kv = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
            if kv.get("impl") == "torch":
                mm = float(kv["matmul_tflops"])
                continue
            key = (kv.get("family"), int(kv.get("size", 0)), int(kv.get("batch", 0)))
            rows.setdefault(key, {})[kv.get("impl")] = kv
    return rows, mm


def gflop_per_image(family, size, calls):
    f = FLOPS.get((family, size))
    if not f or not calls:
        return None
    return calls * 2 * f["unet"] + f["vae"] + 2 * f["text"]


def main():
    rows, mm = parse(sys.argv[1:])
    if not rows:
        print("report: no RESULT lines")
        return 1
    print(f"card's fp16 matrix rate (torch.matmul 8192^3, this run): {mm:.0f} TFLOP/s" if mm else
          "card's fp16 matrix rate: not measured")
    hdr = (f"{'model':<6}{'px':>6}{'batch':>6} | {'loco s/img':>10} {'diffusers s/img':>15} {'loco/diff':>9} | "
           f"{'loco %mm':>8} {'diff %mm':>8} | timed (loco, diffusers)")
    print(hdr)
    print("-" * len(hdr))
    for (family, size, batch), impls in sorted(rows.items()):
        lo, df = impls.get("loco", {}), impls.get("diffusers", {})

        def spi(r):
            return float(r["s_per_image"]) if "s_per_image" in r else None

        def frac(r):
            g = gflop_per_image(family, size, int(r.get("calls", 0) or 0))
            s = spi(r)
            return f"{100.0 * g / s / (mm * 1e3):7.1f}%" if g and s and mm else f"{'-':>8}"

        def cell(r, w):
            s = spi(r)
            return f"{s:{w}.3f}" if s is not None else f"{r.get('error', 'missing')[:w]:>{w}}"

        a, b = spi(lo), spi(df)
        ratio = f"{a / b:9.2f}" if a and b else f"{'-':>9}"
        timed = ", ".join(f"{r.get('timed_steps', '-')}/{r.get('steps', '-')}" for r in (lo, df))
        graphs = f" graphs {lo['graphs']}" if "graphs" in lo else ""
        print(f"{family:<6}{size:>6}{batch:>6} | {cell(lo, 10)} {cell(df, 15)} {ratio} | {frac(lo)} {frac(df)} | "
              f"{timed}{graphs}")
        # loco again under opt-in settings (gpu-check's phase 7 and --candidates: impl=loco_<tag>)
        for impl in sorted(i for i in impls if i.startswith("loco_")):
            r = impls[impl]
            c = spi(r)
            cratio = f"{c / b:9.2f}" if c and b else f"{'-':>9}"
            print(f"{'  with ' + impl[5:]:<18} | {cell(r, 10)} {'':>15} {cratio} | {frac(r)} {'':>8} | "
                  f"{r.get('timed_steps', '-')}/{r.get('steps', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
