/* locogen.h: LocoGen ([P2], Basu et al., ICML 2024; reference/methods.md §4): which few
 * cross-attention layers control an attribute.
 *
 * For N original prompts T_i carrying the attribute (a style, an object, a fact) and altered
 * prompts T'_i without it (or with the new fact), every window of m consecutive cross-attention
 * layers (execution order, engine/unet.h) is tried: the image of T_i is generated with T'_i's
 * text fed to the keys and values of the window's layers, in the conditional branch only, at
 * every step; every other layer sees T_i. Each image is CLIP-scored against T_i and T'_i; per
 * window the scores are averaged over prompts and seeds, and the window with the lowest score
 * against the original prompts (style, object: the attribute is gone) or the highest against the
 * altered prompts (fact: the new fact took hold) is the localized one.
 *
 * The window size m is explicit (default 2). The released code's per-layer prompt list actually
 * swapped THREE layers (start, start+1, start+2) for starts 0..13 and one layer for 14 and 15
 * although its docstrings say 2; loco does exactly m layers for every start, and no partial
 * windows past the last layer.
 *
 * Batching: all windows (and an unedited image per prompt and seed) of all prompts and seeds run
 * as samples of shared denoise batches (max_batch samples each); the text K/V of every prompt are
 * projected once for the job; a window is only a different K/V row per layer (`context`
 * interventions). Each sample has its own generator seeded with its seed, so every image equals
 * the one generated alone.
 *
 * Progress and cancel: the batches are fixed before anything runs (ceil(images / max_batch)),
 * and progress counts denoising steps (UNet calls) over all of them: total = batches x calls per
 * image (PNDM: steps + 1), e.g. 2 (prompt, seed) sets of a 21-call schedule read "step 30 of
 * 42". The first call is (0, total); then one after every step of every batch; the same done
 * again between a batch's VAE decodes and CLIP scoring chunks. total never changes and done never
 * goes back; the last call has done = total. A non-zero return stops the run at that point,
 * within one model call, with LOCO_ECANCELLED ("cancelled after 30 of 42 denoising steps ..."). */
#ifndef LOCO_LOCOGEN_H
#define LOCO_LOCOGEN_H

#include <jansson.h>

#include "clip_score.h"
#include "method_util.h"

typedef enum loco_attribute_kind {
    LOCO_ATTR_STYLE = 0, /* "style": rank by lowest score against the original prompt */
    LOCO_ATTR_OBJECT,    /* "object": the same */
    LOCO_ATTR_FACT,      /* "fact": rank by highest score against the altered prompt */
    LOCO_ATTR_KIND_COUNT
} loco_attribute_kind;

const char *loco_attribute_kind_name(loco_attribute_kind k);
int loco_attribute_kind_from_name(const char *name, loco_attribute_kind *out);

typedef struct loco_locogen_params {
    int n_prompts;
    const char *const *prompts; /* T_i */
    const char *const *altered; /* T'_i */
    int n_seeds;
    const uint64_t *seeds;
    int window;                 /* m: layers per window (2) */
    /* optional: only these window starts (else every start 0..n_cross - m) */
    const int *starts;
    int n_starts;
    loco_attribute_kind kind;
    loco_sampler_opts sampler;
    int max_batch;              /* samples per denoise batch; 0: every sample of one (prompt, seed) set */
    int keep_images;            /* 1 (default): keep every image in the result (grids need them) */
    loco_progress_fn progress;  /* (done, total) in denoising steps of all batches (above); non-zero cancels */
    void *progress_ctx;
} loco_locogen_params;

void loco_locogen_params_init(loco_locogen_params *p); /* window 2, style, keep_images */

typedef struct loco_locogen_window {
    int start, end;          /* layers [start, end) */
    double mean_cosine_original, mean_cosine_altered;
    double mean_score_original, mean_score_altered; /* 100 * max(cos, 0), averaged */
    double objective;        /* what is ranked: the original mean (style, object) or the altered mean (fact) */
    int rank;                /* 0 = the localized window */
} loco_locogen_window;

typedef struct loco_locogen_result {
    int n_cross, window, n_windows, n_prompts, n_seeds;
    loco_locogen_window *windows; /* n_windows, in start order */
    int best;                     /* index into windows */
    loco_locogen_window baseline; /* no intervention (start = end = -1) */
    /* per image: [prompt][seed][0 = no intervention, 1 + w = window w] */
    int per_set;                  /* 1 + n_windows */
    double *cos_original, *cos_altered;
    loco_image *images;           /* with keep_images */
    float *latents;               /* final latents, latent_numel per image */
    int64_t latent_numel;
    int n_calls;
    double seconds;
} loco_locogen_result;

void loco_locogen_result_free(loco_locogen_result *r);
/* Index of image (prompt, seed, k) in the per-image arrays; k = 0 unedited, 1 + w window w. */
int loco_locogen_index(const loco_locogen_result *r, int prompt, int seed, int k);

loco_status loco_locogen_validate(const loco_pipeline *p, const loco_locogen_params *g, loco_err *err);
loco_status loco_locogen_run(loco_pipeline *p, const loco_clip_scorer *scorer, const loco_locogen_params *g,
                             loco_locogen_result *out, loco_err *err);

/* Image grid: one row per (prompt, seed), the unedited image first, then every window in order. */
loco_status loco_locogen_grid(const loco_locogen_result *r, int pad, loco_image *out, loco_err *err);
/* The result table as JSON (params echoed, per-window means and ranks, the best window and its
 * layers' module paths, per-image scores). */
loco_status loco_locogen_result_json(const loco_locogen_result *r, const loco_locogen_params *g,
                                     const loco_pipeline *p, json_t **out, loco_err *err);

#endif
