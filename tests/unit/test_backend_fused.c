/* test_backend_fused.c: the fused and batched ops of backend.h on a backend without their hooks
 * (the CPU one) are the unfused calls that define them, bit for bit: linear_accumulate,
 * ln_linear, linear_many, conv2d_fused and packed q|k|v attention; and the channel-major linears
 * against sums written out here. What a fused form cannot take is an error naming it. */
#include "cpu_test_util.h"
#include "loco_test.h"

/* a and b (same shape, on a CPU backend) hold the same bits. */
static int same_f32_bits(const loco_tensor *a, const loco_tensor *b) {
    size_t n = (size_t)loco_tensor_numel(a);
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    loco_err err;
    int ok = x && y && loco_tensor_download_f32(a, x, &err) == LOCO_OK &&
             loco_tensor_download_f32(b, y, &err) == LOCO_OK && memcmp(x, y, n * sizeof *x) == 0;
    free(x);
    free(y);
    return ok;
}

/* loco_linear_accumulate on a backend without the fused op is linear into a temporary, then
 * add: the same bits as the two calls. */
TEST(linear_accumulate_is_linear_then_add) {
    loco_backend *be = cpu_backend(0);
    CHECK(be != NULL);
    loco_err err;
    enum { M = 7, K = 13, N = 5 };
    float hx[M * K], hw[N * K], hb[N], hy[M * N];
    for (int i = 0; i < M * K; i++) hx[i] = sinf(0.37f * (float)i) * 1.7f;
    for (int i = 0; i < N * K; i++) hw[i] = cosf(0.11f * (float)i) * 0.3f;
    for (int i = 0; i < N; i++) hb[i] = 0.25f * (float)i - 0.5f;
    for (int i = 0; i < M * N; i++) hy[i] = 3.0f + 0.01f * (float)(i * i % 97);
    int64_t xs[2] = {M, K}, ws[2] = {N, K}, bs[1] = {N}, ys[2] = {M, N};
    loco_tensor x, w, b, y, t, ref;
    CHECK(make_tensor(be, 2, xs, hx, &x) == 0 && make_tensor(be, 2, ws, hw, &w) == 0 &&
          make_tensor(be, 1, bs, hb, &b) == 0 && make_tensor(be, 2, ys, hy, &y) == 0 &&
          make_tensor(be, 2, ys, NULL, &t) == 0 && make_tensor(be, 2, ys, hy, &ref) == 0);
    CHECK(loco_linear(be, &t, &x, &w, &b, LOCO_ACT_NONE, &err) == LOCO_OK);
    CHECK(loco_add(be, &ref, &t, &ref, &err) == LOCO_OK);
    CHECK(loco_linear_accumulate(be, &y, &x, &w, &b, &err) == LOCO_OK);
    CHECK(same_f32_bits(&y, &ref));
    /* a second call adds again (no bias this time) */
    CHECK(loco_linear(be, &t, &x, &w, NULL, LOCO_ACT_NONE, &err) == LOCO_OK);
    CHECK(loco_add(be, &ref, &t, &ref, &err) == LOCO_OK);
    CHECK(loco_linear_accumulate(be, &y, &x, &w, NULL, &err) == LOCO_OK);
    CHECK(same_f32_bits(&y, &ref));
    loco_tensor *all[] = {&x, &w, &b, &y, &t, &ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) loco_tensor_free(all[i]);
    loco_backend_destroy(be);
}

/* loco_ln_linear on a backend without the fused op is loco_layer_norm into a temporary, then
 * loco_linear or loco_linear_geglu: the same bits as the two calls, with and without beta. */
