/* routes_jobs.c: POST /v1/jobs (validate, check limits and quota, INSERT durably, then 202),
 * GET /v1/jobs (filters, cursor), GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel, and the
 * event stream route (sse.c). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "auth.h"
#include "http.h"
#include "job_checks.h"
#include "worker_proto.h"

/* Which kinds the worker can run here: generate and edit always; trace and localize score
 * their images with CLIP, so they need a scorer in the config. The others are validated fully
 * and then answered 501, never accepted and failed later. */
static int kind_wired(const locod_config *cfg, loco_job_kind k) {
    return k == LOCO_JOB_GENERATE || k == LOCO_JOB_EDIT || cfg->clip_scorer != NULL;
}

int locod_req_may_see(locod_req *r, const char *key_id) { return r->admin || strcmp(r->key_id, key_id) == 0; }

json_t *locod_job_json(locod_server *srv, const locod_job_row *row) {
    loco_job_view v;
    loco_job_view_init(&v);
    v.id = row->id;
    v.kind = row->kind;
    v.state = row->state;
    v.model = row->model;
    v.key_id = row->key_id;
    v.params = row->params;
    v.result = row->result;
    v.artifacts = row->artifacts;
    v.error_code = row->error_code[0] ? row->error_code : NULL;
    v.error_message = row->error_message;
    v.error_retryable = row->error_retryable;
    v.retry_on_restart = row->retry_on_restart;
    v.attempts = row->attempts;
    v.cancel_requested = row->cancel_requested;
    v.created_ms = row->created_ms;
    v.started_ms = row->started_ms;
    v.finished_ms = row->finished_ms;
    v.expires_ms = row->expires_ms;
    if (row->state == LOCO_JOB_QUEUED) v.queue_position = locod_queue_position(srv->queue, row->id);
    if (row->state == LOCO_JOB_RUNNING && srv->run.active && strcmp(srv->run.id, row->id) == 0) {
        v.phase = srv->run.phase;
        v.step = srv->run.step;
        v.total = srv->run.total;
        v.cancel_requested = v.cancel_requested || srv->run.cancel_requested;
    } else if (row->state == LOCO_JOB_RUNNING) {
        v.phase = "starting";
    }
    return loco_job_to_json(&v);
}

