/* unet.c: UNet2DConditionModel top level: building from config + weights, the time (and SD-XL
 * text_time) embedding, conv_in/conv_out, text K/V precomputation and the site table. The
 * blocks live in unet_blocks.c, the transformers in transformer2d.c. */
#include "unet_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- sites ------------------------------------------------------------------------------------ */

loco_status unet_add_site(loco_unet *u, loco_site_kind kind, const char *name, int cross_index, int *id,
                          loco_err *err) {
    if (u->n_sites == u->cap_sites) {
        int cap = u->cap_sites ? u->cap_sites * 2 : 128;
        loco_site *s = realloc(u->sites, (size_t)cap * sizeof *s);
        if (!s) return loco_err_set(err, LOCO_ENOMEM, "unet: out of memory for the site table");
        u->sites = s;
        u->cap_sites = cap;
    }
    char *copy = strdup(name);
    if (!copy) return loco_err_set(err, LOCO_ENOMEM, "unet: out of memory for the site table");
    loco_site *s = &u->sites[u->n_sites];
    s->id = u->n_sites;
    s->kind = kind;
    s->name = copy;
    s->cross_index = cross_index;
    s->layer = -1;
    *id = u->n_sites++;
    return LOCO_OK;
}

loco_status unet_register_cross(loco_unet *u, unet_tblock *tb, loco_err *err) {
    if (u->n_cross == u->cap_cross) {
        int cap = u->cap_cross ? u->cap_cross * 2 : 32;
        unet_tblock **c = realloc(u->cross, (size_t)cap * sizeof *c);
        if (!c) return loco_err_set(err, LOCO_ENOMEM, "unet: out of memory for the cross-attention table");
        u->cross = c;
        u->cap_cross = cap;
    }
    tb->cross_index = u->n_cross;
    u->cross[u->n_cross++] = tb;
    return LOCO_OK;
}

int unet_site_hooked(const unet_run *r, int site) {
    const loco_site_hooks *h = r->hooks;
    return h && h->after && (!h->acts_at || h->acts_at(h->ctx, &r->u->sites[site]));
}

loco_status unet_call_hook(const unet_run *r, int site, loco_tensor *t, loco_err *err) {
    if (!unet_site_hooked(r, site)) return LOCO_OK;
    const loco_site *st = &r->u->sites[site];
    loco_status s = r->hooks->after(r->hooks->ctx, st, t, err);
    if (s) loco_err_prefix(err, "hook on %s", st->name);
    return s;
}

const loco_site *loco_unet_sites(const loco_unet *u, int *n) {
    if (n) *n = u->n_sites;
    return u->sites;
}

const loco_site *loco_unet_find_site(const loco_unet *u, const char *name) {
    for (int i = 0; name && i < u->n_sites; i++)
        if (strcmp(u->sites[i].name, name) == 0) return &u->sites[i];
    return NULL;
}

int loco_unet_n_cross(const loco_unet *u) { return u->n_cross; }
int loco_unet_cross_channels(const loco_unet *u, int i) {
    return i >= 0 && i < u->n_cross ? u->cross[i]->a2_k.out_f : 0;
}
const loco_unet_config *loco_unet_get_config(const loco_unet *u) { return &u->cfg; }
loco_backend *loco_unet_backend(const loco_unet *u) { return u->be; }
const loco_params *loco_unet_params(const loco_unet *u) { return &u->params; }

/* ---- build ------------------------------------------------------------------------------------ */

void loco_unet_free(loco_unet *u) {
    if (!u) return;
    unet_graphs_free(u); /* first: recorded graphs read the weights until they are gone */
    loco_params_free(&u->params); /* first: the table points into the block holders */
    unet_blocks_free(u);
    for (int i = 0; i < u->n_sites; i++) free((char *)u->sites[i].name);
    free(u->sites);
    free(u->cross);
    free(u);
}

