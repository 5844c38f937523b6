/* elementwise.cu: activations, GEGLU, add, per-channel bias, linear combinations and fill.
 *
 * All memory-bound: each kernel is one grid-stride pass that moves 16 bytes per access when
 * every pointer involved is 16-byte aligned (8 halves or 4 floats), with a scalar tail; math
 * is fp32. Inputs share the output's dtype (the engine converts with loco_copy first). */
#include <string.h>

#include "cuda_device.h"
#include "fast_div.h"

#define EW_THREADS 256
#define LC_MAX 8 /* inputs per lincomb launch: passed by value, so graph capture keeps them */

static int all_aligned16(const void *a, const void *b, const void *c) {
    return cuda_aligned(a, 16) && cuda_aligned(b, 16) && cuda_aligned(c, 16);
}

static loco_status same_dtype(const char *op, const loco_tensor *y, const loco_tensor *x, loco_err *err) {
    if (x->dtype == y->dtype) return LOCO_OK;
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda %s: input is %s but output is %s (convert with loco_copy)",
                        op, cuda_dt(x->dtype), cuda_dt(y->dtype));
}

/* ---- activation ------------------------------------------------------------------------------ */

template <typename T> __global__ void act_kernel(T *y, const T *x, int64_t n, int act, int vec) {
    const int V = 16 / sizeof(T);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t nv = vec ? n / V : 0;
    for (int64_t i = t; i < nv; i += stride) {
        vec16<T> a = ((const vec16<T> *)x)[i];
#pragma unroll
        for (int j = 0; j < V; j++) a.v[j] = from_f32<T>(act_apply(to_f32(a.v[j]), act));
        ((vec16<T> *)y)[i] = a;
    }
    for (int64_t i = nv * V + t; i < n; i += stride) y[i] = from_f32<T>(act_apply(to_f32(x[i]), act));
}

loco_status cuda_act_apply(cuda_impl *c, void *y, const void *x, loco_dtype dtype, int64_t n, loco_act act,
                           loco_err *err) {
    if (n <= 0 || (act == LOCO_ACT_NONE && x == y)) return LOCO_OK;
    int vec = all_aligned16(x, y, y);
    CUDA_DISPATCH(dtype, T, "activation", err, {
        const int V = 16 / sizeof(T);
        LOCO_LAUNCH(cuda_grid(c, (n + V - 1) / V, EW_THREADS), EW_THREADS, 0, c->stream, act_kernel<T>)(
            (T *)y, (const T *)x, n, (int)act, vec);
    });
    return cuda_check_launch("act_kernel", err);
}

extern "C" loco_status cuda_op_activation(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act act,
                                          loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    CUDA_TRY(same_dtype("activation", y, x, err));
    return cuda_act_apply(cuda_of(be), y->data, x->data, y->dtype, loco_tensor_numel(y), act, err);
}

/* ---- GEGLU: y[r, j] = x[r, j] * gelu(x[r, N + j]) -------------------------------------------- */

/* vec_n.d > 0 (n % V == 0, fewer than 2^31 vectors): 16-byte vectors, a vector's row found with
 * one magic-number division (fast_div.h). With the int64 division of before, each 16 bytes of
 * output cost a call into the division routine next to eight erff: SD-XL's [16384, 2 x 5120]
 * ran at 3.5 TB/s (run 6 profile), close to issue-bound. vec_n.d == 0: one element at a time. */
template <typename T>
__global__ void geglu_kernel(T *y, const T *x, int64_t rows, int64_t n, loco_fast_div vec_n) {
    const int V = 16 / sizeof(T);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec_n.d > 0) { /* a vector never straddles the two halves of a row */
        const uint32_t nvr = vec_n.d, total = (uint32_t)(rows * nvr);
        for (uint32_t i = (uint32_t)t; i < total; i += (uint32_t)stride) {
            const uint32_t r = loco_fast_div_eval(vec_n, i), j = i - r * nvr;
            const vec16<T> *xr = (const vec16<T> *)x + (int64_t)r * 2 * nvr;
            vec16<T> a = xr[j], g = xr[nvr + j];
#pragma unroll
            for (int e = 0; e < V; e++)
                a.v[e] = from_f32<T>(to_f32(a.v[e]) * act_apply(to_f32(g.v[e]), LOCO_ACT_GELU));
            ((vec16<T> *)y)[i] = a;
        }
        return;
    }
    int64_t total = rows * n;
    for (int64_t i = t; i < total; i += stride) {
        int64_t r = i / n, j = i - r * n;
        const T *xr = x + r * 2 * n;
        y[i] = from_f32<T>(to_f32(xr[j]) * act_apply(to_f32(xr[n + j]), LOCO_ACT_GELU));
    }
}

