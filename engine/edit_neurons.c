/* edit_neurons.c: neuron-level edits (methods.md §6): rank the output channels of the localized
 * layers' to_k/to_v by a two-sample z statistic (concept prompts vs normal prompts) and
 * mean-ablate the top N at inference (the ablation itself runs in pipeline_variant.c).
 *
 * Fixes relative to the released code, on purpose: the ablation is applied (the released hook
 * has the overwrite commented out), and the normal set is the caller's normal prompts (the
 * released "specific" mode used the unfilled style templates for four artists). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edit_internal.h"

void loco_neuron_opts_init(loco_neuron_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_neurons = 50;
    o->position = 76;
    o->edit_k = 1;
    o->edit_v = 1;
    o->precision = LOCO_EDIT_PRECISION_BACKEND;
}

/* One ranked matrix. */
typedef struct ranked {
    int cross_index;
    loco_site_kind kind;
    char name[320];
    int C;
    int32_t *channels;
    float *values;
    double *z, *mean_c, *mean_n;
} ranked;

static void ranked_free(ranked *r) {
    free(r->channels);
    free(r->values);
    free(r->z);
    free(r->mean_c);
    free(r->mean_n);
}

/* |z| descending, then channel ascending (a total order, so the selection is reproducible) */
static int cmp_abs_z(const void *a, const void *b, void *ctx) {
    const double *z = ctx;
    const int i = *(const int *)a, j = *(const int *)b;
    const double zi = fabs(z[i]), zj = fabs(z[j]);
    if (zi != zj) return zi > zj ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* Welch z per channel from activations A [n_c + n_n, C] (concept rows first); ddof 0. */
static void z_scores(const double *A, int nc, int nn, int C, double *z, double *mc, double *mn) {
    for (int c = 0; c < C; c++) {
        double sc = 0, sn = 0;
        for (int i = 0; i < nc; i++) sc += A[(size_t)i * C + c];
        for (int i = 0; i < nn; i++) sn += A[(size_t)(nc + i) * C + c];
        const double m1 = sc / nc, m2 = sn / nn;
        double v1 = 0, v2 = 0;
        for (int i = 0; i < nc; i++) v1 += (A[(size_t)i * C + c] - m1) * (A[(size_t)i * C + c] - m1);
        for (int i = 0; i < nn; i++) v2 += (A[(size_t)(nc + i) * C + c] - m2) * (A[(size_t)(nc + i) * C + c] - m2);
        v1 /= nc;
        v2 /= nn;
        const double den = sqrt(v1 / nc + v2 / nn), num = m1 - m2;
        /* a channel constant within both sets: no spread to measure against; rank by the raw
         * difference scaled far above any finite z, without producing Inf/NaN */
        z[c] = den > 0 ? num / den : (num == 0 ? 0.0 : copysign(1e300, num));
        mc[c] = m1;
        mn[c] = m2;
    }
}

static loco_status rank_matrix(const loco_tensor *w, const double *E, int nc, int nn, int D, int n_neurons,
                               ranked *r, loco_err *err) {
    const int C = (int)w->shape[0];
    r->C = C;
    if (n_neurons > C)
        return loco_err_set(err, LOCO_EINVAL, "neurons: %d neurons asked of '%s', which has %d output channels", n_neurons,
                            r->name, C);
    const int n = nc + nn;
    float *wf = malloc((size_t)C * D * sizeof *wf);
    double *wd = malloc((size_t)C * D * sizeof *wd);
    double *A = malloc((size_t)n * C * sizeof *A);
    int *order = malloc((size_t)C * sizeof *order);
    r->z = malloc((size_t)C * sizeof *r->z);
    r->mean_c = malloc((size_t)C * sizeof *r->mean_c);
    r->mean_n = malloc((size_t)C * sizeof *r->mean_n);
    r->channels = malloc((size_t)(n_neurons ? n_neurons : 1) * sizeof *r->channels);
    r->values = malloc((size_t)(n_neurons ? n_neurons : 1) * sizeof *r->values);
    loco_status st = LOCO_OK;
    if (!wf || !wd || !A || !order || !r->z || !r->mean_c || !r->mean_n || !r->channels || !r->values) {
        st = loco_err_set(err, LOCO_ENOMEM, "neurons: out of memory");
        goto done;
    }
    if ((st = loco_tensor_download_f32(w, wf, err))) goto done;
    for (size_t i = 0; i < (size_t)C * D; i++) wd[i] = wf[i];
    /* the projections' outputs at the statistics position, as a hook on to_k/to_v sees them */
    loco_edit_project_rows(wd, C, D, E, n, A);
    z_scores(A, nc, nn, C, r->z, r->mean_c, r->mean_n);
    for (int c = 0; c < C; c++) order[c] = c;
    qsort_r(order, (size_t)C, sizeof *order, cmp_abs_z, r->z);
    for (int k = 0; k < n_neurons; k++) {
        r->channels[k] = order[k];
        r->values[k] = (float)r->mean_n[order[k]];
    }
done:
    free(wf);
    free(wd);
    free(A);
    free(order);
    return st;
}

static json_t *opts_json(const loco_neuron_opts *o, const int *layers, int nl) {
    json_t *j = json_object();
    edit_json_strings(j, "prompts", o->prompts, o->n_prompts);
    edit_json_strings(j, "normal_prompts", o->normal_prompts, o->n_normal);
    edit_json_ints(j, "layers", layers, nl);
    json_object_set_new(j, "neurons", json_integer(o->n_neurons));
    json_object_set_new(j, "position", o->position == LOCO_NEURON_POS_EOS ? json_string("eos") : json_integer(o->position));
    json_object_set_new(j, "edit_k", json_boolean(o->edit_k));
    json_object_set_new(j, "edit_v", json_boolean(o->edit_v));
    json_object_set_new(j, "clip_skip", json_integer(o->clip_skip));
    json_object_set_new(j, "precision", json_string(loco_edit_precision_name(o->precision)));
    return j;
}

loco_status loco_edit_neurons(loco_pipeline_variant *v, const loco_neuron_opts *o, json_t **report,
                              loco_err *err) {
    if (report) *report = NULL;
    if (!v || !o) return loco_err_set(err, LOCO_EINVAL, "neurons: a variant and options are required");
    if (o->n_prompts <= 0 || !o->prompts)
        return loco_err_set(err, LOCO_EINVAL, "neurons: the concept prompt set is empty");
    if (o->n_normal <= 0 || !o->normal_prompts)
        return loco_err_set(err, LOCO_EINVAL, "neurons: the normal prompt set is empty");
    if (o->n_prompts < 2 || o->n_normal < 2)
        return loco_err_set(err, LOCO_EINVAL,
                            "neurons: the z statistic needs at least 2 prompts per set (got %d concept, %d normal)",
                            o->n_prompts, o->n_normal);
    if (o->n_neurons < 1) return loco_err_set(err, LOCO_EINVAL, "neurons: the number of neurons must be >= 1");
    if (!o->edit_k && !o->edit_v) return loco_err_set(err, LOCO_EINVAL, "neurons: neither K nor V is selected");
    if (o->n_layers < 0 || (o->n_layers > 0 && !o->layers))
        return loco_err_set(err, LOCO_EINVAL, "neurons: n_layers without layers");
    loco_pipeline *p = loco_pipeline_variant_pipeline(v);
    const int n_cross = loco_unet_n_cross(p->unet);
    int dstart, dm;
    loco_edit_default_window(p->family, &dstart, &dm);
    const int nl = o->n_layers > 0 ? o->n_layers : dm;
    int *layers = malloc((size_t)nl * sizeof *layers);
    if (!layers) return loco_err_set(err, LOCO_ENOMEM, "neurons: out of memory");
    for (int i = 0; i < nl; i++) layers[i] = o->n_layers > 0 ? o->layers[i] : dstart + i;
    loco_status st = LOCO_OK;
    for (int i = 0; i < nl; i++)
        if (layers[i] < 0 || layers[i] >= n_cross) {
            st = loco_err_set(err, LOCO_EINVAL, "neurons: cross-attention layer %d does not exist (the model has 0..%d)",
                              layers[i], n_cross - 1);
            free(layers);
            return st;
        }
    const loco_clip_tokenizer *tok = edit_main_tokenizer(p);
    const int L = tok ? loco_clip_tokenizer_max_length(tok) : 0;
    if (o->position != LOCO_NEURON_POS_EOS && (o->position < 0 || o->position >= L)) {
        free(layers);
        return loco_err_set(err, LOCO_EINVAL, "neurons: token position %d is outside 0..%d", o->position, L - 1);
    }

    const int nc = o->n_prompts, nn = o->n_normal, n = nc + nn;
    const int D = loco_unet_get_config(p->unet)->cross_attention_dim[0];
    const char **all = calloc((size_t)n, sizeof *all);
    int *pos = calloc((size_t)n, sizeof *pos);
    double *E = malloc((size_t)n * D * sizeof *E);
    ranked *rk = calloc((size_t)2 * nl, sizeof *rk);
    int nr = 0;
    json_t *rep = NULL, *mats = NULL;
    if (!all || !pos || !E || !rk) {
        st = loco_err_set(err, LOCO_ENOMEM, "neurons: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        all[i] = i < nc ? o->prompts[i] : o->normal_prompts[i - nc];
        if (!all[i]) {
            st = loco_err_set(err, LOCO_EINVAL, "neurons: %s prompt %d is missing", i < nc ? "concept" : "normal",
                              i < nc ? i : i - nc);
            goto done;
        }
        if (o->position == LOCO_NEURON_POS_EOS) {
            int f, last;
            if ((st = edit_prompt_span(p, all[i], NULL, &f, &last, err))) goto done;
            pos[i] = last + 1 < L ? last + 1 : L - 1;
        } else {
            pos[i] = o->position;
        }
    }
    if ((st = loco_edit_embed_rows(p, all, pos, n, o->clip_skip, o->precision, E, err))) goto done;
    for (int i = 0; i < nl; i++)
        for (int which = 0; which < 2; which++) {
            if ((which == 0 && !o->edit_k) || (which == 1 && !o->edit_v)) continue;
            ranked *r = &rk[nr++];
            r->cross_index = layers[i];
            r->kind = which ? LOCO_SITE_CROSS_V : LOCO_SITE_CROSS_K;
            if ((st = edit_cross_param(p->unet, layers[i], which, r->name, sizeof r->name, err))) goto done;
            const loco_tensor *w = loco_params_find(loco_unet_params(p->unet), r->name);
            if (!w || w->ndim != 2 || w->shape[1] != D) {
                st = loco_err_set(err, LOCO_EINVAL, "neurons: '%s' is not a [C, %d] projection", r->name, D);
                goto done;
            }
            if ((st = rank_matrix(w, E, nc, nn, D, o->n_neurons, r, err))) goto done;
        }
    /* every matrix ranked: attach the ablations */
    rep = json_object();
    mats = json_array();
    for (int i = 0; i < nr; i++) {
        const ranked *r = &rk[i];
        loco_neuron_ablation a = {.cross_index = r->cross_index, .kind = r->kind, .n = o->n_neurons,
                                  .channels = r->channels, .values = r->values};
        if ((st = loco_pipeline_variant_add_ablation(v, &a, err))) goto done;
        json_t *m = json_object();
        json_object_set_new(m, "name", json_string(r->name));
        json_object_set_new(m, "cross_index", json_integer(r->cross_index));
        json_object_set_new(m, "kind", json_string(loco_site_kind_name(r->kind)));
        json_object_set_new(m, "channels_total", json_integer(r->C));
        json_t *ch = json_array(), *z = json_array(), *val = json_array(), *mc = json_array();
        for (int k = 0; k < o->n_neurons; k++) {
            json_array_append_new(ch, json_integer(r->channels[k]));
            json_array_append_new(z, json_real(r->z[r->channels[k]]));
            json_array_append_new(val, json_real(r->values[k]));
            json_array_append_new(mc, json_real(r->mean_c[r->channels[k]]));
        }
        json_object_set_new(m, "channels", ch);
        json_object_set_new(m, "z", z);
        json_object_set_new(m, "values", val);
        json_object_set_new(m, "concept_means", mc);
        json_array_append_new(mats, m);
    }
    json_object_set_new(rep, "method", json_string("neurons"));
    json_object_set_new(rep, "options", opts_json(o, layers, nl));
    edit_json_ints(rep, "positions", pos, n);
    json_object_set_new(rep, "matrices", mats);
    mats = NULL;
    if ((st = loco_pipeline_variant_note_edit(v, rep, err))) goto done;
    if (report) {
        *report = rep;
        rep = NULL;
    }
done:
    json_decref(rep);
    json_decref(mats);
    for (int i = 0; rk && i < nr; i++) ranked_free(&rk[i]);
    free(rk);
    free(all);
    free(pos);
    free(E);
    free(layers);
    return st;
}
