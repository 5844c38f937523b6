/* pipeline_variant.c: edited pipelines sharing their base's components (see pipeline_variant.h). */
#include "pipeline_variant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoise.h"
#include "method_util.h"
#include "pipeline_impl.h"
#include "text_conditioning.h"

typedef struct change_rec {
    loco_variant_change pub;
    char *name;
    float *data; /* owned record, or NULL when pub.data reads the variant's own float32 host tensor */
} change_rec;

typedef struct ablation_rec {
    loco_neuron_ablation pub;
    int32_t *channels;
    float *values;
} ablation_rec;

struct loco_pipeline_variant {
    loco_pipeline view; /* the base's struct with this variant's UNet and text encoders */
    loco_pipeline *base;
    loco_unet *unet;
    loco_clip_text *te, *te2;
    change_rec *changes;
    int n_changes, cap_changes;
    ablation_rec *abl;
    int n_abl, cap_abl;
    json_t *edits; /* array of edit descriptions */
};

static const char *const component_names[LOCO_COMPONENT_COUNT] = {"unet", "text_encoder", "text_encoder_2"};

const char *loco_component_name(loco_component c) {
    return (unsigned)c < LOCO_COMPONENT_COUNT ? component_names[c] : "unknown";
}

int loco_component_from_name(const char *name, loco_component *out) {
    for (int i = 0; name && i < LOCO_COMPONENT_COUNT; i++)
        if (strcmp(name, component_names[i]) == 0) {
            *out = (loco_component)i;
            return 0;
        }
    return -1;
}

loco_status loco_pipeline_variant_create(loco_pipeline *base, loco_pipeline_variant **out, loco_err *err) {
    *out = NULL;
    if (!base) return loco_err_set(err, LOCO_EINVAL, "pipeline variant: no base pipeline");
    loco_pipeline_variant *v = calloc(1, sizeof *v);
    if (!v) return loco_err_set(err, LOCO_ENOMEM, "pipeline variant: out of memory");
    v->base = base;
    loco_status st = LOCO_OK;
    if (!(v->edits = json_array())) {
        st = loco_err_set(err, LOCO_ENOMEM, "pipeline variant: out of memory");
        goto fail;
    }
    if ((st = loco_unet_variant(base->unet, &v->unet, err))) goto fail;
    if (base->text_encoder && (st = loco_clip_text_variant(base->text_encoder, &v->te, err))) goto fail;
    if (base->text_encoder_2 && (st = loco_clip_text_variant(base->text_encoder_2, &v->te2, err))) goto fail;
    v->view = *base;
    v->view.unet = v->unet;
    v->view.text_encoder = v->te;
    v->view.text_encoder_2 = v->te2;
    *out = v;
    return LOCO_OK;
fail:
    loco_pipeline_variant_free(v);
    return loco_err_prefix(err, "creating a variant of %s", base->path ? base->path : "the model");
}

void loco_pipeline_variant_free(loco_pipeline_variant *v) {
    if (!v) return;
    loco_unet_free(v->unet);
    loco_clip_text_free(v->te);
    loco_clip_text_free(v->te2);
    for (int i = 0; i < v->n_changes; i++) {
        free(v->changes[i].name);
        free(v->changes[i].data);
    }
    free(v->changes);
    for (int i = 0; i < v->n_abl; i++) {
        free(v->abl[i].channels);
        free(v->abl[i].values);
    }
    free(v->abl);
    json_decref(v->edits);
    free(v);
}

const loco_pipeline *loco_pipeline_variant_base(const loco_pipeline_variant *v) { return v->base; }
loco_pipeline *loco_pipeline_variant_pipeline(loco_pipeline_variant *v) { return &v->view; }

/* The resident tensor of a parameter, or NULL with the error set. */
static const loco_tensor *param_tensor(const loco_pipeline_variant *v, loco_component c, const char *name,
                                       loco_err *err) {
    const loco_tensor *t = NULL;
    if (c == LOCO_COMPONENT_UNET) {
        t = loco_params_find(loco_unet_params(v->unet), name);
    } else if (c == LOCO_COMPONENT_TEXT_ENCODER || c == LOCO_COMPONENT_TEXT_ENCODER_2) {
        const loco_clip_text *te = c == LOCO_COMPONENT_TEXT_ENCODER ? v->te : v->te2;
        if (!te) {
            loco_err_set(err, LOCO_ENOTFOUND, "the model has no %s", loco_component_name(c));
            return NULL;
        }
        t = loco_clip_text_param(te, name);
    } else {
        loco_err_set(err, LOCO_EINVAL, "unknown component %d", (int)c);
        return NULL;
    }
    if (!t) loco_err_set(err, LOCO_ENOTFOUND, "%s has no parameter named '%s'", loco_component_name(c), name ? name : "(null)");
    return t;
}

