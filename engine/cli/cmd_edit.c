/* cmd_edit.c: `loco edit locoedit|quickfix|neurons`: a closed-form edit of a model, written as a
 * JSON result, a delta safetensors file, optionally a full diffusers folder, and before/after
 * images of the same prompts and seeds from the base and the edited variant. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "edit.h"
#include "file_out.h"
#include "pipeline_variant.h"

#define MAX_LIST 64

static void help(void) {
    printf("usage: loco edit locoedit|quickfix|neurons --model PATH --out DIR [options]\n"
           "\n"
           "model and run:\n"
           "  --model PATH          diffusers folder or single-file checkpoint\n"
           "  --config-dir DIR      single files: configs and tokenizers from this diffusers folder\n"
           "  --variant NAME        weight variant (fp16); --family sd1|sd2|sdxl to override detection\n"
           "  --device D            auto | cpu | cuda;  --threads N  CPU threads\n" LOCO_CLI_VAE_UPCAST_HELP
           "  --out DIR             writes result.json, delta.safetensors, before-K.png, after-K.png\n"
           "  --export-folder DIR   also write the edited model as a diffusers folder\n"
           "  --export-dtype T      keep | f32 | f16 | bf16 (default keep: each tensor as the base stores it)\n"
           "  --eval-prompt TEXT    prompt for the before/after images (repeat; default: the method's)\n"
           "  --seed N --steps N --guidance G --width W --height H   generation of those images (width,\n"
           "                        height: pixels, multiples of the model's size multiple: 64 for full-size\n"
           "                        SD 1.x and 2.x, 32 for SD-XL, less for tiny test models)\n"
           "  --no-images           skip the before/after images;  --quiet  no progress\n"
           "\n"
           "locoedit (K/V of the localized cross-attention layers; Basu et al., ICML 2024):\n"
           "  --concept TEXT        required: the subject to remap (e.g. \"van gogh\")\n"
           "  --target TEXT         target prompt (default \"a painting\")\n"
           "  --templates T         style | object | none (default style)\n"
           "  --prompt TEXT         more original prompts containing the concept (repeat)\n"
           "  --start N --layers M  window of cross-attention layers, execution order (default 8,2; SD-XL 45,3)\n"
           "  --lambda X            for K and V (default 0.01); --lambda-k / --lambda-v separately\n"
           "  --no-k | --no-v       edit only V / only K;  --solver auto|full|push_through;  --clip-skip K\n"
           "\n"
           "quickfix (Diff-QuickFix: text encoder layer-0 self-attention out_proj; Basu et al., ICLR 2024):\n"
           "  --concept TEXT        required;  --target TEXT  (default \"painting\")\n"
           "  --no-augment          only the bare caption pair (default adds \"A photo of\", ...)\n"
           "  --no-eos              keys at the subject token only (default: through position 76)\n"
           "  --value-bias B        keep (faithful, default) | subtract\n"
           "  --encoder E           SD-XL: 1 | 2 | both (default both);  --layer N (default 0)\n"
           "  --lambda X --solver F\n"
           "\n"
           "neurons (mean-ablation of top-N K/V channels; Basu et al., ICML 2024):\n"
           "  --prompt TEXT         prompts with the concept (repeat, at least 2)\n"
           "  --normal TEXT         the same scenes without it (repeat, at least 2)\n"
           "  --layer N             cross-attention layer (repeat; default the LocoEdit window)\n"
           "  --neurons N           per matrix (default 50);  --position P|eos  (default 76)\n");
}

typedef struct edit_args {
    loco_edit_method method;
    loco_pipeline_opts popts;
    loco_backend_opts bopts;
    const char *out, *export_folder;
    loco_export_dtype export_dtype;
    const char *eval[MAX_LIST];
    int n_eval;
    loco_generate_params gp;
    int no_images, quiet;
    loco_locoedit_opts le;
    loco_quickfix_opts qf;
    loco_neuron_opts nr;
    const char *prompts[MAX_LIST], *normal[MAX_LIST];
    int n_prompts, n_normal;
    int layers[MAX_LIST], n_layers;
    double lambda;
    int has_lambda;
    uint64_t given; /* bit (option - O_FIRST) for every option on the command line */
} edit_args;

