/* conv_tma.cu: the UNets' 3x3 convolutions (stride 1, one pixel of padding, NCHW) as an implicit
 * GEMM on Hopper's wgmma whose operands arrive by TMA, and the ResNet block's bias, time
 * embedding and shortcut added in its epilogue:
 *     y[n, o, p] = sum over taps t, channels c of w[o, c, t] x[n, c, p + shift(t)]
 *                  + bias[o] + sample_bias[n, o] + residual[n, o, p]
 * EXPERIMENTAL, used only under LOCO_CUDA_CONV=tma, for f16/bf16 with Cin, Cout and W multiples
 * of 64 (every 3x3 conv of SD 1.x/2.x at 64x64 and of SD-XL at 128x128 and 64x64 but the first
 * and the last; the VAE's too). Not yet timed on a GPU; correct on the emulator (tests/emu) in
 * every `make test`.
 *
 * Why: those convs run as im2col + cuBLASLt (conv.cu). At SD-XL's 128x128 level the column
 * buffer's traffic holds them at 365-400 TFLOP/s (run 6 profile, about 23 ms of the batch-8 UNet
 * call) against 500-700 for cuBLASLt's GEMMs of the same size, and SD 1.5's 64x64 ones at 291
 * (unet_conv3x3_320_64_b16; cuDNN: 355). Here nothing is gathered by threads: the input is first
 * rewritten channels-last (NHWC, one pass; the fused conv's GroupNorm+SiLU is applied in that
 * pass, from cuda_gn_table's per-channel scale and shift), and then for a tap (r, s) and 64
 * channels a run of 64 output pixels along a row reads the input shifted by (r - 1, s - 1): one
 * TMA box [64 channels x 64 pixels] of the map [Cin, W, H, N] at pixel coordinates that may be
 * -1 or W, which the copy fills with zeros: exactly the padding. (Channels-last because a box's
 * innermost coordinate must be a multiple of 16 bytes, the PTX ISA's "the address of the
 * bounding box must be aligned to 16 bytes", an illegal instruction on Hopper otherwise: in
 * NCHW the one-pixel shifts would move the innermost coordinate by 2 bytes. Channels-last, a
 * pixel shift moves the address by Cin x 2 bytes, and the innermost coordinate, the channel,
 * stays a multiple of 64.)
 *
 * GEMM: rows = output channels (A = the weights, repacked per call to [tap][Cout][Cin] so that a
 * tap's 64 channels are one box of 128 rows), columns = 256 pixels (B: four boxes of 64 pixels),
 * k = (tap, channel) in steps of one tap's 64 channels (9 Cin / 64 steps). Both operands K-major
 * (128 bytes of channels a row), 128-byte swizzled, as gemm_wgmma.cu's TMA form reads them. A
 * tile's 256 pixels are four runs of 64 along image rows (W % 64 == 0), consecutive in the
 * batch's pixel order (n, row, column), so a tile may cross images; runs past the batch read
 * image N and up: zeros. Rows of w past Cout arrive as zeros too (a 3-D map [Cin, Cout, 9]).
 *
 * Block and synchronisation: gemm_wgmma.cu's TMA form. Two consumer warpgroups of 64 output
 * channels x 256 pixels (four m64n256k16 per k-step), one producer thread in a third warpgroup;
 * 3 stages of 48 KB and a 66 KB staging tile; full (the producer's expect_tx, 1 arrival) and
 * empty (256 arrivals) mbarriers per stage; persistent blocks, tiles in the order (pixel tile, channel tile) with the
 * channel tiles fastest, so the blocks working at one time share their pixels in L2 (rotated per
 * pixel tile: ct_tile_coords).
 *
 * Epilogue: acc + bias + sample_bias rounded to T into a staging tile at the tile's end, then,
 * beside the next tile's products, + residual, rounded, and stored into NCHW y in 16-byte
 * vectors (ct_stage, ct_finish). */
#include <string.h>

#include "block_sync.cuh"
#include "conv_gather.cuh"
#include "cuda_device.h"
#include "gemm_wgmma_products.cuh"
#include "tma.cuh"

/* 1 only in the sm_90a image (the Makefile builds this file for sm_90a alone). */
__device__ const int ct_image_ok = WG_DEVICE_OK;

