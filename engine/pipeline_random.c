/* pipeline_random.c: a full-size pipeline of a family's real architecture with random weights
 * (pipeline.h, loco_pipeline_load_random), for benchmarks (bench/gpu/pipeline_bench.c times it
 * against diffusers building the same configs) and memory checks.
 *
 * Everything comes from what loco carries itself: the embedded diffusers configs
 * (engine/builtin_configs.h, the same text as config/model-defaults/<family>/), the bundled CLIP
 * vocabularies (config/tokenizers/, found as engine/data_dir.h says) and loco_weights_new_random.
 * Each component gets its own seed derived from `seed`, so components never share values. */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builtin_configs.h"
#include "data_dir.h"
#include "pipeline_impl.h"

/* Parsed embedded JSON of "<family>/<rel>"; caller json_decref's it. */
static loco_status builtin_json(const char *fam, const char *rel, json_t **out, loco_err *err) {
    *out = NULL;
    const char *text = loco_builtin_config(fam, rel);
    if (!text) return loco_err_set(err, LOCO_ENOTFOUND, "no embedded %s config for family %s", rel, fam);
    json_error_t je;
    *out = json_loads(text, 0, &je);
    if (!*out) return loco_err_set(err, LOCO_EFORMAT, "embedded %s/%s: %s (line %d)", fam, rel, je.text, je.line);
    return LOCO_OK;
}