extern "C" loco_status cuda_op_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    CUDA_TRY(same_dtype("geglu", y, x, err));
    cuda_impl *c = cuda_of(be);
    int64_t n = y->shape[y->ndim - 1];
    if (n <= 0) return LOCO_OK;
    int64_t rows = loco_tensor_numel(y) / n;
    CUDA_DISPATCH(y->dtype, T, "geglu", err, {
        const int V = 16 / sizeof(T);
        const int vec = n % V == 0 && all_aligned16(x->data, y->data, y->data) && rows * (n / V) < ((int64_t)1 << 31);
        loco_fast_div vec_n;
        memset(&vec_n, 0, sizeof vec_n);
        if (vec) vec_n = loco_fast_div_make((uint32_t)(n / V));
        const int64_t items = vec ? rows * (n / V) : rows * n;
        LOCO_LAUNCH(cuda_grid(c, items, EW_THREADS), EW_THREADS, 0, c->stream, geglu_kernel<T>)(
            (T *)y->data, (const T *)x->data, rows, n, vec_n);
    });
    return cuda_check_launch("geglu_kernel", err);
}

/* ---- add ------------------------------------------------------------------------------------ */

template <typename T> __global__ void add_kernel(T *y, const T *a, const T *b, int64_t n, int vec) {
    const int V = 16 / sizeof(T);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t nv = vec ? n / V : 0;
    for (int64_t i = t; i < nv; i += stride) {
        vec16<T> u = ((const vec16<T> *)a)[i], w = ((const vec16<T> *)b)[i];
#pragma unroll
        for (int j = 0; j < V; j++) u.v[j] = from_f32<T>(to_f32(u.v[j]) + to_f32(w.v[j]));
        ((vec16<T> *)y)[i] = u;
    }
    for (int64_t i = nv * V + t; i < n; i += stride) y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

extern "C" loco_status cuda_op_add(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b,
                                   loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    CUDA_TRY(same_dtype("add", y, a, err));
    CUDA_TRY(same_dtype("add", y, b, err));
    cuda_impl *c = cuda_of(be);
    int64_t n = loco_tensor_numel(y);
    if (n <= 0) return LOCO_OK;
    int vec = all_aligned16(y->data, a->data, b->data);
    CUDA_DISPATCH(y->dtype, T, "add", err, {
        const int V = 16 / sizeof(T);
        LOCO_LAUNCH(cuda_grid(c, (n + V - 1) / V, EW_THREADS), EW_THREADS, 0, c->stream, add_kernel<T>)(
            (T *)y->data, (const T *)a->data, (const T *)b->data, n, vec);
    });
    return cuda_check_launch("add_kernel", err);
}

/* ---- per-channel bias ------------------------------------------------------------------------- */

/* y = x + bias[(i / inner) % period] (+ bias2[i / inner]) (+ res[i]), summed in fp32 in that
 * order and rounded once. bias2 (a per-sample [N, C] bias) and res (a residual of y's shape)
 * are the fused conv's epilogue (conv.cu); bias may be NULL there. The vector form (inner % V
 * == 0, fewer than 2^31 vectors) finds a vector's channel with two magic-number divisions
 * (fast_div.h); with int64 division it was a call into the division routine per 16 bytes. */
template <typename T>
__global__ void channel_bias_kernel(T *y, const T *x, const void *bias, int bias_dtype, const void *bias2,
                                    int bias2_dtype, const T *res, int64_t n, int64_t inner, int64_t period,
                                    loco_fast_div vec_inner, loco_fast_div vec_period) {
    const int V = 16 / sizeof(T);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec_inner.d > 0) { /* all V elements of a vector share one channel */
        const uint32_t nv = (uint32_t)(n / V);
        for (uint32_t i = (uint32_t)t; i < nv; i += (uint32_t)stride) {
            const uint32_t r = loco_fast_div_eval(vec_inner, i);
            const float bv =
                bias ? ld_dyn(bias, bias_dtype, r - loco_fast_div_eval(vec_period, r) * vec_period.d) : 0.0f;
            vec16<T> u = ((const vec16<T> *)x)[i];
            if (bias2 || res) { /* the fused conv's epilogue: the scalar form's order of sums */
                const float bv2 = bias2 ? ld_dyn(bias2, bias2_dtype, r) : 0.0f;
                vec16<T> ur;
                if (res) ur = ((const vec16<T> *)res)[i];
#pragma unroll
                for (int j = 0; j < V; j++) {
                    float v = to_f32(u.v[j]) + bv;
                    if (bias2) v += bv2;
                    if (res) v += to_f32(ur.v[j]);
                    u.v[j] = from_f32<T>(v);
                }
            } else {
#pragma unroll
                for (int j = 0; j < V; j++) u.v[j] = from_f32<T>(to_f32(u.v[j]) + bv);
            }
            ((vec16<T> *)y)[i] = u;
        }
        return;
    }
    for (int64_t i = t; i < n; i += stride) {
        float v = to_f32(x[i]) + (bias ? ld_dyn(bias, bias_dtype, (i / inner) % period) : 0.0f);
        if (bias2) v += ld_dyn(bias2, bias2_dtype, i / inner);
        if (res) v += to_f32(res[i]);
        y[i] = from_f32<T>(v);
    }
}

