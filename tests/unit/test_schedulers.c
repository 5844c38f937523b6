/* test_schedulers.c: the schedulers against diffusers.
 *
 * Replay: tests/fixtures/refs/schedulers/<name>_<prediction>.safetensors (tools/fixtures/
 * refs_schedulers.py) holds a 10-step trajectory recorded from diffusers: timesteps, sigmas,
 * init_noise_sigma, alphas_cumprod, the initial sample, and per step the scaled model input, the
 * model output fed and prev_sample, plus the 50-step timestep (and sigma) lists. The scheduler is
 * built from the config recorded in the file's metadata (through loco_scheduler_config_from_json),
 * fed the recorded model outputs, and run on its own trajectory: every scaled input and
 * prev_sample must be within 1e-5 relative L2, and the timestep lists must be equal.
 * The stochastic kinds (Euler a, DDPM) draw their noise from a loco_torch_rng seeded like the
 * recorded torch.Generator, so this also checks the RNG stream order.
 *
 * The rest: config JSON (defaults, errors naming the key, unknown keys ignored), name round
 * trips, step-count edge cases (1, 2, 50, 1000 steps; more than num_train_timesteps is an
 * error), call-order errors, and the same replay on the CUDA backend when a GPU is present. */
#include <dirent.h>
#include <jansson.h>

#include "backend.h"
#include "loco_test.h"
#include "safetensors.h"
#include "scheduler.h"
#include "torch_rng.h"

static const char *const k_stems[] = {"pndm", "ddim", "euler", "euler_karras", "euler_ancestral",
                                      "dpmpp_2m", "dpmpp_2m_karras", "ddpm"};
static const char *const k_preds[] = {"epsilon", "v_prediction"};

static loco_backend *cpu_backend(void) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CPU;
    o.num_threads = 1;
    loco_backend *be = NULL;
    loco_err err;
    if (loco_backend_create(&o, &be, &err) != LOCO_OK) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return NULL;
    }
    return be;
}

/* ---- fixture access ------------------------------------------------------------------------------ */

static int fixture_path(const char *stem, const char *pred, char *buf, size_t n) {
    return snprintf(buf, n, "%s/refs/schedulers/%s_%s.safetensors", loco_fixtures_dir(), stem, pred) < (int)n;
}

