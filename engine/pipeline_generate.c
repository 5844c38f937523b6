/* pipeline_generate.c: the denoising loop of diffusers' text-to-image pipelines. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_impl.h"
#include "torch_rng.h"

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

static float effective_guidance(const loco_pipeline *p, const loco_generate_params *g) {
    if (!isnan(g->guidance_scale)) return g->guidance_scale;
    return p->family == LOCO_FAMILY_SDXL ? 5.0f : 7.5f;
}

/* Image sides must survive the VAE (x vae_scale) and every UNet downsampler (x 2^(levels-1)). */
static int size_multiple(const loco_pipeline *p) {
    return p->vae_scale << (loco_unet_get_config(p->unet)->n_blocks - 1);
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
    float gs = effective_guidance(p, g);
    if (!isfinite(gs) || gs < 0 || gs > 100)
        return loco_err_set(err, LOCO_EINVAL, "guidance_scale must be a number in [0, 100], got %g", (double)gs);
    int def = loco_pipeline_default_size(p), m = size_multiple(p);
    int w = g->width ? g->width : def, h = g->height ? g->height : def;
    if (w < m || h < m || w > GEN_MAX_SIDE || h > GEN_MAX_SIDE || w % m || h % m)
        return loco_err_set(err, LOCO_EINVAL,
                            "width and height must be multiples of %d between %d and %d, got %dx%d", m, m,
                            GEN_MAX_SIDE, w, h);
    if (g->clip_skip < 0) return loco_err_set(err, LOCO_EINVAL, "clip_skip must be >= 0, got %d", g->clip_skip);
    if (g->has_scheduler && (unsigned)g->scheduler >= LOCO_SCHED_KIND_COUNT)
        return loco_err_set(err, LOCO_EINVAL, "unknown scheduler");
    return LOCO_OK;
}

