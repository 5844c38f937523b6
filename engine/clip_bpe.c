/* clip_bpe.c: byte-level BPE model (see clip_bpe.h).
 *
 * The merge loop follows the reference (the Rust `tokenizers` BPE model) rather than the
 * textbook "merge every occurrence of the best pair" loop, because the two differ on unusual merge
 * lists: a min-heap of (rank, position) candidates; a popped candidate is applied only if the two
 * symbols at that position still form a pair whose merge yields the same id; after a merge the new
 * pairs with the left and right neighbours are pushed. A duplicated pair in merges.txt takes the
 * rank of its last line, as the reference's hash map does. */
#include "clip_bpe.h"
#include "keyed_hash.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- string -> id map ----------------------------------------------------------------------- */

typedef struct str_slot {
    uint32_t off; /* into arena; UINT32_MAX = empty */
    uint32_t len;
    int32_t id;
} str_slot;

typedef struct pair_slot {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX = empty */
    uint32_t rank;
    int32_t new_id;
} pair_slot;

struct loco_bpe {
    char *arena; /* NUL-terminated tokens */
    size_t arena_len;
    str_slot *slots;
    size_t slot_mask;
    size_t count;
    int32_t max_id;
    uint32_t *id_to_off; /* max_id + 1 entries; UINT32_MAX where no token has the id */
    pair_slot *pairs;
    size_t pair_mask;
    size_t merge_count;
    int32_t byte_id[256];     /* symbol of a byte inside a word */
    int32_t byte_end_id[256]; /* symbol of a byte ending a word (with the suffix) */
    loco_hash_key key;        /* of both hash tables, drawn per tokenizer */
};

/* Tokens and merge pairs come from files users supply (vocab.json, merges.txt): both tables are
 * keyed per loaded tokenizer (engine/keyed_hash.h), so no file can be made whose entries all
 * collide. */
static uint64_t hash_bytes(const loco_bpe *b, const void *p, size_t n) { return loco_siphash(&b->key, p, n); }

static uint64_t hash_pair(const loco_bpe *b, uint64_t k) {
    k ^= b->key.k1; /* a secret offset before a bijective mix: buckets cannot be chosen from outside */
    k ^= k >> 33; k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33; k *= UINT64_C(0xc4ceb9fe1a85ec53);
    return k ^ (k >> 33);
}

int32_t loco_bpe_id(const loco_bpe *b, const char *token, size_t len) {
    if (!b->slots) return -1;
    for (size_t i = hash_bytes(b, token, len) & b->slot_mask;; i = (i + 1) & b->slot_mask) {
        const str_slot *s = &b->slots[i];
        if (s->off == UINT32_MAX) return -1;
        if (s->len == len && memcmp(b->arena + s->off, token, len) == 0) return s->id;
    }
}

const char *loco_bpe_token(const loco_bpe *b, int32_t id) {
    if (id < 0 || id > b->max_id || b->id_to_off[id] == UINT32_MAX) return NULL;
    return b->arena + b->id_to_off[id];
}

size_t loco_bpe_vocab_count(const loco_bpe *b) { return b->count; }
int32_t loco_bpe_max_id(const loco_bpe *b) { return b->max_id; }
size_t loco_bpe_merge_count(const loco_bpe *b) { return b->merge_count; }

static const pair_slot *pair_find(const loco_bpe *b, int32_t l, int32_t r) {
    if (!b->pairs) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    for (size_t i = hash_pair(b, key) & b->pair_mask;; i = (i + 1) & b->pair_mask) {
        if (b->pairs[i].key == UINT64_MAX) return NULL;
        if (b->pairs[i].key == key) return &b->pairs[i];
    }
}

/* ---- loading -------------------------------------------------------------------------------- */

