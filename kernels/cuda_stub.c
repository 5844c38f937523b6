/* cuda_stub.c: the CUDA constructor when loco is built without nvcc (LOCO_CUDA=0). The rest
 * of the program is unchanged: LOCO_DEVICE_AUTO falls back to the CPU backend, and asking
 * for CUDA explicitly gets a clear error instead of a link failure. */
#include "backend_impl.h"
#include "cuda_probe.h"

loco_status loco_backend_cuda_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err) {
    (void)opts;
    if (out) *out = NULL;
    return loco_err_set(err, LOCO_EUNSUPPORTED,
                        "built without CUDA: nvcc was not found when loco was compiled (rebuild with nvcc on the "
                        "PATH, or LOCO_CUDA=1)");
}

loco_status loco_cuda_cudnn_conv_graph_check(loco_dtype dt, int64_t N, int64_t Cin, int64_t H, int64_t W,
                                             int64_t Cout, int64_t kh, int64_t kw, int stride, const int pad[4],
                                             const char *device_json, loco_cudnn_engines *engines, loco_err *err) {
    (void)dt, (void)N, (void)Cin, (void)H, (void)W, (void)Cout, (void)kh, (void)kw, (void)stride, (void)pad;
    (void)device_json, (void)engines;
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN unavailable: built without CUDA");
}

loco_status loco_cuda_cudnn_sdpa_graph_check(loco_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                                             int packed, const char *device_json, loco_cudnn_engines *engines,
                                             loco_err *err) {
    (void)dt, (void)B, (void)H, (void)Lq, (void)Lk, (void)D, (void)packed, (void)device_json, (void)engines;
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN unavailable: built without CUDA");
}
