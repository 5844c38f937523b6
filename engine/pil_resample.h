/* pil_resample.h: Pillow's Image.resize for 8-bit images, to the bit.
 *
 * CLIP scores are computed on images that CLIPImageProcessor first resizes with PIL's bicubic
 * filter. PIL's resampler is not a plain bicubic interpolation: it widens the filter support by
 * the downscale factor (antialiasing), normalises each output pixel's weights, converts them to
 * 22-bit fixed point and runs a horizontal pass (rounded and clipped to uint8) before a vertical
 * one. torch's or a textbook bicubic gives different pixels and so CLIP scores that differ from
 * transformers' in the third decimal; this port gives the same bytes as Pillow (checked against
 * Pillow in tests/unit/test_clip_score.c), so scores match to float rounding. */
#ifndef LOCO_PIL_RESAMPLE_H
#define LOCO_PIL_RESAMPLE_H

#include "image.h"

typedef enum loco_pil_filter {
    LOCO_PIL_NEAREST = 0, /* "nearest"  (PIL 0) */
    LOCO_PIL_LANCZOS,     /* "lanczos"  (PIL 1) */
    LOCO_PIL_BILINEAR,    /* "bilinear" (PIL 2) */
    LOCO_PIL_BICUBIC,     /* "bicubic"  (PIL 3) */
    LOCO_PIL_BOX,         /* "box"      (PIL 4) */
    LOCO_PIL_HAMMING,     /* "hamming"  (PIL 5) */
    LOCO_PIL_FILTER_COUNT
} loco_pil_filter;

const char *loco_pil_filter_name(loco_pil_filter f);
int loco_pil_filter_from_name(const char *name, loco_pil_filter *out); /* 0 ok, -1 unknown */
/* PIL's integer constants (Image.Resampling), as preprocessor_config.json stores "resample". */
int loco_pil_filter_from_int(int pil_value, loco_pil_filter *out);

/* img.resize((width, height), filter) with the default box (the whole image) and no
 * reducing_gap, for "L" (1 channel) and "RGB" (3 channels) images. NEAREST (a different code path
 * in PIL) and RGBA (which PIL premultiplies by alpha first) are LOCO_EUNSUPPORTED. */
loco_status loco_pil_resize(const loco_image *src, int width, int height, loco_pil_filter filter, loco_image *out,
                            loco_err *err);

#endif
