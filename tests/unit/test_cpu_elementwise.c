/* test_cpu_elementwise.c: the CPU backend's elementwise and layout ops against double
 * references: activations (in place too), GEGLU, add, channel bias, lincomb (aliased output),
 * copy with dtype conversion, fill, transpose12, concat on every axis, nearest upsampling,
 * embedding gather and set_channels. Sizes exceed one parallel chunk so the split is tested. */
#include "cpu_test_util.h"
#include "loco_test.h"

TEST(activation_every_kind_and_in_place) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {101};
    int64_t s[2] = {37, 2011}; /* > 2 chunks */
    size_t n = shape_numel(2, s);
    for (int a = 0; a < LOCO_ACT_COUNT; a++) {
        loco_tensor x, y;
        float *hx;
        rand_tensor(be, &r, 2, s, 6.0f, 0.0f, &x, &hx); /* [-6, 6): both tails of every curve */
        make_tensor(be, 2, s, NULL, &y);
        double *ref = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) ref[i] = ref_act(hx[i], (loco_act)a);
        loco_err err;
        CHECK(loco_activation(be, &y, &x, (loco_act)a, &err) == LOCO_OK);
        CHECK_MSG(matches(&y, ref, OP_TOL, "activation"), "act %s", loco_act_name((loco_act)a));
        CHECK(loco_activation(be, &x, &x, (loco_act)a, &err) == LOCO_OK);
        CHECK_MSG(matches(&x, ref, OP_TOL, "activation in place"), "act %s", loco_act_name((loco_act)a));
        free(ref), free(hx);
        loco_tensor_free(&x), loco_tensor_free(&y);
    }
    loco_backend_destroy(be);
}

TEST(activation_extremes_are_finite_and_exact) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    float hx[6] = {-100.0f, -30.0f, 0.0f, 30.0f, 100.0f, 1e-3f};
    int64_t s[1] = {6};
    for (int a = 1; a < LOCO_ACT_COUNT; a++) {
        loco_tensor x;
        make_tensor(be, 1, s, hx, &x);
        loco_err err;
        CHECK(loco_activation(be, &x, &x, (loco_act)a, &err) == LOCO_OK);
        float *got = download(&x);
        for (int i = 0; i < 6; i++) CHECK_CLOSE(got[i], ref_act(hx[i], (loco_act)a), 1e-6);
        free(got);
        loco_tensor_free(&x);
    }
    loco_backend_destroy(be);
}

TEST(geglu_first_half_is_value) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {102};
    int64_t xs[3] = {2, 33, 2 * 161}, ys[3] = {2, 33, 161};
    loco_tensor x, y;
    float *hx;
    rand_tensor(be, &r, 3, xs, 3.0f, 0.0f, &x, &hx);
    make_tensor(be, 3, ys, NULL, &y);
    size_t rows = 66, N = 161;
    double *ref = malloc(rows * N * sizeof(double));
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < N; j++)
            ref[i * N + j] = hx[i * 2 * N + j] * ref_act(hx[i * 2 * N + N + j], LOCO_ACT_GELU);
    loco_err err;
    CHECK(loco_geglu(be, &y, &x, &err) == LOCO_OK);
    CHECK(matches(&y, ref, OP_TOL, "geglu"));
    free(ref), free(hx);
    loco_tensor_free(&x), loco_tensor_free(&y);
    loco_backend_destroy(be);
}

TEST(add_and_add_in_place) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {103};
    int64_t s[3] = {3, 127, 311};
    size_t n = shape_numel(3, s);
    loco_tensor a, b, y;
    float *ha, *hb;
    rand_tensor(be, &r, 3, s, 1.0f, 0.0f, &a, &ha);
    rand_tensor(be, &r, 3, s, 1.0f, 0.0f, &b, &hb);
    make_tensor(be, 3, s, NULL, &y);
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = (double)ha[i] + hb[i];
    loco_err err;
    CHECK(loco_add(be, &y, &a, &b, &err) == LOCO_OK);
    CHECK(matches(&y, ref, 1e-7, "add"));
    CHECK(loco_add(be, &b, &a, &b, &err) == LOCO_OK); /* y == b */
    CHECK(matches(&b, ref, 1e-7, "add in place"));
    free(ref), free(ha), free(hb);
    loco_tensor_free(&a), loco_tensor_free(&b), loco_tensor_free(&y);
    loco_backend_destroy(be);
}

