/* nn.c: parameter loading and the blocks shared by the UNet and the VAE. The arithmetic
 * follows diffusers (resnet.py, attention_processor.py AttnProcessor2_0, downsampling.py,
 * upsampling.py) operation by operation, so fp32 results match torch to rounding. */
#include "nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parameter table ----------------------------------------------------------------------- */

void loco_params_free(loco_params *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) {
        loco_tensor_free(p->items[i].t);
        free(p->items[i].name);
    }
    free(p->items);
    memset(p, 0, sizeof *p);
}

loco_tensor *loco_params_find(const loco_params *p, const char *name) {
    for (size_t i = 0; p && name && i < p->n; i++)
        if (strcmp(p->items[i].name, name) == 0) return p->items[i].t;
    return NULL;
}

static loco_status params_add(loco_params *p, const char *name, loco_tensor *t, loco_err *err) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        loco_param *items = realloc(p->items, cap * sizeof *items);
        if (!items) return loco_err_set(err, LOCO_ENOMEM, "parameter table: out of memory adding '%s'", name);
        p->items = items;
        p->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) return loco_err_set(err, LOCO_ENOMEM, "parameter table: out of memory adding '%s'", name);
    p->items[p->n].name = copy;
    p->items[p->n].t = t;
    p->n++;
    return LOCO_OK;
}

void loco_loader_init(loco_loader *ld, loco_backend *be, const loco_weights *w, loco_params *params) {
    ld->be = be;
    ld->w = w;
    ld->params = params;
    ld->dtype = be ? loco_backend_act_dtype(be) : LOCO_F32;
}

static void join_name(char *buf, size_t n, const char *prefix, const char *suffix) {
    if (prefix && *prefix)
        snprintf(buf, n, "%s.%s", prefix, suffix);
    else
        snprintf(buf, n, "%s", suffix);
}

int loco_has_tensor(const loco_loader *ld, const char *prefix, const char *suffix) {
    char name[512];
    join_name(name, sizeof name, prefix, suffix);
    return loco_weights_get(ld->w, name) != NULL;
}

loco_status loco_load_tensor(const loco_loader *ld, const char *prefix, const char *suffix, int ndim,
                             const int64_t *shape, loco_tensor *dst, loco_err *err) {
    if (!ld->w) return LOCO_OK; /* structure-only build (site tables from a config) */
    char name[512];
    join_name(name, sizeof name, prefix, suffix);
    const loco_stored_tensor *st = NULL;
    loco_status s = loco_weights_require(ld->w, name, ndim, shape, &st, err);
    if (s) return s;
    s = loco_tensor_alloc(ld->be, ld->dtype, ndim, shape, dst, err);
    if (s) return loco_err_prefix(err, "loading '%s'", name);
    s = loco_tensor_upload(dst, st->data, st->dtype, err);
    if (!s && ld->params) s = params_add(ld->params, name, dst, err);
    if (s) {
        loco_tensor_free(dst);
        return loco_err_prefix(err, "loading '%s' from %s", name, loco_weights_source(ld->w));
    }
    return LOCO_OK;
}

loco_status loco_reshape_view(const loco_tensor *src, int ndim, const int64_t *shape, loco_tensor *out,
                              loco_err *err) {
    return loco_tensor_view(src, 0, ndim, shape, out, err);
}

/* Activations of a block are allocated in the dtype of its input: a model computes in the dtype
 * it was loaded in (loco_loader.dtype) and its input arrives in that dtype, so the same blocks
 * serve an F16 UNet and an F32 VAE on one backend. */
static loco_status alloc_like(loco_backend *be, const loco_tensor *x, int ndim, const int64_t *shape,
                              loco_tensor *out, loco_err *err) {
    return loco_tensor_alloc(be, x->dtype, ndim, shape, out, err);
}

/* ---- small holders --------------------------------------------------------------------------- */

