/* norm.cu: GroupNorm (+ fused SiLU) and LayerNorm, statistics in fp32.
 *
 * GroupNorm: a group of sample n is a contiguous run of (C/G)*HW elements in NCHW, often too
 * few groups (N*32) to fill the GPU with one block each. So each group is split into chunks:
 * pass 1 computes (count, mean, M2) per chunk, pass 2 merges a group's chunk statistics
 * (Chan et al.'s parallel update) and normalises its own chunk, applying gamma/beta and SiLU
 * in the same write. Threads accumulate (count, mean, M2) too, never E[x^2] - E[x]^2, so
 * nothing cancels when |mean| >> std. The second pass usually reads from L2 (UNet
 * activations are a few MB).
 *
 * LayerNorm: one warp per row; the mean, then sum (x - mean)^2, then the output. Rows of up to
 * 2048 16-bit channels stay in the warp's registers for all three (ln_rows_kernel); wider or
 * unaligned rows take one pass over the row each (the later ones from L1/L2). */
#include <string.h>

#include <type_traits>

#include "cuda_device.h"
#include "fast_div.h"

#define GN_THREADS 256
#define GN_CPG_MAX 256 /* channels per group the apply kernel's shared (scale, shift) table holds */
#define GN_MAX_CHUNKS 64
#define GN_MIN_CHUNK 4096
#define LN_THREADS 256
#define LN_VPL_MAX 8 /* 16-byte vectors per lane that ln_rows_kernel keeps in registers, at most */

/* Merge statistics (nb, mb, qb) into (n, m, q). */
__device__ __forceinline__ void stat_merge(float &n, float &m, float &q, float nb, float mb, float qb) {
    float nn = n + nb;
    if (nn <= 0.0f) return;
    float d = mb - m, fb = nb / nn;
    m += d * fb;
    q += qb + d * d * n * fb;
    n = nn;
}

__device__ __forceinline__ void warp_stat_merge(float &n, float &m, float &q) {
    for (int o = 16; o > 0; o >>= 1) {
        float nb = __shfl_xor_sync(0xffffffffu, n, o);
        float mb = __shfl_xor_sync(0xffffffffu, m, o);
        float qb = __shfl_xor_sync(0xffffffffu, q, o);
        stat_merge(n, m, q, nb, mb, qb);
    }
}

/* Pass 1: statistics of chunk blockIdx.x of group g0 + blockIdx.y; writes (n, mean, M2).
 * Each thread keeps (count, mean, M2) of what it has read and merges every vector's exact
 * (V, mean, M2) into it (Chan), or updates per element (Welford) on the scalar path: no
 * E[x^2] - E[x]^2 anywhere, so the variance stays accurate whatever the data (a shift by one
 * sample element cancels catastrophically when that element is an outlier, e.g. 30 sigma
 * out, which the VAE's large activations make plausible). */
template <typename T>
__global__ void __launch_bounds__(GN_THREADS) gn_stats_kernel(const T *x, float *part, int64_t glen,
                                                              int64_t chunk_len, int nchunk, int g0, int vec) {
    const int V = 16 / sizeof(T);
    int64_t grp = (int64_t)g0 + blockIdx.y;
    const T *xg = x + grp * glen;
    int64_t s0 = (int64_t)blockIdx.x * chunk_len, s1 = s0 + chunk_len < glen ? s0 + chunk_len : glen;
    float n = 0.0f, m = 0.0f, m2 = 0.0f;
    if (vec) { /* s0, s1 and glen are multiples of V */
        for (int64_t i = s0 / V + threadIdx.x; i < s1 / V; i += blockDim.x) {
            vec16<T> u = ((const vec16<T> *)xg)[i];
            float f[16 / sizeof(T)], vs = 0.0f, vq = 0.0f;
#pragma unroll
            for (int j = 0; j < V; j++) {
                f[j] = to_f32(u.v[j]);
                vs += f[j];
            }
            float vm = vs * (1.0f / V);
#pragma unroll
            for (int j = 0; j < V; j++) {
                float d = f[j] - vm;
                vq += d * d;
            }
            stat_merge(n, m, m2, (float)V, vm, vq);
        }
    } else {
        for (int64_t i = s0 + threadIdx.x; i < s1; i += blockDim.x) {
            float v = to_f32(xg[i]);
            n += 1.0f;
            float d = v - m;
            m += d / n;
            m2 += d * (v - m);
        }
    }
    warp_stat_merge(n, m, m2);
    __shared__ float sh[3][GN_THREADS / 32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sh[0][warp] = n;
        sh[1][warp] = m;
        sh[2][warp] = m2;
    }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        n = lane < nw ? sh[0][lane] : 0.0f;
        m = lane < nw ? sh[1][lane] : 0.0f;
        m2 = lane < nw ? sh[2][lane] : 0.0f;
        warp_stat_merge(n, m, m2);
        if (lane == 0) {
            float *o = part + (grp * nchunk + blockIdx.x) * 3;
            o[0] = n;
            o[1] = m;
            o[2] = m2;
        }
    }
}

