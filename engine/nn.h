/* nn.h: building blocks shared by the UNet and the VAE (diffusers ResnetBlock2D, the VAE's
 * single-head spatial attention, Downsample2D, Upsample2D), plus the small machinery every
 * model builder needs: loading a named tensor with a shape check into the backend, and a table
 * of all loaded parameters by their diffusers names (edits look tensors up there; freeing a
 * model frees exactly what the table lists).
 *
 * Forward functions take their input by const pointer and allocate their output (`out` is
 * overwritten; the caller frees it with loco_tensor_free). Intermediates are freed before
 * returning, so peak memory is the input, the output and one or two temporaries. Outputs and
 * intermediates take the input's dtype, which must be the dtype the block's weights were loaded
 * in (loco_loader.dtype): that is how one backend runs an F16 UNet next to an F32 VAE. */
#ifndef LOCO_NN_H
#define LOCO_NN_H

#include "backend.h"
#include "weights.h"

/* ---- parameter table ------------------------------------------------------------------- */

typedef struct loco_param {
    char *name;       /* diffusers name, e.g. "down_blocks.0.resnets.0.conv1.weight" */
    loco_tensor *t;   /* points into the owning model's holder struct */
} loco_param;

typedef struct loco_params {
    loco_param *items;
    size_t n, cap;
} loco_params;

/* Frees every listed tensor and the names. Safe on a zeroed table. */
void loco_params_free(loco_params *p);
/* The tensor named `name`, or NULL. */
loco_tensor *loco_params_find(const loco_params *p, const char *name);

/* What a builder loads from: the weight set, the backend and the table to record into. */
typedef struct loco_loader {
    loco_backend *be;
    const loco_weights *w; /* NULL: build the structure only, load nothing (site tables) */
    loco_params *params;
    /* dtype the weights are stored in on the backend, i.e. the model's compute dtype: the
     * activation dtype (loco_loader_init), unless the model asks for another that the backend
     * accepts (loco_backend_accepts_dtype), e.g. an SD-XL VAE in F32 on an F16 backend */
    loco_dtype dtype;
} loco_loader;

void loco_loader_init(loco_loader *ld, loco_backend *be, const loco_weights *w, loco_params *params);

/* Load `<prefix>.<suffix>` (just `suffix` when prefix is empty), check its shape (ndim dims of
 * `shape`), allocate it on the backend, upload (converting from the file dtype) and record it.
 * Errors name the tensor, the expected and the actual shape and the file (from the weights layer). */
loco_status loco_load_tensor(const loco_loader *ld, const char *prefix, const char *suffix, int ndim,
                             const int64_t *shape, loco_tensor *dst, loco_err *err);
/* Whether `<prefix>.<suffix>` exists in the weight set. */
int loco_has_tensor(const loco_loader *ld, const char *prefix, const char *suffix);

/* A reshaped view of a whole tensor (same numel). */
loco_status loco_reshape_view(const loco_tensor *src, int ndim, const int64_t *shape, loco_tensor *out,
                              loco_err *err);

/* Observer of named intermediate outputs (top-level blocks of the UNet and the VAE): used by the
 * reference tests and by tools that inspect activations. The tensor must not be modified. */
typedef loco_status (*loco_probe_fn)(void *ctx, const char *name, const loco_tensor *t, loco_err *err);

/* ---- ResnetBlock2D -------------------------------------------------------------------------- */

typedef struct loco_resnet {
    int in_ch, out_ch, temb_ch; /* temb_ch 0: no time-embedding projection (VAE) */
    int groups;
    float eps;
    float out_scale;            /* output_scale_factor: the output is divided by it */
    int has_shortcut;           /* 1x1 conv_shortcut when in_ch != out_ch */
    loco_tensor norm1_w, norm1_b, conv1_w, conv1_b, temb_w, temb_b;
    loco_tensor norm2_w, norm2_b, conv2_w, conv2_b, short_w, short_b;
} loco_resnet;

/* Load `<prefix>.norm1...` etc. Tensors are recorded in ld->params (freed with the table). */
loco_status loco_resnet_load(const loco_loader *ld, const char *prefix, int in_ch, int out_ch, int temb_ch,
                             int groups, float eps, float out_scale, loco_resnet *r, loco_err *err);
/* out = resnet(x, temb). temb_act is SiLU(temb) [B, temb_ch] (the nonlinearity diffusers applies
 * before time_emb_proj, computed once per forward by the caller), or NULL when temb_ch is 0. */
loco_status loco_resnet_forward(loco_backend *be, const loco_resnet *r, const loco_tensor *x,
                                const loco_tensor *temb_act, loco_tensor *out, loco_err *err);
/* The same with the time-embedding projection time_emb_proj(temb_act) [B, out_ch] given
 * (temb_proj; a UNet computes all of its blocks' at once with loco_linear_many), or computed
 * here when temb_proj is NULL. */
loco_status loco_resnet_forward_proj(loco_backend *be, const loco_resnet *r, const loco_tensor *x,
                                     const loco_tensor *temb_act, const loco_tensor *temb_proj, loco_tensor *out,
                                     loco_err *err);

/* ---- spatial self-attention (VAE mid block) --------------------------------------------------- */

typedef struct loco_spatial_attn {
    int channels, heads, groups;
    float eps;
    float out_scale; /* rescale_output_factor */
    loco_tensor gn_w, gn_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
} loco_spatial_attn;

