/* file_out.h: writing an output file the way users expect of a Unix tool, and telling how two
 * folders relate (for writers that must not write into what they read).
 *
 * Every file loco writes for a user (PNG images, safetensors, JSON results, exported model
 * folders) goes through loco_out_file:
 *   - a path that does not exist yet, or an existing regular file, is written to a unique
 *     temporary file next to it, synced, and renamed over it: readers never see half a file and a
 *     failed write leaves the old file as it was (a symlink to a regular file is followed: the
 *     file it names is replaced, not the link);
 *   - an existing character device, block device or FIFO (`-o /dev/null`, `-o /dev/stdout`, a
 *     named pipe another process reads) is opened and written in place, without creating or
 *     truncating anything: renaming a temporary file over it would replace the device node with
 *     a regular file;
 *   - a directory or a socket is refused with a message saying so. */
#ifndef LOCO_FILE_OUT_H
#define LOCO_FILE_OUT_H

#include <jansson.h>
#include <stddef.h>

#include "base.h"

typedef struct loco_out_file {
    int fd;     /* -1 when closed */
    int direct; /* 1: writing in place into a special file (no temporary, no rename) */
    char *path; /* the target (owned) */
    char *tmp;  /* the temporary file (owned), NULL when direct */
} loco_out_file;

/* Open `path` for writing as described above. On failure nothing is left behind and *f is
 * closed (loco_out_file_abort is a no-op on it). */
loco_status loco_out_file_open(loco_out_file *f, const char *path, loco_err *err);
/* Write all of buf (retries short writes and EINTR). */
loco_status loco_out_file_write(loco_out_file *f, const void *buf, size_t len, loco_err *err);
/* Finish: sync, close, rename the temporary over the target and sync its folder (regular files);
 * close (special files). Always releases f; on failure the temporary is removed. */
loco_status loco_out_file_commit(loco_out_file *f, loco_err *err);
/* Give up: close and remove the temporary. Safe on a closed or zeroed-and-closed f. */
void loco_out_file_abort(loco_out_file *f);

/* open + write + commit of one buffer. */
loco_status loco_write_file(const char *path, const void *buf, size_t len, loco_err *err);
/* A JSON document (json_dumps flags) written with loco_write_file. */
loco_status loco_write_json_file(const char *path, const json_t *doc, size_t flags, loco_err *err);

/* How folder `a` relates to folder `b`, by device and inode of the resolved paths (so symlinks,
 * "..", bind mounts of the same folder and different spellings compare right). A path that does
 * not exist yet is judged by its nearest existing ancestor: it can only end up inside that. */
typedef enum loco_path_relation {
    LOCO_PATH_APART = 0, /* neither contains the other */
    LOCO_PATH_SAME,      /* the same folder */
    LOCO_PATH_INSIDE,    /* a is inside b */
    LOCO_PATH_CONTAINS,  /* a contains b */
} loco_path_relation;

/* LOCO_EIO when b does not exist or a path cannot be resolved. */
loco_status loco_path_relation_of(const char *a, const char *b, loco_path_relation *out, loco_err *err);

/* 1 when both paths exist and are the same file (hard links, symlinks), else 0. */
int loco_same_file(const char *a, const char *b);

#endif
