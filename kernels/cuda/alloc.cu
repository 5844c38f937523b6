/* alloc.cu: the CUDA backend's caching device allocator.
 *
 * Why cache: cudaFree synchronises the whole device and cudaMalloc takes tens of microseconds,
 * while a UNet call allocates and frees hundreds of activations; reusing freed blocks keeps
 * the stream busy and makes a second call of the same shape allocation-free (which CUDA graph
 * capture will need). Plain cudaMalloc only: never managed memory (it can hang a shared GPU
 * when oversubscribed).
 *
 * Policy: sizes are rounded (512 B below 1 MiB, 64 KiB above) and a request takes the
 * smallest cached block that is large enough and wastes at most a quarter of the request (or
 * 64 KiB). No splitting or coalescing: model shapes repeat, so exact-ish reuse is the common
 * case. When cudaMalloc fails the cache is released and the allocation tried once more; when
 * that fails too, the backend's reclaimers (idle UNet graphs' pools) give memory back for a last
 * try. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

#define SMALL_LIMIT ((size_t)1 << 20)
#define SMALL_ROUND ((size_t)512)
#define LARGE_ROUND ((size_t)64 << 10)
#define KEY_EMPTY ((uintptr_t)0)
#define KEY_DELETED ((uintptr_t)1)

static size_t round_size(size_t b) {
    if (b == 0) b = 1;
    size_t r = b < SMALL_LIMIT ? SMALL_ROUND : LARGE_ROUND;
    return (b + r - 1) / r * r;
}

static size_t max_slack(size_t want) {
    size_t q = want / 4;
    return q > ((size_t)64 << 10) ? q : ((size_t)64 << 10);
}

static size_t hash_slot(uintptr_t k, size_t cap) {
    uint64_t h = (uint64_t)(k >> 8) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (cap - 1);
}

/* Rebuild the live-block table with `cap` slots (a power of two), dropping deleted marks. */
static int hash_resize(cuda_allocator *a, size_t cap) {
    uintptr_t *keys = (uintptr_t *)calloc(cap, sizeof *keys);
    size_t *sizes = (size_t *)calloc(cap, sizeof *sizes);
    if (!keys || !sizes) {
        free(keys);
        free(sizes);
        return -1;
    }
    for (size_t i = 0; i < a->hcap; i++) {
        if (a->keys[i] <= KEY_DELETED) continue;
        size_t j = hash_slot(a->keys[i], cap);
        while (keys[j] != KEY_EMPTY) j = (j + 1) & (cap - 1);
        keys[j] = a->keys[i];
        sizes[j] = a->sizes[i];
    }
    free(a->keys);
    free(a->sizes);
    a->keys = keys;
    a->sizes = sizes;
    a->hcap = cap;
    a->hused = a->hlive;
    return 0;
}

static int hash_insert(cuda_allocator *a, void *p, size_t size) {
    if ((a->hused + 1) * 2 > a->hcap) {
        size_t cap = 64;
        while (cap < (a->hlive + 1) * 4) cap *= 2;
        if (hash_resize(a, cap) != 0) return -1;
    }
    uintptr_t k = (uintptr_t)p;
    size_t j = hash_slot(k, a->hcap);
    while (a->keys[j] > KEY_DELETED) j = (j + 1) & (a->hcap - 1);
    if (a->keys[j] == KEY_EMPTY) a->hused++;
    a->keys[j] = k;
    a->sizes[j] = size;
    a->hlive++;
    return 0;
}

/* Removes p from the live table; returns its block size, 0 when p is not live. */
static size_t hash_remove(cuda_allocator *a, void *p) {
    if (a->hcap == 0) return 0;
    uintptr_t k = (uintptr_t)p;
    size_t j = hash_slot(k, a->hcap);
    while (a->keys[j] != KEY_EMPTY) {
        if (a->keys[j] == k) {
            a->keys[j] = KEY_DELETED;
            a->hlive--;
            return a->sizes[j];
        }
        j = (j + 1) & (a->hcap - 1);
    }
    return 0;
}

loco_status cuda_alloc_init(cuda_allocator *a, loco_err *err) {
    memset(a, 0, sizeof *a);
    if (hash_resize(a, 256) != 0) return loco_err_set(err, LOCO_ENOMEM, "cuda allocator: out of host memory");
    return LOCO_OK;
}

/* Give every cached block back to the driver (after the stream has drained, since a block
 * freed by the engine may still be read by an enqueued kernel). */
static void release_cached(cuda_impl *c) {
    cuda_allocator *a = &c->alloc;
    if (a->nfree == 0) return;
    cudaStreamSynchronize(c->stream);
    for (size_t i = 0; i < a->nfree; i++) {
        cudaFree(a->free_blocks[i].ptr);
        a->reserved -= a->free_blocks[i].size;
    }
    a->nfree = 0;
    a->cached = 0;
}

