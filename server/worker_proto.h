/* worker_proto.h: the daemon <-> worker messages, one compact JSON object per line.
 *
 * daemon -> worker (worker's stdin):
 *   {"op":"load","model":N,"path":P,"config_dir":C|null,"variant":V|null}
 *   {"op":"load","model":N,"base":B,"delta":PATH,"delta_sha256":S}   (re-create a recorded
 *                                        variant of the resident base B from its delta file)
 *   {"op":"unload","model":N}
 *   {"op":"run","job":ID,"kind":"generate","model":N,"params":{...}}
 *   {"op":"cancel","job":ID}             (honoured between two model calls, or before the
 *                                        job starts when it arrives while its run waits)
 * worker -> daemon (a pipe on fd 3; the worker's stdout goes to stderr):
 *   {"ev":"ready","device":"cpu (...)"}  or {"ev":"fatal","message":...} before exiting
 *   {"ev":"loaded","model":N,"ok":true,"info":{...}} / {"ok":false,"error":{"code","message"}}
 *   {"ev":"unloaded","model":N}
 *   {"ev":"progress","job":ID,"phase":"denoise","step":i,"total":n}
 *   {"ev":"done","job":ID,"ok":true,"result":{...},"artifacts":[...],"memory":{...}}
 *   {"ev":"done","job":ID,"ok":false,"error":{"code","message","retryable"},"restart":bool}
 * Artifacts are already in the content-addressed store when "done" arrives; the daemon only
 * records them. */
#ifndef LOCOD_WORKER_PROTO_H
#define LOCOD_WORKER_PROTO_H

#include <jansson.h>
#include <stddef.h>

#define LOCOD_WORKER_MSG_FD 3
/* Models and variants one worker holds at once; the daemon refuses edits (each adds a resident
 * variant) that would go beyond it. */
#define LOCOD_WORKER_MAX_MODELS 64

/* Accumulates bytes and hands out complete lines. */
typedef struct locod_linebuf {
    char *buf;
    size_t len, cap;
} locod_linebuf;

void locod_linebuf_free(locod_linebuf *b);
int locod_linebuf_append(locod_linebuf *b, const char *data, size_t n); /* -1 when a line exceeds 64 MiB */
/* Next complete line as parsed JSON (NULL when none is complete; *bad = 1 for a malformed line). */
json_t *locod_linebuf_next(locod_linebuf *b, int *bad);

/* Write one message + '\n' to fd (blocking, whole). 0 ok, -1 error. */
int locod_send_json(int fd, const json_t *msg);

/* The worker process: `locod --worker --device D --threads N --artifacts DIR [--test-faults]`. */
int locod_worker_main(int argc, char **argv);

#endif
