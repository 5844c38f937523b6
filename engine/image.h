/* image.h: decoded images in and out of loco.
 *
 * Output quantisation is diffusers' VaeImageProcessor.postprocess(output_type="pil") to the
 * bit: (x * 0.5 + 0.5).clamp(0, 1) in fp32, then * 255 in fp32 and numpy's round (half to
 * even), then uint8; NCHW planes become interleaved pixels. The inverse (preprocess for a
 * VAE encode) is diffusers' pil -> numpy (/255) -> normalize (2x - 1).
 *
 * PNG goes through libspng: to a file (written to a temporary name in the same folder, synced,
 * then renamed, so a reader never sees half a file), to a memory buffer, and back. */
#ifndef LOCO_IMAGE_H
#define LOCO_IMAGE_H

#include <stdint.h>
#include "backend.h"

/* 8-bit pixels, interleaved, rows top to bottom. channels: 1 (gray), 3 (RGB) or 4 (RGBA). */
typedef struct loco_image {
    int width;
    int height;
    int channels;
    uint8_t *data; /* width * height * channels bytes, owned (loco_image_free) */
} loco_image;

void loco_image_free(loco_image *img); /* safe on zeroed structs; zeroes *img */
loco_status loco_image_alloc(int width, int height, int channels, loco_image *out, loco_err *err);

/* One pixel value as diffusers quantises it: clamp(x*0.5+0.5, 0, 1)*255, rounded half to even.
 * NaN has no defined value (numpy gives platform garbage); callers treat it as an error. */
uint8_t loco_image_quantize(float x);

/* Image `index` of a host NCHW f32 batch x [n, c, h, w] (values ≈ [-1, 1]) -> *out (allocated).
 * c must be 1, 3 or 4. A NaN anywhere in the image is LOCO_EINVAL naming its position. */
loco_status loco_image_postprocess(const float *x, int n, int c, int h, int w, int index, loco_image *out,
                                   loco_err *err);
/* The same from a backend tensor [N, C, H, W] (downloaded as f32). */
loco_status loco_image_from_tensor(const loco_tensor *t, int index, loco_image *out, loco_err *err);

/* diffusers preprocess for a VAE encode: dst [channels, h, w] f32 = 2 * (u8 / 255) - 1. */
loco_status loco_image_preprocess(const loco_image *img, float *dst, loco_err *err);

/* ---- PNG ------------------------------------------------------------------------------------- */

loco_status loco_png_encode(const loco_image *img, void **buf, size_t *len, loco_err *err); /* free(*buf) */
loco_status loco_png_write(const char *path, const loco_image *img, loco_err *err);

typedef struct loco_png_read_opts {
    int channels;        /* 3: RGB (alpha dropped, as PIL's convert("RGB")), 4: RGBA */
    uint64_t max_pixels; /* refuse larger images before allocating (untrusted uploads) */
} loco_png_read_opts;
void loco_png_read_opts_init(loco_png_read_opts *o); /* RGB, 64 Mpixel */

loco_status loco_png_decode(const void *buf, size_t len, const loco_png_read_opts *opts, loco_image *out,
                            loco_err *err);
loco_status loco_png_read(const char *path, const loco_png_read_opts *opts, loco_image *out, loco_err *err);

#endif
