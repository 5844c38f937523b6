/* wgmma_probe.cu: the self-test of Hopper's warpgroup MMA (wgmma, sm_90a) as this backend uses it,
 * run by loco_backend_selftest. conv_wgmma.cu and attention_wgmma.cu were written without a GPU,
 * on assumptions about wgmma's shared-memory layouts and fragments taken from the PTX ISA, a
 * public test kernel and CUTLASS's descriptor builder;
 * each probe here checks one of them with a single 64 x 64 x (16 k) product of small integers
 * (exact in fp16 and fp32), so a run on an H100/H200 says which hold, apart from everything else
 * a whole kernel could get wrong. (The H200 confirmed the required ones in runs 5-6; the tests'
 * emulator, tests/emu/emu_wgmma.cc, implements exactly those readings and runs this too.)
 *
 *   kmajor_k48       A and B in shared memory, both K-major, no swizzle: element (row, k) at
 *                    (row / 8) SBO + (k / 8) 128 + (row % 8) 16 + (k % 8) 2, LBO 128, SBO 768,
 *                    three k16 steps 256 bytes apart (conv_wgmma.cu's A; its accumulator layout)
 *   kmajor_sbo784    the same with B's SBO 784 (conv_wgmma.cu's padded B)
 *   regs_a           A from registers in mma.sync's m16n8k16 A-fragment layout per warp, B as in
 *                    kmajor_k48 (how attention_wgmma.cu feeds P to P V)
 *   mn_*             B "MN-major" (the transpose bit set: 16 bytes of a core matrix run along N),
 *                    in two placements and with both readings of the descriptor's two offsets;
 *                    attention_wgmma.cu's V is mn_k128_lbo_is_k (LBO the step along K, as
 *                    CUTLASS builds it), the other three say what holds if that one fails.
 *   kmajor_sw128     A and B K-major in the 128-byte swizzle a TMA copy writes (wgmma.cuh's
 *                    wg_desc_sw128: rows of 128 bytes, 16-byte chunk c of row r at chunk c XOR
 *                    (r % 8) by the address bits, k16 steps 32 bytes apart; gemm_wgmma.cu's TMA
 *                    form). Not required: only that experimental form relies on it.
 *   mn_sw128         B MN-major in the 128-byte swizzle (wg_desc_sw128: 64 columns of N per
 *                    128-byte row, K rows 128 bytes apart, 8-row groups SBO 1024 apart, k16
 *                    steps 2048 apart; the TMA attention's V). Not required either.
 *
 * The accumulator layout assumed throughout: warp w holds rows 16w..16w+15, lane (g, t) holds
 * d[4j + e] = (row g + 8 (e >> 1), column 8j + 2t + (e & 1)). If it were wrong every probe
 * fails the same way, which the report then shows. */
#include <stdio.h>
#include <string.h>

#include "cuda_internal.h"
#include "wgmma.cuh"

/* 1 only in the sm_90a image (the Makefile builds this file for sm_90a alone). */
__device__ const int wgp_image_ok = WG_DEVICE_OK;

#define WGP_THREADS 128
#define WGP_M 64
#define WGP_N 64
#define WGP_KSTEPS 3
#define WGP_K (16 * WGP_KSTEPS)
#define WGP_SMEM_A_BYTES 8192 /* 64 x 48 halves; 64 rows of 128 bytes for kmajor_sw128 */
/* B's placements write at most 6.1 KB, but a probe whose reading of the descriptor is wrong
 * still reads a whole tile at its own strides: up to 11.3 KB past the buffer's start (mn_n128,
 * last k-step, N read at 1024-byte steps). Out of the block's shared memory, that read could
 * fault the context and take the other probes' answers with it. */
#define WGP_SMEM_B_BYTES 12288

typedef struct wgp_probe {
    int regs_a;      /* A from registers instead of shared memory */
    int b_mn;        /* B MN-major (transpose bit) */
    /* B's placement: element (n, k) at (n / 8) b_n + (k / 8) b_k + inner, inner = (n % 8) 16 +
     * (k % 8) 2 (K-major) or (k % 8) 16 + (n % 8) 2 (MN-major); k16 step s starts 2 s b_k in */
    uint32_t b_n, b_k;
    uint32_t desc_lbo, desc_sbo; /* B's descriptor */
    int sw128;       /* 128-byte swizzle (the placement fields unused): A and B K-major, or with b_mn,
                      * A as in kmajor_k48 and B MN-major */
} wgp_probe;