static int fixtures_present(void) {
    char p[1024];
    fixture_path("pndm", "epsilon", p, sizeof p);
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

/* A stored tensor as doubles (F32, F64, I64); NULL when absent. *n gets numel. */
static double *get_doubles(const loco_safetensors *f, const char *name, int64_t *n) {
    const loco_stored_tensor *t = loco_safetensors_find(f, name);
    if (!t) return NULL;
    int64_t m = loco_stored_numel(t);
    double *v = malloc((size_t)(m ? m : 1) * sizeof(double));
    for (int64_t i = 0; i < m; i++) {
        if (t->dtype == LOCO_F32) {
            float x;
            memcpy(&x, (const char *)t->data + 4 * i, 4);
            v[i] = x;
        } else if (t->dtype == LOCO_F64) {
            memcpy(&v[i], (const char *)t->data + 8 * i, 8);
        } else if (t->dtype == LOCO_I64) {
            int64_t x;
            memcpy(&x, (const char *)t->data + 8 * i, 8);
            v[i] = (double)x;
        } else {
            free(v);
            return NULL;
        }
    }
    *n = m;
    return v;
}

/* Upload an F32 stored tensor into a fresh backend tensor of its shape and `dtype`. */
static loco_status upload_stored(loco_backend *be, const loco_stored_tensor *st, loco_dtype dtype, loco_tensor *t,
                                 loco_err *err) {
    loco_status s = loco_tensor_alloc(be, dtype, st->ndim, st->shape, t, err);
    if (s == LOCO_OK) s = loco_tensor_upload(t, st->data, st->dtype, err);
    return s;
}

/* The recorded config: diffusers writes -Infinity for lambda_min_clipped, which JSON (and
 * jansson) lack; loco's reader takes the string "-inf" for it. */
static json_t *fixture_config(const loco_safetensors *f) {
    const char *js = loco_safetensors_metadata(f, "config");
    if (!js) return NULL;
    size_t n = strlen(js);
    char *buf = malloc(n * 2 + 16), *o = buf;
    for (const char *p = js; *p;) {
        if (strncmp(p, "-Infinity", 9) == 0) {
            o += sprintf(o, "\"-inf\"");
            p += 9;
        } else {
            *o++ = *p++;
        }
    }
    *o = 0;
    json_error_t je;
    json_t *j = json_loads(buf, 0, &je);
    free(buf);
    return j;
}

static double rel_err_tensor(const loco_tensor *t, const loco_stored_tensor *ref, float *host) {
    loco_err err;
    if (loco_tensor_download_f32(t, host, &err) != LOCO_OK) return NAN;
    return loco_rel_l2(host, (const float *)ref->data, (size_t)loco_stored_numel(ref));
}

/* Integer timesteps must be equal. Fractional ones from _sigma_to_t (Euler with Karras or
 * exponential sigmas) may differ in the last bits: diffusers interpolates in an fp32 log-sigma
 * table built with torch's CPU sqrt (MKL, not correctly rounded for ~0.6% of inputs) and numpy's
 * SIMD float32 log (likewise), both machine-dependent, and where adjacent log sigmas are close a
 * one-ulp table difference moves t by several ulps. Measured over 1..200 steps and all spacings:
 * at most 9 ulps (6e-7 relative); plain linspace timesteps are exact. */
static int same_timestep(float ours, double ref) {
    if ((double)ours == ref) return 1;
    if (ref == floor(ref)) return 0;
    return fabs((double)ours - ref) <= 2e-6 * fabs(ref);
}

/* ---- replay ------------------------------------------------------------------------------------------- */

typedef struct replay_result {
    double worst_input, worst_prev;
    int calls;
} replay_result;

/* Replay one fixture on `be` with tensors of `dtype`; tol is the per-step relative L2 bound.
 * Returns 0 on success, else prints why. */
static int replay(loco_backend *be, loco_dtype dtype, const char *path, double tol, replay_result *res) {
    loco_err err;
    loco_safetensors *f = NULL;
    if (loco_safetensors_open(path, &f, &err) != LOCO_OK) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        return 1;
    }
    int rc = 1;
    loco_scheduler *s = NULL, *s50 = NULL;
    loco_tensor sample = {0}, in = {0}, mo = {0};
    double *ts = NULL, *sig = NULL, *ac = NULL, *ins = NULL, *ts50 = NULL, *sig50 = NULL;
    float *host = NULL;
    loco_scheduler_config cfg;
    loco_scheduler_config_init(&cfg);
    json_t *j = fixture_config(f);
    loco_scheduler_kind kind;
    const char *cls = loco_safetensors_metadata(f, "scheduler_class");
    if (!j || !cls || loco_scheduler_kind_from_name(cls, &kind) != 0) {
        fprintf(stderr, "%s: no usable config/scheduler_class metadata\n", path);
        goto out;
    }
    const char *steps_md = loco_safetensors_metadata(f, "num_inference_steps");
    const char *eta_md = loco_safetensors_metadata(f, "eta");
    int steps = steps_md ? atoi(steps_md) : 10;
    if (loco_scheduler_config_from_json(j, &cfg, &err) != LOCO_OK) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto out;
    }
    if (eta_md) cfg.eta = atof(eta_md); /* DDIM's step argument, recorded next to the config */
    if (loco_scheduler_create(kind, &cfg, steps, be, &s, &err) != LOCO_OK) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        goto out;
    }
    int64_t nts, nsig = 0, nac, nins;
    ts = get_doubles(f, "timesteps", &nts);
    sig = get_doubles(f, "sigmas", &nsig);
    ac = get_doubles(f, "alphas_cumprod", &nac);
    ins = get_doubles(f, "init_noise_sigma", &nins);
    if (!ts || !ac || !ins) {
        fprintf(stderr, "%s: timesteps/alphas_cumprod/init_noise_sigma missing\n", path);
        goto out;
    }
    /* tables */
    int nac_ours;
    const float *ac_ours = loco_scheduler_alphas_cumprod(s, &nac_ours);
    if (nac_ours != nac) {
        fprintf(stderr, "%s: %d alphas_cumprod, fixture %lld\n", path, nac_ours, (long long)nac);
        goto out;
    }
    /* Bit for bit, except through rescale_betas_zero_snr, whose torch sqrt (MKL) is not always
     * correctly rounded. */
    double ac_tol = cfg.rescale_betas_zero_snr ? 1e-6 : 0;
    for (int64_t k = 0; k < nac; k++)
        if (fabs(ac_ours[k] - ac[k]) > ac_tol * fabs(ac[k])) {
            fprintf(stderr, "%s: alphas_cumprod[%lld] %.9g != %.9g\n", path, (long long)k, ac_ours[k], ac[k]);
            goto out;
        }
    if (loco_scheduler_num_calls(s) != nts) {
        fprintf(stderr, "%s: %d calls, fixture %lld\n", path, loco_scheduler_num_calls(s), (long long)nts);
        goto out;
    }
    for (int64_t k = 0; k < nts; k++)
        if (!same_timestep(loco_scheduler_timestep(s, (int)k), ts[k])) {
            fprintf(stderr, "%s: timestep %lld is %.9g, diffusers %.9g\n", path, (long long)k,
                    loco_scheduler_timestep(s, (int)k), ts[k]);
            goto out;
        }
    if (sig) {
        int n_ours;
        const float *so = loco_scheduler_sigmas(s, &n_ours);
        if (!so || n_ours != nsig) {
            fprintf(stderr, "%s: %d sigmas, fixture %lld\n", path, n_ours, (long long)nsig);
            goto out;
        }
        for (int64_t k = 0; k < nsig; k++)
            if (fabs(so[k] - sig[k]) > 1e-6 * fabs(sig[k])) {
                fprintf(stderr, "%s: sigma %lld is %.9g, diffusers %.9g\n", path, (long long)k, so[k], sig[k]);
                goto out;
            }
    }
    if (fabs(loco_scheduler_init_noise_sigma(s) - ins[0]) > 1e-6 * fabs(ins[0])) {
        fprintf(stderr, "%s: init_noise_sigma %.9g, diffusers %.9g\n", path, loco_scheduler_init_noise_sigma(s), ins[0]);
        goto out;
    }

    /* trajectory */
    const loco_stored_tensor *x0 = loco_safetensors_find(f, "initial_sample");
    if (!x0 || upload_stored(be, x0, dtype, &sample, &err) != LOCO_OK ||
        loco_tensor_alloc(be, dtype, x0->ndim, x0->shape, &in, &err) != LOCO_OK) {
        fprintf(stderr, "%s: initial_sample: %s\n", path, x0 ? err.msg : "missing");
        goto out;
    }
    host = malloc((size_t)loco_stored_numel(x0) * sizeof(float));
    loco_torch_rng rng;
    loco_torch_rng_seed(&rng, 99); /* STEP_NOISE_SEED of the generator */
    const char *seed_md = loco_safetensors_metadata(f, "step_noise_seed");
    if (seed_md && strcmp(seed_md, "null") != 0) loco_torch_rng_seed(&rng, strtoull(seed_md, NULL, 10));
    res->worst_input = res->worst_prev = 0;
    res->calls = (int)nts;
    /* Beyond 100 calls fp32 rounding differences add up step by step (a 1000-step DDIM run drifts
     * to ~1e-5); the bound grows with the run. */
    if (nts > 100) tol *= nts / 100.0;
    for (int i = 0; i < nts; i++) {
        char name[64];
        snprintf(name, sizeof name, "step%d.model_input", i);
        const loco_stored_tensor *r_in = loco_safetensors_find(f, name);
        snprintf(name, sizeof name, "step%d.model_output", i);
        const loco_stored_tensor *r_mo = loco_safetensors_find(f, name);
        snprintf(name, sizeof name, "step%d.prev_sample", i);
        const loco_stored_tensor *r_prev = loco_safetensors_find(f, name);
        if (!r_in || !r_mo || !r_prev) {
            fprintf(stderr, "%s: step %d tensors missing\n", path, i);
            goto out;
        }
        if (loco_scheduler_scale_model_input(s, i, &sample, &in, &err) != LOCO_OK) {
            fprintf(stderr, "%s: step %d scale: %s\n", path, i, err.msg);
            goto out;
        }
        double e_in = rel_err_tensor(&in, r_in, host);
        if (!mo.data && loco_tensor_alloc(be, dtype, r_mo->ndim, r_mo->shape, &mo, &err) != LOCO_OK) {
            fprintf(stderr, "%s: step %d: %s\n", path, i, err.msg);
            goto out;
        }
        if (loco_tensor_upload(&mo, r_mo->data, r_mo->dtype, &err) != LOCO_OK ||
            loco_scheduler_step(s, i, &mo, &sample, &rng, &err) != LOCO_OK) {
            fprintf(stderr, "%s: step %d: %s\n", path, i, err.msg);
            goto out;
        }
        double e_prev = rel_err_tensor(&sample, r_prev, host);
        if (!(e_in <= res->worst_input)) res->worst_input = e_in;
        if (!(e_prev <= res->worst_prev)) res->worst_prev = e_prev;
        if (!(e_in <= tol) || !(e_prev <= tol)) {
            fprintf(stderr, "%s: step %d: model_input rel %.3g, prev_sample rel %.3g (tol %g)\n", path, i, e_in,
                    e_prev, tol);
            goto out;
        }
    }

    /* the 50-step lists */
    int64_t n50, nsig50 = 0;
    ts50 = get_doubles(f, "timesteps_50", &n50);
    sig50 = get_doubles(f, "sigmas_50", &nsig50);
    if (!ts50) {
        rc = 0; /* only the standard fixtures carry the 50-step lists */
        goto out;
    }
    if (loco_scheduler_create(kind, &cfg, 50, be, &s50, &err) != LOCO_OK) {
        fprintf(stderr, "%s: 50 steps: %s\n", path, err.msg);
        goto out;
    }
    if (loco_scheduler_num_calls(s50) != n50) {
        fprintf(stderr, "%s: 50 steps give %d calls, diffusers %lld\n", path, loco_scheduler_num_calls(s50),
                (long long)n50);
        goto out;
    }
    for (int64_t k = 0; k < n50; k++)
        if (!same_timestep(loco_scheduler_timestep(s50, (int)k), ts50[k])) {
            fprintf(stderr, "%s: 50-step timestep %lld is %.9g, diffusers %.9g\n", path, (long long)k,
                    loco_scheduler_timestep(s50, (int)k), ts50[k]);
            goto out;
        }
    if (sig50) {
        int n_ours;
        const float *so = loco_scheduler_sigmas(s50, &n_ours);
        for (int64_t k = 0; k < nsig50 && so && n_ours == nsig50; k++)
            if (fabs(so[k] - sig50[k]) > 1e-6 * fabs(sig50[k])) {
                fprintf(stderr, "%s: 50-step sigma %lld is %.9g, diffusers %.9g\n", path, (long long)k, so[k],
                        sig50[k]);
                goto out;
            }
        if (!so || n_ours != nsig50) {
            fprintf(stderr, "%s: 50 steps give %d sigmas, diffusers %lld\n", path, n_ours, (long long)nsig50);
            goto out;
        }
    }
    rc = 0;
