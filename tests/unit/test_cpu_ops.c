/* test_cpu_ops.c: the CPU backend's compute ops (linear, conv2d, group/layer norm,
 * attention) against naive double-precision references on random inputs, relative error
 * <= 1e-5. Sizes are odd and chosen to cross the backend's internal tile boundaries (row and
 * column tiles of linear, column and channel blocks of conv, query tiles of attention). */
#include "cpu_test_util.h"
#include "loco_test.h"

/* ---- linear ----------------------------------------------------------------------------------- */

static int check_linear(int64_t M0, int64_t M1, int64_t K, int64_t N, int with_bias, loco_act act, int threads,
                        uint64_t seed) {
    loco_backend *be = cpu_backend(threads);
    if (!be) return 0;
    trng r = {seed};
    int64_t xs[3] = {M0, M1, K}, ws[2] = {N, K}, bs[1] = {N}, ys[3] = {M0, M1, N};
    loco_tensor x, w, b, y;
    float *hx, *hw, *hb;
    rand_tensor(be, &r, 3, xs, 1.0f, 0.0f, &x, &hx);
    rand_tensor(be, &r, 2, ws, 0.3f, 0.0f, &w, &hw);
    rand_tensor(be, &r, 1, bs, 0.5f, 0.0f, &b, &hb);
    make_tensor(be, 3, ys, NULL, &y);
    loco_err err;
    loco_status st = loco_linear(be, &y, &x, &w, with_bias ? &b : NULL, act, &err);
    size_t M = (size_t)(M0 * M1);
    double *ref = malloc((M * N + 1) * sizeof(double));
    for (size_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = with_bias ? hb[n] : 0.0;
            for (int64_t k = 0; k < K; k++) s += (double)hx[m * K + k] * hw[n * K + k];
            ref[m * N + n] = ref_act(s, act);
        }
    int ok = st == LOCO_OK && matches(&y, ref, OP_TOL, "linear");
    if (st != LOCO_OK) fprintf(stderr, "linear: %s\n", err.msg);
    free(ref), free(hx), free(hw), free(hb);
    loco_tensor_free(&x), loco_tensor_free(&w), loco_tensor_free(&b), loco_tensor_free(&y);
    loco_backend_destroy(be);
    return ok;
}

TEST(linear_every_activation) {
    for (int a = 0; a < LOCO_ACT_COUNT; a++) CHECK_MSG(check_linear(2, 5, 37, 19, 1, (loco_act)a, 0, 11 + a), "act %d", a);
}

TEST(linear_no_bias) { CHECK(check_linear(3, 7, 29, 23, 0, LOCO_ACT_NONE, 0, 5)); }

TEST(linear_many_row_tiles) { CHECK(check_linear(3, 300, 70, 130, 1, LOCO_ACT_GELU, 0, 6)); }

TEST(linear_few_rows_split_columns) { CHECK(check_linear(1, 2, 9, 1000, 1, LOCO_ACT_SILU, 0, 7)); }

TEST(linear_single_thread_and_three_threads) {
    CHECK(check_linear(2, 77, 64, 96, 1, LOCO_ACT_QUICK_GELU, 1, 8));
    CHECK(check_linear(2, 77, 64, 96, 1, LOCO_ACT_QUICK_GELU, 3, 8));
}

TEST(linear_empty_sum_gives_bias) { CHECK(check_linear(2, 3, 0, 5, 1, LOCO_ACT_SILU, 0, 9)); }

/* ---- conv2d ------------------------------------------------------------------------------------- */

