/* weights.c: a named set of stored tensors with hashed lookup, opened from a component folder
 * (plain, variant or sharded files) or built entry by entry by the single-file mapper. */
#include "weights.h"
#include "keyed_hash.h"
#include "random_weights.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct w_entry {
    loco_stored_tensor t; /* t.name points at name */
    char *name;
    void *owned; /* data owned by the set, or NULL when t.data points into a file mapping */
} w_entry;

struct loco_weights {
    char *source;
    /* Entries are allocated one by one so that pointers handed out by get/at stay valid while
     * more tensors are added. */
    w_entry **e;
    size_t n, cap;
    uint32_t *slots; /* open addressing: entry index + 1, 0 = empty */
    size_t nslots;   /* a power of two, kept at least twice n */
    /* Names come from file headers anyone can write; a secret per-set key keeps them from being
     * chosen to share one probe chain (engine/keyed_hash.h). */
    loco_hash_key key;
    loco_safetensors **files;
    size_t nfiles, capfiles;
    /* Synthetic sets (benchmarks): a required tensor that is absent is made on the spot with
     * deterministic random values (engine/random_weights.h), so real-size models need no files. */
    int random;
    uint64_t random_seed;
};

/* The slot holding `name`, or the empty slot where it would go. */
static size_t find_slot(const loco_weights *w, const char *name) {
    size_t mask = w->nslots - 1, i = (size_t)loco_siphash(&w->key, name, strlen(name)) & mask;
    while (w->slots[i] && strcmp(w->e[w->slots[i] - 1]->name, name) != 0) i = (i + 1) & mask;
    return i;
}

static int rehash(loco_weights *w, size_t nslots) {
    uint32_t *s = calloc(nslots, sizeof *s);
    if (!s) return -1;
    free(w->slots);
    w->slots = s;
    w->nslots = nslots;
    for (size_t k = 0; k < w->n; k++) w->slots[find_slot(w, w->e[k]->name)] = (uint32_t)(k + 1);
    return 0;
}

loco_status loco_weights_new_empty(const char *source, loco_weights **out, loco_err *err) {
    *out = NULL;
    loco_weights *w = calloc(1, sizeof *w);
    if (w) loco_hash_key_random(&w->key, w);
    if (!w || !(w->source = strdup(source ? source : "(weights)")) || rehash(w, 64) != 0) {
        if (w) free(w->source);
        free(w);
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", source ? source : "weights");
    }
    *out = w;
    return LOCO_OK;
}

void loco_weights_free(loco_weights *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->e[i]->name);
        free(w->e[i]->owned);
        free(w->e[i]);
    }
    free(w->e);
    free(w->slots);
    for (size_t i = 0; i < w->nfiles; i++) loco_safetensors_close(w->files[i]);
    free(w->files);
    free(w->source);
    free(w);
}

const char *loco_weights_source(const loco_weights *w) { return w ? w->source : NULL; }
size_t loco_weights_count(const loco_weights *w) { return w ? w->n : 0; }
const loco_stored_tensor *loco_weights_at(const loco_weights *w, size_t i) {
    return w && i < w->n ? &w->e[i]->t : NULL;
}

const loco_stored_tensor *loco_weights_get(const loco_weights *w, const char *name) {
    if (!w || !name) return NULL;
    size_t i = find_slot(w, name);
    return w->slots[i] ? &w->e[w->slots[i] - 1]->t : NULL;
}

loco_status loco_weights_add(loco_weights *w, const char *name, const loco_stored_tensor *src, void *owned_data,
                             loco_err *err) {
    if (!w || !name || !src) {
        free(owned_data);
        return loco_err_set(err, LOCO_EINVAL, "weights_add: NULL argument");
    }
    if (loco_weights_get(w, name)) {
        free(owned_data);
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' appears twice", w->source, name);
    }
    if (w->n + 1 > UINT32_MAX - 1) {
        free(owned_data);
        return loco_err_set(err, LOCO_EINVAL, "%s: too many tensors", w->source);
    }
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        w_entry **e = realloc(w->e, cap * sizeof *e);
        if (!e) goto oom;
        w->e = e;
        w->cap = cap;
    }
    if (2 * (w->n + 1) > w->nslots && rehash(w, w->nslots * 2) != 0) goto oom;
    w_entry *en = calloc(1, sizeof *en);
    if (!en || !(en->name = strdup(name))) {
        free(en);
        goto oom;
    }
    en->t = *src;
    en->t.name = en->name;
    en->owned = owned_data;
    if (owned_data) en->t.data = owned_data;
    w->e[w->n] = en;
    w->slots[find_slot(w, name)] = (uint32_t)(w->n + 1);
    w->n++;
    return LOCO_OK;
