/* conv.cu: loco_conv2d on the GPU, NCHW. Four routes (conv_route_for says which, and why), and
 * two experimental ones (conv_wgmma.cu, only under LOCO_CUDA_CONV=wgmma; conv_tma.cu, only
 * under LOCO_CUDA_CONV=tma, which also adds the fused conv's sample bias and residual):
 *
 *  - 1x1, stride 1, no padding (ResNet shortcuts, SD1.x attention proj_in/out): one strided
 *    batched cuBLASLt GEMM, y[n] (Cout x HW) = w (Cout x Cin) . x[n] (Cin x HW) for every n.
 *  - the tensor-core implicit GEMM (no im2col buffer, bias fused in its epilogue):
 *    conv_igemm.cu for f16/bf16, conv_igemm_tf32.cu for f32 (TF32 operands, as cuDNN runs
 *    PyTorch's fp32 convs).
 *  - im2col of whole samples (or, for VAE decoders at 1024^2, of
 *    slices of one sample's pixels) into a bounded scratch buffer, then one cuBLASLt GEMM per
 *    chunk (TF32 for f32) writing straight into y. cuBLASLt splits K and picks small tiles
 *    where the implicit kernel would leave most SMs idle. With LOCO_CUDA_IM2COL_OVERLAP=1 the
 *    fills run on a side stream, one chunk ahead of the GEMMs (unmeasured: off by default).
 *  - 3-wide stride-1 convs as strided-batched GEMMs over three shifted copies of the input
 *    rows (conv_rows.cu: a third of im2col's buffer), for f32.
 *  LOCO_CUDA_CONV=implicit|im2col|rows forces one of the last three for every conv that is not 1x1
 *  (benchmarks and tests compare them); LOCO_CUDA_CONV=cudnn (LOCO_CUDA_CONV_F32=cudnn: the f32
 *  convs alone) tries cuDNN first (conv_cudnn.cu, experimental), the route below where it has no plan.
 *
 * In NCHW the per-channel bias runs along the GEMM's n dimension, which cuBLASLt's bias
 * epilogue (per row of D) cannot express, so the GEMM routes add it in one extra pass.
 *
 * cuda_op_conv2d_fused (loco_conv2d_fused: a ResNet block's GroupNorm+SiLU -> conv -> + time
 * embedding / + shortcut) runs the same routes; on the im2col and row-tap routes the GroupNorm is
 * applied by the gather itself (a per-(sample, channel) scale and shift from norm.cu's statistics), and the
 * bias pass also adds the per-sample bias and the residual. */
#include <string.h>

#include "conv_gather.cuh"
#include "cuda_device.h"
#include "side_stream.cuh"

/* col[z][k][pi] (for sample z of the chunk: row-major K x pc) = x[z][ci, oh*st - pt + r,
 * ow*st - pl + s] for output pixel p0 + pi, zero outside the image.
 * Each thread writes V consecutive pixels of one row k as one store (V = 16 bytes' worth when
 * the caller checked that groups of V pixels never straddle an output row and that rows stay
 * 16-byte aligned; V = 1 otherwise). Blocks are 64 pixel groups x 4 rows k, so a row's tap
 * (ci, r, s) is decoded once per thread and reused over the grid-stride loop. The first
 * version (one element per thread, 64-bit divisions, ~100k blocks of 256 for one UNet conv) ran
 * at the rate of the block scheduler, slower than the GEMM it feeds. All per-element index math
 * is 32-bit (the caller checked that one sample's image and a slice fit in int). The kernel only
 * moves data, so it is typed by element size. */
#define IM2COL_TX 64
#define IM2COL_TY 4
template <int BYTES> struct im2col_vec;
template <> struct im2col_vec<2> { typedef uint16_t type; };
template <> struct im2col_vec<4> { typedef uint32_t type; };
template <> struct im2col_vec<16> { typedef uint4 type; };

