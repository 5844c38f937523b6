/* edit_solve.c: float64 ridge closed forms (see edit_solve.h). Level-3 BLAS does the work; the
 * Cholesky is a blocked right-looking one written here (dsyrk/dtrsm on panels, a small unblocked
 * kernel on the diagonal blocks) so that loco depends on BLAS only, not on a LAPACK ABI. */
#include "edit_solve.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const form_names[LOCO_SOLVE_FORM_COUNT] = {"auto", "full", "push_through"};

const char *loco_solve_form_name(loco_solve_form f) {
    return (unsigned)f < LOCO_SOLVE_FORM_COUNT ? form_names[f] : "unknown";
}

int loco_solve_form_from_name(const char *name, loco_solve_form *out) {
    for (int i = 0; name && i < LOCO_SOLVE_FORM_COUNT; i++)
        if (strcmp(name, form_names[i]) == 0) {
            *out = (loco_solve_form)i;
            return 0;
        }
    if (name && (strcmp(name, "push-through") == 0 || strcmp(name, "woodbury") == 0)) {
        *out = LOCO_SOLVE_PUSH_THROUGH;
        return 0;
    }
    return -1;
}

loco_solve_form loco_solve_form_pick(loco_solve_form f, int n, int d_in) {
    if (f == LOCO_SOLVE_FULL || f == LOCO_SOLVE_PUSH_THROUGH) return f;
    return n < d_in ? LOCO_SOLVE_PUSH_THROUGH : LOCO_SOLVE_FULL;
}

void loco_edit_project_rows(const double *w, int d_out, int d_in, const double *x, int n, double *y) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d_out, d_in, 1.0, x, d_in, w, d_in, 0.0, y, d_out);
}

/* ---- Cholesky A = L Lᵀ, row-major, L in the lower triangle ------------------------------------- */

/* Unblocked on a b × b diagonal block with leading dimension ld. Returns the first failing
 * column + 1, or 0. */
static int chol_block(double *a, int b, int ld) {
    for (int j = 0; j < b; j++) {
        double *rj = a + (size_t)j * ld;
        double d = rj[j];
        for (int p = 0; p < j; p++) d -= rj[p] * rj[p];
        if (!(d > 0.0) || !isfinite(d)) return j + 1;
        d = sqrt(d);
        rj[j] = d;
        for (int i = j + 1; i < b; i++) {
            double *ri = a + (size_t)i * ld;
            double s = ri[j];
            for (int p = 0; p < j; p++) s -= ri[p] * rj[p];
            ri[j] = s / d;
        }
    }
    return 0;
}

#define CHOL_NB 64

/* Returns 0, or the 1-based index of the pivot that was not positive. */
static int cholesky(double *a, int n) {
    for (int k = 0; k < n; k += CHOL_NB) {
        int b = n - k < CHOL_NB ? n - k : CHOL_NB;
        double *a11 = a + (size_t)k * n + k;
        int bad = chol_block(a11, b, n);
        if (bad) return k + bad;
        int rest = n - k - b;
        if (rest > 0) {
            double *a21 = a + (size_t)(k + b) * n + k;
            double *a22 = a + (size_t)(k + b) * n + (k + b);
            /* L21 = A21 L11⁻ᵀ, then the trailing update A22 -= L21 L21ᵀ (lower part only) */
            cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, rest, b, 1.0, a11, n, a21, n);
            cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, rest, b, -1.0, a21, n, 1.0, a22, n);
        }
    }
    return 0;
}

/* Factor the SPD system (n × n) or say why not. */
static loco_status factor(double *a, int n, const char *system, const char *what, double *rcond, loco_err *err) {
    int bad = cholesky(a, n);
    if (bad)
        return loco_err_set(err, LOCO_EINVAL,
                            "%s%s%s is singular (pivot %d of %d is not positive): the keys are linearly dependent "
                            "or too few for lambda = 0; use lambda > 0",
                            what ? what : "", what ? ": " : "", system, bad, n);
    double lo = INFINITY, hi = 0.0;
    for (int i = 0; i < n; i++) {
        double d = a[(size_t)i * n + i];
        if (d < lo) lo = d;
        if (d > hi) hi = d;
    }
    *rcond = (lo / hi) * (lo / hi);
    if (!(*rcond >= LOCO_SOLVE_MIN_RCOND))
        return loco_err_set(err, LOCO_EINVAL,
                            "%s%s%s is numerically singular (reciprocal condition ~%.3g < %.0e): increase lambda or "
                            "use keys that are not (nearly) linearly dependent",
                            what ? what : "", what ? ": " : "", system, *rcond, LOCO_SOLVE_MIN_RCOND);
    return LOCO_OK;
}