/* Byte offset of (row, k) of a K-major operand in the 128-byte swizzle, from a 1024-aligned base;
 * for an MN-major B (n < 64), (k, n) is at wgp_sw128_at(k, n): K rows of 128 bytes. */
__device__ __forceinline__ uint32_t wgp_sw128_at(int row, int k) {
    const uint32_t a = (uint32_t)row * 128 + (uint32_t)k * 2;
    return a ^ (((a >> 7) & 7u) << 4);
}

#define WGP_ACC_OUT "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define WGP_ACC_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

/* d += A . B for this warpgroup, m64n64k16, f16 in, f32 accumulators; TB: B's transpose bit. */
template <int TB> __device__ __forceinline__ void wgp_mma_ss(float (&d)[32], uint64_t da, uint64_t db) {
#if defined(LOCO_CUDA_EMU) /* the tests' CPU emulator (tests/emu/emu_wgmma.cc) */
    emu::wgmma_ss(d, 64, da, db, TB, emu::B16_F16);
#elif WG_DEVICE_OK
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " WGP_ACC_REGS ", %32, %33, p, 1, 1, 0, %35;\n}\n"
                 : WGP_ACC_OUT
                 : "l"(da), "l"(db), "r"(1), "n"(TB));
#else
    (void)d, (void)da, (void)db;
#endif
}

__device__ __forceinline__ void wgp_mma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
#if defined(LOCO_CUDA_EMU)
    emu::wgmma_rs(d, 64, a, db, 0, emu::B16_F16);
#elif WG_DEVICE_OK
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " WGP_ACC_REGS ", {%32, %33, %34, %35}, %36, "
                 "p, 1, 1, 0;\n}\n"
                 : WGP_ACC_OUT
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
#else
    (void)d, (void)a, (void)db;
#endif
}

/* One probe: a [64][48] and bt [64 (n)][48 (k)] row-major halves (B(k, n) = bt[n][k]); every
 * thread writes its 32 accumulators to d[tid * 32 + i] as they are. */
__global__ void __launch_bounds__(WGP_THREADS) wgp_kernel(const uint16_t *a, const uint16_t *bt, float *d, wgp_probe p) {
#if !WG_DEVICE_OK
    __trap();
#else
    __shared__ __align__(1024) unsigned char sa[WGP_SMEM_A_BYTES];
    __shared__ __align__(1024) unsigned char sb[WGP_SMEM_B_BYTES];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    for (int i = tid; i < WGP_M * WGP_K; i += WGP_THREADS) {
        const int m = i / WGP_K, k = i % WGP_K;
        const uint32_t at = p.sw128 && !p.b_mn ? wgp_sw128_at(m, k)
                                    : (m >> 3) * (WGP_K / 8 * 128) + (k >> 3) * 128 + (m & 7) * 16 + (k & 7) * 2;
        *(uint16_t *)(sa + at) = a[i];
    }
    for (int i = tid; i < WGP_N * WGP_K; i += WGP_THREADS) {
        const int n = i / WGP_K, k = i % WGP_K;
        const uint32_t inner = p.b_mn ? (k & 7) * 16 + (n & 7) * 2 : (n & 7) * 16 + (k & 7) * 2;
        const uint32_t at = !p.sw128 ? (n >> 3) * p.b_n + (k >> 3) * p.b_k + inner
                            : p.b_mn ? wgp_sw128_at(k, n)
                                     : wgp_sw128_at(n, k);
        *(uint16_t *)(sb + at) = bt[i];
    }
    wg_fence_proxy();
    __syncthreads();
    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; i++) acc[i] = 0.0f;
    /* A fragments for regs_a: rows 16 warp + g (+8), k 2t, 2t+1 (+8) of each k16 step */
    uint32_t af[WGP_KSTEPS][4];
#pragma unroll
    for (int s = 0; s < WGP_KSTEPS; s++) {
        const int r0 = 16 * warp + g, k0 = 16 * s + 2 * t;
        af[s][0] = a[r0 * WGP_K + k0] | (uint32_t)a[r0 * WGP_K + k0 + 1] << 16;
        af[s][1] = a[(r0 + 8) * WGP_K + k0] | (uint32_t)a[(r0 + 8) * WGP_K + k0 + 1] << 16;
        af[s][2] = a[r0 * WGP_K + k0 + 8] | (uint32_t)a[r0 * WGP_K + k0 + 9] << 16;
        af[s][3] = a[(r0 + 8) * WGP_K + k0 + 8] | (uint32_t)a[(r0 + 8) * WGP_K + k0 + 9] << 16;
    }
    wg_fence_acc(acc);
    wg_fence();
