/* Unit tests of the job store's retention and listing at scale: purges in bounded batches that
 * never lose a shared artifact, the full-disk fallback that still frees artifact files, the
 * readiness flag that follows the store's writes, list filters that use an index with the same
 * results and pages, and a file that shrinks after a purge. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "artifacts.h"
#include "loco_test.h"
#include "store.h"
#include "store_test_util.h"

static char tmpdir[256];

static void tmp_store_path(char *db, size_t n) { store_test_tmp_path("/tmp/loco-store", tmpdir, sizeof tmpdir, db, n); }

/* store_test_job_row, created at 1000 + id */
static void job_row_init(locod_job_row *r, int id, loco_job_kind kind, const char *key) {
    store_test_job_row(r, id, kind, key);
    r->created_ms = 1000 + id;
}

/* Insert job `id` and finish it succeeded, expiring at expires_ms, with these artifacts (shas,
 * NULL-terminated). 0 ok. */
static int add_finished(locod_store *s, int id, int64_t expires_ms, const char *const *shas) {
    locod_job_row r;
    job_row_init(&r, id, LOCO_JOB_GENERATE, "k");
    loco_err err;
    json_t *arts = json_array();
    for (int i = 0; shas && shas[i]; i++)
        json_array_append_new(arts,
                              json_pack("{s:s, s:i, s:s}", "sha256", shas[i], "size", 1, "media_type", "image/png"));
    int ok = locod_store_insert(s, &r, &err) == LOCO_OK &&
             locod_store_finish(s, r.id, LOCO_JOB_SUCCEEDED, 2000, expires_ms, NULL, NULL, 0, NULL, arts, &err) == 1;
    json_decref(arts);
    locod_job_row_free(&r);
    return ok ? 0 : -1;
}

static int put_variant(locod_store *s, const char *name, const char *delta, int job) {
    locod_variant_row v;
    memset(&v, 0, sizeof v);
    snprintf(v.name, sizeof v.name, "%s", name);
    snprintf(v.base, sizeof v.base, "m");
    snprintf(v.delta_sha256, sizeof v.delta_sha256, "%s", delta);
    snprintf(v.job_id, sizeof v.job_id, "%032x", job);
    loco_err err;
    return locod_store_variant_put(s, &v, &err) == LOCO_OK ? 0 : -1;
}

static int has_artifact(locod_store *s, const char *sha) {
    uint64_t size;
    char mt[64];
    return locod_store_artifact(s, sha, &size, mt, sizeof mt);
}

static int job_exists(locod_store *s, int id) {
    char hex[LOCO_JOB_ID_LEN + 1];
    snprintf(hex, sizeof hex, "%032x", id);
    locod_job_row g;
    loco_err err;
    int found = locod_store_get(s, hex, &g, &err);
    if (found == 1) locod_job_row_free(&g);
    return found;
}

/* gone() for the tests: records every sha it is given (in seen, a JSON array); with a root, it
 * deletes the file as the server does. */
typedef struct gone_log {
    const char *root;
    json_t *seen;
} gone_log;

static void gone_record(void *ctx, const char *sha) {
    gone_log *g = ctx;
    json_array_append_new(g->seen, json_string(sha));
    if (g->root) locod_artifact_remove(g->root, sha, 0);
}

static int was_gone(const gone_log *g, const char *sha) {
    size_t i;
    json_t *v;
    json_array_foreach(g->seen, i, v) if (strcmp(json_string_value(v), sha) == 0) return 1;
    return 0;
}

/* ---- bounded batches ---------------------------------------------------------------------- */

/* 1200 expired jobs go in batches of at most 500 (one transaction each, so the server's lock is
 * released between them); an artifact shared by the first and the last batch stays until the
 * last, one a live job or a variant uses never goes. */
