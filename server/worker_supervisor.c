/* worker_supervisor.c: the daemon's side of the worker process (loop thread only). It spawns
 * `locod --worker`, feeds it model operations and one job at a time in fair-share order,
 * relays progress, records results, and when the process dies (crash, CUDA fault, kill after
 * an ignored cancel or a timeout) fails that job with a clear error and starts a new worker
 * that reloads the resident models. The queue and the store never depend on the worker. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "artifacts.h"
#include "server_impl.h"
#include "worker_proto.h"

typedef enum { OP_NONE = 0, OP_RUN, OP_LOAD, OP_UNLOAD } wop;

struct locod_worker {
    locod_server *srv;
    uv_process_t proc;
    uv_pipe_t to;   /* worker stdin */
    uv_pipe_t from; /* worker fd 3 */
    int alive;      /* process running (handles open) */
    int handles_open;
    wop busy;
    char busy_model[LOCO_MODEL_NAME_MAX + 1];
    locod_linebuf lb;
    int64_t restart_at_ms;
    int failures_in_row;
    int timed_out;
    int killed_for_cancel;
    int dying;
};

static void send_msg(locod_worker *w, json_t *msg);
static void handle_line(locod_worker *w, json_t *m);

int locod_worker_alive(locod_server *srv) { return srv->worker && srv->worker->alive; }

loco_status locod_worker_init(locod_server *srv, loco_err *err) {
    locod_worker *w = calloc(1, sizeof *w);
    if (!w) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    w->srv = srv;
    srv->worker = w;
    return LOCO_OK;
}

typedef struct wreq {
    uv_write_t req;
    char *data;
} wreq;

static void on_written(uv_write_t *req, int status) {
    wreq *r = (wreq *)req;
    free(r->data);
    free(r);
}

