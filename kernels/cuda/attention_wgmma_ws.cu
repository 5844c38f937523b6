/* attention_wgmma_ws.cu: the wgmma flash attention, warp-specialised as FlashAttention-3: one
 * producer warp loads K/V tiles, the warpgroups only compute. EXPERIMENTAL, used only under
 * LOCO_CUDA_FLASH=wgmma_ws (two consumer warpgroups, 128 query rows per block), =wgmma_ws3
 * (three, 192 rows, at head dims 64 and 80) or =wgmma_ws128 (two, with 128-key tiles), for head
 * dims 40, 64 and 80 in f16/bf16. Not yet timed on a GPU; correct on the emulator (tests/emu,
 * which runs its named barriers and mbarriers) in every `make test`.
 *
 * Why: attention_wgmma.cu's warpgroups load K/V themselves and meet at a __syncthreads every key
 * tile, so they run in lock step: their softmaxes run at the same time, leaving the tensor cores
 * idle, and their products then contend. Here nothing holds a warpgroup to the others but the
 * data: the producer publishes each tile on an mbarrier ("full"), each consumer thread hands the
 * tile's stage back on another ("empty") once its P V is done, and the warpgroups take turns at
 * issuing their products (ping-pong on named barriers: warpgroup w issues tile j's S and the
 * previous tile's P V after warpgroup w - 1 has issued its own, cyclically), so one's softmax
 * runs while the other's products are on the tensor cores. FlashAttention-3 reports both
 * (warp specialisation with ping-pong, and the overlap within a warpgroup that this kernel keeps
 * from attention_wgmma.cu) as worth 10-15 % each at head dim 128 on an H100.
 * LOCO_CUDA_FLASH_PINGPONG=0 turns the turns off (to time what they give).
 * LOCO_CUDA_FLASH_LOAD=tma (session 12) has one producer thread load K and V by TMA at head dim 64
 * (every attention of SD-XL), as FlashAttention-3 does: faws_tma_geom below.
 *
 * Layout, products, softmax: attention_wgmma.cu (shared through attention_wgmma_common.cuh);
 * BC-key tiles (64, or 128 under wgmma_ws128: half the softmax reductions, rescales and
 * barrier waits per key) in faws_geom::STAGES stages. The producer is one warp: 32 lanes issue
 * a 64-key tile's 2 x 512 cp.async chunks at head dim 64 (32 a lane; 140 SASS instructions a
 * tile in all).
 *
 * Synchronisation, per tile t in stage t % S (k = t / S: the stage's k-th tile):
 *   producer: waits for empty[stage] phase k - 1 (from k = 1 on), issues tile t's copies and
 *             commits them, then waits for tile t - FAWS_LAG's group, fences it for the async
 *             proxy (wgmma reads through it) and arrives on full[(t - LAG) % S]: LAG tiles'
 *             copies in flight beside the one published; the last LAG tiles after the loop.
 *             Under LOCO_CUDA_FLASH_LOAD=arrive (session 12) it publishes tile t as it issues
 *             it instead, by cp.async.mbarrier.arrive and an arrival: the copies count on
 *             full[stage] when they land, with no wait and no fence in the producer (CUTLASS's
 *             and FlashAttention-3's cp.async producers; the PTX ISA asks for an async-proxy
 *             fence between the writes and wgmma's reads, which they do not issue either).
 *   consumer: waits for full[stage] phase k, issues, and after the wait that retires tile t's
 *             P V (in step t + 1) arrives on empty[stage].
 * A consumer never falls two phases behind on full (the producer refills a stage only after
 * every consumer thread released it), nor the producer on empty. */
#include <string.h>

#include <type_traits>

#include "attention_wgmma_common.cuh"
#include "block_sync.cuh"
#include "tma.cuh"

/* 1 only in the sm_90a image (the Makefile builds this file for sm_90a alone). */
__device__ const int faws_image_ok = WG_DEVICE_OK;

/* The producer publishes tile t - FAWS_LAG after issuing tile t: that many tiles' copies stay in
 * flight while it waits for the oldest. Consumers release tile t - S in step t - S + 1, which
 * needs tile t - S + 1 published, so the producer's wait for that release needs S >= LAG + 2
 * (faws_geom's static_assert). */
#define FAWS_LAG 2
/* the consumer warpgroups, then the producer's: its first warp loads, the other three leave at
 * once (a warpgroup, not a warp, so that setmaxnreg can take its registers back; below) */
