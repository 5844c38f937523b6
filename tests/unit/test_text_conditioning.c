/* test_text_conditioning.c: encode_prompt of SD 1.x, SD 2.x and SD-XL against diffusers'
 * pipelines on the tiny fixtures, from the prompt strings: CFG order, negatives, clip_skip,
 * num_images_per_prompt, SD-XL's zero negatives and second prompts, and the errors. */
#include "loco_test.h"

#include <jansson.h>

#include "model_files.h"
#include "safetensors.h"
#include "text_conditioning.h"

#define TOL 1e-5
#define MAXP 8

typedef struct stack {
    loco_backend *be;
    loco_model_files *mf;
    loco_clip_tokenizer *tok, *tok2;
    loco_clip_text *te, *te2;
    loco_text_encoders enc;
    loco_safetensors *ref;
    int n;
    const char *prompts[MAXP], *prompts_2[MAXP], *negatives[MAXP], *negatives_2[MAXP];
    json_t *meta; /* owns the strings above */
} stack;

static void stack_close(stack *s) {
    loco_clip_text_free(s->te);
    loco_clip_text_free(s->te2);
    loco_clip_tokenizer_free(s->tok);
    loco_clip_tokenizer_free(s->tok2);
    loco_model_files_close(s->mf);
    loco_safetensors_close(s->ref);
    json_decref(s->meta);
    loco_backend_destroy(s->be);
    memset(s, 0, sizeof *s);
}

/* A string list of the reference's metadata ("prompts": JSON list). */
static int meta_list(stack *s, const char *key, const char **dst) {
    const char *txt = loco_safetensors_metadata(s->ref, key);
    if (!txt) return 0;
    json_t *j = json_loads(txt, 0, NULL);
    if (!json_is_array(j) || json_array_size(j) > MAXP) {
        json_decref(j);
        return -1;
    }
    json_array_append_new(s->meta, j); /* keep it alive with the stack */
    for (size_t i = 0; i < json_array_size(j); i++) dst[i] = json_string_value(json_array_get(j, i));
    return (int)json_array_size(j);
}

/* 1 ok, 0 fixture missing, -1 failure (message printed) */
static int stack_open(stack *s, const char *model) {
    memset(s, 0, sizeof *s);
    char dir[512], ref[512];
    snprintf(dir, sizeof dir, "%s/models/%s", loco_fixtures_dir(), model);
    snprintf(ref, sizeof ref, "%s/refs/%s/text.safetensors", loco_fixtures_dir(), model);
    FILE *f = fopen(ref, "rb");
    if (!f) return 0;
    fclose(f);
    loco_err e = {0};
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    bo.device = LOCO_DEVICE_CPU;
    s->meta = json_array();
    if (loco_backend_create(&bo, &s->be, &e) || loco_model_files_open(dir, NULL, &s->mf, &e) ||
        loco_safetensors_open(ref, &s->ref, &e))
        goto fail;
    loco_text_encoders_init(&s->enc);
    s->enc.family = loco_model_files_family(s->mf);
    s->enc.force_zeros_for_empty_prompt = loco_model_files_flag(s->mf, "force_zeros_for_empty_prompt", 1);
    const char *td = loco_model_files_tokenizer_dir(s->mf, "tokenizer");
    if (!td || loco_clip_tokenizer_load(td, &s->tok, &e) || loco_clip_text_load(s->be, s->mf, "text_encoder", &s->te, &e))
        goto fail;
    s->enc.tokenizer = s->tok;
    s->enc.text_encoder = s->te;
    if (loco_model_files_has(s->mf, "text_encoder_2")) {
        const char *td2 = loco_model_files_tokenizer_dir(s->mf, "tokenizer_2");
        if (!td2 || loco_clip_tokenizer_load(td2, &s->tok2, &e) ||
            loco_clip_text_load(s->be, s->mf, "text_encoder_2", &s->te2, &e))
            goto fail;
        s->enc.tokenizer_2 = s->tok2;
        s->enc.text_encoder_2 = s->te2;
    }
    s->n = meta_list(s, "prompts", s->prompts);
    if (s->n <= 0 || meta_list(s, "negative_prompts", s->negatives) != s->n) {
        snprintf(e.msg, sizeof e.msg, "%s: metadata 'prompts'/'negative_prompts' missing", ref);
        goto fail;
    }
    meta_list(s, "prompts_2", s->prompts_2);
    meta_list(s, "negative_prompts_2", s->negatives_2);
    return 1;
fail:
    fprintf(stderr, "%s: %s\n", model, e.msg);
    stack_close(s);
    return -1;
}

