/* sched_dpm.c: DPMSolverMultistepScheduler (diffusers). The default is DPM-Solver++ 2M
 * (algorithm_type dpmsolver++, solver_order 2, midpoint); dpmsolver, the SDE variants, orders 1-3,
 * heun, Karras / exponential / Lu-lambda sigmas, lambda_min_clipped and the final-step rules
 * (lower_order_final below 15 steps, euler_at_final, final_sigmas_type zero or sigma_min) follow
 * the same class.
 *
 * Each step converts the model output to a data (or noise) prediction, keeps the last
 * solver_order of those as backend tensors, and forms x_{t-1} as one lincomb of the sample and
 * the stored predictions. The step's scalars (alpha_t, sigma_t, lambda, h, exp(-h) - 1, ...) are
 * computed in fp32 in diffusers' operation order, because h is a small difference of larger
 * lambdas and its rounding shows in the result. */
#include <math.h>
#include <stdlib.h>

#include "scheduler_impl.h"

static const char *const CLS = "DPMSolverMultistepScheduler";

static int is_pp(loco_dpm_algorithm a) { return a == LOCO_DPM_DPMSOLVER_PP || a == LOCO_DPM_SDE_DPMSOLVER_PP; }
static int is_sde(loco_dpm_algorithm a) { return a == LOCO_DPM_SDE_DPMSOLVER_PP || a == LOCO_DPM_SDE_DPMSOLVER; }

static loco_status check_options(const loco_scheduler *s, loco_err *err) {
    const loco_scheduler_config *c = &s->cfg;
    if (c->use_beta_sigmas)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: use_beta_sigmas is not supported (it needs scipy's beta ppf)", CLS);
    if (c->use_flow_sigmas)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: use_flow_sigmas (flow-matching models) is not supported", CLS);
    if (c->use_karras_sigmas + c->use_exponential_sigmas + c->use_lu_lambdas > 1)
        return loco_err_set(err, LOCO_EINVAL,
                            "%s: only one of use_karras_sigmas, use_exponential_sigmas, use_lu_lambdas can be set", CLS);
    if (c->solver_order < 1 || c->solver_order > 3)
        return loco_err_set(err, LOCO_EINVAL, "%s: solver_order must be 1, 2 or 3 (got %d)", CLS, c->solver_order);
    if (!is_pp(c->algorithm_type) && c->final_sigmas_type == LOCO_FINAL_SIGMA_ZERO)
        return loco_err_set(err, LOCO_EINVAL,
                            "%s: final_sigmas_type 'zero' is not supported with algorithm_type '%s'; use 'sigma_min'", CLS,
                            loco_dpm_algorithm_name(c->algorithm_type));
    if (c->algorithm_type == LOCO_DPM_SDE_DPMSOLVER && c->solver_order == 3)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "%s: algorithm_type 'sde-dpmsolver' has no third-order update (solver_order 3)", CLS);
    return LOCO_OK;
}

