/* cpu_conv2d.c: 2-D convolution (NCHW) on the CPU as sgemm over im2col columns:
 * y[n] [Cout, P] = w [Cout, Cin*kh*kw] · col [Cin*kh*kw, P], P = Ho*Wo output pixels.
 *
 * The columns are never built for a whole image (47 MB for a 320-channel 64x64 3x3 conv):
 * each task builds a block of a few hundred columns in a per-thread buffer and multiplies it at
 * once, so the block goes from im2col to sgemm through the cache. A 1x1 conv with stride 1 and
 * no padding needs no columns at all: x[n] is already [Cin, P]. Tasks are (image, column
 * block, output-channel block); output channels are split only when images are too small to
 * give every thread work. */
#include "cpu_internal.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

/* Columns per block. sgemm packs all of w on every call, so a block must be wide enough to
 * make that a small fraction of the multiply (~8/width of it); a few hundred columns also
 * keep the block (Cin*kh*kw x width) inside the large L2/L3 caches of current CPUs. */
#define COLS_TARGET 384

typedef struct conv_job {
    float *y;
    const float *x, *w, *bias;
    float *cols; /* threads * K * pb floats, NULL on the direct 1x1 path */
    int Cin, H, W, Cout, kh, kw, stride, pt, pl, Ho, Wo;
    int K, P;       /* K = Cin*kh*kw rows of w; P output pixels */
    int pb, nblk;   /* column block width and blocks per image */
    int cb, ncblk;  /* output-channel block height and blocks */
} conv_job;

/* Rows (ci, ky, kx) x columns [p0, p0+pn) of the im2col matrix of one image into col. */
static void im2col_block(const conv_job *j, const float *x, float *col, int p0, int pn) {
    size_t hw = (size_t)j->H * j->W;
    int r = 0;
    for (int ci = 0; ci < j->Cin; ci++)
        for (int ky = 0; ky < j->kh; ky++)
            for (int kx = 0; kx < j->kw; kx++, r++) {
                float *dst = col + (size_t)r * pn;
                const float *src = x + ci * hw;
                for (int p = p0; p < p0 + pn;) { /* one run per output row touched */
                    int oh = p / j->Wo, ow = p % j->Wo;
                    int run = j->Wo - ow < p0 + pn - p ? j->Wo - ow : p0 + pn - p;
                    int ih = oh * j->stride - j->pt + ky;
                    int iw0 = ow * j->stride - j->pl + kx;
                    float *d = dst + (p - p0);
                    if (ih < 0 || ih >= j->H) {
                        memset(d, 0, (size_t)run * sizeof(float));
                    } else if (j->stride == 1) { /* contiguous: zeros, a copy, zeros */
                        const float *s = src + (size_t)ih * j->W;
                        int lo = iw0 < 0 ? -iw0 : 0;
                        int hi = j->W - iw0 < run ? j->W - iw0 : run;
                        if (hi < lo) hi = lo;
                        if (lo > run) lo = hi = run;
                        memset(d, 0, (size_t)lo * sizeof(float));
                        if (hi > lo) memcpy(d + lo, s + iw0 + lo, (size_t)(hi - lo) * sizeof(float));
                        memset(d + hi, 0, (size_t)(run - hi) * sizeof(float));
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

CPU_MULTIVERSION static void add_scalar(float *y, size_t n, float s) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] += s;
}

static void conv_range(void *ctx, size_t b, size_t e) {
    const conv_job *j = ctx;
    for (size_t t = b; t < e; t++) {
        /* task t = ((n * nblk) + blk) * ncblk + cblk: the channel blocks of one column block
         * run back to back, so a thread that takes several reuses its columns */
        int cblk = (int)(t % (size_t)j->ncblk);
        size_t rest = t / (size_t)j->ncblk;
        int blk = (int)(rest % (size_t)j->nblk), n = (int)(rest / (size_t)j->nblk);
        int p0 = blk * j->pb, pn = j->P - p0 < j->pb ? j->P - p0 : j->pb;
        int c0 = cblk * j->cb, cn = j->Cout - c0 < j->cb ? j->Cout - c0 : j->cb;
        const float *x = j->x + (size_t)n * j->Cin * j->H * j->W;
        float *y = j->y + ((size_t)n * j->Cout + c0) * j->P + p0;
        const float *B;
        int ldb;
        if (j->cols) {
            float *col = j->cols + (size_t)omp_get_thread_num() * j->K * j->pb;
            im2col_block(j, x, col, p0, pn);
            B = col;
            ldb = pn;
        } else {
            B = x + p0;
            ldb = j->P;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cn, pn, j->K, 1.0f, j->w + (size_t)c0 * j->K, j->K, B,
                    ldb, 0.0f, y, j->P);
        if (j->bias)
            for (int co = 0; co < cn; co++) add_scalar(y + (size_t)co * j->P, (size_t)pn, j->bias[c0 + co]);
    }
}

loco_status cpu_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                       const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err) {
    int64_t K = w->shape[1] * w->shape[2] * w->shape[3], P = y->shape[2] * y->shape[3];
    if (K > INT_MAX || P > INT_MAX || w->shape[0] > INT_MAX || x->shape[2] * x->shape[3] > INT_MAX)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "conv2d: sizes exceed sgemm's int range");
    conv_job j = {
        .y = (float *)y->data, .x = (const float *)x->data, .w = (const float *)w->data,
        .bias = bias ? (const float *)bias->data : NULL,
        .Cin = (int)x->shape[1], .H = (int)x->shape[2], .W = (int)x->shape[3], .Cout = (int)w->shape[0],
        .kh = (int)w->shape[2], .kw = (int)w->shape[3], .stride = p->stride, .pt = p->pad[0], .pl = p->pad[2],
        .Ho = (int)y->shape[2], .Wo = (int)y->shape[3], .K = (int)K, .P = (int)P,
    };
    int threads = cpu_threads(be);
    int nimg = (int)x->shape[0];
    int direct = j.kh == 1 && j.kw == 1 && j.stride == 1 && !p->pad[0] && !p->pad[1] && !p->pad[2] && !p->pad[3];

    /* Column blocks: equal widths near COLS_TARGET, multiples of 16 (the micro-kernel width). */
    j.nblk = (j.P + COLS_TARGET - 1) / COLS_TARGET;
    j.pb = (j.P + j.nblk - 1) / j.nblk;
    j.pb = (j.pb + 15) / 16 * 16;
    if (j.pb > j.P) j.pb = j.P;
    j.nblk = (j.P + j.pb - 1) / j.pb;
    /* Output-channel blocks only when there are fewer tasks than twice the threads. */
    j.cb = j.Cout;
    int tasks = nimg * j.nblk;
    if (tasks < 2 * threads && j.Cout >= 32) {
        int split = (2 * threads + tasks - 1) / tasks;
        int h = (j.Cout + split - 1) / split;
        j.cb = (h + 15) / 16 * 16;
    }
    j.ncblk = (j.Cout + j.cb - 1) / j.cb;

    size_t col_bytes = 0;
    if (!direct) {
        col_bytes = (size_t)threads * (size_t)j.K * (size_t)j.pb * sizeof(float);
        loco_status st = cpu_scratch_get(be, col_bytes, (void **)&j.cols, err);
        if (st != LOCO_OK) return st;
    }
    cpu_parallel_for(be, (size_t)nimg * j.nblk * j.ncblk, 1, conv_range, &j);
    if (j.cols) cpu_scratch_put(be, j.cols, col_bytes);
    return LOCO_OK;
}
