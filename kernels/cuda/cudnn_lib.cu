/* cudnn_lib.cu: cuDNN's graph API opened at run time, and the plans its users share (see
 * cudnn_lib.cuh). Host code only. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cudnn_lib.cuh"

#ifndef LOCO_HAVE_CUDNN

#ifdef LOCO_CUDA_EMU
static const char not_compiled_in_why[] = "not on the CUDA emulator";
#else
static const char not_compiled_in_why[] = "built without cuDNN's headers";
#endif

loco_status cuda_cudnn_setup(cuda_impl *c, loco_err *err) {
    (void)err;
    if (c->cudnn_attention || c->cudnn_conv) snprintf(c->cudnn_why, sizeof c->cudnn_why, "%s", not_compiled_in_why);
    return LOCO_OK;
}
void cuda_cudnn_destroy(cuda_impl *c) { (void)c; }
size_t cuda_cudnn_version(const cuda_impl *c) {
    (void)c;
    return 0;
}
loco_status cudnn_not_compiled_in(loco_err *err) {
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN unavailable: %s", not_compiled_in_why);
}

#else

#include <dlfcn.h>

loco_status cudnn_fail(const cuda_cudnn *n, cudnnStatus_t st, const char *what, loco_status code, loco_err *err) {
    char last[256] = "";
    if (n->f.get_last_error_string) n->f.get_last_error_string(last, sizeof last);
    return loco_err_set(err, code, "%s: %s%s%.200s", what, n->f.get_error_string(st), last[0] ? ": " : "", last);
}

int64_t cudnn_workspace_max(size_t device_bytes) {
    const int64_t share = (int64_t)(device_bytes / CUDNN_WORKSPACE_SHARE);
    return share > CUDNN_WORKSPACE_FLOOR ? share : CUDNN_WORKSPACE_FLOOR;
}

loco_status cudnn_open_library(cuda_cudnn **out, char *why, size_t why_n) {
    *out = NULL;
    cuda_cudnn *n = (cuda_cudnn *)calloc(1, sizeof *n);
    if (!n) {
        snprintf(why, why_n, "out of host memory");
        return LOCO_ENOMEM;
    }
    n->workspace_max = CUDNN_WORKSPACE_FLOOR; /* until a device (or a description) says more */
    const char *path = getenv("LOCO_CUDNN_LIB");
    if (!path || !path[0]) path = "libcudnn.so.9";
    /* never unloaded: its libraries carry a static CUDA runtime, and a process that creates many
     * backends (tests) would load it again for each */
    n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!n->lib) {
        snprintf(why, why_n, "%.60s not loadable: %.110s", path, dlerror());
        free(n);
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
            dlclose(n->lib);
            free(n);
            return LOCO_EUNSUPPORTED;
        }
    *(void **)&n->f.get_last_error_string = dlsym(n->lib, "cudnnGetLastErrorString");
    n->version = n->f.get_version();
    *out = n;
    return LOCO_OK;
}

static void plan_clear(cuda_cudnn *n, cudnn_plan *p) {
    if (p->plan) n->f.destroy_descriptor(p->plan);
    if (p->cfg) n->f.destroy_descriptor(p->cfg);
    for (int i = p->ndesc - 1; i >= 0; i--) n->f.destroy_descriptor(p->desc[i]);
    memset(p, 0, sizeof *p);
}

void cudnn_close_library(cuda_cudnn *n) {
    if (!n) return;
    for (int i = 0; i < n->nplans; i++) plan_clear(n, &n->plans[i]);
    free(n->plans);
    if (n->handle) n->f.destroy(n->handle);
    dlclose(n->lib);
    free(n);
}

