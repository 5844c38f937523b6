/* conv_rows.cu: stride-1 convolutions three taps wide with "same" width padding (every 3x3 conv
 * of the UNets and VAEs) as one strided-batched cuBLASLt GEMM per chunk of output rows, over a
 * buffer three times the input instead of im2col's nine.
 *
 * Why: for the f32 VAE of SD-XL at 1024^2 (TF32 tensor cores, as cuDNN runs PyTorch's fp32
 * convs) im2col writes and reads 9 * Cin * 4 bytes per output pixel, 36 times the input, and
 * its GEMMs wait on that traffic; the TF32 implicit kernel runs at 84-96 TFLOP/s there (run 6:
 * 0.3 s of the 0.68 s 8-image decode in the 1024^2 convs). Here the buffer is 3 * Cin * 4 bytes
 * per pixel and the GEMM is a plain cuBLASLt one.
 *
 * The taps buffer of a chunk holds, for its padded rows hh (output rows oh0 .. oh0 + R - 1 read
 * input rows oh0 - pt .. oh0 - pt + R + kh - 2):
 *     taps[hh][s][ci][w] = x[ci][oh0 - pt + hh][w + s - 1]       (0 outside the image)
 * so the (kh * 3 * Cin) x Wo operand of output row oh0 + j, row k = (r, s, ci), is
 *     taps[j + r][s][ci][w] = taps_flat[j * 3 Cin Wo + k * Wo + w]
 * a matrix with leading dimension Wo starting one padded row (3 Cin Wo elements) after the
 * previous output row's: the rows of a chunk are one strided batch whose operands overlap (each
 * padded row serves kh output rows, read from L2 by neighbouring batches). In cuBLASLt's
 * column-major terms, per output row:
 *     D (Wo x Cout, ld Ho Wo) = taps (Wo x K, ld Wo) . w' (K x Cout, ld K),  K = kh * 3 * Cin,
 * with D at y + oh * Wo (batch stride Wo) and w' the weights reordered to w'[co][r][s][ci]
 * (rows_weights_kernel, once per call: a few MB against the conv's GB). The GroupNorm prologue
 * of the fused conv is applied by the fill, as by im2col's (conv_gather.cuh); the bias is the
 * caller's extra pass, as on the im2col route. */
#include <string.h>

#include "conv_gather.cuh"
#include "cuda_device.h"
#include "side_stream.cuh"

#define ROWS_TX 64
#define ROWS_TY 4

/* One thread: V = 16 bytes' worth of consecutive w of one (hh, ci), read once (a 16-byte load
 * and its two neighbours), mapped once by the prologue, written as the three taps s. The caller
 * checked that x is 16-byte aligned and Wo = W a multiple of V (so every row is), that one
 * sample's image fits in int, and that kh * cin < 2^30 (nrows * cin stays below Cin * (H + the
 * vertical padding), within int for any shape the image check lets through). */
template <typename T, typename Pro>
__global__ void __launch_bounds__(ROWS_TX *ROWS_TY)
    rows_fill_kernel(T *taps, const T *x, int h, int wd, int cin, int iy0, int nrows, Pro pro) {
    constexpr int V = 16 / sizeof(T);
    const int ng = wd / V, rows = nrows * cin;
    const int64_t s_step = (int64_t)cin * wd; /* between the taps s of one (hh, ci) */
    for (int hc = blockIdx.y * ROWS_TY + threadIdx.y; hc < rows; hc += gridDim.y * ROWS_TY) {
        const int hh = hc / cin, ci = hc - hh * cin, iy = iy0 + hh;
        const bool inside = (unsigned)iy < (unsigned)h;
        const T *xr = x + ((int64_t)ci * h + (inside ? iy : 0)) * wd;
        T *out = taps + ((int64_t)hh * 3 * cin + ci) * wd;
        pro.row(0, ci);
        for (int g = blockIdx.x * ROWS_TX + threadIdx.x; g < ng; g += gridDim.x * ROWS_TX) {
            const int w0 = g * V;
            T e[V + 2]; /* x[w0 - 1 .. w0 + V] */
            if (inside) {
                union {
                    uint4 v;
                    T e[V];
                } c;
                c.v = *(const uint4 *)(xr + w0);
                e[0] = w0 > 0 ? pro(xr[w0 - 1]) : T();
#pragma unroll
                for (int v = 0; v < V; v++) e[1 + v] = pro(c.e[v]);
                e[V + 1] = w0 + V < wd ? pro(xr[w0 + V]) : T();
            } else {
#pragma unroll
                for (int v = 0; v < V + 2; v++) e[v] = T();
            }
#pragma unroll
            for (int s = 0; s < 3; s++) *(uint4 *)(out + s * s_step + w0) = tap_vector<T>(e, s);
        }
    }
}

