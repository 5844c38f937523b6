/* test_edit.c: the closed-form solver, and LocoEdit / Diff-QuickFix / neuron edits against the
 * Python reference (tools/fixtures/refs_edits.py, diffusers forward hooks on the tiny fixtures):
 * edited weights within 1e-6 relative (DESIGN.md: closed-form edits in float64), neuron
 * selections identical, and whole generations from the edited variant within the pipeline
 * tolerances (final latents 1e-4 relative, pixels within 2/255). */
#include "edit_test_util.h"

#define W_TOL 1e-6

/* ---- solver ----------------------------------------------------------------------------------- */

static uint64_t lcg_state;
static double lcg(void) {
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / 9007199254740992.0 - 0.5;
}
static double *rnd(size_t n) {
    double *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = lcg();
    return x;
}

/* ‖(W'Kᵀ − Vᵀ)K + λ(W' − W)‖ / ‖λW + VᵀK‖: the objective's gradient at W' (0 at the optimum). */
static double kkt(const loco_ridge_problem *p, const double *w2) {
    double num = 0, den = 0;
    for (int o = 0; o < p->d_out; o++)
        for (int j = 0; j < p->d_in; j++) {
            double g = p->lambda * (w2[o * p->d_in + j] - p->w[o * p->d_in + j]), b = p->lambda * p->w[o * p->d_in + j];
            for (int i = 0; i < p->n; i++) {
                double r = -p->values[i * p->d_out + o];
                for (int q = 0; q < p->d_in; q++) r += w2[o * p->d_in + q] * p->keys[i * p->d_in + q];
                g += r * p->keys[i * p->d_in + j];
                b += p->values[i * p->d_out + o] * p->keys[i * p->d_in + j];
            }
            num += g * g;
            den += b * b;
        }
    return sqrt(num / den);
}

static double rel_diff(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / den);
}

/* tol: the forms agree to rounding times the condition of the system (1/λ-ish for tiny λ) */
static void check_forms(int d_out, int d_in, int n, double lambda, double tol) {
    lcg_state = (uint64_t)(d_out * 1000 + d_in * 10 + n);
    double *w = rnd((size_t)d_out * d_in), *k = rnd((size_t)n * d_in), *v = rnd((size_t)n * d_out);
    double *a = malloc((size_t)d_out * d_in * sizeof *a), *b = malloc((size_t)d_out * d_in * sizeof *b);
    loco_ridge_problem p = {.d_out = d_out, .d_in = d_in, .n = n, .w = w, .keys = k, .values = v, .lambda = lambda};
    loco_ridge_info ia, ib;
    loco_err e = {0};
    p.form = LOCO_SOLVE_FULL;
    int ok = loco_ridge_solve(&p, a, &ia, &e) == LOCO_OK;
    p.form = LOCO_SOLVE_PUSH_THROUGH;
    ok = ok && loco_ridge_solve(&p, b, &ib, &e) == LOCO_OK;
    if (!ok) fprintf(stderr, "%s\n", e.msg);
    /* targets instead of values: v_i = W t_i taken in the same pass over W, for both forms */
    double *t = rnd((size_t)n * d_in), *tv = malloc((size_t)n * d_out * sizeof *tv);
    double *c = malloc((size_t)d_out * d_in * sizeof *c), *c2 = malloc((size_t)d_out * d_in * sizeof *c2);
    loco_edit_project_rows(w, d_out, d_in, t, n, tv);
    loco_ridge_problem pv = p, pt = p;
    pv.values = tv;
    pt.values = NULL;
    pt.targets = t;
    double tdiff = 1;
    for (int f = LOCO_SOLVE_FULL; ok && f <= LOCO_SOLVE_PUSH_THROUGH; f++) {
        pv.form = pt.form = (loco_solve_form)f;
        ok = loco_ridge_solve(&pv, c, NULL, &e) == LOCO_OK && loco_ridge_solve(&pt, c2, NULL, &e) == LOCO_OK;
        tdiff = ok ? rel_diff(c2, c, (size_t)d_out * d_in) : 1;
        ok = ok && tdiff < tol;
    }
    free(t), free(tv), free(c), free(c2);
    double diff = ok ? rel_diff(a, b, (size_t)d_out * d_in) : 1;
    double g = ok ? kkt(&p, a) : 1;
    fprintf(stderr, "  d_out %d d_in %d n %d: full vs push-through %.2e, targets vs values %.2e, gradient %.2e, fit %.3g -> %.3g\n",
            d_out, d_in, n, diff, tdiff, g, ia.fit_before, ia.fit_after);
    free(w), free(k), free(v), free(a), free(b);
    CHECK(ok);
    CHECK(ia.form == LOCO_SOLVE_FULL && ib.form == LOCO_SOLVE_PUSH_THROUGH);
    CHECK_MSG(diff < tol, "forms differ by %.3g", diff);
    CHECK_MSG(g < 1e-10, "gradient %.3g", g);
    CHECK(ia.fit_after < ia.fit_before);
    /* the push-through form's diagnostics come from identities of its small system: they must agree
     * with the full form's direct ones */
    CHECK_MSG(fabs(ib.fit_before - ia.fit_before) <= 1e-10 * ia.fit_before, "fit before %.12g vs %.12g", ib.fit_before, ia.fit_before);
    CHECK_MSG(fabs(ib.fit_after - ia.fit_after) <= 1e-6 * ia.fit_after + 1e-12, "fit after %.12g vs %.12g", ib.fit_after, ia.fit_after);
    CHECK_MSG(fabs(ib.rel_change - ia.rel_change) <= 1e-8 * ia.rel_change, "change %.12g vs %.12g", ib.rel_change, ia.rel_change);
    CHECK(loco_solve_form_pick(LOCO_SOLVE_AUTO, n, d_in) == (n < d_in ? LOCO_SOLVE_PUSH_THROUGH : LOCO_SOLVE_FULL));
}