loco_status cuda_cudnn_setup(cuda_impl *c, loco_err *err) {
    (void)err; /* the routes' absence is said in the description, never a failed backend */
    if (!c->cudnn_attention && !c->cudnn_conv) return LOCO_OK;
    cuda_cudnn *n = NULL;
    if (cudnn_open_library(&n, c->cudnn_why, sizeof c->cudnn_why) != LOCO_OK) return LOCO_OK;
    n->workspace_max = cudnn_workspace_max(c->total_mem);
    cudnnStatus_t st;
    if (!(n->plans = (cudnn_plan *)calloc(CUDNN_PLANS, sizeof *n->plans)))
        snprintf(c->cudnn_why, sizeof c->cudnn_why, "out of host memory");
    else if ((st = n->f.create(&n->handle)) != CUDNN_STATUS_SUCCESS) {
        n->handle = NULL;
        snprintf(c->cudnn_why, sizeof c->cudnn_why, "cudnnCreate: %s", n->f.get_error_string(st));
    } else if ((st = n->f.set_stream(n->handle, c->stream)) != CUDNN_STATUS_SUCCESS)
        snprintf(c->cudnn_why, sizeof c->cudnn_why, "cudnnSetStream: %s", n->f.get_error_string(st));
    if (c->cudnn_why[0]) {
        cudnn_close_library(n);
        cudaGetLastError(); /* (our runtime's state; cuDNN's own runtime keeps its errors) */
        return LOCO_OK;
    }
    c->cudnn = n;
    return LOCO_OK;
}

void cuda_cudnn_destroy(cuda_impl *c) {
    cudnn_close_library(c->cudnn);
    c->cudnn = NULL;
}

size_t cuda_cudnn_version(const cuda_impl *c) { return c->cudnn ? c->cudnn->version : 0; }

loco_status cudnn_desc_new(cuda_cudnn *n, cudnn_plan *p, cudnnBackendDescriptorType_t type,
                           cudnnBackendDescriptor_t *out, loco_err *err) {
    *out = NULL;
    if (p->ndesc == CUDNN_PLAN_DESCS) return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN: too many descriptors");
    CUDNN_TRY(n, n->f.create_descriptor(type, out), "creating a descriptor");
    p->desc[p->ndesc++] = *out;
    return LOCO_OK;
}

loco_status cudnn_tensor(cuda_cudnn *n, cudnn_plan *p, int64_t uid, cudnnDataType_t dt, int nd, const int64_t *dims,
                         const int64_t *strides, int64_t align, bool by_value, cudnnBackendDescriptor_t *out,
                         loco_err *err) {
    cudnnBackendDescriptor_t t;
    CUDA_TRY(cudnn_desc_new(n, p, CUDNN_BACKEND_TENSOR_DESCRIPTOR, &t, err));
    CUDNN_TRY(n, n->f.set_attribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt), "tensor type");
    CUDNN_TRY(n, n->f.set_attribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, dims), "tensor dims");
    CUDNN_TRY(n, n->f.set_attribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, strides), "tensor strides");
    CUDNN_TRY(n, n->f.set_attribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid), "tensor uid");
    CUDNN_TRY(n, n->f.set_attribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align),
              "tensor alignment");
    if (by_value)
        CUDNN_TRY(n, n->f.set_attribute(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value),
                  "tensor by value");
    CUDNN_TRY(n, n->f.finalize(t), "tensor finalize");
    *out = t;
    return LOCO_OK;
}

loco_status cudnn_graph_of(cuda_cudnn *n, cudnn_plan *p, cudnnBackendDescriptor_t op, cudnnBackendDescriptor_t *out,
                           loco_err *err) {
    cudnnBackendDescriptor_t g;
    CUDA_TRY(cudnn_desc_new(n, p, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &g, err));
    if (n->handle)
        CUDNN_TRY(n, n->f.set_attribute(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &n->handle),
                  "operation graph handle");
    CUDNN_TRY(n, n->f.set_attribute(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op),
              "operation graph ops");
    CUDNN_TRY(n, n->f.finalize(g), "operation graph finalize");
    *out = g;
    return LOCO_OK;
}

/* cfg's engine, a new descriptor the caller destroys; NULL when it cannot be read. */
static cudnnBackendDescriptor_t cfg_engine(cuda_cudnn *n, cudnnBackendDescriptor_t cfg) {
    cudnnBackendDescriptor_t engine = NULL;
    int64_t one = 0;
    if (n->f.create_descriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine) != CUDNN_STATUS_SUCCESS) return NULL;
    if (n->f.get_attribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &one, &engine) ==
        CUDNN_STATUS_SUCCESS)
        return engine;
    n->f.destroy_descriptor(engine);
    return NULL;
}

