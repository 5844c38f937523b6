/* worker_jobs_research.c: trace (engine/trace.h), localize (engine/locogen.h) and edit
 * (engine/edit.h) jobs on the worker: normalised params -> engine options, results -> JSON
 * tables, PNG images and heatmaps, safetensors deltas, all as content-addressed artifacts. An
 * edit leaves a resident variant of its base model that generate jobs can use at once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifacts.h"
#include "edit.h"
#include "locogen.h"
#include "trace.h"
#include "worker.h"

static int on_progress(void *ctx, int done, int total) {
    wk_ctx *w = ctx;
    return wk_progress(w, w->phase, done, total);
}

static void sampler_from(const json_t *p, loco_sampler_opts *s) {
    loco_sampler_opts_init(s);
    const json_t *v;
    if ((v = json_object_get(p, "steps"))) s->steps = (int)json_integer_value(v);
    if ((v = json_object_get(p, "guidance_scale"))) s->guidance_scale = (float)json_number_value(v);
    if ((v = json_object_get(p, "width"))) s->width = (int)json_integer_value(v);
    if ((v = json_object_get(p, "height"))) s->height = (int)json_integer_value(v);
    if ((v = json_object_get(p, "scheduler")) && loco_scheduler_kind_from_name(json_string_value(v), &s->scheduler) == 0)
        s->has_scheduler = 1;
    if ((v = json_object_get(p, "karras"))) s->use_karras_sigmas = json_is_true(v);
}

/* Strings of a JSON array (borrowed); caller frees the array. */
static const char **strings(const json_t *a, int *n) {
    *n = (int)json_array_size(a);
    const char **out = calloc((size_t)*n + 1, sizeof *out);
    for (int i = 0; i < *n; i++) out[i] = json_string_value(json_array_get(a, (size_t)i));
    return out;
}

static int *ints(const json_t *a, int *n) {
    *n = (int)json_array_size(a);
    int *out = calloc((size_t)*n + 1, sizeof *out);
    for (int i = 0; i < *n; i++) out[i] = (int)json_integer_value(json_array_get(a, (size_t)i));
    return out;
}

static loco_status put_json(wk_ctx *w, const json_t *j, const char *name, json_t *artifacts, json_t *result,
                            const char *key, loco_err *err) {
    char *s = json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS);
    if (!s) return loco_err_set(err, LOCO_ENOMEM, "cannot encode %s", name);
    char sha[65], url[128];
    loco_status st = wk_put_artifact(w, s, strlen(s), name, "application/json", artifacts, sha, err);
    free(s);
    if (st == LOCO_OK && key) {
        snprintf(url, sizeof url, "/v1/artifacts/%s", sha);
        json_object_set_new(result, key, json_pack("{s:s, s:s}", "sha256", sha, "url", url));
    }
    return st;
}

static json_t *put_png(wk_ctx *w, const loco_image *img, const char *name, json_t *artifacts, loco_status *st,
                       loco_err *err) {
    if (*st || !img->data) return NULL;
    /* a cancel between images (a trace stores one per restored state; a localize grid of SD-XL
     * images is one long encode) */
    if (wk_cancelled(w)) {
        *st = loco_err_set(err, LOCO_ECANCELLED, "cancelled at the client's request while storing images");
        return NULL;
    }
    void *buf = NULL;
    size_t len = 0;
    char sha[65], url[128];
    if ((*st = loco_png_encode(img, &buf, &len, err))) return NULL;
    *st = wk_put_artifact(w, buf, len, name, "image/png", artifacts, sha, err);
    free(buf);
    if (*st) return NULL;
    snprintf(url, sizeof url, "/v1/artifacts/%s", sha);
    return json_pack("{s:s, s:s, s:s}", "name", name, "sha256", sha, "url", url);
}

/* ---- trace -------------------------------------------------------------------------------- */