loco_status cuda_channel_bias_ex(cuda_impl *c, void *y, const void *x, loco_dtype dtype, const void *bias,
                                 loco_dtype bias_dtype, const void *bias2, loco_dtype bias2_dtype, const void *res,
                                 int64_t n, int64_t inner, int64_t period, loco_err *err) {
    if (n <= 0 || inner <= 0 || period <= 0 || (!bias && !bias2 && !res && x == y)) return LOCO_OK;
    CUDA_DISPATCH(dtype, T, "channel bias", err, {
        const int V = 16 / sizeof(T);
        loco_fast_div vec_inner, vec_period; /* vec_inner.d = 0 selects the scalar form */
        memset(&vec_inner, 0, sizeof vec_inner);
        memset(&vec_period, 0, sizeof vec_period);
        /* i + stride stays below 2^32 in the 32-bit loop: nv < 2^31 and the grid is far smaller */
        if (inner % V == 0 && all_aligned16(x, y, res ? res : y) && n / V < ((int64_t)1 << 31) &&
            inner / V < ((int64_t)1 << 31) && period < ((int64_t)1 << 31)) {
            vec_inner = loco_fast_div_make((uint32_t)(inner / V));
            vec_period = loco_fast_div_make((uint32_t)period);
        }
        int64_t items = vec_inner.d ? n / V : n;
        LOCO_LAUNCH(cuda_grid(c, items, EW_THREADS), EW_THREADS, 0, c->stream, channel_bias_kernel<T>)(
            (T *)y, (const T *)x, bias, (int)bias_dtype, bias2, (int)bias2_dtype, (const T *)res, n, inner, period,
            vec_inner, vec_period);
    });
    return cuda_check_launch("channel_bias_kernel", err);
}

loco_status cuda_channel_bias(cuda_impl *c, void *y, const void *x, loco_dtype dtype, const void *bias,
                              loco_dtype bias_dtype, int64_t n, int64_t inner, int64_t period, loco_err *err) {
    return cuda_channel_bias_ex(c, y, x, dtype, bias, bias_dtype, NULL, LOCO_F32, NULL, n, inner, period, err);
}

extern "C" loco_status cuda_op_add_channel_bias(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                                const loco_tensor *bias, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    CUDA_TRY(same_dtype("add_channel_bias", y, x, err));
    int64_t n = loco_tensor_numel(y);
    int64_t nc = loco_tensor_numel(bias); /* [N, C] */
    if (n <= 0 || nc <= 0) return LOCO_OK;
    return cuda_channel_bias(cuda_of(be), y->data, x->data, y->dtype, bias->data, bias->dtype, n, n / nc, nc, err);
}

/* ---- linear combination ------------------------------------------------------------------------ */

typedef struct lc_args {
    const void *x[LC_MAX];
    float coef[LC_MAX];
    int count;
} lc_args;

/* mode 0: y = sum; 1: acc = sum; 2: acc += sum; 3: y = acc + sum. acc is fp32 scratch used
 * when there are more than LC_MAX inputs, so the sum stays fp32 and in the given order. */
