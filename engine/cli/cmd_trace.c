/* cmd_trace.c: `loco trace`: causal tracing of a caption's subject through the UNet components and
 * the text-encoder states (engine/trace.h); writes trace.json, the clean and corrupted images and
 * the text-encoder heatmaps. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_method.h"
#include "trace.h"

#define MAX_COMPONENTS 512
#define MAX_POSITIONS 512

static void help(void) {
    printf("usage: loco trace --model PATH --clip DIR --prompt TEXT --subject WORDS [options]\n"
           "  Restores one state at a time (every UNet ResNet, attn1, attn2 and ff output; every text-encoder\n"
           "  layer x {self_attn, mlp} x token position) inside a run whose subject tokens were corrupted, and\n"
           "  scores each image with CLIP against the attribute caption.\n"
           "  --prompt TEXT        the caption\n"
           "  --subject WORDS      the words of the caption to corrupt (their tokens must occur in it)\n"
           "  --attribute TEXT     caption to score against (default: the prompt)\n"
           "  --seed N             initial noise seed (default 0)\n"
           "  --noise-seed N       corruption noise seed (default 0)\n"
           "  --noise-scale X      noise std as a multiple of the token-embedding std (default 3)\n"
           "  --scope S            all | unet | text (default all)\n"
           "  --component SITE     restore only these UNet sites (repeat; default: all)\n"
           "  --positions LIST     text-encoder token positions, e.g. 0,4,5 (default: 0 .. the prompt's EOS)\n"
           "  --causal-threshold X mark states whose restored CLIP score (0..100) exceeds X as causal\n"
           "%s"
           "writes OUT/trace.json, OUT/clean.png, OUT/corrupted.png, OUT/heatmap_self_attn.png, OUT/heatmap_mlp.png\n"
           "(and with --images OUT/unet_<i>.png per component)\n",
           LOCO_CLI_COMMON_HELP);
}

typedef struct trace_args {
    loco_cli_common c;
    loco_trace_params t;
    const char *components[MAX_COMPONENTS];
    int positions[MAX_POSITIONS];
} trace_args;

static int parse_args(int argc, char **argv, trace_args *a) {
    static const struct option opts[] = {
        {"prompt", required_argument, 0, 'p'},     {"subject", required_argument, 0, 's'},
        {"attribute", required_argument, 0, 'a'},  {"seed", required_argument, 0, 'S'},
        {"noise-seed", required_argument, 0, 'N'}, {"noise-scale", required_argument, 0, 'x'},
        {"scope", required_argument, 0, 'k'},      {"component", required_argument, 0, 'c'},
        {"positions", required_argument, 0, 'P'},  {"help", no_argument, 0, 'h'},
        {"causal-threshold", required_argument, 0, 'T'},
        LOCO_CLI_COMMON_OPTIONS,                   {0}};
    int o;
    double d;
    optind = 1;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        int r = loco_cli_common_option("trace", &a->c, o, optarg);
        if (r < 0) return -r;
        if (r) continue;
        switch (o) {
        case 'p': a->t.prompt = optarg; break;
        case 's': a->t.subject = optarg; break;
        case 'a': a->t.attribute = optarg; break;
        case 'S':
            if (loco_cli_parse_u64(optarg, &a->t.seed))
                return loco_cli_usage_error("trace", "--seed must be a non-negative integer, got '%s'", optarg);
            break;
        case 'N':
            if (loco_cli_parse_u64(optarg, &a->t.noise_seed))
                return loco_cli_usage_error("trace", "--noise-seed must be a non-negative integer, got '%s'", optarg);
            break;
        case 'x':
            if (loco_cli_parse_float(optarg, 0, 1000, &d))
                return loco_cli_usage_error("trace", "--noise-scale must be a number in [0, 1000], got '%s'", optarg);
            a->t.noise_scale = (float)d;
            break;
        case 'T':
            if (loco_cli_parse_float(optarg, 0, 100, &d))
                return loco_cli_usage_error("trace", "--causal-threshold must be a CLIP score in [0, 100], got '%s'",
                                            optarg);
            a->t.causal_threshold = d;
            break;
        case 'k':
            if (loco_trace_scope_from_name(optarg, &a->t.scope))
                return loco_cli_usage_error("trace", "--scope must be all, unet or text, got '%s'", optarg);
            break;
        case 'c':
            if (a->t.n_components == MAX_COMPONENTS)
                return loco_cli_usage_error("trace", "at most %d --component", MAX_COMPONENTS);
            a->components[a->t.n_components++] = optarg;
            break;
        case 'P': {
            int n = loco_cli_parse_int_list(optarg, a->positions, MAX_POSITIONS, 0, 511);
            if (n < 1) return loco_cli_usage_error("trace", "--positions must be a comma-separated list of positions, got '%s'", optarg);
            a->t.n_positions = n;
            break;
        }
        case 'h': help(); return -1;
        default: return loco_cli_getopt_error("trace", o, argv);
        }
    }
    if (optind < argc) return loco_cli_usage_error("trace", "unexpected argument '%s'", argv[optind]);
    if (!a->c.popts.model_path) return loco_cli_usage_error("trace", "--model is required");
    if (!a->c.clip_dir) return loco_cli_usage_error("trace", "--clip is required (a CLIPModel folder for the scores)");
    if (!a->t.prompt) return loco_cli_usage_error("trace", "--prompt is required");
    if (!a->t.subject) return loco_cli_usage_error("trace", "--subject is required");
    a->t.components = a->t.n_components ? a->components : NULL;
    a->t.positions = a->t.n_positions ? a->positions : NULL;
    a->t.sampler = a->c.sampler;
    a->t.max_batch = a->c.max_batch;
    a->t.keep_images = a->c.write_images;
    if (a->t.max_batch > 0 && a->t.max_batch < 3) a->t.max_batch = 3; /* a batch carries clean + corrupted */
    return 0;
}