void loco_bpe_free(loco_bpe *b) {
    if (!b) return;
    free(b->arena);
    free(b->slots);
    free(b->id_to_off);
    free(b->pairs);
    free(b);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* Ids index a dense table of (max id + 1) entries, so one huge id in a hostile or broken
 * vocab.json would cost gigabytes (or overflow). Real vocabularies are dense (CLIP: 49408 tokens,
 * ids 0..49407); allow gaps up to 4x the entry count (at least 1024, for small hand-written
 * files) and never more than 2^24 ids (64 MB of table). */
#define BPE_MAX_IDS ((json_int_t)1 << 24)
static json_int_t id_limit(size_t n_entries) {
    if (n_entries >= (size_t)(BPE_MAX_IDS / 4)) return BPE_MAX_IDS;
    json_int_t lim = (json_int_t)n_entries * 4;
    return lim < 1024 ? 1024 : lim;
}

static loco_status load_vocab(loco_bpe *b, const char *path, loco_err *err) {
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return loco_err_set(err, errno == ENOENT ? LOCO_ENOTFOUND : LOCO_EIO, "%s: cannot open: %s", path,
                            strerror(errno));
    fclose(probe);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return loco_err_set(err, LOCO_EFORMAT, "%s: invalid JSON at line %d column %d: %s", path, jerr.line,
                            jerr.column, jerr.text);
    loco_status st = LOCO_OK;
    if (!json_is_object(root)) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: expected an object of token -> id", path);
        goto done;
    }
    size_t n = json_object_size(root), bytes = 0;
    const json_int_t limit = id_limit(n);
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: token \"%.80s\" has no valid id (non-negative integer)", path,
                              key);
            goto done;
        }
        json_int_t id = json_integer_value(val);
        if (id >= limit) {
            st = loco_err_set(err, LOCO_EFORMAT,
                              "%s: token \"%.80s\" has id %lld, too large for a vocabulary of %zu tokens (ids must "
                              "be below %lld)",
                              path, key, (long long)id, n, (long long)limit);
            goto done;
        }
        bytes += strlen(key) + 1;
        if ((json_int_t)b->max_id < id) b->max_id = (int32_t)id;
    }
    if (bytes >= UINT32_MAX) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: vocabulary too large", path);
        goto done;
    }
    b->arena = malloc(bytes ? bytes : 1);
    size_t cap = pow2_at_least(2 * n + 1);
    b->slots = malloc(cap * sizeof(str_slot));
    b->id_to_off = malloc(((size_t)b->max_id + 1) * sizeof(uint32_t));
    if (!b->arena || !b->slots || !b->id_to_off) {
        st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory for %zu tokens", path, n);
        goto done;
    }
    b->slot_mask = cap - 1;
    for (size_t i = 0; i < cap; i++) b->slots[i].off = UINT32_MAX;
    for (int32_t i = 0; i <= b->max_id; i++) b->id_to_off[i] = UINT32_MAX;
    json_object_foreach(root, key, val) {
        size_t len = strlen(key);
        int32_t id = (int32_t)json_integer_value(val);
        uint32_t off = (uint32_t)b->arena_len;
        memcpy(b->arena + off, key, len + 1);
        b->arena_len += len + 1;
        size_t i = hash_bytes(b, key, len) & b->slot_mask;
        while (b->slots[i].off != UINT32_MAX) i = (i + 1) & b->slot_mask; /* keys are unique in jansson */
        b->slots[i] = (str_slot){off, (uint32_t)len, id};
        /* two tokens sharing an id: either may name it (the reference's reverse map is as arbitrary) */
        b->id_to_off[id] = off;
        b->count++;
    }
done:
    json_decref(root);
    return st;
}