static int check_conv(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t kh, int64_t kw, int stride,
                      int pt, int pb, int pl, int pr, int with_bias, int threads, uint64_t seed) {
    loco_backend *be = cpu_backend(threads);
    if (!be) return 0;
    trng r = {seed};
    int64_t Ho = (H + pt + pb - kh) / stride + 1, Wo = (W + pl + pr - kw) / stride + 1;
    int64_t xs[4] = {N, Cin, H, W}, ws[4] = {Cout, Cin, kh, kw}, bs[1] = {Cout}, ys[4] = {N, Cout, Ho, Wo};
    loco_tensor x, w, b, y;
    float *hx, *hw, *hb;
    rand_tensor(be, &r, 4, xs, 1.0f, 0.0f, &x, &hx);
    rand_tensor(be, &r, 4, ws, 0.2f, 0.0f, &w, &hw);
    rand_tensor(be, &r, 1, bs, 0.5f, 0.0f, &b, &hb);
    make_tensor(be, 4, ys, NULL, &y);
    loco_conv2d_params p = {stride, {pt, pb, pl, pr}};
    loco_err err;
    loco_status st = loco_conv2d(be, &y, &x, &w, with_bias ? &b : NULL, &p, &err);
    double *ref = malloc((size_t)(N * Cout * Ho * Wo) * sizeof(double));
    for (int64_t n = 0; n < N; n++)
        for (int64_t co = 0; co < Cout; co++)
            for (int64_t oh = 0; oh < Ho; oh++)
                for (int64_t ow = 0; ow < Wo; ow++) {
                    double s = with_bias ? hb[co] : 0.0;
                    for (int64_t ci = 0; ci < Cin; ci++)
                        for (int64_t ky = 0; ky < kh; ky++)
                            for (int64_t kx = 0; kx < kw; kx++) {
                                int64_t ih = oh * stride - pt + ky, iw = ow * stride - pl + kx;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                s += (double)hx[((n * Cin + ci) * H + ih) * W + iw] *
                                     hw[((co * Cin + ci) * kh + ky) * kw + kx];
                            }
                    ref[((n * Cout + co) * Ho + oh) * Wo + ow] = s;
                }
    int ok = st == LOCO_OK && matches(&y, ref, OP_TOL, "conv2d");
    if (st != LOCO_OK) fprintf(stderr, "conv2d: %s\n", err.msg);
    free(ref), free(hx), free(hw), free(hb);
    loco_tensor_free(&x), loco_tensor_free(&w), loco_tensor_free(&b), loco_tensor_free(&y);
    loco_backend_destroy(be);
    return ok;
}

TEST(conv2d_3x3_pad1_batched) { CHECK(check_conv(2, 5, 9, 11, 7, 3, 3, 1, 1, 1, 1, 1, 1, 0, 21)); }

TEST(conv2d_stride2_asymmetric_pad) {
    /* the VAE encoder's downsampler: pad (0, 1, 0, 1), 3x3, stride 2 */
    CHECK(check_conv(2, 4, 10, 7, 6, 3, 3, 2, 0, 1, 0, 1, 1, 0, 22));
    CHECK(check_conv(1, 3, 9, 9, 5, 3, 3, 2, 1, 1, 1, 1, 0, 0, 23));
}

TEST(conv2d_1x1_direct) { CHECK(check_conv(2, 6, 5, 7, 3, 1, 1, 1, 0, 0, 0, 0, 1, 0, 24)); }

TEST(conv2d_1x1_strided_and_padded) {
    CHECK(check_conv(2, 6, 7, 8, 4, 1, 1, 2, 0, 0, 0, 0, 1, 0, 25));
    CHECK(check_conv(1, 3, 4, 5, 4, 1, 1, 1, 1, 0, 2, 1, 1, 0, 26));
}

TEST(conv2d_nonsquare_kernel_odd_pads) { CHECK(check_conv(2, 3, 8, 9, 5, 4, 2, 1, 2, 0, 1, 3, 1, 0, 27)); }

TEST(conv2d_many_column_blocks) { CHECK(check_conv(1, 8, 30, 31, 40, 3, 3, 1, 1, 1, 1, 1, 1, 0, 28)); }

TEST(conv2d_small_image_channel_blocks) {
    CHECK(check_conv(1, 16, 4, 4, 64, 3, 3, 1, 1, 1, 1, 1, 1, 2, 29));
    CHECK(check_conv(1, 16, 4, 4, 70, 3, 3, 1, 1, 1, 1, 1, 1, 4, 30));
}

TEST(conv2d_column_blocks_span_images) {
    /* 3 images of 930 pixels in blocks of ~700 columns: some blocks cover two images */
    CHECK(check_conv(3, 8, 30, 31, 24, 3, 3, 1, 1, 1, 1, 1, 1, 0, 32));
    CHECK(check_conv(3, 4, 30, 31, 5, 1, 1, 1, 0, 0, 0, 0, 1, 0, 33)); /* 1x1 direct and gathered */
    CHECK(check_conv(4, 32, 4, 4, 48, 3, 3, 1, 1, 1, 1, 1, 0, 2, 34)); /* small images share a block */
}

TEST(conv2d_kernel_larger_than_image_with_pad) { CHECK(check_conv(1, 2, 2, 3, 3, 5, 5, 1, 2, 2, 2, 2, 1, 0, 31)); }

/* ---- norms ------------------------------------------------------------------------------------------ */