/* The float32-storage path against the float64 one on the same (float32-representable) W. */
static void check_f32_path(int d_out, int d_in, int n, int targets) {
    lcg_state = (uint64_t)(7 * d_out + n);
    const size_t nw = (size_t)d_out * d_in;
    double *w = rnd(nw), *k = rnd((size_t)n * d_in), *v = rnd((size_t)n * (targets ? d_in : d_out));
    float *wf = malloc(nw * sizeof *wf), *of = malloc(nw * sizeof *of);
    for (size_t i = 0; i < nw; i++) w[i] = wf[i] = (float)w[i];
    loco_ridge_problem p = {.d_out = d_out, .d_in = d_in, .n = n, .w = w, .keys = k, .lambda = 0.01,
                            .values = targets ? NULL : v, .targets = targets ? v : NULL};
    loco_ridge_info i64, i32;
    loco_err e = {0};
    double *o64 = malloc(nw * sizeof *o64);
    int ok = loco_ridge_solve(&p, o64, &i64, &e) == LOCO_OK && loco_ridge_solve_f32(&p, wf, of, &i32, &e) == LOCO_OK;
    double num = 0, den = 0;
    for (size_t i = 0; ok && i < nw; i++) {
        double r = (float)o64[i];
        num += (of[i] - r) * (of[i] - r);
        den += r * r;
    }
    fprintf(stderr, "  float32 path %dx%d n %d (%s): %.2e from the float64 path, fit %.3g vs %.3g\n", d_out, d_in, n,
            targets ? "targets" : "values", ok ? sqrt(num / den) : -1.0, i32.fit_after, i64.fit_after);
    free(w), free(k), free(v), free(wf), free(of), free(o64);
    CHECK(ok);
    CHECK(sqrt(num / den) < 1e-7);
    CHECK(fabs(i32.fit_after - i64.fit_after) <= 1e-9 * (1 + i64.fit_after));
    CHECK(fabs(i32.rel_change - i64.rel_change) <= 1e-9 * i64.rel_change);
}

TEST(solve_f32_path) {
    check_f32_path(40, 64, 4, 1);
    check_f32_path(96, 80, 12, 0);
    /* outside its domain it says so rather than solving slowly or wrongly */
    double k[2 * 3] = {1, 2, 3, 4, 5, 6}, v[2 * 3] = {0};
    float w[9] = {0}, o[9];
    loco_err e = {0};
    loco_ridge_problem p = {.d_out = 3, .d_in = 3, .n = 2, .keys = k, .values = v, .lambda = 0.1,
                            .form = LOCO_SOLVE_FULL};
    CHECK(loco_ridge_solve_f32(&p, w, o, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "push-through"));
    w[4] = NAN;
    p.form = LOCO_SOLVE_PUSH_THROUGH;
    CHECK(loco_ridge_solve_f32(&p, w, o, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "NaN"));
}

