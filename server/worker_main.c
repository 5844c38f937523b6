/* worker_main.c: the GPU worker process (see worker_proto.h for its messages, worker.h for
 * its state). It owns the backend and the resident pipelines; the daemon owns everything
 * durable. A sticky device error ends the process after the job is reported, so the next job
 * gets a fresh CUDA context. */
#include <errno.h>
#include <execinfo.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "artifacts.h"
#include "edit.h"
#include "worker.h"

static int read_some(wk_ctx *w, int timeout_ms) {
    struct pollfd pfd = {.fd = 0, .events = POLLIN};
    int r = poll(&pfd, 1, timeout_ms);
    if (r <= 0) return 0;
    char buf[65536];
    ssize_t n = read(0, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        w->in_eof = 1;
        return -1;
    }
    if (n > 0 && locod_linebuf_append(&w->in, buf, (size_t)n)) {
        w->in_eof = 1;
        return -1;
    }
    return (int)n;
}

static void pending_push(wk_ctx *w, json_t *m) {
    if (w->pending.n == w->pending.cap) {
        w->pending.cap = w->pending.cap ? w->pending.cap * 2 : 8;
        w->pending.v = realloc(w->pending.v, (size_t)w->pending.cap * sizeof(json_t *));
    }
    w->pending.v[w->pending.n++] = m;
}

/* The daemon checks limits.max_pixels at submit time; check again with the sizes this job will
 * really use (0 or absent: the model's default size), so nothing slips past that check. */
static int over_max_pixels(wk_ctx *w, wk_model *wm, const char *kind, const json_t *params, loco_err *err) {
    if (w->max_pixels <= 0 || !kind || strcmp(kind, "edit") == 0) return 0;
    int64_t def = loco_pipeline_default_size(wm->p);
    int64_t pw = json_integer_value(json_object_get(params, "width")),
            ph = json_integer_value(json_object_get(params, "height")),
            pb = json_integer_value(json_object_get(params, "batch"));
    int64_t px = (pw > 0 ? pw : def) * (ph > 0 ? ph : def) * (pb > 0 ? pb : 1);
    if (px <= w->max_pixels) return 0;
    loco_err_set(err, LOCO_EINVAL, "width x height x batch = %lld pixels exceeds this server's limit of %lld",
                 (long long)px, (long long)w->max_pixels);
    return 1;
}

/* Marks a run still waiting in `pending` as cancelled (the member name is private to the worker:
 * the daemon never sends it). Returns 1 when such a run was found. */
#define WK_CANCELLED_EARLY "_wk_cancelled"
static int cancel_pending_run(wk_ctx *w, const char *job) {
    for (int i = 0; i < w->pending.n; i++) {
        json_t *m = w->pending.v[i];
        const char *op = json_string_value(json_object_get(m, "op"));
        const char *id = json_string_value(json_object_get(m, "job"));
        if (op && id && strcmp(op, "run") == 0 && strcmp(id, job) == 0) {
            json_object_set_new(m, WK_CANCELLED_EARLY, json_true());
            return 1;
        }
    }
    return 0;
}

/* Drain complete lines: cancels for the running job act now, the rest wait. The daemon may send
 * a cancel right behind its run, so both can arrive in one read before the run has started: the
 * cancel then marks the waiting run instead of being dropped (else the job would run on until the
 * daemon kills the worker after cancel_grace_ms). A cancel for a job that is neither running nor
 * waiting is for a job already reported and is dropped. */
static void drain(wk_ctx *w) {
    json_t *m;
    int bad;
    while ((m = locod_linebuf_next(&w->in, &bad)) || bad) {
        if (!m) continue;
        const char *op = json_string_value(json_object_get(m, "op"));
        const char *job = json_string_value(json_object_get(m, "job"));
        if (op && strcmp(op, "cancel") == 0) {
            if (job && w->job[0] && strcmp(job, w->job) == 0) w->cancel = 1;
            else if (job) cancel_pending_run(w, job);
            json_decref(m);
            continue;
        }
        pending_push(w, m);
    }
}

static int fault(wk_ctx *w, const char *what) {
    return w->test_faults && w->job[0] && w->cur_prompt && strcmp(w->cur_prompt, what) == 0;
}