/* A group's mean and 1/std from its chunk statistics, merged by the 32 lanes of one warp in a
 * fixed order. Every lane gets a result, but only lane 0's is the reference (the butterfly's
 * lanes may differ by a rounding); gn_apply_kernel and gn_table_kernel both take lane 0's, so
 * the fused conv prologue (conv.cu) normalises with the very values loco_group_norm uses. */
__device__ __forceinline__ void gn_group_moments(const float *part, int64_t grp, int nchunk, float eps, float &mean,
                                                 float &rstd) {
    float n = 0.0f, m = 0.0f, q = 0.0f;
    for (int i = threadIdx.x & 31; i < nchunk; i += 32) {
        const float *p = part + (grp * nchunk + i) * 3;
        stat_merge(n, m, q, p[0], p[1], p[2]);
    }
    warp_stat_merge(n, m, q);
    mean = m;
    rstd = rsqrtf((n > 0.0f ? q / n : 0.0f) + eps);
}

/* Channel c's GroupNorm as y = x * scale + shift. */
__device__ __forceinline__ float2 gn_channel_affine(float mean, float rstd, const void *gamma, int gdt,
                                                    const void *beta, int bdt, int c) {
    const float a = rstd * ld_dyn(gamma, gdt, c);
    return make_float2(a, fmaf(-mean, a, beta ? ld_dyn(beta, bdt, c) : 0.0f));
}

/* Pass 2: merge the group's chunk statistics, normalise this block's chunk.
 *
 * Fast form (vec_sv.d > 0: 16-byte vectors that never straddle channels, at most GN_CPG_MAX
 * channels per group, group length < 2^31): the block first folds mean, rstd, gamma and beta
 * into one (scale, shift) per channel of its group in shared memory; a vector then finds its
 * channel with one magic-number division (fast_div.h) and costs one FFMA per element. The
 * general form (any alignment, huge groups) divides per element and reads gamma/beta with
 * their run-time dtype: written per vector, that was ~150 instructions per 16 bytes with SiLU,
 * enough to make a memory-bound kernel issue-bound. */
template <typename T>
__global__ void __launch_bounds__(GN_THREADS)
    gn_apply_kernel(T *y, const T *x, const float *part, const void *gamma, int gdt, const void *beta, int bdt,
                    int64_t glen, int64_t S, int cpg, int groups, int64_t chunk_len, int nchunk, int g0, float eps,
                    int silu, loco_fast_div vec_sv) {
    const int V = 16 / sizeof(T);
    __shared__ float sh_mean, sh_rstd;
    __shared__ float sh_scale[GN_CPG_MAX], sh_shift[GN_CPG_MAX];
    int64_t grp = (int64_t)g0 + blockIdx.y;
    if (threadIdx.x < 32) {
        float m, r;
        gn_group_moments(part, grp, nchunk, eps, m, r);
        if (threadIdx.x == 0) {
            sh_mean = m;
            sh_rstd = r;
        }
    }
    __syncthreads();
    float mean = sh_mean, rstd = sh_rstd;
    int c0 = (int)(grp % groups) * cpg;
    const T *xg = x + grp * glen;
    T *yg = y + grp * glen;
    int64_t s0 = (int64_t)blockIdx.x * chunk_len, s1 = s0 + chunk_len < glen ? s0 + chunk_len : glen;
    if (vec_sv.d > 0) { /* S % V == 0 and glen < 2^31 (host) */
        for (int i = threadIdx.x; i < cpg; i += blockDim.x) {
            const float2 ab = gn_channel_affine(mean, rstd, gamma, gdt, beta, bdt, c0 + i);
            sh_scale[i] = ab.x;
            sh_shift[i] = ab.y;
        }
        __syncthreads();
        const uint32_t v1 = (uint32_t)(s1 / V);
        for (uint32_t i = (uint32_t)(s0 / V) + threadIdx.x; i < v1; i += blockDim.x) {
            const uint32_t cl = loco_fast_div_eval(vec_sv, i); /* channel within the group */
            const float a = sh_scale[cl], b = sh_shift[cl];
            vec16<T> u = ((const vec16<T> *)xg)[i];
#pragma unroll
            for (int j = 0; j < V; j++) {
                float v = fmaf(to_f32(u.v[j]), a, b);
                if (silu) v = fast_silu(v);
                u.v[j] = from_f32<T>(v);
            }
            ((vec16<T> *)yg)[i] = u;
        }
        return;
    }
    for (int64_t i = s0 + threadIdx.x; i < s1; i += blockDim.x) {
        const float2 ab = gn_channel_affine(mean, rstd, gamma, gdt, beta, bdt, c0 + (int)(i / S));
        float v = fmaf(to_f32(xg[i]), ab.x, ab.y);
        if (silu) v = fast_silu(v);
        yg[i] = from_f32<T>(v);
    }
}

