/* test_intervention.c: interventions as data: each action's effect inside batched denoise runs
 * (context = the other prompt's K/V; restore makes a site equal its reference at every step;
 * ablate sets channels; record keeps per-step copies; corrupt reproduces torch's noise), and the
 * checks that turn bad plans into clear errors. */
#include <math.h>

#include "intervention.h"
#include "method_test_util.h"
#include "method_util.h"

typedef struct run {
    loco_text_batch tb;
    loco_iv_program *prog;
    loco_generate_result out;
} run;

static void run_free(run *r) {
    loco_text_batch_free(&r->tb);
    loco_iv_program_free(r->prog);
    loco_generate_result_free(&r->out);
}

/* Denoise n samples (sample i conditioned on text row cond[i]) under a plan. */
static loco_status run_plan(loco_pipeline *p, const char *const *prompts, int n_rows, const int *cond, int n,
                            const loco_intervention *plan, int n_plan, run *r, loco_err *err) {
    memset(r, 0, sizeof *r);
    loco_denoise_params d;
    loco_denoise_params_init(&d);
    loco_sampler_opts so;
    loco_sampler_opts_init(&so);
    so.steps = 2;
    so.width = so.height = 64;
    int calls = 0;
    loco_status st;
    if ((st = loco_sampler_opts_apply(p, &so, &d, err)) || (st = loco_sampler_n_calls(p, &d, &calls, err))) return st;
    const loco_iv_layout lay = {.n_samples = n, .n_text_rows = n_rows, .cfg = 1, .n_calls = calls};
    const loco_iv_models models = {.unet = loco_pipeline_unet(p), .text = loco_pipeline_text_encoder(p, 1)};
    if ((st = loco_iv_compile(plan, n_plan, &lay, &models, &r->prog, err))) return st;
    loco_site_hooks h = loco_iv_text_hooks(r->prog);
    if ((st = loco_text_batch_encode(p, prompts, n_rows, &h, NULL, &r->tb, err))) return st;
    int un[8], gs[8];
    uint64_t seeds[8];
    for (int i = 0; i < n; i++) {
        un[i] = r->tb.uncond_row;
        gs[i] = 1;
        seeds[i] = 21;
    }
    d.n_samples = n;
    d.text = &r->tb.embeds;
    d.cond_row = cond;
    d.uncond_row = un;
    d.n_groups = n;
    d.group_size = gs;
    d.group_seed = seeds;
    d.skip_decode = 1;
    if ((st = loco_iv_apply(r->prog, &d, err))) return st;
    return loco_denoise(p, &d, &r->out, err);
}

static const char *const PROMPTS[2] = {"a photo of a house", "a town in the style of monet"};

TEST(context_on_every_layer_is_the_other_prompt) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    /* sample 0: prompt 0 with prompt 1's K/V in every layer; sample 1: prompt 1 itself. SD 1.x sees
     * the text only through cross-attention K/V, so the two trajectories must be the same. */
    const int nc = loco_unet_n_cross(loco_pipeline_unet(e.p));
    loco_intervention plan[32];
    for (int i = 0; i < nc; i++) {
        loco_intervention_init(&plan[i]);
        plan[i].action = LOCO_IV_CONTEXT;
        plan[i].target = 0;
        plan[i].cross_index = i;
        plan[i].source = 1;
    }
    const int cond[3] = {0, 1, 0};
    run r;
    loco_err err = {0};
    CHECK_MSG(run_plan(e.p, PROMPTS, 2, cond, 3, plan, nc, &r, &err) == LOCO_OK, "%s", err.msg);
    const int64_t per = r.out.latent_shape[1] * r.out.latent_shape[2] * r.out.latent_shape[3];
    const double same = loco_rel_l2(r.out.latents, r.out.latents + per, (size_t)per);
    const double plain = loco_rel_l2(r.out.latents + 2 * per, r.out.latents + per, (size_t)per);
    fprintf(stderr, "context everywhere vs the other prompt: %.3g (unedited: %.3g)\n", same, plain);
    run_free(&r);
    mt_close(&e);
    /* two samples of one batch through a whole denoising run: equal up to fp32 summation order */
    CHECK(same <= 1e-5);
    CHECK(plain > 1e-3);
}

