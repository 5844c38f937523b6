/* cudnn_lib.cuh: cuDNN's graph API opened at run time, and the plan cache its users share
 * (attention_cudnn.cu: the fused SDPA; conv_cudnn.cu: convolutions). Both are experimental,
 * opt-in routes; this file knows nothing of either operation.
 *
 * The library is opened with dlopen (LOCO_CUDNN_LIB: its path when it is not on the loader's), so
 * the binary does not depend on it and its absence only leaves the routes off. A user builds an
 * operation graph for a shape (a cudnn_graph_fn), and cudnn_plan_get turns it into an execution
 * plan once per shape: heuristics mode A, then FALLBACK; configurations whose numerical notes we
 * refuse are skipped; with launch arguments to time them on, up to CUDNN_TUNE_MAX plans that
 * finalize (fewer once CUDNN_TUNE_SECONDS went by) are timed and the fastest kept (as PyTorch's
 * cudnn.benchmark); a shape with no plan is
 * remembered with cuDNN's reason. Plans are kept for the backend's life, never evicted: a
 * recorded CUDA graph replays the kernels cuDNN compiled for the plans it captured. */
#pragma once

#include "cuda_internal.h"
#include "cuda_probe.h"

/* cuDNN's headers come with the toolkit on these machines (the nvidia-cudnn wheel) but not with
 * every CUDA install: without them the routes are compiled out and say so, as on the emulator. */
#if !defined(LOCO_CUDA_EMU) && defined(__has_include)
#if __has_include(<cudnn_graph.h>)
#define LOCO_HAVE_CUDNN 1
#endif
#endif

/* Without cuDNN compiled in: LOCO_EUNSUPPORTED with "cuDNN unavailable: <why>" (the CUDA
 * emulator, or no cuDNN headers), for cuda_probe.h's checks. */
#ifndef LOCO_HAVE_CUDNN
loco_status cudnn_not_compiled_in(loco_err *err);
#endif

#ifdef LOCO_HAVE_CUDNN

#include <cudnn_graph.h>

#define CUDNN_PLANS 512       /* shapes, all users together: a UNet and its VAE have a few dozen per batch */
#define CUDNN_KEY_BYTES 128   /* a user's shape key, compared bytewise */
#define CUDNN_PLAN_DESCS 16   /* descriptors a plan is built from */
#define CUDNN_TUNE_MAX 6      /* plans timed per shape when timing is asked for ... */
#define CUDNN_TUNE_SECONDS 1.0 /* ... unless building and timing them took this long (runtime-compiled
                                * engines take a fraction of a second each to build, and a pipeline
                                * meets a few dozen conv shapes on its first call) */
/* Configurations asking for more workspace than a sixteenth of the device's memory (at least
 * 1 GiB) are skipped: enough for the TF32 engines of SD-XL's f32 VAE decoder at batch 8, which
 * ask 4-6 GiB (test_cudnn_graphs on a described H200: with a flat 1 GiB only plain-FP32 engines
 * were left there), without one shape's workspace taking what other requests need. */
#define CUDNN_WORKSPACE_FLOOR ((int64_t)1 << 30)
#define CUDNN_WORKSPACE_SHARE 16
int64_t cudnn_workspace_max(size_t device_bytes);

