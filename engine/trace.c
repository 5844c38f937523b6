/* trace.c: causal tracing as batches of denoising runs that differ by an intervention plan
 * (see trace.h). Reports (heatmap, JSON) live in trace_report.c. */
#include "trace.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline_impl.h"

static const char *const scope_names[LOCO_TRACE_SCOPE_COUNT] = {"all", "unet", "text"};
static const char *const module_suffix[LOCO_TRACE_MOD_COUNT] = {"self_attn", "mlp"};

const char *loco_trace_scope_name(loco_trace_scope s) {
    return (unsigned)s < LOCO_TRACE_SCOPE_COUNT ? scope_names[s] : "unknown";
}

int loco_trace_scope_from_name(const char *name, loco_trace_scope *out) {
    for (int i = 0; name && i < LOCO_TRACE_SCOPE_COUNT; i++)
        if (strcmp(name, scope_names[i]) == 0) {
            *out = (loco_trace_scope)i;
            return 0;
        }
    return -1;
}

void loco_trace_params_init(loco_trace_params *t) {
    memset(t, 0, sizeof *t);
    t->noise_scale = 3.0f;
    t->causal_threshold = NAN;
    t->scope = LOCO_TRACE_ALL;
    loco_sampler_opts_init(&t->sampler);
}

static void entry_free(loco_trace_entry *e) {
    loco_image_free(&e->image);
    free(e->latents);
}

void loco_trace_result_free(loco_trace_result *r) {
    if (!r) return;
    for (int i = 0; r->unet && i < r->n_unet; i++) entry_free(&r->unet[i]);
    for (int i = 0; r->text && i < r->n_layers * LOCO_TRACE_MOD_COUNT * r->n_positions; i++) entry_free(&r->text[i]);
    free(r->unet);
    free(r->text);
    free(r->positions);
    free(r->subject_positions);
    free(r->clean_latents);
    free(r->corrupted_latents);
    loco_image_free(&r->clean_image);
    loco_image_free(&r->corrupted_image);
    memset(r, 0, sizeof *r);
}

const loco_trace_entry *loco_trace_text_entry(const loco_trace_result *r, int layer, loco_trace_module m, int pos_index) {
    if (layer < 0 || layer >= r->n_layers || (unsigned)m >= LOCO_TRACE_MOD_COUNT || pos_index < 0 ||
        pos_index >= r->n_positions)
        return NULL;
    return &r->text[((size_t)layer * LOCO_TRACE_MOD_COUNT + m) * r->n_positions + pos_index];
}

static int is_component(loco_site_kind k) {
    return k == LOCO_SITE_RESNET || k == LOCO_SITE_SELF_ATTN || k == LOCO_SITE_CROSS_ATTN || k == LOCO_SITE_FF;
}

loco_status loco_trace_validate(const loco_pipeline *p, const loco_trace_params *t, loco_err *err) {
    if (!t->prompt || !*t->prompt) return loco_err_set(err, LOCO_EINVAL, "trace: the prompt is empty");
    if (t->attribute && !*t->attribute) return loco_err_set(err, LOCO_EINVAL, "trace: the attribute caption is empty");
    if ((unsigned)t->scope >= LOCO_TRACE_SCOPE_COUNT) return loco_err_set(err, LOCO_EINVAL, "trace: unknown scope");
    if (!isfinite(t->noise_scale) || t->noise_scale < 0)
        return loco_err_set(err, LOCO_EINVAL, "trace: noise_scale must be >= 0, got %g", (double)t->noise_scale);
    if (!isnan(t->causal_threshold) && !(t->causal_threshold >= 0 && t->causal_threshold <= 100))
        return loco_err_set(err, LOCO_EINVAL, "trace: causal_threshold is a CLIP score, 0..100; got %g",
                            t->causal_threshold);
    if (t->max_batch < 0 || (t->max_batch > 0 && t->max_batch < 3))
        return loco_err_set(err, LOCO_EINVAL, "trace: max_batch must be 0 (default) or at least 3, got %d", t->max_batch);
    loco_denoise_params d;
    loco_denoise_params_init(&d);
    loco_status st = loco_sampler_opts_apply(p, &t->sampler, &d, err);
    if (st) return loco_err_prefix(err, "trace");
    int *pos = NULL, n = 0, eos = 0;
    if ((st = loco_subject_positions(p, t->prompt, t->subject, &pos, &n, &eos, err))) return loco_err_prefix(err, "trace");
    free(pos);
    if (t->n_components < 0 || (t->n_components > 0 && !t->components))
        return loco_err_set(err, LOCO_EINVAL, "trace: n_components without components");
    for (int i = 0; i < t->n_components; i++) {
        const loco_site *s = t->components[i] ? loco_unet_find_site(p->unet, t->components[i]) : NULL;
        if (!s)
            return loco_err_set(err, LOCO_ENOTFOUND, "trace: unknown UNet site '%s'; `loco inspect MODEL --all-sites` lists them",
                                t->components[i] ? t->components[i] : "(null)");
        if (!is_component(s->kind))
            return loco_err_set(err, LOCO_EINVAL,
                                "trace: '%s' is a %s site; components are resnet, self_attn, cross_attn or ff outputs",
                                s->name, loco_site_kind_name(s->kind));
    }
    const int maxpos = loco_clip_text_get_config(p->text_encoder ? p->text_encoder : p->text_encoder_2)->max_position_embeddings;
    if (t->n_positions < 0 || (t->n_positions > 0 && !t->positions))
        return loco_err_set(err, LOCO_EINVAL, "trace: n_positions without positions");
    for (int i = 0; i < t->n_positions; i++)
        if (t->positions[i] < 0 || t->positions[i] >= maxpos)
            return loco_err_set(err, LOCO_EINVAL, "trace: token position %d is outside 0..%d", t->positions[i], maxpos - 1);
    if (t->scope != LOCO_TRACE_UNET && !p->text_encoder)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "trace: text-encoder tracing needs text_encoder (CLIP-L)");
    return LOCO_OK;
}