#define OPEN_OR_SKIP(s, model)                                                                   \
    do {                                                                                         \
        int r_ = stack_open(s, model);                                                           \
        if (r_ == 0) SKIP("%s/refs/%s/text.safetensors not generated yet", loco_fixtures_dir(), model); \
        CHECK(r_ == 1);                                                                          \
    } while (0)

/* A tensor on the host as [rows, L, F] (L = 1 for [rows, F]). */
typedef struct host {
    float *d;
    int64_t rows, L, F;
} host;

static int host_of_tensor(const loco_tensor *t, host *h) {
    memset(h, 0, sizeof *h);
    if (t->ndim != 2 && t->ndim != 3) return 0;
    h->rows = t->shape[0];
    h->L = t->ndim == 3 ? t->shape[1] : 1;
    h->F = t->shape[t->ndim - 1];
    h->d = malloc((size_t)loco_tensor_numel(t) * sizeof(float));
    return h->d && loco_tensor_download_f32(t, h->d, NULL) == LOCO_OK;
}

static int host_of_ref(stack *s, const char *name, host *h) {
    memset(h, 0, sizeof *h);
    const loco_stored_tensor *r = loco_safetensors_find(s->ref, name);
    if (!r || (r->ndim != 2 && r->ndim != 3)) {
        fprintf(stderr, "reference tensor %s missing\n", name);
        return 0;
    }
    h->rows = r->shape[0];
    h->L = r->ndim == 3 ? r->shape[1] : 1;
    h->F = r->shape[r->ndim - 1];
    size_t n = (size_t)loco_stored_numel(r);
    h->d = malloc(n * sizeof(float));
    return h->d && loco_convert_to_f32(h->d, r->data, r->dtype, n) == LOCO_OK;
}

/* Accumulates ‖ours − ref‖² and ‖ref‖² over row/feature pieces. */
typedef struct acc {
    double num, den;
    int bad; /* a piece out of range */
} acc;

/* ours[orow, :, of0 : of0+nf] against ref[rrow, :, rf0 : rf0+nf]; nf < 0 = all of ref's features */
static void acc_piece(acc *a, const host *ours, int64_t orow, int64_t of0, const host *ref, int64_t rrow, int64_t rf0,
                      int64_t nf) {
    if (nf < 0) nf = ref->F;
    if (orow >= ours->rows || rrow >= ref->rows || ours->L != ref->L || of0 + nf > ours->F || rf0 + nf > ref->F) {
        a->bad = 1;
        return;
    }
    for (int64_t l = 0; l < ref->L; l++)
        for (int64_t f = 0; f < nf; f++) {
            double x = ours->d[(orow * ours->L + l) * ours->F + of0 + f];
            double y = ref->d[(rrow * ref->L + l) * ref->F + rf0 + f];
            if (isnan(x)) a->bad = 1;
            a->num += (x - y) * (x - y);
            a->den += y * y;
        }
}

/* Relative error; exact zeros against a zero reference (SD-XL's negatives) give 0. */
static double acc_err(const acc *a) {
    if (a->bad) return -1;
    return a->den > 0 ? sqrt(a->num / a->den) : sqrt(a->num);
}

static int report(const char *what, const acc *a) {
    double e = acc_err(a);
    printf(" %s=%.2e", what, e);
    if (e >= 0 && e <= TOL) return 0;
    fprintf(stderr, "\n%s: rel err %g%s\n", what, e, a->bad ? " (shape/range mismatch or NaN)" : "");
    return 1;
}