void cuda_alloc_destroy(cuda_allocator *a) {
    for (size_t i = 0; i < a->nfree; i++) cudaFree(a->free_blocks[i].ptr);
    for (size_t i = 0; i < a->hcap; i++)
        if (a->keys[i] > KEY_DELETED) cudaFree((void *)a->keys[i]);
    free(a->free_blocks);
    free(a->keys);
    free(a->sizes);
    memset(a, 0, sizeof *a);
}

static double mib(size_t b) { return (double)b / (1024.0 * 1024.0); }

/* Asked of the reclaimers beyond what is missing: the driver maps memory in pages, and what the
 * reclaimers free comes in blocks of other sizes. */
#define RECLAIM_SLACK ((size_t)32 << 20)

/* cudaMalloc; when the device is full, first this allocator's idle blocks go back to the
 * driver, then the backend's reclaimers give back what is missing of what the caches above it
 * hold idle (backend.h, "memory pressure"), then all of it, each step followed by one more try.
 * A request that cannot fit even then leaves the reclaimers alone. An out-of-memory result comes
 * back with CUDA's (non-sticky) error already cleared. Never reached while a stream captures: a
 * capture allocates only from its frozen pool. */
static cudaError_t malloc_or_reclaim(cuda_impl *c, void **p, size_t bytes) {
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaErrorMemoryAllocation) return e;
    cudaGetLastError();
    release_cached(c);
    e = cudaMalloc(p, bytes);
    if (e != cudaErrorMemoryAllocation) return e;
    cudaGetLastError();
    if (c->reclaim_blocked) return e;
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        fr = 0;
    }
    const size_t can = loco_backend_reclaimable(c->owner);
    if (can == 0 || fr + can < bytes) return e;
    const size_t missing = bytes > fr ? bytes - fr : 0;
    for (int all = 0; all < 2; all++) {
        if (loco_backend_reclaim(c->owner, all ? SIZE_MAX : missing + RECLAIM_SLACK) == 0) return e;
        release_cached(c); /* what the reclaimers freed of this allocator's blocks landed in its cache */
        e = cudaMalloc(p, bytes);
        if (e != cudaErrorMemoryAllocation) return e;
        cudaGetLastError();
    }
    return e;
}

loco_status cuda_alloc_get(cuda_impl *c, size_t bytes, void **out, loco_err *err) {
    if (c->active_pool) return cuda_pool_get(c, c->active_pool, bytes, out, err);
    cuda_allocator *a = &c->alloc;
    size_t want = round_size(bytes);
    *out = NULL;

    size_t best = (size_t)-1;
    for (size_t i = 0; i < a->nfree; i++) {
        size_t s = a->free_blocks[i].size;
        if (s < want || s - want > max_slack(want)) continue;
        if (best == (size_t)-1 || s < a->free_blocks[best].size) best = i;
    }
    if (best != (size_t)-1) {
        cuda_block b = a->free_blocks[best];
        if (hash_insert(a, b.ptr, b.size) != 0)
            return loco_err_set(err, LOCO_ENOMEM, "cuda allocator: out of host memory");
        a->free_blocks[best] = a->free_blocks[--a->nfree];
        a->cached -= b.size;
        *out = b.ptr;
        return LOCO_OK;
    }

    void *p = NULL;
    cudaError_t e = malloc_or_reclaim(c, &p, want);
    if (e == cudaErrorMemoryAllocation) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return loco_err_set(err, LOCO_EDEVICE_OOM,
                            "out of GPU memory: cudaMalloc of %.1f MiB failed (%.1f MiB free of %.1f MiB; "
                            "this backend holds %.1f MiB)",
                            mib(want), mib(fr), mib(tot), mib(a->reserved));
    }
    if (e != cudaSuccess) return cuda_check(e, "cudaMalloc", err);
    if (hash_insert(a, p, want) != 0) {
        cudaFree(p);
        return loco_err_set(err, LOCO_ENOMEM, "cuda allocator: out of host memory");
    }
    a->reserved += want;
    if (a->reserved > a->peak_reserved) a->peak_reserved = a->reserved;
    *out = p;
    return LOCO_OK;
}

void cuda_alloc_put(cuda_impl *c, void *p) {
    cuda_allocator *a = &c->alloc;
    if (!p) return;
    size_t size = hash_remove(a, p);
    if (size == 0) {
        /* a graph pool's block (during or after the pool's active period), or not ours at all:
         * then there is nothing safe to do with it */
        for (cuda_graph_pool *gp = c->pools; gp; gp = gp->next)
            for (size_t i = 0; i < gp->n; i++)
                if (gp->blocks[i].ptr == p) {
                    gp->used[i] = 0;
                    return;
                }
        return;
    }
    if (a->nfree == a->capfree) {
        size_t cap = a->capfree ? a->capfree * 2 : 64;
        cuda_block *nb = (cuda_block *)realloc(a->free_blocks, cap * sizeof *nb);
        if (!nb) { /* cannot cache it: hand it back to the driver instead */
            cudaStreamSynchronize(c->stream);
            cudaFree(p);
            a->reserved -= size;
            return;
        }
        a->free_blocks = nb;
        a->capfree = cap;
    }
    a->free_blocks[a->nfree].ptr = p;
    a->free_blocks[a->nfree].size = size;
    a->nfree++;
    a->cached += size;
}

