/* edit_export.c: a variant's delta file (changed tensors + ablations) and full diffusers folder. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file_out.h"
#include "pipeline_impl.h"
#include "pipeline_variant.h"

#define DELTA_FORMAT "loco-delta-1"

static const char *const export_names[LOCO_EXPORT_DTYPE_COUNT] = {"keep", "f32", "f16", "bf16"};

const char *loco_export_dtype_name(loco_export_dtype d) {
    return (unsigned)d < LOCO_EXPORT_DTYPE_COUNT ? export_names[d] : "unknown";
}

int loco_export_dtype_from_name(const char *name, loco_export_dtype *out) {
    for (int i = 0; name && i < LOCO_EXPORT_DTYPE_COUNT; i++)
        if (strcmp(name, export_names[i]) == 0) {
            *out = (loco_export_dtype)i;
            return 0;
        }
    return -1;
}

/* ---- delta ----------------------------------------------------------------------------------- */

static char *edits_text(const loco_pipeline_variant *v) {
    return json_dumps(loco_pipeline_variant_edits(v), JSON_COMPACT | JSON_SORT_KEYS);
}

loco_status loco_pipeline_variant_export_delta(const loco_pipeline_variant *v, const char *path, loco_err *err) {
    const int nc = loco_pipeline_variant_num_changes(v), na = loco_pipeline_variant_num_ablations(v);
    const size_t n = (size_t)nc + 2 * (size_t)na;
    loco_stored_tensor *t = calloc(n ? n : 1, sizeof *t);
    char **names = calloc(n ? n : 1, sizeof *names);
    char *edits = edits_text(v);
    loco_status st = LOCO_OK;
    if (!t || !names || !edits) {
        st = loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
        goto done;
    }
    size_t k = 0;
    for (int i = 0; i < nc; i++, k++) {
        const loco_variant_change *c = loco_pipeline_variant_change(v, i);
        size_t len = strlen(c->name) + 32;
        if (!(names[k] = malloc(len))) goto oom;
        snprintf(names[k], len, "%s.%s", loco_component_name(c->component), c->name);
        int64_t numel = 1;
        for (int d = 0; d < c->ndim; d++) numel *= c->shape[d];
        t[k] = (loco_stored_tensor){.name = names[k], .dtype = LOCO_F32, .ndim = c->ndim, .data = c->data,
                                    .nbytes = (size_t)numel * sizeof(float)};
        memcpy(t[k].shape, c->shape, sizeof c->shape);
    }
    for (int i = 0; i < na; i++) {
        const loco_neuron_ablation *a = loco_pipeline_variant_ablation(v, i);
        const char *kv = a->kind == LOCO_SITE_CROSS_K ? "k" : "v";
        for (int part = 0; part < 2; part++, k++) {
            if (!(names[k] = malloc(64))) goto oom;
            snprintf(names[k], 64, "ablation.%d.%s.%s", a->cross_index, kv, part ? "values" : "channels");
            t[k] = (loco_stored_tensor){.name = names[k], .dtype = part ? LOCO_F32 : LOCO_I32, .ndim = 1,
                                        .data = part ? (const void *)a->values : (const void *)a->channels,
                                        .nbytes = (size_t)a->n * 4};
            t[k].shape[0] = a->n;
        }
    }
    {
        const loco_pipeline *base = loco_pipeline_variant_base(v);
        const char *meta[] = {"format", "pt",
                              "loco_format", DELTA_FORMAT,
                              "base_model", base->path ? base->path : "",
                              "family", loco_model_family_name(base->family),
                              "edits", edits,
                              NULL};
        st = loco_safetensors_write(path, t, n, meta, err);
    }
    goto done;
oom:
    st = loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
done:
    for (size_t i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(t);
    free(edits);
    return st;
}

/* "ablation.<layer>.<k|v>.<channels|values>" -> its parts. */
static int parse_ablation_name(const char *name, int *layer, loco_site_kind *kind, int *is_values) {
    char kv[4], part[16];
    int consumed = 0;
    if (sscanf(name, "ablation.%d.%1[kv].%15[a-z]%n", layer, kv, part, &consumed) != 3 || name[consumed]) return -1;
    *kind = kv[0] == 'k' ? LOCO_SITE_CROSS_K : LOCO_SITE_CROSS_V;
    if (strcmp(part, "values") == 0) *is_values = 1;
    else if (strcmp(part, "channels") == 0) *is_values = 0;
    else return -1;
    return 0;
}

static loco_status apply_ablation(loco_pipeline_variant *v, const loco_safetensors *f, const loco_stored_tensor *ch,
                                  int layer, loco_site_kind kind, loco_err *err) {
    char vname[64];
    snprintf(vname, sizeof vname, "ablation.%d.%s.values", layer, kind == LOCO_SITE_CROSS_K ? "k" : "v");
    const loco_stored_tensor *vt = loco_safetensors_find(f, vname);
    if (!vt || ch->dtype != LOCO_I32 || ch->ndim != 1 || vt->ndim != 1 || vt->shape[0] != ch->shape[0])
        return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' needs an I32 channel list and a '%s' of the same length",
                            loco_safetensors_path(f), ch->name, vname);
    const int n = (int)ch->shape[0];
    float *vals = malloc((size_t)(n ? n : 1) * sizeof *vals);
    int32_t *chan = malloc((size_t)(n ? n : 1) * sizeof *chan); /* aligned copy: files need not align data */
    if (!vals || !chan) {
        free(vals);
        free(chan);
        return loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
    }
    memcpy(chan, ch->data, (size_t)n * sizeof *chan);
    loco_status st = loco_convert_to_f32(vals, vt->data, vt->dtype, (size_t)n);
    if (st) {
        free(vals);
        free(chan);
        return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' is not a float tensor", loco_safetensors_path(f), vname);
    }
    loco_neuron_ablation a = {.cross_index = layer, .kind = kind, .n = n, .channels = chan, .values = vals};
    st = loco_pipeline_variant_add_ablation(v, &a, err);
    free(vals);
    free(chan);
    return st;
}

