/* test_unet_graph.c: the UNet's graph cache (engine/unet_graph.c) and the graph API contract of
 * backend.h, checked on the CPU with a recording backend that behaves like CUDA graphs do:
 *   - it wraps the CPU backend; while capturing, every op is recorded (tensors by value, so by
 *     address; host tables such as kv_index copied, i.e. baked in) instead of run, and a launch
 *     runs the recording on whatever memory holds at that moment;
 *   - a pool period serves allocations from the graph's own blocks (growing the pool unless
 *     frozen), a capture may not grow it, and upload/download/sync while capturing fail the op,
 *     as they invalidate a CUDA capture;
 *   - pool blocks go back to the pool when freed and are never handed to other tensors.
 * So a UNet call served by a replay gives the same numbers as the plain path only if the cache
 * copies inputs into its fixed tensors, keeps intermediates in the pool, re-records when text
 * K/V, kv_index tables or weights change, and falls back cleanly when recording fails. The CUDA
 * side (stream capture legality, cudaGraphExecUpdate) is checked by test_cuda_pipeline on a GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "loco_test.h"
#include "model_ref_util.h"
#include "pipeline.h"
#include "unet.h"

/* ---- the recording backend ----------------------------------------------------------------------- */

enum { R_LINEAR, R_CONV, R_GN, R_LN, R_ATTN, R_ACT, R_GEGLU, R_ADD, R_CBIAS, R_LINCOMB, R_COPY, R_FILL, R_T12,
       R_CONCAT, R_UP2 };

typedef struct rec {
    int kind;
    loco_tensor t[4];
    int has[4];
    loco_act act;
    int i0;
    float f0;
    loco_conv2d_params cp;
    loco_attention_params ap;
    int *kv;            /* baked copy of ap.kv_index */
    int n;              /* lincomb */
    loco_tensor *xs;    /* lincomb inputs by value */
    float *coef;
} rec;

typedef struct mblock {
    void *p;
    size_t size;
    int used;
} mblock;

typedef struct mgraph {
    mblock *b;
    int nb, cap;
    size_t grew;
    int frozen;
    rec *recs; /* the launchable recording */
    int nrec;
} mgraph;

typedef struct mock {
    loco_backend be;      /* first: hooks get &be */
    loco_backend_ops ops; /* the CPU's, wrapped */
    loco_backend_ops base;
    loco_backend *cpu;
    mgraph *active;       /* pool period */
    mgraph *capturing;
    rec *cur;             /* recording in progress */
    int ncur, capcur;
    int fail_next_capture_alloc; /* test knob: the next allocation during a capture fails */
    mgraph *graphs[16];
    int ngraphs;
    long launches;
} mock;

static mock *M(loco_backend *be) { return (mock *)be; }

static void rec_free(rec *r) {
    free(r->kv);
    free(r->xs);
    free(r->coef);
}

static rec *push(mock *m) {
    if (m->ncur == m->capcur) {
        m->capcur = m->capcur ? 2 * m->capcur : 256;
        m->cur = realloc(m->cur, (size_t)m->capcur * sizeof *m->cur);
    }
    rec *r = &m->cur[m->ncur++];
    memset(r, 0, sizeof *r);
    return r;
}

static void put(rec *r, int i, const loco_tensor *t) {
    if (t) {
        r->t[i] = *t;
        r->has[i] = 1;
    }
}

#define P(r, i) ((r)->has[i] ? &(r)->t[i] : NULL)

