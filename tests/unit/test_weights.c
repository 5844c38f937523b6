/* test_weights.c: weight sets: component folders with plain, variant and sharded files, lookup,
 * shape checks with errors naming the file, built sets with owned data, renaming. */
#include "loco_test.h"
#include "st_test_util.h"
#include "weights.h"

static const char *const NAMES[3] = {"conv.weight", "conv.bias", "norm.weight"};
static const int64_t SIZES[3] = {6, 2, 3};

static int write_component(const char *dir, const char *file, float base) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    loco_err err = {0};
    return st_write_f32(p, NAMES, SIZES, 3, base, &err) == LOCO_OK ? 0 : -1;
}

static float first_value(const loco_weights *w, const char *name) {
    const loco_stored_tensor *t = loco_weights_get(w, name);
    return t ? ((const float *)t->data)[0] : -1e30f;
}

TEST(open_dir_plain_and_variants) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    loco_err err = {0};
    loco_weights *w = NULL;
    /* empty folder: not found, naming the folder */
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &w, &err) == LOCO_ENOTFOUND);
    CHECK(strstr(err.msg, dir) != NULL);

    /* only a variant: picked when no variant is asked for */
    CHECK(write_component(dir, "diffusion_pytorch_model.fp16.safetensors", 1000) == 0);
    CHECK_MSG(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &w, &err) == LOCO_OK, "%s", err.msg);
    CHECK(loco_weights_count(w) == 3);
    CHECK(first_value(w, "conv.weight") == 1000.0f);
    CHECK(strstr(loco_weights_source(w), "diffusion_pytorch_model.fp16.safetensors") != NULL);
    loco_weights_free(w);

    /* plain + variant: plain by default, the variant when asked */
    CHECK(write_component(dir, "diffusion_pytorch_model.safetensors", 0) == 0);
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &w, &err) == LOCO_OK);
    CHECK(first_value(w, "conv.weight") == 0.0f);
    loco_weights_free(w);
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", "fp16", &w, &err) == LOCO_OK);
    CHECK(first_value(w, "conv.weight") == 1000.0f);
    loco_weights_free(w);
    /* an absent variant is an error, not a silent fallback */
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", "bf16", &w, &err) == LOCO_ENOTFOUND);
    CHECK(strstr(err.msg, "bf16") != NULL);
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", "../x", &w, &err) == LOCO_EINVAL);

    /* two variants and no plain file: ambiguous */
    char p[1024];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    unlink(p);
    CHECK(write_component(dir, "diffusion_pytorch_model.bf16.safetensors", 2000) == 0);
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &w, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "fp16") && strstr(err.msg, "bf16"));
    CHECK(w == NULL);

    /* transformers' stem is independent */
    CHECK(write_component(dir, "model.fp16.safetensors", 3000) == 0);
    CHECK(loco_weights_open_dir(dir, "model", NULL, &w, &err) == LOCO_OK);
    CHECK(first_value(w, "conv.weight") == 3000.0f);
    loco_weights_free(w);
    st_rm_tree(dir);
}

/* Write two shards holding NAMES[0..1] and NAMES[2] and an index at `index_name`. */
static int write_sharded(const char *dir, const char *shard1, const char *shard2, const char *index_name,
                         const char *index_text) {
    char p[1024];
    loco_err err = {0};
    snprintf(p, sizeof p, "%s/%s", dir, shard1);
    if (st_write_f32(p, NAMES, SIZES, 2, 10, &err) != LOCO_OK) return -1;
    snprintf(p, sizeof p, "%s/%s", dir, shard2);
    if (st_write_f32(p, NAMES + 2, SIZES + 2, 1, 20, &err) != LOCO_OK) return -1;
    char text[2048];
    if (!index_text) {
        snprintf(text, sizeof text,
                 "{\"metadata\": {\"total_size\": 44}, \"weight_map\": {\"conv.weight\": \"%s\", "
                 "\"conv.bias\": \"%s\", \"norm.weight\": \"%s\"}}",
                 shard1, shard1, shard2);
        index_text = text;
    }
    snprintf(p, sizeof p, "%s/%s", dir, index_name);
    return st_write_text(p, index_text);
}