TEST(restore_ablate_record_act_on_the_conditional_branch) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    const char *site = "up_blocks.1.attentions.0.transformer_blocks.0.attn2";
    const int32_t ch[2] = {1, 5};
    const float val[2] = {0.25f, -3.0f};
    loco_intervention plan[6];
    for (int i = 0; i < 6; i++) loco_intervention_init(&plan[i]);
    /* 0: record sample 0 (reference); 1: restore sample 1 from 0; 2: record sample 1 after the restore;
     * 3: record sample 2 untouched; 4: ablate sample 2; 5: record sample 2 after the ablation */
    plan[0] = (loco_intervention){.action = LOCO_IV_RECORD, .target = 0, .site = site, .cross_index = -1};
    plan[1] = (loco_intervention){.action = LOCO_IV_RESTORE, .target = 1, .source = 0, .site = site, .cross_index = -1};
    plan[2] = (loco_intervention){.action = LOCO_IV_RECORD, .target = 1, .site = site, .cross_index = -1};
    plan[3] = (loco_intervention){.action = LOCO_IV_RECORD, .target = 2, .site = site, .cross_index = -1};
    plan[4] = (loco_intervention){.action = LOCO_IV_ABLATE, .target = 2, .site = site, .cross_index = -1,
                                  .channels = ch, .values = val, .n_channels = 2};
    plan[5] = (loco_intervention){.action = LOCO_IV_RECORD, .target = 2, .site = site, .cross_index = -1};
    const int cond[3] = {0, 1, 1};
    run r;
    loco_err err = {0};
    CHECK_MSG(run_plan(e.p, PROMPTS, 2, cond, 3, plan, 6, &r, &err) == LOCO_OK, "%s", err.msg);
    loco_iv_recording a, b, c, d;
    CHECK(loco_iv_get_recording(r.prog, 0, &a, &err) == LOCO_OK && loco_iv_get_recording(r.prog, 2, &b, &err) == LOCO_OK);
    CHECK(loco_iv_get_recording(r.prog, 3, &c, &err) == LOCO_OK && loco_iv_get_recording(r.prog, 5, &d, &err) == LOCO_OK);
    CHECK(loco_iv_get_recording(r.prog, 1, &a, &err) == LOCO_EINVAL); /* not a record */
    CHECK(loco_iv_get_recording(r.prog, 0, &a, &err) == LOCO_OK);
    CHECK(a.data && b.data && c.data && d.data && a.steps == 3 && a.numel == b.numel && a.ndim == 2);
    const int C = (int)a.shape[1];
    int restored_equal = 1, ablated_ok = 1;
    double differs = 0;
    for (int s = 0; s < a.steps; s++)
        for (int64_t i = 0; i < a.numel; i++) {
            const size_t k = (size_t)s * a.numel + i;
            restored_equal &= a.data[k] == b.data[k];
            differs = fmax(differs, fabs(c.data[k] - a.data[k]));
            const int chn = (int)(i % C);
            const float want = chn == 1 ? 0.25f : chn == 5 ? -3.0f : c.data[k];
            ablated_ok &= d.data[k] == want;
        }
    fprintf(stderr, "recordings: %d steps x [%lld, %d]; untouched sample differs by %.3g\n", a.steps,
            (long long)a.shape[0], C, differs);
    run_free(&r);
    mt_close(&e);
    CHECK(restored_equal);
    CHECK(ablated_ok);
    CHECK(differs > 1e-3);
}

/* Hooks only where something acts: a plan of context actions only installs none (its K/V rows
 * do all the work); an ablation of a sample site installs the UNet calls' hooks; an ablation of
 * cross_k (a neuron ablation) only the text K/V projection's, so the UNet calls stay hook-free.
 * (Which calls replay a graph is test_unet_graph's concern.) */
