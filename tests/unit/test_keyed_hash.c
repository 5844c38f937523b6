/* test_keyed_hash.c: the keyed hash behind the weight-name table: SipHash-2-4's published test
 * vectors, and per-table keys that differ (also from the fallback when getrandom is missing). */
#include "keyed_hash.h"
#include "loco_test.h"

/* The reference key 00 01 .. 0f and message 00 01 .. n-1 (SipHash paper / reference test.c). */
TEST(siphash24_reference_vectors) {
    const loco_hash_key key = {UINT64_C(0x0706050403020100), UINT64_C(0x0f0e0d0c0b0a0908)};
    uint8_t msg[16];
    for (int i = 0; i < 16; i++) msg[i] = (uint8_t)i;
    static const struct {
        size_t n;
        uint64_t want;
    } v[] = {
        {0, UINT64_C(0x726fdb47dd0e0e31)}, {1, UINT64_C(0x74f839c593dc67fd)}, {2, UINT64_C(0x0d6c8009d9a94f5a)},
        {3, UINT64_C(0x85676696d7fb7e2d)}, {4, UINT64_C(0xcf2794e0277187b7)}, {8, UINT64_C(0x93f5f5799a932462)},
        {15, UINT64_C(0xa129ca6149be45e5)}, {16, UINT64_C(0x3f2acc7f57c29bdb)},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint64_t got = loco_siphash(&key, msg, v[i].n);
        CHECK_MSG(got == v[i].want, "n=%zu: got %016llx, want %016llx", v[i].n, (unsigned long long)got,
                  (unsigned long long)v[i].want);
    }
}

TEST(the_key_changes_the_hash) {
    const loco_hash_key a = {1, 2}, b = {1, 3};
    const char *name = "down_blocks.0.attentions.0.proj_in.weight";
    CHECK(loco_siphash(&a, name, strlen(name)) == loco_siphash(&a, name, strlen(name)));
    CHECK(loco_siphash(&a, name, strlen(name)) != loco_siphash(&b, name, strlen(name)));
}

/* Two tables get different keys, so a header cannot be built in advance to collide in both
 * (2^-128 chance of a false failure for the random source). */
TEST(random_keys_differ_per_table) {
    int x = 0, y = 0;
    loco_hash_key a, b;
    loco_hash_key_random(&a, &x);
    loco_hash_key_random(&b, &y);
    CHECK(a.k0 != b.k0 || a.k1 != b.k1);
    CHECK(a.k0 || a.k1);
    loco_hash_key_fallback(&a, &x);
    loco_hash_key_fallback(&b, &y);
    CHECK(a.k0 != b.k0 || a.k1 != b.k1); /* the salt alone already separates them */
}
