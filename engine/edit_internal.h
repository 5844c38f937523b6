/* edit_internal.h: helpers shared by edit_common.c, edit_locoedit.c, edit_quickfix.c and
 * edit_neurons.c. Not part of the public API. */
#ifndef LOCO_EDIT_INTERNAL_H
#define LOCO_EDIT_INTERNAL_H

#include <time.h>

#include "edit.h"
#include "pipeline_impl.h"

/* Subject span / last token in a pipeline's prompt, checked against both SD-XL tokenizers (the
 * UNet sees both encoders' states at one position, so they must agree). subject NULL: the last
 * content token (first == last). */
loco_status edit_prompt_span(const loco_pipeline *p, const char *prompt, const char *subject, int *first, int *last,
                             loco_err *err);

/* The tokenizer that decides positions: tokenizer 1, or tokenizer 2 on encoder-2-only models. */
const loco_clip_tokenizer *edit_main_tokenizer(const loco_pipeline *p);

/* "<site name>.weight" of a cross-attention layer's to_k (which 0) or to_v (which 1), via the
 * UNet's site table. LOCO_EINVAL when the layer is outside 0..n_cross-1. */
loco_status edit_cross_param(const loco_unet *u, int cross_index, int which, char *buf, size_t n, loco_err *err);

/* Add an array of strings / ints to a JSON object. */
void edit_json_strings(json_t *o, const char *key, const char *const *s, int n);
void edit_json_ints(json_t *o, const char *key, const int *v, int n);

static inline double edit_seconds(const struct timespec *a, const struct timespec *b) {
    return (double)(b->tv_sec - a->tv_sec) + 1e-9 * (double)(b->tv_nsec - a->tv_nsec);
}

#endif
