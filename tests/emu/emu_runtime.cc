/* emu_runtime.cc: the CUDA runtime calls of loco's CUDA backend, on the CPU (cuda_emu.h).
 *
 * One device, a compute capability 9.0 (Hopper, so the wgmma kernels run: emu_wgmma.cc) with 108
 * SMs and EMU_MEM_BYTES of memory (host memory; allocations past
 * that fail as cudaMalloc does, so out-of-memory paths run too). Streams run their work at
 * once, in the order it is issued, which is an order a GPU may also choose; events record the
 * wall clock. Launches are checked as the driver checks them (block size, grid limits, dynamic
 * shared memory against cudaFuncSetAttribute), the error left for cudaGetLastError. Stream
 * capture records kernels, copies and fills (and, through events, the work of streams that join
 * the capture) into a graph that cudaGraphLaunch replays; a synchronising call on a capturing
 * stream fails and invalidates the capture, as in CUDA. */
#include "emu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <map>
#include <unordered_map>

/* cuda_emu.h's kernel-side names; here they would hide cudaLaunchConfig_t's fields */
#undef blockDim
#undef gridDim

#define EMU_MEM_BYTES ((size_t)2 << 30)
#define EMU_DEFAULT_SMEM (48 * 1024)
#define EMU_SMEM_PER_SM 233472 /* an H100's / H200's 228 KB, as the emulated compute capability 9.0 (a block of
                               * the 227 KB opt-in fits one per SM) */

struct CUstream_st;
struct CUevent_st;

/* A graph, and while it is being captured, everything that records into it. */
struct CUgraph_st {
    std::vector<std::function<void()>> ops;
    bool invalidated = false;
    std::vector<CUstream_st *> streams; /* the origin first, then those that joined */
    std::vector<CUevent_st *> events;   /* recorded during the capture */
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> ops;
};
struct CUstream_st {
    CUgraph_st *capture = nullptr; /* the graph this stream records into, or none */
};
struct CUevent_st {
    double ms = 0.0;
    CUgraph_st *capture = nullptr; /* recorded into a capture: a stream waiting on it joins */
};

namespace {

/* The emulated device's state, per OS thread like a CUDA context's current-thread error. */
struct device_state {
    std::unordered_map<void *, size_t> allocs;
    size_t used = 0;
    std::map<const void *, int> max_dyn_smem; /* cudaFuncSetAttribute */
    cudaError_t last = cudaSuccess;
    std::vector<CUgraph_st *> captures; /* begun by this thread, not ended (capture mode ThreadLocal) */
};

device_state &dev() {
    static thread_local device_state d;
    return d;
}

double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

cudaError_t fail(cudaError_t e) {
    dev().last = e;
    return e;
}

/* Runs op now, or records it when the stream is capturing. */
cudaError_t on_stream(cudaStream_t s, std::function<void()> op) {
    if (s && s->capture) {
        s->capture->ops.push_back(std::move(op));
        return cudaSuccess;
    }
    op();
    return cudaSuccess;
}

/* A synchronising call on a capturing stream: refused, and the capture is over. */
bool refuse_in_capture(cudaStream_t s) {
    if (!s || !s->capture) return false;
    s->capture->invalidated = true;
    return true;
}

/* A call that is illegal while this thread captures (ThreadLocal mode: cudaMalloc, cudaFree,
 * a device-wide or synchronous call): it fails and invalidates this thread's captures. */
bool refuse_while_capturing(void) {
    device_state &d = dev();
    if (d.captures.empty()) return false;
    for (CUgraph_st *g : d.captures) g->invalidated = true;
    return true;
}

} /* namespace */

namespace emu {

cudaError_t enqueue(cudaStream_t stream, std::function<void()> op) { return on_stream(stream, std::move(op)); }

cudaError_t launch_kernel(dim3 grid, dim3 block, size_t dyn_smem, const void *kernel, void *stream, unsigned cluster,
                          std::function<void()> body) {
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
        return fail(cudaErrorInvalidConfiguration);
    /* clusters: at most 8 blocks (the portable size; more needs an opt-in loco never asks for),
     * and the grid a whole number of them */
    if (cluster == 0 || cluster > 8 || grid.x % cluster != 0) return fail(cudaErrorInvalidClusterSize);
    size_t limit = EMU_DEFAULT_SMEM;
    auto it = dev().max_dyn_smem.find(kernel);
    if (it != dev().max_dyn_smem.end()) limit = (size_t)it->second;
    if (dyn_smem > limit) return fail(cudaErrorInvalidValue);
    on_stream((cudaStream_t)stream,
              [grid, block, cluster, dyn_smem, body]() { run_grid(grid, block, cluster, dyn_smem, body); });
    return cudaSuccess;
}

} /* namespace emu */

