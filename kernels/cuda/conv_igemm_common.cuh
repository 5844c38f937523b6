/* conv_igemm_common.cuh: the pieces the implicit-GEMM convolution kernels share:
 * conv_igemm.cu (f16/bf16, mma m16n8k16; the generic and the row-gather kernel) and
 * conv_igemm_tf32.cu (f32 as TF32, mma m16n8k8).
 *
 * All of them tile 128 (Cout) x 128 (output pixels) per block of 256 threads = 2 x 4 warps of
 * 64 rows x 32 pixels, with fp32 accumulators acc[4][4][4] = [m16 tile][n8 tile][C fragment]
 * in the m16n8 C layout (the same for k16 and k8). The generic kernels gather one B column
 * (one output pixel) per thread over the whole K loop, k-rows brow0, brow0 + 2, ... (256
 * threads over 128 columns), through a per-tile (ci, r, s) table decoded by one warp.
 *
 * The helpers take the kernel's parameter struct as a template argument (ig_params and
 * t32_params have the same field names) and are all forced inline. With them the kernels
 * compiled to byte-identical sm_80 / sm_90 code (compared when they were introduced), which
 * holds only while the accumulators stay where the kernels had them: a helper holding the
 * k-step loop, or one function holding the whole TF32 epilogue (its obase / nok arrays in the
 * helper's frame, where that kernel had them in its own), changed the accumulators' register
 * assignment, and on sm_80 the schedule and instruction count. Hence the epilogue in two parts
 * (igc_epilogue is the function conv_igemm.cu always had; the TF32 kernel calls the parts) and
 * the k-step loops left in the kernels. The host emulators of both files compile everything
 * here above the host section on the CPU. ig3_role (shared with conv_wgmma.cu since) changed
 * conv_igemm3_kernel by one compare in its prologue and a renaming of predicates (cuobjdump). */
#ifndef LOCO_CUDA_CONV_IGEMM_COMMON_CUH
#define LOCO_CUDA_CONV_IGEMM_COMMON_CUH

#include <string.h>

#include "mma.h"

/* The parameters of the 16-bit implicit-GEMM kernels (conv_igemm.cu, conv_wgmma.cu); the
 * TF32 kernel's t32_params has the same field names for the shared helpers. */
typedef struct ig_params {
    const void *x, *w, *bias;
    void *y;
    int bias_dtype, has_bias;
    int cin, h, wd, cout, kh, kw, stride, pad_t, pad_l, ho, wo;
    int K, P; /* Cin*kh*kw, Ho*Wo */
    int64_t npix;
    int a_vec;  /* K % 8 == 0 and w 16-byte aligned: weight rows load as 16-byte vectors */
    int y_pair; /* P even and y 4-byte aligned: neighbouring pixels store as one 32-bit word */
} ig_params;

/* Decode k-tile kt into tab[0..31] = {x offset of (ci, r, s), r, s, valid}; run by one warp. */
template <int BK, typename P> __device__ __forceinline__ void igc_decode(int4 *tab, int kt, const P &p, int lane) {
    int k = kt * BK + lane;
    int4 d = make_int4(0, 0, 0, 0);
    if (k < p.K) {
        int khw = p.kh * p.kw;
        int ci = k / khw, rs = k - ci * khw;
        int r = rs / p.kw, s = rs - r * p.kw;
        d = make_int4(ci * p.h * p.wd + r * p.wd + s, r, s, 1);
    }
    tab[lane] = d;
}

/* One thread's B column (output pixel pix) for the whole K loop: its image in x and its
 * top-left input tap. */
template <typename T> struct igc_pixel {
    const T *xs; /* image nb of x (x itself when the pixel is out of range) */
    int ih0, iw0;
    int off; /* ih0 * W + iw0: only used where the tap is inside the image */
    bool ok; /* pix < npix */
};

template <typename T, typename P>
__device__ __forceinline__ igc_pixel<T> igc_pixel_at(const T *x, int64_t pix, const P &p) {
    igc_pixel<T> px;
    px.ok = pix < p.npix;
    px.ih0 = 0;
    px.iw0 = 0;
    px.xs = x;
    if (px.ok) {
        int64_t nb = pix / p.P;
        int pp = (int)(pix - nb * p.P);
        int oh = pp / p.wo, ow = pp - oh * p.wo;
        px.ih0 = oh * p.stride - p.pad_t;
        px.iw0 = ow * p.stride - p.pad_l;
        px.xs = x + nb * (int64_t)p.cin * p.h * p.wd;
    }
    px.off = px.ih0 * p.wd + px.iw0;
    return px;
}

/* Gather this thread's ROWS elements of a B tile (k-rows brow0 + 2i of the decoded table tab)
 * into registers; taps outside the image, k past K and pixels past npix read as zero. */
