/* scheduler.h: the diffusers noise schedulers, step for step.
 *
 * Kinds: PNDM (PLMS, with or without the Runge-Kutta warm-up), DDIM, EulerDiscrete,
 * EulerAncestralDiscrete, DPMSolverMultistep (DPM-Solver++ 2M and its relatives) and DDPM.
 * Each follows the diffusers (0.42) class of the same name: the same timestep list, the same
 * sigma table, the same number of model calls, and the same update, so a fixture recorded from
 * diffusers replays here within fp32 rounding.
 *
 * How it is computed: every scalar (alphas_cumprod, sigmas, the solver coefficients) is computed
 * on the host the way diffusers computes it (fp32 where diffusers uses fp32 tensors, float64 where
 * it uses numpy), and the tensor work is a loco_lincomb or two per step on the backend (plus
 * copies into the history), so the same scheduler runs on the CPU and the GPU. History (PNDM's stored model outputs, DPM-Solver's
 * previous data predictions) lives in backend tensors owned by the scheduler. The rare nonlinear
 * options (clip_sample, dynamic thresholding, DDPM learned_range variance) round-trip through the
 * host, which is cheap at the sizes they are used at (DeepFloyd IF stage I is 64x64x3).
 *
 * Use:
 *     loco_scheduler_config cfg;
 *     loco_scheduler_config_from_json(json, &cfg, &err);     // the model's scheduler_config.json
 *     loco_scheduler_create(LOCO_SCHED_EULER, &cfg, 30, be, &s, &err);
 *     loco_scheduler_config_release(&cfg);
 *     x *= loco_scheduler_init_noise_sigma(s);
 *     for (int i = 0; i < loco_scheduler_num_calls(s); i++) {
 *         loco_scheduler_scale_model_input(s, i, &x, &in, &err);
 *         eps = unet(in, loco_scheduler_timestep(s, i));
 *         loco_scheduler_step(s, i, &eps, &x, rng, &err);
 *     }
 */
#ifndef LOCO_SCHEDULER_H
#define LOCO_SCHEDULER_H

#include <jansson.h>

#include "backend.h"
#include "base.h"
#include "torch_rng.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- enums, each with a string round trip (the spelling diffusers writes in its configs) ------ */

typedef enum loco_scheduler_kind {
    LOCO_SCHED_PNDM = 0, /* "pndm",     PNDMScheduler */
    LOCO_SCHED_DDIM,     /* "ddim",     DDIMScheduler */
    LOCO_SCHED_EULER,    /* "euler",    EulerDiscreteScheduler */
    LOCO_SCHED_EULER_A,  /* "euler_a",  EulerAncestralDiscreteScheduler */
    LOCO_SCHED_DPMPP_2M, /* "dpmpp_2m", DPMSolverMultistepScheduler (any order/algorithm the config asks) */
    LOCO_SCHED_DDPM,     /* "ddpm",     DDPMScheduler */
    LOCO_SCHED_KIND_COUNT
} loco_scheduler_kind;
const char *loco_scheduler_kind_name(loco_scheduler_kind k);       /* short name */
const char *loco_scheduler_kind_class_name(loco_scheduler_kind k); /* "PNDMScheduler", ... */
/* Accepts the short names and the diffusers class names. 0 on success, -1 unknown. */
int loco_scheduler_kind_from_name(const char *name, loco_scheduler_kind *out);
/* Does the kind's diffusers class take use_karras_sigmas? EulerDiscreteScheduler and
 * DPMSolverMultistepScheduler do; PNDM, DDIM, DDPM and EulerAncestralDiscrete have no such
 * option (loco_scheduler_create drops it for them, as from_config does). */
int loco_scheduler_kind_takes_karras(loco_scheduler_kind k);

typedef enum loco_beta_schedule {
    LOCO_BETA_LINEAR = 0,        /* "linear": torch.linspace(beta_start, beta_end) in fp32 */
    LOCO_BETA_SCALED_LINEAR,     /* "scaled_linear": linspace(sqrt(start), sqrt(end))**2 in fp32 */
    LOCO_BETA_SQUAREDCOS_CAP_V2, /* "squaredcos_cap_v2": the Glide cosine schedule (float64, then fp32) */
    LOCO_BETA_SCHEDULE_COUNT
} loco_beta_schedule;
const char *loco_beta_schedule_name(loco_beta_schedule v);
int loco_beta_schedule_from_name(const char *name, loco_beta_schedule *out);

