/* unet.h: diffusers UNet2DConditionModel (SD 1.x, SD 2.x, SD-XL) on the backend interface.
 *
 * The network is built from the component's config.json exactly as diffusers builds it, and
 * every tensor is loaded by its diffusers name with a shape check. One forward call runs a
 * batch of B samples; samples may use different rows of the text batch (text_index, and per
 * cross-attention layer kv_index_per_layer), which is how classifier-free guidance, LocoGen
 * windows and causal-tracing variants share one text encoding and one UNet call.
 *
 * Text K/V: the cross-attention keys and values of the text do not depend on the timestep, so
 * loco_unet_compute_text_kv projects them once per text batch and forward reuses them at every
 * denoising step. Without precomputed K/V, forward projects them itself (same numbers).
 *
 * Sites (engine/sites.h) are published in execution order with diffusers module paths:
 * every `...resnets.j` (RESNET), and per transformer block `...attn1` (SELF_ATTN),
 * `...attn2.to_k` / `...attn2.to_v` (CROSS_K / CROSS_V on the text), `...attn2` (CROSS_ATTN),
 * `...ff` (FF). Cross-attention layers are numbered 0.. in execution order (cross_index):
 * 16 for SD 1.x/2.x, 70 for SD-XL. */
#ifndef LOCO_UNET_H
#define LOCO_UNET_H

#include <jansson.h>

#include "backend.h"
#include "nn.h"
#include "sites.h"
#include "weights.h"

/* Limits of the config holder (not model sizes: those all come from config.json). */
#define LOCO_UNET_MAX_BLOCKS 8
#define LOCO_UNET_MAX_LAYERS 16

/* Upper bounds of what a config may claim, about 10-50x the largest supported UNet (SD-XL: 1280
 * channels, 20 heads, cross-attention width 2048, 10 transformer layers per block and 70 in
 * all, time embedding 1280, 2816 addition inputs, sample_size 128). The parser refuses larger
 * values with a line naming the key and the limit: a corrupt config fails at once instead of
 * after gigabytes of site tables (`loco inspect` builds them from the config alone), and no later
 * size computation (4 x channels, sample_size x VAE factor, stacked projections) can overflow. */
#define LOCO_UNET_MAX_CHANNELS 16384            /* block_out_channels, cross_attention_dim */
#define LOCO_UNET_MAX_HEADS 1024                /* num_attention_heads / attention_head_dim */
#define LOCO_UNET_MAX_IO_CHANNELS 1024          /* in_channels, out_channels */
#define LOCO_UNET_MAX_EMBED (1 << 17)           /* time_embedding_dim, addition_time_embed_dim, projection_class_embeddings_input_dim */
#define LOCO_UNET_MAX_TRANSFORMER_DEPTH 64      /* one entry of transformer_layers_per_block */
#define LOCO_UNET_MAX_TRANSFORMER_BLOCKS 1024   /* transformer layers of all down, mid and up blocks together */
#define LOCO_UNET_MAX_SAMPLE_SIZE 4096          /* sample_size (latent pixels) */
#define LOCO_UNET_MAX_NORM_GROUPS 1024          /* norm_num_groups */
#define LOCO_UNET_MAX_KERNEL 31                 /* conv_in_kernel, conv_out_kernel */
#define LOCO_UNET_MAX_PADDING 64                /* downsample_padding */

typedef enum loco_unet_block_type {
    LOCO_UNET_BLOCK_NONE = 0,           /* mid_block_type null: no mid block */
    LOCO_UNET_DOWN_BLOCK_2D,            /* "DownBlock2D" */
    LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D, /* "CrossAttnDownBlock2D" */
    LOCO_UNET_MID_BLOCK_2D_CROSS_ATTN,  /* "UNetMidBlock2DCrossAttn" */
    LOCO_UNET_MID_BLOCK_2D,             /* "UNetMidBlock2D" (one resnet, no attention) */
    LOCO_UNET_UP_BLOCK_2D,              /* "UpBlock2D" */
    LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D,   /* "CrossAttnUpBlock2D" */
    LOCO_UNET_BLOCK_TYPE_COUNT
} loco_unet_block_type;

