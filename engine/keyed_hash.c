/* keyed_hash.c: SipHash-2-4 (Aumasson & Bernstein) and per-table random keys (see keyed_hash.h). */
#include "keyed_hash.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

/* Little-endian load regardless of the host, so a hash means the same everywhere. */
static uint64_t load_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void sip_round(uint64_t v[4]) {
    v[0] += v[1]; v[1] = rotl(v[1], 13); v[1] ^= v[0]; v[0] = rotl(v[0], 32);
    v[2] += v[3]; v[3] = rotl(v[3], 16); v[3] ^= v[2];
    v[0] += v[3]; v[3] = rotl(v[3], 21); v[3] ^= v[0];
    v[2] += v[1]; v[1] = rotl(v[1], 17); v[1] ^= v[2]; v[2] = rotl(v[2], 32);
}

static void sip_absorb(uint64_t v[4], uint64_t m) {
    v[3] ^= m;
    sip_round(v);
    sip_round(v);
    v[0] ^= m;
}

uint64_t loco_siphash(const loco_hash_key *key, const void *data, size_t n) {
    const uint8_t *p = data;
    uint64_t v[4] = {key->k0 ^ UINT64_C(0x736f6d6570736575), key->k1 ^ UINT64_C(0x646f72616e646f6d),
                     key->k0 ^ UINT64_C(0x6c7967656e657261), key->k1 ^ UINT64_C(0x7465646279746573)};
    size_t full = n - n % 8;
    for (size_t i = 0; i < full; i += 8) sip_absorb(v, load_le(p + i, 8));
    /* the last block carries the length in its top byte */
    uint64_t tail = n > full ? load_le(p + full, n - full) : 0;
    sip_absorb(v, tail | ((uint64_t)(n & 0xff) << 56));
    v[2] ^= 0xff;
    for (int r = 0; r < 4; r++) sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* splitmix64: spreads the few changing bits of the fallback inputs over the whole key. */
static uint64_t mix64(uint64_t x) {
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

void loco_hash_key_fallback(loco_hash_key *key, const void *salt) {
    struct timespec rt = {0}, mono = {0};
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    uint64_t a = mix64((uint64_t)rt.tv_sec * UINT64_C(1000000007) ^ (uint64_t)rt.tv_nsec);
    uint64_t b = mix64(a ^ (uint64_t)mono.tv_nsec ^ ((uint64_t)mono.tv_sec << 32));
    uint64_t c = mix64(b ^ (uint64_t)(uintptr_t)salt ^ ((uint64_t)getpid() << 40));
    key->k0 = a ^ c;
    key->k1 = mix64(c ^ (uint64_t)(uintptr_t)&rt); /* the stack address adds ASLR entropy */
}

void loco_hash_key_random(loco_hash_key *key, const void *salt) {
    uint8_t buf[16];
    /* GRND_NONBLOCK: early in boot the pool may not be ready; a table must never wait for it */
    if (getrandom(buf, sizeof buf, GRND_NONBLOCK) == (ssize_t)sizeof buf) {
        key->k0 = load_le(buf, 8);
        key->k1 = load_le(buf + 8, 8);
        return;
    }
    loco_hash_key_fallback(key, salt);
}