template <typename U, int V, typename Pro>
__global__ void __launch_bounds__(IM2COL_TX *IM2COL_TY)
    im2col_kernel(U *col, const U *x, int h, int wd, int kh, int kw, int stride, int pt, int pl, int wo, int p0,
                  int pc, int K, int64_t x_sample, int64_t col_sample, Pro pro) {
    typedef typename im2col_vec<V * sizeof(U)>::type VT;
    const U *xs = x + (int64_t)blockIdx.z * x_sample;
    U *cs = col + (int64_t)blockIdx.z * col_sample;
    const int khw = kh * kw, ng = pc / V;
    for (int k = blockIdx.y * IM2COL_TY + threadIdx.y; k < K; k += gridDim.y * IM2COL_TY) {
        const int ci = k / khw, rs = k - ci * khw, r = rs / kw, s = rs - r * kw;
        const U *xc = xs + (int64_t)ci * h * wd;
        VT *row = (VT *)(cs + (int64_t)k * pc);
        pro.row((int)blockIdx.z, ci);
        for (int g = blockIdx.x * IM2COL_TX + threadIdx.x; g < ng; g += gridDim.x * IM2COL_TX) {
            const int pp = p0 + g * V, oh = pp / wo, ow0 = pp - oh * wo;
            const int iy = oh * stride - pt + r;
            union {
                U e[V];
                VT v;
            } u;
            if ((unsigned)iy < (unsigned)h) {
                const U *xr = xc + iy * wd;
#pragma unroll
                for (int v = 0; v < V; v++) {
                    const int ix = (ow0 + v) * stride - pl + s;
                    u.e[v] = (unsigned)ix < (unsigned)wd ? pro(xr[ix]) : U();
                }
            } else {
#pragma unroll
                for (int v = 0; v < V; v++) u.e[v] = U();
            }
            row[g] = u.v;
        }
    }
}

/* The geometry of one conv2d call, as the im2col route needs it, and its optional GroupNorm
 * prologue (norm: cuda_gn_table's [Nb][Cin] table, NULL for a plain conv). */
typedef struct conv_geom {
    int64_t Nb, Cin, H, W, Cout, kh, kw, Wo, P, K;
    size_t es; /* element size */
    loco_dtype dt;
    const loco_conv2d_params *p;
    const float2 *norm;
    int norm_silu;
} conv_geom;

template <typename U, int V, typename Pro>
static void im2col_launch(cudaStream_t stream, void *col, const void *x, int64_t z, const conv_geom *g, int64_t p0,
                          int64_t n, Pro pro) {
    int64_t gx = (n / V + IM2COL_TX - 1) / IM2COL_TX, gy = (g->K + IM2COL_TY - 1) / IM2COL_TY;
    const dim3 grid((unsigned)(gx < 65535 ? gx : 65535), (unsigned)(gy < 65535 ? gy : 65535), (unsigned)z);
    LOCO_LAUNCH(grid, dim3(IM2COL_TX, IM2COL_TY), 0, stream, im2col_kernel<U, V, Pro>)(
        (U *)col, (const U *)x, (int)g->H, (int)g->W, (int)g->kh, (int)g->kw, g->p->stride, g->p->pad[0],
        g->p->pad[2], (int)g->Wo, (int)p0, (int)n, (int)g->K, g->Cin * g->H * g->W, g->K * n, pro);
}

/* The GroupNorm fill for stride 1 and three taps across (every 3x3 conv of the UNets and VAEs),
 * 16-byte rows: a thread gathers the V + 2 inputs its V pixels need for the three taps s of one
 * (ci, r) once, normalises each once and writes the three rows k = (ci, r, 0..2). Why: SiLU
 * costs two MUFU instructions (ex2, rcp) per value, and the per-element fill would pay them for
 * every one of the 9 copies of an input (377 MB of column buffer for SD 1.5's 64x64 level at
 * batch 16: about as long on the H200's 16 MUFU/clock/SM as writing the buffer); here it is
 * (V + 2) / 3V of that, and the gathers drop by the same factor. */
