/* conv_wgmma.cu: stride-1, 3-wide "same" convolutions (every 3x3 conv of the UNet and VAE) of
 * f16/bf16 NCHW activations as an implicit GEMM on Hopper's warpgroup tensor-core instruction
 * (wgmma.mma_async, sm_90a only). EXPERIMENTAL: written without a GPU (session 3); correct on the
 * H200 (runs 5-6) and on the emulator, but 0.4-0.5x of the default route there, so never chosen
 * by the automatic route; LOCO_CUDA_CONV=wgmma forces it where it applies, for the parity tests
 * and op_bench's "@wgmma" rows (bench/gpu/NOTES.md).
 *
 * Why: on an H200 the UNet's 3x3 convs run at 285-500 TFLOP/s through im2col + cuBLASLt and at
 * 190-290 through our mma.sync implicit kernel (conv_igemm.cu), against ~750 for a wgmma GEMM;
 * convolutions are half of an SD 1.5 UNet call. wgmma reads both operands from shared memory
 * asynchronously, so the gather of the next K tile overlaps the math of this one.
 *
 *   D (Cout x pixels) = A (weights, Cout x K) . B (im2col, K x pixels), K = Cin * kh * 3.
 *
 * Block: 128 Cout x 128 pixels, 256 threads = 2 warpgroups, each m64 x n128 (64 fp32
 * accumulators per thread). K tiles of 48 = 16 (ci, r) rows x the 3 taps s, as conv_igemm.cu's
 * row-gather kernel: a thread loads one (ci, r) row of 8 neighbouring output pixels (one
 * 16-byte load and two 2-byte neighbours, ig3_gather) and writes the 24 values of those pixels'
 * 3 taps. Two shared-memory stages: the weights of tile k+1 come in with cp.async and its
 * gather goes through registers while the wgmma's of tile k run.
 *
 * Shared-memory layout (both operands K-major, no swizzle: wgmma's "interleaved" canonical
 * form): 8 x 8 core matrices of 8 rows x 16 bytes, a row being 8 consecutive k of one Cout row
 * (A) or one pixel (B). Element (row, k) of a stage sits at
 *     (row / 8) * SBO + (k / 8) * 128 + (row % 8) * 16 + (k % 8) * 2,
 * so the descriptor's leading byte offset (between core matrices along K) is 128 and its
 * stride byte offset (between groups of 8 rows) is SBO. A k16 step reads two core matrices
 * along K: step kk starts kk * 256 bytes in. B's SBO is 784, not 768 (6 core matrices), so
 * that the 16 pixel groups of a warp's 2-byte stores spread over the banks.
 *
 * Accumulator layout (m64nNk16, f32): warp w of a warpgroup holds rows 16w..16w+15; lane (g =
 * lane/4, t = lane%4) holds d[4j + e] = (row g + 8 (e >> 1), column 8j + 2t + (e & 1)),
 * j < N/8, the m16n8 C layout repeated along N. */
#include <string.h>

#include "conv_igemm_common.cuh"
#include "wgmma.cuh"

#define WG_BM 128
#define WG_BN 128
#define WG_BK 48
#define WG_THREADS 256
#define WG_LBO 128                            /* bytes between core matrices along K */
#define WG_SBO_A (WG_BK / 8 * 128)            /* 768: 6 core matrices along K per 8 rows */
#define WG_SBO_B (WG_SBO_A + 16)              /* 784: see the header */
#define WG_A_BYTES (WG_BM / 8 * WG_SBO_A)     /* 12288 per stage */
#define WG_B_BYTES (WG_BN / 8 * WG_SBO_B)     /* 12544 per stage */
#define WG_SMEM (2 * (WG_A_BYTES + WG_B_BYTES)) /* two stages: 49664 bytes (needs the opt-in) */

/* Read by setup: 1 only in the sm_90a image, so a build that compiled this file for another
 * target (a JIT of PTX, a CUDA_ARCHS without sm_90a) never routes a conv to the trapping body. */
__device__ const int wg_image_ok = WG_DEVICE_OK;

