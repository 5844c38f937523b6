/* clip_tokenizer.h: the CLIP BPE tokenizer, giving the ids of transformers' CLIPTokenizer.
 *
 * Reads a tokenizer folder as diffusers/transformers save it: vocab.json, merges.txt,
 * tokenizer_config.json and special_tokens_map.json (bos/eos/pad/unk tokens, model_max_length,
 * added special tokens such as SD 2.x's "!" pad token, which is then split out of prompts and
 * encoded as its own id). Nothing is hard-coded to the real CLIP vocabulary: the tiny fixture
 * vocabularies work the same way. */
#ifndef LOCO_CLIP_TOKENIZER_H
#define LOCO_CLIP_TOKENIZER_H

#include <stdint.h>
#include "base.h"

typedef struct loco_clip_tokenizer loco_clip_tokenizer;

loco_status loco_clip_tokenizer_load(const char *dir, loco_clip_tokenizer **out, loco_err *err);
void loco_clip_tokenizer_free(loco_clip_tokenizer *t);

int32_t loco_clip_tokenizer_bos(const loco_clip_tokenizer *t);
int32_t loco_clip_tokenizer_eos(const loco_clip_tokenizer *t);
int32_t loco_clip_tokenizer_pad(const loco_clip_tokenizer *t);
int loco_clip_tokenizer_max_length(const loco_clip_tokenizer *t); /* model_max_length, 77 */
int32_t loco_clip_tokenizer_vocab_size(const loco_clip_tokenizer *t);

/* As the pipelines call it: BOS, the content tokens truncated to max_length-2, EOS, then pad
 * to max_length. ids_out has room for max_length ids; *n_content (may be NULL) receives the
 * number of content tokens kept (so the EOS sits at 1 + *n_content). */
loco_status loco_clip_tokenize(const loco_clip_tokenizer *t, const char *text, int32_t *ids_out, int *n_content,
                               loco_err *err);

/* Content ids only (no BOS/EOS, no truncation, no padding): for locating subject tokens.
 * *ids is malloc'ed; the caller frees it. */
loco_status loco_clip_tokenize_raw(const loco_clip_tokenizer *t, const char *text, int32_t **ids, int *n,
                                   loco_err *err);

/* The same for text of a given byte length, which may contain NUL bytes (JSON prompts can hold
 * \u0000; transformers turns it into a byte token like any other control character). */
loco_status loco_clip_tokenize_n(const loco_clip_tokenizer *t, const char *text, size_t len, int32_t *ids_out,
                                 int *n_content, loco_err *err);
loco_status loco_clip_tokenize_raw_n(const loco_clip_tokenizer *t, const char *text, size_t len, int32_t **ids,
                                     int *n, loco_err *err);

/* The text of one id as stored in vocab.json ("painting</w>"), or NULL if out of range. */
const char *loco_clip_tokenizer_token(const loco_clip_tokenizer *t, int32_t id);

#endif