/* ---- graph pools ------------------------------------------------------------------------------ */

/* Growing period: remember which block this request got. Losing a step to host OOM only
 * costs the capture its exact replay (it falls back to best fit). */
static void trace_add(cuda_graph_pool *p, size_t want, size_t block) {
    if (p->ntrace == p->captrace) {
        size_t cap = p->captrace ? p->captrace * 2 : 256;
        cuda_pool_step *nt = (cuda_pool_step *)realloc(p->trace, cap * sizeof *nt);
        if (!nt) return;
        p->trace = nt;
        p->captrace = cap;
    }
    p->trace[p->ntrace].want = want;
    p->trace[p->ntrace].block = block;
    p->ntrace++;
}

/* Frozen period (a capture): the block the last growing period gave this request. Best fit
 * alone is not enough: during warm-up the pool grew as requests came, so an early request
 * could only pick among the blocks that existed then, while the capture sees every block from
 * the start; its best fit can take a block a later request needs and leave that one without a
 * fit (common over a UNet's thousands of requests). Replaying the warm-up's choices instead
 * always fits: the capture makes the same requests and frees in the same order, so each block
 * is free again when its step comes. A few steps of look-ahead absorb requests the warm-up made
 * and the capture does not (a cache created on the first call). */
#define TRACE_WINDOW 8
static size_t trace_pick(cuda_graph_pool *p, size_t want) {
    for (size_t k = p->cursor; k < p->ntrace && k < p->cursor + TRACE_WINDOW; k++) {
        const cuda_pool_step *st = &p->trace[k];
        if (st->want == want && st->block < p->n && !p->used[st->block]) {
            p->cursor = k + 1;
            return st->block;
        }
    }
    return (size_t)-1;
}

/* Same fit rule as the main cache. Linear scans: a UNet call's pool holds a few hundred blocks
 * at most, and the scans run only in warm-up and capture, never in a replay. */
loco_status cuda_pool_get(cuda_impl *c, cuda_graph_pool *p, size_t bytes, void **out, loco_err *err) {
    size_t want = round_size(bytes);
    *out = NULL;
    size_t best = p->frozen ? trace_pick(p, want) : (size_t)-1;
    if (best == (size_t)-1)
        for (size_t i = 0; i < p->n; i++) {
            size_t s = p->blocks[i].size;
            if (p->used[i] || s < want || s - want > max_slack(want)) continue;
            if (best == (size_t)-1 || s < p->blocks[best].size) best = i;
        }
    if (best != (size_t)-1) {
        p->used[best] = 1;
        if (!p->frozen) trace_add(p, want, best);
        *out = p->blocks[best].ptr;
        return LOCO_OK;
    }
    if (p->frozen)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "graph capture asked for %.1f MiB that its pool (%.1f MiB in %zu blocks) does not hold "
                            "free; it must be warmed up with the same ops first",
                            mib(want), mib(p->bytes), p->n);
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        cuda_block *nb = (cuda_block *)realloc(p->blocks, cap * sizeof *nb);
        if (!nb) return loco_err_set(err, LOCO_ENOMEM, "graph pool: out of host memory");
        p->blocks = nb;
        unsigned char *nu = (unsigned char *)realloc(p->used, cap);
        if (!nu) return loco_err_set(err, LOCO_ENOMEM, "graph pool: out of host memory");
        p->used = nu;
        p->cap = cap;
    }
    void *ptr = NULL;
    /* the main cache's idle blocks, then other graphs' pools, are given up for this graph (the
     * active pool's owner marks it busy, so its own reclaimer keeps it) */
    cudaError_t e = malloc_or_reclaim(c, &ptr, want);
    if (e == cudaErrorMemoryAllocation) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return loco_err_set(err, LOCO_EDEVICE_OOM,
                            "out of GPU memory: cudaMalloc of %.1f MiB for a graph pool failed (%.1f MiB free of "
                            "%.1f MiB; this backend's cache holds %.1f MiB, this graph's pool %.1f MiB)",
                            mib(want), mib(fr), mib(tot), mib(c->alloc.reserved), mib(p->bytes));
    }
    if (e != cudaSuccess) return cuda_check(e, "cudaMalloc (graph pool)", err);
    p->blocks[p->n].ptr = ptr;
    p->blocks[p->n].size = want;
    p->used[p->n] = 1;
    p->n++;
    p->bytes += want;
    p->grew++;
    trace_add(p, want, p->n - 1);
    *out = ptr;
    return LOCO_OK;
}

void cuda_pool_release(cuda_graph_pool *p) {
    for (size_t i = 0; i < p->n; i++) cudaFree(p->blocks[i].ptr);
    free(p->blocks);
    free(p->used);
    free(p->trace);
    p->blocks = NULL;
    p->used = NULL;
    p->trace = NULL;
    p->n = p->cap = p->bytes = 0;
    p->ntrace = p->captrace = p->cursor = 0;
}