#define FAWS_THREADS(NWG) (FAW_THREADS(NWG) + 128)
/* Registers per thread (faws_regs): a block of 512 threads (three consumer warpgroups) gets 128
 * from the launch, too few for the consumers (ptxas spills and serialises the products at 128),
 * so the producer warpgroup gives all but 32 back and the consumers take 160: 128 x 32 + 384 x
 * 160 = 65536, the SM's file (FlashAttention-3's split). Two consumer warpgroups (384 threads)
 * get 168 from the launch: enough with 64-key tiles; with 128-key tiles (64 score registers and
 * 32 of P per set) the producer keeps 24 and the consumers take 240. */
template <int NWG, int BC> struct faws_regs {
    static constexpr int PRODUCER = NWG == 3 ? 32 : BC == 128 ? 24 : 0; /* 0: no setmaxnreg */
    static constexpr int CONSUMER = NWG == 3 ? 160 : BC == 128 ? 240 : 0;
    static constexpr int LAUNCH = 65536 / FAWS_THREADS(NWG) / 8 * 8; /* what the launch gives */
    /* setmaxnreg.inc waits until the block's pool has the registers: more than the launch's
     * would hang on a GPU (the emulator has no pool to see it) */
    static_assert(PRODUCER == 0 || 128 * PRODUCER + FAW_THREADS(NWG) * CONSUMER <= LAUNCH * FAWS_THREADS(NWG),
                  "setmaxnreg asks for more registers than the launch gives the block");
};
#define FAWS_PP_COUNT 256 /* a ping-pong phase: the waiting warpgroup's 128 threads and the 128 that let it go */

/* Stages: six of 64-key tiles, four of 128-key ones (188 KB at head dim 80): one block per SM
 * (registers), so shared memory allows the producer this far ahead. */
template <int BC> struct faws_stages {
    static constexpr int N = BC == 64 ? 6 : 4;
    static_assert(N >= FAWS_LAG + 2, "the producer would wait for a stage no consumer can release");
};

/* The geometry, and the 2 x STAGES mbarriers after it (full, then empty). */
template <int D, int NWG, int BC> struct faws_geom : faw_geom<D, BC, NWG, faws_stages<BC>::N> {
    static constexpr int STAGES = faws_stages<BC>::N;
    static constexpr int BARS = faw_geom<D, BC, NWG, STAGES>::SMEM;
    static constexpr int TOTAL = BARS + 2 * STAGES * 8;
};

/* The TMA form's geometry (LOCO_CUDA_FLASH_LOAD=tma, head dim 64): K and V tiles as the TMA unit
 * writes them, BC keys of 128 bytes each, 128-byte swizzled (K read K-major by S = Q K^T, V
 * MN-major by P V; tiles 1024-byte aligned, as the swizzle needs); Q as in faws_geom (the
 * consumers load it); and the ones columns (P's row sums, faw_fill_ones) not in every V stage
 * but once, after the stages: 8 columns of BC keys in the no-swizzle MN-major layout, read by a
 * second, 8-wide product (whether one m64n72 product reads a 128-byte-swizzled B across a
 * partial second atom is not documented: no library does it). */
template <int NWG, int BC> struct faws_tma_geom : faws_geom<64, NWG, BC> {
    typedef faws_geom<64, NWG, BC> B;
    static constexpr int STAGES = B::STAGES;
    static constexpr int K_BYTES = BC * 128, V_BYTES = BC * 128;
    static constexpr int ONES = B::Q_BYTES + STAGES * (K_BYTES + V_BYTES);
    static constexpr int BARS = ONES + BC / 8 * FAW_V_KSTEP;
    static constexpr int TOTAL = BARS + 2 * STAGES * 8;
    static_assert(B::Q_BYTES % 1024 == 0 && K_BYTES % 1024 == 0, "the 128-byte swizzle needs 1024-byte-aligned tiles");
    static_assert(TOTAL <= 232448, "more shared memory than an sm_90 block may have");
};
template <int D, int NWG, int BC, bool TMA>
using faws_geom_of = typename std::conditional<TMA, faws_tma_geom<NWG, BC>, faws_geom<D, NWG, BC>>::type;