int wk_progress(wk_ctx *w, const char *phase, int step, int total) {
    json_t *m = json_pack("{s:s, s:s, s:s, s:i, s:i}", "ev", "progress", "job", w->job, "phase", phase, "step", step,
                          "total", total);
    locod_send_json(w->out_fd, m);
    json_decref(m);
    if (fault(w, "__loco_test_crash__") && step >= 1) abort();
    if (fault(w, "__loco_test_hang__") && step >= 1)
        for (;;) sleep(1); /* ignores cancel: the daemon must kill us */
    if (fault(w, "__loco_test_slow__")) {
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return wk_cancelled(w);
}

int wk_cancelled(wk_ctx *w) {
    while (read_some(w, 0) > 0) {
    }
    drain(w);
    return w->cancel || w->in_eof;
}

loco_status wk_put_artifact(wk_ctx *w, const void *data, size_t n, const char *name, const char *mt,
                            json_t *artifacts, char *sha, loco_err *err) {
    loco_status st = locod_artifact_put(w->artifacts, data, n, sha, err);
    if (st) return st;
    char url[128];
    snprintf(url, sizeof url, "/v1/artifacts/%s", sha);
    json_array_append_new(artifacts, json_pack("{s:s, s:I, s:s, s:s, s:s}", "sha256", sha, "size", (json_int_t)n,
                                               "media_type", mt, "name", name, "url", url));
    return LOCO_OK;
}

loco_status wk_put_artifact_file(wk_ctx *w, const char *tmp, const char *name, const char *mt, json_t *artifacts,
                                 char *sha, loco_err *err) {
    uint64_t size = 0;
    loco_status st = locod_artifact_put_file(w->artifacts, tmp, sha, &size, err);
    if (st) return st;
    char url[128];
    snprintf(url, sizeof url, "/v1/artifacts/%s", sha);
    json_array_append_new(artifacts, json_pack("{s:s, s:I, s:s, s:s, s:s}", "sha256", sha, "size",
                                               (json_int_t)size, "media_type", mt, "name", name, "url", url));
    return LOCO_OK;
}

static wk_model *find_model(wk_ctx *w, const char *name) {
    for (int i = 0; i < w->n_models; i++)
        if (strcmp(w->models[i].name, name) == 0) return &w->models[i];
    return NULL;
}

/* The backend's live and peak tensor bytes; the recorded UNet graphs' pools (held between
 * calls on top of those, given back when an allocation runs short); the card's free and total
 * memory where it has one. */
static json_t *memory_json(wk_ctx *w) {
    size_t cur = 0, peak = 0, pools = 0, dev_free = 0, dev_total = 0;
    loco_backend_memory(w->be, &cur, &peak);
    for (int i = 0; i < w->n_models; i++) {
        loco_unet_graph_stats st;
        loco_unet_graph_stats_get(loco_pipeline_unet(w->models[i].p), &st);
        pools += st.pool_bytes;
    }
    json_t *o = json_pack("{s:I, s:I, s:I}", "current", (json_int_t)cur, "peak", (json_int_t)peak, "graph_pools",
                          (json_int_t)pools);
    if (loco_backend_device_memory(w->be, &dev_free, &dev_total, NULL) == LOCO_OK) {
        json_object_set_new(o, "device_free", json_integer((json_int_t)dev_free));
        json_object_set_new(o, "device_total", json_integer((json_int_t)dev_total));
    }
    return o;
}

static json_t *sites_json(loco_pipeline *p) {
    json_t *arr = json_array();
    int n = 0;
    const loco_site *s = loco_unet_sites(loco_pipeline_unet(p), &n);
    for (int i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:i}", "component", "unet", "name", s[i].name, "kind",
                              loco_site_kind_name(s[i].kind), "index", s[i].id);
        json_object_set_new(o, "cross_index", s[i].cross_index >= 0 ? json_integer(s[i].cross_index) : json_null());
        json_array_append_new(arr, o);
    }
    for (int which = 1; which <= 2; which++) {
        const loco_clip_text *t = loco_pipeline_text_encoder(p, which);
        if (!t) continue;
        int nt = loco_clip_text_num_sites(t);
        for (int i = 0; i < nt; i++) {
            const loco_site *ts = loco_clip_text_site(t, i);
            json_t *o = json_pack("{s:s, s:s, s:s, s:i}", "component", which == 1 ? "text_encoder" : "text_encoder_2",
                                  "name", ts->name, "kind", loco_site_kind_name(ts->kind), "index", ts->id);
            json_object_set_new(o, "layer", ts->layer >= 0 ? json_integer(ts->layer) : json_null());
            json_array_append_new(arr, o);
        }
    }
    return arr;
}

