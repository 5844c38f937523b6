/* job.h: the job as it travels on the wire: kinds and states (with string round trips), the
 * view the server fills to emit a job, and the emitter (proto/job.c).
 *
 * States: queued -> running -> succeeded | failed | cancelled. The last three are terminal and
 * never change. A cancel asked of a running job leaves it `running` with cancel_requested set
 * until the worker stops between two model calls. */
#ifndef LOCO_PROTO_JOB_H
#define LOCO_PROTO_JOB_H

#include <jansson.h>
#include <stdint.h>

typedef enum loco_job_kind {
    LOCO_JOB_GENERATE = 0, /* "generate": text to image */
    LOCO_JOB_TRACE,        /* "trace": causal tracing over UNet components / text-encoder states */
    LOCO_JOB_LOCALIZE,     /* "localize": LocoGen window search over cross-attention layers */
    LOCO_JOB_EDIT,         /* "edit": LocoEdit / Diff-QuickFix / neuron edit -> a model variant */
    LOCO_JOB_KIND_COUNT
} loco_job_kind;

const char *loco_job_kind_name(loco_job_kind k);
int loco_job_kind_from_name(const char *name, loco_job_kind *out); /* 0 ok, -1 unknown */

typedef enum loco_job_state {
    LOCO_JOB_QUEUED = 0,
    LOCO_JOB_RUNNING,
    LOCO_JOB_SUCCEEDED,
    LOCO_JOB_FAILED,
    LOCO_JOB_CANCELLED,
    LOCO_JOB_STATE_COUNT
} loco_job_state;

const char *loco_job_state_name(loco_job_state s);
int loco_job_state_from_name(const char *name, loco_job_state *out);
int loco_job_state_is_terminal(loco_job_state s);

#define LOCO_JOB_ID_LEN 32 /* lowercase hex characters */

/* Everything the server knows about one job, as the emitter needs it. Strings are borrowed. */
typedef struct loco_job_view {
    const char *id;
    loco_job_kind kind;
    loco_job_state state;
    const char *model;
    const char *key_id;          /* owner key id ("anonymous" with no keys configured) */
    const json_t *params;        /* the normalised request parameters */
    const json_t *result;        /* NULL until succeeded */
    const json_t *artifacts;     /* array of artifact objects, or NULL */
    const char *error_code;      /* failed / cancelled: machine code, else NULL */
    const char *error_message;   /* one line a person can act on */
    int error_retryable;
    int retry_on_restart;
    int attempts;
    int cancel_requested;
    int64_t created_ms, started_ms, finished_ms, expires_ms; /* 0: not yet */
    int queue_position;          /* queued: jobs to run before this one; else -1 */
    const char *phase;           /* running: "loading", "encode", "denoise", "decode", ...; NULL */
    int step, total;             /* running: progress within the phase */
} loco_job_view;

void loco_job_view_init(loco_job_view *v);

/* The job object of openapi.yaml (#/components/schemas/Job). New reference. */
json_t *loco_job_to_json(const loco_job_view *v);

/* RFC 3339 UTC with milliseconds, "2026-01-02T03:04:05.678Z". buf >= 32 bytes. */
const char *loco_format_time_ms(int64_t ms, char *buf, size_t n);

#endif