/* The fused conv prologue's table: (scale, shift) of every (sample, channel), table[grp * cpg
 * + i] for channel i of group grp = n * groups + g, that is table[n * C + c]. One warp per
 * group. */
__global__ void __launch_bounds__(GN_THREADS)
    gn_table_kernel(float2 *table, const float *part, const void *gamma, int gdt, const void *beta, int bdt,
                    int64_t ngroups, int cpg, int groups, int nchunk, float eps) {
    const int64_t grp = (int64_t)blockIdx.x * (GN_THREADS / 32) + (threadIdx.x >> 5);
    if (grp >= ngroups) return; /* whole warps leave: the merge's shuffles stay full */
    float mean, rstd;
    gn_group_moments(part, grp, nchunk, eps, mean, rstd);
    /* lane 0's values, as gn_apply_kernel uses: a butterfly merge can leave the lanes a rounding
     * apart (Chan's update is not symmetric in its operands) */
    mean = __shfl_sync(0xffffffffu, mean, 0);
    rstd = __shfl_sync(0xffffffffu, rstd, 0);
    const int c0 = (int)(grp % groups) * cpg;
    for (int i = threadIdx.x & 31; i < cpg; i += 32)
        table[grp * cpg + i] = gn_channel_affine(mean, rstd, gamma, gdt, beta, bdt, c0 + i);
}

/* How a GroupNorm call splits x [N, C, *] into groups and chunks. */
typedef struct gn_plan {
    int64_t S, glen, ngroups, nchunk, chunk_len;
    int cpg;
    int vec; /* gn_stats_kernel's 16-byte form */
} gn_plan;

static void gn_plan_make(const cuda_impl *c, const loco_tensor *x, int groups, gn_plan *pl) {
    const int64_t N = x->shape[0], C = x->shape[1];
    pl->S = loco_tensor_numel(x) / (N * C);
    pl->cpg = (int)(C / groups);
    pl->glen = (int64_t)pl->cpg * pl->S;
    pl->ngroups = N * groups;
    /* chunks per group: enough blocks to fill the GPU a few times, but chunks of at least
     * GN_MIN_CHUNK elements, a multiple of 8 so vectors never straddle chunks */
    int64_t want = (4 * (int64_t)c->sm_count + pl->ngroups - 1) / pl->ngroups;
    int64_t most = (pl->glen + GN_MIN_CHUNK - 1) / GN_MIN_CHUNK;
    int64_t nchunk = want < most ? want : most;
    if (nchunk > GN_MAX_CHUNKS) nchunk = GN_MAX_CHUNKS;
    if (nchunk < 1) nchunk = 1;
    int64_t chunk_len = (pl->glen + nchunk - 1) / nchunk;
    pl->chunk_len = (chunk_len + 7) / 8 * 8;
    pl->nchunk = (pl->glen + pl->chunk_len - 1) / pl->chunk_len;
    pl->vec = pl->glen % (int64_t)(16 / loco_dtype_size(x->dtype)) == 0 && cuda_aligned(x->data, 16);
}

/* The checks both GroupNorm entry points make before allocating anything. */
static loco_status gn_check_dtypes(const char *what, const loco_tensor *x, const loco_tensor *gamma,
                                   const loco_tensor *beta, loco_err *err) {
    if (!cuda_is_act_dtype(x->dtype))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda %s: dtype %s", what, cuda_dt(x->dtype));
    if (!cuda_is_act_dtype(gamma->dtype) || (beta && !cuda_is_act_dtype(beta->dtype)))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda %s: gamma/beta must be F32, F16 or BF16", what);
    return LOCO_OK;
}

