/* store_test_util.h: shared helpers of the job-store tests (test_server_core.c, test_server_store.c):
 * a store path in a fresh temporary folder and a queued job row. */
#ifndef LOCO_STORE_TEST_UTIL_H
#define LOCO_STORE_TEST_UTIL_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

/* A fresh temporary folder in dir (its name from prefix, e.g. "/tmp/loco-unit"); db gets the
 * store's path in it. */
static inline void store_test_tmp_path(const char *prefix, char *dir, size_t dir_size, char *db, size_t db_size) {
    snprintf(dir, dir_size, "%s-XXXXXX", prefix);
    if (!mkdtemp(dir)) abort();
    snprintf(db, db_size, "%s/jobs.sqlite3", dir);
}

/* A queued job row of `kind` with id number `id` for key `key` on model "m", empty params. */
static inline void store_test_job_row(locod_job_row *r, int id, loco_job_kind kind, const char *key) {
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%032x", id);
    r->kind = kind;
    r->state = LOCO_JOB_QUEUED;
    snprintf(r->model, sizeof r->model, "m");
    snprintf(r->key_id, sizeof r->key_id, "%s", key);
    r->params = json_object();
}

#endif