static void send_msg(locod_worker *w, json_t *msg) {
    if (!w->alive) return;
    char *s = json_dumps(msg, JSON_COMPACT);
    if (!s) return;
    size_t n = strlen(s);
    char *line = malloc(n + 2);
    memcpy(line, s, n);
    line[n] = '\n';
    free(s);
    wreq *r = calloc(1, sizeof *r);
    r->data = line;
    uv_buf_t b = uv_buf_init(line, (unsigned)(n + 1));
    if (uv_write(&r->req, (uv_stream_t *)&w->to, &b, 1, on_written)) {
        free(line);
        free(r);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    buf->base = malloc(suggested);
    buf->len = buf->base ? suggested : 0;
}

static void feed(locod_worker *w, const char *data, size_t n) {
    if (locod_linebuf_append(&w->lb, data, n)) {
        LOG_ERROR(w->srv->log, "worker sent an over-long line; killing it");
        uv_process_kill(&w->proc, SIGKILL);
        return;
    }
    json_t *m;
    int bad;
    while ((m = locod_linebuf_next(&w->lb, &bad)) || bad) {
        if (!m) {
            LOG_WARN(w->srv->log, "worker sent a malformed message line (ignored)");
            continue;
        }
        handle_line(w, m);
        json_decref(m);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    locod_worker *w = s->data;
    if (nread > 0) feed(w, buf->base, (size_t)nread);
    free(buf->base);
}

static void on_closed(uv_handle_t *h) {
    locod_worker *w = h->data;
    w->handles_open--;
}

/* The job the dead worker was running ends: cancelled (a cancel was asked for), timeout (killed
 * for job_timeout_s) or worker_crashed. */
static void end_running_job(locod_worker *w, const char *how) {
    locod_server *srv = w->srv;
    if (w->busy == OP_RUN && srv->run.active) {
        locod_running *r = &srv->run;
        char msg[768];
        if (r->cancel_requested) {
            snprintf(msg, sizeof msg,
                     "cancelled at the client's request; the job did not stop within %d ms, so its worker was "
                     "stopped (%s) and restarted",
                     srv->cfg->cancel_grace_ms, how);
            locod_finish_job(srv, r->id, r->kind, r->key_id, LOCO_JOB_CANCELLED, r->started_ms, "cancelled", msg, 0,
                             NULL, NULL);
        } else if (w->timed_out) {
            snprintf(msg, sizeof msg,
                     "the job ran longer than this server's job_timeout_s (%d s) and was stopped; use fewer steps, a "
                     "smaller image or batch",
                     srv->cfg->job_timeout_s);
            locod_finish_job(srv, r->id, r->kind, r->key_id, LOCO_JOB_FAILED, r->started_ms, "timeout", msg, 0, NULL,
                             NULL);
        } else {
            snprintf(msg, sizeof msg,
                     "the GPU worker process died while running this job (%s); the daemon restarted it and the "
                     "queue goes on. This job was not retried: submit it again, and report it if it fails the same "
                     "way",
                     how);
            locod_finish_job(srv, r->id, r->kind, r->key_id, LOCO_JOB_FAILED, r->started_ms, "worker_crashed", msg, 1,
                             NULL, NULL);
        }
        memset(&srv->run, 0, sizeof srv->run);
    }
}

/* Models that were resident must be reloaded by the next worker; durable variants are
 * re-created from their delta once their base is back, the others are lost. */
static void after_death(locod_worker *w, const char *how) {
    locod_server *srv = w->srv;
    int64_t now = locod_now_ms();
    /* what it was writing (a folder export, a delta) is nobody's now */
    locod_artifacts_clear_tmp_of(srv->artifacts_root, w->proc.pid);
    end_running_job(w, how);
    for (int i = 0; i < locod_models_count(srv->models); i++) {
        locod_model *md = locod_models_at(srv->models, i);
        /* lost with the process, or being deleted (an unload asked for it) */
        if (md->source == LOCOD_SRC_VARIANT && (!md->delta_sha[0] || md->state == LOCOD_MODEL_UNLOADING)) {
            char name[LOCO_MODEL_NAME_MAX + 1];
            snprintf(name, sizeof name, "%s", md->name);
            if (md->delta_sha[0]) locod_forget_variant(srv, name);
            else locod_models_remove(srv->models, name);
            i--;
            continue;
        }
        if (w->busy == OP_LOAD && strcmp(md->name, w->busy_model) == 0 && md->state == LOCOD_MODEL_LOADING &&
            !md->op_pending) {
            md->state = LOCOD_MODEL_FAILED;
            free(md->error);
            char e[512];
            snprintf(e, sizeof e, "the worker died while loading this model (%s)", how);
            md->error = strdup(e);
            locod_metrics_model_event(srv->metrics, "load_failed");
        } else if (md->state == LOCOD_MODEL_LOADED || md->state == LOCOD_MODEL_LOADING) {
            md->state = LOCOD_MODEL_LOADING;
            md->op_pending = 1;
        } else if (md->state == LOCOD_MODEL_UNLOADING) {
            md->state = LOCOD_MODEL_AVAILABLE;
            md->op_pending = 0;
        }
    }
    w->busy = OP_NONE;
    srv->worker_ready = 0;
    srv->device_memory = 0;
    srv->graph_pool_memory = 0;
    srv->device_free = srv->device_total = -1; /* until a new worker reports */
    w->failures_in_row++;
    int shift = w->failures_in_row > 6 ? 6 : w->failures_in_row - 1;
    w->restart_at_ms = now + ((int64_t)srv->cfg->worker_restart_backoff_ms << (shift < 0 ? 0 : shift));
    locod_server_changed(srv);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int term_signal) {
    locod_worker *w = p->data;
    locod_server *srv = w->srv;
    pthread_mutex_lock(&srv->mu);
    w->dying = 1; /* no dispatch to this process any more */
    pthread_mutex_unlock(&srv->mu);
    /* read what the worker wrote before dying (a "done" for its last job) */
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&w->from, &fd) == 0) {
        char buf[65536];
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) feed(w, buf, (size_t)n);
    }
    pthread_mutex_lock(&srv->mu);
    char how[128];
    if (term_signal) snprintf(how, sizeof how, "killed by signal %d (%s)", term_signal, strsignal(term_signal));
    else snprintf(how, sizeof how, "exit status %lld", (long long)status);
    int expected = srv->stopping;
    if (!expected) {
        if (term_signal || status)
            LOG_ERROR(srv->log, "worker process %d ended: %s", p->pid, how);
        else
            LOG_WARN(srv->log, "worker process %d ended: %s", p->pid, how);
        locod_metrics_worker_restart(srv->metrics);
    }
    w->alive = 0;
    uv_read_stop((uv_stream_t *)&w->from);
    uv_close((uv_handle_t *)&w->proc, on_closed);
    uv_close((uv_handle_t *)&w->to, on_closed);
    uv_close((uv_handle_t *)&w->from, on_closed);
    if (!expected) {
        after_death(w, how);
    } else if (w->timed_out) {
        /* stopping: the running job goes back to the queue (server.c), but not one just killed
         * for its timeout, which would run into it again after the restart (a job with a cancel
         * asked for stays running and is cancelled by the next start's recovery) */
        end_running_job(w, how);
    }
    pthread_mutex_unlock(&srv->mu);
    locod_worker_pump(srv);
}