loco_status loco_pipeline_variant_apply_delta(loco_pipeline_variant *v, const char *path, loco_err *err) {
    loco_safetensors *f = NULL;
    loco_status st = loco_safetensors_open(path, &f, err);
    if (st) return st;
    const char *fmt = loco_safetensors_metadata(f, "loco_format");
    if (!fmt || strcmp(fmt, DELTA_FORMAT) != 0) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: not a loco delta file (metadata loco_format is not '%s')", path,
                          DELTA_FORMAT);
        goto done;
    }
    const char *family = loco_safetensors_metadata(f, "family");
    const loco_pipeline *base = loco_pipeline_variant_base(v);
    if (family && strcmp(family, loco_model_family_name(base->family)) != 0) {
        st = loco_err_set(err, LOCO_EINVAL, "%s: the delta was made for a %s model, this one is %s", path, family,
                          loco_model_family_name(base->family));
        goto done;
    }
    for (size_t i = 0; i < loco_safetensors_count(f); i++) {
        const loco_stored_tensor *t = loco_safetensors_at(f, i);
        int layer, is_values;
        loco_site_kind kind;
        if (strncmp(t->name, "ablation.", 9) == 0) {
            if (parse_ablation_name(t->name, &layer, &kind, &is_values)) {
                st = loco_err_set(err, LOCO_EFORMAT, "%s: malformed ablation tensor name '%s'", path, t->name);
                goto done;
            }
            if (!is_values && (st = apply_ablation(v, f, t, layer, kind, err))) goto done;
            continue;
        }
        const char *dot = strchr(t->name, '.');
        char comp[32];
        loco_component c;
        if (!dot || (size_t)(dot - t->name) >= sizeof comp) goto bad_name;
        memcpy(comp, t->name, (size_t)(dot - t->name));
        comp[dot - t->name] = 0;
        if (loco_component_from_name(comp, &c)) goto bad_name;
        {
            float *cur = NULL;
            int64_t numel = 0;
            int ndim = 0;
            int64_t shape[2];
            if ((st = loco_pipeline_variant_read_param(v, c, dot + 1, &cur, &numel, &ndim, shape, err))) {
                loco_err_prefix(err, "%s", path);
                goto done;
            }
            free(cur);
            if (loco_stored_numel(t) != numel || t->ndim != ndim) {
                st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' has %lld elements, the model's has %lld", path,
                                  t->name, (long long)loco_stored_numel(t), (long long)numel);
                goto done;
            }
            float *data = malloc((size_t)(numel ? numel : 1) * sizeof *data);
            if (!data) {
                st = loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
                goto done;
            }
            if (loco_convert_to_f32(data, t->data, t->dtype, (size_t)numel)) {
                free(data);
                st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' is not a float tensor", path, t->name);
                goto done;
            }
            st = loco_pipeline_variant_set_param(v, c, dot + 1, data, LOCO_F32, err);
            free(data);
            if (st) goto done;
        }
        continue;
    bad_name:
        st = loco_err_set(err, LOCO_EFORMAT,
                          "%s: tensor '%s' does not start with a component (unet., text_encoder., text_encoder_2.)",
                          path, t->name);
        goto done;
    }
    const char *edits = loco_safetensors_metadata(f, "edits");
    if (edits) {
        json_t *arr = json_loads(edits, 0, NULL);
        size_t i;
        json_t *e;
        if (json_is_array(arr))
            json_array_foreach(arr, i, e) {
                json_t *copy = json_deep_copy(e);
                if (json_is_object(copy)) json_object_set_new(copy, "applied_from", json_string(path));
                st = loco_pipeline_variant_note_edit(v, copy, err);
                json_decref(copy);
                if (st) break;
            }
        json_decref(arr);
    }
