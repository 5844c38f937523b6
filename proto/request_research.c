/* request_research.c: params of the research kinds (trace, localize, edit), after
 * shared/reference/methods.md §2 (causal tracing), §4 (LocoGen), §3/§5/§6 (Diff-QuickFix,
 * LocoEdit, neuron edits). Only the model-independent checks live here. */
#include "request.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define SAMPLER_KEYS "seed", "steps", "guidance_scale", "scheduler", "karras", "width", "height", "clip_skip"

/* Every item of array `a` (at ptr/key) must be a string of 1..max_chars characters. */
static int string_items(const json_t *a, const char *ptr, const char *key, size_t min_chars, size_t max_chars,
                        loco_proto_error *e) {
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v) {
        char p[200];
        snprintf(p, sizeof p, "%s/%s/%zu", ptr, key, i);
        if (!json_is_string(v)) return loco_proto_fail(e, 422, "invalid_type", p, "items of '%s' must be strings", key);
        size_t n = loco_utf8_length(json_string_value(v));
        if (strlen(json_string_value(v)) != json_string_length(v))
            return loco_proto_fail(e, 422, "invalid_value", p, "items of '%s' must not contain NUL characters", key);
        if (n < min_chars || n > max_chars)
            return loco_proto_fail(e, 422, "out_of_range", p, "items of '%s' must have %zu to %zu characters (this has %zu)",
                                   key, min_chars, max_chars, n);
    }
    return 0;
}

/* Every item an integer in lo..hi (4.0 counts), no duplicates. *norm: a new array of the items
 * as JSON integers, what the normalised params keep. */
static int int_items(const json_t *a, const char *ptr, const char *key, int64_t lo, int64_t hi, json_t **norm,
                     loco_proto_error *e) {
    size_t i, j;
    const json_t *v;
    json_t *out = json_array();
    json_array_foreach(a, i, v) {
        char p[200];
        snprintf(p, sizeof p, "%s/%s/%zu", ptr, key, i);
        json_int_t x;
        int bad = 0;
        if (!loco_json_integral(v, &x))
            bad = loco_proto_fail(e, 422, "invalid_type", p, "items of '%s' must be integers", key);
        else if (x < lo || x > hi)
            bad = loco_proto_fail(e, 422, "out_of_range", p, "items of '%s' must be between %lld and %lld (got %lld)",
                                  key, (long long)lo, (long long)hi, (long long)x);
        for (j = 0; !bad && j < i; j++)
            if (json_integer_value(json_array_get(out, j)) == x)
                bad = loco_proto_fail(e, 422, "invalid_value", p, "'%s' lists %lld twice", key, (long long)x);
        if (bad) {
            json_decref(out);
            return -1;
        }
        json_array_append_new(out, json_integer(x));
    }
    *norm = out;
    return 0;
}

/* trace and localize score with their own text-encoder path: clip_skip would be silently ignored. */
static int no_clip_skip(const json_t *p, const char *ptr, const char *kind, loco_proto_error *e) {
    if (!json_is_object(p) || !json_object_get(p, "clip_skip")) return 0;
    char pp[200];
    snprintf(pp, sizeof pp, "%s/clip_skip", ptr);
    return loco_proto_fail(e, 422, "unknown_field", pp,
                           "clip_skip is not supported for trace/localize jobs (this is a %s job); remove it", kind);
}

static int contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    if (n == 0) return 0;
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return 1;
    return 0;
}

