/* cpu_conv2d.c: 2-D convolution (NCHW) on the CPU as sgemm over im2col columns:
 * y[n] [Cout, P] = w [Cout, Cin*kh*kw] · col [Cin*kh*kw, P], P = Ho*Wo output pixels.
 *
 * The columns are never built for a whole image (47 MB for a 320-channel 64x64 3x3 conv):
 * each task builds a block of a few hundred columns in a per-thread buffer and multiplies it at
 * once, so the block goes from im2col to sgemm through the cache. A 1x1 conv with stride 1 and
 * no padding needs no columns at all: x[n] is already [Cin, P].
 *
 * Column blocks run over the columns of all images in the batch, so small images (8x8 at the
 * bottom of a UNet) share one block and one packing of w; a block that spans images is
 * multiplied into a scratch tile and scattered into y. Tasks are (column block, output-channel
 * block); output channels are split only when there are too few blocks for the threads. */
#include "cpu_internal.h"

#include <cblas.h>
#include <limits.h>
#include <string.h>

/* Columns per block. sgemm packs all of w on every call, so a block must be wide enough to
 * make that a small fraction of the multiply (~8/width of it; measured best at 512-768 on a
 * 320-channel 64x64 conv); the block (Cin*kh*kw x width floats) is capped at 16 MiB per
 * thread so that it stays in the last-level cache between im2col and sgemm. */
#define COLS_TARGET 768
#define COL_BLOCK_FLOATS (1 << 22)

typedef struct conv_job {
    float *y;
    const float *x, *w, *bias;
    float *cols;  /* per thread K x pb floats, or NULL when every block reads x directly */
    float *tiles; /* per thread cb x pb floats for blocks that span images, or NULL */
    int Cin, H, W, Cout, kh, kw, stride, pt, pl, Ho, Wo;
    int K, P;      /* K = Cin*kh*kw rows of w; P output pixels per image */
    long total;    /* columns of the whole batch: images * P */
    int pb, nblk;  /* column block width and count */
    int cb, ncblk; /* output-channel block height and count */
    int direct;    /* 1x1, stride 1, no padding: x[n] is its own column matrix */
} conv_job;

/* d[0, lo) = 0, d[lo, hi) = s[off + i], d[hi, n) = 0: one output row's run of im2col at
 * stride 1. Inline vector loops: the runs are short (a 64-wide image row, with one zero at
 * each padded edge), where calls to memcpy/memset cost more than the copying. */
static inline void run_copy(float *d, const float *s, int off, int lo, int hi, int n) {
#pragma omp simd
    for (int i = 0; i < lo; i++) d[i] = 0.0f;
#pragma omp simd
    for (int i = lo; i < hi; i++) d[i] = s[off + i];
#pragma omp simd
    for (int i = hi; i < n; i++) d[i] = 0.0f;
}

/* Rows (ci, ky, kx) x output pixels [p0, p0+pn) of one image's im2col matrix into col, whose
 * rows are ld floats apart. (Loop-to-memset rewriting off: it would turn run_copy's one-float
 * edge zeroing back into library calls.) */
CPU_MULTIVERSION __attribute__((optimize("no-tree-loop-distribute-patterns"))) static void im2col_block(const conv_job *j, const float *x, float *col, int ld, int p0, int pn) {
    size_t hw = (size_t)j->H * j->W;
    int r = 0;
    for (int ci = 0; ci < j->Cin; ci++)
        for (int ky = 0; ky < j->kh; ky++)
            for (int kx = 0; kx < j->kw; kx++, r++) {
                float *dst = col + (size_t)r * ld;
                const float *src = x + ci * hw;
                for (int p = p0; p < p0 + pn;) { /* one run per output row touched */
                    int oh = p / j->Wo, ow = p % j->Wo;
                    int run = j->Wo - ow < p0 + pn - p ? j->Wo - ow : p0 + pn - p;
                    int ih = oh * j->stride - j->pt + ky;
                    int iw0 = ow * j->stride - j->pl + kx;
                    float *d = dst + (p - p0);
                    if (ih < 0 || ih >= j->H) {
                        run_copy(d, d, 0, 0, 0, run);
                    } else if (j->stride == 1) { /* contiguous: zeros, a copy, zeros */
                        int lo = iw0 < 0 ? -iw0 : 0;
                        int hi = j->W - iw0 < run ? j->W - iw0 : run;
                        if (hi < lo) hi = lo;
                        if (lo > run) lo = hi = run;
                        /* input pixel iw0 + i feeds output column i; only [lo, hi) is read */
                        run_copy(d, src + (size_t)ih * j->W, iw0, lo, hi, run);
                    } else {
                        const float *s = src + (size_t)ih * j->W;
                        for (int i = 0; i < run; i++) {
                            int iw = iw0 + i * j->stride;
                            d[i] = iw >= 0 && iw < j->W ? s[iw] : 0.0f;
                        }
                    }
                    p += run;
                }
            }
}

/* y[i] = x[i] + s (x may be y). */
CPU_MULTIVERSION static void add_scalar(float *y, const float *x, size_t n, float s) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = x[i] + s;
}

