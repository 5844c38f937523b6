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

/* Flush stdout after a command printed its result there, and check nothing was lost (a full
 * disk, a closed pipe): 0, or 1 after printing "loco <cmd>: cannot write to standard output:
 * <reason>". */
int loco_cli_finish_stdout(const char *cmd);

/* The getopt_long error results, with ":h" as the short option string (the leading ':' makes
 * getopt print nothing itself and return ':' for a missing value): prints one line, "option
 * '--seed' needs a value" or "unknown option '--frobnicate'", and returns the usage exit code. */
int loco_cli_getopt_error(const char *cmd, int c, char **argv);

/* An output folder option (--out): created (one level) when missing; LOCO_EINVAL when it exists
 * and is not a folder, LOCO_EIO when it cannot be created or written into. Commands call it before
 * any work, so a bad --out fails at once instead of after the whole run. */
loco_status loco_cli_out_dir(const char *opt, const char *dir, loco_err *err);

/* An output file option (--output, --latents-out), checked before any work: LOCO_EINVAL when it
 * is a folder, LOCO_EIO when its folder does not exist. (Writing goes through engine/file_out.h.) */
loco_status loco_cli_out_file(const char *opt, const char *path, loco_err *err);

/* Parse "2,4,64,64" into dims; returns the rank or -1 (bad syntax, non-positive, > max). */
int loco_cli_parse_shape(const char *s, int64_t *dims, int max_dims);
/* Strict integer/float parsing: the whole string must be a number in range, with no white space
 * around it; the u64 parser takes digits only (no sign). 0 on success. */
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
