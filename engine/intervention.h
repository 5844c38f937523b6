/* intervention.h: interventions as data (DESIGN.md, "The central idea").
 *
 * A research job is a batch of ordinary denoising runs ("samples", engine/denoise.h) over a batch
 * of conditional texts ("text rows"), which differ only by a list of interventions. Each
 * intervention says what to do, where (a site, engine/sites.h, by its diffusers/transformers
 * module path, or a cross-attention layer by its execution-order index) and to which sample or
 * text row:
 *
 *   context  sample s, cross-attention layer i: the conditional branch of s takes layer i's K and V
 *            from text row `source` instead of its own prompt, at every step (LocoGen). Compiled
 *            into the per-layer K/V row tables of the denoise call: it costs nothing.
 *   restore  UNet site: the conditional-branch output of sample s is overwritten with the same
 *            site's output of sample `source` in the same UNet call (causal tracing: the clean
 *            run goes in lock-step in the same batch). Text site: text row r's output at the given
 *            token positions (all when none) is overwritten with row `source`'s.
 *   corrupt  text row r: seeded Gaussian noise, scale x std(token embedding matrix), is added to
 *            the token embeddings at the given positions (the subject tokens). The noise is
 *            torch.randn(n_positions, D, generator=manual_seed(seed)) in float32, bit for bit.
 *   ablate   set the given output channels of a site to the given values: for a UNet token site
 *            (self_attn, cross_attn, ff) in sample s's conditional branch; for attn2.to_k/to_v
 *            (cross_k / cross_v, projected once per text row) and text-encoder sites in text row r
 *            (at the given positions, all when none).
 *   record   keep a copy of a site's output: per UNet call for UNet sites (sample s's conditional
 *            branch), once for text rows.
 *
 * Layout conventions (engine/denoise.h): text rows are the rows of the conditional text-encoder
 * batch; the UNet batch is [unconditional of samples 0..B-1 | conditional of samples 0..B-1] with
 * guidance, or only the conditional rows without. Interventions never touch unconditional rows.
 *
 * A plan is checked and compiled against the loaded models (loco_iv_compile); the compiled
 * program hands out the hooks for the text encoder(s) and the UNet, the K/V row tables, and the
 * recordings. Errors name the intervention and what is wrong with it ("intervention 3 (restore):
 * unknown site 'down_blocks.9.resnets.0'; `loco inspect MODEL --all-sites` lists them"). */
#ifndef LOCO_INTERVENTION_H
#define LOCO_INTERVENTION_H

#include "clip_text.h"
#include "denoise.h"
#include "unet.h"

typedef enum loco_iv_action {
    LOCO_IV_CONTEXT = 0, /* "context" */
    LOCO_IV_RESTORE,     /* "restore" */
    LOCO_IV_CORRUPT,     /* "corrupt" */
    LOCO_IV_ABLATE,      /* "ablate" */
    LOCO_IV_RECORD,      /* "record" */
    LOCO_IV_ACTION_COUNT
} loco_iv_action;

/* Text-encoder sites are transformers module paths ("text_model.encoder.layers.3.mlp"); those of
 * the second encoder (SD-XL) carry this prefix ("text_encoder_2.text_model.embeddings"). Shared
 * with `loco inspect`, which lists the names exactly as plans must spell them. */
#define LOCO_IV_TEXT2_PREFIX "text_encoder_2."

const char *loco_iv_action_name(loco_iv_action a);
int loco_iv_action_from_name(const char *name, loco_iv_action *out); /* 0 ok, -1 unknown */

typedef struct loco_intervention {
    loco_iv_action action;
    int target;       /* sample (UNet sites, context) or text row (text sites, cross_k/v, corrupt) */
    const char *site; /* module path; NULL for corrupt, and for context (then cross_index names the layer) */
    int cross_index;  /* -1, or a cross-attention layer (execution order): context's layer, or the
                         attn2 site of that layer when `site` is NULL */
    int source;       /* context: text row; restore: reference sample / text row */
    /* corrupt, and text-site restore/ablate: token positions (NULL / 0: every position) */
    const int *positions;
    int n_positions;
    float scale;      /* corrupt: multiple of the token-embedding std (3 in ROME and the paper) */
    uint64_t seed;    /* corrupt */
    const int32_t *channels; /* ablate */
    const float *values;
    int n_channels;
} loco_intervention;

