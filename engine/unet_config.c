/* unet_config.c: UNet2DConditionModel config.json -> loco_unet_config, expanding ints into
 * per-block lists exactly as diffusers' UNet2DConditionModel.__init__ does. Every key of that
 * __init__ is known here; keys that do not change the supported architectures are accepted,
 * keys whose value would change it in an unsupported way are errors naming the key and value,
 * and unknown keys are errors (a typo or a newer architecture must not load silently wrong). */
#include "unet.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const block_names[LOCO_UNET_BLOCK_TYPE_COUNT] = {
    [LOCO_UNET_BLOCK_NONE] = "none",
    [LOCO_UNET_DOWN_BLOCK_2D] = "DownBlock2D",
    [LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D] = "CrossAttnDownBlock2D",
    [LOCO_UNET_MID_BLOCK_2D_CROSS_ATTN] = "UNetMidBlock2DCrossAttn",
    [LOCO_UNET_MID_BLOCK_2D] = "UNetMidBlock2D",
    [LOCO_UNET_UP_BLOCK_2D] = "UpBlock2D",
    [LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D] = "CrossAttnUpBlock2D",
};

const char *loco_unet_block_type_name(loco_unet_block_type t) {
    return (unsigned)t < LOCO_UNET_BLOCK_TYPE_COUNT ? block_names[t] : "unknown";
}

int loco_unet_block_type_from_name(const char *name, loco_unet_block_type *out) {
    if (!name) return -1;
    /* diffusers' get_down_block/get_up_block strip a "UNetRes" prefix */
    if (strncmp(name, "UNetRes", 7) == 0) name += 7;
    for (int i = 0; i < LOCO_UNET_BLOCK_TYPE_COUNT; i++)
        if (strcmp(name, block_names[i]) == 0) {
            *out = (loco_unet_block_type)i;
            return 0;
        }
    return -1;
}

static const char *const add_names[LOCO_UNET_ADD_COUNT] = {
    [LOCO_UNET_ADD_NONE] = "none",
    [LOCO_UNET_ADD_TEXT_TIME] = "text_time",
};

const char *loco_unet_addition_embed_name(loco_unet_addition_embed a) {
    return (unsigned)a < LOCO_UNET_ADD_COUNT ? add_names[a] : "unknown";
}

int loco_unet_addition_embed_from_name(const char *name, loco_unet_addition_embed *out) {
    for (int i = 0; name && i < LOCO_UNET_ADD_COUNT; i++)
        if (strcmp(name, add_names[i]) == 0) {
            *out = (loco_unet_addition_embed)i;
            return 0;
        }
    return -1;
}

void loco_unet_config_init(loco_unet_config *c) {
    memset(c, 0, sizeof *c);
    static const loco_unet_block_type down[4] = {LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D, LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D,
                                                 LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D, LOCO_UNET_DOWN_BLOCK_2D};
    static const loco_unet_block_type up[4] = {LOCO_UNET_UP_BLOCK_2D, LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D,
                                               LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D, LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D};
    static const int boc[4] = {320, 640, 1280, 1280};
    c->in_channels = 4;
    c->out_channels = 4;
    c->n_blocks = 4;
    for (int i = 0; i < 4; i++) {
        c->down[i] = down[i];
        c->up[i] = up[i];
        c->block_out_channels[i] = boc[i];
    }
    for (int i = 0; i < LOCO_UNET_MAX_BLOCKS; i++) {
        c->layers_per_block[i] = 2;
        c->heads[i] = 8;
        c->cross_attention_dim[i] = 1280;
        for (int j = 0; j < LOCO_UNET_MAX_LAYERS; j++) c->down_transformer_layers[i][j] = 1;
        for (int j = 0; j <= LOCO_UNET_MAX_LAYERS; j++) c->up_transformer_layers[i][j] = 1;
    }
    c->mid = LOCO_UNET_MID_BLOCK_2D_CROSS_ATTN;
    c->mid_transformer_layers = 1;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->downsample_padding = 1;
    c->mid_block_scale_factor = 1;
    c->time_embed_dim = 4 * 320;
    c->conv_in_kernel = 3;
    c->conv_out_kernel = 3;
}