const char *loco_unet_block_type_name(loco_unet_block_type t); /* diffusers spelling; "none" */
/* Accepts diffusers spellings (and the "UNetRes" prefix diffusers strips). 0 ok, -1 unknown. */
int loco_unet_block_type_from_name(const char *name, loco_unet_block_type *out);

typedef enum loco_unet_addition_embed {
    LOCO_UNET_ADD_NONE = 0,  /* null */
    LOCO_UNET_ADD_TEXT_TIME, /* "text_time" (SD-XL micro-conditioning) */
    LOCO_UNET_ADD_COUNT
} loco_unet_addition_embed;

const char *loco_unet_addition_embed_name(loco_unet_addition_embed a); /* "none", "text_time" */
int loco_unet_addition_embed_from_name(const char *name, loco_unet_addition_embed *out);

/* Resolved config: lists expanded per block the way diffusers expands them. Up-block lists
 * (up_*) are already reversed as diffusers reverses them. */
typedef struct loco_unet_config {
    int in_channels, out_channels;
    int sample_size;            /* informational (default latent size), 0 when absent */
    int n_blocks;               /* levels: len(down_block_types) == len(up_block_types) */
    loco_unet_block_type down[LOCO_UNET_MAX_BLOCKS];
    loco_unet_block_type up[LOCO_UNET_MAX_BLOCKS];
    loco_unet_block_type mid;
    int block_out_channels[LOCO_UNET_MAX_BLOCKS];
    int layers_per_block[LOCO_UNET_MAX_BLOCKS];          /* down block i has this many resnets */
    int down_transformer_layers[LOCO_UNET_MAX_BLOCKS][LOCO_UNET_MAX_LAYERS];
    int up_transformer_layers[LOCO_UNET_MAX_BLOCKS][LOCO_UNET_MAX_LAYERS + 1];
    int mid_transformer_layers;
    int heads[LOCO_UNET_MAX_BLOCKS];               /* per down block: num_attention_heads or attention_head_dim */
    int cross_attention_dim[LOCO_UNET_MAX_BLOCKS]; /* per down block */
    int only_cross_attention[LOCO_UNET_MAX_BLOCKS];/* per down block */
    int use_linear_projection;
    int upcast_attention; /* noted only: every backend computes scores and softmax in fp32 */
    int norm_num_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    int downsample_padding;
    float mid_block_scale_factor;
    int time_embed_dim;   /* time_embedding_dim or 4 * block_out_channels[0] */
    int conv_in_kernel, conv_out_kernel;
    loco_unet_addition_embed addition_embed_type;
    int addition_time_embed_dim;
    int projection_class_embeddings_input_dim;
} loco_unet_config;

/* diffusers' defaults for UNet2DConditionModel (the SD 1.5 architecture). */
void loco_unet_config_init(loco_unet_config *c);
/* From a parsed config.json (e.g. loco_model_files_config(m, "unet")); `source` names it in
 * errors. Unknown keys, unknown block types and unsupported option values are errors naming
 * the key. */
loco_status loco_unet_config_from_json(const json_t *root, const char *source, loco_unet_config *c, loco_err *err);
/* The same from JSON text. */
loco_status loco_unet_config_parse(const char *json_text, const char *source, loco_unet_config *c, loco_err *err);
loco_status loco_unet_config_load(const char *path, loco_unet_config *c, loco_err *err);

typedef struct loco_unet loco_unet;

/* Build the UNet on `be` from `cfg`, loading every tensor from `w` (w may be freed afterwards:
 * the weights are uploaded). */
loco_status loco_unet_create(loco_backend *be, const loco_unet_config *cfg, const loco_weights *w, loco_unet **out,
                             loco_err *err);
/* `<dir>/config.json` + `<dir>/diffusion_pytorch_model[.<variant>].safetensors` (or sharded). */
loco_status loco_unet_load_dir(loco_backend *be, const char *dir, const char *variant, loco_unet **out,
                               loco_err *err);
void loco_unet_free(loco_unet *u);