/* The TMA form's tensor maps: K and V as [K/V samples][Lk][heads x 64] (row stride rs, sample
 * stride kv_bs), boxes of 64 head dims x BC keys x 1 sample; keys past Lk arrive as zeros. */
struct faws_maps {
    CUtensorMap k, v;
};

/* Tile t's K and V chunks from this lane into stage st: lanes 2k and 2k + 1 take rows k + 16 h
 * (h < BC / 16), chunks 2m and 2m + 1 of each, so each cp.async instruction of the warp reads
 * sixteen rows' 32-byte pieces: whole sectors at head dim 64, whose heads and rows start on 32
 * bytes (at 40 and 80 every other head starts 16 bytes into a sector, and its pairs straddle
 * two). A row per lane reads half sectors: twice the L2 traffic of a kernel that already needs
 * about 3 TB/s of it at 450 TFLOP/s with 128-row blocks (16 KB per tile, an estimate),
 * and the lane's state is a row offset (a chunk per lane in turn hoisted 32 addresses out of the
 * tile loop and spilled). Keys from nkeys on, and K's chunks past D, become zeros; V's chunks
 * past D are not written (V's ones column follows them). rs * 127 + D fits in 32 bits: rs is at
 * most 3 x 65535 x 80 here (attention.cu checks H <= 65535; these head dims are at most 80). */
template <typename T, int D, int NWG, int BC>
__device__ __forceinline__ void faws_load_tile(unsigned char *sk, unsigned char *sv, const T *kg, const T *vg,
                                               int rs, int nkeys, int lane) {
    typedef faws_geom<D, NWG, BC> G;
    constexpr int CK = G::DK / 8, CV = D / 8;
    static_assert(BC % 16 == 0 && CK % 2 == 0, "16 row pairs of lanes, chunks in pairs");
    const int k = lane >> 1, odd = lane & 1;
#pragma unroll
    for (int h = 0; h < BC / 16; h++) {
        const int r = k + 16 * h;
        const bool ok = r < nkeys;
        /* rows past the keys read nothing (zeros) from the tile's first row: a pointer per row,
         * and each chunk an immediate offset from it */
        const int src = ok ? r * rs + odd * 8 : 0;
        const T *const krow = kg + src, *const vrow = vg + src;
        unsigned char *const dk = sk + (r >> 3) * G::SBO_QK + (r & 7) * 16 + odd * 128;
        unsigned char *const dv = sv + (r >> 3) * FAW_V_KSTEP + (r & 7) * 16 + odd * G::V_NSTEP;
#pragma unroll
        for (int m = 0; m < CK / 2; m++) /* (a chunk past D reads nothing from inside the row) */
            cp_async16(dk + m * 256, krow + m * 16, ok && 2 * m + odd < CV ? 16 : 0);
#pragma unroll
        for (int m = 0; m < (CV + 1) / 2; m++)
            if (2 * m + odd < CV) cp_async16(dv + m * 2 * G::V_NSTEP, vrow + m * 16, ok ? 16 : 0);
    }
}

/* The producer warp's loop (the synchronisation above). */
template <typename T, int D, int NWG, int BC>
__device__ __forceinline__ void faws_produce(unsigned char *sk, unsigned char *sv, uint64_t *full, uint64_t *empty,
                                             const T *kg, const T *vg, const fa_params &p, int ntiles, int lane,
                                             int arrive) {
    typedef faws_geom<D, NWG, BC> G;
    constexpr int S = G::STAGES;
    for (int t = 0; t < ntiles; t++) {
        const int st = t % S;
        if (t >= S) mbar_wait(&empty[st], (unsigned)(t / S - 1) & 1u);
        const int64_t first = (int64_t)t * BC * p.rs;
        faws_load_tile<T, D, NWG, BC>(sk + st * G::K_BYTES, sv + st * G::V_BYTES, kg + first, vg + first, (int)p.rs,
                                      p.lk - t * BC, lane);
        if (arrive) { /* the copies arrive for themselves when they land */
            cp_async_publish_arrive(&full[st]);
            continue;
        }
        cp_async_commit();
        if (t >= FAWS_LAG) cp_async_publish<FAWS_LAG>(&full[(t - FAWS_LAG) % S]); /* tile t - LAG's chunks */
    }
    if (!arrive) cp_async_publish_tail<FAWS_LAG>(full, ntiles, S);
}

