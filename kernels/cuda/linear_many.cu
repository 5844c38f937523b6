/* linear_many.cu: loco_linear_many on the GPU, for a few rows: many linear layers of one small
 * input in one kernel.
 *
 * Why: a UNet call projects SiLU(temb) [B, 1280] once per ResNet block (22 in SD 1.5, from 320
 * to 1280 outputs each), 22 cuBLASLt GEMMs of B = 16 rows bound by launches and mostly empty
 * tiles. On an H200 (run 6, op_bench's unet_temb_b16 row) the 22 GEMMs took 0.167 ms, this
 * kernel 0.088 ms: 0.6 TB/s of the weights (52 MB in f16), still far from the memory's speed
 * (more rows of w in flight per warp is the next step).
 *
 * Layout: x is staged once per block in shared memory; one warp computes one output feature o
 * of one layer for every row: each lane takes 16-byte vectors of w's row o (read once, from
 * global memory) and of x's rows (from shared memory), accumulates in fp32, and the warp sums
 * per row; lane 0 adds the bias and rounds once. The layers ride in the kernel arguments in
 * chunks of LM_LAYERS (as the flash kernel's K/V table): a captured CUDA graph keeps them. */
#include <string.h>

#include "cuda_device.h"

#define LM_LAYERS 48   /* layers per launch: 48 x 32 bytes of kernel arguments */
#define LM_MAX_ROWS 32 /* rows of x the kernel takes (more: cuBLASLt, per layer) */
#define LM_SMEM_MAX (48 << 10)
#define LM_THREADS 256
#define LM_VPL 8 /* 16-byte vectors of a weight row per lane: k up to 256 V (2048 f16, 1024 f32) */

typedef struct lm_layer {
    const void *w, *b; /* [n, k] and [n] (or NULL), in the activation dtype */
    void *y;           /* [rows, n] */
    int n, first;      /* outputs, and this layer's first output in the launch's numbering */
} lm_layer;

typedef struct lm_params {
    const void *x;
    int rows, k, total, layers;
    lm_layer l[LM_LAYERS];
} lm_params;

template <typename T>
__global__ void __launch_bounds__(LM_THREADS) linear_many_kernel(const lm_params p) {
    constexpr int V = 16 / sizeof(T);
    LOCO_DYN_SMEM(float4, lm_smem, 16);
    const vec16<T> *sx = (const vec16<T> *)lm_smem;
    const int kv = p.k / V, lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < p.rows * kv; i += blockDim.x) ((vec16<T> *)lm_smem)[i] = ((const vec16<T> *)p.x)[i];
    __syncthreads();
    const int warps = gridDim.x * (blockDim.x >> 5);
    for (int g = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; g < p.total; g += warps) {
        int li = 0;
        while (li + 1 < p.layers && p.l[li + 1].first <= g) li++;
        const lm_layer &L = p.l[li];
        const int o = g - L.first;
        const vec16<T> *wr = (const vec16<T> *)L.w + (size_t)o * kv;
        /* the whole row of w first (LM_VPL vectors per lane at most): its loads are in flight
         * together, not one per round of arithmetic */
        vec16<T> wv[LM_VPL];
#pragma unroll
        for (int j = 0; j < LM_VPL; j++)
            if (lane + 32 * j < kv) wv[j] = wr[lane + 32 * j];
        float acc[LM_MAX_ROWS];
#pragma unroll
        for (int r = 0; r < LM_MAX_ROWS; r++) acc[r] = 0.0f;
#pragma unroll
        for (int j = 0; j < LM_VPL; j++) {
            const int c = lane + 32 * j;
            if (c >= kv) break;
#pragma unroll
            for (int r = 0; r < LM_MAX_ROWS; r++) {
                if (r >= p.rows) break;
                const vec16<T> xv = sx[r * kv + c];
#pragma unroll
                for (int e = 0; e < V; e++) acc[r] = fmaf(to_f32(wv[j].v[e]), to_f32(xv.v[e]), acc[r]);
            }
        }
        const float bias = L.b ? to_f32(((const T *)L.b)[o]) : 0.0f;
#pragma unroll
        for (int r = 0; r < LM_MAX_ROWS; r++) {
            if (r >= p.rows) break;
            const float sum = warp_sum(acc[r]);
            if (lane == 0) ((T *)L.y)[(size_t)r * L.n + o] = from_f32<T>(sum + bias);
        }
    }
}

/* backend_impl.h's linear_many: declines (LOCO_EUNSUPPORTED, nothing launched) what the kernel
 * does not take, and backend_ops.c then runs one loco_linear per layer. */
extern "C" loco_status cuda_op_linear_many(loco_backend *be, int n, loco_tensor *const *y, const loco_tensor *x,
                                           const loco_tensor *const *w, const loco_tensor *const *bias,
                                           loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    const loco_dtype dt = x->dtype;
    const int64_t rows = x->shape[0], k = x->shape[1];
    const size_t es = loco_dtype_size(dt), smem = (size_t)(rows * k) * es;
    int ok = cuda_is_act_dtype(dt) && rows >= 1 && rows <= LM_MAX_ROWS && k > 0 && (k * (int64_t)es) % 16 == 0 &&
             k * (int64_t)es <= 16 * 32 * LM_VPL && smem <= LM_SMEM_MAX && cuda_aligned(x->data, 16);
    for (int i = 0; ok && i < n; i++)
        ok = y[i]->dtype == dt && w[i]->dtype == dt && (!bias || !bias[i] || bias[i]->dtype == dt) &&
             cuda_aligned(w[i]->data, 16) && w[i]->shape[0] <= INT32_MAX / 2;
    if (!ok) return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda linear_many: not this call's shape or dtypes");
    lm_params p;
    memset(&p, 0, sizeof p);
    p.x = x->data;
    p.rows = (int)rows;
    p.k = (int)k;
    for (int i0 = 0; i0 < n; i0 += LM_LAYERS) {
        p.layers = n - i0 < LM_LAYERS ? n - i0 : LM_LAYERS;
        int64_t total = 0;
        for (int j = 0; j < p.layers; j++) {
            const int i = i0 + j;
            if (total + w[i]->shape[0] > INT32_MAX) return loco_err_set(err, LOCO_EINVAL, "cuda linear_many: too many outputs");
            p.l[j].w = w[i]->data;
            p.l[j].b = bias && bias[i] ? bias[i]->data : NULL;
            p.l[j].y = y[i]->data;
            p.l[j].n = (int)w[i]->shape[0];
            p.l[j].first = (int)total;
            total += w[i]->shape[0];
        }
        p.total = (int)total;
        if (total == 0) continue;
        /* up to 4 blocks per SM: each stages x (rows x k) once, and 32 warps per SM keep enough
         * weight rows in flight */
        int64_t want = (total + LM_THREADS / 32 - 1) / (LM_THREADS / 32);
        if (want > 4 * (int64_t)c->sm_count) want = 4 * (int64_t)c->sm_count;
        const unsigned blocks = (unsigned)want;
        CUDA_DISPATCH(dt, T, "linear_many", err, {
            LOCO_LAUNCH(blocks, LM_THREADS, smem, c->stream, linear_many_kernel<T>)(p);
        });
        CUDA_TRY(cuda_check_launch("linear_many_kernel", err));
    }
    return LOCO_OK;
}
