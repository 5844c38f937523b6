/* backend.h: the compute backend interface. Every engine model (CLIP, UNet, VAE) is written
 * once against these calls; kernels/cpu/ implements them with C + OpenBLAS and kernels/cuda/
 * with CUDA C + cuBLAS(Lt). The CPU backend is the reference the CUDA one is tested against.
 *
 * Conventions
 * - Tensors are dense, row-major (C order), and live in the backend's memory. A tensor value
 *   is a small struct passed by pointer; a view shares data and does not own it.
 * - Activations use the backend's activation dtype (loco_backend_act_dtype: F32 on the CPU,
 *   F16 or BF16 on CUDA). Weights are uploaded once with loco_tensor_upload, which converts
 *   from the file dtype. Reductions (norms, softmax) accumulate in fp32 on every backend.
 * - Image activations are NCHW; token activations are [batch, tokens, channels].
 * - Outputs are allocated by the caller; an op never allocates its output. Ops check shapes
 *   and return LOCO_EINVAL with a message naming the op and the mismatch.
 * - Ops are asynchronous on devices that are; loco_backend_sync waits. Downloads sync.
 */
#ifndef LOCO_BACKEND_H
#define LOCO_BACKEND_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOCO_MAX_DIMS 6

typedef struct loco_backend loco_backend;

typedef enum loco_device {
    LOCO_DEVICE_CPU = 0,
    LOCO_DEVICE_CUDA,
    LOCO_DEVICE_AUTO, /* CUDA when a usable GPU is present, else CPU */
    LOCO_DEVICE_COUNT
} loco_device;

const char *loco_device_name(loco_device d); /* "cpu", "cuda", "auto" */
int loco_device_from_name(const char *name, loco_device *out);

typedef struct loco_backend_opts {
    loco_device device;
    int num_threads;      /* CPU: 0 = all cores */
    int cuda_device;      /* CUDA: ordinal, default 0 */
    loco_dtype act_dtype; /* CUDA: F16 (default) or BF16 or F32; CPU always F32 */
} loco_backend_opts;

void loco_backend_opts_init(loco_backend_opts *o); /* fills defaults: AUTO, all threads, F16 */

loco_status loco_backend_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err);

/* Call first in main(): when OpenBLAS would run its generic kernels on a CPU it can serve far
 * better (it does not recognise recent Xeons), re-executes the program once with
 * OPENBLAS_CORETYPE set. Does nothing when OPENBLAS_CORETYPE is already set. */
void loco_backend_prepare_process(int argc, char **argv);
/* The OPENBLAS_CORETYPE that would serve this CPU better than the kernels in use, or NULL. */
const char *loco_blas_better_coretype(void);
void loco_backend_destroy(loco_backend *be);
loco_device loco_backend_device(const loco_backend *be);
const char *loco_backend_describe(const loco_backend *be); /* "cpu (2 threads, OpenBLAS ...)" */

/* Checks device behaviour that kernels rely on beyond what creation checks (the CUDA backend
 * on a Hopper GPU: the warpgroup-MMA layouts of its experimental wgmma kernels, one small
 * product each). report (n bytes) gets one line per check. LOCO_EDEVICE when something a
 * kernel relies on does not hold; LOCO_OK, saying so in report, when there is nothing to check. */
loco_status loco_backend_selftest(loco_backend *be, char *report, size_t n, loco_err *err);
loco_dtype loco_backend_act_dtype(const loco_backend *be);
/* Whether the ops take tensors of dtype t (always the activation dtype; CUDA with F16 or BF16
 * activations also F32 and the other half type, so one model can compute in another dtype). */
int loco_backend_accepts_dtype(const loco_backend *be, loco_dtype t);
loco_status loco_backend_sync(loco_backend *be, loco_err *err);
/* Bytes currently allocated and the peak since creation (device memory for CUDA). */
void loco_backend_memory(const loco_backend *be, size_t *current, size_t *peak);
/* The device's free and total memory as its driver counts them (every process on the card);
 * LOCO_EUNSUPPORTED on the CPU backend. */
loco_status loco_backend_device_memory(loco_backend *be, size_t *free_bytes, size_t *total_bytes, loco_err *err);