oom:
    free(owned_data);
    return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory adding '%s'", w->source, name);
}

/* The contract gives adopting no error path; it can only fail for lack of memory, and then the
 * mapping is deliberately leaked, since tensors may already point into it. */
void loco_weights_adopt_file(loco_weights *w, loco_safetensors *f) {
    if (!w || !f) return;
    if (w->nfiles == w->capfiles) {
        size_t cap = w->capfiles ? w->capfiles * 2 : 8;
        loco_safetensors **fs = realloc(w->files, cap * sizeof *fs);
        if (!fs) return;
        w->files = fs;
        w->capfiles = cap;
    }
    w->files[w->nfiles++] = f;
}

loco_status loco_weights_rename(loco_weights *w, loco_weights_rename_fn fn, void *ctx, loco_err *err) {
    if (!w || !fn) return loco_err_set(err, LOCO_EINVAL, "weights_rename: NULL argument");
    loco_status st = LOCO_OK;
    char buf[512];
    for (size_t i = 0; i < w->n && st == LOCO_OK; i++) {
        buf[0] = 0;
        int r = fn(w->e[i]->name, buf, sizeof buf, ctx);
        if (r < 0) {
            st = loco_err_set(err, LOCO_EINVAL, "%s: new name for '%s' does not fit", w->source, w->e[i]->name);
        } else if (r > 0) {
            char *nn = strdup(buf);
            if (!nn) {
                st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory renaming tensors", w->source);
                break;
            }
            free(w->e[i]->name);
            w->e[i]->name = nn;
            w->e[i]->t.name = nn;
        }
    }
    /* Rebuild the index (also after a failure, so lookups stay consistent) and catch two
     * tensors that now share a name. */
    memset(w->slots, 0, w->nslots * sizeof *w->slots);
    for (size_t k = 0; k < w->n; k++) {
        size_t s = find_slot(w, w->e[k]->name);
        if (w->slots[s]) {
            if (st == LOCO_OK)
                st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' appears twice after renaming", w->source,
                                  w->e[k]->name);
            continue;
        }
        w->slots[s] = (uint32_t)(k + 1);
    }
    return st;
}

static loco_status synthesize(loco_weights *w, const char *name, int ndim, const int64_t *shape, loco_err *err) {
    loco_stored_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = LOCO_F16; /* half the host memory of f32 for SD-XL-size sets */
    t.ndim = ndim;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = shape[i];
        numel *= (size_t)shape[i];
    }
    t.nbytes = numel * 2;
    void *data = malloc(t.nbytes ? t.nbytes : 1);
    if (!data) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory for random tensor '%s'", w->source, name);
    loco_random_weights_fill(name, w->random_seed, ndim, shape, data);
    t.data = data;
    return loco_weights_add(w, name, &t, data, err);
}

loco_status loco_weights_new_random(const char *source, uint64_t seed, loco_weights **out, loco_err *err) {
    loco_status st = loco_weights_new_empty(source, out, err);
    if (st) return st;
    (*out)->random = 1;
    (*out)->random_seed = seed;
    return LOCO_OK;
}

loco_status loco_weights_require(const loco_weights *w, const char *name, int ndim, const int64_t *shape,
                                 const loco_stored_tensor **out, loco_err *err) {
    if (out) *out = NULL;
    if (!w || !name) return loco_err_set(err, LOCO_EINVAL, "weights_require: NULL argument");
    const loco_stored_tensor *t = loco_weights_get(w, name);
    if (!t && w->random && ndim >= 0) {
        /* The set is logically the function name -> tensor; filling its cache is not a change. */
        loco_status st = synthesize((loco_weights *)w, name, ndim, shape, err);
        if (st) return st;
        t = loco_weights_get(w, name);
    }
    if (!t) return loco_err_set(err, LOCO_ENOTFOUND, "%s: tensor '%s' is missing", w->source, name);
    if (ndim >= 0) {
        int same = t->ndim == ndim;
        for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
        if (!same) {
            char want[160], have[160];
            size_t a = 0, b = 0;
            a += (size_t)snprintf(want + a, sizeof want - a, "[");
            for (int i = 0; i < ndim && i < LOCO_MAX_DIMS && a < sizeof want; i++)
                a += (size_t)snprintf(want + a, sizeof want - a, "%s%lld", i ? ", " : "", (long long)shape[i]);
            if (a < sizeof want) snprintf(want + a, sizeof want - a, "]");
            b += (size_t)snprintf(have + b, sizeof have - b, "[");
            for (int i = 0; i < t->ndim && b < sizeof have; i++)
                b += (size_t)snprintf(have + b, sizeof have - b, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
            if (b < sizeof have) snprintf(have + b, sizeof have - b, "]");
            return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' has shape %s but %s was expected", w->source, name,
                                have, want);
        }
    }
    if (out) *out = t;
    return LOCO_OK;
}