out:
    free(ts), free(sig), free(ac), free(ins), free(ts50), free(sig50), free(host);
    loco_tensor_free(&sample), loco_tensor_free(&in), loco_tensor_free(&mo);
    loco_scheduler_destroy(s), loco_scheduler_destroy(s50);
    loco_scheduler_config_release(&cfg);
    json_decref(j);
    loco_safetensors_close(f);
    return rc;
}

static void replay_stem(const char *stem) {
    if (!fixtures_present()) SKIP("no scheduler fixtures under %s/refs/schedulers (make fixtures)", loco_fixtures_dir());
    loco_backend *be = cpu_backend();
    CHECK(be != NULL);
    for (int p = 0; p < 2; p++) {
        replay_result r;
        char path[1024];
        fixture_path(stem, k_preds[p], path, sizeof path);
        int rc = replay(be, LOCO_F32, path, 1e-5, &r);
        if (rc == 0) printf("  %s_%s: %d calls, worst rel err: model_input %.2e, prev_sample %.2e\n", stem, k_preds[p],
                            r.calls, r.worst_input, r.worst_prev);
        if (rc != 0) loco_backend_destroy(be);
        CHECK_MSG(rc == 0, "%s_%s does not replay", stem, k_preds[p]);
    }
    loco_backend_destroy(be);
}

