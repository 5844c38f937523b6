/* clip_tokenizer.c: transformers' CLIPTokenizer (v5), id for id.
 *
 * In transformers 5 `CLIPTokenizer` is the Rust-`tokenizers`-backed class (TokenizersBackend);
 * there is no ftfy/BasicTokenizer path any more. For a folder with vocab.json + merges.txt it
 * builds: added tokens split out of the raw text (those with normalized=false), the normaliser
 * NFC -> \s+ to " " -> lowercase on each remaining piece, added tokens with normalized=true
 * split out of the normalised pieces, the pre-tokenizer (the CLIP split regex, then ByteLevel
 * without prefix space), byte-level BPE with "</w>" ending each pre-token (clip_bpe.c), and
 * BOS ... EOS around the content. Which tokens are added tokens, with which flags, follows
 * transformers' loading rules (see resolve_added_tokens). */
#include "clip_tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip_bpe.h"
#include "clip_unicode.h"

typedef struct tok_spec {
    char *content; /* NULL: none */
    int is_obj;    /* an AddedToken (flags below) rather than a plain string */
    int single_word, lstrip, rstrip, special;
    int normalized; /* -1: not given, which means !special at the time the token is used */
} tok_spec;

/* tokenizers' AddedToken resolves an unset "normalized" from "special" only when the token is
 * read, so a token later marked special (transformers does that to named tokens) becomes
 * non-normalized. */
static int spec_normalized(const tok_spec *s) { return s->normalized >= 0 ? s->normalized : !s->special; }

typedef struct pattern {
    int32_t *cp;
    size_t len;
    int32_t id;
    int lstrip, rstrip;
} pattern;

typedef struct added_token {
    char *content;
    int32_t id;
    int single_word, lstrip, rstrip, normalized, special;
} added_token;

struct loco_clip_tokenizer {
    loco_bpe *bpe;
    added_token *added;
    size_t n_added;
    pattern *raw_pat, *norm_pat; /* sorted by first code point, longer first */
    size_t n_raw, n_norm;
    int32_t bos, eos, pad, unk_model;
    int max_length;
    int32_t vocab_size;
};

enum { N_NAMED = 7 };
/* transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order (the order tokens are added in) */
static const char *const k_named[N_NAMED] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};
/* CLIPTokenizer.__init__'s defaults for the names a folder leaves out */
static const char *const k_clip_default[N_NAMED] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>", NULL,
                                                    "<|endoftext|>",   NULL,            NULL};
enum { BOS = 0, EOS = 1, UNK = 2, PAD = 4 };

/* ---- small helpers -------------------------------------------------------------------------- */

static void spec_free(tok_spec *s) {
    free(s->content);
    s->content = NULL;
}

static loco_status spec_copy(tok_spec *dst, const tok_spec *src, loco_err *err) {
    *dst = *src;
    dst->content = NULL;
    if (src->content && !(dst->content = strdup(src->content)))
        return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    return LOCO_OK;
}

static int spec_equal(const tok_spec *a, const tok_spec *b) {
    /* Python's `in`: two strings compare by text, two AddedTokens by text and every flag, and a
     * string never equals an AddedToken */
    if (a->is_obj != b->is_obj || strcmp(a->content, b->content) != 0) return 0;
    if (!a->is_obj) return 1;
    return a->single_word == b->single_word && a->lstrip == b->lstrip && a->rstrip == b->rstrip &&
           spec_normalized(a) == spec_normalized(b) && a->special == b->special;
}

static loco_status json_open(const char *path, int required, json_t **out, loco_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT && !required) return LOCO_OK;
        return loco_err_set(err, errno == ENOENT ? LOCO_ENOTFOUND : LOCO_EIO, "%s: cannot open: %s", path,
                            strerror(errno));
    }
    json_error_t jerr;
    json_t *j = json_loadf(f, 0, &jerr);
    fclose(f);
    if (!j)
        return loco_err_set(err, LOCO_EFORMAT, "%s: invalid JSON at line %d column %d: %s", path, jerr.line,
                            jerr.column, jerr.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return loco_err_set(err, LOCO_EFORMAT, "%s: expected a JSON object", path);
    }
    *out = j;
    return LOCO_OK;
}

