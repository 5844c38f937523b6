/* bench_util.h: what the method benchmarks (locogen_batched.c, trace_graphs.c) print and time
 * the same way: the CPU's name, process CPU seconds, and a fatal-error exit. */
#ifndef LOCO_BENCH_UTIL_H
#define LOCO_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIE(...)                                                                                                       \
    do {                                                                                                               \
        fprintf(stderr, __VA_ARGS__);                                                                                  \
        fputc('\n', stderr);                                                                                           \
        exit(1);                                                                                                       \
    } while (0)

/* "model name, N logical CPUs" from /proc/cpuinfo ("unknown CPU" without it). */
static inline void bench_cpu_name(char *buf, size_t n) {
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    int cores = 0;
    char model[256] = "";
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10) && !model[0]) {
            const char *c = strchr(line, ':');
            if (c) snprintf(model, sizeof model, "%s", c + 2);
            model[strcspn(model, "\n")] = 0;
        }
        if (!strncmp(line, "processor", 9)) cores++;
    }
    fclose(f);
    snprintf(buf, n, "%s, %d logical CPUs", model, cores);
}

/* CPU time of the whole process (every thread), in seconds: how busy the host was. */
static inline double bench_cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#endif