static loco_status dpm_setup(loco_scheduler *s, loco_err *err) {
    const loco_scheduler_config *c = &s->cfg;
    loco_status st = check_options(s, err);
    if (st != LOCO_OK) return st;
    int T = s->ntrain, N = s->num_inference_steps;
    float *table = loco_sched_sigma_table(s), *log_sigmas = malloc((size_t)T * sizeof(float));
    double *ts = NULL, *sig = NULL;
    int n = 0;
    if (!table || !log_sigmas) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", CLS);
        goto done;
    }
    for (int j = 0; j < T; j++) log_sigmas[j] = (float)log((double)table[j]);

    /* lambda_min_clipped: searchsorted(flip(lambda_t), lambda_min_clipped) on the fp32 lambdas */
    int clipped = 0;
    for (int k = 0; k < T; k++) {
        float a = s->alphas_cumprod[T - 1 - k];
        float lam = logf(sqrtf(a)) - logf(sqrtf(1.0f - a));
        if ((double)lam < c->lambda_min_clipped) clipped = k + 1;
        else break;
    }
    int last = T - clipped;
    if (last < 1) {
        st = loco_err_set(err, LOCO_EINVAL, "%s: lambda_min_clipped %g clips every timestep", CLS, c->lambda_min_clipped);
        goto done;
    }

    if (c->timestep_spacing == LOCO_SPACING_TRAILING) {
        if ((st = loco_sched_np_arange((double)last, 0.0, -((double)T / N), &ts, &n, err)) != LOCO_OK) goto done;
        for (int k = 0; k < n; k++) ts[k] = rint(ts[k]) - 1.0;
    } else {
        n = N;
        ts = malloc((size_t)(N + 1) * sizeof(double));
        if (!ts) {
            st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", CLS);
            goto done;
        }
        if (c->timestep_spacing == LOCO_SPACING_LINSPACE) {
            /* np.linspace(0, last - 1, N + 1).round()[::-1][:-1] */
            loco_sched_np_linspace(0.0, (double)(last - 1), N + 1, ts);
            for (int k = 0; k <= N; k++) ts[k] = rint(ts[k]);
            for (int k = 0; k < (N + 1) / 2; k++) {
                double t = ts[k];
                ts[k] = ts[N - k];
                ts[N - k] = t;
            }
        } else { /* leading: (arange(N + 1) * (last // (N + 1)))[::-1][:-1] + steps_offset */
            int ratio = last / (N + 1);
            for (int k = 0; k < N; k++) ts[k] = (double)(N - k) * ratio + c->steps_offset;
        }
    }
    sig = malloc((size_t)((n > N ? n : N) + 1) * sizeof(double));
    if (!sig) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", CLS);
        goto done;
    }
    int round_t = c->beta_schedule != LOCO_BETA_SQUAREDCOS_CAP_V2;
    if (c->use_karras_sigmas || c->use_exponential_sigmas || c->use_lu_lambdas) {
        if (c->use_karras_sigmas) {
            loco_sched_karras(table[0], table[T - 1], N, sig);
        } else if (c->use_exponential_sigmas) {
            loco_sched_exponential(table[0], table[T - 1], N, sig);
            round_t = 0; /* diffusers rounds only the Karras and Lu timesteps */
        } else {
            /* _convert_to_lu on the flipped log sigmas (rho = 1), then exp */
            loco_sched_np_linspace(0.0, 1.0, N, sig);
            double lmin = log_sigmas[0], lmax = log_sigmas[T - 1];
            for (int k = 0; k < N; k++) sig[k] = exp(lmax + sig[k] * (lmin - lmax));
        }
        n = N;
        for (int k = 0; k < N; k++) {
            double t = loco_sched_sigma_to_t(sig[k], log_sigmas, T);
            if (round_t) t = rint(t);
            ts[k] = trunc(t); /* .to(torch.int64) */
        }
    } else {
        for (int k = 0; k < n; k++) sig[k] = loco_sched_np_interp(ts[k], table, T);
    }
    sig[n] = c->final_sigmas_type == LOCO_FINAL_SIGMA_MIN
                 ? sqrtf((1.0f - s->alphas_cumprod[0]) / s->alphas_cumprod[0])
                 : 0.0;
    if ((st = loco_sched_set_timesteps(s, ts, n, err)) != LOCO_OK) goto done;
    s->sigmas = malloc((size_t)(n + 1) * sizeof(float));
    if (!s->sigmas) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", CLS);
        goto done;
    }
    for (int k = 0; k <= n; k++) s->sigmas[k] = (float)sig[k];
    s->nsigmas = n + 1;
    s->init_noise_sigma = 1.0f;
done:
    free(table);
    free(log_sigmas);
    free(ts);
    free(sig);
    return st;
}

