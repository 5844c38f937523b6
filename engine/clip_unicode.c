/* clip_unicode.c: UTF-8 decoding, the CLIP normaliser and character classes (see clip_unicode.h).
 *
 * Why tables on top of utf8proc: transformers' CLIPTokenizer runs on the Rust `tokenizers`
 * library, whose regex engine (Oniguruma) and lowercase mapping (Rust std) know Unicode 16, while
 * its NFC (unicode-normalization-alignments) predates Unicode 11, and the system utf8proc is at
 * Unicode 15. The tables below hold exactly the differences found by asking both sides about every
 * code point (tools/clip_unicode_tables.py); everything else comes from utf8proc. */
#include "clip_unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

typedef struct cp_range { int32_t lo, hi; } cp_range;
typedef struct cp_delta { int32_t lo, hi, delta; } cp_delta;

/* Letters and digits of Unicode 15.1/16.0 that the reference's regex classifies as \p{L} / \p{N}
 * while utf8proc 2.8 still reports them unassigned. Consulted only for unassigned code points. */
static const cp_range k_new_letters[] = {
    {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0xA7DA, 0xA7DC},   {0x105C0, 0x105F3}, {0x10D4A, 0x10D65},
    {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x11380, 0x11389}, {0x1138B, 0x1138B}, {0x1138E, 0x1138E},
    {0x11390, 0x113B5}, {0x113B7, 0x113B7}, {0x113D1, 0x113D1}, {0x113D3, 0x113D3}, {0x11BC0, 0x11BE0},
    {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C}, {0x18CFF, 0x18CFF}, {0x1E5D0, 0x1E5ED},
    {0x1E5F0, 0x1E5F0}, {0x2EBF0, 0x2EE5D},
};
static const cp_range k_new_numbers[] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x16130, 0x16139},
    {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9}, {0x1E5F1, 0x1E5FA},
};
/* Lowercase mappings of the same new characters (code point + delta). */
static const cp_delta k_new_lower[] = {
    {0x1C89, 0x1C89, 1},   {0xA7CB, 0xA7CB, -42343}, {0xA7CC, 0xA7CC, 1},     {0xA7CE, 0xA7CE, 1},
    {0xA7D2, 0xA7D2, 1},   {0xA7D4, 0xA7D4, 1},      {0xA7DA, 0xA7DA, 1},     {0xA7DC, 0xA7DC, -42561},
    {0x10D50, 0x10D65, 32}, {0x16EA0, 0x16EB8, 27},
};
/* Combining marks (Unicode 11 and later) that the reference's older NFC data treats as
 * starters: it never reorders them nor lets a mark compose across them. */
static const cp_range k_nfc_starter_marks[] = {
    {0x7FD, 0x7FD},     {0x898, 0x89F},     {0x8CA, 0x8D3},     {0x9FE, 0x9FE},     {0xC3C, 0xC3C},
    {0xD3B, 0xD3C},     {0xEBA, 0xEBA},     {0x1715, 0x1715},   {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},
    {0xA82C, 0xA82C},   {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34}, {0x11A47, 0x11A47},
    {0x11A99, 0x11A99}, {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97}, {0x11F41, 0x11F42},
    {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF},
    {0x1E4EC, 0x1E4EF},
};
/* Characters whose canonical decomposition the reference's NFC does not know (Dives Akuru O,
 * Unicode 13): left as they are and never composed from their parts. */
