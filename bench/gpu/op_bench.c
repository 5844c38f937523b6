/* op_bench.c: times loco's CUDA ops on the shapes listed in bench/gpu/ops.txt and prints one
 * line per op: "name ms rate unit". bench/gpu-check.sh runs it next to torch_ops.py (the same
 * shapes in PyTorch) and joins the two tables.
 *
 * Timing: inputs are random (never zeros), three warm-up calls, then five batches of `reps`
 * calls each between two loco_backend_sync; the median batch gives the time per call. Conv
 * shapes are also timed on backends created with LOCO_CUDA_CONV=implicit and =im2col, so the
 * routes the default picks between can be compared on the same GPU ("name@implicit" and
 * "name@im2col" rows; for batches of 4 or more also "name@im2col_32m" and "name@im2col_96m",
 * im2col in LOCO_CUDA_IM2COL_KB chunks of 32 and 96 MiB, and "name@im2col_overlap", fills on a
 * side stream beside the GEMMs, LOCO_CUDA_IM2COL_OVERLAP=1), on the row-tap route ("name@rows",
 * LOCO_CUDA_CONV=rows, and "name@rows_overlap" with its fills on the side stream), and f16 ones on the implicit route
 * without its row-gather kernel (LOCO_CUDA_IGEMM_ROWS=0: "name@implicit_generic"). Attention
 * shapes whose head dim has both flash-attention block heights (40, 64, 80) are also timed with
 * LOCO_CUDA_FLASH=64 and =128 ("name@fa64", "name@fa128"), with each variant of the 128-row kernel
 * forced (LOCO_CUDA_FLASH=classic, =stages3, =ilp3 and =ilp3q: "name@fa_classic", "name@fa_stages3",
 * "name@fa_ilp3", "name@fa_ilp3q"); those of at most 80 keys (text) also on the flash kernel instead of
 * attention_short.cu's (LOCO_CUDA_FLASH_SHORT=0: "name@short_off"); and, in the --wgmma run, with the
 * experimental Hopper kernel ("name@fa_wgmma", "name@fa_wgmma128" with 128-key tiles, and at head
 * dims 64 and 80 "name@fa_wgmma3" with 192-row blocks of three warpgroups; "name@fa_wgmma_ws",
 * "name@fa_wgmma_ws3" and "name@fa_wgmma_ws128" warp-specialised, a producer warp loading K/V;
 * ffgeglu rows as "name@geglu_wgmma": the feed-forward's GEMM and GEGLU in one kernel, and linear
 * rows without activation whose widths it takes as "name@linear_wgmma"; both again with the
 * kernel's tiles loaded by TMA, "@geglu_wgmma_tma" and "@linear_wgmma_tma", and published by
 * cp.async.mbarrier.arrive, "@geglu_wgmma_arrive" and "@linear_wgmma_arrive"; the warp-specialised
 * attention so published: "@fa_wgmma_ws3_arrive", "@fa_wgmma_ws128_arrive", and loading K/V by TMA
 * at head dim 64: "@fa_wgmma_ws3_tma", "@fa_wgmma_ws128_tma"; in clusters of two, "_mc"; and both
 * on LayerNorm(x) with the LayerNorm folded in, "@ln_fold_tma" and "@ln_fold_mc", beside
 * loco_layer_norm then the GEMM on the same backends, "@ln_unfused_tma" and "@ln_unfused_mc"); f16
 * 3x3 conv and resconv rows on conv_tma.cu, "@conv_tma" (and "@conv_tma_mc"). resconv rows (a ResNet block's
 * GroupNorm+SiLU, conv, residual add) time loco_conv2d_fused and the three separate ops
 * ("name@unfused"). selfattn rows (a transformer block's q, k, v projections and attention)
 * time the stacked projection with packed attention and the three projections apart
 * ("name@apart"). proj rows (a transformer's proj_in and proj_out with its residual, on NCHW
 * activations) time loco_linear_from/to_channels and, as "name@unfused", the transposes, linears
 * and add they replace; temb rows (SD 1.5's 22 ResNet time projections of one input) time
 * loco_linear_many and, as "name@unfused", one loco_linear each. Linear rows and the conv rows of batch 4 or more are also timed with
 * LOCO_CUDA_GEMM_TUNE=1 ("name@tuned": cuBLASLt's top candidates timed per shape). With --wgmma, only the f16 conv rows
 * on the experimental wgmma kernel ("name@wgmma": LOCO_CUDA_CONV=wgmma, the automatic route
 * where that kernel does not apply), a separate run so that a fault there spares the main table.
 * With --cudnn, only the rows cuDNN takes, another run of their own: the attention rows its fused
 * SDPA takes as "name@fa_cudnn" (LOCO_CUDA_FLASH=cudnn), and the conv rows (kernel not 1x1) and
 * resconv rows on its convolutions as "name@conv_cudnn" (LOCO_CUDA_CONV=cudnn).
 *
 * Build: make build/bench/gpu/op_bench. Usage: op_bench [ops.txt] [reps] [--wgmma | --cudnn]. */
#include "backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_T 8

/* temb rows: SD 1.5's ResNet time-embedding projections (down, mid, up blocks) */
static const int TEMB_WIDTH[] = {320,  320,  640,  640,  1280, 1280, 1280, 1280, 1280, 1280, 1280,
                                 1280, 1280, 1280, 1280, 1280, 640,  640,  640,  320,  320,  320};
#define TEMB_LAYERS ((int)(sizeof TEMB_WIDTH / sizeof TEMB_WIDTH[0]))

typedef struct bench_op {
    char kind[16], name[64];
    long a[9];
    int na;
    char act[16];
    int unfused; /* resconv: the separate ops instead of loco_conv2d_fused; selfattn: q, k, v apart;
                  * ln: loco_layer_norm, then the op */
    int ln;      /* ffgeglu, linear (no activation): on LayerNorm(x), loco_ln_linear */
} bench_op;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A tensor of dtype dt filled with uniform values in [-scale, scale); scale 0: zeros, filled on
 * the device (most outputs and scratch tensors: drawing and uploading hundreds of millions of
 * zeros took most of a big row's setup, which the --wgmma table repeats for every variant). */
static int rand_tensor_dt(loco_backend *be, loco_dtype dt, int nd, const int64_t *shape, float scale, uint64_t *seed,
                          loco_tensor *t) {
    loco_err err;
    if (loco_tensor_alloc(be, dt, nd, shape, t, &err) != LOCO_OK) {
        fprintf(stderr, "alloc: %s\n", err.msg);
        return -1;
    }
    if (scale == 0.0f) {
        if (loco_fill(be, t, 0.0f, &err) == LOCO_OK) return 0;
        fprintf(stderr, "fill: %s\n", err.msg);
        return -1;
    }
    size_t n = (size_t)loco_tensor_numel(t);
    float *h = malloc(n * sizeof(float));
    if (!h) return -1;
    /* element i from a hash of (seed, i) (splitmix64's finaliser, as engine/random_weights.c), so the
     * threads draw in parallel */
    const uint64_t base = *seed;
    *seed += 0x9e3779b97f4a7c15ull * (uint64_t)(n + 1);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint64_t z = base + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        h[i] = ((float)(z >> 40) / 16777216.0f * 2.0f - 1.0f) * scale;
    }
    loco_status st = loco_tensor_upload(t, h, LOCO_F32, &err);
    free(h);
    if (st != LOCO_OK) fprintf(stderr, "upload: %s\n", err.msg);
    return st == LOCO_OK ? 0 : -1;
}

