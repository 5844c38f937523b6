/* worker.h: the worker process's own state, shared by worker_main.c and the job runners
 * (worker_jobs_*.c). The worker is single-threaded: it reads one message at a time and runs
 * one job at a time; while a job runs, its progress callback polls stdin so a cancel is seen
 * between two model calls. */
#ifndef LOCOD_WORKER_H
#define LOCOD_WORKER_H

#include <jansson.h>
#include <limits.h>

#include "clip_score.h"
#include "log.h"
#include "pipeline.h"
#include "pipeline_variant.h"
#include "request.h"
#include "worker_proto.h"

typedef struct wk_model {
    char name[LOCO_MODEL_NAME_MAX + 1];
    loco_pipeline *p;               /* for a variant: loco_pipeline_variant_pipeline(variant) */
    loco_pipeline_variant *variant; /* an edit's result, or NULL */
    char base[LOCO_MODEL_NAME_MAX + 1];
    size_t bytes;
} wk_model;

typedef struct wk_pending {
    json_t **v;
    int n, cap;
} wk_pending;

typedef struct wk_ctx {
    loco_log *log;
    loco_backend *be;
    char artifacts[PATH_MAX];
    int out_fd;
    locod_linebuf in;
    wk_pending pending; /* messages read while a job ran */
    int in_eof;
    wk_model models[LOCOD_WORKER_MAX_MODELS];
    int n_models;
    char job[40];       /* the running job */
    int cancel;         /* a cancel for it arrived */
    const char *cur_prompt; /* the running job's prompt (test hooks) */
    int test_faults;    /* test hooks on magic prompts (LOCOD_TEST_FAULTS) */
    int64_t max_pixels; /* limits.max_pixels (--max-pixels); 0: no check */
    int restart_after;  /* exit after reporting (sticky device error) */
    char scorer_path[PATH_MAX]; /* CLIP model for trace / localize scores, or "" */
    loco_dtype vae_upcast;      /* --vae-upcast: loco_pipeline_opts.vae_upcast_dtype for every load */
    loco_clip_scorer *scorer;   /* loaded on first use */
    char phase[32];
} wk_ctx;

/* Send a progress event for the running job; returns non-zero when it should stop (cancel). */
int wk_progress(wk_ctx *w, const char *phase, int step, int total);
/* Whether the running job should stop (a cancel arrived, or the daemon is gone), without a
 * progress event: for work after the engine's steps (encoding and storing results). */
int wk_cancelled(wk_ctx *w);

/* A job runner fills result (object) and artifacts (array of {sha256,size,media_type,name,url}). */
typedef loco_status (*wk_runner)(wk_ctx *w, loco_pipeline *p, const json_t *params, json_t *result,
                                 json_t *artifacts, loco_err *err);

loco_status wk_run_generate(wk_ctx *w, wk_model *m, const json_t *params, json_t *result, json_t *artifacts,
                            loco_err *err);
loco_status wk_run_trace(wk_ctx *w, loco_pipeline *p, const json_t *params, json_t *result, json_t *artifacts,
                         loco_err *err);
loco_status wk_run_localize(wk_ctx *w, loco_pipeline *p, const json_t *params, json_t *result, json_t *artifacts,
                            loco_err *err);
/* On success *out is the new variant (not yet registered). */
loco_status wk_run_edit(wk_ctx *w, wk_model *base, const json_t *params, const char *variant_name, json_t *result,
                        json_t *artifacts, loco_pipeline_variant **out, loco_err *err);

/* The variant as a diffusers folder, each file stored as an artifact (appended to `artifacts`);
 * *files: [{path, sha256, size, url}] sorted by path (worker_export.c). */
loco_status wk_export_folder(wk_ctx *w, const loco_pipeline_variant *v, loco_export_dtype dtype, json_t *artifacts,
                             json_t **files, loco_err *err);

/* Store bytes / a finished temp file as an artifact and append its entry to `artifacts`.
 * *sha (65 bytes) gets the id. */
loco_status wk_put_artifact(wk_ctx *w, const void *data, size_t n, const char *name, const char *media_type,
                            json_t *artifacts, char *sha, loco_err *err);
loco_status wk_put_artifact_file(wk_ctx *w, const char *tmp_path, const char *name, const char *media_type,
                                 json_t *artifacts, char *sha, loco_err *err);

#endif
