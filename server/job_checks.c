/* job_checks.c: a job request against its model's published info (worker_main.c's model_info:
 * sizes, sites, cross-attention layers and their channels, the default edit window, how deep
 * clip_skip may go, the default scheduler). */
#include <stdio.h>
#include <string.h>

#include "job_checks.h"

/* A UNet component causal tracing can restore: a resnet, attn1, attn2 or ff output. */
static int site_known(const json_t *sites, const char *name) {
    static const char *const kinds[] = {"resnet", "self_attn", "cross_attn", "ff", NULL};
    size_t i;
    json_t *s;
    json_array_foreach(sites, i, s) {
        const char *n = json_string_value(json_object_get(s, "name"));
        const char *c = json_string_value(json_object_get(s, "component"));
        const char *k = json_string_value(json_object_get(s, "kind"));
        if (!n || !c || !k || strcmp(n, name) != 0 || strcmp(c, "unet") != 0) continue;
        for (int j = 0; kinds[j]; j++)
            if (strcmp(k, kinds[j]) == 0) return 1;
    }
    return 0;
}

/* clip_skip past the text encoders' depth: the worker would fail the job at its first prompt. */
static int clip_skip_too_large(const locod_model *md, const json_t *p, loco_proto_error *e) {
    const json_t *cs = json_object_get(p, "clip_skip"), *mx = json_object_get(md->info, "max_clip_skip");
    if (!cs || !json_is_integer(mx) || json_integer_value(cs) <= json_integer_value(mx)) return 0;
    return loco_proto_fail(e, 422, "out_of_range", "/params/clip_skip",
                           "'clip_skip' must be at most %lld for model '%s' (its text encoder has that many layers to "
                           "skip; got %lld)",
                           (long long)json_integer_value(mx), md->name, (long long)json_integer_value(cs));
}

/* The scheduler a sampling job runs with: its own, else the model's default, which info reports
 * as null when the model names a class loco does not implement; and Karras sigmas only where
 * the scheduler has them (euler, dpmpp_2m). The worker would fail such jobs at their start. */
static int scheduler_unusable(const locod_model *md, const json_t *p, loco_proto_error *e) {
    const json_t *s = json_object_get(p, "scheduler"), *def = json_object_get(md->info, "default_scheduler");
    const char *name = json_is_string(s) ? json_string_value(s) : json_string_value(def);
    const char *cls = json_string_value(json_object_get(md->info, "scheduler_class"));
    if (!name && json_is_null(def))
        return loco_proto_fail(e, 422, "missing_field", "/params/scheduler",
                               "model '%s' asks for the scheduler class '%s', which loco does not implement; give "
                               "'scheduler' (pndm, ddim, euler, euler_a, dpmpp_2m or ddpm)",
                               md->name, cls && *cls ? cls : "(none)");
    if (name && json_is_true(json_object_get(p, "karras")) && strcmp(name, "euler") != 0 &&
        strcmp(name, "dpmpp_2m") != 0)
        return loco_proto_fail(e, 422, "invalid_value", "/params/karras",
                               "'karras' applies to the euler and dpmpp_2m schedulers, not to %s%s; give 'scheduler' "
                               "euler or dpmpp_2m, or leave 'karras' out",
                               name, json_is_string(s) ? "" : " (the model's default)");
    return 0;
}

/* Diff-QuickFix: the encoders 'encoders' names exist, and 'text_layer' is a layer of each. */
static int quickfix_encoders_fit(const locod_model *md, const json_t *p, loco_proto_error *e) {
    const json_t *layers = json_object_get(md->info, "text_encoder_layers");
    const char *which = json_string_value(json_object_get(p, "encoders"));
    if (!which || !json_is_object(layers)) return 0;
    const json_int_t tl = json_integer_value(json_object_get(p, "text_layer"));
    static const char *const names[] = {"text_encoder", "text_encoder_2"};
    for (int i = 0; i < 2; i++) {
        if (strcmp(which, "both") != 0 && strcmp(which, names[i]) != 0) continue;
        const json_t *n = json_object_get(layers, names[i]);
        if (!n && strcmp(which, "both") != 0)
            return loco_proto_fail(e, 422, "invalid_value", "/params/encoders", "model '%s' has no %s to edit",
                                   md->name, names[i]);
        if (n && tl >= json_integer_value(n))
            return loco_proto_fail(e, 422, "out_of_range", "/params/text_layer",
                                   "'text_layer' must be below %lld, the number of layers of %s of '%s' (got %lld)",
                                   (long long)json_integer_value(n), names[i], md->name, (long long)tl);
    }
    return 0;
}

/* The layers an edit acts on: Diff-QuickFix's text-encoder layer; else its 'layers', or the
 * family's default LocoEdit window (which a tiny or unusual UNet may not have), and for neuron
 * edits, whether each layer has as many channels as 'neurons' asks of it. */
