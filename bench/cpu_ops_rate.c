/* cpu_ops_rate.c: the CPU backend's ops on SD 1.5 shapes at 512x512 (64x64 latents), timed
 * side by side with a plain sgemm of the same FLOPs in the same run, so the printed ratio says
 * how close each op gets to the machine's sgemm rate. Memory-bound ops print GB/s instead.
 * Not a test: numbers depend on the machine.
 * Usage: cpu_ops_rate [threads] [--cpu-time] [--reps N]
 * Each number is the best of N runs (default 3) after a warm-up run. --cpu-time measures
 * process CPU time instead of wall time: on a shared, busy machine it compares variants fairly
 * with one thread (with several it sums their time). */
#include "backend.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static loco_tensor tensor(loco_backend *be, int nd, const int64_t *shape, float scale) {
    loco_tensor t;
    loco_err err;
    if (loco_tensor_alloc(be, LOCO_F32, nd, shape, &t, &err) != LOCO_OK) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    size_t n = (size_t)loco_tensor_numel(&t);
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = scale * (float)((i * 2654435761u) % 1000) / 1000.0f - scale / 2;
    loco_tensor_upload(&t, h, LOCO_F32, &err);
    free(h);
    return t;
}

/* Best of `reps` runs of one op call after a warm-up run (caches, allocator), timed on the
 * clock `clk`; both are variables in scope. */
#define TIME_BEST(best, stmt)                                                                                      \
    do {                                                                                                           \
        best = 1e30;                                                                                               \
        for (int rep_ = 0; rep_ <= reps; rep_++) {                                                                 \
            double t0_ = now_s(clk);                                                                                  \
            stmt;                                                                                                  \
            double t_ = now_s(clk) - t0_;                                                                             \
            if (rep_ > 0 && t_ < best) best = t_;                                                                  \
        }                                                                                                          \
    } while (0)

/* The yardstick: a 2048^3 sgemm with OpenBLAS's own threading (as bench/cpu_sgemm_rate
 * measures it). The backend runs OpenBLAS single-threaded, so the setting is restored after. */
static double sgemm_rate(int threads, clockid_t clk, int reps) {
    int n = 2048;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    for (long i = 0; i < (long)n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    openblas_set_num_threads(threads);
    double best;
    TIME_BEST(best, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n));
    openblas_set_num_threads(1);
    free(a), free(b), free(c);
    return 2.0 * n * n * n / best * 1e-9;
}

