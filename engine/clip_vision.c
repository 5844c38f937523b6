/* clip_vision.c: CLIPVisionModel (+ visual_projection) forward on the backend ops, operation by
 * operation as transformers' modeling_clip.py computes it. */
#include "clip_vision.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip_text.h" /* LOCO_CLIP_TEXT_MAX_LAYERS: the same bound for both towers */
#include "nn.h"

typedef struct vlayer {
    loco_tensor ln1_w, ln1_b, ln2_w, ln2_b;
    loco_lin q, k, v, o, fc1, fc2;
} vlayer;

struct loco_clip_vision {
    loco_backend *be;
    loco_clip_vision_config cfg;
    loco_params params; /* owns every tensor below */
    loco_tensor patch_w, class_emb, pos_emb, pre_w, pre_b, post_w, post_b;
    vlayer *layers;
    int has_projection;
    loco_lin proj;
};

void loco_clip_vision_config_init(loco_clip_vision_config *c) {
    memset(c, 0, sizeof *c);
    c->hidden_act = LOCO_ACT_QUICK_GELU;
    c->layer_norm_eps = 1e-5f;
    c->num_channels = 3;
}

static loco_status get_int(const json_t *o, const char *key, int required, int *out, const char *src, loco_err *err) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return loco_err_set(err, LOCO_EFORMAT, "%s: key '%s' is missing", src, key);
        return LOCO_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 24))
        return loco_err_set(err, LOCO_EFORMAT, "%s: key '%s' must be a positive integer", src, key);
    *out = (int)json_integer_value(v);
    return LOCO_OK;
}

loco_status loco_clip_vision_config_from_json(const json_t *root, const char *source, loco_clip_vision_config *out,
                                              loco_err *err) {
    const char *src = source ? source : "config.json";
    if (!json_is_object(root)) return loco_err_set(err, LOCO_EFORMAT, "%s: expected a JSON object", src);
    loco_clip_vision_config c;
    loco_clip_vision_config_init(&c);
    const json_t *obj = root, *vc = json_object_get(root, "vision_config");
    if (json_is_object(vc)) obj = vc;
    loco_status st;
    if ((st = get_int(obj, "hidden_size", 1, &c.hidden_size, src, err)) ||
        (st = get_int(obj, "intermediate_size", 1, &c.intermediate_size, src, err)) ||
        (st = get_int(obj, "num_hidden_layers", 1, &c.num_hidden_layers, src, err)) ||
        (st = get_int(obj, "num_attention_heads", 1, &c.num_attention_heads, src, err)) ||
        (st = get_int(obj, "image_size", 1, &c.image_size, src, err)) ||
        (st = get_int(obj, "patch_size", 1, &c.patch_size, src, err)) ||
        (st = get_int(obj, "num_channels", 0, &c.num_channels, src, err)) ||
        (st = get_int(obj, "projection_dim", 0, &c.projection_dim, src, err)))
        return st;
    /* CLIPConfig keeps the shared projection width at the top level */
    if (obj != root && (st = get_int(root, "projection_dim", 0, &c.projection_dim, src, err))) return st;
    /* the layer table is allocated from this count before any weight is read (real CLIP vision
     * towers have at most 48 layers) */
    if (c.num_hidden_layers > LOCO_CLIP_TEXT_MAX_LAYERS)
        return loco_err_set(err, LOCO_EFORMAT,
                            "%s: vision num_hidden_layers = %d is more than loco's limit of %d (a corrupt config?)", src,
                            c.num_hidden_layers, LOCO_CLIP_TEXT_MAX_LAYERS);
    if (c.hidden_size % c.num_attention_heads)
        return loco_err_set(err, LOCO_EFORMAT, "%s: vision hidden_size %d is not a multiple of num_attention_heads %d",
                            src, c.hidden_size, c.num_attention_heads);
    if (c.image_size % c.patch_size)
        return loco_err_set(err, LOCO_EFORMAT, "%s: image_size %d is not a multiple of patch_size %d", src,
                            c.image_size, c.patch_size);
    const json_t *act = json_object_get(obj, "hidden_act");
    if (act && (!json_is_string(act) || loco_act_from_name(json_string_value(act), &c.hidden_act) != 0))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: vision hidden_act %s is not supported (quick_gelu, gelu)", src,
                            json_is_string(act) ? json_string_value(act) : "(not a string)");
    const json_t *eps = json_object_get(obj, "layer_norm_eps");
    if (eps) {
        if (!json_is_number(eps) || !(json_number_value(eps) > 0) || !isfinite(json_number_value(eps)))
            return loco_err_set(err, LOCO_EFORMAT, "%s: vision layer_norm_eps must be a positive number", src);
        c.layer_norm_eps = (float)json_number_value(eps);
    }
    *out = c;
    return LOCO_OK;
}