#pragma unroll
    for (int s = 0; s < WGP_KSTEPS; s++) {
        const uint64_t db = p.sw128 && p.b_mn ? wg_desc_sw128(sb + 2048 * s, 8192, 1024)
                            : p.sw128     ? wg_desc_sw128(sb + 32 * s, 16, 1024)
                                          : wg_desc(sb + 2 * s * p.b_k, p.desc_lbo, p.desc_sbo);
        if (p.sw128 && p.b_mn)
            wgp_mma_ss<1>(acc, wg_desc(sa + s * 256, 128, WGP_K / 8 * 128), db);
        else if (p.sw128)
            wgp_mma_ss<0>(acc, wg_desc_sw128(sa + 32 * s, 16, 1024), db);
        else if (p.regs_a)
            wgp_mma_rs(acc, af[s], db);
        else if (p.b_mn)
            wgp_mma_ss<1>(acc, wg_desc(sa + s * 256, 128, WGP_K / 8 * 128), db);
        else
            wgp_mma_ss<0>(acc, wg_desc(sa + s * 256, 128, WGP_K / 8 * 128), db);
    }
    wg_commit();
    wg_wait_all();
    wg_fence_acc(acc);
#pragma unroll
    for (int i = 0; i < 32; i++) d[tid * 32 + i] = acc[i];
#endif
}

/* ---- host ------------------------------------------------------------------------------------ */

/* Small integers, exact in fp16 and in fp32 sums: the result has no rounding to hide behind. */
static uint16_t wgp_half_of_int(int v) { /* |v| <= 4 */
    static const uint16_t pos[5] = {0x0000, 0x3C00, 0x4000, 0x4200, 0x4400}; /* 0 1 2 3 4 */
    return v < 0 ? (uint16_t)(pos[-v] | 0x8000) : pos[v];
}

typedef struct wgp_case {
    const char *name;
    int required; /* an assumption conv_wgmma.cu or attention_wgmma.cu makes */
    wgp_probe p;
} wgp_case;

static const wgp_case wgp_cases[] = {
    {"kmajor_k48", 1, {0, 0, 768, 128, 128, 768, 0}},
    {"kmajor_sbo784", 1, {0, 0, 784, 128, 128, 784, 0}},
    {"regs_a", 1, {1, 0, 768, 128, 128, 768, 0}},
    /* MN-major B, placed with N-neighbouring core matrices 128 bytes apart (K-neighbours 1024) */
    {"mn_n128_lbo_is_n", 0, {0, 1, 128, 1024, 128, 1024, 0}},
    {"mn_n128_lbo_is_k", 0, {0, 1, 128, 1024, 1024, 128, 0}},
    /* ... and with K-neighbouring core matrices 128 bytes apart (N-neighbours 768) */
    {"mn_k128_lbo_is_n", 0, {0, 1, 768, 128, 768, 128, 0}},
    {"mn_k128_lbo_is_k", 1, {0, 1, 768, 128, 128, 768, 0}}, /* attention_wgmma.cu's V */
    {"kmajor_sw128", 0, {0, 0, 0, 0, 0, 0, 1}},          /* gemm_wgmma.cu's TMA form */
    {"mn_sw128", 0, {0, 1, 0, 0, 0, 0, 1}},              /* the TMA attention's V */
};

