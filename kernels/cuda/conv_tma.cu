/* conv_tma.cu: the UNets' 3x3 convolutions (stride 1, one pixel of padding, NCHW) as an implicit
 * GEMM on Hopper's wgmma whose operands arrive by TMA, and the ResNet block's bias, time
 * embedding and shortcut added in its epilogue:
 *     y[n, o, p] = sum over taps t, channels c of w[o, c, t] x[n, c, p + shift(t)]
 *                  + bias[o] + sample_bias[n, o] + residual[n, o, p]
 * EXPERIMENTAL, used only under LOCO_CUDA_CONV=tma, for f16/bf16 with Cin, Cout and W multiples
 * of 64 (every 3x3 conv of SD 1.x/2.x at 64x64 and of SD-XL at 128x128 and 64x64 but the first
 * and the last; the VAE's too). Not yet timed on a GPU; correct on the emulator (tests/emu) in every `make test`.
 *
 * Why: those convs run as im2col + cuBLASLt (conv.cu). At SD-XL's 128x128 level the column
 * buffer's traffic holds them at 365 TFLOP/s (run 6 profile, about 20 ms of the batch-8 UNet
 * call) against 500-700 for cuBLASLt's GEMMs of the same size, and SD 1.5's 64x64 ones at 291
 * (unet_conv3x3_320_64_b16; cuDNN: 355). Here nothing is gathered by threads: for a tap (r, s)
 * and 64 channels, a tile's pixels are the input shifted by (r - 1, s - 1), which a TMA copy
 * of the plain NCHW tensor fetches directly, zeros included: coordinates outside the image
 * (row -1, column W) are filled with zeros by the copy itself. So the main loop is
 * gemm_wgmma.cu's TMA form with a different producer.
 *
 * GEMM: rows = output channels (A = the weights, repacked per call to [tap][Cout][Cin] so that a
 * tap's 64 channels are one K-major, 128-byte-swizzled box of 128 rows), columns = 256 pixels
 * (B, MN-major: for each channel a row of 64 consecutive pixels, 128 bytes, swizzled), k =
 * (tap, channel) in steps of one tap's 64 channels (9 Cin / 64 steps). A tile's 256 pixels are
 * four runs of 64 along image rows (W % 64 == 0), consecutive in the batch's pixel order
 * (n, row, column): four TMA boxes of 64 columns x 1 row x 64 channels of a 3-D map [W, H,
 * N Cin], each 8 KB, at LBO 8192 in the B descriptor (the 64-pixel atoms), SBO 1024 (8
 * channels). Rows of w past Cout arrive as zeros (a 3-D map [Cin, Cout, 9]), and so do the runs
 * past the batch's last pixel (channel coordinate N Cin and up).
 *
 * Block and synchronisation: gemm_wgmma.cu's TMA form. Two consumer warpgroups of 64 output
 * channels x 256 pixels (four m64n256k16 per k-step, B transposed), one producer thread in a
 * third warpgroup; 4 stages of 48 KB; full (the producer's expect_tx, 1 arrival) and empty (256
 * arrivals) mbarriers per stage; persistent blocks, tiles in the order (pixel tile, channel tile)
 * with the channel tiles fastest, so the blocks working at one time share their pixels in L2.
 *
 * Epilogue: acc + bias + sample_bias + residual in fp32, rounded once (the im2col route rounds
 * the GEMM's output, then the sum: a last-bit difference), stored as pairs of pixels. */
#include <string.h>

#include "block_sync.cuh"
#include "cuda_device.h"
#include "gemm_wgmma_products.cuh"
#include "tma.cuh"

/* 1 only in the sm_90a image (the Makefile builds this file for sm_90a alone). */
__device__ const int ct_image_ok = WG_DEVICE_OK;

#define CT_BM 128 /* output channels per tile: two warpgroups of 64 */
#define CT_BN 256 /* pixels per tile: four runs of 64 */
#define CT_BK 64  /* channels per k-step (of one tap) */
#define CT_RUN 64 /* pixels per TMA box (one image row's 128 bytes) */
#define CT_A_BYTES (CT_BM * CT_BK * 2)
#define CT_RUN_BYTES (CT_RUN * CT_BK * 2)
#define CT_STAGE_BYTES (CT_A_BYTES + (CT_BN / CT_RUN) * CT_RUN_BYTES) /* 48 KB */
#define CT_STAGES 4
#define CT_BARS (CT_STAGES * CT_STAGE_BYTES)
#define CT_SMEM (CT_BARS + 2 * CT_STAGES * 8)
#define CT_THREADS 384
/* gemm_wgmma.cu's register split: the producer thread's warpgroup 40, the consumers 232. */
#define CT_PRODUCER_REGS 40
#define CT_CONSUMER_REGS 232
static_assert(128 * CT_PRODUCER_REGS + 256 * CT_CONSUMER_REGS <= 168 * CT_THREADS,
              "setmaxnreg asks for more registers than the launch gives the block");
