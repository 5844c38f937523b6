/* queue.c: fair-share round-robin queue (see queue.h). */
#include "queue.h"

#include <stdlib.h>
#include <string.h>

typedef struct qnode {
    char id[40];
    struct qnode *next;
} qnode;

typedef struct qkey {
    char key[64];
    qnode *head, *tail;
    int n;
} qkey;

struct locod_queue {
    qkey *keys; /* the ring, in order of first appearance */
    int n_keys, cap_keys;
    int next;   /* ring index served next */
    int size;
};

locod_queue *locod_queue_create(void) { return calloc(1, sizeof(locod_queue)); }

void locod_queue_destroy(locod_queue *q) {
    if (!q) return;
    for (int i = 0; i < q->n_keys; i++)
        for (qnode *n = q->keys[i].head, *nx; n; n = nx) {
            nx = n->next;
            free(n);
        }
    free(q->keys);
    free(q);
}

static qkey *find_key(const locod_queue *q, const char *key) {
    for (int i = 0; i < q->n_keys; i++)
        if (strcmp(q->keys[i].key, key) == 0) return &q->keys[i];
    return NULL;
}

int locod_queue_push(locod_queue *q, const char *job_id, const char *key_id) {
    qkey *k = find_key(q, key_id);
    if (!k) {
        if (q->n_keys == q->cap_keys) {
            int cap = q->cap_keys ? q->cap_keys * 2 : 8;
            qkey *nk = realloc(q->keys, (size_t)cap * sizeof *nk);
            if (!nk) return -1;
            q->keys = nk;
            q->cap_keys = cap;
        }
        k = &q->keys[q->n_keys++];
        memset(k, 0, sizeof *k);
        strncpy(k->key, key_id, sizeof k->key - 1);
    }
    qnode *n = calloc(1, sizeof *n);
    if (!n) return -1;
    strncpy(n->id, job_id, sizeof n->id - 1);
    if (k->tail) k->tail->next = n;
    else k->head = n;
    k->tail = n;
    k->n++;
    q->size++;
    return 0;
}

int locod_queue_remove(locod_queue *q, const char *job_id) {
    for (int i = 0; i < q->n_keys; i++) {
        qkey *k = &q->keys[i];
        for (qnode **pp = &k->head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
            if (strcmp((*pp)->id, job_id) == 0) {
                qnode *n = *pp;
                *pp = n->next;
                if (k->tail == n) k->tail = prev;
                free(n);
                k->n--;
                q->size--;
                return 1;
            }
        }
    }
    return 0;
}

int locod_queue_pop_if(locod_queue *q, int (*accept)(void *, const char *), void *ctx, char *job_id) {
    if (q->size == 0 || q->n_keys == 0) return 0;
    for (int t = 0; t < q->n_keys; t++) {
        int i = (q->next + t) % q->n_keys;
        qkey *k = &q->keys[i];
        for (qnode **pp = &k->head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
            qnode *n = *pp;
            if (accept && !accept(ctx, n->id)) continue;
            strcpy(job_id, n->id);
            *pp = n->next;
            if (k->tail == n) k->tail = prev;
            free(n);
            k->n--;
            q->size--;
            q->next = (i + 1) % q->n_keys;
            return 1;
        }
    }
    return 0;
}

int locod_queue_pop(locod_queue *q, char *job_id) { return locod_queue_pop_if(q, NULL, NULL, job_id); }

int locod_queue_position(const locod_queue *q, const char *job_id) {
    int ki = -1, idx = -1;
    for (int i = 0; i < q->n_keys && ki < 0; i++) {
        int j = 0;
        for (qnode *n = q->keys[i].head; n; n = n->next, j++)
            if (strcmp(n->id, job_id) == 0) {
                ki = i;
                idx = j;
                break;
            }
    }
    if (ki < 0) return -1;
    /* Round r serves one job of every key with more than r jobs, in ring order from `next`.
     * The job is served in round idx, at its key's turn. */
    int before = 0;
    for (int t = 0; t < q->n_keys; t++) {
        int i = (q->next + t) % q->n_keys;
        if (i == ki) {
            before += idx;
            continue;
        }
        int n = q->keys[i].n;
        int ahead_in_ring = ((i - q->next + q->n_keys) % q->n_keys) < ((ki - q->next + q->n_keys) % q->n_keys);
        before += n < idx ? n : idx;
        if (ahead_in_ring && n > idx) before++;
    }
    return before;
}

int locod_queue_size(const locod_queue *q) { return q->size; }

int locod_queue_key_size(const locod_queue *q, const char *key_id) {
    const qkey *k = find_key(q, key_id);
    return k ? k->n : 0;
}
