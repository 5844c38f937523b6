/* test_cuda_optin.c: the CUDA backend's opt-in and experimental paths against the CPU backend,
 * as test_cuda_ops.c checks the default ones: im2col beside the GEMM on a side stream, GEMM
 * autotuning, the Hopper (sm_90a) wgmma kernels with their layout self-test, the LayerNorm
 * folded into gemm_wgmma.cu's GEMMs, cuDNN's fused attention and its convolutions. Each test
 * creates its backends under the LOCO_CUDA_* switch it tests and first checks, from the
 * backend's description, that the path is really in use where the device has it.
 *
 * Without a GPU every test reports skipped; bench/gpu-check.sh runs this binary on a GPU
 * machine and treats a skip there as a failure. */
#include "cuda_check_util.h"

/* A backend created under LOCO_CUDA_CONV=algo describes itself (printed); on a compute capability
 * 9.0 device (the emulator's is one) the description must name `want`: the kernel tested is really
 * the one in use. check_conv sets the variable again per call. */
static int conv_route_described(const char *algo, const char *want) {
    setenv("LOCO_CUDA_CONV", algo, 1);
    char desc[512];
    const int described = gpu_describe(desc, sizeof desc);
    unsetenv("LOCO_CUDA_CONV");
    if (!described) return 0;
    fprintf(stderr, "%s: %s\n", algo, desc);
    if (strstr(desc, "sm_90") && !strstr(desc, want)) return fprintf(stderr, "'%s' is not in it\n", want), 0;
    return 1;
}

/* LOCO_CUDA_CONV=wgmma: conv_wgmma.cu (Hopper's wgmma, sm_90a; experimental) where it applies
 * on a compute capability 9.0 device (the emulator's is one), else the automatic route (the
 * backend's description says which). Tiles off the 128 x 128 grid, a K tail (Cin 40: 120 (ci, r)
 * rows, 7.5 tiles of 16; Cin 8: 1.5 tiles), several images per pixel tile, both 16-bit dtypes,
 * no bias, kernel heights 1 and 5, Ho != H, and a stride-2 conv that the kernel leaves to the
 * other routes. */
TEST(cuda_conv2d_wgmma) {
    GPU_ENV(e, LOCO_F16, 90);
    genv_close(&e);
    CHECK(conv_route_described("wgmma", "wgmma (experimental)"));
    const char *wg = "wgmma";
    CHECK(check_conv(wg, LOCO_F16, 2, 32, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 91));   /* K 288: 6 whole tiles */
    CHECK(check_conv(wg, LOCO_F16, 1, 40, 13, 16, 200, 3, 3, 1, 1, 1, 1, 1, 1, 92));  /* K tail, Cout 200, P 208 */
    CHECK(check_conv(wg, LOCO_BF16, 3, 320, 8, 8, 320, 3, 3, 1, 1, 1, 1, 1, 1, 93));  /* UNet 8x8 level */
    CHECK(check_conv(wg, LOCO_F16, 2, 8, 24, 32, 16, 3, 3, 1, 1, 1, 1, 1, 0, 94));    /* K 72, no bias */
    CHECK(check_conv(wg, LOCO_F16, 1, 64, 64, 64, 128, 3, 3, 1, 1, 1, 1, 1, 1, 95));  /* 32 pixel tiles */
    CHECK(check_conv(wg, LOCO_F16, 2, 16, 16, 16, 16, 3, 3, 2, 0, 1, 0, 1, 1, 96));   /* stride 2: other route */
    CHECK(check_conv(wg, LOCO_F16, 2, 16, 12, 16, 24, 5, 3, 1, 2, 2, 1, 1, 1, 97));   /* kh 5, pad 2 vertically */
    CHECK(check_conv(wg, LOCO_BF16, 1, 24, 10, 8, 40, 1, 3, 1, 0, 0, 1, 1, 1, 98));   /* kh 1 */
    CHECK(check_conv(wg, LOCO_F16, 1, 16, 9, 16, 32, 3, 3, 1, 0, 0, 1, 1, 1, 99));    /* no vertical pad: Ho 7 */
}

/* LOCO_CUDA_CONV=tma: conv_tma.cu (sm_90a; experimental) for 3x3, stride 1, pad 1 convs with
 * Cin, Cout and W multiples of 64, else the automatic route. Zeros from the copies at every image
 * edge (W 64: each run is a whole row), two runs per row (W 128) and three (W 192), pixel tiles
 * across images and one past the batch's end (N 3 x 192 pixels), channel tiles whose second
 * warpgroup has no rows (Cout 192 and 320), both dtypes, no bias; a block walking several tiles
 * (its stages' phases running on); shapes the kernel leaves to the other routes; and the fused
 * ResNet conv: the GroupNorm applied while the input is rewritten channels-last, bias, time
 * embedding and shortcut in the epilogue. */
static int conv_tma_cases(const char *described) {
    int ok = conv_route_described("tma", described);
    const char *tma = "tma";
    ok = ok && check_conv(tma, LOCO_F16, 2, 64, 8, 64, 192, 3, 3, 1, 1, 1, 1, 1, 1, 61);   /* 4 pixel tiles */
    ok = ok && check_conv(tma, LOCO_BF16, 1, 128, 4, 128, 320, 3, 3, 1, 1, 1, 1, 1, 0, 62); /* 3 channel tiles */
    ok = ok && check_conv(tma, LOCO_F16, 3, 64, 3, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 63);    /* tiles across images */
    ok = ok && check_conv(tma, LOCO_F16, 1, 64, 4, 192, 64, 3, 3, 1, 1, 1, 1, 1, 1, 64);   /* 3 runs a row */
    ok = ok && check_conv(tma, LOCO_F16, 1, 64, 68, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 77);   /* 17 pixel tiles */
    setenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS", "2", 1);
    ok = ok && check_conv(tma, LOCO_F16, 2, 128, 8, 64, 128, 3, 3, 1, 1, 1, 1, 1, 1, 65);  /* 4 tiles per block */
    /* 3 tiles per block, channel tiles rotated, a half tile between two staged ones */
    ok = ok && check_conv(tma, LOCO_F16, 1, 64, 4, 128, 320, 3, 3, 1, 1, 1, 1, 1, 1, 73);
    const fused_case walk = {"tma", LOCO_F16, 1, 64, 4, 128, 192, 3, 32, 1, 1, 1, 1}; /* the epilogue's residual */
    ok = ok && check_conv_fused(&walk, 74);
    unsetenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS");
    ok = ok && check_conv(tma, LOCO_F16, 2, 32, 8, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 66);    /* Cin 32: other route */
    ok = ok && check_conv(tma, LOCO_F16, 2, 64, 8, 48, 64, 3, 3, 1, 1, 1, 1, 1, 1, 67);    /* W 48: other route */
    ok = ok && check_conv(tma, LOCO_F16, 1, 64, 4, 64, 4, 3, 3, 1, 1, 1, 1, 1, 1, 71);     /* Cout 4: other route */
    const fused_case fused[] = {
        {"tma", LOCO_F16, 2, 64, 8, 64, 192, 3, 32, 1, 1, 1, 1}, /* the ResNet's conv2 with all terms */
        {"tma", LOCO_BF16, 2, 128, 4, 64, 128, 3, 32, 1, 0, 0, 1}, /* prologue only: bits of the unfused */
        {"tma", LOCO_F16, 1, 64, 4, 128, 64, 3, 0, 0, 1, 0, 0},  /* time embedding only, no conv bias */
    };
    for (size_t i = 0; i < sizeof fused / sizeof fused[0]; i++) ok = ok && check_conv_fused(&fused[i], 68 + i);
    /* a shortcut 4 bytes off 16-byte alignment: the epilogue's 16-byte loads cannot take it, the
     * conv bias pass adds it (the emulator's -fsanitize=alignment would trap on a misaligned load) */
    const fused_case misaligned = {"tma", LOCO_F16, 1, 64, 4, 64, 64, 3, 32, 1, 1, 1, 1};
    ok = ok && check_conv_fused_at(&misaligned, 75, 2);
    setenv("LOCO_CUDA_NORM_GATHER", "0", 1); /* the GroupNorm through a scratch tensor instead */
    ok = ok && check_conv_fused(&fused[0], 72);
    unsetenv("LOCO_CUDA_NORM_GATHER");
    return ok;
}

