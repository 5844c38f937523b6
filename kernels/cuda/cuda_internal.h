/* cuda_internal.h: what the .cu files of kernels/cuda/ share and nothing else includes: the
 * backend's state (one struct per backend, no globals), error helpers that turn CUDA and
 * cuBLASLt failures into loco_err messages naming the call, the caching allocator, the
 * cuBLASLt GEMM wrapper, and the entry points each .cu file implements for the vtable.
 *
 * Everything runs on the backend's one stream, so a whole model call can later be captured
 * into a CUDA graph; scratch buffers go back to the allocator right after the launches that
 * use them are enqueued, which is safe because the next user is ordered on the same stream. */
#ifndef LOCO_CUDA_INTERNAL_H
#define LOCO_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "backend_impl.h" /* C linkage for the vtable and constructors */

/* ---- caching allocator (alloc.cu) -------------------------------------------------------- */

typedef struct cuda_block {
    void *ptr;
    size_t size;
} cuda_block;

/* Freed blocks are kept in `free_blocks` and reused (best fit, bounded slack) instead of going
 * back to cudaFree, which synchronises the device. Live blocks sit in an open-addressing hash
 * table (pointer -> size) because release() gets the caller's size, not the block's. */
typedef struct cuda_allocator {
    cuda_block *free_blocks;
    size_t nfree, capfree;
    uintptr_t *keys; /* 0 = empty, 1 = deleted */
    size_t *sizes;
    size_t hcap, hused, hlive;
    size_t reserved; /* bytes held from cudaMalloc: live + cached */
    size_t cached;   /* bytes in free_blocks */
    size_t peak_reserved;
} cuda_allocator;

/* One request of a growing pool period: its rounded size and the block it was given. */
typedef struct cuda_pool_step {
    size_t want;
    size_t block; /* index into cuda_graph_pool.blocks */
} cuda_pool_step;

/* A graph's private memory (backend.h, "graphs"): every block it ever got from cudaMalloc,
 * with a flag per block saying whether a tensor holds it now. While the pool is active, the
 * allocator serves requests from it (best fit, as the main cache) and grows it with cudaMalloc
 * unless it is frozen (during a capture, where cudaMalloc is not allowed); its blocks never go
 * to the main cache, so a captured graph's addresses stay its own until the graph is freed.
 * A growing period records which block each request got (`trace`); a frozen period (capture)
 * hands out the same blocks again, because best fit over the full pool can pick differently
 * from best fit over the pool as it grew, and then run out (alloc.cu, cuda_pool_get). */
typedef struct cuda_graph_pool {
    cuda_block *blocks;
    unsigned char *used;
    size_t n, cap;
    size_t bytes;  /* sum of block sizes */
    size_t grew;   /* cudaMallocs since the pool became active */
    int frozen;
    cuda_pool_step *trace; /* the last growing period's requests, in order */
    size_t ntrace, captrace;
    size_t cursor; /* frozen period: the next trace step expected */
    struct cuda_graph_pool *next; /* the backend's list of pools (cuda_impl.pools) */
} cuda_graph_pool;

/* ---- cuBLASLt plans (gemm.cu) ------------------------------------------------------------ */

/* One GEMM in cuBLASLt's column-major terms: D[m x n] = alpha * op(A)[m x k] * op(B)[k x n],
 * then bias[m] (per row of D) and GELU(tanh) when asked. `batch` > 1 repeats it with the given
 * element strides. A and B share ab_dtype; D has d_dtype. */
typedef struct cuda_gemm {
    int transa, transb;
    int64_t m, n, k;
    int64_t lda, ldb, ldd;
    int batch;
    int64_t stride_a, stride_b, stride_d;
    loco_dtype ab_dtype, d_dtype;
    const void *a, *b;
    void *d;
    const void *bias; /* d_dtype, length m, or NULL */
    int gelu_tanh;
    float alpha;
    float beta; /* 0, or 1 to add the GEMM to what d holds (C = D in place; bias after both) */
} cuda_gemm;

typedef struct cuda_gemm_key {
    int64_t m, n, k, lda, ldb, ldd, stride_a, stride_b, stride_d;
    int32_t transa, transb, batch, ab_dtype, d_dtype, epilogue;
    int32_t align_a, align_b, align_d;
} cuda_gemm_key;

#define CUDA_GEMM_TUNE_ALGOS 8 /* candidates LOCO_CUDA_GEMM_TUNE=1 times per GEMM shape */

