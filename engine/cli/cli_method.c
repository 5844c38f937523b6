/* cli_method.c: option handling and loading shared by `loco trace` and `loco localize`. */
#include "cli_method.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "file_out.h"

void loco_cli_common_init(loco_cli_common *c) {
    memset(c, 0, sizeof *c);
    loco_pipeline_opts_init(&c->popts);
    loco_backend_opts_init(&c->bopts);
    loco_sampler_opts_init(&c->sampler);
    c->out_dir = ".";
}

int loco_cli_common_option(const char *cmd, loco_cli_common *c, int opt, const char *arg) {
    long v;
    double d;
    switch (opt) {
    case 1000: c->popts.model_path = arg; return 1;
    case 1001: c->popts.config_dir = arg; return 1;
    case 1002: c->popts.variant = arg; return 1;
    case 1003:
        if (loco_model_family_from_name(arg, &c->popts.family) || c->popts.family == LOCO_FAMILY_UNKNOWN)
            return -loco_cli_usage_error(cmd, "--family must be sd1, sd2 or sdxl, got '%s'", arg);
        return 1;
    case 1004: c->clip_dir = arg; return 1;
    case 1005:
        if (loco_cli_parse_int(arg, 1, 1000, &v)) return -loco_cli_usage_error(cmd, "--steps must be 1..1000, got '%s'", arg);
        c->sampler.steps = (int)v;
        return 1;
    case 1006:
        if (loco_cli_parse_float(arg, 0, 100, &d))
            return -loco_cli_usage_error(cmd, "--guidance must be a number in [0, 100], got '%s'", arg);
        c->sampler.guidance_scale = (float)d;
        return 1;
    case 1007:
        if (loco_scheduler_kind_from_name(arg, &c->sampler.scheduler))
            return -loco_cli_usage_error(cmd, "--scheduler must be pndm, ddim, euler, euler_a, dpmpp_2m or ddpm, got '%s'",
                                         arg);
        c->sampler.has_scheduler = 1;
        return 1;
    case 1008:
    case 1009:
        if (loco_cli_parse_int(arg, 8, 8192, &v))
            return -loco_cli_usage_error(cmd, "--%s must be 8..8192 pixels (a multiple of the model's size multiple), got '%s'",
                                         opt == 1008 ? "width" : "height", arg);
        *(opt == 1008 ? &c->sampler.width : &c->sampler.height) = (int)v;
        return 1;
    case 1010:
        if (loco_device_from_name(arg, &c->bopts.device))
            return -loco_cli_usage_error(cmd, "--device must be auto, cpu or cuda, got '%s'", arg);
        return 1;
    case 1011:
        if (loco_cli_parse_int(arg, 0, 1024, &v)) return -loco_cli_usage_error(cmd, "--threads must be 0..1024, got '%s'", arg);
        c->bopts.num_threads = (int)v;
        return 1;
    case 1012: c->out_dir = arg; return 1;
    case 1013:
        if (loco_cli_parse_int(arg, 1, 4096, &v)) return -loco_cli_usage_error(cmd, "--max-batch must be 1..4096, got '%s'", arg);
        c->max_batch = (int)v;
        return 1;
    case 1014: c->write_images = 1; return 1;
    case 1015: c->quiet = 1; return 1;
    case 1016: c->sampler.use_karras_sigmas = 1; return 1;
    case 1017:
        if (loco_cli_parse_vae_upcast(arg, &c->popts.vae_upcast_dtype))
            return -loco_cli_usage_error(cmd, "--vae-upcast must be f32 or bf16, got '%s'", arg);
        return 1;
    default: return 0;
    }
}

int loco_cli_common_load(const char *cmd, loco_cli_common *c, loco_backend **be, loco_pipeline **p,
                         loco_clip_scorer **sc) {
    loco_err err;
    loco_err_clear(&err);
    *be = NULL;
    *p = NULL;
    *sc = NULL;
    /* before any work: a bad --out must not cost the whole run first */
    if (loco_cli_out_dir("--out", c->out_dir, &err)) return loco_cli_fail(cmd, &err);
    if (loco_backend_create(&c->bopts, be, &err) || loco_pipeline_load(*be, &c->popts, p, &err) ||
        loco_clip_scorer_load(*be, c->clip_dir, sc, &err))
        return loco_cli_fail(cmd, &err);
    if (!c->quiet)
        fprintf(stderr, "model %s (%s), CLIP %s, on %s\n", c->popts.model_path,
                loco_model_family_name(loco_pipeline_family(*p)), c->clip_dir, loco_backend_describe(*be));
    return 0;
}

loco_status loco_cli_write_json(const char *dir, const char *name, json_t *doc, loco_err *err) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return loco_err_set(err, LOCO_EINVAL, "output path too long: %s/%s", dir, name);
    return loco_write_json_file(path, doc, JSON_INDENT(2) | JSON_ENSURE_ASCII, err);
}

int loco_cli_progress(void *ctx, int done, int total) {
    loco_cli_progress_line *l = ctx;
    if (done == l->last) return 0;
    l->last = done;
    fprintf(stderr, "\r%s: step %d/%d", l->what, done, total);
    if (done >= total) fputc('\n', stderr);
    return 0;
}

int loco_cli_parse_int_list(const char *s, int *out, int max, long lo, long hi) {
    int n = 0;
    if (!s || !*s) return -1;
    char buf[4096];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long v;
        while (*tok == ' ') tok++; /* "0, 4, 5" as people write lists (the number parser takes no blanks) */
        if (n == max || loco_cli_parse_int(tok, lo, hi, &v)) return -1;
        out[n++] = (int)v;
    }
    return n;
}
