/* pipeline_load.c: loading a text-to-image pipeline's components onto a backend. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_impl.h"

void loco_pipeline_opts_init(loco_pipeline_opts *o) {
    memset(o, 0, sizeof *o);
    o->family = LOCO_FAMILY_UNKNOWN;
}

/* model_files hands out parsed JSON; the text encoder parses text, so round-trip it. */
static loco_status load_text_encoder(loco_pipeline *p, const char *component, loco_clip_text **out, loco_err *err) {
    const json_t *cfg_json = loco_model_files_config(p->files, component);
    if (!cfg_json) return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no %s", p->path, component);
    char *text = json_dumps(cfg_json, JSON_COMPACT);
    if (!text) return loco_err_set(err, LOCO_ENOMEM, "%s: cannot serialise the %s config", p->path, component);
    loco_clip_text_config cfg;
    char source[64];
    snprintf(source, sizeof source, "%s/config.json", component);
    loco_status st = loco_clip_text_config_parse(text, strlen(text), source, &cfg, err);
    free(text);
    if (st) return st;
    loco_weights *w = NULL;
    st = loco_model_files_weights(p->files, component, &w, err);
    if (st) return st;
    st = loco_clip_text_create(p->be, &cfg, w, out, err);
    loco_weights_free(w);
    if (st) loco_err_prefix(err, "loading %s", component);
    return st;
}

static loco_status load_tokenizer(loco_pipeline *p, const char *component, loco_clip_tokenizer **out,
                                  loco_err *err) {
    const char *dir = loco_model_files_tokenizer_dir(p->files, component);
    if (!dir) return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no %s", p->path, component);
    loco_status st = loco_clip_tokenizer_load(dir, out, err);
    if (st) loco_err_prefix(err, "loading %s", component);
    return st;
}

static loco_status load_unet(loco_pipeline *p, loco_err *err) {
    const json_t *cfg_json = loco_model_files_config(p->files, "unet");
    if (!cfg_json) return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no unet", p->path);
    loco_unet_config cfg;
    loco_status st = loco_unet_config_from_json(cfg_json, "unet/config.json", &cfg, err);
    if (st) return st;
    loco_weights *w = NULL;
    if ((st = loco_model_files_weights(p->files, "unet", &w, err))) return st;
    st = loco_unet_create(p->be, &cfg, w, &p->unet, err);
    loco_weights_free(w);
    if (st) loco_err_prefix(err, "loading unet");
    return st;
}

loco_dtype loco_pipeline_vae_upcast(const loco_pipeline *p, loco_dtype requested) {
    return p->family == LOCO_FAMILY_SDXL ? requested : loco_backend_act_dtype(p->be);
}

static loco_status load_vae(loco_pipeline *p, loco_dtype upcast, loco_err *err) {
    const json_t *cfg_json = loco_model_files_config(p->files, "vae");
    if (!cfg_json) return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no vae", p->path);
    loco_vae_config cfg;
    loco_status st = loco_vae_config_from_json(cfg_json, "vae/config.json", &cfg, err);
    if (st) return st;
    loco_weights *w = NULL;
    if ((st = loco_model_files_weights(p->files, "vae", &w, err))) return st;
    st = loco_vae_create_dtype(p->be, &cfg, w, loco_vae_compute_dtype(p->be, &cfg, loco_pipeline_vae_upcast(p, upcast)),
                               &p->vae, err);
    loco_weights_free(w);
    if (st) loco_err_prefix(err, "loading vae");
    return st;
}

/* diffusers' DiffusionPipeline.from_pretrained instantiates the class model_index.json names for
 * "scheduler" and hands it scheduler_config.json (it only logs that the config's own _class_name
 * differs); from_config then drops the keys that class does not take, as loco_scheduler_create
 * does. So model_index's class comes first and the config's _class_name counts only when
 * model_index names none. A class loco does not implement is kept by name rather than failing
 * the load: a run may name its own scheduler, and one that relies on the default fails naming
 * the class (loco_pipeline_scheduler_kind). */
void loco_pipeline_set_default_scheduler(loco_pipeline *p, const char *index_class) {
    const char *cls = index_class && *index_class ? index_class : p->sched_cfg.class_name;
    snprintf(p->scheduler_class, sizeof p->scheduler_class, "%s", cls);
    loco_scheduler_kind k = LOCO_SCHED_PNDM;
    p->has_default_scheduler = p->scheduler_class[0] && loco_scheduler_kind_from_name(p->scheduler_class, &k) == 0;
    p->default_scheduler = k;
}

/* diffusers' StableDiffusionPipeline.__init__ (SD 1.x and 2.x; the SD-XL pipeline has no such
 * code) rewrites two settings of older hub configs before anything runs, with only a deprecation
 * warning: a steps_offset other than 1 becomes 1 (every scheduler class loco runs has the key,
 * with default 0), and a clip_sample that is true, in the file or by the default of the model's
 * own DDIM/DDPM class, becomes false. Other schedulers are made from that rewritten config
 * (from_config), so the rewrite holds for every scheduler a run names. Needs the family and the
 * default scheduler set. */
