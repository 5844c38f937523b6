/* tma.cuh: Hopper's tensor memory accelerator (TMA, PTX ISA 8.0, sm_90) as gemm_wgmma.cu and
 * attention_wgmma_ws.cu use it: one thread asks for a whole tile (a box of a tensor map the host
 * made with cuTensorMapEncodeTiled, tensor_map.cu) to be copied into shared memory, and the
 * copy counts its bytes off an mbarrier's phase (mbarrier.expect_tx told the phase how many to
 * wait for). So a producer needs neither 128 threads of cp.async nor a wait for its own copies
 * before publishing them, and the copies write through the async proxy wgmma reads through:
 * no proxy fence either. With 128-byte swizzle the tile lands in the layout wgmma.cuh's
 * wg_desc_sw128 describes. The tests' CPU emulator runs all of it (tests/emu/emu_tma.cc). */
#ifndef LOCO_CUDA_TMA_CUH
#define LOCO_CUDA_TMA_CUH

#include <cuda.h> /* CUtensorMap (a type only: the driver is reached through the runtime) */

#include "block_sync.cuh"

/* After the mbarriers are initialised, before the __syncthreads that publishes them: makes the
 * initialisation visible to the async proxy, which the TMA unit completes transactions through. */
__device__ __forceinline__ void mbar_init_fence(void) {
#if WG_DEVICE_OK && !defined(LOCO_CUDA_EMU)
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* This thread's arrival on *bar, and `bytes` more transaction bytes for the phase to wait for
 * (the TMA copies that will complete them). */
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t *bar, unsigned bytes) {
#if defined(LOCO_CUDA_EMU)
    emu::mbar_expect_tx(bar, bytes);
    emu::mbar_arrive(bar);
#elif WG_DEVICE_OK
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
                 : "memory");
#else
    (void)bar, (void)bytes;
#endif
}

/* Brings a tensor map into the TMA unit's cache before the first copy needs it (as CUTLASS and
 * DeepGEMM do once per kernel). */
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap *map) {
#if WG_DEVICE_OK && !defined(LOCO_CUDA_EMU)
    asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)map) : "memory");
#else
    (void)map;
#endif
}

/* Copies the box of *map at (c0, c1) (innermost first; outside the tensor: zeros; c0 times the
 * element size a multiple of 16 bytes, or the copy is an illegal instruction) to smem, and
 * completes its bytes on *bar. map: a __grid_constant__ kernel parameter (its address is the
 * parameter's own). */
__device__ __forceinline__ void tma_load_2d(void *smem, const CUtensorMap *map, int c0, int c1, uint64_t *bar) {
#if defined(LOCO_CUDA_EMU)
    const int c[2] = {c0, c1};
    emu::tma_load(smem, map, c, 2, bar);
#elif WG_DEVICE_OK
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_addr(smem)),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(smem_addr(bar))
                 : "memory");
#else
    (void)smem, (void)map, (void)c0, (void)c1, (void)bar;
#endif
}

/* tma_load_2d with .multicast::cluster: the box lands at smem's offset in every block of the
 * cluster named in mask (bit i: rank i), and completes its bytes on each one's mbarrier at bar's
 * offset. Two blocks that need the same tile load half each and send it to both: half the L2
 * traffic of loading it twice. */
__device__ __forceinline__ void tma_load_2d_multicast(void *smem, const CUtensorMap *map, int c0, int c1, uint64_t *bar,
                                                      uint16_t mask) {
#if defined(LOCO_CUDA_EMU)
    const int c[2] = {c0, c1};
    emu::tma_load_multicast(smem, map, c, 2, bar, mask);
#elif WG_DEVICE_OK
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(smem_addr(smem)),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(smem_addr(bar)), "h"(mask)
                 : "memory");
#else
    (void)smem, (void)map, (void)c0, (void)c1, (void)bar, (void)mask;
#endif
}

/* The same for a rank-3 map: (c0, c1, c2). */
__device__ __forceinline__ void tma_load_3d(void *smem, const CUtensorMap *map, int c0, int c1, int c2, uint64_t *bar) {
#if defined(LOCO_CUDA_EMU)
    const int c[3] = {c0, c1, c2};
    emu::tma_load(smem, map, c, 3, bar);
#elif WG_DEVICE_OK
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_addr(smem)),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
                 : "memory");
#else
    (void)smem, (void)map, (void)c0, (void)c1, (void)c2, (void)bar;
#endif
}

/* tma_load_3d with .multicast::cluster (as tma_load_2d_multicast). */
__device__ __forceinline__ void tma_load_3d_multicast(void *smem, const CUtensorMap *map, int c0, int c1, int c2,
                                                      uint64_t *bar, uint16_t mask) {
#if defined(LOCO_CUDA_EMU)
    const int c[3] = {c0, c1, c2};
    emu::tma_load_multicast(smem, map, c, 3, bar, mask);
#elif WG_DEVICE_OK
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
                 " [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(smem_addr(smem)),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar)), "h"(mask)
                 : "memory");
#else
    (void)smem, (void)map, (void)c0, (void)c1, (void)c2, (void)bar, (void)mask;
#endif
}

/* The same for a rank-4 map: (c0, c1, c2, c3). */
__device__ __forceinline__ void tma_load_4d(void *smem, const CUtensorMap *map, int c0, int c1, int c2, int c3,
                                            uint64_t *bar) {
#if defined(LOCO_CUDA_EMU)
    const int c[4] = {c0, c1, c2, c3};
    emu::tma_load(smem, map, c, 4, bar);
#elif WG_DEVICE_OK
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_addr(smem)),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_addr(bar))
                 : "memory");
#else
    (void)smem, (void)map, (void)c0, (void)c1, (void)c2, (void)c3, (void)bar;
#endif
}

#endif
