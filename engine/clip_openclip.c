/* clip_openclip.c: open_clip model folders (open_clip_config.json + open_clip_model.safetensors,
 * the layout of the laion/ and timm/ repositories on the hub) as a CLIP scorer: the config turned
 * into the transformers-style tower configs, the keys mapped to transformers names (the text
 * tower through engine/ldm_mapping.h, the vision tower here: in_proj split into q/k/v as row views
 * of the file, visual.proj transposed), and open_clip's eval transform as preprocessing
 * (torchvision Resize on the PIL image = the same PIL bicubic, CenterCrop with rounded offsets,
 * ToTensor's float32 division by 255, Normalize). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip_score.h"
#include "clip_score_impl.h"
#include "ldm_mapping.h"

static int cfg_int(const json_t *o, const char *key, int def) {
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : def;
}

static double cfg_num(const json_t *o, const char *key, double def) {
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : def;
}

loco_status loco_openclip_configs(const json_t *root, const char *src, loco_clip_text_config *tc,
                                  loco_clip_vision_config *vc, loco_clip_preprocess_config *pc, loco_err *err) {
    const json_t *mc = json_object_get(root, "model_cfg");
    const json_t *vis = json_object_get(mc, "vision_cfg"), *txt = json_object_get(mc, "text_cfg");
    if (!json_is_object(mc) || !json_is_object(vis) || !json_is_object(txt))
        return loco_err_set(err, LOCO_EFORMAT, "%s: model_cfg with vision_cfg and text_cfg is required", src);
    if (json_object_get(vis, "timm_model_name") || json_object_get(txt, "hf_model_name"))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: timm / Hugging Face towers are not supported (ViT + CLIP text only)",
                            src);
    const int embed = cfg_int(mc, "embed_dim", 0);
    const loco_act act = json_is_true(json_object_get(mc, "quick_gelu")) ? LOCO_ACT_QUICK_GELU : LOCO_ACT_GELU;
    loco_clip_vision_config_init(vc);
    vc->hidden_size = cfg_int(vis, "width", 768);
    vc->num_hidden_layers = cfg_int(vis, "layers", 12);
    vc->image_size = cfg_int(vis, "image_size", 224);
    vc->patch_size = cfg_int(vis, "patch_size", 16);
    const int head_width = cfg_int(vis, "head_width", 64);
    vc->num_attention_heads = head_width > 0 ? vc->hidden_size / head_width : 0;
    vc->intermediate_size = (int)(vc->hidden_size * cfg_num(vis, "mlp_ratio", 4.0));
    vc->projection_dim = embed;
    vc->hidden_act = act;
    loco_clip_text_config_init(tc);
    tc->hidden_size = cfg_int(txt, "width", 512);
    tc->num_hidden_layers = cfg_int(txt, "layers", 12);
    tc->num_attention_heads = cfg_int(txt, "heads", 8);
    tc->vocab_size = cfg_int(txt, "vocab_size", 49408);
    tc->max_position_embeddings = cfg_int(txt, "context_length", 77);
    tc->intermediate_size = (int)(tc->hidden_size * cfg_num(txt, "mlp_ratio", 4.0));
    tc->hidden_act = act;
    tc->projection_dim = embed;
    tc->with_projection = 1;
    tc->eos_token_id = 2; /* open_clip pools at argmax(ids): the end-of-text id is the largest */
    if (embed <= 0 || vc->num_attention_heads <= 0 || vc->hidden_size % head_width || tc->hidden_size % tc->num_attention_heads ||
        vc->image_size % vc->patch_size)
        return loco_err_set(err, LOCO_EFORMAT, "%s: inconsistent model_cfg sizes", src);
    if (json_is_true(json_object_get(vis, "no_ln_pre")) || json_object_get(vis, "pool_type") ||
        json_is_true(json_object_get(txt, "no_causal_mask")) || json_object_get(txt, "pool_type"))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: only the standard CLIP ViT/text towers are supported", src);
    /* open_clip's eval transform */
    loco_clip_preprocess_config_init(pc, vc->image_size);
    pc->crop_round = 1;
    pc->rescale_by_division = 1;
    const json_t *pre = json_object_get(root, "preprocess_cfg");
    if (json_is_object(pre)) {
        const json_t *m = json_object_get(pre, "mean"), *s = json_object_get(pre, "std");
        for (int k = 0; k < 3 && json_is_array(m) && json_array_size(m) == 3; k++)
            pc->image_mean[k] = (float)json_number_value(json_array_get(m, (size_t)k));
        for (int k = 0; k < 3 && json_is_array(s) && json_array_size(s) == 3; k++)
            pc->image_std[k] = (float)json_number_value(json_array_get(s, (size_t)k));
        const json_t *interp = json_object_get(pre, "interpolation");
        if (json_is_string(interp) && loco_pil_filter_from_name(json_string_value(interp), &pc->resample))
            return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: interpolation '%s' is not supported", src,
                                json_string_value(interp));
        const json_t *rm = json_object_get(pre, "resize_mode");
        if (json_is_string(rm) && strcmp(json_string_value(rm), "shortest") != 0)
            return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: resize_mode '%s' is not supported (shortest)", src,
                                json_string_value(rm));
        for (int k = 0; k < 3; k++)
            if (!(pc->image_std[k] != 0.0f)) return loco_err_set(err, LOCO_EFORMAT, "%s: preprocess std is zero", src);
    }
    return LOCO_OK;
}

static int starts(const char *s, const char *p, const char **rest) {
    size_t n = strlen(p);
    if (strncmp(s, p, n)) return 0;
    if (rest) *rest = s + n;
    return 1;
}

