/* test_unet_graph.c: the UNet's graph cache (engine/unet_graph.c) and the graph API contract of
 * backend.h, checked on the CPU with a recording backend that behaves like CUDA graphs do
 * (graph_mock_util.h). A UNet call served by a replay gives the same numbers as the plain path
 * only if the cache copies inputs into its fixed tensors, keeps intermediates in the pool,
 * re-records when text K/V, kv_index tables or weights change, falls back cleanly when recording
 * fails, and, when memory runs short, gives back every shape but the one in use. The CUDA side
 * (stream capture legality, cudaGraphExecUpdate, the allocator asking the reclaimers) is checked
 * by test_cuda_pipeline on a GPU and on the emulator. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph_mock_util.h"
#include "loco_test.h"
#include "model_ref_util.h"
#include "pipeline.h"
#include "pipeline_variant.h"
#include "unet.h"

/* ---- helpers ------------------------------------------------------------------------------------ */

static int upload_vals(loco_backend *be, int nd, const int64_t *shape, const float *h, loco_tensor *t) {
    loco_err e;
    loco_err_clear(&e);
    if (loco_tensor_alloc_act(be, nd, shape, t, &e) || loco_tensor_upload(t, h, LOCO_F32, &e)) {
        fprintf(stderr, "upload: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static void fill_rand(float *h, size_t n, uint64_t seed, float scale) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 3;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = ((float)(s >> 40) / 16777216.0f - 0.5f) * scale;
    }
}

static int same(const loco_tensor *a, const loco_tensor *b) {
    if (loco_tensor_numel(a) != loco_tensor_numel(b)) return 0;
    float *x = mr_download(a), *y = mr_download(b);
    int eq = x && y && memcmp(x, y, (size_t)loco_tensor_numel(a) * sizeof *x) == 0;
    free(x);
    free(y);
    return eq;
}

typedef struct ufix {
    loco_unet *u;
    loco_weights *w;
    int64_t sshape[4], tshape[3];
} ufix;

static int ufix_open(ufix *f, loco_backend *be, const char *model) {
    memset(f, 0, sizeof *f);
    char dir[512];
    mr_model_dir(dir, sizeof dir, model, "unet");
    loco_err e;
    loco_err_clear(&e);
    if (loco_unet_load_dir(be, dir, NULL, &f->u, &e)) {
        fprintf(stderr, "%s: %s\n", dir, e.msg);
        return -1;
    }
    const loco_unet_config *c = loco_unet_get_config(f->u);
    const int64_t side = c->sample_size > 0 ? c->sample_size : 8;
    const int64_t s[4] = {4, c->in_channels, side, side}, t[3] = {4, 7, c->cross_attention_dim[0]};
    memcpy(f->sshape, s, sizeof s);
    memcpy(f->tshape, t, sizeof t);
    return 0;
}

/* One call's inputs built from seeds, on backend be, and the call. */
static loco_status call_unet(loco_unet *u, const ufix *f, uint64_t sample_seed, uint64_t text_seed, float t,
                             const int *text_index, loco_tensor *out, loco_err *err) {
    loco_backend *be = loco_unet_backend(u);
    size_t ns = (size_t)(f->sshape[0] * f->sshape[1] * f->sshape[2] * f->sshape[3]);
    size_t nt = (size_t)(f->tshape[0] * f->tshape[1] * f->tshape[2]);
    float *hs = malloc(ns * sizeof *hs), *ht = malloc(nt * sizeof *ht);
    fill_rand(hs, ns, sample_seed, 2.0f);
    fill_rand(ht, nt, text_seed, 1.0f);
    loco_tensor x = {0}, txt = {0};
    loco_unet_text_kv kv;
    memset(&kv, 0, sizeof kv);
    loco_status s = upload_vals(be, 4, f->sshape, hs, &x) || upload_vals(be, 3, f->tshape, ht, &txt)
                        ? loco_err_set(err, LOCO_EINVAL, "upload failed")
                        : LOCO_OK;
    if (!s) s = loco_unet_compute_text_kv(u, &txt, NULL, &kv, err);
    if (!s) {
        float ts[4] = {t, t, t, t};
        loco_unet_inputs in;
        loco_unet_inputs_init(&in);
        in.sample = &x;
        in.timesteps = ts;
        in.encoder_hidden_states = &txt;
        in.text_index = text_index;
        in.text_kv = &kv;
        s = loco_unet_forward(u, &in, out, err);
    }
    loco_unet_text_kv_free(&kv);
    loco_tensor_free(&x);
    loco_tensor_free(&txt);
    free(hs);
    free(ht);
    return s;
}

/* ---- tests -------------------------------------------------------------------------------------- */

TEST(graph_api_unsupported_on_cpu) {
    loco_backend *cpu = mr_cpu();
    CHECK(cpu != NULL);
    loco_graph *g = (loco_graph *)1;
    loco_err e;
    loco_err_clear(&e);
    CHECK(!loco_backend_has_graphs(cpu));
    CHECK(loco_graph_new(cpu, &g, &e) == LOCO_EUNSUPPORTED && g == NULL);
    CHECK_MSG(strstr(e.msg, "not supported") != NULL, "%s", e.msg);
    loco_graph_free(NULL);
    /* the VAE's compute dtype on the CPU is F32 whatever the config asks */
    loco_vae_config vc;
    loco_vae_config_init(&vc);
    vc.force_upcast = 1;
    CHECK(loco_vae_compute_dtype(cpu, &vc, LOCO_BF16) == LOCO_F32);
    CHECK(loco_backend_accepts_dtype(cpu, LOCO_F32) && !loco_backend_accepts_dtype(cpu, LOCO_F16));
    loco_backend_destroy(cpu);
}

/* Warm-up, record, replays with fresh inputs each call, a changed text_index, and graphs off:
 * every result equals the plain CPU's on the same inputs, bit for bit. */
static void replay_matches(const char *model) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    ufix fm, fc;
    CHECK(ufix_open(&fm, &m->be, model) == 0);
    CHECK(ufix_open(&fc, cpu, model) == 0);
    loco_err e;
    loco_err_clear(&e);
    const int rows[4] = {0, 1, 2, 3}, swapped[4] = {3, 2, 1, 0};
    struct {
        uint64_t ss, ts;
        float t;
        const int *idx;
    } calls[] = {{1, 10, 999, rows}, {2, 10, 951, rows}, {3, 10, 901, rows}, {4, 11, 851, rows},
                 {5, 11, 801, swapped}, {6, 11, 751, swapped}, {7, 12, 701, rows}};
    const int n = (int)(sizeof calls / sizeof calls[0]);
    for (int i = 0; i < n; i++) {
        loco_tensor a = {0}, b = {0};
        CHECK_MSG(call_unet(fm.u, &fm, calls[i].ss, calls[i].ts, calls[i].t, calls[i].idx, &a, &e) == LOCO_OK, "%s",
                  e.msg);
        CHECK_MSG(call_unet(fc.u, &fc, calls[i].ss, calls[i].ts, calls[i].t, calls[i].idx, &b, &e) == LOCO_OK, "%s",
                  e.msg);
        int eq = same(&a, &b);
        loco_tensor_free(&a);
        loco_tensor_free(&b);
        CHECK_MSG(eq, "%s call %d differs from the plain path", model, i);
    }
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(fm.u, &st);
    fprintf(stderr, "%s: %ld captures, %ld replays, %ld plain, %ld launches, pool %zu bytes, last error '%s'\n",
            model, st.captures, st.replays, st.eager_calls, m->launches, st.pool_bytes, st.last_error);
    /* call 0 warms up; each call's text K/V are new tensors: the cache re-records whenever their
     * addresses differ from the recording's, and must never replay a stale binding */
    CHECK(st.eager_calls == 1);
    CHECK(st.replays == n - 1 && m->launches == n - 1);
    CHECK(st.captures >= 2 && st.captures <= n - 1); /* at least: first recording and the swapped rows */
    CHECK(st.shapes == 1 && st.pool_bytes > 0);
    CHECK(st.last_error[0] == 0);
    /* off: recorded graphs are freed and calls run plainly */
    loco_unet_set_graphs(fm.u, 0);
    loco_unet_graph_stats_get(fm.u, &st);
    CHECK(st.pool_bytes == 0 && st.replays == 0);
    loco_tensor a = {0}, b = {0};
    CHECK(call_unet(fm.u, &fm, 9, 10, 500, rows, &a, &e) == LOCO_OK);
    CHECK(call_unet(fc.u, &fc, 9, 10, 500, rows, &b, &e) == LOCO_OK);
    CHECK(same(&a, &b));
    CHECK(m->launches == n - 1);
    loco_tensor_free(&a);
    loco_tensor_free(&b);
    loco_unet_free(fm.u);
    loco_unet_free(fc.u);
    size_t live = 1;
    loco_backend_memory(&m->be, &live, NULL);
    CHECK_MSG(live == 0, "%zu bytes still allocated on the mock backend", live);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
}

