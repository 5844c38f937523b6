/* flash_softmax.cuh: the online-softmax step both flash-attention kernels run on each 16-row
 * tile of scores (attention.cu with mma.sync, attention_wgmma.cu with wgmma: their score and
 * output accumulators have the same per-warp layout, mma.sync's m16n8 C fragment: lane (g, t)
 * holds rows g (elements 0, 1) and g + 8 (elements 2, 3) of 8-wide column tiles).
 *
 * Scores stay unscaled until the exponent: the scale is positive (the hosts check), so the
 * running max of raw scores is the max of scaled ones, and scale-and-subtract is one FFMA:
 * p = 2^(s * scale_log2 - max * scale_log2). */
#ifndef LOCO_CUDA_FLASH_SOFTMAX_CUH
#define LOCO_CUDA_FLASH_SOFTMAX_CUH

#include "cuda_device.h"
#include "mma.h"

/* The new row maxima of this tile's raw scores s (NST tiles of 8 keys for this lane's two rows,
 * masked keys at -inf), stored into mr, and the factors c[0], c[1] by which the two rows' running
 * output o (NDT tiles of 8 dims) and sums l[2] (NULL: the caller has none) must be multiplied:
 * set only when *rescale is true (some row of the warp grew, or always with ILP). APPLY: multiply
 * o and l here; without it o is not touched, so a caller whose o is still being written by an
 * asynchronous product (attention_wgmma.cu) applies the factors (fa_rescale) after waiting for
 * it. Returns the exponent offsets (nb0, nb1): p = 2^(s * scale_log2 + nb).
 * ILP = 1 (the mma.sync kernel's LOCO_CUDA_FLASH=ilp variants): the maxima as trees instead of
 * chains, and the rescale of o done always, as selects, instead of behind a branch: the branch
 * ends the basic block, so the compiler cannot interleave one m-tile's softmax with the other's
 * or with the next products, and ncu (run of session 6) found a third of the kernel's stalls on
 * fixed-latency dependencies at 2.4 warps per scheduler. */
