/* conv_cudnn.cu: convolutions through cuDNN (LOCO_CUDA_CONV=cudnn; LOCO_CUDA_CONV_F32=cudnn for
 * the f32 convs alone, whatever the f16 ones take; experimental; host code only, no kernels of
 * ours).
 *
 * Why: run 6's op table (H200) timed PyTorch's convolutions, which are cuDNN's, 1.5-1.8x faster
 * than ours on SD-XL's f32 VAE decoder (sdxl_vae_conv_*: TF32, 164 against 99 TFLOP/s at
 * 1024x1024), and 1.2x faster on the UNet's widest f16 level (unet_conv3x3_320_64_b16). The
 * decode of 8 SD-XL images took 676 ms against diffusers' 860, so its convs alone are worth about
 * 250 ms per batch, and the 128x128 level of SD-XL's UNet a few ms per call. cuDNN is the
 * library PyTorch runs those convs on; it is tried where it can stand in for our routes and the
 * op rows ("@conv_cudnn") and gpu-check's end-to-end lines decide.
 *
 * What it takes: every conv2d that is not 1x1 (those are one GEMM already), in the activation
 * dtypes (f32 as TF32 on tensor cores, PyTorch's default for cuDNN convs), NCHW as our tensors
 * are (the pointers' alignment, up to 16 bytes, is part of the plan), with any padding
 * (asymmetric too: cuDNN's graph API has pre and post paddings) and stride. The bias, sample
 * bias and residual stay with conv.cu's pass; a fused conv's GroupNorm goes through the scratch
 * tensor conv.cu has for routes without a gather.
 * cuDNN's kernels index with 32 bits: a batch whose input or output reaches 2^31 elements (the
 * SD-XL decoder at batch 8) runs in even chunks of samples, each a plan of its own shape
 * (LOCO_CUDA_CUDNN_CHUNK lowers the limit, for tests).
 *
 * Plans: cudnn_lib.cu's cache, one per (dtype, shape, stride, padding, alignment), built on the
 * shape's first call outside a graph capture (the UNet's warm-up call) by timing up to
 * CUDNN_TUNE_MAX of heuristics A's configurations (FALLBACK's when A has none; fewer after
 * CUDNN_TUNE_SECONDS) on that call's tensors and keeping the fastest, as PyTorch does with
 * cudnn.benchmark (gpu-check's torch_ops.py sets it); engines with down-converted inputs, sums
 * in less than f32, run-to-run differences or FFT are refused. A shape cuDNN has no plan for runs conv.cu's own
 * route (with LOCO_CUDA_CUDNN_STRICT=1, for tests, the shape's failure is the call's error). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cuda_probe.h"
#include "cudnn_lib.cuh"

/* Samples per cuDNN call: chunks as even as they go with at most `limit` elements in each of x
 * and y (both counts per sample are > 0); 0 when one sample alone is more. */
static int64_t conv_chunk_samples(int64_t N, int64_t x_per, int64_t y_per, int64_t limit) {
    const int64_t per = x_per > y_per ? x_per : y_per;
    int64_t most = limit / per;
    if (most < 1) return 0; /* one sample alone is too large */
    if (most >= N) return N;
    const int64_t chunks = (N + most - 1) / most;
    return (N + chunks - 1) / chunks;
}

#ifndef LOCO_HAVE_CUDNN

int cuda_conv_cudnn_asked(const cuda_impl *c, loco_dtype dt) {
    (void)c, (void)dt;
    return 0;
}
int cuda_conv_cudnn_applies(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w) {
    (void)c, (void)y, (void)x, (void)w;
    (void)conv_chunk_samples;
    return 0;
}
loco_status cuda_conv_cudnn(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_conv2d_params *p, loco_err *err) {
    (void)y, (void)x, (void)w, (void)wdata, (void)p;
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN conv: %s", c->cudnn_why);
}

