/* store_sqlite.c: the job store on SQLite (see store.h for the contract and the PostgreSQL
 * mapping). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"

static const char *const schema =
    "CREATE TABLE IF NOT EXISTS jobs ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"   /* PostgreSQL: BIGSERIAL */
    "  id TEXT NOT NULL UNIQUE,"
    "  kind TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  model TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  params TEXT NOT NULL,"                     /* PostgreSQL: JSONB */
    "  result TEXT,"
    "  artifacts TEXT,"
    "  error_code TEXT,"
    "  error_message TEXT,"
    "  error_retryable INTEGER NOT NULL DEFAULT 0,"
    "  retry_on_restart INTEGER NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER,"
    "  finished_ms INTEGER,"
    "  expires_ms INTEGER,"
    "  idem_key TEXT,"
    "  req_hash TEXT,"
    "  worker_id TEXT,"                           /* lease columns for several boxes */
    "  lease_until_ms INTEGER"
    ");"
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs(key_id, idem_key) WHERE idem_key IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);"
    "CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key_id, seq);"
    "CREATE INDEX IF NOT EXISTS jobs_kind ON jobs(kind, seq);" /* GET /v1/jobs?kind=, newest first */
    "CREATE INDEX IF NOT EXISTS jobs_expires ON jobs(expires_ms) WHERE expires_ms IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS expired_jobs (id TEXT PRIMARY KEY, expired_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS expired_jobs_ms ON expired_jobs(expired_ms);" /* tombstone pruning */
    "CREATE TABLE IF NOT EXISTS artifacts ("
    "  sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT NOT NULL, created_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS job_artifacts ("
    "  job_id TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (job_id, sha256));"
    "CREATE INDEX IF NOT EXISTS job_artifacts_sha ON job_artifacts(sha256);"
    /* variants left by edit jobs: re-created from base + delta after any restart (store.h) */
    "CREATE TABLE IF NOT EXISTS variants ("
    "  name TEXT PRIMARY KEY, base TEXT NOT NULL, delta_sha256 TEXT NOT NULL, job_id TEXT NOT NULL,"
    "  edit TEXT NOT NULL, created_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS variants_delta ON variants(delta_sha256);"
    "CREATE TABLE IF NOT EXISTS resident_models (name TEXT PRIMARY KEY, since_ms INTEGER NOT NULL);";

loco_status locod_sq_err(locod_store *s, loco_err *err, const char *what) {
    return loco_err_set(err, LOCO_EIO, "job store: %s: %s", what, sqlite3_errmsg(s->db));
}