TEST(cuda_conv2d_tma) {
    GPU_ENV(e, LOCO_F16, 60);
    genv_close(&e);
    CHECK(conv_tma_cases("conv: tma (experimental)"));
}

/* The same in clusters of two (LOCO_CUDA_CONV_TMA_CLUSTER=2): the blocks of a pair take two pixel
 * tiles of one channel tile, each loading half of the weights' box and multicasting it to both;
 * pairs where the pixel tiles are even or at least 16 (else the plain form). Among the cases: 17
 * pixel tiles (a last pair's second past the batch), half channel tiles whose idle warpgroup
 * hands stages back to both producers (Cout 192, 320), one pair walking every tile
 * (LOCO_CUDA_GEMM_WGMMA_BLOCKS=2). */
TEST(cuda_conv2d_tma_cluster) {
    GPU_ENV(e, LOCO_F16, 76);
    genv_close(&e);
    setenv("LOCO_CUDA_CONV_TMA_CLUSTER", "2", 1);
    const int ok = conv_tma_cases("conv: tma, clusters of 2 (experimental)");
    unsetenv("LOCO_CUDA_CONV_TMA_CLUSTER");
    CHECK(ok);
}

/* LOCO_CUDA_IM2COL_OVERLAP=1: whole-sample chunks filled on a side stream while the main stream
 * multiplies the previous one, two buffers taking turns. Five samples of 576 KiB in a 1200 KiB
 * budget make five chunks of one (buffer 0 refilled twice after its GEMMs, buffer 1 once); the default
 * budget makes two chunks of two. Each conv runs twice and must give the same bits. */
TEST(cuda_conv2d_im2col_overlapped) {
    GPU_ENV(e, LOCO_F16, 85);
    genv_close(&e);
    setenv("LOCO_CUDA_IM2COL_OVERLAP", "1", 1);
    int ok = gpu_describe_has("im2col overlapped");
    setenv("LOCO_CUDA_IM2COL_KB", "1200", 1);
    ok = ok && check_conv("im2col", LOCO_F16, 5, 32, 32, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 86);
    ok = ok && check_conv("im2col", LOCO_F32, 3, 32, 16, 16, 40, 3, 3, 1, 1, 1, 1, 1, 1, 87);
    unsetenv("LOCO_CUDA_IM2COL_KB");
    ok = ok && check_conv("im2col", LOCO_BF16, 4, 64, 16, 16, 128, 3, 3, 1, 1, 1, 1, 1, 1, 88);
    ok = ok && check_conv(NULL, LOCO_F16, 2, 128, 8, 8, 256, 3, 3, 1, 1, 1, 1, 1, 1, 89); /* auto route: im2col */
    unsetenv("LOCO_CUDA_IM2COL_OVERLAP");
    CHECK(ok);
}

/* LOCO_CUDA_GEMM_TUNE=1: the first eager call of each large GEMM shape times cuBLASLt's top
 * candidates on a scratch output and keeps the fastest. The results must still match the CPU,
 * an accumulating GEMM must add once (the timing runs write elsewhere), and a conv run twice
 * (the second on the settled plan) must give the same bits as the first. */
TEST(cuda_gemm_tuned) {
    GPU_ENV(e, LOCO_F16, 160);
    genv_close(&e);
    setenv("LOCO_CUDA_GEMM_TUNE", "1", 1);
    int ok = gpu_describe_has("GEMMs tuned");
    ok = ok && check_linear(LOCO_F16, 4, 4096, 320, 320, 1, LOCO_ACT_NONE, 161); /* 3.4 GFLOP: tuned */
    ok = ok && check_linear(LOCO_F16, 2, 4096, 320, 1280, 1, -1, 162);          /* accumulate, tuned plan */
    ok = ok && check_linear(LOCO_F16, 1, 2048, 640, 640, 1, -2, 165); /* tuned by the accumulating call */
    ok = ok && check_linear(LOCO_BF16, 2, 77, 96, 200, 1, LOCO_ACT_GELU_TANH, 163); /* too small to tune */
    ok = ok && check_conv("im2col", LOCO_F16, 4, 64, 32, 32, 128, 3, 3, 1, 1, 1, 1, 1, 1, 164);
    unsetenv("LOCO_CUDA_GEMM_TUNE");
    CHECK(ok);
}

/* loco_backend_selftest: on a compute capability 9.0 GPU, the wgmma layout probes of
 * wgmma_probe.cu (one line each, printed for gpu-check's log); the ones the wgmma kernels rely
 * on must hold. On other GPUs it says there is nothing to check. */
TEST(cuda_selftest) {
    GPU_ENV(e, LOCO_F16, 170);
    char report[2048];
    loco_err err;
    loco_err_clear(&err);
    const loco_status st = loco_backend_selftest(e.gpu, report, sizeof report, &err);
    fprintf(stderr, "%s", report);
    const int hopper = strstr(loco_backend_describe(e.gpu), "(sm_90,") != NULL;
    /* the emulator reads the swizzled layout by its own code (emu_wgmma.cc): the probe's writer must agree */
    const int emulated = strstr(loco_backend_describe(e.gpu), "emulator") != NULL;
    genv_close(&e);
    CHECK_MSG(st == LOCO_OK, "%s", err.msg);
    CHECK_MSG(hopper ? strstr(report, "wgmma kmajor_k48") != NULL : strstr(report, "not checked") != NULL, "%s",
              report);
    CHECK_MSG(!emulated || (strstr(report, "wgmma kmajor_sw128       ok") && strstr(report, "wgmma mn_sw128           ok")),
              "%s", report);
}