/* The same in the backend's activation dtype. */
static int rand_tensor(loco_backend *be, int nd, const int64_t *shape, float scale, uint64_t *seed, loco_tensor *t) {
    return rand_tensor_dt(be, loco_backend_act_dtype(be), nd, shape, scale, seed, t);
}

static loco_act act_of(const char *s) {
    loco_act a = LOCO_ACT_NONE;
    loco_act_from_name(s, &a);
    return a;
}

/* Runs op once; the tensors t[] were prepared by setup(). */
static loco_status run_op(loco_backend *be, const bench_op *op, loco_tensor *t, loco_err *err) {
    const long *a = op->a;
    if (op->ln) { /* t: x, w, bias, y, gamma, beta, normalised x (unfused) */
        const int geglu = !strcmp(op->kind, "ffgeglu");
        if (!op->unfused) return loco_ln_linear(be, &t[3], &t[0], &t[4], &t[5], 1e-5f, &t[1], &t[2], geglu, err);
        const loco_status st = loco_layer_norm(be, &t[6], &t[0], &t[4], &t[5], 1e-5f, err);
        if (st != LOCO_OK) return st;
        return geglu ? loco_linear_geglu(be, &t[3], &t[6], &t[1], &t[2], err)
                     : loco_linear(be, &t[3], &t[6], &t[1], &t[2], LOCO_ACT_NONE, err);
    }
    if (!strcmp(op->kind, "conv") || !strcmp(op->kind, "conv32")) {
        loco_conv2d_params p = {(int)a[6], {(int)a[7], (int)a[7], (int)a[7], (int)a[7]}};
        return loco_conv2d(be, &t[3], &t[0], &t[1], &t[2], &p, err);
    }
    if (!strcmp(op->kind, "resconv")) {
        /* t: x, w, bias, y, gamma, beta, residual, normalised x (unfused) */
        const loco_conv2d_params p = {1, {1, 1, 1, 1}};
        if (op->unfused) {
            loco_status st = loco_group_norm(be, &t[7], &t[0], 32, &t[4], &t[5], 1e-5f, 1, err);
            if (st == LOCO_OK) st = loco_conv2d(be, &t[3], &t[7], &t[1], &t[2], &p, err);
            return st == LOCO_OK ? loco_add(be, &t[3], &t[6], &t[3], err) : st;
        }
        loco_conv2d_fusion f;
        loco_conv2d_fusion_init(&f);
        f.norm_gamma = &t[4];
        f.norm_beta = &t[5];
        f.norm_silu = 1;
        f.residual = &t[6];
        return loco_conv2d_fused(be, &t[3], &t[0], &t[1], &t[2], &p, &f, err);
    }
    if (!strcmp(op->kind, "selfattn")) {
        /* t: x [B, L, C], the stacked q|k|v weight [3C, C], its output [B, L, 3C], out, q, k, v */
        const long B = a[0], L = a[1], C = a[2];
        loco_attention_params p = {(int)a[3], 1.0f / sqrtf((float)(C / a[3])), 0, NULL, !op->unfused};
        if (!op->unfused) {
            loco_status st = loco_linear(be, &t[2], &t[0], &t[1], NULL, LOCO_ACT_NONE, err);
            return st == LOCO_OK ? loco_attention(be, &t[3], &t[2], NULL, NULL, &p, err) : st;
        }
        for (int i = 0; i < 3; i++) { /* the pre-stacking path: one GEMM per projection */
            loco_tensor w;
            loco_status st = loco_tensor_view(&t[1], (int64_t)i * C * C, 2, (int64_t[]){C, C}, &w, err);
            if (st == LOCO_OK) st = loco_linear(be, &t[4 + i], &t[0], &w, NULL, LOCO_ACT_NONE, err);
            if (st != LOCO_OK) return st;
        }
        (void)B, (void)L;
        return loco_attention(be, &t[3], &t[4], &t[5], &t[6], &p, err);
    }
    if (!strcmp(op->kind, "temb")) {
        /* t: x [rows, K], the stacked weights [sum of widths, K], biases, outputs: each layer a
         * view (SD 1.5's ResNet time projections) */
        const long rows = a[0], K = a[1];
        loco_tensor ys[TEMB_LAYERS], ws[TEMB_LAYERS], bs[TEMB_LAYERS];
        loco_tensor *yp[TEMB_LAYERS];
        const loco_tensor *wp[TEMB_LAYERS], *bp[TEMB_LAYERS];
        for (int i = 0, off = 0; i < TEMB_LAYERS; off += TEMB_WIDTH[i], i++) {
            loco_status st = loco_tensor_view(&t[1], (int64_t)off * K, 2, (int64_t[]){TEMB_WIDTH[i], K}, &ws[i], err);
            if (st == LOCO_OK) st = loco_tensor_view(&t[2], off, 1, (int64_t[]){TEMB_WIDTH[i]}, &bs[i], err);
            if (st == LOCO_OK) st = loco_tensor_view(&t[3], (int64_t)off * rows, 2, (int64_t[]){rows, TEMB_WIDTH[i]}, &ys[i], err);
            if (st != LOCO_OK) return st;
            yp[i] = &ys[i], wp[i] = &ws[i], bp[i] = &bs[i];
        }
        if (!op->unfused) return loco_linear_many(be, TEMB_LAYERS, yp, &t[0], wp, bp, err);
        for (int i = 0; i < TEMB_LAYERS; i++) {
            loco_status st = loco_linear(be, yp[i], &t[0], wp[i], bp[i], LOCO_ACT_NONE, err);
            if (st != LOCO_OK) return st;
        }
        return LOCO_OK;
    }
    if (!strcmp(op->kind, "proj")) {
        /* t: x [B, C, L] (GroupNorm's output, NCHW), w_in, bias, y [B, C, L], h [B, L, C] (the
         * blocks' stream), w_out, and for @unfused the token-major temporaries t[6], t[7] */
        const long B = a[0], C = a[1], L = a[2];
        if (!op->unfused) {
            loco_status st = loco_linear_from_channels(be, &t[4], &t[0], &t[1], &t[2], err);
            return st == LOCO_OK ? loco_linear_to_channels(be, &t[3], &t[4], &t[5], &t[2], &t[0], err) : st;
        }
        loco_status st = loco_transpose12(be, &t[6], &t[0], err); /* the transformer before session 6 */
        if (st == LOCO_OK) st = loco_linear(be, &t[4], &t[6], &t[1], &t[2], LOCO_ACT_NONE, err);
        if (st == LOCO_OK) st = loco_linear(be, &t[7], &t[4], &t[5], &t[2], LOCO_ACT_NONE, err);
        if (st == LOCO_OK) st = loco_transpose12(be, &t[3], &t[7], err);
        (void)B, (void)C, (void)L;
        return st == LOCO_OK ? loco_add(be, &t[3], &t[3], &t[0], err) : st;
    }
    if (!strcmp(op->kind, "linear")) return loco_linear(be, &t[3], &t[0], &t[1], &t[2], act_of(op->act), err);
    if (!strcmp(op->kind, "attn")) {
        loco_attention_params p = {(int)a[3], 1.0f / sqrtf((float)a[4]), (int)a[5], NULL, 0};
        return loco_attention(be, &t[3], &t[0], &t[1], &t[2], &p, err);
    }
    if (!strcmp(op->kind, "gn")) return loco_group_norm(be, &t[3], &t[0], (int)a[4], &t[1], &t[2], 1e-5f, (int)a[5], err);
    if (!strcmp(op->kind, "ln")) return loco_layer_norm(be, &t[3], &t[0], &t[1], &t[2], 1e-5f, err);
    if (!strcmp(op->kind, "ffgeglu")) return loco_linear_geglu(be, &t[3], &t[0], &t[1], &t[2], err);
    return loco_geglu(be, &t[3], &t[0], err);
}