static int all_finite(const double *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* Σ ‖W k_i − v_i‖², with scratch [n, d_out]. */
static double fit(const loco_ridge_problem *p, const double *w, double *scratch) {
    const size_t nv = (size_t)p->n * p->d_out;
    memcpy(scratch, p->values, nv * sizeof *scratch);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->n, p->d_out, p->d_in, 1.0, p->keys, p->d_in, w, p->d_in,
                -1.0, scratch, p->d_out);
    double s = 0;
    for (size_t i = 0; i < nv; i++) s += scratch[i] * scratch[i];
    return s;
}

static double sumsq(const double *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

/* Full form. W' is formed in its own buffer, so the diagnostics can still read W (w_out may
 * alias it: it is written last). */
static loco_status solve_full(const loco_ridge_problem *p0, double *w_out, loco_ridge_info *info, loco_err *err) {
    loco_ridge_problem pv = *p0, *p = &pv;
    const int d = p->d_in, o = p->d_out, n = p->n;
    const size_t nw = (size_t)o * d;
    double *A = malloc((size_t)d * d * sizeof *A);
    double *B = malloc(nw * sizeof *B);
    double *scratch = malloc((size_t)n * o * sizeof *scratch);
    double *vals = p->values ? NULL : malloc((size_t)n * o * sizeof *vals);
    loco_status st = LOCO_OK;
    if (!A || !B || !scratch || (!p->values && !vals)) {
        st = loco_err_set(err, LOCO_ENOMEM, "edit solve: out of memory for a %d x %d system", d, d);
        goto done;
    }
    if (!p->values) {
        loco_edit_project_rows(p->w, o, d, p->targets, n, vals);
        p->values = vals;
    }
    info->fit_before = fit(p, p->w, scratch);
    /* A = λ I + KᵀK (lower triangle) */
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, d, n, 1.0, p->keys, d, 0.0, A, d);
    for (int i = 0; i < d; i++) A[(size_t)i * d + i] += p->lambda;
    /* B = λ W + VᵀK */
    memcpy(B, p->w, nw * sizeof *B);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o, d, n, 1.0, p->values, o, p->keys, d, p->lambda, B, d);
    if ((st = factor(A, d, "lambda I + K^T K", p->what, &info->rcond, err))) goto done;
    /* W' A = B with A = L Lᵀ: solve Y Lᵀ = B, then W' L = Y */
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, o, d, 1.0, A, d, B, d);
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, o, d, 1.0, A, d, B, d);
    info->fit_after = fit(p, B, scratch);
    double dn = 0;
    for (size_t i = 0; i < nw; i++) dn += (B[i] - p->w[i]) * (B[i] - p->w[i]);
    info->delta_sq = dn;
    memcpy(w_out, B, nw * sizeof *B);
done:
    free(A);
    free(B);
    free(scratch);
    free(vals);
    return st;
}

/* The float32-storage kernels work row by row: a row of W is widened to float64 once (it stays
 * in L1/L2) and every product runs on contiguous float64 arrays. The Makefile builds for baseline
 * x86-64, so the two row kernels are also compiled for AVX2 and AVX-512 and picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define ROW_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ROW_KERNEL
#endif

/* dots[k] = K_k · w and dots[n + k] = T_k · w (T may be NULL); returns w · w. Four products per
 * sweep over the row: independent accumulators keep the FMA units busy, and the row is read once
 * per four. */
ROW_KERNEL static double row_dots(const float *wr, int d, const double *K, const double *T, int n, double *wd,
                                  double *dots) {
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int j = 0; j < d; j++) {
        wd[j] = wr[j];
        ss += wd[j] * wd[j];
    }
    const int m = T ? 2 * n : n;
