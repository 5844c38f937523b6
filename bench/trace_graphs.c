/* trace_graphs.c: causal tracing over the UNet components of an SD 1.5-size model (real configs,
 * random weights: loco_pipeline_load_random) with its UNet calls on CUDA graphs vs op by op,
 * timed side by side in one run.
 *
 *   build/bench/trace_graphs [--device cpu|cuda|auto] [--size 512] [--steps 50] [--components 15]
 *                            [--max-batch 16] [--repeat 1] [--threads N]
 *
 * Both arms are engine/trace.c with the same prompt, seeds and components (the model's first N
 * ResNet, attention and feed-forward outputs in execution order); they differ only in
 * loco_unet_set_graphs. A restored run overwrites a site's output with the clean run's in the same
 * UNet call; its hooks carry a replay_id (engine/sites.h), so on a backend with graphs each batch
 * records its calls once and replays them; with graphs off every call runs op by op, as every
 * traced call did before the hooks could be replayed. The arms alternate (graphs, op by op,
 * graphs, ...) after one short untimed trace that loads every kernel and library both use, so
 * that neither arm pays the first call's costs and load from other processes hits both alike;
 * wall and process CPU time are reported for each. Images are scored with the tiny CLIP fixture
 * (tests/fixtures/models/clip-tiny): scoring is the same in both arms and not what is compared.
 *
 * Replays run the kernels the recording ran, so both arms must give the same scores and final
 * latents bit for bit: the run says whether they did and exits 1 when not. On the CPU backend
 * (no graphs) both arms run op by op and the ratio is about 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "clip_score.h"
#include "pipeline.h"
#include "trace.h"
#include "unet.h"

/* done/total count denoising steps over all batches (trace.h); called again at the same count
 * between decode and scoring chunks, so a line is printed only when the count moves */
typedef struct progress_line {
    const char *label;
    int last;
} progress_line;

