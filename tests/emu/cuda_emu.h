/* cuda_emu.h: runs loco's CUDA backend on the CPU, for tests on machines without a GPU.
 *
 * The build (Makefile, `emu` objects) compiles every .cu file of kernels/cuda as plain C++ with
 * this header forced in first (-include) and LOCO_CUDA_EMU defined. Kernels become ordinary
 * functions; a launch (LOCO_LAUNCH) runs each block's threads as cooperative fibers
 * (emu_runtime.cc), so __syncthreads, warp shuffles and the warp-wide tensor-core instructions
 * (ldmatrix, mma.sync) wait for every thread they involve and then act on all of them at once,
 * as the hardware does. Each warp runs as far as it can before the next starts, so warps drift
 * apart as far as barriers let them. A cp.async fills its destination with NaN bytes when
 * issued and copies when the thread waits for its group, so a missing wait or a missing
 * barrier before a buffer is refilled reads NaN here, as it may read garbage on a GPU; the
 * dynamic shared memory of every block starts as NaN bytes too. LOCO_EMU_SCHEDULE=reverse runs the
 * highest warp first and lands asynchronous copies as issued (emu_threads.cc), a second order
 * that exposes other missing barriers. The CUDA runtime and cuBLASLt calls the
 * backend makes are served by emu_runtime.cc and emu_cublaslt.cc.
 *
 * What this proves: the host code, every index, fragment layout, barrier and copy group of the
 * mma.sync and elementwise kernels, against the CPU backend, in `make test`. What it cannot:
 * speed, the hardware's rounding inside an mma (here exact products summed in double), races
 * between threads that no schedule it runs exposes, static __shared__ variables carrying the
 * last block's values, __launch_bounds__ (not checked), and the hardware's own order of
 * accumulation inside a wgmma. The emulated device is a compute capability 9.0 one, so the
 * wgmma kernels (emu_wgmma.cc), their TMA copies (emu_tma.cc) and the wgmma self-test run too. */
#ifndef LOCO_CUDA_EMU_H
#define LOCO_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h is for the C++ compilation of kernels/cuda/*.cu"
#endif

#define LOCO_CUDA_EMU 1

/* CUDA's execution-space keywords: nothing on the CPU. Static shared memory is thread_local:
 * every fiber of a block runs on one OS thread, so they see one copy, and blocks run one after
 * the other (the blocks of a cluster run together and would share it: kernels launched in
 * clusters keep all of theirs dynamic, LOCO_DYN_SMEM). Defined before the CUDA headers so that
 * theirs are not used. */