static int valid_job_id(const char *s) {
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= LOCO_JOB_ID_LEN || !((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f'))) return 0;
    return n == LOCO_JOB_ID_LEN;
}

static void new_job_id(char *out) {
    uint8_t b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        for (size_t i = 0; i < sizeof b; i++) b[i] = (uint8_t)rand();
    locod_hex(b, sizeof b, out);
}

static int idem_key_valid(const char *k) {
    size_t n = strlen(k);
    if (n == 0 || n > 255) return 0;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 0x21 || k[i] > 0x7e) return 0;
    return 1;
}

static enum MHD_Result created(locod_req *r, int status, json_t *job, int replayed) {
    char loc[96];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", json_string_value(json_object_get(job, "id")));
    const char *const h[] = {"Location", loc, replayed ? "Idempotent-Replayed" : NULL, "true", NULL};
    return locod_reply_json(r, status, job, h);
}

static enum MHD_Result create(locod_req *r) {
    locod_server *srv = r->srv;
    const locod_config *cfg = srv->cfg;
    const char *ct = locod_req_header(r, "Content-Type");
    if (!ct || (strncasecmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';' && ct[16] != ' ')))
        return locod_problem(r, 415, "unsupported_media_type", NULL, NULL,
                             "send the job as JSON with 'Content-Type: application/json' (got '%.60s')",
                             ct ? ct : "no Content-Type");
    if (!r->body_len) return locod_problem(r, 400, "empty_body", NULL, NULL, "the request body is empty; send a job as JSON");
    json_error_t je;
    json_t *body = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!body) {
        /* jansson refuses integers beyond int64 before any field is known; say which limit that is */
        int too_big = strncmp(je.text, "too big", 7) == 0;
        return locod_problem(r, 400, "malformed_json", NULL, NULL, "the body is not valid JSON: %s (line %d, column %d)%s",
                             je.text, je.line, je.column,
                             too_big ? "; integers must lie between -2^63 and 2^63-1 (a seed must be below 2^63)" : "");
    }
    const char *idem = locod_req_header(r, "Idempotency-Key");
    if (idem && !idem_key_valid(idem)) {
        json_decref(body);
        return locod_problem(r, 400, "invalid_idempotency_key", NULL, NULL,
                             "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is a good choice)");
    }
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) seed = (uint64_t)locod_now_ms();
    loco_job_request req;
    loco_proto_error pe;
    loco_proto_error_clear(&pe);
    if (loco_job_request_parse(body, &cfg->limits, seed >> 1, &req, &pe)) {
        loco_job_request_release(&req);
        json_decref(body);
        return locod_problem(r, pe.status ? pe.status : 422, pe.code[0] ? pe.code : "invalid_request", pe.pointer, NULL,
                             "%s", pe.detail);
    }
    char hash[65] = "";
    if (idem) {
        char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        uint8_t d[32];
        locod_sha256(canon, strlen(canon), d);
        locod_hex(d, 32, hash);
        free(canon);
    }
    json_decref(body);
    char ra[16];
    snprintf(ra, sizeof ra, "%d", cfg->retry_after_s);
    const char *const retry_h[] = {"Retry-After", ra, NULL};
    enum MHD_Result res;
    pthread_mutex_lock(&srv->mu);
    locod_job_row row;
    memset(&row, 0, sizeof row);
    loco_err err;
    loco_err_clear(&err);
    if (idem) {
        int found = locod_store_find_idempotent(srv->store, r->key_id, idem, &row, &err);
        if (found == 1) {
            int same = strcmp(row.req_hash, hash) == 0;
            json_t *job = same ? locod_job_json(srv, &row) : NULL;
            locod_job_row_free(&row);
            pthread_mutex_unlock(&srv->mu);
            loco_job_request_release(&req);
            if (!same)
                return locod_problem(r, 422, "idempotency_key_reused", NULL, NULL,
                                     "Idempotency-Key '%.80s' was already used with a different request body; use a "
                                     "new key for a new job",
                                     idem);
            return created(r, 200, job, 1);
        }
    }
    locod_model *md = locod_models_find(srv->models, req.model);
    if (!md) {
        locod_models_rescan(srv->models);
        md = locod_models_find(srv->models, req.model);
    }
    if (!md) {
        pthread_mutex_unlock(&srv->mu);
        res = locod_problem(r, 422, "unknown_model", "/model", NULL,
                            "no model named '%.100s' on this server; GET /v1/models lists the models it knows",
                            req.model);
        loco_job_request_release(&req);
        return res;
    }
    if (md->state != LOCOD_MODEL_LOADED && md->state != LOCOD_MODEL_LOADING) {
        pthread_mutex_unlock(&srv->mu);
        res = locod_problem(r, 409, "model_not_loaded", "/model", NULL,
                            "model '%s' is not loaded (state: %s%s%s); an admin can load it with POST "
                            "/v1/models/%s/load",
                            md->name, locod_model_state_name(md->state), md->error ? ", last error: " : "",
                            md->error ? md->error : "", md->name);
        loco_job_request_release(&req);
        return res;
    }
    if (locod_check_job_for_model(md, &req, &pe)) {
        pthread_mutex_unlock(&srv->mu);
        res = locod_problem(r, pe.status ? pe.status : 422, pe.code, pe.pointer, NULL, "%s", pe.detail);
        loco_job_request_release(&req);
        return res;
    }
    if (!kind_wired(cfg, req.kind)) {
        pthread_mutex_unlock(&srv->mu);
        res = locod_problem(r, 501, "kind_not_implemented", "/kind", NULL,
                            "job kind '%s' is valid but this server cannot run it: it scores images with CLIP and the "
                            "config names no CLIP model (clip_scorer); generate and edit jobs run here",
                            loco_job_kind_name(req.kind));
        loco_job_request_release(&req);
        return res;
    }
    const char *variant = json_string_value(json_object_get(req.params, "variant"));
    if (req.kind == LOCO_JOB_EDIT && variant &&
        (locod_models_find(srv->models, variant) || locod_store_variant_pending(srv->store, variant))) {
        const int pending = !locod_models_find(srv->models, variant);
        pthread_mutex_unlock(&srv->mu);
        res = locod_problem(r, 409, "variant_exists", "/params/variant", NULL,
                            pending ? "an edit job already queued or running creates a variant named '%s'; choose "
                                      "another variant name"
                                    : "a model named '%s' already exists; choose another variant name (or unload "
                                      "that variant)",
                            variant);
        loco_job_request_release(&req);
        return res;
    }
    if (req.kind == LOCO_JOB_EDIT) {
        /* every edit leaves a resident variant, and the worker holds at most
         * LOCOD_WORKER_MAX_MODELS models: refuse now what would fail there (once full, every
         * edit, and every admin's load, failed after acceptance) */
        int resident = locod_store_edits_pending(srv->store);
        for (int i = 0; i < locod_models_count(srv->models); i++) {
            const locod_model *m = locod_models_at(srv->models, i);
            resident += m->state == LOCOD_MODEL_LOADED || m->state == LOCOD_MODEL_LOADING;
        }
        if (resident >= LOCOD_WORKER_MAX_MODELS) {
            pthread_mutex_unlock(&srv->mu);
            res = locod_problem(r, 409, "model_capacity", NULL, NULL,
                                "this server holds at most %d resident models and variants, and %d are resident or "
                                "being created by queued edits; an admin must unload a variant (POST "
                                "/v1/models/{name}/unload deletes it) before another edit",
                                LOCOD_WORKER_MAX_MODELS, resident);
            loco_job_request_release(&req);
            return res;
        }
    }
    if (req.kind != LOCO_JOB_EDIT && md->info) {
        int def = (int)json_integer_value(json_object_get(md->info, "default_size"));
        if (def > 0 && !json_object_get(req.params, "width")) json_object_set_new(req.params, "width", json_integer(def));
        if (def > 0 && !json_object_get(req.params, "height")) json_object_set_new(req.params, "height", json_integer(def));
    }
    /* The request check (loco_params_sampler) sees only the sizes the client gave: check again
     * with the model's defaults filled in. */
    json_int_t pw = json_integer_value(json_object_get(req.params, "width")),
               ph = json_integer_value(json_object_get(req.params, "height")),
               pb = json_integer_value(json_object_get(req.params, "batch"));
    if (pw > 0 && ph > 0 && (int64_t)pw * ph * (pb > 0 ? pb : 1) > cfg->limits.max_pixels) {
        pthread_mutex_unlock(&srv->mu);
        res = locod_problem(r, 422, "too_large", "/params", NULL,
                            "width x height x batch = %lld pixels (with the model's default size for what the request "
                            "left out) exceeds this server's limit of %lld; give a smaller width/height or batch",
                            (long long)(pw * ph * (pb > 0 ? pb : 1)), (long long)cfg->limits.max_pixels);
        loco_job_request_release(&req);
        return res;
    }
    int quota = r->key && r->key->max_pending ? r->key->max_pending : cfg->max_pending_per_key;
    if (locod_queue_size(srv->queue) >= cfg->max_queue) {
        pthread_mutex_unlock(&srv->mu);
        loco_job_request_release(&req);
        return locod_problem(r, 503, "queue_full", NULL, retry_h,
                             "the queue is full (%d jobs waiting, queue.max_queued); retry after %d s", cfg->max_queue,
                             cfg->retry_after_s);
    }
    if (locod_key_pending(srv, r->key_id) >= quota) {
        pthread_mutex_unlock(&srv->mu);
        loco_job_request_release(&req);
        return locod_problem(r, 429, "quota_exceeded", NULL, retry_h,
                             "key '%s' already has %d jobs queued or running, its quota; wait for some to finish (or "
                             "cancel some) and retry",
                             r->key_id, quota);
    }
    new_job_id(row.id);
    row.kind = req.kind;
    row.state = LOCO_JOB_QUEUED;
    snprintf(row.model, sizeof row.model, "%s", req.model);
    snprintf(row.key_id, sizeof row.key_id, "%s", r->key_id);
    row.params = req.params;
    req.params = NULL;
    row.retry_on_restart = req.retry_on_restart;
    row.created_ms = locod_now_ms();
    if (idem) {
        snprintf(row.idem_key, sizeof row.idem_key, "%s", idem);
        snprintf(row.req_hash, sizeof row.req_hash, "%s", hash);
    }
    if (locod_store_group_begin(srv->store, &err) || locod_store_insert(srv->store, &row, &err) ||
        locod_store_wait_durable(srv)) {
        if (!err.msg[0]) loco_err_set(&err, LOCO_EIO, "the commit failed");
        pthread_mutex_unlock(&srv->mu);
        LOG_ERROR(srv->log, "job store insert failed: %s", err.msg);
        locod_job_row_free(&row);
        return locod_problem(r, 503, "store_unavailable", NULL, retry_h,
                             "the job could not be stored durably (%s); it was not accepted, retry later", err.msg);
    }
    locod_queue_push(srv->queue, row.id, row.key_id);
    locod_key_pending_add(srv, row.key_id, 1);
    locod_metrics_job_created(srv->metrics, row.kind);
    json_t *job = locod_job_json(srv, &row);
    locod_server_changed(srv);
    pthread_mutex_unlock(&srv->mu);
    locod_job_row_free(&row);
    locod_server_kick(srv);
    return created(r, 202, job, 0);
}