#define CT_BM 128 /* output channels per tile: two warpgroups of 64 */
#define CT_BN 256 /* pixels per tile: four runs of 64 */
#define CT_BK 64  /* channels per k-step (of one tap) */
#define CT_RUN 64 /* pixels per TMA box (of one image row) */
#define CT_A_BYTES (CT_BM * CT_BK * 2)
#define CT_RUN_BYTES (CT_RUN * CT_BK * 2)
#define CT_STAGE_BYTES (CT_A_BYTES + (CT_BN / CT_RUN) * CT_RUN_BYTES) /* 48 KB */
#define CT_STAGES 3 /* the fourth's room holds the staging tile */
#define CT_STAGING_PITCH (CT_BN * 2 + 16) /* bytes per staged row: 256 pixels and 16 of padding */
#define CT_STAGING (2 * 64 * CT_STAGING_PITCH) /* one 64-row half per consumer warpgroup */
#define CT_BARS (CT_STAGES * CT_STAGE_BYTES + CT_STAGING)
#define CT_SMEM (CT_BARS + 2 * CT_STAGES * 8)
#define CT_THREADS 384
/* gemm_wgmma.cu's register split: the producer thread's warpgroup 40, the consumers 232. */
#define CT_PRODUCER_REGS 40
#define CT_CONSUMER_REGS 232
static_assert(128 * CT_PRODUCER_REGS + 256 * CT_CONSUMER_REGS <= 168 * CT_THREADS,
              "setmaxnreg asks for more registers than the launch gives the block");
static_assert(CT_SMEM <= 232448, "more shared memory than an sm_90 block may have");

struct ct_params {
    CUtensorMap map_x; /* the channels-last input [Cin, W, H, N], boxes 64 x 64 x 1 x 1 */
    CUtensorMap map_w; /* the repacked weights [Cin, Cout, 9], boxes 64 x 128 x 1 */
    const void *bias;  /* [Cout] of bias_dtype, or NULL */
    const void *sample_bias, *residual; /* [N, Cout] and [N, Cout, H, W] of T (16-byte aligned), or NULL */
    void *y;
    int bias_dtype;
    int n, cin, cout, h, w, hw; /* hw = h w */
    int tiles_m, tiles_n;
};

/* Where run a (0..3) of pixel tile tn starts: image *img, row *row, column *col (its 64 pixels
 * lie in one row: W % 64 == 0). Runs past the batch have *img >= n. 32-bit unsigned arithmetic
 * (the host checked N H W + 256 < 2^31): a 64-bit division is a called subroutine whose
 * registers (R152 and up, the consumers' allocation) the producer, cut to 40 by setmaxnreg, does
 * not have. */
__device__ __forceinline__ void ct_run_at(const ct_params &p, int tn, int a, int *img, int *row, int *col) {
    const unsigned px = (unsigned)tn * CT_BN + (unsigned)a * CT_RUN;
    const int i = (int)(px / (unsigned)p.hw), rem = (int)(px - (unsigned)i * (unsigned)p.hw);
    *img = i;
    *row = (int)((unsigned)rem / (unsigned)p.w);
    *col = rem - *row * p.w;
}

/* A block's walk over the tiles: alone, tiles blockIdx.x, + gridDim.x, ...; in clusters of two
 * (MC), its cluster's walk over tiles of pairs of pixel tiles (cluster blockIdx.x / 2 of
 * gridDim.x / 2), block `rank` taking pixel tile 2 q + rank of the pair's channel tile (a last
 * pair's second tile past the batch reads zeros and stores nothing).
 * Tile t's channel tile tm and pixel tile (or pair) q: the channel tiles of a pixel tile are
 * consecutive (the blocks working at one time share their pixels in L2), rotated by the pixel
 * tile. Why the rotation: a block walks tiles gridDim.x apart, and with 3 channel tiles (Cout
 * 320) on 132 or 114 SMs, both multiples of 3, tile % 3 would give each block the same channel
 * tile every time: a third of the blocks would get only the half-empty last ones and idle while
 * the rest set the finish time (a reviewer's catch, session 13). */
template <bool MC> struct ct_walk { /* (read from blockIdx, gridDim and p where used: no registers held) */
    int rank;
    __device__ __forceinline__ int first(void) const { return MC ? (int)blockIdx.x >> 1 : (int)blockIdx.x; }
    __device__ __forceinline__ int stride(void) const { return MC ? (int)gridDim.x >> 1 : (int)gridDim.x; }
    __device__ __forceinline__ int tiles(const ct_params &p) const {
        return p.tiles_m * (MC ? (p.tiles_n + 1) >> 1 : p.tiles_n);
    }
    __device__ __forceinline__ void coords(const ct_params &p, int tile, int *tm, int *tn) const {
        const int q = tile / p.tiles_m;
        *tm = (tile + q) % p.tiles_m;
        *tn = MC ? 2 * q + rank : q;
    }
};

