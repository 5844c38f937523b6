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
 * multiples of 8 up to 256, which cuDNN needs), 16-byte aligned rows. The tensors are [B, H, S, D] by cuDNN's convention with
 * strides that say our layouts: q, k, v rows of `rs` elements (3 HD for packed q|k|v), out rows
 * of HD. Anything else, or a shape cuDNN has no plan for, goes to attention.cu's kernels (with
 * LOCO_CUDA_CUDNN_STRICT=1, for tests, the shape's failure is the call's error instead).
 *
 * The library is opened with dlopen when the switch is set (LOCO_CUDNN_LIB: its path, when it is
 * not on the loader's), so the binary does not depend on it;
 * its absence (or a version before 9.13.1, or the CUDA emulator) leaves the route off and says
 * why in the backend's description. Plans are built once per shape (cuDNN compiles them with
 * NVRTC: a fraction of a second each) and kept for the backend's life, a failed build too; a call that finds no plan
 * while a CUDA graph is being captured does not build one (building may allocate and
 * synchronise) and runs our kernel. Executing a finished plan is a launch like ours: it records
 * into a capture and replays. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* cuDNN's headers come with the toolkit on these machines (the nvidia-cudnn wheel) but not with
 * every CUDA install: without them the route is compiled out and says so, as on the emulator. */
#if !defined(LOCO_CUDA_EMU) && defined(__has_include)
#if __has_include(<cudnn_graph.h>)
#define LOCO_HAVE_CUDNN 1
#endif
#endif

#ifndef LOCO_HAVE_CUDNN

loco_status cuda_attention_cudnn_setup(cuda_impl *c, loco_err *err) {
    (void)err;
#ifdef LOCO_CUDA_EMU
    if (c->cudnn_wanted) snprintf(c->cudnn_why, sizeof c->cudnn_why, "not on the CUDA emulator");
#else
    if (c->cudnn_wanted) snprintf(c->cudnn_why, sizeof c->cudnn_why, "built without cuDNN's headers");
#endif
    return LOCO_OK;
}
void cuda_attention_cudnn_destroy(cuda_impl *c) { (void)c; }
int cuda_attention_cudnn_applies(const cuda_impl *c, loco_dtype dt, int64_t D, int causal, int own_kv) {
    (void)c, (void)dt, (void)D, (void)causal, (void)own_kv;
    return 0;
}
loco_status cuda_attention_cudnn(cuda_impl *c, const cuda_sdpa_call *s, loco_err *err) {
    (void)s;
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: %s", c->cudnn_why);
}

#else

#include <dlfcn.h>

#include <cudnn_graph.h>

#define CUDNN_MIN_VERSION 91301 /* the first with a working SDPA_FWD operation (cudnn-frontend's gate) */
#define CUDNN_PLANS 64 /* shapes: a UNet has a handful of self-attention shapes per batch size */

/* The functions we call, looked up in libcudnn.so.9. */
typedef struct cudnn_api {
    size_t (*get_version)(void);
    const char *(*get_error_string)(cudnnStatus_t);
    void (*get_last_error_string)(char *, size_t);
    cudnnStatus_t (*create)(cudnnHandle_t *);
    cudnnStatus_t (*destroy)(cudnnHandle_t);
    cudnnStatus_t (*set_stream)(cudnnHandle_t, cudaStream_t);
    cudnnStatus_t (*create_descriptor)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t *);
    cudnnStatus_t (*destroy_descriptor)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*set_attribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                                   int64_t, const void *);
    cudnnStatus_t (*get_attribute)(cudnnBackendDescriptor_t const, cudnnBackendAttributeName_t,
                                   cudnnBackendAttributeType_t, int64_t, int64_t *, void *);
    cudnnStatus_t (*execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t);
} cudnn_api;

/* What a plan is for: everything its descriptors bake in. */
typedef struct sdpa_key {
    loco_dtype dt;
    int64_t B, H, Lq, Lk, D, q_rs, kv_rs, o_rs;
} sdpa_key;

enum { T_Q = 0, T_K, T_V, T_O, T_SCALE, N_TENSORS };
static const int64_t sdpa_uid[N_TENSORS] = {1, 2, 3, 4, 5};

typedef struct sdpa_plan {
    sdpa_key key;
    int failed;                      /* no plan for this shape: why says what cuDNN said */
    char why[200];
    cudnnBackendDescriptor_t plan;   /* and what it was built from, which must outlive it */
    cudnnBackendDescriptor_t tensors[N_TENSORS], op, graph, cfg;
    int64_t workspace;
} sdpa_plan;

