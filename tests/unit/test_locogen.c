/* test_locogen.c: LocoGen against the Python reference (tests/fixtures/refs/methods/locogen_*.safetensors,
 * tools/fixtures/refs_methods.py: one diffusers pipeline call per window with forward hooks on
 * attn2.to_k/to_v): every window's image (final latents 1e-4 relative, pixels within 2/255), every
 * CLIP cosine and window mean within 1e-4, the same localized window; batched equals one by one;
 * progress counts denoising steps and a cancel stops at once; invalid requests fail with a clear
 * message. */
#include <math.h>

#include "graph_mock_util.h"
#include "locogen.h"
#include "method_test_util.h"

typedef struct ref_cfg {
    char **prompts, **altered, **cross;
    int n_prompts, n_altered, n_cross;
    uint64_t seeds[8];
    int n_seeds;
    loco_locogen_params g;
} ref_cfg;

static int ref_cfg_load(const loco_safetensors *f, ref_cfg *c) {
    memset(c, 0, sizeof *c);
    json_t *p = mt_meta(f, "prompts"), *a = mt_meta(f, "altered"), *s = mt_meta(f, "seeds"), *x = mt_meta(f, "cross_layers"),
           *k = mt_meta(f, "kind");
    c->prompts = mt_strings(p, &c->n_prompts);
    c->altered = mt_strings(a, &c->n_altered);
    c->cross = mt_strings(x, &c->n_cross);
    for (size_t i = 0; json_is_array(s) && i < json_array_size(s) && i < 8; i++)
        c->seeds[c->n_seeds++] = (uint64_t)json_integer_value(json_array_get(s, i));
    loco_locogen_params_init(&c->g);
    c->g.n_prompts = c->n_prompts;
    c->g.prompts = (const char *const *)c->prompts;
    c->g.altered = (const char *const *)c->altered;
    c->g.n_seeds = c->n_seeds;
    c->g.seeds = c->seeds;
    c->g.window = (int)mt_meta_num(f, "window");
    int bad = k ? loco_attribute_kind_from_name(json_string_value(k), &c->g.kind) : -1;
    c->g.sampler.steps = (int)mt_meta_num(f, "steps");
    c->g.sampler.guidance_scale = (float)mt_meta_num(f, "guidance");
    c->g.sampler.width = (int)mt_meta_num(f, "width");
    c->g.sampler.height = (int)mt_meta_num(f, "height");
    json_decref(p);
    json_decref(a);
    json_decref(s);
    json_decref(x);
    json_decref(k);
    return bad || c->n_prompts < 1 || c->n_prompts != c->n_altered || c->n_seeds < 1 ? -1 : 0;
}

static void ref_cfg_free(ref_cfg *c) {
    mt_strings_free(c->prompts);
    mt_strings_free(c->altered);
    mt_strings_free(c->cross);
}

