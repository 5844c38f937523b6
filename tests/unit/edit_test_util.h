/* edit_test_util.h: shared helpers of test_edit.c and test_edit_variant.c: a CPU backend, tiny
 * fixture pipelines, the edit references (tests/fixtures/refs/<model>/edit_<method>.safetensors,
 * made by tools/fixtures/refs_edits.py) and relative errors against them. */
#ifndef LOCO_EDIT_TEST_UTIL_H
#define LOCO_EDIT_TEST_UTIL_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edit.h"
#include "loco_test.h"
#include "model_ref_util.h"
#include "pipeline_variant.h"
#include "safetensors.h"

static inline loco_pipeline *et_load(loco_backend *be, const char *model) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/%s", loco_fixtures_dir(), model);
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.model_path = path;
    loco_pipeline *p = NULL;
    loco_err e = {0};
    if (loco_pipeline_load(be, &po, &p, &e)) {
        fprintf(stderr, "%s: %s\n", path, e.msg);
        return NULL;
    }
    return p;
}

/* tests/fixtures/refs/<model>/edit_<method>.safetensors, or NULL (message printed). */
static inline loco_safetensors *et_ref(const char *model, const char *method) {
    char component[128];
    snprintf(component, sizeof component, "edit_%s", method);
    return mr_ref_open(model, component);
}

/* A reference tensor as doubles (float or integer dtypes); NULL when absent. */
static inline double *et_ref_f64(const loco_safetensors *f, const char *name, int64_t *numel) {
    const loco_stored_tensor *t = loco_safetensors_find(f, name);
    if (!t) {
        fprintf(stderr, "reference tensor '%s' missing\n", name);
        return NULL;
    }
    int64_t n = loco_stored_numel(t);
    double *out = malloc((size_t)(n ? n : 1) * sizeof *out);
    if (!out) return NULL;
    if (t->dtype == LOCO_F64) {
        memcpy(out, t->data, (size_t)n * sizeof *out);
    } else if (t->dtype == LOCO_I64) {
        for (int64_t i = 0; i < n; i++) out[i] = (double)((const int64_t *)t->data)[i];
    } else {
        float *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
        if (!tmp || loco_convert_to_f32(tmp, t->data, t->dtype, (size_t)n)) {
            free(tmp);
            free(out);
            return NULL;
        }
        for (int64_t i = 0; i < n; i++) out[i] = tmp[i];
        free(tmp);
    }
    if (numel) *numel = n;
    return out;
}

/* ‖a − b‖ / ‖b‖ of float a against the reference tensor `name`; -1 when it cannot be compared. */
static inline double et_rel_err(const float *a, int64_t n, const loco_safetensors *f, const char *name) {
    int64_t m = 0;
    double *b = et_ref_f64(f, name, &m);
    if (!b || m != n) {
        if (b) fprintf(stderr, "%s: %lld elements, expected %lld\n", name, (long long)m, (long long)n);
        free(b);
        return -1;
    }
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    free(b);
    double r = den > 0 ? sqrt(num / den) : sqrt(num);
    return isnan(r) ? 1e30 : r;
}

/* The recorded change of a variant by component and name. */
static inline const loco_variant_change *et_change(const loco_pipeline_variant *v, loco_component c, const char *name) {
    for (int i = 0; i < loco_pipeline_variant_num_changes(v); i++) {
        const loco_variant_change *ch = loco_pipeline_variant_change(v, i);
        if (ch->component == c && strcmp(ch->name, name) == 0) return ch;
    }
    return NULL;
}

static inline int64_t et_numel(const loco_variant_change *c) {
    int64_t n = 1;
    for (int d = 0; d < c->ndim; d++) n *= c->shape[d];
    return n;
}

/* The reference's generation settings (metadata "pipeline") into g. */
static inline int et_gen_params(const loco_safetensors *f, loco_generate_params *g, char **prompt) {
    loco_generate_params_init(g);
    const char *m = loco_safetensors_metadata(f, "pipeline");
    json_t *j = m ? json_loads(m, 0, NULL) : NULL;
    if (!j) return -1;
    *prompt = strdup(json_string_value(json_object_get(j, "prompt")));
    g->seed = (uint64_t)json_integer_value(json_object_get(j, "seed"));
    g->steps = (int)json_integer_value(json_object_get(j, "steps"));
    json_decref(j);
    g->n_prompts = 1;
    g->prompts = (const char *const *)prompt;
    g->width = g->height = 64;
    return 0;
}

/* Generated image (uint8 RGB) against the reference's float image: max |difference| in 1/255. */
static inline int et_image_diff(const loco_image *img, const loco_safetensors *f) {
    int64_t n = 0;
    double *ref = et_ref_f64(f, "pipeline.image_float", &n);
    if (!ref || n != (int64_t)img->width * img->height * 3) {
        free(ref);
        return 255;
    }
    int worst = 0;
    for (int64_t i = 0; i < n; i++) {
        int r = (int)(ref[i] * 255.0 + 0.5);
        int d = abs((int)img->data[i] - r);
        if (d > worst) worst = d;
    }
    free(ref);
    return worst;
}

#endif
