/* block_sync.cuh: synchronisation finer than __syncthreads, for kernels whose warps have different
 * jobs (attention_wgmma_ws.cu: a producer warp that loads K/V tiles and warpgroups that consume
 * them): named barriers (a barrier id and the number of threads it waits for, so a subset of
 * the block meets) and mbarriers (a 64-bit shared-memory object counting arrivals, whose phases
 * let a consumer wait for "tile t has landed" without stopping anyone else). The tests' CPU
 * emulator runs both (tests/emu/emu_threads.cc); mbarrier.try_wait needs sm_90, so the bodies
 * are empty outside the sm_90a image (wgmma.cuh's WG_DEVICE_OK), where the kernels trap anyway. */
#ifndef LOCO_CUDA_BLOCK_SYNC_CUH
#define LOCO_CUDA_BLOCK_SYNC_CUH

#include "wgmma.cuh"

/* bar.sync id, count: waits until `count` threads (a multiple of 32; whole warps) have arrived
 * at barrier `id` (1-15; 0 is __syncthreads'), by this instruction or by bar.arrive. */
__device__ __forceinline__ void named_bar_sync(unsigned id, unsigned count) {
#if defined(LOCO_CUDA_EMU)
    emu::named_barrier(id, count, 1);
#elif WG_DEVICE_OK
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#else
    (void)id, (void)count;
#endif
}

/* bar.arrive id, count: counts this thread's arrival and goes on. */
__device__ __forceinline__ void named_bar_arrive(unsigned id, unsigned count) {
#if defined(LOCO_CUDA_EMU)
    emu::named_barrier(id, count, 0);
#elif WG_DEVICE_OK
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#else
    (void)id, (void)count;
#endif
}

/* A phase of *bar completes after `count` arrivals. One thread initialises; a __syncthreads
 * must follow before anyone else uses it. */
__device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count) {
#if defined(LOCO_CUDA_EMU)
    emu::mbar_init(bar, count);
#elif WG_DEVICE_OK
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
#else
    (void)bar, (void)count;
#endif
}

/* Counts this thread's arrival, with release semantics (its writes before it, and the
 * shared-memory writes it has waited for, are visible to whoever waits for the phase). */
__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
#if defined(LOCO_CUDA_EMU)
    emu::mbar_arrive(bar);
#elif WG_DEVICE_OK
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(smem_addr(bar))
                 : "memory");
#else
    (void)bar;
#endif
}

/* Waits (acquire) until the phase of parity `parity` has completed: phase k of a barrier has
 * parity k & 1, and a new barrier is in phase 0, so waiting for parity 1 returns at once. The
 * waiter must not fall two phases behind (the parity would then name the phase in progress). */
__device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity) {
#if defined(LOCO_CUDA_EMU)
    emu::mbar_wait_parity(bar, parity);
#elif WG_DEVICE_OK
    /* (labels inside braces are local to them in PTX, so every inlined copy may use the same) */
    asm volatile("{\n.reg .pred done;\n"
                 "mbar_wait_again:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra mbar_wait_again;\n}\n" ::"r"(smem_addr(bar)),
                 "r"(parity)
                 : "memory");
#else
    (void)bar, (void)parity;
#endif
}

/* ---- clusters (sm_90): blocks launched together on neighbouring SMs, each reaching the others'
 * shared memory ------------------------------------------------------------------------------- */

/* This block's rank in its cluster (%cluster_ctarank). */
__device__ __forceinline__ unsigned cluster_ctarank(void) {
#if defined(LOCO_CUDA_EMU)
    return emu::cluster_ctarank();
#elif WG_DEVICE_OK
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
#else
    return 0;
#endif
}

/* Counts an arrival on the mbarrier at bar's offset in block `cta` of the cluster (mapa, then
 * mbarrier.arrive.shared::cluster): a consumer handing a stage back to the producer of another
 * block that fills it too. The default semantics (release at CTA scope), as CUTLASS's
 * ClusterBarrier::arrive: the reads it hands back are wgmma's, retired by the wait before it, and
 * .release.cluster compiles to a MEMBAR.GPU, which would wait for every global store of the
 * thread (the epilogue's, in flight beside the products) at every k-step. */
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t *bar, unsigned cta) {
#if defined(LOCO_CUDA_EMU)
    emu::mbar_arrive_remote((uint64_t *)emu::cta_map(bar, cta));
#elif WG_DEVICE_OK
    asm volatile("{\n.reg .b32 remote;\n"
                 "mapa.shared::cluster.u32 remote, %0, %1;\n"
                 "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(smem_addr(bar)),
                 "r"(cta)
                 : "memory");
#else
    (void)bar, (void)cta;
#endif
}

