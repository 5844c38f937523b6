/* keyed_hash.h: a keyed hash (SipHash-2-4) for hash tables whose keys come from files users
 * supply (tensor names in safetensors headers).
 *
 * An unkeyed hash such as FNV-1a lets whoever writes the file pick names that all land in one
 * bucket, turning every insert into a walk over all earlier names (quadratic loading). With a
 * secret key drawn per table the bucket of a name cannot be predicted from outside, so no file
 * can be crafted to collide. Table order never leaks out: callers index entries separately, so
 * results do not depend on the key. */
#ifndef LOCO_KEYED_HASH_H
#define LOCO_KEYED_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct loco_hash_key {
    uint64_t k0, k1;
} loco_hash_key;

/* A fresh key from getrandom(2); if the kernel cannot give one (old kernel, seccomp filter),
 * a mix of the clocks, the process id and `salt`'s address. The fallback is not secret against
 * a local attacker, but it differs per process and per table, which is what stops a file made
 * in advance. Never fails. */
void loco_hash_key_random(loco_hash_key *key, const void *salt);
/* The fallback alone (exposed so tests can check it varies with the salt). */
void loco_hash_key_fallback(loco_hash_key *key, const void *salt);

/* SipHash-2-4 of n bytes under `key` (the reference algorithm; its published test vectors hold). */
uint64_t loco_siphash(const loco_hash_key *key, const void *data, size_t n);

#endif
