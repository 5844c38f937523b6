/* test_pipeline.c: whole text-to-image runs against diffusers (tests/fixtures/refs/<model>/
 * pipeline_<case>.safetensors): the same prompt, seed, scheduler, steps and guidance must give
 * bit-identical initial noise, final latents within 1e-4 relative and every pixel of the image
 * within 2/255 of diffusers' PNG; and a single-file checkpoint gives the same image as the
 * diffusers folder it was exported from. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loco_test.h"
#include "pipeline.h"
#include "safetensors.h"

typedef struct ref_case {
    loco_safetensors *f;
    char *prompts[8];
    char *negatives[8];
    int n_prompts;
    int has_negative;
} ref_case;

/* Metadata strings hold either plain text or JSON ("null", a list of prompts). */
static int meta_strings(const char *v, char **out, int max) {
    if (!v) return 0;
    json_error_t je;
    json_t *j = json_loads(v, JSON_DECODE_ANY, &je);
    int n = 0;
    if (j && json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j) && n < max; i++)
            if (json_is_string(json_array_get(j, i))) out[n++] = strdup(json_string_value(json_array_get(j, i)));
    } else if (j && json_is_null(j)) {
        n = 0;
    } else if (j && json_is_string(j)) {
        out[n++] = strdup(json_string_value(j));
    } else {
        out[n++] = strdup(v);
    }
    json_decref(j);
    return n;
}

static void ref_case_free(ref_case *c) {
    for (int i = 0; i < 8; i++) {
        free(c->prompts[i]);
        free(c->negatives[i]);
    }
    loco_safetensors_close(c->f);
}

static const loco_stored_tensor *need(const ref_case *c, const char *name) {
    const loco_stored_tensor *t = loco_safetensors_find(c->f, name);
    if (!t) fprintf(stderr, "reference tensor %s missing\n", name);
    return t;
}

static double meta_num(const ref_case *c, const char *key) {
    const char *v = loco_safetensors_metadata(c->f, key);
    return v ? atof(v) : -1;
}

/* Fill generate params from the reference's metadata; returns 0 on success. */
static int params_from_ref(ref_case *c, loco_generate_params *g) {
    loco_generate_params_init(g);
    c->n_prompts = meta_strings(loco_safetensors_metadata(c->f, "prompt"), c->prompts, 8);
    int nn = meta_strings(loco_safetensors_metadata(c->f, "negative_prompt"), c->negatives, 8);
    if (c->n_prompts < 1) return -1;
    if (nn == 1)
        for (int i = 1; i < c->n_prompts; i++) c->negatives[i] = strdup(c->negatives[0]);
    g->n_prompts = c->n_prompts;
    g->prompts = (const char *const *)c->prompts;
    g->negative_prompts = nn ? (const char *const *)c->negatives : NULL;
    g->seed = (uint64_t)meta_num(c, "seed");
    g->steps = (int)meta_num(c, "num_inference_steps");
    g->guidance_scale = (float)meta_num(c, "guidance_scale");
    g->width = (int)meta_num(c, "width");
    g->height = (int)meta_num(c, "height");
    const char *cls = loco_safetensors_metadata(c->f, "scheduler_class");
    if (cls && loco_scheduler_kind_from_name(cls, &g->scheduler) == 0) g->has_scheduler = 1;
    const char *sc = loco_safetensors_metadata(c->f, "scheduler_config");
    g->use_karras_sigmas = sc && strstr(sc, "\"use_karras_sigmas\": true") ? 1 : 0;
    return 0;
}

static void compare_run(loco_pipeline *p, const char *ref_path) {
    ref_case c;
    memset(&c, 0, sizeof c);
    loco_err err;
    loco_err_clear(&err);
    CHECK_MSG(loco_safetensors_open(ref_path, &c.f, &err) == LOCO_OK, "%s", err.msg);
    loco_generate_params g;
    CHECK(params_from_ref(&c, &g) == 0);
    loco_generate_result r;
    loco_status st = loco_generate(p, &g, &r, &err);
    if (st != LOCO_OK) {
        ref_case_free(&c);
        CHECK_MSG(st == LOCO_OK, "%s: %s", ref_path, err.msg);
    }
    const loco_stored_tensor *init = need(&c, "initial_latents"), *fin = need(&c, "final_latents"),
                             *img = need(&c, "image_uint8");
    int ok = init && fin && img;
    size_t nlat = init ? (size_t)loco_stored_numel(init) : 0;
    ok = ok && nlat == (size_t)(r.latent_shape[0] * r.latent_shape[1] * r.latent_shape[2] * r.latent_shape[3]);
    /* The initial noise is torch's, bit for bit (times init_noise_sigma in fp32). */
    int noise_exact = ok && memcmp(init->data, r.initial_latents, nlat * sizeof(float)) == 0;
    double lat_err = ok ? loco_rel_l2(r.latents, (const float *)fin->data, nlat) : 1;
    int max_px = 0;
    size_t npx = img ? (size_t)loco_stored_numel(img) : 0;
    if (ok && (size_t)r.n_images * (size_t)r.width * (size_t)r.height * 3 == npx) {
        const uint8_t *want = img->data;
        size_t per = (size_t)r.width * (size_t)r.height * 3;
        for (int k = 0; k < r.n_images; k++)
            for (size_t i = 0; i < per; i++) {
                int d = abs((int)r.images[k].data[i] - (int)want[k * per + i]);
                if (d > max_px) max_px = d;
            }
    } else {
        max_px = 256;
    }
    fprintf(stderr, "%s: noise %s, final latents rel err %.3g, max pixel diff %d/255\n", ref_path,
            noise_exact ? "bit-exact" : "DIFFERENT", lat_err, max_px);
    loco_generate_result_free(&r);
    ref_case_free(&c);
    CHECK(ok);
    CHECK(noise_exact);
    CHECK(lat_err <= 1e-4);
    CHECK(max_px <= 2);
}

