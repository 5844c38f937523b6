/* request.c: the job-create body, generate params and the shared sampler settings (request.h). */
#include "request.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const loco_proto_schedulers[] = {"pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "ddpm", NULL};

void loco_proto_limits_init(loco_proto_limits *l) {
    l->max_prompt_chars = 2000;
    l->max_side = 2048;
    l->max_pixels = 4 * 1024 * 1024;
    l->max_steps = 200;
    l->default_steps = 50;
    l->max_batch = 8;
    l->max_prompts = 64;
    l->max_items = 1024;
}

int loco_name_valid(const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > LOCO_MODEL_NAME_MAX || !isalnum((unsigned char)name[0])) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == '-' || c == '+')) return 0;
    }
    return strstr(name, "..") == NULL;
}

int loco_params_sampler(const json_t *p, const char *ptr, const loco_proto_limits *lim, uint64_t random_seed,
                        int batch, json_t *out, loco_proto_error *e) {
    /* a server-chosen seed stays below 2^53: dashboards read job JSON with JavaScript, whose
     * numbers round larger integers, and a rounded seed reproduces another image */
    int64_t seed = (int64_t)(random_seed & ((1ULL << 53) - 1)), steps = lim->default_steps, w = 0, h = 0, cs = 0;
    int hw = 0, hh = 0, has_g = 0, has_s = 0, has_k = 0, has_cs = 0, karras = 0;
    double g = 0;
    const char *sched = NULL;
    if (steps > lim->max_steps) steps = lim->max_steps;
    if (loco_pf_int(p, ptr, "seed", 0, 0, INT64_MAX, &seed, NULL, e) ||
        loco_pf_int(p, ptr, "steps", 0, 1, lim->max_steps, &steps, NULL, e) ||
        loco_pf_number(p, ptr, "guidance_scale", 0, 0.0, 100.0, &g, &has_g, e) ||
        loco_pf_enum(p, ptr, "scheduler", 0, loco_proto_schedulers, &sched, &has_s, e) ||
        loco_pf_bool(p, ptr, "karras", 0, &karras, &has_k, e) ||
        loco_pf_int(p, ptr, "width", 0, 8, lim->max_side, &w, &hw, e) ||
        loco_pf_int(p, ptr, "height", 0, 8, lim->max_side, &h, &hh, e) ||
        loco_pf_int(p, ptr, "clip_skip", 0, 0, 11, &cs, &has_cs, e))
        return -1;
    char pp[200];
    if (hw && w % 8) {
        snprintf(pp, sizeof pp, "%s/width", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp, "'width' must be a multiple of 8 (got %lld)", (long long)w);
    }
    if (hh && h % 8) {
        snprintf(pp, sizeof pp, "%s/height", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp, "'height' must be a multiple of 8 (got %lld)", (long long)h);
    }
    if (hw && hh && (int64_t)w * h * (batch > 0 ? batch : 1) > lim->max_pixels) {
        snprintf(pp, sizeof pp, "%s", ptr);
        return loco_proto_fail(e, 422, "too_large", pp,
                               "width x height x batch = %lld pixels exceeds this server's limit of %lld; use a "
                               "smaller image or batch",
                               (long long)(w * h * (batch > 0 ? batch : 1)), (long long)lim->max_pixels);
    }
    json_object_set_new(out, "seed", json_integer(seed));
    json_object_set_new(out, "steps", json_integer(steps));
    if (has_g) json_object_set_new(out, "guidance_scale", json_real(g));
    if (has_s) json_object_set_new(out, "scheduler", json_string(sched));
    if (has_k) json_object_set_new(out, "karras", json_boolean(karras));
    if (hw) json_object_set_new(out, "width", json_integer(w));
    if (hh) json_object_set_new(out, "height", json_integer(h));
    if (has_cs) json_object_set_new(out, "clip_skip", json_integer(cs));
    return 0;
}

#define SAMPLER_KEYS "seed", "steps", "guidance_scale", "scheduler", "karras", "width", "height", "clip_skip"

