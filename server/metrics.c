/* metrics.c: see metrics.h. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 14
static const double buckets[NBUCKETS] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600};

typedef struct hist {
    uint64_t counts[NBUCKETS + 1];
    double sum;
    uint64_t n;
} hist;

#define MAX_CODES 64

struct locod_metrics {
    pthread_mutex_t mu;
    uint64_t created[LOCO_JOB_KIND_COUNT];
    uint64_t finished[LOCO_JOB_KIND_COUNT][LOCO_JOB_STATE_COUNT];
    hist wait[LOCO_JOB_KIND_COUNT], run[LOCO_JOB_KIND_COUNT];
    uint64_t http[600];
    char codes[MAX_CODES][48];
    uint64_t code_counts[MAX_CODES];
    int n_codes;
    uint64_t worker_restarts;
    uint64_t connections_refused, connections_full;
    uint64_t model_loads, model_unloads, model_load_failures;
};

locod_metrics *locod_metrics_create(void) {
    locod_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void locod_metrics_destroy(locod_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void observe(hist *h, double v) {
    int i = 0;
    while (i < NBUCKETS && v > buckets[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

void locod_metrics_job_created(locod_metrics *m, loco_job_kind k) {
    pthread_mutex_lock(&m->mu);
    m->created[k]++;
    pthread_mutex_unlock(&m->mu);
}

void locod_metrics_job_started(locod_metrics *m, loco_job_kind k, double wait_s) {
    pthread_mutex_lock(&m->mu);
    observe(&m->wait[k], wait_s);
    pthread_mutex_unlock(&m->mu);
}

void locod_metrics_job_finished(locod_metrics *m, loco_job_kind k, loco_job_state s, double run_s) {
    pthread_mutex_lock(&m->mu);
    m->finished[k][s]++;
    if (run_s >= 0) observe(&m->run[k], run_s);
    pthread_mutex_unlock(&m->mu);
}

void locod_metrics_http(locod_metrics *m, int status) {
    if (status < 100 || status >= 600) return;
    pthread_mutex_lock(&m->mu);
    m->http[status]++;
    pthread_mutex_unlock(&m->mu);
}

void locod_metrics_problem(locod_metrics *m, const char *code) {
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < m->n_codes && strcmp(m->codes[i], code) != 0) i++;
    if (i == m->n_codes && m->n_codes < MAX_CODES) snprintf(m->codes[m->n_codes++], 48, "%s", code);
    if (i < m->n_codes) m->code_counts[i]++;
    pthread_mutex_unlock(&m->mu);
}

void locod_metrics_worker_restart(locod_metrics *m) {
    pthread_mutex_lock(&m->mu);
    m->worker_restarts++;
    pthread_mutex_unlock(&m->mu);
}

uint64_t locod_metrics_connection_refused(locod_metrics *m) {
    pthread_mutex_lock(&m->mu);
    uint64_t n = ++m->connections_refused;
    pthread_mutex_unlock(&m->mu);
    return n;
}

uint64_t locod_metrics_connections_full(locod_metrics *m) {
    pthread_mutex_lock(&m->mu);
    uint64_t n = ++m->connections_full;
    pthread_mutex_unlock(&m->mu);
    return n;
}

void locod_metrics_model_event(locod_metrics *m, const char *ev) {
    pthread_mutex_lock(&m->mu);
    if (strcmp(ev, "load") == 0) m->model_loads++;
    else if (strcmp(ev, "unload") == 0) m->model_unloads++;
    else m->model_load_failures++;
    pthread_mutex_unlock(&m->mu);
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(sbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (w >= 0 && (size_t)w < b->cap - b->n) {
            b->n += (size_t)w;
            return;
        }
        b->cap = b->cap * 2 + (size_t)(w > 0 ? w : 256);
        b->p = realloc(b->p, b->cap);
    }
}

static void render_hist(sbuf *b, const char *name, const char *help, hist *h) {
    add(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int k = 0; k < LOCO_JOB_KIND_COUNT; k++) {
        uint64_t cum = 0;
        const char *kn = loco_job_kind_name((loco_job_kind)k);
        for (int i = 0; i < NBUCKETS; i++) {
            cum += h[k].counts[i];
            add(b, "%s_bucket{kind=\"%s\",le=\"%g\"} %llu\n", name, kn, buckets[i], (unsigned long long)cum);
        }
        cum += h[k].counts[NBUCKETS];
        add(b, "%s_bucket{kind=\"%s\",le=\"+Inf\"} %llu\n", name, kn, (unsigned long long)cum);
        add(b, "%s_sum{kind=\"%s\"} %.6f\n%s_count{kind=\"%s\"} %llu\n", name, kn, h[k].sum, name, kn,
            (unsigned long long)h[k].n);
    }
}

static void render_connections(sbuf *b, const locod_metrics *m, const locod_gauges *g) {
    add(b, "# HELP loco_http_connections Open HTTP connections.\n# TYPE loco_http_connections gauge\n"
           "loco_http_connections %d\n", g->http_connections);
    add(b, "# HELP loco_http_connection_limit Connection limits in force: all clients (limits.max_connections, "
           "lowered at start when the open-file limit cannot hold it) and one client address "
           "(limits.max_connections_per_ip, 0 = none).\n# TYPE loco_http_connection_limit gauge\n"
           "loco_http_connection_limit{scope=\"total\"} %d\nloco_http_connection_limit{scope=\"per_address\"} %d\n",
        g->max_connections, g->max_connections_per_ip);
    add(b, "# HELP loco_http_connections_refused_total Connections closed at once, unanswered, by a connection limit "
           "(mostly a client address over limits.max_connections_per_ip).\n"
           "# TYPE loco_http_connections_refused_total counter\nloco_http_connections_refused_total %llu\n",
        (unsigned long long)m->connections_refused);
    add(b, "# HELP loco_http_connections_full_total Times every connection of limits.max_connections was in use "
           "(new clients then wait in the listen backlog).\n# TYPE loco_http_connections_full_total counter\n"
           "loco_http_connections_full_total %llu\n", (unsigned long long)m->connections_full);
    if (g->open_files_limit >= 0)
        add(b, "# HELP loco_open_files_limit The daemon's soft open-file limit (RLIMIT_NOFILE).\n"
               "# TYPE loco_open_files_limit gauge\nloco_open_files_limit %lld\n", (long long)g->open_files_limit);
}

char *locod_metrics_render(locod_metrics *m, const locod_gauges *g, size_t *len) {
    sbuf b = {malloc(8192), 0, 8192};
    b.p[0] = 0;
    pthread_mutex_lock(&m->mu);
    add(&b, "# HELP loco_queue_depth Jobs waiting in the queue.\n# TYPE loco_queue_depth gauge\nloco_queue_depth %d\n",
        g->queued);
    add(&b, "# HELP loco_jobs_running Jobs running on the worker.\n# TYPE loco_jobs_running gauge\n"
            "loco_jobs_running %d\n", g->running);
    add(&b, "# HELP loco_jobs Jobs in the store by state.\n# TYPE loco_jobs gauge\n");
    for (int s = 0; s < LOCO_JOB_STATE_COUNT; s++)
        add(&b, "loco_jobs{state=\"%s\"} %lld\n", loco_job_state_name((loco_job_state)s),
            (long long)g->jobs_by_state[s]);
    add(&b, "# HELP loco_jobs_created_total Jobs accepted.\n# TYPE loco_jobs_created_total counter\n");
    for (int k = 0; k < LOCO_JOB_KIND_COUNT; k++)
        add(&b, "loco_jobs_created_total{kind=\"%s\"} %llu\n", loco_job_kind_name((loco_job_kind)k),
            (unsigned long long)m->created[k]);
    add(&b, "# HELP loco_jobs_finished_total Jobs that reached a terminal state.\n"
            "# TYPE loco_jobs_finished_total counter\n");
    for (int k = 0; k < LOCO_JOB_KIND_COUNT; k++)
        for (int s = LOCO_JOB_SUCCEEDED; s < LOCO_JOB_STATE_COUNT; s++)
            add(&b, "loco_jobs_finished_total{kind=\"%s\",state=\"%s\"} %llu\n", loco_job_kind_name((loco_job_kind)k),
                loco_job_state_name((loco_job_state)s), (unsigned long long)m->finished[k][s]);
    render_hist(&b, "loco_job_wait_seconds", "Time from acceptance to start.", m->wait);
    render_hist(&b, "loco_job_run_seconds", "Time from start to the end.", m->run);
    add(&b, "# HELP loco_http_responses_total HTTP responses by status.\n"
            "# TYPE loco_http_responses_total counter\n");
    for (int s = 100; s < 600; s++)
        if (m->http[s]) add(&b, "loco_http_responses_total{code=\"%d\"} %llu\n", s, (unsigned long long)m->http[s]);
    add(&b, "# HELP loco_errors_total Problem answers by code.\n# TYPE loco_errors_total counter\n");
    for (int i = 0; i < m->n_codes; i++)
        add(&b, "loco_errors_total{code=\"%s\"} %llu\n", m->codes[i], (unsigned long long)m->code_counts[i]);
    add(&b, "# HELP loco_worker_up 1 while the GPU worker process is ready.\n# TYPE loco_worker_up gauge\n"
            "loco_worker_up %d\n", g->worker_up);
    add(&b, "# HELP loco_worker_restarts_total Worker process restarts (crashes, device faults).\n"
            "# TYPE loco_worker_restarts_total counter\nloco_worker_restarts_total %llu\n",
        (unsigned long long)m->worker_restarts);
    add(&b, "# HELP loco_models_loaded Models resident on the device.\n# TYPE loco_models_loaded gauge\n"
            "loco_models_loaded %d\n", g->models_loaded);
    add(&b, "# HELP loco_model_events_total Model loads, unloads and failed loads.\n"
            "# TYPE loco_model_events_total counter\n"
            "loco_model_events_total{event=\"load\"} %llu\nloco_model_events_total{event=\"unload\"} %llu\n"
            "loco_model_events_total{event=\"load_failed\"} %llu\n",
        (unsigned long long)m->model_loads, (unsigned long long)m->model_unloads,
        (unsigned long long)m->model_load_failures);
    add(&b, "# HELP loco_device_memory_bytes Device (GPU, or host for the CPU backend) memory held by the worker.\n"
            "# TYPE loco_device_memory_bytes gauge\nloco_device_memory_bytes{kind=\"current\"} %lld\n"
            "loco_device_memory_bytes{kind=\"peak\"} %lld\n",
        (long long)g->device_memory_bytes, (long long)g->device_memory_peak_bytes);
    add(&b, "# HELP loco_graph_pool_bytes Device memory recorded UNet graphs keep between calls, besides the tensors "
            "above (given back to an allocation that runs short).\n# TYPE loco_graph_pool_bytes gauge\n"
            "loco_graph_pool_bytes %lld\n",
        (long long)g->graph_pool_bytes);
    if (g->device_total_bytes >= 0)
        add(&b, "# HELP loco_gpu_memory_bytes The GPU's memory as its driver counts it (every process on the card).\n"
                "# TYPE loco_gpu_memory_bytes gauge\nloco_gpu_memory_bytes{kind=\"free\"} %lld\n"
                "loco_gpu_memory_bytes{kind=\"total\"} %lld\n",
            (long long)g->device_free_bytes, (long long)g->device_total_bytes);
    add(&b, "# HELP loco_sse_streams Open event streams.\n# TYPE loco_sse_streams gauge\nloco_sse_streams %d\n",
        g->sse_streams);
    render_connections(&b, m, g);
    pthread_mutex_unlock(&m->mu);
    *len = b.n;
    return b.p;
}
