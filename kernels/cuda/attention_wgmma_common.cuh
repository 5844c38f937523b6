/* attention_wgmma_common.cuh: what the two wgmma flash-attention kernels share: the shared-memory
 * geometry of Q, K and V, the descriptors, the score product, one key tile's masked online
 * softmax, and the Q load and output store around the loop. attention_wgmma.cu (every thread
 * loads K/V tiles, one barrier per tile) describes the layout and the products; the
 * warp-specialised kernel, attention_wgmma_ws.cu, has a producer warp load them instead. */
#ifndef LOCO_CUDA_ATTENTION_WGMMA_COMMON_CUH
#define LOCO_CUDA_ATTENTION_WGMMA_COMMON_CUH

#include <math.h>

#include "attention_wgmma_products.cuh"
#include "cuda_device.h"
#include "flash_params.h"
#include "flash_softmax.cuh"

/* A block's consumers are NWG warpgroups of 64 query rows each: 2 (128 rows), or 3 (192) under
 * LOCO_CUDA_FLASH=wgmma3 / wgmma_ws3 at head dims 64 and 80. At 132-144 registers a thread
 * (attention_wgmma.cu), a second block of two warpgroups does not fit beside the first (two
 * would need at most 128 each: capped there, ptxas spills and serialises the products), so
 * three warpgroups in one block give 12 warps per SM instead of 8 (FlashAttention-3's choice
 * at head dim 64). */
#define FAW_THREADS(NWG) (128 * (NWG))
#define FAW_BR(NWG) (64 * (NWG))
#define FAW_V_KSTEP 128 /* V: bytes between groups of 8 keys */

/* The shared-memory geometry of head dim D with BC keys per K/V tile (64, or 128 under
 * LOCO_CUDA_FLASH=wgmma128) and STAGES K/V tiles. */
template <int D, int BC, int NWG, int STAGES> struct faw_geom {
    static constexpr int DK = (D + 15) / 16 * 16;
    static constexpr int SBO_QK = DK / 8 * 128; /* bytes per 8 rows of Q or K */
    static constexpr int Q_BYTES = FAW_BR(NWG) / 8 * SBO_QK;
    static constexpr int K_BYTES = BC / 8 * SBO_QK;
    static constexpr int V_NSTEP = BC / 8 * FAW_V_KSTEP; /* between groups of 8 head dims */
    static constexpr int V_BYTES = D / 8 * V_NSTEP + V_NSTEP; /* the head dims, then the ones group */
    static constexpr int SMEM = Q_BYTES + STAGES * (K_BYTES + V_BYTES);
};

/* An accumulator array [tiles][4] as the flat register list a wgmma names (the same floats). */
template <int N> __device__ __forceinline__ float (&faw_flat(float (&a)[N][4]))[N * 4] {
    return *reinterpret_cast<float(*)[N * 4]>(&a[0][0]);
}

/* The descriptor of a V stage (its first 16 keys): MN-major, LBO the step along K (keys), SBO
 * along N (head dims). */
template <int BC> __device__ __forceinline__ uint64_t faw_v_desc(const unsigned char *sv) {
    return wg_desc(sv, FAW_V_KSTEP, BC / 8 * FAW_V_KSTEP);
}

/* A descriptor moved `bytes` further into shared memory: the start address is the low field, in
 * 16-byte units, and shared addresses (< 228 KB) never carry out of its 14 bits. Built once
 * before the loop, the descriptors of every stage and k-step then cost one add each (built per
 * k-step, they were about 40 uniform instructions per tile in the SASS). */