/* Each half row r = p*k + i holds prompt p (k = num_images_per_prompt). `map` gives, for prompt
 * p, the reference row (the identity unless a test permutes prompts). Compares features
 * [of0, of0 + nf) of ours against [rf0, rf0 + nf) of the reference. */
static void acc_half(acc *a, const host *ours, int64_t half0, int k, const host *ref, const int *map, int n,
                     int64_t of0, int64_t rf0, int64_t nf) {
    for (int p = 0; p < n; p++)
        for (int i = 0; i < k; i++) acc_piece(a, ours, half0 + (int64_t)p * k + i, of0, ref, map ? map[p] : p, rf0, nf);
}

static int run(stack *s, const loco_encode_prompt_opts *o, loco_prompt_embeds *pe, host *emb, host *pool) {
    loco_err e;
    memset(emb, 0, sizeof *emb);
    memset(pool, 0, sizeof *pool);
    if (loco_encode_prompt(&s->enc, o, pe, &e) != LOCO_OK) {
        fprintf(stderr, "encode_prompt: %s\n", e.msg);
        return 0;
    }
    if (!host_of_tensor(&pe->embeds, emb)) return 0;
    return pe->pooled.ndim == 0 || host_of_tensor(&pe->pooled, pool);
}

static void base_opts(stack *s, loco_encode_prompt_opts *o) {
    loco_encode_prompt_opts_init(o);
    o->n_prompts = s->n;
    o->prompts = s->prompts;
}

/* ---- SD 1.x / SD 2.x ------------------------------------------------------------------------ */

static void sd_parity(const char *model) {
    stack s;
    OPEN_OR_SKIP(&s, model);
    CHECK(s.enc.family == LOCO_FAMILY_SD1 || s.enc.family == LOCO_FAMILY_SD2);
    host cond, uncond, neg, skip;
    CHECK(host_of_ref(&s, "encode.prompt_embeds", &cond) && host_of_ref(&s, "encode.negative_prompt_embeds", &uncond));
    CHECK(host_of_ref(&s, "encode_neg.negative_prompt_embeds", &neg) && host_of_ref(&s, "clip_skip1.prompt_embeds", &skip));
    loco_encode_prompt_opts o;
    loco_prompt_embeds pe;
    host emb, pool;
    int bad = 0;
    const int n = s.n;

    /* default: CFG with "" negatives, rows [uncond | cond] */
    base_opts(&s, &o);
    CHECK(run(&s, &o, &pe, &emb, &pool));
    CHECK(pe.batch == n && pe.cfg == 1 && emb.rows == 2 * n && pe.pooled.ndim == 0);
    acc a = {0}, b = {0};
    acc_half(&a, &emb, n, 1, &cond, NULL, n, 0, 0, -1);
    acc_half(&b, &emb, 0, 1, &uncond, NULL, n, 0, 0, -1);
    printf("  %s default:", model);
    bad |= report("prompt_embeds", &a) | report("negative_prompt_embeds", &b);
    loco_prompt_embeds_free(&pe);
    free(emb.d);

    /* negative prompts */
    base_opts(&s, &o);
    o.negative_prompts = s.negatives;
    CHECK(run(&s, &o, &pe, &emb, &pool));
    acc c = {0}, d = {0};
    acc_half(&c, &emb, n, 1, &cond, NULL, n, 0, 0, -1);
    acc_half(&d, &emb, 0, 1, &neg, NULL, n, 0, 0, -1);
    printf("\n  %s negatives:", model);
    bad |= report("prompt_embeds", &c) | report("negative_prompt_embeds", &d);
    loco_prompt_embeds_free(&pe);
    free(emb.d);

    /* clip_skip 1 and 2 images per prompt: the negatives ignore clip_skip (diffusers does) */
    base_opts(&s, &o);
    o.clip_skip = 1;
    o.num_images_per_prompt = 2;
    CHECK(run(&s, &o, &pe, &emb, &pool));
    CHECK(pe.batch == 2 * n && emb.rows == 4 * n);
    acc f = {0}, g = {0};
    acc_half(&f, &emb, 2 * n, 2, &skip, NULL, n, 0, 0, -1);
    acc_half(&g, &emb, 0, 2, &uncond, NULL, n, 0, 0, -1);
    printf("\n  %s clip_skip=1 x2:", model);
    bad |= report("prompt_embeds", &f) | report("negative_prompt_embeds", &g);
    loco_prompt_embeds_free(&pe);
    free(emb.d);

    /* no guidance: only the conditional rows */
    base_opts(&s, &o);
    o.do_classifier_free_guidance = 0;
    CHECK(run(&s, &o, &pe, &emb, &pool));
    CHECK(pe.cfg == 0 && emb.rows == n);
    acc h = {0};
    acc_half(&h, &emb, 0, 1, &cond, NULL, n, 0, 0, -1);
    printf("\n  %s no cfg:", model);
    bad |= report("prompt_embeds", &h);
    printf("\n");
    loco_prompt_embeds_free(&pe);
    free(emb.d);

    free(cond.d);
    free(uncond.d);
    free(neg.d);
    free(skip.d);
    stack_close(&s);
    CHECK(!bad);
}