static void parity(const char *model, const char *ref) {
    mt_env e;
    MT_OPEN(e, model, ref);
    ref_cfg c;
    CHECK(ref_cfg_load(e.ref, &c) == 0);
    /* the cross-attention layers in the same (execution) order as the reference found them */
    loco_unet *u = loco_pipeline_unet(e.p);
    int ns;
    const loco_site *sites = loco_unet_sites(u, &ns);
    CHECK(loco_unet_n_cross(u) == c.n_cross);
    for (int i = 0; i < ns; i++)
        if (sites[i].kind == LOCO_SITE_CROSS_ATTN) CHECK(strcmp(sites[i].name, c.cross[sites[i].cross_index]) == 0);

    loco_locogen_result r;
    loco_err err = {0};
    CHECK_MSG(loco_locogen_run(e.p, e.sc, &c.g, &r, &err) == LOCO_OK, "%s", err.msg);
    int64_t n_lat = 0, n_cos = 0;
    const float *lat = mt_f32(e.ref, "final_latents", &n_lat), *co = mt_f32(e.ref, "cosine_original", &n_cos),
                *ca = mt_f32(e.ref, "cosine_altered", NULL), *mo = mt_f32(e.ref, "window_mean_original", NULL),
                *ma = mt_f32(e.ref, "window_mean_altered", NULL);
    const loco_stored_tensor *imgs = loco_safetensors_find(e.ref, "images");
    const int total = r.n_prompts * r.n_seeds * r.per_set;
    CHECK(lat && co && ca && mo && ma && imgs && n_cos == total && n_lat == total * r.latent_numel);
    double worst_lat = 0, worst_cos = 0, worst_mean = 0;
    int worst_px = 0;
    const size_t per_img = (size_t)imgs->shape[3] * imgs->shape[4] * imgs->shape[5];
    for (int i = 0; i < total; i++) {
        double le = loco_rel_l2(r.latents + (size_t)i * r.latent_numel, lat + (size_t)i * r.latent_numel,
                                (size_t)r.latent_numel);
        if (!(le <= worst_lat)) worst_lat = le;
        double d = fmax(fabs(r.cos_original[i] - co[i]), fabs(r.cos_altered[i] - ca[i]));
        if (!(d <= worst_cos)) worst_cos = d;
        int px = mt_max_px(&r.images[i], (const uint8_t *)imgs->data + (size_t)i * per_img, per_img);
        if (px > worst_px) worst_px = px;
    }
    for (int k = 0; k < r.n_windows; k++) {
        double d = fmax(fabs(r.windows[k].mean_cosine_original - mo[k]), fabs(r.windows[k].mean_cosine_altered - ma[k]));
        if (!(d <= worst_mean)) worst_mean = d;
    }
    const int best_ref = (int)mt_meta_num(e.ref, "best_window");
    fprintf(stderr,
            "%s: %d images (%d windows of %d of %d layers): final latents worst rel err %.3g, max pixel diff %d/255, "
            "worst |cos diff| %.3g, window means %.3g; best window %d (reference %d); %.2fs\n",
            ref, total, r.n_windows, r.window, r.n_cross, worst_lat, worst_px, worst_cos, worst_mean,
            r.windows[r.best].start, best_ref, r.seconds);
    /* the report pieces */
    json_t *j = NULL;
    loco_image grid = {0};
    CHECK_MSG(loco_locogen_result_json(&r, &c.g, e.p, &j, &err) == LOCO_OK, "%s", err.msg);
    CHECK(json_array_size(json_object_get(j, "windows")) == (size_t)r.n_windows);
    CHECK(json_integer_value(json_object_get(json_object_get(j, "best_window"), "start")) == r.windows[r.best].start);
    CHECK(json_array_size(json_object_get(json_object_get(j, "best_window"), "layers")) == (size_t)r.window);
    json_decref(j);
    CHECK_MSG(loco_locogen_grid(&r, 2, &grid, &err) == LOCO_OK, "%s", err.msg);
    CHECK(grid.width == r.per_set * r.images[0].width + (r.per_set - 1) * 2);
    loco_image_free(&grid);
    const int best = r.windows[r.best].start;
    loco_locogen_result_free(&r);
    ref_cfg_free(&c);
    mt_close(&e);
    CHECK(worst_lat <= 1e-4);
    CHECK(worst_px <= 2);
    CHECK(worst_cos <= 1e-4);
    CHECK(worst_mean <= 1e-4);
    CHECK(best == best_ref);
}

TEST(sd1_style_two_prompts_two_seeds) { parity("sd1-tiny", "methods/locogen_sd1.safetensors"); }
TEST(sd2_vpred_object_window3) { parity("sd2-tiny", "methods/locogen_sd2.safetensors"); }
TEST(sdxl_fact) { parity("sdxl-tiny", "methods/locogen_sdxl.safetensors"); }

/* One prompt, one seed, 2 steps at 64x64: the smallest sweep that still moves the images. */
static void small_sweep(loco_locogen_params *g, const char *const *pr, const char *const *al, const uint64_t *seeds) {
    loco_locogen_params_init(g);
    g->n_prompts = 1;
    g->prompts = pr;
    g->altered = al;
    g->n_seeds = 1;
    g->seeds = seeds;
    g->sampler.steps = 2;
    g->sampler.width = g->sampler.height = 64;
}

