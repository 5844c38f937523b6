/* test_backend_api.c: the backend-independent half of backend.h, exercised on the CPU
 * backend: names and their round trips, creation (AUTO falls back to the CPU without a GPU;
 * an explicit CUDA request without one fails with the reason), tensors, views and slice0,
 * upload conversion from F16/BF16/F64, memory accounting, allocator reuse, and the
 * validation error of every op: LOCO_EINVAL with a message that names the op. */
#include "cpu_test_util.h"
#include "loco_test.h"

TEST(device_names_round_trip) {
    for (int d = 0; d < LOCO_DEVICE_COUNT; d++) {
        loco_device out;
        CHECK(loco_device_from_name(loco_device_name((loco_device)d), &out) == 0);
        CHECK(out == (loco_device)d);
    }
    loco_device out;
    CHECK(loco_device_from_name("CUDA", &out) == 0 && out == LOCO_DEVICE_CUDA);
    CHECK(loco_device_from_name("gpu", &out) == 0 && out == LOCO_DEVICE_CUDA);
    CHECK(loco_device_from_name("tpu", &out) == -1);
    CHECK(loco_device_from_name(NULL, &out) == -1);
    CHECK(strcmp(loco_device_name(LOCO_DEVICE_AUTO), "auto") == 0);
}

TEST(act_names_round_trip_and_transformers_spellings) {
    for (int a = 0; a < LOCO_ACT_COUNT; a++) {
        loco_act out;
        CHECK(loco_act_from_name(loco_act_name((loco_act)a), &out) == 0);
        CHECK(out == (loco_act)a);
    }
    static const struct {
        const char *name;
        loco_act act;
    } cases[] = {
        {"quick_gelu", LOCO_ACT_QUICK_GELU}, {"gelu", LOCO_ACT_GELU},       {"gelu_new", LOCO_ACT_GELU_TANH},
        {"gelu_pytorch_tanh", LOCO_ACT_GELU_TANH}, {"silu", LOCO_ACT_SILU}, {"swish", LOCO_ACT_SILU},
        {"gelu_tanh", LOCO_ACT_GELU_TANH},   {"none", LOCO_ACT_NONE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        loco_act out = LOCO_ACT_COUNT;
        CHECK_MSG(loco_act_from_name(cases[i].name, &out) == 0 && out == cases[i].act, "%s", cases[i].name);
    }
    loco_act out;
    CHECK(loco_act_from_name("relu6", &out) == -1);
    CHECK(strcmp(loco_act_name(LOCO_ACT_QUICK_GELU), "quick_gelu") == 0);
}

TEST(opts_defaults) {
    loco_backend_opts o;
    memset(&o, 0x5a, sizeof o);
    loco_backend_opts_init(&o);
    CHECK(o.device == LOCO_DEVICE_AUTO);
    CHECK(o.num_threads == 0);
    CHECK(o.cuda_device == 0);
    CHECK(o.act_dtype == LOCO_F16);
}

TEST(create_cpu_auto_and_cuda) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CPU;
    o.num_threads = 3;
    loco_backend *be = NULL;
    loco_err err;
    CHECK(loco_backend_create(&o, &be, &err) == LOCO_OK);
    CHECK(loco_backend_device(be) == LOCO_DEVICE_CPU);
    CHECK(loco_backend_act_dtype(be) == LOCO_F32); /* whatever opts say */
    CHECK(strstr(loco_backend_describe(be), "cpu (3 threads") == loco_backend_describe(be));
    CHECK(loco_backend_sync(be, &err) == LOCO_OK);
    loco_backend_destroy(be);

    /* CUDA asked for explicitly: either it works or the error says why. */
    o.device = LOCO_DEVICE_CUDA;
    loco_status st = loco_backend_create(&o, &be, &err);
    int have_gpu = st == LOCO_OK;
    if (have_gpu) {
        CHECK(loco_backend_device(be) == LOCO_DEVICE_CUDA);
        loco_backend_destroy(be);
    } else {
        CHECK(be == NULL);
        CHECK(st != LOCO_EINVAL);
        CHECK_MSG(strstr(err.msg, "cuda") != NULL, "%s", err.msg);
    }
    /* AUTO: CUDA where it works, else the CPU with the reason in the description. */
    o.device = LOCO_DEVICE_AUTO;
    CHECK(loco_backend_create(&o, &be, &err) == LOCO_OK);
    CHECK(loco_backend_device(be) == (have_gpu ? LOCO_DEVICE_CUDA : LOCO_DEVICE_CPU));
    if (!have_gpu) CHECK(strstr(loco_backend_describe(be), "cuda not used") != NULL);
    loco_backend_destroy(be);
    CHECK(loco_backend_create(NULL, &be, &err) == LOCO_OK); /* NULL opts: the defaults */
    loco_backend_destroy(be);
}