static char *read_file(const char *path, size_t *len, loco_err *err, loco_status *st) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *st = loco_err_set(err, errno == ENOENT ? LOCO_ENOTFOUND : LOCO_EIO, "%s: cannot open: %s", path,
                           strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf) { *st = loco_err_set(err, LOCO_ENOMEM, "%s: out of memory reading the file", path); return NULL; }
    if (bad) { free(buf); *st = loco_err_set(err, LOCO_EIO, "%s: read error", path); return NULL; }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static loco_status load_merges(loco_bpe *b, const char *path, loco_err *err) {
    loco_status st = LOCO_OK;
    size_t len = 0;
    char *text = read_file(path, &len, err, &st);
    if (!text) return st;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    size_t cap = pow2_at_least(2 * lines + 1);
    b->pairs = malloc(cap * sizeof(pair_slot));
    char *joined = malloc(len + 1);
    if (!b->pairs || !joined) {
        free(text);
        free(joined);
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory for %zu merges", path, lines);
    }
    b->pair_mask = cap - 1;
    for (size_t i = 0; i < cap; i++) b->pairs[i].key = UINT64_MAX;
    size_t pos = 0, line_no = 0;
    uint32_t rank = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && text[end] != '\n') end++;
        size_t next = end + 1;
        line_no++;
        if (end > pos && text[end - 1] == '\r') end--; /* lines as BufRead::lines() gives them */
        const char *line = text + pos;
        size_t ll = end - pos;
        pos = next;
        if (ll >= 8 && memcmp(line, "#version", 8) == 0) continue;
        const char *sp = memchr(line, ' ', ll);
        if (!sp || sp == line + ll - 1 || memchr(sp + 1, ' ', (size_t)(line + ll - sp - 1))) {
            st = loco_err_set(err, LOCO_EFORMAT, "%s: line %zu is not a pair \"left right\"", path, line_no);
            break;
        }
        size_t la = (size_t)(sp - line), lb = ll - la - 1;
        int32_t ia = loco_bpe_id(b, line, la), ib = loco_bpe_id(b, sp + 1, lb);
        memcpy(joined, line, la);
        memcpy(joined + la, sp + 1, lb);
        int32_t ic = loco_bpe_id(b, joined, la + lb);
        if (ia < 0 || ib < 0 || ic < 0) {
            const char *what = ia < 0 ? line : ib < 0 ? sp + 1 : joined;
            int wl = (int)(ia < 0 ? la : ib < 0 ? lb : la + lb);
            st = loco_err_set(err, LOCO_EFORMAT, "%s: line %zu: token \"%.*s\" is not in vocab.json", path, line_no,
                              wl > 80 ? 80 : wl, what);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
        size_t i = hash_pair(b, key) & b->pair_mask;
        while (b->pairs[i].key != UINT64_MAX && b->pairs[i].key != key) i = (i + 1) & b->pair_mask;
        b->pairs[i] = (pair_slot){key, rank, ic}; /* a repeated pair keeps its last rank */
        rank++;
        b->merge_count++;
    }
    free(joined);
    free(text);
    return st;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * map in order to U+0100 and up. Writes the UTF-8 of the character of byte v. */