TEST(unet_graph_replays_match_plain_sd1) { replay_matches("sd1-tiny"); }
TEST(unet_graph_replays_match_plain_sd2) { replay_matches("sd2-tiny"); }

/* Re-recording is needed when a weight moves (a variant's set_param copies a shared tensor):
 * a replay of the old recording would read the base's weight. */
TEST(unet_graph_rerecords_when_weights_move) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    ufix fm, fc;
    CHECK(ufix_open(&fm, &m->be, "sd1-tiny") == 0);
    CHECK(ufix_open(&fc, cpu, "sd1-tiny") == 0);
    loco_unet *vm = NULL, *vc = NULL;
    loco_err e;
    loco_err_clear(&e);
    CHECK(loco_unet_variant(fm.u, &vm, &e) == LOCO_OK && loco_unet_variant(fc.u, &vc, &e) == LOCO_OK);
    const int rows[4] = {0, 1, 2, 3};
    loco_tensor a = {0}, b = {0};
    for (int i = 0; i < 3; i++) { /* warm-up, record, replay on the variant */
        CHECK(call_unet(vm, &fm, 1, 2, 900, rows, &a, &e) == LOCO_OK);
        loco_tensor_free(&a);
    }
    const char *name = "conv_in.weight";
    const loco_tensor *w = loco_params_find(loco_unet_params(vm), name);
    CHECK(w != NULL);
    size_t nw = (size_t)loco_tensor_numel(w);
    float *h = malloc(nw * sizeof *h);
    fill_rand(h, nw, 77, 0.5f);
    CHECK(loco_unet_set_param(vm, name, h, LOCO_F32, &e) == LOCO_OK);
    CHECK(loco_unet_set_param(vc, name, h, LOCO_F32, &e) == LOCO_OK);
    free(h);
    CHECK(call_unet(vm, &fm, 1, 2, 900, rows, &a, &e) == LOCO_OK);
    CHECK(call_unet(vc, &fc, 1, 2, 900, rows, &b, &e) == LOCO_OK);
    int eq = same(&a, &b);
    loco_tensor_free(&a);
    loco_tensor_free(&b);
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(vm, &st);
    loco_unet_free(vm);
    loco_unet_free(vc);
    loco_unet_free(fm.u);
    loco_unet_free(fc.u);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK_MSG(eq, "the edited variant's replay used the old weight");
    CHECK(st.captures >= 2);
}

