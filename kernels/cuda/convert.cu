/* convert.cu: dtype conversion on the device (uploads, downloads, loco_copy, and weights
 * whose dtype differs from the activations). One kernel with run-time dtypes: conversions
 * are memory-bound and rare on the hot path, so one instantiation is enough. */
#include "cuda_device.h"

__global__ void convert_kernel(void *dst, int dst_dtype, const void *src, int src_dtype, int64_t n) {
    int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        st_dyn(dst, dst_dtype, i, ld_dyn(src, src_dtype, i));
}

loco_status cuda_convert(cuda_impl *c, void *dst, loco_dtype dst_dtype, const void *src, loco_dtype src_dtype,
                         int64_t n, loco_err *err) {
    if (n <= 0) return LOCO_OK;
    if (dst_dtype == src_dtype)
        return cuda_check(cudaMemcpyAsync(dst, src, (size_t)n * loco_dtype_size(dst_dtype), cudaMemcpyDeviceToDevice,
                                          c->stream),
                          "cuda convert: cudaMemcpyAsync", err);
    LOCO_LAUNCH(cuda_grid(c, n, 256), 256, 0, c->stream, convert_kernel)(dst, dst_dtype, src, src_dtype, n);
    return cuda_check_launch("convert_kernel", err);
}

loco_status cuda_as_dtype(cuda_impl *c, const loco_tensor *t, loco_dtype dtype, const void **out, void **owned,
                          loco_err *err) {
    *owned = NULL;
    *out = t->data;
    if (t->dtype == dtype) return LOCO_OK;
    int64_t n = loco_tensor_numel(t);
    void *p = NULL;
    CUDA_TRY(cuda_alloc_get(c, (size_t)n * loco_dtype_size(dtype), &p, err));
    loco_status st = cuda_convert(c, p, dtype, t->data, t->dtype, n, err);
    if (st != LOCO_OK) {
        cuda_alloc_put(c, p);
        return st;
    }
    *owned = p;
    *out = p;
    return LOCO_OK;
}

extern "C" loco_status cuda_op_copy(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    if (y->data == x->data && y->dtype == x->dtype) return LOCO_OK;
    return cuda_convert(cuda_of(be), y->data, y->dtype, x->data, x->dtype, loco_tensor_numel(x), err);
}
