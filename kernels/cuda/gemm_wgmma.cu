/* gemm_wgmma.cu: a transformer feed-forward's first GEMM with its GEGLU in the epilogue,
 *     y[m, j] = h * gelu(g),   h = x[m, :] . w[j, :] + b[j],   g = x[m, :] . w[N + j, :] + b[N + j]
 * (x [M, K], w [2N, K], y [M, N]; diffusers' GEGLU: ff.net.0.proj, then chunk and gelu), on
 * Hopper's wgmma, warp-specialised; and, with the same main loop, the plain linear
 *     y[m, j] = x[m, :] . w[j, :] + b[j]   (+ y[m, j] for loco_linear_accumulate).
 * EXPERIMENTAL, used only under LOCO_CUDA_GEGLU=wgmma and LOCO_CUDA_LINEAR=wgmma, for f16/bf16
 * with K a multiple of 64 and N of 128 (GEGLU: every SD 1.x/2.x/XL feed-forward) or 256 (linear:
 * SD-XL's 1280-wide projections, whose cuBLASLt GEMMs ran at 535-561 TFLOP/s in run 6; by TMA any
 * multiple of 8, the last column tile partly empty). Not yet timed on a GPU; correct on the
 * emulator (tests/emu) in every `make test`.
 *
 * Why: SD-XL's batch-8 UNet call spends 11.5 ms (of 233) in the separate GEGLU pass (run 6
 * profile: it reads the GEMM's [16384, 2 x 5120] output and writes half of it, at 3.5 TB/s,
 * already near the memory's speed). Folded into the GEMM, the pass goes and the GEMM writes half
 * the bytes; it pays only if this GEMM keeps close to cuBLASLt's 709 TFLOP/s on those shapes
 * (op_bench's "@geglu_wgmma" rows tell). cuBLASLt has no epilogue that multiplies two columns.
 *
 * Tile: 128 rows x 256 GEMM columns; for GEGLU the 256 are 128 outputs' h rows of w, then their
 * 128 g rows (w itself is the checkpoint's), so that h and g of an output land in one thread's
 * accumulators, 64 apart (wgmma's m64nNk16 layout: d[4 c + e] is row g + 8 (e / 2), column
 * 8 c + 2 t + e % 2 of column block c: h in blocks 0-15, g in 16-31); staging re-pairs them.
 *
 * Block: warpgroups 0 and 1 compute 64 rows x 256 columns each (128 fp32 accumulators a thread)
 * with four m64n256k16 products per 64-deep k-step; warpgroup 2 loads (every thread: 24
 * cp.async of 16 bytes per k-step). Persistent: one
 * block per SM walks tiles blockIdx.x, + gridDim.x, ..., in groups of GW_GROUP_M row tiles
 * (each group sweeps every column tile with its rows of x resident in L2, and concurrent blocks
 * share w's rows).
 *
 * The GEGLU epilogue beside the products: its 64 erf-GELUs a consumer thread per tile compile
 * to about 3600 instructions (SASS of the first form), which, run after the last product of a
 * tile by both consumer warpgroups at once, left the tensor cores idle for about 6000 cycles a
 * tile against 20000 of products at K = 1280 (about 30 %, more than the separate pass costs).
 * So a consumer warpgroup only adds the biases and rounds h and g to T (what the unfused GEMM
 * stores) into its half of a staging tile in shared memory, and computes h * gelu(g) rounded
 * once (as geglu_kernel does) from there during its next tile's k-steps, a slice per step
 * between issuing the products and waiting for them, as FlashAttention-3 hides its softmax;
 * y goes out in 16-byte stores. (A fourth warpgroup for it does not fit: a 512-thread block
 * gets 128 registers a thread at launch, and ptxas needs 154 for an m64n256 product even
 * where setmaxnreg would give more.) The plain linear's epilogue (a bias and a rounding) stays
 * after the products, its loads issued together before its stores (the first form waited for
 * each bias load in turn: the compiler could not move them past the stores to y).
 *
 * Shared memory: S stages of A 128 x 64 and B 256 x 64 (4 for the linear; 3 for GEGLU, whose
 * staging tile of 2 x 64 rows x 528 bytes takes the fourth's room): K-major, no swizzle, 8 x 16-byte
 * core matrices; element (r, k) at (r / 8) 1024 + (k / 8) 128 + (r % 8) 16 + (k % 8) 2 (LBO 128,
 * SBO 1024, as the H200's layout self-test confirmed for conv_wgmma.cu's operands). A warp's 32
 * cp.async fill 512 contiguous bytes (lanes: 8 rows x 4 chunks of a row group). Staging rows are
 * 512 bytes + 16 of padding, so a warp's 4-byte stores (8 rows x 4 lanes) hit 32 banks.
 *
 * The TMA form (LOCO_CUDA_GEMM_WGMMA_LOAD=tma, session 12, not yet timed): one producer thread
 * asks the TMA unit for each stage's tiles (x's 128 x 64 box; w's 256 x 64, or for GEGLU its 128
 * h rows and its 128 g rows as two boxes) and
 * counts their 48 KB off the stage's "full" mbarrier (expect_tx); they land 128-byte swizzled
 * (row r at r 128 bytes, its 16-byte chunks XOR-ed with r % 8), which the consumers' descriptors
 * name (wg_desc_sw128). Why: the cp.async producer spends 128 threads' issue slots and, per
 * stage, a wait for its own copies and a proxy fence before publishing (session 11's open
 * question: that fence may wait for the copies still in flight); cuBLAS's and CUTLASS's Hopper
 * GEMMs load by TMA. Rows past M arrive as zeros from the copy itself. LOCO_CUDA_GEMM_WGMMA_LOAD=arrive
 * keeps the cp.async producer but has it publish each step as it issues it, by
 * cp.async.mbarrier.arrive (block_sync.cuh): no wait for its own copies, no fence.
 *
 * Clusters of two (LOCO_CUDA_GEMM_WGMMA_CLUSTER=2 with the TMA form, session 14, not yet timed):
 * at 600 TFLOP/s a block's 48 KB per k-step is about 6.8 TB/s from L2 over the whole chip, close
 * to what Hopper's L2 gives; cuBLAS's Hopper GEMMs share an operand between the two blocks of a
 * cluster. Here a cluster's blocks take row tiles 2p and 2p + 1 of one column tile: each loads
 * its own 128 rows of x and half of w's 256-row tile (GEGLU: the h rows or the g rows) and
 * multicasts that half to both, so a block reads 32 KB a k-step from L2 instead of 48. A stage
 * is then written by both producers, so it must go back to both: each consumer warp arrives on
 * its own block's "empty" barrier and on the peer's (mapa; 16 arrivals a phase), and a "full"
 * barrier counts its own 16 KB of x and both halves of w (the peer's can land before this
 * block's producer has armed the phase: the transaction count goes below zero meanwhile, which
 * the hardware allows). The blocks meet at a cluster barrier after initialising their mbarriers
 * and before exiting. The persistent grid is the number of clusters that can run at once
 * (cudaOccupancyMaxActiveClusters), times two.
 *
 * The LayerNorm form (LOCO_CUDA_LN_FOLD=1 with the TMA form, alone or in clusters; session 15,
 * not yet timed): the GEMM after a transformer block's LayerNorm (q, k, v; attn2's to_q; the
 * feed-forward) reads the block's hidden states x themselves. A pass beforehand
 * (norm.cu's ln_stats_kernel) writes each row's (mean, rstd), 8 bytes a row where the
 * LayerNorm writes x's size (SD-XL b8: 42 MB, three times a block), and every thread stages
 * gamma/beta as fp32 in a table after the barriers (K <= 2048). A consumer warp then reads its
 * A fragments from the swizzled stage by ldmatrix, normalises them in registers exactly as
 * ln_rows_kernel writes them (fmaf(x - mean, gamma rstd, beta), rounded once), and runs the
 * products with A from registers (wgmma's register-A form): the same bits as the LayerNorm, then
 * this GEMM. The fragments of step s are written while step s - 1's products still read the
 * other set of registers, so the normalising (about 170 instructions a thread a step) overlaps
 * the tensor cores, a tile's first step's included (normalised during the previous tile's last
 * products); no shared memory is written, so the stage's traffic is the plain form's.
 *
 * Synchronisation (attention_wgmma_ws.cu's protocol, per k-step s counted over all of a block's
 * tiles, stage s % S, its (s / S)-th use; LAG = S - 2):
 *   producer: waits for empty[stage] phase (s / S) - 1 (from s = S on), issues step s's copies,
 *             commits them, then waits for step s - LAG's, fences them for the async proxy and
 *             arrives on full[(s - LAG) % S] (128 arrivals a phase);
 *   consumer: waits for full[stage] phase s / S, issues the four products, and once the wait
 *             that retires them has run (the next step's wait_group 1, or a tile's last
 *             wait_group 0) arrives on empty[stage] (256 arrivals a phase);
 *   GEGLU: each consumer warpgroup alone reads and writes its half of the staging tile; a
 *             named barrier of its 128 threads before it stages a tile (the previous one is
 *             read) and after (this one is written). */