/* All windows in one batch give the images each window gives generated alone. */
TEST(batched_equals_one_by_one) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    static const char *const pr[1] = {"a town in the style of monet"}, *const al[1] = {"a painting of a town"};
    static const uint64_t seeds[1] = {11};
    loco_locogen_params g;
    small_sweep(&g, pr, al, seeds);
    loco_locogen_result a, b;
    loco_err err = {0};
    CHECK_MSG(loco_locogen_run(e.p, e.sc, &g, &a, &err) == LOCO_OK, "%s", err.msg);
    g.max_batch = 1;
    CHECK_MSG(loco_locogen_run(e.p, e.sc, &g, &b, &err) == LOCO_OK, "%s", err.msg);
    double worst = 0, worst_cos = 0;
    int px = 0;
    for (int i = 0; i < a.per_set; i++) {
        double le = loco_rel_l2(a.latents + (size_t)i * a.latent_numel, b.latents + (size_t)i * b.latent_numel,
                                (size_t)a.latent_numel);
        if (!(le <= worst)) worst = le;
        double d = fabs(a.cos_original[i] - b.cos_original[i]);
        if (!(d <= worst_cos)) worst_cos = d;
        int p = mt_max_px(&a.images[i], b.images[i].data, (size_t)b.images[i].width * b.images[i].height * 3);
        if (p > px) px = p;
    }
    fprintf(stderr, "batched (%.2fs) vs one by one (%.2fs): latents %.3g, pixels %d/255, cos %.3g\n", a.seconds,
            b.seconds, worst, px, worst_cos);
    /* a window changes the image: the sweep is not a no-op */
    double moved = loco_rel_l2(a.latents + a.latent_numel, a.latents, (size_t)a.latent_numel);
    loco_locogen_result_free(&a);
    loco_locogen_result_free(&b);
    mt_close(&e);
    /* batch shape changes GEMM blocking, so fp32 sums differ slightly: latents within the per-component
     * tolerance, CLIP scores within the 1e-4 */
    CHECK(worst <= 1e-5 && px <= 1 && worst_cos <= 1e-4);
    CHECK(moved > 1e-3);
}

TEST(invalid_requests_fail_clearly) {
    mt_env e;
    MT_OPEN(e, "sd1-tiny", NULL);
    static const char *const pr[1] = {"a house"}, *const al[1] = {"a painting"};
    static const uint64_t seeds[1] = {0};
    loco_locogen_params g;
    small_sweep(&g, pr, al, seeds);
    loco_locogen_result r;
    loco_err err = {0};
    const int nc = loco_unet_n_cross(loco_pipeline_unet(e.p));

    loco_locogen_params b = g;
    b.n_prompts = 0;
    CHECK(loco_locogen_run(e.p, e.sc, &b, &r, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "prompt set is empty") != NULL);
    b = g;
    b.n_seeds = 0;
    CHECK(loco_locogen_run(e.p, e.sc, &b, &r, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "seed set is empty") != NULL);
    b = g;
    b.window = nc + 1;
    CHECK(loco_locogen_validate(e.p, &b, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "does not fit") != NULL);
    const int start = nc - 1;
    b = g;
    b.starts = &start;
    b.n_starts = 1;
    CHECK(loco_locogen_validate(e.p, &b, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "past the last cross-attention layer") != NULL);
    b = g;
    b.altered = NULL;
    CHECK(loco_locogen_validate(e.p, &b, &err) == LOCO_EINVAL);
    b = g;
    b.sampler.width = 60;
    CHECK(loco_locogen_validate(e.p, &b, &err) == LOCO_EINVAL);
    CHECK(strstr(err.msg, "multiples of") != NULL);
    loco_attribute_kind k;
    CHECK(loco_attribute_kind_from_name("fact", &k) == 0 && k == LOCO_ATTR_FACT);
    CHECK(strcmp(loco_attribute_kind_name(LOCO_ATTR_OBJECT), "object") == 0);
    CHECK(loco_attribute_kind_from_name("colour", &k) == -1);
    /* a valid explicit window list runs only those windows */
    const int starts[2] = {0, nc - 2};
    b = g;
    b.starts = starts;
    b.n_starts = 2;
    b.sampler.steps = 1;
    CHECK_MSG(loco_locogen_run(e.p, e.sc, &b, &r, &err) == LOCO_OK, "%s", err.msg);
    CHECK(r.n_windows == 2 && r.windows[1].start == nc - 2 && r.windows[1].end == nc && r.per_set == 3);
    loco_locogen_result_free(&r);
    mt_close(&e);
}

