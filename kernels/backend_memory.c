/* backend_memory.c: the backend-independent half of backend.h's memory pressure: the registry
 * of reclaimers, and the device memory query.
 *
 * The registry is a plain array walked in registration order: a worker holds a few models, each
 * registering one reclaimer for its recorded UNet graphs, so there is nothing to search. */
#include <stdlib.h>

#include "backend_impl.h"

struct loco_reclaimer {
    loco_reclaim_fn fn;
    void *ctx;
};

static int find_reclaimer(const loco_backend *be, loco_reclaim_fn fn, const void *ctx) {
    for (int i = 0; i < be->n_reclaimers; i++)
        if (be->reclaimers[i].fn == fn && be->reclaimers[i].ctx == ctx) return i;
    return -1;
}

loco_status loco_backend_add_reclaimer(loco_backend *be, loco_reclaim_fn fn, void *ctx, loco_err *err) {
    if (!be || !fn) return loco_err_set(err, LOCO_EINVAL, "add_reclaimer: backend and function are required");
    if (find_reclaimer(be, fn, ctx) >= 0)
        return loco_err_set(err, LOCO_EINVAL, "add_reclaimer: this function and context are already registered");
    if (be->n_reclaimers == be->cap_reclaimers) {
        const int cap = be->cap_reclaimers ? 2 * be->cap_reclaimers : 8;
        struct loco_reclaimer *r = realloc(be->reclaimers, (size_t)cap * sizeof *r);
        if (!r) return loco_err_set(err, LOCO_ENOMEM, "add_reclaimer: out of host memory");
        be->reclaimers = r;
        be->cap_reclaimers = cap;
    }
    be->reclaimers[be->n_reclaimers++] = (struct loco_reclaimer){fn, ctx};
    return LOCO_OK;
}

void loco_backend_remove_reclaimer(loco_backend *be, loco_reclaim_fn fn, void *ctx) {
    if (!be) return;
    const int i = find_reclaimer(be, fn, ctx);
    if (i < 0) return;
    /* keep the order: reclaimers are asked oldest first */
    for (int k = i + 1; k < be->n_reclaimers; k++) be->reclaimers[k - 1] = be->reclaimers[k];
    be->n_reclaimers--;
}

size_t loco_backend_reclaimable(loco_backend *be) {
    if (!be || be->reclaiming) return 0;
    be->reclaiming = 1;
    size_t n = 0;
    for (int i = 0; i < be->n_reclaimers; i++) n += be->reclaimers[i].fn(be->reclaimers[i].ctx, LOCO_RECLAIM_COUNT, 0);
    be->reclaiming = 0;
    return n;
}

size_t loco_backend_reclaim(loco_backend *be, size_t want) {
    if (!be || be->reclaiming || want == 0) return 0;
    be->reclaiming = 1;
    size_t freed = 0;
    /* By index, re-read each time: a reclaimer may remove itself (its owner's cache emptied). */
    for (int i = 0; i < be->n_reclaimers && freed < want; i++) {
        const struct loco_reclaimer r = be->reclaimers[i];
        freed += r.fn(r.ctx, LOCO_RECLAIM_FREE, want - freed);
        if (i < be->n_reclaimers && (be->reclaimers[i].fn != r.fn || be->reclaimers[i].ctx != r.ctx)) i--;
    }
    be->reclaiming = 0;
    return freed;
}

void loco_backend_reclaimers_free(loco_backend *be) {
    free(be->reclaimers);
    be->reclaimers = NULL;
    be->n_reclaimers = be->cap_reclaimers = 0;
}

loco_status loco_backend_device_memory(loco_backend *be, size_t *free_bytes, size_t *total_bytes, loco_err *err) {
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    if (!be) return loco_err_set(err, LOCO_EINVAL, "device_memory: backend is NULL");
    if (!be->ops->device_memory)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "the %s backend has no device memory to report",
                            loco_device_name(be->device));
    size_t f = 0, t = 0;
    loco_status st = be->ops->device_memory(be, &f, &t, err);
    if (st) return st;
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return LOCO_OK;
}
