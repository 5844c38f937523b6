/* test_clip_text.c: the CLIP text transformer against transformers on the tiny fixtures
 * (every hidden state, last_hidden_state, pooled, text_embeds), its intervention sites, weight
 * replacement and variants, and its errors. */
#include "loco_test.h"

#include <stdint.h>

#include "clip_text.h"
#include "model_files.h"
#include "safetensors.h"
#include "weights.h"

#define TOL 1e-5

/* ---- helpers ------------------------------------------------------------------------------ */

static loco_backend *cpu(void) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CPU;
    loco_backend *be = NULL;
    loco_err e;
    if (loco_backend_create(&o, &be, &e)) {
        fprintf(stderr, "backend: %s\n", e.msg);
        return NULL;
    }
    return be;
}

/* One encoder of a fixture model and its reference file. */
typedef struct fx {
    char model_dir[512];
    char ref_path[512];
    const char *prefix; /* tensor-name prefix of this encoder in the reference file */
} fx;

static void fx_make(fx *f, const char *model, const char *component) {
    snprintf(f->model_dir, sizeof f->model_dir, "%s/models/%s/%s", loco_fixtures_dir(), model, component);
    snprintf(f->ref_path, sizeof f->ref_path, "%s/refs/%s/text.safetensors", loco_fixtures_dir(), model);
    /* tests/fixtures/MANIFEST.md: te.* = text_encoder, te2.* = text_encoder_2 */
    f->prefix = strcmp(component, "text_encoder_2") == 0 ? "te2" : "te";
}

static const loco_stored_tensor *ref_get(loco_safetensors *r, const char *prefix, const char *name) {
    char full[256];
    snprintf(full, sizeof full, "%s.%s", prefix, name);
    return loco_safetensors_find(r, full);
}

/* ids from the reference (I32 or I64) as int32 */
static int32_t *ref_ids(const loco_stored_tensor *t, int *batch, int *len) {
    if (!t || t->ndim != 2) return NULL;
    *batch = (int)t->shape[0];
    *len = (int)t->shape[1];
    int64_t n = t->shape[0] * t->shape[1];
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int64_t i = 0; i < n; i++) {
        if (t->dtype == LOCO_I64) {
            int64_t v;
            memcpy(&v, (const char *)t->data + i * 8, 8);
            ids[i] = (int32_t)v;
        } else {
            memcpy(&ids[i], (const char *)t->data + i * 4, 4);
        }
    }
    return ids;
}

static float *ref_f32(const loco_stored_tensor *t) {
    if (!t) return NULL;
    int64_t n = loco_stored_numel(t);
    float *out = malloc((size_t)n * sizeof *out);
    if (loco_convert_to_f32(out, t->data, t->dtype, (size_t)n) != LOCO_OK) {
        free(out);
        return NULL;
    }
    return out;
}

static float *download(const loco_tensor *t) {
    float *out = malloc((size_t)loco_tensor_numel(t) * sizeof *out);
    if (loco_tensor_download_f32(t, out, NULL) != LOCO_OK) {
        free(out);
        return NULL;
    }
    return out;
}

/* rel L2 of a backend tensor against a reference tensor, -1 when shapes differ */
static double rel_err(const loco_tensor *got, const loco_stored_tensor *want) {
    if (!want || loco_stored_numel(want) != loco_tensor_numel(got)) return -1;
    float *a = download(got), *b = ref_f32(want);
    double r = a && b ? loco_rel_l2(a, b, (size_t)loco_tensor_numel(got)) : -1;
    free(a);
    free(b);
    return r;
}

static int fixture_present(const fx *f) {
    FILE *a = fopen(f->ref_path, "rb");
    if (a) fclose(a);
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", f->model_dir);
    FILE *b = fopen(cfg, "rb");
    if (b) fclose(b);
    return a && b;
}

/* ---- parity with transformers --------------------------------------------------------------- */

/* single_file: load through engine/model_files.h from models/<model>.safetensors (LDM / sgm
 * keys mapped to diffusers names, configs from the folder), else the component folder. */
