/* backend_impl.h: what a backend implements. Only kernels/ includes this.
 * kernels/backend.c validates arguments (dtypes, shapes, ranks) once for every backend and
 * then calls these hooks, so a hook may assume its inputs are consistent. */
#ifndef LOCO_BACKEND_IMPL_H
#define LOCO_BACKEND_IMPL_H

#include "backend.h"

typedef struct loco_backend_ops {
    void (*destroy)(loco_backend *be);
    loco_status (*alloc)(loco_backend *be, size_t bytes, void **out, loco_err *err);
    void (*release)(loco_backend *be, void *p, size_t bytes);
    /* n elements from host src (src_dtype) into device dst (dst_dtype). */
    loco_status (*upload)(loco_backend *be, void *dst, loco_dtype dst_dtype, const void *src, loco_dtype src_dtype,
                          size_t n, loco_err *err);
    loco_status (*download_f32)(loco_backend *be, float *dst, const void *src, loco_dtype src_dtype, size_t n,
                                loco_err *err);
    loco_status (*sync)(loco_backend *be, loco_err *err);

    loco_status (*linear)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                          const loco_tensor *bias, loco_act act, loco_err *err);
    loco_status (*conv2d)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                          const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);
    loco_status (*group_norm)(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                              const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu,
                              loco_err *err);
    loco_status (*layer_norm)(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                              const loco_tensor *beta, float eps, loco_err *err);
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
} loco_backend_ops;

struct loco_backend {
    const loco_backend_ops *ops;
    loco_device device;
    loco_dtype act_dtype;
    char desc[256];
    size_t mem_current;
    size_t mem_peak;
    void *impl; /* the backend's own state */
};

/* Constructors of the concrete backends (kernels/cpu/, kernels/cuda/). The CUDA one returns
 * LOCO_EDEVICE with a clear message when no usable GPU or driver is present. */
loco_status loco_backend_cpu_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err);
loco_status loco_backend_cuda_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err);

#endif
