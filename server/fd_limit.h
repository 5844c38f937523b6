/* fd_limit.h: fitting the connection limit to the open-file limit (RLIMIT_NOFILE) at start-up.
 * Every connection is a socket and may hold an artifact file open while it sends it, so a
 * server with limits.max_connections connections needs about twice that many descriptors plus a
 * reserve for itself (job store, worker pipes, log, listening socket, event loop). Past the
 * limit accept() and open() fail with EMFILE: new clients wait unanswered and artifacts cannot
 * be opened. As Redis does (adjustOpenFilesLimit), the daemon raises its soft limit towards the
 * hard limit as far as it needs, and when the hard limit is too low it serves fewer connections
 * and says what to change. */
#ifndef LOCOD_FD_LIMIT_H
#define LOCOD_FD_LIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "config.h"

/* Descriptors the daemon holds besides its connections: 19 when measured idle, plus room for a
 * worker restart's new pipes, SQLite's journal, folder scans and model configs read at load. */
#define LOCOD_FD_RESERVE 32
/* A connection's socket, and the artifact file it may be sending. */
#define LOCOD_FDS_PER_CONNECTION 2

/* What to ask for. UINT64_MAX stands for RLIM_INFINITY. */
typedef struct locod_fd_plan {
    uint64_t soft;       /* the soft limit to set (the current one when nothing changes) */
    int max_connections; /* what fits under it: the configured value, or fewer */
} locod_fd_plan;

/* The plan for max_connections under the current soft and hard limits (pure, for tests).
 * max_connections is never below 1 in the plan: whether that is usable is the caller's call. */
locod_fd_plan locod_fd_plan_for(uint64_t soft, uint64_t hard, int max_connections);

/* Descriptors max_connections connections need with the reserve. */
uint64_t locod_fd_needed(int max_connections);

typedef enum locod_fd_outcome {
    LOCOD_FD_ENOUGH,  /* the soft limit already sufficed */
    LOCOD_FD_RAISED,  /* the soft limit was raised; note says from what to what */
    LOCOD_FD_LOWERED, /* the hard limit is too low: cfg's connection limits were lowered; note says
                         what to change */
} locod_fd_outcome;

/* Apply the plan to this process and to cfg (max_connections, and the event-stream and
 * per-address caps that follow it). note (may be NULL) gets a sentence for the log. Fails,
 * leaving cfg as it was, when not even 4 connections fit. */
loco_status locod_fit_open_files(locod_config *cfg, locod_fd_outcome *outcome, char *note, size_t note_size,
                                 loco_err *err);

#endif