int loco_params_generate(const json_t *p, const char *ptr, const loco_proto_limits *lim, uint64_t random_seed,
                         json_t **out, loco_proto_error *e) {
    static const char *const keys[] = {"prompt", "negative_prompt", "batch", "return_latents", SAMPLER_KEYS, NULL};
    const char *prompt = NULL, *neg = NULL;
    int64_t batch = 1;
    int has_neg = 0, latents = 0;
    if (loco_pf_object(p, ptr, keys, e) ||
        loco_pf_string(p, ptr, "prompt", 1, 0, (size_t)lim->max_prompt_chars, &prompt, NULL, e) ||
        loco_pf_string(p, ptr, "negative_prompt", 0, 0, (size_t)lim->max_prompt_chars, &neg, &has_neg, e) ||
        loco_pf_int(p, ptr, "batch", 0, 1, lim->max_batch, &batch, NULL, e) ||
        loco_pf_bool(p, ptr, "return_latents", 0, &latents, NULL, e))
        return -1;
    json_t *o = json_object();
    json_object_set_new(o, "prompt", json_string(prompt));
    if (has_neg) json_object_set_new(o, "negative_prompt", json_string(neg));
    json_object_set_new(o, "batch", json_integer(batch));
    json_object_set_new(o, "return_latents", json_boolean(latents));
    if (loco_params_sampler(p, ptr, lim, random_seed, (int)batch, o, e)) {
        json_decref(o);
        return -1;
    }
    *out = o;
    return 0;
}

int loco_job_request_parse(const json_t *body, const loco_proto_limits *lim, uint64_t random_seed,
                           loco_job_request *out, loco_proto_error *e) {
    static const char *const keys[] = {"kind", "model", "params", "retry_on_restart", NULL};
    static const char *const kinds[] = {"generate", "trace", "localize", "edit", NULL};
    memset(out, 0, sizeof *out);
    const char *kind = NULL, *model = NULL;
    int retry = 0;
    if (loco_pf_object(body, "", keys, e) || loco_pf_enum(body, "", "kind", 1, kinds, &kind, NULL, e) ||
        loco_pf_string(body, "", "model", 1, 1, LOCO_MODEL_NAME_MAX, &model, NULL, e) ||
        loco_pf_bool(body, "", "retry_on_restart", 0, &retry, NULL, e))
        return -1;
    if (!loco_name_valid(model))
        return loco_proto_fail(e, 422, "invalid_value", "/model",
                               "'model' must be a model name as GET /v1/models lists it (letters, digits, '.', '_', "
                               "'+', '-'), not a path");
    loco_job_kind_from_name(kind, &out->kind);
    snprintf(out->model, sizeof out->model, "%s", model);
    out->retry_on_restart = retry;
    const json_t *params = json_object_get(body, "params");
    json_t *empty = NULL;
    if (!params) params = empty = json_object();
    int rc;
    switch (out->kind) {
    case LOCO_JOB_GENERATE: rc = loco_params_generate(params, "/params", lim, random_seed, &out->params, e); break;
    case LOCO_JOB_TRACE: rc = loco_params_trace(params, "/params", lim, random_seed, &out->params, e); break;
    case LOCO_JOB_LOCALIZE: rc = loco_params_localize(params, "/params", lim, random_seed, &out->params, e); break;
    default: rc = loco_params_edit(params, "/params", lim, random_seed, &out->params, e); break;
    }
    json_decref(empty);
    return rc;
}

void loco_job_request_release(loco_job_request *r) {
    if (!r) return;
    json_decref(r->params);
    r->params = NULL;
}

int loco_generate_spec_from_json(const json_t *p, loco_generate_spec *g, loco_proto_error *e) {
    memset(g, 0, sizeof *g);
    g->guidance_scale = NAN;
    g->karras = -1;
    g->batch = 1;
    if (!json_is_object(p) || !json_is_string(json_object_get(p, "prompt")))
        return loco_proto_fail(e, 422, "invalid_value", "/params/prompt", "generate params need a prompt");
    g->prompt = json_string_value(json_object_get(p, "prompt"));
    const json_t *v;
    if ((v = json_object_get(p, "negative_prompt")) && json_is_string(v)) g->negative_prompt = json_string_value(v);
    if ((v = json_object_get(p, "seed")) && json_is_integer(v)) g->seed = (uint64_t)json_integer_value(v);
    if ((v = json_object_get(p, "steps")) && json_is_integer(v)) g->steps = (int)json_integer_value(v);
    if ((v = json_object_get(p, "guidance_scale")) && json_is_number(v)) g->guidance_scale = json_number_value(v);
    if ((v = json_object_get(p, "scheduler")) && json_is_string(v)) g->scheduler = json_string_value(v);
    if ((v = json_object_get(p, "karras")) && json_is_boolean(v)) g->karras = json_is_true(v);
    if ((v = json_object_get(p, "width")) && json_is_integer(v)) g->width = (int)json_integer_value(v);
    if ((v = json_object_get(p, "height")) && json_is_integer(v)) g->height = (int)json_integer_value(v);
    if ((v = json_object_get(p, "clip_skip")) && json_is_integer(v)) g->clip_skip = (int)json_integer_value(v);
    if ((v = json_object_get(p, "batch")) && json_is_integer(v)) g->batch = (int)json_integer_value(v);
    if ((v = json_object_get(p, "return_latents")) && json_is_boolean(v)) g->return_latents = json_is_true(v);
    return 0;
}
