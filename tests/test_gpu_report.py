"""bench/gpu/pick_candidates.py and bench/gpu/report.py on made-up op rows and RESULT lines.

Why: both run only at the end of a GPU check (bench/gpu-check.sh's phase 7 and its report), on a
lent machine whose minutes are scarce; a parsing slip there would cost the run's main number.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PICK = ROOT / "bench" / "gpu" / "pick_candidates.py"
REPORT = ROOT / "bench" / "gpu" / "report.py"

OPS = """\
sdxl_self_d64_4096_b16 2.4000 285.0 TFLOP/s
sdxl_self_d64_4096_b16@fa_ilp3q 2.3000 290.0 TFLOP/s
sdxl_self_d64_4096_b16@fa_wgmma_ws3 1.5000 450.0 TFLOP/s
sdxl_self_d64_1024_b16 0.3400 250.0 TFLOP/s
sdxl_self_d64_1024_b16@fa_ilp3q 0.3300 255.0 TFLOP/s
sdxl_self_d64_1024_b16@fa_wgmma_ws3 0.2000 420.0 TFLOP/s
sdxl_cross_d64_77_b16 0.0400 80.0 TFLOP/s
sdxl_cross_d64_77_b16@short_off 0.0500 64.0 TFLOP/s
sdxl_cross_d64_4096_77_b16 0.0700 80.0 TFLOP/s
sdxl_cross_d64_4096_77_b16@short_off 0.0800 70.0 TFLOP/s
sdxl_ffgeglu_1280_b16 0.7520 570.0 TFLOP/s
sdxl_ffgeglu_1280_b16@geglu_wgmma 0.7000 613.0 TFLOP/s
sdxl_ffgeglu_640_b16 0.7600 565.0 TFLOP/s
sdxl_ffgeglu_640_b16@geglu_wgmma 0.7400 580.0 TFLOP/s
sdxl_proj_1280_b16 0.1000 535.0 TFLOP/s
garbage line
"""


def run(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_pick_takes_the_winners_and_leaves_missing_rows(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS)
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    # ws3 wins the self-attention, the fold wins its rows; short_off loses; the linear rows lack @linear_wgmma
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_GEGLU=wgmma"]
    assert "LOCO_CUDA_LINEAR=wgmma (cp.async): rows missing" in r.stderr
    assert "self-attention @fa_wgmma_ws3: 27.00 ms a UNet call" in r.stderr


def test_pick_chooses_the_faster_way_of_loading_for_both_gemm_forms(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS + "sdxl_ffgeglu_1280_b16@geglu_wgmma_tma 0.6000 700.0 TFLOP/s\n"
                   "sdxl_ffgeglu_640_b16@geglu_wgmma_tma 0.7800 560.0 TFLOP/s\n"
                   "sdxl_qkv_1280_b16 0.3000 540.0 TFLOP/s\n"
                   "sdxl_proj_1280_b16@linear_wgmma_tma 0.0900 590.0 TFLOP/s\n"
                   "sdxl_qkv_1280_b16@linear_wgmma_tma 0.2900 560.0 TFLOP/s\n")
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    # with TMA the GEGLU rows save 60 x 0.152 - 10 x 0.02 and the linear ones 180 x 0.01 + 60 x 0.01:
    # more than cp.async's GEGLU alone (whose linear rows are missing)
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma",
                                "LOCO_CUDA_GEMM_WGMMA_LOAD=tma"]
    assert "LOCO_CUDA_LINEAR=wgmma (cp.async): rows missing" in r.stderr


def test_pick_takes_the_cluster_form_with_its_two_variables_when_it_wins(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS + "sdxl_ffgeglu_1280_b16@geglu_wgmma_tma 0.6000 700.0 TFLOP/s\n"
                   "sdxl_ffgeglu_640_b16@geglu_wgmma_tma 0.7800 560.0 TFLOP/s\n"
                   "sdxl_ffgeglu_1280_b16@geglu_wgmma_mc 0.5800 720.0 TFLOP/s\n"
                   "sdxl_ffgeglu_640_b16@geglu_wgmma_mc 0.7200 600.0 TFLOP/s\n")
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    # the clusters' GEGLU rows beat the plain TMA form's on both shapes (and cuBLASLt's): their way wins
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_GEMM_WGMMA_LOAD=tma",
                                "LOCO_CUDA_GEMM_WGMMA_CLUSTER=2"]
    assert "LOCO_CUDA_GEGLU=wgmma (tma clusters): 42.00 against 52.72 ms a UNet call" in r.stderr


def test_pick_counts_the_tma_only_shapes_at_cublaslt_for_the_other_ways(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS + "sdxl_qkv_1280_b16 0.3000 540.0 TFLOP/s\n"
                   "sdxl_proj_1280_b16@linear_wgmma 0.0950 560.0 TFLOP/s\n"
                   "sdxl_qkv_1280_b16@linear_wgmma 0.2950 550.0 TFLOP/s\n"
                   "sdxl_proj_640_b16 0.1000 550.0 TFLOP/s\n"
                   "sdxl_qkv_640_b16 0.2500 660.0 TFLOP/s\n"
                   "sdxl_proj_1280_b16@linear_wgmma_tma 0.1000 535.0 TFLOP/s\n"
                   "sdxl_qkv_1280_b16@linear_wgmma_tma 0.3000 540.0 TFLOP/s\n"
                   "sdxl_proj_640_b16@linear_wgmma_tma 0.1200 460.0 TFLOP/s\n"
                   "sdxl_qkv_640_b16@linear_wgmma_tma 0.2600 630.0 TFLOP/s\n")
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    # cp.async takes the 1280 shapes only (the 640 level at cuBLASLt's 5.5 ms): 40.30 against 41.50;
    # the TMA form also takes the 640 level, where it loses: 42.20
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma"]
    assert "LOCO_CUDA_LINEAR=wgmma (cp.async): 40.30 against 41.50 ms a UNet call" in r.stderr
    assert "LOCO_CUDA_LINEAR=wgmma (tma): 42.20 against 41.50 ms a UNet call" in r.stderr


def test_pick_takes_the_layernorm_fold_when_its_gain_beats_the_other_ways(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS + "sdxl_ffgeglu_1280_b16@geglu_wgmma_tma 0.7600 564.0 TFLOP/s\n"
                   "sdxl_ffgeglu_640_b16@geglu_wgmma_tma 0.7700 557.0 TFLOP/s\n"
                   "sdxl_ffgeglu_1280_b16@ln_fold_tma 0.7700 557.0 TFLOP/s\n"
                   "sdxl_ffgeglu_1280_b16@ln_unfused_tma 0.9000 476.0 TFLOP/s\n"
                   "sdxl_ffgeglu_640_b16@ln_fold_tma 0.7900 543.0 TFLOP/s\n"
                   "sdxl_ffgeglu_640_b16@ln_unfused_tma 0.8100 530.0 TFLOP/s\n")
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    # the TMA form alone loses to cuBLASLt (53.30 against 52.72) and to the cp.async form (49.40);
    # with the fold it saves 60 x 0.13 + 10 x 0.02 = 8.0 ms: 45.30, the best way
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_GEMM_WGMMA_LOAD=tma",
                                "LOCO_CUDA_LN_FOLD=1"]
    assert "LOCO_CUDA_GEGLU=wgmma (tma): 53.30 against 52.72 ms a UNet call" in r.stderr
    assert "LOCO_CUDA_GEGLU=wgmma (tma, LayerNorm folded): 45.30 against 52.72 ms a UNet call" in r.stderr
    assert "LOCO_CUDA_GEGLU=wgmma (tma clusters, LayerNorm folded): rows missing" in r.stderr


def test_pick_takes_the_async_arrive_forms_when_they_win(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS + "sdxl_self_d64_4096_b16@fa_wgmma_ws3_arrive 1.4000 480.0 TFLOP/s\n"
                   "sdxl_self_d64_1024_b16@fa_wgmma_ws3_arrive 0.1900 440.0 TFLOP/s\n"
                   "sdxl_ffgeglu_1280_b16@geglu_wgmma_arrive 0.6500 650.0 TFLOP/s\n"
                   "sdxl_ffgeglu_640_b16@geglu_wgmma_arrive 0.7000 600.0 TFLOP/s\n")
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_FLASH_LOAD=arrive", "LOCO_CUDA_GEGLU=wgmma",
                                "LOCO_CUDA_GEMM_WGMMA_LOAD=arrive"]


def test_pick_takes_the_tma_convolution_only_when_its_rows_win_together(tmp_path):
    conv = ("sdxl_resconv_320_128_b16 1.0000 380.0 TFLOP/s\nsdxl_resconv_320_128_b16@conv_tma 0.7000 540.0 TFLOP/s\n"
            "sdxl_resconv_640_64_b16 0.5000 500.0 TFLOP/s\nsdxl_resconv_640_64_b16@conv_tma {} 480.0 TFLOP/s\n"
            "sdxl_conv3x3_640_128_b16 2.0000 400.0 TFLOP/s\nsdxl_conv3x3_640_128_b16@conv_tma 1.5000 530.0 TFLOP/s\n")
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS + conv.format("0.6000"))  # 10 x (0.3 - 0.1) + 0.5 saved: it goes in
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_CONV=tma", "LOCO_CUDA_GEGLU=wgmma"]
    assert "LOCO_CUDA_CONV=tma: 14.50 against 17.00 ms a UNet call" in r.stderr
    ops.write_text(OPS + conv.format("0.9000"))  # 10 x 0.4 lost at 64x64: it stays out
    r = run(PICK, ops)
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_GEGLU=wgmma"]


def test_pick_takes_the_cluster_convolution_when_it_beats_both(tmp_path):
    conv = ("sdxl_resconv_320_128_b16 1.0000 380.0 TFLOP/s\nsdxl_resconv_320_128_b16@conv_tma 0.7000 540.0 TFLOP/s\n"
            "sdxl_resconv_320_128_b16@conv_tma_mc 0.6500 580.0 TFLOP/s\n"
            "sdxl_resconv_640_64_b16 0.5000 500.0 TFLOP/s\nsdxl_resconv_640_64_b16@conv_tma 0.6000 480.0 TFLOP/s\n"
            "sdxl_resconv_640_64_b16@conv_tma_mc 0.5500 520.0 TFLOP/s\n"
            "sdxl_conv3x3_640_128_b16 2.0000 400.0 TFLOP/s\nsdxl_conv3x3_640_128_b16@conv_tma 1.5000 530.0 TFLOP/s\n"
            "sdxl_conv3x3_640_128_b16@conv_tma_mc 1.4000 570.0 TFLOP/s\n")
    ops = tmp_path / "ops_loco.txt"
    ops.write_text(OPS + conv)
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    # 6.5 + 5.5 + 1.4 = 13.4 against the plain TMA form's 14.5 and the default's 17.0
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_CONV=tma", "LOCO_CUDA_CONV_TMA_CLUSTER=2",
                                "LOCO_CUDA_GEGLU=wgmma"]
    assert "LOCO_CUDA_CONV=tma LOCO_CUDA_CONV_TMA_CLUSTER=2: 13.40 against 17.00 ms a UNet call" in r.stderr


VAE = ("sdxl_vae_conv_512_128 0.4200 184.0 TFLOP/s\nsdxl_vae_conv_512_128@conv_cudnn 0.2800 276.0 TFLOP/s\n"
       "sdxl_vae_conv_256_512 2.3800 130.0 TFLOP/s\nsdxl_vae_conv_256_512@conv_cudnn 1.3000 238.0 TFLOP/s\n"
       "sdxl_vae_conv_128_1024 3.1300 99.0 TFLOP/s\nsdxl_vae_conv_128_1024@conv_cudnn 1.8900 164.0 TFLOP/s\n"
       "sdxl_vae_conv_256_1024 9.0000 110.0 TFLOP/s\nsdxl_vae_conv_256_1024@conv_cudnn 6.0000 165.0 TFLOP/s\n"
       "sdxl_vae_conv_out_128_3 2.9500 2.5 TFLOP/s\nsdxl_vae_conv_out_128_3@conv_cudnn {} 7.3 TFLOP/s\n")
UNET_CONV = ("sdxl_resconv_320_128_b16 1.0000 380.0 TFLOP/s\nsdxl_resconv_320_128_b16@conv_tma 0.9000 420.0 TFLOP/s\n"
             "sdxl_resconv_320_128_b16@conv_cudnn {} 450.0 TFLOP/s\n"
             "sdxl_resconv_640_64_b16 0.5000 500.0 TFLOP/s\nsdxl_resconv_640_64_b16@conv_tma 0.5000 500.0 TFLOP/s\n"
             "sdxl_resconv_640_64_b16@conv_cudnn 0.5500 455.0 TFLOP/s\n"
             "sdxl_conv3x3_640_128_b16 2.0000 400.0 TFLOP/s\nsdxl_conv3x3_640_128_b16@conv_tma 2.0000 400.0 TFLOP/s\n"
             "sdxl_conv3x3_640_128_b16@conv_cudnn 1.9000 420.0 TFLOP/s\n")


def test_pick_takes_cudnn_for_the_unet_convs_or_the_decoder_alone(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    # the UNet rows: cuDNN 10 x 0.8 + 5.5 + 1.9 = 15.4 against TMA's 16.0 and the default's 17.0:
    # LOCO_CUDA_CONV=cudnn, which takes the decoder's f32 convs too (no second variable)
    ops.write_text(OPS + UNET_CONV.format("0.8000") + VAE.format("1.0000"))
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_CONV=cudnn", "LOCO_CUDA_GEGLU=wgmma"]
    assert "LOCO_CUDA_CONV=cudnn: 15.40 against 17.00 ms a UNet call" in r.stderr
    # cuDNN loses the UNet rows to TMA (10 x 0.95 + 5.5 + 1.9 = 16.9 against 16.0) but wins the
    # decoder's: TMA for the UNet, cuDNN for the f32 convs
    ops.write_text(OPS + UNET_CONV.format("0.9500") + VAE.format("1.0000"))
    r = run(PICK, ops)
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_CONV=tma", "LOCO_CUDA_CONV_F32=cudnn",
                                "LOCO_CUDA_GEGLU=wgmma"]
    # 10 x 0.28 + 5 x 1.3 + 5 x 1.89 + 6.0 + 1.0 = 25.75 against 4.2 + 11.9 + 15.65 + 9.0 + 2.95 = 43.70
    assert "LOCO_CUDA_CONV_F32=cudnn: 25.75 against 43.70 ms of the decoder's timed convs (batch 1)" in r.stderr
    # ... and not when it loses them (a conv_out at 30 ms: 54.75 against 43.70)
    ops.write_text(OPS + UNET_CONV.format("0.9500") + VAE.format("30.0000"))
    r = run(PICK, ops)
    assert r.stdout.split() == ["LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_CONV=tma", "LOCO_CUDA_GEGLU=wgmma"]
    # an older table without the decoder's cuDNN rows says so and adds nothing
    ops.write_text(OPS)
    r = run(PICK, ops)
    assert "LOCO_CUDA_CONV_F32=cudnn: rows missing" in r.stderr


def test_pick_prints_nothing_when_no_candidate_wins(tmp_path):
    ops = tmp_path / "ops_loco.txt"
    ops.write_text("sdxl_self_d64_4096_b16 2.4 285.0 TFLOP/s\nsdxl_self_d64_1024_b16 0.34 250.0 TFLOP/s\n"
                   "sdxl_self_d64_4096_b16@fa_wgmma 3.0 200.0 TFLOP/s\nsdxl_self_d64_1024_b16@fa_wgmma 0.5 170.0 TFLOP/s\n")
    r = run(PICK, ops)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_report_puts_tagged_runs_under_their_configuration(tmp_path):
    models = tmp_path / "models.txt"
    models.write_text(
        "RESULT impl=torch matmul_tflops=750\n"
        "RESULT impl=loco family=sdxl size=1024 batch=8 s_per_image=1.549 calls=50 steps=50 timed_steps=3\n"
        "RESULT impl=diffusers family=sdxl size=1024 batch=8 s_per_image=1.844 calls=50 steps=50 timed_steps=3\n")
    cands = tmp_path / "candidates.txt"
    cands.write_text(
        "RESULT impl=loco_best family=sdxl size=1024 batch=8 s_per_image=1.280 calls=50 steps=50 timed_steps=3\n")
    r = run(REPORT, models, cands, tmp_path / "absent.txt")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    main = next(i for i, line in enumerate(lines) if line.startswith("sdxl"))
    assert "0.84" in lines[main]
    assert lines[main + 1].startswith("  with best") and "1.280" in lines[main + 1] and "0.69" in lines[main + 1]
