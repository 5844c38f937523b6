/* cuda_test_util.h: a CPU and a CUDA backend side by side, and "twin" tensors holding the same
 * values on both, for the GPU parity tests (test_cuda_ops.c, test_cuda_optin.c). Inputs are rounded to the GPU's
 * activation dtype before both backends get them; GPU outputs start as NaN. */
#ifndef LOCO_CUDA_TEST_UTIL_H
#define LOCO_CUDA_TEST_UTIL_H

#include "cpu_test_util.h"
#include "gpu_test_util.h"
#include "loco_test.h"

/* ---- environment: a CPU and a CUDA backend side by side ------------------------------------------ */

typedef struct genv {
    loco_backend *cpu, *gpu;
    loco_dtype dt;
    trng r;
    loco_err errc, errg;
} genv;

static inline double tol_for(loco_dtype dt) { return dt == LOCO_BF16 ? 3e-2 : 1e-2; }

/* 1: both backends ready; 0: no usable GPU (why says so); -1: a failure that must not pass
 * as a skip (a GPU is there but the backend does not come up). */
static inline int genv_open(genv *e, loco_dtype dt, uint64_t seed, char *why, size_t n) {
    memset(e, 0, sizeof *e);
    e->dt = dt;
    e->r.s = seed * 0x9E3779B97F4A7C15ull + 1;
    const int opened = gpu_backend_open(dt, &e->gpu, why, n);
    if (opened != 1) return opened;
    e->cpu = cpu_backend(0);
    if (!e->cpu) {
        snprintf(why, n, "cpu backend did not start");
        loco_backend_destroy(e->gpu);
        return -1;
    }
    return 1;
}

static inline void genv_close(genv *e) {
    loco_backend_destroy(e->gpu);
    loco_backend_destroy(e->cpu);
}

#define GPU_ENV(e, dt, seed)                                                                                       \
    genv e;                                                                                                        \
    do {                                                                                                           \
        char why_[1100];                                                                                           \
        int r_ = genv_open(&e, dt, seed, why_, sizeof why_);                                                       \
        if (r_ == 0) SKIP("%s", why_);                                                                             \
        CHECK_MSG(r_ == 1, "%s", why_);                                                                            \
    } while (0)

static inline float round_to(loco_dtype dt, float v) {
    if (dt == LOCO_F16) return loco_f16_to_f32(loco_f32_to_f16(v));
    if (dt == LOCO_BF16) return loco_bf16_to_f32(loco_f32_to_bf16(v));
    return v;
}

/* ---- twin tensors: the same values on both backends ---------------------------------------------- */

typedef struct twin {
    loco_tensor c, g;
} twin;

/* host is rounded to the GPU dtype in place, then uploaded to both. */
static inline int twin_up(genv *e, int nd, const int64_t *shape, float *host, twin *t) {
    size_t n = shape_numel(nd, shape);
    for (size_t i = 0; i < n; i++) host[i] = round_to(e->dt, host[i]);
    if (loco_tensor_alloc(e->cpu, LOCO_F32, nd, shape, &t->c, &e->errc) != LOCO_OK ||
        loco_tensor_upload(&t->c, host, LOCO_F32, &e->errc) != LOCO_OK) {
        fprintf(stderr, "cpu tensor: %s\n", e->errc.msg);
        return 0;
    }
    if (loco_tensor_alloc(e->gpu, e->dt, nd, shape, &t->g, &e->errg) != LOCO_OK ||
        loco_tensor_upload(&t->g, host, LOCO_F32, &e->errg) != LOCO_OK) {
        fprintf(stderr, "gpu tensor: %s\n", e->errg.msg);
        return 0;
    }
    return 1;
}

static inline int twin_rand(genv *e, int nd, const int64_t *shape, float scale, float offset, twin *t) {
    float *h = rand_buf(&e->r, shape_numel(nd, shape), scale, offset);
    int ok = twin_up(e, nd, shape, h, t);
    free(h);
    return ok;
}

/* An output pair: zeros on the CPU, NaN on the GPU (so unwritten elements show). */
static inline int twin_out(genv *e, int nd, const int64_t *shape, twin *t) {
    if (loco_tensor_alloc(e->cpu, LOCO_F32, nd, shape, &t->c, &e->errc) != LOCO_OK ||
        loco_fill(e->cpu, &t->c, 0.0f, &e->errc) != LOCO_OK) {
        fprintf(stderr, "cpu output: %s\n", e->errc.msg);
        return 0;
    }
    if (loco_tensor_alloc(e->gpu, e->dt, nd, shape, &t->g, &e->errg) != LOCO_OK ||
        loco_fill(e->gpu, &t->g, NAN, &e->errg) != LOCO_OK) {
        fprintf(stderr, "gpu output: %s\n", e->errg.msg);
        return 0;
    }
    return 1;
}

static inline void twin_free(twin *t) {
    loco_tensor_free(&t->c);
    loco_tensor_free(&t->g);
}

static inline int both_ok(genv *e, loco_status sc, loco_status sg, const char *what) {
    if (sc != LOCO_OK) fprintf(stderr, "%s on cpu: %s\n", what, e->errc.msg);
    if (sg != LOCO_OK) fprintf(stderr, "%s on cuda: %s\n", what, e->errg.msg);
    return sc == LOCO_OK && sg == LOCO_OK;
}

/* GPU result vs CPU result: no NaN, relative L2 error within tol. */
static inline int twin_close(const twin *t, double tol, const char *what) {
    float *c = download(&t->c), *g = download(&t->g);
    int ok = c && g;
    size_t n = (size_t)loco_tensor_numel(&t->c);
    if (ok) {
        size_t nan = 0, first = 0;
        for (size_t i = 0; i < n; i++)
            if (isnan(g[i]) && nan++ == 0) first = i;
        double e = loco_rel_l2(g, c, n);
        if (nan) fprintf(stderr, "%s: %zu NaN on the GPU, first at %zu (cpu %g)\n", what, nan, first, c[first]);
        if (!(e <= tol)) fprintf(stderr, "%s: relative error %.3g > %.1g\n", what, e, tol);
        else fprintf(stderr, "%s: rel err %.3g (tol %.1g)\n", what, e, tol); /* the record a GPU run keeps */
        ok = nan == 0 && e <= tol;
    }
    free(c);
    free(g);
    return ok;
}

/* Two GPU results must be bit-identical (two runs of one op: a moving result is a race; or two
 * ways to the same values). */
static inline int same_bits(const loco_tensor *a, const loco_tensor *b, const char *what) {
    float *x = download(a), *y = download(b);
    size_t n = (size_t)loco_tensor_numel(a), diff = 0;
    for (size_t i = 0; x && y && i < n; i++) diff += memcmp(&x[i], &y[i], sizeof(float)) != 0;
    if (diff) fprintf(stderr, "%s: %zu of %zu values differ where the bits must be the same\n", what, diff, n);
    int ok = x && y && diff == 0;
    free(x);
    free(y);
    return ok;
}

#endif
