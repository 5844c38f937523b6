/* unet_blocks.c: the down, mid and up blocks of UNet2DConditionModel (diffusers
 * unet_2d_blocks.py: CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, UNetMidBlock2D,
 * CrossAttnUpBlock2D, UpBlock2D) and the skip-connection stack between them.
 *
 * Channel bookkeeping follows diffusers' constructor: up block i takes prev_output_channel
 * (the previous up block's width) for its first resnet, and skips of width out_channels except
 * for the last resnet, whose skip has the width of the next-shallower level. The skip stack is
 * LIFO: the conv_in output, every down-block layer output and every downsampler output are
 * pushed; each up-block resnet pops one and concatenates [hidden, skip] on channels. A skip is
 * freed as soon as it is consumed. */
#include "unet_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Also numbers the block's resnets after those of the blocks allocated before it (load order). */
static loco_status block_alloc(loco_unet *u, unet_block *b, int n_resnets, int n_attn, loco_err *err) {
    b->resnet_base = u->n_resnets;
    u->n_resnets += n_resnets;
    b->resnets = calloc((size_t)n_resnets, sizeof *b->resnets);
    b->resnet_site = calloc((size_t)n_resnets, sizeof *b->resnet_site);
    b->attns = n_attn ? calloc((size_t)n_attn, sizeof *b->attns) : NULL;
    if (!b->resnets || !b->resnet_site || (n_attn && !b->attns))
        return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", b->name);
    b->n_resnets = n_resnets;
    b->n_attn = n_attn;
    return LOCO_OK;
}

static loco_status load_resnet(loco_unet *u, const loco_loader *ld, unet_block *b, int j, int in_ch, int out_ch,
                               float out_scale, loco_err *err) {
    char p[128];
    snprintf(p, sizeof p, "%s.resnets.%d", b->name, j);
    loco_status s = loco_resnet_load(ld, p, in_ch, out_ch, u->cfg.time_embed_dim, u->cfg.norm_num_groups,
                                     u->cfg.norm_eps, out_scale, &b->resnets[j], err);
    if (!s) s = unet_add_site(u, LOCO_SITE_RESNET, p, -1, &b->resnet_site[j], err);
    return s;
}

static loco_status load_attn(loco_unet *u, const loco_loader *ld, unet_block *b, int j, int ch, int heads,
                             int cross_dim, int n_layers, int only_cross, loco_err *err) {
    char p[128];
    snprintf(p, sizeof p, "%s.attentions.%d", b->name, j);
    return unet_transformer_load(u, ld, p, ch, heads, cross_dim, n_layers, only_cross, &b->attns[j], err);
}

