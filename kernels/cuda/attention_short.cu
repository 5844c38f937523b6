/* attention_short.cu: attention over at most 80 keys: the text that every cross-attention of
 * the UNets reads (77 CLIP or T5 tokens) and CLIP's own causal self-attention.
 *
 * Why a kernel of its own: with so few keys, attention is a pass over memory (read Q, write O:
 * about 75 flops per byte of them at head dim 64, where the tensor cores need several hundred
 * to be the limit), and the flash kernel (attention.cu) is built for the
 * opposite: each block loads its 128 query rows once, then waits for K/V tiles one after another.
 * Over 77 keys that is one dependent chain per block (load Q and two K/V tiles, the products,
 * the store) with nothing in flight behind it, and the second tile holds 13 keys of 64. Run 6 on
 * an H200 measured SD-XL's 1024-token cross-attention at batch 16 at 1.0 TB/s (82 us a call,
 * 60 calls per UNet call) and SD 1.5's 4096-token one at 0.64 TB/s.
 *
 * Here a block holds one (sample, head)'s K and V in shared memory (one tile of 80 keys, loaded
 * once) and its warps stream the query rows through it, 16 rows a step, each warp with its own
 * two Q buffers: while a warp computes one chunk, the cp.async of its next chunk is in flight.
 * Each step is exact softmax over the whole tile (no running max or rescale: the tile is all the
 * keys), P V with mma.sync, and O written back through the chunk's Q buffer so that the global
 * stores are 16-byte rows instead of 4-byte pieces.
 *
 * Same arguments as the flash kernels (flash_params.h): per-sample K/V rows through the kv
 * table, causal masking, packed q|k|v rows; the same rounding (P rounded to the activation dtype
 * as the operand of P V, its sums in fp32). Head dims 40, 64, 80 and 160; f16 and bf16. */
#include <math.h>
#include <string.h>

#include "flash_params.h"
#include "flash_softmax.cuh"
#include "mma.h"

#define SA_KEYS 80    /* keys held: 77 tokens rounded up to the k16 steps of P V */
#define SA_WARPS 4
#define SA_THREADS (32 * SA_WARPS)
#define SA_ROWS 16    /* query rows per warp step (one m16 tile) */
#define SA_DK(D) (((D) + 15) / 16 * 16)
#define SA_LDS(D) (SA_DK(D) + 8) /* smem row pitch, as attention.cu: ldmatrix rows in distinct banks */
/* K [SA_KEYS][LDS], V [SA_KEYS][LDS], then each warp's two Q buffers [SA_ROWS][LDS] */
#define SA_SMEM(D) ((2 * SA_KEYS + SA_WARPS * 2 * SA_ROWS) * SA_LDS(D) * 2)

/* 16 query rows from row q (of the block's range, which ends at q_end) into a Q buffer; rows at
 * or past q_end become zeros. */
template <typename T, int D>
__device__ __forceinline__ void sa_load_q(T *sq, const T *qg, int64_t rs, int q, int q_end, int lane) {
    constexpr int LDS = SA_LDS(D), DV = D / 8;
#pragma unroll
    for (int it = 0; it < (SA_ROWS * DV + 31) / 32; it++) {
        const int i = lane + 32 * it;
        if ((SA_ROWS * DV) % 32 != 0 && i >= SA_ROWS * DV) break;
        const int r = i / DV, cv = i - r * DV;
        const bool ok = q + r < q_end;
        cp_async16(sq + r * LDS + cv * 8, qg + (ok ? (int64_t)(q + r) * rs + cv * 8 : 0), ok ? 16 : 0);
    }
}

/* grid (row blocks, heads, samples of this launch); block x covers query rows
 * [x rows_per_block, +rows_per_block), a multiple of 16. */