/* ---- the variants --------------------------------------------------------------------------------- */

typedef enum { V_CLEAN, V_CORRUPT, V_UNET, V_TEXT } vkind;

typedef struct variant {
    vkind kind;
    loco_trace_entry *entry; /* where the result goes (NULL for clean/corrupted) */
    int site;                /* V_UNET: site id */
    int layer, module, position;
} variant;

typedef struct run_ctx {
    loco_pipeline *p;
    const loco_clip_scorer *sc;
    const loco_trace_params *t;
    loco_trace_result *r;
    loco_denoise_params base;
    float *attr_embed; /* the attribute caption, normalised */
    int dim;
    loco_method_progress prog; /* denoising steps of the whole batch plan */
    double std2;       /* token-embedding std of SD-XL's text_encoder_2 */
    /* batches without text-encoder variants all use the rows [clean, corrupted, uncond]: encoded
     * and projected to K/V once, then reused */
    loco_text_batch base_tb;
    loco_unet_text_kv base_kv;
    int have_base;
} run_ctx;

/* Denoise batch b of the plan, variants v[0..n): text rows, the plan, the run, the scores. */
static loco_status run_batch(run_ctx *c, int b, const variant *v, int n, loco_err *err) {
    loco_pipeline *p = c->p;
    const loco_trace_params *t = c->t;
    loco_trace_result *r = c->r;
    int clean_sample = -1;
    for (int i = 0; i < n; i++)
        if (v[i].kind == V_CLEAN) clean_sample = i;
    /* text rows: 0 clean, 1 corrupted, then one per text variant */
    int n_rows = 2;
    int *row = malloc((size_t)n * sizeof *row);
    uint64_t *seeds = malloc((size_t)n * sizeof *seeds);
    int *gsize = malloc((size_t)n * sizeof *gsize);
    const char **prompts = malloc((size_t)(n + 2) * sizeof *prompts);
    loco_intervention *plan = calloc((size_t)(2 * n + 2), sizeof *plan);
    char (*names)[96] = calloc((size_t)n, sizeof *names);
    loco_iv_program *prog = NULL;
    loco_text_batch tb = {0};
    loco_generate_result g = {0};
    float *ie = NULL;
    loco_status st = LOCO_OK;
    if (!row || !seeds || !gsize || !prompts || !plan || !names) {
        st = loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
        goto done;
    }
    int np = 0;
    for (int i = 0; i < n; i++) {
        seeds[i] = t->seed;
        gsize[i] = 1; /* every trajectory from the same noise, as if generated alone */
        switch (v[i].kind) {
        case V_CLEAN: row[i] = 0; break;
        case V_CORRUPT: row[i] = 1; break;
        case V_UNET: {
            row[i] = 1;
            loco_intervention *iv = &plan[np++];
            loco_intervention_init(iv);
            iv->action = LOCO_IV_RESTORE;
            iv->site = loco_unet_sites(p->unet, NULL)[v[i].site].name;
            iv->target = i;
            iv->source = clean_sample;
            break;
        }
        case V_TEXT: {
            row[i] = n_rows++;
            loco_intervention *iv = &plan[np++];
            loco_intervention_init(iv);
            iv->action = LOCO_IV_RESTORE;
            snprintf(names[i], sizeof names[i], "text_model.encoder.layers.%d.%s", v[i].layer,
                     module_suffix[v[i].module]);
            iv->site = names[i];
            iv->target = row[i];
            iv->source = 0;
            iv->positions = &v[i].position;
            iv->n_positions = 1;
            break;
        }
        }
    }
    for (int k = 0; k < n_rows; k++) prompts[k] = t->prompt;
    /* every row but the clean one is corrupted; corruption (embeddings) precedes any restore */
    loco_intervention *corrupt = calloc((size_t)n_rows, sizeof *corrupt);
    if (!corrupt) {
        st = loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
        goto done;
    }
    int nc = 0;
    for (int k = 1; k < n_rows; k++) {
        loco_intervention *iv = &corrupt[nc++];
        loco_intervention_init(iv);
        iv->action = LOCO_IV_CORRUPT;
        iv->target = k;
        iv->positions = r->subject_positions;
        iv->n_positions = r->n_subject;
        iv->scale = t->noise_scale;
        iv->seed = t->noise_seed;
    }
    memmove(plan + nc, plan, (size_t)np * sizeof *plan);
    memcpy(plan, corrupt, (size_t)nc * sizeof *plan);
    free(corrupt);
    np += nc;

    loco_denoise_params d = c->base;
    const loco_iv_layout lay = {.n_samples = n, .n_text_rows = n_rows, .cfg = d.guidance_scale > 1.0f,
                                .n_calls = r->n_calls};
    const loco_iv_models models = {.unet = p->unet, .text = p->text_encoder, .text_2 = p->text_encoder_2,
                                   .text_std = p->text_encoder ? r->embed_std : 0, .text_2_std = c->std2};
    if ((st = loco_iv_compile(plan, np, &lay, &models, &prog, err))) goto done;
    const loco_text_batch *text = &tb;
    if (n_rows == 2 && c->have_base) {
        text = &c->base_tb;
        d.text_kv = &c->base_kv;
    } else {
        loco_site_hooks h1 = loco_iv_text_hooks(prog), h2 = loco_iv_text_2_hooks(prog);
        if ((st = loco_text_batch_encode(p, prompts, n_rows, &h1, &h2, &tb, err))) goto done;
        if (n_rows == 2) {
            if ((st = loco_unet_compute_text_kv(p->unet, &tb.embeds, NULL, &c->base_kv, err))) goto done;
            c->base_tb = tb;
            memset(&tb, 0, sizeof tb);
            c->have_base = 1;
            text = &c->base_tb;
            d.text_kv = &c->base_kv;
        }
    }
    int *un = malloc((size_t)n * sizeof *un); /* every sample's unconditional row is the batch's one */
    if (!un) {
        st = loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) un[i] = text->uncond_row;
    d.n_samples = n;
    d.text = &text->embeds;
    d.pooled = text->pooled.ndim ? &text->pooled : NULL;
    d.cond_row = row;
    d.uncond_row = un;
    d.n_groups = n;
    d.group_size = gsize;
    d.group_seed = seeds;
    loco_method_progress_batch(&c->prog, b, &d);
    if (!(st = loco_iv_apply(prog, &d, err))) st = loco_denoise(p, &d, &g, err);
    free(un);
    if (st == LOCO_ECANCELLED) st = loco_method_progress_cancelled(&c->prog, "trace", err);
    if (st) goto done;
    /* scores against the attribute caption */
    if (!(ie = malloc((size_t)n * c->dim * sizeof *ie))) {
        st = loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
        goto done;
    }
    if ((st = loco_method_image_embeds(&c->prog, "trace", c->sc, g.images, n, ie, err))) goto done;
    const int64_t numel = g.latent_shape[1] * g.latent_shape[2] * g.latent_shape[3];
    r->latent_numel = numel;
    for (int i = 0; i < n; i++) {
        const loco_clip_score s = loco_clip_score_from_cosine(loco_clip_cosine(ie + (size_t)i * c->dim, c->attr_embed, c->dim));
        float *lat = NULL;
        if (t->keep_latents) {
            if (!(lat = malloc((size_t)numel * sizeof *lat))) {
                st = loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
                goto done;
            }
            memcpy(lat, g.latents + (size_t)i * numel, (size_t)numel * sizeof *lat);
        }
        if (v[i].kind == V_CLEAN || v[i].kind == V_CORRUPT) {
            /* the first batch's clean and corrupted runs are the reported ones */
            loco_clip_score *dst = v[i].kind == V_CLEAN ? &r->clean : &r->corrupted;
            loco_image *img = v[i].kind == V_CLEAN ? &r->clean_image : &r->corrupted_image;
            float **l = v[i].kind == V_CLEAN ? &r->clean_latents : &r->corrupted_latents;
            if (!img->data) {
                *dst = s;
                *img = g.images[i];
                memset(&g.images[i], 0, sizeof g.images[i]);
                *l = lat;
                lat = NULL;
            }
            free(lat);
            continue;
        }
        loco_trace_entry *e = v[i].entry;
        e->score = s;
        e->latents = lat;
        if (t->keep_images) {
            e->image = g.images[i];
            memset(&g.images[i], 0, sizeof g.images[i]);
        }
    }
    /* the batch's last cancel point: its scores are in, the next batch has not started */
    if (loco_method_progress_poll(&c->prog)) st = loco_method_progress_cancelled(&c->prog, "trace", err);
done:
    loco_generate_result_free(&g);
    loco_text_batch_free(&tb);
    loco_iv_program_free(prog);
    free(ie);
    free(row);
    free(seeds);
    free(gsize);
    free(prompts);
    free(plan);
    free(names);
    return st;
}