loco_status unet_blocks_load(loco_unet *u, const loco_loader *ld, loco_err *err) {
    const loco_unet_config *c = &u->cfg;
    const int n = c->n_blocks;
    loco_status s;
    char p[128];

    /* down */
    int out_ch = c->block_out_channels[0];
    for (int i = 0; i < n; i++) {
        unet_block *b = &u->down[i];
        const int in_ch = out_ch, L = c->layers_per_block[i];
        out_ch = c->block_out_channels[i];
        b->type = c->down[i];
        snprintf(b->name, sizeof b->name, "down_blocks.%d", i);
        const int attn = b->type == LOCO_UNET_CROSS_ATTN_DOWN_BLOCK_2D;
        if ((s = block_alloc(u, b, L, attn ? L : 0, err))) return s;
        for (int j = 0; j < L; j++) {
            if ((s = load_resnet(u, ld, b, j, j == 0 ? in_ch : out_ch, out_ch, 1.0f, err))) return s;
            if (attn && (s = load_attn(u, ld, b, j, out_ch, c->heads[i], c->cross_attention_dim[i],
                                       c->down_transformer_layers[i][j], c->only_cross_attention[i], err)))
                return s;
        }
        if (i < n - 1) {
            b->has_down = 1;
            snprintf(p, sizeof p, "%s.downsamplers.0", b->name);
            if ((s = loco_downsample_load(ld, p, out_ch, out_ch, c->downsample_padding, &b->down, err))) return s;
        }
    }

    /* mid: resnet, then (attention, resnet) pairs; only_cross_attention does not reach it */
    const int top = c->block_out_channels[n - 1];
    if (c->mid != LOCO_UNET_BLOCK_NONE) {
        unet_block *b = &u->mid;
        u->has_mid = 1;
        b->type = c->mid;
        snprintf(b->name, sizeof b->name, "mid_block");
        const int attn = c->mid == LOCO_UNET_MID_BLOCK_2D_CROSS_ATTN;
        if ((s = block_alloc(u, b, attn ? 2 : 1, attn ? 1 : 0, err))) return s;
        if ((s = load_resnet(u, ld, b, 0, top, top, c->mid_block_scale_factor, err))) return s;
        if (attn) {
            if ((s = load_attn(u, ld, b, 0, top, c->heads[n - 1], c->cross_attention_dim[n - 1],
                               c->mid_transformer_layers, 0, err)))
                return s;
            if ((s = load_resnet(u, ld, b, 1, top, top, c->mid_block_scale_factor, err))) return s;
        }
    }

    /* up: lists reversed as diffusers reverses them */
    out_ch = top;
    for (int i = 0; i < n; i++) {
        unet_block *b = &u->up[i];
        const int r = n - 1 - i;
        const int prev_ch = out_ch;
        out_ch = c->block_out_channels[r];
        const int in_ch = c->block_out_channels[r > 0 ? r - 1 : 0];
        const int L = c->layers_per_block[r] + 1;
        b->type = c->up[i];
        snprintf(b->name, sizeof b->name, "up_blocks.%d", i);
        const int attn = b->type == LOCO_UNET_CROSS_ATTN_UP_BLOCK_2D;
        if ((s = block_alloc(u, b, L, attn ? L : 0, err))) return s;
        for (int j = 0; j < L; j++) {
            const int skip_ch = j == L - 1 ? in_ch : out_ch;
            const int res_in = j == 0 ? prev_ch : out_ch;
            if ((s = load_resnet(u, ld, b, j, res_in + skip_ch, out_ch, 1.0f, err))) return s;
            if (attn && (s = load_attn(u, ld, b, j, out_ch, c->heads[r], c->cross_attention_dim[r],
                                       c->up_transformer_layers[i][j], c->only_cross_attention[r], err)))
                return s;
        }
        if (i < n - 1) {
            b->has_up = 1;
            snprintf(p, sizeof p, "%s.upsamplers.0", b->name);
            if ((s = loco_upsample_load(ld, p, out_ch, out_ch, &b->up, err))) return s;
        }
    }
    return LOCO_OK;
}

static void block_free(unet_block *b) {
    for (int j = 0; j < b->n_attn; j++) unet_transformer_free(&b->attns[j]);
    free(b->attns);
    free(b->resnets);
    free(b->resnet_site);
    memset(b, 0, sizeof *b);
}

void unet_blocks_free(loco_unet *u) {
    for (int i = 0; i < LOCO_UNET_MAX_BLOCKS; i++) {
        block_free(&u->down[i]);
        block_free(&u->up[i]);
    }
    block_free(&u->mid);
}

/* ---- forward ---------------------------------------------------------------------------------- */

typedef struct skip_stack {
    loco_tensor *t;
    int n, cap;
} skip_stack;

static void stack_free(skip_stack *st) {
    for (int i = 0; i < st->n; i++) loco_tensor_free(&st->t[i]);
    free(st->t);
    memset(st, 0, sizeof *st);
}

/* Takes ownership of *x (zeroes it). */
static loco_status stack_push(skip_stack *st, loco_tensor *x, loco_err *err) {
    if (st->n == st->cap) {
        int cap = st->cap ? st->cap * 2 : 16;
        loco_tensor *t = realloc(st->t, (size_t)cap * sizeof *t);
        if (!t) return loco_err_set(err, LOCO_ENOMEM, "unet: out of memory for the skip stack");
        st->t = t;
        st->cap = cap;
    }
    st->t[st->n++] = *x;
    memset(x, 0, sizeof *x);
    return LOCO_OK;
}

/* Visits every block in load order (down, mid, up). */
static void for_each_block(const loco_unet *u, void (*fn)(const unet_block *b, void *ctx), void *ctx) {
    for (int i = 0; i < u->cfg.n_blocks; i++) fn(&u->down[i], ctx);
    if (u->has_mid) fn(&u->mid, ctx);
    for (int i = 0; i < u->cfg.n_blocks; i++) fn(&u->up[i], ctx);
}

typedef struct temb_layers {
    const loco_tensor **w, **b;
    int64_t *width;
} temb_layers;