static loco_status get_flag(json_t *obj, const char *name, int dflt, int *out, const char *file, const char *what,
                            loco_err *err) {
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v)) { *out = dflt; return LOCO_OK; }
    if (!json_is_boolean(v))
        return loco_err_set(err, LOCO_EFORMAT, "%s: %s: \"%s\" must be true or false", file, what, name);
    *out = json_is_true(v);
    return LOCO_OK;
}

/* A token value: a string, or an AddedToken object {"content": ..., flags}. force_special is
 * how transformers reads legacy special_tokens_map.json entries (AddedToken(**v, special=True));
 * otherwise "special" comes from the object (default false). */
static loco_status parse_spec(json_t *v, int force_special, tok_spec *out, const char *file, const char *what,
                              loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!v || json_is_null(v)) return LOCO_OK;
    const char *content;
    if (json_is_string(v)) {
        content = json_string_value(v);
    } else if (json_is_object(v)) {
        json_t *c = json_object_get(v, "content");
        if (!json_is_string(c))
            return loco_err_set(err, LOCO_EFORMAT, "%s: %s: an added token needs a string \"content\"", file, what);
        content = json_string_value(c);
        out->is_obj = 1;
        loco_status st;
        if ((st = get_flag(v, "single_word", 0, &out->single_word, file, what, err)) ||
            (st = get_flag(v, "lstrip", 0, &out->lstrip, file, what, err)) ||
            (st = get_flag(v, "rstrip", 0, &out->rstrip, file, what, err)) ||
            (st = get_flag(v, "special", 0, &out->special, file, what, err)))
            return st;
        if (force_special) out->special = 1;
        if ((st = get_flag(v, "normalized", -1, &out->normalized, file, what, err))) return st;
    } else {
        return loco_err_set(err, LOCO_EFORMAT, "%s: %s must be a string or an added-token object", file, what);
    }
    if (!(out->content = strdup(content))) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    return LOCO_OK;
}

/* ---- added tokens --------------------------------------------------------------------------- */

typedef struct spec_list {
    tok_spec *v;
    size_t n, cap;
} spec_list;

static loco_status list_push(spec_list *l, const tok_spec *s, loco_err *err) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        tok_spec *v = realloc(l->v, cap * sizeof *v);
        if (!v) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
        l->v = v;
        l->cap = cap;
    }
    loco_status st = spec_copy(&l->v[l->n], s, err);
    if (st == LOCO_OK) l->n++;
    return st;
}