#include <string.h>

#include "block_sync.cuh"
#include "cuda_device.h"
#include "gemm_wgmma_products.cuh"
#include "mma.h"
#include "tma.cuh"

/* 1 only in the sm_90a image (the Makefile builds this file for sm_90a alone). */
__device__ const int gw_image_ok = WG_DEVICE_OK;

#define GW_BM 128     /* rows of x per tile: two warpgroups of 64 */
#define GW_BN 256     /* GEMM columns per tile (GEGLU: 128 outputs' h and g) */
#define GW_OUT(GEGLU) ((GEGLU) ? 128 : 256) /* outputs per tile */
#define GW_BK 64      /* k per stage */
#define GW_GROUP_M 16 /* row tiles per group of the tile order */
#define GW_A_BYTES (GW_BM * GW_BK * 2)
#define GW_B_BYTES (GW_BN * GW_BK * 2)
#define GW_STAGE_BYTES (GW_A_BYTES + GW_B_BYTES) /* 48 KB */
#define GW_STAGING_PITCH (GW_BN * 2 + 16)         /* bytes per staging row (GEGLU) */
#define GW_LN_MAX_K 2048 /* the LayerNorm form's gamma/beta table: 8 bytes a channel after the barriers */

#define GW_THREADS 384 /* two consumer warpgroups, then the producer's */
/* Registers: the launch gives 65536 / 384 = 170, rounded down to 168, a thread; setmaxnreg moves
 * them: the producer keeps 40 (its loop uses up to R38) and the consumers take 232 (128
 * accumulators, and the GEGLU slice's or the linear epilogue's temporaries beside them):
 * 128 x 40 + 256 x 232 = 384 x 168. */
#define GW_PRODUCER_REGS 40
#define GW_CONSUMER_REGS 232
static_assert(128 * GW_PRODUCER_REGS + 256 * GW_CONSUMER_REGS <= 168 * GW_THREADS,
              "setmaxnreg asks for more registers than the launch gives the block");

/* Per form: stages, and shared memory (the stages, GEGLU's staging tile, then the 2 S mbarriers
 * full and empty). */
template <bool GEGLU> struct gw_cfg {
    static constexpr int STAGES = GEGLU ? 3 : 4;
    static constexpr int LAG = STAGES - 2; /* steps whose copies stay in flight beside the one published */
    static constexpr int STAGING = GEGLU ? GW_BM * GW_STAGING_PITCH : 0;
    static constexpr int BARS = STAGES * GW_STAGE_BYTES + STAGING;
    static constexpr int SMEM = BARS + 2 * STAGES * 8;
    /* Consumers release step s in step s + 1, which needs step s + 1 published; the producer
     * waits for that release before step s + S, having published up to s + S - 1 - LAG by then. */
    static_assert(STAGES >= LAG + 2 && LAG >= 1, "the producer would wait for a stage no consumer can release");
    static_assert(SMEM <= 232448, "more shared memory than an sm_90 block may have");
    /* the LayerNorm form: (gamma, beta) of k and k + 1 as one float4 per pair of channels, after
     * the barriers (SMEM is a multiple of 16) */
    static constexpr int SMEM_LN_MAX = SMEM + 8 * GW_LN_MAX_K;
    static_assert(SMEM % 16 == 0 && SMEM_LN_MAX <= 232448, "the LayerNorm form's table does not fit");
};

struct gw_params {
    CUtensorMap map_x, map_w; /* the TMA form's: x [M, K] in 64 x 128 boxes, w [2N or N, K] in 64 x
                               * 128 (GEGLU) or 64 x 256, 128-byte swizzle; zeros otherwise */
    const void *x, *w, *b; /* b: [2N] (GEGLU) or [N], or NULL */
    void *y;
    int m, k, n;           /* n: outputs (GEGLU: w has 2n rows) */
    int tiles_m, tiles_n;
    int accumulate;        /* linear: y += x . wᵀ + b */
    int arrive;            /* cp.async form: publish by cp.async.mbarrier.arrive (LOCO_CUDA_GEMM_WGMMA_LOAD=arrive) */
    /* The LayerNorm form: x is normalised on its way to the tensor cores, with each row's (mean,
     * rstd) from ln_stats_kernel and gamma/beta [k] (beta may be NULL) of run-time dtype. */
    const float2 *ln_stats;
    const void *ln_gamma, *ln_beta;
    int ln_gdt, ln_bdt;
};