/* Runs every probe; one line per probe into report. *required_ok: every required probe matched. */
static loco_status wgp_run_all(cuda_impl *c, char *report, size_t n, int *required_ok, loco_err *err) {
    const size_t na = WGP_M * WGP_K, nb = WGP_N * WGP_K, nd = WGP_THREADS * 32;
    uint16_t ha[WGP_M * WGP_K], hb[WGP_N * WGP_K];
    float want[WGP_M * WGP_N], got[WGP_THREADS * 32];
    for (int m = 0; m < WGP_M; m++)
        for (int k = 0; k < WGP_K; k++) ha[m * WGP_K + k] = wgp_half_of_int((m * 7 + k * 3) % 9 - 4);
    for (int j = 0; j < WGP_N; j++)
        for (int k = 0; k < WGP_K; k++) hb[j * WGP_K + k] = wgp_half_of_int((j * 5 + k * 11 + 1) % 9 - 4);
    for (int m = 0; m < WGP_M; m++)
        for (int j = 0; j < WGP_N; j++) {
            int s = 0;
            for (int k = 0; k < WGP_K; k++) s += ((m * 7 + k * 3) % 9 - 4) * ((j * 5 + k * 11 + 1) % 9 - 4);
            want[m * WGP_N + j] = (float)s;
        }
    void *buf = NULL;
    const size_t bytes = (na + nb) * 2 + nd * 4;
    CUDA_TRY(cuda_alloc_get(c, bytes, &buf, err));
    uint16_t *da = (uint16_t *)buf, *db = da + na;
    float *dd = (float *)(db + nb);
    loco_status st = cuda_check(cudaMemcpyAsync(da, ha, na * 2, cudaMemcpyHostToDevice, c->stream), "cudaMemcpyAsync", err);
    if (st == LOCO_OK)
        st = cuda_check(cudaMemcpyAsync(db, hb, nb * 2, cudaMemcpyHostToDevice, c->stream), "cudaMemcpyAsync", err);
    size_t used = 0;
    *required_ok = 1;
    for (size_t i = 0; i < sizeof wgp_cases / sizeof wgp_cases[0] && st == LOCO_OK; i++) {
        const wgp_case *pc = &wgp_cases[i];
        LOCO_LAUNCH(1, WGP_THREADS, 0, c->stream, wgp_kernel)(da, db, dd, pc->p);
        st = cuda_check_launch("wgp_kernel", err);
        if (st == LOCO_OK)
            st = cuda_check(cudaMemcpyAsync(got, dd, nd * 4, cudaMemcpyDeviceToHost, c->stream), "cudaMemcpyAsync", err);
        if (st == LOCO_OK) st = cuda_check(cudaStreamSynchronize(c->stream), "wgmma self-test", err);
        if (st != LOCO_OK) break;
        int wrong = 0, fm = -1, fn = -1;
        float fg = 0.0f;
        for (int tid = 0; tid < WGP_THREADS; tid++)
            for (int e = 0; e < 32; e++) {
                const int lane = tid & 31, m = 16 * (tid >> 5) + (lane >> 2) + 8 * ((e & 3) >> 1);
                const int j = 8 * (e >> 2) + 2 * (lane & 3) + (e & 1);
                if (got[tid * 32 + e] != want[m * WGP_N + j] && wrong++ == 0) fm = m, fn = j, fg = got[tid * 32 + e];
            }
        if (wrong && pc->required) *required_ok = 0;
        int w = wrong ? snprintf(report + used, n - used, "wgmma %-18s %s: %d of %d wrong, first (%d, %d) = %g, want %g\n",
                                 pc->name, pc->required ? "FAIL" : "differs", wrong, WGP_M * WGP_N, fm, fn, (double)fg,
                                 (double)want[fm * WGP_N + fn])
                      : snprintf(report + used, n - used, "wgmma %-18s ok\n", pc->name);
        if (w < 0) break;
        used += (size_t)w < n - 1 - used ? (size_t)w : n - 1 - used; /* a cut line stays cut */
        if (used == n - 1) break;
    }
    cuda_alloc_put(c, buf);
    return st;
}

/* The backend's self-test (loco_backend_selftest). Off Hopper there is nothing of this kind to
 * check. A device fault in a probe is this call's error (and sticky for the context). */
extern "C" loco_status cuda_op_selftest(loco_backend *be, char *report, size_t n, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    int image_ok = 0;
    if (c->cc_major != 9 || c->cc_minor != 0 ||
        cudaMemcpyFromSymbol(&image_ok, wgp_image_ok, sizeof image_ok) != cudaSuccess || !image_ok) {
        cudaGetLastError();
        snprintf(report, n, "wgmma: not checked (compute capability %d.%d%s)\n", c->cc_major, c->cc_minor,
                 c->cc_major == 9 && c->cc_minor == 0 ? ", no sm_90a image in this build" : "");
        return LOCO_OK;
    }
    int required_ok = 0;
    CUDA_TRY(wgp_run_all(c, report, n, &required_ok, err));
    if (!required_ok)
        return loco_err_set(err, LOCO_EDEVICE, "wgmma self-test: a layout the wgmma kernels rely on does not hold "
                            "(LOCO_CUDA_CONV=wgmma / LOCO_CUDA_FLASH=wgmma are unsafe on this build): %.200s", report);
    return LOCO_OK;
}
