/* cuda_device.h: device-side helpers shared by the kernel files: float conversion for the
 * three activation dtypes, loads/stores whose dtype is only known at run time (for the small,
 * non-hot kernels, so they need one instantiation instead of nine), 16-byte vectors, warp
 * reductions and the host-side dtype switch that picks a kernel instantiation. */
#ifndef LOCO_CUDA_DEVICE_H
#define LOCO_CUDA_DEVICE_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_internal.h"

/* ---- scalar conversion ------------------------------------------------------------------- */

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

/* Run-time dtype: F32/F16/BF16/F64 (the only ones upload/copy accept). The switch is uniform
 * across a launch, so it costs a branch, not divergence. */
__device__ __forceinline__ float ld_dyn(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case LOCO_F16: return __half2float(((const __half *)p)[i]);
    case LOCO_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case LOCO_F64: return (float)((const double *)p)[i];
    default: return ((const float *)p)[i];
    }
}

__device__ __forceinline__ void st_dyn(void *p, int dtype, int64_t i, float v) {
    switch (dtype) {
    case LOCO_F16: ((__half *)p)[i] = __float2half_rn(v); break;
    case LOCO_BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); break;
    case LOCO_F64: ((double *)p)[i] = (double)v; break;
    default: ((float *)p)[i] = v; break;
    }
}

/* kernel<<<grid, block, smem, stream>>>, spelt LOCO_LAUNCH(grid, block, smem, stream, kernel)
 * so that the tests' CPU kernel emulator (tests/emu/cuda_emu.h) runs the same source. */
#ifndef LOCO_LAUNCH
#define LOCO_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

/* The same in clusters of `cluster` blocks along x (sm_90; grid.x a multiple of it):
 * LOCO_LAUNCH_CLUSTER(grid, block, smem, stream, cluster, kernel)(args) returns the launch's
 * cudaError_t (cudaLaunchKernelEx with a cluster dimension). */
#ifndef LOCO_LAUNCH_CLUSTER
template <class... P> struct loco_cluster_launcher {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    unsigned cluster;
    void (*kernel)(P...);
    template <class... A> cudaError_t operator()(A &&...a) const {
        cudaLaunchAttribute attr;
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = cluster, attr.val.clusterDim.y = 1, attr.val.clusterDim.z = 1;
        const cudaLaunchConfig_t cfg = {grid, block, smem, stream, &attr, 1};
        return cudaLaunchKernelEx(&cfg, kernel, static_cast<A &&>(a)...);
    }
};
template <class... P>
loco_cluster_launcher<P...> loco_launch_cluster(dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                                unsigned cluster, void (*k)(P...)) {
    return loco_cluster_launcher<P...>{grid, block, smem, stream, cluster, k};
}
#define LOCO_LAUNCH_CLUSTER(grid, block, smem, stream, cluster, ...) \
    loco_launch_cluster(dim3(grid), dim3(block), (size_t)(smem), (cudaStream_t)(stream), (unsigned)(cluster), __VA_ARGS__)
#endif

/* A kernel's dynamic shared memory, declared in its body: LOCO_DYN_SMEM(unsigned char, name, 1024)
 * is `extern __shared__ __align__(1024) unsigned char name[]`. The emulator makes it a pointer to
 * the running block's own buffer: the blocks of a cluster run together there, each with its own. */
#ifndef LOCO_DYN_SMEM
#define LOCO_DYN_SMEM(type, name, align) extern __shared__ __align__(align) type name[]
#endif

/* ---- 16-byte vectors: 8 halves or 4 floats per access -------------------------------------- */

template <typename T> struct __align__(16) vec16 {
    T v[16 / sizeof(T)];
};

/* Stores v whole at p (16-byte aligned global memory; vec16_store_shared: shared memory). A plain
 * `*(vec16<T> *)p = v` of 16-bit elements, or a uint4 store through a cast pointer, can compile
 * to four 4-byte or eight 2-byte stores (NVVM, CUDA 13: seen in conv_tma.cu's PTX), so on the
 * device each is one st.v4.b32 of the packed words. */
template <typename T> __device__ __forceinline__ void vec16_store(void *p, const vec16<T> &v) {
    uint32_t w[4];
    __builtin_memcpy(w, v.v, sizeof w);
#if defined(__CUDA_ARCH__) && !defined(LOCO_CUDA_EMU)
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                 : "memory");
#else
    __builtin_memcpy(p, w, sizeof w);
#endif
}
template <typename T> __device__ __forceinline__ void vec16_store_shared(void *p, const vec16<T> &v) {
    uint32_t w[4];
    __builtin_memcpy(w, v.v, sizeof w);
#if defined(__CUDA_ARCH__) && !defined(LOCO_CUDA_EMU)
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"((uint32_t)__cvta_generic_to_shared(p)),
                 "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                 : "memory");
#else
    __builtin_memcpy(p, w, sizeof w);
#endif
}

/* ---- activations (the CPU backend's definitions) ------------------------------------------ */

__device__ __forceinline__ float act_apply(float x, int act) {
    switch (act) {
    case LOCO_ACT_SILU: return x / (1.0f + expf(-x));
    case LOCO_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case LOCO_ACT_GELU_TANH: {
        float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    case LOCO_ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    default: return x;
    }
}

/* 2^x with one MUFU.EX2 (relative error about 2^-22; results below 2^-126 flush to zero).
 * exp2f compiles to the same instruction wrapped in a denormal range fix (a compare and two
 * predicated multiplies), which in the flash kernel's softmax and the GroupNorm+SiLU pass
 * cost three instructions per element for results that only matter below 2^-126. */
#ifndef LOCO_CUDA_EMU /* (the tests' CPU kernel emulator has its own) */
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
#endif

/* SiLU for the fused kernels: x * sigmoid(x) with the hardware exp2 and reciprocal (a few ulp
 * in fp32) instead of expf and an IEEE division, whose range fix-ups and slow-path branch cost
 * more than the memory access in a GroupNorm+SiLU pass. Below x = -87.3 the denominator
 * passes 2^126 (inf below -88.7), where __fdividef returns 0: the result is -0, the limit. */
__device__ __forceinline__ float fast_silu(float x) {
    return __fdividef(x, 1.0f + fast_exp2(x * -1.4426950408889634f));
}

/* ---- warp reductions ------------------------------------------------------------------------ */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- host: pick the instantiation for an activation dtype ---------------------------------- */

/* The loco dtype of a kernel element type: matches a template instantiation to a call
 * (cuda_dtype_of<T>::value). */
template <typename T> struct cuda_dtype_of;
template <> struct cuda_dtype_of<float> { static const loco_dtype value = LOCO_F32; };
template <> struct cuda_dtype_of<__half> { static const loco_dtype value = LOCO_F16; };
template <> struct cuda_dtype_of<__nv_bfloat16> { static const loco_dtype value = LOCO_BF16; };

#define CUDA_DISPATCH(dtype, T, what, err, ...)                                                     \
    switch (dtype) {                                                                                \
    case LOCO_F32: {                                                                                \
        typedef float T;                                                                            \
        __VA_ARGS__;                                                                                \
    } break;                                                                                        \
    case LOCO_F16: {                                                                                \
        typedef __half T;                                                                           \
        __VA_ARGS__;                                                                                \
    } break;                                                                                        \
    case LOCO_BF16: {                                                                               \
        typedef __nv_bfloat16 T;                                                                    \
        __VA_ARGS__;                                                                                \
    } break;                                                                                        \
    default:                                                                                        \
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda %s: dtype %s is not supported (F32, F16 " \
                            "or BF16)", what, loco_dtype_name(dtype));                              \
    }

#endif