TEST(ln_linear_is_layer_norm_then_linear) {
    loco_backend *be = cpu_backend(0);
    CHECK(be != NULL);
    loco_err err;
    enum { M = 7, K = 13, N = 6 };
    float hx[M * K], hw[N * K], hb[N], hg[K], hbeta[K];
    for (int i = 0; i < M * K; i++) hx[i] = 2.0f + sinf(0.37f * (float)i) * 1.7f;
    for (int i = 0; i < N * K; i++) hw[i] = cosf(0.11f * (float)i) * 0.3f;
    for (int i = 0; i < N; i++) hb[i] = 0.25f * (float)i - 0.5f;
    for (int i = 0; i < K; i++) hg[i] = 1.0f + 0.1f * sinf((float)i), hbeta[i] = 0.05f * (float)i;
    int64_t xs[2] = {M, K}, ws[2] = {N, K}, bs[1] = {N}, ks[1] = {K}, ys[2] = {M, N}, hs[2] = {M, N / 2};
    loco_tensor x, w, b, g, beta, n, y, ref, yh, refh;
    CHECK(make_tensor(be, 2, xs, hx, &x) == 0 && make_tensor(be, 2, ws, hw, &w) == 0 &&
          make_tensor(be, 1, bs, hb, &b) == 0 && make_tensor(be, 1, ks, hg, &g) == 0 &&
          make_tensor(be, 1, ks, hbeta, &beta) == 0 && make_tensor(be, 2, xs, NULL, &n) == 0 &&
          make_tensor(be, 2, ys, NULL, &y) == 0 && make_tensor(be, 2, ys, NULL, &ref) == 0 &&
          make_tensor(be, 2, hs, NULL, &yh) == 0 && make_tensor(be, 2, hs, NULL, &refh) == 0);
    for (int with_beta = 0; with_beta < 2; with_beta++) {
        const loco_tensor *bt = with_beta ? &beta : NULL;
        CHECK(loco_layer_norm(be, &n, &x, &g, bt, 1e-5f, &err) == LOCO_OK);
        CHECK(loco_linear(be, &ref, &n, &w, &b, LOCO_ACT_NONE, &err) == LOCO_OK);
        CHECK_MSG(loco_ln_linear(be, &y, &x, &g, bt, 1e-5f, &w, &b, 0, &err) == LOCO_OK, "%s", err.msg);
        CHECK(same_f32_bits(&y, &ref));
        CHECK(loco_linear_geglu(be, &refh, &n, &w, NULL, &err) == LOCO_OK);
        CHECK_MSG(loco_ln_linear(be, &yh, &x, &g, bt, 1e-5f, &w, NULL, 1, &err) == LOCO_OK, "%s", err.msg);
        CHECK(same_f32_bits(&yh, &refh));
    }
    loco_tensor *all[] = {&x, &w, &b, &g, &beta, &n, &y, &ref, &yh, &refh};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) loco_tensor_free(all[i]);
    loco_backend_destroy(be);
}

/* loco_linear_many on the CPU is one loco_linear per layer, bit for bit; overlapping outputs
 * and a mismatched layer are errors that name the layer. */
TEST(linear_many_is_one_linear_per_layer) {
    loco_backend *be = cpu_backend(0);
    CHECK(be != NULL);
    loco_err err;
    enum { M = 3, K = 11 };
    float hx[M * K], hw[3 * 7 * K], hb[3 * 7];
    for (int i = 0; i < M * K; i++) hx[i] = sinf(0.37f * (float)i) * 1.7f;
    for (int i = 0; i < 3 * 7 * K; i++) hw[i] = cosf(0.11f * (float)i) * 0.3f;
    for (int i = 0; i < 3 * 7; i++) hb[i] = 0.25f * (float)i - 0.5f;
    int64_t xs[2] = {M, K};
    loco_tensor x, w[3], b[3], y[3], ref[3];
    CHECK(make_tensor(be, 2, xs, hx, &x) == 0);
    for (int i = 0; i < 3; i++) {
        int64_t ws[2] = {5 + i, K}, bs[1] = {5 + i}, ys[2] = {M, 5 + i};
        CHECK(make_tensor(be, 2, ws, hw + i * 7 * K, &w[i]) == 0 && make_tensor(be, 1, bs, hb + i * 7, &b[i]) == 0 &&
              make_tensor(be, 2, ys, NULL, &y[i]) == 0 && make_tensor(be, 2, ys, NULL, &ref[i]) == 0);
        CHECK(loco_linear(be, &ref[i], &x, &w[i], i == 1 ? NULL : &b[i], LOCO_ACT_NONE, &err) == LOCO_OK);
    }
    loco_tensor *ys[3] = {&y[0], &y[1], &y[2]};
    const loco_tensor *ws[3] = {&w[0], &w[1], &w[2]}, *bs[3] = {&b[0], NULL, &b[2]};
    CHECK_MSG(loco_linear_many(be, 3, ys, &x, ws, bs, &err) == LOCO_OK, "%s", err.msg);
    for (int i = 0; i < 3; i++) CHECK(same_f32_bits(&y[i], &ref[i]));
    CHECK(loco_linear_many(be, 0, NULL, &x, NULL, NULL, &err) == LOCO_OK);
    loco_tensor *twice[2] = {&y[0], &y[0]};
    const loco_tensor *w2[2] = {&w[0], &w[0]};
    CHECK(loco_linear_many(be, 2, twice, &x, w2, NULL, &err) == LOCO_EINVAL);
    CHECK_MSG(strstr(err.msg, "layer 1") && strstr(err.msg, "overlap"), "%s", err.msg);
    const loco_tensor *wrong[3] = {&w[0], &w[2], &w[2]}; /* layer 1: 7 outputs into y[1]'s 6 */
    CHECK(loco_linear_many(be, 3, ys, &x, wrong, NULL, &err) == LOCO_EINVAL);
    CHECK_MSG(strstr(err.msg, "layer 1") && strstr(err.msg, "linear_many"), "%s", err.msg);
    loco_tensor_free(&x);
    for (int i = 0; i < 3; i++) loco_tensor_free(&w[i]), loco_tensor_free(&b[i]), loco_tensor_free(&y[i]),
                                loco_tensor_free(&ref[i]);
    loco_backend_destroy(be);
}