/* The producer thread: per k-step (tap r, s and channels c0..c0 + 63) one box of the weights and
 * the four runs of pixels shifted by the tap, their 48 KB counted off full[stage] (zero-filled
 * bytes count too). In clusters of two the blocks share the weights' box: each loads 64 of its
 * 128 rows and multicasts them to both (the full barrier still counts 48 KB: its own 32 KB of
 * pixels and both halves of the weights). */
template <bool MC>
__device__ __forceinline__ void ct_produce(unsigned char *smem, uint64_t *full, uint64_t *empty, const ct_params &p,
                                           const ct_walk<MC> &walk) {
    tma_prefetch_map(&p.map_x);
    tma_prefetch_map(&p.map_w);
    const int chunks = p.cin / CT_BK;
    int s = 0;
    for (int tile = walk.first(); tile < walk.tiles(p); tile += walk.stride()) {
        int tm, tn;
        walk.coords(p, tile, &tm, &tn);
        int img0, row0, col0; /* run 0; the others follow 64 pixels apart (3 registers, not 12: the
                               * producer has 40, and the cluster form's multicast needs a few more) */
        ct_run_at(p, tn, 0, &img0, &row0, &col0);
        for (int tap = 0; tap < 9; tap++) {
            const int dr = tap / 3 - 1, ds = tap % 3 - 1;
            for (int ch = 0; ch < chunks; ch++, s++) {
                const int st = s % CT_STAGES;
                if (s >= CT_STAGES) mbar_wait(&empty[st], (unsigned)(s / CT_STAGES - 1) & 1u);
                unsigned char *sa = smem + st * CT_STAGE_BYTES, *sb = sa + CT_A_BYTES;
                mbar_arrive_expect_tx(&full[st], CT_STAGE_BYTES);
                if (MC)
                    tma_load_3d_multicast(sa + walk.rank * (CT_A_BYTES / 2), &p.map_w, ch * CT_BK,
                                          tm * CT_BM + walk.rank * (CT_BM / 2), tap, &full[st], 0x3);
                else
                    tma_load_3d(sa, &p.map_w, ch * CT_BK, tm * CT_BM, tap, &full[st]);
                int img = img0, row = row0, col = col0;
#pragma unroll
                for (int a = 0; a < 4; a++) {
                    tma_load_4d(sb + a * CT_RUN_BYTES, &p.map_x, ch * CT_BK, col + ds, row + dr, img, &full[st]);
                    col += CT_RUN; /* the next run: along the row, else the next row, else the next image */
                    if (col == p.w) {
                        col = 0;
                        if (++row == p.h) row = 0, img++;
                    }
                }
            }
        }
    }
}

/* The epilogue, in two halves (gemm_wgmma.cu's GEGLU form does the same). At a tile's end a
 * consumer warpgroup rounds acc + bias + sample_bias to T into its 64-row half of the staging tile
 * (rows = output channels, 256 pixels a row; padded rows, so a warp's 4-byte stores, 8 rows x 4
 * lanes, hit 32 banks). During its next tile's k-steps, a slice per step between issuing the
 * products and waiting for them, it adds the residual and writes y in 16-byte vectors: 32
 * consecutive threads cover one channel's four runs of 64 pixels, 128 contiguous bytes each, for
 * the stores and the residual's loads alike. The first form stored 4-byte pairs (16 bytes per
 * channel per warp instruction) right after the last product, both warpgroups at once, the
 * tensor cores idle meanwhile: about 10-20 % of a tile at Cin 320 (a reviewer's estimate).
 * Rounded twice where there is a residual, as the default route's GEMM output and bias pass are. */
