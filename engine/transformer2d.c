/* transformer2d.c: diffusers Transformer2DModel (continuous input) and BasicTransformerBlock
 * as used by the SD UNets: GroupNorm(eps 1e-6) -> proj_in -> blocks -> proj_out -> + input.
 * Every attention output (after to_out) and FF output is a site: hooks see it before the
 * residual add, as a PyTorch forward hook on attn1/attn2/ff would. */
#include "unet_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { A1_Q, A1_K, A1_V }; /* unet_tblock.a1 */

/* diffusers hard-codes these for the SD transformer: GroupNorm eps in Transformer2DModel,
 * LayerNorm eps of BasicTransformerBlock (norm_eps default) and FeedForward's mult. */
#define T2D_GN_EPS 1e-6f
#define TBLOCK_LN_EPS 1e-5f
#define FF_MULT 4

static loco_status load_ln(const loco_loader *ld, const char *prefix, const char *name, int dim, loco_tensor *w,
                           loco_tensor *b, loco_err *err) {
    char p[512];
    snprintf(p, sizeof p, "%s.%s", prefix, name);
    loco_status s = loco_load_tensor(ld, p, "weight", 1, (int64_t[]){dim}, w, err);
    if (!s) s = loco_load_tensor(ld, p, "bias", 1, (int64_t[]){dim}, b, err);
    return s;
}

static loco_status load_lin(const loco_loader *ld, const char *prefix, const char *name, int in_f, int out_f,
                            int bias, loco_lin *l, loco_err *err) {
    char p[512];
    snprintf(p, sizeof p, "%s.%s", prefix, name);
    return loco_lin_load(ld, p, in_f, out_f, bias, l, err);
}

static loco_status tblock_load(loco_unet *u, const loco_loader *ld, const char *prefix, int dim, int heads,
                               int cross_dim, int only_cross, unet_tblock *tb, loco_err *err) {
    memset(tb, 0, sizeof *tb);
    tb->dim = dim;
    tb->heads = heads;
    tb->cross_dim = cross_dim;
    tb->only_cross = only_cross;
    const int kv1_in = only_cross ? cross_dim : dim;
    loco_status s;
    if ((s = load_ln(ld, prefix, "norm1", dim, &tb->norm1_w, &tb->norm1_b, err))) return s;
    if (only_cross) {
        if ((s = load_lin(ld, prefix, "attn1.to_q", dim, dim, 0, &tb->a1[A1_Q], err))) return s;
        if ((s = load_lin(ld, prefix, "attn1.to_k", kv1_in, dim, 0, &tb->a1[A1_K], err))) return s;
        if ((s = load_lin(ld, prefix, "attn1.to_v", kv1_in, dim, 0, &tb->a1[A1_V], err))) return s;
    } else {
        static const char *const qkv[3] = {"attn1.to_q", "attn1.to_k", "attn1.to_v"};
        if ((s = loco_lin_load_stacked(ld, prefix, qkv, 3, "attn1.to_qkv", dim, dim, &tb->a1_qkv, tb->a1, err)))
            return s;
    }
    if ((s = load_lin(ld, prefix, "attn1.to_out.0", dim, dim, 1, &tb->a1_o, err))) return s;
    if ((s = load_ln(ld, prefix, "norm2", dim, &tb->norm2_w, &tb->norm2_b, err))) return s;
    if ((s = load_lin(ld, prefix, "attn2.to_q", dim, dim, 0, &tb->a2_q, err))) return s;
    if ((s = load_lin(ld, prefix, "attn2.to_k", cross_dim, dim, 0, &tb->a2_k, err))) return s;
    if ((s = load_lin(ld, prefix, "attn2.to_v", cross_dim, dim, 0, &tb->a2_v, err))) return s;
    if ((s = load_lin(ld, prefix, "attn2.to_out.0", dim, dim, 1, &tb->a2_o, err))) return s;
    if ((s = load_ln(ld, prefix, "norm3", dim, &tb->norm3_w, &tb->norm3_b, err))) return s;
    if ((s = load_lin(ld, prefix, "ff.net.0.proj", dim, 2 * FF_MULT * dim, 1, &tb->ff_in, err))) return s;
    if ((s = load_lin(ld, prefix, "ff.net.2", FF_MULT * dim, dim, 1, &tb->ff_out, err))) return s;

    /* sites in execution order: attn1, the text projections of attn2, attn2, ff */
    char name[512];
    if ((s = unet_register_cross(u, tb, err))) return s;
    snprintf(name, sizeof name, "%s.attn1", prefix);
    if ((s = unet_add_site(u, LOCO_SITE_SELF_ATTN, name, -1, &tb->site_attn1, err))) return s;
    snprintf(name, sizeof name, "%s.attn2.to_k", prefix);
    if ((s = unet_add_site(u, LOCO_SITE_CROSS_K, name, tb->cross_index, &tb->site_k, err))) return s;
    snprintf(name, sizeof name, "%s.attn2.to_v", prefix);
    if ((s = unet_add_site(u, LOCO_SITE_CROSS_V, name, tb->cross_index, &tb->site_v, err))) return s;
    snprintf(name, sizeof name, "%s.attn2", prefix);
    if ((s = unet_add_site(u, LOCO_SITE_CROSS_ATTN, name, tb->cross_index, &tb->site_attn2, err))) return s;
    snprintf(name, sizeof name, "%s.ff", prefix);
    return unet_add_site(u, LOCO_SITE_FF, name, -1, &tb->site_ff, err);
}

