/* attention.cu: fused multi-head attention (flash-attention style) on tensor cores.
 *
 * One block = 128 query rows of one head of one sample, 4 warps of 32 rows (two m16 tiles that
 * share every K/V fragment a warp loads from shared memory); head dim 160, whose registers do
 * not allow two tiles, and LOCO_CUDA_FLASH=64 use 64-row blocks of 4 x 16 rows. K/V tiles of 64
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
 * activations, unaligned views) takes the materialised path of attention_gemm.cu. Attention over
 * at most 80 keys (77 text tokens) takes attention_short.cu's kernel unless
 * LOCO_CUDA_FLASH_SHORT=0 says otherwise (LOCO_CUDA_FLASH's choices are for the rest).
 *
 * kv_index: each query sample reads the K/V of sample kv[b]; the table rides in the kernel
 * arguments (up to FA_KV_MAX samples per launch), so it costs nothing and survives graph
 * capture. Causal masking (key j > query i) also skips key tiles wholly above the diagonal. */
#include <math.h>
#include <string.h>

#include "flash_params.h"
#include "flash_softmax.cuh"
#include "mma.h"

#define FA_THREADS 128
#define FA_BR(MT) (64 * (MT))           /* query rows per block: 4 warps of MT m16 tiles */
#define FA_DK(D) (((D) + 15) / 16 * 16) /* head dim rounded up for the k-steps of Q K^T */
#define FA_BC(D) ((D) > 128 ? 32 : 64)   /* keys per tile */
#define FA_LDS(D) (FA_DK(D) + 8)         /* smem row pitch: ldmatrix rows in distinct banks */
#define FA_ILP 1    /* variant bit: fa_softmax_max's ILP form (trees, rescale without a branch) */
#define FA_STAGES3 2 /* variant bit: three K/V stages and one barrier per key tile instead of two */
/* variant bit: Q's fragments read from shared memory at each k-step instead of held in registers
 * for the whole loop (4 NKS MT registers: 32 at head dim 64), the kernel compiled for three
 * blocks per SM (168 registers) where the others take what they need (ilp3 at head dim 64:
 * 229, two blocks of 4 warps per SM). (0: no minimum, which leaves the other variants' PTX as
 * it was; 1 would add a .minnctapersm line.) */
#define FA_QSMEM 4
#define FA_MIN_BLOCKS(V) (((V) & FA_QSMEM) ? 3 : 0)
#define FA_NSTAGE(V) (((V) & FA_STAGES3) ? 3 : 2)
#define FA_SMEM(D, MT, V) ((FA_BR(MT) + 2 * FA_NSTAGE(V) * FA_BC(D)) * FA_LDS(D) * 2)


/* One K/V tile of BC keys starting at key0 into shared memory. kg/vg already point at key0's
 * row; offsets inside a tile fit in 32 bits (BC rows of heads * D elements), so the per-vector
 * address math stays 32-bit and only the tile base is 64-bit (measured in SASS: the 64-bit
 * per-vector form took about 240 instructions per tile for head dim 40, as many as the softmax). */
template <typename T, int D>
__device__ __forceinline__ void fa_load_kv(T *skb, T *svb, const T *kg, const T *vg, int nkeys, int rs, int tid) {
    constexpr int LDS = FA_LDS(D), DV = D / 8;
    constexpr int NV = FA_BC(D) * DV; /* 16-byte vectors per tile */
#pragma unroll
    for (int it = 0; it < (NV + FA_THREADS - 1) / FA_THREADS; it++) {
        const int i = tid + it * FA_THREADS;
        if (NV % FA_THREADS != 0 && i >= NV) break;
        const int r = i / DV, cv = i - r * DV;
        const bool ok = r < nkeys;
        const int off = ok ? r * rs + cv * 8 : 0;
        cp_async16(skb + r * LDS + cv * 8, kg + off, ok ? 16 : 0); /* rows past Lk become zeros */
        cp_async16(svb + r * LDS + cv * 8, vg + off, ok ? 16 : 0);
    }
}

