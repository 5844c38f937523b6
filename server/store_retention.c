/* store_retention.c: the job store's retention (see store.h, "retention"): purges in bounded
 * batches, the full-disk fallback that still frees the artifacts of expired jobs, tombstone
 * pruning, and giving free pages back to the file system. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"

#define TERMINAL "('succeeded','failed','cancelled')"

/* The next expired jobs after the pass's cursor, in the jobs_expires index's order
 * (expires_ms, then seq: the rowid every index entry ends with), so no sort and no rescan of
 * the jobs earlier batches looked at. The + keeps SQLite off jobs_state for the state term: by
 * that index it read every finished job and sorted them, on every batch (33 ms of 36). */
static const char *const sql_batch =
    "SELECT id, expires_ms, seq FROM jobs WHERE expires_ms IS NOT NULL AND expires_ms <= ?1 AND +state IN " TERMINAL
    " AND (expires_ms, seq) > (?2, ?3) ORDER BY expires_ms, seq LIMIT ?4";

/* The batch's artifacts that no job outside the batch links (and no variant names as its delta):
 * once the batch's rows are gone, nothing refers to them. A file shared with a job of a later
 * batch stays until that batch, so no row ever links a deleted file after a purge commits. */
static const char *const sql_only_batch =
    "SELECT DISTINCT ja.sha256 FROM job_artifacts ja WHERE ja.job_id IN (SELECT value FROM json_each(?1)) "
    "AND NOT EXISTS (SELECT 1 FROM job_artifacts jb WHERE jb.sha256 = ja.sha256 "
    "  AND jb.job_id NOT IN (SELECT value FROM json_each(?1))) "
    /* a live variant is re-created from its delta after every restart */
    "AND NOT EXISTS (SELECT 1 FROM variants v WHERE v.delta_sha256 = ja.sha256)";

/* Full disk: the batch's artifacts that only expired jobs link (any batch's), and no variant.
 * Their rows stay, so "only this batch" would keep a file shared by two batches forever. */
static const char *const sql_only_expired =
    "SELECT DISTINCT ja.sha256 FROM job_artifacts ja WHERE ja.job_id IN (SELECT value FROM json_each(?1)) "
    "AND NOT EXISTS (SELECT 1 FROM job_artifacts jb JOIN jobs k ON k.id = jb.job_id WHERE jb.sha256 = ja.sha256 "
    "  AND NOT (k.expires_ms IS NOT NULL AND k.expires_ms <= ?2 AND k.state IN " TERMINAL ")) "
    "AND NOT EXISTS (SELECT 1 FROM variants v WHERE v.delta_sha256 = ja.sha256)";

/* ?1: the batch's ids, ?2: now, ?3: the artifacts that go (JSON arrays). */
static const char *const sql_delete[] = {
    "INSERT OR IGNORE INTO expired_jobs (id, expired_ms) SELECT value, ?2 FROM json_each(?1)",
    "DELETE FROM job_artifacts WHERE job_id IN (SELECT value FROM json_each(?1))",
    "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?1))",
    "DELETE FROM artifacts WHERE sha256 IN (SELECT value FROM json_each(?3))",
};

/* One batch as selected: its ids and where the cursor goes after it. */
typedef struct batch {
    json_t *ids;
    char *ids_text; /* ids as a JSON array, bound to ?1 */
    int64_t last_expires_ms, last_seq;
} batch;

static void batch_free(batch *b) {
    json_decref(b->ids);
    free(b->ids_text);
}