TEST(replay_pndm) { replay_stem("pndm"); }
TEST(replay_ddim) { replay_stem("ddim"); }
TEST(replay_euler) { replay_stem("euler"); }
TEST(replay_euler_karras) { replay_stem("euler_karras"); }
TEST(replay_euler_ancestral) { replay_stem("euler_ancestral"); }
TEST(replay_dpmpp_2m) { replay_stem("dpmpp_2m"); }
TEST(replay_dpmpp_2m_karras) { replay_stem("dpmpp_2m_karras"); }
TEST(replay_ddpm) { replay_stem("ddpm"); }

/* Any further trajectory files in the folder (other options, other step counts), same rules. */
TEST(replay_other_fixtures) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/refs/schedulers", loco_fixtures_dir());
    DIR *d = opendir(dir);
    if (!d) SKIP("no %s", dir);
    loco_backend *be = cpu_backend();
    int found = 0, failed = 0;
    struct dirent *de;
    while (be && (de = readdir(d))) {
        const char *nm = de->d_name;
        size_t n = strlen(nm);
        if (n < 12 || strcmp(nm + n - 12, ".safetensors") != 0) continue;
        int standard = 0;
        for (size_t k = 0; k < sizeof k_stems / sizeof k_stems[0]; k++)
            for (int p = 0; p < 2; p++) {
                char want[128];
                snprintf(want, sizeof want, "%s_%s.safetensors", k_stems[k], k_preds[p]);
                standard |= strcmp(nm, want) == 0;
            }
        if (standard) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, nm);
        replay_result r;
        found++;
        if (replay(be, LOCO_F32, path, 1e-5, &r) != 0) {
            failed++;
            continue;
        }
        printf("  %s: %d calls, worst rel err: model_input %.2e, prev_sample %.2e\n", nm, r.calls, r.worst_input,
               r.worst_prev);
    }
    closedir(d);
    loco_backend_destroy(be);
    if (!found) SKIP("no fixtures beyond the standard ones in %s", dir);
    CHECK_MSG(failed == 0, "%d of %d trajectories do not replay", failed, found);
}

