/* model_files.c: open a diffusers folder or a single-file checkpoint and serve its configs,
 * weights (under diffusers names) and tokenizer folders. See model_files.h. */
#include "model_files.h"
#include "json_util.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "builtin_configs.h"
#include "data_dir.h"
#include "ldm_mapping.h"

struct loco_model_files {
    char *path;
    int single;
    loco_model_family family;
    char *cfg_root; /* folder holding model_index/configs/tokenizers; NULL: embedded defaults */
    char *variant;
    json_t *index;
    json_t *configs;        /* component -> parsed config */
    char *tok[2];           /* tokenizer, tokenizer_2 folders */
    loco_safetensors *file; /* single files: the checkpoint (detection, checkpoint_tensor) */
    char why_unknown[384];  /* folders of family UNKNOWN: what detection found instead */
};

static const char *const family_names[LOCO_FAMILY_COUNT] = {"unknown", "sd1", "sd2", "sdxl"};

const char *loco_model_family_name(loco_model_family f) {
    return (unsigned)f < LOCO_FAMILY_COUNT ? family_names[f] : "unknown";
}

int loco_model_family_from_name(const char *name, loco_model_family *out) {
    for (int i = 0; i < LOCO_FAMILY_COUNT; i++)
        if (name && strcmp(name, family_names[i]) == 0) {
            *out = (loco_model_family)i;
            return 0;
        }
    return -1;
}

void loco_model_files_opts_init(loco_model_files_opts *o) { memset(o, 0, sizeof *o); }

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ---- model_index and configs -------------------------------------------------------------- */

/* The [library, class] entry of a component, or NULL (absent, or [null, null]). */
static const char *index_entry(const json_t *index, const char *component, int which) {
    const json_t *e = json_object_get(index, component);
    if (!json_is_array(e) || json_array_size(e) != 2) return NULL;
    const char *lib = json_string_value(json_array_get(e, 0)), *cls = json_string_value(json_array_get(e, 1));
    if (!lib || !cls) return NULL;
    return which == 0 ? lib : cls;
}

static loco_status check_index(const json_t *index, const char *source, loco_err *err) {
    if (!json_is_object(index)) return loco_err_set(err, LOCO_EFORMAT, "%s: not a JSON object", source);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)index, k, v) {
        if (k[0] == '_' || !json_is_array(v)) continue; /* metadata and pipeline flags */
        if (json_array_size(v) != 2)
            return loco_err_set(err, LOCO_EFORMAT, "%s: component '%s' must be [library, class]", source, k);
        for (size_t i = 0; i < 2; i++) {
            const json_t *x = json_array_get(v, i);
            if (!json_is_string(x) && !json_is_null(x))
                return loco_err_set(err, LOCO_EFORMAT, "%s: component '%s' must be [library, class] strings", source,
                                    k);
        }
        /* Component names become folder names: keep them inside the model folder. */
        if (strchr(k, '/') || strstr(k, ".."))
            return loco_err_set(err, LOCO_EFORMAT, "%s: component name '%s' is not a folder name", source, k);
    }
    return LOCO_OK;
}

static loco_status load_json_file(const char *path, json_t **out, loco_err *err) {
    json_error_t jerr;
    *out = loco_json_load_python_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out) {
        if (!is_file(path)) return loco_err_set(err, LOCO_ENOTFOUND, "%s: file not found", path);
        return loco_err_set(err, LOCO_EFORMAT, "%s: invalid JSON (%s, line %d)", path, jerr.text, jerr.line);
    }
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return loco_err_set(err, LOCO_EFORMAT, "%s: not a JSON object", path);
    }
    return LOCO_OK;
}

static loco_status load_builtin(const char *family, const char *rel, json_t **out, loco_err *err) {
    const char *text = loco_builtin_config(family, rel);
    if (!text) return loco_err_set(err, LOCO_ENOTFOUND, "embedded defaults: no %s/%s", family, rel);
    json_error_t jerr;
    *out = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out) return loco_err_set(err, LOCO_EFORMAT, "embedded %s/%s: %s", family, rel, jerr.text);
    return LOCO_OK;
}