/* ---- memory pressure ----------------------------------------------------------------------
 * Caches above the backend hold device memory that nothing uses between calls: a recorded UNet
 * graph keeps its call's activations in a private pool (6.7 GiB at SD-XL batch 8, one pool per
 * recorded shape). A reclaimer gives such memory back when asked. When a device allocation
 * fails even after the backend's own idle blocks went back to the driver, the backend asks the
 * reclaimers for what is missing (least recently used first) and tries again, so a request that
 * needs the memory (another model's job, a VAE decode, a model load) gets it. A request that
 * would not fit even with all of it given back takes nothing from them: it fails with
 * LOCO_EDEVICE_OOM and the graphs stay.
 *
 * Reclaimers run on the thread that allocates, possibly inside an op or inside their owner's own
 * call: each frees only what no call in progress uses (the owner marks what it is using), and
 * never allocates or enqueues work (freeing a graph, which waits for the stream, is allowed). A
 * failure during a reclaim does not start another one. The registry is the backend object's:
 * two backends on one card do not reclaim for each other (a worker has one). */
typedef enum loco_reclaim_mode {
    LOCO_RECLAIM_COUNT = 0, /* say how many bytes could be given back now; free nothing */
    LOCO_RECLAIM_FREE,      /* give back, least recently used first, until at least `want` bytes
                               went back or nothing is left */
} loco_reclaim_mode;
/* Returns the device bytes it could give back (COUNT) or gave back (FREE); 0: none. */
typedef size_t (*loco_reclaim_fn)(void *ctx, loco_reclaim_mode mode, size_t want);
/* Registers (fn, ctx) once (ctx may be NULL): LOCO_EINVAL for a NULL backend or function, or a
 * pair already registered. */
loco_status loco_backend_add_reclaimer(loco_backend *be, loco_reclaim_fn fn, void *ctx, loco_err *err);
void loco_backend_remove_reclaimer(loco_backend *be, loco_reclaim_fn fn, void *ctx); /* absent: no-op */
/* What the reclaimers could give back now (0 during a reclaim). */
size_t loco_backend_reclaimable(loco_backend *be);
/* Asks the reclaimers, in the order registered, until `want` bytes went back (SIZE_MAX: all of
 * it); returns the bytes they gave back (0 during another reclaim). The backend calls it when an
 * allocation fails; callers may too, e.g. to shrink before a big job. */
size_t loco_backend_reclaim(loco_backend *be, size_t want);

/* ---- op profiling ---------------------------------------------------------------------- */

/* Where a model's time goes, per kind of op: benchmarks report the share of time in GEMM-like
 * ops and their FLOP rate. While profiling, every op is followed by a sync so device time is
 * attributed to the op that spent it (slower; never on in production paths). */
typedef enum loco_op_kind {
    LOCO_OP_LINEAR = 0,
    LOCO_OP_CONV2D,
    LOCO_OP_ATTENTION,
    LOCO_OP_NORM,        /* group norm, layer norm */
    LOCO_OP_ELEMENTWISE, /* everything else: activations, adds, copies, layout */
    LOCO_OP_KIND_COUNT
} loco_op_kind;
const char *loco_op_kind_name(loco_op_kind k); /* "linear", "conv2d", "attention", "norm", "elementwise" */

typedef struct loco_op_profile {
    int64_t calls[LOCO_OP_KIND_COUNT];
    double seconds[LOCO_OP_KIND_COUNT];
    double flops[LOCO_OP_KIND_COUNT]; /* multiply-adds count 2 */
} loco_op_profile;

void loco_backend_profile_start(loco_backend *be);                    /* zero the counters and enable */
void loco_backend_profile_stop(loco_backend *be, loco_op_profile *out); /* disable; out may be NULL */

/* The same profile split by op and shape: one row per distinct `what` ("conv2d y[16,320,64,64]
 * w[320,320,3,3]"), so a benchmark can say which shapes cost the time. Rows beyond
 * LOCO_PROFILE_ROWS distinct shapes are summed into a last "(other)" row of their kind. */
#define LOCO_PROFILE_ROWS 256
typedef struct loco_op_profile_row {
    loco_op_kind kind;
    char what[120];
    int64_t calls;
    double seconds, flops;
} loco_op_profile_row;
/* The rows of the last profile, in first-seen order; valid until the next profile_start. */
int loco_backend_profile_rows(const loco_backend *be, const loco_op_profile_row **rows);

