/* clip_text.h: the CLIP text transformer (transformers' CLIPTextModel and
 * CLIPTextModelWithProjection), built from its config.json and a weight set.
 *
 * Everything architectural comes from the config: width, depth, heads, MLP width, positions,
 * activation (quick_gelu for OpenAI CLIP-L, exact gelu for OpenCLIP), LayerNorm eps and the
 * eos_token_id that decides how the pooled token is found. A forward pass takes int32 ids
 * [B, L] and fills only what the caller asks for: any hidden_states[k] (raw, or with the final
 * LayerNorm for SD 1.x/2.x clip_skip), last_hidden_state, pooled, text_embeds. Attention is
 * causal and never masks padding (no SD checkpoint sets use_attention_mask).
 *
 * Intervention sites (engine/sites.h), in execution order:
 *   0         LOCO_SITE_TEXT_EMBED         "text_model.embeddings" (token + position)
 *   1 + 3i    LOCO_SITE_TEXT_OUT_PROJ_IN   "text_model.encoder.layers.i.self_attn.out_proj" (its input)
 *   2 + 3i    LOCO_SITE_TEXT_SELF_ATTN     "text_model.encoder.layers.i.self_attn" (after out_proj)
 *   3 + 3i    LOCO_SITE_TEXT_MLP           "text_model.encoder.layers.i.mlp"
 * A hook may overwrite the tensor in place; the pass continues from the modified value
 * (self-attention and MLP outputs before their residual add), as a PyTorch forward hook that
 * returns a new output would.
 *
 * Weights can be replaced one tensor at a time (Diff-QuickFix edits layer 0's out_proj);
 * a variant made with loco_clip_text_variant shares every tensor it does not replace with
 * its base, and the shared tensors live until the last model using them is freed. */
#ifndef LOCO_CLIP_TEXT_H
#define LOCO_CLIP_TEXT_H

#include <jansson.h>
#include <stdint.h>

#include "backend.h"
#include "model_files.h"
#include "sites.h"
#include "weights.h"

/* Upper bounds of what a config may claim, 10-50x the largest CLIP text tower of the supported
 * models (OpenCLIP bigG: 32 layers, width 1280, MLP 5120, projection 1280, vocabulary 49408, 77
 * positions). The parser refuses larger values with a line naming the key and the limit, so a
 * corrupt config fails at once instead of allocating tables for billions of layers, and every
 * later size product stays in range (hidden x intermediate < 2^31, layer tables < 2^15 entries). */
#define LOCO_CLIP_TEXT_MAX_LAYERS 1024
#define LOCO_CLIP_TEXT_MAX_HIDDEN 16384       /* hidden_size, num_attention_heads, projection_dim */
#define LOCO_CLIP_TEXT_MAX_INTERMEDIATE 65536 /* intermediate_size */
#define LOCO_CLIP_TEXT_MAX_VOCAB (1 << 20)
#define LOCO_CLIP_TEXT_MAX_POSITIONS 8192 /* max_position_embeddings */

typedef struct loco_clip_text_config {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int max_position_embeddings;
    loco_act hidden_act;
    float layer_norm_eps;
    int32_t eos_token_id;   /* 2 = legacy configs: pooled token at argmax(ids) */
    int projection_dim;     /* text_projection output width; 0 when the config has none */
    int with_projection;    /* 1: architectures names CLIPTextModelWithProjection, 0: another class,
                               -1: no architectures key (then the weights decide) */
    int use_attention_mask; /* set by some non-SD configs; the SD pipelines then mask padding */
} loco_clip_text_config;

/* transformers' CLIPTextConfig defaults for the keys that may be omitted (activation, eps,
 * eos id); the sizes are left 0 and must come from the file. */
void loco_clip_text_config_init(loco_clip_text_config *c);
/* Parse config.json text (a CLIPTextConfig, or a CLIPConfig whose "text_config" is used).
 * `source` names the file in error messages. */
loco_status loco_clip_text_config_parse(const char *json_text, size_t len, const char *source,
                                        loco_clip_text_config *out, loco_err *err);
loco_status loco_clip_text_config_load(const char *path, loco_clip_text_config *out, loco_err *err);
/* The same from parsed JSON (loco_model_files_config gives it). */
loco_status loco_clip_text_config_from_json(const json_t *root, const char *source, loco_clip_text_config *out,
                                            loco_err *err);

typedef struct loco_clip_text loco_clip_text;

/* Build the model on `be`, uploading every tensor from `w` in the backend's activation dtype.
 * The weight set may be freed afterwards. text_projection.weight is loaded when the config
 * says WithProjection (then it is required); a plain CLIPTextModel ignores a stray one, as
 * transformers does (SD 2.x single files carry an unused one). */
loco_status loco_clip_text_create(loco_backend *be, const loco_clip_text_config *cfg, const loco_weights *w,
                                  loco_clip_text **out, loco_err *err);
