/* server.h: the locod daemon as one opaque object. main (locod_main.c) loads the config,
 * creates the server, runs it until SIGINT/SIGTERM, and destroys it.
 *
 * Threads: libmicrohttpd answers HTTP on its own threads (one per connection, so an event
 * stream may block waiting for news); one libuv loop on the thread that calls locod_server_run
 * supervises the worker process, dispatches jobs, runs timers and handles signals. Both sides
 * share the server state under one mutex; HTTP threads wake the loop with uv_async_send. */
#ifndef LOCOD_SERVER_H
#define LOCOD_SERVER_H

#include "base.h"
#include "config.h"
#include "log.h"

typedef struct locod_server locod_server;

/* Open the store (recovering jobs the last process left running), rebuild the queue, bind the
 * listen socket. `self_exe` is the path to re-execute as the worker. cfg and log must outlive
 * the server. */
loco_status locod_server_create(const locod_config *cfg, loco_log *log, const char *self_exe, locod_server **out,
                                loco_err *err);
/* Start the worker and serve until a stop signal. */
loco_status locod_server_run(locod_server *srv, loco_err *err);
void locod_server_destroy(locod_server *srv);
int locod_server_port(const locod_server *srv);

#endif
