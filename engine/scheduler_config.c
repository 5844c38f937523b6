/* scheduler_config.c: scheduler enums (string round trips) and loco_scheduler_config, including
 * reading a diffusers scheduler_config.json. */
#include "scheduler.h"
#include "json_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- string tables ------------------------------------------------------------------------- */

static int name_index(const char *const *names, int count, const char *name) {
    if (!name) return -1;
    for (int i = 0; i < count; i++)
        if (names[i] && strcmp(names[i], name) == 0) return i;
    return -1;
}

static const char *const kind_names[LOCO_SCHED_KIND_COUNT] = {
    [LOCO_SCHED_PNDM] = "pndm",         [LOCO_SCHED_DDIM] = "ddim",         [LOCO_SCHED_EULER] = "euler",
    [LOCO_SCHED_EULER_A] = "euler_a",   [LOCO_SCHED_DPMPP_2M] = "dpmpp_2m", [LOCO_SCHED_DDPM] = "ddpm",
};
static const char *const kind_class_names[LOCO_SCHED_KIND_COUNT] = {
    [LOCO_SCHED_PNDM] = "PNDMScheduler",
    [LOCO_SCHED_DDIM] = "DDIMScheduler",
    [LOCO_SCHED_EULER] = "EulerDiscreteScheduler",
    [LOCO_SCHED_EULER_A] = "EulerAncestralDiscreteScheduler",
    [LOCO_SCHED_DPMPP_2M] = "DPMSolverMultistepScheduler",
    [LOCO_SCHED_DDPM] = "DDPMScheduler",
};

const char *loco_scheduler_kind_name(loco_scheduler_kind k) {
    return (unsigned)k < LOCO_SCHED_KIND_COUNT ? kind_names[k] : "?";
}
const char *loco_scheduler_kind_class_name(loco_scheduler_kind k) {
    return (unsigned)k < LOCO_SCHED_KIND_COUNT ? kind_class_names[k] : "?";
}
int loco_scheduler_kind_from_name(const char *name, loco_scheduler_kind *out) {
    int i = name_index(kind_names, LOCO_SCHED_KIND_COUNT, name);
    if (i < 0) i = name_index(kind_class_names, LOCO_SCHED_KIND_COUNT, name);
    if (i < 0) return -1;
    *out = (loco_scheduler_kind)i;
    return 0;
}

int loco_scheduler_kind_takes_karras(loco_scheduler_kind k) { return k == LOCO_SCHED_EULER || k == LOCO_SCHED_DPMPP_2M; }

/* One round-trip pair per enum; `alias`/`alias_to` handle the spellings diffusers itself maps
 * onto another value. */
#define ENUM_STRINGS(prefix, type, count, ...)                                               \
    static const char *const prefix##_names[count] = {__VA_ARGS__};                          \
    const char *prefix##_name(type v) { return (unsigned)v < count ? prefix##_names[v] : "?"; } \
    static int prefix##_lookup(const char *name, type *out) {                                \
        int i = name_index(prefix##_names, count, name);                                     \
        if (i < 0) return -1;                                                                \
        *out = (type)i;                                                                      \
        return 0;                                                                            \
    }

ENUM_STRINGS(loco_beta_schedule, loco_beta_schedule, LOCO_BETA_SCHEDULE_COUNT, "linear", "scaled_linear",
             "squaredcos_cap_v2")
ENUM_STRINGS(loco_prediction_type, loco_prediction_type, LOCO_PRED_COUNT, "epsilon", "v_prediction", "sample")
ENUM_STRINGS(loco_timestep_spacing, loco_timestep_spacing, LOCO_SPACING_COUNT, "default", "leading", "trailing",
             "linspace")