/* The same replay on the GPU: fp32 tensors must agree as on the CPU (same coefficients, the
 * kernels differ only in summation order); fp16 within the GPU-vs-CPU tolerance. */
TEST(replay_cuda) {
    if (!fixtures_present()) SKIP("no scheduler fixtures");
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CUDA;
    loco_backend *be = NULL;
    loco_err err;
    if (loco_backend_create(&o, &be, &err) != LOCO_OK) SKIP("no CUDA backend: %s", err.msg);
    int failed = 0;
    for (size_t k = 0; k < sizeof k_stems / sizeof k_stems[0] && !failed; k++)
        for (int p = 0; p < 2 && !failed; p++) {
            replay_result r;
            char path[1024];
            fixture_path(k_stems[k], k_preds[p], path, sizeof path);
            failed |= replay(be, LOCO_F32, path, 1e-5, &r) != 0;
            if (!failed) failed |= replay(be, LOCO_F16, path, 1e-2, &r) != 0;
            if (!failed) printf("  cuda %s_%s: fp16 worst prev_sample rel err %.2e\n", k_stems[k], k_preds[p], r.worst_prev);
        }
    loco_backend_destroy(be);
    CHECK(!failed);
}

/* ---- names and config JSON --------------------------------------------------------------------------- */

TEST(kind_names_round_trip) {
    for (int k = 0; k < LOCO_SCHED_KIND_COUNT; k++) {
        loco_scheduler_kind a, b;
        CHECK(loco_scheduler_kind_from_name(loco_scheduler_kind_name((loco_scheduler_kind)k), &a) == 0 && a == k);
        CHECK(loco_scheduler_kind_from_name(loco_scheduler_kind_class_name((loco_scheduler_kind)k), &b) == 0 && b == k);
    }
    loco_scheduler_kind k;
    CHECK(loco_scheduler_kind_from_name("LMSDiscreteScheduler", &k) == -1);
    CHECK(loco_scheduler_kind_from_name(NULL, &k) == -1);
    CHECK(strcmp(loco_scheduler_kind_name(LOCO_SCHED_EULER_A), "euler_a") == 0);
    CHECK(strcmp(loco_scheduler_kind_class_name(LOCO_SCHED_DPMPP_2M), "DPMSolverMultistepScheduler") == 0);
}