int locod_sq_exec(locod_store *s, const char *sql, loco_err *err) {
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        loco_err_set(err, LOCO_EIO, "job store: %s: %s", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

void locod_sq_undo_savepoint(locod_store *s, const char *name) {
    char sql[128];
    snprintf(sql, sizeof sql, "ROLLBACK TO %s; RELEASE %s", name, name);
    sqlite3_exec(s->db, sql, NULL, NULL, NULL);
}

int locod_sq_release(locod_store *s, const char *name, loco_err *err) {
    char sql[64];
    snprintf(sql, sizeof sql, "RELEASE %s", name);
    if (locod_sq_exec(s, sql, err)) {
        int rc = sqlite3_extended_errcode(s->db);
        locod_sq_note_failure(s);
        locod_sq_undo_savepoint(s, name);
        return rc ? rc : SQLITE_ERROR;
    }
    locod_sq_note_success(s);
    return 0;
}

/* The codes that say the database cannot take writes (as opposed to a refused row or a bug). */
static int storage_failure(int rc) {
    switch (rc & 0xff) {
    case SQLITE_FULL: case SQLITE_IOERR: case SQLITE_READONLY: case SQLITE_CORRUPT: case SQLITE_NOTADB:
    case SQLITE_CANTOPEN: case SQLITE_BUSY: case SQLITE_LOCKED: case SQLITE_PROTOCOL:
        return 1;
    default:
        return 0;
    }
}

void locod_sq_note_failure(locod_store *s) {
    int rc = sqlite3_extended_errcode(s->db);
    if (!storage_failure(rc)) return;
    s->write_rc = rc;
    snprintf(s->write_error, sizeof s->write_error, "%s", sqlite3_errmsg(s->db));
}

void locod_sq_note_success(locod_store *s) {
    if (sqlite3_get_autocommit(s->db)) s->write_rc = SQLITE_OK;
}

int locod_store_write_failure(const locod_store *s, char *why, size_t n) {
    if (s->write_rc == SQLITE_OK) return 0;
    if ((s->write_rc & 0xff) == SQLITE_FULL) snprintf(why, n, "disk full (%s)", s->write_error);
    else snprintf(why, n, "%s", s->write_error);
    return 1;
}

int64_t locod_store_cap_pages(locod_store *s, int64_t max_pages) {
    sqlite3_stmt *st;
    int64_t prev = -1, pages = max_pages;
    if (sqlite3_prepare_v2(s->db, "PRAGMA page_count", -1, &st, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(st) == SQLITE_ROW && pages == 0) pages = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(s->db, "PRAGMA max_page_count", -1, &st, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(st) == SQLITE_ROW) prev = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count=%lld", (long long)pages);
    return prev < 0 || sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK ? -1 : prev;
}

loco_status locod_store_open(const char *path, locod_store **out, loco_err *err) {
    locod_store *s = calloc(1, sizeof *s);
    if (!s) return loco_err_set(err, LOCO_ENOMEM, "out of memory");
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        loco_err_set(err, LOCO_EIO, "job store: cannot open %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "?");
        sqlite3_close(s->db);
        free(s);
        return LOCO_EIO;
    }
    sqlite3_busy_timeout(s->db, 5000);
    char *msg = NULL;
    /* auto_vacuum first: it only takes effect before the first table exists (a new store);
     * with it a purge's free pages can be given back (locod_store_reclaim) and the file shrinks.
     * An older store ignores it here: see locod_store_enable_auto_vacuum. */
    if (sqlite3_exec(s->db, "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
                     NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(s->db, schema, NULL, NULL, &msg) != SQLITE_OK) {
        loco_err_set(err, LOCO_EIO, "job store %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        sqlite3_close(s->db);
        free(s);
        return LOCO_EIO;
    }
    *out = s;
    return LOCO_OK;
}

void locod_store_close(locod_store *s) {
    if (!s) return;
    sqlite3_close(s->db);
    free(s);
}

void locod_job_row_free(locod_job_row *r) {
    if (!r) return;
    json_decref(r->params);
    json_decref(r->result);
    json_decref(r->artifacts);
    free(r->error_message);
    r->params = r->result = r->artifacts = NULL;
    r->error_message = NULL;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s) {
    if (s && *s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, i);
}

static void bind_json(sqlite3_stmt *st, int i, const json_t *j) {
    if (!j) {
        sqlite3_bind_null(st, i);
        return;
    }
    char *t = json_dumps(j, JSON_COMPACT);
    sqlite3_bind_text(st, i, t, -1, SQLITE_TRANSIENT);
    free(t);
}

loco_status locod_store_insert(locod_store *s, locod_job_row *r, loco_err *err) {
    sqlite3_stmt *st;
    const char *sql = "INSERT INTO jobs (id, kind, state, model, key_id, params, retry_on_restart, created_ms, "
                      "idem_key, req_hash) VALUES (?,?,?,?,?,?,?,?,?,?)";
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return locod_sq_err(s, err, "insert");
    sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, loco_job_kind_name(r->kind), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, loco_job_state_name(r->state), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->key_id, -1, SQLITE_STATIC);
    bind_json(st, 6, r->params);
    sqlite3_bind_int(st, 7, r->retry_on_restart);
    sqlite3_bind_int64(st, 8, r->created_ms);
    bind_text_or_null(st, 9, r->idem_key);
    bind_text_or_null(st, 10, r->req_hash);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        locod_sq_note_failure(s);
        return locod_sq_err(s, err, "insert");
    }
    locod_sq_note_success(s);
    r->seq = sqlite3_last_insert_rowid(s->db);
    return LOCO_OK;
}

#define COLS                                                                                               \
    "seq, id, kind, state, model, key_id, params, result, artifacts, error_code, error_message, "          \
    "error_retryable, retry_on_restart, attempts, cancel_requested, created_ms, started_ms, finished_ms, " \
    "expires_ms, idem_key, req_hash"

static json_t *col_json(sqlite3_stmt *st, int i) {
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? json_loads((const char *)t, 0, NULL) : NULL;
}

static void col_str(sqlite3_stmt *st, int i, char *dst, size_t n) {
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(dst, n, "%s", t ? (const char *)t : "");
}

static void read_row(sqlite3_stmt *st, locod_job_row *r) {
    memset(r, 0, sizeof *r);
    r->seq = sqlite3_column_int64(st, 0);
    col_str(st, 1, r->id, sizeof r->id);
    loco_job_kind_from_name((const char *)sqlite3_column_text(st, 2), &r->kind);
    loco_job_state_from_name((const char *)sqlite3_column_text(st, 3), &r->state);
    col_str(st, 4, r->model, sizeof r->model);
    col_str(st, 5, r->key_id, sizeof r->key_id);
    r->params = col_json(st, 6);
    r->result = col_json(st, 7);
    r->artifacts = col_json(st, 8);
    col_str(st, 9, r->error_code, sizeof r->error_code);
    const unsigned char *m = sqlite3_column_text(st, 10);
    r->error_message = m ? strdup((const char *)m) : NULL;
    r->error_retryable = sqlite3_column_int(st, 11);
    r->retry_on_restart = sqlite3_column_int(st, 12);
    r->attempts = sqlite3_column_int(st, 13);
    r->cancel_requested = sqlite3_column_int(st, 14);
    r->created_ms = sqlite3_column_int64(st, 15);
    r->started_ms = sqlite3_column_int64(st, 16);
    r->finished_ms = sqlite3_column_int64(st, 17);
    r->expires_ms = sqlite3_column_int64(st, 18);
    col_str(st, 19, r->idem_key, sizeof r->idem_key);
    col_str(st, 20, r->req_hash, sizeof r->req_hash);
}

static int get_one(locod_store *s, sqlite3_stmt *st, locod_job_row *r, loco_err *err) {
    int rc = sqlite3_step(st);
    int found = 0;
    if (rc == SQLITE_ROW) {
        read_row(st, r);
        found = 1;
    } else if (rc != SQLITE_DONE) {
        locod_sq_err(s, err, "select");
        found = -1;
    }
    sqlite3_finalize(st);
    return found;
}

int locod_store_get(locod_store *s, const char *id, locod_job_row *r, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT " COLS " FROM jobs WHERE id = ?", -1, &st, NULL) != SQLITE_OK) {
        locod_sq_err(s, err, "get");
        return -1;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return get_one(s, st, r, err);
}

int locod_store_find_idempotent(locod_store *s, const char *key_id, const char *idem, locod_job_row *r,
                                loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT " COLS " FROM jobs WHERE key_id = ? AND idem_key = ?", -1, &st, NULL) !=
        SQLITE_OK) {
        locod_sq_err(s, err, "idempotency lookup");
        return -1;
    }
    sqlite3_bind_text(st, 1, key_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, idem, -1, SQLITE_STATIC);
    return get_one(s, st, r, err);
}

int locod_store_is_expired(locod_store *s, const char *id) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM expired_jobs WHERE id = ?", -1, &st, NULL) != SQLITE_OK) return 0;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

/* Steps a write statement to its end: 1 when it changed rows, 0 when none, -1 on error. */
static int exec_changes(locod_store *s, sqlite3_stmt *st, loco_err *err, const char *what) {
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        locod_sq_note_failure(s);
        locod_sq_err(s, err, what);
        return -1;
    }
    locod_sq_note_success(s);
    return sqlite3_changes(s->db) > 0;
}

/* Steps a write statement that returns no rows and finalizes it, noting the outcome for
 * readiness. Returns SQLite's code (SQLITE_DONE when it worked). */
static int step_write(locod_store *s, sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE) locod_sq_note_success(s);
    else locod_sq_note_failure(s);
    return rc;
}

