/* worker_export.c: an edit's variant as a whole diffusers folder (DESIGN.md: "a full diffusers
 * folder that diffusers itself loads"), served file by file. The engine writes the folder into
 * the artifact store's temporary area; each file then becomes a content-addressed artifact and
 * the job's result lists them with their paths inside the folder, so a client rebuilds it with
 * one download per file. Unchanged files (the VAE, the tokenizers, configs) hash to the same
 * artifacts across edits of one base and are stored once. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "artifacts.h"
#include "worker.h"

typedef struct file_list {
    char **rel; /* paths inside the folder, '/'-separated */
    int n, cap;
} file_list;

static void file_list_free(file_list *l) {
    for (int i = 0; i < l->n; i++) free(l->rel[i]);
    free(l->rel);
}

/* Every regular file under root/rel, depth first; sub-folders are listed before being left. */
static loco_status list_files(const char *root, const char *rel, file_list *out, int depth, loco_err *err) {
    if (depth > 8) return loco_err_set(err, LOCO_EINVAL, "export: folders nested too deep under %s", root);
    char dir[2 * PATH_MAX + 2];
    snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) return loco_err_set(err, LOCO_EIO, "export: cannot read %s: %s", dir, strerror(errno));
    loco_status st = LOCO_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char sub[PATH_MAX], full[2 * PATH_MAX + 2];
        snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        snprintf(full, sizeof full, "%s/%s", root, sub);
        struct stat sb;
        if (lstat(full, &sb)) {
            st = loco_err_set(err, LOCO_EIO, "export: %s: %s", full, strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            st = list_files(root, sub, out, depth + 1, err);
        } else if (S_ISREG(sb.st_mode)) {
            if (out->n == out->cap) {
                int cap = out->cap ? 2 * out->cap : 16;
                char **nr = realloc(out->rel, (size_t)cap * sizeof *nr);
                if (!nr) {
                    st = loco_err_set(err, LOCO_ENOMEM, "export: out of memory");
                    break;
                }
                out->rel = nr;
                out->cap = cap;
            }
            if (!(out->rel[out->n] = strdup(sub))) st = loco_err_set(err, LOCO_ENOMEM, "export: out of memory");
            else out->n++;
        }
    }
    closedir(d);
    return st;
}

static int by_path(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static const char *media_type_of(const char *path) {
    const char *dot = strrchr(path, '.');
    if (dot && strcmp(dot, ".json") == 0) return "application/json";
    if (dot && strcmp(dot, ".txt") == 0) return "text/plain; charset=utf-8";
    return "application/octet-stream";
}

loco_status wk_export_folder(wk_ctx *w, const loco_pipeline_variant *v, loco_export_dtype dtype, json_t *artifacts,
                             json_t **files, loco_err *err) {
    *files = NULL;
    char dir[PATH_MAX];
    locod_artifact_tmp_path(w->artifacts, ".folder", dir, sizeof dir);
    loco_status st = loco_pipeline_variant_export_folder(v, dir, dtype, err);
    file_list fl;
    memset(&fl, 0, sizeof fl);
    if (!st) st = list_files(dir, "", &fl, 0, err);
    if (!st) qsort(fl.rel, (size_t)fl.n, sizeof *fl.rel, by_path);
    json_t *list = json_array();
    for (int i = 0; !st && i < fl.n; i++) {
        if (wk_progress(w, "export", i, fl.n)) {
            st = loco_err_set(err, LOCO_ECANCELLED, "cancelled at the client's request during the folder export");
            break;
        }
        char full[2 * PATH_MAX + 2], sha[65];
        snprintf(full, sizeof full, "%s/%s", dir, fl.rel[i]);
        const char *base = strrchr(fl.rel[i], '/');
        st = wk_put_artifact_file(w, full, base ? base + 1 : fl.rel[i], media_type_of(fl.rel[i]), artifacts, sha, err);
        if (st) break;
        /* the artifact entry just appended has the size and url */
        const json_t *a = json_array_get(artifacts, json_array_size(artifacts) - 1);
        json_array_append_new(list, json_pack("{s:s, s:s, s:O, s:O}", "path", fl.rel[i], "sha256", sha, "size",
                                              json_object_get(a, "size"), "url", json_object_get(a, "url")));
    }
    file_list_free(&fl);
    locod_remove_tree(dir); /* what is left: empty folders, or a failed export's files */
    if (st) {
        json_decref(list);
        return st;
    }
    *files = list;
    return LOCO_OK;
}
