/* backend_ops_linear.c: the linear-layer ops of backend.h (loco_linear, loco_linear_accumulate,
 * loco_linear_geglu, loco_ln_linear, loco_linear_many, loco_linear_from_channels,
 * loco_linear_to_channels): their argument checks, then dispatch to the backend's hook, or, for
 * the optional hooks a backend lacks, the unfused calls that define them (backend.h). backend_ops.c has the rules the checks follow. */
#include "backend_check.h"

/* Every linear op's first checks: y and x of the backend and one dtype, w [out, in] of it. */
static loco_status check_weight(loco_backend *be, const char *op, const loco_tensor *y, const loco_tensor *x,
                                const loco_tensor *w, loco_err *err) {
    shapes s;
    TRY(check_pair(be, op, "y", y, "x", x, err));
    TRY(check_tensor(be, op, "w", w, err));
    TRY(same_dtype(op, "w", w, "x", x, err));
    if (w->ndim != 2)
        return loco_err_set(err, LOCO_EINVAL, "%s: w %s must be [out_features, in_features]", op, shp(&s, 0, w));
    return LOCO_OK;
}

/* And their last: a bias [out] (when given) in x's dtype, and y apart from x, w and the bias. */
static loco_status check_bias_alias(loco_backend *be, const char *op, const loco_tensor *y, const loco_tensor *x,
                                    const loco_tensor *w, const loco_tensor *bias, loco_err *err) {
    shapes s;
    if (bias) {
        TRY(check_tensor(be, op, "bias", bias, err));
        TRY(same_dtype(op, "bias", bias, "x", x, err));
        if (bias->ndim != 1 || bias->shape[0] != w->shape[0])
            return loco_err_set(err, LOCO_EINVAL, "%s: bias %s must be [%lld] (w %s)", op, shp(&s, 0, bias),
                                (long long)w->shape[0], shp(&s, 1, w));
        TRY(no_alias(op, "y", y, "bias", bias, err));
    }
    TRY(no_alias(op, "y", y, "x", x, err));
    TRY(no_alias(op, "y", y, "w", w, err));
    return LOCO_OK;
}

/* The checks loco_linear and loco_linear_accumulate share; *K_out is in_features. */
static loco_status check_linear(loco_backend *be, const char *op, const loco_tensor *y, const loco_tensor *x,
                                const loco_tensor *w, const loco_tensor *bias, int64_t *K_out, loco_err *err) {
    shapes s;
    TRY(check_weight(be, op, y, x, w, err));
    if (x->ndim < 1) return loco_err_set(err, LOCO_EINVAL, "%s: x must have at least one dimension", op);
    int64_t K = w->shape[1], N = w->shape[0];
    if (x->shape[x->ndim - 1] != K)
        return loco_err_set(err, LOCO_EINVAL, "%s: x %s has %lld features but w %s expects %lld", op, shp(&s, 0, x),
                            (long long)x->shape[x->ndim - 1], shp(&s, 1, w), (long long)K);
    int shape_ok = y->ndim == x->ndim && y->shape[y->ndim - 1] == N;
    for (int i = 0; shape_ok && i < x->ndim - 1; i++) shape_ok = y->shape[i] == x->shape[i];
    if (!shape_ok)
        return loco_err_set(err, LOCO_EINVAL, "%s: y %s must be x %s with the last dimension %lld (w %s)", op,
                            shp(&s, 0, y), shp(&s, 1, x), (long long)N, shp(&s, 2, w));
    TRY(check_bias_alias(be, op, y, x, w, bias, err));
    *K_out = K;
    return LOCO_OK;
}

