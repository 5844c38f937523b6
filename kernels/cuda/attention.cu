/* attention.cu: fused multi-head attention (flash-attention style) on tensor cores.
 *
 * One block = 64 query rows of one head of one sample, 4 warps of 16 rows. K/V tiles of 64
 * keys (32 for head dim 160, to bound registers and shared memory) stream through shared
 * memory with cp.async, double-buffered so the next tile loads while this one is used.
 * S = Q K^T and O += P V run as m16n8k16 mma.sync with fp32 accumulators; the softmax is
 * online in fp32 (running max and sum per row, rescaling O when the max grows), so the
 * L x L score matrix never exists in memory. P is rounded to the activation dtype only as the
 * operand of the P V product, the same trade flash-attention makes.
 *
 * Head dims 40, 64, 80 and 160 (SD 1.x: 40/80/160; SD 2.x, SD-XL, CLIP, T5: 64) have
 * instantiations; the head dim is a template parameter because the accumulators must be
 * register arrays of compile-time size (a run-time size would put them in local memory).
 * Every other case (other head dims such as the VAE's single 512-wide head, f32
 * activations, unaligned views) takes the materialised path of attention_gemm.cu.
 *
 * kv_index: each query sample reads the K/V of sample kv[b]; the table rides in the kernel
 * arguments (up to FA_KV_MAX samples per launch), so it costs nothing and survives graph
 * capture. Causal masking (key j > query i) also skips key tiles wholly above the diagonal. */
#include <math.h>
#include <string.h>

#include "mma.h"

#define FA_THREADS 128
#define FA_BR 64       /* query rows per block */
#define FA_KV_MAX 256  /* samples per launch (kernel argument table) */
#define FA_DK(D) (((D) + 15) / 16 * 16) /* head dim rounded up for the k-steps of Q K^T */
#define FA_BC(D) ((D) > 128 ? 32 : 64)   /* keys per tile */
#define FA_LDS(D) (FA_DK(D) + 8)         /* smem row pitch: ldmatrix rows in distinct banks */
#define FA_SMEM(D) ((FA_BR + 4 * FA_BC(D)) * FA_LDS(D) * 2)

typedef struct fa_params {
    const void *q, *k, *v;
    void *o;
    int lq, lk;
    int64_t rs;           /* row stride of q/k/v/o in elements: heads * D */
    int64_t q_bs, kv_bs;  /* sample strides: Lq * rs, Lk * rs */
    float scale_log2;     /* scale * log2(e): the softmax runs in base 2 */
    int causal;
    int b0;               /* first query sample of this launch */
    int kv[FA_KV_MAX];    /* K/V sample of each query sample of this launch */
} fa_params;

template <typename T, int D>
__device__ __forceinline__ void fa_load_kv(T *skb, T *svb, const T *kg, const T *vg, int key0, int lk, int64_t rs,
                                           int tid) {
    const int LDS = FA_LDS(D), DV = D / 8;
    for (int i = tid; i < FA_BC(D) * DV; i += FA_THREADS) {
        int r = i / DV, cv = i - r * DV, key = key0 + r;
        bool ok = key < lk;
        int64_t off = ok ? (int64_t)key * rs + cv * 8 : 0;
        cp_async16(skb + r * LDS + cv * 8, kg + off, ok ? 16 : 0); /* rows past Lk become zeros */
        cp_async16(svb + r * LDS + cv * 8, vg + off, ok ? 16 : 0);
    }
}