/* The numerical notes of cfg's engine (*count of them), or -1 when they cannot be read. */
static int cfg_notes(cuda_cudnn *n, cudnnBackendDescriptor_t cfg,
                     cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT], int64_t *count) {
    cudnnBackendDescriptor_t engine = cfg_engine(n, cfg);
    if (!engine) return -1;
    const int ok = n->f.get_attribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                      CUDNN_NUMERICAL_NOTE_TYPE_COUNT, count, notes) == CUDNN_STATUS_SUCCESS;
    n->f.destroy_descriptor(engine);
    if (ok && *count > CUDNN_NUMERICAL_NOTE_TYPE_COUNT) *count = CUDNN_NUMERICAL_NOTE_TYPE_COUNT;
    return ok ? 0 : -1;
}

/* Whether cfg's engine has a numerical note we refuse: inputs converted down (f32 run as f16),
 * sums in less than f32 (our kernels and the CPU reference accumulate in f32), results that
 * differ run to run (a replayed graph must give the same bits), FFT (its rounding is far from a
 * direct convolution's, and its workspace large). Notes that cannot be read refuse too. As
 * PyTorch's filter with TF32 allowed: f32 data on tensor cores (TF32, note TENSOR_CORE) is kept. */
static int cfg_refused(cuda_cudnn *n, cudnnBackendDescriptor_t cfg) {
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t count = 0;
    if (cfg_notes(n, cfg, notes, &count) != 0) return 1;
    int refused = 0;
    for (int64_t i = 0; i < count; i++)
        refused |= notes[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS ||
                   notes[i] == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION ||
                   notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC || notes[i] == CUDNN_NUMERICAL_NOTE_FFT;
    return refused;
}

static int cfg_on_tensor_cores(cuda_cudnn *n, cudnnBackendDescriptor_t cfg) {
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t count = 0;
    if (cfg_notes(n, cfg, notes, &count) != 0) return 0;
    for (int64_t i = 0; i < count; i++)
        if (notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE) return 1;
    return 0;
}

/* A finalized plan of cfg and its workspace, or the failure (cuDNN's own status in *raw when
 * asked for; success when only the workspace was too large). The plan is for the handle's device,
 * or with `device` (a finalized device description) for the device it describes. */
static loco_status plan_of_cfg(cuda_cudnn *n, cudnnBackendDescriptor_t cfg, cudnnBackendDescriptor_t device,
                               cudnnBackendDescriptor_t *out, int64_t *workspace, cudnnStatus_t *raw,
                               loco_err *err) {
    cudnnBackendDescriptor_t plan = NULL;
    cudnnStatus_t st = n->f.create_descriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
    if (st == CUDNN_STATUS_SUCCESS)
        st = device ? n->f.set_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                         &device)
                    : n->f.set_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &n->handle);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg);
    if (st == CUDNN_STATUS_SUCCESS) st = n->f.finalize(plan); /* runtime-compiled engines compile here */
    int64_t one = 0;
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.get_attribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &one, workspace);
    if (raw) *raw = st;
    if (st == CUDNN_STATUS_SUCCESS && *workspace > n->workspace_max) {
        n->f.destroy_descriptor(plan);
        return loco_err_set(err, LOCO_EUNSUPPORTED, "execution plan: wants %lld MiB of workspace",
                            (long long)(*workspace >> 20));
    }
    if (st != CUDNN_STATUS_SUCCESS) {
        if (plan) n->f.destroy_descriptor(plan);
        return cudnn_fail(n, st, "execution plan", LOCO_EUNSUPPORTED, err);
    }
    *out = plan;
    return LOCO_OK;
}

/* What a status of cudnnBackendExecute means for us: a failure on the device (not the shape's
 * fault: nothing is cached, and nothing more should run), out of device memory inside cuDNN, or
 * a refusal of the shape or its pointers (LOCO_EUNSUPPORTED). cuDNN 9's codes are a category
 * (thousands) plus a detail. */
