/* scheduler_impl.h: what engine/scheduler.c shares with the per-family files
 * (engine/sched_pndm.c, sched_ddim.c, sched_ddpm.c, sched_euler.c, sched_dpm.c). Not a public header.
 *
 * scheduler.c owns the common parts: the beta/alpha tables, numpy-exact timestep spacing, the
 * sigma helpers, history and scratch tensors, noise, and the host-side nonlinear ops. A family
 * fills the timestep list (and sigmas) in `setup` and implements `step`. */
#ifndef LOCO_SCHEDULER_IMPL_H
#define LOCO_SCHEDULER_IMPL_H

#include "scheduler.h"

#define LOCO_SCHED_MAX_HIST 4

typedef struct loco_sched_family {
    /* Validate the kind's options and fill timesteps, ncalls, sigmas, init_noise_sigma, input_scale. */
    loco_status (*setup)(loco_scheduler *s, loco_err *err);
    /* One step; the caller has checked i and the tensors' shapes, and allocated the scratch. */
    loco_status (*step)(loco_scheduler *s, int i, const loco_tensor *model_output, loco_tensor *sample,
                        loco_torch_rng *rng, loco_err *err);
} loco_sched_family;

extern const loco_sched_family loco_sched_family_pndm;
extern const loco_sched_family loco_sched_family_ddim;
extern const loco_sched_family loco_sched_family_ddpm;
extern const loco_sched_family loco_sched_family_euler;   /* EulerDiscrete */
extern const loco_sched_family loco_sched_family_euler_a; /* EulerAncestralDiscrete */
extern const loco_sched_family loco_sched_family_dpm;

struct loco_scheduler {
    loco_scheduler_kind kind;
    const loco_sched_family *fam;
    loco_scheduler_config cfg; /* resolved: kind defaults filled in, trained_betas NULL */
    loco_backend *be;
    int num_inference_steps;

    int ntrain;
    float *alphas_cumprod; /* ntrain, fp32 as torch.cumprod gives it */
    float final_alpha_cumprod;

    int ncalls;
    float *timesteps;   /* ncalls */
    float *input_scale; /* ncalls divisors for scale_model_input, or NULL (identity) */
    int nsigmas;
    float *sigmas; /* nsigmas or NULL */
    float init_noise_sigma;

    /* run state */
    int next_call;
    int counter;          /* PNDM: steps taken */
    int lower_order_nums; /* DPM-Solver */
    int nhist;            /* valid entries of hist, oldest first */
    loco_tensor hist[LOCO_SCHED_MAX_HIST];
    int has_cur_sample;   /* PNDM */
    loco_tensor cur_sample;
    loco_tensor accum;    /* PNDM Runge-Kutta: the running weighted sum of model outputs */
    loco_tensor x0;       /* scratch: a materialised x0 prediction */
    loco_tensor noise;    /* scratch: noise (or a per-element noise term) */
    loco_tensor chan;     /* scratch: the first C channels of a 2C-channel model output */

    /* the shape and dtype the tensors above were allocated with */
    int shaped;
    int ndim;
    int64_t shape[LOCO_MAX_DIMS];
    loco_dtype dtype;
};

/* ---- numpy-exact helpers (float64) --------------------------------------------------------- */

/* np.linspace(start, stop, num) into out[num]. */
void loco_sched_np_linspace(double start, double stop, int num, double *out);
/* np.arange(start, stop, step) for float arguments: malloc'ed array, *n its length. */
loco_status loco_sched_np_arange(double start, double stop, double step, double **out, int *n, loco_err *err);
/* np.interp(x, arange(n), fp). */
double loco_sched_np_interp(double x, const float *fp, int n);
/* diffusers' _sigma_to_t against a float32 log-sigma table of n entries. */
double loco_sched_sigma_to_t(double sigma, const float *log_sigmas, int n);
/* diffusers' _convert_to_karras / _convert_to_exponential from (sigma_min, sigma_max), num values. */
void loco_sched_karras(double sigma_min, double sigma_max, int num, double *out);
void loco_sched_exponential(double sigma_min, double sigma_max, int num, double *out);

