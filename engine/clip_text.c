/* clip_text.c: CLIPTextModel / CLIPTextModelWithProjection forward on the backend ops. */
#include "clip_text.h"

#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parameter table layout: two embeddings, PER_LAYER tensors per layer, the final norm, then the
 * optional projection. Indices instead of named struct fields so that names, shapes, sharing
 * and replacement are handled by one loop. */
enum { P_TOK = 0, P_POS, P_LAYERS };
enum {
    L_LN1_W = 0, L_LN1_B, L_Q_W, L_Q_B, L_K_W, L_K_B, L_V_W, L_V_B, L_O_W, L_O_B,
    L_LN2_W, L_LN2_B, L_FC1_W, L_FC1_B, L_FC2_W, L_FC2_B, PER_LAYER
};
static const char *const layer_suffix[PER_LAYER] = {
    "layer_norm1.weight", "layer_norm1.bias", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
    "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.out_proj.weight", "self_attn.out_proj.bias", "layer_norm2.weight", "layer_norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
};

/* A resident tensor shared by a base model and its variants; freed by the last user. */
typedef struct param_ref {
    atomic_int refs;
    loco_tensor t;
} param_ref;

struct loco_clip_text {
    loco_backend *be;
    loco_clip_text_config cfg;
    int has_projection;
    int nparams;
    char **names;      /* nparams transformers names (owned) */
    param_ref **slots; /* nparams, each holding one reference */
    int nsites;
    loco_site *sites;
    char **site_names; /* owned strings behind sites[i].name */
};

static int p_layer(int layer, int which) { return P_LAYERS + layer * PER_LAYER + which; }
static int p_final_w(const loco_clip_text_config *c) { return P_LAYERS + c->num_hidden_layers * PER_LAYER; }
static const loco_tensor *P(const loco_clip_text *m, int i) { return &m->slots[i]->t; }

static void ref_release(param_ref *r) {
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) {
        loco_tensor_free(&r->t);
        free(r);
    }
}

/* Expected shape of parameter i (ndim returned). */
static int param_shape(const loco_clip_text_config *c, int i, int64_t shape[2]) {
    const int64_t D = c->hidden_size, I = c->intermediate_size;
    if (i == P_TOK) { shape[0] = c->vocab_size; shape[1] = D; return 2; }
    if (i == P_POS) { shape[0] = c->max_position_embeddings; shape[1] = D; return 2; }
    int fw = p_final_w(c);
    if (i == fw || i == fw + 1) { shape[0] = D; return 1; }
    if (i == fw + 2) { shape[0] = c->projection_dim; shape[1] = D; return 2; }
    switch ((i - P_LAYERS) % PER_LAYER) {
    case L_FC1_W: shape[0] = I; shape[1] = D; return 2;
    case L_FC1_B: shape[0] = I; return 1;
    case L_FC2_W: shape[0] = D; shape[1] = I; return 2;
    case L_Q_W: case L_K_W: case L_V_W: case L_O_W: shape[0] = D; shape[1] = D; return 2;
    default: shape[0] = D; return 1;
    }
}

static char *param_name(const loco_clip_text_config *c, int i) {
    char buf[160];
    int fw = p_final_w(c);
    if (i == P_TOK) snprintf(buf, sizeof buf, "text_model.embeddings.token_embedding.weight");
    else if (i == P_POS) snprintf(buf, sizeof buf, "text_model.embeddings.position_embedding.weight");
    else if (i == fw) snprintf(buf, sizeof buf, "text_model.final_layer_norm.weight");
    else if (i == fw + 1) snprintf(buf, sizeof buf, "text_model.final_layer_norm.bias");
    else if (i == fw + 2) snprintf(buf, sizeof buf, "text_projection.weight");
    else snprintf(buf, sizeof buf, "text_model.encoder.layers.%d.%s", (i - P_LAYERS) / PER_LAYER,
                  layer_suffix[(i - P_LAYERS) % PER_LAYER]);
    return strdup(buf);
}