static loco_status replay_one(mock *m, rec *r, loco_err *err) {
    loco_backend *be = &m->be;
    const loco_backend_ops *o = &m->base;
    switch (r->kind) {
    case R_LINEAR: return o->linear(be, &r->t[0], &r->t[1], &r->t[2], P(r, 3), r->act, err);
    case R_CONV: return o->conv2d(be, &r->t[0], &r->t[1], &r->t[2], P(r, 3), &r->cp, err);
    case R_GN: return o->group_norm(be, &r->t[0], &r->t[1], r->i0, &r->t[2], &r->t[3], r->f0, r->act, err);
    case R_LN: return o->layer_norm(be, &r->t[0], &r->t[1], &r->t[2], P(r, 3), r->f0, err);
    case R_ATTN: r->ap.kv_index = r->kv; return o->attention(be, &r->t[0], &r->t[1], &r->t[2], &r->t[3], &r->ap, err);
    case R_ACT: return o->activation(be, &r->t[0], &r->t[1], r->act, err);
    case R_GEGLU: return o->geglu(be, &r->t[0], &r->t[1], err);
    case R_ADD: return o->add(be, &r->t[0], &r->t[1], &r->t[2], err);
    case R_CBIAS: return o->add_channel_bias(be, &r->t[0], &r->t[1], &r->t[2], err);
    case R_LINCOMB: {
        const loco_tensor *xs[16];
        for (int i = 0; i < r->n; i++) xs[i] = &r->xs[i];
        return o->lincomb(be, &r->t[0], r->n, xs, r->coef, err);
    }
    case R_COPY: return o->copy(be, &r->t[0], &r->t[1], err);
    case R_FILL: return o->fill(be, &r->t[0], r->f0, err);
    case R_T12: return o->transpose12(be, &r->t[0], &r->t[1], err);
    case R_CONCAT: return o->concat(be, &r->t[0], &r->t[1], &r->t[2], r->i0, err);
    case R_UP2: return o->upsample_nearest2x(be, &r->t[0], &r->t[1], err);
    }
    return loco_err_set(err, LOCO_EINVAL, "mock: unknown record");
}

