/* fd_limit.c: see fd_limit.h. */
#include "fd_limit.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

/* The fewest connections worth starting with (the config's own lower bound). */
#define MIN_CONNECTIONS 4

uint64_t locod_fd_needed(int max_connections) {
    return (uint64_t)max_connections * LOCOD_FDS_PER_CONNECTION + LOCOD_FD_RESERVE;
}

static int connections_fitting(uint64_t limit) {
    if (limit <= LOCOD_FD_RESERVE + LOCOD_FDS_PER_CONNECTION) return 1;
    uint64_t n = (limit - LOCOD_FD_RESERVE) / LOCOD_FDS_PER_CONNECTION;
    return n > 100000 ? 100000 : (int)n;
}

locod_fd_plan locod_fd_plan_for(uint64_t soft, uint64_t hard, int max_connections) {
    locod_fd_plan p = {soft, max_connections};
    uint64_t need = locod_fd_needed(max_connections);
    if (soft >= need) return p;
    /* never lower a soft limit someone raised, only raise it, and no further than needed */
    p.soft = hard >= need ? need : hard;
    if (p.soft < soft) p.soft = soft;
    if (p.soft < need) p.max_connections = connections_fitting(p.soft);
    return p;
}

static uint64_t from_rlim(rlim_t v) { return v == RLIM_INFINITY ? UINT64_MAX : (uint64_t)v; }

/* The soft limit the process really has after trying to set `want` (a kernel may cap it below
 * the hard limit, at fs.nr_open). */
static uint64_t raise_soft(struct rlimit *rl, uint64_t want) {
    struct rlimit next = *rl;
    next.rlim_cur = (rlim_t)want;
    if (setrlimit(RLIMIT_NOFILE, &next) == 0) rl->rlim_cur = next.rlim_cur;
    return from_rlim(rl->rlim_cur);
}

loco_status locod_fit_open_files(locod_config *cfg, locod_fd_outcome *outcome, char *note, size_t note_size,
                                 loco_err *err) {
    char scratch[8];
    if (!note) {
        note = scratch;
        note_size = sizeof scratch;
    }
    note[0] = 0;
    *outcome = LOCOD_FD_ENOUGH;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return loco_err_set(err, LOCO_EIO, "cannot read the open-file limit: %s", strerror(errno));
    const uint64_t was = from_rlim(rl.rlim_cur), hard = from_rlim(rl.rlim_max);
    const int wanted = cfg->max_connections;
    locod_fd_plan plan = locod_fd_plan_for(was, hard, wanted);
    if (plan.soft == was && plan.max_connections == wanted) return LOCO_OK;
    uint64_t got = plan.soft > was ? raise_soft(&rl, plan.soft) : was;
    if (got < plan.soft) plan = locod_fd_plan_for(got, got, wanted);
    if (plan.max_connections < MIN_CONNECTIONS)
        return loco_err_set(err, LOCO_EINVAL,
                            "the open-file limit (ulimit -n) is %llu and cannot be raised (hard limit %llu): too few "
                            "for even %d connections, which need %llu; raise it (ulimit -n, LimitNOFILE= in a "
                            "systemd unit, --ulimit nofile= for docker)",
                            (unsigned long long)got, (unsigned long long)hard, MIN_CONNECTIONS,
                            (unsigned long long)locod_fd_needed(MIN_CONNECTIONS));
    if (plan.max_connections == wanted) {
        *outcome = LOCOD_FD_RAISED;
        snprintf(note, note_size, "raised the open-file limit from %llu to %llu for %d connections "
                 "(limits.max_connections)", (unsigned long long)was, (unsigned long long)got, wanted);
        return LOCO_OK;
    }
    locod_config_lower_connections(cfg, plan.max_connections);
    *outcome = LOCOD_FD_LOWERED;
    snprintf(note, note_size,
             "the open-file limit is %llu (hard limit %llu) but limits.max_connections %d needs %llu (%d per "
             "connection + %d): serving at most %d connections (event streams %d, per client address %d) instead. "
             "Raise the hard limit (ulimit -Hn, LimitNOFILE= in a systemd unit, --ulimit nofile= for docker) to "
             "%llu, or set limits.max_connections to %d to silence this",
             (unsigned long long)got, (unsigned long long)hard, wanted, (unsigned long long)locod_fd_needed(wanted),
             LOCOD_FDS_PER_CONNECTION, LOCOD_FD_RESERVE, cfg->max_connections, cfg->max_sse_streams,
             cfg->max_connections_per_ip, (unsigned long long)locod_fd_needed(wanted), cfg->max_connections);
    return LOCO_OK;
}
