/* image.c: diffusers' output quantisation and preprocessing; PNG through libspng. */
#include "image.h"

#include "file_out.h"
#include "quantize_u8.h"

#include <errno.h>
#include <math.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void loco_image_free(loco_image *img) {
    if (!img) return;
    free(img->data);
    memset(img, 0, sizeof *img);
}

static int channels_ok(int c) { return c == 1 || c == 3 || c == 4; }

loco_status loco_image_alloc(int width, int height, int channels, loco_image *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (width <= 0 || height <= 0 || !channels_ok(channels))
        return loco_err_set(err, LOCO_EINVAL, "image: invalid size %dx%d with %d channels (1, 3 or 4)", width, height,
                            channels);
    size_t n = (size_t)width * (size_t)height * (size_t)channels;
    out->data = malloc(n);
    if (!out->data)
        return loco_err_set(err, LOCO_ENOMEM, "image: out of memory for %dx%dx%d", width, height, channels);
    out->width = width;
    out->height = height;
    out->channels = channels;
    return LOCO_OK;
}

uint8_t loco_image_quantize(float x) { return loco_quantize_u8(x); }

loco_status loco_image_postprocess(const float *x, int n, int c, int h, int w, int index, loco_image *out,
                                   loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!x || n <= 0 || index < 0 || index >= n)
        return loco_err_set(err, LOCO_EINVAL, "image postprocess: image %d of a batch of %d", index, n);
    if (!channels_ok(c))
        return loco_err_set(err, LOCO_EINVAL, "image postprocess: %d channels; 1, 3 or 4 can be written", c);
    loco_status st = loco_image_alloc(w, h, c, out, err);
    if (st) return st;
    const size_t plane = (size_t)h * (size_t)w;
    const float *src = x + (size_t)index * (size_t)c * plane;
    for (int ch = 0; ch < c; ch++) {
        const float *p = src + (size_t)ch * plane;
        for (size_t i = 0; i < plane; i++) {
            if (isnan(p[i])) {
                loco_image_free(out);
                return loco_err_set(err, LOCO_EINVAL,
                                    "image postprocess: image %d has NaN at channel %d, y %zu, x %zu (the decoder "
                                    "overflowed; fp16 VAEs need fp32)",
                                    index, ch, i / (size_t)w, i % (size_t)w);
            }
            out->data[i * (size_t)c + (size_t)ch] = loco_quantize_u8(p[i]);
        }
    }
    return LOCO_OK;
}

loco_status loco_image_from_tensor(const loco_tensor *t, int index, loco_image *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!t || t->ndim != 4) {
        char buf[96];
        return loco_err_set(err, LOCO_EINVAL, "image from tensor: expected [N, C, H, W], got %s",
                            t ? loco_tensor_shape_str(t, buf, sizeof buf) : "NULL");
    }
    if (t->shape[1] > 4 || t->shape[2] > INT32_MAX || t->shape[3] > INT32_MAX || t->shape[0] > INT32_MAX)
        return loco_err_set(err, LOCO_EINVAL, "image from tensor: dimensions too large");
    if (index < 0 || index >= t->shape[0])
        return loco_err_set(err, LOCO_EINVAL, "image from tensor: image %d of a batch of %lld", index,
                            (long long)t->shape[0]);
    /* quantised where the tensor lives: a GPU sends the image's bytes, not its floats */
    loco_tensor one;
    loco_status st = loco_tensor_slice0(t, index, 1, &one, err);
    if (!st) st = loco_image_alloc((int)t->shape[3], (int)t->shape[2], (int)t->shape[1], out, err);
    if (st) return st;
    int64_t nan_at = -1;
    st = loco_tensor_download_u8_images(&one, out->data, &nan_at, err);
    if (!st && nan_at >= 0) {
        const int64_t plane = t->shape[2] * t->shape[3];
        st = loco_err_set(err, LOCO_EINVAL,
                          "image from tensor: image %d has NaN at channel %lld, y %lld, x %lld (the decoder "
                          "overflowed; fp16 VAEs need fp32)",
                          index, (long long)(nan_at / plane), (long long)(nan_at % plane / t->shape[3]),
                          (long long)(nan_at % t->shape[3]));
    }
    if (st) loco_image_free(out);
    return st;
}

loco_status loco_image_preprocess(const loco_image *img, float *dst, loco_err *err) {
    if (!img || !img->data || !dst || !channels_ok(img->channels))
        return loco_err_set(err, LOCO_EINVAL, "image preprocess: no image or destination");
    const size_t plane = (size_t)img->width * (size_t)img->height;
    for (int ch = 0; ch < img->channels; ch++)
        for (size_t i = 0; i < plane; i++) {
            /* PIL -> np.array(...).astype(float32) / 255.0, then 2.0 * x - 1.0, all fp32 */
            float v = (float)img->data[i * (size_t)img->channels + (size_t)ch] / 255.0f;
            float two_v = 2.0f * v;
            dst[(size_t)ch * plane + i] = two_v - 1.0f;
        }
    return LOCO_OK;
}

/* ---- PNG ------------------------------------------------------------------------------------- */