int locod_store_mark_running(locod_store *s, const char *id, int64_t now, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE jobs SET state='running', started_ms=?, attempts=attempts+1 "
                           "WHERE id=? AND state='queued'",
                           -1, &st, NULL) != SQLITE_OK)
        return locod_sq_err(s, err, "mark running"), -1;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    return exec_changes(s, st, err, "mark running");
}

int locod_store_set_cancel_requested(locod_store *s, const char *id, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "UPDATE jobs SET cancel_requested=1 WHERE id=? AND state IN ('queued', 'running')",
                           -1, &st, NULL) != SQLITE_OK)
        return locod_sq_err(s, err, "cancel"), -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return exec_changes(s, st, err, "cancel");
}

/* Record a finished job's artifacts and link them to it. 0 ok, -1 failed: the caller rolls the
 * whole finish back, since a job recorded without its links would serve 404 for them and
 * retention would never delete their files. */
static int link_artifacts(locod_store *s, const char *id, const json_t *artifacts, int64_t now) {
    size_t i;
    json_t *a;
    json_array_foreach((json_t *)artifacts, i, a) {
        const char *sha = json_string_value(json_object_get(a, "sha256"));
        const char *mt = json_string_value(json_object_get(a, "media_type"));
        json_int_t size = json_integer_value(json_object_get(a, "size"));
        if (!sha) continue;
        sqlite3_stmt *a1, *a2;
        if (sqlite3_prepare_v2(s->db,
                               "INSERT OR IGNORE INTO artifacts (sha256, size, media_type, created_ms) "
                               "VALUES (?,?,?,?)",
                               -1, &a1, NULL) != SQLITE_OK)
            return -1;
        sqlite3_bind_text(a1, 1, sha, -1, SQLITE_STATIC);
        sqlite3_bind_int64(a1, 2, size);
        sqlite3_bind_text(a1, 3, mt ? mt : "application/octet-stream", -1, SQLITE_STATIC);
        sqlite3_bind_int64(a1, 4, now);
        if (step_write(s, a1) != SQLITE_DONE) return -1;
        if (sqlite3_prepare_v2(s->db, "INSERT OR IGNORE INTO job_artifacts (job_id, sha256) VALUES (?,?)", -1, &a2,
                               NULL) != SQLITE_OK)
            return -1;
        sqlite3_bind_text(a2, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(a2, 2, sha, -1, SQLITE_STATIC);
        if (step_write(s, a2) != SQLITE_DONE) return -1;
    }
    return 0;
}

int locod_store_finish(locod_store *s, const char *id, loco_job_state state, int64_t now, int64_t expires,
                       const char *code, const char *message, int retryable, const json_t *result,
                       const json_t *artifacts, loco_err *err) {
    if (locod_sq_exec(s, "SAVEPOINT finish", err)) return -1;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE jobs SET state=?, finished_ms=?, expires_ms=?, error_code=?, error_message=?, "
                           "error_retryable=?, result=?, artifacts=? WHERE id=? AND state IN ('queued','running')",
                           -1, &st, NULL) != SQLITE_OK) {
        locod_sq_err(s, err, "finish");
        locod_sq_undo_savepoint(s, "finish");
        return -1;
    }
    sqlite3_bind_text(st, 1, loco_job_state_name(state), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int64(st, 3, expires);
    bind_text_or_null(st, 4, code);
    bind_text_or_null(st, 5, message);
    sqlite3_bind_int(st, 6, retryable);
    bind_json(st, 7, result);
    bind_json(st, 8, artifacts && json_array_size(artifacts) ? artifacts : NULL);
    sqlite3_bind_text(st, 9, id, -1, SQLITE_STATIC);
    int moved = exec_changes(s, st, err, "finish");
    if (moved == 1 && artifacts && link_artifacts(s, id, artifacts, now)) {
        locod_sq_err(s, err, "finish: artifact links");
        moved = -1;
    }
    if (moved < 0) {
        locod_sq_undo_savepoint(s, "finish");
        return -1;
    }
    return locod_sq_release(s, "finish", err) ? -1 : moved;
}