TEST(context_only_plans_install_no_unet_hooks) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    const loco_iv_layout lay = {.n_samples = 2, .n_text_rows = 2, .cfg = 1, .n_calls = 3};
    const loco_iv_models models = {.unet = loco_pipeline_unet(e.p), .text = loco_pipeline_text_encoder(e.p, 1)};
    loco_intervention plan[3];
    for (int i = 0; i < 3; i++) loco_intervention_init(&plan[i]);
    plan[0].action = LOCO_IV_CONTEXT;
    plan[0].target = 0;
    plan[0].source = 1;
    plan[0].cross_index = 0;
    static const int32_t ch[1] = {0};
    static const float val[1] = {0.0f};
    for (int i = 1; i < 3; i++) {
        plan[i].action = LOCO_IV_ABLATE;
        plan[i].target = 1;
        plan[i].channels = ch;
        plan[i].values = val;
        plan[i].n_channels = 1;
    }
    plan[1].site = "up_blocks.1.attentions.0.transformer_blocks.0.attn2";
    plan[2].site = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k";
    const int cond[2] = {0, 1};
    loco_err err = {0};
    /* k = 0: context only; 1: context + ablate attn2; 2: context + ablate attn2.to_k */
    int call_hooks[3] = {-1, -1, -1}, kv_hooks[3] = {-1, -1, -1}, kv_rows[3] = {-1, -1, -1};
    const loco_intervention one[2] = {plan[0], plan[2]};
    for (int k = 0; k < 3; k++) {
        loco_iv_program *prog = NULL;
        loco_denoise_params d;
        loco_denoise_params_init(&d);
        d.n_samples = 2;
        d.cond_row = cond;
        loco_status st = loco_iv_compile(k == 2 ? one : plan, k == 0 ? 1 : 2, &lay, &models, &prog, &err);
        if (!st) st = loco_iv_apply(prog, &d, &err);
        CHECK_MSG(st == LOCO_OK, "%s", err.msg);
        call_hooks[k] = d.hooks.after != NULL;
        kv_hooks[k] = d.kv_hooks != NULL && d.kv_hooks->after != NULL;
        kv_rows[k] = d.cond_kv_row != NULL && d.cond_kv_row[0] != NULL && d.cond_kv_row[0][0] == 1;
        loco_iv_program_free(prog);
    }
    mt_close(&e);
    CHECK(call_hooks[0] == 0 && kv_hooks[0] == 0 && kv_rows[0] == 1);
    CHECK(call_hooks[1] == 1 && kv_hooks[1] == 0 && kv_rows[1] == 1);
    CHECK(call_hooks[2] == 0 && kv_hooks[2] == 1 && kv_rows[2] == 1);
}

/* The UNet hooks' replay_id (sites.h): restores and ablations get one, which names everything
 * they do (so the graph cache records again exactly when a plan does something else); a plan
 * that records a UNet site gets none (its hook downloads at every call). */
static int replay_id_cfg(const loco_iv_models *models, int cfg, const loco_intervention *plan, int n,
                         unsigned char *id, size_t cap, size_t *len, loco_err *err) {
    const loco_iv_layout lay = {.n_samples = 3, .n_text_rows = 2, .cfg = cfg, .n_calls = 3};
    static const int cond[3] = {0, 1, 1};
    loco_iv_program *prog = NULL;
    loco_denoise_params d;
    loco_denoise_params_init(&d);
    d.n_samples = 3;
    d.cond_row = cond;
    loco_status st = loco_iv_compile(plan, n, &lay, models, &prog, err);
    if (!st) st = loco_iv_apply(prog, &d, err);
    *len = 0;
    int has = -1;
    if (!st) {
        has = d.hooks.replay_id != NULL;
        if (d.kv_hooks) has = -1; /* no cross_k / cross_v action in these plans */
        if (has == 1 && d.hooks.replay_size <= cap) {
            memcpy(id, d.hooks.replay_id, d.hooks.replay_size);
            *len = d.hooks.replay_size;
        }
    }
    loco_iv_program_free(prog);
    return has;
}