static void spawn(locod_worker *w) {
    locod_server *srv = w->srv;
    if (w->handles_open) return; /* previous handles still closing */
    char threads[16];
    snprintf(threads, sizeof threads, "%d", srv->cfg->threads);
    char *args[24];
    int a = 0;
    args[a++] = srv->self_exe;
    args[a++] = "--worker";
    args[a++] = "--device";
    args[a++] = srv->cfg->device;
    args[a++] = "--threads";
    args[a++] = threads;
    args[a++] = "--vae-upcast";
    args[a++] = srv->cfg->vae_upcast;
    args[a++] = "--artifacts";
    args[a++] = srv->artifacts_root;
    const char *tf = getenv("LOCOD_TEST_FAULTS");
    if (tf && strcmp(tf, "1") == 0) args[a++] = "--test-faults";
    char maxpx[32];
    snprintf(maxpx, sizeof maxpx, "%lld", (long long)srv->cfg->limits.max_pixels);
    args[a++] = "--max-pixels";
    args[a++] = maxpx;
    if (srv->cfg->clip_scorer) {
        args[a++] = "--clip-scorer";
        args[a++] = srv->cfg->clip_scorer;
    }
    args[a] = NULL;
    uv_pipe_init(&srv->loop, &w->to, 0);
    uv_pipe_init(&srv->loop, &w->from, 0);
    w->to.data = w->from.data = w->proc.data = w;
    uv_stdio_container_t stdio[4];
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&w->to;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 2;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[3].data.stream = (uv_stream_t *)&w->from;
    uv_process_options_t o;
    memset(&o, 0, sizeof o);
    o.file = srv->self_exe;
    o.args = args;
    o.exit_cb = on_exit_cb;
    o.stdio = stdio;
    o.stdio_count = 4;
    int rc = uv_spawn(&srv->loop, &w->proc, &o);
    if (rc) {
        LOG_ERROR(srv->log, "cannot start the worker (%s): %s; retrying", srv->self_exe, uv_strerror(rc));
        uv_close((uv_handle_t *)&w->to, NULL);
        uv_close((uv_handle_t *)&w->from, NULL);
        w->restart_at_ms = locod_now_ms() + 2000;
        return;
    }
    w->alive = 1;
    w->dying = 0;
    w->handles_open = 3;
    w->busy = OP_NONE;
    w->timed_out = 0;
    locod_linebuf_free(&w->lb);
    uv_read_start((uv_stream_t *)&w->from, on_alloc, on_read);
    LOG_INFO(srv->log, "worker process %d started", w->proc.pid);
}

/* ---- messages from the worker (lock taken here) ---------------------------------------------- */

static void memory_from(locod_server *srv, const json_t *m) {
    json_t *mem = json_object_get(m, "memory");
    if (!mem) return;
    srv->device_memory = json_integer_value(json_object_get(mem, "current"));
    srv->device_memory_peak = json_integer_value(json_object_get(mem, "peak"));
    srv->graph_pool_memory = json_integer_value(json_object_get(mem, "graph_pools"));
    const json_t *dev_free = json_object_get(mem, "device_free"), *dev_total = json_object_get(mem, "device_total");
    srv->device_free = json_is_integer(dev_free) ? json_integer_value(dev_free) : -1;
    srv->device_total = json_is_integer(dev_total) ? json_integer_value(dev_total) : -1;
}

