/* artifacts.h: content-addressed result files. An artifact is named by the SHA-256 of its
 * bytes (64 lowercase hex) and lives at <root>/<first two hex>/<sha256>. It is written to a
 * temporary file in <root>/tmp, fsync'ed, then renamed into place (and the folder fsync'ed), so
 * a reader never sees half a file and a crash leaves at most a stray temporary. Used by the
 * worker (which writes) and the daemon (which serves and deletes); no state beyond the path. */
#ifndef LOCOD_ARTIFACTS_H
#define LOCOD_ARTIFACTS_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"

/* 64 lowercase hex characters and nothing else. */
int locod_artifact_id_valid(const char *id);

/* Remove a file, or a folder and everything in it (symlinks are removed, never followed). */
void locod_remove_tree(const char *path);
/* The temporaries of one (dead) writer process: <root>/tmp/<pid>-* (locod_artifact_tmp_path). */
void locod_artifacts_clear_tmp_of(const char *root, int pid);
/* Create <root> and <root>/tmp; clear stale temporaries (files and folders). */
loco_status locod_artifacts_init(const char *root, loco_err *err);
/* <root>/<aa>/<sha256> into buf. */
void locod_artifact_path(const char *root, const char *sha, char *buf, size_t n);
/* A fresh temporary path in <root>/tmp for a writer that needs a file name (safetensors). */
void locod_artifact_tmp_path(const char *root, const char *suffix, char *buf, size_t n);

/* Store bytes; *sha gets the id (65 bytes). Existing identical content is kept. */
loco_status locod_artifact_put(const char *root, const void *data, size_t n, char sha[65], loco_err *err);
/* Hash a finished temporary file and move it into place (the temporary is consumed). */
loco_status locod_artifact_put_file(const char *root, const char *tmp_path, char sha[65], uint64_t *size,
                                    loco_err *err);
/* Remove an artifact (missing is fine). */
/* Removes the stored artifact, unless keep_since_ms > 0 and the file was placed at or after
 * keep_since_ms (wall-clock ms): then a running job may have just produced the same content and
 * will link it when it finishes, so it stays. Returns 1: removed, 0: kept, -1: not there. */
int locod_artifact_remove(const char *root, const char *sha, int64_t keep_since_ms);

#endif