loco_status loco_pipeline_variant_read_param(const loco_pipeline_variant *v, loco_component component,
                                             const char *name, float **data, int64_t *numel, int *ndim,
                                             int64_t shape[2], loco_err *err) {
    *data = NULL;
    const loco_tensor *t = param_tensor(v, component, name, err);
    if (!t) return err ? err->code : LOCO_ENOTFOUND;
    const int64_t n = loco_tensor_numel(t);
    float *buf = malloc((size_t)(n ? n : 1) * sizeof *buf);
    if (!buf) return loco_err_set(err, LOCO_ENOMEM, "out of memory reading '%s'", name);
    loco_status st = loco_tensor_download_f32(t, buf, err);
    if (st) {
        free(buf);
        return loco_err_prefix(err, "reading %s '%s'", loco_component_name(component), name);
    }
    *data = buf;
    if (numel) *numel = n;
    if (ndim) *ndim = t->ndim;
    if (shape) {
        shape[0] = t->ndim > 0 ? t->shape[0] : 1;
        shape[1] = t->ndim > 1 ? t->shape[1] : 1;
    }
    return LOCO_OK;
}

static change_rec *find_change(const loco_pipeline_variant *v, loco_component c, const char *name) {
    for (int i = 0; i < v->n_changes; i++)
        if (v->changes[i].pub.component == c && strcmp(v->changes[i].name, name) == 0) return &v->changes[i];
    return NULL;
}

static loco_status record(loco_pipeline_variant *v, loco_component component, const char *name, const loco_tensor *t,
                          float *owned, const float *view, loco_err *err);

loco_status loco_pipeline_variant_set_param(loco_pipeline_variant *v, loco_component component, const char *name,
                                            const void *data, loco_dtype src_dtype, loco_err *err) {
    const loco_tensor *t = param_tensor(v, component, name, err);
    if (!t) return err ? err->code : LOCO_ENOTFOUND;
    if (!data) return loco_err_set(err, LOCO_EINVAL, "no data for '%s'", name);
    if (src_dtype != LOCO_F32 && src_dtype != LOCO_F64)
        return loco_err_set(err, LOCO_EINVAL, "variant parameters take F32 or F64 data, got %s", loco_dtype_name(src_dtype));
    const int64_t n = loco_tensor_numel(t);
    float *rec = malloc((size_t)(n ? n : 1) * sizeof *rec);
    if (!rec) return loco_err_set(err, LOCO_ENOMEM, "out of memory recording '%s'", name);
    if (src_dtype == LOCO_F64)
        for (int64_t i = 0; i < n; i++) rec[i] = (float)((const double *)data)[i];
    else
        memcpy(rec, data, (size_t)n * sizeof *rec);
    loco_status st = loco_pipeline_variant_set_param_take(v, component, name, rec, err);
    if (st) free(rec);
    return st;
}

loco_status loco_pipeline_variant_set_param_take(loco_pipeline_variant *v, loco_component component,
                                                 const char *name, float *rec, loco_err *err) {
    const loco_tensor *t = param_tensor(v, component, name, err);
    if (!t) return err ? err->code : LOCO_ENOTFOUND;
    if (!rec) return loco_err_set(err, LOCO_EINVAL, "no data for '%s'", name);
    if (t->ndim > 4) return loco_err_set(err, LOCO_EUNSUPPORTED, "'%s' has %d dimensions", name, t->ndim);
    /* the float32 record is what gets uploaded, so exports hold exactly what the variant uses */
    loco_status st;
    if (component == LOCO_COMPONENT_UNET)
        st = loco_unet_set_param(v->unet, name, rec, LOCO_F32, err);
    else
        st = loco_clip_text_set_param(component == LOCO_COMPONENT_TEXT_ENCODER ? v->te : v->te2, name, rec, LOCO_F32,
                                      err);
    if (st) return st; /* rec stays the caller's */
    return record(v, component, name, t, rec, rec, err);
}

