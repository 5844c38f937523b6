/* test_trace.c: causal tracing against the Python reference (tests/fixtures/refs/methods/
 * trace_sd1.safetensors, tools/fixtures/refs_methods.py: one diffusers pipeline call per restored
 * component with forward hooks): the corruption noise, every UNet component's and every text
 * state's CLIP score within 1e-4, the trajectories' final latents within 1e-4; the heatmap and the
 * JSON; invalid requests fail with a clear message. */
#include <math.h>

#include "graph_mock_util.h"
#include "method_test_util.h"
#include "trace.h"

static void params_from_ref(const loco_safetensors *f, loco_trace_params *t, char **strs) {
    loco_trace_params_init(t);
    json_t *j;
    const char *keys[3] = {"prompt", "subject", "attribute"};
    for (int i = 0; i < 3; i++) {
        j = mt_meta(f, keys[i]);
        strs[i] = strdup(j && json_is_string(j) ? json_string_value(j) : "");
        json_decref(j);
    }
    t->prompt = strs[0];
    t->subject = strs[1];
    t->attribute = strs[2];
    t->seed = (uint64_t)mt_meta_num(f, "seed");
    t->noise_seed = (uint64_t)mt_meta_num(f, "noise_seed");
    t->noise_scale = (float)mt_meta_num(f, "scale");
    t->sampler.steps = (int)mt_meta_num(f, "steps");
    t->sampler.guidance_scale = (float)mt_meta_num(f, "guidance");
    t->sampler.width = (int)mt_meta_num(f, "width");
    t->sampler.height = (int)mt_meta_num(f, "height");
}