/* _sigma_to_alpha_sigma_t and lambda, fp32. */
typedef struct {
    float alpha, sigma, lambda;
} dpm_point;

static dpm_point point(float sig) {
    dpm_point p;
    p.alpha = 1.0f / sqrtf(sig * sig + 1.0f);
    p.sigma = sig * p.alpha;
    p.lambda = logf(p.alpha) - logf(p.sigma);
    return p;
}

/* Convert the model output into the newest history entry (data prediction for the ++ variants,
 * noise prediction otherwise), thresholding x0 when asked. */
static loco_status convert_output(loco_scheduler *s, int i, const loco_tensor *mo_in, const loco_tensor *sample,
                                  loco_err *err) {
    const loco_scheduler_config *c = &s->cfg;
    const loco_tensor *mo = mo_in;
    loco_status st;
    int learned = c->variance_type == LOCO_VARIANCE_LEARNED || c->variance_type == LOCO_VARIANCE_LEARNED_RANGE;
    if (learned && c->prediction_type == LOCO_PRED_EPSILON) {
        /* model_output[:, :3] in diffusers: the epsilon half of IF's 6-channel output */
        if ((st = loco_sched_first_channels(s, mo_in, &mo, NULL, err)) != LOCO_OK) return st;
    } else if (mo_in->shape[1] != sample->shape[1]) {
        return loco_err_set(err, LOCO_EINVAL, "%s: a %s model output must have the sample's channels", CLS,
                            loco_prediction_type_name(c->prediction_type));
    }
    dpm_point p = point(s->sigmas[i]);
    double kx, km; /* converted = kx * sample + km * model_output */
    if (is_pp(c->algorithm_type)) {
        if (c->prediction_type == LOCO_PRED_EPSILON)
            kx = 1.0 / p.alpha, km = -(double)p.sigma / p.alpha;
        else if (c->prediction_type == LOCO_PRED_SAMPLE)
            kx = 0, km = 1;
        else
            kx = p.alpha, km = -(double)p.sigma;
    } else {
        if (c->prediction_type == LOCO_PRED_EPSILON)
            kx = 0, km = 1;
        else if (c->prediction_type == LOCO_PRED_SAMPLE)
            kx = 1.0 / p.sigma, km = -(double)p.alpha / p.sigma;
        else
            kx = p.sigma, km = p.alpha;
    }
    loco_tensor *slot;
    if ((st = loco_sched_hist_push(s, c->solver_order, &slot, err)) != LOCO_OK) return st;
    const loco_tensor *x[2] = {sample, mo};
    if (!c->thresholding) {
        double k[2] = {kx, km};
        return loco_sched_lincomb(s, slot, 2, x, k, err);
    }
    if (is_pp(c->algorithm_type)) {
        double k[2] = {kx, km};
        if ((st = loco_sched_lincomb(s, slot, 2, x, k, err)) != LOCO_OK) return st;
        return loco_sched_threshold(s, slot, err);
    }
    /* noise prediction: x0 = (sample - sigma eps) / alpha, threshold, eps = (sample - alpha x0) / sigma */
    if ((st = loco_sched_scratch(s, &s->x0, err)) != LOCO_OK) return st;
    double k0[2] = {1.0 / p.alpha - (double)p.sigma * kx / p.alpha, -(double)p.sigma * km / p.alpha};
    if ((st = loco_sched_lincomb(s, &s->x0, 2, x, k0, err)) != LOCO_OK) return st;
    if ((st = loco_sched_threshold(s, &s->x0, err)) != LOCO_OK) return st;
    const loco_tensor *y[2] = {sample, &s->x0};
    double k1[2] = {1.0 / p.sigma, -(double)p.alpha / p.sigma};
    return loco_sched_lincomb(s, slot, 2, y, k1, err);
}

/* x_t = cs * sample + kd[0] * D0 + kd[1] * D1 + kd[2] * D2 + cn * noise for the update of `order`,
 * each coefficient formed as diffusers writes it (fp32). */
