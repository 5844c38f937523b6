/* emu_threads.cc: the emulated GPU's threads (cuda_emu.h). A launch runs its blocks one after
 * the other; a block's threads are fibers on the calling OS thread, switched cooperatively: a
 * fiber runs until it reaches a barrier (__syncthreads, a named barrier, an mbarrier wait whose
 * phase has not completed), a warp-wide instruction, or its end, and each warp
 * runs as far as it can before the next one starts (run_block). A barrier or a
 * warp-wide instruction completes when the last thread it involves arrives; that thread does
 * the work for all of them. If no fiber can run and some have not finished (threads of a block
 * at different barriers, lanes of a warp at different instructions), the launch fails with a
 * description of where each warp stands: on a GPU that is a hang or undefined behaviour.
 *
 * The state below is the emulated hardware's (which block runs, which fiber is current): it is
 * per OS thread (thread_local), as the kernels' implicit threadIdx / blockIdx are. */
#include "emu_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

namespace emu {

/* ---- fibers: a register switch on x86-64, ucontext elsewhere --------------------------------- */

#if defined(__x86_64__)
/* Saves the callee-saved registers on the current stack, stores the stack pointer in *save,
 * continues on the stack `load` (made by this function or by fiber_init). No system call,
 * unlike swapcontext's signal-mask save; the floating-point control words are left alone (no
 * kernel changes them). */
extern "C" void emu_switch(void **save, void *load);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#else
#include <ucontext.h>
#endif

/* Where a suspended fiber (or the scheduler) resumes. */
struct exec_ctx {
#if defined(__x86_64__)
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
};

/* Suspends `from` and resumes `to`; returns when something switches back to `from`. */
static void ctx_switch(exec_ctx *from, exec_ctx *to) {
#if defined(__x86_64__)
    emu_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

enum fiber_state { F_READY, F_WARP, F_BARRIER, F_NAMED, F_MBAR, F_DONE, F_STATES };

struct fiber {
    exec_ctx ctx;
    char *stack = nullptr; /* EMU_STACK_BYTES above a guard page (mmap), kept for later launches */
    fiber_state state = F_READY;
    thread_coords at;
    int warp = 0, lane = 0;
    async_state copies;
    wgmma_state wg;
    unsigned named = 0;            /* F_NAMED: the named barrier it waits at */
    const uint64_t *mbar = nullptr; /* F_MBAR: the mbarrier whose phase it waits for */
};

/* A named barrier's phase in progress: threads arrived, the count its participants named, and
 * the lanes of each warp among them (bar.sync and bar.arrive are .aligned: a GPU counts a warp's
 * arrival as its 32 threads at once, so a warp that reaches the barrier with only some lanes,
 * or with its lanes split over two phases, counts differently there than thread by thread). */
struct named_bar {
    int arrived = 0, count = 0;
    unsigned char lanes[32] = {}; /* 1024 threads at most: 32 warps */
};
#define EMU_NAMED_BARRIERS 16

struct warp_slot {
    int arrived = 0, alive = 0;
    warp_op op = nullptr;
    unsigned char in[32][64], out[32][64];
};

struct block_run {
    std::vector<fiber> fibers;
    std::vector<warp_slot> warps;
    int n = 0; /* threads of the running block (fibers beyond are kept for bigger blocks) */
    int at_barrier = 0, alive = 0;
    named_bar named[EMU_NAMED_BARRIERS];
    /* mbarriers whose phase in progress waits for transaction bytes (expect_tx minus what has
     * landed): a side table, the 64-bit word holding the arrivals */
    std::vector<std::pair<const uint64_t *, int64_t>> tx;
    int reverse = 0; /* LOCO_EMU_SCHEDULE=reverse: highest warp first, asynchronous copies land at once */
    fiber *cur = nullptr;
    exec_ctx sched;
    const std::function<void()> *body = nullptr;
};

static thread_local block_run *g_run;
static thread_local thread_coords g_host_coords; /* what threadIdx reads outside a kernel */

thread_coords &coords() { return g_run && g_run->cur ? g_run->cur->at : g_host_coords; }

async_state &thread_copies() {
    if (!g_run || !g_run->cur) trap("cp.async outside a kernel");
    return g_run->cur->copies;
}

wgmma_state &thread_wgmma() {
    if (!g_run || !g_run->cur) trap("wgmma outside a kernel");
    return g_run->cur->wg;
}

static void to_scheduler(fiber *f) { ctx_switch(&f->ctx, &g_run->sched); }

static void release_barrier(block_run *r);

/* f waits: the next ready lane of its warp runs on directly (half the switches of going
 * through the scheduler, and the warp keeps running ahead), else the scheduler does. */
static void yield_from(fiber *f) {
    block_run *r = g_run;
    const int end = std::min(r->n, f->warp * 32 + 32);
    for (int i = (int)(f - r->fibers.data()) + 1; i < end; i++) {
        fiber *next = &r->fibers[i];
        if (next->state != F_READY) continue;
        r->cur = next;
        ctx_switch(&f->ctx, &next->ctx);
        return; /* resumed: by the scheduler or by another fiber, with r->cur == f */
    }
    to_scheduler(f);
}

static void fiber_main() {
    block_run *r = g_run;
    fiber *f = r->cur;
    (*r->body)();
    /* copies still in flight land later: when a thread waits for their arrival
     * (cp.async.mbarrier.arrive), or at the block's end */
    if (f->wg.done < f->wg.q.size()) /* its accumulators are gone: on a GPU the results are lost */
        trap("a thread ended with wgmma instructions it never waited for");
    f->state = F_DONE;
    r->alive--;
    warp_slot &s = r->warps[f->warp];
    s.alive--;
    if (s.arrived > 0) trap("a lane exited while the rest of its warp waits at a warp-wide instruction");
    if (r->at_barrier > 0 && r->at_barrier == r->alive) release_barrier(r); /* the exited no longer count */
    to_scheduler(f); /* never resumed */
    abort();
}

/* A stack with an inaccessible page below it: an overflow faults instead of corrupting. */
static char *stack_alloc(size_t bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *m = (char *)mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) trap("out of memory for a thread stack");
    mprotect(m, page, PROT_NONE);
    return m + page;
}

static void fiber_init(fiber *f, size_t stack_bytes) {
    if (!f->stack) f->stack = stack_alloc(stack_bytes); /* never freed: reused by every launch */
#if defined(__x86_64__)
    /* the frame emu_switch pops: six registers, then it returns into fiber_main with the stack
     * as after a call (8 mod 16) */
    uintptr_t top = ((uintptr_t)f->stack + stack_bytes) & ~(uintptr_t)15;
    uint64_t *p = (uint64_t *)(top - 64);
    for (int i = 0; i < 6; i++) p[i] = 0;
    p[6] = (uint64_t)(uintptr_t)&fiber_main;
    p[7] = 0;
    f->ctx.sp = p;
#else
    getcontext(&f->ctx.uc);
    f->ctx.uc.uc_stack.ss_sp = f->stack;
    f->ctx.uc.uc_stack.ss_size = stack_bytes;
    f->ctx.uc.uc_link = nullptr;
    makecontext(&f->ctx.uc, (void (*)())fiber_main, 0);
#endif
}

static void run_fiber(block_run *r, fiber *f) {
    r->cur = f;
    ctx_switch(&r->sched, &f->ctx);
    r->cur = nullptr;
}

/* ---- barriers and warp-wide instructions ----------------------------------------------------- */

static void release_barrier(block_run *r) {
    for (int i = 0; i < r->n; i++)
        if (r->fibers[i].state == F_BARRIER) r->fibers[i].state = F_READY;
    r->at_barrier = 0;
}

void block_barrier(void) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("__syncthreads outside a kernel");
    fiber *f = r->cur;
    f->state = F_BARRIER;
    if (++r->at_barrier == r->alive) {
        release_barrier(r);
        return;
    }
    yield_from(f);
}

