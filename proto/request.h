/* request.h: POST /v1/jobs bodies (proto/schemas/job-create.json and the per-kind params
 * schemas), parsed, checked against the server's limits and normalised (defaults filled in, a
 * random seed fixed when none was given, so a stored job says exactly what ran).
 *
 *   { "kind": "generate", "model": "sd1-tiny", "params": {...}, "retry_on_restart": false }
 *
 * What needs the model (image size multiples, site names, layer ranges) is checked by the
 * server against the model's published info; what needs arithmetic is the worker's. */
#ifndef LOCO_PROTO_REQUEST_H
#define LOCO_PROTO_REQUEST_H

#include <jansson.h>
#include <stdint.h>

#include "fields.h"
#include "job.h"

#define LOCO_MODEL_NAME_MAX 96

typedef struct loco_proto_limits {
    int max_prompt_chars; /* characters (code points) in any prompt-like string; 2000 */
    int max_side;         /* image width / height in pixels; 2048 */
    int64_t max_pixels;   /* width * height * batch; 4 Mpixel */
    int max_steps;        /* denoising steps; 200 */
    int default_steps;    /* steps when none given (clamped to max_steps); 50 */
    int max_batch;        /* images per prompt; 8 */
    int max_prompts;      /* prompts in one localize / edit list; 64 */
    int max_items;        /* components, positions, layers, neurons, seeds; 1024 */
} loco_proto_limits;

void loco_proto_limits_init(loco_proto_limits *l);

/* Model, variant and key names: 1..96 of [A-Za-z0-9._+-], starting with a letter or digit, no "..". */
int loco_name_valid(const char *name);

typedef struct loco_job_request {
    loco_job_kind kind;
    char model[LOCO_MODEL_NAME_MAX + 1];
    int retry_on_restart;
    json_t *params; /* normalised params (owned) */
} loco_job_request;

/* Parse a whole create body. 0 ok; -1 with *err filled (status 422 unless said otherwise). */
int loco_job_request_parse(const json_t *body, const loco_proto_limits *lim, uint64_t random_seed,
                           loco_job_request *out, loco_proto_error *err);
void loco_job_request_release(loco_job_request *r);

/* The per-kind params parsers (used by loco_job_request_parse; exposed for tests). Each takes
 * the params object at `pointer` and returns a new normalised object in *out. */
int loco_params_generate(const json_t *p, const char *pointer, const loco_proto_limits *lim, uint64_t random_seed,
                         json_t **out, loco_proto_error *err);
int loco_params_trace(const json_t *p, const char *pointer, const loco_proto_limits *lim, uint64_t random_seed,
                      json_t **out, loco_proto_error *err);
int loco_params_localize(const json_t *p, const char *pointer, const loco_proto_limits *lim, uint64_t random_seed,
                         json_t **out, loco_proto_error *err);
int loco_params_edit(const json_t *p, const char *pointer, const loco_proto_limits *lim, uint64_t random_seed,
                     json_t **out, loco_proto_error *err);

/* The sampler settings shared by generate, trace and localize (members of their params):
 * seed, steps, guidance_scale, scheduler, karras, width, height, clip_skip. Reads them from
 * `p` into `out` (filling seed and steps defaults). Returns 0 / -1. */
int loco_params_sampler(const json_t *p, const char *pointer, const loco_proto_limits *lim, uint64_t random_seed,
                        int batch, json_t *out, loco_proto_error *err);

/* Scheduler names accepted on the wire (the engine's short names), NULL-terminated. */
extern const char *const loco_proto_schedulers[];

/* ---- the worker's view of generate params ------------------------------------------------------ */

typedef struct loco_generate_spec {
    const char *prompt;
    const char *negative_prompt; /* NULL: none */
    uint64_t seed;
    int steps;
    double guidance_scale;       /* NAN: the model's default */
    const char *scheduler;       /* NULL: the model's own */
    int karras;                  /* -1: the config's */
    int width, height;           /* 0: the model's default */
    int clip_skip;
    int batch;
    int return_latents;
} loco_generate_spec;

/* From normalised params (borrowed strings live as long as `params`). 0 / -1. */
int loco_generate_spec_from_json(const json_t *params, loco_generate_spec *out, loco_proto_error *err);

#endif
