/* backend_ops.c: argument validation for every op of backend.h, done once here for all
 * backends, then dispatch to the backend's hook. The rules: every tensor belongs to the
 * backend and holds data; all tensors of one call share a dtype the backend computes in;
 * shapes agree as documented in backend.h; an output may alias an input only where backend.h
 * allows in-place operation, and then exactly (same address and element count), never a
 * partial overlap. Calls whose output is empty return LOCO_OK without reaching the hook. The
 * checks themselves are in backend_check.h, the linear layers' wrappers in backend_ops_linear.c. */
#include "backend_check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ---- profiling ---------------------------------------------------------------------------- */

static const char *const op_kind_names[LOCO_OP_KIND_COUNT] = {"linear", "conv2d", "attention", "norm", "elementwise"};

const char *loco_op_kind_name(loco_op_kind k) { return (unsigned)k < LOCO_OP_KIND_COUNT ? op_kind_names[k] : "?"; }

void loco_backend_profile_start(loco_backend *be) {
    if (!be) return;
    memset(&be->profile, 0, sizeof be->profile);
    be->profile_nrows = 0;
    be->profiling = 1;
}

void loco_backend_profile_stop(loco_backend *be, loco_op_profile *out) {
    if (!be) return;
    be->profiling = 0;
    if (out) *out = be->profile;
}

int loco_backend_profile_rows(const loco_backend *be, const loco_op_profile_row **rows) {
    *rows = be ? be->profile_rows : NULL;
    return be ? be->profile_nrows : 0;
}

int loco_backend_accepts_dtype(const loco_backend *be, loco_dtype t) { return be && op_dtype_ok(be, t); }

/* ---- conv (the linear ops are in backend_ops_linear.c) ----------------------------------------- */

/* The checks loco_conv2d and loco_conv2d_fused share. */
static loco_status check_conv2d(loco_backend *be, const char *op, const loco_tensor *y, const loco_tensor *x,
                                const loco_tensor *w, const loco_tensor *bias, const loco_conv2d_params *p,
                                loco_err *err) {
    shapes s;
    TRY(check_pair(be, op, "y", y, "x", x, err));
    TRY(check_tensor(be, op, "w", w, err));
    TRY(same_dtype(op, "w", w, "x", x, err));
    if (!p) return loco_err_set(err, LOCO_EINVAL, "%s: params are NULL", op);
    if (p->stride < 1) return loco_err_set(err, LOCO_EINVAL, "%s: stride must be >= 1, got %d", op, p->stride);
    for (int i = 0; i < 4; i++)
        if (p->pad[i] < 0)
            return loco_err_set(err, LOCO_EINVAL, "%s: padding {top %d, bottom %d, left %d, right %d} is negative",
                                op, p->pad[0], p->pad[1], p->pad[2], p->pad[3]);
    if (x->ndim != 4) return loco_err_set(err, LOCO_EINVAL, "%s: x %s must be NCHW", op, shp(&s, 0, x));
    if (w->ndim != 4) return loco_err_set(err, LOCO_EINVAL, "%s: w %s must be [Cout, Cin, kh, kw]", op, shp(&s, 0, w));
    if (w->shape[1] != x->shape[1])
        return loco_err_set(err, LOCO_EINVAL, "%s: x %s has %lld channels but w %s expects %lld", op, shp(&s, 0, x),
                            (long long)x->shape[1], shp(&s, 1, w), (long long)w->shape[1]);
    int64_t kh = w->shape[2], kw = w->shape[3];
    int64_t hp = x->shape[2] + p->pad[0] + p->pad[1], wp = x->shape[3] + p->pad[2] + p->pad[3];
    if (kh < 1 || kw < 1 || hp < kh || wp < kw)
        return loco_err_set(err, LOCO_EINVAL, "%s: kernel %lldx%lld does not fit the padded input %lldx%lld (x %s)",
                            op, (long long)kh, (long long)kw, (long long)hp, (long long)wp, shp(&s, 0, x));
    int64_t ho = (hp - kh) / p->stride + 1, wo = (wp - kw) / p->stride + 1;
    if (y->ndim != 4 || y->shape[0] != x->shape[0] || y->shape[1] != w->shape[0] || y->shape[2] != ho ||
        y->shape[3] != wo)
        return loco_err_set(err, LOCO_EINVAL, "%s: y %s must be [%lld, %lld, %lld, %lld] for x %s, w %s, stride %d",
                            op, shp(&s, 0, y), (long long)x->shape[0], (long long)w->shape[0], (long long)ho,
                            (long long)wo, shp(&s, 1, x), shp(&s, 2, w), p->stride);
    if (bias) {
        TRY(check_tensor(be, op, "bias", bias, err));
        TRY(same_dtype(op, "bias", bias, "x", x, err));
        if (bias->ndim != 1 || bias->shape[0] != w->shape[0])
            return loco_err_set(err, LOCO_EINVAL, "%s: bias %s must be [%lld]", op, shp(&s, 0, bias),
                                (long long)w->shape[0]);
        TRY(no_alias(op, "y", y, "bias", bias, err));
    }
    TRY(no_alias(op, "y", y, "x", x, err));
    TRY(no_alias(op, "y", y, "w", w, err));
    return LOCO_OK;
}

