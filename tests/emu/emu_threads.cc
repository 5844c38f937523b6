/* emu_threads.cc: the emulated GPU's threads (cuda_emu.h). A launch runs its blocks one after
 * the other (a cluster's blocks together, as one schedule, each with its own dynamic shared
 * memory, barriers and named barriers); a block's threads are fibers on the calling OS thread, switched cooperatively: a
 * fiber runs until it reaches a barrier (__syncthreads, a named barrier, an mbarrier wait whose
 * phase has not completed), a warp-wide instruction, or its end, and each warp
 * runs as far as it can before the next one starts (run_cluster). A barrier or a
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

enum fiber_state { F_READY, F_WARP, F_BARRIER, F_NAMED, F_MBAR, F_CLUSTER, F_DONE, F_STATES };

struct fiber {
    exec_ctx ctx;
    char *stack = nullptr; /* EMU_STACK_BYTES above a guard page (mmap), kept for later launches */
    fiber_state state = F_READY;
    thread_coords at;
    int warp = 0, lane = 0;
    int cta = 0; /* its block's rank in the cluster */
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

/* One block of the running cluster: its __syncthreads, its named barriers, its dynamic shared
 * memory (EMU_SMEM_OPTIN bytes and the canary past them, 1024-byte aligned, kept for later
 * launches). */
struct cta_state {
    int at_barrier = 0, alive = 0;
    named_bar named[EMU_NAMED_BARRIERS];
    unsigned char *smem = nullptr;
};

struct block_run {
    std::vector<fiber> fibers; /* the cluster's threads, block by block (fibers beyond are kept) */
    std::vector<warp_slot> warps;
    int n = 0;     /* threads of each running block */
    int ctas = 1;  /* blocks running together: the cluster's */
    int total = 0; /* n * ctas */
    int alive = 0; /* threads not finished, of every block */
    int at_cluster = 0; /* threads at barrier.cluster */
    cta_state cta[EMU_MAX_CLUSTER];
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

static void release_barrier(block_run *r, int cta);
static void release_cluster(block_run *r);

/* ---- a cluster's blocks: their dynamic shared memory -------------------------------------------- */

void *dyn_smem(size_t align) {
    if (!g_run || !g_run->cur) trap("dynamic shared memory outside a kernel");
    if (align > 1024 || (align & (align - 1)) != 0) trap("dynamic shared memory aligned past 1024 bytes");
    return g_run->cta[g_run->cur->cta].smem;
}

/* The block of the running cluster whose dynamic shared memory holds p, or -1. */
static int cta_holding(const block_run *r, const void *p) {
    const unsigned char *b = (const unsigned char *)p;
    for (int c = 0; c < r->ctas; c++)
        if (b >= r->cta[c].smem && b < r->cta[c].smem + EMU_SMEM_OPTIN) return c;
    return -1;
}

int cta_of(const void *p) { return g_run ? cta_holding(g_run, p) : -1; }

/* (Stricter than a GPU, where only an access through the address faults: the emulator cannot
 * see plain loads and stores through it, so it traps at mapa already.) */
void *cta_map(const void *p, unsigned cta) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mapa outside a kernel");
    if (cta >= (unsigned)r->ctas) trap("mapa to a block rank past the cluster's");
    const int from = cta_holding(r, p);
    if (from < 0) trap("mapa of an address outside the blocks' dynamic shared memory");
    if (r->cta[cta].alive == 0) /* its shared memory is gone: a GPU faults, or reaches another block's */
        trap("a block reached the shared memory of a block of its cluster that has exited");
    return r->cta[cta].smem + ((const unsigned char *)p - r->cta[from].smem);
}

unsigned cluster_ctarank(void) {
    if (!g_run || !g_run->cur) trap("%cluster_ctarank outside a kernel");
    return (unsigned)g_run->cur->cta;
}

unsigned cluster_size(void) {
    if (!g_run || !g_run->cur) trap("%cluster_nctarank outside a kernel");
    return (unsigned)g_run->ctas;
}