int loco_params_trace(const json_t *p, const char *ptr, const loco_proto_limits *lim, uint64_t random_seed,
                      json_t **out, loco_proto_error *e) {
    static const char *const keys[] = {"prompt", "subject", "target", "components", "positions", "noise_scale",
                                       "noise_seed", "score_prompt", "causal_threshold", SAMPLER_KEYS, NULL};
    static const char *const targets[] = {"unet", "text_encoder", NULL};
    const char *prompt = NULL, *subject = NULL, *target = "unet", *score = NULL;
    const json_t *components = NULL, *positions = NULL;
    double noise = 3.0, threshold = 0;
    int64_t noise_seed = 0;
    int has_ns = 0, has_score = 0, has_thr = 0;
    size_t maxc = (size_t)lim->max_prompt_chars;
    if (no_clip_skip(p, ptr, "trace", e) || loco_pf_object(p, ptr, keys, e) ||
        loco_pf_string(p, ptr, "prompt", 1, 1, maxc, &prompt, NULL, e) ||
        loco_pf_string(p, ptr, "subject", 1, 1, maxc, &subject, NULL, e) ||
        loco_pf_enum(p, ptr, "target", 0, targets, &target, NULL, e) ||
        loco_pf_array(p, ptr, "components", 0, 1, (size_t)lim->max_items, &components, NULL, e) ||
        loco_pf_array(p, ptr, "positions", 0, 1, 77, &positions, NULL, e) ||
        loco_pf_number(p, ptr, "noise_scale", 0, 0.0, 100.0, &noise, NULL, e) ||
        loco_pf_int(p, ptr, "noise_seed", 0, 0, INT64_MAX, &noise_seed, &has_ns, e) ||
        loco_pf_string(p, ptr, "score_prompt", 0, 1, maxc, &score, &has_score, e) ||
        loco_pf_number(p, ptr, "causal_threshold", 0, 0.0, 100.0, &threshold, &has_thr, e))
        return -1;
    if (components && string_items(components, ptr, "components", 1, 200, e)) return -1;
    char pp[200];
    if (!contains_ci(prompt, subject)) {
        snprintf(pp, sizeof pp, "%s/subject", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "'subject' must occur in 'prompt' (its tokens are the ones corrupted)");
    }
    if (components && strcmp(target, "unet") != 0) {
        snprintf(pp, sizeof pp, "%s/components", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "'components' applies only to target 'unet' (text-encoder states are chosen by "
                               "'positions')");
    }
    if (positions && strcmp(target, "text_encoder") != 0) {
        snprintf(pp, sizeof pp, "%s/positions", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp, "'positions' applies only to target 'text_encoder'");
    }
    json_t *positions_n = NULL;
    if (positions && int_items(positions, ptr, "positions", 0, 76, &positions_n, e)) return -1;
    json_t *o = json_object();
    json_object_set_new(o, "prompt", json_string(prompt));
    json_object_set_new(o, "subject", json_string(subject));
    json_object_set_new(o, "target", json_string(target));
    if (components) json_object_set_new(o, "components", json_deep_copy(components));
    if (positions_n) json_object_set_new(o, "positions", positions_n);
    json_object_set_new(o, "noise_scale", json_real(noise));
    if (has_score) json_object_set_new(o, "score_prompt", json_string(score));
    if (has_thr) json_object_set_new(o, "causal_threshold", json_real(threshold));
    if (loco_params_sampler(p, ptr, lim, random_seed, 1, o, e)) {
        json_decref(o);
        return -1;
    }
    json_object_set_new(o, "noise_seed", has_ns ? json_integer(noise_seed) : json_incref(json_object_get(o, "seed")));
    *out = o;
    return 0;
}

int loco_params_localize(const json_t *p, const char *ptr, const loco_proto_limits *lim, uint64_t random_seed,
                         json_t **out, loco_proto_error *e) {
    static const char *const keys[] = {"prompts", "altered_prompts", "window", "starts", "attribute", "seeds",
                                       SAMPLER_KEYS, NULL};
    static const char *const attrs[] = {"style", "objects", "facts", NULL};
    const json_t *prompts = NULL, *altered = NULL, *starts = NULL, *seeds = NULL;
    const char *attribute = "style";
    int64_t window = 2;
    size_t maxc = (size_t)lim->max_prompt_chars;
    if (no_clip_skip(p, ptr, "localize", e) || loco_pf_object(p, ptr, keys, e) ||
        loco_pf_array(p, ptr, "prompts", 1, 1, (size_t)lim->max_prompts, &prompts, NULL, e) ||
        loco_pf_array(p, ptr, "altered_prompts", 1, 1, (size_t)lim->max_prompts, &altered, NULL, e) ||
        loco_pf_int(p, ptr, "window", 0, 1, 128, &window, NULL, e) ||
        loco_pf_array(p, ptr, "starts", 0, 1, (size_t)lim->max_items, &starts, NULL, e) ||
        loco_pf_enum(p, ptr, "attribute", 0, attrs, &attribute, NULL, e) ||
        loco_pf_array(p, ptr, "seeds", 0, 1, 64, &seeds, NULL, e))
        return -1;
    if (string_items(prompts, ptr, "prompts", 1, maxc, e) || string_items(altered, ptr, "altered_prompts", 1, maxc, e))
        return -1;
    if (json_array_size(prompts) != json_array_size(altered)) {
        char pp[200];
        snprintf(pp, sizeof pp, "%s/altered_prompts", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "'altered_prompts' must have one entry per prompt (%zu prompts, %zu altered)",
                               json_array_size(prompts), json_array_size(altered));
    }
    if (seeds && json_object_get(p, "seed")) {
        char pp[200];
        snprintf(pp, sizeof pp, "%s/seed", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "give 'seed' or 'seeds', not both: 'seeds' lists every seed the prompts are rendered with");
    }
    json_t *starts_n = NULL, *seeds_n = NULL;
    if (starts && int_items(starts, ptr, "starts", 0, 1023, &starts_n, e)) return -1;
    if (seeds && int_items(seeds, ptr, "seeds", 0, INT64_MAX, &seeds_n, e)) {
        json_decref(starts_n);
        return -1;
    }
    json_t *o = json_object();
    json_object_set_new(o, "prompts", json_deep_copy(prompts));
    json_object_set_new(o, "altered_prompts", json_deep_copy(altered));
    json_object_set_new(o, "window", json_integer(window));
    if (starts_n) json_object_set_new(o, "starts", starts_n);
    json_object_set_new(o, "attribute", json_string(attribute));
    if (loco_params_sampler(p, ptr, lim, random_seed, 1, o, e)) {
        json_decref(o);
        json_decref(seeds_n);
        return -1;
    }
    /* with explicit seeds the sampler's server-chosen seed would be recorded but never used */
    if (seeds_n) json_object_del(o, "seed");
    json_object_set_new(o, "seeds", seeds_n ? seeds_n : json_pack("[O]", json_object_get(o, "seed")));
    *out = o;
    return 0;
}