/* Load the config of every component model_index names, from cfg_root or the embedded
 * defaults. Components without a config file (tokenizers, feature extractors) are skipped. */
static loco_status load_configs(loco_model_files *m, loco_err *err) {
    m->configs = json_object();
    if (!m->configs) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    const char *k;
    json_t *v;
    json_object_foreach(m->index, k, v) {
        /* metadata keys, as check_index treats them (it does not check their names as folders) */
        if (k[0] == '_' || !index_entry(m->index, k, 1)) continue;
        json_t *cfg = NULL;
        loco_status st = LOCO_OK;
        static const char *const names[] = {"config.json", "scheduler_config.json"};
        for (int i = 0; i < 2 && !cfg; i++) {
            char rel[512], full[PATH_MAX + 600];
            snprintf(rel, sizeof rel, "%s/%s", k, names[i]);
            if (m->cfg_root) {
                snprintf(full, sizeof full, "%s/%s", m->cfg_root, rel);
                if (!is_file(full)) continue;
                st = load_json_file(full, &cfg, err);
            } else {
                if (!loco_builtin_config(loco_model_family_name(m->family), rel)) continue;
                st = load_builtin(loco_model_family_name(m->family), rel, &cfg, err);
            }
            if (st != LOCO_OK) return st;
        }
        if (cfg && json_object_set_new(m->configs, k, cfg) != 0) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    }
    return LOCO_OK;
}

static loco_status load_index(loco_model_files *m, loco_err *err) {
    if (!m->cfg_root) {
        loco_status st = load_builtin(loco_model_family_name(m->family), "model_index.json", &m->index, err);
        return st == LOCO_OK ? check_index(m->index, "embedded model_index.json", err) : st;
    }
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/model_index.json", m->cfg_root);
    if (!is_file(p))
        return loco_err_set(err, LOCO_ENOTFOUND, "%s: no model_index.json (not a diffusers model folder)", m->cfg_root);
    loco_status st = load_json_file(p, &m->index, err);
    return st == LOCO_OK ? check_index(m->index, p, err) : st;
}

/* ---- family detection ----------------------------------------------------------------------- */