ENUM_STRINGS(loco_variance_type, loco_variance_type, LOCO_VARIANCE_COUNT, "default", "fixed_small",
             "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
ENUM_STRINGS(loco_interpolation_type, loco_interpolation_type, LOCO_INTERP_COUNT, "linear", "log_linear")
ENUM_STRINGS(loco_final_sigmas_type, loco_final_sigmas_type, LOCO_FINAL_SIGMA_COUNT, "zero", "sigma_min")
ENUM_STRINGS(loco_dpm_algorithm, loco_dpm_algorithm, LOCO_DPM_ALGORITHM_COUNT, "dpmsolver++", "dpmsolver",
             "sde-dpmsolver++", "sde-dpmsolver")
ENUM_STRINGS(loco_dpm_solver_type, loco_dpm_solver_type, LOCO_DPM_SOLVER_TYPE_COUNT, "midpoint", "heun")
ENUM_STRINGS(loco_timestep_type, loco_timestep_type, LOCO_TIMESTEP_TYPE_COUNT, "discrete", "continuous")

int loco_beta_schedule_from_name(const char *name, loco_beta_schedule *out) {
    return loco_beta_schedule_lookup(name, out);
}
int loco_prediction_type_from_name(const char *name, loco_prediction_type *out) {
    /* Euler keeps "original_sample" for backwards compatibility; it means "sample". */
    if (name && strcmp(name, "original_sample") == 0) {
        *out = LOCO_PRED_SAMPLE;
        return 0;
    }
    return loco_prediction_type_lookup(name, out);
}
int loco_timestep_spacing_from_name(const char *name, loco_timestep_spacing *out) {
    return loco_timestep_spacing_lookup(name, out);
}
int loco_variance_type_from_name(const char *name, loco_variance_type *out) {
    return loco_variance_type_lookup(name, out);
}
int loco_interpolation_type_from_name(const char *name, loco_interpolation_type *out) {
    return loco_interpolation_type_lookup(name, out);
}
int loco_final_sigmas_type_from_name(const char *name, loco_final_sigmas_type *out) {
    return loco_final_sigmas_type_lookup(name, out);
}
int loco_dpm_algorithm_from_name(const char *name, loco_dpm_algorithm *out) {
    /* DPMSolverMultistepScheduler re-registers "deis" as "dpmsolver++". */
    if (name && strcmp(name, "deis") == 0) {
        *out = LOCO_DPM_DPMSOLVER_PP;
        return 0;
    }
    return loco_dpm_algorithm_lookup(name, out);
}
int loco_dpm_solver_type_from_name(const char *name, loco_dpm_solver_type *out) {
    /* UniPC's solver types are mapped to midpoint by DPMSolverMultistepScheduler. */
    if (name && (strcmp(name, "logrho") == 0 || strcmp(name, "bh1") == 0 || strcmp(name, "bh2") == 0)) {
        *out = LOCO_DPM_MIDPOINT;
        return 0;
    }
    return loco_dpm_solver_type_lookup(name, out);
}
int loco_timestep_type_from_name(const char *name, loco_timestep_type *out) {
    return loco_timestep_type_lookup(name, out);
}

/* ---- config ---------------------------------------------------------------------------------- */

void loco_scheduler_config_init(loco_scheduler_config *c) {
    memset(c, 0, sizeof *c);
    c->has_class_kind = 0;
    c->class_kind = LOCO_SCHED_PNDM;
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = LOCO_BETA_LINEAR;
    c->prediction_type = LOCO_PRED_EPSILON;
    c->timestep_spacing = LOCO_SPACING_DEFAULT;
    c->steps_offset = 0;
    c->set_alpha_to_one = -1;
    c->skip_prk_steps = 0;
    c->clip_sample = -1;
    c->clip_sample_range = 1.0;
    c->thresholding = 0;
    c->dynamic_thresholding_ratio = 0.995;
    c->sample_max_value = 1.0;
    c->eta = 0.0;
    c->variance_type = LOCO_VARIANCE_DEFAULT;
    c->final_sigmas_type = LOCO_FINAL_SIGMA_ZERO;
    c->interpolation_type = LOCO_INTERP_LINEAR;
    c->timestep_type = LOCO_TIMESTEP_DISCRETE;
    c->solver_order = 2;
    c->algorithm_type = LOCO_DPM_DPMSOLVER_PP;
    c->solver_type = LOCO_DPM_MIDPOINT;
    c->lower_order_final = 1;
    c->euler_at_final = 0;
    c->lambda_min_clipped = -INFINITY;
}

void loco_scheduler_config_release(loco_scheduler_config *c) {
    if (!c) return;
    free(c->trained_betas);
    c->trained_betas = NULL;
    c->trained_betas_len = 0;
}

loco_status loco_scheduler_config_set_trained_betas(loco_scheduler_config *c, const float *betas, int n,
                                                    loco_err *err) {
    loco_scheduler_config_release(c);
    if (!betas || n <= 0) return LOCO_OK;
    c->trained_betas = malloc((size_t)n * sizeof(float));
    if (!c->trained_betas)
        return loco_err_set(err, LOCO_ENOMEM, "scheduler config: no memory for %d trained_betas", n);
    memcpy(c->trained_betas, betas, (size_t)n * sizeof(float));
    c->trained_betas_len = n;
    return LOCO_OK;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

#define CFG_PREFIX "scheduler config: key '%s'"

/* Each reader leaves *out alone when the key is absent or null (diffusers' None = the default). */

static loco_status get_bool(const json_t *j, const char *key, int *out, loco_err *err) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return LOCO_OK;
    if (!json_is_boolean(v)) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be true or false", key);
    *out = json_is_true(v) ? 1 : 0;
    return LOCO_OK;
}

static loco_status get_number(const json_t *j, const char *key, double *out, int *present, loco_err *err) {
    const json_t *v = json_object_get(j, key);
    if (present) *present = 0;
    if (!v || json_is_null(v)) return LOCO_OK;
    if (!json_is_number(v)) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be a number", key);
    double d = json_number_value(v);
    if (!isfinite(d)) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be finite", key);
    *out = d;
    if (present) *present = 1;
    return LOCO_OK;
}

static loco_status get_int(const json_t *j, const char *key, int lo, int hi, int *out, loco_err *err) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return LOCO_OK;
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)))
        d = json_real_value(v); /* 1000.0 written by a float-happy tool */
    else
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be an integer", key);
    if (d < lo || d > hi)
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be in [%d, %d] (got %.0f)", key, lo, hi, d);
    *out = (int)d;
    return LOCO_OK;
}

