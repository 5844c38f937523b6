/* emu_wgmma.cc: Hopper's warpgroup MMA (wgmma.mma_async, PTX ISA 8.0) for the CPU kernel
 * emulator: m64nNk16 with f16/bf16 operands and f32 accumulators, A from shared memory (a
 * descriptor, K-major) or from registers (mma.sync's A fragment in each warp), B from shared
 * memory K-major or MN-major (the transpose bit), no swizzle or the 128-byte swizzle TMA writes
 * (emu_tma.cc); commit groups and wait_group.
 *
 * Layouts, as the PTX ISA's "matrix descriptor" section and the H200 self-test of
 * wgmma_probe.cu (bench/gpu/runs: kmajor_*, regs_a and mn_*_lbo_is_k ok) read them. Shared
 * memory holds 8 x 16-byte "core matrices"; in 16-bit elements
 *   K-major (A, and B without transpose), row r (m or n), column k:
 *       start + (r / 8) SBO + (k / 8) LBO + (r % 8) 16 + (k % 8) 2
 *   MN-major (B with the transpose bit), element (k, n):
 *       start + (k / 8) LBO + (n / 8) SBO + (k % 8) 16 + (n % 8) 2
 *   K-major, 128-byte swizzle (layout type 1 in bits 62-63; LBO unused): the address
 *       start + (r / 8) SBO + (r % 8) 128 + k 2
 *   MN-major, 128-byte swizzle: 64 elements of N in a 128-byte row, the next 64 LBO away:
 *       start + (n / 64) LBO + (k / 8) SBO + (k % 8) 128 + (n % 64) 2
 *   each with its bits 4-6 XOR-ed with its bits 7-9 (the shared-memory address, so the pattern
 *   repeats every 1024 bytes; a k16 slice further along a K-major row is start + 32 per slice,
 *   as CUTLASS and DeepGEMM advance it). Not yet checked by wgmma_probe.cu on a GPU.
 * The accumulators of warp w of the warpgroup (w = warp % 4) are rows 16 w + g and + 8 of the
 * 64, and per 8 columns j: d[4 j + e] is row g + 8 (e / 2), column 8 j + 2 t + (e % 2), with g =
 * lane / 4, t = lane % 4 (mma.sync's C fragment, tile by tile).
 *
 * Asynchrony: an instruction's operands are read when the wait that retires its group runs,
 * the latest moment a GPU may read them (A's registers excepted: they are taken at issue, and
 * the wait traps if the thread changed them in between, which the PTX ISA forbids), and
 * the accumulators are written then. A kernel that changes the shared memory a wgmma reads
 * before waiting for it, or reads the accumulators early, gets other numbers here, as it may on
 * a GPU. Products are exact and summed in double onto the accumulator, rounded once: the
 * hardware's own internal order and rounding are not modelled.
 *
 * Descriptors: the emulated shared memory is ordinary host memory at 64-bit addresses, wider
 * than the descriptor's 18-bit address field. wgmma_desc therefore numbers the pointers it is
 * given (per host thread, from each block's start) and puts the number in bits 52-61, which the
 * hardware leaves unused; the start field counts from that pointer, so the kernels' descriptor
 * arithmetic (adding a byte offset / 16) works unchanged. */
#include "emu_internal.h"

#include <string.h>

namespace emu {

#define WG_REGIONS 1024

static thread_local const unsigned char *g_regions[WG_REGIONS];
static thread_local int g_nregions;

void wgmma_reset_regions(void) { g_nregions = 0; }

uint64_t wgmma_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    int id = 0;
    while (id < g_nregions && g_regions[id] != smem) id++;
    if (id == g_nregions) {
        if (g_nregions == WG_REGIONS) trap("wgmma: more distinct descriptor bases in one block than the emulator holds");
        g_regions[g_nregions++] = (const unsigned char *)smem;
    }
    return ((uint64_t)((lbo & 0x3FFFFu) >> 4) << 16) | ((uint64_t)((sbo & 0x3FFFFu) >> 4) << 32) |
           ((uint64_t)id << 52);
}

struct wg_desc_fields {
    const unsigned char *start;
    uint32_t lbo, sbo;
    int swizzle128;
};

static wg_desc_fields decode(uint64_t d) {
    const int id = (int)((d >> 52) & 0x3FF);
    if (id >= g_nregions) trap("wgmma: a descriptor the emulator did not make (wg_desc)");
    if ((d >> 62) > 1) trap("wgmma: a 64- or 32-byte swizzle (the emulator has none and 128-byte)");
    if ((d >> 49) & 7u) trap("wgmma: a descriptor base offset (the emulator has 0 only)");
    return {g_regions[id] + ((d & 0x3FFFu) << 4), (uint32_t)(((d >> 16) & 0x3FFFu) << 4),
            (uint32_t)(((d >> 32) & 0x3FFFu) << 4), (int)(d >> 62)};
}

/* Element (row r, k) of a K-major operand. */
static const unsigned char *k_major_at(const wg_desc_fields &f, int r, int k) {
    if (!f.swizzle128) return f.start + (r / 8) * f.sbo + (k / 8) * f.lbo + (r % 8) * 16 + (k % 8) * 2;
    return (const unsigned char *)swizzle128((uintptr_t)(f.start + (r / 8) * f.sbo + (r % 8) * 128 + k * 2));
}