/* Which edit params each method reads; any other given to it is refused rather than ignored. */
typedef struct edit_method_keys {
    const char *method;
    const char *const *keys;
} edit_method_keys;

static const char *const locoedit_keys[] = {"concept", "target", "layers", "lambda", "lambda_k", "lambda_v",
                                             "templates", "prompts", "matrices", "solver", NULL};
static const char *const quickfix_keys[] = {"concept", "target", "lambda", "prompts", "target_prompts", "augment",
                                             "use_eos", "value_bias", "encoders", "text_layer", "solver", NULL};
static const char *const neuron_keys[] = {"layers", "neurons", "prompts", "normal_prompts", "position", "matrices",
                                           NULL};
static const edit_method_keys edit_methods[] = {
    {"locoedit", locoedit_keys}, {"diff_quickfix", quickfix_keys}, {"neuron", neuron_keys}, {NULL, NULL}};

static int key_in(const char *const *keys, const char *k) {
    for (int i = 0; keys[i]; i++)
        if (strcmp(keys[i], k) == 0) return 1;
    return 0;
}

static int edit_keys_apply(const json_t *p, const char *ptr, const char *method, loco_proto_error *e) {
    static const char *const common[] = {"method", "variant", "export", "export_dtype", NULL};
    const char *const *keys = NULL;
    for (int i = 0; edit_methods[i].method; i++)
        if (strcmp(edit_methods[i].method, method) == 0) keys = edit_methods[i].keys;
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)p, k, v) {
        if (key_in(common, k) || key_in(keys, k)) continue;
        char pp[200], list[400];
        size_t n = 0;
        list[0] = 0;
        for (int i = 0; keys[i] && n < sizeof list; i++)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", keys[i]);
        snprintf(pp, sizeof pp, "%s/%.100s", ptr, k);
        return loco_proto_fail(e, 422, "unknown_field", pp,
                               "'%.100s' does not apply to the %s method; it reads %s (and method, variant, export, export_dtype)", k,
                               method, list);
    }
    return 0;
}

/* matrices: a non-empty subset of to_k, to_v. */
static int edit_matrices(const json_t *a, const char *ptr, int *edit_k, int *edit_v, loco_proto_error *e) {
    size_t i;
    const json_t *v;
    *edit_k = *edit_v = 0;
    json_array_foreach(a, i, v) {
        char pp[200];
        snprintf(pp, sizeof pp, "%s/matrices/%zu", ptr, i);
        const char *m = json_string_value(v);
        int *flag = m && strcmp(m, "to_k") == 0 ? edit_k : m && strcmp(m, "to_v") == 0 ? edit_v : NULL;
        if (!flag) return loco_proto_fail(e, 422, "invalid_value", pp, "items of 'matrices' must be \"to_k\" or \"to_v\"");
        if (*flag) return loco_proto_fail(e, 422, "invalid_value", pp, "'matrices' lists %s twice", m);
        *flag = 1;
    }
    return 0;
}

