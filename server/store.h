/* store.h: the durable job store (SQLite in WAL mode, synchronous=FULL: a job is accepted only
 * once its INSERT is committed to disk).
 *
 * The jobs table is shaped to move to PostgreSQL unchanged: a surrogate `seq` for ordering
 * and cursors, the owner key, state, attempts and lease columns (worker_id, lease_until_ms).
 * Several GPU boxes would claim work with
 *     UPDATE jobs SET state='running', worker_id=$1, lease_until_ms=$2, attempts=attempts+1
 *     WHERE id = (SELECT id FROM jobs WHERE state='queued' AND model = ANY($3)
 *                 ORDER BY <fair-share rank>, seq FOR UPDATE SKIP LOCKED LIMIT 1)
 *     RETURNING *;
 * and a janitor would re-queue or fail rows whose lease expired. On one box the fair-share
 * order is kept in memory (server/queue.c) and the claim is `UPDATE ... WHERE state='queued'`.
 *
 * Rules enforced here, not by callers: terminal states never change (every finishing UPDATE
 * carries `WHERE state IN ('queued','running')`); a purged job leaves a tombstone so its id
 * answers 410, not 404. Not thread-safe: the server serialises calls under its lock. */
#ifndef LOCOD_STORE_H
#define LOCOD_STORE_H

#include <jansson.h>
#include <stdint.h>

#include "base.h"
#include "job.h"
#include "request.h"

typedef struct locod_store locod_store;

typedef struct locod_job_row {
    char id[LOCO_JOB_ID_LEN + 1];
    int64_t seq;
    loco_job_kind kind;
    loco_job_state state;
    char model[LOCO_MODEL_NAME_MAX + 1];
    char key_id[64];
    json_t *params;    /* owned */
    json_t *result;    /* owned, NULL until succeeded */
    json_t *artifacts; /* owned array, NULL when none */
    char error_code[48];
    char *error_message; /* owned */
    int error_retryable;
    int retry_on_restart;
    int attempts;
    int cancel_requested;
    int64_t created_ms, started_ms, finished_ms, expires_ms;
    char idem_key[256];
    char req_hash[65];
} locod_job_row;

void locod_job_row_free(locod_job_row *r); /* frees owned members, keeps the struct */

loco_status locod_store_open(const char *path, locod_store **out, loco_err *err);
void locod_store_close(locod_store *s);

/* Insert a queued job (row->seq is set). Durable on return. */
loco_status locod_store_insert(locod_store *s, locod_job_row *row, loco_err *err);
/* 1 found (row filled), 0 not found, -1 error. */
int locod_store_get(locod_store *s, const char *id, locod_job_row *row, loco_err *err);
int locod_store_find_idempotent(locod_store *s, const char *key_id, const char *idem_key, locod_job_row *row,
                                loco_err *err);
/* 1 if the id belonged to a job that was purged after its retention. */
int locod_store_is_expired(locod_store *s, const char *id);

/* queued -> running. Returns 1 when the row moved, 0 when it was not queued. */
int locod_store_mark_running(locod_store *s, const char *id, int64_t now_ms, loco_err *err);
int locod_store_set_cancel_requested(locod_store *s, const char *id, loco_err *err);
/* queued|running -> terminal. Returns 1 when the row moved, 0 when it was already terminal.
 * result / artifacts may be NULL; artifacts entries are objects with "sha256". */
int locod_store_finish(locod_store *s, const char *id, loco_job_state state, int64_t now_ms, int64_t expires_ms,
                       const char *error_code, const char *error_message, int retryable, const json_t *result,
                       const json_t *artifacts, loco_err *err);

typedef struct locod_job_filter {
    int has_state;
    loco_job_state state;
    int has_kind;
    loco_job_kind kind;
    const char *key_id; /* NULL: any */
    int64_t before_seq; /* 0: from the newest */
    int limit;
} locod_job_filter;

/* Newest first. Calls fn for each row (row owned by the store; copy what you keep). Returns the
 * number of rows or -1. *more = 1 when further rows exist. */