static double conv2d_flops(const loco_tensor *y, const loco_tensor *w) {
    return 2.0 * (double)loco_tensor_numel(y) * (double)(w->shape[1] * w->shape[2] * w->shape[3]);
}

/* The backend's conv2d on checked arguments, profiled. */
static loco_status conv2d_run(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                              const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err) {
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->conv2d(be, y, x, w, bias, p, err);
    return prof_end(be, LOCO_OP_CONV2D, "conv2d", y, w, conv2d_flops(y, w), t0, op_st);
}

loco_status loco_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                        const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err) {
    TRY(check_conv2d(be, "conv2d", y, x, w, bias, p, err));
    return conv2d_run(be, y, x, w, bias, p, err);
}

/* ---- norms ------------------------------------------------------------------------------------ */

/* GroupNorm's own arguments (groups, eps, gamma/beta) for x [N, C, ...]; y is the op's output,
 * which gamma/beta may not alias. */
static loco_status check_group_norm(loco_backend *be, const char *op, const loco_tensor *y, const loco_tensor *x,
                                    int groups, const loco_tensor *gamma, const loco_tensor *beta, float eps,
                                    loco_err *err) {
    shapes s;
    if (x->ndim < 2) return loco_err_set(err, LOCO_EINVAL, "%s: x %s must be [N, C, ...]", op, shp(&s, 0, x));
    int64_t C = x->shape[1];
    if (groups < 1 || C % groups != 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: %lld channels of x %s do not split into %d groups", op,
                            (long long)C, shp(&s, 0, x), groups);
    TRY(check_eps(op, eps, err));
    if (!gamma || !beta)
        return loco_err_set(err, LOCO_EINVAL, "%s: %s is NULL (GroupNorm is always affine)", op,
                            gamma ? "beta" : "gamma");
    TRY(check_affine(be, op, "gamma", gamma, C, x, y, err));
    return check_affine(be, op, "beta", beta, C, x, y, err);
}

