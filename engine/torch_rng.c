/* torch_rng.c: torch's CPU generator (CPUGeneratorImpl) and torch.randn(float32), bit for bit.
 *
 * Why each piece looks the way it does:
 *  - manual_seed keeps only the low 32 bits of the 64-bit seed (torch's mt19937 seeds its
 *    uint32 state from `seed & 0xffffffff`), so seeds s and s + 2^32 give the same stream.
 *  - random64() is two 32-bit draws, the first one in the high half.
 *  - torch.randn(float32) with numel >= 16 goes through normal_fill: one float uniform per
 *    element from a 32-bit draw ((u & (2^24-1)) / 2^24), then Box-Muller on pairs (j, j+8) of
 *    every block of 16; a tail (numel % 16 != 0) is handled by drawing 16 fresh uniforms into
 *    the last 16 slots and transforming those again. On x86 machines with AVX2 or AVX-512
 *    (the machines researchers run diffusers on), torch evaluates log/sin/cos with the Cephes
 *    polynomials of avx_mathfun.h in single precision rather than libm. torch's wheels are built
 *    by GCC in GNU mode, which contracts each multiply feeding an add into one FMA; the scalar
 *    functions below repeat those float operations one by one, in the same order, with fmaf()
 *    exactly where GCC fused (checked bit for bit against torch 2.15 on AVX2 and AVX-512; a
 *    non-fused version differs by one ulp in about 1 value in 50). Machines where torch runs
 *    its DEFAULT kernels (no AVX2, e.g. aarch64) use libm's logf/cosf/sinf and are not
 *    reproduced here.
 *  - numel < 16 goes through at::normal_distribution<double>: two double uniforms from 64-bit
 *    draws (53-bit mantissa), r = sqrt(-2 log(1 - u2)), theta = 2 pi u1; it returns r cos(theta)
 *    and keeps r sin(theta) in the generator for the next scalar draw. The cache survives
 *    across calls and is reset by manual_seed, as in torch. */
#include "torch_rng.h"

#include <math.h>
#include <string.h>

enum { MT_N = 624, MT_M = 397 };

void loco_torch_rng_seed(loco_torch_rng *g, uint64_t seed) {
    memset(g, 0, sizeof(*g));
    g->seed = seed;
    g->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < MT_N; j++)
        g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + (uint32_t)j;
    g->mti = MT_N; /* the first draw regenerates the whole state, as torch's left_ = 1 does */
    g->has_next_double_normal = 0;
    g->has_next_float_normal = 0;
}

static uint32_t mt_twist(uint32_t u, uint32_t v) {
    uint32_t mix = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mix >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_next_state(loco_torch_rng *g) {
    uint32_t *s = g->mt;
    int k = 0;
    for (; k < MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ mt_twist(s[k], s[k + 1]);
    for (; k < MT_N - 1; k++) s[k] = s[k + MT_M - MT_N] ^ mt_twist(s[k], s[k + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ mt_twist(s[MT_N - 1], s[0]);
    g->mti = 0;
}

uint32_t loco_torch_rng_u32(loco_torch_rng *g) {
    if (g->mti >= MT_N) mt_next_state(g);
    uint32_t y = g->mt[g->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t loco_torch_rng_u64(loco_torch_rng *g) {
    uint64_t hi = loco_torch_rng_u32(g);
    uint64_t lo = loco_torch_rng_u32(g);
    return (hi << 32) | lo;
}

/* at::uniform_real_distribution<float>(0, 1): 24 random bits scaled by 2^-24 (exact). */
static float uniform_f32(loco_torch_rng *g) {
    return (float)(loco_torch_rng_u32(g) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): 53 random bits of a 64-bit draw. */
static double uniform_f64(loco_torch_rng *g) {
    return (double)(loco_torch_rng_u64(g) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* ---- avx_mathfun.h's single-precision Cephes log and sincos, lane by lane --------------- */

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* log256_ps for one lane, with FMAs where torch's compiler made them. Inputs here are in
 * (0, 1]; the NaN mask for x <= 0 is kept so the function stays faithful to the original. */
static float cephes_logf(float x) {
    const int invalid = !(x > 0.0f); /* _CMP_LE_OS against zero (NaN also ends up NaN) */
    const float min_norm = u2f(0x00800000u);
    if (!(x >= min_norm)) x = min_norm; /* _mm256_max_ps(x, min_norm) returns min_norm for NaN too */
    int32_t imm0 = (int32_t)(f2u(x) >> 23);
    x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f));
    imm0 -= 0x7f;
    float e = (float)imm0;
    e = e + 1.0f;
    const int mask = x < 0.707106781186547524f;
    float tmp = mask ? x : 0.0f;
    x = x - 1.0f;
    e = e - (mask ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = fmaf(e, 0.693359375f, x + y);
    if (invalid) x = u2f(f2u(x) | 0xffffffffu);
    return x;
}

/* sincos256_ps for one lane (FMAs where torch's compiler made them). */
static void cephes_sincosf(float x, float *s, float *c) {
    uint32_t sign_bit_sin = f2u(x) & 0x80000000u;
    x = u2f(f2u(x) & 0x7fffffffu);
    float y = x * 1.27323954473516f; /* 4/pi */
    int32_t j = (int32_t)y;          /* cvttps: truncation; |x| here is below 2^31 */
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sign_bit_sin = ((uint32_t)j & 4u) << 29;
    const int poly_mask = ((uint32_t)j & 2u) == 0;
    /* extended-precision reduction x - y*pi/4, pi/4 split in three parts */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_bit_cos = (~(uint32_t)(j - 2) & 4u) << 29;
    sign_bit_sin ^= swap_sign_bit_sin;

    float z = x * x;
    float yc = 2.443315711809948E-005f;
    yc = fmaf(yc, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;

    float ys = -1.9515295891E-4f;
    ys = fmaf(ys, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    /* the selection is done with masks and additions of +0.0 in torch; repeat it so that
     * the sign of a zero comes out the same */
    float ysin2 = poly_mask ? ys : u2f(0);
    float ysin1 = poly_mask ? u2f(0) : yc;
    ys = ys - ysin2;
    yc = yc - ysin1;
    float out_s = ysin1 + ysin2;
    float out_c = yc + ys;
    *s = u2f(f2u(out_s) ^ sign_bit_sin);
    *c = u2f(f2u(out_c) ^ sign_bit_cos);
}

/* normal_fill_16_AVX2 with mean 0 and std 1: uniforms in data[0..16) become normals. */
static void normal_fill_16(float *data) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - data[j]; /* [0,1) -> (0,1] for the log */
        float u2 = data[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float theta = two_pi * u2;
        float sn, cs;
        cephes_sincosf(theta, &sn, &cs);
        /* torch stores fmadd(n, std, mean); with std 1 and mean 0 that is n + 0.0f, which
         * turns a -0 into +0 exactly as the fused op does */
        data[j] = radius * cs + 0.0f;
        data[j + 8] = radius * sn + 0.0f;
    }
}

/* at::normal_distribution<double>(0, 1) with the generator's cached second value. */
static double normal_f64(loco_torch_rng *g) {
    if (g->has_next_double_normal) {
        g->has_next_double_normal = 0;
        return g->next_double_normal;
    }
    double u1 = uniform_f64(g);
    double u2 = uniform_f64(g);
    double r = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->next_double_normal = r * sin(theta);
    g->has_next_double_normal = 1;
    return r * cos(theta);
}

void loco_torch_randn_f32(loco_torch_rng *g, float *out, size_t n) {
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)normal_f64(g);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_f32(g);
    for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform_f32(g);
        normal_fill_16(tail);
    }
}
