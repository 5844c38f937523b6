/* http.c: libmicrohttpd glue (see http.h). A thread per connection: simple, and an event
 * stream may block its own thread waiting for news without busy-waiting the others. */
#include "http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "auth.h"

const char *locod_req_header(locod_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *locod_req_arg(locod_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

void locod_add_common_headers(locod_req *r, struct MHD_Response *resp) {
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (r->origin) MHD_add_response_header(resp, "Vary", "Origin");
    if (r->cors_allowed) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "Location, ETag, Retry-After, Content-Range, Accept-Ranges, Idempotent-Replayed");
    }
}

enum MHD_Result locod_send(locod_req *r, int status, struct MHD_Response *resp) {
    locod_add_common_headers(r, resp);
    r->status = status;
    locod_metrics_http(r->srv->metrics, status);
    enum MHD_Result res = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return res;
}

enum MHD_Result locod_reply(locod_req *r, int status, const char *ct, const void *body, size_t len,
                            const char *const *headers) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    if (ct) MHD_add_response_header(resp, "Content-Type", ct);
    if (status >= 200 && strncmp(r->url, "/v1/artifacts/", 14) != 0) MHD_add_response_header(resp, "Cache-Control", "no-store");
    for (int i = 0; headers && headers[i]; i += 2) MHD_add_response_header(resp, headers[i], headers[i + 1]);
    return locod_send(r, status, resp);
}

enum MHD_Result locod_reply_json(locod_req *r, int status, json_t *j, const char *const *headers) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return locod_problem(r, 500, "internal_error", NULL, NULL, "cannot encode the answer");
    size_t n = strlen(s);
    enum MHD_Result res = locod_reply(r, status, "application/json", s, n, headers);
    free(s);
    return res;
}

static int origin_allowed(const locod_config *cfg, const char *origin) {
    for (int i = 0; origin && i < cfg->n_cors_origins; i++)
        if (strcmp(cfg->cors_origins[i], "*") == 0 || strcmp(cfg->cors_origins[i], origin) == 0) return 1;
    return 0;
}

static enum MHD_Result preflight(locod_req *r) {
    if (!r->cors_allowed)
        return locod_problem(r, 403, "cors_origin_not_allowed", NULL, NULL,
                             "origin '%s' is not in this server's cors_origins; add it to the config to let a "
                             "dashboard there call the API",
                             r->origin ? r->origin : "(none)");
    static const char *const h[] = {"Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS",
                                    "Access-Control-Allow-Headers",
                                    "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, Range, If-None-Match, If-Range",
                                    "Access-Control-Max-Age", "600", NULL};
    return locod_reply(r, 204, NULL, "", 0, h);
}

/* GET of a job's event stream or of an artifact: the two things browsers open by URL. */
static int query_token_allowed(const locod_req *r) {
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0) return 0;
    if (strncmp(r->url, "/v1/artifacts/", 14) == 0) return 1;
    size_t n = strlen(r->url);
    return strncmp(r->url, "/v1/jobs/", 9) == 0 && n > 16 && strcmp(r->url + n - 7, "/events") == 0;
}

static int is_api(const locod_req *r) { return strncmp(r->url, "/v1/", 4) == 0 || strcmp(r->url, "/v1") == 0; }

/* The request's key: its Authorization header, or where allowed its ?access_token=. */
static locod_auth_result auth_of(locod_req *r, const locod_key **key) {
    char from_query[600];
    const char *authz = locod_req_header(r, "Authorization");
    if (!authz && query_token_allowed(r)) {
        /* what a browser loads by URL (EventSource, <img>) cannot carry a header: the key may
         * come as ?access_token= there. MHD hands handlers the path without the query, so the
         * key never reaches the request log. */
        const char *tok = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "access_token");
        if (tok && strlen(tok) < sizeof from_query - 8) {
            snprintf(from_query, sizeof from_query, "Bearer %s", tok);
            authz = from_query;
        }
    }
    return locod_auth_check(r->srv->cfg, authz, key);
}

