/* test_cuda_methods.c: the research methods on the CUDA backend, on the tiny fixtures: LocoGen
 * (a window sweep, its UNet calls eligible for graph replay with the windows' K/V rows recorded)
 * and causal tracing (site hooks restoring UNet outputs and text states per batch row; the
 * restored runs' calls recorded and replayed too) against the CPU backend; LocoEdit (a variant's edited cross-attention
 * weights, copied on write on the device, then generation from it) against the diffusers
 * reference. Skipped without a GPU; the emu/ items of the suite run them on the CPU kernel
 * emulator.
 *
 * The GPU computes in fp16, the CPU and the references in fp32: final latents within 2e-2
 * relative, CLIP cosines within 1e-2, the same clean/corrupted separation. */
#include <math.h>

#include "edit.h"
#include "edit_test_util.h"
#include "gpu_test_util.h"
#include "locogen.h"
#include "method_test_util.h"
#include "trace.h"
#include "unet.h"

#define LAT_TOL 2e-2
#define COS_TOL 1e-2

/* The CPU env and the GPU env (skipping the test when there is no GPU). */
#define METHOD_ENVS(cpu, gpu, model)                                                        \
    mt_env cpu, gpu;                                                                        \
    do {                                                                                    \
        char why_[1100];                                                                    \
        loco_backend *gb_ = NULL;                                                           \
        const int r_ = gpu_backend_open(LOCO_F16, &gb_, why_, sizeof why_);                 \
        if (r_ == 0) SKIP("%s", why_);                                                      \
        CHECK_MSG(r_ == 1, "%s", why_);                                                     \
        if (mt_open_on(&(gpu), gb_, (model), NULL)) {                                       \
            mt_close(&(gpu));                                                               \
            CHECK_MSG(0, "%s on the GPU: fixtures missing (make fixtures)?", (model));      \
        }                                                                                   \
        if (mt_open(&(cpu), (model), NULL)) {                                               \
            mt_close(&(gpu));                                                               \
            mt_close(&(cpu));                                                               \
            CHECK_MSG(0, "%s on the CPU: fixtures missing (make fixtures)?", (model));      \
        }                                                                                   \
    } while (0)

TEST(cuda_locogen_sd1_matches_cpu) {
    METHOD_ENVS(c, g, "sd1-tiny");
    static const char *const pr[1] = {"a town in the style of monet"}, *const al[1] = {"a painting of a town"};
    static const uint64_t seeds[1] = {11};
    loco_locogen_params p;
    loco_locogen_params_init(&p);
    p.n_prompts = 1;
    p.prompts = pr;
    p.altered = al;
    p.n_seeds = 1;
    p.seeds = seeds;
    p.sampler.steps = 2;
    p.sampler.width = p.sampler.height = 64;
    loco_locogen_result rc, rg;
    loco_err err = {0};
    CHECK_MSG(loco_locogen_run(c.p, c.sc, &p, &rc, &err) == LOCO_OK, "cpu: %s", err.msg);
    CHECK_MSG(loco_locogen_run(g.p, g.sc, &p, &rg, &err) == LOCO_OK, "gpu: %s", err.msg);
    loco_unet_graph_stats gs;
    loco_unet_graph_stats_get(loco_pipeline_unet(g.p), &gs);
    const int graphs = loco_backend_has_graphs(g.be);
    int same_shape = rc.per_set == rg.per_set && rc.n_windows == rg.n_windows && rc.latent_numel == rg.latent_numel;
    double worst_lat = 0, worst_cos = 0, worst_mean = 0;
    for (int i = 0; same_shape && i < rc.n_prompts * rc.n_seeds * rc.per_set; i++) {
        const double le = loco_rel_l2(rg.latents + (size_t)i * rg.latent_numel, rc.latents + (size_t)i * rc.latent_numel,
                                      (size_t)rc.latent_numel);
        if (!(le <= worst_lat)) worst_lat = le;
        const double d = fmax(fabs(rg.cos_original[i] - rc.cos_original[i]), fabs(rg.cos_altered[i] - rc.cos_altered[i]));
        if (!(d <= worst_cos)) worst_cos = d;
    }
    for (int k = 0; same_shape && k < rc.n_windows; k++) {
        const double d = fmax(fabs(rg.windows[k].mean_cosine_original - rc.windows[k].mean_cosine_original),
                              fabs(rg.windows[k].mean_cosine_altered - rc.windows[k].mean_cosine_altered));
        if (!(d <= worst_mean)) worst_mean = d;
    }
    /* near-ties may pick another window: the GPU's pick must be as good on the CPU's numbers */
    const double best_gap = same_shape ? fabs(rc.windows[rg.best].mean_cosine_altered -
                                              rc.windows[rc.best].mean_cosine_altered)
                                       : 1.0;
    fprintf(stderr,
            "locogen sd1-tiny, %d windows: final latents %.3g, cosines %.3g, window means %.3g; best window %d "
            "(cpu %d); graphs %s: %ld captures, %ld replays, %ld plain calls%s%s\n",
            rc.n_windows, worst_lat, worst_cos, worst_mean, rg.windows[rg.best].start, rc.windows[rc.best].start,
            graphs ? "on" : "off", gs.captures, gs.replays, gs.eager_calls, gs.last_error[0] ? "; " : "",
            gs.last_error);
    loco_locogen_result_free(&rc);
    loco_locogen_result_free(&rg);
    mt_close(&g);
    mt_close(&c);
    CHECK(same_shape);
    CHECK(worst_lat <= LAT_TOL);
    CHECK(worst_cos <= COS_TOL && worst_mean <= COS_TOL);
    CHECK(best_gap <= COS_TOL);
    /* LocoGen's plans only set K/V rows: its UNet calls replay graphs where the backend has them */
    if (graphs) CHECK_MSG(gs.captures >= 1 && gs.replays >= 1, "%s", gs.last_error);
}

