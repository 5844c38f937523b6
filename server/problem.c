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

/* Client bytes echoed in a message (ids, names, URLs) may be invalid UTF-8 or cut in the middle
 * of a character; JSON needs valid UTF-8, so every invalid byte becomes '?'. */
static void utf8_sanitize(char *s) {
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 0;
        int ok = n > 0 && !(n == 2 && *p < 0xC2) && !(n == 4 && *p > 0xF4);
        for (int i = 1; ok && i < n; i++) ok = (p[i] & 0xC0) == 0x80;
        if (ok && n == 3) ok = !(p[0] == 0xE0 && p[1] < 0xA0) && !(p[0] == 0xED && p[1] >= 0xA0);
        if (ok && n == 4) ok = !(p[0] == 0xF0 && p[1] < 0x90) && !(p[0] == 0xF4 && p[1] >= 0x90);
        if (!ok) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

enum MHD_Result locod_problem(locod_req *r, int status, const char *code, const char *pointer,
                              const char *const *headers, const char *fmt, ...) {
    char detail[1536], instance[512], ptr[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    utf8_sanitize(detail);
    snprintf(instance, sizeof instance, "%s", r->url ? r->url : "");
    utf8_sanitize(instance);
    snprintf(ptr, sizeof ptr, "%s", pointer ? pointer : "");
    utf8_sanitize(ptr);
    char type[96];
    snprintf(type, sizeof type, "/problems/%s", code);
    json_t *p = json_pack("{s:s, s:s, s:i, s:s, s:s, s:s}", "type", type, "title", title_for(status), "status", status,
                          "detail", detail, "code", code, "instance", instance);
    if (!p) p = json_pack("{s:s, s:s, s:i, s:s, s:s}", "type", type, "title", title_for(status), "status", status,
                          "detail", "the request could not be processed", "code", code);
    if (ptr[0]) json_object_set_new(p, "errors", json_pack("[{s:s, s:s}]", "pointer", ptr, "detail", detail));
    locod_metrics_problem(r->srv->metrics, code);
    char *s = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    enum MHD_Result res = locod_reply(r, status, "application/problem+json", s, s ? strlen(s) : 0, headers);
    free(s);
    return res;
}