void loco_pipeline_sd_scheduler_rewrites(loco_pipeline *p) {
    if (p->family == LOCO_FAMILY_SDXL) return;
    loco_scheduler_config *c = &p->sched_cfg;
    c->steps_offset = 1;
    const int class_clips = p->has_default_scheduler &&
                            (p->default_scheduler == LOCO_SCHED_DDIM || p->default_scheduler == LOCO_SCHED_DDPM);
    if (c->clip_sample == 1 || (c->clip_sample < 0 && class_clips)) c->clip_sample = 0;
}

static loco_status load_scheduler_config(loco_pipeline *p, loco_err *err) {
    loco_scheduler_config_init(&p->sched_cfg);
    const json_t *cfg_json = loco_model_files_config(p->files, "scheduler");
    if (!cfg_json) return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no scheduler config", p->path);
    loco_status st = loco_scheduler_config_from_json(cfg_json, &p->sched_cfg, err);
    if (st) return loco_err_prefix(err, "scheduler/scheduler_config.json");
    loco_pipeline_set_default_scheduler(p, loco_model_files_class(p->files, "scheduler"));
    loco_pipeline_sd_scheduler_rewrites(p);
    return LOCO_OK;
}

loco_status loco_pipeline_load(loco_backend *be, const loco_pipeline_opts *opts, loco_pipeline **out,
                               loco_err *err) {
    *out = NULL;
    if (!be || !opts || !opts->model_path || !*opts->model_path)
        return loco_err_set(err, LOCO_EINVAL, "loading a pipeline needs a backend and a model path");
    loco_pipeline *p = calloc(1, sizeof *p);
    if (!p) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    p->be = be;
    p->path = strdup(opts->model_path);
    loco_model_files_opts mo;
    loco_model_files_opts_init(&mo);
    mo.variant = opts->variant;
    mo.config_dir = opts->config_dir;
    mo.family = opts->family;
    loco_status st = p->path ? loco_model_files_open(opts->model_path, &mo, &p->files, err)
                             : loco_err_set(err, LOCO_ENOMEM, "out of memory");
    if (st) goto fail;
    p->family = loco_model_files_family(p->files);
    if (p->family == LOCO_FAMILY_UNKNOWN) {
        const char *why = loco_model_files_unknown_reason(p->files);
        st = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: not a Stable Diffusion 1.x, 2.x or SD-XL text-to-image model: %s",
                          opts->model_path, why ? why : "its model_index.json does not describe one");
        goto fail;
    }
    if ((st = load_scheduler_config(p, err))) goto fail;
    if (p->family == LOCO_FAMILY_SDXL) {
        if (loco_model_files_has(p->files, "text_encoder")) {
            if ((st = load_tokenizer(p, "tokenizer", &p->tokenizer, err))) goto fail;
            if ((st = load_text_encoder(p, "text_encoder", &p->text_encoder, err))) goto fail;
        }
        if ((st = load_tokenizer(p, "tokenizer_2", &p->tokenizer_2, err))) goto fail;
        if ((st = load_text_encoder(p, "text_encoder_2", &p->text_encoder_2, err))) goto fail;
    } else {
        if ((st = load_tokenizer(p, "tokenizer", &p->tokenizer, err))) goto fail;
        if ((st = load_text_encoder(p, "text_encoder", &p->text_encoder, err))) goto fail;
    }
    if ((st = load_unet(p, err))) goto fail;
    if ((st = load_vae(p, opts->vae_upcast_dtype, err))) goto fail;
    p->force_zeros_for_empty_prompt = loco_model_files_flag(p->files, "force_zeros_for_empty_prompt", 1);
    const loco_vae_config *vc = loco_vae_get_config(p->vae);
    p->vae_scale = 1 << (vc->n_blocks - 1);
    const loco_unet_config *uc = loco_unet_get_config(p->unet);
    if (uc->in_channels != vc->latent_channels) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: unet in_channels %d != vae latent_channels %d", opts->model_path,
                          uc->in_channels, vc->latent_channels);
        goto fail;
    }
    if (p->family == LOCO_FAMILY_SDXL) {
        /* The UNet reads (P - pooled) / addition_time_embed_dim time ids per sample and the SD-XL
         * pipeline passes exactly 6 (original size, crop, target size): refuse other layouts (the
         * refiner's 5 ids with an aesthetic score is not supported) instead of reading past them. */
        int pooled = loco_clip_text_get_config(p->text_encoder_2)->projection_dim;
        int want = pooled + 6 * uc->addition_time_embed_dim;
        if (uc->addition_embed_type != LOCO_UNET_ADD_TEXT_TIME || uc->projection_class_embeddings_input_dim != want) {
            st = loco_err_set(err, LOCO_EUNSUPPORTED,
                              "%s: unet/config.json: an SD-XL UNet needs addition_embed_type \"text_time\" and "
                              "projection_class_embeddings_input_dim = text_encoder_2 projection_dim (%d) + 6 x "
                              "addition_time_embed_dim (%d) = %d, got %d",
                              opts->model_path, pooled, uc->addition_time_embed_dim, want,
                              uc->projection_class_embeddings_input_dim);
            goto fail;
        }
    }
    *out = p;
    return LOCO_OK;
