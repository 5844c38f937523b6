"""Times the ops of bench/gpu/ops.txt in PyTorch (fp16, CUDA), the way diffusers runs them:
NCHW convolutions, F.scaled_dot_product_attention on [B, H, L, D] views of [B, L, H*D],
GroupNorm followed by a separate SiLU, GEGLU as chunk + gelu + mul, a ResNet block's second half
(resconv) as GroupNorm, SiLU, conv and add, self-attention with its projections (selfattn) as
three linears and SDPA. Prints one line per op,
"name ms", for bench/gpu-check.sh to join with op_bench's table.

Timing: random inputs, three warm-up calls, five batches of `reps` calls timed with CUDA
events; the median batch gives the time per call.

Each attention row is also timed on each of PyTorch's SDPA backends alone ("name@torch_flash",
"@torch_cudnn", "@torch_efficient" lines; a backend that refuses the shape prints "n/a"): which
one gives PyTorch's time, and what cuDNN's fused attention reaches on the card, the figure loco's
cuDNN route (LOCO_CUDA_FLASH=cudnn) is to be read against.

Usage: python3 bench/gpu/torch_ops.py [ops.txt] [reps]"""
import sys

import torch
import torch.nn.functional as F

ACTS = {
    "none": lambda x: x,
    "gelu": F.gelu,
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


def make(op, args):
    dev, dt = "cuda", torch.float16
    r = lambda *s: torch.randn(*s, device=dev, dtype=dt)
    if op in ("conv", "conv32"):
        # conv32: fp32 (TF32 in cuDNN, PyTorch's default), as diffusers decodes SD-XL's upcast VAE
        if op == "conv32":
            r = lambda *s: torch.randn(*s, device=dev, dtype=torch.float32)
        n, ci, h, w, co, k, s, p = map(int, args)
        x, wt, b = r(n, ci, h, w), r(co, ci, k, k) * 0.05, r(co) * 0.1
        return lambda: F.conv2d(x, wt, b, stride=s, padding=p)
    if op == "resconv":
        # a ResNet block's second half as diffusers runs it: GroupNorm(32) + SiLU, 3x3 conv, + input
        n, c, h, w = map(int, args)
        x, gamma, beta = r(n, c, h, w), r(c), r(c)
        wt, b, res = r(c, c, 3, 3) * 0.05, r(c) * 0.1, r(n, c, h, w)
        return lambda: F.conv2d(F.silu(F.group_norm(x, 32, gamma, beta, 1e-5)), wt, b, padding=1) + res
    if op == "selfattn":
        # diffusers' AttnProcessor2_0: to_q, to_k, to_v as three linears, then SDPA
        b, l, c, h = map(int, args)
        d = c // h
        x, wq, wk, wv = r(b, l, c), r(c, c) * 0.05, r(c, c) * 0.05, r(c, c) * 0.05

        def selfattn():
            q, k, v = (F.linear(x, w).view(b, l, h, d).transpose(1, 2) for w in (wq, wk, wv))
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, c)

        return selfattn
    if op == "temb":
        # diffusers' ResnetBlock2D.time_emb_proj, once per block of SD 1.5's UNet, on SiLU(temb)
        rows, k = map(int, args)
        widths = [320, 320, 640, 640] + [1280] * 12 + [640] * 3 + [320] * 3
        x = r(rows, k)
        layers = [(r(n, k) * 0.05, r(n) * 0.1) for n in widths]
        return lambda: [F.linear(x, w, b) for w, b in layers]
    if op == "proj":
        # diffusers' Transformer2DModel around its blocks: permute to tokens, proj_in, proj_out,
        # permute back, + residual (the linear-projection form of SD 2.x and SD-XL)
        b, c, l = map(int, args)
        x, wi, wo, bias = r(b, c, l), r(c, c) * 0.05, r(c, c) * 0.05, r(c) * 0.1

        def proj():
            h = F.linear(x.permute(0, 2, 1), wi, bias)
            return F.linear(h, wo, bias).permute(0, 2, 1) + x

        return proj
    if op == "linear":
        m, k, n = map(int, args[:3])
        act = ACTS[args[3]]
        x, wt, b = r(m, k), r(n, k) * 0.05, r(n) * 0.1
        return lambda: act(F.linear(x, wt, b))
    if op == "attn":
        b, lq, lk, h, d, causal = map(int, args)
        q = r(b, lq, h * d).view(b, lq, h, d).transpose(1, 2)
        k = r(b, lk, h * d).view(b, lk, h, d).transpose(1, 2)
        v = r(b, lk, h * d).view(b, lk, h, d).transpose(1, 2)
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)).transpose(1, 2).reshape(
            b, lq, h * d)
    if op == "gn":
        n, c, h, w, g, silu = map(int, args)
        x, gamma, beta = r(n, c, h, w), r(c), r(c)
        if silu:
            return lambda: F.silu(F.group_norm(x, g, gamma, beta, 1e-5))
        return lambda: F.group_norm(x, g, gamma, beta, 1e-5)
    if op == "ln":
        rows, c = map(int, args)
        x, gamma, beta = r(rows, c), r(c), r(c)
        return lambda: F.layer_norm(x, (c,), gamma, beta, 1e-5)
    if op == "geglu":
        rows, n = map(int, args)
        x = r(rows, 2 * n)

        def geglu():
            h, gate = x.chunk(2, dim=-1)
            return h * F.gelu(gate)

        return geglu
    if op == "ffgeglu":
        # diffusers' GEGLU module: ff.net.0.proj (one linear to 2N), chunk, h * gelu(gate)
        rows, k, n = map(int, args)
        x, wt, b = r(rows, k), r(2 * n, k) * 0.05, r(2 * n) * 0.1

        def ffgeglu():
            h, gate = F.linear(x, wt, b).chunk(2, dim=-1)
            return h * F.gelu(gate)

        return ffgeglu
    raise ValueError(f"unknown op kind {op}")


def time_ms(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return sorted(times)[2]


def sdpa_backends():
    """(tag, context manager) for each SDPA backend this PyTorch can force; none before 2.3."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return []
    names = (("torch_flash", "FLASH_ATTENTION"), ("torch_cudnn", "CUDNN_ATTENTION"),
             ("torch_efficient", "EFFICIENT_ATTENTION"))
    return [(tag, lambda b=getattr(SDPBackend, name): sdpa_kernel(b)) for tag, name in names
            if hasattr(SDPBackend, name)]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "bench/gpu/ops.txt"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", file=sys.stderr)
    backends, attention = sdpa_backends(), []
    with torch.inference_mode():
        for line in open(path):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            kind, name, args = parts[0], parts[1], parts[2:]
            fn = make(kind, args)
            print(f"{name} {time_ms(fn, reps):.4f}", flush=True)
            if kind == "attn":
                attention.append((name, fn))
        # after every row, so that the backends' first-use compilation (cuDNN's) cannot push the
        # rows gpu-check joins with loco's past its timeout
        for name, fn in attention:
            for tag, forced in backends:
                try:
                    with forced():
                        ms = f"{time_ms(fn, reps):.4f}"
                except RuntimeError as e:  # the backend does not take the shape (head dim, dtype, card)
                    ms = "n/a"
                    print(f"{name}@{tag}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
                print(f"{name}@{tag} {ms}", flush=True)


if __name__ == "__main__":
    main()