/* A recording that comes up short (CUDA: the pool lacks a block, or a call illegal while
 * capturing) must leave the call correct, and a later call records successfully. */
TEST(unet_graph_recording_failure_falls_back) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    ufix fm, fc;
    CHECK(ufix_open(&fm, &m->be, "sd1-tiny") == 0);
    CHECK(ufix_open(&fc, cpu, "sd1-tiny") == 0);
    loco_err e;
    loco_err_clear(&e);
    const int rows[4] = {0, 1, 2, 3};
    int all_same = 1;
    for (int i = 0; i < 4; i++) {
        if (i == 1) m->fail_next_capture_alloc = 1; /* the first recording fails */
        loco_tensor a = {0}, b = {0};
        CHECK_MSG(call_unet(fm.u, &fm, 5 + i, 3, 800, rows, &a, &e) == LOCO_OK, "%s", e.msg);
        CHECK(call_unet(fc.u, &fc, 5 + i, 3, 800, rows, &b, &e) == LOCO_OK);
        all_same &= same(&a, &b);
        loco_tensor_free(&a);
        loco_tensor_free(&b);
    }
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(fm.u, &st);
    fprintf(stderr, "after a failed recording: %ld captures, %ld replays, %ld plain; '%s'\n", st.captures, st.replays,
            st.eager_calls, st.last_error);
    loco_unet_free(fm.u);
    loco_unet_free(fc.u);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK(all_same);
    CHECK(st.eager_calls == 2); /* warm-up, and the call whose recording failed */
    CHECK(st.captures >= 1 && st.replays == 2);
    CHECK(strstr(st.last_error, "test knob") != NULL);
}

/* A hook in the shape of the intervention programs' restore and ablate: at one site it copies
 * row `src` over row `dst`, at another it sets two channels. Device ops on views only, with a
 * replay_id naming what it does; it counts its calls (a replay must not call it). */
typedef struct test_hook {
    int copy_site, src, dst;
    int setc_site;
    int calls;
    int elsewhere; /* calls at sites it does not act on */
} test_hook;

static loco_status test_hook_fn(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    test_hook *h = ctx;
    loco_backend *be = out->be;
    if (site->id == h->setc_site) {
        h->calls++;
        static const int32_t ch[2] = {1, 3};
        static const float val[2] = {0.5f, -2.0f};
        return loco_set_channels(be, out, ch, val, 2, err);
    }
    if (site->id != h->copy_site) {
        h->elsewhere++;
        return LOCO_OK;
    }
    loco_tensor a, b;
    loco_status s = loco_tensor_slice0(out, h->dst, 1, &a, err);
    if (!s) s = loco_tensor_slice0(out, h->src, 1, &b, err);
    if (!s) s = loco_copy(be, &a, &b, err);
    return s;
}

static int test_hook_acts_at(void *ctx, const loco_site *site) {
    const test_hook *h = ctx;
    return site->id == h->copy_site || site->id == h->setc_site;
}

/* A hook copying row 0 over row 2 at u's first ResNet output and setting channels at its first
 * feed-forward output (-1 when u lacks one). */
static test_hook test_hook_at_first_sites(const loco_unet *u) {
    int ns = 0, resnet = -1, ff = -1;
    const loco_site *sites = loco_unet_sites(u, &ns);
    for (int i = 0; i < ns; i++) {
        if (resnet < 0 && sites[i].kind == LOCO_SITE_RESNET) resnet = i;
        if (ff < 0 && sites[i].kind == LOCO_SITE_FF) ff = i;
    }
    return (test_hook){.copy_site = resnet, .src = 0, .dst = 2, .setc_site = ff};
}