/* ---- device and errors -------------------------------------------------------------------------- */

extern "C" {

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int device) {
    if (device != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "loco CPU kernel emulator");
    p->major = 9; /* a Hopper: the wgmma kernels run too (emu_wgmma.cc) */
    p->minor = 0;
    p->multiProcessorCount = 108;
    p->totalGlobalMem = EMU_MEM_BYTES;
    p->sharedMemPerBlock = EMU_DEFAULT_SMEM;
    p->sharedMemPerBlockOptin = EMU_SMEM_OPTIN;
    p->sharedMemPerMultiprocessor = EMU_SMEM_PER_SM;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsPerMultiProcessor = 2048;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->l2CacheSize = 40 << 20;
    p->memoryBusWidth = 5120;
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = dev().last;
    dev().last = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return dev().last; }

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorInvalidClusterSize: return "cudaErrorInvalidClusterSize";
    default: return "cudaErrorUnknown";
    }
}
const char *cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > EMU_SMEM_OPTIN) return fail(cudaErrorInvalidValue);
        dev().max_dyn_smem[func] = value;
    }
    return cudaSuccess;
}

/* Blocks per SM as the threads and shared memory allow (the emulator has no register counts):
 * the emulated SM's 2048 threads, 32 blocks and sharedMemPerMultiprocessor, with the 1 KB the
 * hardware reserves per block. */
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, const void *func, int block_size,
                                                         size_t dyn_smem) {
    device_state &d = dev();
    auto it = d.max_dyn_smem.find(func);
    const size_t allowed = it != d.max_dyn_smem.end() ? (size_t)it->second : EMU_DEFAULT_SMEM;
    if (!blocks || block_size <= 0 || block_size > 1024) return fail(cudaErrorInvalidValue);
    if (dyn_smem > allowed) {
        *blocks = 0;
        return cudaSuccess;
    }
    const int warps = (block_size + 31) / 32;
    int n = 64 / warps;
    if (n > 32) n = 32;
    const size_t per_block = dyn_smem + 1024;
    if ((size_t)n * per_block > EMU_SMEM_PER_SM) n = (int)(EMU_SMEM_PER_SM / per_block);
    *blocks = n;
    return cudaSuccess;
}

/* Clusters that can run at once: one block per SM of what cudaOccupancyMaxActiveBlocksPerMultiprocessor
 * allows, the SMs paired off (a GPU's count is lower where its GPCs' SM counts do not divide). */
cudaError_t cudaOccupancyMaxActiveClusters(int *clusters, const void *func, const cudaLaunchConfig_t *config) {
    if (!clusters || !config) return fail(cudaErrorInvalidValue);
    unsigned size = 1;
    for (unsigned i = 0; i < config->numAttrs; i++)
        if (config->attrs[i].id == cudaLaunchAttributeClusterDimension)
            size = config->attrs[i].val.clusterDim.x * config->attrs[i].val.clusterDim.y * config->attrs[i].val.clusterDim.z;
    if (size == 0 || size > 8) return fail(cudaErrorInvalidClusterSize);
    int per_sm = 0;
    const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, func, (int)(config->blockDim.x * config->blockDim.y * config->blockDim.z), config->dynamicSmemBytes);
    if (e != cudaSuccess) return e;
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    *clusters = per_sm * p.multiProcessorCount / (int)size;
    return cudaSuccess;
}

/* ---- memory ------------------------------------------------------------------------------------- */