static int cfg_int(const json_t *cfg, const char *key, int dflt) {
    const json_t *v = json_object_get(cfg, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : dflt;
}

/* Record why a folder is not a model loco runs (LOCO_FAMILY_UNKNOWN), naming the pipeline class
 * model_index.json declares when it has one. */
static loco_model_family unknown(loco_model_files *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static loco_model_family unknown(loco_model_files *m, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(m->why_unknown, sizeof m->why_unknown, fmt, ap);
    va_end(ap);
    const char *cls = json_string_value(json_object_get(m->index, "_class_name"));
    if (cls && n > 0 && (size_t)n < sizeof m->why_unknown)
        snprintf(m->why_unknown + n, sizeof m->why_unknown - (size_t)n, " (model_index.json _class_name '%s')", cls);
    return LOCO_FAMILY_UNKNOWN;
}

/* What a UNet with in_channels != 4 is: the pipelines that concatenate an image or mask to the
 * latents (diffusers' StableDiffusionInpaintPipeline: 4 + 4 + 1, InstructPix2Pix: 4 + 4, the x4
 * upscaler: 4 + 3). */
static const char *in_channels_kind(int c) {
    switch (c) {
    case 9: return "inpainting models are not supported";
    case 8: return "instruct-pix2pix (image editing) models are not supported";
    case 7: return "the x4 upscaler is not supported";
    default: return "not a text-to-image UNet";
    }
}

/* SD-like layout (UNet + VAE + CLIP text encoder with 4 latent channels in) decides by the
 * text side: a second text encoder is SD-XL; otherwise the cross-attention width (768 CLIP-L,
 * 1024 OpenCLIP-H) or, for small test models, the activation (quick_gelu is OpenAI CLIP,
 * gelu OpenCLIP) and finally the projection style (linear from SD 2 on). Anything else is
 * UNKNOWN with the reason in m->why_unknown. */
static loco_model_family detect_folder(loco_model_files *m) {
    const char *unet = index_entry(m->index, "unet", 1), *vae = index_entry(m->index, "vae", 1);
    const char *te = index_entry(m->index, "text_encoder", 1);
    if (!unet) return unknown(m, "model_index.json has no unet entry (Stable Diffusion needs a UNet2DConditionModel)");
    if (strcmp(unet, "UNet2DConditionModel") != 0)
        return unknown(m, "model_index.json's unet is a %s, not a UNet2DConditionModel", unet);
    if (!vae) return unknown(m, "model_index.json has no vae entry");
    if (!te) return unknown(m, "model_index.json has no text_encoder entry");
    if (strncmp(te, "CLIPTextModel", 13) != 0)
        return unknown(m, "model_index.json's text_encoder is a %s, not a CLIPTextModel", te);
    const json_t *ucfg = json_object_get(m->configs, "unet"), *tcfg = json_object_get(m->configs, "text_encoder");
    const int in_ch = cfg_int(ucfg, "in_channels", 4);
    if (in_ch != 4)
        return unknown(m, "unet in_channels %d: %s (text-to-image needs 4)", in_ch, in_channels_kind(in_ch));
    if (index_entry(m->index, "text_encoder_2", 1)) return LOCO_FAMILY_SDXL;
    int xdim = cfg_int(ucfg, "cross_attention_dim", 0);
    if (xdim == 768) return LOCO_FAMILY_SD1;
    if (xdim == 1024) return LOCO_FAMILY_SD2;
    const char *act = json_string_value(json_object_get(tcfg, "hidden_act"));
    if (act && strcmp(act, "quick_gelu") == 0) return LOCO_FAMILY_SD1;
    if (act && strcmp(act, "gelu") == 0) return LOCO_FAMILY_SD2;
    return json_is_true(json_object_get(ucfg, "use_linear_projection")) ? LOCO_FAMILY_SD2 : LOCO_FAMILY_SD1;
}

static int has_prefix_key(const loco_safetensors *f, const char *prefix) {
    size_t n = loco_safetensors_count(f), pl = strlen(prefix);
    /* Names are sorted: binary-search the first name >= prefix. */
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(loco_safetensors_at(f, mid)->name, prefix) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strncmp(loco_safetensors_at(f, lo)->name, prefix, pl) == 0;
}

loco_status loco_model_files_detect_single(const loco_safetensors *f, loco_model_family *out, loco_err *err) {
    const char *path = loco_safetensors_path(f);
    *out = LOCO_FAMILY_UNKNOWN;
    const loco_stored_tensor *t = loco_safetensors_find(f, "model.diffusion_model.input_blocks.0.0.weight");
    if (!t)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "%s: no UNet (model.diffusion_model.*): not a Stable Diffusion checkpoint", path);
    if (t->ndim == 4 && t->shape[1] == 9)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: inpainting checkpoints (9 input channels) are not supported",
                            path);
    /* diffusers' infer_diffusers_model_type, in its order. */
    t = loco_safetensors_find(f, "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight");
    if (t && t->ndim >= 1 && t->shape[t->ndim - 1] == 1024)
        *out = LOCO_FAMILY_SD2;
    else if (loco_safetensors_find(f, "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"))
        *out = LOCO_FAMILY_SDXL;
    else if (loco_safetensors_find(f, "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: SD-XL refiner checkpoints are not supported", path);
    else if (loco_safetensors_find(f, "model.diffusion_model.input_blocks.10.0.skip_connection.bias"))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: x4 upscaler checkpoints are not supported", path);
    else if (loco_safetensors_find(f, "model.diffusion_model.output_blocks.11.0.skip_connection.weight"))
        *out = LOCO_FAMILY_SD1;
    /* Smaller models (tests, distilled variants) lack those exact keys: fall back on which
     * text encoder layout the file carries. */
    else if (has_prefix_key(f, LOCO_LDM_OPENCLIP_SDXL_PREFIX) && has_prefix_key(f, LOCO_LDM_CLIP_SDXL_PREFIX))
        *out = LOCO_FAMILY_SDXL;
    else if (has_prefix_key(f, LOCO_LDM_OPENCLIP_SD2_PREFIX))
        *out = LOCO_FAMILY_SD2;
    else if (has_prefix_key(f, LOCO_LDM_CLIP_SD1_PREFIX))
        *out = LOCO_FAMILY_SD1;
    else
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: no known text encoder keys: not an SD 1.x/2.x/XL checkpoint",
                            path);
    return LOCO_OK;
}