TEST(cuda_trace_sd1_matches_cpu) {
    METHOD_ENVS(c, g, "sd1-tiny");
    loco_trace_params t;
    const char *comps[2];
    static const int pos[1] = {11}; /* "monet"'s last token */
    mt_small_trace(&t, c.p, comps, pos, 1);
    loco_trace_result rc, rg;
    loco_err err = {0};
    CHECK_MSG(loco_trace_run(c.p, c.sc, &t, &rc, &err) == LOCO_OK, "cpu: %s", err.msg);
    CHECK_MSG(loco_trace_run(g.p, g.sc, &t, &rg, &err) == LOCO_OK, "gpu: %s", err.msg);
    const int same_shape = rc.n_unet == rg.n_unet && rc.n_layers == rg.n_layers &&
                           rc.n_positions == rg.n_positions && rc.latent_numel == rg.latent_numel;
    double worst_lat = 0, worst_cos = 0;
    if (same_shape) {
        const size_t n = (size_t)rc.latent_numel;
        worst_lat = fmax(loco_rel_l2(rg.clean_latents, rc.clean_latents, n),
                         loco_rel_l2(rg.corrupted_latents, rc.corrupted_latents, n));
        worst_cos = fmax(fabs(rg.clean.cosine - rc.clean.cosine), fabs(rg.corrupted.cosine - rc.corrupted.cosine));
        for (int i = 0; i < rc.n_unet; i++) {
            worst_lat = fmax(worst_lat, loco_rel_l2(rg.unet[i].latents, rc.unet[i].latents, n));
            worst_cos = fmax(worst_cos, fabs(rg.unet[i].score.cosine - rc.unet[i].score.cosine));
        }
        for (int i = 0; i < rc.n_layers * LOCO_TRACE_MOD_COUNT * rc.n_positions; i++) {
            worst_lat = fmax(worst_lat, loco_rel_l2(rg.text[i].latents, rc.text[i].latents, n));
            worst_cos = fmax(worst_cos, fabs(rg.text[i].score.cosine - rc.text[i].score.cosine));
        }
    }
    const double moved = same_shape ? loco_rel_l2(rg.corrupted_latents, rg.clean_latents, (size_t)rg.latent_numel) : 0;
    loco_unet_graph_stats gs;
    loco_unet_graph_stats_get(loco_pipeline_unet(g.p), &gs);
    const int graphs = loco_backend_has_graphs(g.be);
    fprintf(stderr,
            "trace sd1-tiny, %d components + %dx2x%d text states: final latents %.3g, cosines %.3g; corruption "
            "moved the GPU's latents %.3g; graphs %s: %ld captures, %ld replays, %ld plain calls%s%s\n",
            rc.n_unet, rc.n_layers, rc.n_positions, worst_lat, worst_cos, moved, graphs ? "on" : "off", gs.captures,
            gs.replays, gs.eager_calls, gs.last_error[0] ? "; " : "", gs.last_error);
    loco_trace_result_free(&rc);
    loco_trace_result_free(&rg);
    mt_close(&g);
    mt_close(&c);
    CHECK(same_shape);
    CHECK(worst_lat <= LAT_TOL);
    CHECK(worst_cos <= COS_TOL);
    CHECK(moved > 1e-3);
    /* the restores' hooks carry a replay_id (sites.h): the restored runs' UNet calls are recorded
     * and replayed (3 calls per batch: warm-up or recording, then replays) */
    if (graphs) CHECK_MSG(gs.captures >= 1 && gs.replays >= 2, "%s", gs.last_error);
}