/* ---- JSON helpers --------------------------------------------------------------------------- */

typedef struct parse_ctx {
    const char *src;
    loco_err *err;
} parse_ctx;

static loco_status bad(const parse_ctx *p, const char *key, const char *what) {
    return loco_err_set(p->err, LOCO_EFORMAT, "%s: key '%s' %s", p->src, key, what);
}

static loco_status unsupported(const parse_ctx *p, const char *key, const json_t *v) {
    char *dump = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    loco_status s = loco_err_set(p->err, LOCO_EUNSUPPORTED, "%s: key '%s' = %s is not supported by loco's UNet",
                                 p->src, key, dump ? dump : "?");
    free(dump);
    return s;
}

/* An integer in min..max (unet.h: the limits and why). */
static loco_status get_int(const parse_ctx *p, const char *key, const json_t *v, int min, int max, int *out) {
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return min > 0 ? bad(p, key, "must be a positive integer") : bad(p, key, "must be a non-negative integer");
    if (json_integer_value(v) > max)
        return loco_err_set(p->err, LOCO_EFORMAT,
                            "%s: key '%s' = %lld is more than loco's limit of %d (real Stable Diffusion UNets are far "
                            "smaller: a corrupt config?)",
                            p->src, key, (long long)json_integer_value(v), max);
    *out = (int)json_integer_value(v);
    return LOCO_OK;
}

static loco_status get_num(const parse_ctx *p, const char *key, const json_t *v, float *out) {
    if (!json_is_number(v)) return bad(p, key, "must be a number");
    *out = (float)json_number_value(v);
    return LOCO_OK;
}

static loco_status get_bool(const parse_ctx *p, const char *key, const json_t *v, int *out) {
    if (!json_is_boolean(v)) return bad(p, key, "must be true or false");
    *out = json_is_true(v);
    return LOCO_OK;
}

/* An int or a list of n ints -> out[n]. */
static loco_status int_or_list(const parse_ctx *p, const char *key, const json_t *v, int n, int min, int max,
                               int *out) {
    if (json_is_integer(v)) {
        int x;
        loco_status s = get_int(p, key, v, min, max, &x);
        if (s) return s;
        for (int i = 0; i < n; i++) out[i] = x;
        return LOCO_OK;
    }
    if (!json_is_array(v) || (int)json_array_size(v) != n) {
        char what[128];
        snprintf(what, sizeof what, "must be an integer or a list of %d integers (one per block)", n);
        return bad(p, key, what);
    }
    for (int i = 0; i < n; i++) {
        loco_status s = get_int(p, key, json_array_get(v, (size_t)i), min, max, &out[i]);
        if (s) return s;
    }
    return LOCO_OK;
}

/* transformer layers of one block: an int for every layer, or a list of `layers` ints. */
static loco_status layer_counts(const parse_ctx *p, const char *key, const json_t *v, int layers, int *out) {
    if (json_is_integer(v)) {
        int x;
        loco_status s = get_int(p, key, v, 1, LOCO_UNET_MAX_TRANSFORMER_DEPTH, &x);
        if (s) return s;
        for (int j = 0; j < layers; j++) out[j] = x;
        return LOCO_OK;
    }
    if (!json_is_array(v) || (int)json_array_size(v) != layers) {
        char what[160];
        snprintf(what, sizeof what, "must hold, per block, an integer or a list of %d integers (one per layer)",
                 layers);
        return bad(p, key, what);
    }
    for (int j = 0; j < layers; j++) {
        loco_status s = get_int(p, key, json_array_get(v, (size_t)j), 1, LOCO_UNET_MAX_TRANSFORMER_DEPTH, &out[j]);
        if (s) return s;
    }
    return LOCO_OK;
}

