/* http.h: one HTTP request as the route handlers see it, and the reply helpers. http.c owns
 * the libmicrohttpd daemon (a thread per connection), reads bodies up to the configured cap,
 * authenticates, applies CORS and hands complete requests to the router. Every error answer is
 * application/problem+json (problem.c). */
#ifndef LOCOD_HTTP_H
#define LOCOD_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "server_impl.h"

typedef struct locod_req {
    locod_server *srv;
    struct MHD_Connection *conn;
    const char *method;
    const char *url;
    char *body;
    size_t body_len, body_cap;
    int too_large;
    const locod_key *key; /* NULL in open (no keys) mode */
    const char *key_id;   /* key id, or "anonymous" */
    int admin;
    const char *origin;   /* Origin header, or NULL */
    int cors_allowed;     /* origin is one of cors_origins */
    int status;           /* what was answered (metrics, log) */
    int64_t t0_ms;
} locod_req;

const char *locod_req_header(locod_req *r, const char *name);
const char *locod_req_arg(locod_req *r, const char *name);

/* Queue a response; `headers` are name/value pairs, NULL-terminated (may be NULL). The body
 * is copied. */
enum MHD_Result locod_reply(locod_req *r, int status, const char *content_type, const void *body, size_t len,
                            const char *const *headers);
/* JSON body (reference stolen). */
enum MHD_Result locod_reply_json(locod_req *r, int status, json_t *j, const char *const *headers);
/* Add the CORS and common headers to a response built elsewhere (artifacts, event streams). */
void locod_add_common_headers(locod_req *r, struct MHD_Response *resp);
enum MHD_Result locod_send(locod_req *r, int status, struct MHD_Response *resp);

/* RFC 9457 problem: type "/problems/<code>", title, status, detail (printf), code, instance;
 * pointer (JSON pointer into the request body) adds an "errors" entry when not NULL/empty. */
enum MHD_Result locod_problem(locod_req *r, int status, const char *code, const char *pointer,
                              const char *const *headers, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Routing (router.c) and the route families. */
enum MHD_Result locod_route(locod_req *r);
enum MHD_Result locod_route_ops(locod_req *r, const char *what);
enum MHD_Result locod_routes_models(locod_req *r, int nseg, char **seg);
enum MHD_Result locod_routes_jobs(locod_req *r, int nseg, char **seg);
enum MHD_Result locod_routes_artifacts(locod_req *r, int nseg, char **seg);
enum MHD_Result locod_sse_start(locod_req *r, const char *job_id);

/* Job JSON with live fields (queue position, progress); under the server lock. */
json_t *locod_job_json(locod_server *srv, const locod_job_row *row);
/* May this request see the job (own key, or admin)? */
int locod_req_may_see(locod_req *r, const char *key_id);

#endif