/* The blocks' bytes and a canary past them: NaN bytes (0xff), as a GPU's leftovers may be. */
static void smem_poison(block_run *r, size_t bytes) {
    for (int c = 0; c < r->ctas; c++) {
        if (!r->cta[c].smem) {
            r->cta[c].smem = (unsigned char *)aligned_alloc(1024, EMU_SMEM_OPTIN + EMU_SMEM_CANARY);
            if (!r->cta[c].smem) trap("out of memory for a block's shared memory");
        }
        memset(r->cta[c].smem, 0xff, bytes + EMU_SMEM_CANARY);
    }
}

static void smem_check_tail(const block_run *r, size_t bytes) {
    for (int c = 0; c < r->ctas; c++)
        for (size_t i = bytes; i < bytes + EMU_SMEM_CANARY; i++)
            if (r->cta[c].smem[i] != 0xff) trap("a block wrote past the dynamic shared memory it was launched with");
}

/* f waits: the next ready lane of its warp runs on directly (half the switches of going
 * through the scheduler, and the warp keeps running ahead), else the scheduler does. */
static void yield_from(fiber *f) {
    block_run *r = g_run;
    const int end = std::min(r->total, f->warp * 32 + 32);
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
    cta_state &c = r->cta[f->cta];
    c.alive--;
    warp_slot &s = r->warps[f->warp];
    s.alive--;
    if (s.arrived > 0) trap("a lane exited while the rest of its warp waits at a warp-wide instruction");
    /* the exited no longer count */
    if (c.at_barrier > 0 && c.at_barrier == c.alive) release_barrier(r, f->cta);
    if (r->at_cluster > 0 && r->at_cluster == r->alive) release_cluster(r);
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

static void release_barrier(block_run *r, int cta) {
    for (int i = cta * r->n; i < (cta + 1) * r->n; i++)
        if (r->fibers[i].state == F_BARRIER) r->fibers[i].state = F_READY;
    r->cta[cta].at_barrier = 0;
}

void block_barrier(void) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("__syncthreads outside a kernel");
    fiber *f = r->cur;
    cta_state &c = r->cta[f->cta];
    f->state = F_BARRIER;
    if (++c.at_barrier == c.alive) {
        release_barrier(r, f->cta);
        return;
    }
    yield_from(f);
}

static void release_cluster(block_run *r) {
    for (int i = 0; i < r->total; i++)
        if (r->fibers[i].state == F_CLUSTER) r->fibers[i].state = F_READY;
    r->at_cluster = 0;
}

/* barrier.cluster.arrive + barrier.cluster.wait: every thread of the cluster not exited. */
void cluster_barrier(void) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("barrier.cluster outside a kernel");
    fiber *f = r->cur;
    f->state = F_CLUSTER;
    if (++r->at_cluster == r->alive) {
        release_cluster(r);
        return;
    }
    yield_from(f);
}

static void complete_warp(block_run *r, int w) {
    warp_slot &s = r->warps[w];
    s.op(s.in, s.out, s.alive);
    s.arrived = 0;
    s.op = nullptr;
    const size_t end = std::min((size_t)r->total, (size_t)w * 32 + 32);
    for (size_t i = (size_t)w * 32; i < end; i++)
        if (r->fibers[i].state == F_WARP) r->fibers[i].state = F_READY;
}

void warp_collective(warp_op op, const void *in, size_t in_bytes, void *out, size_t out_bytes) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("a warp-wide instruction outside a kernel");
    if (in_bytes > 64 || out_bytes > 64) trap("warp exchange payload over 64 bytes");
    fiber *f = r->cur;
    warp_slot &s = r->warps[f->warp];
    const int warp_size = std::min(32, r->total - f->warp * 32);
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
    const int cta = r->cur->cta, first = cta * r->n; /* the block's fibers, warps from first / 32 */
    named_bar &b = r->cta[cta].named[id];
    if (b.arrived > 0 && b.count != (int)count) trap("threads of one named-barrier phase name different counts");
    b.count = (int)count;
    b.lanes[r->cur->warp - first / 32]++;
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
        for (int i = first; i < first + r->n; i++)
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

/* The .shared::cta forms (init, expect_tx, arrive, try_wait) take the running block's own
 * mbarriers. In a cluster that is its dynamic shared memory: static __shared__ is one
 * thread_local copy here, which both blocks would share. */
