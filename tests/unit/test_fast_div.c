/* test_fast_div.c: the magic-number division the CUDA kernels use for index -> channel maps
 * (kernels/fast_div.h) against real division: every divisor up to 4096 with dividends near
 * multiples of it and at the ends of the range, the divisors the UNet and VAE shapes produce,
 * and random pairs over the whole valid range [1, 2^31) x [0, 2^31). */
#include "fast_div.h"
#include "loco_test.h"

static int check_pair(uint32_t d, uint32_t x) {
    const uint32_t got = loco_fast_div_eval(loco_fast_div_make(d), x), want = x / d;
    if (got == want) return 1;
    fprintf(stderr, "fast_div: %u / %u gave %u, want %u\n", x, d, got, want);
    return 0;
}

TEST(fast_div_small_divisors_every_boundary) {
    int ok = 1;
    const uint32_t top = 0x7fffffffu;
    for (uint32_t d = 1; d <= 4096 && ok; d++) {
        for (uint32_t q = 0; q < 64 && ok; q++)
            for (int e = -1; e <= 1; e++) {
                const int64_t x = (int64_t)q * d + e;
                if (x >= 0 && x <= (int64_t)top) ok = ok && check_pair(d, (uint32_t)x);
            }
        for (uint32_t x = top - 8; x <= top - 1 && ok; x++) ok = ok && check_pair(d, x);
        ok = ok && check_pair(d, top) && check_pair(d, top - top % d) && check_pair(d, top - top % d - 1);
    }
    CHECK(ok);
}

TEST(fast_div_model_shapes) {
    /* pixels per channel (HW), vectors per channel (HW / 8), channel counts, group lengths */
    static const uint32_t ds[] = {1,    8,    9,     64,     77,     320,    512,     640,     1024,   1280, 2048,
                                  2560, 4096, 16384, 65536, 262144, 327680, 1048576, 4194304, 12288, 36864};
    int ok = 1;
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
        for (uint32_t x = 0; x < 3u * ds[i] + 100 && ok; x += 1 + ds[i] / 997) ok = ok && check_pair(ds[i], x);
    CHECK(ok);
}

TEST(fast_div_random_pairs_full_range) {
    uint64_t s = 0x9e3779b97f4a7c15u; /* splitmix64: a fixed, portable sequence */
    int ok = 1;
    for (int i = 0; i < 2000000 && ok; i++) {
        uint64_t z = (s += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        z ^= z >> 31;
        /* divisors spread over every magnitude: a random mantissa shifted by a random amount */
        uint32_t d = (uint32_t)(z & 0x7fffffffu) >> (uint32_t)((z >> 32) % 31);
        if (d == 0) d = 1;
        ok = ok && check_pair(d, (uint32_t)(z >> 33));
    }
    CHECK(ok);
}
