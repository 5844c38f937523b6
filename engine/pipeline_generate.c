/* pipeline_generate.c: diffusers' text-to-image pipelines: validation, encode_prompt, then the
 * shared batched denoising loop (engine/denoise.c) with one plain batch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "denoise.h"
#include "pipeline_impl.h"
#include "safetensors.h"

/* Limits that keep one request from taking the process down; the server applies its own
 * (usually tighter) limits before a job reaches here. */
#define GEN_MAX_BATCH 256
#define GEN_MAX_SIDE 8192
#define GEN_MAX_STEPS 1000

void loco_generate_params_init(loco_generate_params *g) {
    memset(g, 0, sizeof *g);
    g->num_images_per_prompt = 1;
    g->guidance_scale = NAN;
    g->use_karras_sigmas = -1;
}

void loco_generate_result_free(loco_generate_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n_images && r->images; i++) loco_image_free(&r->images[i]);
    free(r->images);
    free(r->initial_latents);
    free(r->latents);
    memset(r, 0, sizeof *r);
}

float loco_pipeline_guidance(const loco_pipeline *p, const loco_generate_params *g) {
    if (!isnan(g->guidance_scale)) return g->guidance_scale;
    return p->family == LOCO_FAMILY_SDXL ? 5.0f : 7.5f;
}

loco_status loco_generate_validate(const loco_pipeline *p, const loco_generate_params *g, loco_err *err) {
    if (g->n_prompts < 1 || !g->prompts) return loco_err_set(err, LOCO_EINVAL, "at least one prompt is required");
    for (int i = 0; i < g->n_prompts; i++) {
        if (!g->prompts[i]) return loco_err_set(err, LOCO_EINVAL, "prompt %d is missing", i);
        if (g->negative_prompts && !g->negative_prompts[i])
            return loco_err_set(err, LOCO_EINVAL, "negative prompt %d is missing", i);
    }
    if (g->num_images_per_prompt < 1)
        return loco_err_set(err, LOCO_EINVAL, "num_images_per_prompt must be >= 1, got %d", g->num_images_per_prompt);
    if ((long)g->n_prompts * g->num_images_per_prompt > GEN_MAX_BATCH)
        return loco_err_set(err, LOCO_EINVAL, "batch of %ld images is over the limit of %d",
                            (long)g->n_prompts * g->num_images_per_prompt, GEN_MAX_BATCH);
    if (g->steps < 0 || g->steps > GEN_MAX_STEPS)
        return loco_err_set(err, LOCO_EINVAL, "steps must be between 1 and %d, got %d", GEN_MAX_STEPS, g->steps);
    float gs = loco_pipeline_guidance(p, g);
    if (!isfinite(gs) || gs < 0 || gs > 100)
        return loco_err_set(err, LOCO_EINVAL, "guidance_scale must be a number in [0, 100], got %g", (double)gs);
    int def = loco_pipeline_default_size(p), m = loco_pipeline_size_multiple(p);
    int w = g->width ? g->width : def, h = g->height ? g->height : def;
    if (w < m || h < m || w > GEN_MAX_SIDE || h > GEN_MAX_SIDE || w % m || h % m)
        return loco_err_set(err, LOCO_EINVAL,
                            "width and height must be multiples of %d between %d and %d, got %dx%d", m, m,
                            GEN_MAX_SIDE, w, h);
    if (g->clip_skip < 0) return loco_err_set(err, LOCO_EINVAL, "clip_skip must be >= 0, got %d", g->clip_skip);
    loco_scheduler_kind kind;
    return loco_pipeline_scheduler_kind(p, g->has_scheduler, g->scheduler, g->use_karras_sigmas, &kind, err);
}

loco_status loco_pipeline_encode_prompts(loco_pipeline *p, const loco_generate_params *g, int cfg, loco_prompt_embeds *pe,
                                         loco_err *err) {
    loco_text_encoders enc;
    loco_pipeline_text_encoders(p, &enc);
    loco_encode_prompt_opts eo;
    loco_encode_prompt_opts_init(&eo);
    eo.n_prompts = g->n_prompts;
    eo.prompts = g->prompts;
    eo.prompts_2 = g->prompts_2;
    eo.negative_prompts = g->negative_prompts;
    eo.negative_prompts_2 = g->negative_prompts_2;
    eo.num_images_per_prompt = g->num_images_per_prompt;
    eo.do_classifier_free_guidance = cfg;
    eo.clip_skip = g->clip_skip;
    loco_status st = loco_encode_prompt(&enc, &eo, pe, err);
    if (st) loco_err_prefix(err, "encoding the prompt");
    return st;
}

