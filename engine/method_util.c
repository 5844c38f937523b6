/* method_util.c: shared pieces of the research methods (see method_util.h). */
#include "method_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline_impl.h"

void loco_sampler_opts_init(loco_sampler_opts *o) {
    memset(o, 0, sizeof *o);
    o->guidance_scale = NAN;
    o->use_karras_sigmas = -1;
}

loco_status loco_sampler_opts_apply(const loco_pipeline *p, const loco_sampler_opts *o, loco_denoise_params *d,
                                    loco_err *err) {
    const int def = loco_pipeline_default_size(p), m = loco_pipeline_size_multiple(p);
    d->steps = o->steps ? o->steps : 50;
    d->guidance_scale = isnan(o->guidance_scale) ? (p->family == LOCO_FAMILY_SDXL ? 5.0f : 7.5f) : o->guidance_scale;
    d->width = o->width ? o->width : def;
    d->height = o->height ? o->height : def;
    d->has_scheduler = o->has_scheduler;
    d->scheduler = o->scheduler;
    d->use_karras_sigmas = o->use_karras_sigmas;
    if (d->steps < 1 || d->steps > 1000)
        return loco_err_set(err, LOCO_EINVAL, "steps must be between 1 and 1000, got %d", d->steps);
    if (!isfinite(d->guidance_scale) || d->guidance_scale < 0 || d->guidance_scale > 100)
        return loco_err_set(err, LOCO_EINVAL, "guidance_scale must be in [0, 100], got %g", (double)d->guidance_scale);
    if (d->width < m || d->height < m || d->width > 8192 || d->height > 8192 || d->width % m || d->height % m)
        return loco_err_set(err, LOCO_EINVAL, "width and height must be multiples of %d between %d and 8192, got %dx%d",
                            m, m, d->width, d->height);
    loco_scheduler_kind kind;
    return loco_pipeline_scheduler_kind(p, o->has_scheduler, o->scheduler, o->use_karras_sigmas, &kind, err);
}

loco_status loco_sampler_n_calls(const loco_pipeline *p, const loco_denoise_params *d, int *out, loco_err *err) {
    loco_scheduler_config cfg = p->sched_cfg;
    cfg.trained_betas = NULL;
    cfg.trained_betas_len = 0;
    loco_scheduler *s = NULL;
    loco_scheduler_kind kind;
    loco_status st = loco_pipeline_scheduler_kind(p, d->has_scheduler, d->scheduler, d->use_karras_sigmas, &kind, err);
    if (!st) loco_pipeline_run_scheduler_config(d->has_scheduler, kind, d->use_karras_sigmas, &cfg);
    /* the call count does not depend on trained betas */
    if (!st) st = loco_scheduler_create(kind, &cfg, d->steps, p->be, &s, err);
    if (st) return st;
    *out = loco_scheduler_num_calls(s);
    loco_scheduler_destroy(s);
    return LOCO_OK;
}

void loco_text_batch_free(loco_text_batch *t) {
    if (!t) return;
    loco_tensor_free(&t->embeds);
    loco_tensor_free(&t->pooled);
    memset(t, 0, sizeof *t);
}

/* dst rows [at, at + n) = src rows [from, from + n). */
static loco_status copy_rows(loco_backend *be, loco_tensor *dst, int64_t at, const loco_tensor *src, int64_t from,
                             int64_t n, loco_err *err) {
    loco_tensor a, b;
    loco_status st = loco_tensor_slice0(dst, at, n, &a, err);
    if (!st) st = loco_tensor_slice0(src, from, n, &b, err);
    if (!st) st = loco_copy(be, &a, &b, err);
    return st;
}

