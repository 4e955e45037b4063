/* netauth.h — what the network examples share besides their structs: a
 * TRY() that stops on a failed call, and the HMAC-SHA256 the replication
 * handshake needs, taken from OpenSSL when the build found it (libtha has
 * no cryptography of its own: the MAC is the application's to supply).
 */
#ifndef NETAUTH_H
#define NETAUTH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tha.h"

#ifdef THA_HAVE_OPENSSL
#include <openssl/core_names.h>
#include <openssl/evp.h>
#endif

#define TRY(call)                                                              \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_) {                                                             \
            fprintf(stderr, "%s failed: %s\n", #call, tha_strerror(rc_));      \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

/* The shared secret: the bytes of $THA_SECRET, if set. */
typedef struct secret {
    const char *bytes;
    size_t len;
} secret_t;

#ifdef THA_HAVE_OPENSSL
/* HMAC-SHA256(key, parts...) through OpenSSL 3's EVP_MAC. */
static void net_hmac(void *ctx, const uint8_t *key, size_t key_len,
                     const tha_mac_part_t *parts, size_t nparts,
                     uint8_t out[THA_MAC_SIZE]) {
    (void)ctx;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    size_t n = 0;
    int ok = c && EVP_MAC_init(c, key, key_len, params);
    for (size_t i = 0; ok && i < nparts; i++)
        ok = EVP_MAC_update(c, parts[i].data, parts[i].len);
    ok = ok && EVP_MAC_final(c, out, &n, THA_MAC_SIZE) && n == THA_MAC_SIZE;
    if (!ok) memset(out, 0, THA_MAC_SIZE); /* fails verification: fails closed */
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(mac);
}
#define NET_MAC_SUPPORT "THA_SECRET=<shared secret> enables HMAC-SHA256 (OpenSSL)"
#else
#define NET_MAC_SUPPORT "no HMAC: built without OpenSSL; loopback only"
#endif

/* Fills the MAC of opt from $THA_SECRET; 0, or -1 if a secret is set but
 * this build cannot use it. */
static int net_secret(tha_net_options_t *opt, secret_t *k) {
    const char *env = getenv("THA_SECRET");
    if (!env || !*env) return 0;
#ifdef THA_HAVE_OPENSSL
    k->bytes = env;
    k->len = strlen(env);
    opt->secret = k->bytes;
    opt->secret_len = k->len;
    opt->mac = net_hmac;
    opt->mac_ctx = k;
    return 0;
#else
    (void)opt;
    (void)k;
    fprintf(stderr, "THA_SECRET is set but this build has no HMAC (no OpenSSL)\n");
    return -1;
#endif
}

#endif