/* Layers per text encoder, {"text_encoder": n, "text_encoder_2": n} (what a Diff-QuickFix
 * 'text_layer' of the encoders it edits must stay below), and the largest clip_skip every encoder
 * honours: SD 1.x/2.x read hidden_states[-(k+1)], SD-XL [-(k+2)], of num_hidden_layers + 1 states
 * (text_conditioning.c checks the same). */
static json_t *text_encoder_layers(loco_pipeline *p, int *max_clip_skip) {
    json_t *o = json_object();
    int fewest = -1;
    for (int which = 1; which <= 2; which++) {
        const loco_clip_text *t = loco_pipeline_text_encoder(p, which);
        if (!t) continue;
        const int n = loco_clip_text_get_config(t)->num_hidden_layers;
        json_object_set_new(o, which == 1 ? "text_encoder" : "text_encoder_2", json_integer(n));
        if (fewest < 0 || n < fewest) fewest = n;
    }
    const int k = (fewest < 0 ? 0 : fewest) + 1 - (loco_pipeline_family(p) == LOCO_FAMILY_SDXL ? 2 : 1);
    *max_clip_skip = k < 0 ? 0 : k;
    return o;
}

static json_t *model_info(wk_ctx *w, const wk_model *wm) {
    loco_pipeline *p = wm->p;
    const loco_unet_config *uc = loco_unet_get_config(loco_pipeline_unet(p));
    json_t *info = json_object();
    json_object_set_new(info, "family", json_string(loco_model_family_name(loco_pipeline_family(p))));
    json_object_set_new(info, "default_size", json_integer(loco_pipeline_default_size(p)));
    json_object_set_new(info, "size_multiple", json_integer(loco_pipeline_vae_scale(p) << (uc->n_blocks - 1)));
    /* the class the model asks for, and its loco name, or null when loco lacks that class (jobs
     * must then name a scheduler: job_checks.c refuses the others before queueing them) */
    json_object_set_new(info, "default_scheduler",
                        loco_pipeline_has_default_scheduler(p)
                            ? json_string(loco_scheduler_kind_name(loco_pipeline_default_scheduler(p)))
                            : json_null());
    json_object_set_new(info, "scheduler_class", json_string(loco_pipeline_scheduler_class(p)));
    const int n_cross = loco_unet_n_cross(loco_pipeline_unet(p));
    json_object_set_new(info, "cross_attention_layers", json_integer(n_cross));
    /* what the daemon checks edit requests against before it accepts them (job_checks.c) */
    json_t *channels = json_array();
    for (int i = 0; i < n_cross; i++)
        json_array_append_new(channels, json_integer(loco_unet_cross_channels(loco_pipeline_unet(p), i)));
    json_object_set_new(info, "cross_attention_channels", channels);
    int win_start, win_size;
    loco_edit_default_window(loco_pipeline_family(p), &win_start, &win_size);
    json_object_set_new(info, "edit_window", json_pack("{s:i, s:i}", "start", win_start, "size", win_size));
    int max_clip_skip;
    json_object_set_new(info, "text_encoder_layers", text_encoder_layers(p, &max_clip_skip));
    json_object_set_new(info, "max_clip_skip", json_integer(max_clip_skip));
    /* the last token position of a padded prompt (a neuron edit's 'position' must not pass it) */
    const loco_clip_tokenizer *tok = loco_pipeline_tokenizer(p, 1);
    if (!tok) tok = loco_pipeline_tokenizer(p, 2);
    if (tok) json_object_set_new(info, "max_token_position", json_integer(loco_clip_tokenizer_max_length(tok) - 1));
    json_object_set_new(info, "device", json_string(loco_backend_describe(w->be)));
    json_object_set_new(info, "memory", json_pack("{s:I}", "bytes", (json_int_t)wm->bytes));
    json_object_set_new(info, "sites", sites_json(p));
    return info;
}

/* Re-create a variant recorded by an earlier edit: a fresh variant of the resident base with the
 * edit's delta file applied, which holds exactly the float32 values the edit uploaded, so it
 * generates bit for bit what the original variant did. */