TEST(create_rejects_bad_opts) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    loco_backend *be = (loco_backend *)&o;
    loco_err err;
    o.num_threads = -1;
    CHECK(fails_with(loco_backend_create(&o, &be, &err), &err, LOCO_EINVAL, "backend_create"));
    CHECK(be == NULL);
    loco_backend_opts_init(&o);
    o.device = (loco_device)17;
    CHECK(fails_with(loco_backend_create(&o, &be, &err), &err, LOCO_EINVAL, "backend_create"));
    loco_backend_opts_init(&o);
    o.act_dtype = LOCO_I32;
    CHECK(fails_with(loco_backend_create(&o, &be, &err), &err, LOCO_EINVAL, "backend_create"));
    CHECK(fails_with(loco_backend_create(NULL, NULL, &err), &err, LOCO_EINVAL, "backend_create"));
}

TEST(tensor_basics_and_shape_str) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    int64_t s[4] = {2, 4, 8, 8};
    loco_tensor t;
    loco_err err;
    CHECK(loco_tensor_alloc_act(be, 4, s, &t, &err) == LOCO_OK);
    CHECK(t.dtype == LOCO_F32 && t.owns == 1 && t.be == be && t.data != NULL);
    CHECK(loco_tensor_numel(&t) == 512);
    CHECK(loco_tensor_nbytes(&t) == 2048);
    char buf[64];
    CHECK(strcmp(loco_tensor_shape_str(&t, buf, sizeof buf), "[2, 4, 8, 8] F32") == 0);
    loco_tensor u = t;
    CHECK(loco_tensor_same_shape(&t, &u));
    u.shape[3] = 7;
    CHECK(!loco_tensor_same_shape(&t, &u));
    loco_tensor_free(&t);
    CHECK(t.data == NULL && t.ndim == 0 && t.owns == 0);
    loco_tensor_free(&t); /* a zeroed struct is fine */
    int64_t bad[2] = {3, -1};
    CHECK(fails_with(loco_tensor_alloc(be, LOCO_F32, 2, bad, &t, &err), &err, LOCO_EINVAL, "tensor_alloc"));
    CHECK(fails_with(loco_tensor_alloc(be, LOCO_F32, 7, s, &t, &err), &err, LOCO_EINVAL, "tensor_alloc"));
    int64_t zero[2] = {0, 5};
    CHECK(loco_tensor_alloc(be, LOCO_F32, 2, zero, &t, &err) == LOCO_OK); /* empty is allowed */
    CHECK(loco_tensor_numel(&t) == 0);
    CHECK(loco_fill(be, &t, 1.0f, &err) == LOCO_OK);
    loco_tensor_free(&t);
    loco_backend_destroy(be);
}

TEST(views_and_slice0_share_data) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    float h[24];
    for (int i = 0; i < 24; i++) h[i] = (float)i;
    int64_t s[3] = {4, 3, 2};
    loco_tensor t, v, sl;
    CHECK(make_tensor(be, 3, s, h, &t) == 0);
    loco_err err;
    int64_t vs[2] = {2, 5};
    CHECK(loco_tensor_view(&t, 7, 2, vs, &v, &err) == LOCO_OK);
    CHECK(v.owns == 0 && v.data == (float *)t.data + 7 && v.be == be);
    float *gv = download(&v);
    for (int i = 0; i < 10; i++) CHECK(gv[i] == (float)(7 + i));
    free(gv);
    CHECK(loco_tensor_slice0(&t, 1, 2, &sl, &err) == LOCO_OK);
    CHECK(sl.ndim == 3 && sl.shape[0] == 2 && sl.shape[1] == 3 && sl.data == (float *)t.data + 6);
    /* an op writing into a slice changes only those rows of the parent */
    CHECK(loco_fill(be, &sl, -1.0f, &err) == LOCO_OK);
    float *gt = download(&t);
    for (int i = 0; i < 24; i++) CHECK(gt[i] == (i >= 6 && i < 18 ? -1.0f : (float)i));
    free(gt);
    loco_tensor_free(&sl); /* freeing a view leaves the parent alone */
    CHECK(t.data != NULL);
    int64_t big[1] = {18};
    CHECK(fails_with(loco_tensor_view(&t, 7, 1, big, &v, &err), &err, LOCO_EINVAL, "tensor_view"));
    CHECK(fails_with(loco_tensor_view(&t, -1, 1, vs, &v, &err), &err, LOCO_EINVAL, "tensor_view"));
    CHECK(fails_with(loco_tensor_slice0(&t, 3, 2, &sl, &err), &err, LOCO_EINVAL, "tensor_slice0"));
    CHECK(fails_with(loco_tensor_slice0(&t, -1, 1, &sl, &err), &err, LOCO_EINVAL, "tensor_slice0"));
    CHECK(loco_tensor_slice0(&t, 4, 0, &sl, &err) == LOCO_OK && sl.shape[0] == 0);
    loco_tensor_free(&t);
    loco_backend_destroy(be);
}