/* Progress and cancel (locogen.h): 3 windows + the unedited image for 2 seeds (8 images) in
 * batches of 3 on a backend with graphs (whose statistics count the UNet calls): 3 batches, so
 * total = 3 x the schedule's calls from the first callback on, done = the UNet calls made. Then
 * cancels at the first report, mid-batch, at a batch's last step, at the next batch's first step
 * and at a cancel point between decodes or scoring chunks: LOCO_ECANCELLED each time, saying how
 * far it got, with no callback and no UNet call after the one that cancelled. */
TEST(progress_counts_steps_and_cancel_stops_at_once) {
    mock *m = mock_new();
    CHECK(m != NULL);
    mt_env e;
    CHECK(mt_open_on(&e, &m->be, "sd1-tiny", NULL) == 0);
    static const char *const pr_[1] = {"a town in the style of monet"}, *const al[1] = {"a painting of a town"};
    static const uint64_t seeds[2] = {11, 12};
    static const int starts[3] = {0, 4, 8};
    loco_locogen_params g;
    small_sweep(&g, pr_, al, seeds);
    g.n_seeds = 2;
    g.starts = starts;
    g.n_starts = 3;
    g.max_batch = 3; /* 8 images: 3 | 3 | 2 */
    g.keep_images = 0;
    const loco_unet *u = loco_pipeline_unet(e.p);
    mt_progress pr;
    mt_progress_init(&pr, u, -1, 0);
    g.progress = mt_progress_fn;
    g.progress_ctx = &pr;
    loco_locogen_result r;
    loco_err err = {0};
    long calls = mt_unet_calls(u);
    CHECK_MSG(loco_locogen_run(e.p, e.sc, &g, &r, &err) == LOCO_OK, "%s", err.msg);
    calls = mt_unet_calls(u) - calls;
    const int n_calls = r.n_calls, total = 3 * n_calls;
    loco_locogen_result_free(&r);
    const char *why = mt_progress_complete(&pr, total);
    CHECK_MSG(!why, "%s: %d callbacks, first (%d, %d), last (%d, %d); want total %d", why, pr.n, pr.done[0],
              pr.total[0], pr.done[pr.n - 1], pr.total[pr.n - 1], total);
    CHECK_MSG(calls == total, "%ld UNet calls for a total of %d steps", calls, total);
    fprintf(stderr, "locogen progress: %d callbacks, total %d = 3 batches x %d calls\n", pr.n, total, n_calls);

    const struct {
        int at, repeat;
    } cases[] = {{0, 0}, {1, 0}, {n_calls, 0}, {n_calls + 1, 0}, {-1, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mt_progress_init(&pr, u, cases[i].at, cases[i].repeat);
        const long before = mt_unet_calls(u);
        const loco_status st = loco_locogen_run(e.p, e.sc, &g, &r, &err);
        const long after = mt_unet_calls(u) - pr.calls_at_cancel;
        CHECK_MSG(st == LOCO_ECANCELLED && pr.cancelled_at >= 0, "case %zu: status %d (%s)", i, (int)st, err.msg);
        const int done = pr.done[pr.cancelled_at];
        char want[128];
        snprintf(want, sizeof want, "locogen: cancelled after %d of %d denoising steps", done, total);
        fprintf(stderr, "cancel case %zu: at callback %d (step %d of %d), %ld UNet calls after it: '%s'\n", i,
                pr.cancelled_at, done, total, after, err.msg);
        CHECK_MSG(pr.cancelled_at == pr.n - 1, "case %zu: %d callbacks after the cancel", i,
                  pr.n - 1 - pr.cancelled_at);
        CHECK_MSG(after <= 1, "case %zu: %ld UNet calls after the cancel", i, after);
        CHECK_MSG(pr.calls_at_cancel - before == done, "case %zu: %ld UNet calls at step %d", i,
                  pr.calls_at_cancel - before, done);
        CHECK_MSG(strstr(err.msg, want) != NULL, "case %zu: '%s' lacks '%s'", i, err.msg, want);
        CHECK(r.windows == NULL && r.latents == NULL); /* a failed run leaves nothing to free */
        if (cases[i].repeat) CHECK(done == n_calls); /* the first batch's decodes, before the next batch */
    }
    mt_close(&e);
}
