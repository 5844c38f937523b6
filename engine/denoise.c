/* denoise.c: the batched denoising loop (see denoise.h): per-sample text rows and K/V rows,
 * seed groups with their own generator and scheduler, UNet hooks, VAE decode. */
#include "denoise.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_impl.h"
#include "torch_rng.h"

#define DENOISE_MAX_SAMPLES 4096
#define DENOISE_MAX_SIDE 8192
#define DENOISE_MAX_STEPS 1000

void loco_denoise_params_init(loco_denoise_params *d) {
    memset(d, 0, sizeof *d);
    d->guidance_scale = 7.5f;
    d->use_karras_sigmas = -1;
}

int loco_pipeline_size_multiple(const loco_pipeline *p) {
    return p->vae_scale << (loco_unet_get_config(p->unet)->n_blocks - 1);
}

/* Everything one run allocates, freed in one place. */
typedef struct dn_state {
    int n_groups;
    int *gsize;
    loco_scheduler **sched;
    loco_torch_rng *rng;
    loco_unet_text_kv kv;
    int have_kv;
    loco_tensor latents, model_in, eps, pooled_rows;
    float *timesteps, *time_ids;
    int *text_index;
    int **kv_rows;
    int n_cross;
} dn_state;

static void dn_free(dn_state *s) {
    for (int g = 0; s->sched && g < s->n_groups; g++) loco_scheduler_destroy(s->sched[g]);
    free(s->sched);
    free(s->rng);
    free(s->gsize);
    if (s->have_kv) loco_unet_text_kv_free(&s->kv);
    loco_tensor_free(&s->latents);
    loco_tensor_free(&s->model_in);
    loco_tensor_free(&s->eps);
    loco_tensor_free(&s->pooled_rows);
    free(s->timesteps);
    free(s->time_ids);
    free(s->text_index);
    for (int i = 0; s->kv_rows && i < s->n_cross; i++) free(s->kv_rows[i]);
    free(s->kv_rows);
}