template <int ROWS, typename T, typename P>
__device__ __forceinline__ void igc_gather(T (&breg)[ROWS], const int4 *tab, int brow0, const igc_pixel<T> &px,
                                           const P &p, T zero) {
#pragma unroll
    for (int i = 0; i < ROWS; i++) {
        int4 d = tab[brow0 + 2 * i];
        int iy = px.ih0 + d.y, ix = px.iw0 + d.z;
        bool ok = px.ok && d.w && (unsigned)iy < (unsigned)p.h && (unsigned)ix < (unsigned)p.wd;
        breg[i] = ok ? px.xs[d.x + px.off] : zero;
    }
}

/* The row gather of the stride-1, 3-wide kernels (conv_igemm.cu's conv_igemm3_kernel and
 * conv_wgmma.cu): one thread's (ci, r) x 8 pixels, centre x[.., ow .. ow+7] as one 16-byte
 * load, left x[ow-1] and right x[ow+8] as two 2-byte loads, zeros outside the image. */
struct ig3_rows {
    uint4 c;
    uint32_t l, r;
};

template <typename T, typename P>
__device__ __forceinline__ ig3_rows ig3_gather(const T *xs, int ci, int iy, bool pix_ok, bool has_l, bool has_r,
                                               const P &p) {
    ig3_rows v;
    v.c = make_uint4(0u, 0u, 0u, 0u);
    v.l = 0u;
    v.r = 0u;
    if (pix_ok && ci < p.cin && (unsigned)iy < (unsigned)p.h) {
        const unsigned short *src = (const unsigned short *)(xs + ((int64_t)ci * p.h + iy) * p.wd);
        v.c = *(const uint4 *)src;
        if (has_l) v.l = src[-1];
        if (has_r) v.r = src[8];
    }
    return v;
}

/* The row-gather role of one of 256 threads in a 128-pixel tile: (ci, r) row j = tid / 16 of
 * each K tile (16 rows x 3 taps), pixels 8q .. 8q+7 with q = tid % 16. npix is a multiple of 8
 * (W is), so the 8 pixels exist together or not at all. */
template <typename T> struct ig3_role {
    const T *xs; /* x at this thread's image and column ow */
    int ih0;     /* oh - pad_t */
    int ci, r;   /* (ci, r) of the current K tile: divmod(16 kt + j, kh) */
    int dci, dr; /* the step of (ci, r) from one K tile to the next: divmod(16, kh) */
    bool pix_ok, has_l, has_r;
};

template <typename T, typename P>
__device__ __forceinline__ ig3_role<T> ig3_role_at(const T *x, int64_t n0, int tid, const P &p) {
    ig3_role<T> g;
    const int j = tid >> 4, q = tid & 15;
    const int64_t pix = n0 + q * 8;
    g.pix_ok = pix < p.npix;
    g.ih0 = 0;
    int ow = 0;
    g.xs = x;
    if (g.pix_ok) {
        int64_t nb = pix / p.P;
        int pp = (int)(pix - nb * p.P);
        int oh = pp / p.wo;
        ow = pp - oh * p.wo;
        g.ih0 = oh - p.pad_t;
        g.xs = x + nb * (int64_t)p.cin * p.h * p.wd + ow;
    }
    g.has_l = ow > 0;
    g.has_r = ow + 8 < p.wd;
    g.ci = j / p.kh;
    g.r = j - g.ci * p.kh;
    g.dci = 16 / p.kh;
    g.dr = 16 - g.dci * p.kh;
    return g;
}

/* Move the role on to the next K tile's (ci, r) row. */
template <typename T, typename P> __device__ __forceinline__ void ig3_role_next(ig3_role<T> &g, const P &p) {
    g.r += g.dr;
    g.ci += g.dci;
    if (g.r >= p.kh) {
        g.r -= p.kh;
        g.ci++;
    }
}

/* The role's current row (ig3_gather). */
template <typename T, typename P> __device__ __forceinline__ ig3_rows ig3_role_gather(const ig3_role<T> &g, const P &p) {
    return ig3_gather<T>(g.xs, g.ci, g.ih0 + g.r, g.pix_ok, g.has_l, g.has_r, p);
}

__device__ __forceinline__ void igc_zero(float (&acc)[4][4][4]) {
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
}

/* Output stores of the epilogue, by element type: 16-bit types rounded to nearest, two
 * neighbouring pixels as one 32-bit word; f32 as it is, two pixels as one float2. */
template <typename T> __device__ __forceinline__ void igc_st1(T *y, float v) { *y = from_f32<T>(v); }
template <typename T> __device__ __forceinline__ void igc_st2(T *y, float v0, float v1) {
    *(uint32_t *)y = pack2<T>(v0, v1);
}
__device__ __forceinline__ void igc_st1(float *y, float v) { *y = v; }
__device__ __forceinline__ void igc_st2(float *y, float v0, float v1) { *(float2 *)y = make_float2(v0, v1); }