/* The TMA form's producer (one thread): per tile, its K and V boxes counted off full[stage]. */
template <int NWG, int BC>
__device__ __forceinline__ void faws_produce_tma(unsigned char *sk, unsigned char *sv, uint64_t *full, uint64_t *empty,
                                                 const faws_maps &m, int h, int kb, int ntiles) {
    typedef faws_tma_geom<NWG, BC> G;
    tma_prefetch_map(&m.k);
    tma_prefetch_map(&m.v);
    for (int t = 0; t < ntiles; t++) {
        const int st = t % G::STAGES;
        if (t >= G::STAGES) mbar_wait(&empty[st], (unsigned)(t / G::STAGES - 1) & 1u);
        mbar_arrive_expect_tx(&full[st], G::K_BYTES + G::V_BYTES);
        tma_load_3d(sk + st * G::K_BYTES, &m.k, h * 64, t * BC, kb, &full[st]);
        tma_load_3d(sv + st * G::V_BYTES, &m.v, h * 64, t * BC, kb, &full[st]);
    }
}

/* The TMA form's O += P V of one key tile: per 16 keys the 64 head dims from the swizzled V tile
 * (two 8-key groups of 1024 bytes) and the ones columns from their region (two of 128). */
template <typename T, int BC>
__device__ __forceinline__ void faws_pv_issue_tma(float (&of)[36], const uint32_t (&pin)[BC / 16][4], uint64_t dv,
                                                  uint64_t dones) {
    float(&o64)[32] = *reinterpret_cast<float(*)[32]>(&of[0]);
    float(&o8)[4] = *reinterpret_cast<float(*)[4]>(&of[32]);
    wg_fence_acc(of);
    wg_fence(); /* o was rescaled by ordinary instructions */
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
        faw_pv<T, 64>(o64, pin[kk], faw_desc_at(dv, kk * 2048));
        faw_pv<T, 8>(o8, pin[kk], faw_desc_at(dones, kk * 2 * FAW_V_KSTEP));
    }
    wg_commit();
}

/* Warp w < 4 NWG owns query rows q0 + 16 w + g and + 8 (g = lane / 4), as in attention_wgmma.cu;
 * warpgroup NWG is the producer's. pingpong: the warpgroups take turns at issuing (above);
 * arrive: the cp.async producer publishes by cp.async.mbarrier.arrive; TMA: the producer is one
 * thread of TMA copies through maps (head dim 64). */
