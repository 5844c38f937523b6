/* edit_locoedit.c: LocoEdit (methods.md §5): closed-form edit of the cross-attention K and V
 * projections of the localized layers so that the concept's embedding is mapped to what the
 * unedited projections produced for the target. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edit_internal.h"

void loco_locoedit_opts_init(loco_locoedit_opts *o) {
    memset(o, 0, sizeof *o);
    o->target = "a painting";
    o->templates = LOCO_TEMPLATES_STYLE;
    o->start = -1;
    o->lambda_k = 0.01;
    o->lambda_v = 0.01;
    o->edit_k = 1;
    o->edit_v = 1;
    o->form = LOCO_SOLVE_AUTO;
}

/* The original prompts of §5.2: the template set around the concept, then the caller's. */
static loco_status build_prompts(const loco_locoedit_opts *o, char ***out, int *n, loco_err *err) {
    static const char *const style[] = {"%s", "a painting in the style of %s", "a photo in the style of %s",
                                        "a picture in the style of %s"};
    static const char *const object[] = {"%s", "an image of %s", "a photo of %s", "a picture of %s"};
    const char *const *t = o->templates == LOCO_TEMPLATES_STYLE ? style : o->templates == LOCO_TEMPLATES_OBJECT ? object : NULL;
    const int nt = t ? 4 : 0;
    const int total = nt + o->n_prompts;
    *out = NULL;
    *n = 0;
    if (total == 0)
        return loco_err_set(err, LOCO_EINVAL, "locoedit: no original prompts (templates 'none' and no prompts given)");
    char **p = calloc((size_t)total, sizeof *p);
    if (!p) return loco_err_set(err, LOCO_ENOMEM, "locoedit: out of memory");
    for (int i = 0; i < total; i++) {
        if (i < nt) {
            size_t len = strlen(t[i]) + strlen(o->concept) + 1;
            if ((p[i] = malloc(len))) snprintf(p[i], len, t[i], o->concept);
        } else {
            const char *s = o->prompts[i - nt];
            if (!s) {
                for (int j = 0; j < i; j++) free(p[j]);
                free(p);
                return loco_err_set(err, LOCO_EINVAL, "locoedit: prompt %d is missing", i - nt);
            }
            p[i] = strdup(s);
        }
        if (!p[i]) {
            for (int j = 0; j < i; j++) free(p[j]);
            free(p);
            return loco_err_set(err, LOCO_ENOMEM, "locoedit: out of memory");
        }
    }
    *out = p;
    *n = total;
    return LOCO_OK;
}

/* One solved matrix, written back once all are solved. */
typedef struct solved {
    char name[320];
    loco_tensor t; /* the new tensor, adopted by the variant once every matrix is solved */
    float *rec;    /* its float32 record when the tensor is not float32 host memory */
    loco_ridge_info info;
} solved;

static json_t *opts_json(const loco_locoedit_opts *o, int start, int m) {
    json_t *j = json_object();
    json_object_set_new(j, "concept", json_string(o->concept));
    json_object_set_new(j, "target", json_string(o->target));
    json_object_set_new(j, "templates", json_string(loco_edit_templates_name(o->templates)));
    json_object_set_new(j, "start", json_integer(start));
    json_object_set_new(j, "layers", json_integer(m));
    json_object_set_new(j, "lambda_k", json_real(o->lambda_k));
    json_object_set_new(j, "lambda_v", json_real(o->lambda_v));
    json_object_set_new(j, "edit_k", json_boolean(o->edit_k));
    json_object_set_new(j, "edit_v", json_boolean(o->edit_v));
    json_object_set_new(j, "solver", json_string(loco_solve_form_name(o->form)));
    json_object_set_new(j, "clip_skip", json_integer(o->clip_skip));
    json_object_set_new(j, "precision", json_string(loco_edit_precision_name(o->precision)));
    return j;
}