static void free_tables(loco_clip_text *m) {
    if (m->names)
        for (int i = 0; i < m->nparams; i++) free(m->names[i]);
    free(m->names);
    if (m->site_names)
        for (int i = 0; i < m->nsites; i++) free(m->site_names[i]);
    free(m->site_names);
    free(m->sites);
    m->names = NULL;
    m->site_names = NULL;
    m->sites = NULL;
}

void loco_clip_text_free(loco_clip_text *m) {
    if (!m) return;
    if (m->slots)
        for (int i = 0; i < m->nparams; i++) ref_release(m->slots[i]);
    free(m->slots);
    free_tables(m);
    free(m);
}

/* Site s of the table (clip_text.h lists the layout); its module path goes to buf. One
 * function for the model's own table and for loco_clip_text_config_sites, so the names
 * `loco inspect` prints are the names interventions resolve. */
static void describe_site(int s, loco_site *site, char *buf, size_t n) {
    site->id = s;
    site->cross_index = -1;
    if (s == 0) {
        site->kind = LOCO_SITE_TEXT_EMBED;
        site->layer = -1;
        snprintf(buf, n, "text_model.embeddings");
        return;
    }
    static const loco_site_kind kinds[3] = {LOCO_SITE_TEXT_OUT_PROJ_IN, LOCO_SITE_TEXT_SELF_ATTN, LOCO_SITE_TEXT_MLP};
    static const char *const mods[3] = {"self_attn.out_proj", "self_attn", "mlp"};
    int layer = (s - 1) / 3, which = (s - 1) % 3;
    site->layer = layer;
    site->kind = kinds[which];
    snprintf(buf, n, "text_model.encoder.layers.%d.%s", layer, mods[which]);
}

static int n_sites(const loco_clip_text_config *c) { return 1 + 3 * c->num_hidden_layers; }

/* Names and the site table: derived from the config only, so every model builds its own. */
static loco_status build_tables(loco_clip_text *m, loco_err *err) {
    const loco_clip_text_config *c = &m->cfg;
    m->nparams = p_final_w(c) + 2 + (m->has_projection ? 1 : 0);
    m->names = calloc((size_t)m->nparams, sizeof *m->names);
    m->nsites = n_sites(c);
    m->sites = calloc((size_t)m->nsites, sizeof *m->sites);
    m->site_names = calloc((size_t)m->nsites, sizeof *m->site_names);
    if (!m->names || !m->sites || !m->site_names) goto oom;
    for (int i = 0; i < m->nparams; i++)
        if (!(m->names[i] = param_name(c, i))) goto oom;
    for (int s = 0; s < m->nsites; s++) {
        char buf[128];
        describe_site(s, &m->sites[s], buf, sizeof buf);
        if (!(m->site_names[s] = strdup(buf))) goto oom;
        m->sites[s].name = m->site_names[s];
    }
    return LOCO_OK;
oom:
    return loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory building the parameter table");
}

loco_status loco_clip_text_config_sites(const loco_clip_text_config *cfg, loco_site **sites, int *n, loco_err *err) {
    *sites = NULL;
    *n = 0;
    if (!cfg) return loco_err_set(err, LOCO_EINVAL, "clip_text: a config is required");
    /* Listing runs on configs nobody has loaded weights for yet (`loco inspect`), so a config
     * claiming 2^30 layers must not turn into billions of names. */
    if (cfg->num_hidden_layers < 0 || cfg->num_hidden_layers > LOCO_CLIP_TEXT_MAX_LIST_LAYERS)
        return loco_err_set(err, LOCO_EFORMAT, "clip_text: num_hidden_layers %d is outside 0..%d",
                            cfg->num_hidden_layers, LOCO_CLIP_TEXT_MAX_LIST_LAYERS);
    const int ns = n_sites(cfg);
    loco_site *t = calloc((size_t)ns, sizeof *t);
    if (!t) return loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory listing sites");
    for (int s = 0; s < ns; s++) {
        char buf[128];
        describe_site(s, &t[s], buf, sizeof buf);
        if (!(t[s].name = strdup(buf))) {
            loco_clip_text_sites_free(t, s);
            return loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory listing sites");
        }
    }
    *sites = t;
    *n = ns;
    return LOCO_OK;
}