static void collect_temb(const unet_block *b, void *ctx) {
    temb_layers *t = ctx;
    for (int j = 0; j < b->n_resnets; j++) {
        const loco_resnet *res = &b->resnets[j];
        t->w[b->resnet_base + j] = &res->temb_w;
        t->b[b->resnet_base + j] = &res->temb_b;
        t->width[b->resnet_base + j] = res->out_ch;
    }
}

loco_status unet_temb_projections(const unet_run *r, loco_tensor *buf, loco_tensor **proj, loco_err *err) {
    const loco_unet *u = r->u;
    const int n = u->n_resnets;
    const int64_t B = r->temb_act->shape[0];
    *proj = NULL;
    memset(buf, 0, sizeof *buf);
    temb_layers t = {calloc((size_t)n, sizeof *t.w), calloc((size_t)n, sizeof *t.b), calloc((size_t)n, sizeof *t.width)};
    loco_tensor *views = calloc((size_t)n, sizeof *views);
    loco_tensor **ys = calloc((size_t)n, sizeof *ys);
    loco_status s = t.w && t.b && t.width && views && ys ? LOCO_OK
                                                         : loco_err_set(err, LOCO_ENOMEM, "unet: out of memory");
    int64_t total = 0;
    if (!s) {
        for_each_block(u, collect_temb, &t);
        for (int i = 0; i < n; i++) total += t.width[i];
        s = loco_tensor_alloc_act(r->be, 1, (int64_t[]){B * total}, buf, err);
    }
    int64_t off = 0;
    for (int i = 0; !s && i < n; off += B * t.width[i], i++) {
        s = loco_tensor_view(buf, off, 2, (int64_t[]){B, t.width[i]}, &views[i], err);
        ys[i] = &views[i];
    }
    if (!s) s = loco_linear_many(r->be, n, ys, r->temb_act, t.w, t.b, err);
    if (!s) *proj = views;
    else {
        free(views);
        loco_tensor_free(buf);
    }
    free(t.w);
    free(t.b);
    free(t.width);
    free(ys);
    return s;
}

/* out = resnet(x), then the site hook. */
static loco_status run_resnet(const unet_run *r, const unet_block *b, int j, const loco_tensor *x, loco_tensor *out,
                              loco_err *err) {
    const loco_tensor *tp = r->temb_proj ? &r->temb_proj[b->resnet_base + j] : NULL;
    loco_status s = loco_resnet_forward_proj(r->be, &b->resnets[j], x, r->temb_act, tp, out, err);
    if (!s) {
        s = unet_call_hook(r, b->resnet_site[j], out, err);
        if (s) loco_tensor_free(out);
    }
    if (s) loco_err_prefix(err, "%s.resnets.%d", b->name, j);
    return s;
}

static loco_status run_attn(const unet_run *r, const unet_block *b, int j, const loco_tensor *x, loco_tensor *out,
                            loco_err *err) {
    loco_status s = unet_transformer_forward(r, &b->attns[j], x, out, err);
    if (s) loco_err_prefix(err, "%s.attentions.%d", b->name, j);
    return s;
}

static loco_status probe(loco_probe_fn fn, void *ctx, const char *name, const loco_tensor *t, loco_err *err) {
    return fn ? fn(ctx, name, t, err) : LOCO_OK;
}

/* The skip pushed as the block's k-th output ("down_blocks.i.res.k", as diffusers' res_samples). */
static loco_status probe_res(loco_probe_fn fn, void *ctx, const unet_block *b, int k, const skip_stack *st,
                             loco_err *err) {
    if (!fn) return LOCO_OK;
    char name[64];
    snprintf(name, sizeof name, "%s.res.%d", b->name, k);
    return fn(ctx, name, &st->t[st->n - 1], err);
}

static loco_status down_block(const unet_run *r, const unet_block *b, skip_stack *st, loco_probe_fn pfn, void *pctx,
                              loco_err *err) {
    loco_status s;
    for (int j = 0; j < b->n_resnets; j++) {
        loco_tensor h = {0}, a = {0};
        if ((s = run_resnet(r, b, j, &st->t[st->n - 1], &h, err))) return s;
        if (b->n_attn) {
            s = run_attn(r, b, j, &h, &a, err);
            loco_tensor_free(&h);
            if (s) return s;
            h = a;
        }
        if ((s = stack_push(st, &h, err))) {
            loco_tensor_free(&h);
            return s;
        }
        if ((s = probe_res(pfn, pctx, b, j, st, err))) return s;
    }
    if (b->has_down) {
        loco_tensor d = {0};
        if ((s = loco_downsample_forward(r->be, &b->down, &st->t[st->n - 1], &d, err)))
            return loco_err_prefix(err, "%s.downsamplers.0", b->name);
        if ((s = stack_push(st, &d, err))) {
            loco_tensor_free(&d);
            return s;
        }
        if ((s = probe_res(pfn, pctx, b, b->n_resnets, st, err))) return s;
    }
    return LOCO_OK;
}