/* The list query with a term for each filter given and none for the others: a term such as
 * (?1 IS NULL OR state = ?1) is planned before ?1 is known, so SQLite cannot use jobs_state
 * for it and scanned the whole table on every page. With plain terms, a state, kind or key
 * filter walks its (column, seq) index newest first and stops after one page. prefix: "" or
 * "EXPLAIN QUERY PLAN ". Returns SQLite's code. */
static int prepare_list(locod_store *s, const locod_job_filter *f, const char *prefix, sqlite3_stmt **st) {
    char sql[1024];
    int n = snprintf(sql, sizeof sql, "%sSELECT " COLS " FROM jobs WHERE 1", prefix);
    if (f->has_state) n += snprintf(sql + n, sizeof sql - (size_t)n, " AND state = ?1");
    if (f->has_kind) n += snprintf(sql + n, sizeof sql - (size_t)n, " AND kind = ?2");
    if (f->key_id) n += snprintf(sql + n, sizeof sql - (size_t)n, " AND key_id = ?3");
    if (f->before_seq) n += snprintf(sql + n, sizeof sql - (size_t)n, " AND seq < ?4");
    snprintf(sql + n, sizeof sql - (size_t)n, " ORDER BY seq DESC LIMIT ?5");
    int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK) return rc;
    /* numbered parameters: the ones whose term is absent are simply never read */
    if (f->has_state) sqlite3_bind_text(*st, 1, loco_job_state_name(f->state), -1, SQLITE_STATIC);
    if (f->has_kind) sqlite3_bind_text(*st, 2, loco_job_kind_name(f->kind), -1, SQLITE_STATIC);
    if (f->key_id) sqlite3_bind_text(*st, 3, f->key_id, -1, SQLITE_STATIC);
    if (f->before_seq) sqlite3_bind_int64(*st, 4, f->before_seq);
    sqlite3_bind_int(*st, 5, f->limit + 1);
    return SQLITE_OK;
}