/* wr[co][r][s][ci] = w[co][ci][r][s] (kw = 3): the weights in the taps' row order k. */
template <typename U>
__global__ void rows_weights_kernel(U *wr, const U *w, int cin, int kh, int64_t n) {
    const int64_t K = (int64_t)cin * kh * 3;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t co = i / K;
        const int k = (int)(i - co * K), r = k / (3 * cin), rem = k - r * 3 * cin, s = rem / cin, ci = rem - s * cin;
        wr[i] = w[co * K + ((int64_t)ci * kh + r) * 3 + s];
    }
}

/* Bytes of one padded row of the taps buffer. */
static size_t rows_row_bytes(int64_t cin, int64_t wd, size_t es) { return (size_t)(3 * cin * wd) * es; }

int cuda_conv_rows_applies(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                           const loco_conv2d_params *p) {
    const int64_t Cin = x->shape[1], H = x->shape[2], W = x->shape[3], kh = w->shape[2], kw = w->shape[3];
    const size_t es = loco_dtype_size(y->dtype);
    if (p->stride != 1 || kw != 3 || p->pad[2] != 1 || p->pad[3] != 1 || y->shape[3] != W) return 0;
    if (W % (int64_t)(16 / es) != 0 || !cuda_aligned(x->data, 16)) return 0; /* 16-byte rows (x may be a view) */
    if (Cin * H * W >= ((int64_t)1 << 31) || kh * 3 * Cin >= ((int64_t)1 << 31) || y->shape[2] >= 65536) return 0;
    /* one output row's kh padded rows fit the buffer budget, and their (hh, ci) pairs an int */
    return (size_t)kh * rows_row_bytes(Cin, W, es) <= c->im2col_budget && kh * Cin < ((int64_t)1 << 30);
}

template <typename T>
static void rows_fill_launch(cudaStream_t stream, void *taps, const void *x, const loco_tensor *xt, int iy0, int nrows,
                             const float2 *norm, int norm_silu) {
    const int cin = (int)xt->shape[1], h = (int)xt->shape[2], wd = (int)xt->shape[3];
    const int64_t gx = (wd / (16 / (int)sizeof(T)) + ROWS_TX - 1) / ROWS_TX,
                  gy = ((int64_t)nrows * cin + ROWS_TY - 1) / ROWS_TY;
    const dim3 grid((unsigned)gx, (unsigned)(gy < 65535 ? gy : 65535));
    if (norm) {
        im2col_group_norm<T> pro;
        pro.table = norm;
        pro.cin = cin;
        pro.silu = norm_silu;
        pro.scale = pro.shift = 0.0f;
        LOCO_LAUNCH(grid, dim3(ROWS_TX, ROWS_TY), 0, stream, rows_fill_kernel<T, im2col_group_norm<T>>)(
            (T *)taps, (const T *)x, h, wd, cin, iy0, nrows, pro);
    } else if (sizeof(T) == 2) {
        LOCO_LAUNCH(grid, dim3(ROWS_TX, ROWS_TY), 0, stream, rows_fill_kernel<uint16_t, im2col_copy>)(
            (uint16_t *)taps, (const uint16_t *)x, h, wd, cin, iy0, nrows, im2col_copy());
    } else {
        LOCO_LAUNCH(grid, dim3(ROWS_TX, ROWS_TY), 0, stream, rows_fill_kernel<uint32_t, im2col_copy>)(
            (uint32_t *)taps, (const uint32_t *)x, h, wd, cin, iy0, nrows, im2col_copy());
    }
}

static loco_status rows_fill(cudaStream_t stream, void *taps, const void *x, const loco_tensor *xt, int iy0, int nrows,
                             const float2 *norm, int norm_silu, loco_err *err) {
    CUDA_DISPATCH(xt->dtype, T, "conv2d", err, rows_fill_launch<T>(stream, taps, x, xt, iy0, nrows, norm, norm_silu));
    return cuda_check_launch("rows_fill_kernel", err);
}

