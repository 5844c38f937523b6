/* edit_cpu.c: LocoEdit and Diff-QuickFix at SD 1.5 and SD-XL sizes on the CPU backend.
 *
 *   build/bench/edit_cpu [--repeat N] [--only sd15|sdxl]
 *
 * Real configs (config/model-defaults/), deterministic random weights (loco_weights_new_random),
 * the bundled CLIP tokenizer. Timed, per method and model, "the edit itself" = solve + write-back:
 *
 *   LocoEdit:      for each to_k/to_v of the window (SD 1.5: layers 8-9, [1280, 768]; SD-XL: 45-47,
 *                  [1280, 2048]): loco_edit_solve_tensor (download W, values W x_target, float64
 *                  push-through solve) and the write-back loco_pipeline_variant_set_param does for a
 *                  UNet tensor shared with the base (float64 -> float32 record, a new backend tensor,
 *                  upload). The UNet itself is not built (10 GB of float32 for SD-XL): only the
 *                  window's matrices, at their real shapes, on the same backend.
 *   Diff-QuickFix: loco_edit_solve_tensor on layer 0's out_proj ([768, 768]; SD-XL also [1280, 1280])
 *                  and loco_clip_text_set_param on a text-encoder variant (the real write-back).
 *
 * Reported separately: building the rows (LocoEdit: 5 prompts through the full encoders in float64,
 * cut after each row's position; Diff-QuickFix: 4 caption pairs through layer 0 in float64). Target:
 * the edit itself under 100 ms. Prints one JSON object per measurement and a summary table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "clip_text.h"
#include "clip_tokenizer.h"
#include "edit.h"
#include "edit_internal.h"
#include "random_weights.h"
#include "unet.h"
#include "weights.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* best of the runs: on a shared machine the run least disturbed by other processes */
static double best(const double *v, int n) {
    double b = v[0];
    for (int i = 1; i < n; i++)
        if (v[i] < b) b = v[i];
    return b;
}

static loco_clip_text *make_encoder(loco_backend *be, const char *fam, const char *comp, uint64_t seed) {
    char path[512];
    snprintf(path, sizeof path, "config/model-defaults/%s/%s/config.json", fam, comp);
    loco_clip_text_config cfg;
    loco_err e = {0};
    loco_weights *w = NULL;
    loco_clip_text *te = NULL;
    if (loco_clip_text_config_load(path, &cfg, &e) || loco_weights_new_random(comp, seed, &w, &e)) DIE("%s: %s", path, e.msg);
    /* the random set makes tensors on `require` only; the projection is looked up as optional */
    if (cfg.with_projection == 1 &&
        loco_weights_require(w, "text_projection.weight", 2, (int64_t[]){cfg.projection_dim, cfg.hidden_size}, NULL, &e))
        DIE("%s: %s", path, e.msg);
    if (loco_clip_text_create(be, &cfg, w, &te, &e)) DIE("%s: %s", path, e.msg);
    loco_weights_free(w);
    return te;
}

/* A [rows, cols] weight on the backend with the deterministic random values of `name`. */
static void make_weight(loco_backend *be, const char *name, int64_t rows, int64_t cols, loco_tensor *t) {
    int64_t shape[2] = {rows, cols};
    uint16_t *h = malloc((size_t)(rows * cols) * sizeof *h);
    loco_err e = {0};
    if (!h) DIE("out of memory");
    loco_random_weights_fill(name, 7, 2, shape, h);
    if (loco_tensor_alloc(be, LOCO_F32, 2, shape, t, &e) || loco_tensor_upload(t, h, LOCO_F16, &e)) DIE("%s", e.msg);
    free(h);
}

/* to_k/to_v are [C, D] with C the channels of the block holding the layer (up blocks reversed) */
static int block_channels(const loco_unet_config *c, const char *site) {
    if (!strncmp(site, "down_blocks.", 12)) return c->block_out_channels[atoi(site + 12)];
    if (!strncmp(site, "up_blocks.", 10)) return c->block_out_channels[c->n_blocks - 1 - atoi(site + 10)];
    return c->block_out_channels[c->n_blocks - 1];
}

typedef struct model_case {
    const char *label, *fam;
    int xl;
} model_case;

static void print_row(const char *model, const char *method, const char *what, double ms, double best_ms,
                      const char *note) {
    printf("{\"model\": \"%s\", \"method\": \"%s\", \"what\": \"%s\", \"median_ms\": %.3f, \"best_ms\": %.3f, "
           "\"note\": \"%s\"}\n",
           model, method, what, ms, best_ms, note);
    fflush(stdout);
}

