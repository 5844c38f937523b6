/* backend.cu: the CUDA backend's life cycle and data movement: device pick, stream, cuBLASLt
 * handle and workspace, the vtable, upload (converting on the device), download to f32, sync,
 * and the error helpers every other file uses.
 *
 * Without a driver or GPU (build machines, CI) creation fails cleanly with LOCO_EDEVICE and
 * "no CUDA device: cudaGetDeviceCount: ..."; nothing here aborts or prints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cuda_internal.h"

#define LT_WORKSPACE ((size_t)32 << 20) /* what cuBLASLt asks for on Hopper */
#define STAGE_BYTES ((size_t)16 << 20)  /* chunk of converting uploads/downloads */

/* The engine's backend struct plus this backend's state and its vtable in one allocation. */
typedef struct cuda_backend {
    loco_backend be;
    loco_backend_ops ops;
    cuda_impl impl;
} cuda_backend;

/* ---- errors ------------------------------------------------------------------------------ */

loco_status cuda_check(cudaError_t e, const char *what, loco_err *err) {
    if (e == cudaSuccess) return LOCO_OK;
    /* the failed call also left e as the thread's last error: consume it, or the next
     * cuda_check_launch would report it again and fail an unrelated kernel (e.g. the eager
     * fallback after a failed cudaGraphUpload). Sticky errors stay regardless. */
    cudaGetLastError();
    loco_status code = e == cudaErrorMemoryAllocation ? LOCO_EDEVICE_OOM : LOCO_EDEVICE;
    return loco_err_set(err, code, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

loco_status cuda_check_launch(const char *kernel, loco_err *err) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return LOCO_OK;
    return loco_err_set(err, LOCO_EDEVICE, "%s launch: %s (%s)", kernel, cudaGetErrorString(e), cudaGetErrorName(e));
}

int cuda_max_clusters_of_two(const void *kernel, unsigned threads, size_t smem) {
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = 2, attr.val.clusterDim.y = 1, attr.val.clusterDim.z = 1;
    /* in field order (grid, block, shared memory, stream, attributes): the emulator's kernel-side
     * gridDim and blockDim would hide the fields' names */
    const cudaLaunchConfig_t cfg = {dim3(2), dim3(threads), smem, 0, &attr, 1};
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the next call must not report it */
        return 0;
    }
    return clusters;
}

loco_status cuda_check_lt(cublasStatus_t s, const char *what, loco_err *err) {
    if (s == CUBLAS_STATUS_SUCCESS) return LOCO_OK;
    loco_status code = s == CUBLAS_STATUS_ALLOC_FAILED ? LOCO_EDEVICE_OOM
                       : s == CUBLAS_STATUS_NOT_SUPPORTED ? LOCO_EUNSUPPORTED
                                                          : LOCO_EDEVICE;
    return loco_err_set(err, code, "%s: %s (%s)", what, cublasLtGetStatusString(s), cublasLtGetStatusName(s));
}

loco_status cuda_enter(loco_backend *be, loco_err *err) {
    cuda_impl *c = cuda_of(be);
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur == c->device) return LOCO_OK;
    return cuda_check(cudaSetDevice(c->device), "cudaSetDevice", err);
}

/* ---- vtable hooks: memory and transfers ------------------------------------------------------ */

/* The side stream and events of LOCO_CUDA_IM2COL_OVERLAP=1 (conv.cu). */
static loco_status overlap_create(cuda_impl *c, loco_err *err) {
    loco_status st = cuda_check(cudaStreamCreateWithFlags(&c->aux, cudaStreamNonBlocking), "cudaStreamCreate(aux)", err);
    cudaEvent_t *ev[6] = {&c->ev_fork, &c->ev_join, &c->ev_col_ready[0], &c->ev_col_ready[1], &c->ev_col_free[0],
                          &c->ev_col_free[1]};
    for (int i = 0; i < 6 && st == LOCO_OK; i++)
        st = cuda_check(cudaEventCreateWithFlags(ev[i], cudaEventDisableTiming), "cudaEventCreate(im2col overlap)",
                        err);
    return st;
}