static_assert(CT_SMEM <= 232448, "more shared memory than an sm_90 block may have");

struct ct_params {
    CUtensorMap map_x; /* [W, H, N Cin], boxes 64 x 1 x 64 */
    CUtensorMap map_w; /* the repacked weights [Cin, Cout, 9], boxes 64 x 128 x 1 */
    const void *bias;  /* [Cout] of bias_dtype, or NULL */
    const void *sample_bias, *residual; /* [N, Cout] and [N, Cout, H, W] of T, or NULL */
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

/* The producer thread: per k-step (tap r, s and channels c0..c0 + 63) one box of the weights and
 * the four runs of pixels shifted by the tap, their 48 KB counted off full[stage]. */
__device__ __forceinline__ void ct_produce(unsigned char *smem, uint64_t *full, uint64_t *empty, const ct_params &p) {
    tma_prefetch_map(&p.map_x);
    tma_prefetch_map(&p.map_w);
    const int tiles = p.tiles_m * p.tiles_n, chunks = p.cin / CT_BK;
    int s = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int tm = tile % p.tiles_m, tn = tile / p.tiles_m;
        int img[4], row[4], col[4];
#pragma unroll
        for (int a = 0; a < 4; a++) ct_run_at(p, tn, a, &img[a], &row[a], &col[a]);
        for (int tap = 0; tap < 9; tap++) {
            const int dr = tap / 3 - 1, ds = tap % 3 - 1;
            for (int ch = 0; ch < chunks; ch++, s++) {
                const int st = s % CT_STAGES;
                if (s >= CT_STAGES) mbar_wait(&empty[st], (unsigned)(s / CT_STAGES - 1) & 1u);
                unsigned char *sa = smem + st * CT_STAGE_BYTES, *sb = sa + CT_A_BYTES;
                mbar_arrive_expect_tx(&full[st], CT_STAGE_BYTES);
                tma_load_3d(sa, &p.map_w, ch * CT_BK, tm * CT_BM, tap, &full[st]);
#pragma unroll
                for (int a = 0; a < 4; a++)
                    tma_load_3d(sb + a * CT_RUN_BYTES, &p.map_x, col[a] + ds, row[a] + dr, img[a] * p.cin + ch * CT_BK,
                                &full[st]);
            }
        }
    }
}

/* The epilogue of one consumer warpgroup's 64 x 256 tile: rows (output channels) o0 + g and
 * o0 + g + 8 of this warp; column block c (8 pixels) of run c / 8, pixels 2 t and 2 t + 1 of it. */
template <typename T>
__device__ __forceinline__ void ct_store(const float (&d)[CT_BN / 2], const ct_params &p, int o0, int tn, int lane) {
    const int g = lane >> 2, t = lane & 3;
    int64_t base[4]; /* y's index of each run's first pixel, channel 0; -1 past the batch */
    int img[4];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int row, col;
        ct_run_at(p, tn, a, &img[a], &row, &col);
        base[a] = img[a] < p.n ? (int64_t)img[a] * p.cout * p.hw + (int64_t)row * p.w + col : -1;
    }
    T *__restrict__ y = (T *)p.y;
    const T *__restrict__ sbias = (const T *)p.sample_bias;
    const T *__restrict__ res = (const T *)p.residual;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int o = o0 + g + 8 * half;
        if (o >= p.cout) continue;
        const float bo = p.bias ? ld_dyn(p.bias, p.bias_dtype, o) : 0.0f;
#pragma unroll
        for (int a = 0; a < 4; a++) {
            if (base[a] < 0) continue;
            const float bs = bo + (sbias ? to_f32(sbias[(int64_t)img[a] * p.cout + o]) : 0.0f);
            const int64_t at = base[a] + (int64_t)o * p.hw + 2 * t;
#pragma unroll
            for (int c = 0; c < 8; c++) {
                const float *dv = &d[4 * (8 * a + c) + 2 * half];
                float v0 = dv[0] + bs, v1 = dv[1] + bs;
                if (res) v0 += to_f32(res[at + 8 * c]), v1 += to_f32(res[at + 8 * c + 1]);
                const T pair[2] = {from_f32<T>(v0), from_f32<T>(v1)};
                uint32_t packed;
                memcpy(&packed, pair, 4);
                *(uint32_t *)(y + at + 8 * c) = packed;
            }
        }
    }
}

