/* ldm_mapping.c: LDM/CompVis/sgm single-file names -> diffusers names (UNet, VAE, CLIP,
 * OpenCLIP), following diffusers' loaders/single_file_utils.py. Keys are parsed component by
 * component (never by substring search, which confuses input_blocks.1 with input_blocks.10). */
#include "ldm_mapping.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small parsing helpers ------------------------------------------------------------------ */

static int starts(const char *s, const char *prefix, const char **rest) {
    size_t n = strlen(prefix);
    if (strncmp(s, prefix, n) != 0) return 0;
    if (rest) *rest = s + n;
    return 1;
}

/* Parse "<digits>." at *p; advances past the dot. Indices above 100000 are treated as malformed. */
static int take_index(const char **p, int *out) {
    const char *s = *p;
    if (*s < '0' || *s > '9') return 0;
    long v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s - '0');
        if (v > 100000) return 0;
        s++;
    }
    if (*s != '.') return 0;
    *out = (int)v;
    *p = s + 1;
    return 1;
}

static loco_ldm_result put(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static loco_ldm_result put(char *buf, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    if (r < 0 || (size_t)r >= n) {
        if (n) snprintf(buf, n, "name too long");
        return LOCO_LDM_BAD;
    }
    return LOCO_LDM_MAPPED;
}

static loco_ldm_result bad(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static loco_ldm_result bad(char *buf, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (n) vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    return LOCO_LDM_BAD;
}

/* ---- UNet ------------------------------------------------------------------------------------ */

static int json_int_field(const json_t *cfg, const char *key, int *out) {
    const json_t *v = json_object_get(cfg, key);
    if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) < 1000) {
        *out = (int)json_integer_value(v);
        return 1;
    }
    /* diffusers allows a per-block list; the LDM index arithmetic needs one value for all. */
    if (json_is_array(v) && json_array_size(v) > 0) {
        json_int_t first = json_integer_value(json_array_get(v, 0));
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!json_is_integer(json_array_get(v, i)) || json_integer_value(json_array_get(v, i)) != first) return 0;
        if (first <= 0 || first >= 1000) return 0;
        *out = (int)first;
        return 1;
    }
    return 0;
}

static loco_status block_types(const json_t *cfg, const char *key, int n_blocks, uint32_t *mask, loco_err *err) {
    const json_t *a = json_object_get(cfg, key);
    if (!json_is_array(a) || (int)json_array_size(a) != n_blocks)
        return loco_err_set(err, LOCO_EFORMAT, "unet config: \"%s\" must be a list of %d block type names", key,
                            n_blocks);
    *mask = 0;
    for (int b = 0; b < n_blocks; b++) {
        const char *t = json_string_value(json_array_get(a, (size_t)b));
        if (!t) return loco_err_set(err, LOCO_EFORMAT, "unet config: \"%s\"[%d] is not a string", key, b);
        if (strstr(t, "CrossAttn")) *mask |= 1u << b;
    }
    return LOCO_OK;
}

loco_status loco_ldm_unet_layout_from_config(const json_t *cfg, loco_ldm_unet_layout *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!json_is_object(cfg)) return loco_err_set(err, LOCO_EINVAL, "unet config: not a JSON object");
    if (!json_int_field(cfg, "layers_per_block", &out->layers_per_block))
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "unet config: \"layers_per_block\" must be a positive integer (or one value per block)");
    const json_t *boc = json_object_get(cfg, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > 16)
        return loco_err_set(err, LOCO_EFORMAT, "unet config: \"block_out_channels\" must be a list of 1 to 16 ints");
    out->n_blocks = (int)json_array_size(boc);
    loco_status st = block_types(cfg, "down_block_types", out->n_blocks, &out->down_attn, err);
    if (st == LOCO_OK) st = block_types(cfg, "up_block_types", out->n_blocks, &out->up_attn, err);
    const char *add = json_string_value(json_object_get(cfg, "addition_embed_type"));
    out->label_emb_is_addition = add && strcmp(add, "text_time") == 0;
    return st;
}

