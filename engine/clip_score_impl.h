/* clip_score_impl.h: what clip_score.c and clip_openclip.c share (not part of the public API). */
#ifndef LOCO_CLIP_SCORE_IMPL_H
#define LOCO_CLIP_SCORE_IMPL_H

#include <jansson.h>

#include "clip_score.h"
#include "clip_text.h"
#include "clip_vision.h"
#include "weights.h"

/* The tower configs and the eval transform of an open_clip_config.json. */
loco_status loco_openclip_configs(const json_t *root, const char *src, loco_clip_text_config *tc,
                                  loco_clip_vision_config *vc, loco_clip_preprocess_config *pc, loco_err *err);
/* open_clip_model.safetensors mapped to transformers' CLIPModel names (views into the file,
 * which the weight set keeps open). */
loco_status loco_openclip_weights(const char *path, int text_layers, loco_weights **out, loco_err *err);

#endif