template <typename T>
__global__ void __launch_bounds__(IM2COL_TX *IM2COL_TY)
    im2col_gn3_kernel(T *col, const T *x, int h, int wd, int kh, int pt, int pl, int wo, int p0, int pc, int rows,
                      int64_t x_sample, int64_t col_sample, im2col_group_norm<T> pro) {
    constexpr int V = 16 / sizeof(T);
    const T *xs = x + (int64_t)blockIdx.z * x_sample;
    T *cs = col + (int64_t)blockIdx.z * col_sample;
    const int ng = pc / V;
    for (int cr = blockIdx.y * IM2COL_TY + threadIdx.y; cr < rows; cr += gridDim.y * IM2COL_TY) {
        const int ci = cr / kh, r = cr - ci * kh; /* rows k = 3 cr + s */
        const T *xc = xs + (int64_t)ci * h * wd;
        uint4 *row0 = (uint4 *)(cs + (int64_t)(3 * cr) * pc);
        pro.row((int)blockIdx.z, ci);
        for (int g = blockIdx.x * IM2COL_TX + threadIdx.x; g < ng; g += gridDim.x * IM2COL_TX) {
            const int pp = p0 + g * V, oh = pp / wo, ow0 = pp - oh * wo;
            const int iy = oh - pt + r;
            T e[V + 2];
            if ((unsigned)iy < (unsigned)h) {
                const T *xr = xc + iy * wd;
#pragma unroll
                for (int j = 0; j < V + 2; j++) {
                    const int ix = ow0 - pl + j;
                    e[j] = (unsigned)ix < (unsigned)wd ? pro(xr[ix]) : T();
                }
            } else {
#pragma unroll
                for (int j = 0; j < V + 2; j++) e[j] = T();
            }
#pragma unroll
            for (int s = 0; s < 3; s++) row0[(int64_t)s * ng + g] = tap_vector<T>(e, s);
        }
    }
}

/* The fill with the GroupNorm prologue, typed by the real element type T. */
template <typename T>
static void im2col_norm_launch(cudaStream_t stream, void *col, const void *x, int64_t nb, int64_t z,
                               const conv_geom *g, int64_t p0, int64_t n, int v16) {
    im2col_group_norm<T> pro;
    pro.table = g->norm + nb * g->Cin;
    pro.cin = (int)g->Cin;
    pro.silu = g->norm_silu;
    pro.scale = pro.shift = 0.0f;
    if (v16 && g->kw == 3 && g->p->stride == 1) {
        const int64_t rows = g->Cin * g->kh, gx = (n / (16 / sizeof(T)) + IM2COL_TX - 1) / IM2COL_TX,
                      gy = (rows + IM2COL_TY - 1) / IM2COL_TY;
        const dim3 grid((unsigned)(gx < 65535 ? gx : 65535), (unsigned)(gy < 65535 ? gy : 65535), (unsigned)z);
        LOCO_LAUNCH(grid, dim3(IM2COL_TX, IM2COL_TY), 0, stream, im2col_gn3_kernel<T>)(
            (T *)col, (const T *)x, (int)g->H, (int)g->W, (int)g->kh, g->p->pad[0], g->p->pad[2], (int)g->Wo, (int)p0,
            (int)n, (int)rows, g->Cin * g->H * g->W, g->K * n, pro);
    } else if (v16)
        im2col_launch<T, 16 / sizeof(T)>(stream, col, x, z, g, p0, n, pro);
    else
        im2col_launch<T, 1>(stream, col, x, z, g, p0, n, pro);
}

/* im2col of output pixels [p0, p0 + n) of z samples, the first of them sample nb, whose image
 * starts at xs, into col, on `stream`. */
static loco_status col_fill(cudaStream_t stream, void *col, const char *xs, int64_t nb, int64_t z,
                            const conv_geom *g, int64_t p0, int64_t n, loco_err *err) {
    /* 16-byte groups when no group of V pixels straddles an output row (p0 and n are multiples
     * of pc's 64 or the whole image) */
    const int v16 = g->Wo % 8 == 0 && p0 % 8 == 0 && n % 8 == 0;
    if (g->norm) {
        CUDA_DISPATCH(g->dt, T, "conv2d", err, im2col_norm_launch<T>(stream, col, xs, nb, z, g, p0, n, v16));
    } else if (g->es == 2 && v16) {
        im2col_launch<uint16_t, 8>(stream, col, xs, z, g, p0, n, im2col_copy());
    } else if (g->es == 2) {
        im2col_launch<uint16_t, 1>(stream, col, xs, z, g, p0, n, im2col_copy());
    } else if (v16) {
        im2col_launch<uint32_t, 4>(stream, col, xs, z, g, p0, n, im2col_copy());
    } else {
        im2col_launch<uint32_t, 1>(stream, col, xs, z, g, p0, n, im2col_copy());
    }
    return cuda_check_launch("im2col_kernel", err);
}

