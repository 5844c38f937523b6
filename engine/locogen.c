/* locogen.c: LocoGen window sweeps as batches of denoising runs whose windows are `context`
 * interventions (see locogen.h). The JSON table and the grid live in locogen_report.c. */
#include "locogen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline_impl.h"

static const char *const kind_names[LOCO_ATTR_KIND_COUNT] = {"style", "object", "fact"};

const char *loco_attribute_kind_name(loco_attribute_kind k) {
    return (unsigned)k < LOCO_ATTR_KIND_COUNT ? kind_names[k] : "unknown";
}

int loco_attribute_kind_from_name(const char *name, loco_attribute_kind *out) {
    for (int i = 0; name && i < LOCO_ATTR_KIND_COUNT; i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (loco_attribute_kind)i;
            return 0;
        }
    return -1;
}

void loco_locogen_params_init(loco_locogen_params *g) {
    memset(g, 0, sizeof *g);
    g->window = 2;
    g->kind = LOCO_ATTR_STYLE;
    g->keep_images = 1;
    loco_sampler_opts_init(&g->sampler);
}

void loco_locogen_result_free(loco_locogen_result *r) {
    if (!r) return;
    const int n = r->n_prompts * r->n_seeds * r->per_set;
    for (int i = 0; r->images && i < n; i++) loco_image_free(&r->images[i]);
    free(r->images);
    free(r->windows);
    free(r->cos_original);
    free(r->cos_altered);
    free(r->latents);
    memset(r, 0, sizeof *r);
}

int loco_locogen_index(const loco_locogen_result *r, int prompt, int seed, int k) {
    return (prompt * r->n_seeds + seed) * r->per_set + k;
}

loco_status loco_locogen_validate(const loco_pipeline *p, const loco_locogen_params *g, loco_err *err) {
    if (g->n_prompts < 1 || !g->prompts)
        return loco_err_set(err, LOCO_EINVAL, "locogen: the prompt set is empty (give original prompts and their altered "
                                              "versions)");
    if (!g->altered) return loco_err_set(err, LOCO_EINVAL, "locogen: the altered prompt set is empty");
    for (int i = 0; i < g->n_prompts; i++) {
        if (!g->prompts[i] || !*g->prompts[i]) return loco_err_set(err, LOCO_EINVAL, "locogen: prompt %d is empty", i);
        if (!g->altered[i] || !*g->altered[i])
            return loco_err_set(err, LOCO_EINVAL, "locogen: altered prompt %d is empty", i);
    }
    if (g->n_seeds < 1 || !g->seeds) return loco_err_set(err, LOCO_EINVAL, "locogen: the seed set is empty");
    if ((unsigned)g->kind >= LOCO_ATTR_KIND_COUNT) return loco_err_set(err, LOCO_EINVAL, "locogen: unknown attribute kind");
    const int nc = loco_unet_n_cross(p->unet);
    if (nc < 1) return loco_err_set(err, LOCO_EUNSUPPORTED, "locogen: the UNet has no cross-attention layers");
    if (g->window < 1 || g->window > nc)
        return loco_err_set(err, LOCO_EINVAL,
                            "locogen: a window of %d layers does not fit the %d cross-attention layers (window 1..%d)",
                            g->window, nc, nc);
    if (g->n_starts < 0 || (g->n_starts > 0 && !g->starts))
        return loco_err_set(err, LOCO_EINVAL, "locogen: n_starts without starts");
    for (int i = 0; i < g->n_starts; i++) {
        if (g->starts[i] < 0)
            return loco_err_set(err, LOCO_EINVAL, "locogen: window start %d is negative", g->starts[i]);
        if (g->starts[i] + g->window > nc)
            return loco_err_set(err, LOCO_EINVAL,
                                "locogen: the window starting at layer %d would cover layers %d..%d, past the last "
                                "cross-attention layer %d",
                                g->starts[i], g->starts[i], g->starts[i] + g->window - 1, nc - 1);
        /* a repeated window would be scored twice, and its two copies ranked by float noise */
        for (int j = 0; j < i; j++)
            if (g->starts[j] == g->starts[i])
                return loco_err_set(err, LOCO_EINVAL, "locogen: window start %d is given twice", g->starts[i]);
    }
    for (int i = 0; i < g->n_seeds; i++)
        for (int j = 0; j < i; j++)
            if (g->seeds[j] == g->seeds[i])
                return loco_err_set(err, LOCO_EINVAL, "locogen: seed %llu is given twice",
                                    (unsigned long long)g->seeds[i]);
    if (g->max_batch < 0) return loco_err_set(err, LOCO_EINVAL, "locogen: max_batch must be >= 0");
    loco_denoise_params d;
    loco_denoise_params_init(&d);
    loco_status st = loco_sampler_opts_apply(p, &g->sampler, &d, err);
    return st ? loco_err_prefix(err, "locogen") : LOCO_OK;
}

