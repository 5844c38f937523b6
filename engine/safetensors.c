/* safetensors.c: the safetensors reader (mmap + full header validation) and the atomic writer.
 *
 * The header is untrusted input: every number in it is checked before it is used to form a
 * pointer, so a corrupt or hostile file gives LOCO_EFORMAT naming the file, never a crash. */
#include "safetensors.h"
#include "file_out.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The official reader's cap on the JSON header (safetensors MAX_HEADER_SIZE): a larger claim is
 * either corruption or an attempt to make us allocate without bound. */
#define ST_MAX_HEADER ((uint64_t)100000000)

typedef struct st_meta {
    char *key;
    char *value;
} st_meta;

struct loco_safetensors {
    char *path;
    void *map; /* whole-file mapping, NULL for an empty mapping */
    size_t map_size;
    loco_stored_tensor *tensors; /* sorted by name */
    size_t n;
    char *names; /* all tensor names, NUL-separated, owned */
    st_meta *meta;
    size_t n_meta;
};

int64_t loco_stored_numel(const loco_stored_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* ---- reader ------------------------------------------------------------------------------ */

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const loco_stored_tensor *)a)->name, ((const loco_stored_tensor *)b)->name);
}

typedef struct st_span {
    uint64_t begin, end;
    const char *name;
} st_span;

static int cmp_span(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* A JSON integer that fits in [0, max]; jansson already rejects integers beyond int64. */
static int json_u64(const json_t *v, uint64_t max, uint64_t *out) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0 || (uint64_t)x > max) return -1;
    *out = (uint64_t)x;
    return 0;
}

/* Parse one tensor entry into t (name set by the caller); data_len is the size of the data
 * buffer. Errors are formatted with the file path and tensor name. */
static loco_status parse_entry(const char *path, const char *name, const json_t *entry, const uint8_t *data,
                               uint64_t data_len, loco_stored_tensor *t, st_span *span, loco_err *err) {
    if (!json_is_object(entry))
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': entry is not a JSON object", path, name);
    const json_t *jd = json_object_get(entry, "dtype");
    const json_t *js = json_object_get(entry, "shape");
    const json_t *jo = json_object_get(entry, "data_offsets");
    if (!json_is_string(jd))
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", path, name);
    if (loco_dtype_from_name(json_string_value(jd), &t->dtype) != 0)
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': unknown dtype \"%.40s\"", path, name,
                            json_string_value(jd));
    if (!json_is_array(js))
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': missing or non-array \"shape\"", path, name);
    size_t nd = json_array_size(js);
    if (nd > LOCO_MAX_DIMS)
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': rank %zu exceeds the maximum of %d", path, name, nd,
                            LOCO_MAX_DIMS);
    t->ndim = (int)nd;
    /* numel * size must not wrap: bound every partial product by the data buffer length, which
     * the byte count has to equal anyway (a zero dimension makes any later product zero). */
    uint64_t numel = 1;
    int has_zero = 0;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (json_u64(json_array_get(js, i), (uint64_t)INT64_MAX, &d) != 0)
            return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                                name, i);
        /* beside a zero the product stays 0 whatever this is, and code that walks one dimension
         * of an empty tensor ([2^63 - 1, 0]) would spin for ever: no real tensor comes near */
        if (d > LOCO_SAFETENSORS_MAX_DIM)
            return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': shape[%zu] = %llu is larger than %llu", path, name,
                                i, (unsigned long long)d, (unsigned long long)LOCO_SAFETENSORS_MAX_DIM);
        t->shape[i] = (int64_t)d;
        if (d == 0) has_zero = 1;
        if (!has_zero && __builtin_mul_overflow(numel, d, &numel))
            return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': shape overflows the element count", path, name);
    }
    for (size_t i = nd; i < LOCO_MAX_DIMS; i++) t->shape[i] = 0;
    if (has_zero) numel = 0;
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)loco_dtype_size(t->dtype), &nbytes))
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': shape overflows the byte count", path, name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", path, name);
    uint64_t b, e;
    if (json_u64(json_array_get(jo, 0), UINT64_MAX, &b) != 0 || json_u64(json_array_get(jo, 1), UINT64_MAX, &e) != 0)
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': data_offsets must be non-negative integers", path,
                            name);
    if (e < b)
        return loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s': data_offsets end %llu is before begin %llu", path,
                            name, (unsigned long long)e, (unsigned long long)b);
    if (e > data_len)
        return loco_err_set(err, LOCO_EFORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu] run past the data buffer (%llu bytes; file "
                            "truncated?)",
                            path, name, (unsigned long long)b, (unsigned long long)e, (unsigned long long)data_len);
    if (e - b != nbytes)
        return loco_err_set(err, LOCO_EFORMAT,
                            "%s: tensor '%s': data_offsets span %llu bytes but shape and dtype %s need %llu", path,
                            name, (unsigned long long)(e - b), loco_dtype_name(t->dtype), (unsigned long long)nbytes);
    t->data = data + b;
    t->nbytes = (size_t)nbytes;
    span->begin = b;
    span->end = e;
    span->name = name;
    return LOCO_OK;
}

