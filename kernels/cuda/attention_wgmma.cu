/* attention_wgmma.cu: flash attention on Hopper's warpgroup MMA (wgmma, sm_90a). EXPERIMENTAL,
 * used only under LOCO_CUDA_FLASH=wgmma (64-key tiles), =wgmma128 (128-key tiles: half the
 * softmax reductions and O rescales per key, and m64n128 score products) or =wgmma3 (64-key
 * tiles in blocks of three warpgroups at head dims 64 and 80), for head dims 40, 64 and 80 in
 * f16/bf16 (SD 1.x's 40/80; SD 2.x, SD-XL and CLIP's 64). Correct on the H200 since
 * run 5 and on the emulator (tests/emu/emu_wgmma.cc) in every `make test`; its serial form of
 * runs 5-6 ran at 0.72-0.95 of the mma.sync kernel. The form below (sessions 7-8) is not yet
 * timed: make it the default only after op_bench's "@fa_wgmma" rows show it faster. Attention
 * over at most 80 keys goes to attention_short.cu unless LOCO_CUDA_FLASH_SHORT=0.
 * LOCO_CUDA_FLASH=wgmma_ws / wgmma_ws3 run the same products warp-specialised (a producer warp
 * loads, the warpgroups take turns at the tensor cores): attention_wgmma_ws.cu.
 *
 * Why: the mma.sync kernel (attention.cu) runs SD 1.5's 4096-token self-attention at half of
 * PyTorch SDPA's speed, bound by the instructions it issues (bench/gpu/NOTES.md, session 3).
 * One m64n64k16 wgmma does the work of 32 mma.sync m16n8k16 and runs asynchronously, so a
 * tile's products cost a handful of instructions instead of about a hundred per warp.
 *
 * Same algorithm and arguments as attention.cu (flash_params.h): 128 query rows per block, two
 * warpgroups of 64 (192 rows, three, under wgmma3); K/V tiles of BC keys through shared memory
 * with cp.async in four stages (the previous tile, whose V its P V reads; this one, whose K S reads; the next, landed or landing;
 * the one after, loading); online softmax in fp32 in base 2; per-sample K/V rows (the kv
 * table); causal masking. The products overlap the softmax as in FlashAttention-3 within a
 * warpgroup: S_j and tile j - 1's P V are issued together, and tile j's softmax runs while that
 * P V is still on the tensor cores (the ncu reading of the serial form had the tensor pipe 28 %
 * busy). ptxas keeps it asynchronous (no "serialized" message, C7512-C7519, under -Xptxas -v:
 * keep it so; bench/gpu/NOTES.md, session 7, lists what makes it serialise). Registers: 132-144
 * with 64-key tiles, so one block per SM at every head dim (two blocks of 256 threads need at
 * most 128 each; ptxas -v, sm_90a, CUDA 13): 8 warps, or 12 in the
 * three-warpgroup blocks of wgmma3; 184-252 with 128-key tiles (one block per SM).
 *   S = Q K^T   m64nBCk16, A = Q and B = K from shared memory, both K-major (each row's head
 *               dims contiguous, as stored): conv_wgmma.cu's layout; self-test "kmajor_k48".
 *   O += P V    m64n(D+8)k16, A = P from registers (S's accumulators per warp are in mma.sync's
 *               layout, so P packs into its A fragments as in attention.cu; self-test "regs_a"),
 *               B = V as stored ([key][d], "MN-major": the transpose bit), no swizzle, the
 *               descriptor's LBO the step between groups of 8 keys (along K) and SBO between
 *               groups of 8 head dims (along N), as CUTLASS builds MN-major no-swizzle
 *               descriptors; self-test "mn_k128_lbo_is_k". If the self-test finds the other
 *               reading ("mn_k128_lbo_is_n" ok), swap the two offsets in faw_v_desc.
 *
 * Shared memory (no swizzle; core matrices of 8 rows x 16 bytes; chunk c = elements 8c..8c+7):
 *   Q [128][DK]  chunk (row, c) at (row / 8) SBO_QK + c 128 + (row % 8) 16
 *   K [BC][DK]   chunk (key, c) at (key / 8) SBO_QK + c 128 + (key % 8) 16
 *   V [BC][D+8]  chunk (key, c) at (key / 8) 128 + c BC 16 + (key % 8) 16; chunk D / 8 is all ones
 *                (written once), so O's last 8 columns are P's row sums
 * DK is D rounded up to 16 (Q K^T's k-steps); Q's and K's chunks from D on are zeros (cp.async
 * with no source bytes), as are the rows of K and V past the keys. A k16 step of Q K^T starts
 * two chunks (256 bytes) further; one of P V two key groups (256 bytes). */