loco_status unet_transformer_load(loco_unet *u, const loco_loader *ld, const char *prefix, int channels, int heads,
                                  int cross_dim, int n_blocks, int only_cross, unet_transformer *t, loco_err *err) {
    memset(t, 0, sizeof *t);
    t->channels = channels;
    t->heads = heads;
    t->linear_proj = u->cfg.use_linear_projection;
    if (heads <= 0 || channels % heads != 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: %d channels are not divisible into %d heads", prefix, channels,
                            heads);
    char p[256];
    snprintf(p, sizeof p, "%s.norm", prefix);
    loco_status s = loco_gnorm_load(ld, p, channels, u->cfg.norm_num_groups, T2D_GN_EPS, &t->norm, err);
    if (s) return s;
    /* inner_dim = heads * head_dim = channels for every SD UNet */
    for (int which = 0; which < 2; which++) {
        loco_lin *l = which ? &t->proj_out : &t->proj_in;
        snprintf(p, sizeof p, "%s.%s", prefix, which ? "proj_out" : "proj_in");
        if (t->linear_proj) {
            s = loco_lin_load(ld, p, channels, channels, 1, l, err);
        } else {
            l->in_f = l->out_f = channels;
            s = loco_load_tensor(ld, p, "weight", 4, (int64_t[]){channels, channels, 1, 1}, &l->w, err);
            if (!s) s = loco_load_tensor(ld, p, "bias", 1, (int64_t[]){channels}, &l->b, err);
        }
        if (s) return s;
    }
    t->blocks = calloc((size_t)n_blocks, sizeof *t->blocks);
    if (!t->blocks) return loco_err_set(err, LOCO_ENOMEM, "%s: out of memory", prefix);
    t->n_blocks = n_blocks;
    for (int i = 0; i < n_blocks; i++) {
        snprintf(p, sizeof p, "%s.transformer_blocks.%d", prefix, i);
        if ((s = tblock_load(u, ld, p, channels, heads, cross_dim, only_cross, &t->blocks[i], err))) return s;
    }
    return LOCO_OK;
}

void unet_transformer_free(unet_transformer *t) {
    /* tensors belong to the parameter table */
    free(t->blocks);
    memset(t, 0, sizeof *t);
}