/* Fill the result's entry tables and the variant list (clean, corrupted, then the restored). */
static loco_status plan_variants(loco_pipeline *p, const loco_trace_params *t, loco_trace_result *r, variant **out,
                                 int *n_out, loco_err *err) {
    int ns;
    const loco_site *sites = loco_unet_sites(p->unet, &ns);
    if (t->scope != LOCO_TRACE_TEXT) {
        r->n_unet = 0;
        if (t->n_components > 0) {
            r->n_unet = t->n_components;
        } else {
            for (int i = 0; i < ns; i++) r->n_unet += is_component(sites[i].kind);
        }
    }
    if (t->scope != LOCO_TRACE_UNET) {
        r->n_layers = loco_clip_text_get_config(p->text_encoder)->num_hidden_layers;
        r->n_positions = t->n_positions > 0 ? t->n_positions : r->eos_position + 1;
        if (!(r->positions = malloc((size_t)r->n_positions * sizeof *r->positions)))
            return loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
        for (int k = 0; k < r->n_positions; k++) r->positions[k] = t->n_positions > 0 ? t->positions[k] : k;
    }
    const int n_text = r->n_layers * LOCO_TRACE_MOD_COUNT * r->n_positions;
    const int total = 2 + r->n_unet + n_text;
    variant *v = calloc((size_t)total, sizeof *v);
    r->unet = calloc((size_t)(r->n_unet ? r->n_unet : 1), sizeof *r->unet);
    r->text = calloc((size_t)(n_text ? n_text : 1), sizeof *r->text);
    if (!v || !r->unet || !r->text) {
        free(v);
        return loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
    }
    int k = 0;
    v[k++].kind = V_CLEAN;
    v[k++].kind = V_CORRUPT;
    for (int i = 0, u = 0; u < r->n_unet; i++) {
        const loco_site *s = t->n_components > 0 ? loco_unet_find_site(p->unet, t->components[u]) : &sites[i];
        if (!is_component(s->kind)) continue;
        loco_trace_entry *e = &r->unet[u++];
        snprintf(e->site, sizeof e->site, "%s", s->name);
        e->kind = s->kind;
        e->layer = e->position = -1;
        v[k++] = (variant){.kind = V_UNET, .entry = e, .site = s->id};
    }
    for (int l = 0; l < r->n_layers; l++)
        for (int m = 0; m < LOCO_TRACE_MOD_COUNT; m++)
            for (int q = 0; q < r->n_positions; q++) {
                loco_trace_entry *e = &r->text[((size_t)l * LOCO_TRACE_MOD_COUNT + m) * r->n_positions + q];
                snprintf(e->site, sizeof e->site, "text_model.encoder.layers.%d.%s", l, module_suffix[m]);
                e->kind = m == LOCO_TRACE_MOD_SELF_ATTN ? LOCO_SITE_TEXT_SELF_ATTN : LOCO_SITE_TEXT_MLP;
                e->layer = l;
                e->position = r->positions[q];
                v[k++] = (variant){.kind = V_TEXT, .entry = e, .layer = l, .module = m, .position = r->positions[q]};
            }
    *out = v;
    *n_out = total;
    return LOCO_OK;
}

