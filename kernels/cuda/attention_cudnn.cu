/* attention_cudnn.cu: self-attention through cuDNN's fused SDPA forward (LOCO_CUDA_FLASH=cudnn,
 * experimental; host code only, no kernels of ours).
 *
 * Why: PyTorch's SDPA runs the 4096-token self-attention of SD-XL at about 450 TFLOP/s on an
 * H200 against 296 for attention.cu's kernel (run 6), and that gap is about 20 ms of the 36 that
 * SD-XL's batch-8 target still needs. cuDNN 9.13 and later have one backend operation for the
 * whole attention (CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR), served on Hopper by runtime-
 * compiled flash kernels; cudnn-frontend (and so PyTorch's cuDNN attention) emits exactly that op
 * for a non-causal call without mask or dropout. It is tried where it can stand in for our kernel
 * and the op rows decide.
 *
 * What it takes: f16/bf16, non-causal, every sample attending to its own K/V (no kv_index remap),
 * the calls attention_short.cu does not take (text attention stays there unless
 * LOCO_CUDA_FLASH_SHORT=0), the head dims attention.cu's flash kernels have (40, 64, 80, 160: all
 * multiples of 8 up to 256, which cuDNN needs), 16-byte aligned rows. The tensors are
 * [B, H, S, D] by cuDNN's convention with strides that say our layouts: q, k, v rows of `rs`
 * elements (3 HD for packed q|k|v), out rows of HD. Anything else, or a shape cuDNN has no plan
 * for (or whose workspace does not fit), goes to attention.cu's kernels (with
 * LOCO_CUDA_CUDNN_STRICT=1, for tests, the shape's failure is the call's error instead).
 *
 * The library is opened at run time (cudnn_lib.cu); its absence (or a version before 9.13.1, or
 * the CUDA emulator) leaves the route off and says why in the backend's description. Plans are
 * built once per shape by cudnn_lib.cu's cache (cuDNN compiles them with NVRTC: a fraction of a
 * second each), the first configuration that finalizes and has no refused numerical note; a
 * call that finds no plan while a CUDA graph is being captured does not build one and runs our
 * kernel. Executing a finished plan is a launch like ours: it records into a capture and
 * replays. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cuda_probe.h"
#include "cudnn_lib.cuh"

#define CUDNN_SDPA_MIN_VERSION 91301 /* the first with a working SDPA_FWD operation (cudnn-frontend's gate) */

#ifndef LOCO_HAVE_CUDNN

int cuda_attention_cudnn_applies(const cuda_impl *c, loco_dtype dt, int64_t D, int causal, int own_kv) {
    (void)c, (void)dt, (void)D, (void)causal, (void)own_kv;
    return 0;
}
loco_status cuda_attention_cudnn(cuda_impl *c, const cuda_sdpa_call *s, loco_err *err) {
    (void)s;
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: %s", c->cudnn_why);
}
extern "C" loco_status loco_cuda_cudnn_sdpa_graph_check(loco_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
                                                        int64_t D, int packed, const char *device_json,
                                                        loco_cudnn_engines *engines, loco_err *err) {
    (void)dt, (void)B, (void)H, (void)Lq, (void)Lk, (void)D, (void)packed, (void)device_json, (void)engines;
    return cudnn_not_compiled_in(err);
}

#else

/* What a plan is for: everything its descriptors bake in. */
typedef struct sdpa_key {
    loco_dtype dt;
    int64_t B, H, Lq, Lk, D, q_rs, kv_rs, o_rs;
} sdpa_key;

enum { T_Q = 0, T_K, T_V, T_O, T_SCALE, N_TENSORS };
static const int64_t sdpa_uid[N_TENSORS] = {1, 2, 3, 4, 5};

int cuda_attention_cudnn_applies(const cuda_impl *c, loco_dtype dt, int64_t D, int causal, int own_kv) {
    return c->cudnn_attention && c->cudnn && c->cudnn->version >= CUDNN_SDPA_MIN_VERSION &&
           (dt == LOCO_F16 || dt == LOCO_BF16) && D % 8 == 0 && D >= 8 && D <= 256 && !causal && own_kv;
}