/* Pass 1 over groups [g0, g0 + ng) into part (ngroups x nchunk x 3). */
static loco_status gn_stats_launch(cuda_impl *c, const loco_tensor *x, const gn_plan *pl, float *part, int64_t g0,
                                   int64_t ng, loco_err *err) {
    const dim3 grid((unsigned)pl->nchunk, (unsigned)ng);
    CUDA_DISPATCH(x->dtype, T, "group_norm", err, {
        LOCO_LAUNCH(grid, GN_THREADS, 0, c->stream, gn_stats_kernel<T>)(
            (const T *)x->data, part, pl->glen, pl->chunk_len, (int)pl->nchunk, (int)g0, pl->vec);
    });
    return cuda_check_launch("gn_stats_kernel", err);
}

extern "C" loco_status cuda_op_group_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x, int groups,
                                          const loco_tensor *gamma, const loco_tensor *beta, float eps, int fuse_silu,
                                          loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    if (x->dtype != y->dtype)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda group_norm: input %s, output %s", cuda_dt(x->dtype),
                            cuda_dt(y->dtype));
    CUDA_TRY(gn_check_dtypes("group_norm", x, gamma, beta, err)); /* before `part` exists */
    if (loco_tensor_numel(x) <= 0) return LOCO_OK;
    gn_plan pl;
    gn_plan_make(c, x, groups, &pl);
    pl.vec = pl.vec && cuda_aligned(y->data, 16); /* the apply pass's vectors too */

    float *part = NULL;
    CUDA_TRY(cuda_alloc_get(c, (size_t)(pl.ngroups * pl.nchunk * 3) * sizeof(float), (void **)&part, err));
    loco_status st = LOCO_OK;
    const void *bptr = beta ? beta->data : NULL;
    int bdt = beta ? (int)beta->dtype : 0;
    for (int64_t g0 = 0; g0 < pl.ngroups && st == LOCO_OK; g0 += 65535) {
        int64_t ng = pl.ngroups - g0 < 65535 ? pl.ngroups - g0 : 65535;
        st = gn_stats_launch(c, x, &pl, part, g0, ng, err);
        if (st != LOCO_OK) break;
        const dim3 grid((unsigned)pl.nchunk, (unsigned)ng);
        CUDA_DISPATCH(x->dtype, T, "group_norm", err, {
            const int V = 16 / sizeof(T);
            loco_fast_div vec_sv; /* vectors per channel; d = 0 selects the general form */
            memset(&vec_sv, 0, sizeof vec_sv);
            if (pl.vec && pl.S % V == 0 && pl.cpg <= GN_CPG_MAX && pl.glen < ((int64_t)1 << 31))
                vec_sv = loco_fast_div_make((uint32_t)(pl.S / V));
            LOCO_LAUNCH(grid, GN_THREADS, 0, c->stream, gn_apply_kernel<T>)(
                (T *)y->data, (const T *)x->data, part, gamma->data, (int)gamma->dtype, bptr, bdt, pl.glen, pl.S,
                pl.cpg, groups, pl.chunk_len, (int)pl.nchunk, (int)g0, eps, fuse_silu, vec_sv);
        });
        st = cuda_check_launch("gn_apply_kernel", err);
    }
    cuda_alloc_put(c, part);
    return st;
}

/* GroupNorm of x as an affine map per (sample, channel): table[n * C + c] = (scale, shift) with
 * GroupNorm(x)[n, c, ...] = x[n, c, ...] * scale + shift, the values gn_apply_kernel computes
 * for an output y as aligned as x (every tensor of this backend is). table holds N * C. */
loco_status cuda_gn_table(cuda_impl *c, const loco_tensor *x, int groups, const loco_tensor *gamma,
                          const loco_tensor *beta, float eps, float2 *table, loco_err *err) {
    CUDA_TRY(gn_check_dtypes("group_norm", x, gamma, beta, err));
    if (loco_tensor_numel(x) <= 0) return LOCO_OK;
    gn_plan pl;
    gn_plan_make(c, x, groups, &pl);
    float *part = NULL;
    CUDA_TRY(cuda_alloc_get(c, (size_t)(pl.ngroups * pl.nchunk * 3) * sizeof(float), (void **)&part, err));
    loco_status st = LOCO_OK;
    for (int64_t g0 = 0; g0 < pl.ngroups && st == LOCO_OK; g0 += 65535)
        st = gn_stats_launch(c, x, &pl, part, g0, pl.ngroups - g0 < 65535 ? pl.ngroups - g0 : 65535, err);
    if (st == LOCO_OK) {
        const int64_t blocks = (pl.ngroups + GN_THREADS / 32 - 1) / (GN_THREADS / 32);
        LOCO_LAUNCH((unsigned)blocks, GN_THREADS, 0, c->stream, gn_table_kernel)(
            table, part, gamma->data, (int)gamma->dtype, beta ? beta->data : NULL, beta ? (int)beta->dtype : 0,
            pl.ngroups, pl.cpg, groups, (int)pl.nchunk, eps);
        st = cuda_check_launch("gn_table_kernel", err);
    }
    cuda_alloc_put(c, part);
    return st;
}