loco_status unet_text_proj(loco_backend *be, const unet_tblock *tb, int attn, int which, const loco_tensor *ehs,
                           loco_tensor *out, loco_err *err) {
    const loco_lin *l = attn == 1 ? &tb->a1[which ? A1_V : A1_K] : (which ? &tb->a2_v : &tb->a2_k);
    if (ehs->ndim != 3 || ehs->shape[2] != l->in_f)
        return loco_err_set(err, LOCO_EINVAL,
                            "encoder_hidden_states must be [batch, tokens, %d] for cross-attention layer %d", l->in_f,
                            tb->cross_index);
    return loco_lin_forward(be, l, ehs, LOCO_ACT_NONE, out, err);
}

/* An attention's input: x normalised already (gamma NULL), or h with the block's LayerNorm to
 * apply on the way into the projection (loco_ln_linear). */
typedef struct attn_input {
    const loco_tensor *x, *gamma, *beta;
} attn_input;

/* to_out(attention(to_q(in), k, v)) with per-sample K/V rows, into *out, or (residual not NULL)
 * added to *residual in place by the to_out GEMM itself. k == NULL: self-attention through the
 * stacked projection, q, k and v in one GEMM's rows (loco_attention's qkv_packed). */
static loco_status attention(loco_backend *be, const unet_tblock *tb, const loco_lin *q_l, const loco_lin *o_l,
                             const attn_input *in, const loco_tensor *k, const loco_tensor *v, const int *kv_index,
                             loco_tensor *residual, loco_tensor *out, loco_err *err) {
    loco_tensor q = {0}, o = {0};
    const int packed = k == NULL;
    const loco_lin *ql = packed ? &tb->a1_qkv : q_l;
    loco_status s = in->gamma ? loco_lin_forward_ln(be, ql, in->x, in->gamma, in->beta, TBLOCK_LN_EPS, &q, err)
                              : loco_lin_forward(be, ql, in->x, LOCO_ACT_NONE, &q, err);
    if (!s) s = loco_tensor_alloc_act(be, 3, (int64_t[]){q.shape[0], q.shape[1], tb->dim}, &o, err);
    if (!s) {
        loco_attention_params ap = {.heads = tb->heads,
                                    .scale = (float)(1.0 / sqrt((double)(tb->dim / tb->heads))),
                                    .causal = 0,
                                    .kv_index = kv_index,
                                    .qkv_packed = packed};
        s = loco_attention(be, &o, &q, k, v, &ap, err);
    }
    loco_tensor_free(&q);
    if (!s)
        s = residual ? loco_lin_accumulate(be, o_l, &o, residual, err)
                     : loco_lin_forward(be, o_l, &o, LOCO_ACT_NONE, out, err);
    loco_tensor_free(&o);
    return s;
}

/* Text K/V of one attention of a block: precomputed, or projected here (calling the K/V hooks
 * for attn2 as the precompute does). *owned tells the caller to free them. */
static loco_status text_kv(const unet_run *r, const unet_tblock *tb, int attn, loco_tensor *k, loco_tensor *v,
                           int *owned, loco_err *err) {
    const int ci = tb->cross_index;
    if (r->kv) {
        *k = attn == 1 ? r->kv->k1[ci] : r->kv->k[ci];
        *v = attn == 1 ? r->kv->v1[ci] : r->kv->v[ci];
        k->owns = v->owns = 0;
        *owned = 0;
        if (!k->data || !v->data)
            return loco_err_set(err, LOCO_EINVAL, "text K/V: layer %d has no attn%d projections", ci, attn);
        return LOCO_OK;
    }
    *owned = 1;
    loco_status s = unet_text_proj(r->be, tb, attn, 0, r->ehs, k, err);
    if (!s && attn == 2) s = unet_call_hook(r, tb->site_k, k, err);
    if (!s) s = unet_text_proj(r->be, tb, attn, 1, r->ehs, v, err);
    if (!s && attn == 2) s = unet_call_hook(r, tb->site_v, v, err);
    if (s) {
        loco_tensor_free(k);
        loco_tensor_free(v);
    }
    return s;
}

/* h = h + x, in place, with x the site output (after its hook ran). A site no hook sees was
 * added by its projection already (fused: the caller passed h as the residual and x is empty). */