static void parity(const char *model, const char *component, int single_file) {
    fx f;
    fx_make(&f, model, component);
    if (!fixture_present(&f)) SKIP("fixture %s or %s/config.json not generated yet", f.ref_path, f.model_dir);
    loco_backend *be = cpu();
    CHECK(be);
    loco_err e;
    loco_clip_text *m = NULL;
    if (single_file) {
        char path[512], cfg_dir[512];
        snprintf(path, sizeof path, "%s/models/%s.safetensors", loco_fixtures_dir(), model);
        snprintf(cfg_dir, sizeof cfg_dir, "%s/models/%s", loco_fixtures_dir(), model);
        loco_model_files_opts mo;
        loco_model_files_opts_init(&mo);
        mo.config_dir = cfg_dir;
        loco_model_files *mf = NULL;
        CHECK_MSG(loco_model_files_open(path, &mo, &mf, &e) == LOCO_OK, "%s", e.msg);
        CHECK(loco_model_files_is_single_file(mf));
        loco_status st = loco_clip_text_load(be, mf, component, &m, &e);
        loco_model_files_close(mf);
        CHECK_MSG(st == LOCO_OK, "%s", e.msg);
    } else {
        CHECK_MSG(loco_clip_text_load_dir(be, f.model_dir, NULL, &m, &e) == LOCO_OK, "%s", e.msg);
    }
    /* a CLIPTextModel ignores a stray projection (sd2's single file has one) */
    CHECK(loco_clip_text_has_projection(m) == (strcmp(component, "text_encoder_2") == 0));
    loco_safetensors *ref = NULL;
    CHECK_MSG(loco_safetensors_open(f.ref_path, &ref, &e) == LOCO_OK, "%s", e.msg);
    const loco_clip_text_config *c = loco_clip_text_get_config(m);

    int B = 0, L = 0;
    int32_t *ids = ref_ids(ref_get(ref, f.prefix, "input_ids"), &B, &L);
    CHECK_MSG(ids, "%s: no %s.input_ids", f.ref_path, f.prefix);
    const int nh = c->num_hidden_layers + 1;
    loco_tensor *hs = calloc((size_t)nh, sizeof *hs);
    loco_clip_hidden_request *req = calloc((size_t)nh, sizeof *req);
    const int64_t bld[3] = {B, L, c->hidden_size}, bd[2] = {B, c->hidden_size}, bp[2] = {B, c->projection_dim};
    for (int k = 0; k < nh; k++) {
        CHECK(loco_tensor_alloc_act(be, 3, bld, &hs[k], NULL) == LOCO_OK);
        req[k].index = k;
        req[k].out = &hs[k];
    }
    loco_tensor lhs, pooled, emb = {0};
    CHECK(loco_tensor_alloc_act(be, 3, bld, &lhs, NULL) == LOCO_OK);
    CHECK(loco_tensor_alloc_act(be, 2, bd, &pooled, NULL) == LOCO_OK);
    loco_clip_text_outputs o;
    loco_clip_text_outputs_init(&o);
    o.hidden = req;
    o.n_hidden = nh;
    o.last_hidden_state = &lhs;
    o.pooled = &pooled;
    if (loco_clip_text_has_projection(m)) {
        CHECK(loco_tensor_alloc_act(be, 2, bp, &emb, NULL) == LOCO_OK);
        o.text_embeds = &emb;
    }
    CHECK_MSG(loco_clip_text_forward(m, ids, B, L, &o, NULL, &e) == LOCO_OK, "%s", e.msg);

    printf("  %s/%s%s rel L2:", model, component, single_file ? " (single file)" : "");
    for (int k = 0; k < nh; k++) {
        char name[48];
        snprintf(name, sizeof name, "hidden_states.%d", k);
        double r = rel_err(&hs[k], ref_get(ref, f.prefix, name));
        printf(" h%d=%.2e", k, r);
        CHECK_MSG(r >= 0 && r <= TOL, "%s %s rel err %g", model, name, r);
    }
    double r = rel_err(&lhs, ref_get(ref, f.prefix, "last_hidden_state"));
    printf(" last=%.2e", r);
    CHECK_MSG(r >= 0 && r <= TOL, "%s last_hidden_state rel err %g", model, r);
    /* CLIPTextModel references record pooler_output; WithProjection ones only text_embeds,
     * which checks the pooled row through the projection */
    const loco_stored_tensor *pref = ref_get(ref, f.prefix, "pooler_output");
    CHECK_MSG(pref || o.text_embeds, "%s: neither %s.pooler_output nor text_embeds", f.ref_path, f.prefix);
    if (pref) {
        r = rel_err(&pooled, pref);
        printf(" pooled=%.2e", r);
        CHECK_MSG(r >= 0 && r <= TOL, "%s pooled rel err %g", model, r);
    }
    if (o.text_embeds) {
        r = rel_err(&emb, ref_get(ref, f.prefix, "text_embeds"));
        printf(" text_embeds=%.2e", r);
        CHECK_MSG(r >= 0 && r <= TOL, "%s text_embeds rel err %g", model, r);
    }
    printf("\n");

    /* asking for one state only (the SD-XL request) stops early and gives the same values */
    loco_tensor pen;
    CHECK(loco_tensor_alloc_act(be, 3, bld, &pen, NULL) == LOCO_OK);
    loco_clip_hidden_request one = {.index = -2, .final_ln = 0, .out = &pen};
    loco_clip_text_outputs o2;
    loco_clip_text_outputs_init(&o2);
    o2.hidden = &one;
    o2.n_hidden = 1;
    CHECK(loco_clip_text_forward(m, ids, B, L, &o2, NULL, &e) == LOCO_OK);
    char name[48];
    snprintf(name, sizeof name, "hidden_states.%d", nh - 2);
    r = rel_err(&pen, ref_get(ref, f.prefix, name));
    CHECK_MSG(r >= 0 && r <= TOL, "hidden_states[-2] alone: rel err %g", r);

    for (int k = 0; k < nh; k++) loco_tensor_free(&hs[k]);
    free(hs);
    free(req);
    free(ids);
    loco_tensor_free(&pen);
    loco_tensor_free(&lhs);
    loco_tensor_free(&pooled);
    loco_tensor_free(&emb);
    loco_safetensors_close(ref);
    loco_clip_text_free(m);
    loco_backend_destroy(be);
}