typedef struct cuda_gemm_plan {
    cuda_gemm_key key;
    int valid;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo; /* the heuristic's first choice, or (LOCO_CUDA_GEMM_TUNE=1) the fastest
                                * of its top candidates on the call that built the plan */
} cuda_gemm_plan;

#define CUDA_GEMM_PLANS 512

/* ---- the backend's state ----------------------------------------------------------------- */

/* How conv2d picks its route; LOCO_CUDA_CONV=implicit|im2col|rows|wgmma|tma|cudnn at backend
 * creation forces one where it applies (benchmarks and tests compare them), anything else means
 * AUTO. */
typedef enum cuda_conv_algo {
    CUDA_CONV_AUTO = 0, /* implicit GEMM when its grid fills the GPU, else im2col + cuBLASLt */
    CUDA_CONV_IMPLICIT, /* tensor-core implicit GEMM for every f16/bf16 conv that is not 1x1 */
    CUDA_CONV_IM2COL,   /* im2col + cuBLASLt for every conv that is not 1x1 */
    CUDA_CONV_WGMMA,    /* conv_wgmma.cu where it applies (experimental), else AUTO */
    CUDA_CONV_ROWS,     /* conv_rows.cu's row-tap GEMMs wherever they apply, else AUTO */
    CUDA_CONV_TMA,      /* conv_tma.cu where it applies (experimental), else AUTO */
    CUDA_CONV_CUDNN,    /* cuDNN where it has a plan (conv_cudnn.cu, experimental), else AUTO */
} cuda_conv_algo;

/* Which convs conv_cudnn.cu is asked to take (c->cudnn_conv, a mask). */
enum { CUDA_CUDNN_CONV_F16 = 1 /* and bf16 */, CUDA_CUDNN_CONV_F32 = 2 };

/* How a warp-specialised kernel's producer loads a stage (gemm_wgmma.cu:
 * LOCO_CUDA_GEMM_WGMMA_LOAD; attention_wgmma_ws.cu: LOCO_CUDA_FLASH_LOAD; cp.async|arrive|tma). */
typedef enum cuda_ws_load {
    CUDA_WS_LOAD_CP_ASYNC = 0, /* cp.async, published after waiting for them and a proxy fence (default) */
    CUDA_WS_LOAD_ARRIVE,       /* the same copies, published by cp.async.mbarrier.arrive as issued */
    CUDA_WS_LOAD_TMA,          /* one thread's TMA copies, 128-byte swizzled */
    CUDA_WS_LOAD_COUNT
} cuda_ws_load;