/* The hooks of h: with a replay_id and acts_at (as the intervention programs' are), or plain. */
static loco_site_hooks test_hooks(test_hook *h, int replayable) {
    loco_site_hooks hk = {.after = test_hook_fn, .ctx = h};
    if (replayable) hk.acts_at = test_hook_acts_at;
    if (replayable) {
        hk.replay_id = h; /* the struct's first four fields say what it does */
        hk.replay_size = 4 * sizeof(int);
    }
    return hk;
}

/* A UNet with one text batch whose K/V stay put (so only the hooks move the binding), and a
 * call on it with a sample from a seed and site hooks (may be NULL). */
typedef struct hooked_fix {
    ufix f;
    loco_tensor txt;
    loco_unet_text_kv kv;
} hooked_fix;

static int hooked_fix_open(hooked_fix *h, loco_backend *be) {
    memset(h, 0, sizeof *h);
    if (ufix_open(&h->f, be, "sd1-tiny")) return -1;
    const size_t nt = (size_t)(h->f.tshape[0] * h->f.tshape[1] * h->f.tshape[2]);
    float *ht = malloc(nt * sizeof *ht);
    fill_rand(ht, nt, 4, 1.0f);
    loco_err e;
    loco_err_clear(&e);
    int bad = upload_vals(be, 3, h->f.tshape, ht, &h->txt) ||
              loco_unet_compute_text_kv(h->f.u, &h->txt, NULL, &h->kv, &e);
    free(ht);
    return bad ? -1 : 0;
}

static void hooked_fix_close(hooked_fix *h) {
    loco_unet_text_kv_free(&h->kv);
    loco_tensor_free(&h->txt);
    loco_unet_free(h->f.u);
}

static loco_status hooked_call(hooked_fix *h, uint64_t seed, float t, const loco_site_hooks *hooks, loco_tensor *out,
                               loco_err *err) {
    const size_t ns = (size_t)(h->f.sshape[0] * h->f.sshape[1] * h->f.sshape[2] * h->f.sshape[3]);
    float *hs = malloc(ns * sizeof *hs);
    fill_rand(hs, ns, seed, 2.0f);
    loco_tensor x = {0};
    loco_status s = upload_vals(loco_unet_backend(h->f.u), 4, h->f.sshape, hs, &x)
                        ? loco_err_set(err, LOCO_EINVAL, "upload failed")
                        : LOCO_OK;
    free(hs);
    static const int rows[4] = {0, 1, 2, 3};
    const float ts[4] = {t, t, t, t};
    if (!s) {
        loco_unet_inputs in;
        loco_unet_inputs_init(&in);
        in.sample = &x;
        in.timesteps = ts;
        in.encoder_hidden_states = &h->txt;
        in.text_index = rows;
        in.text_kv = &h->kv;
        if (hooks) in.hooks = *hooks;
        s = loco_unet_forward(h->f.u, &in, out, err);
    }
    loco_tensor_free(&x);
    return s;
}

/* Hooked calls (sites.h, replay_id): replayed without calling the hook, equal to the plain CPU's
 * hooked calls bit for bit; a hook that does something else (other replay_id bytes), no hook,
 * and a hook again each record anew; a hook without a replay_id runs op by op. */
TEST(unet_graph_replays_hooked_calls) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    hooked_fix fm, fc;
    CHECK(hooked_fix_open(&fm, &m->be) == 0 && hooked_fix_open(&fc, cpu) == 0);
    test_hook hm = test_hook_at_first_sites(fm.f.u), hc = hm;
    CHECK(hm.copy_site >= 0 && hm.setc_site >= 0);
    loco_err e;
    loco_err_clear(&e);
    /* per call: 0 no hook, 1 the replayable hook, 2 the same hook without a replay_id; and
     * whether the hook copies 0 -> 2 or 1 -> 3 */
    const struct {
        int mode, other;
    } calls[] = {{1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 0}, {2, 0}, {1, 0}};
    const int n = (int)(sizeof calls / sizeof calls[0]);
    int all_same = 1;
    for (int i = 0; i < n; i++) {
        hm.src = hc.src = calls[i].other ? 1 : 0;
        hm.dst = hc.dst = calls[i].other ? 3 : 2;
        const loco_site_hooks km = test_hooks(&hm, calls[i].mode == 1), kc = test_hooks(&hc, 0);
        const float t = 900 - 20 * (float)i;
        loco_tensor a = {0}, b = {0};
        CHECK_MSG(hooked_call(&fm, 20 + i, t, calls[i].mode ? &km : NULL, &a, &e) == LOCO_OK, "%s", e.msg);
        CHECK(hooked_call(&fc, 20 + i, t, calls[i].mode ? &kc : NULL, &b, &e) == LOCO_OK);
        const int eq = same(&a, &b);
        if (!eq) fprintf(stderr, "hooked call %d differs from the plain path\n", i);
        all_same &= eq;
        loco_tensor_free(&a);
        loco_tensor_free(&b);
    }
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(fm.f.u, &st);
    fprintf(stderr, "hooked: %ld captures, %ld replays, %ld plain, hook ran %d times (plain path %d); '%s'\n",
            st.captures, st.replays, st.eager_calls, hm.calls, hc.calls, st.last_error);
    hooked_fix_close(&fm);
    hooked_fix_close(&fc);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK(all_same);
    /* call 0 warms up; recordings at calls 1 (first), 4 (other rows), 6 (no hook), 8 (hook
     * again); call 9 (no replay_id) is not eligible and is not counted; call 10 replays 8's */
    CHECK(st.eager_calls == 1);
    CHECK_MSG(st.captures == 4, "%ld captures", st.captures);
    CHECK(st.replays == n - 2);
    /* the hook ran in the warm-up, the 3 hooked recordings and the call without a replay_id */
    CHECK_MSG(hm.calls == 5 && hc.calls == n - 2, "hook calls %d (plain %d)", hm.calls, hc.calls);
    /* with acts_at it is called only where it acts (the call without a replay_id has none) */
    CHECK_MSG(hc.elsewhere > 0 && hm.elsewhere == hc.elsewhere / (n - 2), "called elsewhere %d times (plain %d)",
              hm.elsewhere, hc.elsewhere);
    CHECK(st.last_error[0] == 0);
}