void loco_clip_text_sites_free(loco_site *sites, int n) {
    for (int i = 0; sites && i < n; i++) free((char *)sites[i].name);
    free(sites);
}

static loco_status upload_param(loco_backend *be, const loco_stored_tensor *st, param_ref **out, loco_err *err) {
    param_ref *r = calloc(1, sizeof *r);
    if (!r) return loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory");
    atomic_init(&r->refs, 1);
    loco_status s = loco_tensor_alloc(be, loco_backend_act_dtype(be), st->ndim, st->shape, &r->t, err);
    if (!s) s = loco_tensor_upload(&r->t, st->data, st->dtype, err);
    if (s) {
        loco_tensor_free(&r->t);
        free(r);
        return loco_err_prefix(err, "uploading '%s'", st->name);
    }
    *out = r;
    return LOCO_OK;
}

loco_status loco_clip_text_create(loco_backend *be, const loco_clip_text_config *cfg, const loco_weights *w,
                                  loco_clip_text **out, loco_err *err) {
    *out = NULL;
    if (!be || !cfg || !w) return loco_err_set(err, LOCO_EINVAL, "clip_text_create: backend, config and weights are required");
    if (cfg->hidden_size <= 0 || cfg->num_hidden_layers <= 0 || cfg->num_attention_heads <= 0 ||
        cfg->intermediate_size <= 0 || cfg->vocab_size <= 0 || cfg->max_position_embeddings <= 0 ||
        cfg->hidden_size % cfg->num_attention_heads != 0)
        return loco_err_set(err, LOCO_EINVAL, "clip_text_create: config sizes are unset or inconsistent");
    /* configs built in code skip the parser's limits: the tables below are sized by them */
    if (cfg->num_hidden_layers > LOCO_CLIP_TEXT_MAX_LAYERS || cfg->hidden_size > LOCO_CLIP_TEXT_MAX_HIDDEN ||
        cfg->intermediate_size > LOCO_CLIP_TEXT_MAX_INTERMEDIATE || cfg->vocab_size > LOCO_CLIP_TEXT_MAX_VOCAB ||
        cfg->max_position_embeddings > LOCO_CLIP_TEXT_MAX_POSITIONS || cfg->projection_dim > LOCO_CLIP_TEXT_MAX_HIDDEN)
        return loco_err_set(err, LOCO_EINVAL,
                            "clip_text_create: config sizes beyond loco's limits (%d layers, width %d, MLP %d, "
                            "vocabulary %d, %d positions; clip_text.h)",
                            cfg->num_hidden_layers, cfg->hidden_size, cfg->intermediate_size, cfg->vocab_size,
                            cfg->max_position_embeddings);
    loco_clip_text *m = calloc(1, sizeof *m);
    if (!m) return loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory");
    m->be = be;
    m->cfg = *cfg;

    const loco_stored_tensor *proj = cfg->with_projection != 0 ? loco_weights_get(w, "text_projection.weight") : NULL;
    loco_status st = LOCO_OK;
    if (cfg->with_projection == 1 && !proj) {
        st = loco_err_set(err, LOCO_ENOTFOUND,
                          "%s: tensor 'text_projection.weight' is missing (config says CLIPTextModelWithProjection)",
                          loco_weights_source(w));
        goto fail;
    }
    if (proj) {
        if (proj->ndim != 2 || proj->shape[1] != cfg->hidden_size ||
            (cfg->projection_dim > 0 && proj->shape[0] != cfg->projection_dim)) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor 'text_projection.weight' has a shape other than [%d, %d]",
                              loco_weights_source(w), cfg->projection_dim, cfg->hidden_size);
            goto fail;
        }
        /* the weight is the authority when the config leaves projection_dim out */
        m->cfg.projection_dim = (int)proj->shape[0];
        m->has_projection = 1;
    }
    if ((st = build_tables(m, err))) goto fail;
    m->slots = calloc((size_t)m->nparams, sizeof *m->slots);
    if (!m->slots) {
        st = loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory");
        goto fail;
    }
    /* transformers >= 5.6 saves CLIPTextModel without the "text_model." prefix that every
     * SD-era file has; accept both, keep the prefixed names inside loco */
    static const char prefix[] = "text_model.";
    const size_t plen = sizeof prefix - 1;
    const int flat = !loco_weights_get(w, m->names[P_TOK]) && loco_weights_get(w, m->names[P_TOK] + plen);
    for (int i = 0; i < m->nparams; i++) {
        int64_t shape[2];
        int nd = param_shape(&m->cfg, i, shape);
        const loco_stored_tensor *t;
        const char *file_name = m->names[i];
        if (flat && strncmp(file_name, prefix, plen) == 0) file_name += plen;
        if ((st = loco_weights_require(w, file_name, nd, shape, &t, err))) goto fail;
        if (!loco_dtype_is_float(t->dtype)) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' has dtype %s, expected a float type",
                              loco_weights_source(w), file_name, loco_dtype_name(t->dtype));
            goto fail;
        }
        if ((st = upload_param(be, t, &m->slots[i], err))) goto fail;
    }
    *out = m;
    return LOCO_OK;