/* A row range of a tensor in the file, added without copying. */
static loco_status add_rows(loco_weights *w, const char *name, const loco_stored_tensor *t, int64_t row0, int64_t rows,
                            loco_err *err) {
    loco_stored_tensor v = *t;
    const size_t row_bytes = loco_dtype_size(t->dtype) * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
    v.shape[0] = rows;
    v.data = (const uint8_t *)t->data + (size_t)row0 * row_bytes;
    v.nbytes = (size_t)rows * row_bytes;
    return loco_weights_add(w, name, &v, NULL, err);
}

static loco_status add_transposed(const loco_stored_tensor *t, const char *name, loco_weights *w, loco_err *err) {
    if (t->ndim != 2 || t->shape[0] == 0 || t->shape[1] == 0)
        return loco_err_set(err, LOCO_EFORMAT, "'%s' must be a non-empty 2-D matrix", t->name);
    const size_t es = loco_dtype_size(t->dtype), r = (size_t)t->shape[0], c = (size_t)t->shape[1];
    uint8_t *dst = malloc(t->nbytes ? t->nbytes : 1);
    if (!dst) return loco_err_set(err, LOCO_ENOMEM, "out of memory transposing '%s'", t->name);
    const uint8_t *src = t->data;
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < c; j++) memcpy(dst + (j * r + i) * es, src + (i * c + j) * es, es);
    loco_stored_tensor v = *t;
    v.shape[0] = (int64_t)c;
    v.shape[1] = (int64_t)r;
    return loco_weights_add(w, name, &v, dst, err);
}

/* visual.* keys to transformers' vision_model.* / visual_projection names. */
static loco_status map_visual(const loco_safetensors *f, loco_weights *w, loco_err *err) {
    static const char *const direct[][2] = {
        {"visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"},
        {"visual.class_embedding", "vision_model.embeddings.class_embedding"},
        {"visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"},
        {"visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"},
        {"visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"},
        {"visual.ln_post.weight", "vision_model.post_layernorm.weight"},
        {"visual.ln_post.bias", "vision_model.post_layernorm.bias"},
    };
    static const char *const block[][2] = {
        {"ln_1.", "layer_norm1."},      {"ln_2.", "layer_norm2."},
        {"mlp.c_fc.", "mlp.fc1."},      {"mlp.c_proj.", "mlp.fc2."},
        {"attn.out_proj.", "self_attn.out_proj."},
    };
    char name[256];
    for (size_t i = 0; i < loco_safetensors_count(f); i++) {
        const loco_stored_tensor *t = loco_safetensors_at(f, i);
        const char *r;
        loco_status st = LOCO_OK;
        if (!starts(t->name, "visual.", NULL)) continue;
        if (!strcmp(t->name, "visual.proj")) {
            st = add_transposed(t, "visual_projection.weight", w, err); /* stored [width, embed] (x @ P) */
        } else if (starts(t->name, "visual.transformer.resblocks.", &r)) {
            char *end;
            long layer = strtol(r, &end, 10);
            if (end == r || *end != '.') return loco_err_set(err, LOCO_EFORMAT, "%s: malformed key '%s'",
                                                             loco_safetensors_path(f), t->name);
            r = end + 1;
            if (!strcmp(r, "attn.in_proj_weight") || !strcmp(r, "attn.in_proj_bias")) {
                const int is_w = !strcmp(r, "attn.in_proj_weight");
                if (t->shape[0] % 3) return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' is not [3d, ...]",
                                                         loco_safetensors_path(f), t->name);
                static const char qkv[3] = {'q', 'k', 'v'};
                for (int k = 0; k < 3 && !st; k++) {
                    snprintf(name, sizeof name, "vision_model.encoder.layers.%ld.self_attn.%c_proj.%s", layer, qkv[k],
                             is_w ? "weight" : "bias");
                    st = add_rows(w, name, t, k * (t->shape[0] / 3), t->shape[0] / 3, err);
                }
            } else {
                size_t k = 0;
                const char *tail = NULL;
                while (k < sizeof block / sizeof block[0] && !starts(r, block[k][0], &tail)) k++;
                if (k == sizeof block / sizeof block[0])
                    return loco_err_set(err, LOCO_EFORMAT, "%s: unknown vision block parameter '%s'",
                                        loco_safetensors_path(f), t->name);
                snprintf(name, sizeof name, "vision_model.encoder.layers.%ld.%s%s", layer, block[k][1], tail);
                st = loco_weights_add(w, name, t, NULL, err);
            }
        } else {
            size_t k = 0;
            while (k < sizeof direct / sizeof direct[0] && strcmp(t->name, direct[k][0])) k++;
            if (k == sizeof direct / sizeof direct[0])
                return loco_err_set(err, LOCO_EFORMAT, "%s: unknown vision parameter '%s'", loco_safetensors_path(f),
                                    t->name);
            st = loco_weights_add(w, direct[k][1], t, NULL, err);
        }
        if (st) return st;
    }
    return LOCO_OK;
}

loco_status loco_openclip_weights(const char *path, int text_layers, loco_weights **out, loco_err *err) {
    *out = NULL;
    loco_safetensors *f = NULL;
    loco_weights *w = NULL;
    loco_status st = loco_safetensors_open(path, &f, err);
    if (st) return st;
    if ((st = loco_weights_new_empty(path, &w, err))) {
        loco_safetensors_close(f);
        return st;
    }
    loco_weights_adopt_file(w, f); /* the views point into the mapping */
    if ((st = loco_ldm_map_open_clip(f, "", text_layers, 1, w, err)) || (st = map_visual(f, w, err))) {
        loco_weights_free(w);
        return st;
    }
    *out = w;
    return LOCO_OK;
}