static void list_free(spec_list *l) {
    for (size_t i = 0; i < l->n; i++) spec_free(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

typedef struct decoder_entry {
    long long id;
    tok_spec spec;
} decoder_entry;

static int decoder_cmp(const void *a, const void *b) {
    long long x = ((const decoder_entry *)a)->id, y = ((const decoder_entry *)b)->id;
    return (x > y) - (x < y);
}

static int32_t token_id(const loco_clip_tokenizer *t, const char *content) {
    for (size_t i = 0; i < t->n_added; i++)
        if (strcmp(t->added[i].content, content) == 0) return t->added[i].id;
    return loco_bpe_id(t->bpe, content, strlen(content));
}

/* tokenizers' AddedVocabulary::add_tokens for one token: an identical token (text and flags) is
 * skipped; otherwise the text keeps its id (an earlier added token, else the model vocabulary,
 * else the next free id) and takes the new flags. */
static loco_status add_token(loco_clip_tokenizer *t, const tok_spec *s, loco_err *err) {
    if (!s->content[0]) return LOCO_OK;
    int normalized = spec_normalized(s);
    for (size_t i = 0; i < t->n_added; i++) {
        added_token *a = &t->added[i];
        if (strcmp(a->content, s->content) == 0) {
            /* identical: skipped; same text, other flags: the new flags win */
            a->single_word = s->single_word, a->lstrip = s->lstrip, a->rstrip = s->rstrip;
            a->normalized = normalized, a->special = s->special;
            return LOCO_OK;
        }
    }
    int32_t id = loco_bpe_id(t->bpe, s->content, strlen(s->content));
    if (id < 0) {
        int32_t vocab = (int32_t)loco_bpe_vocab_count(t->bpe), max = -1;
        for (size_t i = 0; i < t->n_added; i++)
            if (t->added[i].id > max) max = t->added[i].id;
        id = max < 0 ? vocab : (max >= vocab || vocab == 0) ? max + 1 : vocab;
    }
    added_token *v = realloc(t->added, (t->n_added + 1) * sizeof *v);
    if (!v) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    t->added = v;
    char *c = strdup(s->content);
    if (!c) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    t->added[t->n_added++] = (added_token){c, id, s->single_word, s->lstrip, s->rstrip, normalized, s->special};
    return LOCO_OK;
}

/* The tokens transformers 5 registers as added tokens, in its order:
 *  - tokenizer_config.json with "added_tokens_decoder": those entries (by id), then any named
 *    special token (bos/eos/unk/sep/pad/cls/mask from tokenizer_config.json, CLIP defaults for
 *    the missing ones) whose text is not among them; special_tokens_map.json is not read;
 *  - without it (older folders): the named tokens, special_tokens_map.json overriding
 *    tokenizer_config.json, its objects read as special AddedTokens.
 * A plain string becomes a special, non-normalized token. When one text is added twice with
 * different flags, the later flags win. */
static loco_status resolve_added_tokens(loco_clip_tokenizer *t, json_t *tc, json_t *stm, const char *tc_path,
                                        const char *stm_path, tok_spec named[N_NAMED], loco_err *err) {
    loco_status st = LOCO_OK;
    spec_list order = {0};
    spec_list extra = {0};
    decoder_entry *dec = NULL;
    size_t n_dec = 0;
    json_t *decoder = tc ? json_object_get(tc, "added_tokens_decoder") : NULL;
    char what[160];

    int set_null[N_NAMED] = {0}; /* the name was given, as JSON null: no such token */
    for (int k = 0; k < N_NAMED; k++) {
        json_t *v = tc ? json_object_get(tc, k_named[k]) : NULL;
        set_null[k] = json_is_null(v);
        if ((st = parse_spec(v, 0, &named[k], tc_path, k_named[k], err))) goto done;
    }
    /* Extra special tokens (lists of strings or objects): tokenizer_config.json's
     * "extra_special_tokens", or its older "additional_special_tokens" when the former is empty;
     * in legacy folders also special_tokens_map.json's "extra_special_tokens" (transformers 5
     * ignores that file's "additional_special_tokens"). */
    for (int f = 0; f < 2; f++) {
        json_t *src = f == 0 ? tc : (decoder ? NULL : stm);
        if (!src) continue;
        for (int key = 0; key < 2; key++) {
            json_t *l = json_object_get(src, key ? "extra_special_tokens" : "additional_special_tokens");
            if (!json_is_array(l)) continue;
            if (f == 1 && key == 0) continue;
            if (f == 0 && key == 0 && json_array_size(json_object_get(src, "extra_special_tokens")) > 0) continue;
            size_t i;
            json_t *e;
            json_array_foreach(l, i, e) {
                tok_spec s;
                snprintf(what, sizeof what, "additional special token %zu", i);
                if ((st = parse_spec(e, f == 1, &s, f ? stm_path : tc_path, what, err))) goto done;
                if (s.content) {
                    if (!s.is_obj) s.special = 1;
                    st = list_push(&extra, &s, err);
                }
                spec_free(&s);
                if (st) goto done;
            }
        }
    }
    if (decoder) {
        if (!json_is_object(decoder)) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: \"added_tokens_decoder\" must be an object", tc_path);
            goto done;
        }
        dec = calloc(json_object_size(decoder) + 1, sizeof *dec);
        if (!dec) { st = loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory"); goto done; }
        const char *key;
        json_t *v;
        json_object_foreach(decoder, key, v) {
            char *end;
            long long id = strtoll(key, &end, 10);
            if (end == key || *end || id < 0) {
                st = loco_err_set(err, LOCO_EFORMAT, "%s: added_tokens_decoder key \"%.40s\" is not an id", tc_path,
                                  key);
                goto done;
            }
            snprintf(what, sizeof what, "added_tokens_decoder[%s]", key);
            if (!json_is_object(v)) {
                st = loco_err_set(err, LOCO_EFORMAT, "%s: %s must be an object", tc_path, what);
                goto done;
            }
            if ((st = parse_spec(v, 0, &dec[n_dec].spec, tc_path, what, err))) goto done;
            dec[n_dec++].id = id;
        }
        qsort(dec, n_dec, sizeof *dec, decoder_cmp);
        /* a named token spelled like a decoder entry is that entry */
        for (int k = 0; k < N_NAMED; k++) {
            if (!named[k].content) continue;
            for (size_t i = 0; i < n_dec; i++) {
                if (strcmp(dec[i].spec.content, named[k].content) == 0) {
                    spec_free(&named[k]);
                    if ((st = spec_copy(&named[k], &dec[i].spec, err))) goto done;
                    break;
                }
            }
        }
    } else if (stm) {
        for (int k = 0; k < N_NAMED; k++) {
            json_t *v = json_object_get(stm, k_named[k]);
            if (!v) continue;
            set_null[k] = json_is_null(v);
            spec_free(&named[k]);
            if ((st = parse_spec(v, 1, &named[k], stm_path, k_named[k], err))) goto done;
        }
    }
    for (int k = 0; k < N_NAMED; k++) {
        if (named[k].content || !k_clip_default[k]) continue;
        if (set_null[k]) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: %s is null; CLIP needs it", decoder || !stm ? tc_path : stm_path,
                              k_named[k]);
            goto done;
        }
        if (!(named[k].content = strdup(k_clip_default[k]))) {
            st = loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
            goto done;
        }
    }

    for (size_t i = 0; i < n_dec; i++)
        if ((st = list_push(&order, &dec[i].spec, err))) goto done;
    for (int pass = 0; pass < 2; pass++) {
        size_t count = pass == 0 ? N_NAMED : extra.n;
        for (size_t k = 0; k < count; k++) {
            const tok_spec *s = pass == 0 ? &named[k] : &extra.v[k];
            if (!s->content) continue;
            int present = 0;
            for (size_t i = 0; i < n_dec && !present; i++) present = strcmp(dec[i].spec.content, s->content) == 0;
            for (size_t i = 0; i < order.n && !present; i++) present = spec_equal(&order.v[i], s);
            if (!present && (st = list_push(&order, s, err))) goto done;
        }
    }
    for (size_t i = 0; i < order.n; i++) {
        tok_spec *s = &order.v[i];
        if (!s->is_obj) {
            s->is_obj = 1, s->special = 1, s->normalized = -1, s->single_word = s->lstrip = s->rstrip = 0;
        } else if (!s->special) {
            for (int k = 0; k < N_NAMED; k++)
                if (named[k].content && strcmp(named[k].content, s->content) == 0) s->special = 1;
        }
        if (s->single_word) {
            st = loco_err_set(err, LOCO_EUNSUPPORTED,
                              "%s: added token \"%.80s\" has single_word=true, which loco does not implement",
                              tc_path, s->content);
            goto done;
        }
        if ((st = add_token(t, s, err))) goto done;
    }