/* LOCO_CUDA_FLASH=wgmma (64-key tiles), =wgmma128 (128-key tiles) and =wgmma3 (64-key tiles,
 * 192-row blocks of three warpgroups at head dims 64 and 80): attention_wgmma.cu (Hopper's
 * wgmma, sm_90a; experimental) for head dims 40, 64 and 80 on a compute capability 9.0 device
 * (the emulator's is one; the backend's description says whether it is in use); elsewhere the
 * mma.sync kernel. =wgmma_ws, =wgmma_ws3 and =wgmma_ws128: the warp-specialised form
 * (attention_wgmma_ws.cu), the last with 128-key tiles in four stages.
 * Tails of the 128-row blocks and of the key tiles (1 to 18 tiles, so that the four-stage ring
 * wraps, and the warp-specialised kernel's six stages of 64 keys or four of 128 go round three
 * times: its mbarriers' phases 0, 1, 0), cross-attention's 77 keys, causal masking, per-sample K/V rows,
 * both 16-bit dtypes; head dim 160 stays on the mma.sync kernel. Each call runs twice for the
 * same bits. */
static int check_flash_wgmma(const char *name, const char *described, int seed) {
    setenv("LOCO_CUDA_FLASH", name, 1);
    setenv("LOCO_CUDA_FLASH_SHORT", "0", 1); /* the 77-key cases on this kernel, not attention_short.cu */
    int ok = gpu_describe_has(described);
    static const int kv[4] = {1, 0, 1, 1};
    ok = ok && check_attention(LOCO_F16, 2, 2, 300, 300, 8, 40, 0, NULL, seed + 1);   /* SD 1.5 self, tails */
    ok = ok && check_attention(LOCO_F16, 2, 2, 130, 77, 8, 80, 0, NULL, seed + 2);    /* cross-attention */
    ok = ok && check_attention(LOCO_BF16, 2, 2, 257, 257, 5, 64, 0, NULL, seed + 3);
    ok = ok && check_attention(LOCO_F16, 2, 2, 77, 77, 12, 64, 1, NULL, seed + 4);    /* CLIP text, causal */
    ok = ok && check_attention(LOCO_F16, 1, 1, 200, 200, 2, 40, 1, NULL, seed + 5);   /* causal, 2 blocks */
    ok = ok && check_attention(LOCO_F16, 4, 2, 96, 77, 8, 40, 0, kv, seed + 6);       /* kv_index */
    ok = ok && check_attention(LOCO_BF16, 1, 1, 128, 64, 4, 80, 0, NULL, seed + 7);   /* whole tiles only */
    ok = ok && check_attention(LOCO_F16, 1, 1, 64, 200, 4, 160, 0, NULL, seed + 8);   /* 160: mma.sync */
    ok = ok && check_attention(LOCO_BF16, 1, 1, 640, 640, 2, 80, 0, NULL, seed + 9);  /* 5 or 10 key tiles */
    ok = ok && check_attention_packed(LOCO_F16, 2, 300, 8, 40, NULL, seed + 10);     /* packed q|k|v rows */
    ok = ok && check_attention_packed(LOCO_BF16, 2, 130, 5, 64, kv, seed + 11);
    ok = ok && check_attention(LOCO_F16, 1, 1, 384, 384, 2, 64, 0, NULL, seed + 12);  /* whole 192-row blocks */
    ok = ok && check_attention(LOCO_F16, 1, 1, 70, 1100, 2, 64, 0, NULL, seed + 13);  /* 18 key tiles (9 of 128) */
    unsetenv("LOCO_CUDA_FLASH");
    unsetenv("LOCO_CUDA_FLASH_SHORT");
    return ok;
}

/* LOCO_CUDA_FLASH=cudnn: self-attention through cuDNN's fused SDPA (attention_cudnn.cu,
 * experimental) under LOCO_CUDA_CUDNN_STRICT=1, so that a shape cuDNN has no plan for fails here
 * instead of running our kernel. On a GPU the route must be up (the description names cuDNN's
 * version); on the emulator the description says why not and every call runs our kernels. */
static int cudnn_route_on(int emulated) {
    setenv("LOCO_CUDA_FLASH", "cudnn", 1);
    setenv("LOCO_CUDA_CUDNN_STRICT", "1", 1);
    return gpu_describe_has(emulated ? "attention: cuDNN unavailable (not on the CUDA emulator)"
                                     : "SDPA where it applies");
}
/* (skips the test without a GPU) */
#define CUDNN_ROUTE_ON(ok, seed)                                                                  \
    GPU_ENV(e_, LOCO_F16, seed);                                                                  \
    const int emulated_ = strstr(loco_backend_describe(e_.gpu), "emulator") != NULL;              \
    genv_close(&e_);                                                                              \
    int ok = cudnn_route_on(emulated_)
static void cudnn_route_off(void) {
    unsetenv("LOCO_CUDA_CUDNN_STRICT");
    unsetenv("LOCO_CUDA_FLASH");
}

/* Head dim 64, SD-XL's (gpu-check times the route only when this passes): both 16-bit dtypes,
 * lengths off every tile size, more queries than keys and fewer; and the calls it must leave to
 * our kernels (causal, per-sample K/V rows, 77 keys: attention_short.cu) give what they give
 * without it. */
TEST(cuda_attention_cudnn) {
    CUDNN_ROUTE_ON(ok, 300);
    static const int kv[4] = {1, 0, 1, 1};
    ok = ok && check_attention(LOCO_BF16, 2, 2, 257, 257, 5, 64, 0, NULL, 301);
    ok = ok && check_attention(LOCO_F16, 2, 2, 1024, 1024, 4, 64, 0, NULL, 302);  /* SD-XL's 32x32 level */
    ok = ok && check_attention(LOCO_BF16, 2, 2, 1100, 96, 2, 64, 0, NULL, 303);
    ok = ok && check_attention(LOCO_F16, 1, 1, 90, 300, 2, 64, 0, NULL, 304);
    ok = ok && check_attention(LOCO_F16, 2, 2, 130, 77, 8, 64, 0, NULL, 305);     /* text: attention_short.cu */
    ok = ok && check_attention(LOCO_F16, 1, 1, 200, 200, 2, 64, 1, NULL, 306);    /* causal: ours */
    ok = ok && check_attention(LOCO_F16, 4, 2, 96, 90, 8, 64, 0, kv, 307);        /* kv_index: ours */
    cudnn_route_off();
    CHECK(ok);
}

/* SD 1.5's and SD 2's head dims (40, 80, 160) and packed q|k|v rows, which the UNets use (packed
 * and apart must give the same bits: two plans of one engine, other strides). */