extern "C" loco_status loco_cuda_cudnn_conv_graph_check(loco_dtype dt, int64_t N, int64_t Cin, int64_t H, int64_t W,
                                                        int64_t Cout, int64_t kh, int64_t kw, int stride,
                                                        const int pad[4], const char *device_json,
                                                        loco_cudnn_engines *engines, loco_err *err) {
    (void)dt, (void)N, (void)Cin, (void)H, (void)W, (void)Cout, (void)kh, (void)kw, (void)stride, (void)pad;
    (void)device_json, (void)engines;
    return cudnn_not_compiled_in(err);
}

#else

/* What a plan is for: everything its descriptors bake in. */
typedef struct conv_key {
    loco_dtype dt;
    int32_t stride;
    int32_t pad[4]; /* top, bottom, left, right */
    int32_t align;  /* bytes every chunk's x, y and w pointers are aligned to (a power of two <= 16) */
    int64_t N, Cin, H, W, Cout, kh, kw, Ho, Wo;
} conv_key;

enum { T_X = 0, T_W, T_Y, N_TENSORS };
static const int64_t conv_uid[N_TENSORS] = {1, 2, 3};

int cuda_conv_cudnn_asked(const cuda_impl *c, loco_dtype dt) {
    return c->cudnn && (c->cudnn_conv & (dt == LOCO_F32 ? CUDA_CUDNN_CONV_F32 : CUDA_CUDNN_CONV_F16));
}

int cuda_conv_cudnn_applies(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w) {
    if (!cuda_conv_cudnn_asked(c, y->dtype)) return 0;
    const int64_t x_per = x->shape[1] * x->shape[2] * x->shape[3], y_per = y->shape[1] * y->shape[2] * y->shape[3];
    return (y->dtype == LOCO_F32 || y->dtype == LOCO_F16 || y->dtype == LOCO_BF16) && x->dtype == y->dtype &&
           conv_chunk_samples(x->shape[0], x_per, y_per, c->cudnn_chunk_elems) > 0 && w->shape[1] == x->shape[1];
}

/* The largest power of two up to 16 that divides every one of v[0..n). */
static int32_t common_alignment(const uintptr_t *v, int n) {
    uintptr_t bits = 16;
    for (int i = 0; i < n; i++) bits |= v[i];
    return (int32_t)(bits & (~bits + 1));
}