int locod_store_list_plan(locod_store *s, const locod_job_filter *f, char *plan, size_t cap, loco_err *err) {
    sqlite3_stmt *st;
    if (prepare_list(s, f, "EXPLAIN QUERY PLAN ", &st) != SQLITE_OK) return locod_sq_err(s, err, "list plan"), -1;
    size_t n = 0;
    plan[0] = 0;
    while (sqlite3_step(st) == SQLITE_ROW && n < cap) /* columns: id, parent, notused, detail */
        n += (size_t)snprintf(plan + n, cap - n, "%s\n", (const char *)sqlite3_column_text(st, 3));
    sqlite3_finalize(st);
    return 0;
}

int locod_store_list(locod_store *s, const locod_job_filter *f, locod_row_fn fn, void *ctx, int *more,
                     loco_err *err) {
    sqlite3_stmt *st;
    if (prepare_list(s, f, "", &st) != SQLITE_OK) return locod_sq_err(s, err, "list"), -1;
    int n = 0, rc;
    *more = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == f->limit) {
            *more = 1;
            break;
        }
        locod_job_row r;
        read_row(st, &r);
        fn(ctx, &r);
        locod_job_row_free(&r);
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return locod_sq_err(s, err, "list"), -1;
    return n;
}

int locod_store_each_queued(locod_store *s, locod_row_fn fn, void *ctx, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT " COLS " FROM jobs WHERE state='queued' ORDER BY seq", -1, &st, NULL) !=
        SQLITE_OK)
        return locod_sq_err(s, err, "queued"), -1;
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        locod_job_row r;
        read_row(st, &r);
        fn(ctx, &r);
        locod_job_row_free(&r);
        n++;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? n : (locod_sq_err(s, err, "queued"), -1);
}

int locod_store_requeue_running(locod_store *s, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE jobs SET state='queued', started_ms=NULL, worker_id=NULL "
                           "WHERE state='running' AND cancel_requested=0",
                           -1, &st, NULL) != SQLITE_OK) {
        locod_sq_err(s, err, "requeue");
        return -1;
    }
    int r = exec_changes(s, st, err, "requeue");
    return r < 0 ? -1 : sqlite3_changes(s->db);
}

int locod_store_recover(locod_store *s, int64_t now, int64_t retention_ms, int *requeued, loco_err *err) {
    if (locod_sq_exec(s, "SAVEPOINT recover", err)) return -1;
    sqlite3_stmt *a, *b;
    sqlite3_prepare_v2(s->db,
                       "UPDATE jobs SET state='queued', started_ms=NULL, cancel_requested=0, worker_id=NULL "
                       "WHERE state='running' AND retry_on_restart=1 AND cancel_requested=0",
                       -1, &a, NULL);
    int r1 = exec_changes(s, a, err, "recover");
    int n1 = r1 > 0 ? sqlite3_changes(s->db) : 0;
    sqlite3_prepare_v2(s->db,
                       "UPDATE jobs SET state=CASE WHEN cancel_requested=1 THEN 'cancelled' ELSE 'failed' END, "
                       "error_code=CASE WHEN cancel_requested=1 THEN 'cancelled' ELSE 'server_restart' END, "
                       "error_message=CASE WHEN cancel_requested=1 THEN 'cancelled at the client''s request; the "
                       "server restarted before the job stopped' ELSE 'the server died (killed or crashed) while this "
                       "job was running; it was not retried because retry_on_restart was false: submit it again (or "
                       "set retry_on_restart to have such jobs re-queued)' END, "
                       "error_retryable=1, finished_ms=?1, expires_ms=?1 + ?2 WHERE state='running'",
                       -1, &b, NULL);
    sqlite3_bind_int64(b, 1, now);
    sqlite3_bind_int64(b, 2, retention_ms);
    int r2 = exec_changes(s, b, err, "recover");
    int n2 = r2 > 0 ? sqlite3_changes(s->db) : 0;
    if (r1 < 0 || r2 < 0) {
        locod_sq_undo_savepoint(s, "recover");
        return -1;
    }
    if (locod_sq_release(s, "recover", err)) return -1;
    if (requeued) *requeued = n1;
    return n1 + n2;
}