loco_status loco_text_batch_encode(loco_pipeline *p, const char *const *prompts, int n, const loco_site_hooks *hooks,
                                   const loco_site_hooks *hooks_2, loco_text_batch *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (n < 1 || !prompts) return loco_err_set(err, LOCO_EINVAL, "at least one prompt is required");
    loco_text_encoders enc;
    loco_pipeline_text_encoders(p, &enc);
    loco_encode_prompt_opts o;
    loco_encode_prompt_opts_init(&o);
    o.n_prompts = n;
    o.prompts = prompts;
    o.do_classifier_free_guidance = 0;
    o.hooks = hooks;
    o.hooks_2 = hooks_2;
    loco_prompt_embeds cond = {0}, un = {0};
    loco_status st = loco_encode_prompt(&enc, &o, &cond, err);
    if (st) return st;
    /* the unconditional row exactly as the pipeline builds it for guidance */
    static const char *const empty[1] = {""};
    loco_encode_prompt_opts u;
    loco_encode_prompt_opts_init(&u);
    u.n_prompts = 1;
    u.prompts = empty;
    u.do_classifier_free_guidance = 1;
    if ((st = loco_encode_prompt(&enc, &u, &un, err))) goto done;
    const int64_t es[3] = {n + 1, cond.embeds.shape[1], cond.embeds.shape[2]};
    if ((st = loco_tensor_alloc_act(p->be, 3, es, &out->embeds, err)) ||
        (st = copy_rows(p->be, &out->embeds, 0, &cond.embeds, 0, n, err)) ||
        (st = copy_rows(p->be, &out->embeds, n, &un.embeds, 0, 1, err)))
        goto done;
    if (cond.pooled.ndim == 2) {
        const int64_t ps[2] = {n + 1, cond.pooled.shape[1]};
        if ((st = loco_tensor_alloc_act(p->be, 2, ps, &out->pooled, err)) ||
            (st = copy_rows(p->be, &out->pooled, 0, &cond.pooled, 0, n, err)) ||
            (st = copy_rows(p->be, &out->pooled, n, &un.pooled, 0, 1, err)))
            goto done;
    }
    out->n_rows = n + 1;
    out->uncond_row = n;
done:
    loco_prompt_embeds_free(&cond);
    loco_prompt_embeds_free(&un);
    if (st) loco_text_batch_free(out);
    return st;
}

static void format_ids(const int32_t *ids, int n, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < n && k + 16 < cap; i++) k += (size_t)snprintf(buf + k, cap - k, "%s%d", i ? " " : "", ids[i]);
    if (n > 0 && k + 16 >= cap) snprintf(buf + k, cap - k, " ...");
}

