/* edit_quickfix.c: Diff-QuickFix (methods.md §3): closed-form edit of the text encoder's layer-0
 * self-attention out_proj so that the concept captions' states map to the target captions'. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edit_internal.h"

void loco_quickfix_opts_init(loco_quickfix_opts *o) {
    memset(o, 0, sizeof *o);
    o->target = "painting";
    o->augment = 1;
    o->use_eos = 1;
    o->value_bias = LOCO_VALUE_BIAS_KEEP;
    o->lambda = 0.01;
    o->form = LOCO_SOLVE_AUTO;
}

/* The caption pairs of §3.3: [concept] and, with augment, "A photo of X", "An image of X",
 * "A picture of X" with a leading capital 'A' of X lower-cased first; then the caller's pairs. */
typedef struct captions {
    int n;
    char **old, **new_;
    const char **subject, **target; /* what to search in old[i] / new_[i] (borrowed) */
} captions;

static void captions_free(captions *c) {
    for (int i = 0; i < c->n; i++) {
        free(c->old[i]);
        free(c->new_[i]);
    }
    free(c->old);
    free(c->new_);
    free(c->subject);
    free(c->target);
    memset(c, 0, sizeof *c);
}

static char *fill(const char *tmpl, const char *x) {
    size_t len = strlen(tmpl) + strlen(x) + 1;
    char *s = malloc(len);
    if (!s) return NULL;
    char *xl = strdup(x);
    if (!xl) {
        free(s);
        return NULL;
    }
    if (xl[0] == 'A') xl[0] = 'a';
    snprintf(s, len, tmpl, xl);
    free(xl);
    return s;
}

static loco_status build_captions(const loco_quickfix_opts *o, captions *c, loco_err *err) {
    static const char *const aug[] = {"A photo of %s", "An image of %s", "A picture of %s"};
    const int na = o->augment ? 3 : 0;
    const int n = 1 + na + o->n_captions;
    memset(c, 0, sizeof *c);
    c->old = calloc((size_t)n, sizeof *c->old);
    c->new_ = calloc((size_t)n, sizeof *c->new_);
    c->subject = calloc((size_t)n, sizeof *c->subject);
    c->target = calloc((size_t)n, sizeof *c->target);
    if (!c->old || !c->new_ || !c->subject || !c->target) goto oom;
    for (int i = 0; i < n; i++) {
        c->n = i + 1;
        if (i == 0) {
            c->old[i] = strdup(o->concept);
            c->new_[i] = strdup(o->target);
        } else if (i <= na) {
            c->old[i] = fill(aug[i - 1], o->concept);
            c->new_[i] = fill(aug[i - 1], o->target);
        } else {
            const char *a = o->captions[i - 1 - na], *b = o->target_captions[i - 1 - na];
            if (!a || !b) {
                captions_free(c);
                return loco_err_set(err, LOCO_EINVAL, "quickfix: caption pair %d is missing", i - 1 - na);
            }
            c->old[i] = strdup(a);
            c->new_[i] = strdup(b);
        }
        if (!c->old[i] || !c->new_[i]) goto oom;
        /* the subject of an augmented caption is the (possibly lower-cased) concept; the
         * tokenizer lower-cases anyway, so the concept's tokens are what to look for */
        c->subject[i] = o->concept;
        c->target[i] = o->target;
    }
    return LOCO_OK;
oom:
    captions_free(c);
    return loco_err_set(err, LOCO_ENOMEM, "quickfix: out of memory");
}

/* One encoder: build the key/value pairs, solve. */
typedef struct enc_job {
    loco_component comp;
    const loco_clip_text *te;
    const loco_clip_tokenizer *tok;
    char name[128];
    int n_pairs;
    double *keys, *values;
    float *w_new;
    loco_ridge_info info;
    int *pk, *pv, *count; /* per caption */
} enc_job;

static void enc_job_free(enc_job *j) {
    free(j->keys);
    free(j->values);
    free(j->w_new);
    free(j->pk);
    free(j->pv);
    free(j->count);
}