__device__ __forceinline__ uint64_t faw_desc_at(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

/* Q's BR rows from q0 on into sq, as cp.async chunks from `nthreads` threads (thread tid);
 * rows past Lq and chunks past D are zeros. The caller commits. */
template <typename T, int D, int NWG, int STAGES>
__device__ __forceinline__ void faw_load_q(unsigned char *sq, const T *qg, const fa_params &p, int q0, int tid,
                                           int nthreads) {
    typedef faw_geom<D, 64, NWG, STAGES> G;
    constexpr int CK = G::DK / 8, CV = D / 8;
    for (int i = tid; i < FAW_BR(NWG) * CK; i += nthreads) {
        const int r = i / CK, c = i - r * CK, qr = q0 + r;
        const bool ok = qr < p.lq && c < CV;
        cp_async16(sq + (r >> 3) * G::SBO_QK + c * 128 + (r & 7) * 16, qg + (ok ? (int64_t)qr * p.rs + c * 8 : 0),
                   ok ? 16 : 0);
    }
}

/* After V's head dims, one more group of 8 columns, all ones, in every stage and for every key:
 * O's last 8 columns then hold each row's sum of P, of P as rounded for the product, and the
 * epilogue divides by it (cp.async never writes there; a barrier publishes these stores). It
 * replaces 32 adds per lane and tile and the final shuffles. sv: stage 0's V. */
template <typename T, int D, int BC, int NWG, int STAGES>
__device__ __forceinline__ void faw_fill_ones(unsigned char *sv, int tid, int nthreads) {
    typedef faw_geom<D, BC, NWG, STAGES> G;
    for (int i = tid; i < STAGES * BC; i += nthreads) {
        const int r = i % BC;
        vec16<T> ones;
#pragma unroll
        for (int e = 0; e < 8; e++) ones.v[e] = from_f32<T>(1.0f);
        *(vec16<T> *)(sv + (i / BC) * G::V_BYTES + (r >> 3) * FAW_V_KSTEP + D / 8 * G::V_NSTEP + (r & 7) * 16) = ones;
    }
}

/* s = Q K^T for a warpgroup's 64 rows and a tile's BC keys: NKS k16 steps, issued (the caller
 * commits and waits). K_STEP: bytes between K's k16 slices (256: two no-swizzle core matrices;
 * 32 in a 128-byte-swizzled row, the TMA form). */
template <typename T, int NKS, int BC, int K_STEP = 256>
__device__ __forceinline__ void faw_scores(float (&s)[BC / 2], uint64_t dq, uint64_t dk) {
#pragma unroll
    for (int i = 0; i < BC / 2; i++) s[i] = 0.0f;
    wg_fence_acc(s);
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < NKS; ks++) faw_qk<T, BC>(s, faw_desc_at(dq, ks * 256), faw_desc_at(dk, ks * K_STEP));
}

/* O += P V of one key tile: P in pin (this tile's A fragments), V from the stage whose descriptor
 * is dv; issued and committed, not waited for. */
template <typename T, int D, int BC>
__device__ __forceinline__ void faw_pv_issue(float (&of)[D / 2 + 4], const uint32_t (&pin)[BC / 16][4], uint64_t dv) {
    wg_fence_acc(of);
    wg_fence(); /* o was rescaled by ordinary instructions */
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) faw_pv<T, D + 8>(of, pin[kk], faw_desc_at(dv, kk * 2 * FAW_V_KSTEP));
    wg_commit();
}

/* The key tiles after tile 0, in the order of attention_wgmma.cu: step(j, pin, pout) for j = 1
 * .. ntiles - 1 with P in two register sets, p0 for even tiles and p1 for odd ones (two tiles
 * per turn, so that each set is named at compile time: a set chosen at run time would be an
 * array in local memory). The last tile's P is then in p0 when ntiles - 1 is even. */
template <class Step, class PSet>
__device__ __forceinline__ void faw_tile_loop(const int ntiles, Step &step, PSet &p0, PSet &p1) {
    int j = 1;
    for (; j + 1 < ntiles; j += 2) {
        step(j, p0, p1);
        step(j + 1, p1, p0);
    }
    if (j < ntiles) step(j, p0, p1);
}

/* After the loop: the last tile's P V (its P in p0 when ntiles - 1 is even), with O first
 * rescaled for that tile's softmax, issued by pv(j, set) and waited for. */
template <int NDT, int NF, class Pv, class PSet>
__device__ __forceinline__ void faw_last_pv(const int ntiles, const bool rescale, float (&o)[NDT + 1][4],
                                            float (&of)[NF], const float (&c)[2], Pv &pv, PSet &p0, PSet &p1) {
    if (ntiles > 0) {
        if (rescale) fa_rescale<NDT + 1>(o, c);
        if ((ntiles - 1) % 2 == 0)
            pv(ntiles - 1, p0);
        else
            pv(ntiles - 1, p1);
        wg_wait<0>();
        wg_fence_acc(of);
    }
}