template <int NST, int NDT, int ILP, bool APPLY>
__device__ __forceinline__ float2 fa_softmax_max_core(const float (&s)[NST][4], float (&o)[NDT][4], float (&mr)[2],
                                                      float *l, float scale_log2, float (&c)[2], bool &rescale) {
    float mx0 = mr[0], mx1 = mr[1];
    if (ILP) {
        float a0[NST], a1[NST];
#pragma unroll
        for (int nt = 0; nt < NST; nt++) {
            a0[nt] = fmaxf(s[nt][0], s[nt][1]);
            a1[nt] = fmaxf(s[nt][2], s[nt][3]);
        }
        /* halving trees that also take widths other than powers of two (10 score tiles in
         * attention_short.cu): each round folds the upper half onto the lower, a middle
         * element of an odd width waiting for the next round */
#pragma unroll
        for (int w = NST; w > 1; w = (w + 1) / 2)
#pragma unroll
            for (int i = 0; i < w / 2; i++) {
                a0[i] = fmaxf(a0[i], a0[i + (w + 1) / 2]);
                a1[i] = fmaxf(a1[i], a1[i + (w + 1) / 2]);
            }
        mx0 = fmaxf(mx0, a0[0]);
        mx1 = fmaxf(mx1, a1[0]);
    } else {
#pragma unroll
        for (int nt = 0; nt < NST; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    /* a row with every key masked so far keeps max -inf; use 0 as its reference so that no
     * -inf - -inf appears */
    const float nb0 = mx0 == -INFINITY ? 0.0f : -mx0 * scale_log2;
    const float nb1 = mx1 == -INFINITY ? 0.0f : -mx1 * scale_log2;
    /* Rescale the running sum and O only where the max grew; after the first key tiles it
     * rarely does, and a warp where no row's max grew skips the O x c multiplies (4 D / 8 per
     * tile per lane, a tenth of the loop for head dim 64). An unchanged max gives c = 1. */
    const bool grew0 = mx0 != mr[0], grew1 = mx1 != mr[1];
    rescale = ILP || __any_sync(0xffffffffu, grew0 || grew1);
    if (rescale) {
        const float c0 = grew0 ? fast_exp2(fmaf(mr[0], scale_log2, nb0)) : 1.0f;
        const float c1 = grew1 ? fast_exp2(fmaf(mr[1], scale_log2, nb1)) : 1.0f;
        if (APPLY) {
            if (l) {
                l[0] *= c0;
                l[1] *= c1;
            }
#pragma unroll
            for (int d = 0; d < NDT; d++) {
                o[d][0] *= c0;
                o[d][1] *= c0;
                o[d][2] *= c1;
                o[d][3] *= c1;
            }
        }
        c[0] = c0;
        c[1] = c1;
    }
    mr[0] = mx0;
    mr[1] = mx1;
    return make_float2(nb0, nb1);
}

/* The maxima and the rescale of o and l at once (the mma.sync kernel). */
template <int NST, int NDT, int ILP = 0>
__device__ __forceinline__ float2 fa_softmax_max(const float (&s)[NST][4], float (&o)[NDT][4], float (&mr)[2],
                                                 float *l, float scale_log2) {
    float c[2];
    bool rescale;
    return fa_softmax_max_core<NST, NDT, ILP, true>(s, o, mr, l, scale_log2, c, rescale);
}

/* o (NDT tiles of 8 dims) times the two rows' factors of fa_softmax_max_core. */
template <int NDT> __device__ __forceinline__ void fa_rescale(float (&o)[NDT][4], const float (&c)[2]) {
#pragma unroll
    for (int d = 0; d < NDT; d++) {
        o[d][0] *= c[0];
        o[d][1] *= c[0];
        o[d][2] *= c[1];
        o[d][3] *= c[1];
    }
}

/* The whole step on fp32 P: s becomes P = 2^(scaled s - row max) in place and l gains its row
 * sums (o, mr, l as fa_softmax_max; ILP = 1 also sums each row as a tree). */
template <int NST, int NDT, int ILP = 0>
__device__ __forceinline__ void fa_softmax_step(float (&s)[NST][4], float (&o)[NDT][4], float (&mr)[2], float (&l)[2],
                                                float scale_log2) {
    const float2 nb = fa_softmax_max<NST, NDT, ILP>(s, o, mr, l, scale_log2);
    float r0[NST], r1[NST];
#pragma unroll
    for (int nt = 0; nt < NST; nt++) {
        s[nt][0] = fast_exp2(fmaf(s[nt][0], scale_log2, nb.x));
        s[nt][1] = fast_exp2(fmaf(s[nt][1], scale_log2, nb.x));
        s[nt][2] = fast_exp2(fmaf(s[nt][2], scale_log2, nb.y));
        s[nt][3] = fast_exp2(fmaf(s[nt][3], scale_log2, nb.y));
        if (ILP) {
            r0[nt] = s[nt][0] + s[nt][1];
            r1[nt] = s[nt][2] + s[nt][3];
        } else {
            l[0] += s[nt][0] + s[nt][1];
            l[1] += s[nt][2] + s[nt][3];
        }
    }
    if (ILP) {
#pragma unroll
        for (int w = NST; w > 1; w = (w + 1) / 2) /* (trees as in fa_softmax_max_core) */
#pragma unroll
            for (int i = 0; i < w / 2; i++) {
                r0[i] += r0[i + (w + 1) / 2];
                r1[i] += r1[i + (w + 1) / 2];
            }
        l[0] += r0[0];
        l[1] += r1[0];
    }
}

/* P (NST tiles of 8 keys) as the A fragments of O += P V, 16 keys (two tiles) per k16 step. */
template <typename T, int NST>
__device__ __forceinline__ void fa_pack_p(const float (&s)[NST][4], uint32_t (&pa)[NST / 2][4]) {
#pragma unroll
    for (int kk = 0; kk < NST / 2; kk++) {
        pa[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        pa[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        pa[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

#endif