TEST(solve_forms_agree) {
    check_forms(24, 40, 4, 0.01, 1e-11);    /* LocoEdit shape: few rows */
    check_forms(32, 32, 279, 0.01, 1e-11);  /* Diff-QuickFix on the tiny encoder: more pairs than dims */
    check_forms(96, 160, 150, 0.01, 1e-11); /* several Cholesky blocks either way */
    check_forms(20, 30, 12, 1e-6, 1e-8);    /* tiny λ: still one solution, less well conditioned */
}

TEST(solve_errors) {
    double w[6] = {1, 2, 3, 4, 5, 6}, k[6] = {1, 0, 0, 0, 1, 0}, v[4] = {1, 1, 1, 1};
    double out[6];
    loco_err e = {0};
    loco_ridge_problem p = {.d_out = 2, .d_in = 3, .n = 2, .w = w, .keys = k, .values = v, .lambda = 0.0,
                            .form = LOCO_SOLVE_FULL, .what = "test.weight"};
    /* λ = 0 and 2 keys in 3 dimensions: KᵀK is singular */
    CHECK(loco_ridge_solve(&p, out, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "singular") && strstr(e.msg, "test.weight"), "%s", e.msg);
    /* ...but the push-through system K Kᵀ is regular */
    p.form = LOCO_SOLVE_PUSH_THROUGH;
    CHECK(loco_ridge_solve(&p, out, NULL, &e) == LOCO_OK);
    /* two equal keys with λ = 0: K Kᵀ singular too */
    double k2[6] = {1, 2, 3, 1, 2, 3};
    p.keys = k2;
    CHECK(loco_ridge_solve(&p, out, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "singular"), "%s", e.msg);
    p.keys = k;
    p.lambda = -1;
    CHECK(loco_ridge_solve(&p, out, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "lambda"));
    p.lambda = 0.01;
    p.n = 0;
    CHECK(loco_ridge_solve(&p, out, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "no key/value"));
    p.n = 2;
    k[1] = NAN;
    CHECK(loco_ridge_solve(&p, out, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "NaN"));
    loco_solve_form f;
    CHECK(loco_solve_form_from_name("push_through", &f) == 0 && f == LOCO_SOLVE_PUSH_THROUGH);
    CHECK(strcmp(loco_solve_form_name(LOCO_SOLVE_FULL), "full") == 0);
    CHECK(loco_solve_form_from_name("cholesky?", &f) == -1);
}

/* The solver alone on the reference's own keys/values: isolates it from the text encoders. */
TEST(solve_matches_reference_inputs) {
    loco_safetensors *r = et_ref("sd1-tiny", "quickfix");
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, "sd1-tiny") : NULL;
    CHECK(r && p);
    const char *name = "text_model.encoder.layers.0.self_attn.out_proj.weight";
    const loco_tensor *w = loco_clip_text_param(loco_pipeline_text_encoder(p, 1), name);
    int64_t nk = 0, nv = 0, nw = 0;
    double *k = et_ref_f64(r, "keys.text_encoder", &nk), *v = et_ref_f64(r, "values.text_encoder", &nv);
    char ref_name[200];
    snprintf(ref_name, sizeof ref_name, "w64.text_encoder.%s", name);
    double *want = et_ref_f64(r, ref_name, &nw);
    float *got32 = malloc((size_t)nw * sizeof *got32);
    double *got = malloc((size_t)nw * sizeof *got);
    loco_ridge_info info;
    loco_err e = {0};
    CHECK(w && k && v && want);
    /* float64 end to end: the solver on the base weight */
    float *wf = malloc((size_t)nw * sizeof *wf);
    CHECK(loco_tensor_download_f32(w, wf, &e) == LOCO_OK);
    for (int64_t i = 0; i < nw; i++) got[i] = wf[i];
    loco_ridge_problem pr = {.d_out = 32, .d_in = 32, .n = (int)(nk / 32), .w = got, .keys = k, .values = v,
                             .lambda = 0.01, .form = LOCO_SOLVE_AUTO};
    CHECK(loco_ridge_solve(&pr, got, &info, &e) == LOCO_OK); /* in place */
    double err = rel_diff(got, want, (size_t)nw);
    fprintf(stderr, "  %d pairs, %s form, in place: %.3g relative to torch.linalg.solve\n", pr.n,
            loco_solve_form_name(info.form), err);
    CHECK(err < 1e-10);
    /* the engine's per-matrix path (resident tensor in, float32 out), both forms */
    for (int f = LOCO_SOLVE_FULL; f <= LOCO_SOLVE_PUSH_THROUGH; f++) {
        CHECK(loco_edit_solve_tensor(w, k, v, pr.n, 0, 0.01, (loco_solve_form)f, name, got32, NULL, &info, &e) == LOCO_OK);
        for (int64_t i = 0; i < nw; i++) got[i] = got32[i];
        err = rel_diff(got, want, (size_t)nw);
        fprintf(stderr, "  %s form, float32 result: %.3g\n", loco_solve_form_name(info.form), err);
        CHECK(err < 1e-7);
    }
    free(k), free(v), free(want), free(got), free(got32), free(wf);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    loco_safetensors_close(r);
}

