/* pil_resample.c: a port of Pillow's libImaging/Resample.c (the 8-bit two-pass convolution
 * resampler), so that loco's CLIP preprocessing gives the same pixels as PIL's Image.resize.
 * Every constant and rounding step below is Pillow's: the filters in double precision, weights
 * normalised per output pixel and converted to PRECISION_BITS fixed point with round-half-away,
 * accumulation in int starting at one half, arithmetic shift and clip to [0, 255]; and the
 * pass order of Pillow 13.0 (the version pinned for the references). */
#include "pil_resample.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* 8 bits for the result, 2 for the overflow of negative lobes, in a 32-bit int (Pillow). */
#define PRECISION_BITS (32 - 8 - 2)

static const char *const filter_names[LOCO_PIL_FILTER_COUNT] = {
    [LOCO_PIL_NEAREST] = "nearest", [LOCO_PIL_LANCZOS] = "lanczos", [LOCO_PIL_BILINEAR] = "bilinear",
    [LOCO_PIL_BICUBIC] = "bicubic", [LOCO_PIL_BOX] = "box",         [LOCO_PIL_HAMMING] = "hamming",
};

const char *loco_pil_filter_name(loco_pil_filter f) {
    return (unsigned)f < LOCO_PIL_FILTER_COUNT ? filter_names[f] : "unknown";
}

int loco_pil_filter_from_name(const char *name, loco_pil_filter *out) {
    for (int i = 0; name && i < LOCO_PIL_FILTER_COUNT; i++)
        if (strcmp(name, filter_names[i]) == 0) {
            *out = (loco_pil_filter)i;
            return 0;
        }
    return -1;
}

int loco_pil_filter_from_int(int v, loco_pil_filter *out) {
    /* the enum order is PIL's numbering */
    if (v < 0 || v >= LOCO_PIL_FILTER_COUNT) return -1;
    *out = (loco_pil_filter)v;
    return 0;
}

