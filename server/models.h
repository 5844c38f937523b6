/* models.h: the models a daemon may load. A model is only ever named by clients: its path
 * comes from the config (explicit "models" entries, or an entry of a configured model root:
 * a diffusers folder with model_index.json, or a single-file .safetensors, named by its file
 * name without the extension). Variants are models created by edit jobs on the worker. One
 * whose edit exported a delta is durable: its row in the store (store.h) brings it back after a
 * worker or daemon restart, re-created from its base and the delta whenever the base is
 * resident. Not thread-safe (the server's lock). */
#ifndef LOCOD_MODELS_H
#define LOCOD_MODELS_H

#include <jansson.h>
#include <stdint.h>

#include "base.h"
#include "config.h"
#include "request.h"
#include "store.h"

typedef enum locod_model_state {
    LOCOD_MODEL_AVAILABLE = 0, /* on disk, not resident */
    LOCOD_MODEL_LOADING,
    LOCOD_MODEL_LOADED,
    LOCOD_MODEL_UNLOADING,
    LOCOD_MODEL_FAILED,        /* the last load failed (error says why); loading again is allowed */
    LOCOD_MODEL_STATE_COUNT
} locod_model_state;

const char *locod_model_state_name(locod_model_state s);
int locod_model_state_from_name(const char *name, locod_model_state *out);

typedef enum locod_model_source { LOCOD_SRC_CONFIG = 0, LOCOD_SRC_ROOT, LOCOD_SRC_VARIANT } locod_model_source;

typedef struct locod_model {
    char name[LOCO_MODEL_NAME_MAX + 1];
    char *path;
    char *config_dir;
    char *variant;           /* weight variant */
    locod_model_source source;
    char base[LOCO_MODEL_NAME_MAX + 1]; /* variants: the model they were edited from */
    char created_by_job[40];            /* variants: the edit job */
    char delta_sha[65];                 /* variants: the delta artifact, "" when not durable */
    json_t *edit;                       /* variants: summary of the edit's params, or NULL */
    int64_t created_ms;                 /* variants: when the edit finished */
    locod_model_state state;
    char *error;             /* last load error, or NULL */
    json_t *info;            /* from the worker at load: family, sizes, sites, memory, ... */
    int op_pending;          /* 1 load / 2 unload waiting for the worker */
    int64_t loaded_ms;
} locod_model;

typedef struct locod_models locod_models;

locod_models *locod_models_create(const locod_config *cfg);
void locod_models_destroy(locod_models *m);
/* Re-read the model roots (new folders dropped in become loadable). */
void locod_models_rescan(locod_models *m);
locod_model *locod_models_find(locod_models *m, const char *name);
int locod_models_count(const locod_models *m);
locod_model *locod_models_at(locod_models *m, int i);
int locod_models_loaded_count(const locod_models *m);
/* Register a variant (row->delta_sha256 "" for one that cannot be re-created) in `state`.
 * NULL when the name belongs to a model that is not a variant, or out of memory. */
locod_model *locod_models_add_variant(locod_models *m, const locod_variant_row *row, locod_model_state state,
                                      json_t *info);
void locod_models_remove(locod_models *m, const char *name);

/* JSON for GET /v1/models (summary) or GET /v1/models/{name} (full: configs and sites, read from
 * the model's files when it is not resident). New reference. full = 1 reads files: callers that
 * hold the server's lock use a locod_model_view instead. */
json_t *locod_model_to_json(const locod_model *md, int full);

/* What the full JSON needs, copied out of the registry so the model's files (configs, safetensors
 * headers: slow on a slow disk) are read without the server's lock. Take it under the lock, build
 * the JSON after unlocking; the result is identical to locod_model_to_json(md, 1). */
typedef struct locod_model_view {
    json_t *summary;    /* locod_model_to_json(md, 0) */
    json_t *info;       /* deep copy of md->info, or NULL */
    char *path;         /* files to read, or NULL (variants have none) */
    char *config_dir, *variant;
    int is_variant;
    char created_by_job[40];
} locod_model_view;

/* 0 ok, -1 out of memory (v is then empty). */
int locod_model_view_take(const locod_model *md, locod_model_view *v);
/* Reads the files, frees the view's members. New reference (NULL only when out of memory). */
json_t *locod_model_view_json(locod_model_view *v);

#endif
