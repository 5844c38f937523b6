/* cpu_elementwise.c: the CPU backend's elementwise and layout ops: activations, GEGLU, add,
 * channel bias, linear combinations, copy/convert, fill, transpose, concat, nearest upsampling,
 * embedding gather and channel overwrite. All are memory-bound: each reads its inputs once and
 * writes its output once, split into chunks over the backend's threads. */
#include "cpu_internal.h"
#include "cpu_math.h"

#include <string.h>

#define GRAIN (1 << 15) /* elements per chunk: 128 KiB of f32, big enough to hide scheduling */

static float *f32(const loco_tensor *t) { return (float *)t->data; }

/* Rows of `width` elements per chunk so that a chunk holds about GRAIN elements. */
static size_t row_grain(size_t width) { return width >= GRAIN ? 1 : GRAIN / (width ? width : 1); }

/* ---- activation kernels ------------------------------------------------------------------------ */

CPU_MULTIVERSION void cpu_act_row(float *y, const float *x, const float *bias, size_t n, loco_act act) {
    /* One loop per case keeps each one a straight vector loop; y == x is allowed because
     * element i is read before it is written and no other element is touched. */
#define ACT_LOOP(EXPR)                                                                                             \
    do {                                                                                                           \
        if (bias) {                                                                                                \
            _Pragma("omp simd") for (size_t i = 0; i < n; i++) {                                                   \
                float v = x[i] + bias[i];                                                                          \
                y[i] = EXPR;                                                                                       \
            }                                                                                                      \
        } else {                                                                                                   \
            _Pragma("omp simd") for (size_t i = 0; i < n; i++) {                                                   \
                float v = x[i];                                                                                    \
                y[i] = EXPR;                                                                                       \
            }                                                                                                      \
        }                                                                                                          \
    } while (0)
    switch (act) {
    case LOCO_ACT_SILU: ACT_LOOP(cpu_silu(v)); break;
    case LOCO_ACT_GELU: ACT_LOOP(cpu_gelu(v)); break;
    case LOCO_ACT_GELU_TANH: ACT_LOOP(cpu_gelu_tanh(v)); break;
    case LOCO_ACT_QUICK_GELU: ACT_LOOP(cpu_quick_gelu(v)); break;
    default: ACT_LOOP(v); break;
    }
#undef ACT_LOOP
}

CPU_MULTIVERSION static void geglu_row(float *y, const float *value, const float *gate, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = value[i] * cpu_gelu(gate[i]);
}

CPU_MULTIVERSION static void add_row(float *y, const float *a, const float *b, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

CPU_MULTIVERSION static void add_scalar_row(float *y, const float *x, float s, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = x[i] + s;
}

/* ---- activation, geglu ----------------------------------------------------------------------- */

typedef struct unary_job {
    float *y;
    const float *x;
    loco_act act;
} unary_job;

static void activation_range(void *ctx, size_t b, size_t e, int tid) {
    const unary_job *j = ctx;
    cpu_act_row(j->y + b, j->x + b, NULL, e - b, j->act);
}

loco_status cpu_activation(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act act, loco_err *err) {
    (void)err;
    unary_job j = {f32(y), f32(x), act};
    if (act == LOCO_ACT_NONE && j.y == j.x) return LOCO_OK;
    cpu_parallel_for(be, (size_t)loco_tensor_numel(y), GRAIN, activation_range, &j);
    return LOCO_OK;
}

typedef struct geglu_job {
    float *y;
    const float *x;
    size_t n; /* output width; input rows are 2n */
} geglu_job;

static void geglu_range(void *ctx, size_t b, size_t e, int tid) {
    const geglu_job *j = ctx;
    for (size_t r = b; r < e; r++) {
        const float *xr = j->x + r * 2 * j->n;
        geglu_row(j->y + r * j->n, xr, xr + j->n, j->n);
    }
}

loco_status cpu_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    (void)err;
    geglu_job j = {f32(y), f32(x), (size_t)y->shape[y->ndim - 1]};
    size_t rows = (size_t)loco_tensor_numel(y) / j.n;
    cpu_parallel_for(be, rows, row_grain(j.n), geglu_range, &j);
    return LOCO_OK;
}

/* ---- add, channel bias, lincomb --------------------------------------------------------------- */

typedef struct binary_job {
    float *y;
    const float *a, *b;
    size_t inner; /* add_channel_bias: elements per (n, c) */
} binary_job;

static void add_range(void *ctx, size_t b, size_t e, int tid) {
    const binary_job *j = ctx;
    add_row(j->y + b, j->a + b, j->b + b, e - b);
}

loco_status cpu_add(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, loco_err *err) {
    (void)err;
    binary_job j = {f32(y), f32(a), f32(b), 0};
    cpu_parallel_for(be, (size_t)loco_tensor_numel(y), GRAIN, add_range, &j);
    return LOCO_OK;
}