static int check_group_norm(int nd, const int64_t *shape, int groups, float eps, int silu, float offset, int inplace,
                            uint64_t seed) {
    loco_backend *be = cpu_backend(0);
    if (!be) return 0;
    trng r = {seed};
    int64_t C = shape[1], cs[1] = {C};
    loco_tensor x, g, b, y;
    float *hx, *hg, *hb;
    rand_tensor(be, &r, nd, shape, 2.0f, offset, &x, &hx);
    rand_tensor(be, &r, 1, cs, 0.5f, 1.0f, &g, &hg);
    rand_tensor(be, &r, 1, cs, 0.5f, 0.0f, &b, &hb);
    if (!inplace) make_tensor(be, nd, shape, NULL, &y);
    loco_tensor *out = inplace ? &x : &y;
    loco_err err;
    loco_status st = loco_group_norm(be, out, &x, groups, &g, &b, eps, silu, &err);
    size_t n = shape_numel(nd, shape), S = n / (size_t)(shape[0] * C), cpg = (size_t)C / (size_t)groups;
    double *ref = malloc(n * sizeof(double));
    for (int64_t i = 0; i < shape[0]; i++)
        for (int gi = 0; gi < groups; gi++) {
            const float *xg = hx + ((size_t)i * C + gi * cpg) * S;
            double m = 0, v = 0;
            for (size_t k = 0; k < cpg * S; k++) m += xg[k];
            m /= (double)(cpg * S);
            for (size_t k = 0; k < cpg * S; k++) v += (xg[k] - m) * (xg[k] - m);
            v /= (double)(cpg * S);
            for (size_t c = 0; c < cpg; c++)
                for (size_t s = 0; s < S; s++) {
                    size_t ch = gi * cpg + c, idx = ((size_t)i * C + ch) * S + s;
                    double o = (hx[idx] - m) / sqrt(v + eps) * hg[ch] + hb[ch];
                    ref[idx] = silu ? ref_act(o, LOCO_ACT_SILU) : o;
                }
        }
    int ok = st == LOCO_OK && matches(out, ref, OP_TOL, "group_norm");
    if (st != LOCO_OK) fprintf(stderr, "group_norm: %s\n", err.msg);
    free(ref), free(hx), free(hg), free(hb);
    loco_tensor_free(&x), loco_tensor_free(&g), loco_tensor_free(&b);
    if (!inplace) loco_tensor_free(&y);
    loco_backend_destroy(be);
    return ok;
}

TEST(group_norm_groups_of_three_channels) {
    int64_t s[4] = {2, 12, 5, 7};
    CHECK(check_group_norm(4, s, 4, 1e-5f, 0, 0.0f, 0, 41));
}

TEST(group_norm_fused_silu_in_place) {
    int64_t s[4] = {2, 12, 5, 7};
    CHECK(check_group_norm(4, s, 4, 1e-6f, 1, 0.3f, 1, 42));
}

TEST(group_norm_one_channel_groups_and_3d_input) {
    int64_t s[3] = {3, 6, 10};
    CHECK(check_group_norm(3, s, 6, 1e-5f, 1, 0.0f, 0, 43));
}

TEST(group_norm_large_mean_stays_accurate) {
    int64_t s[4] = {1, 8, 16, 16};
    CHECK(check_group_norm(4, s, 2, 1e-5f, 0, 300.0f, 0, 44));
}