typedef enum loco_prediction_type {
    LOCO_PRED_EPSILON = 0, /* "epsilon" */
    LOCO_PRED_V,           /* "v_prediction" */
    LOCO_PRED_SAMPLE,      /* "sample" (also read from the legacy "original_sample") */
    LOCO_PRED_COUNT
} loco_prediction_type;
const char *loco_prediction_type_name(loco_prediction_type v);
int loco_prediction_type_from_name(const char *name, loco_prediction_type *out);

/* Kind-dependent defaults: diffusers' from_config gives a key the JSON does not carry the
 * target class's own default, and the classes disagree (PNDM/DDIM/DDPM default to "leading",
 * the Euler and DPM-Solver classes to "linspace"). *_DEFAULT keeps that "not given" state until
 * loco_scheduler_create knows the kind. */
typedef enum loco_timestep_spacing {
    LOCO_SPACING_DEFAULT = 0, /* the kind's default */
    LOCO_SPACING_LEADING,     /* "leading" */
    LOCO_SPACING_TRAILING,    /* "trailing" */
    LOCO_SPACING_LINSPACE,    /* "linspace" */
    LOCO_SPACING_COUNT
} loco_timestep_spacing;
const char *loco_timestep_spacing_name(loco_timestep_spacing v); /* "default" for LOCO_SPACING_DEFAULT */
int loco_timestep_spacing_from_name(const char *name, loco_timestep_spacing *out);

typedef enum loco_variance_type {
    LOCO_VARIANCE_DEFAULT = 0,     /* not given (null): DDPM -> fixed_small, DPM-Solver -> none */
    LOCO_VARIANCE_FIXED_SMALL,     /* "fixed_small" */
    LOCO_VARIANCE_FIXED_SMALL_LOG, /* "fixed_small_log" */
    LOCO_VARIANCE_FIXED_LARGE,     /* "fixed_large" */
    LOCO_VARIANCE_FIXED_LARGE_LOG, /* "fixed_large_log" */
    LOCO_VARIANCE_LEARNED,         /* "learned": the model outputs 2C channels, the second half is the variance */
    LOCO_VARIANCE_LEARNED_RANGE,   /* "learned_range": second half interpolates log beta_t .. log beta~_t (IF) */
    LOCO_VARIANCE_COUNT
} loco_variance_type;
const char *loco_variance_type_name(loco_variance_type v);
int loco_variance_type_from_name(const char *name, loco_variance_type *out);

typedef enum loco_interpolation_type {
    LOCO_INTERP_LINEAR = 0, /* "linear" (Euler) */
    LOCO_INTERP_LOG_LINEAR, /* "log_linear" */
    LOCO_INTERP_COUNT
} loco_interpolation_type;
const char *loco_interpolation_type_name(loco_interpolation_type v);
int loco_interpolation_type_from_name(const char *name, loco_interpolation_type *out);

typedef enum loco_final_sigmas_type {
    LOCO_FINAL_SIGMA_ZERO = 0, /* "zero" */
    LOCO_FINAL_SIGMA_MIN,      /* "sigma_min" */
    LOCO_FINAL_SIGMA_COUNT
} loco_final_sigmas_type;
const char *loco_final_sigmas_type_name(loco_final_sigmas_type v);
int loco_final_sigmas_type_from_name(const char *name, loco_final_sigmas_type *out);

typedef enum loco_dpm_algorithm {
    LOCO_DPM_DPMSOLVER_PP = 0, /* "dpmsolver++" (data prediction; "deis" is read as this, as diffusers does) */
    LOCO_DPM_DPMSOLVER,        /* "dpmsolver" (noise prediction) */
    LOCO_DPM_SDE_DPMSOLVER_PP, /* "sde-dpmsolver++" (draws noise every step) */
    LOCO_DPM_SDE_DPMSOLVER,    /* "sde-dpmsolver" */
    LOCO_DPM_ALGORITHM_COUNT
} loco_dpm_algorithm;
const char *loco_dpm_algorithm_name(loco_dpm_algorithm v);
int loco_dpm_algorithm_from_name(const char *name, loco_dpm_algorithm *out);

typedef enum loco_dpm_solver_type {
    LOCO_DPM_MIDPOINT = 0, /* "midpoint" ("logrho", "bh1", "bh2" are read as this, as diffusers does) */
    LOCO_DPM_HEUN,         /* "heun" */
    LOCO_DPM_SOLVER_TYPE_COUNT
} loco_dpm_solver_type;
const char *loco_dpm_solver_type_name(loco_dpm_solver_type v);
int loco_dpm_solver_type_from_name(const char *name, loco_dpm_solver_type *out);