done:
    for (size_t i = 0; i < n_dec; i++) spec_free(&dec[i].spec);
    free(dec);
    list_free(&order);
    list_free(&extra);
    return st;
}

/* ---- matching patterns ---------------------------------------------------------------------- */

static int pattern_cmp(const void *a, const void *b) {
    const pattern *x = a, *y = b;
    if (x->cp[0] != y->cp[0]) return x->cp[0] < y->cp[0] ? -1 : 1;
    return (x->len < y->len) - (x->len > y->len);
}

static loco_status build_patterns(loco_clip_tokenizer *t, loco_err *err) {
    t->raw_pat = calloc(t->n_added + 1, sizeof(pattern));
    t->norm_pat = calloc(t->n_added + 1, sizeof(pattern));
    if (!t->raw_pat || !t->norm_pat) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    for (size_t i = 0; i < t->n_added; i++) {
        const added_token *a = &t->added[i];
        size_t len = strlen(a->content);
        int32_t *cp = malloc((len + 1) * sizeof(int32_t));
        if (!cp) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
        size_t n = loco_utf8_decode_lossy((const uint8_t *)a->content, len, cp);
        if (a->normalized) {
            /* matched against normalised text, so the pattern is normalised the same way */
            loco_cp_buf nb = {0};
            loco_status st = loco_clip_normalize(cp, n, &nb, err);
            free(cp);
            if (st) { loco_cp_buf_free(&nb); return st; }
            if (nb.n == 0) { loco_cp_buf_free(&nb); continue; }
            t->norm_pat[t->n_norm++] = (pattern){nb.v, nb.n, a->id, a->lstrip, a->rstrip};
        } else {
            t->raw_pat[t->n_raw++] = (pattern){cp, n, a->id, a->lstrip, a->rstrip};
        }
    }
    qsort(t->raw_pat, t->n_raw, sizeof(pattern), pattern_cmp);
    qsort(t->norm_pat, t->n_norm, sizeof(pattern), pattern_cmp);
    return LOCO_OK;
}