TEST(cuda_attention_cudnn_dims) {
    CUDNN_ROUTE_ON(ok, 310);
    ok = ok && check_attention(LOCO_F16, 2, 2, 300, 300, 8, 40, 0, NULL, 311);  /* SD 1.5's 64x64 level */
    ok = ok && check_attention(LOCO_F16, 1, 1, 640, 640, 2, 80, 0, NULL, 312);
    ok = ok && check_attention(LOCO_BF16, 1, 1, 96, 200, 4, 160, 0, NULL, 313);
    ok = ok && check_attention_packed(LOCO_F16, 2, 300, 8, 40, NULL, 314);
    ok = ok && check_attention_packed(LOCO_BF16, 2, 130, 5, 64, NULL, 315);
    cudnn_route_off();
    CHECK(ok);
}

/* LOCO_CUDA_CONV=cudnn: every conv that is not 1x1 through cuDNN (conv_cudnn.cu, experimental),
 * strict as the attention above: a shape cuDNN has no plan for fails here. The UNet's and VAE's
 * kinds of conv in all three dtypes (f32 as TF32, as PyTorch runs it), stride 2, the VAE
 * encoder's bottom-right padding, a 5x3 and a 1x3 kernel, few output channels (conv_out), no
 * bias, each run twice for the same bits (engines whose results vary are refused); the fused
 * ResNet conv (its GroupNorm through the scratch tensor, the epilogue terms in conv.cu's pass);
 * and samples in chunks (LOCO_CUDA_CUDNN_CHUNK: 2 + 2 + 1, two plans of one conv; and chunks
 * 8 bytes off 16-byte alignment). Strict also makes a conv the route does not take an error, so
 * every case here runs on cuDNN. On the
 * emulator the route is off and says so, and every conv runs conv.cu's own routes. */
static int conv_cudnn_route_on(int emulated) {
    setenv("LOCO_CUDA_CUDNN_STRICT", "1", 1);
    return conv_route_described("cudnn", emulated ? "conv: cuDNN for convs unavailable (not on the CUDA emulator)"
                                                  : "for convs that are not 1x1 (experimental)");
}

TEST(cuda_conv2d_cudnn) {
    GPU_ENV(e, LOCO_F16, 330);
    const int emulated = strstr(loco_backend_describe(e.gpu), "emulator") != NULL;
    genv_close(&e);
    const char *cd = "cudnn";
    int ok = conv_cudnn_route_on(emulated);
    ok = ok && check_conv(cd, LOCO_F16, 2, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 331);    /* a UNet level */
    ok = ok && check_conv(cd, LOCO_BF16, 3, 40, 13, 16, 72, 3, 3, 1, 1, 1, 1, 1, 1, 332);   /* odd sizes */
    ok = ok && check_conv(cd, LOCO_F32, 2, 32, 24, 24, 48, 3, 3, 1, 1, 1, 1, 1, 1, 333);    /* the f32 VAE's */
    ok = ok && check_conv(cd, LOCO_F16, 2, 32, 16, 16, 32, 3, 3, 2, 1, 1, 1, 1, 1, 334);    /* downsampler */
    ok = ok && check_conv(cd, LOCO_F32, 1, 16, 16, 16, 16, 3, 3, 2, 0, 1, 0, 1, 1, 335);    /* VAE encoder's */
    ok = ok && check_conv(cd, LOCO_F16, 2, 16, 12, 16, 24, 5, 3, 1, 2, 2, 1, 1, 0, 336);    /* 5x3, no bias */
    ok = ok && check_conv(cd, LOCO_BF16, 1, 24, 10, 8, 40, 1, 3, 1, 0, 0, 1, 1, 1, 337);    /* 1x3 */
    ok = ok && check_conv(cd, LOCO_F16, 2, 64, 16, 16, 4, 3, 3, 1, 1, 1, 1, 1, 1, 338);     /* UNet conv_out */
    ok = ok && check_conv(cd, LOCO_F32, 1, 32, 32, 32, 3, 3, 3, 1, 1, 1, 1, 1, 1, 339);     /* VAE conv_out */
    ok = ok && check_conv(cd, LOCO_F16, 2, 4, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 340);     /* conv_in, Cin 4 */
    const fused_case fused[] = {
        {"cudnn", LOCO_F16, 2, 64, 8, 16, 64, 3, 32, 1, 1, 1, 1}, /* the ResNet's conv2 with all terms */
        {"cudnn", LOCO_F32, 2, 64, 8, 8, 32, 3, 32, 1, 0, 0, 1},  /* the f32 VAE's conv1: the norm alone */
    };
    for (size_t i = 0; i < sizeof fused / sizeof fused[0]; i++) ok = ok && check_conv_fused(&fused[i], 341 + i);
    setenv("LOCO_CUDA_CUDNN_CHUNK", "8192", 1); /* 2 samples of 16x16x16 per call: 2 + 2 + 1 */
    ok = ok && check_conv(cd, LOCO_F16, 5, 16, 16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 343);
    /* ... and chunks that start 8 bytes off 16 (y: 3 x 5 x 5 floats a sample, 2 a chunk): a plan of
     * 8-byte alignment */
    setenv("LOCO_CUDA_CUDNN_CHUNK", "900", 1);
    ok = ok && check_conv(cd, LOCO_F32, 3, 16, 5, 5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 344);
    unsetenv("LOCO_CUDA_CUDNN_CHUNK");
    unsetenv("LOCO_CUDA_CUDNN_STRICT");
    CHECK(ok);
}

/* LOCO_CUDA_CONV_F32=cudnn: cuDNN for the f32 convs alone (SD-XL's upcast VAE decoder); f16 ones
 * keep the routes LOCO_CUDA_CONV picks (the automatic one here, then conv_tma.cu's beside it),
 * whatever cuDNN would do with them. Strict: an f32 shape without a plan fails. */
TEST(cuda_conv2d_cudnn_f32) {
    GPU_ENV(e, LOCO_F16, 350);
    const int emulated = strstr(loco_backend_describe(e.gpu), "emulator") != NULL;
    genv_close(&e);
    setenv("LOCO_CUDA_CONV_F32", "cudnn", 1);
    setenv("LOCO_CUDA_CUDNN_STRICT", "1", 1);
    int ok = gpu_describe_has(emulated ? "conv: cuDNN for f32 convs unavailable (not on the CUDA emulator)"
                                       : "for f32 convs that are not 1x1 (experimental)");
    ok = ok && check_conv(NULL, LOCO_F32, 2, 32, 24, 24, 48, 3, 3, 1, 1, 1, 1, 1, 1, 351);
    ok = ok && check_conv(NULL, LOCO_F16, 2, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 352);
    ok = ok && check_conv("tma", LOCO_F16, 1, 64, 4, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 353);
    ok = ok && check_conv("tma", LOCO_F32, 1, 64, 8, 8, 32, 3, 3, 1, 1, 1, 1, 1, 1, 354);
    unsetenv("LOCO_CUDA_CUDNN_STRICT");
    unsetenv("LOCO_CUDA_CONV_F32");
    CHECK(ok);
}