/* A block's walk over the tiles. Alone: tiles blockIdx.x, + gridDim.x, ..., tile t in groups of
 * GW_GROUP_M row tiles (fewer in the last), each sweeping the column tiles with its row tiles
 * fastest. In clusters of two (MC): the cluster's walk over pairs of row tiles (cluster
 * blockIdx.x / 2 of gridDim.x / 2; groups of GW_GROUP_M / 2 pairs), block `rank` of it taking
 * row tile 2 pair + rank, so both walk the same column tiles and k-steps in the same order (a
 * last pair past M computes zeros and stores nothing). */
template <bool MC> struct gw_walk {
    int first, stride, tiles, tiles_m, rank;
    __device__ __forceinline__ gw_walk(const gw_params &p, int rank_in_cluster) {
        rank = rank_in_cluster;
        tiles_m = MC ? (p.tiles_m + 1) >> 1 : p.tiles_m;
        first = MC ? (int)blockIdx.x >> 1 : (int)blockIdx.x;
        stride = MC ? (int)gridDim.x >> 1 : (int)gridDim.x;
        tiles = tiles_m * p.tiles_n;
    }
    __device__ __forceinline__ void coords(const gw_params &p, int tile, int *tm, int *tn) const {
        constexpr int GROUP = MC ? GW_GROUP_M / 2 : GW_GROUP_M;
        const int per_group = GROUP * p.tiles_n, group = tile / per_group;
        const int first_m = group * GROUP, rows = tiles_m - first_m < GROUP ? tiles_m - first_m : GROUP;
        const int local = tile - group * per_group;
        *tm = MC ? 2 * (first_m + local % rows) + rank : first_m + local % rows;
        *tn = local / rows;
    }
};

/* Step (tile tm/tn, k-tile kt)'s copies from this producer thread (warp pw of the producer
 * warpgroup, lane l): A's 16 row groups and B's 32, two warp instructions (chunks 0-3, 4-7) per
 * row group. B's row group c is column block c of the tile: for the linear w's rows
 * tn * 256 + 8 c + 0..7; for GEGLU h rows (c < 16: warps 0, 1) or g rows (w's row n on) of
 * outputs tn * 128 + 8 (c % 16) + 0..7.
 * Rows of x past M become zeros. Few registers (the producer keeps 40): one pointer into x and
 * one into w per step, the rest 32-bit offsets from them (the host checked w's elements < 2^31)
 * and immediates. */
template <typename T, bool GEGLU>
__device__ __forceinline__ void gw_load_step(unsigned char *sa, unsigned char *sb, const gw_params &p, int tm, int tn,
                                             int kt, int pw, int l) {
    const int r8 = l & 7, c4 = l >> 3, k8 = 8 * p.k;
    const int row0 = tm * GW_BM + pw * 32 + r8; /* this thread's row of its first row group */
    const T *xb = (const T *)p.x + (int64_t)row0 * p.k + kt * GW_BK + c4 * 8;
    const int64_t wrow = GEGLU ? (int64_t)(pw >> 1) * p.n + tn * GW_OUT(true) + (pw & 1) * 64 : tn * GW_BN + pw * 64;
    const T *wb = (const T *)p.w + (wrow + r8) * p.k + kt * GW_BK + c4 * 8;
    unsigned char *da = sa + pw * 4 * 1024 + c4 * 128 + r8 * 16, *db = sb + pw * 8 * 1024 + c4 * 128 + r8 * 16;
#pragma unroll
    for (int q = 0; q < 4; q++) { /* A's row groups pw * 4 + q */
        const bool ok = row0 + 8 * q < p.m;
#pragma unroll
        for (int h = 0; h < 2; h++) /* chunks c4 and c4 + 4 */
            cp_async16(da + q * 1024 + h * 512, ok ? xb + q * k8 + h * 32 : (const T *)p.x, ok ? 16 : 0);
    }
#pragma unroll
    for (int j = 0; j < 8; j++) { /* B's row groups pw * 8 + j */
#pragma unroll
        for (int h = 0; h < 2; h++) cp_async16(db + j * 1024 + h * 512, wb + j * k8 + h * 32, 16);
    }
}

/* A producer's walk over the block's k-steps: step(tm, tn, kt, s, st) for each (tile tm/tn,
 * k-tile kt; s counted over the block's tiles, stage st = s % STAGES) once the stage is free
 * (its previous use released on empty[st]). Returns the number of steps. */
template <bool GEGLU, bool MC, typename Step>
__device__ __forceinline__ int gw_produce_steps(uint64_t *empty, const gw_params &p, const gw_walk<MC> &walk,
                                                Step &&step) {
    typedef gw_cfg<GEGLU> C;
    const int ktiles = p.k / GW_BK;
    int s = 0;
    for (int tile = walk.first; tile < walk.tiles; tile += walk.stride) {
        int tm, tn;
        walk.coords(p, tile, &tm, &tn);
        for (int kt = 0; kt < ktiles; kt++, s++) {
            const int st = s % C::STAGES;
            if (s >= C::STAGES) mbar_wait(&empty[st], (unsigned)(s / C::STAGES - 1) & 1u);
            step(tm, tn, kt, s, st);
        }
    }
    return s;
}

/* The producer warpgroup's loop (the synchronisation above). */
template <typename T, bool GEGLU>
__device__ __forceinline__ void gw_produce(unsigned char *smem, uint64_t *full, uint64_t *empty, const gw_params &p,
                                           int pw, int l) {
    typedef gw_cfg<GEGLU> C;
    const int n = gw_produce_steps<GEGLU>(empty, p, gw_walk<false>(p, 0), [&](int tm, int tn, int kt, int s, int st) {
        unsigned char *sa = smem + st * GW_STAGE_BYTES;
        gw_load_step<T, GEGLU>(sa, sa + GW_A_BYTES, p, tm, tn, kt, pw, l);
        if (p.arrive) { /* the copies arrive for themselves when they land */
            cp_async_publish_arrive(&full[st]);
            return;
        }
        cp_async_commit();
        if (s >= C::LAG) cp_async_publish<C::LAG>(&full[(s - C::LAG) % C::STAGES]); /* step s - LAG's copies */
    });
    if (!p.arrive) cp_async_publish_tail<C::LAG>(full, n, C::STAGES);
}

/* The TMA form's producer: one thread, one copy of A and one (linear) or two (GEGLU: the tile's
 * 128 h rows, then its 128 g rows) of B per k-step, their 48 KB counted off full[stage]; rows of
 * x past M arrive as zeros. No lag: a stage is published as it is asked for. */
