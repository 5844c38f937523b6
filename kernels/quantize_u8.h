/* quantize_u8.h: one pixel value as diffusers' output postprocess gives it, for the host (the CPU
 * backend's loco_tensor_download_u8_images and engine/image.c). convert.cu has the device twin,
 * written with explicit round-to-nearest intrinsics so that nvcc cannot fuse its steps; the two
 * must agree bit for bit (test_cuda_ops checks them on ties and a sweep of values). */
#ifndef LOCO_QUANTIZE_U8_H
#define LOCO_QUANTIZE_U8_H

#include <stdint.h>

/* numpy's round on y in [0, 255]: nearest, ties to even. By hand rather than with rintf, so that
 * the result never depends on the thread's rounding mode; with a truncating conversion (floor,
 * for y >= 0) and no branches, since floorf is a libm call on baseline x86-64 and the compares
 * of noisy pixels mispredict: 3.7 ms per 512x512 RGB image against 13-15 ms for the floorf form
 * (this project's first version), with the same byte for each of the 2^32 floats (checked
 * exhaustively). y - r is exact: y and r are close floats. */
static inline int loco_round_half_even_u8(float y) {
    const int r = (int)y;
    const float d = y - (float)r;
    return r + ((d > 0.5f) | ((d == 0.5f) & (r & 1)));
}

/* clamp(x * 0.5 + 0.5, 0, 1) * 255, rounded: the same fp32 operations, in the same order, as
 * diffusers' denormalize() then numpy_to_pil(). A NaN fails both compares and becomes 0 (the
 * callers report NaN as an error). */
static inline uint8_t loco_quantize_u8(float x) {
    float v = x * 0.5f + 0.5f;
    v = v > 0.0f ? v : 0.0f;
    v = v < 1.0f ? v : 1.0f;
    return (uint8_t)loco_round_half_even_u8(v * 255.0f);
}

#endif
