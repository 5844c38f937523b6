/* fast_div.h: division of 32-bit indices by a divisor fixed for a whole kernel launch, as a
 * multiply-high, an add and a shift (Granlund and Montgomery's round-up method).
 *
 * Why: the memory-bound CUDA kernels map a flat element index to its channel (index / inner,
 * then % channels) once per 16-byte vector. With int64 operands nvcc emits a call to a 64-bit
 * division routine, with int32 about twenty instructions; either makes a kernel that should
 * move 16 bytes per few instructions issue-bound. The host fills the magic numbers once; the
 * device computes q = (umulhi(x, mul) + x) >> shift.
 *
 * Valid for every divisor 1 <= d < 2^31 and every dividend 0 <= x < 2^31 (so the add cannot
 * carry out of 32 bits). loco_fast_div_eval is the same arithmetic in plain C, for the host
 * and for the unit test that checks the magic numbers against real division. */
#ifndef LOCO_FAST_DIV_H
#define LOCO_FAST_DIV_H

#include <stdint.h>

typedef struct loco_fast_div {
    uint32_t d;     /* the divisor */
    uint32_t mul;   /* floor(2^32 (2^shift - d) / d) + 1 */
    uint32_t shift; /* ceil(log2 d) */
} loco_fast_div;

#ifdef __CUDACC__
#define LOCO_FAST_DIV_FN static inline __host__ __device__
#else
#define LOCO_FAST_DIV_FN static inline
#endif

/* d must be in [1, 2^31). */
LOCO_FAST_DIV_FN loco_fast_div loco_fast_div_make(uint32_t d) {
    loco_fast_div f;
    uint32_t s = 0;
    while (((uint64_t)1 << s) < d) s++;
    f.d = d;
    f.shift = s;
    f.mul = (uint32_t)((((uint64_t)1 << 32) * (((uint64_t)1 << s) - d)) / d + 1);
    return f;
}

/* x / f.d for 0 <= x < 2^31. */
LOCO_FAST_DIV_FN uint32_t loco_fast_div_eval(loco_fast_div f, uint32_t x) {
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(x, f.mul);
#else
    const uint32_t hi = (uint32_t)(((uint64_t)x * f.mul) >> 32);
#endif
    return (hi + x) >> f.shift;
}

#undef LOCO_FAST_DIV_FN
#endif