static loco_status parse_metadata(loco_safetensors *f, const json_t *m, loco_err *err) {
    if (!json_is_object(m))
        return loco_err_set(err, LOCO_EFORMAT, "%s: \"__metadata__\" is not a JSON object", f->path);
    size_t n = json_object_size(m);
    f->meta = calloc(n ? n : 1, sizeof *f->meta);
    if (!f->meta) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory reading metadata", f->path);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m, k, v) {
        if (!json_is_string(v))
            return loco_err_set(err, LOCO_EFORMAT, "%s: \"__metadata__\" value of '%s' is not a string", f->path, k);
        st_meta *e = &f->meta[f->n_meta];
        e->key = strdup(k);
        e->value = strdup(json_string_value(v));
        if (!e->key || !e->value) {
            free(e->key);
            free(e->value);
            return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory reading metadata", f->path);
        }
        f->n_meta++;
    }
    return LOCO_OK;
}

/* Validate the JSON header and fill f->tensors. */
static loco_status parse_header(loco_safetensors *f, const char *json_text, size_t json_len, const uint8_t *data,
                                uint64_t data_len, loco_err *err) {
    json_error_t jerr;
    json_t *root = json_loadb(json_text, json_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return loco_err_set(err, LOCO_EFORMAT, "%s: header is not valid JSON (%s at byte %d)", f->path, jerr.text,
                            jerr.position);
    loco_status st = LOCO_OK;
    st_span *spans = NULL;
    if (!json_is_object(root)) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: header is not a JSON object", f->path);
        goto done;
    }
    size_t total = json_object_size(root);
    const json_t *meta = json_object_get(root, "__metadata__");
    size_t n = total - (meta ? 1 : 0);
    if (meta && (st = parse_metadata(f, meta, err)) != LOCO_OK) goto done;

    /* Names are copied into one block so the tensors stay valid after the JSON is freed. */
    size_t names_len = 0;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") != 0) names_len += strlen(k) + 1;
    }
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    spans = calloc(n ? n : 1, sizeof *spans);
    f->names = malloc(names_len ? names_len : 1);
    if (!f->tensors || !spans || !f->names) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory for %zu tensor entries", f->path, n);
        goto done;
    }
    char *np = f->names;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") == 0) continue;
        size_t len = strlen(k) + 1;
        memcpy(np, k, len);
        loco_stored_tensor *t = &f->tensors[f->n];
        t->name = np;
        np += len;
        st = parse_entry(f->path, t->name, v, data, data_len, t, &spans[f->n], err);
        if (st != LOCO_OK) goto done;
        f->n++;
    }
    /* No two non-empty tensors may share bytes: after sorting by begin, each must start at or
     * after the end of the furthest-reaching earlier one. */
    qsort(spans, f->n, sizeof *spans, cmp_span);
    uint64_t reach = 0;
    const char *reach_name = NULL;
    for (size_t i = 0; i < f->n; i++) {
        if (spans[i].end == spans[i].begin) continue;
        if (reach_name && spans[i].begin < reach) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: tensors '%s' and '%s' overlap in the data buffer", f->path,
                              reach_name, spans[i].name);
            goto done;
        }
        reach = spans[i].end;
        reach_name = spans[i].name;
    }
    qsort(f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
done:
    free(spans);
    json_decref(root);
    return st;
}