template <bool GEGLU, bool MC>
__device__ __forceinline__ void gw_produce_tma(unsigned char *smem, uint64_t *full, uint64_t *empty, const gw_params &p,
                                               const gw_walk<MC> &walk) {
    tma_prefetch_map(&p.map_x);
    tma_prefetch_map(&p.map_w);
    gw_produce_steps<GEGLU>(empty, p, walk, [&](int tm, int tn, int kt, int, int st) {
        unsigned char *sa = smem + st * GW_STAGE_BYTES, *sb = sa + GW_A_BYTES;
        mbar_arrive_expect_tx(&full[st], GW_STAGE_BYTES);
        tma_load_2d(sa, &p.map_x, kt * GW_BK, tm * GW_BM, &full[st]);
        if (MC) { /* this block's half of w's tile (GEGLU: the h rows or the g rows), to both blocks */
            const int wrow = GEGLU ? walk.rank * p.n + tn * GW_OUT(true) : tn * GW_BN + walk.rank * (GW_BN / 2);
            tma_load_2d_multicast(sb + walk.rank * (GW_B_BYTES / 2), &p.map_w, kt * GW_BK, wrow, &full[st], 0x3);
        } else if (GEGLU) {
            tma_load_2d(sb, &p.map_w, kt * GW_BK, tn * GW_OUT(true), &full[st]);
            tma_load_2d(sb + GW_B_BYTES / 2, &p.map_w, kt * GW_BK, p.n + tn * GW_OUT(true), &full[st]);
        } else {
            tma_load_2d(sb, &p.map_w, kt * GW_BK, tn * GW_BN, &full[st]);
        }
    });
}

/* GEGLU: h and g of this thread's accumulators with their biases, rounded to T (what the unfused
 * GEMM stores), into its warpgroup's half of the staging tile, h and g of 8 outputs side by side
 * in column blocks 2i and 2i + 1 (row r of the half at r * GW_STAGING_PITCH; row0 the warp's
 * first). The accumulators' column block c holds h (c < 16) or g of outputs (c % 16) * 8 + 2 t,
 * + 1. */
template <typename T>
__device__ __forceinline__ void gw_stage_geglu(const float (&d)[GW_BN / 2], const gw_params &p, unsigned char *staging,
                                              int row0, int tn, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const T *__restrict__ b = (const T *)p.b;
#pragma unroll
    for (int c = 0; c < GW_BN / 8; c++) {
        const int is_g = c >> 4, block = c & 15, sc = 2 * block + is_g;
        const int bcol = is_g * p.n + tn * GW_OUT(true) + block * 8 + 2 * t;
        const float b0 = b ? to_f32(b[bcol]) : 0.0f, b1 = b ? to_f32(b[bcol + 1]) : 0.0f;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const T pair[2] = {from_f32<T>(d[4 * c + 2 * half] + b0), from_f32<T>(d[4 * c + 2 * half + 1] + b1)};
            uint32_t packed;
            memcpy(&packed, pair, 4);
            *(uint32_t *)(staging + (row0 + g + 8 * half) * GW_STAGING_PITCH + (8 * sc + 2 * t) * 2) = packed;
        }
    }
}

/* GEGLU: vectors q0 .. q1 - 1 (of 8) of a staged half (thread e of its warpgroup, rows from
 * row_base): y = h * gelu(g) rounded once, as geglu_kernel computes it, for 8 outputs at a time
 * (h from column block 2i, g from 2i + 1 of a staged row), each a 16-byte store; 16
 * consecutive threads write a row's 256 contiguous bytes. */
template <typename T>
__device__ __forceinline__ void gw_finish_geglu(const unsigned char *staging, const gw_params &p, int row_base, int tn,
                                               int e, int q0, int q1) {
    T *__restrict__ y = (T *)p.y;
    for (int q = q0; q < q1; q++) {
        const int v = q * 128 + e, r = v >> 4, i = v & 15, row = row_base + r;
        if (row >= p.m) continue;
        const vec16<T> h = *(const vec16<T> *)(staging + r * GW_STAGING_PITCH + 2 * i * 16);
        const vec16<T> gate = *(const vec16<T> *)(staging + r * GW_STAGING_PITCH + (2 * i + 1) * 16);
        vec16<T> out;
#pragma unroll
        for (int k = 0; k < 8; k++) out.v[k] = from_f32<T>(to_f32(h.v[k]) * act_apply(to_f32(gate.v[k]), LOCO_ACT_GELU));
        vec16_store(y + (int64_t)row * p.n + tn * GW_OUT(true) + i * 8, out); /* one 16-byte store */
    }
}

/* The linear epilogue: acc + b (+ y) in fp32, rounded once (cuBLASLt's bias epilogue and beta = 1
 * accumulation also work in fp32; the order of its two adds may differ from this one's, a last-bit
 * difference); per quarter of the columns its loads first, then its stores. */
template <typename T>
__device__ __forceinline__ void gw_store_linear(const float (&d)[GW_BN / 2], const gw_params &p, int row0, int tn,
                                               int lane) {
    const int g = lane >> 2, t = lane & 3;
    const T *__restrict__ b = (const T *)p.b;
    T *__restrict__ y = (T *)p.y;
    const bool rows_ok[2] = {row0 + g < p.m, row0 + g + 8 < p.m};
    const int blocks = (p.n - tn * GW_BN) / 8; /* column blocks of 8 before N (N % 8 == 0): 32 but in a last tile */
#pragma unroll
    for (int c0 = 0; c0 < GW_BN / 8; c0 += 8) {
        float bias[8][2], old[8][2][2];
#pragma unroll
        for (int c = 0; c < 8; c++) {
            const int col = tn * GW_BN + (c0 + c) * 8 + 2 * t;
            const bool col_ok = c0 + c < blocks;
            bias[c][0] = b && col_ok ? to_f32(b[col]) : 0.0f, bias[c][1] = b && col_ok ? to_f32(b[col + 1]) : 0.0f;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const T *in = y + (int64_t)(row0 + g + 8 * half) * p.n + col;
                const bool load = p.accumulate && rows_ok[half] && col_ok;
                old[c][half][0] = load ? to_f32(in[0]) : 0.0f, old[c][half][1] = load ? to_f32(in[1]) : 0.0f;
            }
        }
#pragma unroll
        for (int c = 0; c < 8; c++) {
            const int col = tn * GW_BN + (c0 + c) * 8 + 2 * t;
            if (c0 + c >= blocks) continue;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                if (!rows_ok[half]) continue;
                const float *dv = &d[4 * (c0 + c) + 2 * half];
                const T pair[2] = {from_f32<T>(dv[0] + bias[c][0] + old[c][half][0]),
                                   from_f32<T>(dv[1] + bias[c][1] + old[c][half][1])};
                uint32_t packed;
                memcpy(&packed, pair, 4);
                *(uint32_t *)(y + (int64_t)(row0 + g + 8 * half) * p.n + col) = packed;
            }
        }
    }
}

