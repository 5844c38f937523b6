/* conv.cu: loco_conv2d on the GPU, NCHW. Three routes:
 *
 *  - 1x1, stride 1, no padding (ResNet shortcuts, SD1.x attention proj_in/out): a plain GEMM
 *    per sample, y[n] (Cout x HW) = w (Cout x Cin) . x[n] (Cin x HW), through cuBLASLt.
 *  - f16/bf16 otherwise: the tensor-core implicit GEMM of conv_igemm.cu (no im2col buffer,
 *    bias fused in its epilogue), when its 128x128 tiles give at least one block per SM.
 *  - small images with many channels (on a 132-SM H100 the UNet's levels of 32x32 and below
 *    at batch 2) and f32 activations: im2col of a slice of output pixels into a bounded scratch buffer,
 *    then a cuBLASLt GEMM (TF32 for f32) writing straight into y. cuBLASLt splits K and picks
 *    small tiles where the implicit kernel would leave most SMs idle. Slices keep the buffer
 *    under 64 MiB even for VAE decoders at 1024^2.
 *  LOCO_CUDA_CONV=implicit|im2col forces one of the two (benchmarks compare them).
 *
 * In NCHW the per-channel bias runs along the GEMM's n dimension, which cuBLASLt's bias
 * epilogue (per row of D) cannot express, so the GEMM routes add it in one extra pass. */
#include <string.h>

#include "cuda_device.h"

#define IM2COL_BUDGET ((size_t)64 << 20)

/* col[k][pi] (row-major K x pc) = x[ci, oh*s - pt + r, ow*s - pl + s'] for output pixel
 * p0 + pi of one sample; zero outside the image. Element-size typed: it only moves data. */
template <typename U>
__global__ void im2col_kernel(U *col, const U *x, int h, int wd, int kh, int kw, int stride, int pt, int pl, int wo,
                              int64_t p0, int64_t pc, int64_t K) {
    int64_t total = K * pc, step = (int64_t)gridDim.x * blockDim.x;
    int khw = kh * kw;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        int64_t k = i / pc, pi = i - k * pc, pp = p0 + pi;
        int oh = (int)(pp / wo), ow = (int)(pp - (int64_t)oh * wo);
        int ci = (int)(k / khw), rs = (int)(k - (int64_t)ci * khw);
        int r = rs / kw, s = rs - r * kw;
        int iy = oh * stride - pt + r, ix = ow * stride - pl + s;
        col[i] = ((unsigned)iy < (unsigned)h && (unsigned)ix < (unsigned)wd) ? x[((int64_t)ci * h + iy) * wd + ix]
                                                                              : (U)0;
    }
}

static loco_status conv_im2col(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                               const void *wp, const loco_conv2d_params *p, loco_err *err) {
    int64_t Nb = x->shape[0], Cin = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t Cout = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    int64_t Wo = y->shape[3], P = y->shape[2] * Wo, K = Cin * kh * kw;
    size_t es = loco_dtype_size(y->dtype);
    int64_t pc = (int64_t)(IM2COL_BUDGET / ((size_t)K * es));
    if (pc > 64) pc = pc / 64 * 64; /* slices start on aligned pixels */
    if (pc < 1) pc = 1;
    if (pc > P) pc = P;
    void *col = NULL;
    CUDA_TRY(cuda_alloc_get(c, (size_t)(K * pc) * es, &col, err));
    loco_status st = LOCO_OK;
    for (int64_t nb = 0; nb < Nb && st == LOCO_OK; nb++) {
        const char *xs = (const char *)x->data + (size_t)(nb * Cin * H * W) * es;
        char *ys = (char *)y->data + (size_t)(nb * Cout * P) * es;
        for (int64_t p0 = 0; p0 < P && st == LOCO_OK; p0 += pc) {
            int64_t n = P - p0 < pc ? P - p0 : pc;
            unsigned grid = cuda_grid(c, K * n, 256);
            if (es == 2)
                im2col_kernel<uint16_t><<<grid, 256, 0, c->stream>>>(
                    (uint16_t *)col, (const uint16_t *)xs, (int)H, (int)W, (int)kh, (int)kw, p->stride, p->pad[0],
                    p->pad[2], (int)Wo, p0, n, K);
            else
                im2col_kernel<uint32_t><<<grid, 256, 0, c->stream>>>(
                    (uint32_t *)col, (const uint32_t *)xs, (int)H, (int)W, (int)kh, (int)kw, p->stride, p->pad[0],
                    p->pad[2], (int)Wo, p0, n, K);
            st = cuda_check_launch("im2col_kernel", err);
            if (st != LOCO_OK) break;
            /* D (n x Cout, ld P) = col (n x K, ld n) . w (K x Cout, ld K), all column-major */
            cuda_gemm g;
            memset(&g, 0, sizeof g);
            g.m = n;
            g.n = Cout;
            g.k = K;
            g.lda = n;
            g.ldb = K;
            g.ldd = P;
            g.batch = 1;
            g.ab_dtype = y->dtype;
            g.d_dtype = y->dtype;
            g.a = col;
            g.b = wp;
            g.d = ys + (size_t)p0 * es;
            g.alpha = 1.0f;
            st = cuda_gemm_run(c, &g, err);
        }
    }
    cuda_alloc_put(c, col);
    return st;
}

