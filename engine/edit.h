/* edit.h: closed-form knowledge edits of a resident model (shared/reference/methods.md §3, §5, §6).
 *
 * Every edit acts on a pipeline variant (engine/pipeline_variant.h): it reads the variant's
 * current weights and text encoders, solves in float64 and writes the new weights into the
 * variant's own copies, so the base is untouched and the variant can be generated from at once.
 * Each call returns a JSON report (the resolved options, the prompts with the token position
 * each row was taken from, and per edited matrix its name, shape, number of pairs, solver form,
 * reciprocal condition, fit before/after and relative change) and records it in the variant.
 *
 *   LocoEdit (§5):      to_k and to_v of cross-attention layers start..start+m-1 (execution
 *                       order): k_i = the embedding of an original prompt at its last subject
 *                       token, v_i = W · (the embedding of the target at its last token), λ = 0.01.
 *   Diff-QuickFix (§3): text_model.encoder.layers.0.self_attn.out_proj.weight: keys = inputs of
 *                       out_proj for the concept captions from the subject token through position
 *                       L-1, values = its outputs (bias included, as the notebook) for the target
 *                       captions paired by offset, λ = 0.01.
 *   Neurons (§6):       per to_k/to_v matrix of the chosen layers, the N output channels with the
 *                       largest |z| (Welch z over concept vs normal prompts at one token position)
 *                       are set to their mean over the normal prompts, at inference, in the
 *                       conditional branch, every step, every position. Both bugs of the released
 *                       code are fixed: the ablation is applied, and "normal" prompts are the
 *                       user's normal prompts (never the unfilled style templates).
 *
 * Subject tokens are located explicitly (the concept's token ids searched in each tokenized
 * prompt, last occurrence), never assumed to be "the token before EOS" (methods.md §9.4). Invalid
 * requests fail with LOCO_EINVAL and a message naming the problem: an unknown layer or a window
 * past the last cross-attention layer, a concept not found in a prompt, an empty prompt set,
 * a singular system.
 *
 * SD-XL: LocoEdit uses the 2048-d concatenated prompt embedding (both encoders' penultimate
 * states, as the pipeline conditions the UNet); the pooled embedding is not edited (methods.md
 * §5.3 leaves it open; LocoEdit edits only cross-attention K/V). Diff-QuickFix was published for
 * SD 1.x; on SD-XL it edits layer 0's out_proj of each selected encoder (default: both, because
 * each feeds half of the UNet's context), each solved with its own tokenizer's keys and values.
 * [P2] found no localized text-encoder state in SD-XL, so expect a weaker effect there. */
#ifndef LOCO_EDIT_H
#define LOCO_EDIT_H

#include <jansson.h>

#include "edit_solve.h"
#include "pipeline_variant.h"

typedef enum loco_edit_method {
    LOCO_EDIT_LOCOEDIT = 0,
    LOCO_EDIT_QUICKFIX,
    LOCO_EDIT_NEURONS,
    LOCO_EDIT_METHOD_COUNT
} loco_edit_method;

const char *loco_edit_method_name(loco_edit_method m); /* "locoedit", "quickfix", "neurons" */
/* Also accepts the API's spellings "diff_quickfix" and "neuron". */
int loco_edit_method_from_name(const char *name, loco_edit_method *out);

/* Which original prompts LocoEdit builds around the concept (methods.md §5.2). */
typedef enum loco_edit_templates {
    LOCO_TEMPLATES_STYLE = 0, /* C, "a painting in the style of C", "a photo in the style of C", "a picture ..." */
    LOCO_TEMPLATES_OBJECT,    /* C, "an image of C", "a photo of C", "a picture of C" */
    LOCO_TEMPLATES_NONE,      /* only the caller's prompts */
    LOCO_TEMPLATES_COUNT
} loco_edit_templates;

const char *loco_edit_templates_name(loco_edit_templates t); /* "style", "object", "none" */
int loco_edit_templates_from_name(const char *name, loco_edit_templates *out);

/* How the text rows of an edit are evaluated. F64: the text encoder run in float64 on the host
 * from the model's weights (exact; the edit systems are ill-conditioned, so fp32 rows would move
 * the edited weights by ~1e-5 relative, see engine/edit_text64.c); sequences are cut after the
 * last needed position, which causal attention makes exact. BACKEND: the model's own encoder on
 * its backend (fp32 on the CPU, fp16/bf16 on a GPU), as the released code ran it. */
typedef enum loco_edit_precision {
    LOCO_EDIT_PRECISION_F64 = 0,
    LOCO_EDIT_PRECISION_BACKEND,
    LOCO_EDIT_PRECISION_COUNT
} loco_edit_precision;
const char *loco_edit_precision_name(loco_edit_precision p); /* "f64", "backend" */
int loco_edit_precision_from_name(const char *name, loco_edit_precision *out);

/* Family defaults of the localized window (methods.md §4.4, §5.2): start 8, m 2 for SD 1.x/2.x
 * (the released LocoEdit code); start 45, m 3 for SD-XL (the project figure; m = 3 is [U]). */
void loco_edit_default_window(loco_model_family f, int *start, int *m);

/* ---- LocoEdit -------------------------------------------------------------------------------- */