loco_status loco_png_encode(const loco_image *img, void **buf, size_t *len, loco_err *err) {
    *buf = NULL;
    *len = 0;
    if (!img || !img->data || img->width <= 0 || img->height <= 0 || !channels_ok(img->channels))
        return loco_err_set(err, LOCO_EINVAL, "png encode: not a valid image");
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    if (!ctx) return loco_err_set(err, LOCO_ENOMEM, "png encode: out of memory");
    struct spng_ihdr ihdr = {
        .width = (uint32_t)img->width,
        .height = (uint32_t)img->height,
        .bit_depth = 8,
        .color_type = img->channels == 1   ? SPNG_COLOR_TYPE_GRAYSCALE
                      : img->channels == 3 ? SPNG_COLOR_TYPE_TRUECOLOR
                                           : SPNG_COLOR_TYPE_TRUECOLOR_ALPHA,
    };
    size_t n = (size_t)img->width * (size_t)img->height * (size_t)img->channels;
    int r = spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    if (!r) r = spng_set_ihdr(ctx, &ihdr);
    if (!r) r = spng_encode_image(ctx, img->data, n, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    loco_status st = LOCO_OK;
    if (r) {
        st = loco_err_set(err, LOCO_EFORMAT, "png encode: %s", spng_strerror(r));
    } else {
        int e = 0;
        *buf = spng_get_png_buffer(ctx, len, &e);
        if (!*buf) st = loco_err_set(err, LOCO_ENOMEM, "png encode: %s", e ? spng_strerror(e) : "no buffer");
    }
    spng_ctx_free(ctx);
    return st;
}

/* Written through engine/file_out.h: a regular file atomically (temporary + rename), a device
 * or FIFO (`--output /dev/null`, a named pipe) in place, a folder refused. */
loco_status loco_png_write(const char *path, const loco_image *img, loco_err *err) {
    if (!path || !*path) return loco_err_set(err, LOCO_EINVAL, "png write: no path");
    void *buf;
    size_t len;
    loco_status st = loco_png_encode(img, &buf, &len, err);
    if (st) return loco_err_prefix(err, "%s", path);
    st = loco_write_file(path, buf, len, err);
    free(buf);
    return st;
}

void loco_png_read_opts_init(loco_png_read_opts *o) {
    o->channels = 3;
    o->max_pixels = 64ull << 20; /* 8192 x 8192: above any SD resolution, far below memory trouble */
}

static loco_status decode_ctx(spng_ctx *ctx, const loco_png_read_opts *opts, const char *what, loco_image *out,
                              loco_err *err) {
    loco_png_read_opts def;
    if (!opts) {
        loco_png_read_opts_init(&def);
        opts = &def;
    }
    if (opts->channels != 3 && opts->channels != 4)
        return loco_err_set(err, LOCO_EINVAL, "%s: png read option channels must be 3 or 4, got %d", what,
                            opts->channels);
    /* ancillary chunks (text, ICC) are skipped, but cap what a hostile file can make us cache */
    spng_set_chunk_limits(ctx, 16u << 20, 64u << 20);
    struct spng_ihdr ihdr;
    int r = spng_get_ihdr(ctx, &ihdr);
    if (r) return loco_err_set(err, LOCO_EFORMAT, "%s: not a readable PNG: %s", what, spng_strerror(r));
    if ((uint64_t)ihdr.width * ihdr.height > opts->max_pixels || ihdr.width > INT32_MAX || ihdr.height > INT32_MAX)
        return loco_err_set(err, LOCO_EINVAL, "%s: %ux%u pixels exceed the limit of %llu", what, ihdr.width,
                            ihdr.height, (unsigned long long)opts->max_pixels);
    const int fmt = opts->channels == 3 ? SPNG_FMT_RGB8 : SPNG_FMT_RGBA8;
    size_t size;
    if ((r = spng_decoded_image_size(ctx, fmt, &size)))
        return loco_err_set(err, LOCO_EFORMAT, "%s: %s", what, spng_strerror(r));
    loco_status st = loco_image_alloc((int)ihdr.width, (int)ihdr.height, opts->channels, out, err);
    if (st) return st;
    /* with SPNG_DECODE_TRNS a tRNS chunk becomes alpha, as PIL's convert("RGBA") does */
    if ((r = spng_decode_image(ctx, out->data, size, fmt, opts->channels == 4 ? SPNG_DECODE_TRNS : 0))) {
        loco_image_free(out);
        return loco_err_set(err, LOCO_EFORMAT, "%s: corrupt PNG: %s", what, spng_strerror(r));
    }
    return LOCO_OK;
}

loco_status loco_png_decode(const void *buf, size_t len, const loco_png_read_opts *opts, loco_image *out,
                            loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!buf || len == 0) return loco_err_set(err, LOCO_EINVAL, "png decode: empty buffer");
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx) return loco_err_set(err, LOCO_ENOMEM, "png decode: out of memory");
    int r = spng_set_png_buffer(ctx, buf, len);
    loco_status st = r ? loco_err_set(err, LOCO_EFORMAT, "png decode: %s", spng_strerror(r))
                       : decode_ctx(ctx, opts, "png buffer", out, err);
    spng_ctx_free(ctx);
    return st;
}

loco_status loco_png_read(const char *path, const loco_png_read_opts *opts, loco_image *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!path) return loco_err_set(err, LOCO_EINVAL, "png read: no path");
    FILE *f = fopen(path, "rb");
    if (!f) return loco_err_set(err, LOCO_EIO, "%s: cannot open: %s", path, strerror(errno));
    spng_ctx *ctx = spng_ctx_new(0);
    loco_status st;
    if (!ctx) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", path);
    } else {
        int r = spng_set_png_file(ctx, f);
        st = r ? loco_err_set(err, LOCO_EFORMAT, "%s: %s", path, spng_strerror(r)) : decode_ctx(ctx, opts, path, out, err);
        spng_ctx_free(ctx);
    }
    fclose(f);
    return st;
}
