/* clip_text_config.c: CLIPTextConfig from config.json (transformers' format). */
#include "clip_text.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void loco_clip_text_config_init(loco_clip_text_config *c) {
    memset(c, 0, sizeof *c);
    /* transformers' CLIPTextConfig defaults for keys a config may leave out; sizes have no
     * default here on purpose: a model whose width is guessed is a silent wrong answer. */
    c->hidden_act = LOCO_ACT_QUICK_GELU;
    c->layer_norm_eps = 1e-5f;
    c->eos_token_id = 49407;
    c->with_projection = -1;
}

/* A positive integer of at most `max` (clip_text.h: the limits and why). */
static loco_status get_pos_int(const json_t *o, const char *key, int required, int max, int *out, const char *src,
                               loco_err *err) {
    const json_t *v = json_object_get(o, key);
    if (!v) {
        if (required) return loco_err_set(err, LOCO_EFORMAT, "%s: key '%s' is missing", src, key);
        return LOCO_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return loco_err_set(err, LOCO_EFORMAT, "%s: key '%s' must be a positive integer", src, key);
    if (json_integer_value(v) > max)
        return loco_err_set(err, LOCO_EFORMAT,
                            "%s: key '%s' = %lld is more than loco's limit of %d (real CLIP text encoders are far "
                            "smaller: a corrupt config?)",
                            src, key, (long long)json_integer_value(v), max);
    *out = (int)json_integer_value(v);
    return LOCO_OK;
}

static loco_status parse_obj(const json_t *o, const char *src, loco_clip_text_config *c, loco_err *err) {
    loco_status st;
    if ((st = get_pos_int(o, "vocab_size", 1, LOCO_CLIP_TEXT_MAX_VOCAB, &c->vocab_size, src, err)) ||
        (st = get_pos_int(o, "hidden_size", 1, LOCO_CLIP_TEXT_MAX_HIDDEN, &c->hidden_size, src, err)) ||
        (st = get_pos_int(o, "intermediate_size", 1, LOCO_CLIP_TEXT_MAX_INTERMEDIATE, &c->intermediate_size, src,
                          err)) ||
        (st = get_pos_int(o, "num_hidden_layers", 1, LOCO_CLIP_TEXT_MAX_LAYERS, &c->num_hidden_layers, src, err)) ||
        (st = get_pos_int(o, "num_attention_heads", 1, LOCO_CLIP_TEXT_MAX_HIDDEN, &c->num_attention_heads, src,
                          err)) ||
        (st = get_pos_int(o, "max_position_embeddings", 1, LOCO_CLIP_TEXT_MAX_POSITIONS,
                          &c->max_position_embeddings, src, err)) ||
        (st = get_pos_int(o, "projection_dim", 0, LOCO_CLIP_TEXT_MAX_HIDDEN, &c->projection_dim, src, err)))
        return st;
    if (c->hidden_size % c->num_attention_heads != 0)
        return loco_err_set(err, LOCO_EFORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d", src,
                            c->hidden_size, c->num_attention_heads);

    const json_t *act = json_object_get(o, "hidden_act");
    if (act) {
        if (!json_is_string(act) || loco_act_from_name(json_string_value(act), &c->hidden_act) != 0)
            return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: hidden_act %s%s%s is not supported (quick_gelu, gelu)",
                                src, json_is_string(act) ? "'" : "", json_is_string(act) ? json_string_value(act) : "?",
                                json_is_string(act) ? "'" : "");
    }
    const json_t *eps = json_object_get(o, "layer_norm_eps");
    if (eps) {
        if (!json_is_number(eps) || !(json_number_value(eps) > 0) || !isfinite(json_number_value(eps)))
            return loco_err_set(err, LOCO_EFORMAT, "%s: layer_norm_eps must be a positive number", src);
        c->layer_norm_eps = (float)json_number_value(eps);
    }
    const json_t *eos = json_object_get(o, "eos_token_id");
    if (eos && !json_is_null(eos)) {
        if (!json_is_integer(eos) || json_integer_value(eos) < 0 || json_integer_value(eos) > INT32_MAX)
            return loco_err_set(err, LOCO_EFORMAT, "%s: eos_token_id must be a non-negative integer", src);
        c->eos_token_id = (int32_t)json_integer_value(eos);
    }
    const json_t *mask = json_object_get(o, "use_attention_mask");
    c->use_attention_mask = mask && json_is_true(mask);
    return LOCO_OK;
}

loco_status loco_clip_text_config_from_json(const json_t *root, const char *source, loco_clip_text_config *out,
                                            loco_err *err) {
    const char *src = source ? source : "config.json";
    if (!json_is_object(root)) return loco_err_set(err, LOCO_EFORMAT, "%s: expected a JSON object", src);
    loco_clip_text_config c;
    loco_clip_text_config_init(&c);

    /* The architectures list of the top level decides the head, also for a CLIPConfig whose
     * text tower is described in "text_config". */
    const json_t *arch = json_object_get(root, "architectures");
    if (json_is_array(arch)) {
        c.with_projection = 0;
        size_t i;
        const json_t *a;
        json_array_foreach(arch, i, a) {
            if (json_is_string(a) && strcmp(json_string_value(a), "CLIPTextModelWithProjection") == 0)
                c.with_projection = 1;
        }
    }
    const json_t *obj = root;
    const json_t *tc = json_object_get(root, "text_config");
    if (json_is_object(tc)) obj = tc;
    loco_status st = parse_obj(obj, src, &c, err);
    if (st) return st;
    /* CLIPConfig keeps the projection width at the top level */
    if (obj != root && c.projection_dim == 0 &&
        (st = get_pos_int(root, "projection_dim", 0, LOCO_CLIP_TEXT_MAX_HIDDEN, &c.projection_dim, src, err)))
        return st;
    *out = c;
    return LOCO_OK;
}

loco_status loco_clip_text_config_parse(const char *json_text, size_t len, const char *source,
                                        loco_clip_text_config *out, loco_err *err) {
    const char *src = source ? source : "config.json";
    json_error_t je;
    json_t *root = json_loadb(json_text, len, 0, &je);
    if (!root) return loco_err_set(err, LOCO_EFORMAT, "%s:%d: invalid JSON: %s", src, je.line, je.text);
    loco_status st = loco_clip_text_config_from_json(root, src, out, err);
    json_decref(root);
    return st;
}

loco_status loco_clip_text_config_load(const char *path, loco_clip_text_config *out, loco_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return loco_err_set(err, LOCO_EIO, "%s: cannot open: %s", path, strerror(errno));
    /* config files are a few hundred bytes; anything huge is not a config */
    const long cap = 16L << 20;
    char *buf = malloc((size_t)cap + 1);
    if (!buf) {
        fclose(f);
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory reading the config", path);
    }
    size_t n = fread(buf, 1, (size_t)cap + 1, f);
    int rd_err = ferror(f);
    fclose(f);
    loco_status st;
    if (rd_err)
        st = loco_err_set(err, LOCO_EIO, "%s: read error", path);
    else if (n > (size_t)cap)
        st = loco_err_set(err, LOCO_EFORMAT, "%s: larger than %ld bytes, not a config file", path, cap);
    else
        st = loco_clip_text_config_parse(buf, n, path, out, err);
    free(buf);
    return st;
}