static int progress(void *ctx, int step, int total) {
    fprintf(stderr, "\r%s step %d/%d", (const char *)ctx, step, total);
    if (step == total) fputc('\n', stderr);
    return 0;
}

static int parse(int argc, char **argv, edit_args *a) {
    enum {
        O_FIRST = 256, O_MODEL = O_FIRST, O_CONFIG, O_VARIANT, O_FAMILY, O_DEVICE, O_THREADS, O_OUT, O_EXPORT, O_EXPORT_DTYPE, O_EVAL,
        O_SEED, O_STEPS, O_GUIDANCE, O_WIDTH, O_HEIGHT, O_NO_IMAGES, O_QUIET, O_CONCEPT, O_TARGET, O_TEMPLATES,
        O_PROMPT, O_START, O_LAYERS, O_LAMBDA, O_LAMBDA_K, O_LAMBDA_V, O_NO_K, O_NO_V, O_SOLVER, O_CLIP_SKIP,
        O_NO_AUGMENT, O_NO_EOS, O_VALUE_BIAS, O_ENCODER, O_LAYER, O_NORMAL, O_NEURONS, O_POSITION, O_HELP,
        O_VAE_UPCAST
    };
    _Static_assert(O_VAE_UPCAST - O_FIRST < 64, "edit_args.given has one bit per option");
    static const struct option opts[] = {
        {"model", 1, 0, O_MODEL}, {"config-dir", 1, 0, O_CONFIG}, {"variant", 1, 0, O_VARIANT},
        {"family", 1, 0, O_FAMILY}, {"device", 1, 0, O_DEVICE}, {"threads", 1, 0, O_THREADS}, {"out", 1, 0, O_OUT},
        {"vae-upcast", 1, 0, O_VAE_UPCAST},
        {"export-folder", 1, 0, O_EXPORT}, {"export-dtype", 1, 0, O_EXPORT_DTYPE}, {"eval-prompt", 1, 0, O_EVAL},
        {"seed", 1, 0, O_SEED}, {"steps", 1, 0, O_STEPS}, {"guidance", 1, 0, O_GUIDANCE}, {"width", 1, 0, O_WIDTH},
        {"height", 1, 0, O_HEIGHT}, {"no-images", 0, 0, O_NO_IMAGES}, {"quiet", 0, 0, O_QUIET},
        {"concept", 1, 0, O_CONCEPT}, {"target", 1, 0, O_TARGET}, {"templates", 1, 0, O_TEMPLATES},
        {"prompt", 1, 0, O_PROMPT}, {"start", 1, 0, O_START}, {"layers", 1, 0, O_LAYERS}, {"lambda", 1, 0, O_LAMBDA},
        {"lambda-k", 1, 0, O_LAMBDA_K}, {"lambda-v", 1, 0, O_LAMBDA_V}, {"no-k", 0, 0, O_NO_K}, {"no-v", 0, 0, O_NO_V},
        {"solver", 1, 0, O_SOLVER}, {"clip-skip", 1, 0, O_CLIP_SKIP}, {"no-augment", 0, 0, O_NO_AUGMENT},
        {"no-eos", 0, 0, O_NO_EOS}, {"value-bias", 1, 0, O_VALUE_BIAS}, {"encoder", 1, 0, O_ENCODER},
        {"layer", 1, 0, O_LAYER}, {"normal", 1, 0, O_NORMAL}, {"neurons", 1, 0, O_NEURONS},
        {"position", 1, 0, O_POSITION}, {"help", 0, 0, O_HELP}, {0}};
    const char *cmd = "edit";
    long v;
    double d;
    int c;
    optind = 2; /* argv[1] is the method */
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (c >= O_FIRST && c < O_FIRST + 64) a->given |= 1ull << (c - O_FIRST);
        switch (c) {
        case O_MODEL: a->popts.model_path = optarg; break;
        case O_CONFIG: a->popts.config_dir = optarg; break;
        case O_VARIANT: a->popts.variant = optarg; break;
        case O_FAMILY:
            if (loco_model_family_from_name(optarg, &a->popts.family) || a->popts.family == LOCO_FAMILY_UNKNOWN)
                return loco_cli_usage_error(cmd, "--family must be sd1, sd2 or sdxl, got '%s'", optarg);
            break;
        case O_DEVICE:
            if (loco_device_from_name(optarg, &a->bopts.device))
                return loco_cli_usage_error(cmd, "--device must be auto, cpu or cuda, got '%s'", optarg);
            break;
        case O_VAE_UPCAST:
            if (loco_cli_parse_vae_upcast(optarg, &a->popts.vae_upcast_dtype))
                return loco_cli_usage_error(cmd, "--vae-upcast must be f32 or bf16, got '%s'", optarg);
            break;
        case O_THREADS:
            if (loco_cli_parse_int(optarg, 0, 1024, &v)) return loco_cli_usage_error(cmd, "--threads must be 0..1024");
            a->bopts.num_threads = (int)v;
            break;
        case O_OUT: a->out = optarg; break;
        case O_EXPORT: a->export_folder = optarg; break;
        case O_EXPORT_DTYPE:
            if (loco_export_dtype_from_name(optarg, &a->export_dtype))
                return loco_cli_usage_error(cmd, "--export-dtype must be keep, f32, f16 or bf16, got '%s'", optarg);
            break;
        case O_EVAL:
            if (a->n_eval == MAX_LIST) return loco_cli_usage_error(cmd, "at most %d --eval-prompt", MAX_LIST);
            a->eval[a->n_eval++] = optarg;
            break;
        case O_SEED:
            if (loco_cli_parse_u64(optarg, &a->gp.seed)) return loco_cli_usage_error(cmd, "--seed must be a non-negative integer");
            break;
        case O_STEPS:
            if (loco_cli_parse_int(optarg, 1, 1000, &v)) return loco_cli_usage_error(cmd, "--steps must be 1..1000");
            a->gp.steps = (int)v;
            break;
        case O_GUIDANCE:
            if (loco_cli_parse_float(optarg, 0, 100, &d)) return loco_cli_usage_error(cmd, "--guidance must be in [0, 100]");
            a->gp.guidance_scale = (float)d;
            break;
        case O_WIDTH:
        case O_HEIGHT:
            if (loco_cli_parse_int(optarg, 8, 8192, &v))
                return loco_cli_usage_error(cmd, "--width/--height must be 8..8192 pixels (a multiple of the model's "
                                                 "size multiple)");
            *(c == O_WIDTH ? &a->gp.width : &a->gp.height) = (int)v;
            break;
        case O_NO_IMAGES: a->no_images = 1; break;
        case O_QUIET: a->quiet = 1; break;
        case O_CONCEPT: a->le.concept = a->qf.concept = optarg; break;
        case O_TARGET: a->le.target = a->qf.target = optarg; break;
        case O_TEMPLATES:
            if (loco_edit_templates_from_name(optarg, &a->le.templates))
                return loco_cli_usage_error(cmd, "--templates must be style, object or none, got '%s'", optarg);
            break;
        case O_PROMPT:
            if (a->n_prompts == MAX_LIST) return loco_cli_usage_error(cmd, "at most %d --prompt", MAX_LIST);
            a->prompts[a->n_prompts++] = optarg;
            break;
        case O_NORMAL:
            if (a->n_normal == MAX_LIST) return loco_cli_usage_error(cmd, "at most %d --normal", MAX_LIST);
            a->normal[a->n_normal++] = optarg;
            break;
        case O_START:
            if (loco_cli_parse_int(optarg, 0, 100000, &v)) return loco_cli_usage_error(cmd, "--start must be a layer index >= 0");
            a->le.start = (int)v;
            break;
        case O_LAYERS:
            if (loco_cli_parse_int(optarg, 1, 100000, &v)) return loco_cli_usage_error(cmd, "--layers must be >= 1");
            a->le.n_layers = (int)v;
            break;
        case O_LAYER:
            if (a->n_layers == MAX_LIST) return loco_cli_usage_error(cmd, "at most %d --layer", MAX_LIST);
            if (loco_cli_parse_int(optarg, 0, 100000, &v)) return loco_cli_usage_error(cmd, "--layer must be >= 0");
            a->layers[a->n_layers++] = (int)v;
            break;
        case O_LAMBDA:
        case O_LAMBDA_K:
        case O_LAMBDA_V:
            if (loco_cli_parse_float(optarg, 0, 1e12, &d)) return loco_cli_usage_error(cmd, "lambda must be a number >= 0");
            if (c != O_LAMBDA_V) a->le.lambda_k = d;
            if (c != O_LAMBDA_K) a->le.lambda_v = d;
            if (c == O_LAMBDA) a->qf.lambda = d;
            break;
        case O_NO_K: a->le.edit_k = a->nr.edit_k = 0; break;
        case O_NO_V: a->le.edit_v = a->nr.edit_v = 0; break;
        case O_SOLVER:
            if (loco_solve_form_from_name(optarg, &a->le.form))
                return loco_cli_usage_error(cmd, "--solver must be auto, full or push_through, got '%s'", optarg);
            a->qf.form = a->le.form;
            break;
        case O_CLIP_SKIP:
            if (loco_cli_parse_int(optarg, 0, 64, &v)) return loco_cli_usage_error(cmd, "--clip-skip must be 0..64");
            a->le.clip_skip = a->nr.clip_skip = (int)v;
            break;
        case O_NO_AUGMENT: a->qf.augment = 0; break;
        case O_NO_EOS: a->qf.use_eos = 0; break;
        case O_VALUE_BIAS:
            if (loco_value_bias_from_name(optarg, &a->qf.value_bias))
                return loco_cli_usage_error(cmd, "--value-bias must be keep or subtract, got '%s'", optarg);
            break;
        case O_ENCODER:
            if (strcmp(optarg, "both") == 0) a->qf.encoder = 0;
            else if (loco_cli_parse_int(optarg, 1, 2, &v) == 0) a->qf.encoder = (int)v;
            else return loco_cli_usage_error(cmd, "--encoder must be 1, 2 or both, got '%s'", optarg);
            break;
        case O_NEURONS:
            if (loco_cli_parse_int(optarg, 1, 1 << 20, &v)) return loco_cli_usage_error(cmd, "--neurons must be >= 1");
            a->nr.n_neurons = (int)v;
            break;
        case O_POSITION:
            if (strcmp(optarg, "eos") == 0) a->nr.position = LOCO_NEURON_POS_EOS;
            else if (loco_cli_parse_int(optarg, 0, 1 << 20, &v) == 0) a->nr.position = (int)v;
            else return loco_cli_usage_error(cmd, "--position must be a token index or eos, got '%s'", optarg);
            break;
        case O_HELP: help(); return -1;
        default: return loco_cli_getopt_error(cmd, c, argv);
        }
    }
    if (optind < argc) return loco_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!a->popts.model_path) return loco_cli_usage_error(cmd, "--model is required");
    if (!a->out) return loco_cli_usage_error(cmd, "--out is required");
    if (a->method != LOCO_EDIT_NEURONS && !a->le.concept) return loco_cli_usage_error(cmd, "--concept is required");
    /* Options a method does not read are refused, not ignored (as the daemon refuses such fields):
     * a user who adds --layer twice to quickfix or --lambda-k to it would otherwise get an edit
     * other than the one asked for, with no word about it. */
    static const struct {
        int opt;
        const char *name;
        unsigned methods; /* bit per loco_edit_method that reads it */
    } scoped[] = {
#define LE (1u << LOCO_EDIT_LOCOEDIT)
#define QF (1u << LOCO_EDIT_QUICKFIX)
#define NR (1u << LOCO_EDIT_NEURONS)
        {O_CONCEPT, "--concept", LE | QF},     {O_TARGET, "--target", LE | QF},
        {O_TEMPLATES, "--templates", LE},      {O_PROMPT, "--prompt", LE | NR},
        {O_START, "--start", LE},              {O_LAYERS, "--layers", LE},
        {O_LAMBDA, "--lambda", LE | QF},       {O_LAMBDA_K, "--lambda-k", LE},
        {O_LAMBDA_V, "--lambda-v", LE},        {O_NO_K, "--no-k", LE | NR},
        {O_NO_V, "--no-v", LE | NR},           {O_SOLVER, "--solver", LE | QF},
        {O_CLIP_SKIP, "--clip-skip", LE | NR}, {O_NO_AUGMENT, "--no-augment", QF},
        {O_NO_EOS, "--no-eos", QF},            {O_VALUE_BIAS, "--value-bias", QF},
        {O_ENCODER, "--encoder", QF},          {O_LAYER, "--layer", QF | NR},
        {O_NORMAL, "--normal", NR},            {O_NEURONS, "--neurons", NR},
        {O_POSITION, "--position", NR},        {O_EXPORT, "--export-folder", LE | QF},
#undef LE
#undef QF
#undef NR
    };
    if (a->method == LOCO_EDIT_NEURONS && a->export_folder)
        return loco_cli_usage_error(cmd, "--export-folder does not apply to neurons: neuron ablations act at inference "
                                         "and have no diffusers weight form; the delta file (delta.safetensors in --out) "
                                         "carries them");
    for (size_t i = 0; i < sizeof scoped / sizeof scoped[0]; i++)
        if ((a->given >> (scoped[i].opt - O_FIRST) & 1) && !(scoped[i].methods >> a->method & 1))
            return loco_cli_usage_error(cmd, "%s does not apply to %s (see loco edit --help)", scoped[i].name,
                                        loco_edit_method_name(a->method));
    /* with --no-images, what only shapes the before/after images would be ignored */
    static const struct {
        int opt;
        const char *name;
    } image_opts[] = {{O_EVAL, "--eval-prompt"}, {O_SEED, "--seed"},   {O_STEPS, "--steps"},
                      {O_GUIDANCE, "--guidance"}, {O_WIDTH, "--width"}, {O_HEIGHT, "--height"}};
    for (size_t i = 0; a->no_images && i < sizeof image_opts / sizeof image_opts[0]; i++)
        if (a->given >> (image_opts[i].opt - O_FIRST) & 1)
            return loco_cli_usage_error(cmd, "%s shapes the before/after images, which --no-images skips",
                                        image_opts[i].name);
    if (a->method == LOCO_EDIT_QUICKFIX && a->n_layers > 1)
        return loco_cli_usage_error(cmd, "quickfix edits one text-encoder layer: give --layer once");
    if ((a->given >> (O_EXPORT_DTYPE - O_FIRST) & 1) && !a->export_folder)
        return loco_cli_usage_error(cmd, "--export-dtype applies only with --export-folder");
    a->le.prompts = a->prompts;
    a->le.n_prompts = a->method == LOCO_EDIT_LOCOEDIT ? a->n_prompts : 0;
    a->nr.prompts = a->prompts;
    a->nr.n_prompts = a->n_prompts;
    a->nr.normal_prompts = a->normal;
    a->nr.n_normal = a->n_normal;
    a->nr.layers = a->layers;
    a->nr.n_layers = a->n_layers;
    if (a->method == LOCO_EDIT_QUICKFIX && a->n_layers == 1) a->qf.layer = a->layers[0];
    return 0;
}