template <typename T, int D>
__global__ void __launch_bounds__(SA_THREADS) short_attn_kernel(const fa_params p, int rows_per_block) {
    constexpr int DK = SA_DK(D), LDS = SA_LDS(D), NKS = DK / 16, DV = D / 8;
    constexpr int NST = SA_KEYS / 8; /* score tiles of 8 keys */
    constexpr int NDT = D / 8;       /* output tiles of 8 dims */
    LOCO_DYN_SMEM(unsigned char, fa_smem, 16);
    T *sk = (T *)fa_smem;
    T *sv = sk + SA_KEYS * LDS;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, tq = lane & 3;
    T *sqw = sv + SA_KEYS * LDS + warp * 2 * SA_ROWS * LDS; /* this warp's two Q buffers */

    const int h = blockIdx.y;
    const int64_t b = (int64_t)p.b0 + blockIdx.z, kb = p.kv[blockIdx.z];
    const T *qg = (const T *)p.q + b * p.q_bs + (int64_t)h * D;
    const T *kg = (const T *)p.k + kb * p.kv_bs + (int64_t)h * D;
    const T *vg = (const T *)p.v + kb * p.kv_bs + (int64_t)h * D;
    T *og = (T *)p.o + b * p.o_bs + (int64_t)h * D;
    const int q0 = blockIdx.x * rows_per_block;
    const int q_end = q0 + rows_per_block < p.lq ? q0 + rows_per_block : p.lq;
    const int nchunks = (q_end - q0 + SA_ROWS - 1) / SA_ROWS;

    /* Columns D..DK-1 of K and of the Q buffers take part in Q K^T's last k-step and cp.async
     * never writes them: zeros, once. */
    if (DK > D) {
        constexpr int PADC = DK > D ? DK - D : 1; /* (1 only keeps the dead branch compilable) */
        const T z = from_f32<T>(0.0f);
        for (int i = tid; i < (SA_KEYS + SA_WARPS * 2 * SA_ROWS) * PADC; i += SA_THREADS) {
            const int r = i / PADC, cc = D + i % PADC;
            (r < SA_KEYS ? sk + r * LDS : sv + SA_KEYS * LDS + (r - SA_KEYS) * LDS)[cc] = z;
        }
    }
    /* K and V once (rows past Lk become zeros: their scores are masked and their P is 0, and
     * 0 times a zero V row stays 0), then this warp's first two chunks */
    for (int i = tid; i < SA_KEYS * DV; i += SA_THREADS) {
        const int r = i / DV, cv = i - r * DV;
        const bool ok = r < p.lk;
        const int64_t off = ok ? r * p.rs + cv * 8 : 0; /* (80 packed rows can pass 2^31 elements) */
        cp_async16(sk + r * LDS + cv * 8, kg + off, ok ? 16 : 0);
        cp_async16(sv + r * LDS + cv * 8, vg + off, ok ? 16 : 0);
    }
    cp_async_commit(); /* group: K and V */
#pragma unroll
    for (int s = 0; s < 2; s++) {
        const int c = warp + s * SA_WARPS;
        if (c < nchunks) sa_load_q<T, D>(sqw + s * SA_ROWS * LDS, qg, p.rs, q0 + c * SA_ROWS, q_end, lane);
        cp_async_commit(); /* group: chunk c (empty when the warp has none): chunk order = group order */
    }
    cp_async_wait<2>(); /* this thread's part of K and V */
    __syncthreads();    /* everyone's, and the zeroed pad columns */

    const bool mask = p.lk < SA_KEYS || p.causal;
    for (int it = 0, c = warp; c < nchunks; it++, c += SA_WARPS) {
        T *sq = sqw + (it & 1) * SA_ROWS * LDS;
        const int r0 = q0 + c * SA_ROWS; /* this chunk's first row */
        cp_async_wait<1>(); /* chunk c landed (the next one may still be loading) */
        __syncwarp();       /* ... for every lane of the warp */

        uint32_t qf[NKS][4];
#pragma unroll
        for (int ks = 0; ks < NKS; ks++) ldmatrix_x4(qf[ks], sq + (lane & 15) * LDS + ks * 16 + (lane >> 4) * 8);

        /* S = Q K^T over all the keys */
        float s[NST][4];
#pragma unroll
        for (int nt = 0; nt < NST; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < NKS; ks++)
#pragma unroll
            for (int np = 0; np < NST / 2; np++) {
                uint32_t kf[4];
                ldmatrix_x4(kf, sk + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + ks * 16 + ((lane >> 3) & 1) * 8);
                mma16816<T>(s[2 * np], qf[ks], kf);
                mma16816<T>(s[2 * np + 1], qf[ks], kf + 2);
            }
        /* keys past Lk (and, causal, past the row). The text's 73-79 keys leave only the last
         * 8-key tile to mask: that case alone, then everything else per element (masking every
         * element was 126 of the loop's 783 instructions at head dim 64; a branch per tile cost
         * 19 registers, a block per SM) */
        if (mask && !p.causal && p.lk > SA_KEYS - 8) {
#pragma unroll
            for (int e = 0; e < 4; e++)
                if ((NST - 1) * 8 + 2 * tq + (e & 1) >= p.lk) s[NST - 1][e] = -INFINITY;
        } else if (mask) {
            const int g = lane >> 2;
#pragma unroll
            for (int nt = 0; nt < NST; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = nt * 8 + 2 * tq + (e & 1), row = r0 + g + (e < 2 ? 0 : 8);
                    if (key >= p.lk || (p.causal && key > row)) s[nt][e] = -INFINITY;
                }
        }
        /* exact softmax over the tile: the online step from a state with no keys seen (its
         * rescale of the zero O is dead code for the compiler), then P as P V's A fragments */
        float o[NDT][4], mr[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
        for (int d = 0; d < NDT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
        fa_softmax_step<NST, NDT, 1>(s, o, mr, l, p.scale_log2);
        uint32_t pa[NST / 2][4];
        fa_pack_p<T, NST>(s, pa);

        /* O = P V */
#pragma unroll
        for (int kk = 0; kk < NST / 2; kk++) {
            const T *vrow = sv + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS;
#pragma unroll
            for (int dp = 0; dp < NDT / 2; dp++) {
                uint32_t vf[4];
                ldmatrix_x4_trans(vf, vrow + dp * 16 + (lane >> 4) * 8);
                mma16816<T>(o[2 * dp], pa[kk], vf);
                mma16816<T>(o[2 * dp + 1], pa[kk], vf + 2);
            }
            if (NDT & 1) { /* head dim 40: five 8-wide tiles */
                uint32_t vf[2];
                ldmatrix_x2_trans(vf, vrow + (NDT - 1) * 8);
                mma16816<T>(o[NDT - 1], pa[kk], vf);
            }
        }

        /* normalise into the chunk's Q buffer (its Q is in registers now), then out as rows of
         * 16-byte vectors */
        float l0 = l[0], l1 = l[1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
        __syncwarp(); /* every lane's ldmatrix of Q is done before the buffer is overwritten */
        T *srow0 = sq + (lane >> 2) * LDS + 2 * tq, *srow1 = srow0 + 8 * LDS;
#pragma unroll
        for (int d = 0; d < NDT; d++) {
            *(uint32_t *)(srow0 + d * 8) = pack2<T>(o[d][0] * inv0, o[d][1] * inv0);
            *(uint32_t *)(srow1 + d * 8) = pack2<T>(o[d][2] * inv1, o[d][3] * inv1);
        }
        __syncwarp();
#pragma unroll
        for (int i2 = 0; i2 < (SA_ROWS * DV + 31) / 32; i2++) {
            const int i = lane + 32 * i2;
            if ((SA_ROWS * DV) % 32 != 0 && i >= SA_ROWS * DV) break;
            const int r = i / DV, cv = i - r * DV;
            if (r0 + r < q_end)
                *(uint4 *)(og + (int64_t)(r0 + r) * p.o_rs + cv * 8) = *(const uint4 *)(sq + r * LDS + cv * 8);
        }
        __syncwarp(); /* the buffer's reads are done before the chunk after next lands in it */
        const int cn = c + 2 * SA_WARPS;
        if (cn < nchunks) sa_load_q<T, D>(sq, qg, p.rs, q0 + cn * SA_ROWS, q_end, lane);
        cp_async_commit(); /* possibly empty: keeps chunk order = group order */
    }
    cp_async_wait<0>();
}

/* ---- host side ------------------------------------------------------------------------------ */

#define SA_FOR_EACH_T(X, T) X(T, 40) X(T, 64) X(T, 80) X(T, 160)
#define SA_FOR_EACH(X) SA_FOR_EACH_T(X, __half) SA_FOR_EACH_T(X, __nv_bfloat16)

template <int D> static cudaError_t sa_occupancy(int *blocks_per_sm) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, short_attn_kernel<__half, D>, SA_THREADS,
                                                         SA_SMEM(D));
}

/* Raises the shared-memory limits, then asks how many blocks of each head dim an SM holds
 * (registers and shared memory; the f16 and bf16 kernels use the same), for sa_rows_per_block. */
loco_status cuda_attention_short_setup(cuda_impl *c, loco_err *err) {
    cudaError_t e = cudaSuccess;
#define SA_SET(T, D)                                                                                   \
    if (e == cudaSuccess)                                                                              \
        e = cudaFuncSetAttribute(short_attn_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                 SA_SMEM(D));
    SA_FOR_EACH(SA_SET)
#undef SA_SET
    CUDA_TRY(cuda_check(e, "cudaFuncSetAttribute(short_attn_kernel)", err));
    e = sa_occupancy<40>(&c->short_bps[0]);
    if (e == cudaSuccess) e = sa_occupancy<64>(&c->short_bps[1]);
    if (e == cudaSuccess) e = sa_occupancy<80>(&c->short_bps[2]);
    if (e == cudaSuccess) e = sa_occupancy<160>(&c->short_bps[3]);
    return cuda_check(e, "cudaOccupancyMaxActiveBlocksPerMultiprocessor(short_attn_kernel)", err);
}

int cuda_attention_short_applies(const cuda_impl *c, int64_t D, int64_t lk) {
    return c->flash_short && lk >= 1 && lk <= SA_KEYS && (D == 40 || D == 64 || D == 80 || D == 160);
}

/* Rows per block: one wave of the blocks the GPU holds at once (c->short_bps per SM, from the
 * occupancy calculator at setup) spread over the launch's (sample, head) pairs, in multiples of
 * 64 rows so that the four warps get equal numbers of 16-row steps, and at most the whole
 * sequence. SD-XL's 1024-token level at batch 16 on an H200 (320 pairs, 5 blocks of head dim 64
 * per SM: 660): 2 blocks of 512 rows per pair; SD 1.5's 4096-token one at batch 16 (128 pairs):
 * 5 of 832. With more pairs than that, a block per pair and as many waves as it takes.
 * LOCO_CUDA_FLASH_SHORT_ROWS=n sets it (rounded up to 16). */
static int sa_rows_per_block(const cuda_impl *c, int D, int64_t lq, int64_t pairs) {
    if (c->short_rows > 0 && c->short_rows <= (1 << 20)) return (c->short_rows + SA_ROWS - 1) / SA_ROWS * SA_ROWS;
    const int di = D == 40 ? 0 : D == 64 ? 1 : D == 80 ? 2 : 3;
    const int64_t resident = (int64_t)c->sm_count * (c->short_bps[di] > 0 ? c->short_bps[di] : 1);
    int64_t per_pair = resident / pairs;
    const int64_t most = (lq + SA_WARPS * SA_ROWS - 1) / (SA_WARPS * SA_ROWS);
    if (per_pair > most) per_pair = most;
    if (per_pair < 1) per_pair = 1;
    const int64_t rows = (lq + per_pair - 1) / per_pair;
    return (int)((rows + SA_WARPS * SA_ROWS - 1) / (SA_WARPS * SA_ROWS) * (SA_WARPS * SA_ROWS));
}

loco_status cuda_attention_short(cuda_impl *c, loco_dtype dt, int D, int heads, int samples, const fa_params *fp,
                                 loco_err *err) {
    const int rpb = sa_rows_per_block(c, D, fp->lq, (int64_t)heads * samples);
    const dim3 grid((unsigned)((fp->lq + rpb - 1) / rpb), (unsigned)heads, (unsigned)samples);
#define SA_CASE(T, DD)                                                                                       \
    if (dt == cuda_dtype_of<T>::value && D == DD) {                                                       \
        LOCO_LAUNCH(grid, SA_THREADS, SA_SMEM(DD), c->stream, short_attn_kernel<T, DD>)(*fp, rpb);           \
        return cuda_check_launch("short_attn_kernel", err);                                                  \
    }
    SA_FOR_EACH(SA_CASE)
#undef SA_CASE
    return loco_err_set(err, LOCO_EINVAL, "cuda attention: no short-key kernel for head dim %d", D);
}
