/* vae.c: AutoencoderKL encode/decode (diffusers autoencoders/vae.py Encoder/Decoder,
 * autoencoder_kl.py). Both halves are built from the same config; every resnet and attention
 * uses GroupNorm eps 1e-6 (diffusers hard-codes it for the VAE). */
#include "vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_EPS 1e-6f

typedef struct vae_level {
    int n_resnets;
    loco_resnet *resnets;
    int has_sampler;
    loco_downsample down; /* encoder */
    loco_upsample up;     /* decoder */
} vae_level;

typedef struct vae_mid {
    loco_resnet res[2];
    int has_attn;
    loco_spatial_attn attn;
} vae_mid;

struct loco_vae {
    loco_backend *be;
    loco_dtype dtype; /* compute dtype: weights and activations (vae.h) */
    loco_vae_config cfg;
    loco_params params;
    /* encoder */
    loco_conv enc_in, enc_out;
    vae_level enc[LOCO_VAE_MAX_BLOCKS];
    vae_mid enc_mid;
    loco_gnorm enc_norm;
    /* quant convs: quant_conv split into its mean and logvar halves (row views of one weight) */
    loco_conv quant, post_quant;
    /* decoder */
    loco_conv dec_in, dec_out;
    vae_level dec[LOCO_VAE_MAX_BLOCKS];
    vae_mid dec_mid;
    loco_gnorm dec_norm;
};

const loco_vae_config *loco_vae_get_config(const loco_vae *v) { return &v->cfg; }
loco_dtype loco_vae_dtype(const loco_vae *v) { return v->dtype; }
const loco_params *loco_vae_params(const loco_vae *v) { return &v->params; }

void loco_vae_free(loco_vae *v) {
    if (!v) return;
    loco_params_free(&v->params); /* first: the table points into the level holders */
    for (int i = 0; i < LOCO_VAE_MAX_BLOCKS; i++) {
        free(v->enc[i].resnets);
        free(v->dec[i].resnets);
    }
    free(v);
}

static loco_status load_mid(const loco_loader *ld, const char *prefix, const loco_vae_config *c, vae_mid *m,
                            loco_err *err) {
    const int C = c->block_out_channels[c->n_blocks - 1];
    char p[128];
    loco_status s;
    for (int j = 0; j < 2; j++) {
        snprintf(p, sizeof p, "%s.mid_block.resnets.%d", prefix, j);
        if ((s = loco_resnet_load(ld, p, C, C, 0, c->norm_num_groups, VAE_EPS, 1.0f, &m->res[j], err))) return s;
    }
    m->has_attn = c->mid_block_add_attention;
    if (m->has_attn) {
        /* attention_head_dim = C: a single head over all channels */
        snprintf(p, sizeof p, "%s.mid_block.attentions.0", prefix);
        if ((s = loco_spatial_attn_load(ld, p, C, C, c->norm_num_groups, VAE_EPS, 1.0f, &m->attn, err))) return s;
    }
    return LOCO_OK;
}

static loco_status level_alloc(vae_level *l, int n, loco_err *err) {
    l->resnets = calloc((size_t)n, sizeof *l->resnets);
    if (!l->resnets) return loco_err_set(err, LOCO_ENOMEM, "vae: out of memory");
    l->n_resnets = n;
    return LOCO_OK;
}

