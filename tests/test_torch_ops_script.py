"""bench/gpu/torch_ops.py's control flow on a stand-in for PyTorch (no GPU, no torch here).

Why: the script runs only inside bench/gpu-check.sh on a lent GPU machine, whose minutes are
scarce; a slip in it costs the op table its PyTorch column. The stand-in below has just what the
script touches: tensors whose shape methods return themselves, CUDA events that report 1 ms, and
SDPA backends to force, one of which refuses every shape (as a backend does for a head dim it
lacks).
"""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu" / "torch_ops.py"

FAKE_TORCH = {
    "torch/__init__.py": """
        import contextlib
        from types import SimpleNamespace
        from . import nn
        __version__ = "0.0-stand-in"
        float16, float32 = "f16", "f32"

        class Tensor:
            def view(self, *a): return self
            def transpose(self, *a): return self
            def reshape(self, *a): return self
            def permute(self, *a): return self
            def chunk(self, n, dim=-1): return [self] * n
            def __mul__(self, o): return self
            __rmul__ = __add__ = __radd__ = __mul__

        def randn(*shape, device=None, dtype=None): return Tensor()
        def sigmoid(x): return x

        class Event:
            def __init__(self, enable_timing=False): self.t = 0.0
            def record(self): pass
            def elapsed_time(self, end): return 10.0  # 10 ms for a batch of 10 calls

        cuda = SimpleNamespace(synchronize=lambda: None, get_device_name=lambda: "stand-in GPU", Event=Event)
        backends = SimpleNamespace(cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False)),
                                   cudnn=SimpleNamespace(benchmark=False))
        inference_mode = contextlib.nullcontext
    """,
    "torch/nn/__init__.py": "from . import functional, attention\n",
    "torch/nn/functional.py": """
        from . import attention

        def scaled_dot_product_attention(q, k, v, is_causal=False):
            if attention.FORCED == attention.SDPBackend.CUDNN_ATTENTION:
                raise RuntimeError("No available kernel. Aborting execution.")
            return q

        def linear(x, w, b=None): return x
        def conv2d(x, w, b=None, stride=1, padding=0): return x
        def gelu(x, approximate="none"): return x
        def silu(x): return x
        def group_norm(x, g, w, b, eps): return x
        def layer_norm(x, shape, w, b, eps): return x
    """,
    "torch/nn/attention.py": """
        import contextlib
        import enum

        class SDPBackend(enum.Enum):  # no EFFICIENT_ATTENTION: a PyTorch without it is skipped
            FLASH_ATTENTION = 1
            CUDNN_ATTENTION = 2

        FORCED = None

        @contextlib.contextmanager
        def sdpa_kernel(backend):
            global FORCED
            FORCED = backend
            try:
                yield
            finally:
                FORCED = None
    """,
}

OPS = """\
# a comment
attn sdxl_self_d64_4096 2 4096 4096 10 64 0
ln sdxl_ln_1280_b16 16384 1280
"""


def test_attention_rows_are_timed_on_each_sdpa_backend(tmp_path):
    for rel, text in FAKE_TORCH.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    ops = tmp_path / "ops.txt"
    ops.write_text(OPS)
    r = subprocess.run([sys.executable, str(SCRIPT), str(ops), "10"], capture_output=True, text=True, cwd=ROOT,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [  # every row first, then the attention rows' backends
        "sdxl_self_d64_4096 1.0000",
        "sdxl_ln_1280_b16 1.0000",
        "sdxl_self_d64_4096@torch_flash 1.0000",
        "sdxl_self_d64_4096@torch_cudnn n/a",
    ]
    assert "stand-in GPU" in r.stderr
    assert "sdxl_self_d64_4096@torch_cudnn: No available kernel" in r.stderr
