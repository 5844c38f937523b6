/* auth.h: bearer API keys. Keys live in the config as SHA-256 hashes; a request's token is
 * hashed and compared with every configured hash in constant time (no early exit, no
 * length leak), so neither the secret nor timing reveals which key almost matched. */
#ifndef LOCOD_AUTH_H
#define LOCOD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

void locod_sha256(const void *data, size_t n, uint8_t out[32]);
void locod_hex(const uint8_t *in, size_t n, char *out); /* out: 2n+1 bytes */

typedef enum locod_auth_result {
    LOCOD_AUTH_OK = 0,        /* *key set (NULL when no keys are configured: open loopback mode) */
    LOCOD_AUTH_MISSING,       /* no Authorization header */
    LOCOD_AUTH_MALFORMED,     /* not "Bearer <token>" */
    LOCOD_AUTH_INVALID        /* no configured key matches */
} locod_auth_result;

/* Check an Authorization header value (may be NULL). */
locod_auth_result locod_auth_check(const locod_config *cfg, const char *authorization, const locod_key **key);

#endif
