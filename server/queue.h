/* queue.h: the in-memory order of queued jobs, fair between API keys.
 *
 * Each key has its own FIFO; keys are served round-robin (after a job of key A is dispatched,
 * the next dispatch goes to the next key in the ring that has work), so one member queueing
 * 500 jobs delays another member's single job by at most one job per other active key. The
 * queue only orders ids; the store holds the jobs. Not thread-safe (the server's lock). */
#ifndef LOCOD_QUEUE_H
#define LOCOD_QUEUE_H

#include <stdint.h>

typedef struct locod_queue locod_queue;

locod_queue *locod_queue_create(void);
void locod_queue_destroy(locod_queue *q);

/* Append to the key's FIFO. 0 ok, -1 out of memory. */
int locod_queue_push(locod_queue *q, const char *job_id, const char *key_id);
/* 1 removed, 0 not queued. */
int locod_queue_remove(locod_queue *q, const char *job_id);
/* Next job by fair share into job_id (>= 33 bytes); 1 popped, 0 empty. */
int locod_queue_pop(locod_queue *q, char *job_id);
/* Like pop, but only jobs for which accept(ctx, job_id) returns non-zero; others keep their place. */
int locod_queue_pop_if(locod_queue *q, int (*accept)(void *ctx, const char *job_id), void *ctx, char *job_id);
/* How many jobs will be dispatched before this one (0 = next), or -1 when not queued. Amortised
 * O(1): the first call after a change indexes every position. */
int locod_queue_position(locod_queue *q, const char *job_id);
int locod_queue_size(const locod_queue *q);
int locod_queue_key_size(const locod_queue *q, const char *key_id);

#endif