#define __host__
#define __device__
#define __global__
#define __constant__
#define __shared__ thread_local
#define __launch_bounds__(...)
#define __grid_constant__

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace emu {

/* The running fiber's coordinates. */
struct thread_coords {
    uint3 tid, bid;
    dim3 bdim, gdim;
};
thread_coords &coords();

/* Warp-wide exchange: every lane of the warp gives `in` (in_bytes), and when all have, op
 * computes every lane's output from all inputs (lane_in[32][64], lane_out[32][64] bytes);
 * each lane then gets its own `out`. Every lane must call with the same op. */
typedef void (*warp_op)(const unsigned char (*lane_in)[64], unsigned char (*lane_out)[64], int lanes);
void warp_collective(warp_op op, const void *in, size_t in_bytes, void *out, size_t out_bytes);
void block_barrier(void);
[[noreturn]] void trap(const char *why);

/* Named barriers (PTX bar.sync / bar.arrive with a barrier id and a thread count): id 1-15
 * (0 is __syncthreads'), count a multiple of 32 up to the block's size; wait 0 arrives without
 * waiting. A phase completes when `count` threads have arrived; every participant of one phase
 * must name the same count. */
void named_barrier(unsigned id, unsigned count, int wait);
/* mbarriers (PTX mbarrier.init / arrive / try_wait.parity, shared::cta): a 64-bit object in
 * shared memory whose phase completes when `count` arrivals have come; a wait for parity P
 * returns once the phase of that parity has completed, i.e. while the current phase's parity
 * differs from P (a new barrier's phase 0 is in progress, so waiting for parity 1 returns at
 * once). Arrivals past a phase's count go to the next phase, as on the GPU; using a barrier
 * that was never initialised traps. */
void mbar_init(uint64_t *bar, unsigned count);
void mbar_arrive(uint64_t *bar);
void mbar_wait_parity(uint64_t *bar, unsigned parity);
/* mbarrier.expect_tx: the phase in progress also waits for `bytes` more transaction bytes
 * (a TMA copy naming the barrier completes them when it lands); it completes once its arrivals
 * are in and its transaction count is back at zero. */
void mbar_expect_tx(uint64_t *bar, unsigned bytes);

/* Clusters (sm_90): a launch's blocks in groups of cluster_size() along x run together, each
 * with its own dynamic shared memory (dyn_smem: the running block's, 1024-byte aligned).
 * cta_map is mapa.shared::cluster: the address at p's offset in block `cta`'s shared memory
 * (p: in the running cluster's dynamic shared memory); an mbarrier there takes arrivals
 * (mbarrier.arrive.shared::cluster) but only its own block waits on it. cluster_barrier is
 * barrier.cluster.arrive then .wait: every thread of the cluster that has not exited. */
#define EMU_MAX_CLUSTER 8
void *dyn_smem(size_t align);
void *cta_map(const void *p, unsigned cta);
void mbar_arrive_remote(uint64_t *bar); /* mbarrier.arrive.shared::cluster: any block's, from cta_map */
unsigned cluster_ctarank(void);
unsigned cluster_size(void);
void cluster_barrier(void);

/* TMA (cp.async.bulk.tensor.Nd.shared::cluster.global.tile.mbarrier::complete_tx::bytes,
 * emu_tma.cc): copies the box at `coords` (rank of them, innermost first) of the tensor map
 * (what cuTensorMapEncodeTiled made: emu_tma.cc serves it through
 * cudaGetDriverEntryPointByVersion) to shared memory, then completes its bytes on *bar. The
 * destination holds NaN bytes from issue until the copy lands, which is as late as the block
 * lets it: when no thread can go on without it. */
void tma_load(void *smem, const void *tensor_map, const int *coords, int rank, uint64_t *bar);
/* The same with .multicast::cluster: the box lands at smem's offset in every block of the cluster
 * named in mask (bit i: rank i), completing its bytes on each one's mbarrier at bar's offset. */
void tma_load_multicast(void *smem, const void *tensor_map, const int *coords, int rank, uint64_t *bar,
                        uint16_t mask);
/* The block's copies still in flight: the oldest lands (returns 1), or there is none (0). */
int tma_land_oldest(void);
int tma_in_flight(void);
void tma_reset(void);

/* cp.async: queued in the thread's open group, copied when a wait_group retires the group. */
void async_copy16(void *smem, const void *gmem, int src_bytes);
void async_commit(void);
void async_wait(int keep_in_flight);
/* cp.async.mbarrier.arrive.shared::cta.b64 (without .noinc): *bar's phase gets one arrival when
 * every cp.async this thread has issued so far has landed (which the emulator makes happen at
 * the thread's next wait_group that covers them, or when nothing else in the block can move). */
void async_mbar_arrive(uint64_t *bar);

/* The warp-wide tensor-core instructions (PTX ISA: ldmatrix, mma.sync m16n8k16 / m16n8k8). */
enum b16_kind { B16_F16 = 0, B16_BF16 = 1 };
void ldmatrix(uint32_t *r, int n_tiles, int trans, const void *row_addr);
void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2], b16_kind kind);
void mma_tf32_16808(float c[4], const uint32_t a[4], const uint32_t b[2]);
uint32_t tf32_round(float x);

/* Hopper's warpgroup MMA, m64nNk16 (emu_wgmma.cc): d holds the thread's n / 2 accumulators; A
 * from a shared-memory descriptor (wgmma_ss) or from mma.sync's A fragment in registers
 * (wgmma_rs); trans_b: B MN-major. Executed when wgmma_wait retires the group. Descriptors
 * come from wgmma_desc (wgmma.cuh's wg_desc). */
