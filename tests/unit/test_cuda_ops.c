/* test_cuda_ops.c: every op of the CUDA backend against the CPU backend on random inputs.
 *
 * The inputs are rounded to the GPU's activation dtype before both backends get them, so
 * the comparison measures the kernels, not the input quantisation: relative L2 error <= 1e-2
 * for f16 (and for f32 activations, which multiply in TF32), <= 3e-2 for bf16 (8-bit
 * mantissa), never a NaN. GPU outputs are poisoned with NaN before each op, so an element a
 * kernel forgets to write fails the test. Shapes are odd and cross the kernels' tile edges
 * (128-wide conv tiles, 64-row attention tiles, 16-byte vector tails), and the
 * tensor-core kernels run twice to catch races (results must be bit-identical).
 *
 * Without a GPU (build machines, CI) every test reports skipped, except
 * cuda_create_without_gpu_fails_cleanly, which checks that asking for the CUDA backend then
 * fails with a message instead of crashing. On a GPU machine bench/gpu-check.sh runs this
 * binary and treats any skip as a failure. */
#include "cuda_check_util.h"

/* ---- creation ------------------------------------------------------------------------------------- */

TEST(cuda_create_without_gpu_fails_cleanly) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CUDA;
    loco_backend *be = NULL;
    loco_err err;
    memset(&err, 0, sizeof err);
    loco_status st = loco_backend_create(&o, &be, &err);
    if (st == LOCO_OK) { /* a GPU machine: the backend describes itself and works */
        CHECK(be != NULL);
        CHECK(loco_backend_device(be) == LOCO_DEVICE_CUDA);
        CHECK_MSG(strstr(loco_backend_describe(be), "cuda:") != NULL, "%s", loco_backend_describe(be));
        CHECK(loco_backend_sync(be, &err) == LOCO_OK);
        loco_backend_destroy(be);
        return;
    }
    CHECK(be == NULL);
    CHECK_MSG(st == LOCO_EDEVICE || st == LOCO_EUNSUPPORTED, "%s: %s", loco_status_name(st), err.msg);
    CHECK_MSG(strstr(err.msg, "no CUDA device") || strstr(err.msg, "built without CUDA"), "%s", err.msg);
    /* AUTO falls back to the CPU and says why in the description */
    o.device = LOCO_DEVICE_AUTO;
    CHECK(loco_backend_create(&o, &be, &err) == LOCO_OK);
    CHECK(loco_backend_device(be) == LOCO_DEVICE_CPU);
    loco_backend_destroy(be);
}

TEST(cuda_bad_ordinal_is_invalid) {
    GPU_ENV(e, LOCO_F16, 1);
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CUDA;
    o.cuda_device = 4096;
    loco_backend *be = NULL;
    loco_err err;
    CHECK(loco_backend_create(&o, &be, &err) == LOCO_EINVAL && be == NULL);
    CHECK_MSG(strstr(err.msg, "out of range") != NULL, "%s", err.msg);
    genv_close(&e);
}

TEST(cuda_oom_is_reported_with_sizes) {
    GPU_ENV(e, LOCO_F16, 2);
    int64_t shape[1] = {(int64_t)1 << 46}; /* 128 TiB of f16 */
    loco_tensor t;
    loco_err err;
    CHECK(loco_tensor_alloc(e.gpu, LOCO_F16, 1, shape, &t, &err) == LOCO_EDEVICE_OOM);
    CHECK_MSG(strstr(err.msg, "MiB free") != NULL, "%s", err.msg);
    /* the device is still usable afterwards */
    int64_t small[1] = {1000};
    CHECK(loco_tensor_alloc(e.gpu, LOCO_F16, 1, small, &t, &err) == LOCO_OK);
    CHECK(loco_fill(e.gpu, &t, 1.0f, &err) == LOCO_OK && loco_backend_sync(e.gpu, &err) == LOCO_OK);
    loco_tensor_free(&t);
    genv_close(&e);
}

/* ---- transfers ------------------------------------------------------------------------------------ */

TEST(cuda_upload_converts_every_float_dtype) {
    GPU_ENV(e, LOCO_F16, 3);
    const size_t n = 5u << 20; /* 20 MB of f32: more than one staging chunk */
    int64_t shape[1] = {(int64_t)n};
    float *h = rand_buf(&e.r, n, 3.0f, 0.5f), *got = malloc(n * sizeof(float));
    uint16_t *h16 = malloc(n * 2), *hb16 = malloc(n * 2);
    double *h64 = malloc(n * 8);
    for (size_t i = 0; i < n; i++) {
        h16[i] = loco_f32_to_f16(h[i]);
        hb16[i] = loco_f32_to_bf16(h[i]);
        h64[i] = h[i];
    }
    loco_tensor t;
    loco_err err;
    CHECK(loco_tensor_alloc(e.gpu, LOCO_F16, 1, shape, &t, &err) == LOCO_OK);
    const void *srcs[4] = {h, h16, hb16, h64};
    loco_dtype sdt[4] = {LOCO_F32, LOCO_F16, LOCO_BF16, LOCO_F64};
    for (int s = 0; s < 4; s++) {
        CHECK_MSG(loco_tensor_upload(&t, srcs[s], sdt[s], &err) == LOCO_OK, "%s", err.msg);
        CHECK_MSG(loco_tensor_download_f32(&t, got, &err) == LOCO_OK, "%s", err.msg);
        for (size_t i = 0; i < n; i += 997) {
            float want = sdt[s] == LOCO_BF16 ? loco_f16_to_f32(loco_f32_to_f16(loco_bf16_to_f32(hb16[i])))
                                             : loco_f16_to_f32(h16[i]);
            CHECK_MSG(got[i] == want, "from %s at %zu: %g != %g", loco_dtype_name(sdt[s]), i, got[i], want);
        }
    }
    loco_tensor_free(&t);
    /* integer tables travel verbatim */
    int32_t ids[5] = {7, -1, 3, 1 << 30, 0};
    int64_t is[1] = {5};
    CHECK(loco_tensor_alloc(e.gpu, LOCO_I32, 1, is, &t, &err) == LOCO_OK);
    CHECK_MSG(loco_tensor_upload(&t, ids, LOCO_I32, &err) == LOCO_OK, "%s", err.msg);
    loco_tensor_free(&t);
    free(h), free(got), free(h16), free(hb16), free(h64);
    genv_close(&e);
}

/* Images quantised on the GPU (convert.cu's quantize_u8_dev) must be the CPU's bytes exactly
 * (quantize_u8.h): on values whose y = v * 255 is exactly k + 0.5 for every k (ties, found by
 * search at run time), a dense sweep over [-1.1, 1.1], the clamps, and a NaN whose index comes
 * back; in f32, f16 and bf16, on a whole tensor and on a slice0 view. */