TEST(store_purge_runs_in_bounded_batches) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    const char *first[] = {"split", "live", NULL}, *last[] = {"split", NULL}, *edit[] = {"delta", NULL};
    const char *own[] = {"own", NULL};
    CHECK(locod_store_group_begin(s, &err) == 0); /* one fsync for the set-up, not 1200 */
    for (int i = 0; i < 1200; i++) {
        const char *const *a = i == 0 ? first : i == 1199 ? last : i == 1 ? edit : i == 2 ? own : NULL;
        CHECK(add_finished(s, i, 3000, a) == 0);
    }
    const char *live[] = {"live", NULL};
    CHECK(add_finished(s, 5000, 1000000, live) == 0); /* expires long after now */
    CHECK(put_variant(s, "m-edit", "delta", 1) == 0);
    CHECK(locod_store_group_commit(s, &err) == 0);

    gone_log g = {NULL, json_array()};
    locod_purge_pass p;
    memset(&p, 0, sizeof p);
    int calls = 0, sizes[8];
    while (!p.done && calls < 8) {
        int n = locod_store_purge_batch(s, 4000, 500, &p, gone_record, &g, &err);
        CHECK_MSG(n >= 0 && n <= 500, "batch %d purged %d: %s", calls, n, err.msg);
        sizes[calls++] = n;
        if (calls == 1) { /* the first batch had job 0; job 1199 still links "split" */
            CHECK(!was_gone(&g, "split") && has_artifact(s, "split") == 1);
            CHECK(job_exists(s, 0) == 0 && job_exists(s, 1199) == 1);
        }
    }
    CHECK_MSG(calls == 3 && sizes[0] == 500 && sizes[1] == 500 && sizes[2] == 200, "calls %d", calls);
    CHECK(p.purged == 1200 && p.kept == 0);
    CHECK(was_gone(&g, "split") && was_gone(&g, "own") && !was_gone(&g, "live") && !was_gone(&g, "delta"));
    CHECK(json_array_size(g.seen) == 2);
    CHECK(has_artifact(s, "split") == 0 && has_artifact(s, "live") == 1 && has_artifact(s, "delta") == 1);
    CHECK(job_exists(s, 5000) == 1 && locod_store_is_expired(s, "000000000000000000000000000004af"));
    /* a finished pass does nothing more; a new one finds nothing */
    CHECK(locod_store_purge_batch(s, 4000, 500, &p, gone_record, &g, &err) == 0);
    CHECK(locod_store_purge(s, 4000, NULL, NULL, &err) == 0);
    json_decref(g.seen);
    locod_store_close(s);
}

/* ---- full disk ------------------------------------------------------------------------------ */

/* Artifact files with real content under root; their shas in sha[]. */
static int put_files(const char *root, int n, char sha[][65]) {
    loco_err err;
    for (int i = 0; i < n; i++) {
        char body[16];
        snprintf(body, sizeof body, "file-%d", i);
        if (locod_artifact_put(root, body, strlen(body), sha[i], &err) != LOCO_OK) return -1;
    }
    return 0;
}

static int file_exists(const char *root, const char *sha) {
    char p[512];
    struct stat st;
    locod_artifact_path(root, sha, p, sizeof p);
    return stat(p, &st) == 0;
}

/* Purge needs to write (tombstones, WAL) before it deletes anything, so on a full disk it used
 * to fail before any file went and no space ever came back. Now the files that only expired jobs
 * use are deleted anyway (a file a live job or a variant uses is not), the rows stay, readiness
 * says the store is failing, and the next pass once writes work deletes the rows. */
