/* intervention.c: checking an intervention plan against the models and compiling it into hooks
 * and K/V row tables (see intervention.h). */
#include "intervention.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "torch_rng.h"

static const char *const action_names[LOCO_IV_ACTION_COUNT] = {
    [LOCO_IV_CONTEXT] = "context", [LOCO_IV_RESTORE] = "restore", [LOCO_IV_CORRUPT] = "corrupt",
    [LOCO_IV_ABLATE] = "ablate",   [LOCO_IV_RECORD] = "record",
};

const char *loco_iv_action_name(loco_iv_action a) {
    return (unsigned)a < LOCO_IV_ACTION_COUNT ? action_names[a] : "unknown";
}

int loco_iv_action_from_name(const char *name, loco_iv_action *out) {
    for (int i = 0; name && i < LOCO_IV_ACTION_COUNT; i++)
        if (strcmp(name, action_names[i]) == 0) {
            *out = (loco_iv_action)i;
            return 0;
        }
    return -1;
}

void loco_intervention_init(loco_intervention *iv) {
    memset(iv, 0, sizeof *iv);
    iv->cross_index = -1;
    iv->scale = 3.0f;
}

enum { M_UNET = 0, M_TEXT, M_TEXT2, M_COUNT };

/* One compiled intervention. */
typedef struct civ {
    loco_intervention iv; /* arrays point at the copies below */
    int *positions;
    int32_t *channels;
    float *values;
    int model;            /* M_*; -1 for context */
    int site;             /* site id in that model's table */
    loco_site_kind kind;
    int per_text_row;     /* 1: target/source are text rows (text sites, cross_k/v); 0: samples */
    loco_tensor noise[2]; /* corrupt: scaled noise [n_positions, D] for encoder 1 and 2 */
    float *rec;           /* record buffer: steps x numel */
    int rec_steps;
    int64_t rec_numel;
    int rec_ndim;
    int64_t rec_shape[LOCO_MAX_DIMS];
} civ;

/* Per model: for each site id, the indices of the interventions acting there, in plan order. */
typedef struct site_lists {
    int nsites;
    int *count;
    int **items;
} site_lists;

struct loco_iv_program {
    loco_iv_layout lay;
    loco_iv_models models;
    int n;
    civ *ivs;
    site_lists lists[M_COUNT];
    int call;
    int **kv_rows; /* n_cross tables of B rows */
    int n_cross;
    loco_site_hooks unet_hooks; /* what loco_iv_apply installs as the calls' hooks and kv_hooks */
    unsigned char *replay_id;   /* the calls' hooks' replay_id (sites.h), NULL when they record */
    size_t replay_size;
};

static void lists_free(site_lists *l) {
    for (int i = 0; l->items && i < l->nsites; i++) free(l->items[i]);
    free(l->items);
    free(l->count);
    memset(l, 0, sizeof *l);
}

void loco_iv_program_free(loco_iv_program *p) {
    if (!p) return;
    for (int i = 0; p->ivs && i < p->n; i++) {
        civ *c = &p->ivs[i];
        free(c->positions);
        free(c->channels);
        free(c->values);
        free((char *)c->iv.site);
        free(c->rec);
        loco_tensor_free(&c->noise[0]);
        loco_tensor_free(&c->noise[1]);
    }
    free(p->ivs);
    for (int m = 0; m < M_COUNT; m++) lists_free(&p->lists[m]);
    for (int i = 0; p->kv_rows && i < p->n_cross; i++) free(p->kv_rows[i]);
    free(p->kv_rows);
    free(p->replay_id);
    free(p);
}

static loco_status oom(loco_err *err) { return loco_err_set(err, LOCO_ENOMEM, "interventions: out of memory"); }

loco_status loco_token_embedding_std(const loco_clip_text *m, double *out, loco_err *err) {
    const loco_tensor *t = loco_clip_text_param(m, "text_model.embeddings.token_embedding.weight");
    if (!t) return loco_err_set(err, LOCO_ENOTFOUND, "text encoder has no token embedding");
    const int64_t n = loco_tensor_numel(t);
    float *h = malloc((size_t)n * sizeof *h);
    if (!h) return oom(err);
    loco_status st = loco_tensor_download_f32(t, h, err);
    if (!st) {
        /* two passes in double: the unbiased std torch.std() computes */
        double s = 0, ss = 0;
        for (int64_t i = 0; i < n; i++) s += h[i];
        const double mean = s / (double)n;
        for (int64_t i = 0; i < n; i++) ss += (h[i] - mean) * (h[i] - mean);
        *out = n > 1 ? sqrt(ss / (double)(n - 1)) : 0.0;
    }
    free(h);
    return st;
}