static loco_status status_code(cudnnStatus_t st) {
    switch ((int)CUDNN_STATUS_CATEGORY(st)) {
    case CUDNN_STATUS_SUCCESS: return LOCO_OK;
    case CUDNN_STATUS_BAD_PARAM:
    case CUDNN_STATUS_NOT_SUPPORTED: return LOCO_EUNSUPPORTED;
    default: return st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ? LOCO_EDEVICE_OOM : LOCO_EDEVICE;
    }
}

/* A finalized variant pack of a's pointers and workspace ws. */
static cudnnStatus_t pack_make(cuda_cudnn *n, const cudnn_args *a, void *ws, cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t pack = NULL;
    cudnnStatus_t st = n->f.create_descriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, a->n, a->uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, a->n, a->ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    if (st == CUDNN_STATUS_SUCCESS) st = n->f.finalize(pack);
    if (st != CUDNN_STATUS_SUCCESS && pack) n->f.destroy_descriptor(pack), pack = NULL;
    *out = pack;
    return st;
}

/* Runs plan `runs` times on a's tensors with one workspace and pack; with events (a pair; then
 * runs >= 2), the runs after the first are timed between them. *status: cuDNN's status of the
 * failure (CUDNN_STATUS_SUCCESS when the failure was not cuDNN's). */
static loco_status execute(cuda_impl *c, cudnnBackendDescriptor_t plan, int64_t workspace, const cudnn_args *a,
                           int runs, cudaEvent_t *events, cudnnStatus_t *status, loco_err *err) {
    cuda_cudnn *n = c->cudnn;
    *status = CUDNN_STATUS_SUCCESS;
    void *ws = NULL;
    if (workspace > 0) CUDA_TRY(cuda_alloc_get(c, (size_t)workspace, &ws, err));
    cudnnBackendDescriptor_t pack = NULL;
    cudnnStatus_t st = pack_make(n, a, ws, &pack);
    loco_status s = LOCO_OK;
    for (int r = 0; r < runs && st == CUDNN_STATUS_SUCCESS && s == LOCO_OK; r++) {
        if (events && r == 1) s = cuda_check(cudaEventRecord(events[0], c->stream), "cudaEventRecord", err);
        if (s == LOCO_OK) st = n->f.execute(n->handle, plan, pack);
    }
    if (events && s == LOCO_OK && st == CUDNN_STATUS_SUCCESS)
        s = cuda_check(cudaEventRecord(events[1], c->stream), "cudaEventRecord", err);
    if (pack) n->f.destroy_descriptor(pack);
    if (ws) cuda_alloc_put(c, ws); /* stream-ordered, as every block of the allocator */
    *status = st;
    if (st != CUDNN_STATUS_SUCCESS) return cudnn_fail(n, st, "execute", status_code(st), err);
    return s;
}

/* Milliseconds of one run of plan on the tuning arguments (a warm-up run, then the mean of
 * TIMED_RUNS); LOCO_EUNSUPPORTED when cuDNN refuses to run it, LOCO_EDEVICE_OOM when its workspace
 * does not fit, LOCO_EDEVICE when the device failed. */
