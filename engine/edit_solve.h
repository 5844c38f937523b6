/* edit_solve.h: the closed form shared by Diff-QuickFix and LocoEdit, in float64.
 *
 * Given a weight W (d_out × d_in, PyTorch layout: y = W x), n key/value pairs (k_i ∈ R^d_in,
 * v_i ∈ R^d_out) and λ >= 0, the edit minimises
 *
 *     Σ_i ‖W' k_i − v_i‖² + λ ‖W' − W‖_F²
 *
 * whose solution is W' = (λ W + Σ v kᵀ)(λ I + Σ k kᵀ)⁻¹ (reference/methods.md §3.2). LocoEdit is
 * the same problem with k_i = x_orig,i and v_i = W x_target,i (§5.1). Two equivalent ways to get it:
 *
 *   full:          factor A = λ I_d + KᵀK (d_in × d_in) by Cholesky and solve W' A = λ W + VᵀK;
 *   push_through:  W' = W + (V − K Wᵀ)ᵀ (K Kᵀ + λ I_n)⁻¹ K, an n × n Cholesky (Woodbury).
 *
 * AUTO picks push_through when n < d_in (LocoEdit's 4 rows, Diff-QuickFix on wide encoders) and
 * full otherwise; both give the same W' to rounding (tests/unit/test_edit_solve.c). Either system
 * that is not numerically positive definite (λ = 0 with too few or dependent keys, NaN input)
 * is refused with LOCO_EINVAL naming the system, never solved into garbage. */
#ifndef LOCO_EDIT_SOLVE_H
#define LOCO_EDIT_SOLVE_H

#include "base.h"

typedef enum loco_solve_form {
    LOCO_SOLVE_AUTO = 0,
    LOCO_SOLVE_FULL,
    LOCO_SOLVE_PUSH_THROUGH,
    LOCO_SOLVE_FORM_COUNT
} loco_solve_form;

const char *loco_solve_form_name(loco_solve_form f); /* "auto", "full", "push_through" */
int loco_solve_form_from_name(const char *name, loco_solve_form *out); /* 0 ok, -1 unknown */

/* The form AUTO resolves to for n pairs of d_in-dimensional keys. */
loco_solve_form loco_solve_form_pick(loco_solve_form f, int n, int d_in);

/* A reciprocal condition number above which a factored system is refused: past it float64
 * carries fewer than ~4 correct digits into W'. */
#define LOCO_SOLVE_MIN_RCOND 1e-12

typedef struct loco_ridge_problem {
    int d_out, d_in, n;
    const double *w;       /* [d_out, d_in] */
    const double *keys;    /* [n, d_in], one key per row */
    const double *values;  /* [n, d_out], one value per row; or NULL with targets: */
    const double *targets; /* [n, d_in]: v_i = W t_i (LocoEdit), computed with the same pass over W */
    double lambda;         /* >= 0 */
    loco_solve_form form;
    const char *what;      /* names the weight in error messages ("...attn2.to_k.weight"); may be NULL */
    double w_sumsq;        /* ‖W‖² when the caller has it (> 0, W checked finite); 0: computed here */
} loco_ridge_problem;

typedef struct loco_ridge_info {
    loco_solve_form form; /* the form used */
    double rcond;         /* estimate of 1/cond of the factored system (from the Cholesky diagonal) */
    double fit_before;    /* Σ ‖W k_i − v_i‖² */
    double fit_after;     /* Σ ‖W' k_i − v_i‖² */
    double rel_change;    /* ‖W' − W‖_F / ‖W‖_F */
    double delta_sq;      /* ‖W' − W‖_F² */
} loco_ridge_info;

/* Write W' ([d_out, d_in]) to w_out, which may be p->w itself (solved in place, saving a copy of
 * W). info may be NULL. The W' finiteness check is a cheap proxy: the fit and the change, which
 * are finite exactly when the update is. */
loco_status loco_ridge_solve(const loco_ridge_problem *p, double *w_out, loco_ridge_info *info, loco_err *err);

/* The same for a float32 W in and W' out, for the push-through form with few pairs (LocoEdit's
 * rows): two passes over W in float32 storage with every sum in float64, and no float64 copy of
 * W. Equal to loco_ridge_solve on the float64 copy of W, rounded once (p->w is ignored; w_out may
 * equal w). LOCO_EINVAL when the form is not push-through or n > LOCO_SOLVE_F32_MAX_PAIRS, where
 * the BLAS path of loco_ridge_solve is the faster one. */
#define LOCO_SOLVE_F32_MAX_PAIRS 32
loco_status loco_ridge_solve_f32(const loco_ridge_problem *p, const float *w, float *w_out, loco_ridge_info *info,
                                 loco_err *err);

/* y[r] = W x[r] for n rows: W [d_out, d_in], x [n, d_in], y [n, d_out] (LocoEdit's values). */
void loco_edit_project_rows(const double *w, int d_out, int d_in, const double *x, int n, double *y);

#endif
