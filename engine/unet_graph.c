/* unet_graph.c: UNet calls recorded as backend graphs and replayed (unet.h, "graphs").
 *
 * What a recording bakes in, and how each is kept valid:
 *   - the sample and the SiLU'd time embedding: read from tensors the entry owns (x, temb),
 *     into which every call copies its own first, so callers may pass any tensors;
 *   - the result: written into a tensor the entry owns (out) and copied into a fresh tensor for
 *     the caller, so the caller frees its result as it always does;
 *   - every intermediate: allocated from the graph's private pool (backend.h), never reused by
 *     anyone else while the graph lives;
 *   - weights and precomputed text K/V: their device addresses; text_index and the per-layer
 *     K/V rows: their values (they ride in kernel arguments);
 *   - site hooks (interventions: restore, ablate), only those that carry a replay_id
 *     (sites.h): what they enqueued while recording. A replay does not call them, so their
 *     function, acts_at and replay_id bytes are part of the binding.
 * These are the entry's "binding", compared on every call: any difference records again (same
 * shapes, so the warmed pool fits and no GPU work is spent; only host time). A hook's first
 * recording may come up short (a hooked body keeps more outputs than a plain one): that call
 * runs normally in the pool period, which then holds enough, and the next call records.
 * The first call of a new shape runs normally inside a pool period, which fills the pool; the
 * second records (capture allowed no allocation, see kernels/cuda/graph.cu) and replays; the
 * following calls only replay. Recording failures (a capture the pool cannot serve, a driver
 * refusing the graph) never fail the call: it runs normally, and after UG_TRIES failures the
 * shape stays on the normal path and its pool is released. Errors of the computation itself
 * (out of memory, bad inputs) are the caller's, as without graphs.
 *
 * Memory pressure: the graphs register a reclaimer with the backend (backend.h). When a device
 * allocation fails (any model's, any op's, this UNet's own), recorded shapes other than the one
 * the call in progress uses give back their pools and fixed tensors, least recently used first,
 * as many as the request needs, and record again when next used. So idle pools (gigabytes for
 * big batches) never turn into another request's out of memory. The call in progress, when it
 * runs short itself, forgets its own shape (oom_retry, replay_oom). A shape forgotten so starts
 * over, failed recordings counted afresh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet_impl.h"

#define UG_MAX 4   /* recorded shapes per UNet (LRU) */
#define UG_TRIES 3 /* failed recordings before a shape stays on the normal path */

typedef enum ug_state {
    UG_WARMUP = 0, /* next call: run normally inside a pool period */
    UG_RECORD,     /* next call: record, then replay */
    UG_READY,      /* replay (after re-recording if the binding changed) */
    UG_EAGER,      /* recording gave up for this shape */
} ug_state;

typedef struct ug_binding {
    int *rows;        /* text_index [B], then each cross layer's K/V rows [B] */
    size_t nrows;
    const void **ptr; /* text K/V data of every cross layer (k, v, k1, v1), then every weight */
    size_t nptr;
    loco_site_fn hook; /* the site hook (NULL: none), where it acts, and a copy of its replay_id */
    int (*hook_acts_at)(void *ctx, const loco_site *site);
    unsigned char *hook_id;
    size_t hook_n;
} ug_binding;

typedef struct ug_entry {
    int used;
    /* shape key */
    int64_t xshape[4];
    loco_dtype xdtype;
    int64_t tshape[2];
    loco_dtype tdtype;
    int Bt, L;
    /* state */
    ug_state state;
    int tries;
    uint64_t last_use;
    loco_graph *g;
    loco_tensor x, temb, out; /* fixed addresses the recording reads and writes */
    ug_binding bound;         /* what the current recording baked in */
} ug_entry;

struct unet_graphs {
    ug_entry e[UG_MAX];
    ug_entry *busy; /* the entry of the call in progress: its reclaimer leaves it alone */
    uint64_t clock;
    long captures, replays, eager_calls, reclaimed;
    char last_error[256];
};