/* ---- resolution ---------------------------------------------------------------------------------- */

static const loco_clip_text *text_model(const loco_iv_program *p, int m) {
    return m == M_TEXT ? p->models.text : m == M_TEXT2 ? p->models.text_2 : NULL;
}

static int find_text_site(const loco_clip_text *t, const char *name) {
    for (int i = 0; t && i < loco_clip_text_num_sites(t); i++)
        if (strcmp(loco_clip_text_site(t, i)->name, name) == 0) return i;
    return -1;
}

/* Resolve c->iv.site (or cross_index) to (model, site id, kind). */
static loco_status resolve_site(const loco_iv_program *p, int idx, civ *c, loco_err *err) {
    const loco_intervention *iv = &c->iv;
    const char *act = loco_iv_action_name(iv->action);
    if (!iv->site) {
        if (iv->cross_index < 0)
            return loco_err_set(err, LOCO_EINVAL, "intervention %d (%s): no site given (a module path or cross_index)",
                                idx, act);
        const int nc = loco_unet_n_cross(p->models.unet);
        if (iv->cross_index >= nc)
            return loco_err_set(err, LOCO_EINVAL,
                                "intervention %d (%s): cross-attention layer %d is out of range (the UNet has %d, 0..%d)",
                                idx, act, iv->cross_index, nc, nc - 1);
        int ns;
        const loco_site *sites = loco_unet_sites(p->models.unet, &ns);
        for (int i = 0; i < ns; i++)
            if (sites[i].kind == LOCO_SITE_CROSS_ATTN && sites[i].cross_index == iv->cross_index) {
                c->model = M_UNET;
                c->site = i;
                c->kind = sites[i].kind;
                return LOCO_OK;
            }
        return loco_err_set(err, LOCO_EINVAL, "intervention %d (%s): no attn2 site for layer %d", idx, act,
                            iv->cross_index);
    }
    const loco_site *us = loco_unet_find_site(p->models.unet, iv->site);
    if (us) {
        c->model = M_UNET;
        c->site = us->id;
        c->kind = us->kind;
        return LOCO_OK;
    }
    int m = M_TEXT;
    const char *name = iv->site;
    if (strncmp(name, LOCO_IV_TEXT2_PREFIX, strlen(LOCO_IV_TEXT2_PREFIX)) == 0) {
        m = M_TEXT2;
        name += strlen(LOCO_IV_TEXT2_PREFIX);
    }
    const loco_clip_text *t = text_model(p, m);
    int id = find_text_site(t, name);
    if (id < 0)
        return loco_err_set(err, LOCO_ENOTFOUND,
                            "intervention %d (%s): unknown site '%s'%s; UNet sites are listed by `loco inspect MODEL "
                            "--all-sites`, text-encoder sites (text_model.embeddings and "
                            "text_model.encoder.layers.N.{self_attn,self_attn.out_proj,mlp}) by `loco inspect MODEL`",
                            idx, act, iv->site, m == M_TEXT2 && !t ? " (the model has no text_encoder_2)" : "");
    c->model = m;
    c->site = id;
    c->kind = loco_clip_text_site(t, id)->kind;
    return LOCO_OK;
}

static loco_status check_index(int v, int n, int idx, const char *act, const char *what, const char *unit,
                               loco_err *err) {
    if (v < 0 || v >= n)
        return loco_err_set(err, LOCO_EINVAL, "intervention %d (%s): %s %d is out of range (%d %s)", idx, act, what, v,
                            n, unit);
    return LOCO_OK;
}