static loco_pipeline *load(const char *model, const char *config_dir, loco_backend **be) {
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    bo.device = LOCO_DEVICE_CPU;
    loco_err err;
    loco_err_clear(&err);
    if (loco_backend_create(&bo, be, &err)) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return NULL;
    }
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    char path[512], cfg[512];
    snprintf(path, sizeof path, "%s/models/%s", loco_fixtures_dir(), model);
    po.model_path = path;
    if (config_dir) {
        snprintf(cfg, sizeof cfg, "%s/models/%s", loco_fixtures_dir(), config_dir);
        po.config_dir = cfg;
    }
    loco_pipeline *p = NULL;
    if (loco_pipeline_load(*be, &po, &p, &err)) fprintf(stderr, "load %s: %s\n", path, err.msg);
    return p;
}

static void run_cases(const char *model, const char *config_dir, const char *ref_model, const char *const *cases) {
    loco_backend *be = NULL;
    loco_pipeline *p = load(model, config_dir, &be);
    if (!p) loco_backend_destroy(be);
    CHECK(p != NULL);
    for (int i = 0; cases[i]; i++) {
        char ref[512];
        snprintf(ref, sizeof ref, "%s/refs/%s/pipeline_%s.safetensors", loco_fixtures_dir(), ref_model, cases[i]);
        compare_run(p, ref);
        if (loco_test_failed_) break;
    }
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

TEST(sd1_default_pndm) { run_cases("sd1-tiny", NULL, "sd1-tiny", (const char *const[]){"pndm", "negative", "noguidance", NULL}); }
TEST(sd1_batch2) { run_cases("sd1-tiny", NULL, "sd1-tiny", (const char *const[]){"batch2", NULL}); }
TEST(sd1_ddim) { run_cases("sd1-tiny", NULL, "sd1-tiny", (const char *const[]){"ddim", NULL}); }
TEST(sd1_euler) { run_cases("sd1-tiny", NULL, "sd1-tiny", (const char *const[]){"euler", "euler_karras", NULL}); }
TEST(sd1_euler_ancestral) { run_cases("sd1-tiny", NULL, "sd1-tiny", (const char *const[]){"euler_ancestral", NULL}); }
TEST(sd1_dpmpp_2m) { run_cases("sd1-tiny", NULL, "sd1-tiny", (const char *const[]){"dpmpp_2m", "dpmpp_2m_karras", NULL}); }
TEST(sd1_ddpm) { run_cases("sd1-tiny", NULL, "sd1-tiny", (const char *const[]){"ddpm", NULL}); }
TEST(sd2_vpred_ddim) { run_cases("sd2-tiny", NULL, "sd2-tiny", (const char *const[]){"ddim", "negative", NULL}); }
TEST(sdxl_euler) { run_cases("sdxl-tiny", NULL, "sdxl-tiny", (const char *const[]){"euler", "negative", "batch2", NULL}); }

/* Single-file checkpoints hold the same weights (bf16-representable values) as the folders,
 * so with the folder's configs and tokenizers they must reproduce the folder's references. */
TEST(sd1_single_file) { run_cases("sd1-tiny.safetensors", "sd1-tiny", "sd1-tiny", (const char *const[]){"pndm", NULL}); }
TEST(sd2_single_file) { run_cases("sd2-tiny.safetensors", "sd2-tiny", "sd2-tiny", (const char *const[]){"ddim", NULL}); }
TEST(sdxl_single_file) { run_cases("sdxl-tiny.safetensors", "sdxl-tiny", "sdxl-tiny", (const char *const[]){"euler", NULL}); }

TEST(rejects_bad_params) {
    loco_backend *be = NULL;
    loco_pipeline *p = load("sd1-tiny", NULL, &be);
    CHECK(p != NULL);
    loco_generate_params g;
    loco_generate_params_init(&g);
    const char *prompts[1] = {"x"};
    loco_err err;
    loco_generate_result r;
    /* no prompt */
    CHECK(loco_generate(p, &g, &r, &err) == LOCO_EINVAL);
    g.n_prompts = 1;
    g.prompts = prompts;
    g.width = 70; /* not a multiple of 32 */
    CHECK(loco_generate(p, &g, &r, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "multiples") != NULL);
    g.width = 0;
    g.guidance_scale = 1e9f;
    CHECK(loco_generate(p, &g, &r, &err) == LOCO_EINVAL);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

TEST(missing_model_is_clear_error) {
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    bo.device = LOCO_DEVICE_CPU;
    loco_backend *be = NULL;
    loco_err err;
    CHECK(loco_backend_create(&bo, &be, &err) == LOCO_OK);
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.model_path = "/nonexistent/model";
    loco_pipeline *p = NULL;
    loco_status st = loco_pipeline_load(be, &po, &p, &err);
    loco_backend_destroy(be);
    CHECK(st != LOCO_OK);
    CHECK(p == NULL);
    CHECK(strstr(err.msg, "/nonexistent/model") != NULL);
}