static void binding_free(ug_binding *b) {
    free(b->rows);
    free((void *)b->ptr);
    free(b->hook_id);
    memset(b, 0, sizeof *b);
}

static int binding_equal(const ug_binding *a, const ug_binding *b) {
    return a->nrows == b->nrows && a->nptr == b->nptr && memcmp(a->rows, b->rows, a->nrows * sizeof *a->rows) == 0 &&
           memcmp(a->ptr, b->ptr, a->nptr * sizeof *a->ptr) == 0 && a->hook == b->hook &&
           a->hook_acts_at == b->hook_acts_at && a->hook_n == b->hook_n &&
           (a->hook_n == 0 || memcmp(a->hook_id, b->hook_id, a->hook_n) == 0);
}

/* The binding of this call; 0 on success, -1 out of host memory. */
static int binding_make(const unet_run *r, ug_binding *b) {
    const loco_unet *u = r->u;
    const int B = r->B, nc = u->n_cross;
    memset(b, 0, sizeof b[0]);
    b->nrows = (size_t)B * (size_t)(1 + nc);
    b->nptr = (size_t)nc * 4 + u->params.n;
    b->rows = malloc((b->nrows ? b->nrows : 1) * sizeof *b->rows);
    b->ptr = malloc((b->nptr ? b->nptr : 1) * sizeof *b->ptr);
    const loco_site_hooks *h = r->hooks && r->hooks->after ? r->hooks : NULL;
    b->hook = h ? h->after : NULL;
    b->hook_acts_at = h ? h->acts_at : NULL;
    b->hook_n = h ? h->replay_size : 0;
    if (b->hook_n && (b->hook_id = malloc(b->hook_n))) memcpy(b->hook_id, h->replay_id, b->hook_n);
    if (!b->rows || !b->ptr || (b->hook_n && !b->hook_id)) {
        binding_free(b);
        return -1;
    }
    memcpy(b->rows, r->text_index, (size_t)B * sizeof *b->rows);
    for (int i = 0; i < nc; i++) {
        const int *rows = r->kv_index_per_layer && r->kv_index_per_layer[i] ? r->kv_index_per_layer[i] : r->text_index;
        memcpy(b->rows + (size_t)B * (size_t)(1 + i), rows, (size_t)B * sizeof *b->rows);
        b->ptr[4 * i + 0] = r->kv->k[i].data;
        b->ptr[4 * i + 1] = r->kv->v[i].data;
        b->ptr[4 * i + 2] = r->kv->k1 ? r->kv->k1[i].data : NULL;
        b->ptr[4 * i + 3] = r->kv->v1 ? r->kv->v1[i].data : NULL;
    }
    for (size_t i = 0; i < u->params.n; i++) b->ptr[(size_t)nc * 4 + i] = u->params.items[i].t->data;
    return 0;
}

static void entry_clear(ug_entry *e) {
    loco_graph_free(e->g); /* waits for enqueued replays before the pool goes */
    loco_tensor_free(&e->x);
    loco_tensor_free(&e->temb);
    loco_tensor_free(&e->out);
    binding_free(&e->bound);
    memset(e, 0, sizeof *e);
}

static size_t held_bytes(const loco_tensor *t) { return t->data ? loco_tensor_nbytes(t) : 0; }

/* Device memory an entry holds: its pool and fixed tensors. */
static size_t entry_bytes(const ug_entry *e) {
    return loco_graph_pool_bytes(e->g) + held_bytes(&e->x) + held_bytes(&e->temb) + held_bytes(&e->out);
}

/* The backend's reclaimer. COUNT: what every shape but the busy one holds. FREE: those shapes
 * are forgotten, least recently used first, until `want` bytes went back (each one's next call
 * warms up and records again). Entries that hold nothing keep their state, so a shape that gave
 * up recording stays on the normal path. The busy entry is never touched: its pool may be the
 * active one (and gemm.cu's tuning briefly hides that pointer, restoring it after). */
