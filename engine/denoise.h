/* denoise.h: the batched denoising loop under text-to-image and every research method.
 *
 * loco_generate (engine/pipeline.h) is one call of this with a plain batch. Causal tracing and
 * LocoGen call it with many trajectories ("samples") that differ only by data: which text row
 * each sample's conditional and unconditional branches attend to, which text row each
 * cross-attention layer of the conditional branch takes its K/V from (LocoGen's `context`), which
 * seed drew each sample's noise, and the hooks that record/restore/ablate UNet sites.
 *
 * Per call of the schedule, exactly as the diffusers pipelines do it:
 *   model input = [latents | latents] (guidance) or latents, scaled by scale_model_input;
 *   one UNet call over all rows: rows [0, B) are the unconditional branches of samples 0..B-1 and
 *   rows [B, 2B) their conditional branches (without guidance only the conditional rows exist);
 *   ε = ε_u + g (ε_c − ε_u); scheduler.step.
 *
 * Noise: samples are split into consecutive groups; each group has its own torch generator
 * (manual_seed(seed)) and its own scheduler instance. A group draws its initial latents with one
 * torch.randn of [group size, C, h, w] and its ancestral step noise from the same stream, so a
 * group of n samples behaves exactly like one diffusers pipeline call with a batch of n, and a
 * group of one sample like a single-image call with that seed. A LocoGen sweep therefore gives
 * each window's image bit-identical noise to the image generated alone.
 *
 * Text K/V are projected once for the whole call (or passed in, projected once per job). */
#ifndef LOCO_DENOISE_H
#define LOCO_DENOISE_H

#include "pipeline.h"

/* Called before UNet call `call` (0-based) of `n_calls`; hooks use it to know the step. */
typedef loco_status (*loco_denoise_call_fn)(void *ctx, int call, int n_calls, loco_err *err);

typedef struct loco_denoise_params {
    int n_samples; /* B */
    /* the text batch: rows [Bt, L, D] (SD-XL: the concatenated states) and SD-XL pooled [Bt, P] */
    const loco_tensor *text;
    const loco_tensor *pooled;
    const loco_unet_text_kv *text_kv;   /* K/V of `text` projected earlier, or NULL: projected here */
    const loco_site_hooks *kv_hooks;    /* hooks of that projection (CROSS_K/CROSS_V sites), may be NULL;
                                           only with text_kv NULL */
    const int *cond_row;                /* [B]: text row of sample b's conditional branch */
    const int *uncond_row;              /* [B]: text row of its unconditional branch (guidance only) */
    /* NULL, or n_cross entries (engine/unet.h execution order), each NULL or [B]: the text row
     * whose K/V the conditional branch of sample b uses at that cross-attention layer. The
     * unconditional branch always keeps uncond_row. */
    const int *const *cond_kv_row;
    /* noise groups: n_groups consecutive groups of group_size[g] samples (sum = B) with seeds
     * group_seed[g]; n_groups 0 means one group of B samples seeded with group_seed[0] */
    int n_groups;
    const int *group_size;
    const uint64_t *group_seed;
    const float *latents; /* optional initial latents [B, C, h, w], times init_noise_sigma like diffusers' latents= */
    int width, height;    /* pixels; multiples of the pipeline's size multiple */
    int steps;
    float guidance_scale;       /* > 1: classifier-free guidance */
    int has_scheduler;          /* 0: the model's own scheduler */
    loco_scheduler_kind scheduler;
    int use_karras_sigmas;      /* -1: the config's */
    loco_site_hooks hooks;      /* UNet site hooks for every call (row layout above) */
    loco_denoise_call_fn before_call;
    void *call_ctx;
    loco_progress_fn progress;  /* after each call; non-zero cancels */
    /* After each VAE decode chunk with (images decoded, B), same ctx; non-zero cancels. The
     * research methods decode many images per batch: without it a cancel waits for all of
     * them. NULL (loco_generate) keeps progress a per-step count. */
    loco_progress_fn decode_progress;
    void *progress_ctx;
    int skip_decode;
    int decode_batch;           /* samples per VAE decode; 0: all at once */
} loco_denoise_params;

void loco_denoise_params_init(loco_denoise_params *d);

/* Runs the loop and decodes. out (loco_generate_result) gets B images, the initial latents (after
 * init_noise_sigma) and the final latents. Checks every index against the text batch. */
loco_status loco_denoise(loco_pipeline *p, const loco_denoise_params *d, loco_generate_result *out, loco_err *err);

/* The pixel multiple image sides must be (vae scale * 2^(UNet levels - 1)). */
int loco_pipeline_size_multiple(const loco_pipeline *p);

#endif