typedef struct cuda_impl {
    loco_backend *owner; /* the backend this is the state of (the allocator asks its reclaimers) */
    int reclaim_blocked; /* > 0: a failed allocation does not ask the reclaimers (optional scratch,
                          * which must not cost recorded graphs: gemm.cu's tuning) */
    int device;
    int cc_major, cc_minor;
    int sm_count;
    size_t total_mem;
    char name[256];
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_ws;
    size_t lt_ws_size;
    cuda_allocator alloc;
    cuda_gemm_plan *plans; /* CUDA_GEMM_PLANS entries */
    int plan_next;         /* round-robin eviction */
    cuda_conv_algo conv_algo;
    int flash_rows; /* flash-attention block rows, LOCO_CUDA_FLASH=64|128; 0 = auto (attention.cu,
                     * fa_mtiles) */
    int igemm_rows; /* 1: conv_igemm.cu's row-gather kernel where it applies; LOCO_CUDA_IGEMM_ROWS=0 turns it off */
    int wgmma_ok;   /* conv_wgmma.cu's kernel has an image for this device (sm_90a on a 9.0 device) */
    int conv_tma_ok; /* LOCO_CUDA_CONV=tma and conv_tma.cu's kernel is set up (sm_90a, a driver with TMA maps) */
    int conv_tma_cluster;  /* 2: that kernel in clusters of two blocks that share the weights' tiles by
                            * multicast (LOCO_CUDA_CONV_TMA_CLUSTER=2); else 1 */
    int conv_tma_clusters; /* ... clusters that can run at once (setup; 0: unavailable, none used) */
    int flash_variant; /* LOCO_CUDA_FLASH=classic|stages3|ilp3|ilp3q: attention.cu's 128-row variant (0, 2, 3,
                        * 7; -1: by head dim) */
    int flash_wgmma; /* LOCO_CUDA_FLASH=wgmma|wgmma128|wgmma3|wgmma_ws|wgmma_ws3|wgmma_ws128:
                      * attention_wgmma(_ws).cu for head dims 40/64/80 (experimental), with 64 or
                      * 128 keys per K/V tile; 0: off */
    int faw_warpgroups; /* ... in blocks of 2 warpgroups, or 3 (wgmma3, wgmma_ws3: head dims 64 and 80) */
    int faw_ws;         /* ... warp-specialised: a producer warp loads K/V (wgmma_ws, wgmma_ws3, wgmma_ws128) */
    int faw_pingpong;   /* ... whose warpgroups take turns at issuing; LOCO_CUDA_FLASH_PINGPONG=0: not */
    cuda_ws_load faw_load; /* ... whose producer loads so (LOCO_CUDA_FLASH_LOAD; tma: head dim 64 only) */
    int faw_ok;      /* ... and its sm_90a image is there and set up (compute capability 9.0) */
    int geglu_wgmma;    /* LOCO_CUDA_GEGLU=wgmma: the feed-forward's GEMM and GEGLU in one kernel
                         * (gemm_wgmma.cu, experimental); 0: cuBLASLt, then the GEGLU pass */
    int geglu_wgmma_ok; /* ... and its sm_90a image is there and set up (compute capability 9.0) */
    int linear_wgmma;   /* LOCO_CUDA_LINEAR=wgmma: linears without activation on that kernel's main
                         * loop where it takes them (experimental); 0: cuBLASLt */
    int linear_wgmma_ok;   /* ... and set up, as geglu_wgmma_ok */
    int gemm_wgmma_blocks; /* that kernel's and conv_tma.cu's persistent blocks: 0 = one per SM;
                            * LOCO_CUDA_GEMM_WGMMA_BLOCKS (tests) */
    cuda_ws_load gemm_wgmma_load; /* LOCO_CUDA_GEMM_WGMMA_LOAD: how that kernel loads its tiles */
    int gemm_wgmma_cluster; /* 2: its TMA form in clusters of two blocks that share w's tiles by
                             * multicast (LOCO_CUDA_GEMM_WGMMA_CLUSTER=2 with load tma); else 1 */
    int gemm_wgmma_clusters[2]; /* ... clusters that can run at once, GEGLU form then linear (setup;
                                 * 0: clusters unavailable, the form runs without) */
    int ln_fold; /* LOCO_CUDA_LN_FOLD=1: loco_ln_linear on that kernel's TMA form, the LayerNorm
                  * applied to its stages (experimental); 0: the LayerNorm, then the GEMM */
    void *tensor_map_encode; /* the driver's cuTensorMapEncodeTiled (setup, for the TMA form), or NULL */
    int cudnn_attention;       /* LOCO_CUDA_FLASH=cudnn: self-attention by cuDNN's SDPA where it applies
                                * (attention_cudnn.cu, experimental) */
    int cudnn_conv;            /* convolutions that are not 1x1 by cuDNN (conv_cudnn.cu, experimental):
                                * CUDA_CUDNN_CONV_* of the dtypes it takes (LOCO_CUDA_CONV=cudnn: all;
                                * LOCO_CUDA_CONV_F32=cudnn: f32); 0: off */
    int64_t cudnn_chunk_elems; /* ... a conv's x and y per cuDNN call have at most this many elements:
                                * 2^31 - 1 (its 32-bit indexing), or LOCO_CUDA_CUDNN_CHUNK (tests) */
    int cudnn_strict;          /* LOCO_CUDA_CUDNN_STRICT=1 (tests): a shape cuDNN has no plan for is
                                * the call's error, not our kernel's job; so is a conv the cuDNN
                                * route was asked to take but does not */
    struct cuda_cudnn *cudnn;  /* cuDNN's library, handle and plans (cudnn_lib.cu), when either
                                * route wants it; NULL when neither does or it is unavailable */
    char cudnn_why[192];       /* ... why unavailable */
    int flash_short; /* 1: attention over at most 80 keys (text cross-attention) takes
                      * attention_short.cu's kernel, whatever LOCO_CUDA_FLASH picks for the
                      * rest; LOCO_CUDA_FLASH_SHORT=0 sends it to that kernel too (unmeasured:
                      * the switch compares the two and is the way back if it loses) */
    int short_rows;  /* query rows per block of that kernel: 0 = by the launch's size;
                      * LOCO_CUDA_FLASH_SHORT_ROWS (tests: many 16-row steps per warp) */
    int short_bps[4]; /* its blocks per SM at head dims 40, 64, 80, 160 (occupancy at setup) */
    int gemm_tune;   /* LOCO_CUDA_GEMM_TUNE=1: time the heuristic's top cuBLASLt algorithms on the
                      * first eager call of each large GEMM shape and keep the fastest (gemm.cu) */
    int norm_gather; /* 1: loco_conv2d_fused applies its GroupNorm in the im2col gather (conv.cu);
                      * LOCO_CUDA_NORM_GATHER=0 sends it through a scratch tensor (unmeasured
                      * fusion: the switch compares the two and is the way back if it loses) */
    size_t im2col_budget; /* bytes of one im2col buffer (conv.cu): 256 MiB, or LOCO_CUDA_IM2COL_KB
                           * (tests shrink it to reach the sliced and chunked paths) */
    /* LOCO_CUDA_IM2COL_OVERLAP=1: a side stream that fills the next im2col chunk while the main
     * stream multiplies this one (conv.cu, conv_im2col_overlap); NULL when off */
    cudaStream_t aux;
    cudaEvent_t ev_fork, ev_join, ev_col_ready[2], ev_col_free[2];
    cuda_graph_pool *active_pool; /* allocations come from here while not NULL (graph.cu) */
    cuda_graph_pool *pools;       /* every live graph's pool: frees of their blocks go back there */
} cuda_impl;

