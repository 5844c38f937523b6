/* unet_cpu.c: one UNet call of the real SD 1.5 / SD-XL architectures on the CPU backend, with
 * random weights made on the fly (engine/random_weights.h; nothing is read from disk).
 *
 * Prints seconds per call, the FLOP rate, where the time goes (GEMM-like ops vs the rest), peak
 * memory, and the ratio of the whole call's FLOP rate to the machine's sgemm rate measured in
 * the same run (all cores, large square sgemm) — the yardstick is >= 60%.
 *
 * usage: unet_cpu [sd1|sd2|sdxl] [image side, default 512] [batch, default 1] [timed calls, default 2] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "builtin_configs.h"
#include "unet.h"
#include "weights.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, const loco_err *err) {
    fprintf(stderr, "unet_cpu: %s: %s\n", what, err->msg);
    exit(1);
}

/* Best of three 2048^3 sgemms on all cores: the machine's matrix rate. */
static double sgemm_rate(int threads) {
    const int n = 2048;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) return 0;
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.01f;
    openblas_set_num_threads(threads);
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = now_s() - t0;
        if (r > 0 && t < best) best = t;
    }
    free(a), free(b), free(c);
    return 2.0 * n * n * (double)n / best;
}

static void fill_uniform(float *x, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = scale * ((float)(seed >> 40) / 16777216.0f * 2.0f - 1.0f);
    }
}

