/* torch_rng.h: torch's CPU generator, bit for bit.
 *
 * torch.Generator("cpu").manual_seed(seed) is an mt19937 seeded with the low 32 bits... as
 * torch does it; torch.randn(shape, generator=g, dtype=float32) fills with normals: for numel
 * >= 16 in blocks of 16 (uniforms from 32-bit draws, Box-Muller pairs i and i+8), recomputing
 * the last 16 when numel % 16 != 0; for numel < 16 one double-precision Box-Muller value per
 * element with the second value cached. A loco_torch_rng continues the stream across calls the
 * way one torch generator does, so per-step noise of ancestral samplers matches diffusers. */
#ifndef LOCO_TORCH_RNG_H
#define LOCO_TORCH_RNG_H

#include <stdint.h>
#include <stddef.h>

typedef struct loco_torch_rng {
    uint32_t mt[624];
    int mti;
    uint64_t seed;
    int has_next_double_normal;
    double next_double_normal;
    int has_next_float_normal;
    float next_float_normal;
} loco_torch_rng;

void loco_torch_rng_seed(loco_torch_rng *g, uint64_t seed); /* manual_seed */
uint32_t loco_torch_rng_u32(loco_torch_rng *g);
uint64_t loco_torch_rng_u64(loco_torch_rng *g);
/* torch.randn(n, dtype=float32, generator=g) into out. */
void loco_torch_randn_f32(loco_torch_rng *g, float *out, size_t n);

#endif