/* Allocates inputs t[0..2] and the output t[3]; returns the work in flop (or bytes, *is_bytes). */
static int setup(loco_backend *be, const bench_op *op, loco_tensor *t, double *work, int *is_bytes) {
    const long *a = op->a;
    uint64_t seed = 12345;
    *is_bytes = 0;
    memset(t, 0, MAX_T * sizeof *t);
    if (!strcmp(op->kind, "conv") || !strcmp(op->kind, "conv32")) {
        long N = a[0], Ci = a[1], H = a[2], W = a[3], Co = a[4], k = a[5], s = a[6], p = a[7];
        long Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
        int64_t xs[4] = {N, Ci, H, W}, ws[4] = {Co, Ci, k, k}, bs[1] = {Co}, ys[4] = {N, Co, Ho, Wo};
        /* conv32: F32 activations on the F16 backend, as SD-XL's upcast VAE runs */
        const loco_dtype dt = !strcmp(op->kind, "conv32") ? LOCO_F32 : loco_backend_act_dtype(be);
        if (rand_tensor_dt(be, dt, 4, xs, 1.0f, &seed, &t[0]) || rand_tensor_dt(be, dt, 4, ws, 0.05f, &seed, &t[1]) ||
            rand_tensor_dt(be, dt, 1, bs, 0.1f, &seed, &t[2]) || rand_tensor_dt(be, dt, 4, ys, 0.0f, &seed, &t[3]))
            return -1;
        *work = 2.0 * N * Co * Ho * Wo * Ci * k * k;
    } else if (!strcmp(op->kind, "resconv")) {
        long N = a[0], C = a[1], H = a[2], W = a[3];
        int64_t xs[4] = {N, C, H, W}, ws[4] = {C, C, 3, 3}, cs[1] = {C};
        if (rand_tensor(be, 4, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 4, ws, 0.05f, &seed, &t[1]) ||
            rand_tensor(be, 1, cs, 0.1f, &seed, &t[2]) || rand_tensor(be, 4, xs, 0.0f, &seed, &t[3]) ||
            rand_tensor(be, 1, cs, 1.0f, &seed, &t[4]) || rand_tensor(be, 1, cs, 0.1f, &seed, &t[5]) ||
            rand_tensor(be, 4, xs, 1.0f, &seed, &t[6]) || rand_tensor(be, 4, xs, 0.0f, &seed, &t[7]))
            return -1;
        *work = 2.0 * N * C * H * W * C * 9;
    } else if (!strcmp(op->kind, "selfattn")) {
        long B = a[0], L = a[1], C = a[2];
        int64_t xs[3] = {B, L, C}, ws[2] = {3 * C, C}, ps[3] = {B, L, 3 * C};
        if (rand_tensor(be, 3, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 2, ws, 0.05f, &seed, &t[1]) ||
            rand_tensor(be, 3, ps, 0.0f, &seed, &t[2]))
            return -1;
        for (int i = 3; i < 7; i++)
            if (rand_tensor(be, 3, xs, 0.0f, &seed, &t[i])) return -1;
        *work = 2.0 * B * L * C * 3 * C + 4.0 * B * L * L * C;
    } else if (!strcmp(op->kind, "temb")) {
        long rows = a[0], K = a[1], total = 0;
        for (int i = 0; i < TEMB_LAYERS; i++) total += TEMB_WIDTH[i];
        int64_t xs[2] = {rows, K}, ws[2] = {total, K}, bs[1] = {total}, ys[1] = {rows * total};
        if (rand_tensor(be, 2, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 2, ws, 0.05f, &seed, &t[1]) ||
            rand_tensor(be, 1, bs, 0.1f, &seed, &t[2]) || rand_tensor(be, 1, ys, 0.0f, &seed, &t[3]))
            return -1;
        *work = 2.0 * rows * total * K;
    } else if (!strcmp(op->kind, "proj")) {
        long B = a[0], C = a[1], L = a[2];
        int64_t cl[3] = {B, C, L}, lc[3] = {B, L, C}, ws[2] = {C, C}, bs[1] = {C};
        if (rand_tensor(be, 3, cl, 1.0f, &seed, &t[0]) || rand_tensor(be, 2, ws, 0.05f, &seed, &t[1]) ||
            rand_tensor(be, 1, bs, 0.1f, &seed, &t[2]) || rand_tensor(be, 3, cl, 0.0f, &seed, &t[3]) ||
            rand_tensor(be, 3, lc, 0.0f, &seed, &t[4]) || rand_tensor(be, 2, ws, 0.05f, &seed, &t[5]) ||
            rand_tensor(be, 3, lc, 0.0f, &seed, &t[6]) || rand_tensor(be, 3, lc, 0.0f, &seed, &t[7]))
            return -1;
        *work = 2.0 * 2.0 * B * L * C * C;
    } else if (!strcmp(op->kind, "linear")) {
        long M = a[0], K = a[1], Nn = a[2];
        int64_t xs[2] = {M, K}, ws[2] = {Nn, K}, bs[1] = {Nn}, ys[2] = {M, Nn};
        if (rand_tensor(be, 2, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 2, ws, 0.05f, &seed, &t[1]) ||
            rand_tensor(be, 1, bs, 0.1f, &seed, &t[2]) || rand_tensor(be, 2, ys, 0.0f, &seed, &t[3]))
            return -1;
        *work = 2.0 * M * K * Nn;
    } else if (!strcmp(op->kind, "attn")) {
        long B = a[0], Lq = a[1], Lk = a[2], H = a[3], D = a[4];
        int64_t qs[3] = {B, Lq, H * D}, ks[3] = {B, Lk, H * D};
        if (rand_tensor(be, 3, qs, 1.0f, &seed, &t[0]) || rand_tensor(be, 3, ks, 1.0f, &seed, &t[1]) ||
            rand_tensor(be, 3, ks, 1.0f, &seed, &t[2]) || rand_tensor(be, 3, qs, 0.0f, &seed, &t[3]))
            return -1;
        *work = 4.0 * B * H * Lq * Lk * D * (a[5] ? 0.5 : 1.0);
    } else if (!strcmp(op->kind, "gn")) {
        long N = a[0], C = a[1], H = a[2], W = a[3];
        int64_t xs[4] = {N, C, H, W}, cs[1] = {C};
        if (rand_tensor(be, 4, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 1, cs, 1.0f, &seed, &t[1]) ||
            rand_tensor(be, 1, cs, 0.1f, &seed, &t[2]) || rand_tensor(be, 4, xs, 0.0f, &seed, &t[3]))
            return -1;
        *work = 3.0 * N * C * H * W * 2; /* read twice, write once, f16 */
        *is_bytes = 1;
    } else if (!strcmp(op->kind, "ln")) {
        int64_t xs[2] = {a[0], a[1]}, cs[1] = {a[1]};
        if (rand_tensor(be, 2, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 1, cs, 1.0f, &seed, &t[1]) ||
            rand_tensor(be, 1, cs, 0.1f, &seed, &t[2]) || rand_tensor(be, 2, xs, 0.0f, &seed, &t[3]))
            return -1;
        *work = 2.0 * a[0] * a[1] * 2;
        *is_bytes = 1;
    } else if (!strcmp(op->kind, "ffgeglu")) {
        int64_t xs[2] = {a[0], a[1]}, ws[2] = {2 * a[2], a[1]}, bs[1] = {2 * a[2]}, ys[2] = {a[0], a[2]};
        if (rand_tensor(be, 2, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 2, ws, 0.05f, &seed, &t[1]) ||
            rand_tensor(be, 1, bs, 0.1f, &seed, &t[2]) || rand_tensor(be, 2, ys, 0.0f, &seed, &t[3]))
            return -1;
        *work = 2.0 * a[0] * a[1] * 2 * a[2];
    } else if (!strcmp(op->kind, "geglu")) {
        int64_t xs[2] = {a[0], 2 * a[1]}, ys[2] = {a[0], a[1]};
        if (rand_tensor(be, 2, xs, 1.0f, &seed, &t[0]) || rand_tensor(be, 2, ys, 0.0f, &seed, &t[3])) return -1;
        *work = 3.0 * a[0] * a[1] * 2;
        *is_bytes = 1;
    } else {
        fprintf(stderr, "unknown op kind %s\n", op->kind);
        return -1;
    }
    if (op->ln) { /* the LayerNorm's gamma, beta [K] and (unfused) its output [rows, K] */
        int64_t ks[1] = {a[1]}, xs[2] = {a[0], a[1]};
        if (rand_tensor(be, 1, ks, 1.0f, &seed, &t[4]) || rand_tensor(be, 1, ks, 0.1f, &seed, &t[5]) ||
            rand_tensor(be, 2, xs, 0.0f, &seed, &t[6]))
            return -1;
    }
    return 0;
}

