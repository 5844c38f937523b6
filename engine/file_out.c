/* file_out.c: output files (temporary + rename for regular files, in place for devices and FIFOs)
 * and folder relations. See file_out.h. */
#include "file_out.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void out_free(loco_out_file *f) {
    free(f->path);
    free(f->tmp);
    f->path = f->tmp = NULL;
    f->fd = -1;
}

void loco_out_file_abort(loco_out_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    out_free(f);
}

/* Open an existing special file in place. *reg is set when it turned out to be a regular file
 * after all (replaced between the stat and the open): the caller then takes the rename path, as
 * writing without O_TRUNC would leave the old file's tail behind. */
static loco_status open_direct(loco_out_file *f, int trunc, int *reg, loco_err *err) {
    *reg = 0;
    /* no O_CREAT (it exists) and no O_TRUNC (meaningless for devices and FIFOs) unless asked; a
     * FIFO's open waits for its reader, as it does for every other writer */
    int fd = open(f->path, O_WRONLY | O_CLOEXEC | O_NOCTTY | (trunc ? O_TRUNC : 0));
    if (fd < 0) return loco_err_set(err, LOCO_EIO, "%s: cannot open for writing: %s", f->path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return loco_err_set(err, LOCO_EIO, "%s: cannot stat: %s", f->path, strerror(e));
    }
    if (S_ISREG(sb.st_mode) && !trunc) {
        close(fd);
        *reg = 1;
        return LOCO_OK;
    }
    f->fd = fd;
    f->direct = 1;
    return LOCO_OK;
}

loco_status loco_out_file_open(loco_out_file *f, const char *path, loco_err *err) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (!path || !*path) return loco_err_set(err, LOCO_EINVAL, "no output path given");
    struct stat sb, lsb;
    const int exists = stat(path, &sb) == 0;
    /* A symlink to a regular file is written through: the file it names is replaced, not the
     * link (`--output /dev/stdout` with stdout redirected to a file must not replace /dev/stdout).
     * When the name it resolves to is gone (a /proc/self/fd link to a deleted file), the file is
     * truncated and written in place through the link. */
    char *real = NULL;
    const int link_to_reg = exists && S_ISREG(sb.st_mode) && lstat(path, &lsb) == 0 && S_ISLNK(lsb.st_mode);
    if (link_to_reg && !(real = realpath(path, NULL)) && errno == ENOMEM)
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", path);
    f->path = real ? real : strdup(path);
    if (!f->path) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", path);
    path = f->path;
    if (link_to_reg && !real) {
        int reg;
        loco_status st = open_direct(f, 1, &reg, err);
        if (st) out_free(f);
        return st;
    }
    if (exists && !S_ISREG(sb.st_mode)) {
        loco_status st = LOCO_OK;
        int reg = 0;
        if (S_ISDIR(sb.st_mode))
            st = loco_err_set(err, LOCO_EINVAL, "%s: is a folder; give a file name to write", path);
        else if (S_ISSOCK(sb.st_mode))
            st = loco_err_set(err, LOCO_EINVAL, "%s: is a socket; give a file, a device or a FIFO to write", path);
        else
            st = open_direct(f, 0, &reg, err);
        if (st || !reg) {
            if (st) out_free(f);
            return st;
        }
    }
    /* a unique name next to the target, so the rename stays on one filesystem */
    const size_t plen = strlen(path);
    if (!(f->tmp = malloc(plen + 16))) {
        loco_status st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", path);
        out_free(f);
        return st;
    }
    memcpy(f->tmp, path, plen);
    memcpy(f->tmp + plen, ".tmp.XXXXXX", 12);
    f->fd = mkostemp(f->tmp, O_CLOEXEC);
    if (f->fd < 0) {
        loco_status st = loco_err_set(err, LOCO_EIO, "%s: cannot create a file there: %s", path, strerror(errno));
        free(f->tmp);
        f->tmp = NULL;
        out_free(f);
        return st;
    }
    /* mkstemp makes 0600; outputs are shareable artefacts. (Reading the umask would mean changing
     * it, which races with other threads creating files.) A filesystem without modes (vfat)
     * refuses, which is no reason to fail the write. */
    (void)fchmod(f->fd, 0644);
    return LOCO_OK;
}

loco_status loco_out_file_write(loco_out_file *f, const void *buf, size_t len, loco_err *err) {
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(f->fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return loco_err_set(err, LOCO_EIO, "%s: write failed: %s", f->path, strerror(errno));
        p += w;
        len -= (size_t)w;
    }
    return LOCO_OK;
}

static void sync_parent(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd); /* makes the rename durable; best effort (not every filesystem can) */
        close(dfd);
    }
    free(copy);
}