loco_status loco_conv_load(const loco_loader *ld, const char *prefix, int in_ch, int out_ch, int k, loco_conv *c,
                           loco_err *err) {
    c->in_ch = in_ch;
    c->out_ch = out_ch;
    c->k = k;
    loco_status s = loco_load_tensor(ld, prefix, "weight", 4, (int64_t[]){out_ch, in_ch, k, k}, &c->w, err);
    if (!s) s = loco_load_tensor(ld, prefix, "bias", 1, (int64_t[]){out_ch}, &c->b, err);
    return s;
}

loco_status loco_conv_forward(loco_backend *be, const loco_conv *c, const loco_tensor *x, loco_tensor *out,
                              loco_err *err) {
    int p = (c->k - 1) / 2;
    int64_t h = x->shape[2] + 2 * p - c->k + 1, w = x->shape[3] + 2 * p - c->k + 1;
    loco_status s = alloc_like(be, x, 4, (int64_t[]){x->shape[0], c->out_ch, h, w}, out, err);
    if (s) return s;
    loco_conv2d_params cp = {.stride = 1, .pad = {p, p, p, p}};
    s = loco_conv2d(be, out, x, &c->w, &c->b, &cp, err);
    if (s) loco_tensor_free(out);
    return s;
}

loco_status loco_gnorm_load(const loco_loader *ld, const char *prefix, int channels, int groups, float eps,
                            loco_gnorm *g, loco_err *err) {
    g->channels = channels;
    g->groups = groups;
    g->eps = eps;
    if (groups <= 0 || channels % groups != 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: %d channels cannot be split into %d groups", prefix, channels,
                            groups);
    loco_status s = loco_load_tensor(ld, prefix, "weight", 1, (int64_t[]){channels}, &g->w, err);
    if (!s) s = loco_load_tensor(ld, prefix, "bias", 1, (int64_t[]){channels}, &g->b, err);
    return s;
}

loco_status loco_gnorm_forward(loco_backend *be, const loco_gnorm *g, const loco_tensor *x, int fuse_silu,
                               loco_tensor *out, loco_err *err) {
    loco_status s = alloc_like(be, x, x->ndim, x->shape, out, err);
    if (s) return s;
    s = loco_group_norm(be, out, x, g->groups, &g->w, &g->b, g->eps, fuse_silu, err);
    if (s) loco_tensor_free(out);
    return s;
}

loco_status loco_lin_load(const loco_loader *ld, const char *prefix, int in_f, int out_f, int bias, loco_lin *l,
                          loco_err *err) {
    l->in_f = in_f;
    l->out_f = out_f;
    loco_status s = loco_load_tensor(ld, prefix, "weight", 2, (int64_t[]){out_f, in_f}, &l->w, err);
    if (!s && bias) s = loco_load_tensor(ld, prefix, "bias", 1, (int64_t[]){out_f}, &l->b, err);
    return s;
}

loco_status loco_lin_load_stacked(const loco_loader *ld, const char *prefix, const char *const *names, int n,
                                  const char *stacked_name, int in_f, int out_f, loco_lin *stacked, loco_lin *parts,
                                  loco_err *err) {
    memset(stacked, 0, sizeof *stacked);
    stacked->in_f = in_f;
    stacked->out_f = n * out_f;
    for (int i = 0; i < n; i++) {
        memset(&parts[i], 0, sizeof parts[i]);
        parts[i].in_f = in_f;
        parts[i].out_f = out_f;
    }
    if (!ld->w) return LOCO_OK; /* structure-only build */
    char name[512];
    const loco_stored_tensor *st[8];
    if (n < 1 || n > 8) return loco_err_set(err, LOCO_EINVAL, "%s: cannot stack %d linears", prefix, n);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s.%s.weight", prefix, names[i]);
        loco_status s = loco_weights_require(ld->w, name, 2, (int64_t[]){out_f, in_f}, &st[i], err);
        if (s) return s;
    }
    snprintf(name, sizeof name, "%s.%s.weight", prefix, stacked_name);
    loco_status s = loco_tensor_alloc(ld->be, ld->dtype, 2, (int64_t[]){(int64_t)n * out_f, in_f}, &stacked->w, err);
    if (s) return loco_err_prefix(err, "loading '%s'", name);
    if (ld->params && (s = params_add(ld->params, name, &stacked->w, err))) {
        loco_tensor_free(&stacked->w);
        return s;
    }
    /* from here the parameter table owns the stack: an error leaves it there to be freed */
    for (int i = 0; i < n && !s; i++) {
        snprintf(name, sizeof name, "%s.%s.weight", prefix, names[i]);
        s = loco_tensor_view(&stacked->w, (int64_t)i * out_f * in_f, 2, (int64_t[]){out_f, in_f}, &parts[i].w, err);
        if (!s) s = loco_tensor_upload(&parts[i].w, st[i]->data, st[i]->dtype, err);
        if (!s && ld->params) s = params_add(ld->params, name, &parts[i].w, err);
        if (s) loco_err_prefix(err, "loading '%s' from %s", name, loco_weights_source(ld->w));
    }
    if (s && !ld->params) loco_tensor_free(&stacked->w);
    return s;
}