/* Everything a sweep shares across its batches. */
typedef struct sweep {
    loco_pipeline *p;
    const loco_locogen_params *g;
    loco_locogen_result *r;
    loco_denoise_params base;
    loco_text_batch tb;
    loco_unet_text_kv kv;
    int have_kv;
    float *text_embeds; /* CLIP text embeddings of prompts then altered prompts */
    int dim;
    loco_method_progress prog; /* denoising steps of the whole batch plan */
} sweep;

/* Batch b: samples [first, first + n) in (prompt, seed, k) order. */
static loco_status run_batch(sweep *w, const loco_clip_scorer *sc, int b, int first, int n, loco_err *err) {
    loco_pipeline *p = w->p;
    const loco_locogen_params *g = w->g;
    loco_locogen_result *r = w->r;
    const int P = g->n_prompts, m = r->window;
    int *cond = malloc((size_t)n * sizeof *cond), *un = malloc((size_t)n * sizeof *un);
    int *gsize = malloc((size_t)n * sizeof *gsize);
    uint64_t *seeds = malloc((size_t)n * sizeof *seeds);
    loco_intervention *plan = calloc((size_t)n * (size_t)m + 1, sizeof *plan);
    float *ie = malloc((size_t)n * w->dim * sizeof *ie);
    loco_iv_program *prog = NULL;
    loco_generate_result out = {0};
    loco_status st = LOCO_OK;
    if (!cond || !un || !gsize || !seeds || !plan || !ie) {
        st = loco_err_set(err, LOCO_ENOMEM, "locogen: out of memory");
        goto done;
    }
    int np = 0;
    for (int s = 0; s < n; s++) {
        const int idx = first + s, k = idx % r->per_set, set = idx / r->per_set;
        const int prompt = set / g->n_seeds, seed = set % g->n_seeds;
        cond[s] = prompt;
        un[s] = w->tb.uncond_row;
        gsize[s] = 1; /* its own generator: the image equals the one generated alone */
        seeds[s] = g->seeds[seed];
        if (k == 0) continue;
        /* the window: T'_i's K/V in layers [start, end), conditional branch, every step */
        const loco_locogen_window *win = &r->windows[k - 1];
        for (int layer = win->start; layer < win->end; layer++) {
            loco_intervention *iv = &plan[np++];
            loco_intervention_init(iv);
            iv->action = LOCO_IV_CONTEXT;
            iv->target = s;
            iv->cross_index = layer;
            iv->source = P + prompt;
        }
    }
    loco_denoise_params d = w->base;
    const loco_iv_layout lay = {.n_samples = n, .n_text_rows = 2 * P, .cfg = d.guidance_scale > 1.0f,
                                .n_calls = r->n_calls};
    const loco_iv_models models = {.unet = p->unet, .text = p->text_encoder, .text_2 = p->text_encoder_2};
    if ((st = loco_iv_compile(plan, np, &lay, &models, &prog, err))) goto done;
    d.n_samples = n;
    d.text = &w->tb.embeds;
    d.pooled = w->tb.pooled.ndim ? &w->tb.pooled : NULL;
    d.text_kv = &w->kv;
    d.cond_row = cond;
    d.uncond_row = un;
    d.n_groups = n;
    d.group_size = gsize;
    d.group_seed = seeds;
    loco_method_progress_batch(&w->prog, b, &d);
    if ((st = loco_iv_apply(prog, &d, err)) || (st = loco_denoise(p, &d, &out, err))) {
        if (st == LOCO_ECANCELLED) st = loco_method_progress_cancelled(&w->prog, "locogen", err);
        goto done;
    }
    if ((st = loco_method_image_embeds(&w->prog, "locogen", sc, out.images, n, ie, err))) goto done;
    r->latent_numel = out.latent_shape[1] * out.latent_shape[2] * out.latent_shape[3];
    for (int s = 0; s < n; s++) {
        const int idx = first + s, prompt = cond[s];
        r->cos_original[idx] = loco_clip_cosine(ie + (size_t)s * w->dim, w->text_embeds + (size_t)prompt * w->dim, w->dim);
        r->cos_altered[idx] =
            loco_clip_cosine(ie + (size_t)s * w->dim, w->text_embeds + (size_t)(P + prompt) * w->dim, w->dim);
        memcpy(r->latents + (size_t)idx * r->latent_numel, out.latents + (size_t)s * r->latent_numel,
               (size_t)r->latent_numel * sizeof *r->latents);
        if (g->keep_images) {
            r->images[idx] = out.images[s];
            memset(&out.images[s], 0, sizeof out.images[s]);
        }
    }
    /* the batch's last cancel point: its scores are in, the next batch has not started */
    if (loco_method_progress_poll(&w->prog)) st = loco_method_progress_cancelled(&w->prog, "locogen", err);
done:
    loco_generate_result_free(&out);
    loco_iv_program_free(prog);
    free(cond);
    free(un);
    free(gsize);
    free(seeds);
    free(plan);
    free(ie);
    return st;
}