static int edit_layers_fit(const locod_model *md, const json_t *p, int ncross, loco_proto_error *e) {
    const char *method = json_string_value(json_object_get(p, "method"));
    if (quickfix_encoders_fit(md, p, e)) return -1;
    if (!method || strcmp(method, "diff_quickfix") == 0) return 0;
    const json_t *layers = json_object_get(p, "layers");
    const json_t *win = json_object_get(md->info, "edit_window");
    int start = (int)json_integer_value(json_object_get(win, "start")),
        size = (int)json_integer_value(json_object_get(win, "size"));
    if (!layers && json_is_object(win) && start + size > ncross)
        return loco_proto_fail(e, 422, "missing_field", "/params/layers",
                               "model '%s' has %d cross-attention layers, fewer than its family's default edit window "
                               "(layers %d..%d) needs; give 'layers' (0..%d, execution order)",
                               md->name, ncross, start, start + size - 1, ncross - 1);
    const json_t *pos = json_object_get(p, "position"), *maxpos = json_object_get(md->info, "max_token_position");
    if (json_is_integer(pos) && json_is_integer(maxpos) && json_integer_value(pos) > json_integer_value(maxpos))
        return loco_proto_fail(e, 422, "out_of_range", "/params/position",
                               "'position' must be a token position 0..%lld of '%s' (its prompts are padded to %lld "
                               "tokens), or \"eos\"; got %lld",
                               (long long)json_integer_value(maxpos), md->name, (long long)json_integer_value(maxpos) + 1,
                               (long long)json_integer_value(pos));
    const json_t *neurons = json_object_get(p, "neurons"), *channels = json_object_get(md->info, "cross_attention_channels");
    if (strcmp(method, "neuron") != 0 || !neurons || !json_is_array(channels)) return 0;
    const int n = layers ? (int)json_array_size(layers) : size;
    for (int i = 0; i < n; i++) {
        const int l = layers ? (int)json_integer_value(json_array_get(layers, (size_t)i)) : start + i;
        const json_int_t c = json_integer_value(json_array_get(channels, (size_t)l));
        if (l >= 0 && l < ncross && c > 0 && json_integer_value(neurons) > c)
            return loco_proto_fail(e, 422, "out_of_range", "/params/neurons",
                                   "'neurons' (%lld per matrix) is more than the %lld output channels of "
                                   "cross-attention layer %d of '%s'; ask for at most %lld",
                                   (long long)json_integer_value(neurons), (long long)c, l, md->name, (long long)c);
    }
    return 0;
}

int locod_check_job_for_model(const locod_model *md, loco_job_request *req, loco_proto_error *e) {
    json_t *p = req->params;
    if (req->kind == LOCO_JOB_EDIT && md->source == LOCOD_SRC_VARIANT)
        return loco_proto_fail(e, 422, "invalid_value", "/model",
                               "model '%s' is itself a variant (of '%s'); edit its base '%s' instead (edits do not "
                               "stack)",
                               md->name, md->base, md->base);
    const json_t *info = md->info;
    if (!info) return 0; /* still loading: the worker checks again */
    if (clip_skip_too_large(md, p, e)) return -1;
    if (req->kind != LOCO_JOB_EDIT && scheduler_unusable(md, p, e)) return -1;
    int mult = (int)json_integer_value(json_object_get(info, "size_multiple"));
    int def = (int)json_integer_value(json_object_get(info, "default_size"));
    if (req->kind != LOCO_JOB_EDIT && mult > 0) {
        const char *dims[2] = {"width", "height"};
        for (int i = 0; i < 2; i++) {
            json_t *v = json_object_get(p, dims[i]);
            if (!v && def > 0) continue;
            int x = (int)json_integer_value(v);
            if (x % mult) {
                char ptr[64];
                snprintf(ptr, sizeof ptr, "/params/%s", dims[i]);
                return loco_proto_fail(e, 422, "invalid_value", ptr,
                                       "'%s' must be a multiple of %d for model '%s' (got %d)", dims[i], mult,
                                       md->name, x);
            }
        }
    }
    int ncross = (int)json_integer_value(json_object_get(info, "cross_attention_layers"));
    const json_t *sites = json_object_get(info, "sites");
    size_t i;
    json_t *v;
    if (req->kind == LOCO_JOB_TRACE && json_is_array(sites)) {
        json_array_foreach(json_object_get(p, "components"), i, v) {
            if (!site_known(sites, json_string_value(v))) {
                char ptr[64];
                snprintf(ptr, sizeof ptr, "/params/components/%zu", i);
                return loco_proto_fail(e, 422, "unknown_site", ptr,
                                       "model '%s' has no UNet component '%.120s' to restore (components are the "
                                       "resnet, self_attn, cross_attn and ff sites GET /v1/models/%s lists)",
                                       md->name, json_string_value(v), md->name);
            }
        }
    }
    if (req->kind == LOCO_JOB_LOCALIZE && ncross > 0) {
        int window = (int)json_integer_value(json_object_get(p, "window"));
        if (window > ncross)
            return loco_proto_fail(e, 422, "out_of_range", "/params/window",
                                   "'window' must be at most %d, the number of cross-attention layers of '%s'", ncross,
                                   md->name);
        json_array_foreach(json_object_get(p, "starts"), i, v) {
            if (json_integer_value(v) + window > ncross) {
                char ptr[64];
                snprintf(ptr, sizeof ptr, "/params/starts/%zu", i);
                return loco_proto_fail(e, 422, "out_of_range", ptr,
                                       "window start %lld + window %d passes the %d cross-attention layers of '%s'",
                                       (long long)json_integer_value(v), window, ncross, md->name);
            }
        }
    }
    if (req->kind == LOCO_JOB_EDIT && ncross > 0) {
        if (edit_layers_fit(md, p, ncross, e)) return -1;
        json_array_foreach(json_object_get(p, "layers"), i, v) {
            if (json_integer_value(v) >= ncross) {
                char ptr[64];
                snprintf(ptr, sizeof ptr, "/params/layers/%zu", i);
                return loco_proto_fail(e, 422, "out_of_range", ptr,
                                       "layer %lld does not exist: '%s' has %d cross-attention layers (0..%d, execution "
                                       "order)",
                                       (long long)json_integer_value(v), md->name, ncross, ncross - 1);
            }
        }
    }
    return 0;
}

