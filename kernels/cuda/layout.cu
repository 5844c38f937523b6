/* layout.cu: ops that move data without arithmetic: transpose of the last two axes (NCHW <->
 * NLC), concatenation, nearest 2x upsampling, embedding gather and set_channels.
 *
 * Kernels that only move elements are instantiated per element size (2/4/8 bytes), not per
 * dtype. Host arrays (ids, channels) travel as kernel arguments in fixed-size chunks rather
 * than through a device copy: no host round trip, and a captured CUDA graph keeps them. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_device.h"

#define EMB_CHUNK 448 /* ids per launch: 1.8 KB of kernel arguments */
#define SETC_CHUNK 224

/* ---- transpose12: [N, A, B] -> [N, B, A] ------------------------------------------------------ */

/* 32x32 tiles through shared memory so that both the read and the write are coalesced; the
 * +1 column keeps the column reads off a single bank. */
template <typename U> __global__ void transpose_kernel(U *y, const U *x, int64_t A, int64_t B, int64_t n0) {
    __shared__ U tile[32][33];
    int64_t n = n0 + blockIdx.z;
    int64_t a0 = (int64_t)blockIdx.y * 32, b0 = (int64_t)blockIdx.x * 32;
    const U *xs = x + n * A * B;
    U *ys = y + n * A * B;
    for (int i = threadIdx.y; i < 32; i += 8) {
        int64_t a = a0 + i, b = b0 + threadIdx.x;
        if (a < A && b < B) tile[i][threadIdx.x] = xs[a * B + b];
    }
    __syncthreads();
    for (int i = threadIdx.y; i < 32; i += 8) {
        int64_t b = b0 + i, a = a0 + threadIdx.x;
        if (a < A && b < B) ys[b * A + a] = tile[threadIdx.x][i];
    }
}

#define SIZE_DISPATCH(es, U, what, err, ...)                                                         \
    switch (es) {                                                                                    \
    case 2: {                                                                                        \
        typedef uint16_t U;                                                                          \
        __VA_ARGS__;                                                                                 \
    } break;                                                                                         \
    case 4: {                                                                                        \
        typedef uint32_t U;                                                                          \
        __VA_ARGS__;                                                                                 \
    } break;                                                                                         \
    case 8: {                                                                                        \
        typedef uint64_t U;                                                                          \
        __VA_ARGS__;                                                                                 \
    } break;                                                                                         \
    default:                                                                                         \
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda %s: %zu-byte elements are not supported", \
                            what, (size_t)(es));                                                     \
    }

extern "C" loco_status cuda_op_transpose12(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    if (x->dtype != y->dtype)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda transpose12: input %s, output %s", cuda_dt(x->dtype),
                            cuda_dt(y->dtype));
    int64_t A = x->shape[x->ndim - 2], B = x->shape[x->ndim - 1];
    if (A <= 0 || B <= 0) return LOCO_OK;
    int64_t N = loco_tensor_numel(x) / (A * B);
    if ((A + 31) / 32 > 65535)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda transpose12: middle axis %lld is too long",
                            (long long)A);
    size_t es = loco_dtype_size(x->dtype);
    for (int64_t n0 = 0; n0 < N; n0 += 65535) {
        int64_t nz = N - n0 < 65535 ? N - n0 : 65535;
        dim3 grid((unsigned)((B + 31) / 32), (unsigned)((A + 31) / 32), (unsigned)nz);
        SIZE_DISPATCH(es, U, "transpose12", err, {
            LOCO_LAUNCH(grid, dim3(32, 8), 0, c->stream, transpose_kernel<U>)(
                (U *)y->data, (const U *)x->data, A, B, n0);
        });
        CUDA_TRY(cuda_check_launch("transpose_kernel", err));
    }
    return LOCO_OK;
}

/* ---- concat: one strided 2-D copy per input ---------------------------------------------------- */

