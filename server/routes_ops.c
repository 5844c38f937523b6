/* routes_ops.c: /healthz (the process answers), /readyz (worker up, start-up models resident,
 * job store writable, queue not full) and /metrics (Prometheus text). Open without a key, like a
 * load balancer or Prometheus expects. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "http.h"

static void gauges(locod_server *srv, locod_gauges *g) {
    memset(g, 0, sizeof *g);
    g->queued = locod_queue_size(srv->queue);
    g->running = srv->run.active;
    g->worker_up = srv->worker_ready;
    g->models_loaded = locod_models_loaded_count(srv->models);
    g->sse_streams = srv->sse_streams;
    g->http_connections = atomic_load(&srv->http_connections);
    g->max_connections = srv->cfg->max_connections;
    g->max_connections_per_ip = srv->cfg->max_connections_per_ip;
    struct rlimit rl;
    g->open_files_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (int64_t)rl.rlim_cur : -1;
    g->device_memory_bytes = srv->device_memory;
    g->device_memory_peak_bytes = srv->device_memory_peak;
    g->graph_pool_bytes = srv->graph_pool_memory;
    g->device_free_bytes = srv->device_free;
    g->device_total_bytes = srv->device_total;
    locod_store_count_states(srv->store, g->jobs_by_state);
}

enum MHD_Result locod_route_ops(locod_req *r, const char *what) {
    locod_server *srv = r->srv;
    if (strcmp(what, "healthz") == 0)
        return locod_reply(r, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL);
    if (strcmp(what, "metrics") == 0) {
        locod_gauges g;
        pthread_mutex_lock(&srv->mu);
        gauges(srv, &g);
        pthread_mutex_unlock(&srv->mu);
        size_t len;
        char *text = locod_metrics_render(srv->metrics, &g, &len);
        enum MHD_Result res = locod_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
        free(text);
        return res;
    }
    /* readyz */
    pthread_mutex_lock(&srv->mu);
    json_t *reasons = json_array();
    if (!srv->worker_ready) json_array_append_new(reasons, json_string("the GPU worker is starting or restarting"));
    /* a start-up model still loading: its jobs would wait. A load an admin asked for later does
     * not count: the server serves everything else meanwhile, and a probe that pulled it out of
     * a load balancer would also stop its clients from polling their jobs */
    for (int i = 0; i < srv->cfg->n_load_at_start; i++) {
        const locod_model *md = locod_models_find(srv->models, srv->cfg->load_at_start[i]);
        if (md && md->state == LOCOD_MODEL_LOADING) {
            char s[200];
            snprintf(s, sizeof s, "start-up model %s is loading", md->name);
            json_array_append_new(reasons, json_string(s));
        }
    }
    /* a start-up model that failed to load: every job for it would be refused, so this server
     * is not ready (one an admin unloaded on purpose does not count) */
    for (int i = 0; i < srv->cfg->n_load_at_start; i++) {
        const locod_model *md = locod_models_find(srv->models, srv->cfg->load_at_start[i]);
        if (md && md->state == LOCOD_MODEL_FAILED) {
            char s[700];
            const char *why = md->error ? md->error : "no reason given";
            /* at most 500 bytes of the error, never half a UTF-8 character (json_string would
             * refuse the text and the reason would be lost) */
            int n = (int)strlen(why);
            if (n > 500) {
                n = 500;
                while (n > 0 && ((unsigned char)why[n] & 0xC0) == 0x80) n--;
            }
            snprintf(s, sizeof s, "start-up model %s failed to load: %.*s", md->name, n, why);
            json_t *reason = json_string(s);
            json_array_append_new(reasons, reason ? reason : json_string("a start-up model failed to load"));
        }
    }
    /* a store that cannot write refuses every new job and loses every result: not ready until
     * a write succeeds again (retention frees the disk, see store.h) */
    char why[256];
    if (locod_store_write_failure(srv->store, why, sizeof why)) {
        char s[320];
        snprintf(s, sizeof s, "the job store is failing: %s", why);
        json_t *reason = json_string(s);
        json_array_append_new(reasons, reason ? reason : json_string("the job store is failing"));
    }
    int queued = locod_queue_size(srv->queue);
    if (queued >= srv->cfg->max_queue) json_array_append_new(reasons, json_string("the queue is full"));
    json_t *o = json_pack("{s:s, s:b, s:i, s:i, s:s}", "status", json_array_size(reasons) ? "not_ready" : "ready",
                          "worker", srv->worker_ready, "queued", queued, "models_loaded",
                          locod_models_loaded_count(srv->models), "device", srv->device);
    pthread_mutex_unlock(&srv->mu);
    int ready = json_array_size(reasons) == 0;
    json_object_set_new(o, "reasons", reasons);
    char ra[16];
    snprintf(ra, sizeof ra, "%d", srv->cfg->retry_after_s);
    const char *const h[] = {"Retry-After", ra, NULL};
    return locod_reply_json(r, ready ? 200 : 503, o, ready ? NULL : h);
}
