/* clip_vision.h: the CLIP vision transformer (transformers' CLIPVisionModel, and the vision half
 * of CLIPModel with its visual_projection), built from config.json and a weight set.
 *
 * Architecture, as transformers computes it: patch embedding = Conv2d(3 -> D, kernel = stride =
 * patch_size, no bias) flattened to [B, (S/p)^2, D]; a learned class token prepended; learned
 * position embeddings added; pre_layrnorm; num_hidden_layers pre-LN blocks (LayerNorm -> multi-head
 * self-attention without a mask -> residual, LayerNorm -> MLP fc1/act/fc2 -> residual, the same
 * block as the text tower but not causal); post_layernorm on the class token (the pooled output);
 * visual_projection (Linear, no bias) for image_embeds.
 *
 * Weights are looked up by their transformers names ("vision_model.embeddings.patch_embedding.weight",
 * "vision_model.encoder.layers.0.self_attn.q_proj.weight", "visual_projection.weight"), so one
 * CLIPModel model.safetensors serves this tower and the text tower (engine/clip_text.h). */
#ifndef LOCO_CLIP_VISION_H
#define LOCO_CLIP_VISION_H

#include <jansson.h>

#include "backend.h"
#include "weights.h"

typedef struct loco_clip_vision_config {
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int image_size;
    int patch_size;
    int num_channels;   /* 3 */
    int projection_dim; /* visual_projection output width; 0: the weights decide, or no projection */
    loco_act hidden_act;
    float layer_norm_eps;
} loco_clip_vision_config;

/* transformers' CLIPVisionConfig defaults for keys that may be omitted (quick_gelu, eps 1e-5,
 * 3 channels); sizes stay 0 and must come from the file. */
void loco_clip_vision_config_init(loco_clip_vision_config *c);
/* From a parsed config.json: a CLIPVisionConfig, or a CLIPConfig whose "vision_config" is used
 * (projection_dim then comes from the top level). `source` names the file in errors. */
loco_status loco_clip_vision_config_from_json(const json_t *root, const char *source, loco_clip_vision_config *out,
                                              loco_err *err);

typedef struct loco_clip_vision loco_clip_vision;

/* Build on `be`, uploading every tensor from `w` (which may be freed afterwards). with_projection:
 * 1 requires visual_projection.weight, 0 ignores it, -1 loads it when present. */
loco_status loco_clip_vision_create(loco_backend *be, const loco_clip_vision_config *cfg, const loco_weights *w,
                                    int with_projection, loco_clip_vision **out, loco_err *err);
void loco_clip_vision_free(loco_clip_vision *m);

const loco_clip_vision_config *loco_clip_vision_get_config(const loco_clip_vision *m);
int loco_clip_vision_has_projection(const loco_clip_vision *m);

/* pixel_values [B, num_channels, image_size, image_size] (activation dtype, already normalised).
 * pooled [B, hidden_size] (post_layernorm of the class token) and/or image_embeds
 * [B, projection_dim]; either may be NULL. Outputs are caller-allocated, activation dtype. */
loco_status loco_clip_vision_forward(const loco_clip_vision *m, const loco_tensor *pixel_values, loco_tensor *pooled,
                                     loco_tensor *image_embeds, loco_err *err);

#endif