/* Each method's particular rules, on the checked fields. */
static int edit_method_rules(const json_t *p, const char *ptr, const char *method, const json_t *layers,
                             const json_t *prompts, const json_t *normal, loco_proto_error *e) {
    char pp[200];
    if (strcmp(method, "neuron") != 0 && !json_object_get(p, "concept")) {
        snprintf(pp, sizeof pp, "%s/concept", ptr);
        return loco_proto_fail(e, 422, "missing_field", pp, "the %s method needs 'concept' (the subject to remap)",
                               method);
    }
    if (strcmp(method, "neuron") == 0) {
        const json_t *sets[2] = {prompts, normal};
        const char *names[2] = {"prompts", "normal_prompts"};
        for (int i = 0; i < 2; i++)
            if (json_array_size(sets[i]) < 2) {
                snprintf(pp, sizeof pp, "%s/%s", ptr, names[i]);
                return loco_proto_fail(e, 422, sets[i] ? "out_of_range" : "missing_field", pp,
                                       "the neuron method ranks neurons by a t-test of 'prompts' (with the concept) "
                                       "against 'normal_prompts' (without it): each needs at least 2 prompts");
            }
    }
    if (strcmp(method, "locoedit") == 0 && layers) {
        /* LocoEdit edits one window of consecutive layers (methods.md §5) */
        json_int_t lo = json_integer_value(json_array_get(layers, 0)), hi = lo;
        size_t i;
        const json_t *v;
        json_array_foreach(layers, i, v) {
            if (json_integer_value(v) < lo) lo = json_integer_value(v);
            if (json_integer_value(v) > hi) hi = json_integer_value(v);
        }
        if ((size_t)(hi - lo + 1) != json_array_size(layers)) {
            snprintf(pp, sizeof pp, "%s/layers", ptr);
            return loco_proto_fail(e, 422, "invalid_value", pp,
                                   "locoedit edits a window of consecutive cross-attention layers; 'layers' must be "
                                   "consecutive (e.g. [8, 9]), got %lld..%lld with gaps",
                                   (long long)lo, (long long)hi);
        }
    }
    /* the extra prompts carry the concept (its tokens are what the edit remaps); the token-level
     * check runs in the worker, this catches the plain mistake before the job is accepted */
    const char *concept = json_string_value(json_object_get(p, "concept"));
    size_t i;
    const json_t *v;
    if (concept && strcmp(method, "neuron") != 0)
        json_array_foreach(prompts, i, v) {
            if (contains_ci(json_string_value(v), concept)) continue;
            snprintf(pp, sizeof pp, "%s/prompts/%zu", ptr, i);
            return loco_proto_fail(e, 422, "invalid_value", pp, "prompt %zu does not contain the concept '%.100s'", i,
                                   concept);
        }
    /* a ridge weight for a projection the edit leaves alone would be silently unused */
    static const char *const lam[2] = {"lambda_k", "lambda_v"}, *const mat[2] = {"to_k", "to_v"};
    const json_t *matrices = json_object_get(p, "matrices");
    for (int k = 0; k < 2 && matrices; k++) {
        int listed = 0;
        json_array_foreach(matrices, i, v) listed = listed || (json_is_string(v) && !strcmp(json_string_value(v), mat[k]));
        if (json_object_get(p, lam[k]) && !listed) {
            snprintf(pp, sizeof pp, "%s/%s", ptr, lam[k]);
            return loco_proto_fail(e, 422, "invalid_value", pp, "'%s' weighs the %s solve, which 'matrices' leaves out",
                                   lam[k], mat[k]);
        }
    }
    const json_t *tp = json_object_get(p, "target_prompts");
    if ((tp != NULL) != (prompts != NULL && strcmp(method, "diff_quickfix") == 0) ||
        (tp && json_array_size(tp) != json_array_size(prompts))) {
        snprintf(pp, sizeof pp, "%s/%s", ptr, tp ? "target_prompts" : "prompts");
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "diff_quickfix takes extra caption pairs as 'prompts' (with the concept) and "
                               "'target_prompts' (with the target), one for one (%zu prompts, %zu target prompts)",
                               json_array_size(prompts), json_array_size(tp));
    }
    return 0;
}

