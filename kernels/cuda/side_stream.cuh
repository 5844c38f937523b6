/* side_stream.cuh: fills on the side stream (c->aux, LOCO_CUDA_IM2COL_OVERLAP=1) one chunk ahead
 * of the GEMMs that read them on the main stream, through two buffers that alternate. Shared by
 * the im2col route (conv.cu) and the row-tap route (conv_rows.cu).
 *
 * Why: a fill is memory-bound and a GEMM tensor-bound, so side by side they share the SMs
 * instead of taking turns.
 *
 * Protocol for chunks i = 0, 1, ...:
 *   side_begin                      the side stream forks from the main one (x was written there)
 *   side_fill_may_start(i)          chunk i's buffer (i % 2) is free once chunk i - 2's GEMM ran
 *   ... enqueue chunk i's fill on c->aux ...
 *   side_fill_done(i)               the main stream waits for that fill
 *   ... enqueue chunk i's GEMM on c->stream ...
 *   side_gemm_done(i)               the buffer may be refilled
 *   side_end                        the side stream joins the main one, also after an error: the
 *                                   buffers go back to the main stream's allocator, and a CUDA
 *                                   graph capture with an unjoined stream fails. */
#pragma once

#include "cuda_internal.h"

/* Returns 1 in *forked when the fork was recorded (side_end must then join). */
static inline loco_status side_begin(cuda_impl *c, int *forked, loco_err *err) {
    *forked = 0;
    loco_status st = cuda_check(cudaEventRecord(c->ev_fork, c->stream), "cudaEventRecord(fork)", err);
    if (st == LOCO_OK) st = cuda_check(cudaStreamWaitEvent(c->aux, c->ev_fork, 0), "cudaStreamWaitEvent(fork)", err);
    *forked = st == LOCO_OK;
    return st;
}

static inline loco_status side_fill_may_start(cuda_impl *c, int64_t i, loco_err *err) {
    if (i < 2) return LOCO_OK;
    return cuda_check(cudaStreamWaitEvent(c->aux, c->ev_col_free[i & 1], 0), "cudaStreamWaitEvent(free)", err);
}

static inline loco_status side_fill_done(cuda_impl *c, int64_t i, loco_err *err) {
    loco_status st = cuda_check(cudaEventRecord(c->ev_col_ready[i & 1], c->aux), "cudaEventRecord(ready)", err);
    if (st == LOCO_OK)
        st = cuda_check(cudaStreamWaitEvent(c->stream, c->ev_col_ready[i & 1], 0), "cudaStreamWaitEvent(ready)", err);
    return st;
}

static inline loco_status side_gemm_done(cuda_impl *c, int64_t i, loco_err *err) {
    return cuda_check(cudaEventRecord(c->ev_col_free[i & 1], c->stream), "cudaEventRecord(free)", err);
}

/* Joins when forked; returns st, or the join's error when st was LOCO_OK. */
static inline loco_status side_end(cuda_impl *c, int forked, loco_status st, loco_err *err) {
    if (!forked) return st;
    loco_status js = cuda_check(cudaEventRecord(c->ev_join, c->aux), "cudaEventRecord(join)", err);
    if (js == LOCO_OK) js = cuda_check(cudaStreamWaitEvent(c->stream, c->ev_join, 0), "cudaStreamWaitEvent(join)", err);
    /* no join (a sticky device error): wait for the side stream on the host, so that it cannot
     * write into the buffers after they go back (fails harmlessly in a capture) */
    if (js != LOCO_OK) cudaStreamSynchronize(c->aux);
    return st == LOCO_OK ? js : st;
}
