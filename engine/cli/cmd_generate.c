/* cmd_generate.c: `loco generate`: text to image with a Stable Diffusion model. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "pipeline.h"
#include "safetensors.h"

#define MAX_PROMPTS 64

static void help(void) {
    printf("usage: loco generate --model PATH --prompt TEXT --output FILE.png [options]\n"
           "  --model PATH         diffusers folder or single-file .safetensors checkpoint\n"
           "  --config-dir DIR     for single files: take configs and tokenizers from this diffusers folder\n"
           "  --variant NAME       weight variant to load (e.g. fp16)\n"
           "  --family F           sd1 | sd2 | sdxl (default: detected)\n"
           "  --prompt TEXT        a prompt; repeat for a batch of prompts\n"
           "  --negative TEXT      a negative prompt; give none, one for all, or one per prompt\n"
           "  --seed N             torch.Generator(\"cpu\").manual_seed(N) (default 0)\n"
           "  --steps N            inference steps (default 50)\n"
           "  --guidance G         classifier-free guidance scale (default 7.5; SD-XL 5.0; <= 1 disables)\n"
           "  --scheduler NAME     pndm | ddim | euler | euler_a | dpmpp_2m | ddpm (default: the model's); dpmpp_2m is\n"
           "                       DPM++ 2M whatever the model's own DPMSolver config holds\n"
           "  --karras             use Karras sigmas (only euler and dpmpp_2m have them)\n"
           "  --width W --height H image size in pixels, at most 8192 and a multiple of the model's size\n"
           "                       multiple (64 for full-size SD 1.x and 2.x, 32 for SD-XL, less for tiny test models;\n"
           "                       default: the model's native size)\n"
           "  --batch N            images per prompt (default 1)\n"
           "  --clip-skip K        skip the last K text-encoder layers\n"
           "  --output FILE.png    where to write the image; with several images FILE-0.png, FILE-1.png, ...\n"
           "                       (a device or FIFO such as /dev/null or /dev/stdout is written in place)\n"
           "  --latents-out FILE   also write initial and final latents as safetensors\n"
           "  --device D           auto | cpu | cuda (default auto)\n"
           "  --threads N          CPU threads (default: all cores)\n" LOCO_CLI_VAE_UPCAST_HELP
           "  --quiet              no progress on stderr\n");
}

typedef struct gen_args {
    loco_pipeline_opts popts;
    loco_generate_params gp;
    const char *prompts[MAX_PROMPTS];
    const char *negatives[MAX_PROMPTS];
    int n_negatives;
    const char *output;
    const char *latents_out;
    loco_backend_opts bopts;
    int quiet;
} gen_args;

static int progress(void *ctx, int step, int total) {
    (void)ctx;
    fprintf(stderr, "\rstep %d/%d", step, total);
    if (step == total) fputc('\n', stderr);
    return 0;
}

static int parse_args(int argc, char **argv, gen_args *a) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"config-dir", required_argument, 0, 'C'},
        {"variant", required_argument, 0, 'V'},   {"family", required_argument, 0, 'F'},
        {"prompt", required_argument, 0, 'p'},    {"negative", required_argument, 0, 'n'},
        {"seed", required_argument, 0, 's'},      {"steps", required_argument, 0, 'S'},
        {"guidance", required_argument, 0, 'g'},  {"scheduler", required_argument, 0, 'k'},
        {"karras", no_argument, 0, 'K'},          {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},    {"batch", required_argument, 0, 'b'},
        {"clip-skip", required_argument, 0, 'c'}, {"output", required_argument, 0, 'o'},
        {"latents-out", required_argument, 0, 'L'}, {"device", required_argument, 0, 'd'},
        {"threads", required_argument, 0, 't'},   {"quiet", no_argument, 0, 'q'},
        {"vae-upcast", required_argument, 0, 'U'},
        {"help", no_argument, 0, 'h'},            {0}};
    long v;
    double d;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->popts.model_path = optarg; break;
        case 'C': a->popts.config_dir = optarg; break;
        case 'V': a->popts.variant = optarg; break;
        case 'F':
            if (loco_model_family_from_name(optarg, &a->popts.family) || a->popts.family == LOCO_FAMILY_UNKNOWN)
                return loco_cli_usage_error("generate", "--family must be sd1, sd2 or sdxl, got '%s'", optarg);
            break;
        case 'p':
            if (a->gp.n_prompts == MAX_PROMPTS) return loco_cli_usage_error("generate", "at most %d --prompt", MAX_PROMPTS);
            a->prompts[a->gp.n_prompts++] = optarg;
            break;
        case 'n':
            if (a->n_negatives == MAX_PROMPTS) return loco_cli_usage_error("generate", "at most %d --negative", MAX_PROMPTS);
            a->negatives[a->n_negatives++] = optarg;
            break;
        case 's':
            if (loco_cli_parse_u64(optarg, &a->gp.seed)) return loco_cli_usage_error("generate", "--seed must be a non-negative integer, got '%s'", optarg);
            break;
        case 'S':
            if (loco_cli_parse_int(optarg, 1, 1000, &v)) return loco_cli_usage_error("generate", "--steps must be 1..1000, got '%s'", optarg);
            a->gp.steps = (int)v;
            break;
        case 'g':
            if (loco_cli_parse_float(optarg, 0, 100, &d)) return loco_cli_usage_error("generate", "--guidance must be a number in [0, 100], got '%s'", optarg);
            a->gp.guidance_scale = (float)d;
            break;
        case 'k':
            if (loco_scheduler_kind_from_name(optarg, &a->gp.scheduler))
                return loco_cli_usage_error("generate", "--scheduler must be pndm, ddim, euler, euler_a, dpmpp_2m or ddpm, got '%s'", optarg);
            a->gp.has_scheduler = 1;
            break;
        case 'K': a->gp.use_karras_sigmas = 1; break;
        case 'W':
            if (loco_cli_parse_int(optarg, 8, 8192, &v)) return loco_cli_usage_error("generate", "--width must be 8..8192 pixels (a multiple of the model's size multiple), got '%s'", optarg);
            a->gp.width = (int)v;
            break;
        case 'H':
            if (loco_cli_parse_int(optarg, 8, 8192, &v)) return loco_cli_usage_error("generate", "--height must be 8..8192 pixels (a multiple of the model's size multiple), got '%s'", optarg);
            a->gp.height = (int)v;
            break;
        case 'b':
            if (loco_cli_parse_int(optarg, 1, 256, &v)) return loco_cli_usage_error("generate", "--batch must be 1..256, got '%s'", optarg);
            a->gp.num_images_per_prompt = (int)v;
            break;
        case 'c':
            if (loco_cli_parse_int(optarg, 0, 64, &v)) return loco_cli_usage_error("generate", "--clip-skip must be 0..64, got '%s'", optarg);
            a->gp.clip_skip = (int)v;
            break;
        case 'o': a->output = optarg; break;
        case 'L': a->latents_out = optarg; break;
        case 'd':
            if (loco_device_from_name(optarg, &a->bopts.device))
                return loco_cli_usage_error("generate", "--device must be auto, cpu or cuda, got '%s'", optarg);
            break;
        case 't':
            if (loco_cli_parse_int(optarg, 0, 1024, &v)) return loco_cli_usage_error("generate", "--threads must be 0..1024, got '%s'", optarg);
            a->bopts.num_threads = (int)v;
            break;
        case 'q': a->quiet = 1; break;
        case 'U':
            if (loco_cli_parse_vae_upcast(optarg, &a->popts.vae_upcast_dtype))
                return loco_cli_usage_error("generate", "--vae-upcast must be f32 or bf16, got '%s'", optarg);
            break;
        case 'h': help(); return -1;
        default: return loco_cli_getopt_error("generate", c, argv);
        }
    }
    if (optind < argc) return loco_cli_usage_error("generate", "unexpected argument '%s'", argv[optind]);
    if (!a->popts.model_path) return loco_cli_usage_error("generate", "--model is required");
    if (a->gp.n_prompts == 0) return loco_cli_usage_error("generate", "--prompt is required");
    if (!a->output) return loco_cli_usage_error("generate", "--output is required");
    if (a->n_negatives > 1 && a->n_negatives != a->gp.n_prompts)
        return loco_cli_usage_error("generate", "give one --negative for all prompts or one per --prompt (%d prompts, %d negatives)",
                                    a->gp.n_prompts, a->n_negatives);
    if (a->n_negatives == 1)
        for (int i = 1; i < a->gp.n_prompts; i++) a->negatives[i] = a->negatives[0];
    a->gp.prompts = a->prompts;
    a->gp.negative_prompts = a->n_negatives ? a->negatives : NULL;
    return 0;
}

/* "out.png" -> "out-3.png" for image 3 of several. */
static void image_path(const char *output, int index, int n, char *buf, size_t len) {
    if (n == 1) {
        snprintf(buf, len, "%s", output);
        return;
    }
    const char *dot = strrchr(output, '.');
    const char *slash = strrchr(output, '/');
    if (dot && (!slash || dot > slash))
        snprintf(buf, len, "%.*s-%d%s", (int)(dot - output), output, index, dot);
    else
        snprintf(buf, len, "%s-%d", output, index);
}

