/* Output files (engine/file_out.h): a FIFO or device target is written in place, never replaced
 * by a regular file; a folder is refused; regular files still go through a temporary + rename;
 * and folder relations (same, inside, contains) by inode. */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file_out.h"
#include "image.h"
#include "loco_test.h"
#include "safetensors.h"
#include "st_test_util.h"

/* A reader of a FIFO on its own thread: collects everything until the last writer closes. */
typedef struct fifo_reader {
    int rd, keep; /* our read end, and a write end held open so the reader never sees EOF early */
    pthread_t th;
    unsigned char *data;
    size_t len;
} fifo_reader;

static void *read_all(void *arg) {
    fifo_reader *r = arg;
    size_t cap = 0;
    for (;;) {
        if (r->len + 65536 > cap) {
            cap = cap ? 2 * cap : 1 << 17;
            unsigned char *d = realloc(r->data, cap);
            if (!d) break;
            r->data = d;
        }
        ssize_t n = read(r->rd, r->data + r->len, cap - r->len);
        if (n <= 0) break;
        r->len += (size_t)n;
    }
    return NULL;
}

/* Open both ends without blocking (a reader first, then our own writer), then read in the
 * background. Even if the code under test never opened the FIFO, fifo_finish ends the read. */
static int fifo_start(fifo_reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    if (mkfifo(path, 0600) != 0) return -1;
    r->rd = open(path, O_RDONLY | O_NONBLOCK);
    r->keep = r->rd >= 0 ? open(path, O_WRONLY) : -1;
    if (r->keep < 0 || fcntl(r->rd, F_SETFL, 0) != 0) return -1;
    return pthread_create(&r->th, NULL, read_all, r);
}

static void fifo_finish(fifo_reader *r) {
    close(r->keep);
    pthread_join(r->th, NULL);
    close(r->rd);
}

static int is_fifo(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0 && S_ISFIFO(sb.st_mode);
}

TEST(png_write_into_fifo_keeps_the_fifo) {
    char dir[256], path[300];
    CHECK(st_tmpdir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/out.png", dir);
    fifo_reader r;
    CHECK(fifo_start(&r, path) == 0);
    loco_image img;
    loco_err err;
    CHECK(loco_image_alloc(16, 8, 3, &img, &err) == LOCO_OK);
    memset(img.data, 200, 16 * 8 * 3);
    loco_status st = loco_png_write(path, &img, &err);
    fifo_finish(&r);
    loco_image_free(&img);
    CHECK_MSG(st == LOCO_OK, "%s", err.msg);
    /* the node is still the FIFO (not a regular file renamed over it) and the reader got the PNG */
    CHECK(is_fifo(path));
    CHECK_MSG(r.len > 8 && memcmp(r.data, "\x89PNG\r\n\x1a\n", 8) == 0, "read %zu bytes", r.len);
    loco_image back;
    CHECK(loco_png_decode(r.data, r.len, NULL, &back, &err) == LOCO_OK);
    CHECK(back.width == 16 && back.height == 8 && back.data[0] == 200);
    loco_image_free(&back);
    free(r.data);
    unlink(path);
    CHECK(rmdir(dir) == 0); /* no temporary file was left next to it */
}

TEST(safetensors_write_into_fifo_keeps_the_fifo) {
    char dir[256], path[300];
    CHECK(st_tmpdir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/latents.safetensors", dir);
    fifo_reader r;
    CHECK(fifo_start(&r, path) == 0);
    float v[6] = {1, 2, 3, 4, 5, 6};
    loco_stored_tensor t = {.name = "x", .dtype = LOCO_F32, .ndim = 2, .shape = {2, 3}, .data = v, .nbytes = sizeof v};
    loco_err err;
    loco_status st = loco_safetensors_write(path, &t, 1, NULL, &err);
    fifo_finish(&r);
    CHECK_MSG(st == LOCO_OK, "%s", err.msg);
    CHECK(is_fifo(path));
    /* 8-byte header length, the header, then the 24 data bytes at the end */
    CHECK_MSG(r.len >= 8 + 24, "read %zu bytes", r.len);
    CHECK(memcmp(r.data + r.len - sizeof v, v, sizeof v) == 0);
    free(r.data);
    unlink(path);
    CHECK(rmdir(dir) == 0);
}

TEST(writers_refuse_a_folder) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    loco_err err;
    CHECK(loco_write_file(dir, "x", 1, &err) == LOCO_EINVAL);
    CHECK_MSG(strstr(err.msg, dir) && strstr(err.msg, "is a folder"), "%s", err.msg);
    loco_image img;
    CHECK(loco_image_alloc(2, 2, 3, &img, &err) == LOCO_OK);
    memset(img.data, 0, 12);
    CHECK(loco_png_write(dir, &img, &err) == LOCO_EINVAL);
    loco_image_free(&img);
    struct stat sb;
    CHECK(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode));
    CHECK(rmdir(dir) == 0); /* still empty: nothing was created inside or next to it */
}