/* The LayerNorm form: two channels (k, k + 1) of a row of x, packed as the A fragment holds them
 * (k in the low half), normalised as ln_rows_kernel writes them: fmaf(x - mean, gamma rstd,
 * beta) rounded once, with gb = (gamma_k, beta_k, gamma_k+1, beta_k+1) and st = (mean, rstd). */
template <typename T> __device__ __forceinline__ uint32_t gw_ln_pair(uint32_t packed, float2 st, float4 gb) {
    T v[2];
    memcpy((void *)v, &packed, 4);
    v[0] = from_f32<T>(fmaf(to_f32(v[0]) - st.x, gb.x * st.y, gb.y));
    v[1] = from_f32<T>(fmaf(to_f32(v[1]) - st.x, gb.z * st.y, gb.w));
    memcpy(&packed, v, 4);
    return packed;
}

/* The LayerNorm form: a consumer warp's A fragments for k-tile kt (four k16 steps; fragment
 * a[kk] = rows g, g + 8 of the warp's 16 at k 2t, 2t + 1, then 2t + 8, 2t + 9), read by ldmatrix
 * from the 128-byte-swizzled stage (sa: the warpgroup's 64 rows, 1024-byte aligned; row r's
 * 16-byte chunk c at r 128 + (c ^ r % 8) 16: a quarter-warp's eight rows hit eight different
 * chunks) and normalised in registers with the rows' statistics st[0], st[1] and the table's
 * gamma/beta (four lanes' float4s side by side, the same for the warp's 8 row pairs). */
template <typename T>
__device__ __forceinline__ void gw_ln_fragments(uint32_t (&a)[GW_BK / 16][4], const unsigned char *sa,
                                                const float4 *table, int kt, const float2 (&st)[2], int warp,
                                                int lane) {
    const int r = warp * 16 + (lane & 15), t = lane & 3;
#pragma unroll
    for (int kk = 0; kk < GW_BK / 16; kk++) {
        const int chunk = 2 * kk + (lane >> 4);
        ldmatrix_x4(a[kk], sa + r * 128 + ((chunk ^ (r & 7)) << 4));
        const int pair = (kt * GW_BK + kk * 16) / 2 + t; /* channels 2 pair, + 1; + 8 at pair + 4 */
        const float4 lo = table[pair], hi = table[pair + 4];
        a[kk][0] = gw_ln_pair<T>(a[kk][0], st[0], lo);
        a[kk][1] = gw_ln_pair<T>(a[kk][1], st[1], lo);
        a[kk][2] = gw_ln_pair<T>(a[kk][2], st[0], hi);
        a[kk][3] = gw_ln_pair<T>(a[kk][3], st[1], hi);
    }
}

/* Keeps A fragments in their registers up to here: a wgmma reads them until the wait that retires
 * it, which the compiler does not know (CUTLASS's warpgroup_fence_operand). */
__device__ __forceinline__ void gw_fence_frags(uint32_t (&a)[GW_BK / 16][4]) {
#ifndef LOCO_CUDA_EMU
#pragma unroll
    for (int kk = 0; kk < GW_BK / 16; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) asm volatile("" : "+r"(a[kk][i])::"memory");
#else
    (void)a;
#endif
}

/* The LayerNorm form: (mean, rstd) of this thread's two rows of tile row tm (zeros past M: those
 * rows' products are never stored). */
__device__ __forceinline__ void gw_ln_stats(float2 (&st)[2], const gw_params &p, int tm, int wg, int warp, int lane) {
    const int row = tm * GW_BM + wg * 64 + warp * 16 + (lane >> 2);
#pragma unroll
    for (int h = 0; h < 2; h++) st[h] = row + 8 * h < p.m ? p.ln_stats[row + 8 * h] : make_float2(0.0f, 0.0f);
}

/* A consumer's hand-back of a stage whose products have retired. Alone: every consumer thread
 * arrives (256 a phase). In clusters of two, both blocks' producers fill the stage (the peer's
 * half of w lands here too), so it goes back to both: each warp, once all its lanes are past the
 * wait, arrives on its own block's empty barrier and on the peer's (2 x 8 warps a phase). */
template <bool MC> __device__ __forceinline__ void gw_release(uint64_t *empty, int rank, int lane) {
    if (MC)
        mbar_release_pair(empty, (unsigned)rank, lane);
    else
        mbar_arrive(empty);
}

/* A consumer warpgroup (wg 0 or 1): its 64 rows of every tile of the block. LN (TMA only): A goes
 * through the warps' registers, normalised on the way (gw_ln_fragments), and the products take it
 * from there; step s's fragments are written while step s - 1's products still read the other
 * set (a_even, a_odd by the parity of s), and each tile's row statistics are loaded a tile ahead. */