loco_status loco_safetensors_open(const char *path, loco_safetensors **out, loco_err *err) {
    *out = NULL;
    if (!path) return loco_err_set(err, LOCO_EINVAL, "safetensors: NULL path");
    loco_safetensors *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", path);
    }
    loco_status st = LOCO_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = loco_err_set(err, errno == ENOENT ? LOCO_ENOTFOUND : LOCO_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = loco_err_set(err, LOCO_EIO, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: file is %llu bytes, too short for the 8-byte header length", path,
                          (unsigned long long)size);
        close(fd);
        goto fail;
    }
    f->map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file alive */
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        st = loco_err_set(err, LOCO_EIO, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    f->map_size = (size_t)size;
    const uint8_t *bytes = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i]; /* little-endian regardless of host */
    if (hlen > ST_MAX_HEADER) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: header length %llu exceeds the 100 MB limit", path,
                          (unsigned long long)hlen);
        goto fail;
    }
    if (hlen > size - 8) {
        st = loco_err_set(err, LOCO_EFORMAT,
                          "%s: header length %llu runs past the end of the file (%llu bytes; truncated?)", path,
                          (unsigned long long)hlen, (unsigned long long)size);
        goto fail;
    }
    if (hlen < 2 || bytes[8] != '{') {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: header does not start with a JSON object", path);
        goto fail;
    }
    st = parse_header(f, (const char *)bytes + 8, (size_t)hlen, bytes + 8 + hlen, size - 8 - hlen, err);
    if (st != LOCO_OK) goto fail;
    *out = f;
    return LOCO_OK;
fail:
    loco_safetensors_close(f);
    return st;
}

void loco_safetensors_close(loco_safetensors *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_size);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->meta);
    free(f->tensors);
    free(f->names);
    free(f->path);
    free(f);
}

const char *loco_safetensors_path(const loco_safetensors *f) { return f ? f->path : NULL; }
size_t loco_safetensors_count(const loco_safetensors *f) { return f ? f->n : 0; }

const loco_stored_tensor *loco_safetensors_at(const loco_safetensors *f, size_t i) {
    return f && i < f->n ? &f->tensors[i] : NULL;
}

const loco_stored_tensor *loco_safetensors_find(const loco_safetensors *f, const char *name) {
    if (!f || !name) return NULL;
    loco_stored_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
}

const char *loco_safetensors_metadata(const loco_safetensors *f, const char *key) {
    if (!f || !key) return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

/* ---- writer ------------------------------------------------------------------------------ */

static int cmp_tensor_layout(const void *a, const void *b) {
    const loco_stored_tensor *x = *(const loco_stored_tensor *const *)a, *y = *(const loco_stored_tensor *const *)b;
    size_t sx = loco_dtype_size(x->dtype), sy = loco_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    return strcmp((*(const loco_stored_tensor *const *)a)->name, (*(const loco_stored_tensor *const *)b)->name);
}

/* Build the header text (without padding); tensors are laid out in the order of `order`. */
static loco_status build_header(const char *path, const loco_stored_tensor *const *order, size_t n,
                                const char *const *metadata_kv, char **out, loco_err *err) {
    json_t *root = json_object();
    if (!root) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory building the header", path);
    loco_status st = LOCO_OK;
    if (metadata_kv && metadata_kv[0]) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m) != 0) goto oom;
        for (size_t i = 0; metadata_kv[i]; i += 2) {
            if (!metadata_kv[i + 1]) {
                st = loco_err_set(err, LOCO_EINVAL, "%s: metadata key '%s' has no value", path, metadata_kv[i]);
                goto done;
            }
            if (json_object_set_new(m, metadata_kv[i], json_string(metadata_kv[i + 1])) != 0) {
                st = loco_err_set(err, LOCO_EINVAL, "%s: metadata key '%s' or its value is not valid UTF-8", path,
                                  metadata_kv[i]);
                goto done;
            }
        }
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        const loco_stored_tensor *t = order[i];
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        if (!e || !shape || !offs) {
            json_decref(e);
            json_decref(shape);
            json_decref(offs);
            goto oom;
        }
        json_object_set_new(e, "dtype", json_string(loco_dtype_name(t->dtype)));
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(e, "shape", shape);
        json_array_append_new(offs, json_integer((json_int_t)offset));
        json_array_append_new(offs, json_integer((json_int_t)(offset + t->nbytes)));
        json_object_set_new(e, "data_offsets", offs);
        offset += t->nbytes;
        if (json_object_set_new(root, t->name, e) != 0) {
            st = loco_err_set(err, LOCO_EINVAL, "%s: tensor name '%s' is not valid UTF-8", path, t->name);
            goto done;
        }
    }
    *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!*out) goto oom;
    goto done;
