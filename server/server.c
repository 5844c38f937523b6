/* server.c: the daemon's lifecycle and shared bookkeeping (see server.h, server_impl.h). */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "artifacts.h"
#include "server_impl.h"

int64_t locod_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void locod_server_changed(locod_server *srv) {
    srv->version++;
    pthread_cond_broadcast(&srv->changed);
    pthread_cond_broadcast(&srv->progressed);
}

void locod_server_progressed(locod_server *srv) {
    srv->progress_version++;
    pthread_cond_broadcast(&srv->progressed);
}

void locod_server_kick(locod_server *srv) { uv_async_send(&srv->kick); }

void locod_store_touched(locod_server *srv) {
    if (!locod_store_in_group(srv->store)) return;
    srv->txn_dirty = 1;
    pthread_cond_signal(&srv->commit_cv);
}

int locod_store_wait_durable(locod_server *srv) {
    if (!locod_store_in_group(srv->store)) return 0;
    uint64_t gen = srv->txn_gen;
    srv->txn_dirty = 1;
    pthread_cond_signal(&srv->commit_cv);
    while (srv->durable_gen < gen) pthread_cond_wait(&srv->durable_cv, &srv->mu);
    return srv->failed_gen == gen ? -1 : 0;
}

/* One COMMIT (one fsync) for every creation that joined the open transaction. */
static void *committer_main(void *arg) {
    locod_server *srv = arg;
    pthread_mutex_lock(&srv->mu);
    for (;;) {
        while (!srv->txn_dirty && !srv->committer_stop) pthread_cond_wait(&srv->commit_cv, &srv->mu);
        if (!srv->txn_dirty && srv->committer_stop) break;
        uint64_t gen = srv->txn_gen;
        loco_err err;
        loco_err_clear(&err);
        if (locod_store_group_commit(srv->store, &err)) {
            LOG_ERROR(srv->log, "job store commit failed: %s", err.msg);
            srv->failed_gen = gen;
        }
        srv->txn_gen++;
        srv->txn_dirty = 0;
        srv->durable_gen = gen;
        pthread_cond_broadcast(&srv->durable_cv);
    }
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

static locod_key_count *key_count(locod_server *srv, const char *key, int create) {
    for (int i = 0; i < srv->n_key_counts; i++)
        if (strcmp(srv->key_counts[i].key, key) == 0) return &srv->key_counts[i];
    if (!create) return NULL;
    if (srv->n_key_counts == srv->cap_key_counts) {
        srv->cap_key_counts = srv->cap_key_counts ? srv->cap_key_counts * 2 : 8;
        srv->key_counts = realloc(srv->key_counts, (size_t)srv->cap_key_counts * sizeof *srv->key_counts);
    }
    locod_key_count *k = &srv->key_counts[srv->n_key_counts++];
    memset(k, 0, sizeof *k);
    snprintf(k->key, sizeof k->key, "%s", key);
    return k;
}

int locod_key_pending(locod_server *srv, const char *key) {
    locod_key_count *k = key_count(srv, key, 0);
    return k ? k->pending : 0;
}

void locod_key_pending_add(locod_server *srv, const char *key, int delta) {
    locod_key_count *k = key_count(srv, key, 1);
    k->pending += delta;
    if (k->pending < 0) k->pending = 0;
}

int locod_finish_job(locod_server *srv, const char *id, loco_job_kind kind, const char *key_id, loco_job_state state,
                     int64_t started_ms, const char *code, const char *message, int retryable, const json_t *result,
                     const json_t *artifacts) {
    int64_t now = locod_now_ms();
    loco_err err;
    loco_err_clear(&err);
    int moved = locod_store_finish(srv->store, id, state, now, now + srv->cfg->job_retention_s * 1000, code, message,
                                   retryable, result, artifacts, &err);
    if (moved < 0) LOG_ERROR(srv->log, "cannot record the end of job %s: %s", id, err.msg);
    locod_store_touched(srv);
    if (moved == 1) {
        locod_key_pending_add(srv, key_id, -1);
        locod_metrics_job_finished(srv->metrics, kind, state, started_ms ? (double)(now - started_ms) / 1000.0 : -1);
        LOG_INFO(srv->log, "job %s (%s, key %s) %s%s%s", id, loco_job_kind_name(kind), key_id,
                 loco_job_state_name(state), code ? ": " : "", code ? code : "");
    }
    locod_server_changed(srv);
    return moved;
}

/* ---- loop callbacks ---------------------------------------------------------------------- */

static void on_kick(uv_async_t *a) { locod_worker_pump(a->data); }

static void artifact_gone(void *ctx, const char *sha) {
    locod_server *srv = ctx;
    /* A job running now may have placed this same content (place() refreshes the mtime) and
     * links it only when it finishes: keep files placed since it started (2 s of slack for
     * timestamp granularity). Jobs run one at a time, so this is the oldest running job. */
    int64_t keep = srv->run.active ? srv->run.started_ms - 2000 : 0;
    if (locod_artifact_remove(srv->artifacts_root, sha, keep) == 0)
        LOG_DEBUG(srv->log, "retention: kept artifact %s (placed by the running job %s)", sha, srv->run.id);
}

void locod_forget_variant(locod_server *srv, const char *name) {
    loco_err err;
    loco_err_clear(&err);
    char orphan[65];
    if (locod_store_variant_delete(srv->store, name, orphan, &err) < 0)
        LOG_ERROR(srv->log, "cannot delete the record of variant %s: %s", name, err.msg);
    locod_store_touched(srv);
    if (orphan[0]) artifact_gone(srv, orphan);
    locod_models_remove(srv->models, name);
    LOG_INFO(srv->log, "variant %s deleted", name);
    locod_server_changed(srv);
}

void locod_note_resident(locod_server *srv, const char *name, int resident) {
    loco_err err;
    loco_err_clear(&err);
    if (locod_store_resident_set(srv->store, name, resident, locod_now_ms(), &err))
        LOG_ERROR(srv->log, "cannot record that model %s was %s: %s (a restart will not know)", name,
                  resident ? "loaded" : "unloaded", err.msg);
    locod_store_touched(srv);
}

typedef struct restore_ctx {
    locod_server *srv;
    int n;
} restore_ctx;

/* A recorded variant comes back in the registry: loading (re-created as soon as its base is
 * resident) when its base loads at start, else available (it follows the base's next load). */
static void restore_variant(void *ctx, const locod_variant_row *row) {
    restore_ctx *rc = ctx;
    locod_server *srv = rc->srv;
    locod_model *b = locod_models_find(srv->models, row->base);
    int follows = b && b->state == LOCOD_MODEL_LOADING;
    locod_model *md = locod_models_add_variant(srv->models, row,
                                               follows ? LOCOD_MODEL_LOADING : b ? LOCOD_MODEL_AVAILABLE
                                                                                 : LOCOD_MODEL_FAILED,
                                               NULL);
    if (!md) {
        LOG_WARN(srv->log, "recorded variant %s clashes with a model of the config or a model root; not listed",
                 row->name);
        return;
    }
    md->op_pending = follows;
    if (!b) {
        char e[256];
        snprintf(e, sizeof e, "its base model '%s' is not on this server any more", row->base);
        md->error = strdup(e);
    }
    rc->n++;
}

/* A model an admin loaded before the restart loads again; one that is no longer configured is
 * forgotten (its name is collected and dropped after the scan). */
typedef struct resident_ctx {
    locod_server *srv;
    int n;
    json_t *gone; /* names to forget once the scan is over */
} resident_ctx;

static void restore_resident(void *ctx, const char *name) {
    resident_ctx *rc = ctx;
    locod_model *md = locod_models_find(rc->srv->models, name);
    if (!md || md->source == LOCOD_SRC_VARIANT) {
        LOG_WARN(rc->srv->log, "model %s was resident before the restart but is no longer configured; forgotten", name);
        json_array_append_new(rc->gone, json_string(name));
        return;
    }
    if (md->state == LOCOD_MODEL_LOADING) return; /* load_at_start too */
    md->state = LOCOD_MODEL_LOADING;
    md->op_pending = 1;
    rc->n++;
}

static void restore_residents(locod_server *srv) {
    resident_ctx rc;
    memset(&rc, 0, sizeof rc);
    rc.srv = srv;
    rc.gone = json_array();
    loco_err err;
    loco_err_clear(&err);
    if (locod_store_residents_each(srv->store, restore_resident, &rc, &err) < 0)
        LOG_ERROR(srv->log, "cannot read the models resident before the restart: %s", err.msg);
    size_t i;
    json_t *name;
    json_array_foreach(rc.gone, i, name) locod_note_resident(srv, json_string_value(name), 0);
    json_decref(rc.gone);
    if (rc.n) LOG_INFO(srv->log, "%d model(s) loaded through the API before the restart load again", rc.n);
}

void locod_restore_variants(locod_server *srv) {
    restore_ctx rc = {srv, 0};
    loco_err err;
    loco_err_clear(&err);
    if (locod_store_variants_each(srv->store, restore_variant, &rc, &err) < 0)
        LOG_ERROR(srv->log, "cannot read the recorded variants: %s", err.msg);
    else if (rc.n)
        LOG_INFO(srv->log, "%d recorded variant(s) listed; each is re-created when its base is resident", rc.n);
}

/* Under mu. Tombstones only turn 404 into a clearer 410 for clients that still poll a purged
 * id; ids are random, so dropping old ones loses nothing else, and keeps expired_jobs bounded. */
static void prune_tombstones(locod_server *srv, int64_t now) {
    loco_err err;
    loco_err_clear(&err);
    int n = locod_store_prune_tombstones(srv->store, now - srv->cfg->tombstone_retention_s * 1000, &err);
    if (n > 0) LOG_INFO(srv->log, "retention: dropped %d tombstone(s) of jobs purged long ago", n);
    else if (n < 0) LOG_ERROR(srv->log, "retention: tombstone pruning failed: %s", err.msg);
}

/* Retention runs in passes of bounded batches (store.h, "retention"): each batch is one
 * transaction under mu, and mu is released between batches, so a request waits for one batch
 * at most (milliseconds), not for a whole pass (17 s for 100,000 expired jobs when a pass was one
 * transaction). The loop runs at most RETENTION_BATCHES_PER_TICK batches per tick, so worker
 * messages and deadlines are not held up either; a long pass goes on at the next ticks. */
#define RETENTION_BATCH_JOBS 500
#define RETENTION_BATCHES_PER_TICK 4
/* Free pages given back after each batch that deleted rows: 4 MiB at SQLite's 4 KiB pages, more
 * than a batch of 500 jobs frees, yet a short write (pages move only from the file's end). */
#define RETENTION_RECLAIM_PAGES 1024

/* Under mu: one batch of the current pass; the pages it freed go back to the file system.
 * Returns 1 while the pass goes on. */
static int retention_batch(locod_server *srv, int64_t now) {
    loco_err err;
    loco_err_clear(&err);
    int n = locod_store_purge_batch(srv->store, now, RETENTION_BATCH_JOBS, &srv->sweep, artifact_gone, srv, &err);
    if (n < 0) {
        LOG_ERROR(srv->log, "retention sweep failed: %s", err.msg);
        return 0;
    }
    if (n > 0) {
        if (locod_store_reclaim(srv->store, RETENTION_RECLAIM_PAGES, &err) < 0)
            LOG_WARN(srv->log, "retention: cannot give the job store's free pages back: %s", err.msg);
        locod_server_changed(srv);
    }
    locod_store_touched(srv);
    return !srv->sweep.done;
}

/* Under mu: the end of a pass: old tombstones go, and the pass is summed up in the log. */
static void retention_finish(locod_server *srv, int64_t now) {
    prune_tombstones(srv, now);
    locod_store_touched(srv);
    if (srv->sweep.purged) LOG_INFO(srv->log, "retention: purged %lld finished job(s)", (long long)srv->sweep.purged);
    if (srv->sweep.kept)
        LOG_WARN(srv->log,
                 "retention: the job store cannot write (disk full): %lld expired job(s) keep their rows until a "
                 "write succeeds; %lld artifact file(s) only they used were deleted to free space",
                 (long long)srv->sweep.kept, (long long)srv->sweep.freed);
}

/* Loop thread: start a pass when one is due, and run a few batches of it. */
static void retention_tick(locod_server *srv, int64_t now) {
    if (!srv->sweep_active) {
        if (now < srv->next_sweep_ms) return;
        srv->next_sweep_ms = now + (int64_t)srv->cfg->retention_sweep_s * 1000;
        memset(&srv->sweep, 0, sizeof srv->sweep);
        srv->sweep_active = 1;
    }
    int more = 1;
    for (int i = 0; i < RETENTION_BATCHES_PER_TICK && more; i++) {
        pthread_mutex_lock(&srv->mu);
        more = retention_batch(srv, now);
        if (!more) retention_finish(srv, now);
        pthread_mutex_unlock(&srv->mu);
    }
    srv->sweep_active = more;
}

static void on_tick(uv_timer_t *t) {
    locod_server *srv = t->data;
    locod_worker_tick(srv);
    retention_tick(srv, locod_now_ms());
}

/* After a graceful stop the worker is gone: the job it was running goes back to the queue and
 * starts over after the restart, rather than failing with server_restart, which stays for
 * what a graceful stop cannot clean up (kill -9, a crash, power loss). */
static void requeue_interrupted(locod_server *srv) {
    loco_err err;
    loco_err_clear(&err);
    pthread_mutex_lock(&srv->mu);
    int n = locod_store_requeue_running(srv->store, &err);
    if (n > 0) LOG_INFO(srv->log, "stopping: %d running job(s) re-queued; they start again after the restart", n);
    if (n < 0) LOG_ERROR(srv->log, "stopping: cannot re-queue the running job: %s", err.msg);
    locod_store_touched(srv);
    pthread_mutex_unlock(&srv->mu);
}

static void on_signal(uv_signal_t *s, int signum) {
    locod_server *srv = s->data;
    LOG_INFO(srv->log, "signal %d: stopping", signum);
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    locod_server_changed(srv);
    pthread_mutex_unlock(&srv->mu);
    uv_stop(&srv->loop);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static int mkdir_p(const char *path) {
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

/* A store from before auto_vacuum never shrinks: rewrite it once (store.h). Not fatal: the
 * daemon works as before without it, and the next start tries again. */
static void enable_auto_vacuum(locod_server *srv) {
    loco_err err;
    loco_err_clear(&err);
    int64_t t0 = locod_now_ms();
    int r = locod_store_enable_auto_vacuum(srv->store, &err);
    if (r > 0)
        LOG_INFO(srv->log, "job store rewritten once with auto_vacuum, so retention can shrink it (%lld ms)",
                 (long long)(locod_now_ms() - t0));
    else if (r < 0)
        LOG_WARN(srv->log, "job store: cannot turn on auto_vacuum (the file will not shrink; tried again at the "
                           "next start): %s", err.msg);
}

static void requeue_row(void *ctx, const locod_job_row *row) {
    locod_server *srv = ctx;
    locod_queue_push(srv->queue, row->id, row->key_id);
}

static void pending_row(void *ctx, const char *key, int count) {
    locod_server *srv = ctx;
    locod_key_pending_add(srv, key, count);
}

loco_status locod_server_create(const locod_config *cfg, loco_log *log, const char *self_exe, locod_server **out,
                                loco_err *err) {
    locod_server *srv = calloc(1, sizeof *srv);
    if (!srv) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    srv->lock_fd = -1;
    srv->device_free = srv->device_total = -1; /* unknown until the worker reports a card */
    srv->cfg = cfg;
    srv->log = log;
    snprintf(srv->self_exe, sizeof srv->self_exe, "%s", self_exe);
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->changed, NULL);
    pthread_cond_init(&srv->progressed, NULL);
    pthread_cond_init(&srv->commit_cv, NULL);
    pthread_cond_init(&srv->durable_cv, NULL);
    srv->txn_gen = 1;
    srv->metrics = locod_metrics_create();
    srv->queue = locod_queue_create();
    srv->models = locod_models_create(cfg);
    srv->open_mode = cfg->n_keys == 0;
    loco_status st;
    if (mkdir_p(cfg->data_dir)) {
        st = loco_err_set(err, LOCO_EIO, "cannot create data directory %s: %s", cfg->data_dir, strerror(errno));
        goto fail;
    }
    /* One daemon per data dir, for the life of the process (O_CLOEXEC: workers do not hold it). */
    char lockp[PATH_MAX];
    snprintf(lockp, sizeof lockp, "%s/lock", cfg->data_dir);
    srv->lock_fd = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (srv->lock_fd < 0) {
        st = loco_err_set(err, LOCO_EIO, "cannot open %s: %s", lockp, strerror(errno));
        goto fail;
    }
    if (flock(srv->lock_fd, LOCK_EX | LOCK_NB)) {
        int e = errno;
        char pid[32] = "";
        ssize_t k = pread(srv->lock_fd, pid, sizeof pid - 1, 0);
        pid[k > 0 ? k : 0] = 0;
        pid[strcspn(pid, "\r\n")] = 0;
        if (e == EWOULDBLOCK)
            st = loco_err_set(err, LOCO_EIO, "data dir %s is in use by another locod (pid %s)", cfg->data_dir,
                              pid[0] ? pid : "unknown");
        else
            st = loco_err_set(err, LOCO_EIO, "cannot lock %s: %s", lockp, strerror(e));
        goto fail;
    }
    char pid[32];
    int pn = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(srv->lock_fd, 0) == 0 && pwrite(srv->lock_fd, pid, (size_t)pn, 0) != pn)
        LOG_WARN(log, "cannot write the pid to %s", lockp);
    snprintf(srv->artifacts_root, sizeof srv->artifacts_root, "%s/artifacts", cfg->data_dir);
    if ((st = locod_artifacts_init(srv->artifacts_root, err))) goto fail;
    char db[PATH_MAX];
    snprintf(db, sizeof db, "%s/jobs.sqlite3", cfg->data_dir);
    if ((st = locod_store_open(db, &srv->store, err))) goto fail;
    enable_auto_vacuum(srv);
    int requeued = 0;
    int recovered = locod_store_recover(srv->store, locod_now_ms(), cfg->job_retention_s * 1000, &requeued, err);
    if (recovered < 0) {
        st = err->code;
        goto fail;
    }
    if (recovered)
        LOG_WARN(log, "recovered %d job(s) left running by the previous process: %d re-queued (retry_on_restart), "
                      "%d failed with server_restart",
                 recovered, requeued, recovered - requeued);
    if (locod_store_each_queued(srv->store, requeue_row, srv, err) < 0 ||
        locod_store_pending_per_key(srv->store, pending_row, srv) < 0) {
        st = err->code ? err->code : LOCO_EIO;
        goto fail;
    }
    if (locod_queue_size(srv->queue)) LOG_INFO(log, "%d queued job(s) resume", locod_queue_size(srv->queue));
    for (int i = 0; i < cfg->n_load_at_start; i++) {
        locod_model *md = locod_models_find(srv->models, cfg->load_at_start[i]);
        if (!md) {
            st = loco_err_set(err, LOCO_ENOTFOUND,
                              "load_at_start names model '%s', which is neither in 'models' nor in a model root",
                              cfg->load_at_start[i]);
            goto fail;
        }
        md->state = LOCOD_MODEL_LOADING;
        md->op_pending = 1;
    }
    restore_residents(srv);
    locod_restore_variants(srv); /* after the start-up loads: variants follow their base */
    if (pthread_create(&srv->committer, NULL, committer_main, srv)) {
        st = loco_err_set(err, LOCO_ENOMEM, "cannot start the store committer thread");
        goto fail;
    }
    srv->committer_started = 1;
    /* The loop and its kick handle exist before HTTP starts: a request may arrive (and kick the
     * loop) before locod_server_run; the kick then waits in the loop until it runs. */
    uv_loop_init(&srv->loop);
    uv_async_init(&srv->loop, &srv->kick, on_kick);
    srv->kick.data = srv;
    srv->loop_open = 1;
    if ((st = locod_http_start(srv, err))) goto fail;
    *out = srv;
    return LOCO_OK;
fail:
    locod_server_destroy(srv);
    return st;
}

int locod_server_port(const locod_server *srv) { return srv->port; }

loco_status locod_server_run(locod_server *srv, loco_err *err) {
    uv_timer_init(&srv->loop, &srv->tick);
    srv->tick.data = srv;
    uv_signal_init(&srv->loop, &srv->sigint);
    uv_signal_init(&srv->loop, &srv->sigterm);
    srv->sigint.data = srv->sigterm.data = srv;
    uv_signal_start(&srv->sigint, on_signal, SIGINT);
    uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
    loco_status st = locod_worker_init(srv, err);
    if (st) return st;
    srv->next_sweep_ms = locod_now_ms() + 1000;
    uv_timer_start(&srv->tick, on_tick, 200, 200);
    locod_worker_pump(srv);
    uv_run(&srv->loop, UV_RUN_DEFAULT);
    /* stopping: wake event streams, stop HTTP, stop the worker */
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    locod_server_changed(srv);
    pthread_mutex_unlock(&srv->mu);
    locod_http_stop(srv);
    locod_worker_shutdown(srv);
    uv_timer_stop(&srv->tick);
    uv_signal_stop(&srv->sigint);
    uv_signal_stop(&srv->sigterm);
    uv_close((uv_handle_t *)&srv->tick, NULL);
    uv_close((uv_handle_t *)&srv->kick, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_run(&srv->loop, UV_RUN_DEFAULT); /* until the worker's handles are closed */
    requeue_interrupted(srv);
    uv_loop_close(&srv->loop);
    srv->loop_open = 0;
    locod_worker_free(srv);
    return LOCO_OK;
}

static void close_handle(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

void locod_server_destroy(locod_server *srv) {
    if (!srv) return;
    locod_http_stop(srv);
    if (srv->loop_open) { /* created but never run (or run failed early) */
        uv_walk(&srv->loop, close_handle, NULL);
        uv_run(&srv->loop, UV_RUN_DEFAULT);
        uv_loop_close(&srv->loop);
        srv->loop_open = 0;
    }
    if (srv->committer_started) {
        pthread_mutex_lock(&srv->mu);
        srv->committer_stop = 1;
        pthread_cond_signal(&srv->commit_cv);
        pthread_mutex_unlock(&srv->mu);
        pthread_join(srv->committer, NULL);
    }
    if (srv->store && locod_store_in_group(srv->store)) locod_store_group_commit(srv->store, NULL);
    locod_store_close(srv->store);
    locod_queue_destroy(srv->queue);
    locod_models_destroy(srv->models);
    locod_metrics_destroy(srv->metrics);
    free(srv->key_counts);
    if (srv->lock_fd >= 0) close(srv->lock_fd); /* releases the data dir lock */
    pthread_cond_destroy(&srv->changed);
    pthread_cond_destroy(&srv->progressed);
    pthread_cond_destroy(&srv->commit_cv);
    pthread_cond_destroy(&srv->durable_cv);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
}
