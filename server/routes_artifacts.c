/* routes_artifacts.c: GET/HEAD /v1/artifacts/{sha256}. Only ids of published artifacts (a
 * finished job recorded them) are served, only by their 64-hex name, from the content store;
 * ETag is the hash, If-None-Match gives 304, and a single byte Range gives 206 (416 when it
 * cannot be satisfied; If-Range with another tag gives the whole file). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "artifacts.h"
#include "http.h"

/* Whether s starts with a digit: strtoull alone would also take spaces, '+' and '-' before one. */
static int digit_first(const char *s) { return *s >= '0' && *s <= '9'; }

/* "bytes=a-b" | "bytes=a-" | "bytes=-n", digits only (RFC 9110 14.1.2). 1 ok, 0 ignore (several
 * ranges / not bytes / malformed: the whole file then), -1 unsatisfiable. */
static int parse_range(const char *h, uint64_t size, uint64_t *start, uint64_t *end) {
    if (strncmp(h, "bytes=", 6) != 0) return 0;
    const char *s = h + 6;
    if (strchr(s, ',')) return 0;
    char *e;
    if (*s == '-') {
        if (!digit_first(s + 1)) return 0;
        unsigned long long n = strtoull(s + 1, &e, 10);
        if (e == s + 1 || *e) return 0;
        if (n == 0 || size == 0) return -1;
        *start = n >= size ? 0 : size - n;
        *end = size - 1;
        return 1;
    }
    if (!digit_first(s)) return 0;
    unsigned long long a = strtoull(s, &e, 10);
    if (e == s || *e != '-') return 0;
    const char *bs = e + 1;
    unsigned long long b = size ? size - 1 : 0;
    if (*bs) {
        if (!digit_first(bs)) return 0;
        b = strtoull(bs, &e, 10);
        if (e == bs || *e) return 0;
        if (b < a) return 0;
    }
    if (a >= size) return -1;
    if (b >= size) b = size - 1;
    *start = a;
    *end = b;
    return 1;
}

static int etag_matches(const char *list, const char *etag) {
    if (!list) return 0;
    if (strcmp(list, "*") == 0) return 1;
    return strstr(list, etag) != NULL;
}

/* Whether an artifact the store knows is missing on disk for good, as opposed to failing to open
 * for now (EMFILE/ENFILE: the server is out of descriptors, ENOMEM, EIO, ...): a client told 404
 * would believe a file that exists is gone. ELOOP: a symlink where the file should be (O_NOFOLLOW). */
static int open_error_is_missing(int e) { return e == ENOENT || e == ENOTDIR || e == ELOOP; }

static enum MHD_Result artifact_unavailable(locod_req *r, const char *sha, int e) {
    if (e == EACCES || e == EPERM) { /* the store's permissions: an operator's fix, not a retry's */
        LOG_ERROR(r->srv->log, "cannot open artifact %s: %s (check the owner and mode of the data dir)", sha,
                  strerror(e));
        return locod_problem(r, 500, "internal_error", NULL, NULL,
                             "artifact %s is stored but the server may not read it (%s); this needs the server's "
                             "operator, retrying will not help",
                             sha, strerror(e));
    }
    char ra[16];
    snprintf(ra, sizeof ra, "%d", r->srv->cfg->retry_after_s);
    const char *const h[] = {"Retry-After", ra, NULL};
    LOG_WARN(r->srv->log, "cannot open artifact %s: %s", sha, strerror(e));
    return locod_problem(r, 503, "artifact_unavailable", NULL, h,
                         "artifact %s is stored but cannot be opened right now (%s); this is temporary on the "
                         "server's side: retry after Retry-After seconds",
                         sha, strerror(e));
}

enum MHD_Result locod_routes_artifacts(locod_req *r, int n, char **seg) {
    locod_server *srv = r->srv;
    if (strcmp(r->method, "GET") && strcmp(r->method, "HEAD")) {
        static const char *const allow[] = {"Allow", "GET, HEAD", NULL};
        return locod_problem(r, 405, "method_not_allowed", NULL, allow, "artifacts are read-only: use GET or HEAD");
    }
    if (n != 1)
        return locod_problem(r, 404, "not_found", NULL, NULL, "artifacts are at /v1/artifacts/{sha256}");
    const char *sha = seg[0];
    if (!locod_artifact_id_valid(sha))
        return locod_problem(r, 400, "invalid_artifact_id", NULL, NULL,
                             "artifact ids are the SHA-256 of the content: exactly 64 lowercase hex characters "
                             "(as in a job's artifacts list)");
    uint64_t size = 0;
    char mt[128];
    pthread_mutex_lock(&srv->mu);
    int found = locod_store_artifact(srv->store, sha, &size, mt, sizeof mt);
    pthread_mutex_unlock(&srv->mu);
    if (!found)
        return locod_problem(r, 404, "unknown_artifact", NULL, NULL,
                             "no artifact %s (it never existed, or the jobs that made it expired)", sha);
    char path[PATH_MAX];
    locod_artifact_path(srv->artifacts_root, sha, path, sizeof path);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && !open_error_is_missing(errno)) return artifact_unavailable(r, sha, errno);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st)) {
        int e = errno;
        close(fd);
        return artifact_unavailable(r, sha, e);
    }
    if (fd < 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return locod_problem(r, 404, "unknown_artifact", NULL, NULL, "artifact %s is no longer stored", sha);
    }
    size = (uint64_t)st.st_size;
    char etag[70];
    snprintf(etag, sizeof etag, "\"%s\"", sha);
    if (etag_matches(locod_req_header(r, "If-None-Match"), sha)) {
        close(fd);
        struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(resp, "ETag", etag);
        MHD_add_response_header(resp, "Cache-Control", "public, max-age=31536000, immutable");
        return locod_send(r, 304, resp);
    }
    uint64_t a = 0, b = size ? size - 1 : 0;
    int ranged = 0;
    const char *range = locod_req_header(r, "Range");
    const char *if_range = locod_req_header(r, "If-Range");
    if (range && (!if_range || strcmp(if_range, etag) == 0)) {
        ranged = parse_range(range, size, &a, &b);
        if (ranged < 0) {
            close(fd);
            char cr[64];
            snprintf(cr, sizeof cr, "bytes */%" PRIu64, size);
            const char *const h[] = {"Content-Range", cr, NULL};
            return locod_problem(r, 416, "range_not_satisfiable", NULL, h,
                                 "the range '%.60s' lies outside the artifact's %" PRIu64 " bytes", range, size);
        }
    }
    uint64_t len = ranged ? b - a + 1 : size;
    struct MHD_Response *resp = MHD_create_response_from_fd_at_offset64(len, fd, ranged ? a : 0);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", mt);
    MHD_add_response_header(resp, "ETag", etag);
    MHD_add_response_header(resp, "Accept-Ranges", "bytes");
    MHD_add_response_header(resp, "Cache-Control", "public, max-age=31536000, immutable");
    if (ranged) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, a, b, size);
        MHD_add_response_header(resp, "Content-Range", cr);
    }
    return locod_send(r, ranged ? 206 : 200, resp);
}