TEST(upload_converts_f16_bf16_f64) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    enum { N = 70001 };
    uint16_t *h16 = malloc(N * 2), *hb = malloc(N * 2);
    double *h64 = malloc(N * 8);
    trng r = {201};
    for (int i = 0; i < N; i++) {
        float f = trng_uniform(&r) * 1000.0f;
        h16[i] = loco_f32_to_f16(f);
        hb[i] = loco_f32_to_bf16(f);
        h64[i] = (double)f * 1.000000123;
    }
    int64_t s[1] = {N};
    loco_tensor t, t16;
    loco_err err;
    CHECK(loco_tensor_alloc(be, LOCO_F32, 1, s, &t, &err) == LOCO_OK);
    CHECK(loco_tensor_upload(&t, h16, LOCO_F16, &err) == LOCO_OK);
    float *g = download(&t);
    for (int i = 0; i < N; i++) CHECK(g[i] == loco_f16_to_f32(h16[i]));
    free(g);
    CHECK(loco_tensor_upload(&t, hb, LOCO_BF16, &err) == LOCO_OK);
    g = download(&t);
    for (int i = 0; i < N; i++) CHECK(g[i] == loco_bf16_to_f32(hb[i]));
    free(g);
    CHECK(loco_tensor_upload(&t, h64, LOCO_F64, &err) == LOCO_OK);
    g = download(&t);
    for (int i = 0; i < N; i++) CHECK(g[i] == (float)h64[i]);
    free(g);
    /* into an F16 tensor from f32, and back out */
    CHECK(loco_tensor_alloc(be, LOCO_F16, 1, s, &t16, &err) == LOCO_OK);
    float *hf = malloc(N * 4);
    for (int i = 0; i < N; i++) hf[i] = (float)h64[i];
    CHECK(loco_tensor_upload(&t16, hf, LOCO_F32, &err) == LOCO_OK);
    g = download(&t16);
    for (int i = 0; i < N; i++) CHECK(g[i] == loco_f16_to_f32(loco_f32_to_f16(hf[i])));
    free(g);
    int32_t ints[4] = {1, 2, 3, 4};
    CHECK(fails_with(loco_tensor_upload(&t, ints, LOCO_I32, &err), &err, LOCO_EINVAL, "tensor_upload"));
    free(h16), free(hb), free(h64), free(hf);
    loco_tensor_free(&t), loco_tensor_free(&t16);
    loco_backend_destroy(be);
}

TEST(memory_accounting_and_allocator_reuse) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    size_t cur, peak;
    loco_backend_memory(be, &cur, &peak);
    CHECK(cur == 0 && peak == 0);
    int64_t big[2] = {1024, 1000}, small[1] = {10};
    loco_tensor a, b;
    loco_err err;
    CHECK(loco_tensor_alloc(be, LOCO_F32, 2, big, &a, &err) == LOCO_OK);
    CHECK(loco_tensor_alloc(be, LOCO_F32, 1, small, &b, &err) == LOCO_OK);
    loco_backend_memory(be, &cur, &peak);
    CHECK(cur == 4096000 + 40 && peak == cur);
    void *pa = a.data;
    loco_tensor_free(&a);
    loco_backend_memory(be, &cur, &peak);
    CHECK(cur == 40 && peak == 4096000 + 40);
    /* the same size again comes back from the cache: same block, no new page faults */
    CHECK(loco_tensor_alloc(be, LOCO_F32, 2, big, &a, &err) == LOCO_OK);
    CHECK(a.data == pa);
    /* so does a slightly smaller one of the same size class */
    loco_tensor_free(&a);
    int64_t near[2] = {1024, 999};
    CHECK(loco_tensor_alloc(be, LOCO_F32, 2, near, &a, &err) == LOCO_OK);
    CHECK(a.data == pa);
    loco_backend_memory(be, &cur, &peak);
    CHECK(cur == 1024 * 999 * 4 + 40 && peak == 4096000 + 40);
    loco_tensor_free(&a), loco_tensor_free(&b);
    loco_backend_memory(be, &cur, NULL);
    CHECK(cur == 0);
    loco_backend_destroy(be);
}

/* ---- validation ------------------------------------------------------------------------------ */