TEST(add_channel_bias_nchw_and_in_place) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {104};
    int64_t s[4] = {2, 7, 9, 13}, bs[2] = {2, 7};
    size_t n = shape_numel(4, s), S = 9 * 13;
    loco_tensor x, b, y;
    float *hx, *hb;
    rand_tensor(be, &r, 4, s, 1.0f, 0.0f, &x, &hx);
    rand_tensor(be, &r, 2, bs, 1.0f, 0.0f, &b, &hb);
    make_tensor(be, 4, s, NULL, &y);
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = (double)hx[i] + hb[i / S];
    loco_err err;
    CHECK(loco_add_channel_bias(be, &y, &x, &b, &err) == LOCO_OK);
    CHECK(matches(&y, ref, 1e-7, "add_channel_bias"));
    CHECK(loco_add_channel_bias(be, &x, &x, &b, &err) == LOCO_OK);
    CHECK(matches(&x, ref, 1e-7, "add_channel_bias in place"));
    free(ref), free(hx), free(hb);
    loco_tensor_free(&x), loco_tensor_free(&b), loco_tensor_free(&y);
    loco_backend_destroy(be);
}

TEST(lincomb_three_terms_output_aliases_input) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {105};
    int64_t s[2] = {5, 20011};
    size_t n = shape_numel(2, s);
    loco_tensor t[3];
    float *h[3];
    for (int i = 0; i < 3; i++) rand_tensor(be, &r, 2, s, 1.0f, 0.0f, &t[i], &h[i]);
    float coef[3] = {0.75f, -1.5f, 0.125f};
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = coef[0] * (double)h[0][i] + coef[1] * (double)h[1][i] + coef[2] * (double)h[2][i];
    const loco_tensor *xs[3] = {&t[0], &t[1], &t[2]};
    loco_err err;
    CHECK(loco_lincomb(be, &t[1], 3, xs, coef, &err) == LOCO_OK);
    CHECK(matches(&t[1], ref, 1e-6, "lincomb"));
    for (int i = 0; i < 3; i++) free(h[i]), loco_tensor_free(&t[i]);
    free(ref);
    loco_backend_destroy(be);
}

TEST(copy_converts_dtypes_and_fill) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {106};
    int64_t s[2] = {3, 30001};
    size_t n = shape_numel(2, s);
    loco_tensor x, h16, b16, back;
    float *hx;
    rand_tensor(be, &r, 2, s, 100.0f, 0.0f, &x, &hx);
    loco_err err;
    CHECK(loco_tensor_alloc(be, LOCO_F16, 2, s, &h16, &err) == LOCO_OK);
    CHECK(loco_tensor_alloc(be, LOCO_BF16, 2, s, &b16, &err) == LOCO_OK);
    make_tensor(be, 2, s, NULL, &back);
    CHECK(loco_copy(be, &h16, &x, &err) == LOCO_OK);
    CHECK(loco_copy(be, &b16, &h16, &err) == LOCO_OK);
    CHECK(loco_copy(be, &back, &b16, &err) == LOCO_OK);
    float *g16 = download(&h16), *gb = download(&back);
    for (size_t i = 0; i < n; i++) {
        float want16 = loco_f16_to_f32(loco_f32_to_f16(hx[i]));
        CHECK(g16[i] == want16);
        CHECK(gb[i] == loco_bf16_to_f32(loco_f32_to_bf16(want16)));
    }
    CHECK(loco_fill(be, &x, -2.5f, &err) == LOCO_OK);
    float *gf = download(&x);
    for (size_t i = 0; i < n; i++) CHECK(gf[i] == -2.5f);
    free(g16), free(gb), free(gf), free(hx);
    loco_tensor_free(&x), loco_tensor_free(&h16), loco_tensor_free(&b16), loco_tensor_free(&back);
    loco_backend_destroy(be);
}

TEST(transpose12_both_ways) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {107};
    int64_t xs[3] = {2, 45, 77}, ys[3] = {2, 77, 45};
    loco_tensor x, y, z;
    float *hx;
    rand_tensor(be, &r, 3, xs, 1.0f, 0.0f, &x, &hx);
    make_tensor(be, 3, ys, NULL, &y);
    make_tensor(be, 3, xs, NULL, &z);
    loco_err err;
    CHECK(loco_transpose12(be, &y, &x, &err) == LOCO_OK);
    CHECK(loco_transpose12(be, &z, &y, &err) == LOCO_OK);
    float *gy = download(&y), *gz = download(&z);
    for (int n = 0; n < 2; n++)
        for (int a = 0; a < 45; a++)
            for (int b = 0; b < 77; b++) CHECK(gy[(n * 77 + b) * 45 + a] == hx[(n * 45 + a) * 77 + b]);
    CHECK(memcmp(gz, hx, sizeof(float) * 2 * 45 * 77) == 0);
    free(gy), free(gz), free(hx);
    loco_tensor_free(&x), loco_tensor_free(&y), loco_tensor_free(&z);
    loco_backend_destroy(be);
}

