/* pipeline_bench.c: times loco's whole text-to-image pipeline on a full-size architecture with
 * random weights (loco_pipeline_load_random: the embedded SD 1.5 / SD 2.1 / SD-XL configs, the
 * same config.json files diffusers_bench.py builds its models from), and prints one RESULT
 * line per batch size for bench/gpu/report.py to put next to diffusers' numbers.
 *
 * Method (the same as diffusers_bench.py, so the two are comparable):
 *   - one warm-up generate of 2 steps at the same size and batch (kernel loading, cuBLASLt
 *     plans, the UNet graph's pool and recording, the VAE's shapes);
 *   - one timed generate of T steps (T <= the nominal N). After each UNet call the progress
 *     callback waits for the device and takes the time, so every call's duration is known;
 *     the time of a whole N-step image is then estimated as
 *         total(T) + (calls(N) - calls(T)) * median call time
 *     (text encoding, the first call and the decode are measured, not extrapolated). With T = N
 *     nothing is extrapolated. The sync per call costs a few microseconds of idle device.
 *
 * Usage: pipeline_bench [--device cuda|cpu|auto] [--family sd1|sd2|sdxl] [--size PX]
 *                       [--batch B[,B...]] [--steps N] [--timed-steps T[,T...]] [--graphs 0|1]
 *                       [--vae-dtype f32|bf16] [--seed S] [--profile B]
 * --profile B: after the timings, where a batch-B decode's time goes ("DECODE" lines: the VAE's
 * kernels and the images' transfer, after a generate and repeated), then one 2-step generate of
 * batch B with graphs off and every op synchronised and timed (loco_backend_profile_rows):
 * "PROFILE" lines, time per op kind, then the 120 costliest (op, shape) rows with their rate.
 * (one timed-steps value per batch, or one for all). Output:
 *   RESULT impl=loco family=sd1 size=512 batch=1 steps=50 timed_steps=50 calls=51 total_s=...
 *          s_per_image=... call_ms=... text_s=... decode_s=... graphs=... */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image.h"
#include "pipeline.h"
#include "unet.h"
#include "vae.h"

#define MAX_BATCHES 8

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct timer_ctx {
    loco_backend *be;
    double *t; /* time after each UNet call */
    int n, cap;
    int failed;
    loco_err err;
} timer_ctx;

static int on_step(void *ctx, int step, int total) {
    (void)step;
    (void)total;
    timer_ctx *c = ctx;
    if (loco_backend_sync(c->be, &c->err) != LOCO_OK) {
        c->failed = 1;
        return 1; /* cancels the run; the error is reported from c->err */
    }
    if (c->n < c->cap) c->t[c->n++] = now_s();
    return 0;
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    while (s && *s && n < max) {
        out[n++] = atoi(s);
        s = strchr(s, ',');
        if (s) s++;
    }
    return n;
}

/* UNet calls of an N-step schedule of the pipeline's default scheduler (PNDM: N + 1). */
static int calls_for(loco_pipeline *p, int steps, loco_err *err) {
    loco_scheduler *s = NULL;
    if (loco_scheduler_create(loco_pipeline_default_scheduler(p), loco_pipeline_scheduler_config(p), steps,
                              loco_pipeline_backend(p), &s, err) != LOCO_OK)
        return -1;
    int n = loco_scheduler_num_calls(s);
    loco_scheduler_destroy(s);
    return n;
}

static const char *const PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed";
static const char *const NEGATIVE = "blurry, low quality";

/* One generate of `steps` steps with batch images; fills the timer. */
static loco_status run_ex(loco_pipeline *p, int size, int batch, int steps, int skip_decode, float **latents,
                          timer_ctx *tc, double *t0, double *t1, loco_err *err) {
    const char *prompts[1] = {PROMPT}, *negatives[1] = {NEGATIVE};
    loco_generate_params g;
    loco_generate_params_init(&g);
    g.n_prompts = 1;
    g.prompts = prompts;
    g.negative_prompts = negatives;
    g.num_images_per_prompt = batch;
    g.seed = 42;
    g.steps = steps;
    g.width = g.height = size;
    g.progress = on_step;
    g.progress_ctx = tc;
    g.skip_decode = skip_decode;
    tc->n = 0;
    tc->failed = 0;
    loco_generate_result r;
    loco_status st = loco_backend_sync(loco_pipeline_backend(p), err);
    *t0 = now_s();
    if (!st) st = loco_generate(p, &g, &r, err);
    *t1 = now_s();
    if (tc->failed) {
        *err = tc->err;
        return tc->err.code ? tc->err.code : LOCO_EDEVICE;
    }
    if (!st) {
        /* a NaN image would make a fast run meaningless */
        for (size_t i = 0; r.latents && i < (size_t)(r.latent_shape[0] * r.latent_shape[1] * r.latent_shape[2] *
                                                      r.latent_shape[3]);
             i++)
            if (!isfinite(r.latents[i])) {
                st = loco_err_set(err, LOCO_EDEVICE, "final latents hold NaN/Inf (at %zu)", i);
                break;
            }
        if (!st && latents) {
            *latents = r.latents;
            r.latents = NULL;
        }
        loco_generate_result_free(&r);
    }
    return st;
}

