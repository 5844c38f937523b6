/* method_test_util.h: shared helpers of test_trace.c, test_locogen.c and test_intervention.c:
 * loading a tiny pipeline and the tiny CLIP scorer, and reading reference metadata. */
#ifndef LOCO_METHOD_TEST_UTIL_H
#define LOCO_METHOD_TEST_UTIL_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip_score.h"
#include "loco_test.h"
#include "pipeline.h"
#include "safetensors.h"
#include "trace.h"
#include "unet.h"

typedef struct mt_env {
    loco_backend *be;
    loco_pipeline *p;
    loco_clip_scorer *sc;
    loco_safetensors *ref;
} mt_env;

/* model: "sd1-tiny"...; ref: path under refs/ or NULL; be: the backend to load on, taken over
 * (mt_close destroys it). Returns 0 on success (messages printed). */
static inline int mt_open_on(mt_env *e, loco_backend *be, const char *model, const char *ref) {
    memset(e, 0, sizeof *e);
    e->be = be;
    loco_err err = {0};
    char path[1024];
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    snprintf(path, sizeof path, "%s/models/%s", loco_fixtures_dir(), model);
    po.model_path = path;
    if (loco_pipeline_load(e->be, &po, &e->p, &err)) goto fail;
    snprintf(path, sizeof path, "%s/models/clip-tiny", loco_fixtures_dir());
    if (loco_clip_scorer_load(e->be, path, &e->sc, &err)) goto fail;
    if (ref) {
        snprintf(path, sizeof path, "%s/refs/%s", loco_fixtures_dir(), ref);
        if (loco_safetensors_open(path, &e->ref, &err)) goto fail;
    }
    return 0;
fail:
    fprintf(stderr, "%s\n", err.msg);
    return -1;
}

/* The same on a 2-thread CPU backend. */
static inline int mt_open(mt_env *e, const char *model, const char *ref) {
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    bo.device = LOCO_DEVICE_CPU;
    bo.num_threads = 2;
    loco_err err = {0};
    loco_backend *be = NULL;
    if (loco_backend_create(&bo, &be, &err)) {
        memset(e, 0, sizeof *e);
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return mt_open_on(e, be, model, ref);
}

static inline void mt_close(mt_env *e) {
    loco_safetensors_close(e->ref);
    loco_clip_scorer_free(e->sc);
    loco_pipeline_free(e->p);
    loco_backend_destroy(e->be);
    memset(e, 0, sizeof *e);
}

/* Opens a fixture model in a test, failing the test (never skipping it) when the fixtures are
 * missing. */
#define MT_OPEN(e, model, ref)                                          \
    do {                                                                \
        if (mt_open(&(e), (model), (ref))) {                            \
            mt_close(&(e));                                             \
            CHECK_MSG(0, "fixtures missing (make fixtures)");           \
        }                                                               \
    } while (0)

/* A small causal trace: "a town in the style of monet", subject "monet", 2 steps at 64x64,
 * the UNet's first site and its last cross-attention as the components (written to comps[2]),
 * the text positions given (the caller's array). */
static inline void mt_small_trace(loco_trace_params *t, loco_pipeline *p, const char **comps, const int *pos,
                                  int n_pos) {
    loco_trace_params_init(t);
    t->prompt = "a town in the style of monet";
    t->subject = "monet";
    t->sampler.steps = 2;
    t->sampler.width = t->sampler.height = 64;
    int ns;
    const loco_site *sites = loco_unet_sites(loco_pipeline_unet(p), &ns);
    comps[0] = sites[0].name;
    comps[1] = NULL;
    for (int i = 0; i < ns; i++)
        if (sites[i].kind == LOCO_SITE_CROSS_ATTN) comps[1] = sites[i].name;
    t->components = comps;
    t->n_components = 2;
    t->positions = pos;
    t->n_positions = n_pos;
    t->keep_latents = 1;
}

/* Metadata value parsed as JSON (strings that are not JSON come back as JSON strings). */
static inline json_t *mt_meta(const loco_safetensors *f, const char *key) {
    const char *v = loco_safetensors_metadata(f, key);
    if (!v) return NULL;
    json_t *j = json_loads(v, JSON_DECODE_ANY, NULL);
    return j ? j : json_string(v);
}

static inline double mt_meta_num(const loco_safetensors *f, const char *key) {
    json_t *j = mt_meta(f, key);
    double v = j && json_is_number(j) ? json_number_value(j) : NAN;
    json_decref(j);
    return v;
}

/* A JSON array of strings as a NULL-terminated malloc'ed array of strdup'ed strings. */
static inline char **mt_strings(const json_t *a, int *n) {
    *n = json_is_array(a) ? (int)json_array_size(a) : 0;
    char **out = calloc((size_t)*n + 1, sizeof *out);
    for (int i = 0; out && i < *n; i++) out[i] = strdup(json_string_value(json_array_get(a, (size_t)i)));
    return out;
}

static inline void mt_strings_free(char **s) {
    for (int i = 0; s && s[i]; i++) free(s[i]);
    free(s);
}

static inline const float *mt_f32(const loco_safetensors *f, const char *name, int64_t *numel) {
    const loco_stored_tensor *t = loco_safetensors_find(f, name);
    if (!t || t->dtype != LOCO_F32) {
        fprintf(stderr, "reference tensor %s missing or not F32\n", name);
        return NULL;
    }
    if (numel) *numel = loco_stored_numel(t);
    return t->data;
}

/* Largest per-byte difference of an image against n bytes of a uint8 reference. */
static inline int mt_max_px(const loco_image *img, const uint8_t *want, size_t n) {
    if (!img->data || (size_t)img->width * img->height * img->channels != n) return 256;
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img->data[i] - (int)want[i]);
        if (d > m) m = d;
    }
    return m;
}