template <typename T>
__device__ __forceinline__ void ct_stage(const float (&d)[CT_BN / 2], const ct_params &p, unsigned char *staging,
                                         int o0, int tn, int warp, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const T *__restrict__ sbias = (const T *)p.sample_bias;
    int img[4];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int row, col;
        ct_run_at(p, tn, a, &img[a], &row, &col);
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = warp * 16 + g + 8 * half, o = o0 + r; /* o < Cout: Cout % 64 == 0 */
        const float bo = p.bias ? ld_dyn(p.bias, p.bias_dtype, o) : 0.0f;
#pragma unroll
        for (int a = 0; a < 4; a++) {
            const float bs = bo + (sbias && img[a] < p.n ? to_f32(sbias[(int64_t)img[a] * p.cout + o]) : 0.0f);
#pragma unroll
            for (int c = 0; c < 8; c++) {
                const float *dv = &d[4 * (8 * a + c) + 2 * half];
                const T pair[2] = {from_f32<T>(dv[0] + bs), from_f32<T>(dv[1] + bs)};
                uint32_t packed;
                memcpy(&packed, pair, 4);
                *(uint32_t *)(staging + r * CT_STAGING_PITCH + (64 * a + 8 * c + 2 * t) * 2) = packed;
            }
        }
    }
}

/* Vectors q0 .. q1 - 1 (of 16) of thread e's share of a staged half (channels o0 ..; pixel tile
 * tn): vector v = 128 q + e is channel o0 + v / 32, run (v % 32) / 8, pixels 8 (v % 8) .. + 7.
 * Two at a time, their loads (the staged values, the residual) before their stores: a store's
 * asm is a compiler barrier to the next load, so one at a time would wait for each residual
 * load in turn, and this runs between issuing a k-step's products and waiting for them. */
template <typename T>
__device__ __forceinline__ void ct_finish(const unsigned char *staging, const ct_params &p, int o0, int tn, int e,
                                          int q0, int q1) {
    T *__restrict__ y = (T *)p.y;
    const T *__restrict__ res = (const T *)p.residual;
    for (int q = q0; q < q1; q += 2) {
        vec16<T> out[2];
        T *dst[2] = {NULL, NULL};
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int v = (q + i) * 128 + e, r = v >> 5, a = (v >> 3) & 3, j = v & 7;
            int img, row, col;
            ct_run_at(p, tn, a, &img, &row, &col);
            if (q + i >= q1 || img >= p.n) continue; /* past the slice, or a run past the batch */
            const int64_t at = ((int64_t)img * p.cout + o0 + r) * p.hw + (int64_t)row * p.w + col + 8 * j;
            out[i] = *(const vec16<T> *)(staging + r * CT_STAGING_PITCH + (64 * a + 8 * j) * 2);
            if (res) {
                const vec16<T> add = *(const vec16<T> *)(res + at); /* 16-byte aligned: conv.cu checks */
#pragma unroll
                for (int k = 0; k < 8; k++) out[i].v[k] = from_f32<T>(to_f32(out[i].v[k]) + to_f32(add.v[k]));
            }
            dst[i] = y + at;
        }
#pragma unroll
        for (int i = 0; i < 2; i++)
            if (dst[i]) vec16_store(dst[i], out[i]);
    }
}

/* A consumer warpgroup (wg 0 or 1): output channels wg * 64 .. + 63 of every tile of the block.
 * Where Cout is an odd multiple of 64 (320, 960) the last channel tile has only warpgroup 0's
 * rows: warpgroup 1 then issues no products, and warpgroup 0's alone keep the tensor cores busy
 * (one warpgroup's m64n256k16 spans all four of the SM's), so the tile takes about half the time
 * instead of wasting a sixth of every 320-channel conv. Each warpgroup alone reads and writes its
 * half of the staging tile: a named barrier of its 128 threads before it stages a tile (the
 * previous one is read) and after (this one is written). */
template <bool MC> __device__ __forceinline__ void ct_release(uint64_t *empty, int rank, int lane) {
    if (MC)
        mbar_release_pair(empty, (unsigned)rank, lane); /* both producers fill the stage */
    else
        mbar_arrive(empty);
}