static loco_status run(loco_pipeline *p, int size, int batch, int steps, timer_ctx *tc, double *t0, double *t1,
                       loco_err *err) {
    return run_ex(p, size, batch, steps, 0, NULL, tc, t0, t1, err);
}

static int cmp_row_seconds(const void *a, const void *b) {
    const loco_op_profile_row *x = a, *y = b;
    return x->seconds < y->seconds ? 1 : x->seconds > y->seconds ? -1 : 0;
}

/* One 2-step generate with graphs off and every op timed on its own; prints PROFILE lines. */
static loco_status profile(loco_pipeline *p, loco_backend *be, int size, int batch, loco_err *err) {
    loco_unet *u = loco_pipeline_unet(p);
    loco_unet_set_graphs(u, 0);
    timer_ctx tc = {.be = be, .cap = 16};
    double t[16], t0, t1;
    tc.t = t;
    loco_status st = run(p, size, batch, 2, &tc, &t0, &t1, err); /* warm-up without graphs */
    if (st) return st;
    const double tail_unprofiled = tc.n > 0 ? t1 - tc.t[tc.n - 1] : 0.0;
    loco_backend_profile_start(be);
    st = run(p, size, batch, 2, &tc, &t0, &t1, err);
    loco_op_profile prof;
    loco_backend_profile_stop(be, &prof);
    if (st) return st;
    double total = 0;
    for (int k = 0; k < LOCO_OP_KIND_COUNT; k++) total += prof.seconds[k];
    printf("PROFILE batch=%d steps=2 (text encoding, %d UNet calls, VAE decode; graphs off, every op synchronised): "
           "%.1f ms in ops, %.1f ms wall; after the last UNet call %.1f ms (%.1f ms unprofiled)\n", batch, tc.n,
           total * 1e3, (t1 - t0) * 1e3, tc.n > 0 ? (t1 - tc.t[tc.n - 1]) * 1e3 : 0.0, tail_unprofiled * 1e3);
    for (int k = 0; k < LOCO_OP_KIND_COUNT; k++)
        printf("PROFILE kind %-12s %6lld calls %9.2f ms %5.1f%% %8.1f TFLOP/s\n", loco_op_kind_name((loco_op_kind)k),
               (long long)prof.calls[k], prof.seconds[k] * 1e3, total > 0 ? 100.0 * prof.seconds[k] / total : 0.0,
               prof.seconds[k] > 0 ? prof.flops[k] / prof.seconds[k] * 1e-12 : 0.0);
    const loco_op_profile_row *rows;
    int n = loco_backend_profile_rows(be, &rows);
    loco_op_profile_row *sorted = malloc((size_t)(n > 0 ? n : 1) * sizeof *sorted);
    if (!sorted) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    memcpy(sorted, rows, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_row_seconds);
    for (int i = 0; i < n && i < 120; i++)
        printf("PROFILE row %8.2f ms %5.1f%% %5lld calls %7.1f TFLOP/s  %s\n", sorted[i].seconds * 1e3,
               total > 0 ? 100.0 * sorted[i].seconds / total : 0.0, (long long)sorted[i].calls,
               sorted[i].seconds > 0 ? sorted[i].flops / sorted[i].seconds * 1e-12 : 0.0, sorted[i].what);
    free(sorted);
    fflush(stdout);
    return LOCO_OK;
}

/* One timed decode of z: the VAE's kernels (synchronised before and after), then the images'
 * download and quantisation on the host. */
static loco_status timed_decode(loco_pipeline *p, loco_backend *be, const loco_tensor *z, int batch, double *vae_s,
                                double *img_s, loco_err *err) {
    loco_tensor image = {0};
    loco_status st = loco_backend_sync(be, err);
    const double t0 = now_s();
    if (!st) st = loco_vae_decode(loco_pipeline_vae(p), z, NULL, NULL, &image, err);
    if (!st) st = loco_backend_sync(be, err);
    const double t1 = now_s();
    for (int k = 0; k < batch && !st; k++) {
        loco_image im;
        st = loco_image_from_tensor(&image, k, &im, err);
        loco_image_free(&im);
    }
    *vae_s = t1 - t0;
    *img_s = now_s() - t1;
    loco_tensor_free(&image);
    return st;
}