/* Puts variant v of base under `name` in the next model slot (the caller checked there is one);
 * the slot owns v from now on. base may point into the table, so it is copied first. */
static wk_model *add_variant(wk_ctx *w, const char *name, const char *base, loco_pipeline_variant *v) {
    char bname[LOCO_MODEL_NAME_MAX + 1];
    snprintf(bname, sizeof bname, "%s", base);
    wk_model *wm = &w->models[w->n_models++];
    memset(wm, 0, sizeof *wm); /* the slot may still hold a freed variant's fields */
    snprintf(wm->name, sizeof wm->name, "%s", name);
    snprintf(wm->base, sizeof wm->base, "%s", bname);
    wm->variant = v;
    wm->p = loco_pipeline_variant_pipeline(v);
    wm->bytes = loco_pipeline_variant_owned_bytes(v);
    return wm;
}

static loco_status load_variant(wk_ctx *w, const char *name, const json_t *m, loco_err *err) {
    const char *base = json_string_value(json_object_get(m, "base"));
    const char *delta = json_string_value(json_object_get(m, "delta"));
    const char *sha = json_string_value(json_object_get(m, "delta_sha256"));
    wk_model *b = base ? find_model(w, base) : NULL;
    if (!delta) return loco_err_set(err, LOCO_EINVAL, "a variant load needs base and delta");
    if (!b || b->variant)
        return loco_err_set(err, LOCO_ENOTFOUND, "its base model '%s' is not resident on the worker; load it first",
                            base ? base : "");
    if (access(delta, R_OK))
        return loco_err_set(err, LOCO_ENOTFOUND,
                            "its delta artifact %s is gone from the artifact store (%s), so the variant cannot be "
                            "re-created: delete it (POST /v1/models/%s/unload) and run the edit again",
                            sha ? sha : delta, strerror(errno), name);
    loco_pipeline_variant *v = NULL;
    loco_status st = loco_pipeline_variant_create(b->p, &v, err);
    if (!st) st = loco_pipeline_variant_apply_delta(v, delta, err);
    if (st) {
        loco_pipeline_variant_free(v);
        return loco_err_prefix(err, "re-creating variant %s from its delta", name);
    }
    const wk_model *wm = add_variant(w, name, b->name, v);
    LOG_INFO(w->log, "variant %s of %s re-created from its delta", name, wm->base);
    return LOCO_OK;
}

static void do_load(wk_ctx *w, const json_t *m) {
    const char *name = json_string_value(json_object_get(m, "model"));
    const char *path = json_string_value(json_object_get(m, "path"));
    loco_err err;
    loco_err_clear(&err);
    json_t *reply = json_pack("{s:s, s:s}", "ev", "loaded", "model", name ? name : "");
    if (name && !find_model(w, name) && w->n_models < LOCOD_WORKER_MAX_MODELS && json_object_get(m, "base")) {
        if (load_variant(w, name, m, &err) == LOCO_EDEVICE) w->restart_after = 1;
    } else if (!name || (!path && !json_object_get(m, "base"))) {
        loco_err_set(&err, LOCO_EINVAL, "load needs model and path");
    } else if (find_model(w, name)) {
        /* already resident: report again */
    } else if (w->n_models == LOCOD_WORKER_MAX_MODELS) {
        loco_err_set(&err, LOCO_EUNSUPPORTED, "at most %d models can be resident at once; unload one first",
                     LOCOD_WORKER_MAX_MODELS);
    } else {
        loco_pipeline_opts o;
        loco_pipeline_opts_init(&o);
        o.model_path = path;
        o.config_dir = json_string_value(json_object_get(m, "config_dir"));
        o.variant = json_string_value(json_object_get(m, "variant"));
        o.vae_upcast_dtype = w->vae_upcast;
        size_t before = 0, peak = 0, after = 0;
        loco_backend_memory(w->be, &before, &peak);
        loco_pipeline *p = NULL;
        LOG_INFO(w->log, "loading model %s from %s", name, path);
        if (loco_pipeline_load(w->be, &o, &p, &err) == LOCO_OK) {
            loco_backend_memory(w->be, &after, &peak);
            wk_model *wm = &w->models[w->n_models++];
            memset(wm, 0, sizeof *wm); /* the slot may still hold a freed variant's fields */
            snprintf(wm->name, sizeof wm->name, "%s", name);
            wm->p = p;
            wm->bytes = after > before ? after - before : 0;
        } else if (err.code == LOCO_EDEVICE) {
            w->restart_after = 1;
        }
    }
    wk_model *wm = name ? find_model(w, name) : NULL;
    if (wm) {
        json_object_set_new(reply, "ok", json_true());
        json_object_set_new(reply, "info", model_info(w, wm));
    } else {
        json_object_set_new(reply, "ok", json_false());
        json_object_set_new(reply, "error",
                            json_pack("{s:s, s:s}", "code", loco_status_name(err.code), "message", err.msg));
    }
    json_object_set_new(reply, "memory", memory_json(w));
    locod_send_json(w->out_fd, reply);
    json_decref(reply);
}