static loco_status load_encoder(loco_vae *v, const loco_loader *ld, loco_err *err) {
    const loco_vae_config *c = &v->cfg;
    const int n = c->n_blocks, G = c->norm_num_groups;
    char p[128];
    loco_status s;
    if ((s = loco_conv_load(ld, "encoder.conv_in", c->in_channels, c->block_out_channels[0], 3, &v->enc_in, err)))
        return s;
    int out_ch = c->block_out_channels[0];
    for (int i = 0; i < n; i++) {
        const int in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        vae_level *l = &v->enc[i];
        if ((s = level_alloc(l, c->layers_per_block, err))) return s;
        for (int j = 0; j < l->n_resnets; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d", i, j);
            if ((s = loco_resnet_load(ld, p, j == 0 ? in_ch : out_ch, out_ch, 0, G, VAE_EPS, 1.0f, &l->resnets[j],
                                      err)))
                return s;
        }
        if (i < n - 1) {
            l->has_sampler = 1;
            snprintf(p, sizeof p, "encoder.down_blocks.%d.downsamplers.0", i);
            if ((s = loco_downsample_load(ld, p, out_ch, out_ch, 0, &l->down, err))) return s;
        }
    }
    if ((s = load_mid(ld, "encoder", c, &v->enc_mid, err))) return s;
    if ((s = loco_gnorm_load(ld, "encoder.conv_norm_out", out_ch, G, VAE_EPS, &v->enc_norm, err))) return s;
    return loco_conv_load(ld, "encoder.conv_out", out_ch, 2 * c->latent_channels, 3, &v->enc_out, err);
}

static loco_status load_decoder(loco_vae *v, const loco_loader *ld, loco_err *err) {
    const loco_vae_config *c = &v->cfg;
    const int n = c->n_blocks, G = c->norm_num_groups;
    char p[128];
    loco_status s;
    int out_ch = c->block_out_channels[n - 1];
    if ((s = loco_conv_load(ld, "decoder.conv_in", c->latent_channels, out_ch, 3, &v->dec_in, err))) return s;
    if ((s = load_mid(ld, "decoder", c, &v->dec_mid, err))) return s;
    for (int i = 0; i < n; i++) {
        const int prev_ch = out_ch;
        out_ch = c->block_out_channels[n - 1 - i];
        vae_level *l = &v->dec[i];
        if ((s = level_alloc(l, c->layers_per_block + 1, err))) return s;
        for (int j = 0; j < l->n_resnets; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            if ((s = loco_resnet_load(ld, p, j == 0 ? prev_ch : out_ch, out_ch, 0, G, VAE_EPS, 1.0f,
                                      &l->resnets[j], err)))
                return s;
        }
        if (i < n - 1) {
            l->has_sampler = 1;
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0", i);
            if ((s = loco_upsample_load(ld, p, out_ch, out_ch, &l->up, err))) return s;
        }
    }
    if ((s = loco_gnorm_load(ld, "decoder.conv_norm_out", out_ch, G, VAE_EPS, &v->dec_norm, err))) return s;
    return loco_conv_load(ld, "decoder.conv_out", out_ch, c->out_channels, 3, &v->dec_out, err);
}

loco_dtype loco_vae_compute_dtype(const loco_backend *be, const loco_vae_config *cfg, loco_dtype upcast) {
    loco_dtype act = loco_backend_act_dtype(be);
    /* fp16's range is what overflows; bf16 activations already have fp32's range */
    if (cfg && cfg->force_upcast && act == LOCO_F16 && (upcast == LOCO_F32 || upcast == LOCO_BF16) &&
        loco_backend_accepts_dtype(be, upcast))
        return upcast;
    return act;
}

loco_status loco_vae_create(loco_backend *be, const loco_vae_config *cfg, const loco_weights *w, loco_vae **out,
                            loco_err *err) {
    return loco_vae_create_dtype(be, cfg, w, loco_vae_compute_dtype(be, cfg, LOCO_F32), out, err);
}