typedef struct list_ctx {
    locod_server *srv;
    json_t *arr;
    int64_t last_seq;
} list_ctx;

static void list_row(void *ctx, const locod_job_row *row) {
    list_ctx *l = ctx;
    json_array_append_new(l->arr, locod_job_json(l->srv, row));
    l->last_seq = row->seq;
}

static enum MHD_Result list(locod_req *r) {
    locod_server *srv = r->srv;
    locod_job_filter f;
    memset(&f, 0, sizeof f);
    f.limit = 50;
    const char *s;
    if ((s = locod_req_arg(r, "state"))) {
        if (loco_job_state_from_name(s, &f.state))
            return locod_problem(r, 400, "invalid_query", NULL, NULL,
                                 "state must be queued, running, succeeded, failed or cancelled (got '%.40s')", s);
        f.has_state = 1;
    }
    if ((s = locod_req_arg(r, "kind"))) {
        if (loco_job_kind_from_name(s, &f.kind))
            return locod_problem(r, 400, "invalid_query", NULL, NULL,
                                 "kind must be generate, trace, localize or edit (got '%.40s')", s);
        f.has_kind = 1;
    }
    if ((s = locod_req_arg(r, "key"))) {
        if (!loco_name_valid(s)) return locod_problem(r, 400, "invalid_query", NULL, NULL, "key must be a key id");
        if (!r->admin && strcmp(s, r->key_id) != 0)
            return locod_problem(r, 403, "forbidden", NULL, NULL,
                                 "key '%s' may list only its own jobs; listing another key's jobs needs an admin key",
                                 r->key_id);
        f.key_id = s;
    } else if (!r->admin) {
        f.key_id = r->key_id;
    }
    if ((s = locod_req_arg(r, "limit"))) {
        char *end;
        long v = strtol(s, &end, 10);
        if (!*s || *end || v < 1 || v > 500)
            return locod_problem(r, 400, "invalid_query", NULL, NULL, "limit must be an integer from 1 to 500");
        f.limit = (int)v;
    }
    if ((s = locod_req_arg(r, "cursor"))) {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (!*s || *end || v < 1)
            return locod_problem(r, 400, "invalid_query", NULL, NULL,
                                 "cursor must be a next_cursor value from an earlier page");
        f.before_seq = v;
    }
    list_ctx l = {srv, json_array(), 0};
    int more = 0;
    loco_err err;
    loco_err_clear(&err);
    pthread_mutex_lock(&srv->mu);
    int n = locod_store_list(srv->store, &f, list_row, &l, &more, &err);
    pthread_mutex_unlock(&srv->mu);
    if (n < 0) {
        json_decref(l.arr);
        return locod_problem(r, 503, "store_unavailable", NULL, NULL, "the job store failed: %s", err.msg);
    }
    json_t *o = json_pack("{s:o}", "jobs", l.arr);
    if (more) {
        char c[32];
        snprintf(c, sizeof c, "%lld", (long long)l.last_seq);
        json_object_set_new(o, "next_cursor", json_string(c));
    } else {
        json_object_set_new(o, "next_cursor", json_null());
    }
    return locod_reply_json(r, 200, o, NULL);
}

