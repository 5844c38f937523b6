/* conv_igemm.cu: 2-D convolution of NCHW f16/bf16 activations as an implicit GEMM on tensor
 * cores, never materialising the im2col matrix.
 *
 *   M = Cout (rows of the weight matrix w [Cout, Cin*kh*kw], already contiguous),
 *   N = output pixels of the whole batch (n, ho, wo), K = Cin*kh*kw,
 *   y[n, co, ho, wo] = sum_k w[co, k] * x[n, ci(k), ho*s - pt + r(k), wo*s - pl + s(k)].
 *
 * Why pixels as N: in NCHW neighbouring output pixels read neighbouring input pixels, so a
 * warp's gather of one k-row of the B tile is (mostly) one coalesced run, and the output tile
 * is written along contiguous pixel rows. The engine is NCHW throughout, so no layout
 * change is needed around the kernel.
 *
 * Tiles: 128 (Cout) x 128 (pixels) x 32 (K) per block of 8 warps, each warp 64 x 32 with
 * m16n8k16 mma.sync and fp32 accumulators. Weights come in with cp.async; the im2col gather
 * goes through registers (it needs bounds checks per element), prefetching tile k+1 while
 * tile k is multiplied, two shared-memory stages. The (ci, r, s) decode of each k is done once
 * per tile by one warp into a small table, so the gather costs two adds and a compare per
 * element instead of three integer divisions. */
#include <stdlib.h>

#include "conv_igemm_common.cuh"
#include "mma.h"

#define IG_BM 128
#define IG_BN 128
#define IG_BK 32
#define IG_THREADS 256
#define IG_LDA (IG_BK + 8) /* row pitch 80 B: ldmatrix rows land in distinct banks */
#define IG_LDB (IG_BN + 8) /* row pitch 272 B: same */
#define IG_BROWS (IG_BK * IG_BN / IG_THREADS) /* B elements gathered per thread per tile: 16 */

template <typename T>
__device__ __forceinline__ void ig_load_a(T *as, int kt, int m0, const T *w, const ig_params &p, int tid) {
    if (p.a_vec) {
#pragma unroll
        for (int i = 0; i < (IG_BM * IG_BK / 8) / IG_THREADS; i++) {
            int idx = tid + i * IG_THREADS;
            int row = idx >> 2, cv = idx & 3;
            int m = m0 + row, k = kt * IG_BK + cv * 8;
            bool ok = m < p.cout && k < p.K;
            cp_async16(as + row * IG_LDA + cv * 8, ok ? (const void *)(w + (int64_t)m * p.K + k) : (const void *)w,
                       ok ? 16 : 0);
        }
    } else { /* odd K (first layers with 3 or 4 input channels): plain loads */
        for (int i = 0; i < IG_BM * IG_BK / IG_THREADS; i++) {
            int idx = tid + i * IG_THREADS;
            int row = idx >> 5, col = idx & 31;
            int m = m0 + row, k = kt * IG_BK + col;
            as[row * IG_LDA + col] = (m < p.cout && k < p.K) ? w[(int64_t)m * p.K + k] : from_f32<T>(0.0f);
        }
    }
}

/* The A and B fragments of k-step kk (16 deep) of the staged tiles, for the warp's 64 x 32 block:
 * as is the A stage (LDA pitch), bs the B stage (IG_LDB pitch). */
template <typename T, int LDA>
__device__ __forceinline__ void ig_frags(uint32_t (&af)[4][4], uint32_t (&bf)[4][2], const T *as, const T *bs, int kk,
                                         int wm, int wn, int lane) {
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
        ldmatrix_x4(af[mt], as + (wm * 64 + mt * 16 + (lane & 15)) * LDA + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int np = 0; np < 2; np++) {
        uint32_t t4[4];
        ldmatrix_x4_trans(t4, bs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * IG_LDB + wn * 32 + np * 16 +
                                  (lane >> 4) * 8);
        bf[2 * np][0] = t4[0];
        bf[2 * np][1] = t4[1];
        bf[2 * np + 1][0] = t4[2];
        bf[2 * np + 1][1] = t4[3];
    }
}