/* Convolution forward (cross-correlation, as PyTorch's conv2d) alone in its graph, for key k. */
static loco_status conv_graph(cuda_cudnn *n, cudnn_plan *p, const void *key, cudnnBackendDescriptor_t *graph,
                              loco_err *err) {
    const conv_key *k = (const conv_key *)key;
    const cudnnDataType_t io = k->dt == LOCO_F32    ? CUDNN_DATA_FLOAT
                               : k->dt == LOCO_BF16 ? CUDNN_DATA_BFLOAT16
                                                    : CUDNN_DATA_HALF;
    const int64_t xd[4] = {k->N, k->Cin, k->H, k->W}, xs[4] = {k->Cin * k->H * k->W, k->H * k->W, k->W, 1};
    const int64_t wd[4] = {k->Cout, k->Cin, k->kh, k->kw}, ws[4] = {k->Cin * k->kh * k->kw, k->kh * k->kw, k->kw, 1};
    const int64_t yd[4] = {k->N, k->Cout, k->Ho, k->Wo}, ys[4] = {k->Cout * k->Ho * k->Wo, k->Ho * k->Wo, k->Wo, 1};
    cudnnBackendDescriptor_t t[N_TENSORS], conv, op;
    CUDA_TRY(cudnn_tensor(n, p, conv_uid[T_X], io, 4, xd, xs, k->align, false, &t[T_X], err));
    CUDA_TRY(cudnn_tensor(n, p, conv_uid[T_W], io, 4, wd, ws, k->align, false, &t[T_W], err));
    CUDA_TRY(cudnn_tensor(n, p, conv_uid[T_Y], io, 4, yd, ys, k->align, false, &t[T_Y], err));

    const cudnnDataType_t acc = CUDNN_DATA_FLOAT; /* f32 accumulation for every dtype */
    const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    const int64_t dims = 2, pre[2] = {k->pad[0], k->pad[2]}, post[2] = {k->pad[1], k->pad[3]};
    const int64_t dilation[2] = {1, 1}, stride[2] = {k->stride, k->stride};
    CUDA_TRY(cudnn_desc_new(n, p, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, &conv, err));
    CUDNN_TRY(n, n->f.set_attribute(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &acc),
              "convolution compute type");
    CUDNN_TRY(n, n->f.set_attribute(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode),
              "convolution mode");
    CUDNN_TRY(n, n->f.set_attribute(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims),
              "convolution spatial dims");
    CUDNN_TRY(n, n->f.set_attribute(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pre),
              "convolution pre-paddings");
    CUDNN_TRY(n, n->f.set_attribute(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, post),
              "convolution post-paddings");
    CUDNN_TRY(n, n->f.set_attribute(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilation),
              "convolution dilations");
    CUDNN_TRY(n, n->f.set_attribute(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride),
              "convolution strides");
    CUDNN_TRY(n, n->f.finalize(conv), "convolution finalize");

    const float alpha = 1.0f, beta = 0.0f; /* y is written, never accumulated into */
    CUDA_TRY(cudnn_desc_new(n, p, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, &op, err));
    CUDNN_TRY(n, n->f.set_attribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                    &t[T_X]),
              "convolution x");
    CUDNN_TRY(n, n->f.set_attribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                    &t[T_W]),
              "convolution w");
    CUDNN_TRY(n, n->f.set_attribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                    &t[T_Y]),
              "convolution y");
    CUDNN_TRY(n, n->f.set_attribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv),
              "convolution descriptor");
    CUDNN_TRY(n, n->f.set_attribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha),
              "convolution alpha");
    CUDNN_TRY(n, n->f.set_attribute(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta),
              "convolution beta");
    CUDNN_TRY(n, n->f.finalize(op), "convolution operation finalize");
    return cudnn_graph_of(n, p, op, graph, err);
}

static void key_of(conv_key *k, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                   const loco_conv2d_params *p, int64_t samples, int32_t align) {
    memset(k, 0, sizeof *k); /* compared bytewise: no stray bytes in the padding */
    k->dt = y->dtype;
    k->stride = p->stride;
    for (int i = 0; i < 4; i++) k->pad[i] = p->pad[i];
    k->align = align;
    k->N = samples, k->Cin = x->shape[1], k->H = x->shape[2], k->W = x->shape[3];
    k->Cout = w->shape[0], k->kh = w->shape[2], k->kw = w->shape[3], k->Ho = y->shape[2], k->Wo = y->shape[3];
}