/* Look a job up for this request: 1 found (row filled, lock held), else the answer was sent
 * (res set, lock released). */
static int lookup(locod_req *r, const char *id, locod_job_row *row, enum MHD_Result *res) {
    locod_server *srv = r->srv;
    if (!valid_job_id(id)) {
        *res = locod_problem(r, 404, "unknown_job", NULL, NULL, "no job with id '%.40s' (job ids are 32 hex characters)", id);
        return 0;
    }
    pthread_mutex_lock(&srv->mu);
    loco_err err;
    loco_err_clear(&err);
    int found = locod_store_get(srv->store, id, row, &err);
    if (found == 1 && locod_req_may_see(r, row->key_id)) return 1;
    int expired = found == 0 && locod_store_is_expired(srv->store, id);
    if (found == 1) locod_job_row_free(row);
    pthread_mutex_unlock(&srv->mu);
    if (found < 0) *res = locod_problem(r, 503, "store_unavailable", NULL, NULL, "the job store failed: %s", err.msg);
    else if (expired)
        *res = locod_problem(r, 410, "job_expired", NULL, NULL,
                             "job %s finished longer ago than this server keeps jobs (retention.jobs_s = %lld s); its "
                             "record and artifacts were deleted",
                             id, (long long)srv->cfg->job_retention_s);
    else *res = locod_problem(r, 404, "unknown_job", NULL, NULL, "no job with id %s", id);
    return 0;
}