struct cuda_cudnn {
    void *lib;
    cudnn_api f;
    cudnnHandle_t handle;
    size_t version;
    /* Never evicted: a recorded CUDA graph replays the kernels of the plans it captured, which
     * live in modules cuDNN compiled for them; past CUDNN_PLANS shapes run attention.cu's kernel. */
    sdpa_plan plans[CUDNN_PLANS];
    int nplans;
};

/* "<what>: <cuDNN's name for st>: <its last message>" into err, as `code`. */
static loco_status cudnn_fail(const cuda_cudnn *n, cudnnStatus_t st, const char *what, loco_status code,
                              loco_err *err) {
    char last[256] = "";
    if (n->f.get_last_error_string) n->f.get_last_error_string(last, sizeof last);
    return loco_err_set(err, code, "cuDNN attention: %s: %s%s%.200s", what, n->f.get_error_string(st),
                        last[0] ? ": " : "", last);
}

#define CD_TRY(n, call, what)                                                       \
    do {                                                                           \
        cudnnStatus_t st_ = (call);                                                \
        if (st_ != CUDNN_STATUS_SUCCESS) return cudnn_fail(n, st_, what, LOCO_EUNSUPPORTED, err); \
    } while (0)

/* LOCO_CUDNN_LIB names the library's file (PyTorch's wheels carry one outside the loader's
 * path: gpu-check finds it); otherwise the loader's search for libcudnn.so.9. */
static loco_status load_api(cuda_cudnn *n, char *why, size_t why_n) {
    const char *path = getenv("LOCO_CUDNN_LIB");
    if (!path || !path[0]) path = "libcudnn.so.9";
    /* never unloaded: its libraries carry a static CUDA runtime, and a process that creates many
     * backends (tests) would load it again for each */
    n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!n->lib) {
        snprintf(why, why_n, "%.60s not loadable: %.110s", path, dlerror());
        return LOCO_EUNSUPPORTED;
    }
    struct {
        const char *name;
        void **slot;
    } syms[] = {
        {"cudnnGetVersion", (void **)&n->f.get_version},
        {"cudnnGetErrorString", (void **)&n->f.get_error_string},
        {"cudnnCreate", (void **)&n->f.create},
        {"cudnnDestroy", (void **)&n->f.destroy},
        {"cudnnSetStream", (void **)&n->f.set_stream},
        {"cudnnBackendCreateDescriptor", (void **)&n->f.create_descriptor},
        {"cudnnBackendDestroyDescriptor", (void **)&n->f.destroy_descriptor},
        {"cudnnBackendFinalize", (void **)&n->f.finalize},
        {"cudnnBackendSetAttribute", (void **)&n->f.set_attribute},
        {"cudnnBackendGetAttribute", (void **)&n->f.get_attribute},
        {"cudnnBackendExecute", (void **)&n->f.execute},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
        if (!(*syms[i].slot = dlsym(n->lib, syms[i].name))) {
            snprintf(why, why_n, "%.100s lacks %s", path, syms[i].name);
            return LOCO_EUNSUPPORTED;
        }
    /* optional: a better message than the status name */
    *(void **)&n->f.get_last_error_string = dlsym(n->lib, "cudnnGetLastErrorString");
    n->version = n->f.get_version();
    if (n->version < CUDNN_MIN_VERSION) {
        snprintf(why, why_n, "cuDNN %zu.%zu.%zu is older than 9.13.1 (no SDPA operation)", n->version / 10000,
                 n->version / 100 % 100, n->version % 100);
        return LOCO_EUNSUPPORTED;
    }
    return LOCO_OK;
}

static void plan_clear(cuda_cudnn *n, sdpa_plan *p) {
    cudnnBackendDescriptor_t *d[] = {&p->plan, &p->cfg, &p->graph, &p->op, &p->tensors[0], &p->tensors[1],
                                     &p->tensors[2], &p->tensors[3], &p->tensors[4]};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        if (*d[i]) n->f.destroy_descriptor(*d[i]);
    memset(p, 0, sizeof *p);
}