loco_status loco_subject_positions(const loco_pipeline *p, const char *prompt, const char *subject, int **positions,
                                   int *n, int *eos, loco_err *err) {
    *positions = NULL;
    *n = 0;
    const loco_clip_tokenizer *tok = p->tokenizer ? p->tokenizer : p->tokenizer_2;
    if (!tok) return loco_err_set(err, LOCO_EINVAL, "the model has no tokenizer");
    if (!prompt || !*prompt) return loco_err_set(err, LOCO_EINVAL, "the prompt is empty");
    if (!subject || !*subject) return loco_err_set(err, LOCO_EINVAL, "the subject is empty");
    int32_t *pi = NULL, *si = NULL;
    int np = 0, ns = 0;
    loco_status st = loco_clip_tokenize_raw(tok, prompt, &pi, &np, err);
    if (!st) st = loco_clip_tokenize_raw(tok, subject, &si, &ns, err);
    if (st) goto done;
    const int maxc = loco_clip_tokenizer_max_length(tok) - 2; /* content tokens the pipeline keeps */
    if (ns == 0) {
        st = loco_err_set(err, LOCO_EINVAL, "the subject '%s' has no tokens", subject);
        goto done;
    }
    int at = -1;
    for (int i = 0; i + ns <= np && at < 0; i++)
        if (memcmp(pi + i, si, (size_t)ns * sizeof *si) == 0) at = i;
    if (at < 0) {
        char a[256], b[256];
        format_ids(si, ns, a, sizeof a);
        format_ids(pi, np, b, sizeof b);
        st = loco_err_set(err, LOCO_EINVAL,
                          "the subject tokens are not in the prompt: subject '%s' is tokens [%s], prompt '%s' is [%s]",
                          subject, a, prompt, b);
        goto done;
    }
    if (at + ns > maxc) {
        st = loco_err_set(err, LOCO_EINVAL, "the subject '%s' sits past token %d, where the pipeline truncates the prompt",
                          subject, maxc);
        goto done;
    }
    if (!(*positions = malloc((size_t)ns * sizeof **positions))) {
        st = loco_err_set(err, LOCO_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < ns; i++) (*positions)[i] = 1 + at + i; /* BOS at 0 */
    *n = ns;
    if (eos) *eos = 1 + (np < maxc ? np : maxc);
done:
    free(pi);
    free(si);
    return st;
}

loco_status loco_image_grid(const loco_image *images, int n, int cols, int pad, loco_image *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    if (n < 1 || cols < 1 || pad < 0) return loco_err_set(err, LOCO_EINVAL, "image grid: nothing to place");
    const int w = images[0].width, h = images[0].height;
    for (int i = 0; i < n; i++)
        if (images[i].width != w || images[i].height != h || images[i].channels != 3)
            return loco_err_set(err, LOCO_EINVAL, "image grid: image %d is not %dx%d RGB", i, w, h);
    const int c = n < cols ? n : cols, r = (n + cols - 1) / cols;
    loco_status st = loco_image_alloc(c * w + (c - 1) * pad, r * h + (r - 1) * pad, 3, out, err);
    if (st) return st;
    memset(out->data, 255, (size_t)out->width * out->height * 3);
    for (int i = 0; i < n; i++) {
        const int x0 = (i % cols) * (w + pad), y0 = (i / cols) * (h + pad);
        for (int y = 0; y < h; y++)
            memcpy(out->data + ((size_t)(y0 + y) * out->width + x0) * 3, images[i].data + (size_t)y * w * 3,
                   (size_t)w * 3);
    }
    return LOCO_OK;
}

loco_status loco_write_png_in(const char *dir, const char *name, const loco_image *img, loco_err *err) {
    if (!dir) return LOCO_OK;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return loco_err_set(err, LOCO_EINVAL, "output path too long");
    return loco_png_write(path, img, err);
}

json_t *loco_json_real(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* ---- progress and cancel across batches -------------------------------------------------------- */

/* Images per scoring call: the scorer's own chunk, so each call is one vision-tower forward. */
#define EMBED_CHUNK 16

void loco_method_progress_init(loco_method_progress *m, loco_progress_fn fn, void *ctx, int n_batches, int n_calls) {
    memset(m, 0, sizeof *m);
    m->fn = fn;
    m->ctx = ctx;
    m->n_batches = n_batches;
    m->n_calls = n_calls;
    m->total = n_batches * n_calls;
}

int loco_method_progress_poll(loco_method_progress *m) { return m->fn ? m->fn(m->ctx, m->done, m->total) : 0; }

/* loco_denoise's step callback: (step, calls) of the batch -> steps of the whole plan. Clamped to
 * the batch's share so that a schedule that disagreed with n_calls could never move total. */
static int on_step(void *ctx, int step, int calls) {
    loco_method_progress *m = ctx;
    const int s = step < 0 ? 0 : step > m->n_calls ? m->n_calls : step;
    const int done = m->batch * m->n_calls + s;
    if (done > m->done) m->done = done;
    return loco_method_progress_poll(m);
}

/* Between VAE decode chunks: nothing advances, but a cancel gets through. */
static int on_decode(void *ctx, int decoded, int n) { return loco_method_progress_poll(ctx); }

void loco_method_progress_batch(loco_method_progress *m, int b, loco_denoise_params *d) {
    m->batch = b;
    d->progress = on_step;
    d->decode_progress = on_decode;
    d->progress_ctx = m;
}

loco_status loco_method_progress_cancelled(const loco_method_progress *m, const char *what, loco_err *err) {
    return loco_err_set(err, LOCO_ECANCELLED, "%s: cancelled after %d of %d denoising steps (%d batch%s of %d steps)",
                        what, m->done, m->total, m->n_batches, m->n_batches == 1 ? "" : "es", m->n_calls);
}

loco_status loco_method_image_embeds(loco_method_progress *m, const char *what, const loco_clip_scorer *sc,
                                     const loco_image *images, int n, float *out, loco_err *err) {
    const int dim = loco_clip_scorer_embed_dim(sc);
    for (int i0 = 0; i0 < n; i0 += EMBED_CHUNK) {
        if (i0 > 0 && loco_method_progress_poll(m)) return loco_method_progress_cancelled(m, what, err);
        const int k = n - i0 < EMBED_CHUNK ? n - i0 : EMBED_CHUNK;
        loco_status st = loco_clip_scorer_image_embeds(sc, images + i0, k, out + (size_t)i0 * dim, err);
        if (st) return st;
    }
    return LOCO_OK;
}