static inline cuda_impl *cuda_of(loco_backend *be) { return (cuda_impl *)be->impl; }

/* ---- errors ------------------------------------------------------------------------------ */

/* LOCO_OK for cudaSuccess; otherwise LOCO_EDEVICE_OOM for allocation failures, LOCO_EDEVICE
 * for the rest, with "<what>: <CUDA's message> (<error name>)". */
loco_status cuda_check(cudaError_t e, const char *what, loco_err *err);
/* The launch status of the kernel just enqueued ("<kernel> launch: ..."). */
loco_status cuda_check_launch(const char *kernel, loco_err *err);
loco_status cuda_check_lt(cublasStatus_t s, const char *what, loco_err *err);
/* How many clusters of two blocks of `kernel` (threads each, smem bytes of dynamic shared memory,
 * its attribute already raised) can run at once (cudaOccupancyMaxActiveClusters: both blocks of a
 * cluster in one GPC, so fewer than half the SMs where a GPC's count is odd); 0 where the query
 * fails, its error consumed. */
int cuda_max_clusters_of_two(const void *kernel, unsigned threads, size_t smem);
/* Make the backend's device current for this host thread (the engine may call from a worker
 * thread that never selected it). */
loco_status cuda_enter(loco_backend *be, loco_err *err);

#define CUDA_TRY(call)                                                                   \
    do {                                                                                 \
        loco_status st_ = (call);                                                        \
        if (st_ != LOCO_OK) return st_;                                                  \
    } while (0)

/* ---- allocator (alloc.cu) ---------------------------------------------------------------- */

loco_status cuda_alloc_init(cuda_allocator *a, loco_err *err);
/* Frees every block, live or cached (the caller has synchronised). */
void cuda_alloc_destroy(cuda_allocator *a);
loco_status cuda_alloc_get(cuda_impl *c, size_t bytes, void **out, loco_err *err);
void cuda_alloc_put(cuda_impl *c, void *p);
/* A block of pool `p` (which is active); LOCO_EUNSUPPORTED when `p` is frozen and holds no
 * free block that fits. */
loco_status cuda_pool_get(cuda_impl *c, cuda_graph_pool *p, size_t bytes, void **out, loco_err *err);
/* Give every block of `p` back to the driver (the caller has synchronised) and empty it. */
void cuda_pool_release(cuda_graph_pool *p);

/* ---- shared launch helpers ----------------------------------------------------------------- */

/* Blocks for a grid-stride loop over `items` with `threads` per block: enough to fill the
 * GPU a few times over, never more than the work needs. */
static inline unsigned cuda_grid(const cuda_impl *c, int64_t items, int threads) {
    int64_t want = (items + threads - 1) / threads;
    int64_t cap = (int64_t)c->sm_count * 16;
    if (want > cap) want = cap;
    return want < 1 ? 1u : (unsigned)want;
}

static inline int cuda_aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

/* Converts n elements between float dtypes (F32/F16/BF16/F64) on the stream (convert.cu). */
loco_status cuda_download_u8_images(cuda_impl *c, uint8_t *dst, const void *src, loco_dtype src_dtype, int64_t n,
                                    int64_t ch, int64_t hw, int64_t *nan_at, loco_err *err);
