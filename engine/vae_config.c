/* vae_config.c: AutoencoderKL config.json -> loco_vae_config. Every key of diffusers'
 * AutoencoderKL.__init__ is known; values that would change the architecture in a way loco
 * does not implement are errors naming the key, and so are unknown keys. */
#include "vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void loco_vae_config_init(loco_vae_config *c) {
    memset(c, 0, sizeof *c);
    static const int boc[4] = {128, 256, 512, 512};
    c->in_channels = 3;
    c->out_channels = 3;
    c->latent_channels = 4;
    c->n_blocks = 4;
    for (int i = 0; i < 4; i++) c->block_out_channels[i] = boc[i];
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->scaling_factor = 0.18215f;
    c->force_upcast = 1;
    c->use_quant_conv = 1;
    c->use_post_quant_conv = 1;
    c->mid_block_add_attention = 1;
}

static loco_status bad(const char *src, const char *key, const char *what, loco_err *err) {
    return loco_err_set(err, LOCO_EFORMAT, "%s: key '%s' %s", src, key, what);
}

static loco_status unsupported(const char *src, const char *key, const json_t *v, loco_err *err) {
    char *dump = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    loco_status s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: key '%s' = %s is not supported by loco's VAE", src, key,
                                 dump ? dump : "?");
    free(dump);
    return s;
}

/* A positive integer of at most `max` (vae.h: the limits and why). */
static loco_status pos_int(const char *src, const char *key, const json_t *v, int max, int *out, loco_err *err) {
    if (!json_is_integer(v) || json_integer_value(v) < 1) return bad(src, key, "must be a positive integer", err);
    if (json_integer_value(v) > max)
        return loco_err_set(err, LOCO_EFORMAT,
                            "%s: key '%s' = %lld is more than loco's limit of %d (real Stable Diffusion VAEs are far "
                            "smaller: a corrupt config?)",
                            src, key, (long long)json_integer_value(v), max);
    *out = (int)json_integer_value(v);
    return LOCO_OK;
}

static loco_status boolean(const char *src, const char *key, const json_t *v, int *out, loco_err *err) {
    if (!json_is_boolean(v)) return bad(src, key, "must be true or false", err);
    *out = json_is_true(v);
    return LOCO_OK;
}

/* A list of block type names that must all be `want`; returns the count through *n. */
static loco_status block_types(const char *src, const char *key, const json_t *v, const char *want, int *n,
                               loco_err *err) {
    if (!json_is_array(v) || json_array_size(v) == 0) return bad(src, key, "must be a non-empty list", err);
    if (json_array_size(v) > LOCO_VAE_MAX_BLOCKS)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: key '%s' lists more than %d blocks", src, key,
                            LOCO_VAE_MAX_BLOCKS);
    for (size_t i = 0; i < json_array_size(v); i++) {
        const char *name = json_string_value(json_array_get(v, i));
        if (!name) return bad(src, key, "must be a list of strings", err);
        if (strcmp(name, want) != 0)
            return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: key '%s': unknown or unsupported block type '%s' (expected %s)",
                                src, key, name, want);
    }
    *n = (int)json_array_size(v);
    return LOCO_OK;
}