template <typename T, bool MC>
__device__ __forceinline__ void ct_consume(unsigned char *smem, uint64_t *full, uint64_t *empty, const ct_params &p,
                                           const ct_walk<MC> &walk, int wg, int lane_in_wg) {
    const int ksteps = 9 * (p.cin / CT_BK), lane = lane_in_wg & 31;
    unsigned char *const staging = smem + CT_STAGES * CT_STAGE_BYTES + wg * 64 * CT_STAGING_PITCH;
    constexpr int SLICES = 64 * CT_BN / 8 / 128; /* 16-byte vectors a thread per staged half */
    int staged_o0 = -1, staged_tn = 0;           /* the staged half's first channel and pixel tile */
    float d[CT_BN / 2];
    int s = 0;
    for (int tile = walk.first(); tile < walk.tiles(p); tile += walk.stride()) {
        int tm, tn;
        walk.coords(p, tile, &tm, &tn);
        const int o0 = tm * CT_BM + wg * 64;
        if (o0 >= p.cout) { /* no output channel of this warpgroup's: the stages go back, the staged half goes out */
            for (int kt = 0; kt < ksteps; kt++, s++) {
                mbar_wait(&full[s % CT_STAGES], (unsigned)(s / CT_STAGES) & 1u);
                ct_release<MC>(&empty[s % CT_STAGES], walk.rank, lane);
                if (staged_o0 >= 0)
                    ct_finish<T>(staging, p, staged_o0, staged_tn, lane_in_wg, SLICES * kt / ksteps,
                                 SLICES * (kt + 1) / ksteps);
            }
            staged_o0 = -1;
            continue;
        }
#pragma unroll
        for (int i = 0; i < CT_BN / 2; i++) d[i] = 0.0f;
        for (int kt = 0; kt < ksteps; kt++, s++) {
            const int st = s % CT_STAGES;
            mbar_wait(&full[st], (unsigned)(s / CT_STAGES) & 1u);
            const unsigned char *stage = smem + st * CT_STAGE_BYTES, *sa = stage + wg * 8 * 1024, *sb = stage + CT_A_BYTES;
            wg_fence();
            wg_fence_acc(d);
#pragma unroll
            for (int kk = 0; kk < CT_BK / 16; kk++) /* 16 channels: 32 bytes along both operands' rows */
                gw_mma<T>(d, wg_desc_sw128(sa + kk * 32, 16, 1024), wg_desc_sw128(sb + kk * 32, 16, 1024));
            wg_commit();
            wg_fence_acc(d);
            if (staged_o0 >= 0) /* the previous tile's epilogue, a slice per k-step, beside the products */
                ct_finish<T>(staging, p, staged_o0, staged_tn, lane_in_wg, SLICES * kt / ksteps,
                             SLICES * (kt + 1) / ksteps);
            if (kt > 0) { /* the previous step's products have retired: its stage goes back */
                wg_wait<1>();
                wg_fence_acc(d);
                ct_release<MC>(&empty[(s - 1) % CT_STAGES], walk.rank, lane);
            }
        }
        wg_wait_all();
        wg_fence_acc(d);
        ct_release<MC>(&empty[(s - 1) % CT_STAGES], walk.rank, lane);
        named_bar_sync(1 + wg, 128); /* every thread of the warpgroup has read the previous half */
        ct_stage<T>(d, p, staging, o0, tn, lane_in_wg >> 5, lane_in_wg & 31);
        named_bar_sync(1 + wg, 128); /* and this one is written */
        staged_o0 = o0, staged_tn = tn;
    }
    if (staged_o0 >= 0) ct_finish<T>(staging, p, staged_o0, staged_tn, lane_in_wg, 0, SLICES);
}

/* The 128-byte swizzle needs 1024-byte-aligned stages: a block whose shared memory is not so
 * aligned traps. MC (launched in clusters of two): gemm_wgmma.cu's cluster protocol, the blocks
 * meeting after initialising their mbarriers and before exiting. */
template <typename T, bool MC>
__global__ void __launch_bounds__(CT_THREADS, 1) ct_kernel(const __grid_constant__ ct_params p) {
    LOCO_DYN_SMEM(unsigned char, wg_smem, 1024);
    uint64_t *full = (uint64_t *)(wg_smem + CT_BARS), *empty = full + CT_STAGES;
    const int tid = threadIdx.x, wg = tid >> 7;
    if ((smem_addr(wg_smem) & 1023u) != 0) __trap();
    if (tid == 0) {
        for (int i = 0; i < CT_STAGES; i++) {
            mbar_init(&full[i], 1);
            mbar_init(&empty[i], MC ? 2 * 8 : 256); /* both blocks' consumer warps, or every consumer thread */
        }
        mbar_init_fence();
    }
    if (MC)
        cluster_sync_after_init();
    else
        __syncthreads();
    const ct_walk<MC> walk = {MC ? (int)cluster_ctarank() : 0};
    if (wg == 2) {
        wg_setmaxnreg_dec<CT_PRODUCER_REGS>();
        if ((tid & 127) == 0) ct_produce<MC>(wg_smem, full, empty, p, walk);
    } else {
        wg_setmaxnreg_inc<CT_CONSUMER_REGS>();
        ct_consume<T, MC>(wg_smem, full, empty, p, walk, wg, tid & 127);
    }
    if (MC) cluster_sync();
}