/* The GEMM of one filled chunk, on the main stream: per sample, D (n x Cout, ld P) = col
 * (n x K, ld n) . w (K x Cout, ld K), all column-major; the z samples are one strided batch
 * (weights shared, batch stride 0). ys points at the chunk's first sample of y. */
static loco_status col_gemm(cuda_impl *c, const void *col, const void *wp, char *ys, int64_t z, const conv_geom *g,
                            loco_dtype dt, int64_t p0, int64_t n, loco_err *err) {
    cuda_gemm gm;
    memset(&gm, 0, sizeof gm);
    gm.m = n;
    gm.n = g->Cout;
    gm.k = g->K;
    gm.lda = n;
    gm.ldb = g->K;
    gm.ldd = g->P;
    gm.batch = (int)z;
    gm.stride_a = g->K * n;
    gm.stride_b = 0;
    gm.stride_d = g->Cout * g->P;
    gm.ab_dtype = dt;
    gm.d_dtype = dt;
    gm.a = col;
    gm.b = wp;
    gm.d = ys + (size_t)p0 * g->es;
    gm.alpha = 1.0f;
    return cuda_gemm_run(c, &gm, err);
}

/* Whole-sample chunks with the im2col of chunk i + 1 running on the side stream while chunk
 * i's GEMM runs on the main one (LOCO_CUDA_IM2COL_OVERLAP=1; side_stream.cuh): two buffers of nz
 * samples alternate. One UNet 3x3 conv spends about a quarter of its time in im2col. */
static loco_status conv_im2col_overlap(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const void *wp,
                                       const conv_geom *g, int64_t nz, loco_err *err) {
    const size_t sample_col = (size_t)(g->K * g->P) * g->es;
    void *col[2] = {NULL, NULL};
    int forked = 0;
    loco_status st = cuda_alloc_get(c, sample_col * (size_t)nz, &col[0], err);
    if (st == LOCO_OK) st = cuda_alloc_get(c, sample_col * (size_t)nz, &col[1], err);
    if (st == LOCO_OK) st = side_begin(c, &forked, err);
    for (int64_t nb = 0, i = 0; nb < g->Nb && st == LOCO_OK; nb += nz, i++) {
        const int64_t z = g->Nb - nb < nz ? g->Nb - nb : nz;
        st = side_fill_may_start(c, i, err);
        if (st == LOCO_OK)
            st = col_fill(c->aux, col[i & 1], (const char *)x->data + (size_t)(nb * g->Cin * g->H * g->W) * g->es, nb,
                          z, g, 0, g->P, err);
        if (st == LOCO_OK) st = side_fill_done(c, i, err);
        if (st == LOCO_OK)
            st = col_gemm(c, col[i & 1], wp, (char *)y->data + (size_t)(nb * g->Cout * g->P) * g->es, z, g, y->dtype,
                          0, g->P, err);
        if (st == LOCO_OK) st = side_gemm_done(c, i, err);
    }
    st = side_end(c, forked, st, err);
    cuda_alloc_put(c, col[0]);
    cuda_alloc_put(c, col[1]);
    return st;
}

/* im2col + one cuBLASLt GEMM per chunk. A chunk is either several whole samples (pc == P: one
 * batched GEMM over them, weights shared with batch stride 0) or a slice of one sample's
 * pixels (VAE decoders at 1024^2, where one sample's buffer alone exceeds the budget). */