/* LocoEdit's closed form is solved on the host from the text encoder's rows, so the edited
 * weights must be the reference's to fp32 rounding whatever the backend; the variant then holds
 * them (in fp16) on the device and generates with them. */
TEST(cuda_locoedit_sd1_matches_reference) {
    char why[1100];
    loco_backend *be = NULL;
    const int opened = gpu_backend_open(LOCO_F16, &be, why, sizeof why);
    if (opened == 0) SKIP("%s", why);
    CHECK_MSG(opened == 1, "%s", why);
    loco_safetensors *r = et_ref("sd1-tiny", "locoedit");
    loco_pipeline *p = et_load(be, "sd1-tiny");
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK(r && p);
    CHECK_MSG(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK, "%s", e.msg);
    loco_locoedit_opts o;
    loco_locoedit_opts_init(&o);
    o.concept = "van gogh";
    o.start = 6;
    o.n_layers = 2;
    json_t *rep = NULL;
    CHECK_MSG(loco_edit_locoedit(v, &o, &rep, &e) == LOCO_OK, "%s", e.msg);
    const json_t *mats = json_object_get(rep, "matrices");
    const size_t n_mats = json_array_size(mats);
    double worst_w = 0;
    for (size_t i = 0; i < n_mats; i++) {
        const char *name = json_string_value(json_object_get(json_array_get(mats, i), "name"));
        const loco_variant_change *c = et_change(v, LOCO_COMPONENT_UNET, name);
        char rn[400];
        snprintf(rn, sizeof rn, "w64.%s", name);
        const double err = c ? et_rel_err(c->data, et_numel(c), r, rn) : -1;
        worst_w = err < 0 || err > worst_w ? (err < 0 ? 1e9 : err) : worst_w;
    }
    loco_generate_params g;
    char *prompt = NULL;
    loco_generate_result res;
    memset(&res, 0, sizeof res);
    CHECK(et_gen_params(r, &g, &prompt) == 0);
    CHECK_MSG(loco_pipeline_variant_generate(v, &g, &res, &e) == LOCO_OK, "%s", e.msg);
    const double le = et_rel_err(res.latents, 4 * 8 * 8, r, "pipeline.final_latents");
    fprintf(stderr, "locoedit sd1-tiny on the GPU: %zu matrices, worst weight error %.3g; generation latents %.3g\n",
            n_mats, worst_w, le);
    free(prompt);
    loco_generate_result_free(&res);
    json_decref(rep);
    loco_pipeline_variant_free(v);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    loco_safetensors_close(r);
    CHECK(n_mats == 4);
    CHECK(worst_w <= 1e-4);
    CHECK(le >= 0 && le <= LAT_TOL);
}