static const int32_t k_nfc_no_decomposition[] = {0x11938};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int in_ranges(const cp_range *r, size_t n, int32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

/* ---- UTF-8 --------------------------------------------------------------------------------- */

size_t loco_utf8_decode_lossy(const uint8_t *s, size_t len, int32_t *out) {
    size_t i = 0, n = 0;
    while (i < len) {
        uint8_t b = s[i];
        if (b < 0x80) { out[n++] = b; i++; continue; }
        int need;
        int32_t cp;
        uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (b >= 0xC2 && b <= 0xDF) { need = 1; cp = b & 0x1F; }
        else if (b >= 0xE0 && b <= 0xEF) {
            need = 2; cp = b & 0x0F;
            if (b == 0xE0) lo = 0xA0;      /* overlong */
            else if (b == 0xED) hi = 0x9F; /* surrogates */
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3; cp = b & 0x07;
            if (b == 0xF0) lo = 0x90;      /* overlong */
            else if (b == 0xF4) hi = 0x8F; /* above U+10FFFF */
        } else { out[n++] = 0xFFFD; i++; continue; } /* C0, C1, F5..FF, stray continuation */
        size_t j = i + 1;
        int k = 0;
        for (; k < need && j < len; k++, j++) {
            uint8_t c = s[j];
            uint8_t clo = k == 0 ? lo : 0x80, chi = k == 0 ? hi : 0xBF;
            if (c < clo || c > chi) break;
            cp = (cp << 6) | (c & 0x3F);
        }
        if (k == need) { out[n++] = cp; i = j; }
        else { out[n++] = 0xFFFD; i = j; } /* the maximal valid prefix becomes one U+FFFD */
    }
    return n;
}

int loco_utf8_encode(int32_t cp, uint8_t out[4]) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { out[0] = (uint8_t)(0xC0 | (cp >> 6)); out[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- classes ------------------------------------------------------------------------------- */

static int is_white_space(int32_t cp) {
    /* The Unicode White_Space property (stable since Unicode 6.2): what \s matches in both the
     * Replace normaliser and the split regex of the reference. */
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

loco_clip_char_class loco_clip_char_class_of(int32_t cp) {
    if (cp < 0x80) {
        if (is_white_space(cp)) return LOCO_CLIP_SPACE;
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return LOCO_CLIP_LETTER;
        if (cp >= '0' && cp <= '9') return LOCO_CLIP_NUMBER;
        return LOCO_CLIP_OTHER;
    }
    if (is_white_space(cp)) return LOCO_CLIP_SPACE;
    utf8proc_category_t c = utf8proc_category(cp);
    if (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) return LOCO_CLIP_LETTER;
    if (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO) return LOCO_CLIP_NUMBER;
    if (c == UTF8PROC_CATEGORY_CN) {
        if (in_ranges(k_new_letters, COUNT(k_new_letters), cp)) return LOCO_CLIP_LETTER;
        if (in_ranges(k_new_numbers, COUNT(k_new_numbers), cp)) return LOCO_CLIP_NUMBER;
    }
    return LOCO_CLIP_OTHER;
}

/* ---- buffers ------------------------------------------------------------------------------- */

void loco_cp_buf_free(loco_cp_buf *b) {
    free(b->v);
    b->v = NULL;
    b->n = b->cap = 0;
}

static int cp_reserve(loco_cp_buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) {
        if (cap > SIZE_MAX / 2 / sizeof(int32_t)) return -1;
        cap *= 2;
    }
    int32_t *v = realloc(b->v, cap * sizeof(int32_t));
    if (!v) return -1;
    b->v = v;
    b->cap = cap;
    return 0;
}

/* ---- NFC ------------------------------------------------------------------------------------ */

static int ref_ccc(int32_t cp) {
    if (cp < 0x300) return 0;
    int c = utf8proc_get_property(cp)->combining_class;
    if (c && in_ranges(k_nfc_starter_marks, COUNT(k_nfc_starter_marks), cp)) return 0;
    return c;
}

static int no_decomposition(int32_t cp) {
    for (size_t i = 0; i < COUNT(k_nfc_no_decomposition); i++)
        if (k_nfc_no_decomposition[i] == cp) return 1;
    return 0;
}

/* The primary composite of starter a and b, or -1. utf8proc's own composition step on a
 * two-element buffer, with UTF8PROC_STABLE so that composition exclusions are honoured. */
static int32_t compose_pair(int32_t a, int32_t b) {
    if (b < 0x300) return -1; /* no character below U+0300 is ever the second of a pair */
    utf8proc_int32_t buf[2] = {a, b};
    if (utf8proc_normalize_utf32(buf, 2, UTF8PROC_COMPOSE | UTF8PROC_STABLE) != 1) return -1;
    if (no_decomposition(buf[0])) return -1;
    return buf[0];
}

typedef struct ccc_key { int ccc; size_t pos; int32_t cp; } ccc_key;

static int ccc_key_cmp(const void *pa, const void *pb) {
    const ccc_key *a = pa, *b = pb;
    if (a->ccc != b->ccc) return a->ccc < b->ccc ? -1 : 1;
    return a->pos < b->pos ? -1 : (a->pos > b->pos);
}

/* Canonical ordering: a stable sort of every run of non-starters by combining class. Short
 * runs by insertion; long ones (only adversarial input has them) by qsort on (class, position)
 * so that a long run stays n log n. */
static int canonical_order(int32_t *v, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (ref_ccc(v[i]) == 0) { i++; continue; }
        size_t j = i;
        while (j < n && ref_ccc(v[j]) != 0) j++;
        size_t len = j - i;
        if (len > 1 && len <= 32) {
            for (size_t a = i + 1; a < j; a++) {
                int32_t c = v[a];
                int cc = ref_ccc(c);
                size_t b = a;
                while (b > i && ref_ccc(v[b - 1]) > cc) { v[b] = v[b - 1]; b--; }
                v[b] = c;
            }
        } else if (len > 32) {
            ccc_key *k = malloc(len * sizeof(ccc_key));
            if (!k) return -1;
            for (size_t a = 0; a < len; a++) k[a] = (ccc_key){ref_ccc(v[i + a]), a, v[i + a]};
            qsort(k, len, sizeof(ccc_key), ccc_key_cmp);
            for (size_t a = 0; a < len; a++) v[i + a] = k[a].cp;
            free(k);
        }
        i = j;
    }
    return 0;
}

static loco_status nfc(const int32_t *in, size_t n, loco_cp_buf *out, loco_err *err) {
    loco_cp_buf d = {0};
    /* 1. full canonical decomposition */
    for (size_t i = 0; i < n; i++) {
        int32_t cp = in[i];
        if (cp < 0xC0 || no_decomposition(cp)) { /* nothing below U+00C0 decomposes */
            if (cp_reserve(&d, 1)) goto oom;
            d.v[d.n++] = cp;
            continue;
        }
        utf8proc_int32_t tmp[32];
        int last = 0;
        utf8proc_ssize_t k = utf8proc_decompose_char(cp, tmp, 32, UTF8PROC_DECOMPOSE, &last);
        if (k < 0 || k > 32) { k = 1; tmp[0] = cp; } /* cannot happen for valid code points */
        if (cp_reserve(&d, (size_t)k)) goto oom;
        for (utf8proc_ssize_t j = 0; j < k; j++) d.v[d.n++] = tmp[j];
    }
    /* 2. canonical ordering */
    if (canonical_order(d.v, d.n)) goto oom;
    /* 3. canonical composition */
    out->n = 0;
    if (cp_reserve(out, d.n)) goto oom;
    ptrdiff_t starter = -1;
    for (size_t i = 0; i < d.n; i++) {
        int32_t c = d.v[i];
        int cc = ref_ccc(c);
        if (starter >= 0) {
            size_t last = out->n - 1;
            int last_cc = ref_ccc(out->v[last]);
            int unblocked = (last == (size_t)starter) || (last_cc != 0 && last_cc < cc);
            if (unblocked) {
                int32_t comp = compose_pair(out->v[starter], c);
                if (comp >= 0) { out->v[starter] = comp; continue; }
            }
        }
        if (cc == 0) starter = (ptrdiff_t)out->n;
        out->v[out->n++] = c;
    }
    loco_cp_buf_free(&d);
    return LOCO_OK;
oom:
    loco_cp_buf_free(&d);
    return loco_err_set(err, LOCO_ENOMEM, "clip_unicode.c: out of memory normalising %zu code points", n);
}

/* ---- lowercase ------------------------------------------------------------------------------ */

/* Rust's char::to_lowercase: one code point, except U+0130 (two). Returns the count written. */
static int to_lower(int32_t cp, int32_t out[2]) {
    if (cp < 0x80) {
        out[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
        return 1;
    }
    if (cp == 0x130) { out[0] = 0x69; out[1] = 0x307; return 2; }
    for (size_t i = 0; i < COUNT(k_new_lower); i++) {
        if (cp >= k_new_lower[i].lo && cp <= k_new_lower[i].hi &&
            utf8proc_category(cp) == UTF8PROC_CATEGORY_CN) {
            out[0] = cp + k_new_lower[i].delta;
            return 1;
        }
    }
    out[0] = utf8proc_tolower(cp);
    return 1;
}

loco_status loco_clip_normalize(const int32_t *in, size_t n, loco_cp_buf *out, loco_err *err) {
    loco_cp_buf c = {0};
    loco_status st = nfc(in, n, &c, err);
    if (st != LOCO_OK) { loco_cp_buf_free(&c); return st; }
    out->n = 0;
    /* lowercase turns U+0130 into two code points; whitespace collapsing only shrinks */
    size_t need = c.n;
    for (size_t i = 0; i < c.n; i++) need += c.v[i] == 0x130;
    if (cp_reserve(out, need)) {
        loco_cp_buf_free(&c);
        return loco_err_set(err, LOCO_ENOMEM, "clip_unicode.c: out of memory normalising %zu code points", n);
    }
    for (size_t i = 0; i < c.n; i++) {
        if (is_white_space(c.v[i])) {
            while (i + 1 < c.n && is_white_space(c.v[i + 1])) i++;
            out->v[out->n++] = 0x20;
            continue;
        }
        int32_t l[2];
        int k = to_lower(c.v[i], l);
        for (int j = 0; j < k; j++) out->v[out->n++] = l[j];
    }
    loco_cp_buf_free(&c);
    return LOCO_OK;
}
