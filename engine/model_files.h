/* model_files.h: open a model as users have it on disk, and hand out its configs, weights and
 * tokenizer folders under diffusers names.
 *
 * `path` is either
 *   - a diffusers folder: model_index.json (component -> [library, class] plus pipeline flags),
 *     each component's config.json (scheduler/scheduler_config.json), weights in safetensors
 *     (plain, a variant such as fp16, or sharded with an index), tokenizer folders; or
 *   - a single-file checkpoint (.safetensors, LDM/CompVis/sgm layout). Its configs come from
 *     opts.config_dir (a diffusers folder, like diffusers' from_single_file(config=...)) or
 *     else from the embedded defaults of its family (engine/builtin_configs.h); its tokenizers
 *     from config_dir or else the bundled CLIP vocabulary (engine/data_dir.h).
 *
 * Weights always come out with diffusers names, whatever the source: single files are mapped
 * (engine/ldm_mapping.h); transformers files without the "text_model." prefix (transformers
 * >= 5.6 flattened CLIPTextModel) get it back; old VAE attention names (query/key/value/
 * proj_attn) become to_q/to_k/to_v/to_out.0. */
#ifndef LOCO_MODEL_FILES_H
#define LOCO_MODEL_FILES_H

#include <jansson.h>

#include "weights.h"

typedef enum loco_model_family {
    LOCO_FAMILY_UNKNOWN = 0, /* a diffusers folder of another pipeline (opened, not mapped) */
    LOCO_FAMILY_SD1,         /* "sd1": SD 1.x (CLIP-L) */
    LOCO_FAMILY_SD2,         /* "sd2": SD 2.x (OpenCLIP-H) */
    LOCO_FAMILY_SDXL,        /* "sdxl": SD-XL base (CLIP-L + OpenCLIP-bigG) */
    LOCO_FAMILY_COUNT
} loco_model_family;

const char *loco_model_family_name(loco_model_family f);                   /* "unknown", "sd1", "sd2", "sdxl" */
int loco_model_family_from_name(const char *name, loco_model_family *out); /* 0 ok, -1 unknown */

typedef struct loco_model_files_opts {
    const char *variant;      /* weight variant ("fp16"); NULL: plain files, else the only variant present */
    const char *config_dir;   /* single files: a diffusers folder to take configs and tokenizers from */
    loco_model_family family; /* UNKNOWN: detect; else use this family (and its embedded configs) */
    const char *data_dir;     /* NULL: resolve as engine/data_dir.h says */
} loco_model_files_opts;

void loco_model_files_opts_init(loco_model_files_opts *o); /* all NULL, family UNKNOWN */

typedef struct loco_model_files loco_model_files;

/* Open and validate: model_index.json and every component config are parsed now, so a broken
 * folder fails here with the file named. Weights are opened on demand. */
loco_status loco_model_files_open(const char *path, const loco_model_files_opts *opts, loco_model_files **out,
                                  loco_err *err);
void loco_model_files_close(loco_model_files *m);

const char *loco_model_files_path(const loco_model_files *m);
/* The folder model_index.json, the configs and the tokenizers come from: the model folder itself,
 * a single file's config_dir, or NULL (a single file with the embedded defaults). */
const char *loco_model_files_config_root(const loco_model_files *m);
int loco_model_files_is_single_file(const loco_model_files *m);
loco_model_family loco_model_files_family(const loco_model_files *m);
/* For a folder of family UNKNOWN, what detection found instead ("unet in_channels 9: inpainting
 * models are not supported (text-to-image needs 4)", "model_index.json has no unet entry"); NULL
 * otherwise. Valid until close. */
const char *loco_model_files_unknown_reason(const loco_model_files *m);

/* model_index.json (the folder's, config_dir's or the embedded default). */
const json_t *loco_model_files_index(const loco_model_files *m);
/* A component's config ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler", ...), or
 * NULL when the model has no such component. Valid until close. */
const json_t *loco_model_files_config(const loco_model_files *m, const char *component);
/* Does model_index name this component (with a non-null class)? */
int loco_model_files_has(const loco_model_files *m, const char *component);
/* The component's class in model_index ("EulerDiscreteScheduler"), or NULL. */
const char *loco_model_files_class(const loco_model_files *m, const char *component);
/* A boolean pipeline flag of model_index (force_zeros_for_empty_prompt, requires_safety_checker);
 * dflt when absent or not a boolean. */
int loco_model_files_flag(const loco_model_files *m, const char *key, int dflt);

/* The weights of "unet", "vae", "text_encoder" or "text_encoder_2" with diffusers names. The
 * set is independent of m (it keeps its own file mappings): free it with loco_weights_free. */
loco_status loco_model_files_weights(const loco_model_files *m, const char *component, loco_weights **out,
                                     loco_err *err);

/* The folder to load "tokenizer" / "tokenizer_2" from (engine/clip_tokenizer.h), or NULL when
 * the model has none. */
const char *loco_model_files_tokenizer_dir(const loco_model_files *m, const char *component);

/* Single files: a tensor of the checkpoint by its original key (e.g. the LDM buffer
 * "alphas_cumprod", handy to check the schedule); NULL for folders or when absent. Valid until
 * close. */
const loco_stored_tensor *loco_model_files_checkpoint_tensor(const loco_model_files *m, const char *key);

/* The family a single-file checkpoint's keys say (diffusers' infer_diffusers_model_type for
 * v1 / v2 / xl_base, then the text encoder prefixes). LOCO_EUNSUPPORTED for inpainting,
 * refiner, upscaler and unknown checkpoints. */
loco_status loco_model_files_detect_single(const loco_safetensors *f, loco_model_family *out, loco_err *err);

#endif