static void bench_model(loco_backend *be, const model_case *mc, int repeat, double results[6]) {
    loco_err e = {0};
    const double t_build = now();
    loco_clip_text *te1 = make_encoder(be, mc->fam, "text_encoder", 1);
    loco_clip_text *te2 = mc->xl ? make_encoder(be, mc->fam, "text_encoder_2", 2) : NULL;
    loco_clip_tokenizer *tok = NULL;
    if (loco_clip_tokenizer_load("config/tokenizers/clip", &tok, &e)) DIE("tokenizer: %s", e.msg);
    fprintf(stderr, "%s: random-weight text encoder%s built in %.1f s\n", mc->label, mc->xl ? "s" : "", now() - t_build);
    /* the UNet's config says which layers the window is and how wide they are */
    char path[512];
    snprintf(path, sizeof path, "config/model-defaults/%s/unet/config.json", mc->fam);
    loco_unet_config ucfg;
    loco_site *sites = NULL;
    int nsites = 0;
    if (loco_unet_config_load(path, &ucfg, &e) || loco_unet_config_sites(&ucfg, &sites, &nsites, &e)) DIE("%s", e.msg);
    const int D = ucfg.cross_attention_dim[0];

    /* a pipeline view of the text side, for the float64 rows */
    struct loco_pipeline pv;
    memset(&pv, 0, sizeof pv);
    pv.be = be;
    pv.family = mc->xl ? LOCO_FAMILY_SDXL : LOCO_FAMILY_SD1;
    pv.tokenizer = tok;
    pv.text_encoder = te1;
    pv.tokenizer_2 = mc->xl ? tok : NULL;
    pv.text_encoder_2 = te2;

    /* ---- LocoEdit ---- */
    const char *concept = "van gogh";
    const char *prompts[5] = {"van gogh", "a painting in the style of van gogh", "a photo in the style of van gogh",
                              "a picture in the style of van gogh", "a painting"};
    int pos[5], first;
    for (int i = 0; i < 5; i++)
        if (edit_prompt_span(&pv, prompts[i], i < 4 ? concept : NULL, &first, &pos[i], &e)) DIE("%s", e.msg);
    double *rows = malloc((size_t)5 * D * sizeof *rows), *targets = malloc((size_t)4 * D * sizeof *targets);
    double *tr = malloc((size_t)repeat * sizeof *tr), *ts = malloc((size_t)repeat * sizeof *ts);
    double *tc = malloc((size_t)repeat * sizeof *tc); /* process CPU time of the same runs */
    /* the rows are seconds, not milliseconds, at SD-XL size: fewer runs of them */
    const int rrep = repeat < 3 ? repeat : 3;
    for (int r = 0; r < rrep; r++) {
        double t0 = now();
        if (edit_condition_rows64(&pv, prompts, pos, 5, 0, rows, D, &e)) DIE("rows: %s", e.msg);
        tr[r] = now() - t0;
    }
    for (int i = 0; i < 4; i++) memcpy(targets + (size_t)i * D, rows + (size_t)4 * D, (size_t)D * sizeof *targets);
    int start, m;
    loco_edit_default_window(pv.family, &start, &m);
    loco_tensor w[8];
    char names[8][320];
    int nw = 0;
    for (int s = 0; s < nsites; s++)
        if ((sites[s].kind == LOCO_SITE_CROSS_K || sites[s].kind == LOCO_SITE_CROSS_V) &&
            sites[s].cross_index >= start && sites[s].cross_index < start + m) {
            snprintf(names[nw], sizeof names[nw], "%s.weight", sites[s].name);
            make_weight(be, names[nw], block_channels(&ucfg, sites[s].name), D, &w[nw]);
            nw++;
        }
    char note[256];
    snprintf(note, sizeof note, "%d matrices [%lld, %d], layers %d-%d", nw, (long long)w[0].shape[0], D, start,
             start + m - 1);
    for (int r = 0; r < repeat; r++) {
        double t0 = now(), c0 = bench_cpu_seconds();
        /* as loco_edit_locoedit: one float64 work buffer for the window's matrices */
        int64_t maxel = 0;
        for (int i = 0; i < nw; i++)
            if (w[i].shape[0] * w[i].shape[1] > maxel) maxel = w[i].shape[0] * w[i].shape[1];
        double *work = malloc((size_t)maxel * sizeof *work);
        for (int i = 0; i < nw; i++) {
            const int64_t numel = w[i].shape[0] * w[i].shape[1];
            (void)numel;
            loco_ridge_info info;
            /* as loco_edit_locoedit: the variant's new tensor is allocated and, float32 host
             * memory on this backend, written in place by the solve (adopting it is a pointer swap) */
            loco_tensor nt;
            if (loco_tensor_alloc(be, w[i].dtype, 2, w[i].shape, &nt, &e)) DIE("%s", e.msg);
            if (loco_edit_solve_tensor(&w[i], rows, targets, 4, 1, 0.01, LOCO_SOLVE_AUTO, names[i], nt.data, work, &info,
                                       &e))
                DIE("%s", e.msg);
            loco_tensor_free(&nt);
        }
        free(work);
        ts[r] = now() - t0;
        tc[r] = bench_cpu_seconds() - c0;
    }
    results[4] = 1e3 * best(ts, repeat);
    results[0] = 1e3 * median(ts, repeat);
    print_row(mc->label, "locoedit", "solve+write-back", results[0], results[4], note);
    const double bc = 1e3 * best(tc, repeat);
    print_row(mc->label, "locoedit", "solve+write-back, process CPU time", 1e3 * median(tc, repeat), bc, "all threads");
    const double br = 1e3 * best(tr, rrep);
    results[1] = 1e3 * median(tr, rrep);
    print_row(mc->label, "locoedit", "rows (float64 text encoders)", results[1], br, "5 prompts, cut at their rows");
    for (int i = 0; i < nw; i++) loco_tensor_free(&w[i]);

    /* ---- Diff-QuickFix ---- */
    loco_clip_text *encs[2] = {te1, te2};
    loco_clip_text *vars[2] = {NULL, NULL};
    for (int k = 0; k < (mc->xl ? 2 : 1); k++)
        if (loco_clip_text_variant(encs[k], &vars[k], &e)) DIE("%s", e.msg);
    const char *old[4] = {"van gogh", "A photo of van gogh", "An image of van gogh", "A picture of van gogh"};
    const char *newc[4] = {"painting", "A photo of painting", "An image of painting", "A picture of painting"};
    double *keys[2] = {0}, *vals[2] = {0};
    int npairs[2] = {0};
    double *tp = malloc((size_t)repeat * sizeof *tp);
    for (int r = 0; r < rrep; r++) {
        double t0 = now();
        for (int k = 0; k < (mc->xl ? 2 : 1); k++) {
            const int Dk = loco_clip_text_get_config(encs[k])->hidden_size;
            free(keys[k]);
            free(vals[k]);
            keys[k] = malloc((size_t)4 * 77 * Dk * sizeof **keys);
            vals[k] = malloc((size_t)4 * 77 * Dk * sizeof **vals);
            double *pin = malloc((size_t)2 * 77 * Dk * sizeof *pin), *pout = malloc((size_t)2 * 77 * Dk * sizeof *pout);
            int32_t ids[2 * 77];
            int n = 0;
            for (int c = 0; c < 4; c++) {
                int pk, pv2, f;
                if (loco_edit_subject_span(tok, old[c], concept, &f, &pk, &e) ||
                    loco_edit_subject_span(tok, newc[c], "painting", &f, &pv2, &e) ||
                    loco_clip_tokenize(tok, old[c], ids, NULL, &e) || loco_clip_tokenize(tok, newc[c], ids + 77, NULL, &e))
                    DIE("%s", e.msg);
                edit_text64_req rq = {.capture_layer = 0, .proj_in = pin, .proj_out = pout};
                if (edit_text64_forward(encs[k], ids, 2, 77, &rq, &e)) DIE("%s", e.msg);
                for (int t = 0; t < 77 - pk; t++, n++) {
                    const int vp = pv2 + t < 77 ? pv2 + t : 76;
                    memcpy(keys[k] + (size_t)n * Dk, pin + (size_t)(pk + t) * Dk, (size_t)Dk * sizeof *pin);
                    memcpy(vals[k] + (size_t)n * Dk, pout + (size_t)(77 + vp) * Dk, (size_t)Dk * sizeof *pout);
                }
            }
            npairs[k] = n;
            free(pin);
            free(pout);
        }
        tp[r] = now() - t0;
    }
    const char *oname = "text_model.encoder.layers.0.self_attn.out_proj.weight";
    double *tk[2] = {malloc((size_t)repeat * sizeof(double)), malloc((size_t)repeat * sizeof(double))};
    for (int r = 0; r < repeat; r++) {
        double t0 = now(), c0 = bench_cpu_seconds();
        for (int k = 0; k < (mc->xl ? 2 : 1); k++) {
            const double tk0 = now();
            const loco_tensor *wt = loco_clip_text_param(vars[k], oname);
            const int64_t numel = loco_tensor_numel(wt);
            float *wn = malloc((size_t)numel * sizeof *wn);
            loco_ridge_info info;
            if (loco_edit_solve_tensor(wt, keys[k], vals[k], npairs[k], 0, 0.01, LOCO_SOLVE_AUTO, oname, wn, NULL, &info, &e) ||
                loco_clip_text_set_param(vars[k], oname, wn, LOCO_F32, &e))
                DIE("%s", e.msg);
            free(wn);
            tk[k][r] = now() - tk0;
        }
        ts[r] = now() - t0;
        tc[r] = bench_cpu_seconds() - c0;
    }
    snprintf(note, sizeof note, "%d pairs, out_proj [%d, %d]%s", npairs[0], loco_clip_text_get_config(te1)->hidden_size,
             loco_clip_text_get_config(te1)->hidden_size, mc->xl ? " + encoder 2 [1280, 1280]" : "");
    results[5] = 1e3 * best(ts, repeat);
    results[2] = 1e3 * median(ts, repeat);
    const double bp = 1e3 * best(tp, rrep);
    results[3] = 1e3 * median(tp, rrep);
    print_row(mc->label, "quickfix", "solve+write-back", results[2], results[5], note);
    const double bq = 1e3 * best(tc, repeat);
    print_row(mc->label, "quickfix", "solve+write-back, process CPU time", 1e3 * median(tc, repeat), bq, "all threads");
    print_row(mc->label, "quickfix", "pairs (float64 layer 0)", results[3], bp, "4 caption pairs");
    for (int k = 0; mc->xl && k < 2; k++) {
        char what[64];
        snprintf(what, sizeof what, "solve+write-back, encoder %d only", k + 1);
        const double bk = 1e3 * best(tk[k], repeat);
        print_row(mc->label, "quickfix", what, 1e3 * median(tk[k], repeat), bk, k ? "[1280, 1280]" : "[768, 768]");
    }
    free(tk[0]);
    free(tk[1]);

    for (int k = 0; k < 2; k++) {
        loco_clip_text_free(vars[k]);
        free(keys[k]);
        free(vals[k]);
    }
    free(rows), free(targets), free(tr), free(ts), free(tp), free(tc);
    loco_unet_sites_free(sites, nsites);
    loco_clip_tokenizer_free(tok);
    loco_clip_text_free(te1);
    loco_clip_text_free(te2);
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    int repeat = 15;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else DIE("usage: edit_cpu [--repeat N] [--only sd15|sdxl]");
    }
    if (repeat < 1) repeat = 1;
    loco_backend_opts bo;
    loco_backend_opts_init(&bo);
    bo.device = LOCO_DEVICE_CPU;
    loco_backend *be = NULL;
    loco_err e = {0};
    if (loco_backend_create(&bo, &be, &e)) DIE("%s", e.msg);
    char cpu[320];
    bench_cpu_name(cpu, sizeof cpu);
    fprintf(stderr, "backend: %s\ncpu: %s\n", loco_backend_describe(be), cpu);
    const model_case cases[2] = {{"sd15", "sd1", 0}, {"sdxl", "sdxl", 1}};
    double res[2][6] = {{0}};
    for (int i = 0; i < 2; i++)
        if (!only || !strcmp(only, cases[i].label)) bench_model(be, &cases[i], repeat, res[i]);
    printf("\n| model | LocoEdit solve+write-back (median / best) | LocoEdit rows | Diff-QuickFix solve+write-back "
           "(median / best) | Diff-QuickFix pairs |\n|---|---|---|---|---|\n");
    for (int i = 0; i < 2; i++)
        if (!only || !strcmp(only, cases[i].label))
            printf("| %s | %.1f / %.1f ms | %.1f ms | %.1f / %.1f ms | %.1f ms |\n", cases[i].label, res[i][0], res[i][4],
                   res[i][1], res[i][2], res[i][5], res[i][3]);
    double load[3] = {0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la && fscanf(la, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    if (la) fclose(la);
    printf("\ncpu: %s; backend: %s; median of %d; load average at the end %.2f %.2f %.2f\n", cpu,
           loco_backend_describe(be), repeat, load[0], load[1], load[2]);
    loco_backend_destroy(be);
    return 0;
}