static loco_tensor upload_random(loco_backend *be, int nd, const int64_t *shape, uint64_t seed, float scale) {
    loco_tensor t;
    loco_err err;
    if (loco_tensor_alloc_act(be, nd, shape, &t, &err)) die("alloc", &err);
    size_t n = (size_t)loco_tensor_numel(&t);
    float *h = malloc(n * sizeof *h);
    fill_uniform(h, n, seed, scale);
    if (loco_tensor_upload(&t, h, LOCO_F32, &err)) die("upload", &err);
    free(h);
    return t;
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    const char *family = argc > 1 ? argv[1] : "sd1";
    int side = argc > 2 ? atoi(argv[2]) : 512;
    int batch = argc > 3 ? atoi(argv[3]) : 1;
    int iters = argc > 4 ? atoi(argv[4]) : 2;
    if (side < 64 || side % 64 || batch < 1 || iters < 1) {
        fprintf(stderr, "usage: unet_cpu [sd1|sd2|sdxl] [side, multiple of 64] [batch] [timed calls]\n");
        return 2;
    }
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double peak_rate = sgemm_rate(threads);

    loco_err err;
    const char *cfg_text = loco_builtin_config(family, "unet/config.json");
    if (!cfg_text) {
        fprintf(stderr, "unet_cpu: no embedded config for family '%s'\n", family);
        return 2;
    }
    loco_unet_config cfg;
    if (loco_unet_config_parse(cfg_text, "unet/config.json", &cfg, &err)) die("config", &err);
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    bo.device = LOCO_DEVICE_CPU;
    loco_backend *be = NULL;
    if (loco_backend_create(&bo, &be, &err)) die("backend", &err);
    loco_weights *w = NULL;
    if (loco_weights_new_random("random weights", 1234, &w, &err)) die("weights", &err);
    double t0 = now_s();
    loco_unet *u = NULL;
    if (loco_unet_create(be, &cfg, w, &u, &err)) die("unet", &err);
    loco_weights_free(w);
    double load_s = now_s() - t0;

    int64_t lat = side / 8, d = cfg.cross_attention_dim[0];
    int64_t xs[4] = {batch, cfg.in_channels, lat, lat}, es[3] = {batch, 77, d};
    loco_tensor x = upload_random(be, 4, xs, 1, 1.0f), ehs = upload_random(be, 3, es, 2, 1.0f), pooled = {0};
    float *ts = malloc((size_t)batch * sizeof *ts), *time_ids = malloc((size_t)batch * 6 * sizeof *time_ids);
    for (int b = 0; b < batch; b++) {
        ts[b] = 500.0f;
        float ids[6] = {(float)side, (float)side, 0, 0, (float)side, (float)side};
        memcpy(time_ids + 6 * b, ids, sizeof ids);
    }
    loco_unet_inputs in;
    loco_unet_inputs_init(&in);
    in.sample = &x;
    in.timesteps = ts;
    in.encoder_hidden_states = &ehs;
    if (cfg.addition_embed_type == LOCO_UNET_ADD_TEXT_TIME) {
        int64_t ps[2] = {batch, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim};
        pooled = upload_random(be, 2, ps, 3, 1.0f);
        in.text_embeds = &pooled;
        in.time_ids = time_ids;
    }
    loco_tensor out;
    /* warm-up: first-touch of the activation cache */
    if (loco_unet_forward(u, &in, &out, &err)) die("forward", &err);
    loco_tensor_free(&out);

    double best = 1e30;
    loco_op_profile prof;
    memset(&prof, 0, sizeof prof);
    for (int i = 0; i < iters; i++) {
        if (i == iters - 1) loco_backend_profile_start(be);
        double s0 = now_s();
        if (loco_unet_forward(u, &in, &out, &err)) die("forward", &err);
        double s = now_s() - s0;
        if (i == iters - 1) loco_backend_profile_stop(be, &prof);
        loco_tensor_free(&out);
        if (i < iters - 1 || iters == 1) best = s < best ? s : best;
    }
    double flops = 0, prof_s = 0, gemm_s = 0;
    for (int k = 0; k < LOCO_OP_KIND_COUNT; k++) {
        flops += prof.flops[k];
        prof_s += prof.seconds[k];
    }
    gemm_s = prof.seconds[LOCO_OP_LINEAR] + prof.seconds[LOCO_OP_CONV2D] + prof.seconds[LOCO_OP_ATTENTION];
    size_t cur, peak;
    loco_backend_memory(be, &cur, &peak);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);

    printf("%s UNet, %dx%d image (latent %lldx%lld), batch %d, CPU backend: %s\n", family, side, side, (long long)lat,
           (long long)lat, batch, loco_backend_describe(be));
    printf("  load (random weights): %.1f s\n", load_s);
    printf("  seconds per call:      %.3f (best of %d; profiled call %.3f)\n", best, iters > 1 ? iters - 1 : 1, prof_s);
    printf("  FLOPs per call:        %.3f TFLOP (%.3f per sample)\n", flops * 1e-12, flops * 1e-12 / batch);
    printf("  whole-call rate:       %.1f GFLOP/s\n", flops / best * 1e-9);
    printf("  machine sgemm rate:    %.1f GFLOP/s (%d threads, 2048^3, same run)\n", peak_rate * 1e-9, threads);
    printf("  ratio to sgemm:        %.0f%%\n", 100.0 * flops / best / peak_rate);
    printf("  time in GEMM-like ops: %.0f%% (linear, conv2d, attention)\n", 100.0 * gemm_s / prof_s);
    for (int k = 0; k < LOCO_OP_KIND_COUNT; k++)
        printf("    %-12s %6lld calls %8.3f s %5.1f%%  %7.1f GFLOP/s\n", loco_op_kind_name((loco_op_kind)k),
               (long long)prof.calls[k], prof.seconds[k], 100.0 * prof.seconds[k] / prof_s,
               prof.seconds[k] > 0 ? prof.flops[k] / prof.seconds[k] * 1e-9 : 0.0);
    printf("  peak backend memory:   %.2f GiB (weights + activations); peak RSS %.2f GiB\n",
           (double)peak / (1 << 30), (double)ru.ru_maxrss / (1 << 20));

    loco_tensor_free(&x);
    loco_tensor_free(&ehs);
    loco_tensor_free(&pooled);
    free(ts);
    free(time_ids);
    loco_unet_free(u);
    loco_backend_destroy(be);
    return 0;
}
