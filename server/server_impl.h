/* server_impl.h: the server's shared state, for the files of server/ only (see server.h for threads).
 * Every field below `mu` is guarded by it unless marked otherwise. */
#ifndef LOCOD_SERVER_IMPL_H
#define LOCOD_SERVER_IMPL_H

#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "job.h"
#include "log.h"
#include "metrics.h"
#include "models.h"
#include "queue.h"
#include "request.h"
#include "server.h"
#include "store.h"

struct MHD_Daemon;
typedef struct locod_worker locod_worker;

typedef struct locod_key_count {
    char key[64];
    int pending; /* queued + running */
} locod_key_count;

/* The job on the worker, if any. */
typedef struct locod_running {
    int active;
    char id[LOCO_JOB_ID_LEN + 1];
    loco_job_kind kind;
    char model[LOCO_MODEL_NAME_MAX + 1];
    char key_id[64];
    int64_t started_ms;
    char phase[32];
    int step, total;
    int cancel_requested;
    int cancel_sent;
    int64_t cancel_deadline_ms; /* kill the worker when the job ignores cancel */
    int64_t timeout_ms;         /* 0: none */
} locod_running;

struct locod_server {
    /* immutable after create */
    const locod_config *cfg;
    loco_log *log;
    locod_metrics *metrics; /* own lock */
    char self_exe[PATH_MAX];
    char artifacts_root[PATH_MAX];
    int port;
    struct MHD_Daemon *mhd;
    int open_mode; /* no keys configured: loopback only, everyone is admin */
    int lock_fd;   /* flock on <data_dir>/lock, held for the process life */
    /* http.c, any thread: when the connection-limit warnings were last logged (rate limit) */
    _Atomic int64_t refused_warned_ms, full_warned_ms;
    /* open HTTP connections, counted on libmicrohttpd's connection notifications (its own count,
     * MHD_DAEMON_INFO_CURRENT_CONNECTIONS, is returned through one field of the daemon that
     * concurrent callers overwrite) */
    atomic_int http_connections;

    /* libuv: only the loop thread touches these (kick is thread-safe) */
    uv_loop_t loop;
    int loop_open; /* loop and kick initialised (create), not yet closed (end of run) */
    uv_async_t kick;
    uv_timer_t tick;
    uv_signal_t sigint, sigterm;
    int64_t next_sweep_ms;
    int sweep_active;        /* a retention pass is under way (over several ticks) */
    locod_purge_pass sweep;  /* its cursor and counts */
    locod_worker *worker;

    pthread_mutex_t mu;
    pthread_cond_t changed; /* broadcast on any job / model change (event streams wait on it) */
    uint64_t version;
    /* broadcast on a running job's progress step, and on every change: only the streams of the
     * running job wait on it, so a step does not wake the streams of queued jobs */
    pthread_cond_t progressed;
    uint64_t progress_version;
    int stopping;
    locod_store *store;
    locod_queue *queue;
    locod_models *models;
    locod_key_count *key_counts;
    int n_key_counts, cap_key_counts;
    locod_running run;
    int worker_ready;
    int sse_streams;
    int64_t device_memory, device_memory_peak;
    int64_t graph_pool_memory;         /* of it, held by recorded UNet graphs between calls */
    int64_t device_free, device_total; /* the card's, as the worker last saw them; -1: no card */
    char device[256];
    /* group commit of the store (server.c): creations wait until durable_gen >= their gen */
    pthread_t committer;
    int committer_started, committer_stop;
    pthread_cond_t commit_cv, durable_cv;
    uint64_t txn_gen, durable_gen, failed_gen;
    int txn_dirty;
};

int64_t locod_now_ms(void);
/* Under mu: note a change and wake event streams. */
void locod_server_changed(locod_server *srv);
/* Under mu: note the running job's progress and wake the streams that follow a running job. */
void locod_server_progressed(locod_server *srv);
/* Under mu: after writing to the store, have an open group transaction committed soon. */
void locod_store_touched(locod_server *srv);
/* Under mu (released while waiting): make the caller's writes durable. 0 ok, -1 failed. */
int locod_store_wait_durable(locod_server *srv);
/* Any thread: ask the loop to dispatch / send cancels. */
void locod_server_kick(locod_server *srv);
/* Under mu: pending-count bookkeeping per key. */
int locod_key_pending(locod_server *srv, const char *key);
void locod_key_pending_add(locod_server *srv, const char *key, int delta);
/* Under mu: finish a job (store + counters + metrics + wake). Returns 1 when it moved. */
int locod_finish_job(locod_server *srv, const char *id, loco_job_kind kind, const char *key_id,
                     loco_job_state state, int64_t started_ms, const char *code, const char *message, int retryable,
                     const json_t *result, const json_t *artifacts);

/* Under mu: drop a variant for good (registry, store row, and its delta artifact when nothing
 * else needs it). Does not touch the worker: the caller unloads it there when resident. */
/* Under mu: record that an admin loaded (1) or unloaded (0) a model through the API, so a
 * restarted daemon brings back what was resident (store.h, "resident models"). */
void locod_note_resident(locod_server *srv, const char *name, int resident);
void locod_forget_variant(locod_server *srv, const char *name);
/* Under mu, at start: list the variants the store recorded (server.c). */
void locod_restore_variants(locod_server *srv);

/* ---- the worker supervisor (worker_supervisor.c); loop thread only ------------------------ */
loco_status locod_worker_init(locod_server *srv, loco_err *err);
void locod_worker_pump(locod_server *srv);   /* dispatch model ops and jobs if the worker is idle */
void locod_worker_tick(locod_server *srv);   /* deadlines, restarts */
void locod_worker_shutdown(locod_server *srv);
int locod_worker_alive(locod_server *srv);
void locod_worker_free(locod_server *srv);

/* ---- HTTP (http.c) --------------------------------------------------------------------------- */
loco_status locod_http_start(locod_server *srv, loco_err *err);
void locod_http_stop(locod_server *srv);

#endif