static size_t graphs_reclaim(void *ctx, loco_reclaim_mode mode, size_t want) {
    struct unet_graphs *gs = ctx;
    size_t total = 0;
    for (;;) {
        ug_entry *lru = NULL;
        size_t lru_bytes = 0;
        for (int i = 0; i < UG_MAX; i++) {
            ug_entry *e = &gs->e[i];
            const size_t bytes = e->used && e != gs->busy ? entry_bytes(e) : 0;
            if (!bytes) continue;
            if (mode == LOCO_RECLAIM_COUNT) {
                total += bytes;
            } else if (!lru || e->last_use < lru->last_use) {
                lru = e;
                lru_bytes = bytes;
            }
        }
        if (mode == LOCO_RECLAIM_COUNT || !lru) return total;
        entry_clear(lru);
        gs->reclaimed++;
        total += lru_bytes;
        if (total >= want) return total;
    }
}

/* The graph state of u with its reclaimer registered; NULL when host memory ran out. */
static struct unet_graphs *graphs_create(loco_unet *u) {
    struct unet_graphs *gs = calloc(1, sizeof *gs);
    if (!gs) return NULL;
    loco_err err;
    if (loco_backend_add_reclaimer(u->be, graphs_reclaim, gs, &err)) {
        free(gs);
        return NULL;
    }
    return gs;
}

void unet_graphs_free(loco_unet *u) {
    struct unet_graphs *gs = u->graphs;
    if (!gs) return;
    loco_backend_remove_reclaimer(u->be, graphs_reclaim, gs);
    for (int i = 0; i < UG_MAX; i++) entry_clear(&gs->e[i]);
    free(gs);
    u->graphs = NULL;
}

void loco_unet_set_graphs(loco_unet *u, int on) {
    if (!u) return;
    u->graphs_off = !on;
    if (!on) unet_graphs_free(u);
}

void loco_unet_graph_stats_get(const loco_unet *u, loco_unet_graph_stats *st) {
    memset(st, 0, sizeof *st);
    const struct unet_graphs *gs = u ? u->graphs : NULL;
    if (!gs) return;
    st->captures = gs->captures;
    st->replays = gs->replays;
    st->eager_calls = gs->eager_calls;
    st->reclaimed = gs->reclaimed;
    memcpy(st->last_error, gs->last_error, sizeof st->last_error);
    for (int i = 0; i < UG_MAX; i++) {
        const ug_entry *e = &gs->e[i];
        if (!e->used || !e->g) continue;
        if (e->state == UG_READY) st->shapes++;
        st->pool_bytes += loco_graph_pool_bytes(e->g);
    }
}

int unet_graph_eligible(const loco_unet *u, const loco_unet_inputs *in) {
    /* hooks only when they say what they do (sites.h, replay_id): a replay does not call them */
    const int hooks_ok = !in->hooks.after || in->hooks.replay_id;
    return !u->graphs_off && loco_backend_has_graphs(u->be) && !in->probe && hooks_ok && in->text_kv;
}

static void note_failure(struct unet_graphs *gs, const char *what, const loco_err *e) {
    snprintf(gs->last_error, sizeof gs->last_error, "%s: %.200s", what, e->msg[0] ? e->msg : loco_status_name(e->code));
}

