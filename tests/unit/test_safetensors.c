/* test_safetensors.c: the safetensors reader and writer: round trips, the on-disk layout, every
 * kind of corrupt header (each must be LOCO_EFORMAT naming the file) and a fuzz loop. */
#include <stdint.h>
#include <sys/mman.h>

#include "loco_test.h"
#include "safetensors.h"
#include "st_test_util.h"

static int write_bytes(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(buf, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

/* A raw file: 8-byte length `claimed` (or the real header length when claimed == UINT64_MAX),
 * the header text, then data_len bytes of data. */
static int write_raw(const char *path, const char *header, uint64_t claimed, size_t data_len) {
    size_t hl = strlen(header);
    uint64_t len = claimed == UINT64_MAX ? hl : claimed;
    size_t total = 8 + hl + data_len;
    uint8_t *b = calloc(1, total);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(len >> (8 * i));
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (uint8_t)i;
    int r = write_bytes(path, b, total);
    free(b);
    return r;
}

TEST(roundtrip_values_shapes_metadata) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    float w[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[4] = {loco_f32_to_f16(0.5f), loco_f32_to_f16(-2), loco_f32_to_f16(3), loco_f32_to_f16(1e-3f)};
    int64_t ids[3] = {7, -8, 9};
    float scalar = 42.0f;
    loco_stored_tensor ts[5] = {
        {.name = "z.weight", .dtype = LOCO_F32, .ndim = 2, .shape = {2, 3}, .data = w, .nbytes = sizeof w},
        {.name = "a.half", .dtype = LOCO_F16, .ndim = 1, .shape = {4}, .data = h, .nbytes = sizeof h},
        {.name = "m.ids", .dtype = LOCO_I64, .ndim = 1, .shape = {3}, .data = ids, .nbytes = sizeof ids},
        {.name = "scalar", .dtype = LOCO_F32, .ndim = 0, .data = &scalar, .nbytes = 4},
        {.name = "empty", .dtype = LOCO_BF16, .ndim = 2, .shape = {0, 5}, .data = NULL, .nbytes = 0},
    };
    const char *meta[] = {"format", "pt", "note", "ünïcode \"quoted\"", NULL};
    loco_err err = {0};
    CHECK_MSG(loco_safetensors_write(path, ts, 5, meta, &err) == LOCO_OK, "%s", err.msg);

    loco_safetensors *f;
    CHECK_MSG(loco_safetensors_open(path, &f, &err) == LOCO_OK, "%s", err.msg);
    CHECK(loco_safetensors_count(f) == 5);
    CHECK(strcmp(loco_safetensors_path(f), path) == 0);
    /* at() is sorted by name */
    for (size_t i = 1; i < 5; i++)
        CHECK(strcmp(loco_safetensors_at(f, i - 1)->name, loco_safetensors_at(f, i)->name) < 0);
    CHECK(loco_safetensors_at(f, 5) == NULL);
    const loco_stored_tensor *t = loco_safetensors_find(f, "z.weight");
    CHECK(t && t->dtype == LOCO_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
    CHECK(t->nbytes == sizeof w && memcmp(t->data, w, sizeof w) == 0);
    CHECK(loco_stored_numel(t) == 6);
    /* header padded and larger dtypes first: every tensor aligned to its element size */
    for (size_t i = 0; i < 5; i++) {
        const loco_stored_tensor *u = loco_safetensors_at(f, i);
        CHECK_MSG(((uintptr_t)u->data % loco_dtype_size(u->dtype)) == 0 || u->nbytes == 0, "%s", u->name);
    }
    t = loco_safetensors_find(f, "a.half");
    CHECK(t && t->dtype == LOCO_F16 && memcmp(t->data, h, sizeof h) == 0);
    t = loco_safetensors_find(f, "m.ids");
    CHECK(t && t->dtype == LOCO_I64 && memcmp(t->data, ids, sizeof ids) == 0);
    t = loco_safetensors_find(f, "scalar");
    CHECK(t && t->ndim == 0 && loco_stored_numel(t) == 1 && *(const float *)t->data == 42.0f);
    t = loco_safetensors_find(f, "empty");
    CHECK(t && t->ndim == 2 && t->shape[0] == 0 && t->nbytes == 0 && loco_stored_numel(t) == 0);
    CHECK(loco_safetensors_find(f, "missing") == NULL);
    CHECK(strcmp(loco_safetensors_metadata(f, "format"), "pt") == 0);
    CHECK(strcmp(loco_safetensors_metadata(f, "note"), "ünïcode \"quoted\"") == 0);
    CHECK(loco_safetensors_metadata(f, "absent") == NULL);
    loco_safetensors_close(f);
    st_rm_tree(dir);
}

TEST(writer_layout_is_official) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/b.safetensors", dir);
    uint8_t one = 1;
    loco_stored_tensor t = {.name = "x", .dtype = LOCO_U8, .ndim = 1, .shape = {1}, .data = &one, .nbytes = 1};
    loco_err err = {0};
    CHECK(loco_safetensors_write(path, &t, 1, NULL, &err) == LOCO_OK);
    size_t n;
    uint8_t *b = read_bytes(path, &n);
    CHECK(b && n >= 9);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | b[i];
    CHECK(hl % 8 == 0);
    CHECK(8 + hl + 1 == n);
    CHECK(b[8] == '{');
    /* the JSON is padded with spaces, never NULs */
    size_t end = 8 + hl;
    while (end > 8 && b[end - 1] == ' ') end--;
    CHECK(b[end - 1] == '}');
    CHECK(b[n - 1] == 1);
    free(b);
    /* nothing left behind: only the final file is in the folder (atomic write via a temp name) */
    DIR *d = opendir(dir);
    int files = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') files++;
    closedir(d);
    CHECK(files == 1);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0444) == 0444);
    st_rm_tree(dir);
}