typedef void (*locod_row_fn)(void *ctx, const locod_job_row *row);
int locod_store_list(locod_store *s, const locod_job_filter *f, locod_row_fn fn, void *ctx, int *more,
                     loco_err *err);
/* Every queued job, oldest first (to rebuild the queue at start). */
int locod_store_each_queued(locod_store *s, locod_row_fn fn, void *ctx, loco_err *err);

/* A graceful stop: the running jobs that no cancel was asked for go back to queued, to run
 * again from the start after the restart (the stop was the operator's, not the job's).
 * Returns how many, or -1. */
int locod_store_requeue_running(locod_store *s, loco_err *err);

/* Start-up recovery: running jobs become failed/server_restart, or queued again (attempts kept)
 * where the client asked for retry_on_restart. Returns how many rows changed (*requeued of them
 * re-queued) or -1. */
int locod_store_recover(locod_store *s, int64_t now_ms, int64_t retention_ms, int *requeued, loco_err *err);

/* ---- retention ----
 * A pass purges terminal jobs whose expires_ms <= now in bounded batches, each its own
 * transaction, so the caller can release its lock between batches (a pass over 100,000 expired
 * jobs must not hold the server's lock for seconds). Zero-initialise a pass, then call
 * locod_store_purge_batch until pass.done. A purged job leaves a tombstone, its artifact links go,
 * and gone(ctx, sha) is called for each artifact that no job (and no variant) links any more.
 *
 * Full disk: deleting rows is a write (tombstones, WAL), so on a full disk it fails and no file
 * would ever be deleted, no space would come back. When a batch's transaction fails with
 * "database or disk is full", gone() is still called for the artifacts that only expired jobs
 * link (a read-only query), the rows stay, and the pass moves on; a later pass deletes the rows
 * once writes work again. Until then an expired job (still readable, it is past its retention)
 * may link an artifact that answers 404: a client may lose an expired job's artifacts at any
 * time anyway, and without this the disk never frees up. An artifact that a live job or a
 * recorded variant uses is never passed to gone(). */
typedef struct locod_purge_pass {
    int started;                        /* the cursor below is set */
    int64_t after_expires_ms, after_seq; /* cursor: the last job a batch looked at */
    int done;                           /* no expired job after the cursor */
    int64_t purged;                     /* jobs deleted by this pass */
    int64_t kept;                       /* expired jobs whose rows a full disk kept */
    int64_t freed;                      /* artifacts passed to gone() although their rows stayed */
} locod_purge_pass;
typedef void (*locod_sha_fn)(void *ctx, const char *sha);
/* At most `limit` jobs. Returns the jobs purged by this batch (0 when a full disk kept them,
 * see pass->kept) or -1 on any other error (err says which; the pass stays where it was). */
int locod_store_purge_batch(locod_store *s, int64_t now_ms, int limit, locod_purge_pass *pass, locod_sha_fn gone,
                            void *ctx, loco_err *err);
/* A whole pass at once (start-up, tests). Returns the jobs purged or -1. */
int locod_store_purge(locod_store *s, int64_t now_ms, locod_sha_fn gone, void *ctx, loco_err *err);
/* Give at most max_pages free pages back to the file system (PRAGMA incremental_vacuum; the
 * file shrinks at the next checkpoint). Returns the pages given back or -1. */
int locod_store_reclaim(locod_store *s, int max_pages, loco_err *err);
/* A store created before auto_vacuum=INCREMENTAL was set never shrinks: rewrite it once with it
 * (VACUUM). Returns 1 when converted, 0 when there was nothing to do, -1 on error (the store
 * stays usable as it was). Call at start, before any transaction. */
int locod_store_enable_auto_vacuum(locod_store *s, loco_err *err);
/* Drop the tombstones of jobs purged before before_ms (those ids then answer 404, not 410), so
 * the expired_jobs table stays bounded by the purge rate x retention.tombstones_s. Returns how
 * many were dropped or -1. */
int locod_store_prune_tombstones(locod_store *s, int64_t before_ms, loco_err *err);

/* Artifact metadata: 1 found, 0 not found. media_type: >= 64 bytes. */
int locod_store_artifact(locod_store *s, const char *sha, uint64_t *size, char *media_type, size_t mt_len);