/* Whether the test device is a compute capability 9.0 one (skips the test without a GPU). */
#define HOPPER_OR_SKIP(hopper, seed)                                                       \
    GPU_ENV(e_, LOCO_F16, seed);                                                           \
    const int hopper = strstr(loco_backend_describe(e_.gpu), "(sm_90,") != NULL;           \
    genv_close(&e_)

TEST(cuda_attention_wgmma) {
    HOPPER_OR_SKIP(hopper, 180);
    CHECK(check_flash_wgmma("wgmma", hopper ? "flash: wgmma (experimental)" : "flash: wgmma unavailable", 180));
}

TEST(cuda_attention_wgmma128) {
    HOPPER_OR_SKIP(hopper, 240);
    CHECK(check_flash_wgmma("wgmma128", hopper ? "flash: wgmma, 128-key tiles (experimental)"
                                               : "flash: wgmma unavailable", 240));
}

TEST(cuda_attention_wgmma3) {
    HOPPER_OR_SKIP(hopper, 250);
    CHECK(check_flash_wgmma("wgmma3", hopper ? "flash: wgmma, 3 warpgroups (experimental)"
                                             : "flash: wgmma unavailable", 250));
}

TEST(cuda_attention_wgmma_ws) {
    HOPPER_OR_SKIP(hopper, 260);
    CHECK(check_flash_wgmma("wgmma_ws", hopper ? "flash: wgmma, producer warp (experimental)"
                                                : "flash: wgmma unavailable", 260));
}

TEST(cuda_attention_wgmma_ws3) {
    HOPPER_OR_SKIP(hopper, 270);
    CHECK(check_flash_wgmma("wgmma_ws3", hopper ? "flash: wgmma, producer warp, 3 warpgroups (experimental)"
                                                 : "flash: wgmma unavailable", 270));
}

TEST(cuda_attention_wgmma_ws128) {
    HOPPER_OR_SKIP(hopper, 275);
    CHECK(check_flash_wgmma("wgmma_ws128", hopper ? "flash: wgmma, producer warp, 128-key tiles (experimental)"
                                                   : "flash: wgmma unavailable", 275));
}

/* The warp-specialised kernels with another producer (LOCO_CUDA_FLASH_LOAD): =arrive publishes
 * each tile by cp.async.mbarrier.arrive (no wait for its own copies, no proxy fence), as
 * CUTLASS's and FlashAttention-3's cp.async producers do; =tma has one thread load K and V by
 * TMA into 128-byte-swizzled stages at head dim 64 (the other head dims keep cp.async), the
 * ones columns in a region of their own. The emulator lands both kinds of copy as late as the
 * block allows. */
static int check_flash_ws_load(const char *load, const char *name, const char *described, int seed) {
    setenv("LOCO_CUDA_FLASH_LOAD", load, 1);
    const int ok = check_flash_wgmma(name, described, seed);
    unsetenv("LOCO_CUDA_FLASH_LOAD");
    return ok;
}

TEST(cuda_attention_wgmma_ws3_arrive) {
    HOPPER_OR_SKIP(hopper, 284);
    CHECK(check_flash_ws_load("arrive", "wgmma_ws3",
                              hopper ? "flash: wgmma, producer warp, 3 warpgroups (experimental), "
                                       "producer arrives by cp.async"
                                     : "flash: wgmma unavailable",
                              284));
}

TEST(cuda_attention_wgmma_ws128_arrive) {
    HOPPER_OR_SKIP(hopper, 286);
    CHECK(check_flash_ws_load("arrive", "wgmma_ws128",
                              hopper ? "flash: wgmma, producer warp, 128-key tiles (experimental), "
                                       "producer arrives by cp.async"
                                     : "flash: wgmma unavailable",
                              286));
}

TEST(cuda_attention_wgmma_ws_tma) {
    HOPPER_OR_SKIP(hopper, 287);
    CHECK(check_flash_ws_load("tma", "wgmma_ws",
                              hopper ? "flash: wgmma, producer warp (experimental), producer loads by TMA at head dim 64"
                                     : "flash: wgmma unavailable",
                              287));
}

TEST(cuda_attention_wgmma_ws3_tma) {
    HOPPER_OR_SKIP(hopper, 288);
    CHECK(check_flash_ws_load("tma", "wgmma_ws3",
                              hopper ? "flash: wgmma, producer warp, 3 warpgroups (experimental), "
                                       "producer loads by TMA at head dim 64"
                                     : "flash: wgmma unavailable",
                              288));
}

TEST(cuda_attention_wgmma_ws128_tma) {
    HOPPER_OR_SKIP(hopper, 289);
    CHECK(check_flash_ws_load("tma", "wgmma_ws128",
                              hopper ? "flash: wgmma, producer warp, 128-key tiles (experimental), "
                                       "producer loads by TMA at head dim 64"
                                     : "flash: wgmma unavailable",
                              289));
}

/* The TMA form without turns: nothing then holds a consumer warpgroup back from its first product
 * but its own barriers (under the emulator's reverse schedule, a missing consumer barrier after
 * the Q load shows here). */
TEST(cuda_attention_wgmma_ws3_tma_no_pingpong) {
    HOPPER_OR_SKIP(hopper, 283);
    setenv("LOCO_CUDA_FLASH_PINGPONG", "0", 1);
    const int ok = check_flash_ws_load("tma", "wgmma_ws3",
                                       hopper ? "flash: wgmma, producer warp, 3 warpgroups, no ping-pong (experimental), "
                                                "producer loads by TMA at head dim 64"
                                              : "flash: wgmma unavailable",
                                       283);
    unsetenv("LOCO_CUDA_FLASH_PINGPONG");
    CHECK(ok);
}

/* The warp-specialised kernel with its warpgroups not taking turns (LOCO_CUDA_FLASH_PINGPONG=0). */
TEST(cuda_attention_wgmma_ws_no_pingpong) {
    HOPPER_OR_SKIP(hopper, 280);
    setenv("LOCO_CUDA_FLASH_PINGPONG", "0", 1);
    const int ok = check_flash_wgmma("wgmma_ws3", hopper ? "flash: wgmma, producer warp, 3 warpgroups, no ping-pong"
                                                         : "flash: wgmma unavailable", 280);
    unsetenv("LOCO_CUDA_FLASH_PINGPONG");
    CHECK(ok);
}

/* genv_open with gemm_wgmma.cu's persistent blocks capped at `blocks` (NULL: one per SM), so that
 * a block walks several tiles; says why on stderr when it cannot open. */
static int genv_open_blocks(genv *e, loco_dtype dt, uint64_t seed, const char *blocks) {
    char why[1100];
    if (blocks) setenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS", blocks, 1);
    const int opened = genv_open(e, dt, seed, why, sizeof why);
    if (blocks) unsetenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS");
    if (opened != 1) fprintf(stderr, "%s\n", why);
    return opened == 1;
}