loco_status cuda_convert(cuda_impl *c, void *dst, loco_dtype dst_dtype, const void *src, loco_dtype src_dtype,
                         int64_t n, loco_err *err);
/* A temporary copy of t converted to `dtype` (from the allocator; *out == t->data and *owned
 * == 0 when no conversion is needed). Release with cuda_alloc_put when *owned. */
loco_status cuda_as_dtype(cuda_impl *c, const loco_tensor *t, loco_dtype dtype, const void **out, void **owned,
                          loco_err *err);

/* y[i] += bias[(i / inner) % period] for i < n: per-channel bias over NCHW (period C) and
 * the [N, C] time-embedding bias (period N*C). y and x may alias. (elementwise.cu) */
loco_status cuda_channel_bias(cuda_impl *c, void *y, const void *x, loco_dtype dtype, const void *bias,
                              loco_dtype bias_dtype, int64_t n, int64_t inner, int64_t period, loco_err *err);
/* The same with two optional terms (the fused conv's epilogue): y[i] = x[i] + bias[(i / inner)
 * % period] + bias2[i / inner] + res[i], summed in fp32 in that order, rounded once; bias,
 * bias2 and res may each be NULL. res has y's dtype and may not alias y. (elementwise.cu) */
loco_status cuda_channel_bias_ex(cuda_impl *c, void *y, const void *x, loco_dtype dtype, const void *bias,
                                 loco_dtype bias_dtype, const void *bias2, loco_dtype bias2_dtype, const void *res,
                                 int64_t n, int64_t inner, int64_t period, loco_err *err);
/* y = act(x) over n elements of dtype (in place allowed). (elementwise.cu) */
loco_status cuda_act_apply(cuda_impl *c, void *y, const void *x, loco_dtype dtype, int64_t n, loco_act act,
                           loco_err *err);

/* ---- GEMM (gemm.cu) ------------------------------------------------------------------------ */

void cuda_gemm_plans_destroy(cuda_impl *c);
/* Runs g; LOCO_EUNSUPPORTED when cuBLASLt has no algorithm for it (the caller may retry
 * without the fused epilogue). */
loco_status cuda_gemm_run(cuda_impl *c, const cuda_gemm *g, loco_err *err);

/* ---- GroupNorm as a per-(sample, channel) affine map (norm.cu) ------------------------------- */

/* table[n * C + c] = (scale, shift) such that GroupNorm(x)[n, c, ...] = x[n, c, ...] * scale +
 * shift (in fp32, fmaf), bit for bit the values loco_group_norm normalises with. table holds
 * N * C float2 in device memory. The fused conv (conv.cu) applies it inside its im2col. */
loco_status cuda_gn_table(cuda_impl *c, const loco_tensor *x, int groups, const loco_tensor *gamma,
                          const loco_tensor *beta, float eps, float2 *table, loco_err *err);

/* ---- one-time kernel setup (attention.cu) ---------------------------------------------------- */

/* Raises the dynamic shared-memory limit of the attention kernels that need more than 48 KB
 * and checks that this build has machine code for the device. */
loco_status cuda_attention_setup(cuda_impl *c, loco_err *err);
/* The materialised path (attention_gemm.cu) for what the flash kernels do not take: k and v
 * point at their first rows ([Bk, lk, ...]), q, k and v rows are in_rs elements apart (the
 * output's width, or three times it for packed q|k|v rows). */
loco_status cuda_attention_gemm(cuda_impl *c, loco_tensor *out, const loco_tensor *q, const void *k, const void *v,
                                int64_t lk, int64_t in_rs, const loco_attention_params *p, loco_err *err);
/* The wgmma flash attention (attention_wgmma.cu, sm_90a, experimental: only under
 * LOCO_CUDA_FLASH=wgmma*). setup sets c->faw_ok; applies says whether it takes a call of this
 * dtype and head dim; the launch takes attention.cu's arguments and sets grid.x itself. */
struct fa_params;
loco_status cuda_flash_wgmma_setup(cuda_impl *c, loco_err *err);
int cuda_flash_wgmma_applies(const cuda_impl *c, loco_dtype dt, int64_t D);
loco_status cuda_flash_wgmma(cuda_impl *c, loco_dtype dt, int D, dim3 grid, const struct fa_params *fp, loco_err *err);
/* Its warp-specialised form (attention_wgmma_ws.cu, LOCO_CUDA_FLASH=wgmma_ws*), reached through
 * those two: setup returns whether its sm_90a image is there and set up; the launch takes nwg
 * consumer warpgroups (2, or 3 at head dims 64 and 80) and c->flash_wgmma keys per tile (64, or
 * 128 with two warpgroups). */