#define WG_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                 "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_ASM_REGS                                                                                          \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
    "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "   \
    "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

/* d (64 x 128, this warpgroup) += A (64 x 16, descriptor) . B (16 x 128, descriptor), both
 * K-major (no transpose), fp32 accumulation: scale-d is the predicate p (1: add to d), then
 * imm-scale-a, imm-scale-b (1: no negation), imm-trans-a, imm-trans-b (0: K-major). */
#if defined(LOCO_CUDA_EMU) /* the tests' CPU emulator (tests/emu/emu_wgmma.cc) */
#define WG_MMA_ASM(TY) emu::wgmma_ss(d, 128, da, db, 0, !strcmp(TY, "bf16") ? emu::B16_BF16 : emu::B16_F16)
#elif WG_DEVICE_OK
#define WG_MMA_ASM(TY)                                                                                           \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                     \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " WG_ASM_REGS ", %64, %65, p, 1, 1, 0, "  \
                 "0;\n}\n"                                                                                        \
                 : WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24), WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)            \
                 : "l"(da), "l"(db), "r"(1))
#else
#define WG_MMA_ASM(TY) ((void)d, (void)da, (void)db)
#endif

template <typename T> __device__ __forceinline__ void wg_mma(float (&d)[64], uint64_t da, uint64_t db);
template <> __device__ __forceinline__ void wg_mma<__half>(float (&d)[64], uint64_t da, uint64_t db) {
    WG_MMA_ASM("f16");
}
template <> __device__ __forceinline__ void wg_mma<__nv_bfloat16>(float (&d)[64], uint64_t da, uint64_t db) {
    WG_MMA_ASM("bf16");
}

/* ---- operand staging ------------------------------------------------------------------------ */

/* Weights of K tile kt: 128 rows x 6 chunks of 8 k, 3 cp.async per thread, zeros past Cout and K. */
template <typename T>
__device__ __forceinline__ void wg_load_a(unsigned char *as, int kt, int m0, const T *w, const ig_params &p,
                                          int tid) {
#pragma unroll
    for (int i = 0; i < (WG_BM * WG_BK / 8) / WG_THREADS; i++) {
        const int idx = tid + i * WG_THREADS;
        const int row = idx / (WG_BK / 8), kc = idx - row * (WG_BK / 8);
        const int m = m0 + row, k = kt * WG_BK + kc * 8;
        const bool ok = m < p.cout && k < p.K;
        cp_async16(as + (row >> 3) * WG_SBO_A + kc * WG_LBO + (row & 7) * 16,
                   ok ? (const void *)(w + (int64_t)m * p.K + k) : (const void *)w, ok ? 16 : 0);
    }
}

/* The 24 B values of one thread: pixels 8q + i (i < 8) x taps k = 3j + s (s < 3) of its
 * (ci, r) row j, from the gathered centre / left / right (ig3_gather). */
__device__ __forceinline__ void wg_store_b(unsigned char *bs, const ig3_rows &v, int j, int q) {
    uint16_t c[10]; /* x[ow - 1 .. ow + 8] */
    c[0] = (uint16_t)v.l;
    const uint32_t wv[4] = {v.c.x, v.c.y, v.c.z, v.c.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        c[1 + 2 * i] = (uint16_t)(wv[i] & 0xffffu);
        c[2 + 2 * i] = (uint16_t)(wv[i] >> 16);
    }
    c[9] = (uint16_t)v.r;
    unsigned char *base = bs + q * WG_SBO_B;
#pragma unroll
    for (int s = 0; s < 3; s++) {
        const int k = 3 * j + s;
        unsigned char *col = base + (k >> 3) * WG_LBO + (k & 7) * 2;
#pragma unroll
        for (int i = 0; i < 8; i++) *(uint16_t *)(col + i * 16) = c[i + s]; /* tap s of pixel i: x[ow + i + s - 1] */
    }
}

/* ---- kernel ----------------------------------------------------------------------------------- */