/* Zero, target 0, cross_index -1, scale 3. */
void loco_intervention_init(loco_intervention *iv);

/* The batch an intervention plan acts on. */
typedef struct loco_iv_layout {
    int n_samples;   /* B */
    int n_text_rows; /* rows of the conditional text-encoder batch; text row r is also row r of the
                        denoise text batch (its unconditional row(s) come after the text rows) */
    int cfg;         /* 1: the UNet batch has the unconditional half first */
    int n_calls;     /* UNet calls per run (record buffers hold this many steps) */
} loco_iv_layout;

/* The models sites resolve against: text sites "text_model...." name text_encoder's;
 * "text_encoder_2.text_model...." name SD-XL's second encoder (text_2 may be NULL). */
typedef struct loco_iv_models {
    const loco_unet *unet;
    const loco_clip_text *text;
    const loco_clip_text *text_2;
    /* token-embedding std of text / text_2 when the caller has it (loco_token_embedding_std);
     * 0: computed at compile time when a corrupt needs it (a download of the whole matrix) */
    double text_std, text_2_std;
} loco_iv_models;

typedef struct loco_iv_program loco_iv_program;

/* Check every intervention (site exists and suits the action, indices in range, channels within
 * the site's width, sizes consistent) and compile. The plan's arrays are copied. */
loco_status loco_iv_compile(const loco_intervention *plan, int n, const loco_iv_layout *layout,
                            const loco_iv_models *models, loco_iv_program **out, loco_err *err);
void loco_iv_program_free(loco_iv_program *p);

/* Hooks for the conditional text-encoder batch (rows = text rows): encoder 1 and SD-XL's encoder 2. */
loco_site_hooks loco_iv_text_hooks(loco_iv_program *p);
loco_site_hooks loco_iv_text_2_hooks(loco_iv_program *p);
/* Hooks for the UNet calls of the denoise loop and for the text K/V projection (cross_k/v),
 * without a replay_id (loco_iv_apply adds it). */
loco_site_hooks loco_iv_unet_hooks(loco_iv_program *p);
/* K/V row tables for loco_denoise_params.cond_kv_row: n_cross entries, NULL when no context
 * intervention exists at all (and per layer NULL where none applies). row_of_sample gives each
 * sample's own conditional text row (used where a sample has no context at that layer). */
loco_status loco_iv_kv_rows(loco_iv_program *p, const int *row_of_sample, const int *const **out, loco_err *err);
/* Plug into loco_denoise_params.before_call (ctx = the program): tells UNet hooks the step. */
loco_status loco_iv_before_call(void *program, int call, int n_calls, loco_err *err);
/* Fill the denoise fields an intervention program drives: hooks (only when the plan acts on a
 * UNet sample site: restore, ablate, record) and kv_hooks (only when it acts on cross_k /
 * cross_v), before_call, cond_kv_row (from loco_iv_kv_rows with d->cond_row). So context-only
 * and neuron-ablation plans add no hook to the UNet calls. The call hooks carry a replay_id
 * (sites.h) unless the plan records a sample site, so restores and ablations keep CUDA graph
 * replay (unet.h, "graphs"); records run op by op. */
loco_status loco_iv_apply(loco_iv_program *p, loco_denoise_params *d, loco_err *err);

/* A recording: the plan's intervention `index` (a record). For UNet sites steps = n_calls and
 * each step holds numel floats (one sample's conditional-branch output); for text sites
 * steps = 1. data is NULL until the site ran. */
typedef struct loco_iv_recording {
    const float *data;
    int steps;
    int64_t numel;
    int ndim;
    int64_t shape[LOCO_MAX_DIMS]; /* one sample's shape (no batch dimension) */
} loco_iv_recording;

loco_status loco_iv_get_recording(const loco_iv_program *p, int index, loco_iv_recording *out, loco_err *err);

/* The std the corrupt action scales by: std of every element of the token-embedding matrix
 * (unbiased, as torch.std), computed in double. */
loco_status loco_token_embedding_std(const loco_clip_text *m, double *out, loco_err *err);

#endif