static void free_model_at(wk_ctx *w, int i) {
    if (w->models[i].variant) loco_pipeline_variant_free(w->models[i].variant);
    else loco_pipeline_free(w->models[i].p);
    memmove(&w->models[i], &w->models[i + 1], (size_t)(w->n_models - i - 1) * sizeof *w->models);
    w->n_models--;
    memset(&w->models[w->n_models], 0, sizeof w->models[0]);
}

static void send_unloaded(wk_ctx *w, const char *name) {
    json_t *reply = json_pack("{s:s, s:s}", "ev", "unloaded", "model", name);
    json_object_set_new(reply, "memory", memory_json(w));
    locod_send_json(w->out_fd, reply);
    json_decref(reply);
}

static void do_unload(wk_ctx *w, const json_t *m) {
    const char *name = json_string_value(json_object_get(m, "model"));
    char nm[LOCO_MODEL_NAME_MAX + 1];
    snprintf(nm, sizeof nm, "%s", name ? name : "");
    /* variants first: a base must outlive its variants */
    for (int i = 0; i < w->n_models; i++)
        if (w->models[i].variant && strcmp(w->models[i].base, nm) == 0) {
            char vn[LOCO_MODEL_NAME_MAX + 1];
            snprintf(vn, sizeof vn, "%s", w->models[i].name);
            free_model_at(w, i--);
            send_unloaded(w, vn);
        }
    for (int i = 0; i < w->n_models; i++)
        if (strcmp(w->models[i].name, nm) == 0) {
            free_model_at(w, i);
            break;
        }
    send_unloaded(w, nm);
}

static int ensure_scorer(wk_ctx *w, loco_err *err) {
    if (w->scorer) return 1;
    if (!w->scorer_path[0]) {
        loco_err_set(err, LOCO_EUNSUPPORTED, "this server has no CLIP scorer (config key clip_scorer)");
        return 0;
    }
    if (loco_clip_scorer_load(w->be, w->scorer_path, &w->scorer, err)) {
        loco_err_prefix(err, "loading the CLIP scorer %s", w->scorer_path);
        return 0;
    }
    return 1;
}

static const char *error_code(loco_status st) {
    switch (st) {
    case LOCO_ECANCELLED: return "cancelled";
    case LOCO_EDEVICE_OOM: return "gpu_oom";
    case LOCO_EDEVICE: return "gpu_error";
    case LOCO_EINVAL: return "invalid_request";
    case LOCO_EUNSUPPORTED: return "unsupported";
    case LOCO_ENOMEM: return "out_of_memory";
    case LOCO_EIO: return "io_error";
    default: return "job_error";
    }
}