/* Inside a resnet: LDM's Sequential indices -> diffusers' named layers. */
static loco_ldm_result unet_resnet(const char *head, const char *rest, char *buf, size_t n) {
    static const char *const map[][2] = {
        {"in_layers.0.", "norm1."},  {"in_layers.2.", "conv1."},          {"out_layers.0.", "norm2."},
        {"out_layers.3.", "conv2."}, {"emb_layers.1.", "time_emb_proj."}, {"skip_connection.", "conv_shortcut."},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        const char *tail;
        if (starts(rest, map[i][0], &tail)) return put(buf, n, "%s%s%s", head, map[i][1], tail);
    }
    return bad(buf, n, "unknown resnet parameter '%s'", rest);
}

loco_ldm_result loco_ldm_unet_name(const char *key, const loco_ldm_unet_layout *L, char *buf, size_t n) {
    static const char *const fixed[][2] = {
        {"time_embed.0.", "time_embedding.linear_1."},
        {"time_embed.2.", "time_embedding.linear_2."},
        {"out.0.", "conv_norm_out."},
        {"out.2.", "conv_out."},
    };
    const char *r;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (starts(key, fixed[i][0], &r)) return put(buf, n, "%s%s", fixed[i][1], r);
    const char *emb = L->label_emb_is_addition ? "add_embedding" : "class_embedding";
    if (starts(key, "label_emb.0.0.", &r)) return put(buf, n, "%s.linear_1.%s", emb, r);
    if (starts(key, "label_emb.0.2.", &r)) return put(buf, n, "%s.linear_2.%s", emb, r);
    if (strcmp(key, "label_emb.weight") == 0) return put(buf, n, "class_embedding.weight");

    const int per = L->layers_per_block + 1; /* resnets (+ a downsampler/upsampler slot) per level */
    int i, slot;
    if (starts(key, "input_blocks.", &r)) {
        if (!take_index(&r, &i) || !take_index(&r, &slot)) return bad(buf, n, "malformed input_blocks key");
        if (i == 0) {
            if (slot != 0) return bad(buf, n, "input_blocks.0 has only conv_in");
            return put(buf, n, "conv_in.%s", r);
        }
        int b = (i - 1) / per, j = (i - 1) % per;
        if (b >= L->n_blocks)
            return bad(buf, n, "input_blocks.%d is beyond the config's %d blocks (layers_per_block %d)", i, L->n_blocks,
                       L->layers_per_block);
        if (slot == 0 && starts(r, "op.", &r)) {
            if (j != L->layers_per_block || b == L->n_blocks - 1)
                return bad(buf, n, "input_blocks.%d has a downsampler where the config has none", i);
            return put(buf, n, "down_blocks.%d.downsamplers.0.conv.%s", b, r);
        }
        if (j == L->layers_per_block)
            return bad(buf, n, "input_blocks.%d should hold only a downsampler (layers_per_block %d)", i,
                       L->layers_per_block);
        char head[64];
        if (slot == 0) {
            snprintf(head, sizeof head, "down_blocks.%d.resnets.%d.", b, j);
            return unet_resnet(head, r, buf, n);
        }
        if (slot == 1) {
            if (!(L->down_attn >> b & 1))
                return bad(buf, n, "input_blocks.%d has attention but down_blocks.%d is not a CrossAttn block", i, b);
            return put(buf, n, "down_blocks.%d.attentions.%d.%s", b, j, r);
        }
        return bad(buf, n, "input_blocks.%d.%d is not a known layer", i, slot);
    }
    if (starts(key, "middle_block.", &r)) {
        if (!take_index(&r, &slot)) return bad(buf, n, "malformed middle_block key");
        if (slot == 0 || slot == 2)
            return unet_resnet(slot == 0 ? "mid_block.resnets.0." : "mid_block.resnets.1.", r, buf, n);
        if (slot == 1) return put(buf, n, "mid_block.attentions.0.%s", r);
        return bad(buf, n, "middle_block.%d is not a known layer", slot);
    }
    if (starts(key, "output_blocks.", &r)) {
        if (!take_index(&r, &i) || !take_index(&r, &slot)) return bad(buf, n, "malformed output_blocks key");
        int b = i / per, j = i % per;
        if (b >= L->n_blocks)
            return bad(buf, n, "output_blocks.%d is beyond the config's %d blocks (layers_per_block %d)", i,
                       L->n_blocks, L->layers_per_block);
        int has_attn = L->up_attn >> b & 1;
        const char *tail;
        /* The upsampler sits after the last resnet of every level but the last: at slot 1
         * when the level has no attention, else at slot 2. */
        if ((slot == 1 || slot == 2) && starts(r, "conv.", &tail)) {
            if (j != L->layers_per_block || b == L->n_blocks - 1 || slot != (has_attn ? 2 : 1))
                return bad(buf, n, "output_blocks.%d.%d is an upsampler where the config has none", i, slot);
            return put(buf, n, "up_blocks.%d.upsamplers.0.conv.%s", b, tail);
        }
        char head[64];
        if (slot == 0) {
            snprintf(head, sizeof head, "up_blocks.%d.resnets.%d.", b, j);
            return unet_resnet(head, r, buf, n);
        }
        if (slot == 1) {
            if (!has_attn)
                return bad(buf, n, "output_blocks.%d has attention but up_blocks.%d is not a CrossAttn block", i, b);
            return put(buf, n, "up_blocks.%d.attentions.%d.%s", b, j, r);
        }
        return bad(buf, n, "output_blocks.%d.%d is not a known layer", i, slot);
    }
    return LOCO_LDM_SKIP;
}