/* ---- tensors ----------------------------------------------------------------------------- */

typedef struct loco_tensor {
    loco_dtype dtype;
    int ndim;
    int64_t shape[LOCO_MAX_DIMS];
    void *data;       /* backend memory; host memory for the CPU backend */
    loco_backend *be;
    int owns;         /* 1: loco_tensor_free releases data; 0: a view */
} loco_tensor;

int64_t loco_tensor_numel(const loco_tensor *t);
size_t loco_tensor_nbytes(const loco_tensor *t);
/* Writes "[2, 4, 8, 8] F32" into buf. */
const char *loco_tensor_shape_str(const loco_tensor *t, char *buf, size_t n);
int loco_tensor_same_shape(const loco_tensor *a, const loco_tensor *b);

loco_status loco_tensor_alloc(loco_backend *be, loco_dtype dtype, int ndim, const int64_t *shape,
                              loco_tensor *out, loco_err *err);
/* Allocate in the backend's activation dtype. */
loco_status loco_tensor_alloc_act(loco_backend *be, int ndim, const int64_t *shape, loco_tensor *out,
                                  loco_err *err);
void loco_tensor_free(loco_tensor *t); /* safe on zeroed structs and views; zeroes *t */

/* A view of `src` starting `offset` elements in, with a new shape of equal or smaller size. */
loco_status loco_tensor_view(const loco_tensor *src, int64_t offset, int ndim, const int64_t *shape,
                             loco_tensor *out, loco_err *err);
/* View of rows [start, start+count) of the leading dimension. */
loco_status loco_tensor_slice0(const loco_tensor *src, int64_t start, int64_t count, loco_tensor *out,
                               loco_err *err);

/* Host -> tensor, converting from src_dtype (F32/F16/BF16/F64 to any float tensor dtype). */
loco_status loco_tensor_upload(loco_tensor *dst, const void *src, loco_dtype src_dtype, loco_err *err);
/* Tensor -> host f32 (syncs). dst holds numel floats. */
loco_status loco_tensor_download_f32(const loco_tensor *src, float *dst, loco_err *err);
/* Images out of a float tensor x [N, C, H, W] (values about [-1, 1]; views such as slice0 too),
 * quantised as diffusers' postprocess does (quantize_u8.h: round(clamp(x * 0.5 + 0.5, 0, 1) *
 * 255), ties to even, in fp32), into dst as N interleaved images of H * W * C bytes (HWC, PNG's
 * order). The quantisation runs where the tensor lives, so a GPU sends N H W C bytes instead of
 * 4 N C H W. Syncs. *nan_at (may be NULL): the flat index into x of its first NaN, -1 if none;
 * a NaN becomes 0. */
loco_status loco_tensor_download_u8_images(const loco_tensor *x, uint8_t *dst, int64_t *nan_at, loco_err *err);

/* ---- ops ------------------------------------------------------------------------------------- */

typedef enum loco_act {
    LOCO_ACT_NONE = 0,
    LOCO_ACT_SILU,       /* x * sigmoid(x) */
    LOCO_ACT_GELU,       /* exact erf GELU */
    LOCO_ACT_GELU_TANH,  /* tanh approximation (T5 gelu_new) */
    LOCO_ACT_QUICK_GELU, /* x * sigmoid(1.702 x) (OpenAI CLIP) */
    LOCO_ACT_COUNT
} loco_act;
const char *loco_act_name(loco_act a); /* "none", "silu", "gelu", "gelu_tanh", "quick_gelu" */
int loco_act_from_name(const char *name, loco_act *out); /* also accepts transformers' spellings */

/* y[..., N] = act(x[..., K] · w[N, K]ᵀ + bias[N]); bias may be NULL. */
loco_status loco_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                        const loco_tensor *bias, loco_act act, loco_err *err);

/* y = (x · wᵀ + bias) + y: a linear layer whose output is added to the residual stream y in
 * place (a transformer block's attention output and feed-forward projections). The CUDA
 * backend folds the add into the GEMM (cuBLASLt with beta = 1: the GEMM reads y and writes it
 * once), saving the temporary's write and the add's reads of it; elsewhere it is loco_linear
 * into a temporary, then loco_add, bit for bit. */