/* A component folder as diffusers saves it: <dir>/config.json and <dir>/model[.variant].safetensors
 * (or sharded). variant may be NULL. */
loco_status loco_clip_text_load_dir(loco_backend *be, const char *dir, const char *variant, loco_clip_text **out,
                                    loco_err *err);
/* "text_encoder" or "text_encoder_2" of an opened model (diffusers folder or single file). */
loco_status loco_clip_text_load(loco_backend *be, const loco_model_files *mf, const char *component,
                                loco_clip_text **out, loco_err *err);
void loco_clip_text_free(loco_clip_text *m);

const loco_clip_text_config *loco_clip_text_get_config(const loco_clip_text *m);
loco_backend *loco_clip_text_backend(const loco_clip_text *m);
int loco_clip_text_has_projection(const loco_clip_text *m);

/* The site table, execution order (see above). */
int loco_clip_text_num_sites(const loco_clip_text *m);
const loco_site *loco_clip_text_site(const loco_clip_text *m, int id);
const loco_site *loco_clip_text_find_site(const loco_clip_text *m, const char *name, loco_site_kind kind);
/* The site table a text encoder of this config would publish, without loading anything (lists
 * the sites of a model before it is resident; names carry no component prefix). Free with
 * loco_clip_text_sites_free. Configs of more than LOCO_CLIP_TEXT_MAX_LIST_LAYERS layers (real
 * CLIP encoders have at most 32; the parser already refuses them, this guards hand-made configs)
 * are LOCO_EFORMAT. */
#define LOCO_CLIP_TEXT_MAX_LIST_LAYERS LOCO_CLIP_TEXT_MAX_LAYERS
loco_status loco_clip_text_config_sites(const loco_clip_text_config *cfg, loco_site **sites, int *n, loco_err *err);
void loco_clip_text_sites_free(loco_site *sites, int n);

/* ---- forward ------------------------------------------------------------------------------ */

/* One requested hidden state. index counts as Python does on the hidden_states tuple of
 * num_hidden_layers + 1 entries: 0 = embeddings, k = output of layer k (1-based), negative
 * from the end (-1 = last layer, -2 = penultimate). final_ln applies final_layer_norm (SD 1.x/2.x
 * clip_skip); SD-XL uses the raw state. */
typedef struct loco_clip_hidden_request {
    int index;
    int final_ln;
    loco_tensor *out; /* [B, L, hidden_size], activation dtype, caller-allocated */
} loco_clip_hidden_request;

/* What a forward pass fills; NULL / 0 = not wanted. All tensors are caller-allocated on the
 * model's backend in its activation dtype. */
typedef struct loco_clip_text_outputs {
    const loco_clip_hidden_request *hidden;
    int n_hidden;
    loco_tensor *last_hidden_state; /* [B, L, hidden_size] */
    loco_tensor *pooled;            /* [B, hidden_size]: last_hidden_state at the EOS token */
    loco_tensor *text_embeds;       /* [B, projection_dim]: pooled · text_projectionᵀ */
} loco_clip_text_outputs;

void loco_clip_text_outputs_init(loco_clip_text_outputs *o);

/* ids: host int32 [batch, length], length <= max_position_embeddings. hooks may be NULL.
 * Layers after the deepest requested state are skipped unless last_hidden_state, pooled or
 * text_embeds is asked for. */
loco_status loco_clip_text_forward(const loco_clip_text *m, const int32_t *ids, int batch, int length,
                                   const loco_clip_text_outputs *outs, const loco_site_hooks *hooks, loco_err *err);

/* The token position whose state is pooled for one row of ids (what transformers does:
 * argmax(ids) for legacy eos_token_id == 2, else the first eos_token_id). LOCO_EINVAL when a
 * non-legacy row has no EOS. */
loco_status loco_clip_text_pool_position(const loco_clip_text *m, const int32_t *row, int length, int *pos,
                                         loco_err *err);

/* ---- weights and variants ----------------------------------------------------------------------- */

/* The resident tensor of a parameter by its transformers name
 * ("text_model.encoder.layers.0.self_attn.out_proj.weight"), or NULL. */
const loco_tensor *loco_clip_text_param(const loco_clip_text *m, const char *name);
int loco_clip_text_num_params(const loco_clip_text *m);
const char *loco_clip_text_param_name(const loco_clip_text *m, int i);

/* Replace one parameter with host data of the same shape (src_dtype F32/F16/BF16/F64). A tensor
 * still shared with a base or variant is never written: this model gets its own copy. */
loco_status loco_clip_text_set_param(loco_clip_text *m, const char *name, const void *data, loco_dtype src_dtype,
                                     loco_err *err);
/* A new model sharing every tensor of `base` (nothing is copied); edit it with
 * loco_clip_text_set_param. Base and variant may be freed in any order. */
loco_status loco_clip_text_variant(const loco_clip_text *base, loco_clip_text **out, loco_err *err);

#endif
