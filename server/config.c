/* config.c: see config.h. */
#include "config.h"

#include <ctype.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth.h"

/* The per-address connection limit when the config gives none (see per_ip_within_connections). */
static int default_per_ip(int max_connections) { return max_connections - max_connections / 4; }

void locod_config_init(locod_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
    c->listen_port = 8080;
    c->data_dir = strdup("var/locod");
    c->device = strdup("auto");
    c->vae_upcast = strdup("f32");
    c->log_level = strdup("info");
    c->config_dir = strdup(".");
    loco_proto_limits_init(&c->limits);
    c->max_body_bytes = 1 << 20;
    c->max_queue = 1024;
    c->max_pending_per_key = 256;
    c->max_connections = 1024;
    c->max_sse_streams = c->max_connections / 2;
    c->max_connections_per_ip = default_per_ip(c->max_connections);
    c->http_threads = 4;
    c->job_retention_s = 7 * 24 * 3600;
    c->retention_sweep_s = 60;
    c->tombstone_retention_s = 30 * 24 * 3600;
    c->worker_restart_backoff_ms = 500;
    c->cancel_grace_ms = 30000;
    c->sse_keepalive_ms = 15000;
    c->retry_after_s = 5;
}

static void free_list(char **l, int n) {
    for (int i = 0; i < n; i++) free(l[i]);
    free(l);
}

void locod_config_free(locod_config *c) {
    free(c->data_dir);
    free(c->device);
    free(c->vae_upcast);
    free(c->log_level);
    free(c->port_file);
    free(c->clip_scorer);
    free(c->config_dir);
    free_list(c->model_roots, c->n_model_roots);
    free_list(c->load_at_start, c->n_load_at_start);
    free_list(c->cors_origins, c->n_cors_origins);
    for (int i = 0; i < c->n_models; i++) {
        free(c->models[i].path);
        free(c->models[i].config_dir);
        free(c->models[i].variant);
    }
    free(c->models);
    free(c->keys);
    memset(c, 0, sizeof *c);
}

int locod_host_is_loopback(const char *h) {
    return strcmp(h, "localhost") == 0 || strncmp(h, "127.", 4) == 0 || strcmp(h, "::1") == 0;
}

static char *resolve(const char *base, const char *p) {
    char buf[PATH_MAX];
    if (p[0] == '/' || !base || !*base || strcmp(base, ".") == 0) return strdup(p);
    snprintf(buf, sizeof buf, "%s/%s", base, p);
    return strdup(buf);
}

loco_status locod_config_set_listen(locod_config *c, const char *hp, loco_err *err) {
    const char *colon = strrchr(hp, ':');
    if (!colon) return loco_err_set(err, LOCO_EINVAL, "listen address '%s' must be HOST:PORT", hp);
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || colon[1] == 0 || port < 0 || port > 65535)
        return loco_err_set(err, LOCO_EINVAL, "listen address '%s': port must be 0..65535", hp);
    size_t hl = (size_t)(colon - hp);
    if (hl > 0) {
        const char *h = hp;
        if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') { h++; hl -= 2; }
        if (hl >= sizeof c->listen_host) return loco_err_set(err, LOCO_EINVAL, "listen host too long");
        memcpy(c->listen_host, h, hl);
        c->listen_host[hl] = 0;
    }
    c->listen_port = (int)port;
    return LOCO_OK;
}

loco_status locod_config_set_data_dir(locod_config *c, const char *dir, loco_err *err) {
    if (!dir || !*dir) return loco_err_set(err, LOCO_EINVAL, "data directory must not be empty");
    free(c->data_dir);
    c->data_dir = strdup(dir);
    return LOCO_OK;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int check_keys(const json_t *o, const char *where, const char *const *allowed, loco_err *err) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0) ok = 1;
        if (!ok) {
            loco_err_set(err, LOCO_EINVAL, "config: unknown key '%s%s%s' (see config/README.md)", where,
                         *where ? "." : "", k);
            return -1;
        }
    }
    return 0;
}

