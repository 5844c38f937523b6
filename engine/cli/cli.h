/* cli.h: the `loco` command-line tool. Each subcommand lives in its own cmd_*.c file and
 * returns a process exit code; errors are printed once, by the subcommand, as one line
 * "loco <cmd>: <message>" on stderr. */
#ifndef LOCO_CLI_H
#define LOCO_CLI_H

#include "base.h"

int loco_cmd_noise(int argc, char **argv);
int loco_cmd_generate(int argc, char **argv);
int loco_cmd_inspect(int argc, char **argv);
int loco_cmd_trace(int argc, char **argv);
int loco_cmd_localize(int argc, char **argv);
int loco_cmd_edit(int argc, char **argv);

/* Print "loco <cmd>: <err->msg>" and return exit code 1 (2 for usage errors). */
int loco_cli_fail(const char *cmd, const loco_err *err);
int loco_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parse "2,4,64,64" into dims; returns the rank or -1 (bad syntax, non-positive, > max). */
int loco_cli_parse_shape(const char *s, int64_t *dims, int max_dims);
/* Strict integer/float parsing: the whole string must be a number in range. 0 on success. */
int loco_cli_parse_u64(const char *s, uint64_t *out);
int loco_cli_parse_int(const char *s, long lo, long hi, long *out);
int loco_cli_parse_float(const char *s, double lo, double hi, double *out);
/* --vae-upcast: "f32" (as diffusers) or "bf16", the dtype SD-XL's VAE decodes in on a GPU with
 * fp16 activations (loco_pipeline_opts.vae_upcast_dtype). 0 on success. */
int loco_cli_parse_vae_upcast(const char *s, loco_dtype *out);
#define LOCO_CLI_VAE_UPCAST_HELP                                                                               \
    "  --vae-upcast T       f32 | bf16: SD-XL's VAE decode on a GPU (default f32, as diffusers; bf16\n"     \
    "                       halves its memory traffic and differs by bf16 rounding)\n"

#endif
