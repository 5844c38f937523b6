/* emu_ptx.cc: the PTX instructions loco's kernels use through inline assembly, as the PTX ISA
 * defines them: cp.async with its commit and wait groups, ldmatrix (m8n8 .x2/.x4, .trans),
 * mma.sync m16n8k16 (f16, bf16) and m16n8k8 (tf32) with their fragment layouts, cvt.rna.tf32. */
#include "emu_internal.h"

#include <math.h>
#include <string.h>

namespace emu {

/* ---- cp.async ----------------------------------------------------------------------------------- */

void async_copy16(void *smem, const void *gmem, int src_bytes) {
    if ((uintptr_t)smem % 16 != 0 || (src_bytes && (uintptr_t)gmem % 16 != 0))
        trap("cp.async of 16 bytes at an address that is not 16-byte aligned");
    if (src_bytes != 0 && src_bytes != 16) trap("cp.async source size other than 0 or 16");
    /* until the wait that retires it, the destination holds NaN bytes: what a GPU's may hold
     * before the copy lands, and a block-mate still reading the old contents sees it */
    memset(smem, 0xff, 16);
    thread_copies().q.push_back({smem, gmem, src_bytes});
}

void async_commit(void) {
    async_state &s = thread_copies();
    s.group_end.push_back(s.q.size());
}

void async_retire(async_state &s, int keep, int all) {
    size_t upto = s.done;
    const size_t groups = s.group_end.size();
    if (groups > (size_t)keep) upto = s.group_end[groups - 1 - (size_t)keep];
    if (all) upto = s.q.size();
    async_retire_upto(s, upto);
}

void async_retire_upto(async_state &s, size_t upto) {
    for (size_t i = s.done; i < upto; i++) {
        const async_copy &c = s.q[i];
        if (c.src_bytes)
            memcpy(c.dst, c.src, 16);
        else
            memset(c.dst, 0, 16);
    }
    if (upto > s.done) s.done = upto;
    while (s.arrived < s.arrivals.size() && s.arrivals[s.arrived].second <= s.done)
        mbar_arrive_async(s.arrivals[s.arrived++].first);
}

void async_wait(int keep_in_flight) { async_retire(thread_copies(), keep_in_flight, 0); }

/* cp.async.mbarrier.arrive (without .noinc): the phase in progress waits for one arrival more
 * now, which the thread's copies so far make when they have all landed (net: none). */
void async_mbar_arrive(uint64_t *bar) {
    async_state &s = thread_copies();
    mbar_pending_add(bar, 1);
    s.arrivals.push_back({bar, s.q.size()});
    if (schedule_eager()) async_retire_upto(s, s.q.size());
}

/* ---- ldmatrix ------------------------------------------------------------------------------------- */

struct ldm_in {
    const void *row;
    int n_tiles, trans;
};

static uint16_t b16_at(const void *row, int col) {
    uint16_t v;
    memcpy(&v, (const char *)row + 2 * col, 2);
    return v;
}

static void ldmatrix_op(const unsigned char (*in)[64], unsigned char (*out)[64], int lanes) {
    if (lanes != 32) trap("ldmatrix in a partial warp");
    const ldm_in *a = (const ldm_in *)in[0];
    for (int l = 0; l < 32; l++) {
        const ldm_in *m = (const ldm_in *)in[l];
        if (m->n_tiles != a->n_tiles || m->trans != a->trans) trap("lanes disagree on an ldmatrix's shape");
        if (l < 8 * a->n_tiles && (uintptr_t)m->row % 16 != 0) trap("ldmatrix row address not 16-byte aligned");
    }
    /* tile i's row j comes from lane 8 i + j; lane t receives, of each tile, row t / 4 columns
     * 2 (t % 4) and + 1, or transposed, rows 2 (t % 4) and + 1 of column t / 4 */
    for (int t = 0; t < 32; t++) {
        uint32_t r[4];
        for (int i = 0; i < a->n_tiles; i++) {
            uint16_t lo, hi;
            if (!a->trans) {
                const void *row = ((const ldm_in *)in[8 * i + t / 4])->row;
                lo = b16_at(row, 2 * (t % 4));
                hi = b16_at(row, 2 * (t % 4) + 1);
            } else {
                lo = b16_at(((const ldm_in *)in[8 * i + 2 * (t % 4)])->row, t / 4);
                hi = b16_at(((const ldm_in *)in[8 * i + 2 * (t % 4) + 1])->row, t / 4);
            }
            r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        memcpy(out[t], r, sizeof(uint32_t) * (size_t)a->n_tiles);
    }
}

void ldmatrix(uint32_t *r, int n_tiles, int trans, const void *row_addr) {
    ldm_in m = {row_addr, n_tiles, trans};
    warp_collective(ldmatrix_op, &m, sizeof m, r, sizeof(uint32_t) * (size_t)n_tiles);
}

/* ---- mma.sync ----------------------------------------------------------------------------------- */

struct mma_in {
    uint32_t a[4], b[2];
    float c[4];
    int kind; /* B16_F16, B16_BF16, or 2: tf32 m16n8k8 */
};

static float b16_value(uint16_t v, int kind) { return b16_to_f32(v, kind == B16_BF16); }

static float tf32_value(uint32_t u) {
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return NAN; /* any NaN stays one */
    u &= 0xFFFFE000u; /* the instruction reads 10 mantissa bits */
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void mma_op(const unsigned char (*in)[64], unsigned char (*out)[64], int lanes) {
    if (lanes != 32) trap("mma.sync in a partial warp");
    const int kind = ((const mma_in *)in[0])->kind, K = kind == 2 ? 8 : 16;
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const mma_in *m = (const mma_in *)in[l];
        if (m->kind != kind) trap("lanes disagree on an mma's type");
        const int g = l / 4, t = l % 4;
        if (kind == 2) { /* A 16x8: a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4); B 8x8: b0 (t, g) b1 (t+4, g) */
            A[g][t] = tf32_value(m->a[0]);
            A[g + 8][t] = tf32_value(m->a[1]);
            A[g][t + 4] = tf32_value(m->a[2]);
            A[g + 8][t + 4] = tf32_value(m->a[3]);
            B[t][g] = tf32_value(m->b[0]);
            B[t + 4][g] = tf32_value(m->b[1]);
        } else { /* A 16x16: a0 (g, 2t..) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..); B 16x8: b0 (2t.., g) b1 (2t+8.., g) */
            const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
            for (int i = 0; i < 4; i++) {
                A[rows[i]][cols[i]] = b16_value((uint16_t)(m->a[i] & 0xffff), kind);
                A[rows[i]][cols[i] + 1] = b16_value((uint16_t)(m->a[i] >> 16), kind);
            }
            for (int i = 0; i < 2; i++) {
                B[2 * t + 8 * i][g] = b16_value((uint16_t)(m->b[i] & 0xffff), kind);
                B[2 * t + 8 * i + 1][g] = b16_value((uint16_t)(m->b[i] >> 16), kind);
            }
        }
        /* C 16x8: c0 (g, 2t) c1 (g, 2t+1) c2 (g+8, 2t) c3 (g+8, 2t+1) */
        C[g][2 * t] = m->c[0];
        C[g][2 * t + 1] = m->c[1];
        C[g + 8][2 * t] = m->c[2];
        C[g + 8][2 * t + 1] = m->c[3];
    }
    float D[16][8];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) {
            double s = C[i][j];
            for (int k = 0; k < K; k++) s += (double)A[i][k] * (double)B[k][j];
            D[i][j] = (float)s;
        }
    for (int l = 0; l < 32; l++) {
        const int g = l / 4, t = l % 4;
        const float d[4] = {D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1]};
        memcpy(out[l], d, sizeof d);
    }
}

void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2], b16_kind kind) {
    mma_in m;
    memcpy(m.a, a, sizeof m.a);
    memcpy(m.b, b, sizeof m.b);
    memcpy(m.c, c, sizeof m.c);
    m.kind = kind;
    warp_collective(mma_op, &m, sizeof m, c, 4 * sizeof(float));
}

void mma_tf32_16808(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    mma_in m;
    memcpy(m.a, a, sizeof m.a);
    memcpy(m.b, b, sizeof m.b);
    memcpy(m.c, c, sizeof m.c);
    m.kind = 2;
    warp_collective(mma_op, &m, sizeof m, c, 4 * sizeof(float));
}

/* cvt.rna.tf32.f32: to 10 mantissa bits, nearest, ties away from zero. */
uint32_t tf32_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) == 0x7F800000u) return u; /* inf, nan */
    return (u + 0x1000u) & 0xFFFFE000u;
}

} /* namespace emu */