#define ROW(k) ((k) < n ? K + (size_t)(k) * d : T + (size_t)((k) - n) * d)
    int k = 0;
    for (; k + 4 <= m; k += 4) {
        const double *r0 = ROW(k), *r1 = ROW(k + 1), *r2 = ROW(k + 2), *r3 = ROW(k + 3);
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int j = 0; j < d; j++) {
            const double x = wd[j];
            a0 += r0[j] * x;
            a1 += r1[j] * x;
            a2 += r2[j] * x;
            a3 += r3[j] * x;
        }
        dots[k] = a0, dots[k + 1] = a1, dots[k + 2] = a2, dots[k + 3] = a3;
    }
    for (; k < m; k++) {
        const double *r = ROW(k);
        double a = 0;
#pragma omp simd reduction(+ : a)
        for (int j = 0; j < d; j++) a += r[j] * wd[j];
        dots[k] = a;
    }
#undef ROW
    return ss;
}

/* out = (float)(w + Σ_k z[k·stride] K_k), four keys per sweep. */
ROW_KERNEL static void row_update(const float *wr, int d, const double *K, int n, const double *z, size_t stride,
                                  double *wd, float *out) {
#pragma omp simd
    for (int j = 0; j < d; j++) wd[j] = wr[j];
    int k = 0;
    for (; k + 4 <= n; k += 4) {
        const double z0 = z[(size_t)k * stride], z1 = z[(size_t)(k + 1) * stride], z2 = z[(size_t)(k + 2) * stride],
                     z3 = z[(size_t)(k + 3) * stride];
        const double *k0 = K + (size_t)k * d, *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
#pragma omp simd
        for (int j = 0; j < d; j++) wd[j] += z0 * k0[j] + z1 * k1[j] + z2 * k2[j] + z3 * k3[j];
    }
    for (; k < n; k++) {
        const double zk = z[(size_t)k * stride], *kr = K + (size_t)k * d;
#pragma omp simd
        for (int j = 0; j < d; j++) wd[j] += zk * kr[j];
    }
#pragma omp simd
    for (int j = 0; j < d; j++) out[j] = (float)wd[j];
}

/* E = V − K Wᵀ (values given) or T Wᵀ − K Wᵀ (targets) from float32 W in one pass; returns ‖W‖²,
 * or NaN when a scratch row could not be allocated. One thread on purpose: the pass is memory
 * bound, and an OpenMP team on a busy machine (barriers with descheduled threads) measured 5-20x
 * slower than the single thread here. */
static double residuals_f32(const loco_ridge_problem *p, const float *w, double *E) {
    const int d = p->d_in, o = p->d_out, n = p->n;
    double *wd = malloc((size_t)d * sizeof *wd), *dots = malloc((size_t)2 * n * sizeof *dots);
    double wss = 0;
    if (!wd || !dots) {
        wss = NAN;
    } else {
        for (int i = 0; i < o; i++) {
            wss += row_dots(w + (size_t)i * d, d, p->keys, p->targets, n, wd, dots);
            for (int k = 0; k < n; k++)
                E[(size_t)k * o + i] = (p->targets ? dots[n + k] : p->values[(size_t)k * o + i]) - dots[k];
        }
    }
    free(wd);
    free(dots);
    return wss;
}

/* W' = W + Zᵀ K from float32 W to float32 W' (w_out may equal w), in float64, one pass. */
static int update_f32(const loco_ridge_problem *p, const double *Z, const float *w, float *w_out) {
    const int d = p->d_in, o = p->d_out, n = p->n;
    double *wd = malloc((size_t)d * sizeof *wd);
    if (!wd) return -1;
    for (int i = 0; i < o; i++) row_update(w + (size_t)i * d, d, p->keys, n, Z + i, (size_t)o, wd, w_out + (size_t)i * d);
    free(wd);
    return 0;
}

/* Push-through form: only n × n and n × d_out systems besides two passes over W (E = V − K Wᵀ
 * and the rank-n update), so the diagnostics come from small matrices too:
 *   residuals after:  W'K ᵀ − Vᵀ  ->  rows R = S Z − E = −λ Z   with S = K Kᵀ
 *   ‖W' − W‖²        =  ‖Zᵀ K‖²  =  trace(Zᵀ S Z) = ⟨Z, E⟩ − λ ‖Z‖².
 * W comes either as float64 (w64, BLAS passes) or float32 (w32, the two passes above, for few
 * pairs: it never needs a float64 copy of W); W' goes to out64 or out32 the same way. */
