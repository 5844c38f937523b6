/* log.c: see log.h. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct loco_log {
    FILE *out;
    loco_log_level level;
    char prog[32];
    pthread_mutex_t mu;
};

static const char *const names[] = {"debug", "info", "warn", "error"};

const char *loco_log_level_name(loco_log_level l) { return (unsigned)l <= LOCO_LOG_ERROR ? names[l] : "unknown"; }

int loco_log_level_from_name(const char *name, loco_log_level *out) {
    for (int i = 0; name && i <= LOCO_LOG_ERROR; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (loco_log_level)i;
            return 0;
        }
    return -1;
}

loco_log *loco_log_create(FILE *out, loco_log_level level, const char *prog) {
    loco_log *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->out = out ? out : stderr;
    l->level = level;
    snprintf(l->prog, sizeof l->prog, "%s", prog ? prog : "locod");
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void loco_log_destroy(loco_log *l) {
    if (!l) return;
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void loco_log_set_level(loco_log *l, loco_log_level level) {
    if (l) l->level = level;
}

void loco_logf(loco_log *l, loco_log_level level, const char *fmt, ...) {
    if (!l || level < l->level) return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&l->mu);
    fprintf(l->out, "%s.%03dZ %s[%d] %s: %s\n", ts, (int)(tv.tv_usec / 1000), l->prog, (int)getpid(), names[level], msg);
    fflush(l->out);
    pthread_mutex_unlock(&l->mu);
}
