/* builtin_configs.h: the diffusers configs that single-file checkpoints lack, compiled in.
 *
 * A single-file SD checkpoint carries weights only; diffusers downloads the matching hub
 * folder's configs. An offline server embeds them instead: for each family ("sd1" = SD 1.5,
 * "sd2" = SD 2.1 768-v, "sdxl" = SD-XL base 1.0) the model_index.json, unet/vae/text encoder
 * config.json and scheduler/scheduler_config.json, laid out as in a diffusers folder. The same
 * text lives in config/model-defaults/ (tools/gen_builtin_configs.py keeps them identical). */
#ifndef LOCO_BUILTIN_CONFIGS_H
#define LOCO_BUILTIN_CONFIGS_H

#include <stddef.h>

typedef struct loco_builtin_config_entry {
    const char *path; /* "<family>/<component>/config.json", relative to config/model-defaults */
    const char *text; /* the JSON text, byte for byte as in the file */
} loco_builtin_config_entry;

/* The embedded text of "<family>/<relpath>" (e.g. "sdxl", "unet/config.json"), or NULL. */
const char *loco_builtin_config(const char *family, const char *relpath);

/* All entries, for tests and `loco inspect`. */
size_t loco_builtin_config_count(void);
const loco_builtin_config_entry *loco_builtin_config_at(size_t i);

/* The generated table (engine/builtin_configs_data.c). */
extern const loco_builtin_config_entry loco_builtin_config_table[];
extern const size_t loco_builtin_config_table_len;

#endif
