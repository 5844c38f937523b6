/* text_conditioning.c: encode_prompt of the SD 1.x/2.x and SD-XL pipelines. */
#include "text_conditioning.h"

#include <stdlib.h>
#include <string.h>

void loco_text_encoders_init(loco_text_encoders *e) {
    memset(e, 0, sizeof *e);
    e->family = LOCO_FAMILY_SD1;
    e->force_zeros_for_empty_prompt = 1; /* StableDiffusionXLPipeline's constructor default */
}

void loco_encode_prompt_opts_init(loco_encode_prompt_opts *o) {
    memset(o, 0, sizeof *o);
    o->num_images_per_prompt = 1;
    o->do_classifier_free_guidance = 1;
}

void loco_prompt_embeds_free(loco_prompt_embeds *p) {
    if (!p) return;
    loco_tensor_free(&p->embeds);
    loco_tensor_free(&p->pooled);
    memset(p, 0, sizeof *p);
}

/* What one encoder run returns for n texts. */
typedef struct enc_run {
    loco_tensor states; /* [n, L, D] */
    loco_tensor embeds; /* [n, P] when asked */
} enc_run;

static void enc_run_free(enc_run *r) {
    loco_tensor_free(&r->states);
    loco_tensor_free(&r->embeds);
}

/* Tokenize `texts` as the pipelines do (pad/truncate to model_max_length) and run the encoder.
 * hidden_index 0 means last_hidden_state; otherwise hidden_states[hidden_index] with or
 * without the final LayerNorm. */
static loco_status encode_texts(const loco_clip_text *enc, const loco_clip_tokenizer *tok, const char *const *texts,
                                int n, int hidden_index, int final_ln, int want_text_embeds,
                                const loco_site_hooks *hooks, enc_run *out, loco_err *err) {
    const loco_clip_text_config *c = loco_clip_text_get_config(enc);
    loco_backend *be = loco_clip_text_backend(enc);
    const int L = loco_clip_tokenizer_max_length(tok);
    if (L <= 0 || L > c->max_position_embeddings)
        return loco_err_set(err, LOCO_EINVAL,
                            "tokenizer model_max_length %d does not fit the text encoder's max_position_embeddings %d", L,
                            c->max_position_embeddings);
    int32_t *ids = malloc((size_t)n * (size_t)L * sizeof *ids);
    if (!ids) return loco_err_set(err, LOCO_ENOMEM, "encode_prompt: out of memory");
    loco_status st = LOCO_OK;
    for (int i = 0; i < n; i++) {
        if (!texts[i]) {
            st = loco_err_set(err, LOCO_EINVAL, "encode_prompt: prompt %d is NULL", i);
            goto done;
        }
        if ((st = loco_clip_tokenize(tok, texts[i], ids + (size_t)i * L, NULL, err))) {
            loco_err_prefix(err, "tokenizing prompt %d", i);
            goto done;
        }
    }
    const int64_t sshape[3] = {n, L, c->hidden_size}, eshape[2] = {n, c->projection_dim};
    if ((st = loco_tensor_alloc_act(be, 3, sshape, &out->states, err))) goto done;
    if (want_text_embeds && (st = loco_tensor_alloc_act(be, 2, eshape, &out->embeds, err))) goto done;
    loco_clip_text_outputs o;
    loco_clip_text_outputs_init(&o);
    loco_clip_hidden_request req = {.index = hidden_index, .final_ln = final_ln, .out = &out->states};
    if (hidden_index == 0) {
        o.last_hidden_state = &out->states;
    } else {
        o.hidden = &req;
        o.n_hidden = 1;
    }
    if (want_text_embeds) o.text_embeds = &out->embeds;
    st = loco_clip_text_forward(enc, ids, n, L, &o, hooks, err);
done:
    free(ids);
    if (st) enc_run_free(out);
    return st;
}

/* Write src row p (of a [n, ...] tensor) into dst rows base + p*k + r, r < k: the pipelines'
 * repeat(1, k, 1).view(n*k, ...). */
