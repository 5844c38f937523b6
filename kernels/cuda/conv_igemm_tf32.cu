/* conv_igemm_tf32.cu: 2-D convolution of NCHW f32 activations as an implicit GEMM on tensor
 * cores in TF32, the twin of conv_igemm.cu (f16/bf16) for the SD-XL VAE, which decodes in f32.
 *
 *   M = Cout (rows of the weight matrix w [Cout, Cin*kh*kw], contiguous f32),
 *   N = output pixels of the whole batch (n, ho, wo), K = Cin*kh*kw,
 *   y[n, co, ho, wo] = sum_k w[co, k] * x[n, ci(k), ho*s - pt + r(k), wo*s - pl + s(k)].
 *
 * Precision is what cuDNN gives PyTorch by default for f32 convolutions (allow_tf32): both
 * operands rounded to TF32 (10-bit mantissa, cvt.rna: to nearest, ties away from zero), products
 * summed in f32 by mma.sync m16n8k8 .tf32, bias added in f32.
 *
 * Tiles: 128 (Cout) x 128 (pixels) x 32 (K) per block of 8 warps, each warp 64 x 32 (4 x 4
 * mma tiles of 16 x 8). Weights come in with cp.async (16-byte vectors when K % 4 == 0) and are
 * rounded to TF32 in place by the thread that copied them; the im2col gather goes through
 * registers (per-element bounds checks) and is rounded on its way to shared memory, so the
 * inner loop is plain 32-bit shared loads and mma. Tile k+1 is fetched while tile k is
 * multiplied, two shared-memory stages (70 KB: needs the opt-in of cuda_conv_igemm_tf32_setup).
 *
 * Fragment layout of m16n8k8 tf32 (g = lane / 4, t = lane % 4), from the PTX ISA:
 *   A 16x8 (row): a[0] = (g, t)  a[1] = (g+8, t)  a[2] = (g, t+4)  a[3] = (g+8, t+4)
 *   B 8x8  (col): b[0] = (k t, n g)  b[1] = (k t+4, n g)
 *   C 16x8 (f32): c[0], c[1] = (g, 2t), (g, 2t+1)  c[2], c[3] = (g+8, 2t), (g+8, 2t+1)
 * Shared-memory pitches make these loads conflict-free: A rows are 36 floats apart, so the
 * 8 rows g x 4 columns t of a[i] fall in banks 4g + t (all 32 distinct); B k-rows are 136
 * floats apart, so the 4 k-rows t x 8 columns g of b[i] fall in banks 8t + g. */
#include "conv_igemm_common.cuh"
#include "mma.h"