template <typename T, bool GEGLU, bool TMA, bool MC, bool LN>
__device__ __forceinline__ void gw_consume(unsigned char *smem, uint64_t *full, uint64_t *empty, const gw_params &p,
                                           const gw_walk<MC> &walk, int wg, int lane_in_wg) {
    typedef gw_cfg<GEGLU> C;
    static_assert(TMA || !LN, "the LayerNorm form reads the swizzled stages of the TMA form");
    const int ktiles = p.k / GW_BK, warp = lane_in_wg >> 5, lane = lane_in_wg & 31;
    unsigned char *const staging = smem + C::STAGES * GW_STAGE_BYTES + wg * 64 * GW_STAGING_PITCH;
    const float4 *const ln_table = (const float4 *)(smem + C::SMEM);
    constexpr int SLICES = 64 * GW_OUT(true) / 8 / 128; /* 16-byte vectors a thread per staged half */
    int staged_row = -1, staged_tn = 0; /* GEGLU: the staged half's first row of y and column tile */
    float d[GW_BN / 2];
    uint32_t a_even[GW_BK / 16][4], a_odd[GW_BK / 16][4];
    bool a_ready = false; /* LN: this step's set was filled at the previous tile's last step */
    float2 st_cur[2], st_next[2];
    if (LN && walk.first < walk.tiles) {
        int tm, tn;
        walk.coords(p, walk.first, &tm, &tn);
        gw_ln_stats(st_next, p, tm, wg, warp, lane);
    }
    int s = 0;
    for (int tile = walk.first; tile < walk.tiles; tile += walk.stride) {
        int tm, tn;
        walk.coords(p, tile, &tm, &tn);
        if (LN) {
            st_cur[0] = st_next[0], st_cur[1] = st_next[1];
            if (tile + walk.stride < walk.tiles) {
                int tm2, tn2;
                walk.coords(p, tile + walk.stride, &tm2, &tn2);
                gw_ln_stats(st_next, p, tm2, wg, warp, lane);
            }
        }
#pragma unroll
        for (int i = 0; i < GW_BN / 2; i++) d[i] = 0.0f;
        for (int kt = 0; kt < ktiles; kt++, s++) {
            const int st = s % C::STAGES;
            mbar_wait(&full[st], (unsigned)(s / C::STAGES) & 1u);
            const unsigned char *sa = smem + st * GW_STAGE_BYTES + wg * 8 * 1024, *sb = smem + st * GW_STAGE_BYTES + GW_A_BYTES;
            /* one k-step: its products issued (a: this step's fragments, LN), the GEGLU slice beside
             * them, then the previous step's retired (a_prev free again) and its stage handed back */
            auto step = [&](uint32_t (&a)[GW_BK / 16][4], uint32_t (&a_prev)[GW_BK / 16][4]) {
                if (LN && !a_ready) gw_ln_fragments<T>(a, sa, ln_table, kt, st_cur, warp, lane);
                a_ready = false;
                wg_fence();
                wg_fence_acc(d);
#pragma unroll
                for (int kk = 0; kk < GW_BK / 16; kk++) { /* a k16 step: two core matrices along k, or 32 bytes of a swizzled row */
                    if (LN)
                        gw_mma_rs<T>(d, a[kk], wg_desc_sw128(sb + kk * 32, 16, 1024));
                    else if (TMA)
                        gw_mma<T>(d, wg_desc_sw128(sa + kk * 32, 16, 1024), wg_desc_sw128(sb + kk * 32, 16, 1024));
                    else
                        gw_mma<T>(d, wg_desc(sa + kk * 256, 128, 1024), wg_desc(sb + kk * 256, 128, 1024));
                }
                wg_commit();
                wg_fence_acc(d);
                if (GEGLU && staged_row >= 0) /* the previous tile's GEGLU, a slice per k-step, beside the products */
                    gw_finish_geglu<T>(staging, p, staged_row, staged_tn, lane_in_wg, SLICES * kt / ktiles,
                                       SLICES * (kt + 1) / ktiles);
                if (kt > 0) { /* the previous step's products have retired: its stage goes back */
                    wg_wait<1>();
                    wg_fence_acc(d);
                    if (LN) gw_fence_frags(a_prev);
                    gw_release<MC>(&empty[(s - 1) % C::STAGES], walk.rank, lane);
                }
                /* LN: the next tile's first fragments into the free set while this step's products
                 * run, so that tile starts with its products instead of its normalising (its stage
                 * needs no release of this tile's: the producer runs STAGES - 1 steps ahead) */
                if (LN && kt == ktiles - 1 && tile + walk.stride < walk.tiles) {
                    const int st1 = (s + 1) % C::STAGES;
                    mbar_wait(&full[st1], (unsigned)((s + 1) / C::STAGES) & 1u);
                    gw_ln_fragments<T>(a_prev, smem + st1 * GW_STAGE_BYTES + wg * 8 * 1024, ln_table, 0, st_next, warp,
                                       lane);
                    a_ready = true;
                }
            };
            if (LN && (s & 1))
                step(a_odd, a_even);
            else
                step(a_even, a_odd);
        }
        wg_wait_all();
        wg_fence_acc(d);
        if (LN) { /* the last step's set is free again (the other holds the next tile's first, or nothing) */
            gw_fence_frags(a_even);
            gw_fence_frags(a_odd);
        }
        if (ktiles > 0) gw_release<MC>(&empty[(s - 1) % C::STAGES], walk.rank, lane);
        if (GEGLU) {
            named_bar_sync(1 + wg, 128); /* every thread of the warpgroup has read the previous half */
            gw_stage_geglu<T>(d, p, staging, warp * 16, tn, lane);
            named_bar_sync(1 + wg, 128); /* and this one is written */
            staged_row = tm * GW_BM + wg * 64, staged_tn = tn;
        } else {
            gw_store_linear<T>(d, p, tm * GW_BM + wg * 64 + warp * 16, tn, lane);
        }
    }
    if (GEGLU && staged_row >= 0) gw_finish_geglu<T>(staging, p, staged_row, staged_tn, lane_in_wg, 0, SLICES);
}

/* TMA: the producer is one thread issuing TMA copies into 128-byte-swizzled stages (whose
 * 1024-byte alignment the swizzle needs: a block whose shared memory is not so aligned traps);
 * otherwise the producer warpgroup's cp.async. MC (TMA only; launched in clusters of two): the
 * blocks' mbarriers are initialised before either reaches the other's (a cluster barrier, after
 * the fence that publishes the initialisation at cluster scope), and neither exits while the
 * other may still arrive on its barriers (a cluster barrier at the end: every thread, so the
 * non-aligned form, the producer warp's lanes arriving apart). LN (TMA only): every thread first
 * stages gamma/beta as fp32 (ln_rows_kernel's values) into the table after the barriers. */
template <typename T, bool GEGLU, bool TMA, bool MC, bool LN>
__global__ void __launch_bounds__(GW_THREADS, 1) gw_kernel(const __grid_constant__ gw_params p) {
    static_assert(TMA || !MC, "the cluster form loads by TMA");
    typedef gw_cfg<GEGLU> C;
    LOCO_DYN_SMEM(unsigned char, wg_smem, 1024);
    uint64_t *full = (uint64_t *)(wg_smem + C::BARS), *empty = full + C::STAGES;
    const int tid = threadIdx.x, wg = tid >> 7;
    if (TMA && (smem_addr(wg_smem) & 1023u) != 0) __trap();
    if (tid == 0) {
        for (int i = 0; i < C::STAGES; i++) {
            mbar_init(&full[i], TMA ? 1 : 128);
            mbar_init(&empty[i], MC ? 2 * 8 : 256);
        }
        if (TMA) mbar_init_fence();
    }
    if (LN) {
        float4 *table = (float4 *)(wg_smem + C::SMEM);
        for (int i = tid; i < p.k / 2; i += GW_THREADS) {
            const float g0 = ld_dyn(p.ln_gamma, p.ln_gdt, 2 * i), g1 = ld_dyn(p.ln_gamma, p.ln_gdt, 2 * i + 1);
            const float b0 = p.ln_beta ? ld_dyn(p.ln_beta, p.ln_bdt, 2 * i) : 0.0f;
            const float b1 = p.ln_beta ? ld_dyn(p.ln_beta, p.ln_bdt, 2 * i + 1) : 0.0f;
            table[i] = make_float4(g0, b0, g1, b1);
        }
    }
    if (MC)
        cluster_sync_after_init();
    else
        __syncthreads();
    const gw_walk<MC> walk(p, MC ? (int)cluster_ctarank() : 0);
    if (wg == 2) {
        wg_setmaxnreg_dec<GW_PRODUCER_REGS>();
        if (!TMA)
            gw_produce<T, GEGLU>(wg_smem, full, empty, p, (tid >> 5) & 3, tid & 31);
        else if ((tid & 127) == 0)
            gw_produce_tma<GEGLU, MC>(wg_smem, full, empty, p, walk);
    } else {
        wg_setmaxnreg_inc<GW_CONSUMER_REGS>();
        gw_consume<T, GEGLU, TMA, MC, LN>(wg_smem, full, empty, p, walk, wg, tid & 127);
    }
    if (MC) cluster_sync();
}