/* The entry for this call's shapes: found, a free slot, or the least recently used one. */
static ug_entry *entry_for(struct unet_graphs *gs, const unet_run *r, const loco_tensor *x) {
    const loco_tensor *t = r->temb_act;
    ug_entry *lru = NULL;
    for (int i = 0; i < UG_MAX; i++) {
        ug_entry *e = &gs->e[i];
        if (e->used && e->xdtype == x->dtype && memcmp(e->xshape, x->shape, sizeof e->xshape) == 0 &&
            e->tdtype == t->dtype && e->tshape[0] == t->shape[0] && e->tshape[1] == t->shape[1] &&
            e->Bt == r->kv->batch && e->L == r->kv->tokens)
            return e;
        if (!lru || !e->used || (lru->used && e->last_use < lru->last_use)) lru = e;
    }
    entry_clear(lru);
    lru->used = 1;
    memcpy(lru->xshape, x->shape, sizeof lru->xshape);
    lru->xdtype = x->dtype;
    lru->tshape[0] = t->shape[0];
    lru->tshape[1] = t->shape[1];
    lru->tdtype = t->dtype;
    lru->Bt = r->kv->batch;
    lru->L = r->kv->tokens;
    lru->state = UG_WARMUP;
    return lru;
}

/* The graph object and the fixed tensors of a new entry. */
static loco_status entry_prepare(loco_backend *be, ug_entry *e, loco_err *err) {
    loco_status s = LOCO_OK;
    if (!e->g) s = loco_graph_new(be, &e->g, err);
    if (!s && !e->x.data) s = loco_tensor_alloc(be, e->xdtype, 4, e->xshape, &e->x, err);
    if (!s && !e->temb.data) s = loco_tensor_alloc(be, e->tdtype, 2, e->tshape, &e->temb, err);
    return s;
}

/* Copy a pool tensor out into a fresh tensor of the main allocator (the caller's result). */
static loco_status copy_out(loco_backend *be, const loco_tensor *src, loco_tensor *out, loco_err *err) {
    loco_status s = loco_tensor_alloc(be, src->dtype, src->ndim, src->shape, out, err);
    if (!s) s = loco_copy(be, out, src, err);
    if (s) loco_tensor_free(out);
    return s;
}

/* The normal path inside the entry's pool period, so that the pool learns (and, when a
 * recording came up short, adds) the blocks the call needs. */
static loco_status pooled_call(ug_entry *e, const unet_run *r, const loco_tensor *x, loco_tensor *out, loco_err *err) {
    loco_tensor o = {0};
    memset(out, 0, sizeof *out);
    loco_status s = loco_graph_pool_begin(e->g, err);
    if (s) return s;
    s = unet_body(r, x, NULL, NULL, &o, err);
    loco_graph_pool_end(e->g);
    /* the caller's result must not live in the pool: a block held after the period would make
     * the next recording come up short; o itself goes back to the pool when freed */
    if (!s) s = copy_out(r->be, &o, out, err);
    loco_tensor_free(&o);
    return s;
}

/* The call's hooks as seen by a recording: a hook's own error (a bad plan, not a capture
 * problem) is told apart from the recording's, so that it reaches the caller as it would without
 * graphs, never counted as a failed recording. */
typedef struct hook_guard {
    const loco_site_hooks *inner;
    int failed;
} hook_guard;

static loco_status guarded_hook(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    hook_guard *g = ctx;
    const loco_status s = g->inner->after(g->inner->ctx, site, out, err);
    if (s) g->failed = 1;
    return s;
}

static int guarded_acts_at(void *ctx, const loco_site *site) {
    const hook_guard *g = ctx;
    return g->inner->acts_at(g->inner->ctx, site);
}

/* Record unet_body on the entry's fixed tensors. On success the entry's out holds the
 * recording's result address and e->bound the binding. *hook_failed: the error is a hook's. */