/* The descending timestep grid PNDM/DDIM/DDPM/Euler build for a spacing (a malloc'ed array of
 * *n doubles; PNDM reverses it):
 *   linspace: np.linspace(0, T-1, N)[::-1], rounded when round_linspace (not for Euler)
 *   leading:  (arange(N) * (T // N))[::-1] + steps_offset
 *   trailing: np.round(np.arange(T, 0, -T/N)) - 1   (N+1 values for a few N, as numpy gives) */
loco_status loco_sched_spacing(const loco_scheduler *s, loco_timestep_spacing spacing, int round_linspace,
                               double **out, int *n, loco_err *err);

/* ---- tables ---------------------------------------------------------------------------------- */

/* alphas_cumprod[t] with Python's negative-index wraparound (a "trailing" list can end in -1 and
 * diffusers then indexes alphas_cumprod[-1]); an index outside [-T, T) is an error. */
loco_status loco_sched_alpha_at(const loco_scheduler *s, double t, float *out, loco_err *err);
/* The fp32 sigma table sqrt((1 - ac) / ac), ntrain values (malloc'ed). */
float *loco_sched_sigma_table(const loco_scheduler *s);
/* Allocate s->timesteps (n values, copied from double) and s->ncalls. */
loco_status loco_sched_set_timesteps(loco_scheduler *s, const double *ts, int n, loco_err *err);

/* ---- tensors ----------------------------------------------------------------------------------- */

/* y = sum coef[i] * x[i] on the backend; coefficients given in double, applied in fp32. */
loco_status loco_sched_lincomb(loco_scheduler *s, loco_tensor *y, int n, const loco_tensor *const *x,
                               const double *coef, loco_err *err);
/* *slot = a tensor to write the newest history entry into: the oldest entries are dropped (their
 * buffers reused) so that with it at most `keep` entries are held. */
loco_status loco_sched_hist_push(loco_scheduler *s, int keep, loco_tensor **slot, loco_err *err);
/* hist[nhist - 1 - back] (back = 0: newest). */
const loco_tensor *loco_sched_hist(const loco_scheduler *s, int back);
/* Allocate a scratch tensor (s->x0, s->noise, ...) with the sample's shape and dtype if needed. */
loco_status loco_sched_scratch(loco_scheduler *s, loco_tensor *t, loco_err *err);
/* Draw one torch.randn(numel of the sample) from rng into s->noise; or into a malloc'ed host
 * buffer. `why` names who needs it, for the error when rng is NULL. */
loco_status loco_sched_draw_noise(loco_scheduler *s, loco_torch_rng *rng, const char *why, loco_err *err);
loco_status loco_sched_randn_host(loco_scheduler *s, loco_torch_rng *rng, const char *why, float **out,
                                  loco_err *err);
/* Download a tensor as f32 into a malloc'ed buffer of *n values. */
loco_status loco_sched_download(const loco_tensor *t, float **buf, int64_t *n, loco_err *err);
/* The model output's first C channels (C = the sample's channels) when it carries 2C (learned
 * variance), else model_output itself. *second (may be NULL) tells whether a second half exists. */
loco_status loco_sched_first_channels(loco_scheduler *s, const loco_tensor *model_output, const loco_tensor **out,
                                      int *has_second, loco_err *err);
/* Host-side nonlinear ops on a tensor of the sample's shape: clamp to [-r, r]; diffusers'
 * _threshold_sample (per-sample quantile of |x|, clamped to [1, sample_max_value]). */
loco_status loco_sched_clip(loco_scheduler *s, loco_tensor *t, double range, loco_err *err);
loco_status loco_sched_threshold(loco_scheduler *s, loco_tensor *t, loco_err *err);
/* clip_sample / thresholding as DDIM and DDPM apply them to x0 (thresholding first). */
loco_status loco_sched_clip_or_threshold(loco_scheduler *s, loco_tensor *x0, loco_err *err);
/* torch.quantile(v, q) (linear interpolation) of n values; sorts v in place. */
float loco_sched_quantile(float *v, int64_t n, double q);

#endif