template <typename T, int D, int NWG, int BC, bool TMA>
__global__ void __launch_bounds__(FAWS_THREADS(NWG), 1)
    faws_kernel(const fa_params p, const int pingpong, const int arrive, const __grid_constant__ faws_maps maps) {
#if !WG_DEVICE_OK
    __trap();
#else
    static_assert(!TMA || D == 64, "the TMA form is for head dim 64");
    typedef faws_geom_of<D, NWG, BC, TMA> G;
    typedef faws_regs<NWG, BC> R;
    constexpr int S = G::STAGES, CONSUMERS = FAW_THREADS(NWG), BR = FAW_BR(NWG);
    constexpr int NKS = G::DK / 16, NDT = D / 8, NST = BC / 8;
    LOCO_DYN_SMEM(unsigned char, faw_smem, 1024);
    if (TMA && (smem_addr(faw_smem) & 1023u) != 0) __trap(); /* the swizzle's alignment */
    unsigned char *const sq = faw_smem;
    unsigned char *const sk = sq + G::Q_BYTES; /* [S][G::K_BYTES] */
    unsigned char *const sv = sk + S * G::K_BYTES; /* [S][G::V_BYTES] */
    uint64_t *const full = (uint64_t *)(faw_smem + G::BARS), *const empty = full + S;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int q0 = blockIdx.x * BR, h = blockIdx.y;
    const int64_t b = (int64_t)p.b0 + blockIdx.z, kb = p.kv[blockIdx.z];
    const T *qg = (const T *)p.q + b * p.q_bs + (int64_t)h * D;
    const T *kg = (const T *)p.k + kb * p.kv_bs + (int64_t)h * D;
    const T *vg = (const T *)p.v + kb * p.kv_bs + (int64_t)h * D;
    int kend = p.lk;
    if (p.causal) {
        const int last_q = (q0 + BR < p.lq ? q0 + BR : p.lq) - 1;
        if (last_q + 1 < kend) kend = last_q + 1;
    }
    const int ntiles = (kend + BC - 1) / BC;

    /* The producer starts as soon as the barriers are up: the first K/V tiles land while the
     * consumers load Q and the ones columns and meet on a barrier of their own (1 + NWG; the
     * ping-pong turns use 1 .. NWG). The cp.async producer never writes V's ones columns, so
     * the consumers may fill them while it loads. */
    if (tid < S) {
        mbar_init(&full[tid], TMA ? 1 : 32);
        mbar_init(&empty[tid], CONSUMERS);
        if (TMA) mbar_init_fence();
    }
    __syncthreads(); /* the barriers, for every thread; the last block-wide barrier */
    if (wg == NWG) {
        if constexpr (R::PRODUCER != 0) wg_setmaxnreg_dec<R::PRODUCER>();
        if constexpr (TMA) {
            if (warp == 4 * NWG && lane == 0) faws_produce_tma<NWG, BC>(sk, sv, full, empty, maps, h, (int)kb, ntiles);
        } else if (warp == 4 * NWG) {
            faws_produce<T, D, NWG, BC>(sk, sv, full, empty, kg, vg, p, ntiles, lane, arrive);
        }
        return;
    }
    faw_load_q<T, D, NWG, S>(sq, qg, p, q0, tid, CONSUMERS);
    cp_async_commit();
    if constexpr (TMA) { /* the ones region: BC keys x 8 columns */
        vec16<T> ones;
#pragma unroll
        for (int e = 0; e < 8; e++) ones.v[e] = from_f32<T>(1.0f);
        for (int i = tid; i < BC; i += CONSUMERS) *(vec16<T> *)(faw_smem + G::ONES + i * 16) = ones;
    } else {
        faw_fill_ones<T, D, BC, NWG, S>(sv, tid, CONSUMERS);
    }
    cp_async_wait<0>();
    wg_fence_proxy();
    named_bar_sync(1 + NWG, CONSUMERS); /* Q and the ones columns, for every consumer */
    if constexpr (R::PRODUCER != 0) wg_setmaxnreg_inc<R::CONSUMER>();

    float o[NDT + 1][4];
#pragma unroll
    for (int d = 0; d <= NDT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float mr[2] = {-INFINITY, -INFINITY};
    const int tq = lane & 3;
    const int row0 = q0 + warp * 16 + (lane >> 2);
    const uint64_t dq = wg_desc(sq + wg * (64 / 8) * G::SBO_QK, 128, G::SBO_QK);
    const uint64_t dk0 = TMA ? wg_desc_sw128(sk, 16, 1024) : wg_desc(sk, 128, G::SBO_QK);
    const uint64_t dv0 = TMA ? wg_desc_sw128(sv, G::V_BYTES, 1024) : faw_v_desc<BC>(sv);
    uint64_t dones = 0; /* the TMA form's ones columns (the cp.async form's sit in every V stage) */
    if constexpr (TMA) dones = wg_desc(faw_smem + G::ONES, FAW_V_KSTEP, FAW_V_KSTEP);
    float s[NST][4];
    float(&sf)[BC / 2] = faw_flat(s);
    float(&of)[D / 2 + 4] = faw_flat(o);
    uint32_t p0[NST / 2][4], p1[NST / 2][4]; /* P of even and odd tiles, as in attention_wgmma.cu */
    float c[2] = {1.0f, 1.0f};
    bool rescale = false;

    /* Ping-pong: warpgroup w waits at barrier 1 + w for its turn and passes it on to 1 + (w + 1) %
     * NWG. The last warpgroup gives warpgroup 0 its first turn, and does not pass on its last
     * one, so every phase is complete when the block ends. */
    const bool pp = NWG > 1 && pingpong;
    const unsigned pp_mine = 1 + wg, pp_next = 1 + (wg + 1) % NWG;
    if (pp && wg == NWG - 1 && ntiles > 0) named_bar_arrive(1, FAWS_PP_COUNT);
    auto pass_turn = [&](const int j) {
        if (pp && !(wg == NWG - 1 && j == ntiles - 1)) named_bar_arrive(pp_next, FAWS_PP_COUNT);
    };
    /* A warpgroup whose 64 rows all lie past Lq (in a block that ends past it: SD-XL's 1024 tokens
     * in 192-row blocks leave two of the last block's three idle) issues no products, which would
     * only take the tensor cores from the others, but keeps the protocol: it takes its turns and
     * hands every stage back once it has landed (each phase of "empty" counts every consumer
     * thread; waiting for "full" first keeps its arrivals in the phase they belong to). */
    if (q0 + wg * 64 >= p.lq) {
        for (int j = 0; j < ntiles; j++) {
            mbar_wait(&full[j % S], (unsigned)(j / S) & 1u);
            if (pp) named_bar_sync(pp_mine, FAWS_PP_COUNT);
            pass_turn(j);
            mbar_arrive(&empty[j % S]);
        }
        return;
    }
    /* tile j landed and this warpgroup's turn: O rescaled for tile j - 1, S_j issued, committed */
    auto scores = [&](const int j) {
        mbar_wait(&full[j % S], (unsigned)(j / S) & 1u);
        if (pp) named_bar_sync(pp_mine, FAWS_PP_COUNT);
        if (j > 0 && rescale) fa_rescale<NDT + 1>(o, c);
        faw_scores<T, NKS, BC, TMA ? 32 : 256>(sf, dq, faw_desc_at(dk0, j % S * G::K_BYTES));
        wg_commit();
    };
    auto pv = [&](const int j, const uint32_t(&pin)[NST / 2][4]) {
        if constexpr (TMA)
            faws_pv_issue_tma<T, BC>(of, pin, faw_desc_at(dv0, j % S * G::V_BYTES), dones);
        else
            faw_pv_issue<T, D, BC>(of, pin, faw_desc_at(dv0, j % S * G::V_BYTES));
    };
    /* tile j >= 1: its S and tile j - 1's P V in flight together, then tile j - 1's stage back */
    auto step = [&](const int j, const uint32_t(&pin)[NST / 2][4], uint32_t(&pout)[NST / 2][4]) {
        scores(j);
        pv(j - 1, pin);
        pass_turn(j);
        wg_wait<1>(); /* S_j */
        wg_fence_acc(sf);
        faw_softmax<T, NDT, BC>(p, j, q0, row0, tq, s, o, mr, c, rescale, pout);
        wg_wait<0>(); /* P V of tile j - 1 */
        wg_fence_acc(of);
        mbar_arrive(&empty[(j - 1) % S]);
    };
    if (ntiles > 0) {
        scores(0);
        pass_turn(0);
        wg_wait<0>();
        wg_fence_acc(sf);
        faw_softmax<T, NDT, BC>(p, 0, q0, row0, tq, s, o, mr, c, rescale, p0);
    }
    faw_tile_loop(ntiles, step, p0, p1);
    faw_last_pv<NDT>(ntiles, rescale, o, of, c, pv, p0, p1); /* (its stage is not needed again) */
    faw_store_o<T, D>(p, b, h, row0, tq, o);
#endif
}

/* ---- host ------------------------------------------------------------------------------------ */

/* (dtype, head dim, consumer warpgroups, keys per tile, TMA) */
#define FAWS_FOR_EACH(X)                                                                                      \
    X(__half, 40, 2, 64, false) X(__half, 64, 2, 64, false) X(__half, 80, 2, 64, false)                         \
    X(__nv_bfloat16, 40, 2, 64, false) X(__nv_bfloat16, 64, 2, 64, false) X(__nv_bfloat16, 80, 2, 64, false)   \
    X(__half, 64, 3, 64, false) X(__half, 80, 3, 64, false) X(__nv_bfloat16, 64, 3, 64, false)                  \
    X(__nv_bfloat16, 80, 3, 64, false) X(__half, 40, 2, 128, false) X(__half, 64, 2, 128, false)                \
    X(__half, 80, 2, 128, false) X(__nv_bfloat16, 40, 2, 128, false) X(__nv_bfloat16, 64, 2, 128, false)       \
    X(__nv_bfloat16, 80, 2, 128, false) X(__half, 64, 2, 64, true) X(__nv_bfloat16, 64, 2, 64, true)           \
    X(__half, 64, 3, 64, true) X(__nv_bfloat16, 64, 3, 64, true) X(__half, 64, 2, 128, true)                   \
    X(__nv_bfloat16, 64, 2, 128, true)

/* Soft, as cuda_flash_wgmma_setup: a failure only keeps the kernel off (image_ok stays 0). */
int cuda_flash_wgmma_ws_setup(cuda_impl *c) {
    if (c->faw_load == CUDA_WS_LOAD_TMA) cuda_tensor_map_setup(c); /* (without it: the cp.async form) */
    int image_ok = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&image_ok, faws_image_ok, sizeof image_ok);
#define FAWS_SET(T, D, NWG, BC, TMA)                                                                         \
    if (e == cudaSuccess && image_ok)                                                                        \
        e = cudaFuncSetAttribute(faws_kernel<T, D, NWG, BC, TMA>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                 faws_geom_of<D, NWG, BC, TMA>::TOTAL);
    FAWS_FOR_EACH(FAWS_SET)
#undef FAWS_SET
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the next call must not report it */
        return 0;
    }
    return image_ok;
}

