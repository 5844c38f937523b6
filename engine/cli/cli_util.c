/* cli_util.c: argument parsing and error printing shared by the subcommands. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int loco_cli_fail(const char *cmd, const loco_err *err) {
    fprintf(stderr, "loco %s: %s\n", cmd, err && err->msg[0] ? err->msg : "failed");
    return 1;
}

int loco_cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loco %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see loco %s --help)\n", cmd);
    va_end(ap);
    return 2;
}

int loco_cli_parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-' || *s == '+') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

int loco_cli_parse_int(const char *s, long lo, long hi, long *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int loco_cli_parse_float(const char *s, double lo, double hi, double *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int loco_cli_parse_shape(const char *s, int64_t *dims, int max_dims) {
    int n = 0;
    const char *p = s;
    if (!s || !*s) return -1;
    while (*p) {
        if (n == max_dims) return -1;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p || v <= 0 || v > (1LL << 31)) return -1;
        dims[n++] = v;
        if (*end == ',') {
            p = end + 1;
            if (!*p) return -1;
        } else if (*end == 0) {
            p = end;
        } else {
            return -1;
        }
    }
    return n;
}

int loco_cli_parse_vae_upcast(const char *s, loco_dtype *out) {
    if (!strcmp(s, "f32")) *out = LOCO_F32;
    else if (!strcmp(s, "bf16")) *out = LOCO_BF16;
    else return -1;
    return 0;
}