/* ---- open/close ------------------------------------------------------------------------------ */

static loco_status set_tokenizers(loco_model_files *m, const char *data_dir_opt, loco_err *err) {
    static const char *const comps[2] = {"tokenizer", "tokenizer_2"};
    for (int i = 0; i < 2; i++) {
        if (!index_entry(m->index, comps[i], 1)) continue;
        char p[PATH_MAX + 64];
        if (m->cfg_root) {
            snprintf(p, sizeof p, "%s/%s", m->cfg_root, comps[i]);
            if (!is_dir(p))
                return loco_err_set(err, LOCO_ENOTFOUND, "%s: model_index.json names '%s' but the folder is missing",
                                    m->cfg_root, comps[i]);
        } else {
            /* Bundled CLIP vocabularies: the OpenCLIP tokenizers of SD 2.x and SD-XL's second
             * encoder pad with "!" (id 0), the OpenAI CLIP-L ones with <|endoftext|>. */
            int bang = (m->family == LOCO_FAMILY_SD2 && i == 0) || (m->family == LOCO_FAMILY_SDXL && i == 1);
            char dir[PATH_MAX];
            loco_status st = LOCO_OK;
            if (data_dir_opt)
                snprintf(dir, sizeof dir, "%s", data_dir_opt);
            else
                st = loco_data_dir(dir, sizeof dir, err);
            if (st != LOCO_OK)
                return loco_err_prefix(err, "%s: single-file checkpoints need the bundled tokenizer", m->path);
            snprintf(p, sizeof p, "%s/tokenizers/%s", dir, bang ? "clip-pad-bang" : "clip");
            if (!is_dir(p))
                return loco_err_set(err, LOCO_ENOTFOUND, "%s: bundled tokenizer folder missing (set LOCO_DATA_DIR)", p);
        }
        if (!(m->tok[i] = strdup(p))) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    }
    return LOCO_OK;
}

static loco_status require_components(const loco_model_files *m, loco_err *err) {
    static const char *const need[] = {"unet", "vae", "text_encoder", "scheduler", "text_encoder_2"};
    const char *where = m->cfg_root ? m->cfg_root : "embedded defaults";
    int n = m->family == LOCO_FAMILY_SDXL ? 5 : 4;
    if (m->family == LOCO_FAMILY_UNKNOWN) return LOCO_OK;
    for (int i = 0; i < n; i++) {
        if (!index_entry(m->index, need[i], 1))
            return loco_err_set(err, LOCO_EFORMAT, "%s: model_index.json has no '%s' component (needed by %s)", where,
                                need[i], loco_model_family_name(m->family));
        if (!json_object_get(m->configs, need[i]))
            return loco_err_set(err, LOCO_ENOTFOUND, "%s: %s/%s is missing", where, need[i],
                                strcmp(need[i], "scheduler") == 0 ? "scheduler_config.json" : "config.json");
    }
    return LOCO_OK;
}

/* A family forced by the caller (--family) may settle what detection cannot (SD 1.x or 2.x for a
 * small test model), but not contradict what it can: whether the model has SD-XL's second text
 * encoder. A contradiction would otherwise surface as a weight-shape error deep in the load. */
static loco_status forced_family_fits(const loco_model_files *m, loco_model_family forced, loco_model_family seen,
                                      const char *source, loco_err *err) {
    if (seen == LOCO_FAMILY_UNKNOWN || (seen == LOCO_FAMILY_SDXL) == (forced == LOCO_FAMILY_SDXL)) return LOCO_OK;
    return loco_err_set(err, LOCO_EINVAL, "%s: the family given is %s, but %s says the model is %s; leave the family "
                        "out to have it detected", m->path, loco_model_family_name(forced), source,
                        loco_model_family_name(seen));
}

