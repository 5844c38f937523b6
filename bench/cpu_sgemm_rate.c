/* cpu_sgemm_rate.c: the machine's sgemm rate (OpenBLAS), the yardstick the CPU backend's
 * speed is judged against (an SD UNet call on the CPU must reach a fixed fraction of it).
 * Prints GFLOP/s for a few large shapes, including the shapes a UNet actually issues. Not a
 * test: it asserts nothing and its numbers depend on the machine. */
#include <cblas.h>

#include "backend.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best-of-`reps` rate of C[M,N] = A[M,K]·B (B stored [K,N] or, with tb, [N,K]). */
static double rate(int M, int N, int K, int tb, int reps) {
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)K * N),
          *c = malloc(sizeof(float) * (size_t)M * N);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return -1;
    }
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)((i * 7 + 3) % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)((i * 5 + 1) % 11) * 0.01f;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) { /* the first run warms pages and threads */
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, a, K, b,
                    tb ? K : N, 0.0f, c, N);
        double t = now_s() - t0;
        if (r > 0 && t < best) best = t;
    }
    free(a), free(b), free(c);
    return 2.0 * M * N * K / best * 1e-9;
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    static const struct {
        int M, N, K, tb;
        const char *what;
    } shapes[] = {
        {1024, 1024, 1024, 0, "square 1024"},
        {2048, 2048, 2048, 0, "square 2048"},
        {4096, 4096, 4096, 0, "square 4096"},
        {4096, 320, 320, 1, "linear 4096 tokens x 320 -> 320 (x·wT)"},
        {4096, 2560, 320, 1, "linear 4096 tokens x 320 -> 2560 (GEGLU proj)"},
        {320, 4096, 2880, 0, "conv 3x3 320ch 64x64 as w·im2col"},
        {256, 4096, 40, 1, "attention scores q-tile 256 x 4096 keys, d=40"},
        {256, 40, 4096, 0, "attention P·V q-tile 256 x 4096 keys, d=40"},
    };
    printf("OpenBLAS %s, %d threads\n", openblas_get_config(), openblas_get_num_threads());
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        double g = rate(shapes[i].M, shapes[i].N, shapes[i].K, shapes[i].tb, 3);
        printf("%-50s M=%5d N=%5d K=%5d  %8.1f GFLOP/s\n", shapes[i].what, shapes[i].M, shapes[i].N, shapes[i].K,
               g);
    }
    return 0;
}