static loco_status run_edit(loco_pipeline_variant *v, const edit_args *a, json_t **report, loco_err *err) {
    switch (a->method) {
    case LOCO_EDIT_LOCOEDIT: return loco_edit_locoedit(v, &a->le, report, err);
    case LOCO_EDIT_QUICKFIX: return loco_edit_quickfix(v, &a->qf, report, err);
    default: return loco_edit_neurons(v, &a->nr, report, err);
    }
}

/* Default prompts of the before/after images: the LocoEdit script's visual check (methods.md
 * §5.2 step 6) around the concept, or the first concept prompts for neurons. */
static int eval_prompts(const edit_args *a, char **out) {
    if (a->n_eval) {
        for (int i = 0; i < a->n_eval; i++) out[i] = strdup(a->eval[i]);
        return a->n_eval;
    }
    if (a->method == LOCO_EDIT_NEURONS) {
        int n = a->n_prompts < 2 ? a->n_prompts : 2;
        for (int i = 0; i < n; i++) out[i] = strdup(a->prompts[i]);
        return n;
    }
    const char *t[2] = {"An old house in the style of %s", "painting of a wheat field by %s"};
    for (int i = 0; i < 2; i++) {
        size_t len = strlen(t[i]) + strlen(a->le.concept) + 1;
        out[i] = malloc(len);
        if (out[i]) snprintf(out[i], len, t[i], a->le.concept);
    }
    return 2;
}