TEST(writer_rejects_bad_input) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/c.safetensors", dir);
    float v[2] = {1, 2};
    loco_err err = {0};
    loco_stored_tensor dup[2] = {
        {.name = "x", .dtype = LOCO_F32, .ndim = 1, .shape = {1}, .data = v, .nbytes = 4},
        {.name = "x", .dtype = LOCO_F32, .ndim = 1, .shape = {1}, .data = v + 1, .nbytes = 4},
    };
    CHECK(loco_safetensors_write(path, dup, 2, NULL, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "twice") != NULL);
    loco_stored_tensor wrong = {.name = "y", .dtype = LOCO_F32, .ndim = 1, .shape = {3}, .data = v, .nbytes = 8};
    CHECK(loco_safetensors_write(path, &wrong, 1, NULL, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "'y'") != NULL);
    loco_stored_tensor reserved = {
        .name = "__metadata__", .dtype = LOCO_F32, .ndim = 1, .shape = {1}, .data = v, .nbytes = 4};
    CHECK(loco_safetensors_write(path, &reserved, 1, NULL, &err) == LOCO_EINVAL);
    const char *odd_meta[] = {"key", NULL};
    CHECK(loco_safetensors_write(path, dup, 1, odd_meta, &err) == LOCO_EINVAL);
    CHECK(access(path, F_OK) != 0); /* nothing written on failure */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.safetensors", dir);
    CHECK(loco_safetensors_write(nodir, dup, 1, NULL, &err) == LOCO_EIO);
    CHECK(strstr(err.msg, nodir) != NULL);
    st_rm_tree(dir);
}

TEST(writer_replaces_existing_file) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/d.safetensors", dir);
    float a = 1, b = 2;
    loco_stored_tensor t = {.name = "v", .dtype = LOCO_F32, .ndim = 1, .shape = {1}, .data = &a, .nbytes = 4};
    loco_err err = {0};
    CHECK(loco_safetensors_write(path, &t, 1, NULL, &err) == LOCO_OK);
    loco_safetensors *old;
    CHECK(loco_safetensors_open(path, &old, &err) == LOCO_OK);
    t.data = &b;
    CHECK(loco_safetensors_write(path, &t, 1, NULL, &err) == LOCO_OK);
    /* a reader of the old file keeps its (renamed-over) contents intact */
    CHECK(*(const float *)loco_safetensors_find(old, "v")->data == 1.0f);
    loco_safetensors *nw;
    CHECK(loco_safetensors_open(path, &nw, &err) == LOCO_OK);
    CHECK(*(const float *)loco_safetensors_find(nw, "v")->data == 2.0f);
    loco_safetensors_close(old);
    loco_safetensors_close(nw);
    st_rm_tree(dir);
}

TEST(open_missing_file) {
    loco_safetensors *f = (loco_safetensors *)1;
    loco_err err = {0};
    CHECK(loco_safetensors_open("/nonexistent/x.safetensors", &f, &err) == LOCO_ENOTFOUND);
    CHECK(f == NULL);
    CHECK(strstr(err.msg, "/nonexistent/x.safetensors") != NULL);
}

typedef struct bad_case {
    const char *what;
    const char *header;
    uint64_t claimed; /* UINT64_MAX: the header's real length */
    size_t data_len;
    const char *expect; /* a fragment of the message */
} bad_case;