TEST(regular_files_are_replaced_whole) {
    char dir[256], path[300];
    CHECK(st_tmpdir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/f.txt", dir);
    loco_err err;
    CHECK(loco_write_file(path, "a long first version", 20, &err) == LOCO_OK);
    struct stat a, b;
    CHECK(stat(path, &a) == 0);
    CHECK(loco_write_file(path, "short", 5, &err) == LOCO_OK);
    CHECK(stat(path, &b) == 0 && S_ISREG(b.st_mode) && b.st_size == 5);
    CHECK(a.st_ino != b.st_ino); /* a new file renamed over the old one: readers never see half */
    json_t *doc = json_pack("{s:i}", "k", 3);
    CHECK(loco_write_json_file(path, doc, JSON_COMPACT, &err) == LOCO_OK);
    json_decref(doc);
    CHECK(stat(path, &b) == 0 && b.st_size == (off_t)strlen("{\"k\":3}"));
    /* through a symlink (as /dev/stdout is one to a redirected file): the file it names is
     * replaced, the link stays a link */
    char lnk[320];
    snprintf(lnk, sizeof lnk, "%s/link", dir);
    CHECK(symlink(path, lnk) == 0);
    CHECK(loco_write_file(lnk, "through", 7, &err) == LOCO_OK);
    CHECK(lstat(lnk, &b) == 0 && S_ISLNK(b.st_mode));
    CHECK(stat(path, &b) == 0 && b.st_size == 7);
    unlink(lnk);
    unlink(path);
    CHECK(rmdir(dir) == 0);
}

TEST(path_relations_by_inode) {
    char dir[256], m[300], sub[320], other[300], lnk[300], fresh[340], a[320], b[320];
    CHECK(st_tmpdir(dir, sizeof dir));
    snprintf(m, sizeof m, "%s/model", dir);
    snprintf(sub, sizeof sub, "%s/model/unet", dir);
    snprintf(other, sizeof other, "%s/other", dir);
    snprintf(lnk, sizeof lnk, "%s/link", dir);
    snprintf(fresh, sizeof fresh, "%s/model/unet/new/deeper", dir);
    CHECK(mkdir(m, 0755) == 0 && mkdir(sub, 0755) == 0 && mkdir(other, 0755) == 0 && symlink(m, lnk) == 0);
    loco_path_relation rel;
    loco_err err;
    CHECK(loco_path_relation_of(m, m, &rel, &err) == LOCO_OK && rel == LOCO_PATH_SAME);
    CHECK(loco_path_relation_of(lnk, m, &rel, &err) == LOCO_OK && rel == LOCO_PATH_SAME);
    char spelled[340];
    snprintf(spelled, sizeof spelled, "%s/other/../model/", dir);
    CHECK(loco_path_relation_of(spelled, m, &rel, &err) == LOCO_OK && rel == LOCO_PATH_SAME);
    CHECK(loco_path_relation_of(sub, m, &rel, &err) == LOCO_OK && rel == LOCO_PATH_INSIDE);
    CHECK(loco_path_relation_of(fresh, m, &rel, &err) == LOCO_OK && rel == LOCO_PATH_INSIDE); /* not created yet */
    CHECK(loco_path_relation_of(dir, m, &rel, &err) == LOCO_OK && rel == LOCO_PATH_CONTAINS);
    CHECK(loco_path_relation_of(other, m, &rel, &err) == LOCO_OK && rel == LOCO_PATH_APART);
    CHECK(loco_path_relation_of(m, other, &rel, &err) == LOCO_OK && rel == LOCO_PATH_APART);
    /* same files: hard links and symlinks */
    snprintf(a, sizeof a, "%s/a", other);
    snprintf(b, sizeof b, "%s/b", other);
    CHECK(loco_write_file(a, "x", 1, &err) == LOCO_OK);
    CHECK(!loco_same_file(a, b));
    CHECK(link(a, b) == 0 && loco_same_file(a, b));
    unlink(b);
    CHECK(symlink(a, b) == 0 && loco_same_file(a, b));
    unlink(b);
    unlink(a);
    unlink(lnk);
    rmdir(sub);
    rmdir(m);
    rmdir(other);
    CHECK(rmdir(dir) == 0);
}