const loco_unet_config *loco_unet_get_config(const loco_unet *u);
loco_backend *loco_unet_backend(const loco_unet *u);
/* All parameters by diffusers name (edits read and replace tensors through these). */
const loco_params *loco_unet_params(const loco_unet *u);

/* ---- variants (engine/unet_variant.c) ----
 * A variant shares every tensor of its base (nothing is copied: its tensors are views) until
 * loco_unet_set_param gives it its own copy of one; edits therefore never touch the base, and a
 * variant costs only the tensors it replaced. The base must outlive its variants. A UNet that
 * has had a variant made from it is frozen: set_param on it is refused, because its tensors are
 * seen by the variant (edit a variant instead). */
loco_status loco_unet_variant(loco_unet *base, loco_unet **out, loco_err *err);
/* Replace parameter `name` (diffusers name, e.g. "up_blocks.1.attentions.1.transformer_blocks.0
 * .attn2.to_k.weight") with host data of its shape (F32/F16/BF16/F64). */
loco_status loco_unet_set_param(loco_unet *u, const char *name, const void *data, loco_dtype src_dtype,
                                loco_err *err);
/* Replace parameter `name` with a tensor the caller allocated on this UNet's backend with the
 * same shape and dtype, and filled (e.g. an edit written straight into its host memory on the
 * CPU backend: no upload copy). The UNet takes it over and *t is zeroed. */
loco_status loco_unet_adopt_param(loco_unet *u, const char *name, loco_tensor *t, loco_err *err);
/* Whether this UNet owns the tensor of `name` (0: shared with its base, or no such tensor). */
int loco_unet_param_is_owned(const loco_unet *u, const char *name);

/* Sites in execution order; the table lives as long as the UNet. */
const loco_site *loco_unet_sites(const loco_unet *u, int *n);
/* Site by diffusers module path, or NULL. */
const loco_site *loco_unet_find_site(const loco_unet *u, const char *name);
/* The site table a UNet of this config would publish, without loading anything (lists the
 * sites of a model before it is resident). Free with loco_unet_sites_free. */
loco_status loco_unet_config_sites(const loco_unet_config *cfg, loco_site **sites, int *n, loco_err *err);
void loco_unet_sites_free(loco_site *sites, int n);
/* Number of cross-attention (attn2) layers. */
int loco_unet_n_cross(const loco_unet *u);
/* Output channels of cross-attention layer i's to_k and to_v (what a neuron edit ranks); 0 when
 * i is outside 0..n_cross-1. */
int loco_unet_cross_channels(const loco_unet *u, int i);

/* Text K/V of every cross-attention layer for one text batch of Bt rows. k[i], v[i] are
 * [Bt, L, C_i] for cross layer i (execution order). Where a transformer block has
 * only_cross_attention, its attn1 also attends to the text: k1[i]/v1[i] hold those K/V (zeroed
 * tensors otherwise). */
typedef struct loco_unet_text_kv {
    int n_layers;
    int batch;  /* Bt */
    int tokens; /* L */
    loco_tensor *k, *v;
    loco_tensor *k1, *v1;
} loco_unet_text_kv;

/* Project encoder_hidden_states [Bt, L, D] through every attn2.to_k/to_v (calling hooks->after
 * on the CROSS_K / CROSS_V sites, which may edit them, e.g. neuron ablation). hooks may be NULL. */
loco_status loco_unet_compute_text_kv(loco_unet *u, const loco_tensor *encoder_hidden_states,
                                      const loco_site_hooks *hooks, loco_unet_text_kv *kv, loco_err *err);
void loco_unet_text_kv_free(loco_unet_text_kv *kv);