/* acc += af * bf over the warp's 4 x 4 m16n8k16 tiles. */
template <typename T>
__device__ __forceinline__ void ig_mma(float (&acc)[4][4][4], const uint32_t (&af)[4][4], const uint32_t (&bf)[4][2]) {
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++) mma16816<T>(acc[mt][nt], af[mt], bf[nt]);
}

template <typename T>
__global__ void __launch_bounds__(IG_THREADS) conv_igemm_kernel(const ig_params p) {
    __shared__ __align__(16) T As[2][IG_BM * IG_LDA];
    __shared__ __align__(16) T Bs[2][IG_BK * IG_LDB];
    __shared__ int4 kdec[2][IG_BK];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp & 1, wn = warp >> 1; /* 2 x 4 warps: 64 rows x 32 pixels each */
    const int m0 = blockIdx.y * IG_BM;
    const int64_t n0 = (int64_t)blockIdx.x * IG_BN;
    const T *x = (const T *)p.x;
    const T *w = (const T *)p.w;
    const int nk = (p.K + IG_BK - 1) / IG_BK;
    const T zero = from_f32<T>(0.0f);

    /* this thread's B column (one output pixel) for the whole K loop, and its k-rows */
    const int bcol = tid & (IG_BN - 1), brow0 = tid >> 7;
    const igc_pixel<T> px = igc_pixel_at(x, n0 + bcol, p);

    T breg[IG_BROWS];
    float acc[4][4][4];
    igc_zero(acc);

    /* prologue: decode tiles 0 and 1, stage tile 0 */
    if (warp == 0) {
        igc_decode<IG_BK>(kdec[0], 0, p, lane);
        if (nk > 1) igc_decode<IG_BK>(kdec[1], 1, p, lane);
    }
    __syncthreads();
    ig_load_a<T>(As[0], 0, m0, w, p, tid);
    cp_async_commit();
    igc_gather(breg, kdec[0], brow0, px, p, zero);
#pragma unroll
    for (int i = 0; i < IG_BROWS; i++) Bs[0][(brow0 + 2 * i) * IG_LDB + bcol] = breg[i];
    cp_async_wait<0>();
    __syncthreads();

    for (int kt = 0; kt < nk; kt++) {
        const int cur = kt & 1;
        const bool more = kt + 1 < nk;
        if (more) { /* start tile kt+1: weights by cp.async, the gather into registers */
            ig_load_a<T>(As[cur ^ 1], kt + 1, m0, w, p, tid);
            cp_async_commit();
            igc_gather(breg, kdec[(kt + 1) & 1], brow0, px, p, zero);
        }

        /* the k-step loop stays here, not in a helper: written inside a function it changes the
         * accumulators' register assignment and (row kernel) the instruction count */
#pragma unroll
        for (int kk = 0; kk < IG_BK / 16; kk++) {
            uint32_t af[4][4], bf[4][2];
            ig_frags<T, IG_LDA>(af, bf, As[cur], Bs[cur], kk, wm, wn, lane);
            ig_mma<T>(acc, af, bf);
        }

        if (more) {
#pragma unroll
            for (int i = 0; i < IG_BROWS; i++) Bs[cur ^ 1][(brow0 + 2 * i) * IG_LDB + bcol] = breg[i];
        }
        /* tile kt's table slot is free now (its gather happened last iteration): decode kt+2 */
        if (warp == 0 && kt + 2 < nk) igc_decode<IG_BK>(kdec[kt & 1], kt + 2, p, lane);
        cp_async_wait<0>();
        __syncthreads();
    }

    igc_epilogue<T>(acc, p, m0, n0, wm, wn, lane);
}

/* ---- stride-1, 3-wide, "same" width convs (every 3x3 conv of the UNet and VAE) --------------
 *
 * Same 128 x 128 tile and warp layout, but K tiles of 48 = 16 (ci, r) input rows x the three
 * horizontal taps s = 0, 1, 2 (k = (ci*kh + r)*3 + s, so a 48-aligned tile starts at s = 0).
 * When W % 8 == 0, pad_l = 1 and Wo = W, 8 consecutive output pixels of one tile lie in one
 * image row and read x[ci, iy, ow-1 .. ow+8] with ow a multiple of 8: one aligned 16-byte load
 * (taps s = 1) and two 2-byte loads for the neighbours, from which byte permutes build the
 * s = 0 and s = 2 rows. Each thread owns one (ci, r) row x 8 pixels per tile: 3 loads and 3
 * 16-byte shared stores replace the generic path's 16 scalar loads, 16 scalar stores and
 * their per-element bounds checks, for 1.5x the K depth. Shared memory is 54.8 KB (dynamic). */