/* Under LOCO_CUDA_FLASH_LOAD=tma, at head dim 64, where TMA can take K and V (row and sample strides
 * multiples of 8 elements, 16-byte-aligned bases): their tensor maps, and *tma = true; otherwise
 * the cp.async form runs (*tma = false). A map the driver refuses within those rules (strides of
 * 2^40 bytes or more) is this call's error, not a silent change of kernel. */
static loco_status faws_tma_maps(cuda_impl *c, loco_dtype dt, int D, dim3 grid, const fa_params *fp, faws_maps *m,
                                 bool *tma, loco_err *err) {
    *tma = false;
    if (c->faw_load != CUDA_WS_LOAD_TMA || !c->tensor_map_encode || D != 64 || fp->rs % 8 != 0 ||
        fp->kv_bs % 8 != 0 || ((uintptr_t)fp->k & 15u) != 0 || ((uintptr_t)fp->v & 15u) != 0)
        return LOCO_OK;
    int nkv = 1; /* the K/V samples this launch reads */
    for (unsigned z = 0; z < grid.z && z < FA_KV_MAX; z++)
        if (fp->kv[z] + 1 > nkv) nkv = fp->kv[z] + 1;
    const int64_t dims[3] = {(int64_t)grid.y * 64, fp->lk, nkv}, strides[2] = {fp->rs * 2, fp->kv_bs * 2};
    const unsigned box[3] = {64, (unsigned)c->flash_wgmma, 1};
    CUDA_TRY(cuda_tensor_map_make(c, &m->k, fp->k, dt, 3, dims, strides, box, err));
    CUDA_TRY(cuda_tensor_map_make(c, &m->v, fp->v, dt, 3, dims, strides, box, err));
    *tma = true;
    return LOCO_OK;
}