/* Scaled corruption noise for one encoder, uploaded once. */
static loco_status make_noise(const loco_clip_text *t, double std, const civ *c, loco_tensor *out, loco_err *err) {
    loco_status st = std > 0 ? LOCO_OK : loco_token_embedding_std(t, &std, err);
    if (st) return st;
    const int D = loco_clip_text_get_config(t)->hidden_size, np = c->iv.n_positions;
    float *h = malloc((size_t)np * D * sizeof *h);
    if (!h) return oom(err);
    loco_torch_rng g;
    loco_torch_rng_seed(&g, c->iv.seed);
    loco_torch_randn_f32(&g, h, (size_t)np * D);
    /* nu in float32, then noise * nu in float32: what torch does with a float32 tensor scalar */
    const float nu = (float)((double)c->iv.scale * std);
    for (int64_t i = 0; i < (int64_t)np * D; i++) h[i] = h[i] * nu;
    st = loco_tensor_alloc_act(loco_clip_text_backend(t), 2, (int64_t[]){np, D}, out, err);
    if (!st) st = loco_tensor_upload(out, h, LOCO_F32, err);
    free(h);
    return st;
}

static loco_status check_one(loco_iv_program *p, int idx, civ *c, loco_err *err) {
    const loco_intervention *iv = &c->iv;
    const char *act = loco_iv_action_name(iv->action);
    const loco_iv_layout *L = &p->lay;
    loco_status st;
    c->model = -1;
    if ((unsigned)iv->action >= LOCO_IV_ACTION_COUNT)
        return loco_err_set(err, LOCO_EINVAL, "intervention %d: unknown action %d", idx, (int)iv->action);
    if (iv->action == LOCO_IV_CONTEXT) {
        const int nc = loco_unet_n_cross(p->models.unet);
        int layer = iv->cross_index;
        if (iv->site) {
            const loco_site *s = loco_unet_find_site(p->models.unet, iv->site);
            if (!s || s->cross_index < 0)
                return loco_err_set(err, LOCO_ENOTFOUND,
                                    "intervention %d (context): '%s' is not a cross-attention layer (attn2) of the UNet",
                                    idx, iv->site);
            layer = s->cross_index;
        }
        if (layer < 0 || layer >= nc)
            return loco_err_set(err, LOCO_EINVAL,
                                "intervention %d (context): cross-attention layer %d is out of range (the UNet has %d, "
                                "0..%d)",
                                idx, layer, nc, nc - 1);
        c->iv.cross_index = layer;
        if ((st = check_index(iv->target, L->n_samples, idx, act, "sample", "samples", err))) return st;
        return check_index(iv->source, L->n_text_rows, idx, act, "text row", "text rows", err);
    }
    if (iv->action == LOCO_IV_CORRUPT) {
        c->per_text_row = 1;
        if ((st = check_index(iv->target, L->n_text_rows, idx, act, "text row", "text rows", err))) return st;
        if (iv->n_positions < 1 || !iv->positions)
            return loco_err_set(err, LOCO_EINVAL, "intervention %d (corrupt): no token positions to corrupt", idx);
        if (!isfinite(iv->scale) || iv->scale < 0)
            return loco_err_set(err, LOCO_EINVAL, "intervention %d (corrupt): scale must be >= 0, got %g", idx,
                                (double)iv->scale);
        int which[2] = {M_TEXT, M_TEXT2};
        if (iv->site) {
            if ((st = resolve_site(p, idx, c, err))) return st;
            if (c->kind != LOCO_SITE_TEXT_EMBED)
                return loco_err_set(err, LOCO_EINVAL, "intervention %d (corrupt): acts on text_model.embeddings, not '%s'",
                                    idx, iv->site);
            which[0] = c->model;
            which[1] = -1;
        }
        for (int k = 0; k < 2; k++) {
            const loco_clip_text *t = which[k] >= 0 ? text_model(p, which[k]) : NULL;
            if (!t) continue;
            const int maxpos = loco_clip_text_get_config(t)->max_position_embeddings;
            for (int j = 0; j < iv->n_positions; j++)
                if (iv->positions[j] < 0 || iv->positions[j] >= maxpos)
                    return loco_err_set(err, LOCO_EINVAL, "intervention %d (corrupt): token position %d is outside 0..%d",
                                        idx, iv->positions[j], maxpos - 1);
            const double std = which[k] == M_TEXT2 ? p->models.text_2_std : p->models.text_std;
            if ((st = make_noise(t, std, c, &c->noise[which[k] == M_TEXT2], err))) return st;
        }
        /* without a site: listed under encoder 1 (build_lists adds encoder 2); with one, under the
         * encoder it names, whose noise apply_one then picks */
        if (!iv->site) {
            if (!p->models.text) return loco_err_set(err, LOCO_EINVAL, "intervention %d (corrupt): no text encoder", idx);
            c->model = M_TEXT;
        }
        c->site = 0;
        c->kind = LOCO_SITE_TEXT_EMBED;
        return LOCO_OK;
    }
    if ((st = resolve_site(p, idx, c, err))) return st;
    c->per_text_row = c->model != M_UNET || c->kind == LOCO_SITE_CROSS_K || c->kind == LOCO_SITE_CROSS_V;
    const int n_units = c->per_text_row ? L->n_text_rows : L->n_samples;
    const char *unit = c->per_text_row ? "text row" : "sample", *units = c->per_text_row ? "text rows" : "samples";
    if ((st = check_index(iv->target, n_units, idx, act, unit, units, err))) return st;
    if (iv->action == LOCO_IV_RESTORE) {
        if ((st = check_index(iv->source, n_units, idx, act, "reference", units, err))) return st;
        if (iv->source == iv->target)
            return loco_err_set(err, LOCO_EINVAL, "intervention %d (restore): %s %d would restore from itself", idx,
                                unit, iv->target);
    }
    if (iv->action == LOCO_IV_ABLATE) {
        if (c->kind == LOCO_SITE_RESNET)
            return loco_err_set(err, LOCO_EINVAL,
                                "intervention %d (ablate): '%s' is a ResNet output (NCHW); ablation sets channels of "
                                "token sites (attn1, attn2, ff, attn2.to_k/to_v, text sites)",
                                idx, iv->site);
        if (iv->n_channels < 1 || !iv->channels || !iv->values)
            return loco_err_set(err, LOCO_EINVAL, "intervention %d (ablate): channels and values are required", idx);
    }
    if (iv->n_positions > 0) {
        if (!c->per_text_row || c->model == M_UNET)
            return loco_err_set(err, LOCO_EINVAL, "intervention %d (%s): token positions apply to text-encoder sites only",
                                idx, act);
        const int maxpos = loco_clip_text_get_config(text_model(p, c->model))->max_position_embeddings;
        for (int j = 0; j < iv->n_positions; j++)
            if (!iv->positions || iv->positions[j] < 0 || iv->positions[j] >= maxpos)
                return loco_err_set(err, LOCO_EINVAL, "intervention %d (%s): token position %d is outside 0..%d", idx,
                                    act, iv->positions ? iv->positions[j] : -1, maxpos - 1);
    }
    return LOCO_OK;
}