TEST(encode_prompt_sd1) { sd_parity("sd1-tiny"); }
TEST(encode_prompt_sd2) { sd_parity("sd2-tiny"); }

/* ---- SD-XL -------------------------------------------------------------------------------------- */

TEST(encode_prompt_sdxl) {
    stack s;
    OPEN_OR_SKIP(&s, "sdxl-tiny");
    CHECK(s.enc.family == LOCO_FAMILY_SDXL && s.enc.force_zeros_for_empty_prompt);
    const int n = s.n;
    const int64_t D1 = loco_clip_text_get_config(s.te)->hidden_size, D2 = loco_clip_text_get_config(s.te2)->hidden_size;
    const int nl1 = loco_clip_text_get_config(s.te)->num_hidden_layers;
    const int nl2 = loco_clip_text_get_config(s.te2)->num_hidden_layers;
    host pe_ref, pp_ref, ne_ref, np_ref, neg_e, neg_p, empty_e, empty_p, h1_skip, h2_skip, h1_pen, h2_pen, emb2;
    char nm[64];
    CHECK(host_of_ref(&s, "encode.prompt_embeds", &pe_ref) && host_of_ref(&s, "encode.pooled_prompt_embeds", &pp_ref));
    CHECK(host_of_ref(&s, "encode.negative_prompt_embeds", &ne_ref) &&
          host_of_ref(&s, "encode.negative_pooled_prompt_embeds", &np_ref));
    CHECK(host_of_ref(&s, "encode_neg.negative_prompt_embeds", &neg_e) &&
          host_of_ref(&s, "encode_neg.negative_pooled_prompt_embeds", &neg_p));
    CHECK(host_of_ref(&s, "encode_negempty.negative_prompt_embeds", &empty_e) &&
          host_of_ref(&s, "encode_negempty.negative_pooled_prompt_embeds", &empty_p));
    snprintf(nm, sizeof nm, "te.hidden_states.%d", nl1 - 2); /* hidden_states[-3]: clip_skip 1 */
    CHECK(host_of_ref(&s, nm, &h1_skip));
    snprintf(nm, sizeof nm, "te2.hidden_states.%d", nl2 - 2);
    CHECK(host_of_ref(&s, nm, &h2_skip));
    snprintf(nm, sizeof nm, "te.hidden_states.%d", nl1 - 1); /* hidden_states[-2] */
    CHECK(host_of_ref(&s, nm, &h1_pen));
    snprintf(nm, sizeof nm, "te2.hidden_states.%d", nl2 - 1);
    CHECK(host_of_ref(&s, nm, &h2_pen));
    CHECK(host_of_ref(&s, "te2.text_embeds", &emb2));
    CHECK(pe_ref.F == D1 + D2);

    loco_encode_prompt_opts o;
    loco_prompt_embeds pe;
    host emb, pool;
    int bad = 0;
    acc a[4];

    /* default: no negative prompt + force_zeros_for_empty_prompt -> zero negatives */
    base_opts(&s, &o);
    CHECK(run(&s, &o, &pe, &emb, &pool));
    CHECK(pe.batch == n && emb.rows == 2 * n && pool.rows == 2 * n && pool.F == emb2.F);
    memset(a, 0, sizeof a);
    acc_half(&a[0], &emb, n, 1, &pe_ref, NULL, n, 0, 0, -1);
    acc_half(&a[1], &pool, n, 1, &pp_ref, NULL, n, 0, 0, -1);
    acc_half(&a[2], &emb, 0, 1, &ne_ref, NULL, n, 0, 0, -1);
    acc_half(&a[3], &pool, 0, 1, &np_ref, NULL, n, 0, 0, -1);
    printf("  sdxl default:");
    bad |= report("prompt_embeds", &a[0]) | report("pooled", &a[1]) | report("negative(zeros)", &a[2]) |
           report("negative_pooled(zeros)", &a[3]);
    for (int64_t i = 0; i < n * emb.L * emb.F; i++) bad |= emb.d[i] != 0.0f; /* zeros, exactly */
    loco_prompt_embeds_free(&pe);
    free(emb.d);
    free(pool.d);

    /* negatives, explicit "" negatives, and force_zeros off (then "" is encoded too) */
    struct { const char *what; const char **neg; int zeros; const host *e, *p; } negs[] = {
        {"negatives", s.negatives, 1, &neg_e, &neg_p},
        {"explicit \"\"", NULL, 1, &empty_e, &empty_p},
        {"force_zeros off", NULL, 0, &empty_e, &empty_p},
    };
    const char *empties[MAXP];
    for (int i = 0; i < n; i++) empties[i] = "";
    negs[1].neg = empties;
    for (size_t c = 0; c < sizeof negs / sizeof negs[0]; c++) {
        base_opts(&s, &o);
        o.negative_prompts = negs[c].neg;
        s.enc.force_zeros_for_empty_prompt = negs[c].zeros;
        CHECK(run(&s, &o, &pe, &emb, &pool));
        memset(a, 0, sizeof a);
        acc_half(&a[0], &emb, n, 1, &pe_ref, NULL, n, 0, 0, -1);
        acc_half(&a[1], &pool, n, 1, &pp_ref, NULL, n, 0, 0, -1);
        acc_half(&a[2], &emb, 0, 1, negs[c].e, NULL, n, 0, 0, -1);
        acc_half(&a[3], &pool, 0, 1, negs[c].p, NULL, n, 0, 0, -1);
        printf("\n  sdxl %s:", negs[c].what);
        bad |= report("prompt_embeds", &a[0]) | report("pooled", &a[1]) | report("negative_prompt_embeds", &a[2]) |
               report("negative_pooled", &a[3]);
        loco_prompt_embeds_free(&pe);
        free(emb.d);
        free(pool.d);
    }
    s.enc.force_zeros_for_empty_prompt = 1;

    /* clip_skip 1 -> hidden_states[-3] of both encoders, 2 images per prompt; pooled unchanged */
    base_opts(&s, &o);
    o.clip_skip = 1;
    o.num_images_per_prompt = 2;
    CHECK(run(&s, &o, &pe, &emb, &pool));
    CHECK(emb.rows == 4 * n);
    memset(a, 0, sizeof a);
    acc_half(&a[0], &emb, 2 * n, 2, &h1_skip, NULL, n, 0, 0, -1);
    acc_half(&a[0], &emb, 2 * n, 2, &h2_skip, NULL, n, D1, 0, -1);
    acc_half(&a[1], &pool, 2 * n, 2, &emb2, NULL, n, 0, 0, -1);
    acc_half(&a[2], &emb, 0, 2, &ne_ref, NULL, n, 0, 0, -1);
    printf("\n  sdxl clip_skip=1 x2:");
    bad |= report("prompt_embeds", &a[0]) | report("pooled", &a[1]) | report("negative(zeros)", &a[2]);
    loco_prompt_embeds_free(&pe);
    free(emb.d);
    free(pool.d);

    /* prompt_2 / negative_prompt_2: the reversed lists, so encoder 2's features and the pooled
     * rows come from the reference rows in reverse */
    const char *rev[MAXP], *rev_neg[MAXP];
    int map_rev[MAXP];
    for (int i = 0; i < n; i++) {
        rev[i] = s.prompts[n - 1 - i];
        rev_neg[i] = s.negatives[n - 1 - i];
        map_rev[i] = n - 1 - i;
    }
    base_opts(&s, &o);
    o.prompts_2 = rev;
    o.negative_prompts = s.negatives;
    o.negative_prompts_2 = rev_neg;
    CHECK(run(&s, &o, &pe, &emb, &pool));
    memset(a, 0, sizeof a);
    acc_half(&a[0], &emb, n, 1, &h1_pen, NULL, n, 0, 0, -1);
    acc_half(&a[0], &emb, n, 1, &h2_pen, map_rev, n, D1, 0, -1);
    acc_half(&a[1], &pool, n, 1, &emb2, map_rev, n, 0, 0, -1);
    acc_half(&a[2], &emb, 0, 1, &neg_e, NULL, n, 0, 0, D1);
    acc_half(&a[2], &emb, 0, 1, &neg_e, map_rev, n, D1, D1, D2);
    acc_half(&a[3], &pool, 0, 1, &neg_p, map_rev, n, 0, 0, -1);
    printf("\n  sdxl prompt_2:");
    bad |= report("prompt_embeds", &a[0]) | report("pooled", &a[1]) | report("negative_prompt_embeds", &a[2]) |
           report("negative_pooled", &a[3]);
    loco_prompt_embeds_free(&pe);
    free(emb.d);
    free(pool.d);

    /* no guidance */
    base_opts(&s, &o);
    o.do_classifier_free_guidance = 0;
    CHECK(run(&s, &o, &pe, &emb, &pool));
    CHECK(pe.cfg == 0 && emb.rows == n && pool.rows == n);
    memset(a, 0, sizeof a);
    acc_half(&a[0], &emb, 0, 1, &pe_ref, NULL, n, 0, 0, -1);
    acc_half(&a[1], &pool, 0, 1, &pp_ref, NULL, n, 0, 0, -1);
    printf("\n  sdxl no cfg:");
    bad |= report("prompt_embeds", &a[0]) | report("pooled", &a[1]);
    printf("\n");
    loco_prompt_embeds_free(&pe);
    free(emb.d);
    free(pool.d);

    host *all[] = {&pe_ref, &pp_ref, &ne_ref, &np_ref, &neg_e, &neg_p, &empty_e, &empty_p,
                   &h1_skip, &h2_skip, &h1_pen, &h2_pen, &emb2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]->d);
    stack_close(&s);
    CHECK(!bad);
}

