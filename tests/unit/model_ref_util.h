/* model_ref_util.h: shared helpers of test_unet.c and test_vae.c: a CPU backend, reference
 * tensors from tests/fixtures/refs/<model>/<component>.safetensors, uploads, downloads and a
 * probe that compares every named intermediate output with its recorded reference. */
#ifndef LOCO_MODEL_REF_UTIL_H
#define LOCO_MODEL_REF_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu_test_util.h"
#include "nn.h"
#include "safetensors.h"

/* The CPU backend these tests run on: two threads, as CI has. */
static inline loco_backend *mr_cpu(void) { return cpu_backend(2); }

/* The reference file, or NULL (message printed) when the fixtures are not generated. */
static inline loco_safetensors *mr_ref_open(const char *model, const char *component) {
    char path[1024];
    snprintf(path, sizeof path, "%s/refs/%s/%s.safetensors", loco_fixtures_dir(), model, component);
    loco_safetensors *f = NULL;
    loco_err e = {0};
    if (loco_safetensors_open(path, &f, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return NULL;
    }
    return f;
}

static inline void mr_model_dir(char *buf, size_t n, const char *model, const char *component) {
    snprintf(buf, n, "%s/models/%s/%s", loco_fixtures_dir(), model, component);
}

/* A reference tensor as host floats (any float or integer dtype); NULL if absent. */
static inline float *mr_ref_f32(const loco_safetensors *f, const char *name, int64_t *numel) {
    const loco_stored_tensor *t = loco_safetensors_find(f, name);
    if (!t) return NULL;
    int64_t n = loco_stored_numel(t);
    float *out = malloc((size_t)(n ? n : 1) * sizeof *out);
    if (!out) return NULL;
    if (t->dtype == LOCO_I64) {
        const int64_t *p = t->data;
        for (int64_t i = 0; i < n; i++) out[i] = (float)p[i];
    } else if (t->dtype == LOCO_I32) {
        const int32_t *p = t->data;
        for (int64_t i = 0; i < n; i++) out[i] = (float)p[i];
    } else if (loco_convert_to_f32(out, t->data, t->dtype, (size_t)n) != LOCO_OK) {
        free(out);
        return NULL;
    }
    if (numel) *numel = n;
    return out;
}

/* Upload a reference tensor with its recorded shape. */
static inline int mr_ref_upload(loco_backend *be, const loco_safetensors *f, const char *name, loco_tensor *out) {
    const loco_stored_tensor *t = loco_safetensors_find(f, name);
    if (!t) {
        fprintf(stderr, "reference tensor '%s' missing\n", name);
        return -1;
    }
    loco_err e = {0};
    if (loco_tensor_alloc_act(be, t->ndim, t->shape, out, &e) || loco_tensor_upload(out, t->data, t->dtype, &e)) {
        fprintf(stderr, "%s: %s\n", name, e.msg);
        return -1;
    }
    return 0;
}

static inline float *mr_download(const loco_tensor *t) {
    int64_t n = loco_tensor_numel(t);
    float *out = malloc((size_t)(n ? n : 1) * sizeof *out);
    loco_err e = {0};
    if (out && loco_tensor_download_f32(t, out, &e)) {
        fprintf(stderr, "download: %s\n", e.msg);
        free(out);
        return NULL;
    }
    return out;
}

/* Relative L2 error of a tensor against a reference tensor (2.0 when absent or sizes differ). */
static inline double mr_rel_err(const loco_tensor *got, const loco_safetensors *f, const char *name) {
    int64_t n = 0;
    float *want = mr_ref_f32(f, name, &n);
    if (!want || n != loco_tensor_numel(got)) {
        free(want);
        return 2.0;
    }
    float *g = mr_download(got);
    double r = g ? loco_rel_l2(g, want, (size_t)n) : 2.0;
    free(g);
    free(want);
    return r;
}

/* Probe: compares every probed output that the reference recorded under prefix + name. */
typedef struct mr_probe {
    const loco_safetensors *ref;
    const char *prefix;
    int compared;
    double worst;
    char worst_name[128];
    int bad; /* a comparison above tol (or NaN) */
    double tol;
} mr_probe;

static inline loco_status mr_probe_fn(void *ctx, const char *name, const loco_tensor *t, loco_err *err) {
    mr_probe *p = ctx;
    char key[256];
    snprintf(key, sizeof key, "%s%s", p->prefix, name);
    if (!loco_safetensors_find(p->ref, key)) return LOCO_OK;
    double r = mr_rel_err(t, p->ref, key);
    p->compared++;
    if (!(r <= p->tol)) {
        p->bad = 1;
        fprintf(stderr, "  %s: relative error %.3g > %.1g\n", key, r, p->tol);
    }
    if (!(r <= p->worst)) {
        p->worst = r;
        snprintf(p->worst_name, sizeof p->worst_name, "%s", name);
    }
    return LOCO_OK;
}

#endif