typedef struct loco_locoedit_opts {
    const char *concept;           /* required: the subject whose embedding is remapped */
    const char *target;            /* the target prompt; default "a painting" */
    loco_edit_templates templates; /* STYLE */
    const char *const *prompts;    /* more original prompts (each must contain the concept) */
    int n_prompts;
    int start;                     /* first cross-attention layer, execution order; -1: family default */
    int n_layers;                  /* m; 0: family default */
    double lambda_k, lambda_v;     /* 0.01 each (the released code uses reg_key for both) */
    int edit_k, edit_v;            /* 1, 1 */
    loco_solve_form form;          /* AUTO */
    int clip_skip;                 /* 0: the embeddings the pipeline conditions on */
    loco_edit_precision precision; /* F64 */
} loco_locoedit_opts;

void loco_locoedit_opts_init(loco_locoedit_opts *o);
loco_status loco_edit_locoedit(loco_pipeline_variant *v, const loco_locoedit_opts *o, json_t **report,
                               loco_err *err);

/* ---- Diff-QuickFix ---------------------------------------------------------------------------- */

typedef enum loco_value_bias {
    LOCO_VALUE_BIAS_KEEP = 0, /* faithful: values are out_proj outputs including its bias */
    LOCO_VALUE_BIAS_SUBTRACT, /* fixed: the bias is subtracted, so W' k ≈ v − b is fitted */
    LOCO_VALUE_BIAS_COUNT
} loco_value_bias;
const char *loco_value_bias_name(loco_value_bias b); /* "keep", "subtract" */
int loco_value_bias_from_name(const char *name, loco_value_bias *out);

typedef struct loco_quickfix_opts {
    const char *concept;      /* required: the caption to remove ("van gogh") */
    const char *target;       /* default "painting" */
    int augment;              /* 1: add "A photo of X", "An image of X", "A picture of X" (4 pairs) */
    const char *const *captions;        /* more caption pairs: captions[i] (containing the concept) */
    const char *const *target_captions; /* -> target_captions[i] (containing the target); optional */
    int n_captions;
    int use_eos;              /* 1: keys from the subject token through position L-1 (notebook); 0: subject only */
    loco_value_bias value_bias;
    double lambda;            /* 0.01 */
    loco_solve_form form;
    int encoder;              /* SD-XL: 1, 2, or 0 = both (default); SD 1.x/2.x: 0 or 1 */
    int layer;                /* text-encoder layer whose out_proj is edited; 0 (the paper) */
} loco_quickfix_opts;

void loco_quickfix_opts_init(loco_quickfix_opts *o);
loco_status loco_edit_quickfix(loco_pipeline_variant *v, const loco_quickfix_opts *o, json_t **report,
                               loco_err *err);

/* ---- neuron edits ----------------------------------------------------------------------------- */

#define LOCO_NEURON_POS_EOS (-1) /* each prompt's first EOS token instead of a fixed position */

typedef struct loco_neuron_opts {
    const char *const *prompts;        /* with the concept (artist prompts); at least 2 */
    int n_prompts;
    const char *const *normal_prompts; /* the same scenes without it; at least 2 */
    int n_normal;
    const int *layers;                 /* cross-attention layers; NULL: the family's LocoEdit window */
    int n_layers;
    int n_neurons;                     /* top N per matrix; 50 */
    int position;                      /* token position of the statistics; 76 (released code) or EOS */
    int edit_k, edit_v;                /* 1, 1 */
    int clip_skip;
    /* BACKEND: z-scores are well conditioned, and position 76 needs every token of every prompt
     * through every layer, which float64 on the host would make slow for large prompt sets */
    loco_edit_precision precision;
} loco_neuron_opts;

void loco_neuron_opts_init(loco_neuron_opts *o);
loco_status loco_edit_neurons(loco_pipeline_variant *v, const loco_neuron_opts *o, json_t **report,
                              loco_err *err);

/* ---- building blocks (used by the methods, the tests and bench/edit_cpu.c) -------------------- */

/* Positions [first, last] of the subject's tokens inside a prompt padded as the pipelines do
 * (BOS at 0): the last occurrence of the subject's token ids. LOCO_EINVAL naming both strings
 * when the subject is absent (also when truncation to model_max_length cut it). */
loco_status loco_edit_subject_span(const loco_clip_tokenizer *tok, const char *prompt, const char *subject,
                                   int *first, int *last, loco_err *err);
/* The position of a prompt's last content token (the token before its EOS). */
loco_status loco_edit_last_token(const loco_clip_tokenizer *tok, const char *prompt, int *pos, loco_err *err);

/* The conditioning embedding (what the pipeline feeds the UNet: SD 1.x/2.x last_hidden_state,
 * SD-XL both encoders' penultimate states concatenated) of n prompts at one position each:
 * out [n, D] float64, D the UNet's cross_attention_dim. */
loco_status loco_edit_embed_rows(const loco_pipeline *p, const char *const *prompts, const int *positions, int n,
                                 int clip_skip, loco_edit_precision precision, double *out, loco_err *err);

/* One matrix: W' from the resident tensor `w` ([d_out, d_in]) for keys [n, d_in] and either values
 * [n, d_out] or, when targets_are_inputs, target inputs [n, d_in] whose values are W x (LocoEdit).
 * Solved in float64; w_new receives d_out * d_in floats (W' rounded once, as it is stored). work:
 * NULL, or d_out * d_in doubles reused across calls (saves first-touch page faults per matrix). */
loco_status loco_edit_solve_tensor(const loco_tensor *w, const double *keys, const double *values, int n,
                                   int targets_are_inputs, double lambda, loco_solve_form form, const char *what,
                                   float *w_new, double *work, loco_ridge_info *info, loco_err *err);

/* The report entry of one edited matrix. */
json_t *loco_edit_matrix_json(const char *component, const char *name, int cross_index, int64_t rows, int64_t cols,
                              int n_pairs, const loco_ridge_info *info);

#endif
