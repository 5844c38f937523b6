/* text_conditioning.h: the pipelines' encode_prompt, per model family, as diffusers does it.
 *
 *   SD 1.x / SD 2.x (StableDiffusionPipeline.encode_prompt): last_hidden_state of the one text
 *     encoder (SD 2.x's diffusers encoder already has 23 layers, so this is the LDM's
 *     "penultimate + ln_final"). clip_skip k: hidden_states[-(k+1)] then final_layer_norm.
 *     Negative prompts always use last_hidden_state (diffusers ignores clip_skip there).
 *   SD-XL (StableDiffusionXLPipeline.encode_prompt): hidden_states[-2] of both encoders with no
 *     final LayerNorm, concatenated on features [encoder 1 | encoder 2]; pooled = text_embeds of
 *     encoder 2. clip_skip k: hidden_states[-(k+2)] (negatives always -2). With no negative
 *     prompt and force_zeros_for_empty_prompt, the negative embeddings and pooled are zeros.
 *     An encoder-2-only setup (the refiner) is accepted: tokenizer/text_encoder NULL.
 *
 * Output rows follow the pipelines' classifier-free-guidance batch: [uncond | cond], each half
 * ordered prompt-major with num_images_per_prompt consecutive copies (p0, p0, p1, p1, ...). */
#ifndef LOCO_TEXT_CONDITIONING_H
#define LOCO_TEXT_CONDITIONING_H

#include "clip_text.h"
#include "clip_tokenizer.h"
#include "model_files.h" /* loco_model_family */

/* The loaded text side of a pipeline; nothing here is owned. */
typedef struct loco_text_encoders {
    loco_model_family family;               /* SD1, SD2 or SDXL */
    const loco_clip_tokenizer *tokenizer;   /* SD 1.x/2.x: required; SD-XL: CLIP-L, or NULL (refiner) */
    const loco_clip_text *text_encoder;
    const loco_clip_tokenizer *tokenizer_2; /* SD-XL only: OpenCLIP bigG */
    const loco_clip_text *text_encoder_2;   /* SD-XL only, with text_projection */
    int force_zeros_for_empty_prompt;       /* SD-XL model_index.json; the pipeline's default is 1 */
} loco_text_encoders;

void loco_text_encoders_init(loco_text_encoders *e); /* SD1, all NULL, force_zeros 1 */

typedef struct loco_encode_prompt_opts {
    int n_prompts;
    const char *const *prompts;            /* n_prompts strings */
    const char *const *prompts_2;          /* SD-XL second encoder; NULL = prompts */
    const char *const *negative_prompts;   /* NULL = none given; else n_prompts strings */
    const char *const *negative_prompts_2; /* SD-XL; NULL = negative_prompts */
    int num_images_per_prompt;             /* >= 1 */
    int do_classifier_free_guidance;       /* 1: also produce the unconditional half */
    int clip_skip;                         /* 0 = none; k >= 1 skips k layers as diffusers does */
    /* Interventions on the conditional prompts' encoder runs (causal tracing corrupts and
     * restores text states there); NULL = none. hooks_2 is for SD-XL's encoder 2. */
    const loco_site_hooks *hooks;
    const loco_site_hooks *hooks_2;
} loco_encode_prompt_opts;

void loco_encode_prompt_opts_init(loco_encode_prompt_opts *o); /* 1 image, CFG on, no clip_skip */

typedef struct loco_prompt_embeds {
    int batch; /* rows per half: n_prompts * num_images_per_prompt */
    int cfg;   /* 1: rows [0, batch) unconditional, [batch, 2 batch) conditional */
    loco_tensor embeds; /* [rows, L, D] (D = 768|1280 concatenated for SD-XL), activation dtype */
    loco_tensor pooled; /* SD-XL: [rows, projection_dim]; otherwise empty (ndim 0) */
} loco_prompt_embeds;

loco_status loco_encode_prompt(const loco_text_encoders *e, const loco_encode_prompt_opts *o,
                               loco_prompt_embeds *out, loco_err *err);
void loco_prompt_embeds_free(loco_prompt_embeds *p);

#endif