TEST(store_purge_frees_artifact_files_on_a_full_disk) {
    char db[300], root[300];
    tmp_store_path(db, sizeof db);
    snprintf(root, sizeof root, "%s/artifacts", tmpdir);
    loco_err err;
    CHECK(locod_artifacts_init(root, &err) == LOCO_OK);
    char sha[4][65]; /* 0: only job 0, 1: jobs 0 and 1000 (two batches), 2: job 1000 and a live job, 3: a delta */
    CHECK(put_files(root, 4, sha) == 0);
    locod_store *s = NULL;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    const char *j0[] = {sha[0], sha[1], NULL}, *j1000[] = {sha[1], sha[2], NULL}, *j1001[] = {sha[3], NULL};
    const char *live[] = {sha[2], NULL};
    CHECK(locod_store_group_begin(s, &err) == 0);
    CHECK(add_finished(s, 0, 3000, j0) == 0);
    for (int i = 1; i < 300; i++) CHECK(add_finished(s, i, 3000, NULL) == 0); /* enough tombstones to need pages */
    CHECK(add_finished(s, 1000, 3000, j1000) == 0);
    CHECK(add_finished(s, 1001, 3000, j1001) == 0);
    CHECK(add_finished(s, 2000, 1000000, live) == 0);
    CHECK(put_variant(s, "m-edit", sha[3], 1001) == 0);
    CHECK(locod_store_group_commit(s, &err) == 0);
    char why[256];
    CHECK(locod_store_write_failure(s, why, sizeof why) == 0);

    int64_t cap = locod_store_cap_pages(s, 0); /* the file may not grow: a full disk */
    CHECK(cap > 0);
    gone_log g = {root, json_array()};
    locod_purge_pass p;
    memset(&p, 0, sizeof p);
    for (int calls = 0; !p.done && calls < 10; calls++)
        CHECK_MSG(locod_store_purge_batch(s, 4000, 200, &p, gone_record, &g, &err) == 0, "%s", err.msg);
    CHECK_MSG(p.kept == 302 && p.purged == 0, "kept %lld purged %lld", (long long)p.kept, (long long)p.purged);
    CHECK(!file_exists(root, sha[0]) && !file_exists(root, sha[1])); /* space comes back */
    CHECK(file_exists(root, sha[2]) && file_exists(root, sha[3]));   /* a live job's, a variant's */
    CHECK(job_exists(s, 0) == 1 && job_exists(s, 1000) == 1);        /* rows wait for a write */
    CHECK(locod_store_write_failure(s, why, sizeof why) == 1);
    CHECK_MSG(strstr(why, "disk full") && strstr(why, "full"), "%s", why);

    CHECK(locod_store_cap_pages(s, cap) >= 0); /* space again */
    json_array_clear(g.seen);
    memset(&p, 0, sizeof p);
    for (int calls = 0; !p.done && calls < 10; calls++)
        CHECK_MSG(locod_store_purge_batch(s, 4000, 200, &p, gone_record, &g, &err) >= 0, "%s", err.msg);
    CHECK(p.purged == 302 && p.kept == 0);
    CHECK(job_exists(s, 0) == 0 && job_exists(s, 1000) == 0 && job_exists(s, 2000) == 1);
    CHECK(has_artifact(s, sha[0]) == 0 && has_artifact(s, sha[1]) == 0);
    CHECK(has_artifact(s, sha[2]) == 1 && has_artifact(s, sha[3]) == 1);
    CHECK(!was_gone(&g, sha[2]) && !was_gone(&g, sha[3]));
    CHECK(file_exists(root, sha[2]) && file_exists(root, sha[3]));
    CHECK(locod_store_write_failure(s, why, sizeof why) == 0); /* ready again */
    json_decref(g.seen);
    locod_store_close(s);
}

/* A refused row (same id twice) is not a failing store: readiness stays. */
TEST(store_readiness_ignores_a_refused_row) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    locod_job_row r;
    job_row_init(&r, 1, LOCO_JOB_GENERATE, "k");
    CHECK(locod_store_insert(s, &r, &err) == LOCO_OK);
    CHECK(locod_store_insert(s, &r, &err) != LOCO_OK);
    char why[256];
    CHECK(locod_store_write_failure(s, why, sizeof why) == 0);
    locod_job_row_free(&r);
    locod_store_close(s);
}

/* ---- list filters ------------------------------------------------------------------------- */