/* The auth and CORS gate in front of the router. */
static enum MHD_Result handle(locod_req *r) {
    locod_server *srv = r->srv;
    const locod_config *cfg = srv->cfg;
    r->origin = locod_req_header(r, "Origin");
    r->cors_allowed = origin_allowed(cfg, r->origin);
    if (strcmp(r->method, "OPTIONS") == 0 && r->origin && locod_req_header(r, "Access-Control-Request-Method"))
        return preflight(r);
    if (r->too_large)
        return locod_problem(r, 413, "body_too_large", NULL, NULL,
                             "the request body is larger than this server's limit of %lld bytes (limits.max_body_bytes)",
                             (long long)cfg->max_body_bytes);
    /* An empty path segment ("//", a trailing '/') would let the auth test below and the router
     * (which skips empty segments) disagree about the path ("//v1/jobs"): no such paths exist. */
    size_t ulen = strlen(r->url);
    if (r->url[0] != '/' || strstr(r->url, "//") || (ulen > 1 && r->url[ulen - 1] == '/'))
        return locod_problem(r, 404, "not_found", NULL, NULL,
                             "no such resource: paths have no empty segments ('//' or a trailing '/')");
    if (is_api(r)) {
        /* Browsers: a page from an origin not in cors_origins must not drive the API (a
         * loopback daemon without keys would otherwise be open to any web page). */
        if (r->origin && !r->cors_allowed && strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0)
            return locod_problem(r, 403, "cors_origin_not_allowed", NULL, NULL,
                                 "requests from origin '%s' are not allowed; add it to cors_origins in the config",
                                 r->origin);
        const locod_key *key = NULL;
        locod_auth_result ar = auth_of(r, &key);
        static const char *const www[] = {"WWW-Authenticate", "Bearer realm=\"locod\"", NULL};
        switch (ar) {
        case LOCOD_AUTH_OK: break;
        case LOCOD_AUTH_MISSING:
            return locod_problem(r, 401, "missing_api_key", NULL, www,
                                 "this server requires an API key: send 'Authorization: Bearer <key>'");
        case LOCOD_AUTH_MALFORMED:
            return locod_problem(r, 401, "malformed_authorization", NULL, www,
                                 "the Authorization header must be 'Bearer <key>'");
        default:
            return locod_problem(r, 401, "invalid_api_key", NULL, www,
                                 "the API key is not valid for this server; ask its operator for a key");
        }
        r->key = key;
        r->key_id = key ? key->id : "anonymous";
        r->admin = key ? key->admin : 1;
    }
    return locod_route(r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    locod_server *srv = cls;
    locod_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->srv = srv;
        r->conn = conn;
        r->method = method;
        r->url = url;
        r->t0_ms = locod_now_ms();
        *con_cls = r;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoll(cl, NULL, 10) > srv->cfg->max_body_bytes) r->too_large = 1;
        /* answered now, before any of the body is read: a client that sent 'Expect: 100-continue'
         * gets the 413 instead of a 100 and never uploads the body */
        if (r->too_large) return handle(r);
        /* nor is the body of a request without a valid key read: only keys may make the server
         * buffer anything */
        const locod_key *key = NULL;
        if (is_api(r) && auth_of(r, &key) != LOCOD_AUTH_OK) return handle(r);
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!r->too_large) {
            if (r->body_len + *upload_data_size > (size_t)srv->cfg->max_body_bytes) {
                r->too_large = 1;
            } else {
                if (r->body_len + *upload_data_size + 1 > r->body_cap) {
                    size_t cap = r->body_cap ? r->body_cap : 4096;
                    while (cap < r->body_len + *upload_data_size + 1) cap *= 2;
                    char *nb = realloc(r->body, cap);
                    if (!nb) return MHD_NO;
                    r->body = nb;
                    r->body_cap = cap;
                }
                memcpy(r->body + r->body_len, upload_data, *upload_data_size);
                r->body_len += *upload_data_size;
                r->body[r->body_len] = 0;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    return handle(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode t) {
    locod_server *srv = cls;
    locod_req *r = *con_cls;
    if (!r) return;
    if (r->status)
        LOG_DEBUG(srv->log, "%s %s -> %d (%lld ms, key %s)", r->method, r->url, r->status,
                  (long long)(locod_now_ms() - r->t0_ms), r->key_id ? r->key_id : "-");
    free(r->body);
    free(r);
    *con_cls = NULL;
}

/* A flood of refused or waiting clients must not flood the log: one warning per kind per minute,
 * with the running total (also in /metrics). */
#define LIMIT_WARN_EVERY_MS 60000

static int warn_due(_Atomic int64_t *last_ms) {
    int64_t now = locod_now_ms(), prev = atomic_load(last_ms);
    return now - prev >= LIMIT_WARN_EVERY_MS && atomic_compare_exchange_strong(last_ms, &prev, now);
}

/* libmicrohttpd 0.9.75 closes a connection over MHD_OPTION_PER_IP_CONNECTION_LIMIT (or, in a
 * race, over the total limit) as soon as it is accepted, and tells the application only through
 * this log line: the accept policy callback runs after that check, and no notification comes. */
static int is_limit_refusal(const char *msg) { return strncmp(msg, "Server reached connection limit", 31) == 0; }

static void note_refusal(locod_server *srv) {
    uint64_t n = locod_metrics_connection_refused(srv->metrics);
    if (warn_due(&srv->refused_warned_ms))
        LOG_WARN(srv->log, "refused a new connection unanswered (%llu so far, loco_http_connections_refused_total): "
                 "its client address already holds limits.max_connections_per_ip (%d) connections, or all %d "
                 "(limits.max_connections) are in use",
                 (unsigned long long)n, srv->cfg->max_connections_per_ip, srv->cfg->max_connections);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    locod_server *srv = cls;
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = 0;
    if (is_limit_refusal(buf)) {
        note_refusal(srv);
        return;
    }
    /* accept() failing with EMFILE/ENFILE: MHD stops accepting until a connection closes */
    if (strstr(buf, "resource limit")) {
        LOG_WARN(srv->log, "http: %s", buf);
        return;
    }
    LOG_DEBUG(srv->log, "http: %s", buf);
}

/* The connection just accepted took the last free one: from now on new clients wait in the
 * listen backlog, unanswered, until one closes. Said, because from outside it looks like a hang. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    (void)socket_context;
    (void)conn;
    locod_server *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub(&srv->http_connections, 1);
        return;
    }
    if (code != MHD_CONNECTION_NOTIFY_STARTED) return;
    if (atomic_fetch_add(&srv->http_connections, 1) + 1 < srv->cfg->max_connections) return;
    uint64_t n = locod_metrics_connections_full(srv->metrics);
    if (warn_due(&srv->full_warned_ms))
        LOG_WARN(srv->log, "all %d connections (limits.max_connections) are in use (%llu times so far, "
                 "loco_http_connections_full_total): new clients wait unanswered until one closes",
                 srv->cfg->max_connections, (unsigned long long)n);
}

loco_status locod_http_start(locod_server *srv, loco_err *err) {
    const locod_config *cfg = srv->cfg;
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->listen_port);
    const char *host = srv->open_mode && !locod_host_is_loopback(cfg->listen_host) ? "127.0.0.1" : cfg->listen_host;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc) return loco_err_set(err, LOCO_EINVAL, "listen address %s:%s: %s", host, port, gai_strerror(rc));
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    srv->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv,
                                MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv,
                                MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                                MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->max_connections_per_ip,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                                MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                                MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!srv->mhd)
        return loco_err_set(err, LOCO_EIO, "cannot listen on %s:%d (address in use, or not an address of this machine)",
                            host, cfg->listen_port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : cfg->listen_port;
    return LOCO_OK;
}

void locod_http_stop(locod_server *srv) {
    if (!srv->mhd) return;
    MHD_stop_daemon(srv->mhd);
    srv->mhd = NULL;
}