static int time_op(loco_backend *be, const bench_op *op, int reps, const char *suffix) {
    loco_tensor t[MAX_T];
    double work;
    int is_bytes, rc = 0;
    loco_err err;
    if (setup(be, op, t, &work, &is_bytes) != 0) {
        rc = -1;
        goto done;
    }
    for (int i = 0; i < 3; i++)
        if (run_op(be, op, t, &err) != LOCO_OK) {
            fprintf(stderr, "%s: %s\n", op->name, err.msg);
            rc = -1;
            goto done;
        }
    if (loco_backend_sync(be, &err) != LOCO_OK) {
        fprintf(stderr, "%s: %s\n", op->name, err.msg);
        rc = -1;
        goto done;
    }
    double ms[5];
    for (int b = 0; b < 5; b++) {
        double t0 = now_ms();
        for (int i = 0; i < reps; i++) run_op(be, op, t, &err);
        if (loco_backend_sync(be, &err) != LOCO_OK) {
            fprintf(stderr, "%s: %s\n", op->name, err.msg);
            rc = -1;
            goto done;
        }
        ms[b] = (now_ms() - t0) / reps;
    }
    qsort(ms, 5, sizeof ms[0], cmp_double);
    printf("%s%s %.4f %.1f %s\n", op->name, suffix, ms[2], work / (ms[2] * 1e-3) / (is_bytes ? 1e9 : 1e12),
           is_bytes ? "GB/s" : "TFLOP/s");
    fflush(stdout);
done:
    for (int i = 0; i < MAX_T; i++) loco_tensor_free(&t[i]);
    return rc;
}

static loco_backend *cuda_backend(void) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CUDA;
    o.act_dtype = LOCO_F16;
    loco_backend *be = NULL;
    loco_err err;
    if (loco_backend_create(&o, &be, &err) != LOCO_OK) {
        fprintf(stderr, "op_bench: %s\n", err.msg);
        return NULL;
    }
    return be;
}

/* A backend created with some variables set ("VAR=value", at most FORCED_VARS), which it reads
 * once. */
#define FORCED_VARS 6
typedef struct forced_backend {
    const char *suffix; /* the rows' name suffix, "@route" */
    const char *env[FORCED_VARS + 1];
    loco_backend *be;
} forced_backend;

/* env: NULL-terminated, at most FORCED_VARS (a longer list is a programming error: the rows
 * would time a backend without the rest, as session 14's "_mc" rows would have). */
static loco_backend *forced_backend_create(const char *const *env) {
    char var[FORCED_VARS][64];
    int n = 0;
    while (env[n]) n++;
    if (n > FORCED_VARS) {
        fprintf(stderr, "op_bench: %d variables for one backend, at most %d\n", n, FORCED_VARS);
        return NULL;
    }
    for (n = 0; env[n]; n++) {
        const char *eq = strchr(env[n], '=');
        snprintf(var[n], sizeof var[n], "%.*s", (int)(eq - env[n]), env[n]);
        setenv(var[n], eq + 1, 1);
    }
    loco_backend *be = cuda_backend();
    for (int i = 0; i < n; i++) unsetenv(var[i]);
    return be;
}

