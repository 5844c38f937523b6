/* test_unet.c: UNet2DConditionModel against diffusers on the tiny fixtures (output and every
 * top-level block), the site tables (tiny models and the full-size SD 1.5 / 2.1 / SD-XL
 * configs), text K/V reuse, per-layer K/V overrides, hooks (order, restore) and errors. */
#include "loco_test.h"

#include "model_ref_util.h"
#include "unet.h"
#include "unet_sites_expected.h"

#define TOL 1e-5


/* One loaded fixture: UNet + reference file + uploaded shared inputs. */
typedef struct fx {
    loco_backend *be;
    loco_unet *u;
    loco_safetensors *ref;
    loco_tensor sample, ehs, text_embeds;
    float *time_ids;
    int B;
} fx;

static void fx_close(fx *f) {
    loco_tensor_free(&f->sample);
    loco_tensor_free(&f->ehs);
    loco_tensor_free(&f->text_embeds);
    free(f->time_ids);
    loco_unet_free(f->u);
    if (f->ref) loco_safetensors_close(f->ref);
    if (f->be) loco_backend_destroy(f->be);
    memset(f, 0, sizeof *f);
}

static int fx_open(fx *f, const char *model) {
    memset(f, 0, sizeof *f);
    char dir[1024];
    mr_model_dir(dir, sizeof dir, model, "unet");
    if (!(f->be = mr_cpu())) return -1;
    if (!(f->ref = mr_ref_open(model, "unet"))) return -1;
    loco_err e = {0};
    if (loco_unet_load_dir(f->be, dir, NULL, &f->u, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return -1;
    }
    if (mr_ref_upload(f->be, f->ref, "sample", &f->sample) ||
        mr_ref_upload(f->be, f->ref, "encoder_hidden_states", &f->ehs))
        return -1;
    f->B = (int)f->sample.shape[0];
    if (loco_safetensors_find(f->ref, "text_embeds")) {
        if (mr_ref_upload(f->be, f->ref, "text_embeds", &f->text_embeds)) return -1;
        if (!(f->time_ids = mr_ref_f32(f->ref, "time_ids", NULL))) return -1;
    }
    return 0;
}

/* Inputs of reference call `call` (timesteps broadcast to the batch as diffusers does). */
static void fx_inputs(fx *f, int call, float *ts, loco_unet_inputs *in) {
    char key[64];
    snprintf(key, sizeof key, "call%d.timestep", call);
    int64_t n = 0;
    float *t = mr_ref_f32(f->ref, key, &n);
    for (int b = 0; b < f->B; b++) ts[b] = t ? t[n == 1 ? 0 : b] : 0.0f;
    free(t);
    loco_unet_inputs_init(in);
    in->sample = &f->sample;
    in->timesteps = ts;
    in->encoder_hidden_states = &f->ehs;
    if (f->time_ids) {
        in->text_embeds = &f->text_embeds;
        in->time_ids = f->time_ids;
    }
}

static float *run(fx *f, const loco_unet_inputs *in) {
    loco_tensor out = {0};
    loco_err e = {0};
    if (loco_unet_forward(f->u, in, &out, &e)) {
        fprintf(stderr, "forward: %s\n", e.msg);
        return NULL;
    }
    float *h = mr_download(&out);
    loco_tensor_free(&out);
    return h;
}

static int64_t out_numel(const fx *f) { return loco_tensor_numel(&f->sample); }

static int same(const float *a, const float *b, int64_t n) { return memcmp(a, b, (size_t)n * sizeof *a) == 0; }

/* ---- parity with diffusers ------------------------------------------------------------------ */

static void parity(const char *model) {
    fx f;
    CHECK_MSG(fx_open(&f, model) == 0, "cannot open the %s fixture", model);
    for (int call = 0; call < 3; call++) {
        float ts[16];
        loco_unet_inputs in;
        fx_inputs(&f, call, ts, &in);
        char prefix[32], key[64];
        snprintf(prefix, sizeof prefix, "call%d.block.", call);
        mr_probe p = {.ref = f.ref, .prefix = prefix, .tol = TOL};
        in.probe = mr_probe_fn;
        in.probe_ctx = &p;
        loco_tensor out = {0};
        loco_err e = {0};
        loco_status s = loco_unet_forward(f.u, &in, &out, &e);
        if (s) fprintf(stderr, "%s\n", e.msg);
        CHECK(s == LOCO_OK);
        snprintf(key, sizeof key, "call%d.out", call);
        double r = mr_rel_err(&out, f.ref, key);
        loco_tensor_free(&out);
        /* every recorded block is compared except conv_norm_out (fused with its SiLU here:
         * conv_act covers it) and conv_out (== out) */
        int want = 0;
        for (size_t i = 0; i < loco_safetensors_count(f.ref); i++) {
            const char *n = loco_safetensors_at(f.ref, i)->name;
            if (strncmp(n, prefix, strlen(prefix)) == 0 && strcmp(n + strlen(prefix), "conv_norm_out") != 0 &&
                strcmp(n + strlen(prefix), "conv_out") != 0)
                want++;
        }
        printf("%s call%d: output rel err %.3g; %d blocks, worst %.3g (%s)\n", model, call, r, p.compared, p.worst,
               p.worst_name);
        CHECK_MSG(r <= TOL, "%s call%d output: relative error %g", model, call, r);
        CHECK_MSG(!p.bad, "%s call%d: a block is over tolerance", model, call);
        CHECK_MSG(p.compared == want, "%s call%d: compared %d of %d recorded blocks", model, call, p.compared, want);
    }
    fx_close(&f);
}

TEST(unet_parity_sd1_tiny) { parity("sd1-tiny"); }
TEST(unet_parity_sd2_tiny) { parity("sd2-tiny"); }
TEST(unet_parity_sdxl_tiny) { parity("sdxl-tiny"); }

/* ---- site tables ------------------------------------------------------------------------------ */

static loco_site_kind kind_of(const char *name) {
    size_t n = strlen(name);
    if (n > 5 && !strcmp(name + n - 5, ".to_k")) return LOCO_SITE_CROSS_K;
    if (n > 5 && !strcmp(name + n - 5, ".to_v")) return LOCO_SITE_CROSS_V;
    if (n > 6 && !strcmp(name + n - 6, ".attn1")) return LOCO_SITE_SELF_ATTN;
    if (n > 6 && !strcmp(name + n - 6, ".attn2")) return LOCO_SITE_CROSS_ATTN;
    if (n > 3 && !strcmp(name + n - 3, ".ff")) return LOCO_SITE_FF;
    return LOCO_SITE_RESNET;
}

static void check_table(const loco_site *sites, int n, const char *const *want, int n_want) {
    CHECK_MSG(n == n_want, "%d sites, diffusers executes %d", n, n_want);
    int cross = 0;
    for (int i = 0; i < n; i++) {
        CHECK_MSG(!strcmp(sites[i].name, want[i]), "site %d is %s, diffusers executes %s", i, sites[i].name, want[i]);
        CHECK(sites[i].id == i);
        CHECK_MSG(sites[i].kind == kind_of(want[i]), "site %s has kind %s", want[i],
                  loco_site_kind_name(sites[i].kind));
        if (sites[i].kind == LOCO_SITE_CROSS_ATTN) {
            CHECK_MSG(sites[i].cross_index == cross, "%s: cross_index %d, expected %d", want[i], sites[i].cross_index,
                      cross);
            /* its text projections carry the same index */
            CHECK(sites[i - 1].cross_index == cross && sites[i - 2].cross_index == cross);
            cross++;
        } else if (sites[i].kind != LOCO_SITE_CROSS_K && sites[i].kind != LOCO_SITE_CROSS_V) {
            CHECK(sites[i].cross_index == -1);
        }
    }
}

TEST(unet_sites_tiny_match_diffusers_execution_order) {
    /* from the config alone, and from a loaded model */
    const struct { const char *model; const char *const *want; int n; int n_cross; } cases[] = {
        {"sd1-tiny", expected_sites_sd1_tiny, (int)(sizeof expected_sites_sd1_tiny / sizeof(char *)), 11},
        {"sd2-tiny", expected_sites_sd1_tiny, (int)(sizeof expected_sites_sd1_tiny / sizeof(char *)), 11},
        {"sdxl-tiny", expected_sites_sdxl_tiny, (int)(sizeof expected_sites_sdxl_tiny / sizeof(char *)), 17},
    };
    for (int c = 0; c < 3; c++) {
        char dir[1024], path[1100];
        mr_model_dir(dir, sizeof dir, cases[c].model, "unet");
        snprintf(path, sizeof path, "%s/config.json", dir);
        loco_unet_config cfg;
        loco_err e = {0};
        CHECK_MSG(loco_unet_config_load(path, &cfg, &e) == LOCO_OK, "%s", e.msg);
        loco_site *sites = NULL;
        int n = 0;
        CHECK_MSG(loco_unet_config_sites(&cfg, &sites, &n, &e) == LOCO_OK, "%s", e.msg);
        check_table(sites, n, cases[c].want, cases[c].n);
        loco_unet_sites_free(sites, n);
        if (loco_test_failed_) return;
    }
    fx f;
    CHECK(fx_open(&f, "sdxl-tiny") == 0);
    int n = 0;
    const loco_site *sites = loco_unet_sites(f.u, &n);
    check_table(sites, n, cases[2].want, cases[2].n);
    CHECK(loco_unet_n_cross(f.u) == 17);
    const loco_site *s = loco_unet_find_site(f.u, "mid_block.attentions.0.transformer_blocks.1.attn2");
    CHECK(s && s->kind == LOCO_SITE_CROSS_ATTN && s->cross_index == 7);
    CHECK(loco_unet_find_site(f.u, "mid_block.attentions.0.transformer_blocks.2.attn2") == NULL);
    fx_close(&f);
}

/* The real configs (values from the hub config.json files described in models.md §3). */
static const char *SD15 =
    "{\"_class_name\":\"UNet2DConditionModel\",\"act_fn\":\"silu\",\"attention_head_dim\":8,"
    "\"block_out_channels\":[320,640,1280,1280],\"center_input_sample\":false,\"cross_attention_dim\":768,"
    "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
    "\"downsample_padding\":1,\"flip_sin_to_cos\":true,\"freq_shift\":0,\"in_channels\":4,\"layers_per_block\":2,"
    "\"mid_block_scale_factor\":1,\"norm_eps\":1e-05,\"norm_num_groups\":32,\"out_channels\":4,\"sample_size\":64,"
    "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";
static const char *SD21 =
    "{\"_class_name\":\"UNet2DConditionModel\",\"act_fn\":\"silu\",\"attention_head_dim\":[5,10,20,20],"
    "\"block_out_channels\":[320,640,1280,1280],\"center_input_sample\":false,\"cross_attention_dim\":1024,"
    "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
    "\"dual_cross_attention\":false,\"flip_sin_to_cos\":true,\"freq_shift\":0,\"in_channels\":4,"
    "\"layers_per_block\":2,\"norm_num_groups\":32,\"num_class_embeds\":null,\"only_cross_attention\":false,"
    "\"out_channels\":4,\"sample_size\":96,\"upcast_attention\":true,\"use_linear_projection\":true,"
    "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";
static const char *SDXL =
    "{\"_class_name\":\"UNet2DConditionModel\",\"act_fn\":\"silu\",\"addition_embed_type\":\"text_time\","
    "\"addition_embed_type_num_heads\":64,\"addition_time_embed_dim\":256,\"attention_head_dim\":[5,10,20],"
    "\"block_out_channels\":[320,640,1280],\"cross_attention_dim\":2048,"
    "\"down_block_types\":[\"DownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\"],"
    "\"in_channels\":4,\"layers_per_block\":2,\"norm_num_groups\":32,\"num_attention_heads\":null,"
    "\"projection_class_embeddings_input_dim\":2816,\"sample_size\":128,"
    "\"transformer_layers_per_block\":[1,2,10],\"use_linear_projection\":true,"
    "\"up_block_types\":[\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"UpBlock2D\"]}";

/* The cross-attention site names of a table, in order. */
static int cross_names(const loco_site *s, int n, const char **out, int cap) {
    int k = 0;
    for (int i = 0; i < n; i++)
        if (s[i].kind == LOCO_SITE_CROSS_ATTN && k < cap) out[k++] = s[i].name;
    return k;
}

TEST(unet_sites_full_size_sd15_sd21_sdxl) {
    /* models.md §3.7: SD 1.x/2.x 16 layers (down 0-5, mid 6, up 7-15), SD-XL 70 */
    static const char *const sd_cross[16] = {
        "down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "down_blocks.1.attentions.0",
        "down_blocks.1.attentions.1", "down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
        "mid_block.attentions.0",     "up_blocks.1.attentions.0",   "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",   "up_blocks.2.attentions.0",   "up_blocks.2.attentions.1",
        "up_blocks.2.attentions.2",   "up_blocks.3.attentions.0",   "up_blocks.3.attentions.1",
        "up_blocks.3.attentions.2"};
    const char *cfgs[2] = {SD15, SD21};
    for (int c = 0; c < 2; c++) {
        loco_unet_config cfg;
        loco_err e = {0};
        CHECK_MSG(loco_unet_config_parse(cfgs[c], "test config", &cfg, &e) == LOCO_OK, "%s", e.msg);
        loco_site *sites = NULL;
        int n = 0;
        CHECK_MSG(loco_unet_config_sites(&cfg, &sites, &n, &e) == LOCO_OK, "%s", e.msg);
        const char *names[80];
        int k = cross_names(sites, n, names, 80);
        CHECK_MSG(k == 16, "%d cross-attention layers", k);
        for (int i = 0; i < 16; i++) {
            char want[128];
            snprintf(want, sizeof want, "%s.transformer_blocks.0.attn2", sd_cross[i]);
            CHECK_MSG(!strcmp(names[i], want), "layer %d is %s, expected %s", i, names[i], want);
        }
        /* 25 resnets: 8 down + 2 mid + 15 up... (2 per down level, 3 per up level) */
        int resnets = 0;
        for (int i = 0; i < n; i++) resnets += sites[i].kind == LOCO_SITE_RESNET;
        CHECK_MSG(resnets == 4 * 2 + 2 + 4 * 3, "%d resnet sites", resnets);
        loco_unet_sites_free(sites, n);
    }
    loco_unet_config cfg;
    loco_err e = {0};
    CHECK_MSG(loco_unet_config_parse(SDXL, "test config", &cfg, &e) == LOCO_OK, "%s", e.msg);
    CHECK(cfg.up_transformer_layers[0][0] == 10 && cfg.up_transformer_layers[1][2] == 2 &&
          cfg.up_transformer_layers[2][0] == 1 && cfg.mid_transformer_layers == 10);
    loco_site *sites = NULL;
    int n = 0;
    CHECK_MSG(loco_unet_config_sites(&cfg, &sites, &n, &e) == LOCO_OK, "%s", e.msg);
    const char *names[80];
    int k = cross_names(sites, n, names, 80);
    CHECK_MSG(k == 70, "%d cross-attention layers", k);
    /* down_blocks.1 (4), down_blocks.2 (20), mid (10), up_blocks.0 (30), up_blocks.1 (6) */
    CHECK(!strcmp(names[0], "down_blocks.1.attentions.0.transformer_blocks.0.attn2"));
    CHECK(!strcmp(names[3], "down_blocks.1.attentions.1.transformer_blocks.1.attn2"));
    CHECK(!strcmp(names[4], "down_blocks.2.attentions.0.transformer_blocks.0.attn2"));
    CHECK(!strcmp(names[23], "down_blocks.2.attentions.1.transformer_blocks.9.attn2"));
    CHECK(!strcmp(names[24], "mid_block.attentions.0.transformer_blocks.0.attn2"));
    CHECK(!strcmp(names[33], "mid_block.attentions.0.transformer_blocks.9.attn2"));
    CHECK(!strcmp(names[34], "up_blocks.0.attentions.0.transformer_blocks.0.attn2"));
    CHECK(!strcmp(names[63], "up_blocks.0.attentions.2.transformer_blocks.9.attn2"));
    CHECK(!strcmp(names[64], "up_blocks.1.attentions.0.transformer_blocks.0.attn2"));
    CHECK(!strcmp(names[69], "up_blocks.1.attentions.2.transformer_blocks.1.attn2"));
    loco_unet_sites_free(sites, n);
}

/* ---- text K/V reuse and per-layer overrides ------------------------------------------------------ */

static void kv_reuse(const char *model) {
    fx f;
    CHECK_MSG(fx_open(&f, model) == 0, "cannot open the %s fixture", model);
    loco_unet_text_kv kv;
    loco_err e = {0};
    CHECK_MSG(loco_unet_compute_text_kv(f.u, &f.ehs, NULL, &kv, &e) == LOCO_OK, "%s", e.msg);
    CHECK(kv.n_layers == loco_unet_n_cross(f.u) && kv.batch == 2 && kv.tokens == 77);
    /* one text projection, several denoising steps */
    for (int call = 0; call < 3; call++) {
        float ts[16];
        loco_unet_inputs in;
        fx_inputs(&f, call, ts, &in);
        float *plain = run(&f, &in);
        in.text_kv = &kv;
        in.encoder_hidden_states = NULL; /* K/V alone are enough */
        float *reused = run(&f, &in);
        CHECK(plain && reused);
        CHECK_MSG(same(plain, reused, out_numel(&f)), "%s call%d: reused text K/V changed the output", model, call);
        free(plain);
        free(reused);
    }
    loco_unet_text_kv_free(&kv);
    fx_close(&f);
}

TEST(unet_text_kv_reuse_identical_sd1) { kv_reuse("sd1-tiny"); }
TEST(unet_text_kv_reuse_identical_sdxl) { kv_reuse("sdxl-tiny"); }

/* A third text row, different from the two recorded ones. */
static int make_text3(fx *f, loco_tensor *ehs3) {
    const int64_t L = f->ehs.shape[1], D = f->ehs.shape[2], row = L * D;
    float *h = malloc((size_t)(3 * row) * sizeof *h);
    float *e2 = mr_download(&f->ehs);
    if (!h || !e2) return -1;
    memcpy(h, e2, (size_t)(2 * row) * sizeof *h);
    uint32_t x = 12345;
    for (int64_t i = 0; i < row; i++) {
        x = x * 1664525u + 1013904223u;
        h[2 * row + i] = ((float)(x >> 8) / 16777216.0f) * 2.0f - 1.0f;
    }
    free(e2);
    loco_err e = {0};
    int r = loco_tensor_alloc_act(f->be, 3, (int64_t[]){3, L, D}, ehs3, &e) || loco_tensor_upload(ehs3, h, LOCO_F32, &e);
    free(h);
    return r ? -1 : 0;
}

TEST(unet_kv_index_override_changes_only_targeted_samples) {
    fx f;
    CHECK(fx_open(&f, "sd1-tiny") == 0);
    loco_tensor ehs3 = {0};
    CHECK(make_text3(&f, &ehs3) == 0);
    const int n_cross = loco_unet_n_cross(f.u);
    const int64_t half = out_numel(&f) / 2;
    float ts[16];
    loco_unet_inputs in;
    fx_inputs(&f, 0, ts, &in);
    in.encoder_hidden_states = &ehs3;
    const int text_index[2] = {0, 1}, alt[2] = {0, 2};
    in.text_index = text_index;
    float *base = run(&f, &in);

    /* a LocoGen-style window: layers 3 and 4 of sample 1 see text row 2 */
    const int *per_layer[64] = {0};
    CHECK(n_cross <= 64);
    per_layer[3] = per_layer[4] = alt;
    in.kv_index_per_layer = per_layer;
    float *win = run(&f, &in);
    CHECK(base && win);
    CHECK_MSG(same(base, win, half), "sample 0 changed although only sample 1 was targeted");
    CHECK_MSG(loco_rel_l2(win + half, base + half, (size_t)half) > 1e-4, "sample 1 did not change");

    /* the same window through precomputed K/V */
    loco_unet_text_kv kv;
    loco_err e = {0};
    CHECK_MSG(loco_unet_compute_text_kv(f.u, &ehs3, NULL, &kv, &e) == LOCO_OK, "%s", e.msg);
    in.text_kv = &kv;
    float *win_kv = run(&f, &in);
    CHECK(win_kv && same(win, win_kv, 2 * half));

    /* every layer overridden == a different text_index */
    for (int i = 0; i < n_cross; i++) per_layer[i] = alt;
    float *all = run(&f, &in);
    in.kv_index_per_layer = NULL;
    in.text_index = alt;
    float *direct = run(&f, &in);
    CHECK(all && direct && same(all, direct, 2 * half));
    CHECK(same(all, base, half));

    loco_unet_text_kv_free(&kv);
    free(base);
    free(win);
    free(win_kv);
    free(all);
    free(direct);
    loco_tensor_free(&ehs3);
    fx_close(&f);
}

/* ---- hooks --------------------------------------------------------------------------------------- */

typedef struct rec {
    int n_sites;
    float **saved; /* per site id */
    int64_t *numel;
    int *order;    /* site ids in call order */
    int calls;
    int restore;   /* 0: record, 1: overwrite with the recording */
} rec;

static loco_status rec_fn(void *ctx, const loco_site *site, loco_tensor *t, loco_err *err) {
    rec *r = ctx;
    if (r->calls < 4 * r->n_sites) r->order[r->calls] = site->id;
    r->calls++;
    if (site->kind == LOCO_SITE_CROSS_K || site->kind == LOCO_SITE_CROSS_V) return LOCO_OK; /* text: same */
    if (!r->restore) {
        free(r->saved[site->id]);
        r->saved[site->id] = mr_download(t);
        r->numel[site->id] = loco_tensor_numel(t);
        return LOCO_OK;
    }
    if (!r->saved[site->id] || r->numel[site->id] != loco_tensor_numel(t))
        return loco_err_set(err, LOCO_EINVAL, "no recording of %s", site->name);
    return loco_tensor_upload(t, r->saved[site->id], LOCO_F32, err);
}

TEST(unet_hooks_run_in_table_order_and_restore_works) {
    fx f;
    CHECK(fx_open(&f, "sd1-tiny") == 0);
    int n = 0;
    loco_unet_sites(f.u, &n);
    rec r = {.n_sites = n};
    r.saved = calloc((size_t)n, sizeof *r.saved);
    r.numel = calloc((size_t)n, sizeof *r.numel);
    r.order = calloc((size_t)(4 * n), sizeof *r.order);
    CHECK(r.saved && r.numel && r.order);
    float ts[16];
    loco_unet_inputs in;
    fx_inputs(&f, 1, ts, &in);
    in.hooks.after = rec_fn;
    in.hooks.ctx = &r;
    float *clean = run(&f, &in);
    CHECK(clean);
    /* every site once, in the published order */
    CHECK_MSG(r.calls == n, "%d hook calls for %d sites", r.calls, n);
    for (int i = 0; i < n; i++) CHECK_MSG(r.order[i] == i, "call %d was site %d", i, r.order[i]);

    /* a corrupted sample whose every site output is restored from the clean run gives the clean output */
    float *noise = mr_download(&f.sample);
    CHECK(noise);
    for (int64_t i = 0; i < out_numel(&f); i++) noise[i] = -noise[i] * 0.5f + 0.25f;
    loco_tensor corrupt = {0};
    loco_err e = {0};
    CHECK(loco_tensor_alloc_act(f.be, 4, f.sample.shape, &corrupt, &e) == LOCO_OK);
    CHECK(loco_tensor_upload(&corrupt, noise, LOCO_F32, &e) == LOCO_OK);
    in.sample = &corrupt;
    in.hooks.after = NULL;
    float *bad = run(&f, &in);
    CHECK(bad && loco_rel_l2(bad, clean, (size_t)out_numel(&f)) > 1e-3);
    r.restore = 1;
    r.calls = 0;
    in.hooks.after = rec_fn;
    float *restored = run(&f, &in);
    CHECK(restored);
    CHECK_MSG(same(restored, clean, out_numel(&f)), "restoring every site did not restore the output (rel %g)",
              loco_rel_l2(restored, clean, (size_t)out_numel(&f)));

    /* a hook error aborts the forward with the site named */
    for (int i = 0; i < n; i++) {
        free(r.saved[i]);
        r.saved[i] = NULL;
    }
    loco_tensor out = {0};
    CHECK(loco_unet_forward(f.u, &in, &out, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "down_blocks.0.resnets.0"), "message: %s", e.msg);
    CHECK(out.data == NULL);

    free(clean);
    free(noise);
    free(bad);
    free(restored);
    free(r.saved);
    free(r.numel);
    free(r.order);
    loco_tensor_free(&corrupt);
    fx_close(&f);
}

/* ---- errors -------------------------------------------------------------------------------------- */

TEST(unet_error_missing_tensor) {
    char dir[1024];
    mr_model_dir(dir, sizeof dir, "sd1-tiny", "unet");
    loco_weights *full = NULL, *partial = NULL;
    loco_err e = {0};
    CHECK_MSG(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &full, &e) == LOCO_OK, "%s", e.msg);
    const char *drop = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    CHECK(loco_weights_new_empty("sd1-tiny without one tensor", &partial, &e) == LOCO_OK);
    for (size_t i = 0; i < loco_weights_count(full); i++) {
        const loco_stored_tensor *t = loco_weights_at(full, i);
        if (strcmp(t->name, drop) != 0) CHECK(loco_weights_add(partial, t->name, t, NULL, &e) == LOCO_OK);
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", dir);
    loco_unet_config cfg;
    CHECK(loco_unet_config_load(path, &cfg, &e) == LOCO_OK);
    loco_backend *be = mr_cpu();
    CHECK(be);
    loco_unet *u = NULL;
    CHECK(loco_unet_create(be, &cfg, partial, &u, &e) == LOCO_ENOTFOUND);
    CHECK(u == NULL);
    CHECK_MSG(strstr(e.msg, drop), "message does not name the tensor: %s", e.msg);
    loco_weights_free(partial);
    loco_weights_free(full);
    loco_backend_destroy(be);
}

TEST(unet_error_wrong_shape) {
    char dir[1024], path[1100];
    mr_model_dir(dir, sizeof dir, "sd1-tiny", "unet");
    snprintf(path, sizeof path, "%s/config.json", dir);
    loco_unet_config cfg;
    loco_err e = {0};
    CHECK(loco_unet_config_load(path, &cfg, &e) == LOCO_OK);
    for (int i = 0; i < cfg.n_blocks; i++) cfg.cross_attention_dim[i] = 40; /* the file has 32 */
    loco_weights *w = NULL;
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &w, &e) == LOCO_OK);
    loco_backend *be = mr_cpu();
    loco_unet *u = NULL;
    CHECK(loco_unet_create(be, &cfg, w, &u, &e) == LOCO_EFORMAT);
    CHECK_MSG(strstr(e.msg, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"), "message: %s",
              e.msg);
    loco_weights_free(w);
    loco_backend_destroy(be);
}