loco_status loco_model_files_open(const char *path, const loco_model_files_opts *opts, loco_model_files **out,
                                  loco_err *err) {
    *out = NULL;
    loco_model_files_opts defaults;
    if (!opts) {
        loco_model_files_opts_init(&defaults);
        opts = &defaults;
    }
    if (!path) return loco_err_set(err, LOCO_EINVAL, "model_files_open: NULL path");
    if ((unsigned)opts->family >= LOCO_FAMILY_COUNT)
        return loco_err_set(err, LOCO_EINVAL, "model_files_open: invalid family %d", (int)opts->family);
    struct stat sb;
    if (stat(path, &sb) != 0) return loco_err_set(err, LOCO_ENOTFOUND, "%s: no such file or folder", path);
    int single = S_ISREG(sb.st_mode);
    if (single && !ends_with(path, ".safetensors"))
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "%s: only .safetensors checkpoints are read (pickled .ckpt/.bin files can run code; "
                            "convert them first)",
                            path);
    if (!single && !S_ISDIR(sb.st_mode)) return loco_err_set(err, LOCO_EINVAL, "%s: not a file or folder", path);
    /* options that only mean something for the other kind of model are errors, not silently
     * ignored: a user passing them expects an effect */
    if (!single && opts->config_dir)
        return loco_err_set(err, LOCO_EINVAL,
                            "%s is a diffusers folder: a config folder (--config-dir %s) applies only to single-file "
                            "checkpoints; the folder's own configs are used, leave it out",
                            path, opts->config_dir);
    if (single && opts->variant)
        return loco_err_set(err, LOCO_EINVAL,
                            "%s is a single-file checkpoint: a weight variant (--variant %s) applies only to diffusers "
                            "folders; leave it out",
                            path, opts->variant);

    loco_model_files *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    }
    m->single = single;
    loco_status st = LOCO_OK;
    if (opts->variant && !(m->variant = strdup(opts->variant))) {
        st = loco_err_set(err, LOCO_ENOMEM, "out of memory");
        goto fail;
    }
    const char *root = single ? opts->config_dir : path;
    if (root && !(m->cfg_root = strdup(root))) {
        st = loco_err_set(err, LOCO_ENOMEM, "out of memory");
        goto fail;
    }
    if (single && (st = loco_safetensors_open(path, &m->file, err)) != LOCO_OK) goto fail;

    if (m->cfg_root) {
        /* Configs from a folder; the family from its configs unless overridden. */
        if ((st = load_index(m, err)) != LOCO_OK || (st = load_configs(m, err)) != LOCO_OK) goto fail;
        m->family = detect_folder(m);
        if (opts->family != LOCO_FAMILY_UNKNOWN) {
            if ((st = forced_family_fits(m, opts->family, m->family, "model_index.json", err)) != LOCO_OK) goto fail;
            m->family = opts->family;
        }
        if (single && m->family == LOCO_FAMILY_UNKNOWN &&
            (st = loco_model_files_detect_single(m->file, &m->family, err)) != LOCO_OK)
            goto fail;
    } else {
        /* A single file with the embedded defaults of its family. */
        m->family = opts->family;
        if (m->family == LOCO_FAMILY_UNKNOWN &&
            (st = loco_model_files_detect_single(m->file, &m->family, err)) != LOCO_OK)
            goto fail;
        loco_model_family seen = LOCO_FAMILY_UNKNOWN;
        loco_err ignored;
        if (opts->family != LOCO_FAMILY_UNKNOWN && loco_model_files_detect_single(m->file, &seen, &ignored) == LOCO_OK &&
            (st = forced_family_fits(m, opts->family, seen, "its tensor names", err)) != LOCO_OK)
            goto fail;
        if ((st = load_index(m, err)) != LOCO_OK || (st = load_configs(m, err)) != LOCO_OK) goto fail;
    }
    if ((st = require_components(m, err)) != LOCO_OK) goto fail;
    if ((st = set_tokenizers(m, opts->data_dir, err)) != LOCO_OK) goto fail;
    *out = m;
    return LOCO_OK;
fail:
    loco_model_files_close(m);
    return st;
}

