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
static loco_status solve_full(const loco_ridge_problem *p, double *w_out, loco_ridge_info *info, loco_err *err) {
    const int d = p->d_in, o = p->d_out, n = p->n;
    const size_t nw = (size_t)o * d;
    double *A = malloc((size_t)d * d * sizeof *A);
    double *B = malloc(nw * sizeof *B);
    double *scratch = malloc((size_t)n * o * sizeof *scratch);
    loco_status st = LOCO_OK;
    if (!A || !B || !scratch) {
        st = loco_err_set(err, LOCO_ENOMEM, "edit solve: out of memory for a %d x %d system", d, d);
        goto done;
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
    return st;
}

/* Push-through form: only n × n and n × d_out systems besides two passes over W (E = V − K Wᵀ
 * and the rank-n update), so the diagnostics come from small matrices too:
 *   residuals after:  W'K ᵀ − Vᵀ  ->  rows R = S Z − E  with S = K Kᵀ
 *   ‖W' − W‖²        =  ‖Zᵀ K‖²  =  trace((Z Zᵀ) S). */
static loco_status solve_push_through(const loco_ridge_problem *p, double *w_out, loco_ridge_info *info,
                                      loco_err *err) {
    const int d = p->d_in, o = p->d_out, n = p->n;
    double *S = malloc((size_t)n * n * sizeof *S), *G = malloc((size_t)n * n * sizeof *G);
    double *E = malloc((size_t)n * o * sizeof *E), *Z = malloc((size_t)n * o * sizeof *Z);
    double *ZZ = malloc((size_t)n * n * sizeof *ZZ);
    loco_status st = LOCO_OK;
    if (!S || !G || !E || !Z || !ZZ) {
        st = loco_err_set(err, LOCO_ENOMEM, "edit solve: out of memory for a %d x %d system", n, n);
        goto done;
    }
    /* S = K Kᵀ (full, for the diagnostics), G = S + λ I_n; E = V − K Wᵀ (the old weight's residuals) */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0, p->keys, d, p->keys, d, 0.0, S, n);
    memcpy(G, S, (size_t)n * n * sizeof *G);
    for (int i = 0; i < n; i++) G[(size_t)i * n + i] += p->lambda;
    memcpy(E, p->values, (size_t)n * o * sizeof *E);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, o, d, -1.0, p->keys, d, p->w, d, 1.0, E, o);
    info->fit_before = sumsq(E, (size_t)n * o);
    if ((st = factor(G, n, "K K^T + lambda I", p->what, &info->rcond, err))) goto done;
    /* Z = G⁻¹ E */
    memcpy(Z, E, (size_t)n * o * sizeof *Z);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, n, o, 1.0, G, n, Z, o);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, n, o, 1.0, G, n, Z, o);
    /* diagnostics before W is overwritten (w_out may alias it) */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, o, n, 1.0, S, n, Z, o, -1.0, E, o); /* E := S Z − E */
    info->fit_after = sumsq(E, (size_t)n * o);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, o, 1.0, Z, o, Z, o, 0.0, ZZ, n);
    double dn = 0;
    for (size_t i = 0; i < (size_t)n * n; i++) dn += ZZ[i] * S[i];
    info->delta_sq = dn > 0 ? dn : 0;
    /* W' = W + Zᵀ K */
    if (w_out != p->w) memcpy(w_out, p->w, (size_t)o * d * sizeof *w_out);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o, d, n, 1.0, Z, o, p->keys, d, 1.0, w_out, d);
done:
    free(S);
    free(G);
    free(E);
    free(Z);
    free(ZZ);
    return st;
}

loco_status loco_ridge_solve(const loco_ridge_problem *p, double *w_out, loco_ridge_info *info, loco_err *err) {
    if (!p || !w_out || !p->w || !p->keys || !p->values)
        return loco_err_set(err, LOCO_EINVAL, "edit solve: weight, keys, values and output are required");
    const char *what = p->what ? p->what : "edit solve";
    if (p->d_out <= 0 || p->d_in <= 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: weight shape %d x %d is empty", what, p->d_out, p->d_in);
    if (p->n <= 0) return loco_err_set(err, LOCO_EINVAL, "%s: no key/value pairs to fit", what);
    if (!(p->lambda >= 0.0) || !isfinite(p->lambda))
        return loco_err_set(err, LOCO_EINVAL, "%s: lambda must be a finite number >= 0, got %g", what, p->lambda);
    if ((unsigned)p->form >= LOCO_SOLVE_FORM_COUNT) return loco_err_set(err, LOCO_EINVAL, "%s: unknown solver form", what);
    if (!all_finite(p->keys, (size_t)p->n * p->d_in) || !all_finite(p->values, (size_t)p->n * p->d_out))
        return loco_err_set(err, LOCO_EINVAL, "%s: the keys or values contain NaN or Inf", what);
    const size_t nw = (size_t)p->d_out * p->d_in;
    /* one pass over W: finiteness and its norm */
    double wnorm = 0;
    for (size_t i = 0; i < nw; i++) wnorm += p->w[i] * p->w[i];
    if (!isfinite(wnorm)) return loco_err_set(err, LOCO_EINVAL, "%s: the weight contains NaN or Inf", what);
    loco_ridge_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    info->form = loco_solve_form_pick(p->form, p->n, p->d_in);
    loco_status st = info->form == LOCO_SOLVE_FULL ? solve_full(p, w_out, info, err)
                                                   : solve_push_through(p, w_out, info, err);
    if (st) return st;
    if (!isfinite(info->fit_after) || !isfinite(info->delta_sq))
        return loco_err_set(err, LOCO_EINVAL, "%s: the solution is not finite (system too ill-conditioned)", what);
    info->rel_change = wnorm > 0 ? sqrt(info->delta_sq / wnorm) : sqrt(info->delta_sq);
    return LOCO_OK;
}