static loco_status residual(const unet_run *r, int site, int fused, loco_tensor *x, loco_tensor *h, loco_err *err) {
    if (fused) return LOCO_OK;
    loco_status s = unet_call_hook(r, site, x, err);
    if (!s) s = loco_add(r->be, h, x, h, err);
    loco_tensor_free(x);
    return s;
}

static loco_status tblock_forward(const unet_run *r, const unet_tblock *tb, loco_tensor *h, loco_err *err) {
    loco_backend *be = r->be;
    const int ci = tb->cross_index;
    const int *kv_index = r->text_index;
    if (r->kv_index_per_layer && r->kv_index_per_layer[ci]) kv_index = r->kv_index_per_layer[ci];
    loco_tensor n = {0}, a = {0}, k = {0}, v = {0}, f = {0};
    int owned = 0;
    /* the three residual adds go into the to_out / ff.net.2 GEMMs unless a hook sees the site */
    const int fuse1 = !unet_site_hooked(r, tb->site_attn1), fuse2 = !unet_site_hooked(r, tb->site_attn2),
              fuse3 = !unet_site_hooked(r, tb->site_ff);
    loco_status s = LOCO_OK;

    /* attn1: self-attention, or attention to the text when only_cross_attention. norm1's output
     * feeds one GEMM (q, k and v stacked, or to_q alone), the LayerNorm folded into it where the
     * backend can; after an edit replaced one of q, k, v it feeds three, so it is written once. */
    const attn_input in1 = {h, &tb->norm1_w, &tb->norm1_b};
    if (tb->only_cross) {
        if ((s = text_kv(r, tb, 1, &k, &v, &owned, err))) goto done;
        s = attention(be, tb, &tb->a1[A1_Q], &tb->a1_o, &in1, &k, &v, kv_index, fuse1 ? h : NULL, &a, err);
    } else if (loco_lin_stack_intact(&tb->a1_qkv, tb->a1, 3)) {
        s = attention(be, tb, NULL, &tb->a1_o, &in1, NULL, NULL, NULL, fuse1 ? h : NULL, &a, err);
    } else { /* they go one by one */
        const attn_input n1 = {&n, NULL, NULL};
        owned = 1;
        if ((s = loco_tensor_alloc_act(be, 3, h->shape, &n, err))) goto done;
        if ((s = loco_layer_norm(be, &n, h, &tb->norm1_w, &tb->norm1_b, TBLOCK_LN_EPS, err))) goto done;
        if ((s = loco_lin_forward(be, &tb->a1[A1_K], &n, LOCO_ACT_NONE, &k, err))) goto done;
        if ((s = loco_lin_forward(be, &tb->a1[A1_V], &n, LOCO_ACT_NONE, &v, err))) goto done;
        s = attention(be, tb, &tb->a1[A1_Q], &tb->a1_o, &n1, &k, &v, NULL, fuse1 ? h : NULL, &a, err);
    }
    if (owned) {
        loco_tensor_free(&k);
        loco_tensor_free(&v);
    }
    memset(&k, 0, sizeof k);
    memset(&v, 0, sizeof v);
    if (s || (s = residual(r, tb->site_attn1, fuse1, &a, h, err))) goto done;

    /* attn2: cross-attention to the text rows chosen per sample; norm2 folded into to_q */
    const attn_input in2 = {h, &tb->norm2_w, &tb->norm2_b};
    if ((s = text_kv(r, tb, 2, &k, &v, &owned, err))) goto done;
    s = attention(be, tb, &tb->a2_q, &tb->a2_o, &in2, &k, &v, kv_index, fuse2 ? h : NULL, &a, err);
    if (owned) {
        loco_tensor_free(&k);
        loco_tensor_free(&v);
    }
    memset(&k, 0, sizeof k);
    memset(&v, 0, sizeof v);
    if (s || (s = residual(r, tb->site_attn2, fuse2, &a, h, err))) goto done;

    /* feed-forward: GEGLU(ff.net.0.proj(norm3(h))) -> ff.net.2 */
    {
        loco_tensor gl = {0};
        int64_t shape[3] = {h->shape[0], h->shape[1], tb->ff_in.out_f / 2};
        s = loco_tensor_alloc_act(be, 3, shape, &gl, err);
        if (!s)
            s = loco_ln_linear(be, &gl, h, &tb->norm3_w, &tb->norm3_b, TBLOCK_LN_EPS, &tb->ff_in.w,
                               tb->ff_in.b.data ? &tb->ff_in.b : NULL, 1, err);
        if (!s)
            s = fuse3 ? loco_lin_accumulate(be, &tb->ff_out, &gl, h, err)
                      : loco_lin_forward(be, &tb->ff_out, &gl, LOCO_ACT_NONE, &f, err);
        loco_tensor_free(&gl);
    }
    if (s || (s = residual(r, tb->site_ff, fuse3, &f, h, err))) goto done;
done:
    loco_tensor_free(&n);
    loco_tensor_free(&a);
    loco_tensor_free(&f);
    if (owned) {
        loco_tensor_free(&k);
        loco_tensor_free(&v);
    }
    return s;
}