/* ---- LayerNorm over the last dimension ------------------------------------------------------------ */

/* The sum over each aligned group of LPR lanes (a power of two), in every lane of the group. */
template <int LPR> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = LPR / 2; o >= 1; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Lane l of a row's group loads its vectors of row `row` (nothing past the last row). */
template <typename T, int VPL, int LPR>
__device__ __forceinline__ void ln_load_row(vec16<T> (&u)[VPL], const T *x, int row, int rows, int C, int l) {
    const int nv = C / (int)(16 / sizeof(T));
    const vec16<T> *xr = (const vec16<T> *)(x + (int64_t)row * C);
#pragma unroll
    for (int k = 0; k < VPL; k++)
        if (row < rows && l + LPR * k < nv) u[k] = xr[l + LPR * k];
}

/* A row's mean and 1 / sqrt(variance + eps) from its vectors in the registers of its group's
 * lanes (ln_load_row), in every lane of the group: the sum around x[0] for an accurate mean, then
 * a true second pass for the variance (see the general form). The LayerNorm and its statistics
 * alone (ln_stats_kernel) share it, so a GEMM that normalises its input from the statistics
 * (gemm_wgmma.cu's LayerNorm form) reads the same bits the LayerNorm would have written. */
template <typename T, int VPL, int LPR>
__device__ __forceinline__ void ln_row_stats(const vec16<T> (&u)[VPL], bool live, int sub, int l, int C, float eps,
                                             float *mean_out, float *rstd_out) {
    constexpr int V = 16 / sizeof(T);
    const int nv = C / V;
    const float shift = __shfl_sync(0xffffffffu, l == 0 && live ? to_f32(u[0].v[0]) : 0.0f, sub * LPR);
    float s = 0.0f, q = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++)
        if (live && l + LPR * k < nv)
#pragma unroll
            for (int j = 0; j < V; j++) s += to_f32(u[k].v[j]) - shift;
    const float mean = shift + group_sum<LPR>(s) / (float)C;
#pragma unroll
    for (int k = 0; k < VPL; k++)
        if (live && l + LPR * k < nv)
#pragma unroll
            for (int j = 0; j < V; j++) {
                const float d = to_f32(u[k].v[j]) - mean;
                q += d * d;
            }
    *mean_out = mean;
    *rstd_out = rsqrtf(group_sum<LPR>(q) / (float)C + eps);
}

/* Fast form for 16-byte aligned rows of at most 32 * VPL vectors (VPL <= 8; f16/bf16: C <=
 * 2048, every LayerNorm of the supported models): a group of LPR lanes per row (8, 16 or 32:
 * four, two or one rows per warp) keeps the row's vectors in registers across the three steps
 * (shifted sum, sum of squares around the mean, output), and gamma/beta sit in shared memory as
 * fp32, staged once per block. LPR and VPL (2, 4, 5 or 8) are the smallest that hold the row, so
 * narrow rows (SD 1.5's 320 channels: 8 lanes of 5 vectors) keep several rows' loads in flight
 * per warp, and VPL = 5, every SD width (320 k channels are 40 k vectors over 8 k lanes), takes
 * 48 registers (five blocks of 256 threads per SM) where 8 takes 64-76 (four: half the warps an
 * SM holds);
 * with a warp per row, the 640-byte rows of [16, 4096, 320] ran at 2.1 TB/s on an H200
 * (session 6 profile: 39 us). The general form below re-reads the row for each step and loads
 * gamma/beta per element with their run-time dtype (16 scalar loads per 16 bytes of output:
 * 1.5 TB/s on an H200 for SD 1.5's [16, 4096, 320], bench/gpu/runs/2026-11-27-h200-run4). */