/* ---- LocoEdit --------------------------------------------------------------------------------- */

/* Compare every edited matrix listed in the reference's metadata with the variant's records. */
static int check_weights(const loco_pipeline_variant *v, const loco_safetensors *r, const char *const *names, int n,
                         loco_component comp, const char *ref_prefix, double *worst) {
    *worst = 0;
    for (int i = 0; i < n; i++) {
        const loco_variant_change *c = et_change(v, comp, names[i]);
        if (!c) {
            fprintf(stderr, "no change recorded for %s\n", names[i]);
            return -1;
        }
        char rn[400];
        snprintf(rn, sizeof rn, "%s%s", ref_prefix, names[i]);
        double e = et_rel_err(c->data, et_numel(c), r, rn);
        fprintf(stderr, "  %-72s rel %.2e\n", names[i], e);
        if (e < 0) return -1;
        if (e > *worst) *worst = e;
    }
    return 0;
}

static void locoedit_parity(const char *model, int start, int m, int generate) {
    loco_safetensors *r = et_ref(model, "locoedit");
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, model) : NULL;
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK(r && p);
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    loco_locoedit_opts o;
    loco_locoedit_opts_init(&o);
    o.concept = "van gogh";
    o.start = start;
    o.n_layers = m;
    json_t *rep = NULL;
    CHECK_MSG(loco_edit_locoedit(v, &o, &rep, &e) == LOCO_OK, "%s", e.msg);
    /* the rows themselves: positions exact, embeddings to fp32 rounding */
    json_t *last = json_object_get(rep, "subject_last");
    int64_t npos = 0;
    double *pos = et_ref_f64(r, "positions", &npos);
    CHECK(pos && (size_t)npos == json_array_size(last) + 1);
    for (size_t i = 0; i < json_array_size(last); i++) CHECK(json_integer_value(json_array_get(last, i)) == (json_int_t)pos[i]);
    CHECK(json_integer_value(json_object_get(rep, "target_position")) == (json_int_t)pos[npos - 1]);
    free(pos);
    const json_t *mats = json_object_get(rep, "matrices");
    CHECK(json_array_size(mats) == (size_t)(2 * m));
    const char *names[16];
    for (size_t i = 0; i < json_array_size(mats); i++) names[i] = json_string_value(json_object_get(json_array_get(mats, i), "name"));
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(mats, 0), "solver")), "push_through") == 0);
    double worst;
    CHECK(check_weights(v, r, names, 2 * m, LOCO_COMPONENT_UNET, "w64.", &worst) == 0);
    fprintf(stderr, "  %s LocoEdit: worst edited-weight error %.2e (tolerance %.0e)\n", model, worst, W_TOL);
    CHECK(worst <= W_TOL);
    if (generate) {
        loco_generate_params g;
        char *prompt = NULL;
        loco_generate_result res;
        CHECK(et_gen_params(r, &g, &prompt) == 0);
        CHECK_MSG(loco_pipeline_variant_generate(v, &g, &res, &e) == LOCO_OK, "%s", e.msg);
        double le = et_rel_err(res.latents, 4 * 8 * 8, r, "pipeline.final_latents");
        int px = et_image_diff(&res.images[0], r);
        fprintf(stderr, "  generation from the variant: latents rel %.2e, max pixel diff %d/255\n", le, px);
        free(prompt);
        loco_generate_result_free(&res);
        CHECK(le >= 0 && le <= 1e-4 && px <= 2);
    }
    loco_pipeline_variant_free(v);
    /* the same edit from fp32 rows (the backend's encoder): the system's conditioning turns fp32
     * rounding of the rows into a visibly larger, still small, difference */
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    o.precision = LOCO_EDIT_PRECISION_BACKEND;
    CHECK_MSG(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_OK, "%s", e.msg);
    double worst32;
    CHECK(check_weights(v, r, names, 2 * m, LOCO_COMPONENT_UNET, "w64.", &worst32) == 0);
    fprintf(stderr, "  %s LocoEdit from fp32 rows: worst error %.2e\n", model, worst32);
    CHECK(worst32 < 1e-4);
    json_decref(rep);
    loco_pipeline_variant_free(v);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    loco_safetensors_close(r);
}