static loco_status record(ug_entry *e, const unet_run *r, ug_binding *b, int *hook_failed, loco_err *err) {
    loco_backend *be = r->be;
    if (!e->out.data) {
        /* conv_out's output: [B, out_channels, H, W] in the sample's dtype */
        const int64_t shape[4] = {e->xshape[0], r->u->cfg.out_channels, e->xshape[2], e->xshape[3]};
        loco_status s = loco_tensor_alloc(be, e->xdtype, 4, shape, &e->out, err);
        if (s) return s;
    }
    unet_run rr = *r;
    rr.temb_act = &e->temb;
    hook_guard guard = {.inner = r->hooks, .failed = 0};
    loco_site_hooks guarded;
    if (r->hooks && r->hooks->after) {
        guarded = *r->hooks; /* every callback sees the guard as its ctx */
        guarded.after = guarded_hook;
        guarded.acts_at = r->hooks->acts_at ? guarded_acts_at : NULL;
        guarded.ctx = &guard;
        rr.hooks = &guarded;
    }
    *hook_failed = 0;
    loco_tensor o = {0};
    loco_status s = loco_graph_capture_begin(e->g, err);
    if (s) return s;
    s = unet_body(&rr, &e->x, NULL, NULL, &o, err);
    if (!s) s = loco_copy(be, &e->out, &o, err);
    loco_tensor_free(&o); /* back to the pool: its last use is already recorded */
    if (s) {
        loco_graph_capture_abort(e->g);
        *hook_failed = guard.failed;
        return s;
    }
    if ((s = loco_graph_capture_end(e->g, err))) return s;
    binding_free(&e->bound);
    e->bound = *b;
    memset(b, 0, sizeof *b);
    return LOCO_OK;
}

static loco_status replay(ug_entry *e, const unet_run *r, const loco_tensor *x, loco_tensor *out, loco_err *err) {
    loco_backend *be = r->be;
    loco_status s = loco_copy(be, &e->x, x, err);
    if (!s) s = loco_copy(be, &e->temb, r->temb_act, err);
    if (!s) s = loco_graph_launch(e->g, err);
    if (!s) s = copy_out(be, &e->out, out, err);
    return s;
}

/* A replay whose result copy ran short (the only allocation of a replay): the result is complete
 * in e->out, which the main allocator holds. The pool goes first (its memory may be what the copy
 * needs; the reclaimers never take the busy entry's), then the copy is tried once more; the shape
 * is forgotten and records again when next used. */
static loco_status replay_oom(struct unet_graphs *gs, ug_entry *e, const unet_run *r, loco_tensor *out,
                              loco_err *err) {
    note_failure(gs, "out of memory", err);
    loco_graph_free(e->g); /* waits for the replay */
    e->g = NULL;
    const loco_status s = copy_out(r->be, &e->out, out, err);
    entry_clear(e);
    return s;
}

/* Recording is over for this shape: release its memory, run normally from now on. */
static void give_up(struct unet_graphs *gs, ug_entry *e, const char *what, const loco_err *why) {
    note_failure(gs, what, why);
    loco_graph_free(e->g);
    e->g = NULL;
    loco_tensor_free(&e->x);
    loco_tensor_free(&e->temb);
    loco_tensor_free(&e->out);
    binding_free(&e->bound);
    e->state = UG_EAGER;
}

/* Out of device memory in a pool period or a new entry's setup: the pool and the main cache hold
 * memory apart (and the reclaimers never take the busy entry's), so give the pool's back and let
 * the plain path try with everything. The shape is forgotten, not
 * marked plain: with more memory free later (a smaller request before it, a freed model) it gets
 * a graph again. */
static loco_status oom_retry(struct unet_graphs *gs, ug_entry *e, const unet_run *r, const loco_tensor *x,
                             const loco_err *why, loco_tensor *out, loco_err *err) {
    note_failure(gs, "out of memory", why);
    entry_clear(e);
    return unet_body(r, x, NULL, NULL, out, err);
}