void loco_model_files_close(loco_model_files *m) {
    if (!m) return;
    free(m->path);
    free(m->cfg_root);
    free(m->variant);
    json_decref(m->index);
    json_decref(m->configs);
    free(m->tok[0]);
    free(m->tok[1]);
    loco_safetensors_close(m->file);
    free(m);
}

/* ---- getters --------------------------------------------------------------------------------- */

const char *loco_model_files_path(const loco_model_files *m) { return m ? m->path : NULL; }
const char *loco_model_files_config_root(const loco_model_files *m) { return m ? m->cfg_root : NULL; }
int loco_model_files_is_single_file(const loco_model_files *m) { return m && m->single; }
loco_model_family loco_model_files_family(const loco_model_files *m) { return m ? m->family : LOCO_FAMILY_UNKNOWN; }
const char *loco_model_files_unknown_reason(const loco_model_files *m) {
    return m && m->family == LOCO_FAMILY_UNKNOWN && m->why_unknown[0] ? m->why_unknown : NULL;
}
const json_t *loco_model_files_index(const loco_model_files *m) { return m ? m->index : NULL; }

const json_t *loco_model_files_config(const loco_model_files *m, const char *component) {
    return m && component ? json_object_get(m->configs, component) : NULL;
}

int loco_model_files_has(const loco_model_files *m, const char *component) {
    return m && component && index_entry(m->index, component, 1) != NULL;
}

const char *loco_model_files_class(const loco_model_files *m, const char *component) {
    return m && component ? index_entry(m->index, component, 1) : NULL;
}

int loco_model_files_flag(const loco_model_files *m, const char *key, int dflt) {
    const json_t *v = m && key ? json_object_get(m->index, key) : NULL;
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

const char *loco_model_files_tokenizer_dir(const loco_model_files *m, const char *component) {
    if (!m || !component) return NULL;
    if (strcmp(component, "tokenizer") == 0) return m->tok[0];
    if (strcmp(component, "tokenizer_2") == 0) return m->tok[1];
    return NULL;
}

const loco_stored_tensor *loco_model_files_checkpoint_tensor(const loco_model_files *m, const char *key) {
    return m && m->file ? loco_safetensors_find(m->file, key) : NULL;
}

/* ---- weights --------------------------------------------------------------------------------- */

/* transformers >= 5.6 saves CLIPTextModel without its "text_model." wrapper. */
static int add_text_model_prefix(const char *name, char *buf, size_t n, void *ctx) {
    static const char *const tops[] = {"embeddings.", "encoder.", "final_layer_norm."};
    for (size_t i = 0; i < 3; i++)
        if (strncmp(name, tops[i], strlen(tops[i])) == 0) {
            int r = snprintf(buf, n, "text_model.%s", name);
            return r < 0 || (size_t)r >= n ? -1 : 1;
        }
    return 0;
}

/* diffusers' deprecated VAE attention names: <...>.attentions.N.{query,key,value,proj_attn}.*. */
static int vae_new_attention_names(const char *name, char *buf, size_t n, void *ctx) {
    static const char *const map[][2] = {
        {"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."}, {"proj_attn.", "to_out.0."}};
    const char *a = strstr(name, ".attentions.");
    if (!a) return 0;
    const char *p = a + strlen(".attentions.");
    while (*p >= '0' && *p <= '9') p++;
    if (*p != '.' || p == a + strlen(".attentions.")) return 0;
    p++;
    for (size_t i = 0; i < 4; i++)
        if (strncmp(p, map[i][0], strlen(map[i][0])) == 0) {
            int r = snprintf(buf, n, "%.*s%s%s", (int)(p - name), name, map[i][1], p + strlen(map[i][0]));
            return r < 0 || (size_t)r >= n ? -1 : 1;
        }
    return 0;
}

static int is_clip_text_class(const char *cls) { return cls && strncmp(cls, "CLIPTextModel", 13) == 0; }

static int with_projection(const loco_model_files *m, const char *component) {
    const char *cls = loco_model_files_class(m, component);
    if (cls && strcmp(cls, "CLIPTextModelWithProjection") == 0) return 1;
    const json_t *arch = json_object_get(loco_model_files_config(m, component), "architectures");
    for (size_t i = 0; i < json_array_size(arch); i++) {
        const char *a = json_string_value(json_array_get(arch, i));
        if (a && strcmp(a, "CLIPTextModelWithProjection") == 0) return 1;
    }
    return 0;
}

static loco_status single_file_weights(const loco_model_files *m, const char *component, loco_weights *w,
                                       loco_err *err) {
    const json_t *cfg = loco_model_files_config(m, component);
    if (!cfg) return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no '%s' component", m->path, component);
    loco_safetensors *f;
    loco_status st = loco_safetensors_open(m->path, &f, err);
    if (st != LOCO_OK) return st;
    loco_weights_adopt_file(w, f);
    if (strcmp(component, "unet") == 0) return loco_ldm_map_unet(f, cfg, w, err);
    if (strcmp(component, "vae") == 0) return loco_ldm_map_vae(f, cfg, w, err);
    int te1 = strcmp(component, "text_encoder") == 0, te2 = strcmp(component, "text_encoder_2") == 0;
    int layers = cfg_int(cfg, "num_hidden_layers", 0);
    if (te1 && m->family == LOCO_FAMILY_SD1) return loco_ldm_map_clip(f, LOCO_LDM_CLIP_SD1_PREFIX, w, err);
    if (te1 && m->family == LOCO_FAMILY_SDXL) return loco_ldm_map_clip(f, LOCO_LDM_CLIP_SDXL_PREFIX, w, err);
    if ((te1 && m->family == LOCO_FAMILY_SD2) || (te2 && m->family == LOCO_FAMILY_SDXL)) {
        if (layers <= 0)
            return loco_err_set(err, LOCO_EFORMAT, "%s config: \"num_hidden_layers\" must be a positive integer",
                                component);
        return loco_ldm_map_open_clip(f, te1 ? LOCO_LDM_OPENCLIP_SD2_PREFIX : LOCO_LDM_OPENCLIP_SDXL_PREFIX, layers,
                                      with_projection(m, component), w, err);
    }
    return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: no single-file mapping for '%s' of a %s checkpoint", m->path,
                        component, loco_model_family_name(m->family));
}

