/* conv_gather.cuh: what a convolution's gather does to each input element it copies from inside
 * the image (padding stays 0), shared by the im2col fill (conv.cu) and the row-tap fill
 * (conv_rows.cu).
 *
 * The plain copy moves raw bits (U = uint16_t or uint32_t); the GroupNorm prologue of the fused
 * conv (U = the real element type) maps x to SiLU?(x * scale + shift) with its sample and
 * channel's (scale, shift) from cuda_gn_table, the very expression gn_apply_kernel writes, so a
 * gathered buffer holds what the gather of loco_group_norm's output would. row(z, ci) is called
 * once per (sample, input channel) before the elements of that channel. */
#pragma once

#include "cuda_device.h"

/* The 16 bytes of tap s (0, 1, 2) of V consecutive output pixels, from the V + 2 inputs e[j] =
 * x[first pixel - 1 + j] around them: e[s .. s + V - 1]. The three-tap fills (im2col's GroupNorm
 * fill in conv.cu, the row-tap fill in conv_rows.cu) read each input once and store all three. */
template <typename T> __device__ __forceinline__ uint4 tap_vector(const T (&e)[16 / sizeof(T) + 2], int s) {
    constexpr int V = 16 / sizeof(T);
    union {
        uint4 v;
        T e[V];
    } u;
#pragma unroll
    for (int v = 0; v < V; v++) u.e[v] = e[v + s];
    return u.v;
}

struct im2col_copy {
    __device__ __forceinline__ void row(int, int) {}
    template <typename U> __device__ __forceinline__ U operator()(U v) const { return v; }
};

template <typename T> struct im2col_group_norm {
    const float2 *table; /* [z][cin] of the chunk */
    int cin, silu;
    float scale, shift;
    __device__ __forceinline__ void row(int z, int ci) {
        const float2 t = table[z * cin + ci];
        scale = t.x;
        shift = t.y;
    }
    __device__ __forceinline__ T operator()(T v) const {
        float f = fmaf(to_f32(v), scale, shift);
        if (silu) f = fast_silu(f);
        return from_f32<T>(f);
    }
};