/* wr[t][o][c] = w[o][c][t] (t = 3 r + s): a tap's channels contiguous, as the TMA boxes of A need.
 * Per call, from the weights as y's dtype (7.4 MB at 640 channels); consecutive threads write
 * consecutive elements. */
__global__ void ct_repack_kernel(uint16_t *wr, const uint16_t *w, unsigned cout, unsigned cin) {
    const unsigned n = cout * cin * 9; /* < 2^31 (cuda_conv_tma_fits) */
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        /* i = (t cout + o) cin + c */
        const unsigned toc = i / cin, c = i - toc * cin, t = toc / cout, o = toc - t * cout;
        wr[i] = w[(o * cin + c) * 9 + t];
    }
}

/* The input rewritten channels-last: xt[n][p][c] = pro(x[n][c][p]) (pro: a copy, or the fused
 * conv's GroupNorm+SiLU from cuda_gn_table's scale and shift: im2col_group_norm, the gather's
 * own expression, so the values are loco_group_norm's bit for bit). A block moves 64 channels x
 * 64 pixels of one image through shared memory: 16-byte loads along pixels, 16-byte stores along
 * channels. HW and C are multiples of 64 (cuda_conv_tma_fits). The staged tile's 16-byte chunks
 * are XOR-swizzled (chunk q of channel row c at q ^ (c / 8 % 8)): a warp's column reads cover 8
 * channel rows 8 apart, which with any 16-byte-aligned padded pitch fall in one bank (8-way
 * conflicts, a reviewer's catch); swizzled they spread over all 32. (layout.cu's transpose_kernel
 * would do the plain case; one kernel for both keeps the normalising and the copying paths one.) */
#define CT_T_PITCH 64 /* elements per staged channel row */
template <typename T, typename Pro>
__global__ void __launch_bounds__(256) ct_channels_last_kernel(T *xt, const T *x, int c_all, int hw, Pro pro) {
    __shared__ __align__(16) T tile[CT_BK * CT_T_PITCH];
    const int p0 = blockIdx.x * 64, c0 = blockIdx.y * 64, n = blockIdx.z, tid = threadIdx.x;
    const T *xs = x + ((int64_t)n * c_all + c0) * hw + p0;
#pragma unroll
    for (int i = 0; i < 2; i++) { /* 64 channels x 8 vectors of 8 pixels */
        const int v = tid + 256 * i, c = v >> 3, q = v & 7;
        pro.row(n, c0 + c);
        vec16<T> in = *(const vec16<T> *)(xs + (int64_t)c * hw + 8 * q);
#pragma unroll
        for (int k = 0; k < 8; k++) in.v[k] = pro(in.v[k]);
        vec16_store_shared(tile + c * CT_T_PITCH + 8 * (q ^ ((c >> 3) & 7)), in);
    }
    __syncthreads();
    T *xd = xt + ((int64_t)n * hw + p0) * c_all + c0;
#pragma unroll
    for (int i = 0; i < 2; i++) { /* 64 pixels x 8 vectors of 8 channels */
        const int v = tid + 256 * i, px = v >> 3, q = v & 7;
        vec16<T> out;
#pragma unroll
        for (int k = 0; k < 8; k++) out.v[k] = tile[(8 * q + k) * CT_T_PITCH + 8 * ((px >> 3) ^ q) + (px & 7)];
        vec16_store(xd + (int64_t)px * c_all + 8 * q, out);
    }
}

/* ---- host ----------------------------------------------------------------------------------- */

loco_status cuda_conv_tma_setup(cuda_impl *c, loco_err *err) {
    (void)err;
    c->conv_tma_ok = 0;
    c->conv_tma_clusters = 0;
    if (c->conv_algo != CUDA_CONV_TMA || c->cc_major != 9 || c->cc_minor != 0) return LOCO_OK;
    int image_ok = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&image_ok, ct_image_ok, sizeof image_ok);
#define CT_SET(T, MC)                                                                                          \
    if (e == cudaSuccess && image_ok)                                                                          \
        e = cudaFuncSetAttribute(ct_kernel<T, MC>, cudaFuncAttributeMaxDynamicSharedMemorySize, CT_SMEM);
    CT_SET(__half, false) CT_SET(__nv_bfloat16, false) CT_SET(__half, true) CT_SET(__nv_bfloat16, true)
