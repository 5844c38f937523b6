/* cuda_probe.h: checks of the CUDA backend that need no GPU.
 *
 * cuDNN's operation graphs for the backend's cuDNN routes (kernels/cuda/conv_cudnn.cu and
 * attention_cudnn.cu, experimental) built up to their finalize, which cuDNN does without a
 * device: on machines without a GPU, tests check that cuDNN accepts every descriptor attribute
 * the routes set for the models' shapes. Engine choice, plans and execution need a GPU. Both
 * return LOCO_EUNSUPPORTED with a message starting "cuDNN unavailable" when the library cannot
 * be opened or the build has no cuDNN (no headers, the CUDA emulator, LOCO_CUDA=0). */
#ifndef LOCO_CUDA_PROBE_H
#define LOCO_CUDA_PROBE_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = conv(x, w): x [N, Cin, H, W], w [Cout, Cin, kh, kw], pad = {top, bottom, left, right}. */
loco_status loco_cuda_cudnn_conv_graph_check(loco_dtype dt, int64_t N, int64_t Cin, int64_t H, int64_t W,
                                             int64_t Cout, int64_t kh, int64_t kw, int stride, const int pad[4],
                                             loco_err *err);
/* Attention of B samples, H heads of head dim D, Lq queries over Lk keys; packed: q, k and v in
 * one row of 3 H D elements (the UNet's self-attention), else rows of H D each. */
loco_status loco_cuda_cudnn_sdpa_graph_check(loco_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                                             int packed, loco_err *err);

#ifdef __cplusplus
}
#endif

#endif
