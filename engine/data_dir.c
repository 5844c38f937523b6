/* data_dir.c: locate the bundled data directory (see data_dir.h for the search order). */
#include "data_dir.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static loco_status found(const char *p, char *buf, size_t n, loco_err *err) {
    if (strlen(p) >= n) return loco_err_set(err, LOCO_EINVAL, "data directory path too long: %s", p);
    snprintf(buf, n, "%s", p);
    return LOCO_OK;
}

loco_status loco_data_dir(char *buf, size_t n, loco_err *err) {
    const char *env = getenv("LOCO_DATA_DIR");
    if (env && *env) {
        if (!is_dir(env)) return loco_err_set(err, LOCO_ENOTFOUND, "LOCO_DATA_DIR=%s is not a directory", env);
        return found(env, buf, n, err);
    }
    char exe[PATH_MAX], cand[PATH_MAX + 32];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(cand, sizeof cand, "%s/../config", exe);
            if (is_dir(cand)) return found(cand, buf, n, err);
            snprintf(cand, sizeof cand, "%s/../../config", exe);
            if (is_dir(cand)) return found(cand, buf, n, err);
        }
    }
#ifdef LOCO_SOURCE_DIR
    if (is_dir(LOCO_SOURCE_DIR "/config")) return found(LOCO_SOURCE_DIR "/config", buf, n, err);
#endif
    if (is_dir("config")) return found("config", buf, n, err);
    return loco_err_set(err, LOCO_ENOTFOUND,
                        "cannot find loco's data directory (tried $LOCO_DATA_DIR, <exe dir>/../config, "
                        "<exe dir>/../../config, ./config); set LOCO_DATA_DIR to the repository's config/ folder");
}

loco_status loco_data_path(const char *rel, char *buf, size_t n, loco_err *err) {
    char dir[PATH_MAX];
    loco_status st = loco_data_dir(dir, sizeof dir, err);
    if (st != LOCO_OK) return st;
    int r = snprintf(buf, n, "%s/%s", dir, rel);
    if (r < 0 || (size_t)r >= n) return loco_err_set(err, LOCO_EINVAL, "data path too long: %s/%s", dir, rel);
    struct stat sb;
    if (stat(buf, &sb) != 0) return loco_err_set(err, LOCO_ENOTFOUND, "%s: missing from loco's data directory", buf);
    return LOCO_OK;
}