/* ---- VAE ------------------------------------------------------------------------------------- */

static loco_ldm_result vae_resnet(const char *head, const char *rest, char *buf, size_t n) {
    const char *tail;
    if (starts(rest, "nin_shortcut.", &tail)) return put(buf, n, "%sconv_shortcut.%s", head, tail);
    return put(buf, n, "%s%s", head, rest);
}

static loco_ldm_result vae_mid(const char *coder, const char *r, char *buf, size_t n) {
    static const char *const attn[][2] = {
        {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."},
    };
    const char *tail;
    char head[64];
    if (starts(r, "block_1.", &tail) || starts(r, "block_2.", &tail)) {
        snprintf(head, sizeof head, "%s.mid_block.resnets.%c.", coder, r[6] == '1' ? '0' : '1');
        return vae_resnet(head, tail, buf, n);
    }
    if (starts(r, "attn_1.", &r)) {
        for (size_t i = 0; i < sizeof attn / sizeof attn[0]; i++)
            if (starts(r, attn[i][0], &tail))
                return put(buf, n, "%s.mid_block.attentions.0.%s%s", coder, attn[i][1], tail);
        return bad(buf, n, "unknown VAE attention parameter '%s'", r);
    }
    return bad(buf, n, "unknown VAE mid-block parameter '%s'", r);
}

loco_ldm_result loco_ldm_vae_name(const char *key, int n_blocks, char *buf, size_t n) {
    static const char *const same[] = {"encoder.conv_in.",  "encoder.conv_out.", "decoder.conv_in.",
                                       "decoder.conv_out.", "quant_conv.",       "post_quant_conv."};
    const char *r;
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        if (starts(key, same[i], NULL)) return put(buf, n, "%s", key);
    if (starts(key, "encoder.norm_out.", &r)) return put(buf, n, "encoder.conv_norm_out.%s", r);
    if (starts(key, "decoder.norm_out.", &r)) return put(buf, n, "decoder.conv_norm_out.%s", r);
    if (starts(key, "encoder.mid.", &r)) return vae_mid("encoder", r, buf, n);
    if (starts(key, "decoder.mid.", &r)) return vae_mid("decoder", r, buf, n);
    int i, j;
    char head[64];
    if (starts(key, "encoder.down.", &r)) {
        if (!take_index(&r, &i) || i >= n_blocks)
            return bad(buf, n, "encoder.down index out of range for %d blocks", n_blocks);
        if (starts(r, "downsample.conv.", &r))
            return put(buf, n, "encoder.down_blocks.%d.downsamplers.0.conv.%s", i, r);
        if (!starts(r, "block.", &r) || !take_index(&r, &j)) return bad(buf, n, "malformed encoder.down key");
        snprintf(head, sizeof head, "encoder.down_blocks.%d.resnets.%d.", i, j);
        return vae_resnet(head, r, buf, n);
    }
    if (starts(key, "decoder.up.", &r)) {
        /* LDM numbers decoder levels from the lowest resolution up; diffusers in run order. */
        if (!take_index(&r, &i) || i >= n_blocks)
            return bad(buf, n, "decoder.up index out of range for %d blocks", n_blocks);
        int b = n_blocks - 1 - i;
        if (starts(r, "upsample.conv.", &r)) return put(buf, n, "decoder.up_blocks.%d.upsamplers.0.conv.%s", b, r);
        if (!starts(r, "block.", &r) || !take_index(&r, &j)) return bad(buf, n, "malformed decoder.up key");
        snprintf(head, sizeof head, "decoder.up_blocks.%d.resnets.%d.", b, j);
        return vae_resnet(head, r, buf, n);
    }
    return LOCO_LDM_SKIP;
}

const char *loco_ldm_vae_prefix(const loco_safetensors *f) {
    static const char *const prefixes[] = {"first_stage_model.", "vae."};
    size_t n = loco_safetensors_count(f);
    for (size_t p = 0; p < 2; p++)
        for (size_t i = 0; i < n; i++)
            if (starts(loco_safetensors_at(f, i)->name, prefixes[p], NULL)) return prefixes[p];
    return NULL;
}

/* ---- text encoders --------------------------------------------------------------------------- */

loco_ldm_result loco_ldm_clip_name(const char *key, char *buf, size_t n) {
    const char *r = key;
    int had_prefix = starts(key, "text_model.", &r);
    /* position_ids is a buffer that old transformers versions saved; newer ones recreate it. */
    if (strcmp(r, "embeddings.position_ids") == 0) return LOCO_LDM_SKIP;
    if (starts(r, "embeddings.", NULL) || starts(r, "encoder.", NULL) || starts(r, "final_layer_norm.", NULL))
        return put(buf, n, "text_model.%s", r);
    if (!had_prefix && strcmp(key, "text_projection.weight") == 0) return put(buf, n, "%s", key);
    return LOCO_LDM_SKIP;
}

loco_ldm_result loco_ldm_open_clip_name(const char *key, int num_layers, char *buf, size_t n) {
    const char *r;
    if (strcmp(key, "token_embedding.weight") == 0) return put(buf, n, "text_model.embeddings.token_embedding.weight");
    if (strcmp(key, "positional_embedding") == 0) return put(buf, n, "text_model.embeddings.position_embedding.weight");
    if (starts(key, "ln_final.", &r)) return put(buf, n, "text_model.final_layer_norm.%s", r);
    if (!starts(key, "transformer.resblocks.", &r)) return LOCO_LDM_SKIP;
    int i;
    if (!take_index(&r, &i)) return bad(buf, n, "malformed resblocks key");
    if (i >= num_layers) return LOCO_LDM_SKIP; /* SD 2.x: the last block is not used */
    static const char *const map[][2] = {
        {"ln_1.", "layer_norm1."},
        {"ln_2.", "layer_norm2."},
        {"mlp.c_fc.", "mlp.fc1."},
        {"mlp.c_proj.", "mlp.fc2."},
        {"attn.out_proj.", "self_attn.out_proj."},
    };
    const char *tail;
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
        if (starts(r, map[k][0], &tail)) return put(buf, n, "text_model.encoder.layers.%d.%s%s", i, map[k][1], tail);
    if (strcmp(r, "attn.in_proj_weight") == 0 || strcmp(r, "attn.in_proj_bias") == 0)
        return bad(buf, n, "in_proj is split, not renamed");
    return bad(buf, n, "unknown OpenCLIP block parameter '%s'", r);
}

/* ---- component mappings ------------------------------------------------------------------------ */

typedef loco_ldm_result (*name_fn)(const char *key, const void *ctx, char *buf, size_t n);

static loco_ldm_result unet_fn(const char *key, const void *ctx, char *buf, size_t n) {
    return loco_ldm_unet_name(key, ctx, buf, n);
}
static loco_ldm_result vae_fn(const char *key, const void *ctx, char *buf, size_t n) {
    return loco_ldm_vae_name(key, *(const int *)ctx, buf, n);
}
static loco_ldm_result clip_fn(const char *key, const void *ctx, char *buf, size_t n) {
    return loco_ldm_clip_name(key, buf, n);
}

/* Map every key under prefix through fn; `fix` may adjust the tensor (the VAE's squeeze). */
static loco_status map_all(const loco_safetensors *f, const char *prefix, name_fn fn, const void *ctx,
                           void (*fix)(const char *name, loco_stored_tensor *t), loco_weights *w, loco_err *err) {
    size_t count = 0, nt = loco_safetensors_count(f);
    char name[512];
    for (size_t i = 0; i < nt; i++) {
        const loco_stored_tensor *t = loco_safetensors_at(f, i);
        const char *key;
        if (!starts(t->name, prefix, &key)) continue;
        loco_ldm_result r = fn(key, ctx, name, sizeof name);
        if (r == LOCO_LDM_SKIP) continue;
        if (r == LOCO_LDM_BAD)
            return loco_err_set(err, LOCO_EFORMAT, "%s: key '%s': %s", loco_safetensors_path(f), t->name, name);
        loco_stored_tensor v = *t;
        if (fix) fix(name, &v);
        loco_status st = loco_weights_add(w, name, &v, NULL, err);
        if (st != LOCO_OK) return loco_err_prefix(err, "%s: key '%s'", loco_safetensors_path(f), t->name);
        count++;
    }
    if (count == 0)
        return loco_err_set(err, LOCO_ENOTFOUND, "%s: no tensors under '%s'", loco_safetensors_path(f), prefix);
    return LOCO_OK;
}

loco_status loco_ldm_map_unet(const loco_safetensors *f, const json_t *unet_config, loco_weights *w, loco_err *err) {
    loco_ldm_unet_layout L;
    loco_status st = loco_ldm_unet_layout_from_config(unet_config, &L, err);
    if (st != LOCO_OK) return st;
    return map_all(f, LOCO_LDM_UNET_PREFIX, unet_fn, &L, NULL, w, err);
}

/* LDM's VAE attention uses 1×1 convs ([C, C, 1, 1]); diffusers' are Linear ([C, C]). The bytes
 * are the same, so a reshaped view suffices. */
static void vae_squeeze(const char *name, loco_stored_tensor *t) {
    size_t l = strlen(name);
    if (l < 7 || strcmp(name + l - 7, ".weight") != 0 || !strstr(name, ".mid_block.attentions.0.")) return;
    if (strstr(name, "group_norm")) return;
    while (t->ndim > 2 && t->shape[t->ndim - 1] == 1) t->ndim--;
}

loco_status loco_ldm_map_vae(const loco_safetensors *f, const json_t *vae_config, loco_weights *w, loco_err *err) {
    const json_t *boc = json_object_get(vae_config, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > 16)
        return loco_err_set(err, LOCO_EFORMAT, "vae config: \"block_out_channels\" must be a list of 1 to 16 ints");
    int nb = (int)json_array_size(boc);
    const char *prefix = loco_ldm_vae_prefix(f);
    if (!prefix)
        return loco_err_set(err, LOCO_ENOTFOUND, "%s: no VAE tensors (first_stage_model.* or vae.*)",
                            loco_safetensors_path(f));
    return map_all(f, prefix, vae_fn, &nb, vae_squeeze, w, err);
}

loco_status loco_ldm_map_clip(const loco_safetensors *f, const char *prefix, loco_weights *w, loco_err *err) {
    return map_all(f, prefix, clip_fn, NULL, NULL, w, err);
}

/* Add rows [row0, row0+rows) of a 1-D or 2-D tensor as a view into the file. */
static loco_status add_rows(loco_weights *w, const char *name, const loco_stored_tensor *t, int64_t row0, int64_t rows,
                            loco_err *err) {
    loco_stored_tensor v = *t;
    size_t row_bytes = loco_dtype_size(t->dtype) * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
    v.shape[0] = rows;
    v.data = (const uint8_t *)t->data + (size_t)row0 * row_bytes;
    v.nbytes = (size_t)rows * row_bytes;
    return loco_weights_add(w, name, &v, NULL, err);
}

static loco_status split_in_proj(const loco_safetensors *f, const loco_stored_tensor *t, int layer, int is_weight,
                                 loco_weights *w, loco_err *err) {
    if (t->ndim != (is_weight ? 2 : 1) || t->shape[0] % 3 != 0 || t->shape[0] == 0 ||
        (is_weight && t->shape[1] * 3 != t->shape[0]))
        return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' must have shape [3d%s] to split into q, k, v",
                            loco_safetensors_path(f), t->name, is_weight ? ", d" : "");
    int64_t d = t->shape[0] / 3;
    static const char qkv[3] = {'q', 'k', 'v'};
    char name[160];
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%c_proj.%s", layer, qkv[k],
                 is_weight ? "weight" : "bias");
        loco_status st = add_rows(w, name, t, k * d, d, err);
        if (st != LOCO_OK) return st;
    }
    return LOCO_OK;
}