static loco_status copy_plan_entry(const loco_intervention *src, civ *c, loco_err *err) {
    c->iv = *src;
    c->iv.site = NULL;
    c->iv.positions = NULL;
    c->iv.channels = NULL;
    c->iv.values = NULL;
    if (src->site && !(c->iv.site = strdup(src->site))) return oom(err);
    if (src->n_positions > 0 && src->positions) {
        if (!(c->positions = malloc((size_t)src->n_positions * sizeof *c->positions))) return oom(err);
        memcpy(c->positions, src->positions, (size_t)src->n_positions * sizeof *c->positions);
        c->iv.positions = c->positions;
    }
    if (src->n_channels > 0 && src->channels && src->values) {
        c->channels = malloc((size_t)src->n_channels * sizeof *c->channels);
        c->values = malloc((size_t)src->n_channels * sizeof *c->values);
        if (!c->channels || !c->values) return oom(err);
        memcpy(c->channels, src->channels, (size_t)src->n_channels * sizeof *c->channels);
        memcpy(c->values, src->values, (size_t)src->n_channels * sizeof *c->values);
        c->iv.channels = c->channels;
        c->iv.values = c->values;
    }
    return LOCO_OK;
}

static loco_status build_lists(loco_iv_program *p, loco_err *err) {
    int ns[M_COUNT];
    loco_unet_sites(p->models.unet, &ns[M_UNET]);
    ns[M_TEXT] = p->models.text ? loco_clip_text_num_sites(p->models.text) : 0;
    ns[M_TEXT2] = p->models.text_2 ? loco_clip_text_num_sites(p->models.text_2) : 0;
    for (int m = 0; m < M_COUNT; m++) {
        site_lists *l = &p->lists[m];
        l->nsites = ns[m];
        l->count = calloc((size_t)(ns[m] ? ns[m] : 1), sizeof *l->count);
        l->items = calloc((size_t)(ns[m] ? ns[m] : 1), sizeof *l->items);
        if (!l->count || !l->items) return oom(err);
    }
    for (int i = 0; i < p->n; i++) {
        const civ *c = &p->ivs[i];
        if (c->model < 0) continue;
        /* a corrupt without an explicit site acts on both encoders' embeddings */
        for (int m = c->model; m <= (c->iv.action == LOCO_IV_CORRUPT && !c->iv.site ? M_TEXT2 : c->model); m++) {
            if (m == M_TEXT2 && (!p->models.text_2 || (c->iv.action == LOCO_IV_CORRUPT && !c->noise[1].data)))
                continue;
            site_lists *l = &p->lists[m];
            int *items = realloc(l->items[c->site], (size_t)(l->count[c->site] + 1) * sizeof *items);
            if (!items) return oom(err);
            items[l->count[c->site]++] = i;
            l->items[c->site] = items;
        }
    }
    return LOCO_OK;
}