#include <string.h>

#include "attention_wgmma_common.cuh"

/* 1 only in the sm_90a image (the Makefile builds this file for sm_90a alone). */
__device__ const int faw_image_ok = WG_DEVICE_OK;

/* K/V tiles in shared memory: the previous one (its P V may still run), this one, the next (its
 * S runs during this tile's softmax) and the one after (loading) */
#define FAW_STAGES 4

/* Where this thread's cp.async chunks of a K/V tile go and come from, worked out once per block:
 * in the loop a chunk then costs a compare and the copy (the per-tile index math was a fifth of
 * the loop's instructions in the SASS). row: the chunk's key (copied while < the tile's keys,
 * zeros after), FAW_ZERO_ROW for K's padding chunks past D (always zeros), -1 for a thread with
 * no chunk in that round. Offsets inside a tile fit in 32 bits: BC rows of a packed q|k|v row
 * at most, 128 x 3 x 65535 heads x 80 < 2^31 (attention.cu checks H <= 65535; head dims here
 * are at most 80). */
#define FAW_ZERO_ROW 0x7fffffff
template <int D, int BC, int NWG> struct faw_tile_map {
    typedef faw_geom<D, BC, NWG, FAW_STAGES> G;
    static constexpr int THREADS = FAW_THREADS(NWG);
    static constexpr int CK = G::DK / 8, CV = D / 8;
    static constexpr int NK = (BC * CK + THREADS - 1) / THREADS;
    static constexpr int NV = (BC * CV + THREADS - 1) / THREADS;
    int k_dst[NK], k_src[NK], k_row[NK];
    int v_dst[NV], v_src[NV], v_row[NV];
};

template <int D, int BC, int NWG>
__device__ __forceinline__ void faw_map_init(faw_tile_map<D, BC, NWG> &m, int rs, int tid) {
    typedef faw_tile_map<D, BC, NWG> M;
    typedef faw_geom<D, BC, NWG, FAW_STAGES> G;
#pragma unroll
    for (int it = 0; it < M::NK; it++) {
        const int i = tid + it * M::THREADS, r = i / M::CK, c = i - r * M::CK;
        m.k_dst[it] = (r >> 3) * G::SBO_QK + c * 128 + (r & 7) * 16;
        m.k_src[it] = r * rs + c * 8;
        m.k_row[it] = i >= BC * M::CK ? -1 : c < M::CV ? r : FAW_ZERO_ROW;
    }
#pragma unroll
    for (int it = 0; it < M::NV; it++) {
        const int i = tid + it * M::THREADS, r = i / M::CV, c = i - r * M::CV;
        m.v_dst[it] = (r >> 3) * FAW_V_KSTEP + c * G::V_NSTEP + (r & 7) * 16;
        m.v_src[it] = r * rs + c * 8;
        m.v_row[it] = i >= BC * M::CV ? -1 : r;
    }
}

/* One K/V tile into a stage: kg/vg point at its first key's row; chunks of keys from nkeys on
 * become zeros. */
template <typename T, int D, int BC, int NWG>
__device__ __forceinline__ void faw_load_kv(unsigned char *sk, unsigned char *sv, const T *kg, const T *vg, int nkeys,
                                            const faw_tile_map<D, BC, NWG> &m) {
    typedef faw_tile_map<D, BC, NWG> M;
#pragma unroll
    for (int it = 0; it < M::NK; it++) {
        if (m.k_row[it] < 0) continue;
        const bool ok = m.k_row[it] < nkeys;
        cp_async16(sk + m.k_dst[it], kg + (ok ? m.k_src[it] : 0), ok ? 16 : 0);
    }
#pragma unroll
    for (int it = 0; it < M::NV; it++) {
        if (m.v_row[it] < 0) continue;
        const bool ok = m.v_row[it] < nkeys;
        cp_async16(sv + m.v_dst[it], vg + (ok ? m.v_src[it] : 0), ok ? 16 : 0);
    }
}

