/* cuda_stub.c: the CUDA constructor when loco is built without nvcc (LOCO_CUDA=0). The rest
 * of the program is unchanged: LOCO_DEVICE_AUTO falls back to the CPU backend, and asking
 * for CUDA explicitly gets a clear error instead of a link failure. */
#include "backend_impl.h"

loco_status loco_backend_cuda_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err) {
    (void)opts;
    if (out) *out = NULL;
    return loco_err_set(err, LOCO_EUNSUPPORTED,
                        "built without CUDA: nvcc was not found when loco was compiled (rebuild with nvcc on the "
                        "PATH, or LOCO_CUDA=1)");
}