loco_status loco_iv_compile(const loco_intervention *plan, int n, const loco_iv_layout *layout,
                            const loco_iv_models *models, loco_iv_program **out, loco_err *err) {
    *out = NULL;
    if (!layout || !models || !models->unet || (n > 0 && !plan))
        return loco_err_set(err, LOCO_EINVAL, "interventions: layout, models (a UNet at least) and the plan are required");
    if (layout->n_samples < 1 || layout->n_text_rows < 1 || layout->n_calls < 1)
        return loco_err_set(err, LOCO_EINVAL, "interventions: the layout needs samples, text rows and UNet calls");
    loco_iv_program *p = calloc(1, sizeof *p);
    if (!p) return oom(err);
    p->lay = *layout;
    p->models = *models;
    p->n = n;
    p->call = 0;
    loco_status st = LOCO_OK;
    if (n > 0 && !(p->ivs = calloc((size_t)n, sizeof *p->ivs))) st = oom(err);
    for (int i = 0; i < n && !st; i++) {
        if ((st = copy_plan_entry(&plan[i], &p->ivs[i], err))) break;
        st = check_one(p, i, &p->ivs[i], err);
    }
    if (!st) st = build_lists(p, err);
    if (st) {
        loco_iv_program_free(p);
        return st;
    }
    *out = p;
    return LOCO_OK;
}

/* ---- execution ------------------------------------------------------------------------------------ */

/* Row `row` of a batch tensor [N, ...] as [1, ...]. */
static loco_status row_view(const loco_tensor *t, int64_t row, loco_tensor *out, loco_err *err) {
    return loco_tensor_slice0(t, row, 1, out, err);
}

/* View of token position `pos` of row `row` of [N, L, D] as [1, D]. */
static loco_status pos_view(const loco_tensor *t, int64_t row, int pos, loco_tensor *out, loco_err *err) {
    if (t->ndim != 3 || pos >= t->shape[1])
        return loco_err_set(err, LOCO_EINVAL, "token position %d is outside the %lld positions of the site", pos,
                            (long long)(t->ndim == 3 ? t->shape[1] : 0));
    const int64_t D = t->shape[2];
    return loco_tensor_view(t, (row * t->shape[1] + pos) * D, 2, (int64_t[]){1, D}, out, err);
}

/* The record buffer of c, allocated at the first call for steps x one row's size. */
static loco_status ensure_rec(civ *c, int steps, const loco_tensor *row, loco_err *err) {
    const int64_t numel = loco_tensor_numel(row);
    if (c->rec) {
        if (numel != c->rec_numel) return loco_err_set(err, LOCO_EINVAL, "record: the site changed size between calls");
        return LOCO_OK;
    }
    c->rec = calloc((size_t)steps * (size_t)numel, sizeof *c->rec);
    if (!c->rec) return loco_err_set(err, LOCO_ENOMEM, "record: out of memory for %d x %lld floats", steps, (long long)numel);
    c->rec_steps = steps;
    c->rec_numel = numel;
    c->rec_ndim = row->ndim - 1;
    for (int d = 1; d < row->ndim; d++) c->rec_shape[d - 1] = row->shape[d];
    return LOCO_OK;
}