static loco_status copy_rows(cuda_impl *c, char *dst, size_t dpitch, const char *src, size_t width, int64_t rows,
                             loco_err *err) {
    if (width == 0 || rows <= 0) return LOCO_OK;
    if (rows == 1)
        return cuda_check(cudaMemcpyAsync(dst, src, width, cudaMemcpyDeviceToDevice, c->stream),
                          "cuda concat: cudaMemcpyAsync", err);
    if (dpitch <= (size_t)INT_MAX)
        return cuda_check(cudaMemcpy2DAsync(dst, dpitch, src, width, width, (size_t)rows, cudaMemcpyDeviceToDevice,
                                            c->stream),
                          "cuda concat: cudaMemcpy2DAsync", err);
    for (int64_t r = 0; r < rows; r++) /* rows wider than 2 GB: few of them */
        CUDA_TRY(cuda_check(cudaMemcpyAsync(dst + r * dpitch, src + r * width, width, cudaMemcpyDeviceToDevice,
                                            c->stream),
                            "cuda concat: cudaMemcpyAsync", err));
    return LOCO_OK;
}

/* Both inputs in one pass of 16-byte vectors: output row r is a's row r (wa vectors), then b's
 * (wb). cudaMemcpy2DAsync does the same copy at 1.5 TB/s on an H200 for the UNet's skip
 * concatenations ([16, 640, 64, 64]: 113 us for 168 MB read and written; session 6 profile),
 * a third of what a plain copy reaches there. */
__global__ void concat_vec_kernel(uint4 *y, const uint4 *a, const uint4 *b, int64_t wa, int64_t wb, int64_t n) {
    const int64_t w = wa + wb, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t r = i / w, col = i - r * w;
        y[i] = col < wa ? a[r * wa + col] : b[r * wb + (col - wa)];
    }
}

extern "C" loco_status cuda_op_concat(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b,
                                      int axis, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    if (a->dtype != y->dtype || b->dtype != y->dtype)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda concat: inputs %s and %s, output %s", cuda_dt(a->dtype),
                            cuda_dt(b->dtype), cuda_dt(y->dtype));
    if (axis < 0) axis += y->ndim;
    int64_t outer = 1;
    for (int i = 0; i < axis; i++) outer *= y->shape[i];
    if (outer <= 0) return LOCO_OK;
    size_t es = loco_dtype_size(y->dtype);
    size_t wa = (size_t)(loco_tensor_numel(a) / outer) * es, wb = (size_t)(loco_tensor_numel(b) / outer) * es;
    if (wa % 16 == 0 && wb % 16 == 0 && cuda_aligned(y->data, 16) && cuda_aligned(a->data, 16) &&
        cuda_aligned(b->data, 16) && wa + wb > 0) {
        const int64_t n = outer * (int64_t)((wa + wb) / 16);
        LOCO_LAUNCH(cuda_grid(c, n, 256), 256, 0, c->stream, concat_vec_kernel)(
            (uint4 *)y->data, (const uint4 *)a->data, (const uint4 *)b->data, (int64_t)(wa / 16), (int64_t)(wb / 16), n);
        return cuda_check_launch("concat_vec_kernel", err);
    }
    CUDA_TRY(copy_rows(c, (char *)y->data, wa + wb, (const char *)a->data, wa, outer, err));
    return copy_rows(c, (char *)y->data + wa, wa + wb, (const char *)b->data, wb, outer, err);
}

/* ---- nearest 2x upsampling of NCHW ------------------------------------------------------------- */

/* One thread per input element writes its 2x2 output block. Input row r = (n*C + c)*H + h
 * maps to output rows 2r and 2r+1 of width 2W. */
template <typename U> __global__ void upsample2x_kernel(U *y, const U *x, int64_t n, int64_t W) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int64_t r = i / W, col = i - r * W;
        U v = x[i];
        U *y0 = y + 2 * r * 2 * W + 2 * col;
        U *y1 = y0 + 2 * W;
        y0[0] = v;
        y0[1] = v;
        y1[0] = v;
        y1[1] = v;
    }
}

extern "C" loco_status cuda_op_upsample_nearest2x(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                                  loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    if (x->dtype != y->dtype)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda upsample_nearest2x: input %s, output %s",
                            cuda_dt(x->dtype), cuda_dt(y->dtype));
    int64_t n = loco_tensor_numel(x), W = x->shape[x->ndim - 1];
    if (n <= 0 || W <= 0) return LOCO_OK;
    SIZE_DISPATCH(loco_dtype_size(x->dtype), U, "upsample_nearest2x", err, {
        LOCO_LAUNCH(cuda_grid(c, n, 256), 256, 0, c->stream, upsample2x_kernel<U>)(
            (U *)y->data, (const U *)x->data, n, W);
    });
    return cuda_check_launch("upsample2x_kernel", err);
}