/* The longest pattern matching v at i (leftmost-longest, as the reference's Aho-Corasick). */
static const pattern *match_at(const pattern *p, size_t np, const int32_t *v, size_t n, size_t i) {
    size_t lo = 0, hi = np;
    while (lo < hi) { /* first pattern starting with v[i] */
        size_t mid = (lo + hi) / 2;
        if (p[mid].cp[0] < v[i]) lo = mid + 1;
        else hi = mid;
    }
    for (size_t k = lo; k < np && p[k].cp[0] == v[i]; k++) /* longest first */
        if (p[k].len <= n - i && memcmp(p[k].cp, v + i, p[k].len * sizeof(int32_t)) == 0) return &p[k];
    return NULL;
}

static int is_space(int32_t cp) { return loco_clip_char_class_of(cp) == LOCO_CLIP_SPACE; }

/* ---- encoding ------------------------------------------------------------------------------- */

typedef struct enc_ctx {
    const loco_clip_tokenizer *t;
    loco_id_buf *out;
    size_t limit; /* stop once this many ids exist: later text cannot change earlier ids */
    loco_bpe_scratch scratch;
    uint8_t *bytes;
    size_t bytes_cap;
    loco_err *err;
} enc_ctx;

static loco_status emit_id(enc_ctx *c, int32_t id) {
    if (loco_id_buf_push(c->out, id)) return loco_err_set(c->err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    return LOCO_OK;
}

static loco_status emit_word(enc_ctx *c, const int32_t *v, size_t n) {
    if (c->out->n >= c->limit) return LOCO_OK;
    if (n > SIZE_MAX / 4 - 1) return loco_err_set(c->err, LOCO_ENOMEM, "clip_tokenizer.c: word too long");
    if (c->bytes_cap < 4 * n) {
        uint8_t *b = realloc(c->bytes, 4 * n);
        if (!b) return loco_err_set(c->err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
        c->bytes = b;
        c->bytes_cap = 4 * n;
    }
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += (size_t)loco_utf8_encode(v[i], c->bytes + len);
    return loco_bpe_encode_word(c->t->bpe, c->bytes, len, c->t->unk_model, &c->scratch, c->out, c->err);
}

static int literal_at(const int32_t *v, size_t n, size_t i, const char *lit) {
    size_t l = strlen(lit);
    if (n - i < l) return 0;
    for (size_t k = 0; k < l; k++)
        if (v[i + k] != (unsigned char)lit[k]) return 0;
    return 1;
}

/* The pre-tokenizer on normalised text: the CLIP split regex
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (alternatives tried in order at each position, whitespace dropped), then ByteLevel's GPT-2
 * regex on each piece, which only splits the two literal pieces: "<|", the word, "|>". */
static loco_status pretokenize(enc_ctx *c, const int32_t *v, size_t n) {
    static const char *const literals[2] = {"<|startoftext|>", "<|endoftext|>"};
    size_t i = 0;
    loco_status st = LOCO_OK;
    while (i < n && st == LOCO_OK && c->out->n < c->limit) {
        int32_t ch = v[i];
        loco_clip_char_class cls = loco_clip_char_class_of(ch);
        if (cls == LOCO_CLIP_SPACE) { i++; continue; }
        if (ch == '<') {
            int hit = 0;
            for (int k = 0; k < 2 && !hit; k++) {
                if (!literal_at(v, n, i, literals[k])) continue;
                size_t l = strlen(literals[k]);
                if ((st = emit_word(c, v + i, 2)) || (st = emit_word(c, v + i + 2, l - 4)) ||
                    (st = emit_word(c, v + i + l - 2, 2)))
                    return st;
                i += l;
                hit = 1;
            }
            if (hit) continue;
        }
        if (ch == '\'' && i + 1 < n) {
            int32_t a = v[i + 1], b = i + 2 < n ? v[i + 2] : 0;
            size_t l = (a == 's' || a == 't' || a == 'm' || a == 'd') ? 2
                       : ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) ? 3
                                                                                                      : 0;
            if (l) { st = emit_word(c, v + i, l); i += l; continue; }
        }
        size_t j = i + 1;
        if (cls == LOCO_CLIP_LETTER) {
            while (j < n && loco_clip_char_class_of(v[j]) == LOCO_CLIP_LETTER) j++;
        } else if (cls == LOCO_CLIP_OTHER) {
            while (j < n && loco_clip_char_class_of(v[j]) == LOCO_CLIP_OTHER) j++;
        } /* a number is one digit per piece */
        st = emit_word(c, v + i, j - i);
        i = j;
    }
    return st;
}

/* Splits v at added-token matches (with the lstrip/rstrip whitespace they take), calling
 * on_text for the pieces between them. */
static loco_status split_added(enc_ctx *c, const pattern *p, size_t np, const int32_t *v, size_t n,
                               loco_status (*on_text)(enc_ctx *, const int32_t *, size_t)) {
    size_t start_offset = 0, i = 0;
    loco_status st;
    while (np > 0 && i < n && c->out->n < c->limit) {
        const pattern *m = match_at(p, np, v, n, i);
        if (!m) { i++; continue; }
        size_t start = i, stop = i + m->len;
        if (m->lstrip) {
            size_t s = start;
            while (s > 0 && is_space(v[s - 1])) s--;
            start = s > start_offset ? s : start_offset;
        }
        if (m->rstrip)
            while (stop < n && is_space(v[stop])) stop++;
        if (start_offset < start && (st = on_text(c, v + start_offset, start - start_offset))) return st;
        if (c->out->n < c->limit && (st = emit_id(c, m->id))) return st;
        i += m->len;
        start_offset = stop > start_offset ? stop : start_offset;
        if (i < start_offset) i = start_offset;
    }
    if (start_offset < n && c->out->n < c->limit) return on_text(c, v + start_offset, n - start_offset);
    return LOCO_OK;
}

static loco_status on_normalized_text(enc_ctx *c, const int32_t *v, size_t n) { return pretokenize(c, v, n); }

static loco_status on_raw_text(enc_ctx *c, const int32_t *v, size_t n) {
    loco_cp_buf nb = {0};
    loco_status st = loco_clip_normalize(v, n, &nb, c->err);
    if (st == LOCO_OK) st = split_added(c, c->t->norm_pat, c->t->n_norm, nb.v, nb.n, on_normalized_text);
    loco_cp_buf_free(&nb);
    return st;
}

static loco_status encode(const loco_clip_tokenizer *t, const char *text, size_t len, size_t limit,
                          loco_id_buf *out, loco_err *err) {
    if (len > SIZE_MAX / sizeof(int32_t) - 1)
        return loco_err_set(err, LOCO_EINVAL, "clip_tokenizer.c: prompt of %zu bytes too long", len);
    int32_t *cps = malloc((len + 1) * sizeof(int32_t));
    if (!cps) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory for a %zu-byte prompt", len);
    size_t n = loco_utf8_decode_lossy((const uint8_t *)text, len, cps);
    enc_ctx c = {.t = t, .out = out, .limit = limit, .err = err};
    loco_status st = split_added(&c, t->raw_pat, t->n_raw, cps, n, on_raw_text);
    loco_bpe_scratch_free(&c.scratch);
    free(c.bytes);
    free(cps);
    return st;
}

/* ---- public API ----------------------------------------------------------------------------- */

void loco_clip_tokenizer_free(loco_clip_tokenizer *t) {
    if (!t) return;
    loco_bpe_free(t->bpe);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    for (size_t i = 0; i < t->n_raw; i++) free(t->raw_pat[i].cp);
    for (size_t i = 0; i < t->n_norm; i++) free(t->norm_pat[i].cp);
    free(t->raw_pat);
    free(t->norm_pat);
    free(t);
}

loco_status loco_clip_tokenizer_load(const char *dir, loco_clip_tokenizer **out, loco_err *err) {
    if (!out) return loco_err_set(err, LOCO_EINVAL, "clip_tokenizer.c: no output pointer given");
    *out = NULL;
    if (!dir) return loco_err_set(err, LOCO_EINVAL, "clip_tokenizer.c: no tokenizer folder given");
    size_t dl = strlen(dir);
    char *paths = malloc(4 * (dl + 32));
    if (!paths) return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    char *vocab = paths, *merges = paths + (dl + 32), *tc_path = paths + 2 * (dl + 32),
         *stm_path = paths + 3 * (dl + 32);
    snprintf(vocab, dl + 32, "%s/vocab.json", dir);
    snprintf(merges, dl + 32, "%s/merges.txt", dir);
    snprintf(tc_path, dl + 32, "%s/tokenizer_config.json", dir);
    snprintf(stm_path, dl + 32, "%s/special_tokens_map.json", dir);

    json_t *tc = NULL, *stm = NULL;
    tok_spec named[N_NAMED] = {{0}};
    loco_status st;
    loco_clip_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { st = loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory"); goto fail; }
    if ((st = loco_bpe_load(vocab, merges, "</w>", &t->bpe, err))) goto fail;
    if ((st = json_open(tc_path, 1, &tc, err)) || (st = json_open(stm_path, 0, &stm, err))) goto fail;

    json_t *ml = json_object_get(tc, "model_max_length");
    if (!json_is_number(ml) || json_number_value(ml) < 3 || json_number_value(ml) > 1 << 20 ||
        json_number_value(ml) != (double)(int)json_number_value(ml)) {
        st = loco_err_set(err, LOCO_EFORMAT,
                          "%s: model_max_length must be an integer between 3 and 1048576 (the length prompts are "
                          "padded to)",
                          tc_path);
        goto fail;
    }
    t->max_length = (int)json_number_value(ml);

    if ((st = resolve_added_tokens(t, tc, stm, tc_path, stm_path, named, err))) goto fail;
    if ((st = build_patterns(t, err))) goto fail;
    /* transformers' convert_tokens_to_ids: added tokens, then the vocabulary, else the unknown
     * token's id (a named token whose text is empty is never added and ends up there) */
    int32_t unk = token_id(t, named[UNK].content);
    t->bos = token_id(t, named[BOS].content);
    t->eos = token_id(t, named[EOS].content);
    t->pad = token_id(t, named[PAD].content);
    t->bos = t->bos < 0 ? unk : t->bos;
    t->eos = t->eos < 0 ? unk : t->eos;
    t->pad = t->pad < 0 ? unk : t->pad;
    /* the BPE model's own unknown token: looked up in vocab.json only */
    t->unk_model = loco_bpe_id(t->bpe, named[UNK].content, strlen(named[UNK].content));
    if (t->bos < 0 || t->eos < 0 || t->pad < 0) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: bos/eos/pad tokens have no id (neither added nor in vocab.json)",
                          dir);
        goto fail;
    }
    t->vocab_size = loco_bpe_max_id(t->bpe) + 1;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > t->vocab_size) t->vocab_size = t->added[i].id + 1;
    for (int k = 0; k < N_NAMED; k++) spec_free(&named[k]);
    json_decref(tc);
    json_decref(stm);
    free(paths);
    *out = t;
    return LOCO_OK;
