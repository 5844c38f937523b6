/* cpu_internal.h: what the files of the CPU backend share: its state, scratch memory, the
 * threading rule, the vectorised activation kernels and the op hooks.
 *
 * Threading: OpenBLAS is switched to one thread when the backend is created, and every op
 * splits its work into independent tiles that OpenMP threads take, each calling the
 * single-threaded sgemm on its own tile and finishing the tile (bias, activation, softmax)
 * while it is still in cache. Two thread pools that hand work to each other (OpenBLAS's
 * pthreads and OpenMP's) fight over the cores on small machines; one pool does not. */
#ifndef LOCO_CPU_INTERNAL_H
#define LOCO_CPU_INTERNAL_H

#include "../backend_impl.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* Hot loops are compiled for AVX-512, AVX2 and the baseline, chosen at load time, so one
 * binary is fast on every x86-64 machine; elsewhere the plain build is used. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CPU_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CPU_MULTIVERSION
#endif

typedef struct cpu_block {
    void *p;
    size_t bytes; /* the size class, not the caller's request */
    uint64_t last_use;
} cpu_block;

typedef struct cpu_impl {
    int threads;
    pthread_mutex_t lock; /* guards the block cache: tensors may be freed from any thread */
    cpu_block *cache;     /* freed blocks kept for reuse */
    size_t ncache, cap_cache;
    size_t cached_bytes, cache_limit;
    uint64_t clock;
} cpu_impl;

static inline cpu_impl *cpu_of(loco_backend *be) { return (cpu_impl *)be->impl; }
static inline int cpu_threads(loco_backend *be) { return cpu_of(be)->threads; }

/* Scratch memory for one op (im2col columns, attention scores), drawn from the same cache as
 * tensors so that it is not page-faulted in again on every call. Not counted as tensor memory. */
loco_status cpu_scratch_get(loco_backend *be, size_t bytes, void **out, loco_err *err);
void cpu_scratch_put(loco_backend *be, void *p, size_t bytes);

/* ---- vectorised row kernels (cpu_elementwise.c) ------------------------------------------- */

/* y[i] = act(x[i] + (bias ? bias[i] : 0)) for i < n; y may equal x. */
void cpu_act_row(float *y, const float *x, const float *bias, size_t n, loco_act act);

/* Run fn(ctx, begin, end, tid) over [0, n) in chunks of about `grain`, on the backend's
 * threads; tid in [0, threads) names the thread, for per-thread scratch. (Not
 * omp_get_thread_num(): called from inside a caller's own parallel region, that is the
 * caller's thread number.) */
typedef void (*cpu_range_fn)(void *ctx, size_t begin, size_t end, int tid);
void cpu_parallel_for(loco_backend *be, size_t n, size_t grain, cpu_range_fn fn, void *ctx);

/* A count of equal tasks to cut work into: when there are few, round up to a multiple of the
 * threads, so that no thread idles while another finishes the last one (11 blocks on 2
 * threads lose 8% to the tail, 12 lose nothing). */
static inline long cpu_balance(long parts, int threads) {
    if (threads > 1 && parts < 8L * threads && parts % threads) parts += threads - parts % threads;
    return parts;
}

/* ---- op hooks ------------------------------------------------------------------------------- */

loco_status cpu_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                       const loco_tensor *bias, loco_act act, loco_err *err);
loco_status cpu_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                       const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);
loco_status cpu_group_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                           const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu, loco_err *err);
loco_status cpu_layer_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                           const loco_tensor *beta, float eps, loco_err *err);
loco_status cpu_attention(loco_backend *be, loco_tensor *out, const loco_tensor *q, const loco_tensor *k,
                          const loco_tensor *v, const loco_attention_params *p, loco_err *err);
loco_status cpu_activation(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act act, loco_err *err);
loco_status cpu_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
loco_status cpu_add(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, loco_err *err);
loco_status cpu_add_channel_bias(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *bias,
                                 loco_err *err);
loco_status cpu_lincomb(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x, const float *coef,
                        loco_err *err);
loco_status cpu_copy(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
loco_status cpu_fill(loco_backend *be, loco_tensor *y, float value, loco_err *err);
loco_status cpu_transpose12(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
loco_status cpu_concat(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, int axis,
                       loco_err *err);
loco_status cpu_upsample_nearest2x(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
loco_status cpu_embedding(loco_backend *be, loco_tensor *y, const loco_tensor *table, const int32_t *ids, int64_t n,
                          loco_err *err);
loco_status cpu_set_channels(loco_backend *be, loco_tensor *y, const int32_t *channels, const float *values, int n,
                             loco_err *err);

#endif