/* Per-window means over prompts and seeds, the objective and the ranks (Algorithm 1). */
static void rank_windows(const loco_locogen_params *g, loco_locogen_result *r) {
    const int sets = r->n_prompts * r->n_seeds;
    for (int k = 0; k <= r->n_windows; k++) {
        loco_locogen_window *win = k == 0 ? &r->baseline : &r->windows[k - 1];
        double co = 0, ca = 0, so = 0, sa = 0;
        for (int set = 0; set < sets; set++) {
            const int idx = set * r->per_set + k;
            co += r->cos_original[idx];
            ca += r->cos_altered[idx];
            so += loco_clip_score_from_cosine(r->cos_original[idx]).score;
            sa += loco_clip_score_from_cosine(r->cos_altered[idx]).score;
        }
        win->mean_cosine_original = co / sets;
        win->mean_cosine_altered = ca / sets;
        win->mean_score_original = so / sets;
        win->mean_score_altered = sa / sets;
        win->objective = g->kind == LOCO_ATTR_FACT ? win->mean_cosine_altered : win->mean_cosine_original;
    }
    /* rank: 0 = lowest objective (style, object) or highest (fact); ties keep the earlier window */
    for (int a = 0; a < r->n_windows; a++) {
        int rank = 0;
        for (int b = 0; b < r->n_windows; b++) {
            const double x = r->windows[a].objective, y = r->windows[b].objective;
            const int better = g->kind == LOCO_ATTR_FACT ? y > x : y < x;
            if (better || (y == x && b < a)) rank++;
        }
        r->windows[a].rank = rank;
        if (rank == 0) r->best = a;
    }
}