loco_status loco_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                        const loco_tensor *bias, loco_act act, loco_err *err) {
    const char *op = "linear";
    int64_t K = 0;
    TRY(check_act(op, act, err));
    TRY(check_linear(be, op, y, x, w, bias, &K, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    double t0 = prof_begin(be);
    const loco_status op_st = be->ops->linear(be, y, x, w, bias, act, err);
    return prof_end(be, LOCO_OP_LINEAR, "linear", y, w, 2.0 * (double)loco_tensor_numel(y) * (double)K, t0, op_st);
}

loco_status loco_linear_accumulate(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                   const loco_tensor *bias, loco_err *err) {
    const char *op = "linear_accumulate";
    int64_t K = 0;
    TRY(check_linear(be, op, y, x, w, bias, &K, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    if (be->ops->linear_accumulate) {
        double t0 = prof_begin(be);
        const loco_status op_st = be->ops->linear_accumulate(be, y, x, w, bias, err);
        return prof_end(be, LOCO_OP_LINEAR, op, y, w, 2.0 * (double)loco_tensor_numel(y) * (double)K, t0, op_st);
    }
    /* the unfused form, exactly what a caller would write: t = linear(x), y = t + y */
    loco_tensor t = {0};
    loco_status st = loco_tensor_alloc(be, y->dtype, y->ndim, y->shape, &t, err);
    if (st == LOCO_OK) st = loco_linear(be, &t, x, w, bias, LOCO_ACT_NONE, err);
    if (st == LOCO_OK) st = loco_add(be, y, &t, y, err);
    loco_tensor_free(&t);
    return st;
}

/* loco_linear_geglu's checks: w [2N, K], y x's shape with N last. */
static loco_status check_linear_geglu(loco_backend *be, const char *op, const loco_tensor *y, const loco_tensor *x,
                                      const loco_tensor *w, const loco_tensor *bias, loco_err *err) {
    shapes s;
    TRY(check_weight(be, op, y, x, w, err));
    const int64_t K = w->shape[1], N2 = w->shape[0];
    if (x->ndim < 1 || x->shape[x->ndim - 1] != K)
        return loco_err_set(err, LOCO_EINVAL, "%s: x %s must end in w %s's %lld in_features", op, shp(&s, 0, x),
                            shp(&s, 1, w), (long long)K);
    if (N2 % 2 != 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: w %s must have an even number of rows (h, then the gate)", op,
                            shp(&s, 0, w));
    int shape_ok = y->ndim == x->ndim && y->shape[y->ndim - 1] == N2 / 2;
    for (int i = 0; shape_ok && i < x->ndim - 1; i++) shape_ok = y->shape[i] == x->shape[i];
    if (!shape_ok)
        return loco_err_set(err, LOCO_EINVAL, "%s: y %s must be x %s with the last dimension %lld (w %s, halved)", op,
                            shp(&s, 0, y), shp(&s, 1, x), (long long)(N2 / 2), shp(&s, 2, w));
    return check_bias_alias(be, op, y, x, w, bias, err);
}

loco_status loco_linear_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                              const loco_tensor *bias, loco_err *err) {
    const char *op = "linear_geglu";
    TRY(check_linear_geglu(be, op, y, x, w, bias, err));
    const int64_t K = w->shape[1], N2 = w->shape[0];
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    if (be->ops->linear_geglu) {
        double t0 = prof_begin(be);
        const loco_status op_st = be->ops->linear_geglu(be, y, x, w, bias, err);
        const double flops = 4.0 * (double)loco_tensor_numel(y) * (double)K;
        if (op_st != LOCO_EUNSUPPORTED) return prof_end(be, LOCO_OP_LINEAR, op, y, w, flops, t0, op_st);
    }
    /* the unfused form, exactly what a caller would write: t = linear(x), y = geglu(t) */
    int64_t shape[LOCO_MAX_DIMS];
    memcpy(shape, y->shape, sizeof shape);
    shape[y->ndim - 1] = N2;
    loco_tensor t = {0};
    loco_status st = loco_tensor_alloc(be, y->dtype, y->ndim, shape, &t, err);
    if (st == LOCO_OK) st = loco_linear(be, &t, x, w, bias, LOCO_ACT_NONE, err);
    if (st == LOCO_OK) st = loco_geglu(be, y, &t, err);
    loco_tensor_free(&t);
    return st;
}

loco_status loco_ln_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                           const loco_tensor *beta, float eps, const loco_tensor *w, const loco_tensor *bias, int geglu,
                           loco_err *err) {
    const char *op = geglu ? "ln_linear_geglu" : "ln_linear";
    int64_t K = 0;
    if (geglu) {
        TRY(check_linear_geglu(be, op, y, x, w, bias, err));
        K = w->shape[1];
    } else {
        TRY(check_linear(be, op, y, x, w, bias, &K, err));
    }
    TRY(check_eps(op, eps, err));
    if (!gamma) return loco_err_set(err, LOCO_EINVAL, "%s: gamma is NULL", op);
    TRY(check_affine(be, op, "gamma", gamma, K, x, y, err));
    if (beta) TRY(check_affine(be, op, "beta", beta, K, x, y, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    if (be->ops->ln_linear) {
        double t0 = prof_begin(be);
        const loco_status op_st = be->ops->ln_linear(be, y, x, gamma, beta, eps, w, bias, geglu, err);
        const double flops = (geglu ? 4.0 : 2.0) * (double)loco_tensor_numel(y) * (double)K;
        if (op_st != LOCO_EUNSUPPORTED) return prof_end(be, LOCO_OP_LINEAR, op, y, w, flops, t0, op_st);
    }
    /* the unfused form, exactly what a caller would write: n = layer_norm(x), y = linear(n) */
    loco_tensor n = {0};
    loco_status st = loco_tensor_alloc(be, x->dtype, x->ndim, x->shape, &n, err);
    if (st == LOCO_OK) st = loco_layer_norm(be, &n, x, gamma, beta, eps, err);
    if (st == LOCO_OK)
        st = geglu ? loco_linear_geglu(be, y, &n, w, bias, err) : loco_linear(be, y, &n, w, bias, LOCO_ACT_NONE, err);
    loco_tensor_free(&n);
    return st;
}

loco_status loco_linear_many(loco_backend *be, int n, loco_tensor *const *y, const loco_tensor *x,
                             const loco_tensor *const *w, const loco_tensor *const *bias, loco_err *err) {
    const char *op = "linear_many";
    TRY(check_backend(be, op, err));
    if (n < 0 || (n > 0 && (!y || !w)))
        return loco_err_set(err, LOCO_EINVAL, "%s: %d layers with %s", op, n, n < 0 ? "a negative count" : "NULL arrays");
    double flops = 0.0;
    for (int i = 0; i < n; i++) {
        int64_t K = 0;
        const loco_tensor *b = bias ? bias[i] : NULL;
        loco_status st = check_linear(be, op, y[i], x, w[i], b, &K, err);
        if (st == LOCO_OK && x->ndim != 2)
            st = loco_err_set(err, LOCO_EINVAL, "%s: x must be [rows, features], not %d-D", op, x->ndim);
        for (int j = 0; st == LOCO_OK && j < i; j++)
            if (overlaps(y[i], y[j])) st = loco_err_set(err, LOCO_EINVAL, "%s: outputs %d and %d overlap", op, j, i);
        if (st != LOCO_OK) return loco_err_prefix(err, "layer %d", i);
        flops += 2.0 * (double)loco_tensor_numel(y[i]) * (double)K;
    }
    if (n == 0) return LOCO_OK;
    if (be->ops->linear_many) {
        double t0 = prof_begin(be);
        const loco_status op_st = be->ops->linear_many(be, n, y, x, w, bias, err);
        if (op_st != LOCO_EUNSUPPORTED) return prof_end(be, LOCO_OP_LINEAR, op, y[0], w[0], flops, t0, op_st);
    }
    for (int i = 0; i < n; i++) TRY(loco_linear(be, y[i], x, w[i], bias ? bias[i] : NULL, LOCO_ACT_NONE, err));
    return LOCO_OK;
}

/* The checks loco_linear_from_channels and loco_linear_to_channels share: y [B, a, b], x [B, c,
 * d] of one dtype with w [N, K], where (from) x is [B, K, L] and y [B, L, N], or (to) x is
 * [B, L, K] and y [B, N, L]. */
static loco_status check_linear_channels(loco_backend *be, const char *op, int to_channels, const loco_tensor *y,
                                         const loco_tensor *x, const loco_tensor *w, const loco_tensor *bias,
                                         loco_err *err) {
    shapes s;
    TRY(check_weight(be, op, y, x, w, err));
    const int64_t N = w->shape[0], K = w->shape[1];
    const int64_t L = x->ndim == 3 ? (to_channels ? x->shape[1] : x->shape[2]) : -1;
    const int x_ok = x->ndim == 3 && x->shape[to_channels ? 2 : 1] == K;
    const int y_ok = y->ndim == 3 && y->shape[0] == x->shape[0] && y->shape[to_channels ? 1 : 2] == N &&
                     y->shape[to_channels ? 2 : 1] == L;
    if (!x_ok || !y_ok)
        return loco_err_set(err, LOCO_EINVAL, "%s: x %s and y %s must be %s for w %s", op, shp(&s, 0, x),
                            shp(&s, 1, y), to_channels ? "[B, L, in] and [B, out, L]" : "[B, in, L] and [B, L, out]",
                            shp(&s, 2, w));
    return check_bias_alias(be, op, y, x, w, bias, err);
}

loco_status loco_linear_from_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *bias, loco_err *err) {
    const char *op = "linear_from_channels";
    TRY(check_linear_channels(be, op, 0, y, x, w, bias, err));
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    const double flops = 2.0 * (double)loco_tensor_numel(y) * (double)w->shape[1];
    if (be->ops->linear_from_channels) {
        double t0 = prof_begin(be);
        const loco_status op_st = be->ops->linear_from_channels(be, y, x, w, bias, err);
        return prof_end(be, LOCO_OP_LINEAR, op, y, w, flops, t0, op_st);
    }
    /* the unfused form: t = x transposed to [B, L, K], y = linear(t) */
    loco_tensor t = {0};
    loco_status st = loco_tensor_alloc(be, x->dtype, 3, (int64_t[]){x->shape[0], x->shape[2], x->shape[1]}, &t, err);
    if (st == LOCO_OK) st = loco_transpose12(be, &t, x, err);
    if (st == LOCO_OK) st = loco_linear(be, y, &t, w, bias, LOCO_ACT_NONE, err);
    loco_tensor_free(&t);
    return st;
}

loco_status loco_linear_to_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                    const loco_tensor *bias, const loco_tensor *r, loco_err *err) {
    const char *op = "linear_to_channels";
    TRY(check_linear_channels(be, op, 1, y, x, w, bias, err));
    if (r) {
        TRY(check_tensor(be, op, "r", r, err));
        TRY(same_dtype(op, "r", r, "y", y, err));
        TRY(same_shape(op, "r", r, "y", y, err));
        TRY(inplace_or_disjoint(op, "y", y, "r", r, err));
    }
    if (loco_tensor_numel(y) == 0) return LOCO_OK;
    const double flops = 2.0 * (double)loco_tensor_numel(y) * (double)w->shape[1];
    if (be->ops->linear_to_channels) {
        double t0 = prof_begin(be);
        const loco_status op_st = be->ops->linear_to_channels(be, y, x, w, bias, r, err);
        return prof_end(be, LOCO_OP_LINEAR, op, y, w, flops, t0, op_st);
    }
    /* the unfused form, exactly what a caller would write: t = linear(x), y = t transposed (+ r);
     * with r == y the transpose goes to a second temporary first */
    loco_tensor t = {0}, tt = {0};
    const int in_place = r && r->data == y->data;
    loco_status st = loco_tensor_alloc(be, x->dtype, 3, (int64_t[]){x->shape[0], x->shape[1], w->shape[0]}, &t, err);
    if (st == LOCO_OK && in_place) st = loco_tensor_alloc(be, y->dtype, 3, y->shape, &tt, err);
    if (st == LOCO_OK) st = loco_linear(be, &t, x, w, bias, LOCO_ACT_NONE, err);
    if (st == LOCO_OK) st = loco_transpose12(be, in_place ? &tt : y, &t, err);
    if (st == LOCO_OK && r) st = loco_add(be, y, in_place ? &tt : y, r, err);
    loco_tensor_free(&t);
    loco_tensor_free(&tt);
    return st;
}