/* text_projection is stored [d, p] (x @ P); a Linear weight is [p, d]. */
static loco_status add_transposed(const loco_safetensors *f, const loco_stored_tensor *t, loco_weights *w,
                                  loco_err *err) {
    if (t->ndim != 2 || t->shape[0] == 0 || t->shape[1] == 0)
        return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' must be a non-empty 2-D matrix", loco_safetensors_path(f),
                            t->name);
    size_t es = loco_dtype_size(t->dtype), r = (size_t)t->shape[0], c = (size_t)t->shape[1];
    uint8_t *dst = malloc(t->nbytes ? t->nbytes : 1);
    if (!dst)
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory transposing '%s'", loco_safetensors_path(f), t->name);
    const uint8_t *src = t->data;
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < c; j++) memcpy(dst + (j * r + i) * es, src + (i * c + j) * es, es);
    loco_stored_tensor v = *t;
    v.shape[0] = (int64_t)c;
    v.shape[1] = (int64_t)r;
    return loco_weights_add(w, "text_projection.weight", &v, dst, err); /* takes dst, also on failure */
}

loco_status loco_ldm_map_open_clip(const loco_safetensors *f, const char *prefix, int num_layers, int with_projection,
                                   loco_weights *w, loco_err *err) {
    size_t count = 0, nt = loco_safetensors_count(f);
    char name[512];
    for (size_t i = 0; i < nt; i++) {
        const loco_stored_tensor *t = loco_safetensors_at(f, i);
        const char *key, *r;
        if (!starts(t->name, prefix, &key)) continue;
        loco_status st = LOCO_OK;
        int layer;
        if (strcmp(key, "text_projection") == 0) {
            if (!with_projection) continue;
            st = add_transposed(f, t, w, err);
        } else if (starts(key, "transformer.resblocks.", &r) && take_index(&r, &layer) &&
                   (strcmp(r, "attn.in_proj_weight") == 0 || strcmp(r, "attn.in_proj_bias") == 0)) {
            if (layer >= num_layers) continue;
            st = split_in_proj(f, t, layer, strcmp(r, "attn.in_proj_weight") == 0, w, err);
        } else {
            loco_ldm_result res = loco_ldm_open_clip_name(key, num_layers, name, sizeof name);
            if (res == LOCO_LDM_SKIP) continue;
            if (res == LOCO_LDM_BAD)
                return loco_err_set(err, LOCO_EFORMAT, "%s: key '%s': %s", loco_safetensors_path(f), t->name, name);
            st = loco_weights_add(w, name, t, NULL, err);
        }
        if (st != LOCO_OK) return st;
        count++;
    }
    if (count == 0)
        return loco_err_set(err, LOCO_ENOTFOUND, "%s: no tensors under '%s'", loco_safetensors_path(f), prefix);
    return LOCO_OK;
}