/* ---- embedding gather ------------------------------------------------------------------------------ */

typedef struct emb_ids {
    int32_t id[EMB_CHUNK];
} emb_ids;

/* Block r copies table row ids.id[r] into y row row0 + r, converting dtype. */
__global__ void embedding_kernel(void *y, int ydt, const void *table, int tdt, int64_t C, int64_t row0,
                                 const emb_ids ids) {
    int64_t src = (int64_t)ids.id[blockIdx.x] * C, dst = (row0 + blockIdx.x) * C;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) st_dyn(y, ydt, dst + j, ld_dyn(table, tdt, src + j));
}

extern "C" loco_status cuda_op_embedding(loco_backend *be, loco_tensor *y, const loco_tensor *table,
                                         const int32_t *ids, int64_t n, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    int64_t V = table->shape[0], C = table->shape[table->ndim - 1];
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return loco_err_set(err, LOCO_EINVAL, "embedding: id %d at position %lld is outside [0, %lld)", ids[i],
                                (long long)i, (long long)V);
    if (!cuda_is_act_dtype(y->dtype) || !cuda_is_act_dtype(table->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda embedding: table %s, output %s",
                            cuda_dt(table->dtype), cuda_dt(y->dtype));
    for (int64_t r0 = 0; r0 < n; r0 += EMB_CHUNK) {
        int cnt = (int)(n - r0 < EMB_CHUNK ? n - r0 : EMB_CHUNK);
        emb_ids chunk;
        memset(&chunk, 0, sizeof chunk);
        memcpy(chunk.id, ids + r0, (size_t)cnt * sizeof(int32_t));
        LOCO_LAUNCH(cnt, 128, 0, c->stream, embedding_kernel)(
            y->data, y->dtype, table->data, table->dtype, C, r0, chunk);
        CUDA_TRY(cuda_check_launch("embedding_kernel", err));
    }
    return LOCO_OK;
}

/* ---- set_channels: y[..., channels[j]] = values[j] -------------------------------------------------- */

typedef struct setc_args {
    int32_t ch[SETC_CHUNK];
    float val[SETC_CHUNK];
    int count;
} setc_args;

__global__ void set_channels_kernel(void *y, int ydt, int64_t rows, int64_t C, const setc_args a) {
    int64_t total = rows * a.count, stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int64_t r = i / a.count;
        int j = (int)(i - r * a.count);
        st_dyn(y, ydt, r * C + a.ch[j], a.val[j]);
    }
}

extern "C" loco_status cuda_op_set_channels(loco_backend *be, loco_tensor *y, const int32_t *channels,
                                            const float *values, int n, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    int64_t C = y->shape[y->ndim - 1];
    if (C <= 0 || n <= 0) return LOCO_OK;
    int64_t rows = loco_tensor_numel(y) / C;
    for (int j = 0; j < n; j++)
        if (channels[j] < 0 || channels[j] >= C)
            return loco_err_set(err, LOCO_EINVAL, "set_channels: channel %d is outside [0, %lld)", channels[j],
                                (long long)C);
    if (!cuda_is_act_dtype(y->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda set_channels: dtype %s", cuda_dt(y->dtype));
    /* A channel named twice keeps its last value, as a sequential loop would; the kernel writes
     * in parallel, so drop the earlier duplicates here. */
    int *last = (int *)malloc((size_t)C * sizeof(int));
    if (!last) return loco_err_set(err, LOCO_ENOMEM, "cuda set_channels: out of host memory");
    for (int j = 0; j < n; j++) last[channels[j]] = j;
    loco_status st = LOCO_OK;
    setc_args a;
    memset(&a, 0, sizeof a);
    for (int j = 0; j < n && st == LOCO_OK; j++) {
        if (last[channels[j]] == j) {
            a.ch[a.count] = channels[j];
            a.val[a.count] = values[j];
            a.count++;
        }
        if (a.count == SETC_CHUNK || (j == n - 1 && a.count > 0)) {
            LOCO_LAUNCH(cuda_grid(c, rows * a.count, 256), 256, 0, c->stream, set_channels_kernel)(
                y->data, y->dtype, rows, C, a);
            st = cuda_check_launch("set_channels_kernel", err);
            a.count = 0;
        }
    }
    free(last);
    return st;
}
