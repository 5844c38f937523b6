/* store_impl.h: what the files of the SQLite job store share (store_sqlite.c, store_retention.c);
 * nothing outside them includes it. */
#ifndef LOCOD_STORE_IMPL_H
#define LOCOD_STORE_IMPL_H

#include <sqlite3.h>

#include "store.h"

struct locod_store {
    sqlite3 *db;
    int grouped; /* a group-commit transaction is open */
    /* readiness (locod_store_write_failure): SQLite's code for the last write that failed with a
     * storage error, SQLITE_OK once a later write was committed */
    int write_rc;
    char write_error[200];
};

/* err = "job store: <what>: <SQLite's message>". Returns LOCO_EIO. */
loco_status locod_sq_err(locod_store *s, loco_err *err, const char *what);
/* sqlite3_exec with the message in err. 0 ok, -1 failed. */
int locod_sq_exec(locod_store *s, const char *sql, loco_err *err);
/* Roll a savepoint back and drop it (error paths: nothing to report). */
void locod_sq_undo_savepoint(locod_store *s, const char *name);
/* RELEASE of a write's savepoint: the commit when no group transaction is open. 0 ok, else
 * SQLite's code for the failure (the savepoint is then rolled back, readiness noted). */
int locod_sq_release(locod_store *s, const char *name, loco_err *err);
/* After a write statement or COMMIT/RELEASE failed: note it for readiness when SQLite's code says
 * the storage is failing (a constraint violation is a refused row, not a failing store). */
void locod_sq_note_failure(locod_store *s);
/* After a write succeeded: the store is writable again, once it is committed (autocommit mode
 * again); inside a group transaction the disk is only asked at COMMIT. */
void locod_sq_note_success(locod_store *s);

#endif
