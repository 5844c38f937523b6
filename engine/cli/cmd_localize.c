/* cmd_localize.c: `loco localize`: LocoGen (engine/locogen.h): find the window of cross-attention
 * layers that controls an attribute; writes locogen.json and the image grid. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_method.h"
#include "locogen.h"

#define MAX_PROMPTS 64
#define MAX_SEEDS 64
#define MAX_STARTS 128

static void help(void) {
    printf("usage: loco localize --model PATH --clip DIR --prompt TEXT --altered TEXT [...] [options]\n"
           "  For every window of m consecutive cross-attention layers (execution order), generates each prompt\n"
           "  with its altered version fed to the window's K and V (conditional branch, every step), scores the\n"
           "  images with CLIP, and ranks the windows.\n"
           "  --prompt TEXT        an original prompt carrying the attribute (repeat)\n"
           "  --altered TEXT       its altered version, one per --prompt, in order (repeat)\n"
           "  --kind K             style | object | fact (default style): style/object rank by the lowest score\n"
           "                       against the original prompts, fact by the highest against the altered ones\n"
           "  --window M           layers per window (default 2)\n"
           "  --start J            only the window starting at layer J (repeat; default: every window)\n"
           "  --seed N             a seed (repeat; default 0)\n"
           "%s"
           "writes OUT/locogen.json and OUT/grid.png (rows: prompt x seed; columns: unedited, then each window)\n"
           "(and with --images OUT/img_p<prompt>_s<seed>_w<start>.png)\n",
           LOCO_CLI_COMMON_HELP);
}

typedef struct loc_args {
    loco_cli_common c;
    loco_locogen_params g;
    const char *prompts[MAX_PROMPTS], *altered[MAX_PROMPTS];
    int n_altered;
    uint64_t seeds[MAX_SEEDS];
    int starts[MAX_STARTS];
} loc_args;

static int parse_args(int argc, char **argv, loc_args *a) {
    static const struct option opts[] = {
        {"prompt", required_argument, 0, 'p'}, {"altered", required_argument, 0, 'a'},
        {"kind", required_argument, 0, 'k'},   {"window", required_argument, 0, 'w'},
        {"start", required_argument, 0, 'j'},  {"seed", required_argument, 0, 'S'},
        {"help", no_argument, 0, 'h'},         LOCO_CLI_COMMON_OPTIONS,
        {0}};
    int o;
    long v;
    optind = 1;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        int r = loco_cli_common_option("localize", &a->c, o, optarg);
        if (r < 0) return -r;
        if (r) continue;
        switch (o) {
        case 'p':
            if (a->g.n_prompts == MAX_PROMPTS) return loco_cli_usage_error("localize", "at most %d --prompt", MAX_PROMPTS);
            a->prompts[a->g.n_prompts++] = optarg;
            break;
        case 'a':
            if (a->n_altered == MAX_PROMPTS) return loco_cli_usage_error("localize", "at most %d --altered", MAX_PROMPTS);
            a->altered[a->n_altered++] = optarg;
            break;
        case 'k':
            if (loco_attribute_kind_from_name(optarg, &a->g.kind))
                return loco_cli_usage_error("localize", "--kind must be style, object or fact, got '%s'", optarg);
            break;
        case 'w':
            if (loco_cli_parse_int(optarg, 1, 1024, &v)) return loco_cli_usage_error("localize", "--window must be 1..1024, got '%s'", optarg);
            a->g.window = (int)v;
            break;
        case 'j':
            if (a->g.n_starts == MAX_STARTS) return loco_cli_usage_error("localize", "at most %d --start", MAX_STARTS);
            if (loco_cli_parse_int(optarg, 0, 4096, &v)) return loco_cli_usage_error("localize", "--start must be a layer index, got '%s'", optarg);
            a->starts[a->g.n_starts++] = (int)v;
            break;
        case 'S':
            if (a->g.n_seeds == MAX_SEEDS) return loco_cli_usage_error("localize", "at most %d --seed", MAX_SEEDS);
            if (loco_cli_parse_u64(optarg, &a->seeds[a->g.n_seeds]))
                return loco_cli_usage_error("localize", "--seed must be a non-negative integer, got '%s'", optarg);
            a->g.n_seeds++;
            break;
        case 'h': help(); return -1;
        default: return loco_cli_getopt_error("localize", o, argv);
        }
    }
    if (optind < argc) return loco_cli_usage_error("localize", "unexpected argument '%s'", argv[optind]);
    if (!a->c.popts.model_path) return loco_cli_usage_error("localize", "--model is required");
    if (!a->c.clip_dir) return loco_cli_usage_error("localize", "--clip is required (a CLIPModel folder for the scores)");
    if (a->g.n_prompts == 0) return loco_cli_usage_error("localize", "at least one --prompt with its --altered is required");
    if (a->n_altered != a->g.n_prompts)
        return loco_cli_usage_error("localize", "give one --altered per --prompt (%d prompts, %d altered)", a->g.n_prompts,
                                    a->n_altered);
    if (a->g.n_seeds == 0) a->seeds[a->g.n_seeds++] = 0;
    a->g.prompts = a->prompts;
    a->g.altered = a->altered;
    a->g.seeds = a->seeds;
    a->g.starts = a->g.n_starts ? a->starts : NULL;
    a->g.sampler = a->c.sampler;
    a->g.max_batch = a->c.max_batch;
    return 0;
}

static loco_status write_outputs(const loc_args *a, const loco_pipeline *p, const loco_locogen_result *r, loco_err *err) {
    const char *dir = a->c.out_dir;
    json_t *j = NULL;
    loco_status st = loco_locogen_result_json(r, &a->g, p, &j, err);
    if (!st) st = loco_cli_write_json(dir, "locogen.json", j, err);
    json_decref(j);
    loco_image grid;
    if (!st && !(st = loco_locogen_grid(r, 4, &grid, err))) {
        st = loco_write_png_in(dir, "grid.png", &grid, err);
        loco_image_free(&grid);
    }
    for (int i = 0; !st && a->c.write_images && i < r->n_prompts; i++)
        for (int s = 0; !st && s < r->n_seeds; s++)
            for (int k = 0; !st && k < r->per_set; k++) {
                char name[96];
                if (k)
                    snprintf(name, sizeof name, "img_p%d_s%llu_w%d.png", i, (unsigned long long)a->g.seeds[s],
                             r->windows[k - 1].start);
                else
                    snprintf(name, sizeof name, "img_p%d_s%llu_unedited.png", i, (unsigned long long)a->g.seeds[s]);
                st = loco_write_png_in(dir, name, &r->images[loco_locogen_index(r, i, s, k)], err);
            }
    return st;
}

int loco_cmd_localize(int argc, char **argv) {
    loc_args a;
    memset(&a, 0, sizeof a);
    loco_cli_common_init(&a.c);
    loco_locogen_params_init(&a.g);
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    loco_backend *be = NULL;
    loco_pipeline *p = NULL;
    loco_clip_scorer *sc = NULL;
    loco_locogen_result r;
    memset(&r, 0, sizeof r);
    loco_err err;
    loco_err_clear(&err);
    loco_cli_progress_line line = {"localize", -1};
    if ((rc = loco_cli_common_load("localize", &a.c, &be, &p, &sc))) goto done;
    if (!a.c.quiet) {
        a.g.progress = loco_cli_progress;
        a.g.progress_ctx = &line;
    }
    if (loco_locogen_run(p, sc, &a.g, &r, &err) || write_outputs(&a, p, &r, &err)) {
        rc = loco_cli_fail("localize", &err);
        goto done;
    }
    if (!a.c.quiet) {
        const loco_locogen_window *b = &r.windows[r.best];
        fprintf(stderr, "%s: best window = layers %d..%d of %d (objective %.4f; unedited %.4f) in %.1f s\n",
                loco_attribute_kind_name(a.g.kind), b->start, b->end - 1, r.n_cross, b->objective,
                r.baseline.objective, r.seconds);
        fprintf(stderr, "wrote %s/locogen.json and %s/grid.png\n", a.c.out_dir, a.c.out_dir);
    }
    rc = 0;
done:
    loco_locogen_result_free(&r);
    loco_clip_scorer_free(sc);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    return rc;
}