TEST(sd1_matches_diffusers_hooks) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", "methods/trace_sd1.safetensors");
    char *strs[3];
    loco_trace_params t;
    params_from_ref(e.ref, &t, strs);
    t.keep_latents = 1;
    t.max_batch = 24;
    loco_trace_result r;
    loco_err err = {0};
    CHECK_MSG(loco_trace_run(e.p, e.sc, &t, &r, &err) == LOCO_OK, "%s", err.msg);

    /* subject tokens, std and the component list in the reference's execution order */
    const loco_stored_tensor *sp = loco_safetensors_find(e.ref, "subject_positions");
    const loco_stored_tensor *sd = loco_safetensors_find(e.ref, "token_embedding_std");
    CHECK(sp && sd && sp->shape[0] == r.n_subject);
    for (int i = 0; i < r.n_subject; i++) CHECK(((const int64_t *)sp->data)[i] == r.subject_positions[i]);
    CHECK(fabs(((const double *)sd->data)[0] - r.embed_std) <= 1e-12 * r.embed_std);
    json_t *comps = mt_meta(e.ref, "components");
    CHECK((int)json_array_size(comps) == r.n_unet);
    for (int i = 0; i < r.n_unet; i++) CHECK(strcmp(r.unet[i].site, json_string_value(json_array_get(comps, (size_t)i))) == 0);
    json_decref(comps);
    CHECK((int)mt_meta_num(e.ref, "eos_position") == r.eos_position);

    int64_t n = 0, numel = 0;
    const float *ucos = mt_f32(e.ref, "unet_cosine", &n), *ulat = mt_f32(e.ref, "unet_latents", NULL),
                *tcos = mt_f32(e.ref, "text_cosine", NULL), *tlat = mt_f32(e.ref, "text_latents", NULL),
                *clean_lat = mt_f32(e.ref, "clean_latents", &numel), *corr_lat = mt_f32(e.ref, "corrupted_latents", NULL),
                *cc = mt_f32(e.ref, "clean_cosine", NULL), *kc = mt_f32(e.ref, "corrupted_cosine", NULL);
    CHECK(ucos && ulat && tcos && tlat && clean_lat && corr_lat && cc && kc && n == r.n_unet && numel == r.latent_numel);
    double worst_cos = fmax(fabs(r.clean.cosine - cc[0]), fabs(r.corrupted.cosine - kc[0]));
    double worst_lat = fmax(loco_rel_l2(r.clean_latents, clean_lat, (size_t)numel),
                            loco_rel_l2(r.corrupted_latents, corr_lat, (size_t)numel));
    for (int i = 0; i < r.n_unet; i++) {
        worst_cos = fmax(worst_cos, fabs(r.unet[i].score.cosine - ucos[i]));
        worst_lat = fmax(worst_lat, loco_rel_l2(r.unet[i].latents, ulat + (size_t)i * numel, (size_t)numel));
    }
    CHECK(r.n_layers == 3 && r.n_positions == r.eos_position + 1);
    for (int l = 0; l < r.n_layers; l++)
        for (int m = 0; m < LOCO_TRACE_MOD_COUNT; m++)
            for (int q = 0; q < r.n_positions; q++) {
                const loco_trace_entry *en = loco_trace_text_entry(&r, l, (loco_trace_module)m, q);
                const size_t k = ((size_t)l * 2 + (size_t)m) * (size_t)r.n_positions + (size_t)q;
                worst_cos = fmax(worst_cos, fabs(en->score.cosine - tcos[k]));
                worst_lat = fmax(worst_lat, loco_rel_l2(en->latents, tlat + k * (size_t)numel, (size_t)numel));
            }
    /* corruption matters: the clean and corrupted images differ */
    const double moved = loco_rel_l2(r.corrupted_latents, r.clean_latents, (size_t)numel);
    fprintf(stderr,
            "trace: %d components + %dx2x%d text states; worst |cos diff| %.3g, worst final-latent rel err %.3g; "
            "clean %.4f corrupted %.4f (latents moved %.3g); %.2fs\n",
            r.n_unet, r.n_layers, r.n_positions, worst_cos, worst_lat, r.clean.cosine, r.corrupted.cosine, moved,
            r.seconds);

    loco_image h = {0};
    CHECK_MSG(loco_trace_heatmap(&r, LOCO_TRACE_MOD_MLP, 8, &h, &err) == LOCO_OK, "%s", err.msg);
    CHECK(h.width == 8 * r.n_positions && h.height == 8 * r.n_layers);
    loco_image_free(&h);
    json_t *j = NULL;
    CHECK_MSG(loco_trace_result_json(&r, &t, &j, &err) == LOCO_OK, "%s", err.msg);
    CHECK(json_array_size(json_object_get(j, "unet")) == (size_t)r.n_unet);
    CHECK(json_array_size(json_object_get(json_object_get(j, "text_encoder"), "mlp")) == (size_t)r.n_layers);
    json_decref(j);
    loco_trace_result_free(&r);
    for (int i = 0; i < 3; i++) free(strs[i]);
    mt_close(&e);
    CHECK(worst_cos <= 1e-4);
    CHECK(worst_lat <= 1e-4);
    CHECK(moved > 1e-3);
}