#ifndef LOCO_CUDA_EMU /* (the tests' CPU kernel emulator has its own) */
/* x rounded to TF32 (low 13 bits zero), as the bits mma's .tf32 operands take. */
__device__ __forceinline__ uint32_t tf32_rna(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

/* c += a * b, one 16x8x8 tile, TF32 inputs, f32 accumulators. */
__device__ __forceinline__ void mma_tf32_16808(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

/* ---- kernel (the host emulator builds this part, and conv_igemm_common.cuh, on the CPU) -------- */

#define T32_BM 128
#define T32_BN 128
#define T32_BK 32
#define T32_THREADS 256
#define T32_LDA (T32_BK + 4) /* 36 floats (144 B, keeps 16-byte rows for cp.async) */
#define T32_LDB (T32_BN + 8) /* 136 floats */
#define T32_BROWS (T32_BK * T32_BN / T32_THREADS) /* B elements gathered per thread per tile: 16 */
#define T32_AVEC ((T32_BM * T32_BK / 4) / T32_THREADS) /* 16-byte weight chunks per thread per tile: 4 */
#define T32_A_WORDS (T32_BM * T32_LDA)
#define T32_B_WORDS (T32_BK * T32_LDB)
/* dynamic shared memory: As[2], Bs[2], then the k-decode table kdec[2][T32_BK] (int4) */
#define T32_SMEM ((2 * (T32_A_WORDS + T32_B_WORDS)) * 4 + 2 * T32_BK * 16)

typedef struct t32_params {
    const float *x, *w;
    const void *bias;
    float *y;
    int bias_dtype, has_bias;
    int cin, h, wd, cout, kh, kw, stride, pad_t, pad_l, ho, wo;
    int K, P; /* Cin*kh*kw, Ho*Wo */
    int64_t npix;
    int a_vec;  /* K % 4 == 0 and w 16-byte aligned: weight rows load as 16-byte cp.async */
    int y_pair; /* P even and y 8-byte aligned: neighbouring pixels store as one float2 */
} t32_params;

/* Stage weight tile kt: cp.async (rounded later by t32_round_a, after the copy lands) or, for
 * K % 4 != 0, plain loads rounded on the way. Out-of-range rows and k are zeros. */
__device__ __forceinline__ void t32_load_a(uint32_t *as, int kt, int m0, const t32_params &p, int tid) {
    if (p.a_vec) {
#pragma unroll
        for (int i = 0; i < T32_AVEC; i++) {
            int idx = tid + i * T32_THREADS;
            int row = idx >> 3, cv = idx & 7;
            int m = m0 + row, k = kt * T32_BK + cv * 4;
            bool ok = m < p.cout && k < p.K; /* K % 4 == 0: the whole vector is inside */
            cp_async16(as + row * T32_LDA + cv * 4, ok ? (const void *)(p.w + (int64_t)m * p.K + k) : (const void *)p.w,
                       ok ? 16 : 0);
        }
    } else {
        for (int i = 0; i < T32_BM * T32_BK / T32_THREADS; i++) {
            int idx = tid + i * T32_THREADS;
            int row = idx >> 5, col = idx & 31;
            int m = m0 + row, k = kt * T32_BK + col;
            as[row * T32_LDA + col] = tf32_rna((m < p.cout && k < p.K) ? p.w[(int64_t)m * p.K + k] : 0.0f);
        }
    }
}

/* Round to TF32, in place, the 16-byte chunks this thread copied with cp.async (after its
 * cp.async wait, before the barrier that publishes the tile). */
__device__ __forceinline__ void t32_round_a(uint32_t *as, const t32_params &p, int tid) {
    if (!p.a_vec) return;
#pragma unroll
    for (int i = 0; i < T32_AVEC; i++) {
        int idx = tid + i * T32_THREADS;
        uint4 *q = (uint4 *)(as + (idx >> 3) * T32_LDA + (idx & 7) * 4);
        uint4 v = *q;
        v.x = tf32_rna(__uint_as_float(v.x));
        v.y = tf32_rna(__uint_as_float(v.y));
        v.z = tf32_rna(__uint_as_float(v.z));
        v.w = tf32_rna(__uint_as_float(v.w));
        *q = v;
    }
}

__global__ void __launch_bounds__(T32_THREADS) conv_igemm_tf32_kernel(const t32_params p) {
    LOCO_DYN_SMEM(uint32_t, t32_smem, 16);
    uint32_t *As0 = t32_smem, *As1 = t32_smem + T32_A_WORDS;
    uint32_t *Bs0 = t32_smem + 2 * T32_A_WORDS, *Bs1 = Bs0 + T32_B_WORDS;
    int4 *kdec = (int4 *)(t32_smem + 2 * (T32_A_WORDS + T32_B_WORDS)); /* [2][T32_BK] */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp & 1, wn = warp >> 1; /* 2 x 4 warps: 64 rows x 32 pixels each */
    const int g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * T32_BM;
    const int64_t n0 = (int64_t)blockIdx.x * T32_BN;
    const float *x = p.x;
    const int nk = (p.K + T32_BK - 1) / T32_BK;

    /* this thread's B column (one output pixel) for the whole K loop, and its k-rows */
    const int bcol = tid & (T32_BN - 1), brow0 = tid >> 7;
    const igc_pixel<float> px = igc_pixel_at(x, n0 + bcol, p);

    float breg[T32_BROWS];
    float acc[4][4][4];
    igc_zero(acc);

    /* prologue: decode tiles 0 and 1, stage tile 0 */
    if (warp == 0) {
        igc_decode<T32_BK>(kdec, 0, p, lane);
        if (nk > 1) igc_decode<T32_BK>(kdec + T32_BK, 1, p, lane);
    }
    __syncthreads();
    t32_load_a(As0, 0, m0, p, tid);
    cp_async_commit();
    igc_gather(breg, kdec, brow0, px, p, 0.0f);
#pragma unroll
    for (int i = 0; i < T32_BROWS; i++) Bs0[(brow0 + 2 * i) * T32_LDB + bcol] = tf32_rna(breg[i]);
    cp_async_wait<0>();
    t32_round_a(As0, p, tid);
    __syncthreads();

    for (int kt = 0; kt < nk; kt++) {
        const int cur = kt & 1;
        const bool more = kt + 1 < nk;
        uint32_t *an = cur ? As0 : As1, *bn = cur ? Bs0 : Bs1; /* next stage */
        if (more) { /* start tile kt+1: weights by cp.async, the gather into registers */
            t32_load_a(an, kt + 1, m0, p, tid);
            cp_async_commit();
            igc_gather(breg, kdec + ((kt + 1) & 1) * T32_BK, brow0, px, p, 0.0f);
        }

        const uint32_t *as = (cur ? As1 : As0) + (wm * 64 + g) * T32_LDA + t;
        const uint32_t *bs = (cur ? Bs1 : Bs0) + t * T32_LDB + wn * 32 + g;
#pragma unroll
        for (int kk = 0; kk < T32_BK / 8; kk++) {
            uint32_t af[4][4], bf[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; mt++) {
                const uint32_t *a = as + mt * 16 * T32_LDA + kk * 8;
                af[mt][0] = a[0];
                af[mt][1] = a[8 * T32_LDA];
                af[mt][2] = a[4];
                af[mt][3] = a[8 * T32_LDA + 4];
            }
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                const uint32_t *b = bs + kk * 8 * T32_LDB + nt * 8;
                bf[nt][0] = b[0];
                bf[nt][1] = b[4 * T32_LDB];
            }
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++) mma_tf32_16808(acc[mt][nt], af[mt], bf[nt]);
        }

        if (more) {
#pragma unroll
            for (int i = 0; i < T32_BROWS; i++) bn[(brow0 + 2 * i) * T32_LDB + bcol] = tf32_rna(breg[i]);
        }
        /* tile kt's table slot is free now (its gather happened last iteration): decode kt+2 */
        if (warp == 0 && kt + 2 < nk) igc_decode<T32_BK>(kdec + (kt & 1) * T32_BK, kt + 2, p, lane);
        cp_async_wait<0>();
        if (more) t32_round_a(an, p, tid);
        __syncthreads();
    }

    /* epilogue: + bias, store along pixel rows (two neighbouring pixels per float2); obase / nok
     * live here, not in igc_epilogue (see conv_igemm_common.cuh) */
    int64_t obase[4][2];
    bool nok[4][2];
    igc_out_pixels(obase, nok, p, n0, wn, lane);
    igc_store_acc<float>(acc, obase, nok, p, m0, wm, lane);
}