/* loco_linear_geglu under LOCO_CUDA_GEGLU=wgmma (gemm_wgmma.cu: the GEMM and GEGLU in one kernel)
 * against the CPU's linear then geglu, twice for the same bits. */
static int check_linear_geglu(loco_dtype dt, int64_t M, int64_t K, int64_t N, int bias, const char *blocks,
                              uint64_t seed) {
    genv e;
    if (!genv_open_blocks(&e, dt, seed, blocks)) return 0;
    int64_t xs[2] = {M, K}, ws[2] = {2 * N, K}, bs[1] = {2 * N}, ys[2] = {M, N};
    twin x, w, b, y, y2;
    memset(&b, 0, sizeof b);
    int ok = twin_rand(&e, 2, xs, 1.0f, 0.0f, &x) && twin_rand(&e, 2, ws, 0.1f, 0.0f, &w) &&
             (!bias || twin_rand(&e, 1, bs, 0.5f, 0.0f, &b)) && twin_out(&e, 2, ys, &y) && twin_out(&e, 2, ys, &y2);
    ok = ok && both_ok(&e, loco_linear_geglu(e.cpu, &y.c, &x.c, &w.c, bias ? &b.c : NULL, &e.errc),
                       loco_linear_geglu(e.gpu, &y.g, &x.g, &w.g, bias ? &b.g : NULL, &e.errg), "linear_geglu");
    ok = ok && both_ok(&e, LOCO_OK, loco_linear_geglu(e.gpu, &y2.g, &x.g, &w.g, bias ? &b.g : NULL, &e.errg),
                       "linear_geglu again");
    char what[96];
    snprintf(what, sizeof what, "linear_geglu %s [%lld, %lld] -> %lld", loco_dtype_name(dt), (long long)M,
             (long long)K, (long long)N);
    ok = ok && twin_close(&y, tol_for(dt), what) && same_bits(&y.g, &y2.g, what);
    twin_free(&x), twin_free(&w), twin_free(&y), twin_free(&y2);
    if (bias) twin_free(&b);
    genv_close(&e);
    return ok;
}

/* Row tiles past M, several column and k tiles, one k tile per tile, blocks that take several
 * tiles each (the stage ring and its mbarrier phases running on across tiles), more row tiles
 * than a group of the tile order, no bias, bf16, and a K the kernel declines (the unfused calls). */
static int linear_geglu_wgmma_cases(void) {
    int ok = check_linear_geglu(LOCO_F16, 200, 128, 256, 1, "1", 291); /* 4 tiles, one block */
    ok = ok && check_linear_geglu(LOCO_BF16, 77, 320, 128, 0, NULL, 292); /* 5 k tiles, no bias */
    ok = ok && check_linear_geglu(LOCO_F16, 300, 64, 384, 1, "2", 293);   /* 1 k tile, 9 tiles on 2 blocks */
    ok = ok && check_linear_geglu(LOCO_F16, 2181, 64, 128, 1, "3", 294);  /* 18 row tiles: two groups */
    ok = ok && check_linear_geglu(LOCO_BF16, 1000, 640, 256, 1, NULL, 296); /* SD-XL's K at 64^2 */
    ok = ok && check_linear_geglu(LOCO_F16, 2100, 64, 128, 1, "4", 297);  /* 17 row tiles: odd, two groups */
    ok = ok && check_linear_geglu(LOCO_F16, 50, 100, 128, 1, NULL, 295);  /* K % 64 != 0: declined */
    return ok;
}

/* One of the two forms (LOCO_CUDA_GEGLU or LOCO_CUDA_LINEAR =wgmma) with a way of loading
 * (LOCO_CUDA_GEMM_WGMMA_LOAD; NULL: the default cp.async), its description on a compute
 * capability 9.0 device, and its cases. */
static int gemm_wgmma_with(int hopper, const char *form, const char *load, const char *described, int (*cases)(void)) {
    setenv(form, "wgmma", 1);
    if (load) setenv("LOCO_CUDA_GEMM_WGMMA_LOAD", load, 1);
    const int geglu = strcmp(form, "LOCO_CUDA_GEGLU") == 0;
    int ok = gpu_describe_has(hopper ? described : geglu ? "geglu: wgmma unavailable" : "linear: wgmma unavailable");
    ok = ok && cases();
    unsetenv("LOCO_CUDA_GEMM_WGMMA_LOAD");
    unsetenv(form);
    return ok;
}

TEST(cuda_linear_geglu_wgmma) {
    HOPPER_OR_SKIP(hopper, 290);
    CHECK(gemm_wgmma_with(hopper, "LOCO_CUDA_GEGLU", NULL, "geglu: wgmma (experimental)", linear_geglu_wgmma_cases));
}

/* The same with LOCO_CUDA_GEMM_WGMMA_LOAD=tma: one thread's TMA copies into 128-byte-swizzled
 * stages (the B tile as 128 h rows, then 128 g rows), zeros past M from the copies themselves. */
TEST(cuda_linear_geglu_wgmma_tma) {
    HOPPER_OR_SKIP(hopper, 310);
    CHECK(gemm_wgmma_with(hopper, "LOCO_CUDA_GEGLU", "tma", "geglu: wgmma (tma, experimental)",
                          linear_geglu_wgmma_cases));
}

/* And with the cp.async producer publishing by cp.async.mbarrier.arrive (=arrive). */
TEST(cuda_linear_geglu_wgmma_arrive) {
    HOPPER_OR_SKIP(hopper, 330);
    CHECK(gemm_wgmma_with(hopper, "LOCO_CUDA_GEGLU", "arrive", "geglu: wgmma (arrive, experimental)",
                          linear_geglu_wgmma_cases));
}

/* LOCO_CUDA_LINEAR=wgmma: loco_linear without activation and loco_linear_accumulate on
 * gemm_wgmma.cu's main loop where N is a multiple of 256 (by TMA, of 8: a partly empty last
 * column tile), against the CPU: row tails, the accumulating call after a plain one and first,
 * no bias, bf16, several tiles on one block; widths and an activation it leaves to cuBLASLt. */
