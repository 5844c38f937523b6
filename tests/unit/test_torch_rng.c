/* test_torch_rng.c: loco_torch_rng against torch's CPU generator, bit for bit.
 *
 * The embedded values were produced with torch 2.15 (x86, AVX2/AVX-512 kernels):
 *     g = torch.Generator().manual_seed(seed); torch.randn(n, generator=g)
 * and are compared as raw float bits (first/last values) plus an FNV-1a hash over the bits of
 * every element. tests/fixtures/refs/noise.safetensors (written by tools/) adds latent-shaped
 * draws and a three-call stream, when present. */
#include "loco_test.h"
#include "safetensors.h"
#include "torch_rng.h"

#include <inttypes.h>

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static uint64_t fnv1a_bits(const float *x, size_t n) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = bits_of(x[i]);
        for (int b = 0; b < 4; b++) { /* little-endian bytes, as numpy's tobytes() */
            h ^= (u >> (8 * b)) & 0xffu;
            h *= UINT64_C(0x100000001b3);
        }
    }
    return h;
}

typedef struct rng_case {
    uint64_t seed;
    size_t n;
    uint64_t hash;
    uint32_t first[4]; /* up to min(n, 4) */
    uint32_t last;
} rng_case;

/* One fresh generator per case. */
static const rng_case k_cases[] = {
    {0, 1, UINT64_C(0x1877733c12d64cbc), {0x3fc53f5c}, 0x3fc53f5c},
    {42, 5, UINT64_C(0x0db62b496c414f74), {0x3eac62ae, 0x3e03e69d, 0x3e7016e7, 0x3e6bdc6c}, 0xbf8fb9c2},
    {42, 15, UINT64_C(0x4c7fdcb26081ae6b), {0x3eac62ae, 0x3e03e69d, 0x3e7016e7, 0x3e6bdc6c}, 0xbf7d2c7a},
    {42, 16, UINT64_C(0x080ffa5fbeb15154), {0x3ff6a529, 0x3fbe5f53, 0x3f669567, 0xc006c0db}, 0x3f432f9f},
    {42, 17, UINT64_C(0x91ae8bd790a50356), {0x3ff6a529, 0xbe236d85, 0xbefeaae4, 0x3ee111d8}, 0xbe9e9482},
    {1234, 100, UINT64_C(0x3e87ba1e2830f9dd), {0xbde4ccb4, 0xbefe410f, 0x3e26fccb, 0xbf61b64a}, 0xbe07b7ef},
    /* seeds >= 2^32: torch keeps the low 32 bits, so this is the stream of seed 1234 */
    {UINT64_C(4294968530), 100, UINT64_C(0x3e87ba1e2830f9dd), {0xbde4ccb4, 0xbefe410f, 0x3e26fccb, 0xbf61b64a},
     0xbe07b7ef},
    {UINT64_MAX, 1000, UINT64_C(0x09d8def090ce0cb8), {0xc02a83da, 0xbf8ba77b, 0x3ee7241e, 0x3e69d763}, 0x3f299c01},
    {7, 16384, UINT64_C(0xac0323b283b0c3d2), {0xbf51f456, 0x3eca902b, 0x3f661ede, 0xbfb1b738}, 0xbe80c5df},
    {987654321, 16384, UINT64_C(0x54d1256db203176a), {0xbf093946, 0xbe6c59bf, 0xbf37cf61, 0xbfb499ad}, 0xbedd6b27},
};

TEST(randn_matches_torch_fresh_generators) {
    for (size_t c = 0; c < sizeof(k_cases) / sizeof(k_cases[0]); c++) {
        const rng_case *k = &k_cases[c];
        float *x = malloc(k->n * sizeof(float));
        CHECK(x != NULL);
        loco_torch_rng g;
        loco_torch_rng_seed(&g, k->seed);
        loco_torch_randn_f32(&g, x, k->n);
        size_t nf = k->n < 4 ? k->n : 4;
        int ok = 1;
        for (size_t i = 0; i < nf; i++) ok &= bits_of(x[i]) == k->first[i];
        ok &= bits_of(x[k->n - 1]) == k->last;
        uint64_t h = fnv1a_bits(x, k->n);
        free(x);
        CHECK_MSG(ok, "seed %" PRIu64 " n %zu: first/last values differ from torch", k->seed, k->n);
        CHECK_MSG(h == k->hash, "seed %" PRIu64 " n %zu: hash %016" PRIx64 " want %016" PRIx64, k->seed, k->n, h,
                  k->hash);
    }
}

/* Successive calls on one generator, mixing the scalar path (with its cached second
 * Box-Muller value) and the blocks-of-16 path: torch.randn(3), (20), (1), (1), (33), (2). */
TEST(randn_stream_continues_like_one_torch_generator) {
    static const struct { size_t n; uint64_t hash; uint32_t first; } calls[] = {
        {3, UINT64_C(0x3a9c1f914a24a096), 0xbe165174},  {20, UINT64_C(0xb668dfe69f95a015), 0xbe34ac25},
        {1, UINT64_C(0x3fe1d25105920e6f), 0xbf8ea2d3},  {1, UINT64_C(0x560ee912c36e5d71), 0xbeea673d},
        {33, UINT64_C(0x36f3bed78bf0d1db), 0xbe367820}, {2, UINT64_C(0xb6b746b7ed0992af), 0xbf397715},
    };
    loco_torch_rng g;
    loco_torch_rng_seed(&g, 7);
    float x[64];
    for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++) {
        loco_torch_randn_f32(&g, x, calls[c].n);
        CHECK_MSG(bits_of(x[0]) == calls[c].first, "call %zu: first value %08x", c, bits_of(x[0]));
        CHECK_MSG(fnv1a_bits(x, calls[c].n) == calls[c].hash, "call %zu (n=%zu): hash differs", c, calls[c].n);
    }
}