/* One denoise batch of the plan: variants v[first, first + n), after the clean and corrupted runs
 * (the first batch) or after a clean run of its own (with_clean). */
typedef struct batch_span {
    int first, n;
    int with_clean;
} batch_span;

/* The whole batch plan, before anything runs, so that progress has its exact total at once: the
 * first batch holds clean + corrupted; a later batch that starts with UNet variants carries its
 * own clean trajectory to restore from (the variants are UNet first, then text; a text restore
 * copies from the clean text row, which every batch has). Returns the number of batches, at
 * most nv - 1 (out has room for that many). */
static int plan_batches(const variant *v, int nv, int maxb, batch_span *out) {
    int nb = 0;
    for (int next = 2, first = 1; first || next < nv; first = 0) {
        batch_span *s = &out[nb++];
        s->with_clean = !first && v[next].kind == V_UNET;
        const int room = maxb - (first ? 2 : s->with_clean);
        s->first = next;
        s->n = nv - next < room ? nv - next : room;
        next += s->n;
    }
    return nb;
}

loco_status loco_trace_run(loco_pipeline *p, const loco_clip_scorer *sc, const loco_trace_params *t,
                           loco_trace_result *r, loco_err *err) {
    memset(r, 0, sizeof *r);
    if (!p || !sc || !t) return loco_err_set(err, LOCO_EINVAL, "trace: pipeline, scorer and params are required");
    loco_status st = loco_trace_validate(p, t, err);
    if (st) return st;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run_ctx c = {.p = p, .sc = sc, .t = t, .r = r};
    variant *v = NULL, *batch = NULL;
    batch_span *plan = NULL;
    int nv = 0;
    loco_denoise_params_init(&c.base);
    if ((st = loco_sampler_opts_apply(p, &t->sampler, &c.base, err)) ||
        (st = loco_sampler_n_calls(p, &c.base, &r->n_calls, err)))
        goto done;
    c.base.decode_batch = 4;
    if ((st = loco_subject_positions(p, t->prompt, t->subject, &r->subject_positions, &r->n_subject, &r->eos_position,
                                     err)))
        goto done;
    if ((st = loco_token_embedding_std(p->text_encoder ? p->text_encoder : p->text_encoder_2, &r->embed_std, err)))
        goto done;
    if (p->text_encoder && p->text_encoder_2 && (st = loco_token_embedding_std(p->text_encoder_2, &c.std2, err)))
        goto done;
    if ((st = plan_variants(p, t, r, &v, &nv, err))) goto done;
    const int maxb = t->max_batch > 0 ? t->max_batch : 16;
    plan = malloc((size_t)nv * sizeof *plan);
    batch = malloc((size_t)maxb * sizeof *batch);
    if (!plan || !batch) {
        st = loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
        goto done;
    }
    const int nb = plan_batches(v, nv, maxb, plan);
    loco_method_progress_init(&c.prog, t->progress, t->progress_ctx, nb, r->n_calls);
    /* the total at once: a job leaves "starting" before the first (long) batch */
    if (loco_method_progress_poll(&c.prog)) {
        st = loco_method_progress_cancelled(&c.prog, "trace", err);
        goto done;
    }
    c.dim = loco_clip_scorer_embed_dim(sc);
    if (!(c.attr_embed = malloc((size_t)c.dim * sizeof *c.attr_embed))) {
        st = loco_err_set(err, LOCO_ENOMEM, "trace: out of memory");
        goto done;
    }
    const char *attr = t->attribute ? t->attribute : t->prompt;
    if ((st = loco_clip_scorer_text_embeds(sc, &attr, 1, c.attr_embed, err))) goto done;
    for (int b = 0; b < nb && !st; b++) {
        int n = 0;
        if (b == 0) {
            batch[n++] = v[0];
            batch[n++] = v[1];
        } else if (plan[b].with_clean) {
            batch[n++] = v[0];
        }
        memcpy(batch + n, v + plan[b].first, (size_t)plan[b].n * sizeof *batch);
        st = run_batch(&c, b, batch, n + plan[b].n, err);
    }
    if (!st) {
        for (int i = 0; i < r->n_unet; i++) r->unet[i].indirect_effect = r->unet[i].score.cosine - r->corrupted.cosine;
        for (int i = 0; i < r->n_layers * LOCO_TRACE_MOD_COUNT * r->n_positions; i++)
            r->text[i].indirect_effect = r->text[i].score.cosine - r->corrupted.cosine;
    }
done:
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    free(v);
    free(plan);
    free(batch);
    free(c.attr_embed);
    loco_text_batch_free(&c.base_tb);
    if (c.have_base) loco_unet_text_kv_free(&c.base_kv);
    if (st) loco_trace_result_free(r);
    return st;
}