/* Where a b-image decode's time goes. First as generate runs it: a 2-step generate without
 * the decode (its tail after the last UNet call: the latents' download), then the decode of
 * its latents as they come (f32); then four decodes of constant latents in the activation
 * dtype, one after the other. Timings do not depend on values. Prints DECODE lines. */
static loco_status decode_breakdown(loco_pipeline *p, loco_backend *be, int size, int batch, loco_err *err) {
    const int s = loco_pipeline_vae_scale(p);
    const int64_t shape[4] = {batch, 4, size / s, size / s};
    timer_ctx tc = {.be = be, .cap = 16};
    double t[16], t0, t1, vae_s = 0, img_s = 0;
    tc.t = t;
    float *lat = NULL;
    loco_tensor z = {0};
    loco_status st = run_ex(p, size, batch, 2, 1, &lat, &tc, &t0, &t1, err);
    const double tail = tc.n > 0 ? t1 - tc.t[tc.n - 1] : 0.0;
    if (!st) st = loco_tensor_alloc(be, LOCO_F32, 4, shape, &z, err);
    if (!st) st = loco_tensor_upload(&z, lat, LOCO_F32, err);
    free(lat);
    if (!st) st = timed_decode(p, be, &z, batch, &vae_s, &img_s, err);
    loco_tensor_free(&z);
    if (st) return st;
    printf("DECODE batch=%d size=%d after a generate: its tail without decode %.2f ms; decode of its f32 latents: "
           "vae_ms=%.2f images_ms=%.2f\n", batch, size, tail * 1e3, vae_s * 1e3, img_s * 1e3);
    st = loco_tensor_alloc_act(be, 4, shape, &z, err);
    if (!st) st = loco_fill(be, &z, 0.25f, err);
    for (int rep = 0; rep < 4 && !st; rep++) {
        st = timed_decode(p, be, &z, batch, &vae_s, &img_s, err);
        if (!st)
            printf("DECODE batch=%d size=%d repeat %d (constant latents, activation dtype): vae_ms=%.2f "
                   "images_ms=%.2f\n", batch, size, rep, vae_s * 1e3, img_s * 1e3);
    }
    loco_tensor_free(&z);
    fflush(stdout);
    return st;
}