static loco_status encode_text(loco_pipeline *p, const loco_generate_params *g, int cfg, loco_prompt_embeds *pe,
                               loco_err *err) {
    loco_text_encoders enc;
    loco_text_encoders_init(&enc);
    enc.family = p->family;
    enc.tokenizer = p->tokenizer;
    enc.text_encoder = p->text_encoder;
    enc.tokenizer_2 = p->tokenizer_2;
    enc.text_encoder_2 = p->text_encoder_2;
    enc.force_zeros_for_empty_prompt = p->force_zeros_for_empty_prompt;
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

static loco_status make_scheduler(loco_pipeline *p, const loco_generate_params *g, int steps, loco_scheduler **out,
                                  loco_err *err) {
    loco_scheduler_config cfg = p->sched_cfg;
    cfg.trained_betas = NULL; /* shared, read-only: loco_scheduler_create copies what it needs */
    cfg.trained_betas_len = 0;
    loco_status st = LOCO_OK;
    if (p->sched_cfg.trained_betas)
        st = loco_scheduler_config_set_trained_betas(&cfg, p->sched_cfg.trained_betas, p->sched_cfg.trained_betas_len,
                                                     err);
    if (st) return st;
    if (g->use_karras_sigmas >= 0) cfg.use_karras_sigmas = g->use_karras_sigmas;
    loco_scheduler_kind kind = g->has_scheduler ? g->scheduler : p->default_scheduler;
    st = loco_scheduler_create(kind, &cfg, steps, p->be, out, err);
    loco_scheduler_config_release(&cfg);
    if (st) loco_err_prefix(err, "scheduler %s", loco_scheduler_kind_name(kind));
    return st;
}

/* Everything one run allocates, freed in one place. */
typedef struct gen_state {
    loco_prompt_embeds pe;
    loco_unet_text_kv kv;
    int have_kv;
    loco_scheduler *sched;
    loco_tensor latents, model_in, eps, image;
    float *timesteps, *time_ids;
} gen_state;

static void gen_state_free(gen_state *s) {
    loco_prompt_embeds_free(&s->pe);
    if (s->have_kv) loco_unet_text_kv_free(&s->kv);
    loco_scheduler_destroy(s->sched);
    loco_tensor_free(&s->latents);
    loco_tensor_free(&s->model_in);
    loco_tensor_free(&s->eps);
    loco_tensor_free(&s->image);
    free(s->timesteps);
    free(s->time_ids);
}

/* ε = ε_u + g (ε_c − ε_u), in place in the unconditional half (diffusers' order of operations). */
static loco_status apply_guidance(loco_backend *be, loco_tensor *eps, int64_t b, float gs, loco_tensor *guided,
                                  loco_err *err) {
    loco_tensor u, c;
    loco_status st;
    if ((st = loco_tensor_slice0(eps, 0, b, &u, err))) return st;
    if ((st = loco_tensor_slice0(eps, b, b, &c, err))) return st;
    const loco_tensor *diff_in[2] = {&c, &u};
    const float diff_coef[2] = {1.0f, -1.0f};
    if ((st = loco_lincomb(be, &c, 2, diff_in, diff_coef, err))) return st;
    const loco_tensor *out_in[2] = {&u, &c};
    const float out_coef[2] = {1.0f, gs};
    if ((st = loco_lincomb(be, &u, 2, out_in, out_coef, err))) return st;
    *guided = u;
    return LOCO_OK;
}

static loco_status download_new(const loco_tensor *t, float **out, loco_err *err) {
    *out = malloc((size_t)loco_tensor_numel(t) * sizeof **out);
    if (!*out) return loco_err_set(err, LOCO_ENOMEM, "out of memory for %lld floats", (long long)loco_tensor_numel(t));
    return loco_tensor_download_f32(t, *out, err);
}

loco_status loco_generate(loco_pipeline *p, const loco_generate_params *g, loco_generate_result *out,
                          loco_err *err) {
    memset(out, 0, sizeof *out);
    loco_status st = loco_generate_validate(p, g, err);
    if (st) return st;
    loco_backend *be = p->be;
    const loco_unet_config *uc = loco_unet_get_config(p->unet);
    const int steps = g->steps ? g->steps : 50;
    const float gs = effective_guidance(p, g);
    const int cfg = gs > 1.0f;
    const int def = loco_pipeline_default_size(p);
    const int width = g->width ? g->width : def, height = g->height ? g->height : def;
    const int64_t b = (int64_t)g->n_prompts * g->num_images_per_prompt;
    const int64_t rows = cfg ? 2 * b : b;
    const int64_t lshape[4] = {b, uc->in_channels, height / p->vae_scale, width / p->vae_scale};
    const int64_t ishape[4] = {rows, lshape[1], lshape[2], lshape[3]};
    const int64_t per_sample = lshape[1] * lshape[2] * lshape[3];
    gen_state s;
    memset(&s, 0, sizeof s);

    if ((st = encode_text(p, g, cfg, &s.pe, err))) goto done;
    if ((st = make_scheduler(p, g, steps, &s.sched, err))) goto done;

    /* Initial latents: one torch.randn of the whole batch from the seeded generator, whose
     * stream the ancestral samplers then continue. */
    loco_torch_rng rng;
    loco_torch_rng_seed(&rng, g->seed);
    float *host = malloc((size_t)(b * per_sample) * sizeof *host);
    if (!host) {
        st = loco_err_set(err, LOCO_ENOMEM, "out of memory for the initial latents");
        goto done;
    }
    if (g->latents)
        memcpy(host, g->latents, (size_t)(b * per_sample) * sizeof *host);
    else
        loco_torch_randn_f32(&rng, host, (size_t)(b * per_sample));
    /* init_noise_sigma is applied in fp32, as torch multiplies the tensor by a Python float. */
    const float sigma0 = loco_scheduler_init_noise_sigma(s.sched);
    if (sigma0 != 1.0f)
        for (int64_t i = 0; i < b * per_sample; i++) host[i] *= sigma0;
    st = loco_tensor_alloc_act(be, 4, lshape, &s.latents, err);
    if (!st) st = loco_tensor_upload(&s.latents, host, LOCO_F32, err);
    out->initial_latents = host;
    if (st) goto done;
    if ((st = loco_tensor_alloc_act(be, 4, ishape, &s.model_in, err))) goto done;

    /* Text K/V once per run: they do not depend on the timestep. */
    if ((st = loco_unet_compute_text_kv(p->unet, &s.pe.embeds, NULL, &s.kv, err))) goto done;
    s.have_kv = 1;

    s.timesteps = malloc((size_t)rows * sizeof *s.timesteps);
    if (!s.timesteps) {
        st = loco_err_set(err, LOCO_ENOMEM, "out of memory");
        goto done;
    }
    loco_unet_inputs in;
    loco_unet_inputs_init(&in);
    in.sample = &s.model_in;
    in.timesteps = s.timesteps;
    in.encoder_hidden_states = &s.pe.embeds;
    in.text_kv = &s.kv;
    if (p->family == LOCO_FAMILY_SDXL) {
        /* add_time_ids = original_size + crops_coords_top_left + target_size, the same for the
         * negative half unless negative sizes are given (they are not here). */
        s.time_ids = malloc((size_t)rows * 6 * sizeof *s.time_ids);
        if (!s.time_ids) {
            st = loco_err_set(err, LOCO_ENOMEM, "out of memory");
            goto done;
        }
        for (int64_t r = 0; r < rows; r++) {
            float *t = s.time_ids + 6 * r;
            t[0] = (float)height, t[1] = (float)width, t[2] = 0, t[3] = 0, t[4] = (float)height, t[5] = (float)width;
        }
        in.text_embeds = &s.pe.pooled;
        in.time_ids = s.time_ids;
    }

    const int calls = loco_scheduler_num_calls(s.sched);
    for (int i = 0; i < calls; i++) {
        float t = loco_scheduler_timestep(s.sched, i);
        for (int64_t r = 0; r < rows; r++) s.timesteps[r] = t;
        for (int64_t half = 0; half < rows; half += b) {
            loco_tensor dst;
            if ((st = loco_tensor_slice0(&s.model_in, half, b, &dst, err))) goto done;
            if ((st = loco_copy(be, &dst, &s.latents, err))) goto done;
        }
        if ((st = loco_scheduler_scale_model_input(s.sched, i, &s.model_in, &s.model_in, err))) goto done;
        if ((st = loco_unet_forward(p->unet, &in, &s.eps, err))) {
            loco_err_prefix(err, "step %d/%d", i + 1, calls);
            goto done;
        }
        loco_tensor guided = s.eps;
        if (cfg && (st = apply_guidance(be, &s.eps, b, gs, &guided, err))) goto done;
        if ((st = loco_scheduler_step(s.sched, i, &guided, &s.latents, &rng, err))) {
            loco_err_prefix(err, "scheduler step %d/%d", i + 1, calls);
            goto done;
        }
        loco_tensor_free(&s.eps);
        if (g->progress && g->progress(g->progress_ctx, i + 1, calls)) {
            st = loco_err_set(err, LOCO_ECANCELLED, "cancelled after step %d of %d", i + 1, calls);
            goto done;
        }
    }

    memcpy(out->latent_shape, lshape, sizeof lshape);
    if ((st = download_new(&s.latents, &out->latents, err))) goto done;
    out->width = width;
    out->height = height;
    if (!g->skip_decode) {
        if ((st = loco_vae_decode(p->vae, &s.latents, NULL, NULL, &s.image, err))) {
            loco_err_prefix(err, "decoding the latents");
            goto done;
        }
        out->images = calloc((size_t)b, sizeof *out->images);
        if (!out->images) {
            st = loco_err_set(err, LOCO_ENOMEM, "out of memory");
            goto done;
        }
        for (int64_t k = 0; k < b; k++) {
            if ((st = loco_image_from_tensor(&s.image, (int)k, &out->images[k], err))) goto done;
            out->n_images = (int)k + 1;
        }
    }
done:
    gen_state_free(&s);
    if (st) loco_generate_result_free(out);
    return st;
}