static loco_status conv_im2col(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                               const void *wp, const loco_conv2d_params *p, const float2 *norm, int norm_silu,
                               loco_err *err) {
    conv_geom g;
    g.Nb = x->shape[0];
    g.Cin = x->shape[1];
    g.H = x->shape[2];
    g.W = x->shape[3];
    g.Cout = w->shape[0];
    g.kh = w->shape[2];
    g.kw = w->shape[3];
    g.Wo = y->shape[3];
    g.P = y->shape[2] * g.Wo;
    g.K = g.Cin * g.kh * g.kw;
    g.es = loco_dtype_size(y->dtype);
    g.dt = y->dtype;
    g.p = p;
    g.norm = norm;
    g.norm_silu = norm_silu;
    if (g.H * g.W >= ((int64_t)1 << 31) || g.P >= ((int64_t)1 << 31) || g.K >= ((int64_t)1 << 31))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: image of %lldx%lld (%lld taps) is too large",
                            (long long)g.H, (long long)g.W, (long long)g.K);
    int64_t pc = (int64_t)(c->im2col_budget / ((size_t)g.K * g.es));
    if (pc > 64) pc = pc / 64 * 64; /* slices start on aligned pixels */
    if (pc < 1) pc = 1;
    if (pc > g.P) pc = g.P;
    if (pc * g.K >= ((int64_t)1 << 31)) pc = (((int64_t)1 << 31) - 1) / g.K; /* row offsets stay in int64, pi in int */
    int64_t nz = pc == g.P ? (int64_t)(c->im2col_budget / ((size_t)(g.K * g.P) * g.es)) : 1; /* samples per chunk */
    if (nz < 1) nz = 1;
    if (nz > g.Nb) nz = g.Nb;
    if (nz > 65535) nz = 65535;
    if (c->aux && pc == g.P && nz >= 2) {
        /* two buffers of nz / 2 samples within the one budget (a budget of a single sample
         * stays on the serial path), and at least two chunks to overlap */
        int64_t half = nz / 2;
        if (half > (g.Nb + 1) / 2) half = (g.Nb + 1) / 2;
        return conv_im2col_overlap(c, y, x, wp, &g, half, err);
    }
    void *col = NULL;
    CUDA_TRY(cuda_alloc_get(c, (size_t)(g.K * pc * nz) * g.es, &col, err));
    loco_status st = LOCO_OK;
    for (int64_t nb = 0; nb < g.Nb && st == LOCO_OK; nb += nz) {
        const int64_t z = g.Nb - nb < nz ? g.Nb - nb : nz;
        const char *xs = (const char *)x->data + (size_t)(nb * g.Cin * g.H * g.W) * g.es;
        char *ys = (char *)y->data + (size_t)(nb * g.Cout * g.P) * g.es;
        for (int64_t p0 = 0; p0 < g.P && st == LOCO_OK; p0 += pc) {
            const int64_t n = g.P - p0 < pc ? g.P - p0 : pc;
            st = col_fill(c->stream, col, xs, nb, z, &g, p0, n, err);
            if (st == LOCO_OK) st = col_gemm(c, col, wp, ys, z, &g, y->dtype, p0, n, err);
        }
    }
    cuda_alloc_put(c, col);
    return st;
}

/* 1x1, stride 1, no padding: per sample y[n] (Cout x P) = w (Cout x Cin) . x[n] (Cin x P); the
 * samples are one strided-batched GEMM with the weights shared (batch stride 0). */
static loco_status conv_pointwise(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                  const void *wp, loco_err *err) {
    const int64_t Nb = x->shape[0], Cin = x->shape[1], P = x->shape[2] * x->shape[3], Cout = w->shape[0];
    const size_t es = loco_dtype_size(y->dtype);
    for (int64_t nb = 0; nb < Nb; nb += 65535) {
        const int64_t z = Nb - nb < 65535 ? Nb - nb : 65535;
        /* D (P x Cout, ld P) = x[nb] (P x Cin, ld P) . w (Cin x Cout, ld Cin), column-major */
        cuda_gemm g;
        memset(&g, 0, sizeof g);
        g.m = P;
        g.n = Cout;
        g.k = Cin;
        g.lda = P;
        g.ldb = Cin;
        g.ldd = P;
        g.batch = (int)z;
        g.stride_a = Cin * P;
        g.stride_b = 0;
        g.stride_d = Cout * P;
        g.ab_dtype = y->dtype;
        g.d_dtype = y->dtype;
        g.a = (const char *)x->data + (size_t)(nb * Cin * P) * es;
        g.b = wp;
        g.d = (char *)y->data + (size_t)(nb * Cout * P) * es;
        g.alpha = 1.0f;
        CUDA_TRY(cuda_gemm_run(c, &g, err));
    }
    return LOCO_OK;
}

typedef enum conv_route { CONV_POINTWISE, CONV_IMPLICIT, CONV_IM2COL, CONV_ROWS } conv_route;