#undef CT_SET
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the next call must not report it */
        return LOCO_OK;
    }
    cuda_tensor_map_setup(c);
    c->conv_tma_ok = image_ok && c->tensor_map_encode;
    if (c->conv_tma_ok && c->conv_tma_cluster == 2) /* (the bf16 kernel's resources are the same) */
        c->conv_tma_clusters = cuda_max_clusters_of_two((const void *)ct_kernel<__half, true>, CT_THREADS, CT_SMEM);
    return LOCO_OK;
}

int cuda_conv_tma_fits(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                       const void *wdata, const loco_conv2d_params *cp) {
    if (!c->conv_tma_ok || (y->dtype != LOCO_F16 && y->dtype != LOCO_BF16) || x->dtype != y->dtype) return 0;
    const int64_t N = x->shape[0], Cin = x->shape[1], H = x->shape[2], W = x->shape[3], Cout = w->shape[0];
    const int64_t tiles = (Cout + CT_BM - 1) / CT_BM * ((N * H * W + CT_BN - 1) / CT_BN);
    return cp->stride == 1 && w->shape[2] == 3 && w->shape[3] == 3 && cp->pad[0] == 1 && cp->pad[1] == 1 &&
           cp->pad[2] == 1 && cp->pad[3] == 1 && y->shape[2] == H && y->shape[3] == W && Cin % CT_BK == 0 &&
           Cout % 64 == 0 && W % CT_RUN == 0 && N <= 65535 /* the channels-last pass's gridDim.z */ &&
           N * H * W < ((int64_t)1 << 31) - 2 * CT_BN /* a pair's tile past the batch */ &&
           N * Cin * H * W < ((int64_t)1 << 40) &&
           Cout * Cin * 9 < ((int64_t)1 << 31) && tiles <= INT32_MAX && cuda_aligned(x->data, 16) &&
           cuda_aligned(wdata, 16) && cuda_aligned(y->data, 16);
}

/* x rewritten channels-last into xt, normalised by the GroupNorm table when there is one. */
template <typename T>
static void ct_channels_last(cuda_impl *c, T *xt, const T *x, int n, int cin, int hw, const float2 *norm,
                             int norm_silu) {
    const dim3 grid((unsigned)(hw / 64), (unsigned)(cin / 64), (unsigned)n);
    if (norm) {
        im2col_group_norm<T> pro;
        pro.table = norm, pro.cin = cin, pro.silu = norm_silu, pro.scale = pro.shift = 0.0f;
        LOCO_LAUNCH(grid, 256, 0, c->stream, ct_channels_last_kernel<T, im2col_group_norm<T> >)(xt, x, cin, hw, pro);
    } else {
        LOCO_LAUNCH(grid, 256, 0, c->stream, ct_channels_last_kernel<T, im2col_copy>)(xt, x, cin, hw, im2col_copy());
    }
}