/* loco_linear_from_channels / loco_linear_to_channels against sums written out here (double
 * accumulation, so within fp32 rounding), r apart and r == y, and the shape checks. */
TEST(linear_channels_match_the_sums) {
    loco_backend *be = cpu_backend(0);
    CHECK(be != NULL);
    loco_err err;
    enum { B = 2, K = 5, L = 7, N = 3 };
    float hx[B * K * L], hw[N * K], hb[N], hr[B * N * L];
    for (int i = 0; i < B * K * L; i++) hx[i] = sinf(0.37f * (float)i) * 1.7f;
    for (int i = 0; i < N * K; i++) hw[i] = cosf(0.11f * (float)i) * 0.3f;
    for (int i = 0; i < N; i++) hb[i] = 0.25f * (float)i - 0.5f;
    for (int i = 0; i < B * N * L; i++) hr[i] = 3.0f + 0.01f * (float)(i * i % 97);
    int64_t xs[3] = {B, K, L}, ws[2] = {N, K}, bs[1] = {N}, ys[3] = {B, L, N}, rs[3] = {B, N, L}, x2s[3] = {B, L, K};
    loco_tensor x, w, b, y, r, x2, y2;
    CHECK(make_tensor(be, 3, xs, hx, &x) == 0 && make_tensor(be, 2, ws, hw, &w) == 0 &&
          make_tensor(be, 1, bs, hb, &b) == 0 && make_tensor(be, 3, ys, NULL, &y) == 0 &&
          make_tensor(be, 3, rs, hr, &r) == 0 && make_tensor(be, 3, x2s, hx, &x2) == 0 &&
          make_tensor(be, 3, rs, hr, &y2) == 0);
    float got[B * N * L];
    /* from: y[b][l][n] = sum_k x[b][k][l] w[n][k] + bias[n] */
    CHECK_MSG(loco_linear_from_channels(be, &y, &x, &w, &b, &err) == LOCO_OK, "%s", err.msg);
    CHECK(loco_tensor_download_f32(&y, got, &err) == LOCO_OK);
    for (int bb = 0; bb < B; bb++)
        for (int l = 0; l < L; l++)
            for (int n = 0; n < N; n++) {
                double want = hb[n];
                for (int k = 0; k < K; k++) want += (double)hx[(bb * K + k) * L + l] * hw[n * K + k];
                CHECK_MSG(fabs(got[(bb * L + l) * N + n] - want) < 1e-5, "from %d %d %d: %g vs %g", bb, l, n,
                          got[(bb * L + l) * N + n], want);
            }
    /* to, with r apart and with r == y: y[b][n][l] = sum_k x2[b][l][k] w[n][k] + bias[n] + r[b][n][l] */
    for (int in_place = 0; in_place < 2; in_place++) {
        loco_tensor out;
        CHECK(make_tensor(be, 3, rs, NULL, &out) == 0);
        loco_tensor *yy = in_place ? &y2 : &out;
        CHECK_MSG(loco_linear_to_channels(be, yy, &x2, &w, &b, in_place ? &y2 : &r, &err) == LOCO_OK, "%s", err.msg);
        CHECK(loco_tensor_download_f32(yy, got, &err) == LOCO_OK);
        for (int bb = 0; bb < B; bb++)
            for (int n = 0; n < N; n++)
                for (int l = 0; l < L; l++) {
                    double want = hb[n] + hr[(bb * N + n) * L + l];
                    for (int k = 0; k < K; k++) want += (double)hx[(bb * L + l) * K + k] * hw[n * K + k];
                    CHECK_MSG(fabs(got[(bb * N + n) * L + l] - want) < 1e-5, "to (in place %d) %d %d %d: %g vs %g",
                              in_place, bb, n, l, got[(bb * N + n) * L + l], want);
                }
        loco_tensor_free(&out);
    }
    /* shapes: x in the other layout, a bias of the wrong length, r of another shape */
    CHECK(loco_linear_from_channels(be, &y, &x2, &w, &b, &err) == LOCO_EINVAL);
    CHECK_MSG(strstr(err.msg, "linear_from_channels") && strstr(err.msg, "[B, in, L]"), "%s", err.msg);
    CHECK(loco_linear_to_channels(be, &r, &x2, &w, &w, NULL, &err) == LOCO_EINVAL);
    CHECK(loco_linear_to_channels(be, &y2, &x2, &w, &b, &y, &err) == LOCO_EINVAL);
    CHECK_MSG(strstr(err.msg, "same shape"), "%s", err.msg);
    loco_tensor *all[] = {&x, &w, &b, &y, &r, &x2, &y2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) loco_tensor_free(all[i]);
    loco_backend_destroy(be);
}