static void overlap_destroy(cuda_impl *c) {
    cudaEvent_t ev[6] = {c->ev_fork, c->ev_join, c->ev_col_ready[0], c->ev_col_ready[1], c->ev_col_free[0],
                         c->ev_col_free[1]};
    for (int i = 0; i < 6; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    if (c->aux) {
        cudaStreamSynchronize(c->aux);
        cudaStreamDestroy(c->aux);
    }
    c->aux = NULL;
}

static void cuda_destroy(loco_backend *be) {
    if (!be) return;
    cuda_backend *cb = (cuda_backend *)be;
    cuda_impl *c = &cb->impl;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    overlap_destroy(c); /* the side stream always joined the main one; it goes before any memory */
    cuda_cudnn_destroy(c);
    cuda_gemm_plans_destroy(c);
    if (c->lt) cublasLtDestroy(c->lt);
    cuda_graph_pools_destroy(c);
    cuda_alloc_destroy(&c->alloc); /* also frees the workspace, a block like any other */
    if (c->stream) cudaStreamDestroy(c->stream);
    free(cb);
}

static loco_status cuda_alloc_hook(loco_backend *be, size_t bytes, void **out, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    return cuda_alloc_get(cuda_of(be), bytes, out, err);
}

static loco_status cuda_device_memory(loco_backend *be, size_t *free_bytes, size_t *total_bytes, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    return cuda_check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo", err);
}

static void cuda_release_hook(loco_backend *be, void *p, size_t bytes) {
    (void)bytes; /* the allocator knows the block's real size */
    if (cuda_enter(be, NULL) != LOCO_OK) return;
    cuda_alloc_put(cuda_of(be), p);
}

static int is_float_transfer_dtype(loco_dtype t) {
    return t == LOCO_F32 || t == LOCO_F16 || t == LOCO_BF16 || t == LOCO_F64;
}

/* Host -> device. Equal dtypes are one copy; otherwise the raw host bytes go to a device
 * staging buffer chunk by chunk and a kernel converts them into dst, so a f32 checkpoint
 * becomes f16 weights without a host-side conversion pass. Synchronises at the end: the
 * caller may free or reuse `src` as soon as this returns. */
static loco_status cuda_upload(loco_backend *be, void *dst, loco_dtype dst_dtype, const void *src,
                               loco_dtype src_dtype, size_t n, loco_err *err) {
    cuda_impl *c = cuda_of(be);
    CUDA_TRY(cuda_enter(be, err));
    if (n == 0) return LOCO_OK;
    if (dst_dtype == src_dtype) { /* any dtype, integer tables included: bytes as they are */
        CUDA_TRY(cuda_check(cudaMemcpyAsync(dst, src, n * loco_dtype_size(src_dtype), cudaMemcpyHostToDevice,
                                            c->stream),
                            "cuda upload: cudaMemcpyAsync", err));
        return cuda_check(cudaStreamSynchronize(c->stream), "cuda upload: cudaStreamSynchronize", err);
    }
    if (!is_float_transfer_dtype(dst_dtype) || !is_float_transfer_dtype(src_dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda upload: %s -> %s is not supported (float dtypes only)",
                            cuda_dt(src_dtype), cuda_dt(dst_dtype));
    size_t ses = loco_dtype_size(src_dtype), des = loco_dtype_size(dst_dtype);
    size_t chunk = STAGE_BYTES / ses;
    if (chunk > n) chunk = n;
    void *stage = NULL;
    CUDA_TRY(cuda_alloc_get(c, chunk * ses, &stage, err));
    loco_status st = LOCO_OK;
    for (size_t off = 0; off < n && st == LOCO_OK; off += chunk) {
        size_t cnt = n - off < chunk ? n - off : chunk;
        /* the copy into `stage` is ordered after the previous chunk's conversion kernel */
        st = cuda_check(cudaMemcpyAsync(stage, (const char *)src + off * ses, cnt * ses, cudaMemcpyHostToDevice,
                                        c->stream),
                        "cuda upload: cudaMemcpyAsync", err);
        if (st == LOCO_OK)
            st = cuda_convert(c, (char *)dst + off * des, dst_dtype, stage, src_dtype, (int64_t)cnt, err);
    }
    loco_status sync = cuda_check(cudaStreamSynchronize(c->stream), "cuda upload: cudaStreamSynchronize", err);
    cuda_alloc_put(c, stage);
    return st != LOCO_OK ? st : sync;
}

/* Device -> host f32 (synchronous). Non-f32 data is converted on the device into a staging
 * buffer first, chunk by chunk. */
static loco_status cuda_download_f32(loco_backend *be, float *dst, const void *src, loco_dtype src_dtype, size_t n,
                                     loco_err *err) {
    cuda_impl *c = cuda_of(be);
    CUDA_TRY(cuda_enter(be, err));
    if (n == 0) return cuda_check(cudaStreamSynchronize(c->stream), "cuda download: cudaStreamSynchronize", err);
    if (!is_float_transfer_dtype(src_dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda download: %s is not supported (float dtypes only)",
                            cuda_dt(src_dtype));
    if (src_dtype == LOCO_F32) {
        CUDA_TRY(cuda_check(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyDeviceToHost, c->stream),
                            "cuda download: cudaMemcpyAsync", err));
        return cuda_check(cudaStreamSynchronize(c->stream), "cuda download: cudaStreamSynchronize", err);
    }
    size_t ses = loco_dtype_size(src_dtype);
    size_t chunk = STAGE_BYTES / 4;
    if (chunk > n) chunk = n;
    void *stage = NULL;
    CUDA_TRY(cuda_alloc_get(c, chunk * 4, &stage, err));
    loco_status st = LOCO_OK;
    for (size_t off = 0; off < n && st == LOCO_OK; off += chunk) {
        size_t cnt = n - off < chunk ? n - off : chunk;
        st = cuda_convert(c, stage, LOCO_F32, (const char *)src + off * ses, src_dtype, (int64_t)cnt, err);
        if (st == LOCO_OK)
            st = cuda_check(cudaMemcpyAsync(dst + off, stage, cnt * 4, cudaMemcpyDeviceToHost, c->stream),
                            "cuda download: cudaMemcpyAsync", err);
    }
    loco_status sync = cuda_check(cudaStreamSynchronize(c->stream), "cuda download: cudaStreamSynchronize", err);
    cuda_alloc_put(c, stage);
    return st != LOCO_OK ? st : sync;
}

static loco_status cuda_u8_images(loco_backend *be, uint8_t *dst, const void *src, loco_dtype src_dtype, int64_t n,
                                  int64_t c, int64_t hw, int64_t *nan_at, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    if (!is_float_transfer_dtype(src_dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda download_u8_images: %s is not supported (float dtypes only)",
                            cuda_dt(src_dtype));
    return cuda_download_u8_images(cuda_of(be), dst, src, src_dtype, n, c, hw, nan_at, err);
}

static loco_status cuda_sync(loco_backend *be, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    return cuda_check(cudaStreamSynchronize(cuda_of(be)->stream), "cudaStreamSynchronize", err);
}

/* ---- creation ----------------------------------------------------------------------------------- */

/* Graphs are on unless LOCO_CUDA_GRAPHS is "0", "off", "no" or "false" when the backend is
 * created: the switch to rule graphs out when a result looks wrong, and to time without them. */
static int graphs_wanted(void) {
    const char *v = getenv("LOCO_CUDA_GRAPHS");
    return !(v && (!strcmp(v, "0") || !strcasecmp(v, "off") || !strcasecmp(v, "no") || !strcasecmp(v, "false")));
}

static void fill_ops(loco_backend_ops *o, int graphs) {
    memset(o, 0, sizeof *o);
    o->destroy = cuda_destroy;
    o->alloc = cuda_alloc_hook;
    o->release = cuda_release_hook;
    o->upload = cuda_upload;
    o->download_f32 = cuda_download_f32;
    o->download_u8_images = cuda_u8_images;
    o->sync = cuda_sync;
    o->device_memory = cuda_device_memory;
    o->linear = cuda_op_linear;
    o->linear_accumulate = cuda_op_linear_accumulate;
    o->linear_from_channels = cuda_op_linear_from_channels;
    o->linear_many = cuda_op_linear_many;
    o->linear_to_channels = cuda_op_linear_to_channels;
    o->linear_geglu = cuda_op_linear_geglu;
    o->ln_linear = cuda_op_ln_linear;
    o->conv2d = cuda_op_conv2d;
    o->conv2d_fused = cuda_op_conv2d_fused;
    o->selftest = cuda_op_selftest;
    o->group_norm = cuda_op_group_norm;
    o->layer_norm = cuda_op_layer_norm;
    o->attention = cuda_op_attention;
    o->activation = cuda_op_activation;
    o->geglu = cuda_op_geglu;
    o->add = cuda_op_add;
    o->add_channel_bias = cuda_op_add_channel_bias;
    o->lincomb = cuda_op_lincomb;
    o->copy = cuda_op_copy;
    o->fill = cuda_op_fill;
    o->transpose12 = cuda_op_transpose12;
    o->concat = cuda_op_concat;
    o->upsample_nearest2x = cuda_op_upsample_nearest2x;
    o->embedding = cuda_op_embedding;
    o->set_channels = cuda_op_set_channels;
    if (graphs) {
        o->graph_new = cuda_graph_new;
        o->graph_free = cuda_graph_free;
        o->graph_pool_begin = cuda_graph_pool_begin;
        o->graph_pool_end = cuda_graph_pool_end;
        o->graph_pool_bytes = cuda_graph_pool_bytes;
        o->graph_capture_begin = cuda_graph_capture_begin;
        o->graph_capture_end = cuda_graph_capture_end;
        o->graph_launch = cuda_graph_launch;
    }
}

/* A short reason for the two failures users meet most, then CUDA's own words. */
static const char *count_reason(cudaError_t e) {
    switch (e) {
    case cudaErrorInsufficientDriver: return "insufficient driver";
    case cudaErrorNoDevice: return "no device";
    default: return cudaGetErrorName(e);
    }
}

/* LOCO_CUDA_GEMM_WGMMA_LOAD's and LOCO_CUDA_FLASH_LOAD's values, by cuda_ws_load. */
static const char *const ws_load_names[CUDA_WS_LOAD_COUNT] = {"cp.async", "arrive", "tma"};

static int cuda_ws_load_from_name(const char *name, cuda_ws_load *out) { /* 1: a known name */
    for (int i = 0; i < CUDA_WS_LOAD_COUNT; i++)
        if (strcmp(name, ws_load_names[i]) == 0) {
            *out = (cuda_ws_load)i;
            return 1;
        }
    return 0;
}

/* The backend description's part for one of gemm_wgmma.cu's forms (GEGLU or linear): its way of
 * loading when that is not the default, "unavailable" when set up without it, "" when not asked. */
static const char *gw_describe(int linear, int asked, int ok, cuda_ws_load load, int cluster, int clusters) {
    static const char *const text[2][CUDA_WS_LOAD_COUNT] = {
        {", geglu: wgmma (experimental)", ", geglu: wgmma (arrive, experimental)", ", geglu: wgmma (tma, experimental)"},
        {", linear: wgmma (experimental)", ", linear: wgmma (arrive, experimental)",
         ", linear: wgmma (tma, experimental)"}};
    static const char *const paired[2][2] = {
        {", geglu: wgmma (tma, clusters unavailable, experimental)", ", geglu: wgmma (tma, clusters of 2, experimental)"},
        {", linear: wgmma (tma, clusters unavailable, experimental)",
         ", linear: wgmma (tma, clusters of 2, experimental)"}};
    return !asked  ? ""
           : !ok   ? (linear ? ", linear: wgmma unavailable" : ", geglu: wgmma unavailable")
           : cluster == 2 ? paired[linear][clusters > 0]
                          : text[linear][load];
}

extern "C" loco_status loco_backend_cuda_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err) {
    if (out) *out = NULL;
    if (!opts || !out) return loco_err_set(err, LOCO_EINVAL, "cuda backend: opts and out must not be NULL");

    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return loco_err_set(err, LOCO_EDEVICE, "no CUDA device: cudaGetDeviceCount: %s (%s)", count_reason(e),
                            cudaGetErrorString(e));
    }
    if (count <= 0) return loco_err_set(err, LOCO_EDEVICE, "no CUDA device: cudaGetDeviceCount found none");
    int ordinal = opts->cuda_device;
    if (ordinal < 0 || ordinal >= count)
        return loco_err_set(err, LOCO_EINVAL, "cuda_device %d is out of range: %d CUDA device%s present", ordinal,
                            count, count == 1 ? "" : "s");
    loco_dtype act = opts->act_dtype;
    if (act != LOCO_F16 && act != LOCO_BF16 && act != LOCO_F32)
        return loco_err_set(err, LOCO_EINVAL, "cuda backend: act_dtype must be F16, BF16 or F32, not %s",
                            cuda_dt(act));

    cudaDeviceProp prop;
    CUDA_TRY(cuda_check(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties", err));
    if (prop.major < 8)
        return loco_err_set(err, LOCO_EDEVICE,
                            "CUDA device %d (%s) has compute capability %d.%d; loco needs 8.0 or newer "
                            "(bf16 and the tensor-core kernels)",
                            ordinal, prop.name, prop.major, prop.minor);
    CUDA_TRY(cuda_check(cudaSetDevice(ordinal), "cudaSetDevice", err));

    cuda_backend *cb = (cuda_backend *)calloc(1, sizeof *cb);
    if (!cb) return loco_err_set(err, LOCO_ENOMEM, "cuda backend: out of host memory");
    cuda_impl *c = &cb->impl;
    c->device = ordinal;
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    c->sm_count = prop.multiProcessorCount;
    c->total_mem = prop.totalGlobalMem;
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    const char *conv = getenv("LOCO_CUDA_CONV");
    c->conv_algo = !conv                          ? CUDA_CONV_AUTO
                   : strcmp(conv, "im2col") == 0   ? CUDA_CONV_IM2COL
                   : strcmp(conv, "implicit") == 0 ? CUDA_CONV_IMPLICIT
                   : strcmp(conv, "wgmma") == 0    ? CUDA_CONV_WGMMA
                   : strcmp(conv, "rows") == 0     ? CUDA_CONV_ROWS
                   : strcmp(conv, "tma") == 0      ? CUDA_CONV_TMA
                   : strcmp(conv, "cudnn") == 0    ? CUDA_CONV_CUDNN
                                                   : CUDA_CONV_AUTO;
    /* cuDNN for every conv that is not 1x1 (LOCO_CUDA_CONV=cudnn), or for the f32 ones alone
     * (LOCO_CUDA_CONV_F32=cudnn: SD-XL's upcast VAE decoder), whatever route the f16 ones take */
    const char *conv_f32 = getenv("LOCO_CUDA_CONV_F32");
    c->cudnn_conv = (c->conv_algo == CUDA_CONV_CUDNN ? CUDA_CUDNN_CONV_F16 | CUDA_CUDNN_CONV_F32 : 0) |
                    (conv_f32 && strcmp(conv_f32, "cudnn") == 0 ? CUDA_CUDNN_CONV_F32 : 0);
    const char *cudnn_chunk = getenv("LOCO_CUDA_CUDNN_CHUNK"); /* tests: chunks of samples on small convs */
    const long long chunk = cudnn_chunk ? atoll(cudnn_chunk) : 0;
    c->cudnn_chunk_elems = chunk > 0 && chunk < ((int64_t)1 << 31) ? (int64_t)chunk : ((int64_t)1 << 31) - 1;
    const char *conv_cluster = getenv("LOCO_CUDA_CONV_TMA_CLUSTER"); /* 2: conv_tma.cu's blocks in pairs */
    c->conv_tma_cluster = conv_cluster && strcmp(conv_cluster, "2") == 0 ? 2 : 1;
    const char *flash = getenv("LOCO_CUDA_FLASH"); /* 64|128: a block height; wgmma: the Hopper kernel */
    /* the experimental Hopper kernel, with 64 or 128 keys per K/V tile */
    c->flash_wgmma = !flash                           ? 0
                     : strcmp(flash, "wgmma") == 0    ? 64
                     : strcmp(flash, "wgmma128") == 0 ? 128
                     : strcmp(flash, "wgmma3") == 0   ? 64
                     : strcmp(flash, "wgmma_ws") == 0  ? 64
                     : strcmp(flash, "wgmma_ws3") == 0 ? 64
                     : strcmp(flash, "wgmma_ws128") == 0 ? 128
                                                      : 0;
    c->faw_warpgroups = flash && (strcmp(flash, "wgmma3") == 0 || strcmp(flash, "wgmma_ws3") == 0) ? 3 : 2;
    c->faw_ws = flash && strncmp(flash, "wgmma_ws", 8) == 0;
    const char *geglu = getenv("LOCO_CUDA_GEGLU");
    c->geglu_wgmma = geglu && strcmp(geglu, "wgmma") == 0;
    const char *linear = getenv("LOCO_CUDA_LINEAR");
    c->linear_wgmma = linear && strcmp(linear, "wgmma") == 0;
    const char *gw_blocks = getenv("LOCO_CUDA_GEMM_WGMMA_BLOCKS"); /* tests: fewer blocks than SMs, more tiles each */
    c->gemm_wgmma_blocks = gw_blocks ? atoi(gw_blocks) : 0;
    const char *gw_load = getenv("LOCO_CUDA_GEMM_WGMMA_LOAD"); /* cp.async (default), arrive, tma */
    if (!gw_load || !cuda_ws_load_from_name(gw_load, &c->gemm_wgmma_load)) c->gemm_wgmma_load = CUDA_WS_LOAD_CP_ASYNC;
    const char *ln_fold = getenv("LOCO_CUDA_LN_FOLD"); /* 1: LayerNorms folded into that form's GEMMs */
    c->ln_fold = ln_fold && strcmp(ln_fold, "1") == 0;
    const char *gw_cluster = getenv("LOCO_CUDA_GEMM_WGMMA_CLUSTER"); /* 2: the TMA form's blocks in pairs */
    c->gemm_wgmma_cluster = gw_cluster && strcmp(gw_cluster, "2") == 0 && c->gemm_wgmma_load == CUDA_WS_LOAD_TMA ? 2 : 1;
    const char *flash_load = getenv("LOCO_CUDA_FLASH_LOAD"); /* the warp-specialised attention's producer */
    if (!flash_load || !cuda_ws_load_from_name(flash_load, &c->faw_load)) c->faw_load = CUDA_WS_LOAD_CP_ASYNC;
    const char *pingpong = getenv("LOCO_CUDA_FLASH_PINGPONG");
    c->faw_pingpong = !(pingpong && pingpong[0] == '0');
    /* attention.cu's variant of the 128-row kernel: -1 by head dim, or forced (fa_variant) */
    c->flash_variant = !flash                          ? -1
                       : strcmp(flash, "classic") == 0 ? 0
                       : strcmp(flash, "stages3") == 0 ? 2
                       : strcmp(flash, "ilp3") == 0    ? 3
                       : strcmp(flash, "ilp3q") == 0   ? 7
                                                       : -1;
    c->cudnn_attention = flash && strcmp(flash, "cudnn") == 0;
    const char *cudnn_strict = getenv("LOCO_CUDA_CUDNN_STRICT");
    c->cudnn_strict = cudnn_strict && cudnn_strict[0] == '1';
    c->flash_rows = !flash                        ? 0
                    : strcmp(flash, "64") == 0  ? 64
                    : strcmp(flash, "128") == 0 ? 128
                                                : 0;
    /* 256 MiB holds a whole UNet level at batch 16 in a few chunks (SD 1.5's 64x64 level: 23.6 MB
     * per sample) and is small next to the card; VAE decoders at 1024^2 go in slices */
    const char *igemm_rows = getenv("LOCO_CUDA_IGEMM_ROWS");
    c->igemm_rows = !(igemm_rows && igemm_rows[0] == '0');
    const char *gemm_tune = getenv("LOCO_CUDA_GEMM_TUNE");
    c->gemm_tune = gemm_tune && gemm_tune[0] == '1';
    const char *flash_short = getenv("LOCO_CUDA_FLASH_SHORT");
    c->flash_short = !(flash_short && flash_short[0] == '0');
    const char *short_rows = getenv("LOCO_CUDA_FLASH_SHORT_ROWS");
    c->short_rows = short_rows ? atoi(short_rows) : 0;
    const char *norm_gather = getenv("LOCO_CUDA_NORM_GATHER");
    c->norm_gather = !(norm_gather && norm_gather[0] == '0');
    const char *im2col_kb = getenv("LOCO_CUDA_IM2COL_KB");
    const long kb = im2col_kb ? atol(im2col_kb) : 0;
    c->im2col_budget = kb > 0 ? (size_t)kb << 10 : (size_t)256 << 20;
    const int graphs = graphs_wanted();
    fill_ops(&cb->ops, graphs);
    cb->be.ops = &cb->ops;
    cb->be.device = LOCO_DEVICE_CUDA;
    cb->be.act_dtype = act;
    /* every op has f32, f16 and bf16 kernels: a model may run in another dtype than the
     * activations' default (an SD-XL VAE in f32 on an f16 backend) */
    cb->be.op_dtypes = (1u << LOCO_F32) | (1u << LOCO_F16) | (1u << LOCO_BF16);
    cb->be.impl = c;
    c->owner = &cb->be;

    loco_status st = cuda_alloc_init(&c->alloc, err);
    if (st == LOCO_OK)
        st = cuda_check(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags",
                        err);
    if (st == LOCO_OK) st = cuda_check_lt(cublasLtCreate(&c->lt), "cublasLtCreate", err);
    if (st == LOCO_OK) {
        c->plans = (cuda_gemm_plan *)calloc(CUDA_GEMM_PLANS, sizeof *c->plans);
        if (!c->plans) st = loco_err_set(err, LOCO_ENOMEM, "cuda backend: out of host memory");
    }
    if (st == LOCO_OK) {
        c->lt_ws_size = LT_WORKSPACE;
        st = cuda_alloc_get(c, c->lt_ws_size, &c->lt_ws, err);
    }
    const char *overlap = getenv("LOCO_CUDA_IM2COL_OVERLAP");
    if (st == LOCO_OK && overlap && overlap[0] == '1') st = overlap_create(c, err);
    if (st == LOCO_OK) st = cuda_attention_setup(c, err);
    if (st == LOCO_OK) st = cuda_attention_short_setup(c, err);
    if (st == LOCO_OK) st = cuda_cudnn_setup(c, err);
    if (st == LOCO_OK) st = cuda_conv_igemm_tf32_setup(c, err);
    if (st == LOCO_OK) st = cuda_conv_igemm_setup(c, err);
    if (st == LOCO_OK) st = cuda_conv_wgmma_setup(c, err);
    if (st == LOCO_OK) st = cuda_flash_wgmma_setup(c, err);
    if (st == LOCO_OK) st = cuda_gemm_wgmma_setup(c, err);
    if (st == LOCO_OK) st = cuda_conv_tma_setup(c, err);
    if (st != LOCO_OK) {
        loco_err_prefix(err, "creating the CUDA backend on device %d (%s)", ordinal, prop.name);
        cuda_destroy(&cb->be);
        return st;
    }
    char cudnn_desc[256], conv_cudnn_desc[256];
    snprintf(cb->be.desc, sizeof cb->be.desc, "cuda:%d %.100s (sm_%d%d, %d SMs, %.1f GiB, %s activations%s%s%s%s%s%s%s%s%s%s%s%s%s)",
             ordinal, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), cuda_dt(act),
             c->conv_algo == CUDA_CONV_IM2COL     ? ", conv: im2col"
             : c->conv_algo == CUDA_CONV_IMPLICIT ? ", conv: implicit GEMM"
             : c->conv_algo == CUDA_CONV_WGMMA    ? (c->wgmma_ok ? ", conv: wgmma (experimental)"
                                                                 : ", conv: wgmma unavailable, auto")
             : c->conv_algo == CUDA_CONV_ROWS     ? ", conv: row taps"
             : c->conv_algo == CUDA_CONV_TMA      ? (!c->conv_tma_ok                ? ", conv: tma unavailable, auto"
                                                     : c->conv_tma_cluster != 2      ? ", conv: tma (experimental)"
                                                     : c->conv_tma_clusters > 0      ? ", conv: tma, clusters of 2 (experimental)"
                                                                                     : ", conv: tma, clusters unavailable (experimental)")
                                                  : "",
             c->flash_wgmma == 128 && c->faw_ws
                 ? (!c->faw_ok       ? ", flash: wgmma unavailable"
                    : c->faw_pingpong ? ", flash: wgmma, producer warp, 128-key tiles (experimental)"
                                      : ", flash: wgmma, producer warp, 128-key tiles, no ping-pong (experimental)")
             : c->flash_wgmma == 128  ? (c->faw_ok ? ", flash: wgmma, 128-key tiles (experimental)"
                                                 : ", flash: wgmma unavailable")
             : c->flash_wgmma && c->faw_ws
                 ? (!c->faw_ok                   ? ", flash: wgmma unavailable"
                    : c->faw_warpgroups == 3 && c->faw_pingpong ? ", flash: wgmma, producer warp, 3 warpgroups (experimental)"
                    : c->faw_warpgroups == 3     ? ", flash: wgmma, producer warp, 3 warpgroups, no ping-pong (experimental)"
                    : c->faw_pingpong            ? ", flash: wgmma, producer warp (experimental)"
                                                 : ", flash: wgmma, producer warp, no ping-pong (experimental)")
             : c->flash_wgmma && c->faw_warpgroups == 3
                 ? (c->faw_ok ? ", flash: wgmma, 3 warpgroups (experimental)" : ", flash: wgmma unavailable")
             : c->flash_wgmma       ? (c->faw_ok ? ", flash: wgmma (experimental)" : ", flash: wgmma unavailable")
             : c->flash_variant == 0 ? ", flash: classic"
             : c->flash_variant == 2 ? ", flash: stages3"
             : c->flash_variant == 3 ? ", flash: ilp3"
             : c->flash_variant == 7 ? ", flash: ilp3q"
             : c->flash_rows == 64  ? ", flash: 64 rows"
             : c->flash_rows == 128 ? ", flash: 128 rows"
                                    : "",
             !(c->flash_wgmma && c->faw_ws && c->faw_ok) ? ""
             : c->faw_load == CUDA_WS_LOAD_ARRIVE      ? ", producer arrives by cp.async"
             : c->faw_load == CUDA_WS_LOAD_TMA         ? (c->tensor_map_encode ? ", producer loads by TMA at head dim 64"
                                                                               : ", TMA unavailable")
                                                       : "",
             gw_describe(0, c->geglu_wgmma, c->geglu_wgmma_ok, c->gemm_wgmma_load, c->gemm_wgmma_cluster,
                         c->gemm_wgmma_clusters[0]),
             gw_describe(1, c->linear_wgmma, c->linear_wgmma_ok, c->gemm_wgmma_load, c->gemm_wgmma_cluster,
                         c->gemm_wgmma_clusters[1]),
             !c->ln_fold ? ""
             : (c->geglu_wgmma_ok || c->linear_wgmma_ok) && c->gemm_wgmma_load == CUDA_WS_LOAD_TMA
                 ? ", LayerNorm folded (experimental)"
                 : ", LayerNorm fold unavailable",
             c->aux ? ", im2col overlapped" : "", c->norm_gather ? "" : ", GroupNorm gather off",
             c->flash_short ? "" : ", short-key attention off",
             c->gemm_tune ? ", GEMMs tuned" : "",
             cuda_attention_cudnn_describe(c, cudnn_desc, sizeof cudnn_desc),
             cuda_conv_cudnn_describe(c, conv_cudnn_desc, sizeof conv_cudnn_desc), graphs ? "" : ", graphs off");
    *out = &cb->be;
    return LOCO_OK;
}