template <typename T>
__global__ void __launch_bounds__(WG_THREADS) conv_wgmma_kernel(const ig_params p) {
#if !WG_DEVICE_OK
    __trap();
#else
    LOCO_DYN_SMEM(unsigned char, wg_smem, 128);
    unsigned char *const As = wg_smem;                  /* [2][WG_A_BYTES] */
    unsigned char *const Bs = wg_smem + 2 * WG_A_BYTES; /* [2][WG_B_BYTES] */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wgi = warp >> 2, wq = warp & 3; /* warpgroup (64 Cout rows each), warp within it */
    const int m0 = blockIdx.y * WG_BM;
    const int64_t n0 = (int64_t)blockIdx.x * WG_BN;
    const T *x = (const T *)p.x;
    const T *w = (const T *)p.w;
    const int nk = (p.K + WG_BK - 1) / WG_BK;

    /* gather role, as conv_igemm3_kernel: (ci, r) row j of each K tile, pixels 8q .. 8q+7 */
    const int j = tid >> 4, q = tid & 15;
    ig3_role<T> role = ig3_role_at(x, n0, tid, p);

    float d[64];
#pragma unroll
    for (int i = 0; i < 64; i++) d[i] = 0.0f;

    wg_load_a<T>(As, 0, m0, w, p, tid);
    cp_async_commit();
    wg_store_b(Bs, ig3_role_gather(role, p), j, q);
    cp_async_wait<0>();
    wg_fence_proxy();
    __syncthreads();

    for (int kt = 0; kt < nk; kt++) {
        const int cur = kt & 1;
        const bool more = kt + 1 < nk;
        ig3_rows v;
        if (more) { /* tile kt+1 into the other stage, which tile kt-1's wgmma's are done with */
            wg_load_a<T>(As + (cur ^ 1) * WG_A_BYTES, kt + 1, m0, w, p, tid);
            cp_async_commit();
            ig3_role_next(role, p);
            v = ig3_role_gather(role, p);
        }

        const unsigned char *as = As + cur * WG_A_BYTES + wgi * (64 / 8) * WG_SBO_A;
        const unsigned char *bs = Bs + cur * WG_B_BYTES;
        wg_fence_acc(d);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < WG_BK / 16; kk++)
            wg_mma<T>(d, wg_desc(as + kk * 2 * WG_LBO, WG_LBO, WG_SBO_A), wg_desc(bs + kk * 2 * WG_LBO, WG_LBO, WG_SBO_B));
        wg_commit();
        wg_fence_acc(d);

        if (more) wg_store_b(Bs + (cur ^ 1) * WG_B_BYTES, v, j, q);
        wg_wait_all(); /* this stage is free again for tile kt+2 */
        wg_fence_acc(d);
        cp_async_wait<0>();
        wg_fence_proxy();
        __syncthreads();
    }

    /* epilogue: + bias (f32), convert, store along pixel rows. This lane's pixels are n0 + 8 jn
     * + 2t and the next one; W % 8 == 0 makes P and npix even, so both lie in one image and
     * both exist or neither. Their offsets in y [N, Cout, P] (row 0) are found once, with
     * 32-bit divisions (npix < 2^31). */
    const int g = lane >> 2, t = lane & 3;
    T *y = (T *)p.y;
    int64_t obase[WG_BN / 8];
#pragma unroll
    for (int jn = 0; jn < WG_BN / 8; jn++) {
        const int n = (int)(n0 + jn * 8 + 2 * t), nb = n / p.P;
        obase[jn] = n < p.npix ? (int64_t)nb * p.cout * p.P + (n - nb * p.P) : -1;
    }
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int m = m0 + wgi * 64 + wq * 16 + g + 8 * hf;
        if (m >= p.cout) continue;
        const float bv = p.has_bias ? ld_dyn(p.bias, p.bias_dtype, m) : 0.0f;
        const int64_t mo = (int64_t)m * p.P;
