/* unet_impl.h: the UNet's private structures, shared by unet.c (top level, time embedding,
 * text K/V, sites), unet_blocks.c (down/mid/up blocks) and transformer2d.c (Transformer2DModel
 * and BasicTransformerBlock). Not part of the public API. */
#ifndef LOCO_UNET_IMPL_H
#define LOCO_UNET_IMPL_H

#include "unet.h"

/* BasicTransformerBlock: LN -> attn1 -> +, LN -> attn2 (text) -> +, LN -> GEGLU FF -> +. */
typedef struct unet_tblock {
    int dim, heads, cross_dim;
    int only_cross;  /* attn1 attends to the text too (only_cross_attention) */
    int cross_index; /* execution-order index of attn2 */
    int site_attn1, site_k, site_v, site_attn2, site_ff;
    loco_tensor norm1_w, norm1_b, norm2_w, norm2_b, norm3_w, norm3_b;
    /* attn1's to_q, to_k, to_v; for self-attention views of the rows of a1_qkv, their weights
     * stacked (one GEMM; a1_qkv.w.data is NULL with only_cross, where k and v read the text) */
    loco_lin a1[3], a1_qkv, a1_o;
    loco_lin a2_q, a2_k, a2_v, a2_o;
    loco_lin ff_in, ff_out;
} unet_tblock;

/* Transformer2DModel over continuous inputs. proj_in/proj_out are 1x1 convs (weights
 * [C, C, 1, 1]) or Linear layers; both are applied as a GEMM over tokens. */
typedef struct unet_transformer {
    int channels, heads, n_blocks, linear_proj;
    loco_gnorm norm;
    loco_lin proj_in, proj_out; /* w is 4-D for the conv form */
    unet_tblock *blocks;
} unet_transformer;

typedef struct unet_block {
    loco_unet_block_type type;
    char name[32]; /* "down_blocks.1", "mid_block", "up_blocks.0" */
    int n_resnets;
    loco_resnet *resnets;
    int *resnet_site;
    int n_attn;    /* 0 for attention-less blocks */
    unet_transformer *attns;
    int has_down, has_up;
    loco_downsample down;
    loco_upsample up;
    int resnet_base; /* index of resnets[0] among all the UNet's resnets, in load (= forward) order */
} unet_block;

struct loco_unet {
    loco_backend *be;
    loco_unet_config cfg;
    loco_params params;
    loco_conv conv_in, conv_out;
    loco_gnorm norm_out;
    loco_lin time_l1, time_l2;
    loco_lin add_l1, add_l2; /* text_time addition embedding */
    unet_block down[LOCO_UNET_MAX_BLOCKS], up[LOCO_UNET_MAX_BLOCKS], mid;
    int has_mid;
    int n_resnets; /* in all blocks */
    loco_site *sites;
    int n_sites, cap_sites;
    unet_tblock **cross; /* cross layer i -> its transformer block */
    int n_cross, cap_cross;
    int frozen;          /* a variant shares these tensors: no in-place edits (unet_variant.c) */
    int graphs_off;      /* loco_unet_set_graphs(u, 0) */
    struct unet_graphs *graphs; /* recorded UNet calls (unet_graph.c); owned, never shared with a variant */
};

/* What one forward pass needs below the top level. */
typedef struct unet_run {
    loco_unet *u;
    loco_backend *be;
    int B, Bt;
    const loco_site_hooks *hooks;
    const loco_tensor *ehs;             /* encoder hidden states, when kv is NULL */
    const int *text_index;              /* resolved: B entries, never NULL */
    const loco_unet_text_kv *kv;        /* precomputed text K/V or NULL */
    const int *const *kv_index_per_layer;
    const loco_tensor *temb_act;        /* SiLU(emb) [B, time_embed_dim] */
    const loco_tensor *temb_proj;       /* every resnet's time_emb_proj(temb_act), by resnet_base + j; or NULL */
} unet_run;

/* ---- sites (unet.c) ---- */
/* Append a site; returns its index through *id. */
loco_status unet_add_site(loco_unet *u, loco_site_kind kind, const char *name, int cross_index, int *id,
                          loco_err *err);
loco_status unet_call_hook(const unet_run *r, int site, loco_tensor *t, loco_err *err);
/* Whether a hook would see site's output: when not, a producer may fold the output straight
 * into its consumer (a residual add into the projection's GEMM), never materialising it. */
int unet_site_hooked(const unet_run *r, int site);
loco_status unet_register_cross(loco_unet *u, unet_tblock *tb, loco_err *err);

/* ---- transformer2d.c ---- */
/* Load `<prefix>` (e.g. "down_blocks.0.attentions.1") with n_blocks transformer blocks,
 * registering sites and cross layers in execution order. */
loco_status unet_transformer_load(loco_unet *u, const loco_loader *ld, const char *prefix, int channels, int heads,
                                  int cross_dim, int n_blocks, int only_cross, unet_transformer *t, loco_err *err);
void unet_transformer_free(unet_transformer *t);
loco_status unet_transformer_forward(const unet_run *r, const unet_transformer *t, const loco_tensor *x,
                                     loco_tensor *out, loco_err *err);
/* Text K (which=0) or V (which=1) of a block's attn2 (attn=2) or attn1 (attn=1) for the text batch. */
loco_status unet_text_proj(loco_backend *be, const unet_tblock *tb, int attn, int which, const loco_tensor *ehs,
                           loco_tensor *out, loco_err *err);

/* ---- unet.c ---- */
/* conv_in, the blocks, conv_norm_out + SiLU and conv_out on sample x, with r->temb_act already
 * computed: everything a UNet call does after its time embedding (what a graph records). */
loco_status unet_body(const unet_run *r, const loco_tensor *x, loco_probe_fn probe, void *probe_ctx,
                      loco_tensor *out, loco_err *err);

/* ---- unet_graph.c ---- */
/* Whether this call may run as a recorded graph: graphs on for the UNet and its backend, no
 * hooks or hooks with a replay_id (sites.h), no probe, precomputed text K/V. */
int unet_graph_eligible(const loco_unet *u, const loco_unet_inputs *in);
/* unet_body through the graph cache (falls back to unet_body whenever recording fails). */
loco_status unet_graph_forward(const unet_run *r, const loco_tensor *x, loco_tensor *out, loco_err *err);
void unet_graphs_free(loco_unet *u);

/* ---- unet_blocks.c ---- */
/* Build every block (down, mid, up) in execution order. */
loco_status unet_blocks_load(loco_unet *u, const loco_loader *ld, loco_err *err);
/* Every resnet's time_emb_proj(r->temb_act) in one loco_linear_many: *buf holds them all, and
 * (*proj)[i] (allocated; free it) is resnet i's [B, out_ch] view. */
loco_status unet_temb_projections(const unet_run *r, loco_tensor *buf, loco_tensor **proj, loco_err *err);
void unet_blocks_free(loco_unet *u);
/* Run down, mid and up blocks on h0 = conv_in output (taken over). *out gets the last up
 * block's output. */
loco_status unet_blocks_forward(const unet_run *r, loco_tensor *h0, loco_probe_fn probe, void *probe_ctx,
                                loco_tensor *out, loco_err *err);

#endif
