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

/* Float64 evaluation of a CLIP text encoder (engine/edit_text64.c). hidden_index counts as
 * Python does on hidden_states (0 = embeddings, -1 = last layer); out [n, L, D] (or NULL), with
 * the final LayerNorm when final_ln. capture_layer >= 0 also fills proj_in / proj_out (either may
 * be NULL) with that layer's self_attn.out_proj input and output. */
typedef struct edit_text64_req {
    int hidden_index;
    int final_ln;
    double *out;
    int capture_layer;
    double *proj_in, *proj_out;
} edit_text64_req;
loco_status edit_text64_forward(const loco_clip_text *te, const int32_t *ids, int n, int L, const edit_text64_req *rq,
                                loco_err *err);
/* The pipeline's conditioning rows (SD 1.x/2.x: last_hidden_state; SD-XL: both encoders'
 * penultimate states concatenated) of n prompts at one position each, in float64: out [n, D_total]. */
loco_status edit_condition_rows64(const loco_pipeline *p, const char *const *prompts, const int *positions, int n,
                                  int clip_skip, double *out, int D_total, loco_err *err);

/* Add an array of strings / ints to a JSON object. */
void edit_json_strings(json_t *o, const char *key, const char *const *s, int n);
void edit_json_ints(json_t *o, const char *key, const int *v, int n);

static inline double edit_seconds(const struct timespec *a, const struct timespec *b) {
    return (double)(b->tv_sec - a->tv_sec) + 1e-9 * (double)(b->tv_nsec - a->tv_nsec);
}

#endif