fail:
    loco_clip_text_free(m);
    return st;
}

loco_status loco_clip_text_load_dir(loco_backend *be, const char *dir, const char *variant, loco_clip_text **out,
                                    loco_err *err) {
    *out = NULL;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return loco_err_set(err, LOCO_EINVAL, "clip_text: folder path too long: %.200s...", dir);
    loco_clip_text_config cfg;
    loco_status st = loco_clip_text_config_load(path, &cfg, err);
    if (st) return st;
    loco_weights *w = NULL;
    if ((st = loco_weights_open_dir(dir, "model", variant, &w, err))) return st;
    st = loco_clip_text_create(be, &cfg, w, out, err);
    loco_weights_free(w);
    return st;
}

loco_status loco_clip_text_load(loco_backend *be, const loco_model_files *mf, const char *component,
                                loco_clip_text **out, loco_err *err) {
    *out = NULL;
    const json_t *cj = loco_model_files_config(mf, component);
    if (!cj)
        return loco_err_set(err, LOCO_ENOTFOUND, "%s: the model has no component '%s'", loco_model_files_path(mf),
                            component);
    char src[600];
    snprintf(src, sizeof src, "%s/%s/config.json", loco_model_files_path(mf), component);
    loco_clip_text_config cfg;
    loco_status st = loco_clip_text_config_from_json(cj, src, &cfg, err);
    if (st) return st;
    loco_weights *w = NULL;
    if ((st = loco_model_files_weights(mf, component, &w, err))) return st;
    st = loco_clip_text_create(be, &cfg, w, out, err);
    loco_weights_free(w);
    return st;
}

const loco_clip_text_config *loco_clip_text_get_config(const loco_clip_text *m) { return &m->cfg; }
loco_backend *loco_clip_text_backend(const loco_clip_text *m) { return m->be; }
int loco_clip_text_has_projection(const loco_clip_text *m) { return m->has_projection; }
int loco_clip_text_num_sites(const loco_clip_text *m) { return m->nsites; }

const loco_site *loco_clip_text_site(const loco_clip_text *m, int id) {
    return id >= 0 && id < m->nsites ? &m->sites[id] : NULL;
}

const loco_site *loco_clip_text_find_site(const loco_clip_text *m, const char *name, loco_site_kind kind) {
    for (int i = 0; i < m->nsites; i++)
        if (m->sites[i].kind == kind && strcmp(m->sites[i].name, name) == 0) return &m->sites[i];
    return NULL;
}