TEST(parity_sd1_text_encoder) { parity("sd1-tiny", "text_encoder", 0); }
TEST(parity_sd2_text_encoder) { parity("sd2-tiny", "text_encoder", 0); }
TEST(parity_sdxl_text_encoder) { parity("sdxl-tiny", "text_encoder", 0); }
TEST(parity_sdxl_text_encoder_2) { parity("sdxl-tiny", "text_encoder_2", 0); }
TEST(parity_sd1_single_file) { parity("sd1-tiny", "text_encoder", 1); }
TEST(parity_sd2_single_file) { parity("sd2-tiny", "text_encoder", 1); }
TEST(parity_sdxl_single_file_text_encoder) { parity("sdxl-tiny", "text_encoder", 1); }
TEST(parity_sdxl_single_file_text_encoder_2) { parity("sdxl-tiny", "text_encoder_2", 1); }

/* ---- config ----------------------------------------------------------------------------------- */

TEST(config_parse_and_errors) {
    loco_clip_text_config c;
    loco_err e;
    const char *ok = "{\"architectures\":[\"CLIPTextModelWithProjection\"],\"vocab_size\":10,\"hidden_size\":8,"
                     "\"intermediate_size\":12,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
                     "\"max_position_embeddings\":6,\"hidden_act\":\"gelu\",\"layer_norm_eps\":1e-6,"
                     "\"eos_token_id\":2,\"projection_dim\":4}";
    CHECK_MSG(loco_clip_text_config_parse(ok, strlen(ok), "x/config.json", &c, &e) == LOCO_OK, "%s", e.msg);
    CHECK(c.vocab_size == 10 && c.hidden_size == 8 && c.intermediate_size == 12 && c.num_hidden_layers == 2);
    CHECK(c.num_attention_heads == 2 && c.max_position_embeddings == 6 && c.projection_dim == 4);
    CHECK(c.hidden_act == LOCO_ACT_GELU && c.eos_token_id == 2 && c.with_projection == 1);
    CHECK_CLOSE(c.layer_norm_eps, 1e-6, 1e-9);

    /* defaults of transformers' CLIPTextConfig for what may be omitted */
    const char *minimal = "{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":12,\"num_hidden_layers\":2,"
                          "\"num_attention_heads\":2,\"max_position_embeddings\":6}";
    CHECK(loco_clip_text_config_parse(minimal, strlen(minimal), NULL, &c, &e) == LOCO_OK);
    CHECK(c.hidden_act == LOCO_ACT_QUICK_GELU && c.eos_token_id == 49407 && c.with_projection == -1);
    CHECK_CLOSE(c.layer_norm_eps, 1e-5, 1e-9);

    /* a full CLIPConfig: the text tower comes from text_config */
    const char *full = "{\"projection_dim\":5,\"text_config\":{\"vocab_size\":10,\"hidden_size\":8,"
                       "\"intermediate_size\":12,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
                       "\"max_position_embeddings\":6}}";
    CHECK(loco_clip_text_config_parse(full, strlen(full), NULL, &c, &e) == LOCO_OK);
    CHECK(c.hidden_size == 8 && c.projection_dim == 5);

    const char *missing = "{\"vocab_size\":10,\"hidden_size\":8}";
    CHECK(loco_clip_text_config_parse(missing, strlen(missing), "te/config.json", &c, &e) == LOCO_EFORMAT);
    CHECK_MSG(strstr(e.msg, "te/config.json") && strstr(e.msg, "intermediate_size"), "%s", e.msg);
    const char *badact = "{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":12,\"num_hidden_layers\":2,"
                         "\"num_attention_heads\":2,\"max_position_embeddings\":6,\"hidden_act\":\"swish9\"}";
    CHECK(loco_clip_text_config_parse(badact, strlen(badact), "te/config.json", &c, &e) == LOCO_EUNSUPPORTED);
    CHECK_MSG(strstr(e.msg, "swish9"), "%s", e.msg);
    const char *heads = "{\"vocab_size\":10,\"hidden_size\":9,\"intermediate_size\":12,\"num_hidden_layers\":2,"
                        "\"num_attention_heads\":2,\"max_position_embeddings\":6}";
    CHECK(loco_clip_text_config_parse(heads, strlen(heads), NULL, &c, &e) == LOCO_EFORMAT);
    CHECK(loco_clip_text_config_parse("{nope", 5, "te/config.json", &c, &e) == LOCO_EFORMAT);
    CHECK(loco_clip_text_config_load("/nonexistent_loco/config.json", &c, &e) == LOCO_EIO);
    CHECK_MSG(strstr(e.msg, "/nonexistent_loco/config.json"), "%s", e.msg);
}

