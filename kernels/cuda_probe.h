/* cuda_probe.h: checks of the CUDA backend that need no GPU.
 *
 * cuDNN's operation graphs for the backend's cuDNN routes (kernels/cuda/conv_cudnn.cu and
 * attention_cudnn.cu, experimental) built up to their finalize, which cuDNN does without a
 * device: on machines without a GPU, tests check that cuDNN accepts every descriptor attribute
 * the routes set for the models' shapes. With a device description (cuDNN's JSON form of a
 * GPU's properties, cuDNN 9's CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR) they go on to what cuDNN
 * would do on that GPU: which engines its heuristics offer, which of them the routes keep (the
 * numerical-note filter of cudnn_lib.cu), and whether the first one's execution plan builds
 * (runtime-compiled engines compile then). Running a plan needs the GPU. Both return
 * LOCO_EUNSUPPORTED with a message starting "cuDNN unavailable" when the library cannot be
 * opened, the build has no cuDNN (no headers, the CUDA emulator, LOCO_CUDA=0), or a device
 * description was given and the library takes none. */
#ifndef LOCO_CUDA_PROBE_H
#define LOCO_CUDA_PROBE_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What cuDNN would run for a graph on a described device, found as the routes find their plans
 * (cudnn_lib.cu): heuristics mode A, the configurations the routes keep, in order, each plan
 * built until as many have as the route keeps (the conv route times six, the attention keeps
 * the first), FALLBACK's heuristics when A's give none. */
typedef struct loco_cudnn_engines {
    int offered;      /* configurations the heuristics gave (at most 32) */
    int kept;         /* of those, the ones the routes keep (no refused numerical note) */
    int built;        /* plans built for the described device (0: none) */
    int tensor_cores; /* of those, the ones on tensor cores (for f32 data: TF32) */
    long long engine; /* global engine index of the first plan that built, else of the first kept
                         configuration (-1: none kept) */
    int fallback;     /* 1: from FALLBACK's heuristics (mode A's gave no plan) */
    int status;       /* while none built: cuDNN's status for the first kept one's plan (or the
                         heuristics) ... */
    char why[256];    /* ... and its message ("" once one built) */
} loco_cudnn_engines;

/* y = conv(x, w): x [N, Cin, H, W], w [Cout, Cin, kh, kw], pad = {top, bottom, left, right}.
 * device_json and engines: NULL for the graph alone, else the engine check on that device. */
loco_status loco_cuda_cudnn_conv_graph_check(loco_dtype dt, int64_t N, int64_t Cin, int64_t H, int64_t W,
                                             int64_t Cout, int64_t kh, int64_t kw, int stride, const int pad[4],
                                             const char *device_json, loco_cudnn_engines *engines, loco_err *err);
/* Attention of B samples, H heads of head dim D, Lq queries over Lk keys; packed: q, k and v in
 * one row of 3 H D elements (the UNet's self-attention), else rows of H D each. */
loco_status loco_cuda_cudnn_sdpa_graph_check(loco_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                                             int packed, const char *device_json, loco_cudnn_engines *engines,
                                             loco_err *err);

#ifdef __cplusplus
}
#endif

#endif