TEST(sharded_index_spellings) {
    static const struct {
        const char *index, *variant;
    } cases[] = {
        {"model.safetensors.index.json", NULL},
        {"model.safetensors.index.fp16.json", "fp16"},
        {"model.fp16.safetensors.index.json", "fp16"},
        {"model.safetensors.index.fp16.json", NULL}, /* the only variant present */
        {"model.fp16.safetensors.index.json", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[256];
        CHECK(st_tmpdir(dir, sizeof dir));
        /* shard names contain "-of-": they must not count as variants */
        CHECK(write_sharded(dir, "model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors",
                            cases[i].index, NULL) == 0);
        loco_weights *w = NULL;
        loco_err err = {0};
        CHECK_MSG(loco_weights_open_dir(dir, "model", cases[i].variant, &w, &err) == LOCO_OK, "%s: %s", cases[i].index,
                  err.msg);
        CHECK(loco_weights_count(w) == 3);
        CHECK(first_value(w, "conv.weight") == 10.0f);
        CHECK(first_value(w, "conv.bias") == 110.0f);
        CHECK(first_value(w, "norm.weight") == 20.0f);
        CHECK(strstr(loco_weights_source(w), cases[i].index) != NULL);
        loco_weights_free(w);
        st_rm_tree(dir);
    }
}

TEST(sharded_index_errors) {
    static const struct {
        const char *what, *index_text, *expect;
        loco_status code;
    } cases[] = {
        {"parent path", "{\"weight_map\": {\"conv.weight\": \"../s1.safetensors\"}}", "separators", LOCO_EFORMAT},
        {"subfolder", "{\"weight_map\": {\"conv.weight\": \"sub/s1.safetensors\"}}", "separators", LOCO_EFORMAT},
        {"dotdot name", "{\"weight_map\": {\"conv.weight\": \"..\"}}", "separators", LOCO_EFORMAT},
        {"absolute", "{\"weight_map\": {\"conv.weight\": \"/etc/passwd\"}}", "separators", LOCO_EFORMAT},
        {"not a string", "{\"weight_map\": {\"conv.weight\": 3}}", "weight_map", LOCO_EFORMAT},
        {"no weight_map", "{\"metadata\": {}}", "weight_map", LOCO_EFORMAT},
        {"invalid JSON", "{\"weight_map\": ", "JSON", LOCO_EFORMAT},
        {"wrong shard", "{\"weight_map\": {\"norm.weight\": \"s1.safetensors\", \"conv.weight\": \"s2.safetensors\"}}",
         "does not contain", LOCO_EFORMAT},
        {"missing shard", "{\"weight_map\": {\"conv.weight\": \"s9.safetensors\"}}", "s9.safetensors", LOCO_ENOTFOUND},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[256];
        CHECK(st_tmpdir(dir, sizeof dir));
        CHECK(write_sharded(dir, "s1.safetensors", "s2.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                            cases[i].index_text) == 0);
        loco_weights *w = NULL;
        loco_err err = {0};
        loco_status st = loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &w, &err);
        CHECK_MSG(st == cases[i].code, "%s: %s (%s)", cases[i].what, loco_status_name(st), err.msg);
        CHECK(w == NULL);
        CHECK_MSG(strstr(err.msg, "index.json") != NULL, "%s: %s", cases[i].what, err.msg);
        CHECK_MSG(strstr(err.msg, cases[i].expect) != NULL, "%s: %s", cases[i].what, err.msg);
        st_rm_tree(dir);
    }
}

TEST(duplicate_tensor_across_shards) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char p[1024];
    loco_err err = {0};
    snprintf(p, sizeof p, "%s/s1.safetensors", dir);
    CHECK(st_write_f32(p, NAMES, SIZES, 2, 0, &err) == LOCO_OK);
    snprintf(p, sizeof p, "%s/s2.safetensors", dir);
    CHECK(st_write_f32(p, NAMES, SIZES, 1, 0, &err) == LOCO_OK); /* conv.weight again */
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    CHECK(st_write_text(
              p, "{\"weight_map\": {\"conv.weight\": \"s1.safetensors\", \"conv.bias\": \"s2.safetensors\"}}") == 0);
    loco_weights *w = NULL;
    CHECK(loco_weights_open_dir(dir, "model", NULL, &w, &err) == LOCO_EFORMAT);
    CHECK(strstr(err.msg, "conv.weight") && strstr(err.msg, "more than one file"));
    st_rm_tree(dir);
}

TEST(open_files_and_require) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/a.safetensors", dir);
    snprintf(b, sizeof b, "%s/b.safetensors", dir);
    loco_err err = {0};
    CHECK(st_write_f32(a, NAMES, SIZES, 2, 0, &err) == LOCO_OK);
    CHECK(st_write_f32(b, NAMES + 2, SIZES + 2, 1, 5, &err) == LOCO_OK);
    loco_weights *w = NULL;
    CHECK(loco_weights_open_files((const char *const[]){a, b}, 2, &w, &err) == LOCO_OK);
    CHECK(loco_weights_count(w) == 3);
    const loco_stored_tensor *t = NULL;
    CHECK(loco_weights_require(w, "conv.weight", 1, (const int64_t[]){6}, &t, &err) == LOCO_OK);
    CHECK(t && t->shape[0] == 6 && t->dtype == LOCO_F32);
    CHECK(loco_weights_require(w, "norm.weight", -1, NULL, &t, &err) == LOCO_OK && t);
    /* wrong shape: the message names the source file, the tensor and both shapes */
    CHECK(loco_weights_require(w, "conv.weight", 2, (const int64_t[]){2, 3}, &t, &err) == LOCO_EFORMAT);
    CHECK(t == NULL);
    CHECK_MSG(strstr(err.msg, a) && strstr(err.msg, "'conv.weight'") && strstr(err.msg, "[6]") &&
                  strstr(err.msg, "[2, 3]"),
              "%s", err.msg);
    CHECK(loco_weights_require(w, "conv.weight", 1, (const int64_t[]){7}, NULL, &err) == LOCO_EFORMAT);
    /* missing */
    CHECK(loco_weights_require(w, "nope.weight", 1, (const int64_t[]){1}, &t, &err) == LOCO_ENOTFOUND);
    CHECK(strstr(err.msg, a) && strstr(err.msg, "'nope.weight' is missing"));
    loco_weights_free(w);
    /* the same tensor in two files is rejected */
    CHECK(loco_weights_open_files((const char *const[]){a, a}, 2, &w, &err) == LOCO_EFORMAT);
    CHECK(loco_weights_open_files((const char *const[]){a}, 0, &w, &err) == LOCO_EINVAL);
    st_rm_tree(dir);
}