static void own_mbarrier(block_run *r, const void *bar, const char *what) {
    if (r->ctas == 1) return;
    const int holder = cta_holding(r, bar);
    if (holder < 0)
        trap("an mbarrier outside the blocks' dynamic shared memory in a cluster (static __shared__ is one copy "
             "for all its blocks in the emulator)");
    if (holder != r->cur->cta) trap(what);
}

void mbar_init(uint64_t *bar, unsigned count) {
    if (!g_run || !g_run->cur) trap("mbarrier.init outside a kernel");
    own_mbarrier(g_run, bar, "mbarrier.init on another block's mbarrier (shared::cta only)");
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
    for (int i = 0; i < r->total; i++)
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
    if (w.pending == 0 && mbar_tx(r, bar) < 0) /* (the copies' bytes landed before the arrivals) */
        trap("a TMA copy landed on an mbarrier phase that expected fewer transaction bytes (expect_tx)");
    fiber *woken = mbar_try_complete(r, bar, w);
    memcpy(bar, &w, sizeof w);
    return woken;
}

void mbar_arrive(uint64_t *bar) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mbarrier.arrive outside a kernel");
    own_mbarrier(r, bar, "mbarrier.arrive.shared::cta on another block's mbarrier (that is the shared::cluster form)");
    hand_over(r, r->cur, mbar_count_arrival(r, bar));
}

void mbar_arrive_remote(uint64_t *bar) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mbarrier.arrive outside a kernel");
    const int holder = cta_holding(r, bar);
    if (holder < 0) trap("mbarrier.arrive.shared::cluster outside the blocks' dynamic shared memory");
    if (r->cta[holder].alive == 0) trap("an mbarrier arrival on a block of the cluster that has exited");
    hand_over(r, r->cur, mbar_count_arrival(r, bar));
}

void mbar_expect_tx(uint64_t *bar, unsigned bytes) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mbarrier.expect_tx outside a kernel");
    own_mbarrier(r, bar, "mbarrier.expect_tx on another block's mbarrier (shared::cta only)");
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
    for (int i = 0; i < r->total; i++) {
        async_state &s = r->fibers[i].copies;
        if (s.arrived < s.arrivals.size()) {
            async_retire_upto(s, s.arrivals[s.arrived].second);
            return 1;
        }
    }
    return 0;
}

/* A TMA copy's bytes have landed (emu_tma.cc): not a thread's step, so nobody is handed over.
 * The count may go below zero while the phase still waits for arrivals: a peer block's
 * multicast can land before this block's producer has said how many bytes to expect (its
 * arrive.expect_tx), as the hardware allows; with every arrival in, it may not. */
void mbar_complete_tx(uint64_t *bar, unsigned bytes) {
    block_run *r = g_run;
    const int holder = cta_holding(r, bar);
    if (holder >= 0 && r->cta[holder].alive == 0) trap("a TMA copy landed in a block of the cluster that has exited");
    mbar_word w = mbar_load(bar);
    int64_t &tx = mbar_tx(r, bar);
    tx -= bytes;
    if (tx < 0 && w.pending == 0)
        trap("a TMA copy landed on an mbarrier phase that expected fewer transaction bytes (expect_tx)");
    mbar_try_complete(r, bar, w);
    memcpy(bar, &w, sizeof w);
}

void mbar_wait_parity(uint64_t *bar, unsigned parity) {
    block_run *r = g_run;
    if (!r || !r->cur) trap("mbarrier.try_wait outside a kernel");
    fiber *f = r->cur;
    own_mbarrier(r, bar, "mbarrier.try_wait on another block's mbarrier (shared::cta only)");
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
        for (size_t i = w * 32; i < (size_t)r->total && i < w * 32 + 32; i++) n[r->fibers[i].state]++;
        char where[48] = "", line[300];
        if (r->ctas > 1) snprintf(where, sizeof where, " (block %zu of the cluster)", w * 32 / (size_t)r->n);
        snprintf(line, sizeof line,
                 "\n  warp %zu%s: %d at a warp-wide instruction, %d at __syncthreads, %d at a named barrier, %d waiting "
                 "for an mbarrier, %d at barrier.cluster, %d finished",
                 w, where, n[F_WARP], n[F_BARRIER], n[F_NAMED], n[F_MBAR], n[F_CLUSTER], n[F_DONE]);
        s += line;
    }
    return s;
}

