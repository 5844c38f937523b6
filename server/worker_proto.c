/* worker_proto.c: JSON-lines framing for the worker pipe (see worker_proto.h). */
#include "worker_proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void locod_linebuf_free(locod_linebuf *b) {
    free(b->buf);
    memset(b, 0, sizeof *b);
}

int locod_linebuf_append(locod_linebuf *b, const char *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        if (cap > (64u << 20)) return -1;
        char *nb = realloc(b->buf, cap);
        if (!nb) return -1;
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, data, n);
    b->len += n;
    return 0;
}

json_t *locod_linebuf_next(locod_linebuf *b, int *bad) {
    *bad = 0;
    char *nl = b->len ? memchr(b->buf, '\n', b->len) : NULL;
    if (!nl) return NULL;
    size_t ll = (size_t)(nl - b->buf);
    json_t *j = json_loadb(b->buf, ll, 0, NULL);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        j = NULL;
        *bad = 1;
    }
    memmove(b->buf, nl + 1, b->len - ll - 1);
    b->len -= ll + 1;
    return j;
}

int locod_send_json(int fd, const json_t *msg) {
    char *s = json_dumps(msg, JSON_COMPACT);
    if (!s) return -1;
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps leaves room for the NUL we overwrite; add it back below */
    const char *p = s;
    size_t left = n + 1;
    int rc = 0;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            rc = -1;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    free(s);
    return rc;
}