static enum MHD_Result show(locod_req *r, const char *id) {
    locod_job_row row;
    enum MHD_Result res;
    if (!lookup(r, id, &row, &res)) return res;
    json_t *j = locod_job_json(r->srv, &row);
    pthread_mutex_unlock(&r->srv->mu);
    locod_job_row_free(&row);
    return locod_reply_json(r, 200, j, NULL);
}

static enum MHD_Result cancel(locod_req *r, const char *id) {
    locod_server *srv = r->srv;
    locod_job_row row;
    enum MHD_Result res;
    if (!lookup(r, id, &row, &res)) return res;
    int status = 200;
    if (row.state == LOCO_JOB_QUEUED) {
        locod_queue_remove(srv->queue, row.id);
        /* recorded as asked for, like a running job's cancel: the job says why it ended */
        locod_store_set_cancel_requested(srv->store, row.id, NULL);
        locod_finish_job(srv, row.id, row.kind, row.key_id, LOCO_JOB_CANCELLED, 0, "cancelled",
                         "cancelled at the client's request before it started", 0, NULL, NULL);
    } else if (row.state == LOCO_JOB_RUNNING) {
        if (srv->run.active && strcmp(srv->run.id, row.id) == 0) srv->run.cancel_requested = 1;
        locod_store_set_cancel_requested(srv->store, row.id, NULL);
        locod_store_touched(srv);
        status = 202;
    } else {
        char st[16];
        snprintf(st, sizeof st, "%s", loco_job_state_name(row.state));
        locod_job_row_free(&row);
        pthread_mutex_unlock(&srv->mu);
        return locod_problem(r, 409, "job_finished", NULL, NULL,
                             "job %s already finished (state %s); finished jobs never change", id, st);
    }
    locod_job_row_free(&row);
    locod_store_get(srv->store, id, &row, NULL);
    json_t *j = locod_job_json(srv, &row);
    locod_job_row_free(&row);
    locod_server_changed(srv);
    pthread_mutex_unlock(&srv->mu);
    locod_server_kick(srv);
    return locod_reply_json(r, status, j, NULL);
}

enum MHD_Result locod_routes_jobs(locod_req *r, int n, char **seg) {
    int get = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
    int post = strcmp(r->method, "POST") == 0;
    if (n == 0) {
        if (post) return create(r);
        if (get) return list(r);
        static const char *const allow[] = {"Allow", "GET, HEAD, POST", NULL};
        return locod_problem(r, 405, "method_not_allowed", NULL, allow, "use POST to create a job, GET to list jobs");
    }
    if (n == 1) {
        if (!get) {
            static const char *const allow[] = {"Allow", "GET, HEAD", NULL};
            return locod_problem(r, 405, "method_not_allowed", NULL, allow,
                                 "use GET to show a job, POST /v1/jobs/{id}/cancel to cancel it");
        }
        return show(r, seg[0]);
    }
    if (n == 2 && strcmp(seg[1], "cancel") == 0) {
        if (!post) {
            static const char *const allow[] = {"Allow", "POST", NULL};
            return locod_problem(r, 405, "method_not_allowed", NULL, allow, "use POST to cancel a job");
        }
        return cancel(r, seg[0]);
    }
    if (n == 2 && strcmp(seg[1], "events") == 0) {
        if (!get) {
            static const char *const allow[] = {"Allow", "GET", NULL};
            return locod_problem(r, 405, "method_not_allowed", NULL, allow, "use GET for the event stream");
        }
        locod_job_row row;
        enum MHD_Result res;
        if (!lookup(r, seg[0], &row, &res)) return res;
        const int finished = loco_job_state_is_terminal(row.state);
        locod_job_row_free(&row);
        pthread_mutex_unlock(&r->srv->mu);
        /* A browser's EventSource reconnects whenever a stream ends, with the id of the last event
         * it got; after the "finished" event (id "finished") there is nothing more to say, and a
         * 204 is what makes an EventSource stop for good rather than replay it every 2 s. */
        const char *last_id = locod_req_header(r, "Last-Event-ID");
        if (finished && last_id && strcmp(last_id, "finished") == 0) {
            struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
            if (!resp) return MHD_NO;
            return locod_send(r, 204, resp);
        }
        return locod_sse_start(r, seg[0]);
    }
    return locod_problem(r, 404, "not_found", NULL, NULL, "no such resource: %s", r->url);
}
