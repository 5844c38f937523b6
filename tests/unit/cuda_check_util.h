/* cuda_check_util.h: the op checks the GPU test files share (test_cuda_ops.c for the default
 * paths, test_cuda_optin.c for the opt-in and experimental ones): each runs one op on the CPU
 * and the CUDA backend (created under the current LOCO_CUDA_* environment) and compares. */
#ifndef LOCO_CUDA_CHECK_UTIL_H
#define LOCO_CUDA_CHECK_UTIL_H

#include "cuda_test_util.h"

/* act < 0: loco_linear_accumulate (y += x w^T + b, the add in the GEMM: cuBLASLt beta = 1)
 * against the CPU's linear + add, y starting as a residual with an offset, as hidden states;
 * -1 after a plain linear of the same shape (whose cuBLASLt plan then serves the accumulating
 * call), -2 with the accumulating call first (it builds the plan). */
static inline int check_linear(loco_dtype dt, int64_t M0, int64_t M1, int64_t K, int64_t N, int with_bias, int act,
                               uint64_t seed) {
    char why[1100];
    genv e;
    if (genv_open(&e, dt, seed, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    int64_t xs[3] = {M0, M1, K}, ws[2] = {N, K}, bs[1] = {N}, ys[3] = {M0, M1, N};
    twin x, w, b, y;
    const char *what = act < 0 ? "linear_accumulate" : "linear";
    int ok = twin_rand(&e, 3, xs, 1.0f, 0.0f, &x) && twin_rand(&e, 2, ws, 1.0f / sqrtf((float)K), 0.0f, &w) &&
             twin_rand(&e, 1, bs, 0.5f, 0.0f, &b) &&
             (act < 0 ? twin_rand(&e, 3, ys, 1.0f, 3.0f, &y) : twin_out(&e, 3, ys, &y));
    const loco_tensor *bc = with_bias ? &b.c : NULL, *bg = with_bias ? &b.g : NULL;
    if (act < 0) {
        if (act == -1) { /* a plain linear of the same shape first */
            twin t;
            memset(&t, 0, sizeof t);
            ok = ok && twin_out(&e, 3, ys, &t);
            ok = ok && both_ok(&e, LOCO_OK, loco_linear(e.gpu, &t.g, &x.g, &w.g, bg, LOCO_ACT_NONE, &e.errg),
                               "linear");
            twin_free(&t);
        }
        ok = ok && both_ok(&e, loco_linear_accumulate(e.cpu, &y.c, &x.c, &w.c, bc, &e.errc),
                           loco_linear_accumulate(e.gpu, &y.g, &x.g, &w.g, bg, &e.errg), what);
    }
    else
        ok = ok && both_ok(&e, loco_linear(e.cpu, &y.c, &x.c, &w.c, bc, (loco_act)act, &e.errc),
                           loco_linear(e.gpu, &y.g, &x.g, &w.g, bg, (loco_act)act, &e.errg), what);
    ok = ok && twin_close(&y, tol_for(dt), what);
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&y);
    genv_close(&e);
    return ok;
}

/* The description of a GPU backend created under the current environment (the LOCO_CUDA_*
 * variables are read at creation): which routes a test's backends really take. */
static inline int gpu_describe(char *out, size_t n) {
    char why[1100];
    genv d;
    if (genv_open(&d, LOCO_F16, 1, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    snprintf(out, n, "%s", loco_backend_describe(d.gpu));
    genv_close(&d);
    return 1;
}

/* That description mentions `needle` (printed when it does not). */
static inline int gpu_describe_has(const char *needle) {
    char desc[512];
    if (!gpu_describe(desc, sizeof desc)) return 0;
    if (strstr(desc, needle)) return 1;
    fprintf(stderr, "'%s' is not in: %s\n", needle, desc);
    return 0;
}

/* algo: "implicit" or "im2col" forces that route (LOCO_CUDA_CONV, read when the backend is
 * created), NULL lets the backend choose. */
static inline int check_conv(const char *algo, loco_dtype dt, int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout,
                             int64_t kh, int64_t kw, int stride, int pt, int pb, int pl, int pr, int with_bias,
                             uint64_t seed) {
    char why[1100];
    genv e;
    if (algo)
        setenv("LOCO_CUDA_CONV", algo, 1);
    else
        unsetenv("LOCO_CUDA_CONV");
    int opened = genv_open(&e, dt, seed, why, sizeof why);
    unsetenv("LOCO_CUDA_CONV");
    if (opened != 1) return fprintf(stderr, "%s\n", why), 0;
    loco_conv2d_params p = {stride, {pt, pb, pl, pr}};
    int64_t Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1;
    int64_t xs[4] = {N, Cin, H, W}, ws[4] = {Cout, Cin, kh, kw}, bs[1] = {Cout}, ys[4] = {N, Cout, Ho, Wo};
    twin x, w, b, y, y2;
    int ok = twin_rand(&e, 4, xs, 1.0f, 0.0f, &x) &&
             twin_rand(&e, 4, ws, 1.0f / sqrtf((float)(Cin * kh * kw)), 0.0f, &w) &&
             twin_rand(&e, 1, bs, 0.5f, 0.0f, &b) && twin_out(&e, 4, ys, &y) && twin_out(&e, 4, ys, &y2);
    ok = ok && both_ok(&e, loco_conv2d(e.cpu, &y.c, &x.c, &w.c, with_bias ? &b.c : NULL, &p, &e.errc),
                       loco_conv2d(e.gpu, &y.g, &x.g, &w.g, with_bias ? &b.g : NULL, &p, &e.errg), "conv2d");
    ok = ok && both_ok(&e, LOCO_OK, loco_conv2d(e.gpu, &y2.g, &x.g, &w.g, with_bias ? &b.g : NULL, &p, &e.errg),
                       "conv2d (again)");
    ok = ok && twin_close(&y, tol_for(dt), "conv2d") && same_bits(&y.g, &y2.g, "conv2d");
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&y), twin_free(&y2);
    genv_close(&e);
    return ok;
}

/* ---- conv2d with GroupNorm prologue, per-sample bias and residual (loco_conv2d_fused) ---- */

typedef struct fused_case {
    const char *algo; /* LOCO_CUDA_CONV, NULL for auto */
    loco_dtype dt;
    int64_t N, Cin, H, W, Cout, k;
    int groups, silu, sample_bias, residual, bias;
} fused_case;

/* The unfused calls on the GPU, the reference for the fused prologue's bits. */
static inline loco_status gpu_unfused(genv *e, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *b, const loco_conv2d_params *p,
                                      const loco_conv2d_fusion *f) {
    loco_tensor n = {0};
    loco_status st = LOCO_OK;
    if (f->norm_gamma) {
        st = loco_tensor_alloc(e->gpu, x->dtype, 4, x->shape, &n, &e->errg);
        if (st == LOCO_OK)
            st = loco_group_norm(e->gpu, &n, x, f->norm_groups, f->norm_gamma, f->norm_beta, f->norm_eps,
                                 f->norm_silu, &e->errg);
    }
    if (st == LOCO_OK) st = loco_conv2d(e->gpu, y, f->norm_gamma ? &n : x, w, b, p, &e->errg);
    if (st == LOCO_OK && f->sample_bias) st = loco_add_channel_bias(e->gpu, y, y, f->sample_bias, &e->errg);
    if (st == LOCO_OK && f->residual) st = loco_add(e->gpu, y, f->residual, y, &e->errg);
    loco_tensor_free(&n);
    return st;
}

/* Fused on the GPU vs the unfused calls on the CPU (tolerance), twice (same bits); the unfused
 * calls on the GPU vs the CPU too (tolerance); and, with a GroupNorm, the fused call with only
 * the GroupNorm (and the conv bias) vs the unfused GPU calls doing the same: the same bits,
 * since the gather normalises with loco_group_norm's own (scale, shift) and expression. */
static inline int check_conv_fused_at(const fused_case *fc, uint64_t seed, int64_t residual_offset) {
    char why[1100];
    genv e;
    if (fc->algo)
        setenv("LOCO_CUDA_CONV", fc->algo, 1);
    else
        unsetenv("LOCO_CUDA_CONV");
    int opened = genv_open(&e, fc->dt, seed, why, sizeof why);
    unsetenv("LOCO_CUDA_CONV");
    if (opened != 1) return fprintf(stderr, "%s\n", why), 0;
    const int pad = (int)(fc->k / 2);
    loco_conv2d_params p = {1, {pad, pad, pad, pad}};
    int64_t xs[4] = {fc->N, fc->Cin, fc->H, fc->W}, ws[4] = {fc->Cout, fc->Cin, fc->k, fc->k}, cs[1] = {fc->Cin},
            bs[1] = {fc->Cout}, sbs[2] = {fc->N, fc->Cout}, ys[4] = {fc->N, fc->Cout, fc->H, fc->W};
    twin x, w, b, g, be, sb, r, rbig, y, y2, yu, yn, ynu;
    memset(&sb, 0, sizeof sb);
    memset(&r, 0, sizeof r);
    memset(&rbig, 0, sizeof rbig);
    const int64_t rbig_n[1] = {fc->N * fc->Cout * fc->H * fc->W + residual_offset};
    int ok = twin_rand(&e, 4, xs, 2.0f, 0.5f, &x) &&
             twin_rand(&e, 4, ws, 1.0f / sqrtf((float)(fc->Cin * fc->k * fc->k)), 0.0f, &w) &&
             twin_rand(&e, 1, bs, 0.5f, 0.0f, &b) && twin_rand(&e, 1, cs, 0.5f, 1.0f, &g) &&
             twin_rand(&e, 1, cs, 0.5f, 0.0f, &be) && (!fc->sample_bias || twin_rand(&e, 2, sbs, 1.0f, 0.0f, &sb)) &&
             (!fc->residual || residual_offset > 0 || twin_rand(&e, 4, ys, 1.0f, 0.0f, &r)) &&
             (!fc->residual || residual_offset == 0 ||
              (twin_rand(&e, 1, rbig_n, 1.0f, 0.0f, &rbig) &&
               loco_tensor_view(&rbig.c, residual_offset, 4, ys, &r.c, &e.errc) == LOCO_OK &&
               loco_tensor_view(&rbig.g, residual_offset, 4, ys, &r.g, &e.errg) == LOCO_OK)) &&
             twin_out(&e, 4, ys, &y) &&
             twin_out(&e, 4, ys, &y2) && twin_out(&e, 4, ys, &yu) && twin_out(&e, 4, ys, &yn) &&
             twin_out(&e, 4, ys, &ynu);
    loco_conv2d_fusion fcpu, fgpu;
    loco_conv2d_fusion_init(&fcpu);
    if (fc->groups > 0) fcpu.norm_groups = fc->groups;
    fcpu.norm_silu = fc->silu;
    fgpu = fcpu;
    if (fc->groups > 0) fcpu.norm_gamma = &g.c, fcpu.norm_beta = &be.c, fgpu.norm_gamma = &g.g, fgpu.norm_beta = &be.g;
    loco_conv2d_fusion fnorm = fgpu; /* the GroupNorm alone */
    if (fc->sample_bias) fcpu.sample_bias = &sb.c, fgpu.sample_bias = &sb.g;
    if (fc->residual) fcpu.residual = &r.c, fgpu.residual = &r.g;
    const loco_tensor *bc = fc->bias ? &b.c : NULL, *bg = fc->bias ? &b.g : NULL;
    ok = ok && both_ok(&e, loco_conv2d_fused(e.cpu, &y.c, &x.c, &w.c, bc, &p, &fcpu, &e.errc),
                       loco_conv2d_fused(e.gpu, &y.g, &x.g, &w.g, bg, &p, &fgpu, &e.errg), "conv2d_fused");
    ok = ok && both_ok(&e, LOCO_OK, loco_conv2d_fused(e.gpu, &y2.g, &x.g, &w.g, bg, &p, &fgpu, &e.errg),
                       "conv2d_fused (again)");
    ok = ok && both_ok(&e, LOCO_OK, gpu_unfused(&e, &yu.g, &x.g, &w.g, bg, &p, &fgpu), "conv2d unfused");
    ok = ok && twin_close(&y, tol_for(fc->dt), "conv2d_fused") && same_bits(&y.g, &y2.g, "conv2d_fused");
    const twin unfused_vs_cpu = {y.c, yu.g};
    ok = ok && twin_close(&unfused_vs_cpu, tol_for(fc->dt), "conv2d unfused");
    if (ok && fc->groups > 0) {
        ok = both_ok(&e, LOCO_OK, loco_conv2d_fused(e.gpu, &yn.g, &x.g, &w.g, bg, &p, &fnorm, &e.errg),
                     "conv2d_fused (GroupNorm only)") &&
             both_ok(&e, LOCO_OK, gpu_unfused(&e, &ynu.g, &x.g, &w.g, bg, &p, &fnorm), "unfused (GroupNorm only)") &&
             same_bits(&yn.g, &ynu.g, "conv2d_fused with only the GroupNorm vs group_norm + conv2d on the GPU");
    }
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&g), twin_free(&be), twin_free(&y), twin_free(&y2);
    twin_free(&yu), twin_free(&yn), twin_free(&ynu);
    if (fc->sample_bias) twin_free(&sb);
    if (fc->residual && residual_offset == 0) twin_free(&r);
    if (residual_offset > 0) twin_free(&rbig);
    genv_close(&e);
    return ok;
}

/* check_conv_fused_at with the residual a tensor of its own (residual_offset > 0: a view that
 * many elements into a larger one). */
static inline int check_conv_fused(const fused_case *fc, uint64_t seed) { return check_conv_fused_at(fc, seed, 0); }

static inline int check_attention_view(loco_dtype dt, int64_t B, int64_t Bk, int64_t Lq, int64_t Lk, int H, int64_t D,
                                       int causal, const int *kv, int64_t q_offset, uint64_t seed) {
    char why[1100];
    genv e;
    if (genv_open(&e, dt, seed, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    int64_t qs[3] = {B, Lq, H * D}, ks[3] = {Bk, Lk, H * D}, qbig[1] = {B * Lq * H * D + q_offset};
    twin qb, k, v, o, o2;
    int ok = twin_rand(&e, 1, qbig, 1.5f, 0.0f, &qb) && twin_rand(&e, 3, ks, 1.5f, 0.0f, &k) &&
             twin_rand(&e, 3, ks, 1.0f, 0.0f, &v) && twin_out(&e, 3, qs, &o) && twin_out(&e, 3, qs, &o2);
    /* q as a view q_offset elements into a bigger tensor: misaligned views take the general path */
    twin q;
    ok = ok && loco_tensor_view(&qb.c, q_offset, 3, qs, &q.c, &e.errc) == LOCO_OK &&
         loco_tensor_view(&qb.g, q_offset, 3, qs, &q.g, &e.errg) == LOCO_OK;
    loco_attention_params p = {H, 1.0f / sqrtf((float)D), causal, kv, 0};
    ok = ok && both_ok(&e, loco_attention(e.cpu, &o.c, &q.c, &k.c, &v.c, &p, &e.errc),
                       loco_attention(e.gpu, &o.g, &q.g, &k.g, &v.g, &p, &e.errg), "attention");
    ok = ok && both_ok(&e, LOCO_OK, loco_attention(e.gpu, &o2.g, &q.g, &k.g, &v.g, &p, &e.errg), "attention again");
    char what[96];
    snprintf(what, sizeof what, "attention D=%lld Lq=%lld Lk=%lld%s", (long long)D, (long long)Lq, (long long)Lk,
             causal ? " causal" : "");
    ok = ok && twin_close(&o, tol_for(dt), what) && same_bits(&o.g, &o2.g, what);
    twin_free(&qb), twin_free(&k), twin_free(&v), twin_free(&o), twin_free(&o2);
    genv_close(&e);
    return ok;
}

static inline int check_attention(loco_dtype dt, int64_t B, int64_t Bk, int64_t Lq, int64_t Lk, int H, int64_t D,
                                  int causal, const int *kv, uint64_t seed) {
    return check_attention_view(dt, B, Bk, Lq, Lk, H, D, causal, kv, 0, seed);
}

/* Self-attention on packed q|k|v rows ([B, L, 3 H D], a stacked projection's output) on both
 * backends, and on the GPU once more with q, k and v apart (the same values). Where a flash
 * kernel runs (f16/bf16, head dim 40/64/80/160) only the strides differ between the two GPU
 * calls, so their results must be bit-identical; the general path's GEMMs may choose other
 * algorithms for other strides and are compared with the CPU instead. */
static inline int check_attention_packed(loco_dtype dt, int64_t B, int64_t L, int H, int64_t D, const int *kv,
                                         uint64_t seed) {
    char why[1100];
    genv e;
    if (genv_open(&e, dt, seed, why, sizeof why) != 1) return fprintf(stderr, "%s\n", why), 0;
    const int64_t HD = H * D, rows = B * L;
    int64_t ps[3] = {B, L, 3 * HD}, qs[3] = {B, L, HD};
    float *h = rand_buf(&e.r, (size_t)(rows * 3 * HD), 1.5f, 0.0f);
    float *part[3] = {malloc((size_t)(rows * HD) * sizeof(float)), malloc((size_t)(rows * HD) * sizeof(float)),
                      malloc((size_t)(rows * HD) * sizeof(float))};
    twin qkv, t[3], o, o2;
    memset(t, 0, sizeof t);
    int ok = part[0] && part[1] && part[2] && twin_up(&e, 3, ps, h, &qkv); /* rounds h in place */
    for (int i = 0; ok && i < 3; i++) {
        for (int64_t r = 0; r < rows; r++) memcpy(part[i] + r * HD, h + (r * 3 + i) * HD, (size_t)HD * sizeof(float));
        ok = twin_up(&e, 3, qs, part[i], &t[i]);
    }
    ok = ok && twin_out(&e, 3, qs, &o) && twin_out(&e, 3, qs, &o2);
    loco_attention_params pp = {H, 1.0f / sqrtf((float)D), 0, kv, 1}, pu = pp;
    pu.qkv_packed = 0;
    ok = ok && both_ok(&e, loco_attention(e.cpu, &o.c, &qkv.c, NULL, NULL, &pp, &e.errc),
                       loco_attention(e.gpu, &o.g, &qkv.g, NULL, NULL, &pp, &e.errg), "attention (packed)");
    ok = ok && both_ok(&e, loco_attention(e.cpu, &o2.c, &t[0].c, &t[1].c, &t[2].c, &pu, &e.errc),
                       loco_attention(e.gpu, &o2.g, &t[0].g, &t[1].g, &t[2].g, &pu, &e.errg), "attention (apart)");
    char what[96];
    snprintf(what, sizeof what, "packed attention D=%lld L=%lld", (long long)D, (long long)L);
    const int flash = dt != LOCO_F32 && (D == 40 || D == 64 || D == 80 || D == 160);
    ok = ok && twin_close(&o, tol_for(dt), what) && twin_close(&o2, tol_for(dt), what) &&
         (!flash || same_bits(&o.g, &o2.g, what));
    twin_free(&qkv), twin_free(&t[0]), twin_free(&t[1]), twin_free(&t[2]), twin_free(&o), twin_free(&o2);
    free(h), free(part[0]), free(part[1]), free(part[2]);
    genv_close(&e);
    return ok;
}

#endif