template <typename T, int VPL, int LPR>
__global__ void __launch_bounds__(LN_THREADS) ln_rows_kernel(T *y, const T *x, const void *gamma, int gdt,
                                                             const void *beta, int bdt, int rows, int C, float eps) {
    constexpr int V = 16 / sizeof(T), RPW = 32 / LPR;
    LOCO_DYN_SMEM(float4, ln_smem, 16); /* gamma [C], beta [C] as fp32 */
    float *sg = (float *)ln_smem, *sb = sg + C;
    const int lane = threadIdx.x & 31, sub = lane / LPR, l = lane % LPR, nv = C / V;
    const int warps = gridDim.x * (blockDim.x >> 5);
    int rg = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    vec16<T> u[VPL];
    /* The first row's loads go out before gamma/beta are staged: the staging's loads and its
     * barrier then wait beside them instead of in front of them (with a warp per row or two,
     * most warps have no second row). */
    ln_load_row<T, VPL, LPR>(u, x, rg * RPW + sub, rows, C, l);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        sg[i] = ld_dyn(gamma, gdt, i);
        sb[i] = beta ? ld_dyn(beta, bdt, i) : 0.0f;
    }
    __syncthreads();
    /* all lanes go round together (the sums shuffle across the whole warp); a group whose row
     * is past the end computes on nothing and stores nothing */
    for (; rg * RPW < rows; rg += warps) {
        const int row = rg * RPW + sub;
        const bool live = row < rows;
        vec16<T> *yr = (vec16<T> *)(y + (int64_t)row * C);
        float mean, rstd;
        ln_row_stats<T, VPL, LPR>(u, live, sub, l, C, eps, &mean, &rstd);
#pragma unroll
        for (int k = 0; k < VPL; k++) {
            const int i = l + LPR * k;
            if (live && i < nv) {
                /* gamma/beta as float4: C % V == 0 keeps sb (sg + C) 16-byte aligned */
                float g[V], b[V];
#pragma unroll
                for (int j = 0; j < V; j += 4) {
                    *(float4 *)(g + j) = *(const float4 *)(sg + i * V + j);
                    *(float4 *)(b + j) = *(const float4 *)(sb + i * V + j);
                }
#pragma unroll
                for (int j = 0; j < V; j++) u[k].v[j] = from_f32<T>(fmaf(to_f32(u[k].v[j]) - mean, g[j] * rstd, b[j]));
                yr[i] = u[k];
            }
        }
        /* the next row's loads: after this row's stores (in place, y = x, a row is read and
         * written by the same lanes, so the order within a lane is all it needs) */
        if ((rg + warps) * RPW < rows) ln_load_row<T, VPL, LPR>(u, x, (rg + warps) * RPW + sub, rows, C, l);
    }
}

template <typename T>
__global__ void __launch_bounds__(LN_THREADS) ln_kernel(T *y, const T *x, const void *gamma, int gdt,
                                                        const void *beta, int bdt, int64_t rows, int64_t C,
                                                        float eps, int vec) {
    const int V = 16 / sizeof(T);
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps) {
        const T *xr = x + row * C;
        T *yr = y + row * C;
        /* Sum around x[0] for an accurate mean, then a true second pass for the variance:
         * q/C - (s/C)^2 around x[0] cancels catastrophically when x[0] is an outlier feature
         * (CLIP's and transformers' LayerNorm inputs have a few channels at 100x the rest). */
        float shift = to_f32(xr[0]);
        float s = 0.0f, q = 0.0f;
        if (vec) {
            for (int64_t i = lane; i < C / V; i += 32) {
                vec16<T> u = ((const vec16<T> *)xr)[i];
#pragma unroll
                for (int j = 0; j < V; j++) s += to_f32(u.v[j]) - shift;
            }
        } else {
            for (int64_t i = lane; i < C; i += 32) s += to_f32(xr[i]) - shift;
        }
        float mean = shift + warp_sum(s) / (float)C;
        if (vec) {
            for (int64_t i = lane; i < C / V; i += 32) {
                vec16<T> u = ((const vec16<T> *)xr)[i];
#pragma unroll
                for (int j = 0; j < V; j++) {
                    float d = to_f32(u.v[j]) - mean;
                    q += d * d;
                }
            }
        } else {
            for (int64_t i = lane; i < C; i += 32) {
                float d = to_f32(xr[i]) - mean;
                q += d * d;
            }
        }
        q = warp_sum(q); /* also orders every lane's reads before any write (in place) */
        float rstd = rsqrtf(q / (float)C + eps);
        if (vec) {
            for (int64_t i = lane; i < C / V; i += 32) {
                vec16<T> u = ((const vec16<T> *)xr)[i];
#pragma unroll
                for (int j = 0; j < V; j++) {
                    int64_t cidx = i * V + j;
                    float v = (to_f32(u.v[j]) - mean) * rstd * ld_dyn(gamma, gdt, cidx);
                    if (beta) v += ld_dyn(beta, bdt, cidx);
                    u.v[j] = from_f32<T>(v);
                }
                ((vec16<T> *)yr)[i] = u;
            }
        } else {
            for (int64_t i = lane; i < C; i += 32) {
                float v = (to_f32(xr[i]) - mean) * rstd * ld_dyn(gamma, gdt, i);
                if (beta) v += ld_dyn(beta, bdt, i);
                yr[i] = from_f32<T>(v);
            }
        }
    }
}