TEST(invalid_requests_fail_clearly) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    loco_trace_params t;
    loco_trace_params_init(&t);
    t.prompt = "a house by van gogh";
    t.subject = "van gogh";
    t.sampler.steps = 2;
    t.sampler.width = t.sampler.height = 64;
    loco_err err = {0};
    CHECK(loco_trace_validate(e.p, &t, &err) == LOCO_OK);

    loco_trace_params b = t;
    b.subject = "monet";
    CHECK(loco_trace_validate(e.p, &b, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "subject tokens are not in the prompt") != NULL && strstr(err.msg, "monet") != NULL);
    b = t;
    b.prompt = "";
    CHECK(loco_trace_validate(e.p, &b, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "prompt is empty") != NULL);
    const char *bad_site[1] = {"down_blocks.7.resnets.0"};
    b = t;
    b.components = bad_site;
    b.n_components = 1;
    CHECK(loco_trace_validate(e.p, &b, &err) == LOCO_ENOTFOUND);
    CHECK(strstr(err.msg, "unknown UNet site 'down_blocks.7.resnets.0'") != NULL);
    const char *kv_site[1] = {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"};
    b.components = kv_site;
    CHECK(loco_trace_validate(e.p, &b, &err) == LOCO_EINVAL);
    const int pos[1] = {77};
    b = t;
    b.positions = pos;
    b.n_positions = 1;
    CHECK(loco_trace_validate(e.p, &b, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "outside") != NULL);
    b = t;
    b.max_batch = 2;
    CHECK(loco_trace_validate(e.p, &b, &err) == LOCO_EINVAL);
    loco_trace_scope s;
    CHECK(loco_trace_scope_from_name("text", &s) == 0 && s == LOCO_TRACE_TEXT);
    CHECK(strcmp(loco_trace_scope_name(LOCO_TRACE_UNET), "unet") == 0 && loco_trace_scope_from_name("x", &s) == -1);

    /* a small valid run: two named components, scope unet, small batches */
    const char *two[2] = {"mid_block.resnets.1", "up_blocks.1.attentions.0.transformer_blocks.0.attn1"};
    b = t;
    b.scope = LOCO_TRACE_UNET;
    b.components = two;
    b.n_components = 2;
    b.max_batch = 3;
    b.keep_images = 1;
    loco_trace_result r;
    CHECK_MSG(loco_trace_run(e.p, e.sc, &b, &r, &err) == LOCO_OK, "%s", err.msg);
    CHECK(r.n_unet == 2 && r.n_layers == 0 && strcmp(r.unet[1].site, two[1]) == 0);
    CHECK(r.unet[0].image.width == 64 && r.clean_image.width == 64);
    CHECK(fabs(r.unet[0].indirect_effect - (r.unet[0].score.cosine - r.corrupted.cosine)) < 1e-12);
    loco_image h;
    CHECK(loco_trace_heatmap(&r, LOCO_TRACE_MOD_MLP, 8, &h, &err) == LOCO_EINVAL);
    loco_trace_result_free(&r);
    mt_close(&e);
}

/* SD 2.x (v-prediction, OpenCLIP text with '!' padding) and SD-XL (two text encoders: the noise hits
 * both encoders' subject embeddings; text states are text_encoder's) run end to end. */
static void small_run(const char *model) {
    mt_env e;
    MT_OPEN(e, model, NULL);
    loco_trace_params t;
    const char *comps[2];
    static const int pos[2] = {1, 11}; /* BOS, and "monet"'s last token (its tokens sit at 10, 11) */
    mt_small_trace(&t, e.p, comps, pos, 2);
    loco_trace_result r;
    loco_err err = {0};
    CHECK_MSG(loco_trace_run(e.p, e.sc, &t, &r, &err) == LOCO_OK, "%s: %s", model, err.msg);
    const double moved = loco_rel_l2(r.corrupted_latents, r.clean_latents, (size_t)r.latent_numel);
    int finite = isfinite(r.clean.cosine) && isfinite(r.corrupted.cosine);
    for (int i = 0; i < r.n_unet; i++) finite &= isfinite(r.unet[i].score.cosine);
    for (int i = 0; i < r.n_layers * LOCO_TRACE_MOD_COUNT * r.n_positions; i++) finite &= isfinite(r.text[i].score.cosine);
    /* restoring the last subject token's MLP output in the last layer the embeddings see changes the
     * corrupted run (SD-XL conditions on the penultimate layer: its last layer is not used at all) */
    const int top = loco_pipeline_family(e.p) == LOCO_FAMILY_SDXL ? r.n_layers - 2 : r.n_layers - 1;
    const loco_trace_entry *last = loco_trace_text_entry(&r, top, LOCO_TRACE_MOD_MLP, 1);
    const double restored_moved = loco_rel_l2(last->latents, r.corrupted_latents, (size_t)r.latent_numel);
    fprintf(stderr, "%s: subject at %d, clean %.4f corrupted %.4f (moved %.3g), last-layer mlp restore moved %.3g\n",
            model, r.subject_positions[0], r.clean.cosine, r.corrupted.cosine, moved, restored_moved);
    CHECK(r.n_subject == 2 && r.subject_positions[0] == 10 && r.n_unet == 2 && r.n_positions == 2);
    loco_trace_result_free(&r);
    mt_close(&e);
    CHECK(finite);
    CHECK(moved > 1e-3 && restored_moved > 1e-4);
}