static void complete_warp(block_run *r, int w) {
    warp_slot &s = r->warps[w];
    s.op(s.in, s.out, s.alive);
    s.arrived = 0;
    s.op = nullptr;
    const size_t end = std::min((size_t)r->n, (size_t)w * 32 + 32);
    for (size_t i = (size_t)w * 32; i < end; i++)
        if (r->fibers[i].state == F_WARP) r->fibers[i].state = F_READY;
}

void warp_collective(warp_op op, const void *in, size_t in_bytes, void *out, size_t out_bytes) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("a warp-wide instruction outside a kernel");
    if (in_bytes > 64 || out_bytes > 64) trap("warp exchange payload over 64 bytes");
    fiber *f = r->cur;
    warp_slot &s = r->warps[f->warp];
    const int warp_size = std::min(32, r->n - f->warp * 32);
    if (s.alive != warp_size)
        trap("a warp-wide instruction in a warp some of whose lanes have exited (undefined on a GPU)");
    if (s.op && s.op != op) trap("lanes of one warp at different warp-wide instructions (divergence)");
    s.op = op;
    memcpy(s.in[f->lane], in, in_bytes);
    f->state = F_WARP;
    if (++s.arrived == s.alive)
        complete_warp(r, f->warp);
    else
        yield_from(f);
    memcpy(out, s.out[f->lane], out_bytes);
}

