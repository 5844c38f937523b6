/* problem.c: application/problem+json answers (RFC 9457). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "http.h"

static const char *title_for(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

enum MHD_Result locod_problem(locod_req *r, int status, const char *code, const char *pointer,
                              const char *const *headers, const char *fmt, ...) {
    char detail[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    char type[96];
    snprintf(type, sizeof type, "/problems/%s", code);
    json_t *p = json_pack("{s:s, s:s, s:i, s:s, s:s, s:s}", "type", type, "title", title_for(status), "status", status,
                          "detail", detail, "code", code, "instance", r->url ? r->url : "");
    if (pointer && *pointer)
        json_object_set_new(p, "errors", json_pack("[{s:s, s:s}]", "pointer", pointer, "detail", detail));
    locod_metrics_problem(r->srv->metrics, code);
    char *s = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    enum MHD_Result res = locod_reply(r, status, "application/problem+json", s, s ? strlen(s) : 0, headers);
    free(s);
    return res;
}