/* ---- host ----------------------------------------------------------------------------------- */

/* The instantiations, X(T, GEGLU, TMA, MC, LN): per element type, GEGLU or linear, each of the
 * cp.async form, the TMA form alone and in clusters, and the LayerNorm form of the last two. */
#define GW_FOR_TYPE(X, T)                                                                                      \
    X(T, true, false, false, false) X(T, false, false, false, false) X(T, true, true, false, false)             \
    X(T, false, true, false, false) X(T, true, true, true, false) X(T, false, true, true, false)                \
    X(T, true, true, false, true) X(T, false, true, false, true) X(T, true, true, true, true)                   \
    X(T, false, true, true, true)
#define GW_FOR_EACH(X) GW_FOR_TYPE(X, __half) GW_FOR_TYPE(X, __nv_bfloat16)

/* The cluster form's clusters of two that can run at once (the bf16 kernel's resources are the
 * same; the LayerNorm form's table, at most 16 KB more, still leaves one block per SM). */
template <bool GEGLU> static int gw_max_clusters(void) {
    return cuda_max_clusters_of_two((const void *)gw_kernel<__half, GEGLU, true, true, false>, GW_THREADS,
                                    gw_cfg<GEGLU>::SMEM);
}

extern "C" loco_status cuda_gemm_wgmma_setup(cuda_impl *c, loco_err *err) {
    (void)err;
    c->geglu_wgmma_ok = c->linear_wgmma_ok = 0;
    if ((!c->geglu_wgmma && !c->linear_wgmma) || c->cc_major != 9 || c->cc_minor != 0) return LOCO_OK;
    int image_ok = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&image_ok, gw_image_ok, sizeof image_ok);
#define GW_SET(T, GEGLU, TMA, MC, LN)                                                                          \
    if (e == cudaSuccess && image_ok)                                                                          \
        e = cudaFuncSetAttribute(gw_kernel<T, GEGLU, TMA, MC, LN>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                 LN ? gw_cfg<GEGLU>::SMEM_LN_MAX : gw_cfg<GEGLU>::SMEM);
    GW_FOR_EACH(GW_SET)
#undef GW_SET
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the next call must not report it */
        return LOCO_OK;
    }
    if (c->gemm_wgmma_load == CUDA_WS_LOAD_TMA) {
        cuda_tensor_map_setup(c);
        if (!c->tensor_map_encode) return LOCO_OK; /* "unavailable" in the backend's description */
    }
    c->geglu_wgmma_ok = c->geglu_wgmma && image_ok;
    c->linear_wgmma_ok = c->linear_wgmma && image_ok;
    c->gemm_wgmma_clusters[0] = c->gemm_wgmma_clusters[1] = 0;
    if (c->gemm_wgmma_cluster == 2) { /* else the description says "clusters unavailable" */
        c->gemm_wgmma_clusters[0] = gw_max_clusters<true>();
        c->gemm_wgmma_clusters[1] = gw_max_clusters<false>();
    }
    return LOCO_OK;
}

/* A row-major [rows, cols] 16-bit matrix as a TMA tensor map: boxes of 64 columns (128 bytes,
 * 128-byte swizzle) x box_rows rows. */
