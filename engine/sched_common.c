/* sched_common.c: helpers every scheduler family shares: numpy-exact grids (linspace, arange,
 * interp), sigma conversions, history and scratch tensors, noise, and the host-side nonlinear
 * ops (clip, dynamic thresholding, quantile).
 *
 * numpy is the reference for the grids because diffusers builds timesteps and sigmas with numpy in
 * float64; reproducing its exact arithmetic (not just the formula) keeps timestep lists identical,
 * including numpy's arange length quirk for "trailing" spacing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler_impl.h"

/* ---- numpy grids ------------------------------------------------------------------------------ */

void loco_sched_np_linspace(double start, double stop, int num, double *out) {
    if (num <= 0) return;
    if (num == 1) {
        out[0] = start;
        return;
    }
    /* numpy: y = arange(num) * step + start, with step = (stop - start) / (num - 1), and the
     * endpoint stored exactly. */
    double div = (double)(num - 1), delta = stop - start, step = delta / div;
    for (int i = 0; i < num; i++) out[i] = step == 0 ? (i / div) * delta + start : i * step + start;
    out[num - 1] = stop;
}

loco_status loco_sched_np_arange(double start, double stop, double step, double **out, int *n, loco_err *err) {
    *out = NULL;
    *n = 0;
    double len = ceil((stop - start) / step);
    if (!(len > 0)) return LOCO_OK;
    if (len > 1e7) return loco_err_set(err, LOCO_EINVAL, "scheduler: timestep grid too long (%g)", len);
    int m = (int)len;
    double *v = malloc((size_t)m * sizeof(double));
    if (!v) return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for %d timesteps", m);
    /* numpy sets the first two values, then fills start + i * ((start + step) - start). */
    v[0] = start;
    if (m > 1) v[1] = start + step;
    double delta = (start + step) - start;
    for (int i = 2; i < m; i++) v[i] = start + i * delta;
    *out = v;
    *n = m;
    return LOCO_OK;
}

double loco_sched_np_interp(double x, const float *fp, int n) {
    if (isnan(x)) return x;
    if (x < 0) return fp[0];
    if (x >= (double)(n - 1)) return fp[n - 1];
    int j = (int)floor(x);
    if ((double)j == x) return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

double loco_sched_sigma_to_t(double sigma, const float *log_sigmas, int n) {
    double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
    /* cumsum(dists >= 0).argmax(): the last index with log_sigma >= log_sigmas[j], or 0. */
    int low = 0;
    for (int j = 0; j < n; j++)
        if (log_sigma - (double)log_sigmas[j] >= 0) low = j;
    if (low > n - 2) low = n - 2;
    if (low < 0) low = 0;
    int high = low + 1;
    float lo = log_sigmas[low], hi = log_sigmas[high];
    /* (low - high) is a float32 difference in numpy; the rest is float64. */
    float den = lo - hi;
    double w = ((double)lo - log_sigma) / (double)den;
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1 - w) * low + w * high;
}

void loco_sched_karras(double sigma_min, double sigma_max, int num, double *out) {
    const double rho = 7.0;
    double *ramp = out; /* linspace(0, 1, num) computed in place, then mapped */
    loco_sched_np_linspace(0.0, 1.0, num, ramp);
    double min_inv_rho = pow(sigma_min, 1.0 / rho);
    double max_inv_rho = pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < num; i++) out[i] = pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
}

void loco_sched_exponential(double sigma_min, double sigma_max, int num, double *out) {
    loco_sched_np_linspace(log(sigma_max), log(sigma_min), num, out);
    for (int i = 0; i < num; i++) out[i] = exp(out[i]);
}