/* Another function doing exactly what test_hook_fn does: only `after` differs from its hooks. */
static loco_status test_hook_twin(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    return test_hook_fn(ctx, site, out, err);
}

/* A hook that fails at its feed-forward site, as a bad plan's would. */
static loco_status failing_hook(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    const test_hook *h = ctx;
    (void)out;
    return site->id == h->setc_site ? loco_err_set(err, LOCO_EINVAL, "test hook failure") : LOCO_OK;
}

/* The edges of hooked recording: a shape warmed up and recorded without hooks, then hooked (a
 * hooked body keeps more outputs: the first recording may come up short, and must then leave the
 * call right and the next one recording); hooks with the same bytes but another function record
 * again; a hook's own error (the plain call it falls back to fails the same way) reaches the
 * caller as it would without graphs and is not a failed recording; the next call records. */
TEST(unet_graph_hooked_call_edges) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    hooked_fix fm, fc;
    CHECK(hooked_fix_open(&fm, &m->be) == 0 && hooked_fix_open(&fc, cpu) == 0);
    test_hook hm = test_hook_at_first_sites(fm.f.u), hc = hm;
    CHECK(hm.copy_site >= 0 && hm.setc_site >= 0);
    loco_err e;
    loco_err_clear(&e);
    /* 0: no hook; 1: the hook; 2: its twin (same bytes); 3: the failing hook (same bytes) */
    static const int modes[] = {0, 0, 0, 1, 1, 1, 2, 2, 3, 2};
    const int n = (int)(sizeof modes / sizeof modes[0]);
    int all_same = 1, failed_right = 0;
    long captures_before_fail = -1, replays_before_fail = -1;
    loco_unet_graph_stats st;
    for (int i = 0; i < n; i++) {
        loco_site_hooks km = test_hooks(&hm, 1), kc = test_hooks(&hc, 0);
        if (modes[i] == 2) km.after = test_hook_twin;
        if (modes[i] == 3) {
            km.after = failing_hook;
            loco_unet_graph_stats_get(fm.f.u, &st);
            captures_before_fail = st.captures;
            replays_before_fail = st.replays;
            loco_tensor a = {0};
            const loco_status s = hooked_call(&fm, 40 + i, 700, &km, &a, &e);
            loco_tensor_free(&a);
            loco_unet_graph_stats_get(fm.f.u, &st);
            failed_right = s == LOCO_EINVAL && strstr(e.msg, "test hook failure") != NULL &&
                           strstr(st.last_error, "test hook") == NULL && st.captures == captures_before_fail &&
                           st.replays == replays_before_fail;
            if (!failed_right)
                fprintf(stderr, "failing hook: status %d, '%s', last error '%s'\n", s, e.msg, st.last_error);
            continue;
        }
        const float t = 800 - 10 * (float)i;
        loco_tensor a = {0}, b = {0};
        CHECK_MSG(hooked_call(&fm, 40 + i, t, modes[i] ? &km : NULL, &a, &e) == LOCO_OK, "%s", e.msg);
        CHECK(hooked_call(&fc, 40 + i, t, modes[i] ? &kc : NULL, &b, &e) == LOCO_OK);
        const int eq = same(&a, &b);
        if (!eq) fprintf(stderr, "call %d (mode %d) differs from the plain path\n", i, modes[i]);
        all_same &= eq;
        loco_tensor_free(&a);
        loco_tensor_free(&b);
    }
    loco_unet_graph_stats_get(fm.f.u, &st);
    fprintf(stderr, "hooked edges: %ld captures, %ld replays, %ld plain; '%s'\n", st.captures, st.replays,
            st.eager_calls, st.last_error);
    hooked_fix_close(&fm);
    hooked_fix_close(&fc);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK(all_same);
    CHECK(failed_right);
    /* the failing call neither recorded nor replayed (checked above), and the call after it
     * records again (the aborted capture left nothing to launch) */
    CHECK(st.captures == captures_before_fail + 1 && st.replays == replays_before_fail + 1);
    /* plain: warm-up, record, replay; hooked: at most one recording that came up short (then a
     * pooled call), a recording, replays; the twin: a recording, a replay; the failing hook's
     * plain call; the twin again */
    CHECK_MSG(st.captures == 4 && (st.eager_calls == 2 || st.eager_calls == 3), "%ld captures, %ld plain",
              st.captures, st.eager_calls);
}