/* The masks and online softmax of key tile j's scores s (this lane's rows row0 and row0 + 8 of
 * the block starting at q0; tq = lane % 4): P into pout, O's factors into c / rescale, the row
 * maxima into mr. O itself is left alone: a P V product may still be writing it. */
template <typename T, int NDT, int BC>
__device__ __forceinline__ void faw_softmax(const fa_params &p, const int j, const int q0, const int row0,
                                            const int tq, const float (&s)[BC / 8][4], float (&o)[NDT + 1][4],
                                            float (&mr)[2], float (&c)[2], bool &rescale,
                                            uint32_t (&pout)[BC / 16][4]) {
    constexpr int NST = BC / 8;
    /* the scores copied out of S's accumulators, which the softmax leaves alone */
    float x[NST][4];
#pragma unroll
    for (int nt = 0; nt < NST; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) x[nt][e] = s[nt][e];
    /* mask the tile that crosses Lk and, causal, the tiles reaching past the block's first
     * row (uniform across the block, as in attention.cu); x[nt][e] is row g + 8 (e >> 1),
     * key 8 nt + 2 tq + (e & 1) of the tile */
    const int key0 = j * BC;
    if (key0 + BC > p.lk || (p.causal && key0 + BC - 1 > q0)) {
#pragma unroll
        for (int nt = 0; nt < NST; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = key0 + nt * 8 + 2 * tq + (e & 1), row = row0 + (e < 2 ? 0 : 8);
                if (key >= p.lk || (p.causal && key > row)) x[nt][e] = -INFINITY;
            }
    }
    /* online softmax (flash_softmax.cuh): the rows' max and O's factors (the sums' columns
     * with it), then P into the A fragments of P V. (Exponentials two at a time in f16,
     * ex2.approx.f16x2, were tried: sm_90 has no packed MUFU.EX2, so it compiles to two
     * MUFU.EX2.F16 and a repack, more instructions than this.) */
    const float2 nb = fa_softmax_max_core<NST, NDT + 1, 0, false>(x, o, mr, NULL, p.scale_log2, c, rescale);
#pragma unroll
    for (int nt = 0; nt < NST; nt++) {
        x[nt][0] = fast_exp2(fmaf(x[nt][0], p.scale_log2, nb.x));
        x[nt][1] = fast_exp2(fmaf(x[nt][1], p.scale_log2, nb.x));
        x[nt][2] = fast_exp2(fmaf(x[nt][2], p.scale_log2, nb.y));
        x[nt][3] = fast_exp2(fmaf(x[nt][3], p.scale_log2, nb.y));
    }
    fa_pack_p<T, NST>(x, pout);
}

/* Every lane's copy of its two rows' sums of P is in the ones columns (o's tile NDT): normalise
 * and store rows row0 and row0 + 8 of sample b, head h. */
template <typename T, int D>
__device__ __forceinline__ void faw_store_o(const fa_params &p, int64_t b, int h, int row0, int tq,
                                            const float (&o)[D / 8 + 1][4]) {
    constexpr int NDT = D / 8;
    const float l0 = o[NDT][0], l1 = o[NDT][2];
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    T *og = (T *)p.o + b * p.o_bs + (int64_t)h * D + 2 * tq;
    if (row0 < p.lq) {
        T *orow = og + (int64_t)row0 * p.o_rs;
#pragma unroll
        for (int d = 0; d < NDT; d++) *(uint32_t *)(orow + d * 8) = pack2<T>(o[d][0] * inv0, o[d][1] * inv0);
    }
    if (row0 + 8 < p.lq) {
        T *orow = og + (int64_t)(row0 + 8) * p.o_rs;
#pragma unroll
        for (int d = 0; d < NDT; d++)
            *(uint32_t *)(orow + d * 8) = pack2<T>(o[d][2] * inv1, o[d][3] * inv1);
    }
}

#endif
