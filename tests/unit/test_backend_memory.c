/* test_backend_memory.c: backend.h's memory pressure registry on the CPU backend: reclaimers are
 * asked in the order registered until what was wanted went back, their bytes summed; counting
 * frees nothing; a pair registers once; removal (also from inside a reclaim) leaves the others
 * asked; a reclaim inside a reclaim asks nobody; and the device memory query says the CPU has
 * none. The CUDA allocator's use of it (asking when
 * the device is full) is test_cuda_pipeline's, the UNet graphs' reclaimer test_unet_graph's. */
#include "cpu_test_util.h"
#include "loco_test.h"

typedef struct probe {
    loco_backend *be;
    int calls;       /* FREE requests */
    int counts;      /* COUNT requests */
    size_t wanted;   /* the last FREE request's want */
    int order;       /* the order in which it was last asked to free (1-based) */
    int *clock;      /* shared by the probes of one test */
    size_t gives;    /* bytes it holds and gives back */
    int remove_self; /* removes itself when asked */
    size_t nested;   /* what a reclaim started from inside it returned, + 1 */
    int nest;        /* starts one */
} probe;

static size_t probe_reclaim(void *ctx, loco_reclaim_mode mode, size_t want) {
    probe *p = ctx;
    if (mode == LOCO_RECLAIM_COUNT) {
        p->counts++;
        if (p->nest) p->nested = loco_backend_reclaimable(p->be) + 1;
        return p->gives;
    }
    p->calls++;
    p->wanted = want;
    p->order = ++*p->clock;
    if (p->nest) p->nested = loco_backend_reclaim(p->be, SIZE_MAX) + 1; /* +1: 0 reads as "asked, got 0" */
    if (p->remove_self) loco_backend_remove_reclaimer(p->be, probe_reclaim, p);
    return p->gives;
}

TEST(reclaimers_are_asked_once_each_in_order) {
    loco_backend *be = cpu_backend(1);
    CHECK(be != NULL);
    int clock = 0;
    probe a = {.be = be, .clock = &clock, .gives = 100}, b = {.be = be, .clock = &clock, .gives = 20},
          c = {.be = be, .clock = &clock, .gives = 3};
    loco_err err;
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 0 && loco_backend_reclaimable(be) == 0); /* none registered */
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &a, &err) == LOCO_OK);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &b, &err) == LOCO_OK);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &c, &err) == LOCO_OK);
    /* counting asks everyone and frees nothing */
    CHECK(loco_backend_reclaimable(be) == 123);
    CHECK(a.counts == 1 && b.counts == 1 && c.counts == 1 && a.calls + b.calls + c.calls == 0);
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 123);
    CHECK(a.calls == 1 && b.calls == 1 && c.calls == 1);
    CHECK(a.order == 1 && b.order == 2 && c.order == 3);
    /* removed: no longer asked; the rest keep their order */
    loco_backend_remove_reclaimer(be, probe_reclaim, &b);
    loco_backend_remove_reclaimer(be, probe_reclaim, &b); /* absent: no-op */
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 103);
    CHECK(a.calls == 2 && b.calls == 1 && c.calls == 2 && a.order < c.order);
    /* registered again: asked last */
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &b, &err) == LOCO_OK);
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 123 && b.order > c.order && c.order > a.order);
    loco_backend_destroy(be); /* with reclaimers still registered: the registry goes with it */
}

/* Asked for `want` bytes, the reclaimers are asked in order, each for what is still missing,
 * until enough went back; wanting nothing asks nobody. */
TEST(reclaim_stops_when_enough_went_back) {
    loco_backend *be = cpu_backend(1);
    CHECK(be != NULL);
    int clock = 0;
    probe a = {.be = be, .clock = &clock, .gives = 100}, b = {.be = be, .clock = &clock, .gives = 20},
          c = {.be = be, .clock = &clock, .gives = 3};
    loco_err err;
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &a, &err) == LOCO_OK);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &b, &err) == LOCO_OK);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &c, &err) == LOCO_OK);
    CHECK(loco_backend_reclaim(be, 0) == 0 && a.calls == 0);
    CHECK(loco_backend_reclaim(be, 50) == 100 && a.calls == 1 && a.wanted == 50 && b.calls == 0 && c.calls == 0);
    CHECK(loco_backend_reclaim(be, 110) == 120 && a.calls == 2 && b.calls == 1 && b.wanted == 10 && c.calls == 0);
    CHECK(loco_backend_reclaim(be, 123) == 123 && c.calls == 1 && c.wanted == 3);
    loco_backend_destroy(be);
}