void loco_clip_vision_free(loco_clip_vision *m) {
    if (!m) return;
    loco_params_free(&m->params);
    free(m->layers);
    free(m);
}

const loco_clip_vision_config *loco_clip_vision_get_config(const loco_clip_vision *m) { return &m->cfg; }
int loco_clip_vision_has_projection(const loco_clip_vision *m) { return m->has_projection; }

static loco_status load_layer(const loco_loader *ld, const loco_clip_vision_config *c, int i, vlayer *l,
                              loco_err *err) {
    char p[96];
    const int64_t D = c->hidden_size, d1[1] = {D};
    loco_status st;
    snprintf(p, sizeof p, "vision_model.encoder.layers.%d", i);
    char sub[128];
#define SUB(x) (snprintf(sub, sizeof sub, "%s.%s", p, x), sub)
    if ((st = loco_load_tensor(ld, p, "layer_norm1.weight", 1, d1, &l->ln1_w, err)) ||
        (st = loco_load_tensor(ld, p, "layer_norm1.bias", 1, d1, &l->ln1_b, err)) ||
        (st = loco_load_tensor(ld, p, "layer_norm2.weight", 1, d1, &l->ln2_w, err)) ||
        (st = loco_load_tensor(ld, p, "layer_norm2.bias", 1, d1, &l->ln2_b, err)) ||
        (st = loco_lin_load(ld, SUB("self_attn.q_proj"), c->hidden_size, c->hidden_size, 1, &l->q, err)) ||
        (st = loco_lin_load(ld, SUB("self_attn.k_proj"), c->hidden_size, c->hidden_size, 1, &l->k, err)) ||
        (st = loco_lin_load(ld, SUB("self_attn.v_proj"), c->hidden_size, c->hidden_size, 1, &l->v, err)) ||
        (st = loco_lin_load(ld, SUB("self_attn.out_proj"), c->hidden_size, c->hidden_size, 1, &l->o, err)) ||
        (st = loco_lin_load(ld, SUB("mlp.fc1"), c->hidden_size, c->intermediate_size, 1, &l->fc1, err)) ||
        (st = loco_lin_load(ld, SUB("mlp.fc2"), c->intermediate_size, c->hidden_size, 1, &l->fc2, err)))
        return st;
#undef SUB
    return LOCO_OK;
}

loco_status loco_clip_vision_create(loco_backend *be, const loco_clip_vision_config *cfg, const loco_weights *w,
                                    int with_projection, loco_clip_vision **out, loco_err *err) {
    *out = NULL;
    if (!be || !cfg || !w) return loco_err_set(err, LOCO_EINVAL, "clip_vision: backend, config and weights are required");
    if (cfg->hidden_size <= 0 || cfg->num_hidden_layers <= 0 || cfg->num_attention_heads <= 0 ||
        cfg->intermediate_size <= 0 || cfg->image_size <= 0 || cfg->patch_size <= 0 || cfg->num_channels <= 0 ||
        cfg->hidden_size % cfg->num_attention_heads || cfg->image_size % cfg->patch_size)
        return loco_err_set(err, LOCO_EINVAL, "clip_vision: config sizes are unset or inconsistent");
    loco_clip_vision *m = calloc(1, sizeof *m);
    if (!m) return loco_err_set(err, LOCO_ENOMEM, "clip_vision: out of memory");
    m->be = be;
    m->cfg = *cfg;
    m->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *m->layers);
    loco_status st = LOCO_OK;
    if (!m->layers) {
        st = loco_err_set(err, LOCO_ENOMEM, "clip_vision: out of memory");
        goto fail;
    }
    loco_loader ld;
    loco_loader_init(&ld, be, w, &m->params);
    const int64_t D = cfg->hidden_size, g = cfg->image_size / cfg->patch_size;
    const int64_t pshape[4] = {D, cfg->num_channels, cfg->patch_size, cfg->patch_size};
    const int64_t d1[1] = {D}, pos[2] = {g * g + 1, D};
    const char *e = "vision_model.embeddings";
    if ((st = loco_load_tensor(&ld, e, "patch_embedding.weight", 4, pshape, &m->patch_w, err)) ||
        (st = loco_load_tensor(&ld, e, "class_embedding", 1, d1, &m->class_emb, err)) ||
        (st = loco_load_tensor(&ld, e, "position_embedding.weight", 2, pos, &m->pos_emb, err)) ||
        (st = loco_load_tensor(&ld, "vision_model", "pre_layrnorm.weight", 1, d1, &m->pre_w, err)) ||
        (st = loco_load_tensor(&ld, "vision_model", "pre_layrnorm.bias", 1, d1, &m->pre_b, err)) ||
        (st = loco_load_tensor(&ld, "vision_model", "post_layernorm.weight", 1, d1, &m->post_w, err)) ||
        (st = loco_load_tensor(&ld, "vision_model", "post_layernorm.bias", 1, d1, &m->post_b, err)))
        goto fail;
    for (int i = 0; i < cfg->num_hidden_layers; i++)
        if ((st = load_layer(&ld, cfg, i, &m->layers[i], err))) goto fail;
    const loco_stored_tensor *pw = with_projection ? loco_weights_get(w, "visual_projection.weight") : NULL;
    if (with_projection == 1 && !pw) {
        st = loco_err_set(err, LOCO_ENOTFOUND, "%s: tensor 'visual_projection.weight' is missing",
                          loco_weights_source(w));
        goto fail;
    }
    if (pw) {
        if (pw->ndim != 2 || pw->shape[1] != D || (cfg->projection_dim > 0 && pw->shape[0] != cfg->projection_dim)) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor 'visual_projection.weight' is not [%d, %lld]",
                              loco_weights_source(w), cfg->projection_dim, (long long)D);
            goto fail;
        }
        m->cfg.projection_dim = (int)pw->shape[0];
        if ((st = loco_lin_load(&ld, "visual_projection", (int)D, m->cfg.projection_dim, 0, &m->proj, err))) goto fail;
        m->has_projection = 1;
    }
    *out = m;
    return LOCO_OK;