static loco_status write_outputs(const trace_args *a, const loco_trace_result *r, loco_err *err) {
    const char *dir = a->c.out_dir;
    json_t *j = NULL;
    loco_status st = loco_trace_result_json(r, &a->t, &j, err);
    if (!st) st = loco_cli_write_json(dir, "trace.json", j, err);
    json_decref(j);
    if (!st) st = loco_write_png_in(dir, "clean.png", &r->clean_image, err);
    if (!st) st = loco_write_png_in(dir, "corrupted.png", &r->corrupted_image, err);
    static const char *const names[LOCO_TRACE_MOD_COUNT] = {"heatmap_self_attn.png", "heatmap_mlp.png"};
    for (int m = 0; !st && r->n_layers > 0 && m < LOCO_TRACE_MOD_COUNT; m++) {
        loco_image h;
        if (!(st = loco_trace_heatmap(r, (loco_trace_module)m, 16, &h, err))) {
            st = loco_write_png_in(dir, names[m], &h, err);
            loco_image_free(&h);
        }
    }
    for (int i = 0; !st && a->c.write_images && i < r->n_unet; i++) {
        char name[64];
        snprintf(name, sizeof name, "unet_%d.png", i);
        if (r->unet[i].image.data) st = loco_write_png_in(dir, name, &r->unet[i].image, err);
    }
    return st;
}

int loco_cmd_trace(int argc, char **argv) {
    trace_args a;
    memset(&a, 0, sizeof a);
    loco_cli_common_init(&a.c);
    loco_trace_params_init(&a.t);
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    loco_backend *be = NULL;
    loco_pipeline *p = NULL;
    loco_clip_scorer *sc = NULL;
    loco_trace_result r;
    memset(&r, 0, sizeof r);
    loco_err err;
    loco_err_clear(&err);
    loco_cli_progress_line line = {"trace", -1};
    if ((rc = loco_cli_common_load("trace", &a.c, &be, &p, &sc))) goto done;
    if (!a.c.quiet) {
        a.t.progress = loco_cli_progress;
        a.t.progress_ctx = &line;
    }
    if (loco_trace_run(p, sc, &a.t, &r, &err) || write_outputs(&a, &r, &err)) {
        rc = loco_cli_fail("trace", &err);
        goto done;
    }
    if (!a.c.quiet) {
        fprintf(stderr, "clean %.4f, corrupted %.4f (CLIP cosine vs '%s'); %d UNet components, %d text states in %.1f s\n",
                r.clean.cosine, r.corrupted.cosine, a.t.attribute ? a.t.attribute : a.t.prompt, r.n_unet,
                r.n_layers * LOCO_TRACE_MOD_COUNT * r.n_positions, r.seconds);
        fprintf(stderr, "wrote %s/trace.json\n", a.c.out_dir);
    }
    rc = 0;
done:
    loco_trace_result_free(&r);
    loco_clip_scorer_free(sc);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    return rc;
}
