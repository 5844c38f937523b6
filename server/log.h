/* log.h: the daemon's one logger. Lines go to one stream (stderr by default) as
 *   2026-01-02T03:04:05.678Z locod[1234] info: message
 * Everything in server/ logs through a loco_log passed down from main; nothing else prints. */
#ifndef LOCOD_LOG_H
#define LOCOD_LOG_H

#include <stdio.h>

typedef enum loco_log_level { LOCO_LOG_DEBUG = 0, LOCO_LOG_INFO, LOCO_LOG_WARN, LOCO_LOG_ERROR } loco_log_level;

const char *loco_log_level_name(loco_log_level l);
int loco_log_level_from_name(const char *name, loco_log_level *out); /* 0 ok, -1 unknown */

typedef struct loco_log loco_log;

loco_log *loco_log_create(FILE *out, loco_log_level level, const char *prog);
void loco_log_destroy(loco_log *log);
void loco_log_set_level(loco_log *log, loco_log_level level);
void loco_logf(loco_log *log, loco_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define LOG_DEBUG(log, ...) loco_logf((log), LOCO_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(log, ...) loco_logf((log), LOCO_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(log, ...) loco_logf((log), LOCO_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(log, ...) loco_logf((log), LOCO_LOG_ERROR, __VA_ARGS__)

#endif
