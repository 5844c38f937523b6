/* artifacts.c: see artifacts.h. */
#include "artifacts.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"

int locod_artifact_id_valid(const char *id) {
    if (!id) return 0;
    size_t i = 0;
    for (; id[i]; i++) {
        char c = id[i];
        if (i >= 64 || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return i == 64;
}

static int mkdir_p(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST) return -1;
    return 0;
}

/* Everything inside the open folder dfd, then dfd itself is closed. Entries are opened with
 * O_NOFOLLOW relative to their parent, so a folder swapped for a symlink meanwhile is unlinked,
 * never followed. */
static void empty_dir_fd(int dfd, int depth) {
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0) continue;
        int sub = depth < 32 ? openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
        if (sub >= 0) empty_dir_fd(sub, depth + 1);
        unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
    }
    closedir(d);
}

void locod_remove_tree(const char *path) {
    if (unlink(path) == 0) return;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) empty_dir_fd(fd, 0);
    rmdir(path);
}

void locod_artifacts_clear_tmp_of(const char *root, int pid) {
    char tmp[4096], prefix[32];
    snprintf(tmp, sizeof tmp, "%s/tmp", root);
    snprintf(prefix, sizeof prefix, "%d-", pid);
    DIR *d = opendir(tmp);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", tmp, e->d_name);
        locod_remove_tree(p);
    }
    closedir(d);
}

loco_status locod_artifacts_init(const char *root, loco_err *err) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/tmp", root);
    if (mkdir_p(tmp)) return loco_err_set(err, LOCO_EIO, "cannot create artifact folder %s: %s", tmp, strerror(errno));
    DIR *d = opendir(tmp);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char p[4400];
            snprintf(p, sizeof p, "%s/%s", tmp, e->d_name);
            locod_remove_tree(p); /* a file, or a folder export a crash left half done */
        }
        closedir(d);
    }
    return LOCO_OK;
}

void locod_artifact_path(const char *root, const char *sha, char *buf, size_t n) {
    snprintf(buf, n, "%s/%.2s/%s", root, sha, sha);
}

void locod_artifact_tmp_path(const char *root, const char *suffix, char *buf, size_t n) {
    uint8_t r[8];
    char hx[17];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) memset(r, 0, sizeof r);
    locod_hex(r, sizeof r, hx);
    snprintf(buf, n, "%s/tmp/%d-%s%s", root, (int)getpid(), hx, suffix ? suffix : "");
}

static void fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static loco_status place(const char *root, const char *tmp, const char *sha, loco_err *err) {
    char dir[4096], dst[4200];
    snprintf(dir, sizeof dir, "%s/%.2s", root, sha);
    if (mkdir(dir, 0755) && errno != EEXIST)
        return loco_err_set(err, LOCO_EIO, "cannot create %s: %s", dir, strerror(errno));
    locod_artifact_path(root, sha, dst, sizeof dst);
    /* Always replace (same content if it exists): atomic, and the file's mtime says it was just
     * placed, which the retention sweep honours (locod_artifact_remove). */
    if (rename(tmp, dst)) {
        loco_err_set(err, LOCO_EIO, "cannot move artifact into %s: %s", dst, strerror(errno));
        unlink(tmp);
        return LOCO_EIO;
    }
    fsync_dir(dir);
    return LOCO_OK;
}

loco_status locod_artifact_put(const char *root, const void *data, size_t n, char sha[65], loco_err *err) {
    uint8_t d[32];
    locod_sha256(data, n, d);
    locod_hex(d, 32, sha);
    char tmp[4096];
    locod_artifact_tmp_path(root, NULL, tmp, sizeof tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return loco_err_set(err, LOCO_EIO, "cannot create %s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = n;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            loco_err_set(err, LOCO_EIO, "writing %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return LOCO_EIO;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        unlink(tmp);
        return loco_err_set(err, LOCO_EIO, "syncing %s: %s", tmp, strerror(errno));
    }
    return place(root, tmp, sha, err);
}

loco_status locod_artifact_put_file(const char *root, const char *tmp, char sha[65], uint64_t *size, loco_err *err) {
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return loco_err_set(err, LOCO_EIO, "cannot open %s: %s", tmp, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    char buf[1 << 16];
    uint64_t total = 0;
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) {
        EVP_DigestUpdate(ctx, buf, (size_t)r);
        total += (uint64_t)r;
    }
    int bad = r < 0 || fsync(fd) != 0;
    close(fd);
    uint8_t d[32];
    unsigned int dl = 32;
    EVP_DigestFinal_ex(ctx, d, &dl);
    EVP_MD_CTX_free(ctx);
    if (bad) {
        unlink(tmp);
        return loco_err_set(err, LOCO_EIO, "reading %s: %s", tmp, strerror(errno));
    }
    locod_hex(d, 32, sha);
    if (size) *size = total;
    return place(root, tmp, sha, err);
}

int locod_artifact_remove(const char *root, const char *sha, int64_t keep_since_ms) {
    if (!locod_artifact_id_valid(sha)) return 0;
    char p[4200], aside[4096];
    locod_artifact_path(root, sha, p, sizeof p);
    if (keep_since_ms <= 0) return unlink(p) == 0 ? 1 : -1;
    /* Move it aside first (atomic), then look: a worker placing the same content concurrently
     * either lands before the move (fresh mtime: put it back) or after it (a new file). */
    locod_artifact_tmp_path(root, ".gone", aside, sizeof aside);
    if (rename(p, aside)) return -1;
    struct stat st;
    if (stat(aside, &st) == 0 &&
        (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000 >= keep_since_ms) {
        if (rename(aside, p) == 0) return 0; /* same content whichever file wins */
    }
    unlink(aside);
    return 1;
}