TEST(cuda_download_u8_images_matches_cpu) {
    GPU_ENV(e, LOCO_F16, 4);
    const int64_t shape[4] = {3, 3, 37, 61}, n = 3 * 3 * 37 * 61;
    float *x = malloc((size_t)n * sizeof *x);
    int64_t m = 0;
    for (int k = 0; k < 255 && m < n; k++) { /* ties: (x * 0.5 + 0.5) * 255 == k + 0.5 in fp32 */
        float g = (float)(2.0 * (k + 0.5) / 255.0 - 1.0);
        for (int step = 0; step < 64 && m < n; step++, g = nextafterf(g, step & 1 ? 2.0f : -2.0f)) {
            float v = g * 0.5f + 0.5f, y = v * 255.0f;
            if (y == (float)k + 0.5f) {
                x[m++] = g;
                break;
            }
        }
    }
    const int64_t ties = m;
    for (int64_t i = 0; m < n; i++, m++) x[m] = -1.1f + 2.2f * (float)i / (float)(n - ties);
    x[17] = -5.0f;
    x[18] = 7.5f;
    x[n - 100] = NAN;
    CHECK_MSG(ties > 100, "only %lld ties found", (long long)ties);
    uint8_t *cpu = malloc((size_t)n), *gpu = malloc((size_t)n);
    const loco_dtype dts[3] = {LOCO_F32, LOCO_F16, LOCO_BF16};
    for (int d = 0; d < 3; d++) {
        loco_tensor tc, tg, vc, vg;
        loco_err err;
        CHECK(loco_tensor_alloc(e.cpu, dts[d], 4, shape, &tc, &err) == LOCO_OK);
        CHECK(loco_tensor_alloc(e.gpu, dts[d], 4, shape, &tg, &err) == LOCO_OK);
        CHECK(loco_tensor_upload(&tc, x, LOCO_F32, &err) == LOCO_OK);
        CHECK(loco_tensor_upload(&tg, x, LOCO_F32, &err) == LOCO_OK);
        int64_t nan_c = 0, nan_g = 0;
        CHECK_MSG(loco_tensor_download_u8_images(&tc, cpu, &nan_c, &err) == LOCO_OK, "%s", err.msg);
        CHECK_MSG(loco_tensor_download_u8_images(&tg, gpu, &nan_g, &err) == LOCO_OK, "%s", err.msg);
        CHECK_MSG(nan_c == n - 100 && nan_g == n - 100, "%s: NaN at %lld / %lld", loco_dtype_name(dts[d]),
                  (long long)nan_c, (long long)nan_g);
        int64_t bad = 0, first = -1;
        for (int64_t i = 0; i < n; i++)
            if (cpu[i] != gpu[i] && bad++ == 0) first = i;
        CHECK_MSG(bad == 0, "%s: %lld bytes differ, first at %lld (cpu %d, gpu %d)", loco_dtype_name(dts[d]),
                  (long long)bad, (long long)first, first >= 0 ? cpu[first] : 0, first >= 0 ? gpu[first] : 0);
        /* the second image alone (a view): its bytes, and no NaN */
        CHECK(loco_tensor_slice0(&tc, 1, 1, &vc, &err) == LOCO_OK && loco_tensor_slice0(&tg, 1, 1, &vg, &err) == LOCO_OK);
        CHECK(loco_tensor_download_u8_images(&vg, gpu, &nan_g, &err) == LOCO_OK && nan_g == -1);
        CHECK(memcmp(gpu, cpu + n / 3, (size_t)(n / 3)) == 0);
        loco_tensor_free(&tc);
        loco_tensor_free(&tg);
    }
    fprintf(stderr, "u8 images: %lld ties, %lld values, 3 dtypes: GPU bytes == CPU bytes\n", (long long)ties,
            (long long)n);
    free(x), free(cpu), free(gpu);
    genv_close(&e);
}

/* ---- linear --------------------------------------------------------------------------------------- */

TEST(cuda_linear_every_activation) {
    GPU_ENV(e, LOCO_F16, 10);
    genv_close(&e);
    for (int a = 0; a < LOCO_ACT_COUNT; a++) CHECK_MSG(check_linear(LOCO_F16, 2, 77, 96, 200, 1, (loco_act)a, 11 + a),
                                                         "act %s", loco_act_name((loco_act)a));
}

TEST(cuda_linear_odd_sizes_no_bias) {
    GPU_ENV(e, LOCO_F16, 20);
    genv_close(&e);
    CHECK(check_linear(LOCO_F16, 3, 7, 29, 23, 0, LOCO_ACT_NONE, 21));
    CHECK(check_linear(LOCO_F16, 1, 1, 768, 1000, 1, LOCO_ACT_GELU_TANH, 22));
}

TEST(cuda_linear_sd_sizes_bf16_and_f32) {
    GPU_ENV(e, LOCO_F16, 30);
    genv_close(&e);
    CHECK(check_linear(LOCO_F16, 2, 1024, 320, 1280, 1, LOCO_ACT_NONE, 31));
    CHECK(check_linear(LOCO_BF16, 2, 1024, 320, 1280, 1, LOCO_ACT_GELU, 32));
    CHECK(check_linear(LOCO_F32, 2, 300, 320, 640, 1, LOCO_ACT_SILU, 33));
}

TEST(cuda_linear_accumulate) {
    GPU_ENV(e, LOCO_F16, 40);
    genv_close(&e);
    CHECK(check_linear(LOCO_F16, 2, 1024, 320, 320, 1, -1, 41)); /* SD 1.5 to_out at 32x32 */
    CHECK(check_linear(LOCO_F16, 2, 77, 1280, 320, 0, -1, 42));  /* no bias, odd rows */
    CHECK(check_linear(LOCO_BF16, 2, 256, 1280, 640, 1, -1, 43));
    CHECK(check_linear(LOCO_F32, 2, 50, 96, 40, 1, -1, 44));
    CHECK(check_linear(LOCO_F16, 1, 3, 29, 23, 1, -1, 45)); /* unaligned: cuBLASLt may refuse the bias epilogue */
}

/* ---- conv2d --------------------------------------------------------------------------------------- */

/* loco_linear_many (a UNet's time-embedding projections): the GPU's one-kernel form against the
 * CPU's loco_linear per layer, on layers of several widths (one with no bias), in one launch and
 * across launches (more layers than one launch's table holds), and rows past the kernel's limit
 * (the per-layer fallback). */