loco_status loco_vae_create_dtype(loco_backend *be, const loco_vae_config *cfg, const loco_weights *w,
                                  loco_dtype dtype, loco_vae **out, loco_err *err) {
    *out = NULL;
    if (cfg->n_blocks < 1 || cfg->n_blocks > LOCO_VAE_MAX_BLOCKS)
        return loco_err_set(err, LOCO_EINVAL, "vae: %d blocks (1..%d supported)", cfg->n_blocks, LOCO_VAE_MAX_BLOCKS);
    if ((dtype != LOCO_F32 && dtype != LOCO_F16 && dtype != LOCO_BF16) || !loco_backend_accepts_dtype(be, dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "vae: the %s backend cannot compute in %s",
                            loco_device_name(loco_backend_device(be)), loco_dtype_name(dtype));
    loco_vae *v = calloc(1, sizeof *v);
    if (!v) return loco_err_set(err, LOCO_ENOMEM, "vae: out of memory");
    v->be = be;
    v->dtype = dtype;
    v->cfg = *cfg;
    loco_loader ld;
    loco_loader_init(&ld, be, w, &v->params);
    ld.dtype = dtype;
    const int lc = cfg->latent_channels;
    loco_status s;
    if ((s = load_encoder(v, &ld, err))) goto fail;
    if (cfg->use_quant_conv && (s = loco_conv_load(&ld, "quant_conv", 2 * lc, 2 * lc, 1, &v->quant, err))) goto fail;
    if (cfg->use_post_quant_conv && (s = loco_conv_load(&ld, "post_quant_conv", lc, lc, 1, &v->post_quant, err)))
        goto fail;
    if ((s = load_decoder(v, &ld, err))) goto fail;
    *out = v;
    return LOCO_OK;
fail:
    loco_vae_free(v);
    return loco_err_prefix(err, "loading the VAE from %s", loco_weights_source(w));
}

loco_status loco_vae_load_dir(loco_backend *be, const char *dir, const char *variant, loco_vae **out, loco_err *err) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    loco_vae_config cfg;
    loco_status s = loco_vae_config_load(path, &cfg, err);
    if (s) return s;
    loco_weights *w = NULL;
    if ((s = loco_weights_open_dir(dir, "diffusion_pytorch_model", variant, &w, err))) return s;
    s = loco_vae_create(be, &cfg, w, out, err);
    loco_weights_free(w);
    return s;
}

/* ---- forward ------------------------------------------------------------------------------------ */

static loco_status probe(loco_probe_fn fn, void *ctx, const char *name, const loco_tensor *t, loco_err *err) {
    return fn ? fn(ctx, name, t, err) : LOCO_OK;
}

/* *h is consumed and replaced by f(*h). */
typedef loco_status (*step_fn)(loco_backend *be, const void *layer, const loco_tensor *x, loco_tensor *out,
                               loco_err *err);

static loco_status step(loco_backend *be, step_fn f, const void *layer, loco_tensor *h, loco_err *err) {
    loco_tensor o = {0};
    loco_status s = f(be, layer, h, &o, err);
    loco_tensor_free(h);
    if (!s) *h = o;
    return s;
}

static loco_status resnet_step(loco_backend *be, const void *r, const loco_tensor *x, loco_tensor *out,
                               loco_err *err) {
    return loco_resnet_forward(be, r, x, NULL, out, err);
}
static loco_status attn_step(loco_backend *be, const void *a, const loco_tensor *x, loco_tensor *out, loco_err *err) {
    return loco_spatial_attn_forward(be, a, x, out, err);
}
static loco_status down_step(loco_backend *be, const void *d, const loco_tensor *x, loco_tensor *out, loco_err *err) {
    return loco_downsample_forward(be, d, x, out, err);
}
static loco_status up_step(loco_backend *be, const void *u, const loco_tensor *x, loco_tensor *out, loco_err *err) {
    return loco_upsample_forward(be, u, x, out, err);
}

static loco_status mid_forward(loco_backend *be, const vae_mid *m, loco_tensor *h, loco_err *err) {
    loco_status s = step(be, resnet_step, &m->res[0], h, err);
    if (!s && m->has_attn) s = step(be, attn_step, &m->attn, h, err);
    if (!s) s = step(be, resnet_step, &m->res[1], h, err);
    return s;
}

/* GroupNorm + SiLU (probed as `act_name`), then conv_out. */
static loco_status out_forward(loco_backend *be, const loco_gnorm *g, const loco_conv *c, loco_tensor *h,
                               loco_probe_fn pfn, void *pctx, const char *act_name, loco_tensor *out, loco_err *err) {
    loco_tensor n = {0};
    loco_status s = loco_gnorm_forward(be, g, h, 1, &n, err);
    loco_tensor_free(h);
    if (!s) s = probe(pfn, pctx, act_name, &n, err);
    if (!s) s = loco_conv_forward(be, c, &n, out, err);
    loco_tensor_free(&n);
    return s;
}