/* The SDPA operation alone in its graph (the engine for it takes nothing else), for key k. */
static loco_status sdpa_graph(cuda_cudnn *n, cudnn_plan *p, const void *key, cudnnBackendDescriptor_t *graph,
                              loco_err *err) {
    const sdpa_key *k = (const sdpa_key *)key;
    const cudnnDataType_t io = k->dt == LOCO_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    const int64_t qd[4] = {k->B, k->H, k->Lq, k->D}, kd[4] = {k->B, k->H, k->Lk, k->D};
    const int64_t qs[4] = {k->Lq * k->q_rs, k->D, k->q_rs, 1}, ks[4] = {k->Lk * k->kv_rs, k->D, k->kv_rs, 1};
    const int64_t os[4] = {k->Lq * k->o_rs, k->D, k->o_rs, 1}, one[4] = {1, 1, 1, 1};
    cudnnBackendDescriptor_t t[N_TENSORS], op;
    CUDA_TRY(cudnn_tensor(n, p, sdpa_uid[T_Q], io, 4, qd, qs, 16, false, &t[T_Q], err));
    CUDA_TRY(cudnn_tensor(n, p, sdpa_uid[T_K], io, 4, kd, ks, 16, false, &t[T_K], err));
    CUDA_TRY(cudnn_tensor(n, p, sdpa_uid[T_V], io, 4, kd, ks, 16, false, &t[T_V], err));
    CUDA_TRY(cudnn_tensor(n, p, sdpa_uid[T_O], io, 4, qd, os, 16, false, &t[T_O], err));
    CUDA_TRY(cudnn_tensor(n, p, sdpa_uid[T_SCALE], CUDNN_DATA_FLOAT, 4, one, one, 16, true, &t[T_SCALE], err));
    static const cudnnBackendAttributeName_t slot[N_TENSORS] = {
        CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC,
        CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC};
    CUDA_TRY(cudnn_desc_new(n, p, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, &op, err));
    for (int i = 0; i < N_TENSORS; i++)
        CUDNN_TRY(n, n->f.set_attribute(op, slot[i], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t[i]),
                  "SDPA operation tensors");
    CUDNN_TRY(n, n->f.finalize(op), "SDPA operation finalize");
    return cudnn_graph_of(n, p, op, graph, err);
}

loco_status cuda_attention_cudnn(cuda_impl *c, const cuda_sdpa_call *s, loco_err *err) {
    if (!c->cudnn) return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: unavailable (%s)", c->cudnn_why);
    sdpa_key k;
    memset(&k, 0, sizeof k); /* compared bytewise: no stray bytes in the padding after dt */
    k.dt = s->dt, k.B = s->B, k.H = s->H, k.Lq = s->Lq, k.Lk = s->Lk, k.D = s->D;
    k.q_rs = s->q_rs, k.kv_rs = s->kv_rs, k.o_rs = s->o_rs;
    cudnn_plan *p = NULL;
    loco_status st = cudnn_plan_get(c, CUDNN_PLAN_SDPA, &k, sizeof k, sdpa_graph, NULL, &p, err);
    if (st == LOCO_OK) {
        alignas(16) float scale = s->scale; /* the scale tensor declares 16-byte alignment */
        void *const ptr[N_TENSORS] = {(void *)s->q, (void *)s->k, (void *)s->v, s->o, &scale}; /* scale: host */
        const cudnn_args a = {N_TENSORS, sdpa_uid, ptr};
        st = cudnn_plan_run(c, p, &a, err);
    }
    if (st != LOCO_OK) {
        if (st == LOCO_EUNSUPPORTED)
            loco_err_prefix(err, "cuDNN attention (%s, B %lld, H %lld, %lld x %lld keys, D %lld)",
                            loco_dtype_name(k.dt), (long long)k.B, (long long)k.H, (long long)k.Lq, (long long)k.Lk,
                            (long long)k.D);
        else
            loco_err_prefix(err, "cuDNN attention");
        return st;
    }
    return cuda_check_launch("cuDNN SDPA", err);
}

extern "C" loco_status loco_cuda_cudnn_sdpa_graph_check(loco_dtype dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
                                                        int64_t D, int packed, const char *device_json,
                                                        loco_cudnn_engines *engines, loco_err *err) {
    sdpa_key k;
    memset(&k, 0, sizeof k);
    k.dt = dt, k.B = B, k.H = H, k.Lq = Lq, k.Lk = Lk, k.D = D;
    k.q_rs = k.kv_rs = packed ? 3 * H * D : H * D;
    k.o_rs = H * D;
    return cudnn_graph_check(sdpa_graph, &k, device_json, 1, engines, err); /* the first plan that builds */
}

#endif /* LOCO_HAVE_CUDNN */

const char *cuda_attention_cudnn_describe(const cuda_impl *c, char *buf, size_t n) {
    buf[0] = 0;
    if (!c->cudnn_attention) return buf;
    const size_t v = cuda_cudnn_version(c);
    if (c->cudnn && v >= CUDNN_SDPA_MIN_VERSION)
        snprintf(buf, n, ", attention: cuDNN %zu.%zu.%zu SDPA where it applies (experimental)", v / 10000,
                 v / 100 % 100, v % 100);
    else if (c->cudnn)
        snprintf(buf, n, ", attention: cuDNN unavailable (cuDNN %zu.%zu.%zu is older than 9.13.1: no SDPA operation)",
                 v / 10000, v / 100 % 100, v % 100);
    else
        snprintf(buf, n, ", attention: cuDNN unavailable (%.150s)", c->cudnn_why);
    return buf;
}