/* w NULL builds the structure and the site table without any tensor (never run such a UNet). */
static loco_status build(loco_backend *be, const loco_unet_config *cfg, const loco_weights *w, loco_unet **out,
                         loco_err *err) {
    *out = NULL;
    if (cfg->n_blocks < 1 || cfg->n_blocks > LOCO_UNET_MAX_BLOCKS)
        return loco_err_set(err, LOCO_EINVAL, "unet: %d blocks (1..%d supported)", cfg->n_blocks,
                            LOCO_UNET_MAX_BLOCKS);
    loco_unet *u = calloc(1, sizeof *u);
    if (!u) return loco_err_set(err, LOCO_ENOMEM, "unet: out of memory");
    u->be = be;
    u->cfg = *cfg;
    loco_loader ld;
    loco_loader_init(&ld, be, w, &u->params);
    const int c0 = cfg->block_out_channels[0], T = cfg->time_embed_dim;
    loco_status s;
    if ((s = loco_conv_load(&ld, "conv_in", cfg->in_channels, c0, cfg->conv_in_kernel, &u->conv_in, err))) goto fail;
    if ((s = loco_lin_load(&ld, "time_embedding.linear_1", c0, T, 1, &u->time_l1, err))) goto fail;
    if ((s = loco_lin_load(&ld, "time_embedding.linear_2", T, T, 1, &u->time_l2, err))) goto fail;
    if (cfg->addition_embed_type == LOCO_UNET_ADD_TEXT_TIME) {
        const int P = cfg->projection_class_embeddings_input_dim;
        if ((s = loco_lin_load(&ld, "add_embedding.linear_1", P, T, 1, &u->add_l1, err))) goto fail;
        if ((s = loco_lin_load(&ld, "add_embedding.linear_2", T, T, 1, &u->add_l2, err))) goto fail;
    }
    if ((s = unet_blocks_load(u, &ld, err))) goto fail;
    if ((s = loco_gnorm_load(&ld, "conv_norm_out", c0, cfg->norm_num_groups, cfg->norm_eps, &u->norm_out, err)))
        goto fail;
    if ((s = loco_conv_load(&ld, "conv_out", c0, cfg->out_channels, cfg->conv_out_kernel, &u->conv_out, err)))
        goto fail;
    *out = u;
    return LOCO_OK;
fail:
    loco_unet_free(u);
    return w ? loco_err_prefix(err, "loading the UNet from %s", loco_weights_source(w)) : s;
}

loco_status loco_unet_create(loco_backend *be, const loco_unet_config *cfg, const loco_weights *w, loco_unet **out,
                             loco_err *err) {
    *out = NULL;
    if (!be || !w) return loco_err_set(err, LOCO_EINVAL, "unet: a backend and a weight set are required");
    return build(be, cfg, w, out, err);
}

loco_status loco_unet_config_sites(const loco_unet_config *cfg, loco_site **sites, int *n, loco_err *err) {
    *sites = NULL;
    *n = 0;
    loco_unet *u = NULL;
    loco_status s = build(NULL, cfg, NULL, &u, err);
    if (s) return s;
    /* hand the table over: the names move with it */
    *sites = u->sites;
    *n = u->n_sites;
    u->sites = NULL;
    u->n_sites = 0;
    loco_unet_free(u);
    return LOCO_OK;
}

void loco_unet_sites_free(loco_site *sites, int n) {
    for (int i = 0; sites && i < n; i++) free((char *)sites[i].name);
    free(sites);
}

loco_status loco_unet_load_dir(loco_backend *be, const char *dir, const char *variant, loco_unet **out,
                               loco_err *err) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    loco_unet_config cfg;
    loco_status s = loco_unet_config_load(path, &cfg, err);
    if (s) return s;
    loco_weights *w = NULL;
    if ((s = loco_weights_open_dir(dir, "diffusion_pytorch_model", variant, &w, err))) return s;
    s = loco_unet_create(be, &cfg, w, out, err);
    loco_weights_free(w);
    return s;
}

/* ---- text K/V ---------------------------------------------------------------------------------- */

void loco_unet_text_kv_free(loco_unet_text_kv *kv) {
    if (!kv) return;
    for (int i = 0; i < kv->n_layers; i++) {
        if (kv->k) loco_tensor_free(&kv->k[i]);
        if (kv->v) loco_tensor_free(&kv->v[i]);
        if (kv->k1) loco_tensor_free(&kv->k1[i]);
        if (kv->v1) loco_tensor_free(&kv->v1[i]);
    }
    free(kv->k);
    free(kv->v);
    free(kv->k1);
    free(kv->v1);
    memset(kv, 0, sizeof *kv);
}