/* The edit's parameters without its (possibly long) prompt lists: enough to tell variants apart. */
static json_t *edit_summary(const json_t *params) {
    static const char *const keep[] = {"method", "concept", "target", "layers", "lambda", "lambda_k", "lambda_v",
                                       "neurons", "templates", "matrices", "solver", "augment", "use_eos",
                                       "value_bias", "encoders", "text_layer", "position", NULL};
    json_t *o = json_object();
    for (int i = 0; keep[i]; i++) {
        json_t *v = json_object_get(params, keep[i]);
        if (v) json_object_set_new(o, keep[i], json_deep_copy(v));
    }
    static const char *const counted[] = {"prompts", "normal_prompts", "target_prompts", NULL};
    for (int i = 0; counted[i]; i++) {
        json_t *v = json_object_get(params, counted[i]);
        char key[32];
        snprintf(key, sizeof key, "n_%s", counted[i]);
        if (json_is_array(v)) json_object_set_new(o, key, json_integer((json_int_t)json_array_size(v)));
    }
    return o;
}

/* Under mu: list the variant an edit job reported and, when its delta was stored, record it in
 * the store so restarts re-create it. */
static void register_variant(locod_worker *w, const json_t *m, const locod_running *r) {
    locod_server *srv = w->srv;
    json_t *var = json_object_get(m, "variant");
    const char *vn = json_string_value(json_object_get(var, "name"));
    const char *vb = json_string_value(json_object_get(var, "base"));
    if (!vn || !vb || !loco_name_valid(vn)) return;
    const json_t *delta = json_object_get(json_object_get(m, "result"), "delta");
    const char *sha = json_string_value(json_object_get(delta, "sha256"));
    locod_variant_row row;
    memset(&row, 0, sizeof row);
    snprintf(row.name, sizeof row.name, "%s", vn);
    snprintf(row.base, sizeof row.base, "%s", vb);
    snprintf(row.job_id, sizeof row.job_id, "%s", r->id);
    if (sha && locod_artifact_id_valid(sha)) snprintf(row.delta_sha256, sizeof row.delta_sha256, "%s", sha);
    row.created_ms = locod_now_ms();
    locod_job_row job;
    if (locod_store_get(srv->store, r->id, &job, NULL) == 1) {
        row.edit = edit_summary(job.params);
        locod_job_row_free(&job);
    }
    locod_model *md = locod_models_add_variant(srv->models, &row, LOCOD_MODEL_LOADED, json_object_get(var, "info"));
    if (!md) {
        LOG_WARN(srv->log, "variant %s clashes with a configured model; not listed", vn);
    } else if (row.delta_sha256[0]) {
        loco_err err;
        loco_err_clear(&err);
        if (locod_store_variant_put(srv->store, &row, &err)) {
            LOG_ERROR(srv->log, "variant %s is not durable (it will be lost at the next restart): %s", vn, err.msg);
            md->delta_sha[0] = 0;
        } else {
            LOG_INFO(srv->log, "variant %s of %s created by job %s (delta %s)", vn, vb, r->id, row.delta_sha256);
        }
    } else {
        LOG_INFO(srv->log, "variant %s of %s created by job %s (no delta exported: lost at the next restart)", vn,
                 vb, r->id);
    }
    locod_variant_row_free(&row);
}