/* Apply one intervention to a site output whose rows are text rows (row0 = 0) or the conditional
 * UNet rows (row0 = B with guidance). */
static loco_status apply_one(loco_iv_program *p, civ *c, int enc, loco_tensor *out, int64_t row0, loco_err *err) {
    loco_backend *be = out->be;
    const loco_intervention *iv = &c->iv;
    const int64_t tr = row0 + iv->target;
    if (tr >= out->shape[0])
        return loco_err_set(err, LOCO_EINVAL, "row %lld is outside the site's batch of %lld", (long long)tr,
                            (long long)out->shape[0]);
    loco_tensor a, b;
    loco_status st = LOCO_OK;
    switch (iv->action) {
    case LOCO_IV_CORRUPT: {
        const loco_tensor *nz = &c->noise[enc == M_TEXT2];
        for (int j = 0; j < iv->n_positions && !st; j++) {
            loco_tensor nrow;
            if (!(st = pos_view(out, tr, iv->positions[j], &a, err)) &&
                !(st = loco_tensor_view(nz, (int64_t)j * nz->shape[1], 2, (int64_t[]){1, nz->shape[1]}, &nrow, err)))
                st = loco_add(be, &a, &a, &nrow, err);
        }
        return st;
    }
    case LOCO_IV_RESTORE: {
        const int64_t sr = row0 + iv->source;
        if (iv->n_positions == 0) {
            if (!(st = row_view(out, tr, &a, err)) && !(st = row_view(out, sr, &b, err))) st = loco_copy(be, &a, &b, err);
            return st;
        }
        for (int j = 0; j < iv->n_positions && !st; j++)
            if (!(st = pos_view(out, tr, iv->positions[j], &a, err)) && !(st = pos_view(out, sr, iv->positions[j], &b, err)))
                st = loco_copy(be, &a, &b, err);
        return st;
    }
    case LOCO_IV_ABLATE:
        if (iv->n_positions == 0) {
            if (!(st = row_view(out, tr, &a, err)))
                st = loco_set_channels(be, &a, iv->channels, iv->values, iv->n_channels, err);
            return st;
        }
        for (int j = 0; j < iv->n_positions && !st; j++)
            if (!(st = pos_view(out, tr, iv->positions[j], &a, err)))
                st = loco_set_channels(be, &a, iv->channels, iv->values, iv->n_channels, err);
        return st;
    case LOCO_IV_RECORD: {
        if ((st = row_view(out, tr, &a, err))) return st;
        const int per_call = !c->per_text_row;
        const int steps = per_call ? p->lay.n_calls : 1, step = per_call ? p->call : 0;
        if (step < 0 || step >= steps)
            return loco_err_set(err, LOCO_EINVAL, "record: call %d is outside the %d calls of the layout", step, steps);
        if ((st = ensure_rec(c, steps, &a, err))) return st;
        return loco_tensor_download_f32(&a, c->rec + (size_t)step * c->rec_numel, err);
    }
    default:
        return LOCO_OK; /* context is compiled into K/V rows */
    }
}

static loco_status run_list(loco_iv_program *p, int m, const loco_site *site, loco_tensor *out, loco_err *err) {
    const site_lists *l = &p->lists[m];
    if (site->id < 0 || site->id >= l->nsites || l->count[site->id] == 0) return LOCO_OK;
    for (int k = 0; k < l->count[site->id]; k++) {
        civ *c = &p->ivs[l->items[site->id][k]];
        int64_t row0 = 0;
        if (!c->per_text_row) {
            const int64_t rows = (int64_t)p->lay.n_samples * (p->lay.cfg ? 2 : 1);
            if (out->shape[0] != rows)
                return loco_err_set(err, LOCO_EINVAL, "interventions: site %s has %lld rows, the layout %lld", site->name,
                                    (long long)out->shape[0], (long long)rows);
            row0 = p->lay.cfg ? p->lay.n_samples : 0;
        }
        loco_status st = apply_one(p, c, m, out, row0, err);
        if (st)
            return loco_err_prefix(err, "intervention %d (%s) at %s", l->items[site->id][k],
                                   loco_iv_action_name(c->iv.action), site->name);
    }
    return LOCO_OK;
}