/* Note a change: `owned` (may be NULL) becomes the record, `view` is what pub.data shows. */
static loco_status record(loco_pipeline_variant *v, loco_component component, const char *name, const loco_tensor *t,
                          float *owned, const float *view, loco_err *err) {
    change_rec *c = find_change(v, component, name);
    if (c) {
        free(c->data);
        c->data = owned;
        c->pub.data = view;
        return LOCO_OK;
    }
    if (v->n_changes == v->cap_changes) {
        int cap = v->cap_changes ? 2 * v->cap_changes : 8;
        change_rec *nc = realloc(v->changes, (size_t)cap * sizeof *nc);
        if (!nc) return loco_err_set(err, LOCO_ENOMEM, "out of memory recording '%s'", name);
        v->changes = nc;
        v->cap_changes = cap;
    }
    c = &v->changes[v->n_changes];
    memset(c, 0, sizeof *c);
    if (!(c->name = strdup(name))) return loco_err_set(err, LOCO_ENOMEM, "out of memory recording '%s'", name);
    c->data = owned;
    c->pub.component = component;
    c->pub.name = c->name;
    c->pub.ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) c->pub.shape[d] = t->shape[d];
    c->pub.data = view;
    v->n_changes++;
    return LOCO_OK;
}

loco_status loco_pipeline_variant_adopt_param(loco_pipeline_variant *v, const char *name, loco_tensor *t, float *rec,
                                              loco_err *err) {
    if (!t) return loco_err_set(err, LOCO_EINVAL, "no tensor for '%s'", name ? name : "(null)");
    const int host_f32 = t->be && loco_backend_device(t->be) == LOCO_DEVICE_CPU && t->dtype == LOCO_F32;
    if (!rec && !host_f32)
        return loco_err_set(err, LOCO_EINVAL, "'%s': a record is required unless the tensor is float32 host memory", name);
    const float *host = host_f32 ? t->data : rec;
    loco_status st = loco_unet_adopt_param(v->unet, name, t, err);
    if (st) return st;
    /* the tensor now lives in the UNet's holder; the record (or the tensor itself) describes it */
    const loco_tensor *now = loco_params_find(loco_unet_params(v->unet), name);
    if (host_f32) {
        free(rec);
        rec = NULL;
    }
    st = record(v, LOCO_COMPONENT_UNET, name, now, rec, host, err);
    if (st) free(rec);
    return st;
}

int loco_pipeline_variant_num_changes(const loco_pipeline_variant *v) { return v->n_changes; }

const loco_variant_change *loco_pipeline_variant_change(const loco_pipeline_variant *v, int i) {
    return i >= 0 && i < v->n_changes ? &v->changes[i].pub : NULL;
}

size_t loco_pipeline_variant_owned_bytes(const loco_pipeline_variant *v) {
    size_t total = 0;
    for (int i = 0; i < v->n_changes; i++) {
        const loco_tensor *t = param_tensor(v, v->changes[i].pub.component, v->changes[i].name, NULL);
        if (t) total += loco_tensor_nbytes(t);
    }
    return total;
}

/* ---- ablations ------------------------------------------------------------------------------- */

