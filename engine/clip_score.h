/* clip_score.h: CLIP scoring of generated images against captions, as researchers compute it
 * with transformers' CLIPModel + CLIPImageProcessor.
 *
 * A scorer is loaded from a CLIPModel folder as transformers saves it (save_pretrained of the
 * model and its processor, e.g. openai/clip-vit-large-patch14), or from an open_clip folder
 * (open_clip_config.json + open_clip_model.safetensors, as the laion/ repositories ship them;
 * the tokenizer from the folder's vocab.json/merges.txt, else loco's bundled CLIP vocabulary; the
 * eval transform of open_clip: same PIL bicubic resize, rounded crop offsets, ToTensor, Normalize).
 * The transformers layout:
 *   config.json             CLIPConfig with text_config and vision_config (+ projection_dim)
 *   model.safetensors       text_model.*, vision_model.*, text_projection, visual_projection
 *   vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json   the BPE tokenizer
 *   preprocessor_config.json   (optional) size, crop_size, resample, mean/std, ...; without it
 *                              CLIP's defaults for the vision tower's image_size are used
 *
 * Image preprocessing is CLIPImageProcessor's, step for step: convert to RGB; resize so the
 * shortest side is size.shortest_edge with PIL's resampler (bicubic, antialiased: engine/
 * pil_resample.h) on the uint8 image; center crop (floor offsets, zero padding when the image is
 * smaller, as transformers does); x * rescale_factor in float64 then float32; (x - mean) / std in
 * float32. The text goes through the text tower with text_projection, pooled at the EOS.
 *
 * Score: the cosine of the L2-normalised image and text embeddings (raw, as the LocoGen neuron
 * evaluation reports it) and the torchmetrics "CLIP score" 100 * max(cos, 0). */
#ifndef LOCO_CLIP_SCORE_H
#define LOCO_CLIP_SCORE_H

#include <jansson.h>

#include "backend.h"
#include "image.h"
#include "pil_resample.h"

typedef struct loco_clip_preprocess_config {
    int do_convert_rgb;
    int do_resize;
    int shortest_edge;        /* size.shortest_edge */
    loco_pil_filter resample; /* bicubic */
    int do_center_crop;
    int crop_height, crop_width;
    int do_rescale;
    double rescale_factor; /* 1/255 */
    int do_normalize;
    float image_mean[3], image_std[3]; /* OpenAI CLIP's */
    /* open_clip's torchvision transform instead of transformers': center-crop offsets rounded
     * (half to even) instead of floored, and ToTensor's u8 / 255 in float32 instead of
     * float32(u8 * rescale_factor in float64). 0 for CLIPImageProcessor. */
    int crop_round;
    int rescale_by_division;
} loco_clip_preprocess_config;

/* CLIPImageProcessor's defaults with size and crop = image_size. */
void loco_clip_preprocess_config_init(loco_clip_preprocess_config *c, int image_size);
/* Overrides from preprocessor_config.json (keys absent keep their value). Accepts "size" as an
 * int or {"shortest_edge"} / {"height","width"} (square only) and "crop_size" as an int or
 * {"height","width"}. */
loco_status loco_clip_preprocess_config_from_json(const json_t *root, const char *source,
                                                  loco_clip_preprocess_config *c, loco_err *err);
/* The output size of loco_clip_preprocess for an image of w x h: [3, *out_h, *out_w]. */
void loco_clip_preprocess_size(const loco_clip_preprocess_config *c, int w, int h, int *out_w, int *out_h);
/* One image (1 or 3 channels) -> dst, float32 CHW of loco_clip_preprocess_size. */
loco_status loco_clip_preprocess(const loco_clip_preprocess_config *c, const loco_image *img, float *dst,
                                 loco_err *err);

typedef struct loco_clip_scorer loco_clip_scorer;

loco_status loco_clip_scorer_load(loco_backend *be, const char *dir, loco_clip_scorer **out, loco_err *err);
void loco_clip_scorer_free(loco_clip_scorer *s);

int loco_clip_scorer_embed_dim(const loco_clip_scorer *s); /* projection_dim */
const loco_clip_preprocess_config *loco_clip_scorer_preprocess_config(const loco_clip_scorer *s);
const char *loco_clip_scorer_path(const loco_clip_scorer *s);

/* L2-normalised embeddings, host float [n, embed_dim]. Images are processed in chunks, so n is
 * not limited by device memory. */
loco_status loco_clip_scorer_image_embeds(const loco_clip_scorer *s, const loco_image *images, int n, float *out,
                                          loco_err *err);
loco_status loco_clip_scorer_text_embeds(const loco_clip_scorer *s, const char *const *texts, int n, float *out,
                                         loco_err *err);

typedef struct loco_clip_score {
    double cosine; /* cos(image, text) in [-1, 1] */
    double score;  /* 100 * max(cosine, 0) */
} loco_clip_score;

/* Cosine of two L2-normalised embeddings (a plain dot product, in double). */
double loco_clip_cosine(const float *a, const float *b, int dim);
loco_clip_score loco_clip_score_from_cosine(double cosine);

/* Score image i against text i, for i < n. */
loco_status loco_clip_score_pairs(const loco_clip_scorer *s, const loco_image *images, const char *const *texts, int n,
                                  loco_clip_score *out, loco_err *err);

#endif