loco_status loco_edit_locoedit(loco_pipeline_variant *v, const loco_locoedit_opts *o, json_t **report,
                               loco_err *err) {
    if (report) *report = NULL;
    if (!v || !o) return loco_err_set(err, LOCO_EINVAL, "locoedit: a variant and options are required");
    if (!o->concept || !*o->concept) return loco_err_set(err, LOCO_EINVAL, "locoedit: a concept is required");
    if (!o->target || !*o->target) return loco_err_set(err, LOCO_EINVAL, "locoedit: the target prompt is empty");
    if ((unsigned)o->templates >= LOCO_TEMPLATES_COUNT) return loco_err_set(err, LOCO_EINVAL, "locoedit: unknown templates");
    if (o->n_prompts < 0 || (o->n_prompts > 0 && !o->prompts))
        return loco_err_set(err, LOCO_EINVAL, "locoedit: n_prompts without prompts");
    if (!o->edit_k && !o->edit_v) return loco_err_set(err, LOCO_EINVAL, "locoedit: neither K nor V is to be edited");
    loco_pipeline *p = loco_pipeline_variant_pipeline(v);
    int start, m;
    loco_edit_default_window(p->family, &start, &m);
    if (o->start >= 0) start = o->start;
    if (o->n_layers > 0) m = o->n_layers;
    if (o->start < -1) return loco_err_set(err, LOCO_EINVAL, "locoedit: start layer %d is negative", o->start);
    if (o->n_layers < 0) return loco_err_set(err, LOCO_EINVAL, "locoedit: window size %d is negative", o->n_layers);
    const int n_cross = loco_unet_n_cross(p->unet);
    if ((long)start + m > n_cross)
        return loco_err_set(err, LOCO_EINVAL,
                            "locoedit: the window of %d layer%s starting at cross-attention layer %d runs past the last "
                            "layer (%d; the model has %d)",
                            m, m == 1 ? "" : "s", start, n_cross - 1, n_cross);

    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char **prompts = NULL;
    int n = 0;
    loco_status st = build_prompts(o, &prompts, &n, err);
    if (st) return st;
    /* rows: n original prompts at their last subject token, then the target at its last token */
    const int D = loco_unet_get_config(p->unet)->cross_attention_dim[0];
    const char **all = calloc((size_t)n + 1, sizeof *all);
    int *pos = calloc((size_t)n + 1, sizeof *pos);
    int *first = calloc((size_t)n + 1, sizeof *first);
    double *rows = malloc((size_t)(n + 1) * D * sizeof *rows);
    double *targets = malloc((size_t)n * D * sizeof *targets);
    solved *sol = calloc((size_t)2 * m, sizeof *sol);
    int n_sol = 0;
    double *work = NULL; /* the float64 copy of each matrix, reused */
    size_t work_n = 0;
    json_t *rep = NULL, *mats = NULL;
    if (!all || !pos || !first || !rows || !targets || !sol) {
        st = loco_err_set(err, LOCO_ENOMEM, "locoedit: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        all[i] = prompts[i];
        if ((st = edit_prompt_span(p, prompts[i], o->concept, &first[i], &pos[i], err))) goto done;
    }
    all[n] = o->target;
    if ((st = edit_prompt_span(p, o->target, NULL, &first[n], &pos[n], err))) {
        loco_err_prefix(err, "locoedit target");
        goto done;
    }
    if ((st = loco_edit_embed_rows(p, all, pos, n + 1, o->clip_skip, o->precision, rows, err))) goto done;
    /* X_target: the target's row repeated once per original prompt (§5.2) */
    for (int i = 0; i < n; i++) memcpy(targets + (size_t)i * D, rows + (size_t)n * D, (size_t)D * sizeof *targets);
    clock_gettime(CLOCK_MONOTONIC, &t1);

    rep = json_object();
    mats = json_array();
    json_object_set_new(rep, "method", json_string("locoedit"));
    json_object_set_new(rep, "options", opts_json(o, start, m));
    edit_json_strings(rep, "prompts", (const char *const *)prompts, n);
    edit_json_ints(rep, "subject_first", first, n);
    edit_json_ints(rep, "subject_last", pos, n);
    json_object_set_new(rep, "target_position", json_integer(pos[n]));
    json_t *cl = json_array();
    for (int i = 0; i < m; i++) json_array_append_new(cl, json_integer(start + i));
    json_object_set_new(rep, "cross_layers", cl);
    /* solve every matrix first, then write them all: a refused system leaves the variant as it was */
    for (int layer = start; layer < start + m; layer++) {
        for (int which = 0; which < 2; which++) {
            if ((which == 0 && !o->edit_k) || (which == 1 && !o->edit_v)) continue;
            solved *sv = &sol[n_sol];
            if ((st = edit_cross_param(p->unet, layer, which, sv->name, sizeof sv->name, err))) goto done;
            const loco_tensor *w = loco_params_find(loco_unet_params(p->unet), sv->name);
            if (!w) {
                st = loco_err_set(err, LOCO_ENOTFOUND, "locoedit: the UNet has no parameter '%s'", sv->name);
                goto done;
            }
            if (w->ndim != 2 || w->shape[1] != D) {
                st = loco_err_set(err, LOCO_EINVAL, "locoedit: '%s' does not take %d-d text embeddings", sv->name, D);
                goto done;
            }
            /* the variant's new tensor, written in place where it is float32 host memory (CPU
             * backend); elsewhere the result goes to a host record and is uploaded into it */
            if ((st = loco_tensor_alloc(w->be, w->dtype, 2, w->shape, &sv->t, err))) goto done;
            n_sol++;
            const int host_f32 = loco_backend_device(w->be) == LOCO_DEVICE_CPU && w->dtype == LOCO_F32;
            if (!host_f32 && !(sv->rec = malloc((size_t)(w->shape[0] * w->shape[1]) * sizeof *sv->rec))) {
                st = loco_err_set(err, LOCO_ENOMEM, "locoedit: out of memory");
                goto done;
            }
            float *out = host_f32 ? sv->t.data : sv->rec;
            const size_t numel = (size_t)(w->shape[0] * w->shape[1]);
            if (numel > work_n) {
                free(work);
                work_n = 0;
                if (!(work = malloc(numel * sizeof *work))) {
                    st = loco_err_set(err, LOCO_ENOMEM, "locoedit: out of memory");
                    goto done;
                }
                work_n = numel;
            }
            if ((st = loco_edit_solve_tensor(w, rows, targets, n, 1, which ? o->lambda_v : o->lambda_k, o->form,
                                             sv->name, out, work, &sv->info, err)))
                goto done;
            if (!host_f32 && (st = loco_tensor_upload(&sv->t, sv->rec, LOCO_F32, err))) goto done;
            json_array_append_new(mats, loco_edit_matrix_json("unet", sv->name, layer, w->shape[0], w->shape[1], n,
                                                              &sv->info));
        }
    }
    for (int i = 0; i < n_sol; i++) {
        if ((st = loco_pipeline_variant_adopt_param(v, sol[i].name, &sol[i].t, sol[i].rec, err))) goto done;
        sol[i].rec = NULL; /* the variant's now, as is the tensor */
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    json_object_set_new(rep, "matrices", mats);
    mats = NULL;
    json_object_set_new(rep, "seconds_rows", json_real(edit_seconds(&t0, &t1)));
    json_object_set_new(rep, "seconds_solve", json_real(edit_seconds(&t1, &t2)));
    if ((st = loco_pipeline_variant_note_edit(v, rep, err))) goto done;
    if (report) {
        *report = rep;
        rep = NULL;
    }
done:
    json_decref(rep);
    json_decref(mats);
    for (int i = 0; i < n; i++) free(prompts[i]);
    free(prompts);
    free(all);
    free(pos);
    free(first);
    free(rows);
    free(targets);
    for (int i = 0; sol && i < n_sol; i++) {
        loco_tensor_free(&sol[i].t);
        free(sol[i].rec);
    }
    free(sol);
    free(work);
    return st;
}