fail:
    for (int k = 0; k < N_NAMED; k++) spec_free(&named[k]);
    json_decref(tc);
    json_decref(stm);
    loco_clip_tokenizer_free(t);
    if (err && err->code == st && strstr(err->msg, dir) == NULL) loco_err_prefix(err, "tokenizer %s", dir);
    free(paths);
    return st;
}

int32_t loco_clip_tokenizer_bos(const loco_clip_tokenizer *t) { return t->bos; }
int32_t loco_clip_tokenizer_eos(const loco_clip_tokenizer *t) { return t->eos; }
int32_t loco_clip_tokenizer_pad(const loco_clip_tokenizer *t) { return t->pad; }
int loco_clip_tokenizer_max_length(const loco_clip_tokenizer *t) { return t->max_length; }
int32_t loco_clip_tokenizer_vocab_size(const loco_clip_tokenizer *t) { return t->vocab_size; }

const char *loco_clip_tokenizer_token(const loco_clip_tokenizer *t, int32_t id) {
    const char *s = loco_bpe_token(t->bpe, id);
    if (s) return s;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return t->added[i].content;
    return NULL;
}

loco_status loco_clip_tokenize(const loco_clip_tokenizer *t, const char *text, int32_t *ids_out, int *n_content,
                               loco_err *err) {
    if (!text) return loco_err_set(err, LOCO_EINVAL, "clip_tokenizer.c: NULL prompt");
    return loco_clip_tokenize_n(t, text, strlen(text), ids_out, n_content, err);
}