/* One call of batch f->sshape[0] on the mock and on the CPU; 1 when both succeed with the same bits. */
static int call_both(const ufix *fm, const ufix *fc, uint64_t seed) {
    static const int rows[4] = {0, 1, 2, 3};
    loco_err e;
    loco_err_clear(&e);
    loco_tensor a = {0}, b = {0};
    int ok = call_unet(fm->u, fm, seed, seed + 100, 900 - 10 * (float)seed, rows, &a, &e) == LOCO_OK &&
             call_unet(fc->u, fc, seed, seed + 100, 900 - 10 * (float)seed, rows, &b, &e) == LOCO_OK && same(&a, &b);
    if (!ok) fprintf(stderr, "call %llu: %s\n", (unsigned long long)seed, e.msg[0] ? e.msg : "results differ");
    loco_tensor_free(&a);
    loco_tensor_free(&b);
    return ok;
}

/* Memory running short (backend.h, "memory pressure"): the graphs' reclaimer gives back
 * recorded shapes other than the one whose call is in progress, whether the allocation that asks
 * comes in a replay or in a new shape's warm-up (its pool period); asked for less, it gives back
 * the least recently used shape first. Results stay the plain path's, the shapes given back
 * record again, the reclaimer goes with the UNet, and nothing leaks. */
TEST(unet_graph_gives_back_idle_shapes_when_memory_runs_short) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    ufix b4m, b4c;
    CHECK(ufix_open(&b4m, &m->be, "sd1-tiny") == 0);
    CHECK(ufix_open(&b4c, cpu, "sd1-tiny") == 0);
    ufix b2m = b4m, b2c = b4c, b1m = b4m, b1c = b4c; /* the same UNets at batch 2 and 1 */
    b2m.sshape[0] = b2c.sshape[0] = b2m.tshape[0] = b2c.tshape[0] = 2;
    b1m.sshape[0] = b1c.sshape[0] = b1m.tshape[0] = b1c.tshape[0] = 1;
    int ok = 1;
    uint64_t seed = 1;
    loco_unet_graph_stats st0, st1, st2, stl, st3, st4;
    for (int i = 0; i < 3; i++) ok &= call_both(&b4m, &b4c, seed++) && call_both(&b2m, &b2c, seed++);
    loco_unet_graph_stats_get(b4m.u, &st0);
    const size_t could = loco_backend_reclaimable(&m->be);
    /* the batch-4 replay's result copy finds the device full: batch 2 goes, batch 4 stays */
    m->reclaim_at = RECLAIM_AFTER_LAUNCH;
    ok &= call_both(&b4m, &b4c, seed++);
    loco_unet_graph_stats_get(b4m.u, &st1);
    const size_t after_replay = m->reclaimed_bytes;
    for (int i = 0; i < 3; i++) ok &= call_both(&b2m, &b2c, seed++); /* warms up and records again */
    loco_unet_graph_stats_get(b4m.u, &st2);
    /* asked for a byte: only the least recently used shape (batch 4) goes */
    const size_t one = loco_backend_reclaim(&m->be, 1);
    loco_unet_graph_stats_get(b4m.u, &stl);
    /* a new shape's warm-up runs short: the other one goes, its own pool period goes on */
    m->reclaim_at = RECLAIM_IN_POOL_PERIOD;
    ok &= call_both(&b1m, &b1c, seed++);
    loco_unet_graph_stats_get(b4m.u, &st3);
    for (int i = 0; i < 2; i++) ok &= call_both(&b1m, &b1c, seed++); /* records and replays */
    /* asked for everything between calls: everything goes, and the next call warms up again */
    const size_t direct = loco_backend_reclaim(&m->be, SIZE_MAX);
    loco_unet_graph_stats_get(b4m.u, &st4);
    ok &= call_both(&b4m, &b4c, seed++);
    fprintf(stderr,
            "recorded: 2 shapes, %zu pool bytes (%zu could go); after a reclaim in a replay: %d shape(s), %zu bytes "
            "(%zu given back); asked for 1 byte: %zu given back, %zu bytes kept; in a warm-up: %zu bytes kept; "
            "asked for all: %zu given back; %ld reclaimed in all\n",
            st0.pool_bytes, could, st1.shapes, st1.pool_bytes, after_replay, one, stl.pool_bytes, st3.pool_bytes,
            direct, st4.reclaimed);
    loco_unet_free(b4m.u);
    const int registered = m->be.n_reclaimers; /* the UNet's reclaimer went with it */
    loco_unet_free(b4c.u);
    size_t live = 1;
    loco_backend_memory(&m->be, &live, NULL);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK(ok);
    CHECK(st0.shapes == 2 && st0.reclaimed == 0 && could > st0.pool_bytes); /* pools and fixed tensors */
    CHECK(st1.shapes == 1 && st1.reclaimed == 1 && st1.pool_bytes > 0 && st1.pool_bytes < st0.pool_bytes);
    CHECK(after_replay >= st0.pool_bytes - st1.pool_bytes);
    /* (each call's text K/V are new tensors, so a replay may record again: count warm-ups) */
    CHECK(st2.shapes == 2 && st2.captures > st1.captures && st2.eager_calls == st1.eager_calls + 1);
    CHECK(stl.shapes == 1 && stl.reclaimed == 2 && one > 0 && stl.pool_bytes == st2.pool_bytes - st1.pool_bytes);
    CHECK(st3.reclaimed == 3 && st3.shapes == 0 && st3.pool_bytes > 0); /* the warming shape's pool stays */
    CHECK(st4.reclaimed == 4 && st4.shapes == 0 && st4.pool_bytes == 0 && direct > 0);
    CHECK(st4.captures > st3.captures && st4.eager_calls == st3.eager_calls); /* batch 1: warm-up, then recorded */
    CHECK(registered == 0);
    CHECK_MSG(live == 0, "%zu bytes still allocated on the mock backend", live);
}