/* ---- parameters and variants ---------------------------------------------------------------- */

static int find_param(const loco_clip_text *m, const char *name) {
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->names[i], name) == 0) return i;
    return -1;
}

const loco_tensor *loco_clip_text_param(const loco_clip_text *m, const char *name) {
    int i = find_param(m, name);
    return i < 0 ? NULL : P(m, i);
}
int loco_clip_text_num_params(const loco_clip_text *m) { return m->nparams; }
const char *loco_clip_text_param_name(const loco_clip_text *m, int i) {
    return i >= 0 && i < m->nparams ? m->names[i] : NULL;
}

loco_status loco_clip_text_set_param(loco_clip_text *m, const char *name, const void *data, loco_dtype src_dtype,
                                     loco_err *err) {
    int i = find_param(m, name);
    if (i < 0) return loco_err_set(err, LOCO_ENOTFOUND, "clip_text: no parameter named '%s'", name ? name : "(null)");
    if (!data) return loco_err_set(err, LOCO_EINVAL, "clip_text: no data given for '%s'", name);
    param_ref *old = m->slots[i];
    if (atomic_load(&old->refs) == 1) {
        /* sole owner: overwrite in place */
        loco_status st = loco_tensor_upload(&old->t, data, src_dtype, err);
        return st ? loco_err_prefix(err, "clip_text: replacing '%s'", name) : LOCO_OK;
    }
    param_ref *r = calloc(1, sizeof *r);
    if (!r) return loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory replacing '%s'", name);
    atomic_init(&r->refs, 1);
    loco_status st = loco_tensor_alloc(m->be, old->t.dtype, old->t.ndim, old->t.shape, &r->t, err);
    if (!st) st = loco_tensor_upload(&r->t, data, src_dtype, err);
    if (st) {
        loco_tensor_free(&r->t);
        free(r);
        return loco_err_prefix(err, "clip_text: replacing '%s'", name);
    }
    m->slots[i] = r;
    ref_release(old);
    return LOCO_OK;
}

loco_status loco_clip_text_variant(const loco_clip_text *base, loco_clip_text **out, loco_err *err) {
    *out = NULL;
    loco_clip_text *m = calloc(1, sizeof *m);
    if (!m) return loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory");
    m->be = base->be;
    m->cfg = base->cfg;
    m->has_projection = base->has_projection;
    loco_status st = build_tables(m, err);
    if (!st && !(m->slots = calloc((size_t)m->nparams, sizeof *m->slots)))
        st = loco_err_set(err, LOCO_ENOMEM, "clip_text: out of memory");
    if (st) {
        loco_clip_text_free(m);
        return st;
    }
    for (int i = 0; i < m->nparams; i++) {
        atomic_fetch_add(&base->slots[i]->refs, 1);
        m->slots[i] = base->slots[i];
    }
    *out = m;
    return LOCO_OK;
}

/* ---- forward ---------------------------------------------------------------------------------- */

void loco_clip_text_outputs_init(loco_clip_text_outputs *o) { memset(o, 0, sizeof *o); }

loco_status loco_clip_text_pool_position(const loco_clip_text *m, const int32_t *row, int length, int *pos,
                                         loco_err *err) {
    int best = 0;
    if (m->cfg.eos_token_id == 2) {
        /* legacy configs (all SD-era files): the EOS is the largest id; argmax keeps the first maximum */
        for (int l = 1; l < length; l++)
            if (row[l] > row[best]) best = l;
        *pos = best;
        return LOCO_OK;
    }
    for (int l = 0; l < length; l++)
        if (row[l] == m->cfg.eos_token_id) {
            *pos = l;
            return LOCO_OK;
        }
    return loco_err_set(err, LOCO_EINVAL, "clip_text: ids row has no eos_token_id %d, so the pooled token is undefined",
                        (int)m->cfg.eos_token_id);
}