typedef enum loco_timestep_type {
    LOCO_TIMESTEP_DISCRETE = 0, /* "discrete" */
    LOCO_TIMESTEP_CONTINUOUS,   /* "continuous": with v_prediction, Euler passes 0.25*log(sigma) as t */
    LOCO_TIMESTEP_TYPE_COUNT
} loco_timestep_type;
const char *loco_timestep_type_name(loco_timestep_type v);
int loco_timestep_type_from_name(const char *name, loco_timestep_type *out);

/* ---- configuration ------------------------------------------------------------------------- */

/* The union of the keys the six diffusers classes read. A kind uses the keys its class has and
 * ignores the rest, as diffusers' from_config does. Fields with a "-1" or *_DEFAULT value take
 * the kind's own default at loco_scheduler_create. */
typedef struct loco_scheduler_config {
    /* From "_class_name" when the JSON names a class loco implements (has_class_kind = 1);
     * class_name keeps the raw name either way ("" when absent). */
    int has_class_kind;
    loco_scheduler_kind class_kind;
    char class_name[64];

    /* the noise schedule (all kinds) */
    int num_train_timesteps;          /* 1000 */
    double beta_start;                /* 0.0001 */
    double beta_end;                  /* 0.02 */
    loco_beta_schedule beta_schedule; /* linear */
    float *trained_betas;             /* NULL, or num_train_timesteps betas owned by the config */
    int trained_betas_len;
    int rescale_betas_zero_snr; /* 0 (DDIM, DDPM, Euler, Euler a, DPM) */

    loco_prediction_type prediction_type; /* epsilon */
    loco_timestep_spacing timestep_spacing; /* DEFAULT: leading (PNDM, DDIM, DDPM), linspace (Euler, Euler a, DPM) */
    int steps_offset;                       /* 0 */

    /* PNDM, DDIM */
    int set_alpha_to_one; /* -1: PNDM 0, DDIM 1 */
    int skip_prk_steps;   /* 0 (PNDM) */

    /* DDIM, DDPM (clip/threshold the predicted x0); DPM-Solver (threshold) */
    int clip_sample;                   /* -1: DDIM and DDPM 1 */
    double clip_sample_range;          /* 1.0 */
    int thresholding;                  /* 0 */
    double dynamic_thresholding_ratio; /* 0.995 */
    double sample_max_value;           /* 1.0 */
    double eta; /* 0.0: not a config key but the DDIM pipelines' `eta` step argument */

    /* DDPM (variance_type also DPM-Solver: learned* makes it keep only the first channels) */
    loco_variance_type variance_type; /* DEFAULT */

    /* Euler, DPM-Solver */
    int use_karras_sigmas;                    /* 0 */
    int use_exponential_sigmas;               /* 0 */
    int use_beta_sigmas;                      /* 0: unsupported (needs scipy's beta ppf) */
    int use_flow_sigmas;                      /* 0: unsupported (flow-matching models) */
    loco_final_sigmas_type final_sigmas_type; /* zero */
    /* Euler */
    loco_interpolation_type interpolation_type; /* linear */
    loco_timestep_type timestep_type;           /* discrete */
    int has_sigma_min, has_sigma_max;           /* 0: Karras/exponential range from the sigma table */
    double sigma_min, sigma_max;
    /* DPM-Solver */
    int solver_order;                  /* 2 (1..3) */
    loco_dpm_algorithm algorithm_type; /* dpmsolver++ */
    loco_dpm_solver_type solver_type;  /* midpoint */
    int lower_order_final;             /* 1 */
    int euler_at_final;                /* 0 */
    int use_lu_lambdas;                /* 0 */
    double lambda_min_clipped;         /* -inf */
} loco_scheduler_config;

/* Fill every field with its default (see the comments above). Never fails. */
void loco_scheduler_config_init(loco_scheduler_config *cfg);
/* Free what the config owns (trained_betas); the config is then back to "no trained betas".
 * Safe on an initialised config. */
void loco_scheduler_config_release(loco_scheduler_config *cfg);
/* Replace trained_betas with a copy of n values (n == 0 or betas == NULL clears them). */
loco_status loco_scheduler_config_set_trained_betas(loco_scheduler_config *cfg, const float *betas, int n,
                                                    loco_err *err);

/* Initialise cfg from a diffusers scheduler_config.json object. Unknown keys are ignored; a known
 * key with a bad type or value is LOCO_EINVAL naming the key, what it must be and what it was.
 * null means "not given" (the default), as diffusers treats None. lambda_min_clipped also takes
 * the strings "-inf"/"-Infinity" (Python's json writes -Infinity, which is not JSON). On error
 * cfg owns nothing. */