TEST(option_names_round_trip) {
#define ROUND_TRIP(type, count, name_fn, parse_fn)                      \
    for (int v = 0; v < (count); v++) {                                 \
        type out;                                                       \
        CHECK(parse_fn(name_fn((type)v), &out) == 0 && (int)out == v);  \
    }                                                                   \
    do {                                                                \
        type out;                                                       \
        CHECK(parse_fn("no-such-value", &out) == -1);                   \
    } while (0)
    ROUND_TRIP(loco_beta_schedule, LOCO_BETA_SCHEDULE_COUNT, loco_beta_schedule_name, loco_beta_schedule_from_name);
    ROUND_TRIP(loco_prediction_type, LOCO_PRED_COUNT, loco_prediction_type_name, loco_prediction_type_from_name);
    ROUND_TRIP(loco_timestep_spacing, LOCO_SPACING_COUNT, loco_timestep_spacing_name, loco_timestep_spacing_from_name);
    ROUND_TRIP(loco_variance_type, LOCO_VARIANCE_COUNT, loco_variance_type_name, loco_variance_type_from_name);
    ROUND_TRIP(loco_interpolation_type, LOCO_INTERP_COUNT, loco_interpolation_type_name,
               loco_interpolation_type_from_name);
    ROUND_TRIP(loco_final_sigmas_type, LOCO_FINAL_SIGMA_COUNT, loco_final_sigmas_type_name,
               loco_final_sigmas_type_from_name);
    ROUND_TRIP(loco_dpm_algorithm, LOCO_DPM_ALGORITHM_COUNT, loco_dpm_algorithm_name, loco_dpm_algorithm_from_name);
    ROUND_TRIP(loco_dpm_solver_type, LOCO_DPM_SOLVER_TYPE_COUNT, loco_dpm_solver_type_name,
               loco_dpm_solver_type_from_name);
    ROUND_TRIP(loco_timestep_type, LOCO_TIMESTEP_TYPE_COUNT, loco_timestep_type_name, loco_timestep_type_from_name);
#undef ROUND_TRIP
    /* spellings diffusers itself maps onto another value */
    loco_prediction_type p;
    CHECK(loco_prediction_type_from_name("original_sample", &p) == 0 && p == LOCO_PRED_SAMPLE);
    loco_dpm_algorithm a;
    CHECK(loco_dpm_algorithm_from_name("deis", &a) == 0 && a == LOCO_DPM_DPMSOLVER_PP);
    loco_dpm_solver_type t;
    CHECK(loco_dpm_solver_type_from_name("bh2", &t) == 0 && t == LOCO_DPM_MIDPOINT);
}

static loco_status parse_config(const char *text, loco_scheduler_config *cfg, loco_err *err) {
    json_error_t je;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
    if (!j) {
        fprintf(stderr, "bad test JSON: %s\n", je.text);
        return LOCO_EFORMAT;
    }
    loco_status st = loco_scheduler_config_from_json(j, cfg, err);
    json_decref(j);
    return st;
}

/* SD 1.5's scheduler_config.json, plus a key no class has. */
static const char k_sd15[] =
    "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.6.0\", \"beta_end\": 0.012,"
    " \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"num_train_timesteps\": 1000,"
    " \"set_alpha_to_one\": false, \"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null,"
    " \"clip_sample\": false, \"some_future_key\": [1, {\"x\": 2}]}";