static void do_run(wk_ctx *w, const json_t *m) {
    const char *job = json_string_value(json_object_get(m, "job"));
    const char *kind = json_string_value(json_object_get(m, "kind"));
    const char *model = json_string_value(json_object_get(m, "model"));
    const json_t *params = json_object_get(m, "params");
    snprintf(w->job, sizeof w->job, "%s", job ? job : "");
    w->cancel = json_is_true(json_object_get(m, WK_CANCELLED_EARLY));
    w->cur_prompt = json_string_value(json_object_get(params, "prompt"));
    if (!w->cur_prompt) /* localize: its first prompt, so the test hooks reach it too */
        w->cur_prompt = json_string_value(json_array_get(json_object_get(params, "prompts"), 0));
    loco_err err;
    loco_err_clear(&err);
    json_t *result = json_object(), *artifacts = json_array(), *variant_info = NULL;
    wk_model *wm = model ? find_model(w, model) : NULL;
    loco_status st;
    if (w->cancel) {
        st = loco_err_set(&err, LOCO_ECANCELLED, "cancelled at the client's request");
    } else if (!wm) {
        st = loco_err_set(&err, LOCO_ENOTFOUND, "model '%s' is not resident on the worker; load it again",
                          model ? model : "");
    } else if (over_max_pixels(w, wm, kind, params, &err)) {
        st = err.code;
    } else if (fault(w, "__loco_test_device_fault__")) {
        st = loco_err_set(&err, LOCO_EDEVICE, "injected device fault (LOCOD_TEST_FAULTS)");
    } else if (kind && strcmp(kind, "generate") == 0) {
        st = wk_run_generate(w, wm, params, result, artifacts, &err);
    } else if (kind && (strcmp(kind, "trace") == 0 || strcmp(kind, "localize") == 0) && !ensure_scorer(w, &err)) {
        st = err.code;
    } else if (kind && strcmp(kind, "trace") == 0) {
        st = wk_run_trace(w, wm->p, params, result, artifacts, &err);
    } else if (kind && strcmp(kind, "localize") == 0) {
        st = wk_run_localize(w, wm->p, params, result, artifacts, &err);
    } else if (kind && strcmp(kind, "edit") == 0) {
        const char *vn = json_string_value(json_object_get(params, "variant"));
        char vname[LOCO_MODEL_NAME_MAX + 1];
        if (vn) snprintf(vname, sizeof vname, "%s", vn);
        else snprintf(vname, sizeof vname, "%.80s+%.8s", wm->name, w->job);
        loco_pipeline_variant *v = NULL;
        if (find_model(w, vname)) st = loco_err_set(&err, LOCO_EINVAL, "a model named '%s' already exists; choose another 'variant'", vname);
        else if (w->n_models == LOCOD_WORKER_MAX_MODELS) st = loco_err_set(&err, LOCO_EUNSUPPORTED, "too many resident models and variants; unload some");
        else st = wk_run_edit(w, wm, params, vname, result, artifacts, &v, &err);
        if (st == LOCO_OK && w->cancel) {
            loco_pipeline_variant_free(v);
            v = NULL;
        } else if (st == LOCO_OK) {
            wk_model *nm = add_variant(w, vname, wm->name, v);
            variant_info = json_pack("{s:s, s:s, s:o}", "name", vname, "base", nm->base, "info", model_info(w, nm));
        }
    } else {
        st = loco_err_set(&err, LOCO_EUNSUPPORTED, "job kind '%s' is not wired to the engine in this build",
                          kind ? kind : "");
    }
    if (st == LOCO_OK && w->cancel) st = loco_err_set(&err, LOCO_ECANCELLED, "cancelled at the client's request");
    json_t *reply = json_pack("{s:s, s:s}", "ev", "done", "job", w->job);
    if (st == LOCO_OK) {
        json_object_set_new(reply, "ok", json_true());
        json_object_set(reply, "result", result);
        json_object_set(reply, "artifacts", artifacts);
        if (variant_info) json_object_set(reply, "variant", variant_info);
    } else {
        if (st == LOCO_EDEVICE) w->restart_after = 1;
        json_object_set_new(reply, "ok", json_false());
        json_object_set_new(reply, "error", json_pack("{s:s, s:s, s:b}", "code", error_code(st), "message", err.msg,
                                                      "retryable", st == LOCO_EDEVICE || st == LOCO_EDEVICE_OOM));
        json_object_set_new(reply, "restart", json_boolean(w->restart_after));
        /* files a failing job already stored (images before a cancel, half a folder export):
         * the daemon links them to the job, so retention removes them with it */
        if (json_array_size(artifacts)) json_object_set(reply, "artifacts", artifacts);
    }
    json_object_set_new(reply, "memory", memory_json(w));
    locod_send_json(w->out_fd, reply);
    json_decref(reply);
    json_decref(result);
    json_decref(artifacts);
    json_decref(variant_info);
    w->job[0] = 0;
    w->cur_prompt = NULL;
    w->cancel = 0;
}

static json_t *next_message(wk_ctx *w) {
    for (;;) {
        if (w->pending.n) {
            json_t *m = w->pending.v[0];
            memmove(w->pending.v, w->pending.v + 1, (size_t)(w->pending.n - 1) * sizeof(json_t *));
            w->pending.n--;
            return m;
        }
        drain(w);
        if (w->pending.n) continue;
        if (w->in_eof) return NULL;
        read_some(w, -1);
    }
}