/* One op line of ops.txt into op; 0 for comments and blank lines. */
static int parse_op(char *line, bench_op *op) {
    memset(op, 0, sizeof *op);
    char *s = line;
    while (*s == ' ' || *s == '\t') s++;
    if (*s == '#' || *s == '\n' || !*s) return 0;
    int used = 0;
    if (sscanf(s, "%15s %63s%n", op->kind, op->name, &used) != 2) return 0;
    s += used;
    while (op->na < 9) {
        char tok[32];
        if (sscanf(s, "%31s%n", tok, &used) != 1) break;
        s += used;
        if (!strcmp(op->kind, "linear") && op->na == 3)
            snprintf(op->act, sizeof op->act, "%.15s", tok);
        else
            op->a[op->na++] = atol(tok);
    }
    return 1;
}

/* A forced backend whose description lacks what its rows are named after would time something
 * else under that name (clusters the device cannot run, a fold whose GEMM form is off): it is
 * dropped and its rows skipped, said on stderr. */
static loco_backend *expect_route(loco_backend *be, const char *needle, const char *rows) {
    if (!be || strstr(loco_backend_describe(be), needle)) return be;
    fprintf(stderr, "op_bench: no %s rows: the backend is %s\n", rows, loco_backend_describe(be));
    loco_backend_destroy(be);
    return NULL;
}

/* "--wgmma": only the f16 conv rows on the experimental wgmma kernel ("name@wgmma"), in a
 * process of their own: a fault of a kernel that has never run would poison the CUDA context
 * and every later row of the main table. */