static void usage(void) {
    fprintf(stderr, "usage: pipeline_bench [--device cuda|cpu|auto] [--family sd1|sd2|sdxl] [--size PX] "
                    "[--batch B[,B..]] [--steps N] [--timed-steps T[,T..]] [--graphs 0|1] [--vae-dtype f32|bf16] "
                    "[--seed S] [--profile B]\n");
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    const char *device = "cuda", *family_name = "sd1", *vae_dtype = "f32";
    int size = 0, steps = 50, graphs = 1, batches[MAX_BATCHES] = {1}, nb = 1, timed[MAX_BATCHES] = {0}, nt = 0;
    unsigned long long seed = 1;
    int profile_batch = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--family")) family_name = v;
        else if (!strcmp(a, "--size")) size = atoi(v);
        else if (!strcmp(a, "--batch")) nb = parse_list(v, batches, MAX_BATCHES);
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--timed-steps")) nt = parse_list(v, timed, MAX_BATCHES);
        else if (!strcmp(a, "--graphs")) graphs = atoi(v);
        else if (!strcmp(a, "--profile")) profile_batch = atoi(v);
        else if (!strcmp(a, "--vae-dtype")) vae_dtype = v;
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else {
            usage();
            return 2;
        }
        i++;
    }
    loco_model_family family;
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    if (loco_model_family_from_name(family_name, &family) || loco_device_from_name(device, &bo.device) || nb < 1 ||
        steps < 1) {
        usage();
        return 2;
    }
    loco_err err;
    loco_err_clear(&err);
    loco_backend *be = NULL;
    if (loco_backend_create(&bo, &be, &err)) {
        fprintf(stderr, "pipeline_bench: %s\n", err.msg);
        return 1;
    }
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.vae_upcast_dtype = !strcmp(vae_dtype, "bf16") ? LOCO_BF16 : LOCO_F32;
    loco_pipeline *p = NULL;
    double tl = now_s();
    if (loco_pipeline_load_random(be, family, seed, &po, &p, &err)) {
        fprintf(stderr, "pipeline_bench: %s\n", err.msg);
        loco_backend_destroy(be);
        return 1;
    }
    tl = now_s() - tl;
    loco_unet_set_graphs(loco_pipeline_unet(p), graphs);
    if (size <= 0) size = loco_pipeline_default_size(p);
    size_t mem = 0;
    loco_backend_memory(be, &mem, NULL);
    fprintf(stderr, "pipeline_bench: %s; %s built in %.1f s (random weights, %.2f GiB resident, VAE in %s)\n",
            loco_backend_describe(be), family_name, tl, (double)mem / (1024.0 * 1024.0 * 1024.0),
            loco_dtype_name(loco_vae_dtype(loco_pipeline_vae(p))));

    int rc = 0;
    const int calls_n = calls_for(p, steps, &err);
    for (int bi = 0; bi < nb && calls_n > 0; bi++) {
        const int batch = batches[bi];
        int t_steps = nt > bi ? timed[bi] : nt > 0 ? timed[nt - 1] : steps;
        if (t_steps < 2 || t_steps > steps) t_steps = steps;
        const int calls_t = calls_for(p, t_steps, &err);
        timer_ctx tc = {.be = be, .cap = calls_t + 8};
        tc.t = calloc((size_t)tc.cap, sizeof *tc.t);
        double t0, t1;
        loco_status st = tc.t ? LOCO_OK : loco_err_set(&err, LOCO_ENOMEM, "out of memory");
        if (!st) st = run(p, size, batch, 2, &tc, &t0, &t1, &err); /* warm-up */
        if (!st) st = run(p, size, batch, t_steps, &tc, &t0, &t1, &err);
        if (st || tc.n < 2) {
            fprintf(stderr, "pipeline_bench: %s batch %d: %s\n", family_name, batch,
                    st ? err.msg : "too few UNet calls timed");
            printf("RESULT impl=loco family=%s size=%d batch=%d steps=%d error=%s\n", family_name, size, batch, steps,
                   loco_status_name(st ? st : LOCO_EINVAL));
            rc = 1;
            free(tc.t);
            continue;
        }
        /* per-call durations from the second call on (the first one also carries text
         * encoding and noise; it stays in the measured total) */
        double *d = calloc((size_t)tc.n, sizeof *d);
        int nd = 0;
        for (int i = 1; d && i < tc.n; i++) d[nd++] = tc.t[i] - tc.t[i - 1];
        qsort(d, (size_t)nd, sizeof *d, cmp_double);
        const double call_s = nd ? d[nd / 2] : 0;
        const double total_t = t1 - t0;
        const double total = total_t + (double)(calls_n - calls_t) * call_s;
        const double text_s = tc.t[0] - t0 - call_s; /* first call's own time taken as a median call */
        const double decode_s = t1 - tc.t[tc.n - 1];
        loco_unet_graph_stats gs;
        loco_unet_graph_stats_get(loco_pipeline_unet(p), &gs);
        printf("RESULT impl=loco family=%s size=%d batch=%d steps=%d timed_steps=%d calls=%d total_s=%.4f "
               "s_per_image=%.4f call_ms=%.3f text_s=%.4f decode_s=%.4f graphs=%s graph_pool_mib=%.0f\n",
               family_name, size, batch, steps, t_steps, calls_n, total, total / batch, call_s * 1e3, text_s,
               decode_s, !graphs || !loco_backend_has_graphs(be) ? "off" : gs.replays > 0 ? "on" : "failed",
               (double)gs.pool_bytes / 1048576.0);
        if (graphs && loco_backend_has_graphs(be) && gs.last_error[0])
            fprintf(stderr, "pipeline_bench: graph recording failed at least once: %s\n", gs.last_error);
        fflush(stdout);
        free(d);
        free(tc.t);
    }
    if (calls_n <= 0) {
        fprintf(stderr, "pipeline_bench: %s\n", err.msg);
        rc = 1;
    }
    if (calls_n > 0 && profile_batch > 0 && decode_breakdown(p, be, size, profile_batch, &err) != LOCO_OK) {
        fprintf(stderr, "pipeline_bench: decode breakdown: %s\n", err.msg);
        rc = 1;
    }
    if (calls_n > 0 && profile_batch > 0 && profile(p, be, size, profile_batch, &err) != LOCO_OK) {
        fprintf(stderr, "pipeline_bench: profile: %s\n", err.msg);
        rc = 1;
    }
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    return rc;
}
