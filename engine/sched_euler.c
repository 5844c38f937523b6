/* sched_euler.c: EulerDiscreteScheduler and EulerAncestralDiscreteScheduler (diffusers).
 *
 * Timesteps are floats: "linspace" spacing gives fractional ones and sigmas are interpolated
 * linearly (np.interp) in the fp32 sigma table sqrt((1 - ac) / ac). Euler also offers Karras and
 * exponential sigmas (timesteps then come from _sigma_to_t), log_linear interpolation, a
 * "sigma_min" final sigma and continuous timesteps for v-prediction. The model input is
 * x / sqrt(sigma^2 + 1); init_noise_sigma is sqrt(sigma_max^2 + 1) for "leading" spacing and
 * sigma_max otherwise. s_churn is 0 (what the pipelines pass), so plain Euler never draws noise;
 * Euler a draws one torch.randn per step. */
#include <math.h>
#include <stdlib.h>

#include "scheduler_impl.h"

/* Timesteps of the spacing as float32 values, in diffusers' order (descending). */
static loco_status euler_grid(loco_scheduler *s, double **ts, int *n, loco_err *err) {
    loco_status st = loco_sched_spacing(s, s->cfg.timestep_spacing, 0, ts, n, err);
    if (st != LOCO_OK) return st;
    for (int i = 0; i < *n; i++) (*ts)[i] = (float)(*ts)[i]; /* .astype(np.float32) */
    return LOCO_OK;
}

/* Store sigmas (float32), the scale divisors and init_noise_sigma. */
static loco_status finish_sigmas(loco_scheduler *s, const double *sig, int nsig, loco_err *err) {
    s->sigmas = malloc((size_t)nsig * sizeof(float));
    s->input_scale = malloc((size_t)s->ncalls * sizeof(float));
    if (!s->sigmas || !s->input_scale) return loco_err_set(err, LOCO_ENOMEM, "scheduler: out of memory for sigmas");
    s->nsigmas = nsig;
    float smax = -INFINITY;
    for (int i = 0; i < nsig; i++) {
        s->sigmas[i] = (float)sig[i];
        if (s->sigmas[i] > smax) smax = s->sigmas[i];
    }
    if (nsig < s->ncalls + 1)
        return loco_err_set(err, LOCO_EINVAL, "%s: %d sigmas for %d calls", loco_scheduler_kind_class_name(s->kind),
                            nsig, s->ncalls);
    for (int i = 0; i < s->ncalls; i++) {
        float sg = s->sigmas[i];
        s->input_scale[i] = sqrtf(sg * sg + 1.0f); /* (sigma**2 + 1) ** 0.5 in fp32 */
    }
    loco_timestep_spacing sp = s->cfg.timestep_spacing;
    s->init_noise_sigma = (sp == LOCO_SPACING_LINSPACE || sp == LOCO_SPACING_TRAILING) ? smax : sqrtf(smax * smax + 1.0f);
    return LOCO_OK;
}

static loco_status euler_setup(loco_scheduler *s, loco_err *err) {
    const char *cls = "EulerDiscreteScheduler";
    const loco_scheduler_config *c = &s->cfg;
    if (c->use_beta_sigmas)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: use_beta_sigmas is not supported (it needs scipy's beta ppf)", cls);
    if (c->use_karras_sigmas + c->use_exponential_sigmas > 1)
        return loco_err_set(err, LOCO_EINVAL, "%s: only one of use_karras_sigmas, use_exponential_sigmas can be set", cls);
    int T = s->ntrain, N = s->num_inference_steps;
    double *ts = NULL, *sig = NULL;
    float *table = loco_sched_sigma_table(s), *log_sigmas = malloc((size_t)T * sizeof(float));
    int n = 0, nsig = 0;
    loco_status st = LOCO_OK;
    if (!table || !log_sigmas) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", cls);
        goto done;
    }
    for (int j = 0; j < T; j++) log_sigmas[j] = (float)log((double)table[j]); /* np.log on float32 */
    if ((st = euler_grid(s, &ts, &n, err)) != LOCO_OK) goto done;

    /* room for N+2 sigmas: log_linear gives N+1 before the final one is appended */
    int cap = (n > N ? n : N) + 2;
    sig = malloc((size_t)cap * sizeof(double));
    if (!sig) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", cls);
        goto done;
    }
    if (c->interpolation_type == LOCO_INTERP_LINEAR) {
        for (int i = 0; i < n; i++) sig[i] = loco_sched_np_interp(ts[i], table, T);
        nsig = n;
    } else {
        /* torch.linspace(log(sigmas[-1]), log(sigmas[0]), N + 1).exp() in fp32 */
        float lo = logf(table[T - 1]), hi = logf(table[0]);
        double *g = malloc((size_t)(N + 1) * sizeof(double));
        if (!g) {
            st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", cls);
            goto done;
        }
        float step = N > 0 ? (hi - lo) / (float)N : 0;
        int half = (N + 1) / 2;
        for (int i = 0; i <= N; i++) {
            float v = i < half ? fmaf(step, (float)i, lo) : fmaf(-step, (float)(N - i), hi);
            g[i] = expf(v);
        }
        for (int i = 0; i <= N; i++) sig[i] = g[i];
        free(g);
        nsig = N + 1;
    }
    if (c->use_karras_sigmas || c->use_exponential_sigmas) {
        double smin = c->has_sigma_min ? c->sigma_min : sig[nsig - 1];
        double smax = c->has_sigma_max ? c->sigma_max : sig[0];
        if (c->use_karras_sigmas)
            loco_sched_karras(smin, smax, N, sig);
        else
            loco_sched_exponential(smin, smax, N, sig);
        nsig = N;
        free(ts);
        ts = malloc((size_t)N * sizeof(double));
        if (!ts) {
            st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", cls);
            goto done;
        }
        for (int i = 0; i < N; i++) ts[i] = (float)loco_sched_sigma_to_t(sig[i], log_sigmas, T);
        n = N;
    }
    float last = 0.0f;
    if (c->final_sigmas_type == LOCO_FINAL_SIGMA_MIN) last = sqrtf((1.0f - s->alphas_cumprod[0]) / s->alphas_cumprod[0]);
    sig[nsig++] = last;
    for (int i = 0; i < nsig; i++) sig[i] = (float)sig[i];
    if (c->timestep_type == LOCO_TIMESTEP_CONTINUOUS && c->prediction_type == LOCO_PRED_V) {
        /* EDM-style input: t = 0.25 * log(sigma) for every sigma but the last */
        n = nsig - 1;
        free(ts);
        ts = malloc((size_t)n * sizeof(double));
        if (!ts) {
            st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", cls);
            goto done;
        }
        for (int i = 0; i < n; i++) ts[i] = 0.25f * logf((float)sig[i]);
    }
    if ((st = loco_sched_set_timesteps(s, ts, n, err)) != LOCO_OK) goto done;
    st = finish_sigmas(s, sig, nsig, err);