static int wgmma_rows(const char *path, int reps) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "op_bench: cannot open %s\n", path);
        return 2;
    }
    /* conv_wgmma.cu and attention_wgmma.cu where they apply (text rows too: attention_short.cu
     * off), the automatic routes elsewhere; the attention again with 128-key tiles, (head dims
     * 64 and 80) in blocks of three warpgroups, and warp-specialised (attention_wgmma_ws.cu) with
     * two and (64, 80) three warpgroups, and two with 128-key tiles */
    static const char *const wgmma_env[4] = {"LOCO_CUDA_CONV=wgmma", "LOCO_CUDA_FLASH=wgmma", "LOCO_CUDA_FLASH_SHORT=0",
                                            NULL};
    static const char *const wgmma128_env[3] = {"LOCO_CUDA_FLASH=wgmma128", "LOCO_CUDA_FLASH_SHORT=0", NULL};
    static const char *const wgmma3_env[3] = {"LOCO_CUDA_FLASH=wgmma3", "LOCO_CUDA_FLASH_SHORT=0", NULL};
    static const char *const ws_env[3] = {"LOCO_CUDA_FLASH=wgmma_ws", "LOCO_CUDA_FLASH_SHORT=0", NULL};
    static const char *const ws3_env[3] = {"LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_FLASH_SHORT=0", NULL};
    static const char *const ws128_env[3] = {"LOCO_CUDA_FLASH=wgmma_ws128", "LOCO_CUDA_FLASH_SHORT=0", NULL};
    static const char *const geglu_env[3] = {"LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma", NULL};
    static const char *const geglu_tma_env[4] = {"LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma",
                                                 "LOCO_CUDA_GEMM_WGMMA_LOAD=tma", NULL};
    static const char *const geglu_mc_env[5] = {"LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma",
                                                "LOCO_CUDA_GEMM_WGMMA_LOAD=tma", "LOCO_CUDA_GEMM_WGMMA_CLUSTER=2", NULL};
    static const char *const geglu_arrive_env[4] = {"LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma",
                                                    "LOCO_CUDA_GEMM_WGMMA_LOAD=arrive", NULL};
    static const char *const ws3_arrive_env[4] = {"LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_FLASH_SHORT=0",
                                                  "LOCO_CUDA_FLASH_LOAD=arrive", NULL};
    static const char *const ws128_arrive_env[4] = {"LOCO_CUDA_FLASH=wgmma_ws128", "LOCO_CUDA_FLASH_SHORT=0",
                                                    "LOCO_CUDA_FLASH_LOAD=arrive", NULL};
    static const char *const ws3_tma_env[4] = {"LOCO_CUDA_FLASH=wgmma_ws3", "LOCO_CUDA_FLASH_SHORT=0",
                                               "LOCO_CUDA_FLASH_LOAD=tma", NULL};
    static const char *const ws128_tma_env[4] = {"LOCO_CUDA_FLASH=wgmma_ws128", "LOCO_CUDA_FLASH_SHORT=0",
                                                 "LOCO_CUDA_FLASH_LOAD=tma", NULL};
    static const char *const ln_tma_env[5] = {"LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma",
                                              "LOCO_CUDA_GEMM_WGMMA_LOAD=tma", "LOCO_CUDA_LN_FOLD=1", NULL};
    static const char *const ln_mc_env[6] = {"LOCO_CUDA_GEGLU=wgmma", "LOCO_CUDA_LINEAR=wgmma",
                                             "LOCO_CUDA_GEMM_WGMMA_LOAD=tma", "LOCO_CUDA_GEMM_WGMMA_CLUSTER=2",
                                             "LOCO_CUDA_LN_FOLD=1", NULL};
    static const char *const conv_tma_env[2] = {"LOCO_CUDA_CONV=tma", NULL};
    static const char *const conv_tma_mc_env[3] = {"LOCO_CUDA_CONV=tma", "LOCO_CUDA_CONV_TMA_CLUSTER=2", NULL};
    int status = 0;
    loco_backend *be = forced_backend_create(wgmma_env);
    loco_backend *be128 = be ? forced_backend_create(wgmma128_env) : NULL;
    loco_backend *be3 = be128 ? forced_backend_create(wgmma3_env) : NULL;
    /* LOCO_OPBENCH_SKIP_WS=1 (gpu-check, after a warp-specialised test failed or hung): not those */
    const char *skip_ws_env = getenv("LOCO_OPBENCH_SKIP_WS");
    const int skip_ws = skip_ws_env && skip_ws_env[0] == '1';
    loco_backend *bews = be3 && !skip_ws ? forced_backend_create(ws_env) : NULL;
    loco_backend *bews3 = bews ? forced_backend_create(ws3_env) : NULL;
    loco_backend *bews128 = bews3 ? forced_backend_create(ws128_env) : NULL;
    /* gemm_wgmma.cu's GEGLU and linear forms; LOCO_OPBENCH_SKIP_GEGLU=1 (gpu-check, after one of
     * their tests failed): not those */
    const char *skip_geglu_env = getenv("LOCO_OPBENCH_SKIP_GEGLU");
    const int skip_geglu = skip_geglu_env && skip_geglu_env[0] == '1';
    loco_backend *begw = be3 && !skip_geglu ? forced_backend_create(geglu_env) : NULL;
    /* ... loading by TMA, and the attention so; LOCO_OPBENCH_SKIP_TMA=1: not those (their tests failed) */
    const char *skip_tma_env = getenv("LOCO_OPBENCH_SKIP_TMA");
    const int skip_tma = skip_tma_env && skip_tma_env[0] == '1';
    loco_backend *begwt = begw && !skip_tma ? forced_backend_create(geglu_tma_env) : NULL;
    loco_backend *bews3t = bews128 && !skip_tma ? forced_backend_create(ws3_tma_env) : NULL;
    loco_backend *bews128t = bews3t ? forced_backend_create(ws128_tma_env) : NULL;
    /* ... in clusters of two sharing w's tiles; LOCO_OPBENCH_SKIP_CLUSTER=1: not those (their tests failed) */
    const char *skip_mc_env = getenv("LOCO_OPBENCH_SKIP_CLUSTER");
    const int skip_mc = skip_mc_env && skip_mc_env[0] == '1';
    loco_backend *begwm = begwt && !skip_mc ? forced_backend_create(geglu_mc_env) : NULL;
    /* ... with the LayerNorm before them folded in (alone and in clusters); LOCO_OPBENCH_SKIP_LN=1:
     * not those (their tests failed) */
    const char *skip_ln_env = getenv("LOCO_OPBENCH_SKIP_LN");
    const int skip_ln = skip_ln_env && skip_ln_env[0] == '1';
    loco_backend *beln = begwt && !skip_ln ? forced_backend_create(ln_tma_env) : NULL;
    loco_backend *belnm = begwm && !skip_ln ? forced_backend_create(ln_mc_env) : NULL;
    /* ... and the producers that publish by cp.async.mbarrier.arrive (the attention's and the
     * GEMM's); LOCO_OPBENCH_SKIP_ARRIVE=1: not those (their tests failed) */
    const char *skip_arrive_env = getenv("LOCO_OPBENCH_SKIP_ARRIVE");
    const int skip_arrive = skip_arrive_env && skip_arrive_env[0] == '1';
    loco_backend *begwa = begw && !skip_arrive ? forced_backend_create(geglu_arrive_env) : NULL;
    loco_backend *bews3a = bews128 && !skip_arrive ? forced_backend_create(ws3_arrive_env) : NULL;
    loco_backend *bews128a = bews3a ? forced_backend_create(ws128_arrive_env) : NULL;
    /* conv_tma.cu; LOCO_OPBENCH_SKIP_CONV_TMA=1: not it (its test failed) */
    const char *skip_ct_env = getenv("LOCO_OPBENCH_SKIP_CONV_TMA");
    const int skip_ct = skip_ct_env && skip_ct_env[0] == '1';
    loco_backend *bect = be3 && !skip_ct ? forced_backend_create(conv_tma_env) : NULL;
    /* ... in clusters of two; LOCO_OPBENCH_SKIP_CONV_CLUSTER=1: not it (its test failed) */
    const char *skip_ctm_env = getenv("LOCO_OPBENCH_SKIP_CONV_CLUSTER");
    const int skip_ctm = skip_ctm_env && skip_ctm_env[0] == '1';
    loco_backend *bectm = bect && !skip_ctm ? forced_backend_create(conv_tma_mc_env) : NULL;
    if (!be || !be128 || !be3 || (!skip_geglu && !begw) || (begw && !skip_tma && !begwt) || (begwt && !skip_mc && !begwm) ||
        (begwt && !skip_ln && !beln) || (begwm && !skip_ln && !belnm) ||
        (!skip_ws && (!bews || !bews3 || !bews128)) || (begw && !skip_arrive && !begwa) ||
        (bews128 && !skip_arrive && !bews128a) || (bews128 && !skip_tma && !bews128t) || (!skip_ct && !bect) ||
        (bect && !skip_ctm && !bectm)) {
        status = 2; /* a backend the rows need could not be made */
        goto done;
    }
    begwm = expect_route(begwm, "clusters of 2", "\"_mc\" GEMM");
    bectm = expect_route(bectm, "clusters of 2", "\"@conv_tma_mc\"");
    beln = expect_route(beln, "LayerNorm folded", "\"@ln_*_tma\"");
    belnm = expect_route(expect_route(belnm, "clusters of 2", "\"@ln_*_mc\""), "LayerNorm folded", "\"@ln_*_mc\"");
    fprintf(stderr, "op_bench --wgmma on %s%s\n", loco_backend_describe(be),
            skip_ws ? " (warp-specialised attention skipped: LOCO_OPBENCH_SKIP_WS=1)" : "");
    char line[512];
    int failures = 0;
    bench_op op;
    while (fgets(line, sizeof line, f)) {
        if (!parse_op(line, &op)) continue;
        if (!strcmp(op.kind, "conv") && op.a[5] > 1 && time_op(be, &op, reps, "@wgmma") != 0) failures++;
        /* (where conv_tma.cu takes the shape: 3x3, stride 1, pad 1, Cin, Cout and W multiples of 64) */
        const int conv_tma = (!strcmp(op.kind, "conv") && op.a[5] == 3 && op.a[6] == 1 && op.a[7] == 1 &&
                              op.a[1] % 64 == 0 && op.a[4] % 64 == 0 && op.a[3] % 64 == 0) ||
                             (!strcmp(op.kind, "resconv") && op.a[1] % 64 == 0 && op.a[3] % 64 == 0);
        if (bect && conv_tma && time_op(bect, &op, reps, "@conv_tma") != 0) failures++;
        if (bectm && conv_tma && time_op(bectm, &op, reps, "@conv_tma_mc") != 0) failures++;
        const long d = !strcmp(op.kind, "attn") ? op.a[4] : !strcmp(op.kind, "selfattn") ? op.a[2] / op.a[3] : 0;
        if ((d == 40 || d == 64 || d == 80) && time_op(be, &op, reps, "@fa_wgmma") != 0) failures++;
        if ((d == 40 || d == 64 || d == 80) && time_op(be128, &op, reps, "@fa_wgmma128") != 0) failures++;
        if ((d == 64 || d == 80) && time_op(be3, &op, reps, "@fa_wgmma3") != 0) failures++;
        if (bews && (d == 40 || d == 64 || d == 80) && time_op(bews, &op, reps, "@fa_wgmma_ws") != 0) failures++;
        if (bews3 && (d == 64 || d == 80) && time_op(bews3, &op, reps, "@fa_wgmma_ws3") != 0) failures++;
        if (bews128 && (d == 40 || d == 64 || d == 80) && time_op(bews128, &op, reps, "@fa_wgmma_ws128") != 0)
            failures++;
        if (bews3a && (d == 64 || d == 80) && time_op(bews3a, &op, reps, "@fa_wgmma_ws3_arrive") != 0) failures++;
        if (bews128a && (d == 40 || d == 64 || d == 80) && time_op(bews128a, &op, reps, "@fa_wgmma_ws128_arrive") != 0)
            failures++;
        if (bews3t && d == 64 && time_op(bews3t, &op, reps, "@fa_wgmma_ws3_tma") != 0) failures++;
        if (bews128t && d == 64 && time_op(bews128t, &op, reps, "@fa_wgmma_ws128_tma") != 0) failures++;
        if (begw && !strcmp(op.kind, "ffgeglu") && time_op(begw, &op, reps, "@geglu_wgmma") != 0) failures++;
        if (begwt && !strcmp(op.kind, "ffgeglu") && time_op(begwt, &op, reps, "@geglu_wgmma_tma") != 0) failures++;
        if (begwa && !strcmp(op.kind, "ffgeglu") && time_op(begwa, &op, reps, "@geglu_wgmma_arrive") != 0) failures++;
        if (begwm && !strcmp(op.kind, "ffgeglu") && time_op(begwm, &op, reps, "@geglu_wgmma_mc") != 0) failures++;
        /* (where the kernel takes the shape, gemm_wgmma.cu's gw_plan_make: elsewhere the row would
         * time cuBLASLt again; by TMA also N not a multiple of 256, the last tile at most a fifth
         * of N empty) */
        const long K = op.a[1], N = op.a[2], empty = (256 - N % 256) % 256;
        const int gw_linear_any = !strcmp(op.kind, "linear") && !strcmp(op.act, "none") && K % 64 == 0;
        const int gw_linear = gw_linear_any && N % 256 == 0;
        const int gw_linear_tma = gw_linear_any && N % 8 == 0 && N >= 256 && 5 * empty <= N;
        if (begw && gw_linear && time_op(begw, &op, reps, "@linear_wgmma") != 0) failures++;
        if (begwt && gw_linear_tma && time_op(begwt, &op, reps, "@linear_wgmma_tma") != 0) failures++;
        if (begwa && gw_linear && time_op(begwa, &op, reps, "@linear_wgmma_arrive") != 0) failures++;
        if (begwm && gw_linear_tma && time_op(begwm, &op, reps, "@linear_wgmma_mc") != 0) failures++;
        /* the same GEMMs on LayerNorm(x): folded (loco_ln_linear) and, on the same backend,
         * loco_layer_norm then the GEMM, so the pair of rows is the fold's gain */
        if (!strcmp(op.kind, "ffgeglu") || gw_linear_tma) {
            bench_op lo = op, lu = op;
            lo.ln = lu.ln = lu.unfused = 1;
            if (beln && time_op(beln, &lo, reps, "@ln_fold_tma") != 0) failures++;
            if (beln && time_op(beln, &lu, reps, "@ln_unfused_tma") != 0) failures++;
            if (belnm && time_op(belnm, &lo, reps, "@ln_fold_mc") != 0) failures++;
            if (belnm && time_op(belnm, &lu, reps, "@ln_unfused_mc") != 0) failures++;
        }
    }
    status = failures ? 1 : 0;