uint64_t wgmma_desc(const void *smem, uint32_t lbo, uint32_t sbo);
void wgmma_ss(float *d, int n, uint64_t da, uint64_t db, int trans_b, b16_kind kind);
void wgmma_rs(float *d, int n, const uint32_t a[4], uint64_t db, int trans_b, b16_kind kind);
void wgmma_commit(void);
void wgmma_wait(int keep);

/* A kernel launch, in clusters of `cluster` blocks along x (1: none): checks the configuration
 * as the driver does (an error is left for cudaGetLastError and returned), then runs body() once
 * per thread, or records it when the stream is being captured into a graph. */
cudaError_t launch_kernel(dim3 grid, dim3 block, size_t dyn_smem, const void *kernel, void *stream, unsigned cluster,
                          std::function<void()> body);

template <class... P> struct launcher {
    dim3 grid, block;
    size_t smem;
    void *stream;
    void (*kernel)(P...);
    unsigned cluster;
    template <class... A> cudaError_t operator()(A &&...a) const {
        /* converted once, as a kernel's parameters are; every thread calls with its own copy */
        std::tuple<P...> args(std::forward<A>(a)...);
        void (*k)(P...) = kernel;
        return launch_kernel(grid, block, smem, (const void *)kernel, stream, cluster, [k, args]() {
            std::tuple<P...> mine = args;
            std::apply(k, mine);
        });
    }
};

template <class... P>
launcher<P...> launch(dim3 grid, dim3 block, size_t smem, void *stream, unsigned cluster, void (*k)(P...)) {
    return launcher<P...>{grid, block, smem, stream, k, cluster};
}

} /* namespace emu */

/* A kernel's dynamic shared memory (cuda_device.h's LOCO_DYN_SMEM): a pointer to the running
 * block's buffer of the emulated device's opt-in limit, 1024-byte aligned (TMA's 128-byte
 * swizzle needs that much), NaN bytes at the block's start (emu_threads.cc). */
#define EMU_SMEM_OPTIN 232448 /* an H100's / H200's 227 KB, as the emulated compute capability 9.0 */
#define LOCO_DYN_SMEM(type, name, align) type *const name = (type *)::emu::dyn_smem(align)

/* kernel<<<grid, block, smem, stream>>>(args) */
#define LOCO_LAUNCH(grid, block, smem, stream, ...) \
    ::emu::launch(dim3(grid), dim3(block), (size_t)(smem), (void *)(stream), 1u, __VA_ARGS__)
/* the same in clusters of `cluster` blocks along x (cuda_device.h's form: cudaLaunchKernelEx) */
#define LOCO_LAUNCH_CLUSTER(grid, block, smem, stream, cluster, ...) \
    ::emu::launch(dim3(grid), dim3(block), (size_t)(smem), (void *)(stream), (unsigned)(cluster), __VA_ARGS__)

/* The C++ forms of two runtime calls that cuda_runtime.h only declares for nvcc. */
template <class... P> inline cudaError_t cudaFuncSetAttribute(void (*f)(P...), cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute((const void *)f, attr, value);
}
template <class... P>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, void (*f)(P...), int block_size,
                                                                 size_t dyn_smem) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, (const void *)f, block_size, dyn_smem);
}
template <class... P>
inline cudaError_t cudaOccupancyMaxActiveClusters(int *clusters, void (*f)(P...), const cudaLaunchConfig_t *config) {
    return cudaOccupancyMaxActiveClusters(clusters, (const void *)f, config);
}
template <class T>
inline cudaError_t cudaMemcpyFromSymbol(void *dst, const T &symbol, size_t count, size_t offset = 0,
                                        cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
    return cudaMemcpyFromSymbol(dst, (const void *)&symbol, count, offset, kind);
}

#define threadIdx (::emu::coords().tid)
#define blockIdx (::emu::coords().bid)
#define blockDim (::emu::coords().bdim)
#define gridDim (::emu::coords().gdim)

/* ---- intrinsics ------------------------------------------------------------------------------ */