static double secs(const struct timespec *t0, const struct timespec *t1) {
    return (double)(t1->tv_sec - t0->tv_sec) + 1e-9 * (double)(t1->tv_nsec - t0->tv_nsec);
}

/* before/after images of every eval prompt, same seed each */
static loco_status images(loco_pipeline *base, loco_pipeline_variant *v, edit_args *a, json_t *res, loco_err *err) {
    char *prompts[MAX_LIST] = {0};
    const int n = eval_prompts(a, prompts);
    json_t *list = json_array();
    loco_status st = LOCO_OK;
    for (int i = 0; i < n && !st; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "prompt", json_string(prompts[i]));
        json_object_set_new(e, "seed", json_integer((json_int_t)a->gp.seed));
        for (int after = 0; after < 2 && !st; after++) {
            loco_generate_params g = a->gp;
            const char *p1 = prompts[i];
            g.n_prompts = 1;
            g.prompts = &p1;
            if (!a->quiet) {
                g.progress = progress;
                g.progress_ctx = (void *)(after ? "after " : "before");
            }
            loco_generate_result r;
            st = after ? loco_pipeline_variant_generate(v, &g, &r, err) : loco_generate(base, &g, &r, err);
            if (st) break;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s-%d.png", a->out, after ? "after" : "before", i);
            st = loco_png_write(path, &r.images[0], err);
            loco_generate_result_free(&r);
            json_object_set_new(e, after ? "after" : "before", json_string(path));
        }
        json_array_append_new(list, e);
    }
    json_object_set_new(res, "images", list);
    for (int i = 0; i < n; i++) free(prompts[i]);
    return st;
}