/* As cuda_flash_wgmma, whose LOCO_CUDA_FLASH=wgmma_ws* calls come here: nwg warpgroups (2, or 3
 * at head dims 64 and 80), c->flash_wgmma keys per tile (64, or 128 with two warpgroups). */
loco_status cuda_flash_wgmma_ws(cuda_impl *c, loco_dtype dt, int D, int nwg, dim3 grid, const fa_params *fp,
                                loco_err *err) {
    grid.x = (unsigned)((fp->lq + FAW_BR(nwg) - 1) / FAW_BR(nwg));
    faws_maps maps;
    memset(&maps, 0, sizeof maps);
    bool tma = false;
    CUDA_TRY(faws_tma_maps(c, dt, D, grid, fp, &maps, &tma, err));
    const int arrive = c->faw_load == CUDA_WS_LOAD_ARRIVE;
#define FAWS_LAUNCH(T, DD, NWG, BC, TMA)                                                                        \
    if (dt == cuda_dtype_of<T>::value && D == DD && nwg == NWG && c->flash_wgmma == BC && tma == TMA) {          \
        const int smem = faws_geom_of<DD, NWG, BC, TMA>::TOTAL, threads = FAWS_THREADS(NWG);                    \
        LOCO_LAUNCH(grid, threads, smem, c->stream, faws_kernel<T, DD, NWG, BC, TMA>)(*fp, c->faw_pingpong, arrive, \
                                                                                      maps);                     \
        return cuda_check_launch("faws_kernel", err);                                                           \
    }
    FAWS_FOR_EACH(FAWS_LAUNCH)
#undef FAWS_LAUNCH
    return loco_err_set(err, LOCO_EUNSUPPORTED,
                        "cuda flash wgmma_ws: no kernel for head dim %d, %d warpgroups, %d keys per tile", D, nwg,
                        c->flash_wgmma);
}