typedef int (*from_name_fn)(const char *, void *);

static loco_status get_enum(const json_t *j, const char *key, from_name_fn parse, void *out, const char *allowed,
                            loco_err *err) {
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) return LOCO_OK;
    if (!json_is_string(v)) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be a string: one of %s", key, allowed);
    if (parse(json_string_value(v), out) != 0)
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be one of %s (got '%.100s')", key, allowed,
                            json_string_value(v));
    return LOCO_OK;
}

/* Wrappers with the generic signature (the enums differ in type only). */
#define PARSER(fn, type)                                                      \
    static int fn##_any(const char *name, void *out) { return fn(name, (type *)out); }
PARSER(loco_beta_schedule_from_name, loco_beta_schedule)
PARSER(loco_prediction_type_from_name, loco_prediction_type)
PARSER(loco_interpolation_type_from_name, loco_interpolation_type)
PARSER(loco_final_sigmas_type_from_name, loco_final_sigmas_type)
PARSER(loco_dpm_algorithm_from_name, loco_dpm_algorithm)
PARSER(loco_dpm_solver_type_from_name, loco_dpm_solver_type)
PARSER(loco_timestep_type_from_name, loco_timestep_type)

/* "default" is loco's own "not given" marker, never a value a config may carry. */
static int spacing_from_config(const char *name, void *out) {
    loco_timestep_spacing v;
    if (loco_timestep_spacing_from_name(name, &v) != 0 || v == LOCO_SPACING_DEFAULT) return -1;
    *(loco_timestep_spacing *)out = v;
    return 0;
}
static int variance_from_config(const char *name, void *out) {
    loco_variance_type v;
    if (loco_variance_type_from_name(name, &v) != 0 || v == LOCO_VARIANCE_DEFAULT) return -1;
    *(loco_variance_type *)out = v;
    return 0;
}