loco_status loco_linear_accumulate(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                   const loco_tensor *bias, loco_err *err);
/* y[..., N] = GEGLU(x[..., K] · w[2N, K]ᵀ + bias[2N]): h * gelu(g) with h the first N columns of
 * the linear's output and g the last N (diffusers' GEGLU; exact erf GELU). bias may be NULL. A
 * linear into a temporary, then loco_geglu, bit for bit; the CUDA backend under
 * LOCO_CUDA_GEGLU=wgmma (experimental) runs both in one Hopper kernel instead. */
loco_status loco_linear_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                              const loco_tensor *bias, loco_err *err);
/* A linear layer (geglu 0: loco_linear without activation) or loco_linear_geglu (geglu 1) on
 * LayerNorm(x) over x's last dimension (gamma [K], beta [K] or NULL, eps): a transformer block's
 * projections after norm1, norm2 and norm3. loco_layer_norm into a temporary, then the linear,
 * bit for bit; the CUDA backend under LOCO_CUDA_LN_FOLD=1 (experimental, with gemm_wgmma.cu's TMA
 * form) writes no normalised copy: a pass computes each row's statistics and the GEMM
 * normalises x on its way from shared memory to the tensor cores, the same bits again. */
loco_status loco_ln_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                           const loco_tensor *beta, float eps, const loco_tensor *w, const loco_tensor *bias, int geglu,
                           loco_err *err);
/* n linear layers of one input: y[i] = x · w[i]ᵀ + bias[i] (bias[i] may be NULL), x [M, K], w[i]
 * [N_i, K], y[i] [M, N_i]; the y[i] may not overlap each other or the inputs. A UNet's
 * time-embedding projections (one per ResNet block, all of SiLU(temb)): the CUDA backend runs
 * them as one kernel when M is small (up to 32 rows), reading every weight once, instead of a
 * launch-bound GEMM each; elsewhere they are n loco_linear calls, bit for bit. */
loco_status loco_linear_many(loco_backend *be, int n, loco_tensor *const *y, const loco_tensor *x,
                             const loco_tensor *const *w, const loco_tensor *const *bias, loco_err *err);

/* Linear layers on channel-major activations (a [B, C, H, W] tensor viewed as [B, C, L]): a
 * transformer's proj_in and proj_out without the transposes around them.
 *   loco_linear_from_channels: y [B, L, N] = x_bᵀ · wᵀ + bias, x [B, K, L].
 *   loco_linear_to_channels:   y [B, N, L] = (x_b · wᵀ + bias)ᵀ + r_b, x [B, L, K]; r [B, N, L] or
 *                              NULL, and may be y itself.
 * The CUDA backend runs each as one batched GEMM reading or writing the channel-major layout
 * (proj_out's residual add folded in; its bias in one more pass); elsewhere they are
 * loco_transpose12 with loco_linear (and loco_add), bit for bit what a caller would write. */
loco_status loco_linear_from_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *bias, loco_err *err);
loco_status loco_linear_to_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                    const loco_tensor *bias, const loco_tensor *r, loco_err *err);

/* 2-D convolution, NCHW. w [Cout, Cin, kh, kw]; bias [Cout] or NULL. pad = {top, bottom, left,
 * right} (asymmetric padding is needed by the VAE encoder's downsampler). */
typedef struct loco_conv2d_params {
    int stride;
    int pad[4];
} loco_conv2d_params;
loco_status loco_conv2d(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                        const loco_tensor *bias, const loco_conv2d_params *p, loco_err *err);

/* A conv2d with the ResNet block's neighbours folded in (loco_conv2d_fused):
 *   before: x -> GroupNorm(x; norm_groups, norm_gamma, norm_beta, norm_eps) (-> SiLU if norm_silu)
 *           when norm_gamma is set (norm_beta [Cin] then too: GroupNorm is always affine);
 *   after:  y = conv + bias + sample_bias[n, :] (a per-sample [N, Cout] bias: the time
 *           embedding) + residual (y's shape: the ResNet shortcut); each when set.
 * Init with loco_conv2d_fusion_init (nothing fused). */