static void channel_bias_range(void *ctx, size_t b, size_t e, int tid) {
    const binary_job *j = ctx;
    for (size_t r = b; r < e; r++) add_scalar_row(j->y + r * j->inner, j->a + r * j->inner, j->b[r], j->inner);
}

loco_status cpu_add_channel_bias(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *bias,
                                 loco_err *err) {
    (void)err;
    size_t rows = (size_t)(x->shape[0] * x->shape[1]);
    binary_job j = {f32(y), f32(x), f32(bias), (size_t)loco_tensor_numel(x) / (rows ? rows : 1)};
    cpu_parallel_for(be, rows, row_grain(j.inner), channel_bias_range, &j);
    return LOCO_OK;
}

typedef struct lincomb_job {
    float *y;
    int n;
    const loco_tensor *const *x;
    const float *coef;
} lincomb_job;

CPU_MULTIVERSION static void lincomb_range(void *ctx, size_t b, size_t e, int tid) {
    const lincomb_job *j = ctx;
    float acc[1024];
    /* Sums a piece at a time into acc and only then writes y, so y may be one of the x[i]. */
    for (size_t p = b; p < e; p += 1024) {
        size_t m = e - p < 1024 ? e - p : 1024;
        const float *x0 = f32(j->x[0]) + p;
        float c0 = j->coef[0];
#pragma omp simd
        for (size_t i = 0; i < m; i++) acc[i] = c0 * x0[i];
        for (int t = 1; t < j->n; t++) {
            const float *xt = f32(j->x[t]) + p;
            float ct = j->coef[t];
#pragma omp simd
            for (size_t i = 0; i < m; i++) acc[i] += ct * xt[i];
        }
        memcpy(j->y + p, acc, m * sizeof(float));
    }
}

loco_status cpu_lincomb(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x, const float *coef,
                        loco_err *err) {
    (void)err;
    lincomb_job j = {f32(y), n, x, coef};
    cpu_parallel_for(be, (size_t)loco_tensor_numel(y), GRAIN, lincomb_range, &j);
    return LOCO_OK;
}

/* ---- copy, fill ------------------------------------------------------------------------------------ */

typedef struct copy_job {
    void *y;
    loco_dtype yt;
    const void *x;
    loco_dtype xt;
} copy_job;

static void copy_range(void *ctx, size_t b, size_t e, int tid) {
    const copy_job *j = ctx;
    size_t ys = loco_dtype_size(j->yt), xs = loco_dtype_size(j->xt);
    char *y = (char *)j->y + b * ys;
    const char *x = (const char *)j->x + b * xs;
    size_t n = e - b;
    if (j->yt == j->xt) {
        memcpy(y, x, n * ys);
        return;
    }
    float buf[2048]; /* every conversion goes through f32, the widest type both sides share */
    for (size_t i = 0; i < n; i += 2048) {
        size_t m = n - i < 2048 ? n - i : 2048;
        loco_convert_to_f32(buf, x + i * xs, j->xt, m);
        loco_convert_from_f32(y + i * ys, j->yt, buf, m);
    }
}

loco_status cpu_copy(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    static const unsigned ok = 1u << LOCO_F32 | 1u << LOCO_F16 | 1u << LOCO_BF16 | 1u << LOCO_F64;
    if (!(ok >> y->dtype & 1u) || !(ok >> x->dtype & 1u))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "copy: the cpu backend cannot convert %s to %s",
                            loco_dtype_name(x->dtype), loco_dtype_name(y->dtype));
    copy_job j = {y->data, y->dtype, x->data, x->dtype};
    cpu_parallel_for(be, (size_t)loco_tensor_numel(y), GRAIN, copy_range, &j);
    return LOCO_OK;
}

typedef struct fill_job {
    float *y;
    float v;
} fill_job;

CPU_MULTIVERSION static void fill_range(void *ctx, size_t b, size_t e, int tid) {
    const fill_job *j = ctx;
    float *y = j->y;
    float v = j->v;
#pragma omp simd
    for (size_t i = b; i < e; i++) y[i] = v;
}

loco_status cpu_fill(loco_backend *be, loco_tensor *y, float value, loco_err *err) {
    (void)err;
    fill_job j = {f32(y), value};
    cpu_parallel_for(be, (size_t)loco_tensor_numel(y), GRAIN, fill_range, &j);
    return LOCO_OK;
}

/* ---- layout ----------------------------------------------------------------------------------------- */

#define TILE 32 /* transpose tiles: 32x32 f32 = 4 KiB in, 4 KiB out, both in L1 */

typedef struct transpose_job {
    float *y;
    const float *x;
    size_t A, B, tiles_a; /* x [N, A, B]; work items are (n, row of tiles) */
} transpose_job;