int cuda_flash_wgmma_ws_setup(cuda_impl *c);
loco_status cuda_flash_wgmma_ws(cuda_impl *c, loco_dtype dt, int D, int nwg, dim3 grid, const struct fa_params *fp,
                                loco_err *err);
/* Attention over at most 80 keys (attention_short.cu): K and V held once per (sample, head),
 * query rows streamed through them. applies: c->flash_short, 1 <= lk <= 80 and a head dim with an
 * instantiation (40, 64, 80, 160); the launch covers the samples [fp->b0, + samples) of `heads`
 * heads under attention.cu's flash conditions (f16/bf16, 16-byte aligned rows). */
loco_status cuda_attention_short_setup(cuda_impl *c, loco_err *err);
int cuda_attention_short_applies(const cuda_impl *c, int64_t D, int64_t lk);
loco_status cuda_attention_short(cuda_impl *c, loco_dtype dt, int D, int heads, int samples,
                                 const struct fa_params *fp, loco_err *err);
/* cuDNN (cudnn_lib.cu): setup opens libcudnn.so.9 when c->cudnn_attention or c->cudnn_conv
 * asks for it (its absence leaves c->cudnn NULL and says why in c->cudnn_why, never failing the
 * backend); version: e.g. 91900, 0 when not open. */
loco_status cuda_cudnn_setup(cuda_impl *c, loco_err *err);
void cuda_cudnn_destroy(cuda_impl *c);
size_t cuda_cudnn_version(const cuda_impl *c);
/* Self-attention through cuDNN's fused SDPA forward (attention_cudnn.cu, experimental: only
 * under LOCO_CUDA_FLASH=cudnn, cuDNN 9.13.1 or later). applies: the route is up, f16/bf16, not
 * causal, every sample on its own K/V, head dim a multiple of 8 up to 256; the call returns
 * LOCO_EUNSUPPORTED when cuDNN has no plan for the shape, LOCO_EDEVICE_OOM when its workspace
 * does not fit (the caller runs its own kernel then, unless c->cudnn_strict). Rows are 16-byte
 * aligned (the caller checks), strides in elements. */
typedef struct cuda_sdpa_call {
    loco_dtype dt;
    int64_t B, H, Lq, Lk, D;
    const void *q, *k, *v; /* first rows of sample 0 */
    void *o;
    int64_t q_rs, kv_rs, o_rs; /* elements between consecutive rows (tokens) */
    float scale;
} cuda_sdpa_call;
int cuda_attention_cudnn_applies(const cuda_impl *c, loco_dtype dt, int64_t D, int causal, int own_kv);
loco_status cuda_attention_cudnn(cuda_impl *c, const cuda_sdpa_call *s, loco_err *err);
/* ", attention: cuDNN ... SDPA ..." / ", attention: cuDNN unavailable (why)" / "" into buf. */
const char *cuda_attention_cudnn_describe(const cuda_impl *c, char *buf, size_t n);
/* Tensor-core implicit-GEMM convolution for F16/BF16 (conv_igemm.cu). */
/* Blocks the implicit-GEMM kernel launches for this convolution. */
int64_t cuda_conv_igemm_blocks(int64_t npix, int64_t cout);
/* The caller has checked: F16/BF16, Cin*H*W < 2^31, w converted to y's dtype in wdata. */
loco_status cuda_conv_igemm(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);
/* TF32 tensor-core implicit-GEMM convolution for F32 x, w, y (conv_igemm_tf32.cu); bias F32
 * (any float dtype) or NULL. The caller has checked Cin*H*W < 2^31 and that
 * cuda_conv_igemm_tf32_setup ran (backend creation): the kernel needs 70 KB of shared memory. */
loco_status cuda_conv_igemm_tf32_setup(cuda_impl *c, loco_err *err);
/* Shared-memory opt-in of conv_igemm.cu's row-gather kernel (backend creation). */
loco_status cuda_conv_igemm_setup(cuda_impl *c, loco_err *err);
loco_status cuda_conv_igemm_tf32(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                 const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);
/* 3-wide stride-1 "same"-width convolutions as strided-batched GEMMs over a buffer of three
 * shifted copies of the input rows (conv_rows.cu). applies: the shape and padding fit and one
 * output row's buffer fits c->im2col_budget. wdata: w in y's dtype; norm / norm_silu: the fused
 * conv's GroupNorm table (cuda_gn_table) or NULL. The bias is the caller's to add. */