static loco_status text_hook(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    return run_list(ctx, M_TEXT, site, out, err);
}
static loco_status text2_hook(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    return run_list(ctx, M_TEXT2, site, out, err);
}
static loco_status unet_hook(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    return run_list(ctx, M_UNET, site, out, err);
}

/* Where each model's hook acts: the sites with interventions (sites.h, acts_at). Elsewhere the
 * models keep their fused forms, so a plan's unhooked sites compute as without a plan. */
static int acts_at(const loco_iv_program *p, int m, const loco_site *site) {
    const site_lists *l = &p->lists[m];
    return site->id >= 0 && site->id < l->nsites && l->count[site->id] > 0;
}
static int text_acts_at(void *ctx, const loco_site *site) { return acts_at(ctx, M_TEXT, site); }
static int text2_acts_at(void *ctx, const loco_site *site) { return acts_at(ctx, M_TEXT2, site); }
static int unet_acts_at(void *ctx, const loco_site *site) { return acts_at(ctx, M_UNET, site); }

loco_site_hooks loco_iv_text_hooks(loco_iv_program *p) {
    return (loco_site_hooks){.after = text_hook, .ctx = p, .acts_at = text_acts_at};
}
loco_site_hooks loco_iv_text_2_hooks(loco_iv_program *p) {
    return (loco_site_hooks){.after = text2_hook, .ctx = p, .acts_at = text2_acts_at};
}
loco_site_hooks loco_iv_unet_hooks(loco_iv_program *p) {
    return (loco_site_hooks){.after = unet_hook, .ctx = p, .acts_at = unet_acts_at};
}

loco_status loco_iv_before_call(void *program, int call, int n_calls, loco_err *err) {
    loco_iv_program *p = program;
    if (n_calls != p->lay.n_calls)
        return loco_err_set(err, LOCO_EINVAL, "interventions: the run has %d UNet calls, the layout says %d", n_calls,
                            p->lay.n_calls);
    p->call = call;
    return LOCO_OK;
}

loco_status loco_iv_kv_rows(loco_iv_program *p, const int *row_of_sample, const int *const **out, loco_err *err) {
    *out = NULL;
    int any = 0;
    for (int i = 0; i < p->n; i++) any |= p->ivs[i].iv.action == LOCO_IV_CONTEXT;
    if (!any) return LOCO_OK;
    if (!row_of_sample) return loco_err_set(err, LOCO_EINVAL, "interventions: context needs each sample's text row");
    if (!p->kv_rows) {
        p->n_cross = loco_unet_n_cross(p->models.unet);
        if (!(p->kv_rows = calloc((size_t)(p->n_cross ? p->n_cross : 1), sizeof *p->kv_rows))) return oom(err);
    }
    const int B = p->lay.n_samples;
    for (int i = 0; i < p->n; i++) {
        const loco_intervention *iv = &p->ivs[i].iv;
        if (iv->action != LOCO_IV_CONTEXT) continue;
        int **t = &p->kv_rows[iv->cross_index];
        if (!*t) {
            if (!(*t = malloc((size_t)B * sizeof **t))) return oom(err);
            memcpy(*t, row_of_sample, (size_t)B * sizeof **t);
        }
        (*t)[iv->target] = iv->source;
    }
    *out = (const int *const *)p->kv_rows;
    return LOCO_OK;
}

/* Whether c acts inside the UNet calls (a sample site) rather than in the text K/V projection,
 * which runs once per run (cross_k / cross_v: per text row). Context actions are compiled into
 * per-layer K/V rows (loco_iv_kv_rows): they need no hook at all. */
static int acts_in_calls(const civ *c) {
    return c->model == M_UNET && c->iv.action != LOCO_IV_CONTEXT && !c->per_text_row;
}
static int acts_in_kv(const civ *c) { return c->model == M_UNET && c->iv.action != LOCO_IV_CONTEXT && c->per_text_row; }

static int any_ivs(const loco_iv_program *p, int (*pred)(const civ *)) {
    for (int i = 0; i < p->n; i++)
        if (pred(&p->ivs[i])) return 1;
    return 0;
}

/* Appends n bytes to a growing buffer; -1 when host memory ran out. */
static int bytes_put(unsigned char **buf, size_t *len, size_t *cap, const void *src, size_t n) {
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n) c *= 2;
        unsigned char *b = realloc(*buf, c);
        if (!b) return -1;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    return 0;
}

