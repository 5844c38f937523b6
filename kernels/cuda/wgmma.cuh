/* wgmma.cuh: the building blocks of Hopper's warpgroup MMA (wgmma.mma_async, PTX ISA 8.0, sm_90a
 * only) that conv_wgmma.cu, attention_wgmma.cu and wgmma_probe.cu share: shared-memory matrix descriptors and the
 * fence / commit / wait instructions. Compiled for any other target the bodies are empty and
 * WG_DEVICE_OK is 0; the kernels then trap, and their host code keeps them off (each file's
 * own device symbol says whether its sm_90a image is there). */
#ifndef LOCO_CUDA_WGMMA_CUH
#define LOCO_CUDA_WGMMA_CUH

#include "mma.h"

#if !defined(LOCO_CUDA_EMU) && defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_DEVICE_OK 0 /* compiled for another target: the kernels trap (setup keeps them off) */
#else
#define WG_DEVICE_OK 1 /* sm_90a, or the tests' CPU emulator (tests/emu/emu_wgmma.cc) */
#endif

/* ---- wgmma building blocks (PTX ISA 8.0, sm_90a) ------------------------------------------- */

/* Shared-memory matrix descriptor, no swizzle: start address, leading and stride byte offsets,
 * each in 16-byte units (bits 0-13, 16-29, 32-45); base offset and swizzle mode (bits 49-51,
 * 62-63) zero. */
__device__ __forceinline__ uint64_t wg_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
#ifdef LOCO_CUDA_EMU /* host addresses do not fit the address field: the emulator numbers them */
    return emu::wgmma_desc(smem, lbo, sbo);
#else
    const uint32_t a = smem_addr(smem);
    return (uint64_t)((a & 0x3FFFFu) >> 4) | ((uint64_t)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFFu) >> 4) << 32);
#endif
}

/* The same fields with layout type 1 in bits 62-63: the 128-byte swizzle a TMA copy with
 * CU_TENSOR_MAP_SWIZZLE_128B writes. Rows of 128 bytes (64 16-bit elements), 8-row groups `sbo`
 * bytes apart, each 16-byte chunk of a row XOR-ed with the row's place in its group by the
 * address bits, so the groups must start at 1024-byte-aligned addresses (base offset 0).
 *   K-major: rows along M/N, k along the row; LBO unused (16, i.e. 1, as CUTLASS sets it); a
 *            k16 slice further along is start + 32 bytes.
 *   MN-major (B with the transpose bit): 64 columns of N per row, K rows 128 bytes apart, the
 *            next 64 columns `lbo` bytes away (PTX ISA's ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)));
 *            a k16 slice further on is start + 2 sbo. */
__device__ __forceinline__ uint64_t wg_desc_sw128(const void *smem, uint32_t lbo, uint32_t sbo) {
    return wg_desc(smem, lbo, sbo) | 1ull << 62;
}

/* (The emulator needs no fences: it runs an instruction's reads at the wait that retires it.) */
__device__ __forceinline__ void wg_fence(void) {
#if WG_DEVICE_OK && !defined(LOCO_CUDA_EMU)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit(void) {
#if defined(LOCO_CUDA_EMU)
    emu::wgmma_commit();
#elif WG_DEVICE_OK
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
/* Waits until at most N of this thread's committed groups are still in flight (the newest N). */
template <int N> __device__ __forceinline__ void wg_wait(void) {
#if defined(LOCO_CUDA_EMU)
    emu::wgmma_wait(N);
#elif WG_DEVICE_OK
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void wg_wait_all(void) { wg_wait<0>(); }
/* Makes this thread's generic-proxy writes to shared memory (st.shared, cp.async) visible to
 * the async proxy wgmma reads through; a barrier must follow before any wgmma. */
__device__ __forceinline__ void wg_fence_proxy(void) {
#if WG_DEVICE_OK && !defined(LOCO_CUDA_EMU)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* Pins the accumulators in registers across the asynchronous wgmma (the compiler must not
 * move or reuse them between issue and wait). */
template <int N> __device__ __forceinline__ void wg_fence_acc(float (&d)[N]) {
#ifndef LOCO_CUDA_EMU
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
#else
    (void)d;
#endif
}

#endif
