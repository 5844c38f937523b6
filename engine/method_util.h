/* method_util.h: pieces causal tracing (engine/trace.h) and LocoGen (engine/locogen.h) share:
 * the text batch of a job, subject-token lookup, sampler options, progress and cancel across
 * batches, image grids and JSON helpers. */
#ifndef LOCO_METHOD_UTIL_H
#define LOCO_METHOD_UTIL_H

#include <jansson.h>

#include "clip_score.h"
#include "intervention.h"
#include "pipeline.h"

/* Sampler settings every method takes (defaults: the model's scheduler, 50 steps, guidance 7.5
 * (SD-XL 5.0), the model's native size). */
typedef struct loco_sampler_opts {
    int steps;            /* 0: 50 */
    float guidance_scale; /* NAN: the pipeline default */
    int width, height;    /* 0: native */
    int has_scheduler;
    loco_scheduler_kind scheduler;
    int use_karras_sigmas; /* -1: the config's */
} loco_sampler_opts;

void loco_sampler_opts_init(loco_sampler_opts *o);
/* Resolve defaults against the pipeline and check sizes/steps/guidance; fills the denoise fields. */
loco_status loco_sampler_opts_apply(const loco_pipeline *p, const loco_sampler_opts *o, loco_denoise_params *d,
                                    loco_err *err);
/* Number of UNet calls the resolved schedule makes (PNDM: steps + 1). */
loco_status loco_sampler_n_calls(const loco_pipeline *p, const loco_denoise_params *d, int *out, loco_err *err);

/* Progress of a method that runs its trajectories as a fixed plan of denoise batches, in
 * denoising steps: done/total count the UNet calls of every batch (one per step of the schedule;
 * PNDM makes steps + 1), total = n_batches x n_calls, known before the first batch and never
 * changed. The caller's fn gets (0, total) first (loco_method_progress_poll), then (done, total)
 * after every step of every batch, and the same done again between a batch's VAE decodes and
 * CLIP scoring chunks: each call is a cancel point, so a non-zero return stops the run within one
 * model call, whatever the batch size. */
typedef struct loco_method_progress {
    loco_progress_fn fn; /* the caller's, or NULL */
    void *ctx;
    int n_batches, n_calls;
    int batch;           /* the batch running (0-based) */
    int done, total;
} loco_method_progress;

void loco_method_progress_init(loco_method_progress *m, loco_progress_fn fn, void *ctx, int n_batches, int n_calls);
/* Report (done, total) as they stand; non-zero: the caller cancels. */
int loco_method_progress_poll(loco_method_progress *m);
/* Batch b is next: d's step and decode callbacks report into m (done = b x n_calls + step). */
void loco_method_progress_batch(loco_method_progress *m, int b, loco_denoise_params *d);
/* LOCO_ECANCELLED with "<what>: cancelled after <done> of <total> denoising steps (...)". */
loco_status loco_method_progress_cancelled(const loco_method_progress *m, const char *what, loco_err *err);
/* loco_clip_scorer_image_embeds over n images in chunks, polling m between them (a cancel
 * there fails with loco_method_progress_cancelled(m, what)). */
loco_status loco_method_image_embeds(loco_method_progress *m, const char *what, const loco_clip_scorer *sc,
                                     const loco_image *images, int n, float *out, loco_err *err);

/* The text batch of one denoise call: `n` conditional rows (prompts encoded as the pipeline does,
 * with intervention hooks on the conditional encoder runs) followed by one unconditional row
 * (the empty prompt; SD-XL: zeros when force_zeros_for_empty_prompt). */
typedef struct loco_text_batch {
    int n_rows;         /* n + 1 */
    int uncond_row;     /* n */
    loco_tensor embeds; /* [n + 1, L, D] */
    loco_tensor pooled; /* SD-XL [n + 1, P], else empty */
} loco_text_batch;

loco_status loco_text_batch_encode(loco_pipeline *p, const char *const *prompts, int n, const loco_site_hooks *hooks,
                                   const loco_site_hooks *hooks_2, loco_text_batch *out, loco_err *err);
void loco_text_batch_free(loco_text_batch *t);

/* Token positions of `subject` in `prompt` as the pipeline tokenizes it (BOS at 0): the first
 * occurrence of the subject's BPE tokens as a contiguous run of the prompt's. *eos receives the
 * position of the prompt's EOS. LOCO_EINVAL with a message quoting both when absent or truncated. */
loco_status loco_subject_positions(const loco_pipeline *p, const char *prompt, const char *subject, int **positions,
                                   int *n, int *eos, loco_err *err);

/* A grid of equally sized RGB images, `cols` per row, `pad` pixels of white between them. */
loco_status loco_image_grid(const loco_image *images, int n, int cols, int pad, loco_image *out, loco_err *err);

/* Write `img` to dir/name (PNG); when dir is NULL nothing is written. */
loco_status loco_write_png_in(const char *dir, const char *name, const loco_image *img, loco_err *err);

/* JSON number that stays valid JSON for NaN/inf (null). */
json_t *loco_json_real(double v);

#endif
