/* metrics.h: Prometheus counters and histograms of the daemon (text exposition format 0.0.4).
 * Counters are updated from any thread; gauges are passed in at render time by the server. */
#ifndef LOCOD_METRICS_H
#define LOCOD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "job.h"

typedef struct locod_metrics locod_metrics;

typedef struct locod_gauges {
    int queued;
    int running;
    int worker_up;
    int models_loaded;
    int sse_streams;
    int http_connections;          /* open now */
    int max_connections;           /* limits.max_connections as in force (start-up may lower it) */
    int max_connections_per_ip;    /* 0: none */
    int64_t open_files_limit;      /* the soft RLIMIT_NOFILE; -1: unlimited or unknown */
    int64_t device_memory_bytes;
    int64_t device_memory_peak_bytes;
    int64_t graph_pool_bytes;
    int64_t device_free_bytes, device_total_bytes; /* -1: no card (CPU backend), not reported */
    int64_t jobs_by_state[LOCO_JOB_STATE_COUNT]; /* in the store */
} locod_gauges;

locod_metrics *locod_metrics_create(void);
void locod_metrics_destroy(locod_metrics *m);

void locod_metrics_job_created(locod_metrics *m, loco_job_kind kind);
void locod_metrics_job_started(locod_metrics *m, loco_job_kind kind, double wait_s);
void locod_metrics_job_finished(locod_metrics *m, loco_job_kind kind, loco_job_state state, double run_s);
void locod_metrics_http(locod_metrics *m, int status);
void locod_metrics_problem(locod_metrics *m, const char *code);
void locod_metrics_worker_restart(locod_metrics *m);
/* A connection closed at accept by a connection limit; returns the total so far. */
uint64_t locod_metrics_connection_refused(locod_metrics *m);
/* A connection took the last free one of limits.max_connections; returns the total so far. */
uint64_t locod_metrics_connections_full(locod_metrics *m);
void locod_metrics_model_event(locod_metrics *m, const char *event); /* "load", "unload", "load_failed" */

/* Render everything; returns a malloc'ed string. */
char *locod_metrics_render(locod_metrics *m, const locod_gauges *g, size_t *len);

#endif
