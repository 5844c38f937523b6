/* sse.c: GET /v1/jobs/{id}/events, a Server-Sent Events stream of one job:
 *   event: queued    data: {"id":..,"state":"queued","queue_position":n}
 *   event: progress  data: {"id":..,"state":"running","phase":"denoise","step":i,"total":n,"cancel_requested":b}
 *   event: finished  data: <the job object>            (then the stream ends; its id is
 *                                                       "finished", and a reconnect that
 *                                                       sends it back gets 204)
 * plus ": keepalive" comments so dead peers are noticed. The stream thread (one per
 * connection) waits on the server's condition variable; events are snapshots, so a slow
 * reader skips intermediate steps instead of piling up memory. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

typedef struct sse_ctx {
    locod_server *srv;
    char id[LOCO_JOB_ID_LEN + 1];
    char *out;
    size_t out_len, out_pos;
    int done;      /* the finished event was produced */
    int started;
    uint64_t seen_version, seen_progress;
    int follows_progress; /* the job was running at the last snapshot: wake on its steps too */
    char last[512];       /* the last snapshot sent */
    long event_no;
} sse_ctx;

/* Events are numbered per stream; the last one, "finished", has the id "finished", which a
 * reconnecting EventSource sends back as Last-Event-ID and gets 204 for (routes_jobs.c). */
static void emit(sse_ctx *c, const char *event, json_t *data) {
    char *d = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    size_t need = strlen(d) + strlen(event) + 64;
    c->out = realloc(c->out, c->out_len + need);
    char id[24];
    if (strcmp(event, "finished") == 0)
        snprintf(id, sizeof id, "finished");
    else
        snprintf(id, sizeof id, "%ld", ++c->event_no);
    c->out_len += (size_t)snprintf(c->out + c->out_len, need, "id: %s\nevent: %s\ndata: %s\n\n", id, event, d);
    free(d);
}

static void emit_progress(sse_ctx *c, const char *phase, int step, int total, int cancel_requested) {
    char snap[512];
    snprintf(snap, sizeof snap, "r%s/%d/%d/%d", phase, step, total, cancel_requested);
    if (strcmp(snap, c->last) == 0) return;
    snprintf(c->last, sizeof c->last, "%s", snap);
    emit(c, "progress", json_pack("{s:s, s:s, s:s, s:i, s:i, s:b}", "id", c->id, "state", "running", "phase", phase,
                                  "step", step, "total", total, "cancel_requested", cancel_requested));
}

/* Under mu: compare the job's state with what was sent; queue what changed. The two common
 * cases come from memory, without a store read: a job in the queue (its position) and the
 * running job (its step). With many open streams every change wakes each of them, so this
 * is what a change costs per stream. */
