/* vae.h: diffusers AutoencoderKL (the SD 1.x / 2.x / SD-XL VAEs) on the backend interface.
 *
 * decode: latents as the denoiser produces them -> latents / scaling_factor (+ shift_factor)
 *         -> post_quant_conv -> Decoder (conv_in, mid block with one spatial attention, up
 *         blocks of layers_per_block + 1 resnets with nearest-x2 upsamplers, GroupNorm, SiLU,
 *         conv_out) -> image in about [-1, 1].
 * encode: image -> Encoder (conv_in, down blocks whose downsamplers pad (0,1,0,1) then conv
 *         stride 2 pad 0, mid block, GroupNorm, SiLU, conv_out) -> quant_conv -> mean and
 *         logvar of the latent distribution (unscaled: multiply a latent by scaling_factor
 *         before handing it to the denoiser). logvar is returned as computed; diffusers'
 *         DiagonalGaussianDistribution clamps it to [-30, 20] when sampling.
 *
 * Compute dtype: a VAE may compute in another float dtype than the backend's activations. With
 * force_upcast in its config (SD-XL: its activations overflow fp16 and give NaN/black images)
 * loco_vae_create picks F32 on a backend with F16 activations, as diffusers decodes in fp32;
 * loco_vae_create_dtype takes an explicit dtype (BF16 has fp32's range at half the bytes, with
 * small differences from diffusers). Inputs of another dtype are converted on entry; outputs
 * come out in the VAE's dtype (loco_vae_dtype), which callers convert with loco_copy or read with
 * loco_tensor_download_f32. Deprecated attention tensor names (query/key/value/proj_attn) are
 * mapped by the weights layer. */
#ifndef LOCO_VAE_H
#define LOCO_VAE_H

#include <jansson.h>

#include "backend.h"
#include "nn.h"
#include "weights.h"

#define LOCO_VAE_MAX_BLOCKS 8

/* Upper bounds of what a config may claim, 10-50x the largest AutoencoderKL of the supported
 * models (512 channels, 4 latent channels (16 in newer VAEs), 2 resnets per level, 32 groups).
 * The parser refuses larger values with a line naming the key and the limit: no later size
 * computation (2 x latent_channels for the encoder's moments, channel products) can overflow,
 * and error messages show the real numbers. */
#define LOCO_VAE_MAX_CHANNELS 16384     /* block_out_channels */
#define LOCO_VAE_MAX_IO_CHANNELS 256    /* in_channels, out_channels, latent_channels */
#define LOCO_VAE_MAX_LAYERS 64          /* layers_per_block */
#define LOCO_VAE_MAX_NORM_GROUPS 1024   /* norm_num_groups */
#define LOCO_VAE_MAX_SAMPLE_SIZE 65536  /* sample_size (pixels; informational) */

typedef struct loco_vae_config {
    int in_channels, out_channels, latent_channels;
    int n_blocks;
    int block_out_channels[LOCO_VAE_MAX_BLOCKS];
    int layers_per_block; /* encoder resnets per level; the decoder has one more */
    int norm_num_groups;
    float scaling_factor;
    int has_shift_factor;
    float shift_factor;
    int force_upcast;
    int use_quant_conv, use_post_quant_conv;
    int mid_block_add_attention;
    int sample_size; /* informational, 0 when absent */
} loco_vae_config;

/* diffusers' AutoencoderKL defaults, with the SD VAE's four levels [128, 256, 512, 512],
 * layers_per_block 2 and 32 groups filled in (diffusers' own defaults are a 1-level toy). */
void loco_vae_config_init(loco_vae_config *c);
/* From a parsed config.json; `source` names it in errors. Unknown keys and unsupported values
 * (block types other than DownEncoderBlock2D/UpDecoderBlock2D, act_fn other than silu,
 * latents_mean/latents_std) are errors naming the key. */
loco_status loco_vae_config_from_json(const json_t *root, const char *source, loco_vae_config *c, loco_err *err);
loco_status loco_vae_config_load(const char *path, loco_vae_config *c, loco_err *err);

typedef struct loco_vae loco_vae;

/* The dtype a VAE of this config computes in on `be`: the activation dtype, except `upcast`
 * (F32 or BF16) when the config has force_upcast, the activations are F16 and the backend
 * accepts `upcast`. loco_vae_create uses upcast F32. */
loco_dtype loco_vae_compute_dtype(const loco_backend *be, const loco_vae_config *cfg, loco_dtype upcast);
loco_status loco_vae_create(loco_backend *be, const loco_vae_config *cfg, const loco_weights *w, loco_vae **out,
                            loco_err *err);
/* The same with an explicit compute dtype: F32, F16 or BF16, one the backend accepts. */
loco_status loco_vae_create_dtype(loco_backend *be, const loco_vae_config *cfg, const loco_weights *w,
                                  loco_dtype dtype, loco_vae **out, loco_err *err);
loco_dtype loco_vae_dtype(const loco_vae *v);
/* `<dir>/config.json` + `<dir>/diffusion_pytorch_model[.<variant>].safetensors`. */
loco_status loco_vae_load_dir(loco_backend *be, const char *dir, const char *variant, loco_vae **out, loco_err *err);
void loco_vae_free(loco_vae *v);

const loco_vae_config *loco_vae_get_config(const loco_vae *v);
const loco_params *loco_vae_params(const loco_vae *v);

/* latents [B, latent_channels, h, w] (scaled, as the denoiser works; any float dtype) -> *image
 * [B, out_channels, h * 2^(levels-1), w * 2^(levels-1)] in the VAE's dtype, allocated here. probe (may be NULL) sees "post_quant_conv",
 * "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.i", "decoder.conv_act" (GroupNorm and
 * SiLU are fused, so conv_norm_out alone is not observable). */
loco_status loco_vae_decode(loco_vae *v, const loco_tensor *latents, loco_probe_fn probe, void *probe_ctx,
                            loco_tensor *image, loco_err *err);

/* diffusers' vae.decode(z) itself: no unscaling (z = latents / scaling_factor already). */
loco_status loco_vae_decode_raw(loco_vae *v, const loco_tensor *z, loco_probe_fn probe, void *probe_ctx,
                                loco_tensor *image, loco_err *err);

/* image [B, in_channels, H, W] (any float dtype) -> *mean and *logvar [B, latent_channels, H', W']
 * in the VAE's dtype, allocated here. probe sees "encoder.conv_in", "encoder.down_blocks.i", "encoder.mid_block", "encoder.conv_act". */
loco_status loco_vae_encode(loco_vae *v, const loco_tensor *image, loco_probe_fn probe, void *probe_ctx,
                            loco_tensor *mean, loco_tensor *logvar, loco_err *err);

#endif