/* Sizes far beyond any real UNet are refused by the parser, naming the key, its value and the
 * limit: before, a transformer_layers_per_block of 1e5 made `loco inspect` build 3 GB of site
 * tables (1e6: killed for memory), and block_out_channels / sample_size near 2^30 overflowed the
 * int arithmetic after the parse (4 x channels, sample_size x VAE factor). */
TEST(unet_error_config_sizes_beyond_limits) {
    static const struct {
        const char *json, *key, *value;
    } cases[] = {
        {"{\"transformer_layers_per_block\":100000}", "transformer_layers_per_block", "100000"},
        {"{\"transformer_layers_per_block\":[1,1000000,1,1]}", "transformer_layers_per_block", "1000000"},
        {"{\"block_out_channels\":[536870912,640,1280,1280]}", "block_out_channels", "536870912"},
        {"{\"block_out_channels\":[32,40,1073741824,1280]}", "block_out_channels", "1073741824"},
        {"{\"sample_size\":268435456}", "sample_size", "268435456"},
        {"{\"sample_size\":[1073741824,1073741824]}", "sample_size", "1073741824"},
        {"{\"cross_attention_dim\":1073741824}", "cross_attention_dim", "1073741824"},
        {"{\"attention_head_dim\":1073741824}", "attention_head_dim", "1073741824"},
        {"{\"in_channels\":1073741824}", "in_channels", "1073741824"},
        {"{\"time_embedding_dim\":1073741824}", "time_embedding_dim", "1073741824"},
        {"{\"addition_time_embed_dim\":1073741824}", "addition_time_embed_dim", "1073741824"},
        /* every entry within its limit, the whole not: 64 layers in each of 100 transformer blocks */
        {"{\"layers_per_block\":16,\"transformer_layers_per_block\":64}", "transformer_layers_per_block", "6400"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        loco_unet_config cfg;
        loco_err e = {0};
        loco_status st = loco_unet_config_parse(cases[i].json, "unet/config.json", &cfg, &e);
        CHECK_MSG(st == LOCO_EFORMAT, "%s: status %d (%s)", cases[i].json, (int)st, e.msg);
        CHECK_MSG(strstr(e.msg, "unet/config.json") && strstr(e.msg, cases[i].key) && strstr(e.msg, cases[i].value) &&
                      strstr(e.msg, "limit"),
                  "%s: %s", cases[i].json, e.msg);
    }
    /* the limits leave room: SD-XL's 10 layers per block, and 64 in one block */
    loco_unet_config cfg;
    loco_err e = {0};
    CHECK_MSG(loco_unet_config_parse("{\"transformer_layers_per_block\":[1,2,10,64]}", "c", &cfg, &e) == LOCO_OK,
              "%s", e.msg);
    CHECK(cfg.mid_transformer_layers == 64 && cfg.down_transformer_layers[2][1] == 10);
}

TEST(unet_error_config_unknown_block_type_and_key) {
    loco_unet_config cfg;
    loco_err e = {0};
    char *bad = strdup(SD15);
    char *p = strstr(bad, "\"DownBlock2D\"");
    CHECK(p);
    memcpy(p + 1, "DownBlock9Z", 11); /* "DownBlock9Z" */
    CHECK(loco_unet_config_parse(bad, "unet/config.json", &cfg, &e) == LOCO_EUNSUPPORTED);
    CHECK_MSG(strstr(e.msg, "DownBlock9Z") && strstr(e.msg, "unet/config.json"), "message: %s", e.msg);
    free(bad);
    CHECK(loco_unet_config_parse("{\"down_block_types\":[\"SimpleCrossAttnDownBlock2D\"],\"up_block_types\":"
                                 "[\"UpBlock2D\"],\"block_out_channels\":[32]}",
                                 "c", &cfg, &e) == LOCO_EUNSUPPORTED);
    CHECK(strstr(e.msg, "SimpleCrossAttnDownBlock2D"));
    CHECK(loco_unet_config_parse("{\"attention_head_dimm\":8}", "c", &cfg, &e) == LOCO_EUNSUPPORTED);
    CHECK_MSG(strstr(e.msg, "attention_head_dimm"), "message: %s", e.msg);
    CHECK(loco_unet_config_parse("{\"class_embed_type\":\"timestep\"}", "c", &cfg, &e) == LOCO_EUNSUPPORTED);
    CHECK(strstr(e.msg, "class_embed_type"));
    CHECK(loco_unet_config_parse("{\"layers_per_block\":[2,2]}", "c", &cfg, &e) == LOCO_EFORMAT);
    CHECK(strstr(e.msg, "layers_per_block"));
    CHECK(loco_unet_config_parse("{\"transformer_layers_per_block\":[[1,1],[2,2],[1,1],[1,1]]}", "c", &cfg, &e) ==
          LOCO_EFORMAT);
    CHECK(strstr(e.msg, "reverse_transformer_layers_per_block"));
    CHECK(loco_unet_config_parse("not json", "c", &cfg, &e) == LOCO_EFORMAT);
    /* names round-trip */
    loco_unet_block_type t;
    for (int i = 0; i < LOCO_UNET_BLOCK_TYPE_COUNT; i++) {
        CHECK(loco_unet_block_type_from_name(loco_unet_block_type_name((loco_unet_block_type)i), &t) == 0);
        CHECK(t == (loco_unet_block_type)i);
    }
    CHECK(loco_unet_block_type_from_name("UNetResDownBlock2D", &t) == 0 && t == LOCO_UNET_DOWN_BLOCK_2D);
    loco_unet_addition_embed a;
    CHECK(loco_unet_addition_embed_from_name("text_time", &a) == 0 && a == LOCO_UNET_ADD_TEXT_TIME);
    CHECK(!strcmp(loco_unet_addition_embed_name(LOCO_UNET_ADD_NONE), "none"));
    loco_site_kind k;
    for (int i = 0; i < LOCO_SITE_KIND_COUNT; i++) {
        CHECK(loco_site_kind_from_name(loco_site_kind_name((loco_site_kind)i), &k) == 0 && k == (loco_site_kind)i);
    }
    CHECK(loco_site_kind_from_name("resnets", &k) == -1);
}

TEST(unet_error_bad_inputs) {
    fx f;
    CHECK(fx_open(&f, "sdxl-tiny") == 0);
    float ts[16];
    loco_unet_inputs in;
    fx_inputs(&f, 0, ts, &in);
    loco_tensor out = {0};
    loco_err e = {0};
    /* text row out of range */
    const int idx[2] = {0, 5};
    in.text_index = idx;
    CHECK(loco_unet_forward(f.u, &in, &out, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "text_index[1] = 5"), "message: %s", e.msg);
    in.text_index = NULL;
    /* SD-XL without its micro-conditioning */
    in.time_ids = NULL;
    CHECK(loco_unet_forward(f.u, &in, &out, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "text_time"), "message: %s", e.msg);
    in.time_ids = f.time_ids;
    /* any multiple of 2^(levels-1) = 4 works, non-square too; others are refused */
    loco_tensor odd = {0};
    CHECK(loco_tensor_alloc_act(f.be, 4, (int64_t[]){2, 4, 12, 4}, &odd, &e) == LOCO_OK);
    CHECK(loco_fill(f.be, &odd, 0.5f, &e) == LOCO_OK);
    in.sample = &odd;
    CHECK_MSG(loco_unet_forward(f.u, &in, &out, &e) == LOCO_OK, "%s", e.msg);
    CHECK(out.shape[0] == 2 && out.shape[1] == 4 && out.shape[2] == 12 && out.shape[3] == 4);
    loco_tensor_free(&out);
    loco_tensor_free(&odd);
    CHECK(loco_tensor_alloc_act(f.be, 4, (int64_t[]){2, 4, 6, 8}, &odd, &e) == LOCO_OK);
    CHECK(loco_fill(f.be, &odd, 0.5f, &e) == LOCO_OK);
    in.sample = &odd;
    CHECK(loco_unet_forward(f.u, &in, &out, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "6x8"), "message: %s", e.msg);
    loco_tensor_free(&odd);
    fx_close(&f);
}