static int replay_id_of(const loco_iv_models *models, const loco_intervention *plan, int n, unsigned char *id,
                        size_t cap, size_t *len, loco_err *err) {
    return replay_id_cfg(models, 1, plan, n, id, cap, len, err);
}

TEST(restore_and_ablate_hooks_carry_a_replay_id) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    const loco_iv_models models = {.unet = loco_pipeline_unet(e.p), .text = loco_pipeline_text_encoder(e.p, 1)};
    const char *site = "up_blocks.1.attentions.0.transformer_blocks.0.attn2";
    const char *other = "down_blocks.0.resnets.1";
    int32_t ch[2] = {1, 5};
    float val[2] = {0.25f, -3.0f};
    loco_intervention plan[3];
    for (int i = 0; i < 3; i++) loco_intervention_init(&plan[i]);
    plan[0] = (loco_intervention){.action = LOCO_IV_RESTORE, .target = 1, .source = 0, .site = site, .cross_index = -1};
    plan[1] = (loco_intervention){.action = LOCO_IV_ABLATE, .target = 2, .site = site, .cross_index = -1,
                                  .channels = ch, .values = val, .n_channels = 2};
    plan[2] = (loco_intervention){.action = LOCO_IV_RECORD, .target = 2, .site = site, .cross_index = -1};
    loco_err err = {0};
    unsigned char base[512], again[512], x[512];
    size_t nb = 0, na = 0, nx = 0;
    CHECK_MSG(replay_id_of(&models, plan, 2, base, sizeof base, &nb, &err) == 1, "%s", err.msg);
    CHECK(replay_id_of(&models, plan, 2, again, sizeof again, &na, &err) == 1);
    CHECK(nb > 0 && nb == na && memcmp(base, again, nb) == 0); /* the same plan, the same bytes */
    /* each thing the hooks act on changes the bytes */
    int changes = 0;
    plan[0].source = 2;
    changes += replay_id_of(&models, plan, 2, x, sizeof x, &nx, &err) == 1 && (nx != nb || memcmp(x, base, nb));
    plan[0].source = 0;
    plan[0].site = other;
    changes += replay_id_of(&models, plan, 2, x, sizeof x, &nx, &err) == 1 && (nx != nb || memcmp(x, base, nb));
    plan[0].site = site;
    val[1] = -2.0f;
    changes += replay_id_of(&models, plan, 2, x, sizeof x, &nx, &err) == 1 && (nx != nb || memcmp(x, base, nb));
    val[1] = -3.0f;
    ch[0] = 2;
    changes += replay_id_of(&models, plan, 2, x, sizeof x, &nx, &err) == 1 && (nx != nb || memcmp(x, base, nb));
    ch[0] = 1;
    plan[1].target = 1;
    changes += replay_id_of(&models, plan, 2, x, sizeof x, &nx, &err) == 1 && (nx != nb || memcmp(x, base, nb));
    plan[1].target = 2;
    /* a restore carrying a channel count without arrays (only ablate reads them) is the same */
    plan[0].n_channels = 3;
    const int unchanged = replay_id_of(&models, plan, 2, x, sizeof x, &nx, &err) == 1 && nx == nb &&
                          memcmp(x, base, nb) == 0;
    plan[0].n_channels = 0;
    /* the rows they act on move without guidance (no unconditional half first) */
    changes += replay_id_cfg(&models, 0, plan, 2, x, sizeof x, &nx, &err) == 1 && (nx != nb || memcmp(x, base, nb));
    /* two actions on one site run in plan order: swapped, they do something else */
    const loco_intervention swapped[2] = {plan[1], plan[0]};
    changes += replay_id_of(&models, swapped, 2, x, sizeof x, &nx, &err) == 1 && (nx != nb || memcmp(x, base, nb));
    CHECK(replay_id_of(&models, plan, 2, x, sizeof x, &nx, &err) == 1 && nx == nb && memcmp(x, base, nb) == 0);
    /* with a record: no id */
    const int with_record = replay_id_of(&models, plan, 3, x, sizeof x, &nx, &err);
    mt_close(&e);
    CHECK_MSG(changes == 7, "%d of 7 changes showed in the replay_id", changes);
    CHECK(unchanged);
    CHECK(with_record == 0);
}

