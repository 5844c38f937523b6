/* sched_pndm.c: PNDMScheduler (diffusers), both the PLMS-only path (skip_prk_steps, what Stable
 * Diffusion 1.x configs use) and the original Runge-Kutta warm-up followed by PLMS.
 *
 * Every update is PNDM's formula (9): x_prev = sqrt(a_prev/a_t) x - (a_prev - a_t) e / denom, with
 * e a fixed linear combination of stored model outputs, so one lincomb over (sample, outputs)
 * does the whole step; v-prediction is converted to epsilon inside the same combination. */
#include <math.h>
#include <stdlib.h>

#include "scheduler_impl.h"

static loco_status pndm_setup(loco_scheduler *s, loco_err *err) {
    const char *cls = "PNDMScheduler";
    if (s->cfg.prediction_type == LOCO_PRED_SAMPLE)
        return loco_err_set(err, LOCO_EINVAL, "%s: prediction_type 'sample' is not supported (epsilon or v_prediction)",
                            cls);
    double *desc;
    int n;
    loco_status st = loco_sched_spacing(s, s->cfg.timestep_spacing, 1, &desc, &n, err);
    if (st != LOCO_OK) return st;
    /* PNDM works on the ascending grid (_timesteps). */
    double *asc = malloc((size_t)n * sizeof(double));
    double *ts = malloc((size_t)(n + 12) * sizeof(double));
    if (!asc || !ts) {
        free(desc);
        free(asc);
        free(ts);
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", cls);
    }
    for (int i = 0; i < n; i++) asc[i] = desc[n - 1 - i];
    free(desc);
    int m = 0;
    if (s->cfg.skip_prk_steps) {
        /* concat(_ts[:-1], _ts[-2:-1], _ts[-1:])[::-1]: the second-to-last step is repeated. */
        double tmp[3];
        int k = 0;
        for (int i = 0; i < n - 1; i++) ts[m++] = asc[i];
        if (n >= 2) tmp[k++] = asc[n - 2];
        tmp[k++] = asc[n - 1];
        for (int i = 0; i < k; i++) ts[m++] = tmp[i];
        for (int i = 0; i < m / 2; i++) {
            double t = ts[i];
            ts[i] = ts[m - 1 - i];
            ts[m - 1 - i] = t;
        }
    } else {
        if (n < 4) {
            free(asc);
            free(ts);
            return loco_err_set(err, LOCO_EINVAL,
                                "%s: the Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 inference steps "
                                "(got %d)",
                                cls, s->num_inference_steps);
        }
        /* prk = (_ts[-4:].repeat(2) + tile([0, T//N//2], 4))[:-1].repeat(2)[1:-1][::-1] */
        int half = s->ntrain / s->num_inference_steps / 2;
        double base[8], rep[14];
        for (int i = 0; i < 4; i++) {
            base[2 * i] = asc[n - 4 + i];
            base[2 * i + 1] = asc[n - 4 + i] + half;
        }
        for (int i = 0; i < 7; i++) rep[2 * i] = rep[2 * i + 1] = base[i];
        for (int i = 12; i >= 1; i--) ts[m++] = rep[i];
        /* plms = _ts[:-3][::-1] */
        for (int i = n - 4; i >= 0; i--) ts[m++] = asc[i];
    }
    free(asc);
    st = loco_sched_set_timesteps(s, ts, m, err);
    free(ts);
    return st;
}

/* Coefficients of x_prev = cs * x + ce * e (formula 9), with e the epsilon-space output; for
 * v-prediction e = sqrt(a_t) v + sqrt(1 - a_t) x, folded in by the caller via sv/sx. All scalars
 * are fp32 as diffusers computes them on alphas_cumprod. */
typedef struct {
    double cs; /* coefficient of x */
    double ce; /* coefficient of the (combined) raw model output */
} pndm_coef;

static loco_status prev_coef(const loco_scheduler *s, double t, double prev_t, pndm_coef *c, loco_err *err) {
    float a_t, a_prev;
    loco_status st = loco_sched_alpha_at(s, t, &a_t, err);
    if (st != LOCO_OK) return st;
    if (prev_t >= 0) {
        if ((st = loco_sched_alpha_at(s, prev_t, &a_prev, err)) != LOCO_OK) return st;
    } else {
        a_prev = s->final_alpha_cumprod;
    }
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float sample_coeff = sqrtf(a_prev / a_t);
    float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    float k = (a_prev - a_t) / denom; /* prev = sample_coeff * x - k * e */
    c->cs = sample_coeff;
    c->ce = -(double)k;
    if (s->cfg.prediction_type == LOCO_PRED_V) {
        /* e = sqrt(a_t) * v + sqrt(b_t) * x */
        c->cs += -(double)k * sqrtf(b_t);
        c->ce = -(double)k * sqrtf(a_t);
    }
    return LOCO_OK;
}