done:
    free(ts);
    free(sig);
    free(table);
    free(log_sigmas);
    return st;
}

static loco_status euler_a_setup(loco_scheduler *s, loco_err *err) {
    if (s->cfg.prediction_type == LOCO_PRED_SAMPLE)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "EulerAncestralDiscreteScheduler: prediction_type 'sample' is not implemented (nor in diffusers)");
    int T = s->ntrain;
    double *ts = NULL, *sig = NULL;
    int n = 0;
    float *table = loco_sched_sigma_table(s);
    loco_status st = table ? euler_grid(s, &ts, &n, err) : loco_err_set(err, LOCO_ENOMEM, "scheduler: out of memory");
    if (st == LOCO_OK) {
        sig = malloc((size_t)(n + 1) * sizeof(double));
        if (!sig) st = loco_err_set(err, LOCO_ENOMEM, "scheduler: out of memory");
    }
    if (st == LOCO_OK) {
        for (int i = 0; i < n; i++) sig[i] = loco_sched_np_interp(ts[i], table, T);
        sig[n] = 0.0;
        st = loco_sched_set_timesteps(s, ts, n, err);
    }
    if (st == LOCO_OK) st = finish_sigmas(s, sig, n + 1, err);
    free(ts);
    free(sig);
    free(table);
    return st;
}

/* x0 = kx * sample + km * model_output (fp32 scalars as diffusers forms them). */
static loco_status x0_coef(const loco_scheduler *s, float sigma, double *kx, double *km, loco_err *err) {
    switch (s->cfg.prediction_type) {
    case LOCO_PRED_EPSILON: *kx = 1, *km = -(double)sigma; return LOCO_OK;
    case LOCO_PRED_SAMPLE: *kx = 0, *km = 1; return LOCO_OK;
    case LOCO_PRED_V: {
        /* c_out = -sigma / (sigma^2 + 1)^0.5, c_skip = 1 / (sigma^2 + 1) */
        float s2 = sigma * sigma + 1.0f;
        *km = -sigma / sqrtf(s2);
        *kx = 1.0 / (double)s2;
        return LOCO_OK;
    }
    default: return loco_err_set(err, LOCO_EINVAL, "scheduler: bad prediction_type");
    }
}

/* prev = sample + (sample - x0) / sigma * dt [+ sigma_up * noise] as one lincomb. */
static loco_status euler_update(loco_scheduler *s, const loco_tensor *mo, loco_tensor *sample, float sigma,
                                float dt, const loco_tensor *noise, float noise_scale, loco_err *err) {
    double kx = 0, km = 0;
    loco_status st = x0_coef(s, sigma, &kx, &km, err);
    if (st != LOCO_OK) return st;
    const loco_tensor *x[3] = {sample, mo, noise};
    double c[3] = {1.0 + (double)dt * (1.0 - kx) / sigma, -(double)dt * km / sigma, noise_scale};
    return loco_sched_lincomb(s, sample, noise ? 3 : 2, x, c, err);
}

static loco_status euler_step(loco_scheduler *s, int i, const loco_tensor *mo, loco_tensor *sample,
                              loco_torch_rng *rng, loco_err *err) {
    (void)rng;
    float sigma = s->sigmas[i];
    float sigma_hat = sigma * (0.0f + 1.0f); /* gamma = 0: s_churn is 0 */
    float dt = s->sigmas[i + 1] - sigma_hat;
    return euler_update(s, mo, sample, sigma_hat, dt, NULL, 0, err);
}

static loco_status euler_a_step(loco_scheduler *s, int i, const loco_tensor *mo, loco_tensor *sample,
                                loco_torch_rng *rng, loco_err *err) {
    float from = s->sigmas[i], to = s->sigmas[i + 1];
    /* fp32, in diffusers' order: the difference of squares below cancels, so the rounding matters */
    float up = sqrtf(to * to * (from * from - to * to) / (from * from));
    float down = sqrtf(to * to - up * up);
    float dt = down - from;
    loco_status st = loco_sched_draw_noise(s, rng, "Euler ancestral", err);
    if (st != LOCO_OK) return st;
    return euler_update(s, mo, sample, from, dt, &s->noise, up, err);
}

const loco_sched_family loco_sched_family_euler = {euler_setup, euler_step};
const loco_sched_family loco_sched_family_euler_a = {euler_a_setup, euler_a_step};