/* ---- opening files ------------------------------------------------------------------------ */

/* Add every tensor of an opened file and take ownership of it (also on failure). */
static loco_status add_file(loco_weights *w, loco_safetensors *f, loco_err *err) {
    loco_weights_adopt_file(w, f);
    size_t n = loco_safetensors_count(f);
    for (size_t i = 0; i < n; i++) {
        const loco_stored_tensor *t = loco_safetensors_at(f, i);
        if (loco_weights_get(w, t->name))
            return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' is stored in more than one file (%s)", w->source,
                                t->name, loco_safetensors_path(f));
        loco_status st = loco_weights_add(w, t->name, t, NULL, err);
        if (st != LOCO_OK) return st;
    }
    return LOCO_OK;
}

loco_status loco_weights_open_files(const char *const *paths, int n, loco_weights **out, loco_err *err) {
    *out = NULL;
    if (!paths || n <= 0) return loco_err_set(err, LOCO_EINVAL, "weights_open_files: no files given");
    char source[1024];
    if (n == 1)
        snprintf(source, sizeof source, "%s", paths[0]);
    else
        snprintf(source, sizeof source, "%s (+%d more files)", paths[0], n - 1);
    loco_weights *w;
    loco_status st = loco_weights_new_empty(source, &w, err);
    if (st != LOCO_OK) return st;
    for (int i = 0; i < n; i++) {
        loco_safetensors *f;
        if ((st = loco_safetensors_open(paths[i], &f, err)) != LOCO_OK || (st = add_file(w, f, err)) != LOCO_OK) {
            loco_weights_free(w);
            return st;
        }
    }
    *out = w;
    return LOCO_OK;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* A shard name from an index must stay inside the component folder. */
static int shard_name_ok(const char *s) { return s[0] && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, ".."); }

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Open a sharded set through its index file (transformers/diffusers format:
 * {"metadata": {...}, "weight_map": {tensor: shard file}}). */
static loco_status open_index(const char *dir, const char *index_path, loco_weights **out, loco_err *err) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return loco_err_set(err, LOCO_EFORMAT, "%s: not valid JSON (%s, line %d)", index_path, jerr.text, jerr.line);
    loco_status st = LOCO_OK;
    loco_weights *w = NULL;
    const char **shards = NULL;
    loco_safetensors **files = NULL;
    size_t nshards = 0;
    char path[4096];
    const json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(map)) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: missing the \"weight_map\" object", index_path);
        goto done;
    }
    size_t nmap = json_object_size(map);
    shards = calloc(nmap ? nmap : 1, sizeof *shards);
    if (!shards) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", index_path);
        goto done;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)map, k, v) {
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
            st = loco_err_set(err, LOCO_EFORMAT,
                              "%s: weight_map entry '%s' must name a shard file in the same folder (no path "
                              "separators or \"..\")",
                              index_path, k);
            goto done;
        }
        shards[nshards++] = json_string_value(v);
    }
    /* Distinct shards, opened once each, in a stable order. */
    qsort(shards, nshards, sizeof *shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < nshards; i++)
        if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
    nshards = u;
    if ((st = loco_weights_new_empty(index_path, &w, err)) != LOCO_OK) goto done;
    files = calloc(nshards ? nshards : 1, sizeof *files);
    if (!files) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < nshards; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, shards[i]);
        loco_safetensors *f;
        if ((st = loco_safetensors_open(path, &f, err)) != LOCO_OK) {
            loco_err_prefix(err, "%s lists shard '%s'", index_path, shards[i]);
            goto done;
        }
        files[i] = f;
        if ((st = add_file(w, f, err)) != LOCO_OK) goto done;
    }
    json_object_foreach((json_t *)map, k, v) {
        const char **hit = bsearch(&(const char *){json_string_value(v)}, shards, nshards, sizeof *shards, cmp_str);
        if (!hit || !loco_safetensors_find(files[hit - shards], k)) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' is mapped to shard '%s', which does not contain it",
                              index_path, k, json_string_value(v));
            goto done;
        }
    }
    *out = w;
    w = NULL;
done:
    loco_weights_free(w);
    free(files); /* owned by w */
    free(shards);
    json_decref(root);
    return st;
}

/* Does `name` spell a variant of stem, and which? Recognises <stem>.<v>.safetensors,
 * <stem>.safetensors.index.<v>.json and <stem>.<v>.safetensors.index.json; shard files
 * (<stem>.<v>-00001-of-00002.safetensors) are not variants. Writes v into buf. */