loco_status loco_scheduler_config_from_json(const json_t *scheduler_config_json, loco_scheduler_config *cfg,
                                            loco_err *err);

/* The same from the text of a scheduler_config.json as diffusers writes it, including Python's
 * bare -Infinity / Infinity / NaN tokens (read as the strings "-inf", "inf", "nan"). `source`
 * (may be NULL) prefixes error messages, e.g. the file's path. Malformed JSON is LOCO_EFORMAT. */
loco_status loco_scheduler_config_from_text(const char *text, size_t len, const char *source,
                                            loco_scheduler_config *cfg, loco_err *err);

/* ---- the scheduler --------------------------------------------------------------------------- */

typedef struct loco_scheduler loco_scheduler;

/* Build a scheduler of `kind` for num_inference_steps steps (diffusers' set_timesteps). kind may
 * differ from cfg's class: the keys the two classes share carry over. Errors: LOCO_EINVAL for
 * num_inference_steps < 1 or > num_train_timesteps or an option value the kind rejects (naming
 * the option), LOCO_EUNSUPPORTED for options loco does not implement. cfg is copied. */
loco_status loco_scheduler_create(loco_scheduler_kind kind, const loco_scheduler_config *cfg,
                                  int num_inference_steps, loco_backend *be, loco_scheduler **out, loco_err *err);
void loco_scheduler_destroy(loco_scheduler *s);
/* Forget the history, so the same schedule can run again from call 0 (tensors are kept). */
void loco_scheduler_reset(loco_scheduler *s);

loco_scheduler_kind loco_scheduler_get_kind(const loco_scheduler *s);
/* The resolved configuration (kind defaults filled in; trained_betas NULL). */
const loco_scheduler_config *loco_scheduler_get_config(const loco_scheduler *s);
int loco_scheduler_num_inference_steps(const loco_scheduler *s); /* as requested */
/* Model calls in one run: len(scheduler.timesteps). PNDM with skip_prk_steps makes N+1 (a repeated
 * timestep), PNDM with the Runge-Kutta warm-up N+9; "trailing" spacing gives N+1 for a few N
 * (numpy's arange rounding), exactly as diffusers does. */
int loco_scheduler_num_calls(const loco_scheduler *s);
/* The timestep passed to the model at call i (scheduler.timesteps[i]). Integer-valued except for
 * the Euler kinds, which pass floats ("linspace" spacing, Karras sigmas). NAN when out of range. */
float loco_scheduler_timestep(const loco_scheduler *s, int i);
const float *loco_scheduler_timesteps(const loco_scheduler *s); /* num_calls values */
/* scheduler.sigmas (Euler, Euler a, DPM-Solver; with the final sigma appended) or NULL. */
const float *loco_scheduler_sigmas(const loco_scheduler *s, int *n);
/* What the pipeline multiplies the initial noise by. */
float loco_scheduler_init_noise_sigma(const loco_scheduler *s);
/* alphas_cumprod (num_train_timesteps values, fp32 as torch computes them). */
const float *loco_scheduler_alphas_cumprod(const loco_scheduler *s, int *n);

/* out = scale_model_input(in) for call i: in/sqrt(sigma^2+1) for the Euler kinds, a copy for the
 * others. out may be in. Shapes and dtypes must match. */
loco_status loco_scheduler_scale_model_input(loco_scheduler *s, int i, const loco_tensor *in, loco_tensor *out,
                                             loco_err *err);

/* One scheduler.step for call i: sample <- prev_sample. Calls must come in order 0, 1, 2, ...
 * (the multistep kinds keep history); call loco_scheduler_reset to start over, and after a failed
 * step. Tensors live on the scheduler's backend. A step whose coefficients are not finite (where
 * diffusers would produce NaN) is LOCO_EINVAL, never NaN output. model_output has
 * sample's shape and dtype, or twice its channels (dim 1) for the learned variance types.
 * rng is the generator diffusers would be given: the ancestral kinds (Euler a, DDPM at t > 0,
 * DDIM with eta > 0, the SDE DPM-Solvers) draw one torch.randn of the sample's shape from it per
 * step, in fp32; it may be NULL for the deterministic ones. */
loco_status loco_scheduler_step(loco_scheduler *s, int i, const loco_tensor *model_output, loco_tensor *sample,
                                loco_torch_rng *rng, loco_err *err);

#ifdef __cplusplus
}
#endif
#endif
