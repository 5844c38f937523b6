/* emu_internal.h: what the parts of the CPU kernel emulator (tests/emu) share. */
#ifndef LOCO_EMU_INTERNAL_H
#define LOCO_EMU_INTERNAL_H

#include "cuda_emu.h"

#include <algorithm>
#include <vector>

#define EMU_STACK_BYTES (128 * 1024)

namespace emu {

struct async_copy {
    void *dst;
    const void *src;
    int src_bytes; /* 16, or 0: zeros */
};

/* A thread's cp.async copies: q[done..] are in flight; group_end[] the ends of its committed
 * groups, oldest first; arrivals[arrived..]: its cp.async.mbarrier.arrive's still to happen, each
 * an mbarrier and the end of the copies it waits for. */
struct async_state {
    std::vector<async_copy> q;
    std::vector<size_t> group_end;
    size_t done = 0;
    std::vector<std::pair<uint64_t *, size_t>> arrivals;
    size_t arrived = 0;
};

/* One wgmma instruction as issued (emu_wgmma.cc): executed when a wait retires its group. */
struct wgmma_op {
    float *d; /* the issuing thread's accumulators, n / 2 of them */
    int n, trans_b, is_bf16, a_regs;
    uint64_t da, db;
    uint16_t a16[2][16]; /* a_regs: this lane's rows g and g + 8 of A, taken at issue */
    const uint32_t *a_src; /* a_regs: this thread's four A registers, and their values at issue */
    uint32_t a_snap[4];
};

/* A thread's wgmma instructions: q[done..] in flight; group_end[] the ends of its committed
 * groups, oldest first. */
struct wgmma_state {
    std::vector<wgmma_op> q;
    std::vector<size_t> group_end;
    size_t done = 0;
};
wgmma_state &thread_wgmma(void);
/* Forgets the descriptor bases numbered so far (emu_wgmma.cc): at every block's start. */
void wgmma_reset_regions(void);

/* A 16-bit float's value: bf16 (is_bf16) or IEEE half. */
inline float b16_to_f32(uint16_t v, int is_bf16) {
    if (is_bf16) {
        const uint32_t u = (uint32_t)v << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    __half_raw r;
    r.x = v;
    return __half2float(__half(r));
}

/* Copies every committed group but the newest `keep` (and with `all`, the open group too), then
 * makes the arrivals that waited for them. */
void async_retire(async_state &s, int keep, int all);
/* Copies q[done..upto) and makes the arrivals that waited for them. */
void async_retire_upto(async_state &s, size_t upto);
/* mbarrier pieces for cp.async.mbarrier.arrive (emu_threads.cc): the phase in progress waits for
 * n more arrivals; an arrival made by the copies' completion (no thread hands over). */
void mbar_pending_add(uint64_t *bar, unsigned n);
/* LOCO_EMU_SCHEDULE=reverse: asynchronous copies (TMA, cp.async with an mbarrier arrival) land
 * as soon as they are issued. */
int schedule_eager(void);
void mbar_arrive_async(uint64_t *bar);
async_state &thread_copies(void);

/* Each block's dynamic shared memory starts as NaN bytes (a GPU's holds whatever the last block
 * left: reading it unwritten is a bug), and so do the EMU_SMEM_CANARY bytes past what the launch
 * asked for: a block that writes there traps at its end (out of bounds on a GPU). */
#define EMU_SMEM_CANARY 1024

/* Runs op in stream order: now, or when the graph it is being captured into is launched
 * (emu_runtime.cc). The library calls that take a stream (cuBLASLt) go through here. */
cudaError_t enqueue(cudaStream_t stream, std::function<void()> op);

/* The block of the running cluster whose dynamic shared memory holds p, or -1. */
int cta_of(const void *p);

/* A TMA copy's bytes have landed on *bar (emu_tma.cc -> emu_threads.cc). */
void mbar_complete_tx(uint64_t *bar, unsigned bytes);

/* The 128-byte swizzle of shared-memory addresses (TMA's CU_TENSOR_MAP_SWIZZLE_128B, wgmma's layout
 * type 1): bits 4-6 XOR-ed with bits 7-9. */
inline uintptr_t swizzle128(uintptr_t a) { return a ^ (((a >> 7) & 7u) << 4); }

/* Runs every block of a grid, one after the other, or `cluster` blocks (along x) at a time
 * (emu_threads.cc). */
void run_grid(dim3 grid, dim3 block, unsigned cluster, size_t dyn_smem, const std::function<void()> &body);

} /* namespace emu */

#endif