TEST(built_set_with_owned_data_and_many_names) {
    loco_weights *w = NULL;
    loco_err err = {0};
    CHECK(loco_weights_new_empty("built.safetensors [unet]", &w, &err) == LOCO_OK);
    /* enough entries to force several index resizes; pointers stay valid across them */
    const loco_stored_tensor *first = NULL;
    for (int i = 0; i < 5000; i++) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.weight", i);
        float *v = malloc(sizeof(float) * 2);
        v[0] = (float)i;
        v[1] = -(float)i;
        loco_stored_tensor t = {.dtype = LOCO_F32, .ndim = 1, .shape = {2}, .nbytes = 8};
        CHECK(loco_weights_add(w, name, &t, v, &err) == LOCO_OK);
        if (i == 0) first = loco_weights_get(w, name);
    }
    CHECK(loco_weights_count(w) == 5000);
    CHECK(first == loco_weights_get(w, "blocks.0.weight"));
    for (int i = 0; i < 5000; i += 37) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.weight", i);
        const loco_stored_tensor *t = loco_weights_get(w, name);
        CHECK(t && strcmp(t->name, name) == 0 && ((const float *)t->data)[1] == -(float)i);
    }
    CHECK(loco_weights_get(w, "blocks.5000.weight") == NULL);
    CHECK(strcmp(loco_weights_at(w, 4999)->name, "blocks.4999.weight") == 0);
    CHECK(loco_weights_at(w, 5000) == NULL);
    /* a second tensor of the same name is refused (and its data freed) */
    loco_stored_tensor t = {.dtype = LOCO_F32, .ndim = 1, .shape = {2}, .nbytes = 8};
    CHECK(loco_weights_add(w, "blocks.7.weight", &t, malloc(8), &err) == LOCO_EFORMAT);
    CHECK(strstr(err.msg, "built.safetensors [unet]") && strstr(err.msg, "blocks.7.weight"));
    loco_weights_free(w);
}

static int strip_prefix(const char *name, char *buf, size_t n, void *ctx) {
    const char *p = ctx;
    size_t l = strlen(p);
    if (strncmp(name, p, l) != 0) return 0;
    snprintf(buf, n, "%s", name + l);
    return 1;
}

static int to_same(const char *name, char *buf, size_t n, void *ctx) {
    snprintf(buf, n, "same");
    return 1;
}

TEST(rename_in_place) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    loco_err err = {0};
    const char *names[3] = {"text_model.a", "text_model.b", "other"};
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK(st_write_f32(p, names, SIZES, 3, 0, &err) == LOCO_OK);
    loco_weights *w = NULL;
    CHECK(loco_weights_open_dir(dir, "model", NULL, &w, &err) == LOCO_OK);
    const loco_stored_tensor *before = loco_weights_get(w, "text_model.a");
    CHECK(loco_weights_rename(w, strip_prefix, "text_model.", &err) == LOCO_OK);
    CHECK(loco_weights_get(w, "text_model.a") == NULL);
    CHECK(loco_weights_get(w, "a") == before && strcmp(before->name, "a") == 0);
    CHECK(loco_weights_get(w, "b") && loco_weights_get(w, "other"));
    /* collapsing names is detected, and lookups still work afterwards */
    CHECK(loco_weights_rename(w, to_same, NULL, &err) == LOCO_EFORMAT);
    CHECK(strstr(err.msg, "twice"));
    CHECK(loco_weights_get(w, "same") != NULL);
    loco_weights_free(w);
    st_rm_tree(dir);
}

