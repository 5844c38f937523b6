/* scheduler.c: the parts every scheduler kind shares: the beta and alphas_cumprod tables (fp32,
 * bit for bit as torch builds them), kind defaults, creation, accessors, and the checks around
 * scale_model_input and step before they reach a family (engine/sched_*.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler_impl.h"

static const loco_sched_family *family_of(loco_scheduler_kind k) {
    switch (k) {
    case LOCO_SCHED_PNDM: return &loco_sched_family_pndm;
    case LOCO_SCHED_DDIM: return &loco_sched_family_ddim;
    case LOCO_SCHED_EULER: return &loco_sched_family_euler;
    case LOCO_SCHED_EULER_A: return &loco_sched_family_euler_a;
    case LOCO_SCHED_DPMPP_2M: return &loco_sched_family_dpm;
    case LOCO_SCHED_DDPM: return &loco_sched_family_ddpm;
    default: return NULL;
    }
}

/* ---- beta tables -------------------------------------------------------------------------------- */

/* torch.linspace(start, end, n, dtype=float32) on the CPU: a float step, then start + step*i for
 * the first half and end - step*(n-1-i) for the second, each a fused multiply-add (its vector
 * kernel); this reproduces torch's values exactly, which a plain formula does not. */
static void linspace_f32(float start, float end, int n, float *out) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int half = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - 1 - i), end);
}

