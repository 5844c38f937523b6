/* sched_ddpm.c: DDPMScheduler (diffusers): the posterior mean of formula (7) over a multi-step
 * jump, clip_sample or dynamic thresholding of x0 (DeepFloyd IF), and the variance types
 * fixed_small (default), fixed_small_log, fixed_large, learned and learned_range (IF: the model's
 * second half of channels interpolates between log beta~_t and log beta_t per element).
 *
 * A fresh torch.randn of the sample's shape is drawn from the generator at every step with t > 0,
 * as diffusers does, so the stream stays aligned with a Python run on the same seed. Scalar
 * variances are one more lincomb term; the learned ones are per element and are formed on the
 * host next to the noise (IF stage I is 64x64x3, so the round trip is cheap). */
#include <math.h>
#include <stdlib.h>

#include "scheduler_impl.h"

static loco_status ddpm_setup(loco_scheduler *s, loco_err *err) {
    if (s->cfg.variance_type == LOCO_VARIANCE_FIXED_LARGE_LOG)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "DDPMScheduler: variance_type 'fixed_large_log' is not supported (diffusers takes the "
                            "square root of a log variance there, which is NaN)");
    double *ts;
    int n;
    loco_status st = loco_sched_spacing(s, s->cfg.timestep_spacing, 1, &ts, &n, err);
    if (st != LOCO_OK) return st;
    st = loco_sched_set_timesteps(s, ts, n, err);
    free(ts);
    return st;
}

/* noise term = std(v) * z per element for the learned variance types; v is the second half of
 * each sample's channels in the model output. All fp32, in diffusers' operation order. */
static loco_status learned_noise(loco_scheduler *s, const loco_tensor *mo, float var_fixed, float cur_beta,
                                 loco_torch_rng *rng, loco_err *err) {
    float *z = NULL, *m = NULL;
    int64_t nm;
    loco_status st = loco_sched_randn_host(s, rng, "DDPM", &z, err);
    if (st == LOCO_OK) st = loco_sched_download(mo, &m, &nm, err);
    if (st == LOCO_OK) st = loco_sched_scratch(s, &s->noise, err);
    if (st == LOCO_OK) {
        int64_t N = s->shape[0], CR = 1;
        for (int d = 1; d < s->ndim; d++) CR *= s->shape[d];
        float min_log = logf(var_fixed), max_log = logf(cur_beta);
        for (int64_t b = 0; b < N; b++) {
            const float *pv = m + b * 2 * CR + CR; /* torch.split(model_output, C, dim=1)[1] */
            float *zz = z + b * CR;
            for (int64_t k = 0; k < CR; k++) {
                float std_dev;
                if (s->cfg.variance_type == LOCO_VARIANCE_LEARNED) {
                    std_dev = sqrtf(pv[k]);
                } else {
                    float frac = (pv[k] + 1.0f) / 2.0f;
                    float v = frac * max_log + (1.0f - frac) * min_log;
                    std_dev = expf(0.5f * v);
                }
                zz[k] = std_dev * zz[k];
            }
        }
        st = loco_tensor_upload(&s->noise, z, LOCO_F32, err);
    }
    free(z);
    free(m);
    return st;
}

static loco_status ddpm_step(loco_scheduler *s, int i, const loco_tensor *mo_in, loco_tensor *sample,
                             loco_torch_rng *rng, loco_err *err) {
    double t = s->timesteps[i];
    /* previous_timestep: the next entry of the list, -1 after the last */
    double prev_t = i + 1 < s->ncalls ? s->timesteps[i + 1] : -1;
    int learned = s->cfg.variance_type == LOCO_VARIANCE_LEARNED || s->cfg.variance_type == LOCO_VARIANCE_LEARNED_RANGE;
    const loco_tensor *mo;
    int has_second;
    loco_status st = loco_sched_first_channels(s, mo_in, &mo, &has_second, err);
    if (st != LOCO_OK) return st;
    if (learned && !has_second && t > 0)
        return loco_err_set(err, LOCO_EINVAL,
                            "DDPMScheduler: variance_type '%s' needs the model output with twice the sample's channels",
                            loco_variance_type_name(s->cfg.variance_type));

    float a_t, a_prev = 1.0f;
    if ((st = loco_sched_alpha_at(s, t, &a_t, err)) != LOCO_OK) return st;
    if (prev_t >= 0 && (st = loco_sched_alpha_at(s, prev_t, &a_prev, err)) != LOCO_OK) return st;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    double ax, am;
    if (s->cfg.prediction_type == LOCO_PRED_EPSILON)
        ax = 1.0 / sa, am = -(double)sb / sa;
    else if (s->cfg.prediction_type == LOCO_PRED_SAMPLE)
        ax = 0, am = 1;
    else
        ax = sa, am = -(double)sb;

    /* formula (7): mean = c_x0 * x0 + c_s * x_t */
    float c_x0 = (sqrtf(a_prev) * cur_beta) / b_t;
    float c_s = sqrtf(cur_alpha) * b_prev / b_t;

    const loco_tensor *x[3];
    double c[3];
    int n = 0;
    if (s->cfg.thresholding || s->cfg.clip_sample == 1) {
        if ((st = loco_sched_scratch(s, &s->x0, err)) != LOCO_OK) return st;
        const loco_tensor *in[2] = {sample, mo};
        double k[2] = {ax, am};
        if ((st = loco_sched_lincomb(s, &s->x0, 2, in, k, err)) != LOCO_OK) return st;
        if ((st = loco_sched_clip_or_threshold(s, &s->x0, err)) != LOCO_OK) return st;
        x[n] = &s->x0, c[n++] = c_x0;
        x[n] = sample, c[n++] = c_s;
    } else {
        x[n] = sample, c[n++] = (double)c_x0 * ax + c_s;
        x[n] = mo, c[n++] = (double)c_x0 * am;
    }

    if (t > 0) {
        /* beta~_t, clamped so its log is finite */
        float var = (b_prev / b_t) * cur_beta;
        if (var < 1e-20f) var = 1e-20f;
        if (learned) {
            if ((st = learned_noise(s, mo_in, var, cur_beta, rng, err)) != LOCO_OK) return st;
            x[n] = &s->noise, c[n++] = 1.0;
        } else {
            float std_dev;
            if (s->cfg.variance_type == LOCO_VARIANCE_FIXED_SMALL_LOG)
                std_dev = expf(0.5f * logf(var));
            else if (s->cfg.variance_type == LOCO_VARIANCE_FIXED_LARGE)
                std_dev = sqrtf(cur_beta);
            else
                std_dev = sqrtf(var);
            if ((st = loco_sched_draw_noise(s, rng, "DDPM", err)) != LOCO_OK) return st;
            x[n] = &s->noise, c[n++] = std_dev;
        }
    }
    return loco_sched_lincomb(s, sample, n, x, c, err);
}

const loco_sched_family loco_sched_family_ddpm = {ddpm_setup, ddpm_step};