int loco_cmd_edit(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        help();
        return argc < 2 ? 2 : 0;
    }
    edit_args a;
    memset(&a, 0, sizeof a);
    if (loco_edit_method_from_name(argv[1], &a.method))
        return loco_cli_usage_error("edit", "unknown method '%s' (locoedit, quickfix, neurons)", argv[1]);
    loco_pipeline_opts_init(&a.popts);
    loco_backend_opts_init(&a.bopts);
    loco_generate_params_init(&a.gp);
    loco_locoedit_opts_init(&a.le);
    loco_quickfix_opts_init(&a.qf);
    loco_neuron_opts_init(&a.nr);
    int rc = parse(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;

    loco_err err;
    loco_err_clear(&err);
    loco_backend *be = NULL;
    loco_pipeline *p = NULL;
    loco_pipeline_variant *v = NULL;
    json_t *report = NULL, *res = json_object();
    struct timespec t0, t1, t2;
    char path[4096];
    /* the output folders are checked before any work: a bad one must not cost the edit first */
    if (loco_cli_out_dir("--out", a.out, &err)) goto fail;
    if (a.export_folder) {
        struct stat sb;
        if (stat(a.export_folder, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
            loco_err_set(&err, LOCO_EINVAL, "--export-folder %s exists and is not a folder", a.export_folder);
            goto fail;
        }
    }
    if (loco_backend_create(&a.bopts, &be, &err) || loco_pipeline_load(be, &a.popts, &p, &err)) goto fail;
    /* never into the model's own folder (it would overwrite the base model with the variant) */
    if (a.export_folder && loco_pipeline_export_folder_check(p, a.export_folder, &err)) goto fail;
    if (loco_pipeline_variant_create(p, &v, &err)) goto fail;
    if (!a.quiet)
        fprintf(stderr, "model %s (%s) on %s\n", a.popts.model_path, loco_model_family_name(loco_pipeline_family(p)),
                loco_backend_describe(be));
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (run_edit(v, &a, &report, &err)) goto fail;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    json_object_set_new(res, "method", json_string(loco_edit_method_name(a.method)));
    json_object_set_new(res, "model", json_string(a.popts.model_path));
    json_object_set_new(res, "family", json_string(loco_model_family_name(loco_pipeline_family(p))));
    json_object_set_new(res, "device", json_string(loco_backend_describe(be)));
    json_object_set_new(res, "report", report);
    report = NULL;
    json_t *changed = json_array();
    for (int i = 0; i < loco_pipeline_variant_num_changes(v); i++) {
        const loco_variant_change *c = loco_pipeline_variant_change(v, i);
        json_t *s = json_array();
        for (int k = 0; k < c->ndim; k++) json_array_append_new(s, json_integer(c->shape[k]));
        json_array_append_new(changed, json_pack("{s:s,s:s,s:o}", "component", loco_component_name(c->component),
                                                 "name", c->name, "shape", s));
    }
    json_object_set_new(res, "changed_tensors", changed);
    json_object_set_new(res, "ablations", json_integer(loco_pipeline_variant_num_ablations(v)));
    json_object_set_new(res, "variant_bytes", json_integer((json_int_t)loco_pipeline_variant_owned_bytes(v)));
    json_object_set_new(res, "seconds_edit", json_real(secs(&t0, &t1)));
    snprintf(path, sizeof path, "%s/delta.safetensors", a.out);
    if (loco_pipeline_variant_export_delta(v, path, &err)) goto fail;
    json_object_set_new(res, "delta", json_string(path));
    if (a.export_folder) {
        if (loco_pipeline_variant_export_folder(v, a.export_folder, a.export_dtype, &err)) goto fail;
        json_object_set_new(res, "folder", json_string(a.export_folder));
        json_object_set_new(res, "folder_dtype", json_string(loco_export_dtype_name(a.export_dtype)));
    }
    if (!a.no_images && images(p, v, &a, res, &err)) goto fail;
    clock_gettime(CLOCK_MONOTONIC, &t2);
    json_object_set_new(res, "seconds_total", json_real(secs(&t0, &t2)));
    snprintf(path, sizeof path, "%s/result.json", a.out);
    if (loco_write_json_file(path, res, JSON_INDENT(2) | JSON_PRESERVE_ORDER, &err)) goto fail;
    if (!a.quiet) fprintf(stderr, "edit done in %.3f s; wrote %s\n", secs(&t0, &t1), path);
    rc = 0;
    goto done;
fail:
    rc = loco_cli_fail("edit", &err);
done:
    json_decref(report);
    json_decref(res);
    loco_pipeline_variant_free(v);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    return rc;
}