cudaError_t cudaMalloc(void **p, size_t size) {
    device_state &d = dev();
    *p = nullptr;
    if (refuse_while_capturing()) return fail(cudaErrorStreamCaptureUnsupported);
    if (size > EMU_MEM_BYTES - d.used) return fail(cudaErrorMemoryAllocation);
    void *m = nullptr;
    if (posix_memalign(&m, 256, size ? size : 1) != 0) return fail(cudaErrorMemoryAllocation);
    d.allocs[m] = size;
    d.used += size;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (refuse_while_capturing()) return fail(cudaErrorStreamCaptureUnsupported);
    if (!p) return cudaSuccess;
    device_state &d = dev();
    auto it = d.allocs.find(p);
    if (it == d.allocs.end()) return fail(cudaErrorInvalidValue);
    d.used -= it->second;
    d.allocs.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    *free_bytes = EMU_MEM_BYTES - dev().used;
    *total = EMU_MEM_BYTES;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind) {
    (void)kind;
    if (refuse_while_capturing()) return fail(cudaErrorStreamCaptureUnsupported);
    if (count) memcpy(dst, src, count);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind, cudaStream_t s) {
    /* host memory in a capture is read when the graph runs, as CUDA does */
    if (s && s->capture && (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToDevice)) {
        s->capture->invalidated = true; /* CUDA refuses pageable host copies in a capture */
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return on_stream(s, [dst, src, count]() {
        if (count) memcpy(dst, src, count);
    });
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              enum cudaMemcpyKind kind, cudaStream_t s) {
    if (width > dpitch || width > spitch) return fail(cudaErrorInvalidPitchValue);
    if (s && s->capture && kind != cudaMemcpyDeviceToDevice) {
        s->capture->invalidated = true;
        return fail(cudaErrorStreamCaptureUnsupported);
    }
    return on_stream(s, [=]() {
        for (size_t r = 0; r < height; r++) memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    });
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t count, cudaStream_t s) {
    return on_stream(s, [p, value, count]() { memset(p, value, count); });
}

cudaError_t cudaMemcpyFromSymbol(void *dst, const void *symbol, size_t count, size_t offset,
                                 enum cudaMemcpyKind kind) {
    (void)kind;
    memcpy(dst, (const char *)symbol + offset, count);
    return cudaSuccess;
}

/* ---- streams and events ------------------------------------------------------------------------- */

cudaError_t cudaStreamCreate(cudaStream_t *s) {
    *s = new CUstream_st();
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    (void)flags;
    return cudaStreamCreate(s);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (s && s->capture) return fail(cudaErrorIllegalState);
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (refuse_in_capture(s)) return fail(cudaErrorStreamCaptureUnsupported);
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    return refuse_while_capturing() ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new CUevent_st();
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    (void)flags;
    return cudaEventCreate(e);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (e && e->capture) { /* still listed by a capture in progress */
        std::vector<CUevent_st *> &ev = e->capture->events;
        ev.erase(std::remove(ev.begin(), ev.end(), e), ev.end());
    }
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    e->capture = s ? s->capture : nullptr;
    if (e->capture)
        e->capture->events.push_back(e);
    else
        e->ms = now_ms();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    return e->capture ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)(b->ms - a->ms);
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
    (void)flags;
    if (s && e->capture && !s->capture) { /* s joins the capture (a fork) */
        s->capture = e->capture;
        e->capture->streams.push_back(s);
    }
    return cudaSuccess;
}

/* ---- capture and graphs ------------------------------------------------------------------------- */

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    (void)mode;
    if (!s) return fail(cudaErrorStreamCaptureUnsupported); /* the legacy default stream cannot */
    if (s->capture) return fail(cudaErrorIllegalState);
    CUgraph_st *g = new CUgraph_st();
    g->streams.push_back(s);
    s->capture = g;
    dev().captures.push_back(g);
    return cudaSuccess;
}

/* Ends the capture on every stream that recorded into it (the origin and the streams that
 * joined through events; CUDA requires those to have rejoined the origin by now), and forgets
 * the events recorded in it. */
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    *graph = nullptr;
    if (!s || !s->capture || s->capture->streams.empty() || s->capture->streams[0] != s)
        return fail(cudaErrorIllegalState);
    CUgraph_st *g = s->capture;
    for (CUstream_st *t : g->streams) t->capture = nullptr;
    for (CUevent_st *e : g->events)
        if (e->capture == g) e->capture = nullptr;
    g->streams.clear();
    g->events.clear();
    std::vector<CUgraph_st *> &mine = dev().captures;
    mine.erase(std::remove(mine.begin(), mine.end(), g), mine.end());
    if (g->invalidated) {
        delete g;
        return fail(cudaErrorStreamCaptureInvalidated);
    }
    *graph = g;
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status) {
    *status = !s || !s->capture          ? cudaStreamCaptureStatusNone
              : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                        : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    (void)flags;
    *exec = new CUgraphExec_st();
    (*exec)->ops = graph->ops;
    return cudaSuccess;
}

cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph, cudaGraphExecUpdateResultInfo *info) {
    if (info) memset(info, 0, sizeof *info);
    if (exec->ops.size() != graph->ops.size()) { /* CUDA refuses a different topology */
        if (info) info->result = cudaGraphExecUpdateErrorTopologyChanged;
        return fail(cudaErrorGraphExecUpdateFailure);
    }
    exec->ops = graph->ops;
    if (info) info->result = cudaGraphExecUpdateSuccess;
    return cudaSuccess;
}

cudaError_t cudaGraphUpload(cudaGraphExec_t exec, cudaStream_t s) {
    (void)exec, (void)s;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    CUgraphExec_st *x = exec;
    return on_stream(s, [x]() {
        for (const std::function<void()> &op : x->ops) op();
    });
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) {
    delete x;
    return cudaSuccess;
}

} /* extern "C" */
