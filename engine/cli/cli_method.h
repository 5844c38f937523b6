/* cli_method.h: options the research subcommands (trace, localize) share: the model, the CLIP
 * scorer, the backend, the sampler, and the output folder. */
#ifndef LOCO_CLI_METHOD_H
#define LOCO_CLI_METHOD_H

#include <jansson.h>

#include "clip_score.h"
#include "method_util.h"
#include "pipeline.h"

typedef struct loco_cli_common {
    loco_pipeline_opts popts;
    loco_backend_opts bopts;
    loco_sampler_opts sampler;
    const char *clip_dir;
    const char *out_dir;
    int max_batch;
    int write_images;
    int quiet;
} loco_cli_common;

void loco_cli_common_init(loco_cli_common *c);

/* Handle one getopt result for a common option. Returns 1 when handled, 0 when not a common
 * option, or a negative usage-error exit code (-2) after printing the message. */
int loco_cli_common_option(const char *cmd, loco_cli_common *c, int opt, const char *arg);

/* The long options of loco_cli_common_option (codes >= 1000), to append to a subcommand's own. */
#define LOCO_CLI_COMMON_OPTIONS                                                                               \
    {"model", required_argument, 0, 1000}, {"config-dir", required_argument, 0, 1001},                         \
        {"variant", required_argument, 0, 1002}, {"family", required_argument, 0, 1003},                       \
        {"clip", required_argument, 0, 1004}, {"steps", required_argument, 0, 1005},                            \
        {"guidance", required_argument, 0, 1006}, {"scheduler", required_argument, 0, 1007},                   \
        {"width", required_argument, 0, 1008}, {"height", required_argument, 0, 1009},                         \
        {"device", required_argument, 0, 1010}, {"threads", required_argument, 0, 1011},                        \
        {"out", required_argument, 0, 1012}, {"max-batch", required_argument, 0, 1013},                        \
        {"images", no_argument, 0, 1014}, {"quiet", no_argument, 0, 1015}, {"karras", no_argument, 0, 1016},    \
        {"vae-upcast", required_argument, 0, 1017}

#define LOCO_CLI_COMMON_HELP                                                                                   \
    "  --model PATH         diffusers folder or single-file checkpoint (required)\n"                           \
    "  --clip DIR           CLIPModel folder for scoring (config.json, model.safetensors, tokenizer) (required)\n" \
    "  --config-dir DIR     single files: take configs and tokenizers from this diffusers folder\n"           \
    "  --variant NAME       weight variant (fp16)      --family F   sd1 | sd2 | sdxl (default: detected)\n"   \
    "  --steps N            inference steps (default 50)\n"                                                    \
    "  --guidance G         guidance scale (default 7.5; SD-XL 5.0)\n"                                         \
    "  --scheduler NAME     pndm | ddim | euler | euler_a | dpmpp_2m | ddpm (default: the model's)\n"        \
    "  --karras             Karras sigmas (only euler and dpmpp_2m have them)\n"                              \
    "  --width W --height H image size in pixels, at most 8192 and a multiple of the model's size multiple\n" \
    "                       (64 for full-size SD 1.x and 2.x, 32 for SD-XL, less for tiny models; default: native)\n" \
    "  --max-batch N        samples per batched denoising run\n"                                               \
    "  --out DIR            folder for the JSON result and the PNGs (created; default .)\n"                    \
    "  --images             also write every generated image\n"                                               \
    "  --device D           auto | cpu | cuda (default auto)   --threads N   CPU threads\n"                    \
    LOCO_CLI_VAE_UPCAST_HELP                                                                                   \
    "  --quiet              no progress on stderr\n"

/* Check or create --out (one level, loco_cli_out_dir), then load the backend, the pipeline and
 * the scorer. Prints the failure. */
int loco_cli_common_load(const char *cmd, loco_cli_common *c, loco_backend **be, loco_pipeline **p,
                         loco_clip_scorer **sc);

/* Write a JSON document to out_dir/name (engine/file_out.h: atomically for regular files). */
loco_status loco_cli_write_json(const char *dir, const char *name, json_t *doc, loco_err *err);

/* Progress printer for loco_progress_fn (ctx = a loco_cli_progress_line). It prints a count only
 * when it changed: the methods report the same count again at their cancel points. */
typedef struct loco_cli_progress_line {
    const char *what; /* the command name */
    int last;         /* the count printed last; -1 before the first */
} loco_cli_progress_line;
int loco_cli_progress(void *ctx, int done, int total);

/* Parse "0,1,5" into at most max ints in [lo, hi]; returns the count or -1. */
int loco_cli_parse_int_list(const char *s, int *out, int max, long lo, long hi);

#endif