/* A replay whose result copy runs short: the graph's pool goes, the copy of the finished result
 * is tried again (no work redone), and the shape records again on its next calls. */
TEST(unet_graph_replay_out_of_memory_keeps_the_result) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    ufix fm, fc;
    CHECK(ufix_open(&fm, &m->be, "sd1-tiny") == 0);
    CHECK(ufix_open(&fc, cpu, "sd1-tiny") == 0);
    int ok = call_both(&fm, &fc, 1) && call_both(&fm, &fc, 2) && call_both(&fm, &fc, 3);
    loco_unet_graph_stats s0, s1, s2;
    loco_unet_graph_stats_get(fm.u, &s0);
    const long launches0 = m->launches;
    m->oom_after_launch = 1;
    ok &= call_both(&fm, &fc, 4);
    loco_unet_graph_stats_get(fm.u, &s1);
    const long launches1 = m->launches;
    ok &= call_both(&fm, &fc, 5) && call_both(&fm, &fc, 6); /* warms up, records again */
    loco_unet_graph_stats_get(fm.u, &s2);
    fprintf(stderr, "replay out of memory: %d shape(s), %zu pool bytes, '%s'; then %ld captures, %ld replays\n",
            s1.shapes, s1.pool_bytes, s1.last_error, s2.captures, s2.replays);
    loco_unet_free(fm.u);
    loco_unet_free(fc.u);
    size_t live = 1;
    loco_backend_memory(&m->be, &live, NULL);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK(ok);
    CHECK(s0.shapes == 1 && launches1 == launches0 + 1); /* call 4 was served by its replay */
    CHECK(s1.shapes == 0 && s1.pool_bytes == 0 && strstr(s1.last_error, "test knob") != NULL);
    CHECK(s1.eager_calls == s0.eager_calls && s1.replays == s0.replays + 1);
    CHECK(s2.shapes == 1 && s2.eager_calls == s1.eager_calls + 1 && s2.captures > s1.captures);
    CHECK_MSG(live == 0, "%zu bytes still allocated on the mock backend", live);
}

/* The whole pipeline through the recording backend: loco_generate's denoising loop is where
 * graphs pay; it must give what the CPU gives, bit for bit. */
TEST(pipeline_with_graphs_matches_plain) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    char path[512];
    snprintf(path, sizeof path, "%s/models/sdxl-tiny", loco_fixtures_dir());
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.model_path = path;
    loco_pipeline *pm = NULL, *pc = NULL;
    loco_err e;
    loco_err_clear(&e);
    CHECK_MSG(loco_pipeline_load(&m->be, &po, &pm, &e) == LOCO_OK, "%s", e.msg);
    CHECK_MSG(loco_pipeline_load(cpu, &po, &pc, &e) == LOCO_OK, "%s", e.msg);
    static const char *const prompts[2] = {"a red cube", "a blue sphere"};
    loco_generate_params g;
    loco_generate_params_init(&g);
    g.n_prompts = 2;
    g.prompts = prompts;
    g.seed = 7;
    g.steps = 4;
    loco_generate_result rm[2], rc;
    memset(rm, 0, sizeof rm);
    memset(&rc, 0, sizeof rc);
    /* twice: the second run finds a recorded graph with the first run's text K/V addresses */
    CHECK_MSG(loco_generate(pm, &g, &rm[0], &e) == LOCO_OK, "%s", e.msg);
    CHECK_MSG(loco_generate(pm, &g, &rm[1], &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_generate(pc, &g, &rc, &e) == LOCO_OK);
    size_t n = (size_t)(rc.latent_shape[0] * rc.latent_shape[1] * rc.latent_shape[2] * rc.latent_shape[3]);
    int eq = memcmp(rm[0].latents, rc.latents, n * sizeof(float)) == 0 &&
             memcmp(rm[1].latents, rc.latents, n * sizeof(float)) == 0;
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(loco_pipeline_unet(pm), &st);
    fprintf(stderr, "pipeline: %ld captures, %ld replays, %ld plain; '%s'\n", st.captures, st.replays, st.eager_calls,
            st.last_error);
    loco_generate_result_free(&rm[0]);
    loco_generate_result_free(&rm[1]);
    loco_generate_result_free(&rc);
    loco_pipeline_free(pm);
    loco_pipeline_free(pc);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK(eq);
    CHECK(st.eager_calls == 1 && st.replays == 2 * 4 - 1); /* Euler: one UNet call per step */
}

