/* locod_main.c: `locod --config FILE [--listen HOST:PORT] [--data-dir DIR]`, the daemon; also
 * `locod --worker ...` (the worker process the daemon starts) and `locod --hash-key` (prints
 * the SHA-256 of a key read from stdin, for the config's "keys"). */
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"

#include "auth.h"
#include "config.h"
#include "fd_limit.h"
#include "log.h"
#include "server.h"
#include "worker_proto.h"

static void usage(FILE *f) {
    fprintf(f, "usage: locod --config FILE [--listen HOST:PORT] [--data-dir DIR] [--log-level LEVEL]\n"
               "       locod --hash-key < keyfile     print the sha256 to put in the config's \"keys\"\n"
               "  --config FILE      daemon configuration (JSON; see config/README.md)\n"
               "  --listen HOST:PORT override the config's listen address (port 0: any free port)\n"
               "  --data-dir DIR     override the config's data directory (job store, artifacts)\n"
               "  --log-level L      debug | info | warn | error\n");
}

static int hash_key(void) {
    char buf[4097];
    size_t n = fread(buf, 1, sizeof buf - 1, stdin);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
    if (n == 0) {
        fprintf(stderr, "locod --hash-key: no key on stdin\n");
        return 2;
    }
    uint8_t d[32];
    char hex[65];
    locod_sha256(buf, n, d);
    locod_hex(d, 32, hex);
    printf("%s\n", hex);
    return 0;
}

/* Before anything opens descriptors or sizes itself by max_connections: the HTTP server takes
 * its connection limits from cfg as this leaves them. */
static loco_status fit_open_files(locod_config *cfg, loco_log *log, loco_err *err) {
    char note[768];
    locod_fd_outcome outcome;
    loco_status st = locod_fit_open_files(cfg, &outcome, note, sizeof note, err);
    if (st) return st;
    if (outcome == LOCOD_FD_RAISED) LOG_INFO(log, "%s", note);
    if (outcome == LOCOD_FD_LOWERED) LOG_WARN(log, "%s", note);
    return LOCO_OK;
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--worker") == 0) return locod_worker_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--hash-key") == 0) return hash_key();
    static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {"listen", required_argument, 0, 'l'},
                                         {"data-dir", required_argument, 0, 'd'},
                                         {"log-level", required_argument, 0, 'v'}, {"help", no_argument, 0, 'h'},
                                         {0}};
    const char *config = NULL, *listen = NULL, *data_dir = NULL, *level = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "c:l:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'l': listen = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'v': level = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "locod: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!config) {
        fprintf(stderr, "locod: --config FILE is required (config/locod.example.json is an example)\n");
        return 2;
    }
    locod_config cfg;
    locod_config_init(&cfg);
    loco_err err;
    loco_err_clear(&err);
    if (locod_config_load(&cfg, config, &err) || (listen && locod_config_set_listen(&cfg, listen, &err)) ||
        (data_dir && locod_config_set_data_dir(&cfg, data_dir, &err))) {
        fprintf(stderr, "locod: %s\n", err.msg);
        locod_config_free(&cfg);
        return 2;
    }
    loco_log_level lv = LOCO_LOG_INFO;
    if (loco_log_level_from_name(level ? level : cfg.log_level, &lv)) {
        fprintf(stderr, "locod: log level must be debug, info, warn or error\n");
        locod_config_free(&cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    loco_log *log = loco_log_create(stderr, lv, "locod");
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) snprintf(self, sizeof self, "%s", argv[0]);
    else self[n] = 0;
    if (cfg.n_keys == 0) {
        if (!locod_host_is_loopback(cfg.listen_host))
            LOG_WARN(log, "no API keys are configured, so locod listens on loopback (127.0.0.1) only instead of %s; "
                          "add \"keys\" to the config to serve other machines", cfg.listen_host);
        else
            LOG_WARN(log, "no API keys are configured: loopback only, every local client is admin");
    }
    if (fit_open_files(&cfg, log, &err)) {
        LOG_ERROR(log, "%s", err.msg);
        loco_log_destroy(log);
        locod_config_free(&cfg);
        return 1;
    }
    if (getenv("LOCOD_TEST_FAULTS") && strcmp(getenv("LOCOD_TEST_FAULTS"), "1") == 0)
        LOG_WARN(log, "LOCOD_TEST_FAULTS=1: test fault hooks are enabled (never in production)");
    locod_server *srv = NULL;
    if (locod_server_create(&cfg, log, self, &srv, &err)) {
        LOG_ERROR(log, "%s", err.msg);
        loco_log_destroy(log);
        locod_config_free(&cfg);
        return 1;
    }
    LOG_INFO(log, "listening on %s:%d (data in %s)", cfg.n_keys == 0 && !locod_host_is_loopback(cfg.listen_host)
                                                         ? "127.0.0.1" : cfg.listen_host,
             locod_server_port(srv), cfg.data_dir);
    if (cfg.port_file) {
        char tmp[PATH_MAX + 8];
        snprintf(tmp, sizeof tmp, "%s.tmp", cfg.port_file);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%d\n", locod_server_port(srv));
            fclose(f);
            rename(tmp, cfg.port_file);
        }
    }
    int rc = locod_server_run(srv, &err) ? 1 : 0;
    if (rc) LOG_ERROR(log, "%s", err.msg);
    locod_server_destroy(srv);
    LOG_INFO(log, "stopped");
    loco_log_destroy(log);
    locod_config_free(&cfg);
    return rc;
}