static loco_status decode(loco_vae *v, const loco_tensor *latents, int unscale, loco_probe_fn pfn, void *pctx,
                          loco_tensor *image, loco_err *err) {
    const loco_vae_config *c = &v->cfg;
    loco_backend *be = v->be;
    memset(image, 0, sizeof *image);
    if (!latents || latents->ndim != 4 || latents->shape[1] != c->latent_channels)
        return loco_err_set(err, LOCO_EINVAL, "vae decode: latents must be [batch, %d, height, width]",
                            c->latent_channels);
    loco_tensor z = {0}, h = {0};
    char name[64];
    /* into the VAE's dtype first when the denoiser's differs (an F16 UNet feeding an F32 VAE):
     * the unscaling then already runs in the VAE's precision */
    const int convert = latents->dtype != v->dtype;
    loco_status s = loco_tensor_alloc(be, v->dtype, 4, latents->shape, &z, err);
    if (!s && (convert || !unscale)) s = loco_copy(be, &z, latents, err);
    if (!s && unscale) {
        /* latents / scaling_factor (+ shift_factor), as the pipelines do before vae.decode */
        const loco_tensor *xs[1] = {convert ? &z : latents};
        const float coef = 1.0f / c->scaling_factor;
        s = loco_lincomb(be, &z, 1, xs, &coef, err);
    }
    if (!s && unscale && c->has_shift_factor) {
        loco_tensor sh = {0};
        s = loco_tensor_alloc(be, v->dtype, 4, latents->shape, &sh, err);
        if (!s) s = loco_fill(be, &sh, c->shift_factor, err);
        if (!s) s = loco_add(be, &z, &z, &sh, err);
        loco_tensor_free(&sh);
    }
    if (!s && c->use_post_quant_conv) {
        loco_tensor q = {0};
        s = loco_conv_forward(be, &v->post_quant, &z, &q, err);
        loco_tensor_free(&z);
        z = q;
        if (!s) s = probe(pfn, pctx, "post_quant_conv", &z, err);
    }
    if (!s) s = loco_conv_forward(be, &v->dec_in, &z, &h, err);
    loco_tensor_free(&z);
    if (!s) s = probe(pfn, pctx, "decoder.conv_in", &h, err);
    if (!s) s = mid_forward(be, &v->dec_mid, &h, err);
    if (!s) s = probe(pfn, pctx, "decoder.mid_block", &h, err);
    for (int i = 0; !s && i < c->n_blocks; i++) {
        const vae_level *l = &v->dec[i];
        for (int j = 0; !s && j < l->n_resnets; j++) s = step(be, resnet_step, &l->resnets[j], &h, err);
        if (!s && l->has_sampler) s = step(be, up_step, &l->up, &h, err);
        snprintf(name, sizeof name, "decoder.up_blocks.%d", i);
        if (!s) s = probe(pfn, pctx, name, &h, err);
    }
    if (!s) s = out_forward(be, &v->dec_norm, &v->dec_out, &h, pfn, pctx, "decoder.conv_act", image, err);
    loco_tensor_free(&h);
    if (s) return loco_err_prefix(err, "vae decode");
    return LOCO_OK;
}

loco_status loco_vae_decode(loco_vae *v, const loco_tensor *latents, loco_probe_fn probe, void *probe_ctx,
                            loco_tensor *image, loco_err *err) {
    return decode(v, latents, 1, probe, probe_ctx, image, err);
}

loco_status loco_vae_decode_raw(loco_vae *v, const loco_tensor *z, loco_probe_fn probe, void *probe_ctx,
                                loco_tensor *image, loco_err *err) {
    return decode(v, z, 0, probe, probe_ctx, image, err);
}

