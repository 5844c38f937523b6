/* backend_check.h: what every op wrapper of backend.h shares (backend_ops.c,
 * backend_ops_linear.c): the argument checks, which name the op and the argument at fault, and
 * the profiling hooks around the dispatch to a backend. Only kernels/ includes this. */
#ifndef LOCO_BACKEND_CHECK_H
#define LOCO_BACKEND_CHECK_H

#include "backend_impl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static inline double prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Called before an op is dispatched: the start time (0 when not profiling). Syncing first keeps
 * earlier asynchronous work out of this op's time. */
static inline double prof_begin(loco_backend *be) {
    if (!be->profiling) return 0;
    if (be->ops->sync) be->ops->sync(be, NULL);
    return prof_now();
}

static inline int prof_dims(char *b, size_t n, const char *tag, const loco_tensor *t) {
    if (!t || n < 4) return 0;
    int o = snprintf(b, n, " %s[", tag);
    for (int i = 0; i < t->ndim && o > 0 && (size_t)o < n; i++)
        o += snprintf(b + o, n - (size_t)o, i ? ",%lld" : "%lld", (long long)t->shape[i]);
    if (o > 0 && (size_t)o < n) o += snprintf(b + o, n - (size_t)o, "]");
    return o > 0 && (size_t)o < n ? o : (int)n - 1;
}

/* Called with the op's result: attributes its time and FLOPs to its kind and to the row of
 * (name, shapes of a and b), then passes the status through. The row text is only built
 * while profiling. */
static inline loco_status prof_end(loco_backend *be, loco_op_kind kind, const char *name, const loco_tensor *a,
                            const loco_tensor *b, double flops, double t0, loco_status st) {
    if (!be->profiling) return st;
    if (be->ops->sync) be->ops->sync(be, NULL);
    const double dt = prof_now() - t0;
    be->profile.calls[kind]++;
    be->profile.seconds[kind] += dt;
    be->profile.flops[kind] += flops;
    char what[sizeof be->profile_rows[0].what];
    int o = snprintf(what, sizeof what, "%s", name);
    const int att = kind == LOCO_OP_ATTENTION, weights = kind == LOCO_OP_LINEAR || kind == LOCO_OP_CONV2D;
    o += prof_dims(what + o, sizeof what - (size_t)o, att ? "q" : "y", a);
    prof_dims(what + o, sizeof what - (size_t)o, att ? "k" : weights ? "w" : "x", b);
    loco_op_profile_row *row = NULL;
    for (int i = 0; i < be->profile_nrows && !row; i++)
        if (be->profile_rows[i].kind == kind && !strcmp(be->profile_rows[i].what, what)) row = &be->profile_rows[i];
    if (!row && be->profile_nrows < LOCO_PROFILE_ROWS - LOCO_OP_KIND_COUNT) {
        row = &be->profile_rows[be->profile_nrows++];
        memset(row, 0, sizeof *row);
        row->kind = kind;
        snprintf(row->what, sizeof row->what, "%s", what);
    }
    for (int i = 0; i < be->profile_nrows && !row; i++) /* the table is full: an "(other)" row per kind */
        if (be->profile_rows[i].kind == kind && !strcmp(be->profile_rows[i].what, "(other)"))
            row = &be->profile_rows[i];
    if (!row) {
        row = &be->profile_rows[be->profile_nrows++];
        memset(row, 0, sizeof *row);
        row->kind = kind;
        snprintf(row->what, sizeof row->what, "(other)");
    }
    row->calls++;
    row->seconds += dt;
    row->flops += flops;
    return st;
}

#define SHAPE_BUF 128

/* Shape strings for messages; one buffer per argument so several fit in one message. */
typedef struct shapes {
    char s[4][SHAPE_BUF];
} shapes;

static inline const char *shp(shapes *b, int i, const loco_tensor *t) {
    return loco_tensor_shape_str(t, b->s[i], SHAPE_BUF);
}

static inline int op_dtype_ok(const loco_backend *be, loco_dtype t) {
    if (t == be->act_dtype) return 1;
    return (unsigned)t < 32 && (be->op_dtypes >> t & 1u) && loco_dtype_is_float(t);
}

