/* gpu_test_util.h: opening the CUDA backend in a GPU test, telling "no GPU here" (a skip)
 * from "a GPU is here but the backend does not come up" (a failure). */
#ifndef LOCO_GPU_TEST_UTIL_H
#define LOCO_GPU_TEST_UTIL_H

#include <stdio.h>
#include <string.h>

#include "backend.h"

/* 1: *out is a CUDA backend computing in dt; 0: no usable GPU (why says so); -1: a failure
 * that must not pass as a skip. */
static inline int gpu_backend_open(loco_dtype dt, loco_backend **out, char *why, size_t n) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CUDA;
    o.act_dtype = dt;
    loco_err err;
    loco_err_clear(&err);
    *out = NULL;
    loco_status st = loco_backend_create(&o, out, &err);
    if (st == LOCO_OK) return 1;
    const char *m = strstr(err.msg, "no CUDA device");
    if (!m) m = strstr(err.msg, "built without CUDA");
    snprintf(why, n, "%s", m ? m : err.msg);
    return m && (st == LOCO_EDEVICE || st == LOCO_EUNSUPPORTED) ? 0 : -1;
}

/* Whether be is the CUDA backend on the tests' CPU kernel emulator (tests/emu: the emu/ items
 * of the suite), where a test of sizes only a GPU gets through in time skips itself. */
static inline int gpu_is_emulated(const loco_backend *be) {
    return strstr(loco_backend_describe(be), "CPU kernel emulator") != NULL;
}

#endif