loco_status loco_sched_spacing(const loco_scheduler *s, loco_timestep_spacing spacing, int round_linspace,
                               double **out, int *n, loco_err *err) {
    int T = s->ntrain, N = s->num_inference_steps;
    *out = NULL;
    *n = 0;
    if (spacing == LOCO_SPACING_TRAILING) {
        double *v;
        int m;
        loco_status st = loco_sched_np_arange((double)T, 0.0, -((double)T / N), &v, &m, err);
        if (st != LOCO_OK) return st;
        for (int i = 0; i < m; i++) v[i] = rint(v[i]) - 1.0;
        *out = v;
        *n = m;
        return LOCO_OK;
    }
    double *v = malloc((size_t)N * sizeof(double));
    if (!v) return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for %d timesteps", N);
    if (spacing == LOCO_SPACING_LINSPACE) {
        double *asc = malloc((size_t)N * sizeof(double));
        if (!asc) {
            free(v);
            return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for %d timesteps", N);
        }
        loco_sched_np_linspace(0.0, (double)(T - 1), N, asc);
        for (int i = 0; i < N; i++) v[i] = round_linspace ? rint(asc[N - 1 - i]) : asc[N - 1 - i];
        free(asc);
    } else { /* leading */
        int ratio = T / N;
        for (int i = 0; i < N; i++) v[i] = (double)(N - 1 - i) * ratio + s->cfg.steps_offset;
    }
    *out = v;
    *n = N;
    return LOCO_OK;
}

/* ---- tables ----------------------------------------------------------------------------------- */

loco_status loco_sched_alpha_at(const loco_scheduler *s, double t, float *out, loco_err *err) {
    long idx = (long)t;
    if ((double)idx != t)
        return loco_err_set(err, LOCO_EINVAL, "%s: timestep %g is not an integer",
                            loco_scheduler_kind_class_name(s->kind), t);
    if (idx < 0) idx += s->ntrain; /* Python indexing, as diffusers does it */
    if (idx < 0 || idx >= s->ntrain)
        return loco_err_set(err, LOCO_EINVAL, "%s: timestep %g is outside the %d training timesteps",
                            loco_scheduler_kind_class_name(s->kind), t, s->ntrain);
    *out = s->alphas_cumprod[idx];
    return LOCO_OK;
}

float *loco_sched_sigma_table(const loco_scheduler *s) {
    float *st = malloc((size_t)s->ntrain * sizeof(float));
    if (!st) return NULL;
    for (int j = 0; j < s->ntrain; j++) {
        float a = s->alphas_cumprod[j];
        st[j] = sqrtf((1.0f - a) / a); /* ((1 - ac) / ac) ** 0.5 on fp32 tensors */
    }
    return st;
}

loco_status loco_sched_set_timesteps(loco_scheduler *s, const double *ts, int n, loco_err *err) {
    free(s->timesteps);
    s->timesteps = NULL;
    s->ncalls = 0;
    if (n < 1)
        return loco_err_set(err, LOCO_EINVAL, "%s: %d inference steps give no timesteps",
                            loco_scheduler_kind_class_name(s->kind), s->num_inference_steps);
    s->timesteps = malloc((size_t)n * sizeof(float));
    if (!s->timesteps) return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for %d timesteps", n);
    for (int i = 0; i < n; i++) s->timesteps[i] = (float)ts[i];
    s->ncalls = n;
    return LOCO_OK;
}

/* ---- tensors ---------------------------------------------------------------------------------- */

static loco_status ensure_alloc(loco_scheduler *s, loco_tensor *t, loco_err *err) {
    if (t->data) return LOCO_OK;
    return loco_tensor_alloc(s->be, s->dtype, s->ndim, s->shape, t, err);
}

loco_status loco_sched_lincomb(loco_scheduler *s, loco_tensor *y, int n, const loco_tensor *const *x,
                               const double *coef, loco_err *err) {
    float c[8];
    if (n > 8) return loco_err_set(err, LOCO_EINVAL, "scheduler: lincomb of %d terms", n);
    for (int i = 0; i < n; i++) {
        c[i] = (float)coef[i];
        if (!isfinite(c[i]))
            return loco_err_set(err, LOCO_EINVAL,
                                "%s: call %d: a step coefficient is %g (diffusers gives NaN here too: e.g. epsilon "
                                "prediction with rescale_betas_zero_snr, or two equal sigmas in a row when the "
                                "timesteps run past num_train_timesteps - 1)",
                                loco_scheduler_kind_class_name(s->kind), s->next_call, (double)c[i]);
    }
    return loco_lincomb(s->be, y, n, x, c, err);
}