fail:
    loco_clip_vision_free(m);
    return loco_err_prefix(err, "clip_vision");
}

/* One encoder layer, in place on h [B, N, D]; the same arithmetic as the text tower's layer
 * (clip_text.c) without the causal mask. */
static loco_status run_layer(const loco_clip_vision *m, const vlayer *l, loco_tensor *h, loco_err *err) {
    loco_backend *be = m->be;
    const float eps = m->cfg.layer_norm_eps;
    const int heads = m->cfg.num_attention_heads, hd = m->cfg.hidden_size / heads;
    loco_tensor n = {0}, q = {0}, k = {0}, v = {0}, att = {0}, a = {0}, f = {0}, y = {0};
    loco_status st;
    if ((st = loco_tensor_alloc_act(be, 3, h->shape, &n, err)) || (st = loco_tensor_alloc_act(be, 3, h->shape, &att, err)))
        goto done;
    if ((st = loco_layer_norm(be, &n, h, &l->ln1_w, &l->ln1_b, eps, err)) ||
        (st = loco_lin_forward(be, &l->q, &n, LOCO_ACT_NONE, &q, err)) ||
        (st = loco_lin_forward(be, &l->k, &n, LOCO_ACT_NONE, &k, err)) ||
        (st = loco_lin_forward(be, &l->v, &n, LOCO_ACT_NONE, &v, err)))
        goto done;
    loco_attention_params ap = {.heads = heads, .scale = (float)(1.0 / sqrt((double)hd)), .causal = 0, .kv_index = NULL};
    if ((st = loco_attention(be, &att, &q, &k, &v, &ap, err)) ||
        (st = loco_lin_forward(be, &l->o, &att, LOCO_ACT_NONE, &a, err)) || (st = loco_add(be, h, h, &a, err)))
        goto done;
    if ((st = loco_layer_norm(be, &n, h, &l->ln2_w, &l->ln2_b, eps, err)) ||
        (st = loco_lin_forward(be, &l->fc1, &n, m->cfg.hidden_act, &f, err)) ||
        (st = loco_lin_forward(be, &l->fc2, &f, LOCO_ACT_NONE, &y, err)) || (st = loco_add(be, h, h, &y, err)))
        goto done;
done:
    loco_tensor_free(&n);
    loco_tensor_free(&q);
    loco_tensor_free(&k);
    loco_tensor_free(&v);
    loco_tensor_free(&att);
    loco_tensor_free(&a);
    loco_tensor_free(&f);
    loco_tensor_free(&y);
    return st;
}

