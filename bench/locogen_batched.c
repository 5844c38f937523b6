/* locogen_batched.c: a LocoGen sweep over every window of an SD 1.5-size model (real configs,
 * random weights: loco_pipeline_load_random) run batched vs the same images generated one by one,
 * timed side by side in one run, on the CPU backend or (--device cuda) the GPU, where the batched
 * arm's UNet calls replay a CUDA graph (a LocoGen plan is only `context` actions: no site hooks).
 *
 *   build/bench/locogen_batched [--device cpu|cuda|auto] [--graphs 0|1] [--size 256] [--steps 4]
 *                               [--threads N] [--window 2] [--prompts 2]
 *
 * Both arms are engine/locogen.c with the same prompts, seed and windows; they differ only in
 * max_batch:
 *   batched     every window of one prompt (plus its unedited image) is one denoise batch: one UNet
 *               call per step for 1 + n_windows samples (x2 with guidance); a window is only another
 *               K/V row per layer (`context` interventions);
 *   one by one  max_batch 1: one denoise run per image, as a researcher's loop over windows would.
 * Both arms share the job's text encoding and text K/V (projected once per job either way; that
 * part is cheap next to the UNet). The arms alternate prompt by prompt (prompt 0 batched, prompt 0
 * one by one, prompt 1 batched, ...) so that load from other processes on a shared machine hits
 * both alike; wall and process CPU time are reported for each. Images are scored with the tiny CLIP fixture
 * (tests/fixtures/models/clip-tiny): scoring is not what is compared, and a random CLIP-L would
 * only add the same constant to both arms. The run also checks that both arms give the same images.
 *
 * Prints the machine, the settings, both times, the ratio and the image agreement (on a GPU the
 * two arms run different batch sizes, so fp16 results may differ by rounding). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "clip_score.h"
#include "locogen.h"
#include "pipeline.h"
#include "unet.h"

static int progress(void *ctx, int done, int total) {
    fprintf(stderr, "\r  %s: %d/%d images", (const char *)ctx, done, total);
    if (done >= total) fputc('\n', stderr);
    return 0;
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    int size = 256, steps = 4, threads = 0, window = 2, n_prompts = 2, graphs = 1;
    const char *device = "cpu";
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--size")) size = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--steps")) steps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--window")) window = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--prompts")) n_prompts = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--device")) device = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--graphs")) graphs = atoi(argv[++i]);
        else DIE("usage: %s [--device cpu|cuda|auto] [--graphs 0|1] [--size 256] [--steps 4] [--threads N] "
                 "[--window 2] [--prompts 1..4]", argv[0]);
    }
    if (n_prompts < 1 || n_prompts > 4) DIE("--prompts must be 1..4");
    static const char *const prompts[4] = {"A house in the style of Van Gogh", "A town in the style of Monet",
                                           "R2D2 in the street", "President of the United States"};
    static const char *const altered[4] = {"A painting of a house", "A painting of a town", "A robot in the street",
                                           "Joe Biden"};
    static const uint64_t seeds[1] = {0};
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    if (loco_device_from_name(device, &bo.device)) DIE("--device: cpu, cuda or auto, not %s", device);
    bo.num_threads = threads;
    loco_backend *be = NULL;
    loco_pipeline *p = NULL;
    loco_clip_scorer *sc = NULL;
    loco_err err = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (loco_backend_create(&bo, &be, &err)) DIE("backend: %s", err.msg);
    if (loco_pipeline_load_random(be, LOCO_FAMILY_SD1, 1234, NULL, &p, &err)) DIE("random SD 1.5: %s", err.msg);
    loco_unet_set_graphs(loco_pipeline_unet(p), graphs);
    if (loco_clip_scorer_load(be, "tests/fixtures/models/clip-tiny", &sc, &err))
        DIE("scorer (run from the repository root): %s", err.msg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    char cpu[320];
    bench_cpu_name(cpu, sizeof cpu);
    const int nc = loco_unet_n_cross(loco_pipeline_unet(p));
    printf("cpu: %s\nbackend: %s\n", cpu, loco_backend_describe(be));
    printf("model: SD 1.5 architecture (embedded configs), random weights, built in %.1f s; %d cross-attention layers\n",
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec), nc);
    loco_locogen_params g;
    loco_locogen_params_init(&g);
    g.n_prompts = n_prompts;
    g.prompts = prompts;
    g.altered = altered;
    g.n_seeds = 1;
    g.seeds = seeds;
    g.window = window;
    g.sampler.steps = steps;
    g.sampler.width = g.sampler.height = size;
    g.progress = progress;
    const int per_set = 1 + nc - window + 1;
    printf("sweep: %d prompts x (1 unedited + %d windows of %d) = %d images at %dx%d, %d steps, guidance 7.5 (PNDM)\n",
           n_prompts, per_set - 1, window, n_prompts * per_set, size, size, steps);
    fflush(stdout);

    double wall[2] = {0, 0}, cpu_s[2] = {0, 0};
    int max_px = 0, same_best = 1;
    double worst_lat = 0;
    for (int i = 0; i < n_prompts; i++) {
        loco_locogen_result r[2];
        loco_locogen_params one = g;
        one.n_prompts = 1;
        one.prompts = &prompts[i];
        one.altered = &altered[i];
        for (int arm = 0; arm < 2; arm++) {
            one.max_batch = arm ? 1 : 0; /* 0: every window of the prompt in one batch */
            one.progress_ctx = (void *)(arm ? "one by one" : "batched");
            const double c0 = bench_cpu_seconds();
            if (loco_locogen_run(p, sc, &one, &r[arm], &err))
                DIE("%s: %s", arm ? "one by one" : "batched", err.msg);
            cpu_s[arm] += bench_cpu_seconds() - c0;
            wall[arm] += r[arm].seconds;
        }
        for (int k = 0; k < per_set; k++) {
            const loco_image *x = &r[0].images[k], *y = &r[1].images[k];
            for (size_t q = 0; q < (size_t)x->width * x->height * 3; q++) {
                int d = abs((int)x->data[q] - (int)y->data[q]);
                if (d > max_px) max_px = d;
            }
            double num = 0, den = 0;
            for (int64_t q = 0; q < r[0].latent_numel; q++) {
                const double u = r[0].latents[k * r[0].latent_numel + q], v = r[1].latents[k * r[1].latent_numel + q];
                num += (u - v) * (u - v);
                den += v * v;
            }
            const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
            if (rel > worst_lat) worst_lat = rel;
        }
        same_best &= r[0].best == r[1].best;
        loco_locogen_result_free(&r[0]);
        loco_locogen_result_free(&r[1]);
    }
    const int total = n_prompts * per_set;
    printf("batched:    wall %8.1f s (%.2f s per image), cpu %8.1f s\n", wall[0], wall[0] / total, cpu_s[0]);
    printf("one by one: wall %8.1f s (%.2f s per image), cpu %8.1f s\n", wall[1], wall[1] / total, cpu_s[1]);
    printf("ratio one-by-one / batched: wall %.2fx, cpu %.2fx\n", wall[1] / wall[0], cpu_s[1] / cpu_s[0]);
    printf("same images: max pixel difference %d/255, worst final-latent relative L2 %.3g; same best window: %s\n",
           max_px, worst_lat, same_best ? "yes" : "no");
    if (loco_backend_has_graphs(be)) {
        loco_unet_graph_stats gs;
        loco_unet_graph_stats_get(loco_pipeline_unet(p), &gs);
        printf("cuda graphs: %s, %ld captures, %ld replays, %ld plain calls%s%s\n", graphs ? "on" : "off",
               gs.captures, gs.replays, gs.eager_calls, gs.last_error[0] ? "; last recording error: " : "",
               gs.last_error);
    }
    loco_clip_scorer_free(sc);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    return 0;
}