static loco_status check_shape(const loco_tensor *t, int ndim, const int64_t *shape, const char *what, loco_err *err) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (ok) return LOCO_OK;
    char have[96];
    char want[96];
    int n = snprintf(want, sizeof want, "[");
    for (int i = 0; i < ndim && n < (int)sizeof want; i++)
        n += snprintf(want + n, sizeof want - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < (int)sizeof want) snprintf(want + n, sizeof want - (size_t)n, "]");
    return loco_err_set(err, LOCO_EINVAL, "clip_text forward: output %s is %s, expected %s", what,
                        loco_tensor_shape_str(t, have, sizeof have), want);
}

/* The per-call activations. */
typedef struct work {
    loco_tensor h, n, q, k, v, att, a, f, lhs, pooled;
} work;

static void work_free(work *w) {
    loco_tensor *all[] = {&w->h, &w->n, &w->q, &w->k, &w->v, &w->att, &w->a, &w->f, &w->lhs, &w->pooled};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) loco_tensor_free(all[i]);
}

static loco_status hook(const loco_site_hooks *hooks, const loco_clip_text *m, int site, loco_tensor *t,
                        loco_err *err) {
    if (!hooks || !hooks->after) return LOCO_OK;
    if (hooks->acts_at && !hooks->acts_at(hooks->ctx, &m->sites[site])) return LOCO_OK;
    loco_status st = hooks->after(hooks->ctx, &m->sites[site], t, err);
    return st ? loco_err_prefix(err, "hook at %s", m->sites[site].name) : LOCO_OK;
}

/* Copy hidden_states[j] into every request that resolves to j. */
static loco_status emit_hidden(const loco_clip_text *m, const loco_clip_text_outputs *o, const int *resolved, int j,
                               const loco_tensor *h, loco_err *err) {
    const int fw = p_final_w(&m->cfg);
    for (int r = 0; r < o->n_hidden; r++) {
        if (resolved[r] != j) continue;
        loco_status st = o->hidden[r].final_ln
                             ? loco_layer_norm(m->be, o->hidden[r].out, h, P(m, fw), P(m, fw + 1), m->cfg.layer_norm_eps, err)
                             : loco_copy(m->be, o->hidden[r].out, h, err);
        if (st) return st;
    }
    return LOCO_OK;
}

static loco_status run_layer(const loco_clip_text *m, int i, work *w, const loco_site_hooks *hooks, loco_err *err) {
    loco_backend *be = m->be;
    const float eps = m->cfg.layer_norm_eps;
    const int heads = m->cfg.num_attention_heads;
    const int head_dim = m->cfg.hidden_size / heads;
#define LP(x) P(m, p_layer(i, x))
    loco_status st;
    if ((st = loco_layer_norm(be, &w->n, &w->h, LP(L_LN1_W), LP(L_LN1_B), eps, err)) ||
        (st = loco_linear(be, &w->q, &w->n, LP(L_Q_W), LP(L_Q_B), LOCO_ACT_NONE, err)) ||
        (st = loco_linear(be, &w->k, &w->n, LP(L_K_W), LP(L_K_B), LOCO_ACT_NONE, err)) ||
        (st = loco_linear(be, &w->v, &w->n, LP(L_V_W), LP(L_V_B), LOCO_ACT_NONE, err)))
        return st;
    loco_attention_params ap = {.heads = heads, .scale = (float)(1.0 / sqrt((double)head_dim)), .causal = 1,
                                .kv_index = NULL};
    if ((st = loco_attention(be, &w->att, &w->q, &w->k, &w->v, &ap, err)) ||
        (st = hook(hooks, m, 1 + 3 * i, &w->att, err)) ||
        (st = loco_linear(be, &w->a, &w->att, LP(L_O_W), LP(L_O_B), LOCO_ACT_NONE, err)) ||
        (st = hook(hooks, m, 2 + 3 * i, &w->a, err)) || (st = loco_add(be, &w->h, &w->h, &w->a, err)))
        return st;
    if ((st = loco_layer_norm(be, &w->n, &w->h, LP(L_LN2_W), LP(L_LN2_B), eps, err)) ||
        (st = loco_linear(be, &w->f, &w->n, LP(L_FC1_W), LP(L_FC1_B), m->cfg.hidden_act, err)) ||
        (st = loco_linear(be, &w->a, &w->f, LP(L_FC2_W), LP(L_FC2_B), LOCO_ACT_NONE, err)) ||
        (st = hook(hooks, m, 3 + 3 * i, &w->a, err)) || (st = loco_add(be, &w->h, &w->h, &w->a, err)))
        return st;
#undef LP
    return LOCO_OK;
}