static int get_int(const json_t *o, const char *where, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   loco_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        loco_err_set(err, LOCO_EINVAL, "config: '%s%s%s' must be an integer in %lld..%lld", where, *where ? "." : "",
                     key, (long long)lo, (long long)hi);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

#define GET_INT(o, where, key, lo, hi, field)                                   \
    do {                                                                        \
        int64_t t_ = (field);                                                   \
        if (get_int(o, where, key, lo, hi, &t_, err)) return err->code;         \
        (field) = t_;                                                           \
    } while (0)

static int get_str(const json_t *o, const char *where, const char *key, char **out, loco_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    if (json_is_null(v)) {
        free(*out);
        *out = NULL;
        return 0;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        loco_err_set(err, LOCO_EINVAL, "config: '%s%s%s' must be a non-empty string", where, *where ? "." : "", key);
        return -1;
    }
    free(*out);
    *out = strdup(json_string_value(v));
    return 0;
}

static int get_str_list(const json_t *o, const char *key, char ***out, int *n, const char *base, loco_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    if (!json_is_array(v)) {
        loco_err_set(err, LOCO_EINVAL, "config: '%s' must be a list of strings", key);
        return -1;
    }
    free_list(*out, *n);
    *n = (int)json_array_size(v);
    *out = calloc((size_t)*n + 1, sizeof(char *));
    for (int i = 0; i < *n; i++) {
        json_t *s = json_array_get(v, (size_t)i);
        if (!json_is_string(s) || json_string_length(s) == 0) {
            loco_err_set(err, LOCO_EINVAL, "config: '%s[%d]' must be a non-empty string", key, i);
            return -1;
        }
        (*out)[i] = base ? resolve(base, json_string_value(s)) : strdup(json_string_value(s));
    }
    return 0;
}

static int parse_hex32(const char *s, uint8_t out[32]) {
    if (strlen(s) != 64) return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (!isxdigit((unsigned char)s[2 * i]) || !isxdigit((unsigned char)s[2 * i + 1])) return -1;
        sscanf(s + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return 0;
}

static loco_status parse_keys(locod_config *c, const json_t *v, loco_err *err) {
    static const char *const allowed[] = {"id", "sha256", "admin", "max_pending", NULL};
    if (!json_is_array(v)) return loco_err_set(err, LOCO_EINVAL, "config: 'keys' must be a list of objects");
    c->n_keys = (int)json_array_size(v);
    c->keys = calloc((size_t)c->n_keys + 1, sizeof *c->keys);
    for (int i = 0; i < c->n_keys; i++) {
        json_t *k = json_array_get(v, (size_t)i);
        char where[32];
        snprintf(where, sizeof where, "keys[%d]", i);
        if (!json_is_object(k)) return loco_err_set(err, LOCO_EINVAL, "config: '%s' must be an object", where);
        if (check_keys(k, where, allowed, err)) return err->code;
        json_t *id = json_object_get(k, "id"), *h = json_object_get(k, "sha256"), *adm = json_object_get(k, "admin");
        if (!json_is_string(id) || !loco_name_valid(json_string_value(id)) || json_string_length(id) >= 64)
            return loco_err_set(err, LOCO_EINVAL, "config: '%s.id' must be a name of letters, digits, '.', '_', '-'",
                                where);
        if (!json_is_string(h) || parse_hex32(json_string_value(h), c->keys[i].sha256))
            return loco_err_set(err, LOCO_EINVAL,
                                "config: '%s.sha256' must be the 64-hex SHA-256 of the key (print it with "
                                "`locod --hash-key < keyfile`)",
                                where);
        if (adm && !json_is_boolean(adm)) return loco_err_set(err, LOCO_EINVAL, "config: '%s.admin' must be a boolean", where);
        snprintf(c->keys[i].id, sizeof c->keys[i].id, "%s", json_string_value(id));
        c->keys[i].admin = adm ? json_is_true(adm) : 0;
        int64_t mp = 0;
        if (get_int(k, where, "max_pending", 0, 1000000, &mp, err)) return err->code;
        c->keys[i].max_pending = (int)mp;
        for (int j = 0; j < i; j++)
            if (strcmp(c->keys[j].id, c->keys[i].id) == 0)
                return loco_err_set(err, LOCO_EINVAL, "config: key id '%s' appears twice", c->keys[i].id);
    }
    return LOCO_OK;
}

static loco_status parse_models(locod_config *c, const json_t *v, const char *base, loco_err *err) {
    static const char *const allowed[] = {"path", "config_dir", "variant", NULL};
    if (!json_is_object(v))
        return loco_err_set(err, LOCO_EINVAL, "config: 'models' must be an object: name -> {\"path\": ...}");
    c->n_models = (int)json_object_size(v);
    c->models = calloc((size_t)c->n_models + 1, sizeof *c->models);
    const char *name;
    json_t *m;
    int i = 0;
    json_object_foreach((json_t *)v, name, m) {
        char where[160];
        snprintf(where, sizeof where, "models.%s", name);
        if (!loco_name_valid(name))
            return loco_err_set(err, LOCO_EINVAL, "config: model name '%s' must be letters, digits, '.', '_', '+', '-'",
                                name);
        if (!json_is_object(m)) return loco_err_set(err, LOCO_EINVAL, "config: '%s' must be an object", where);
        if (check_keys(m, where, allowed, err)) return err->code;
        locod_model_cfg *mc = &c->models[i++];
        snprintf(mc->name, sizeof mc->name, "%s", name);
        if (get_str(m, where, "path", &mc->path, err) || get_str(m, where, "config_dir", &mc->config_dir, err) ||
            get_str(m, where, "variant", &mc->variant, err))
            return err->code;
        if (!mc->path) return loco_err_set(err, LOCO_EINVAL, "config: '%s.path' is required", where);
        char *abs = resolve(base, mc->path);
        free(mc->path);
        mc->path = abs;
        if (mc->config_dir) {
            abs = resolve(base, mc->config_dir);
            free(mc->config_dir);
            mc->config_dir = abs;
        }
        /* what the loader would refuse when the model loads (model_files.c), said at start-up */
        struct stat sb;
        const int is_dir = mc->path && stat(mc->path, &sb) == 0 && S_ISDIR(sb.st_mode);
        const int is_file = mc->path && stat(mc->path, &sb) == 0 && S_ISREG(sb.st_mode);
        if (mc->config_dir && is_dir)
            return loco_err_set(err, LOCO_EINVAL,
                                "config: '%s.config_dir' applies to single-file checkpoints; %s is a diffusers "
                                "folder, which has its own configs (remove config_dir)",
                                where, mc->path);
        if (mc->variant && is_file)
            return loco_err_set(err, LOCO_EINVAL,
                                "config: '%s.variant' picks weight files inside a diffusers folder; %s is a single "
                                "file (remove variant)",
                                where, mc->path);
    }
    return LOCO_OK;
}

/* Each event stream holds a connection (and its thread) for as long as the job runs, so streams
 * alone must never be able to take every connection: without an explicit value the cap follows
 * max_connections (half of it), and an explicit one must leave connections for other requests. */
static loco_status sse_streams_within_connections(locod_config *c, loco_err *err) {
    if (!c->sse_streams_explicit) {
        c->max_sse_streams = c->max_connections / 2;
        return LOCO_OK;
    }
    if (c->max_sse_streams >= c->max_connections)
        return loco_err_set(err, LOCO_EINVAL,
                            "config: 'limits.max_sse_streams' (%d) must be below 'limits.max_connections' (%d), so "
                            "event streams cannot take every connection; leave it out for max_connections / 2",
                            c->max_sse_streams, c->max_connections);
    return LOCO_OK;
}

/* One client address must not be able to hold every connection (a slow client trickling its
 * headers would lock everyone else out): by default it gets three quarters of them
 * (default_per_ip), which stays above the event-stream cap (half), because a single address is
 * common (a front proxy, or every client on loopback) and it must be able to poll and cancel,
 * and to be told 503 too_many_streams, while it holds the most streams the server serves. */
static loco_status per_ip_within_connections(locod_config *c, loco_err *err) {
    if (!c->per_ip_explicit) {
        c->max_connections_per_ip = default_per_ip(c->max_connections);
        if (c->max_sse_streams && c->max_connections_per_ip <= c->max_sse_streams) /* an explicit stream cap */
            c->max_connections_per_ip = c->max_sse_streams + 1; /* <= max_connections: the cap is below it */
        return LOCO_OK;
    }
    if (c->max_connections_per_ip > c->max_connections)
        return loco_err_set(err, LOCO_EINVAL,
                            "config: 'limits.max_connections_per_ip' (%d) must not be above 'limits.max_connections' "
                            "(%d); 0 means no per-address limit, and leaving it out gives 3/4 of max_connections",
                            c->max_connections_per_ip, c->max_connections);
    if (c->max_connections_per_ip && c->max_connections_per_ip <= c->max_sse_streams)
        return loco_err_set(err, LOCO_EINVAL,
                            "config: 'limits.max_connections_per_ip' (%d) must be above 'limits.max_sse_streams' (%d): "
                            "one address holding the most event streams must still be able to poll and cancel; "
                            "raise it or lower max_sse_streams",
                            c->max_connections_per_ip, c->max_sse_streams);
    return LOCO_OK;
}

void locod_config_lower_connections(locod_config *c, int n) {
    if (n >= c->max_connections) return;
    c->max_connections = n;
    if (!c->sse_streams_explicit || c->max_sse_streams >= n) c->max_sse_streams = n / 2;
    if (!c->per_ip_explicit) c->max_connections_per_ip = default_per_ip(n);
    else if (c->max_connections_per_ip > n) c->max_connections_per_ip = n;
    /* keep an explicit per-address limit above the stream cap, as the config check asks */
    if (c->max_connections_per_ip && c->max_sse_streams >= c->max_connections_per_ip)
        c->max_sse_streams = c->max_connections_per_ip / 2;
}

loco_status locod_config_parse(locod_config *c, const char *text, const char *base, loco_err *err) {
    static const char *const top[] = {"listen", "data_dir", "device", "vae_upcast", "threads", "model_roots", "models",
                                      "load_at_start", "keys", "cors_origins", "limits", "queue", "retention",
                                      "worker", "sse", "log_level", "port_file", "clip_scorer", "$comment", NULL};
    static const char *const limits[] = {"max_body_bytes", "max_prompt_chars", "max_side", "max_pixels", "max_steps",
                                         "default_steps", "max_batch", "max_prompts", "max_items",
                                         "max_connections", "max_sse_streams",
                                         "max_connections_per_ip", NULL};
    static const char *const queue[] = {"max_queued", "max_pending_per_key", "retry_after_s", NULL};
    static const char *const retention[] = {"jobs_s", "sweep_interval_s", "tombstones_s", NULL};
    static const char *const worker[] = {"restart_backoff_ms", "cancel_grace_ms", "job_timeout_s", NULL};
    static const char *const sse[] = {"keepalive_ms", NULL};
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!root) return loco_err_set(err, LOCO_EFORMAT, "config: line %d: %s", je.line, je.text);
    loco_status st = LOCO_EINVAL;
    if (!json_is_object(root)) {
        loco_err_set(err, LOCO_EINVAL, "config: the file must hold one JSON object");
        goto out;
    }
    if (check_keys(root, "", top, err)) goto out;
    free(c->config_dir);
    c->config_dir = strdup(base ? base : ".");
    json_t *v;
    if ((v = json_object_get(root, "listen"))) {
        if (!json_is_string(v)) {
            loco_err_set(err, LOCO_EINVAL, "config: 'listen' must be \"HOST:PORT\"");
            goto out;
        }
        if (locod_config_set_listen(c, json_string_value(v), err)) goto out;
    }
    if (get_str(root, "", "data_dir", &c->data_dir, err) || get_str(root, "", "device", &c->device, err) ||
        get_str(root, "", "log_level", &c->log_level, err) || get_str(root, "", "port_file", &c->port_file, err) ||
        get_str(root, "", "clip_scorer", &c->clip_scorer, err) || get_str(root, "", "vae_upcast", &c->vae_upcast, err))
        goto out;
    if (c->clip_scorer && c->clip_scorer[0] != '/') {
        char *abs = resolve(base, c->clip_scorer);
        free(c->clip_scorer);
        c->clip_scorer = abs;
    }
    if (!c->data_dir || !c->device || !c->log_level) {
        loco_err_set(err, LOCO_EINVAL, "config: data_dir, device and log_level cannot be null");
        goto out;
    }
    if (c->data_dir[0] != '/') {
        char *abs = resolve(base, c->data_dir);
        free(c->data_dir);
        c->data_dir = abs;
    }
    if (c->port_file && c->port_file[0] != '/') {
        char *abs = resolve(base, c->port_file);
        free(c->port_file);
        c->port_file = abs;
    }
    if (strcmp(c->device, "auto") && strcmp(c->device, "cpu") && strcmp(c->device, "cuda")) {
        loco_err_set(err, LOCO_EINVAL, "config: 'device' must be \"auto\", \"cpu\" or \"cuda\"");
        goto out;
    }
    if (!c->vae_upcast || (strcmp(c->vae_upcast, "f32") && strcmp(c->vae_upcast, "bf16"))) {
        loco_err_set(err, LOCO_EINVAL, "config: 'vae_upcast' must be \"f32\" (as diffusers) or \"bf16\"");
        goto out;
    }
    {
        int64_t t = c->threads;
        if (get_int(root, "", "threads", 0, 1024, &t, err)) goto out;
        c->threads = (int)t;
    }
    if (get_str_list(root, "model_roots", &c->model_roots, &c->n_model_roots, base, err) ||
        get_str_list(root, "load_at_start", &c->load_at_start, &c->n_load_at_start, NULL, err) ||
        get_str_list(root, "cors_origins", &c->cors_origins, &c->n_cors_origins, NULL, err))
        goto out;
    if ((v = json_object_get(root, "models")) && parse_models(c, v, base, err)) goto out;
    if ((v = json_object_get(root, "keys")) && parse_keys(c, v, err)) goto out;
    if ((v = json_object_get(root, "limits"))) {
        loco_proto_limits *l = &c->limits;
        if (!json_is_object(v) || check_keys(v, "limits", limits, err)) {
            if (!json_is_object(v)) loco_err_set(err, LOCO_EINVAL, "config: 'limits' must be an object");
            goto out;
        }
        int64_t t;
#define LIM(key, lo, hi, field) \
        t = field; if (get_int(v, "limits", key, lo, hi, &t, err)) goto out; field = t;
        LIM("max_body_bytes", 1024, 1LL << 30, c->max_body_bytes)
        LIM("max_prompt_chars", 1, 1 << 20, l->max_prompt_chars)
        LIM("max_side", 8, 16384, l->max_side)
        LIM("max_pixels", 64, 1LL << 34, l->max_pixels)
        LIM("max_steps", 1, 10000, l->max_steps)
        LIM("default_steps", 1, 10000, l->default_steps)
        LIM("max_batch", 1, 1024, l->max_batch)
        LIM("max_prompts", 1, 100000, l->max_prompts)
        LIM("max_items", 1, 1000000, l->max_items)
        LIM("max_connections", 4, 100000, c->max_connections)
        LIM("max_sse_streams", 0, 100000, c->max_sse_streams)
        LIM("max_connections_per_ip", 0, 100000, c->max_connections_per_ip)
#undef LIM
        c->sse_streams_explicit = json_object_get(v, "max_sse_streams") != NULL;
        c->per_ip_explicit = json_object_get(v, "max_connections_per_ip") != NULL;
        if (sse_streams_within_connections(c, err) || per_ip_within_connections(c, err)) goto out;
    }
    if ((v = json_object_get(root, "queue"))) {
        if (!json_is_object(v) || check_keys(v, "queue", queue, err)) {
            if (!json_is_object(v)) loco_err_set(err, LOCO_EINVAL, "config: 'queue' must be an object");
            goto out;
        }
        int64_t a = c->max_queue, b = c->max_pending_per_key, r = c->retry_after_s;
        if (get_int(v, "queue", "max_queued", 1, 10000000, &a, err) ||
            get_int(v, "queue", "max_pending_per_key", 1, 10000000, &b, err) ||
            get_int(v, "queue", "retry_after_s", 1, 86400, &r, err))
            goto out;
        c->max_queue = (int)a;
        c->max_pending_per_key = (int)b;
        c->retry_after_s = (int)r;
    }
    if ((v = json_object_get(root, "retention"))) {
        if (!json_is_object(v) || check_keys(v, "retention", retention, err)) {
            if (!json_is_object(v)) loco_err_set(err, LOCO_EINVAL, "config: 'retention' must be an object");
            goto out;
        }
        int64_t s = c->retention_sweep_s;
        if (get_int(v, "retention", "jobs_s", 1, 100LL * 365 * 86400, &c->job_retention_s, err) ||
            get_int(v, "retention", "sweep_interval_s", 1, 86400, &s, err) ||
            get_int(v, "retention", "tombstones_s", 1, 100LL * 365 * 86400, &c->tombstone_retention_s, err))
            goto out;
        c->retention_sweep_s = (int)s;
    }
    if ((v = json_object_get(root, "worker"))) {
        if (!json_is_object(v) || check_keys(v, "worker", worker, err)) {
            if (!json_is_object(v)) loco_err_set(err, LOCO_EINVAL, "config: 'worker' must be an object");
            goto out;
        }
        int64_t a = c->worker_restart_backoff_ms, b = c->cancel_grace_ms, t = c->job_timeout_s;
        if (get_int(v, "worker", "restart_backoff_ms", 0, 600000, &a, err) ||
            get_int(v, "worker", "cancel_grace_ms", 100, 3600000, &b, err) ||
            get_int(v, "worker", "job_timeout_s", 0, 30 * 86400, &t, err))
            goto out;
        c->worker_restart_backoff_ms = (int)a;
        c->cancel_grace_ms = (int)b;
        c->job_timeout_s = (int)t;
    }
    if ((v = json_object_get(root, "sse"))) {
        if (!json_is_object(v) || check_keys(v, "sse", sse, err)) {
            if (!json_is_object(v)) loco_err_set(err, LOCO_EINVAL, "config: 'sse' must be an object");
            goto out;
        }
        int64_t k = c->sse_keepalive_ms;
        if (get_int(v, "sse", "keepalive_ms", 100, 3600000, &k, err)) goto out;
        c->sse_keepalive_ms = (int)k;
    }
    for (int i = 0; i < c->n_load_at_start; i++)
        if (!loco_name_valid(c->load_at_start[i])) {
            loco_err_set(err, LOCO_EINVAL, "config: load_at_start: '%s' is not a model name", c->load_at_start[i]);
            goto out;
        }
    if (c->limits.default_steps > c->limits.max_steps) c->limits.default_steps = c->limits.max_steps;
    st = LOCO_OK;
out:
    json_decref(root);
    return st;
}

loco_status locod_config_load(locod_config *c, const char *path, loco_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return loco_err_set(err, LOCO_EIO, "config: cannot open %s", path);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                free(buf);
                fclose(f);
                return loco_err_set(err, LOCO_EFORMAT, "config: %s is larger than 16 MiB", path);
            }
            buf = realloc(buf, cap);
        }
        size_t r = fread(buf + len, 1, 4096, f);
        len += r;
        if (r < 4096) break;
    }
    fclose(f);
    buf[len] = 0;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    loco_status st = locod_config_parse(c, buf, dir, err);
    if (st) loco_err_prefix(err, "%s", path);
    free(buf);
    return st;
}