/* SD-XL: a corrupt that names one encoder's embeddings corrupts that encoder's states only (the
 * text batch is [encoder 1's D1 | encoder 2's D2] per token), and one without a site both. Rows
 * of one batch may round differently (GEMM edge tiles), so "moved" means by more than 1e-3 of
 * the part's size, "kept" within 1e-5. */
TEST(corrupt_acts_on_the_encoder_it_names_sdxl) {
    mt_env e;
    MT_OPEN(e, "sdxl-tiny", NULL);
    const loco_clip_text *t1 = loco_pipeline_text_encoder(e.p, 1), *t2 = loco_pipeline_text_encoder(e.p, 2);
    const loco_iv_models models = {.unet = loco_pipeline_unet(e.p), .text = t1, .text_2 = t2};
    const loco_iv_layout lay = {.n_samples = 1, .n_text_rows = 2, .cfg = 1, .n_calls = 1};
    const int64_t D1 = loco_clip_text_get_config(t1)->hidden_size;
    static const int pos[2] = {1, 2};
    const char *sites[3] = {"text_model.embeddings", LOCO_IV_TEXT2_PREFIX "text_model.embeddings", NULL};
    const char *prompts[2] = {"a town in the style of monet", "a town in the style of monet"};
    double rel[3][2] = {{0}}; /* per plan: how far encoder 1's part of row 1 moved from row 0's, encoder 2's */
    loco_err err = {0};
    for (int k = 0; k < 3; k++) {
        loco_intervention iv;
        loco_intervention_init(&iv);
        iv.action = LOCO_IV_CORRUPT;
        iv.target = 1;
        iv.site = sites[k];
        iv.positions = pos;
        iv.n_positions = 2;
        iv.seed = 5;
        loco_iv_program *prog = NULL;
        CHECK_MSG(loco_iv_compile(&iv, 1, &lay, &models, &prog, &err) == LOCO_OK, "%s", err.msg);
        const loco_site_hooks h1 = loco_iv_text_hooks(prog), h2 = loco_iv_text_2_hooks(prog);
        loco_text_batch tb;
        CHECK_MSG(loco_text_batch_encode(e.p, prompts, 2, &h1, &h2, &tb, &err) == LOCO_OK, "%s", err.msg);
        const int64_t L = tb.embeds.shape[1], D = tb.embeds.shape[2];
        float *h = malloc((size_t)loco_tensor_numel(&tb.embeds) * sizeof *h);
        CHECK(h && loco_tensor_download_f32(&tb.embeds, h, &err) == LOCO_OK);
        double num[2] = {0, 0}, den[2] = {0, 0};
        for (int64_t q = 0; q < L * D; q++) {
            const int part = q % D >= D1;
            num[part] += ((double)h[L * D + q] - h[q]) * ((double)h[L * D + q] - h[q]);
            den[part] += (double)h[q] * h[q];
        }
        for (int i = 0; i < 2; i++) rel[k][i] = sqrt(num[i] / (den[i] > 0 ? den[i] : 1));
        free(h);
        loco_text_batch_free(&tb);
        loco_iv_program_free(prog);
    }
    mt_close(&e);
    fprintf(stderr, "corrupt moved encoder 1 / 2: named 1: %.3g / %.3g, named 2: %.3g / %.3g, both: %.3g / %.3g\n",
            rel[0][0], rel[0][1], rel[1][0], rel[1][1], rel[2][0], rel[2][1]);
    CHECK(rel[0][0] > 1e-3 && rel[0][1] < 1e-5);
    CHECK(rel[1][0] < 1e-5 && rel[1][1] > 1e-3);
    CHECK(rel[2][0] > 1e-3 && rel[2][1] > 1e-3);
}

