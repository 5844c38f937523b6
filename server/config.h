/* config.h: the daemon's configuration (a JSON file; config/README.md documents every key).
 * locod_config_init fills the defaults, locod_config_load overlays a file (unknown keys are
 * errors, so typos do not pass silently), and the command line may then override the listen
 * address and the data directory. Relative paths in the file are relative to the file's folder. */
#ifndef LOCOD_CONFIG_H
#define LOCOD_CONFIG_H

#include <stdint.h>

#include "base.h"
#include "request.h"

typedef struct locod_key {
    char id[64];          /* shown in job records and metrics; never the secret */
    uint8_t sha256[32];   /* SHA-256 of the bearer token */
    int admin;            /* may load / unload models and see every key's jobs */
    int max_pending;      /* queued + running jobs this key may have; 0: the global default */
} locod_key;

typedef struct locod_model_cfg {
    char name[LOCO_MODEL_NAME_MAX + 1];
    char *path;       /* diffusers folder or single .safetensors (absolute after load) */
    char *config_dir; /* single files: diffusers folder for configs/tokenizers, or NULL */
    char *variant;    /* weight variant ("fp16"), or NULL */
} locod_model_cfg;

typedef struct locod_config {
    char listen_host[256]; /* "127.0.0.1", "::1", "0.0.0.0" */
    int listen_port;       /* 0: any free port (the daemon logs and writes the one it got) */
    char *data_dir;        /* job store, artifacts */
    char *device;          /* "auto" | "cpu" | "cuda" */
    char *vae_upcast;      /* "f32" | "bf16": SD-XL's VAE decode dtype on fp16 GPUs (config/README.md) */
    int threads;           /* worker CPU threads, 0: all */
    char **model_roots;    /* folders whose entries are loadable models, by entry name */
    int n_model_roots;
    locod_model_cfg *models; /* models named explicitly */
    int n_models;
    char **load_at_start;  /* model names to load when the daemon starts */
    int n_load_at_start;
    locod_key *keys;
    int n_keys;
    char **cors_origins;
    int n_cors_origins;
    loco_proto_limits limits;
    int64_t max_body_bytes;
    int max_queue;            /* queued jobs, all keys: beyond -> 503 + Retry-After */
    int max_pending_per_key;  /* queued + running per key: beyond -> 429 + Retry-After */
    int max_sse_streams;      /* event streams (503 beyond); default max_connections / 2 */
    int max_connections;      /* simultaneous connections; may be lowered at start to fit the open-file limit */
    int max_connections_per_ip; /* from one client address; 0: no limit; default 3/4 of max_connections */
    /* whether the two above were given in the file: values left out follow max_connections when
     * start-up lowers it (locod_config_lower_connections) */
    int sse_streams_explicit, per_ip_explicit;
    int http_threads;         /* unused with thread-per-connection; kept for the pool mode */
    int64_t job_retention_s;  /* finished jobs (and their artifacts) are kept this long, then 410 */
    int retention_sweep_s;
    int64_t tombstone_retention_s; /* a purged job's id answers 410 this long, then 404 */
    int worker_restart_backoff_ms;
    int cancel_grace_ms;      /* a running job that ignores cancel this long gets its worker killed */
    int job_timeout_s;        /* 0: none */
    int sse_keepalive_ms;
    int retry_after_s;        /* the Retry-After value of 503/429 answers */
    char *clip_scorer;        /* CLIP model folder scoring trace / localize images, or NULL */
    char *log_level;
    char *port_file;          /* write the bound port here after start (tests), or NULL */
    char *config_dir;         /* folder of the config file (relative paths), or "." */
} locod_config;

void locod_config_init(locod_config *c);
void locod_config_free(locod_config *c);
loco_status locod_config_load(locod_config *c, const char *path, loco_err *err);
/* Parse from JSON text; base_dir resolves relative paths. */
loco_status locod_config_parse(locod_config *c, const char *text, const char *base_dir, loco_err *err);
/* "HOST:PORT", "[v6]:PORT" or ":PORT" (keeps the host). */
loco_status locod_config_set_listen(locod_config *c, const char *hostport, loco_err *err);
loco_status locod_config_set_data_dir(locod_config *c, const char *dir, loco_err *err);
int locod_host_is_loopback(const char *host);
/* Lower max_connections to n (the open-file limit cannot hold more) and keep the limits that
 * depend on it consistent: derived ones follow it, explicit ones are cut to fit. */
void locod_config_lower_connections(locod_config *c, int n);

#endif