static int linear_wgmma_cases(void) {
    int ok = check_linear(LOCO_F16, 2, 100, 128, 256, 1, LOCO_ACT_NONE, 301); /* 200 rows: a tail */
    ok = ok && check_linear(LOCO_F16, 2, 100, 128, 512, 1, -1, 302);           /* accumulate after a linear */
    ok = ok && check_linear(LOCO_BF16, 1, 77, 320, 256, 0, -2, 303);            /* accumulate first, no bias */
    setenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS", "1", 1);
    ok = ok && check_linear(LOCO_F16, 1, 300, 64, 512, 1, LOCO_ACT_NONE, 304); /* 6 tiles on one block */
    unsetenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS");
    ok = ok && check_linear(LOCO_F16, 1, 64, 128, 384, 1, LOCO_ACT_NONE, 305); /* N % 256 != 0: cuBLASLt, or a half tile (TMA) */
    ok = ok && check_linear(LOCO_F16, 1, 300, 128, 960, 1, LOCO_ACT_NONE, 307); /* TMA: a last tile of 192 columns */
    ok = ok && check_linear(LOCO_BF16, 1, 200, 64, 1960, 1, -1, 308);          /* ... of 168, accumulating */
    ok = ok && check_linear(LOCO_F16, 1, 100, 64, 320, 1, LOCO_ACT_NONE, 309); /* 192 of 512 empty: cuBLASLt */
    ok = ok && check_linear(LOCO_F16, 1, 64, 128, 256, 1, LOCO_ACT_GELU, 306); /* an activation: cuBLASLt */
    return ok;
}

TEST(cuda_linear_wgmma) {
    HOPPER_OR_SKIP(hopper, 300);
    CHECK(gemm_wgmma_with(hopper, "LOCO_CUDA_LINEAR", NULL, "linear: wgmma (experimental)", linear_wgmma_cases));
}

TEST(cuda_linear_wgmma_tma) {
    HOPPER_OR_SKIP(hopper, 320);
    CHECK(gemm_wgmma_with(hopper, "LOCO_CUDA_LINEAR", "tma", "linear: wgmma (tma, experimental)", linear_wgmma_cases));
}

/* The TMA form in clusters of two (LOCO_CUDA_GEMM_WGMMA_CLUSTER=2): each block of a pair loads its
 * own rows of x and half of w's tile, multicast to both, and hands every stage back to both
 * producers. Pairs where the row tiles are even or at least 16 (else the plain TMA form: 77 and
 * 300 rows), so the cases above have one pair walking every tile ("1": one cluster), two groups
 * of pairs (2181 rows), and a last pair whose second row tile is past M (2100 rows: 17 tiles,
 * the GEGLU cases'), here with the linear's too. */
static int gemm_wgmma_cluster(int hopper, const char *form, const char *described, int (*cases)(void)) {
    setenv("LOCO_CUDA_GEMM_WGMMA_CLUSTER", "2", 1);
    const int ok = gemm_wgmma_with(hopper, form, "tma", described, cases);
    unsetenv("LOCO_CUDA_GEMM_WGMMA_CLUSTER");
    return ok;
}

TEST(cuda_linear_geglu_wgmma_cluster) {
    HOPPER_OR_SKIP(hopper, 340);
    CHECK(gemm_wgmma_cluster(hopper, "LOCO_CUDA_GEGLU", "geglu: wgmma (tma, clusters of 2, experimental)",
                             linear_geglu_wgmma_cases));
}

static int linear_wgmma_cluster_cases(void) {
    int ok = linear_wgmma_cases();
    ok = ok && check_linear(LOCO_F16, 1, 2100, 64, 256, 1, LOCO_ACT_NONE, 351); /* 17 row tiles: a pair past M */
    ok = ok && check_linear(LOCO_F16, 1, 200, 64, 640, 1, LOCO_ACT_NONE, 353);  /* a multicast half wholly past N */
    setenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS", "4", 1);
    ok = ok && check_linear(LOCO_BF16, 1, 1000, 128, 512, 0, -2, 352); /* 8 x 2 tiles on two pairs, accumulating */
    unsetenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS");
    return ok;
}

TEST(cuda_linear_wgmma_cluster) {
    HOPPER_OR_SKIP(hopper, 350);
    CHECK(gemm_wgmma_cluster(hopper, "LOCO_CUDA_LINEAR", "linear: wgmma (tma, clusters of 2, experimental)",
                             linear_wgmma_cluster_cases));
}

/* loco_ln_linear under LOCO_CUDA_LN_FOLD=1 (gemm_wgmma.cu's LayerNorm form: each row's statistics,
 * then the GEMM normalising x's stages on their way to the tensor cores) against the CPU's
 * layer_norm then linear or linear_geglu, and against the GPU's own unfused calls (loco_layer_norm,
 * then the same GEMM without the fold): the same bits. x has a mean of 2 (the normalisation
 * matters), gamma scatters around 1, beta is random or absent. */
static int check_ln_linear(loco_dtype dt, int geglu, int64_t M, int64_t K, int64_t N, int beta, const char *blocks,
                           uint64_t seed) {
    genv e;
    if (!genv_open_blocks(&e, dt, seed, blocks)) return 0;
    int64_t xs[2] = {M, K}, ks[1] = {K}, ws[2] = {geglu ? 2 * N : N, K}, bs[1] = {geglu ? 2 * N : N}, ys[2] = {M, N};
    twin x, g, b, w, bias, y, n, y_unfused;
    memset(&b, 0, sizeof b);
    int ok = twin_rand(&e, 2, xs, 1.0f, 2.0f, &x) && twin_rand(&e, 1, ks, 0.5f, 1.0f, &g) &&
             (!beta || twin_rand(&e, 1, ks, 0.3f, 0.0f, &b)) && twin_rand(&e, 2, ws, 1.0f / sqrtf((float)K), 0.0f, &w) &&
             twin_rand(&e, 1, bs, 0.5f, 0.0f, &bias) && twin_out(&e, 2, ys, &y) && twin_out(&e, 2, ys, &y_unfused) &&
             twin_out(&e, 2, xs, &n);
    const loco_tensor *bc = beta ? &b.c : NULL, *bg = beta ? &b.g : NULL;
    const char *what = geglu ? "ln_linear_geglu" : "ln_linear";
    ok = ok && both_ok(&e, loco_ln_linear(e.cpu, &y.c, &x.c, &g.c, bc, 1e-5f, &w.c, &bias.c, geglu, &e.errc),
                       loco_ln_linear(e.gpu, &y.g, &x.g, &g.g, bg, 1e-5f, &w.g, &bias.g, geglu, &e.errg), what);
    ok = ok && both_ok(&e, LOCO_OK, loco_layer_norm(e.gpu, &n.g, &x.g, &g.g, bg, 1e-5f, &e.errg), "layer_norm");
    ok = ok && both_ok(&e, LOCO_OK,
                       geglu ? loco_linear_geglu(e.gpu, &y_unfused.g, &n.g, &w.g, &bias.g, &e.errg)
                             : loco_linear(e.gpu, &y_unfused.g, &n.g, &w.g, &bias.g, LOCO_ACT_NONE, &e.errg),
                       "the unfused linear");
    char label[112];
    snprintf(label, sizeof label, "%s %s [%lld, %lld] -> %lld", what, loco_dtype_name(dt), (long long)M, (long long)K,
             (long long)N);
    ok = ok && twin_close(&y, tol_for(dt), label) && same_bits(&y.g, &y_unfused.g, label);
    twin_free(&x), twin_free(&g), twin_free(&w), twin_free(&bias), twin_free(&y), twin_free(&y_unfused), twin_free(&n);
    if (beta) twin_free(&b);
    genv_close(&e);
    return ok;
}