TEST(reclaimer_registration_is_checked) {
    loco_backend *be = cpu_backend(1);
    CHECK(be != NULL);
    int clock = 0;
    probe a = {.be = be, .clock = &clock, .gives = 1};
    loco_err err;
    loco_err_clear(&err);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &a, &err) == LOCO_OK);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &a, &err) == LOCO_EINVAL);
    CHECK_MSG(strstr(err.msg, "already registered") != NULL, "%s", err.msg);
    CHECK(loco_backend_add_reclaimer(be, NULL, &a, &err) == LOCO_EINVAL);
    CHECK(loco_backend_add_reclaimer(NULL, probe_reclaim, &a, &err) == LOCO_EINVAL);
    /* the same function with another context is another reclaimer */
    probe b = {.be = be, .clock = &clock, .gives = 2};
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &b, &err) == LOCO_OK);
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 3 && a.calls == 1); /* the refused duplicate is not asked twice */
    /* many: the registry grows */
    probe many[40];
    for (int i = 0; i < 40; i++) {
        many[i] = (probe){.be = be, .clock = &clock, .gives = 1000};
        CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &many[i], &err) == LOCO_OK);
    }
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 40003);
    for (int i = 0; i < 40; i++) loco_backend_remove_reclaimer(be, probe_reclaim, &many[i]);
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 3);
    /* a NULL context is a context like any other */
    probe *none = NULL;
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, none, &err) == LOCO_OK);
    loco_backend_remove_reclaimer(be, probe_reclaim, none);
    loco_backend_remove_reclaimer(NULL, probe_reclaim, &a); /* no-op */
    CHECK(loco_backend_reclaim(NULL, SIZE_MAX) == 0 && loco_backend_reclaimable(NULL) == 0);
    loco_backend_destroy(be);
}

/* A reclaimer that removes itself (its owner emptied) does not make the next one be skipped; a
 * reclaim or count started from inside a reclaimer (an allocation failing there) asks nobody. */
TEST(reclaim_survives_removal_and_nesting) {
    loco_backend *be = cpu_backend(1);
    CHECK(be != NULL);
    int clock = 0;
    probe a = {.be = be, .clock = &clock, .gives = 1, .remove_self = 1}, b = {.be = be, .clock = &clock, .gives = 10},
          c = {.be = be, .clock = &clock, .gives = 100, .nest = 1};
    loco_err err;
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &a, &err) == LOCO_OK);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &b, &err) == LOCO_OK);
    CHECK(loco_backend_add_reclaimer(be, probe_reclaim, &c, &err) == LOCO_OK);
    CHECK(loco_backend_reclaimable(be) == 111 && c.nested == 1); /* the nested count returned 0 */
    c.nested = 0;
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 111);
    CHECK(a.calls == 1 && b.calls == 1 && c.calls == 1);
    CHECK(c.nested == 1); /* the nested reclaim returned 0 and asked nobody */
    CHECK(loco_backend_reclaim(be, SIZE_MAX) == 110 && a.calls == 1 && b.calls == 2 && c.calls == 2);
    loco_backend_destroy(be);
}

TEST(device_memory_is_unsupported_on_cpu) {
    loco_backend *be = cpu_backend(1);
    CHECK(be != NULL);
    size_t fr = 1, tot = 1;
    loco_err err;
    loco_err_clear(&err);
    CHECK(loco_backend_device_memory(be, &fr, &tot, &err) == LOCO_EUNSUPPORTED);
    CHECK(fr == 0 && tot == 0);
    CHECK_MSG(strstr(err.msg, "cpu backend") != NULL, "%s", err.msg);
    CHECK(loco_backend_device_memory(NULL, &fr, &tot, &err) == LOCO_EINVAL);
    loco_backend_destroy(be);
}