static loco_status get_trained_betas(const json_t *j, loco_scheduler_config *c, loco_err *err) {
    const json_t *v = json_object_get(j, "trained_betas");
    if (!v || json_is_null(v)) return LOCO_OK;
    if (!json_is_array(v) || json_array_size(v) == 0)
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be null or a non-empty list of numbers",
                            "trained_betas");
    size_t n = json_array_size(v);
    if (n > 1000000) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " has too many values (%zu)", "trained_betas", n);
    float *b = malloc(n * sizeof(float));
    if (!b) return loco_err_set(err, LOCO_ENOMEM, "scheduler config: no memory for trained_betas");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        double d = json_is_number(e) ? json_number_value(e) : NAN;
        if (!(d >= 0.0 && d < 1.0)) {
            free(b);
            return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " value %zu must be a number in [0, 1)", "trained_betas", i);
        }
        b[i] = (float)d; /* torch.tensor(trained_betas, dtype=float32) rounds each value */
    }
    free(c->trained_betas);
    c->trained_betas = b;
    c->trained_betas_len = (int)n;
    return LOCO_OK;
}

static loco_status get_lambda_min_clipped(const json_t *j, double *out, loco_err *err) {
    const json_t *v = json_object_get(j, "lambda_min_clipped");
    if (!v || json_is_null(v)) return LOCO_OK;
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return LOCO_OK;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "-inf") == 0 || strcmp(s, "-Infinity") == 0) {
            *out = -INFINITY;
            return LOCO_OK;
        }
    }
    return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be a number or \"-inf\"", "lambda_min_clipped");
}

static loco_status parse_all(const json_t *j, loco_scheduler_config *c, loco_err *err) {
    loco_status st;
#define TRY(x)                      \
    do {                            \
        if ((st = (x)) != LOCO_OK)  \
            return st;              \
    } while (0)
    const json_t *cls = json_object_get(j, "_class_name");
    if (cls && !json_is_null(cls)) {
        if (!json_is_string(cls)) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be a string", "_class_name");
        snprintf(c->class_name, sizeof c->class_name, "%s", json_string_value(cls));
        loco_scheduler_kind k;
        if (loco_scheduler_kind_from_name(c->class_name, &k) == 0) {
            c->has_class_kind = 1;
            c->class_kind = k;
        }
    }
    TRY(get_int(j, "num_train_timesteps", 1, 1000000, &c->num_train_timesteps, err));
    int present = 0;
    TRY(get_number(j, "beta_start", &c->beta_start, NULL, err));
    TRY(get_number(j, "beta_end", &c->beta_end, NULL, err));
    if (c->beta_start < 0 || c->beta_start >= 1)
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be in [0, 1) (got %g)", "beta_start", c->beta_start);
    if (c->beta_end < 0 || c->beta_end >= 1)
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be in [0, 1) (got %g)", "beta_end", c->beta_end);
    TRY(get_enum(j, "beta_schedule", loco_beta_schedule_from_name_any, &c->beta_schedule,
                 "linear, scaled_linear, squaredcos_cap_v2", err));
    TRY(get_trained_betas(j, c, err));
    TRY(get_bool(j, "rescale_betas_zero_snr", &c->rescale_betas_zero_snr, err));
    TRY(get_enum(j, "prediction_type", loco_prediction_type_from_name_any, &c->prediction_type,
                 "epsilon, v_prediction, sample", err));
    TRY(get_enum(j, "timestep_spacing", spacing_from_config, &c->timestep_spacing, "leading, trailing, linspace", err));
    TRY(get_int(j, "steps_offset", 0, 1000000, &c->steps_offset, err));
    TRY(get_bool(j, "set_alpha_to_one", &c->set_alpha_to_one, err));
    TRY(get_bool(j, "skip_prk_steps", &c->skip_prk_steps, err));
    TRY(get_bool(j, "clip_sample", &c->clip_sample, err));
    TRY(get_number(j, "clip_sample_range", &c->clip_sample_range, NULL, err));
    if (!(c->clip_sample_range > 0))
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be > 0 (got %g)", "clip_sample_range",
                            c->clip_sample_range);
    TRY(get_bool(j, "thresholding", &c->thresholding, err));
    TRY(get_number(j, "dynamic_thresholding_ratio", &c->dynamic_thresholding_ratio, NULL, err));
    if (!(c->dynamic_thresholding_ratio >= 0 && c->dynamic_thresholding_ratio <= 1))
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be in [0, 1] (got %g)", "dynamic_thresholding_ratio",
                            c->dynamic_thresholding_ratio);
    TRY(get_number(j, "sample_max_value", &c->sample_max_value, NULL, err));
    if (!(c->sample_max_value > 0))
        return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be > 0 (got %g)", "sample_max_value",
                            c->sample_max_value);
    TRY(get_enum(j, "variance_type", variance_from_config, &c->variance_type,
                 "fixed_small, fixed_small_log, fixed_large, fixed_large_log, learned, learned_range", err));
    TRY(get_bool(j, "use_karras_sigmas", &c->use_karras_sigmas, err));
    TRY(get_bool(j, "use_exponential_sigmas", &c->use_exponential_sigmas, err));
    TRY(get_bool(j, "use_beta_sigmas", &c->use_beta_sigmas, err));
    TRY(get_bool(j, "use_flow_sigmas", &c->use_flow_sigmas, err));
    TRY(get_enum(j, "final_sigmas_type", loco_final_sigmas_type_from_name_any, &c->final_sigmas_type,
                 "zero, sigma_min", err));
    TRY(get_enum(j, "interpolation_type", loco_interpolation_type_from_name_any, &c->interpolation_type,
                 "linear, log_linear", err));
    TRY(get_enum(j, "timestep_type", loco_timestep_type_from_name_any, &c->timestep_type, "discrete, continuous",
                 err));
    TRY(get_number(j, "sigma_min", &c->sigma_min, &present, err));
    if (present) {
        if (!(c->sigma_min > 0)) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be > 0", "sigma_min");
        c->has_sigma_min = 1;
    }
    TRY(get_number(j, "sigma_max", &c->sigma_max, &present, err));
    if (present) {
        if (!(c->sigma_max > 0)) return loco_err_set(err, LOCO_EINVAL, CFG_PREFIX " must be > 0", "sigma_max");
        c->has_sigma_max = 1;
    }
    TRY(get_int(j, "solver_order", 1, 3, &c->solver_order, err));
    TRY(get_enum(j, "algorithm_type", loco_dpm_algorithm_from_name_any, &c->algorithm_type,
                 "dpmsolver++, dpmsolver, sde-dpmsolver++, sde-dpmsolver", err));
    TRY(get_enum(j, "solver_type", loco_dpm_solver_type_from_name_any, &c->solver_type, "midpoint, heun", err));
    TRY(get_bool(j, "lower_order_final", &c->lower_order_final, err));
    TRY(get_bool(j, "euler_at_final", &c->euler_at_final, err));
    TRY(get_bool(j, "use_lu_lambdas", &c->use_lu_lambdas, err));
    TRY(get_lambda_min_clipped(j, &c->lambda_min_clipped, err));