static size_t byte_char_utf8(int v, char out[3]) {
    int cp;
    if ((v >= '!' && v <= '~') || (v >= 0xA1 && v <= 0xAC) || (v >= 0xAE && v <= 0xFF)) cp = v;
    else {
        int k = 0; /* rank of v among the unprintable bytes */
        for (int u = 0; u < v; u++)
            if (!((u >= '!' && u <= '~') || (u >= 0xA1 && u <= 0xAC) || (u >= 0xAE && u <= 0xFF))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

loco_status loco_bpe_load(const char *vocab_path, const char *merges_path, const char *suffix, loco_bpe **out,
                          loco_err *err) {
    *out = NULL;
    loco_bpe *b = calloc(1, sizeof *b);
    if (!b) return loco_err_set(err, LOCO_ENOMEM, "clip_bpe.c: out of memory");
    b->max_id = -1;
    loco_hash_key_random(&b->key, b);
    loco_status st = load_vocab(b, vocab_path, err);
    if (st == LOCO_OK) st = load_merges(b, merges_path, err);
    if (st != LOCO_OK) { loco_bpe_free(b); return st; }
    size_t sl = strlen(suffix);
    char tmp[3 + 64];
    for (int v = 0; v < 256; v++) {
        size_t l = byte_char_utf8(v, tmp);
        b->byte_id[v] = loco_bpe_id(b, tmp, l);
        if (sl <= 64) {
            memcpy(tmp + l, suffix, sl);
            b->byte_end_id[v] = loco_bpe_id(b, tmp, l + sl);
        } else {
            b->byte_end_id[v] = -1;
        }
    }
    *out = b;
    return LOCO_OK;
}

/* ---- encoding ------------------------------------------------------------------------------- */

int loco_id_buf_push(loco_id_buf *b, int32_t id) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        int32_t *v = realloc(b->v, cap * sizeof(int32_t));
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
    return 0;
}

void loco_id_buf_free(loco_id_buf *b) {
    free(b->v);
    b->v = NULL;
    b->n = b->cap = 0;
}

typedef struct symbol {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t alive;
} symbol;

typedef struct cand {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} cand;

/* A rank's candidates for the long-word path: positions and the id the merge was meant to make. */
typedef struct bucket_entry {
    uint32_t pos;
    int32_t new_id;
} bucket_entry;

typedef struct bucket {
    bucket_entry *v;
    uint32_t n, cap, head;
} bucket;

/* Words at least this long (in bytes) merge through per-rank buckets instead of one binary heap
 * over every candidate: same order of merges, but sequential memory access, so a 10 MB single
 * "word" takes seconds rather than minutes. */
#ifndef LOCO_BPE_LONG_WORD
#define LOCO_BPE_LONG_WORD 1024
#endif

void loco_bpe_scratch_free(loco_bpe_scratch *s) {
    bucket *bk = s->buckets;
    for (size_t i = 0; i < s->n_buckets; i++) free(bk[i].v);
    free(s->buckets);
    free(s->sym);
    free(s->heap);
    memset(s, 0, sizeof *s);
}

static int cand_less(const cand *a, const cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(cand *h, size_t *n, cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static void heap_sift_down(cand *h, size_t n, size_t i) {
    cand c = h[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const cand *best = &c;
        if (l < n && cand_less(&h[l], best)) { m = l; best = &h[l]; }
        if (r < n && cand_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n) {
    cand top = h[0];
    h[0] = h[--(*n)];
    if (*n > 0) heap_sift_down(h, *n, 0);
    return top;
}

/* Where new candidates go: everything into the heap (short words), or ranks above the rank
 * being swept into buckets and the rest into the heap (long words). */
typedef struct queue {
    loco_bpe_scratch *s; /* owns the heap's memory */
    cand *heap;
    size_t hn;
    bucket *bk; /* NULL: heap only */
    uint32_t cur;
} queue;

static int queue_push(queue *q, cand c) {
    if (!q->bk || c.rank <= q->cur) {
        if (q->hn == q->s->heap_cap) {
            size_t cap = q->s->heap_cap ? 2 * q->s->heap_cap : 256;
            cand *h = realloc(q->s->heap, cap * sizeof(cand));
            if (!h) return -1;
            q->s->heap = q->heap = h;
            q->s->heap_cap = cap;
        }
        heap_push(q->heap, &q->hn, c);
        return 0;
    }
    bucket *b = &q->bk[c.rank];
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? 2 * b->cap : 8;
        bucket_entry *v = realloc(b->v, cap * sizeof *v);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = (bucket_entry){c.pos, c.new_id};
    return 0;
}

/* Applies one popped candidate, as the reference does: skipped if stale (symbol gone, last
 * symbol, or the pair there no longer merges into the same id), else merged and the new pairs
 * with both neighbours queued. */
static int apply_candidate(const loco_bpe *b, symbol *sym, queue *q, cand top) {
    symbol *left = &sym[top.pos];
    if (!left->alive || left->next < 0) return 0;
    symbol *right = &sym[left->next];
    const pair_slot *p = pair_find(b, left->id, right->id);
    if (!p || p->new_id != top.new_id) return 0;
    left->id = top.new_id;
    right->alive = 0;
    left->next = right->next;
    if (right->next >= 0) sym[right->next].prev = (int32_t)top.pos;
    if (left->prev >= 0) {
        const pair_slot *r = pair_find(b, sym[left->prev].id, left->id);
        if (r && queue_push(q, (cand){r->rank, (uint32_t)left->prev, r->new_id})) return -1;
    }
    if (left->next >= 0) {
        const pair_slot *r = pair_find(b, left->id, sym[left->next].id);
        if (r && queue_push(q, (cand){r->rank, top.pos, r->new_id})) return -1;
    }
    return 0;
}

static int entry_cmp(const void *a, const void *b) {
    uint32_t x = ((const bucket_entry *)a)->pos, y = ((const bucket_entry *)b)->pos;
    return (x > y) - (x < y);
}

/* The long-word sweep: ranks in increasing order, each rank's positions in increasing order
 * (sorted once when the sweep reaches it: only lower ranks ever add to it, all before), with
 * the heap holding candidates at or below the current rank, which only unusual merge lists
 * create. The pop order is the reference's (rank, position) order. */
static int merge_long(const loco_bpe *b, symbol *sym, size_t n, queue *q) {
    bucket *bk = q->bk;
    for (size_t i = 0; i + 1 < n; i++) {
        const pair_slot *p = pair_find(b, sym[i].id, sym[i + 1].id);
        if (p && queue_push(q, (cand){p->rank, (uint32_t)i, p->new_id})) return -1;
    }
    uint32_t nb = (uint32_t)b->merge_count;
    int rc = 0;
    for (;;) {
        while (q->cur < nb && bk[q->cur].head == bk[q->cur].n) {
            bk[q->cur].n = bk[q->cur].head = 0;
            q->cur++;
            if (q->cur < nb && bk[q->cur].n > 1) {
                bucket *c = &bk[q->cur];
                uint32_t k = 1;
                while (k < c->n && c->v[k - 1].pos <= c->v[k].pos) k++;
                if (k < c->n) qsort(c->v, c->n, sizeof(bucket_entry), entry_cmp);
            }
        }
        cand top;
        if (q->hn > 0 && (q->cur >= nb || q->heap[0].rank < q->cur ||
                          (q->heap[0].rank == q->cur && q->heap[0].pos < bk[q->cur].v[bk[q->cur].head].pos))) {
            top = heap_pop(q->heap, &q->hn);
        } else if (q->cur < nb) {
            bucket_entry e = bk[q->cur].v[bk[q->cur].head++];
            top = (cand){q->cur, e.pos, e.new_id};
        } else {
            break;
        }
        if ((rc = apply_candidate(b, sym, q, top))) break;
    }
    for (uint32_t r = 0; r < nb; r++) bk[r].n = bk[r].head = 0; /* clean for the next word */
    return rc;
}

loco_status loco_bpe_encode_word(const loco_bpe *b, const uint8_t *bytes, size_t n, int32_t unk_id,
                                 loco_bpe_scratch *s, loco_id_buf *out, loco_err *err) {
    if (n == 0) return LOCO_OK;
    if (n > INT32_MAX / 4) return loco_err_set(err, LOCO_EINVAL, "clip_bpe.c: pre-token of %zu bytes too long", n);
    int long_word = n >= LOCO_BPE_LONG_WORD && b->merge_count > 0;
    /* Short words fill the heap with all initial candidates at once (fewer than n); it grows in
     * queue_push from there. Long words keep most candidates in the buckets. */
    size_t heap_need = long_word ? 0 : n;
    if (s->sym_cap < n) {
        void *p = realloc(s->sym, n * sizeof(symbol));
        if (!p) return loco_err_set(err, LOCO_ENOMEM, "clip_bpe.c: out of memory for a %zu-byte word", n);
        s->sym = p;
        s->sym_cap = n;
    }
    if (heap_need && s->heap_cap < heap_need) {
        void *p = realloc(s->heap, heap_need * sizeof(cand));
        if (!p) return loco_err_set(err, LOCO_ENOMEM, "clip_bpe.c: out of memory for a %zu-byte word", n);
        s->heap = p;
        s->heap_cap = heap_need;
    }
    if (long_word && s->n_buckets < b->merge_count) {
        bucket *p = realloc(s->buckets, b->merge_count * sizeof(bucket));
        if (!p) return loco_err_set(err, LOCO_ENOMEM, "clip_bpe.c: out of memory for merge buckets");
        memset(p + s->n_buckets, 0, (b->merge_count - s->n_buckets) * sizeof(bucket));
        s->buckets = p;
        s->n_buckets = b->merge_count;
    }
    symbol *sym = s->sym;
    for (size_t i = 0; i < n; i++) {
        int32_t id = i + 1 == n ? b->byte_end_id[bytes[i]] : b->byte_id[bytes[i]];
        if (id < 0) {
            if (unk_id < 0)
                return loco_err_set(err, LOCO_EFORMAT,
                                    "clip_bpe.c: byte 0x%02x has no symbol in vocab.json and the unknown token "
                                    "is not in the vocabulary either",
                                    bytes[i]);
            id = unk_id;
        }
        sym[i] = (symbol){id, (int32_t)i - 1, i + 1 == n ? -1 : (int32_t)i + 1, 1};
    }
    queue q = {.s = s, .heap = s->heap, .hn = 0, .bk = long_word ? s->buckets : NULL, .cur = 0};
    int rc = 0;
    if (long_word) {
        rc = merge_long(b, sym, n, &q);
    } else {
        for (size_t i = 0; i + 1 < n; i++) {
            const pair_slot *p = pair_find(b, sym[i].id, sym[i + 1].id);
            if (p) q.heap[q.hn++] = (cand){p->rank, (uint32_t)i, p->new_id};
        }
        for (size_t i = q.hn / 2; i-- > 0;) heap_sift_down(q.heap, q.hn, i);
        while (q.hn > 0 && rc == 0) rc = apply_candidate(b, sym, &q, heap_pop(q.heap, &q.hn));
    }
    if (rc) return loco_err_set(err, LOCO_ENOMEM, "clip_bpe.c: out of memory merging a %zu-byte word", n);
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (loco_id_buf_push(out, sym[i].id))
            return loco_err_set(err, LOCO_ENOMEM, "clip_bpe.c: out of memory for token ids");
    return LOCO_OK;
}