/* Read-only. Returns the number of jobs in the batch or -1. */
static int select_batch(locod_store *s, int64_t now, int limit, const locod_purge_pass *p, batch *b, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql_batch, -1, &st, NULL) != SQLITE_OK) return locod_sq_err(s, err, "purge"), -1;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_int64(st, 2, p->started ? p->after_expires_ms : INT64_MIN);
    sqlite3_bind_int64(st, 3, p->started ? p->after_seq : INT64_MIN);
    sqlite3_bind_int(st, 4, limit);
    b->ids = json_array();
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_array_append_new(b->ids, json_string((const char *)sqlite3_column_text(st, 0)));
        b->last_expires_ms = sqlite3_column_int64(st, 1);
        b->last_seq = sqlite3_column_int64(st, 2);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return locod_sq_err(s, err, "purge"), -1;
    b->ids_text = json_dumps(b->ids, JSON_COMPACT);
    return (int)json_array_size(b->ids);
}

/* Read-only: the artifacts `sql` picks for the batch, appended to shas. 0 ok, -1 failed. */
static int collect_shas(locod_store *s, const char *sql, const batch *b, int64_t now, json_t *shas, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return locod_sq_err(s, err, "purge"), -1;
    sqlite3_bind_text(st, 1, b->ids_text, -1, SQLITE_STATIC);
    if (sqlite3_bind_parameter_count(st) >= 2) sqlite3_bind_int64(st, 2, now);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(shas, json_string((const char *)sqlite3_column_text(st, 0)));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : (locod_sq_err(s, err, "purge"), -1);
}

/* One statement of the delete transaction. 0 ok, else SQLite's code (err set, failure noted). */
static int delete_step(locod_store *s, const char *sql, const batch *b, const char *shas, int64_t now, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        locod_sq_err(s, err, "purge");
        return SQLITE_ERROR;
    }
    /* each statement reads some of ?1..?3; binding one it does not read is harmless */
    sqlite3_bind_text(st, 1, b->ids_text, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_text(st, 3, shas, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        rc = sqlite3_extended_errcode(s->db);
        locod_sq_note_failure(s);
        locod_sq_err(s, err, "purge");
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : (rc ? rc : SQLITE_ERROR);
}

/* The batch's tombstones, link and row deletions in one transaction (a savepoint, so it joins an
 * open group). Returns the jobs deleted, or -1 with *rc = SQLite's code for the failure. */
static int delete_batch(locod_store *s, const batch *b, const json_t *shas, int64_t now, int *rc, loco_err *err) {
    *rc = SQLITE_OK;
    if (locod_sq_exec(s, "SAVEPOINT purge", err)) {
        *rc = sqlite3_extended_errcode(s->db);
        locod_sq_note_failure(s);
        return -1;
    }
    char *shas_text = json_dumps(shas, JSON_COMPACT);
    int n = 0;
    for (size_t i = 0; i < sizeof sql_delete / sizeof *sql_delete && !*rc; i++) {
        *rc = delete_step(s, sql_delete[i], b, shas_text, now, err);
        if (i == 2) n = sqlite3_changes(s->db);
    }
    free(shas_text);
    if (*rc) {
        locod_sq_undo_savepoint(s, "purge");
        return -1;
    }
    *rc = locod_sq_release(s, "purge", err);
    return *rc ? -1 : n;
}

static void call_gone(const json_t *shas, locod_sha_fn gone, void *ctx) {
    size_t i;
    json_t *sha;
    if (gone) json_array_foreach((json_t *)shas, i, sha) gone(ctx, json_string_value(sha));
}

/* A full disk kept the batch's rows: the artifacts only expired jobs use can still go (see
 * store.h). Returns 0 (no job purged) or -1 when even the read failed. */
static int free_despite_full_disk(locod_store *s, const batch *b, int64_t now, locod_purge_pass *p, json_t *shas,
                                  loco_err *err) {
    json_array_clear(shas);
    if (collect_shas(s, sql_only_expired, b, now, shas, err)) return -1;
    p->kept += (int64_t)json_array_size(b->ids);
    p->freed += (int64_t)json_array_size(shas);
    return 0;
}

int locod_store_purge_batch(locod_store *s, int64_t now, int limit, locod_purge_pass *p, locod_sha_fn gone,
                            void *ctx, loco_err *err) {
    if (p->done) return 0;
    if (limit < 1) limit = 1;
    batch b;
    memset(&b, 0, sizeof b);
    int n = select_batch(s, now, limit, p, &b, err);
    if (n <= 0) {
        p->done = n == 0;
        batch_free(&b);
        return n;
    }
    json_t *shas = json_array();
    int rc = SQLITE_OK, purged = collect_shas(s, sql_only_batch, &b, now, shas, err);
    if (purged == 0) purged = delete_batch(s, &b, shas, now, &rc, err);
    if (purged < 0 && (rc & 0xff) == SQLITE_FULL) purged = free_despite_full_disk(s, &b, now, p, shas, err);
    if (purged >= 0) {
        p->started = 1;
        p->after_expires_ms = b.last_expires_ms;
        p->after_seq = b.last_seq;
        p->done = n < limit;
        p->purged += purged;
        call_gone(shas, gone, ctx); /* only now: the rows that named them are committed away */
    }
    json_decref(shas);
    batch_free(&b);
    return purged;
}

int locod_store_purge(locod_store *s, int64_t now, locod_sha_fn gone, void *ctx, loco_err *err) {
    locod_purge_pass p;
    memset(&p, 0, sizeof p);
    while (!p.done)
        if (locod_store_purge_batch(s, now, 500, &p, gone, ctx, err) < 0) return -1;
    return (int)p.purged;
}

int locod_store_prune_tombstones(locod_store *s, int64_t before_ms, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "DELETE FROM expired_jobs WHERE expired_ms < ?", -1, &st, NULL) != SQLITE_OK) {
        locod_sq_err(s, err, "tombstone pruning");
        return -1;
    }
    sqlite3_bind_int64(st, 1, before_ms);
    int rc = sqlite3_step(st) == SQLITE_DONE ? sqlite3_changes(s->db) : -1;
    if (rc < 0) {
        locod_sq_note_failure(s);
        locod_sq_err(s, err, "tombstone pruning");
    } else {
        locod_sq_note_success(s);
    }
    sqlite3_finalize(st);
    return rc;
}