/* A call on entry e (busy for its whole length). */
static loco_status forward_on(struct unet_graphs *gs, ug_entry *e, const unet_run *r, const loco_tensor *x,
                              loco_tensor *out, loco_err *err) {
    loco_err gerr; /* recording trouble: noted, never the caller's error */
    loco_err_clear(&gerr);

    if (e->state == UG_EAGER) {
        gs->eager_calls++;
        return unet_body(r, x, NULL, NULL, out, err);
    }
    if (entry_prepare(r->be, e, &gerr)) {
        gs->eager_calls++;
        if (gerr.code == LOCO_EDEVICE_OOM) return oom_retry(gs, e, r, x, &gerr, out, err);
        give_up(gs, e, "preparing a graph", &gerr);
        return unet_body(r, x, NULL, NULL, out, err);
    }
    if (e->state == UG_WARMUP) {
        gs->eager_calls++;
        loco_status s = pooled_call(e, r, x, out, err);
        if (s == LOCO_EDEVICE_OOM) return oom_retry(gs, e, r, x, err, out, err);
        if (!s) e->state = UG_RECORD;
        return s;
    }

    ug_binding b;
    if (binding_make(r, &b)) return loco_err_set(err, LOCO_ENOMEM, "unet graph: out of host memory");
    if (e->state == UG_READY && binding_equal(&b, &e->bound)) {
        binding_free(&b);
        gs->replays++;
        const loco_status s = replay(e, r, x, out, err);
        return s == LOCO_EDEVICE_OOM ? replay_oom(gs, e, r, out, err) : s;
    }
    /* a new recording: first of this shape, or the binding changed */
    int hook_failed = 0;
    loco_status s = record(e, r, &b, &hook_failed, &gerr);
    binding_free(&b); /* taken over by record() on success */
    if (s && hook_failed) {
        /* a hook's error: the plan's (a bad row), or one of its device ops refused in the capture.
         * The plain call tells them apart: the plan's error comes back from it as it would
         * without graphs, and is no failed recording; if it runs, the recording failed. Either
         * way the aborted capture left no graph to launch: the next call records. */
        gs->eager_calls++;
        e->state = UG_RECORD;
        s = pooled_call(e, r, x, out, err);
        if (s == LOCO_EDEVICE_OOM) return oom_retry(gs, e, r, x, err, out, err);
        if (s) return s;
        if (++e->tries >= UG_TRIES)
            give_up(gs, e, "recording", &gerr);
        else
            note_failure(gs, "recording", &gerr);
        return LOCO_OK;
    }
    if (!s) {
        e->state = UG_READY;
        e->tries = 0;
        gs->captures++;
        gs->replays++;
        s = replay(e, r, x, out, err);
        return s == LOCO_EDEVICE_OOM ? replay_oom(gs, e, r, out, err) : s;
    }
    gs->eager_calls++;
    /* out of memory while recording (its out tensor, or the driver instantiating the graph, which
     * does not go through the allocator): the other shapes' idle memory goes first and this one
     * counts a failed try; with nothing to give back, it is forgotten and runs plainly */
    if (gerr.code == LOCO_EDEVICE_OOM && loco_backend_reclaim(r->be, SIZE_MAX) == 0)
        return oom_retry(gs, e, r, x, &gerr, out, err);
    e->state = UG_RECORD;
    if (++e->tries >= UG_TRIES) {
        give_up(gs, e, "recording", &gerr);
        return unet_body(r, x, NULL, NULL, out, err);
    }
    note_failure(gs, "recording", &gerr);
    /* run normally in the pool period: whatever the recording lacked, the pool gets now */
    s = pooled_call(e, r, x, out, err);
    if (s == LOCO_EDEVICE_OOM) return oom_retry(gs, e, r, x, err, out, err);
    return s;
}

loco_status unet_graph_forward(const unet_run *r, const loco_tensor *x, loco_tensor *out, loco_err *err) {
    loco_unet *u = r->u;
    memset(out, 0, sizeof *out);
    if (!u->graphs && !(u->graphs = graphs_create(u))) return unet_body(r, x, NULL, NULL, out, err);
    struct unet_graphs *gs = u->graphs;
    ug_entry *e = entry_for(gs, r, x);
    e->last_use = ++gs->clock;
    gs->busy = e;
    const loco_status s = forward_on(gs, e, r, x, out, err);
    gs->busy = NULL;
    return s;
}