static loco_status count_fn(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    (*(int *)ctx)++;
    return LOCO_OK;
}

TEST(hooks_run_on_the_conditional_prompts_only) {
    stack s;
    OPEN_OR_SKIP(&s, "sd1-tiny");
    int calls = 0;
    loco_site_hooks h = {.after = count_fn, .ctx = &calls};
    loco_encode_prompt_opts o;
    base_opts(&s, &o);
    o.hooks = &h;
    loco_prompt_embeds pe;
    loco_err e;
    CHECK_MSG(loco_encode_prompt(&s.enc, &o, &pe, &e) == LOCO_OK, "%s", e.msg);
    /* one conditional pass over the whole batch visits every site once; the negative pass none */
    CHECK(calls == loco_clip_text_num_sites(s.te));
    loco_prompt_embeds_free(&pe);
    stack_close(&s);
}

TEST(encode_prompt_errors) {
    stack s;
    OPEN_OR_SKIP(&s, "sdxl-tiny");
    loco_encode_prompt_opts o;
    loco_prompt_embeds pe;
    loco_err e;

    base_opts(&s, &o);
    o.n_prompts = 0;
    CHECK(loco_encode_prompt(&s.enc, &o, &pe, &e) == LOCO_EINVAL);
    base_opts(&s, &o);
    o.num_images_per_prompt = 0;
    CHECK(loco_encode_prompt(&s.enc, &o, &pe, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "num_images_per_prompt"), "%s", e.msg);

    /* clip_skip past the first layer: SD-XL reads hidden_states[-(k+2)] */
    base_opts(&s, &o);
    o.clip_skip = loco_clip_text_get_config(s.te)->num_hidden_layers;
    CHECK(loco_encode_prompt(&s.enc, &o, &pe, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "clip_skip") && strstr(e.msg, "at most"), "%s", e.msg);
    CHECK(pe.embeds.data == NULL && pe.pooled.data == NULL);

    /* a NULL prompt string is named */
    const char *with_null[2] = {"a cat", NULL};
    base_opts(&s, &o);
    o.n_prompts = 2;
    o.prompts = with_null;
    CHECK(loco_encode_prompt(&s.enc, &o, &pe, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "prompt 1"), "%s", e.msg);

    /* SD-XL needs the projection of encoder 2 */
    base_opts(&s, &o);
    loco_text_encoders enc = s.enc;
    enc.text_encoder_2 = s.te; /* CLIP-L has no text_projection */
    CHECK(loco_encode_prompt(&enc, &o, &pe, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "text_projection"), "%s", e.msg);
    enc = s.enc;
    enc.tokenizer_2 = NULL;
    CHECK(loco_encode_prompt(&enc, &o, &pe, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "tokenizer_2"), "%s", e.msg);
    enc = s.enc;
    enc.family = LOCO_FAMILY_UNKNOWN;
    CHECK(loco_encode_prompt(&enc, &o, &pe, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "unknown"), "%s", e.msg);
    /* an SD 1.x setup without its encoder */
    enc = s.enc;
    enc.family = LOCO_FAMILY_SD1;
    enc.text_encoder = NULL;
    CHECK(loco_encode_prompt(&enc, &o, &pe, &e) == LOCO_EINVAL);

    /* the encoder-2-only (refiner) layout works and gives just encoder 2's width */
    enc = s.enc;
    enc.tokenizer = NULL;
    enc.text_encoder = NULL;
    CHECK_MSG(loco_encode_prompt(&enc, &o, &pe, &e) == LOCO_OK, "%s", e.msg);
    CHECK(pe.embeds.shape[2] == loco_clip_text_get_config(s.te2)->hidden_size);
    host emb, pen, pooled, pref;
    char nm[64];
    snprintf(nm, sizeof nm, "te2.hidden_states.%d", loco_clip_text_get_config(s.te2)->num_hidden_layers - 1);
    CHECK(host_of_tensor(&pe.embeds, &emb) && host_of_tensor(&pe.pooled, &pooled));
    CHECK(host_of_ref(&s, nm, &pen) && host_of_ref(&s, "te2.text_embeds", &pref));
    acc a = {0}, b = {0};
    acc_half(&a, &emb, s.n, 1, &pen, NULL, s.n, 0, 0, -1);
    acc_half(&b, &pooled, s.n, 1, &pref, NULL, s.n, 0, 0, -1);
    printf("  sdxl encoder 2 only:");
    int bad = report("prompt_embeds", &a) | report("pooled", &b);
    printf("\n");
    CHECK(!bad);
    free(emb.d);
    free(pen.d);
    free(pooled.d);
    free(pref.d);
    loco_prompt_embeds_free(&pe);
    stack_close(&s);
}