static int check_linear_many(loco_dtype dt, int n, int64_t M, int64_t K, int one_kernel, uint64_t seed) {
    char why[1100];
    genv e;
    if (genv_open(&e, dt, seed, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    int64_t xs[2] = {M, K};
    twin x, w[64], b[64], y[64];
    loco_tensor *yc[64], *yg[64];
    const loco_tensor *wc[64], *wg[64], *bc[64], *bg[64];
    int ok = n <= 64 && twin_rand(&e, 2, xs, 1.0f, 0.0f, &x);
    for (int i = 0; ok && i < n; i++) {
        const int64_t N = 8 * (1 + (i * 7) % 13); /* 8 .. 104 outputs */
        int64_t ws[2] = {N, K}, bs[1] = {N}, ys[2] = {M, N};
        ok = twin_rand(&e, 2, ws, 1.0f / sqrtf((float)K), 0.0f, &w[i]) && twin_rand(&e, 1, bs, 0.5f, 0.0f, &b[i]) &&
             twin_out(&e, 2, ys, &y[i]);
        yc[i] = &y[i].c, yg[i] = &y[i].g, wc[i] = &w[i].c, wg[i] = &w[i].g;
        bc[i] = i == 1 ? NULL : &b[i].c, bg[i] = i == 1 ? NULL : &b[i].g;
    }
    loco_backend_profile_start(e.gpu); /* a "linear_many" row only when the kernel took the call */
    ok = ok && both_ok(&e, loco_linear_many(e.cpu, n, yc, &x.c, wc, bc, &e.errc),
                       loco_linear_many(e.gpu, n, yg, &x.g, wg, bg, &e.errg), "linear_many");
    loco_backend_profile_stop(e.gpu, NULL);
    const loco_op_profile_row *rows;
    int kernel_rows = 0;
    for (int i = 0, nr = loco_backend_profile_rows(e.gpu, &rows); i < nr; i++)
        kernel_rows += !strncmp(rows[i].what, "linear_many", 11);
    if (ok && kernel_rows != one_kernel)
        ok = 0, fprintf(stderr, "linear_many: %s\n", one_kernel ? "the kernel declined the call" : "the kernel ran");
    for (int i = 0; ok && i < n; i++) ok = twin_close(&y[i], tol_for(dt), "linear_many");
    for (int i = 0; i < n; i++) twin_free(&w[i]), twin_free(&b[i]), twin_free(&y[i]);
    twin_free(&x);
    genv_close(&e);
    return ok;
}

TEST(cuda_linear_many) {
    GPU_ENV(e, LOCO_F16, 140);
    genv_close(&e);
    CHECK(check_linear_many(LOCO_F16, 5, 16, 1280, 1, 141));  /* SD's temb: 16 rows of 1280 */
    CHECK(check_linear_many(LOCO_BF16, 3, 2, 320, 1, 142));   /* batch 1 with guidance */
    CHECK(check_linear_many(LOCO_F16, 60, 4, 64, 1, 143));    /* two launches */
    CHECK(check_linear_many(LOCO_F32, 4, 3, 96, 1, 144));     /* f32 activations */
    CHECK(check_linear_many(LOCO_F16, 3, 40, 128, 0, 145));   /* 40 rows: one GEMM per layer */
    CHECK(check_linear_many(LOCO_F16, 2, 2, 2056, 0, 146));   /* k past the kernel's row: per layer */
}

/* loco_linear_from_channels / loco_linear_to_channels (a transformer's proj_in and proj_out on
 * NCHW activations): one batched GEMM reading or writing the channel-major layout on the GPU,
 * transpose + linear (+ add) on the CPU. mode: 0 from_channels, 1 to_channels without r, 2 with
 * r in a tensor of its own, 3 with r == y (in place: the GEMM accumulates into y). */
static int check_linear_channels(loco_dtype dt, int64_t B, int64_t K, int64_t L, int64_t N, int with_bias, int mode,
                                 uint64_t seed) {
    char why[1100];
    genv e;
    if (genv_open(&e, dt, seed, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    const int to = mode > 0;
    int64_t xs[3] = {B, to ? L : K, to ? K : L}, ws[2] = {N, K}, bs[1] = {N}, ys[3] = {B, to ? N : L, to ? L : N};
    twin x, w, b, y, r;
    memset(&r, 0, sizeof r);
    int ok = twin_rand(&e, 3, xs, 1.0f, 0.0f, &x) && twin_rand(&e, 2, ws, 1.0f / sqrtf((float)K), 0.0f, &w) &&
             twin_rand(&e, 1, bs, 0.5f, 0.0f, &b) &&
             (mode == 3 ? twin_rand(&e, 3, ys, 1.0f, 2.0f, &y) : twin_out(&e, 3, ys, &y)) &&
             (mode != 2 || twin_rand(&e, 3, ys, 1.0f, 2.0f, &r));
    const loco_tensor *bc = with_bias ? &b.c : NULL, *bg = with_bias ? &b.g : NULL;
    const loco_tensor *rc = mode == 2 ? &r.c : mode == 3 ? &y.c : NULL, *rg = mode == 2 ? &r.g : mode == 3 ? &y.g : NULL;
    const char *what = to ? "linear_to_channels" : "linear_from_channels";
    if (to)
        ok = ok && both_ok(&e, loco_linear_to_channels(e.cpu, &y.c, &x.c, &w.c, bc, rc, &e.errc),
                           loco_linear_to_channels(e.gpu, &y.g, &x.g, &w.g, bg, rg, &e.errg), what);
    else
        ok = ok && both_ok(&e, loco_linear_from_channels(e.cpu, &y.c, &x.c, &w.c, bc, &e.errc),
                           loco_linear_from_channels(e.gpu, &y.g, &x.g, &w.g, bg, &e.errg), what);
    ok = ok && twin_close(&y, tol_for(dt), what);
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&y), twin_free(&r);
    genv_close(&e);
    return ok;
}

TEST(cuda_linear_channels) {
    GPU_ENV(e, LOCO_F16, 120);
    genv_close(&e);
    CHECK(check_linear_channels(LOCO_F16, 3, 40, 77, 48, 1, 0, 121));  /* proj_in: odd L */
    CHECK(check_linear_channels(LOCO_F16, 2, 64, 256, 64, 0, 0, 122));
    CHECK(check_linear_channels(LOCO_BF16, 2, 32, 100, 24, 1, 0, 123));
    CHECK(check_linear_channels(LOCO_F16, 3, 48, 77, 40, 1, 1, 124));  /* proj_out, no residual */
    CHECK(check_linear_channels(LOCO_F16, 2, 64, 256, 64, 1, 2, 125)); /* + r: the transformer's form */
    CHECK(check_linear_channels(LOCO_BF16, 2, 40, 64, 32, 0, 2, 126)); /* + r, no bias */
    CHECK(check_linear_channels(LOCO_F16, 2, 32, 96, 48, 1, 3, 127));  /* r == y: accumulate in place */
    CHECK(check_linear_channels(LOCO_F32, 2, 24, 50, 16, 1, 2, 128));  /* f32 activations (TF32) */
    CHECK(check_linear_channels(LOCO_F16, 1, 0, 20, 8, 1, 2, 129));    /* K = 0: bias + r */
    CHECK(check_linear_channels(LOCO_F16, 1, 0, 20, 8, 1, 0, 130));    /* K = 0: bias */
}

TEST(cuda_conv2d_3x3_implicit_gemm) {
    GPU_ENV(e, LOCO_F16, 40);
    genv_close(&e);
    const char *ig = "implicit";
    CHECK(check_conv(ig, LOCO_F16, 2, 32, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 41));
    CHECK(check_conv(ig, LOCO_F16, 1, 40, 13, 11, 200, 3, 3, 1, 1, 1, 1, 1, 1, 42)); /* Cout, pixels off-tile */
    CHECK(check_conv(ig, LOCO_F16, 2, 320, 8, 8, 320, 3, 3, 1, 1, 1, 1, 1, 1, 43));
    CHECK(check_conv(ig, LOCO_BF16, 1, 32, 10, 10, 40, 3, 3, 1, 1, 1, 1, 1, 1, 44));
}

TEST(cuda_conv2d_implicit_odd_cin_and_strides) {
    GPU_ENV(e, LOCO_F16, 50);
    genv_close(&e);
    const char *ig = "implicit";
    CHECK(check_conv(ig, LOCO_F16, 2, 4, 17, 19, 32, 3, 3, 1, 1, 1, 1, 1, 1, 51)); /* K = 36: scalar weight loads */
    CHECK(check_conv(ig, LOCO_F16, 1, 3, 20, 20, 16, 3, 3, 1, 1, 1, 1, 1, 0, 52));
    CHECK(check_conv(ig, LOCO_F16, 2, 16, 16, 16, 16, 3, 3, 2, 0, 1, 0, 1, 1, 53)); /* VAE encoder downsampler */
    CHECK(check_conv(ig, LOCO_F16, 1, 8, 9, 10, 5, 4, 2, 1, 2, 0, 1, 3, 1, 54));
}

/* F32 convolutions on the TF32 implicit-GEMM kernel (conv_igemm_tf32.cu): 128 x 128 tiles,
 * K tiles of 32, 16-byte weight vectors when K % 4 == 0 and scalar loads otherwise. */
TEST(cuda_conv2d_implicit_tf32) {
    GPU_ENV(e, LOCO_F32, 70);
    genv_close(&e);
    const char *ig = "implicit";
    CHECK(check_conv(ig, LOCO_F32, 2, 4, 17, 19, 130, 3, 3, 1, 1, 1, 1, 1, 1, 71));   /* K 36; Cout, pixels off-tile */
    CHECK(check_conv(ig, LOCO_F32, 2, 128, 12, 11, 256, 3, 3, 1, 1, 1, 1, 1, 1, 72)); /* P 132: 2 x 2 tiles */
    CHECK(check_conv(ig, LOCO_F32, 1, 257, 9, 10, 9, 3, 3, 1, 1, 1, 1, 1, 0, 73));   /* K 2313: scalar, K tail */
    CHECK(check_conv(ig, LOCO_F32, 2, 128, 16, 15, 130, 3, 3, 2, 0, 1, 0, 1, 1, 74)); /* VAE downsampler, odd P */
    CHECK(check_conv(ig, LOCO_F32, 2, 3, 20, 20, 130, 3, 3, 1, 1, 1, 1, 1, 1, 75));   /* K 27, scalar */
    CHECK(check_conv(ig, LOCO_F32, 2, 257, 7, 9, 3, 3, 3, 1, 1, 1, 1, 1, 1, 76));     /* Cout 3 (routed elsewhere) */
}

TEST(cuda_conv2d_1x1_im2col_and_auto) {
    GPU_ENV(e, LOCO_F16, 60);
    genv_close(&e);
    CHECK(check_conv(NULL, LOCO_F16, 2, 64, 9, 7, 48, 1, 1, 1, 0, 0, 0, 0, 1, 61));       /* plain GEMM */
    CHECK(check_conv(NULL, LOCO_F16, 1, 6, 5, 7, 3, 1, 1, 2, 1, 1, 1, 1, 1, 62));         /* strided 1x1 */
    CHECK(check_conv(NULL, LOCO_F32, 2, 16, 12, 12, 24, 3, 3, 1, 1, 1, 1, 1, 1, 63));     /* im2col + TF32 */
    CHECK(check_conv("im2col", LOCO_F16, 2, 4, 17, 19, 32, 3, 3, 1, 1, 1, 1, 1, 1, 64));  /* odd K, odd ld */
    CHECK(check_conv("im2col", LOCO_F16, 2, 16, 16, 16, 16, 3, 3, 2, 0, 1, 0, 1, 1, 65));
    CHECK(check_conv(NULL, LOCO_F16, 2, 64, 64, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 66));     /* auto: large */
    CHECK(check_conv(NULL, LOCO_BF16, 2, 128, 8, 8, 256, 3, 3, 1, 1, 1, 1, 1, 1, 67));    /* auto: small */
}

/* im2col's 16-byte path (output width a multiple of 8: groups of 8 pixels never straddle a
 * row), in both element sizes, and the direct kernel for convs with few output channels. */
TEST(cuda_conv2d_im2col_vector_and_few_channels) {
    GPU_ENV(e, LOCO_F16, 70);
    genv_close(&e);
    CHECK(check_conv("im2col", LOCO_F16, 3, 24, 16, 16, 40, 3, 3, 1, 1, 1, 1, 1, 1, 71));  /* 16-byte groups */
    CHECK(check_conv("im2col", LOCO_BF16, 2, 8, 15, 32, 24, 3, 3, 1, 1, 1, 1, 1, 0, 72));  /* W 32, H odd */
    CHECK(check_conv(NULL, LOCO_F32, 2, 8, 16, 24, 20, 3, 3, 1, 1, 1, 1, 1, 1, 73));      /* F32, 4 per group */
    CHECK(check_conv("im2col", LOCO_F16, 2, 16, 32, 32, 16, 3, 3, 2, 0, 1, 0, 1, 1, 74)); /* stride 2, Wo 16 */
    CHECK(check_conv(NULL, LOCO_F16, 2, 64, 20, 20, 4, 3, 3, 1, 1, 1, 1, 1, 1, 75));      /* UNet conv_out */
    CHECK(check_conv(NULL, LOCO_F32, 1, 32, 24, 17, 3, 3, 3, 1, 1, 1, 1, 1, 1, 76));      /* VAE conv_out, F32 */
    CHECK(check_conv(NULL, LOCO_BF16, 2, 5, 9, 11, 1, 3, 3, 2, 1, 0, 1, 0, 0, 77));       /* 1 channel, no bias */
    CHECK(check_conv(NULL, LOCO_F16, 1, 12, 10, 10, 8, 5, 5, 1, 2, 2, 2, 2, 1, 78));      /* 8 channels, 5x5 */
}

/* A small im2col budget (LOCO_CUDA_IM2COL_KB, read at backend creation) reaches the paths that
 * full-size models take: several samples per batched GEMM with a partial last chunk, and one
 * sample's pixels in slices (VAE decoders at 1024^2). K = 288, one sample's buffer 576 KiB. */
TEST(cuda_conv2d_im2col_chunks_and_slices) {
    GPU_ENV(e, LOCO_F16, 80);
    genv_close(&e);
    setenv("LOCO_CUDA_IM2COL_KB", "1200", 1); /* 2 samples per chunk: chunks of 2 and 1 */
    CHECK(check_conv("im2col", LOCO_F16, 3, 32, 32, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 81));
    CHECK(check_conv("im2col", LOCO_F32, 3, 32, 16, 16, 40, 3, 3, 1, 1, 1, 1, 1, 1, 82));
    setenv("LOCO_CUDA_IM2COL_KB", "256", 1); /* slices of 448 pixels: 448, 448, 128 */
    CHECK(check_conv("im2col", LOCO_F16, 2, 32, 32, 32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 83));
    CHECK(check_conv("im2col", LOCO_BF16, 1, 32, 30, 30, 24, 3, 3, 1, 1, 1, 1, 1, 0, 84)); /* Wo 30: scalar */
    unsetenv("LOCO_CUDA_IM2COL_KB");
}

/* conv2d of x taken as a view x_offset elements into a bigger tensor (a view need not be 16-byte
 * aligned), 3x3 same padding, under LOCO_CUDA_CONV=algo, against the CPU. */
static int check_conv_view(const char *algo, loco_dtype dt, int64_t N, int64_t Cin, int64_t H, int64_t W,
                           int64_t Cout, int64_t x_offset, uint64_t seed) {
    char why[1100];
    genv e;
    setenv("LOCO_CUDA_CONV", algo, 1);
    const int opened = genv_open(&e, dt, seed, why, sizeof why);
    unsetenv("LOCO_CUDA_CONV");
    if (opened != 1) return fprintf(stderr, "%s\n", why), 0;
    const loco_conv2d_params p = {1, {1, 1, 1, 1}};
    int64_t xs[4] = {N, Cin, H, W}, xbig[1] = {N * Cin * H * W + x_offset}, ws[4] = {Cout, Cin, 3, 3},
            ys[4] = {N, Cout, H, W};
    twin xb, x, w, y;
    int ok = twin_rand(&e, 1, xbig, 1.0f, 0.0f, &xb) && twin_rand(&e, 4, ws, 1.0f / sqrtf((float)(Cin * 9)), 0.0f, &w) &&
             twin_out(&e, 4, ys, &y);
    ok = ok && loco_tensor_view(&xb.c, x_offset, 4, xs, &x.c, &e.errc) == LOCO_OK &&
         loco_tensor_view(&xb.g, x_offset, 4, xs, &x.g, &e.errg) == LOCO_OK;
    ok = ok && both_ok(&e, loco_conv2d(e.cpu, &y.c, &x.c, &w.c, NULL, &p, &e.errc),
                       loco_conv2d(e.gpu, &y.g, &x.g, &w.g, NULL, &p, &e.errg), "conv2d of a view");
    ok = ok && twin_close(&y, tol_for(dt), "conv2d of a view");
    twin_free(&xb), twin_free(&w), twin_free(&y);
    genv_close(&e);
    return ok;
}

/* The row-tap GEMMs (conv_rows.cu): f32 by the automatic route (K >= 128, Cout >= 64), f16 and
 * bf16 forced; vertical padding of every kind (none, asymmetric, 5 rows of taps, one row),
 * several samples, and a small buffer budget that splits an image into chunks of output rows
 * (the buffer of a chunk: its rows plus kh - 1). Where it does not apply (a width that is not
 * a multiple of 16 bytes, a 5-wide kernel, stride 2) LOCO_CUDA_CONV=rows leaves the automatic
 * route in place. */
TEST(cuda_conv2d_rows) {
    GPU_ENV(e, LOCO_F16, 90);
    genv_close(&e);
    CHECK(check_conv(NULL, LOCO_F32, 2, 16, 12, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 91));   /* auto: f32 rows */
    CHECK(check_conv("rows", LOCO_F16, 2, 24, 10, 16, 40, 3, 3, 1, 1, 1, 1, 1, 1, 92));
    CHECK(check_conv("rows", LOCO_BF16, 3, 8, 9, 32, 24, 3, 3, 1, 0, 0, 1, 1, 0, 93));  /* Ho = H - 2 */
    CHECK(check_conv("rows", LOCO_F16, 1, 16, 8, 8, 16, 3, 3, 1, 2, 0, 1, 1, 1, 94));   /* asymmetric rows */
    CHECK(check_conv("rows", LOCO_F32, 2, 12, 7, 8, 20, 5, 3, 1, 2, 2, 1, 1, 1, 95));   /* 5 rows of taps */
    CHECK(check_conv("rows", LOCO_F16, 2, 16, 6, 16, 32, 1, 3, 1, 0, 0, 1, 1, 1, 96));  /* one row of taps */
    CHECK(check_conv("rows", LOCO_F16, 2, 16, 8, 12, 32, 3, 3, 1, 1, 1, 1, 1, 1, 97));  /* W 12: not taken */
    CHECK(check_conv("rows", LOCO_F16, 2, 16, 16, 16, 32, 3, 3, 2, 1, 1, 1, 1, 1, 98)); /* stride 2: not taken */
    setenv("LOCO_CUDA_IM2COL_KB", "12", 1); /* 3072-byte padded rows: chunks of 2 output rows */
    CHECK(check_conv(NULL, LOCO_F32, 3, 16, 12, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 99));
    CHECK(check_conv("rows", LOCO_F16, 2, 32, 11, 16, 48, 3, 3, 1, 1, 1, 1, 1, 1, 100)); /* 1536-byte rows: 6 */
    /* x as a view one element in: not 16-byte aligned, so the route steps aside (its fill reads
     * 16 bytes at a time) */
    CHECK(check_conv_view("rows", LOCO_F32, 2, 16, 8, 16, 64, 1, 102));
    CHECK(check_conv_view("rows", LOCO_F16, 1, 16, 8, 16, 32, 8, 103)); /* 16 bytes in: aligned, taken */
    setenv("LOCO_CUDA_IM2COL_OVERLAP", "1", 1); /* fills on the side stream, two buffers of 12 KiB */
    setenv("LOCO_CUDA_IM2COL_KB", "24", 1);
    CHECK(check_conv(NULL, LOCO_F32, 3, 16, 12, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 101));
    unsetenv("LOCO_CUDA_IM2COL_OVERLAP");
    unsetenv("LOCO_CUDA_IM2COL_KB");
}

/* ---- conv2d with GroupNorm prologue, per-sample bias and residual (loco_conv2d_fused) ------------ */

/* (fused_case and check_conv_fused: cuda_check_util.h) */

/* Every route: im2col (the GroupNorm in the gather: the three-tap kernel, the per-element one
 * with 16-byte and scalar rows), the implicit kernels and 1x1 (the GroupNorm through a scratch
 * tensor), f16, bf16 and f32, with and without SiLU, the time-embedding bias, the residual and
 * the conv bias, and without a GroupNorm (groups 0 here); one im2col case in several chunks:
 * overlapped on the side stream, serial, and slices of one sample's pixels. */
TEST(cuda_conv2d_fused) {
    GPU_ENV(e, LOCO_F16, 140);
    genv_close(&e);
    const fused_case cases[] = {
        {"im2col", LOCO_F16, 2, 64, 16, 16, 96, 3, 32, 1, 0, 0, 1},    /* prologue only: bits of the unfused */
        {"im2col", LOCO_F16, 2, 64, 16, 16, 96, 3, 32, 1, 1, 1, 1},    /* the ResNet's conv2 with all terms */
        {"im2col", LOCO_BF16, 3, 32, 12, 12, 64, 3, 8, 1, 1, 0, 1},    /* conv1: time embedding */
        {"im2col", LOCO_F16, 2, 24, 7, 9, 40, 3, 4, 0, 0, 1, 0},       /* odd width: scalar rows, no bias */
        {"im2col", LOCO_F16, 2, 16, 16, 16, 32, 5, 8, 1, 0, 0, 1},     /* 5 taps: the per-element gather */
        {"im2col", LOCO_F32, 2, 32, 10, 8, 48, 3, 16, 1, 1, 1, 1},     /* f32: TF32 GEMM */
        {"implicit", LOCO_F16, 2, 64, 16, 16, 96, 3, 32, 1, 1, 1, 1},  /* scratch GroupNorm, bias in kernel */
        {"implicit", LOCO_F16, 1, 32, 20, 20, 64, 3, 32, 1, 0, 0, 1},  /* prologue only */
        {NULL, LOCO_F16, 2, 64, 8, 8, 128, 1, 32, 0, 0, 1, 1},         /* 1x1: scratch GroupNorm */
        {NULL, LOCO_F16, 2, 64, 8, 8, 128, 1, 0, 0, 0, 1, 1},          /* the ResNet shortcut: residual only */
        {"im2col", LOCO_F16, 2, 32, 8, 8, 64, 3, 0, 0, 1, 0, 0},       /* sample bias only, no conv bias */
        {"rows", LOCO_F16, 2, 64, 16, 16, 96, 3, 32, 1, 0, 0, 1},      /* row taps: prologue only, bits */
        {NULL, LOCO_F32, 3, 32, 8, 16, 64, 3, 16, 1, 1, 1, 1},         /* f32's automatic row taps, all terms */
        {"rows", LOCO_BF16, 2, 32, 12, 8, 64, 3, 8, 0, 1, 0, 1},       /* bf16, GroupNorm without SiLU */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) CHECK(check_conv_fused(&cases[i], 141 + i));
    setenv("LOCO_CUDA_IM2COL_OVERLAP", "1", 1);
    setenv("LOCO_CUDA_IM2COL_KB", "1200", 1);
    const fused_case ov = {"im2col", LOCO_F16, 5, 32, 32, 32, 64, 3, 32, 1, 0, 0, 1};
    CHECK(check_conv_fused(&ov, 150));
    unsetenv("LOCO_CUDA_IM2COL_OVERLAP");
    CHECK(check_conv_fused(&ov, 151)); /* serial chunks of two samples: the table's offset per chunk */
    setenv("LOCO_CUDA_IM2COL_KB", "256", 1);
    CHECK(check_conv_fused(&ov, 152)); /* slices of 448 pixels of one sample */
    const fused_case rows = {NULL, LOCO_F32, 3, 32, 12, 16, 64, 3, 16, 1, 1, 1, 1};
    setenv("LOCO_CUDA_IM2COL_KB", "24", 1); /* 6144-byte rows: chunks of 2 output rows, per sample */
    CHECK(check_conv_fused(&rows, 153));
    unsetenv("LOCO_CUDA_IM2COL_KB");
}

/* ---- norms --------------------------------------------------------------------------------------- */

static int check_group_norm(loco_dtype dt, int nd, const int64_t *shape, int groups, int silu, float offset,
                            int inplace, uint64_t seed) {
    char why[1100];
    genv e;
    if (genv_open(&e, dt, seed, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    int64_t cs[1] = {shape[1]};
    twin x, g, b, y;
    int ok = twin_rand(&e, nd, shape, 2.0f, offset, &x) && twin_rand(&e, 1, cs, 0.5f, 1.0f, &g) &&
             twin_rand(&e, 1, cs, 0.5f, 0.0f, &b) && (inplace || twin_out(&e, nd, shape, &y));
    twin *out = inplace ? &x : &y;
    ok = ok && both_ok(&e, loco_group_norm(e.cpu, &out->c, &x.c, groups, &g.c, &b.c, 1e-5f, silu, &e.errc),
                       loco_group_norm(e.gpu, &out->g, &x.g, groups, &g.g, &b.g, 1e-5f, silu, &e.errg),
                       "group_norm");
    ok = ok && twin_close(out, tol_for(dt), "group_norm");
    twin_free(&x), twin_free(&g), twin_free(&b);
    if (!inplace) twin_free(&y);
    genv_close(&e);
    return ok;
}

TEST(cuda_group_norm_silu_chunks_and_in_place) {
    GPU_ENV(e, LOCO_F16, 70);
    genv_close(&e);
    int64_t a[4] = {2, 64, 32, 32}, b[4] = {1, 128, 96, 96}, c[4] = {2, 12, 7, 7}, d[3] = {3, 6, 33};
    CHECK(check_group_norm(LOCO_F16, 4, a, 32, 1, 0.0f, 0, 71));
    CHECK(check_group_norm(LOCO_F16, 4, b, 32, 0, 0.0f, 1, 72)); /* many chunks per group, in place */
    CHECK(check_group_norm(LOCO_F16, 4, c, 4, 1, 0.0f, 0, 73));  /* HW = 49: scalar path */
    CHECK(check_group_norm(LOCO_F16, 3, d, 3, 0, 0.0f, 0, 74));
    CHECK(check_group_norm(LOCO_BF16, 4, a, 32, 1, 0.0f, 0, 75));
}

TEST(cuda_group_norm_large_mean) {
    GPU_ENV(e, LOCO_F16, 80);
    genv_close(&e);
    int64_t a[4] = {1, 32, 64, 64};
    CHECK(check_group_norm(LOCO_F16, 4, a, 32, 0, 60.0f, 0, 81));
    CHECK(check_group_norm(LOCO_F32, 4, a, 32, 0, 1000.0f, 0, 82));
}

/* in_place: y is x itself (the fast form keeps a warp's row in registers and writes it back) */
static int check_layer_norm(loco_dtype dt, int64_t rows, int64_t C, int with_beta, int in_place, float offset,
                            uint64_t seed) {
    char why[1100];
    genv e;
    if (genv_open(&e, dt, seed, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    int64_t xs[2] = {rows, C}, cs[1] = {C};
    twin x, g, b, y;
    int ok = twin_rand(&e, 2, xs, 2.0f, offset, &x) && twin_rand(&e, 1, cs, 0.5f, 1.0f, &g) &&
             twin_rand(&e, 1, cs, 0.5f, 0.0f, &b) && twin_out(&e, 2, xs, &y);
    twin *out = in_place ? &x : &y;
    ok = ok && both_ok(&e, loco_layer_norm(e.cpu, &out->c, &x.c, &g.c, with_beta ? &b.c : NULL, 1e-5f, &e.errc),
                       loco_layer_norm(e.gpu, &out->g, &x.g, &g.g, with_beta ? &b.g : NULL, 1e-5f, &e.errg),
                       "layer_norm");
    ok = ok && twin_close(out, tol_for(dt), in_place ? "layer_norm in place" : "layer_norm");
    twin_free(&x), twin_free(&g), twin_free(&b), twin_free(&y);
    genv_close(&e);
    return ok;
}

/* Widths on both kernels: rows of up to 32 x 8 vectors in registers (77 is the scalar form of
 * the general kernel, 2560 its vector form), every dtype, with and without beta, in place. */
TEST(cuda_layer_norm) {
    GPU_ENV(e, LOCO_F16, 90);
    genv_close(&e);
    CHECK(check_layer_norm(LOCO_F16, 2 * 77, 768, 1, 0, 0.0f, 91));
    CHECK(check_layer_norm(LOCO_F16, 33, 77, 0, 0, 0.0f, 92)); /* C not a multiple of 8 */
    CHECK(check_layer_norm(LOCO_F16, 4096, 320, 1, 0, 20.0f, 93));
    CHECK(check_layer_norm(LOCO_BF16, 100, 1280, 1, 0, 0.0f, 94));
    CHECK(check_layer_norm(LOCO_F16, 5, 2560, 1, 0, 0.0f, 95));  /* wider than the register form */
    CHECK(check_layer_norm(LOCO_F32, 33, 512, 0, 0, 0.0f, 96));  /* f32: 4 per vector, no beta */
    CHECK(check_layer_norm(LOCO_BF16, 40, 1024, 0, 1, 5.0f, 97)); /* in place, no beta */
    CHECK(check_layer_norm(LOCO_F16, 300, 64, 1, 1, 0.0f, 98));   /* fewer vectors than lanes, in place */
    /* the register form's lane groups: 8 lanes (4 rows a warp; 1022 rows leave a part-filled
     * last warp), 16 (2 rows), 32; and every vector count per lane */
    CHECK(check_layer_norm(LOCO_F16, 1022, 320, 1, 0, 3.0f, 99));  /* 40 vectors: 8 lanes x 5 */
    CHECK(check_layer_norm(LOCO_BF16, 257, 640, 1, 0, 0.0f, 100)); /* 80: 16 lanes x 5 */
    CHECK(check_layer_norm(LOCO_F16, 131, 2048, 1, 0, 0.0f, 101)); /* 256: 32 lanes x 8 */
    CHECK(check_layer_norm(LOCO_F16, 67, 200, 1, 0, 0.0f, 102));   /* 25: 8 lanes x 4 */
    CHECK(check_layer_norm(LOCO_F32, 45, 192, 1, 0, 0.0f, 103));   /* 48 (f32): 8 lanes x 8 */
    /* more rows than the grid has warps (the emulated 108 SMs: 1728 blocks of 8 warps, a row
     * each at 32 lanes a row), so warps go round again with the row they loaded ahead; in place */
    CHECK(check_layer_norm(LOCO_F32, 1728 * 8 + 77, 516, 1, 1, 1.0f, 104)); /* 129: 32 lanes x 5 */
}

/* ---- attention ------------------------------------------------------------------------------------- */

TEST(cuda_attention_flash_head_dims) {
    GPU_ENV(e, LOCO_F16, 100);
    genv_close(&e);
    CHECK(check_attention(LOCO_F16, 2, 2, 100, 100, 8, 40, 0, NULL, 101));  /* SD1.x level 1 */
    CHECK(check_attention(LOCO_F16, 2, 2, 130, 77, 8, 80, 0, NULL, 102));   /* cross-attention, 77 tokens */
    CHECK(check_attention(LOCO_F16, 1, 1, 64, 200, 4, 160, 0, NULL, 103));
    CHECK(check_attention(LOCO_F16, 2, 2, 257, 257, 5, 64, 0, NULL, 104));
    CHECK(check_attention(LOCO_BF16, 2, 2, 300, 77, 10, 64, 0, NULL, 105));
}

TEST(cuda_attention_causal_and_kv_index) {
    GPU_ENV(e, LOCO_F16, 110);
    genv_close(&e);
    CHECK(check_attention(LOCO_F16, 2, 2, 77, 77, 12, 64, 1, NULL, 111)); /* CLIP text */
    CHECK(check_attention(LOCO_F16, 1, 1, 150, 150, 2, 40, 1, NULL, 112));
    static const int kv[4] = {1, 0, 1, 1};
    CHECK(check_attention(LOCO_F16, 4, 2, 96, 77, 8, 40, 0, kv, 113));
    CHECK(check_attention(LOCO_F16, 4, 2, 50, 50, 2, 48, 1, kv, 114)); /* general path with kv_index */
}

/* The default flash kernel for head dims 40/64/80 has 128-row blocks; LOCO_CUDA_FLASH=64 (read
 * when the backend is created) forces the 64-row form, which must stay correct as a fallback. */
TEST(cuda_attention_flash_64_rows) {
    GPU_ENV(e, LOCO_F16, 130);
    genv_close(&e);
    static const int kv[2] = {1, 0};
    setenv("LOCO_CUDA_FLASH", "64", 1);
    setenv("LOCO_CUDA_FLASH_SHORT", "0", 1); /* the 77-key case on the flash kernel */
    int ok = check_attention(LOCO_F16, 2, 2, 130, 77, 8, 80, 0, kv, 131) &&
             check_attention(LOCO_F16, 1, 1, 150, 150, 2, 40, 1, NULL, 132) &&
             check_attention(LOCO_BF16, 2, 2, 257, 257, 5, 64, 0, NULL, 133);
    unsetenv("LOCO_CUDA_FLASH");
    unsetenv("LOCO_CUDA_FLASH_SHORT");
    CHECK(ok);
}

/* At most 80 keys (text) take attention_short.cu's kernel: every head dim, keys from 1 to 80
 * (81 is the flash kernel's again), query tails, causal, per-sample K/V; then many 16-row steps
 * per warp (LOCO_CUDA_FLASH_SHORT_ROWS: each warp's two Q buffers reused in turn), and the same
 * shapes through the flash kernel under LOCO_CUDA_FLASH_SHORT=0, the way back. The other
 * attention tests' 77-key cases run here too. */
TEST(cuda_attention_short_keys) {
    GPU_ENV(e, LOCO_F16, 150);
    genv_close(&e);
    static const int kv[3] = {2, 0, 2}, kv2[2] = {1, 0};
    CHECK(check_attention(LOCO_F16, 2, 2, 100, 77, 4, 160, 0, NULL, 151)); /* SD 1.5's 8x8 level */
    CHECK(check_attention(LOCO_BF16, 2, 2, 33, 80, 3, 64, 0, NULL, 152));
    CHECK(check_attention(LOCO_F16, 3, 3, 20, 1, 2, 40, 0, kv, 153));
    CHECK(check_attention(LOCO_F16, 1, 1, 16, 16, 2, 80, 1, NULL, 154));
    CHECK(check_attention(LOCO_F16, 1, 1, 9, 81, 2, 64, 0, NULL, 155)); /* flash kernel */
    setenv("LOCO_CUDA_FLASH_SHORT_ROWS", "512", 1);
    int ok = check_attention(LOCO_F16, 2, 2, 600, 77, 2, 64, 0, NULL, 156) &&
             check_attention(LOCO_BF16, 1, 1, 700, 50, 1, 40, 1, NULL, 157);
    unsetenv("LOCO_CUDA_FLASH_SHORT_ROWS");
    CHECK(ok);
    setenv("LOCO_CUDA_FLASH_SHORT", "0", 1);
    ok = check_attention(LOCO_F16, 2, 2, 130, 77, 8, 80, 0, NULL, 158) &&
         check_attention(LOCO_F16, 2, 2, 77, 77, 12, 64, 1, NULL, 159) &&
         check_attention_packed(LOCO_BF16, 2, 77, 5, 64, kv2, 160);
    unsetenv("LOCO_CUDA_FLASH_SHORT");
    CHECK(ok);
}

TEST(cuda_attention_general_path) {
    GPU_ENV(e, LOCO_F16, 120);
    genv_close(&e);
    CHECK(check_attention(LOCO_F16, 1, 1, 256, 256, 1, 512, 0, NULL, 121)); /* VAE mid-block */
    CHECK(check_attention(LOCO_F16, 2, 2, 33, 17, 3, 24, 0, NULL, 122));
    CHECK(check_attention(LOCO_F32, 2, 2, 70, 77, 4, 64, 0, NULL, 123));
    CHECK(check_attention_view(LOCO_F16, 2, 2, 70, 77, 4, 64, 0, NULL, 3, 124)); /* unaligned q view */
}

/* Packed q|k|v rows (the UNet's self-attention after its stacked projection) through each
 * route: 128-row and 64-row flash blocks, head dim 160, per-sample K/V, and the general path. */
TEST(cuda_attention_packed_qkv) {
    GPU_ENV(e, LOCO_F16, 140);
    genv_close(&e);
    static const int kv[2] = {1, 0};
    CHECK(check_attention_packed(LOCO_F16, 2, 300, 8, 40, NULL, 141)); /* SD 1.5 level 1, tails */
    CHECK(check_attention_packed(LOCO_BF16, 2, 77, 5, 64, kv, 142));   /* 64-row blocks, kv_index */
    CHECK(check_attention_packed(LOCO_F16, 1, 130, 8, 80, NULL, 143));
    CHECK(check_attention_packed(LOCO_F16, 1, 70, 4, 160, NULL, 144));
    CHECK(check_attention_packed(LOCO_F16, 2, 33, 3, 24, NULL, 145));  /* general path */
    CHECK(check_attention_packed(LOCO_F32, 2, 70, 4, 64, kv, 146));    /* general path, f32 */
}

/* ---- elementwise and layout ------------------------------------------------------------------------- */

TEST(cuda_activation_every_kind_and_in_place) {
    GPU_ENV(e, LOCO_F16, 130);
    int64_t s[2] = {37, 1001};
    for (int a = 0; a < LOCO_ACT_COUNT; a++) {
        twin x, y;
        CHECK(twin_rand(&e, 2, s, 4.0f, 0.0f, &x) && twin_out(&e, 2, s, &y));
        CHECK(both_ok(&e, loco_activation(e.cpu, &y.c, &x.c, (loco_act)a, &e.errc),
                      loco_activation(e.gpu, &y.g, &x.g, (loco_act)a, &e.errg), "activation"));
        CHECK(twin_close(&y, 1e-2, loco_act_name((loco_act)a)));
        CHECK(both_ok(&e, loco_activation(e.cpu, &x.c, &x.c, (loco_act)a, &e.errc),
                      loco_activation(e.gpu, &x.g, &x.g, (loco_act)a, &e.errg), "activation in place"));
        CHECK(twin_close(&x, 1e-2, "activation in place"));
        twin_free(&x), twin_free(&y);
    }
    genv_close(&e);
}

TEST(cuda_geglu_add_channel_bias_add) {
    GPU_ENV(e, LOCO_F16, 140);
    int64_t xs[3] = {2, 65, 2 * 120}, ys[3] = {2, 65, 120}, odd[2] = {7, 2 * 13}, oddy[2] = {7, 13};
    twin x, y, xo, yo;
    CHECK(twin_rand(&e, 3, xs, 3.0f, 0.0f, &x) && twin_out(&e, 3, ys, &y));
    CHECK(both_ok(&e, loco_geglu(e.cpu, &y.c, &x.c, &e.errc), loco_geglu(e.gpu, &y.g, &x.g, &e.errg), "geglu"));
    CHECK(twin_close(&y, 1e-2, "geglu"));
    CHECK(twin_rand(&e, 2, odd, 3.0f, 0.0f, &xo) && twin_out(&e, 2, oddy, &yo));
    CHECK(both_ok(&e, loco_geglu(e.cpu, &yo.c, &xo.c, &e.errc), loco_geglu(e.gpu, &yo.g, &xo.g, &e.errg), "geglu"));
    CHECK(twin_close(&yo, 1e-2, "geglu odd"));
    /* more vectors than the emulated grid has threads (108 SMs: 442368), so threads go round */
    int64_t bx[2] = {3000, 2 * 1200}, by[2] = {3000, 1200};
    twin xb, yb;
    CHECK(twin_rand(&e, 2, bx, 3.0f, 0.0f, &xb) && twin_out(&e, 2, by, &yb));
    CHECK(both_ok(&e, loco_geglu(e.cpu, &yb.c, &xb.c, &e.errc), loco_geglu(e.gpu, &yb.g, &xb.g, &e.errg), "geglu"));
    CHECK(twin_close(&yb, 1e-2, "geglu, grid-stride"));
    twin_free(&xb), twin_free(&yb);

    int64_t is[4] = {2, 24, 9, 11}, bs[2] = {2, 24};
    twin a, b, bias, o;
    CHECK(twin_rand(&e, 4, is, 1.0f, 0.0f, &a) && twin_rand(&e, 4, is, 1.0f, 0.0f, &b) &&
          twin_rand(&e, 2, bs, 1.0f, 0.0f, &bias) && twin_out(&e, 4, is, &o));
    CHECK(both_ok(&e, loco_add(e.cpu, &o.c, &a.c, &b.c, &e.errc), loco_add(e.gpu, &o.g, &a.g, &b.g, &e.errg), "add"));
    CHECK(twin_close(&o, 1e-2, "add"));
    CHECK(both_ok(&e, loco_add_channel_bias(e.cpu, &a.c, &a.c, &bias.c, &e.errc),
                  loco_add_channel_bias(e.gpu, &a.g, &a.g, &bias.g, &e.errg), "add_channel_bias"));
    CHECK(twin_close(&a, 1e-2, "add_channel_bias in place"));
    int64_t vs[4] = {2, 16, 8, 8}; /* HW = 64: vector path */
    twin c, cb;
    CHECK(twin_rand(&e, 4, vs, 1.0f, 0.0f, &c) && twin_rand(&e, 2, (int64_t[2]){2, 16}, 1.0f, 0.0f, &cb));
    CHECK(both_ok(&e, loco_add_channel_bias(e.cpu, &c.c, &c.c, &cb.c, &e.errc),
                  loco_add_channel_bias(e.gpu, &c.g, &c.g, &cb.g, &e.errg), "add_channel_bias"));
    CHECK(twin_close(&c, 1e-2, "add_channel_bias vector"));
    twin_free(&x), twin_free(&y), twin_free(&xo), twin_free(&yo), twin_free(&a), twin_free(&b);
    twin_free(&bias), twin_free(&o), twin_free(&c), twin_free(&cb);
    genv_close(&e);
}

TEST(cuda_lincomb_few_and_many_terms_aliasing) {
    GPU_ENV(e, LOCO_F16, 150);
    int64_t s[2] = {3, 4099};
    enum { NT = 11 };
    twin x[NT];
    const loco_tensor *xc[NT], *xg[NT];
    float coef[NT];
    for (int i = 0; i < NT; i++) {
        CHECK(twin_rand(&e, 2, s, 1.0f, 0.0f, &x[i]));
        xc[i] = &x[i].c;
        xg[i] = &x[i].g;
        coef[i] = 0.1f * (float)(i + 1) * (i % 2 ? -1.0f : 1.0f);
    }
    twin y;
    CHECK(twin_out(&e, 2, s, &y));
    CHECK(both_ok(&e, loco_lincomb(e.cpu, &y.c, 3, xc, coef, &e.errc), loco_lincomb(e.gpu, &y.g, 3, xg, coef, &e.errg),
                  "lincomb"));
    CHECK(twin_close(&y, 1e-2, "lincomb 3 terms"));
    /* 11 terms (more than one launch) written over the last input */
    CHECK(both_ok(&e, loco_lincomb(e.cpu, &x[NT - 1].c, NT, xc, coef, &e.errc),
                  loco_lincomb(e.gpu, &x[NT - 1].g, NT, xg, coef, &e.errg), "lincomb"));
    CHECK(twin_close(&x[NT - 1], 1e-2, "lincomb 11 terms in place"));
    for (int i = 0; i < NT; i++) twin_free(&x[i]);
    twin_free(&y);
    genv_close(&e);
}

TEST(cuda_copy_fill_convert) {
    GPU_ENV(e, LOCO_F16, 160);
    int64_t s[1] = {10007};
    twin x;
    CHECK(twin_rand(&e, 1, s, 5.0f, 0.0f, &x));
    loco_tensor f32, back;
    loco_err err;
    CHECK(loco_tensor_alloc(e.gpu, LOCO_F32, 1, s, &f32, &err) == LOCO_OK);
    CHECK(loco_tensor_alloc(e.gpu, LOCO_F16, 1, s, &back, &err) == LOCO_OK);
    CHECK_MSG(loco_copy(e.gpu, &f32, &x.g, &err) == LOCO_OK, "%s", err.msg);
    CHECK_MSG(loco_copy(e.gpu, &back, &f32, &err) == LOCO_OK, "%s", err.msg);
    CHECK(same_bits(&back, &x.g, "copy f16 -> f32 -> f16"));
    CHECK(same_bits(&f32, &x.c, "copy f16 -> f32")); /* the values are exactly representable */
    CHECK(loco_fill(e.gpu, &back, -2.5f, &err) == LOCO_OK);
    float *h = download(&back);
    CHECK(h != NULL);
    for (int64_t i = 0; i < s[0]; i++) CHECK_MSG(h[i] == -2.5f, "fill at %lld: %g", (long long)i, h[i]);
    free(h);
    loco_tensor_free(&f32), loco_tensor_free(&back), twin_free(&x);
    genv_close(&e);
}

TEST(cuda_transpose_concat_upsample) {
    GPU_ENV(e, LOCO_F16, 170);
    int64_t xs[3] = {2, 45, 67}, ys[3] = {2, 67, 45};
    twin x, y;
    CHECK(twin_rand(&e, 3, xs, 1.0f, 0.0f, &x) && twin_out(&e, 3, ys, &y));
    CHECK(both_ok(&e, loco_transpose12(e.cpu, &y.c, &x.c, &e.errc), loco_transpose12(e.gpu, &y.g, &x.g, &e.errg),
                  "transpose12"));
    CHECK(twin_close(&y, 0.0, "transpose12"));

    int64_t as[4] = {2, 5, 6, 7}, bs[4] = {2, 3, 6, 7}, cs[4] = {2, 8, 6, 7};
    twin a, b, c;
    CHECK(twin_rand(&e, 4, as, 1.0f, 0.0f, &a) && twin_rand(&e, 4, bs, 1.0f, 0.0f, &b) && twin_out(&e, 4, cs, &c));
    CHECK(both_ok(&e, loco_concat(e.cpu, &c.c, &a.c, &b.c, 1, &e.errc), loco_concat(e.gpu, &c.g, &a.g, &b.g, 1, &e.errg),
                  "concat"));
    CHECK(twin_close(&c, 0.0, "concat axis 1"));
    /* rows of whole 16-byte vectors take the vector kernel (the UNet's skips); the above, memcpy2D */
    int64_t vas[4] = {3, 4, 8, 6}, vbs[4] = {3, 12, 8, 6}, vcs[4] = {3, 16, 8, 6};
    twin va, vb, vc;
    CHECK(twin_rand(&e, 4, vas, 1.0f, 0.0f, &va) && twin_rand(&e, 4, vbs, 1.0f, 0.0f, &vb) &&
          twin_out(&e, 4, vcs, &vc));
    CHECK(both_ok(&e, loco_concat(e.cpu, &vc.c, &va.c, &vb.c, 1, &e.errc),
                  loco_concat(e.gpu, &vc.g, &va.g, &vb.g, 1, &e.errg), "concat"));
    CHECK(twin_close(&vc, 0.0, "concat axis 1, vectors"));
    twin_free(&va), twin_free(&vb), twin_free(&vc);
    int64_t ls[2] = {5, 3}, rs[2] = {5, 4}, os[2] = {5, 7};
    twin l, r, o;
    CHECK(twin_rand(&e, 2, ls, 1.0f, 0.0f, &l) && twin_rand(&e, 2, rs, 1.0f, 0.0f, &r) && twin_out(&e, 2, os, &o));
    CHECK(both_ok(&e, loco_concat(e.cpu, &o.c, &l.c, &r.c, -1, &e.errc),
                  loco_concat(e.gpu, &o.g, &l.g, &r.g, -1, &e.errg), "concat"));
    CHECK(twin_close(&o, 0.0, "concat last axis"));

    int64_t us[4] = {2, 3, 5, 7}, uo[4] = {2, 3, 10, 14};
    twin u, uy;
    CHECK(twin_rand(&e, 4, us, 1.0f, 0.0f, &u) && twin_out(&e, 4, uo, &uy));
    CHECK(both_ok(&e, loco_upsample_nearest2x(e.cpu, &uy.c, &u.c, &e.errc),
                  loco_upsample_nearest2x(e.gpu, &uy.g, &u.g, &e.errg), "upsample"));
    CHECK(twin_close(&uy, 0.0, "upsample_nearest2x"));
    twin_free(&x), twin_free(&y), twin_free(&a), twin_free(&b), twin_free(&c);
    twin_free(&l), twin_free(&r), twin_free(&o), twin_free(&u), twin_free(&uy);
    genv_close(&e);
}

TEST(cuda_embedding_and_set_channels) {
    GPU_ENV(e, LOCO_F16, 180);
    int64_t ts[2] = {1000, 96}, n = 2 * 77 + 500; /* more ids than one launch carries */
    int32_t *ids = malloc((size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919) % 1000);
    int64_t ys[2] = {n, 96};
    twin t, y;
    CHECK(twin_rand(&e, 2, ts, 1.0f, 0.0f, &t) && twin_out(&e, 2, ys, &y));
    CHECK(both_ok(&e, loco_embedding(e.cpu, &y.c, &t.c, ids, n, &e.errc),
                  loco_embedding(e.gpu, &y.g, &t.g, ids, n, &e.errg), "embedding"));
    CHECK(twin_close(&y, 0.0, "embedding"));
    /* set_channels, with channel 5 named twice: the later value wins */
    int32_t ch[4] = {5, 0, 95, 5};
    float val[4] = {1.0f, -3.0f, 0.25f, 7.0f};
    CHECK(both_ok(&e, loco_set_channels(e.cpu, &y.c, ch, val, 4, &e.errc),
                  loco_set_channels(e.gpu, &y.g, ch, val, 4, &e.errg), "set_channels"));
    CHECK(twin_close(&y, 0.0, "set_channels"));
    free(ids);
    twin_free(&t), twin_free(&y);
    genv_close(&e);
}
