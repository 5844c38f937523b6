/* sites.h: named places inside a model where an intervention can act.
 *
 * A site is a module whose output a PyTorch forward hook on the same diffusers/transformers
 * module would see: a ResNet block's output (after its skip add), an attention module's output
 * (after to_out, before the residual add of the transformer block), a feed-forward output, a
 * projection output (attn2.to_k / attn2.to_v / text out_proj), a text-encoder layer's
 * self-attention or MLP output. Each model publishes its sites in EXECUTION order with their
 * diffusers module paths, so interventions (record, restore, ablate, corrupt) are data:
 * a hook gets the site and the output tensor and may read or overwrite it in place.
 *
 * Cross-attention layers additionally carry `cross_index`, their position in execution order
 * (down, mid, up): 0..15 for SD 1.x/2.x, 0..69 for SD-XL. Registration order in diffusers
 * (down, up, mid) differs; loco never uses it. */
#ifndef LOCO_SITES_H
#define LOCO_SITES_H

#include "backend.h"

typedef enum loco_site_kind {
    LOCO_SITE_RESNET = 0,     /* UNet/VAE ResnetBlock2D output [B, C, H, W] */
    LOCO_SITE_SELF_ATTN,      /* UNet attn1 output [B, HW, C] */
    LOCO_SITE_CROSS_ATTN,     /* UNet attn2 output [B, HW, C] */
    LOCO_SITE_FF,             /* UNet feed-forward output [B, HW, C] */
    LOCO_SITE_CROSS_K,        /* attn2.to_k output on the text [Bt, L, C] (computed once per text) */
    LOCO_SITE_CROSS_V,        /* attn2.to_v output on the text [Bt, L, C] */
    LOCO_SITE_TEXT_EMBED,     /* text encoder embeddings output (token + position) [B, L, D] */
    LOCO_SITE_TEXT_SELF_ATTN, /* text layer i self_attn output (after out_proj) [B, L, D] */
    LOCO_SITE_TEXT_MLP,       /* text layer i mlp output [B, L, D] */
    LOCO_SITE_TEXT_OUT_PROJ_IN, /* input of text layer i self_attn.out_proj [B, L, D] (Diff-QuickFix keys) */
    LOCO_SITE_KIND_COUNT
} loco_site_kind;

const char *loco_site_kind_name(loco_site_kind k); /* "resnet", "self_attn", "cross_attn", ... */
int loco_site_kind_from_name(const char *name, loco_site_kind *out);

typedef struct loco_site {
    int id;              /* index in the model's site table (execution order) */
    loco_site_kind kind;
    const char *name;    /* diffusers/transformers module path, e.g.
                            "up_blocks.1.attentions.1.transformer_blocks.0.attn2" */
    int cross_index;     /* execution-order index of the cross-attention layer, else -1 */
    int layer;           /* text encoder layer index, else -1 */
} loco_site;

/* Called after a site's output is computed. `out` may be modified in place (same shape).
 * Returning non-OK aborts the forward pass with that error. */
typedef loco_status (*loco_site_fn)(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err);

typedef struct loco_site_hooks {
    loco_site_fn after;
    void *ctx;
    /* Optional: whether `after` acts at a site. NULL: it sees every site. Set: it is called only
     * where this returns 1, and the UNet keeps its fused forms everywhere else (the transformer
     * blocks' residual adds inside the projections' GEMMs, which need the site output never to
     * exist on its own). Must answer the same for a site on every call with the same hooks. */
    int (*acts_at)(void *ctx, const loco_site *site);
    /* What lets a UNet call with hooks be recorded as a backend graph and replayed (unet.h,
     * "graphs"). NULL (the default): the hook may do anything (read outputs on the host, keep
     * per-call state), so every call with it runs op by op. Non-NULL: a promise that the
     * `replay_size` bytes at `replay_id` determine everything the hook does, and that all it
     * does is enqueue device ops on the site tensors it is handed (views of them, values in
     * kernel arguments): no host read or upload, no allocation, nothing that depends on which
     * call it is. A replay then does what the hook did when the call was recorded; the graph
     * cache compares the bytes (and `after`) on every call and records again when they differ. */
    const void *replay_id;
    size_t replay_size;
} loco_site_hooks;

#endif