TEST(corrupt_headers_are_format_errors) {
    static const bad_case cases[] = {
        {"header length past EOF", "{}", 1000, 0, "past the end"},
        {"header over 100 MB", "{}", 100000001ull, 0, "100 MB"},
        {"huge header length", "{}", UINT64_MAX - 1, 0, "100 MB"},
        {"invalid JSON", "{\"a\": {\"dtype\": \"F32\", ", UINT64_MAX, 0, "not valid JSON"},
        {"non-object", "[1, 2, 3]", UINT64_MAX, 0, "JSON object"},
        {"non-object after brace check", "{} []", UINT64_MAX, 0, "not valid JSON"},
        {"entry not an object", "{\"a\": 3}", UINT64_MAX, 0, "not a JSON object"},
        {"missing dtype", "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", UINT64_MAX, 4, "dtype"},
        {"unknown dtype", "{\"a\": {\"dtype\": \"F31\", \"shape\": [1], \"data_offsets\": [0, 4]}}", UINT64_MAX, 4,
         "unknown dtype"},
        {"shape not array", "{\"a\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", UINT64_MAX, 4,
         "shape"},
        {"negative shape", "{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", UINT64_MAX, 4,
         "non-negative"},
        {"fractional shape", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", UINT64_MAX, 4,
         "non-negative"},
        {"huge shape", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 4]}}",
         UINT64_MAX, 4, "overflow"},
        {"byte count overflow",
         "{\"a\": {\"dtype\": \"F64\", \"shape\": [4294967296, 536870912], \"data_offsets\": [0, 8]}}", UINT64_MAX, 8,
         "overflow"},
        {"empty tensor with a huge dimension",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [9223372036854775807, 0], \"data_offsets\": [0, 0]}}", UINT64_MAX,
         0, "is larger than"},
        {"integer beyond int64",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [99999999999999999999], \"data_offsets\": [0, 4]}}", UINT64_MAX, 4,
         "JSON"},
        {"rank too high", "{\"a\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
         UINT64_MAX, 1, "rank"},
        {"offsets missing", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", UINT64_MAX, 4, "data_offsets"},
        {"offsets wrong length", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", UINT64_MAX, 4,
         "data_offsets"},
        {"offsets negative", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", UINT64_MAX, 4,
         "non-negative"},
        {"offsets out of bounds", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", UINT64_MAX,
         4, "past the data buffer"},
        {"end before begin", "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}", UINT64_MAX, 4,
         "before begin"},
        {"size mismatch", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", UINT64_MAX, 8,
         "need 8"},
        {"overlap",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
         UINT64_MAX, 12, "overlap"},
        {"overlap inside a larger one",
         "{\"a\": {\"dtype\": \"U8\", \"shape\": [16], \"data_offsets\": [0, 16]},"
         " \"b\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [2, 4]},"
         " \"c\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [8, 10]}}",
         UINT64_MAX, 16, "overlap"},
        {"same bytes twice",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
         UINT64_MAX, 4, "overlap"},
        {"duplicate names",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
         " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         UINT64_MAX, 8, "JSON"},
        {"metadata not an object", "{\"__metadata__\": [\"x\"]}", UINT64_MAX, 0, "__metadata__"},
        {"metadata value not a string", "{\"__metadata__\": {\"format\": 1}}", UINT64_MAX, 0, "not a string"},
        {"empty header", "", UINT64_MAX, 0, "JSON object"},
    };
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        CHECK(write_raw(path, c->header, c->claimed, c->data_len) == 0);
        loco_safetensors *f = NULL;
        loco_err err = {0};
        loco_status st = loco_safetensors_open(path, &f, &err);
        CHECK_MSG(st == LOCO_EFORMAT, "%s: got %s (%s)", c->what, loco_status_name(st), err.msg);
        CHECK_MSG(f == NULL, "%s", c->what);
        CHECK_MSG(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", c->what, err.msg);
        CHECK_MSG(strstr(err.msg, c->expect) != NULL, "%s: message '%s' lacks '%s'", c->what, err.msg, c->expect);
    }
    /* files shorter than the length prefix */
    for (size_t n = 0; n < 8; n++) {
        uint8_t zeros[8] = {0};
        CHECK(write_bytes(path, zeros, n) == 0);
        loco_safetensors *f = NULL;
        loco_err err = {0};
        CHECK(loco_safetensors_open(path, &f, &err) == LOCO_EFORMAT);
        CHECK(strstr(err.msg, "too short") != NULL);
    }
    st_rm_tree(dir);
}