loco_status loco_model_files_weights(const loco_model_files *m, const char *component, loco_weights **out,
                                     loco_err *err) {
    *out = NULL;
    if (!m || !component) return loco_err_set(err, LOCO_EINVAL, "model_files_weights: NULL argument");
    const char *lib = index_entry(m->index, component, 0), *cls = index_entry(m->index, component, 1);
    if (!cls) return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no '%s' component", m->path, component);
    if (strstr(cls, "Tokenizer") || strstr(cls, "Scheduler"))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: component '%s' (%s) has no weights", m->path, component, cls);
    loco_weights *w = NULL;
    loco_status st;
    if (m->single) {
        char source[PATH_MAX + 64];
        snprintf(source, sizeof source, "%s [%s]", m->path, component);
        if ((st = loco_weights_new_empty(source, &w, err)) != LOCO_OK) return st;
        st = single_file_weights(m, component, w, err);
    } else {
        const char *stem = strcmp(lib, "diffusers") == 0      ? "diffusion_pytorch_model"
                           : strcmp(lib, "transformers") == 0 ? "model"
                                                              : NULL;
        if (!stem)
            return loco_err_set(err, LOCO_EUNSUPPORTED,
                                "%s: component '%s' comes from library '%s', which has no weights loco reads", m->path,
                                component, lib);
        char dir[PATH_MAX + 64];
        snprintf(dir, sizeof dir, "%s/%s", m->path, component);
        if ((st = loco_weights_open_dir(dir, stem, m->variant, &w, err)) != LOCO_OK) return st;
        if (is_clip_text_class(cls))
            st = loco_weights_rename(w, add_text_model_prefix, NULL, err);
        else if (strcmp(cls, "AutoencoderKL") == 0)
            st = loco_weights_rename(w, vae_new_attention_names, NULL, err);
    }
    if (st != LOCO_OK) {
        loco_weights_free(w);
        return st;
    }
    *out = w;
    return LOCO_OK;
}