static int check_layer_norm(int64_t R0, int64_t R1, int64_t C, int with_beta, float offset, uint64_t seed) {
    loco_backend *be = cpu_backend(0);
    if (!be) return 0;
    trng r = {seed};
    int64_t xs[3] = {R0, R1, C}, cs[1] = {C};
    loco_tensor x, g, b, y;
    float *hx, *hg, *hb;
    rand_tensor(be, &r, 3, xs, 1.5f, offset, &x, &hx);
    rand_tensor(be, &r, 1, cs, 0.5f, 1.0f, &g, &hg);
    rand_tensor(be, &r, 1, cs, 0.5f, 0.0f, &b, &hb);
    make_tensor(be, 3, xs, NULL, &y);
    loco_err err;
    loco_status st = loco_layer_norm(be, &y, &x, &g, with_beta ? &b : NULL, 1e-5f, &err);
    size_t rows = (size_t)(R0 * R1);
    double *ref = malloc(rows * C * sizeof(double));
    for (size_t i = 0; i < rows; i++) {
        const float *xr = hx + i * C;
        double m = 0, v = 0;
        for (int64_t c = 0; c < C; c++) m += xr[c];
        m /= (double)C;
        for (int64_t c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
        v /= (double)C;
        for (int64_t c = 0; c < C; c++)
            ref[i * C + c] = (xr[c] - m) / sqrt(v + 1e-5) * hg[c] + (with_beta ? hb[c] : 0.0);
    }
    int ok = st == LOCO_OK && matches(&y, ref, OP_TOL, "layer_norm");
    if (st != LOCO_OK) fprintf(stderr, "layer_norm: %s\n", err.msg);
    free(ref), free(hx), free(hg), free(hb);
    loco_tensor_free(&x), loco_tensor_free(&g), loco_tensor_free(&b), loco_tensor_free(&y);
    loco_backend_destroy(be);
    return ok;
}

TEST(layer_norm_with_and_without_beta) {
    CHECK(check_layer_norm(3, 7, 33, 1, 0.0f, 51));
    CHECK(check_layer_norm(2, 77, 768, 0, 0.0f, 52));
}

TEST(layer_norm_large_mean) { CHECK(check_layer_norm(2, 5, 320, 1, 100.0f, 53)); }

/* ---- attention ---------------------------------------------------------------------------------- */

static int check_attention(int B, int Bk, int Lq, int Lk, int H, int D, int causal, const int *kv_index, int threads,
                           uint64_t seed) {
    loco_backend *be = cpu_backend(threads);
    if (!be) return 0;
    trng r = {seed};
    int64_t HD = (int64_t)H * D, qs[3] = {B, Lq, HD}, ks[3] = {Bk, Lk, HD};
    loco_tensor q, k, v, o;
    float *hq, *hk, *hv;
    rand_tensor(be, &r, 3, qs, 1.0f, 0.0f, &q, &hq);
    rand_tensor(be, &r, 3, ks, 1.0f, 0.0f, &k, &hk);
    rand_tensor(be, &r, 3, ks, 1.0f, 0.0f, &v, &hv);
    make_tensor(be, 3, qs, NULL, &o);
    float scale = 1.0f / sqrtf((float)D) * 1.7f; /* sharper than usual: less uniform softmax */
    loco_attention_params p = {H, scale, causal, kv_index, 0};
    loco_err err;
    loco_status st = loco_attention(be, &o, &q, &k, &v, &p, &err);
    double *ref = malloc((size_t)B * Lq * HD * sizeof(double)), *s = malloc((size_t)Lk * sizeof(double));
    for (int b = 0; b < B; b++) {
        int kb = kv_index ? kv_index[b] : b;
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Lq; i++) {
                const float *qi = hq + ((size_t)b * Lq + i) * HD + h * D;
                double m = -INFINITY, sum = 0;
                int n = causal ? (i + 1 < Lk ? i + 1 : Lk) : Lk;
                for (int jj = 0; jj < n; jj++) {
                    const float *kj = hk + ((size_t)kb * Lk + jj) * HD + h * D;
                    double d = 0;
                    for (int c = 0; c < D; c++) d += (double)qi[c] * kj[c];
                    s[jj] = d * scale;
                    if (s[jj] > m) m = s[jj];
                }
                for (int jj = 0; jj < n; jj++) sum += (s[jj] = exp(s[jj] - m));
                for (int c = 0; c < D; c++) {
                    double acc = 0;
                    for (int jj = 0; jj < n; jj++) acc += s[jj] * hv[((size_t)kb * Lk + jj) * HD + h * D + c];
                    ref[((size_t)b * Lq + i) * HD + h * D + c] = acc / sum;
                }
            }
    }
    int ok = st == LOCO_OK && matches(&o, ref, OP_TOL, "attention");
    if (st != LOCO_OK) fprintf(stderr, "attention: %s\n", err.msg);
    free(ref), free(s), free(hq), free(hk), free(hv);
    loco_tensor_free(&q), loco_tensor_free(&k), loco_tensor_free(&v), loco_tensor_free(&o);
    loco_backend_destroy(be);
    return ok;
}

TEST(attention_self_multihead_batched) { CHECK(check_attention(2, 2, 37, 37, 3, 8, 0, NULL, 0, 61)); }

TEST(attention_cross_lq_ne_lk) { CHECK(check_attention(2, 2, 50, 13, 4, 10, 0, NULL, 0, 62)); }

TEST(attention_causal) {
    CHECK(check_attention(1, 1, 29, 29, 2, 16, 1, NULL, 0, 63));
    CHECK(check_attention(2, 2, 300, 300, 2, 8, 1, NULL, 3, 64)); /* several query tiles */
}

TEST(attention_kv_index_shares_kv) {
    int idx[5] = {1, 0, 1, 1, 0};
    CHECK(check_attention(5, 2, 21, 9, 2, 12, 0, idx, 0, 65));
}

TEST(attention_many_query_tiles) { CHECK(check_attention(1, 1, 600, 1100, 2, 5, 0, NULL, 0, 66)); }

TEST(attention_single_thread) { CHECK(check_attention(2, 2, 40, 77, 8, 8, 0, NULL, 1, 67)); }

/* Ops called from the caller's own OpenMP threads: per-thread scratch must follow the
 * backend's threads, not the caller's thread numbers. */
TEST(ops_from_inside_a_callers_parallel_region) {
    int ok = 1;
#pragma omp parallel num_threads(3) reduction(&& : ok)
    {
        ok = check_conv(1, 4, 6, 5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 2, 90) &&
             check_attention(1, 1, 9, 7, 2, 4, 0, NULL, 2, 91) && check_conv(2, 3, 4, 4, 8, 3, 3, 1, 1, 1, 1, 1, 1, 2, 92) &&
             check_conv(1, 2, 3, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2, 93); /* one task: runs on the calling thread */
    }
    CHECK(ok);
}