loco_status wk_run_trace(wk_ctx *w, loco_pipeline *p, const json_t *params, json_t *result, json_t *artifacts,
                         loco_err *err) {
    if (!w->scorer) return loco_err_set(err, LOCO_EUNSUPPORTED, "no CLIP scorer is configured (clip_scorer)");
    loco_trace_params t;
    loco_trace_params_init(&t);
    t.prompt = json_string_value(json_object_get(params, "prompt"));
    t.subject = json_string_value(json_object_get(params, "subject"));
    t.attribute = json_string_value(json_object_get(params, "score_prompt"));
    t.seed = (uint64_t)json_integer_value(json_object_get(params, "seed"));
    t.noise_seed = (uint64_t)json_integer_value(json_object_get(params, "noise_seed"));
    t.noise_scale = (float)json_number_value(json_object_get(params, "noise_scale"));
    if (json_is_number(json_object_get(params, "causal_threshold")))
        t.causal_threshold = json_number_value(json_object_get(params, "causal_threshold"));
    sampler_from(params, &t.sampler);
    const char *target = json_string_value(json_object_get(params, "target"));
    t.scope = target && strcmp(target, "text_encoder") == 0 ? LOCO_TRACE_TEXT : LOCO_TRACE_UNET;
    const char **comps = NULL;
    int *pos = NULL;
    if (json_object_get(params, "components")) comps = strings(json_object_get(params, "components"), &t.n_components);
    if (json_object_get(params, "positions")) pos = ints(json_object_get(params, "positions"), &t.n_positions);
    t.components = comps;
    t.positions = pos;
    t.keep_images = 1;
    t.progress = on_progress;
    t.progress_ctx = w;
    snprintf(w->phase, sizeof w->phase, "trace");
    loco_trace_result r;
    memset(&r, 0, sizeof r);
    json_t *report = NULL;
    loco_status st = loco_trace_validate(p, &t, err);
    if (!st) st = loco_trace_run(p, w->scorer, &t, &r, err);
    if (!st) st = loco_trace_result_json(&r, &t, &report, err);
    if (!st) st = put_json(w, report, "trace.json", artifacts, result, "table", err);
    json_t *images = json_array();
    json_t *im;
    if ((im = put_png(w, &r.clean_image, "clean.png", artifacts, &st, err))) json_array_append_new(images, im);
    if ((im = put_png(w, &r.corrupted_image, "corrupted.png", artifacts, &st, err))) json_array_append_new(images, im);
    for (int i = 0; !st && i < r.n_unet; i++) {
        char name[200];
        snprintf(name, sizeof name, "restored-%s.png", r.unet[i].site);
        if ((im = put_png(w, &r.unet[i].image, name, artifacts, &st, err))) {
            json_object_set_new(im, "site", json_string(r.unet[i].site));
            json_array_append_new(images, im);
        }
    }
    json_t *heat = json_array();
    if (!st && r.n_layers > 0 && r.n_positions > 0) {
        const char *mods[2] = {"self_attn", "mlp"};
        for (int m = 0; m < 2 && !st; m++) {
            loco_image h;
            memset(&h, 0, sizeof h);
            char name[64];
            snprintf(name, sizeof name, "heatmap-%s.png", mods[m]);
            if (!(st = loco_trace_heatmap(&r, (loco_trace_module)m, 16, &h, err)))
                if ((im = put_png(w, &h, name, artifacts, &st, err))) json_array_append_new(heat, im);
            loco_image_free(&h);
        }
    }
    if (!st) {
        json_object_set_new(result, "report", report);
        report = NULL;
        json_object_set_new(result, "images", images);
        json_object_set_new(result, "heatmaps", heat);
    } else {
        json_decref(images);
        json_decref(heat);
    }
    json_decref(report);
    loco_trace_result_free(&r);
    free(comps);
    free(pos);
    return st;
}

/* ---- localize (LocoGen) ---------------------------------------------------------------------- */

loco_status wk_run_localize(wk_ctx *w, loco_pipeline *p, const json_t *params, json_t *result, json_t *artifacts,
                            loco_err *err) {
    if (!w->scorer) return loco_err_set(err, LOCO_EUNSUPPORTED, "no CLIP scorer is configured (clip_scorer)");
    loco_locogen_params g;
    loco_locogen_params_init(&g);
    int na = 0, ns = 0;
    const char **prompts = strings(json_object_get(params, "prompts"), &g.n_prompts);
    const char **altered = strings(json_object_get(params, "altered_prompts"), &na);
    const json_t *seeds_j = json_object_get(params, "seeds");
    ns = (int)json_array_size(seeds_j);
    uint64_t *seeds = calloc((size_t)ns + 1, sizeof *seeds);
    for (int i = 0; i < ns; i++) seeds[i] = (uint64_t)json_integer_value(json_array_get(seeds_j, (size_t)i));
    int *starts = NULL;
    if (json_object_get(params, "starts")) starts = ints(json_object_get(params, "starts"), &g.n_starts);
    g.prompts = prompts;
    g.altered = altered;
    g.seeds = seeds;
    g.n_seeds = ns;
    g.window = (int)json_integer_value(json_object_get(params, "window"));
    g.starts = starts;
    const char *attr = json_string_value(json_object_get(params, "attribute"));
    g.kind = attr && strcmp(attr, "facts") == 0 ? LOCO_ATTR_FACT
             : attr && strcmp(attr, "objects") == 0 ? LOCO_ATTR_OBJECT : LOCO_ATTR_STYLE;
    sampler_from(params, &g.sampler);
    g.keep_images = 1;
    g.progress = on_progress;
    g.progress_ctx = w;
    snprintf(w->phase, sizeof w->phase, "localize");
    loco_locogen_result r;
    memset(&r, 0, sizeof r);
    json_t *report = NULL;
    loco_image grid;
    memset(&grid, 0, sizeof grid);
    loco_status st = loco_locogen_validate(p, &g, err);
    if (!st) st = loco_locogen_run(p, w->scorer, &g, &r, err);
    if (!st) st = loco_locogen_result_json(&r, &g, p, &report, err);
    if (!st) st = put_json(w, report, "localize.json", artifacts, result, "table", err);
    if (!st) st = loco_locogen_grid(&r, 2, &grid, err);
    json_t *im = put_png(w, &grid, "windows-grid.png", artifacts, &st, err);
    if (!st) {
        /* the report's best window, in the report's words (end inclusive, indices spelled out) */
        static const char *const keep[] = {"start", "end", "size", "indices", "layers", NULL};
        const json_t *rb = json_object_get(report, "best_window");
        json_t *best = json_object();
        for (int k = 0; keep[k]; k++)
            if (json_object_get(rb, keep[k])) json_object_set(best, keep[k], json_object_get(rb, keep[k]));
        json_object_set_new(result, "best_window", best);
        json_object_set_new(result, "grid", im);
        im = NULL;
        json_object_set_new(result, "report", report);
        report = NULL;
    }
    json_decref(im);
    json_decref(report);
    loco_image_free(&grid);
    loco_locogen_result_free(&r);
    free(prompts);
    free(altered);
    free(seeds);
    free(starts);
    return st;
}