static loco_status run_encoder(const loco_quickfix_opts *o, const captions *cap, enc_job *j, loco_err *err) {
    const loco_clip_text_config *cfg = loco_clip_text_get_config(j->te);
    const int L = loco_clip_tokenizer_max_length(j->tok), D = cfg->hidden_size;
    if (o->layer < 0 || o->layer >= cfg->num_hidden_layers)
        return loco_err_set(err, LOCO_EINVAL, "quickfix: text-encoder layer %d does not exist (0..%d)", o->layer,
                            cfg->num_hidden_layers - 1);
    snprintf(j->name, sizeof j->name, "text_model.encoder.layers.%d.self_attn.out_proj.weight", o->layer);
    const int max_pairs = cap->n * L;
    j->keys = malloc((size_t)max_pairs * D * sizeof *j->keys);
    j->values = malloc((size_t)max_pairs * D * sizeof *j->values);
    j->pk = calloc((size_t)cap->n, sizeof *j->pk);
    j->pv = calloc((size_t)cap->n, sizeof *j->pv);
    j->count = calloc((size_t)cap->n, sizeof *j->count);
    int32_t *ids = malloc((size_t)2 * L * sizeof *ids);
    /* out_proj input of the old caption (row 0) and output of the new one (row 1), in float64 */
    double *pin = malloc((size_t)2 * L * D * sizeof *pin), *pout = malloc((size_t)2 * L * D * sizeof *pout);
    float *bias = NULL;
    loco_status st = LOCO_OK;
    if (!j->keys || !j->values || !j->pk || !j->pv || !j->count || !ids || !pin || !pout) {
        st = loco_err_set(err, LOCO_ENOMEM, "quickfix: out of memory");
        goto done;
    }
    if (o->value_bias == LOCO_VALUE_BIAS_SUBTRACT) {
        char bname[128];
        snprintf(bname, sizeof bname, "text_model.encoder.layers.%d.self_attn.out_proj.bias", o->layer);
        const loco_tensor *bt = loco_clip_text_param(j->te, bname);
        if (!bt || !(bias = malloc((size_t)D * sizeof *bias)) || (st = loco_tensor_download_f32(bt, bias, err))) {
            if (!st) st = loco_err_set(err, LOCO_ENOTFOUND, "quickfix: cannot read '%s'", bname);
            goto done;
        }
    }
    int n = 0;
    for (int i = 0; i < cap->n; i++) {
        int f;
        if ((st = loco_edit_subject_span(j->tok, cap->old[i], cap->subject[i], &f, &j->pk[i], err)) ||
            (st = loco_edit_subject_span(j->tok, cap->new_[i], cap->target[i], &f, &j->pv[i], err)) ||
            (st = loco_clip_tokenize(j->tok, cap->old[i], ids, NULL, err)) ||
            (st = loco_clip_tokenize(j->tok, cap->new_[i], ids + L, NULL, err)))
            goto done;
        /* run through the edited layer's attention only */
        edit_text64_req rq = {.out = NULL, .capture_layer = o->layer, .proj_in = pin, .proj_out = pout};
        if ((st = edit_text64_forward(j->te, ids, 2, L, &rq, err))) {
            loco_err_prefix(err, "quickfix: encoding '%.100s' / '%.100s'", cap->old[i], cap->new_[i]);
            goto done;
        }
        /* keys: old positions pk..L-1 (use_eos) or pk; values paired by offset from the subject,
         * past the end filled with the new caption's last position (§3.3 step 4) */
        const int cnt = o->use_eos ? L - j->pk[i] : 1;
        for (int t = 0; t < cnt; t++) {
            const int kp = j->pk[i] + t, vp = j->pv[i] + t < L ? j->pv[i] + t : L - 1;
            double *kr = j->keys + (size_t)n * D, *vr = j->values + (size_t)n * D;
            for (int d = 0; d < D; d++) {
                kr[d] = pin[(size_t)kp * D + d];
                vr[d] = pout[((size_t)L + vp) * D + d] - (bias ? (double)bias[d] : 0.0);
            }
            n++;
        }
        j->count[i] = cnt;
    }
    j->n_pairs = n;
    const loco_tensor *w = loco_clip_text_param(j->te, j->name);
    if (!w) {
        st = loco_err_set(err, LOCO_ENOTFOUND, "quickfix: the text encoder has no '%s'", j->name);
        goto done;
    }
    if (!(j->w_new = malloc((size_t)D * D * sizeof *j->w_new))) {
        st = loco_err_set(err, LOCO_ENOMEM, "quickfix: out of memory");
        goto done;
    }
    char what[200];
    snprintf(what, sizeof what, "%s %s", loco_component_name(j->comp), j->name);
    st = loco_edit_solve_tensor(w, j->keys, j->values, n, 0, o->lambda, o->form, what, j->w_new, NULL, &j->info, err);
done:
    free(ids);
    free(pin);
    free(pout);
    free(bias);
    return st;
}

static json_t *opts_json(const loco_quickfix_opts *o) {
    json_t *j = json_object();
    json_object_set_new(j, "concept", json_string(o->concept));
    json_object_set_new(j, "target", json_string(o->target));
    json_object_set_new(j, "augment", json_boolean(o->augment));
    json_object_set_new(j, "use_eos", json_boolean(o->use_eos));
    json_object_set_new(j, "value_bias", json_string(loco_value_bias_name(o->value_bias)));
    json_object_set_new(j, "lambda", json_real(o->lambda));
    json_object_set_new(j, "solver", json_string(loco_solve_form_name(o->form)));
    json_object_set_new(j, "encoder", o->encoder ? json_integer(o->encoder) : json_string("all"));
    json_object_set_new(j, "layer", json_integer(o->layer));
    return j;
}