/* x stays on the skip stack; *out is the mid block's output. */
static loco_status mid_block(const unet_run *r, const unet_block *b, const loco_tensor *x, loco_tensor *out,
                             loco_err *err) {
    loco_tensor h = {0};
    loco_status s = run_resnet(r, b, 0, x, &h, err);
    for (int j = 0; !s && j < b->n_attn; j++) {
        loco_tensor a = {0};
        s = run_attn(r, b, j, &h, &a, err);
        loco_tensor_free(&h);
        if (!s) s = run_resnet(r, b, j + 1, &a, &h, err);
        loco_tensor_free(&a);
    }
    if (s) {
        loco_tensor_free(&h);
        return s;
    }
    *out = h;
    return LOCO_OK;
}

/* *h is consumed and replaced by the block's output. */
static loco_status up_block(const unet_run *r, const unet_block *b, skip_stack *st, loco_tensor *h, loco_err *err) {
    loco_status s = LOCO_OK;
    for (int j = 0; j < b->n_resnets; j++) {
        if (st->n == 0) return loco_err_set(err, LOCO_EINVAL, "%s: the skip-connection stack is empty", b->name);
        loco_tensor skip = st->t[--st->n], cat = {0}, o = {0};
        int64_t shape[4] = {h->shape[0], h->shape[1] + skip.shape[1], h->shape[2], h->shape[3]};
        s = loco_tensor_alloc_act(r->be, 4, shape, &cat, err);
        if (!s) s = loco_concat(r->be, &cat, h, &skip, 1, err);
        loco_tensor_free(&skip);
        loco_tensor_free(h);
        if (!s) s = run_resnet(r, b, j, &cat, &o, err);
        loco_tensor_free(&cat);
        if (s) return loco_err_prefix(err, "%s", b->name);
        if (b->n_attn) {
            loco_tensor a = {0};
            s = run_attn(r, b, j, &o, &a, err);
            loco_tensor_free(&o);
            if (s) return s;
            o = a;
        }
        *h = o;
    }
    if (b->has_up) {
        loco_tensor o = {0};
        s = loco_upsample_forward(r->be, &b->up, h, &o, err);
        loco_tensor_free(h);
        if (s) return loco_err_prefix(err, "%s.upsamplers.0", b->name);
        *h = o;
    }
    return LOCO_OK;
}

loco_status unet_blocks_forward(const unet_run *r, loco_tensor *h0, loco_probe_fn pfn, void *pctx, loco_tensor *out,
                                loco_err *err) {
    const loco_unet *u = r->u;
    const int n = u->cfg.n_blocks;
    skip_stack st = {0};
    loco_tensor h = {0};
    loco_status s = stack_push(&st, h0, err);
    if (s) {
        loco_tensor_free(h0);
        return s;
    }
    for (int i = 0; i < n && !s; i++) {
        s = down_block(r, &u->down[i], &st, pfn, pctx, err);
        if (!s) s = probe(pfn, pctx, u->down[i].name, &st.t[st.n - 1], err);
    }
    if (!s) {
        if (u->has_mid) {
            s = mid_block(r, &u->mid, &st.t[st.n - 1], &h, err);
            if (!s) s = probe(pfn, pctx, u->mid.name, &h, err);
        } else {
            /* no mid block: the deepest skip is both the up path's input and a skip */
            s = loco_tensor_alloc_act(r->be, 4, st.t[st.n - 1].shape, &h, err);
            if (!s) s = loco_copy(r->be, &h, &st.t[st.n - 1], err);
        }
    }
    for (int i = 0; i < n && !s; i++) {
        s = up_block(r, &u->up[i], &st, &h, err);
        if (!s) s = probe(pfn, pctx, u->up[i].name, &h, err);
    }
    if (!s && st.n != 0)
        s = loco_err_set(err, LOCO_EINVAL, "unet: %d skip connections left over after the up blocks", st.n);
    stack_free(&st);
    if (s) {
        loco_tensor_free(&h);
        return s;
    }
    *out = h;
    return LOCO_OK;
}