/* ---- named barriers and mbarriers --------------------------------------------------------------- */

/* After an arrival that completed a phase: the first thread it released (woken: the lowest one)
 * runs now, before the arriving thread's next instruction, as it may on a GPU. A producer that
 * refills a buffer as soon as its consumers hand it back then overwrites it before the consumer
 * that arrived goes on: one that arrives before it is done reading (its wgmma retired at a later
 * wait) reads the refill, where the lowest-warp-first order would let it finish first. */
static void hand_over(block_run *r, fiber *f, fiber *woken) {
    if (!woken) return;
    r->cur = woken;
    ctx_switch(&f->ctx, &woken->ctx); /* f stays ready: the scheduler resumes it */
}

void named_barrier(unsigned id, unsigned count, int wait) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("a named barrier outside a kernel");
    if (id == 0 || id >= EMU_NAMED_BARRIERS) trap("named barrier id outside 1-15 (0 is __syncthreads')");
    if (count == 0 || count % 32 != 0 || count > (unsigned)r->n)
        trap("named barrier count not a multiple of 32 up to the block's threads");
    named_bar &b = r->named[id];
    if (b.arrived > 0 && b.count != (int)count) trap("threads of one named-barrier phase name different counts");
    b.count = (int)count;
    b.lanes[r->cur->warp]++;
    if (++b.arrived == b.count) {
        for (int w = 0; w < 32; w++) {
            const int lanes_of_warp = std::min(32, r->n - w * 32);
            if (b.lanes[w] != 0 && b.lanes[w] != lanes_of_warp)
                trap("a named-barrier phase completed with a warp that arrived with only some of its lanes "
                     "(bar.sync/bar.arrive take whole warps)");
            b.lanes[w] = 0;
        }
        b.arrived = 0;
        fiber *woken = nullptr;
        for (int i = 0; i < r->n; i++)
            if (r->fibers[i].state == F_NAMED && r->fibers[i].named == id) {
                r->fibers[i].state = F_READY;
                if (!woken) woken = &r->fibers[i];
            }
        if (!wait) hand_over(r, r->cur, woken);
        return;
    }
    if (!wait) return;
    fiber *f = r->cur;
    f->state = F_NAMED;
    f->named = id;
    yield_from(f);
}

/* An mbarrier's 64 bits here: the arrivals its phase still waits for, then a tag, the phase's
 * parity and the count (the GPU's own encoding is opaque; only these instructions read it). */
#define EMU_MBAR_TAG 0xB7u
struct mbar_word {
    uint32_t pending;
    uint32_t tag_phase_count; /* tag << 24 | parity << 20 | count */
};
static mbar_word mbar_load(const uint64_t *bar) {
    mbar_word w;
    memcpy(&w, bar, sizeof w);
    if (w.tag_phase_count >> 24 != EMU_MBAR_TAG) trap("an mbarrier used before mbarrier.init");
    return w;
}

void mbar_init(uint64_t *bar, unsigned count) {
    if (!g_run || !g_run->cur) trap("mbarrier.init outside a kernel");
    if (count == 0 || count >= (1u << 20)) trap("mbarrier.init count outside 1 to 2^20 - 1");
    const mbar_word w = {count, EMU_MBAR_TAG << 24 | count};
    memcpy(bar, &w, sizeof w);
}

static int64_t &mbar_tx(block_run *r, const uint64_t *bar) {
    for (auto &e : r->tx)
        if (e.first == bar) return e.second;
    r->tx.push_back({bar, 0});
    return r->tx.back().second;
}

/* The phase completes once its arrivals are in and no transaction bytes are outstanding: the
 * next phase starts with the full count, and the waiters go on (the first returned). */