/* concat along `axis` of a [2,3,4,5]-like shape where a and b differ on that axis */
static int check_concat(int axis) {
    loco_backend *be = cpu_backend(0);
    if (!be) return 0;
    trng r = {(uint64_t)(108 + axis)};
    int64_t as[4] = {2, 3, 4, 5}, bs[4] = {2, 3, 4, 5}, ys[4] = {2, 3, 4, 5};
    int ax = axis < 0 ? axis + 4 : axis;
    bs[ax] = 2;
    ys[ax] = as[ax] + 2;
    loco_tensor a, b, y;
    float *ha, *hb;
    rand_tensor(be, &r, 4, as, 1.0f, 0.0f, &a, &ha);
    rand_tensor(be, &r, 4, bs, 1.0f, 0.0f, &b, &hb);
    make_tensor(be, 4, ys, NULL, &y);
    loco_err err;
    int ok = loco_concat(be, &y, &a, &b, axis, &err) == LOCO_OK;
    float *gy = download(&y);
    int64_t idx[4];
    for (idx[0] = 0; ok && idx[0] < ys[0]; idx[0]++)
        for (idx[1] = 0; ok && idx[1] < ys[1]; idx[1]++)
            for (idx[2] = 0; ok && idx[2] < ys[2]; idx[2]++)
                for (idx[3] = 0; ok && idx[3] < ys[3]; idx[3]++) {
                    int from_a = idx[ax] < as[ax];
                    const int64_t *sh = from_a ? as : bs;
                    int64_t j[4] = {idx[0], idx[1], idx[2], idx[3]};
                    if (!from_a) j[ax] -= as[ax];
                    float want = (from_a ? ha : hb)[((j[0] * sh[1] + j[1]) * sh[2] + j[2]) * sh[3] + j[3]];
                    ok = gy[((idx[0] * ys[1] + idx[1]) * ys[2] + idx[2]) * ys[3] + idx[3]] == want;
                }
    free(gy), free(ha), free(hb);
    loco_tensor_free(&a), loco_tensor_free(&b), loco_tensor_free(&y);
    loco_backend_destroy(be);
    return ok;
}

TEST(concat_every_axis) {
    for (int axis = 0; axis < 4; axis++) CHECK_MSG(check_concat(axis), "axis %d", axis);
    CHECK(check_concat(-1));
}

TEST(upsample_nearest2x) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {112};
    int64_t xs[4] = {2, 3, 5, 7}, ys[4] = {2, 3, 10, 14};
    loco_tensor x, y;
    float *hx;
    rand_tensor(be, &r, 4, xs, 1.0f, 0.0f, &x, &hx);
    make_tensor(be, 4, ys, NULL, &y);
    loco_err err;
    CHECK(loco_upsample_nearest2x(be, &y, &x, &err) == LOCO_OK);
    float *gy = download(&y);
    for (int nc = 0; nc < 6; nc++)
        for (int h = 0; h < 10; h++)
            for (int w = 0; w < 14; w++) CHECK(gy[(nc * 10 + h) * 14 + w] == hx[(nc * 5 + h / 2) * 7 + w / 2]);
    free(gy), free(hx);
    loco_tensor_free(&x), loco_tensor_free(&y);
    loco_backend_destroy(be);
}

TEST(embedding_gathers_rows_and_rejects_bad_ids) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {113};
    int64_t ts[2] = {50, 24}, ys[3] = {2, 7, 24};
    loco_tensor t, y;
    float *ht;
    rand_tensor(be, &r, 2, ts, 1.0f, 0.0f, &t, &ht);
    make_tensor(be, 3, ys, NULL, &y);
    int32_t ids[14] = {0, 49, 3, 3, 17, 8, 1, 2, 40, 41, 0, 0, 9, 49};
    loco_err err;
    CHECK(loco_embedding(be, &y, &t, ids, 14, &err) == LOCO_OK);
    float *gy = download(&y);
    for (int i = 0; i < 14; i++) CHECK(memcmp(gy + i * 24, ht + ids[i] * 24, 24 * sizeof(float)) == 0);
    ids[5] = 50;
    CHECK(fails_with(loco_embedding(be, &y, &t, ids, 14, &err), &err, LOCO_EINVAL, "embedding"));
    ids[5] = -1;
    CHECK(fails_with(loco_embedding(be, &y, &t, ids, 14, &err), &err, LOCO_EINVAL, "embedding"));
    free(gy), free(ht);
    loco_tensor_free(&t), loco_tensor_free(&y);
    loco_backend_destroy(be);
}

TEST(set_channels_overwrites_only_those) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    trng r = {114};
    int64_t s[3] = {2, 9, 31};
    loco_tensor y;
    float *hy;
    rand_tensor(be, &r, 3, s, 1.0f, 0.0f, &y, &hy);
    int32_t ch[3] = {0, 30, 7};
    float val[3] = {1.5f, -2.0f, 0.0f};
    loco_err err;
    CHECK(loco_set_channels(be, &y, ch, val, 3, &err) == LOCO_OK);
    float *gy = download(&y);
    for (int row = 0; row < 18; row++)
        for (int c = 0; c < 31; c++) {
            float want = c == 0 ? 1.5f : c == 30 ? -2.0f : c == 7 ? 0.0f : hy[row * 31 + c];
            CHECK(gy[row * 31 + c] == want);
        }
    free(gy), free(hy);
    loco_tensor_free(&y);
    loco_backend_destroy(be);
}