static loco_status solve_push_through(const loco_ridge_problem *p, const double *w64, const float *w32, double *out64,
                                      float *out32, double *wss, loco_ridge_info *info, loco_err *err) {
    const int d = p->d_in, o = p->d_out, n = p->n;
    double *S = malloc((size_t)n * n * sizeof *S), *G = malloc((size_t)n * n * sizeof *G);
    double *E = malloc((size_t)n * o * sizeof *E), *Z = malloc((size_t)n * o * sizeof *Z);
    const int stack = w64 && !p->values;
    double *KT = stack ? malloc((size_t)2 * n * d * sizeof *KT) : NULL;
    double *P = stack ? malloc((size_t)2 * n * o * sizeof *P) : NULL;
    loco_status st = LOCO_OK;
    if (!S || !G || !E || !Z || (stack && (!KT || !P))) {
        st = loco_err_set(err, LOCO_ENOMEM, "edit solve: out of memory for a %d x %d system", n, n);
        goto done;
    }
    /* S = K Kᵀ (full, for the diagnostics), G = S + λ I_n; E = V − K Wᵀ (the old weight's residuals) */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0, p->keys, d, p->keys, d, 0.0, S, n);
    memcpy(G, S, (size_t)n * n * sizeof *G);
    for (int i = 0; i < n; i++) G[(size_t)i * n + i] += p->lambda;
    if (w32) {
        *wss = residuals_f32(p, w32, E);
        if (!isfinite(*wss)) {
            st = loco_err_set(err, LOCO_EINVAL, "%s: the weight contains NaN or Inf (or no memory for a row)",
                              p->what ? p->what : "edit solve");
            goto done;
        }
    } else if (p->values) {
        memcpy(E, p->values, (size_t)n * o * sizeof *E);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, o, d, -1.0, p->keys, d, w64, d, 1.0, E, o);
    } else {
        /* [K; T] Wᵀ in one pass over W: the old outputs of the keys and the values W t */
        memcpy(KT, p->keys, (size_t)n * d * sizeof *KT);
        memcpy(KT + (size_t)n * d, p->targets, (size_t)n * d * sizeof *KT);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 2 * n, o, d, 1.0, KT, d, w64, d, 0.0, P, o);
        for (size_t i = 0; i < (size_t)n * o; i++) E[i] = P[(size_t)n * o + i] - P[i];
    }
    info->fit_before = sumsq(E, (size_t)n * o);
    if ((st = factor(G, n, "K K^T + lambda I", p->what, &info->rcond, err))) goto done;
    /* Z = G⁻¹ E */
    memcpy(Z, E, (size_t)n * o * sizeof *Z);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, n, o, 1.0, G, n, Z, o);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, n, o, 1.0, G, n, Z, o);
    /* diagnostics from the solve itself: (S + λI) Z = E gives S Z − E = −λ Z, so
     *   fit after  = ‖S Z − E‖² = λ² ‖Z‖²
     *   ‖W' − W‖²  = trace(Zᵀ S Z) = ⟨Z, E⟩ − λ ‖Z‖²
     * (no n × n × d_out products: with Diff-QuickFix's ~300 pairs those cost a quarter of the solve) */
    double zz = 0, ze = 0;
    for (size_t i = 0; i < (size_t)n * o; i++) {
        zz += Z[i] * Z[i];
        ze += Z[i] * E[i];
    }
    info->fit_after = p->lambda * p->lambda * zz;
    info->delta_sq = ze - p->lambda * zz > 0 ? ze - p->lambda * zz : 0;
    if (!isfinite(info->fit_after) || !isfinite(info->delta_sq)) goto done; /* the caller reports it */
    /* W' = W + Zᵀ K */
    if (out32) {
        if (update_f32(p, Z, w32, out32)) st = loco_err_set(err, LOCO_ENOMEM, "edit solve: out of memory for a row");
    } else {
        if (out64 != w64) memcpy(out64, w64, (size_t)o * d * sizeof *out64);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o, d, n, 1.0, Z, o, p->keys, d, 1.0, out64, d);
    }