#define TIMED_RUNS 3
static loco_status time_plan(cuda_impl *c, cudnnBackendDescriptor_t plan, int64_t workspace, const cudnn_args *a,
                             float *ms, loco_err *err) {
    cudaEvent_t ev[2] = {NULL, NULL};
    cudnnStatus_t st;
    loco_status s = cuda_check(cudaEventCreate(&ev[0]), "cudaEventCreate", err);
    if (s == LOCO_OK) s = cuda_check(cudaEventCreate(&ev[1]), "cudaEventCreate", err);
    if (s == LOCO_OK) {
        s = execute(c, plan, workspace, a, 1 + TIMED_RUNS, ev, &st, err);
        /* a run that failed after others were queued: the caller destroys the plan (and with it
         * the module a runtime-compiled engine's kernels live in) once this returns, so those
         * runs must be over first (a sticky device error makes this return at once) */
        if (s != LOCO_OK) (void)cudaStreamSynchronize(c->stream);
    }
    if (s == LOCO_OK) s = cuda_check(cudaEventSynchronize(ev[1]), "cuDNN tuning", err);
    if (s == LOCO_OK) s = cuda_check(cudaEventElapsedTime(ms, ev[0], ev[1]), "cudaEventElapsedTime", err);
    for (int i = 0; i < 2; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    *ms /= (float)TIMED_RUNS;
    return s;
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The configurations heuristics `mode` offers for graph, for `device` (a finalized device
 * description) or, when NULL, the handle's device: *heur and cfgs[0..*made) are created here and
 * the caller destroys them (the heuristics last, as it may hold what the configurations refer
 * to), cuDNN filled the first *got. On failure the status and *what (the step, for cudnn_fail's
 * message); a graph with no configuration at all is CUDNN_STATUS_NOT_SUPPORTED. */
#define HEUR_CFGS 32
static cudnnStatus_t heuristic_cfgs(cuda_cudnn *n, cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode,
                                    cudnnBackendDescriptor_t device, cudnnBackendDescriptor_t *heur_out,
                                    cudnnBackendDescriptor_t cfgs[HEUR_CFGS], int64_t *made, int64_t *got,
                                    const char **what) {
    cudnnBackendDescriptor_t heur = NULL;
    int64_t count = 0;
    *made = *got = 0;
    *what = "engine heuristics";
    cudnnStatus_t st = n->f.create_descriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.set_attribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (st == CUDNN_STATUS_SUCCESS && device)
        st = n->f.set_attribute(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &device);
    if (st == CUDNN_STATUS_SUCCESS) st = n->f.finalize(heur);
    if (st == CUDNN_STATUS_SUCCESS)
        st = n->f.get_attribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, NULL);
    if (st == CUDNN_STATUS_SUCCESS) {
        *what = "engine configurations";
        if (count > HEUR_CFGS) count = HEUR_CFGS;
        for (; *made < count; ++*made)
            if (n->f.create_descriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[*made]) != CUDNN_STATUS_SUCCESS) break;
        st = *made ? n->f.get_attribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, *made, got,
                                        cfgs)
                   : CUDNN_STATUS_NOT_SUPPORTED;
    }
    *heur_out = heur;
    return st;
}

/* Chooses p's plan among the configurations of heuristics `mode` for graph (the first 32, those
 * with a refused note skipped): the first whose plan finalizes, or with tune, the fastest of the
 * first CUDNN_TUNE_MAX that do, or of those built and timed in CUDNN_TUNE_SECONDS (a candidate
 * whose workspace does not fit is passed over). LOCO_EUNSUPPORTED (with the last failure) when
 * none does, LOCO_EDEVICE_OOM when the last one tried found no memory; LOCO_EDEVICE when a timed
 * run failed on the device (then nothing more is tried). */