/* A pragma's integer value, or -1. */
static int64_t pragma_int(locod_store *s, const char *sql) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
    int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    return v;
}

int locod_store_reclaim(locod_store *s, int max_pages, loco_err *err) {
    int64_t before = pragma_int(s, "PRAGMA freelist_count");
    if (before <= 0) return before < 0 ? (locod_sq_err(s, err, "reclaim"), -1) : 0;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA incremental_vacuum(%d)", max_pages > 0 ? max_pages : 1);
    if (locod_sq_exec(s, sql, err)) {
        locod_sq_note_failure(s);
        return -1;
    }
    locod_sq_note_success(s);
    int64_t after = pragma_int(s, "PRAGMA freelist_count");
    return after < 0 ? 0 : (int)(before - after);
}

/* Why convert at start rather than leave it to an operator: VACUUM copies only the live rows,
 * which retention bounds, so on the stores that need it most (QA's: 433 jobs in 140 MB) it is
 * short and gives back nearly the whole file; left to an operator most stores would never
 * shrink. It needs free space for one copy of the live data (a temporary file, then the WAL):
 * when that is missing (a full disk) it fails, the store stays as it was, and the next start
 * tries again. The WAL the copy went through is truncated at once. */
int locod_store_enable_auto_vacuum(locod_store *s, loco_err *err) {
    int64_t mode = pragma_int(s, "PRAGMA auto_vacuum");
    if (mode < 0) return locod_sq_err(s, err, "auto_vacuum"), -1;
    if (mode != 0) return 0; /* 1 (full) or 2 (incremental): the file already shrinks */
    if (locod_sq_exec(s, "PRAGMA auto_vacuum=INCREMENTAL; VACUUM", err)) {
        locod_sq_note_failure(s);
        return -1;
    }
    locod_sq_note_success(s);
    sqlite3_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL); /* best effort */
    return 1;
}