/* diffusers Attention with group_norm, biased projections and a residual: `<prefix>.group_norm`,
 * `to_q`, `to_k`, `to_v`, `to_out.0`. heads = channels / head_dim (1 for the SD VAEs). */
loco_status loco_spatial_attn_load(const loco_loader *ld, const char *prefix, int channels, int head_dim,
                                   int groups, float eps, float out_scale, loco_spatial_attn *a, loco_err *err);
/* out = (x + to_out(attention(GN(x)))) / out_scale, x [B, C, H, W]. */
loco_status loco_spatial_attn_forward(loco_backend *be, const loco_spatial_attn *a, const loco_tensor *x,
                                      loco_tensor *out, loco_err *err);

/* ---- Downsample2D / Upsample2D ---------------------------------------------------------------- */

typedef struct loco_downsample {
    int channels, out_channels;
    int padding; /* diffusers `padding`: 1 (UNet) is symmetric; 0 (VAE encoder) pads (0,1,0,1) first */
    loco_tensor conv_w, conv_b;
} loco_downsample;

loco_status loco_downsample_load(const loco_loader *ld, const char *prefix, int channels, int out_channels,
                                 int padding, loco_downsample *d, loco_err *err);
/* 3x3 stride-2 conv: [B, C, H, W] -> [B, Cout, H', W']. */
loco_status loco_downsample_forward(loco_backend *be, const loco_downsample *d, const loco_tensor *x,
                                    loco_tensor *out, loco_err *err);

typedef struct loco_upsample {
    int channels, out_channels;
    loco_tensor conv_w, conv_b;
} loco_upsample;

loco_status loco_upsample_load(const loco_loader *ld, const char *prefix, int channels, int out_channels,
                               loco_upsample *u, loco_err *err);
/* Nearest x2, then 3x3 conv pad 1: [B, C, H, W] -> [B, Cout, 2H, 2W]. */
loco_status loco_upsample_forward(loco_backend *be, const loco_upsample *u, const loco_tensor *x,
                                  loco_tensor *out, loco_err *err);

/* ---- plain convolution holder (conv_in, conv_out, quant convs) --------------------------------- */

typedef struct loco_conv {
    int in_ch, out_ch, k;
    loco_tensor w, b;
} loco_conv;

loco_status loco_conv_load(const loco_loader *ld, const char *prefix, int in_ch, int out_ch, int k, loco_conv *c,
                           loco_err *err);
/* Stride 1, padding (k-1)/2 ("same"). */
loco_status loco_conv_forward(loco_backend *be, const loco_conv *c, const loco_tensor *x, loco_tensor *out,
                              loco_err *err);

/* GroupNorm holder (conv_norm_out). */
typedef struct loco_gnorm {
    int channels, groups;
    float eps;
    loco_tensor w, b;
} loco_gnorm;

loco_status loco_gnorm_load(const loco_loader *ld, const char *prefix, int channels, int groups, float eps,
                            loco_gnorm *g, loco_err *err);
loco_status loco_gnorm_forward(loco_backend *be, const loco_gnorm *g, const loco_tensor *x, int fuse_silu,
                               loco_tensor *out, loco_err *err);

/* Linear holder. */
typedef struct loco_lin {
    int in_f, out_f;
    loco_tensor w, b; /* b zeroed (data NULL) when the layer has no bias */
} loco_lin;

loco_status loco_lin_load(const loco_loader *ld, const char *prefix, int in_f, int out_f, int bias, loco_lin *l,
                          loco_err *err);
/* n bias-free linears of one input, `<prefix>.<names[i]>.weight` each [out_f, in_f], loaded
 * as one: their weights stacked in one [n * out_f, in_f] tensor (*stacked: one GEMM of n times
 * the width), recorded as `<prefix>.<stacked_name>.weight`, and each part a view of its rows
 * recorded under its own name, so edits and exports see the checkpoint's parameters. An edit
 * that replaces a part breaks the stack: check loco_lin_stack_intact before using *stacked. */
loco_status loco_lin_load_stacked(const loco_loader *ld, const char *prefix, const char *const *names, int n,
                                  const char *stacked_name, int in_f, int out_f, loco_lin *stacked, loco_lin *parts,
                                  loco_err *err);
/* Whether parts[0..n) are still the consecutive row blocks of stacked's weight. */
int loco_lin_stack_intact(const loco_lin *stacked, const loco_lin *parts, int n);
/* out[..., out_f] = act(x[..., in_f] W^T + b); out gets x's leading shape. */
loco_status loco_lin_forward(loco_backend *be, const loco_lin *l, const loco_tensor *x, loco_act act,
                             loco_tensor *out, loco_err *err);
/* out[..., out_f] = LayerNorm(x; gamma, beta, eps) W^T + b (loco_ln_linear): the normalised x is
 * not written where the backend folds the LayerNorm into the GEMM. */
loco_status loco_lin_forward_ln(loco_backend *be, const loco_lin *l, const loco_tensor *x, const loco_tensor *gamma,
                                const loco_tensor *beta, float eps, loco_tensor *out, loco_err *err);
/* y[..., out_f] += x[..., in_f] W^T + b, in place (loco_linear_accumulate): a residual add
 * folded into the projection. */
loco_status loco_lin_accumulate(loco_backend *be, const loco_lin *l, const loco_tensor *x, loco_tensor *y,
                                loco_err *err);

#endif