#define IG3_BK 48
#define IG3_LDA (IG3_BK + 8) /* row pitch 112 B: 8 ldmatrix rows hit 8 distinct 16-byte bank groups */
#define IG3_A_ELEMS (IG_BM * IG3_LDA)
#define IG3_B_ELEMS (IG3_BK * IG_LDB)
#define IG3_SMEM ((size_t)2 * (IG3_A_ELEMS + IG3_B_ELEMS) * 2)

template <typename T>
__device__ __forceinline__ void ig3_load_a(T *as, int kt, int m0, const T *w, const ig_params &p, int tid) {
#pragma unroll
    for (int i = 0; i < (IG_BM * IG3_BK / 8) / IG_THREADS; i++) { /* 3 vectors per thread */
        int idx = tid + i * IG_THREADS;
        int row = idx / (IG3_BK / 8), cv = idx - row * (IG3_BK / 8);
        int m = m0 + row, k = kt * IG3_BK + cv * 8;
        bool ok = m < p.cout && k < p.K;
        cp_async16(as + row * IG3_LDA + cv * 8, ok ? (const void *)(w + (int64_t)m * p.K + k) : (const void *)w,
                   ok ? 16 : 0);
    }
}

template <typename T> __device__ __forceinline__ void ig3_store(T *bs, const ig3_rows &v) {
    /* bs points at row 3j, column 8q; word i of a row holds pixels 2i (low half) and 2i+1 */
    uint4 s0, s2;
    s0.x = __byte_perm(v.l, v.c.x, 0x5410);   /* x[ow-1], x[ow]   */
    s0.y = __byte_perm(v.c.x, v.c.y, 0x5432); /* x[ow+1], x[ow+2] */
    s0.z = __byte_perm(v.c.y, v.c.z, 0x5432);
    s0.w = __byte_perm(v.c.z, v.c.w, 0x5432);
    s2.x = s0.y;
    s2.y = s0.z;
    s2.z = s0.w;
    s2.w = __byte_perm(v.c.w, v.r, 0x5432); /* x[ow+7], x[ow+8] */
    *(uint4 *)bs = s0;
    *(uint4 *)(bs + IG_LDB) = v.c;
    *(uint4 *)(bs + 2 * IG_LDB) = s2;
}

template <typename T>
__global__ void __launch_bounds__(IG_THREADS) conv_igemm3_kernel(const ig_params p) {
    LOCO_DYN_SMEM(unsigned char, ig_dsmem, 16);
    T *const As = (T *)ig_dsmem;           /* [2][IG3_A_ELEMS] */
    T *const Bs = As + 2 * IG3_A_ELEMS; /* [2][IG3_B_ELEMS] */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp & 1, wn = warp >> 1;
    const int m0 = blockIdx.y * IG_BM;
    const int64_t n0 = (int64_t)blockIdx.x * IG_BN;
    const T *x = (const T *)p.x;
    const T *w = (const T *)p.w;
    const int nk = (p.K + IG3_BK - 1) / IG3_BK;

    /* gather role: (ci, r) row j of each K tile, pixels 8q .. 8q+7 of the pixel tile */
    const int j = tid >> 4, q = tid & 15;
    ig3_role<T> role = ig3_role_at(x, n0, tid, p);
    T *const bdst = Bs + (3 * j) * IG_LDB + q * 8;

    float acc[4][4][4];
    igc_zero(acc);

    ig3_load_a<T>(As, 0, m0, w, p, tid);
    cp_async_commit();
    ig3_store<T>(bdst, ig3_role_gather(role, p));
    cp_async_wait<0>();
    __syncthreads();

    for (int kt = 0; kt < nk; kt++) {
        const int cur = kt & 1;
        const bool more = kt + 1 < nk;
        ig3_rows v;
        if (more) {
            ig3_load_a<T>(As + (cur ^ 1) * IG3_A_ELEMS, kt + 1, m0, w, p, tid);
            cp_async_commit();
            ig3_role_next(role, p);
            v = ig3_role_gather(role, p);
        }

        const T *as = As + cur * IG3_A_ELEMS;
        const T *bs = Bs + cur * IG3_B_ELEMS;
#pragma unroll
        for (int kk = 0; kk < IG3_BK / 16; kk++) {
            uint32_t af[4][4], bf[4][2];
            ig_frags<T, IG3_LDA>(af, bf, as, bs, kk, wm, wn, lane);
            ig_mma<T>(acc, af, bf);
        }

        if (more) ig3_store<T>(bdst + (cur ^ 1) * IG3_B_ELEMS, v);
        cp_async_wait<0>();
        __syncthreads();
    }

    igc_epilogue<T>(acc, p, m0, n0, wm, wn, lane);
}