/* loco_conv2d_fused on a backend without the fused hook (the CPU one) is the unfused calls bit
 * for bit: group_norm into a temporary, conv2d, add_channel_bias, then residual + y. */
TEST(conv2d_fused_is_the_unfused_calls) {
    loco_backend *be = cpu_backend(0);
    CHECK(be != NULL);
    loco_err err;
    enum { N = 2, CI = 8, H = 5, W = 6, CO = 4 };
    float hx[N * CI * H * W], hw[CO * CI * 9], hb[CO], hg[CI], hbe[CI], hs[N * CO], hr[N * CO * H * W];
    for (int i = 0; i < N * CI * H * W; i++) hx[i] = sinf(0.29f * (float)i) * 2.1f + 0.4f;
    for (int i = 0; i < CO * CI * 9; i++) hw[i] = cosf(0.13f * (float)i) * 0.2f;
    for (int i = 0; i < CO; i++) hb[i] = 0.3f * (float)i - 0.4f;
    for (int i = 0; i < CI; i++) hg[i] = 1.0f + 0.05f * (float)i, hbe[i] = 0.1f * (float)i - 0.2f;
    for (int i = 0; i < N * CO; i++) hs[i] = 0.7f - 0.2f * (float)i;
    for (int i = 0; i < N * CO * H * W; i++) hr[i] = cosf(0.21f * (float)i);
    int64_t xs[4] = {N, CI, H, W}, ws[4] = {CO, CI, 3, 3}, bs[1] = {CO}, cs[1] = {CI}, ss[2] = {N, CO},
            ys[4] = {N, CO, H, W};
    loco_tensor x, w, b, g, be_, sb, r, n, ref, y;
    CHECK(make_tensor(be, 4, xs, hx, &x) == 0 && make_tensor(be, 4, ws, hw, &w) == 0 &&
          make_tensor(be, 1, bs, hb, &b) == 0 && make_tensor(be, 1, cs, hg, &g) == 0 &&
          make_tensor(be, 1, cs, hbe, &be_) == 0 && make_tensor(be, 2, ss, hs, &sb) == 0 &&
          make_tensor(be, 4, ys, hr, &r) == 0 && make_tensor(be, 4, xs, NULL, &n) == 0 &&
          make_tensor(be, 4, ys, NULL, &ref) == 0 && make_tensor(be, 4, ys, NULL, &y) == 0);
    const loco_conv2d_params p = {1, {1, 1, 1, 1}};
    loco_conv2d_fusion f;
    loco_conv2d_fusion_init(&f);
    CHECK(f.norm_gamma == NULL && f.sample_bias == NULL && f.residual == NULL && f.norm_groups == 32);
    f.norm_gamma = &g, f.norm_beta = &be_, f.norm_groups = 4, f.norm_eps = 1e-6f, f.norm_silu = 1;
    f.sample_bias = &sb, f.residual = &r;
    CHECK(loco_group_norm(be, &n, &x, 4, &g, &be_, 1e-6f, 1, &err) == LOCO_OK);
    CHECK(loco_conv2d(be, &ref, &n, &w, &b, &p, &err) == LOCO_OK);
    CHECK(loco_add_channel_bias(be, &ref, &ref, &sb, &err) == LOCO_OK);
    CHECK(loco_add(be, &ref, &r, &ref, &err) == LOCO_OK);
    CHECK(loco_conv2d_fused(be, &y, &x, &w, &b, &p, &f, &err) == LOCO_OK);
    CHECK(same_f32_bits(&y, &ref));
    /* nothing to fuse (f NULL or all unset): loco_conv2d itself */
    CHECK(loco_conv2d(be, &ref, &x, &w, &b, &p, &err) == LOCO_OK);
    CHECK(loco_conv2d_fused(be, &y, &x, &w, &b, &p, NULL, &err) == LOCO_OK);
    CHECK(same_f32_bits(&y, &ref));

    /* bad fusions name the fused op and what is wrong */
#define BADF(what)                                                                                               \
    CHECK_MSG(fails_with(loco_conv2d_fused(be, &y, &x, &w, &b, &p, &bad, &err), &err, LOCO_EINVAL,               \
                         "conv2d_fused"),                                                                        \
              "%s", what);                                                                                       \
    CHECK_MSG(strstr(err.msg, what) != NULL, "%s: %s", what, err.msg)
    loco_conv2d_fusion bad = f;
    bad.norm_groups = 3; /* 8 channels */
    BADF("groups");
    bad = f;
    bad.norm_beta = NULL;
    BADF("beta is NULL");
    bad = f;
    bad.norm_eps = -1.0f;
    BADF("eps");
    bad = f;
    bad.norm_gamma = &b; /* [4] for 8 channels */
    BADF("gamma");
    bad = f;
    bad.sample_bias = &b;
    BADF("sample_bias");
    bad = f;
    bad.residual = &x;
    BADF("residual");
    bad = f;
    bad.residual = &y; /* the conv writes y before the residual is read */
    BADF("overlaps");
#undef BADF
    CHECK(fails_with(loco_conv2d_fused(be, &y, &x, &w, &b, NULL, &f, &err), &err, LOCO_EINVAL, "conv2d_fused"));
    loco_tensor *all[] = {&x, &w, &b, &g, &be_, &sb, &r, &n, &ref, &y};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) loco_tensor_free(all[i]);
    loco_backend_destroy(be);
}