static void transpose_range(void *ctx, size_t b, size_t e, int tid) {
    const transpose_job *j = ctx;
    for (size_t item = b; item < e; item++) {
        size_t n = item / j->tiles_a, a0 = (item % j->tiles_a) * TILE;
        size_t a1 = a0 + TILE < j->A ? a0 + TILE : j->A;
        const float *x = j->x + n * j->A * j->B;
        float *y = j->y + n * j->A * j->B;
        for (size_t b0 = 0; b0 < j->B; b0 += TILE) {
            size_t b1 = b0 + TILE < j->B ? b0 + TILE : j->B;
            for (size_t bb = b0; bb < b1; bb++)
                for (size_t aa = a0; aa < a1; aa++) y[bb * j->A + aa] = x[aa * j->B + bb];
        }
    }
}

loco_status cpu_transpose12(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    (void)err;
    transpose_job j = {f32(y), f32(x), (size_t)x->shape[1], (size_t)x->shape[2], 0};
    j.tiles_a = (j.A + TILE - 1) / TILE;
    size_t items = (size_t)x->shape[0] * j.tiles_a;
    cpu_parallel_for(be, items, row_grain(TILE * j.B), transpose_range, &j);
    return LOCO_OK;
}

typedef struct concat_job {
    char *y;
    const char *a, *b;
    size_t ia, ib; /* bytes of a and b per outer index */
} concat_job;

static void concat_range(void *ctx, size_t b, size_t e, int tid) {
    const concat_job *j = ctx;
    for (size_t o = b; o < e; o++) {
        char *y = j->y + o * (j->ia + j->ib);
        memcpy(y, j->a + o * j->ia, j->ia);
        memcpy(y + j->ia, j->b + o * j->ib, j->ib);
    }
}

loco_status cpu_concat(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, int axis,
                       loco_err *err) {
    (void)err;
    size_t outer = 1, inner = 1, es = loco_dtype_size(y->dtype);
    for (int i = 0; i < axis; i++) outer *= (size_t)y->shape[i];
    for (int i = axis + 1; i < y->ndim; i++) inner *= (size_t)y->shape[i];
    concat_job j = {y->data, a->data, b->data, (size_t)a->shape[axis] * inner * es,
                    (size_t)b->shape[axis] * inner * es};
    cpu_parallel_for(be, outer, row_grain((j.ia + j.ib) / es), concat_range, &j);
    return LOCO_OK;
}

typedef struct upsample_job {
    float *y;
    const float *x;
    size_t W; /* input rows of W become two output rows of 2W */
} upsample_job;

CPU_MULTIVERSION static void upsample_range(void *ctx, size_t b, size_t e, int tid) {
    const upsample_job *j = ctx;
    size_t W = j->W;
    for (size_t r = b; r < e; r++) {
        const float *x = j->x + r * W;
        float *y = j->y + r * 4 * W;
        for (size_t i = 0; i < W; i++) y[2 * i] = y[2 * i + 1] = x[i];
        memcpy(y + 2 * W, y, 2 * W * sizeof(float));
    }
}

loco_status cpu_upsample_nearest2x(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err) {
    (void)err;
    upsample_job j = {f32(y), f32(x), (size_t)x->shape[3]};
    size_t rows = (size_t)(x->shape[0] * x->shape[1] * x->shape[2]);
    cpu_parallel_for(be, rows, row_grain(4 * j.W), upsample_range, &j);
    return LOCO_OK;
}

typedef struct gather_job {
    float *y;
    const float *table;
    const int32_t *ids;
    size_t C;
} gather_job;

static void gather_range(void *ctx, size_t b, size_t e, int tid) {
    const gather_job *j = ctx;
    for (size_t i = b; i < e; i++) memcpy(j->y + i * j->C, j->table + (size_t)j->ids[i] * j->C, j->C * sizeof(float));
}

loco_status cpu_embedding(loco_backend *be, loco_tensor *y, const loco_tensor *table, const int32_t *ids, int64_t n,
                          loco_err *err) {
    (void)err;
    gather_job j = {f32(y), f32(table), ids, (size_t)table->shape[1]};
    cpu_parallel_for(be, (size_t)n, row_grain(j.C), gather_range, &j);
    return LOCO_OK;
}

typedef struct set_job {
    float *y;
    size_t C;
    const int32_t *ch;
    const float *v;
    int n;
} set_job;

static void set_range(void *ctx, size_t b, size_t e, int tid) {
    const set_job *j = ctx;
    for (size_t r = b; r < e; r++) {
        float *y = j->y + r * j->C;
        for (int k = 0; k < j->n; k++) y[j->ch[k]] = j->v[k];
    }
}

loco_status cpu_set_channels(loco_backend *be, loco_tensor *y, const int32_t *channels, const float *values, int n,
                             loco_err *err) {
    (void)err;
    set_job j = {f32(y), (size_t)y->shape[y->ndim - 1], channels, values, n};
    size_t rows = (size_t)loco_tensor_numel(y) / j.C;
    cpu_parallel_for(be, rows, row_grain((size_t)n * 16), set_range, &j);
    return LOCO_OK;
}