done:
    loco_backend_destroy(bectm);
    loco_backend_destroy(bect);
    loco_backend_destroy(bews128t);
    loco_backend_destroy(bews3t);
    loco_backend_destroy(bews128a);
    loco_backend_destroy(bews3a);
    loco_backend_destroy(begwa);
    loco_backend_destroy(belnm);
    loco_backend_destroy(beln);
    loco_backend_destroy(begwm);
    loco_backend_destroy(begwt);
    loco_backend_destroy(begw);
    loco_backend_destroy(bews128);
    loco_backend_destroy(bews3);
    loco_backend_destroy(bews);
    loco_backend_destroy(be3);
    loco_backend_destroy(be128);
    loco_backend_destroy(be);
    fclose(f);
    return status;
}

/* "--cudnn": the rows cuDNN takes, in a process of their own: the attention rows its fused SDPA
 * takes (LOCO_CUDA_FLASH=cudnn: self-attention, more than 80 keys, head dims multiples of 8) as
 * "name@fa_cudnn", and the conv rows whose kernel is not 1x1 and the resconv rows on cuDNN's
 * convolutions (LOCO_CUDA_CONV=cudnn) as "name@conv_cudnn". Strict: a shape cuDNN has no plan for
 * is a failed row, not our kernel timed under its name. Without a route (no libcudnn.so.9, or,
 * for the attention, one before 9.13.1) it says why and times none of its rows. */
