/* cli_util.c: argument parsing and error printing shared by the subcommands. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* strtoull/strtol/strtod skip leading white space and strtoull takes a minus sign (" -1" is
 * 2^64 - 1): a number must start right away, and an unsigned one with a digit. */
static int starts_number(const char *s) { return s && *s && !isspace((unsigned char)*s); }

int loco_cli_finish_stdout(const char *cmd) {
    /* stdio buffers: a full disk or closed pipe shows up at the flush, after every printf
     * "succeeded"; ferror keeps what an earlier flush of the buffer met */
    int bad = fflush(stdout) != 0;
    int e = errno;
    if (ferror(stdout)) bad = 1;
    if (!bad) return 0;
    fprintf(stderr, "loco %s: cannot write to standard output: %s\n", cmd, strerror(e ? e : EIO));
    return 1;
}

int loco_cli_getopt_error(const char *cmd, int c, char **argv) {
    /* getopt_long has advanced optind past the offending word for long options and for the last
     * option of a cluster; a short option inside a cluster is named by optopt */
    const char *word = optind > 0 ? argv[optind - 1] : NULL;
    char shortname[3] = {'-', (char)optopt, 0};
    const char *name = word && strncmp(word, "--", 2) == 0 ? word : optopt > 0 && optopt < 128 ? shortname : word;
    if (!name) name = "?";
    const int len = (int)strcspn(name, "="); /* "--frob=1": the option is "--frob" */
    if (c == ':') return loco_cli_usage_error(cmd, "option '%.*s' needs a value", len, name);
    return loco_cli_usage_error(cmd, "unknown option '%.*s'", len, name);
}

/* mkdir -p: every missing folder on the way, as a user giving "--out runs/today/a" expects. */
static int make_dirs(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0777) != 0 && errno != EEXIST ? -1 : 0;
}

loco_status loco_cli_out_dir(const char *opt, const char *dir, loco_err *err) {
    if (!dir || !*dir) return loco_err_set(err, LOCO_EINVAL, "%s: no folder given", opt);
    if (make_dirs(dir) != 0)
        return loco_err_set(err, LOCO_EIO, "%s %s: cannot create the folder: %s", opt, dir, strerror(errno));
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return loco_err_set(err, LOCO_EIO, "%s %s: cannot use the folder: %s", opt, dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return loco_err_set(err, LOCO_EINVAL, "%s %s exists and is not a folder; give a folder (created if missing)",
                            opt, dir);
    if (access(dir, W_OK | X_OK) != 0)
        return loco_err_set(err, LOCO_EIO, "%s %s: cannot write into the folder: %s", opt, dir, strerror(errno));
    return LOCO_OK;
}

loco_status loco_cli_out_file(const char *opt, const char *path, loco_err *err) {
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return loco_err_set(err, LOCO_EINVAL, "%s %s is a folder; give a file name to write", opt, path);
        return LOCO_OK; /* a file (replaced), a device or a FIFO (written in place) */
    }
    char *copy = strdup(path);
    if (!copy) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    const char *parent = dirname(copy);
    loco_status st = LOCO_OK;
    if (stat(parent, &sb) != 0)
        st = loco_err_set(err, LOCO_EIO, "%s %s: cannot write there: the folder %s: %s", opt, path, parent,
                          strerror(errno));
    else if (!S_ISDIR(sb.st_mode))
        st = loco_err_set(err, LOCO_EIO, "%s %s: cannot write there: %s is not a folder", opt, path, parent);
    free(copy);
    return st;
}

int loco_cli_parse_u64(const char *s, uint64_t *out) {
    if (!s || !isdigit((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

int loco_cli_parse_int(const char *s, long lo, long hi, long *out) {
    if (!starts_number(s)) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int loco_cli_parse_float(const char *s, double lo, double hi, double *out) {
    if (!starts_number(s)) return -1;
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
        if (!isdigit((unsigned char)*p)) return -1; /* no white space or sign before a dimension */
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