TEST(sd2_runs) { small_run("sd2-tiny"); }
TEST(sdxl_runs) { small_run("sdxl-tiny"); }

/* The restored runs on a backend with graphs (graph_mock_util.h: CUDA's recording semantics over
 * the CPU): the restore hooks carry a replay_id (sites.h), so their UNet calls are recorded and
 * replayed, once per batch of components; every score and final latent must equal the plain
 * CPU's bit for bit. */
TEST(unet_components_replay_graphs) {
    mock *m = mock_new();
    CHECK(m != NULL);
    mt_env em, ec;
    CHECK(mt_open_on(&em, &m->be, "sd1-tiny", NULL) == 0);
    MT_OPEN(ec, "sd1-tiny", NULL);
    loco_trace_params t;
    const char *two[2];
    mt_small_trace(&t, em.p, two, NULL, 0);
    int ns;
    const loco_site *sites = loco_unet_sites(loco_pipeline_unet(em.p), &ns);
    const char *comps[4];
    int nc = 0;
    for (int i = 0; i < ns && nc < 4; i++)
        if (sites[i].kind == LOCO_SITE_RESNET || sites[i].kind == LOCO_SITE_CROSS_ATTN || sites[i].kind == LOCO_SITE_FF)
            comps[nc++] = sites[i].name;
    CHECK(nc == 4);
    t.components = comps;
    t.n_components = nc;
    t.scope = LOCO_TRACE_UNET;
    t.sampler.steps = 4;
    t.max_batch = 3; /* batches: clean, corrupted, c0 | clean, c1, c2 | clean, c3 */
    loco_trace_result rm, rc;
    loco_err err = {0};
    CHECK_MSG(loco_trace_run(em.p, em.sc, &t, &rm, &err) == LOCO_OK, "%s", err.msg);
    CHECK_MSG(loco_trace_run(ec.p, ec.sc, &t, &rc, &err) == LOCO_OK, "%s", err.msg);
    const size_t n = (size_t)rc.latent_numel;
    int same = rm.n_unet == nc && rc.n_unet == nc && rm.clean.cosine == rc.clean.cosine &&
               rm.corrupted.cosine == rc.corrupted.cosine &&
               memcmp(rm.corrupted_latents, rc.corrupted_latents, n * sizeof(float)) == 0;
    for (int i = 0; same && i < nc; i++)
        same = rm.unet[i].score.cosine == rc.unet[i].score.cosine &&
               memcmp(rm.unet[i].latents, rc.unet[i].latents, n * sizeof(float)) == 0;
    const double moved = nc ? loco_rel_l2(rc.unet[nc - 1].latents, rc.corrupted_latents, n) : 0;
    const long n_calls = rc.n_calls;
    loco_unet_graph_stats st;
    loco_unet_graph_stats_get(loco_pipeline_unet(em.p), &st);
    fprintf(stderr, "trace on graphs: %ld captures, %ld replays, %ld plain; last restore moved %.3g; '%s'\n",
            st.captures, st.replays, st.eager_calls, moved, st.last_error);
    loco_trace_result_free(&rm);
    loco_trace_result_free(&rc);
    mt_close(&em);
    mt_close(&ec);
    CHECK(same);
    CHECK(moved > 1e-4); /* the restores did something */
    /* batches of 3, 3 and 2 samples, the two of 3 with different restores: the first warms its
     * shape up and records at its second call, the second records at its first call (the pool
     * fits), the third warms up its own shape; every recorded call replays */
    CHECK_MSG(st.captures == 3 && st.eager_calls == 2 && st.replays == 3 * n_calls - 2,
              "%ld captures, %ld replays, %ld plain in %ld calls", st.captures, st.replays, st.eager_calls, 3 * n_calls);
}

