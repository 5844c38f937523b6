/* auth.c: see auth.h. */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>

void locod_sha256(const void *data, size_t n, uint8_t out[32]) {
    unsigned int len = 32;
    EVP_Digest(data, n, out, &len, EVP_sha256(), NULL);
}

void locod_hex(const uint8_t *in, size_t n, char *out) {
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = 0;
}

locod_auth_result locod_auth_check(const locod_config *cfg, const char *h, const locod_key **key) {
    *key = NULL;
    if (cfg->n_keys == 0) return LOCOD_AUTH_OK;
    if (!h) return LOCOD_AUTH_MISSING;
    if (strncasecmp(h, "Bearer ", 7) != 0) return LOCOD_AUTH_MALFORMED;
    const char *tok = h + 7;
    while (*tok == ' ') tok++;
    size_t n = strlen(tok);
    while (n > 0 && tok[n - 1] == ' ') n--;
    if (n == 0 || n > 4096) return LOCOD_AUTH_MALFORMED;
    uint8_t d[32];
    locod_sha256(tok, n, d);
    const locod_key *match = NULL;
    for (int i = 0; i < cfg->n_keys; i++) {
        int eq = CRYPTO_memcmp(d, cfg->keys[i].sha256, 32) == 0;
        /* no early exit: every key is compared */
        if (eq && !match) match = &cfg->keys[i];
    }
    if (!match) return LOCOD_AUTH_INVALID;
    *key = match;
    return LOCOD_AUTH_OK;
}