static loco_status block_list(const parse_ctx *p, const char *key, const json_t *v, loco_unet_block_type *out,
                              int *n) {
    if (!json_is_array(v) || json_array_size(v) == 0) return bad(p, key, "must be a non-empty list of block types");
    if (json_array_size(v) > LOCO_UNET_MAX_BLOCKS) {
        char what[96];
        snprintf(what, sizeof what, "lists more than %d blocks", LOCO_UNET_MAX_BLOCKS);
        return loco_err_set(p->err, LOCO_EUNSUPPORTED, "%s: key '%s' %s", p->src, key, what);
    }
    *n = (int)json_array_size(v);
    for (int i = 0; i < *n; i++) {
        const char *name = json_string_value(json_array_get(v, (size_t)i));
        if (!name) return bad(p, key, "must be a list of strings");
        if (loco_unet_block_type_from_name(name, &out[i]) != 0)
            return loco_err_set(p->err, LOCO_EUNSUPPORTED, "%s: key '%s': unknown or unsupported block type '%s'",
                                p->src, key, name);
    }
    return LOCO_OK;
}

/* Keys that must hold one particular value (or null) for the supported architectures. */
static int is_null_or_false(const json_t *v) { return json_is_null(v) || json_is_false(v); }

/* ---- parse ----------------------------------------------------------------------------------- */