/* ---- edit ---------------------------------------------------------------------------------- */

/* "matrices" (checked by the request parser): which of to_k, to_v an edit changes. */
static void edit_matrices_of(const json_t *a, int *edit_k, int *edit_v) {
    size_t i;
    const json_t *v;
    *edit_k = *edit_v = 0;
    json_array_foreach(a, i, v) {
        const char *m = json_string_value(v);
        if (m && strcmp(m, "to_k") == 0) *edit_k = 1;
        if (m && strcmp(m, "to_v") == 0) *edit_v = 1;
    }
}

loco_status wk_run_edit(wk_ctx *w, wk_model *base, const json_t *params, const char *variant_name, json_t *result,
                        json_t *artifacts, loco_pipeline_variant **out, loco_err *err) {
    if (base->variant)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "model '%s' is itself a variant; edit its base '%s' (edits do not stack in this build)",
                            base->name, base->base);
    const char *method = json_string_value(json_object_get(params, "method"));
    loco_edit_method m;
    if (!method || loco_edit_method_from_name(method, &m))
        return loco_err_set(err, LOCO_EINVAL, "unknown edit method '%s'", method ? method : "");
    loco_pipeline_variant *v = NULL;
    loco_status st = loco_pipeline_variant_create(base->p, &v, err);
    if (st) return st;
    wk_progress(w, "edit", 0, 1);
    const char *concept = json_string_value(json_object_get(params, "concept"));
    const char *target = json_string_value(json_object_get(params, "target"));
    const json_t *lam = json_object_get(params, "lambda");
    int n_layers = 0, n_prompts = 0, n_normal = 0, n_targets = 0;
    int *layers = json_object_get(params, "layers") ? ints(json_object_get(params, "layers"), &n_layers) : NULL;
    const char **prompts =
        json_object_get(params, "prompts") ? strings(json_object_get(params, "prompts"), &n_prompts) : NULL;
    const char **normal = json_object_get(params, "normal_prompts")
                              ? strings(json_object_get(params, "normal_prompts"), &n_normal)
                              : NULL;
    const char **targets = json_object_get(params, "target_prompts")
                               ? strings(json_object_get(params, "target_prompts"), &n_targets)
                               : NULL;
    const json_t *matrices = json_object_get(params, "matrices");
    const char *solver = json_string_value(json_object_get(params, "solver"));
    json_t *report = NULL;
    if (m == LOCO_EDIT_LOCOEDIT) {
        loco_locoedit_opts o;
        loco_locoedit_opts_init(&o);
        o.concept = concept;
        if (target && *target) o.target = target;
        const char *tm = json_string_value(json_object_get(params, "templates"));
        if (tm) loco_edit_templates_from_name(tm, &o.templates);
        o.prompts = prompts;
        o.n_prompts = n_prompts;
        if (lam) o.lambda_k = o.lambda_v = json_number_value(lam);
        if (json_object_get(params, "lambda_k")) o.lambda_k = json_number_value(json_object_get(params, "lambda_k"));
        if (json_object_get(params, "lambda_v")) o.lambda_v = json_number_value(json_object_get(params, "lambda_v"));
        if (matrices) edit_matrices_of(matrices, &o.edit_k, &o.edit_v);
        if (solver) loco_solve_form_from_name(solver, &o.form);
        if (layers) {
            int lo = layers[0], hi = layers[0];
            for (int i = 1; i < n_layers; i++) {
                if (layers[i] < lo) lo = layers[i];
                if (layers[i] > hi) hi = layers[i];
            }
            if (hi - lo + 1 != n_layers)
                st = loco_err_set(err, LOCO_EINVAL, "locoedit edits a window of consecutive layers; 'layers' must be "
                                                    "consecutive (e.g. [8, 9])");
            o.start = lo;
            o.n_layers = n_layers;
        }
        if (!st) st = loco_edit_locoedit(v, &o, &report, err);
    } else if (m == LOCO_EDIT_QUICKFIX) {
        loco_quickfix_opts o;
        loco_quickfix_opts_init(&o);
        o.concept = concept;
        if (target && *target) o.target = target;
        if (lam) o.lambda = json_number_value(lam);
        if (solver) loco_solve_form_from_name(solver, &o.form);
        o.captions = prompts;
        o.target_captions = targets;
        o.n_captions = prompts && targets ? (n_prompts < n_targets ? n_prompts : n_targets) : 0;
        if (json_object_get(params, "augment")) o.augment = json_is_true(json_object_get(params, "augment"));
        if (json_object_get(params, "use_eos")) o.use_eos = json_is_true(json_object_get(params, "use_eos"));
        const char *bias = json_string_value(json_object_get(params, "value_bias"));
        if (bias) loco_value_bias_from_name(bias, &o.value_bias);
        const char *enc = json_string_value(json_object_get(params, "encoders"));
        if (enc) o.encoder = strcmp(enc, "text_encoder") == 0 ? 1 : strcmp(enc, "text_encoder_2") == 0 ? 2 : 0;
        if (json_object_get(params, "text_layer")) o.layer = (int)json_integer_value(json_object_get(params, "text_layer"));
        st = loco_edit_quickfix(v, &o, &report, err);
    } else {
        loco_neuron_opts o;
        loco_neuron_opts_init(&o);
        o.prompts = prompts;
        o.n_prompts = n_prompts;
        o.normal_prompts = normal;
        o.n_normal = n_normal;
        o.layers = layers;
        o.n_layers = n_layers;
        if (json_object_get(params, "neurons")) o.n_neurons = (int)json_integer_value(json_object_get(params, "neurons"));
        const json_t *pos = json_object_get(params, "position");
        if (json_is_integer(pos)) o.position = (int)json_integer_value(pos);
        else if (json_is_string(pos)) o.position = LOCO_NEURON_POS_EOS;
        if (matrices) edit_matrices_of(matrices, &o.edit_k, &o.edit_v);
        st = loco_edit_neurons(v, &o, &report, err);
    }
    if (!st && report) st = put_json(w, report, "edit.json", artifacts, result, "report_artifact", err);
    const char *exp = json_string_value(json_object_get(params, "export"));
    /* a folder export records the delta too: the delta is what re-creates the variant after a
     * restart */
    if (!st && (!exp || strcmp(exp, "delta") == 0 || strcmp(exp, "folder") == 0)) {
        char tmp[PATH_MAX], sha[65], url[128];
        locod_artifact_tmp_path(w->artifacts, ".safetensors", tmp, sizeof tmp);
        st = loco_pipeline_variant_export_delta(v, tmp, err);
        if (!st) st = wk_put_artifact_file(w, tmp, "delta.safetensors", "application/octet-stream", artifacts, sha, err);
        if (!st) {
            snprintf(url, sizeof url, "/v1/artifacts/%s", sha);
            json_object_set_new(result, "delta", json_pack("{s:s, s:s}", "sha256", sha, "url", url));
        }
    }
    if (!st && exp && strcmp(exp, "folder") == 0) {
        const char *dn = json_string_value(json_object_get(params, "export_dtype"));
        loco_export_dtype dtype = LOCO_EXPORT_KEEP;
        if (dn) loco_export_dtype_from_name(dn, &dtype);
        json_t *files = NULL;
        wk_progress(w, "export", 0, 1);
        st = wk_export_folder(w, v, dtype, artifacts, &files, err);
        if (!st)
            json_object_set_new(result, "folder", json_pack("{s:s, s:o}", "dtype", loco_export_dtype_name(dtype),
                                                            "files", files));
    }
    if (!st) {
        json_object_set_new(result, "variant", json_string(variant_name));
        json_object_set_new(result, "base", json_string(base->name));
        json_object_set_new(result, "report", report);
        report = NULL;
        json_object_set_new(result, "owned_bytes", json_integer((json_int_t)loco_pipeline_variant_owned_bytes(v)));
        *out = v;
        v = NULL;
    }
    json_decref(report);
    loco_pipeline_variant_free(v);
    free(layers);
    free(prompts);
    free(normal);
    free(targets);
    return st;
}