static loco_status conv_pointwise(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                  const void *wp, loco_err *err) {
    int64_t Nb = x->shape[0], Cin = x->shape[1], P = x->shape[2] * x->shape[3], Cout = w->shape[0];
    size_t es = loco_dtype_size(y->dtype);
    for (int64_t nb = 0; nb < Nb; nb++) {
        /* D (P x Cout, ld P) = x[nb] (P x Cin, ld P) . w (Cin x Cout, ld Cin), column-major */
        cuda_gemm g;
        memset(&g, 0, sizeof g);
        g.m = P;
        g.n = Cout;
        g.k = Cin;
        g.lda = P;
        g.ldb = Cin;
        g.ldd = P;
        g.batch = 1;
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

extern "C" loco_status cuda_op_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    if (x->dtype != y->dtype || !cuda_is_act_dtype(y->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: input %s, output %s (both must be the activation "
                            "dtype)", cuda_dt(x->dtype), cuda_dt(y->dtype));
    if (bias && !cuda_is_act_dtype(bias->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda conv2d: bias dtype %s", cuda_dt(bias->dtype));
    int64_t numel = loco_tensor_numel(y);
    if (numel <= 0) return LOCO_OK;
    int64_t Cin = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t Cout = w->shape[0], kh = w->shape[2], kw = w->shape[3];
    int64_t P = y->shape[2] * y->shape[3];

    const void *wp;
    void *w_tmp = NULL;
    CUDA_TRY(cuda_as_dtype(c, w, y->dtype, &wp, &w_tmp, err));
    loco_status st;
    int bias_done = 0;
    int pointwise = kh == 1 && kw == 1 && p->stride == 1 && !p->pad[0] && !p->pad[1] && !p->pad[2] && !p->pad[3];
    int fits_int = Cin * H * W < ((int64_t)1 << 31) && P < ((int64_t)1 << 31) && Cin * kh * kw < ((int64_t)1 << 31) &&
                   Cout < ((int64_t)1 << 31);
    if (pointwise) {
        st = conv_pointwise(c, y, x, w, wp, err);
    } else if (y->dtype != LOCO_F32 && fits_int &&
               (c->conv_algo == CUDA_CONV_IMPLICIT ||
                (c->conv_algo == CUDA_CONV_AUTO &&
                 cuda_conv_igemm_blocks(x->shape[0] * P, Cout) >= (int64_t)c->sm_count))) {
        st = cuda_conv_igemm(c, y, x, w, wp, bias, p, err);
        bias_done = 1;
    } else {
        st = conv_im2col(c, y, x, w, wp, p, err);
    }
    if (st == LOCO_OK && bias && !bias_done)
        st = cuda_channel_bias(c, y->data, y->data, y->dtype, bias->data, bias->dtype, numel, P, Cout, err);
    cuda_alloc_put(c, w_tmp);
    return st;
}