TEST(config_from_json_reads_sd15) {
    loco_scheduler_config c;
    loco_err err;
    CHECK_MSG(parse_config(k_sd15, &c, &err) == LOCO_OK, "%s", err.msg);
    CHECK(c.has_class_kind && c.class_kind == LOCO_SCHED_PNDM);
    CHECK(strcmp(c.class_name, "PNDMScheduler") == 0);
    CHECK(c.num_train_timesteps == 1000 && c.beta_start == 0.00085 && c.beta_end == 0.012);
    CHECK(c.beta_schedule == LOCO_BETA_SCALED_LINEAR && c.trained_betas == NULL);
    CHECK(c.set_alpha_to_one == 0 && c.skip_prk_steps == 1 && c.steps_offset == 1 && c.clip_sample == 0);
    /* absent keys stay "the kind's default" until a kind is chosen */
    CHECK(c.timestep_spacing == LOCO_SPACING_DEFAULT && c.variance_type == LOCO_VARIANCE_DEFAULT);
    CHECK(c.prediction_type == LOCO_PRED_EPSILON && c.solver_order == 2 && isinf(c.lambda_min_clipped));

    /* from_config swaps: Euler gets "linspace" (its own default), PNDM "leading", and Euler's
     * init_noise_sigma follows: sigma_max for linspace, sqrt(sigma_max^2 + 1) for leading. */
    loco_backend *be = cpu_backend();
    CHECK(be != NULL);
    loco_scheduler *pndm = NULL, *euler = NULL;
    CHECK(loco_scheduler_create(LOCO_SCHED_PNDM, &c, 50, be, &pndm, &err) == LOCO_OK);
    CHECK(loco_scheduler_create(LOCO_SCHED_EULER, &c, 50, be, &euler, &err) == LOCO_OK);
    CHECK(loco_scheduler_get_config(pndm)->timestep_spacing == LOCO_SPACING_LEADING);
    CHECK(loco_scheduler_get_config(euler)->timestep_spacing == LOCO_SPACING_LINSPACE);
    /* PNDM, 50 steps: 981, 961, 961, 941, ..., 21, 1 (51 calls) */
    CHECK(loco_scheduler_num_calls(pndm) == 51);
    CHECK(loco_scheduler_timestep(pndm, 0) == 981 && loco_scheduler_timestep(pndm, 1) == 961 &&
          loco_scheduler_timestep(pndm, 2) == 961 && loco_scheduler_timestep(pndm, 50) == 1);
    CHECK(isnan(loco_scheduler_timestep(pndm, 51)));
    int ns;
    const float *sig = loco_scheduler_sigmas(euler, &ns);
    CHECK(ns == 51 && sig[50] == 0.0f && loco_scheduler_timestep(euler, 0) == 999.0f);
    CHECK(loco_scheduler_init_noise_sigma(euler) == sig[0]);
    CHECK(loco_scheduler_sigmas(pndm, &ns) == NULL && ns == 0);
    loco_scheduler_destroy(pndm);
    loco_scheduler_destroy(euler);
    loco_backend_destroy(be);
    loco_scheduler_config_release(&c);
}

TEST(config_from_json_nulls_and_strings) {
    loco_scheduler_config c;
    loco_err err;
    CHECK_MSG(parse_config("{\"_class_name\": \"LMSDiscreteScheduler\", \"variance_type\": null,"
                           " \"use_karras_sigmas\": null, \"sigma_min\": null, \"lambda_min_clipped\": \"-inf\","
                           " \"prediction_type\": \"original_sample\", \"num_train_timesteps\": 1000.0}",
                           &c, &err) == LOCO_OK,
              "%s", err.msg);
    CHECK(!c.has_class_kind && strcmp(c.class_name, "LMSDiscreteScheduler") == 0);
    CHECK(c.variance_type == LOCO_VARIANCE_DEFAULT && c.use_karras_sigmas == 0 && !c.has_sigma_min);
    CHECK(isinf(c.lambda_min_clipped) && c.lambda_min_clipped < 0);
    CHECK(c.prediction_type == LOCO_PRED_SAMPLE && c.num_train_timesteps == 1000);
    loco_scheduler_config_release(&c);
}