loco_status cuda_attention_cudnn_setup(cuda_impl *c, loco_err *err) {
    (void)err; /* the route's absence is said in the description, never a failed backend */
    if (!c->cudnn_wanted) return LOCO_OK;
    cuda_cudnn *n = (cuda_cudnn *)calloc(1, sizeof *n);
    if (!n) {
        snprintf(c->cudnn_why, sizeof c->cudnn_why, "out of host memory");
        return LOCO_OK;
    }
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (load_api(n, c->cudnn_why, sizeof c->cudnn_why) == LOCO_OK) {
        if ((st = n->f.create(&n->handle)) != CUDNN_STATUS_SUCCESS)
            snprintf(c->cudnn_why, sizeof c->cudnn_why, "cudnnCreate: %s", n->f.get_error_string(st));
        else if ((st = n->f.set_stream(n->handle, c->stream)) != CUDNN_STATUS_SUCCESS)
            snprintf(c->cudnn_why, sizeof c->cudnn_why, "cudnnSetStream: %s", n->f.get_error_string(st));
    }
    if (c->cudnn_why[0]) {
        if (n->handle) n->f.destroy(n->handle);
        if (n->lib) dlclose(n->lib);
        free(n);
        cudaGetLastError(); /* (our runtime's state; cuDNN's own runtime keeps its errors) */
        return LOCO_OK;
    }
    c->cudnn = n;
    return LOCO_OK;
}

void cuda_attention_cudnn_destroy(cuda_impl *c) {
    cuda_cudnn *n = c->cudnn;
    if (!n) return;
    for (int i = 0; i < n->nplans; i++) plan_clear(n, &n->plans[i]);
    n->f.destroy(n->handle);
    dlclose(n->lib);
    free(n);
    c->cudnn = NULL;
}

int cuda_attention_cudnn_applies(const cuda_impl *c, loco_dtype dt, int64_t D, int causal, int own_kv) {
    return c->cudnn && (dt == LOCO_F16 || dt == LOCO_BF16) && D % 8 == 0 && D >= 8 && D <= 256 && !causal && own_kv;
}

/* A finalized tensor descriptor: dims [B, H, S, D] with the strides of our layout. */
static loco_status make_tensor(cuda_cudnn *n, cudnnBackendDescriptor_t *out, int64_t uid, cudnnDataType_t dt,
                               const int64_t dims[4], const int64_t strides[4], bool by_value, loco_err *err) {
    const int64_t align = 16;
    CD_TRY(n, n->f.create_descriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR, out), "tensor descriptor");
    CD_TRY(n, n->f.set_attribute(*out, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt), "tensor type");
    CD_TRY(n, n->f.set_attribute(*out, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims), "tensor dims");
    CD_TRY(n, n->f.set_attribute(*out, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides), "tensor strides");
    CD_TRY(n, n->f.set_attribute(*out, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid), "tensor uid");
    CD_TRY(n, n->f.set_attribute(*out, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align),
           "tensor alignment");
    if (by_value)
        CD_TRY(n, n->f.set_attribute(*out, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value),
               "tensor by value");
    CD_TRY(n, n->f.finalize(*out), "tensor finalize");
    return LOCO_OK;
}

/* The first engine configuration of heuristics `mode` whose plan finalizes, into p->cfg/p->plan;
 * LOCO_EUNSUPPORTED (with the last failure) when none does. */
