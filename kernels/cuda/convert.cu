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

/* loco_quantize_u8 (quantize_u8.h) on the device, step for step: the _rn intrinsics keep nvcc
 * from fusing x * 0.5 + 0.5 into one FMA (the same value here, since the product is exact, but
 * the point is to leave nothing to the compiler), and __float2int_rz is the host's (int) cast. */
__device__ __forceinline__ uint8_t quantize_u8_dev(float x) {
    float v = __fadd_rn(__fmul_rn(x, 0.5f), 0.5f);
    v = v > 0.0f ? v : 0.0f;
    v = v < 1.0f ? v : 1.0f;
    const float y = __fmul_rn(v, 255.0f);
    const int r = __float2int_rz(y);
    const float d = __fsub_rn(y, (float)r);
    return (uint8_t)(r + ((d > 0.5f) | ((d == 0.5f) & (r & 1))));
}

/* One thread per source element (reads coalesced; the byte writes stride by c). *nan_at starts
 * at all ones and keeps the smallest index of a NaN. */
__global__ void quantize_u8_kernel(uint8_t *dst, const void *src, int dtype, int64_t c, int64_t hw, int64_t n,
                                   unsigned long long *nan_at) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x = ld_dyn(src, dtype, i);
        if (x != x) atomicMin(nan_at, (unsigned long long)i);
        const int64_t plane = i / hw, p = i - plane * hw, img = plane / c, ch = plane - img * c;
        dst[(img * hw + p) * c + ch] = quantize_u8_dev(x);
    }
}

/* Device -> host images (backend_impl.h's download_u8_images). One device buffer holds the
 * bytes and, after them (8-byte aligned), the NaN index; one copy brings both back. */
loco_status cuda_download_u8_images(cuda_impl *c, uint8_t *dst, const void *src, loco_dtype src_dtype, int64_t n,
                                    int64_t ch, int64_t hw, int64_t *nan_at, loco_err *err) {
    const int64_t total = n * ch * hw;
    const size_t bytes = ((size_t)total + 7) / 8 * 8;
    void *buf = NULL;
    CUDA_TRY(cuda_alloc_get(c, bytes + 8, &buf, err));
    unsigned long long *dnan = (unsigned long long *)((char *)buf + bytes);
    unsigned long long hnan = 0;
    loco_status st = cuda_check(cudaMemsetAsync(dnan, 0xff, 8, c->stream), "cuda u8 images: cudaMemsetAsync", err);
    if (st == LOCO_OK) {
        LOCO_LAUNCH(cuda_grid(c, total, 256), 256, 0, c->stream, quantize_u8_kernel)((uint8_t *)buf, src, src_dtype, ch,
                                                                                     hw, total, dnan);
        st = cuda_check_launch("quantize_u8_kernel", err);
    }
    if (st == LOCO_OK)
        st = cuda_check(cudaMemcpyAsync(dst, buf, (size_t)total, cudaMemcpyDeviceToHost, c->stream),
                        "cuda u8 images: cudaMemcpyAsync", err);
    if (st == LOCO_OK)
        st = cuda_check(cudaMemcpyAsync(&hnan, dnan, 8, cudaMemcpyDeviceToHost, c->stream),
                        "cuda u8 images: cudaMemcpyAsync", err);
    const loco_status sync = cuda_check(cudaStreamSynchronize(c->stream), "cuda u8 images: cudaStreamSynchronize", err);
    cuda_alloc_put(c, buf);
    if (st == LOCO_OK && sync == LOCO_OK) *nan_at = hnan == ~0ull ? -1 : (int64_t)hnan;
    return st != LOCO_OK ? st : sync;
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
