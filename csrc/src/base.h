/* base.h — layer 0 (base): what every C file of libtha shares.
 *
 * Cross-file internals are named tha__* and declared in the header of
 * their layer (docs/architecture.md, "Layers"); file-local helpers are
 * static. A file includes its own layer's header, which includes the ones
 * below.
 */
#ifndef THA_BASE_H
#define THA_BASE_H

#include "tha.h"

#include <stdarg.h>
#include <stdbool.h>
#include <string.h>

#ifdef THA_DEBUG
#include <stdio.h>
#include <stdlib.h>
#define THA_ASSERT(c)                                                          \
    do {                                                                       \
        if (!(c)) {                                                            \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__,         \
                    __LINE__, #c);                                             \
            abort();                                                           \
        }                                                                      \
    } while (0)
#else
#define THA_ASSERT(c) ((void)0)
#endif

#define THA__LIKELY(x) __builtin_expect(!!(x), 1)
#define THA__UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Writes a formatted detail message into buf (cap bytes) and returns code. */
int tha__fail(char *buf, size_t cap, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Records the detail of a failed call on heap h and returns code. */
#define tha__hfail(h, code, ...) tha__fail((h)->err, sizeof (h)->err, (code), __VA_ARGS__)

static inline uint64_t tha__align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) & ~(a - 1);
}

/* ---- crc32c.c ------------------------------------------------------------ */

/* Raw CRC (no pre/post inversion) helpers for split streams. */
uint32_t tha__crc32c_shift(uint32_t crc, uint64_t len);
/* Raw register after buf: no pre/post inversion;
 * tha_crc32c(c, ..) == ~tha__crc32c_raw(~c, ..). */
uint32_t tha__crc32c_raw(uint32_t raw, const void *buf, size_t len);
/* The same through the tables only (tests compare it with the fast path). */
uint32_t tha__crc32c_sw(uint32_t raw, const void *buf, size_t len);

#endif /* THA_BASE_H */