loco_status loco_unet_config_from_json(const json_t *root, const char *source, loco_unet_config *c, loco_err *err) {
    parse_ctx P = {.src = source ? source : "unet config", .err = err};
    const parse_ctx *p = &P;
    loco_unet_config_init(c);
    loco_status s = LOCO_OK;
    if (!json_is_object(root)) {
        s = loco_err_set(err, LOCO_EFORMAT, "%s: the config must be a JSON object", P.src);
        goto done;
    }

    /* Values needed to expand the others are read first. */
    const json_t *v;
    int n = 0, nup = 0;
    if (!(v = json_object_get(root, "down_block_types"))) {
        static const char *const d[4] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D"};
        n = 4;
        for (int i = 0; i < 4; i++) loco_unet_block_type_from_name(d[i], &c->down[i]);
    } else if ((s = block_list(p, "down_block_types", v, c->down, &n)))
        goto done;
    if ((v = json_object_get(root, "up_block_types"))) {
        if ((s = block_list(p, "up_block_types", v, c->up, &nup))) goto done;
    } else {
        nup = 4;
    }
    if (nup != n) {
        s = loco_err_set(err, LOCO_EFORMAT, "%s: up_block_types has %d entries but down_block_types has %d", P.src,
                         nup, n);
        goto done;
    }
    c->n_blocks = n;
    for (int i = 0; i < n; i++) {
        if (c->down[i] != LOCO_UNET_DOWN_BLOCK_2D && c->down[i] != LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D) {
            s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: down_block_types[%d] = '%s' is not a down block", P.src, i,
                             loco_unet_block_type_name(c->down[i]));
            goto done;
        }
        if (c->up[i] != LOCO_UNET_UP_BLOCK_2D && c->up[i] != LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D) {
            s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: up_block_types[%d] = '%s' is not an up block", P.src, i,
                             loco_unet_block_type_name(c->up[i]));
            goto done;
        }
    }
    if ((v = json_object_get(root, "block_out_channels"))) {
        if (!json_is_array(v) || (int)json_array_size(v) != n) {
            s = loco_err_set(err, LOCO_EFORMAT, "%s: key 'block_out_channels' must be a list of %d positive integers",
                             P.src, n);
            goto done;
        }
        if ((s = int_or_list(p, "block_out_channels", v, n, 1, LOCO_UNET_MAX_CHANNELS, c->block_out_channels))) goto done;
    } else if (n != 4) {
        s = loco_err_set(err, LOCO_EFORMAT, "%s: key 'block_out_channels' is required with %d blocks", P.src, n);
        goto done;
    }
    if ((v = json_object_get(root, "layers_per_block")) &&
        (s = int_or_list(p, "layers_per_block", v, n, 1, 1 << 30, c->layers_per_block))) /* limit: below */
        goto done;
    for (int i = 0; i < n; i++)
        if (c->layers_per_block[i] > LOCO_UNET_MAX_LAYERS) {
            s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: layers_per_block %d exceeds loco's limit of %d", P.src,
                             c->layers_per_block[i], LOCO_UNET_MAX_LAYERS);
            goto done;
        }

    /* heads: num_attention_heads when given, else attention_head_dim (a historic misnaming in
     * diffusers: for SD configs attention_head_dim is the number of heads). */
    {
        const json_t *nah = json_object_get(root, "num_attention_heads");
        const json_t *ahd = json_object_get(root, "attention_head_dim");
        if (nah && !json_is_null(nah)) {
            if ((s = int_or_list(p, "num_attention_heads", nah, n, 1, LOCO_UNET_MAX_HEADS, c->heads))) goto done;
        } else if (ahd && !json_is_null(ahd)) {
            if ((s = int_or_list(p, "attention_head_dim", ahd, n, 1, LOCO_UNET_MAX_HEADS, c->heads))) goto done;
        } else if (ahd || nah) {
            s = bad(p, "attention_head_dim", "and 'num_attention_heads' are both null");
            goto done;
        } else {
            for (int i = 0; i < n; i++) c->heads[i] = 8;
        }
    }
    if ((v = json_object_get(root, "cross_attention_dim"))) {
        if ((s = int_or_list(p, "cross_attention_dim", v, n, 1, LOCO_UNET_MAX_CHANNELS, c->cross_attention_dim))) goto done;
    } else {
        for (int i = 0; i < n; i++) c->cross_attention_dim[i] = 1280;
    }
    if ((v = json_object_get(root, "only_cross_attention"))) {
        if (json_is_boolean(v)) {
            for (int i = 0; i < n; i++) c->only_cross_attention[i] = json_is_true(v);
        } else if (json_is_array(v) && (int)json_array_size(v) == n) {
            for (int i = 0; i < n; i++)
                if ((s = get_bool(p, "only_cross_attention", json_array_get(v, (size_t)i),
                                  &c->only_cross_attention[i])))
                    goto done;
        } else {
            s = bad(p, "only_cross_attention", "must be a boolean or a list of booleans, one per block");
            goto done;
        }
    }

    /* transformer layers: per block (int or per-layer list); up blocks reversed unless
     * reverse_transformer_layers_per_block is given (required for per-layer lists). */
    {
        const json_t *tl = json_object_get(root, "transformer_layers_per_block");
        const json_t *rtl = json_object_get(root, "reverse_transformer_layers_per_block");
        if (rtl && json_is_null(rtl)) rtl = NULL;
        int nested = 0;
        if (tl && json_is_array(tl)) {
            if ((int)json_array_size(tl) != n) {
                s = bad(p, "transformer_layers_per_block", "must be an integer or a list with one entry per block");
                goto done;
            }
            for (int i = 0; i < n; i++) nested |= json_is_array(json_array_get(tl, (size_t)i));
        } else if (tl && !json_is_integer(tl)) {
            s = bad(p, "transformer_layers_per_block", "must be an integer or a list with one entry per block");
            goto done;
        }
        if (nested && !rtl) {
            s = bad(p, "reverse_transformer_layers_per_block",
                    "is required when transformer_layers_per_block has per-layer lists (asymmetric UNet)");
            goto done;
        }
        if (rtl && (!json_is_array(rtl) || (int)json_array_size(rtl) != n)) {
            s = bad(p, "reverse_transformer_layers_per_block", "must be a list with one entry per up block");
            goto done;
        }
        for (int i = 0; i < n; i++) {
            const json_t *e = tl ? (json_is_array(tl) ? json_array_get(tl, (size_t)i) : tl) : NULL;
            if (e && (s = layer_counts(p, "transformer_layers_per_block", e, c->layers_per_block[i],
                                       c->down_transformer_layers[i])))
                goto done;
            if (!e)
                for (int j = 0; j < c->layers_per_block[i]; j++) c->down_transformer_layers[i][j] = 1;
        }
        /* mid: transformer_layers_per_block[-1] (its first entry if it is a per-layer list) */
        c->mid_transformer_layers = c->down_transformer_layers[n - 1][0];
        for (int i = 0; i < n; i++) {
            int r = n - 1 - i;
            int layers = c->layers_per_block[r] + 1;
            const json_t *e = rtl ? json_array_get(rtl, (size_t)i)
                                  : (tl ? (json_is_array(tl) ? json_array_get(tl, (size_t)r) : tl) : NULL);
            if (e && (s = layer_counts(p, rtl ? "reverse_transformer_layers_per_block" : "transformer_layers_per_block",
                                       e, layers, c->up_transformer_layers[i])))
                goto done;
            if (!e)
                for (int j = 0; j < layers; j++) c->up_transformer_layers[i][j] = 1;
        }
    }

    /* Every other key. */
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)root, key, val) {
        if (key[0] == '_') {
            if (strcmp(key, "_class_name") == 0 && json_is_string(val) &&
                strcmp(json_string_value(val), "UNet2DConditionModel") != 0) {
                s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: _class_name '%s' is not UNet2DConditionModel", P.src,
                                 json_string_value(val));
                goto done;
            }
            continue; /* _diffusers_version, _name_or_path: provenance only */
        }
        if (!strcmp(key, "down_block_types") || !strcmp(key, "up_block_types") || !strcmp(key, "block_out_channels") ||
            !strcmp(key, "layers_per_block") || !strcmp(key, "num_attention_heads") ||
            !strcmp(key, "attention_head_dim") || !strcmp(key, "cross_attention_dim") ||
            !strcmp(key, "only_cross_attention") || !strcmp(key, "transformer_layers_per_block") ||
            !strcmp(key, "reverse_transformer_layers_per_block"))
            continue; /* read above */
        if (!strcmp(key, "sample_size")) {
            /* the default image side is sample_size x the VAE factor: bounded, so it stays an int */
            const json_t *first = json_is_array(val) ? json_array_get(val, 0) : val;
            if (json_is_integer(first)) s = get_int(p, key, first, 1, LOCO_UNET_MAX_SAMPLE_SIZE, &c->sample_size);
            else if (!json_is_null(val)) s = bad(p, key, "must be an integer, a [height, width] list or null");
        } else if (!strcmp(key, "in_channels")) s = get_int(p, key, val, 1, LOCO_UNET_MAX_IO_CHANNELS, &c->in_channels);
        else if (!strcmp(key, "out_channels")) s = get_int(p, key, val, 1, LOCO_UNET_MAX_IO_CHANNELS, &c->out_channels);
        else if (!strcmp(key, "flip_sin_to_cos")) s = get_bool(p, key, val, &c->flip_sin_to_cos);
        else if (!strcmp(key, "freq_shift")) s = get_num(p, key, val, &c->freq_shift);
        else if (!strcmp(key, "mid_block_type")) {
            if (json_is_null(val)) c->mid = LOCO_UNET_BLOCK_NONE;
            else if (!json_is_string(val)) s = bad(p, key, "must be a string or null");
            else if (loco_unet_block_type_from_name(json_string_value(val), &c->mid) != 0 ||
                     (c->mid != LOCO_UNET_MID_BLOCK_2D_CROSS_ATTN && c->mid != LOCO_UNET_MID_BLOCK_2D))
                s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: key 'mid_block_type': unknown or unsupported block type '%s'",
                                 P.src, json_string_value(val));
        } else if (!strcmp(key, "downsample_padding")) s = get_int(p, key, val, 0, LOCO_UNET_MAX_PADDING, &c->downsample_padding);
        else if (!strcmp(key, "mid_block_scale_factor")) {
            s = get_num(p, key, val, &c->mid_block_scale_factor);
            if (!s && c->mid_block_scale_factor == 0) s = bad(p, key, "must not be 0");
        } else if (!strcmp(key, "act_fn")) {
            const char *a = json_string_value(val);
            if (!a || (strcmp(a, "silu") && strcmp(a, "swish"))) s = unsupported(p, key, val);
        } else if (!strcmp(key, "norm_num_groups")) {
            if (json_is_null(val)) s = unsupported(p, key, val);
            else s = get_int(p, key, val, 1, LOCO_UNET_MAX_NORM_GROUPS, &c->norm_num_groups);
        } else if (!strcmp(key, "norm_eps")) s = get_num(p, key, val, &c->norm_eps);
        else if (!strcmp(key, "use_linear_projection")) s = get_bool(p, key, val, &c->use_linear_projection);
        else if (!strcmp(key, "upcast_attention")) {
            if (!json_is_null(val)) s = get_bool(p, key, val, &c->upcast_attention);
        } else if (!strcmp(key, "addition_embed_type")) {
            if (json_is_null(val)) c->addition_embed_type = LOCO_UNET_ADD_NONE;
            else if (!json_is_string(val) ||
                     loco_unet_addition_embed_from_name(json_string_value(val), &c->addition_embed_type) != 0 ||
                     c->addition_embed_type == LOCO_UNET_ADD_NONE)
                s = unsupported(p, key, val);
        } else if (!strcmp(key, "addition_time_embed_dim")) {
            if (!json_is_null(val)) s = get_int(p, key, val, 1, LOCO_UNET_MAX_EMBED, &c->addition_time_embed_dim);
        } else if (!strcmp(key, "projection_class_embeddings_input_dim")) {
            if (!json_is_null(val)) s = get_int(p, key, val, 1, LOCO_UNET_MAX_EMBED, &c->projection_class_embeddings_input_dim);
        } else if (!strcmp(key, "time_embedding_dim")) {
            if (!json_is_null(val)) s = get_int(p, key, val, 1, LOCO_UNET_MAX_EMBED, &c->time_embed_dim);
            else c->time_embed_dim = 0;
        } else if (!strcmp(key, "conv_in_kernel") || !strcmp(key, "conv_out_kernel")) {
            int k = 0;
            s = get_int(p, key, val, 1, LOCO_UNET_MAX_KERNEL, &k);
            if (!s && k % 2 == 0) s = bad(p, key, "must be odd");
            if (!s) *(key[5] == 'i' ? &c->conv_in_kernel : &c->conv_out_kernel) = k;
        } else if (!strcmp(key, "center_input_sample") || !strcmp(key, "dual_cross_attention") ||
                   !strcmp(key, "class_embeddings_concat")) {
            if (!is_null_or_false(val)) s = unsupported(p, key, val);
        } else if (!strcmp(key, "encoder_hid_dim") || !strcmp(key, "encoder_hid_dim_type") ||
                   !strcmp(key, "class_embed_type") || !strcmp(key, "num_class_embeds") ||
                   !strcmp(key, "time_embedding_act_fn") || !strcmp(key, "timestep_post_act") ||
                   !strcmp(key, "time_cond_proj_dim")) {
            if (!json_is_null(val)) s = unsupported(p, key, val);
        } else if (!strcmp(key, "resnet_time_scale_shift")) {
            if (!json_is_string(val) || strcmp(json_string_value(val), "default")) s = unsupported(p, key, val);
        } else if (!strcmp(key, "time_embedding_type")) {
            if (!json_is_string(val) || strcmp(json_string_value(val), "positional")) s = unsupported(p, key, val);
        } else if (!strcmp(key, "attention_type")) {
            if (!json_is_string(val) || strcmp(json_string_value(val), "default")) s = unsupported(p, key, val);
        } else if (!strcmp(key, "dropout") || !strcmp(key, "resnet_skip_time_act") ||
                   !strcmp(key, "resnet_out_scale_factor") || !strcmp(key, "mid_block_only_cross_attention") ||
                   !strcmp(key, "cross_attention_norm") || !strcmp(key, "addition_embed_type_num_heads")) {
            /* dropout is off at inference; the others only affect block types loco rejects
             * (ResnetDownsample/SimpleCrossAttn blocks, the "text" addition embedding). */
        } else {
            s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s: unknown key '%s' (not a UNet2DConditionModel option)",
                             P.src, key);
        }
        if (s) goto done;
    }

    /* every transformer_layers_per_block entry may be within its limit and the whole still
     * absurd (8 levels x 33 layers x 64): bound the UNet's transformer layers together, counted
     * as loco builds them (the mid block known now) */
    long total = c->mid == LOCO_UNET_MID_BLOCK_2D_CROSS_ATTN ? c->mid_transformer_layers : 0;
    for (int i = 0; i < n; i++) {
        if (c->down[i] == LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D)
            for (int j = 0; j < c->layers_per_block[i]; j++) total += c->down_transformer_layers[i][j];
        if (c->up[i] == LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D)
            for (int j = 0; j <= c->layers_per_block[n - 1 - i]; j++) total += c->up_transformer_layers[i][j];
    }
    if (total > LOCO_UNET_MAX_TRANSFORMER_BLOCKS) {
        s = loco_err_set(err, LOCO_EFORMAT,
                         "%s: transformer_layers_per_block adds up to %ld transformer layers in the UNet, more "
                         "than loco's limit of %d (SD-XL has 70: a corrupt config?)",
                         P.src, total, LOCO_UNET_MAX_TRANSFORMER_BLOCKS);
        goto done;
    }
    if (c->time_embed_dim == 0) c->time_embed_dim = 4 * c->block_out_channels[0];
    if (c->addition_embed_type == LOCO_UNET_ADD_TEXT_TIME &&
        (c->addition_time_embed_dim <= 0 || c->projection_class_embeddings_input_dim <= 0)) {
        s = loco_err_set(err, LOCO_EFORMAT,
                         "%s: addition_embed_type 'text_time' needs addition_time_embed_dim and "
                         "projection_class_embeddings_input_dim",
                         P.src);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        int has_attn = c->down[i] == LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D ||
                       c->up[n - 1 - i] == LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D ||
                       (i == n - 1 && c->mid == LOCO_UNET_MID_BLOCK_2D_CROSS_ATTN);
        if (has_attn && c->block_out_channels[i] % c->heads[i] != 0) {
            s = loco_err_set(err, LOCO_EFORMAT, "%s: block %d has %d channels, not divisible into %d attention heads",
                             P.src, i, c->block_out_channels[i], c->heads[i]);
            goto done;
        }
        if (c->block_out_channels[i] % c->norm_num_groups != 0) {
            s = loco_err_set(err, LOCO_EFORMAT, "%s: block %d has %d channels, not divisible into %d norm groups",
                             P.src, i, c->block_out_channels[i], c->norm_num_groups);
            goto done;
        }
    }
done:
    return s;
}

loco_status loco_unet_config_parse(const char *json_text, const char *source, loco_unet_config *c, loco_err *err) {
    json_error_t jerr;
    json_t *root = json_loads(json_text, 0, &jerr);
    if (!root)
        return loco_err_set(err, LOCO_EFORMAT, "%s: invalid JSON at line %d: %s", source ? source : "unet config",
                            jerr.line, jerr.text);
    loco_status s = loco_unet_config_from_json(root, source, c, err);
    json_decref(root);
    return s;
}

loco_status loco_unet_config_load(const char *path, loco_unet_config *c, loco_err *err) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        /* json_load_file reports a missing file and bad JSON the same way: tell them apart */
        FILE *f = fopen(path, "rb");
        if (!f) return loco_err_set(err, LOCO_EIO, "%s: cannot open the UNet config", path);
        fclose(f);
        return loco_err_set(err, LOCO_EFORMAT, "%s: invalid JSON at line %d: %s", path, jerr.line, jerr.text);
    }
    loco_status s = loco_unet_config_from_json(root, path, c, err);
    json_decref(root);
    return s;
}