loco_status loco_edit_quickfix(loco_pipeline_variant *v, const loco_quickfix_opts *o, json_t **report,
                               loco_err *err) {
    if (report) *report = NULL;
    if (!v || !o) return loco_err_set(err, LOCO_EINVAL, "quickfix: a variant and options are required");
    if (!o->concept || !*o->concept) return loco_err_set(err, LOCO_EINVAL, "quickfix: a concept is required");
    if (!o->target || !*o->target) return loco_err_set(err, LOCO_EINVAL, "quickfix: the target is empty");
    if (o->n_captions < 0 || (o->n_captions > 0 && (!o->captions || !o->target_captions)))
        return loco_err_set(err, LOCO_EINVAL, "quickfix: n_captions without captions and target_captions");
    if ((unsigned)o->value_bias >= LOCO_VALUE_BIAS_COUNT) return loco_err_set(err, LOCO_EINVAL, "quickfix: unknown value_bias");
    loco_pipeline *p = loco_pipeline_variant_pipeline(v);
    enc_job jobs[2];
    memset(jobs, 0, sizeof jobs);
    int nj = 0;
    if (p->family == LOCO_FAMILY_SDXL) {
        if (o->encoder < 0 || o->encoder > 2)
            return loco_err_set(err, LOCO_EINVAL, "quickfix: encoder must be 1, 2 or 0 (both), got %d", o->encoder);
        if ((o->encoder == 0 || o->encoder == 1) && p->text_encoder)
            jobs[nj++] = (enc_job){.comp = LOCO_COMPONENT_TEXT_ENCODER, .te = p->text_encoder, .tok = p->tokenizer};
        else if (o->encoder == 1)
            return loco_err_set(err, LOCO_EINVAL, "quickfix: the model has no text_encoder (encoder 1)");
        if (o->encoder == 0 || o->encoder == 2)
            jobs[nj++] = (enc_job){.comp = LOCO_COMPONENT_TEXT_ENCODER_2, .te = p->text_encoder_2, .tok = p->tokenizer_2};
    } else {
        if (o->encoder != 0 && o->encoder != 1)
            return loco_err_set(err, LOCO_EINVAL, "quickfix: a %s model has one text encoder; encoder %d does not exist",
                                loco_model_family_name(p->family), o->encoder);
        jobs[nj++] = (enc_job){.comp = LOCO_COMPONENT_TEXT_ENCODER, .te = p->text_encoder, .tok = p->tokenizer};
    }
    for (int i = 0; i < nj; i++)
        if (!jobs[i].te || !jobs[i].tok)
            return loco_err_set(err, LOCO_EINVAL, "quickfix: the model has no %s", loco_component_name(jobs[i].comp));

    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    captions cap;
    loco_status st = build_captions(o, &cap, err);
    if (st) return st;
    json_t *rep = json_object(), *mats = json_array(), *encs = json_array();
    for (int i = 0; i < nj; i++)
        if ((st = run_encoder(o, &cap, &jobs[i], err))) goto done;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* every system solved: write the new weights */
    for (int i = 0; i < nj; i++) {
        enc_job *j = &jobs[i];
        if ((st = loco_pipeline_variant_set_param_take(v, j->comp, j->name, j->w_new, err))) goto done;
        j->w_new = NULL; /* the variant's record now */
        const int D = loco_clip_text_get_config(j->te)->hidden_size;
        json_array_append_new(mats, loco_edit_matrix_json(loco_component_name(j->comp), j->name, -1, D, D, j->n_pairs,
                                                          &j->info));
        json_t *e = json_object();
        json_object_set_new(e, "component", json_string(loco_component_name(j->comp)));
        edit_json_ints(e, "subject_position", j->pk, cap.n);
        edit_json_ints(e, "target_position", j->pv, cap.n);
        edit_json_ints(e, "pairs", j->count, cap.n);
        json_array_append_new(encs, e);
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    json_object_set_new(rep, "method", json_string("quickfix"));
    json_object_set_new(rep, "options", opts_json(o));
    edit_json_strings(rep, "captions", (const char *const *)cap.old, cap.n);
    edit_json_strings(rep, "target_captions", (const char *const *)cap.new_, cap.n);
    json_object_set_new(rep, "encoders", encs);
    encs = NULL;
    json_object_set_new(rep, "matrices", mats);
    mats = NULL;
    json_object_set_new(rep, "seconds_pairs_and_solve", json_real(edit_seconds(&t0, &t1)));
    json_object_set_new(rep, "seconds_write", json_real(edit_seconds(&t1, &t2)));
    if ((st = loco_pipeline_variant_note_edit(v, rep, err))) goto done;
    if (report) {
        *report = rep;
        rep = NULL;
    }
done:
    json_decref(rep);
    json_decref(mats);
    json_decref(encs);
    for (int i = 0; i < nj; i++) enc_job_free(&jobs[i]);
    captions_free(&cap);
    return st;
}