static void on_done(locod_worker *w, json_t *m) {
    locod_server *srv = w->srv;
    const char *job = json_string_value(json_object_get(m, "job"));
    locod_running *r = &srv->run;
    if (!r->active || !job || strcmp(job, r->id) != 0) {
        LOG_WARN(srv->log, "worker reported a job that is not running (%s)", job ? job : "?");
        return;
    }
    if (json_is_true(json_object_get(m, "ok"))) {
        json_t *arts = json_object_get(m, "artifacts");
        size_t i;
        json_t *a;
        int valid = json_is_array(arts);
        json_array_foreach(arts, i, a) valid = valid && locod_artifact_id_valid(json_string_value(json_object_get(a, "sha256")));
        if (valid) {
            /* one group transaction: the variant's row is durable together with the job's success */
            loco_err gerr;
            loco_err_clear(&gerr);
            if (locod_store_group_begin(srv->store, &gerr)) LOG_WARN(srv->log, "job store: %s", gerr.msg);
            register_variant(w, m, r);
            locod_finish_job(srv, r->id, r->kind, r->key_id, LOCO_JOB_SUCCEEDED, r->started_ms, NULL, NULL, 0,
                             json_object_get(m, "result"), arts);
        } else {
            locod_finish_job(srv, r->id, r->kind, r->key_id, LOCO_JOB_FAILED, r->started_ms, "internal_error",
                             "the worker returned malformed artifacts; this is a bug in locod", 0, NULL, NULL);
        }
    } else {
        json_t *e = json_object_get(m, "error");
        const char *code = json_string_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        int cancelled = code && strcmp(code, "cancelled") == 0;
        char full[1024];
        if (code && (strcmp(code, "gpu_error") == 0 || strcmp(code, "gpu_oom") == 0))
            snprintf(full, sizeof full, "%s: %s%s", strcmp(code, "gpu_oom") == 0 ? "the GPU ran out of memory" : "GPU fault",
                     msg ? msg : "",
                     strcmp(code, "gpu_oom") == 0 ? "; try a smaller image, batch or fewer resident models"
                                                   : "; the worker is restarted with a fresh device context");
        else
            snprintf(full, sizeof full, "%s", msg ? msg : "the job failed");
        json_t *left = json_object_get(m, "artifacts");
        size_t i;
        json_t *a;
        int valid = json_is_array(left);
        json_array_foreach(left, i, a) valid = valid && locod_artifact_id_valid(json_string_value(json_object_get(a, "sha256")));
        locod_finish_job(srv, r->id, r->kind, r->key_id, cancelled ? LOCO_JOB_CANCELLED : LOCO_JOB_FAILED,
                         r->started_ms, code ? code : "job_error", cancelled ? "cancelled at the client's request" : full,
                         json_is_true(json_object_get(e, "retryable")), NULL, valid ? left : NULL);
    }
    memset(r, 0, sizeof *r);
    w->busy = OP_NONE;
    w->failures_in_row = 0;
    memory_from(srv, m);
    /* a sticky device error: the worker exits now; nothing more goes to it */
    if (json_is_true(json_object_get(m, "restart"))) w->dying = 1;
}

/* Under mu: a resident base brings back its durable variants that are not resident. */
static void schedule_variants_of(locod_server *srv, const char *base) {
    for (int i = 0; i < locod_models_count(srv->models); i++) {
        locod_model *v = locod_models_at(srv->models, i);
        if (v->source != LOCOD_SRC_VARIANT || !v->delta_sha[0] || strcmp(v->base, base) != 0) continue;
        /* failed ones too: most failed because their base did (variant_load_msg) */
        if (v->state != LOCOD_MODEL_AVAILABLE && v->state != LOCOD_MODEL_FAILED) continue;
        v->state = LOCOD_MODEL_LOADING;
        v->op_pending = 1;
    }
}

static void on_loaded(locod_worker *w, json_t *m) {
    locod_server *srv = w->srv;
    const char *name = json_string_value(json_object_get(m, "model"));
    locod_model *md = name ? locod_models_find(srv->models, name) : NULL;
    if (w->busy == OP_LOAD) w->busy = OP_NONE;
    memory_from(srv, m);
    if (!md) return;
    free(md->error);
    md->error = NULL;
    if (json_is_true(json_object_get(m, "ok"))) {
        if (md->op_pending == 2) return; /* an unload is already queued */
        md->state = LOCOD_MODEL_LOADED;
        json_decref(md->info);
        md->info = json_incref(json_object_get(m, "info"));
        md->loaded_ms = locod_now_ms();
        locod_metrics_model_event(srv->metrics, "load");
        LOG_INFO(srv->log, "model %s loaded", md->name);
        if (md->source != LOCOD_SRC_VARIANT) schedule_variants_of(srv, md->name);
    } else {
        md->state = LOCOD_MODEL_FAILED;
        const char *msg = json_string_value(json_object_get(json_object_get(m, "error"), "message"));
        md->error = strdup(msg ? msg : "load failed");
        locod_metrics_model_event(srv->metrics, "load_failed");
        LOG_ERROR(srv->log, "model %s failed to load: %s", md->name, md->error);
    }
}