int locod_store_artifact(locod_store *s, const char *sha, uint64_t *size, char *mt, size_t mt_len) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT size, media_type FROM artifacts WHERE sha256 = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return 0;
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    int found = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *size = (uint64_t)sqlite3_column_int64(st, 0);
        snprintf(mt, mt_len, "%s", (const char *)sqlite3_column_text(st, 1));
        found = 1;
    }
    sqlite3_finalize(st);
    return found;
}

int locod_store_count_states(locod_store *s, int64_t counts[LOCO_JOB_STATE_COUNT]) {
    memset(counts, 0, sizeof(int64_t) * LOCO_JOB_STATE_COUNT);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT state, COUNT(*) FROM jobs GROUP BY state", -1, &st, NULL) != SQLITE_OK)
        return -1;
    while (sqlite3_step(st) == SQLITE_ROW) {
        loco_job_state js;
        if (loco_job_state_from_name((const char *)sqlite3_column_text(st, 0), &js) == 0)
            counts[js] = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return 0;
}

int locod_store_pending_per_key(locod_store *s, locod_key_count_fn fn, void *ctx) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT key_id, COUNT(*) FROM jobs WHERE state IN ('queued','running') GROUP BY key_id",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    while (sqlite3_step(st) == SQLITE_ROW)
        fn(ctx, (const char *)sqlite3_column_text(st, 0), sqlite3_column_int(st, 1));
    sqlite3_finalize(st);
    return 0;
}

/* ---- variants --------------------------------------------------------------------------- */

void locod_variant_row_free(locod_variant_row *v) {
    if (!v) return;
    json_decref(v->edit);
    v->edit = NULL;
}

loco_status locod_store_variant_put(locod_store *s, const locod_variant_row *v, loco_err *err) {
    sqlite3_stmt *st;
    const char *sql = "INSERT OR REPLACE INTO variants (name, base, delta_sha256, job_id, edit, created_ms) "
                      "VALUES (?,?,?,?,?,?)";
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return locod_sq_err(s, err, "variant insert");
    sqlite3_bind_text(st, 1, v->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, v->base, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, v->delta_sha256, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, v->job_id, -1, SQLITE_STATIC);
    if (v->edit) bind_json(st, 5, v->edit);
    else sqlite3_bind_text(st, 5, "{}", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, v->created_ms);
    return step_write(s, st) == SQLITE_DONE ? LOCO_OK : locod_sq_err(s, err, "variant insert");
}

/* 1 when sha is still needed: linked to a job or the delta of another variant. */
static int sha_in_use(locod_store *s, const char *sha) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT 1 WHERE EXISTS (SELECT 1 FROM job_artifacts WHERE sha256 = ?1) "
                           "OR EXISTS (SELECT 1 FROM variants WHERE delta_sha256 = ?1)",
                           -1, &st, NULL) != SQLITE_OK)
        return 1; /* unsure: keep the file */
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    int used = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return used;
}