/* betas_for_alpha_bar with the cosine transform: float64 in Python, then one fp32 rounding. */
static double alpha_bar_cos(double t) {
    double c = cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

/* torch.cumprod on the CPU accumulates fp32 input in double and rounds each partial product. */
static void cumprod_f32(const float *x, int n, float *out) {
    double acc = 1.0;
    for (int i = 0; i < n; i++) {
        acc *= (double)x[i];
        out[i] = (float)acc;
    }
}

/* diffusers' rescale_zero_terminal_snr, op for op in fp32. */
static loco_status rescale_zero_snr(float *betas, int n, loco_err *err) {
    float *a = malloc((size_t)n * sizeof(float)), *ab = malloc((size_t)n * sizeof(float));
    if (!a || !ab) {
        free(a);
        free(ab);
        return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for rescale_betas_zero_snr");
    }
    for (int i = 0; i < n; i++) a[i] = 1.0f - betas[i];
    cumprod_f32(a, n, ab);
    for (int i = 0; i < n; i++) ab[i] = sqrtf(ab[i]);
    float s0 = ab[0], sT = ab[n - 1];
    for (int i = 0; i < n; i++) ab[i] -= sT;
    float scale = s0 / (s0 - sT);
    for (int i = 0; i < n; i++) {
        ab[i] *= scale;
        ab[i] = ab[i] * ab[i];
    }
    betas[0] = 1.0f - ab[0];
    for (int i = 1; i < n; i++) betas[i] = 1.0f - ab[i] / ab[i - 1];
    free(a);
    free(ab);
    return LOCO_OK;
}

static loco_status build_alphas(loco_scheduler *s, const loco_scheduler_config *cfg, loco_err *err) {
    int T = s->ntrain;
    float *betas = malloc((size_t)T * sizeof(float));
    s->alphas_cumprod = malloc((size_t)T * sizeof(float));
    if (!betas || !s->alphas_cumprod) {
        free(betas);
        return loco_err_set(err, LOCO_ENOMEM, "scheduler: no memory for %d betas", T);
    }
    if (cfg->trained_betas) {
        memcpy(betas, cfg->trained_betas, (size_t)T * sizeof(float));
    } else if (cfg->beta_schedule == LOCO_BETA_LINEAR) {
        linspace_f32((float)cfg->beta_start, (float)cfg->beta_end, T, betas);
    } else if (cfg->beta_schedule == LOCO_BETA_SCALED_LINEAR) {
        linspace_f32((float)sqrt(cfg->beta_start), (float)sqrt(cfg->beta_end), T, betas);
        for (int i = 0; i < T; i++) betas[i] = betas[i] * betas[i];
    } else {
        for (int i = 0; i < T; i++) {
            double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            double b = 1 - alpha_bar_cos(t2) / alpha_bar_cos(t1);
            betas[i] = (float)(b < 0.999 ? b : 0.999);
        }
    }
    loco_status st = LOCO_OK;
    if (s->cfg.rescale_betas_zero_snr) st = rescale_zero_snr(betas, T, err);
    if (st == LOCO_OK) {
        for (int i = 0; i < T; i++) betas[i] = 1.0f - betas[i]; /* alphas */
        cumprod_f32(betas, T, s->alphas_cumprod);
        /* The sigma-based kinds keep the last alpha off zero so the first sigma is finite. */
        if (s->cfg.rescale_betas_zero_snr &&
            (s->kind == LOCO_SCHED_EULER || s->kind == LOCO_SCHED_EULER_A || s->kind == LOCO_SCHED_DPMPP_2M))
            s->alphas_cumprod[T - 1] = 0x1p-24f;
    }
    free(betas);
    return st;
}

/* ---- creation ------------------------------------------------------------------------------------ */

/* Fill the "not given" fields with the kind's own defaults (the diffusers class signature). */
static void resolve_defaults(loco_scheduler_kind kind, loco_scheduler_config *c) {
    int sigma_kind = kind == LOCO_SCHED_EULER || kind == LOCO_SCHED_EULER_A || kind == LOCO_SCHED_DPMPP_2M;
    if (c->timestep_spacing == LOCO_SPACING_DEFAULT)
        c->timestep_spacing = sigma_kind ? LOCO_SPACING_LINSPACE : LOCO_SPACING_LEADING;
    if (c->set_alpha_to_one < 0) c->set_alpha_to_one = kind == LOCO_SCHED_DDIM ? 1 : 0;
    if (c->clip_sample < 0) c->clip_sample = (kind == LOCO_SCHED_DDIM || kind == LOCO_SCHED_DDPM) ? 1 : 0;
    if (kind == LOCO_SCHED_DDPM && c->variance_type == LOCO_VARIANCE_DEFAULT)
        c->variance_type = LOCO_VARIANCE_FIXED_SMALL;
    /* Keys the kind's class does not have are dropped by from_config. */
    if (kind == LOCO_SCHED_PNDM) c->rescale_betas_zero_snr = 0;
    if (kind != LOCO_SCHED_DDIM && kind != LOCO_SCHED_DDPM) c->clip_sample = 0;
    if (kind != LOCO_SCHED_DDIM && kind != LOCO_SCHED_DDPM && kind != LOCO_SCHED_DPMPP_2M) c->thresholding = 0;
    if (kind != LOCO_SCHED_DDPM && kind != LOCO_SCHED_DPMPP_2M) c->variance_type = LOCO_VARIANCE_DEFAULT;
    if (kind != LOCO_SCHED_EULER && kind != LOCO_SCHED_DPMPP_2M) {
        c->use_karras_sigmas = c->use_exponential_sigmas = c->use_beta_sigmas = c->use_flow_sigmas = 0;
        c->final_sigmas_type = LOCO_FINAL_SIGMA_ZERO;
    }
    if (kind != LOCO_SCHED_EULER) {
        c->has_sigma_min = c->has_sigma_max = 0;
        c->interpolation_type = LOCO_INTERP_LINEAR;
        c->timestep_type = LOCO_TIMESTEP_DISCRETE;
    }
    if (kind != LOCO_SCHED_DDIM) c->eta = 0;
}

loco_status loco_scheduler_create(loco_scheduler_kind kind, const loco_scheduler_config *cfg,
                                  int num_inference_steps, loco_backend *be, loco_scheduler **out, loco_err *err) {
    *out = NULL;
    const loco_sched_family *fam = family_of(kind);
    if (!fam) return loco_err_set(err, LOCO_EINVAL, "scheduler: unknown kind %d", (int)kind);
    if (!cfg) return loco_err_set(err, LOCO_EINVAL, "scheduler: no config given");
    if (!be) return loco_err_set(err, LOCO_EINVAL, "scheduler: no backend given");
    const char *cls = loco_scheduler_kind_class_name(kind);
    int T = cfg->num_train_timesteps;
    if (T < 2) return loco_err_set(err, LOCO_EINVAL, "%s: num_train_timesteps must be >= 2 (got %d)", cls, T);
    if (num_inference_steps < 1 || num_inference_steps > T)
        return loco_err_set(err, LOCO_EINVAL, "%s: num_inference_steps must be in [1, num_train_timesteps=%d] (got %d)",
                            cls, T, num_inference_steps);
    if (cfg->trained_betas && cfg->trained_betas_len != T)
        return loco_err_set(err, LOCO_EINVAL, "%s: trained_betas has %d values but num_train_timesteps is %d", cls,
                            cfg->trained_betas_len, T);
    if (!cfg->trained_betas && (unsigned)cfg->beta_schedule >= LOCO_BETA_SCHEDULE_COUNT)
        return loco_err_set(err, LOCO_EINVAL, "%s: beta_schedule %d is not a valid schedule", cls, (int)cfg->beta_schedule);

    loco_scheduler *s = calloc(1, sizeof *s);
    if (!s) return loco_err_set(err, LOCO_ENOMEM, "scheduler: out of memory");
    s->kind = kind;
    s->fam = fam;
    s->cfg = *cfg;
    s->cfg.trained_betas = NULL; /* the tables below are all the scheduler needs of them */
    s->cfg.trained_betas_len = 0;
    resolve_defaults(kind, &s->cfg);
    s->be = be;
    s->num_inference_steps = num_inference_steps;
    s->ntrain = T;
    s->init_noise_sigma = 1.0f;
    loco_status st = build_alphas(s, cfg, err);
    if (st == LOCO_OK) {
        s->final_alpha_cumprod = s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
        st = fam->setup(s, err);
    }
    if (st != LOCO_OK) {
        loco_scheduler_destroy(s);
        return st;
    }
    *out = s;
    return LOCO_OK;
}

static void free_tensors(loco_scheduler *s) {
    for (int i = 0; i < LOCO_SCHED_MAX_HIST; i++) loco_tensor_free(&s->hist[i]);
    loco_tensor_free(&s->cur_sample);
    loco_tensor_free(&s->accum);
    loco_tensor_free(&s->x0);
    loco_tensor_free(&s->noise);
    loco_tensor_free(&s->chan);
    s->shaped = 0;
}

void loco_scheduler_destroy(loco_scheduler *s) {
    if (!s) return;
    free_tensors(s);
    free(s->alphas_cumprod);
    free(s->timesteps);
    free(s->input_scale);
    free(s->sigmas);
    free(s);
}

void loco_scheduler_reset(loco_scheduler *s) {
    if (!s) return;
    s->next_call = 0;
    s->counter = 0;
    s->lower_order_nums = 0;
    s->nhist = 0;
    s->has_cur_sample = 0;
}

/* ---- accessors ------------------------------------------------------------------------------------ */

loco_scheduler_kind loco_scheduler_get_kind(const loco_scheduler *s) { return s->kind; }
const loco_scheduler_config *loco_scheduler_get_config(const loco_scheduler *s) { return &s->cfg; }
int loco_scheduler_num_inference_steps(const loco_scheduler *s) { return s->num_inference_steps; }
int loco_scheduler_num_calls(const loco_scheduler *s) { return s->ncalls; }
float loco_scheduler_timestep(const loco_scheduler *s, int i) {
    return i >= 0 && i < s->ncalls ? s->timesteps[i] : NAN;
}
const float *loco_scheduler_timesteps(const loco_scheduler *s) { return s->timesteps; }
const float *loco_scheduler_sigmas(const loco_scheduler *s, int *n) {
    if (n) *n = s->nsigmas;
    return s->sigmas;
}
float loco_scheduler_init_noise_sigma(const loco_scheduler *s) { return s->init_noise_sigma; }
const float *loco_scheduler_alphas_cumprod(const loco_scheduler *s, int *n) {
    if (n) *n = s->ntrain;
    return s->alphas_cumprod;
}

/* ---- scale_model_input and step --------------------------------------------------------------------- */

static loco_status check_call(const loco_scheduler *s, const char *fn, int i, loco_err *err) {
    if (i < 0 || i >= s->ncalls)
        return loco_err_set(err, LOCO_EINVAL, "%s: call %d is out of range (the %s schedule has %d calls)", fn, i,
                            loco_scheduler_kind_name(s->kind), s->ncalls);
    return LOCO_OK;
}

loco_status loco_scheduler_scale_model_input(loco_scheduler *s, int i, const loco_tensor *in, loco_tensor *out,
                                             loco_err *err) {
    const char *fn = "loco_scheduler_scale_model_input";
    loco_status st = check_call(s, fn, i, err);
    if (st != LOCO_OK) return st;
    if (!in || !out || !in->data || !out->data) return loco_err_set(err, LOCO_EINVAL, "%s: missing tensor", fn);
    if (!loco_tensor_same_shape(in, out) || in->dtype != out->dtype) {
        char a[96], b[96];
        return loco_err_set(err, LOCO_EINVAL, "%s: output %s does not match input %s", fn,
                            loco_tensor_shape_str(out, b, sizeof b), loco_tensor_shape_str(in, a, sizeof a));
    }
    if (s->input_scale) {
        /* sample / sqrt(sigma^2 + 1): the divisor is fp32 as diffusers computes it. */
        double c = 1.0 / (double)s->input_scale[i];
        const loco_tensor *x[1] = {in};
        return loco_sched_lincomb(s, out, 1, x, &c, err);
    }
    if (in->data == out->data) return LOCO_OK;
    return loco_copy(s->be, out, in, err);
}

static int variance_is_learned(const loco_scheduler *s) {
    return s->cfg.variance_type == LOCO_VARIANCE_LEARNED || s->cfg.variance_type == LOCO_VARIANCE_LEARNED_RANGE;
}

static loco_status check_step_tensors(loco_scheduler *s, const loco_tensor *mo, const loco_tensor *x,
                                      loco_err *err) {
    const char *fn = "loco_scheduler_step";
    char a[96], b[96];
    if (!mo || !x || !mo->data || !x->data) return loco_err_set(err, LOCO_EINVAL, "%s: missing tensor", fn);
    if (x->ndim < 2)
        return loco_err_set(err, LOCO_EINVAL, "%s: sample %s must be [batch, channels, ...]", fn,
                            loco_tensor_shape_str(x, a, sizeof a));
    if (mo->dtype != x->dtype)
        return loco_err_set(err, LOCO_EINVAL, "%s: model_output is %s but sample is %s", fn,
                            loco_dtype_name(mo->dtype), loco_dtype_name(x->dtype));
    if (!loco_tensor_same_shape(mo, x)) {
        int doubled = mo->ndim == x->ndim && mo->shape[1] == 2 * x->shape[1];
        for (int d = 0; doubled && d < x->ndim; d++) doubled = d == 1 || mo->shape[d] == x->shape[d];
        if (!doubled || !variance_is_learned(s))
            return loco_err_set(err, LOCO_EINVAL,
                                "%s: model_output %s must have the sample's shape %s%s", fn,
                                loco_tensor_shape_str(mo, a, sizeof a), loco_tensor_shape_str(x, b, sizeof b),
                                doubled ? " (twice the channels needs variance_type learned or learned_range)" : "");
    }
    /* The history and scratch tensors follow the sample; a new shape is fine between runs. */
    int same = s->shaped && s->ndim == x->ndim && s->dtype == x->dtype;
    for (int d = 0; same && d < x->ndim; d++) same = s->shape[d] == x->shape[d];
    if (!same) {
        if (s->next_call != 0)
            return loco_err_set(err, LOCO_EINVAL, "%s: sample %s changed shape in the middle of a run (reset first)",
                                fn, loco_tensor_shape_str(x, a, sizeof a));
        free_tensors(s);
        s->ndim = x->ndim;
        memcpy(s->shape, x->shape, sizeof s->shape);
        s->dtype = x->dtype;
        s->shaped = 1;
    }
    return LOCO_OK;
}

loco_status loco_scheduler_step(loco_scheduler *s, int i, const loco_tensor *model_output, loco_tensor *sample,
                                loco_torch_rng *rng, loco_err *err) {
    const char *fn = "loco_scheduler_step";
    loco_status st = check_call(s, fn, i, err);
    if (st != LOCO_OK) return st;
    if (i != s->next_call)
        return loco_err_set(err, LOCO_EINVAL, "%s: call %d given but call %d is next (%s keeps history; reset to start over)",
                            fn, i, s->next_call, loco_scheduler_kind_name(s->kind));
    if ((st = check_step_tensors(s, model_output, sample, err)) != LOCO_OK) return st;
    if ((st = s->fam->step(s, i, model_output, sample, rng, err)) != LOCO_OK) return st;
    s->next_call++;
    return LOCO_OK;
}