loco_status loco_vae_encode(loco_vae *v, const loco_tensor *image, loco_probe_fn pfn, void *pctx, loco_tensor *mean,
                            loco_tensor *logvar, loco_err *err) {
    const loco_vae_config *c = &v->cfg;
    loco_backend *be = v->be;
    memset(mean, 0, sizeof *mean);
    memset(logvar, 0, sizeof *logvar);
    if (!image || image->ndim != 4 || image->shape[1] != c->in_channels)
        return loco_err_set(err, LOCO_EINVAL, "vae encode: image must be [batch, %d, height, width]", c->in_channels);
    loco_tensor h = {0}, moments = {0}, conv_img = {0};
    char name[64];
    loco_status s = LOCO_OK;
    if (image->dtype != v->dtype) { /* the blocks compute in the input's dtype: make it the VAE's */
        s = loco_tensor_alloc(be, v->dtype, 4, image->shape, &conv_img, err);
        if (!s) s = loco_copy(be, &conv_img, image, err);
        if (!s) image = &conv_img;
    }
    if (!s) s = loco_conv_forward(be, &v->enc_in, image, &h, err);
    loco_tensor_free(&conv_img); /* conv_in's output is all that needs it; safe while enqueued */
    if (!s) s = probe(pfn, pctx, "encoder.conv_in", &h, err);
    for (int i = 0; !s && i < c->n_blocks; i++) {
        const vae_level *l = &v->enc[i];
        for (int j = 0; !s && j < l->n_resnets; j++) s = step(be, resnet_step, &l->resnets[j], &h, err);
        if (!s && l->has_sampler) s = step(be, down_step, &l->down, &h, err);
        snprintf(name, sizeof name, "encoder.down_blocks.%d", i);
        if (!s) s = probe(pfn, pctx, name, &h, err);
    }
    if (!s) s = mid_forward(be, &v->enc_mid, &h, err);
    if (!s) s = probe(pfn, pctx, "encoder.mid_block", &h, err);
    if (!s) s = out_forward(be, &v->enc_norm, &v->enc_out, &h, pfn, pctx, "encoder.conv_act", &moments, err);
    loco_tensor_free(&h);
    /* quant_conv maps every output channel independently, so its first and second halves of
     * output rows give mean and logvar directly (no channel slicing of the moments). */
    const int lc = c->latent_channels;
    for (int half = 0; !s && half < 2; half++) {
        loco_tensor *dst = half ? logvar : mean;
        if (c->use_quant_conv) {
            loco_conv q = v->quant;
            q.out_ch = lc;
            s = loco_tensor_view(&v->quant.w, (int64_t)half * lc * 2 * lc, 4, (int64_t[]){lc, 2 * lc, 1, 1}, &q.w,
                                 err);
            if (!s) s = loco_tensor_view(&v->quant.b, (int64_t)half * lc, 1, (int64_t[]){lc}, &q.b, err);
            if (!s) s = loco_conv_forward(be, &q, &moments, dst, err);
        } else {
            /* no quant_conv: copy each sample's half of the channels */
            const int64_t B = moments.shape[0], hw = moments.shape[2] * moments.shape[3];
            const int64_t shape[4] = {B, lc, moments.shape[2], moments.shape[3]};
            s = loco_tensor_alloc(be, v->dtype, 4, shape, dst, err);
            for (int64_t b = 0; !s && b < B; b++) {
                loco_tensor src = {0}, d = {0};
                s = loco_tensor_view(&moments, (b * 2 + half) * lc * hw, 1, (int64_t[]){lc * hw}, &src, err);
                if (!s) s = loco_tensor_view(dst, b * lc * hw, 1, (int64_t[]){lc * hw}, &d, err);
                if (!s) s = loco_copy(be, &d, &src, err);
            }
        }
    }
    loco_tensor_free(&moments);
    if (s) {
        loco_tensor_free(mean);
        loco_tensor_free(logvar);
        return loco_err_prefix(err, "vae encode");
    }
    return LOCO_OK;
}