loco_status cuda_conv_tma(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w, const void *wdata,
                          const loco_tensor *bias, const loco_tensor *sample_bias, const loco_tensor *residual,
                          const float2 *norm, int norm_silu, loco_err *err) {
    const loco_dtype dt = y->dtype;
    ct_params p;
    memset(&p, 0, sizeof p);
    p.n = (int)x->shape[0], p.cin = (int)x->shape[1], p.h = (int)x->shape[2], p.w = (int)x->shape[3];
    p.cout = (int)w->shape[0], p.hw = p.h * p.w;
    if (p.n <= 0 || p.cout <= 0 || p.hw <= 0) return LOCO_OK;
    p.bias = bias ? bias->data : NULL, p.bias_dtype = bias ? (int)bias->dtype : 0;
    p.sample_bias = sample_bias ? sample_bias->data : NULL;
    p.residual = residual ? residual->data : NULL;
    p.y = y->data;
    p.tiles_m = (p.cout + CT_BM - 1) / CT_BM;
    p.tiles_n = (int)(((int64_t)p.n * p.hw + CT_BN - 1) / CT_BN);
    const int64_t tiles = (int64_t)p.tiles_m * p.tiles_n;
    void *wr = NULL, *xt = NULL;
    const int64_t wn = (int64_t)p.cout * p.cin * 9, xn = (int64_t)p.n * p.cin * p.hw;
    loco_status st = cuda_alloc_get(c, (size_t)wn * 2, &wr, err);
    if (st == LOCO_OK) st = cuda_alloc_get(c, (size_t)xn * 2, &xt, err);
    if (st == LOCO_OK) {
        const int64_t wr_blocks = (wn + 255) / 256;
        LOCO_LAUNCH((unsigned)(wr_blocks < 65535 ? wr_blocks : 65535), 256, 0, c->stream, ct_repack_kernel)(
            (uint16_t *)wr, (const uint16_t *)wdata, (unsigned)p.cout, (unsigned)p.cin);
        st = cuda_check_launch("ct_repack_kernel", err);
    }
    if (st == LOCO_OK) {
        if (dt == LOCO_BF16)
            ct_channels_last<__nv_bfloat16>(c, (__nv_bfloat16 *)xt, (const __nv_bfloat16 *)x->data, p.n, p.cin, p.hw,
                                            norm, norm_silu);
        else
            ct_channels_last<__half>(c, (__half *)xt, (const __half *)x->data, p.n, p.cin, p.hw, norm, norm_silu);
        st = cuda_check_launch("ct_channels_last_kernel", err);
    }
    /* [Cin, W, H, N] channels-last, and the weights [Cin, Cout, 9] */
    const int64_t xdims[4] = {p.cin, p.w, p.h, p.n},
                  xstrides[3] = {(int64_t)p.cin * 2, (int64_t)p.w * p.cin * 2, (int64_t)p.hw * p.cin * 2};
    const unsigned xbox[4] = {CT_BK, CT_RUN, 1, 1};
    const int64_t wdims[3] = {p.cin, p.cout, 9}, wstrides[2] = {(int64_t)p.cin * 2, (int64_t)p.cout * p.cin * 2};
    /* (an odd number of pixel tiles leaves a pair's second block multiplying zeros: gemm_wgmma.cu's
     * rule, pairs where the tiles are even or at least 16) */
    const bool mc = c->conv_tma_cluster == 2 && c->conv_tma_clusters > 0 && (p.tiles_n % 2 == 0 || p.tiles_n >= 16);
    const unsigned wbox[3] = {CT_BK, mc ? CT_BM / 2u : (unsigned)CT_BM, 1}; /* a cluster's blocks load half each */
    if (st == LOCO_OK) st = cuda_tensor_map_make(c, &p.map_x, xt, dt, 4, xdims, xstrides, xbox, err);
    if (st == LOCO_OK) st = cuda_tensor_map_make(c, &p.map_w, wr, dt, 3, wdims, wstrides, wbox, err);
    if (st == LOCO_OK) {
        if (mc) { /* pairs of blocks on pairs of pixel tiles: as many pairs as run at once */
            const int64_t pairs = (int64_t)p.tiles_m * ((p.tiles_n + 1) / 2);
            const int most = c->gemm_wgmma_blocks > 0 ? (c->gemm_wgmma_blocks + 1) / 2 : c->conv_tma_clusters;
            const unsigned grid = 2u * (unsigned)(pairs < most ? pairs : most);
            const cudaError_t e =
                dt == LOCO_BF16
                    ? LOCO_LAUNCH_CLUSTER(grid, CT_THREADS, CT_SMEM, c->stream, 2, ct_kernel<__nv_bfloat16, true>)(p)
                    : LOCO_LAUNCH_CLUSTER(grid, CT_THREADS, CT_SMEM, c->stream, 2, ct_kernel<__half, true>)(p);
            st = cuda_check(e, "ct_kernel launch in clusters of 2", err);
        } else {
            const int blocks = c->gemm_wgmma_blocks > 0 ? c->gemm_wgmma_blocks : c->sm_count;
            const unsigned grid = (unsigned)(tiles < blocks ? tiles : blocks);
            if (dt == LOCO_BF16)
                LOCO_LAUNCH(grid, CT_THREADS, CT_SMEM, c->stream, ct_kernel<__nv_bfloat16, false>)(p);
            else
                LOCO_LAUNCH(grid, CT_THREADS, CT_SMEM, c->stream, ct_kernel<__half, false>)(p);
            st = cuda_check_launch("ct_kernel", err);
        }
    }
    /* stream-ordered: the allocator hands them out again only behind these launches */
    cuda_alloc_put(c, xt);
    cuda_alloc_put(c, wr);
    return st;
}