/* The same problem through the backend's loco_linear. */
static double linear_rate(loco_backend *be, clockid_t clk, int reps) {
    int64_t xs[2] = {2048, 2048}, ws[2] = {2048, 2048};
    loco_tensor x = tensor(be, 2, xs, 1), w = tensor(be, 2, ws, 1), y = tensor(be, 2, xs, 0);
    loco_err err;
    double best;
    TIME_BEST(best, loco_linear(be, &y, &x, &w, NULL, LOCO_ACT_NONE, &err));
    loco_tensor_free(&x), loco_tensor_free(&w), loco_tensor_free(&y);
    return 2.0 * 2048 * 2048 * 2048 / best * 1e-9;
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CPU;
    o.num_threads = argc > 1 ? atoi(argv[1]) : 0;
    clockid_t clk = CLOCK_MONOTONIC;
    int reps = 3;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--cpu-time") == 0) clk = CLOCK_PROCESS_CPUTIME_ID;
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
    }
    if (reps < 1) reps = 1;
    loco_backend *be;
    loco_err err;
    if (loco_backend_create(&o, &be, &err) != LOCO_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("%s\n", loco_backend_describe(be));
    int threads = o.num_threads > 0 ? o.num_threads : openblas_get_num_procs();
    double ref = sgemm_rate(threads, clk, reps);
    printf("%-58s %8.1f GFLOP/s\n", "OpenBLAS sgemm 2048^3, its own threads (yardstick)", ref);
    double lin = linear_rate(be, clk, reps);
    printf("%-58s %8.1f GFLOP/s  %5.1f%% of yardstick\n", "loco_linear 2048^3", lin, 100 * lin / ref);
    double best;

    /* conv 3x3, 320 -> 320 channels, 64x64, batch 1 and 2 (the CFG pair) */
    for (int n = 1; n <= 2; n++) {
        int64_t xs[4] = {n, 320, 64, 64}, ws[4] = {320, 320, 3, 3}, bs[1] = {320};
        loco_tensor x = tensor(be, 4, xs, 1), w = tensor(be, 4, ws, 0.1f), b = tensor(be, 1, bs, 1),
                    y = tensor(be, 4, xs, 0);
        loco_conv2d_params p = {1, {1, 1, 1, 1}};
        TIME_BEST(best, loco_conv2d(be, &y, &x, &w, &b, &p, &err));
        double gf = 2.0 * n * 320 * 4096 * 2880 / best * 1e-9;
        printf("conv2d 3x3 320->320 64x64 batch %d %*s %8.1f GFLOP/s  %5.1f%% of yardstick  %.1f ms\n", n, 23, "",
               gf, 100 * gf / ref, best * 1e3);
        loco_tensor_free(&x), loco_tensor_free(&w), loco_tensor_free(&b), loco_tensor_free(&y);
    }
    /* conv 3x3 1280 -> 1280 at 8x8 (the UNet's bottom), batch 2 */
    {
        int64_t xs[4] = {2, 1280, 8, 8}, ws[4] = {1280, 1280, 3, 3}, bs[1] = {1280};
        loco_tensor x = tensor(be, 4, xs, 1), w = tensor(be, 4, ws, 0.1f), b = tensor(be, 1, bs, 1),
                    y = tensor(be, 4, xs, 0);
        loco_conv2d_params p = {1, {1, 1, 1, 1}};
        TIME_BEST(best, loco_conv2d(be, &y, &x, &w, &b, &p, &err));
        double gf = 2.0 * 2 * 1280 * 64 * 11520 / best * 1e-9;
        printf("%-58s %8.1f GFLOP/s  %5.1f%% of yardstick\n", "conv2d 3x3 1280->1280 8x8 batch 2", gf, 100 * gf / ref);
        loco_tensor_free(&x), loco_tensor_free(&w), loco_tensor_free(&b), loco_tensor_free(&y);
    }
    /* linear 320 -> 2560 + GEGLU and 1280 -> 320 on 2x4096 tokens */
    {
        int64_t xs[3] = {2, 4096, 320}, ws[2] = {2560, 320}, bs[1] = {2560}, ys[3] = {2, 4096, 2560},
                gs[3] = {2, 4096, 1280}, w2s[2] = {320, 1280}, b2s[1] = {320};
        loco_tensor x = tensor(be, 3, xs, 1), w = tensor(be, 2, ws, 0.1f), b = tensor(be, 1, bs, 1),
                    y = tensor(be, 3, ys, 0), g = tensor(be, 3, gs, 0), w2 = tensor(be, 2, w2s, 0.1f),
                    b2 = tensor(be, 1, b2s, 1), y2 = tensor(be, 3, xs, 0);
        TIME_BEST(best, loco_linear(be, &y, &x, &w, &b, LOCO_ACT_NONE, &err));
        double gf = 2.0 * 8192 * 2560 * 320 / best * 1e-9;
        printf("%-58s %8.1f GFLOP/s  %5.1f%% of yardstick\n", "linear 8192x320 -> 2560 + bias", gf, 100 * gf / ref);
        TIME_BEST(best, loco_geglu(be, &g, &y, &err));
        printf("%-58s %8.1f GB/s     %.2f ms\n", "geglu 8192x2560 -> 1280", (8192.0 * 3840 * 4) / best * 1e-9,
               best * 1e3);
        TIME_BEST(best, loco_linear(be, &y2, &g, &w2, &b2, LOCO_ACT_NONE, &err));
        gf = 2.0 * 8192 * 1280 * 320 / best * 1e-9;
        printf("%-58s %8.1f GFLOP/s  %5.1f%% of yardstick\n", "linear 8192x1280 -> 320 + bias", gf, 100 * gf / ref);
        loco_tensor_free(&x), loco_tensor_free(&w), loco_tensor_free(&b), loco_tensor_free(&y);
        loco_tensor_free(&g), loco_tensor_free(&w2), loco_tensor_free(&b2), loco_tensor_free(&y2);
    }
    /* attention: self 4096x4096, 8 heads of 40; cross 4096x77; batch 2 */
    {
        int64_t qs[3] = {2, 4096, 320}, ks[3] = {2, 77, 320};
        loco_tensor q = tensor(be, 3, qs, 1), k = tensor(be, 3, qs, 1), v = tensor(be, 3, qs, 1),
                    o2 = tensor(be, 3, qs, 0), kc = tensor(be, 3, ks, 1), vc = tensor(be, 3, ks, 1);
        loco_attention_params p = {8, 1.0f / sqrtf(40.0f), 0, NULL, 0};
        TIME_BEST(best, loco_attention(be, &o2, &q, &k, &v, &p, &err));
        double gf = 2.0 * 2 * 8 * 4096.0 * 4096 * 40 * 2 / best * 1e-9;
        printf("%-58s %8.1f GFLOP/s  %5.1f%% of yardstick  %.1f ms\n", "attention self 2x4096x4096, 8 heads x 40", gf,
               100 * gf / ref, best * 1e3);
        TIME_BEST(best, loco_attention(be, &o2, &q, &kc, &vc, &p, &err));
        gf = 2.0 * 2 * 8 * 4096.0 * 77 * 40 * 2 / best * 1e-9;
        printf("%-58s %8.1f GFLOP/s  %5.1f%% of yardstick\n", "attention cross 2x4096x77, 8 heads x 40", gf,
               100 * gf / ref);
        loco_tensor_free(&q), loco_tensor_free(&k), loco_tensor_free(&v), loco_tensor_free(&o2);
        loco_tensor_free(&kc), loco_tensor_free(&vc);
    }
    /* memory-bound: group norm + SiLU, layer norm, transpose on [2, 320, 64, 64] */
    {
        int64_t xs[4] = {2, 320, 64, 64}, cs[1] = {320}, ts[3] = {2, 320, 4096}, tt[3] = {2, 4096, 320};
        loco_tensor x = tensor(be, 4, xs, 1), y = tensor(be, 4, xs, 0), g = tensor(be, 1, cs, 1),
                    b = tensor(be, 1, cs, 1);
        double bytes = 2.0 * 2 * 320 * 4096 * 4;
        TIME_BEST(best, loco_group_norm(be, &y, &x, 32, &g, &b, 1e-5f, 1, &err));
        printf("%-58s %8.1f GB/s     %.2f ms\n", "group_norm+silu [2,320,64,64]", bytes / best * 1e-9, best * 1e3);
        loco_tensor xv, yv;
        loco_tensor_view(&x, 0, 3, tt, &xv, &err);
        loco_tensor_view(&y, 0, 3, tt, &yv, &err);
        TIME_BEST(best, loco_layer_norm(be, &yv, &xv, &g, &b, 1e-5f, &err));
        printf("%-58s %8.1f GB/s     %.2f ms\n", "layer_norm [2,4096,320]", bytes / best * 1e-9, best * 1e3);
        loco_tensor_view(&x, 0, 3, ts, &xv, &err);
        TIME_BEST(best, loco_transpose12(be, &yv, &xv, &err));
        printf("%-58s %8.1f GB/s     %.2f ms\n", "transpose12 [2,320,4096]", bytes / best * 1e-9, best * 1e3);
        TIME_BEST(best, loco_add(be, &y, &x, &y, &err));
        printf("%-58s %8.1f GB/s     %.2f ms\n", "add [2,320,64,64]", 1.5 * bytes / best * 1e-9, best * 1e3);
        loco_tensor_free(&x), loco_tensor_free(&y), loco_tensor_free(&g), loco_tensor_free(&b);
    }
    loco_backend_destroy(be);
    return 0;
}