#undef TRY
    return LOCO_OK;
}

loco_status loco_scheduler_config_from_json(const json_t *j, loco_scheduler_config *c, loco_err *err) {
    loco_scheduler_config_init(c);
    if (!j || !json_is_object(j))
        return loco_err_set(err, LOCO_EINVAL, "scheduler config: expected a JSON object");
    loco_status st = parse_all(j, c, err);
    if (st != LOCO_OK) {
        loco_scheduler_config_release(c);
        return st;
    }
    if (c->trained_betas && c->trained_betas_len != c->num_train_timesteps) {
        int n = c->trained_betas_len;
        loco_scheduler_config_release(c);
        return loco_err_set(err, LOCO_EINVAL,
                            "scheduler config: key 'trained_betas' has %d values but num_train_timesteps is %d", n,
                            c->num_train_timesteps);
    }
    return LOCO_OK;
}

loco_status loco_scheduler_config_from_text(const char *text, size_t len, const char *source,
                                            loco_scheduler_config *cfg, loco_err *err) {
    loco_scheduler_config_init(cfg);
    const char *src = source ? source : "scheduler config";
    char *fixed = loco_json_quote_python_floats(text, len);
    if (!fixed) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", src);
    json_error_t je;
    json_t *j = json_loads(fixed, 0, &je);
    free(fixed);
    if (!j) return loco_err_set(err, LOCO_EFORMAT, "%s: line %d: %s", src, je.line, je.text);
    loco_status st = loco_scheduler_config_from_json(j, cfg, err);
    json_decref(j);
    if (st != LOCO_OK && source) loco_err_prefix(err, "%s", source);
    return st;
}