int loco_cmd_generate(int argc, char **argv) {
    gen_args a;
    memset(&a, 0, sizeof a);
    loco_pipeline_opts_init(&a.popts);
    loco_generate_params_init(&a.gp);
    loco_backend_opts_init(&a.bopts);
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;

    loco_err err;
    loco_err_clear(&err);
    /* before the model loads and the images are made: a bad output path must not cost the run */
    if (loco_cli_out_file("--output", a.output, &err) ||
        (a.latents_out && loco_cli_out_file("--latents-out", a.latents_out, &err)))
        return loco_cli_fail("generate", &err);
    loco_backend *be = NULL;
    loco_pipeline *p = NULL;
    loco_generate_result res;
    memset(&res, 0, sizeof res);
    if (loco_backend_create(&a.bopts, &be, &err) || loco_pipeline_load(be, &a.popts, &p, &err)) {
        rc = loco_cli_fail("generate", &err);
        goto done;
    }
    if (!a.quiet) {
        fprintf(stderr, "model %s (%s) on %s\n", a.popts.model_path, loco_model_family_name(loco_pipeline_family(p)),
                loco_backend_describe(be));
        a.gp.progress = progress;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (loco_generate(p, &a.gp, &res, &err)) {
        rc = loco_cli_fail("generate", &err);
        goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int i = 0; i < res.n_images; i++) {
        char path[4096];
        image_path(a.output, i, res.n_images, path, sizeof path);
        if (loco_png_write(path, &res.images[i], &err)) {
            rc = loco_cli_fail("generate", &err);
            goto done;
        }
        if (!a.quiet) fprintf(stderr, "wrote %s (%dx%d)\n", path, res.width, res.height);
    }
    if (a.latents_out && loco_generate_result_write_latents(&res, a.latents_out, &err)) {
        rc = loco_cli_fail("generate", &err);
        goto done;
    }
    if (!a.quiet)
        fprintf(stderr, "%d image(s) in %.2f s\n", res.n_images,
                (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    rc = 0;
done:
    loco_generate_result_free(&res);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
    return rc;
}