TEST(locoedit_sd1) { locoedit_parity("sd1-tiny", 6, 2, 1); }
TEST(locoedit_sd2) { locoedit_parity("sd2-tiny", 5, 2, 0); }
TEST(locoedit_sdxl) { locoedit_parity("sdxl-tiny", 9, 3, 1); }

/* ---- Diff-QuickFix ----------------------------------------------------------------------------- */

static void quickfix_parity(const char *model, int generate) {
    loco_safetensors *r = et_ref(model, "quickfix");
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, model) : NULL;
    CHECK(r && p);
    const char *name = "text_model.encoder.layers.0.self_attn.out_proj.weight";
    const int xl = loco_pipeline_family(p) == LOCO_FAMILY_SDXL;
    for (int subtract = 0; subtract < 2; subtract++) {
        loco_pipeline_variant *v = NULL;
        loco_err e = {0};
        CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
        loco_quickfix_opts o;
        loco_quickfix_opts_init(&o);
        o.concept = "van gogh";
        o.value_bias = subtract ? LOCO_VALUE_BIAS_SUBTRACT : LOCO_VALUE_BIAS_KEEP;
        json_t *rep = NULL;
        CHECK_MSG(loco_edit_quickfix(v, &o, &rep, &e) == LOCO_OK, "%s", e.msg);
        for (int enc = 0; enc < (xl ? 2 : 1); enc++) {
            const loco_component comp = enc ? LOCO_COMPONENT_TEXT_ENCODER_2 : LOCO_COMPONENT_TEXT_ENCODER;
            char prefix[64];
            snprintf(prefix, sizeof prefix, "w64.%s%s.", loco_component_name(comp), subtract ? ".subtract" : "");
            double worst;
            CHECK(check_weights(v, r, &name, 1, comp, prefix, &worst) == 0);
            /* the number of pairs is the reference's (291-style count over the 4 captions) */
            int64_t nk = 0;
            char kn[64];
            snprintf(kn, sizeof kn, "keys.%s", loco_component_name(comp));
            double *k = et_ref_f64(r, kn, &nk);
            const json_t *m = json_array_get(json_object_get(rep, "matrices"), (size_t)enc);
            const int hidden = loco_clip_text_get_config(loco_pipeline_text_encoder(p, enc + 1))->hidden_size;
            CHECK(k && json_integer_value(json_object_get(m, "pairs")) == nk / hidden);
            free(k);
            fprintf(stderr, "  %s Diff-QuickFix %s (values %s bias): %lld pairs, error %.2e\n", model,
                    loco_component_name(comp), subtract ? "minus" : "with", (long long)(nk / hidden), worst);
            CHECK(worst <= W_TOL);
        }
        if (generate && !subtract) {
            loco_generate_params g;
            char *prompt = NULL;
            loco_generate_result res;
            CHECK(et_gen_params(r, &g, &prompt) == 0);
            CHECK_MSG(loco_pipeline_variant_generate(v, &g, &res, &e) == LOCO_OK, "%s", e.msg);
            double le = et_rel_err(res.latents, 4 * 8 * 8, r, "pipeline.final_latents");
            int px = et_image_diff(&res.images[0], r);
            fprintf(stderr, "  generation from the variant: latents rel %.2e, max pixel diff %d/255\n", le, px);
            free(prompt);
            loco_generate_result_free(&res);
            CHECK(le >= 0 && le <= 1e-4 && px <= 2);
        }
        json_decref(rep);
        loco_pipeline_variant_free(v);
    }
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    loco_safetensors_close(r);
}

TEST(quickfix_sd1) { quickfix_parity("sd1-tiny", 1); }
TEST(quickfix_sd2) { quickfix_parity("sd2-tiny", 0); }
TEST(quickfix_sdxl_both_encoders) { quickfix_parity("sdxl-tiny", 0); }

/* ---- neurons ------------------------------------------------------------------------------------ */