/* Each wrapper runs the CPU op, or records it while capturing. */
static loco_status w_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const loco_tensor *b, loco_act act, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.linear(be, y, x, w, b, act, err);
    rec *r = push(m);
    r->kind = R_LINEAR, put(r, 0, y), put(r, 1, x), put(r, 2, w), put(r, 3, b), r->act = act;
    return LOCO_OK;
}
static loco_status w_conv(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                          const loco_tensor *b, const loco_conv2d_params *p, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.conv2d(be, y, x, w, b, p, err);
    rec *r = push(m);
    r->kind = R_CONV, put(r, 0, y), put(r, 1, x), put(r, 2, w), put(r, 3, b), r->cp = *p;
    return LOCO_OK;
}
static loco_status w_gn(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups, const loco_tensor *g,
                        const loco_tensor *b, float eps, int silu, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.group_norm(be, y, x, groups, g, b, eps, silu, err);
    rec *r = push(m);
    r->kind = R_GN, put(r, 0, y), put(r, 1, x), put(r, 2, g), put(r, 3, b), r->i0 = groups, r->f0 = eps;
    r->act = (loco_act)silu;
    return LOCO_OK;
}
static loco_status w_ln(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *g,
                        const loco_tensor *b, float eps, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.layer_norm(be, y, x, g, b, eps, err);
    rec *r = push(m);
    r->kind = R_LN, put(r, 0, y), put(r, 1, x), put(r, 2, g), put(r, 3, b), r->f0 = eps;
    return LOCO_OK;
}
static loco_status w_attn(loco_backend *be, loco_tensor *o, const loco_tensor *q, const loco_tensor *k,
                          const loco_tensor *v, const loco_attention_params *p, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.attention(be, o, q, k, v, p, err);
    rec *r = push(m);
    r->kind = R_ATTN, put(r, 0, o), put(r, 1, q), put(r, 2, k), put(r, 3, v), r->ap = *p;
    if (p->kv_index) { /* baked in, as the CUDA kernels take it in their arguments */
        r->kv = malloc((size_t)q->shape[0] * sizeof *r->kv);
        memcpy(r->kv, p->kv_index, (size_t)q->shape[0] * sizeof *r->kv);
    }
    return LOCO_OK;
}
static loco_status w_act(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act a, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.activation(be, y, x, a, err);
    rec *r = push(m);
    r->kind = R_ACT, put(r, 0, y), put(r, 1, x), r->act = a;
    return LOCO_OK;
}
static loco_status w_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.geglu(be, y, x, err);
    rec *r = push(m);
    r->kind = R_GEGLU, put(r, 0, y), put(r, 1, x);
    return LOCO_OK;
}
static loco_status w_add(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b,
                         loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.add(be, y, a, b, err);
    rec *r = push(m);
    r->kind = R_ADD, put(r, 0, y), put(r, 1, a), put(r, 2, b);
    return LOCO_OK;
}
static loco_status w_cbias(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *b,
                           loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.add_channel_bias(be, y, x, b, err);
    rec *r = push(m);
    r->kind = R_CBIAS, put(r, 0, y), put(r, 1, x), put(r, 2, b);
    return LOCO_OK;
}
static loco_status w_lincomb(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x, const float *c,
                             loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.lincomb(be, y, n, x, c, err);
    if (n > 16) return loco_err_set(err, LOCO_EINVAL, "mock: lincomb of %d", n);
    rec *r = push(m);
    r->kind = R_LINCOMB, put(r, 0, y), r->n = n;
    r->xs = malloc((size_t)n * sizeof *r->xs);
    r->coef = malloc((size_t)n * sizeof *r->coef);
    for (int i = 0; i < n; i++) r->xs[i] = *x[i], r->coef[i] = c[i];
    return LOCO_OK;
}
static loco_status w_copy(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.copy(be, y, x, err);
    rec *r = push(m);
    r->kind = R_COPY, put(r, 0, y), put(r, 1, x);
    return LOCO_OK;
}
static loco_status w_fill(loco_backend *be, loco_tensor *y, float v, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.fill(be, y, v, err);
    rec *r = push(m);
    r->kind = R_FILL, put(r, 0, y), r->f0 = v;
    return LOCO_OK;
}
static loco_status w_t12(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.transpose12(be, y, x, err);
    rec *r = push(m);
    r->kind = R_T12, put(r, 0, y), put(r, 1, x);
    return LOCO_OK;
}
static loco_status w_concat(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, int axis,
                            loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.concat(be, y, a, b, axis, err);
    rec *r = push(m);
    r->kind = R_CONCAT, put(r, 0, y), put(r, 1, a), put(r, 2, b), r->i0 = axis;
    return LOCO_OK;
}
static loco_status w_up2(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.upsample_nearest2x(be, y, x, err);
    rec *r = push(m);
    r->kind = R_UP2, put(r, 0, y), put(r, 1, x);
    return LOCO_OK;
}
/* ops a capture must not contain (CUDA: host transfers and syncs invalidate it) */
static loco_status w_embedding(loco_backend *be, loco_tensor *y, const loco_tensor *t, const int32_t *ids, int64_t n,
                               loco_err *err) {
    mock *m = M(be);
    if (m->capturing) return loco_err_set(err, LOCO_EDEVICE, "mock: embedding recorded (not expected in a UNet body)");
    return m->base.embedding(be, y, t, ids, n, err);
}
static loco_status w_upload(loco_backend *be, void *dst, loco_dtype dd, const void *src, loco_dtype sd, size_t n,
                            loco_err *err) {
    mock *m = M(be);
    if (m->capturing) return loco_err_set(err, LOCO_EDEVICE, "mock: upload while capturing");
    return m->base.upload(be, dst, dd, src, sd, n, err);
}
static loco_status w_download(loco_backend *be, float *dst, const void *src, loco_dtype sd, size_t n, loco_err *err) {
    mock *m = M(be);
    if (m->capturing) return loco_err_set(err, LOCO_EDEVICE, "mock: download while capturing");
    return m->base.download_f32(be, dst, src, sd, n, err);
}
static loco_status w_sync(loco_backend *be, loco_err *err) {
    mock *m = M(be);
    if (m->capturing) return loco_err_set(err, LOCO_EDEVICE, "mock: sync while capturing");
    return m->base.sync(be, err);
}