/* The route for a conv that is not 1x1 (LOCO_CUDA_CONV=wgmma takes conv_wgmma.cu before this
 * where that kernel applies) (measured on an H200, bench/gpu/runs/2026-11-27-h200-run3,
 * fp16 unless said): im2col + cuBLASLt wins wherever one sample's im2col buffer is moderate,
 * because cuBLASLt's wgmma GEMMs run at 250-510 TFLOP/s on the UNet's shapes against 190-290
 * for the mma.sync implicit kernel (320ch 64x64 x16: 0.42 vs 0.45 ms, 1280ch 16x16 x16: 0.24
 * vs 0.52 ms); the implicit kernel wins at large images, where the buffer's traffic dominates
 * (VAE 256ch 256x256: 0.27 vs 0.32 ms, 128ch 512x512: 0.28 vs 0.59 ms), for tiny K (the UNet's
 * conv_in, K = 36) and for few output channels (a GEMM with n = 3 or 4 runs cuBLASLt at a
 * crawl). Otherwise implicit only when its 128x128 tiles give every SM a block.
 * F32 (SD-XL's upcast VAE, TF32 tensor cores) takes the row-tap GEMMs (conv_rows.cu) wherever
 * they apply with K >= 128 and Cout >= 64: there both earlier routes are bound by traffic
 * (run 6: the TF32 implicit kernel at 84-96 TFLOP/s at 1024^2, im2col at 146-205 up to 512^2),
 * and the row taps move a third of im2col's bytes into the same cuBLASLt GEMMs. (Chosen from
 * that arithmetic, session 7, without a GPU: op_bench's "@rows" rows time it against both.)
 * Before it, f32 took im2col up to 512x512 and the implicit TF32 kernel above. f16/bf16 take
 * it only when forced (LOCO_CUDA_CONV=rows): at the UNet's widths (32-128 pixels) its GEMMs
 * are thin. LOCO_CUDA_CONV=implicit|im2col|rows forces a route where it applies. */
static conv_route conv_route_for(const cuda_impl *c, loco_dtype dt, int64_t n, int64_t P, int64_t K, int64_t Cout,
                                 int fits_int, int rows_ok) {
    if (!fits_int || c->conv_algo == CUDA_CONV_IM2COL) return CONV_IM2COL;
    if (c->conv_algo == CUDA_CONV_IMPLICIT) return CONV_IMPLICIT;
    if (rows_ok && (c->conv_algo == CUDA_CONV_ROWS || (dt == LOCO_F32 && K >= 128 && Cout >= 64))) return CONV_ROWS;
    const int64_t im2col_max_pixels = dt == LOCO_F32 ? 512 * 512 : 32768;
    if (K >= 128 && Cout >= 64 && P <= im2col_max_pixels) return CONV_IM2COL;
    return cuda_conv_igemm_blocks(n * P, Cout) >= (int64_t)c->sm_count ? CONV_IMPLICIT : CONV_IM2COL;
}

/* One conv2d call's route and the weights in y's dtype, decided once (conv_plan_make) and run
 * by conv_run; the fused entry point asks the plan whether the GroupNorm can ride along. */
typedef struct conv_plan {
    conv_route route;
    int wgmma;         /* conv_wgmma.cu takes it (LOCO_CUDA_CONV=wgmma) */
    int tma;           /* conv_tma.cu takes it (LOCO_CUDA_CONV=tma) */
    int cudnn;         /* cuDNN is tried first (LOCO_CUDA_CONV=cudnn, LOCO_CUDA_CONV_F32=cudnn; conv_cudnn.cu) */
    const void *wp;    /* w as y's dtype */
    void *w_tmp;       /* cuda_alloc_put when done */
} conv_plan;