/* ---- host ------------------------------------------------------------------------------------ */

loco_status cuda_conv_igemm_tf32_setup(cuda_impl *c, loco_err *err) {
    (void)c;
    cudaError_t e = cudaFuncSetAttribute(conv_igemm_tf32_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T32_SMEM);
    return cuda_check(e, "cudaFuncSetAttribute(conv_igemm_tf32_kernel)", err);
}

loco_status cuda_conv_igemm_tf32(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                 const loco_tensor *bias, const loco_conv2d_params *cp, loco_err *err) {
    if (x->dtype != LOCO_F32 || y->dtype != LOCO_F32 || w->dtype != LOCO_F32)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "cuda conv2d: the TF32 implicit-GEMM kernel takes F32 x, w and y, not %s, %s, %s",
                            cuda_dt(x->dtype), cuda_dt(w->dtype), cuda_dt(y->dtype));
    t32_params p;
    igc_params_init(&p, y, x, w, bias, cp);
    p.x = (const float *)x->data;
    p.w = (const float *)w->data;
    p.y = (float *)y->data;
    p.a_vec = p.K % 4 == 0 && cuda_aligned(w->data, 16);
    p.y_pair = p.P % 2 == 0 && cuda_aligned(y->data, 8);
    if (p.npix <= 0 || p.cout <= 0) return LOCO_OK;
    dim3 grid((unsigned)((p.npix + T32_BN - 1) / T32_BN), (unsigned)((p.cout + T32_BM - 1) / T32_BM));
    LOCO_LAUNCH(grid, T32_THREADS, T32_SMEM, c->stream, conv_igemm_tf32_kernel)(p);
    return cuda_check_launch("conv_igemm_tf32_kernel", err);
}