/* ---- variants ----
 * An edit job's variant lives in the worker's memory; its row here (written when the job
 * succeeds) lets the daemon re-create it from the base model and the delta artifact after a
 * worker or daemon restart. The purge above never deletes an artifact that a variant row names
 * as its delta, even after the edit job itself expired. */
typedef struct locod_variant_row {
    char name[LOCO_MODEL_NAME_MAX + 1];
    char base[LOCO_MODEL_NAME_MAX + 1];
    char delta_sha256[65];
    char job_id[LOCO_JOB_ID_LEN + 1];
    json_t *edit; /* owned: summary of the edit's params */
    int64_t created_ms;
} locod_variant_row;

void locod_variant_row_free(locod_variant_row *v); /* frees owned members, keeps the struct */
/* Insert or replace (by name). */
loco_status locod_store_variant_put(locod_store *s, const locod_variant_row *v, loco_err *err);
/* Drop a variant's row: 1 dropped, 0 none, -1 error. When its delta is no longer linked to any
 * job or other variant, its artifact row goes too and orphan_sha (65 bytes) names the file the
 * caller must remove; else orphan_sha is "". */
int locod_store_variant_delete(locod_store *s, const char *name, char orphan_sha[65], loco_err *err);
/* Every variant, oldest first (row owned by the store during the call). Returns the count or -1. */
typedef void (*locod_variant_fn)(void *ctx, const locod_variant_row *v);
int locod_store_variants_each(locod_store *s, locod_variant_fn fn, void *ctx, loco_err *err);

/* 1 when a queued or running edit job will create a variant of this name. */
int locod_store_variant_pending(locod_store *s, const char *name);
/* Queued and running edit jobs: each will add a resident variant. 0 when the store cannot say. */
int locod_store_edits_pending(locod_store *s);

/* ---- resident models ----
 * The models an admin loaded through the API (POST /v1/models/{name}/load) and has not unloaded
 * since: a restarted daemon loads them again, with its config's load_at_start, so the jobs
 * queued for them before the restart still find them resident. Variants are not listed here:
 * they follow their base (the variants table). */
loco_status locod_store_resident_set(locod_store *s, const char *name, int resident, int64_t now_ms, loco_err *err);
typedef void (*locod_name_fn)(void *ctx, const char *name);
/* Every resident model, in the order they were loaded. Returns the count or -1. */
int locod_store_residents_each(locod_store *s, locod_name_fn fn, void *ctx, loco_err *err);

/* Readiness: 1 when the store's last write failed with a storage error (disk full, I/O error,
 * read-only file, ...), why (n bytes) saying which; 0 once a later write has been committed. */
int locod_store_write_failure(const locod_store *s, char *why, size_t n);

/* Diagnostics and tests: the query plan (EXPLAIN QUERY PLAN, one line per step) of the list
 * query for these filters. Returns 0 or -1. */
int locod_store_list_plan(locod_store *s, const locod_job_filter *f, char *plan, size_t n, loco_err *err);
/* Tests: cap the file at max_pages pages (0: its present size), so that a write that needs a new
 * page fails with "database or disk is full" as on a full disk. Returns the previous cap or -1. */
int64_t locod_store_cap_pages(locod_store *s, int64_t max_pages);

/* Counts per state (array of LOCO_JOB_STATE_COUNT). */
int locod_store_count_states(locod_store *s, int64_t counts[LOCO_JOB_STATE_COUNT]);
/* Pending (queued + running) jobs per key: calls fn(ctx, key_id, count). */
typedef void (*locod_key_count_fn)(void *ctx, const char *key_id, int count);
int locod_store_pending_per_key(locod_store *s, locod_key_count_fn fn, void *ctx);

/* Group commit: job creations open one transaction that several requests share; a committer
 * commits it (one fsync for the whole group) and only then are their 202s sent. Statements
 * run while a group is open join it (finish/recover/purge use savepoints, so they nest). */
int locod_store_group_begin(locod_store *s, loco_err *err);
int locod_store_in_group(const locod_store *s);
int locod_store_group_commit(locod_store *s, loco_err *err);

#endif
