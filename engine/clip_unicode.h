/* clip_unicode.h: the Unicode steps of the CLIP tokenizer, as the Rust `tokenizers` library
 * behind transformers' CLIPTokenizer performs them.
 *
 * - UTF-8 decoding with U+FFFD for invalid bytes (Python's errors="replace": one U+FFFD per
 *   maximal invalid subpart), so any byte string can be tokenized;
 * - the normaliser: NFC, every run of White_Space collapsed to one U+0020, then per-character
 *   full lowercase mapping (Rust's char::to_lowercase, so U+0130 becomes "i" U+0307);
 * - the character classes the pre-tokenizer regex uses (\s, \p{L}, \p{N}).
 *
 * Unicode data comes from utf8proc, adjusted by small tables (tools/clip_unicode_tables.py) where
 * the reference library uses another Unicode version. */
#ifndef LOCO_CLIP_UNICODE_H
#define LOCO_CLIP_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"

/* Decodes len bytes into code points; out must have room for len entries. Returns the count. */
size_t loco_utf8_decode_lossy(const uint8_t *s, size_t len, int32_t *out);
/* Encodes one valid code point; returns its byte length (1..4). */
int loco_utf8_encode(int32_t cp, uint8_t out[4]);

typedef enum loco_clip_char_class {
    LOCO_CLIP_SPACE,  /* \s: White_Space */
    LOCO_CLIP_LETTER, /* \p{L} */
    LOCO_CLIP_NUMBER, /* \p{N} */
    LOCO_CLIP_OTHER,  /* everything else, including marks and controls */
} loco_clip_char_class;

loco_clip_char_class loco_clip_char_class_of(int32_t cp);

/* A growable code point buffer. */
typedef struct loco_cp_buf {
    int32_t *v;
    size_t n, cap;
} loco_cp_buf;

void loco_cp_buf_free(loco_cp_buf *b);

/* Replaces out's contents with the normalised form of in[0..n) (NFC, whitespace runs to one
 * space, lowercase). Linear in n, apart from sorting runs of combining marks. */
loco_status loco_clip_normalize(const int32_t *in, size_t n, loco_cp_buf *out, loco_err *err);

#endif
