/* test_scheduler_config.c: scheduler names (string round trips) and loco_scheduler_config read from
 * diffusers' scheduler_config.json: defaults, the kind-dependent "not given" values, nulls, the
 * strings diffusers writes, errors that name the key, and from_config-style swaps between kinds. */
#include <jansson.h>

#include "backend.h"
#include "loco_test.h"
#include "scheduler.h"

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

TEST(kind_names_round_trip) {
    for (int k = 0; k < LOCO_SCHED_KIND_COUNT; k++) {
        loco_scheduler_kind a, b;
        CHECK(loco_scheduler_kind_from_name(loco_scheduler_kind_name((loco_scheduler_kind)k), &a) == 0 && (int)a == k);
        CHECK(loco_scheduler_kind_from_name(loco_scheduler_kind_class_name((loco_scheduler_kind)k), &b) == 0 && (int)b == k);
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


/* scheduler_config.json as diffusers' save_config writes it: Python's json emits bare -Infinity. */
TEST(config_from_text_takes_python_floats) {
    static const char text[] =
        "{\"_class_name\": \"DPMSolverMultistepScheduler\", \"lambda_min_clipped\": -Infinity,"
        " \"note\": \"a string with -Infinity and NaN inside\", \"solver_order\": 3}";
    loco_scheduler_config c;
    loco_err err;
    CHECK_MSG(loco_scheduler_config_from_text(text, sizeof text - 1, "dpm/scheduler_config.json", &c, &err) ==
                  LOCO_OK,
              "%s", err.msg);
    CHECK(c.has_class_kind && c.class_kind == LOCO_SCHED_DPMPP_2M && c.solver_order == 3);
    CHECK(isinf(c.lambda_min_clipped) && c.lambda_min_clipped < 0);
    loco_scheduler_config_release(&c);
    /* +Infinity or NaN where a number is needed: an error naming the key and the file */
    static const char bad[] = "{\"beta_start\": NaN}";
    CHECK(loco_scheduler_config_from_text(bad, sizeof bad - 1, "x/scheduler_config.json", &c, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "beta_start") && strstr(err.msg, "x/scheduler_config.json"));
    static const char broken[] = "{\"beta_start\": 0.1,";
    CHECK(loco_scheduler_config_from_text(broken, sizeof broken - 1, NULL, &c, &err) == LOCO_EFORMAT);
}