/* Progress and cancel (trace.h): a UNet trace of 4 components in batches of 3 on a backend with
 * graphs (whose statistics count the UNet calls). Three batches, every one with its clean run:
 * total = 3 x the schedule's calls from the first callback on, done = the UNet calls made. Then
 * cancels at the first report, mid-batch, at a batch's last step, at the next batch's first step,
 * at a cancel point between decodes or scoring chunks and at the very last step: LOCO_ECANCELLED
 * each time, saying how far it got, with no callback and no UNet call after the one that
 * cancelled. */
TEST(progress_counts_steps_and_cancel_stops_at_once) {
    mock *m = mock_new();
    CHECK(m != NULL);
    mt_env e;
    CHECK(mt_open_on(&e, &m->be, "sd1-tiny", NULL) == 0);
    loco_trace_params t;
    const char *two[2];
    mt_small_trace(&t, e.p, two, NULL, 0);
    int ns;
    const loco_site *sites = loco_unet_sites(loco_pipeline_unet(e.p), &ns);
    const char *comps[4];
    int nc = 0;
    for (int i = 0; i < ns && nc < 4; i++)
        if (sites[i].kind == LOCO_SITE_RESNET || sites[i].kind == LOCO_SITE_CROSS_ATTN) comps[nc++] = sites[i].name;
    CHECK(nc == 4);
    t.components = comps;
    t.n_components = nc;
    t.scope = LOCO_TRACE_UNET;
    t.sampler.steps = 3;
    t.max_batch = 3; /* clean, corrupted, c0 | clean, c1, c2 | clean, c3 */
    t.keep_latents = 0;
    const loco_unet *u = loco_pipeline_unet(e.p);
    mt_progress pr;
    mt_progress_init(&pr, u, -1, 0);
    t.progress = mt_progress_fn;
    t.progress_ctx = &pr;
    loco_trace_result r;
    loco_err err = {0};
    long calls = mt_unet_calls(u);
    CHECK_MSG(loco_trace_run(e.p, e.sc, &t, &r, &err) == LOCO_OK, "%s", err.msg);
    calls = mt_unet_calls(u) - calls;
    const int n_calls = r.n_calls, total = 3 * n_calls;
    loco_trace_result_free(&r);
    const char *why = mt_progress_complete(&pr, total);
    CHECK_MSG(!why, "%s: %d callbacks, first (%d, %d), last (%d, %d); want total %d", why, pr.n, pr.done[0],
              pr.total[0], pr.done[pr.n - 1], pr.total[pr.n - 1], total);
    CHECK_MSG(calls == total, "%ld UNet calls for a total of %d steps", calls, total);
    fprintf(stderr, "trace progress: %d callbacks, total %d = 3 batches x %d calls\n", pr.n, total, n_calls);

    const struct {
        int at, repeat;
    } cases[] = {{0, 0}, {1, 0}, {n_calls, 0}, {n_calls + 1, 0}, {-1, 1}, {total, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mt_progress_init(&pr, u, cases[i].at, cases[i].repeat);
        const long before = mt_unet_calls(u);
        const loco_status st = loco_trace_run(e.p, e.sc, &t, &r, &err);
        const long after = mt_unet_calls(u) - pr.calls_at_cancel;
        CHECK_MSG(st == LOCO_ECANCELLED && pr.cancelled_at >= 0, "case %zu: status %d (%s)", i, (int)st, err.msg);
        const int done = pr.done[pr.cancelled_at];
        char want[128];
        snprintf(want, sizeof want, "trace: cancelled after %d of %d denoising steps", done, total);
        fprintf(stderr, "cancel case %zu: at callback %d (step %d of %d), %ld UNet calls after it: '%s'\n", i,
                pr.cancelled_at, done, total, after, err.msg);
        CHECK_MSG(pr.cancelled_at == pr.n - 1, "case %zu: %d callbacks after the cancel", i,
                  pr.n - 1 - pr.cancelled_at);
        CHECK_MSG(after <= 1, "case %zu: %ld UNet calls after the cancel", i, after);
        CHECK_MSG(pr.calls_at_cancel - before == done, "case %zu: %ld UNet calls at step %d", i,
                  pr.calls_at_cancel - before, done);
        CHECK_MSG(strstr(err.msg, want) != NULL, "case %zu: '%s' lacks '%s'", i, err.msg, want);
        CHECK(r.unet == NULL && r.n_unet == 0); /* a failed run leaves nothing to free */
        if (cases[i].repeat) CHECK(done == n_calls); /* the first batch's decodes, before the next batch */
    }
    mt_close(&e);
}

/* The report's causal marks on a made-up result: states above the threshold, strictly, and the
 * summary lists exactly those, UNet components by name, text states with layer and position. */
TEST(causal_threshold_marks_states) {
    loco_trace_entry unet[3], text[2 * LOCO_TRACE_MOD_COUNT];
    memset(unet, 0, sizeof unet);
    memset(text, 0, sizeof text);
    const double us[3] = {10.0, 31.0, 30.0}, ts[4] = {29.9, 45.0, 30.0, 0.0};
    for (int i = 0; i < 3; i++) {
        snprintf(unet[i].site, sizeof unet[i].site, "down_blocks.%d.resnets.0", i);
        unet[i].kind = LOCO_SITE_RESNET;
        unet[i].layer = unet[i].position = -1;
        unet[i].score.score = us[i];
        unet[i].score.cosine = us[i] / 100;
    }
    for (int i = 0; i < 4; i++) {
        snprintf(text[i].site, sizeof text[i].site, "text_model.encoder.layers.%d.%s", i / 2,
                 i % 2 ? "mlp" : "self_attn");
        text[i].layer = i / 2;
        text[i].position = 5;
        text[i].score.score = ts[i];
        text[i].score.cosine = ts[i] / 100;
    }
    int subj = 5, pos = 5;
    loco_trace_result r;
    memset(&r, 0, sizeof r);
    r.n_subject = 1;
    r.subject_positions = &subj;
    r.n_unet = 3;
    r.unet = unet;
    r.n_layers = 2; /* 2 layers x 2 modules x 1 position: the 4 text entries */
    r.n_positions = 1;
    r.positions = &pos;
    r.text = text;
    loco_trace_params t;
    loco_trace_params_init(&t);
    t.prompt = "a house by van gogh";
    t.subject = "van gogh";
    json_t *j = NULL;
    loco_err err = {0};
    CHECK(loco_trace_result_json(&r, &t, &j, &err) == LOCO_OK);
    CHECK(json_object_get(j, "causal") == NULL); /* no threshold: scores only */
    CHECK(json_object_get(json_array_get(json_object_get(j, "unet"), 0), "causal") == NULL);
    json_decref(j);
    t.causal_threshold = 30.0;
    CHECK(loco_trace_result_json(&r, &t, &j, &err) == LOCO_OK);
    const json_t *u = json_object_get(j, "unet");
    const int want_u[3] = {0, 1, 0};
    for (int i = 0; i < 3; i++)
        CHECK_MSG(json_is_true(json_object_get(json_array_get(u, (size_t)i), "causal")) == want_u[i], "unet %d", i);
    const json_t *c = json_object_get(j, "causal");
    CHECK(json_real_value(json_object_get(c, "threshold")) == 30.0);
    CHECK(json_array_size(json_object_get(c, "unet")) == 1);
    CHECK(strcmp(json_string_value(json_array_get(json_object_get(c, "unet"), 0)), "down_blocks.1.resnets.0") == 0);
    const json_t *ct = json_object_get(c, "text_encoder");
    CHECK(json_array_size(ct) == 1); /* 45 only: 30.0 is not above 30 */
    CHECK(json_integer_value(json_object_get(json_array_get(ct, 0), "layer")) == 0);
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(ct, 0), "site")),
                 "text_model.encoder.layers.0.mlp") == 0);
    json_decref(j);
    t.causal_threshold = 101;
    CHECK(loco_trace_validate(NULL, &t, &err) != LOCO_OK && strstr(err.msg, "causal_threshold"));
}