/* A consumer warpgroup (wg 0 or 1): output channels wg * 64 .. + 63 of every tile of the block.
 * Where Cout is an odd multiple of 64 (320, 960) the last channel tile has only warpgroup 0's
 * rows: warpgroup 1 then issues no products, and warpgroup 0's alone keep the tensor cores busy
 * (one warpgroup's m64n256k16 spans all four of the SM's), so the tile takes about half the time
 * instead of wasting a sixth of every 320-channel conv. */
template <typename T>
__device__ __forceinline__ void ct_consume(unsigned char *smem, uint64_t *full, uint64_t *empty, const ct_params &p,
                                           int wg, int lane_in_wg) {
    const int ksteps = 9 * (p.cin / CT_BK), tiles = p.tiles_m * p.tiles_n;
    float d[CT_BN / 2];
    int s = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int tm = tile % p.tiles_m, tn = tile / p.tiles_m, o0 = tm * CT_BM + wg * 64;
        if (o0 >= p.cout) { /* no output channel of this warpgroup's: only the stages go back */
            for (int kt = 0; kt < ksteps; kt++, s++) {
                mbar_wait(&full[s % CT_STAGES], (unsigned)(s / CT_STAGES) & 1u);
                mbar_arrive(&empty[s % CT_STAGES]);
            }
            continue;
        }
#pragma unroll
        for (int i = 0; i < CT_BN / 2; i++) d[i] = 0.0f;
        for (int kt = 0; kt < ksteps; kt++, s++) {
            const int st = s % CT_STAGES;
            mbar_wait(&full[st], (unsigned)(s / CT_STAGES) & 1u);
            const unsigned char *sa = smem + st * CT_STAGE_BYTES + wg * 8 * 1024, *sb = smem + st * CT_STAGE_BYTES + CT_A_BYTES;
            wg_fence();
            wg_fence_acc(d);
#pragma unroll
            for (int kk = 0; kk < CT_BK / 16; kk++) /* 16 channels: 32 bytes along A's rows, 16 B rows of 128 bytes */
                gw_mma<T, 1>(d, wg_desc_sw128(sa + kk * 32, 16, 1024), wg_desc_sw128(sb + kk * 2048, CT_RUN_BYTES, 1024));
            wg_commit();
            wg_fence_acc(d);
            if (kt > 0) { /* the previous step's products have retired: its stage goes back */
                wg_wait<1>();
                wg_fence_acc(d);
                mbar_arrive(&empty[(s - 1) % CT_STAGES]);
            }
        }
        wg_wait_all();
        wg_fence_acc(d);
        mbar_arrive(&empty[(s - 1) % CT_STAGES]);
        ct_store<T>(d, p, o0 + (lane_in_wg >> 5) * 16, tn, lane_in_wg & 31);
    }
}

/* The 128-byte swizzle needs 1024-byte-aligned stages: a block whose shared memory is not so
 * aligned traps. */
template <typename T> __global__ void __launch_bounds__(CT_THREADS, 1) ct_kernel(const __grid_constant__ ct_params p) {
    extern __shared__ __align__(1024) unsigned char wg_smem[];
    uint64_t *full = (uint64_t *)(wg_smem + CT_BARS), *empty = full + CT_STAGES;
    const int tid = threadIdx.x, wg = tid >> 7;
    if ((smem_addr(wg_smem) & 1023u) != 0) __trap();
    if (tid == 0) {
        for (int i = 0; i < CT_STAGES; i++) {
            mbar_init(&full[i], 1);
            mbar_init(&empty[i], 256);
        }
        mbar_init_fence();
    }
    __syncthreads();
    if (wg == 2) {
        wg_setmaxnreg_dec<CT_PRODUCER_REGS>();
        if ((tid & 127) == 0) ct_produce(wg_smem, full, empty, p);
    } else {
        wg_setmaxnreg_inc<CT_CONSUMER_REGS>();
        ct_consume<T>(wg_smem, full, empty, p, wg, tid & 127);
    }
}

/* wr[t][o][c] = w[o][c][t] (t = 3 r + s): a tap's channels contiguous, as the TMA boxes of A need.
 * Per call, from the weights as y's dtype: at most 29 MB (1280 channels), a few microseconds. */
__global__ void ct_repack_kernel(uint16_t *wr, const uint16_t *w, unsigned cout, unsigned cin) {
    const unsigned n = cout * cin * 9; /* < 2^31 (cuda_conv_tma_fits) */
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const unsigned oc = i / 9, t = i - oc * 9; /* i = (o cin + c) 9 + t: reads along w */
        const unsigned o = oc / cin, c = oc - o * cin;
        wr[(t * cout + o) * cin + c] = w[i];
    }
}