/* Each filter walks its index: no scan of the table, no sort. */
TEST(store_list_filters_use_an_index) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    char plan[1024];
    locod_job_filter f;
    memset(&f, 0, sizeof f);
    f.limit = 50;
    f.has_state = 1;
    f.state = LOCO_JOB_SUCCEEDED;
    CHECK(locod_store_list_plan(s, &f, plan, sizeof plan, &err) == 0);
    CHECK_MSG(strstr(plan, "INDEX jobs_state") && !strstr(plan, "TEMP B-TREE"), "state: %s", plan);
    f.before_seq = 1234; /* a later page */
    CHECK(locod_store_list_plan(s, &f, plan, sizeof plan, &err) == 0);
    CHECK_MSG(strstr(plan, "INDEX jobs_state") && !strstr(plan, "TEMP B-TREE"), "state + cursor: %s", plan);
    memset(&f, 0, sizeof f);
    f.limit = 50;
    f.has_kind = 1;
    f.kind = LOCO_JOB_EDIT;
    CHECK(locod_store_list_plan(s, &f, plan, sizeof plan, &err) == 0);
    CHECK_MSG(strstr(plan, "INDEX jobs_kind") && !strstr(plan, "TEMP B-TREE"), "kind: %s", plan);
    memset(&f, 0, sizeof f);
    f.limit = 50;
    f.key_id = "alice";
    CHECK(locod_store_list_plan(s, &f, plan, sizeof plan, &err) == 0);
    CHECK_MSG(strstr(plan, "INDEX jobs_key") && !strstr(plan, "TEMP B-TREE"), "key: %s", plan);
    locod_store_close(s);
}

typedef struct page_ctx {
    int64_t seqs[64];
    int n;
} page_ctx;

static void collect_seq(void *ctx, const locod_job_row *row) {
    page_ctx *p = ctx;
    if (p->n < 64) p->seqs[p->n++] = row->seq;
}

/* What the filters keep of the 60 jobs below, newest first (seq = i + 1). */
static int expected(const locod_job_filter *f, int64_t want[60]) {
    int n = 0;
    for (int i = 59; i >= 0; i--) {
        loco_job_state st = i % 3 == 0 ? LOCO_JOB_QUEUED : i % 3 == 1 ? LOCO_JOB_SUCCEEDED : LOCO_JOB_FAILED;
        loco_job_kind k = i % 2 ? LOCO_JOB_EDIT : LOCO_JOB_GENERATE;
        const char *key = i % 5 < 2 ? "alice" : "bob";
        if ((f->has_state && st != f->state) || (f->has_kind && k != f->kind) || (f->key_id && strcmp(key, f->key_id)))
            continue;
        want[n++] = i + 1;
    }
    return n;
}

/* Pages of 7 through every combination of filters give exactly the jobs the filters select,
 * newest first, each once. */
TEST(store_list_filters_and_pages_keep_their_results) {
    char db[300];
    tmp_store_path(db, sizeof db);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    CHECK(locod_store_group_begin(s, &err) == 0);
    for (int i = 0; i < 60; i++) {
        locod_job_row r;
        job_row_init(&r, i, i % 2 ? LOCO_JOB_EDIT : LOCO_JOB_GENERATE, i % 5 < 2 ? "alice" : "bob");
        CHECK(locod_store_insert(s, &r, &err) == LOCO_OK && r.seq == i + 1);
        if (i % 3 == 1)
            CHECK(locod_store_finish(s, r.id, LOCO_JOB_SUCCEEDED, 2, 9, NULL, NULL, 0, NULL, NULL, &err) == 1);
        if (i % 3 == 2) CHECK(locod_store_finish(s, r.id, LOCO_JOB_FAILED, 2, 9, "x", "y", 0, NULL, NULL, &err) == 1);
        locod_job_row_free(&r);
    }
    CHECK(locod_store_group_commit(s, &err) == 0);
    for (int combo = 0; combo < 4 * 3 * 3; combo++) {
        locod_job_filter f;
        memset(&f, 0, sizeof f);
        f.limit = 7;
        int sc = combo % 4, kc = combo / 4 % 3, keyc = combo / 12;
        f.has_state = sc > 0;
        f.state = sc == 1 ? LOCO_JOB_QUEUED : sc == 2 ? LOCO_JOB_SUCCEEDED : LOCO_JOB_FAILED;
        f.has_kind = kc > 0;
        f.kind = kc == 1 ? LOCO_JOB_GENERATE : LOCO_JOB_EDIT;
        f.key_id = keyc == 0 ? NULL : keyc == 1 ? "alice" : "bob";
        int64_t want[60], got[60];
        int nwant = expected(&f, want), ngot = 0, more = 1;
        while (more) {
            page_ctx pg = {{0}, 0};
            int n = locod_store_list(s, &f, collect_seq, &pg, &more, &err);
            CHECK_MSG(n == pg.n && n <= 7 && ngot + n <= 60, "combo %d: %d rows", combo, n);
            memcpy(got + ngot, pg.seqs, sizeof(int64_t) * (size_t)n);
            ngot += n;
            if (more) f.before_seq = pg.seqs[n - 1]; /* the handler's next_cursor */
        }
        CHECK_MSG(ngot == nwant && memcmp(got, want, sizeof(int64_t) * (size_t)ngot) == 0, "combo %d: %d vs %d rows",
                  combo, ngot, nwant);
    }
    locod_store_close(s);
}