int cuda_conv_rows_applies(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                           const loco_conv2d_params *p);
loco_status cuda_conv_rows(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                           const void *wdata, const loco_conv2d_params *p, const float2 *norm, int norm_silu,
                           loco_err *err);
/* The wgmma implicit-GEMM convolution (conv_wgmma.cu, sm_90a, experimental: only under
 * LOCO_CUDA_CONV=wgmma). setup sets c->wgmma_ok on a device that can run it; fits says whether
 * the kernel applies (w converted to y's dtype in wdata). */
loco_status cuda_conv_wgmma_setup(cuda_impl *c, loco_err *err);
int cuda_conv_wgmma_fits(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                         const void *wdata, const loco_conv2d_params *p);
loco_status cuda_conv_wgmma(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);
/* The TMA implicit-GEMM convolution (conv_tma.cu, sm_90a, experimental: only under
 * LOCO_CUDA_CONV=tma). setup sets c->conv_tma_ok; fits says whether the kernel applies (w
 * converted to y's dtype in wdata); the call normalises x by norm (cuda_gn_table's table, with
 * SiLU when norm_silu) when not NULL, and adds bias, sample_bias [N, Cout] and residual (y's
 * shape, 16-byte aligned) in its epilogue, each when not NULL. */
loco_status cuda_conv_tma_setup(cuda_impl *c, loco_err *err);
int cuda_conv_tma_fits(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                       const void *wdata, const loco_conv2d_params *p);
loco_status cuda_conv_tma(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w, const void *wdata,
                          const loco_tensor *bias, const loco_tensor *sample_bias, const loco_tensor *residual,
                          const float2 *norm, int norm_silu, loco_err *err);

/* Convolutions through cuDNN (conv_cudnn.cu, experimental: only under LOCO_CUDA_CONV=cudnn or
 * LOCO_CUDA_CONV_F32=cudnn). applies: the route is up and takes this dtype, and one sample's x and
 * y are within c->cudnn_chunk_elems elements (the pointers' alignment goes into the plan); the
 * call writes y = conv(x, wdata) (wdata: w in y's dtype; the bias is the caller's) and returns
 * LOCO_EUNSUPPORTED when cuDNN has no plan for the shape, LOCO_EDEVICE_OOM when its workspace
 * does not fit (the caller then runs its own route, which rewrites all of y, unless
 * c->cudnn_strict). describe: ", conv: cuDNN ..." or "" into buf. */
int cuda_conv_cudnn_asked(const cuda_impl *c, loco_dtype dt); /* the route is up and takes dt */
int cuda_conv_cudnn_applies(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w);
loco_status cuda_conv_cudnn(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_conv2d_params *p, loco_err *err);
const char *cuda_conv_cudnn_describe(const cuda_impl *c, char *buf, size_t n);

/* ---- vtable hooks, one group per file --------------------------------------------------------- */

extern "C" {
/* gemm.cu */
loco_status cuda_op_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                           const loco_tensor *bias, loco_act act, loco_err *err);
loco_status cuda_op_linear_accumulate(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *bias, loco_err *err);
loco_status cuda_op_linear_many(loco_backend *be, int n, loco_tensor *const *y, const loco_tensor *x,
                                const loco_tensor *const *w, const loco_tensor *const *bias, loco_err *err);
loco_status cuda_op_linear_from_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                         const loco_tensor *bias, loco_err *err);
loco_status cuda_op_linear_to_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                       const loco_tensor *bias, const loco_tensor *r, loco_err *err);
/* conv.cu */
loco_status cuda_op_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                           const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);
loco_status cuda_op_conv2d_fused(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                 const loco_tensor *bias, const loco_conv2d_params *p, const loco_conv2d_fusion *f,
                                 loco_err *err);
/* wgmma_probe.cu */
loco_status cuda_op_selftest(loco_backend *be, char *report, size_t n, loco_err *err);
/* norm.cu */
loco_status cuda_op_group_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                               const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu,
                               loco_err *err);
loco_status cuda_op_layer_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                               const loco_tensor *beta, float eps, loco_err *err);
/* LayerNorm's statistics alone: stats [rows] float2 (mean, rstd), the bits the LayerNorm uses, for
 * 16-bit x whose rows its fast form takes (cuda_layer_norm_stats_fits; else LOCO_EUNSUPPORTED). */