/* Several tiles per block (the statistics loaded a tile ahead, the two fragment sets alternating
 * across tiles: 5 k-tiles a tile), one k-tile a tile, row tails, 17 row tiles in two groups, no
 * beta, bf16, and a K past the table (declined: the unfused calls). */
static int ln_linear_cases(void) {
    int ok = check_ln_linear(LOCO_F16, 1, 200, 128, 256, 1, "1", 361);      /* 4 tiles, one block */
    ok = ok && check_ln_linear(LOCO_BF16, 1, 77, 320, 128, 0, NULL, 362);  /* 5 k-tiles, no beta */
    ok = ok && check_ln_linear(LOCO_F16, 0, 300, 64, 512, 1, "2", 363);    /* 1 k-tile, 6 tiles on 2 blocks */
    ok = ok && check_ln_linear(LOCO_BF16, 0, 1000, 640, 256, 1, "3", 364); /* SD-XL's K at 64^2 */
    ok = ok && check_ln_linear(LOCO_F16, 1, 2100, 64, 128, 1, "4", 365);   /* 17 row tiles: odd, two groups */
    ok = ok && check_ln_linear(LOCO_F16, 0, 70, 2112, 256, 1, NULL, 366);  /* K > 2048: declined */
    ok = ok && check_ln_linear(LOCO_F16, 0, 260, 128, 640, 1, "2", 367);   /* a last tile of 128 columns */
    ok = ok && check_ln_linear(LOCO_BF16, 0, 130, 320, 960, 0, NULL, 368); /* ... of 192 (SD 1.5's q, k, v) */
    return ok;
}

/* Both gemm_wgmma.cu forms by TMA with the fold; alone, then in clusters of two. */
static int ln_fold_with(int hopper, const char *cluster, const char *described) {
    setenv("LOCO_CUDA_LN_FOLD", "1", 1);
    setenv("LOCO_CUDA_GEGLU", "wgmma", 1);
    setenv("LOCO_CUDA_LINEAR", "wgmma", 1);
    setenv("LOCO_CUDA_GEMM_WGMMA_LOAD", "tma", 1);
    if (cluster) setenv("LOCO_CUDA_GEMM_WGMMA_CLUSTER", cluster, 1);
    int ok = gpu_describe_has(hopper ? described : "LayerNorm fold unavailable");
    ok = ok && (!hopper || gpu_describe_has("LayerNorm folded (experimental)"));
    ok = ok && ln_linear_cases();
    unsetenv("LOCO_CUDA_GEMM_WGMMA_CLUSTER");
    unsetenv("LOCO_CUDA_GEMM_WGMMA_LOAD");
    unsetenv("LOCO_CUDA_LINEAR");
    unsetenv("LOCO_CUDA_GEGLU");
    unsetenv("LOCO_CUDA_LN_FOLD");
    return ok;
}

TEST(cuda_ln_linear_wgmma) {
    HOPPER_OR_SKIP(hopper, 360);
    CHECK(ln_fold_with(hopper, NULL, "geglu: wgmma (tma, experimental)"));
}

TEST(cuda_ln_linear_wgmma_cluster) {
    HOPPER_OR_SKIP(hopper, 370);
    CHECK(ln_fold_with(hopper, "2", "geglu: wgmma (tma, clusters of 2, experimental)"));
}

/* LOCO_CUDA_FLASH=classic, =stages3, =ilp3 and =ilp3q force one variant of the mma.sync kernel's
 * 128-row blocks for head dims 40, 64 and 80 (by default 64 and 80 take ilp3, 40 the classic loop
 * or stages3): stages3 has three K/V stages with one barrier per key tile, ilp3 that and the
 * softmax's reductions as trees and its rescale without a branch, ilp3q that with Q's fragments
 * read from shared memory at each k-step (head dims 40 and 64; 80 takes ilp3). Tails of the blocks and of the key tiles (1, 2 and 3+ tiles, so that the
 * stage ring wraps), cross-attention's 77 keys, causal masking, per-sample K/V rows, both 16-bit
 * dtypes, packed q|k|v rows; head dim 160 and the 64-row form are untouched by the switch. */
static int check_flash_variant(const char *name, const char *described, int seed) {
    setenv("LOCO_CUDA_FLASH", name, 1);
    setenv("LOCO_CUDA_FLASH_SHORT", "0", 1); /* the 60- and 77-key cases on this kernel too */
    int ok = gpu_describe_has(described);
    static const int kv[4] = {1, 0, 1, 1};
    ok = ok && check_attention(LOCO_F16, 2, 2, 300, 300, 8, 40, 0, NULL, seed + 1);  /* 5 key tiles, tails */
    ok = ok && check_attention(LOCO_F16, 2, 2, 130, 77, 8, 80, 0, NULL, seed + 2);   /* cross-attention: 2 */
    ok = ok && check_attention(LOCO_BF16, 2, 2, 257, 257, 5, 64, 0, NULL, seed + 3);
    ok = ok && check_attention(LOCO_F16, 1, 1, 200, 200, 2, 40, 1, NULL, seed + 4);  /* causal */
    ok = ok && check_attention(LOCO_F16, 4, 2, 160, 60, 8, 40, 0, kv, seed + 5);     /* kv_index, 1 key tile */
    ok = ok && check_attention(LOCO_F16, 1, 1, 64, 200, 4, 160, 0, NULL, seed + 6);  /* 160: default kernel */
    ok = ok && check_attention(LOCO_BF16, 1, 1, 640, 640, 2, 80, 0, NULL, seed + 7); /* 10 key tiles */
    ok = ok && check_attention_packed(LOCO_F16, 2, 300, 8, 40, NULL, seed + 8);     /* packed q|k|v rows */
    ok = ok && check_attention_packed(LOCO_BF16, 2, 130, 5, 64, kv, seed + 9);
    unsetenv("LOCO_CUDA_FLASH");
    unsetenv("LOCO_CUDA_FLASH_SHORT");
    return ok;
}

TEST(cuda_attention_classic) {
    GPU_ENV(e, LOCO_F16, 200);
    genv_close(&e);
    CHECK(check_flash_variant("classic", "flash: classic", 200));
}

TEST(cuda_attention_stages3) {
    GPU_ENV(e, LOCO_F16, 220);
    genv_close(&e);
    CHECK(check_flash_variant("stages3", "flash: stages3", 220));
}

TEST(cuda_attention_ilp3) {
    GPU_ENV(e, LOCO_F16, 210);
    genv_close(&e);
    CHECK(check_flash_variant("ilp3", "flash: ilp3", 210));
}

TEST(cuda_attention_ilp3q) {
    GPU_ENV(e, LOCO_F16, 230);
    genv_close(&e);
    CHECK(check_flash_variant("ilp3q", "flash: ilp3q", 230));
}