oom:
    st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory building the header", path);
done:
    json_decref(root);
    return st;
}

static loco_status check_tensors(const char *path, const loco_stored_tensor *tensors, size_t n,
                                 const loco_stored_tensor **order, loco_err *err) {
    for (size_t i = 0; i < n; i++) {
        const loco_stored_tensor *t = &tensors[i];
        if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0)
            return loco_err_set(err, LOCO_EINVAL, "%s: tensor %zu has an empty or reserved name", path, i);
        if ((unsigned)t->dtype >= LOCO_DTYPE_COUNT)
            return loco_err_set(err, LOCO_EINVAL, "%s: tensor '%s' has an invalid dtype", path, t->name);
        if (t->ndim < 0 || t->ndim > LOCO_MAX_DIMS)
            return loco_err_set(err, LOCO_EINVAL, "%s: tensor '%s' has rank %d", path, t->name, t->ndim);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0)
                return loco_err_set(err, LOCO_EINVAL, "%s: tensor '%s' has a negative dimension", path, t->name);
            if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
                return loco_err_set(err, LOCO_EINVAL, "%s: tensor '%s': shape overflows", path, t->name);
        }
        uint64_t need;
        if (__builtin_mul_overflow(numel, (uint64_t)loco_dtype_size(t->dtype), &need) || need != t->nbytes)
            return loco_err_set(err, LOCO_EINVAL, "%s: tensor '%s' has nbytes %zu but its shape and dtype need %llu",
                                path, t->name, t->nbytes, (unsigned long long)need);
        if (t->nbytes && !t->data) return loco_err_set(err, LOCO_EINVAL, "%s: tensor '%s' has no data", path, t->name);
        order[i] = t;
    }
    qsort(order, n, sizeof *order, cmp_tensor_ptr_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(order[i - 1]->name, order[i]->name) == 0)
            return loco_err_set(err, LOCO_EINVAL, "%s: tensor name '%s' appears twice", path, order[i]->name);
    return LOCO_OK;
}

loco_status loco_safetensors_write(const char *path, const loco_stored_tensor *tensors, size_t n,
                                   const char *const *metadata_kv, loco_err *err) {
    if (!path || (n && !tensors)) return loco_err_set(err, LOCO_EINVAL, "safetensors write: NULL argument");
    const loco_stored_tensor **order = calloc(n ? n : 1, sizeof *order);
    if (!order) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", path);
    char *header = NULL;
    loco_out_file out;
    loco_status st = check_tensors(path, tensors, n, order, err);
    if (st != LOCO_OK) goto done;
    qsort(order, n, sizeof *order, cmp_tensor_layout);
    if ((st = build_header(path, order, n, metadata_kv, &header, err)) != LOCO_OK) goto done;
    size_t hlen = strlen(header);
    /* Pad with spaces so the data buffer starts 8-byte aligned (as the official serializer
     * does): every tensor of our files can then be read in place from the mapping. */
    size_t padded = (hlen + 7) & ~(size_t)7;
    char *h2 = realloc(header, padded + 1);
    if (!h2) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    header = h2;
    memset(header + hlen, ' ', padded - hlen);
    header[padded] = 0;

    /* a regular file atomically, a device or FIFO in place (engine/file_out.h) */
    if ((st = loco_out_file_open(&out, path, err)) != LOCO_OK) goto done;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    st = loco_out_file_write(&out, len8, 8, err);
    if (!st) st = loco_out_file_write(&out, header, padded, err);
    for (size_t i = 0; !st && i < n; i++)
        if (order[i]->nbytes) st = loco_out_file_write(&out, order[i]->data, order[i]->nbytes, err);
    if (st)
        loco_out_file_abort(&out);
    else
        st = loco_out_file_commit(&out, err);
done:
    free(header);
    free(order);
    return st;
}