static void conv_range(void *ctx, size_t b, size_t e, int tid) {
    const conv_job *j = ctx;
    for (size_t t = b; t < e; t++) {
        /* the channel blocks of one column block are adjacent task numbers */
        int cblk = (int)(t % (size_t)j->ncblk), blk = (int)(t / (size_t)j->ncblk);
        long q0 = (long)blk * j->pb;
        int qn = j->total - q0 < j->pb ? (int)(j->total - q0) : j->pb;
        int c0 = cblk * j->cb, cn = j->Cout - c0 < j->cb ? j->Cout - c0 : j->cb;
        int n0 = (int)(q0 / j->P), p0 = (int)(q0 % j->P);
        int single = p0 + qn <= j->P; /* the block lies in one image */
        size_t img = (size_t)j->Cin * j->H * j->W;

        const float *B;
        int ldb;
        if (single && j->direct) {
            B = j->x + n0 * img + p0;
            ldb = j->P;
        } else {
            float *col = j->cols + (size_t)tid * j->K * j->pb;
            for (int off = 0; off < qn;) { /* one segment per image the block touches */
                long q = q0 + off;
                int n = (int)(q / j->P), p = (int)(q % j->P);
                int seg = j->P - p < qn - off ? j->P - p : qn - off;
                im2col_block(j, j->x + n * img, col + off, qn, p, seg);
                off += seg;
            }
            B = col;
            ldb = qn;
        }
        const float *A = j->w + (size_t)c0 * j->K;
        if (single) {
            float *y = j->y + ((size_t)n0 * j->Cout + c0) * j->P + p0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cn, qn, j->K, 1.0f, A, j->K, B, ldb, 0.0f, y, j->P);
            if (j->bias)
                for (int co = 0; co < cn; co++) add_scalar(y + (size_t)co * j->P, y + (size_t)co * j->P, qn, j->bias[c0 + co]);
            continue;
        }
        float *tile = j->tiles + (size_t)tid * j->cb * j->pb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cn, qn, j->K, 1.0f, A, j->K, B, ldb, 0.0f, tile, qn);
        for (int off = 0; off < qn;) { /* scatter each image's columns, adding the bias */
            long q = q0 + off;
            int n = (int)(q / j->P), p = (int)(q % j->P);
            int seg = j->P - p < qn - off ? j->P - p : qn - off;
            for (int co = 0; co < cn; co++)
                add_scalar(j->y + ((size_t)n * j->Cout + c0 + co) * j->P + p, tile + (size_t)co * qn + off, seg,
                           j->bias ? j->bias[c0 + co] : 0.0f);
            off += seg;
        }
    }
}

loco_status cpu_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                       const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err) {
    int64_t K = w->shape[1] * w->shape[2] * w->shape[3], P = y->shape[2] * y->shape[3];
    if (K > INT_MAX || P > INT_MAX || w->shape[0] > INT_MAX || x->shape[2] * x->shape[3] > INT_MAX ||
        P * x->shape[0] > INT_MAX)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "conv2d: sizes exceed sgemm's int range");
    conv_job j = {
        .y = (float *)y->data, .x = (const float *)x->data, .w = (const float *)w->data,
        .bias = bias ? (const float *)bias->data : NULL,
        .Cin = (int)x->shape[1], .H = (int)x->shape[2], .W = (int)x->shape[3], .Cout = (int)w->shape[0],
        .kh = (int)w->shape[2], .kw = (int)w->shape[3], .stride = p->stride, .pt = p->pad[0], .pl = p->pad[2],
        .Ho = (int)y->shape[2], .Wo = (int)y->shape[3], .K = (int)K, .P = (int)P,
    };
    int threads = cpu_threads(be);
    j.total = (long)x->shape[0] * j.P;
    j.direct = j.kh == 1 && j.kw == 1 && j.stride == 1 && !p->pad[0] && !p->pad[1] && !p->pad[2] && !p->pad[3];

    /* Column blocks: equal widths near the target, multiples of 16 (the micro-kernel width),
     * balanced over the threads when there are enough of them. */
    int target = COL_BLOCK_FLOATS / j.K < COLS_TARGET ? COL_BLOCK_FLOATS / j.K : COLS_TARGET;
    if (target < 64) target = 64;
    long nblk = (j.total + target - 1) / target;
    if (nblk >= threads) nblk = cpu_balance(nblk, threads);
    long pb = (j.total + nblk - 1) / nblk;
    pb = (pb + 15) / 16 * 16;
    j.pb = (int)(pb < j.total ? pb : j.total);
    j.nblk = (int)((j.total + j.pb - 1) / j.pb);
    /* Fewer blocks than threads (small images, 8x8x1280 at a UNet's bottom): split the output
     * channels instead of narrowing the blocks. Each part packs only its rows of w, where
     * narrower blocks would each pack all of w (59 MB there) again. */
    j.cb = j.Cout;
    if (j.nblk < threads && j.Cout >= 32) {
        int split = (int)(cpu_balance((threads + j.nblk - 1) / j.nblk * j.nblk, threads) / j.nblk);
        int h = (j.Cout + split - 1) / split;
        j.cb = (h + 15) / 16 * 16;
    }
    j.ncblk = (j.Cout + j.cb - 1) / j.cb;

    int spans = x->shape[0] > 1 && j.P % j.pb != 0; /* some block covers two images */
    size_t col_floats = !j.direct || spans ? (size_t)j.K * j.pb : 0;
    size_t tile_floats = spans ? (size_t)j.cb * j.pb : 0;
    size_t bytes = (size_t)threads * (col_floats + tile_floats) * sizeof(float);
    float *buf = NULL;
    if (bytes) {
        loco_status st = cpu_scratch_get(be, bytes, (void **)&buf, err);
        if (st != LOCO_OK) return st;
        j.cols = buf;
        j.tiles = buf + (size_t)threads * col_floats;
    }
    cpu_parallel_for(be, (size_t)j.nblk * j.ncblk, 1, conv_range, &j);
    if (buf) cpu_scratch_put(be, buf, bytes);
    return LOCO_OK;
}