/* MT = m16 tiles per warp (1 or 2). Each K fragment (Q K^T) and V fragment (P V) that a warp
 * loads from shared memory with ldmatrix feeds MT mma's, so MT = 2 halves the shared-memory
 * traffic per flop, which bounds the 16-row form; it costs registers (Q fragments, O and S
 * accumulators all double), so head dim 160 keeps MT = 1. Warp w owns rows
 * [16 (w MT + mt), +16) of the block, mt < MT. */
template <typename T, int D, int MT, int V>
__global__ void __launch_bounds__(FA_THREADS, FA_MIN_BLOCKS(V)) flash_attn_kernel(const fa_params p) {
    constexpr int BR = FA_BR(MT), DK = FA_DK(D), BC = FA_BC(D), LDS = FA_LDS(D), NSTAGE = FA_NSTAGE(V);
    constexpr int NKS = DK / 16; /* k-steps of Q K^T */
    constexpr int NST = BC / 8;  /* score tiles of 8 keys */
    constexpr int NDT = D / 8;   /* output tiles of 8 dims */
    constexpr int DV = D / 8;    /* 16-byte vectors per row */
    LOCO_DYN_SMEM(unsigned char, fa_smem, 16);
    T *sq = (T *)fa_smem;       /* [BR][LDS] */
    T *sk = sq + BR * LDS;           /* [NSTAGE][BC][LDS] */
    T *sv = sk + NSTAGE * BC * LDS;  /* [NSTAGE][BC][LDS] */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * BR, h = blockIdx.y;
    const int64_t b = (int64_t)p.b0 + blockIdx.z, kb = p.kv[blockIdx.z];
    const T *qg = (const T *)p.q + b * p.q_bs + (int64_t)h * D;
    const T *kg = (const T *)p.k + kb * p.kv_bs + (int64_t)h * D;
    const T *vg = (const T *)p.v + kb * p.kv_bs + (int64_t)h * D;

    /* columns D..DK-1 of Q and K take part in Q K^T's last k-step: zero them once (cp.async
     * never writes them) */
    if (DK > D) {
        constexpr int PADC = DK > D ? DK - D : 1; /* (1 only keeps the dead branch compilable) */
        const T z = from_f32<T>(0.0f);
        for (int i = tid; i < (BR + NSTAGE * BC) * PADC; i += FA_THREADS) {
            int r = i / PADC, cc = D + i % PADC;
            if (r < BR)
                sq[r * LDS + cc] = z;
            else
                sk[(r - BR) * LDS + cc] = z;
        }
    }
    for (int i = tid; i < BR * DV; i += FA_THREADS) {
        int r = i / DV, cv = i - r * DV, qr = q0 + r;
        bool ok = qr < p.lq;
        cp_async16(sq + r * LDS + cv * 8, qg + (ok ? (int64_t)qr * p.rs + cv * 8 : 0), ok ? 16 : 0);
    }
    int kend = p.lk;
    if (p.causal) {
        int last_q = (q0 + BR < p.lq ? q0 + BR : p.lq) - 1;
        if (last_q + 1 < kend) kend = last_q + 1;
    }
    const int ntiles = (kend + BC - 1) / BC;
    const int rs = (int)p.rs;
    if (ntiles > 0) fa_load_kv<T, D>(sk, sv, kg, vg, p.lk, rs, tid);
    cp_async_commit(); /* group 0: Q and K/V tile 0 */
    if (NSTAGE == 3) { /* group 1: tile 1 (empty when there is none); tile t is group t */
        if (ntiles > 1) fa_load_kv<T, D>(sk + BC * LDS, sv + BC * LDS, kg + BC * p.rs, vg + BC * p.rs, p.lk - BC, rs, tid);
        cp_async_commit();
    }

    /* per m-tile state; index [mt][0] is row g of the tile, [mt][1] row g + 8; Q's fragments
     * (all k-steps, or under FA_QSMEM the current one) */
    constexpr bool QSMEM = (V & FA_QSMEM) != 0;
    uint32_t qf[MT][QSMEM ? 1 : NKS][4];
    float o[MT][NDT][4];
    float mr[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int d = 0; d < NDT; d++) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.0f;
        mr[mt][0] = mr[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    const int tq = lane & 3;
    const int wrow = warp * MT * 16;               /* first row of this warp within the block */
    const int row0 = q0 + wrow + (lane >> 2);      /* row g of m-tile 0; m-tile mt adds 16 mt */
    const T *const sq_lane = sq + (wrow + (lane & 15)) * LDS + (lane >> 4) * 8; /* its ldmatrix row of Q */

    for (int j = 0; j < ntiles; j++) {
        const int buf = NSTAGE == 3 ? j % 3 : j & 1;
        if (NSTAGE == 3) {
            /* Tile j is the older of the two groups in flight. One barrier publishes it and
             * tells that every warp is done with tile j - 1, whose stage tile j + 2 then takes
             * (the two-stage form needs a second barrier at the end of each tile for that). */
            cp_async_wait<1>();
            __syncthreads();
            if (j + 2 < ntiles) {
                const int64_t next = (int64_t)(j + 2) * BC * p.rs;
                const int nb = (j + 2) % 3;
                fa_load_kv<T, D>(sk + nb * BC * LDS, sv + nb * BC * LDS, kg + next, vg + next, p.lk - (j + 2) * BC, rs,
                                 tid);
            }
            cp_async_commit(); /* possibly empty: keeps tile t in group t */
        } else if (j + 1 < ntiles) { /* prefetch the next tile into the other buffer */
            const int64_t next = (int64_t)(j + 1) * BC * p.rs;
            fa_load_kv<T, D>(sk + (buf ^ 1) * BC * LDS, sv + (buf ^ 1) * BC * LDS, kg + next, vg + next,
                             p.lk - (j + 1) * BC, rs, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        if (NSTAGE == 2) __syncthreads();
        if (!QSMEM && j == 0) { /* Q stays in registers for the whole key loop */
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int ks = 0; ks < NKS; ks++)
                    ldmatrix_x4(qf[mt][ks], sq + (wrow + mt * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
        }
        const T *skb = sk + buf * BC * LDS, *svb = sv + buf * BC * LDS;

        /* S = Q K^T for this warp's 16 MT rows and the tile's BC keys */
        float s[MT][NST][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NST; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < NKS; ks++) {
            if (QSMEM) /* this k-step's Q fragments, from the Q tile that stays in shared memory */
#pragma unroll
                for (int mt = 0; mt < MT; mt++) ldmatrix_x4(qf[mt][0], sq_lane + mt * 16 * LDS + ks * 16);
            const int kq = QSMEM ? 0 : ks;
#pragma unroll
            for (int np = 0; np < NST / 2; np++) {
                uint32_t kf[4];
                ldmatrix_x4(kf, skb + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + ks * 16 +
                                    ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816<T>(s[mt][2 * np], qf[mt][kq], kf);
                    mma16816<T>(s[mt][2 * np + 1], qf[mt][kq], kf + 2);
                }
            }
        }

        /* Mask, then online softmax on each m-tile. Only the tile that crosses Lk (and, causal,
         * the tiles that reach past the block's first row) pays for masking: the test is uniform
         * across the block, so interior tiles branch around it. Folded into every element
         * instead, the compiler predicated it everywhere: a third of the loop's instructions. */
        const int key0 = j * BC;
        if (key0 + BC > p.lk || (p.causal && key0 + BC - 1 > q0)) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NST; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = key0 + nt * 8 + 2 * tq + (e & 1), row = row0 + mt * 16 + (e < 2 ? 0 : 8);
                        if (key >= p.lk || (p.causal && key > row)) s[mt][nt][e] = -INFINITY;
                    }
        }
        /* online softmax per m-tile (flash_softmax.cuh), then P as the A operands of P V */
        uint32_t pa[MT][BC / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            fa_softmax_step<NST, NDT, (V & FA_ILP) ? 1 : 0>(s[mt], o[mt], mr[mt], l[mt], p.scale_log2);
            fa_pack_p<T, NST>(s[mt], pa[mt]);
        }

        /* O += P V: each V fragment serves every m-tile */
#pragma unroll
        for (int kk = 0; kk < BC / 16; kk++) {
            const T *vrow = svb + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS;
#pragma unroll
            for (int dp = 0; dp < NDT / 2; dp++) {
                uint32_t vf[4];
                ldmatrix_x4_trans(vf, vrow + dp * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816<T>(o[mt][2 * dp], pa[mt][kk], vf);
                    mma16816<T>(o[mt][2 * dp + 1], pa[mt][kk], vf + 2);
                }
            }
            if (NDT & 1) { /* head dim 40: an odd number (5) of 8-wide tiles (80 has 10) */
                uint32_t vf[2];
                ldmatrix_x2_trans(vf, vrow + (NDT - 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) mma16816<T>(o[mt][NDT - 1], pa[mt][kk], vf);
            }
        }
        if (NSTAGE == 2) __syncthreads(); /* the next iteration's prefetch overwrites this buffer */
    }
    cp_async_wait<0>();

    /* each quad of lanes holds partial row sums: combine, normalise, store */
    T *og = (T *)p.o + b * p.o_bs + (int64_t)h * D + 2 * tq;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        float l0 = l[mt][0], l1 = l[mt][1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
        const int r0 = row0 + mt * 16, r1 = r0 + 8;
        if (r0 < p.lq) {
            T *orow = og + (int64_t)r0 * p.o_rs;
#pragma unroll
            for (int d = 0; d < NDT; d++)
                *(uint32_t *)(orow + d * 8) = pack2<T>(o[mt][d][0] * inv0, o[mt][d][1] * inv0);
        }
        if (r1 < p.lq) {
            T *orow = og + (int64_t)r1 * p.o_rs;
#pragma unroll
            for (int d = 0; d < NDT; d++)
                *(uint32_t *)(orow + d * 8) = pack2<T>(o[mt][d][2] * inv1, o[mt][d][3] * inv1);
        }
    }
}

/* ---- host side ------------------------------------------------------------------------------ */

/* Every instantiation: (dtype, head dim, m-tiles per warp, variant bits). Head dim 160 has only
 * MT = 1: with MT = 2 its Q fragments and O accumulators alone would take 2 x (40 + 80)
 * registers. The 128-row blocks of head dims 40, 64 and 80 come in three variants, 0,
 * FA_STAGES3 and FA_ILP | FA_STAGES3 (fa_variant picks); head dims 40 and 64 also in a fourth,
 * that with FA_QSMEM (at 80 the O and score accumulators alone take 144 of the 168 registers
 * three blocks per SM allow). */
#define FA_FOR_EACH_T(X, T)                                                                                  \
    X(T, 40, 1, 0) X(T, 64, 1, 0) X(T, 80, 1, 0) X(T, 160, 1, 0) X(T, 40, 2, 0) X(T, 64, 2, 0) X(T, 80, 2, 0) \
    X(T, 40, 2, 3) X(T, 64, 2, 3) X(T, 80, 2, 3) X(T, 40, 2, 2) X(T, 64, 2, 2) X(T, 80, 2, 2) X(T, 40, 2, 7) \
    X(T, 64, 2, 7)
#define FA_FOR_EACH(X) FA_FOR_EACH_T(X, __half) FA_FOR_EACH_T(X, __nv_bfloat16)

static int fa_has_dim(int64_t d) { return d == 40 || d == 64 || d == 80 || d == 160; }

/* m16 tiles per warp for head dim D: 2 (128-row blocks) unless LOCO_CUDA_FLASH=64 asked for the
 * 64-row form, D has no MT = 2 instantiation, or (auto) there are fewer than 128 query rows
 * (CLIP's 77 tokens: 6.5 us in 64-row blocks, 7.2 in one 128-row block that is 40% padding). Measured on an H200
 * (bench/gpu/runs/2026-11-27-h200-run3): 128 rows are as fast or faster everywhere else, even
 * on grids of fewer blocks than 2 per SM (SD 1.5's 1024-token level at batch 2: 35.6 vs 37.7 us). */
static int fa_mtiles(const cuda_impl *c, int D, int64_t Lq) {
    if (D > 80 || c->flash_rows == 64) return 1;
    if (c->flash_rows == 128) return 2;
    return Lq >= 128 ? 2 : 1;
}

/* The variant of the 128-row kernel for a launch of `blocks` blocks at head dim D:
 * LOCO_CUDA_FLASH=classic|stages3|ilp3|ilp3q forces one (ilp3q: ilp3 with Q read from shared
 * memory at three blocks per SM, session 9, not yet timed). By default, measured on an H200 (session 6,
 * bench/gpu/runs/2026-11-28-h200-run6):
 *   - head dims 64 and 80: FA_ILP | FA_STAGES3. The trees, the branch-free rescale and the third
 *     stage take SD-XL's 4096-token self-attention from 0.3448 to 0.3278 ms (with its q, k, v
 *     GEMM) and SD 1.5's 1024-token one (80) from 0.0300 to 0.0265 ms;
 *   - head dim 40: FA_STAGES3 for launches of at least 2048 blocks, else the classic loop. The
 *     trees cost it eleven registers (178: two blocks per SM instead of three), so ilp3 lost
 *     (SD 1.5's 4096-token layer at batch 16: 1.633 against 1.414 ms); the third stage alone
 *     keeps 168 registers and won there (1.356 ms: 4096 blocks), but lost on the same layer at
 *     batch 2 (0.2039 against 0.1978 ms: 512 blocks, under two waves). */
#define FA_STAGES3_MIN_BLOCKS 2048
static int fa_variant(const cuda_impl *c, int D, int MT, int64_t blocks) {
    if (MT != 2 || D > 80) return 0;
    if (c->flash_variant >= 0) /* (forced ilp3q: ilp3 at head dim 80, which has no FA_QSMEM form) */
        return (c->flash_variant & FA_QSMEM) && D == 80 ? c->flash_variant & ~FA_QSMEM : c->flash_variant;
    if (D == 64 || D == 80) return FA_ILP | FA_STAGES3;
    return blocks >= FA_STAGES3_MIN_BLOCKS ? FA_STAGES3 : 0;
}

loco_status cuda_attention_setup(cuda_impl *c, loco_err *err) {
    cudaError_t e = cudaSuccess;
#define FA_SET(T, D, MT, V)                                                                                   \
    if (e == cudaSuccess)                                                                                     \
        e = cudaFuncSetAttribute(flash_attn_kernel<T, D, MT, V>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                 FA_SMEM(D, MT, V));
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

static loco_status flash_launch(cuda_impl *c, loco_dtype dt, int D, int MT, int variant, dim3 grid,
                                const fa_params *fp, loco_err *err) {
#define FA_CASE(T, DD, MM, VV)                                                                                  \
    if (dt == cuda_dtype_of<T>::value && D == DD && MT == MM && variant == VV) {                                \
        LOCO_LAUNCH(grid, FA_THREADS, FA_SMEM(DD, MM, VV), c->stream, flash_attn_kernel<T, DD, MM, VV>)(*fp); \
        return cuda_check_launch("flash_attn_kernel", err);                                                     \
    }
    FA_FOR_EACH(FA_CASE)
#undef FA_CASE
    return loco_err_set(err, LOCO_EINVAL, "cuda attention: no flash kernel for head dim %d with %d m-tiles, variant %d",
                        D, MT, variant);
}

/* Every sample attends to its own K/V rows: no kv_index, or the identity (with K/V batches to match). */
static int own_kv(const int *kv_index, int64_t B, int64_t Bk) {
    if (Bk < B) return 0;
    for (int64_t b = 0; kv_index && b < B; b++)
        if (kv_index[b] != b) return 0;
    return 1;
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
    /* packed q|k|v rows (k, v are q): every input row is 3 HD wide, k and v start HD and 2 HD in */
    const int64_t B = q->shape[0], Lq = q->shape[1], HD = out->shape[2], Bk = k->shape[0], Lk = k->shape[1];
    const int64_t in_rs = q->shape[2];
    const size_t es = loco_dtype_size(dt);
    const void *kp = p->qkv_packed ? (const char *)q->data + (size_t)HD * es : k->data;
    const void *vp = p->qkv_packed ? (const char *)q->data + 2 * (size_t)HD * es : v->data;
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

    /* the kernel takes the max of raw scores, so the scale must be positive; its K/V tiles use
     * 32-bit offsets, which H <= 65535 and D <= 160 keep far from overflow (64 rows x HD) */
    const float scale_log2 = p->scale * 1.4426950408889634f;
    int flash = (dt == LOCO_F16 || dt == LOCO_BF16) && fa_has_dim(D) && H <= 65535 && Lq < ((int64_t)1 << 30) &&
                Lk < ((int64_t)1 << 30) && p->scale > 0.0f && isfinite(scale_log2) && cuda_aligned(q->data, 16) &&
                cuda_aligned(kp, 16) && cuda_aligned(vp, 16) && cuda_aligned(out->data, 16) && (in_rs * es) % 16 == 0 &&
                (HD * es) % 16 == 0;
    if (!flash) return cuda_attention_gemm(c, out, q, kp, vp, Lk, in_rs, p, err);
    const int few_keys = cuda_attention_short_applies(c, D, Lk); /* text: attention_short.cu */
    if (!few_keys && cuda_attention_cudnn_applies(c, dt, D, p->causal, own_kv(p->kv_index, B, Bk))) {
        /* LOCO_CUDA_FLASH=cudnn (attention_cudnn.cu); a shape it has no plan for runs below */
        const int64_t kv_rs = p->qkv_packed ? in_rs : k->shape[2];
        const cuda_sdpa_call call = {dt, B, H, Lq, Lk, D, q->data, kp, vp, out->data, in_rs, kv_rs, HD, p->scale};
        const loco_status s = (kv_rs * (int64_t)es) % 16 == 0 ? cuda_attention_cudnn(c, &call, err)
                                                              : loco_err_set(err, LOCO_EUNSUPPORTED, "cuDNN attention: "
                                                                             "K/V rows not 16-byte aligned");
        if ((s != LOCO_EUNSUPPORTED && s != LOCO_EDEVICE_OOM) || c->cudnn_strict) return s;
        loco_err_clear(err);
    }

    fa_params fp;
    memset(&fp, 0, sizeof fp);
    fp.q = q->data;
    fp.k = kp;
    fp.v = vp;
    fp.o = out->data;
    fp.lq = (int)Lq;
    fp.lk = (int)Lk;
    fp.rs = in_rs;
    fp.q_bs = Lq * in_rs;
    fp.kv_bs = Lk * in_rs;
    fp.o_rs = HD;
    fp.o_bs = Lq * HD;
    fp.scale_log2 = scale_log2;
    fp.causal = p->causal != 0;
    /* LOCO_CUDA_FLASH=wgmma*: cuda_flash_wgmma sets grid.x for its own block height */
    const int wgmma = !few_keys && cuda_flash_wgmma_applies(c, dt, D);
    const int mt = wgmma ? 2 : fa_mtiles(c, (int)D, Lq);
    for (int64_t b0 = 0; b0 < B; b0 += FA_KV_MAX) {
        int nb = (int)(B - b0 < FA_KV_MAX ? B - b0 : FA_KV_MAX);
        fp.b0 = (int)b0;
        for (int i = 0; i < nb; i++) fp.kv[i] = p->kv_index ? p->kv_index[b0 + i] : (int)(b0 + i);
        dim3 grid((unsigned)((Lq + FA_BR(mt) - 1) / FA_BR(mt)), (unsigned)H, (unsigned)nb);
        if (few_keys)
            CUDA_TRY(cuda_attention_short(c, dt, (int)D, (int)H, nb, &fp, err));
        else if (wgmma)
            CUDA_TRY(cuda_flash_wgmma(c, dt, (int)D, grid, &fp, err));
        else
            CUDA_TRY(flash_launch(c, dt, (int)D, mt, fa_variant(c, (int)D, mt, (int64_t)grid.x * grid.y * grid.z),
                                  grid, &fp, err));
    }
    return LOCO_OK;
}