static loco_status plan_from_heuristics(cuda_impl *c, cudnn_plan *p, cudnnBackendDescriptor_t graph,
                                        cudnnBackendHeurMode_t mode, const cudnn_args *tune, loco_err *err) {
    cuda_cudnn *n = c->cudnn;
    cudnnBackendDescriptor_t heur = NULL, cfgs[HEUR_CFGS];
    int64_t made = 0, got = 0;
    const char *what = "";
    cudnnStatus_t st = heuristic_cfgs(n, graph, mode, NULL, &heur, cfgs, &made, &got, &what);
    loco_status s = st == CUDNN_STATUS_SUCCESS ? loco_err_set(err, LOCO_EUNSUPPORTED, "no engine for the shape")
                                               : cudnn_fail(n, st, what, LOCO_EUNSUPPORTED, err);
    float best_ms = 0.0f;
    int finalized = 0;
    const double t0 = seconds_now();
    for (int64_t i = 0; st == CUDNN_STATUS_SUCCESS && i < got && finalized < (tune ? CUDNN_TUNE_MAX : 1); i++) {
        if (p->plan && seconds_now() - t0 > CUDNN_TUNE_SECONDS) break; /* enough time spent on the shape */
        if (cfg_refused(n, cfgs[i])) {
            if (!p->plan)
                s = loco_err_set(err, LOCO_EUNSUPPORTED, "every engine for the shape has a refused numerical note");
            continue;
        }
        cudnnBackendDescriptor_t plan = NULL;
        int64_t workspace = 0;
        loco_err why;
        loco_err_clear(&why);
        if (plan_of_cfg(n, cfgs[i], NULL, &plan, &workspace, NULL, &why) != LOCO_OK) {
            if (!p->plan) s = loco_err_set(err, LOCO_EUNSUPPORTED, "%s", why.msg);
            continue;
        }
        finalized++;
        float ms = 0.0f;
        /* a candidate after the first is optional: its workspace must not cost recorded graphs
         * their pools (alloc.cu's reclaimers), as gemm.cu's tuning scratch must not */
        const int optional = p->plan != NULL;
        c->reclaim_blocked += optional;
        loco_status ts = tune ? time_plan(c, plan, workspace, tune, &ms, &why) : LOCO_OK;
        c->reclaim_blocked -= optional;
        if (ts == LOCO_OK && (!p->plan || ms < best_ms)) {
            if (p->plan) n->f.destroy_descriptor(p->plan);
            if (p->cfg) n->f.destroy_descriptor(p->cfg);
            p->plan = plan, p->cfg = cfgs[i], p->workspace = workspace, best_ms = ms;
            cfgs[i] = NULL;
            s = LOCO_OK;
        } else {
            n->f.destroy_descriptor(plan);
            if (ts != LOCO_OK && ts != LOCO_EUNSUPPORTED && ts != LOCO_EDEVICE_OOM) { /* the device failed: */
                s = loco_err_set(err, ts, "%s", why.msg); /* not the shape's verdict, and nothing more runs */
                break;
            }
            /* refused, or its workspace did not fit: the next candidate may (a shape left with
             * none for want of memory reports that, which is not cached either) */
            if (ts != LOCO_OK && !p->plan) s = loco_err_set(err, ts, "%s", why.msg);
        }
    }
    for (int64_t i = 0; i < made; i++)
        if (cfgs[i]) n->f.destroy_descriptor(cfgs[i]);
    if (heur) n->f.destroy_descriptor(heur);
    return s;
}

loco_status cudnn_plan_get(cuda_impl *c, cudnn_plan_kind kind, const void *key, size_t key_n, cudnn_graph_fn build,
                           const cudnn_args *tune, cudnn_plan **out, loco_err *err) {
    cuda_cudnn *n = c->cudnn;
    *out = NULL;
    if (key_n > CUDNN_KEY_BYTES) return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN: shape key too long");
    unsigned char k[CUDNN_KEY_BYTES];
    memset(k, 0, sizeof k);
    memcpy(k, key, key_n);
    for (int i = 0; i < n->nplans; i++) {
        cudnn_plan *p = &n->plans[i];
        if (p->kind != kind || memcmp(p->key, k, sizeof k) != 0) continue;
        if (p->failed) return loco_err_set(err, LOCO_EUNSUPPORTED, "%s", p->why);
        *out = p;
        return LOCO_OK;
    }
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "no plan for the shape yet, and none is built while a graph is "
                                                   "captured");
    if (n->nplans == CUDNN_PLANS)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%d shapes have plans already", CUDNN_PLANS);
    cudnn_plan *p = &n->plans[n->nplans++];
    p->kind = kind;
    memcpy(p->key, k, sizeof k);
    loco_err why;
    loco_err_clear(&why);
    cudnnBackendDescriptor_t graph = NULL;
    loco_status s = build(n, p, key, &graph, &why);
    if (s == LOCO_OK) s = plan_from_heuristics(c, p, graph, CUDNN_HEUR_MODE_A, tune, &why);
    if (s == LOCO_EUNSUPPORTED && graph && !p->plan) { /* (not when the graph itself failed) */
        loco_err_clear(&why);
        s = plan_from_heuristics(c, p, graph, CUDNN_HEUR_MODE_FALLBACK, tune, &why);
    }
    if (s != LOCO_OK && s != LOCO_EUNSUPPORTED) {
        /* the device failed or memory ran short: not the shape's verdict, so none is cached */
        plan_clear(n, p);
        n->nplans--;
        return loco_err_set(err, s, "%s", why.msg);
    }
    if (s != LOCO_OK) {
        /* keep only the key and the reason: no retry (and no recompilation) for this shape */
        char reason[sizeof p->why];
        snprintf(reason, sizeof reason, "%.199s", why.msg);
        plan_clear(n, p);
        p->kind = kind;
        memcpy(p->key, k, sizeof k);
        p->failed = 1;
        memcpy(p->why, reason, sizeof reason);
        return loco_err_set(err, LOCO_EUNSUPPORTED, "%s", p->why);
    }
    *out = p;
    return LOCO_OK;
}