done:
    loco_safetensors_close(f);
    return st;
}

/* ---- diffusers folder ------------------------------------------------------------------------- */

/* An export reads the base model's files while it writes the new folder: model_index.json, the
 * configs and the tokenizer files are copied, the weights rewritten. Writing into the model's own
 * folder (or a folder inside it, or one that contains it) would replace those files with the
 * variant's (the base model is lost) or, for a plain copy onto itself, empty them. So the folders
 * an export reads from are listed, and every folder it writes into is checked against them, by
 * inode (symlinked subfolders of the export folder included); every file it replaces is checked
 * against its sources too (hard links, symlinks). */
#define EXPORT_MAX_SOURCES 3

typedef struct export_ctx {
    const loco_pipeline_variant *v;
    const loco_model_files *mf;
    const char *dir;
    loco_export_dtype dtype;
    const char *src_dirs[EXPORT_MAX_SOURCES]; /* the config folder (the model folder), tokenizer folders */
    const char *src_what[EXPORT_MAX_SOURCES];
    int n_src;
    const char *checkpoint; /* single files: the checkpoint, else NULL */
} export_ctx;

static void export_sources(const loco_model_files *mf, export_ctx *c) {
    c->mf = mf;
    c->n_src = 0;
    const int single = loco_model_files_is_single_file(mf);
    const char *root = loco_model_files_config_root(mf);
    if (root) {
        c->src_dirs[c->n_src] = root;
        c->src_what[c->n_src++] = single ? "the config folder (--config-dir)" : "the model's folder";
    }
    static const char *const toks[2] = {"tokenizer", "tokenizer_2"};
    for (int i = 0; i < 2; i++) {
        const char *t = loco_model_files_tokenizer_dir(mf, toks[i]);
        if (!t) continue;
        c->src_dirs[c->n_src] = t;
        c->src_what[c->n_src++] = i ? "the model's tokenizer_2 folder" : "the model's tokenizer folder";
    }
    c->checkpoint = single ? loco_model_files_path(mf) : NULL;
}