static loco_status place_rows(loco_backend *be, loco_tensor *dst, int64_t base, const loco_tensor *src, int k,
                              loco_err *err) {
    for (int64_t p = 0; p < src->shape[0]; p++) {
        loco_tensor s;
        loco_status st = loco_tensor_slice0(src, p, 1, &s, err);
        if (st) return st;
        for (int r = 0; r < k; r++) {
            loco_tensor d;
            if ((st = loco_tensor_slice0(dst, base + p * k + r, 1, &d, err)) || (st = loco_copy(be, &d, &s, err)))
                return st;
        }
    }
    return LOCO_OK;
}

static loco_status check_encoders(const loco_text_encoders *e, loco_err *err) {
    if (e->family != LOCO_FAMILY_SD1 && e->family != LOCO_FAMILY_SD2 && e->family != LOCO_FAMILY_SDXL)
        return loco_err_set(err, LOCO_EINVAL, "encode_prompt: model family '%s' has no CLIP encode_prompt",
                            loco_model_family_name(e->family));
    if (e->family != LOCO_FAMILY_SDXL) {
        if (!e->tokenizer || !e->text_encoder)
            return loco_err_set(err, LOCO_EINVAL, "encode_prompt (%s): tokenizer and text_encoder are required",
                                loco_model_family_name(e->family));
        return LOCO_OK;
    }
    if (!e->tokenizer_2 || !e->text_encoder_2)
        return loco_err_set(err, LOCO_EINVAL, "encode_prompt (sdxl): tokenizer_2 and text_encoder_2 are required");
    if (!loco_clip_text_has_projection(e->text_encoder_2))
        return loco_err_set(err, LOCO_EINVAL,
                            "encode_prompt (sdxl): text_encoder_2 has no text_projection, the pooled embeds need it");
    if (!e->tokenizer != !e->text_encoder)
        return loco_err_set(err, LOCO_EINVAL, "encode_prompt (sdxl): tokenizer and text_encoder must be given together");
    if (e->text_encoder) {
        if (loco_clip_tokenizer_max_length(e->tokenizer) != loco_clip_tokenizer_max_length(e->tokenizer_2))
            return loco_err_set(err, LOCO_EINVAL,
                                "encode_prompt (sdxl): tokenizer max lengths %d and %d differ; the states cannot be "
                                "concatenated",
                                loco_clip_tokenizer_max_length(e->tokenizer),
                                loco_clip_tokenizer_max_length(e->tokenizer_2));
        if (loco_clip_text_backend(e->text_encoder) != loco_clip_text_backend(e->text_encoder_2))
            return loco_err_set(err, LOCO_EINVAL, "encode_prompt (sdxl): the two text encoders live on different backends");
    }
    return LOCO_OK;
}

/* One half (negative or conditional) of the SD-XL embeddings, placed into out rows from `base`. */
static loco_status sdxl_half(const loco_text_encoders *e, const loco_encode_prompt_opts *o, const char *const *t1,
                             const char *const *t2, int hidden_index, const loco_site_hooks *h1,
                             const loco_site_hooks *h2, loco_prompt_embeds *out, int64_t base, loco_err *err) {
    loco_backend *be = loco_clip_text_backend(e->text_encoder_2);
    const int n = o->n_prompts;
    enc_run r1 = {0}, r2 = {0};
    loco_tensor cat = {0};
    loco_status st = LOCO_OK;
    if (e->text_encoder &&
        (st = encode_texts(e->text_encoder, e->tokenizer, t1, n, hidden_index, 0, 0, h1, &r1, err))) {
        loco_err_prefix(err, "text_encoder");
        goto done;
    }
    if ((st = encode_texts(e->text_encoder_2, e->tokenizer_2, t2, n, hidden_index, 0, 1, h2, &r2, err))) {
        loco_err_prefix(err, "text_encoder_2");
        goto done;
    }
    const loco_tensor *states = &r2.states;
    if (e->text_encoder) {
        const int64_t shape[3] = {n, out->embeds.shape[1], out->embeds.shape[2]};
        if ((st = loco_tensor_alloc_act(be, 3, shape, &cat, err)) ||
            (st = loco_concat(be, &cat, &r1.states, &r2.states, 2, err)))
            goto done;
        states = &cat;
    }
    if ((st = place_rows(be, &out->embeds, base, states, o->num_images_per_prompt, err)) ||
        (st = place_rows(be, &out->pooled, base, &r2.embeds, o->num_images_per_prompt, err)))
        goto done;
done:
    loco_tensor_free(&cat);
    enc_run_free(&r1);
    enc_run_free(&r2);
    return st;
}

