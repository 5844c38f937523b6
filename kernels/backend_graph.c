/* backend_graph.c: the backend-independent half of the graph API of backend.h. It keeps the
 * call order honest (pool and capture periods are properly nested, a launch only after a
 * successful capture) so that a backend's hooks can assume it; the recording itself is the
 * backend's (kernels/cuda/graph.cu). */
#include <stdlib.h>

#include "backend_impl.h"

typedef enum graph_phase {
    GRAPH_IDLE = 0,
    GRAPH_POOL,      /* between pool_begin and pool_end */
    GRAPH_CAPTURING, /* between capture_begin and capture_end */
} graph_phase;

struct loco_graph {
    loco_backend *be;
    void *impl;
    graph_phase phase;
    int ready; /* the last capture_end succeeded */
};

int loco_backend_has_graphs(const loco_backend *be) { return be && be->ops && be->ops->graph_new != NULL; }

loco_status loco_graph_new(loco_backend *be, loco_graph **out, loco_err *err) {
    if (out) *out = NULL;
    if (!be || !out) return loco_err_set(err, LOCO_EINVAL, "graph_new: backend and out are required");
    if (!loco_backend_has_graphs(be))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "graphs are not supported by the %s backend%s",
                            loco_device_name(be->device),
                            be->device == LOCO_DEVICE_CUDA ? " (disabled with LOCO_CUDA_GRAPHS=0)" : "");
    loco_graph *g = calloc(1, sizeof *g);
    if (!g) return loco_err_set(err, LOCO_ENOMEM, "graph_new: out of memory");
    g->be = be;
    loco_status st = be->ops->graph_new(be, &g->impl, err);
    if (st != LOCO_OK) {
        free(g);
        return st;
    }
    *out = g;
    return LOCO_OK;
}

void loco_graph_free(loco_graph *g) {
    if (!g) return;
    /* A graph freed mid-period (an error path that forgot to end it) must not leave the
     * backend allocating from a pool that is about to disappear, or a stream still capturing. */
    if (g->phase == GRAPH_CAPTURING) g->be->ops->graph_capture_end(g->be, g->impl, 0, NULL);
    if (g->phase == GRAPH_POOL) g->be->ops->graph_pool_end(g->be, g->impl);
    g->be->ops->graph_free(g->be, g->impl);
    free(g);
}

loco_status loco_graph_pool_begin(loco_graph *g, loco_err *err) {
    if (!g) return loco_err_set(err, LOCO_EINVAL, "graph_pool_begin: graph is NULL");
    if (g->phase != GRAPH_IDLE)
        return loco_err_set(err, LOCO_EINVAL, "graph_pool_begin: the graph is already %s",
                            g->phase == GRAPH_POOL ? "in a pool period" : "capturing");
    loco_status st = g->be->ops->graph_pool_begin(g->be, g->impl, 0, err);
    if (st == LOCO_OK) g->phase = GRAPH_POOL;
    return st;
}

size_t loco_graph_pool_end(loco_graph *g) {
    if (!g || g->phase != GRAPH_POOL) return 0;
    g->phase = GRAPH_IDLE;
    return g->be->ops->graph_pool_end(g->be, g->impl);
}

size_t loco_graph_pool_bytes(const loco_graph *g) { return g ? g->be->ops->graph_pool_bytes(g->be, g->impl) : 0; }

loco_status loco_graph_capture_begin(loco_graph *g, loco_err *err) {
    if (!g) return loco_err_set(err, LOCO_EINVAL, "graph_capture_begin: graph is NULL");
    if (g->phase != GRAPH_IDLE)
        return loco_err_set(err, LOCO_EINVAL, "graph_capture_begin: the graph is already %s",
                            g->phase == GRAPH_POOL ? "in a pool period" : "capturing");
    loco_status st = g->be->ops->graph_capture_begin(g->be, g->impl, err);
    if (st == LOCO_OK) g->phase = GRAPH_CAPTURING;
    return st;
}

loco_status loco_graph_capture_end(loco_graph *g, loco_err *err) {
    if (!g) return loco_err_set(err, LOCO_EINVAL, "graph_capture_end: graph is NULL");
    if (g->phase != GRAPH_CAPTURING) return loco_err_set(err, LOCO_EINVAL, "graph_capture_end: not capturing");
    g->phase = GRAPH_IDLE;
    loco_status st = g->be->ops->graph_capture_end(g->be, g->impl, 1, err);
    g->ready = st == LOCO_OK;
    return st;
}

void loco_graph_capture_abort(loco_graph *g) {
    if (!g || g->phase != GRAPH_CAPTURING) return;
    g->phase = GRAPH_IDLE;
    g->ready = 0;
    g->be->ops->graph_capture_end(g->be, g->impl, 0, NULL);
}

int loco_graph_ready(const loco_graph *g) { return g && g->ready; }

loco_status loco_graph_launch(loco_graph *g, loco_err *err) {
    if (!g) return loco_err_set(err, LOCO_EINVAL, "graph_launch: graph is NULL");
    if (g->phase != GRAPH_IDLE)
        return loco_err_set(err, LOCO_EINVAL, "graph_launch: not allowed inside a pool period or a capture");
    if (!g->ready) return loco_err_set(err, LOCO_EINVAL, "graph_launch: nothing captured");
    return g->be->ops->graph_launch(g->be, g->impl, err);
}