static int progress(void *ctx, int done, int total) {
    progress_line *pl = ctx;
    if (done == pl->last) return 0;
    pl->last = done;
    fprintf(stderr, "\r  %s: step %d/%d", pl->label, done, total);
    if (done >= total) fputc('\n', stderr);
    return 0;
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    int size = 512, steps = 50, n_comp = 15, max_batch = 16, repeat = 1, threads = 0;
    const char *device = "cuda";
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--size")) size = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--steps")) steps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--components")) n_comp = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--max-batch")) max_batch = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--repeat")) repeat = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--device")) device = argv[++i];
        else DIE("usage: %s [--device cpu|cuda|auto] [--size 512] [--steps 50] [--components 15] "
                       "[--max-batch 16] [--repeat 1] [--threads N]", argv[0]);
    }
    if (n_comp < 1 || repeat < 1) DIE("--components and --repeat must be at least 1");
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    if (loco_device_from_name(device, &bo.device)) DIE("--device: cpu, cuda or auto, not %s", device);
    bo.num_threads = threads;
    loco_backend *be = NULL;
    loco_pipeline *p = NULL;
    loco_clip_scorer *sc = NULL;
    loco_err err = {0};
    if (loco_backend_create(&bo, &be, &err)) DIE("backend: %s", err.msg);
    if (loco_pipeline_load_random(be, LOCO_FAMILY_SD1, 1234, NULL, &p, &err)) DIE("random SD 1.5: %s", err.msg);
    if (loco_clip_scorer_load(be, "tests/fixtures/models/clip-tiny", &sc, &err))
        DIE("scorer (run from the repository root): %s", err.msg);
    loco_unet *u = loco_pipeline_unet(p);
    int ns = 0, nc = 0;
    const loco_site *sites = loco_unet_sites(u, &ns);
    const char **comps = malloc((size_t)n_comp * sizeof *comps);
    if (!comps) DIE("out of memory");
    for (int i = 0; i < ns && nc < n_comp; i++)
        if (sites[i].kind == LOCO_SITE_RESNET || sites[i].kind == LOCO_SITE_SELF_ATTN ||
            sites[i].kind == LOCO_SITE_CROSS_ATTN || sites[i].kind == LOCO_SITE_FF)
            comps[nc++] = sites[i].name;
    char cpu[320];
    bench_cpu_name(cpu, sizeof cpu);
    printf("cpu: %s\nbackend: %s\n", cpu, loco_backend_describe(be));
    loco_trace_params t;
    loco_trace_params_init(&t);
    t.prompt = "a town in the style of monet";
    t.subject = "monet";
    t.scope = LOCO_TRACE_UNET;
    t.components = comps;
    t.n_components = nc;
    t.max_batch = max_batch;
    t.keep_latents = 1;
    t.sampler.steps = steps;
    t.sampler.width = t.sampler.height = size;
    t.progress = progress;
    printf("trace: SD 1.5 architecture, random weights, %d UNet components at %dx%d, %d steps, guidance 7.5 (PNDM), "
           "batches of up to %d trajectories, %d repeat(s)\n",
           nc, size, size, steps, max_batch, repeat);
    fflush(stdout);

    const int has_graphs = loco_backend_has_graphs(be);
    {
        loco_trace_params warm = t;
        warm.sampler.steps = 2;
        progress_line pl = {"warm-up", -1};
        warm.progress_ctx = &pl;
        loco_trace_result r;
        if (loco_trace_run(p, sc, &warm, &r, &err)) DIE("warm-up: %s", err.msg);
        loco_trace_result_free(&r);
    }
    double wall[2] = {0, 0}, cpu_s[2] = {0, 0};
    int same = 1;
    loco_unet_graph_stats gs = {0};
    for (int rep = 0; rep < repeat; rep++) {
        loco_trace_result r[2];
        for (int arm = 0; arm < 2; arm++) {
            loco_unet_set_graphs(u, !arm); /* off also frees the recorded graphs */
            progress_line pl = {arm ? "op by op" : "graphs", -1};
            t.progress_ctx = &pl;
            const double c0 = bench_cpu_seconds();
            if (loco_trace_run(p, sc, &t, &r[arm], &err)) DIE("%s: %s", arm ? "op by op" : "graphs", err.msg);
            cpu_s[arm] += bench_cpu_seconds() - c0;
            wall[arm] += r[arm].seconds;
            if (!arm) loco_unet_graph_stats_get(u, &gs);
        }
        /* bit for bit: a NaN from a bad replay must not pass as "no difference" */
        const size_t bytes = (size_t)r[0].latent_numel * sizeof(float);
        same &= r[0].n_unet == r[1].n_unet && r[0].latent_numel == r[1].latent_numel &&
                memcmp(&r[0].clean, &r[1].clean, sizeof r[0].clean) == 0 &&
                memcmp(&r[0].corrupted, &r[1].corrupted, sizeof r[0].corrupted) == 0 &&
                memcmp(r[0].clean_latents, r[1].clean_latents, bytes) == 0 &&
                memcmp(r[0].corrupted_latents, r[1].corrupted_latents, bytes) == 0;
        for (int i = 0; same && i < r[0].n_unet; i++)
            same = memcmp(&r[0].unet[i].score, &r[1].unet[i].score, sizeof r[0].unet[i].score) == 0 &&
                   memcmp(r[0].unet[i].latents, r[1].unet[i].latents, bytes) == 0;
        loco_trace_result_free(&r[0]);
        loco_trace_result_free(&r[1]);
    }
    const int traced = repeat * nc;
    printf("graphs:   wall %8.2f s (%.3f s per traced component), cpu %8.2f s\n", wall[0], wall[0] / traced,
           cpu_s[0]);
    printf("op by op: wall %8.2f s (%.3f s per traced component), cpu %8.2f s\n", wall[1], wall[1] / traced,
           cpu_s[1]);
    printf("ratio op-by-op / graphs: wall %.3fx, cpu %.3fx\n", wall[1] / wall[0], cpu_s[1] / cpu_s[0]);
    printf("same results (scores and final latents, bit for bit): %s\n", same ? "yes" : "NO");
    if (has_graphs)
        printf("cuda graphs (graphs arm, last repeat): %ld captures, %ld replays, %ld plain calls%s%s\n", gs.captures,
               gs.replays, gs.eager_calls, gs.last_error[0] ? "; last recording error: " : "", gs.last_error);
    else
        printf("cuda graphs: none on this backend (both arms ran op by op)\n");
    free(comps);
    loco_clip_scorer_free(sc);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    return same ? 0 : 1;
}