loco_status loco_sched_hist_push(loco_scheduler *s, int keep, loco_tensor **slot, loco_err *err) {
    if (keep < 1 || keep > LOCO_SCHED_MAX_HIST)
        return loco_err_set(err, LOCO_EINVAL, "scheduler: history of %d entries", keep);
    while (s->nhist >= keep) {
        /* Drop the oldest; its buffer becomes the first spare and is reused below. */
        loco_tensor oldest = s->hist[0];
        memmove(&s->hist[0], &s->hist[1], (size_t)(s->nhist - 1) * sizeof(loco_tensor));
        s->hist[s->nhist - 1] = oldest;
        s->nhist--;
    }
    loco_tensor *t = &s->hist[s->nhist];
    loco_status st = ensure_alloc(s, t, err);
    if (st != LOCO_OK) return st;
    s->nhist++;
    *slot = t;
    return LOCO_OK;
}

const loco_tensor *loco_sched_hist(const loco_scheduler *s, int back) {
    return back < s->nhist ? &s->hist[s->nhist - 1 - back] : NULL;
}

loco_status loco_sched_scratch(loco_scheduler *s, loco_tensor *t, loco_err *err) { return ensure_alloc(s, t, err); }

static int64_t sample_numel(const loco_scheduler *s) {
    int64_t n = 1;
    for (int d = 0; d < s->ndim; d++) n *= s->shape[d];
    return n;
}

loco_status loco_sched_randn_host(loco_scheduler *s, loco_torch_rng *rng, const char *why, float **out,
                                  loco_err *err) {
    *out = NULL;
    if (!rng)
        return loco_err_set(err, LOCO_EINVAL, "%s: %s draws noise at this step; pass a generator (rng)",
                            loco_scheduler_kind_class_name(s->kind), why);
    int64_t n = sample_numel(s);
    float *buf = malloc((size_t)n * sizeof(float));
    if (!buf) return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for %lld noise values", (long long)n);
    /* randn_tensor(model_output.shape, generator) draws the whole batch from one generator */
    loco_torch_randn_f32(rng, buf, (size_t)n);
    *out = buf;
    return LOCO_OK;
}

loco_status loco_sched_draw_noise(loco_scheduler *s, loco_torch_rng *rng, const char *why, loco_err *err) {
    loco_status st = ensure_alloc(s, &s->noise, err);
    if (st != LOCO_OK) return st;
    float *buf;
    if ((st = loco_sched_randn_host(s, rng, why, &buf, err)) != LOCO_OK) return st;
    st = loco_tensor_upload(&s->noise, buf, LOCO_F32, err);
    free(buf);
    return st;
}

loco_status loco_sched_first_channels(loco_scheduler *s, const loco_tensor *mo, const loco_tensor **out,
                                      int *has_second, loco_err *err) {
    if (has_second) *has_second = 0;
    int same = mo->ndim == s->ndim;
    for (int d = 0; same && d < s->ndim; d++) same = mo->shape[d] == s->shape[d];
    if (same) {
        *out = mo;
        return LOCO_OK;
    }
    /* [N, 2C, ...] -> its first C channels: one contiguous run of C*R values per sample. */
    int64_t N = s->shape[0], C = s->shape[1], R = 1;
    for (int d = 2; d < s->ndim; d++) R *= s->shape[d];
    loco_status st = ensure_alloc(s, &s->chan, err);
    if (st != LOCO_OK) return st;
    int64_t run[1] = {C * R};
    for (int64_t n = 0; n < N; n++) {
        loco_tensor src, dst;
        if ((st = loco_tensor_view(mo, n * 2 * C * R, 1, run, &src, err)) != LOCO_OK) return st;
        if ((st = loco_tensor_view(&s->chan, n * C * R, 1, run, &dst, err)) != LOCO_OK) return st;
        if ((st = loco_copy(s->be, &dst, &src, err)) != LOCO_OK) return st;
    }
    if (has_second) *has_second = 1;
    *out = &s->chan;
    return LOCO_OK;
}