static loco_status plan_from_heuristics(cuda_cudnn *n, sdpa_plan *p, cudnnBackendHeurMode_t mode, loco_err *err) {
    cudnnBackendDescriptor_t heur = NULL, cfgs[16];
    int64_t count = 0;
    loco_status s = LOCO_OK;
    cudnnStatus_t st = n->f.create_descriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                &p->graph);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (st == CUDNN_STATUS_SUCCESS) st = n->f.finalize(heur);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.get_attribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, NULL);
    if (st != CUDNN_STATUS_SUCCESS) {
        s = cudnn_fail(n, st, "engine heuristics", LOCO_EUNSUPPORTED, err);
        if (heur) n->f.destroy_descriptor(heur);
        return s;
    }
    if (count > 16) count = 16;
    int64_t made = 0;
    for (; made < count; made++)
        if (n->f.create_descriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[made]) != CUDNN_STATUS_SUCCESS) break;
    int64_t got = 0;
    st = made ? n->f.get_attribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, made, &got,
                                   cfgs)
              : CUDNN_STATUS_NOT_SUPPORTED;
    s = st == CUDNN_STATUS_SUCCESS ? loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: no engine for the shape")
                                   : cudnn_fail(n, st, "engine configurations", LOCO_EUNSUPPORTED, err);
    for (int64_t i = 0; st == CUDNN_STATUS_SUCCESS && i < got && !p->plan; i++) {
        cudnnBackendDescriptor_t plan = NULL;
        cudnnStatus_t ps = n->f.create_descriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
        if (ps == CUDNN_STATUS_SUCCESS)
            ps = n->f.set_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &n->handle);
        if (ps == CUDNN_STATUS_SUCCESS)
            ps = n->f.set_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                    &cfgs[i]);
        if (ps == CUDNN_STATUS_SUCCESS) ps = n->f.finalize(plan); /* NVRTC compiles the kernel here */
        int64_t one = 0;
        if (ps == CUDNN_STATUS_SUCCESS)
            ps = n->f.get_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &one,
                                    &p->workspace);
        if (ps == CUDNN_STATUS_SUCCESS) {
            p->plan = plan;
            p->cfg = cfgs[i];
            cfgs[i] = NULL;
            s = LOCO_OK;
        } else {
            s = cudnn_fail(n, ps, "execution plan", LOCO_EUNSUPPORTED, err);
            if (plan) n->f.destroy_descriptor(plan);
        }
    }
    for (int64_t i = 0; i < made; i++)
        if (cfgs[i]) n->f.destroy_descriptor(cfgs[i]);
    n->f.destroy_descriptor(heur);
    return s;
}

/* Descriptors, graph and plan for key k into p (p->why and LOCO_EUNSUPPORTED when cuDNN has none). */
static loco_status plan_build(cuda_cudnn *n, sdpa_plan *p, const sdpa_key *k, loco_err *err) {
    const cudnnDataType_t io = k->dt == LOCO_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    const int64_t qd[4] = {k->B, k->H, k->Lq, k->D}, kd[4] = {k->B, k->H, k->Lk, k->D};
    const int64_t qs[4] = {k->Lq * k->q_rs, k->D, k->q_rs, 1}, ks[4] = {k->Lk * k->kv_rs, k->D, k->kv_rs, 1};
    const int64_t os[4] = {k->Lq * k->o_rs, k->D, k->o_rs, 1}, one[4] = {1, 1, 1, 1};
    loco_status s;
    if ((s = make_tensor(n, &p->tensors[T_Q], sdpa_uid[T_Q], io, qd, qs, false, err)) ||
        (s = make_tensor(n, &p->tensors[T_K], sdpa_uid[T_K], io, kd, ks, false, err)) ||
        (s = make_tensor(n, &p->tensors[T_V], sdpa_uid[T_V], io, kd, ks, false, err)) ||
        (s = make_tensor(n, &p->tensors[T_O], sdpa_uid[T_O], io, qd, os, false, err)) ||
        (s = make_tensor(n, &p->tensors[T_SCALE], sdpa_uid[T_SCALE], CUDNN_DATA_FLOAT, one, one, true, err)))
        return s;
    static const cudnnBackendAttributeName_t slot[N_TENSORS] = {
        CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC,
        CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC};
    CD_TRY(n, n->f.create_descriptor(CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, &p->op), "SDPA operation");
    for (int i = 0; i < N_TENSORS; i++)
        CD_TRY(n, n->f.set_attribute(p->op, slot[i], CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p->tensors[i]),
               "SDPA operation tensors");
    CD_TRY(n, n->f.finalize(p->op), "SDPA operation finalize");
    /* the operation alone in its graph: the engine for it takes nothing else */
    CD_TRY(n, n->f.create_descriptor(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &p->graph), "operation graph");
    CD_TRY(n, n->f.set_attribute(p->graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &n->handle),
           "operation graph handle");
    CD_TRY(n, n->f.set_attribute(p->graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p->op),
           "operation graph ops");
    CD_TRY(n, n->f.finalize(p->graph), "operation graph finalize");
    s = plan_from_heuristics(n, p, CUDNN_HEUR_MODE_A, err);
    if (s == LOCO_EUNSUPPORTED) s = plan_from_heuristics(n, p, CUDNN_HEUR_MODE_FALLBACK, err);
    return s;
}

/* The cached plan for k, built now unless a graph is being captured (then NULL with
 * LOCO_EUNSUPPORTED); a cached failure repeats its reason. */
