/* worker_jobs_generate.c: the generate job on the worker: params -> loco_generate -> PNG
 * artifacts (and optionally the latents as safetensors). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "artifacts.h"
#include "method_util.h"
#include "safetensors.h"
#include "worker.h"

typedef struct gen_progress {
    wk_ctx *w;
} gen_progress;

static int on_step(void *ctx, int step, int total) {
    gen_progress *g = ctx;
    return wk_progress(g->w, "denoise", step, total);
}

static loco_status write_latents(wk_ctx *w, const loco_generate_result *r, json_t *artifacts, char *sha,
                                 loco_err *err) {
    char tmp[PATH_MAX];
    locod_artifact_tmp_path(w->artifacts, ".safetensors", tmp, sizeof tmp);
    loco_status st = loco_generate_result_write_latents(r, tmp, err);
    if (st) return st;
    return wk_put_artifact_file(w, tmp, "latents.safetensors", "application/octet-stream", artifacts, sha, err);
}

loco_status wk_run_generate(wk_ctx *w, wk_model *m, const json_t *params, json_t *result, json_t *artifacts,
                            loco_err *err) {
    loco_pipeline *p = m->p;
    loco_proto_error pe;
    loco_generate_spec spec;
    if (loco_generate_spec_from_json(params, &spec, &pe)) return loco_err_set(err, LOCO_EINVAL, "%s", pe.detail);
    loco_generate_params g;
    loco_generate_params_init(&g);
    const char *prompts[1] = {spec.prompt};
    const char *negs[1] = {spec.negative_prompt};
    g.n_prompts = 1;
    g.prompts = prompts;
    g.negative_prompts = spec.negative_prompt ? negs : NULL;
    g.num_images_per_prompt = spec.batch;
    g.seed = spec.seed;
    g.steps = spec.steps;
    if (!isnan(spec.guidance_scale)) g.guidance_scale = (float)spec.guidance_scale;
    if (spec.scheduler) {
        if (loco_scheduler_kind_from_name(spec.scheduler, &g.scheduler))
            return loco_err_set(err, LOCO_EINVAL, "unknown scheduler '%s'", spec.scheduler);
        g.has_scheduler = 1;
    }
    if (spec.karras >= 0) g.use_karras_sigmas = spec.karras;
    g.width = spec.width;
    g.height = spec.height;
    g.clip_skip = spec.clip_skip;
    gen_progress gp = {w};
    g.progress = on_step;
    g.progress_ctx = &gp;
    loco_status st = loco_generate_validate(p, &g, err);
    if (st) return st;
    /* the total the step callbacks will report: UNet calls, steps + 1 for PNDM, so the first
     * event already has the total every later one repeats */
    loco_denoise_params dp;
    loco_denoise_params_init(&dp);
    dp.steps = g.steps;
    dp.has_scheduler = g.has_scheduler;
    dp.scheduler = g.scheduler;
    dp.use_karras_sigmas = g.use_karras_sigmas;
    int n_calls = g.steps;
    if (loco_sampler_n_calls(p, &dp, &n_calls, err)) n_calls = g.steps;
    wk_progress(w, "denoise", 0, n_calls);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    loco_generate_result r;
    memset(&r, 0, sizeof r);
    st = m->variant ? loco_pipeline_variant_generate(m->variant, &g, &r, err) : loco_generate(p, &g, &r, err);
    if (st) {
        loco_generate_result_free(&r);
        return st;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    json_t *images = json_array();
    json_object_set_new(result, "images", images);
    for (int i = 0; i < r.n_images && st == LOCO_OK; i++) {
        if (wk_progress(w, "encode_png", i, r.n_images)) {
            st = loco_err_set(err, LOCO_ECANCELLED, "cancelled at the client's request");
            break;
        }
        void *buf = NULL;
        size_t len = 0;
        char sha[65], name[32];
        st = loco_png_encode(&r.images[i], &buf, &len, err);
        if (st == LOCO_OK) {
            snprintf(name, sizeof name, "image-%d.png", i);
            st = wk_put_artifact(w, buf, len, name, "image/png", artifacts, sha, err);
        }
        free(buf);
        if (st == LOCO_OK) {
            char url[128];
            snprintf(url, sizeof url, "/v1/artifacts/%s", sha);
            json_array_append_new(images, json_pack("{s:i, s:s, s:s, s:i, s:i}", "index", i, "sha256", sha, "url", url,
                                                    "width", r.width, "height", r.height));
        }
    }
    if (st == LOCO_OK) wk_progress(w, "encode_png", r.n_images, r.n_images); /* the phase ends at its total */
    if (st == LOCO_OK && spec.return_latents) {
        char sha[65], url[128];
        st = write_latents(w, &r, artifacts, sha, err);
        if (st == LOCO_OK) {
            snprintf(url, sizeof url, "/v1/artifacts/%s", sha);
            json_object_set_new(result, "latents", json_pack("{s:s, s:s}", "sha256", sha, "url", url));
        }
    }
    if (st == LOCO_OK) {
        json_object_set_new(result, "width", json_integer(r.width));
        json_object_set_new(result, "height", json_integer(r.height));
        json_object_set_new(result, "seed", json_integer((json_int_t)spec.seed));
        json_object_set_new(result, "steps", json_integer(g.steps));
        json_object_set_new(result, "scheduler",
                            json_string(g.has_scheduler ? loco_scheduler_kind_name(g.scheduler)
                                                        : loco_scheduler_kind_name(loco_pipeline_default_scheduler(p))));
        json_object_set_new(result, "elapsed_ms",
                            json_integer((json_int_t)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000)));
    }
    loco_generate_result_free(&r);
    return st;
}
