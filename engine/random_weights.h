/* random_weights.h: deterministic random parameters for real-size architectures.
 *
 * Benchmarks build SD 1.5 / SD-XL UNets, VAEs and text encoders from their real configs with
 * random weights made on the fly (never committed). Values keep activations in a sane range so
 * timings reflect real runs (no NaN/Inf paths): weights of rank >= 2 are uniform in
 * ±1/sqrt(fan_in), norm scales are 1, other vectors (biases) small. */
#ifndef LOCO_RANDOM_WEIGHTS_H
#define LOCO_RANDOM_WEIGHTS_H

#include <stdint.h>

/* Fill dst (F16, numel = product of shape) for the tensor `name`; the values depend only on
 * seed, name and shape. */
void loco_random_weights_fill(const char *name, uint64_t seed, int ndim, const int64_t *shape, uint16_t *dst);

#endif