static loco_status plan_for(cuda_impl *c, const sdpa_key *k, sdpa_plan **out, loco_err *err) {
    cuda_cudnn *n = c->cudnn;
    *out = NULL;
    for (int i = 0; i < n->nplans; i++) {
        sdpa_plan *p = &n->plans[i];
        if (memcmp(&p->key, k, sizeof *k) != 0) continue;
        if (p->failed) return loco_err_set(err, LOCO_EUNSUPPORTED, "%s", p->why);
        *out = p;
        return LOCO_OK;
    }
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: no plan for the shape yet, and none is built "
                                                   "while a graph is captured");
    if (n->nplans == CUDNN_PLANS)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: %d shapes have plans already", CUDNN_PLANS);
    sdpa_plan *p = &n->plans[n->nplans++]; /* the first n->nplans entries are in use */
    p->key = *k;
    loco_err why;
    loco_err_clear(&why);
    if (plan_build(n, p, k, &why) != LOCO_OK) {
        /* keep only the key and the reason: no retry (and no recompilation) for this shape */
        char reason[sizeof p->why];
        snprintf(reason, sizeof reason, "%.120s (%s, B %lld, H %lld, %lld x %lld keys, D %lld)", why.msg,
                 loco_dtype_name(k->dt), (long long)k->B, (long long)k->H, (long long)k->Lq, (long long)k->Lk,
                 (long long)k->D);
        plan_clear(n, p);
        p->key = *k;
        p->failed = 1;
        memcpy(p->why, reason, sizeof reason);
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s", p->why);
    }
    *out = p;
    return LOCO_OK;
}

loco_status cuda_attention_cudnn(cuda_impl *c, const cuda_sdpa_call *s, loco_err *err) {
    cuda_cudnn *n = c->cudnn;
    if (!n) return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: unavailable (%s)", c->cudnn_why);
    sdpa_key k;
    memset(&k, 0, sizeof k); /* compared with memcmp: no stray bytes in the padding after dt */
    k.dt = s->dt, k.B = s->B, k.H = s->H, k.Lq = s->Lq, k.Lk = s->Lk, k.D = s->D;
    k.q_rs = s->q_rs, k.kv_rs = s->kv_rs, k.o_rs = s->o_rs;
    sdpa_plan *p = NULL;
    CUDA_TRY(plan_for(c, &k, &p, err));
    void *ws = NULL;
    if (p->workspace > 0) CUDA_TRY(cuda_alloc_get(c, (size_t)p->workspace, &ws, err));
    float scale = s->scale;
    void *ptr[N_TENSORS] = {(void *)s->q, (void *)s->k, (void *)s->v, s->o, &scale}; /* the scale by value, host */
    cudnnBackendDescriptor_t pack = NULL;
    cudnnStatus_t st = n->f.create_descriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, N_TENSORS, sdpa_uid);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, N_TENSORS, ptr);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    if (st == CUDNN_STATUS_SUCCESS) st = n->f.finalize(pack);
    if (st == CUDNN_STATUS_SUCCESS) st = n->f.execute(n->handle, p->plan, pack);
    if (pack) n->f.destroy_descriptor(pack);
    if (ws) cuda_alloc_put(c, ws); /* stream-ordered, as every block of the allocator */
    if (st == CUDNN_STATUS_EXECUTION_FAILED) return cudnn_fail(n, st, "execute", LOCO_EDEVICE, err);
    if (st != CUDNN_STATUS_SUCCESS) {
        /* refused before anything ran (a plan that finalized but does not take these pointers):
         * the shape is remembered as refused, and this call and later ones run our kernel */
        cudnn_fail(n, st, "execute", LOCO_EUNSUPPORTED, err);
        p->failed = 1;
        snprintf(p->why, sizeof p->why, "%.199s", err ? err->msg : "cuDNN attention: execute refused");
        return LOCO_EUNSUPPORTED;
    }
    return cuda_check_launch("cuDNN SDPA", err);
}

#endif /* LOCO_HAVE_CUDNN */

const char *cuda_attention_cudnn_describe(const cuda_impl *c, char *buf, size_t n) {
    buf[0] = 0;
    if (!c->cudnn_wanted) return buf;
#ifdef LOCO_HAVE_CUDNN
    if (c->cudnn) {
        const size_t v = c->cudnn->version;
        snprintf(buf, n, ", attention: cuDNN %zu.%zu.%zu SDPA where it applies (experimental)", v / 10000,
                 v / 100 % 100, v % 100);
        return buf;
    }
#endif
    snprintf(buf, n, ", attention: cuDNN unavailable (%.150s)", c->cudnn_why);
    return buf;
}