/* `dst`, a folder the export writes into (it may not exist yet), against every source folder. */
static loco_status check_dest_dir(const export_ctx *c, const char *dst, loco_err *err) {
    for (int i = 0; i < c->n_src; i++) {
        loco_path_relation rel;
        loco_status st = loco_path_relation_of(dst, c->src_dirs[i], &rel, err);
        if (st) return loco_err_prefix(err, "export");
        static const char *const how[] = {"", "is", "is inside", "contains"};
        if (rel == LOCO_PATH_APART) continue;
        return loco_err_set(err, LOCO_EINVAL,
                            "export: the folder %s %s %s %s, which the export reads from; writing there would "
                            "overwrite the base model's files: choose a folder outside it",
                            dst, how[rel], c->src_what[i], c->src_dirs[i]);
    }
    return LOCO_OK;
}

/* A file in `dir` that is the same file as `dst` (a hard link or symlink of a source), or NULL
 * (name written to buf). */
static const char *same_file_in(const char *dir, const char *dst, char *buf, size_t n) {
    DIR *d = opendir(dir);
    if (!d) return NULL;
    const char *found = NULL;
    struct dirent *e;
    while (!found && (e = readdir(d)))
        if (e->d_name[0] != '.' && snprintf(buf, n, "%s/%s", dir, e->d_name) < (int)n && loco_same_file(buf, dst))
            found = buf;
    closedir(d);
    return found;
}

/* `dst`, a file the export is about to replace, against the files of `src_dir` (the folder its
 * content comes from; NULL: none) and the checkpoint. */
static loco_status check_dest_file(const export_ctx *c, const char *src_dir, const char *dst, loco_err *err) {
    struct stat sb;
    /* a symlink in the export folder is replaced by the exported file, never written through:
     * whatever it names (the base model's files among them) stays as it is */
    if (lstat(dst, &sb) == 0 && S_ISLNK(sb.st_mode) && unlink(dst) != 0)
        return loco_err_set(err, LOCO_EIO, "export: cannot replace the symlink %s: %s", dst, strerror(errno));
    if (stat(dst, &sb) != 0) return LOCO_OK; /* a new file replaces nothing */
    char buf[4200];
    const char *src = src_dir ? same_file_in(src_dir, dst, buf, sizeof buf) : NULL;
    if (!src && c->checkpoint && loco_same_file(c->checkpoint, dst)) src = c->checkpoint;
    if (src)
        return loco_err_set(err, LOCO_EINVAL,
                            "export: %s is the same file as the base model's %s (a hard link or symlink); writing it "
                            "would change the base model: remove it or choose another folder",
                            dst, src);
    return LOCO_OK;
}

loco_status loco_pipeline_export_folder_check(const loco_pipeline *base, const char *dir, loco_err *err) {
    if (!dir || !*dir) return loco_err_set(err, LOCO_EINVAL, "export: no folder given");
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return loco_err_set(err, LOCO_EINVAL, "export: %s exists and is not a folder", dir);
    if (!base->files) return loco_err_set(err, LOCO_EUNSUPPORTED, "export: the model has no files to export from");
    export_ctx c;
    memset(&c, 0, sizeof c);
    export_sources(base->files, &c);
    return check_dest_dir(&c, dir, err);
}