loco_status loco_pipeline_variant_add_ablation(loco_pipeline_variant *v, const loco_neuron_ablation *a,
                                               loco_err *err) {
    if (!a || a->n < 0 || (a->n > 0 && (!a->channels || !a->values)))
        return loco_err_set(err, LOCO_EINVAL, "neuron ablation: channels and values are required");
    if (a->kind != LOCO_SITE_CROSS_K && a->kind != LOCO_SITE_CROSS_V)
        return loco_err_set(err, LOCO_EINVAL, "neuron ablation: site kind must be cross_k or cross_v, got %s",
                            loco_site_kind_name(a->kind));
    const int n_cross = loco_unet_n_cross(v->unet);
    if (a->cross_index < 0 || a->cross_index >= n_cross)
        return loco_err_set(err, LOCO_EINVAL, "neuron ablation: cross-attention layer %d is outside 0..%d",
                            a->cross_index, n_cross - 1);
    /* channels must exist in the projection's output (a delta file may say anything) */
    int ns = 0;
    const loco_site *sites = loco_unet_sites(v->unet, &ns);
    int64_t C = -1;
    for (int s = 0; s < ns && C < 0; s++)
        if (sites[s].kind == a->kind && sites[s].cross_index == a->cross_index) {
            char pname[400];
            snprintf(pname, sizeof pname, "%s.weight", sites[s].name);
            const loco_tensor *w = loco_params_find(loco_unet_params(v->unet), pname);
            if (w && w->ndim == 2) C = w->shape[0];
        }
    if (C < 0)
        return loco_err_set(err, LOCO_ENOTFOUND, "neuron ablation: cross-attention layer %d has no %s weight",
                            a->cross_index, loco_site_kind_name(a->kind));
    for (int k = 0; k < a->n; k++)
        if (a->channels[k] < 0 || a->channels[k] >= C || !isfinite(a->values[k]))
            return loco_err_set(err, LOCO_EINVAL,
                                "neuron ablation: layer %d %s: channel %d (value %g) is not one of its %lld channels "
                                "or not finite",
                                a->cross_index, loco_site_kind_name(a->kind), (int)a->channels[k], (double)a->values[k],
                                (long long)C);
    ablation_rec *r = NULL;
    for (int i = 0; i < v->n_abl; i++)
        if (v->abl[i].pub.cross_index == a->cross_index && v->abl[i].pub.kind == a->kind) r = &v->abl[i];
    int32_t *ch = malloc((size_t)(a->n ? a->n : 1) * sizeof *ch);
    float *val = malloc((size_t)(a->n ? a->n : 1) * sizeof *val);
    if (!ch || !val) {
        free(ch);
        free(val);
        return loco_err_set(err, LOCO_ENOMEM, "neuron ablation: out of memory");
    }
    if (a->n) {
        memcpy(ch, a->channels, (size_t)a->n * sizeof *ch);
        memcpy(val, a->values, (size_t)a->n * sizeof *val);
    }
    if (!r) {
        if (v->n_abl == v->cap_abl) {
            int cap = v->cap_abl ? 2 * v->cap_abl : 8;
            ablation_rec *na = realloc(v->abl, (size_t)cap * sizeof *na);
            if (!na) {
                free(ch);
                free(val);
                return loco_err_set(err, LOCO_ENOMEM, "neuron ablation: out of memory");
            }
            v->abl = na;
            v->cap_abl = cap;
        }
        r = &v->abl[v->n_abl++];
        memset(r, 0, sizeof *r);
    }
    free(r->channels);
    free(r->values);
    r->channels = ch;
    r->values = val;
    r->pub = *a;
    r->pub.channels = ch;
    r->pub.values = val;
    return LOCO_OK;
}

int loco_pipeline_variant_num_ablations(const loco_pipeline_variant *v) { return v->n_abl; }

const loco_neuron_ablation *loco_pipeline_variant_ablation(const loco_pipeline_variant *v, int i) {
    return i >= 0 && i < v->n_abl ? &v->abl[i].pub : NULL;
}

loco_status loco_pipeline_variant_ablation_plan(const loco_pipeline_variant *v, int n_text_rows,
                                                loco_intervention **plan, int *n, loco_err *err) {
    *plan = NULL;
    *n = 0;
    if (n_text_rows < 1) return loco_err_set(err, LOCO_EINVAL, "neuron ablation: no text rows");
    loco_intervention *iv = calloc((size_t)v->n_abl * n_text_rows + 1, sizeof *iv);
    if (!iv) return loco_err_set(err, LOCO_ENOMEM, "neuron ablation: out of memory");
    int ns = 0, k = 0;
    const loco_site *sites = loco_unet_sites(v->unet, &ns);
    for (int i = 0; i < v->n_abl; i++) {
        const loco_neuron_ablation *a = &v->abl[i].pub;
        const char *site = NULL;
        for (int s = 0; s < ns && !site; s++)
            if (sites[s].kind == a->kind && sites[s].cross_index == a->cross_index) site = sites[s].name;
        if (!site) {
            free(iv);
            return loco_err_set(err, LOCO_ENOTFOUND, "neuron ablation: cross-attention layer %d has no %s site",
                                a->cross_index, loco_site_kind_name(a->kind));
        }
        /* every conditional text row, every token position (positions NULL) */
        for (int r = 0; r < n_text_rows; r++) {
            loco_intervention *x = &iv[k++];
            loco_intervention_init(x);
            x->action = LOCO_IV_ABLATE;
            x->target = r;
            x->site = site; /* the UNet's site table lives as long as v */
            x->channels = a->channels;
            x->values = a->values;
            x->n_channels = a->n;
        }
    }
    *plan = iv;
    *n = k;
    return LOCO_OK;
}

/* ---- description ----------------------------------------------------------------------------- */

