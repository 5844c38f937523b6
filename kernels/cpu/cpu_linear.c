/* cpu_linear.c: y = act(x · wᵀ + bias) on the CPU. The output is cut into tiles; each
 * thread runs the single-threaded sgemm for a tile and then adds the bias and applies the
 * activation to that tile while it is still in cache, so the epilogue costs no extra trip
 * through memory. */
#include "cpu_internal.h"

#include <cblas.h>
#include <limits.h>
#include <string.h>

/* Tiles of up to ~384 rows x 1024 columns. sgemm packs its operands on every call, w's
 * columns once per row tile and x's rows once per column tile, costing about 8/rows and
 * 8/columns of the multiply; tiles this size keep both small while the tile (<= 1.5 MiB)
 * stays in L2 from the sgemm to the epilogue. */
#define ROWS_TARGET 384
#define COLS_MAX 1024

typedef struct linear_job {
    float *y;
    const float *x, *w, *bias;
    int M, N, K;
    int mb, nb, tiles_n; /* tile height and width, tiles per row of tiles */
    loco_act act;
} linear_job;

static void linear_range(void *ctx, size_t b, size_t e, int tid) {
    const linear_job *j = ctx;
    for (size_t t = b; t < e; t++) {
        int m0 = (int)(t / (size_t)j->tiles_n) * j->mb, n0 = (int)(t % (size_t)j->tiles_n) * j->nb;
        int mm = j->M - m0 < j->mb ? j->M - m0 : j->mb;
        int nn = j->N - n0 < j->nb ? j->N - n0 : j->nb;
        float *y = j->y + (size_t)m0 * j->N + n0;
        if (j->K > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mm, nn, j->K, 1.0f, j->x + (size_t)m0 * j->K, j->K,
                        j->w + (size_t)n0 * j->K, j->K, 0.0f, y, j->N);
        } else { /* an empty sum: sgemm rejects K = 0 strides */
            for (int r = 0; r < mm; r++) memset(y + (size_t)r * j->N, 0, (size_t)nn * sizeof(float));
        }
        if (j->bias || j->act != LOCO_ACT_NONE)
            for (int r = 0; r < mm; r++)
                cpu_act_row(y + (size_t)r * j->N, y + (size_t)r * j->N, j->bias ? j->bias + n0 : NULL, (size_t)nn,
                            j->act);
    }
}

/* n split into `parts` equal pieces, rounded up to a multiple of 16 (the width of the sgemm
 * micro-kernels) but never past n. */
static int piece(int n, long parts) {
    long w = (n + parts - 1) / parts;
    w = (w + 15) / 16 * 16;
    return w < n ? (int)w : n;
}

/* Tile shape: ROWS_TARGET x COLS_MAX at most; while there are fewer tiles than twice the
 * threads (CLIP's 77-token and the time embedding's 2-row calls), cut the wider side further;
 * then balance the count over the threads. */
static void choose_tiles(int M, int N, int threads, int *mb, int *nb) {
    long rp = (M + ROWS_TARGET - 1) / ROWS_TARGET, cp = (N + COLS_MAX - 1) / COLS_MAX;
    while (rp * cp < 2L * threads) {
        if (N / (cp + 1) >= 64 && N / cp >= M / rp)
            cp++;
        else if (M / (rp + 1) >= 16)
            rp++;
        else
            break;
    }
    long want = cpu_balance(rp * cp, threads);
    while (rp * cp < want && M / (rp + 1) >= 16) rp++;
    *mb = piece(M, rp);
    *nb = piece(N, cp);
}

loco_status cpu_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                       const loco_tensor *bias, loco_act act, loco_err *err) {
    int64_t K = w->shape[1], N = w->shape[0], M = loco_tensor_numel(x) / (K > 0 ? K : 1);
    if (K == 0) M = loco_tensor_numel(y) / N;
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || M * N > (int64_t)1 << 62)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "linear: %lld x %lld x %lld is too large for sgemm's int sizes",
                            (long long)M, (long long)N, (long long)K);
    linear_job j = {(float *)y->data, (const float *)x->data, (const float *)w->data,
                    bias ? (const float *)bias->data : NULL, (int)M, (int)N, (int)K, 0, 0, 0, act};
    choose_tiles(j.M, j.N, cpu_threads(be), &j.mb, &j.nb);
    j.tiles_n = (j.N + j.nb - 1) / j.nb;
    size_t tiles = (size_t)((j.M + j.mb - 1) / j.mb) * (size_t)j.tiles_n;
    cpu_parallel_for(be, tiles, 1, linear_range, &j);
    return LOCO_OK;
}