/* A variant with neuron ablations (cross_k / cross_v channels: engine/pipeline_variant.h) acts
 * only in the text K/V projection, once per run; its UNet calls carry no hooks (test_intervention
 * checks which hooks a plan installs), so they replay like a plain generation's, and the images
 * must equal the CPU's bit for bit. */
TEST(neuron_ablation_variant_replays_graphs) {
    mock *m = mock_new();
    loco_backend *cpu = mr_cpu();
    CHECK(m && cpu);
    char path[512];
    snprintf(path, sizeof path, "%s/models/sd1-tiny", loco_fixtures_dir());
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.model_path = path;
    loco_pipeline *pm = NULL, *pc = NULL;
    loco_pipeline_variant *vm = NULL, *vc = NULL;
    loco_err e;
    loco_err_clear(&e);
    CHECK_MSG(loco_pipeline_load(&m->be, &po, &pm, &e) == LOCO_OK, "%s", e.msg);
    CHECK_MSG(loco_pipeline_load(cpu, &po, &pc, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_pipeline_variant_create(pm, &vm, &e) == LOCO_OK && loco_pipeline_variant_create(pc, &vc, &e) == LOCO_OK);
    static const int32_t ch[3] = {0, 3, 7};
    static const float val[3] = {0.0f, 1.5f, -0.5f};
    const loco_neuron_ablation ab[2] = {
        {.cross_index = 0, .kind = LOCO_SITE_CROSS_K, .n = 3, .channels = ch, .values = val},
        {.cross_index = 1, .kind = LOCO_SITE_CROSS_V, .n = 2, .channels = ch, .values = val}};
    for (int i = 0; i < 2; i++)
        CHECK_MSG(loco_pipeline_variant_add_ablation(vm, &ab[i], &e) == LOCO_OK &&
                      loco_pipeline_variant_add_ablation(vc, &ab[i], &e) == LOCO_OK,
                  "%s", e.msg);
    static const char *const prompts[2] = {"a red cube", "a blue sphere"};
    loco_generate_params g;
    loco_generate_params_init(&g);
    g.n_prompts = 2;
    g.prompts = prompts;
    g.seed = 3;
    g.steps = 4;
    g.width = g.height = 64;
    loco_generate_result rm, rc, plain;
    memset(&rm, 0, sizeof rm);
    memset(&rc, 0, sizeof rc);
    memset(&plain, 0, sizeof plain);
    CHECK_MSG(loco_pipeline_variant_generate(vm, &g, &rm, &e) == LOCO_OK, "%s", e.msg);
    CHECK_MSG(loco_pipeline_variant_generate(vc, &g, &rc, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_generate(pc, &g, &plain, &e) == LOCO_OK);
    const size_t n = (size_t)(rc.latent_shape[0] * rc.latent_shape[1] * rc.latent_shape[2] * rc.latent_shape[3]);
    const int eq = memcmp(rm.latents, rc.latents, n * sizeof(float)) == 0;
    const int ablated = memcmp(plain.latents, rc.latents, n * sizeof(float)) != 0;
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(loco_pipeline_unet(loco_pipeline_variant_pipeline(vm)), &st);
    fprintf(stderr, "ablated variant: %ld captures, %ld replays, %ld plain; '%s'\n", st.captures, st.replays,
            st.eager_calls, st.last_error);
    loco_generate_result_free(&rm);
    loco_generate_result_free(&rc);
    loco_generate_result_free(&plain);
    loco_pipeline_variant_free(vm);
    loco_pipeline_variant_free(vc);
    loco_pipeline_free(pm);
    loco_pipeline_free(pc);
    loco_backend_destroy(&m->be);
    loco_backend_destroy(cpu);
    CHECK(eq);
    CHECK(ablated); /* the ablations did something */
    CHECK_MSG(st.captures >= 1 && st.replays >= 2, "%ld captures, %ld replays", st.captures, st.replays);
}