static double box_filter(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double hamming_filter(double x) {
    if (x < 0.0) x = -x;
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x = x * M_PI;
    /* the float constants are Pillow's (0.54f, 0.46f), promoted to double */
    return sin(x) / x * (0.54f + 0.46f * cos(x));
}

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc_filter(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
    return 0.0;
}

typedef struct filter {
    double (*fn)(double);
    double support;
} filter;

static int get_filter(loco_pil_filter f, filter *out) {
    switch (f) {
    case LOCO_PIL_BOX: *out = (filter){box_filter, 0.5}; return 0;
    case LOCO_PIL_BILINEAR: *out = (filter){bilinear_filter, 1.0}; return 0;
    case LOCO_PIL_HAMMING: *out = (filter){hamming_filter, 1.0}; return 0;
    case LOCO_PIL_BICUBIC: *out = (filter){bicubic_filter, 2.0}; return 0;
    case LOCO_PIL_LANCZOS: *out = (filter){lanczos_filter, 3.0}; return 0;
    default: return -1;
    }
}

/* Pillow's precompute_coeffs followed by normalize_coeffs_8bpc: per output pixel, the first
 * input index and the tap count (bounds) and ksize fixed-point weights. Returns ksize, 0 on OOM. */
static int precompute(int in_size, float in0, float in1, int out_size, const filter *f, int **bounds_out,
                      int32_t **kk_out) {
    double scale = (double)(in1 - in0) / out_size, filterscale = scale;
    if (filterscale < 1.0) filterscale = 1.0;
    const double support = f->support * filterscale;
    const int ksize = (int)ceil(support) * 2 + 1;
    if (out_size > INT_MAX / (ksize * (int)sizeof(double))) return 0;
    double *kk = malloc((size_t)out_size * (size_t)ksize * sizeof *kk);
    int *bounds = malloc((size_t)out_size * 2 * sizeof *bounds);
    int32_t *ik = malloc((size_t)out_size * (size_t)ksize * sizeof *ik);
    if (!kk || !bounds || !ik) {
        free(kk);
        free(bounds);
        free(ik);
        return 0;
    }
    for (int xx = 0; xx < out_size; xx++) {
        const double center = in0 + (xx + 0.5) * scale, ss = 1.0 / filterscale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = &kk[xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            double w = f->fn((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        bounds[xx * 2 + 0] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    for (int i = 0; i < out_size * ksize; i++)
        ik[i] = kk[i] < 0 ? (int32_t)(-0.5 + kk[i] * (1 << PRECISION_BITS))
                          : (int32_t)(0.5 + kk[i] * (1 << PRECISION_BITS));
    free(kk);
    *bounds_out = bounds;
    *kk_out = ik;
    return ksize;
}

static inline uint8_t clip8(int in) {
    /* Pillow indexes a table with in >> PRECISION_BITS (arithmetic shift): below 0 -> 0, above 255 -> 255 */
    int v = in >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Horizontal pass over rows [offset, offset + out_h) of src (width src_w) into dst (width out_w). */
static void pass_h(const uint8_t *src, int src_w, int ch, int offset, uint8_t *dst, int out_w, int out_h, int ksize,
                   const int *bounds, const int32_t *kk) {
    for (int yy = 0; yy < out_h; yy++) {
        const uint8_t *row = src + (size_t)(yy + offset) * src_w * ch;
        for (int xx = 0; xx < out_w; xx++) {
            const int xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1];
            const int32_t *k = &kk[xx * ksize];
            for (int c = 0; c < ch; c++) {
                int ss = 1 << (PRECISION_BITS - 1);
                for (int x = 0; x < xmax; x++) ss += row[(x + xmin) * ch + c] * k[x];
                dst[((size_t)yy * out_w + xx) * ch + c] = clip8(ss);
            }
        }
    }
}

static void pass_v(const uint8_t *src, int w, int ch, uint8_t *dst, int out_h, int ksize, const int *bounds,
                   const int32_t *kk) {
    for (int yy = 0; yy < out_h; yy++) {
        const int ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1];
        const int32_t *k = &kk[yy * ksize];
        for (int xx = 0; xx < w; xx++)
            for (int c = 0; c < ch; c++) {
                int ss = 1 << (PRECISION_BITS - 1);
                for (int y = 0; y < ymax; y++) ss += src[((size_t)(y + ymin) * w + xx) * ch + c] * k[y];
                dst[((size_t)yy * w + xx) * ch + c] = clip8(ss);
            }
    }
}

loco_status loco_pil_resize(const loco_image *src, int width, int height, loco_pil_filter fkind, loco_image *out,
                            loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!src || !src->data || src->width <= 0 || src->height <= 0)
        return loco_err_set(err, LOCO_EINVAL, "resize: empty source image");
    if (width <= 0 || height <= 0 || width > (1 << 16) || height > (1 << 16))
        return loco_err_set(err, LOCO_EINVAL, "resize: target size %dx%d is out of range", width, height);
    if (src->channels != 1 && src->channels != 3)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "resize: %d-channel images are not supported (1 or 3)",
                            src->channels);
    filter f;
    if (get_filter(fkind, &f))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "resize: filter '%s' is not supported", loco_pil_filter_name(fkind));
    const int ch = src->channels, sw = src->width, sh = src->height;
    /* Image.resize returns a copy when nothing changes */
    if (width == sw && height == sh) {
        loco_status st = loco_image_alloc(sw, sh, ch, out, err);
        if (!st) memcpy(out->data, src->data, (size_t)sw * sh * ch);
        return st;
    }
    const int need_h = width != sw, need_v = height != sh;
    /* Pillow 13: when the height shrinks by more than twice as many pixels as the width, the
     * vertical pass runs first (Pillow <= 12 always ran the horizontal pass first; the two orders
     * differ by the uint8 rounding of the intermediate image) */
    const int h_first = !((sh - height) > 0 && (sh - height) > (sw - width) * 2);
    int *bv = NULL, *bh = NULL;
    int32_t *kv = NULL, *kh = NULL;
    uint8_t *tmp = NULL;
    loco_status st = LOCO_OK;
    int ksv = 0, ksh = 0;
    if ((need_v || (need_h && h_first)) && !(ksv = precompute(sh, 0.0f, (float)sh, height, &f, &bv, &kv)))
        return loco_err_set(err, LOCO_ENOMEM, "resize: out of memory");
    if (need_h && !(ksh = precompute(sw, 0.0f, (float)sw, width, &f, &bh, &kh))) {
        st = loco_err_set(err, LOCO_ENOMEM, "resize: out of memory");
        goto done;
    }
    if ((st = loco_image_alloc(width, height, ch, out, err))) goto done;
    if (!need_h || !need_v) {
        if (need_h)
            pass_h(src->data, sw, ch, 0, out->data, width, height, ksh, bh, kh);
        else
            pass_v(src->data, sw, ch, out->data, height, ksv, bv, kv);
    } else if (h_first) {
        /* only the rows the vertical pass reads are resampled horizontally */
        const int ybox_first = bv[0], ybox_last = bv[height * 2 - 2] + bv[height * 2 - 1];
        for (int i = 0; i < height; i++) bv[i * 2] -= ybox_first;
        const int th = ybox_last - ybox_first;
        if (!(tmp = malloc((size_t)width * th * ch))) {
            st = loco_err_set(err, LOCO_ENOMEM, "resize: out of memory");
            goto done;
        }
        pass_h(src->data, sw, ch, ybox_first, tmp, width, th, ksh, bh, kh);
        pass_v(tmp, width, ch, out->data, height, ksv, bv, kv);
    } else {
        if (!(tmp = malloc((size_t)sw * height * ch))) {
            st = loco_err_set(err, LOCO_ENOMEM, "resize: out of memory");
            goto done;
        }
        pass_v(src->data, sw, ch, tmp, height, ksv, bv, kv);
        pass_h(tmp, sw, ch, 0, out->data, width, height, ksh, bh, kh);
    }
done:
    if (st) loco_image_free(out);
    free(bv);
    free(kv);
    free(bh);
    free(kh);
    free(tmp);
    return st;
}