static uint64_t component_seed(uint64_t seed, const char *component) {
    uint64_t h = seed ^ 0xcbf29ce484222325ull;
    for (const char *c = component; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
    return h;
}

static loco_status random_weights(const char *fam, const char *component, uint64_t seed, loco_weights **w,
                                  loco_err *err) {
    char src[96];
    snprintf(src, sizeof src, "random:%s/%s", fam, component);
    return loco_weights_new_random(src, component_seed(seed, component), w, err);
}

static loco_status load_tokenizer(loco_pipeline *p, int which, loco_clip_tokenizer **out, loco_err *err) {
    /* as model_files.c does for single files: OpenCLIP's tokenizers (SD 2.x, SD-XL's second)
     * pad with "!", OpenAI CLIP-L's with <|endoftext|> */
    int bang = (p->family == LOCO_FAMILY_SD2 && which == 1) || (p->family == LOCO_FAMILY_SDXL && which == 2);
    char rel[64], path[PATH_MAX];
    snprintf(rel, sizeof rel, "tokenizers/%s", bang ? "clip-pad-bang" : "clip");
    loco_status st = loco_data_path(rel, path, sizeof path, err);
    if (!st) st = loco_clip_tokenizer_load(path, out, err);
    if (st) loco_err_prefix(err, "loading the bundled tokenizer %s", rel);
    return st;
}

static loco_status load_text_encoder(loco_pipeline *p, const char *fam, const char *component, uint64_t seed,
                                     loco_clip_text **out, loco_err *err) {
    char rel[64];
    snprintf(rel, sizeof rel, "%s/config.json", component);
    const char *text = loco_builtin_config(fam, rel);
    if (!text) return loco_err_set(err, LOCO_ENOTFOUND, "no embedded %s config for family %s", rel, fam);
    loco_clip_text_config cfg;
    loco_status st = loco_clip_text_config_parse(text, strlen(text), rel, &cfg, err);
    if (st) return st;
    loco_weights *w = NULL;
    if ((st = random_weights(fam, component, seed, &w, err))) return st;
    /* the builder only looks text_projection up (it is optional for some configs); a random
     * set makes tensors when they are required, so require it here for WithProjection */
    if (cfg.with_projection == 1 && cfg.projection_dim > 0)
        st = loco_weights_require(w, "text_projection.weight", 2,
                                  (const int64_t[]){cfg.projection_dim, cfg.hidden_size}, NULL, err);
    if (!st) st = loco_clip_text_create(p->be, &cfg, w, out, err);
    loco_weights_free(w);
    if (st) loco_err_prefix(err, "building %s", component);
    return st;
}

static loco_status load_unet(loco_pipeline *p, const char *fam, uint64_t seed, loco_err *err) {
    const char *text = loco_builtin_config(fam, "unet/config.json");
    if (!text) return loco_err_set(err, LOCO_ENOTFOUND, "no embedded unet config for family %s", fam);
    loco_unet_config cfg;
    loco_status st = loco_unet_config_parse(text, "unet/config.json", &cfg, err);
    if (st) return st;
    loco_weights *w = NULL;
    if ((st = random_weights(fam, "unet", seed, &w, err))) return st;
    st = loco_unet_create(p->be, &cfg, w, &p->unet, err);
    loco_weights_free(w);
    if (st) loco_err_prefix(err, "building unet");
    return st;
}

static loco_status load_vae(loco_pipeline *p, const char *fam, uint64_t seed, loco_dtype upcast, loco_err *err) {
    json_t *j = NULL;
    loco_status st = builtin_json(fam, "vae/config.json", &j, err);
    if (st) return st;
    loco_vae_config cfg;
    st = loco_vae_config_from_json(j, "vae/config.json", &cfg, err);
    json_decref(j);
    if (st) return st;
    loco_weights *w = NULL;
    if ((st = random_weights(fam, "vae", seed, &w, err))) return st;
    st = loco_vae_create_dtype(p->be, &cfg, w, loco_vae_compute_dtype(p->be, &cfg, loco_pipeline_vae_upcast(p, upcast)),
                               &p->vae, err);
    loco_weights_free(w);
    if (st) loco_err_prefix(err, "building vae");
    return st;
}

/* The scheduler config and its class, as pipeline_load.c takes them from a folder. */
static loco_status load_scheduler(loco_pipeline *p, const char *fam, const json_t *index, loco_err *err) {
    loco_scheduler_config_init(&p->sched_cfg);
    json_t *j = NULL;
    loco_status st = builtin_json(fam, "scheduler/scheduler_config.json", &j, err);
    if (st) return st;
    st = loco_scheduler_config_from_json(j, &p->sched_cfg, err);
    json_decref(j);
    if (st) return loco_err_prefix(err, "embedded %s/scheduler/scheduler_config.json", fam);
    const json_t *entry = json_object_get(index, "scheduler");
    const char *cls = json_is_array(entry) ? json_string_value(json_array_get(entry, 1)) : NULL;
    loco_pipeline_set_default_scheduler(p, cls);
    loco_pipeline_sd_scheduler_rewrites(p);
    if (!p->has_default_scheduler) /* the embedded configs are ours: a class loco lacks is a build error */
        return loco_err_set(err, LOCO_EUNSUPPORTED, "embedded %s model_index.json: scheduler class '%s' is unknown",
                            fam, p->scheduler_class);
    return LOCO_OK;
}

loco_status loco_pipeline_load_random(loco_backend *be, loco_model_family family, uint64_t seed,
                                      const loco_pipeline_opts *opts, loco_pipeline **out, loco_err *err) {
    if (out) *out = NULL;
    if (!be || !out) return loco_err_set(err, LOCO_EINVAL, "load_random: a backend and out are required");
    if (family != LOCO_FAMILY_SD1 && family != LOCO_FAMILY_SD2 && family != LOCO_FAMILY_SDXL)
        return loco_err_set(err, LOCO_EINVAL, "load_random: family must be sd1, sd2 or sdxl");
    const char *fam = loco_model_family_name(family);
    loco_pipeline *p = calloc(1, sizeof *p);
    if (!p) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    p->be = be;
    p->family = family;
    json_t *index = NULL;
    char path[64];
    snprintf(path, sizeof path, "random:%s", fam);
    loco_status st = (p->path = strdup(path)) ? LOCO_OK : loco_err_set(err, LOCO_ENOMEM, "out of memory");
    if (!st) st = builtin_json(fam, "model_index.json", &index, err);
    if (!st) st = load_scheduler(p, fam, index, err);
    if (!st && family == LOCO_FAMILY_SDXL) {
        if (!(st = load_tokenizer(p, 1, &p->tokenizer, err)))
            st = load_text_encoder(p, fam, "text_encoder", seed, &p->text_encoder, err);
        if (!st && !(st = load_tokenizer(p, 2, &p->tokenizer_2, err)))
            st = load_text_encoder(p, fam, "text_encoder_2", seed, &p->text_encoder_2, err);
    } else if (!st) {
        if (!(st = load_tokenizer(p, 1, &p->tokenizer, err)))
            st = load_text_encoder(p, fam, "text_encoder", seed, &p->text_encoder, err);
    }
    if (!st) st = load_unet(p, fam, seed, err);
    if (!st) st = load_vae(p, fam, seed, opts ? opts->vae_upcast_dtype : LOCO_F32, err);
    if (!st) {
        const json_t *fz = json_object_get(index, "force_zeros_for_empty_prompt");
        p->force_zeros_for_empty_prompt = json_is_boolean(fz) ? json_is_true(fz) : 1;
        const loco_vae_config *vc = loco_vae_get_config(p->vae);
        p->vae_scale = 1 << (vc->n_blocks - 1);
        if (loco_unet_get_config(p->unet)->in_channels != vc->latent_channels)
            st = loco_err_set(err, LOCO_EFORMAT, "embedded %s configs: unet in_channels != vae latent_channels", fam);
    }
    json_decref(index);
    if (st) {
        loco_pipeline_free(p);
        return loco_err_prefix(err, "random-weight %s pipeline", fam);
    }
    *out = p;
    return LOCO_OK;
}
