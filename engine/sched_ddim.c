/* sched_ddim.c: DDIMScheduler (diffusers): formula (12) of the DDIM paper with eta (0 by default,
 * deterministic), the three prediction types, clip_sample / dynamic thresholding of x0, and
 * set_alpha_to_one for the last step.
 *
 * x0 and epsilon are both linear in (sample, model_output), so without clipping the whole step is
 * one lincomb; with clipping x0 is materialised, clipped on the host, and combined after. */
#include <math.h>
#include <stdlib.h>

#include "scheduler_impl.h"

static loco_status ddim_setup(loco_scheduler *s, loco_err *err) {
    if (!(s->cfg.eta >= 0))
        return loco_err_set(err, LOCO_EINVAL, "DDIMScheduler: eta must be >= 0 (got %g)", s->cfg.eta);
    double *ts;
    int n;
    loco_status st = loco_sched_spacing(s, s->cfg.timestep_spacing, 1, &ts, &n, err);
    if (st != LOCO_OK) return st;
    st = loco_sched_set_timesteps(s, ts, n, err);
    free(ts);
    return st;
}

/* x0 = ax*sample + am*model_output and eps = ex*sample + em*model_output for a prediction type,
 * from fp32 sqrt(a_t), sqrt(1 - a_t). */
static void x0_eps_coef(loco_prediction_type p, float sa, float sb, double *ax, double *am, double *ex, double *em) {
    if (p == LOCO_PRED_EPSILON) {
        *ax = 1.0 / sa, *am = -(double)sb / sa;
        *ex = 0, *em = 1;
    } else if (p == LOCO_PRED_SAMPLE) {
        *ax = 0, *am = 1;
        *ex = 1.0 / sb, *em = -(double)sa / sb;
    } else { /* v */
        *ax = sa, *am = -(double)sb;
        *ex = sb, *em = sa;
    }
}

static loco_status ddim_step(loco_scheduler *s, int i, const loco_tensor *mo, loco_tensor *sample,
                             loco_torch_rng *rng, loco_err *err) {
    double t = s->timesteps[i];
    double prev_t = t - s->ntrain / s->num_inference_steps;
    float a_t, a_prev;
    loco_status st = loco_sched_alpha_at(s, t, &a_t, err);
    if (st != LOCO_OK) return st;
    if (prev_t >= 0) {
        if ((st = loco_sched_alpha_at(s, prev_t, &a_prev, err)) != LOCO_OK) return st;
    } else {
        a_prev = s->final_alpha_cumprod;
    }
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    double ax, am, ex, em;
    x0_eps_coef(s->cfg.prediction_type, sa, sb, &ax, &am, &ex, &em);

    /* sigma_t(eta) of formula (16), then the direction pointing to x_t; fp32 as in diffusers. */
    float variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
    float std_dev = (float)s->cfg.eta * sqrtf(variance);
    float dir = sqrtf(1.0f - a_prev - std_dev * std_dev);
    float sap = sqrtf(a_prev);

    const loco_tensor *x[4];
    double c[4];
    int n = 0;
    if (s->cfg.thresholding || s->cfg.clip_sample == 1) {
        if ((st = loco_sched_scratch(s, &s->x0, err)) != LOCO_OK) return st;
        const loco_tensor *in[2] = {sample, mo};
        double k[2] = {ax, am};
        if ((st = loco_sched_lincomb(s, &s->x0, 2, in, k, err)) != LOCO_OK) return st;
        if ((st = loco_sched_clip_or_threshold(s, &s->x0, err)) != LOCO_OK) return st;
        x[n] = &s->x0, c[n++] = sap;
        x[n] = sample, c[n++] = (double)dir * ex;
        x[n] = mo, c[n++] = (double)dir * em;
    } else {
        x[n] = sample, c[n++] = (double)sap * ax + (double)dir * ex;
        x[n] = mo, c[n++] = (double)sap * am + (double)dir * em;
    }
    if (s->cfg.eta > 0) {
        if ((st = loco_sched_draw_noise(s, rng, "DDIM with eta > 0", err)) != LOCO_OK) return st;
        x[n] = &s->noise, c[n++] = std_dev;
    }
    return loco_sched_lincomb(s, sample, n, x, c, err);
}

const loco_sched_family loco_sched_family_ddim = {ddim_setup, ddim_step};