/* Warp w (of 4 NWG) owns query rows q0 + 16 w + g and + 8 (g = lane / 4): the rows of its
 * warpgroup's accumulators that wgmma gives it. */
template <typename T, int D, int BC, int NWG>
__global__ void __launch_bounds__(FAW_THREADS(NWG)) faw_kernel(const fa_params p) {
#if !WG_DEVICE_OK
    __trap();
#else
    typedef faw_geom<D, BC, NWG, FAW_STAGES> G;
    constexpr int THREADS = FAW_THREADS(NWG), BR = FAW_BR(NWG);
    constexpr int NKS = G::DK / 16, NDT = D / 8, NST = BC / 8;
    LOCO_DYN_SMEM(unsigned char, faw_smem, 128);
    unsigned char *const sq = faw_smem;
    unsigned char *const sk = sq + G::Q_BYTES;              /* [FAW_STAGES][G::K_BYTES] */
    unsigned char *const sv = sk + FAW_STAGES * G::K_BYTES; /* [FAW_STAGES][G::V_BYTES] */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int q0 = blockIdx.x * BR, h = blockIdx.y;
    const int64_t b = (int64_t)p.b0 + blockIdx.z, kb = p.kv[blockIdx.z];
    const T *qg = (const T *)p.q + b * p.q_bs + (int64_t)h * D;
    const T *kg = (const T *)p.k + kb * p.kv_bs + (int64_t)h * D;
    const T *vg = (const T *)p.v + kb * p.kv_bs + (int64_t)h * D;

    faw_load_q<T, D, NWG, FAW_STAGES>(sq, qg, p, q0, tid, THREADS);
    int kend = p.lk;
    if (p.causal) {
        const int last_q = (q0 + BR < p.lq ? q0 + BR : p.lq) - 1;
        if (last_q + 1 < kend) kend = last_q + 1;
    }
    const int ntiles = (kend + BC - 1) / BC;
    faw_tile_map<D, BC, NWG> map;
    faw_map_init<D, BC, NWG>(map, (int)p.rs, tid);
    if (ntiles > 0) faw_load_kv<T, D, BC, NWG>(sk, sv, kg, vg, p.lk, map);
    cp_async_commit(); /* group 0: Q and K/V tile 0 */
    if (ntiles > 1)
        faw_load_kv<T, D, BC, NWG>(sk + G::K_BYTES, sv + G::V_BYTES, kg + BC * p.rs, vg + BC * p.rs, p.lk - BC, map);
    cp_async_commit(); /* group 1: tile 1 (empty when there is none); tile t + 2 is group t + 2 */
    faw_fill_ones<T, D, BC, NWG, FAW_STAGES>(sv, tid, THREADS); /* published by the first barrier */

    /* accumulators as [8-wide tile][4]: the wgmma calls take them flat (faw_flat); o's tile NDT
     * is the row sums */
    float o[NDT + 1][4];
#pragma unroll
    for (int d = 0; d <= NDT; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float mr[2] = {-INFINITY, -INFINITY};
    const int tq = lane & 3;
    const int row0 = q0 + warp * 16 + (lane >> 2);
    /* descriptors: this warpgroup's 64 rows of Q, and stage 0 of K and V (stage i is i fixed
     * distances further) */
    const uint64_t dq = wg_desc(sq + wg * (64 / 8) * G::SBO_QK, 128, G::SBO_QK);
    const uint64_t dk0 = wg_desc(sk, 128, G::SBO_QK), dv0 = faw_v_desc<BC>(sv);

    /* FlashAttention-3's overlap within a warpgroup, in its order: per key tile j, rescale O for
     * tile j - 1, issue S_j = Q K_j^T, issue O += P_{j-1} V_{j-1}, wait for S_j only, and run tile
     * j's softmax (its maxima and exponentials) while P V runs on the tensor cores; then wait for
     * P V. What ptxas needs to keep the products asynchronous (it says "serialized", C7513-C7519,
     * otherwise): every group retired in the step that committed it; no register a product in
     * flight reads or writes touched by other instructions before its wait. So P alternates
     * between two register sets, p0 for even tiles and p1 for odd ones (the loop takes two tiles
     * per turn): the softmax of tile j writes one while P V of tile j - 1 reads the other (with
     * one set, moved into P V's registers before S_j's fence, ptxas still serialised: C7513).
     * O's factors (c, rescale: tile j - 1's) are applied before S_j is issued, and tile 0 is
     * peeled off so that every step in the loop has the same groups in flight.
     * tests/test_wgmma_ptxas.py fails the build's tests if ptxas serialises. */
    float s[NST][4];
    float(&sf)[BC / 2] = faw_flat(s);
    float(&of)[D / 2 + 4] = faw_flat(o);
    uint32_t p0[NST / 2][4], p1[NST / 2][4];
    float c[2] = {1.0f, 1.0f};
    bool rescale = false;
    /* The masks and softmax of tile j's scores in s: P into pout, O's factors into c / rescale. */
    auto softmax = [&](const int j, uint32_t(&pout)[NST / 2][4]) {
        faw_softmax<T, NDT, BC>(p, j, q0, row0, tq, s, o, mr, c, rescale, pout);
    };
    /* tile j's K/V landed, O rescaled for tile j - 1, then S_j issued and committed; the load of
     * tile j + 2 goes out between them. One barrier per tile does both jobs: it publishes tile j
     * to every thread, and it says that every warpgroup is done with tile j - 2 (its P V was
     * waited for in step j - 1), whose stage tile j + 2 then takes. (Two barriers, one before
     * the load and one after the wait, held the warpgroups in step twice per tile.) */
    auto scores = [&](const int j) {
        cp_async_wait<1>(); /* tile j (and, at j = 0, Q); tile j + 1 may still be landing */
        wg_fence_proxy();   /* cp.async's writes, seen by wgmma's async reads (after the barrier) */
        __syncthreads();
        if (j + 2 < ntiles) {
            const int64_t next = (int64_t)(j + 2) * BC * p.rs;
            const int sn2 = (j + 2) % FAW_STAGES;
            faw_load_kv<T, D, BC, NWG>(sk + sn2 * G::K_BYTES, sv + sn2 * G::V_BYTES, kg + next, vg + next,
                                  p.lk - (j + 2) * BC, map);
        }
        cp_async_commit(); /* group j + 2: tile j + 2 (empty when there is none) */
        if (j > 0 && rescale) fa_rescale<NDT + 1>(o, c);
        faw_scores<T, NKS, BC>(sf, dq, faw_desc_at(dk0, j % FAW_STAGES * G::K_BYTES));
        wg_commit();
    };
    /* O += P V of tile j (its P in pin), issued and committed, not waited for */
    auto pv = [&](const int j, const uint32_t(&pin)[NST / 2][4]) {
        faw_pv_issue<T, D, BC>(of, pin, faw_desc_at(dv0, j % FAW_STAGES * G::V_BYTES));
    };
    /* tile j >= 1: its S and tile j - 1's P V (from pin) in flight together, its P into pout */
    auto step = [&](const int j, const uint32_t(&pin)[NST / 2][4], uint32_t(&pout)[NST / 2][4]) {
        scores(j);
        pv(j - 1, pin); /* after S_j on the tensor cores */
        wg_wait<1>();   /* S_j; P V of tile j - 1 runs on through this softmax */
        wg_fence_acc(sf);
        softmax(j, pout);
        wg_wait<0>(); /* P V of tile j - 1 */
        wg_fence_acc(of);
    };
    if (ntiles > 0) {
        scores(0);
        wg_wait<0>();
        wg_fence_acc(sf);
        softmax(0, p0);
    }
    faw_tile_loop(ntiles, step, p0, p1);
    faw_last_pv<NDT>(ntiles, rescale, o, of, c, pv, p0, p1);
    cp_async_wait<0>();

    faw_store_o<T, D>(p, b, h, row0, tq, o);
#endif
}

/* ---- host ------------------------------------------------------------------------------------ */

/* (dtype, head dim, keys per K/V tile, warpgroups per block) */
#define FAW_FOR_EACH(X)                                                                                       \
    X(__half, 40, 64, 2) X(__half, 64, 64, 2) X(__half, 80, 64, 2) X(__nv_bfloat16, 40, 64, 2)                 \
    X(__nv_bfloat16, 64, 64, 2) X(__nv_bfloat16, 80, 64, 2) X(__half, 40, 128, 2) X(__half, 64, 128, 2)        \
    X(__half, 80, 128, 2) X(__nv_bfloat16, 40, 128, 2) X(__nv_bfloat16, 64, 128, 2) X(__nv_bfloat16, 80, 128, 2) \
    X(__half, 64, 64, 3) X(__half, 80, 64, 3) X(__nv_bfloat16, 64, 64, 3) X(__nv_bfloat16, 80, 64, 3)

/* Warpgroups per block at head dim D: three when asked for (LOCO_CUDA_FLASH=wgmma3) and D has
 * that form, else two. */
static int faw_warpgroups(const cuda_impl *c, int D) { return c->faw_warpgroups == 3 && D != 40 ? 3 : 2; }

int cuda_flash_wgmma_applies(const cuda_impl *c, loco_dtype dt, int64_t D) {
    return c->flash_wgmma && c->faw_ok && (dt == LOCO_F16 || dt == LOCO_BF16) && (D == 40 || D == 64 || D == 80);
}

/* Soft, as cuda_conv_wgmma_setup: anything that goes wrong only keeps the kernel off. */
loco_status cuda_flash_wgmma_setup(cuda_impl *c, loco_err *err) {
    (void)err;
    c->faw_ok = 0;
    if (!c->flash_wgmma || c->cc_major != 9 || c->cc_minor != 0) return LOCO_OK;
    if (c->faw_ws) {
        c->faw_ok = cuda_flash_wgmma_ws_setup(c);
        return LOCO_OK;
    }
    int image_ok = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&image_ok, faw_image_ok, sizeof image_ok);
#define FAW_SET(T, D, BC, NWG)                                                                              \
    if (e == cudaSuccess && image_ok)                                                                       \
        e = cudaFuncSetAttribute(faw_kernel<T, D, BC, NWG>, cudaFuncAttributeMaxDynamicSharedMemorySize,     \
                                 faw_geom<D, BC, NWG, FAW_STAGES>::SMEM);
    FAW_FOR_EACH(FAW_SET)
#undef FAW_SET
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the next call must not report it */
        return LOCO_OK;
    }
    c->faw_ok = image_ok;
    return LOCO_OK;
}