typedef struct loco_conv2d_fusion {
    const loco_tensor *norm_gamma, *norm_beta;
    int norm_groups;
    float norm_eps;
    int norm_silu;
    const loco_tensor *sample_bias;
    const loco_tensor *residual;
} loco_conv2d_fusion;
void loco_conv2d_fusion_init(loco_conv2d_fusion *f);

/* The CUDA backend applies the GroupNorm inside the im2col gather (the normalised input is
 * never written; only its statistics pass reads x beforehand) and adds bias, sample bias and
 * residual in the one pass over y that the conv bias needed anyway. Elsewhere, and on routes
 * that cannot take the GroupNorm, it is loco_group_norm into a temporary, loco_conv2d,
 * loco_add_channel_bias, then y = residual + y with loco_add: bit for bit the unfused calls.
 * On the GPU the fused GroupNorm values are those of loco_group_norm bit for bit; the
 * epilogue rounds once where the unfused adds round after each term. f may be NULL. */
loco_status loco_conv2d_fused(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                              const loco_tensor *bias, const loco_conv2d_params *p, const loco_conv2d_fusion *f,
                              loco_err *err);

/* GroupNorm over x [N, C, *]: groups of C/groups channels; gamma/beta [C]; optional SiLU after. */
loco_status loco_group_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                            const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu,
                            loco_err *err);

/* LayerNorm over the last dimension; gamma/beta [C] (beta may be NULL). */
loco_status loco_layer_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *gamma,
                            const loco_tensor *beta, float eps, loco_err *err);

/* Multi-head attention.
 *   q   [B, Lq, H*D]     out [B, Lq, H*D]
 *   k,v [Bk, Lk, H*D]    (Lk may differ from Lq: cross-attention)
 * kv_index (host array of B ints, or NULL for the identity with Bk == B) selects, for each
 * query sample b, the K/V sample it attends to: samples of one batch can attend to different
 * text (LocoGen windows, causal-tracing variants) without copying K/V.
 * scale multiplies q·kᵀ; causal masks key j > query i (CLIP text). Scores and softmax are fp32.
 *
 * qkv_packed: self-attention on the output of one GEMM with the q, k and v projections'
 * weights stacked: q is [B, L, 3*H*D], each row q | k | v, and k, v must be NULL (Bk = B,
 * Lk = L; kv_index still picks the sample whose k and v a query sample reads). One GEMM of
 * three times the width replaces three, and nothing is copied apart. */
typedef struct loco_attention_params {
    int heads;
    float scale;
    int causal;
    const int *kv_index;
    int qkv_packed;
} loco_attention_params;
loco_status loco_attention(loco_backend *be, loco_tensor *out, const loco_tensor *q, const loco_tensor *k,
                           const loco_tensor *v, const loco_attention_params *p, loco_err *err);

/* y = act(x), elementwise, same shape (in place allowed: y == x). */
loco_status loco_activation(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_act act, loco_err *err);

/* GEGLU: x [..., 2N] -> y [..., N] = x[..., :N] * gelu(x[..., N:]) (first half is the value). */
loco_status loco_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);

/* y = a + b, same shapes (in place allowed). */
loco_status loco_add(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, loco_err *err);

/* y[n, c, ...] = x[n, c, ...] + bias[n, c] : bias [N, C] broadcast over the trailing dims
 * (the ResNet time-embedding add). In place allowed. */
loco_status loco_add_channel_bias(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *bias,
                                  loco_err *err);

/* y = Σ_i coef[i] · x[i], same shapes, accumulated in fp32 in the order given. y may alias x[i]. */
loco_status loco_lincomb(loco_backend *be, loco_tensor *y, int n, const loco_tensor *const *x, const float *coef,
                         loco_err *err);

/* y = x, converting dtype when they differ; same numel. */
loco_status loco_copy(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);

/* Fill with a constant. */
loco_status loco_fill(loco_backend *be, loco_tensor *y, float value, loco_err *err);

/* Swap the last two logical axes of [N, A, B] -> [N, B, A]: NCHW <-> NLC with A=C, B=H*W. */
loco_status loco_transpose12(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);