/* plan_of_cfg for the device `device` describes (no handle: the description stands in for the
 * device), the plan released again: 1 when it builds, else 0 with cuDNN's status and message.
 * *engine_index is cfg's global engine index (-1 when unreadable). */
static int plan_on_device(cuda_cudnn *n, cudnnBackendDescriptor_t cfg, cudnnBackendDescriptor_t device,
                          int64_t *engine_index, int *status, char *why, size_t why_n) {
    *engine_index = -1;
    cudnnBackendDescriptor_t engine = cfg_engine(n, cfg), plan = NULL;
    int64_t count = 0, workspace = 0;
    if (engine) {
        n->f.get_attribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count, engine_index);
        n->f.destroy_descriptor(engine);
    }
    cudnnStatus_t raw = CUDNN_STATUS_SUCCESS;
    loco_err e;
    loco_err_clear(&e);
    const int built = plan_of_cfg(n, cfg, device, &plan, &workspace, &raw, &e) == LOCO_OK;
    if (built) n->f.destroy_descriptor(plan);
    *status = (int)raw;
    if (!built) snprintf(why, why_n, "%.255s", e.msg);
    return built;
}

/* One heuristics mode's report for graph on the described device, found as plan_from_heuristics
 * finds the plans it keeps (conv) or its plan (attention): the kept configurations in order,
 * each plan built (one whose workspace is over n->workspace_max does not), until `timed` of
 * them have; none after a failure of the driver (cuDNN's execution category: the next ones would
 * meet the same driver; the stub's, without a GPU). When none builds, the first kept one's
 * engine and failure. */
static void engines_of_mode(cuda_cudnn *n, cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode,
                            cudnnBackendDescriptor_t device, int timed, loco_cudnn_engines *e) {
    memset(e, 0, sizeof *e);
    e->engine = -1;
    cudnnBackendDescriptor_t heur = NULL, cfgs[HEUR_CFGS];
    int64_t made = 0, got = 0;
    const char *what = "";
    const cudnnStatus_t st = heuristic_cfgs(n, graph, mode, device, &heur, cfgs, &made, &got, &what);
    if (st != CUDNN_STATUS_SUCCESS) {
        loco_err why;
        loco_err_clear(&why);
        cudnn_fail(n, st, what, LOCO_EUNSUPPORTED, &why);
        e->status = (int)st;
        snprintf(e->why, sizeof e->why, "%.255s", why.msg);
    }
    e->offered = (int)got;
    int tries = 0, driver_failed = 0;
    for (int64_t i = 0; i < got; i++) {
        if (cfg_refused(n, cfgs[i])) continue;
        e->kept++;
        if (e->built == timed || driver_failed) continue;
        tries++;
        int64_t index;
        int status;
        char why[sizeof e->why];
        if (plan_on_device(n, cfgs[i], device, &index, &status, why, sizeof why)) {
            if (e->built++ == 0) e->engine = index, e->status = 0, e->why[0] = 0;
            e->tensor_cores += cfg_on_tensor_cores(n, cfgs[i]);
        } else {
            driver_failed = CUDNN_STATUS_CATEGORY(status) == CUDNN_STATUS_EXECUTION_FAILED;
            if (tries == 1) { /* the first kept one's failure is the report's while none builds */
                e->engine = index, e->status = status;
                snprintf(e->why, sizeof e->why, "%s", why);
            }
        }
    }
    if (got > 0 && e->kept == 0) snprintf(e->why, sizeof e->why, "every engine offered has a refused numerical note");
    for (int64_t i = 0; i < made; i++) n->f.destroy_descriptor(cfgs[i]);
    if (heur) n->f.destroy_descriptor(heur);
}

