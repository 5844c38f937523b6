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

static loco_status solve_full(const loco_ridge_problem *p, double *w_out, double *rcond, loco_err *err) {
    const int d = p->d_in, o = p->d_out, n = p->n;
    double *A = malloc((size_t)d * d * sizeof *A);
    double *B = malloc((size_t)o * d * sizeof *B);
    loco_status st = LOCO_OK;
    if (!A || !B) {
        st = loco_err_set(err, LOCO_ENOMEM, "edit solve: out of memory for a %d x %d system", d, d);
        goto done;
    }
    /* A = λ I + KᵀK (lower triangle) */
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, d, n, 1.0, p->keys, d, 0.0, A, d);
    for (int i = 0; i < d; i++) A[(size_t)i * d + i] += p->lambda;
    /* B = λ W + VᵀK */
    memcpy(B, p->w, (size_t)o * d * sizeof *B);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o, d, n, 1.0, p->values, o, p->keys, d, p->lambda, B, d);
    if ((st = factor(A, d, "lambda I + K^T K", p->what, rcond, err))) goto done;
    /* W' A = B with A = L Lᵀ: solve Y Lᵀ = B, then W' L = Y */
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, o, d, 1.0, A, d, B, d);
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, o, d, 1.0, A, d, B, d);
    memcpy(w_out, B, (size_t)o * d * sizeof *B);
done:
    free(A);
    free(B);
    return st;
}

static loco_status solve_push_through(const loco_ridge_problem *p, double *w_out, double *rcond, loco_err *err) {
    const int d = p->d_in, o = p->d_out, n = p->n;
    double *G = malloc((size_t)n * n * sizeof *G);
    double *E = malloc((size_t)n * o * sizeof *E);
    loco_status st = LOCO_OK;
    if (!G || !E) {
        st = loco_err_set(err, LOCO_ENOMEM, "edit solve: out of memory for a %d x %d system", n, n);
        goto done;
    }
    /* G = K Kᵀ + λ I_n; E = V − K Wᵀ (the residuals of the old weight) */
    cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, n, d, 1.0, p->keys, d, 0.0, G, n);
    for (int i = 0; i < n; i++) G[(size_t)i * n + i] += p->lambda;
    memcpy(E, p->values, (size_t)n * o * sizeof *E);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, o, d, -1.0, p->keys, d, p->w, d, 1.0, E, o);
    if ((st = factor(G, n, "K K^T + lambda I", p->what, rcond, err))) goto done;
    /* Z = G⁻¹ E, then W' = W + Zᵀ K */
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, n, o, 1.0, G, n, E, o);
    cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, n, o, 1.0, G, n, E, o);
    if (w_out != p->w) memcpy(w_out, p->w, (size_t)o * d * sizeof *w_out);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o, d, n, 1.0, E, o, p->keys, d, 1.0, w_out, d);
done:
    free(G);
    free(E);
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
    if (!all_finite(p->w, (size_t)p->d_out * p->d_in))
        return loco_err_set(err, LOCO_EINVAL, "%s: the weight contains NaN or Inf", what);

    const loco_solve_form form = loco_solve_form_pick(p->form, p->n, p->d_in);
    double *scratch = NULL;
    const size_t nw = (size_t)p->d_out * p->d_in;
    double before = 0, wnorm = 0, *w_copy = NULL;
    if (info) {
        scratch = malloc((size_t)p->n * p->d_out * sizeof *scratch);
        w_copy = w_out == p->w ? malloc(nw * sizeof *w_copy) : NULL;
        if (!scratch || (w_out == p->w && !w_copy)) {
            free(scratch);
            free(w_copy);
            return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", what);
        }
        before = fit(p, p->w, scratch);
        for (size_t i = 0; i < nw; i++) wnorm += p->w[i] * p->w[i];
        if (w_copy) memcpy(w_copy, p->w, nw * sizeof *w_copy);
    }
    double rcond = 0;
    loco_status st = form == LOCO_SOLVE_FULL ? solve_full(p, w_out, &rcond, err)
                                             : solve_push_through(p, w_out, &rcond, err);
    if (!st && !all_finite(w_out, nw))
        st = loco_err_set(err, LOCO_EINVAL, "%s: the solution is not finite (system too ill-conditioned)", what);
    if (!st && info) {
        const double *w_old = w_copy ? w_copy : p->w;
        double dn = 0;
        for (size_t i = 0; i < nw; i++) dn += (w_out[i] - w_old[i]) * (w_out[i] - w_old[i]);
        info->form = form;
        info->rcond = rcond;
        info->fit_before = before;
        info->fit_after = fit(p, w_out, scratch);
        info->rel_change = wnorm > 0 ? sqrt(dn / wnorm) : sqrt(dn);
    }
    free(scratch);
    free(w_copy);
    return st;
}
