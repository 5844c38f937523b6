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
#include <string.h>

#include "mma.h"

#define IG_BM 128
#define IG_BN 128
#define IG_BK 32
#define IG_THREADS 256
#define IG_LDA (IG_BK + 8) /* row pitch 80 B: ldmatrix rows land in distinct banks */
#define IG_LDB (IG_BN + 8) /* row pitch 272 B: same */
#define IG_BROWS (IG_BK * IG_BN / IG_THREADS) /* B elements gathered per thread per tile: 16 */

typedef struct ig_params {
    const void *x, *w, *bias;
    void *y;
    int bias_dtype, has_bias;
    int cin, h, wd, cout, kh, kw, stride, pad_t, pad_l, ho, wo;
    int K, P; /* Cin*kh*kw, Ho*Wo */
    int64_t npix;
    int a_vec;  /* K % 8 == 0 and w 16-byte aligned: weight rows load as 16-byte vectors */
    int y_pair; /* P even and y 4-byte aligned: neighbouring pixels store as one 32-bit word */
} ig_params;

/* Decode k-tile kt into tab[0..31] = {x offset of (ci, r, s), r, s, valid}; run by one warp. */
__device__ __forceinline__ void ig_decode(int4 *tab, int kt, const ig_params &p, int lane) {
    int k = kt * IG_BK + lane;
    int4 d = make_int4(0, 0, 0, 0);
    if (k < p.K) {
        int khw = p.kh * p.kw;
        int ci = k / khw, rs = k - ci * khw;
        int r = rs / p.kw, s = rs - r * p.kw;
        d = make_int4(ci * p.h * p.wd + r * p.wd + s, r, s, 1);
    }
    tab[lane] = d;
}

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
    const int64_t pix = n0 + bcol;
    const bool pix_ok = pix < p.npix;
    int ih0 = 0, iw0 = 0;
    const T *xs = x;
    if (pix_ok) {
        int64_t nb = pix / p.P;
        int pp = (int)(pix - nb * p.P);
        int oh = pp / p.wo, ow = pp - oh * p.wo;
        ih0 = oh * p.stride - p.pad_t;
        iw0 = ow * p.stride - p.pad_l;
        xs = x + nb * (int64_t)p.cin * p.h * p.wd;
    }
    const int pix_off = ih0 * p.wd + iw0; /* only used where the tap is inside the image */

    T breg[IG_BROWS];
    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    /* prologue: decode tiles 0 and 1, stage tile 0 */
    if (warp == 0) {
        ig_decode(kdec[0], 0, p, lane);
        if (nk > 1) ig_decode(kdec[1], 1, p, lane);
    }
    __syncthreads();
    ig_load_a<T>(As[0], 0, m0, w, p, tid);
    cp_async_commit();
#pragma unroll
    for (int i = 0; i < IG_BROWS; i++) {
        int4 d = kdec[0][brow0 + 2 * i];
        int iy = ih0 + d.y, ix = iw0 + d.z;
        bool ok = pix_ok && d.w && (unsigned)iy < (unsigned)p.h && (unsigned)ix < (unsigned)p.wd;
        breg[i] = ok ? xs[d.x + pix_off] : zero;
    }
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
            const int4 *tab = kdec[(kt + 1) & 1];
#pragma unroll
            for (int i = 0; i < IG_BROWS; i++) {
                int4 d = tab[brow0 + 2 * i];
                int iy = ih0 + d.y, ix = iw0 + d.z;
                bool ok = pix_ok && d.w && (unsigned)iy < (unsigned)p.h && (unsigned)ix < (unsigned)p.wd;
                breg[i] = ok ? xs[d.x + pix_off] : zero;
            }
        }

        const T *as = As[cur];
        const T *bs = Bs[cur];