/* A consumer warp's hand-back of a stage that both blocks of a cluster of two fill (each
 * multicasts half of an operand into it): once every lane is past the wait that retired its
 * reads of the stage, one lane arrives on this block's barrier and on the peer's (a phase then
 * counts both blocks' consumer warps). */
__device__ __forceinline__ void mbar_release_pair(uint64_t *empty, unsigned rank, int lane) {
    __syncwarp();
    if (lane == 0) {
        mbar_arrive(empty);
        mbar_arrive_cluster(empty, rank ^ 1u);
    }
}

/* barrier.cluster.arrive (release) and .wait (acquire): every thread of every block of the
 * cluster that has not exited, as __syncthreads for one block. Before a block uses another's
 * mbarriers (they must be initialised) and before it exits (no one may still reach its shared
 * memory). The non-.aligned form: a warp's lanes may come to it apart (a producer thread after
 * its loop, its warp's other lanes at once), which the .aligned one does not allow. */
__device__ __forceinline__ void cluster_sync(void) {
#if defined(LOCO_CUDA_EMU)
    emu::cluster_barrier();
#elif WG_DEVICE_OK
    asm volatile("barrier.cluster.arrive.release;\n"
                 "barrier.cluster.wait.acquire;\n" ::
                     : "memory");
#endif
}

/* The same right after one thread's mbarrier.init and mbar_init_fence (fence.mbarrier_init.
 * release.cluster), with a relaxed arrival: that fence orders the initialisation before it, as
 * the PTX ISA describes the pair, and the release form's MEMBAR.GPU has nothing to order. */
__device__ __forceinline__ void cluster_sync_after_init(void) {
#if defined(LOCO_CUDA_EMU)
    emu::cluster_barrier();
#elif WG_DEVICE_OK
    asm volatile("barrier.cluster.arrive.relaxed;\n"
                 "barrier.cluster.wait;\n" ::
                     : "memory");
#endif
}

/* A cp.async producer's publication of a stage (attention_wgmma_ws.cu, gemm_wgmma.cu): once all
 * but this thread's newest LAG copy groups have landed, fences them for the async proxy (wgmma
 * reads shared memory through it) and arrives on the stage's "full" mbarrier. */
template <int LAG> __device__ __forceinline__ void cp_async_publish(uint64_t *full) {
    cp_async_wait<LAG>();
    wg_fence_proxy();
    mbar_arrive(full);
}
/* cp.async.mbarrier.arrive.shared::cta.b64 (sm_80; without .noinc): *bar's phase in progress
 * waits for one more arrival, which this thread's cp.async copies issued so far make when they
 * have all landed. Followed by an mbar_arrive, the thread's arrival counts once its copies are
 * in, without the thread waiting for them or fencing them (CUTLASS's and FlashAttention-3's
 * cp.async producers publish so, their consumers' wgmma reading the stage unfenced). */
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t *bar) {
#if defined(LOCO_CUDA_EMU)
    emu::async_mbar_arrive(bar);
#elif WG_DEVICE_OK
    asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
#else
    (void)bar;
#endif
}
/* A cp.async producer's publication of the stage it just issued, by the copies' own arrival. */
__device__ __forceinline__ void cp_async_publish_arrive(uint64_t *full) {
    cp_async_mbar_arrive(full);
    mbar_arrive(full);
}

/* After a producer's loop of n steps that published step s - LAG after issuing step s: the last
 * LAG steps (fewer when n < LAG), oldest first, in the ring of `stages` "full" barriers. */
template <int LAG> __device__ __forceinline__ void cp_async_publish_tail(uint64_t *full, int n, int stages) {
    if constexpr (LAG > 0) {
        if (n >= LAG) cp_async_publish<LAG - 1>(&full[(n - LAG) % stages]);
        cp_async_publish_tail<LAG - 1>(full, n, stages);
    }
}

/* setmaxnreg (sm_90a): a warpgroup gives registers back to the SM (DEC) or takes more (INC) than
 * the launch gave each thread, so that warpgroups with different jobs hold different counts: a
 * producer that only issues copies needs few. Every thread of the warpgroup executes it; N is
 * a multiple of 8 in 24-256. Nothing to do on the emulator. */
template <int N> __device__ __forceinline__ void wg_setmaxnreg_inc(void) {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg count");
#if WG_DEVICE_OK && !defined(LOCO_CUDA_EMU)
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N> __device__ __forceinline__ void wg_setmaxnreg_dec(void) {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg count");
#if WG_DEVICE_OK && !defined(LOCO_CUDA_EMU)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

#endif
