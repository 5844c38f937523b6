/* cpu_math.h: the activation formulas of the CPU backend, written as torch writes them in
 * fp32, for loops that the compiler vectorises. glibc (2.35+) ships vector versions of expf,
 * erff and tanhf (libmvec, a few ulp); declaring them `simd` lets `#pragma omp simd` loops call
 * those instead of one scalar call per element, which would cost more than the sgemm that
 * feeds the activation. */
#ifndef LOCO_CPU_MATH_H
#define LOCO_CPU_MATH_H

#include <math.h>

#if defined(__x86_64__) && defined(__GLIBC__) && !defined(__clang__) &&                                      \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float erff(float);
__attribute__((simd("notinbranch"))) float tanhf(float);
#endif

/* x * sigmoid(x), as torch's silu: x / (1 + exp(-x)). */
static inline float cpu_silu(float v) { return v / (1.0f + expf(-v)); }

/* exact GELU: 0.5 x (1 + erf(x / sqrt 2)). */
static inline float cpu_gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f)); }

/* tanh GELU (gelu_new): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static inline float cpu_gelu_tanh(float v) {
    return 0.5f * v * (1.0f + tanhf(0.79788456080286535588f * (v + 0.044715f * v * v * v)));
}

/* OpenAI CLIP's quick_gelu: x * sigmoid(1.702 x). */
static inline float cpu_quick_gelu(float v) { return v * (1.0f / (1.0f + expf(-1.702f * v))); }

#endif