static int cudnn_rows(const char *path, int reps) {
    static const char *const fa_env[3] = {"LOCO_CUDA_FLASH=cudnn", "LOCO_CUDA_CUDNN_STRICT=1", NULL};
    static const char *const conv_env[3] = {"LOCO_CUDA_CONV=cudnn", "LOCO_CUDA_CUDNN_STRICT=1", NULL};
    loco_backend *fa = expect_route(forced_backend_create(fa_env), "SDPA where it applies", "\"@fa_cudnn\"");
    loco_backend *conv = expect_route(forced_backend_create(conv_env), "that are not 1x1", "\"@conv_cudnn\"");
    if (!fa && !conv) return 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "op_bench: cannot open %s\n", path);
        loco_backend_destroy(fa);
        loco_backend_destroy(conv);
        return 2;
    }
    if (fa) fprintf(stderr, "op_bench --cudnn on %s\n", loco_backend_describe(fa));
    if (conv) fprintf(stderr, "op_bench --cudnn on %s\n", loco_backend_describe(conv));
    char line[512];
    int failures = 0;
    bench_op op;
    while (fgets(line, sizeof line, f)) {
        if (!parse_op(line, &op)) continue;
        const int self = !strcmp(op.kind, "selfattn"), attn = !strcmp(op.kind, "attn");
        const long d = attn ? op.a[4] : self ? op.a[2] / op.a[3] : 0;
        const int fa_row = (self || (attn && op.a[2] > 80 && !op.a[5])) && d % 8 == 0 && d <= 256;
        const int conv_row = ((!strcmp(op.kind, "conv") || !strcmp(op.kind, "conv32")) && op.a[5] > 1) ||
                             !strcmp(op.kind, "resconv");
        if (fa && fa_row && time_op(fa, &op, reps, "@fa_cudnn") != 0) failures++;
        if (conv && conv_row && time_op(conv, &op, reps, "@conv_cudnn") != 0) failures++;
    }
    fclose(f);
    loco_backend_destroy(fa);
    loco_backend_destroy(conv);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    const char *path = argc > 1 ? argv[1] : "bench/gpu/ops.txt";
    int reps = argc > 2 ? atoi(argv[2]) : 10;
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "op_bench: cannot open %s\n", path);
        return 2;
    }
    if (argc > 3 && !strcmp(argv[3], "--wgmma")) {
        fclose(f);
        return wgmma_rows(path, reps);
    }
    if (argc > 3 && !strcmp(argv[3], "--cudnn")) {
        fclose(f);
        return cudnn_rows(path, reps);
    }
    /* the backends rows are also timed on: a forced route or variant each, from its environment
     * (read once, when a backend is created) */
    enum { IMPLICIT, GENERIC, IM2COL, IM2COL_32M, IM2COL_96M, IM2COL_OV, ROWS, ROWS_OV, TUNED, FA64, FA128, CLASSIC,
           STAGES3, ILP3, ILP3Q, SHORT_OFF, N_FORCED };
    forced_backend forced[N_FORCED] = {
        [IMPLICIT] = {"@implicit", {"LOCO_CUDA_CONV=implicit"}, NULL},
        [GENERIC] = {"@implicit_generic", {"LOCO_CUDA_CONV=implicit", "LOCO_CUDA_IGEMM_ROWS=0"}, NULL},
        [IM2COL] = {"@im2col", {"LOCO_CUDA_CONV=im2col"}, NULL},
        /* im2col chunks that stay in L2 (H100/H200: 50 MB) or about twice that, against the
         * default 256 MiB: whether the GEMM reading a cached buffer beats fewer, larger GEMMs */
        [IM2COL_32M] = {"@im2col_32m", {"LOCO_CUDA_CONV=im2col", "LOCO_CUDA_IM2COL_KB=32768"}, NULL},
        [IM2COL_96M] = {"@im2col_96m", {"LOCO_CUDA_CONV=im2col", "LOCO_CUDA_IM2COL_KB=98304"}, NULL},
        [IM2COL_OV] = {"@im2col_overlap", {"LOCO_CUDA_CONV=im2col", "LOCO_CUDA_IM2COL_OVERLAP=1"}, NULL},
        [ROWS] = {"@rows", {"LOCO_CUDA_CONV=rows"}, NULL},
        [ROWS_OV] = {"@rows_overlap", {"LOCO_CUDA_CONV=rows", "LOCO_CUDA_IM2COL_OVERLAP=1"}, NULL},
        [TUNED] = {"@tuned", {"LOCO_CUDA_GEMM_TUNE=1"}, NULL}, /* cuBLASLt's top candidates timed per shape */
        /* the flash kernel's forms, on text rows too (attention_short.cu off) */
        [FA64] = {"@fa64", {"LOCO_CUDA_FLASH=64", "LOCO_CUDA_FLASH_SHORT=0"}, NULL},
        [FA128] = {"@fa128", {"LOCO_CUDA_FLASH=128", "LOCO_CUDA_FLASH_SHORT=0"}, NULL},
        [CLASSIC] = {"@fa_classic", {"LOCO_CUDA_FLASH=classic", "LOCO_CUDA_FLASH_SHORT=0"}, NULL},
        [STAGES3] = {"@fa_stages3", {"LOCO_CUDA_FLASH=stages3", "LOCO_CUDA_FLASH_SHORT=0"}, NULL},
        [ILP3] = {"@fa_ilp3", {"LOCO_CUDA_FLASH=ilp3", "LOCO_CUDA_FLASH_SHORT=0"}, NULL},
        /* ilp3 with Q read from shared memory, three blocks per SM (session 9, not yet timed) */
        [ILP3Q] = {"@fa_ilp3q", {"LOCO_CUDA_FLASH=ilp3q", "LOCO_CUDA_FLASH_SHORT=0"}, NULL},
        /* text attention (at most 80 keys) on the flash kernel instead of attention_short.cu */
        [SHORT_OFF] = {"@short_off", {"LOCO_CUDA_FLASH_SHORT=0"}, NULL},
    };
    loco_backend *be = cuda_backend();
    int ok = be != NULL;
    for (int i = 0; i < N_FORCED && ok; i++) ok = (forced[i].be = forced_backend_create(forced[i].env)) != NULL;
    if (!ok) {
        for (int i = 0; i < N_FORCED; i++) loco_backend_destroy(forced[i].be);
        loco_backend_destroy(be);
        fclose(f);
        return 2;
    }
    fprintf(stderr, "op_bench on %s\n", loco_backend_describe(be));
    char line[512];
    int failures = 0;
    bench_op op;
#define TIME_ON(i) (time_op(forced[i].be, &op, reps, forced[i].suffix) != 0 ? failures++ : 0)
    while (fgets(line, sizeof line, f)) {
        if (!parse_op(line, &op)) continue;
        if (time_op(be, &op, reps, "") != 0) failures++;
        if ((!strcmp(op.kind, "conv") || !strcmp(op.kind, "conv32")) && op.a[5] > 1) {
            TIME_ON(IMPLICIT);
            if (!strcmp(op.kind, "conv")) TIME_ON(GENERIC);
            TIME_ON(IM2COL);
            TIME_ON(ROWS);
            TIME_ON(ROWS_OV);
            if (op.a[0] >= 4) { /* batches whose default chunk holds several samples */
                TIME_ON(IM2COL_32M);
                TIME_ON(IM2COL_96M);
                TIME_ON(IM2COL_OV);
                TIME_ON(TUNED);
            }
        }
        if (!strcmp(op.kind, "linear")) TIME_ON(TUNED);
        if (!strcmp(op.kind, "resconv")) {
            op.unfused = 1;
            if (time_op(be, &op, reps, "@unfused") != 0) failures++;
        }
        if (!strcmp(op.kind, "proj") || !strcmp(op.kind, "temb")) {
            op.unfused = 1;
            if (time_op(be, &op, reps, "@unfused") != 0) failures++;
        }
        if (!strcmp(op.kind, "selfattn")) {
            TIME_ON(CLASSIC);
            TIME_ON(STAGES3);
            TIME_ON(ILP3);
            TIME_ON(ILP3Q);
            op.unfused = 1;
            if (time_op(be, &op, reps, "@apart") != 0) failures++;
        }
        if (!strcmp(op.kind, "attn") && (op.a[4] == 40 || op.a[4] == 64 || op.a[4] == 80)) {
            TIME_ON(FA64);
            TIME_ON(FA128);
            TIME_ON(CLASSIC);
            TIME_ON(STAGES3);
            TIME_ON(ILP3);
            TIME_ON(ILP3Q);
        }
        if (!strcmp(op.kind, "attn") && op.a[2] <= 80 &&
            (op.a[4] == 40 || op.a[4] == 64 || op.a[4] == 80 || op.a[4] == 160))
            TIME_ON(SHORT_OFF);
    }
#undef TIME_ON
    fclose(f);
    for (int i = 0; i < N_FORCED; i++) loco_backend_destroy(forced[i].be);
    loco_backend_destroy(be);
    return failures ? 1 : 0;
}