/* Backend membership, a sane shape and data presence of one tensor argument. */
static inline loco_status check_meta(loco_backend *be, const char *op, const char *name, const loco_tensor *t,
                              loco_err *err) {
    if (!t) return loco_err_set(err, LOCO_EINVAL, "%s: %s is NULL", op, name);
    if (t->be != be)
        return loco_err_set(err, LOCO_EINVAL, "%s: %s belongs to %s", op, name,
                            t->be ? "another backend" : "no backend (never allocated?)");
    if (t->ndim < 0 || t->ndim > LOCO_MAX_DIMS)
        return loco_err_set(err, LOCO_EINVAL, "%s: %s has ndim %d", op, name, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return loco_err_set(err, LOCO_EINVAL, "%s: %s has a negative dimension", op, name);
    if (!t->data && loco_tensor_numel(t) > 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: %s has no data (freed or never allocated)", op, name);
    return LOCO_OK;
}

/* check_meta, and the dtype is one the backend computes in. */
static inline loco_status check_tensor(loco_backend *be, const char *op, const char *name, const loco_tensor *t,
                                loco_err *err) {
    loco_status st = check_meta(be, op, name, t, err);
    if (st != LOCO_OK) return st;
    if (!op_dtype_ok(be, t->dtype)) {
        shapes b;
        return loco_err_set(err, LOCO_EINVAL, "%s: %s %s has dtype %s, but this %s backend computes in %s", op, name,
                            shp(&b, 0, t), loco_dtype_name(t->dtype), loco_device_name(be->device),
                            loco_dtype_name(be->act_dtype));
    }
    return LOCO_OK;
}

static inline loco_status check_backend(loco_backend *be, const char *op, loco_err *err) {
    if (!be) return loco_err_set(err, LOCO_EINVAL, "%s: backend is NULL", op);
    return LOCO_OK;
}

static inline loco_status same_dtype(const char *op, const char *an, const loco_tensor *a, const char *bn,
                              const loco_tensor *b, loco_err *err) {
    if (a->dtype == b->dtype) return LOCO_OK;
    return loco_err_set(err, LOCO_EINVAL, "%s: %s is %s but %s is %s (one call computes in one dtype)", op, an,
                        loco_dtype_name(a->dtype), bn, loco_dtype_name(b->dtype));
}

/* The prologue most ops share: a backend, an output and an input it computes in, of one dtype. */
static inline loco_status check_pair(loco_backend *be, const char *op, const char *yn, const loco_tensor *y, const char *xn,
                              const loco_tensor *x, loco_err *err) {
    loco_status st = check_backend(be, op, err);
    if (st == LOCO_OK) st = check_tensor(be, op, yn, y, err);
    if (st == LOCO_OK) st = check_tensor(be, op, xn, x, err);
    if (st == LOCO_OK) st = same_dtype(op, yn, y, xn, x, err);
    return st;
}

static inline loco_status same_shape(const char *op, const char *an, const loco_tensor *a, const char *bn,
                              const loco_tensor *b, loco_err *err) {
    if (loco_tensor_same_shape(a, b)) return LOCO_OK;
    shapes s;
    return loco_err_set(err, LOCO_EINVAL, "%s: %s %s and %s %s must have the same shape", op, an, shp(&s, 0, a), bn,
                        shp(&s, 1, b));
}

/* Byte ranges of two tensors intersect. */
static inline int overlaps(const loco_tensor *a, const loco_tensor *b) {
    size_t na = loco_tensor_nbytes(a), nb = loco_tensor_nbytes(b);
    if (!na || !nb || !a->data || !b->data) return 0;
    uintptr_t a0 = (uintptr_t)a->data, b0 = (uintptr_t)b->data;
    return a0 < b0 + nb && b0 < a0 + na;
}

/* Output y may not share memory with input x. */
static inline loco_status no_alias(const char *op, const char *yn, const loco_tensor *y, const char *xn,
                            const loco_tensor *x, loco_err *err) {
    if (!overlaps(y, x)) return LOCO_OK;
    return loco_err_set(err, LOCO_EINVAL, "%s: output %s overlaps input %s; this op cannot run in place", op, yn,
                        xn);
}

/* Output y may be x itself (in place) or disjoint from it, but not partly overlapping. */
static inline loco_status inplace_or_disjoint(const char *op, const char *yn, const loco_tensor *y, const char *xn,
                                       const loco_tensor *x, loco_err *err) {
    if (!overlaps(y, x)) return LOCO_OK;
    if (y->data == x->data && loco_tensor_numel(y) == loco_tensor_numel(x) && y->dtype == x->dtype) return LOCO_OK;
    return loco_err_set(err, LOCO_EINVAL,
                        "%s: output %s partly overlaps input %s; in place means the very same memory", op, yn, xn);
}

static inline loco_status check_act(const char *op, loco_act act, loco_err *err) {
    if ((unsigned)act < LOCO_ACT_COUNT) return LOCO_OK;
    return loco_err_set(err, LOCO_EINVAL, "%s: unknown activation %d", op, (int)act);
}

#define TRY(expr)                                                                                                  \
    do {                                                                                                           \
        loco_status st_ = (expr);                                                                                  \
        if (st_ != LOCO_OK) return st_;                                                                            \
    } while (0)

/* A norm's eps, and its gamma/beta: [C] in the op's dtype, not written by the op. */
static inline loco_status check_eps(const char *op, float eps, loco_err *err) {
    if (eps >= 0 && isfinite(eps)) return LOCO_OK;
    return loco_err_set(err, LOCO_EINVAL, "%s: eps must be finite and >= 0, got %g", op, (double)eps);
}

static inline loco_status check_affine(loco_backend *be, const char *op, const char *name, const loco_tensor *t,
                                       int64_t C, const loco_tensor *x, const loco_tensor *y, loco_err *err) {
    shapes s;
    TRY(check_tensor(be, op, name, t, err));
    TRY(same_dtype(op, name, t, "x", x, err));
    if (t->ndim != 1 || t->shape[0] != C)
        return loco_err_set(err, LOCO_EINVAL, "%s: %s %s must be [%lld] for x %s", op, name, shp(&s, 0, t),
                            (long long)C, shp(&s, 1, x));
    return no_alias(op, "y", y, name, t, err);
}

#endif