typedef struct loco_unet_inputs {
    const loco_tensor *sample;                /* [B, in_channels, H, W]; H, W multiples of 2^(levels-1) */
    const float *timesteps;                   /* host [B]; integer timesteps as exact floats */
    const loco_tensor *encoder_hidden_states; /* [Bt, L, D]; may be NULL when text_kv is given */
    const int *text_index;                    /* host [B]: text row of sample b; NULL = b (needs Bt == B) */
    const loco_unet_text_kv *text_kv;         /* optional precomputed K/V of the same text batch */
    /* Optional, n_cross entries: entry i (host [B] or NULL = text_index) picks the text row each
     * sample's cross layer i attends to (also attn1 of that block when it is only_cross_attention). */
    const int *const *kv_index_per_layer;
    const loco_tensor *text_embeds;           /* SD-XL: pooled text [B, P] */
    const float *time_ids;                    /* SD-XL: host [B * n], n = (proj_dim - P) / addition_time_embed_dim */
    /* .after NULL: none. A hooked site keeps its transformer block's residual add as a separate
     * pass (the site output must exist for the hook); elsewhere the adds happen inside the
     * projections' GEMMs (loco_linear_accumulate), which on a GPU rounds differently at the fp16
     * level. Hooks without acts_at (sites.h) see, and so unfuse, every site; the intervention
     * programs' hooks say where they act. Compare hooked runs with baselines hooked the same way
     * (causal tracing runs its clean trajectory in the same batch) when bits matter. */
    loco_site_hooks hooks;
    /* optional observer of top-level outputs, named as diffusers modules: "time_proj",
     * "time_embedding", "add_time_proj" ([B, n * atd]), "add_embedding", "conv_in",
     * "down_blocks.i" (+ each skip "down_blocks.i.res.k"), "mid_block", "up_blocks.i",
     * "conv_act" (conv_norm_out and its SiLU are fused) */
    loco_probe_fn probe;
    void *probe_ctx;
} loco_unet_inputs;

void loco_unet_inputs_init(loco_unet_inputs *in);

/* out is allocated here: [B, out_channels, H, W] in the backend's activation dtype. */
loco_status loco_unet_forward(loco_unet *u, const loco_unet_inputs *in, loco_tensor *out, loco_err *err);

/* ---- graphs (engine/unet_graph.c) ----
 * On a backend with graphs (CUDA, backend.h), a forward call with no probe, precomputed text
 * K/V, and either no hooks or hooks that carry a replay_id (sites.h: the intervention programs'
 * restores and ablations do) is recorded once per (sample shape, text batch) and replayed:
 * every denoising step of loco_generate, LocoGen's window sweeps, causal tracing's restored
 * runs and ablated variants. The first call of a shape runs normally while the graph's private
 * memory pool learns the call's allocations, the second records and replays, later ones replay
 * (the text K/V addresses, kv_index tables, weight addresses and the hooks' replay_id are
 * checked on every call; a change re-records, which costs host time only). Results equal the normal
 * path's (the same kernels run). On by default where the backend has graphs; the backend turns
 * them off for everything with LOCO_CUDA_GRAPHS=0. Each recorded shape keeps its pool (the
 * call's peak activation memory) until the UNet is freed, graphs are turned off, it is evicted
 * by a newer shape (at most 4 are kept), or a device allocation runs short: then shapes other
 * than the one in use give their memory back, least recently used first, as many as the request
 * needs (backend.h, "memory pressure"), and record again when next used. */
void loco_unet_set_graphs(loco_unet *u, int on); /* off also frees the recorded graphs */

typedef struct loco_unet_graph_stats {
    int shapes;           /* shapes with a recorded graph now */
    long captures;        /* recordings made (first and re-recordings) */
    long replays;         /* calls served by a replay */
    long eager_calls;     /* eligible calls that ran normally (warm-up, fallbacks) */
    long reclaimed;       /* recorded shapes given back to a reclaim (an allocation that ran short,
                             or loco_backend_reclaim) */
    size_t pool_bytes;    /* device memory the graphs' pools hold */
    char last_error[256]; /* why recording last failed, "" when it never did */
} loco_unet_graph_stats;
void loco_unet_graph_stats_get(const loco_unet *u, loco_unet_graph_stats *st);

/* The sinusoidal timestep embedding diffusers computes (get_timestep_embedding, fp32):
 * dst [n, dim] from n values. Exposed for the schedulers' tests and SD-XL time ids. */
void loco_timestep_embedding(const float *t, int n, int dim, int flip_sin_to_cos, float freq_shift, float *dst);

#endif
