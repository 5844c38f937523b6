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