loco_status loco_unet_compute_text_kv(loco_unet *u, const loco_tensor *ehs, const loco_site_hooks *hooks,
                                      loco_unet_text_kv *kv, loco_err *err) {
    memset(kv, 0, sizeof *kv);
    if (!ehs || ehs->ndim != 3)
        return loco_err_set(err, LOCO_EINVAL, "unet text K/V: encoder_hidden_states must be [batch, tokens, dim]");
    const size_t n = (size_t)u->n_cross;
    kv->k = calloc(n ? n : 1, sizeof *kv->k);
    kv->v = calloc(n ? n : 1, sizeof *kv->v);
    kv->k1 = calloc(n ? n : 1, sizeof *kv->k1);
    kv->v1 = calloc(n ? n : 1, sizeof *kv->v1);
    kv->n_layers = u->n_cross;
    kv->batch = (int)ehs->shape[0];
    kv->tokens = (int)ehs->shape[1];
    if (!kv->k || !kv->v || !kv->k1 || !kv->v1) {
        loco_unet_text_kv_free(kv);
        return loco_err_set(err, LOCO_ENOMEM, "unet text K/V: out of memory");
    }
    unet_run r = {.u = u, .be = u->be, .hooks = hooks};
    loco_status s = LOCO_OK;
    for (int i = 0; i < u->n_cross && !s; i++) {
        const unet_tblock *tb = u->cross[i];
        s = unet_text_proj(u->be, tb, 2, 0, ehs, &kv->k[i], err);
        if (!s) s = unet_call_hook(&r, tb->site_k, &kv->k[i], err);
        if (!s) s = unet_text_proj(u->be, tb, 2, 1, ehs, &kv->v[i], err);
        if (!s) s = unet_call_hook(&r, tb->site_v, &kv->v[i], err);
        if (!s && tb->only_cross) {
            s = unet_text_proj(u->be, tb, 1, 0, ehs, &kv->k1[i], err);
            if (!s) s = unet_text_proj(u->be, tb, 1, 1, ehs, &kv->v1[i], err);
        }
    }
    if (s) loco_unet_text_kv_free(kv);
    return s;
}

/* ---- embeddings --------------------------------------------------------------------------------- */

