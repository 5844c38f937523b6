/* graph.cu: CUDA graphs for the backend (backend.h, "graphs"): a private memory pool per graph,
 * stream capture of the backend's one stream, instantiation and replay.
 *
 * Why a pool: the ops free their intermediates back to the allocator as soon as the launches
 * that use them are enqueued. In a captured graph those addresses are baked in, so if the
 * blocks went back to the main cache after the capture, the next eager op could be given one
 * and a replay would overwrite it. Blocks a graph used therefore stay in its pool, reserved,
 * until the graph is freed; inside a pool period they are reused among the graph's own ops in
 * stream order, exactly as the main cache reuses them.
 *
 * Why warm-up: cudaMalloc is not allowed while a stream captures (and cudaFree would sync), so
 * a capture allocates only from blocks the pool already holds. The caller runs the same ops in a
 * pool period first, which records the block each request got; the capture hands out the same
 * blocks in the same order (alloc.cu, trace_pick), so one warm-up is enough even when it grew
 * the pool. (Best fit over the full pool alone would not do: it can choose differently from
 * best fit over the pool as it grew, and come up short.)
 *
 * Capture mode is thread-local: a call that is illegal during capture made by this thread (a
 * sync, a cudaMalloc) invalidates the capture and cudaStreamEndCapture reports it; other
 * threads that use CUDA (another backend, PyTorch in the same process) are unaffected.
 *
 * Re-capture: when the caller captures again into a graph that already has an executable one
 * (new text K/V addresses, new kv_index tables), cudaGraphExecUpdate patches the executable
 * graph in place (same topology, new kernel arguments), which is far cheaper than a new
 * instantiation (the stream is drained first, so no enqueued launch can see a half-updated
 * graph); if the update is refused, the old executable graph is destroyed and a new one is
 * instantiated. */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

typedef struct cuda_graph {
    cuda_graph_pool pool;
    cudaGraph_t graph;    /* the last successful capture */
    cudaGraphExec_t exec; /* its executable form */
} cuda_graph;

static void unlink_pool(cuda_impl *c, cuda_graph_pool *p) {
    for (cuda_graph_pool **pp = &c->pools; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    p->next = NULL;
    if (c->active_pool == p) c->active_pool = NULL;
}

extern "C" loco_status cuda_graph_new(loco_backend *be, void **out, loco_err *err) {
    cuda_impl *c = cuda_of(be);
    *out = NULL;
    cuda_graph *g = (cuda_graph *)calloc(1, sizeof *g);
    if (!g) return loco_err_set(err, LOCO_ENOMEM, "cuda graph: out of host memory");
    g->pool.next = c->pools;
    c->pools = &g->pool;
    *out = g;
    return LOCO_OK;
}

extern "C" void cuda_graph_free(loco_backend *be, void *gp) {
    cuda_impl *c = cuda_of(be);
    cuda_graph *g = (cuda_graph *)gp;
    if (!g) return;
    cuda_enter(be, NULL);
    /* launches already enqueued still read and write the pool */
    cudaStreamSynchronize(c->stream);
    if (g->exec) cudaGraphExecDestroy(g->exec);
    if (g->graph) cudaGraphDestroy(g->graph);
    unlink_pool(c, &g->pool);
    cuda_pool_release(&g->pool);
    free(g);
}

extern "C" void cuda_graph_pools_destroy(cuda_impl *c) {
    /* graphs their owners never freed: give the memory back; the graph objects themselves
     * dangle, which is why backend.h says to free graphs before their backend */
    while (c->pools) {
        cuda_graph_pool *p = c->pools;
        unlink_pool(c, p);
        cuda_pool_release(p);
    }
}

extern "C" loco_status cuda_graph_pool_begin(loco_backend *be, void *gp, int frozen, loco_err *err) {
    cuda_impl *c = cuda_of(be);
    cuda_graph *g = (cuda_graph *)gp;
    if (c->active_pool)
        return loco_err_set(err, LOCO_EINVAL,
                            "cuda graph: another graph's memory pool is active (pool periods do not nest)");
    g->pool.frozen = frozen;
    g->pool.grew = 0;
    /* a growing period (warm-up) records a new trace; a frozen one (capture) replays it */
    if (!frozen) g->pool.ntrace = 0;
    g->pool.cursor = 0;
    c->active_pool = &g->pool;
    return LOCO_OK;
}

extern "C" size_t cuda_graph_pool_end(loco_backend *be, void *gp) {
    cuda_impl *c = cuda_of(be);
    cuda_graph *g = (cuda_graph *)gp;
    if (c->active_pool == &g->pool) c->active_pool = NULL;
    g->pool.frozen = 0;
    return g->pool.grew;
}

extern "C" size_t cuda_graph_pool_bytes(const loco_backend *be, const void *gp) {
    (void)be;
    return ((const cuda_graph *)gp)->pool.bytes;
}

extern "C" loco_status cuda_graph_capture_begin(loco_backend *be, void *gp, loco_err *err) {
    cuda_impl *c = cuda_of(be);
    CUDA_TRY(cuda_enter(be, err));
    CUDA_TRY(cuda_graph_pool_begin(be, gp, 1, err));
    /* a launch error left over from earlier work would otherwise be blamed on the first
     * captured op */
    cudaGetLastError();
    loco_status st = cuda_check(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal),
                                "cudaStreamBeginCapture", err);
    if (st != LOCO_OK) cuda_graph_pool_end(be, gp);
    return st;
}

