/* random_weights.c: see random_weights.h. */
#include "random_weights.h"

#include <math.h>
#include <string.h>

#include "base.h"

/* Counter-based (splitmix64's finaliser of base + i): element i does not depend on element
 * i-1, so large tensors fill in parallel with the same values on any thread count. */
static uint64_t mix_at(uint64_t base, uint64_t i) {
    uint64_t z = base + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

void loco_random_weights_fill(const char *name, uint64_t seed, int ndim, const int64_t *shape, uint16_t *dst) {
    uint64_t numel = 1, fan_in = 1;
    for (int i = 0; i < ndim; i++) numel *= (uint64_t)shape[i];
    for (int i = 1; i < ndim; i++) fan_in *= (uint64_t)shape[i];
    uint64_t state = seed;
    for (const char *p = name; *p; p++) state = (state ^ (uint8_t)*p) * 1099511628211ull;
    if (ndim <= 1) {
        int is_scale = (strstr(name, "norm") || strstr(name, "ln_")) && ends_with(name, ".weight");
        if (is_scale) {
            uint16_t one = loco_f32_to_f16(1.0f);
            for (uint64_t i = 0; i < numel; i++) dst[i] = one;
            return;
        }
        for (uint64_t i = 0; i < numel; i++)
            dst[i] = loco_f32_to_f16(0.02f * ((float)(mix_at(state, i) >> 40) / 16777216.0f - 0.5f));
        return;
    }
    float bound = 1.0f / sqrtf((float)fan_in);
    const int64_t n = (int64_t)numel;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; i++) {
        float u = (float)(mix_at(state, (uint64_t)i) >> 40) / 16777216.0f; /* [0, 1) */
        dst[i] = loco_f32_to_f16(bound * (2.0f * u - 1.0f));
    }
}