static loco_status gw_tensor_map(const cuda_impl *c, CUtensorMap *map, const void *base, loco_dtype dt, int64_t rows,
                                 int64_t cols, unsigned box_rows, loco_err *err) {
    const int64_t dims[2] = {cols, rows}, strides[1] = {cols * 2};
    const unsigned box[2] = {GW_BK, box_rows};
    return cuda_tensor_map_make(c, map, base, dt, 2, dims, strides, box, err);
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* One launch of gw_kernel: its parameters, grid and form. */
struct gw_plan {
    gw_params p;
    unsigned grid;
    loco_dtype dt;
    bool geglu, tma, mc;
};

/* Plans y [rows, n] = x [rows, k] . wᵀ + b (GEGLU: of w's 2n rows, then GEGLU), or declines with
 * LOCO_EUNSUPPORTED (nothing launched). */
static loco_status gw_plan_make(cuda_impl *c, bool geglu, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                const loco_tensor *bias, int accumulate, gw_plan *pl, loco_err *err) {
    const loco_dtype dt = y->dtype;
    const int64_t k = w->shape[1], n = y->shape[y->ndim - 1], rows = loco_tensor_numel(y) / (n > 0 ? n : 1);
    const bool tma = c->gemm_wgmma_load == CUDA_WS_LOAD_TMA;
    /* the linear by TMA takes N of whole 16-byte rows where the last tile's empty columns are at
     * most a fifth of N: w's rows past N arrive as zeros and the epilogue stores the columns
     * before N (SD's 640, 960 and 1920 outputs: a last tile of 128, 192 or 128 columns; 320's
     * 192 empty of 512 and anything under one tile stay with cuBLASLt); the cp.async producer and
     * GEGLU's pairing need whole tiles */
    const int64_t empty_cols = (GW_BN - n % GW_BN) % GW_BN;
    const bool n_ok =
        n % GW_OUT(geglu) == 0 || (tma && !geglu && n % 8 == 0 && n >= GW_BN && 5 * empty_cols <= n);
    if ((dt != LOCO_F16 && dt != LOCO_BF16) || w->dtype != dt || (bias && bias->dtype != dt) || k % GW_BK != 0 || k == 0 ||
        !n_ok || n <= 0 || rows <= 0 || rows > INT32_MAX - GW_BM || loco_tensor_numel(w) > INT32_MAX ||
        !aligned16(x->data) || !aligned16(w->data) || !aligned16(y->data))
        return LOCO_EUNSUPPORTED;
    gw_params &p = pl->p;
    memset(pl, 0, sizeof *pl);
    pl->dt = dt, pl->geglu = geglu;
    p.x = x->data, p.w = w->data, p.b = bias ? bias->data : NULL, p.y = y->data;
    p.m = (int)rows, p.k = (int)k, p.n = (int)n, p.accumulate = accumulate;
    p.tiles_m = (int)((rows + GW_BM - 1) / GW_BM), p.tiles_n = (int)((n + GW_OUT(geglu) - 1) / GW_OUT(geglu));
    const int64_t tiles = (int64_t)p.tiles_m * p.tiles_n;
    if (tiles > INT32_MAX) return LOCO_EUNSUPPORTED;
    pl->tma = tma;
    const int clusters = c->gemm_wgmma_clusters[geglu ? 0 : 1];
    /* (an odd number of row tiles leaves a pair's second block multiplying zeros for a column
     * tile's whole k loop: half the SMs at one row tile, a sixth of the blocks' time at three;
     * from 16 on it costs at most 1 / 17) */
    const bool mc = pl->mc = tma && c->gemm_wgmma_cluster == 2 && clusters > 0 && (p.tiles_m % 2 == 0 || p.tiles_m >= 16);
    p.arrive = c->gemm_wgmma_load == CUDA_WS_LOAD_ARRIVE;
    if (tma) { /* w in boxes of 128 rows where two boxes make a tile: GEGLU's h and g, a cluster's halves */
        loco_status s = gw_tensor_map(c, &p.map_x, x->data, dt, rows, k, GW_BM, err);
        if (!s) s = gw_tensor_map(c, &p.map_w, w->data, dt, geglu ? 2 * n : n, k, geglu || mc ? GW_BN / 2 : GW_BN, err);
        if (s) return s;
    }
    if (mc) { /* pairs of blocks on pairs of row tiles: as many pairs as run at once */
        const int64_t pairs = (int64_t)(p.tiles_m + 1) / 2 * p.tiles_n;
        const int most = c->gemm_wgmma_blocks > 0 ? (c->gemm_wgmma_blocks + 1) / 2 : clusters;
        pl->grid = 2u * (unsigned)(pairs < most ? pairs : most);
    } else {
        const int blocks = c->gemm_wgmma_blocks > 0 ? c->gemm_wgmma_blocks : c->sm_count;
        pl->grid = (unsigned)(tiles < blocks ? tiles : blocks);
    }
    return LOCO_OK;
}

/* Launches a plan; ln: its LayerNorm form (the plan's p.ln_* set, TMA only). */
static loco_status gw_launch(cuda_impl *c, const gw_plan *pl, bool ln, loco_err *err) {
    const size_t smem = (size_t)(pl->geglu ? gw_cfg<true>::SMEM : gw_cfg<false>::SMEM) + (ln ? 8 * (size_t)pl->p.k : 0);
#define GW_LAUNCH(T, GEGLU, TMA, MC, LN)                                                                       \
    if (pl->dt == cuda_dtype_of<T>::value && pl->geglu == GEGLU && pl->tma == TMA && pl->mc == MC && ln == LN) { \
        if (!MC) {                                                                                             \
            LOCO_LAUNCH(pl->grid, GW_THREADS, smem, c->stream, gw_kernel<T, GEGLU, TMA, MC, LN>)(pl->p);       \
            return cuda_check_launch("gw_kernel", err);                                                        \
        }                                                                                                      \
        return cuda_check(LOCO_LAUNCH_CLUSTER(pl->grid, GW_THREADS, smem, c->stream, 2,                        \
                                              gw_kernel<T, GEGLU, TMA, MC, LN>)(pl->p),                        \
                          "gw_kernel launch in clusters of 2", err);                                           \
    }
    GW_FOR_EACH(GW_LAUNCH)
#undef GW_LAUNCH
    return LOCO_EUNSUPPORTED;
}

static loco_status gw_run(cuda_impl *c, bool geglu, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                          const loco_tensor *bias, int accumulate, loco_err *err) {
    gw_plan pl;
    const loco_status s = gw_plan_make(c, geglu, y, x, w, bias, accumulate, &pl, err);
    return s ? s : gw_launch(c, &pl, false, err);
}

extern "C" loco_status cuda_op_linear_geglu(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                            const loco_tensor *bias, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    return c->geglu_wgmma_ok ? gw_run(c, true, y, x, w, bias, 0, err) : LOCO_EUNSUPPORTED;
}

extern "C" loco_status cuda_linear_wgmma(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                         const loco_tensor *bias, int accumulate, loco_err *err) {
    return c->linear_wgmma_ok ? gw_run(c, false, y, x, w, bias, accumulate, err) : LOCO_EUNSUPPORTED;
}

/* LOCO_CUDA_LN_FOLD=1: the projection after a LayerNorm with the LayerNorm folded in. ln_stats_kernel
 * writes each row's (mean, rstd), 8 bytes a row, and the TMA form's consumers normalise x's
 * stages on their way into the products, so the normalised activations are never written or
 * read back (SD-XL b8: 16384 x 1280 x 2 bytes each way, three times a transformer block). The
 * result is the LayerNorm's, then this GEMM's, bit for bit. Declines (nothing launched) unless
 * the form's GEMM (LOCO_CUDA_GEGLU or LOCO_CUDA_LINEAR =wgmma) loads by TMA and the
 * statistics' kernel and table fit x. */
extern "C" loco_status cuda_op_ln_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                         const loco_tensor *gamma, const loco_tensor *beta, float eps,
                                         const loco_tensor *w, const loco_tensor *bias, int geglu, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    const int64_t k = w->shape[1];
    if (!c->ln_fold || !(geglu ? c->geglu_wgmma_ok : c->linear_wgmma_ok) || c->gemm_wgmma_load != CUDA_WS_LOAD_TMA ||
        k > GW_LN_MAX_K || !cuda_is_act_dtype(gamma->dtype) || (beta && !cuda_is_act_dtype(beta->dtype)) ||
        !cuda_layer_norm_stats_fits(c, x))
        return LOCO_EUNSUPPORTED;
    gw_plan pl;
    loco_status s = gw_plan_make(c, geglu != 0, y, x, w, bias, 0, &pl, err);
    if (s) return s;
    void *stats = NULL;
    if ((s = cuda_alloc_get(c, (size_t)pl.p.m * sizeof(float2), &stats, err))) return s;
    s = cuda_layer_norm_stats(c, stats, x, eps, err);
    if (!s) {
        pl.p.ln_stats = (const float2 *)stats;
        pl.p.ln_gamma = gamma->data, pl.p.ln_gdt = (int)gamma->dtype;
        pl.p.ln_beta = beta ? beta->data : NULL, pl.p.ln_bdt = beta ? (int)beta->dtype : 0;
        s = gw_launch(c, &pl, true, err);
    }
    cuda_alloc_put(c, stats); /* stream-ordered: the next user of the block runs after these kernels */
    return s;
}