/* ---- the methods' progress and cancel contract (engine/method_util.h) ------------------------- */

/* UNet calls made so far, from the graph statistics: on a backend with graphs every call of
 * the methods is either replayed or run eagerly, and counted. */
static inline long mt_unet_calls(const loco_unet *u) {
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(u, &st);
    return st.replays + st.eager_calls;
}

#define MT_PROGRESS_MAX 1024

/* Records every progress callback of a run, and cancels on request. */
typedef struct mt_progress {
    int n, overflow;
    int done[MT_PROGRESS_MAX], total[MT_PROGRESS_MAX];
    int cancel_at;       /* return non-zero at the first callback with done >= cancel_at; -1: never */
    int cancel_repeat;   /* ... or at the first one that repeats the previous done > 0 (a cancel
                            point between decodes or scoring chunks) */
    int cancelled_at;    /* index of the callback that returned non-zero; -1: none */
    const loco_unet *unet;
    long calls_at_cancel; /* mt_unet_calls when it did */
} mt_progress;

static inline void mt_progress_init(mt_progress *p, const loco_unet *u, int cancel_at, int cancel_repeat) {
    memset(p, 0, sizeof *p);
    p->unet = u;
    p->cancel_at = cancel_at;
    p->cancel_repeat = cancel_repeat;
    p->cancelled_at = -1;
}

static inline int mt_progress_fn(void *ctx, int done, int total) {
    mt_progress *p = ctx;
    if (p->n == MT_PROGRESS_MAX) {
        p->overflow = 1;
        return 0;
    }
    const int repeat = p->n > 0 && done > 0 && p->done[p->n - 1] == done;
    p->done[p->n] = done;
    p->total[p->n] = total;
    p->n++;
    if (p->cancelled_at < 0 &&
        ((p->cancel_at >= 0 && done >= p->cancel_at) || (p->cancel_repeat && repeat))) {
        p->cancelled_at = p->n - 1;
        p->calls_at_cancel = mt_unet_calls(p->unet);
        return 1;
    }
    return 0;
}

/* A complete run's record: the first callback is (0, total) with total = expect_total; total
 * never changes; done never goes back and moves by at most one step per callback, so every step
 * is reported; the last callback has done = total. NULL when it holds, else what broke. */
static inline const char *mt_progress_complete(const mt_progress *p, int expect_total) {
    if (p->overflow || p->n < 2) return "too few or too many callbacks";
    if (p->done[0] != 0 || p->total[0] != expect_total) return "the first callback is not (0, total)";
    for (int i = 1; i < p->n; i++) {
        if (p->total[i] != p->total[0]) return "total changed";
        if (p->done[i] < p->done[i - 1]) return "done went back";
        if (p->done[i] > p->done[i - 1] + 1) return "done skipped a step";
    }
    return p->done[p->n - 1] == expect_total ? NULL : "the last callback is not (total, total)";
}

#endif