/* ---- host-side nonlinear ops ------------------------------------------------------------------ */

loco_status loco_sched_download(const loco_tensor *t, float **buf, int64_t *n, loco_err *err) {
    *n = loco_tensor_numel(t);
    *buf = malloc((size_t)*n * sizeof(float));
    if (!*buf) return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for %lld values", (long long)*n);
    loco_status st = loco_tensor_download_f32(t, *buf, err);
    if (st != LOCO_OK) {
        free(*buf);
        *buf = NULL;
    }
    return st;
}

loco_status loco_sched_clip(loco_scheduler *s, loco_tensor *t, double range, loco_err *err) {
    float *v;
    int64_t n;
    loco_status st = loco_sched_download(t, &v, &n, err);
    if (st != LOCO_OK) return st;
    /* torch.clamp(x, -r, r): the bounds are fp32; NaN stays NaN. */
    float hi = (float)range, lo = -hi;
    for (int64_t i = 0; i < n; i++) {
        float x = v[i];
        if (x < lo) x = lo;
        if (x > hi) x = hi;
        v[i] = x;
    }
    st = loco_tensor_upload(t, v, LOCO_F32, err);
    free(v);
    return st;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

float loco_sched_quantile(float *v, int64_t n, double q) {
    for (int64_t i = 0; i < n; i++)
        if (isnan(v[i])) return NAN; /* torch.quantile: any NaN gives NaN */
    qsort(v, (size_t)n, sizeof(float), cmp_float);
    /* torch: rank = q * last_index in the input's dtype (fp32); lerp between the neighbours. */
    float rank = (float)q * (float)(n - 1);
    int64_t below = (int64_t)rank, above = (int64_t)ceilf(rank);
    if (above > n - 1) above = n - 1;
    float w = rank - (float)below, a = v[below], b = v[above];
    return fabsf(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

loco_status loco_sched_threshold(loco_scheduler *s, loco_tensor *t, loco_err *err) {
    float *v;
    int64_t n;
    loco_status st = loco_sched_download(t, &v, &n, err);
    if (st != LOCO_OK) return st;
    int64_t rows = t->shape[0], cols = n / rows;
    float *absrow = malloc((size_t)cols * sizeof(float));
    if (!absrow) {
        free(v);
        return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for thresholding");
    }
    float smax = (float)s->cfg.sample_max_value;
    for (int64_t r = 0; r < rows; r++) {
        float *x = v + r * cols;
        for (int64_t i = 0; i < cols; i++) absrow[i] = fabsf(x[i]);
        float q = loco_sched_quantile(absrow, cols, s->cfg.dynamic_thresholding_ratio);
        /* torch.clamp(s, min=1, max=sample_max_value) */
        if (q < 1.0f) q = 1.0f;
        if (q > smax) q = smax;
        for (int64_t i = 0; i < cols; i++) {
            float y = x[i];
            if (y < -q) y = -q;
            if (y > q) y = q;
            x[i] = y / q;
        }
    }
    free(absrow);
    st = loco_tensor_upload(t, v, LOCO_F32, err);
    free(v);
    return st;
}

loco_status loco_sched_clip_or_threshold(loco_scheduler *s, loco_tensor *x0, loco_err *err) {
    if (s->cfg.thresholding) return loco_sched_threshold(s, x0, err);
    if (s->cfg.clip_sample == 1) return loco_sched_clip(s, x0, s->cfg.clip_sample_range, err);
    return LOCO_OK;
}
