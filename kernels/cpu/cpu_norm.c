/* cpu_norm.c: GroupNorm (with the SiLU that follows it in every ResNet block fused in) and
 * LayerNorm for the CPU backend. Statistics accumulate in double, so the mean and the biased
 * variance are exact to fp32 precision whatever the group size; the output pass is fp32.
 * y = (x - mean) / sqrt(var + eps) * gamma + beta, as torch defines both norms. */
#include "cpu_internal.h"
#include "cpu_math.h"

#include <math.h>

/* Σx and Σx² of n floats, in double. One pass, vectorised; the block is in cache for the
 * output pass that follows. */
CPU_MULTIVERSION static void moments(const float *x, size_t n, double *sum_out, double *sq_out) {
    double s = 0, q = 0;
#pragma omp simd reduction(+ : s, q)
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        s += v;
        q += v * v;
    }
    *sum_out = s;
    *sq_out = q;
}

/* The mean as a float pair hi + lo: x - hi is exact for x near the mean (Sterbenz), so
 * (x - hi) - lo keeps the digits a single float mean would lose when |mean| >> std. */
typedef struct mean2 {
    float hi, lo;
} mean2;

/* y = (x - mean) * a + b, then SiLU when asked: one channel of a group norm. */
CPU_MULTIVERSION static void gn_apply(float *y, const float *x, size_t n, mean2 m, float a, float b, int silu) {
    if (silu) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) y[i] = cpu_silu(((x[i] - m.hi) - m.lo) * a + b);
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++) y[i] = ((x[i] - m.hi) - m.lo) * a + b;
    }
}

/* y = (x - mean) * rstd * gamma + beta over one row (beta may be NULL). */
CPU_MULTIVERSION static void ln_apply(float *y, const float *x, size_t n, mean2 m, float rstd, const float *gamma,
                                      const float *beta) {
    if (beta) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) y[i] = ((x[i] - m.hi) - m.lo) * rstd * gamma[i] + beta[i];
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++) y[i] = ((x[i] - m.hi) - m.lo) * rstd * gamma[i];
    }
}

/* Mean and 1/sqrt(var + eps) from the sums; the biased variance, clamped at 0 against
 * rounding when all values are equal. */
static void finish_stats(double sum, double sq, size_t n, float eps, mean2 *mean, float *rstd) {
    double m = sum / (double)n;
    double var = sq / (double)n - m * m;
    if (var < 0) var = 0;
    mean->hi = (float)m;
    mean->lo = (float)(m - (double)mean->hi);
    *rstd = (float)(1.0 / sqrt(var + (double)eps));
}

typedef struct gn_job {
    float *y;
    const float *x, *gamma, *beta;
    size_t C, S, cpg, groups; /* x [N, C, S]; cpg channels per group */
    float eps;
    int silu;
} gn_job;

static void gn_range(void *ctx, size_t b, size_t e, int tid) {
    const gn_job *j = ctx;
    for (size_t item = b; item < e; item++) { /* item = n * groups + g */
        size_t n = item / j->groups, g = item % j->groups;
        size_t c0 = g * j->cpg;
        /* A group's channels are adjacent in NCHW: one contiguous block. */
        const float *x = j->x + (n * j->C + c0) * j->S;
        float *y = j->y + (n * j->C + c0) * j->S;
        double sum, sq;
        moments(x, j->cpg * j->S, &sum, &sq);
        mean2 mean;
        float rstd;
        finish_stats(sum, sq, j->cpg * j->S, j->eps, &mean, &rstd);
        for (size_t c = 0; c < j->cpg; c++)
            gn_apply(y + c * j->S, x + c * j->S, j->S, mean, rstd * j->gamma[c0 + c], j->beta[c0 + c], j->silu);
    }
}

loco_status cpu_group_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                           const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu, loco_err *err) {
    (void)err;
    size_t N = (size_t)x->shape[0], C = (size_t)x->shape[1];
    size_t S = (size_t)loco_tensor_numel(x) / (N * C);
    gn_job j = {(float *)y->data, (const float *)x->data, (const float *)gamma->data, (const float *)beta->data,
                C, S, C / (size_t)groups, (size_t)groups, eps, fuse_silu};
    cpu_parallel_for(be, N * (size_t)groups, 1, gn_range, &j);
    return LOCO_OK;
}

typedef struct ln_job {
    float *y;
    const float *x, *gamma, *beta;
    size_t C;
    float eps;
} ln_job;

static void ln_range(void *ctx, size_t b, size_t e, int tid) {
    const ln_job *j = ctx;
    for (size_t r = b; r < e; r++) {
        const float *x = j->x + r * j->C;
        double sum, sq;
        moments(x, j->C, &sum, &sq);
        mean2 mean;
        float rstd;
        finish_stats(sum, sq, j->C, j->eps, &mean, &rstd);
        ln_apply(j->y + r * j->C, x, j->C, mean, rstd, j->gamma, j->beta);
    }
}

loco_status cpu_layer_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                           const loco_tensor *beta, float eps, loco_err *err) {
    (void)err;
    size_t C = (size_t)x->shape[x->ndim - 1];
    size_t rows = (size_t)loco_tensor_numel(x) / C;
    ln_job j = {(float *)y->data, (const float *)x->data, (const float *)gamma->data,
                beta ? (const float *)beta->data : NULL, C, eps};
    size_t grain = C >= (1 << 14) ? 1 : (1 << 14) / C;
    cpu_parallel_for(be, rows, grain, ln_range, &j);
    return LOCO_OK;
}
