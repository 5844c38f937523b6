/* router.c: method + path -> handler. Paths are split on '/'; only exact segments match, so
 * ".." and other path tricks simply find no route. libmicrohttpd percent-decodes the path before
 * it gets here: "%2F" is a '/' like any other (".../sd1-tiny%2Fvariants" is the variants list) and
 * "%00" ends the path, so neither reaches anything a plain path could not. */
#include <stdio.h>
#include <string.h>

#include "http.h"

#define MAX_SEG 8

static int split(const char *url, char *buf, size_t n, char **seg) {
    snprintf(buf, n, "%s", url);
    int k = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (k == MAX_SEG) return -1;
        seg[k++] = t;
    }
    return k;
}

enum MHD_Result locod_route(locod_req *r) {
    char buf[2048], *seg[MAX_SEG];
    if (strlen(r->url) >= sizeof buf)
        return locod_problem(r, 404, "not_found", NULL, NULL, "no such resource (the path is too long)");
    int n = split(r->url, buf, sizeof buf, seg);
    if (n == 1 && (strcmp(seg[0], "healthz") == 0 || strcmp(seg[0], "readyz") == 0 || strcmp(seg[0], "metrics") == 0)) {
        if (strcmp(r->method, "GET") && strcmp(r->method, "HEAD")) {
            static const char *const allow[] = {"Allow", "GET, HEAD", NULL};
            return locod_problem(r, 405, "method_not_allowed", NULL, allow, "%s supports GET and HEAD only", r->url);
        }
        return locod_route_ops(r, seg[0]);
    }
    if (n >= 1 && strcmp(seg[0], "v1") == 0 && (!r->key_id || (!r->srv->open_mode && !r->key)))
        /* defence in depth: the auth gate in http.c must have passed this request */
        return locod_problem(r, 401, "missing_api_key", NULL, NULL,
                             "this server requires an API key: send 'Authorization: Bearer <key>'");
    if (n >= 2 && strcmp(seg[0], "v1") == 0) {
        if (strcmp(seg[1], "models") == 0) return locod_routes_models(r, n - 2, seg + 2);
        if (strcmp(seg[1], "jobs") == 0) return locod_routes_jobs(r, n - 2, seg + 2);
        if (strcmp(seg[1], "artifacts") == 0) return locod_routes_artifacts(r, n - 2, seg + 2);
    }
    return locod_problem(r, 404, "not_found", NULL, NULL,
                         "no such resource: %s (see openapi.yaml for the routes: /v1/jobs, /v1/models, /v1/artifacts, "
                         "/healthz, /readyz, /metrics)",
                         r->url);
}
