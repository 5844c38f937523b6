/* ldm_mapping.h: diffusers names for the tensors of a single-file (LDM/CompVis/sgm) checkpoint.
 *
 * One .safetensors file holds all components under prefixes (`model.diffusion_model.`,
 * `first_stage_model.`, `cond_stage_model.…`, `conditioner.embedders.N.…`). The functions here
 * turn one component's keys into the names a diffusers folder uses, as diffusers'
 * single_file_utils does, so that model builders only ever see diffusers names. Tensors are not
 * copied: renamed ones point into the file, OpenCLIP's q/k/v are row slices of in_proj, the
 * VAE's 1×1 attention convs are reshaped views; only text_projection (transposed) is a copy
 * owned by the weight set. Buffers (alphas_cumprod, position_ids, logit_scale, EMA copies) are
 * left out. */
#ifndef LOCO_LDM_MAPPING_H
#define LOCO_LDM_MAPPING_H

#include <jansson.h>

#include "weights.h"

/* Component prefixes inside single files. */
#define LOCO_LDM_UNET_PREFIX "model.diffusion_model."
#define LOCO_LDM_CLIP_SD1_PREFIX "cond_stage_model.transformer."
#define LOCO_LDM_OPENCLIP_SD2_PREFIX "cond_stage_model.model."
#define LOCO_LDM_CLIP_SDXL_PREFIX "conditioner.embedders.0.transformer."
#define LOCO_LDM_OPENCLIP_SDXL_PREFIX "conditioner.embedders.1.model."

/* What a name-level mapping function reports. */
typedef enum loco_ldm_result {
    LOCO_LDM_BAD = -1,  /* malformed or inconsistent with the config; buf holds the reason */
    LOCO_LDM_SKIP = 0,  /* not a weight of this component (a buffer, an unknown extra): ignored */
    LOCO_LDM_MAPPED = 1 /* buf holds the diffusers name */
} loco_ldm_result;

/* The UNet block layout the LDM index arithmetic needs, read from a diffusers unet config. */
typedef struct loco_ldm_unet_layout {
    int layers_per_block;
    int n_blocks;              /* len(block_out_channels) */
    uint32_t down_attn;        /* bit b: down_blocks.b has attentions (a CrossAttn block type) */
    uint32_t up_attn;          /* bit b: up_blocks.b has attentions */
    int label_emb_is_addition; /* 1: label_emb.0 is SD-XL's add_embedding; 0: class_embedding */
} loco_ldm_unet_layout;

loco_status loco_ldm_unet_layout_from_config(const json_t *unet_config, loco_ldm_unet_layout *out, loco_err *err);

/* Name-level mappings of one key with its component prefix removed. */
loco_ldm_result loco_ldm_unet_name(const char *key, const loco_ldm_unet_layout *layout, char *buf, size_t n);
/* n_blocks: len(block_out_channels) of the VAE config (decoder up.i is up_blocks.(n_blocks-1-i)). */
loco_ldm_result loco_ldm_vae_name(const char *key, int n_blocks, char *buf, size_t n);
/* HF CLIP keys (SD 1.x / SD-XL embedder 0): ensures the "text_model." prefix, drops position_ids. */
loco_ldm_result loco_ldm_clip_name(const char *key, char *buf, size_t n);
/* OpenCLIP keys except in_proj (which splits into three): resblocks at or beyond num_layers
 * and text_projection are skipped here. */
loco_ldm_result loco_ldm_open_clip_name(const char *key, int num_layers, char *buf, size_t n);

/* The VAE prefix present in the file ("first_stage_model." or "vae."), or NULL. */
const char *loco_ldm_vae_prefix(const loco_safetensors *f);

/* Component mappings: add every mapped tensor of `f` under `prefix` to `w`. The weight set does
 * not take the file; the caller keeps it alive (loco_weights_adopt_file) as long as `w`. An
 * error names the file and the key. Finding no tensor at all under the prefix is LOCO_ENOTFOUND. */
loco_status loco_ldm_map_unet(const loco_safetensors *f, const json_t *unet_config, loco_weights *w, loco_err *err);
loco_status loco_ldm_map_vae(const loco_safetensors *f, const json_t *vae_config, loco_weights *w, loco_err *err);
loco_status loco_ldm_map_clip(const loco_safetensors *f, const char *prefix, loco_weights *w, loco_err *err);
/* num_layers: the text config's num_hidden_layers (SD 2.x keeps 23 of 24 resblocks);
 * with_projection: map text_projection [d, p] to text_projection.weight [p, d]
 * (CLIPTextModelWithProjection, SD-XL's text_encoder_2); SD 2.x drops it. */
loco_status loco_ldm_map_open_clip(const loco_safetensors *f, const char *prefix, int num_layers, int with_projection,
                                   loco_weights *w, loco_err *err);

#endif
