"""bench/gpu/op_bench on the CPU kernel emulator (build/emu/bench/gpu/op_bench), on small rows of
every kind that bench/gpu/ops.txt uses.

Why: bench/gpu-check.sh's op table runs op_bench on a lent GPU only, minutes of which are
scarce; a row kind or a forced route that fails to parse, to create its backend or to run would
otherwise first show there. The times printed here are the emulator's and mean nothing; what is
checked is that every row runs and prints a positive, finite time, under every forced route the
main table and the --wgmma table promise."""
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / os.environ.get("LOCO_BUILD", "build")
BINARY = BUILD / "emu" / "bench" / "gpu" / "op_bench"

# one small row of each kind, in ops.txt's syntax
OPS = """\
# kind NAME args (bench/gpu/ops.txt)
conv   c_f16   2 16 8 16 32 3 1 1
conv32 c_f32   1 16 8 16 64 3 1 1
conv   c_1x1   2 16 8 8 32 1 1 0
conv   c_b4    4 16 8 8 32 3 1 1
conv   c_tma   1 64 2 64 64 3 1 1
linear l_gelu  16 32 64 gelu
linear l_none  16 64 256 none
linear l_640   16 64 640 none
attn   a_d40   2 64 64 2 40 0
attn   a_d64   1 64 77 2 64 0
gn     g_silu  1 32 8 8 8 1
ln     l_n     32 64
geglu  gg      16 32
ffgeglu fg     64 128 128
resconv rc     2 32 8 8
resconv rc_tma 1 64 2 64
temb   tb      2 64
proj   pj      2 32 64
selfattn sa    2 64 128 2
"""

CONV_ROUTES = ["", "@implicit", "@im2col", "@rows", "@rows_overlap"]
BATCH4 = ["@im2col_32m", "@im2col_96m", "@im2col_overlap", "@tuned"]
FLASH = ["", "@fa64", "@fa128", "@fa_classic", "@fa_stages3", "@fa_ilp3", "@fa_ilp3q"]
MAIN_ROWS = (
    [f"c_f16{s}" for s in CONV_ROUTES + ["@implicit_generic"]]
    + [f"c_f32{s}" for s in CONV_ROUTES]
    + ["c_1x1"]
    + [f"c_b4{s}" for s in CONV_ROUTES + ["@implicit_generic"] + BATCH4]
    + [f"c_tma{s}" for s in CONV_ROUTES + ["@implicit_generic"]]
    + ["l_gelu", "l_gelu@tuned", "l_none", "l_none@tuned", "l_640", "l_640@tuned"]
    + [f"a_d40{s}" for s in FLASH + ["@short_off"]]
    + [f"a_d64{s}" for s in FLASH + ["@short_off"]]
    + ["g_silu", "l_n", "gg", "fg", "rc", "rc@unfused", "rc_tma", "rc_tma@unfused", "tb", "tb@unfused", "pj", "pj@unfused"]
    + ["sa", "sa@fa_classic", "sa@fa_stages3", "sa@fa_ilp3", "sa@fa_ilp3q", "sa@apart"]
)
WGMMA_ROWS = (["c_f16@wgmma", "c_b4@wgmma", "c_tma@wgmma", "c_tma@conv_tma", "rc_tma@conv_tma", "c_tma@conv_tma_mc",
               "rc_tma@conv_tma_mc"] + [f"{n}@fa_wgmma{t}" for n in ("a_d40", "a_d64", "sa") for t in ("", "128")]
              + [f"{n}@fa_wgmma3" for n in ("a_d64", "sa")]
              + [f"{n}@fa_wgmma_ws{t}" for n in ("a_d40", "a_d64", "sa") for t in ("", "128")]
              + [f"{n}@fa_wgmma_ws3" for n in ("a_d64", "sa")]
              + [f"{n}@fa_wgmma_ws3_arrive" for n in ("a_d64", "sa")]
              + [f"{n}@fa_wgmma_ws128_arrive" for n in ("a_d40", "a_d64", "sa")]
              + [f"{n}@fa_wgmma_ws{t}_tma" for n in ("a_d64", "sa") for t in ("3", "128")]
              + [f"fg@geglu_wgmma{t}" for t in ("", "_tma", "_arrive", "_mc")]
              + [f"l_none@linear_wgmma{t}" for t in ("", "_tma", "_arrive", "_mc")]
              + [f"l_640@linear_wgmma{t}" for t in ("_tma", "_mc")]  # (a partly empty last tile: TMA only)
              + [f"{n}@ln_{f}_{t}" for n in ("fg", "l_none", "l_640") for f in ("fold", "unfused")
                 for t in ("tma", "mc")])


def _run(tmp_path, *extra):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (a build without nvcc has no emulated CUDA backend)")
    ops = tmp_path / "ops.txt"
    ops.write_text(OPS)
    r = subprocess.run([str(BINARY), str(ops), "1", *extra], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, f"op_bench {' '.join(extra)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    rows = {}
    for line in r.stdout.splitlines():
        name, ms, rate, unit = line.split()
        rows[name] = (float(ms), float(rate), unit)
    return rows


def _check(rows, expected):
    assert sorted(rows) == sorted(expected), (
        f"missing {sorted(set(expected) - set(rows))}, unexpected {sorted(set(rows) - set(expected))}")
    for name, (ms, rate, unit) in rows.items():
        assert ms > 0 and math.isfinite(ms), f"{name}: {ms} ms"
        assert rate >= 0 and math.isfinite(rate), f"{name}: rate {rate}"
        assert unit in ("TFLOP/s", "GB/s"), f"{name}: unit {unit}"


def test_op_bench_main_table_on_the_emulator(tmp_path):
    _check(_run(tmp_path), MAIN_ROWS)


def test_op_bench_wgmma_table_on_the_emulator(tmp_path):
    _check(_run(tmp_path, "--wgmma"), WGMMA_ROWS)


def test_op_bench_cudnn_table_says_why_it_has_no_rows_on_the_emulator(tmp_path):
    # cuDNN (its fused attention and its convolutions) is never loaded on the emulator: the --cudnn
    # table must say so and time nothing, rather than time our kernels under "@fa_cudnn" or
    # "@conv_cudnn" names
    if not BINARY.exists():
        pytest.skip(f"{BINARY} is not built (a build without nvcc has no emulated CUDA backend)")
    ops = tmp_path / "ops.txt"
    ops.write_text(OPS)
    r = subprocess.run([str(BINARY), str(ops), "1", "--cudnn"], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert 'no "@fa_cudnn" rows' in r.stderr and "cuDNN unavailable (not on the CUDA emulator)" in r.stderr, r.stderr
    assert 'no "@conv_cudnn" rows' in r.stderr, r.stderr