loco_status loco_clip_tokenize_n(const loco_clip_tokenizer *t, const char *text, size_t len, int32_t *ids_out,
                                 int *n_content, loco_err *err) {
    if (!t || (!text && len) || !ids_out) return loco_err_set(err, LOCO_EINVAL, "clip_tokenizer.c: NULL argument");
    size_t keep = (size_t)t->max_length - 2;
    loco_id_buf ids = {0};
    loco_status st = encode(t, text ? text : "", len, keep, &ids, err);
    if (st) { loco_id_buf_free(&ids); return st; }
    size_t n = ids.n < keep ? ids.n : keep;
    ids_out[0] = t->bos;
    if (n) memcpy(ids_out + 1, ids.v, n * sizeof(int32_t));
    ids_out[1 + n] = t->eos;
    for (size_t i = n + 2; i < (size_t)t->max_length; i++) ids_out[i] = t->pad;
    if (n_content) *n_content = (int)n;
    loco_id_buf_free(&ids);
    return LOCO_OK;
}

loco_status loco_clip_tokenize_raw(const loco_clip_tokenizer *t, const char *text, int32_t **ids, int *n,
                                   loco_err *err) {
    if (!text) return loco_err_set(err, LOCO_EINVAL, "clip_tokenizer.c: NULL prompt");
    return loco_clip_tokenize_raw_n(t, text, strlen(text), ids, n, err);
}

loco_status loco_clip_tokenize_raw_n(const loco_clip_tokenizer *t, const char *text, size_t len, int32_t **ids,
                                     int *n, loco_err *err) {
    if (!t || (!text && len) || !ids || !n) return loco_err_set(err, LOCO_EINVAL, "clip_tokenizer.c: NULL argument");
    *ids = NULL;
    *n = 0;
    loco_id_buf b = {0};
    loco_status st = encode(t, text ? text : "", len, (size_t)INT32_MAX, &b, err);
    if (st) { loco_id_buf_free(&b); return st; }
    if (!b.v && !(b.v = malloc(sizeof(int32_t)))) /* an empty result is still a valid pointer */
        return loco_err_set(err, LOCO_ENOMEM, "clip_tokenizer.c: out of memory");
    *ids = b.v;
    *n = (int)b.n;
    return LOCO_OK;
}