done:
    free(S);
    free(G);
    free(E);
    free(Z);
    free(KT);
    free(P);
    return st;
}

/* Everything but W. */
static loco_status check_problem(const loco_ridge_problem *p, loco_err *err) {
    if (!p || !p->keys || (!p->values && !p->targets))
        return loco_err_set(err, LOCO_EINVAL, "edit solve: weight, keys, values (or targets) and output are required");
    const char *what = p->what ? p->what : "edit solve";
    if (p->d_out <= 0 || p->d_in <= 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: weight shape %d x %d is empty", what, p->d_out, p->d_in);
    if (p->n <= 0) return loco_err_set(err, LOCO_EINVAL, "%s: no key/value pairs to fit", what);
    if (!(p->lambda >= 0.0) || !isfinite(p->lambda))
        return loco_err_set(err, LOCO_EINVAL, "%s: lambda must be a finite number >= 0, got %g", what, p->lambda);
    if ((unsigned)p->form >= LOCO_SOLVE_FORM_COUNT) return loco_err_set(err, LOCO_EINVAL, "%s: unknown solver form", what);
    if (!all_finite(p->keys, (size_t)p->n * p->d_in) ||
        (p->values ? !all_finite(p->values, (size_t)p->n * p->d_out) : !all_finite(p->targets, (size_t)p->n * p->d_in)))
        return loco_err_set(err, LOCO_EINVAL, "%s: the keys or values contain NaN or Inf", what);
    return LOCO_OK;
}

static loco_status finish(const loco_ridge_problem *p, double wnorm, loco_ridge_info *info, loco_err *err) {
    if (!isfinite(info->fit_after) || !isfinite(info->delta_sq))
        return loco_err_set(err, LOCO_EINVAL, "%s: the solution is not finite (system too ill-conditioned)",
                            p->what ? p->what : "edit solve");
    info->rel_change = wnorm > 0 ? sqrt(info->delta_sq / wnorm) : sqrt(info->delta_sq);
    return LOCO_OK;
}

loco_status loco_ridge_solve(const loco_ridge_problem *p, double *w_out, loco_ridge_info *info, loco_err *err) {
    loco_status st = check_problem(p, err);
    if (st) return st;
    const char *what = p->what ? p->what : "edit solve";
    if (!w_out || !p->w) return loco_err_set(err, LOCO_EINVAL, "%s: weight and output are required", what);
    const size_t nw = (size_t)p->d_out * p->d_in;
    /* finiteness and norm of W: one pass, unless the caller made it while converting W */
    double wnorm = p->w_sumsq;
    if (!(wnorm > 0)) {
        wnorm = 0;
        for (size_t i = 0; i < nw; i++) wnorm += p->w[i] * p->w[i];
    }
    if (!isfinite(wnorm)) return loco_err_set(err, LOCO_EINVAL, "%s: the weight contains NaN or Inf", what);
    loco_ridge_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    info->form = loco_solve_form_pick(p->form, p->n, p->d_in);
    double wss = 0;
    st = info->form == LOCO_SOLVE_FULL ? solve_full(p, w_out, info, err)
                                       : solve_push_through(p, p->w, NULL, w_out, NULL, &wss, info, err);
    return st ? st : finish(p, wnorm, info, err);
}

loco_status loco_ridge_solve_f32(const loco_ridge_problem *p, const float *w, float *w_out, loco_ridge_info *info,
                                 loco_err *err) {
    loco_status st = check_problem(p, err);
    if (st) return st;
    const char *what = p->what ? p->what : "edit solve";
    if (!w || !w_out) return loco_err_set(err, LOCO_EINVAL, "%s: weight and output are required", what);
    if (loco_solve_form_pick(p->form, p->n, p->d_in) != LOCO_SOLVE_PUSH_THROUGH || p->n > LOCO_SOLVE_F32_MAX_PAIRS)
        return loco_err_set(err, LOCO_EINVAL, "%s: the float32 path is the push-through form for at most %d pairs", what,
                            LOCO_SOLVE_F32_MAX_PAIRS);
    loco_ridge_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    info->form = LOCO_SOLVE_PUSH_THROUGH;
    double wss = 0;
    st = solve_push_through(p, NULL, w, NULL, w_out, &wss, info, err);
    return st ? st : finish(p, wss, info, err);
}