int loco_lin_stack_intact(const loco_lin *stacked, const loco_lin *parts, int n) {
    const char *base = stacked->w.data;
    if (!base) return 0;
    for (int i = 0; i < n; i++) {
        const size_t rows = (size_t)i * (size_t)parts[i].out_f * (size_t)parts[i].in_f;
        if (parts[i].w.data != base + rows * loco_dtype_size(stacked->w.dtype) || parts[i].w.dtype != stacked->w.dtype)
            return 0;
    }
    return 1;
}

/* A linear layer's output for x: x's leading shape, out_f last. */
static loco_status lin_out(loco_backend *be, const loco_lin *l, const loco_tensor *x, loco_tensor *out,
                           loco_err *err) {
    int64_t shape[LOCO_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = l->out_f;
    return alloc_like(be, x, x->ndim, shape, out, err);
}

loco_status loco_lin_forward(loco_backend *be, const loco_lin *l, const loco_tensor *x, loco_act act,
                             loco_tensor *out, loco_err *err) {
    loco_status s = lin_out(be, l, x, out, err);
    if (s) return s;
    s = loco_linear(be, out, x, &l->w, l->b.data ? &l->b : NULL, act, err);
    if (s) loco_tensor_free(out);
    return s;
}

loco_status loco_lin_forward_ln(loco_backend *be, const loco_lin *l, const loco_tensor *x, const loco_tensor *gamma,
                                const loco_tensor *beta, float eps, loco_tensor *out, loco_err *err) {
    loco_status s = lin_out(be, l, x, out, err);
    if (s) return s;
    s = loco_ln_linear(be, out, x, gamma, beta, eps, &l->w, l->b.data ? &l->b : NULL, 0, err);
    if (s) loco_tensor_free(out);
    return s;
}

loco_status loco_lin_accumulate(loco_backend *be, const loco_lin *l, const loco_tensor *x, loco_tensor *y,
                                loco_err *err) {
    return loco_linear_accumulate(be, y, x, &l->w, l->b.data ? &l->b : NULL, err);
}

/* y = y / f as diffusers writes it; skipped when f is 1 (division by 1 is exact). */
static loco_status divide_by(loco_backend *be, loco_tensor *y, float f, loco_err *err) {
    if (f == 1.0f) return LOCO_OK;
    const loco_tensor *xs[1] = {y};
    float coef = 1.0f / f;
    return loco_lincomb(be, y, 1, xs, &coef, err);
}

/* ---- ResnetBlock2D ------------------------------------------------------------------------------ */

loco_status loco_resnet_load(const loco_loader *ld, const char *prefix, int in_ch, int out_ch, int temb_ch,
                             int groups, float eps, float out_scale, loco_resnet *r, loco_err *err) {
    memset(r, 0, sizeof *r);
    r->in_ch = in_ch;
    r->out_ch = out_ch;
    r->temb_ch = temb_ch;
    r->groups = groups;
    r->eps = eps;
    r->out_scale = out_scale;
    r->has_shortcut = in_ch != out_ch;
    if (groups <= 0 || in_ch % groups != 0 || out_ch % groups != 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: channels %d -> %d cannot be split into %d groups", prefix, in_ch,
                            out_ch, groups);
    if (out_scale == 0.0f)
        return loco_err_set(err, LOCO_EINVAL, "%s: output scale factor must not be 0", prefix);
    const int64_t c_in[1] = {in_ch}, c_out[1] = {out_ch};
    loco_status s;
    if ((s = loco_load_tensor(ld, prefix, "norm1.weight", 1, c_in, &r->norm1_w, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "norm1.bias", 1, c_in, &r->norm1_b, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "conv1.weight", 4, (int64_t[]){out_ch, in_ch, 3, 3}, &r->conv1_w, err)))
        return s;
    if ((s = loco_load_tensor(ld, prefix, "conv1.bias", 1, c_out, &r->conv1_b, err))) return s;
    if (temb_ch > 0) {
        if ((s = loco_load_tensor(ld, prefix, "time_emb_proj.weight", 2, (int64_t[]){out_ch, temb_ch}, &r->temb_w,
                                  err)))
            return s;
        if ((s = loco_load_tensor(ld, prefix, "time_emb_proj.bias", 1, c_out, &r->temb_b, err))) return s;
    }
    if ((s = loco_load_tensor(ld, prefix, "norm2.weight", 1, c_out, &r->norm2_w, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "norm2.bias", 1, c_out, &r->norm2_b, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "conv2.weight", 4, (int64_t[]){out_ch, out_ch, 3, 3}, &r->conv2_w, err)))
        return s;
    if ((s = loco_load_tensor(ld, prefix, "conv2.bias", 1, c_out, &r->conv2_b, err))) return s;
    if (r->has_shortcut) {
        if ((s = loco_load_tensor(ld, prefix, "conv_shortcut.weight", 4, (int64_t[]){out_ch, in_ch, 1, 1},
                                  &r->short_w, err)))
            return s;
        if ((s = loco_load_tensor(ld, prefix, "conv_shortcut.bias", 1, c_out, &r->short_b, err))) return s;
    }
    return LOCO_OK;
}

/* A fusion that runs the block's GroupNorm + SiLU (gamma, beta) in front of a conv. */
static void resnet_norm_fusion(const loco_resnet *r, const loco_tensor *gamma, const loco_tensor *beta,
                               loco_conv2d_fusion *f) {
    loco_conv2d_fusion_init(f);
    f->norm_gamma = gamma;
    f->norm_beta = beta;
    f->norm_groups = r->groups;
    f->norm_eps = r->eps;
    f->norm_silu = 1;
}

loco_status loco_resnet_forward(loco_backend *be, const loco_resnet *r, const loco_tensor *x,
                                const loco_tensor *temb_act, loco_tensor *out, loco_err *err) {
    return loco_resnet_forward_proj(be, r, x, temb_act, NULL, out, err);
}

loco_status loco_resnet_forward_proj(loco_backend *be, const loco_resnet *r, const loco_tensor *x,
                                     const loco_tensor *temb_act, const loco_tensor *temb_proj, loco_tensor *out,
                                     loco_err *err) {
    if (x->ndim != 4 || x->shape[1] != r->in_ch)
        return loco_err_set(err, LOCO_EINVAL, "resnet: input has %lld channels, expected %d",
                            (long long)(x->ndim == 4 ? x->shape[1] : -1), r->in_ch);
    if (r->temb_ch > 0 && !temb_act && !temb_proj)
        return loco_err_set(err, LOCO_EINVAL, "resnet: a time embedding is required");
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    if (temb_proj && (temb_proj->ndim != 2 || temb_proj->shape[0] != B || temb_proj->shape[1] != r->out_ch))
        return loco_err_set(err, LOCO_EINVAL, "resnet: the time projection must be [%lld, %d]", (long long)B,
                            r->out_ch);
    const int64_t oshape[4] = {B, r->out_ch, H, W};
    loco_tensor h = {0}, tp = {0}, y = {0}, sc = {0};
    const loco_conv2d_params p3 = {.stride = 1, .pad = {1, 1, 1, 1}};
    loco_status s;

    /* conv1(SiLU(norm1(x))) + conv1.bias + time_emb_proj(SiLU(temb)) broadcast over H, W: one
     * fused call (loco_conv2d_fused: on the GPU the normalised x is never written) */
    loco_conv2d_fusion f1;
    resnet_norm_fusion(r, &r->norm1_w, &r->norm1_b, &f1);
    if (r->temb_ch > 0 && temb_proj) {
        f1.sample_bias = temb_proj;
    } else if (r->temb_ch > 0) {
        if ((s = alloc_like(be, x, 2, (int64_t[]){B, r->out_ch}, &tp, err))) goto done;
        if ((s = loco_linear(be, &tp, temb_act, &r->temb_w, &r->temb_b, LOCO_ACT_NONE, err))) goto done;
        f1.sample_bias = &tp;
    }
    if ((s = alloc_like(be, x, 4, oshape, &h, err))) goto done;
    if ((s = loco_conv2d_fused(be, &h, x, &r->conv1_w, &r->conv1_b, &p3, &f1, err))) goto done;
    loco_tensor_free(&tp);

    /* conv2(SiLU(norm2(h))) + conv2.bias (dropout is the identity at inference) + shortcut(x),
     * then / output_scale_factor. With a shortcut conv, conv2's output is the residual of the
     * shortcut's fused call, so that h is freed before the shortcut's output exists: as many
     * tensors live at once as in the unfused block. */
    loco_conv2d_fusion f2;
    resnet_norm_fusion(r, &r->norm2_w, &r->norm2_b, &f2);
    f2.residual = r->has_shortcut ? NULL : x;
    if ((s = alloc_like(be, x, 4, oshape, &y, err))) goto done;
    if ((s = loco_conv2d_fused(be, &y, &h, &r->conv2_w, &r->conv2_b, &p3, &f2, err))) goto done;
    loco_tensor_free(&h);
    if (r->has_shortcut) {
        const loco_conv2d_params p1 = {.stride = 1, .pad = {0, 0, 0, 0}};
        loco_conv2d_fusion fs;
        loco_conv2d_fusion_init(&fs);
        fs.residual = &y;
        if ((s = alloc_like(be, x, 4, oshape, &sc, err))) goto done;
        if ((s = loco_conv2d_fused(be, &sc, x, &r->short_w, &r->short_b, &p1, &fs, err))) goto done;
        loco_tensor_free(&y);
        y = sc;
        memset(&sc, 0, sizeof sc);
    }
    if ((s = divide_by(be, &y, r->out_scale, err))) goto done;
    *out = y;
    memset(&y, 0, sizeof y);
done:
    loco_tensor_free(&h);
    loco_tensor_free(&tp);
    loco_tensor_free(&y);
    loco_tensor_free(&sc);
    return s;
}

/* ---- spatial self-attention ---------------------------------------------------------------------- */

loco_status loco_spatial_attn_load(const loco_loader *ld, const char *prefix, int channels, int head_dim,
                                   int groups, float eps, float out_scale, loco_spatial_attn *a, loco_err *err) {
    memset(a, 0, sizeof *a);
    if (head_dim <= 0 || channels % head_dim != 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: %d channels are not a multiple of head_dim %d", prefix, channels,
                            head_dim);
    if (groups <= 0 || channels % groups != 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: %d channels cannot be split into %d groups", prefix, channels,
                            groups);
    a->channels = channels;
    a->heads = channels / head_dim;
    a->groups = groups;
    a->eps = eps;
    a->out_scale = out_scale;
    const int64_t c[1] = {channels}, cc[2] = {channels, channels};
    loco_status s;
    if ((s = loco_load_tensor(ld, prefix, "group_norm.weight", 1, c, &a->gn_w, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "group_norm.bias", 1, c, &a->gn_b, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "to_q.weight", 2, cc, &a->q_w, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "to_q.bias", 1, c, &a->q_b, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "to_k.weight", 2, cc, &a->k_w, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "to_k.bias", 1, c, &a->k_b, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "to_v.weight", 2, cc, &a->v_w, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "to_v.bias", 1, c, &a->v_b, err))) return s;
    if ((s = loco_load_tensor(ld, prefix, "to_out.0.weight", 2, cc, &a->o_w, err))) return s;
    return loco_load_tensor(ld, prefix, "to_out.0.bias", 1, c, &a->o_b, err);
}

loco_status loco_spatial_attn_forward(loco_backend *be, const loco_spatial_attn *a, const loco_tensor *x,
                                      loco_tensor *out, loco_err *err) {
    if (x->ndim != 4 || x->shape[1] != a->channels)
        return loco_err_set(err, LOCO_EINVAL, "spatial attention: input has %lld channels, expected %d",
                            (long long)(x->ndim == 4 ? x->shape[1] : -1), a->channels);
    const int64_t B = x->shape[0], C = a->channels, L = x->shape[2] * x->shape[3];
    const int64_t tok[3] = {B, L, C}, chw[3] = {B, C, L};
    loco_tensor gn = {0}, gv = {0}, t = {0}, q = {0}, k = {0}, v = {0}, o = {0}, p = {0}, y = {0}, yv = {0};
    loco_status s;
    if ((s = alloc_like(be, x, 4, x->shape, &gn, err))) goto done;
    if ((s = loco_group_norm(be, &gn, x, a->groups, &a->gn_w, &a->gn_b, a->eps, 0, err))) goto done;
    if ((s = loco_reshape_view(&gn, 3, chw, &gv, err))) goto done;
    if ((s = alloc_like(be, x, 3, tok, &t, err))) goto done;
    if ((s = loco_transpose12(be, &t, &gv, err))) goto done;
    loco_tensor_free(&gn);
    if ((s = alloc_like(be, x, 3, tok, &q, err))) goto done;
    if ((s = alloc_like(be, x, 3, tok, &k, err))) goto done;
    if ((s = alloc_like(be, x, 3, tok, &v, err))) goto done;
    if ((s = loco_linear(be, &q, &t, &a->q_w, &a->q_b, LOCO_ACT_NONE, err))) goto done;
    if ((s = loco_linear(be, &k, &t, &a->k_w, &a->k_b, LOCO_ACT_NONE, err))) goto done;
    if ((s = loco_linear(be, &v, &t, &a->v_w, &a->v_b, LOCO_ACT_NONE, err))) goto done;
    loco_tensor_free(&t);
    if ((s = alloc_like(be, x, 3, tok, &o, err))) goto done;
    {
        loco_attention_params ap = {
            .heads = a->heads, .scale = (float)(1.0 / sqrt((double)(C / a->heads))), .causal = 0, .kv_index = NULL};
        if ((s = loco_attention(be, &o, &q, &k, &v, &ap, err))) goto done;
    }
    loco_tensor_free(&q);
    loco_tensor_free(&k);
    loco_tensor_free(&v);
    if ((s = alloc_like(be, x, 3, tok, &p, err))) goto done;
    if ((s = loco_linear(be, &p, &o, &a->o_w, &a->o_b, LOCO_ACT_NONE, err))) goto done;
    loco_tensor_free(&o);
    if ((s = alloc_like(be, x, 4, x->shape, &y, err))) goto done;
    if ((s = loco_reshape_view(&y, 3, chw, &yv, err))) goto done;
    if ((s = loco_transpose12(be, &yv, &p, err))) goto done;
    loco_tensor_free(&p);
    if ((s = loco_add(be, &y, &y, x, err))) goto done; /* residual_connection */
    if ((s = divide_by(be, &y, a->out_scale, err))) goto done;
    *out = y;
    memset(&y, 0, sizeof y);
done:
    loco_tensor_free(&gn);
    loco_tensor_free(&t);
    loco_tensor_free(&q);
    loco_tensor_free(&k);
    loco_tensor_free(&v);
    loco_tensor_free(&o);
    loco_tensor_free(&p);
    loco_tensor_free(&y);
    if (s) loco_err_prefix(err, "spatial attention");
    return s;
}

/* ---- Downsample2D / Upsample2D -------------------------------------------------------------------- */

loco_status loco_downsample_load(const loco_loader *ld, const char *prefix, int channels, int out_channels,
                                 int padding, loco_downsample *d, loco_err *err) {
    memset(d, 0, sizeof *d);
    if (padding < 0) return loco_err_set(err, LOCO_EINVAL, "%s: negative downsample padding %d", prefix, padding);
    d->channels = channels;
    d->out_channels = out_channels;
    d->padding = padding;
    char name[512];
    snprintf(name, sizeof name, "%s.conv", prefix);
    loco_status s =
        loco_load_tensor(ld, name, "weight", 4, (int64_t[]){out_channels, channels, 3, 3}, &d->conv_w, err);
    if (!s) s = loco_load_tensor(ld, name, "bias", 1, (int64_t[]){out_channels}, &d->conv_b, err);
    return s;
}

loco_status loco_downsample_forward(loco_backend *be, const loco_downsample *d, const loco_tensor *x,
                                    loco_tensor *out, loco_err *err) {
    /* diffusers pads (0,1,0,1) (right and bottom only) before a padding-0 conv: the VAE encoder. */
    loco_conv2d_params cp = {.stride = 2, .pad = {d->padding, d->padding, d->padding, d->padding}};
    if (d->padding == 0) {
        cp.pad[1] = 1;
        cp.pad[3] = 1;
    }
    int64_t h = (x->shape[2] + cp.pad[0] + cp.pad[1] - 3) / 2 + 1;
    int64_t w = (x->shape[3] + cp.pad[2] + cp.pad[3] - 3) / 2 + 1;
    loco_status s = alloc_like(be, x, 4, (int64_t[]){x->shape[0], d->out_channels, h, w}, out, err);
    if (s) return s;
    s = loco_conv2d(be, out, x, &d->conv_w, &d->conv_b, &cp, err);
    if (s) loco_tensor_free(out);
    return s;
}

loco_status loco_upsample_load(const loco_loader *ld, const char *prefix, int channels, int out_channels,
                               loco_upsample *u, loco_err *err) {
    memset(u, 0, sizeof *u);
    u->channels = channels;
    u->out_channels = out_channels;
    char name[512];
    snprintf(name, sizeof name, "%s.conv", prefix);
    loco_status s =
        loco_load_tensor(ld, name, "weight", 4, (int64_t[]){out_channels, channels, 3, 3}, &u->conv_w, err);
    if (!s) s = loco_load_tensor(ld, name, "bias", 1, (int64_t[]){out_channels}, &u->conv_b, err);
    return s;
}

loco_status loco_upsample_forward(loco_backend *be, const loco_upsample *u, const loco_tensor *x,
                                  loco_tensor *out, loco_err *err) {
    const int64_t B = x->shape[0], H = x->shape[2] * 2, W = x->shape[3] * 2;
    loco_tensor up = {0};
    loco_status s = alloc_like(be, x, 4, (int64_t[]){B, x->shape[1], H, W}, &up, err);
    if (!s) s = loco_upsample_nearest2x(be, &up, x, err);
    if (!s) s = alloc_like(be, x, 4, (int64_t[]){B, u->out_channels, H, W}, out, err);
    if (!s) {
        const loco_conv2d_params cp = {.stride = 1, .pad = {1, 1, 1, 1}};
        s = loco_conv2d(be, out, &up, &u->conv_w, &u->conv_b, &cp, err);
        if (s) loco_tensor_free(out);
    }
    loco_tensor_free(&up);
    return s;
}