void loco_pipeline_denoise_params(const loco_pipeline *p, const loco_generate_params *g, loco_denoise_params *d) {
    const int def = loco_pipeline_default_size(p);
    loco_denoise_params_init(d);
    d->n_samples = g->n_prompts * g->num_images_per_prompt;
    /* one generator for the whole batch: one torch.randn of [b, C, h, w], as the pipeline draws it */
    d->n_groups = 0;
    d->group_seed = &g->seed;
    d->latents = g->latents;
    d->width = g->width ? g->width : def;
    d->height = g->height ? g->height : def;
    d->steps = g->steps ? g->steps : 50;
    d->guidance_scale = loco_pipeline_guidance(p, g);
    d->has_scheduler = g->has_scheduler;
    d->scheduler = g->scheduler;
    d->use_karras_sigmas = g->use_karras_sigmas;
    d->progress = g->progress;
    d->progress_ctx = g->progress_ctx;
    d->skip_decode = g->skip_decode;
}

loco_status loco_generate(loco_pipeline *p, const loco_generate_params *g, loco_generate_result *out,
                          loco_err *err) {
    memset(out, 0, sizeof *out);
    loco_status st = loco_generate_validate(p, g, err);
    if (st) return st;
    const float gs = loco_pipeline_guidance(p, g);
    const int cfg = gs > 1.0f;
    const int b = g->n_prompts * g->num_images_per_prompt;
    loco_prompt_embeds pe;
    memset(&pe, 0, sizeof pe);
    int *rows = malloc((size_t)(2 * b) * sizeof *rows);
    if (!rows) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    if ((st = loco_pipeline_encode_prompts(p, g, cfg, &pe, err))) goto done;
    /* encode_prompt's rows are [uncond b | cond b]: sample k takes row k and b + k */
    for (int k = 0; k < b; k++) {
        rows[k] = k;
        rows[b + k] = cfg ? b + k : k;
    }
    loco_denoise_params d;
    loco_pipeline_denoise_params(p, g, &d);
    d.text = &pe.embeds;
    d.pooled = p->family == LOCO_FAMILY_SDXL ? &pe.pooled : NULL;
    d.cond_row = rows + b;
    d.uncond_row = cfg ? rows : NULL;
    st = loco_denoise(p, &d, out, err);
done:
    loco_prompt_embeds_free(&pe);
    free(rows);
    return st;
}

loco_status loco_generate_result_write_latents(const loco_generate_result *r, const char *path, loco_err *err) {
    loco_stored_tensor t[2];
    memset(t, 0, sizeof t);
    const char *names[2] = {"initial_latents", "latents"};
    const float *data[2] = {r->initial_latents, r->latents};
    size_t numel = (size_t)(r->latent_shape[0] * r->latent_shape[1] * r->latent_shape[2] * r->latent_shape[3]);
    for (int i = 0; i < 2; i++) {
        t[i].name = names[i];
        t[i].dtype = LOCO_F32;
        t[i].ndim = 4;
        memcpy(t[i].shape, r->latent_shape, sizeof r->latent_shape);
        t[i].data = data[i];
        t[i].nbytes = numel * sizeof(float);
    }
    return loco_safetensors_write(path, t, 2, NULL, err);
}

void loco_pipeline_text_encoders(const loco_pipeline *p, loco_text_encoders *enc) {
    loco_text_encoders_init(enc);
    enc->family = p->family;
    enc->tokenizer = p->tokenizer;
    enc->text_encoder = p->text_encoder;
    enc->tokenizer_2 = p->tokenizer_2;
    enc->text_encoder_2 = p->text_encoder_2;
    enc->force_zeros_for_empty_prompt = p->force_zeros_for_empty_prompt;
}