/* Launches the samples [fp->b0, fp->b0 + grid.z) of heads grid.y; grid.x is set here to cover
 * Lq in blocks of 64 rows per warpgroup. The caller checked cuda_flash_wgmma_applies and
 * attention.cu's flash conditions. c->flash_wgmma is the keys per K/V tile (64 or 128). */
loco_status cuda_flash_wgmma(cuda_impl *c, loco_dtype dt, int D, dim3 grid, const fa_params *fp, loco_err *err) {
    const int nwg = faw_warpgroups(c, D);
    if (c->faw_ws) return cuda_flash_wgmma_ws(c, dt, D, nwg, grid, fp, err);
    grid.x = (unsigned)((fp->lq + FAW_BR(nwg) - 1) / FAW_BR(nwg));
#define FAW_LAUNCH(T, DD, BC, NWG)                                                                     \
    if (dt == cuda_dtype_of<T>::value && D == DD && c->flash_wgmma == BC && nwg == NWG) {                   \
        /* (a template's commas would split LOCO_LAUNCH's arguments) */                               \
        const int smem = faw_geom<DD, BC, NWG, FAW_STAGES>::SMEM, threads = FAW_THREADS(NWG);                     \
        LOCO_LAUNCH(grid, threads, smem, c->stream, faw_kernel<T, DD, BC, NWG>)(*fp);                  \
        return cuda_check_launch("faw_kernel", err);                                                  \
    }
    FAW_FOR_EACH(FAW_LAUNCH)
#undef FAW_LAUNCH
    return loco_err_set(err, LOCO_EUNSUPPORTED,
                        "cuda flash wgmma: no kernel for head dim %d, %d keys per tile, %d warpgroups", D,
                        c->flash_wgmma, nwg);
}
