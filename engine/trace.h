/* trace.h: causal tracing (causal mediation analysis) of a text-to-image model, as [P1]
 * (Basu et al., ICLR 2024) describes it; reference/methods.md §2 is the spec.
 *
 * For a caption c whose subject tokens (e.g. "van gogh") carry an attribute:
 *   clean      the ordinary guided generation of c;
 *   corrupted  the same with seeded Gaussian noise (scale x std of the token-embedding matrix,
 *              default 3) added to the subject tokens' embeddings;
 *   restored   the corrupted generation with ONE state put back to its clean value:
 *              - a UNet component (every ResNet block, self-attention attn1, cross-attention attn2
 *                and feed-forward ff): its conditional-branch output is copied from the clean
 *                trajectory at every step, the clean run going in lock-step in the same batch;
 *              - a text-encoder state (layer l, self_attn or mlp output, token position p): copied
 *                from the clean encoder pass, the rest of the encoder then runs on it.
 * All trajectories start from the same initial noise (torch.Generator manual_seed(seed)). Each
 * image is scored with CLIP against the attribute caption: the score of a restored image says how
 * much of the attribute that one state brings back ([P1] uses CLIP(restored) itself; the indirect
 * effect CLIP(restored) - CLIP(corrupted) is reported as well).
 *
 * SD-XL: the corruption hits both text encoders' subject embeddings; text states are those of
 * text_encoder (CLIP-L), whose last layer the pipeline never reads (it conditions on the
 * penultimate one), so that layer's row of the grid shows no effect by construction.
 *
 * Batching: restored variants share denoise batches (max_batch samples each, every UNet batch
 * carrying its own clean trajectory to restore from); text K/V are projected once per batch.
 *
 * Progress and cancel: the batch plan is fixed before anything runs, and progress counts
 * denoising steps (UNet calls) over all of it: total = batches x calls per trajectory (PNDM:
 * steps + 1), e.g. 3 batches of a 21-call schedule read "step 17 of 63". The first call is
 * (0, total); then one after every step of every batch; the same done again between a batch's
 * VAE decodes and CLIP scoring chunks. total never changes and done never goes back; the last
 * call has done = total. A non-zero return stops the run at that point, within one model call,
 * with LOCO_ECANCELLED ("cancelled after 17 of 63 denoising steps ..."). */
#ifndef LOCO_TRACE_H
#define LOCO_TRACE_H

#include <jansson.h>

#include "clip_score.h"
#include "method_util.h"

typedef enum loco_trace_scope {
    LOCO_TRACE_ALL = 0, /* "all": UNet components and text-encoder states */
    LOCO_TRACE_UNET,    /* "unet" */
    LOCO_TRACE_TEXT,    /* "text" */
    LOCO_TRACE_SCOPE_COUNT
} loco_trace_scope;

const char *loco_trace_scope_name(loco_trace_scope s);
int loco_trace_scope_from_name(const char *name, loco_trace_scope *out);

typedef struct loco_trace_params {
    const char *prompt;    /* the caption */
    const char *subject;   /* words of the prompt whose tokens are corrupted */
    const char *attribute; /* caption the images are scored against; NULL: the prompt */
    uint64_t seed;         /* initial noise */
    uint64_t noise_seed;   /* corruption noise: torch.randn(n_subject, D, manual_seed(noise_seed)) */
    float noise_scale;     /* multiple of the token-embedding std (3) */
    loco_sampler_opts sampler;
    loco_trace_scope scope;
    /* UNet components to restore: NULL = every resnet / attn1 / attn2 / ff site, in execution order */
    const char *const *components;
    int n_components;
    /* text-encoder token positions: NULL = 0 (BOS) .. the prompt's EOS */
    const int *positions;
    int n_positions;
    /* methods.md §2.3: a state is causal when its restored image's CLIP score (100 x max(cos, 0))
     * exceeds this; the report then marks each state and lists the causal ones. NaN (the
     * default): no threshold, scores only. */
    double causal_threshold;
    int max_batch;         /* samples per denoise batch; 0: 16 */
    int keep_images;       /* 1: keep every restored image in the result */
    int keep_latents;      /* 1: keep every trajectory's final latents (parity tests) */
    loco_progress_fn progress; /* (done, total) in denoising steps of all batches (above); non-zero cancels */
    void *progress_ctx;
} loco_trace_params;

void loco_trace_params_init(loco_trace_params *t); /* scale 3, noise_seed 0, scope all */

typedef enum loco_trace_module {
    LOCO_TRACE_MOD_SELF_ATTN = 0, /* "self_attn" */
    LOCO_TRACE_MOD_MLP,           /* "mlp" */
    LOCO_TRACE_MOD_COUNT
} loco_trace_module;

typedef struct loco_trace_entry {
    char site[160];        /* UNet module path, or the text module path ("text_model.encoder.layers.0.self_attn") */
    loco_site_kind kind;
    int layer, position;   /* text states; -1 for UNet components */
    loco_clip_score score; /* of the restored image against the attribute caption */
    double indirect_effect; /* cosine(restored) - cosine(corrupted) */
    loco_image image;      /* with keep_images */
    float *latents;        /* with keep_latents */
} loco_trace_entry;

typedef struct loco_trace_result {
    int n_subject;
    int *subject_positions;
    int eos_position;
    double embed_std;      /* std of the token-embedding matrix */
    loco_clip_score clean, corrupted;
    loco_image clean_image, corrupted_image;
    float *clean_latents, *corrupted_latents; /* with keep_latents */
    int64_t latent_numel;
    int n_unet;
    loco_trace_entry *unet;   /* execution order */
    int n_layers, n_positions;
    int *positions;
    loco_trace_entry *text;   /* [layer][module][position] */
    int n_calls;
    double seconds;
} loco_trace_result;

void loco_trace_result_free(loco_trace_result *r);
/* The text entry of (layer, module, position index). */
const loco_trace_entry *loco_trace_text_entry(const loco_trace_result *r, int layer, loco_trace_module m, int pos_index);

/* Check everything (prompt, subject in the prompt, components, positions, sizes) before running. */
loco_status loco_trace_validate(const loco_pipeline *p, const loco_trace_params *t, loco_err *err);
loco_status loco_trace_run(loco_pipeline *p, const loco_clip_scorer *scorer, const loco_trace_params *t,
                           loco_trace_result *out, loco_err *err);

/* The text-encoder grid of one module as a heatmap: one cell per (layer, position), layers top to
 * bottom, positions left to right, colour = CLIP score of the restored image scaled between the
 * corrupted and the best score of the grid. cell: pixels per cell side. */
loco_status loco_trace_heatmap(const loco_trace_result *r, loco_trace_module m, int cell, loco_image *out,
                               loco_err *err);

/* The result as JSON (params echoed, scores per component and per text state). */
loco_status loco_trace_result_json(const loco_trace_result *r, const loco_trace_params *t, json_t **out, loco_err *err);

#endif