/* ---- host ----------------------------------------------------------------------------------- */

loco_status cuda_conv_tma_setup(cuda_impl *c, loco_err *err) {
    (void)err;
    c->conv_tma_ok = 0;
    if (c->conv_algo != CUDA_CONV_TMA || c->cc_major != 9 || c->cc_minor != 0) return LOCO_OK;
    int image_ok = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&image_ok, ct_image_ok, sizeof image_ok);
    if (e == cudaSuccess && image_ok)
        e = cudaFuncSetAttribute(ct_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, CT_SMEM);
    if (e == cudaSuccess && image_ok)
        e = cudaFuncSetAttribute(ct_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, CT_SMEM);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the next call must not report it */
        return LOCO_OK;
    }
    cuda_tensor_map_setup(c);
    c->conv_tma_ok = image_ok && c->tensor_map_encode;
    return LOCO_OK;
}

int cuda_conv_tma_fits(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                  const void *wdata, const loco_conv2d_params *cp) {
    if (!c->conv_tma_ok || (y->dtype != LOCO_F16 && y->dtype != LOCO_BF16) || x->dtype != y->dtype) return 0;
    const int64_t N = x->shape[0], Cin = x->shape[1], H = x->shape[2], W = x->shape[3], Cout = w->shape[0];
    return cp->stride == 1 && w->shape[2] == 3 && w->shape[3] == 3 && cp->pad[0] == 1 && cp->pad[1] == 1 &&
           cp->pad[2] == 1 && cp->pad[3] == 1 && y->shape[2] == H && y->shape[3] == W && Cin % CT_BK == 0 &&
           Cout % 64 == 0 &&
           W % CT_RUN == 0 && N * Cin < ((int64_t)1 << 31) && N * H * W < ((int64_t)1 << 31) - CT_BN &&
           H < ((int64_t)1 << 31) && Cout * Cin * 9 < ((int64_t)1 << 31) && cuda_aligned(x->data, 16) &&
           cuda_aligned(wdata, 16) && cuda_aligned(y->data, 16);
}

loco_status cuda_conv_tma(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                     const void *wdata, const loco_tensor *bias, const loco_tensor *sample_bias,
                                     const loco_tensor *residual, loco_err *err) {
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
    if (tiles > INT32_MAX) return LOCO_EUNSUPPORTED;
    void *wr = NULL;
    const int64_t wn = (int64_t)p.cout * p.cin * 9;
    CUDA_TRY(cuda_alloc_get(c, (size_t)wn * 2, &wr, err));
    const int64_t wr_blocks = (wn + 255) / 256;
    LOCO_LAUNCH((unsigned)(wr_blocks < 65535 ? wr_blocks : 65535), 256, 0, c->stream, ct_repack_kernel)(
        (uint16_t *)wr, (const uint16_t *)wdata, (unsigned)p.cout, (unsigned)p.cin);
    loco_status st = cuda_check_launch("ct_repack_kernel", err);
    const int64_t xdims[3] = {p.w, p.h, (int64_t)p.n * p.cin}, xstrides[2] = {(int64_t)p.w * 2, (int64_t)p.hw * 2};
    const unsigned xbox[3] = {CT_RUN, 1, CT_BK};
    const int64_t wdims[3] = {p.cin, p.cout, 9}, wstrides[2] = {(int64_t)p.cin * 2, (int64_t)p.cout * p.cin * 2};
    const unsigned wbox[3] = {CT_BK, CT_BM, 1};
    if (st == LOCO_OK) st = cuda_tensor_map_make(c, &p.map_x, x->data, dt, 3, xdims, xstrides, xbox, err);
    if (st == LOCO_OK) st = cuda_tensor_map_make(c, &p.map_w, wr, dt, 3, wdims, wstrides, wbox, err);
    if (st == LOCO_OK) {
        const int blocks = c->gemm_wgmma_blocks > 0 ? c->gemm_wgmma_blocks : c->sm_count;
        const unsigned grid = (unsigned)(tiles < blocks ? tiles : blocks);
        if (dt == LOCO_BF16)
            LOCO_LAUNCH(grid, CT_THREADS, CT_SMEM, c->stream, ct_kernel<__nv_bfloat16>)(p);
        else
            LOCO_LAUNCH(grid, CT_THREADS, CT_SMEM, c->stream, ct_kernel<__half>)(p);
        st = cuda_check_launch("ct_kernel", err);
    }
    cuda_alloc_put(c, wr); /* stream-ordered: the allocator hands it out again only behind this launch */
    return st;
}
