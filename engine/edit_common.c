/* edit_common.c: names, defaults, subject spans, conditioning rows and the per-matrix solve shared
 * by the three edit methods. */
#include <stdlib.h>
#include <string.h>

#include "edit_internal.h"
#include "text_conditioning.h"

/* ---- names ----------------------------------------------------------------------------------- */

static const char *const method_names[LOCO_EDIT_METHOD_COUNT] = {"locoedit", "quickfix", "neurons"};
static const char *const template_names[LOCO_TEMPLATES_COUNT] = {"style", "object", "none"};
static const char *const bias_names[LOCO_VALUE_BIAS_COUNT] = {"keep", "subtract"};

static int lookup(const char *const *names, int n, const char *name) {
    for (int i = 0; name && i < n; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

const char *loco_edit_method_name(loco_edit_method m) {
    return (unsigned)m < LOCO_EDIT_METHOD_COUNT ? method_names[m] : "unknown";
}

int loco_edit_method_from_name(const char *name, loco_edit_method *out) {
    int i = lookup(method_names, LOCO_EDIT_METHOD_COUNT, name);
    if (i < 0 && name) {
        if (strcmp(name, "diff_quickfix") == 0 || strcmp(name, "diff-quickfix") == 0) i = LOCO_EDIT_QUICKFIX;
        else if (strcmp(name, "neuron") == 0) i = LOCO_EDIT_NEURONS;
        else if (strcmp(name, "loco_edit") == 0) i = LOCO_EDIT_LOCOEDIT;
    }
    if (i < 0) return -1;
    *out = (loco_edit_method)i;
    return 0;
}

const char *loco_edit_templates_name(loco_edit_templates t) {
    return (unsigned)t < LOCO_TEMPLATES_COUNT ? template_names[t] : "unknown";
}

int loco_edit_templates_from_name(const char *name, loco_edit_templates *out) {
    int i = lookup(template_names, LOCO_TEMPLATES_COUNT, name);
    if (i < 0) return -1;
    *out = (loco_edit_templates)i;
    return 0;
}

static const char *const precision_names[LOCO_EDIT_PRECISION_COUNT] = {"f64", "backend"};

const char *loco_edit_precision_name(loco_edit_precision p) {
    return (unsigned)p < LOCO_EDIT_PRECISION_COUNT ? precision_names[p] : "unknown";
}

int loco_edit_precision_from_name(const char *name, loco_edit_precision *out) {
    int i = lookup(precision_names, LOCO_EDIT_PRECISION_COUNT, name);
    if (i < 0) return -1;
    *out = (loco_edit_precision)i;
    return 0;
}

const char *loco_value_bias_name(loco_value_bias b) {
    return (unsigned)b < LOCO_VALUE_BIAS_COUNT ? bias_names[b] : "unknown";
}

int loco_value_bias_from_name(const char *name, loco_value_bias *out) {
    int i = lookup(bias_names, LOCO_VALUE_BIAS_COUNT, name);
    if (i < 0) return -1;
    *out = (loco_value_bias)i;
    return 0;
}

void loco_edit_default_window(loco_model_family f, int *start, int *m) {
    if (f == LOCO_FAMILY_SDXL) {
        *start = 45;
        *m = 3;
    } else {
        *start = 8;
        *m = 2;
    }
}

/* ---- tokens ---------------------------------------------------------------------------------- */

const loco_clip_tokenizer *edit_main_tokenizer(const loco_pipeline *p) {
    return p->tokenizer ? p->tokenizer : p->tokenizer_2;
}

loco_status loco_edit_last_token(const loco_clip_tokenizer *tok, const char *prompt, int *pos, loco_err *err) {
    if (!tok || !prompt) return loco_err_set(err, LOCO_EINVAL, "edit: a tokenizer and a prompt are required");
    const int L = loco_clip_tokenizer_max_length(tok);
    int32_t *ids = malloc((size_t)L * sizeof *ids);
    if (!ids) return loco_err_set(err, LOCO_ENOMEM, "edit: out of memory");
    int n = 0;
    loco_status st = loco_clip_tokenize(tok, prompt, ids, &n, err);
    free(ids);
    if (st) return loco_err_prefix(err, "tokenizing '%.200s'", prompt);
    if (n == 0) return loco_err_set(err, LOCO_EINVAL, "edit: prompt '%.200s' has no tokens", prompt);
    *pos = n; /* BOS at 0, content at 1..n */
    return LOCO_OK;
}

loco_status loco_edit_subject_span(const loco_clip_tokenizer *tok, const char *prompt, const char *subject,
                                   int *first, int *last, loco_err *err) {
    if (!tok || !prompt || !subject) return loco_err_set(err, LOCO_EINVAL, "edit: a tokenizer, prompt and subject are required");
    int32_t *sub = NULL;
    int ns = 0;
    loco_status st = loco_clip_tokenize_raw(tok, subject, &sub, &ns, err);
    if (st) return loco_err_prefix(err, "tokenizing the subject '%.200s'", subject);
    if (ns == 0) {
        free(sub);
        return loco_err_set(err, LOCO_EINVAL, "edit: the subject '%.200s' has no tokens", subject);
    }
    const int L = loco_clip_tokenizer_max_length(tok);
    int32_t *ids = malloc((size_t)L * sizeof *ids);
    int n = 0;
    if (!ids) {
        free(sub);
        return loco_err_set(err, LOCO_ENOMEM, "edit: out of memory");
    }
    st = loco_clip_tokenize(tok, prompt, ids, &n, err);
    if (st) {
        loco_err_prefix(err, "tokenizing '%.200s'", prompt);
    } else {
        int found = -1;
        for (int s = n - ns; s >= 0; s--) {
            if (memcmp(ids + 1 + s, sub, (size_t)ns * sizeof *sub) == 0) {
                found = 1 + s;
                break;
            }
        }
        if (found < 0) {
            st = loco_err_set(err, LOCO_EINVAL,
                              "edit: the subject '%.200s' (%d token%s) does not occur in the prompt '%.200s' (%d "
                              "tokens after truncation to %d)",
                              subject, ns, ns == 1 ? "" : "s", prompt, n, L);
        } else {
            *first = found;
            *last = found + ns - 1;
        }
    }
    free(ids);
    free(sub);
    return st;
}

loco_status edit_prompt_span(const loco_pipeline *p, const char *prompt, const char *subject, int *first, int *last,
                             loco_err *err) {
    const loco_clip_tokenizer *toks[2] = {p->tokenizer, p->tokenizer_2};
    int have = 0;
    for (int i = 0; i < 2; i++) {
        if (!toks[i]) continue;
        int f, l;
        loco_status st;
        if (subject) {
            st = loco_edit_subject_span(toks[i], prompt, subject, &f, &l, err);
        } else {
            st = loco_edit_last_token(toks[i], prompt, &l, err);
            f = l;
        }
        if (st) return st;
        if (have && (f != *first || l != *last))
            return loco_err_set(err, LOCO_EINVAL,
                                "edit: the two tokenizers place '%.200s' at different positions (%d..%d vs %d..%d)",
                                subject ? subject : prompt, *first, *last, f, l);
        *first = f;
        *last = l;
        have = 1;
    }
    if (!have) return loco_err_set(err, LOCO_EINVAL, "edit: the model has no tokenizer");
    return LOCO_OK;
}

/* ---- rows ------------------------------------------------------------------------------------ */

/* The rows through the pipeline's own encode_prompt on the backend. */
static loco_status rows_backend(const loco_pipeline *p, const char *const *prompts, const int *positions, int n,
                                int clip_skip, double *out, loco_err *err) {
    loco_text_encoders enc;
    loco_pipeline_text_encoders(p, &enc);
    loco_encode_prompt_opts eo;
    loco_encode_prompt_opts_init(&eo);
    eo.n_prompts = n;
    eo.prompts = prompts;
    eo.do_classifier_free_guidance = 0;
    eo.clip_skip = clip_skip;
    loco_prompt_embeds pe;
    memset(&pe, 0, sizeof pe);
    loco_status st = loco_encode_prompt(&enc, &eo, &pe, err);
    if (st) return st;
    const int64_t L = pe.embeds.shape[1], D = pe.embeds.shape[2];
    float *host = malloc((size_t)(n * L * D) * sizeof *host);
    if (!host) {
        loco_prompt_embeds_free(&pe);
        return loco_err_set(err, LOCO_ENOMEM, "edit: out of memory");
    }
    st = loco_tensor_download_f32(&pe.embeds, host, err);
    for (int i = 0; !st && i < n; i++) {
        if (positions[i] < 0 || positions[i] >= L) {
            st = loco_err_set(err, LOCO_EINVAL, "edit: token position %d is outside 0..%lld", positions[i],
                              (long long)L - 1);
            break;
        }
        const float *row = host + ((size_t)i * L + (size_t)positions[i]) * D;
        for (int64_t d = 0; d < D; d++) out[(size_t)i * D + d] = row[d];
    }
    free(host);
    loco_prompt_embeds_free(&pe);
    return st;
}

loco_status loco_edit_embed_rows(const loco_pipeline *p, const char *const *prompts, const int *positions, int n,
                                 int clip_skip, loco_edit_precision precision, double *out, loco_err *err) {
    if (n <= 0 || !prompts || !positions || !out)
        return loco_err_set(err, LOCO_EINVAL, "edit: no prompts to embed");
    if (clip_skip < 0) return loco_err_set(err, LOCO_EINVAL, "edit: clip_skip must be >= 0, got %d", clip_skip);
    if ((unsigned)precision >= LOCO_EDIT_PRECISION_COUNT) return loco_err_set(err, LOCO_EINVAL, "edit: unknown precision");
    for (int i = 0; i < n; i++)
        if (!prompts[i]) return loco_err_set(err, LOCO_EINVAL, "edit: prompt %d is missing", i);
    const int D = loco_unet_get_config(p->unet)->cross_attention_dim[0];
    loco_status st = precision == LOCO_EDIT_PRECISION_F64
                         ? edit_condition_rows64(p, prompts, positions, n, clip_skip, out, D, err)
                         : rows_backend(p, prompts, positions, n, clip_skip, out, err);
    return st ? loco_err_prefix(err, "edit: encoding the prompts") : LOCO_OK;
}

/* ---- one matrix ------------------------------------------------------------------------------ */

loco_status loco_edit_solve_tensor(const loco_tensor *w, const double *keys, const double *values, int n,
                                   int targets_are_inputs, double lambda, loco_solve_form form, const char *what,
                                   float *w_new, double *work, loco_ridge_info *info, loco_err *err) {
    if (!w || w->ndim != 2) return loco_err_set(err, LOCO_EINVAL, "%s: the weight must be a matrix", what ? what : "edit");
    const int d_out = (int)w->shape[0], d_in = (int)w->shape[1];
    const size_t nw = (size_t)d_out * d_in;
    /* W comes over as float32 into w_new (the output buffer doubles as the download buffer) and is
     * solved in place in float64. Passes over the big matrix (and first touches of fresh memory)
     * are what the time goes to, so: one conversion pass that also takes the norm, LocoEdit's
     * values from the same GEMM as the keys' outputs, an in-place update, one pass back. */
    /* a float32 tensor of the CPU backend is host memory already: read it in place (no copy of the
     * biggest array there is); elsewhere download into w_new, which the result overwrites */
    loco_status st = LOCO_OK;
    const float *src = w_new;
    if (w->be && loco_backend_device(w->be) == LOCO_DEVICE_CPU && w->dtype == LOCO_F32 && w->data)
        src = w->data;
    else if ((st = loco_tensor_download_f32(w, w_new, err)))
        return st;
    loco_ridge_problem pr = {.d_out = d_out,
                             .d_in = d_in,
                             .n = n,
                             .keys = keys,
                             .values = targets_are_inputs ? NULL : values,
                             .targets = targets_are_inputs ? values : NULL,
                             .lambda = lambda,
                             .form = form,
                             .what = what};
    /* few pairs (LocoEdit): straight from float32, no float64 copy of W at all */
    if (loco_solve_form_pick(form, n, d_in) == LOCO_SOLVE_PUSH_THROUGH && n <= LOCO_SOLVE_F32_MAX_PAIRS)
        return loco_ridge_solve_f32(&pr, src, w_new, info, err);
    double *wd = work ? work : malloc(nw * sizeof *wd);
    if (!wd) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", what ? what : "edit");
    double ss = 0;
    for (size_t i = 0; i < nw; i++) {
        wd[i] = src[i];
        ss += wd[i] * wd[i];
    }
    pr.w = wd;
    pr.w_sumsq = ss;
    if ((st = loco_ridge_solve(&pr, wd, info, err))) goto done;
    for (size_t i = 0; i < nw; i++) w_new[i] = (float)wd[i];
done:
    if (wd != work) free(wd);
    return st;
}

/* ---- UNet names and JSON ---------------------------------------------------------------------- */

loco_status edit_cross_param(const loco_unet *u, int cross_index, int which, char *buf, size_t n, loco_err *err) {
    const int nc = loco_unet_n_cross(u);
    if (cross_index < 0 || cross_index >= nc)
        return loco_err_set(err, LOCO_EINVAL, "cross-attention layer %d does not exist (the model has layers 0..%d)",
                            cross_index, nc - 1);
    int ns = 0;
    const loco_site *s = loco_unet_sites(u, &ns);
    const loco_site_kind kind = which ? LOCO_SITE_CROSS_V : LOCO_SITE_CROSS_K;
    for (int i = 0; i < ns; i++)
        if (s[i].kind == kind && s[i].cross_index == cross_index) {
            snprintf(buf, n, "%s.weight", s[i].name);
            return LOCO_OK;
        }
    return loco_err_set(err, LOCO_ENOTFOUND, "cross-attention layer %d has no %s site", cross_index,
                        loco_site_kind_name(kind));
}

void edit_json_strings(json_t *o, const char *key, const char *const *s, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_string(s[i]));
    json_object_set_new(o, key, a);
}

void edit_json_ints(json_t *o, const char *key, const int *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    json_object_set_new(o, key, a);
}

json_t *loco_edit_matrix_json(const char *component, const char *name, int cross_index, int64_t rows, int64_t cols,
                              int n_pairs, const loco_ridge_info *info) {
    json_t *m = json_object();
    json_object_set_new(m, "component", json_string(component));
    json_object_set_new(m, "name", json_string(name));
    if (cross_index >= 0) json_object_set_new(m, "cross_index", json_integer(cross_index));
    json_object_set_new(m, "shape", json_pack("[I,I]", (json_int_t)rows, (json_int_t)cols));
    json_object_set_new(m, "pairs", json_integer(n_pairs));
    if (info) {
        json_object_set_new(m, "solver", json_string(loco_solve_form_name(info->form)));
        json_object_set_new(m, "rcond", json_real(info->rcond));
        json_object_set_new(m, "fit_before", json_real(info->fit_before));
        json_object_set_new(m, "fit_after", json_real(info->fit_after));
        json_object_set_new(m, "rel_change", json_real(info->rel_change));
    }
    return m;
}
