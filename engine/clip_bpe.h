/* clip_bpe.h: a byte-level BPE model (vocab.json + merges.txt), merging as the Rust `tokenizers`
 * BPE model does: every byte of a pre-token becomes the vocabulary symbol of its GPT-2
 * bytes_to_unicode character, the last one with the end-of-word suffix ("</w>" for CLIP), then
 * the adjacent pair with the lowest merge rank (leftmost first among equal ranks) is merged until
 * none is left. Used by clip_tokenizer.c; nothing here knows about CLIP's special tokens. */
#ifndef LOCO_CLIP_BPE_H
#define LOCO_CLIP_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"

typedef struct loco_bpe loco_bpe;

/* Loads vocab.json (an object of token -> non-negative integer id) and merges.txt (one "a b"
 * pair per line; lines starting with "#version" skipped; every pair and its concatenation must
 * be in the vocabulary, as the reference library requires: no cut-off is applied). */
loco_status loco_bpe_load(const char *vocab_path, const char *merges_path, const char *end_of_word_suffix,
                          loco_bpe **out, loco_err *err);
void loco_bpe_free(loco_bpe *b);

int32_t loco_bpe_id(const loco_bpe *b, const char *token, size_t len); /* -1 if absent */
const char *loco_bpe_token(const loco_bpe *b, int32_t id);               /* NULL if no token has it */
size_t loco_bpe_vocab_count(const loco_bpe *b);                           /* entries in vocab.json */
int32_t loco_bpe_max_id(const loco_bpe *b);                               /* -1 when empty */
size_t loco_bpe_merge_count(const loco_bpe *b);

typedef struct loco_id_buf {
    int32_t *v;
    size_t n, cap;
} loco_id_buf;

int loco_id_buf_push(loco_id_buf *b, int32_t id); /* 0, or -1 when out of memory */
void loco_id_buf_free(loco_id_buf *b);

/* Reusable working memory of loco_bpe_encode_word (one per thread/call; zero-initialise). */
typedef struct loco_bpe_scratch {
    void *sym;
    size_t sym_cap;
    void *heap;
    size_t heap_cap;
    void *buckets; /* per-rank candidate lists, only for very long words */
    size_t n_buckets;
} loco_bpe_scratch;

void loco_bpe_scratch_free(loco_bpe_scratch *s);

/* Appends the ids of one pre-token (n > 0 raw UTF-8 bytes) to out. A byte whose symbol is not in
 * the vocabulary becomes unk_id; unk_id < 0 makes that an error (LOCO_EFORMAT). */
loco_status loco_bpe_encode_word(const loco_bpe *b, const uint8_t *bytes, size_t n, int32_t unk_id,
                                 loco_bpe_scratch *s, loco_id_buf *out, loco_err *err);

#endif