/* Epilogue, part 1: where the 8 output pixels of this lane's C columns (4 n8 tiles x 2) start in
 * y [N, Cout, P] (row 0), and whether they exist (pixel < npix). */
template <typename P>
__device__ __forceinline__ void igc_out_pixels(int64_t (&obase)[4][2], bool (&nok)[4][2], const P &p, int64_t n0,
                                               int wn, int lane) {
    const int t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int64_t n = n0 + wn * 32 + nt * 8 + 2 * t + e;
            nok[nt][e] = n < p.npix;
            int64_t nb = nok[nt][e] ? n / p.P : 0;
            obase[nt][e] = nb * (int64_t)p.cout * p.P + (n - nb * p.P);
        }
}

/* Epilogue, part 2: + bias (f32), convert, store along pixel rows (warp (wm, wn) holds rows
 * wm*64.., pixels wn*32..). p.y_pair says P is even and y aligned for a two-pixel store. */
template <typename T, typename P>
__device__ __forceinline__ void igc_store_acc(float (&acc)[4][4][4], const int64_t (&obase)[4][2],
                                              const bool (&nok)[4][2], const P &p, int m0, int wm, int lane) {
    const int g = lane >> 2;
    T *y = (T *)p.y;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            int m = m0 + wm * 64 + mt * 16 + g + hf * 8;
            if (m >= p.cout) continue;
            float bv = p.has_bias ? ld_dyn(p.bias, p.bias_dtype, m) : 0.0f;
            int64_t mo = (int64_t)m * p.P;
#pragma unroll
            for (int nt = 0; nt < 4; nt++) {
                float v0 = acc[mt][nt][hf * 2] + bv, v1 = acc[mt][nt][hf * 2 + 1] + bv;
                if (p.y_pair && nok[nt][1]) { /* even pixel, same image (P even): one store */
                    igc_st2(y + obase[nt][0] + mo, v0, v1);
                } else {
                    if (nok[nt][0]) igc_st1(&y[obase[nt][0] + mo], v0);
                    if (nok[nt][1]) igc_st1(&y[obase[nt][1] + mo], v1);
                }
            }
        }
}

/* The whole epilogue. */
template <typename T, typename P>
__device__ __forceinline__ void igc_epilogue(float (&acc)[4][4][4], const P &p, int m0, int64_t n0, int wm, int wn,
                                             int lane) {
    int64_t obase[4][2];
    bool nok[4][2];
    igc_out_pixels(obase, nok, p, n0, wn, lane);
    igc_store_acc<T>(acc, obase, nok, p, m0, wm, lane);
}

/* ---- host ------------------------------------------------------------------------------------ */

/* Zero *p and set the fields both parameter structs share from x [N, Cin, H, W],
 * w [Cout, Cin, kh, kw], y [N, Cout, Ho, Wo] and the bias; the caller sets the typed x, w, y
 * pointers and a_vec / y_pair (their vector widths differ). */
template <typename P>
static void igc_params_init(P *p, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                            const loco_tensor *bias, const loco_conv2d_params *cp) {
    memset(p, 0, sizeof *p);
    p->bias = bias ? bias->data : NULL;
    p->has_bias = bias != NULL;
    p->bias_dtype = bias ? (int)bias->dtype : 0;
    p->cin = (int)x->shape[1];
    p->h = (int)x->shape[2];
    p->wd = (int)x->shape[3];
    p->cout = (int)w->shape[0];
    p->kh = (int)w->shape[2];
    p->kw = (int)w->shape[3];
    p->stride = cp->stride;
    p->pad_t = cp->pad[0];
    p->pad_l = cp->pad[2];
    p->ho = (int)y->shape[2];
    p->wo = (int)y->shape[3];
    p->K = p->cin * p->kh * p->kw;
    p->P = p->ho * p->wo;
    p->npix = x->shape[0] * (int64_t)p->P;
}

/* ig_params for a 16-bit implicit-GEMM launch (conv_igemm.cu, conv_wgmma.cu): the shared
 * fields, the data pointers (wdata: w in y's dtype) and the vector widths the data allow. */
static inline void ig_params_make(ig_params *p, const loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                  const void *wdata, const loco_tensor *bias, const loco_conv2d_params *cp) {
    igc_params_init(p, y, x, w, bias, cp);
    p->x = x->data;
    p->w = wdata;
    p->y = y->data;
    p->a_vec = p->K % 8 == 0 && cuda_aligned(wdata, 16);
    p->y_pair = p->P % 2 == 0 && cuda_aligned(y->data, 4);
}

#endif