#pragma unroll
        for (int jn = 0; jn < WG_BN / 8; jn++) {
            if (obase[jn] < 0) continue;
            const float v0 = d[4 * jn + 2 * hf] + bv, v1 = d[4 * jn + 2 * hf + 1] + bv;
            if (p.y_pair) {
                igc_st2(y + obase[jn] + mo, v0, v1);
            } else {
                igc_st1(y + obase[jn] + mo, v0);
                igc_st1(y + obase[jn] + mo + 1, v1);
            }
        }
    }
#endif
}

/* ---- host ------------------------------------------------------------------------------------ */

/* Whether the kernel applies: f16/bf16 on a compute capability 9.0 device (the code is sm_90a),
 * stride 1, 3 taps wide with one column of padding each side (Wo = W), W a multiple of 8 (so
 * 8-pixel groups never straddle a row and P is even), K a multiple of 8 (16-byte weight rows),
 * 16-byte aligned x and w, and 32-bit pixel, image and weight sizes. Any kh and top/bottom
 * padding. */
int cuda_conv_wgmma_fits(const cuda_impl *c, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                         const void *wdata, const loco_conv2d_params *cp) {
    if (!c->wgmma_ok || (y->dtype != LOCO_F16 && y->dtype != LOCO_BF16)) return 0;
    const int64_t Cin = x->shape[1], H = x->shape[2], W = x->shape[3], kh = w->shape[2], kw = w->shape[3];
    const int64_t npix = y->shape[0] * y->shape[2] * y->shape[3];
    return cp->stride == 1 && kw == 3 && cp->pad[2] == 1 && cp->pad[3] == 1 && y->shape[3] == W && W % 8 == 0 &&
           (Cin * kh * kw) % 8 == 0 && cuda_aligned(x->data, 16) && cuda_aligned(wdata, 16) &&
           npix < ((int64_t)1 << 31) - WG_BN && Cin * H * W < ((int64_t)1 << 31) && Cin * kh * kw < ((int64_t)1 << 31) &&
           w->shape[0] < ((int64_t)1 << 31);
}

/* The dynamic shared-memory opt-in, once per backend; devices other than compute capability 9.0
 * have no image of the kernel and simply never use it (c->wgmma_ok stays 0). */
template <typename K> static cudaError_t wg_set_attrs(K kernel) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, WG_SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    return e;
}

/* Soft: whatever goes wrong here only keeps the experimental route off (the reason is lost,
 * but nothing else depends on it), so a device never fails backend creation because of it. */
loco_status cuda_conv_wgmma_setup(cuda_impl *c, loco_err *err) {
    (void)err;
    c->wgmma_ok = 0;
    if (c->cc_major != 9 || c->cc_minor != 0) return LOCO_OK;
    int image_ok = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&image_ok, wg_image_ok, sizeof image_ok);
    if (e == cudaSuccess && image_ok) e = wg_set_attrs(conv_wgmma_kernel<__half>);
    if (e == cudaSuccess && image_ok) e = wg_set_attrs(conv_wgmma_kernel<__nv_bfloat16>);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: clear it so the next call does not report it */
        return LOCO_OK;
    }
    c->wgmma_ok = image_ok;
    return LOCO_OK;
}

loco_status cuda_conv_wgmma(cuda_impl *c, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const void *wdata, const loco_tensor *bias, const loco_conv2d_params *cp, loco_err *err) {
    ig_params p;
    ig_params_make(&p, y, x, w, wdata, bias, cp); /* a_vec is 1 here: cuda_conv_wgmma_fits */
    if (p.npix <= 0 || p.cout <= 0) return LOCO_OK;
    const dim3 grid((unsigned)((p.npix + WG_BN - 1) / WG_BN), (unsigned)((p.cout + WG_BM - 1) / WG_BM));
    if (y->dtype == LOCO_BF16)
        LOCO_LAUNCH(grid, WG_THREADS, WG_SMEM, c->stream, conv_wgmma_kernel<__nv_bfloat16>)(p);
    else
        LOCO_LAUNCH(grid, WG_THREADS, WG_SMEM, c->stream, conv_wgmma_kernel<__half>)(p);
    return cuda_check_launch("conv_wgmma_kernel", err);
}