fail:
    /* a single file is read with its family's standard configs unless told otherwise: a shape
     * that does not fit them most likely means a non-standard architecture */
    if (err && st == LOCO_EFORMAT && !opts->config_dir && p->files && loco_model_files_is_single_file(p->files) &&
        strstr(err->msg, "was expected")) {
        const size_t n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n,
                 " (a single-file checkpoint is read with its family's standard configs; for another architecture "
                 "give its diffusers configs with --config-dir, or config_dir in locod's config)");
    }
    loco_pipeline_free(p);
    return st;
}

void loco_pipeline_free(loco_pipeline *p) {
    if (!p) return;
    loco_clip_tokenizer_free(p->tokenizer);
    loco_clip_tokenizer_free(p->tokenizer_2);
    loco_clip_text_free(p->text_encoder);
    loco_clip_text_free(p->text_encoder_2);
    loco_unet_free(p->unet);
    loco_vae_free(p->vae);
    loco_scheduler_config_release(&p->sched_cfg);
    loco_model_files_close(p->files);
    free(p->path);
    free(p);
}

loco_model_family loco_pipeline_family(const loco_pipeline *p) { return p->family; }
loco_backend *loco_pipeline_backend(const loco_pipeline *p) { return p->be; }
const loco_model_files *loco_pipeline_files(const loco_pipeline *p) { return p->files; }
loco_unet *loco_pipeline_unet(const loco_pipeline *p) { return p->unet; }
loco_vae *loco_pipeline_vae(const loco_pipeline *p) { return p->vae; }
const loco_clip_text *loco_pipeline_text_encoder(const loco_pipeline *p, int which) {
    return which == 2 ? p->text_encoder_2 : p->text_encoder;
}
const loco_clip_tokenizer *loco_pipeline_tokenizer(const loco_pipeline *p, int which) {
    return which == 2 ? p->tokenizer_2 : p->tokenizer;
}
const loco_scheduler_config *loco_pipeline_scheduler_config(const loco_pipeline *p) { return &p->sched_cfg; }
loco_scheduler_kind loco_pipeline_default_scheduler(const loco_pipeline *p) { return p->default_scheduler; }
const char *loco_pipeline_scheduler_class(const loco_pipeline *p) { return p->scheduler_class; }
int loco_pipeline_has_default_scheduler(const loco_pipeline *p) { return p->has_default_scheduler; }

void loco_pipeline_run_scheduler_config(int has_scheduler, loco_scheduler_kind kind, int use_karras_sigmas,
                                        loco_scheduler_config *cfg) {
    if (use_karras_sigmas >= 0) cfg->use_karras_sigmas = use_karras_sigmas;
    /* A run that names dpmpp_2m means DPM++ 2M (what the fixtures and other tools call it), not
     * the SDE or third-order form a model's own DPMSolver config may hold; that form is still
     * what runs when no scheduler is named. */
    if (has_scheduler && kind == LOCO_SCHED_DPMPP_2M) {
        cfg->algorithm_type = LOCO_DPM_DPMSOLVER_PP;
        cfg->solver_order = 2;
    }
}

loco_status loco_pipeline_scheduler_kind(const loco_pipeline *p, int has_scheduler, loco_scheduler_kind requested,
                                         int use_karras_sigmas, loco_scheduler_kind *out, loco_err *err) {
    if (has_scheduler) {
        if ((unsigned)requested >= LOCO_SCHED_KIND_COUNT) return loco_err_set(err, LOCO_EINVAL, "unknown scheduler");
        *out = requested;
    } else if (p->has_default_scheduler) {
        *out = p->default_scheduler;
    } else {
        char classes[256] = "";
        for (int k = 0; k < LOCO_SCHED_KIND_COUNT; k++)
            snprintf(classes + strlen(classes), sizeof classes - strlen(classes), "%s%s", k ? ", " : "",
                     loco_scheduler_kind_class_name((loco_scheduler_kind)k));
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "%s: the model's scheduler class '%s' (model_index.json) is not one loco implements (%s); "
                            "pick one with --scheduler pndm|ddim|euler|euler_a|dpmpp_2m|ddpm",
                            p->path ? p->path : "model", p->scheduler_class[0] ? p->scheduler_class : "(none)", classes);
    }
    if (use_karras_sigmas > 0 && !loco_scheduler_kind_takes_karras(*out))
        return loco_err_set(err, LOCO_EINVAL,
                            "Karras sigmas (--karras) apply to euler and dpmpp_2m, not to %s (%s has no "
                            "use_karras_sigmas)",
                            loco_scheduler_kind_name(*out), loco_scheduler_kind_class_name(*out));
    return LOCO_OK;
}
int loco_pipeline_vae_scale(const loco_pipeline *p) { return p->vae_scale; }
int loco_pipeline_default_size(const loco_pipeline *p) {
    int s = loco_unet_get_config(p->unet)->sample_size;
    return (s > 0 ? s : 64) * p->vae_scale;
}