static void snapshot(sse_ctx *c) {
    locod_server *srv = c->srv;
    const int pos = locod_queue_position(srv->queue, c->id);
    if (pos >= 0) { /* in the queue: queued */
        char snap[32];
        snprintf(snap, sizeof snap, "q%d", pos);
        c->follows_progress = 0;
        if (strcmp(snap, c->last)) {
            snprintf(c->last, sizeof c->last, "%s", snap);
            emit(c, "queued", json_pack("{s:s, s:s, s:i}", "id", c->id, "state", "queued", "queue_position", pos));
        }
        return;
    }
    const locod_running *r = &srv->run;
    if (r->active && strcmp(r->id, c->id) == 0) {
        c->follows_progress = 1;
        emit_progress(c, r->phase, r->step, r->total, r->cancel_requested);
        return;
    }
    locod_job_row row;
    if (locod_store_get(srv->store, c->id, &row, NULL) != 1) {
        c->done = 1; /* purged meanwhile */
        return;
    }
    if (loco_job_state_is_terminal(row.state)) {
        emit(c, "finished", locod_job_json(srv, &row));
        c->done = 1;
    } else if (row.state == LOCO_JOB_RUNNING) { /* handed to the worker, not yet started there */
        c->follows_progress = 1;
        emit_progress(c, "starting", 0, 0, row.cancel_requested);
    } else { /* queued in the store but out of the queue (being dispatched): the next change says more */
        c->follows_progress = 1;
    }
    locod_job_row_free(&row);
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max) {
    sse_ctx *c = cls;
    locod_server *srv = c->srv;
    if (c->out_pos == c->out_len) {
        c->out_pos = c->out_len = 0;
        if (c->done) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&srv->mu);
        if (!c->started) {
            c->started = 1;
            c->out = realloc(c->out, 32);
            c->out_len = (size_t)snprintf(c->out, 32, "retry: 2000\n\n");
        }
        /* Everything written so far has been handed over: this stream is silent from now on, and a
         * keepalive is due at keepalive_ms from now unless an event of its own job goes first. The
         * deadline is the stream's own, not reset by other jobs' changes (a queued job's stream
         * behind a busy worker would otherwise never get one). */
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        int64_t ns = deadline.tv_nsec + (int64_t)srv->cfg->sse_keepalive_ms * 1000000;
        deadline.tv_sec += ns / 1000000000;
        deadline.tv_nsec = ns % 1000000000;
        while (c->out_len == 0 && !c->done && !srv->stopping) {
            if (c->seen_version != srv->version ||
                (c->follows_progress && c->seen_progress != srv->progress_version)) {
                c->seen_version = srv->version;
                c->seen_progress = srv->progress_version;
                snapshot(c);
                continue;
            }
            /* a queued job's stream sleeps through other jobs' progress steps */
            pthread_cond_t *cv = c->follows_progress ? &srv->progressed : &srv->changed;
            if (pthread_cond_timedwait(cv, &srv->mu, &deadline) == ETIMEDOUT && c->seen_version == srv->version &&
                (!c->follows_progress || c->seen_progress == srv->progress_version)) {
                c->out = realloc(c->out, 16);
                c->out_len = (size_t)snprintf(c->out, 16, ": keepalive\n\n");
            }
        }
        int stop = srv->stopping && c->out_len == 0;
        pthread_mutex_unlock(&srv->mu);
        if (stop) return MHD_CONTENT_READER_END_OF_STREAM;
        if (c->out_len == 0) return MHD_CONTENT_READER_END_OF_STREAM;
    }
    size_t n = c->out_len - c->out_pos;
    if (n > max) n = max;
    memcpy(buf, c->out + c->out_pos, n);
    c->out_pos += n;
    return (ssize_t)n;
}

static void release(void *cls) {
    sse_ctx *c = cls;
    pthread_mutex_lock(&c->srv->mu);
    c->srv->sse_streams--;
    pthread_mutex_unlock(&c->srv->mu);
    free(c->out);
    free(c);
}

enum MHD_Result locod_sse_start(locod_req *r, const char *job_id) {
    locod_server *srv = r->srv;
    pthread_mutex_lock(&srv->mu);
    if (srv->sse_streams >= srv->cfg->max_sse_streams) {
        pthread_mutex_unlock(&srv->mu);
        char ra[16];
        snprintf(ra, sizeof ra, "%d", srv->cfg->retry_after_s);
        const char *const h[] = {"Retry-After", ra, NULL};
        return locod_problem(r, 503, "too_many_streams", NULL, h,
                             "this server already serves %d event streams (limits.max_sse_streams); poll GET "
                             "/v1/jobs/%s instead or retry later",
                             srv->cfg->max_sse_streams, job_id);
    }
    srv->sse_streams++;
    pthread_mutex_unlock(&srv->mu);
    sse_ctx *c = calloc(1, sizeof *c);
    c->srv = srv;
    snprintf(c->id, sizeof c->id, "%s", job_id);
    c->seen_version = (uint64_t)-1;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, reader, c, release);
    if (!resp) {
        release(c);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return locod_send(r, 200, resp);
}