template <typename T, int D> __global__ void __launch_bounds__(FA_THREADS) flash_attn_kernel(const fa_params p) {
    constexpr int DK = FA_DK(D), BC = FA_BC(D), LDS = FA_LDS(D);
    constexpr int NKS = DK / 16; /* k-steps of Q K^T */
    constexpr int NST = BC / 8;  /* score tiles of 8 keys */
    constexpr int NDT = D / 8;   /* output tiles of 8 dims */
    constexpr int DV = D / 8;    /* 16-byte vectors per row */
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T *sq = (T *)fa_smem;       /* [FA_BR][LDS] */
    T *sk = sq + FA_BR * LDS;   /* [2][BC][LDS] */
    T *sv = sk + 2 * BC * LDS;  /* [2][BC][LDS] */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * FA_BR, h = blockIdx.y;
    const int64_t b = (int64_t)p.b0 + blockIdx.z, kb = p.kv[blockIdx.z];
    const T *qg = (const T *)p.q + b * p.q_bs + (int64_t)h * D;
    const T *kg = (const T *)p.k + kb * p.kv_bs + (int64_t)h * D;
    const T *vg = (const T *)p.v + kb * p.kv_bs + (int64_t)h * D;

    /* columns D..DK-1 of Q and K take part in Q K^T's last k-step: zero them once (cp.async
     * never writes them) */
    if (DK > D) {
        constexpr int PADC = DK > D ? DK - D : 1; /* (1 only keeps the dead branch compilable) */
        const T z = from_f32<T>(0.0f);
        for (int i = tid; i < (FA_BR + 2 * BC) * PADC; i += FA_THREADS) {
            int r = i / PADC, cc = D + i % PADC;
            if (r < FA_BR)
                sq[r * LDS + cc] = z;
            else
                sk[(r - FA_BR) * LDS + cc] = z;
        }
    }
    for (int i = tid; i < FA_BR * DV; i += FA_THREADS) {
        int r = i / DV, cv = i - r * DV, qr = q0 + r;
        bool ok = qr < p.lq;
        cp_async16(sq + r * LDS + cv * 8, qg + (ok ? (int64_t)qr * p.rs + cv * 8 : 0), ok ? 16 : 0);
    }
    int kend = p.lk;
    if (p.causal) {
        int last_q = (q0 + FA_BR < p.lq ? q0 + FA_BR : p.lq) - 1;
        if (last_q + 1 < kend) kend = last_q + 1;
    }
    const int ntiles = (kend + BC - 1) / BC;
    if (ntiles > 0) fa_load_kv<T, D>(sk, sv, kg, vg, 0, p.lk, p.rs, tid);
    cp_async_commit(); /* group 0: Q and K/V tile 0 */

    uint32_t qf[NKS][4];
    float o[NDT][4];
#pragma unroll
    for (int d = 0; d < NDT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float mr0 = -INFINITY, mr1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int tq = lane & 3;
    const int row0 = q0 + warp * 16 + (lane >> 2), row1 = row0 + 8;

    for (int j = 0; j < ntiles; j++) {
        const int buf = j & 1;
        if (j + 1 < ntiles) { /* prefetch the next tile into the other buffer */
            fa_load_kv<T, D>(sk + (buf ^ 1) * BC * LDS, sv + (buf ^ 1) * BC * LDS, kg, vg, (j + 1) * BC, p.lk, p.rs,
                             tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (j == 0) {
#pragma unroll
            for (int ks = 0; ks < NKS; ks++)
                ldmatrix_x4(qf[ks], sq + (warp * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
        }
        const T *skb = sk + buf * BC * LDS, *svb = sv + buf * BC * LDS;

        /* S = Q K^T for this warp's 16 rows and the tile's BC keys */
        float s[NST][4];
#pragma unroll
        for (int nt = 0; nt < NST; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < NKS; ks++)
#pragma unroll
            for (int np = 0; np < NST / 2; np++) {
                uint32_t kf[4];
                ldmatrix_x4(kf, skb + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + ks * 16 +
                                    ((lane >> 3) & 1) * 8);
                mma16816<T>(s[2 * np], qf[ks], kf);
                mma16816<T>(s[2 * np + 1], qf[ks], kf + 2);
            }

        /* scale (base 2), mask, online softmax */
        const int key0 = j * BC;
        const bool edge = key0 + BC > p.lk || (p.causal && key0 + BC - 1 > q0 + warp * 16);
#pragma unroll
        for (int nt = 0; nt < NST; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[nt][e] *= p.scale_log2;
                if (edge) {
                    int key = key0 + nt * 8 + 2 * tq + (e & 1), row = e < 2 ? row0 : row1;
                    if (key >= p.lk || (p.causal && key > row)) s[nt][e] = -INFINITY;
                }
            }
        float mx0 = mr0, mx1 = mr1;
#pragma unroll
        for (int nt = 0; nt < NST; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* a row with every key masked so far keeps max -inf; use 0 as its reference so that
         * no -inf - -inf appears */
        const float base0 = mx0 == -INFINITY ? 0.0f : mx0, base1 = mx1 == -INFINITY ? 0.0f : mx1;
        const float c0 = exp2f(mr0 - base0), c1 = exp2f(mr1 - base1);
        mr0 = mx0;
        mr1 = mx1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int d = 0; d < NDT; d++) {
            o[d][0] *= c0;
            o[d][1] *= c0;
            o[d][2] *= c1;
            o[d][3] *= c1;
        }
#pragma unroll
        for (int nt = 0; nt < NST; nt++) {
            s[nt][0] = exp2f(s[nt][0] - base0);
            s[nt][1] = exp2f(s[nt][1] - base0);
            s[nt][2] = exp2f(s[nt][2] - base1);
            s[nt][3] = exp2f(s[nt][3] - base1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
        }

        /* O += P V: two score tiles (16 keys) form one A operand in registers */
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            uint32_t pa[4];
            pa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            const T *vrow = svb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS;
#pragma unroll
            for (int dp = 0; dp < NDT / 2; dp++) {
                uint32_t vf[4];
                ldmatrix_x4_trans(vf, vrow + dp * 16 + (lane >> 4) * 8);
                mma16816<T>(o[2 * dp], pa, vf);
                mma16816<T>(o[2 * dp + 1], pa, vf + 2);
            }
            if (NDT & 1) { /* head dim 40: an odd number (5) of 8-wide tiles (80 has 10) */
                uint32_t vf[2];
                ldmatrix_x2_trans(vf, vrow + (NDT - 1) * 8);
                mma16816<T>(o[NDT - 1], pa, vf);
            }
        }
        __syncthreads(); /* the next iteration's prefetch overwrites this buffer */
    }
    cp_async_wait<0>();

    /* each quad of lanes holds partial row sums: combine, normalise, store */
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    T *og = (T *)p.o + b * p.q_bs + (int64_t)h * D + 2 * tq;
    if (row0 < p.lq) {
        T *orow = og + (int64_t)row0 * p.rs;
#pragma unroll
        for (int d = 0; d < NDT; d++) *(uint32_t *)(orow + d * 8) = pack2<T>(o[d][0] * inv0, o[d][1] * inv0);
    }
    if (row1 < p.lq) {
        T *orow = og + (int64_t)row1 * p.rs;
#pragma unroll
        for (int d = 0; d < NDT; d++) *(uint32_t *)(orow + d * 8) = pack2<T>(o[d][2] * inv1, o[d][3] * inv1);
    }
}

/* ---- host side ------------------------------------------------------------------------------ */

#define FA_FOR_EACH(X) X(__half, 40) X(__half, 64) X(__half, 80) X(__half, 160) \
    X(__nv_bfloat16, 40) X(__nv_bfloat16, 64) X(__nv_bfloat16, 80) X(__nv_bfloat16, 160)

static int fa_has_dim(int64_t d) { return d == 40 || d == 64 || d == 80 || d == 160; }

loco_status cuda_attention_setup(cuda_impl *c, loco_err *err) {
    (void)c;
    cudaError_t e = cudaSuccess;
#define FA_SET(T, D)                                                                                     \
    if (e == cudaSuccess)                                                                                \
        e = cudaFuncSetAttribute(flash_attn_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                 FA_SMEM(D));
    FA_FOR_EACH(FA_SET)
#undef FA_SET
    if (e == cudaErrorInvalidDeviceFunction || e == cudaErrorNoKernelImageForDevice) {
        cudaGetLastError();
        return loco_err_set(err, LOCO_EDEVICE,
                            "this build has no kernels for compute capability %d.%d (built for sm_80 and sm_90); "
                            "rebuild with CUDA_ARCHS naming it",
                            c->cc_major, c->cc_minor);
    }
    return cuda_check(e, "cudaFuncSetAttribute(flash_attn_kernel)", err);
}

static loco_status flash_launch(cuda_impl *c, loco_dtype dt, int D, dim3 grid, const fa_params *fp, loco_err *err) {
    if (dt == LOCO_F16) {
        switch (D) {
        case 40: flash_attn_kernel<__half, 40><<<grid, FA_THREADS, FA_SMEM(40), c->stream>>>(*fp); break;
        case 64: flash_attn_kernel<__half, 64><<<grid, FA_THREADS, FA_SMEM(64), c->stream>>>(*fp); break;
        case 80: flash_attn_kernel<__half, 80><<<grid, FA_THREADS, FA_SMEM(80), c->stream>>>(*fp); break;
        default: flash_attn_kernel<__half, 160><<<grid, FA_THREADS, FA_SMEM(160), c->stream>>>(*fp); break;
        }
    } else {
        switch (D) {
        case 40: flash_attn_kernel<__nv_bfloat16, 40><<<grid, FA_THREADS, FA_SMEM(40), c->stream>>>(*fp); break;
        case 64: flash_attn_kernel<__nv_bfloat16, 64><<<grid, FA_THREADS, FA_SMEM(64), c->stream>>>(*fp); break;
        case 80: flash_attn_kernel<__nv_bfloat16, 80><<<grid, FA_THREADS, FA_SMEM(80), c->stream>>>(*fp); break;
        default: flash_attn_kernel<__nv_bfloat16, 160><<<grid, FA_THREADS, FA_SMEM(160), c->stream>>>(*fp); break;
        }
    }
    return cuda_check_launch("flash_attn_kernel", err);
}

extern "C" loco_status cuda_op_attention(loco_backend *be, loco_tensor *out, const loco_tensor *q,
                                         const loco_tensor *k, const loco_tensor *v,
                                         const loco_attention_params *p, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    loco_dtype dt = out->dtype;
    if (q->dtype != dt || k->dtype != dt || v->dtype != dt || !cuda_is_act_dtype(dt))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda attention: q/k/v/out must share the activation dtype "
                            "(q %s, k %s, v %s, out %s)", cuda_dt(q->dtype), cuda_dt(k->dtype), cuda_dt(v->dtype),
                            cuda_dt(dt));
    int64_t B = q->shape[0], Lq = q->shape[1], HD = q->shape[2], Bk = k->shape[0], Lk = k->shape[1];
    int64_t H = p->heads, D = H > 0 ? HD / H : 0;
    if (B <= 0 || Lq <= 0 || HD <= 0) return LOCO_OK;
    if (H <= 0 || D * H != HD)
        return loco_err_set(err, LOCO_EINVAL, "attention: %lld channels do not split into %lld heads",
                            (long long)HD, (long long)H);
    if (p->kv_index)
        for (int64_t b = 0; b < B; b++)
            if (p->kv_index[b] < 0 || p->kv_index[b] >= Bk)
                return loco_err_set(err, LOCO_EINVAL, "attention: kv_index[%lld] = %d is outside [0, %lld)",
                                    (long long)b, p->kv_index[b], (long long)Bk);
    if (Lk <= 0) /* nothing to attend to: the softmax of an empty row is taken as zero output */
        return cuda_check(cudaMemsetAsync(out->data, 0, loco_tensor_nbytes(out), c->stream),
                          "cuda attention: cudaMemsetAsync", err);

    int flash = (dt == LOCO_F16 || dt == LOCO_BF16) && fa_has_dim(D) && H <= 65535 && Lq < ((int64_t)1 << 30) &&
                Lk < ((int64_t)1 << 30) && cuda_aligned(q->data, 16) && cuda_aligned(k->data, 16) &&
                cuda_aligned(v->data, 16) && cuda_aligned(out->data, 16);
    if (!flash) return cuda_attention_gemm(c, out, q, k, v, p, err);

    fa_params fp;
    memset(&fp, 0, sizeof fp);
    fp.q = q->data;
    fp.k = k->data;
    fp.v = v->data;
    fp.o = out->data;
    fp.lq = (int)Lq;
    fp.lk = (int)Lk;
    fp.rs = HD;
    fp.q_bs = Lq * HD;
    fp.kv_bs = Lk * HD;
    fp.scale_log2 = p->scale * 1.4426950408889634f;
    fp.causal = p->causal != 0;
    for (int64_t b0 = 0; b0 < B; b0 += FA_KV_MAX) {
        int nb = (int)(B - b0 < FA_KV_MAX ? B - b0 : FA_KV_MAX);
        fp.b0 = (int)b0;
        for (int i = 0; i < nb; i++) fp.kv[i] = p->kv_index ? p->kv_index[b0 + i] : (int)(b0 + i);
        dim3 grid((unsigned)((Lq + FA_BR - 1) / FA_BR), (unsigned)H, (unsigned)nb);
        CUDA_TRY(flash_launch(c, dt, (int)D, grid, &fp, err));
    }
    return LOCO_OK;
}