static int variant_of(const char *name, const char *stem, char *buf, size_t n) {
    size_t sl = strlen(stem);
    if (strncmp(name, stem, sl) != 0 || name[sl] != '.') return 0;
    const char *rest = name + sl + 1;
    static const char *const idx = "safetensors.index.";
    const char *v = NULL;
    size_t vl = 0, rl = strlen(rest);
    if (strncmp(rest, idx, strlen(idx)) == 0) { /* safetensors.index.<v>.json */
        v = rest + strlen(idx);
        if (strlen(v) <= 5 || strcmp(v + strlen(v) - 5, ".json") != 0) return 0;
        vl = strlen(v) - 5;
    } else if (rl > 24 && strcmp(rest + rl - 23, ".safetensors.index.json") == 0) {
        v = rest;
        vl = rl - 23;
    } else if (rl > 12 && strcmp(rest + rl - 12, ".safetensors") == 0) {
        v = rest;
        vl = rl - 12;
    } else {
        return 0;
    }
    if (vl == 0 || vl >= n || memchr(v, '.', vl)) return 0;
    if (vl > 3 && memmem(v, vl, "-of-", 4)) return 0; /* a shard, not a variant */
    memcpy(buf, v, vl);
    buf[vl] = 0;
    return 1;
}

/* The only variant present in dir for stem, or an error when there are none or several. */
static loco_status find_single_variant(const char *dir, const char *stem, char *buf, size_t n, loco_err *err) {
    DIR *d = opendir(dir);
    if (!d)
        return loco_err_set(err, errno == ENOENT ? LOCO_ENOTFOUND : LOCO_EIO, "%s: cannot open folder: %s", dir,
                            strerror(errno));
    char found[128] = "", v[128];
    char others[512] = "";
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!variant_of(de->d_name, stem, v, sizeof v)) continue;
        if (count == 0) {
            snprintf(found, sizeof found, "%s", v);
            count = 1;
        } else if (strcmp(found, v) != 0 && !strstr(others, v)) {
            size_t l = strlen(others);
            snprintf(others + l, sizeof others - l, "%s%s", l ? ", " : "", v);
            count++;
        }
    }
    closedir(d);
    if (count == 0)
        return loco_err_set(err, LOCO_ENOTFOUND, "%s: no %s.safetensors (nor a variant or shard index) in the folder",
                            dir, stem);
    if (count > 1)
        return loco_err_set(err, LOCO_EINVAL, "%s: several weight variants (%s, %s); choose one", dir, found, others);
    if (strlen(found) >= n) return loco_err_set(err, LOCO_EINVAL, "%s: variant name too long", dir);
    snprintf(buf, n, "%s", found);
    return LOCO_OK;
}

loco_status loco_weights_open_dir(const char *dir, const char *stem, const char *variant, loco_weights **out,
                                  loco_err *err) {
    *out = NULL;
    if (!dir || !stem) return loco_err_set(err, LOCO_EINVAL, "weights_open_dir: NULL argument");
    if (variant && (!*variant || strchr(variant, '/') || strstr(variant, "..")))
        return loco_err_set(err, LOCO_EINVAL, "%s: invalid weight variant '%s'", dir, variant);
    char single[4096], idx_a[4096], idx_b[4096], v[128];
    if (!variant) {
        snprintf(single, sizeof single, "%s/%s.safetensors", dir, stem);
        snprintf(idx_a, sizeof idx_a, "%s/%s.safetensors.index.json", dir, stem);
        if (file_exists(single)) return loco_weights_open_files((const char *const[]){single}, 1, out, err);
        if (file_exists(idx_a)) return open_index(dir, idx_a, out, err);
        loco_status st = find_single_variant(dir, stem, v, sizeof v, err);
        if (st != LOCO_OK) return st;
        variant = v;
    }
    snprintf(single, sizeof single, "%s/%s.%s.safetensors", dir, stem, variant);
    snprintf(idx_a, sizeof idx_a, "%s/%s.safetensors.index.%s.json", dir, stem, variant);
    snprintf(idx_b, sizeof idx_b, "%s/%s.%s.safetensors.index.json", dir, stem, variant);
    if (file_exists(single)) return loco_weights_open_files((const char *const[]){single}, 1, out, err);
    if (file_exists(idx_a)) return open_index(dir, idx_a, out, err);
    if (file_exists(idx_b)) return open_index(dir, idx_b, out, err);
    return loco_err_set(err, LOCO_ENOTFOUND, "%s: no %s.%s.safetensors nor a sharded index for variant '%s'", dir, stem,
                        variant, variant);
}