TEST(config_from_json_errors_name_the_key) {
    static const struct {
        const char *json, *key;
    } bad[] = {
        {"{\"beta_schedule\": \"cosine\"}", "beta_schedule"},
        {"{\"beta_schedule\": 3}", "beta_schedule"},
        {"{\"num_train_timesteps\": \"1000\"}", "num_train_timesteps"},
        {"{\"num_train_timesteps\": 0}", "num_train_timesteps"},
        {"{\"num_train_timesteps\": 10.5}", "num_train_timesteps"},
        {"{\"beta_start\": \"small\"}", "beta_start"},
        {"{\"beta_end\": 1.5}", "beta_end"},
        {"{\"steps_offset\": -1}", "steps_offset"},
        {"{\"clip_sample\": 1}", "clip_sample"},
        {"{\"clip_sample_range\": 0}", "clip_sample_range"},
        {"{\"prediction_type\": \"flow_prediction\"}", "prediction_type"},
        {"{\"timestep_spacing\": \"default\"}", "timestep_spacing"},
        {"{\"timestep_spacing\": \"uniform\"}", "timestep_spacing"},
        {"{\"variance_type\": \"big\"}", "variance_type"},
        {"{\"solver_order\": 4}", "solver_order"},
        {"{\"algorithm_type\": \"unipc\"}", "algorithm_type"},
        {"{\"solver_type\": \"rk4\"}", "solver_type"},
        {"{\"final_sigmas_type\": \"one\"}", "final_sigmas_type"},
        {"{\"interpolation_type\": \"cubic\"}", "interpolation_type"},
        {"{\"dynamic_thresholding_ratio\": 2}", "dynamic_thresholding_ratio"},
        {"{\"sample_max_value\": -1}", "sample_max_value"},
        {"{\"sigma_min\": -0.1}", "sigma_min"},
        {"{\"lambda_min_clipped\": \"low\"}", "lambda_min_clipped"},
        {"{\"trained_betas\": [0.1, 0.2]}", "trained_betas"},
        {"{\"trained_betas\": [0.1, \"x\"], \"num_train_timesteps\": 2}", "trained_betas"},
        {"{\"_class_name\": 7}", "_class_name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        loco_scheduler_config c;
        loco_err err;
        loco_err_clear(&err);
        loco_status st = parse_config(bad[i].json, &c, &err);
        CHECK_MSG(st == LOCO_EINVAL, "%s was accepted", bad[i].json);
        CHECK_MSG(strstr(err.msg, bad[i].key) != NULL, "%s: message '%s' does not name %s", bad[i].json, err.msg,
                  bad[i].key);
        CHECK(c.trained_betas == NULL); /* nothing owned after an error */
    }
    loco_scheduler_config c;
    loco_err err;
    CHECK(parse_config("[1, 2]", &c, &err) == LOCO_EINVAL);
}

TEST(trained_betas_give_the_tables) {
    loco_scheduler_config c;
    loco_err err;
    CHECK_MSG(parse_config("{\"trained_betas\": [0.1, 0.2, 0.3, 0.4], \"num_train_timesteps\": 4}", &c, &err) ==
                  LOCO_OK,
              "%s", err.msg);
    CHECK(c.trained_betas_len == 4 && c.trained_betas[1] == 0.2f);
    loco_backend *be = cpu_backend();
    loco_scheduler *s = NULL;
    CHECK(be && loco_scheduler_create(LOCO_SCHED_DDIM, &c, 2, be, &s, &err) == LOCO_OK);
    loco_scheduler_config_release(&c);
    int n;
    const float *ac = loco_scheduler_alphas_cumprod(s, &n);
    /* cumprod(1 - b) accumulated in double, rounded per entry (torch's CPU cumprod) */
    double acc = 1;
    for (int i = 0; i < 4; i++) {
        acc *= (double)(1.0f - (float)(0.1 * (i + 1)));
        CHECK(ac[i] == (float)acc);
    }
    /* leading, 2 steps of 4: [2, 0] */
    CHECK(n == 4 && loco_scheduler_num_calls(s) == 2 && loco_scheduler_timestep(s, 0) == 2 &&
          loco_scheduler_timestep(s, 1) == 0);
    loco_scheduler_destroy(s);
    loco_backend_destroy(be);
}
