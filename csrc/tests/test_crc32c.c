/* test_crc32c.c — CRC32C: the standard check value, chaining, the
 * shift/combine identity the codec relies on, every alignment, and the
 * hardware path against the table path. */
#include "tha_internal.h"
#include "check.h"

#include <stdlib.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static unsigned char *random_buf(size_t n) {
    unsigned char *b = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)rnd();
    return b;
}

/* Bit-at-a-time reference, independent of the tables. */
static uint32_t ref_crc(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    }
    return ~crc;
}

static void test_vector(void) {
    CHECK(tha_crc32c(0, "123456789", 9) == 0xE3069283u);
    CHECK(~tha__crc32c_sw(~0u, "123456789", 9) == 0xE3069283u);
    CHECK(tha_crc32c(0, NULL, 0) == 0);
    CHECK(tha_crc32c(0x12345678u, NULL, 0) == 0x12345678u);
    /* RFC 3720 B.4: 32 bytes of zeros, of 0xff. */
    unsigned char z[32];
    memset(z, 0, sizeof z);
    CHECK(tha_crc32c(0, z, 32) == 0x8A9136AAu);
    memset(z, 0xff, sizeof z);
    CHECK(tha_crc32c(0, z, 32) == 0x62A8AB43u);
}

static void test_against_reference(void) {
    unsigned char *b = random_buf(5000);
    for (size_t n = 0; n <= 300; n++)
        CHECK(tha_crc32c(0, b, n) == ref_crc(0, b, n));
    size_t big[] = {2047, 2048, 2049, 3000, 4095, 4096, 4097, 5000};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        CHECK(tha_crc32c(7, b, big[i]) == ref_crc(7, b, big[i]));
    free(b);
}

static void test_chaining(void) {
    unsigned char *b = random_buf(70000);
    for (int i = 0; i < 400; i++) {
        size_t n = rnd() % (i < 300 ? 301 : 70001);
        size_t a = n ? rnd() % (n + 1) : 0;
        uint32_t whole = tha_crc32c(0, b, n);
        CHECK(tha_crc32c(tha_crc32c(0, b, a), b + a, n - a) == whole);
    }
    free(b);
}

/* raw(r, A||B) == shift(raw(r, A), |B|) ^ raw(0, B). */
static void test_shift_combine(void) {
    unsigned char *b = random_buf(1 << 20);
    for (int i = 0; i < 500; i++) {
        size_t n = i < 400 ? rnd() % 301 : rnd() % ((1 << 20) + 1);
        size_t a = n ? rnd() % (n + 1) : 0;
        uint32_t r = (uint32_t)rnd();
        uint32_t ra = tha__crc32c_raw(r, b, a);
        uint32_t rb = tha__crc32c_raw(0, b + a, n - a);
        CHECK((tha__crc32c_shift(ra, n - a) ^ rb) == tha__crc32c_raw(r, b, n));
    }
    /* Shifting by 0 is the identity; shifting zero stays zero. */
    CHECK(tha__crc32c_shift(0xDEADBEEFu, 0) == 0xDEADBEEFu);
    CHECK(tha__crc32c_shift(0, 12345) == 0);
    /* Shifting is appending zero bytes. */
    unsigned char z[1000];
    memset(z, 0, sizeof z);
    for (size_t n = 0; n <= sizeof z; n += 37)
        CHECK(tha__crc32c_shift(0xCAFEF00Du, n) ==
              tha__crc32c_raw(0xCAFEF00Du, z, n));
    /* Lengths with high bits set compose: (x^8a)(x^8b) = x^8(a+b). */
    uint64_t big = (1ull << 40) + 12345;
    CHECK(tha__crc32c_shift(tha__crc32c_shift(0x1234567u, big), 99) ==
          tha__crc32c_shift(0x1234567u, big + 99));
    free(b);
}

static void test_alignment(void) {
    unsigned char *b = random_buf(9000 + 16);
    size_t lens[] = {0, 1, 7, 8, 9, 63, 64, 65, 255, 2047, 2100, 6000, 9000};
    for (size_t off = 0; off < 16; off++) {
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
            size_t n = lens[i];
            /* The same bytes at every offset give the same CRC. */
            unsigned char *c = malloc(n + 16);
            memcpy(c + off, b, n);
            uint32_t want = ~tha__crc32c_sw(~0u, b, n);
            CHECK(tha_crc32c(0, c + off, n) == want);
            CHECK(~tha__crc32c_sw(~0u, c + off, n) == want);
            free(c);
        }
    }
    free(b);
}

static void test_hw_vs_sw(void) {
    size_t cap = (3u << 20) + 77;
    unsigned char *b = random_buf(cap);
    for (int i = 0; i < 300; i++) {
        size_t n = i < 200 ? rnd() % 5000 : rnd() % (cap + 1);
        size_t off = n < cap ? rnd() % (cap - n + 1) : 0;
        uint32_t r = (uint32_t)rnd();
        CHECK(tha__crc32c_raw(r, b + off, n) == tha__crc32c_sw(r, b + off, n));
    }
    CHECK(tha__crc32c_raw(1, b, cap) == tha__crc32c_sw(1, b, cap));
    free(b);
}

int main(void) {
    RUN(test_vector);
    RUN(test_against_reference);
    RUN(test_chaining);
    RUN(test_shift_combine);
    RUN(test_alignment);
    RUN(test_hw_vs_sw);
    return CHECK_DONE();
}