TEST(reseeding_resets_the_cached_normal) {
    loco_torch_rng g;
    loco_torch_rng_seed(&g, 42);
    float a[5], b[5];
    loco_torch_randn_f32(&g, a, 1); /* leaves a cached second value behind */
    loco_torch_rng_seed(&g, 42);
    loco_torch_randn_f32(&g, b, 5);
    CHECK(bits_of(b[0]) == 0x3eac62ae);
    CHECK(bits_of(b[1]) == 0x3e03e69d);
    CHECK(bits_of(a[0]) == bits_of(b[0]));
}

TEST(mt19937_raw_draws) {
    /* The C++ standard's check value: the 10000th output of a default-seeded mt19937. */
    loco_torch_rng g;
    loco_torch_rng_seed(&g, 5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++) v = loco_torch_rng_u32(&g);
    CHECK(v == 4123659995u);
    /* random64 is (first draw << 32) | second draw: torch.rand(3, dtype=float64) after
     * manual_seed(42) takes the low 53 bits of three such values. */
    static const double want[3] = {0.05815448596142969, 0.06291016742457756, 0.12358607277440903};
    loco_torch_rng_seed(&g, 42);
    for (int i = 0; i < 3; i++) {
        uint64_t r = loco_torch_rng_u64(&g);
        double u = (double)(r & ((UINT64_C(1) << 53) - 1)) / 9007199254740992.0;
        CHECK_MSG(u == want[i], "draw %d: %.17g want %.17g", i, u, want[i]);
    }
}

/* ---- tests/fixtures/refs/noise.safetensors ------------------------------------------------ */

/* "seed{S}_shape{d1}x{d2}..." -> seed and element count; 0 if the name has another form. */
static int parse_seed_name(const char *name, uint64_t *seed, size_t *numel) {
    if (strncmp(name, "seed", 4) != 0) return 0;
    char *end;
    *seed = strtoull(name + 4, &end, 10);
    if (end == name + 4 || strncmp(end, "_shape", 6) != 0) return 0;
    const char *p = end + 6;
    size_t n = 1;
    for (;;) {
        unsigned long long d = strtoull(p, &end, 10);
        if (end == p) return 0;
        n *= (size_t)d;
        if (*end == '\0') break;
        if (*end != 'x') return 0;
        p = end + 1;
    }
    *numel = n;
    return 1;
}

static int same_bits(const float *a, const void *b, size_t n, size_t *first_bad) {
    for (size_t i = 0; i < n; i++) {
        uint32_t ub;
        memcpy(&ub, (const char *)b + 4 * i, 4);
        if (bits_of(a[i]) != ub) { *first_bad = i; return 0; }
    }
    return 1;
}

TEST(noise_fixture_matches_bit_for_bit) {
    char path[1024];
    snprintf(path, sizeof path, "%s/refs/noise.safetensors", loco_fixtures_dir());
    FILE *probe = fopen(path, "rb");
    if (!probe) SKIP("%s not generated yet", path);
    fclose(probe);
    loco_safetensors *f = NULL;
    loco_err err = {0};
    CHECK_MSG(loco_safetensors_open(path, &f, &err) == LOCO_OK, "%s", err.msg);
    size_t checked = 0;
    for (size_t i = 0; i < loco_safetensors_count(f); i++) {
        const loco_stored_tensor *t = loco_safetensors_at(f, i);
        uint64_t seed;
        size_t n;
        if (!parse_seed_name(t->name, &seed, &n)) continue;
        CHECK_MSG(t->dtype == LOCO_F32 && (size_t)loco_stored_numel(t) == n, "%s: expected F32 of %zu", t->name, n);
        float *x = malloc(n * sizeof(float));
        CHECK(x != NULL);
        loco_torch_rng g;
        loco_torch_rng_seed(&g, seed);
        loco_torch_randn_f32(&g, x, n);
        size_t bad = 0;
        int ok = same_bits(x, t->data, n, &bad);
        free(x);
        if (!ok) loco_safetensors_close(f);
        CHECK_MSG(ok, "%s: element %zu differs", t->name, bad);
        checked++;
    }
    /* stream7_0, _1, _2: successive torch.randn calls on one generator seeded with 7 */
    loco_torch_rng g;
    loco_torch_rng_seed(&g, 7);
    size_t streamed = 0;
    for (int k = 0; k < 3; k++) {
        char name[32];
        snprintf(name, sizeof name, "stream7_%d", k);
        const loco_stored_tensor *t = loco_safetensors_find(f, name);
        if (!t) break;
        size_t n = (size_t)loco_stored_numel(t);
        float *x = malloc(n * sizeof(float) + 1);
        CHECK(x != NULL);
        loco_torch_randn_f32(&g, x, n);
        size_t bad = 0;
        int ok = t->dtype == LOCO_F32 && same_bits(x, t->data, n, &bad);
        free(x);
        if (!ok) loco_safetensors_close(f);
        CHECK_MSG(ok, "%s: element %zu differs", name, bad);
        streamed++;
    }
    loco_safetensors_close(f);
    CHECK_MSG(checked > 0, "no seed*_shape* tensors in %s", path);
    CHECK_MSG(streamed == 3, "stream7_0..2 missing from %s", path);
}