typedef struct {
    float cs, cn;
    float kd[3];
    float p, q, u, v; /* D1/D2 in terms of m0, m1, m2 (see expand) */
} dpm_update;

static void update_coef(const loco_scheduler *s, int i, int order, dpm_update *o) {
    loco_dpm_algorithm alg = s->cfg.algorithm_type;
    int heun = s->cfg.solver_type == LOCO_DPM_HEUN;
    dpm_point t = point(s->sigmas[i + 1]), s0 = point(s->sigmas[i]);
    float h = t.lambda - s0.lambda;
    float em1 = expf(-h) - 1.0f, ep1 = expf(h) - 1.0f, e2 = 1.0f - expf(-2.0f * h);
    *o = (dpm_update){0};
    switch (alg) {
    case LOCO_DPM_DPMSOLVER_PP: o->cs = t.sigma / s0.sigma; break;
    case LOCO_DPM_DPMSOLVER: o->cs = t.alpha / s0.alpha; break;
    case LOCO_DPM_SDE_DPMSOLVER_PP: o->cs = t.sigma / s0.sigma * expf(-h); break;
    default: o->cs = t.alpha / s0.alpha; break;
    }
    if (alg == LOCO_DPM_SDE_DPMSOLVER_PP) o->cn = t.sigma * sqrtf(1.0f - expf(-2.0f * h));
    if (alg == LOCO_DPM_SDE_DPMSOLVER) o->cn = t.sigma * sqrtf(expf(2.0f * h) - 1.0f);

    if (order == 1) {
        switch (alg) {
        case LOCO_DPM_DPMSOLVER_PP: o->kd[0] = -(t.alpha * em1); break;
        case LOCO_DPM_DPMSOLVER: o->kd[0] = -(t.sigma * ep1); break;
        case LOCO_DPM_SDE_DPMSOLVER_PP: o->kd[0] = t.alpha * e2; break;
        default: o->kd[0] = -(2.0f * (t.sigma * ep1)); break;
        }
        return;
    }
    dpm_point s1 = point(s->sigmas[i - 1]);
    float h0 = s0.lambda - s1.lambda, r0 = h0 / h;
    o->p = 1.0f / r0;
    if (order == 2) {
        switch (alg) {
        case LOCO_DPM_DPMSOLVER_PP:
            o->kd[0] = -(t.alpha * em1);
            o->kd[1] = heun ? t.alpha * (em1 / h + 1.0f) : -(0.5f * (t.alpha * em1));
            break;
        case LOCO_DPM_DPMSOLVER:
            o->kd[0] = -(t.sigma * ep1);
            o->kd[1] = heun ? -(t.sigma * (ep1 / h - 1.0f)) : -(0.5f * (t.sigma * ep1));
            break;
        case LOCO_DPM_SDE_DPMSOLVER_PP:
            o->kd[0] = t.alpha * e2;
            o->kd[1] = heun ? t.alpha * (e2 / (-2.0f * h) + 1.0f) : 0.5f * (t.alpha * e2);
            break;
        default:
            o->kd[0] = -(2.0f * (t.sigma * ep1));
            o->kd[1] = heun ? -(2.0f * (t.sigma * (ep1 / h - 1.0f))) : -(t.sigma * ep1);
            break;
        }
        return;
    }
    dpm_point s2 = point(s->sigmas[i - 2]);
    float h1 = s1.lambda - s2.lambda, r1 = h1 / h;
    o->q = 1.0f / r1;
    o->u = r0 / (r0 + r1);
    o->v = 1.0f / (r0 + r1);
    switch (alg) {
    case LOCO_DPM_DPMSOLVER_PP:
        o->kd[0] = -(t.alpha * em1);
        o->kd[1] = t.alpha * (em1 / h + 1.0f);
        o->kd[2] = -(t.alpha * ((expf(-h) - 1.0f + h) / (h * h) - 0.5f));
        break;
    case LOCO_DPM_DPMSOLVER:
        o->kd[0] = -(t.sigma * ep1);
        o->kd[1] = -(t.sigma * (ep1 / h - 1.0f));
        o->kd[2] = -(t.sigma * ((expf(h) - 1.0f - h) / (h * h) - 0.5f));
        break;
    default: /* sde-dpmsolver++ (sde-dpmsolver order 3 is refused at setup) */
        o->kd[0] = t.alpha * e2;
        o->kd[1] = t.alpha * (e2 / (-2.0f * h) + 1.0f);
        o->kd[2] = t.alpha * ((1.0f - expf(-2.0f * h) - 2.0f * h) / ((2.0f * h) * (2.0f * h)) - 0.5f);
        break;
    }
}