loco_status loco_pipeline_variant_note_edit(loco_pipeline_variant *v, json_t *edit, loco_err *err) {
    if (!edit || json_array_append(v->edits, edit))
        return loco_err_set(err, LOCO_ENOMEM, "pipeline variant: cannot record the edit description");
    return LOCO_OK;
}

const json_t *loco_pipeline_variant_edits(const loco_pipeline_variant *v) { return v->edits; }

/* ---- generation ------------------------------------------------------------------------------ */

/* Rows [first, first + n) of src into rows [at, at + n) of dst. */
static loco_status copy_rows(loco_backend *be, loco_tensor *dst, int64_t at, const loco_tensor *src, int64_t first,
                             int64_t n, loco_err *err) {
    loco_tensor a, b;
    loco_status st = loco_tensor_slice0(dst, at, n, &a, err);
    if (!st) st = loco_tensor_slice0(src, first, n, &b, err);
    if (!st) st = loco_copy(be, &a, &b, err);
    return st;
}

loco_status loco_pipeline_variant_generate(loco_pipeline_variant *v, const loco_generate_params *g,
                                           loco_generate_result *out, loco_err *err) {
    loco_pipeline *p = &v->view;
    if (v->n_abl == 0) return loco_generate(p, g, out, err);
    /* loco_generate with the ablations as an intervention plan (engine/intervention.h): the same
     * validation, prompt encoding and one seeded generator for the whole batch, but the text batch
     * laid out as the intervention engine wants it, conditional rows first */
    memset(out, 0, sizeof *out);
    loco_status st = loco_generate_validate(p, g, err);
    if (st) return st;
    const float gs = loco_pipeline_guidance(p, g);
    const int cfg = gs > 1.0f;
    const int b = g->n_prompts * g->num_images_per_prompt;
    loco_prompt_embeds pe;
    memset(&pe, 0, sizeof pe);
    loco_tensor text = {0}, pooled = {0};
    loco_intervention *plan = NULL;
    loco_iv_program *prog = NULL;
    int np = 0;
    int *rows = malloc((size_t)(2 * b) * sizeof *rows);
    if (!rows) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    if ((st = loco_pipeline_encode_prompts(p, g, cfg, &pe, err))) goto done;
    /* encode_prompt gives [uncond b | cond b]; the plan's text rows are [cond b | uncond b] */
    const int xl = p->family == LOCO_FAMILY_SDXL;
    if (cfg) {
        if ((st = loco_tensor_alloc_act(p->be, pe.embeds.ndim, pe.embeds.shape, &text, err)) ||
            (st = copy_rows(p->be, &text, 0, &pe.embeds, b, b, err)) ||
            (st = copy_rows(p->be, &text, b, &pe.embeds, 0, b, err)))
            goto done;
        if (xl && ((st = loco_tensor_alloc_act(p->be, pe.pooled.ndim, pe.pooled.shape, &pooled, err)) ||
                   (st = copy_rows(p->be, &pooled, 0, &pe.pooled, b, b, err)) ||
                   (st = copy_rows(p->be, &pooled, b, &pe.pooled, 0, b, err))))
            goto done;
    }
    for (int k = 0; k < b; k++) {
        rows[k] = k;         /* conditional */
        rows[b + k] = b + k; /* unconditional */
    }
    loco_denoise_params d;
    loco_pipeline_denoise_params(p, g, &d);
    d.text = cfg ? &text : &pe.embeds;
    d.pooled = xl ? (cfg ? &pooled : &pe.pooled) : NULL;
    d.cond_row = rows;
    d.uncond_row = cfg ? rows + b : NULL;
    loco_iv_layout lay = {.n_samples = b, .n_text_rows = b, .cfg = cfg};
    const loco_iv_models models = {.unet = p->unet, .text = p->text_encoder, .text_2 = p->text_encoder_2};
    if ((st = loco_sampler_n_calls(p, &d, &lay.n_calls, err)) ||
        (st = loco_pipeline_variant_ablation_plan(v, b, &plan, &np, err)) ||
        (st = loco_iv_compile(plan, np, &lay, &models, &prog, err)) || (st = loco_iv_apply(prog, &d, err)))
        goto done;
    st = loco_denoise(p, &d, out, err);
done:
    loco_iv_program_free(prog);
    free(plan);
    loco_tensor_free(&text);
    loco_tensor_free(&pooled);
    loco_prompt_embeds_free(&pe);
    free(rows);
    return st;
}