TEST(corruption_noise_matches_torch) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", "methods/trace_sd1.safetensors");
    json_t *pj = mt_meta(e.ref, "prompt"), *sj = mt_meta(e.ref, "subject");
    const char *prompt = json_string_value(pj);
    int *pos = NULL, np = 0, eos = 0;
    loco_err err = {0};
    CHECK_MSG(loco_subject_positions(e.p, prompt, json_string_value(sj), &pos, &np, &eos, &err) == LOCO_OK, "%s", err.msg);
    loco_intervention iv;
    loco_intervention_init(&iv);
    iv.action = LOCO_IV_CORRUPT;
    iv.target = 1;
    iv.positions = pos;
    iv.n_positions = np;
    iv.scale = (float)mt_meta_num(e.ref, "scale");
    iv.seed = (uint64_t)mt_meta_num(e.ref, "noise_seed");
    const loco_iv_layout lay = {.n_samples = 1, .n_text_rows = 2, .cfg = 1, .n_calls = 1};
    const loco_iv_models models = {.unet = loco_pipeline_unet(e.p), .text = loco_pipeline_text_encoder(e.p, 1)};
    loco_iv_program *prog = NULL;
    CHECK_MSG(loco_iv_compile(&iv, 1, &lay, &models, &prog, &err) == LOCO_OK, "%s", err.msg);
    loco_site_hooks h = loco_iv_text_hooks(prog);
    const char *prompts[2] = {prompt, prompt};
    loco_text_batch tb;
    CHECK_MSG(loco_text_batch_encode(e.p, prompts, 2, &h, NULL, &tb, &err) == LOCO_OK, "%s", err.msg);
    float *got = malloc((size_t)loco_tensor_numel(&tb.embeds) * sizeof *got);
    CHECK(loco_tensor_download_f32(&tb.embeds, got, &err) == LOCO_OK);
    int64_t n = 0;
    const float *clean = mt_f32(e.ref, "prompt_embeds_clean", &n), *corr = mt_f32(e.ref, "prompt_embeds_corrupted", NULL);
    const double ec = loco_rel_l2(got, clean, (size_t)n), ek = loco_rel_l2(got + n, corr, (size_t)n);
    const double moved = loco_rel_l2(corr, clean, (size_t)n);
    fprintf(stderr, "text embeddings: clean %.3g, corrupted %.3g (corruption moved them by %.3g)\n", ec, ek, moved);
    free(got);
    free(pos);
    loco_text_batch_free(&tb);
    loco_iv_program_free(prog);
    json_decref(pj);
    json_decref(sj);
    mt_close(&e);
    CHECK(ec <= 1e-5 && ek <= 1e-5 && moved > 1e-2);
}

TEST(bad_plans_fail_clearly) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    const loco_iv_layout lay = {.n_samples = 2, .n_text_rows = 2, .cfg = 1, .n_calls = 3};
    const loco_iv_models models = {.unet = loco_pipeline_unet(e.p), .text = loco_pipeline_text_encoder(e.p, 1)};
    const int nc = loco_unet_n_cross(models.unet);
    loco_iv_program *prog = NULL;
    loco_err err = {0};
    loco_intervention iv;
    const int32_t ch[1] = {0};
    const float val[1] = {0};
    const int pos[1] = {3};
