"""The Hopper kernels (kernels/cuda/*wgmma*.cu) keep their products asynchronous: ptxas compiles
them for sm_90a without serialising the wgmma instructions.

Why: ptxas makes every wgmma of a kernel wait for the previous one when it cannot prove that
no other instruction touches the registers a product in flight reads or writes, and then says
so only as an "info" line ("Potential Performance Loss: wgmma.mma_async instructions are
serialized", C7510-C7519). The kernel stays correct, so no parity test notices, and the lost
overlap would first show as a slow op row on a lent GPU. The check needs nvcc, not a GPU
(bench/gpu/NOTES.md, session 7, lists the patterns that trigger it)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NVCC = os.environ.get("NVCC", "nvcc")
FILES = ["kernels/cuda/attention_wgmma.cu", "kernels/cuda/attention_wgmma_ws.cu", "kernels/cuda/conv_wgmma.cu",
         "kernels/cuda/gemm_wgmma.cu"]


@pytest.mark.parametrize("source", FILES)
def test_wgmma_products_are_not_serialised(source, tmp_path):
    if shutil.which(NVCC) is None:
        pytest.skip("nvcc is not installed: the CUDA backend is not built here")
    r = subprocess.run([NVCC, "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Ikernels", "-I.",
                        "-gencode", "arch=compute_90a,code=sm_90a", "-Xptxas", "-v", "-c", source,
                        "-o", str(tmp_path / "k.o")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, f"nvcc failed on {source}:\n{r.stderr[-3000:]}"
    kernels = re.findall(r"Compiling entry function '(\w+)' for 'sm_90a'", r.stderr)
    assert kernels, f"no sm_90a kernel compiled from {source}:\n{r.stderr[-2000:]}"
    serialised = [line.strip() for line in r.stderr.splitlines() if re.search(r"\(C751\d\)", line)]
    assert not serialised, f"{source}: ptxas serialises wgmma:\n" + "\n".join(serialised[:6])
    spills = [line.strip() for line in r.stderr.splitlines()
              if "spill" in line and not re.search(r"\b0 bytes spill stores, 0 bytes spill loads", line)]
    assert not spills, f"{source}: register spills:\n" + "\n".join(spills[:6])
