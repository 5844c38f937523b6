/* st_test_util.h: temporary folders and small safetensors files for the weight-loading tests
 * (test_safetensors, test_weights, test_model_files, test_ldm_mapping). */
#ifndef LOCO_ST_TEST_UTIL_H
#define LOCO_ST_TEST_UTIL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

/* A fresh temporary folder under $TMPDIR or /tmp. */
static inline const char *st_tmpdir(char *buf, size_t n) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, n, "%s/loco_test_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(buf);
}

/* Remove a folder tree made by a test (files and folders only). */
static inline void st_rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= (int)sizeof p) continue;
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            st_rm_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static inline int st_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* Write a file of F32 tensors: names[i] with shape [sizes[i]] filled with base + i*100 + j. */
static inline loco_status st_write_f32(const char *path, const char *const *names, const int64_t *sizes, int n,
                                       float base, loco_err *err) {
    loco_stored_tensor ts[64] = {0};
    float *bufs[64] = {0};
    if (n > 64) return LOCO_EINVAL;
    for (int i = 0; i < n; i++) {
        bufs[i] = malloc((size_t)(sizes[i] ? sizes[i] : 1) * sizeof(float));
        for (int64_t j = 0; j < sizes[i]; j++) bufs[i][j] = base + (float)(i * 100 + j);
        ts[i] = (loco_stored_tensor){.name = names[i],
                                     .dtype = LOCO_F32,
                                     .ndim = 1,
                                     .shape = {sizes[i]},
                                     .data = bufs[i],
                                     .nbytes = (size_t)sizes[i] * sizeof(float)};
    }
    loco_status st = loco_safetensors_write(path, ts, (size_t)n, NULL, err);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return st;
}

#endif