inline void __syncthreads(void) { emu::block_barrier(); }
namespace emu {
inline void syncwarp_op(const unsigned char (*)[64], unsigned char (*)[64], int) {}
} /* namespace emu */
/* Waits for every lane of the warp (the mask must name them all: loco's kernels never sync part
 * of a warp). */
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu::trap("__syncwarp with a partial mask");
    int none = 0;
    emu::warp_collective(emu::syncwarp_op, &none, sizeof none, &none, sizeof none);
}
[[noreturn]] inline void __trap(void) { emu::trap("__trap() in a kernel"); }

namespace emu {
template <class T> struct shfl_msg {
    T v;
    int arg;
};
template <class T, int XOR> void shfl_op(const unsigned char (*in)[64], unsigned char (*out)[64], int lanes) {
    for (int l = 0; l < lanes; l++) {
        const int arg = ((const shfl_msg<T> *)in[l])->arg;
        const int src = XOR ? (l ^ arg) : (arg & 31);
        if (src >= lanes) trap("shuffle from a lane past the warp's last thread");
        memcpy(out[l], &((const shfl_msg<T> *)in[src])->v, sizeof(T));
    }
}
inline void any_op(const unsigned char (*in)[64], unsigned char (*out)[64], int lanes) {
    int any = 0;
    for (int l = 0; l < lanes; l++) any |= *(const int *)in[l] != 0;
    for (int l = 0; l < lanes; l++) memcpy(out[l], &any, sizeof any);
}
template <class T> T shfl(T v, int arg, int by_xor) {
    static_assert(sizeof(T) <= 56, "shuffle payload");
    shfl_msg<T> m = {v, arg};
    T r;
    warp_collective(by_xor ? shfl_op<T, 1> : shfl_op<T, 0>, &m, sizeof m, &r, sizeof r);
    return r;
}
} /* namespace emu */

template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    (void)mask, (void)width;
    return emu::shfl(v, lane_mask, 1);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    (void)mask, (void)width;
    return emu::shfl(v, src, 0);
}
inline int __any_sync(unsigned mask, int pred) {
    (void)mask;
    int r;
    emu::warp_collective(emu::any_op, &pred, sizeof pred, &r, sizeof r);
    return r;
}

inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
/* The hardware's fast division: 0 once |y| passes 2^126. */
inline float __fdividef(float x, float y) { return fabsf(y) > 8.507059e37f ? 0.0f * x : x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
/* Round-to-nearest arithmetic that the compiler may not fuse: volatile stores the rounded result
 * (the emulator's flags already keep g++ from contracting, but these promise it). */
inline float __fadd_rn(float a, float b) {
    volatile float r = a + b;
    return r;
}
inline float __fsub_rn(float a, float b) {
    volatile float r = a - b;
    return r;
}
inline float __fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline int __float2int_rz(float x) { return (int)x; } /* (in range: out of range is undefined in C) */
/* Blocks may run on several host threads: a real atomic. */
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) {
    unsigned long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline size_t __cvta_generic_to_shared(const void *p) { return (size_t)(uintptr_t)p; }

/* ---- the inline-PTX helpers of mma.h, cuda_device.h and conv_igemm_tf32.cu ----------------------- */

__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)(uintptr_t)p; }
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes) {
    emu::async_copy16(smem, gmem, src_bytes);
}
__device__ __forceinline__ void cp_async_commit(void) { emu::async_commit(); }
template <int N> __device__ __forceinline__ void cp_async_wait(void) { emu::async_wait(N); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) { emu::ldmatrix(r, 4, 0, p); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p) { emu::ldmatrix(r, 4, 1, p); }
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void *p) { emu::ldmatrix(r, 2, 1, p); }
template <typename T> __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    emu::mma_16816(c, a, b, std::is_same<T, __nv_bfloat16>::value ? emu::B16_BF16 : emu::B16_F16);
}
/* 2^x as MUFU.EX2 with .ftz: results below 2^-126 are zero. */
__device__ __forceinline__ float fast_exp2(float x) {
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;
}
__device__ __forceinline__ uint32_t tf32_rna(float x) { return emu::tf32_round(x); }
__device__ __forceinline__ void mma_tf32_16808(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    emu::mma_tf32_16808(c, a, b);
}

#endif