loco_status loco_vae_config_from_json(const json_t *root, const char *source, loco_vae_config *c, loco_err *err) {
    const char *src = source ? source : "vae config";
    loco_vae_config_init(c);
    if (!json_is_object(root)) return loco_err_set(err, LOCO_EFORMAT, "%s: the config must be a JSON object", src);
    int n_down = -1, n_up = -1;
    const char *key;
    json_t *v;
    loco_status s = LOCO_OK;
    json_object_foreach((json_t *)root, key, v) {
        if (key[0] == '_') {
            if (!strcmp(key, "_class_name") && json_is_string(v) && strcmp(json_string_value(v), "AutoencoderKL"))
                return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: _class_name '%s' is not AutoencoderKL", src,
                                    json_string_value(v));
            continue; /* provenance only */
        }
        if (!strcmp(key, "in_channels")) s = pos_int(src, key, v, LOCO_VAE_MAX_IO_CHANNELS, &c->in_channels, err);
        else if (!strcmp(key, "out_channels")) s = pos_int(src, key, v, LOCO_VAE_MAX_IO_CHANNELS, &c->out_channels, err);
        else if (!strcmp(key, "latent_channels")) s = pos_int(src, key, v, LOCO_VAE_MAX_IO_CHANNELS, &c->latent_channels, err);
        else if (!strcmp(key, "layers_per_block")) s = pos_int(src, key, v, LOCO_VAE_MAX_LAYERS, &c->layers_per_block, err);
        else if (!strcmp(key, "norm_num_groups")) s = pos_int(src, key, v, LOCO_VAE_MAX_NORM_GROUPS, &c->norm_num_groups, err);
        else if (!strcmp(key, "down_block_types")) s = block_types(src, key, v, "DownEncoderBlock2D", &n_down, err);
        else if (!strcmp(key, "up_block_types")) s = block_types(src, key, v, "UpDecoderBlock2D", &n_up, err);
        else if (!strcmp(key, "block_out_channels")) {
            if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > LOCO_VAE_MAX_BLOCKS) {
                s = bad(src, key, "must be a non-empty list of positive integers", err);
            } else {
                c->n_blocks = (int)json_array_size(v);
                for (int i = 0; !s && i < c->n_blocks; i++)
                    s = pos_int(src, key, json_array_get(v, (size_t)i), LOCO_VAE_MAX_CHANNELS, &c->block_out_channels[i], err);
            }
        } else if (!strcmp(key, "act_fn")) {
            const char *a = json_string_value(v);
            if (!a || (strcmp(a, "silu") && strcmp(a, "swish"))) s = unsupported(src, key, v, err);
        } else if (!strcmp(key, "scaling_factor")) {
            if (!json_is_number(v) || json_number_value(v) == 0) s = bad(src, key, "must be a non-zero number", err);
            else c->scaling_factor = (float)json_number_value(v);
        } else if (!strcmp(key, "shift_factor")) {
            if (json_is_number(v)) {
                c->has_shift_factor = 1;
                c->shift_factor = (float)json_number_value(v);
            } else if (!json_is_null(v)) {
                s = bad(src, key, "must be a number or null", err);
            }
        } else if (!strcmp(key, "force_upcast")) s = boolean(src, key, v, &c->force_upcast, err);
        else if (!strcmp(key, "use_quant_conv")) s = boolean(src, key, v, &c->use_quant_conv, err);
        else if (!strcmp(key, "use_post_quant_conv")) s = boolean(src, key, v, &c->use_post_quant_conv, err);
        else if (!strcmp(key, "mid_block_add_attention")) s = boolean(src, key, v, &c->mid_block_add_attention, err);
        else if (!strcmp(key, "sample_size")) {
            const json_t *first = json_is_array(v) ? json_array_get(v, 0) : v;
            if (json_is_integer(first)) s = pos_int(src, key, first, LOCO_VAE_MAX_SAMPLE_SIZE, &c->sample_size, err);
            else if (!json_is_null(v)) s = bad(src, key, "must be an integer, a [height, width] list or null", err);
        } else if (!strcmp(key, "latents_mean") || !strcmp(key, "latents_std")) {
            /* a per-channel latent normalisation used by other pipelines (not SD 1/2/XL) */
            if (!json_is_null(v)) s = unsupported(src, key, v, err);
        } else {
            s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: unknown key '%s' (not an AutoencoderKL option)", src, key);
        }
        if (s) return s;
    }
    if (n_down >= 0 && n_down != c->n_blocks)
        return loco_err_set(err, LOCO_EFORMAT, "%s: down_block_types has %d entries but block_out_channels has %d",
                            src, n_down, c->n_blocks);
    if (n_up >= 0 && n_up != c->n_blocks)
        return loco_err_set(err, LOCO_EFORMAT, "%s: up_block_types has %d entries but block_out_channels has %d", src,
                            n_up, c->n_blocks);
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] % c->norm_num_groups)
            return loco_err_set(err, LOCO_EFORMAT, "%s: block %d has %d channels, not divisible into %d norm groups",
                                src, i, c->block_out_channels[i], c->norm_num_groups);
    return LOCO_OK;
}

loco_status loco_vae_config_load(const char *path, loco_vae_config *c, loco_err *err) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        FILE *f = fopen(path, "rb");
        if (!f) return loco_err_set(err, LOCO_EIO, "%s: cannot open the VAE config", path);
        fclose(f);
        return loco_err_set(err, LOCO_EFORMAT, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
    }
    loco_status s = loco_vae_config_from_json(root, path, c, err);
    json_decref(root);
    return s;
}