static fiber *mbar_try_complete(block_run *r, uint64_t *bar, mbar_word &w) {
    if (w.pending != 0 || mbar_tx(r, bar) != 0) return nullptr;
    fiber *woken = nullptr;
    w.pending = w.tag_phase_count & 0xFFFFFu;
    w.tag_phase_count ^= 1u << 20;
    for (int i = 0; i < r->n; i++)
        if (r->fibers[i].state == F_MBAR && r->fibers[i].mbar == bar) {
            r->fibers[i].state = F_READY;
            if (!woken) woken = &r->fibers[i];
        }
    return woken;
}

/* One arrival on the phase in progress; returns the first waiter it released, if any. */
static fiber *mbar_count_arrival(block_run *r, uint64_t *bar) {
    mbar_word w = mbar_load(bar);
    if (w.pending == 0) trap("an mbarrier arrival beyond its count (the phase waits for transaction bytes only)");
    --w.pending;
    fiber *woken = mbar_try_complete(r, bar, w);
    memcpy(bar, &w, sizeof w);
    return woken;
}

void mbar_arrive(uint64_t *bar) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mbarrier.arrive outside a kernel");
    hand_over(r, r->cur, mbar_count_arrival(r, bar));
}

void mbar_expect_tx(uint64_t *bar, unsigned bytes) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mbarrier.expect_tx outside a kernel");
    (void)mbar_load(bar);
    if (bytes >= (1u << 20)) trap("mbarrier.expect_tx of 2^20 bytes or more");
    mbar_tx(r, bar) += bytes;
}

void mbar_pending_add(uint64_t *bar, unsigned n) {
    mbar_word w = mbar_load(bar);
    w.pending += n;
    memcpy(bar, &w, sizeof w);
}

/* An arrival made by cp.async copies landing (cp.async.mbarrier.arrive): not a thread's step, so
 * nobody is handed over. */
void mbar_arrive_async(uint64_t *bar) { mbar_count_arrival(g_run, bar); }

int schedule_eager(void) { return g_run && g_run->reverse; }

/* Nothing in the block can move: the oldest cp.async.mbarrier.arrive of the lowest thread that
 * has one waiting has its copies land, and arrives (as late as a GPU may make it). */
static int cp_async_land_oldest(block_run *r) {
    for (int i = 0; i < r->n; i++) {
        async_state &s = r->fibers[i].copies;
        if (s.arrived < s.arrivals.size()) {
            async_retire_upto(s, s.arrivals[s.arrived].second);
            return 1;
        }
    }
    return 0;
}

/* A TMA copy's bytes have landed (emu_tma.cc): not a thread's step, so nobody is handed over. */
void mbar_complete_tx(uint64_t *bar, unsigned bytes) {
    block_run *r = g_run;
    mbar_word w = mbar_load(bar);
    int64_t &tx = mbar_tx(r, bar);
    tx -= bytes;
    if (tx < 0) trap("a TMA copy landed on an mbarrier phase that expected fewer transaction bytes (expect_tx)");
    mbar_try_complete(r, bar, w);
    memcpy(bar, &w, sizeof w);
}

void mbar_wait_parity(uint64_t *bar, unsigned parity) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mbarrier.try_wait outside a kernel");
    fiber *f = r->cur;
    while ((mbar_load(bar).tag_phase_count >> 20 & 1u) == (parity & 1u)) {
        f->state = F_MBAR;
        f->mbar = bar;
        yield_from(f);
    }
}

/* ---- running a grid ----------------------------------------------------------------------------- */

[[noreturn]] void trap(const char *why) {
    fprintf(stderr, "cuda emulator: %s", why);
    if (g_run && g_run->cur) {
        const thread_coords &c = g_run->cur->at;
        fprintf(stderr, " (block %u,%u,%u thread %u,%u,%u)", c.bid.x, c.bid.y, c.bid.z, c.tid.x, c.tid.y, c.tid.z);
    }
    fprintf(stderr, "\n");
    fflush(stderr);
    abort();
}

static std::string describe_stuck(const block_run *r) {
    std::string s;
    for (size_t w = 0; w < r->warps.size(); w++) {
        int n[F_STATES] = {0};
        for (size_t i = w * 32; i < (size_t)r->n && i < w * 32 + 32; i++) n[r->fibers[i].state]++;
        char line[240];
        snprintf(line, sizeof line,
                 "\n  warp %zu: %d at a warp-wide instruction, %d at __syncthreads, %d at a named barrier, %d waiting "
                 "for an mbarrier, %d finished",
                 w, n[F_WARP], n[F_BARRIER], n[F_NAMED], n[F_MBAR], n[F_DONE]);
        s += line;
    }
    return s;
}