extern "C" loco_status cuda_graph_capture_end(loco_backend *be, void *gp, int keep, loco_err *err) {
    cuda_impl *c = cuda_of(be);
    cuda_graph *g = (cuda_graph *)gp;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    cuda_graph_pool_end(be, gp);
    if (!keep) {
        /* an op failed while recording: what was recorded is incomplete; the executable graph
         * of an earlier capture (if any) stays for a later update, unlaunched */
        cudaGetLastError();
        if (graph) cudaGraphDestroy(graph);
        return LOCO_OK;
    }
    if (e != cudaSuccess || !graph) {
        /* cudaErrorStreamCaptureInvalidated and friends are not sticky: clear them so the
         * eager fallback that follows starts clean */
        cudaGetLastError();
        if (graph) cudaGraphDestroy(graph);
        return loco_err_set(err, LOCO_EDEVICE, "cuda graph capture failed: cudaStreamEndCapture: %s (%s)",
                            cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (g->exec) {
        /* CUDA documents that node updates do not affect launches already enqueued; waiting
         * for them anyway costs little (a re-record happens once per new text batch, after the
         * previous run's results were downloaded) and leaves no doubt */
        cudaStreamSynchronize(c->stream);
        cudaGraphExecUpdateResultInfo info;
        memset(&info, 0, sizeof info);
        if (cudaGraphExecUpdate(g->exec, graph, &info) == cudaSuccess) {
            if (g->graph) cudaGraphDestroy(g->graph);
            g->graph = graph;
            return LOCO_OK;
        }
        cudaGetLastError(); /* the refusal is reported as an error; it is not one for us */
        cudaGraphExecDestroy(g->exec);
        g->exec = NULL;
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, graph, 0);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cudaGraphDestroy(graph);
        if (g->graph) cudaGraphDestroy(g->graph);
        g->graph = NULL;
        return cuda_check(e, "cudaGraphInstantiate", err);
    }
    if (g->graph) cudaGraphDestroy(g->graph);
    g->graph = graph;
    g->exec = exec;
    /* moves the graph's setup onto the device now rather than at the first launch */
    return cuda_check(cudaGraphUpload(exec, c->stream), "cudaGraphUpload", err);
}

extern "C" loco_status cuda_graph_launch(loco_backend *be, void *gp, loco_err *err) {
    cuda_impl *c = cuda_of(be);
    cuda_graph *g = (cuda_graph *)gp;
    CUDA_TRY(cuda_enter(be, err));
    if (!g->exec) return loco_err_set(err, LOCO_EINVAL, "cuda graph: nothing captured");
    return cuda_check(cudaGraphLaunch(g->exec, c->stream), "cudaGraphLaunch", err);
}