loco_status cuda_conv_cudnn(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_conv2d_params *p, loco_err *err) {
    if (!c->cudnn) return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN conv: unavailable (%s)", c->cudnn_why);
    const int64_t N = x->shape[0], x_per = x->shape[1] * x->shape[2] * x->shape[3];
    const int64_t y_per = y->shape[1] * y->shape[2] * y->shape[3];
    const int64_t nc = conv_chunk_samples(N, x_per, y_per, c->cudnn_chunk_elems);
    const size_t es = loco_dtype_size(y->dtype);
    if (nc <= 0)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN conv: one sample of %lld elements is too large",
                            (long long)(x_per > y_per ? x_per : y_per));
    /* the alignment every chunk's pointers have (one plan serves every full chunk) */
    const uintptr_t at[5] = {(uintptr_t)x->data, (uintptr_t)y->data, (uintptr_t)wdata,
                             (uintptr_t)((size_t)(nc * x_per) * es), (uintptr_t)((size_t)(nc * y_per) * es)};
    const int32_t align = common_alignment(at, 5);
    /* both chunk shapes' plans (the full one and the remainder) before any chunk runs, so that a
     * shape without a plan costs no cuDNN run the fallback then redoes; the remainder is tuned on
     * the first chunk's tensors, which are larger */
    void *const first[N_TENSORS] = {x->data, (void *)wdata, y->data};
    const cudnn_args a0 = {N_TENSORS, conv_uid, first};
    cudnn_plan *plan[2] = {NULL, NULL};
    conv_key k[2];
    const int64_t rest = N % nc, shapes = rest ? 2 : 1;
    loco_status st = LOCO_OK;
    for (int i = 0; i < shapes && st == LOCO_OK; i++) {
        key_of(&k[i], y, x, w, p, i ? rest : nc, align);
        st = cudnn_plan_get(c, CUDNN_PLAN_CONV, &k[i], sizeof k[i], conv_graph, &a0, &plan[i], err);
    }
    for (int64_t n0 = 0; n0 < N && st == LOCO_OK; n0 += nc) {
        void *const ptr[N_TENSORS] = {(char *)x->data + (size_t)(n0 * x_per) * es, (void *)wdata,
                                      (char *)y->data + (size_t)(n0 * y_per) * es};
        const cudnn_args a = {N_TENSORS, conv_uid, ptr};
        st = cudnn_plan_run(c, plan[N - n0 < nc], &a, err);
    }
    if (st != LOCO_OK) {
        /* a refusal comes before any sample was written, or in a later chunk: the caller's route
         * rewrites all of y either way */
        loco_err_prefix(err, "cuDNN conv (%s, %lld x %lld x %lldx%lld -> %lld, %lldx%lld taps, stride %d)",
                        loco_dtype_name(y->dtype), (long long)N, (long long)x->shape[1], (long long)x->shape[2],
                        (long long)x->shape[3], (long long)w->shape[0], (long long)w->shape[2],
                        (long long)w->shape[3], p->stride);
        return st;
    }
    return cuda_check_launch("cuDNN conv", err);
}

extern "C" loco_status loco_cuda_cudnn_conv_graph_check(loco_dtype dt, int64_t N, int64_t Cin, int64_t H, int64_t W,
                                                        int64_t Cout, int64_t kh, int64_t kw, int stride,
                                                        const int pad[4], const char *device_json,
                                                        loco_cudnn_engines *engines, loco_err *err) {
    if (stride < 1 || N < 1 || Cin < 1 || Cout < 1 || kh < 1 || kw < 1)
        return loco_err_set(err, LOCO_EINVAL, "conv graph check: bad shape");
    conv_key k;
    memset(&k, 0, sizeof k);
    k.dt = dt, k.stride = stride, k.N = N, k.Cin = Cin, k.H = H, k.W = W, k.Cout = Cout, k.kh = kh, k.kw = kw;
    k.align = 16;
    for (int i = 0; i < 4; i++) k.pad[i] = pad[i];
    k.Ho = (H + pad[0] + pad[1] - kh) / stride + 1;
    k.Wo = (W + pad[2] + pad[3] - kw) / stride + 1;
    return cudnn_graph_check(conv_graph, &k, device_json, CUDNN_TUNE_MAX, engines, err); /* timed among */
}

#endif /* LOCO_HAVE_CUDNN */

const char *cuda_conv_cudnn_describe(const cuda_impl *c, char *buf, size_t n) {
    buf[0] = 0;
    if (!c->cudnn_conv) return buf;
    const size_t v = cuda_cudnn_version(c);
    const char *scope = c->cudnn_conv & CUDA_CUDNN_CONV_F16 ? "convs" : "f32 convs";
    if (c->cudnn)
        snprintf(buf, n, ", conv: cuDNN %zu.%zu.%zu for %s that are not 1x1 (experimental)", v / 10000, v / 100 % 100,
                 v % 100, scope);
    else
        snprintf(buf, n, ", conv: cuDNN for %s unavailable (%.150s), auto", scope, c->cudnn_why);
    return buf;
}