static void on_unloaded(locod_worker *w, json_t *m) {
    locod_server *srv = w->srv;
    const char *name = json_string_value(json_object_get(m, "model"));
    locod_model *md = name ? locod_models_find(srv->models, name) : NULL;
    /* a base's unload reports its variants first, then the base: the worker is free only after
     * the base, so no job goes out for a variant the registry still lists as resident */
    if (w->busy == OP_UNLOAD && name && strcmp(name, w->busy_model) == 0) w->busy = OP_NONE;
    memory_from(srv, m);
    if (!md) return;
    locod_metrics_model_event(srv->metrics, "unload");
    if (md->source == LOCOD_SRC_VARIANT) {
        /* an unload asked for this variant deletes it; one that followed its base's unload is
         * kept (when durable) and comes back with the base */
        int asked = md->state == LOCOD_MODEL_UNLOADING || strcmp(w->busy_model, name) == 0;
        if (asked || !md->delta_sha[0]) {
            locod_forget_variant(srv, name);
        } else {
            md->state = LOCOD_MODEL_AVAILABLE;
            md->op_pending = 0;
            json_decref(md->info);
            md->info = NULL;
        }
        return;
    }
    if (md->op_pending == 1) return; /* a load is already queued again */
    md->state = LOCOD_MODEL_AVAILABLE;
    json_decref(md->info);
    md->info = NULL;
    LOG_INFO(srv->log, "model %s unloaded", name);
}