static loco_status encode_sdxl(const loco_text_encoders *e, const loco_encode_prompt_opts *o, loco_prompt_embeds *out,
                               loco_err *err) {
    const loco_clip_text_config *c2 = loco_clip_text_get_config(e->text_encoder_2);
    loco_backend *be = loco_clip_text_backend(e->text_encoder_2);
    const int64_t L = loco_clip_tokenizer_max_length(e->tokenizer_2);
    const int64_t D = c2->hidden_size + (e->text_encoder ? loco_clip_text_get_config(e->text_encoder)->hidden_size : 0);
    const int64_t rows = (int64_t)out->batch * (out->cfg ? 2 : 1);
    const int64_t eshape[3] = {rows, L, D}, pshape[2] = {rows, c2->projection_dim};
    loco_status st;
    if ((st = loco_tensor_alloc_act(be, 3, eshape, &out->embeds, err)) ||
        (st = loco_tensor_alloc_act(be, 2, pshape, &out->pooled, err)))
        return st;
    const int64_t cond_base = out->cfg ? out->batch : 0;
    const char *const *p2 = o->prompts_2 ? o->prompts_2 : o->prompts;
    /* "2" because SD-XL always indexes from the penultimate layer */
    if ((st = sdxl_half(e, o, o->prompts, p2, -(o->clip_skip + 2), o->hooks, o->hooks_2, out, cond_base, err)))
        return st;
    if (!out->cfg) return LOCO_OK;
    loco_tensor neg_e, neg_p;
    if (!o->negative_prompts && e->force_zeros_for_empty_prompt) {
        if ((st = loco_tensor_slice0(&out->embeds, 0, out->batch, &neg_e, err)) ||
            (st = loco_tensor_slice0(&out->pooled, 0, out->batch, &neg_p, err)) ||
            (st = loco_fill(be, &neg_e, 0.0f, err)) || (st = loco_fill(be, &neg_p, 0.0f, err)))
            return st;
        return LOCO_OK;
    }
    /* negative_prompt or "": a NULL list means "" for every prompt */
    const char **empty = NULL;
    const char *const *n1 = o->negative_prompts;
    if (!n1) {
        empty = malloc((size_t)o->n_prompts * sizeof *empty);
        if (!empty) return loco_err_set(err, LOCO_ENOMEM, "encode_prompt: out of memory");
        for (int i = 0; i < o->n_prompts; i++) empty[i] = "";
        n1 = empty;
    }
    const char *const *n2 = o->negative_prompts_2 ? o->negative_prompts_2 : n1;
    st = sdxl_half(e, o, n1, n2, -2, NULL, NULL, out, 0, err);
    if (st) loco_err_prefix(err, "negative prompts");
    free(empty);
    return st;
}