/* Concatenate along `axis` (all other dims equal): channels of NCHW (axis 1), features (last). */
loco_status loco_concat(loco_backend *be, loco_tensor *y, const loco_tensor *a, const loco_tensor *b, int axis,
                        loco_err *err);

/* Nearest-neighbour upsampling of NCHW by 2 in H and W. */
loco_status loco_upsample_nearest2x(loco_backend *be, loco_tensor *y, const loco_tensor *x, loco_err *err);

/* y[i, :] = table[ids[i], :]; ids is a host array of n ids, y [n, C] (any leading shape with
 * numel n*C), table [V, C]. An id outside [0, V) is LOCO_EINVAL. */
loco_status loco_embedding(loco_backend *be, loco_tensor *y, const loco_tensor *table, const int32_t *ids, int64_t n,
                           loco_err *err);

/* y[..., c] = values[j] for c = channels[j] (host arrays of n): neuron-level ablation. */
loco_status loco_set_channels(loco_backend *be, loco_tensor *y, const int32_t *channels, const float *values, int n,
                              loco_err *err);

/* ---- graphs ------------------------------------------------------------------------------------
 * A graph records the ops this thread enqueues between loco_graph_capture_begin and
 * loco_graph_capture_end and replays them with loco_graph_launch: one launch instead of the
 * ~1000 of a UNet call (CUDA graphs). The CPU backend has none: loco_graph_new returns
 * LOCO_EUNSUPPORTED there, and so does CUDA when LOCO_CUDA_GRAPHS=0 was set when the backend
 * was created (the switch for debugging and for timing with and without graphs).
 *
 * A replay reads and writes exactly the addresses the captured ops used, so:
 *   - every tensor the captured ops touch must stay allocated at its address for as long as the
 *     graph is launched; callers copy varying inputs into fixed tensors before a launch and copy
 *     results out after it;
 *   - host arrays given to ops during capture (attention kv_index, embedding ids, coefficients)
 *     are baked into the graph: a change needs a new capture;
 *   - no upload, download, sync or allocation from outside the pool between begin and end.
 * Memory: while the graph's pool is active (pool_begin..pool_end, and during a capture) every
 * tensor allocation on the backend comes from a pool the graph owns, so the blocks its captured
 * ops use are never handed to anyone else; freeing a tensor that came from the pool gives its
 * block back to the pool, inside the period or after it. A capture never allocates device
 * memory (not allowed while capturing): run the same ops inside pool_begin/pool_end first, so
 * that the pool holds what they ask for; a capture whose ops ask for more than the pool holds
 * free fails with LOCO_EUNSUPPORTED and leaves the backend usable (run the ops in a pool period
 * once more, then capture again). One pool may be active per backend at a time. Free graphs
 * before their backend. */
typedef struct loco_graph loco_graph;

/* 1 when loco_graph_new can succeed on this backend. */
int loco_backend_has_graphs(const loco_backend *be);
loco_status loco_graph_new(loco_backend *be, loco_graph **out, loco_err *err);
/* Waits for the backend's queued work, then releases the graph and its pool. NULL is a no-op. */
void loco_graph_free(loco_graph *g);
loco_status loco_graph_pool_begin(loco_graph *g, loco_err *err);
/* Ends the pool's active period; returns how many device allocations the pool had to add
 * during it (0 for a period that began with all of the pool free: the ops fitted in what it
 * holds, so a capture of the same ops will fit too). */
size_t loco_graph_pool_end(loco_graph *g);
size_t loco_graph_pool_bytes(const loco_graph *g); /* device memory the pool holds */
/* Begin recording (the pool becomes active and may not grow). Every successful begin must be
 * followed by capture_end, or by capture_abort when an op in between failed. */
loco_status loco_graph_capture_begin(loco_graph *g, loco_err *err);
/* Stop recording and make the recorded ops launchable (replacing an earlier capture). On
 * failure the graph holds no launchable capture. */
loco_status loco_graph_capture_end(loco_graph *g, loco_err *err);
/* Stop recording and drop what was recorded; the graph holds no launchable capture. */
void loco_graph_capture_abort(loco_graph *g);
int loco_graph_ready(const loco_graph *g); /* a capture_end succeeded since the last failure */
loco_status loco_graph_launch(loco_graph *g, loco_err *err);

#ifdef __cplusplus
}
#endif
#endif