int cuda_layer_norm_stats_fits(const cuda_impl *c, const loco_tensor *x);
loco_status cuda_layer_norm_stats(cuda_impl *c, void *stats, const loco_tensor *x, float eps, loco_err *err);
/* attention.cu */
loco_status cuda_op_attention(loco_backend *be, loco_tensor *out, const loco_tensor *q, const loco_tensor *k,
                              const loco_tensor *v, const loco_attention_params *p, loco_err *err);
/* gemm_wgmma.cu (LOCO_CUDA_GEGLU=wgmma, LOCO_CUDA_LINEAR=wgmma): setup sets c->geglu_wgmma_ok
 * and c->linear_wgmma_ok; both calls decline (LOCO_EUNSUPPORTED, nothing launched) what they do
 * not take. cuda_linear_wgmma: y = x . wᵀ + bias (+ y when accumulate), no activation. */
loco_status cuda_gemm_wgmma_setup(cuda_impl *c, loco_err *err);
loco_status cuda_op_linear_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                 const loco_tensor *bias, loco_err *err);
loco_status cuda_linear_wgmma(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                              const loco_tensor *bias, int accumulate, loco_err *err);
/* ... cuda_op_ln_linear (LOCO_CUDA_LN_FOLD=1): loco_ln_linear on its TMA form. */
loco_status cuda_op_ln_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                              const loco_tensor *beta, float eps, const loco_tensor *w, const loco_tensor *bias,
                              int geglu, loco_err *err);
/* tensor_map.cu: the driver's cuTensorMapEncodeTiled into c->tensor_map_encode (NULL when the
 * driver has none); a rank-1..5 f16/bf16 map, 128-byte swizzle, zeros outside (strides: bytes
 * of dims 1..rank-1). */
void cuda_tensor_map_setup(cuda_impl *c);
struct CUtensorMap_st;
loco_status cuda_tensor_map_make(const cuda_impl *c, struct CUtensorMap_st *map, const void *base, loco_dtype dt,
                                 int rank, const int64_t *dims, const int64_t *strides, const unsigned *box,
                                 loco_err *err);
/* elementwise.cu */
loco_status cuda_op_activation(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act act, loco_err *err);
loco_status cuda_op_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
loco_status cuda_op_add(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, loco_err *err);
loco_status cuda_op_add_channel_bias(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *bias,
                                     loco_err *err);
loco_status cuda_op_lincomb(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x, const float *coef,
                            loco_err *err);
loco_status cuda_op_fill(loco_backend *be, loco_tensor *y, float value, loco_err *err);
/* convert.cu */
loco_status cuda_op_copy(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
/* layout.cu */
loco_status cuda_op_transpose12(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
loco_status cuda_op_concat(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, int axis,
                           loco_err *err);
loco_status cuda_op_upsample_nearest2x(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);
loco_status cuda_op_embedding(loco_backend *be, loco_tensor *y, const loco_tensor *table, const int32_t *ids,
                              int64_t n, loco_err *err);
loco_status cuda_op_set_channels(loco_backend *be, loco_tensor *y, const int32_t *channels, const float *values,
                                 int n, loco_err *err);
/* graph.cu */
loco_status cuda_graph_new(loco_backend *be, void **g, loco_err *err);
void cuda_graph_free(loco_backend *be, void *g);
loco_status cuda_graph_pool_begin(loco_backend *be, void *g, int frozen, loco_err *err);
size_t cuda_graph_pool_end(loco_backend *be, void *g);
size_t cuda_graph_pool_bytes(const loco_backend *be, const void *g);
loco_status cuda_graph_capture_begin(loco_backend *be, void *g, loco_err *err);
loco_status cuda_graph_capture_end(loco_backend *be, void *g, int keep, loco_err *err);
loco_status cuda_graph_launch(loco_backend *be, void *g, loco_err *err);
/* Backend teardown: frees the blocks of pools whose graphs were never freed. */
void cuda_graph_pools_destroy(cuda_impl *c);
}

/* Name of a dtype for messages ("F16"). */
static inline const char *cuda_dt(loco_dtype t) { return loco_dtype_name(t); }

/* The three activation dtypes the kernels are instantiated for. */
static inline int cuda_is_act_dtype(loco_dtype t) { return t == LOCO_F32 || t == LOCO_F16 || t == LOCO_BF16; }

#endif