static loco_status encode_sd(const loco_text_encoders *e, const loco_encode_prompt_opts *o, loco_prompt_embeds *out,
                             loco_err *err) {
    const loco_clip_text_config *c = loco_clip_text_get_config(e->text_encoder);
    loco_backend *be = loco_clip_text_backend(e->text_encoder);
    const int64_t L = loco_clip_tokenizer_max_length(e->tokenizer);
    const int64_t rows = (int64_t)out->batch * (out->cfg ? 2 : 1);
    const int64_t eshape[3] = {rows, L, c->hidden_size};
    loco_status st;
    if ((st = loco_tensor_alloc_act(be, 3, eshape, &out->embeds, err))) return st;
    enc_run r = {0};
    /* clip_skip k: hidden_states[-(k+1)], then the final LayerNorm */
    const int idx = o->clip_skip ? -(o->clip_skip + 1) : 0;
    if ((st = encode_texts(e->text_encoder, e->tokenizer, o->prompts, o->n_prompts, idx, 1, 0, o->hooks, &r, err)))
        return st;
    st = place_rows(be, &out->embeds, out->cfg ? out->batch : 0, &r.states, o->num_images_per_prompt, err);
    enc_run_free(&r);
    if (st || !out->cfg) return st;

    const char **empty = NULL;
    const char *const *neg = o->negative_prompts;
    if (!neg) {
        empty = malloc((size_t)o->n_prompts * sizeof *empty);
        if (!empty) return loco_err_set(err, LOCO_ENOMEM, "encode_prompt: out of memory");
        for (int i = 0; i < o->n_prompts; i++) empty[i] = "";
        neg = empty;
    }
    /* diffusers encodes negatives with last_hidden_state whatever clip_skip says */
    st = encode_texts(e->text_encoder, e->tokenizer, neg, o->n_prompts, 0, 1, 0, NULL, &r, err);
    free(empty);
    if (st) return loco_err_prefix(err, "negative prompts");
    st = place_rows(be, &out->embeds, 0, &r.states, o->num_images_per_prompt, err);
    enc_run_free(&r);
    return st;
}

loco_status loco_encode_prompt(const loco_text_encoders *e, const loco_encode_prompt_opts *o,
                               loco_prompt_embeds *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (!e || !o) return loco_err_set(err, LOCO_EINVAL, "encode_prompt: encoders and options are required");
    loco_status st = check_encoders(e, err);
    if (st) return st;
    if (o->n_prompts <= 0 || !o->prompts)
        return loco_err_set(err, LOCO_EINVAL, "encode_prompt: at least one prompt is required");
    if (o->num_images_per_prompt < 1)
        return loco_err_set(err, LOCO_EINVAL, "encode_prompt: num_images_per_prompt must be >= 1, got %d",
                            o->num_images_per_prompt);
    if (o->clip_skip < 0)
        return loco_err_set(err, LOCO_EINVAL, "encode_prompt: clip_skip must be >= 0, got %d", o->clip_skip);
    if (o->n_prompts > (1 << 20) / o->num_images_per_prompt)
        return loco_err_set(err, LOCO_EINVAL, "encode_prompt: %d prompts x %d images is too large a batch",
                            o->n_prompts, o->num_images_per_prompt);
    /* clip_skip k reads hidden_states[-(k+1)] (SD) or [-(k+2)] (SD-XL) of a tuple of
     * num_hidden_layers + 1 states; say so here rather than as an index error deep inside */
    const int extra = e->family == LOCO_FAMILY_SDXL ? 2 : 1;
    const loco_clip_text *encs[2] = {e->text_encoder, e->family == LOCO_FAMILY_SDXL ? e->text_encoder_2 : NULL};
    for (int i = 0; i < 2; i++) {
        if (!encs[i]) continue;
        int nl = loco_clip_text_get_config(encs[i])->num_hidden_layers;
        if (o->clip_skip + extra > nl + 1)
            return loco_err_set(err, LOCO_EINVAL,
                                "encode_prompt (%s): clip_skip %d is too large for %s with %d layers (at most %d)",
                                loco_model_family_name(e->family), o->clip_skip, i ? "text_encoder_2" : "text_encoder",
                                nl, nl + 1 - extra);
    }
    out->batch = o->n_prompts * o->num_images_per_prompt;
    out->cfg = o->do_classifier_free_guidance ? 1 : 0;
    st = e->family == LOCO_FAMILY_SDXL ? encode_sdxl(e, o, out, err) : encode_sd(e, o, out, err);
    if (st) {
        loco_prompt_embeds_free(out);
        return loco_err_prefix(err, "encode_prompt (%s)", loco_model_family_name(e->family));
    }
    return LOCO_OK;
}