/* Runs the blocks bid, bid + (1, 0, 0), ... (ctas of them: one cluster) together. */
static void run_cluster(block_run &r, dim3 grid, dim3 block, uint3 bid, int ctas) {
    const int n = (int)(block.x * block.y * block.z);
    r.n = n;
    r.ctas = ctas;
    r.total = n * ctas;
    r.alive = r.total;
    r.at_cluster = 0;
    for (int c = 0; c < ctas; c++) {
        r.cta[c].alive = n;
        r.cta[c].at_barrier = 0;
        for (named_bar &b : r.cta[c].named) b = named_bar();
    }
    r.tx.clear();
    tma_reset();
    for (size_t w = 0; w < r.warps.size(); w++) {
        r.warps[w].arrived = 0;
        r.warps[w].op = nullptr;
        r.warps[w].alive = (int)std::min<size_t>(32, (size_t)r.total - w * 32);
    }
    for (int i = 0; i < r.total; i++) {
        fiber &f = r.fibers[i];
        const int t = i % n;
        f.state = F_READY;
        f.cta = i / n;
        f.at.tid = make_uint3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
        f.at.bid = make_uint3(bid.x + (unsigned)f.cta, bid.y, bid.z);
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
     * buffer without waiting for its producer (a higher warp) reads it unfilled. A cluster's
     * blocks are one list of warps, block 0's first: block 0 runs ahead of block 1 as far as
     * its barriers let it.
     * LOCO_EMU_SCHEDULE=reverse turns the order round (the highest warp first, TMA copies and
     * cp.async arrivals landing as soon as they are issued): a producer warp then runs ahead of
     * every consumer, and a consumer reads what other consumers were to write (Q, a shared
     * region) before they have, where the default order has them all written first. */
    const size_t nwarps = r.warps.size();
    for (;;) {
        int ran = 0;
        for (size_t k = 0; k < nwarps; k++) {
            const size_t w = r.reverse ? nwarps - 1 - k : k;
            const int end = std::min(r.total, (int)w * 32 + 32);
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
            for (int c = 0; c < ctas; c++)
                for (const named_bar &b : r.cta[c].named)
                    if (b.arrived != 0) trap("a block ended with a named barrier's phase half arrived");
            if (tma_in_flight()) trap("a block ended with TMA copies in flight (nothing waited for them)");
            for (int i = 0; i < r.total; i++) async_retire(r.fibers[i].copies, 0, 1); /* land anyway */
            return;
        }
        if (!ran && (tma_land_oldest() || cp_async_land_oldest(&r))) continue; /* nothing else can move: copies land */
        if (!ran) {
            fprintf(stderr, "cuda emulator: block %u,%u,%u%s cannot go on:%s\n", bid.x, bid.y, bid.z,
                    ctas > 1 ? " (the first of its cluster)" : "", describe_stuck(&r).c_str());
            trap("deadlock (on a GPU: a hang, or undefined behaviour)");
        }
    }
}

void run_grid(dim3 grid, dim3 block, unsigned cluster, size_t dyn_smem, const std::function<void()> &body) {
    if (g_run) trap("a kernel launched from inside a kernel");
    static thread_local block_run r; /* its fibers' stacks and blocks' shared memory serve every later launch */
    const int n = (int)(block.x * block.y * block.z);
    if (cluster == 0 || cluster > EMU_MAX_CLUSTER || grid.x % cluster != 0) trap("a cluster size the launch checks refuse");
    if (cluster > 1 && n % 32 != 0) trap("the emulator runs clusters of blocks of whole warps only");
    const int total = n * (int)cluster;
    if (r.fibers.size() < (size_t)total) r.fibers.resize((size_t)total);
    r.warps.resize((size_t)(total + 31) / 32);
    r.body = &body;
    const char *schedule = getenv("LOCO_EMU_SCHEDULE");
    r.reverse = schedule && strcmp(schedule, "reverse") == 0;
    r.ctas = (int)cluster;
    g_run = &r;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x += cluster) {
                smem_poison(&r, dyn_smem);
                wgmma_reset_regions();
                run_cluster(r, grid, block, make_uint3(x, y, z), (int)cluster);
                smem_check_tail(&r, dyn_smem);
            }
    g_run = nullptr;
}

} /* namespace emu */