/* ---- pools ---- */

static loco_status w_alloc(loco_backend *be, size_t bytes, void **out, loco_err *err) {
    mock *m = M(be);
    mgraph *g = m->active;
    if (!g) return m->base.alloc(be, bytes, out, err);
    if (m->capturing && m->fail_next_capture_alloc) {
        m->fail_next_capture_alloc = 0;
        return loco_err_set(err, LOCO_EUNSUPPORTED, "mock: capture came up short (test knob)");
    }
    int best = -1;
    for (int i = 0; i < g->nb; i++)
        if (!g->b[i].used && g->b[i].size >= bytes && (best < 0 || g->b[i].size < g->b[best].size)) best = i;
    if (best >= 0) {
        g->b[best].used = 1;
        *out = g->b[best].p;
        return LOCO_OK;
    }
    if (g->frozen) return loco_err_set(err, LOCO_EUNSUPPORTED, "mock: pool exhausted during capture");
    if (g->nb == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 64;
        g->b = realloc(g->b, (size_t)g->cap * sizeof *g->b);
    }
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes)) return loco_err_set(err, LOCO_ENOMEM, "mock: out of memory");
    memset(p, 0xff, bytes); /* NaN: a graph reading memory nobody wrote shows up */
    g->b[g->nb++] = (mblock){p, bytes, 1};
    g->grew++;
    *out = p;
    return LOCO_OK;
}

static void w_release(loco_backend *be, void *p, size_t bytes) {
    mock *m = M(be);
    for (int k = 0; k < m->ngraphs; k++) {
        mgraph *g = m->graphs[k];
        for (int i = 0; g && i < g->nb; i++)
            if (g->b[i].p == p) {
                g->b[i].used = 0;
                return;
            }
    }
    m->base.release(be, p, bytes);
}

static loco_status g_new(loco_backend *be, void **out, loco_err *err) {
    mock *m = M(be);
    if (m->ngraphs == 16) return loco_err_set(err, LOCO_ENOMEM, "mock: too many graphs");
    mgraph *g = calloc(1, sizeof *g);
    for (int k = 0; k < 16; k++)
        if (!m->graphs[k]) {
            m->graphs[k] = g;
            if (k >= m->ngraphs) m->ngraphs = k + 1;
            break;
        }
    *out = g;
    return LOCO_OK;
}
static void recs_free(rec *r, int n) {
    for (int i = 0; i < n; i++) rec_free(&r[i]);
    free(r);
}
static void g_free(loco_backend *be, void *gp) {
    mock *m = M(be);
    mgraph *g = gp;
    for (int k = 0; k < m->ngraphs; k++)
        if (m->graphs[k] == g) m->graphs[k] = NULL;
    if (m->active == g) m->active = NULL;
    for (int i = 0; i < g->nb; i++) free(g->b[i].p);
    free(g->b);
    recs_free(g->recs, g->nrec);
    free(g);
}
static loco_status g_pool_begin(loco_backend *be, void *gp, int frozen, loco_err *err) {
    mock *m = M(be);
    if (m->active) return loco_err_set(err, LOCO_EINVAL, "mock: pool periods nest");
    mgraph *g = gp;
    g->frozen = frozen;
    g->grew = 0;
    m->active = g;
    return LOCO_OK;
}
static size_t g_pool_end(loco_backend *be, void *gp) {
    mock *m = M(be);
    mgraph *g = gp;
    if (m->active == g) m->active = NULL;
    g->frozen = 0;
    return g->grew;
}
static size_t g_pool_bytes(const loco_backend *be, const void *gp) {
    (void)be;
    const mgraph *g = gp;
    size_t s = 0;
    for (int i = 0; i < g->nb; i++) s += g->b[i].size;
    return s;
}
static loco_status g_capture_begin(loco_backend *be, void *gp, loco_err *err) {
    mock *m = M(be);
    loco_status s = g_pool_begin(be, gp, 1, err);
    if (s) return s;
    m->capturing = gp;
    m->ncur = 0;
    return LOCO_OK;
}
static loco_status g_capture_end(loco_backend *be, void *gp, int keep, loco_err *err) {
    mock *m = M(be);
    mgraph *g = gp;
    m->capturing = NULL;
    g_pool_end(be, gp);
    if (!keep) {
        for (int i = 0; i < m->ncur; i++) rec_free(&m->cur[i]);
        m->ncur = 0;
        return LOCO_OK;
    }
    recs_free(g->recs, g->nrec);
    g->recs = malloc((size_t)(m->ncur ? m->ncur : 1) * sizeof *g->recs);
    memcpy(g->recs, m->cur, (size_t)m->ncur * sizeof *g->recs);
    g->nrec = m->ncur;
    m->ncur = 0;
    (void)err;
    return LOCO_OK;
}
static loco_status g_launch(loco_backend *be, void *gp, loco_err *err) {
    mock *m = M(be);
    mgraph *g = gp;
    m->launches++;
    for (int i = 0; i < g->nrec; i++) {
        loco_status s = replay_one(m, &g->recs[i], err);
        if (s) return s;
    }
    return LOCO_OK;
}