loco_status loco_out_file_commit(loco_out_file *f, loco_err *err) {
    loco_status st = LOCO_OK;
    if (f->direct) {
        /* no fsync: devices and FIFOs answer EINVAL, and there is nothing to make durable */
        if (close(f->fd) != 0) st = loco_err_set(err, LOCO_EIO, "%s: close failed: %s", f->path, strerror(errno));
        f->fd = -1;
        out_free(f);
        return st;
    }
    if (fsync(f->fd) != 0) st = loco_err_set(err, LOCO_EIO, "%s: fsync failed: %s", f->path, strerror(errno));
    if (close(f->fd) != 0 && !st) st = loco_err_set(err, LOCO_EIO, "%s: close failed: %s", f->path, strerror(errno));
    f->fd = -1;
    if (!st && rename(f->tmp, f->path) != 0)
        st = loco_err_set(err, LOCO_EIO, "%s: rename from the temporary file failed: %s", f->path, strerror(errno));
    if (st) {
        loco_out_file_abort(f);
        return st;
    }
    sync_parent(f->path);
    out_free(f);
    return LOCO_OK;
}

loco_status loco_write_file(const char *path, const void *buf, size_t len, loco_err *err) {
    loco_out_file f;
    loco_status st = loco_out_file_open(&f, path, err);
    if (st) return st;
    if ((st = loco_out_file_write(&f, buf, len, err))) {
        loco_out_file_abort(&f);
        return st;
    }
    return loco_out_file_commit(&f, err);
}

loco_status loco_write_json_file(const char *path, const json_t *doc, size_t flags, loco_err *err) {
    char *text = json_dumps(doc, flags);
    if (!text) return loco_err_set(err, LOCO_ENOMEM, "%s: cannot serialise the JSON document", path);
    loco_status st = loco_write_file(path, text, strlen(text), err);
    free(text);
    return st;
}

/* ---- folder relations ---------------------------------------------------------------------- */

/* "a/b/c" -> "a/b", "a" -> ".", "/a" -> "/" (in place); 0 when there is no parent left. */
static int strip_last(char *p) {
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = 0;
    if (strcmp(p, "/") == 0 || strcmp(p, ".") == 0) return 0;
    char *slash = strrchr(p, '/');
    if (!slash) {
        strcpy(p, ".");
    } else if (slash == p) {
        p[1] = 0;
    } else {
        *slash = 0;
    }
    return 1;
}

/* The resolved path of `path` or, when it does not exist, of its nearest existing ancestor
 * (*exists says which). malloc'ed; NULL with err set on failure. */
static char *resolve_existing(const char *path, int *exists, loco_err *err) {
    char *cur = malloc(strlen(path) + 2);
    if (!cur) {
        loco_err_set(err, LOCO_ENOMEM, "out of memory");
        return NULL;
    }
    strcpy(cur, path);
    *exists = 1;
    for (;;) {
        char *r = realpath(cur, NULL);
        if (r) {
            free(cur);
            return r;
        }
        if ((errno != ENOENT && errno != ENOTDIR) || !strip_last(cur)) {
            loco_err_set(err, LOCO_EIO, "%s: cannot resolve the path: %s", path, strerror(errno));
            free(cur);
            return NULL;
        }
        *exists = 0;
    }
}

static int same_inode(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Is `dir` (by inode) the resolved path `res` or one of its ancestors? 1: res itself, 2: an
 * ancestor, 0: neither. */
static int find_in_ancestors(const char *res, const struct stat *dir) {
    char *p = strdup(res);
    if (!p) return 0;
    int found = 0;
    for (int self = 1;; self = 0) {
        struct stat sb;
        if (stat(p, &sb) == 0 && same_inode(&sb, dir)) {
            found = self ? 1 : 2;
            break;
        }
        if (!strip_last(p)) break;
    }
    free(p);
    return found;
}

loco_status loco_path_relation_of(const char *a, const char *b, loco_path_relation *out, loco_err *err) {
    *out = LOCO_PATH_APART;
    int a_exists, b_exists;
    char *ra = resolve_existing(a, &a_exists, err);
    if (!ra) return LOCO_EIO;
    char *rb = resolve_existing(b, &b_exists, err);
    if (!rb) {
        free(ra);
        return LOCO_EIO;
    }
    loco_status st = LOCO_OK;
    struct stat sa, sb;
    if (!b_exists || stat(rb, &sb) != 0) {
        st = loco_err_set(err, LOCO_EIO, "%s: no such folder", b);
    } else {
        /* a (or where it would be created) at or under b? */
        int k = find_in_ancestors(ra, &sb);
        if (k) {
            *out = k == 1 && a_exists ? LOCO_PATH_SAME : LOCO_PATH_INSIDE;
        } else if (a_exists && stat(ra, &sa) == 0 && find_in_ancestors(rb, &sa) == 2) {
            *out = LOCO_PATH_CONTAINS; /* a folder not created yet contains nothing */
        }
    }
    free(ra);
    free(rb);
    return st;
}

int loco_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && same_inode(&sa, &sb);
}
