/* attention_gemm.cu: the general attention path, for every case the fused kernel of
 * attention.cu does not instantiate: other head dims (the VAE's single 512-wide head, 128,
 * odd sizes), f32 activations, unaligned views.
 *
 * Scores are materialised, a slice of query rows at a time so the buffers stay under
 * ATT_BUDGET: S = scale * Q K^T (cuBLASLt, fp32 output, all heads as one strided batch),
 * a row softmax in fp32 into P (activation dtype), then O = P V (cuBLASLt) written straight
 * into the output rows. Both products run on tensor cores, which for head dim 512 is far
 * faster than a register-tiled fused kernel could be (its accumulators would not fit). */
#include <string.h>

#include "cuda_device.h"

#define ATT_BUDGET ((size_t)256 << 20)
#define SM_THREADS 256

__device__ __forceinline__ float block_reduce(float v, int is_max, float *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads(); /* sh may still be read from the previous reduction */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = lane < nw ? sh[lane] : (is_max ? -INFINITY : 0.0f);
    return is_max ? warp_max(r) : warp_sum(r);
}

/* Row r of S (length lk) is query q0 + r % nq of head r / nq; keys past the causal limit get
 * probability 0. */
template <typename T>
__global__ void __launch_bounds__(SM_THREADS) softmax_rows_kernel(T *P, const float *S, int64_t nq, int64_t lk,
                                                                  int64_t q0, int causal) {
    __shared__ float sh[32];
    int64_t r = blockIdx.x;
    const float *s = S + r * lk;
    T *pr = P + r * lk;
    int64_t qi = q0 + r % nq;
    int64_t kend = causal && qi + 1 < lk ? qi + 1 : lk;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < kend; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_reduce(m, 1, sh);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < kend; j += blockDim.x) sum += expf(s[j] - m);
    sum = block_reduce(sum, 0, sh);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int64_t j = threadIdx.x; j < lk; j += blockDim.x) pr[j] = from_f32<T>(j < kend ? expf(s[j] - m) * inv : 0.0f);
}

loco_status cuda_attention_gemm(cuda_impl *c, loco_tensor *out, const loco_tensor *q, const void *k, const void *v,
                                int64_t Lk, int64_t in_rs, const loco_attention_params *p, loco_err *err) {
    loco_dtype dt = out->dtype;
    int64_t B = q->shape[0], Lq = q->shape[1], HD = out->shape[2];
    int64_t H = p->heads, D = HD / H;
    size_t es = loco_dtype_size(dt);
    size_t per_row = (size_t)(H * Lk) * (4 + es);
    int64_t nq = (int64_t)(ATT_BUDGET / per_row);
    if (nq < 1) nq = 1;
    if (nq > Lq) nq = Lq;
    if ((int64_t)H * nq > 0x7fffffff) nq = 0x7fffffff / H;

    float *S = NULL;
    void *P = NULL;
    CUDA_TRY(cuda_alloc_get(c, (size_t)(H * nq * Lk) * 4, (void **)&S, err));
    loco_status st = cuda_alloc_get(c, (size_t)(H * nq * Lk) * es, &P, err);
    for (int64_t b = 0; b < B && st == LOCO_OK; b++) {
        int64_t kb = p->kv_index ? p->kv_index[b] : b;
        const char *kp = (const char *)k + (size_t)(kb * Lk * in_rs) * es;
        const char *vp = (const char *)v + (size_t)(kb * Lk * in_rs) * es;
        for (int64_t q0 = 0; q0 < Lq && st == LOCO_OK; q0 += nq) {
            int64_t n = Lq - q0 < nq ? Lq - q0 : nq;
            size_t qoff = (size_t)((b * Lq + q0) * in_rs) * es, ooff = (size_t)((b * Lq + q0) * HD) * es;
            /* S^T (Lk x n per head, column-major) = K_h (stored D x Lk, transposed) . Q_h (D x n) */
            cuda_gemm g;
            memset(&g, 0, sizeof g);
            g.transa = 1;
            g.m = Lk;
            g.n = n;
            g.k = D;
            g.lda = in_rs;
            g.ldb = in_rs;
            g.ldd = Lk;
            g.batch = (int)H;
            g.stride_a = D;
            g.stride_b = D;
            g.stride_d = n * Lk;
            g.ab_dtype = dt;
            g.d_dtype = LOCO_F32;
            g.a = kp;
            g.b = (const char *)q->data + qoff;
            g.d = S;
            g.alpha = p->scale;
            st = cuda_gemm_run(c, &g, err);
            if (st != LOCO_OK) break;

            CUDA_DISPATCH(dt, T, "attention", err, {
                LOCO_LAUNCH((unsigned)(H * n), SM_THREADS, 0, c->stream, softmax_rows_kernel<T>)((T *)P, S, n, Lk, q0,
                                                                                      p->causal != 0);
            });
            st = cuda_check_launch("softmax_rows_kernel", err);
            if (st != LOCO_OK) break;

            /* O^T (D x n per head, ld HD) = V_h (stored D x Lk) . P_h (Lk x n) */
            memset(&g, 0, sizeof g);
            g.m = D;
            g.n = n;
            g.k = Lk;
            g.lda = in_rs;
            g.ldb = Lk;
            g.ldd = HD;
            g.batch = (int)H;
            g.stride_a = D;
            g.stride_b = n * Lk;
            g.stride_d = D;
            g.ab_dtype = dt;
            g.d_dtype = dt;
            g.a = vp;
            g.b = P;
            g.d = (char *)out->data + ooff;
            g.alpha = 1.0f;
            st = cuda_gemm_run(c, &g, err);
        }
    }
    cuda_alloc_put(c, S);
    cuda_alloc_put(c, P);
    return st;
}