loco_status loco_clip_text_forward(const loco_clip_text *m, const int32_t *ids, int batch, int length,
                                   const loco_clip_text_outputs *o, const loco_site_hooks *hooks, loco_err *err) {
    const loco_clip_text_config *c = &m->cfg;
    if (!ids || !o || batch <= 0 || length <= 0)
        return loco_err_set(err, LOCO_EINVAL, "clip_text forward: ids, outputs and a positive batch/length are required");
    if (length > c->max_position_embeddings)
        return loco_err_set(err, LOCO_EINVAL, "clip_text forward: %d tokens exceed max_position_embeddings %d", length,
                            c->max_position_embeddings);
    if (c->use_attention_mask)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "clip_text forward: config sets use_attention_mask, padding masks are not implemented");
    if (o->text_embeds && !m->has_projection)
        return loco_err_set(err, LOCO_EINVAL, "clip_text forward: text_embeds asked of a model without text_projection");
    if (o->n_hidden < 0 || (o->n_hidden > 0 && !o->hidden))
        return loco_err_set(err, LOCO_EINVAL, "clip_text forward: n_hidden without hidden requests");

    const int64_t B = batch, L = length, D = c->hidden_size;
    const int64_t bld[3] = {B, L, D}, bd[2] = {B, D}, bp[2] = {B, c->projection_dim};
    const int nl = c->num_hidden_layers;
    int *resolved = calloc((size_t)(o->n_hidden > 0 ? o->n_hidden : 1), sizeof *resolved);
    int *pool_pos = NULL;
    if (!resolved) return loco_err_set(err, LOCO_ENOMEM, "clip_text forward: out of memory");
    loco_status st = LOCO_OK;
    int deepest = 0; /* hidden_states index up to which layers must run */
    for (int r = 0; r < o->n_hidden; r++) {
        int j = o->hidden[r].index < 0 ? nl + 1 + o->hidden[r].index : o->hidden[r].index;
        if (j < 0 || j > nl) {
            st = loco_err_set(err, LOCO_EINVAL, "clip_text forward: hidden state index %d is outside [-%d, %d]",
                              o->hidden[r].index, nl + 1, nl);
            goto out;
        }
        char what[48];
        snprintf(what, sizeof what, "hidden_states[%d]", o->hidden[r].index);
        if (!o->hidden[r].out) {
            st = loco_err_set(err, LOCO_EINVAL, "clip_text forward: %s has no output tensor", what);
            goto out;
        }
        if ((st = check_shape(o->hidden[r].out, 3, bld, what, err))) goto out;
        resolved[r] = j;
        if (j > deepest) deepest = j;
    }
    const int need_final = o->last_hidden_state || o->pooled || o->text_embeds;
    if (need_final) deepest = nl;
    if ((o->last_hidden_state && (st = check_shape(o->last_hidden_state, 3, bld, "last_hidden_state", err))) ||
        (o->pooled && (st = check_shape(o->pooled, 2, bd, "pooled", err))) ||
        (o->text_embeds && (st = check_shape(o->text_embeds, 2, bp, "text_embeds", err))))
        goto out;

    if (o->pooled || o->text_embeds) {
        /* find the pooled tokens before any compute: a bad ids row fails fast */
        pool_pos = malloc((size_t)B * sizeof *pool_pos);
        if (!pool_pos) {
            st = loco_err_set(err, LOCO_ENOMEM, "clip_text forward: out of memory");
            goto out;
        }
        for (int64_t b = 0; b < B; b++) {
            int p;
            if ((st = loco_clip_text_pool_position(m, ids + b * L, (int)L, &p, err))) {
                loco_err_prefix(err, "batch row %lld", (long long)b);
                goto out;
            }
            pool_pos[b] = (int)(b * L + p); /* row index into the flattened [B*L, D] state */
        }
    }

    work w = {0};
    loco_backend *be = m->be;
    const int64_t bli[3] = {B, L, c->intermediate_size};
    if ((st = loco_tensor_alloc_act(be, 3, bld, &w.h, err)) || (st = loco_tensor_alloc_act(be, 3, bld, &w.n, err)))
        goto out_work;
    if (deepest > 0 &&
        ((st = loco_tensor_alloc_act(be, 3, bld, &w.q, err)) || (st = loco_tensor_alloc_act(be, 3, bld, &w.k, err)) ||
         (st = loco_tensor_alloc_act(be, 3, bld, &w.v, err)) || (st = loco_tensor_alloc_act(be, 3, bld, &w.att, err)) ||
         (st = loco_tensor_alloc_act(be, 3, bld, &w.a, err)) || (st = loco_tensor_alloc_act(be, 3, bli, &w.f, err))))
        goto out_work;

    /* embeddings: token lookup + position lookup (positions 0..L-1 for every row), as
     * CLIPTextEmbeddings adds them */
    {
        int32_t *pos_ids = malloc((size_t)(B * L) * sizeof *pos_ids);
        if (!pos_ids) {
            st = loco_err_set(err, LOCO_ENOMEM, "clip_text forward: out of memory");
            goto out_work;
        }
        for (int64_t i = 0; i < B * L; i++) pos_ids[i] = (int32_t)(i % L);
        st = loco_embedding(be, &w.h, P(m, P_TOK), ids, B * L, err);
        if (!st) st = loco_embedding(be, &w.n, P(m, P_POS), pos_ids, B * L, err);
        free(pos_ids);
        if (st || (st = loco_add(be, &w.h, &w.h, &w.n, err)) || (st = hook(hooks, m, 0, &w.h, err)) ||
            (st = emit_hidden(m, o, resolved, 0, &w.h, err)))
            goto out_work;
    }
    for (int i = 0; i < deepest; i++) {
        if ((st = run_layer(m, i, &w, hooks, err))) {
            loco_err_prefix(err, "clip_text layer %d", i);
            goto out_work;
        }
        if ((st = emit_hidden(m, o, resolved, i + 1, &w.h, err))) goto out_work;
    }
    if (need_final) {
        const int fw = p_final_w(c);
        loco_tensor *lhs = o->last_hidden_state;
        if (!lhs) {
            if ((st = loco_tensor_alloc_act(be, 3, bld, &w.lhs, err))) goto out_work;
            lhs = &w.lhs;
        }
        if ((st = loco_layer_norm(be, lhs, &w.h, P(m, fw), P(m, fw + 1), c->layer_norm_eps, err))) goto out_work;
        if (o->pooled || o->text_embeds) {
            loco_tensor *pooled = o->pooled;
            if (!pooled) {
                if ((st = loco_tensor_alloc_act(be, 2, bd, &w.pooled, err))) goto out_work;
                pooled = &w.pooled;
            }
            /* gather the EOS rows: an embedding lookup with the flattened state as the table */
            loco_tensor flat;
            const int64_t fshape[2] = {B * L, D};
            if ((st = loco_tensor_view(lhs, 0, 2, fshape, &flat, err)) ||
                (st = loco_embedding(be, pooled, &flat, pool_pos, B, err)))
                goto out_work;
            if (o->text_embeds &&
                (st = loco_linear(be, o->text_embeds, pooled, P(m, fw + 2), NULL, LOCO_ACT_NONE, err)))
                goto out_work;
        }
    }
out_work:
    work_free(&w);
out:
    free(pool_pos);
    free(resolved);
    return st;
}