void loco_timestep_embedding(const float *t, int n, int dim, int flip_sin_to_cos, float freq_shift, float *dst) {
    /* get_timestep_embedding: every step in fp32 as torch does it, so large arguments (t ~ 1000)
     * round the same way before sin/cos. */
    const int half = dim / 2;
    const float neg_log = (float)(-log(10000.0));
    const float denom = (float)half - freq_shift;
    for (int b = 0; b < n; b++) {
        float *row = dst + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            float e = neg_log * (float)i;
            e = e / denom;
            float arg = t[b] * expf(e);
            float sv = sinf(arg), cv = cosf(arg);
            row[flip_sin_to_cos ? half + i : i] = sv;
            row[flip_sin_to_cos ? i : half + i] = cv;
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
}

static loco_status upload_host(loco_backend *be, const float *src, int64_t rows, int64_t cols, loco_tensor *out,
                               loco_err *err) {
    loco_status s = loco_tensor_alloc_act(be, 2, (int64_t[]){rows, cols}, out, err);
    if (!s) s = loco_tensor_upload(out, src, LOCO_F32, err);
    if (s) loco_tensor_free(out);
    return s;
}

/* SiLU(time_embedding(sinusoid(t)) [+ add_embedding(concat(text_embeds, sinusoid(time_ids)))]). */
static loco_status time_embedding(loco_unet *u, const loco_unet_inputs *in, int B, loco_tensor *temb_act,
                                  loco_err *err) {
    loco_probe_fn pf = in->probe;
    loco_backend *be = u->be;
    const loco_unet_config *c = &u->cfg;
    const int c0 = c->block_out_channels[0];
    loco_tensor ts = {0}, e1 = {0}, emb = {0}, tt = {0}, cat = {0}, a1 = {0}, aug = {0};
    float *host = malloc((size_t)B * (size_t)c0 * sizeof *host);
    if (!host) return loco_err_set(err, LOCO_ENOMEM, "unet: out of memory for the time embedding");
    loco_timestep_embedding(in->timesteps, B, c0, c->flip_sin_to_cos, c->freq_shift, host);
    loco_status s = upload_host(be, host, B, c0, &ts, err);
    free(host);
    host = NULL;
    if (!s && pf) s = pf(in->probe_ctx, "time_proj", &ts, err);
    if (!s) s = loco_lin_forward(be, &u->time_l1, &ts, LOCO_ACT_SILU, &e1, err);
    if (!s) s = loco_lin_forward(be, &u->time_l2, &e1, LOCO_ACT_NONE, &emb, err);
    if (!s && pf) s = pf(in->probe_ctx, "time_embedding", &emb, err);
    if (!s && c->addition_embed_type == LOCO_UNET_ADD_TEXT_TIME) {
        const loco_tensor *te = in->text_embeds;
        const int atd = c->addition_time_embed_dim, P = c->projection_class_embeddings_input_dim;
        if (!te || !in->time_ids || te->ndim != 2 || te->shape[0] != B || te->shape[1] >= P ||
            (P - te->shape[1]) % atd != 0) {
            s = loco_err_set(err, LOCO_EINVAL,
                             "unet: addition_embed_type 'text_time' needs text_embeds [%d, P] and time_ids with "
                             "P + n * %d = %d",
                             B, atd, P);
            goto done;
        }
        const int n_ids = (int)((P - te->shape[1]) / atd);
        host = malloc((size_t)B * (size_t)n_ids * (size_t)atd * sizeof *host);
        if (!host) {
            s = loco_err_set(err, LOCO_ENOMEM, "unet: out of memory for the time ids");
            goto done;
        }
        /* add_time_proj over time_ids.flatten(), reshaped to [B, n_ids * atd] */
        loco_timestep_embedding(in->time_ids, B * n_ids, atd, c->flip_sin_to_cos, c->freq_shift, host);
        s = upload_host(be, host, B, (int64_t)n_ids * atd, &tt, err);
        free(host);
        host = NULL;
        if (!s && pf) s = pf(in->probe_ctx, "add_time_proj", &tt, err);
        if (!s) s = loco_tensor_alloc_act(be, 2, (int64_t[]){B, P}, &cat, err);
        if (!s) s = loco_concat(be, &cat, te, &tt, 1, err);
        if (!s) s = loco_lin_forward(be, &u->add_l1, &cat, LOCO_ACT_SILU, &a1, err);
        if (!s) s = loco_lin_forward(be, &u->add_l2, &a1, LOCO_ACT_NONE, &aug, err);
        if (!s && pf) s = pf(in->probe_ctx, "add_embedding", &aug, err);
        if (!s) s = loco_add(be, &emb, &emb, &aug, err);
    }
    /* every resnet applies SiLU to temb before its time_emb_proj: do it once */
    if (!s) s = loco_tensor_alloc_act(be, 2, emb.shape, temb_act, err);
    if (!s) s = loco_activation(be, temb_act, &emb, LOCO_ACT_SILU, err);
done:
    loco_tensor_free(&ts);
    loco_tensor_free(&e1);
    loco_tensor_free(&emb);
    loco_tensor_free(&tt);
    loco_tensor_free(&cat);
    loco_tensor_free(&a1);
    loco_tensor_free(&aug);
    if (s) loco_tensor_free(temb_act);
    return s;
}

/* ---- forward ------------------------------------------------------------------------------------ */

void loco_unet_inputs_init(loco_unet_inputs *in) { memset(in, 0, sizeof *in); }

static loco_status check_index(const int *idx, int B, int Bt, const char *what, int layer, loco_err *err) {
    for (int b = 0; b < B; b++)
        if (idx[b] < 0 || idx[b] >= Bt) {
            if (layer >= 0)
                return loco_err_set(err, LOCO_EINVAL, "unet: %s[%d][%d] = %d is outside the text batch of %d", what,
                                    layer, b, idx[b], Bt);
            return loco_err_set(err, LOCO_EINVAL, "unet: %s[%d] = %d is outside the text batch of %d", what, b,
                                idx[b], Bt);
        }
    return LOCO_OK;
}

loco_status loco_unet_forward(loco_unet *u, const loco_unet_inputs *in, loco_tensor *out, loco_err *err) {
    const loco_unet_config *c = &u->cfg;
    const loco_tensor *x = in->sample;
    memset(out, 0, sizeof *out);
    if (!x || x->ndim != 4 || x->shape[1] != c->in_channels)
        return loco_err_set(err, LOCO_EINVAL, "unet: sample must be [batch, %d, height, width]", c->in_channels);
    if (!in->timesteps) return loco_err_set(err, LOCO_EINVAL, "unet: timesteps are required (one per sample)");
    const int B = (int)x->shape[0];
    const int64_t f = (int64_t)1 << (c->n_blocks - 1);
    if (x->shape[2] % f || x->shape[3] % f)
        return loco_err_set(err, LOCO_EINVAL, "unet: sample size %lldx%lld is not a multiple of %lld",
                            (long long)x->shape[2], (long long)x->shape[3], (long long)f);
    int Bt;
    if (in->text_kv) {
        if (in->text_kv->n_layers != u->n_cross)
            return loco_err_set(err, LOCO_EINVAL, "unet: text K/V has %d layers, the UNet has %d cross-attention layers",
                                in->text_kv->n_layers, u->n_cross);
        Bt = in->text_kv->batch;
    } else if (in->encoder_hidden_states && in->encoder_hidden_states->ndim == 3) {
        Bt = (int)in->encoder_hidden_states->shape[0];
    } else if (u->n_cross > 0) {
        return loco_err_set(err, LOCO_EINVAL, "unet: encoder_hidden_states [batch, tokens, dim] or text_kv is required");
    } else {
        Bt = B;
    }
    int *tidx = malloc((size_t)B * sizeof *tidx);
    if (!tidx) return loco_err_set(err, LOCO_ENOMEM, "unet: out of memory");
    loco_status s = LOCO_OK;
    for (int b = 0; b < B; b++) tidx[b] = in->text_index ? in->text_index[b] : b;
    if (!in->text_index && Bt != B)
        s = loco_err_set(err, LOCO_EINVAL, "unet: %d samples but %d text rows: pass text_index", B, Bt);
    if (!s) s = check_index(tidx, B, Bt, "text_index", -1, err);
    for (int i = 0; !s && in->kv_index_per_layer && i < u->n_cross; i++)
        if (in->kv_index_per_layer[i]) s = check_index(in->kv_index_per_layer[i], B, Bt, "kv_index_per_layer", i, err);

    loco_tensor temb_act = {0};
    if (!s) s = time_embedding(u, in, B, &temb_act, err);
    unet_run r = {.u = u,
                  .be = u->be,
                  .B = B,
                  .Bt = Bt,
                  .hooks = &in->hooks,
                  .ehs = in->encoder_hidden_states,
                  .text_index = tidx,
                  .kv = in->text_kv,
                  .kv_index_per_layer = in->kv_index_per_layer,
                  .temb_act = &temb_act};
    if (!s) {
        /* the time embedding stays outside any recorded graph: it uploads host data (a sync) */
        if (unet_graph_eligible(u, in))
            s = unet_graph_forward(&r, x, out, err);
        else
            s = unet_body(&r, x, in->probe, in->probe_ctx, out, err);
    }
    loco_tensor_free(&temb_act);
    free(tidx);
    return s;
}

loco_status unet_body(const unet_run *r, const loco_tensor *x, loco_probe_fn probe, void *probe_ctx,
                      loco_tensor *out, loco_err *err) {
    loco_unet *u = r->u;
    loco_tensor h0 = {0}, h = {0}, n = {0}, tp = {0};
    unet_run rr = *r;
    loco_tensor *proj = NULL;
    loco_status s = LOCO_OK;
    /* every resnet's time projection in one op (loco_linear_many), not one small GEMM each */
    if (r->temb_act && u->n_resnets > 0 && u->cfg.time_embed_dim > 0) {
        s = unet_temb_projections(r, &tp, &proj, err);
        rr.temb_proj = proj;
    }
    if (!s) s = loco_conv_forward(u->be, &u->conv_in, x, &h0, err);
    if (!s && probe) s = probe(probe_ctx, "conv_in", &h0, err);
    if (!s) s = unet_blocks_forward(&rr, &h0, probe, probe_ctx, &h, err);
    free(proj);
    loco_tensor_free(&tp);
    loco_tensor_free(&h0);
    if (!s) s = loco_gnorm_forward(u->be, &u->norm_out, &h, 1, &n, err);
    loco_tensor_free(&h);
    if (!s && probe) s = probe(probe_ctx, "conv_act", &n, err);
    if (!s) s = loco_conv_forward(u->be, &u->conv_out, &n, out, err);
    loco_tensor_free(&n);
    return s;
}