loco_status loco_group_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                            const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu,
                            loco_err *err) {
    const char *op = "group_norm";
    TRY(check_pair(be, op, "y", y, "x", x, err));
    TRY(same_shape(op, "y", y, "x", x, err));
    TRY(check_group_norm(be, op, y, x, groups, gamma, beta, eps, err));
    TRY(inplace_or_disjoint(op, "y", y, "x", x, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->group_norm(be, y, x, groups, gamma, beta, eps, fuse_silu ? 1 : 0, err);
    return prof_end(be, LOCO_OP_NORM, "group_norm", y, NULL, 0, t0, op_st);
}

/* ---- conv2d with its ResNet neighbours -------------------------------------------------------- */

void loco_conv2d_fusion_init(loco_conv2d_fusion *f) {
    memset(f, 0, sizeof *f);
    f->norm_groups = 32;
    f->norm_eps = 1e-5f;
}

static loco_status check_conv2d_fusion(loco_backend *be, const char *op, const loco_tensor *y,
                                       const loco_tensor *x, const loco_conv2d_fusion *f, loco_err *err) {
    shapes s;
    if (f->norm_gamma || f->norm_beta)
        TRY(check_group_norm(be, op, y, x, f->norm_groups, f->norm_gamma, f->norm_beta, f->norm_eps, err));
    if (f->sample_bias) {
        const loco_tensor *b = f->sample_bias;
        TRY(check_tensor(be, op, "sample_bias", b, err));
        TRY(same_dtype(op, "sample_bias", b, "y", y, err));
        if (b->ndim != 2 || b->shape[0] != y->shape[0] || b->shape[1] != y->shape[1])
            return loco_err_set(err, LOCO_EINVAL, "%s: sample_bias %s must be [%lld, %lld] for y %s", op,
                                shp(&s, 0, b), (long long)y->shape[0], (long long)y->shape[1], shp(&s, 1, y));
        TRY(no_alias(op, "y", y, "sample_bias", b, err));
    }
    if (f->residual) {
        TRY(check_tensor(be, op, "residual", f->residual, err));
        TRY(same_dtype(op, "residual", f->residual, "y", y, err));
        TRY(same_shape(op, "residual", f->residual, "y", y, err));
        /* the convolution writes y before the residual is read */
        TRY(no_alias(op, "y", y, "residual", f->residual, err));
    }
    return LOCO_OK;
}

/* The unfused calls, exactly what a caller would write. */
static loco_status conv2d_unfused(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                  const loco_tensor *bias, const loco_conv2d_params *p, const loco_conv2d_fusion *f,
                                  loco_err *err) {
    loco_tensor normed = {0};
    const loco_tensor *in = x;
    loco_status st = LOCO_OK;
    if (f->norm_gamma) {
        st = loco_tensor_alloc(be, x->dtype, x->ndim, x->shape, &normed, err);
        if (st == LOCO_OK)
            st = loco_group_norm(be, &normed, x, f->norm_groups, f->norm_gamma, f->norm_beta, f->norm_eps,
                                 f->norm_silu, err);
        in = &normed;
    }
    if (st == LOCO_OK) st = loco_conv2d(be, y, in, w, bias, p, err);
    loco_tensor_free(&normed);
    if (st == LOCO_OK && f->sample_bias) st = loco_add_channel_bias(be, y, y, f->sample_bias, err);
    if (st == LOCO_OK && f->residual) st = loco_add(be, y, f->residual, y, err);
    return st;
}

loco_status loco_conv2d_fused(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                              const loco_tensor *bias, const loco_conv2d_params *p, const loco_conv2d_fusion *f,
                              loco_err *err) {
    const char *op = "conv2d_fused";
    TRY(check_conv2d(be, op, y, x, w, bias, p, err));
    if (!f || (!f->norm_gamma && !f->norm_beta && !f->sample_bias && !f->residual))
        return conv2d_run(be, y, x, w, bias, p, err);
    TRY(check_conv2d_fusion(be, op, y, x, f, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    if (!be->ops->conv2d_fused) return conv2d_unfused(be, y, x, w, bias, p, f, err);
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->conv2d_fused(be, y, x, w, bias, p, f, err);
    return prof_end(be, LOCO_OP_CONV2D, op, y, w, conv2d_flops(y, w), t0, op_st);
}

loco_status loco_layer_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                            const loco_tensor *beta, float eps, loco_err *err) {
    const char *op = "layer_norm";
    TRY(check_pair(be, op, "y", y, "x", x, err));
    TRY(same_shape(op, "y", y, "x", x, err));
    if (x->ndim < 1) return loco_err_set(err, LOCO_EINVAL, "layer_norm: x must have at least one dimension");
    TRY(check_eps(op, eps, err));
    int64_t C = x->shape[x->ndim - 1];
    if (!gamma) return loco_err_set(err, LOCO_EINVAL, "layer_norm: gamma is NULL");
    TRY(check_affine(be, op, "gamma", gamma, C, x, y, err));
    if (beta) TRY(check_affine(be, op, "beta", beta, C, x, y, err));
    TRY(inplace_or_disjoint(op, "y", y, "x", x, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->layer_norm(be, y, x, gamma, beta, eps, err);
    return prof_end(be, LOCO_OP_NORM, "layer_norm", y, NULL, 0, t0, op_st);
}

/* ---- attention ----------------------------------------------------------------------------------- */

/* q's shape with a packed q|k|v row taken apart: the width of q alone (H*D). */
static loco_status attention_widths(const loco_tensor *q, const loco_attention_params *p, int64_t *hd,
                                    loco_err *err) {
    shapes s;
    if (!p->qkv_packed) {
        *hd = q->shape[2];
        return LOCO_OK;
    }
    if (q->shape[2] % 3 != 0)
        return loco_err_set(err, LOCO_EINVAL, "attention: packed q %s must be [B, L, 3*H*D] (rows q | k | v)",
                            shp(&s, 0, q));
    *hd = q->shape[2] / 3;
    return LOCO_OK;
}

loco_status loco_attention(loco_backend *be, loco_tensor *out, const loco_tensor *q, const loco_tensor *k,
                           const loco_tensor *v, const loco_attention_params *p, loco_err *err) {
    const char *op = "attention";
    shapes s;
    TRY(check_backend(be, op, err));
    if (!p) return loco_err_set(err, LOCO_EINVAL, "attention: params are NULL");
    TRY(check_tensor(be, op, "out", out, err));
    TRY(check_tensor(be, op, "q", q, err));
    if (p->qkv_packed) {
        if (k || v)
            return loco_err_set(err, LOCO_EINVAL, "attention: with qkv_packed, k and v come from q's rows; pass NULL");
        k = v = q; /* what the backends receive: they take k and v from q's rows */
    } else {
        TRY(check_tensor(be, op, "k", k, err));
        TRY(check_tensor(be, op, "v", v, err));
    }
    TRY(same_dtype(op, "out", out, "q", q, err));
    TRY(same_dtype(op, "k", k, "q", q, err));
    TRY(same_dtype(op, "v", v, "q", q, err));
    if (q->ndim != 3) return loco_err_set(err, LOCO_EINVAL, "attention: q %s must be [B, Lq, H*D]", shp(&s, 0, q));
    if (k->ndim != 3) return loco_err_set(err, LOCO_EINVAL, "attention: k %s must be [Bk, Lk, H*D]", shp(&s, 0, k));
    TRY(same_shape(op, "k", k, "v", v, err));
    int64_t HD = 0;
    TRY(attention_widths(q, p, &HD, err));
    if (out->ndim != 3 || out->shape[0] != q->shape[0] || out->shape[1] != q->shape[1] || out->shape[2] != HD)
        return loco_err_set(err, LOCO_EINVAL, "attention: out %s must be [%lld, %lld, %lld] for q %s%s", shp(&s, 0, out),
                            (long long)q->shape[0], (long long)q->shape[1], (long long)HD, shp(&s, 1, q),
                            p->qkv_packed ? " (packed q|k|v)" : "");
    const int64_t B = q->shape[0], Bk = k->shape[0];
    if (!p->qkv_packed && k->shape[2] != HD)
        return loco_err_set(err, LOCO_EINVAL, "attention: q %s and k %s differ in width (H*D)", shp(&s, 0, q),
                            shp(&s, 1, k));
    if (p->heads < 1 || HD % p->heads != 0)
        return loco_err_set(err, LOCO_EINVAL, "attention: width %lld of q %s does not split into %d heads",
                            (long long)HD, shp(&s, 0, q), p->heads);
    if (!isfinite(p->scale))
        return loco_err_set(err, LOCO_EINVAL, "attention: scale must be finite, got %g", (double)p->scale);
    if (k->shape[1] < 1 && q->shape[1] > 0)
        return loco_err_set(err, LOCO_EINVAL, "attention: k %s has no keys to attend to", shp(&s, 0, k));
    if (p->kv_index) {
        for (int64_t b = 0; b < B; b++)
            if (p->kv_index[b] < 0 || p->kv_index[b] >= Bk)
                return loco_err_set(err, LOCO_EINVAL, "attention: kv_index[%lld] = %d is outside the %lld K/V samples",
                                    (long long)b, p->kv_index[b], (long long)Bk);
    } else if (Bk != B) {
        return loco_err_set(err, LOCO_EINVAL,
                            "attention: q %s and k %s differ in batch size and no kv_index maps one to the other",
                            shp(&s, 0, q), shp(&s, 1, k));
    }
    TRY(no_alias(op, "out", out, "q", q, err));
    TRY(no_alias(op, "out", out, "k", k, err));
    TRY(no_alias(op, "out", out, "v", v, err));
    if (loco_tensor_numel(out) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->attention(be, out, q, k, v, p, err);
    const double flops = 4.0 * (double)B * (double)q->shape[1] * (double)k->shape[1] * (double)HD;
    return prof_end(be, LOCO_OP_ATTENTION, "attention", q, k, flops, t0, op_st);
}

/* ---- elementwise ------------------------------------------------------------------------------------ */

loco_status loco_activation(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act act, loco_err *err) {
    const char *op = "activation";
    TRY(check_pair(be, op, "y", y, "x", x, err));
    TRY(same_shape(op, "y", y, "x", x, err));
    TRY(check_act(op, act, err));
    TRY(inplace_or_disjoint(op, "y", y, "x", x, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->activation(be, y, x, act, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "activation", y, NULL, 0, t0, op_st);
}

loco_status loco_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    const char *op = "geglu";
    shapes s;
    TRY(check_pair(be, op, "y", y, "x", x, err));
    int ok = x->ndim >= 1 && y->ndim == x->ndim && x->shape[x->ndim - 1] == 2 * y->shape[y->ndim - 1];
    for (int i = 0; ok && i < x->ndim - 1; i++) ok = x->shape[i] == y->shape[i];
    if (!ok)
        return loco_err_set(err, LOCO_EINVAL, "geglu: y %s must be x %s with the last dimension halved", shp(&s, 0, y),
                            shp(&s, 1, x));
    TRY(no_alias(op, "y", y, "x", x, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->geglu(be, y, x, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "geglu", y, NULL, 0, t0, op_st);
}

loco_status loco_add(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, loco_err *err) {
    const char *op = "add";
    TRY(check_pair(be, op, "y", y, "a", a, err));
    TRY(check_tensor(be, op, "b", b, err));
    TRY(same_dtype(op, "b", b, "a", a, err));
    TRY(same_shape(op, "a", a, "b", b, err));
    TRY(same_shape(op, "y", y, "a", a, err));
    TRY(inplace_or_disjoint(op, "y", y, "a", a, err));
    TRY(inplace_or_disjoint(op, "y", y, "b", b, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->add(be, y, a, b, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "add", y, NULL, 0, t0, op_st);
}

loco_status loco_add_channel_bias(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *bias,
                                  loco_err *err) {
    const char *op = "add_channel_bias";
    shapes s;
    TRY(check_pair(be, op, "y", y, "x", x, err));
    TRY(check_tensor(be, op, "bias", bias, err));
    TRY(same_dtype(op, "bias", bias, "x", x, err));
    TRY(same_shape(op, "y", y, "x", x, err));
    if (x->ndim < 2)
        return loco_err_set(err, LOCO_EINVAL, "add_channel_bias: x %s must be [N, C, ...]", shp(&s, 0, x));
    if (bias->ndim != 2 || bias->shape[0] != x->shape[0] || bias->shape[1] != x->shape[1])
        return loco_err_set(err, LOCO_EINVAL, "add_channel_bias: bias %s must be [%lld, %lld] for x %s",
                            shp(&s, 0, bias), (long long)x->shape[0], (long long)x->shape[1], shp(&s, 1, x));
    TRY(inplace_or_disjoint(op, "y", y, "x", x, err));
    TRY(no_alias(op, "y", y, "bias", bias, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->add_channel_bias(be, y, x, bias, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "add_channel_bias", y, NULL, 0, t0, op_st);
}

loco_status loco_lincomb(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x, const float *coef,
                         loco_err *err) {
    const char *op = "lincomb";
    TRY(check_backend(be, op, err));
    TRY(check_tensor(be, op, "y", y, err));
    if (n < 1) return loco_err_set(err, LOCO_EINVAL, "lincomb: needs at least one term, got n = %d", n);
    if (!x || !coef) return loco_err_set(err, LOCO_EINVAL, "lincomb: %s is NULL", x ? "coef" : "x");
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "x[%d]", i);
        TRY(check_tensor(be, op, name, x[i], err));
        TRY(same_dtype(op, "y", y, name, x[i], err));
        TRY(same_shape(op, "y", y, name, x[i], err));
        TRY(inplace_or_disjoint(op, "y", y, name, x[i], err));
        if (!isfinite(coef[i]))
            return loco_err_set(err, LOCO_EINVAL, "lincomb: coef[%d] = %g is not finite", i, (double)coef[i]);
    }
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->lincomb(be, y, n, x, coef, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "lincomb", y, NULL, 0, t0, op_st);
}

/* copy converts between dtypes, so it checks storage dtypes itself rather than op dtypes. */
static loco_status check_copy_tensor(loco_backend *be, const char *name, const loco_tensor *t, loco_err *err) {
    loco_status st = check_meta(be, "copy", name, t, err);
    if (st != LOCO_OK) return st;
    if (t->dtype != LOCO_F32 && t->dtype != LOCO_F16 && t->dtype != LOCO_BF16 && !op_dtype_ok(be, t->dtype))
        return loco_err_set(err, LOCO_EINVAL, "copy: %s has dtype %s; copy converts between F32, F16 and BF16", name,
                            loco_dtype_name(t->dtype));
    return LOCO_OK;
}

loco_status loco_copy(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    const char *op = "copy";
    shapes s;
    TRY(check_backend(be, op, err));
    TRY(check_copy_tensor(be, "y", y, err));
    TRY(check_copy_tensor(be, "x", x, err));
    if (loco_tensor_numel(y) != loco_tensor_numel(x))
        return loco_err_set(err, LOCO_EINVAL, "copy: y %s and x %s differ in element count", shp(&s, 0, y),
                            shp(&s, 1, x));
    TRY(inplace_or_disjoint(op, "y", y, "x", x, err));
    if (loco_tensor_numel(y) == 0 || y->data == x->data) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->copy(be, y, x, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "copy", y, x, 0, t0, op_st);
}

loco_status loco_fill(loco_backend *be, loco_tensor *y, float value, loco_err *err) {
    TRY(check_backend(be, "fill", err));
    TRY(check_tensor(be, "fill", "y", y, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->fill(be, y, value, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "fill", y, NULL, 0, t0, op_st);
}

/* ---- layout ------------------------------------------------------------------------------------------ */

loco_status loco_transpose12(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    const char *op = "transpose12";
    shapes s;
    TRY(check_pair(be, op, "y", y, "x", x, err));
    if (x->ndim != 3 || y->ndim != 3 || y->shape[0] != x->shape[0] || y->shape[1] != x->shape[2] ||
        y->shape[2] != x->shape[1])
        return loco_err_set(err, LOCO_EINVAL,
                            "transpose12: x %s and y %s must be [N, A, B] and [N, B, A] (view NCHW as [N, C, H*W])",
                            shp(&s, 0, x), shp(&s, 1, y));
    TRY(no_alias(op, "y", y, "x", x, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->transpose12(be, y, x, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "transpose12", y, NULL, 0, t0, op_st);
}

loco_status loco_concat(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, int axis,
                        loco_err *err) {
    const char *op = "concat";
    shapes s;
    TRY(check_pair(be, op, "y", y, "a", a, err));
    TRY(check_tensor(be, op, "b", b, err));
    TRY(same_dtype(op, "b", b, "a", a, err));
    int nd = a->ndim;
    if (nd < 1 || b->ndim != nd || y->ndim != nd)
        return loco_err_set(err, LOCO_EINVAL, "concat: a %s, b %s and y %s must have the same rank (>= 1)",
                            shp(&s, 0, a), shp(&s, 1, b), shp(&s, 2, y));
    int ax = axis < 0 ? axis + nd : axis; /* -1 is the last axis, as in torch.cat */
    if (ax < 0 || ax >= nd)
        return loco_err_set(err, LOCO_EINVAL, "concat: axis %d is out of range for rank %d", axis, nd);
    for (int i = 0; i < nd; i++) {
        int64_t want = i == ax ? a->shape[i] + b->shape[i] : a->shape[i];
        if ((i != ax && b->shape[i] != a->shape[i]) || y->shape[i] != want)
            return loco_err_set(err, LOCO_EINVAL, "concat: a %s and b %s cannot be joined on axis %d into y %s",
                                shp(&s, 0, a), shp(&s, 1, b), ax, shp(&s, 2, y));
    }
    TRY(no_alias(op, "y", y, "a", a, err));
    TRY(no_alias(op, "y", y, "b", b, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->concat(be, y, a, b, ax, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "concat", y, NULL, 0, t0, op_st);
}

loco_status loco_upsample_nearest2x(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    const char *op = "upsample_nearest2x";
    shapes s;
    TRY(check_pair(be, op, "y", y, "x", x, err));
    if (x->ndim != 4 || y->ndim != 4 || y->shape[0] != x->shape[0] || y->shape[1] != x->shape[1] ||
        y->shape[2] != 2 * x->shape[2] || y->shape[3] != 2 * x->shape[3])
        return loco_err_set(err, LOCO_EINVAL, "upsample_nearest2x: y %s must be x %s (NCHW) with H and W doubled",
                            shp(&s, 0, y), shp(&s, 1, x));
    TRY(no_alias(op, "y", y, "x", x, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->upsample_nearest2x(be, y, x, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "upsample", y, NULL, 0, t0, op_st);
}

loco_status loco_embedding(loco_backend *be, loco_tensor *y, const loco_tensor *table, const int32_t *ids, int64_t n,
                           loco_err *err) {
    const char *op = "embedding";
    shapes s;
    TRY(check_pair(be, op, "y", y, "table", table, err));
    if (table->ndim != 2) return loco_err_set(err, LOCO_EINVAL, "embedding: table %s must be [V, C]", shp(&s, 0, table));
    int64_t V = table->shape[0], C = table->shape[1];
    if (n < 0) return loco_err_set(err, LOCO_EINVAL, "embedding: n = %lld is negative", (long long)n);
    if (y->ndim < 1 || y->shape[y->ndim - 1] != C || loco_tensor_numel(y) != n * C)
        return loco_err_set(err, LOCO_EINVAL, "embedding: y %s must hold %lld rows of %lld (table %s)", shp(&s, 0, y),
                            (long long)n, (long long)C, shp(&s, 1, table));
    if (n > 0 && !ids) return loco_err_set(err, LOCO_EINVAL, "embedding: ids is NULL");
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return loco_err_set(err, LOCO_EINVAL, "embedding: ids[%lld] = %d is outside the table's %lld rows",
                                (long long)i, ids[i], (long long)V);
    TRY(no_alias(op, "y", y, "table", table, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->embedding(be, y, table, ids, n, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "embedding", y, NULL, 0, t0, op_st);
}

loco_status loco_set_channels(loco_backend *be, loco_tensor *y, const int32_t *channels, const float *values, int n,
                              loco_err *err) {
    const char *op = "set_channels";
    shapes s;
    TRY(check_backend(be, op, err));
    TRY(check_tensor(be, op, "y", y, err));
    if (y->ndim < 1) return loco_err_set(err, LOCO_EINVAL, "set_channels: y must have at least one dimension");
    if (n < 0) return loco_err_set(err, LOCO_EINVAL, "set_channels: n = %d is negative", n);
    if (n > 0 && (!channels || !values))
        return loco_err_set(err, LOCO_EINVAL, "set_channels: %s is NULL", channels ? "values" : "channels");
    int64_t C = y->shape[y->ndim - 1];
    for (int i = 0; i < n; i++)
        if (channels[i] < 0 || channels[i] >= C)
            return loco_err_set(err, LOCO_EINVAL, "set_channels: channels[%d] = %d is outside the %lld channels of y %s",
                                i, channels[i], (long long)C, shp(&s, 0, y));
    if (n == 0 || loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->set_channels(be, y, channels, values, n, err);
    return prof_end(be, LOCO_OP_ELEMENTWISE, "set_channels", y, NULL, 0, t0, op_st);
}