template <typename T>
__global__ void lincomb_kernel(T *y, float *acc, const lc_args a, int64_t n, int mode, int vec) {
    const int V = 16 / sizeof(T);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) { /* mode 0 only */
        int64_t nv = n / V;
        for (int64_t i = t; i < nv; i += stride) {
            float s[16 / sizeof(T)];
#pragma unroll
            for (int j = 0; j < V; j++) s[j] = 0.0f;
#pragma unroll
            for (int k = 0; k < LC_MAX; k++) { /* constant indices keep `a` out of local memory */
                if (k >= a.count) break;
                vec16<T> u = ((const vec16<T> *)a.x[k])[i];
#pragma unroll
                for (int j = 0; j < V; j++) s[j] += a.coef[k] * to_f32(u.v[j]);
            }
            vec16<T> o;
#pragma unroll
            for (int j = 0; j < V; j++) o.v[j] = from_f32<T>(s[j]);
            ((vec16<T> *)y)[i] = o;
        }
        t += nv * V; /* the scalar loop below finishes the tail */
    }
    for (int64_t i = t; i < n; i += stride) {
        float s = mode >= 2 ? acc[i] : 0.0f;
#pragma unroll
        for (int k = 0; k < LC_MAX; k++) {
            if (k >= a.count) break;
            s += a.coef[k] * to_f32(((const T *)a.x[k])[i]);
        }
        if (mode == 1 || mode == 2)
            acc[i] = s;
        else
            y[i] = from_f32<T>(s);
    }
}

extern "C" loco_status cuda_op_lincomb(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x,
                                       const float *coef, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    int64_t numel = loco_tensor_numel(y);
    if (!cuda_is_act_dtype(y->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda lincomb: dtype %s is not supported", cuda_dt(y->dtype));
    for (int i = 0; i < n; i++) CUDA_TRY(same_dtype("lincomb", y, x[i], err));
    if (numel <= 0) return LOCO_OK;
    if (n == 0) return cuda_check(cudaMemsetAsync(y->data, 0, loco_tensor_nbytes(y), c->stream),
                                  "cuda lincomb: cudaMemsetAsync", err);
    float *acc = NULL;
    if (n > LC_MAX) CUDA_TRY(cuda_alloc_get(c, (size_t)numel * sizeof(float), (void **)&acc, err));
    loco_status st = LOCO_OK;
    for (int start = 0; start < n && st == LOCO_OK; start += LC_MAX) {
        lc_args a;
        memset(&a, 0, sizeof a);
        a.count = n - start < LC_MAX ? n - start : LC_MAX;
        int vec = n <= LC_MAX && cuda_aligned(y->data, 16);
        for (int k = 0; k < a.count; k++) {
            a.x[k] = x[start + k]->data;
            a.coef[k] = coef[start + k];
            vec = vec && cuda_aligned(a.x[k], 16);
        }
        int mode = n <= LC_MAX ? 0 : start == 0 ? 1 : start + a.count >= n ? 3 : 2;
        CUDA_DISPATCH(y->dtype, T, "lincomb", err, {
            const int V = 16 / sizeof(T);
            const unsigned blocks = cuda_grid(c, vec ? (numel + V - 1) / V : numel, EW_THREADS);
            LOCO_LAUNCH(blocks, EW_THREADS, 0, c->stream, lincomb_kernel<T>)((T *)y->data, acc, a, numel, mode, vec);
        });
        st = cuda_check_launch("lincomb_kernel", err);
    }
    cuda_alloc_put(c, acc); /* stream order keeps it alive for the kernels above */
    return st;
}

/* ---- fill -------------------------------------------------------------------------------------- */

template <typename T> __global__ void fill_kernel(T *y, float value, int64_t n, int vec) {
    const int V = 16 / sizeof(T);
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    T v = from_f32<T>(value);
    int64_t nv = vec ? n / V : 0;
    vec16<T> u;
#pragma unroll
    for (int j = 0; j < V; j++) u.v[j] = v;
    for (int64_t i = t; i < nv; i += stride) ((vec16<T> *)y)[i] = u;
    for (int64_t i = nv * V + t; i < n; i += stride) y[i] = v;
}

extern "C" loco_status cuda_op_fill(loco_backend *be, loco_tensor *y, float value, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    int64_t n = loco_tensor_numel(y);
    if (n <= 0) return LOCO_OK;
    int vec = cuda_aligned(y->data, 16);
    CUDA_DISPATCH(y->dtype, T, "fill", err, {
        const int V = 16 / sizeof(T);
        LOCO_LAUNCH(cuda_grid(c, (n + V - 1) / V, EW_THREADS), EW_THREADS, 0, c->stream, fill_kernel<T>)(
            (T *)y->data, value, n, vec);
    });
    return cuda_check_launch("fill_kernel", err);
}