/* The described device's memory in bytes (its JSON's "totalGlobalMem"), 0 when absent: the
 * workspace cap the route would have there. */
static size_t described_memory(const char *json) {
    const char *key = strstr(json, "\"totalGlobalMem\"");
    const char *colon = key ? strchr(key, ':') : NULL;
    return colon ? (size_t)strtoull(colon + 1, NULL, 10) : 0;
}

/* cuda_probe.h's engine check of graph on the device the JSON describes: heuristics mode A, and
 * FALLBACK's report instead when A gives no plan but FALLBACK does (cudnn_plan_get falls back
 * the same way). LOCO_OK whatever cuDNN offered (*e says it); an error only when the library
 * takes no device descriptions or not this one. */
static loco_status engines_on_device(cuda_cudnn *n, cudnnBackendDescriptor_t graph, const char *json, int timed,
                                     loco_cudnn_engines *e, loco_err *err) {
    memset(e, 0, sizeof *e);
    e->engine = -1;
    cudnnBackendDescriptor_t device = NULL;
    if (n->f.create_descriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &device) != CUDNN_STATUS_SUCCESS) {
        const size_t v = n->version;
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN unavailable: %zu.%zu.%zu takes no device descriptions",
                            v / 10000, v / 100 % 100, v % 100);
    }
    cudnnStatus_t st = n->f.set_attribute(device, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                                          (int64_t)strlen(json), json);
    if (st == CUDNN_STATUS_SUCCESS) st = n->f.finalize(device);
    if (st != CUDNN_STATUS_SUCCESS) {
        const loco_status s = cudnn_fail(n, st, "device description", LOCO_EINVAL, err);
        n->f.destroy_descriptor(device);
        return s;
    }
    n->workspace_max = cudnn_workspace_max(described_memory(json));
    engines_of_mode(n, graph, CUDNN_HEUR_MODE_A, device, timed, e);
    if (!e->built && CUDNN_STATUS_CATEGORY(e->status) != CUDNN_STATUS_EXECUTION_FAILED) {
        loco_cudnn_engines fallback;
        engines_of_mode(n, graph, CUDNN_HEUR_MODE_FALLBACK, device, timed, &fallback);
        if (fallback.built) {
            *e = fallback;
            e->fallback = 1;
        }
    }
    n->f.destroy_descriptor(device);
    return LOCO_OK;
}

loco_status cudnn_graph_check(cudnn_graph_fn build, const void *key, const char *device_json, int timed,
                              loco_cudnn_engines *engines, loco_err *err) {
    cuda_cudnn *n = NULL;
    char why[192] = "";
    if (cudnn_open_library(&n, why, sizeof why) != LOCO_OK)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN unavailable: %s", why);
    if (n->version < 90800) { /* (before 9.8 an operation graph needs a handle, which needs a device) */
        const size_t v = n->version;
        cudnn_close_library(n);
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN unavailable: %zu.%zu.%zu builds graphs only with a device",
                            v / 10000, v / 100 % 100, v % 100);
    }
    cudnn_plan p;
    memset(&p, 0, sizeof p);
    cudnnBackendDescriptor_t graph = NULL;
    loco_status s = build(n, &p, key, &graph, err);
    if (s == LOCO_OK && device_json && engines) s = engines_on_device(n, graph, device_json, timed, engines, err);
    plan_clear(n, &p);
    cudnn_close_library(n);
    return s;
}

loco_status cudnn_plan_run(cuda_impl *c, cudnn_plan *p, const cudnn_args *a, loco_err *err) {
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    const loco_status s = execute(c, p->plan, p->workspace, a, 1, NULL, &st, err);
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (s == LOCO_EUNSUPPORTED && st != CUDNN_STATUS_SUCCESS && cudaStreamIsCapturing(c->stream, &cs) == cudaSuccess &&
        cs == cudaStreamCaptureStatusNone) {
        /* a plan that finalized but refuses these pointers: later calls skip the shape (not a
         * refusal during a capture, which may be the capture's and not the shape's) */
        p->failed = 1;
        snprintf(p->why, sizeof p->why, "%.199s", err ? err->msg : "execute refused");
    }
    return s;
}

#endif /* LOCO_HAVE_CUDNN */