/* Packed q|k|v rows (one GEMM's output with the three projections stacked) give the bits of
 * the same values apart, with and without kv_index; what does not fit the packed form is an
 * error naming it. */
TEST(attention_packed_qkv_is_q_k_v_apart) {
    loco_backend *be = cpu_backend(0);
    CHECK(be != NULL);
    loco_err err;
    enum { B = 2, L = 9, H = 2, D = 4, HD = H * D };
    float hp[B * L * 3 * HD], hq[B * L * HD], hk[B * L * HD], hv[B * L * HD];
    for (int i = 0; i < B * L * 3 * HD; i++) hp[i] = sinf(0.173f * (float)i) * 1.3f;
    for (int r = 0; r < B * L; r++)
        for (int c = 0; c < HD; c++) {
            hq[r * HD + c] = hp[r * 3 * HD + c];
            hk[r * HD + c] = hp[r * 3 * HD + HD + c];
            hv[r * HD + c] = hp[r * 3 * HD + 2 * HD + c];
        }
    int64_t ps[3] = {B, L, 3 * HD}, qs[3] = {B, L, HD}, bad[3] = {B, L, 3 * HD - 1};
    loco_tensor pk, q, k, v, o, ref, odd;
    CHECK(make_tensor(be, 3, ps, hp, &pk) == 0 && make_tensor(be, 3, qs, hq, &q) == 0 &&
          make_tensor(be, 3, qs, hk, &k) == 0 && make_tensor(be, 3, qs, hv, &v) == 0 &&
          make_tensor(be, 3, qs, NULL, &o) == 0 && make_tensor(be, 3, qs, NULL, &ref) == 0 &&
          make_tensor(be, 3, bad, NULL, &odd) == 0);
    static const int kv[B] = {1, 1};
    for (int with_kv = 0; with_kv < 2; with_kv++) {
        loco_attention_params pa = {H, 0.5f, 0, with_kv ? kv : NULL, 0}, pp = pa;
        pp.qkv_packed = 1;
        CHECK(loco_attention(be, &ref, &q, &k, &v, &pa, &err) == LOCO_OK);
        CHECK(loco_attention(be, &o, &pk, NULL, NULL, &pp, &err) == LOCO_OK);
        CHECK(same_f32_bits(&o, &ref));
    }
    loco_attention_params pp = {H, 0.5f, 0, NULL, 1};
    CHECK(loco_attention(be, &o, &pk, &k, &v, &pp, &err) == LOCO_EINVAL && strstr(err.msg, "qkv_packed"));
    CHECK(loco_attention(be, &o, &odd, NULL, NULL, &pp, &err) == LOCO_EINVAL && strstr(err.msg, "3*H*D"));
    CHECK(loco_attention(be, &pk, &pk, NULL, NULL, &pp, &err) == LOCO_EINVAL && strstr(err.msg, "out"));
    loco_tensor *all[] = {&pk, &q, &k, &v, &o, &ref, &odd};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) loco_tensor_free(all[i]);
    loco_backend_destroy(be);
}
