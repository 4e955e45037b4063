/* crc32c.c — CRC32C (Castagnoli), the checksum of every frame.
 * "raw" is the CRC register without the initial and final inversions:
 * tha_crc32c(c, ...) == ~tha__crc32c_raw(~c, ...). Polynomials are kept
 * reflected (bit 31 is the x^0 coefficient), as the SSE4.2 instruction does.
 * "shift" multiplies a register by x^(8*len) mod P, which is what appending
 * len zero bytes does, so separately computed pieces combine:
 *   raw(r, A||B) == tha__crc32c_shift(raw(r, A), |B|) ^ raw(0, B).
 */
#include "base.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define THA__CRC_X86 1
#endif

#define POLY 0x82F63B78u /* reflected Castagnoli polynomial */

/* Below this many bytes one stream beats three streams plus the combine. */
#define THREE_WAY_MIN 3072u

/* Slice-by-8 tables: tab[k][b] is the register after byte b followed by k
 * zero bytes, starting from 0. */
static uint32_t tab[8][256];
/* pow8[k] = x^(8 * 2^k) mod P: shifting by 2^k bytes. */
static uint32_t pow8[64];
static int have_hw;
static volatile int ready;

/* a * b mod P, both reflected. */
static uint32_t gf2_mulmod(uint32_t a, uint32_t b) {
    uint32_t p = 0;
    for (int i = 0; i < 32; i++) {
        p ^= b & (0u - (a >> 31)); /* a's top bit: the x^i coefficient */
        a <<= 1;
        b = (b >> 1) ^ (POLY & (0u - (b & 1))); /* b *= x */
    }
    return p;
}

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (POLY & (0u - (c & 1)));
        tab[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            tab[k][n] = (tab[k - 1][n] >> 8) ^ tab[0][tab[k - 1][n] & 0xff];
    /* x^8 is bit 31-8 in the reflected form. */
    pow8[0] = 1u << (31 - 8);
    for (int k = 1; k < 64; k++)
        pow8[k] = gf2_mulmod(pow8[k - 1], pow8[k - 1]);
#ifdef THA__CRC_X86
    __builtin_cpu_init();
    have_hw = __builtin_cpu_supports("sse4.2");
#endif
    ready = 1;
}

/* Runs at load time, before any thread the application starts; the check
 * in each entry point only covers callers that run in other constructors.
 * crc_init is idempotent, so a repeat is harmless. */
__attribute__((constructor)) static void crc_ctor(void) { crc_init(); }

static inline void crc_ready(void) {
    if (THA__UNLIKELY(!ready))
        crc_init();
}

/* x^(8*len) mod P. */
static uint32_t xpow8(uint64_t len) {
    uint32_t r = 1u << 31; /* 1 */
    for (int k = 0; len; k++, len >>= 1)
        if (len & 1)
            r = gf2_mulmod(r, pow8[k]);
    return r;
}

uint32_t tha__crc32c_shift(uint32_t crc, uint64_t len) {
    crc_ready();
    return gf2_mulmod(xpow8(len), crc);
}

static uint32_t crc_sw(uint32_t c, const unsigned char *p, size_t len) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (len && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ tab[0][(c ^ *p++) & 0xff];
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = tab[7][w & 0xff] ^ tab[6][(w >> 8) & 0xff] ^
            tab[5][(w >> 16) & 0xff] ^ tab[4][(w >> 24) & 0xff] ^
            tab[3][(w >> 32) & 0xff] ^ tab[2][(w >> 40) & 0xff] ^
            tab[1][(w >> 48) & 0xff] ^ tab[0][w >> 56];
        p += 8;
        len -= 8;
    }
#endif
    while (len--)
        c = (c >> 8) ^ tab[0][(c ^ *p++) & 0xff];
    return c;
}

#ifdef THA__CRC_X86
__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    if (len >= THREE_WAY_MIN) {
        /* Three streams over consecutive thirds hide the instruction's
         * 3-cycle latency; a third is a multiple of 32 bytes so the loop
         * needs no tail. */
        size_t third = (len / 3) & ~(size_t)31;
        const unsigned char *q = p + third, *r = q + third, *end = q;
        uint64_t c1 = 0, c2 = 0;
        do {
            uint64_t a0, a1, a2, a3, b0, b1, b2, b3, d0, d1, d2, d3;
            memcpy(&a0, p, 8), memcpy(&a1, p + 8, 8);
            memcpy(&a2, p + 16, 8), memcpy(&a3, p + 24, 8);
            memcpy(&b0, q, 8), memcpy(&b1, q + 8, 8);
            memcpy(&b2, q + 16, 8), memcpy(&b3, q + 24, 8);
            memcpy(&d0, r, 8), memcpy(&d1, r + 8, 8);
            memcpy(&d2, r + 16, 8), memcpy(&d3, r + 24, 8);
            c = _mm_crc32_u64(c, a0);
            c1 = _mm_crc32_u64(c1, b0);
            c2 = _mm_crc32_u64(c2, d0);
            c = _mm_crc32_u64(c, a1);
            c1 = _mm_crc32_u64(c1, b1);
            c2 = _mm_crc32_u64(c2, d1);
            c = _mm_crc32_u64(c, a2);
            c1 = _mm_crc32_u64(c1, b2);
            c2 = _mm_crc32_u64(c2, d2);
            c = _mm_crc32_u64(c, a3);
            c1 = _mm_crc32_u64(c1, b3);
            c2 = _mm_crc32_u64(c2, d3);
            p += 32, q += 32, r += 32;
        } while (p < end);
        uint32_t k = xpow8(third);
        c = gf2_mulmod(k, (uint32_t)c) ^ (uint32_t)c1;
        c = gf2_mulmod(k, (uint32_t)c) ^ (uint32_t)c2;
        p = r;
        len -= 3 * third;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t tha__crc32c_sw(uint32_t raw, const void *buf, size_t len) {
    crc_ready();
    return crc_sw(raw, buf, len);
}

uint32_t tha__crc32c_raw(uint32_t raw, const void *buf, size_t len) {
    crc_ready();
#ifdef THA__CRC_X86
    if (have_hw)
        return crc_hw(raw, buf, len);
#endif
    return crc_sw(raw, buf, len);
}

uint32_t tha_crc32c(uint32_t crc, const void *buf, size_t len) {
    return ~tha__crc32c_raw(~crc, buf, len);
}