loco_status loco_locogen_run(loco_pipeline *p, const loco_clip_scorer *sc, const loco_locogen_params *g,
                             loco_locogen_result *r, loco_err *err) {
    memset(r, 0, sizeof *r);
    if (!p || !sc || !g) return loco_err_set(err, LOCO_EINVAL, "locogen: pipeline, scorer and params are required");
    loco_status st = loco_locogen_validate(p, g, err);
    if (st) return st;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const int P = g->n_prompts;
    sweep w = {.p = p, .g = g, .r = r};
    const char **texts = NULL;
    r->n_cross = loco_unet_n_cross(p->unet);
    r->window = g->window;
    r->n_prompts = P;
    r->n_seeds = g->n_seeds;
    r->n_windows = g->n_starts > 0 ? g->n_starts : r->n_cross - g->window + 1;
    r->per_set = 1 + r->n_windows;
    const int total = P * g->n_seeds * r->per_set;
    r->windows = calloc((size_t)r->n_windows, sizeof *r->windows);
    r->cos_original = calloc((size_t)total, sizeof *r->cos_original);
    r->cos_altered = calloc((size_t)total, sizeof *r->cos_altered);
    r->images = g->keep_images ? calloc((size_t)total, sizeof *r->images) : NULL;
    texts = malloc((size_t)(2 * P) * sizeof *texts);
    if (!r->windows || !r->cos_original || !r->cos_altered || (g->keep_images && !r->images) || !texts) {
        st = loco_err_set(err, LOCO_ENOMEM, "locogen: out of memory");
        goto done;
    }
    for (int k = 0; k < r->n_windows; k++) {
        r->windows[k].start = g->n_starts > 0 ? g->starts[k] : k;
        r->windows[k].end = r->windows[k].start + g->window;
    }
    r->baseline.start = r->baseline.end = -1;
    loco_denoise_params_init(&w.base);
    if ((st = loco_sampler_opts_apply(p, &g->sampler, &w.base, err)) ||
        (st = loco_sampler_n_calls(p, &w.base, &r->n_calls, err)))
        goto done;
    w.base.decode_batch = 4;
    /* the batch plan is fixed (max_batch images each): progress gets its exact total before the
     * text is encoded, and a job leaves "starting" at once */
    const int maxb = g->max_batch > 0 ? g->max_batch : r->per_set;
    loco_method_progress_init(&w.prog, g->progress, g->progress_ctx, (total + maxb - 1) / maxb, r->n_calls);
    if (loco_method_progress_poll(&w.prog)) {
        st = loco_method_progress_cancelled(&w.prog, "locogen", err);
        goto done;
    }
    /* text rows: T_0..T_{P-1}, T'_0..T'_{P-1}, then the unconditional row; their K/V once per job */
    for (int i = 0; i < P; i++) {
        texts[i] = g->prompts[i];
        texts[P + i] = g->altered[i];
    }
    if ((st = loco_text_batch_encode(p, texts, 2 * P, NULL, NULL, &w.tb, err))) goto done;
    if ((st = loco_unet_compute_text_kv(p->unet, &w.tb.embeds, NULL, &w.kv, err))) goto done;
    w.have_kv = 1;
    w.dim = loco_clip_scorer_embed_dim(sc);
    if (!(w.text_embeds = malloc((size_t)(2 * P) * w.dim * sizeof *w.text_embeds))) {
        st = loco_err_set(err, LOCO_ENOMEM, "locogen: out of memory");
        goto done;
    }
    if ((st = loco_clip_scorer_text_embeds(sc, texts, 2 * P, w.text_embeds, err))) goto done;
    /* latents need the shape: one sample's numel from the resolved size */
    const loco_unet_config *uc = loco_unet_get_config(p->unet);
    r->latent_numel = (int64_t)uc->in_channels * (w.base.height / p->vae_scale) * (w.base.width / p->vae_scale);
    if (!(r->latents = malloc((size_t)total * (size_t)r->latent_numel * sizeof *r->latents))) {
        st = loco_err_set(err, LOCO_ENOMEM, "locogen: out of memory");
        goto done;
    }
    for (int b = 0, first = 0; first < total && !st; b++, first += maxb)
        st = run_batch(&w, sc, b, first, total - first < maxb ? total - first : maxb, err);
    if (!st) rank_windows(g, r);
done:
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (w.have_kv) loco_unet_text_kv_free(&w.kv);
    loco_text_batch_free(&w.tb);
    free(w.text_embeds);
    free(texts);
    if (st) loco_locogen_result_free(r);
    return st;
}