static int shape_is(const loco_tensor *t, int ndim, const int64_t *shape) {
    if (!t || t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

loco_status loco_clip_vision_forward(const loco_clip_vision *m, const loco_tensor *px, loco_tensor *pooled,
                                     loco_tensor *image_embeds, loco_err *err) {
    const loco_clip_vision_config *c = &m->cfg;
    loco_backend *be = m->be;
    if (!px || px->ndim != 4 || px->shape[1] != c->num_channels || px->shape[2] != c->image_size ||
        px->shape[3] != c->image_size)
        return loco_err_set(err, LOCO_EINVAL, "clip_vision: pixel_values must be [batch, %d, %d, %d]", c->num_channels,
                            c->image_size, c->image_size);
    const int64_t B = px->shape[0], D = c->hidden_size, g = c->image_size / c->patch_size, N = g * g + 1;
    const int64_t bd[2] = {B, D}, bp[2] = {B, c->projection_dim};
    if (pooled && !shape_is(pooled, 2, bd))
        return loco_err_set(err, LOCO_EINVAL, "clip_vision: pooled must be [%lld, %lld]", (long long)B, (long long)D);
    if (image_embeds && (!m->has_projection || !shape_is(image_embeds, 2, bp)))
        return loco_err_set(err, LOCO_EINVAL, "clip_vision: image_embeds need visual_projection and shape [%lld, %d]",
                            (long long)B, c->projection_dim);
    loco_tensor conv = {0}, patches = {0}, cls = {0}, h = {0}, posb = {0}, hn = {0}, tok0 = {0}, pool = {0};
    int32_t *ids = malloc((size_t)(B * N) * sizeof *ids);
    if (!ids) return loco_err_set(err, LOCO_ENOMEM, "clip_vision: out of memory");
    loco_status st;
    const int64_t cshape[4] = {B, D, g, g}, pshape[3] = {B, g * g, D}, clshape[3] = {B, 1, D}, hshape[3] = {B, N, D};
    const loco_conv2d_params cp = {.stride = c->patch_size, .pad = {0, 0, 0, 0}};
    loco_tensor cview, cls_table;
    if ((st = loco_tensor_alloc_act(be, 4, cshape, &conv, err)) ||
        (st = loco_conv2d(be, &conv, px, &m->patch_w, NULL, &cp, err)) ||
        (st = loco_tensor_view(&conv, 0, 3, (int64_t[]){B, D, g * g}, &cview, err)) ||
        (st = loco_tensor_alloc_act(be, 3, pshape, &patches, err)) ||
        (st = loco_transpose12(be, &patches, &cview, err)))
        goto done;
    loco_tensor_free(&conv);
    /* class token per sample: an embedding lookup of row 0 of the [1, D] class table */
    for (int64_t i = 0; i < B; i++) ids[i] = 0;
    if ((st = loco_tensor_view(&m->class_emb, 0, 2, (int64_t[]){1, D}, &cls_table, err)) ||
        (st = loco_tensor_alloc_act(be, 3, clshape, &cls, err)) ||
        (st = loco_embedding(be, &cls, &cls_table, ids, B, err)) ||
        (st = loco_tensor_alloc_act(be, 3, hshape, &h, err)) || (st = loco_concat(be, &h, &cls, &patches, 1, err)))
        goto done;
    for (int64_t i = 0; i < B * N; i++) ids[i] = (int32_t)(i % N);
    if ((st = loco_tensor_alloc_act(be, 3, hshape, &posb, err)) ||
        (st = loco_embedding(be, &posb, &m->pos_emb, ids, B * N, err)) || (st = loco_add(be, &h, &h, &posb, err)))
        goto done;
    loco_tensor_free(&posb);
    if ((st = loco_tensor_alloc_act(be, 3, hshape, &hn, err)) ||
        (st = loco_layer_norm(be, &hn, &h, &m->pre_w, &m->pre_b, c->layer_norm_eps, err)))
        goto done;
    for (int i = 0; i < c->num_hidden_layers; i++)
        if ((st = run_layer(m, &m->layers[i], &hn, err))) {
            loco_err_prefix(err, "clip_vision layer %d", i);
            goto done;
        }
    /* pooled = post_layernorm(last_hidden_state[:, 0]): gather the class rows */
    for (int64_t b = 0; b < B; b++) ids[b] = (int32_t)(b * N);
    loco_tensor flat;
    loco_tensor *pout = pooled;
    if (!pout) {
        if ((st = loco_tensor_alloc_act(be, 2, bd, &pool, err))) goto done;
        pout = &pool;
    }
    if ((st = loco_tensor_view(&hn, 0, 2, (int64_t[]){B * N, D}, &flat, err)) ||
        (st = loco_tensor_alloc_act(be, 2, bd, &tok0, err)) || (st = loco_embedding(be, &tok0, &flat, ids, B, err)) ||
        (st = loco_layer_norm(be, pout, &tok0, &m->post_w, &m->post_b, c->layer_norm_eps, err)))
        goto done;
    if (image_embeds) st = loco_linear(be, image_embeds, pout, &m->proj.w, NULL, LOCO_ACT_NONE, err);
done:
    free(ids);
    loco_tensor_free(&conv);
    loco_tensor_free(&patches);
    loco_tensor_free(&cls);
    loco_tensor_free(&h);
    loco_tensor_free(&posb);
    loco_tensor_free(&hn);
    loco_tensor_free(&tok0);
    loco_tensor_free(&pool);
    return st;
}