/* LayerNorm's statistics alone, stats[row] = (mean, rstd) as ln_rows_kernel computes them (the
 * same loads and ln_row_stats), for a GEMM that normalises its input on the way in (gemm_wgmma.cu's
 * LayerNorm form): x is read once and 8 bytes a row written, where the LayerNorm writes x's size. */
template <typename T, int VPL, int LPR>
__global__ void __launch_bounds__(LN_THREADS) ln_stats_kernel(float2 *stats, const T *x, int rows, int C, float eps) {
    constexpr int RPW = 32 / LPR;
    const int lane = threadIdx.x & 31, sub = lane / LPR, l = lane % LPR;
    const int warps = gridDim.x * (blockDim.x >> 5);
    vec16<T> u[VPL];
    for (int rg = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; rg * RPW < rows; rg += warps) {
        const int row = rg * RPW + sub;
        const bool live = row < rows;
        ln_load_row<T, VPL, LPR>(u, x, row, rows, C, l);
        float mean, rstd;
        ln_row_stats<T, VPL, LPR>(u, live, sub, l, C, eps, &mean, &rstd);
        if (live && l == 0) stats[row] = make_float2(mean, rstd);
    }
}

template <int V> using ln_int = std::integral_constant<int, V>;

/* Calls f(ln_int<VPL>(), ln_int<LPR>()) for the run-time pair: the instantiations of the fast
 * forms (LPR 8, 16, 32; VPL 2, 4, 5, LN_VPL_MAX). */
template <typename F> static void ln_with_shape(int vpl, int lpr, F &&f) {
    auto with_lpr = [&](auto lpr_c) {
        if (vpl == 2)
            f(ln_int<2>(), lpr_c);
        else if (vpl == 5)
            f(ln_int<5>(), lpr_c);
        else if (vpl == 4)
            f(ln_int<4>(), lpr_c);
        else
            f(ln_int<LN_VPL_MAX>(), lpr_c);
    };
    if (lpr == 8)
        with_lpr(ln_int<8>());
    else if (lpr == 16)
        with_lpr(ln_int<16>());
    else
        with_lpr(ln_int<32>());
}

/* The fast forms' shape for rows of C elements of `es` bytes: the fewest lanes per row (8, 16, 32)
 * and vectors per lane (2, 4, 5, 8) that hold a row, and the grid (a warp per 32 / lpr rows, up
 * to cuda_grid's cap). Before session 8 the grid had a warp per four rows whatever the width, so
 * SD-XL's [16384, 1280] (lpr 32) ran each warp over four rows one after the other: 2.2 TB/s (run
 * 6 profile; SD 1.5's [65536, 320], lpr 8, whose grid this does not change: 2.7). Not yet timed.
 * 0 when they do not apply (C not a whole number of 16-byte vectors, wider than 2048 16-bit
 * channels, unaligned, or too many rows). */
static int ln_fast_shape(const cuda_impl *c, int64_t C, int64_t rows, int es, int aligned, int *vpl, int *lpr,
                         unsigned *grid) {
    const int V = 16 / es;
    if (!aligned || C % V != 0 || C > 32 * LN_VPL_MAX * V || rows >= ((int64_t)1 << 31) / 32) return 0;
    const int64_t nv = C / V;
    *lpr = nv <= 8 * LN_VPL_MAX ? 8 : nv <= 16 * LN_VPL_MAX ? 16 : 32;
    *vpl = nv <= 2 * *lpr ? 2 : nv <= 4 * *lpr ? 4 : nv <= 5 * *lpr ? 5 : LN_VPL_MAX;
    const int rpw = 32 / *lpr;
    *grid = cuda_grid(c, (rows + rpw - 1) / rpw * 32, LN_THREADS);
    return 1;
}