TEST(validation_every_op_names_itself) {
    loco_backend *be = cpu_backend(0), *other = cpu_backend(1);
    CHECK(be && other);
    loco_err err;
    loco_tensor x, w, y, bias, q, k, o, i16, alien, g;
    int64_t xs[3] = {2, 5, 8}, ws[2] = {6, 8}, ys[3] = {2, 5, 6}, bs[1] = {6}, gs[1] = {5};
    make_tensor(be, 3, xs, NULL, &x);
    make_tensor(be, 2, ws, NULL, &w);
    make_tensor(be, 3, ys, NULL, &y);
    make_tensor(be, 1, bs, NULL, &bias);
    make_tensor(be, 1, gs, NULL, &g);
    make_tensor(other, 3, xs, NULL, &alien);
    CHECK(loco_tensor_alloc(be, LOCO_F16, 3, xs, &i16, &err) == LOCO_OK);
    int64_t qs[3] = {2, 4, 8}, ks[3] = {3, 6, 8};
    make_tensor(be, 3, qs, NULL, &q);
    make_tensor(be, 3, ks, NULL, &k);
    make_tensor(be, 3, qs, NULL, &o);

#define BAD(call, op) CHECK_MSG(fails_with((call), &err, LOCO_EINVAL, op), "%s", #call)
    /* linear */
    BAD(loco_linear(be, &x, &x, &w, NULL, LOCO_ACT_NONE, &err), "linear");        /* y shape */
    BAD(loco_linear(be, &y, &y, &w, NULL, LOCO_ACT_NONE, &err), "linear");        /* x width */
    BAD(loco_linear(be, &y, &x, &w, &g, LOCO_ACT_NONE, &err), "linear");          /* bias size */
    BAD(loco_linear(be, &y, &i16, &w, NULL, LOCO_ACT_NONE, &err), "linear");      /* dtype */
    BAD(loco_linear(be, &y, &alien, &w, NULL, LOCO_ACT_NONE, &err), "linear");    /* other backend */
    BAD(loco_linear(be, &y, &x, &w, NULL, (loco_act)99, &err), "linear");         /* activation */
    BAD(loco_linear(be, &y, NULL, &w, NULL, LOCO_ACT_NONE, &err), "linear");      /* NULL */
    BAD(loco_linear(NULL, &y, &x, &w, NULL, LOCO_ACT_NONE, &err), "linear");      /* no backend */
    CHECK(strstr(err.msg, "backend") != NULL);
    /* linear_accumulate: the same checks, under its own name */
    BAD(loco_linear_accumulate(be, &x, &x, &w, NULL, &err), "linear_accumulate");   /* y shape */
    BAD(loco_linear_accumulate(be, &y, &x, &w, &g, &err), "linear_accumulate");     /* bias size */
    BAD(loco_linear_accumulate(be, &y, &i16, &w, NULL, &err), "linear_accumulate"); /* dtype */
    BAD(loco_linear_accumulate(be, &y, &y, &w, NULL, &err), "linear_accumulate");   /* x width (and alias) */
    /* ln_linear: the linear's checks and the LayerNorm's (gamma/beta [K] of x's dtype, eps) */
    {
        loco_tensor gk;
        int64_t kdim[1] = {8};
        make_tensor(be, 1, kdim, NULL, &gk);
        CHECK(loco_ln_linear(be, &y, &x, &gk, &gk, 1e-5f, &w, &bias, 0, &err) == LOCO_OK);
        BAD(loco_ln_linear(be, &x, &x, &gk, NULL, 1e-5f, &w, NULL, 0, &err), "ln_linear");    /* y shape */
        BAD(loco_ln_linear(be, &y, &x, NULL, NULL, 1e-5f, &w, NULL, 0, &err), "ln_linear");   /* no gamma */
        BAD(loco_ln_linear(be, &y, &x, &g, NULL, 1e-5f, &w, NULL, 0, &err), "ln_linear");     /* gamma size */
        BAD(loco_ln_linear(be, &y, &x, &gk, &g, 1e-5f, &w, NULL, 0, &err), "ln_linear");      /* beta size */
        BAD(loco_ln_linear(be, &y, &x, &gk, NULL, -1.0f, &w, NULL, 0, &err), "ln_linear");    /* eps */
        BAD(loco_ln_linear(be, &y, &i16, &gk, NULL, 1e-5f, &w, NULL, 0, &err), "ln_linear");  /* dtype */
        BAD(loco_ln_linear(be, &y, &x, &gk, NULL, 1e-5f, &w, NULL, 1, &err), "ln_linear_geglu"); /* y: w's 6 / 2 */
        BAD(loco_ln_linear(NULL, &y, &x, &gk, NULL, 1e-5f, &w, NULL, 0, &err), "ln_linear");  /* no backend */
        loco_tensor_free(&gk);
    }
    /* the channel-major linears: x [2, 5, 8] is [B, K = 5, L = 8] for w [6, 8]'s K = 8: wrong */
    BAD(loco_linear_from_channels(be, &y, &x, &w, NULL, &err), "linear_from_channels");     /* x layout */
    BAD(loco_linear_from_channels(be, &y, &i16, &w, NULL, &err), "linear_from_channels");   /* dtype */
    BAD(loco_linear_from_channels(NULL, &y, &x, &w, NULL, &err), "linear_from_channels");   /* no backend */
    BAD(loco_linear_to_channels(be, &x, &x, &w, NULL, NULL, &err), "linear_to_channels");   /* y shape, alias */
    BAD(loco_linear_to_channels(be, &y, &x, &w, &g, NULL, &err), "linear_to_channels");     /* y shape */
    BAD(loco_linear_to_channels(be, &y, &alien, &w, NULL, NULL, &err), "linear_to_channels"); /* other backend */
    /* conv2d */
    {
        loco_tensor cx, cw, cy;
        int64_t cxs[4] = {1, 3, 6, 6}, cws[4] = {4, 3, 3, 3}, cys[4] = {1, 4, 6, 6};
        make_tensor(be, 4, cxs, NULL, &cx);
        make_tensor(be, 4, cws, NULL, &cw);
        make_tensor(be, 4, cys, NULL, &cy);
        loco_conv2d_params p = {1, {1, 1, 1, 1}}, p0 = {1, {0, 0, 0, 0}}, ps = {0, {1, 1, 1, 1}},
                           pn = {1, {-1, 0, 0, 0}};
        CHECK(loco_conv2d(be, &cy, &cx, &cw, NULL, &p, &err) == LOCO_OK);
        BAD(loco_conv2d(be, &cy, &cx, &cw, NULL, &p0, &err), "conv2d"); /* y is 6x6, want 4x4 */
        BAD(loco_conv2d(be, &cy, &cx, &cw, NULL, &ps, &err), "conv2d"); /* stride 0 */
        BAD(loco_conv2d(be, &cy, &cx, &cw, NULL, &pn, &err), "conv2d"); /* negative pad */
        BAD(loco_conv2d(be, &cy, &cx, &cw, NULL, NULL, &err), "conv2d");
        BAD(loco_conv2d(be, &cy, &cx, &cw, &bias, &p, &err), "conv2d"); /* bias [6] for 4 channels */
        BAD(loco_conv2d(be, &cy, &cy, &cw, NULL, &p, &err), "conv2d");   /* 4 channels in, w wants 3 */
        BAD(loco_conv2d(be, &cy, &x, &cw, NULL, &p, &err), "conv2d");    /* x not 4-D */
        BAD(loco_conv2d(be, &cx, &cx, &cw, NULL, &p, &err), "conv2d");   /* in place */
        loco_tensor_free(&cx), loco_tensor_free(&cw), loco_tensor_free(&cy);
    }
    /* norms */
    {
        loco_tensor nx, ny, gm, bt;
        int64_t nxs[4] = {2, 6, 3, 3}, cs[1] = {6};
        make_tensor(be, 4, nxs, NULL, &nx);
        make_tensor(be, 4, nxs, NULL, &ny);
        make_tensor(be, 1, cs, NULL, &gm);
        make_tensor(be, 1, cs, NULL, &bt);
        CHECK(loco_group_norm(be, &ny, &nx, 3, &gm, &bt, 1e-5f, 1, &err) == LOCO_OK);
        BAD(loco_group_norm(be, &ny, &nx, 4, &gm, &bt, 1e-5f, 0, &err), "group_norm"); /* 6 % 4 */
        BAD(loco_group_norm(be, &ny, &nx, 0, &gm, &bt, 1e-5f, 0, &err), "group_norm");
        BAD(loco_group_norm(be, &ny, &nx, 3, &g, &bt, 1e-5f, 0, &err), "group_norm"); /* gamma [5] for 6 */
        BAD(loco_group_norm(be, &ny, &nx, 3, &gm, NULL, 1e-5f, 0, &err), "group_norm");
        BAD(loco_group_norm(be, &ny, &nx, 3, &gm, &bt, -1.0f, 0, &err), "group_norm");
        BAD(loco_group_norm(be, &y, &nx, 3, &gm, &bt, 1e-5f, 0, &err), "group_norm"); /* y shape */
        BAD(loco_layer_norm(be, &x, &x, &gm, NULL, 1e-5f, &err), "layer_norm");       /* gamma [6] vs C 8 */
        BAD(loco_layer_norm(be, &y, &x, &bias, NULL, 1e-5f, &err), "layer_norm");     /* y shape */
        BAD(loco_layer_norm(be, &x, &x, NULL, NULL, 1e-5f, &err), "layer_norm");
        loco_tensor_free(&nx), loco_tensor_free(&ny), loco_tensor_free(&gm), loco_tensor_free(&bt);
    }
    /* attention: q [2,4,8], k/v [3,6,8] */
    {
        loco_attention_params p = {2, 0.5f, 0, NULL, 0};
        int idx_ok[2] = {2, 0}, idx_bad[2] = {0, 3}, idx_neg[2] = {-1, 0};
        BAD(loco_attention(be, &o, &q, &k, &k, &p, &err), "attention"); /* Bk 3 != B 2 without kv_index */
        p.kv_index = idx_ok;
        CHECK(loco_attention(be, &o, &q, &k, &k, &p, &err) == LOCO_OK);
        p.kv_index = idx_bad;
        BAD(loco_attention(be, &o, &q, &k, &k, &p, &err), "attention");
        CHECK(strstr(err.msg, "kv_index[1]") != NULL);
        p.kv_index = idx_neg;
        BAD(loco_attention(be, &o, &q, &k, &k, &p, &err), "attention");
        p.kv_index = idx_ok;
        p.heads = 3; /* 8 % 3 */
        BAD(loco_attention(be, &o, &q, &k, &k, &p, &err), "attention");
        p.heads = 2;
        BAD(loco_attention(be, &o, &q, &k, &x, &p, &err), "attention"); /* v shape != k */
        BAD(loco_attention(be, &q, &q, &k, &k, &p, &err), "attention"); /* in place */
        BAD(loco_attention(be, &y, &q, &k, &k, &p, &err), "attention"); /* out shape */
        BAD(loco_attention(be, &o, &q, &k, &k, NULL, &err), "attention");
        p.scale = INFINITY;
        BAD(loco_attention(be, &o, &q, &k, &k, &p, &err), "attention");
    }
    /* elementwise and layout */
    BAD(loco_activation(be, &y, &x, LOCO_ACT_SILU, &err), "activation");
    BAD(loco_activation(be, &x, &x, (loco_act)-1, &err), "activation");
    {
        loco_tensor half;
        int64_t hs[3] = {2, 5, 4};
        make_tensor(be, 3, hs, NULL, &half);
        CHECK(loco_geglu(be, &half, &x, &err) == LOCO_OK);
        BAD(loco_geglu(be, &x, &x, &err), "geglu");
        BAD(loco_geglu(be, &y, &x, &err), "geglu");
        /* partial overlap: a view that starts inside x */
        loco_tensor part;
        int64_t one[1] = {4};
        CHECK(loco_tensor_view(&x, 4, 1, one, &part, &err) == LOCO_OK);
        loco_tensor xv;
        int64_t xvs[1] = {4};
        CHECK(loco_tensor_view(&x, 0, 1, xvs, &xv, &err) == LOCO_OK);
        loco_tensor xv2;
        CHECK(loco_tensor_view(&x, 2, 1, xvs, &xv2, &err) == LOCO_OK);
        BAD(loco_activation(be, &xv2, &xv, LOCO_ACT_SILU, &err), "activation"); /* overlaps by 2 */
        CHECK(loco_activation(be, &part, &xv, LOCO_ACT_SILU, &err) == LOCO_OK); /* adjacent, disjoint */
        loco_tensor_free(&half);
    }
    BAD(loco_add(be, &y, &x, &x, &err), "add");
    BAD(loco_add(be, &x, &x, &i16, &err), "add");
    {
        loco_tensor cb;
        int64_t cbs[2] = {2, 4};
        make_tensor(be, 2, cbs, NULL, &cb);
        BAD(loco_add_channel_bias(be, &x, &x, &cb, &err), "add_channel_bias"); /* [2,4] for C=5 */
        loco_tensor_free(&cb);
    }
    {
        const loco_tensor *terms[2] = {&x, &y};
        float coef[2] = {1, 1}, nanc[1] = {NAN};
        BAD(loco_lincomb(be, &x, 2, terms, coef, &err), "lincomb");
        BAD(loco_lincomb(be, &x, 0, terms, coef, &err), "lincomb");
        BAD(loco_lincomb(be, &x, 1, terms, nanc, &err), "lincomb");
        BAD(loco_lincomb(be, &x, 1, terms, NULL, &err), "lincomb");
    }
    BAD(loco_copy(be, &y, &x, &err), "copy");
    BAD(loco_fill(be, &i16, 0.0f, &err), "fill");
    BAD(loco_fill(be, &alien, 0.0f, &err), "fill");
    BAD(loco_transpose12(be, &y, &x, &err), "transpose12");
    BAD(loco_concat(be, &y, &x, &x, 2, &err), "concat");
    BAD(loco_concat(be, &y, &x, &x, 5, &err), "concat");
    BAD(loco_upsample_nearest2x(be, &y, &x, &err), "upsample_nearest2x");
    {
        int32_t ids[3] = {0, 1, 2};
        BAD(loco_embedding(be, &y, &w, ids, 3, &err), "embedding"); /* y holds 10 rows of 6, n says 3 */
        BAD(loco_embedding(be, &y, &x, ids, 10, &err), "embedding"); /* table not 2-D */
        BAD(loco_embedding(be, &y, &w, NULL, 10, &err), "embedding");
    }
    {
        int32_t ch[2] = {0, 8};
        float val[2] = {1, 2};
        BAD(loco_set_channels(be, &x, ch, val, 2, &err), "set_channels"); /* channel 8 of 8 */
        BAD(loco_set_channels(be, &x, ch, NULL, 1, &err), "set_channels");
        CHECK(loco_set_channels(be, &x, ch, val, 1, &err) == LOCO_OK);
    }
    {
        loco_tensor freed = x;
        freed.data = NULL;
        BAD(loco_fill(be, &freed, 0.0f, &err), "fill");
        CHECK(strstr(err.msg, "no data") != NULL);
    }
#undef BAD
    loco_tensor_free(&x), loco_tensor_free(&w), loco_tensor_free(&y), loco_tensor_free(&bias), loco_tensor_free(&g);
    loco_tensor_free(&q), loco_tensor_free(&k), loco_tensor_free(&o), loco_tensor_free(&i16);
    loco_tensor_free(&alien);
    loco_backend_destroy(be);
    loco_backend_destroy(other);
}

