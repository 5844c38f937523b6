/* job.c: job kind/state names and the job emitter (see job.h). */
#include "job.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const kind_names[LOCO_JOB_KIND_COUNT] = {
    [LOCO_JOB_GENERATE] = "generate",
    [LOCO_JOB_TRACE] = "trace",
    [LOCO_JOB_LOCALIZE] = "localize",
    [LOCO_JOB_EDIT] = "edit",
};

static const char *const state_names[LOCO_JOB_STATE_COUNT] = {
    [LOCO_JOB_QUEUED] = "queued",
    [LOCO_JOB_RUNNING] = "running",
    [LOCO_JOB_SUCCEEDED] = "succeeded",
    [LOCO_JOB_FAILED] = "failed",
    [LOCO_JOB_CANCELLED] = "cancelled",
};

const char *loco_job_kind_name(loco_job_kind k) {
    return (unsigned)k < LOCO_JOB_KIND_COUNT ? kind_names[k] : "unknown";
}

int loco_job_kind_from_name(const char *name, loco_job_kind *out) {
    for (int i = 0; name && i < LOCO_JOB_KIND_COUNT; i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (loco_job_kind)i;
            return 0;
        }
    return -1;
}

const char *loco_job_state_name(loco_job_state s) {
    return (unsigned)s < LOCO_JOB_STATE_COUNT ? state_names[s] : "unknown";
}

int loco_job_state_from_name(const char *name, loco_job_state *out) {
    for (int i = 0; name && i < LOCO_JOB_STATE_COUNT; i++)
        if (strcmp(name, state_names[i]) == 0) {
            *out = (loco_job_state)i;
            return 0;
        }
    return -1;
}

int loco_job_state_is_terminal(loco_job_state s) {
    return s == LOCO_JOB_SUCCEEDED || s == LOCO_JOB_FAILED || s == LOCO_JOB_CANCELLED;
}

void loco_job_view_init(loco_job_view *v) {
    memset(v, 0, sizeof *v);
    v->queue_position = -1;
}

const char *loco_format_time_ms(int64_t ms, char *buf, size_t n) {
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char tmp[32];
    strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03dZ", tmp, (int)(ms % 1000));
    return buf;
}

static void set_time(json_t *o, const char *key, int64_t ms) {
    char buf[40];
    json_object_set_new(o, key, ms > 0 ? json_string(loco_format_time_ms(ms, buf, sizeof buf)) : json_null());
}

json_t *loco_job_to_json(const loco_job_view *v) {
    json_t *o = json_object();
    char url[96];
    json_object_set_new(o, "id", json_string(v->id));
    json_object_set_new(o, "kind", json_string(loco_job_kind_name(v->kind)));
    json_object_set_new(o, "state", json_string(loco_job_state_name(v->state)));
    json_object_set_new(o, "model", json_string(v->model ? v->model : ""));
    json_object_set_new(o, "key", json_string(v->key_id ? v->key_id : ""));
    snprintf(url, sizeof url, "/v1/jobs/%s", v->id);
    json_object_set_new(o, "url", json_string(url));
    snprintf(url, sizeof url, "/v1/jobs/%s/events", v->id);
    json_object_set_new(o, "events_url", json_string(url));
    set_time(o, "created_at", v->created_ms);
    set_time(o, "started_at", v->started_ms);
    set_time(o, "finished_at", v->finished_ms);
    set_time(o, "expires_at", v->expires_ms);
    json_object_set_new(o, "queue_position", v->state == LOCO_JOB_QUEUED && v->queue_position >= 0
                                                 ? json_integer(v->queue_position)
                                                 : json_null());
    if (v->state == LOCO_JOB_RUNNING && v->phase)
        json_object_set_new(o, "progress",
                            json_pack("{s:s, s:i, s:i}", "phase", v->phase, "step", v->step, "total", v->total));
    else
        json_object_set_new(o, "progress", json_null());
    json_object_set_new(o, "cancel_requested", json_boolean(v->cancel_requested));
    json_object_set_new(o, "retry_on_restart", json_boolean(v->retry_on_restart));
    json_object_set_new(o, "attempts", json_integer(v->attempts));
    json_object_set_new(o, "params", v->params ? json_deep_copy(v->params) : json_object());
    json_object_set_new(o, "result", v->result ? json_deep_copy(v->result) : json_null());
    json_object_set_new(o, "artifacts", v->artifacts ? json_deep_copy(v->artifacts) : json_array());
    if (v->error_code)
        json_object_set_new(o, "error",
                            json_pack("{s:s, s:s, s:b}", "code", v->error_code, "message",
                                      v->error_message ? v->error_message : "", "retryable", v->error_retryable));
    else
        json_object_set_new(o, "error", json_null());
    return o;
}