/* The statistics kernel's shape for x (ln_rows_kernel's), or 0 when its fast form does not take x. */
static int ln_stats_shape(const cuda_impl *c, const loco_tensor *x, int64_t *rows, int64_t *C, int *vpl, int *lpr,
                          unsigned *grid) {
    *C = x->shape[x->ndim - 1];
    *rows = *C > 0 ? loco_tensor_numel(x) / *C : 0;
    return (x->dtype == LOCO_F16 || x->dtype == LOCO_BF16) && *rows > 0 &&
           ln_fast_shape(c, *C, *rows, 2, cuda_aligned(x->data, 16), vpl, lpr, grid);
}

extern "C" int cuda_layer_norm_stats_fits(const cuda_impl *c, const loco_tensor *x) {
    int64_t rows, C;
    int vpl = 0, lpr = 0;
    unsigned grid = 0;
    return ln_stats_shape(c, x, &rows, &C, &vpl, &lpr, &grid);
}

extern "C" loco_status cuda_layer_norm_stats(cuda_impl *c, void *stats, const loco_tensor *x, float eps,
                                             loco_err *err) {
    int64_t rows, C;
    int vpl = 0, lpr = 0;
    unsigned grid = 0;
    if (!ln_stats_shape(c, x, &rows, &C, &vpl, &lpr, &grid)) return LOCO_EUNSUPPORTED;
    const auto launch = [&](auto type_c) {
        typedef decltype(type_c) T;
        ln_with_shape(vpl, lpr, [&](auto vpl_c, auto lpr_c) {
            LOCO_LAUNCH(grid, LN_THREADS, 0, c->stream,
                        ln_stats_kernel<T, decltype(vpl_c)::value, decltype(lpr_c)::value>)(
                (float2 *)stats, (const T *)x->data, (int)rows, (int)C, eps);
        });
    };
    if (x->dtype == LOCO_F16)
        launch(__half());
    else
        launch(__nv_bfloat16());
    return cuda_check_launch("ln_stats_kernel", err);
}

extern "C" loco_status cuda_op_layer_norm(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                          const loco_tensor *gamma, const loco_tensor *beta, float eps,
                                          loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    if (x->dtype != y->dtype)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda layer_norm: input %s, output %s", cuda_dt(x->dtype),
                            cuda_dt(y->dtype));
    if (!cuda_is_act_dtype(gamma->dtype) || (beta && !cuda_is_act_dtype(beta->dtype)))
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda layer_norm: gamma/beta must be F32, F16 or BF16");
    int64_t C = x->shape[x->ndim - 1];
    if (C <= 0) return LOCO_OK;
    int64_t rows = loco_tensor_numel(x) / C;
    if (rows <= 0) return LOCO_OK;
    CUDA_DISPATCH(x->dtype, T, "layer_norm", err, {
        const int V = 16 / sizeof(T);
        int vec = C % V == 0 && cuda_aligned(x->data, 16) && cuda_aligned(y->data, 16);
        int vpl = 0, lpr = 0;
        unsigned grid = 0;
        if (ln_fast_shape(c, C, rows, (int)sizeof(T), vec, &vpl, &lpr, &grid)) {
            const size_t smem = 2 * (size_t)C * sizeof(float);
            const int gdt = (int)gamma->dtype, bdt = beta ? (int)beta->dtype : 0;
            const void *b = beta ? beta->data : NULL;
            ln_with_shape(vpl, lpr, [&](auto vpl_c, auto lpr_c) {
                LOCO_LAUNCH(grid, LN_THREADS, smem, c->stream,
                            ln_rows_kernel<T, decltype(vpl_c)::value, decltype(lpr_c)::value>)(
                    (T *)y->data, (const T *)x->data, gamma->data, gdt, b, bdt, (int)rows, (int)C, eps);
            });
            return cuda_check_launch("ln_rows_kernel", err);
        }
        LOCO_LAUNCH(cuda_grid(c, rows * 32, LN_THREADS), LN_THREADS, 0, c->stream, ln_kernel<T>)(
            (T *)y->data, (const T *)x->data, gamma->data, (int)gamma->dtype, beta ? beta->data : NULL,
            beta ? (int)beta->dtype : 0, rows, C, eps, vec);
    });
    return cuda_check_launch("ln_kernel", err);
}