static void run_block(block_run &r, dim3 grid, dim3 block, uint3 bid) {
    const int n = (int)(block.x * block.y * block.z);
    r.n = n;
    r.alive = n;
    r.at_barrier = 0;
    for (named_bar &b : r.named) b = named_bar();
    r.tx.clear();
    tma_reset();
    for (size_t w = 0; w < r.warps.size(); w++) {
        r.warps[w].arrived = 0;
        r.warps[w].op = nullptr;
        r.warps[w].alive = (int)std::min<size_t>(32, (size_t)n - w * 32);
    }
    for (int i = 0; i < n; i++) {
        fiber &f = r.fibers[i];
        f.state = F_READY;
        f.at.tid = make_uint3(i % block.x, i / block.x % block.y, i / (block.x * block.y));
        f.at.bid = bid;
        f.at.bdim = block;
        f.at.gdim = grid;
        f.warp = i / 32;
        f.lane = i % 32;
        f.copies = async_state();
        f.wg = wgmma_state();
        fiber_init(&f, EMU_STACK_BYTES);
    }
    /* Warp by warp, each as far as it goes: up to a barrier, or its end. A GPU may run one warp
     * that far ahead of the others, so this order exposes a missing barrier (a warp
     * overwriting, or reading, shared memory the others are not done with / have not written)
     * where running the warps in step would hide it. The lowest warp that can run always runs
     * next: when a warp's progress frees a lower one (an arrival at a named barrier or an
     * mbarrier), that one goes on before any higher warp does, so a consumer warp that reads a
     * buffer without waiting for its producer (a higher warp) reads it unfilled.
     * LOCO_EMU_SCHEDULE=reverse turns the order round (the highest warp first, TMA copies and
     * cp.async arrivals landing as soon as they are issued): a producer warp then runs ahead of
     * every consumer, and a consumer reads what other consumers were to write (Q, a shared
     * region) before they have, where the default order has them all written first. */
    const size_t nwarps = r.warps.size();
    for (;;) {
        int ran = 0;
        for (size_t k = 0; k < nwarps; k++) {
            const size_t w = r.reverse ? nwarps - 1 - k : k;
            const int end = std::min(n, (int)w * 32 + 32);
            int ran_w = 0;
            for (int again = 1; again;) {
                again = 0;
                for (int i = (int)w * 32; i < end; i++)
                    if (r.fibers[i].state == F_READY) {
                        run_fiber(&r, &r.fibers[i]);
                        ran = ran_w = again = 1;
                    }
            }
            if (ran_w && k > 0) k = (size_t)-1; /* from the first warp again (the loop's k++ makes it 0) */
        }
        if (r.alive == 0) {
            /* arrivals no thread waited for: the protocol of the kernel's bar.arrive / bar.sync
             * pairs is off by one somewhere (on a GPU the barrier's state at exit is undefined) */
            for (const named_bar &b : r.named)
                if (b.arrived != 0) trap("a block ended with a named barrier's phase half arrived");
            if (tma_in_flight()) trap("a block ended with TMA copies in flight (nothing waited for them)");
            for (int i = 0; i < n; i++) async_retire(r.fibers[i].copies, 0, 1); /* land anyway */
            return;
        }
        if (!ran && (tma_land_oldest() || cp_async_land_oldest(&r))) continue; /* nothing else can move: copies land */
        if (!ran) {
            fprintf(stderr, "cuda emulator: block %u,%u,%u cannot go on:%s\n", bid.x, bid.y, bid.z,
                    describe_stuck(&r).c_str());
            trap("deadlock (on a GPU: a hang, or undefined behaviour)");
        }
    }
}

void run_grid(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body) {
    if (g_run) trap("a kernel launched from inside a kernel");
    static thread_local block_run r; /* its fibers' stacks serve every later launch */
    const int n = (int)(block.x * block.y * block.z);
    if (r.fibers.size() < (size_t)n) r.fibers.resize((size_t)n);
    r.warps.resize((size_t)(n + 31) / 32);
    r.body = &body;
    const char *schedule = getenv("LOCO_EMU_SCHEDULE");
    r.reverse = schedule && strcmp(schedule, "reverse") == 0;
    g_run = &r;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                smem_poison(dyn_smem);
                wgmma_reset_regions();
                run_block(r, grid, block, make_uint3(x, y, z));
                smem_check_tail(dyn_smem);
            }
    g_run = nullptr;
}

} /* namespace emu */