/* The row-gather kernel applies: stride 1, 3 taps wide, pad 1 left and right (Wo = W), W a
 * multiple of 8, x 16-byte aligned, weight rows 16-byte vectors, images under 2^31 elements.
 * LOCO_CUDA_IGEMM_ROWS=0 (c->igemm_rows, read at backend creation) forces the generic kernel
 * (for A/B timing). */
static int ig3_fits(const cuda_impl *c, const ig_params *p, const void *x) {
    return c->igemm_rows && p->stride == 1 && p->kw == 3 && p->pad_l == 1 && p->wo == p->wd && p->wd % 8 == 0 &&
           p->a_vec && cuda_aligned(x, 16) && (int64_t)p->cin * p->h * p->wd < ((int64_t)1 << 31);
}

template <typename K> static cudaError_t ig3_set_attrs(K kernel) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)IG3_SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    return e;
}

/* > 48 KB of dynamic shared memory must be opted into per kernel, before any launch (and before
 * any graph capture): done once when the backend is created. */
loco_status cuda_conv_igemm_setup(cuda_impl *c, loco_err *err) {
    (void)c;
    cudaError_t e = ig3_set_attrs(conv_igemm3_kernel<__half>);
    if (e == cudaSuccess) e = ig3_set_attrs(conv_igemm3_kernel<__nv_bfloat16>);
    return cuda_check(e, "cudaFuncSetAttribute(conv_igemm3_kernel)", err);
}

int64_t cuda_conv_igemm_blocks(int64_t npix, int64_t cout) {
    return ((npix + IG_BN - 1) / IG_BN) * ((cout + IG_BM - 1) / IG_BM);
}

loco_status cuda_conv_igemm(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_tensor *bias, const loco_conv2d_params *cp, loco_err *err) {
    ig_params p;
    ig_params_make(&p, y, x, w, wdata, bias, cp);
    if (p.npix <= 0 || p.cout <= 0) return LOCO_OK;
    if (y->dtype != LOCO_F16 && y->dtype != LOCO_BF16)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: the implicit-GEMM kernel takes F16 or BF16, not %s",
                            cuda_dt(y->dtype));
    dim3 grid((unsigned)((p.npix + IG_BN - 1) / IG_BN), (unsigned)((p.cout + IG_BM - 1) / IG_BM));
    if (ig3_fits(c, &p, x->data)) {
        const int bf = y->dtype == LOCO_BF16;
        if (bf)
            LOCO_LAUNCH(grid, IG_THREADS, IG3_SMEM, c->stream, conv_igemm3_kernel<__nv_bfloat16>)(p);
        else
            LOCO_LAUNCH(grid, IG_THREADS, IG3_SMEM, c->stream, conv_igemm3_kernel<__half>)(p);
        return cuda_check_launch("conv_igemm3_kernel", err);
    }
    if (y->dtype == LOCO_F16)
        LOCO_LAUNCH(grid, IG_THREADS, 0, c->stream, conv_igemm_kernel<__half>)(p);
    else
        LOCO_LAUNCH(grid, IG_THREADS, 0, c->stream, conv_igemm_kernel<__nv_bfloat16>)(p);
    return cuda_check_launch("conv_igemm_kernel", err);
}