TEST(legal_edge_cases_open) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/ok.safetensors", dir);
    static const char *const ok[] = {
        "{}",
        "{\"__metadata__\": {}}",
        /* gaps and trailing bytes are tolerated; unknown keys inside an entry are ignored */
        "{\"a\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [2, 4], \"extra\": 1}}",
        /* zero-size tensors may share an offset with anything */
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
        " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 3], \"data_offsets\": [2, 2]}}",
        "{\"s\": {\"dtype\": \"BOOL\", \"shape\": [], \"data_offsets\": [0, 1]}}   ",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        CHECK(write_raw(path, ok[i], UINT64_MAX, 8) == 0);
        loco_safetensors *f = NULL;
        loco_err err = {0};
        CHECK_MSG(loco_safetensors_open(path, &f, &err) == LOCO_OK, "case %zu: %s", i, err.msg);
        loco_safetensors_close(f);
    }
    st_rm_tree(dir);
}

/* xorshift64*: deterministic, so a failure reproduces. */
static uint64_t rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

TEST(fuzz_flips_and_truncations_never_crash) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char src[512], path[512];
    snprintf(src, sizeof src, "%s/src.safetensors", dir);
    snprintf(path, sizeof path, "%s/fuzz.safetensors", dir);
    float a[12];
    uint16_t b[5];
    for (int i = 0; i < 12; i++) a[i] = (float)i;
    for (int i = 0; i < 5; i++) b[i] = loco_f32_to_bf16((float)i);
    loco_stored_tensor ts[3] = {
        {.name = "layer.0.weight", .dtype = LOCO_F32, .ndim = 2, .shape = {3, 4}, .data = a, .nbytes = sizeof a},
        {.name = "layer.0.bias", .dtype = LOCO_BF16, .ndim = 1, .shape = {5}, .data = b, .nbytes = sizeof b},
        {.name = "s", .dtype = LOCO_F32, .ndim = 0, .data = a, .nbytes = 4},
    };
    const char *meta[] = {"format", "pt", NULL};
    loco_err err = {0};
    CHECK(loco_safetensors_write(src, ts, 3, meta, &err) == LOCO_OK);
    size_t n;
    uint8_t *orig = read_bytes(src, &n);
    CHECK(orig);
    uint8_t *buf = malloc(n);
    int mfd = memfd_create("loco_fuzz", 0);
    CHECK(mfd >= 0);
    snprintf(path, sizeof path, "/proc/self/fd/%d", mfd);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int opened = 0, rejected = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, orig, n);
        size_t len = n;
        uint64_t kind = rnd(&seed) % 4;
        if (kind == 0) {
            len = (size_t)(rnd(&seed) % n); /* truncation */
        } else {
            int flips = 1 + (int)(rnd(&seed) % 4);
            for (int k = 0; k < flips; k++) {
                /* mostly inside the header, where the parser lives */
                size_t at = kind == 3 ? (size_t)(rnd(&seed) % n) : (size_t)(rnd(&seed) % (n < 200 ? n : 200));
                if (kind == 2)
                    buf[at] = "0123456789{}[]\",:-. e"[rnd(&seed) % 21];
                else
                    buf[at] ^= (uint8_t)(1u << (rnd(&seed) % 8));
            }
        }
        /* an in-memory file: thousands of rewrites of a disk file would dominate the run time */
        CHECK(ftruncate(mfd, 0) == 0 && pwrite(mfd, buf, len, 0) == (ssize_t)len);
        loco_safetensors *f = NULL;
        loco_status st = loco_safetensors_open(path, &f, &err);
        if (st == LOCO_OK) {
            opened++;
            /* every tensor the reader accepts must be readable in full */
            volatile uint8_t sink = 0;
            for (size_t i = 0; i < loco_safetensors_count(f); i++) {
                const loco_stored_tensor *t = loco_safetensors_at(f, i);
                CHECK(t->nbytes == (size_t)loco_stored_numel(t) * loco_dtype_size(t->dtype));
                for (size_t j = 0; j < t->nbytes; j++) sink ^= ((const uint8_t *)t->data)[j];
            }
            (void)sink;
            loco_safetensors_close(f);
        } else {
            rejected++;
            CHECK_MSG(st == LOCO_EFORMAT, "iteration %d: %s: %s", iter, loco_status_name(st), err.msg);
            CHECK(f == NULL);
            CHECK(strstr(err.msg, path) != NULL);
        }
    }
    CHECK(opened > 0 && rejected > 0);
    close(mfd);
    free(buf);
    free(orig);
    st_rm_tree(dir);
}