/* The remaining checks of backend_ops.c, one call each. */
TEST(validation_rank_alias_and_range_checks) {
    loco_backend *be = cpu_backend(0);
    CHECK(be);
    loco_err err;
    loco_tensor x3, w2, w3, y3, x4, w4, q, k2, kw, o, s0, i32;
    int64_t s3[3] = {2, 5, 8}, sw2[2] = {6, 8}, sw3[3] = {6, 8, 1}, sy3[3] = {2, 5, 6};
    int64_t s4[4] = {1, 2, 3, 3}, sw4[4] = {2, 2, 5, 5}, sq[3] = {2, 4, 8}, sk2[2] = {4, 8};
    int64_t skw[3] = {2, 4, 6}, sk0[3] = {2, 0, 8};
    make_tensor(be, 3, s3, NULL, &x3);
    make_tensor(be, 2, sw2, NULL, &w2);
    make_tensor(be, 3, sw3, NULL, &w3);
    make_tensor(be, 3, sy3, NULL, &y3);
    make_tensor(be, 4, s4, NULL, &x4);
    make_tensor(be, 4, sw4, NULL, &w4);
    make_tensor(be, 3, sq, NULL, &q);
    make_tensor(be, 2, sk2, NULL, &k2);
    make_tensor(be, 3, skw, NULL, &kw);
    make_tensor(be, 3, sq, NULL, &o);
    make_tensor(be, 0, NULL, NULL, &s0);
    CHECK(loco_tensor_alloc(be, LOCO_I32, 3, s3, &i32, &err) == LOCO_OK);
#define BAD(call, op) CHECK_MSG(fails_with((call), &err, LOCO_EINVAL, op), "%s", #call)
    BAD(loco_linear(be, &y3, &x3, &w3, NULL, LOCO_ACT_NONE, &err), "linear"); /* w not 2-D */
    {
        loco_tensor yb; /* y overlapping the bias */
        int64_t one[1] = {6};
        CHECK(loco_tensor_view(&y3, 0, 1, one, &yb, &err) == LOCO_OK);
        BAD(loco_linear(be, &y3, &x3, &w2, &yb, LOCO_ACT_NONE, &err), "linear");
    }
    loco_conv2d_params p = {1, {0, 0, 0, 0}};
    BAD(loco_conv2d(be, &x4, &x4, &w3, NULL, &p, &err), "conv2d"); /* w not 4-D */
    BAD(loco_conv2d(be, &o, &x4, &w4, NULL, &p, &err), "conv2d");  /* 5x5 kernel, 3x3 input */
    CHECK(strstr(err.msg, "does not fit") != NULL);
    BAD(loco_group_norm(be, &k2, &k2, 1, &w2, &w2, 1e-5f, 0, &err), "group_norm"); /* gamma not [C] */
    {
        loco_tensor v1, v2;
        int64_t one[1] = {5};
        make_tensor(be, 1, one, NULL, &v1);
        make_tensor(be, 1, one, NULL, &v2);
        BAD(loco_group_norm(be, &v1, &v2, 1, &v1, &v1, 1e-5f, 0, &err), "group_norm"); /* x [C] only */
        loco_tensor_free(&v1), loco_tensor_free(&v2);
    }
    {
        loco_tensor g8;
        int64_t c8[1] = {8};
        make_tensor(be, 1, c8, NULL, &g8);
        BAD(loco_layer_norm(be, &x3, &x3, &g8, NULL, NAN, &err), "layer_norm");
        BAD(loco_layer_norm(be, &s0, &s0, &g8, NULL, 1e-5f, &err), "layer_norm"); /* scalar x */
        CHECK(loco_layer_norm(be, &x3, &x3, &g8, &g8, 1e-5f, &err) == LOCO_OK); /* in place; gamma may be beta */
        loco_tensor_free(&g8);
    }
    loco_attention_params ap = {2, 1.0f, 0, NULL, 0};
    BAD(loco_attention(be, &o, &k2, &kw, &kw, &ap, &err), "attention"); /* q not 3-D */
    BAD(loco_attention(be, &o, &q, &k2, &k2, &ap, &err), "attention"); /* k not 3-D */
    BAD(loco_attention(be, &o, &q, &kw, &kw, &ap, &err), "attention"); /* width 6 vs 8 */
    {
        loco_tensor k0;
        CHECK(loco_tensor_alloc(be, LOCO_F32, 3, sk0, &k0, &err) == LOCO_OK);
        BAD(loco_attention(be, &o, &q, &k0, &k0, &ap, &err), "attention"); /* no keys */
        loco_tensor_free(&k0);
        loco_tensor kq;
        CHECK(loco_tensor_view(&o, 0, 3, sq, &kq, &err) == LOCO_OK); /* k is out itself */
        BAD(loco_attention(be, &o, &q, &kq, &q, &ap, &err), "attention");
    }
    {
        loco_tensor part; /* a view starting inside x3: partial overlap with x3 */
        int64_t sm[3] = {1, 5, 8};
        CHECK(loco_tensor_view(&x3, 8, 3, sm, &part, &err) == LOCO_OK);
        loco_tensor x3h;
        CHECK(loco_tensor_view(&x3, 0, 3, sm, &x3h, &err) == LOCO_OK);
        BAD(loco_add(be, &part, &x3h, &x3h, &err), "add");
    }
    BAD(loco_add_channel_bias(be, &k2, &k2, &w2, &err), "add_channel_bias"); /* x [4,8] wants bias [4,8] */
    BAD(loco_add_channel_bias(be, &s0, &s0, &w2, &err), "add_channel_bias"); /* x scalar */
    {
        const loco_tensor *terms[1] = {&x3};
        float c[1] = {1};
        BAD(loco_lincomb(be, &x3, 1, NULL, c, &err), "lincomb");
        BAD(loco_lincomb(be, &i32, 1, terms, c, &err), "lincomb");
    }
    BAD(loco_copy(be, &x3, &i32, &err), "copy");
    BAD(loco_concat(be, &x3, &x3, &w2, 0, &err), "concat"); /* ranks differ */
    BAD(loco_concat(be, &x3, &x3, &x3, -4, &err), "concat");
    BAD(loco_upsample_nearest2x(be, &x4, &x4, &err), "upsample_nearest2x");
    BAD(loco_transpose12(be, &x3, &x3, &err), "transpose12"); /* [2,5,8] wants y [2,8,5] */
    {
        int32_t ids[10] = {0};
        BAD(loco_embedding(be, &y3, &w2, ids, -1, &err), "embedding");
        BAD(loco_embedding(be, &y3, &w2, ids, 10, &err), "embedding"); /* rows of 6, table rows of 8 */
    }
    {
        int32_t ch[1] = {0};
        float v[1] = {0};
        BAD(loco_set_channels(be, &x3, ch, v, -1, &err), "set_channels");
        BAD(loco_set_channels(be, &s0, ch, v, 1, &err), "set_channels");
    }
#undef BAD
    loco_tensor *all[] = {&x3, &w2, &w3, &y3, &x4, &w4, &q, &k2, &kw, &o, &s0, &i32};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) loco_tensor_free(all[i]);
    loco_backend_destroy(be);
}

/* A backend without device self-tests (the CPU one) says so; the report buffer is required. */
TEST(selftest_without_checks_reports_so) {
    loco_backend *be = cpu_backend(0);
    CHECK(be != NULL);
    char report[128];
    loco_err err;
    CHECK(loco_backend_selftest(be, report, sizeof report, &err) == LOCO_OK);
    CHECK_MSG(strstr(report, "no self-tests") != NULL, "%s", report);
    CHECK(fails_with(loco_backend_selftest(be, NULL, 0, &err), &err, LOCO_EINVAL, "backend_selftest"));
    CHECK(fails_with(loco_backend_selftest(NULL, report, sizeof report, &err), &err, LOCO_EINVAL, "backend_selftest"));
    loco_backend_destroy(be);
}