int loco_params_edit(const json_t *p, const char *ptr, const loco_proto_limits *lim, uint64_t random_seed,
                     json_t **out, loco_proto_error *e) {
    static const char *const keys[] = {"method", "concept", "target", "layers", "lambda", "lambda_k", "lambda_v",
                                       "templates", "neurons", "prompts", "normal_prompts", "target_prompts",
                                       "matrices", "solver", "augment", "use_eos", "value_bias", "encoders",
                                       "text_layer", "position", "variant", "export", "export_dtype", NULL};
    static const char *const methods[] = {"locoedit", "diff_quickfix", "neuron", NULL};
    static const char *const templates[] = {"style", "object", "none", NULL};
    static const char *const exports[] = {"delta", "folder", "none", NULL};
    static const char *const export_dtypes[] = {"keep", "f32", "f16", "bf16", NULL};
    static const char *const solvers[] = {"auto", "full", "push_through", NULL};
    static const char *const biases[] = {"keep", "subtract", NULL};
    static const char *const encoders[] = {"both", "text_encoder", "text_encoder_2", NULL};
    const char *method = NULL, *concept = NULL, *target = "", *tmpl = "style", *variant = NULL, *exp = "delta",
               *solver = "auto", *bias = "keep", *enc = "both", *exp_dtype = "keep";
    const json_t *layers = NULL, *prompts = NULL, *normal = NULL, *tprompts = NULL, *matrices = NULL;
    double lambda = 0.01, lambda_k = 0, lambda_v = 0;
    int64_t neurons = 50, text_layer = 0;
    int has_variant = 0, has_lk = 0, has_lv = 0, augment = 1, use_eos = 1, edit_k = 1, edit_v = 1;
    size_t maxc = (size_t)lim->max_prompt_chars;
    (void)random_seed;
    if (loco_pf_object(p, ptr, keys, e) || loco_pf_enum(p, ptr, "method", 1, methods, &method, NULL, e) ||
        edit_keys_apply(p, ptr, method, e) || loco_pf_string(p, ptr, "concept", 0, 1, maxc, &concept, NULL, e) ||
        loco_pf_string(p, ptr, "target", 0, 0, maxc, &target, NULL, e) ||
        loco_pf_array(p, ptr, "layers", 0, 1, 128, &layers, NULL, e) ||
        loco_pf_number(p, ptr, "lambda", 0, 1e-12, 1e6, &lambda, NULL, e) ||
        loco_pf_number(p, ptr, "lambda_k", 0, 1e-12, 1e6, &lambda_k, &has_lk, e) ||
        loco_pf_number(p, ptr, "lambda_v", 0, 1e-12, 1e6, &lambda_v, &has_lv, e) ||
        loco_pf_enum(p, ptr, "templates", 0, templates, &tmpl, NULL, e) ||
        loco_pf_int(p, ptr, "neurons", 0, 1, lim->max_items, &neurons, NULL, e) ||
        loco_pf_array(p, ptr, "prompts", 0, 1, (size_t)lim->max_prompts, &prompts, NULL, e) ||
        loco_pf_array(p, ptr, "normal_prompts", 0, 1, (size_t)lim->max_prompts, &normal, NULL, e) ||
        loco_pf_array(p, ptr, "target_prompts", 0, 1, (size_t)lim->max_prompts, &tprompts, NULL, e) ||
        loco_pf_array(p, ptr, "matrices", 0, 1, 2, &matrices, NULL, e) ||
        loco_pf_enum(p, ptr, "solver", 0, solvers, &solver, NULL, e) ||
        loco_pf_bool(p, ptr, "augment", 0, &augment, NULL, e) || loco_pf_bool(p, ptr, "use_eos", 0, &use_eos, NULL, e) ||
        loco_pf_enum(p, ptr, "value_bias", 0, biases, &bias, NULL, e) ||
        loco_pf_enum(p, ptr, "encoders", 0, encoders, &enc, NULL, e) ||
        loco_pf_int(p, ptr, "text_layer", 0, 0, 1023, &text_layer, NULL, e) ||
        loco_pf_string(p, ptr, "variant", 0, 1, LOCO_MODEL_NAME_MAX, &variant, &has_variant, e) ||
        loco_pf_enum(p, ptr, "export", 0, exports, &exp, NULL, e) ||
        loco_pf_enum(p, ptr, "export_dtype", 0, export_dtypes, &exp_dtype, NULL, e))
        return -1;
    if (prompts && string_items(prompts, ptr, "prompts", 1, maxc, e)) return -1;
    if (normal && string_items(normal, ptr, "normal_prompts", 1, maxc, e)) return -1;
    if (tprompts && string_items(tprompts, ptr, "target_prompts", 1, maxc, e)) return -1;
    if (matrices && edit_matrices(matrices, ptr, &edit_k, &edit_v, e)) return -1;
    char pp[200];
    /* position: a token index (76 in the released code) or "eos", each prompt's first EOS */
    const json_t *pos = json_object_get(p, "position");
    json_int_t pos_i = 76;
    if (pos && !(loco_json_integral(pos, &pos_i) && pos_i >= 0 && pos_i <= 1023) &&
        !(json_is_string(pos) && strcmp(json_string_value(pos), "eos") == 0)) {
        snprintf(pp, sizeof pp, "%s/position", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "'position' must be a token index 0..1023 (76 by default) or \"eos\"");
    }
    if (has_variant && !loco_name_valid(variant)) {
        snprintf(pp, sizeof pp, "%s/variant", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "'variant' must be a model name (letters, digits, '.', '_', '+', '-')");
    }
    if (strcmp(method, "neuron") == 0 && strcmp(exp, "folder") == 0) {
        snprintf(pp, sizeof pp, "%s/export", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp,
                               "a neuron edit ablates channels on the conditional branch at inference, which no "
                               "diffusers weight can express: export 'delta' (loco applies it) instead of 'folder'");
    }
    if (json_object_get(p, "export_dtype") && strcmp(exp, "folder") != 0) {
        snprintf(pp, sizeof pp, "%s/export_dtype", ptr);
        return loco_proto_fail(e, 422, "invalid_value", pp, "'export_dtype' applies only to export 'folder'");
    }
    json_t *layers_n = NULL;
    if (layers && int_items(layers, ptr, "layers", 0, 1023, &layers_n, e)) return -1;
    if (edit_method_rules(p, ptr, method, layers_n, prompts, normal, e)) {
        json_decref(layers_n);
        return -1;
    }
    const int quickfix = strcmp(method, "diff_quickfix") == 0, neuron = strcmp(method, "neuron") == 0;
    json_t *o = json_object();
    json_object_set_new(o, "method", json_string(method));
    if (!neuron) {
        /* the engine's default targets (loco_*_opts_init), filled in so the job and its variant say what ran */
        if (!*target) target = quickfix ? "painting" : "a painting";
        json_object_set_new(o, "concept", json_string(concept));
        json_object_set_new(o, "target", json_string(target));
        json_object_set_new(o, "lambda", json_real(lambda));
        json_object_set_new(o, "solver", json_string(solver));
    }
    if (layers_n) json_object_set_new(o, "layers", layers_n);
    if (strcmp(method, "locoedit") == 0) {
        json_object_set_new(o, "lambda_k", json_real(has_lk ? lambda_k : lambda));
        json_object_set_new(o, "lambda_v", json_real(has_lv ? lambda_v : lambda));
        json_object_set_new(o, "templates", json_string(tmpl));
    }
    if (!quickfix) {
        json_t *m = json_array();
        if (edit_k) json_array_append_new(m, json_string("to_k"));
        if (edit_v) json_array_append_new(m, json_string("to_v"));
        json_object_set_new(o, "matrices", m);
    }
    if (quickfix) {
        json_object_set_new(o, "augment", json_boolean(augment));
        json_object_set_new(o, "use_eos", json_boolean(use_eos));
        json_object_set_new(o, "value_bias", json_string(bias));
        json_object_set_new(o, "encoders", json_string(enc));
        json_object_set_new(o, "text_layer", json_integer(text_layer));
    }
    if (neuron) {
        json_object_set_new(o, "neurons", json_integer(neurons));
        json_object_set_new(o, "position", json_is_string(pos) ? json_string("eos") : json_integer(pos_i));
    }
    if (prompts) json_object_set_new(o, "prompts", json_deep_copy(prompts));
    if (normal) json_object_set_new(o, "normal_prompts", json_deep_copy(normal));
    if (tprompts) json_object_set_new(o, "target_prompts", json_deep_copy(tprompts));
    if (has_variant) json_object_set_new(o, "variant", json_string(variant));
    json_object_set_new(o, "export", json_string(exp));
    if (strcmp(exp, "folder") == 0) json_object_set_new(o, "export_dtype", json_string(exp_dtype));
    *out = o;
    return 0;
}
