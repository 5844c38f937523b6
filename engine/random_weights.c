/* random_weights.c: see random_weights.h. */
#include "random_weights.h"

#include <math.h>
#include <string.h>

#include "base.h"

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
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
            dst[i] = loco_f32_to_f16(0.02f * ((float)(splitmix64(&state) >> 40) / 16777216.0f - 0.5f));
        return;
    }
    float bound = 1.0f / sqrtf((float)fan_in);
    for (uint64_t i = 0; i < numel; i++) {
        float u = (float)(splitmix64(&state) >> 40) / 16777216.0f; /* [0, 1) */
        dst[i] = loco_f32_to_f16(bound * (2.0f * u - 1.0f));
    }
}