static void handle_line(locod_worker *w, json_t *m) {
    locod_server *srv = w->srv;
    const char *ev = json_string_value(json_object_get(m, "ev"));
    if (!ev) return;
    pthread_mutex_lock(&srv->mu);
    if (strcmp(ev, "progress") == 0) {
        const char *job = json_string_value(json_object_get(m, "job"));
        if (srv->run.active && job && strcmp(job, srv->run.id) == 0) {
            const char *ph = json_string_value(json_object_get(m, "phase"));
            snprintf(srv->run.phase, sizeof srv->run.phase, "%s", ph ? ph : "running");
            srv->run.step = (int)json_integer_value(json_object_get(m, "step"));
            srv->run.total = (int)json_integer_value(json_object_get(m, "total"));
        }
    } else if (strcmp(ev, "ready") == 0) {
        const char *dev = json_string_value(json_object_get(m, "device"));
        snprintf(srv->device, sizeof srv->device, "%s", dev ? dev : "");
        srv->worker_ready = 1;
        LOG_INFO(srv->log, "worker ready on %s", srv->device);
    } else if (strcmp(ev, "fatal") == 0) {
        const char *msg = json_string_value(json_object_get(m, "message"));
        LOG_ERROR(srv->log, "worker cannot start: %s", msg ? msg : "?");
    } else if (strcmp(ev, "done") == 0) {
        on_done(w, m);
    } else if (strcmp(ev, "loaded") == 0) {
        on_loaded(w, m);
    } else if (strcmp(ev, "unloaded") == 0) {
        on_unloaded(w, m);
    }
    /* a progress step concerns only the running job's streams; waking every stream on every
     * step made many open streams slow the whole pipeline */
    if (strcmp(ev, "progress") == 0)
        locod_server_progressed(srv);
    else
        locod_server_changed(srv);
    pthread_mutex_unlock(&srv->mu);
    locod_worker_pump(srv);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

typedef struct accept_ctx {
    locod_server *srv;
} accept_ctx;

/* Jobs whose model is still loading keep their place; all others may go. */
static int accept_job(void *ctx, const char *id) {
    accept_ctx *a = ctx;
    locod_job_row row;
    int found = locod_store_get(a->srv->store, id, &row, NULL);
    if (found != 1) return 1;
    locod_model *md = locod_models_find(a->srv->models, row.model);
    int wait = md && md->state == LOCOD_MODEL_LOADING;
    locod_job_row_free(&row);
    return !wait;
}

static void dispatch_job(locod_worker *w) {
    locod_server *srv = w->srv;
    accept_ctx ac = {srv};
    char id[48];
    while (locod_queue_pop_if(srv->queue, accept_job, &ac, id)) {
        locod_job_row row;
        loco_err err;
        loco_err_clear(&err);
        if (locod_store_get(srv->store, id, &row, &err) != 1) continue;
        if (row.state != LOCO_JOB_QUEUED) {
            locod_job_row_free(&row);
            continue;
        }
        locod_model *md = locod_models_find(srv->models, row.model);
        if (!md) { /* a variant deleted by an unload while the job waited: loading cannot bring it back */
            char msg[512];
            snprintf(msg, sizeof msg,
                     "model '%s' no longer exists on this server (a variant deleted while this job was queued, or a "
                     "model removed from its root); run the edit again to re-create a variant",
                     row.model);
            locod_finish_job(srv, row.id, row.kind, row.key_id, LOCO_JOB_FAILED, 0, "unknown_model", msg, 0, NULL,
                             NULL);
            locod_job_row_free(&row);
            continue;
        }
        if (md->state != LOCOD_MODEL_LOADED) {
            char msg[512];
            snprintf(msg, sizeof msg,
                     "model '%s' is not loaded any more (it was unloaded or failed to load after this job was "
                     "queued); load it with POST /v1/models/%s/load and submit the job again",
                     row.model, row.model);
            locod_finish_job(srv, row.id, row.kind, row.key_id, LOCO_JOB_FAILED, 0, "model_not_loaded", msg, 1, NULL,
                             NULL);
            locod_job_row_free(&row);
            continue;
        }
        int64_t now = locod_now_ms();
        int marked = locod_store_mark_running(srv->store, row.id, now, &err);
        locod_store_touched(srv);
        if (marked != 1) {
            LOG_ERROR(srv->log, "cannot mark job %s running: %s", row.id, err.msg);
            locod_job_row_free(&row);
            continue;
        }
        locod_running *r = &srv->run;
        memset(r, 0, sizeof *r);
        r->active = 1;
        snprintf(r->id, sizeof r->id, "%s", row.id);
        r->kind = row.kind;
        snprintf(r->model, sizeof r->model, "%s", row.model);
        snprintf(r->key_id, sizeof r->key_id, "%s", row.key_id);
        r->started_ms = now;
        snprintf(r->phase, sizeof r->phase, "starting");
        if (srv->cfg->job_timeout_s) r->timeout_ms = now + (int64_t)srv->cfg->job_timeout_s * 1000;
        locod_metrics_job_started(srv->metrics, row.kind, (double)(now - row.created_ms) / 1000.0);
        json_t *msg = json_pack("{s:s, s:s, s:s, s:s, s:O}", "op", "run", "job", row.id, "kind",
                                loco_job_kind_name(row.kind), "model", row.model, "params", row.params);
        w->busy = OP_RUN;
        send_msg(w, msg);
        json_decref(msg);
        locod_job_row_free(&row);
        locod_server_changed(srv);
        return;
    }
}

/* Under mu: the load message that re-creates a variant from its base and delta, or NULL when it
 * cannot be sent now: its base is still loading (wait), or not resident (the variant stays
 * recorded and comes back when its base is loaded). */
static json_t *variant_load_msg(locod_server *srv, locod_model *md) {
    locod_model *b = locod_models_find(srv->models, md->base);
    if (b && b->state == LOCOD_MODEL_LOADING) return NULL;
    md->op_pending = 0;
    free(md->error);
    md->error = NULL;
    if (!b || b->state != LOCOD_MODEL_LOADED || b->op_pending == 2) {
        /* a client polls a load until 'loaded' or 'failed': a base that failed fails its variant,
         * with the base's reason; one merely not resident leaves it available, saying why */
        char e[768];
        if (!b) {
            md->state = LOCOD_MODEL_FAILED;
            snprintf(e, sizeof e, "its base model '%s' is not on this server any more", md->base);
        } else if (b->state == LOCOD_MODEL_FAILED) {
            md->state = LOCOD_MODEL_FAILED;
            snprintf(e, sizeof e, "its base model '%s' failed to load: %.600s", md->base,
                     b->error ? b->error : "no reason given");
        } else {
            md->state = LOCOD_MODEL_AVAILABLE;
            snprintf(e, sizeof e, "its base model '%s' is not loaded; the variant comes back when the base is loaded",
                     md->base);
        }
        md->error = strdup(e);
        locod_server_changed(srv);
        return NULL;
    }
    char path[PATH_MAX];
    locod_artifact_path(srv->artifacts_root, md->delta_sha, path, sizeof path);
    return json_pack("{s:s, s:s, s:s, s:s, s:s}", "op", "load", "model", md->name, "base", md->base, "delta", path,
                     "delta_sha256", md->delta_sha);
}

void locod_worker_pump(locod_server *srv) {
    locod_worker *w = srv->worker;
    if (!w) return;
    pthread_mutex_lock(&srv->mu);
    if (srv->stopping) goto out;
    if (w->dying && w->alive) goto out;
    if (!w->alive) {
        if (locod_now_ms() >= w->restart_at_ms) spawn(w);
        goto out;
    }
    if (srv->run.active && srv->run.cancel_requested && !srv->run.cancel_sent) {
        json_t *c = json_pack("{s:s, s:s}", "op", "cancel", "job", srv->run.id);
        send_msg(w, c);
        json_decref(c);
        srv->run.cancel_sent = 1;
        srv->run.cancel_deadline_ms = locod_now_ms() + srv->cfg->cancel_grace_ms;
    }
    if (!srv->worker_ready || w->busy != OP_NONE) goto out;
    for (int i = 0; i < locod_models_count(srv->models); i++) {
        locod_model *md = locod_models_at(srv->models, i);
        if (!md->op_pending) continue;
        json_t *msg;
        if (md->op_pending == 1 && md->source == LOCOD_SRC_VARIANT) {
            if (!(msg = variant_load_msg(srv, md))) continue;
            w->busy = OP_LOAD;
        } else if (md->op_pending == 1) {
            msg = json_pack("{s:s, s:s, s:s, s:s?, s:s?}", "op", "load", "model", md->name, "path", md->path,
                            "config_dir", md->config_dir, "variant", md->variant);
            w->busy = OP_LOAD;
        } else {
            msg = json_pack("{s:s, s:s}", "op", "unload", "model", md->name);
            w->busy = OP_UNLOAD;
        }
        snprintf(w->busy_model, sizeof w->busy_model, "%s", md->name);
        md->op_pending = 0;
        send_msg(w, msg);
        json_decref(msg);
        goto out;
    }
    dispatch_job(w);
out:
    pthread_mutex_unlock(&srv->mu);
}

void locod_worker_tick(locod_server *srv) {
    locod_worker *w = srv->worker;
    if (!w) return;
    pthread_mutex_lock(&srv->mu);
    int64_t now = locod_now_ms();
    if (w->alive && srv->run.active) {
        if (srv->run.cancel_sent && now >= srv->run.cancel_deadline_ms && !w->killed_for_cancel) {
            LOG_WARN(srv->log, "job %s ignored cancel for %d ms; stopping its worker", srv->run.id,
                     srv->cfg->cancel_grace_ms);
            w->killed_for_cancel = 1;
            uv_process_kill(&w->proc, SIGKILL);
        } else if (srv->run.timeout_ms && now >= srv->run.timeout_ms && !w->timed_out) {
            LOG_WARN(srv->log, "job %s exceeded job_timeout_s; stopping its worker", srv->run.id);
            w->timed_out = 1;
            uv_process_kill(&w->proc, SIGKILL);
        }
    }
    if (!w->alive) w->killed_for_cancel = 0;
    pthread_mutex_unlock(&srv->mu);
    locod_worker_pump(srv);
}

void locod_worker_shutdown(locod_server *srv) {
    locod_worker *w = srv->worker;
    if (!w) return;
    pthread_mutex_lock(&srv->mu);
    if (w->alive) uv_process_kill(&w->proc, SIGKILL);
    pthread_mutex_unlock(&srv->mu);
}

void locod_worker_free(locod_server *srv) {
    if (!srv->worker) return;
    locod_linebuf_free(&srv->worker->lb);
    free(srv->worker);
    srv->worker = NULL;
}