/* The delta a variant row names ("" when there is no row). 0 ok, -1 error. */
static int variant_delta(locod_store *s, const char *name, char sha[65]) {
    sha[0] = 0;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT delta_sha256 FROM variants WHERE name = ?", -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) col_str(st, 0, sha, 65);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

int locod_store_variant_delete(locod_store *s, const char *name, char orphan_sha[65], loco_err *err) {
    orphan_sha[0] = 0;
    char sha[65];
    sqlite3_stmt *st;
    if (variant_delta(s, name, sha) ||
        sqlite3_prepare_v2(s->db, "DELETE FROM variants WHERE name = ?", -1, &st, NULL) != SQLITE_OK) {
        locod_sq_err(s, err, "variant delete");
        return -1;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (step_write(s, st) != SQLITE_DONE) {
        locod_sq_err(s, err, "variant delete");
        return -1;
    }
    if (!sha[0]) return 0;
    /* the delta outlived its job's retention only for this variant: it goes with it */
    if (!sha_in_use(s, sha)) {
        if (sqlite3_prepare_v2(s->db, "DELETE FROM artifacts WHERE sha256 = ?", -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
            sqlite3_step(st);
            sqlite3_finalize(st);
        }
        snprintf(orphan_sha, 65, "%s", sha);
    }
    return 1;
}

int locod_store_variants_each(locod_store *s, locod_variant_fn fn, void *ctx, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT name, base, delta_sha256, job_id, edit, created_ms FROM variants "
                           "ORDER BY created_ms, name",
                           -1, &st, NULL) != SQLITE_OK) {
        locod_sq_err(s, err, "variant list");
        return -1;
    }
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        locod_variant_row v;
        memset(&v, 0, sizeof v);
        col_str(st, 0, v.name, sizeof v.name);
        col_str(st, 1, v.base, sizeof v.base);
        col_str(st, 2, v.delta_sha256, sizeof v.delta_sha256);
        col_str(st, 3, v.job_id, sizeof v.job_id);
        v.edit = col_json(st, 4);
        v.created_ms = sqlite3_column_int64(st, 5);
        fn(ctx, &v);
        locod_variant_row_free(&v);
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        locod_sq_err(s, err, "variant list");
        return -1;
    }
    return n;
}

/* ---- group commit ------------------------------------------------------------------------- */

int locod_store_group_begin(locod_store *s, loco_err *err) {
    if (s->grouped) return 0;
    if (locod_sq_exec(s, "BEGIN IMMEDIATE", err)) {
        locod_sq_note_failure(s);
        return -1;
    }
    s->grouped = 1;
    return 0;
}

int locod_store_in_group(const locod_store *s) { return s->grouped; }

int locod_store_group_commit(locod_store *s, loco_err *err) {
    if (!s->grouped) return 0;
    s->grouped = 0;
    if (locod_sq_exec(s, "COMMIT", err)) {
        locod_sq_note_failure(s);
        locod_sq_exec(s, "ROLLBACK", NULL);
        return -1;
    }
    locod_sq_note_success(s);
    return 0;
}

loco_status locod_store_resident_set(locod_store *s, const char *name, int resident, int64_t now_ms, loco_err *err) {
    sqlite3_stmt *st;
    const char *sql = resident ? "INSERT OR IGNORE INTO resident_models (name, since_ms) VALUES (?, ?)"
                               : "DELETE FROM resident_models WHERE name = ?";
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return locod_sq_err(s, err, "resident model");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (resident) sqlite3_bind_int64(st, 2, now_ms);
    return step_write(s, st) == SQLITE_DONE ? LOCO_OK : locod_sq_err(s, err, "resident model");
}

int locod_store_residents_each(locod_store *s, locod_name_fn fn, void *ctx, loco_err *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT name FROM resident_models ORDER BY since_ms, name", -1, &st, NULL) !=
        SQLITE_OK) {
        locod_sq_err(s, err, "resident models");
        return -1;
    }
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char name[LOCO_MODEL_NAME_MAX + 1];
        col_str(st, 0, name, sizeof name);
        fn(ctx, name);
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        locod_sq_err(s, err, "resident models");
        return -1;
    }
    return n;
}

int locod_store_variant_pending(locod_store *s, const char *name) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT 1 FROM jobs WHERE state IN ('queued', 'running') AND kind = 'edit' "
                           "AND json_extract(params, '$.variant') = ? LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return 0; /* unsure: the worker refuses a taken name when the job runs */
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

int locod_store_edits_pending(locod_store *s) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running') AND kind = 'edit'",
                           -1, &st, NULL) != SQLITE_OK)
        return 0; /* unsure: the worker refuses a variant beyond its limit when the job runs */
    int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
    sqlite3_finalize(st);
    return n;
}