TEST(corrupt_file_in_folder_names_the_file) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char p[1024];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    CHECK(st_write_text(p, "\x05\0\0\0\0\0\0\0{oops") == 0);
    loco_weights *w = NULL;
    loco_err err = {0};
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &w, &err) == LOCO_EFORMAT);
    CHECK(strstr(err.msg, p) != NULL);
    st_rm_tree(dir);
}

/* The old unkeyed table hash (FNV-1a 64), kept here only to build names that collided under it. */
static uint64_t fnv1a(const char *s) {
    uint64_t h = UINT64_C(1469598103934665603);
    for (; *s; s++) h = (h ^ (uint8_t)*s) * UINT64_C(1099511628211);
    return h;
}

enum { MANY = 3000 };

/* A header with MANY one-float tensors (value = index) whose names all shared one bucket of a
 * 1024-slot table under the old hash: the kind of file that made loading quadratic. The keyed
 * table must still load it completely and answer every lookup correctly. */
static int write_many(const char *path, char names[][32], loco_err *err) {
    static float vals[MANY];
    loco_stored_tensor *ts = calloc(MANY, sizeof *ts);
    if (!ts) return -1;
    for (unsigned cand = 0, k = 0; k < MANY; cand++) {
        snprintf(names[k], 32, "blk.%u.w", cand);
        if (fnv1a(names[k]) & 1023) continue;
        vals[k] = (float)k;
        ts[k] = (loco_stored_tensor){
            .name = names[k], .dtype = LOCO_F32, .ndim = 1, .shape = {1}, .data = &vals[k], .nbytes = 4};
        k++;
    }
    loco_status st = loco_safetensors_write(path, ts, MANY, NULL, err);
    free(ts);
    return st == LOCO_OK ? 0 : -1;
}

TEST(header_with_many_colliding_names_loads_correctly) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char p[1024];
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    static char names[MANY][32];
    loco_err err = {0};
    CHECK_MSG(write_many(p, names, &err) == 0, "%s", err.msg);
    loco_weights *a = NULL, *b = NULL;
    CHECK_MSG(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &a, &err) == LOCO_OK, "%s", err.msg);
    CHECK_MSG(loco_weights_open_files((const char *const[]){p}, 1, &b, &err) == LOCO_OK, "%s", err.msg);
    CHECK(loco_weights_count(a) == MANY && loco_weights_count(b) == MANY);
    for (int k = 0; k < MANY; k++) {
        /* two sets have different keys; both must find every name with its own data */
        const loco_stored_tensor *ta = loco_weights_get(a, names[k]), *tb = loco_weights_get(b, names[k]);
        CHECK_MSG(ta && tb, "'%s' not found", names[k]);
        CHECK(strcmp(ta->name, names[k]) == 0 && ((const float *)ta->data)[0] == (float)k);
        CHECK(strcmp(tb->name, names[k]) == 0 && ((const float *)tb->data)[0] == (float)k);
    }
    /* absent names (a prefix, an extension, a near miss) are absent */
    CHECK(loco_weights_get(a, "blk.") == NULL && loco_weights_get(a, "blk.0.wx") == NULL);
    char skipped[32];
    for (unsigned cand = 0;; cand++) { /* a candidate write_many left out */
        snprintf(skipped, sizeof skipped, "blk.%u.w", cand);
        if (fnv1a(skipped) & 1023) break;
    }
    CHECK(loco_weights_get(a, skipped) == NULL && loco_weights_get(b, skipped) == NULL);
    /* insertion order is the file's (sorted by name), independent of the key */
    for (size_t i = 1; i < MANY; i++)
        CHECK(strcmp(loco_weights_at(a, i - 1)->name, loco_weights_at(a, i)->name) < 0);
    /* a rename rebuilds the index under the same key; every entry stays reachable */
    CHECK(loco_weights_rename(a, strip_prefix, "blk.", &err) == LOCO_OK);
    for (int k = 0; k < MANY; k += 7) {
        const loco_stored_tensor *t = loco_weights_get(a, names[k] + 4);
        CHECK_MSG(t && ((const float *)t->data)[0] == (float)k, "'%s' lost after renaming", names[k] + 4);
    }
    loco_weights_free(a);
    loco_weights_free(b);
    st_rm_tree(dir);
}
