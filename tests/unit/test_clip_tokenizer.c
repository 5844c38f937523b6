/* test_clip_tokenizer.c: loco's CLIP tokenizer against transformers 5.23's CLIPTokenizer.
 *
 * tests/fixtures/refs/tokenizer_clip.json holds prompts and the ids transformers gives for them
 * with the real vocabulary (config/tokenizers/clip) in the SD 1.x style (pad <|endoftext|>) and
 * the SD 2.x style (config/tokenizers/clip-pad-bang: pad "!", a special added token), padded and
 * raw. The tiny models' tokenizers are checked against the input_ids of their text references.
 * The rest covers broken folders, odd input and very long prompts. */
#include "loco_test.h"

#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clip_tokenizer.h"
#include "safetensors.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static void config_tokenizer_dir(char *out, size_t n, const char *name) {
    snprintf(out, n, "%.3000s/../../config/tokenizers/%.64s", loco_fixtures_dir(), name);
}

static int write_file(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static void remove_dir(const char *dir) {
    static const char *const names[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    char path[PATH_MAX];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%.3000s/%.64s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* The SD 2.x-style folder: clip-pad-bang's configs with clip's vocab.json and merges.txt (which
 * the repository keeps only once), linked into a temporary folder. */
static int make_pad_bang_dir(char *dir, size_t n) {
    char clip[PATH_MAX], bang[PATH_MAX], src[PATH_MAX * 2], abs[PATH_MAX], dst[PATH_MAX * 2];
    config_tokenizer_dir(clip, sizeof clip, "clip");
    config_tokenizer_dir(bang, sizeof bang, "clip-pad-bang");
    snprintf(dir, n, "/tmp/loco_tok_bang_XXXXXX");
    if (!mkdtemp(dir)) return -1;
    static const char *const names[4] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                         "special_tokens_map.json"};
    for (int i = 0; i < 4; i++) {
        snprintf(src, sizeof src, "%s/%s", i < 2 ? clip : bang, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, names[i]);
        if (!realpath(src, abs) || symlink(abs, dst) != 0) { remove_dir(dir); return -1; }
    }
    return 0;
}

static int ids_equal_json(const int32_t *ids, int n, json_t *arr) {
    if (!json_is_array(arr) || (int)json_array_size(arr) != n) return 0;
    for (int i = 0; i < n; i++)
        if (json_integer_value(json_array_get(arr, (size_t)i)) != ids[i]) return 0;
    return 1;
}

/* ---- the reference prompts ------------------------------------------------------------------ */

TEST(reference_prompts_match_transformers) {
    char path[PATH_MAX], clip[PATH_MAX], bang[PATH_MAX];
    snprintf(path, sizeof path, "%s/refs/tokenizer_clip.json", loco_fixtures_dir());
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &jerr); /* one prompt holds a \u0000 */
    CHECK_MSG(root != NULL, "%s: %s", path, jerr.text);
    json_t *cases = json_object_get(root, "cases");
    size_t n_cases = json_array_size(cases);
    config_tokenizer_dir(clip, sizeof clip, "clip");
    loco_err err = {0};
    loco_clip_tokenizer *sd1 = NULL, *sd2 = NULL;
    int ok1 = loco_clip_tokenizer_load(clip, &sd1, &err) == LOCO_OK;
    int ok2 = ok1 && make_pad_bang_dir(bang, sizeof bang) == 0;
    if (ok2) {
        ok2 = loco_clip_tokenizer_load(bang, &sd2, &err) == LOCO_OK;
        remove_dir(bang);
    }
    if (!ok1 || !ok2) {
        loco_clip_tokenizer_free(sd1);
        json_decref(root);
    }
    CHECK_MSG(ok1 && ok2, "loading the tokenizers: %s", err.msg);

    size_t matched = 0;
    const char *first_bad = NULL, *bad_what = "";
    for (size_t i = 0; i < n_cases; i++) {
        json_t *c = json_array_get(cases, i);
        json_t *pj = json_object_get(c, "prompt");
        const char *prompt = json_string_value(pj);
        size_t plen = json_string_length(pj);
        int32_t pad1[77], pad2[77], *raw1 = NULL, *raw2 = NULL;
        int n1 = 0, n2 = 0, good = 1;
        const char *what = "";
        if (!prompt || loco_clip_tokenize_n(sd1, prompt, plen, pad1, NULL, &err) ||
            loco_clip_tokenize_n(sd2, prompt, plen, pad2, NULL, &err) ||
            loco_clip_tokenize_raw_n(sd1, prompt, plen, &raw1, &n1, &err) ||
            loco_clip_tokenize_raw_n(sd2, prompt, plen, &raw2, &n2, &err)) {
            good = 0, what = err.msg;
        } else if (!ids_equal_json(pad1, 77, json_object_get(c, "sd1"))) {
            good = 0, what = "sd1";
        } else if (!ids_equal_json(pad2, 77, json_object_get(c, "sd2"))) {
            good = 0, what = "sd2";
        } else if (!ids_equal_json(raw1, n1, json_object_get(c, "raw"))) {
            good = 0, what = "raw";
        } else if (!ids_equal_json(raw2, n2, json_object_get(c, "raw_pad_bang"))) {
            good = 0, what = "raw_pad_bang";
        } else {
            json_t *toks = json_object_get(c, "raw_tokens");
            for (int k = 0; k < n1 && good; k++) {
                const char *s = loco_clip_tokenizer_token(sd1, raw1[k]);
                const char *want = json_string_value(json_array_get(toks, (size_t)k));
                if (!s || !want || strcmp(s, want) != 0) good = 0, what = "raw_tokens";
            }
        }
        free(raw1);
        free(raw2);
        if (good) matched++;
        else if (!first_bad) first_bad = prompt ? prompt : "(not a string)", bad_what = what;
    }
    char shown[200];
    snprintf(shown, sizeof shown, "%.190s", first_bad ? first_bad : "");
    char why[200];
    snprintf(why, sizeof why, "%.190s", bad_what);
    loco_clip_tokenizer_free(sd1);
    loco_clip_tokenizer_free(sd2);
    json_decref(root);
    CHECK_MSG(n_cases >= 520, "only %zu cases in %s", n_cases, path);
    CHECK_MSG(matched == n_cases, "%zu of %zu prompts match; first mismatch (%s) in \"%s\"", matched, n_cases, why,
              shown);
}

TEST(special_ids_lengths_and_token_text) {
    char clip[PATH_MAX], bang[PATH_MAX];
    config_tokenizer_dir(clip, sizeof clip, "clip");
    loco_err err = {0};
    loco_clip_tokenizer *t = NULL, *t2 = NULL;
    CHECK_MSG(loco_clip_tokenizer_load(clip, &t, &err) == LOCO_OK, "%s", err.msg);
    CHECK(make_pad_bang_dir(bang, sizeof bang) == 0);
    loco_status st = loco_clip_tokenizer_load(bang, &t2, &err);
    remove_dir(bang);
    if (st != LOCO_OK) loco_clip_tokenizer_free(t);
    CHECK_MSG(st == LOCO_OK, "%s", err.msg);
    int ok = loco_clip_tokenizer_bos(t) == 49406 && loco_clip_tokenizer_eos(t) == 49407 &&
             loco_clip_tokenizer_pad(t) == 49407 && loco_clip_tokenizer_max_length(t) == 77 &&
             loco_clip_tokenizer_vocab_size(t) == 49408 && loco_clip_tokenizer_pad(t2) == 0 &&
             loco_clip_tokenizer_bos(t2) == 49406 && loco_clip_tokenizer_eos(t2) == 49407;
    const char *a = loco_clip_tokenizer_token(t, 320), *bang_tok = loco_clip_tokenizer_token(t2, 0);
    int text_ok = a && strcmp(a, "a</w>") == 0 && bang_tok && strcmp(bang_tok, "!") == 0 &&
                  loco_clip_tokenizer_token(t, 49408) == NULL && loco_clip_tokenizer_token(t, -1) == NULL;
    /* "!!" is one BPE token in the SD 1.x style and two pad-"!" ids in the SD 2.x style */
    int32_t *r1 = NULL, *r2 = NULL;
    int n1 = 0, n2 = 0;
    int bang_ok = loco_clip_tokenize_raw(t, "wow!!", &r1, &n1, &err) == LOCO_OK &&
                  loco_clip_tokenize_raw(t2, "wow!!", &r2, &n2, &err) == LOCO_OK && n1 == 2 && r1[1] == 748 &&
                  n2 == 3 && r2[0] == r1[0] && r2[1] == 0 && r2[2] == 0;
    free(r1);
    free(r2);
    loco_clip_tokenizer_free(t);
    loco_clip_tokenizer_free(t2);
    CHECK(ok);
    CHECK(text_ok);
    CHECK(bang_ok);
}

/* ---- how folders are read ------------------------------------------------------------------ */

/* A folder with the real vocabulary (linked) and the given configs (stm NULL: none). */
static int make_config_dir(char *dir, size_t n, const char *tc, const char *stm) {
    char clip[PATH_MAX], src[PATH_MAX * 2], abs[PATH_MAX], dst[PATH_MAX * 2];
    config_tokenizer_dir(clip, sizeof clip, "clip");
    snprintf(dir, n, "/tmp/loco_tok_cfg_XXXXXX");
    if (!mkdtemp(dir)) return -1;
    static const char *const names[2] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/%s", clip, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, names[i]);
        if (!realpath(src, abs) || symlink(abs, dst) != 0) { remove_dir(dir); return -1; }
    }
    if (write_file(dir, "tokenizer_config.json", tc) || (stm && write_file(dir, "special_tokens_map.json", stm))) {
        remove_dir(dir);
        return -1;
    }
    return 0;
}

