/* backend_impl.h: what a backend implements. Only kernels/ includes this.
 * kernels/backend.c validates arguments (dtypes, shapes, ranks) once for every backend and
 * then calls these hooks, so a hook may assume its inputs are consistent.
 * (The validation is in kernels/backend_ops.c and backend_ops_linear.c.) What a hook may rely on: every tensor belongs
 * to `be` and has data; all tensors of a call share one dtype from op_dtypes (copy excepted);
 * the output is never empty; an output aliases an input only where backend.h allows in-place
 * operation, and then exactly (same address, same element count), never partly; kv_index,
 * embedding ids and set_channels channels are in range; concat's axis is non-negative. */
#ifndef LOCO_BACKEND_IMPL_H
#define LOCO_BACKEND_IMPL_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loco_backend_ops {
    /* Releases everything the backend holds, `be` itself included (the constructor allocated it). */
    void (*destroy)(loco_backend *be);
    /* Tensor memory. backend.c keeps mem_current/mem_peak from these calls (bytes of live
     * tensors), so the hooks leave those fields alone. Never called with 0 bytes. */
    loco_status (*alloc)(loco_backend *be, size_t bytes, void **out, loco_err *err);
    void (*release)(loco_backend *be, void *p, size_t bytes);
    /* n elements from host src (src_dtype) into device dst (dst_dtype): float dtypes
     * (F32/F16/BF16/F64) convert; otherwise src_dtype == dst_dtype and the bytes are copied. */
    loco_status (*upload)(loco_backend *be, void *dst, loco_dtype dst_dtype, const void *src, loco_dtype src_dtype,
                          size_t n, loco_err *err);
    loco_status (*download_f32)(loco_backend *be, float *dst, const void *src, loco_dtype src_dtype, size_t n,
                                loco_err *err);
    /* loco_tensor_download_u8_images on n images of c planes of hw floats at src (contiguous);
     * *nan_at as there (never NULL here). */
    loco_status (*download_u8_images)(loco_backend *be, uint8_t *dst, const void *src, loco_dtype src_dtype,
                                      int64_t n, int64_t c, int64_t hw, int64_t *nan_at, loco_err *err);
    loco_status (*sync)(loco_backend *be, loco_err *err);

    loco_status (*linear)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                          const loco_tensor *bias, loco_act act, loco_err *err);
    /* Optional (NULL: loco_linear_accumulate runs linear into a temporary, then add). */
    loco_status (*linear_accumulate)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                     const loco_tensor *bias, loco_err *err);
    /* Optional (NULL: n loco_linear calls). May decline a call it has no fast form for by
     * returning LOCO_EUNSUPPORTED before launching anything: backend_ops_linear.c then runs the calls. */
    loco_status (*linear_many)(loco_backend *be, int n, loco_tensor *const *y, const loco_tensor *x,
                               const loco_tensor *const *w, const loco_tensor *const *bias, loco_err *err);
    /* Optional (NULL: linear into a temporary, then geglu). May decline a call by returning
     * LOCO_EUNSUPPORTED before launching anything: backend_ops_linear.c then runs those two. */
    loco_status (*linear_geglu)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                const loco_tensor *bias, loco_err *err);
    /* Optional (NULL: layer_norm into a temporary, then linear or linear_geglu). Called with the
     * arguments checked; may decline by returning LOCO_EUNSUPPORTED before launching anything. */
    loco_status (*ln_linear)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                             const loco_tensor *beta, float eps, const loco_tensor *w, const loco_tensor *bias,
                             int geglu, loco_err *err);
    /* Optional (NULL: transpose12 and linear, and add, as backend.h says). */
    loco_status (*linear_from_channels)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                        const loco_tensor *bias, loco_err *err);
    loco_status (*linear_to_channels)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *bias, const loco_tensor *r, loco_err *err);
    loco_status (*conv2d)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                          const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);
    /* Optional (NULL: loco_conv2d_fused runs the unfused ops). Called with f validated and
     * something to fuse. */
    loco_status (*conv2d_fused)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                const loco_tensor *bias, const loco_conv2d_params *p, const loco_conv2d_fusion *f,
                                loco_err *err);
    loco_status (*group_norm)(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                              const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu,
                              loco_err *err);
    loco_status (*layer_norm)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                              const loco_tensor *beta, float eps, loco_err *err);
    /* With p->qkv_packed, k and v are q: a row of q is q | k | v, each out->shape[2] wide. */
    loco_status (*attention)(loco_backend *be, loco_tensor *out, const loco_tensor *q, const loco_tensor *k,
                             const loco_tensor *v, const loco_attention_params *p, loco_err *err);
    loco_status (*activation)(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act act, loco_err *err);
    loco_status (*geglu)(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
    loco_status (*add)(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, loco_err *err);
    loco_status (*add_channel_bias)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *bias,
                                    loco_err *err);
    loco_status (*lincomb)(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x, const float *coef,
                           loco_err *err);
    loco_status (*copy)(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
    loco_status (*fill)(loco_backend *be, loco_tensor *y, float value, loco_err *err);
    loco_status (*transpose12)(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
    loco_status (*concat)(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, int axis,
                          loco_err *err);
    loco_status (*upsample_nearest2x)(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
    loco_status (*embedding)(loco_backend *be, loco_tensor *y, const loco_tensor *table, const int32_t *ids,
                             int64_t n, loco_err *err);
    loco_status (*set_channels)(loco_backend *be, loco_tensor *y, const int32_t *channels, const float *values,
                                int n, loco_err *err);

    /* Optional (NULL: loco_backend_selftest reports that there is nothing to check). */
    loco_status (*selftest)(loco_backend *be, char *report, size_t n, loco_err *err);
    /* Optional (NULL: loco_backend_device_memory says LOCO_EUNSUPPORTED). */
    loco_status (*device_memory)(loco_backend *be, size_t *free_bytes, size_t *total_bytes, loco_err *err);

    /* Graphs (backend.h, "graphs"); all NULL on a backend without them (the CPU one, or CUDA
     * with LOCO_CUDA_GRAPHS=0). kernels/backend_graph.c checks the call order (one pool active
     * per backend, capture only inside no other capture) before calling these. `g` is the
     * backend's own graph state made by graph_new. */
    loco_status (*graph_new)(loco_backend *be, void **g, loco_err *err);
    void (*graph_free)(loco_backend *be, void *g);
    /* While a pool is active, alloc takes memory from g's private pool (growing it only when
     * !frozen); release of a pool block returns it to that pool whether or not it is active. */
    loco_status (*graph_pool_begin)(loco_backend *be, void *g, int frozen, loco_err *err);
    size_t (*graph_pool_end)(loco_backend *be, void *g); /* device allocations added since begin */
    size_t (*graph_pool_bytes)(const loco_backend *be, const void *g);
    loco_status (*graph_capture_begin)(loco_backend *be, void *g, loco_err *err);
    /* keep 0: end the capture and drop it (an op failed while recording) */
    loco_status (*graph_capture_end)(loco_backend *be, void *g, int keep, loco_err *err);
    loco_status (*graph_launch)(loco_backend *be, void *g, loco_err *err);
} loco_backend_ops;

struct loco_backend {
    const loco_backend_ops *ops;
    loco_device device;
    loco_dtype act_dtype;
    char desc[512];
    size_t mem_current; /* maintained by backend.c */
    size_t mem_peak;
    /* Dtypes the ops accept, as a bit mask (1u << dtype); 0 means act_dtype only. A CUDA
     * backend with F16 activations may add F32 so that a VAE can run in fp32. Every tensor of
     * one op call has the same dtype (loco_copy converts). */
    unsigned op_dtypes;
    /* Op profiling (loco_backend_profile_start/stop): maintained by backend_ops.c. */
    int profiling;
    loco_op_profile profile;
    loco_op_profile_row profile_rows[LOCO_PROFILE_ROWS];
    int profile_nrows;
    /* Memory-pressure callbacks (loco_backend_add_reclaimer): maintained by backend_memory.c,
     * freed by loco_backend_destroy. */
    struct loco_reclaimer *reclaimers;
    int n_reclaimers, cap_reclaimers;
    int reclaiming; /* a reclaim is running: an allocation failing inside it starts no other */
    void *impl; /* the backend's own state */
};

/* Frees the reclaimer registry (loco_backend_destroy, before the backend's own destroy). */
void loco_backend_reclaimers_free(loco_backend *be);

/* Constructors of the concrete backends (kernels/cpu/, kernels/cuda/). The CUDA one returns
 * LOCO_EDEVICE with a clear message when no usable GPU or driver is present. */
loco_status loco_backend_cpu_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err);
loco_status loco_backend_cuda_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err);

#ifdef __cplusplus
}
#endif

#endif