/* mkdir -p, then the check that the folder (maybe a symlink into a source) is not a source. */
static loco_status mkdirs(const export_ctx *c, const char *path, loco_err *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return loco_err_set(err, LOCO_EINVAL, "export: path too long");
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return loco_err_set(err, LOCO_EIO, "export: cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST) return loco_err_set(err, LOCO_EIO, "export: cannot create %s: %s", buf, strerror(errno));
    return check_dest_dir(c, path, err);
}

static loco_status write_json(const export_ctx *c, const json_t *j, const char *sub, const char *file, loco_err *err) {
    char d[4096], p[4200], src[4200];
    snprintf(d, sizeof d, "%s%s%s", c->dir, sub ? "/" : "", sub ? sub : "");
    loco_status st = mkdirs(c, d, err);
    if (st) return st;
    snprintf(p, sizeof p, "%s/%s", d, file);
    const char *root = loco_model_files_config_root(c->mf);
    if (root) snprintf(src, sizeof src, "%s%s%s", root, sub ? "/" : "", sub ? sub : "");
    if ((st = check_dest_file(c, root ? src : NULL, p, err))) return st;
    st = loco_write_json_file(p, j, JSON_INDENT(2) | JSON_PRESERVE_ORDER, err);
    return st ? loco_err_prefix(err, "export") : LOCO_OK;
}

/* A plain copy, through a temporary file (engine/file_out.h): even a destination that is the
 * source under another name would not be truncated before it is read. */
static loco_status copy_file(const char *src, const char *dst, loco_err *err) {
    if (loco_same_file(src, dst))
        return loco_err_set(err, LOCO_EINVAL,
                            "export: %s is the same file as its source %s (a hard link or symlink); writing it would "
                            "change the base model: remove it or choose another folder",
                            dst, src);
    FILE *in = fopen(src, "rb");
    if (!in) return loco_err_set(err, LOCO_EIO, "export: cannot read %s: %s", src, strerror(errno));
    loco_out_file out;
    loco_status st = loco_out_file_open(&out, dst, err);
    if (st) {
        fclose(in);
        return loco_err_prefix(err, "export");
    }
    char buf[65536];
    size_t r;
    while (!st && (r = fread(buf, 1, sizeof buf, in)) > 0) st = loco_out_file_write(&out, buf, r, err);
    if (!st && ferror(in)) st = loco_err_set(err, LOCO_EIO, "export: reading %s failed", src);
    fclose(in);
    if (st) {
        loco_out_file_abort(&out);
        return st;
    }
    return loco_out_file_commit(&out, err);
}

static int is_regular(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The folder a component folder's files may really live in: the model folder that holds it
 * (its parent), or, for a snapshot of the Hugging Face cache (<repo>/snapshots/<rev>/<component>,
 * whose files are symlinks to <repo>/blobs), the repo folder. 0 ok, -1 cannot resolve. */
static int files_root(const char *component_dir, char *root, size_t size) {
    char parent[4200], real[PATH_MAX];
    snprintf(parent, sizeof parent, "%s/..", component_dir);
    if (!realpath(parent, real)) return -1;
    char *slash = strrchr(real, '/');
    if (slash && slash > real) {
        *slash = 0;
        const char *up = strrchr(real, '/');
        if (up && strcmp(up + 1, "snapshots") == 0) { /* real = <repo>/snapshots */
            char *repo_end = strrchr(real, '/');
            *repo_end = 0;
            snprintf(root, size, "%s", real[0] ? real : "/");
            return 0;
        }
        *slash = '/';
    }
    snprintf(root, size, "%s", real);
    return 0;
}

/* Whether path resolves to a file inside root: an export copies a model's files into artifacts
 * any key may download, so a symlink in a model folder must not reach a file outside it (a
 * "notes.txt" linked to /etc/passwd would otherwise be served). */
static int resolves_inside(const char *path, const char *root) {
    char real[PATH_MAX];
    if (!realpath(path, real)) return 0;
    size_t n = strlen(root);
    return strcmp(root, "/") == 0 || (strncmp(real, root, n) == 0 && real[n] == '/');
}

/* Every regular file of a folder that resolves inside the model (no README); vocab.json/merges.txt
 * from ../clip when the folder shares them (the bundled clip-pad-bang configuration). */
static loco_status copy_folder(const export_ctx *c, const char *src, const char *dst, int tokenizer, loco_err *err) {
    loco_status st = mkdirs(c, dst, err);
    if (st) return st;
    char root[PATH_MAX];
    if (files_root(src, root, sizeof root))
        return loco_err_set(err, LOCO_EIO, "export: cannot resolve the folder of %s: %s", src, strerror(errno));
    DIR *d = opendir(src);
    if (!d) return loco_err_set(err, LOCO_EIO, "export: cannot list %s: %s", src, strerror(errno));
    struct dirent *e;
    char a[4200], b[4200];
    while (!st && (e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "README.md") == 0) continue;
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        if (!is_regular(a) || !resolves_inside(a, root)) continue;
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        st = copy_file(a, b, err);
    }
    closedir(d);
    static const char *const shared[] = {"vocab.json", "merges.txt"};
    for (int i = 0; !st && tokenizer && i < 2; i++) {
        snprintf(a, sizeof a, "%s/%s", src, shared[i]);
        if (is_regular(a) && resolves_inside(a, root)) continue;
        snprintf(a, sizeof a, "%s/../clip/%s", src, shared[i]);
        snprintf(b, sizeof b, "%s/%s", dst, shared[i]);
        if (!is_regular(a) || !resolves_inside(a, root)) return loco_err_set(err, LOCO_ENOTFOUND, "export: tokenizer folder %s has no %s", src, shared[i]);
        st = copy_file(a, b, err);
    }
    return st;
}

static loco_dtype export_dtype(loco_export_dtype e, loco_dtype src) {
    switch (e) {
    case LOCO_EXPORT_F32: return LOCO_F32;
    case LOCO_EXPORT_F16: return LOCO_F16;
    case LOCO_EXPORT_BF16: return LOCO_BF16;
    default: return src;
    }
}

static const loco_variant_change *find_change(const loco_pipeline_variant *v, loco_component c, const char *name) {
    for (int i = 0; i < loco_pipeline_variant_num_changes(v); i++) {
        const loco_variant_change *ch = loco_pipeline_variant_change(v, i);
        if (ch->component == c && strcmp(ch->name, name) == 0) return ch;
    }
    return NULL;
}

/* One model component's weights ("unet", "vae", "text_encoder", ...), the variant's changes
 * swapped in (comp < 0: a component variants never change). */
static loco_status write_weights(const export_ctx *c, const char *cname, int comp, loco_err *err) {
    const loco_pipeline_variant *v = c->v;
    loco_weights *w = NULL;
    loco_status st = loco_model_files_weights(c->mf, cname, &w, err);
    if (st) return st;
    const size_t n = loco_weights_count(w);
    loco_stored_tensor *t = calloc(n ? n : 1, sizeof *t);
    void **owned = calloc(n ? n : 1, sizeof *owned);
    char d[4096], path[4200], src[4200];
    if (!t || !owned) {
        st = loco_err_set(err, LOCO_ENOMEM, "export: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const loco_stored_tensor *s = loco_weights_at(w, i);
        const loco_variant_change *ch = comp >= 0 ? find_change(v, (loco_component)comp, s->name) : NULL;
        t[i] = *s;
        if (!ch && (!loco_dtype_is_float(s->dtype) || export_dtype(c->dtype, s->dtype) == s->dtype)) continue;
        const loco_dtype to = loco_dtype_is_float(s->dtype) ? export_dtype(c->dtype, s->dtype) : s->dtype;
        const int64_t numel = loco_stored_numel(s);
        float *f32 = malloc((size_t)(numel ? numel : 1) * sizeof *f32);
        void *out = malloc((size_t)(numel ? numel : 1) * loco_dtype_size(to));
        if (!f32 || !out) {
            free(f32);
            free(out);
            st = loco_err_set(err, LOCO_ENOMEM, "export: out of memory for '%s'", s->name);
            goto done;
        }
        if (ch) memcpy(f32, ch->data, (size_t)numel * sizeof *f32);
        else if ((st = loco_convert_to_f32(f32, s->data, s->dtype, (size_t)numel))) {
            free(f32);
            free(out);
            st = loco_err_set(err, LOCO_EUNSUPPORTED, "export: cannot convert '%s' (%s)", s->name, loco_dtype_name(s->dtype));
            goto done;
        }
        st = loco_convert_from_f32(out, to, f32, (size_t)numel);
        free(f32);
        if (st) {
            free(out);
            st = loco_err_set(err, LOCO_EUNSUPPORTED, "export: cannot write '%s' as %s", s->name, loco_dtype_name(to));
            goto done;
        }
        owned[i] = out;
        t[i].data = out;
        t[i].dtype = to;
        t[i].nbytes = (size_t)numel * loco_dtype_size(to);
    }
    snprintf(d, sizeof d, "%s/%s", c->dir, cname);
    if ((st = mkdirs(c, d, err))) goto done;
    /* diffusers models and transformers models name their weight files differently */
    snprintf(path, sizeof path, "%s/%s.safetensors", d, strncmp(cname, "text_encoder", 12) == 0 ? "model" : "diffusion_pytorch_model");
    const char *root = loco_model_files_config_root(c->mf);
    if (root) snprintf(src, sizeof src, "%s/%s", root, cname);
    if ((st = check_dest_file(c, root ? src : NULL, path, err))) goto done;
    st = loco_safetensors_write(path, t, n, (const char *const[]){"format", "pt", NULL}, err);
done:
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(t);
    loco_weights_free(w);
    return st;
}

loco_status loco_pipeline_variant_export_folder(const loco_pipeline_variant *v, const char *dir,
                                                loco_export_dtype dtype, loco_err *err) {
    if (!dir || !*dir) return loco_err_set(err, LOCO_EINVAL, "export: no folder given");
    if ((unsigned)dtype >= LOCO_EXPORT_DTYPE_COUNT) return loco_err_set(err, LOCO_EINVAL, "export: unknown dtype");
    if (loco_pipeline_variant_num_ablations(v) > 0)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "export: this variant has neuron ablations, which act on the conditional branch at "
                            "inference and have no diffusers weight form; export the delta file instead");
    const loco_pipeline *base = loco_pipeline_variant_base(v);
    loco_status st = loco_pipeline_export_folder_check(base, dir, err);
    if (st) return st;
    export_ctx c = {.v = v, .dir = dir, .dtype = dtype};
    export_sources(base->files, &c);
    const loco_model_files *mf = base->files;
    if ((st = mkdirs(&c, dir, err))) return st;
    json_t *index = json_deep_copy(loco_model_files_index(mf));
    if (!json_is_object(index)) {
        json_decref(index);
        return loco_err_set(err, LOCO_EFORMAT, "export: the model has no model_index.json");
    }
    const char *key;
    json_t *val;
    void *tmp;
    json_object_foreach_safe(index, tmp, key, val) {
        if (key[0] == '_' || !json_is_array(val) || json_is_null(json_array_get(val, 1))) continue;
        loco_component comp;
        char sub[4200];
        if (loco_component_from_name(key, &comp) == 0 || strcmp(key, "vae") == 0) {
            const json_t *cfg = loco_model_files_config(mf, key);
            if (!cfg) {
                st = loco_err_set(err, LOCO_ENOTFOUND, "export: no config for %s", key);
                break;
            }
            if ((st = write_json(&c, cfg, key, "config.json", err))) break;
            if ((st = write_weights(&c, key, strcmp(key, "vae") == 0 ? -1 : (int)comp, err))) break;
        } else if (strcmp(key, "scheduler") == 0) {
            const json_t *cfg = loco_model_files_config(mf, "scheduler");
            if (!cfg || (st = write_json(&c, cfg, "scheduler", "scheduler_config.json", err))) {
                if (!cfg) st = loco_err_set(err, LOCO_ENOTFOUND, "export: no scheduler config");
                break;
            }
        } else if (strcmp(key, "tokenizer") == 0 || strcmp(key, "tokenizer_2") == 0) {
            const char *src = loco_model_files_tokenizer_dir(mf, key);
            if (!src) {
                st = loco_err_set(err, LOCO_ENOTFOUND, "export: no %s folder", key);
                break;
            }
            snprintf(sub, sizeof sub, "%s/%s", dir, key);
            if ((st = copy_folder(&c, src, sub, 1, err))) break;
        } else {
            /* components loco does not run (safety checker, feature extractor): copied from a
             * diffusers folder as they are, else left out of the index */
            char src[4200];
            snprintf(src, sizeof src, "%s/%s", loco_model_files_path(mf), key);
            struct stat sb;
            if (!loco_model_files_is_single_file(mf) && stat(src, &sb) == 0 && S_ISDIR(sb.st_mode)) {
                snprintf(sub, sizeof sub, "%s/%s", dir, key);
                if ((st = copy_folder(&c, src, sub, 0, err))) break;
            } else {
                json_object_set_new(index, key, json_pack("[nn]"));
            }
        }
    }
    if (!st) st = write_json(&c, index, NULL, "model_index.json", err);
    json_decref(index);
    return st;
}