/* proj_in / proj_out as a linear: the Linear form directly, the 1x1-conv form through an
 * [out, in] view of its [out, in, 1, 1] weight (a 1x1 conv on NCHW is a GEMM on the tokens). */
static loco_status proj_as_linear(const loco_lin *l, int conv_form, loco_lin *v, loco_err *err) {
    *v = *l;
    return conv_form ? loco_reshape_view(&l->w, 2, (int64_t[]){l->out_f, l->in_f}, &v->w, err) : LOCO_OK;
}

/* GroupNorm, proj_in, the blocks, proj_out, + x. proj_in reads the normalised activations as
 * they are (channel-major) and proj_out writes channel-major with the residual added
 * (loco_linear_from/to_channels): diffusers' two permutes and the residual add are no passes
 * of their own where the backend fuses them (CUDA). */
loco_status unet_transformer_forward(const unet_run *r, const unet_transformer *t, const loco_tensor *x,
                                     loco_tensor *out, loco_err *err) {
    loco_backend *be = r->be;
    if (x->ndim != 4 || x->shape[1] != t->channels)
        return loco_err_set(err, LOCO_EINVAL, "transformer: input must have %d channels", t->channels);
    const int64_t B = x->shape[0], C = t->channels, L = x->shape[2] * x->shape[3];
    const int64_t chw[3] = {B, C, L};
    loco_tensor gn = {0}, view = {0}, xv = {0}, h = {0}, y = {0};
    loco_lin pin, pout;
    const int conv_form = !t->linear_proj;
    loco_status s;
    if ((s = proj_as_linear(&t->proj_in, conv_form, &pin, err)) ||
        (s = proj_as_linear(&t->proj_out, conv_form, &pout, err)))
        return s;
    if ((s = loco_gnorm_forward(be, &t->norm, x, 0, &gn, err))) goto done;
    if ((s = loco_reshape_view(&gn, 3, chw, &view, err))) goto done;
    if ((s = loco_tensor_alloc_act(be, 3, (int64_t[]){B, L, pin.out_f}, &h, err))) goto done;
    if ((s = loco_linear_from_channels(be, &h, &view, &pin.w, pin.b.data ? &pin.b : NULL, err))) goto done;
    loco_tensor_free(&gn);
    for (int i = 0; i < t->n_blocks; i++)
        if ((s = tblock_forward(r, &t->blocks[i], &h, err))) goto done;
    if ((s = loco_tensor_alloc_act(be, 4, x->shape, &y, err))) goto done;
    if ((s = loco_reshape_view(&y, 3, chw, &view, err)) || (s = loco_reshape_view(x, 3, chw, &xv, err))) goto done;
    if ((s = loco_linear_to_channels(be, &view, &h, &pout.w, pout.b.data ? &pout.b : NULL, &xv, err))) goto done;
    *out = y;
    memset(&y, 0, sizeof y);
done:
    loco_tensor_free(&gn);
    loco_tensor_free(&h);
    loco_tensor_free(&y);
    return s;
}