static void neurons_parity(const char *model, int generate) {
    loco_safetensors *r = et_ref(model, "neurons");
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, model) : NULL;
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK(r && p);
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    json_t *meta_p = json_loads(loco_safetensors_metadata(r, "prompts"), 0, NULL);
    json_t *meta_n = json_loads(loco_safetensors_metadata(r, "normal_prompts"), 0, NULL);
    json_t *meta_l = json_loads(loco_safetensors_metadata(r, "layers"), 0, NULL);
    const char *prompts[16], *normal[16];
    int layers[8];
    for (size_t i = 0; i < json_array_size(meta_p); i++) prompts[i] = json_string_value(json_array_get(meta_p, i));
    for (size_t i = 0; i < json_array_size(meta_n); i++) normal[i] = json_string_value(json_array_get(meta_n, i));
    for (size_t i = 0; i < json_array_size(meta_l); i++) layers[i] = (int)json_integer_value(json_array_get(meta_l, i));
    loco_neuron_opts o;
    loco_neuron_opts_init(&o);
    o.prompts = prompts;
    o.n_prompts = (int)json_array_size(meta_p);
    o.normal_prompts = normal;
    o.n_normal = (int)json_array_size(meta_n);
    o.layers = layers;
    o.n_layers = (int)json_array_size(meta_l);
    o.n_neurons = atoi(loco_safetensors_metadata(r, "neurons"));
    json_t *rep = NULL;
    CHECK_MSG(loco_edit_neurons(v, &o, &rep, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_pipeline_variant_num_ablations(v) == 2 * o.n_layers);
    CHECK(loco_pipeline_variant_num_changes(v) == 0); /* no weight changes: an inference-time edit */
    double worst_z = 0, worst_v = 0;
    for (int i = 0; i < loco_pipeline_variant_num_ablations(v); i++) {
        const loco_neuron_ablation *a = loco_pipeline_variant_ablation(v, i);
        char tag[32], nm[64];
        snprintf(tag, sizeof tag, "%d.%s", a->cross_index, a->kind == LOCO_SITE_CROSS_K ? "k" : "v");
        snprintf(nm, sizeof nm, "channels.%s", tag);
        int64_t nc = 0;
        double *ch = et_ref_f64(r, nm, &nc);
        CHECK(ch && nc == a->n);
        for (int k = 0; k < a->n; k++) CHECK_MSG(a->channels[k] == (int32_t)ch[k], "%s[%d]: %d vs %d", nm, k, a->channels[k], (int)ch[k]);
        free(ch);
        snprintf(nm, sizeof nm, "values.%s", tag);
        double ev = et_rel_err(a->values, a->n, r, nm);
        CHECK(ev >= 0);
        if (ev > worst_v) worst_v = ev;
        /* z of the selected channels from the report against the reference's full z vector */
        snprintf(nm, sizeof nm, "z.%s", tag);
        double *z = et_ref_f64(r, nm, NULL);
        const json_t *jz = json_object_get(json_array_get(json_object_get(rep, "matrices"), (size_t)i), "z");
        CHECK(z && json_array_size(jz) == (size_t)a->n);
        for (int k = 0; k < a->n; k++) {
            double d = fabs(json_real_value(json_array_get(jz, (size_t)k)) - z[a->channels[k]]) / fabs(z[a->channels[k]]);
            if (d > worst_z) worst_z = d;
        }
        free(z);
    }
    fprintf(stderr, "  %s neurons: channels identical, values rel %.2e, z rel %.2e\n", model, worst_v, worst_z);
    /* z is a ratio of small mean differences to small spreads: fp32 rows give it ~5e-6 */
    CHECK(worst_v <= W_TOL && worst_z <= 2e-5);
    if (generate) {
        loco_generate_params g;
        char *prompt = NULL;
        loco_generate_result res;
        CHECK(et_gen_params(r, &g, &prompt) == 0);
        CHECK_MSG(loco_pipeline_variant_generate(v, &g, &res, &e) == LOCO_OK, "%s", e.msg);
        double le = et_rel_err(res.latents, 4 * 8 * 8, r, "pipeline.final_latents");
        int px = et_image_diff(&res.images[0], r);
        fprintf(stderr, "  generation with the ablation hooks: latents rel %.2e, max pixel diff %d/255\n", le, px);
        free(prompt);
        loco_generate_result_free(&res);
        CHECK(le >= 0 && le <= 1e-4 && px <= 2);
    }
    json_decref(meta_p);
    json_decref(meta_n);
    json_decref(meta_l);
    json_decref(rep);
    loco_pipeline_variant_free(v);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    loco_safetensors_close(r);
}

TEST(neurons_sd1) { neurons_parity("sd1-tiny", 1); }
TEST(neurons_sdxl) { neurons_parity("sdxl-tiny", 0); }