static loco_status step_prk(loco_scheduler *s, int i, const loco_tensor *mo, loco_tensor *sample, loco_err *err) {
    int counter = s->counter;
    double t = s->timesteps[i];
    double diff = (counter % 2) ? 0 : s->ntrain / s->num_inference_steps / 2;
    double prev_t = t - diff;
    double t_used = s->timesteps[counter / 4 * 4];
    loco_status st;
    int phase = counter % 4;
    if (phase == 0) {
        /* cur_model_output = 1/6 e; ets.append(e); cur_sample = sample */
        if ((st = loco_sched_scratch(s, &s->accum, err)) != LOCO_OK) return st;
        double c = 1.0 / 6.0;
        const loco_tensor *x[1] = {mo};
        if ((st = loco_sched_lincomb(s, &s->accum, 1, x, &c, err)) != LOCO_OK) return st;
        loco_tensor *slot;
        if ((st = loco_sched_hist_push(s, LOCO_SCHED_MAX_HIST, &slot, err)) != LOCO_OK) return st;
        if ((st = loco_copy(s->be, slot, mo, err)) != LOCO_OK) return st;
        if ((st = loco_sched_scratch(s, &s->cur_sample, err)) != LOCO_OK) return st;
        if ((st = loco_copy(s->be, &s->cur_sample, sample, err)) != LOCO_OK) return st;
        s->has_cur_sample = 1;
    } else if (phase == 1 || phase == 2) {
        const loco_tensor *x[2] = {&s->accum, mo};
        double c[2] = {1.0, 1.0 / 3.0};
        if ((st = loco_sched_lincomb(s, &s->accum, 2, x, c, err)) != LOCO_OK) return st;
    }
    pndm_coef pc;
    if ((st = prev_coef(s, t_used, prev_t, &pc, err)) != LOCO_OK) return st;
    const loco_tensor *base = s->has_cur_sample ? &s->cur_sample : sample;
    if (phase == 3) {
        /* e = cur_model_output + 1/6 e_now */
        const loco_tensor *x[3] = {base, &s->accum, mo};
        double c[3] = {pc.cs, pc.ce, pc.ce / 6.0};
        st = loco_sched_lincomb(s, sample, 3, x, c, err);
    } else {
        const loco_tensor *x[2] = {base, mo};
        double c[2] = {pc.cs, pc.ce};
        st = loco_sched_lincomb(s, sample, 2, x, c, err);
    }
    return st;
}

static loco_status step_plms(loco_scheduler *s, int i, const loco_tensor *mo, loco_tensor *sample, loco_err *err) {
    int ratio = s->ntrain / s->num_inference_steps;
    double t = s->timesteps[i];
    double prev_t = t - ratio;
    loco_status st;
    if (s->counter != 1) {
        /* ets = ets[-3:] + [e] */
        loco_tensor *slot;
        if ((st = loco_sched_hist_push(s, 4, &slot, err)) != LOCO_OK) return st;
        if ((st = loco_copy(s->be, slot, mo, err)) != LOCO_OK) return st;
    } else {
        /* the repeated timestep: redo the first step from the remembered sample */
        prev_t = t;
        t = t + ratio;
    }
    int n = s->nhist;
    const loco_tensor *x[5];
    double w[5];
    int nt = 0;
    const loco_tensor *base = sample;
    if (n == 1 && s->counter == 0) {
        x[nt] = mo;
        w[nt++] = 1.0;
        if ((st = loco_sched_scratch(s, &s->cur_sample, err)) != LOCO_OK) return st;
        if ((st = loco_copy(s->be, &s->cur_sample, sample, err)) != LOCO_OK) return st;
        s->has_cur_sample = 1;
    } else if (n == 1 && s->counter == 1) {
        x[nt] = mo;
        w[nt++] = 0.5;
        x[nt] = loco_sched_hist(s, 0);
        w[nt++] = 0.5;
        if (!s->has_cur_sample)
            return loco_err_set(err, LOCO_EINVAL, "PNDMScheduler: the repeated step has no remembered sample");
        base = &s->cur_sample;
        s->has_cur_sample = 0;
    } else if (n == 2) {
        static const double k[2] = {3.0 / 2.0, -1.0 / 2.0};
        for (int j = 0; j < 2; j++) x[nt] = loco_sched_hist(s, j), w[nt++] = k[j];
    } else if (n == 3) {
        static const double k[3] = {23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0};
        for (int j = 0; j < 3; j++) x[nt] = loco_sched_hist(s, j), w[nt++] = k[j];
    } else {
        static const double k[4] = {55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0};
        for (int j = 0; j < 4; j++) x[nt] = loco_sched_hist(s, j), w[nt++] = k[j];
    }
    pndm_coef pc;
    if ((st = prev_coef(s, t, prev_t, &pc, err)) != LOCO_OK) return st;
    const loco_tensor *terms[6];
    double coef[6];
    terms[0] = base;
    coef[0] = pc.cs;
    for (int j = 0; j < nt; j++) {
        terms[1 + j] = x[j];
        coef[1 + j] = pc.ce * w[j];
    }
    return loco_sched_lincomb(s, sample, 1 + nt, terms, coef, err);
}

static loco_status pndm_step(loco_scheduler *s, int i, const loco_tensor *mo, loco_tensor *sample,
                             loco_torch_rng *rng, loco_err *err) {
    (void)rng;
    /* The PRK list is the first 12 calls when the warm-up is on (see pndm_setup). */
    int nprk = s->cfg.skip_prk_steps ? 0 : 12;
    loco_status st = s->counter < nprk ? step_prk(s, i, mo, sample, err) : step_plms(s, i, mo, sample, err);
    if (st == LOCO_OK) s->counter++;
    return st;
}

const loco_sched_family loco_sched_family_pndm = {pndm_setup, pndm_step};