/* Element (k, column n) of an MN-major B. */
static const unsigned char *mn_major_at(const wg_desc_fields &f, int k, int n) {
    if (!f.swizzle128) return f.start + (k / 8) * f.lbo + (n / 8) * f.sbo + (k % 8) * 16 + (n % 8) * 2;
    return (const unsigned char *)swizzle128((uintptr_t)(f.start + (n / 64) * f.lbo + (k / 8) * f.sbo + (k % 8) * 128 +
                                                         (n % 64) * 2));
}

static float b16_at(const unsigned char *p, int is_bf16) {
    uint16_t v;
    memcpy(&v, p, 2);
    return b16_to_f32(v, is_bf16);
}

/* ---- the register-A operand: each lane's two rows, gathered from its quad at issue ------------ */

struct rs_in {
    uint32_t a[4];
};

static void rs_gather_op(const unsigned char (*in)[64], unsigned char (*out)[64], int lanes) {
    if (lanes != 32) trap("wgmma in a partial warp");
    for (int l = 0; l < 32; l++) {
        const int g = l / 4;
        uint16_t rows[2][16];
        for (int q = 0; q < 4; q++) { /* lane (g, q) holds k 2q, 2q+1 (a0 row g, a1 row g+8) and + 8 (a2, a3) */
            const rs_in *m = (const rs_in *)in[4 * g + q];
            for (int r = 0; r < 2; r++)
                for (int h = 0; h < 2; h++) {
                    const uint32_t v = m->a[r + 2 * h];
                    rows[r][2 * q + 8 * h] = (uint16_t)(v & 0xffff);
                    rows[r][2 * q + 8 * h + 1] = (uint16_t)(v >> 16);
                }
        }
        memcpy(out[l], rows, sizeof rows);
    }
}

/* ---- issue, commit, wait --------------------------------------------------------------------- */

static void issue(const wgmma_op &op) {
    const thread_coords &c = coords();
    if (c.bdim.y != 1 || c.bdim.z != 1 || c.bdim.x % 128 != 0) trap("wgmma in a block that is not whole warpgroups");
    if (op.n < 8 || op.n > 256 || op.n % 8 != 0) trap("wgmma: N must be a multiple of 8 up to 256");
    thread_wgmma().q.push_back(op);
}

void wgmma_ss(float *d, int n, uint64_t da, uint64_t db, int trans_b, b16_kind kind) {
    wgmma_op op;
    memset(&op, 0, sizeof op);
    op.d = d, op.n = n, op.trans_b = trans_b, op.is_bf16 = kind == B16_BF16, op.da = da, op.db = db;
    issue(op);
}

void wgmma_rs(float *d, int n, const uint32_t a[4], uint64_t db, int trans_b, b16_kind kind) {
    wgmma_op op;
    memset(&op, 0, sizeof op);
    op.d = d, op.n = n, op.trans_b = trans_b, op.is_bf16 = kind == B16_BF16, op.db = db, op.a_regs = 1;
    op.a_src = a;
    memcpy(op.a_snap, a, sizeof op.a_snap);
    rs_in m;
    memcpy(m.a, a, sizeof m.a);
    warp_collective(rs_gather_op, &m, sizeof m, op.a16, sizeof op.a16);
    issue(op);
}

void wgmma_commit(void) {
    wgmma_state &s = thread_wgmma();
    s.group_end.push_back(s.q.size());
}

/* One instruction, for the calling thread's accumulators. */
static void execute(const wgmma_op &op) {
    const thread_coords &c = coords();
    const int tid = (int)c.tid.x, lane = tid % 32, w = (tid / 32) % 4, g = lane / 4, t = lane % 4;
    const int rows[2] = {16 * w + g, 16 * w + g + 8};
    float A[2][16];
    if (op.a_regs && memcmp(op.a_src, op.a_snap, sizeof op.a_snap) != 0)
        trap("wgmma: A's registers changed before the wait that retires the instruction");
    if (op.a_regs) {
        for (int r = 0; r < 2; r++)
            for (int k = 0; k < 16; k++) {
                uint16_t v = op.a16[r][k];
                A[r][k] = b16_to_f32(v, op.is_bf16);
            }
    } else {
        const wg_desc_fields a = decode(op.da);
        for (int r = 0; r < 2; r++)
            for (int k = 0; k < 16; k++)
                A[r][k] = b16_at(k_major_at(a, rows[r], k), op.is_bf16);
    }
    const wg_desc_fields b = decode(op.db);
    for (int j = 0; j < op.n / 8; j++)
        for (int e = 0; e < 4; e++) {
            const int r = e / 2, col = 8 * j + 2 * t + e % 2;
            double s = op.d[4 * j + e];
            for (int k = 0; k < 16; k++) {
                const unsigned char *p = op.trans_b ? mn_major_at(b, k, col) : k_major_at(b, col, k);
                s += (double)A[r][k] * (double)b16_at(p, op.is_bf16);
            }
            op.d[4 * j + e] = (float)s;
        }
}

void wgmma_wait(int keep) {
    wgmma_state &s = thread_wgmma();
    size_t upto = s.done;
    const size_t groups = s.group_end.size();
    if (groups > (size_t)keep) upto = s.group_end[groups - 1 - (size_t)keep];
    for (size_t i = s.done; i < upto; i++) execute(s.q[i]);
    if (upto > s.done) s.done = upto;
}

} /* namespace emu */