static loco_status dpm_step(loco_scheduler *s, int i, const loco_tensor *mo, loco_tensor *sample,
                            loco_torch_rng *rng, loco_err *err) {
    const loco_scheduler_config *c = &s->cfg;
    int n = s->ncalls;
    int lower_final = i == n - 1 && (c->euler_at_final || (c->lower_order_final && n < 15) ||
                                     c->final_sigmas_type == LOCO_FINAL_SIGMA_ZERO);
    int lower_second = i == n - 2 && c->lower_order_final && n < 15;
    loco_status st = convert_output(s, i, mo, sample, err);
    if (st != LOCO_OK) return st;
    if (is_sde(c->algorithm_type) && (st = loco_sched_draw_noise(s, rng, c->algorithm_type == LOCO_DPM_SDE_DPMSOLVER_PP
                                                                          ? "sde-dpmsolver++"
                                                                          : "sde-dpmsolver",
                                                                      err)) != LOCO_OK)
        return st;
    int order;
    if (c->solver_order == 1 || s->lower_order_nums < 1 || lower_final)
        order = 1;
    else if (c->solver_order == 2 || s->lower_order_nums < 2 || lower_second)
        order = 2;
    else
        order = 3;

    dpm_update u;
    update_coef(s, i, order, &u);
    const loco_tensor *m0 = loco_sched_hist(s, 0), *m1 = loco_sched_hist(s, 1), *m2 = loco_sched_hist(s, 2);
    const loco_tensor *x[5];
    double k[5];
    int nt = 0;
    x[nt] = sample, k[nt++] = u.cs;
    if (order == 1) {
        x[nt] = m0, k[nt++] = u.kd[0];
    } else if (order == 2) {
        /* D1 = (1/r0) (m0 - m1) */
        x[nt] = m0, k[nt++] = (double)u.kd[0] + (double)u.kd[1] * u.p;
        x[nt] = m1, k[nt++] = -(double)u.kd[1] * u.p;
    } else {
        /* D1 = D1_0 + u (D1_0 - D1_1), D2 = v (D1_0 - D1_1), D1_0 = p (m0 - m1), D1_1 = q (m1 - m2) */
        double p = u.p, q = u.q, uu = u.u, v = u.v, k1 = u.kd[1], k2 = u.kd[2];
        x[nt] = m0, k[nt++] = u.kd[0] + k1 * (1 + uu) * p + k2 * v * p;
        x[nt] = m1, k[nt++] = -k1 * ((1 + uu) * p + uu * q) - k2 * v * (p + q);
        x[nt] = m2, k[nt++] = k1 * uu * q + k2 * v * q;
    }
    if (is_sde(c->algorithm_type)) x[nt] = &s->noise, k[nt++] = u.cn;
    if ((st = loco_sched_lincomb(s, sample, nt, x, k, err)) != LOCO_OK) return st;
    if (s->lower_order_nums < c->solver_order) s->lower_order_nums++;
    return LOCO_OK;
}

const loco_sched_family loco_sched_family_dpm = {dpm_setup, dpm_step};