#pragma unroll
        for (int kk = 0; kk < IG_BK / 16; kk++) {
            uint32_t af[4][4], bf[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
                ldmatrix_x4(af[mt], as + (wm * 64 + mt * 16 + (lane & 15)) * IG_LDA + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t t4[4];
                ldmatrix_x4_trans(t4, bs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * IG_LDB + wn * 32 +
                                          np * 16 + (lane >> 4) * 8);
                bf[2 * np][0] = t4[0];
                bf[2 * np][1] = t4[1];
                bf[2 * np + 1][0] = t4[2];
                bf[2 * np + 1][1] = t4[3];
            }
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++) mma16816<T>(acc[mt][nt], af[mt], bf[nt]);
        }

        if (more) {
#pragma unroll
            for (int i = 0; i < IG_BROWS; i++) Bs[cur ^ 1][(brow0 + 2 * i) * IG_LDB + bcol] = breg[i];
        }
        /* tile kt's table slot is free now (its gather happened last iteration): decode kt+2 */
        if (warp == 0 && kt + 2 < nk) ig_decode(kdec[kt & 1], kt + 2, p, lane);
        cp_async_wait<0>();
        __syncthreads();
    }

    /* epilogue: + bias, convert, store along pixel rows */
    const int g = lane >> 2, t = lane & 3;
    int64_t obase[4][2];
    bool nok[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int64_t n = n0 + wn * 32 + nt * 8 + 2 * t + e;
            nok[nt][e] = n < p.npix;
            int64_t nb = nok[nt][e] ? n / p.P : 0;
            obase[nt][e] = nb * (int64_t)p.cout * p.P + (n - nb * p.P);
        }
    T *y = (T *)p.y;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int m = m0 + wm * 64 + mt * 16 + g + hf * 8;
            if (m >= p.cout) continue;
            float bv = p.has_bias ? ld_dyn(p.bias, p.bias_dtype, m) : 0.0f;
            int64_t mo = (int64_t)m * p.P;
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                float v0 = acc[mt][nt][hf * 2] + bv, v1 = acc[mt][nt][hf * 2 + 1] + bv;
                if (p.y_pair && nok[nt][1]) { /* even pixel, same image: one 32-bit store */
                    *(uint32_t *)(y + obase[nt][0] + mo) = pack2<T>(v0, v1);
                } else {
                    if (nok[nt][0]) y[obase[nt][0] + mo] = from_f32<T>(v0);
                    if (nok[nt][1]) y[obase[nt][1] + mo] = from_f32<T>(v1);
                }
            }
        }
}

int64_t cuda_conv_igemm_blocks(int64_t npix, int64_t cout) {
    return ((npix + IG_BN - 1) / IG_BN) * ((cout + IG_BM - 1) / IG_BM);
}

loco_status cuda_conv_igemm(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_tensor *bias, const loco_conv2d_params *cp, loco_err *err) {
    ig_params p;
    memset(&p, 0, sizeof p);
    p.x = x->data;
    p.w = wdata;
    p.y = y->data;
    p.bias = bias ? bias->data : NULL;
    p.has_bias = bias != NULL;
    p.bias_dtype = bias ? (int)bias->dtype : 0;
    p.cin = (int)x->shape[1];
    p.h = (int)x->shape[2];
    p.wd = (int)x->shape[3];
    p.cout = (int)w->shape[0];
    p.kh = (int)w->shape[2];
    p.kw = (int)w->shape[3];
    p.stride = cp->stride;
    p.pad_t = cp->pad[0];
    p.pad_l = cp->pad[2];
    p.ho = (int)y->shape[2];
    p.wo = (int)y->shape[3];
    p.K = p.cin * p.kh * p.kw;
    p.P = p.ho * p.wo;
    p.npix = x->shape[0] * (int64_t)p.P;
    p.a_vec = p.K % 8 == 0 && cuda_aligned(wdata, 16);
    p.y_pair = p.P % 2 == 0 && cuda_aligned(y->data, 4);
    if (p.npix <= 0 || p.cout <= 0) return LOCO_OK;
    dim3 grid((unsigned)((p.npix + IG_BN - 1) / IG_BN), (unsigned)((p.cout + IG_BM - 1) / IG_BM));
    if (y->dtype == LOCO_F16)
        conv_igemm_kernel<__half><<<grid, IG_THREADS, 0, c->stream>>>(p);
    else if (y->dtype == LOCO_BF16)
        conv_igemm_kernel<__nv_bfloat16><<<grid, IG_THREADS, 0, c->stream>>>(p);
    else
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: the implicit-GEMM kernel takes F16 or BF16, not %s",
                            cuda_dt(y->dtype));
    return cuda_check_launch("conv_igemm_kernel", err);
}