static void mock_destroy(loco_backend *be) {
    mock *m = M(be);
    for (int k = 0; k < m->ngraphs; k++)
        if (m->graphs[k]) g_free(be, m->graphs[k]);
    free(m->cur);
    loco_backend_destroy(m->cpu);
    free(m);
}

static mock *mock_new(void) {
    loco_backend *cpu = mr_cpu();
    if (!cpu) return NULL;
    mock *m = calloc(1, sizeof *m);
    m->cpu = cpu;
    m->be = *cpu; /* same impl: the CPU hooks work on it unchanged */
    m->base = *cpu->ops;
    m->ops = *cpu->ops;
    m->be.ops = &m->ops;
    m->be.mem_current = m->be.mem_peak = 0;
    m->ops.destroy = mock_destroy;
    m->ops.alloc = w_alloc;
    m->ops.release = w_release;
    m->ops.upload = w_upload;
    m->ops.download_f32 = w_download;
    m->ops.sync = w_sync;
    m->ops.linear = w_linear;
    /* no fused forms: loco_linear_accumulate then runs as linear + add, loco_conv2d_fused as
     * group_norm, conv2d and adds, each recorded here */
    m->ops.linear_accumulate = NULL;
    m->ops.conv2d_fused = NULL;
    m->ops.conv2d = w_conv;
    m->ops.group_norm = w_gn;
    m->ops.layer_norm = w_ln;
    m->ops.attention = w_attn;
    m->ops.activation = w_act;
    m->ops.geglu = w_geglu;
    m->ops.add = w_add;
    m->ops.add_channel_bias = w_cbias;
    m->ops.lincomb = w_lincomb;
    m->ops.copy = w_copy;
    m->ops.fill = w_fill;
    m->ops.transpose12 = w_t12;
    m->ops.concat = w_concat;
    m->ops.upsample_nearest2x = w_up2;
    m->ops.embedding = w_embedding;
    m->ops.graph_new = g_new;
    m->ops.graph_free = g_free;
    m->ops.graph_pool_begin = g_pool_begin;
    m->ops.graph_pool_end = g_pool_end;
    m->ops.graph_pool_bytes = g_pool_bytes;
    m->ops.graph_capture_begin = g_capture_begin;
    m->ops.graph_capture_end = g_capture_end;
    m->ops.graph_launch = g_launch;
    snprintf(m->be.desc, sizeof m->be.desc, "mock graphs over %.200s", cpu->desc);
    return m;
}

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