/* The UNet hooks' replay_id (sites.h): every intervention acting inside the UNet calls, in plan
 * order (the order the site lists run them in), with everything apply_one reads, and the rows
 * they index. Restore and ablate only enqueue device ops on views of the site output (values
 * ride in kernel arguments), so these bytes determine a hooked call's device work; record
 * downloads on the host at every call, so a plan with one gets no id and its calls run op by
 * op. */
static loco_status build_replay_id(loco_iv_program *p, loco_err *err) {
    free(p->replay_id);
    p->replay_id = NULL;
    p->replay_size = 0;
    for (int i = 0; i < p->n; i++)
        if (acts_in_calls(&p->ivs[i]) && p->ivs[i].iv.action == LOCO_IV_RECORD) return LOCO_OK;
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    const int32_t head[3] = {0x6c6f6376 /* version tag */, p->lay.n_samples, p->lay.cfg};
    int bad = bytes_put(&buf, &len, &cap, head, sizeof head);
    for (int i = 0; i < p->n && !bad; i++) {
        const civ *c = &p->ivs[i];
        if (!acts_in_calls(c)) continue;
        /* only ablate reads channels (another action may carry a count without arrays) */
        const int nch = c->iv.action == LOCO_IV_ABLATE ? c->iv.n_channels : 0;
        const int32_t f[7] = {(int32_t)c->iv.action, c->site,          c->iv.target, c->iv.source,
                              c->per_text_row,       c->iv.n_positions, nch};
        bad = bytes_put(&buf, &len, &cap, f, sizeof f) ||
              (c->iv.n_positions > 0 &&
               bytes_put(&buf, &len, &cap, c->iv.positions, (size_t)c->iv.n_positions * sizeof *c->iv.positions)) ||
              (nch > 0 && (bytes_put(&buf, &len, &cap, c->iv.channels, (size_t)nch * sizeof *c->iv.channels) ||
                           bytes_put(&buf, &len, &cap, c->iv.values, (size_t)nch * sizeof *c->iv.values)));
    }
    if (bad) {
        free(buf);
        return oom(err);
    }
    p->replay_id = buf;
    p->replay_size = len;
    return LOCO_OK;
}

loco_status loco_iv_apply(loco_iv_program *p, loco_denoise_params *d, loco_err *err) {
    /* Hooks only where something acts. A plan of context actions only (LocoGen's window sweeps)
     * or of cross_k / cross_v actions only (neuron ablations: the text K/V projection's hooks)
     * leaves the UNet calls without hooks: they keep their fused residual adds and CUDA graph
     * replay (engine/unet_graph.c records the K/V rows with the graph). Restores and ablations
     * of sample sites install call hooks that carry a replay_id, so their calls replay too;
     * records install them without one, so those calls run op by op. */
    const int in_calls = any_ivs(p, acts_in_calls), in_kv = any_ivs(p, acts_in_kv);
    p->unet_hooks = loco_iv_unet_hooks(p);
    if (in_calls) {
        loco_status st = build_replay_id(p, err);
        if (st) return st;
        p->unet_hooks.replay_id = p->replay_id;
        p->unet_hooks.replay_size = p->replay_size;
        d->hooks = p->unet_hooks;
    }
    if (in_kv) d->kv_hooks = &p->unet_hooks; /* run once, in the text K/V projection */
    d->before_call = loco_iv_before_call;
    d->call_ctx = p;
    return loco_iv_kv_rows(p, d->cond_row, &d->cond_kv_row, err);
}

loco_status loco_iv_get_recording(const loco_iv_program *p, int index, loco_iv_recording *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (index < 0 || index >= p->n || p->ivs[index].iv.action != LOCO_IV_RECORD)
        return loco_err_set(err, LOCO_EINVAL, "interventions: %d is not a record intervention of the plan", index);
    const civ *c = &p->ivs[index];
    out->data = c->rec;
    out->steps = c->rec ? c->rec_steps : 0;
    out->numel = c->rec_numel;
    out->ndim = c->rec_ndim;
    memcpy(out->shape, c->rec_shape, sizeof out->shape);
    return LOCO_OK;
}