/* Sizes far beyond any real CLIP text encoder are refused by the parser, naming the key and the
 * limit (before: num_hidden_layers 10,000,000 parsed, then building the parameter and site tables
 * ran 54 s and 14.8 GB into "out of memory"; 2^30 overflowed the table index arithmetic). */
TEST(config_sizes_beyond_limits) {
    static const char *const keys[] = {"num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size",
                                       "max_position_embeddings", "num_attention_heads", "projection_dim"};
    static const char *const values[] = {"10000000", "1073741824"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        for (int v = 0; v < 2; v++) {
            char json[512];
            snprintf(json, sizeof json,
                     "{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":12,\"num_hidden_layers\":2,"
                     "\"num_attention_heads\":2,\"max_position_embeddings\":6,\"projection_dim\":4,\"%s\":%s}",
                     keys[k], values[v]);
            loco_clip_text_config c;
            loco_err e = {0};
            loco_status st = loco_clip_text_config_parse(json, strlen(json), "text_encoder/config.json", &c, &e);
            CHECK_MSG(st == LOCO_EFORMAT, "%s = %s: status %d", keys[k], values[v], (int)st);
            CHECK_MSG(strstr(e.msg, "text_encoder/config.json") && strstr(e.msg, keys[k]) && strstr(e.msg, values[v]) &&
                          strstr(e.msg, "limit"),
                      "%s", e.msg);
        }
    /* the sites listing and the model builder agree with the parser's layer limit */
    CHECK(LOCO_CLIP_TEXT_MAX_LIST_LAYERS == LOCO_CLIP_TEXT_MAX_LAYERS);
}

/* ---- a model to poke at: sd1-tiny's encoder --------------------------------------------------------- */

typedef struct poke {
    loco_backend *be;
    loco_clip_text *m;
    int32_t *ids;
    int B, L, D;
} poke;

static int poke_open(poke *p) {
    memset(p, 0, sizeof *p);
    fx f;
    fx_make(&f, "sd1-tiny", "text_encoder");
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", f.model_dir);
    FILE *t = fopen(cfg, "rb");
    if (!t) return 0;
    fclose(t);
    p->be = cpu();
    loco_err e;
    if (!p->be || loco_clip_text_load_dir(p->be, f.model_dir, NULL, &p->m, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return -1;
    }
    const loco_clip_text_config *c = loco_clip_text_get_config(p->m);
    /* two rows shaped like tokenizer output: BOS, content, EOS (the largest id), padding */
    p->B = 2;
    p->L = c->max_position_embeddings;
    p->D = c->hidden_size;
    p->ids = malloc((size_t)(p->B * p->L) * sizeof *p->ids);
    const int32_t eos = c->vocab_size - 1, bos = c->vocab_size - 2;
    for (int b = 0; b < p->B; b++) {
        int32_t *row = p->ids + b * p->L;
        int n = 5 + 3 * b;
        row[0] = bos;
        for (int i = 1; i <= n; i++) row[i] = (int32_t)((i * 37 + b * 11) % (c->vocab_size - 2));
        for (int i = n + 1; i < p->L; i++) row[i] = eos;
    }
    return 1;
}

static void poke_close(poke *p) {
    free(p->ids);
    loco_clip_text_free(p->m);
    loco_backend_destroy(p->be);
}

static float *run_lhs(const loco_clip_text *m, const poke *p, const loco_site_hooks *hooks) {
    loco_tensor lhs;
    const int64_t shape[3] = {p->B, p->L, p->D};
    if (loco_tensor_alloc_act(p->be, 3, shape, &lhs, NULL)) return NULL;
    loco_clip_text_outputs o;
    loco_clip_text_outputs_init(&o);
    o.last_hidden_state = &lhs;
    loco_err e;
    float *out = NULL;
    if (loco_clip_text_forward(m, p->ids, p->B, p->L, &o, hooks, &e) == LOCO_OK)
        out = download(&lhs);
    else
        fprintf(stderr, "forward: %s\n", e.msg);
    loco_tensor_free(&lhs);
    return out;
}

#define POKE_OR_SKIP(p)                                                                  \
    do {                                                                                 \
        int r_ = poke_open(p);                                                           \
        if (r_ == 0) SKIP("sd1-tiny fixture model not generated yet");                   \
        CHECK(r_ == 1);                                                                  \
    } while (0)

TEST(site_table) {
    poke p;
    POKE_OR_SKIP(&p);
    const int nl = loco_clip_text_get_config(p.m)->num_hidden_layers;
    CHECK(loco_clip_text_num_sites(p.m) == 1 + 3 * nl);
    const loco_site *s = loco_clip_text_site(p.m, 0);
    CHECK(s->kind == LOCO_SITE_TEXT_EMBED && strcmp(s->name, "text_model.embeddings") == 0 && s->layer == -1);
    s = loco_clip_text_find_site(p.m, "text_model.encoder.layers.0.self_attn.out_proj", LOCO_SITE_TEXT_OUT_PROJ_IN);
    CHECK(s && s->id == 1 && s->layer == 0 && s->cross_index == -1);
    s = loco_clip_text_site(p.m, 3 * nl);
    CHECK(s->kind == LOCO_SITE_TEXT_MLP && s->layer == nl - 1);
    char want[96];
    snprintf(want, sizeof want, "text_model.encoder.layers.%d.mlp", nl - 1);
    CHECK(strcmp(s->name, want) == 0);
    CHECK(loco_clip_text_site(p.m, 1 + 3 * nl) == NULL);
    for (int i = 0; i < loco_clip_text_num_sites(p.m); i++) CHECK(loco_clip_text_site(p.m, i)->id == i);
    poke_close(&p);
}

/* The table `loco inspect` lists (from the config alone) is the one a loaded model publishes,
 * entry by entry, so every listed name resolves in an intervention plan. */
TEST(config_site_table_matches_the_model) {
    poke p;
    POKE_OR_SKIP(&p);
    loco_site *sites = NULL;
    int n = 0;
    loco_err err = {0};
    CHECK_MSG(loco_clip_text_config_sites(loco_clip_text_get_config(p.m), &sites, &n, &err) == LOCO_OK, "%s",
              err.msg);
    int same = n == loco_clip_text_num_sites(p.m);
    for (int i = 0; same && i < n; i++) {
        const loco_site *m = loco_clip_text_site(p.m, i);
        same = sites[i].id == m->id && sites[i].kind == m->kind && sites[i].layer == m->layer &&
               sites[i].cross_index == m->cross_index && strcmp(sites[i].name, m->name) == 0 &&
               sites[i].name != m->name; /* the list owns its own copies */
    }
    loco_clip_text_sites_free(sites, n);
    poke_close(&p);
    CHECK(same);
    /* a config claiming absurdly many layers is refused, not listed */
    loco_clip_text_config big;
    loco_clip_text_config_init(&big);
    big.num_hidden_layers = 1 << 30;
    CHECK(loco_clip_text_config_sites(&big, &sites, &n, &err) == LOCO_EFORMAT && sites == NULL && n == 0);
    CHECK(strstr(err.msg, "num_hidden_layers") != NULL);
    loco_clip_text_sites_free(NULL, 0);
}

/* Hook state for corruption/recording/restoring at the embedding site. */
typedef struct embed_hook {
    int mode; /* 0 record, 1 corrupt, 2 corrupt then restore */
    int pos;  /* corrupted token position in every row */
    float *clean;
    int B, L, D;
    int calls;
} embed_hook;

static loco_status embed_fn(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    embed_hook *h = ctx;
    h->calls++;
    if (site->kind != LOCO_SITE_TEXT_EMBED) return LOCO_OK;
    size_t n = (size_t)h->B * h->L * h->D;
    float *x = malloc(n * sizeof *x);
    loco_status st = loco_tensor_download_f32(out, x, err);
    if (st) {
        free(x);
        return st;
    }
    if (h->mode == 0) {
        memcpy(h->clean, x, n * sizeof *x);
    } else {
        for (int b = 0; b < h->B; b++)
            for (int d = 0; d < h->D; d++) x[((size_t)b * h->L + h->pos) * h->D + d] += 3.0f * (float)((d % 5) - 2);
        if (h->mode == 2) /* put back the clean values of the corrupted position */
            for (int b = 0; b < h->B; b++)
                memcpy(x + ((size_t)b * h->L + h->pos) * h->D, h->clean + ((size_t)b * h->L + h->pos) * h->D,
                       (size_t)h->D * sizeof *x);
        st = loco_tensor_upload(out, x, LOCO_F32, err);
    }
    free(x);
    return st;
}

TEST(hooks_corrupt_and_restore) {
    poke p;
    POKE_OR_SKIP(&p);
    const size_t n = (size_t)p.B * p.L * p.D;
    embed_hook h = {.mode = 0, .pos = 3, .clean = malloc(n * sizeof(float)), .B = p.B, .L = p.L, .D = p.D};
    loco_site_hooks hooks = {.after = embed_fn, .ctx = &h};
    float *clean = run_lhs(p.m, &p, &hooks);
    CHECK(clean);
    CHECK(h.calls == loco_clip_text_num_sites(p.m)); /* every site is visited once */
    float *plain = run_lhs(p.m, &p, NULL);
    CHECK(plain && memcmp(plain, clean, n * sizeof(float)) == 0); /* a recording hook changes nothing */

    h.mode = 1;
    float *bad = run_lhs(p.m, &p, &hooks);
    CHECK(bad);
    /* causal: positions before the corrupted one are untouched, the later ones change */
    for (int b = 0; b < p.B; b++) {
        const size_t row = (size_t)b * p.L * p.D;
        CHECK(memcmp(bad + row, clean + row, (size_t)h.pos * p.D * sizeof(float)) == 0);
        double diff = 0;
        for (size_t i = (size_t)h.pos * p.D; i < (size_t)p.L * p.D; i++) diff += fabs(bad[row + i] - clean[row + i]);
        CHECK_MSG(diff > 1e-3, "corruption did not reach later positions (row %d)", b);
    }
    h.mode = 2;
    float *restored = run_lhs(p.m, &p, &hooks);
    CHECK(restored);
    CHECK(memcmp(restored, clean, n * sizeof(float)) == 0);
    free(clean);
    free(plain);
    free(bad);
    free(restored);
    free(h.clean);
    poke_close(&p);
}

/* Records the out_proj input and the self-attention output of layer 0; can fail on request. */
typedef struct rec_hook {
    float *in, *out;
    int fail_at;
} rec_hook;

static loco_status rec_fn(void *ctx, const loco_site *site, loco_tensor *t, loco_err *err) {
    rec_hook *h = ctx;
    if (site->id == h->fail_at) return loco_err_set(err, LOCO_ECANCELLED, "stop requested");
    if (site->layer != 0) return LOCO_OK;
    if (site->kind == LOCO_SITE_TEXT_OUT_PROJ_IN) return loco_tensor_download_f32(t, h->in, err);
    if (site->kind == LOCO_SITE_TEXT_SELF_ATTN) return loco_tensor_download_f32(t, h->out, err);
    return LOCO_OK;
}

TEST(out_proj_input_site) {
    /* what Diff-QuickFix reads: out_proj(input) == the self-attention output, on the host */
    poke p;
    POKE_OR_SKIP(&p);
    const size_t n = (size_t)p.B * p.L * p.D;
    rec_hook h = {.in = malloc(n * sizeof(float)), .out = malloc(n * sizeof(float)), .fail_at = -1};
    loco_site_hooks hooks = {.after = rec_fn, .ctx = &h};
    float *lhs = run_lhs(p.m, &p, &hooks);
    CHECK(lhs);
    float *W = download(loco_clip_text_param(p.m, "text_model.encoder.layers.0.self_attn.out_proj.weight"));
    float *bias = download(loco_clip_text_param(p.m, "text_model.encoder.layers.0.self_attn.out_proj.bias"));
    CHECK(W && bias);
    double num = 0, den = 0;
    for (size_t t = 0; t < (size_t)p.B * p.L; t++)
        for (int o = 0; o < p.D; o++) {
            double acc = bias[o];
            for (int i = 0; i < p.D; i++) acc += (double)W[o * p.D + i] * h.in[t * p.D + i];
            double d = acc - h.out[t * p.D + o];
            num += d * d;
            den += acc * acc;
        }
    CHECK_MSG(sqrt(num / den) < 1e-6, "out_proj(input) vs output rel err %g", sqrt(num / den));

    /* a failing hook stops the pass with its error, prefixed by the site */
    h.fail_at = 2;
    loco_tensor lhs_t;
    const int64_t shape[3] = {p.B, p.L, p.D};
    CHECK(loco_tensor_alloc_act(p.be, 3, shape, &lhs_t, NULL) == LOCO_OK);
    loco_clip_text_outputs o;
    loco_clip_text_outputs_init(&o);
    o.last_hidden_state = &lhs_t;
    loco_err e;
    CHECK(loco_clip_text_forward(p.m, p.ids, p.B, p.L, &o, &hooks, &e) == LOCO_ECANCELLED);
    CHECK_MSG(strstr(e.msg, "stop requested") && strstr(e.msg, "layers.0.self_attn"), "%s", e.msg);
    loco_tensor_free(&lhs_t);
    free(W);
    free(bias);
    free(lhs);
    free(h.in);
    free(h.out);
    poke_close(&p);
}

TEST(replace_weight_and_variants) {
    poke p;
    POKE_OR_SKIP(&p);
    const char *name = "text_model.encoder.layers.0.self_attn.out_proj.weight";
    const size_t n = (size_t)p.B * p.L * p.D;
    float *base_out = run_lhs(p.m, &p, NULL);
    CHECK(base_out);
    const loco_tensor *w0 = loco_clip_text_param(p.m, name);
    CHECK(w0 && w0->ndim == 2 && w0->shape[0] == p.D && w0->shape[1] == p.D);
    float *W = download(w0);

    loco_clip_text *v = NULL;
    loco_err e;
    CHECK(loco_clip_text_variant(p.m, &v, &e) == LOCO_OK);
    /* a variant shares every tensor until one is replaced */
    for (int i = 0; i < loco_clip_text_num_params(p.m); i++) {
        const char *pn = loco_clip_text_param_name(p.m, i);
        CHECK(loco_clip_text_param(v, pn)->data == loco_clip_text_param(p.m, pn)->data);
    }
    float *edited = malloc((size_t)p.D * p.D * sizeof(float));
    for (int i = 0; i < p.D * p.D; i++) edited[i] = W[i] * 0.5f + (i % 3 == 0 ? 0.01f : 0.0f);
    CHECK_MSG(loco_clip_text_set_param(v, name, edited, LOCO_F32, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_clip_text_param(v, name)->data != w0->data);
    CHECK(loco_clip_text_param(v, "text_model.encoder.layers.0.self_attn.q_proj.weight")->data ==
          loco_clip_text_param(p.m, "text_model.encoder.layers.0.self_attn.q_proj.weight")->data);
    float *back = download(loco_clip_text_param(v, name));
    CHECK(back && memcmp(back, edited, (size_t)p.D * p.D * sizeof(float)) == 0);

    float *var_out = run_lhs(v, &p, NULL);
    float *base_again = run_lhs(p.m, &p, NULL);
    CHECK(var_out && base_again);
    CHECK(memcmp(base_again, base_out, n * sizeof(float)) == 0); /* the base is untouched */
    CHECK(loco_rel_l2(var_out, base_out, n) > 1e-4);

    /* putting the original weight back (in place: the variant owns its copy) restores the output */
    const void *owned = loco_clip_text_param(v, name)->data;
    CHECK(loco_clip_text_set_param(v, name, W, LOCO_F32, &e) == LOCO_OK);
    CHECK(loco_clip_text_param(v, name)->data == owned);
    float *var_same = run_lhs(v, &p, NULL);
    CHECK(var_same && memcmp(var_same, base_out, n * sizeof(float)) == 0);

    /* the base can go first: shared tensors live on with the variant */
    loco_clip_text_free(p.m);
    p.m = NULL;
    float *after = run_lhs(v, &p, NULL);
    CHECK(after && memcmp(after, base_out, n * sizeof(float)) == 0);

    /* errors name the parameter */
    CHECK(loco_clip_text_set_param(v, "text_model.encoder.layers.99.mlp.fc1.weight", W, LOCO_F32, &e) ==
          LOCO_ENOTFOUND);
    CHECK_MSG(strstr(e.msg, "layers.99"), "%s", e.msg);
    CHECK(loco_clip_text_set_param(v, name, NULL, LOCO_F32, &e) == LOCO_EINVAL);

    free(W);
    free(edited);
    free(back);
    free(var_out);
    free(base_again);
    free(var_same);
    free(after);
    free(base_out);
    loco_clip_text_free(v);
    poke_close(&p);
}

TEST(forward_errors) {
    poke p;
    POKE_OR_SKIP(&p);
    const loco_clip_text_config *c = loco_clip_text_get_config(p.m);
    loco_err e;
    loco_tensor lhs, small, emb;
    const int64_t shape[3] = {p.B, p.L, p.D}, wrong[3] = {p.B, p.L, p.D + 1}, es[2] = {p.B, 4};
    CHECK(loco_tensor_alloc_act(p.be, 3, shape, &lhs, NULL) == LOCO_OK);
    CHECK(loco_tensor_alloc_act(p.be, 3, wrong, &small, NULL) == LOCO_OK);
    CHECK(loco_tensor_alloc_act(p.be, 2, es, &emb, NULL) == LOCO_OK);
    loco_clip_text_outputs o;
    loco_clip_text_outputs_init(&o);
    o.last_hidden_state = &small;
    CHECK(loco_clip_text_forward(p.m, p.ids, p.B, p.L, &o, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "last_hidden_state"), "%s", e.msg);

    o.last_hidden_state = &lhs;
    p.ids[5] = c->vocab_size; /* out of the vocabulary */
    CHECK(loco_clip_text_forward(p.m, p.ids, p.B, p.L, &o, NULL, &e) == LOCO_EINVAL);
    p.ids[5] = 1;

    int32_t *longer = calloc((size_t)(c->max_position_embeddings + 1), sizeof *longer);
    CHECK(loco_clip_text_forward(p.m, longer, 1, c->max_position_embeddings + 1, &o, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "max_position_embeddings"), "%s", e.msg);
    free(longer);

    loco_clip_hidden_request bad = {.index = c->num_hidden_layers + 1, .out = &lhs};
    loco_clip_text_outputs_init(&o);
    o.hidden = &bad;
    o.n_hidden = 1;
    CHECK(loco_clip_text_forward(p.m, p.ids, p.B, p.L, &o, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "index"), "%s", e.msg);
    bad.index = -(c->num_hidden_layers + 2);
    CHECK(loco_clip_text_forward(p.m, p.ids, p.B, p.L, &o, NULL, &e) == LOCO_EINVAL);

    /* sd1's encoder has no projection */
    CHECK(!loco_clip_text_has_projection(p.m));
    loco_clip_text_outputs_init(&o);
    o.text_embeds = &emb;
    CHECK(loco_clip_text_forward(p.m, p.ids, p.B, p.L, &o, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "text_projection"), "%s", e.msg);

    loco_tensor_free(&lhs);
    loco_tensor_free(&small);
    loco_tensor_free(&emb);
    poke_close(&p);
}

TEST(pool_position_rules) {
    poke p;
    POKE_OR_SKIP(&p);
    /* legacy config (eos_token_id 2): argmax, first of equal maxima */
    const int32_t row[6] = {5, 9, 3, 9, 9, 1};
    int pos = -1;
    CHECK(loco_clip_text_get_config(p.m)->eos_token_id == 2);
    CHECK(loco_clip_text_pool_position(p.m, row, 6, &pos, NULL) == LOCO_OK && pos == 1);
    poke_close(&p);

    /* a non-legacy config: the first eos_token_id, and an error when a row has none */
    fx f;
    fx_make(&f, "sd1-tiny", "text_encoder");
    loco_clip_text_config c;
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/config.json", f.model_dir);
    CHECK(loco_clip_text_config_load(cfg, &c, NULL) == LOCO_OK);
    c.eos_token_id = 3;
    loco_weights *w = NULL;
    loco_backend *be = cpu();
    CHECK(loco_weights_open_dir(f.model_dir, "model", NULL, &w, NULL) == LOCO_OK);
    loco_clip_text *m = NULL;
    CHECK(loco_clip_text_create(be, &c, w, &m, NULL) == LOCO_OK);
    CHECK(loco_clip_text_pool_position(m, row, 6, &pos, NULL) == LOCO_OK && pos == 2);
    const int32_t none[3] = {5, 9, 1};
    loco_err e;
    CHECK(loco_clip_text_pool_position(m, none, 3, &pos, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "eos_token_id 3"), "%s", e.msg);
    loco_clip_text_free(m);

    /* a config that disagrees with the weights names the tensor */
    c.hidden_size += 4;
    CHECK(loco_clip_text_create(be, &c, w, &m, &e) != LOCO_OK);
    CHECK_MSG(strstr(e.msg, "token_embedding"), "%s", e.msg);
    CHECK(m == NULL);
    /* WithProjection without the tensor */
    c.hidden_size -= 4;
    c.with_projection = 1;
    CHECK(loco_clip_text_create(be, &c, w, &m, &e) == LOCO_ENOTFOUND);
    CHECK_MSG(strstr(e.msg, "text_projection.weight"), "%s", e.msg);
    loco_weights_free(w);
    CHECK(loco_clip_text_load_dir(be, "/nonexistent_loco_dir", NULL, &m, &e) == LOCO_EIO);
    CHECK_MSG(strstr(e.msg, "/nonexistent_loco_dir/config.json"), "%s", e.msg);
    loco_backend_destroy(be);
}