/* Folder layouts other than the fixture's, with the ids transformers 5.23 gives for them:
 * legacy configs (no added_tokens_decoder: special_tokens_map.json decides, and a plain-string
 * pad "<|endoftext|>" added last makes that token non-normalized), a decoder entry without
 * "normalized" (which becomes non-normalized once the token is named), and lstrip/rstrip plus a
 * normalized multi-word added token outside the vocabulary. */
TEST(config_resolution_follows_transformers) {
    static const char legacy_tc[] =
        "{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<|startoftext|>\", \"lstrip\": false, "
        "\"normalized\": true, \"rstrip\": false, \"single_word\": false}, \"eos_token\": {\"__type\": \"AddedToken\", "
        "\"content\": \"<|endoftext|>\", \"lstrip\": false, \"normalized\": true, \"rstrip\": false, \"single_word\": "
        "false}, \"model_max_length\": 77, \"pad_token\": \"<|endoftext|>\", \"unk_token\": {\"__type\": "
        "\"AddedToken\", \"content\": \"<|endoftext|>\", \"lstrip\": false, \"normalized\": true, \"rstrip\": false, "
        "\"single_word\": false}}";
    static const char legacy_stm_fmt[] =
        "{\"bos_token\": {\"content\": \"<|startoftext|>\", \"lstrip\": false, \"normalized\": true, \"rstrip\": "
        "false, \"single_word\": false}, \"eos_token\": {\"content\": \"<|endoftext|>\", \"lstrip\": false, "
        "\"normalized\": true, \"rstrip\": false, \"single_word\": false}, \"pad_token\": \"%s\", \"unk_token\": "
        "{\"content\": \"<|endoftext|>\", \"lstrip\": false, \"normalized\": true, \"rstrip\": false, "
        "\"single_word\": false}}";
    char stm_sd1[1024], stm_sd2[1024];
    snprintf(stm_sd1, sizeof stm_sd1, legacy_stm_fmt, "<|endoftext|>");
    snprintf(stm_sd2, sizeof stm_sd2, legacy_stm_fmt, "!");
    static const struct {
        const char *tc, *prompt;
        int which_stm; /* 0 none, 1 SD 1.x legacy, 2 SD 2.x legacy */
        int32_t pad;
        int max_length, n;
        int32_t want[12];
    } cases[] = {
        {legacy_tc, "a <|ENDOFTEXT|> b <|endoftext|> <|STARTOFTEXT|>", 1, 49407, 77, 10,
         {320, 27, 347, 40786, 4160, 91, 285, 321, 49407, 49406}},
        {legacy_tc, "hi!! <|ENDOFTEXT|>", 2, 0, 77, 4, {1883, 0, 0, 49407}},
        {"{\"model_max_length\": 77, \"added_tokens_decoder\": {\"0\": {\"content\": \"<|endoftext|>\", \"lstrip\": "
         "true, \"rstrip\": true, \"special\": false}}}",
         "x <|ENDOFTEXT|> y <|endoftext|>z", 0, 49407, 77, 10, {343, 27, 347, 40786, 4160, 91, 285, 344, 49407, 345}},
        {"{\"model_max_length\": 12, \"added_tokens_decoder\": {\"0\": {\"content\": \"!\", \"lstrip\": true, "
         "\"rstrip\": true, \"normalized\": false, \"special\": true}, \"49408\": {\"content\": \"HeLLo W\xc3\xb6rld\", "
         "\"rstrip\": true, \"normalized\": true, \"special\": false}}, \"pad_token\": \"!\"}",
         "a ! b HELLO   W\xc3\x96RLD  c!", 0, 0, 12, 6, {320, 0, 321, 49408, 322, 0}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char dir[64];
        const char *stm = cases[c].which_stm == 1 ? stm_sd1 : cases[c].which_stm == 2 ? stm_sd2 : NULL;
        CHECK(make_config_dir(dir, sizeof dir, cases[c].tc, stm) == 0);
        loco_err err = {0};
        loco_clip_tokenizer *t = NULL;
        loco_status st = loco_clip_tokenizer_load(dir, &t, &err);
        remove_dir(dir);
        CHECK_MSG(st == LOCO_OK, "case %zu: %s", c, err.msg);
        int32_t *raw = NULL, pad[77];
        int n = 0, nc = 0;
        int ok = loco_clip_tokenize_raw(t, cases[c].prompt, &raw, &n, &err) == LOCO_OK && n == cases[c].n &&
                 memcmp(raw, cases[c].want, (size_t)n * sizeof(int32_t)) == 0 &&
                 loco_clip_tokenizer_pad(t) == cases[c].pad && loco_clip_tokenizer_max_length(t) == cases[c].max_length &&
                 loco_clip_tokenize(t, cases[c].prompt, pad, &nc, &err) == LOCO_OK && nc == n &&
                 pad[nc + 1] == 49407 && pad[cases[c].max_length - 1] == cases[c].pad;
        free(raw);
        loco_clip_tokenizer_free(t);
        CHECK_MSG(ok, "case %zu (\"%s\"): %d ids", c, cases[c].prompt, n);
    }
}

/* ---- tiny model tokenizers against the text references -------------------------------------- */

static int check_tiny(const char *model, const char *tok_dir, const char *ids_name, const char *neg_ids_name,
                      char *why, size_t why_n) {
    char dir[PATH_MAX], ref[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/models/%s/%s", loco_fixtures_dir(), model, tok_dir);
    snprintf(ref, sizeof ref, "%s/refs/%s/text.safetensors", loco_fixtures_dir(), model);
    loco_err err = {0};
    loco_clip_tokenizer *t = NULL;
    loco_safetensors *f = NULL;
    json_t *prompts = NULL, *negs = NULL;
    int ok = 0;
    if (loco_clip_tokenizer_load(dir, &t, &err) || loco_safetensors_open(ref, &f, &err)) {
        snprintf(why, why_n, "%.400s", err.msg);
        goto done;
    }
    const char *pm = loco_safetensors_metadata(f, "prompts"), *nm = loco_safetensors_metadata(f, "negative_prompts");
    prompts = pm ? json_loads(pm, 0, NULL) : NULL;
    negs = nm ? json_loads(nm, 0, NULL) : NULL;
    if (!json_is_array(prompts) || !json_is_array(negs)) {
        snprintf(why, why_n, "%.400s: prompts metadata missing", ref);
        goto done;
    }
    for (int which = 0; which < 2; which++) {
        json_t *list = which ? negs : prompts;
        const loco_stored_tensor *ids = loco_safetensors_find(f, which ? neg_ids_name : ids_name);
        size_t np = json_array_size(list);
        if (!ids || ids->dtype != LOCO_I64 || ids->ndim != 2 || (size_t)ids->shape[0] != np || ids->shape[1] != 77) {
            snprintf(why, why_n, "%.300s: %s missing or not [%zu,77] I64", ref, which ? neg_ids_name : ids_name, np);
            goto done;
        }
        for (size_t p = 0; p < np; p++) {
            int32_t got[77];
            if (loco_clip_tokenize(t, json_string_value(json_array_get(list, p)), got, NULL, &err)) {
                snprintf(why, why_n, "%.400s", err.msg);
                goto done;
            }
            for (int k = 0; k < 77; k++) {
                int64_t want;
                memcpy(&want, (const char *)ids->data + 8 * (p * 77 + (size_t)k), 8);
                if (want != got[k]) {
                    snprintf(why, why_n, "%s/%s prompt %zu position %d: %d, want %lld", model, tok_dir, p, k, got[k],
                             (long long)want);
                    goto done;
                }
            }
        }
    }
    ok = 1;
done:
    json_decref(prompts);
    json_decref(negs);
    loco_safetensors_close(f);
    loco_clip_tokenizer_free(t);
    return ok;
}

TEST(tiny_model_tokenizers_match_text_refs) {
    char why[512] = "";
    CHECK_MSG(check_tiny("sd1-tiny", "tokenizer", "te.input_ids", "te.negative_input_ids", why, sizeof why), "%s", why);
    CHECK_MSG(check_tiny("sd2-tiny", "tokenizer", "te.input_ids", "te.negative_input_ids", why, sizeof why), "%s", why);
    CHECK_MSG(check_tiny("sdxl-tiny", "tokenizer", "te.input_ids", "te.negative_input_ids", why, sizeof why), "%s", why);
    CHECK_MSG(check_tiny("sdxl-tiny", "tokenizer_2", "te2.input_ids", "te2.negative_input_ids", why, sizeof why), "%s",
              why);
}

/* ---- odd input ------------------------------------------------------------------------------ */

static loco_clip_tokenizer *load_clip(loco_err *err) {
    char clip[PATH_MAX];
    config_tokenizer_dir(clip, sizeof clip, "clip");
    loco_clip_tokenizer *t = NULL;
    if (loco_clip_tokenizer_load(clip, &t, err) != LOCO_OK) return NULL;
    return t;
}

static int same_raw(const loco_clip_tokenizer *t, const char *a, const char *b) {
    int32_t *x = NULL, *y = NULL;
    int nx = -1, ny = -2;
    int ok = loco_clip_tokenize_raw(t, a, &x, &nx, NULL) == LOCO_OK &&
             loco_clip_tokenize_raw(t, b, &y, &ny, NULL) == LOCO_OK && nx == ny && nx > 0 &&
             memcmp(x, y, (size_t)nx * sizeof(int32_t)) == 0;
    free(x);
    free(y);
    return ok;
}

TEST(empty_and_whitespace_prompts) {
    loco_err err = {0};
    loco_clip_tokenizer *t = load_clip(&err);
    CHECK_MSG(t, "%s", err.msg);
    int32_t ids[77];
    int nc = -1, ok = 1;
    const char *inputs[] = {"", " ", "\t\n\r \xe3\x80\x80\xc2\xa0"};
    for (int i = 0; i < 3; i++) {
        ok &= loco_clip_tokenize(t, inputs[i], ids, &nc, &err) == LOCO_OK && nc == 0 && ids[0] == 49406 &&
              ids[1] == 49407 && ids[76] == 49407;
        int32_t *raw = NULL;
        int n = -1;
        ok &= loco_clip_tokenize_raw(t, inputs[i], &raw, &n, &err) == LOCO_OK && raw != NULL && n == 0;
        free(raw);
    }
    loco_clip_tokenizer_free(t);
    CHECK(ok);
}

TEST(invalid_utf8_becomes_replacement_characters) {
    loco_err err = {0};
    loco_clip_tokenizer *t = load_clip(&err);
    CHECK_MSG(t, "%s", err.msg);
    /* as Python's bytes.decode("utf-8", errors="replace"): one U+FFFD per maximal invalid
     * subpart (a lone byte, a truncated sequence, each byte of an encoded surrogate) */
    int ok = same_raw(t, "caf\xe9 ok", "caf\xef\xbf\xbd ok") &&
             same_raw(t, "\xff\xfe x", "\xef\xbf\xbd\xef\xbf\xbd x") &&
             same_raw(t, "a\xe6\x97 b", "a\xef\xbf\xbd b") &&
             same_raw(t, "\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd") &&
             same_raw(t, "\xf0\x9f\x98", "\xef\xbf\xbd") && same_raw(t, "\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd");
    loco_clip_tokenizer_free(t);
    CHECK(ok);
}

TEST(truncation_keeps_the_first_content_tokens) {
    loco_err err = {0};
    loco_clip_tokenizer *t = load_clip(&err);
    CHECK_MSG(t, "%s", err.msg);
    char prompt[4096] = "";
    for (int i = 0; i < 100; i++) strcat(prompt, i % 2 ? "painting " : "cat, ");
    int32_t ids[77], *raw = NULL;
    int nc = 0, n = 0;
    int ok = loco_clip_tokenize(t, prompt, ids, &nc, &err) == LOCO_OK &&
             loco_clip_tokenize_raw(t, prompt, &raw, &n, &err) == LOCO_OK;
    ok = ok && nc == 75 && n > 75 && ids[0] == 49406 && ids[76] == 49407 &&
         memcmp(ids + 1, raw, 75 * sizeof(int32_t)) == 0;
    free(raw);
    loco_clip_tokenizer_free(t);
    CHECK(ok);
}

/* No timing here (that is bench/'s job): a 10 MB prompt and a 1 MB single word must simply come
 * back, with the same leading ids as a short prefix of them. */
TEST(very_long_prompts_complete) {
    loco_err err = {0};
    loco_clip_tokenizer *t = load_clip(&err);
    CHECK_MSG(t, "%s", err.msg);
    size_t n = 10u << 20;
    char *s = malloc(n + 1);
    if (!s) loco_clip_tokenizer_free(t);
    CHECK(s != NULL);
    static const char *const words[] = {"photo ", "of ", "a ", "cat, ", "Gemälde ", "東京 ", "!! "};
    size_t len = 0;
    for (unsigned k = 0; len + 16 < n; k = k * 1103515245u + 12345u) {
        const char *w = words[(k >> 16) % 7];
        memcpy(s + len, w, strlen(w));
        len += strlen(w);
    }
    s[len] = '\0';
    int32_t ids[77], prefix_ids[77];
    int nc = 0, nc2 = 0;
    loco_status st = loco_clip_tokenize(t, s, ids, &nc, &err);
    s[2000] = '\0';
    loco_status st2 = loco_clip_tokenize(t, s, prefix_ids, &nc2, &err);
    int ok = st == LOCO_OK && st2 == LOCO_OK && nc == 75 && nc2 == 75 && memcmp(ids, prefix_ids, sizeof ids) == 0;
    /* one 1 MB pre-token (a run of letters): byte-level BPE over a million symbols */
    memset(s, 'a', 1u << 20);
    for (size_t i = 0; i < (1u << 20); i += 7) s[i] = 'b';
    s[1u << 20] = '\0';
    int32_t *raw = NULL;
    int nr = 0;
    int ok2 = loco_clip_tokenize_raw(t, s, &raw, &nr, &err) == LOCO_OK && nr > 0 && nr < (1 << 20);
    for (int i = 0; ok2 && i < nr; i++) ok2 = raw[i] >= 0 && raw[i] < loco_clip_tokenizer_vocab_size(t);
    free(raw);
    free(s);
    loco_clip_tokenizer_free(t);
    CHECK_MSG(ok, "10 MB prompt: status %d/%d, %d content ids: %s", st, st2, nc, err.msg);
    CHECK_MSG(ok2, "1 MB word: %s", err.msg);
}

/* ---- broken folders ------------------------------------------------------------------------- */

static const char k_vocab[] =
    "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab</w>\": 4, \"<|startoftext|>\": 5, \"<|endoftext|>\": 6}";
static const char k_merges[] = "#version: 0.2\na b</w>\n";
static const char k_config[] = "{\"model_max_length\": 8, \"bos_token\": \"<|startoftext|>\", "
                               "\"eos_token\": \"<|endoftext|>\", \"pad_token\": \"<|endoftext|>\", "
                               "\"unk_token\": \"<|endoftext|>\"}";

/* Writes a small tokenizer folder, with `which` file replaced by `text` (NULL: left out). */
static int make_dir(char *dir, size_t n, const char *which, const char *text) {
    snprintf(dir, n, "/tmp/loco_tok_err_XXXXXX");
    if (!mkdtemp(dir)) return -1;
    static const char *const names[3] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    const char *texts[3] = {k_vocab, k_merges, k_config};
    for (int i = 0; i < 3; i++) {
        const char *body = which && strcmp(which, names[i]) == 0 ? text : texts[i];
        if (body && write_file(dir, names[i], body)) { remove_dir(dir); return -1; }
    }
    return 0;
}

static int load_fails(const char *which, const char *text, loco_status want, const char *needle, char *msg,
                      size_t msg_n) {
    char dir[64];
    if (make_dir(dir, sizeof dir, which, text)) { snprintf(msg, msg_n, "cannot write a temp folder"); return 0; }
    loco_err err = {0};
    loco_clip_tokenizer *t = NULL;
    loco_status st = loco_clip_tokenizer_load(dir, &t, &err);
    remove_dir(dir);
    snprintf(msg, msg_n, "%s: got %s \"%s\"", which ? which : "-", loco_status_name(st), err.msg);
    int ok = st == want && t == NULL && err.code == want && strstr(err.msg, needle) != NULL;
    loco_clip_tokenizer_free(t);
    return ok;
}

TEST(small_folder_loads_and_uses_unknown_token) {
    char dir[64];
    CHECK(make_dir(dir, sizeof dir, NULL, NULL) == 0);
    loco_err err = {0};
    loco_clip_tokenizer *t = NULL;
    loco_status st = loco_clip_tokenizer_load(dir, &t, &err);
    remove_dir(dir);
    CHECK_MSG(st == LOCO_OK, "%s", err.msg);
    int32_t ids[8];
    int nc = 0;
    /* "ab" merges to ab</w>; "ba" does not merge; "c" has no symbol: the unknown token (6) */
    int ok = loco_clip_tokenize(t, "AB ba c", ids, &nc, &err) == LOCO_OK && nc == 4 && ids[0] == 5 && ids[1] == 4 &&
             ids[2] == 1 && ids[3] == 2 && ids[4] == 6 && ids[5] == 6 && ids[7] == 6;
    loco_clip_tokenizer_free(t);
    CHECK_MSG(ok, "%s", err.msg);
}

TEST(broken_folders_fail_with_clear_errors) {
    char msg[1200];
    loco_err err = {0};
    loco_clip_tokenizer *t = NULL;
    CHECK(loco_clip_tokenizer_load("/nonexistent/loco/tokenizer", &t, &err) == LOCO_ENOTFOUND && t == NULL);
    CHECK_MSG(strstr(err.msg, "vocab.json") != NULL, "%s", err.msg);
    CHECK_MSG(load_fails("vocab.json", NULL, LOCO_ENOTFOUND, "vocab.json", msg, sizeof msg), "%s", msg);
    CHECK_MSG(load_fails("vocab.json", "{\"a\": 0, \"b\": ", LOCO_EFORMAT, "vocab.json", msg, sizeof msg), "%s", msg);
    CHECK_MSG(load_fails("vocab.json", "[1, 2]", LOCO_EFORMAT, "vocab.json", msg, sizeof msg), "%s", msg);
    CHECK_MSG(load_fails("vocab.json", "{\"a\": -3}", LOCO_EFORMAT, "vocab.json", msg, sizeof msg), "%s", msg);
    CHECK_MSG(load_fails("merges.txt", NULL, LOCO_ENOTFOUND, "merges.txt", msg, sizeof msg), "%s", msg);
    CHECK_MSG(load_fails("merges.txt", "#version: 0.2\na zz</w>\n", LOCO_EFORMAT, "zz</w>", msg, sizeof msg), "%s",
              msg);
    CHECK_MSG(load_fails("merges.txt", "#version: 0.2\na b</w>\n\nb a\n", LOCO_EFORMAT, "line 3", msg, sizeof msg),
              "%s", msg);
    CHECK_MSG(load_fails("merges.txt", "a b</w> c\n", LOCO_EFORMAT, "merges.txt", msg, sizeof msg), "%s", msg);
    CHECK_MSG(load_fails("tokenizer_config.json", NULL, LOCO_ENOTFOUND, "tokenizer_config.json", msg, sizeof msg),
              "%s", msg);
    CHECK_MSG(load_fails("tokenizer_config.json", "{\"model_max_length\": 77,", LOCO_EFORMAT,
                         "tokenizer_config.json", msg, sizeof msg),
              "%s", msg);
    CHECK_MSG(load_fails("tokenizer_config.json", "{}", LOCO_EFORMAT, "model_max_length", msg, sizeof msg), "%s", msg);
    CHECK_MSG(load_fails("tokenizer_config.json", "{\"model_max_length\": 77, \"pad_token\": 5}", LOCO_EFORMAT,
                         "pad_token", msg, sizeof msg),
              "%s", msg);
    CHECK_MSG(load_fails("tokenizer_config.json",
                         "{\"model_max_length\": 77, \"added_tokens_decoder\": {\"6\": {\"content\": "
                         "\"<|endoftext|>\", \"single_word\": true, \"special\": true}}}",
                         LOCO_EUNSUPPORTED, "single_word", msg, sizeof msg),
              "%s", msg);
}

/* k_vocab with one more token "c" of the given id (as JSON text). */
static void vocab_with_id(char *out, size_t n, const char *id) {
    snprintf(out, n, "%.*s, \"c\": %s}", (int)(sizeof k_vocab - 2), k_vocab, id);
}

/* One huge id must not size the id table (2^31 ids = 8 GB): it is refused with one line naming
 * the file, the token and the id, before anything is allocated. */
TEST(vocab_ids_out_of_range_are_refused) {
    static const char *const bad[] = {"2147483648", "2147483647", "16777216", "1000000000000000000", "1024"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char vocab[512], dir[64];
        vocab_with_id(vocab, sizeof vocab, bad[i]);
        CHECK(make_dir(dir, sizeof dir, "vocab.json", vocab) == 0);
        loco_err err = {0};
        loco_clip_tokenizer *t = NULL;
        loco_status st = loco_clip_tokenizer_load(dir, &t, &err);
        char path[128];
        snprintf(path, sizeof path, "%s/vocab.json", dir);
        remove_dir(dir);
        CHECK_MSG(st == LOCO_EFORMAT && t == NULL, "id %s: got %s \"%s\"", bad[i], loco_status_name(st), err.msg);
        CHECK_MSG(strstr(err.msg, path) && strstr(err.msg, "\"c\"") && strstr(err.msg, bad[i]) &&
                      !strchr(err.msg, '\n'),
                  "id %s: %s", bad[i], err.msg);
        loco_clip_tokenizer_free(t);
    }
    /* negative and non-integer ids keep their own message */
    char msg[1200];
    CHECK_MSG(load_fails("vocab.json", "{\"a\": -2147483649}", LOCO_EFORMAT, "no valid id", msg, sizeof msg), "%s",
              msg);
    CHECK_MSG(load_fails("vocab.json", "{\"a\": 1.5}", LOCO_EFORMAT, "no valid id", msg, sizeof msg), "%s", msg);
}

/* Gaps in the ids are fine up to the limit: a small hand-written vocabulary may use id 1023. */
TEST(sparse_vocab_ids_within_the_limit_load) {
    char vocab[512], dir[64];
    vocab_with_id(vocab, sizeof vocab, "1023");
    CHECK(make_dir(dir, sizeof dir, "vocab.json", vocab) == 0);
    loco_err err = {0};
    loco_clip_tokenizer *t = NULL;
    loco_status st = loco_clip_tokenizer_load(dir, &t, &err);
    remove_dir(dir);
    CHECK_MSG(st == LOCO_OK, "%s", err.msg);
    CHECK(loco_clip_tokenizer_vocab_size(t) == 1024);
    loco_clip_tokenizer_free(t);
}

/* The bundled SD 2.x / SD-XL tokenizer_2 folder (used for single-file checkpoints) shares the
 * vocabulary with config/tokenizers/clip/ through links; it must load and pad with "!" (id 0). */
TEST(bundled_pad_bang_folder_loads) {
    loco_clip_tokenizer *t = NULL;
    loco_err err;
    CHECK_MSG(loco_clip_tokenizer_load("config/tokenizers/clip-pad-bang", &t, &err) == LOCO_OK, "%s", err.msg);
    int32_t ids[77];
    int n = 0;
    loco_status st = loco_clip_tokenize(t, "a photo of a cat!", ids, &n, &err);
    int32_t pad = loco_clip_tokenizer_pad(t);
    loco_clip_tokenizer_free(t);
    CHECK(st == LOCO_OK);
    CHECK(pad == 0);
    /* "!" is a special token there: split out and encoded as 0, then EOS, then "!" padding */
    const int32_t want[8] = {49406, 320, 1125, 539, 320, 2368, 0, 49407};
    for (int i = 0; i < 8; i++) CHECK(ids[i] == want[i]);
    CHECK(ids[8] == 0 && ids[76] == 0);
}