/* The weights reordered into a buffer from the allocator (*wr, cuda_alloc_put when done). */
static loco_status rows_weights(cuda_impl *c, const void *wp, const loco_tensor *w, size_t es, void **wr,
                                loco_err *err) {
    const int64_t n = loco_tensor_numel(w);
    CUDA_TRY(cuda_alloc_get(c, (size_t)n * es, wr, err));
    const int64_t blocks = (n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096;
    if (es == 2)
        LOCO_LAUNCH((unsigned)blocks, 256, 0, c->stream, rows_weights_kernel<uint16_t>)(
            (uint16_t *)*wr, (const uint16_t *)wp, (int)w->shape[1], (int)w->shape[2], n);
    else
        LOCO_LAUNCH((unsigned)blocks, 256, 0, c->stream, rows_weights_kernel<uint32_t>)(
            (uint32_t *)*wr, (const uint32_t *)wp, (int)w->shape[1], (int)w->shape[2], n);
    const loco_status st = cuda_check_launch("rows_weights_kernel", err);
    if (st != LOCO_OK) {
        cuda_alloc_put(c, *wr);
        *wr = NULL;
    }
    return st;
}

/* Output rows [oh0, oh0 + nrows) of one sample, from a filled taps buffer. */
static loco_status rows_gemm(cuda_impl *c, const void *taps, const void *wr, char *ys, int64_t oh0, int64_t nrows,
                             int64_t Cin, int64_t kh, int64_t Wo, int64_t P, int64_t Cout, loco_dtype dt,
                             loco_err *err) {
    const size_t es = loco_dtype_size(dt);
    cuda_gemm gm;
    memset(&gm, 0, sizeof gm);
    gm.m = Wo;
    gm.n = Cout;
    gm.k = kh * 3 * Cin;
    gm.lda = Wo;
    gm.ldb = gm.k;
    gm.ldd = P;
    gm.batch = (int)nrows;
    gm.stride_a = 3 * Cin * Wo; /* one padded row further: the operands overlap */
    gm.stride_b = 0;
    gm.stride_d = Wo;
    gm.ab_dtype = dt;
    gm.d_dtype = dt;
    gm.a = taps;
    gm.b = wr;
    gm.d = ys + (size_t)(oh0 * Wo) * es;
    gm.alpha = 1.0f;
    return cuda_gemm_run(c, &gm, err);
}

/* Chunks of output rows, sample by sample; with LOCO_CUDA_IM2COL_OVERLAP=1 (c->aux) the fill of
 * chunk i + 1 runs on the side stream beside chunk i's GEMM, in two buffers of half the budget
 * (side_stream.cuh). */
loco_status cuda_conv_rows(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w, const void *wp,
                           const loco_conv2d_params *p, const float2 *norm, int norm_silu, loco_err *err) {
    const int64_t Nb = x->shape[0], Cin = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Cout = w->shape[0], kh = w->shape[2], Ho = y->shape[2], P = Ho * W;
    const size_t es = loco_dtype_size(y->dtype), row_bytes = rows_row_bytes(Cin, W, es);
    int overlap = c->aux != NULL;
    int64_t R = (int64_t)(c->im2col_budget / (overlap ? 2 : 1) / row_bytes) - (kh - 1); /* output rows per chunk */
    if (R < 1 && overlap) {
        overlap = 0; /* half the budget holds no chunk: serial in the whole of it */
        R = (int64_t)(c->im2col_budget / row_bytes) - (kh - 1);
    }
    if (R > Ho) R = Ho;
    if (R < 1) R = 1; /* cuda_conv_rows_applies checked that one fits */
    const size_t taps_bytes = (size_t)(R + kh - 1) * row_bytes;
    void *wr = NULL, *taps[2] = {NULL, NULL};
    int forked = 0;
    CUDA_TRY(rows_weights(c, wp, w, es, &wr, err));
    loco_status st = cuda_alloc_get(c, taps_bytes, &taps[0], err);
    if (st == LOCO_OK && overlap) st = cuda_alloc_get(c, taps_bytes, &taps[1], err);
    if (st == LOCO_OK && overlap) st = side_begin(c, &forked, err);
    cudaStream_t fill_stream = overlap ? c->aux : c->stream;
    int64_t i = 0; /* chunk index over the samples */
    for (int64_t nb = 0; nb < Nb && st == LOCO_OK; nb++) {
        const char *xs = (const char *)x->data + (size_t)(nb * Cin * H * W) * es;
        char *ys = (char *)y->data + (size_t)(nb * Cout * P) * es;
        const float2 *ns = norm ? norm + nb * Cin : NULL;
        for (int64_t oh0 = 0; oh0 < Ho && st == LOCO_OK; oh0 += R, i++) {
            const int64_t nr = Ho - oh0 < R ? Ho - oh0 : R;
            const int iy0 = (int)(oh0 - p->pad[0]), nrows = (int)(nr + kh - 1);
            void *buf = taps[overlap ? i & 1 : 0];
            if (overlap) st = side_fill_may_start(c, i, err);
            if (st != LOCO_OK) break;
            st = rows_fill(fill_stream, buf, xs, x, iy0, nrows, ns, norm_silu, err);
            if (st == LOCO_OK && overlap) st = side_fill_done(c, i, err);
            if (st == LOCO_OK) st = rows_gemm(c, buf, wr, ys, oh0, nr, Cin, kh, W, P, Cout, y->dtype, err);
            if (st == LOCO_OK && overlap) st = side_gemm_done(c, i, err);
        }
    }
    st = side_end(c, forked, st, err);
    cuda_alloc_put(c, taps[0]);
    cuda_alloc_put(c, taps[1]);
    cuda_alloc_put(c, wr);
    return st;
}
