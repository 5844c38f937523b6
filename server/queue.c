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

/* One entry of the position index: a queued job's id (the node's own string) and its position. */
typedef struct qpos {
    const char *id;
    int pos;
} qpos;

struct locod_queue {
    qkey *keys; /* the ring, in order of first appearance */
    int n_keys, cap_keys;
    int next;   /* ring index served next */
    int size;
    /* Every position at once, rebuilt after a change when one is asked for: each open event
     * stream of a queued job asks after every change, and a walk per stream made a long queue
     * with many watchers cost O(streams x queue) per dispatched job. Open addressing, a power
     * of two at least twice the size. */
    uint64_t changes, indexed_at;
    qpos *index;
    size_t index_cap;
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
    free(q->index);
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
    q->changes++;
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
                q->changes++;
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
            q->changes++;
            return 1;
        }
    }
    return 0;
}

int locod_queue_pop(locod_queue *q, char *job_id) { return locod_queue_pop_if(q, NULL, NULL, job_id); }

/* How many jobs go before the idx-th job of key ki. Round r serves one job of every key with
 * more than r jobs, in ring order from `next`; the job is served in round idx, at its key's turn. */
static int position_of(const locod_queue *q, int ki, int idx) {
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

static size_t id_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

/* 0 ok, -1 out of memory (the caller then walks the lists). */
static int rebuild_index(locod_queue *q) {
    size_t cap = 16;
    while (cap < 2 * (size_t)q->size) cap *= 2;
    if (cap != q->index_cap) {
        qpos *ix = malloc(cap * sizeof *ix);
        if (!ix) return -1;
        free(q->index);
        q->index = ix;
        q->index_cap = cap;
    }
    memset(q->index, 0, cap * sizeof *q->index);
    for (int i = 0; i < q->n_keys; i++) {
        int j = 0;
        for (const qnode *n = q->keys[i].head; n; n = n->next, j++) {
            size_t h = id_hash(n->id) & (cap - 1);
            while (q->index[h].id) h = (h + 1) & (cap - 1);
            q->index[h] = (qpos){n->id, position_of(q, i, j)};
        }
    }
    q->indexed_at = q->changes;
    return 0;
}

static int position_by_walk(const locod_queue *q, const char *job_id) {
    for (int i = 0; i < q->n_keys; i++) {
        int j = 0;
        for (const qnode *n = q->keys[i].head; n; n = n->next, j++)
            if (strcmp(n->id, job_id) == 0) return position_of(q, i, j);
    }
    return -1;
}

int locod_queue_position(locod_queue *q, const char *job_id) {
    if (q->size == 0) return -1;
    if ((!q->index || q->indexed_at != q->changes) && rebuild_index(q)) return position_by_walk(q, job_id);
    for (size_t h = id_hash(job_id) & (q->index_cap - 1); q->index[h].id; h = (h + 1) & (q->index_cap - 1))
        if (strcmp(q->index[h].id, job_id) == 0) return q->index[h].pos;
    return -1;
}

int locod_queue_size(const locod_queue *q) { return q->size; }

int locod_queue_key_size(const locod_queue *q, const char *key_id) {
    const qkey *k = find_key(q, key_id);
    return k ? k->n : 0;
}