/* The functions we call, looked up in libcudnn.so.9. */
typedef struct cudnn_api {
    size_t (*get_version)(void);
    const char *(*get_error_string)(cudnnStatus_t);
    void (*get_last_error_string)(char *, size_t); /* optional */
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

typedef enum cudnn_plan_kind { CUDNN_PLAN_SDPA = 1, CUDNN_PLAN_CONV } cudnn_plan_kind;

typedef struct cudnn_plan {
    cudnn_plan_kind kind;
    unsigned char key[CUDNN_KEY_BYTES];
    int failed;     /* no plan for this shape (or cuDNN refused to run it): why says what cuDNN said */
    char why[200];
    cudnnBackendDescriptor_t plan, cfg;
    cudnnBackendDescriptor_t desc[CUDNN_PLAN_DESCS]; /* what the plan was built from (must outlive it) */
    int ndesc;
    int64_t workspace; /* bytes */
} cudnn_plan;

struct cuda_cudnn {
    void *lib;
    cudnn_api f;
    cudnnHandle_t handle; /* NULL when opened without a device (cudnn_open_library: graphs only) */
    size_t version;       /* e.g. 91900 for 9.19.0 */
    int64_t workspace_max; /* bytes: plans asking for more are passed over (cudnn_workspace_max) */
    cudnn_plan *plans;    /* CUDNN_PLANS entries; the first nplans are in use */
    int nplans;
};

/* A plan's launch arguments: the unique ids of its tensors and their pointers (device memory,
 * or host memory for by-value scalars). */
typedef struct cudnn_args {
    int n;
    const int64_t *uids;
    void *const *ptrs;
} cudnn_args;

/* Opens the library and looks its functions up, without a handle (no device needed): *out, or
 * LOCO_EUNSUPPORTED with why. cudnn_close_library undoes it (and destroys the handle, if any). */
loco_status cudnn_open_library(cuda_cudnn **out, char *why, size_t why_n);
void cudnn_close_library(cuda_cudnn *n);

/* "<what>: <cuDNN's name for st>: <its last message>" into err, as `code`. */
loco_status cudnn_fail(const cuda_cudnn *n, cudnnStatus_t st, const char *what, loco_status code, loco_err *err);

#define CUDNN_TRY(n, call, what)                                                                 \
    do {                                                                                         \
        cudnnStatus_t st_ = (call);                                                              \
        if (st_ != CUDNN_STATUS_SUCCESS) return cudnn_fail(n, st_, what, LOCO_EUNSUPPORTED, err); \
    } while (0)

/* A new descriptor of `type`, owned by p (destroyed with it). */
loco_status cudnn_desc_new(cuda_cudnn *n, cudnn_plan *p, cudnnBackendDescriptorType_t type,
                           cudnnBackendDescriptor_t *out, loco_err *err);
/* A finalized tensor descriptor owned by p: nd dims and strides (elements), `align` bytes of
 * alignment; by_value: a host scalar passed at launch. */
loco_status cudnn_tensor(cuda_cudnn *n, cudnn_plan *p, int64_t uid, cudnnDataType_t dt, int nd, const int64_t *dims,
                         const int64_t *strides, int64_t align, bool by_value, cudnnBackendDescriptor_t *out,
                         loco_err *err);
/* The finalized operation graph of one finalized operation, owned by p (with the handle, when
 * there is one: heuristics need it, building the graph does not). */
loco_status cudnn_graph_of(cuda_cudnn *n, cudnn_plan *p, cudnnBackendDescriptor_t op, cudnnBackendDescriptor_t *out,
                           loco_err *err);

/* Builds the operation graph for `key` into p's descriptors (*graph: the finalized graph). */
typedef loco_status (*cudnn_graph_fn)(cuda_cudnn *n, cudnn_plan *p, const void *key, cudnnBackendDescriptor_t *graph,
                                      loco_err *err);

/* The plan of `kind` for key (key_n <= CUDNN_KEY_BYTES bytes, compared bytewise: no stray
 * padding), built now by `build` unless a CUDA graph is being captured (then LOCO_EUNSUPPORTED:
 * building may allocate and synchronise). tune: launch arguments to time the candidates on (the
 * output is overwritten; NULL takes the first that finalizes). A shape with no plan fails with
 * LOCO_EUNSUPPORTED and its cached reason, now and on every later call; LOCO_EDEVICE and
 * LOCO_EDEVICE_OOM (the device failed, or memory ran short while building) are not cached: a
 * later call tries again. */
loco_status cudnn_plan_get(cuda_impl *c, cudnn_plan_kind kind, const void *key, size_t key_n, cudnn_graph_fn build,
                           const cudnn_args *tune, cudnn_plan **out, loco_err *err);
/* Builds the graph for key with the library alone (no handle, no device: cuda_probe.h's checks)
 * and, with device_json, asks for its engines and builds plans on that device as the route does,
 * up to the `timed` it keeps (the conv route times CUDNN_TUNE_MAX, the attention keeps the first),
 * into *engines; then releases it all again. */
loco_status cudnn_graph_check(cudnn_graph_fn build, const void *key, const char *device_json, int timed,
                              loco_cudnn_engines *engines, loco_err *err);

/* Runs p on c's stream with a workspace from the backend's allocator. A plan cuDNN refuses to
 * run (before anything ran) returns LOCO_EUNSUPPORTED and, outside a capture, is marked failed:
 * later calls skip it. A failure on the device is LOCO_EDEVICE (LOCO_EDEVICE_OOM for memory). */
loco_status cudnn_plan_run(cuda_impl *c, cudnn_plan *p, const cudnn_args *a, loco_err *err);

#endif /* LOCO_HAVE_CUDNN */