/* ---- file size ------------------------------------------------------------------------------ */

static long long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* 3000 jobs with 1 KB of params each, all expired. The file is measured closed (the WAL
 * checkpointed into it). */
static int fill_expired(const char *db) {
    locod_store *s = NULL;
    loco_err err;
    if (locod_store_open(db, &s, &err) != LOCO_OK || locod_store_group_begin(s, &err)) return -1;
    char pad[1024];
    memset(pad, 'p', sizeof pad - 1);
    pad[sizeof pad - 1] = 0;
    for (int i = 0; i < 3000; i++) {
        locod_job_row r;
        job_row_init(&r, i, LOCO_JOB_GENERATE, "k");
        json_object_set_new(r.params, "prompt", json_string(pad));
        int ok = locod_store_insert(s, &r, &err) == LOCO_OK &&
                 locod_store_finish(s, r.id, LOCO_JOB_FAILED, 2, 9, "x", "y", 0, NULL, NULL, &err) == 1;
        locod_job_row_free(&r);
        if (!ok) return -1;
    }
    int rc = locod_store_group_commit(s, &err);
    locod_store_close(s);
    return rc;
}

/* The file gives the purged rows' pages back (auto_vacuum=INCREMENTAL on a new store, then
 * locod_store_reclaim after the purge): it used to keep its size forever. */
TEST(store_file_shrinks_after_a_purge) {
    char db[300];
    tmp_store_path(db, sizeof db);
    CHECK(fill_expired(db) == 0);
    long long full = file_size(db);
    CHECK(full > 3000 * 1024);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    CHECK(locod_store_purge(s, 100, NULL, NULL, &err) == 3000);
    int pages = 0, n;
    while ((n = locod_store_reclaim(s, 1024, &err)) > 0) pages += n; /* bounded steps, as the server does */
    CHECK_MSG(n == 0 && pages > 700, "reclaimed %d pages: %s", pages, err.msg);
    locod_store_close(s);
    long long after = file_size(db);
    CHECK_MSG(after >= 0 && after < full / 4, "%lld bytes before the purge, %lld after", full, after);
}

/* A store created without auto_vacuum (before this change) is rewritten with it once. */
TEST(store_old_file_gets_auto_vacuum_once) {
    char db[300];
    tmp_store_path(db, sizeof db);
    sqlite3 *raw;
    CHECK(sqlite3_open(db, &raw) == SQLITE_OK);
    CHECK(sqlite3_exec(raw, "PRAGMA journal_mode=WAL; CREATE TABLE old_table(x)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(raw);
    locod_store *s = NULL;
    loco_err err;
    CHECK(locod_store_open(db, &s, &err) == LOCO_OK);
    locod_job_row r;
    job_row_init(&r, 1, LOCO_JOB_GENERATE, "k");
    CHECK(locod_store_insert(s, &r, &err) == LOCO_OK);
    CHECK_MSG(locod_store_enable_auto_vacuum(s, &err) == 1, "%s", err.msg);
    CHECK(locod_store_enable_auto_vacuum(s, &err) == 0);
    CHECK(job_exists(s, 1) == 1);
    locod_store_close(s);
    CHECK(sqlite3_open(db, &raw) == SQLITE_OK);
    sqlite3_stmt *st;
    CHECK(sqlite3_prepare_v2(raw, "PRAGMA auto_vacuum", -1, &st, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 2);
    sqlite3_finalize(st);
    sqlite3_close(raw);
    locod_job_row_free(&r);
}