#define EXPECT(st_, text_)                                                                                  \
    do {                                                                                                    \
        CHECK(loco_iv_compile(&iv, 1, &lay, &models, &prog, &err) == (st_));                                \
        CHECK_MSG(strstr(err.msg, text_) != NULL, "message '%s' lacks '%s'", err.msg, text_);              \
    } while (0)
    loco_intervention_init(&iv);
    iv.action = LOCO_IV_RESTORE;
    iv.site = "down_blocks.0.resnets.9";
    iv.target = 1;
    EXPECT(LOCO_ENOTFOUND, "unknown site 'down_blocks.0.resnets.9'");
    iv.site = "down_blocks.0.resnets.0";
    iv.source = 1;
    EXPECT(LOCO_EINVAL, "restore from itself");
    iv.target = 2;
    EXPECT(LOCO_EINVAL, "sample 2 is out of range (2 samples)");
    loco_intervention_init(&iv);
    iv.action = LOCO_IV_CONTEXT;
    iv.cross_index = nc;
    iv.source = 1;
    EXPECT(LOCO_EINVAL, "out of range");
    iv.cross_index = 0;
    iv.source = 5;
    EXPECT(LOCO_EINVAL, "text row 5 is out of range");
    iv.source = 1;
    iv.site = "down_blocks.0.resnets.0";
    EXPECT(LOCO_ENOTFOUND, "not a cross-attention layer");
    loco_intervention_init(&iv);
    iv.action = LOCO_IV_ABLATE;
    iv.site = "mid_block.resnets.0";
    iv.channels = ch;
    iv.values = val;
    iv.n_channels = 1;
    EXPECT(LOCO_EINVAL, "ResNet output");
    iv.site = "mid_block.attentions.0.transformer_blocks.0.ff";
    iv.positions = pos;
    iv.n_positions = 1;
    EXPECT(LOCO_EINVAL, "token positions apply to text-encoder sites only");
    iv.n_channels = 0;
    iv.positions = NULL;
    iv.n_positions = 0;
    EXPECT(LOCO_EINVAL, "channels and values are required");
    loco_intervention_init(&iv);
    iv.action = LOCO_IV_CORRUPT;
    iv.target = 1;
    EXPECT(LOCO_EINVAL, "no token positions");
    const int far[1] = {80};
    iv.positions = far;
    iv.n_positions = 1;
    EXPECT(LOCO_EINVAL, "token position 80");
    loco_intervention_init(&iv);
    iv.action = LOCO_IV_RECORD;
    iv.site = "text_encoder_2.text_model.encoder.layers.0.mlp";
    EXPECT(LOCO_ENOTFOUND, "no text_encoder_2");
#undef EXPECT
    /* valid ones compile; text sites resolve; names round-trip */
    loco_intervention ok[2];
    loco_intervention_init(&ok[0]);
    ok[0].action = LOCO_IV_RECORD;
    ok[0].site = "text_model.encoder.layers.1.self_attn.out_proj";
    ok[0].target = 1;
    loco_intervention_init(&ok[1]);
    ok[1].action = LOCO_IV_ABLATE;
    ok[1].site = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v";
    ok[1].channels = ch;
    ok[1].values = val;
    ok[1].n_channels = 1;
    CHECK_MSG(loco_iv_compile(ok, 2, &lay, &models, &prog, &err) == LOCO_OK, "%s", err.msg);
    loco_iv_program_free(prog);
    /* every text-encoder site `loco inspect` lists (the config-only table) is accepted by name */
    loco_site *listed = NULL;
    int nl = 0;
    CHECK(loco_clip_text_config_sites(loco_clip_text_get_config(models.text), &listed, &nl, &err) == LOCO_OK);
    int bad = -1;
    for (int i = 0; i < nl && bad < 0; i++) {
        loco_intervention_init(&ok[0]);
        ok[0].action = LOCO_IV_RECORD;
        ok[0].site = listed[i].name;
        if (loco_iv_compile(ok, 1, &lay, &models, &prog, &err) != LOCO_OK) bad = i;
        loco_iv_program_free(prog);
        prog = NULL;
    }
    CHECK_MSG(bad < 0, "listed site '%s' refused: %s", listed[bad].name, err.msg);
    loco_clip_text_sites_free(listed, nl);
    loco_iv_action a;
    for (int i = 0; i < LOCO_IV_ACTION_COUNT; i++)
        CHECK(loco_iv_action_from_name(loco_iv_action_name((loco_iv_action)i), &a) == 0 && a == (loco_iv_action)i);
    CHECK(loco_iv_action_from_name("erase", &a) == -1);
    mt_close(&e);
}