static loco_status conv_plan_make(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                  const loco_tensor *bias, const loco_conv2d_params *p, conv_plan *pl,
                                  loco_err *err) {
    memset(pl, 0, sizeof *pl);
    if (x->dtype != y->dtype || !cuda_is_act_dtype(y->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: input %s, output %s (both must be the activation "
                            "dtype)", cuda_dt(x->dtype), cuda_dt(y->dtype));
    if (bias && !cuda_is_act_dtype(bias->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: bias dtype %s", cuda_dt(bias->dtype));
    const int64_t Cin = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Cout = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    const int64_t P = y->shape[2] * y->shape[3];
    const int pointwise =
        kh == 1 && kw == 1 && p->stride == 1 && !p->pad[0] && !p->pad[1] && !p->pad[2] && !p->pad[3];
    /* tests: under LOCO_CUDA_CUDNN_STRICT=1 a conv the cuDNN route was asked to take is taken,
     * or the call says why not (so a test never checks our route under cuDNN's name) */
    if (!pointwise && c->cudnn_strict && cuda_conv_cudnn_asked(c, y->dtype) && !cuda_conv_cudnn_applies(c, y, x, w))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: cuDNN does not take this conv (%s, one sample of "
                            "%lld x %lldx%lld elements) and LOCO_CUDA_CUDNN_STRICT=1 is set", cuda_dt(y->dtype),
                            (long long)Cin, (long long)H, (long long)W);
    CUDA_TRY(cuda_as_dtype(c, w, y->dtype, &pl->wp, &pl->w_tmp, err));
    const int fits_int = Cin * H * W < ((int64_t)1 << 31) && P < ((int64_t)1 << 31) &&
                         Cin * kh * kw < ((int64_t)1 << 31) && Cout < ((int64_t)1 << 31);
    pl->route = pointwise ? CONV_POINTWISE
                          : conv_route_for(c, y->dtype, x->shape[0], P, Cin * kh * kw, Cout, fits_int,
                                           fits_int && cuda_conv_rows_applies(c, y, x, w, p));
    pl->wgmma = pl->route != CONV_POINTWISE && c->conv_algo == CUDA_CONV_WGMMA && fits_int &&
                cuda_conv_wgmma_fits(c, y, x, w, pl->wp, p);
    pl->tma = pl->route != CONV_POINTWISE && c->conv_algo == CUDA_CONV_TMA && fits_int &&
              cuda_conv_tma_fits(c, y, x, w, pl->wp, p);
    pl->cudnn = pl->route != CONV_POINTWISE && cuda_conv_cudnn_applies(c, y, x, w);
    return LOCO_OK;
}

/* The GroupNorm prologue runs inside this plan's convolution (only the im2col and row-tap
 * gathers and conv_tma.cu's channels-last pass have one). */
static int conv_plan_takes_norm(const cuda_impl *c, const conv_plan *pl) {
    return c->norm_gather && !pl->wgmma && !pl->cudnn &&
           (pl->tma || pl->route == CONV_IM2COL || pl->route == CONV_ROWS);
}

/* Runs the plan; *bias_done says whether the route added the bias itself. norm (with
 * norm_silu) is cuda_gn_table's table when conv_plan_takes_norm, else NULL. */
static loco_status conv_run(cuda_impl *c, const conv_plan *pl, loco_tensor *y, const loco_tensor *x,
                            const loco_tensor *w, const loco_tensor *bias, const loco_conv2d_params *p,
                            const float2 *norm, int norm_silu, int *bias_done, loco_err *err) {
    if (pl->cudnn) {
        /* a shape cuDNN has no plan for (or refuses, or whose workspace does not fit) runs the
         * route below, which rewrites y */
        *bias_done = 0;
        const loco_status st = cuda_conv_cudnn(c, y, x, w, pl->wp, p, err);
        if ((st != LOCO_EUNSUPPORTED && st != LOCO_EDEVICE_OOM) || c->cudnn_strict) return st;
        loco_err_clear(err);
    }
    *bias_done = 1;
    if (pl->wgmma) return cuda_conv_wgmma(c, y, x, w, pl->wp, bias, p, err);
    if (pl->tma) return cuda_conv_tma(c, y, x, w, pl->wp, bias, NULL, NULL, norm, norm_silu, err);
    if (pl->route == CONV_IMPLICIT && y->dtype == LOCO_F32) {
        loco_tensor wv = *w; /* the weights as y's dtype (converted by conv_plan_make when they were not) */
        wv.data = (void *)pl->wp;
        wv.dtype = y->dtype;
        return cuda_conv_igemm_tf32(c, y, x, &wv, bias, p, err);
    }
    if (pl->route == CONV_IMPLICIT) return cuda_conv_igemm(c, y, x, w, pl->wp, bias, p, err);
    *bias_done = 0;
    if (pl->route == CONV_POINTWISE) return conv_pointwise(c, y, x, w, pl->wp, err);
    if (pl->route == CONV_ROWS) {
        /* A cuBLASLt without an algorithm for the overlapping batches (not seen; a guard) falls
         * back to im2col, which takes the same GroupNorm table and rewrites all of y. */
        const loco_status st = cuda_conv_rows(c, y, x, w, pl->wp, p, norm, norm_silu, err);
        if (st != LOCO_EUNSUPPORTED) return st;
        loco_err_clear(err);
    }
    return conv_im2col(c, y, x, w, pl->wp, p, norm, norm_silu, err);
}

extern "C" loco_status cuda_op_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    if (loco_tensor_numel(y) <= 0) return LOCO_OK;
    conv_plan pl;
    CUDA_TRY(conv_plan_make(c, y, x, w, bias, p, &pl, err));
    int bias_done = 0;
    loco_status st = conv_run(c, &pl, y, x, w, bias, p, NULL, 0, &bias_done, err);
    if (st == LOCO_OK && bias && !bias_done)
        st = cuda_channel_bias(c, y->data, y->data, y->dtype, bias->data, bias->dtype, loco_tensor_numel(y),
                               y->shape[2] * y->shape[3], w->shape[0], err);
    cuda_alloc_put(c, pl.w_tmp);
    return st;
}

/* GroupNorm(+SiLU) -> conv -> + bias + sample bias + residual (backend.h). On the im2col route
 * the GroupNorm is a (scale, shift) table applied by the gather: x is read by the statistics
 * pass and the gather, never written normalised (the unfused pair reads it twice more and
 * writes it once). Elsewhere the normalised x goes through a scratch buffer. The bias (when
 * the route did not add it), sample bias and residual are one pass over y, the pass the bias
 * alone needed before. */
extern "C" loco_status cuda_op_conv2d_fused(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                            const loco_tensor *w, const loco_tensor *bias,
                                            const loco_conv2d_params *p, const loco_conv2d_fusion *f,
                                            loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    const int64_t numel = loco_tensor_numel(y);
    if (numel <= 0) return LOCO_OK;
    /* (backend_ops.c checked sample_bias and residual against y's dtype) */
    const loco_tensor *sb = f->sample_bias, *res = f->residual;
    conv_plan pl;
    CUDA_TRY(conv_plan_make(c, y, x, w, bias, p, &pl, err));
    loco_status st = LOCO_OK;
    void *scratch = NULL; /* the table, or the normalised x */
    const float2 *table = NULL;
    loco_tensor normed = *x;
    if (f->norm_gamma && conv_plan_takes_norm(c, &pl)) {
        st = cuda_alloc_get(c, (size_t)(x->shape[0] * x->shape[1]) * sizeof(float2), &scratch, err);
        if (st == LOCO_OK)
            st = cuda_gn_table(c, x, f->norm_groups, f->norm_gamma, f->norm_beta, f->norm_eps, (float2 *)scratch,
                               err);
        table = (const float2 *)scratch;
    } else if (f->norm_gamma) {
        st = cuda_alloc_get(c, loco_tensor_nbytes(x), &scratch, err);
        normed.data = scratch;
        if (st == LOCO_OK)
            st = cuda_op_group_norm(be, &normed, x, f->norm_groups, f->norm_gamma, f->norm_beta, f->norm_eps,
                                    f->norm_silu, err);
    }
    int bias_done = 0;
    /* conv_tma.cu: all that follows the conv in its epilogue */
    if (st == LOCO_OK && pl.tma && (!res || cuda_aligned(res->data, 16))) {
        st = cuda_conv_tma(c, y, &normed, w, pl.wp, bias, sb, res, table, f->norm_silu, err);
        bias_done = 1, sb = res = NULL;
    } else if (st == LOCO_OK) {
        st = conv_run(c, &pl, y, &normed, w, bias, p, table, f->norm_silu, &bias_done, err);
    }
    cuda_alloc_put(c, scratch);
    const loco_tensor *b = bias_done ? NULL : bias;
    if (st == LOCO_OK && (b || sb || res))
        st = cuda_channel_bias_ex(c, y->data, y->data, y->dtype, b ? b->data : NULL, b ? b->dtype : LOCO_F32,
                                  sb ? sb->data : NULL, sb ? sb->dtype : LOCO_F32, res ? res->data : NULL, numel,
                                  y->shape[2] * y->shape[3], w->shape[0], err);
    cuda_alloc_put(c, pl.w_tmp);
    return st;
}