static loco_status make_scheduler(const loco_pipeline *p, const loco_denoise_params *d, loco_scheduler **out,
                                  loco_err *err) {
    loco_scheduler_kind kind;
    loco_status st = loco_pipeline_scheduler_kind(p, d->has_scheduler, d->scheduler, d->use_karras_sigmas, &kind, err);
    if (st) return st;
    loco_scheduler_config cfg = p->sched_cfg;
    cfg.trained_betas = NULL; /* shared, read-only: loco_scheduler_create copies what it needs */
    cfg.trained_betas_len = 0;
    if (p->sched_cfg.trained_betas)
        st = loco_scheduler_config_set_trained_betas(&cfg, p->sched_cfg.trained_betas, p->sched_cfg.trained_betas_len,
                                                     err);
    if (st) return st;
    loco_pipeline_run_scheduler_config(d->has_scheduler, kind, d->use_karras_sigmas, &cfg);
    st = loco_scheduler_create(kind, &cfg, d->steps, p->be, out, err);
    loco_scheduler_config_release(&cfg);
    if (st) loco_err_prefix(err, "scheduler %s", loco_scheduler_kind_name(kind));
    return st;
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

static loco_status check_rows(const int *rows, int B, int Bt, const char *what, int layer, loco_err *err) {
    for (int b = 0; b < B; b++)
        if (rows[b] < 0 || rows[b] >= Bt) {
            if (layer >= 0)
                return loco_err_set(err, LOCO_EINVAL, "denoise: %s[%d][%d] = %d is outside the %d text rows", what,
                                    layer, b, rows[b], Bt);
            return loco_err_set(err, LOCO_EINVAL, "denoise: %s[%d] = %d is outside the %d text rows", what, b, rows[b],
                                Bt);
        }
    return LOCO_OK;
}

static loco_status validate(const loco_pipeline *p, const loco_denoise_params *d, int cfg, loco_err *err) {
    const int B = d->n_samples;
    if (B < 1 || B > DENOISE_MAX_SAMPLES)
        return loco_err_set(err, LOCO_EINVAL, "denoise: %d samples (1..%d)", B, DENOISE_MAX_SAMPLES);
    if (!d->text || d->text->ndim != 3)
        return loco_err_set(err, LOCO_EINVAL, "denoise: the text batch [rows, tokens, dim] is required");
    const int Bt = (int)d->text->shape[0];
    if (!d->cond_row) return loco_err_set(err, LOCO_EINVAL, "denoise: cond_row is required");
    if (cfg && !d->uncond_row) return loco_err_set(err, LOCO_EINVAL, "denoise: guidance needs uncond_row");
    loco_status st;
    if ((st = check_rows(d->cond_row, B, Bt, "cond_row", -1, err))) return st;
    if (cfg && (st = check_rows(d->uncond_row, B, Bt, "uncond_row", -1, err))) return st;
    const int nc = loco_unet_n_cross(p->unet);
    for (int i = 0; d->cond_kv_row && i < nc; i++)
        if (d->cond_kv_row[i] && (st = check_rows(d->cond_kv_row[i], B, Bt, "cond_kv_row", i, err))) return st;
    if (p->family == LOCO_FAMILY_SDXL && (!d->pooled || d->pooled->ndim != 2 || d->pooled->shape[0] != Bt))
        return loco_err_set(err, LOCO_EINVAL, "denoise: SD-XL needs pooled text embeds [%d, P]", Bt);
    if (d->text_kv && d->text_kv->batch != Bt)
        return loco_err_set(err, LOCO_EINVAL, "denoise: text K/V has %d rows, the text batch %d", d->text_kv->batch, Bt);
    /* kv_hooks act in the projection, which precomputed K/V skip: they would be lost silently */
    if (d->text_kv && d->kv_hooks && d->kv_hooks->after)
        return loco_err_set(err, LOCO_EINVAL,
                            "denoise: kv_hooks act while projecting the text K/V; pass text_kv or kv_hooks, not both");
    if (!d->group_seed) return loco_err_set(err, LOCO_EINVAL, "denoise: group_seed is required");
    if (d->n_groups < 0 || (d->n_groups > 0 && !d->group_size))
        return loco_err_set(err, LOCO_EINVAL, "denoise: n_groups needs group_size");
    if (d->n_groups > 0) {
        long sum = 0;
        for (int g = 0; g < d->n_groups; g++) {
            if (d->group_size[g] < 1)
                return loco_err_set(err, LOCO_EINVAL, "denoise: group %d has %d samples", g, d->group_size[g]);
            sum += d->group_size[g];
        }
        if (sum != B)
            return loco_err_set(err, LOCO_EINVAL, "denoise: the groups hold %ld samples, not %d", sum, B);
    }
    if (d->steps < 1 || d->steps > DENOISE_MAX_STEPS)
        return loco_err_set(err, LOCO_EINVAL, "denoise: steps must be between 1 and %d, got %d", DENOISE_MAX_STEPS,
                            d->steps);
    if (!isfinite(d->guidance_scale) || d->guidance_scale < 0 || d->guidance_scale > 100)
        return loco_err_set(err, LOCO_EINVAL, "denoise: guidance_scale must be in [0, 100], got %g",
                            (double)d->guidance_scale);
    const int m = loco_pipeline_size_multiple(p);
    if (d->width < m || d->height < m || d->width > DENOISE_MAX_SIDE || d->height > DENOISE_MAX_SIDE ||
        d->width % m || d->height % m)
        return loco_err_set(err, LOCO_EINVAL, "width and height must be multiples of %d between %d and %d, got %dx%d",
                            m, m, DENOISE_MAX_SIDE, d->width, d->height);
    if (d->has_scheduler && (unsigned)d->scheduler >= LOCO_SCHED_KIND_COUNT)
        return loco_err_set(err, LOCO_EINVAL, "denoise: unknown scheduler");
    return LOCO_OK;
}

static loco_status oom(loco_err *err) { return loco_err_set(err, LOCO_ENOMEM, "denoise: out of memory"); }

/* Groups, schedulers, generators and the initial latents (one torch.randn per group). */
static loco_status init_noise(loco_pipeline *p, const loco_denoise_params *d, const int64_t *lshape, dn_state *s,
                              loco_generate_result *out, loco_err *err) {
    const int B = d->n_samples;
    s->n_groups = d->n_groups > 0 ? d->n_groups : 1;
    s->gsize = malloc((size_t)s->n_groups * sizeof *s->gsize);
    s->sched = calloc((size_t)s->n_groups, sizeof *s->sched);
    s->rng = malloc((size_t)s->n_groups * sizeof *s->rng);
    if (!s->gsize || !s->sched || !s->rng) return oom(err);
    const int64_t per = lshape[1] * lshape[2] * lshape[3];
    float *host = malloc((size_t)(B * per) * sizeof *host);
    if (!host) return oom(err);
    out->initial_latents = host;
    loco_status st;
    for (int g = 0, first = 0; g < s->n_groups; g++) {
        s->gsize[g] = d->n_groups > 0 ? d->group_size[g] : B;
        if ((st = make_scheduler(p, d, &s->sched[g], err))) return st;
        loco_torch_rng_seed(&s->rng[g], d->group_seed[d->n_groups > 0 ? g : 0]);
        float *dst = host + (size_t)first * per;
        if (d->latents)
            memcpy(dst, d->latents + (size_t)first * per, (size_t)(s->gsize[g] * per) * sizeof *dst);
        else
            loco_torch_randn_f32(&s->rng[g], dst, (size_t)(s->gsize[g] * per));
        first += s->gsize[g];
    }
    /* init_noise_sigma is applied in fp32, as torch multiplies the tensor by a Python float */
    const float sigma0 = loco_scheduler_init_noise_sigma(s->sched[0]);
    if (sigma0 != 1.0f)
        for (int64_t i = 0; i < B * per; i++) host[i] *= sigma0;
    if ((st = loco_tensor_alloc_act(p->be, 4, lshape, &s->latents, err))) return st;
    return loco_tensor_upload(&s->latents, host, LOCO_F32, err);
}

/* Row tables of the UNet batch: text_index [rows] and, when asked, per cross layer K/V rows. */
static loco_status init_rows(loco_pipeline *p, const loco_denoise_params *d, int cfg, dn_state *s, loco_err *err) {
    const int B = d->n_samples, rows = cfg ? 2 * B : B, cond0 = cfg ? B : 0;
    s->text_index = malloc((size_t)rows * sizeof *s->text_index);
    if (!s->text_index) return oom(err);
    for (int b = 0; b < B; b++) {
        if (cfg) s->text_index[b] = d->uncond_row[b];
        s->text_index[cond0 + b] = d->cond_row[b];
    }
    if (!d->cond_kv_row) return LOCO_OK;
    s->n_cross = loco_unet_n_cross(p->unet);
    s->kv_rows = calloc((size_t)(s->n_cross ? s->n_cross : 1), sizeof *s->kv_rows);
    if (!s->kv_rows) return oom(err);
    for (int i = 0; i < s->n_cross; i++) {
        if (!d->cond_kv_row[i]) continue; /* NULL: text_index */
        if (!(s->kv_rows[i] = malloc((size_t)rows * sizeof **s->kv_rows))) return oom(err);
        memcpy(s->kv_rows[i], s->text_index, (size_t)rows * sizeof **s->kv_rows);
        memcpy(s->kv_rows[i] + cond0, d->cond_kv_row[i], (size_t)B * sizeof **s->kv_rows);
    }
    return LOCO_OK;
}

/* SD-XL: pooled embeds gathered per UNet row and add_time_ids = (h, w, 0, 0, h, w) per row. */
static loco_status init_sdxl(loco_pipeline *p, const loco_denoise_params *d, int rows, dn_state *s,
                             loco_unet_inputs *in, loco_err *err) {
    loco_status st;
    const int64_t pshape[2] = {rows, d->pooled->shape[1]};
    if ((st = loco_tensor_alloc_act(p->be, 2, pshape, &s->pooled_rows, err)) ||
        (st = loco_embedding(p->be, &s->pooled_rows, d->pooled, (const int32_t *)s->text_index, rows, err)))
        return st;
    if (!(s->time_ids = malloc((size_t)rows * 6 * sizeof *s->time_ids))) return oom(err);
    for (int r = 0; r < rows; r++) {
        float *t = s->time_ids + 6 * r;
        t[0] = (float)d->height, t[1] = (float)d->width, t[2] = 0, t[3] = 0, t[4] = (float)d->height,
        t[5] = (float)d->width;
    }
    in->text_embeds = &s->pooled_rows;
    in->time_ids = s->time_ids;
    return LOCO_OK;
}

static loco_status download_new(const loco_tensor *t, float **out, loco_err *err) {
    *out = malloc((size_t)loco_tensor_numel(t) * sizeof **out);
    if (!*out) return oom(err);
    return loco_tensor_download_f32(t, *out, err);
}

static loco_status decode(loco_pipeline *p, const loco_denoise_params *d, const loco_tensor *latents,
                          loco_generate_result *out, loco_err *err) {
    const int B = d->n_samples, chunk = d->decode_batch > 0 ? d->decode_batch : B;
    out->images = calloc((size_t)B, sizeof *out->images);
    if (!out->images) return oom(err);
    loco_status st = LOCO_OK;
    for (int b0 = 0; b0 < B && !st; b0 += chunk) {
        const int n = B - b0 < chunk ? B - b0 : chunk;
        loco_tensor part, image = {0};
        if ((st = loco_tensor_slice0(latents, b0, n, &part, err))) break;
        if ((st = loco_vae_decode(p->vae, &part, NULL, NULL, &image, err))) {
            loco_err_prefix(err, "decoding the latents");
            break;
        }
        for (int k = 0; k < n && !st; k++)
            if (!(st = loco_image_from_tensor(&image, k, &out->images[b0 + k], err))) out->n_images = b0 + k + 1;
        loco_tensor_free(&image);
        if (!st && d->decode_progress && d->decode_progress(d->progress_ctx, b0 + n, B))
            st = loco_err_set(err, LOCO_ECANCELLED, "cancelled after decoding %d of %d images", b0 + n, B);
    }
    return st;
}

loco_status loco_denoise(loco_pipeline *p, const loco_denoise_params *d, loco_generate_result *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    const int cfg = d->guidance_scale > 1.0f;
    loco_status st = validate(p, d, cfg, err);
    if (st) return st;
    loco_backend *be = p->be;
    const loco_unet_config *uc = loco_unet_get_config(p->unet);
    const int B = d->n_samples, rows = cfg ? 2 * B : B;
    const int64_t lshape[4] = {B, uc->in_channels, d->height / p->vae_scale, d->width / p->vae_scale};
    const int64_t ishape[4] = {rows, lshape[1], lshape[2], lshape[3]};
    dn_state s;
    memset(&s, 0, sizeof s);
    loco_unet_inputs in;
    loco_unet_inputs_init(&in);

    if ((st = init_noise(p, d, lshape, &s, out, err)) || (st = init_rows(p, d, cfg, &s, err))) goto done;
    if ((st = loco_tensor_alloc_act(be, 4, ishape, &s.model_in, err))) goto done;
    const loco_unet_text_kv *kv = d->text_kv;
    if (!kv) {
        /* text K/V once per run: they do not depend on the timestep */
        if ((st = loco_unet_compute_text_kv(p->unet, d->text, d->kv_hooks, &s.kv, err))) goto done;
        s.have_kv = 1;
        kv = &s.kv;
    }
    if (!(s.timesteps = malloc((size_t)rows * sizeof *s.timesteps))) {
        st = oom(err);
        goto done;
    }
    in.sample = &s.model_in;
    in.timesteps = s.timesteps;
    in.encoder_hidden_states = d->text;
    in.text_index = s.text_index;
    in.text_kv = kv;
    in.kv_index_per_layer = (const int *const *)s.kv_rows;
    in.hooks = d->hooks;
    if (p->family == LOCO_FAMILY_SDXL && (st = init_sdxl(p, d, rows, &s, &in, err))) goto done;

    const int calls = loco_scheduler_num_calls(s.sched[0]);
    for (int i = 0; i < calls; i++) {
        const float t = loco_scheduler_timestep(s.sched[0], i);
        for (int r = 0; r < rows; r++) s.timesteps[r] = t;
        for (int half = 0; half < rows; half += B) {
            loco_tensor dst;
            if ((st = loco_tensor_slice0(&s.model_in, half, B, &dst, err)) ||
                (st = loco_copy(be, &dst, &s.latents, err)))
                goto done;
        }
        /* the input scaling depends only on the call index: every group's scheduler agrees */
        if ((st = loco_scheduler_scale_model_input(s.sched[0], i, &s.model_in, &s.model_in, err))) goto done;
        if (d->before_call && (st = d->before_call(d->call_ctx, i, calls, err))) goto done;
        if ((st = loco_unet_forward(p->unet, &in, &s.eps, err))) {
            loco_err_prefix(err, "step %d/%d", i + 1, calls);
            goto done;
        }
        loco_tensor guided = s.eps;
        if (cfg && (st = apply_guidance(be, &s.eps, B, d->guidance_scale, &guided, err))) goto done;
        for (int g = 0, first = 0; g < s.n_groups; first += s.gsize[g], g++) {
            loco_tensor ge = guided, gl = s.latents;
            if (s.n_groups > 1 && ((st = loco_tensor_slice0(&guided, first, s.gsize[g], &ge, err)) ||
                                   (st = loco_tensor_slice0(&s.latents, first, s.gsize[g], &gl, err))))
                goto done;
            if ((st = loco_scheduler_step(s.sched[g], i, &ge, &gl, &s.rng[g], err))) {
                loco_err_prefix(err, "scheduler step %d/%d", i + 1, calls);
                goto done;
            }
        }
        loco_tensor_free(&s.eps);
        if (d->progress && d->progress(d->progress_ctx, i + 1, calls)) {
            st = loco_err_set(err, LOCO_ECANCELLED, "cancelled after step %d of %d", i + 1, calls);
            goto done;
        }
    }
    memcpy(out->latent_shape, lshape, sizeof lshape);
    if ((st = download_new(&s.latents, &out->latents, err))) goto done;
    out->width = d->width;
    out->height = d->height;
    if (!d->skip_decode) st = decode(p, d, &s.latents, out, err);
done:
    dn_free(&s);
    if (st) loco_generate_result_free(out);
    return st;
}
