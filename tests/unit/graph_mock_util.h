/* graph_mock_util.h: a backend that behaves like CUDA graphs do, over the CPU backend, for the
 * tests of engine/unet_graph.c (test_unet_graph.c):
 *   - while capturing, every op is recorded (tensors by value, so by address; host tables such as
 *     kv_index and set_channels' channels and values copied, i.e. baked in) instead of run, and
 *     a launch runs the recording on whatever memory holds at that moment;
 *   - a pool period serves allocations from the graph's own blocks (growing the pool unless
 *     frozen), a capture may not grow it, and upload/download/sync while capturing fail the op,
 *     as they invalidate a CUDA capture;
 *   - pool blocks go back to the pool when freed and are never handed to other tensors;
 *   - test knobs: the next allocation of a capture fails (a recording that comes up short), and
 *     an allocation asks the backend's reclaimers first (memory running short in mid-call). */
#ifndef LOCO_GRAPH_MOCK_UTIL_H
#define LOCO_GRAPH_MOCK_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "loco_test.h" /* model_ref_util.h needs it first */
#include "model_ref_util.h"

/* ---- the recording backend ----------------------------------------------------------------------- */

enum { R_LINEAR, R_CONV, R_GN, R_LN, R_ATTN, R_ACT, R_GEGLU, R_ADD, R_CBIAS, R_LINCOMB, R_COPY, R_FILL, R_T12,
       R_CONCAT, R_UP2, R_SETC };

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
    int n;              /* lincomb inputs, set_channels channels */
    loco_tensor *xs;    /* lincomb inputs by value */
    float *coef;        /* lincomb coefficients, set_channels values (baked, as kernel arguments) */
    int32_t *ch;        /* set_channels channels (baked) */
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
    /* test knob: the next allocation of this kind first runs loco_backend_reclaim (for all it
     * can get), as CUDA's allocator does when the device is full; with a UNet call in progress
     * either way */
    enum { RECLAIM_NEVER = 0, RECLAIM_IN_POOL_PERIOD, RECLAIM_AFTER_LAUNCH } reclaim_at;
    int launched;           /* a graph launch came after the last allocation */
    int oom_after_launch;   /* test knob: the next allocation after a graph launch (a replay's result
                               copy) fails with LOCO_EDEVICE_OOM */
    size_t reclaimed_bytes; /* what the knob's reclaims gave back */
    mgraph *graphs[16];
    int ngraphs;
    long launches;
} mock;

static mock *M(loco_backend *be) { return (mock *)be; }

static void rec_free(rec *r) {
    free(r->kv);
    free(r->xs);
    free(r->coef);
    free(r->ch);
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
    case R_SETC: return o->set_channels(be, &r->t[0], r->ch, r->coef, r->n, err);
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
static loco_status w_setc(loco_backend *be, loco_tensor *y, const int32_t *ch, const float *v, int n, loco_err *err) {
    mock *m = M(be);
    if (!m->capturing) return m->base.set_channels(be, y, ch, v, n, err);
    rec *r = push(m);
    r->kind = R_SETC, put(r, 0, y), r->n = n;
    r->ch = malloc((size_t)(n ? n : 1) * sizeof *r->ch);
    r->coef = malloc((size_t)(n ? n : 1) * sizeof *r->coef);
    if (!r->ch || !r->coef) return loco_err_set(err, LOCO_ENOMEM, "mock: out of host memory");
    if (n > 0) memcpy(r->ch, ch, (size_t)n * sizeof *r->ch), memcpy(r->coef, v, (size_t)n * sizeof *r->coef);
    return LOCO_OK;
}
/* ops a capture must not contain (CUDA: host transfers and syncs invalidate it) */
static loco_status w_u8_images(loco_backend *be, uint8_t *dst, const void *src, loco_dtype sd, int64_t n, int64_t c,
                               int64_t hw, int64_t *nan_at, loco_err *err) {
    mock *m = M(be);
    if (m->capturing) return loco_err_set(err, LOCO_EDEVICE, "mock: image download while capturing");
    return m->base.download_u8_images(be, dst, src, sd, n, c, hw, nan_at, err);
}
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
    if ((m->reclaim_at == RECLAIM_IN_POOL_PERIOD && m->active && !m->capturing) ||
        (m->reclaim_at == RECLAIM_AFTER_LAUNCH && m->launched)) {
        m->reclaim_at = RECLAIM_NEVER;
        m->reclaimed_bytes += loco_backend_reclaim(be, SIZE_MAX);
    }
    if (m->oom_after_launch && m->launched) {
        m->oom_after_launch = 0;
        m->launched = 0;
        return loco_err_set(err, LOCO_EDEVICE_OOM, "mock: the device is full (test knob)");
    }
    m->launched = 0;
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
    m->launched = 1;
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
    m->ops.set_channels = w_setc;
    m->ops.download_u8_images = w_u8_images;
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

#endif
