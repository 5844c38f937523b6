/* cpu_test_util.h: helpers shared by the CPU backend's unit tests: a CPU backend, seeded
 * random inputs, tensors made from host arrays, downloads, the error measure against double
 * references, and the double-precision activation formulas the references use. */
#ifndef LOCO_CPU_TEST_UTIL_H
#define LOCO_CPU_TEST_UTIL_H

#include "backend.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bound of DESIGN.md for one fp32 component against a double reference. */
#define OP_TOL 1e-5

static inline loco_backend *cpu_backend(int threads) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CPU;
    o.num_threads = threads;
    loco_backend *be = NULL;
    loco_err err;
    if (loco_backend_create(&o, &be, &err) != LOCO_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return NULL;
    }
    return be;
}

/* xorshift64*: reproducible inputs without global state. */
typedef struct trng {
    uint64_t s;
} trng;

static inline float trng_uniform(trng *r) { /* [-1, 1) */
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    uint64_t v = r->s * 2685821657736338717ull;
    return (float)((double)(v >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static inline float *rand_buf(trng *r, size_t n, float scale, float offset) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = trng_uniform(r) * scale + offset;
    return p;
}

static inline size_t shape_numel(int nd, const int64_t *shape) {
    size_t n = 1;
    for (int i = 0; i < nd; i++) n *= (size_t)shape[i];
    return n;
}

/* An F32 tensor holding `host` (or zeros when host is NULL). Returns 0 on success. */
static inline int make_tensor(loco_backend *be, int nd, const int64_t *shape, const float *host, loco_tensor *t) {
    loco_err err;
    if (loco_tensor_alloc(be, LOCO_F32, nd, shape, t, &err) != LOCO_OK) {
        fprintf(stderr, "alloc: %s\n", err.msg);
        return -1;
    }
    size_t n = shape_numel(nd, shape);
    float *zeros = NULL;
    if (!host) host = zeros = calloc(n ? n : 1, sizeof(float));
    loco_status st = loco_tensor_upload(t, host, LOCO_F32, &err);
    free(zeros);
    if (st != LOCO_OK) fprintf(stderr, "upload: %s\n", err.msg);
    return st == LOCO_OK ? 0 : -1;
}

/* A random F32 tensor; its host copy goes to *host (caller frees). */
static inline int rand_tensor(loco_backend *be, trng *r, int nd, const int64_t *shape, float scale, float offset,
                       loco_tensor *t, float **host) {
    *host = rand_buf(r, shape_numel(nd, shape), scale, offset);
    return make_tensor(be, nd, shape, *host, t);
}

static inline float *download(const loco_tensor *t) {
    size_t n = (size_t)loco_tensor_numel(t);
    float *p = malloc((n ? n : 1) * sizeof(float));
    loco_err err;
    if (loco_tensor_download_f32(t, p, &err) != LOCO_OK) {
        fprintf(stderr, "download: %s\n", err.msg);
        free(p);
        return NULL;
    }
    return p;
}

/* ||got - ref|| / ||ref||, NaN-propagating; ref == 0 gives the absolute norm. */
static inline double rel_err(const float *got, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Downloads t and compares it with ref; prints the error when over tol. */
static inline int matches(const loco_tensor *t, const double *ref, double tol, const char *what) {
    float *got = download(t);
    if (!got) return 0;
    double e = rel_err(got, ref, (size_t)loco_tensor_numel(t));
    free(got);
    if (!(e <= tol)) {
        fprintf(stderr, "%s: relative error %.3g > %.1g\n", what, e, tol);
        return 0;
    }
    return 1;
}

static inline double ref_act(double v, loco_act a) {
    switch (a) {
    case LOCO_ACT_SILU: return v / (1.0 + exp(-v));
    case LOCO_ACT_GELU: return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    case LOCO_ACT_GELU_TANH: return 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    case LOCO_ACT_QUICK_GELU: return v / (1.0 + exp(-1.702 * v));
    default: return v;
    }
}

/* The status is `code` and the message names the op. */
static inline int fails_with(loco_status st, const loco_err *err, loco_status code, const char *op) {
    if (st != code) {
        fprintf(stderr, "expected %s from %s, got %s (%s)\n", loco_status_name(code), op, loco_status_name(st),
                err->msg);
        return 0;
    }
    if (!strstr(err->msg, op)) {
        fprintf(stderr, "message does not name %s: %s\n", op, err->msg);
        return 0;
    }
    return 1;
}

#endif