/* A crash in the engine: leave a backtrace in the daemon's log, then die of the same signal so
 * the supervisor reports it on the job. */
static void on_fatal(int sig) {
    void *frames[64];
    int n = backtrace(frames, 64);
    static const char msg[] = "locod-worker: fatal signal, backtrace:\n";
    ssize_t wr = write(2, msg, sizeof msg - 1);
    (void)wr;
    backtrace_symbols_fd(frames, n, 2);
    signal(sig, SIG_DFL);
    raise(sig);
}

int locod_worker_main(int argc, char **argv) {
    static const struct option opts[] = {{"worker", no_argument, 0, 'w'},       {"device", required_argument, 0, 'd'},
                                         {"threads", required_argument, 0, 't'}, {"artifacts", required_argument, 0, 'a'},
                                         {"test-faults", no_argument, 0, 'f'},   {"clip-scorer", required_argument, 0, 's'},
                                         {"max-pixels", required_argument, 0, 'p'},
                                         {"vae-upcast", required_argument, 0, 'u'}, {0}};
    wk_ctx w;
    memset(&w, 0, sizeof w);
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'w': break;
        case 'd':
            if (loco_device_from_name(optarg, &bo.device)) return 2;
            break;
        case 't': bo.num_threads = atoi(optarg); break;
        case 'a': snprintf(w.artifacts, sizeof w.artifacts, "%s", optarg); break;
        case 'f': w.test_faults = 1; break;
        case 'p': w.max_pixels = strtoll(optarg, NULL, 10); break;
        case 's': snprintf(w.scorer_path, sizeof w.scorer_path, "%s", optarg); break;
        case 'u':
            if (strcmp(optarg, "f32") && strcmp(optarg, "bf16")) return 2;
            w.vae_upcast = strcmp(optarg, "bf16") ? LOCO_F32 : LOCO_BF16;
            break;
        default: return 2;
        }
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the daemon */
    if (!getenv("LOCOD_NO_BACKTRACE")) {
        void *warm[1];
        backtrace(warm, 1); /* load libgcc now, not inside the handler */
        int sigs[] = {SIGSEGV, SIGFPE, SIGBUS, SIGILL};
        for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) signal(sigs[i], on_fatal);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_IGN); /* the daemon decides when we stop (it closes our stdin) */
    dup2(2, 1); /* anything printed on stdout must not corrupt the message pipe */
    w.out_fd = LOCOD_WORKER_MSG_FD;
    w.log = loco_log_create(stderr, LOCO_LOG_INFO, "locod-worker");
    loco_err err;
    loco_err_clear(&err);
    if (loco_backend_create(&bo, &w.be, &err)) {
        json_t *m = json_pack("{s:s, s:s}", "ev", "fatal", "message", err.msg);
        locod_send_json(w.out_fd, m);
        json_decref(m);
        loco_log_destroy(w.log);
        return 3;
    }
    json_t *ready = json_pack("{s:s, s:s}", "ev", "ready", "device", loco_backend_describe(w.be));
    locod_send_json(w.out_fd, ready);
    json_decref(ready);
    json_t *m;
    while (!w.restart_after && (m = next_message(&w))) {
        const char *op = json_string_value(json_object_get(m, "op"));
        if (!op) {
        } else if (strcmp(op, "load") == 0) {
            do_load(&w, m);
        } else if (strcmp(op, "unload") == 0) {
            do_unload(&w, m);
        } else if (strcmp(op, "run") == 0) {
            do_run(&w, m);
        }
        json_decref(m);
    }
    for (int i = w.n_models - 1; i >= 0; i--) /* variants were added after their bases */
        if (w.models[i].variant) loco_pipeline_variant_free(w.models[i].variant);
    for (int i = 0; i < w.n_models; i++)
        if (!w.models[i].variant) loco_pipeline_free(w.models[i].p);
    loco_clip_scorer_free(w.scorer);
    for (int i = 0; i < w.pending.n; i++) json_decref(w.pending.v[i]);
    free(w.pending.v);
    locod_linebuf_free(&w.in);
    loco_backend_destroy(w.be);
    int rc = w.restart_after ? 4 : 0;
    if (rc) LOG_WARN(w.log, "exiting after a device error so the next job gets a fresh device context");
    loco_log_destroy(w.log);
    return rc;
}
